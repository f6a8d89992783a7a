"""GPT-NeoX backend: hostfiles, node lists, launch/convert commands, segment configs, and the
run/convert wrappers against fake GPT-NeoX scripts (the real one needs GPUs)."""

import json
import os
import re
import shutil
import stat
import sys
from pathlib import Path

import pytest
import yaml

from pythia_suite.neox import NeoXError, doctor
from pythia_suite.neox.config import (
    NeoXSegment,
    flash_head_dims,
    neox_index_maps_dir,
    run_neox_config,
    segment_config,
    slots_per_node,
    write_segment_config,
)
from pythia_suite.neox.convert import convert_neox_checkpoint, neox_convert_command
from pythia_suite.neox.doctor import (
    FLASH_KERNEL,
    FUSED_KERNELS,
    NEOX_V1_COMMIT,
    PINNED_TORCH,
    SUPPORTED_PYTHON,
    arch_supported,
    neox_doctor,
)
from pythia_suite.neox.index_maps import preshuffled_index_maps
from pythia_suite.neox.launch import (
    current_job_nodelist,
    hostfile_lines,
    neox_launch_command,
    point_latest_at,
    run_neox_segment,
    segment_hosts,
    write_hostfile,
)
from pythia_suite.slurm import expand_nodelist, hostnames_from_nodelist

# --- node lists and hostfiles ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("nodelist", "hosts"),
    [
        ("n[1-2]", ["n1", "n2"]),
        ("n1", ["n1"]),
        ("gpu[01-03,07],login1", ["gpu01", "gpu02", "gpu03", "gpu07", "login1"]),
        ("a[8-10]-ib", ["a8-ib", "a9-ib", "a10-ib"]),
        ("x[3],y[0-1]", ["x3", "y0", "y1"]),
    ],
)
def test_expand_nodelist(nodelist, hosts):
    assert expand_nodelist(nodelist) == hosts


@pytest.mark.parametrize("bad", ["", "n[2-1]", "n[a-b]", "n[1-2", "n1-2]", ",", "n[[1]]"])
def test_expand_nodelist_rejects_bad_lists_naming_them(bad):
    with pytest.raises(ValueError, match="node list"):
        expand_nodelist(bad)


def test_hostnames_from_nodelist_falls_back_without_scontrol():
    hosts = hostnames_from_nodelist("gpu[1-3]", scontrol="/nonexistent/scontrol")
    assert hosts == ["gpu1", "gpu2", "gpu3"]


def test_hostnames_from_nodelist_uses_scontrol(tmp_path):
    fake = tmp_path / "scontrol"
    fake.write_text("#!/bin/sh\n[ \"$1 $2\" = 'show hostnames' ] && printf 'zz9\\nzz1\\n'\n")
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    # SLURM's answer wins over the Python parser (it knows syntax we do not).
    assert hostnames_from_nodelist("n[1-2]", scontrol=str(fake)) == ["zz9", "zz1"]


def test_current_job_nodelist_prefers_env_and_needs_a_job():
    assert current_job_nodelist({"SLURM_JOB_NODELIST": "n[1-2]"}) == "n[1-2]"
    with pytest.raises(NeoXError, match="not inside a SLURM job"):
        current_job_nodelist({})


def test_hostfile_lines_and_file(tmp_path):
    assert hostfile_lines(["n1", "n2"], 8) == ["n1 slots=8", "n2 slots=8"]
    path = write_hostfile(tmp_path / "hostfile", ["gpu01"], 4)
    assert path.read_text() == "gpu01 slots=4\n"
    assert list(tmp_path.iterdir()) == [path]  # no temporary file left


@pytest.mark.parametrize(
    ("hosts", "gpus", "message"),
    [([], 8, "at least one"), (["n1", "n1"], 8, "twice"), (["n 1"], 8, "invalid"),
     (["n1"], 0, "slots_per_node")],
)  # fmt: skip
def test_hostfile_lines_rejects(hosts, gpus, message):
    with pytest.raises(ValueError, match=message):
        hostfile_lines(hosts, gpus)


# --- segment configs ------------------------------------------------------------------------


def _base_config() -> dict:
    """A Pythia-like base config (the 410m config's keys that matter here)."""
    return {
        "num-layers": 24,
        "optimizer": {"type": "Adam", "params": {"lr": 0.0003, "eps": 1.0e-8}},
        "train-iters": 143000,
        "lr-decay-iters": 143000,
        "warmup": 0.01,
        "checkpoint-factor": 1000,
        "extra-save-iters": [0, 1, 2, 4, 8, 16, 32, 64, 128, 256, 512],
        "train-data-paths": ["/fsx/pile/pile_20B_tokenizer_text_document"],
        "vocab-file": "/fsx/pile/20B_tokenizer.json",
        "launcher": "pdsh",
    }


def test_segment_config_keys():
    cfg = segment_config(
        _base_config(), save_dir="/ck/run", load_dir="/ck/run", start_step=512, end_step=1000,
        train_data_paths=["/data/pile_text_document"], vocab_file="/tok/tokenizer.json",
    )  # fmt: skip
    # The run's length and LR schedule stay; the segment stops by exit-interval after saving.
    assert cfg["train-iters"] == 143000
    assert cfg["lr-decay-iters"] == 143000
    assert cfg["exit-interval"] == 1000
    assert cfg["checkpoint-factor"] == 1000
    assert 1000 in cfg["extra-save-iters"] and 512 in cfg["extra-save-iters"]
    assert cfg["save"] == "/ck/run" and cfg["load"] == "/ck/run"
    assert cfg["train-data-paths"] == ["/data/pile_text_document"]
    assert cfg["valid-data-paths"] == cfg["test-data-paths"] == ["/data/pile_text_document"]
    assert cfg["vocab-file"] == "/tok/tokenizer.json"
    assert cfg["launcher"] == "slurm" and cfg["deepspeed_slurm"] is True
    assert cfg["num-layers"] == 24  # everything else untouched


def test_segment_config_off_schedule_end_step_is_saved():
    cfg = segment_config(
        _base_config(), save_dir="s", load_dir="s", start_step=1000, end_step=1500,
        train_data_paths=["d"],
    )  # fmt: skip
    assert cfg["extra-save-iters"] == [0, 1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1500]


def test_segment_config_from_step0_does_not_load():
    base = {**_base_config(), "load": "/old/checkpoints"}
    cfg = segment_config(
        base, save_dir="s", load_dir="s", start_step=0, end_step=1, train_data_paths=["d"]
    )
    assert "load" not in cfg


def test_segment_config_pins_lr_decay_and_replaces_underscore_spellings():
    base = {k.replace("-", "_"): v for k, v in _base_config().items()}
    del base["lr_decay_iters"]
    cfg = segment_config(
        base, save_dir="s", load_dir="s", start_step=0, end_step=10, train_data_paths=["d"],
        overrides={"log_dir": "/logs"},
    )  # fmt: skip
    assert cfg["lr-decay-iters"] == 143000
    assert cfg["train-iters"] == 143000
    assert cfg["log_dir"] == "/logs"
    # Each key once: the underscore spellings of the keys the segment sets are gone.
    for key in ("train_iters", "lr_decay_iters", "extra_save_iters", "train_data_paths"):
        assert key not in cfg and key.replace("_", "-") in cfg


@pytest.mark.parametrize(("start", "end"), [(5, 5), (10, 5), (-1, 5), (0, 143001)])
def test_segment_config_rejects_steps_outside_the_run(start, end):
    with pytest.raises(ValueError, match="train-iters"):
        segment_config(
            _base_config(), save_dir="s", load_dir="s", start_step=start, end_step=end,
            train_data_paths=["d"],
        )  # fmt: skip


def test_segment_config_needs_train_iters():
    base = _base_config()
    del base["train-iters"]
    with pytest.raises(ValueError, match="'train-iters'"):
        segment_config(
            base, save_dir="s", load_dir="s", start_step=0, end_step=1, train_data_paths=["d"]
        )


def test_write_segment_config_round_trips_through_yaml(tmp_path):
    out = write_segment_config(
        _base_config(), tmp_path / "seg" / "segment.yml", save_dir=tmp_path / "ck",
        load_dir=tmp_path / "ck", start_step=1, end_step=2, train_data_paths=[tmp_path / "d"],
    )  # fmt: skip
    text = out.read_text()
    loaded = yaml.safe_load(text)
    # A float written JSON-style (1e-08) would come back as a string from PyYAML.
    assert loaded["optimizer"]["params"]["eps"] == 1.0e-8
    assert loaded["save"] == str(tmp_path / "ck")
    assert loaded["exit-interval"] == 2
    assert [p.name for p in out.parent.iterdir()] == ["segment.yml"]


def test_segment_config_of_a_published_pythia_config(anchor):
    base = yaml.safe_load(anchor("models/410M/pythia-410m.yml").read_text())
    cfg = segment_config(
        base, save_dir="s", load_dir="s", start_step=143000 - 1000, end_step=143000,
        train_data_paths=["d"],
    )  # fmt: skip
    assert cfg["train-iters"] == 143000
    assert cfg["exit-interval"] == 143000
    assert cfg["deepspeed_slurm"] is True


# --- commands -------------------------------------------------------------------------------


def test_neox_launch_command(tmp_path):
    launch = neox_launch_command(
        tmp_path / "gpt-neox", [tmp_path / "seg.yml"], hostnames=["gpu07", "gpu08"],
        hostfile=tmp_path / "hostfile", master_port=29512, python="/env/bin/python",
    )  # fmt: skip
    neox_dir = (tmp_path / "gpt-neox").resolve()
    assert launch.argv == [
        "/env/bin/python",
        str(neox_dir / "deepy.py"),
        "train.py",
        str(tmp_path / "seg.yml"),
    ]
    assert launch.cwd == neox_dir
    assert launch.env == {
        "MASTER_ADDR": "gpu07",
        "MASTER_PORT": "29512",
        "DLTS_HOSTFILE": str((tmp_path / "hostfile").resolve()),
    }


def test_neox_launch_command_needs_configs_and_hosts(tmp_path):
    with pytest.raises(ValueError, match="config"):
        neox_launch_command(tmp_path, [], hostnames=["a"], hostfile="h")
    with pytest.raises(ValueError, match="host"):
        neox_launch_command(tmp_path, ["c.yml"], hostnames=[], hostfile="h")


def test_neox_convert_command(tmp_path):
    argv = neox_convert_command(
        tmp_path / "neox", tmp_path / "ck/global_step1000", tmp_path / "c.yml", tmp_path / "hf"
    )
    assert argv == [
        "python", str(tmp_path / "neox/tools/convert_to_hf.py"),
        "--input_dir", str(tmp_path / "ck/global_step1000"),
        "--config_file", str(tmp_path / "c.yml"),
        "--output_dir", str(tmp_path / "hf"),
    ]  # fmt: skip


# --- running against fake GPT-NeoX scripts --------------------------------------------------

FAKE_CONVERTER = """
import argparse, json, os, sys
p = argparse.ArgumentParser()
p.add_argument("--input_dir", required=True)
p.add_argument("--config_file", required=True)
p.add_argument("--output_dir", required=True)
a = p.parse_args()
with open(os.environ["FAKE_RECORD"], "w") as fh:
    json.dump({"argv": sys.argv[1:], "cwd": os.getcwd()}, fh)
if os.environ.get("FAKE_FAIL"):
    sys.exit("conversion exploded")
os.makedirs(a.output_dir, exist_ok=True)
open(os.path.join(a.output_dir, "config.json"), "w").write("{}")
if not os.environ.get("FAKE_NO_WEIGHTS"):
    open(os.path.join(a.output_dir, "pytorch_model.bin"), "wb").write(b"w")
"""

# Stands in for deepy.py: records what it was given and saves the checkpoint the config asks for.
FAKE_DEEPY = """
import json, os, sys, yaml
cfg = yaml.safe_load(open(sys.argv[2]))
latest = os.path.join(cfg["save"], "latest")
record = {"argv": sys.argv[1:], "cwd": os.getcwd(),
          "env": {k: os.environ[k] for k in ("MASTER_ADDR", "MASTER_PORT", "DLTS_HOSTFILE")},
          "hostfile": open(os.environ["DLTS_HOSTFILE"]).read(),
          "latest": open(latest).read() if os.path.exists(latest) else None}
json.dump(record, open(os.environ["FAKE_RECORD"], "w"))
if not os.environ.get("FAKE_NO_SAVE"):
    os.makedirs(os.path.join(cfg["save"], f"global_step{cfg['exit-interval']}"))
"""


@pytest.fixture
def fake_neox(tmp_path):
    root = tmp_path / "gpt-neox"
    (root / "tools").mkdir(parents=True)
    (root / "tools" / "convert_to_hf.py").write_text(FAKE_CONVERTER)
    (root / "deepy.py").write_text(FAKE_DEEPY)
    return root


def test_convert_neox_checkpoint_runs_the_converter(tmp_path, fake_neox, monkeypatch):
    record = tmp_path / "record.json"
    monkeypatch.setenv("FAKE_RECORD", str(record))
    step = tmp_path / "ck" / "global_step1000"
    (step / "configs").mkdir(parents=True)
    cfg = step / "configs" / "pythia.yml"
    cfg.write_text("{}")
    out = convert_neox_checkpoint(
        fake_neox, step, cfg, tmp_path / "hf" / "step1000", python=sys.executable
    )
    assert out == tmp_path / "hf" / "step1000"
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "pytorch_model.bin"]
    seen = json.loads(record.read_text())
    assert seen["argv"][0::2] == ["--input_dir", "--config_file", "--output_dir"]
    assert seen["argv"][1] == str(step) and seen["argv"][3] == str(cfg)
    # The converter wrote into a temporary sibling that was renamed when complete.
    assert Path(seen["argv"][5]).parent.parent == out.parent and seen["argv"][5] != str(out)
    assert seen["cwd"] == str(fake_neox.resolve())
    assert [p.name for p in out.parent.iterdir()] == ["step1000"]


@pytest.mark.parametrize(("var", "message"), [("FAKE_FAIL", "exit code 1"),
                                              ("FAKE_NO_WEIGHTS", "no weights")])  # fmt: skip
def test_convert_neox_checkpoint_failure_leaves_nothing(tmp_path, fake_neox, monkeypatch, var,
                                                       message):  # fmt: skip
    monkeypatch.setenv("FAKE_RECORD", str(tmp_path / "record.json"))
    monkeypatch.setenv(var, "1")
    step = tmp_path / "global_step1"
    step.mkdir()
    (tmp_path / "c.yml").write_text("{}")
    with pytest.raises(NeoXError, match=message):
        convert_neox_checkpoint(
            fake_neox, step, tmp_path / "c.yml", tmp_path / "hf" / "out", python=sys.executable
        )
    assert list((tmp_path / "hf").iterdir()) == []


def test_convert_neox_checkpoint_names_missing_inputs(tmp_path, fake_neox):
    with pytest.raises(FileNotFoundError, match="checkpoint"):
        convert_neox_checkpoint(fake_neox, tmp_path / "nope", tmp_path / "c", tmp_path / "o")
    with pytest.raises(FileNotFoundError, match="converter"):
        convert_neox_checkpoint(tmp_path, tmp_path, tmp_path / "c", tmp_path / "o")


def _segment(tmp_path, start, end):
    save = tmp_path / "ck"
    return save, write_segment_config(
        _base_config(), tmp_path / f"seg{end}.yml", save_dir=save, load_dir=save,
        start_step=start, end_step=end, train_data_paths=["d"],
    )  # fmt: skip


def test_run_neox_segment(tmp_path, fake_neox, monkeypatch):
    record = tmp_path / "record.json"
    monkeypatch.setenv("FAKE_RECORD", str(record))
    save, cfg = _segment(tmp_path, 1000, 2000)
    (save / "global_step1000").mkdir(parents=True)
    (save / "global_step3000").mkdir()
    (save / "latest").write_text("global_step3000")  # left by a later segment: must not be used
    out = run_neox_segment(
        fake_neox, cfg, save_dir=save, start_step=1000, end_step=2000, slots_per_node=8,
        work_dir=tmp_path / "work", nodelist="gpu[01-02]", python=sys.executable,
    )  # fmt: skip
    assert out == save / "global_step2000" and out.is_dir()
    seen = json.loads(record.read_text())
    assert seen["argv"] == ["train.py", str(cfg)]
    assert seen["env"]["MASTER_ADDR"] == "gpu01"
    assert seen["hostfile"] == "gpu01 slots=8\ngpu02 slots=8\n"
    assert seen["latest"] == "global_step1000"
    assert seen["cwd"] == str(fake_neox.resolve())


def test_run_neox_segment_fails_without_start_checkpoint(tmp_path, fake_neox):
    save, cfg = _segment(tmp_path, 1000, 2000)
    with pytest.raises(FileNotFoundError, match="step 1000"):
        run_neox_segment(
            fake_neox, cfg, save_dir=save, start_step=1000, end_step=2000, slots_per_node=1,
            work_dir=tmp_path / "w", nodelist="n1",
        )  # fmt: skip


def test_run_neox_segment_reports_a_missing_checkpoint(tmp_path, fake_neox, monkeypatch):
    monkeypatch.setenv("FAKE_RECORD", str(tmp_path / "record.json"))
    monkeypatch.setenv("FAKE_NO_SAVE", "1")
    save, cfg = _segment(tmp_path, 0, 1)
    with pytest.raises(NeoXError, match="global_step1"):
        run_neox_segment(
            fake_neox, cfg, save_dir=save, start_step=0, end_step=1, slots_per_node=1,
            work_dir=tmp_path / "w", nodelist="n1", python=sys.executable,
        )  # fmt: skip


def test_run_neox_segment_reports_failure_with_log(tmp_path, fake_neox):
    (fake_neox / "deepy.py").write_text("import sys\nprint('CUDA out of memory')\nsys.exit(3)\n")
    save, cfg = _segment(tmp_path, 0, 1)
    with pytest.raises(NeoXError, match="(?s)exit code 3.*CUDA out of memory"):
        run_neox_segment(
            fake_neox, cfg, save_dir=save, start_step=0, end_step=1, slots_per_node=1,
            work_dir=tmp_path / "w", nodelist="n1", python=sys.executable,
        )  # fmt: skip


def test_gpt_neox_env_and_post_deploy_agree_on_every_pin():
    envs = Path(__file__).resolve().parents[1] / "envs"
    text = (envs / "gpt-neox.yaml").read_text()
    script = (envs / "gpt-neox.post-deploy.sh").read_text()
    spec = yaml.safe_load(text)
    conda = [d for d in spec["dependencies"] if isinstance(d, str)]
    pips = [d for d in spec["dependencies"] if isinstance(d, dict)][0]["pip"]
    # GPT-NeoX: the v1.0 commit in the header, the script and the doctor.
    assert f"NEOX_COMMIT={NEOX_V1_COMMIT}" in script and NEOX_V1_COMMIT in text
    # DeeperSpeed: installed by the script at tag v1.0's commit, which the header names, beside
    # the commit v1.0's requirements.txt pins (and why that one cannot launch with slurm).
    deeperspeed = "7069d10d2c9abac50576c84cb7e45910fafa218c"
    assert f"DEEPERSPEED_COMMIT={deeperspeed}" in script and deeperspeed in text
    assert "eb7f5cff36678625d23db8a8fe78b4a93e5d2c75" in text
    assert not any("DeeperSpeed" in p for p in pips)
    assert "FLASH_ATTN=0.2.2" in script and "flash-attn==0.2.2" in text
    assert "fused_kernels/setup.py install" in script
    # torch and Python: what the doctor checks is what the env installs.
    assert f"pytorch={PINNED_TORCH}" in conda
    assert "python=3.8" in conda and (3, 8) in SUPPORTED_PYTHON
    # v1.0's requirements/requirements.txt, verbatim (wandb left out: logging only).
    # mpi4py 3.0.3 (v1.0's pin) from conda with an MPI: pip would need an MPI compiler.
    assert "mpi4py=3.0.3" in conda and "mpich" in conda and not any("mpi4py" in p for p in pips)
    for pin in ("einops==0.3.0", "ftfy==6.0.1", "huggingface_hub==0.11.0", "lm_eval==0.3.0",
                "numpy==1.22.0", "pybind11==2.6.2", "tiktoken==0.1.2",
                "tokenizers==0.12.1", "transformers~=4.24.0"):  # fmt: skip
        assert pin in pips, pin


@pytest.mark.skipif(shutil.which("scontrol") is None, reason="no SLURM client installed")
def test_hostnames_from_nodelist_with_real_scontrol():
    if os.system("scontrol show hostnames n[1-2] >/dev/null 2>&1") != 0:
        pytest.skip("scontrol cannot run here (no slurm.conf)")
    assert hostnames_from_nodelist("n[1-2]") == ["n1", "n2"]


# --- one config for neox-config and the segments ----------------------------------------------

REPO = Path(__file__).resolve().parents[1]
SUITE_RUNS = [
    f"pythia-{s}{v}"
    for s in ("70m", "160m", "410m", "1b", "1.4b", "2.8b", "6.9b", "12b")
    for v in ("", "-deduped")
]
# What a segment may change, besides the documented errata (tests/test_config.py's apply_errata):
# paths, how the segment ends, how ranks are found and meet, and GPT-NeoX's evaluation (off).
SEGMENT_KEYS = {"save", "load", "train-data-paths", "valid-data-paths", "test-data-paths",
                "vocab-file", "exit-interval", "extra-save-iters", "deepspeed-slurm",
                "master-port", "eval-iters"}  # fmt: skip


@pytest.fixture(scope="module")
def suite_config() -> dict:
    from pythia_suite import config as cfg

    return cfg.load_config([REPO / "config.yaml"])


def _original(run) -> dict:
    import test_config

    path = test_config.original_config_path(run)
    return test_config.normalise(test_config.apply_errata(run, test_config.read_original(path)))


@pytest.mark.parametrize("run_name", SUITE_RUNS)
def test_segment_config_differs_from_the_original_only_in_paths_segment_end_and_errata(
    suite_config, run_name, tmp_path, anchor
):
    import test_config

    from pythia_suite import config as cfg

    anchor("models")  # the original configs: skip locally without ../shared, fail under CI
    run = cfg.get_run(suite_config, run_name)
    segment = NeoXSegment(
        save_dir=tmp_path / "ck", start_step=1000, end_step=2000,
        data_prefix=str(tmp_path / "data" / "document"), vocab_file=str(tmp_path / "tok.json"),
        nodes=suite_config["sizes"][run.size]["cluster"]["nodes"],
    )  # fmt: skip
    ours = test_config.normalise(run_neox_config(suite_config, run, segment=segment))
    original = _original(run)
    # The same function gives `neox-config RUN`: the segment is that plus the segment keys.
    whole = test_config.normalise(run_neox_config(suite_config, run))
    assert {k: v for k, v in ours.items() if k not in SEGMENT_KEYS} == {
        k: v for k, v in whole.items() if k not in SEGMENT_KEYS
    }
    for key, value in test_config.EXPLICIT_DEFAULTS.items():
        assert ours.pop(key) == value
    changed = {k for k in ours.keys() | original.keys() if ours.get(k) != original.get(k)}
    assert changed <= SEGMENT_KEYS, {k: (original.get(k), ours.get(k)) for k in changed}
    assert ours["train-iters"] == original["train-iters"] == 143000  # not the segment's end
    assert ours["lr-decay-iters"] == original["lr-decay-iters"]
    assert ours["exit-interval"] == 2000 and 2000 in ours["extra-save-iters"]
    assert set(original["extra-save-iters"]) <= set(ours["extra-save-iters"])
    assert ours["save"] == ours["load"] == str(tmp_path / "ck")
    assert ours["train-data-paths"] == [segment.data_prefix]
    # Pythia's layouts span several nodes: the SLURM runner and deepspeed_slurm stay.
    assert ours["launcher"] == "slurm" and ours["deepspeed-slurm"] is (segment.nodes > 1)
    # Its evaluation would read training data (valid paths = train): off, and the config says so.
    assert ours["eval-iters"] == 0 and original["eval-iters"] > 0
    assert ours["master-port"] == segment.master_port


def test_one_node_segments_take_ranks_from_the_local_launcher(suite_config, tmp_path):
    from pythia_suite import config as cfg

    run = cfg.get_run(suite_config, "pythia-70m")
    one = NeoXSegment(tmp_path, 0, 1, "d", "v", nodes=1)
    two = NeoXSegment(tmp_path, 0, 1, "d", "v", nodes=2)
    assert run_neox_config(suite_config, run, segment=one)["deepspeed_slurm"] is False
    assert run_neox_config(suite_config, run, segment=two)["deepspeed_slurm"] is True


def test_a_run_whose_data_and_weight_seeds_differ_is_refused_naming_it(suite_config):
    import copy

    from pythia_suite import config as cfg

    config = copy.deepcopy(suite_config)
    config["matrix"] = [{"sizes": ["160m"], "variants": ["standard"],
                         "seeds": ["data-seed1", "weight-seed2", "seed3"]}]  # fmt: skip
    config["data"]["source"] = "raw"  # the preshuffled set is data seed 1234's order only
    runs = cfg.expand_runs(config)
    for name in ("pythia-160m-data-seed1", "pythia-160m-weight-seed2"):
        with pytest.raises(cfg.ConfigError, match=f"run {name}: data seed .* weight seed"):
            run_neox_config(config, runs[name])
    assert run_neox_config(config, runs["pythia-160m-seed3"])["seed"] == 3


def test_neox_config_command_refuses_a_data_seed_run(tmp_path, capsys):
    from pythia_suite.cli import main

    overlay = tmp_path / "seeds.yaml"
    overlay.write_text(
        "matrix:\n  - {sizes: [160m], variants: [standard], seeds: [data-seed1]}\n"
        "data: {source: raw, raw: {shards: [{path: pile/00.jsonl.zst}]}}\n"
    )
    assert main(["--config", str(REPO / "config.yaml"), "--config", str(overlay),
                 "neox-config", "pythia-160m-data-seed1"]) == 1  # fmt: skip
    err = capsys.readouterr().err
    assert "run pythia-160m-data-seed1: data seed 1 differs from weight seed 1234" in err
    assert "Traceback" not in err


def test_slots_per_node_is_gpus_or_cpu_ranks(suite_config):
    import copy

    assert slots_per_node(suite_config, "410m") == 8
    config = copy.deepcopy(suite_config)
    config["sizes"]["410m"]["cluster"]["gpus_per_node"] = 0
    config["cluster"]["cpu_ranks_per_node"] = 2
    assert slots_per_node(config, "410m") == 2


def test_segment_hosts_outside_slurm_is_this_machine():
    assert segment_hosts(environ={}) == ["localhost"]
    assert segment_hosts(environ={"SLURM_JOB_NODELIST": "n[1-2]"}) == ["n1", "n2"]


# --- the preshuffled set through hand-built index maps, read as GPT-NeoX reads it ---------------


def _gpt_neox_reader(prefix: str, maps):
    """GPT-NeoX v1.0's GPT2Dataset over given index maps: order.GPTNeoXSamples (the suite's port
    of GPT2Dataset.__getitem__/__len__) with these maps instead of ones it builds."""
    import numpy as np

    from pythia_suite.data.order import GPTNeoXSamples, open_dataset

    reader = GPTNeoXSamples.__new__(GPTNeoXSamples)
    reader.seq_length = 16
    reader.paths = maps
    reader.dataset = open_dataset(prefix)
    reader.doc_idx = np.load(maps.doc_idx, mmap_mode="r")
    reader.sample_idx = np.load(maps.sample_idx, mmap_mode="r")
    reader.shuffle_idx = np.load(maps.shuffle_idx, mmap_mode="r")
    return reader


def _write_items(prefix: Path, items) -> None:
    """A preshuffled set: one item (document) per sample, as Pythia's shards hold them."""
    from pythia_suite.data.indexed import IndexedDatasetWriter

    prefix.parent.mkdir(parents=True, exist_ok=True)
    with IndexedDatasetWriter(prefix) as writer:
        for item in items:
            writer.add_document(item)


def test_hand_built_index_maps_give_gpt_neox_the_batch_viewers_samples(tmp_path):
    import numpy as np

    from pythia_suite.data.order import index_map_paths
    from pythia_suite.data.preshuffled import PreshuffledSamples

    rng = np.random.default_rng(0)
    items = rng.integers(0, 50000, size=(37, 17), dtype=np.int64)  # seq_length 16: 17 tokens
    prefix = tmp_path / "pre" / "document"
    _write_items(prefix, items)
    requested = {"train_0": 40, "valid_0": 12, "test_0": 3}
    local = preshuffled_index_maps(
        prefix, tmp_path / "neox" / "data", seq_length=16, seed=1234, requested=requested,
        min_items=32,
    )  # fmt: skip
    viewer = PreshuffledSamples(prefix, seq_length=16)  # what `pythia-suite batch` reads
    for name, count in requested.items():
        maps = index_map_paths(local, tmp_path / "neox" / "data", count, 16, 1234, name=name)
        assert all(p.is_file() for p in maps), maps  # the names GPT-NeoX looks for
        reader = _gpt_neox_reader(local, maps)
        assert len(reader) == len(viewer) == 37  # every item reachable, none past the end
        for k in range(37):
            assert np.array_equal(reader[k], viewer[k]), k
        for step in range(4):  # global batches of 8 as the trainer draws them
            assert np.array_equal(reader.batch(step, 8), viewer.batch(step, 8))
    assert np.array_equal(np.load(maps.shuffle_idx)[:37], 2 * np.arange(37))


def test_hand_built_index_maps_refuse_a_set_that_is_not_preshuffled(tmp_path):
    import numpy as np

    prefix = tmp_path / "document"
    _write_items(prefix, [np.arange(17), np.arange(17)])
    with pytest.raises(ValueError, match=r"document.idx: item 0 has 17 tokens.*33"):
        preshuffled_index_maps(prefix, tmp_path / "o", seq_length=32, seed=1, requested={})
    with pytest.raises(ValueError, match="2 items, but training reads 8"):
        preshuffled_index_maps(
            prefix, tmp_path / "o", seq_length=16, seed=1, requested={}, min_items=8
        )


# --- neox-doctor: every failure branch, with fakes ----------------------------------------------

TORCH_CU116 = ["sm_37", "sm_50", "sm_60", "sm_70", "sm_75", "sm_80", "sm_86"]
GOOD_PROBE = {
    "python": [3, 8, 18],
    "torch": {"ok": True, "version": "1.12.1+cu116", "cuda": "11.6", "arch_list": TORCH_CU116},
    "gpus": [{"name": "NVIDIA A100-SXM4-40GB", "capability": [8, 0]}],
    "deepspeed": {"ok": True, "version": "0.3.15+7069d10", "git_hash": "7069d10"},
    "megatron": {"ok": True, "version": None},
    "kernels": {name: {"ok": True} for name in (*FUSED_KERNELS, FLASH_KERNEL)},
    "converter": {"ok": True},
}
SETUP_PY = 'cc_flag.append("arch=compute_80,code=sm_80")\nnvcc = ["arch=compute_70,code=sm_70"]\n'
FLASH_SIZES = {"70m": 64, "1.4b": 128, "2.8b": 80}  # the suite's sizes that use flash


@pytest.fixture
def checkout(tmp_path):
    root = tmp_path / "gpt-neox"
    (root / "megatron" / "fused_kernels").mkdir(parents=True)
    (root / "deepy.py").write_text("")
    (root / "megatron" / "fused_kernels" / "setup.py").write_text(SETUP_PY)
    return root


def _doctor(root, probe=GOOD_PROBE, head=NEOX_V1_COMMIT, flash=FLASH_SIZES):
    def git_head(path):
        if isinstance(head, Exception):
            raise head
        return head

    return neox_doctor(root, "/env/bin/python", git_head=git_head,
                            probe=lambda p, r: probe, flash_head_dims=flash)  # fmt: skip


def test_doctor_passes_a_complete_v1_stack(checkout):
    checks = _doctor(checkout)
    assert all(c.ok for c in checks), checks
    assert [c.name for c in checks] == [
        "GPT-NeoX checkout", "pinned commit", "Python", "torch", "torch GPU kernels",
        "DeeperSpeed", "megatron", "fused kernels", "GPU architecture", "flash-attn kernel",
        "flash-attn limits", "converter",
    ]  # fmt: skip
    assert "sm_70, sm_80" in checks[8].detail
    assert "1.4b (128)" in checks[10].detail


def _with(**changes):
    return {**GOOD_PROBE, **changes}


def _gpu(name, major, minor):
    return [{"name": name, "capability": [major, minor]}]


A10, V100, H100 = _gpu("NVIDIA A10", 8, 6), _gpu("Tesla V100", 7, 0), _gpu("NVIDIA H100", 9, 0)


@pytest.mark.parametrize(
    ("probe", "head", "name", "message"),
    [
        (GOOD_PROBE, "0" * 40, "pinned commit", "expected 71df4d5017f9"),
        (GOOD_PROBE, NeoXError("not a git repository"), "pinned commit", "not a git"),
        (_with(python=[3, 12, 3]), None, "Python", "Python 3.12.3; v1.0 needs 3.8 or 3.9"),
        (_with(torch={"ok": False, "error": "ModuleNotFoundError: No module named 'torch'"}),
         None, "torch", "not importable: ModuleNotFoundError"),
        (_with(torch={"ok": True, "version": "2.13.0+cpu", "cuda": None}), None, "torch",
         "torch 2.13.0+cpu (CUDA None); envs/gpt-neox.yaml pins 1.12.1"),
        (_with(torch={"ok": True, "version": "1.12.1+cpu", "cuda": None}), None, "torch",
         "a CUDA build"),
        (_with(gpus=[]), None, "GPU", "no GPU (torch sees no CUDA device)"),
        # A cu102 build (kernels up to sm_70) on an A100.
        (_with(torch={**GOOD_PROBE["torch"], "version": "1.12.1+cu102", "arch_list":
                      ["sm_37", "sm_50", "sm_60", "sm_70"]}), None, "torch GPU kernels",
         "A100-SXM4-40GB sm_80; torch 1.12.1+cu102 has kernels for sm_37, sm_50, sm_60, sm_70 "
         "(none for this GPU)"),
        (_with(gpus=H100), None, "torch GPU kernels", "H100 sm_90"),
        (_with(deepspeed={"ok": False, "error": "ModuleNotFoundError: deepspeed"}), None,
         "DeeperSpeed", "not importable"),
        # v1.0's requirements.txt pin: no SLURM runner.
        (_with(deepspeed={"ok": True, "version": "0.3.15+eb7f5cf", "git_hash": "eb7f5cf"}), None,
         "DeeperSpeed", "at commit eb7f5cf, expected DeeperSpeed tag v1.0 = 7069d10"),
        (_with(deepspeed={"ok": True, "version": "0.3.15", "git_hash": "unknown"}), None,
         "DeeperSpeed", "at commit unknown"),
        (_with(megatron={"ok": False, "error": "ImportError: cannot import name\nline two"}),
         None, "megatron", "ImportError: cannot import name line two"),
        (_with(kernels={"scaled_masked_softmax_cuda": {"ok": True}}), None, "fused kernels",
         "not built: scaled_upper_triang_masked_softmax_cuda (python megatron/fused_kernels"),
        (_with(torch={**GOOD_PROBE["torch"], "arch_list": [*TORCH_CU116, "sm_90"]}, gpus=H100),
         None, "GPU architecture",
         "H100 sm_90; kernels built for sm_70, sm_80 (no kernel"),
        (_with(kernels={n: {"ok": True} for n in FUSED_KERNELS}), None,
         "flash-attn kernel", "not importable: not probed (flash-attn==0.2.2"),
        # An A10 runs the fused kernels, but not flash-attn's backward at head dim 80/128.
        (_with(gpus=A10), None, "flash-attn limits",
         "1.4b (head dim 128) on NVIDIA A10: head dimension 128 > 64: flash-attn 0.2.2's "
         "backward pass needs sm_80, not sm_86"),
        (_with(gpus=V100), None, "flash-attn limits",
         "flash-attn 0.2.2 runs on sm_75 and sm_8x only, not sm_70"),
        (_with(converter={"ok": False, "error": "TypeError: 'type' object is not subscriptable"}),
         None, "converter", "does not import: TypeError: 'type' object is not subscriptable "
         "(envs/gpt-neox.post-deploy.sh patches it"),
    ],
)  # fmt: skip
def test_doctor_stops_at_the_first_missing_piece(checkout, probe, head, name, message):
    checks = _doctor(checkout, probe, NEOX_V1_COMMIT if head is None else head)
    assert all(c.ok for c in checks[:-1])
    assert (checks[-1].name, checks[-1].ok) == (name, False)
    assert message in checks[-1].detail
    assert "\n" not in checks[-1].detail  # one line per check


def test_doctor_flash_limits_name_a_size_beyond_flash_attns_head_dim(checkout):
    checks = _doctor(checkout, flash={"1b": 256})
    assert (checks[-1].name, checks[-1].ok) == ("flash-attn limits", False)
    assert (
        "1b (head dim 256) on NVIDIA A100-SXM4-40GB: head dimension 256 > flash-attn 0.2.2's 128"
        in checks[-1].detail
    )


def test_doctor_says_in_one_line_when_the_probe_does_not_answer(checkout, tmp_path, monkeypatch):
    slow = tmp_path / "python"
    slow.write_text("#!/bin/sh\nsleep 30\n")
    slow.chmod(0o755)
    monkeypatch.setattr(doctor, "PROBE_TIMEOUT_S", 1)
    checks = neox_doctor(checkout, str(slow), git_head=lambda p: NEOX_V1_COMMIT)
    assert (checks[-1].name, checks[-1].ok) == ("Python", False)
    assert checks[-1].detail == f"{slow} did not finish the probe in 1 s"


def test_the_suites_flash_sizes_are_within_flash_attns_limits(suite_config):
    dims = flash_head_dims(suite_config)
    assert "1b" not in dims  # global attention (config.yaml): head dim 256
    assert dims == {"70m": 64, "160m": 64, "410m": 64, "1.4b": 128, "2.8b": 80, "6.9b": 128,
                    "12b": 128}  # fmt: skip


def test_doctor_without_a_checkout(tmp_path):
    assert _doctor(None)[-1].detail == "training.neox.dir is not set (envs/gpt-neox.yaml)"
    checks = _doctor(tmp_path)
    assert (checks[-1].name, checks[-1].ok) == ("GPT-NeoX checkout", False)
    assert "deepy.py not found" in checks[-1].detail


def test_doctor_probe_failure_names_the_python(checkout):
    def broken(python, root):
        raise NeoXError(f"cannot run {python}: No such file or directory")

    checks = neox_doctor(checkout, "/nope/python", git_head=lambda p: NEOX_V1_COMMIT,
                              probe=broken)  # fmt: skip
    assert (checks[-1].name, checks[-1].ok) == ("Python", False)
    assert "/nope/python" in checks[-1].detail


@pytest.mark.parametrize(
    ("capability", "ok"),
    [((7, 0), True), ((7, 5), True), ((8, 0), True), ((8, 6), True), ((8, 9), True),
     ((6, 1), False), ((9, 0), False)],
)  # fmt: skip
def test_kernel_binary_compatibility(capability, ok):
    assert arch_supported(capability, [(7, 0), (8, 0)]) is ok


def test_doctor_command_on_this_machine_says_what_is_missing_without_traceback(tmp_path):
    """The real probe and git: here the checkout is a bare directory, then the venv's Python."""
    import subprocess

    root = tmp_path / "gpt-neox"
    root.mkdir()
    (root / "deepy.py").write_text("")
    subprocess.run(["git", "init", "-q", str(root)], check=True)
    cmd = [sys.executable, "-m", "pythia_suite.cli", "--config", str(REPO / "config.yaml"),
           "neox-doctor", "--neox-dir", str(root), "--python", sys.executable]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO)
    assert proc.returncode == 1
    assert "FAIL  pinned commit: cannot read the commit" in proc.stdout
    assert "Traceback" not in proc.stderr
    assert proc.stderr.startswith("pythia-suite neox-doctor: error: GPT-NeoX cannot launch here")


# --- segments end to end with the stand-in GPT-NeoX: a real model, converted and exported -----


def test_neox_segments_train_convert_and_export_the_model_the_trainer_wrote(tmp_path):
    """Three segment jobs outside SLURM (one node, 2 CPU slots): the step0 job trains (0, 1],
    the step1 job reuses global_step1, the step2 job trains (1, 2]. The exported step 2 must
    compute the logits of the model the stand-in trainer saved in GPT-NeoX's layout."""
    import torch
    from neox_support import calls, neox_overlay, placeholder_training_data, standin_checkout
    from transformers import GPTNeoXForCausalLM

    from pythia_suite import config as cfg
    from pythia_suite import paths, provenance, retention
    from pythia_suite.cli import main
    from pythia_suite.export import export_checkpoint
    from pythia_suite.slurm import checkpoint_complete
    from pythia_suite.train.checkpoint import read_trainer_state
    from pythia_suite.train.summary import SEGMENT_SUMMARY_NAME

    sys.path.insert(0, str(Path(__file__).resolve().parent / "neox_standin"))
    import standin

    checkout = standin_checkout(tmp_path / "gpt-neox")
    overlay = neox_overlay(
        tmp_path / "neox.yaml", checkout, sys.executable,
        paths={"results": str(tmp_path / "results"), "state": str(tmp_path / "state")},
        matrix=[{"sizes": ["0.4m"], "variants": ["standard"], "seeds": ["default"]}],
        cluster={"cpu_ranks_per_node": 2},
        sizes={"0.4m": {"micro_batch": 4}},  # 4 x 2 ranks = the global batch of 8
    )  # fmt: skip
    files = [str(REPO / "config.yaml"), str(REPO / "config" / "mini.yaml"), str(overlay)]
    config = cfg.load_config(files)
    run = cfg.get_run(config, "pythia-0.4m")
    placeholder_training_data(config, run)
    args = [a for f in files for a in ("--config", f)]
    # Rule neox_index_maps: the data prefix and maps, once per dataset (segments write none).
    maps = neox_index_maps_dir(config, run.variant, run.data_seed)
    assert main([*args, "neox-index-maps", "--variant", run.variant, "--seed",
                 str(run.data_seed), "--output", maps]) == 0  # fmt: skip
    before = {p: p.stat().st_mtime_ns for p in Path(maps).iterdir()}
    results = config["paths"]["results"]
    ck = {s: Path(paths.checkpoint_dir(results, run.name, s)) for s in (0, 1, 2)}
    for step in (0, 1, 2):
        assert main([*args, "train-segment", run.name, "--step", str(step),
                     "--output", str(ck[step])]) == 0  # fmt: skip

    assert {p: p.stat().st_mtime_ns for p in Path(maps).iterdir()} == before  # none rewritten
    # One deepy.py per segment that trained; one rank per slot, from the local launcher.
    launches = calls(checkout, "deepy.py")
    assert len(launches) == 2
    ranks = calls(checkout, "train.py")
    assert sorted((r["rank"], r["world_size"]) for r in ranks) == [(0, 2), (0, 2), (1, 2), (1, 2)]
    assert calls(checkout, "srun") == []  # one host: no srun, no SLURM variables needed
    segment1 = yaml.safe_load(Path(launches[0]["argv"][1]).read_text())
    assert segment1["deepspeed_slurm"] is False and segment1["exit-interval"] == 1

    for step, path in ck.items():
        assert checkpoint_complete(path, step), path
        state = read_trainer_state(path)
        assert state["backend"] == "neox" and state["step"] == step
        assert provenance.verify(path).ok
    record = json.loads((ck[2] / "provenance.json").read_text())
    assert {Path(e["path"]).name for e in record["inputs"]} >= {"step1"}

    # Segment summaries: the checkpoint a segment ends at carries it (step1's comes from the
    # step0 job, which trained (0, 1]); step0 ends no segment.
    first = json.loads((ck[1] / SEGMENT_SUMMARY_NAME).read_text())
    assert (first["start_step"], first["end_step"], first["steps"]) == (0, 1, 1)
    summary = json.loads((ck[2] / SEGMENT_SUMMARY_NAME).read_text())
    assert (summary["start_step"], summary["end_step"], summary["steps"]) == (1, 2, 1)
    assert summary["tokens"] == config["training"]["global_batch"] * config["model"]["seq_length"]
    assert summary["devices"] == 2 and summary["device_kind"] == "cpu" and summary["mfu"] is None
    assert summary["tokens_per_s"] > 0 and summary["wall_s"] >= summary["train_time_s"] > 0
    assert summary["losses"]["last"] is None  # GPT-NeoX's losses stay in its own log
    assert not (ck[0] / SEGMENT_SUMMARY_NAME).exists()

    tokenizer = paths.tokenizer(results)
    export = export_checkpoint(ck[2], tokenizer, tmp_path / "export2", dtype="float16")
    theirs = GPTNeoXForCausalLM.from_pretrained(export, dtype=torch.float32).eval()
    neox_cfg = yaml.safe_load(Path(launches[1]["argv"][1]).read_text())
    reference = standin.tiny_model(neox_cfg, 2048, 2).half().float()  # v1.0 converts to fp16
    tokens = torch.randint(0, 2048, (2, 32), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected, got = reference(tokens).logits, theirs(tokens).logits
        other = standin.tiny_model(neox_cfg, 2048, 1).half().float()(tokens).logits
    assert torch.allclose(got, expected, atol=1e-5, rtol=0), (got - expected).abs().max()
    assert not torch.allclose(got, other, atol=1e-2)  # step 1's weights would not pass

    # Retention prunes GPT-NeoX's global_step1 as the PyTorch backend's optimizer/: the
    # checkpoint's content hash, and so every record downstream, stays what it was.
    global_step1 = Path(read_trainer_state(ck[1])["neox_checkpoint"])
    assert global_step1.is_dir() and retention.resume_bytes(ck[1]) > 0
    before = provenance.content_hash(ck[1])
    pruned = retention.prune_checkpoint(ck[1], "test")
    assert not global_step1.exists() and retention.resume_bytes(ck[1]) == 0
    assert any("layer_00-model_00" in p for p in pruned["removed_outside"])
    assert provenance.content_hash(ck[1]) == before
    assert retention.is_pruned(ck[1])


def test_a_pruned_neox_start_checkpoint_is_named(tmp_path):
    save = tmp_path / "ck"
    save.mkdir()
    with pytest.raises(FileNotFoundError, match="global_step1000 .*retention"):
        point_latest_at(save, 1000)


def test_sharded_converter_output_is_read_and_a_missing_shard_named(tmp_path):
    import numpy as np
    from safetensors.numpy import save_file

    from pythia_suite.export import ExportError, hf_weight_files, load_hf_weights

    save_file({"a": np.ones(2, np.float32)}, str(tmp_path / "model-00001-of-00002.safetensors"))
    save_file({"b": np.zeros(3, np.float32)}, str(tmp_path / "model-00002-of-00002.safetensors"))
    index = {"weight_map": {"a": "model-00001-of-00002.safetensors",
                            "b": "model-00002-of-00002.safetensors"}}  # fmt: skip
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps(index))
    assert len(hf_weight_files(tmp_path)) == 2
    tensors = load_hf_weights(tmp_path)
    assert sorted(tensors) == ["a", "b"] and tensors["b"].shape == (3,)
    (tmp_path / "model-00002-of-00002.safetensors").unlink()
    with pytest.raises(ExportError, match="shard 'model-00002-of-00002.safetensors' not found"):
        load_hf_weights(tmp_path)
    with pytest.raises(ExportError, match="no weights"):
        load_hf_weights(tmp_path / "empty")


# --- the DAG under the neox backend ------------------------------------------------------------


def _neox_dry_run(tmp_path, **extra):
    import subprocess

    overlay = tmp_path / "neox.yaml"
    overlay.write_text(yaml.safe_dump({"training": {"backend": "neox",
                                                    "neox": {"dir": str(tmp_path / "gpt-neox")}},
                                       **extra}))  # fmt: skip
    target = "results/runs/pythia-410m-deduped/checkpoints/step2"
    argv = [str(Path(sys.executable).with_name("snakemake")), target, "--profile",
            "profiles/slurm", "-n", "--quiet", "rules", "--configfile", "config.yaml",
            str(overlay)]  # fmt: skip
    return subprocess.run(argv, cwd=REPO, capture_output=True, text=True, timeout=600)


def test_neox_dag_builds_index_maps_once_per_dataset_and_refuses_what_v1_cannot_run(tmp_path):
    result = _neox_dry_run(tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert re.search(r"^neox_index_maps\s+1$", result.stdout + result.stderr, re.M)
    flash_1b = {"sizes": {"1b": {"neox": {"attention-config": [[["flash"], 16]]}}}}
    result = _neox_dry_run(tmp_path, **flash_1b)
    assert result.returncode != 0
    assert "run pythia-1b: attention-config asks for flash, but head dimension 256" in (
        result.stdout + result.stderr
    )


def test_both_backends_take_the_same_segment_entry_arguments():
    """`train-segment` calls either backend's entry with the same keyword arguments."""
    import inspect

    from pythia_suite.errors import ConfigError
    from pythia_suite.neox.segment import train_segment_neox
    from pythia_suite.train.segment import backend_entry, train_segment_pytorch

    def shape(entry):
        return [(p.name, p.kind, p.default) for p in inspect.signature(entry).parameters.values()]

    assert backend_entry("pytorch") is train_segment_pytorch
    assert backend_entry("neox") is train_segment_neox
    assert shape(train_segment_pytorch) == shape(train_segment_neox)
    assert [
        n for n, kind, _ in shape(train_segment_neox) if kind == inspect.Parameter.KEYWORD_ONLY
    ] == ["start_checkpoint", "start_step", "end_step", "out_dir", "state_dir", "inputs"]
    with pytest.raises(ConfigError, match="training.backend: 'megatron'"):
        backend_entry("megatron")
