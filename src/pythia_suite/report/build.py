"""The whole report: :func:`build_report` from explicit inputs, :func:`write_suite_report` from
the config and the results tree."""

from __future__ import annotations

import csv
import io
import json
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from pythia_suite import units
from pythia_suite.atomic import write_text_atomic
from pythia_suite.report.fingerprints import FingerprintSummary, check_fingerprints
from pythia_suite.report.inputs import (
    TrainingLog,
    load_eval_points,
    read_training_log,
    run_order,
    runs_by_name,
)
from pythia_suite.report.plots import plot_data_composition, plot_eval_curves, plot_loss_curves
from pythia_suite.report.tables import (
    final_markdown,
    final_results,
    headline_markdown,
    headline_rows,
    write_final_results,
)


def _spike_rows(logs: Sequence[TrainingLog]) -> list[dict[str, Any]]:
    return [{"run": log.run, **spike} for log in logs for spike in log.spikes]


def build_report(
    runs: Sequence[Mapping[str, Any]],
    eval_jsons: Mapping[str, Iterable[str | os.PathLike]],
    trainer_states: Mapping[str, Iterable[str | os.PathLike]],
    out_dir: str | os.PathLike,
    chance: Mapping[str, Mapping[str, float]] | None = None,
    lenses: Mapping[str, str | os.PathLike] | None = None,
) -> dict[str, Any]:
    """Build the report in ``out_dir`` from explicit inputs (see the module docstring).

    ``lenses`` (label -> data lens directory, one per order) adds the data-composition figure
    and section.

    ``chance`` (task -> metric -> chance level, e.g. from the local tasks' manifest) adds the
    headline section (accuracy against chance, first step above it) and a chance line to the
    plots of those metrics.

    Order: read everything, check data-order fingerprints (a mismatch raises before anything is
    written), then plots, tables, ``fingerprints.json``, ``spikes.csv`` and ``report.md`` last,
    so a directory with ``report.md`` is complete.

    Returns:
        ``{"report": path, "final_md": ..., "final_csv": ..., "fingerprints": ...,
        "spikes": ..., "eval_plots": [...], "loss_plots": [...]}``.

    Raises:
        ValueError: a run lacks name/size/variant/params, or an input file is malformed.
        KeyError: ``eval_jsons`` or ``trainer_states`` names a run not in ``runs``.
        FingerprintMismatchError: runs of one data group (variant, data seed) consumed
            different data; names the runs and the first differing step.
    """
    table = runs_by_name(runs)
    for source, mapping in (("eval_jsons", eval_jsons), ("trainer_states", trainer_states)):
        unknown = sorted(set(mapping) - set(table))
        if unknown:
            raise KeyError(f"{source} names runs not in the runs table: {unknown}")
    out = Path(out_dir)
    points = load_eval_points(eval_jsons)
    logs = [read_training_log(run, paths) for run, paths in sorted(trainer_states.items())]

    groups = {
        name: (run.get("data_variant", run["variant"]), f"data seed {run.get('data_seed', '-')}")
        for name, run in table.items()
    }
    fp_summary = check_fingerprints({log.run: log.fingerprints for log in logs}, groups)

    out.mkdir(parents=True, exist_ok=True)
    (out / "report.md").unlink(missing_ok=True)  # incomplete until rewritten below
    eval_plots = plot_eval_curves(points, runs, out, chance)
    headline = headline_rows(points, runs, chance or {})
    loss_plots = plot_loss_curves(logs, runs, out)
    rows = final_results(points, runs)
    write_final_results(rows, out / "final_results.md", out / "final_results.csv")
    write_text_atomic(out / "fingerprints.json", json.dumps(fp_summary.groups, indent=2) + "\n")
    spikes = _spike_rows(logs)
    spike_fields = ["run"] + sorted({k for s in spikes for k in s if k != "run"})
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=spike_fields, lineterminator="\n")
    writer.writeheader()
    writer.writerows(spikes)
    write_text_atomic(out / "spikes.csv", buffer.getvalue())

    report = _report_markdown(table, rows, fp_summary, spikes, eval_plots, loss_plots, headline)
    if lenses:
        figure, lines = plot_data_composition(lenses, out)
        report += (
            "\n## Data seen\n\nCumulative composition of the tokens each order has read "
            f"(the data lens): [{figure.name}]({figure.name}).\n\n" + "\n".join(lines) + "\n"
        )
    write_text_atomic(out / "report.md", report)
    return {
        "report": out / "report.md",
        "final_md": out / "final_results.md",
        "final_csv": out / "final_results.csv",
        "fingerprints": out / "fingerprints.json",
        "spikes": out / "spikes.csv",
        "eval_plots": eval_plots,
        "loss_plots": loss_plots,
    }


def _report_markdown(
    table: Mapping[str, Mapping[str, Any]],
    rows: Sequence[Mapping[str, Any]],
    fp_summary: FingerprintSummary,
    spikes: Sequence[Mapping[str, Any]],
    eval_plots: Sequence[Path],
    loss_plots: Sequence[Path],
    headline: Sequence[Mapping[str, Any]] = (),
) -> str:
    runs = ["| run | size | variant | params |", "|---|---|---|---|"] + [
        f"| {r['name']} | {r['size']} | {r['variant']} | {units.count(r['params'])} |"
        for r in sorted(table.values(), key=run_order)
    ]
    if spikes:
        spike_lines = [
            f"- {s['run']}: step {s.get('step', '?')}"
            + (f", loss {s['loss']:.4f}" if isinstance(s.get("loss"), float) else "")
            for s in spikes
        ]
    else:
        spike_lines = ["No loss spikes were recorded."]
    figures = [f"- [{p.name}]({p.name})" for p in [*eval_plots, *loss_plots]]
    sections = ["# Suite report"]
    if headline:
        sections.append("## Headline: learning above chance\n\n" + headline_markdown(headline))
    sections += [
        "## Runs\n\n" + "\n".join(runs),
        "## Final checkpoints\n\n" + (final_markdown(rows) if rows else "No evaluation results."),
        "## Data order\n\nRuns with the same data variant and data seed must consume identical "
        "batches at every step (sha256 of the token ids of each step's batch).\n\n"
        + fp_summary.markdown(),
        "## Loss spikes\n\n" + "\n".join(spike_lines),
        "## Figures\n\n" + ("\n".join(figures) if figures else "None."),
    ]
    return "\n\n".join(s.rstrip() for s in sections) + "\n"


# ----------------------------------------------------------------------------- the suite's report


def run_table(config: dict) -> list[dict]:
    """The runs table ``build_report`` reads: each run's dict with its parameter counts and
    shape."""
    from pythia_suite import config as cfg

    rows = []
    for run in cfg.expand_runs(config).values():
        total, non_embedding = cfg.parameter_counts(config, run.size)
        size = config["sizes"][run.size]
        rows.append(
            {
                **run.as_dict(),
                "params": total,
                "non_embedding_params": non_embedding,
                "layers": size["layers"],
                "hidden": size["hidden"],
                "heads": size["heads"],
            }
        )
    return rows


def _built_lenses(config: dict, runs: list[dict]) -> dict[str, Path]:
    """The data lens of each order the runs read, where built (for the data-composition figure);
    none for the preshuffled source."""
    from pythia_suite import paths

    lenses = {}
    if config["data"]["source"] != "preshuffled":
        for variant, seed in sorted({(r["variant"], r["data_seed"]) for r in runs}):
            lens_dir = Path(paths.lens_dir(config["paths"]["results"], variant, seed))
            if (lens_dir / "lens.json").is_file():
                lenses[f"{variant}, data seed {seed}"] = lens_dir
    return lenses


def write_suite_report(config: dict, output: str, result_files) -> None:
    """The suite's report (``build_report``) in the directory ``output`` (complete or absent),
    with its provenance record, from every run's evaluations (``result_files(evals_dir)``: the
    result files in Pythia's layout), trainer states and data lenses, and the local tasks'
    chance levels. Raises what ``build_report`` raises."""
    from pythia_suite import config as cfg
    from pythia_suite import paths
    from pythia_suite.atomic import atomic_directory
    from pythia_suite.evaluate import chance_levels
    from pythia_suite.provenance import Recorder

    results = config["paths"]["results"]
    runs = run_table(config)
    steps = cfg.checkpoint_steps(config)
    eval_jsons = {r["name"]: result_files(paths.evals_dir(results, r["name"])) for r in runs}
    trainer_states = {
        r["name"]: [
            str(Path(paths.checkpoint_dir(results, r["name"], s)) / "trainer_state.json")
            for s in steps
        ]
        for r in runs
    }
    out = Path(output)
    local_tasks = config["evaluation"]["local_tasks"]
    chance = chance_levels(paths.eval_tasks_dir(results)) if local_tasks else {}
    lenses = _built_lenses(config, runs)
    inputs = [Path(paths.evals_dir(results, r["name"])) for r in runs] + list(lenses.values())
    recorder = Recorder(out, "report", {"runs": [r["name"] for r in runs]}, inputs)
    with atomic_directory(out) as tmp:
        build_report(runs, eval_jsons, trainer_states, tmp, chance, lenses)
    recorder.write()
