"""The one config: the suite it describes, its derived configs, and the errors it gives."""

from __future__ import annotations

import copy
import re
from pathlib import Path

import pytest
import yaml
from conftest import PYTHIA_ANCHORS, require_anchor

from pythia_suite import config as cfg
from pythia_suite.neox.config import neox_config
from pythia_suite.train import settings

REPO = Path(__file__).resolve().parents[1]
ORIGINALS = PYTHIA_ANCHORS / "models"

# Keys that name places on EleutherAI's cluster, not training behaviour.
SITE_KEYS = {"train-data-paths", "valid-data-paths", "test-data-paths", "vocab-file"}
# NeoX defaults the generated configs spell out (the originals rely on them).
EXPLICIT_DEFAULTS = {"seed": 1234, "make-vocab-size-divisible-by": 128}
SYNONYMS = {"gas": "gradient-accumulation-steps"}


@pytest.fixture(scope="module")
def suite() -> dict:
    return cfg.load_config([REPO / "config.yaml"])


@pytest.fixture(scope="module")
def mini() -> dict:
    return cfg.load_config([REPO / "config.yaml", REPO / "config" / "mini.yaml"])


def normalise(neox: dict) -> dict:
    """GPT-NeoX accepts '-' and '_' alike, and 'gas' for gradient accumulation."""
    out = {}
    for key, value in neox.items():
        key = key.replace("_", "-")
        key = SYNONYMS.get(key, key)
        out[key] = normalise(value) if isinstance(value, dict) else value
    return out


def read_original(path: Path) -> dict:
    text = path.read_text()
    # Erratum 2: pythia-12b.yml lacks the comma after "attention-config" (not valid YAML).
    text = re.sub(r'("attention-config": \[\[\["flash"\], \d+\]\])\s*\n', r"\1,\n", text)
    return yaml.safe_load(text)


def original_config_path(run: cfg.Run) -> Path:
    folder = {"1.4b": "1.4B", "2.8b": "2.8B", "6.9b": "6.9B"}.get(run.size, run.size.upper())
    return ORIGINALS / folder / f"{run.name}.yml"


def apply_errata(run: cfg.Run, original: dict) -> dict:
    fixed = copy.deepcopy(original)
    if run.size in ("6.9b", "12b"):  # erratum 1: no init method set, GPT-NeoX's defaults used
        fixed["init_method"], fixed["output_layer_init_method"] = "normal", "scaled_normal"
    if run.name == "pythia-12b-deduped":  # erratum 2: 36 layers / 40 heads, not 40 / 36
        fixed["num-layers"], fixed["num-attention-heads"] = 36, 40
    if run.name == "pythia-1b":  # erratum 3: standard 1b trained in bf16, as v1.0 spells it
        fp16 = {k: v for k, v in fixed.pop("fp16").items() if k != "fp16"}
        fixed["fp16"] = {**fp16, "type": "bfloat16"}  # v1.0's configs/bf16_125M.yml
        fixed["fp32_allreduce"] = True
    if run.size == "1b":  # deviation: head dim 256 > flash-attn 0.2.2's 128 (config.yaml)
        fixed["attention-config"] = [[["global"], 16]]
    return fixed


def test_default_matrix_is_the_16_run_suite(suite):
    runs = cfg.expand_runs(suite)
    sizes = ["70m", "160m", "410m", "1b", "1.4b", "2.8b", "6.9b", "12b"]
    expected = [f"pythia-{s}{v}" for s in sizes for v in ("", "-deduped")]
    assert list(runs) == expected


def test_checkpoint_schedule_is_pythias_154_steps(suite):
    steps = cfg.checkpoint_steps(suite)
    assert len(steps) == 154
    assert steps[:12] == [0, 1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1000]
    assert steps[-1] == 143000 and all(
        b - a == 1000 for a, b in zip(steps[11:], steps[12:], strict=False)
    )


def test_eval_schedule_is_pythias(suite):
    assert len(suite["evaluation"]["zero_shot_steps"]) == 27
    assert len(suite["evaluation"]["five_shot_steps"]) == 15


@pytest.mark.parametrize(
    "run_name",
    [
        f"pythia-{s}{v}"
        for s in ("70m", "160m", "410m", "1b", "1.4b", "2.8b", "6.9b", "12b")
        for v in ("", "-deduped")
    ],
)
def test_neox_config_equals_original_training_config(suite, run_name):
    require_anchor("models")
    run = cfg.get_run(suite, run_name)
    ours = normalise(neox_config(suite, run))
    original = normalise(apply_errata(run, read_original(original_config_path(run))))
    for key in SITE_KEYS:
        original.pop(key, None)
        ours.pop(key, None)
    for key, value in EXPLICIT_DEFAULTS.items():
        assert ours.pop(key) == value
    assert ours == original


@pytest.mark.parametrize("size", ["14m", "31m"])
def test_small_sizes_match_their_original_configs(suite, size):
    require_anchor("models")
    config = copy.deepcopy(suite)
    config["matrix"] = [{"sizes": [size], "variants": ["standard"], "seeds": ["default"]}]
    run = cfg.get_run(config, f"pythia-{size}")
    ours = normalise(neox_config(config, run))
    original = normalise(read_original(ORIGINALS / size.upper() / f"pythia-{size}.yml"))
    for key in SITE_KEYS | {"launcher", "deepspeed-slurm"}:
        original.pop(key, None)
        ours.pop(key, None)
    for key in EXPLICIT_DEFAULTS:
        ours.pop(key)
    assert ours == original


@pytest.mark.parametrize(
    "size", ["14m", "31m", "70m", "160m", "410m", "1b", "1.4b", "2.8b", "6.9b", "12b"]
)
def test_hf_config_builds_a_model_with_the_published_parameter_counts(suite, size):
    import torch
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

    config = copy.deepcopy(suite)
    config["matrix"] = [{"sizes": [size], "variants": ["standard"], "seeds": ["default"]}]
    run = cfg.get_run(config, f"pythia-{size}")
    with torch.device("meta"):
        model = GPTNeoXForCausalLM(GPTNeoXConfig(**settings.hf_config(config, run)))
    total = sum(p.numel() for p in model.parameters())
    embeddings = (
        model.get_input_embeddings().weight.numel() + model.get_output_embeddings().weight.numel()
    )
    published = suite["sizes"][size]["published_params"]
    assert total == published["total"]
    assert total - embeddings == published["non_embedding"]
    assert cfg.parameter_counts(config, size) == (published["total"], published["non_embedding"])


def test_mini_overlay_keeps_the_log_spaced_early_checkpoints(mini):
    assert cfg.checkpoint_steps(mini) == [0, 1, 2, 4, 8, 16, 32, 64, 96, 128]
    assert len(cfg.expand_runs(mini)) == 4


def test_polypythia_seeds_are_a_config_change(suite):
    config = copy.deepcopy(suite)
    config["matrix"] = [
        {"sizes": ["410m"], "variants": ["standard"], "seeds": ["seed3"]},
        {"sizes": ["160m"], "variants": ["standard"], "seeds": ["data-seed1", "weight-seed2"]},
    ]
    # Data seeds other than 1234 need a source that builds the order (the preshuffled set is
    # 1234's: refused, tests/test_data_source.py).
    config["data"]["source"] = "raw"
    config["data"]["raw"]["shards"] = [{"path": "pile/train/00.jsonl.zst"}]
    cfg.check_config(config)
    runs = cfg.expand_runs(config)
    assert list(runs) == ["pythia-410m-seed3", "pythia-160m-data-seed1", "pythia-160m-weight-seed2"]
    assert runs["pythia-160m-data-seed1"].data_seed == 1
    assert runs["pythia-160m-data-seed1"].weight_seed == 1234
    assert neox_config(config, runs["pythia-160m-weight-seed2"])["seed"] == 2


def test_precision_per_variant_encodes_erratum_3(suite):
    assert cfg.precision(suite, cfg.get_run(suite, "pythia-1b")) == "bf16"
    assert cfg.precision(suite, cfg.get_run(suite, "pythia-1b-deduped")) == "fp16"


def test_activation_checkpointing_has_one_source_the_sizes_neox_config(suite, mini):
    expected = {size: size not in ("14m", "31m") for size in suite["sizes"]}
    assert {
        size: settings.activation_checkpointing(suite, size) for size in suite["sizes"]
    } == expected
    for name in ("pythia-70m", "pythia-12b"):
        run = cfg.get_run(suite, name)
        values = settings.train_settings(suite, run)
        assert values.activation_checkpointing is True
        assert neox_config(suite, run)["checkpoint-activations"] is True
    # An overlay that turns it off for a size turns it off for both backends.
    overlay = copy.deepcopy(suite)
    overlay["sizes"]["70m"]["neox"]["checkpoint-activations"] = False
    run = cfg.get_run(overlay, "pythia-70m")
    assert settings.train_settings(overlay, run).activation_checkpointing is False
    assert neox_config(overlay, run)["checkpoint-activations"] is False
    # A null removes the key: GPT-NeoX's default, off.
    overlay["sizes"]["70m"]["neox"]["checkpoint-activations"] = None
    assert settings.activation_checkpointing(overlay, "70m") is False
    assert settings.train_settings(mini, cfg.get_run(mini, "pythia-0.4m")).compile_layers is False


def test_original_layout_is_kept_and_devices_are_counted_once(suite, mini):
    assert (cfg.devices(suite, "12b"), cfg.data_parallel_size(suite, "12b")) == (256, 64)
    assert (cfg.devices(suite, "6.9b"), cfg.data_parallel_size(suite, "6.9b")) == (128, 64)
    for name in ("pythia-12b", "pythia-6.9b", "pythia-410m"):
        run = cfg.get_run(suite, name)
        size = suite["sizes"][run.size]
        values = settings.train_settings(suite, run)
        # What a GPU holds is the original micro-batch, at the original tensor parallel degree.
        assert values.micro_batch == size["micro_batch"]
        assert values.tensor_parallel == size["tensor_parallel"]
        assert (
            values.micro_batch * size["gas"] * cfg.data_parallel_size(suite, run.size)
            == values.global_batch
        )
    # CPU nodes count cluster.cpu_ranks_per_node, in the check and in the launcher alike.
    assert cfg.devices(mini, "0.4m") == 1 and cfg.ranks_per_node(mini, "0.4m") == 1
    two_ranks = copy.deepcopy(mini)
    two_ranks["cluster"]["cpu_ranks_per_node"] = 2
    assert cfg.devices(two_ranks, "0.4m") == 2
    with pytest.raises(cfg.ConfigError, match=r"micro_batch 8 x gas 1 x data-parallel ranks 2"):
        cfg.check_config(two_ranks)


@pytest.mark.parametrize(
    ("size", "cluster", "message"),
    [
        # 96 GPUs instead of 256: the original micro-batch cannot make the global batch.
        (
            "12b",
            {"nodes": 12, "gpus_per_node": 8},
            r"sizes\.12b: micro_batch 8 x gas 2 x data-parallel ranks 24 \(devices 96 / "
            r"tensor_parallel 4\) = 384 sequences per step, but training\.global_batch is 1024\. "
            r"Each GPU runs sizes\.12b\.micro_batch as configured",
        ),
        (
            "6.9b",
            {"nodes": 1, "gpus_per_node": 1},
            r"sizes\.6\.9b\.tensor_parallel: 2 does not divide the 1 devices",
        ),
    ],
)
def test_a_layout_that_cannot_keep_the_micro_batch_is_refused(suite, size, cluster, message):
    changed = copy.deepcopy(suite)
    changed["sizes"][size]["cluster"] = cluster
    with pytest.raises(cfg.ConfigError, match=message):
        cfg.check_config(changed)
    with pytest.raises(cfg.ConfigError, match=message):
        settings.train_settings(changed, cfg.get_run(changed, f"pythia-{size}"))


def test_plan_rows(suite):
    rows = {r["run"]: r for r in cfg.plan_rows(suite, 989.0, 0.4)}
    row = rows["pythia-12b"]
    assert row["tokens"] == 299_892_736_000
    assert row["checkpoints"] == 154
    assert row["resume_bytes_all"] == 11_846_072_320 * 16 * 154  # ~29 TB for one 12b run
    assert row["resume_bytes_kept"] == 11_846_072_320 * 16 * suite["training"]["keep_resume_states"]
    assert row["gpus"] == 256 and row["gpu_hours"] > 0


# ----------------------------------------------------------------------------- errors


def write_overlay(tmp_path: Path, overlay: dict) -> Path:
    path = tmp_path / "overlay.yaml"
    path.write_text(yaml.safe_dump(overlay))
    return path


@pytest.mark.parametrize(
    ("overlay", "message"),
    [
        (
            {"training": {"global_batch": "many"}},
            r"training\.global_batch: 'many' is not of type 'integer'",
        ),
        ({"sizes": {"70m": {"layers": 6.5}}}, r"sizes\.70m\.layers: 6\.5 is not of type 'integer'"),
        (
            {"training": {"checkpoint": {"factor": 10}}},
            r"training: Additional properties .*'checkpoint'",
        ),
        ({"matrix": [{"sizes": ["3b"]}]}, r"matrix\[0\]\.sizes: '3b' is not defined under 'sizes'"),
        (
            {"sizes": {"410m": {"micro_batch": 16}}},
            r"sizes\.410m: micro_batch 16 x gas 1 x data-parallel ranks 32 \(devices 32 / "
            r"tensor_parallel 1\) = 512 sequences per step, but training\.global_batch is 1024",
        ),
        (
            {"training": {"checkpoints": {"extra": [0, 150000]}}},
            r"training\.checkpoints\.extra: step 150000 is beyond training\.train_iters \(143000\)",
        ),
        (
            {"evaluation": {"five_shot_steps": [3500]}},
            r"evaluation\.five_shot_steps: step 3500 is not a checkpoint step",
        ),
        ({"data": {"source": "torrent"}}, r"data\.source: 'torrent' is not one of"),
        (
            {"training": {"compile_layers": True}},
            r"training\.compile_layers: true is offered at tensor_parallel 1 only, but "
            r"sizes\.(6\.9b|12b)\.tensor_parallel is [24]",
        ),
    ],
)
def test_bad_configs_are_rejected_naming_the_key(tmp_path, overlay, message):
    with pytest.raises(cfg.ConfigError, match=message) as err:
        cfg.load_config([REPO / "config.yaml", write_overlay(tmp_path, overlay)])
    assert "overlay.yaml" in str(err.value)


def test_unreadable_config_names_the_file(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("training: [unclosed\n")
    with pytest.raises(cfg.ConfigError, match="bad.yaml: not valid YAML"):
        cfg.load_config([bad])
    with pytest.raises(cfg.ConfigError, match="missing.yaml: cannot read config file"):
        cfg.load_config([tmp_path / "missing.yaml"])


def test_check_config_gives_each_bad_input_in_one_line(tmp_path, capsys):
    """`pythia-suite check-config FILE...`: the command the README names for the inputs Snakemake
    reads itself (YAML syntax, a missing file); one line naming the file, line and column."""
    from pythia_suite.cli import main

    bad = tmp_path / "bad.yaml"
    bad.write_text("sizes:\n  tiny: [1, 2\ntraining: {}\n")
    typo = write_overlay(tmp_path, {"training": {"train_iter": 3}})
    expected = {
        bad: r"bad\.yaml: not valid YAML: line 3, column \d+: .*\(while parsing a flow sequence "
        r"at line 2, column 9\)$",
        tmp_path / "missing.yaml": r"missing\.yaml: cannot read config file: No such file",
        typo: r"config\.yaml \+ .*overlay\.yaml: training: Additional properties are not "
        r"allowed \('train_iter' was unexpected\)$",
    }
    for path, message in expected.items():
        assert main(["check-config", str(REPO / "config.yaml"), str(path)]) == 1
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1, err
        assert re.search(message, err), err
    assert main(["check-config", str(REPO / "config.yaml"), str(REPO / "config/mini.yaml")]) == 0
    assert "valid: 4 runs, results in results-mini/" in capsys.readouterr().out


def test_cli_without_config_reads_the_suite_last_started_here(tmp_path, monkeypatch, capsys):
    from pythia_suite.cli import main

    monkeypatch.chdir(tmp_path)
    (tmp_path / "config.yaml").write_text((REPO / "config.yaml").read_text())
    assert main(["runs"]) == 0
    out = capsys.readouterr()
    assert len(out.out.split()) == 16 and "config config.yaml (no results folder" in out.err
    mini = cfg.load_config([REPO / "config.yaml", REPO / "config/mini.yaml"])
    real = cfg.load_config([REPO / "config.yaml"])
    for config in (real, mini):  # the later start wins, whichever suite it was
        cfg.write_effective_config(config, Path(config["paths"]["results"]) / cfg.EFFECTIVE_CONFIG)
        assert main(["runs"]) == 0
        out = capsys.readouterr()
        assert len(out.out.split()) == len(cfg.expand_runs(config))
        results = config["paths"]["results"]
        assert f"config {results}/config/effective.yaml (the config {results}/ was" in out.err
    cfg.write_effective_config(real, Path("results") / cfg.EFFECTIVE_CONFIG)  # restarted: touched
    assert main(["runs"]) == 0
    assert len(capsys.readouterr().out.split()) == 16


def test_cli_subcommands_share_the_config_and_fail_clearly(tmp_path, capsys):
    from pythia_suite.cli import main

    assert main(["--config", str(REPO / "config.yaml"), "hf-config", "pythia-70m"]) == 0
    assert '"hidden_size": 512' in capsys.readouterr().out
    overlay = write_overlay(tmp_path, {"sizes": {"70m": {"hidden": 500}}})
    assert (
        main(
            [
                "--config",
                str(REPO / "config.yaml"),
                "--config",
                str(overlay),
                "hf-config",
                "pythia-70m",
            ]
        )
        == 1
    )
    assert "sizes.70m.hidden: 500 is not divisible by heads 8" in capsys.readouterr().err
    assert main(["--config", str(REPO / "config.yaml"), "neox-config", "pythia-3b"]) == 1
    assert "no run named 'pythia-3b'" in capsys.readouterr().err


def test_nothing_to_publish_to_is_a_config_error(suite):
    config = copy.deepcopy(suite)
    config["publish"].update(hub=False, local_hub=False)
    with pytest.raises(
        cfg.ConfigError, match=r"publish\.hub and publish\.local_hub are both false"
    ):
        cfg.check_config(config, "x.yaml")
