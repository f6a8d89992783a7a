"""The GPT-NeoX backend against GPT-NeoX v1.0's and DeeperSpeed v1.0's own code
(``../shared/anchors/upstream``, read at test time; tests/upstream_support.py says how).

- every run's segment config passes DeeperSpeed's launcher (``runner.main``: hostfile, the
  SLURM runner's ``parse_user_args`` and ``get_cmd``) as deepy.py hands it over;
- every key the backend writes is a field of v1.0's ``NeoXArgs`` dataclasses, with allowed
  ``Literal`` values;
- v1.0's ``tools/convert_to_hf.py`` converts checkpoints in v1.0's layout (TP 1, 2, 4 and the
  sequential layout) into the model that was saved;
- the stand-in GPT-NeoX saves, names and points ``latest`` as DeeperSpeed does.
"""

import copy
import json
import sys
from pathlib import Path

import pytest
import upstream_support as us
import yaml

from pythia_suite import config as cfg
from pythia_suite.neox.config import (
    NeoXSegment,
    check_neox_supported,
    neox_json,
    run_deviations,
    run_neox_config,
    segment_config,
    slots_per_node,
    write_run_segment_config,
)
from pythia_suite.neox.convert import (
    convert_neox_checkpoint,
    neox_convert_command,
    neox_step_files,
    neox_step_missing,
)
from pythia_suite.neox.launch import latest_step, point_latest_at, write_hostfile

REPO = Path(__file__).resolve().parents[1]
SUITE_RUNS = [
    f"pythia-{s}{v}"
    for s in ("70m", "160m", "410m", "1b", "1.4b", "2.8b", "6.9b", "12b")
    for v in ("", "-deduped")
]


@pytest.fixture(scope="module")
def suite_config() -> dict:
    return cfg.load_config([REPO / "config.yaml"])


def _segment(config: dict, run, tmp_path: Path, nodes: int | None = None, port: int = 29500):
    """The segment config a job of ``run`` writes (the suite's own writer), at full size."""
    nodes = config["sizes"][run.size]["cluster"]["nodes"] if nodes is None else nodes
    segment = NeoXSegment(
        save_dir=tmp_path / "ck", start_step=1000, end_step=2000,
        data_prefix=str(tmp_path / "data" / "document"), vocab_file=str(tmp_path / "tok.json"),
        nodes=nodes, master_port=port,
    )  # fmt: skip
    path = tmp_path / "step2000" / "segment.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    return path, write_run_segment_config(config, run, segment, path)


def _launch(config_path: Path, hosts: list[str], slots: int, tmp_path: Path, monkeypatch):
    hostfile = write_hostfile(tmp_path / "hostfile", hosts, slots)
    env = {"DLTS_HOSTFILE": str(hostfile), "MASTER_ADDR": hosts[0]}
    return us.run_deeperspeed_main(us.deepy_main_args([config_path], env), monkeypatch)


# --- DeeperSpeed's launcher -----------------------------------------------------------------


@pytest.mark.parametrize("run_name", SUITE_RUNS)
def test_every_runs_segment_config_passes_deeperspeeds_slurm_runner(
    suite_config, run_name, tmp_path, monkeypatch
):
    run = cfg.get_run(suite_config, run_name)
    path, written = _segment(suite_config, run, tmp_path)
    nodes = suite_config["sizes"][run.size]["cluster"]["nodes"]
    hosts = [f"gpu{i:02d}" for i in range(nodes)]
    cmd = _launch(path, hosts, slots_per_node(suite_config, run.size), tmp_path, monkeypatch)
    # SlurmRunner.get_cmd: one srun over every slot of the allocation, running train.py.
    assert cmd[:3] == ["srun", "-n", str(nodes * 8)] and cmd[3].startswith("--export=ALL")
    assert cmd[4:7] == [sys.executable, "-u", "train.py"]
    megatron = json.loads(cmd[cmd.index("--megatron_config") + 1])
    # parse_user_args json.loads each config file's text; it must be the config we wrote, and
    # GPT-NeoX's own YAML reader must read the same text as the same values.
    assert megatron["config_files"]["segment.json"] == written
    assert yaml.load(path.read_text(), Loader=yaml.FullLoader) == written


def test_a_block_yaml_segment_config_is_refused_by_deeperspeed(suite_config, tmp_path,
                                                               monkeypatch):  # fmt: skip
    """The control: the YAML the backend wrote before (PyYAML block style) cannot launch."""
    run = cfg.get_run(suite_config, "pythia-410m")
    path, written = _segment(suite_config, run, tmp_path)
    path.write_text(yaml.safe_dump(written, sort_keys=False, default_flow_style=None))
    with pytest.raises(ValueError, match="SLURM is picky and needs you to use plain json"):
        _launch(path, ["gpu01", "gpu02"], 8, tmp_path, monkeypatch)


def test_one_node_cannot_launch_with_deeperspeed_v1_and_the_workflow_refuses_it(
    suite_config, tmp_path, monkeypatch
):
    """One host: DeeperSpeed v1.0's runner.main takes its local-launcher branch, then reads
    `runner.exports`, which only the multi-node branch defines (runner.py line 375): every
    one-node GPT-NeoX launch fails. The workflow refuses such a layout before queueing."""
    run = cfg.get_run(suite_config, "pythia-70m")
    path, written = _segment(suite_config, run, tmp_path, nodes=1, port=29512)
    with pytest.raises(UnboundLocalError, match="runner"):
        _launch(path, ["gpu01"], 8, tmp_path, monkeypatch)
    config = copy.deepcopy(suite_config)
    config["sizes"]["70m"]["cluster"]["nodes"] = 1
    with pytest.raises(cfg.ConfigError, match="run pythia-70m: 1 node.*runner.py"):
        check_neox_supported(config, [run])


def test_the_configured_master_port_reaches_deeperspeeds_runner(suite_config, tmp_path,
                                                                monkeypatch):  # fmt: skip
    """deepy.py passes `master_port` from the config (not MASTER_PORT) to the runner."""
    run = cfg.get_run(suite_config, "pythia-70m")
    path, _ = _segment(suite_config, run, tmp_path, port=29512)
    runner = us.deeperspeed_runner()
    hostfile = write_hostfile(tmp_path / "hostfile", ["gpu01", "gpu02"], 8)
    args = us.deepy_main_args([path], {"DLTS_HOSTFILE": str(hostfile), "MASTER_ADDR": "gpu01"})
    assert runner.parse_args(args).master_port == 29512


def test_json_floats_read_back_as_floats_in_both_readers():
    text = neox_json({"a": 1e-08, "b": 1e20, "c": 0.5, "d": [2.5e-05, True, None], "e": "x"})
    assert '"a": 1.0e-08' in text and '"b": 1.0e+20' in text
    assert json.loads(text) == yaml.safe_load(text) == yaml.load(text, Loader=yaml.FullLoader)
    assert isinstance(yaml.safe_load(text)["a"], float)
    with pytest.raises(ValueError, match="'x.y'"):
        neox_json({"x": {"y": float("nan")}})


# --- the keys v1.0 accepts --------------------------------------------------------------------


def _neox_args(config: dict):
    return us.neox_args_without_post_init()(**{k.replace("-", "_"): v for k, v in config.items()})


@pytest.mark.parametrize("run_name", SUITE_RUNS)
def test_every_key_the_backend_writes_is_a_v1_neoxargs_field(suite_config, run_name, tmp_path):
    run = cfg.get_run(suite_config, run_name)
    whole = run_neox_config(suite_config, run)
    _, segment = _segment(suite_config, run, tmp_path)
    for config in (whole, segment):
        _neox_args(config)  # NeoXArgs(**config) raises TypeError for an unknown key
        assert us.literal_violations(config) == []


def test_v1_refuses_the_old_bf16_spelling_and_reads_ours(suite_config):
    run = cfg.get_run(suite_config, "pythia-1b")
    config = run_neox_config(suite_config, run)
    assert config["fp16"]["type"] == "bfloat16" and "bf16" not in config
    old = {**config, "bf16": {"enabled": True}}
    with pytest.raises(TypeError, match="unexpected keyword argument 'bf16'"):
        _neox_args(old)
    assert us.literal_violations({"precision": "bf16"})  # v1.0's word is "bfloat16"


# --- v1.0's converter on checkpoints in v1.0's layout -----------------------------------------

# One size per tensor-parallel / pipeline layout of the suite's runs (and the 14m/31m layout).
LAYOUTS = {"70m": "TP 1", "6.9b": "TP 2", "12b": "TP 4", "14m": "sequential, TP 1"}


def _reduced_checkpoint(suite_config: dict, size: str, root: Path):
    """A checkpoint of ``size``'s layout (model-parallel size, pipe-parallel size, norms,
    rotary, parallel residual) at reduced widths, saved as v1.0 saves it (the stand-in's
    writer, compared with DeeperSpeed's names below). Returns (config file, config, model)."""
    from neox_support import tiny_tokenizer

    sys.path.insert(0, str(Path(__file__).resolve().parent / "neox_standin"))
    import standin

    config = copy.deepcopy(suite_config)
    config["matrix"] = [{"sizes": [size], "variants": ["standard"], "seeds": ["default"]}]
    run = cfg.expand_runs(config)[f"pythia-{size}"]
    neox_cfg = run_neox_config(config, run)
    neox_cfg.update({"hidden-size": 64, "num-attention-heads": 8, "num-layers": 2,
                     "seq-length": 64, "max-position-embeddings": 64,
                     "vocab-file": str(tiny_tokenizer(root / "tokenizer.json", 300))})  # fmt: skip
    config_file = root / "segment.json"
    config_file.write_text(neox_json(neox_cfg))
    model = standin.tiny_model(neox_cfg, standin.padded_vocab(neox_cfg), 7)
    standin.save_neox_checkpoint(model, neox_cfg, root / "ck" / "global_step7", 7, data_parallel=2)
    return config_file, neox_cfg, model


def _converted_logits(hf_dir: Path, tokens):
    """Logits of the converter's output (its config.json and fp16 weights), in transformers 5."""
    import torch
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

    model = GPTNeoXForCausalLM(GPTNeoXConfig.from_pretrained(hf_dir)).float().eval()
    state = torch.load(hf_dir / "pytorch_model.bin", weights_only=True)
    state = {
        k: v
        for k, v in state.items()
        if not k.endswith((".attention.bias", ".attention.masked_bias", ".inv_freq"))
    }
    state["lm_head.weight"] = state.pop("embed_out.weight")  # transformers 4's name
    missing, unexpected = model.load_state_dict(state, strict=False)
    assert not unexpected and not [k for k in missing if "inv_freq" not in k], (missing, unexpected)
    with torch.no_grad():
        return model(tokens).logits


@pytest.mark.parametrize("size", list(LAYOUTS))
def test_v1_converter_turns_each_layout_into_the_saved_model(suite_config, size, tmp_path):
    import torch

    config_file, neox_cfg, model = _reduced_checkpoint(suite_config, size, tmp_path)
    assert neox_cfg["model-parallel-size"] == {"70m": 1, "6.9b": 2, "12b": 4, "14m": 1}[size]
    assert neox_cfg["pipe-parallel-size"] == (0 if size == "14m" else 1)
    checkout, python = us.upstream_converter_checkout(tmp_path / "neox")
    out = convert_neox_checkpoint(
        checkout, tmp_path / "ck" / "global_step7", config_file, tmp_path / "hf",
        python=str(python), log_path=tmp_path / "convert.log",
    )  # fmt: skip
    tokens = torch.randint(0, 300, (2, 16), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = model.half().float()(tokens).logits  # v1.0's converter casts to fp16
    got = _converted_logits(out, tokens)
    assert torch.allclose(got, expected, atol=1e-3, rtol=0), (got - expected).abs().max()


def test_unpatched_v1_converter_doubles_the_row_parallel_biases_at_tp2(suite_config, tmp_path):
    """The control for the post-deploy patch's bias fix: v1.0's own file at TP 2."""
    import torch

    config_file, _, model = _reduced_checkpoint(suite_config, "6.9b", tmp_path)
    checkout, python = us.upstream_converter_checkout(tmp_path / "neox", patched=False)
    out = convert_neox_checkpoint(
        checkout, tmp_path / "ck" / "global_step7", config_file, tmp_path / "hf",
        python=str(python),
    )  # fmt: skip
    state = torch.load(out / "pytorch_model.bin", weights_only=True)
    saved = model.state_dict()
    for key in ("attention.dense.bias", "mlp.dense_4h_to_h.bias"):
        name = f"gpt_neox.layers.0.{key}"
        assert saved[name].abs().min() > 0  # a doubled zero would prove nothing
        assert torch.allclose(state[name].float(), 2 * saved[name].half().float(), atol=1e-3)


def test_v1_converter_alone_cannot_read_the_sequential_layout(suite_config, tmp_path):
    """The control for sequential_to_layer_files: pipe-parallel-size 0 saves no layer files."""
    import subprocess

    config_file, _, _ = _reduced_checkpoint(suite_config, "14m", tmp_path)
    step = tmp_path / "ck" / "global_step7"
    assert not list(step.glob("layer_*")) and (step / "mp_rank_00_model_states.pt").is_file()
    checkout, python = us.upstream_converter_checkout(tmp_path / "neox")
    argv = neox_convert_command(checkout, step, config_file, tmp_path / "hf",
                                     python=str(python))  # fmt: skip
    proc = subprocess.run(argv, capture_output=True, text=True)
    assert proc.returncode != 0 and "layer_00-model_00-model_states.pt" in proc.stderr


# --- the post-deploy patch, on the pinned Python 3.8 ------------------------------------------

# Runs a converter file's top level (definitions; not its __main__ block) with its imports
# stubbed: what Python 3.8 does with the file before any conversion.
DEFINITIONS_ON_38 = """
import runpy, sys, types
for name in ("torch", "transformers", "megatron", "megatron.tokenizer", "yaml", "tqdm"):
    sys.modules[name] = types.ModuleType(name)
sys.modules["torch"].Tensor = type("Tensor", (), {})
sys.modules["transformers"].GPTNeoXConfig = sys.modules["transformers"].GPTNeoXForCausalLM = object
sys.modules["megatron.tokenizer"].build_tokenizer = lambda args: None
sys.modules["tqdm"].tqdm = lambda items: items
namespace = runpy.run_path(sys.argv[1], run_name="convert_to_hf")
print(sys.version_info[:2], sorted(n for n in ("convert", "load_partitions") if n in namespace))
"""


def _python38() -> str:
    import os

    root = Path(os.environ.get("PYENV_ROOT", "/root/.pyenv")) / "versions"
    found = sorted(root.glob("3.8*/bin/python3.8"))
    if not found:
        pytest.skip(f"no Python 3.8 under {root} (GPT-NeoX v1.0's pinned Python; pyenv)")
    return str(found[-1])


@pytest.mark.parametrize("patched", [True, False])
def test_post_deploy_patch_lets_the_converter_define_itself_on_python38(patched, tmp_path):
    import shutil
    import subprocess

    converter = tmp_path / "convert_to_hf.py"
    shutil.copyfile(us.require_upstream("gpt-neox-v1.0/tools/convert_to_hf.py"), converter)
    if patched:
        subprocess.run(["bash", str(us.POST_DEPLOY), "--patch-converter", str(converter)],
                       check=True)  # fmt: skip
    proc = subprocess.run([_python38(), "-c", DEFINITIONS_ON_38, str(converter)],
                          capture_output=True, text=True)  # fmt: skip
    if patched:
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout.strip() == "(3, 8) ['convert', 'load_partitions']"
    else:  # v1.0's file as published
        assert proc.returncode != 0
        assert "TypeError: 'type' object is not subscriptable" in proc.stderr


# --- the stand-in GPT-NeoX against what DeeperSpeed and GPT-NeoX v1.0 do ----------------------


def _standin():
    sys.path.insert(0, str(Path(__file__).resolve().parent / "neox_standin"))
    import standin

    return standin


@pytest.mark.parametrize(("size", "dp"), [("70m", 4), ("6.9b", 2), ("12b", 2), ("14m", 2)])
def test_a_save_leaves_the_files_deeperspeed_names(suite_config, size, dp, tmp_path):
    """What the stand-in writes, what the completeness check asks for, and DeeperSpeed's own
    names for the files a save leaves (layer files, mp_rank files, ZeRO optimizer shards)."""
    standin = _standin()
    config = copy.deepcopy(suite_config)
    config["matrix"] = [{"sizes": [size], "variants": ["standard"], "seeds": ["default"]}]
    neox_cfg = run_neox_config(config, cfg.expand_runs(config)[f"pythia-{size}"])
    neox_cfg.update({"hidden-size": 64, "num-attention-heads": 8, "num-layers": 2,
                     "vocab-file": str(_tokenizer(tmp_path))})  # fmt: skip
    layers = neox_cfg["num-layers"]
    pipe = neox_cfg["pipe-parallel-size"] >= 1
    # GPT2ModelPipe.init_specs (gpt2_model.py): the specs that hold weights.
    specs = [0, *range(2, layers + 2), layers + 3, layers + 4]
    zero = neox_cfg["zero_optimization"]["stage"]
    upstream = us.deeperspeed_step_files(neox_cfg["model-parallel-size"], dp, specs, zero, pipe)
    assert set(neox_step_files(neox_cfg, dp)) == upstream
    model = standin.tiny_model(neox_cfg, standin.padded_vocab(neox_cfg), 3)
    standin.save_neox_checkpoint(model, neox_cfg, tmp_path / "global_step3", 3, data_parallel=dp)
    assert {p.name for p in (tmp_path / "global_step3").iterdir()} == upstream
    (tmp_path / "latest").write_text("global_step3")
    assert neox_step_missing(tmp_path, 3, neox_cfg, dp) == []
    # A save killed before `latest` was written, or a rank's file missing, is incomplete.
    (tmp_path / "latest").write_text("global_step1")
    assert neox_step_missing(tmp_path, 3, neox_cfg, dp) == ["latest (names global_step1, not >= 3)"]
    (tmp_path / "latest").write_text("global_step3")
    last = sorted(upstream)[-1]
    (tmp_path / "global_step3" / last).unlink()
    assert neox_step_missing(tmp_path, 3, neox_cfg, dp) == [last]


def _tokenizer(root: Path) -> Path:
    from neox_support import tiny_tokenizer

    return tiny_tokenizer(root / "tokenizer.json", 300)


def test_latest_is_written_and_read_as_deeperspeed_does(tmp_path):
    """DeeperSpeed's save_checkpoint writes the tag alone into save_dir/latest; the stand-in,
    point_latest_at and latest_step agree with it."""

    class Dist:
        @staticmethod
        def barrier():
            pass

    save = tmp_path / "upstream"
    engine = types_namespace(
        zero_optimization_partition_weights=lambda: False, global_steps=7,
        _checkpoint_tag_validation=lambda tag: None, save_non_zero_checkpoint=False,
        save_zero_checkpoint=False,
    )  # fmt: skip
    save_checkpoint = us.upstream_function(
        "DeeperSpeed-v1.0/deepspeed/runtime/engine.py", "DeepSpeedEngine.save_checkpoint",
        {"os": __import__("os"), "dist": Dist},
    )  # fmt: skip
    save_checkpoint(engine, str(save))
    written = (save / "latest").read_text()
    assert written == "global_step7"
    ours = tmp_path / "ours"
    (ours / "global_step7").mkdir(parents=True)
    point_latest_at(ours, 7)
    assert (ours / "latest").read_text() == written and latest_step(save) == 7


def types_namespace(**attrs):
    import types

    return types.SimpleNamespace(**attrs)


def test_every_segment_end_is_a_save_step_and_is_saved_before_the_exit(suite_config, tmp_path):
    """v1.0's save_iters (arguments.py calculate_derived, run here) hold every segment's end;
    its train loop saves (training.py) before the exit-interval check exits; the stand-in saves
    the same steps."""
    import ast

    standin = _standin()
    derive = us.upstream_block("gpt-neox-v1.0/megatron/neox_arguments/arguments.py",
                               "NeoXArgs.calculate_derived",
                               "if self.checkpoint_factor or self.extra_save_iters:")  # fmt: skip
    run = cfg.get_run(suite_config, "pythia-410m")
    whole = run_neox_config(suite_config, run)
    steps = cfg.checkpoint_steps(suite_config)
    for start, end in zip(steps[:-1], steps[1:], strict=True):  # every segment (0, 1] ...
        config = segment_config(whole, save_dir="s", load_dir="s", start_step=start,
                                     end_step=end, train_data_paths=["d"])  # fmt: skip
        fake = types_namespace(
            checkpoint_factor=config["checkpoint-factor"], train_iters=config["train-iters"],
            extra_save_iters=config["extra-save-iters"], checkpoint_scale="linear",
        )  # fmt: skip
        scope = {"self": fake}
        exec(derive, scope)  # noqa: S102 - upstream code
        save_iters = scope["save_iters"]
        assert end in save_iters
        expected = [s for s in save_iters if start < s <= end]
        expected = [0, *expected] if start == 0 and 0 in save_iters else expected
        assert standin.save_steps(config, start, end) == expected
    # training.py train(): the save_iters save comes before the exit_interval exit.
    text = us.require_upstream("gpt-neox-v1.0/megatron/training.py").read_text()
    train = next(n for n in ast.parse(text).body if getattr(n, "name", None) == "train")
    lines = {ast.get_source_segment(text, n.test): n.lineno for n in ast.walk(train)
             if isinstance(n, ast.If)}  # fmt: skip
    save = lines["neox_args.save and iteration in neox_args.save_iters"]
    exit_ = lines["neox_args.exit_interval and iteration % neox_args.exit_interval == 0"]
    assert save < exit_


def test_hostfiles_read_as_deeperspeed_reads_them(tmp_path):
    standin = _standin()
    runner = us.deeperspeed_runner()
    path = write_hostfile(tmp_path / "hostfile", ["gpu01", "gpu02", "gpu10"], 8)
    upstream = runner.fetch_hostfile(str(path))
    assert dict(upstream) == standin.read_hostfile(str(path)) == {
        "gpu01": 8, "gpu02": 8, "gpu10": 8,
    }  # fmt: skip
    assert list(upstream) == ["gpu01", "gpu02", "gpu10"]


# --- the 1b deviation and the refusals before queueing ----------------------------------------


def test_1b_deviation_is_recorded_for_the_model_card(suite_config):
    from pythia_suite.modelcard import card_facts, render_model_card

    config = copy.deepcopy(suite_config)
    config["training"]["backend"] = "neox"
    for name in ("pythia-1b", "pythia-1b-deduped"):
        (deviation,) = run_deviations(config, cfg.get_run(config, name))
        assert "attention global instead of Pythia's flash (head dimension 256 > " in deviation
        card = render_model_card(card_facts(config, name, {}))
        assert f"- Deviation from Pythia's training config: {deviation}." in card
    assert run_deviations(config, cfg.get_run(config, "pythia-1.4b")) == []
    assert card_facts(suite_config, "pythia-1b", {})["deviations"] == []  # pytorch backend


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"1b": {"neox": {"attention-config": [[["flash"], 16]]}}},
         "run pythia-1b: attention-config asks for flash, but head dimension 256 > flash-attn"),
        ({"70m": {"neox": {"pipe-parallel-size": 2}}}, "run pythia-70m: pipe-parallel-size 2"),
        ({"160m": {"cluster": {"nodes": 1}}}, "run pythia-160m: 1 node: DeeperSpeed v1.0"),
    ],
)  # fmt: skip
def test_unsupported_neox_runs_are_refused_naming_them(suite_config, change, message):
    from pythia_suite.config import deep_merge

    config = copy.deepcopy(suite_config)
    config["sizes"] = deep_merge(config["sizes"], change)
    check_neox_supported(suite_config, cfg.expand_runs(suite_config).values())
    with pytest.raises(cfg.ConfigError, match=message):
        check_neox_supported(config, cfg.expand_runs(config).values())
