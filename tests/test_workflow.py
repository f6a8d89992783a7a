"""The DAG: what `snakemake -n` plans for the suite and for one target, lint, pictures."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SNAKEMAKE = str(Path(sys.executable).with_name("snakemake"))


def snakemake(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([SNAKEMAKE, *args], cwd=REPO, capture_output=True, text=True, timeout=600)


def job_counts(output: str) -> dict[str, int]:
    table = output.split("job ", 1)[1].split("\n\n", 1)[0]
    return {m[1]: int(m[2]) for m in re.finditer(r"^(\w+)\s+(\d+)$", table, re.M)}


@pytest.mark.slow
def test_full_suite_dry_run_plans_every_segment_export_upload_and_eval():
    result = snakemake("all", "--profile", "profiles/slurm", "-n", "--quiet", "rules")
    assert result.returncode == 0, result.stderr[-3000:]
    counts = job_counts(result.stdout + result.stderr)
    assert counts["init_checkpoint"] == 16
    assert counts["train_segment"] == 16 * 153  # one job per checkpoint segment
    assert counts["export"] == counts["publish"] == 16 * 154
    assert counts["evaluate"] == 16 * (27 + 15)  # Pythia's 0-shot and 5-shot steps
    assert counts["run_done"] == 16 and counts["report"] == 1


ONE_STEP = "results/runs/pythia-410m-deduped/published/step3000.json"


@pytest.fixture(scope="module")
def one_step_plan() -> str:
    """The printed dry run of one step's chain, every job planned (--forceall), under the
    SLURM profile: one run serves the tests that read it."""
    result = snakemake(ONE_STEP, "--profile", "profiles/slurm", "-n", "--forceall")
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout + result.stderr


@pytest.fixture(scope="module")
def mini_plan() -> str:
    """The printed dry run of the whole miniature suite, every job planned (--forceall)."""
    result = snakemake("--profile", "profiles/local", "-n", "--forceall", "all")
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout + result.stderr


def test_one_step_target_plans_only_that_chain(one_step_plan):
    counts = job_counts(one_step_plan)
    # steps 1..512 (10 segments) then 1000, 2000, 3000
    assert counts["train_segment"] == 13
    assert counts["init_checkpoint"] == 1
    assert counts["export"] == counts["publish"] == 1
    assert "evaluate" not in counts


def test_the_model_card_waits_for_every_receipt_it_reads(mini_plan):
    """`model-card` reads every step's receipt; each must be an input, or the card can start
    before a publish job has written its receipt (seen as a missing step32.json)."""
    from pythia_suite import config as cfg
    from pythia_suite import paths

    config = cfg.load_config([REPO / "config.yaml", REPO / "config" / "mini.yaml"])
    run, results = "pythia-1.3m", config["paths"]["results"]
    target = paths.model_card(results, run)
    blocks = mini_plan.split("rule model_card:")[1:]
    (block,) = [b for b in blocks if f"output: {target}\n" in b]
    inputs = block.split("input:", 1)[1].split("\n", 1)[0].split(", ")
    receipts = [paths.receipt(results, run, step) for step in cfg.checkpoint_steps(config)]
    assert len(receipts) > 2 and set(receipts) <= {i.strip() for i in inputs}


def test_targets_outside_the_results_tree_unknown_runs_or_steps_are_refused():
    for target in (
        "results/runs/pythia-3b/published/step3000.json",
        "results/runs/pythia-70m/published/step3500.json",
        "results/runs/../../tmp/published/step1.json",
    ):
        result = snakemake("-n", target)
        assert result.returncode != 0, target
        output = result.stdout + result.stderr
        assert "No rule to produce" in output or "is not a checkpoint step" in output, output


def test_lint_is_clean_for_the_suite_and_the_miniature_suite():
    for args in ((), ("--configfile", "config.yaml", "config/mini.yaml")):
        result = snakemake("--lint", *args)
        assert result.returncode == 0
        assert (
            "Congratulations, your workflow is in a good condition!"
            in result.stdout + result.stderr
        )


@pytest.mark.skipif(shutil.which("dot") is None, reason="graphviz (dot) is not installed")
def test_rulegraph_and_a_small_dag_render_with_graphviz(tmp_path):
    for name, args in (
        ("rulegraph", ("--rulegraph",)),
        (
            "dag",
            (
                "--profile",
                "profiles/local",
                "--dag",
                "dot",
                "--",
                "results-mini/runs/pythia-0.4m/published/step4.json",
            ),
        ),
    ):
        dot = snakemake(*args)
        assert dot.returncode == 0, dot.stderr[-2000:]
        svg = subprocess.run(["dot", "-Tsvg"], input=dot.stdout, capture_output=True, text=True)
        assert svg.returncode == 0 and "<svg" in svg.stdout, name


def planned_outputs(output: str) -> set[str]:
    """The output paths of every job a dry run prints."""
    return {
        path.strip()
        for line in re.findall(r"^\s+output: (.+)$", output, re.M)
        for path in line.split(", ")
    }


def test_neither_suites_dry_run_plans_anything_in_the_others_results(mini_plan, one_step_plan):
    """The miniature suite (results-mini/) and the real suite (results/) never share an
    artifact: rebuilding either plans no job that would overwrite the other's tokenizer,
    report or hub."""
    mini_outputs = planned_outputs(mini_plan)
    assert len(mini_outputs) > 100
    assert all(p.startswith("results-mini/") for p in mini_outputs), sorted(mini_outputs)[:5]
    real_outputs = planned_outputs(one_step_plan)
    assert "results/data/tokenizer/tokenizer.json" in real_outputs  # fetch_tokenizer
    assert all(p.startswith("results/") for p in real_outputs), sorted(real_outputs)[:5]


def test_a_bad_overlay_through_snakemake_gives_the_clis_one_line(tmp_path):
    """A misspelled key in an overlay: the project's checks' one line, no schema dump, no
    traceback (Snakemake's own `validate` printed ~120 lines of JSON schema)."""
    typo = tmp_path / "typo.yaml"
    typo.write_text("training:\n  train_iter: 3\n")
    undefined = tmp_path / "undefined.yaml"
    undefined.write_text("matrix:\n  - {sizes: [3b], variants: [standard], seeds: [default]}\n")
    for overlay, message in (
        (typo, "training: Additional properties are not allowed ('train_iter' was unexpected)"),
        (undefined, "matrix[0].sizes: '3b' is not defined under 'sizes'"),
    ):
        result = snakemake("-n", "--configfile", "config.yaml", str(overlay))
        assert result.returncode != 0
        errors = [
            line
            for line in (result.stdout + result.stderr).splitlines()
            if "extended by additional config" not in line  # Snakemake's own notice
        ]
        assert len(errors) == 1 and errors[0].startswith("pythia-suite: error: config.yaml + "), (
            errors
        )
        assert message in errors[0]
