"""The report's figures (matplotlib, Agg), each written atomically as a PNG."""

from __future__ import annotations

import io
import os
import re
from collections import defaultdict
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from pythia_suite import units
from pythia_suite.atomic import write_bytes_atomic
from pythia_suite.report.inputs import (
    EvalPoint,
    TrainingLog,
    metric_labels,
    run_order,
    runs_by_name,
)

# Line style per data variant, as on Pythia's model card: standard solid, deduped dashed.
_VARIANT_STYLE = {"standard": "-", "deduped": "--"}


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
    table, out = runs_by_name(runs), Path(out_dir)
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
        for run in sorted(by_run, key=lambda r: run_order(table[r])):
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
    table, out = runs_by_name(runs), Path(out_dir)
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
