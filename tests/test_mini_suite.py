"""The miniature suite end to end: `snakemake --profile profiles/local` on a fresh copy of the
repository, then what a user would check in its results.

Slow (minutes): it trains 4 tiny runs through every stage. One run serves all tests here.
"""

from __future__ import annotations

import json
import os
import re
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
    path = suite / "results-mini" / "runs" / run / "checkpoints" / f"step{step}"
    path = path / "trainer_state.json"
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
    report = suite / "results-mini" / "report"
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
        zero = suite / "results-mini" / "evals" / run / "zero-shot"
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
        five = suite / "results-mini" / "evals" / run / "five-shot" / f"{run}_step128.json"
        assert json.loads(five.read_text())["config"]["num_fewshot"] == 5


def test_next_word_task_shows_learning_above_chance(suite):
    """Step 0 at chance (the control), accuracy rising with step to clearly above chance at the
    end, and the larger size above the smaller one on each data variant."""
    final = {}
    for run in runs():
        zero = suite / "results-mini" / "evals" / run / "zero-shot"
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
    report = (suite / "results-mini" / "report" / "report.md").read_text()
    assert "## Headline: learning above chance" in report


def test_dedup_removed_near_duplicates(suite):
    report = json.loads((suite / "results-mini" / "data" / "dedup" / "report.json").read_text())
    assert report["docs_removed"] > 0
    assert report["docs_out"] == report["docs_in"] - report["docs_removed"]
    assert report["bytes_out"] < report["bytes_in"]
    assert report["per_set"]  # removal per pile_set_name


def test_model_card_quickstart_loads_from_the_local_hub(suite):
    code = f"""
import os
os.environ["HF_HUB_OFFLINE"] = "1"
from transformers import AutoTokenizer, GPTNeoXForCausalLM
cache = {str(suite / "results-mini" / "hub")!r}
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


def test_model_card_quickstart_runs_as_written_and_generates_text(suite):
    """The card's quickstart, verbatim, from the repository root: it loads `main` and prints
    the prompt and at least 8 non-whitespace new tokens, with no run of more than 2 newlines;
    the card states the scale, the published dtype, chance, and what dedup removed."""
    from tokenizers import Tokenizer

    card = (suite / "results-mini/runs/pythia-1.3m-deduped/model_card/README.md").read_text()
    code = card.split("```python\n", 1)[1].split("```", 1)[0]
    assert 'revision="main"' in code and "max_new_tokens=" in code
    run = subprocess.run(
        [sys.executable, "-c", code], cwd=suite, capture_output=True, text=True, timeout=300
    )
    assert run.returncode == 0, run.stderr[-3000:]
    assert "max_length" not in run.stderr  # transformers' warning when generate() is unbounded
    printed = run.stdout.rstrip("\n")
    prompt = "Hello, I am"
    assert printed.startswith(prompt), printed
    tokenizer = Tokenizer.from_file(str(suite / "results-mini/data/tokenizer/tokenizer.json"))
    new = tokenizer.encode(printed[len(prompt) :]).ids
    words = [t for t in new if tokenizer.decode([t]).strip()]
    assert len(words) >= 8, repr(printed)
    assert "\n\n\n" not in printed, repr(printed)
    body = " ".join(card.split())
    assert "of one pass over its training data" in body and "It is a miniature" in body
    assert "The published weights are float16 (trained in fp32)." in body
    assert "| mini_next_word (0-shot) | acc = acc_norm |" in body  # identical: one row
    assert "| 0.2500 |" in body  # chance of mini_next_word
    report = json.loads((suite / "results-mini/data/dedup/report.json").read_text())
    assert f"which removed {report['docs_removed']:,} of {report['docs_in']:,} documents" in body
    assert "documents after deduplication" in body


def test_readme_python_example_runs_as_written(suite):
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    code = readme.split("```python\n", 1)[1].split("```", 1)[0]
    assert 'cache_dir="results-mini/hub"' in code
    run = subprocess.run(
        [sys.executable, "-c", code], cwd=suite, capture_output=True, text=True, timeout=300
    )
    assert run.returncode == 0, run.stderr[-3000:]
    assert run.stdout.startswith("Hello, I am") and "\n\n\n" not in run.stdout, run.stdout


def _readme_commands() -> list[str]:
    """Every `pythia-suite` command line in the README's bash blocks, comments stripped."""
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    blocks = re.findall(r"```bash\n(.*?)```", readme, re.S)
    return [
        line.split("  #", 1)[0].strip()
        for block in blocks
        for line in block.splitlines()
        if line.startswith("pythia-suite ")
    ]


def test_readme_commands_as_written_show_the_miniature_suite(suite):
    """A new user's sequence: the README's first command (the fixture), then every
    `pythia-suite` command in the README as written, from the repository root. Without
    --config each reads the config the miniature suite ran with and says so; each shows the
    miniature suite's runs and state, none the real suite's 16 runs at 0."""
    commands = _readme_commands()
    assert len(commands) >= 15, commands
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "PATH": f"{Path(sys.executable).parent}:" + os.environ["PATH"],
    }
    outputs = {}
    for command in commands:
        run = subprocess.run(
            command, shell=True, cwd=suite, env=env, capture_output=True, text=True, timeout=600
        )
        outputs[command] = run
        if "neox-doctor" in command:  # documented: exits 1 naming what GPT-NeoX lacks here
            assert run.returncode == 1 and "GPT-NeoX cannot launch here" in run.stderr, command
            continue
        assert run.returncode == 0, (command, run.stdout[-2000:], run.stderr[-2000:])
        if "--config" not in command and "check-config" not in command:
            assert "pythia-suite: config results-mini/config/effective.yaml" in run.stderr, (
                command,
                run.stderr[-1000:],
            )
    assert outputs["pythia-suite runs"].stdout.split() == runs()
    status = outputs["pythia-suite status"].stdout
    for run_name in runs():
        assert run_name in status
    assert status.count("10/10") >= 4 and "pythia-70m" not in status  # every mini step done
    plan = outputs["pythia-suite plan"].stdout
    assert "pythia-0.4m (+deduped)" in plan and "measured (" in plan and "pythia-70m" not in plan
    status_json = json.loads(outputs["pythia-suite status --json pythia-0.4m"].stdout)
    assert [r["run"] for r in status_json["runs"]] == ["pythia-0.4m"]
    assert (suite / "results-mini/status/index.html").is_file()
    assert (suite / "batch.npy").is_file()
    verify = outputs["pythia-suite verify results-mini/evals/pythia-0.4m"].stdout
    assert "chain intact" in verify and "data/mini-pile/heldout/heldout.jsonl.zst" in verify
    assert len(outputs["pythia-suite --config config.yaml runs"].stdout.split()) == 16
    # The miniature suite's TensorBoard curves: one event file per trained segment.
    events = list((suite / "results-mini/logs/train/pythia-0.4m").glob("events.out.tfevents.*"))
    assert len(events) == 9, events  # steps 1 2 4 8 16 32 64 96 128 (step0 trains nothing)


def test_the_real_suites_dry_run_leaves_the_miniature_suites_artifacts_alone(suite):
    """After the miniature suite, the real suite's DAG plans fetch_tokenizer and the rest in
    results/ only: nothing of results-mini/ would be overwritten."""
    target = "results/runs/pythia-70m/published/step1.json"
    dry = subprocess.run(
        [str(Path(sys.executable).with_name("snakemake")), "-n", target],
        cwd=suite,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert dry.returncode == 0, dry.stderr[-3000:]
    planned = re.findall(r"^\s+output: (.+)$", dry.stdout + dry.stderr, re.M)
    assert any("results/data/tokenizer" in line for line in planned)
    assert not any("results-mini" in line for line in planned), planned


def test_provenance_walks_from_an_eval_back_to_the_raw_shards(suite):
    result = subprocess.run(
        [
            str(Path(sys.executable).with_name("pythia-suite")),
            "--config",
            "config.yaml",
            "--config",
            "config/mini.yaml",
            "verify",
            "results-mini/evals/pythia-0.4m-deduped",
        ],
        cwd=suite,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    assert "data/mini-pile/train/00.jsonl.zst" in result.stdout
    # The evaluations' task files were built from the held-out shard: the walk reaches it.
    assert "root  data/mini-pile/heldout/heldout.jsonl.zst" in result.stdout
    assert "chain intact" in result.stdout
    batch = next(
        (suite / "results-mini" / "runs" / "pythia-0.4m-deduped" / "evals").rglob("provenance.json")
    )
    record = json.loads(batch.read_text())
    assert "results-mini/data/eval_tasks" in [i["path"] for i in record["inputs"]]
    assert any("mini_next_word" in f for f in record["extra"]["task_files"]), record["extra"]


def test_no_output_contains_the_planted_token(suite):
    hits = []
    for path in (suite / "results-mini").rglob("*"):
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
    report = suite / "results-mini" / "report"
    assert "## Data seen" in (report / "report.md").read_text()
    assert (report / "data_composition.png").read_bytes().startswith(b"\x89PNG")
    for run in runs():
        card = suite / "results-mini" / "runs" / run / "model_card" / "README.md"
        # 128 steps x 8 samples read less than one epoch of the miniature corpus
        assert "- no document repeats in training" in card.read_text(), run
