"""Tests for pythia_suite.report: fingerprint check, plots, final table, report assembly."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import pytest

from pythia_suite import report as rp

RUNS = [
    {"name": "mini-a", "size": "a", "variant": "standard", "params": 1000, "data_seed": 1234},
    {
        "name": "mini-a-deduped",
        "size": "a",
        "variant": "deduped",
        "params": 1000,
        "data_seed": 1234,
    },
    {"name": "mini-b", "size": "b", "variant": "standard", "params": 4000, "data_seed": 1234},
    {
        "name": "mini-b-deduped",
        "size": "b",
        "variant": "deduped",
        "params": 4000,
        "data_seed": 1234,
    },
]
STEPS = [0, 1, 2, 4, 8]


def fp(variant: str, step: int) -> str:
    return f"{variant}-{step:04d}".ljust(64, "0")


def write_eval(root: Path, run: str, step: int, shots: int, acc: float) -> Path:
    shot_dir = {0: "zero-shot", 5: "five-shot"}[shots]
    path = root / run / shot_dir / f"{run}_step{step}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    doc = {
        "results": {
            "mini_lambada": {
                "ppl": 1000.0 / (step + 1),
                "ppl_stderr": 3.0,
                "acc": acc,
                "acc_stderr": 0.01,
            },
            "mini_heldout": {
                "word_perplexity": 50.0 - step,
                "byte_perplexity": 3.0,
                "bits_per_byte": 1.5,
            },
        },
        "versions": {"mini_lambada": 1.0, "mini_heldout": 1.0},
        "config": {"model": "hf", "num_fewshot": shots},
    }
    path.write_text(json.dumps(doc))
    return path


def write_state(path: Path, steps: range, variant: str, spikes=()) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {
        "step": steps[-1],
        "losses": [
            {"step": s, "loss": 6.0 / (1 + s), "lr": 1e-3, "tokens_per_s": 10.0} for s in steps
        ],
        "step_fingerprints": {str(s): fp(variant, s) for s in steps},
        "spikes": [{"step": s, "loss": 6.0 / (1 + s), "running_mean": 0.1} for s in spikes],
    }
    path.write_text(json.dumps(state))
    return path


@pytest.fixture()
def inputs(tmp_path):
    evals, states = {}, {}
    for i, run in enumerate(RUNS):
        name, variant = run["name"], run["variant"]
        evals[name] = [
            write_eval(tmp_path / "evals", name, s, 0, 0.1 * i + 0.01 * s) for s in STEPS
        ]
        evals[name].append(write_eval(tmp_path / "evals", name, 8, 5, 0.5))
        # Two segments per run: (0, 4] and (4, 8].
        states[name] = [
            write_state(tmp_path / name / "step4/trainer_state.json", range(1, 5), variant),
            write_state(
                tmp_path / name / "step8/trainer_state.json",
                range(5, 9),
                variant,
                spikes=(6,) if name == "mini-b" else (),
            ),
        ]
    return evals, states


def test_fingerprints_pass_when_equal_and_name_first_differing_step():
    same = {"r1": {1: "aa", 2: "bb", 3: "cc"}, "r2": {1: "aa", 2: "bb"}, "d1": {1: "zz"}}
    groups = {"r1": "standard", "r2": "standard", "d1": "deduped"}
    summary = rp.check_fingerprints(same, groups)
    assert summary.groups["standard"]["steps_compared"] == [1, 2]
    assert summary.groups["standard"]["result"] == "identical"
    assert "single run" in summary.groups["deduped"]["result"]

    different = {"r1": {1: "aa", 2: "bb", 3: "cc"}, "r2": {1: "aa", 2: "XX", 3: "YY"}}
    with pytest.raises(rp.FingerprintMismatchError, match=r"'r1' and 'r2'.*first differing step 2"):
        rp.check_fingerprints(different, {"r1": "s", "r2": "s"})
    # Different groups may differ freely.
    rp.check_fingerprints(different, {"r1": "s", "r2": "other"})


def test_read_training_log_merges_segments(inputs):
    _, states = inputs
    log = rp.read_training_log("mini-b", states["mini-b"])
    assert sorted(log.losses) == list(range(1, 9))
    assert log.fingerprints[7] == fp("standard", 7)
    assert [s["step"] for s in log.spikes] == [6]
    # A plain [(step, loss)] list is accepted while the trainer's format settles.
    plain = states["mini-b"][0].parent / "plain.json"
    plain.write_text(json.dumps([[1, 2.5], [2, 2.0]]))
    assert rp.read_training_log("x", [plain]).losses == {1: 2.5, 2: 2.0}


def test_read_training_log_rejects_conflicting_segments(tmp_path):
    a = write_state(tmp_path / "a/trainer_state.json", range(1, 3), "standard")
    b = tmp_path / "b/trainer_state.json"
    b.parent.mkdir()
    b.write_text(json.dumps({"losses": [], "step_fingerprints": {"2": "ff"}}))
    with pytest.raises(ValueError, match=r"step 2 fingerprint"):
        rp.read_training_log("r", [a, b])


def test_build_report_writes_plots_tables_and_summary(inputs, tmp_path):
    evals, states = inputs
    out = tmp_path / "report"
    written = rp.build_report(RUNS, evals, states, out)

    # One figure per (shots, task, metric) and per run's loss, all non-empty PNGs.
    names = {p.name for p in written["eval_plots"]}
    assert "eval_0shot_mini_lambada_acc.png" in names
    assert "eval_5shot_mini_lambada_ppl.png" in names
    assert len(written["eval_plots"]) == 2 * 5  # two shot settings x five metrics
    assert {p.name for p in written["loss_plots"]} == {f"loss_{r['name']}.png" for r in RUNS} | {
        "loss_all.png"
    }
    for png in written["eval_plots"] + written["loss_plots"]:
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 2000

    rows = list(csv.DictReader(written["final_csv"].open()))
    zero = [r for r in rows if r["shots"] == "0"]
    assert {r["step"] for r in zero} == {"8"}  # the last evaluated step of every run
    acc_b = next(r for r in zero if r["run"] == "mini-b" and r["metric"] == "acc")
    assert math.isclose(float(acc_b["value"]), 0.2 + 0.08)
    assert acc_b["stderr"] == "0.01" and acc_b["params"] == "4000"

    md = written["final_md"].read_text()
    assert "### 0-shot" in md and "### 5-shot" in md and "mini_lambada acc" in md

    report = written["report"].read_text()
    assert "identical" in report and "standard / data seed 1234" in report
    assert "mini-b: step 6" in report
    fps = json.loads(written["fingerprints"].read_text())
    assert fps["deduped / data seed 1234"]["runs"] == ["mini-a-deduped", "mini-b-deduped"]
    assert fps["deduped / data seed 1234"]["steps_compared"] == list(range(1, 9))
    assert not list(out.glob(".*"))  # no temporary files left


def test_build_report_fails_loudly_on_data_order_mismatch(inputs, tmp_path):
    evals, states = inputs
    # mini-b-deduped's second segment consumed standard data from step 5 on.
    write_state(states["mini-b-deduped"][1], range(5, 9), "standard")
    out = tmp_path / "report"
    with pytest.raises(
        rp.FingerprintMismatchError,
        match=r"'mini-a-deduped' and 'mini-b-deduped'.*first differing step 5",
    ):
        rp.build_report(RUNS, evals, states, out)
    assert not (out / "report.md").exists()


def test_build_report_rejects_bad_run_table(inputs, tmp_path):
    evals, states = inputs
    with pytest.raises(ValueError, match=r"runs\[0\].*'params'"):
        rp.build_report([{"name": "mini-a", "size": "a", "variant": "standard"}], {}, {}, tmp_path)
    with pytest.raises(KeyError, match="not in the runs table"):
        rp.build_report(RUNS[:1], evals, {}, tmp_path)
