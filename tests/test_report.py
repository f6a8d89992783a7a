"""Tests for pythia_suite.report: fingerprint check, plots, final table, report assembly."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import pytest

from pythia_suite import report as rp
from pythia_suite.report import plots

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
    """A trainer_state.json as pythia_suite.train.loop writes it (the keys the report reads)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    history = [
        {
            "iteration": s - 1,
            "step": s,
            "loss": 6.0 / (1 + s),
            "lr": 1e-3,
            "grad_norm": 1.0,
            "skipped": False,
            "tokens_per_s": 10.0,
            "tokens_sha256": fp(variant, s),
        }
        for s in steps
    ]
    state = {
        "format": "pythia-suite/trainer-state/1",
        "step": steps[-1],
        "segment": {"start_step": steps[0] - 1, "end_step": steps[-1]},
        "losses": [h["loss"] for h in history],
        "history": history,
        "spikes": [{"step": s, "loss": 6.0 / (1 + s), "running_mean": 0.1} for s in spikes],
        "data_fingerprint": {
            "segment": "0" * 64,
            "steps": {str(h["iteration"]): h["tokens_sha256"] for h in history},
        },
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
    legacy = plain.with_name("legacy.json")
    legacy.write_text(
        json.dumps({"losses": [{"step": 3, "loss": 1.0}], "fingerprints": {"3": "ab"}})
    )
    assert rp.read_training_log("x", [legacy]).fingerprints == {3: "ab"}


def test_read_training_log_rejects_conflicting_segments(tmp_path):
    a = write_state(tmp_path / "a/trainer_state.json", range(1, 3), "standard")
    b = tmp_path / "b/trainer_state.json"
    b.parent.mkdir()
    b.write_text(json.dumps({"history": [{"step": 2, "loss": 1.0, "tokens_sha256": "ff"}]}))
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


def test_report_on_real_training_segments(tmp_path):
    """The trainer's own trainer_state.json files: two sizes on one data order agree, another
    data order in the same group is caught at its first step."""
    pytest.importorskip("pythia_suite.train.loop", reason="training loop not available")
    from train_support import TINY_CONFIG, RandomTokens, tiny_settings

    from pythia_suite.train.loop import train_segment

    runs = [
        {"name": "t-a", "size": "a", "variant": "standard", "params": 1, "data_seed": 0},
        {"name": "t-b", "size": "b", "variant": "standard", "params": 2, "data_seed": 0},
        {"name": "t-a-deduped", "size": "a", "variant": "deduped", "params": 1, "data_seed": 0},
    ]
    widths = {"t-a": 32, "t-b": 48, "t-a-deduped": 32}
    data_seeds = {"t-a": 0, "t-b": 0, "t-a-deduped": 1}  # the deduped run reads other data
    states = {}
    for name, width in widths.items():
        config = {**TINY_CONFIG, "hidden_size": width}
        samples, root = RandomTokens(seed=data_seeds[name]), tmp_path / name
        common = dict(device="cpu", log=root / "train.log")
        train_segment(
            config,
            tiny_settings(),
            samples,
            start_checkpoint=None,
            start_step=0,
            end_step=0,
            out_dir=root / "step0",
            **common,
        )
        train_segment(
            config,
            tiny_settings(),
            samples,
            start_checkpoint=root / "step0",
            start_step=0,
            end_step=3,
            out_dir=root / "step3",
            **common,
        )
        states[name] = [root / f"step{s}/trainer_state.json" for s in (0, 3)]

    written = rp.build_report(runs, {}, states, tmp_path / "report")
    fps = json.loads(written["fingerprints"].read_text())
    assert fps["standard / data seed 0"] == {
        "runs": ["t-a", "t-b"],
        "steps_compared": [1, 2, 3],
        "result": "identical",
    }
    assert {p.name for p in written["loss_plots"]} >= {"loss_t-a.png", "loss_t-b.png"}
    assert len(rp.read_training_log("t-b", states["t-b"]).losses) == 3

    mislabelled = [{**r, "variant": "standard"} for r in runs]
    with pytest.raises(rp.FingerprintMismatchError, match=r"'t-a' and 't-a-deduped'.*step 1 "):
        rp.build_report(mislabelled, {}, states, tmp_path / "report2")


def _point(run, step, value, stderr=0.02, task="mini_next_word", metric="acc"):
    return rp.EvalPoint(run, step, 0, task, metric, value, stderr)


def test_first_step_above_chance_needs_two_standard_errors():
    points = [_point("a", 0, 0.26), _point("a", 8, 0.28), _point("a", 16, 0.31)]
    assert rp.first_step_above_chance(points, 0.25) == 16  # 0.31 - 2 x 0.02 > 0.25
    assert rp.first_step_above_chance(points[:2], 0.25) is None  # 0.28 - 0.04 < 0.25
    assert rp.first_step_above_chance([_point("a", 4, 0.9, None)], 0.25) is None  # no stderr


def test_report_headline_shows_accuracy_against_chance(tmp_path):
    runs = [
        {"name": "small", "size": "0.4m", "variant": "standard", "params": 400_000},
        {"name": "large", "size": "1.3m", "variant": "standard", "params": 1_300_000},
    ]
    evals = {}
    for run, curve in (("small", [0.25, 0.40, 0.50]), ("large", [0.24, 0.45, 0.58])):
        files = []
        for step, acc in zip((0, 16, 128), curve, strict=True):
            path = tmp_path / run / f"{run}_step{step}.json"
            path.parent.mkdir(parents=True, exist_ok=True)
            results = {"mini_next_word": {"acc": acc, "acc_stderr": 0.025}, "other": {"acc": 0.1}}
            path.write_text(json.dumps({"results": results, "config": {"num_fewshot": 0}}))
            files.append(str(path))
        evals[run] = files
    chance = {"mini_next_word": {"acc": 0.25}}
    out = rp.build_report(runs, evals, {}, tmp_path / "report", chance)
    text = out["report"].read_text()
    headline = text.split("## Headline: learning above chance", 1)[1].split("\n## ", 1)[0]
    assert "| small | mini_next_word | acc | 128 | 0.5000 ± 0.0250 | 0.250 | 16 |" in headline
    assert "| large | mini_next_word | acc | 128 | 0.5800 ± 0.0250 | 0.250 | 16 |" in headline
    assert "other" not in headline  # no chance level known: not in the headline
    assert text.index("## Headline") < text.index("## Runs")
    assert (tmp_path / "report" / "eval_0shot_mini_next_word_acc.png").is_file()


def test_identical_metrics_share_a_row_values_keep_one_format_and_perplexity_is_log(
    tmp_path, monkeypatch
):
    """acc_norm equal to acc in every run and step (the miniature suite's next-word task) is
    one headline row, one column and one plot; a perplexity and its stderr share one format;
    perplexities falling over decades are drawn on a log axis."""
    runs = [{"name": "small", "size": "0.4m", "variant": "standard", "params": 400_000}]
    files = []
    for step, acc, ppl in ((0, 0.25, 2.1e6), (16, 0.40, 9.0e4), (128, 0.50, 1.12e3)):
        path = tmp_path / "small" / f"small_step{step}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        next_word = {"acc": acc, "acc_stderr": 0.025, "acc_norm": acc, "acc_norm_stderr": 0.025}
        heldout = {"word_perplexity": ppl, "word_perplexity_stderr": ppl * 1.4}
        results = {"mini_next_word": next_word, "mini_heldout": heldout}
        path.write_text(json.dumps({"results": results, "config": {"num_fewshot": 0}}))
        files.append(str(path))
    scales = {}
    real_save = plots._save_figure

    def save(fig, path):
        scales[path.name] = fig.axes[0].get_yscale()
        return real_save(fig, path)

    monkeypatch.setattr(plots, "_save_figure", save)
    chance = {"mini_next_word": {"acc": 0.25, "acc_norm": 0.25}}
    out = rp.build_report(runs, {"small": files}, {}, tmp_path / "report", chance)
    text = out["report"].read_text()
    headline = text.split("## Headline: learning above chance", 1)[1].split("\n## ", 1)[0]
    assert "| small | mini_next_word | acc = acc_norm | 128 | 0.5000 ± 0.0250 |" in headline
    assert headline.count("| small |") == 1
    final = (tmp_path / "report" / "final_results.md").read_text()
    assert "mini_next_word acc = acc_norm" in final and "mini_next_word acc_norm |" not in final
    assert "1.12K ± 1.57K" in final  # one format for a value and its stderr
    assert "| small | 400K | 128 |" in final
    assert scales == {
        "eval_0shot_mini_heldout_word_perplexity.png": "log",
        "eval_0shot_mini_next_word_acc.png": "linear",
    }
