"""The miniature suite end to end: `snakemake --profile profiles/local` on a fresh copy of the
repository, then what a user would check in its results.

Slow (minutes): it trains 4 tiny runs through every stage. One run serves all tests here.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from suite_support import copy_repository

PLANTED_TOKEN = "hf_PLANTEDtokenTHATmustNEVERappear0123"

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def suite(tmp_path_factory) -> Path:
    """A copy of the repository with the miniature suite run in it."""
    root = tmp_path_factory.mktemp("mini") / "repo"
    copy_repository(root)
    env = {
        **os.environ,
        "HF_TOKEN": PLANTED_TOKEN,
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
    }
    snakemake = Path(sys.executable).with_name("snakemake")
    run = subprocess.run(
        [str(snakemake), "--profile", "profiles/local", "--cores", "2"],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
    )
    (root / "snakemake.out").write_text(run.stdout + run.stderr)
    assert run.returncode == 0, (run.stdout + run.stderr)[-5000:]
    return root


def runs() -> list[str]:
    return [f"pythia-{s}{v}" for s in ("0.4m", "1.3m") for v in ("", "-deduped")]


def trainer_state(suite: Path, run: str, step: int) -> dict:
    path = suite / "results" / "runs" / run / "checkpoints" / f"step{step}" / "trainer_state.json"
    return json.loads(path.read_text())


def test_nothing_left_to_do_after_the_run(suite):
    dry = subprocess.run(
        [str(Path(sys.executable).with_name("snakemake")), "--profile", "profiles/local", "-n"],
        cwd=suite,
        capture_output=True,
        text=True,
    )
    assert dry.returncode == 0
    assert "Nothing to be done" in dry.stdout + dry.stderr


def test_losses_fall_with_step_and_with_size(suite):
    final = {}
    for run in runs():
        first = trainer_state(suite, run, 1)["history"][0]["loss"]
        last = [h["loss"] for h in trainer_state(suite, run, 128)["history"][-8:]]
        assert sum(last) / len(last) < first - 1.0, run
        final[run] = sum(last) / len(last)
    assert final["pythia-1.3m"] < final["pythia-0.4m"]
    assert final["pythia-1.3m-deduped"] < final["pythia-0.4m-deduped"]


def test_the_report_has_plots_tables_and_a_passing_fingerprint_check(suite):
    report = suite / "results" / "report"
    assert (report / "report.md").stat().st_size > 0
    plots = sorted(p.name for p in report.glob("*.png"))
    assert any(p.startswith("eval_0shot_mini_lambada") for p in plots), plots
    assert any(p.startswith("loss_") for p in plots), plots
    fingerprints = json.loads((report / "fingerprints.json").read_text())
    assert json.dumps(fingerprints).count("mismatch") == 0 or not fingerprints.get("mismatches")


def test_runs_of_a_variant_consumed_identical_tokens(suite):
    for variant in ("", "-deduped"):
        small = trainer_state(suite, f"pythia-0.4m{variant}", 128)
        large = trainer_state(suite, f"pythia-1.3m{variant}", 128)
        assert [h["tokens_sha256"] for h in small["history"]] == [
            h["tokens_sha256"] for h in large["history"]
        ]
    standard = trainer_state(suite, "pythia-0.4m", 128)["history"]
    deduped = trainer_state(suite, "pythia-0.4m-deduped", 128)["history"]
    assert standard[0]["tokens_sha256"] != deduped[0]["tokens_sha256"]


def test_evals_in_pythias_layout(suite):
    for run in runs():
        zero = suite / "results" / "evals" / run / "zero-shot"
        steps = sorted(
            int(p.stem.split("_step")[1])
            for p in zero.glob(f"{run}_step*.json")
            if ".raw" not in p.name
        )
        assert steps == [0, 8, 32, 64, 128]  # config/mini.yaml evaluation.zero_shot_steps
        result = json.loads((zero / f"{run}_step128.json").read_text())
        assert {"results", "versions", "config"} <= set(result)
        assert 0.0 <= result["results"]["mini_lambada"]["acc"] <= 1.0
        assert result["results"]["mini_lambada"]["ppl"] > 0
        five = suite / "results" / "evals" / run / "five-shot" / f"{run}_step128.json"
        assert json.loads(five.read_text())["config"]["num_fewshot"] == 5


def test_next_word_task_shows_learning_above_chance(suite):
    """Step 0 at chance (the control), accuracy rising with step to clearly above chance at the
    end, and the larger size above the smaller one on each data variant."""
    final = {}
    for run in runs():
        zero = suite / "results" / "evals" / run / "zero-shot"
        acc = {
            step: json.loads((zero / f"{run}_step{step}.json").read_text())["results"][
                "mini_next_word"
            ]
            for step in (0, 32, 128)
        }
        chance = 0.25
        assert abs(acc[0]["acc"] - chance) < 2 * acc[0]["acc_stderr"], (run, acc[0])
        assert acc[0]["acc"] < acc[32]["acc"] < acc[128]["acc"], (run, acc)
        assert acc[128]["acc"] - 2 * acc[128]["acc_stderr"] > chance, (run, acc[128])
        final[run] = acc[128]["acc"]
    assert final["pythia-1.3m"] > final["pythia-0.4m"], final
    assert final["pythia-1.3m-deduped"] > final["pythia-0.4m-deduped"], final
    report = (suite / "results" / "report" / "report.md").read_text()
    assert "## Headline: learning above chance" in report


def test_dedup_removed_near_duplicates(suite):
    report = json.loads((suite / "results" / "data" / "dedup" / "report.json").read_text())
    assert report["docs_removed"] > 0
    assert report["docs_out"] == report["docs_in"] - report["docs_removed"]
    assert report["bytes_out"] < report["bytes_in"]
    assert report["per_set"]  # removal per pile_set_name


def test_model_card_quickstart_loads_from_the_local_hub(suite):
    code = f"""
import os
os.environ["HF_HUB_OFFLINE"] = "1"
from transformers import AutoTokenizer, GPTNeoXForCausalLM
cache = {str(suite / "results" / "hub")!r}
for revision in ("step64", "main"):
    model = GPTNeoXForCausalLM.from_pretrained(
        "pythia-suite-mini/pythia-1.3m-deduped", revision=revision, cache_dir=cache)
    tok = AutoTokenizer.from_pretrained(
        "pythia-suite-mini/pythia-1.3m-deduped", revision=revision, cache_dir=cache)
    ids = tok("In the beginning", return_tensors="pt").input_ids
    print(revision, model(ids).logits.shape[-1])
"""
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env={**os.environ}
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert "step64" in out.stdout and "main" in out.stdout
    card = suite / "results" / "runs" / "pythia-1.3m-deduped" / "model_card" / "README.md"
    assert 'revision="step' in card.read_text()


def test_provenance_walks_from_an_eval_back_to_the_raw_shards(suite):
    result = subprocess.run(
        [
            str(Path(sys.executable).with_name("pythia-suite")),
            "--config",
            "config.yaml",
            "--config",
            "config/mini.yaml",
            "verify",
            "results/evals/pythia-0.4m-deduped",
        ],
        cwd=suite,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    assert "data/mini-pile/train/00.jsonl.zst" in result.stdout
    assert "chain intact" in result.stdout


def test_no_output_contains_the_planted_token(suite):
    hits = []
    for path in (suite / "results").rglob("*"):
        if path.is_file() and not path.is_symlink():
            if PLANTED_TOKEN.encode() in path.read_bytes():
                hits.append(str(path))
    for path in (suite / ".snakemake").rglob("*"):
        if path.is_file() and PLANTED_TOKEN.encode() in path.read_bytes():
            hits.append(str(path))
    assert hits == []


def test_batch_viewer_shows_the_tokens_training_consumed(suite, tmp_path):
    import hashlib

    import numpy as np

    cli = str(Path(sys.executable).with_name("pythia-suite"))
    config = ["--config", "config.yaml", "--config", "config/mini.yaml"]
    arrays = {}
    for run in ("pythia-0.4m", "pythia-1.3m"):
        out = tmp_path / f"{run}.npy"
        result = subprocess.run(
            [cli, *config, "batch", run, "--step", "5", "--output", str(out), "--decode", "1"],
            cwd=suite,
            capture_output=True,
            text=True,
        )
        assert result.returncode == 0, result.stderr[-2000:]
        assert len(result.stdout.strip()) > 0  # the decoded first sequence
        arrays[run] = np.load(out)
    assert arrays["pythia-0.4m"].shape == (8, 129)
    assert (arrays["pythia-0.4m"] == arrays["pythia-1.3m"]).all()  # same for every size
    recorded = {
        h["iteration"]: h["tokens_sha256"]
        for h in trainer_state(suite, "pythia-0.4m", 8)["history"]
    }
    digest = hashlib.sha256(arrays["pythia-0.4m"].astype("<i8").tobytes()).hexdigest()
    assert recorded[5] == digest


def test_the_data_lens_reaches_the_report_and_the_model_cards(suite):
    report = suite / "results" / "report"
    assert "## Data seen" in (report / "report.md").read_text()
    assert (report / "data_composition.png").read_bytes().startswith(b"\x89PNG")
    for run in runs():
        card = suite / "results" / "runs" / run / "model_card" / "README.md"
        # 128 steps x 8 samples read less than one epoch of the miniature corpus
        assert "- no document repeats in training" in card.read_text(), run
