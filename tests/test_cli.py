"""CLI commands around the stages: reference comparison, plan output."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from pythia_suite.cli import main

REPO = Path(__file__).resolve().parents[1]
ZERO_SHOT = "evals/pythia-v1/pythia-410m/zero-shot/410m_step143000.json"


def test_compare_reference_passes_on_itself_and_names_a_perturbed_metric(tmp_path, capsys, anchor):
    zero_shot = anchor(ZERO_SHOT)
    config = ["--config", str(REPO / "config.yaml")]
    assert main([*config, "compare-reference", str(zero_shot), str(zero_shot)]) == 0
    perturbed = json.loads(zero_shot.read_text())
    perturbed["results"]["piqa"]["acc"] += 0.05
    ours = tmp_path / "ours.json"
    ours.write_text(json.dumps(perturbed))
    with pytest.raises(SystemExit) as exit_info:
        main([*config, "compare-reference", str(ours), str(zero_shot), "--tolerance", "0.02"])
    assert exit_info.value.code == 1
    assert "piqa" in capsys.readouterr().out


def test_plan_prints_every_run_with_gpu_hours(capsys):
    assert main(["--config", str(REPO / "config.yaml"), "plan", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["run"] for r in rows][:2] == ["pythia-70m", "pythia-70m-deduped"]
    assert all(r["gpu_hours"] > 0 and r["resume_bytes_kept"] < r["resume_bytes_all"] for r in rows)


@pytest.mark.parametrize("step", ["999", "128", "-1", "99999"])
def test_batch_refuses_steps_training_never_reaches(tmp_path, capsys, step):
    config = ["--config", str(REPO / "config.yaml"), "--config", str(REPO / "config/mini.yaml")]
    out = tmp_path / "batch.npy"
    assert main([*config, "batch", "pythia-1.3m", "--step", step, "--output", str(out)]) == 1
    err = capsys.readouterr().err
    assert f"--step {step}: training.train_iters is 128, so steps run 0 .. 127" in err
    assert "Traceback" not in err and not out.exists()


def test_batch_names_the_targets_that_build_its_missing_data(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    config = ["--config", str(REPO / "config.yaml"), "--config", str(REPO / "config/mini.yaml")]
    assert main([*config, "batch", "pythia-0.4m", "--step", "3", "--decode", "1"]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    dataset = "results-mini/data/datasets/standard/standard_text_document"
    assert f"{dataset}.bin, {dataset}.idx, " in err and "tokenizer.json: not built yet" in err
    assert f"`snakemake {dataset}.bin {dataset}.idx results-mini/data/" in err


def test_verify_says_no_such_file_for_a_missing_path(tmp_path, capsys):
    missing = tmp_path / "results" / "evals" / "pythia-9m"
    with pytest.raises(SystemExit):
        main(["--config", str(REPO / "config.yaml"), "verify", str(missing)])
    assert f"BREAK {missing}: no such file or directory" in capsys.readouterr().out


def test_plan_writes_one_unit_per_quantity_merges_identical_runs_and_explains_columns(capsys):
    assert main(["--config", str(REPO / "config.yaml"), "plan"]) == 0
    out = capsys.readouterr().out
    rows = {line.split("  ")[0].strip(): line for line in out.splitlines() if "pythia-" in line}
    # Standard and deduped runs are identical before anything is measured: one row each.
    assert "pythia-70m (+deduped)" in rows and not any(r.startswith("pythia-70m-d") for r in rows)
    plan_row = next(line for line in out.splitlines() if line.startswith("pythia-1b (+deduped)"))
    assert plan_row.split()[2:6] == ["1.01B", "806M", "300B", "1.88e21"]  # B/M, FLOPs in sci
    assert "1.88e21 FLOP" in plan_row
    assert not re.search(r"\d[GEZ]\b|e\+\d", out), "G/E/Z counts or e+NN formats"
    # Device-hours: one format (11,938 for 2.8b), never 1.194e+04.
    assert " 11,938 " in out and "1.194e" not in out
    legend = " ".join(out.split())
    for column in ("params:", "non-emb:", "tokens:", "train FLOPs:", "ckpts:", "published:"):
        assert column in legend, column
    for column in ("devs:", "peak TF/s:", "MFU:", "tokens/s:", "device-hours:"):
        assert column in legend, column


def test_memory_table_explains_every_abbreviation():
    from pythia_suite.train.memory_plan import render_memory_table

    layout = {
        "gpu_name": "A100",
        "tensor_parallel": 1,
        "data_parallel": 8,
        "micro_batch": 4,
        "gas": 1,
        "precision": "fp16",
        "activation_checkpointing": True,
    }
    breakdown = dict.fromkeys(
        ("parameters", "gradients", "optimizer", "activations", "temporaries"), 2**30
    )
    entry = {
        "layout": layout,
        "breakdown": breakdown,
        "peak_bytes": 5 * 2**30,
        "limit_bytes": 38 * 2**30,
        "peak_phase": "backward",
        "fits": True,
    }
    text = render_memory_table({"runs": {"pythia-70m": entry}})
    header = text.splitlines()[1].split()
    legend = " ".join(text.splitlines()[4:])
    for column in header[2:-1]:
        assert f"{column} =" in legend or f"{column} (" in legend, column
