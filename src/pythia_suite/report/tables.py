"""The report's tables: the final checkpoints' results, and the headline (accuracy against
chance)."""

from __future__ import annotations

import csv
import io
import math
import os
from collections import defaultdict
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from pythia_suite import units
from pythia_suite.atomic import write_text_atomic
from pythia_suite.report.inputs import EvalPoint, metric_labels, run_order, runs_by_name


def final_results(
    points: Sequence[EvalPoint], runs: Sequence[Mapping[str, Any]]
) -> list[dict[str, Any]]:
    """Rows (run, size, variant, params, shots, step, task, metric, value, stderr) at each
    run's last evaluated step per number of shots, ordered by shots, size, variant, task."""
    table = runs_by_name(runs)
    last: dict[tuple[str, int], int] = {}
    for p in points:
        last[(p.run, p.shots)] = max(p.step, last.get((p.run, p.shots), -1))
    rows = [
        {
            "run": p.run,
            "size": table[p.run]["size"],
            "variant": table[p.run]["variant"],
            "params": table[p.run]["params"],
            "shots": p.shots,
            "step": p.step,
            "task": p.task,
            "metric": p.metric,
            "value": p.value,
            "stderr": p.stderr,
        }
        for p in points
        if p.step == last[(p.run, p.shots)]
    ]
    rows.sort(key=lambda r: (r["shots"], run_order(table[r["run"]]), r["task"], r["metric"]))
    return rows


def format_value(value: float, stderr: float | None) -> str:
    """A value and its standard error in one format: 4 decimals below 1000 (accuracies), else
    K/M/B counts (perplexities): '0.5000 ± 0.0250', '1.12M ± 1.60M'."""
    if math.isnan(value):
        return "nan"

    def fmt(x: float) -> str:
        return f"{x:.4f}" if abs(value) < 1000 else units.count(x)

    return f"{fmt(value)} ± {fmt(stderr)}" if stderr is not None else fmt(value)


def final_markdown(rows: Sequence[Mapping[str, Any]]) -> str:
    """One wide table per number of shots: a row per run, a column per task/metric."""
    parts = []
    for shots in sorted({r["shots"] for r in rows}):
        sub = [r for r in rows if r["shots"] == shots]
        keys = ("run", "step", "shots", "task", "metric", "value", "stderr")
        labels = metric_labels([EvalPoint(*(r[k] for k in keys)) for r in sub])
        columns = sorted(
            {(r["task"], r["metric"]) for r in sub if labels[(shots, r["task"], r["metric"])]}
        )
        runs = list(dict.fromkeys(r["run"] for r in sub))
        cells = {(r["run"], r["task"], r["metric"]): r for r in sub}
        head = ["run", "params", "step"] + [f"{t} {labels[(shots, t, m)]}" for t, m in columns]
        lines = [f"### {shots}-shot", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for run in runs:
            first = next(r for r in sub if r["run"] == run)
            values = [
                format_value(c["value"], c["stderr"]) if (c := cells.get((run, t, m))) else ""
                for t, m in columns
            ]
            lines.append(
                f"| {run} | {units.count(first['params'])} | {first['step']} | "
                + " | ".join(values)
                + " |"
            )
        parts.append("\n".join(lines))
    return "\n\n".join(parts) + "\n"


def write_final_results(
    rows: Sequence[Mapping[str, Any]], md_path: str | os.PathLike, csv_path: str | os.PathLike
) -> None:
    """Write the final-results rows as Markdown (wide, per shots) and CSV (long), atomically."""
    buffer = io.StringIO()
    fields = [
        "run",
        "size",
        "variant",
        "params",
        "shots",
        "step",
        "task",
        "metric",
        "value",
        "stderr",
    ]
    writer = csv.DictWriter(buffer, fieldnames=fields, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    write_text_atomic(Path(csv_path), buffer.getvalue())
    write_text_atomic(Path(md_path), final_markdown(rows) if rows else "No evaluation results.\n")


def first_step_above_chance(
    points: Sequence[EvalPoint], chance: float, z: float = 2.0
) -> int | None:
    """The first step whose value exceeds ``chance`` by ``z`` standard errors (None: never).

    ``points`` are one run's points of one task, metric and number of shots; a point without a
    stderr never counts.
    """
    for p in sorted(points, key=lambda p: p.step):
        if p.stderr is not None and p.value - z * p.stderr > chance:
            return p.step
    return None


def headline_rows(
    points: Sequence[EvalPoint],
    runs: Sequence[Mapping[str, Any]],
    chance: Mapping[str, Mapping[str, float]],
    shots: int = 0,
) -> list[dict[str, Any]]:
    """Per run and task with a known chance level: the final value, chance, and the first step
    above chance by 2 standard errors (the tasks' manifest records chance)."""
    table = runs_by_name(runs)
    labels = metric_labels(points)
    series: dict[tuple[str, str, str], list[EvalPoint]] = defaultdict(list)
    for p in points:
        label = labels[(p.shots, p.task, p.metric)]
        if p.shots == shots and p.metric in chance.get(p.task, {}) and label is not None:
            series[(p.run, p.task, p.metric)].append(p)
    rows = []
    for (run, task, metric), pts in series.items():
        last = max(pts, key=lambda p: p.step)
        level = chance[task][metric]
        rows.append(
            {
                "run": run,
                "task": task,
                "metric": labels[(shots, task, metric)],
                "step": last.step,
                "value": last.value,
                "stderr": last.stderr,
                "chance": level,
                "first_step_above_chance": first_step_above_chance(pts, level),
                "curve": [(p.step, p.value) for p in sorted(pts, key=lambda p: p.step)],
            }
        )
    rows.sort(key=lambda r: (r["task"], r["metric"], run_order(table[r["run"]])))
    return rows


def headline_markdown(rows: Sequence[Mapping[str, Any]]) -> str:
    lines = [
        "Accuracy on tasks with a known chance level (0-shot): the final checkpoint, the first "
        "step whose accuracy exceeds chance by 2 standard errors, and the curve over steps.",
        "",
        "| run | task | metric | final step | value | chance | first step > chance + 2 SE "
        "| by step |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        first = r["first_step_above_chance"]
        curve = ", ".join(f"{step}: {value:.3f}" for step, value in r["curve"])
        lines.append(
            f"| {r['run']} | {r['task']} | {r['metric']} | {r['step']} | "
            f"{format_value(r['value'], r['stderr'])} | {r['chance']:.3f} | "
            f"{'never' if first is None else first} | {curve} |"
        )
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# The whole report
# ---------------------------------------------------------------------------------------------
