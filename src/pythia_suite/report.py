"""The suite's report: evaluation curves, loss curves, final results, data-order check, spikes.

:func:`build_report` takes everything explicitly (no config reading; :func:`write_suite_report`
gathers it from the config and the results tree):

- ``runs``: a table of dicts, one per run: ``name``, ``size`` (``"70m"``), ``variant``
  (``"standard"`` | ``"deduped"``), ``params`` (int), optionally ``data_seed`` (runs are grouped
  by variant and data seed for the data-order check).
- ``eval_jsons``: ``{run name: [paths]}`` of Pythia-layout result files written by
  :func:`pythia_suite.evaluate.evaluate_checkpoints` (``.../<run>_step<N>.json``); lm-eval's
  ``.raw.json`` files are ignored if passed.
- ``trainer_states``: ``{run name: [paths of trainer_state.json]}``, one per checkpoint segment.

:func:`build_report` writes into ``out_dir``: ``report.md``, ``final_results.md``,
``final_results.csv``, ``fingerprints.json``, ``spikes.csv``, ``eval_<shots>_<task>_<metric>.png``
and ``loss_<run>.png`` / ``loss_all.png``. The data-order check runs first: runs that should
have seen the same data in the same order but did not raise :class:`FingerprintMismatchError`
before anything is written.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import re
from collections import defaultdict
from collections.abc import Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pythia_suite import units
from pythia_suite.atomic import write_bytes_atomic, write_text_atomic
from pythia_suite.jsonfile import read_json

__all__ = [
    "EvalPoint",
    "FingerprintMismatchError",
    "FingerprintSummary",
    "TrainingLog",
    "build_report",
    "first_step_above_chance",
    "headline_rows",
    "check_fingerprints",
    "final_results",
    "load_eval_points",
    "plot_eval_curves",
    "plot_loss_curves",
    "read_training_log",
    "write_final_results",
]

_STEP_FILE = re.compile(r"_step(\d+)\.json$")
_REQUIRED_RUN_KEYS = ("name", "size", "variant", "params")
# Line style per data variant, as on Pythia's model card: standard solid, deduped dashed.
_VARIANT_STYLE = {"standard": "-", "deduped": "--"}


class FingerprintMismatchError(RuntimeError):
    """Runs that must have consumed identical data, step by step, did not."""


# ---------------------------------------------------------------------------------------------
# Inputs
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class EvalPoint:
    """One metric of one task at one checkpoint of one run."""

    run: str
    step: int
    shots: int
    task: str
    metric: str
    value: float
    stderr: float | None


def _check_runs(runs: Sequence[Mapping[str, Any]]) -> dict[str, Mapping[str, Any]]:
    """``runs`` keyed by name; every run must have name, size, variant and params."""
    table = {}
    for i, run in enumerate(runs):
        missing = [k for k in _REQUIRED_RUN_KEYS if k not in run]
        if missing:
            raise ValueError(f"runs[{i}] ({run.get('name', '?')}): missing key(s) {missing}")
        if run["name"] in table:
            raise ValueError(f"runs[{i}]: duplicate run name {run['name']!r}")
        table[run["name"]] = run
    return table


def load_eval_points(eval_jsons: Mapping[str, Iterable[str | os.PathLike]]) -> list[EvalPoint]:
    """Every non-stderr metric of every Pythia-layout result file, with its stderr.

    The step comes from the file name (``..._step<N>.json``), the number of shots from the
    file's ``config.num_fewshot``. Files ending in ``.raw.json`` are skipped.

    Raises:
        ValueError: a file name has no ``_step<N>``, or a file lacks ``results`` or
            ``config.num_fewshot`` (naming the file).
    """
    points = []
    for run, paths in eval_jsons.items():
        for path in map(Path, paths):
            if path.name.endswith(".raw.json"):
                continue
            match = _STEP_FILE.search(path.name)
            if not match:
                raise ValueError(f"{path}: file name does not end in _step<N>.json")
            doc = read_json(path)
            try:
                results, shots = doc["results"], int(doc["config"]["num_fewshot"])
            except (KeyError, TypeError):
                raise ValueError(f"{path}: needs 'results' and 'config.num_fewshot'") from None
            for task, metrics in results.items():
                for metric, value in metrics.items():
                    if metric.endswith("_stderr") or not isinstance(value, int | float):
                        continue
                    stderr = metrics.get(f"{metric}_stderr")
                    stderr = float(stderr) if isinstance(stderr, int | float) else None
                    points.append(
                        EvalPoint(run, int(match[1]), shots, task, metric, float(value), stderr)
                    )
    return points


@dataclass
class TrainingLog:
    """What a run's trainer_state.json files say: losses, data fingerprints, spikes, by step."""

    run: str
    losses: dict[int, float] = field(default_factory=dict)
    fingerprints: dict[int, str] = field(default_factory=dict)
    spikes: list[dict[str, Any]] = field(default_factory=list)


def _steps_and_values(entries: Any, value_key: str, path: Path, key: str) -> dict[int, Any]:
    """``{step: value}`` from ``{step: value}``, ``[{step, value_key}]`` or ``[[step, value]]``."""
    if isinstance(entries, Mapping):
        return {int(step): value for step, value in entries.items()}
    out = {}
    for i, entry in enumerate(entries or []):
        if isinstance(entry, Mapping) and "step" in entry and value_key in entry:
            out[int(entry["step"])] = entry[value_key]
        elif isinstance(entry, list | tuple) and len(entry) == 2:
            out[int(entry[0])] = entry[1]
        else:
            raise ValueError(f"{path}: {key}[{i}] = {entry!r}: expected step and {value_key}")
    return out


def _fingerprint_entries(state: Mapping[str, Any]) -> tuple[str, Any]:
    """Per-step fingerprints of a trainer state without ``history``, under the key it used."""
    for key in ("step_fingerprints", "fingerprints"):
        if key in state:
            return key, state[key]
    return "fingerprints", None


def _history_entries(state: Mapping[str, Any], path: Path) -> tuple[dict, dict]:
    """Losses and fingerprints by step from the trainer's ``history`` list.

    ``pythia_suite.train.loop`` writes one entry per step: ``{"iteration", "step", "loss",
    "lr", "grad_norm", "skipped", "tokens_per_s", "tokens_sha256"}`` (``step`` = iteration + 1,
    the checkpoint the update produces).
    """
    losses, fingerprints = {}, {}
    for i, entry in enumerate(state["history"]):
        if not isinstance(entry, Mapping) or "step" not in entry or "loss" not in entry:
            raise ValueError(f"{path}: history[{i}] = {entry!r}: expected 'step' and 'loss'")
        losses[int(entry["step"])] = float(entry["loss"])
        if entry.get("tokens_sha256"):
            fingerprints[int(entry["step"])] = str(entry["tokens_sha256"])
    return losses, fingerprints


def read_training_log(run: str, trainer_states: Iterable[str | os.PathLike]) -> TrainingLog:
    """Merge the trainer_state.json files of a run's segments into one :class:`TrainingLog`.

    Reads what ``pythia_suite.train.loop`` writes: ``history`` (per step ``step``, ``loss``,
    ``tokens_sha256``) and ``spikes`` (``{step, loss, running_mean}``). Without ``history``,
    losses come from ``losses`` (``{step, loss}`` dicts or ``[step, loss]`` pairs) and
    fingerprints from ``step_fingerprints``/``fingerprints`` (``{step: hex}``); a bare
    ``[[step, loss], ...]`` JSON list is accepted too.

    Raises:
        ValueError: an entry is malformed, or two files disagree on a step's fingerprint
            (naming the run, the file and the step).
    """
    log = TrainingLog(run)
    for path in sorted(map(Path, trainer_states)):
        state = read_json(path)
        if isinstance(state, list):
            state = {"losses": state}
        if "history" in state:
            losses, fingerprints = _history_entries(state, path)
        else:
            losses = {
                step: float(loss)
                for step, loss in _steps_and_values(
                    state.get("losses"), "loss", path, "losses"
                ).items()
            }
            key, entries = _fingerprint_entries(state)
            fingerprints = _steps_and_values(entries, "fingerprint", path, key)
        log.losses.update(losses)
        for step, fp in fingerprints.items():
            if log.fingerprints.get(step, fp) != fp:
                raise ValueError(
                    f"{run}: {path} gives step {step} fingerprint {fp}, an earlier segment "
                    f"{log.fingerprints[step]}"
                )
            log.fingerprints[step] = str(fp)
        for spike in state.get("spikes", state.get("loss_spikes", [])) or []:
            entry = dict(spike) if isinstance(spike, Mapping) else {"step": int(spike)}
            if entry not in log.spikes:
                log.spikes.append(entry)
    log.spikes.sort(key=lambda s: s.get("step", 0))
    return log


# ---------------------------------------------------------------------------------------------
# Data-order fingerprints
# ---------------------------------------------------------------------------------------------


@dataclass
class FingerprintSummary:
    """Per group of runs that must see identical data: runs, steps compared, verdict."""

    groups: dict[str, dict[str, Any]]

    def markdown(self) -> str:
        lines = ["| data group | runs | steps compared | result |", "|---|---|---|---|"]
        for name, g in self.groups.items():
            steps = g["steps_compared"]
            span = f"{len(steps)} ({steps[0]}..{steps[-1]})" if steps else "0"
            lines.append(f"| {name} | {', '.join(g['runs'])} | {span} | {g['result']} |")
        return "\n".join(lines)


def check_fingerprints(
    fingerprints: Mapping[str, Mapping[int, str]], groups: Mapping[str, Hashable]
) -> FingerprintSummary:
    """Check that runs of one data group consumed identical data, step by step.

    Args:
        fingerprints: ``{run: {step: fingerprint}}``.
        groups: ``{run: group key}`` (e.g. ``(variant, data_seed)``); runs in one group must have
            equal fingerprints at every step they both have. Steps only some runs reached (a run
            still training) are not a mismatch.

    Returns:
        The summary (groups, runs, steps compared).

    Raises:
        FingerprintMismatchError: naming the group, the two runs, the first differing step and
            both fingerprints.
        KeyError: a run of ``fingerprints`` has no group.
    """
    members: dict[Hashable, list[str]] = defaultdict(list)
    for run in sorted(fingerprints):
        if run not in groups:
            raise KeyError(f"run {run!r} has fingerprints but no data group")
        members[groups[run]].append(run)
    summary = {}
    for key, runs in members.items():
        reference = runs[0]
        compared: set[int] = set()
        for other in runs[1:]:
            common = sorted(set(fingerprints[reference]) & set(fingerprints[other]))
            for step in common:
                a, b = fingerprints[reference][step], fingerprints[other][step]
                if a != b:
                    raise FingerprintMismatchError(
                        f"data group {_group_name(key)}: runs {reference!r} and {other!r} consumed "
                        f"different data: first differing step {step} ({a[:16]}... vs {b[:16]}...)"
                    )
            compared.update(common)
        result = "identical" if len(runs) > 1 else "single run (nothing to compare)"
        summary[_group_name(key)] = {
            "runs": runs,
            "steps_compared": sorted(compared),
            "result": result,
        }
    return FingerprintSummary(summary)


def merge_identical_metrics(series: Mapping) -> dict:
    """(shots, task, metric) -> run -> points, sorted, with the metrics of a task whose curves
    are identical in every run merged into one key ('acc = acc_norm': one chart or column,
    not two copies)."""
    merged: dict = {}
    for (shots, task, metric), by_run in sorted(series.items()):
        curves = {run: sorted(points) for run, points in by_run.items()}
        twin = next(
            (
                key
                for key, other in merged.items()
                if key[:2] == (shots, task)
                and {run: sorted(points) for run, points in other.items()} == curves
            ),
            None,
        )
        if twin is None:
            merged[(shots, task, metric)] = by_run
        else:
            merged[(shots, task, f"{twin[2]} = {metric}")] = merged.pop(twin)
    return dict(sorted(merged.items()))


def metric_labels(points: Sequence[EvalPoint]) -> dict[tuple[int, str, str], str | None]:
    """(shots, task, metric) -> the label it is shown under ('acc = acc_norm' when the metrics'
    values and standard errors are identical in every run and step), or None for a metric shown
    under another's label."""
    series: dict = defaultdict(lambda: defaultdict(list))
    for p in points:
        series[(p.shots, p.task, p.metric)][p.run].append((p.step, p.value, p.stderr))
    labels: dict[tuple[int, str, str], str | None] = {}
    for shots, task, label in merge_identical_metrics(series):
        first, *others = label.split(" = ")
        labels[(shots, task, first)] = label
        labels.update({(shots, task, other): None for other in others})
    return labels


def _group_name(key: Hashable) -> str:
    if isinstance(key, tuple):
        return " / ".join(f"{k}" for k in key)
    return str(key)


# ---------------------------------------------------------------------------------------------
# Plots (matplotlib, Agg)
# ---------------------------------------------------------------------------------------------


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save_figure(fig, path: Path) -> Path:
    """Save a figure atomically (rendered in memory, then ``write_bytes_atomic``)."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    return write_bytes_atomic(path, buffer.getvalue())


def _size_colours(table: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """One colour per model size, ordered by parameter count (tab10; viridis beyond 10)."""
    plt = _pyplot()
    params = defaultdict(list)
    for run in table.values():
        params[run["size"]].append(run["params"])
    sizes = sorted(params, key=lambda size: min(params[size]))
    cmap = plt.get_cmap("tab10") if len(sizes) <= 10 else plt.get_cmap("viridis", len(sizes))
    return {size: cmap(i) for i, size in enumerate(sizes)}


def _run_order(run: Mapping[str, Any]) -> tuple:
    """Runs by size, then standard before deduped before other variants, then name."""
    variant_rank = {"standard": 0, "deduped": 1}.get(run["variant"], 2)
    return (run["params"], variant_rank, run["variant"], run["name"])


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name)


def plot_eval_curves(
    points: Sequence[EvalPoint],
    runs: Sequence[Mapping[str, Any]],
    out_dir: str | os.PathLike,
    chance: Mapping[str, Mapping[str, float]] | None = None,
) -> list[Path]:
    """One PNG per (shots, task, metric): metric vs step for every run, as on Pythia's card.

    x is symlog (step 0 at 0, then the log-spaced steps); one colour per size, solid for
    standard and dashed for deduped data. Written as ``eval_<shots>shot_<task>_<metric>.png``.
    """
    plt = _pyplot()
    table, out = _check_runs(runs), Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    colours = _size_colours(table)
    series: dict[tuple[int, str, str], dict[str, list[EvalPoint]]] = defaultdict(
        lambda: defaultdict(list)
    )
    labels = metric_labels(points)
    for p in points:
        if labels[(p.shots, p.task, p.metric)] is not None:
            series[(p.shots, p.task, p.metric)][p.run].append(p)
    written = []
    for (shots, task, metric), by_run in sorted(series.items()):
        label = labels[(shots, task, metric)]
        fig, ax = plt.subplots(figsize=(6.4, 4.0))
        for run in sorted(by_run, key=lambda r: _run_order(table[r])):
            pts = sorted(by_run[run], key=lambda p: p.step)
            ax.plot(
                [p.step for p in pts],
                [p.value for p in pts],
                _VARIANT_STYLE.get(table[run]["variant"], ":"),
                marker="o",
                markersize=3,
                color=colours[table[run]["size"]],
                label=run,
            )
        level = (chance or {}).get(task, {}).get(metric)
        if level is not None:
            ax.axhline(level, color="grey", linestyle=":", linewidth=1, label="chance")
        ax.set_xscale("symlog", linthresh=1)
        if units.spans_decades([p.value for pts in by_run.values() for p in pts]):
            ax.set_yscale("log")  # perplexities fall over decades
        ax.set_xlabel("step")
        ax.set_ylabel(label)
        ax.set_title(f"{task} ({shots}-shot)")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7)
        path = out / f"eval_{shots}shot_{_safe(task)}_{_safe(metric)}.png"
        written.append(_save_figure(fig, path))
        plt.close(fig)
    return written


def plot_loss_curves(
    logs: Sequence[TrainingLog], runs: Sequence[Mapping[str, Any]], out_dir: str | os.PathLike
) -> list[Path]:
    """``loss_<run>.png`` per run (spikes marked) and ``loss_all.png`` with every run."""
    plt = _pyplot()
    table, out = _check_runs(runs), Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    colours = _size_colours(table)
    written = []
    all_fig, all_ax = plt.subplots(figsize=(6.4, 4.0))
    for log in logs:
        if not log.losses:
            continue
        steps = sorted(log.losses)
        losses = [log.losses[s] for s in steps]
        style = _VARIANT_STYLE.get(table[log.run]["variant"], ":")
        colour = colours[table[log.run]["size"]]
        fig, ax = plt.subplots(figsize=(6.4, 4.0))
        ax.plot(steps, losses, style, color=colour, linewidth=1)
        spikes = [s["step"] for s in log.spikes if s.get("step") in log.losses]
        if spikes:
            ax.plot(spikes, [log.losses[s] for s in spikes], "x", color="red", label="spike")
            ax.legend(fontsize=7)
        for a in (ax, all_ax):
            a.set_xscale("symlog", linthresh=1)
            a.set_xlabel("step")
            a.set_ylabel("training loss")
            a.grid(True, alpha=0.3)
        ax.set_title(log.run)
        written.append(_save_figure(fig, out / f"loss_{_safe(log.run)}.png"))
        plt.close(fig)
        all_ax.plot(steps, losses, style, color=colour, linewidth=1, label=log.run)
    if written:
        all_ax.set_title("training loss")
        all_ax.legend(fontsize=7)
        written.append(_save_figure(all_fig, out / "loss_all.png"))
    plt.close(all_fig)
    return written


# ---------------------------------------------------------------------------------------------
# Final-checkpoint table
# ---------------------------------------------------------------------------------------------


def plot_data_composition(
    lenses: Mapping[str, str | os.PathLike], out: Path, max_points: int = 2000
) -> tuple[Path, list[str]]:
    """``data_composition.png``: per order (label -> lens directory, side by side), the
    cumulative share of tokens per Pile subset (top) and of first-seen against repeated tokens
    (bottom) against the step; plus one summary line per order for the report."""
    import numpy as np

    from pythia_suite.data.lens import STEP_COLUMNS, load_lens

    plt = _pyplot()
    labels = sorted(lenses)
    fig, axes = plt.subplots(2, len(labels), figsize=(5.2 * len(labels), 6.4), squeeze=False)
    lines = []
    for k, label in enumerate(labels):
        lens = load_lens(lenses[label])
        steps = np.asarray(lens.steps)
        every = max(1, len(steps) // max_points)
        x = np.arange(1, len(steps) + 1)[::every]  # checkpoint N: steps 0 .. N-1
        tokens = np.cumsum(steps[:, STEP_COLUMNS.index("tokens")])[::every].astype(float)
        subsets = np.cumsum(np.asarray(lens.subset_tokens), axis=0)[::every] / tokens[:, None]
        names = lens.meta.get("subsets") or ["(no subset labels)"]
        top, bottom = axes[0][k], axes[1][k]
        top.stackplot(x, subsets.T, labels=names)
        top.set_title(label)
        top.set_ylabel("share of tokens seen")
        top.set_ylim(0, 1)
        top.legend(fontsize=6, loc="lower right")
        repeated = np.cumsum(steps[:, STEP_COLUMNS.index("repeated_tokens")])[::every] / tokens
        bottom.stackplot(
            x, 1 - repeated, repeated, labels=["first-seen documents", "repeated documents"]
        )
        bottom.set_ylim(0, 1)
        bottom.set_xlabel("step")
        bottom.set_ylabel("share of tokens seen")
        bottom.legend(fontsize=7, loc="lower right")
        first = lens.meta["first_repeated_step"]
        lines.append(
            f"- {label}: {lens.meta['epochs']} epoch(s) in doc_idx; "
            + (f"documents repeat from step {first}" if first is not None else "no repeats")
            + f"; {repeated[-1]:.1%} of all tokens read come from repeated documents"
        )
    fig.tight_layout()
    path = _save_figure(fig, out / "data_composition.png")
    plt.close(fig)
    return path, lines


def final_results(
    points: Sequence[EvalPoint], runs: Sequence[Mapping[str, Any]]
) -> list[dict[str, Any]]:
    """Rows (run, size, variant, params, shots, step, task, metric, value, stderr) at each
    run's last evaluated step per number of shots, ordered by shots, size, variant, task."""
    table = _check_runs(runs)
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
    rows.sort(key=lambda r: (r["shots"], _run_order(table[r["run"]]), r["task"], r["metric"]))
    return rows


def _format_value(value: float, stderr: float | None) -> str:
    """A value and its standard error in one format: 4 decimals below 1000 (accuracies), else
    K/M/B counts (perplexities): '0.5000 ± 0.0250', '1.12M ± 1.60M'."""
    if math.isnan(value):
        return "nan"

    def fmt(x: float) -> str:
        return f"{x:.4f}" if abs(value) < 1000 else units.count(x)

    return f"{fmt(value)} ± {fmt(stderr)}" if stderr is not None else fmt(value)


def _final_markdown(rows: Sequence[Mapping[str, Any]]) -> str:
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
                _format_value(c["value"], c["stderr"]) if (c := cells.get((run, t, m))) else ""
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
    _write_text(Path(csv_path), buffer.getvalue())
    _write_text(Path(md_path), _final_markdown(rows) if rows else "No evaluation results.\n")


def _write_text(path: Path, text: str) -> None:
    write_text_atomic(path, text)


# ---------------------------------------------------------------------------------------------
# Headline: accuracy against chance
# ---------------------------------------------------------------------------------------------


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
    table = _check_runs(runs)
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
    rows.sort(key=lambda r: (r["task"], r["metric"], _run_order(table[r["run"]])))
    return rows


def _headline_markdown(rows: Sequence[Mapping[str, Any]]) -> str:
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
            f"{_format_value(r['value'], r['stderr'])} | {r['chance']:.3f} | "
            f"{'never' if first is None else first} | {curve} |"
        )
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# The whole report
# ---------------------------------------------------------------------------------------------


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
    table = _check_runs(runs)
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
    _write_text(out / "fingerprints.json", json.dumps(fp_summary.groups, indent=2) + "\n")
    spikes = _spike_rows(logs)
    spike_fields = ["run"] + sorted({k for s in spikes for k in s if k != "run"})
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=spike_fields, lineterminator="\n")
    writer.writeheader()
    writer.writerows(spikes)
    _write_text(out / "spikes.csv", buffer.getvalue())

    report = _report_markdown(table, rows, fp_summary, spikes, eval_plots, loss_plots, headline)
    if lenses:
        figure, lines = plot_data_composition(lenses, out)
        report += (
            "\n## Data seen\n\nCumulative composition of the tokens each order has read "
            f"(the data lens): [{figure.name}]({figure.name}).\n\n" + "\n".join(lines) + "\n"
        )
    _write_text(out / "report.md", report)
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
        for r in sorted(table.values(), key=_run_order)
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
        sections.append("## Headline: learning above chance\n\n" + _headline_markdown(headline))
    sections += [
        "## Runs\n\n" + "\n".join(runs),
        "## Final checkpoints\n\n" + (_final_markdown(rows) if rows else "No evaluation results."),
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
