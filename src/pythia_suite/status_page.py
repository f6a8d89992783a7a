"""The progress page, `results/status/index.html`: one self-contained file (inline CSS and
inline SVG charts drawn by matplotlib, no scripts, nothing fetched), written atomically by
`status --html`.

It holds the status table, failed or incomplete jobs, loss curves so far and tokens/s per
segment (both from the segment summaries), and evaluation curves for the checkpoints evaluated
so far (from the finished evaluation batches' result files).
"""

from __future__ import annotations

import html
import io
import json
import math
import os
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

from pythia_suite import paths, units
from pythia_suite.atomic import write_text_atomic
from pythia_suite.evaluate import chance_levels, result_file_step
from pythia_suite.jsonfile import read_json
from pythia_suite.provenance import RECORD_NAME
from pythia_suite.report import merge_identical_metrics
from pythia_suite.status import (
    TABLE_COLUMNS,
    SuiteStatus,
    collect_status,
    render_text,
    table_rows,
)

_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:1.5em;
color:#222;background:#fff}
h1{font-size:1.4em;margin:0 0 .2em}h2{font-size:1.1em;margin:1.4em 0 .4em}
.meta{color:#555;font-size:.9em}
table{border-collapse:collapse;font-size:.85em}
th,td{border:1px solid #ccc;padding:.25em .5em;text-align:right;white-space:nowrap}
th{background:#f0f0f0;white-space:normal}td:first-child,th:first-child{text-align:left}
tr.done td{background:#f3fbf3}.bad{color:#b00020}
.charts{display:flex;flex-wrap:wrap;gap:1em}
figure{margin:0;border:1px solid #ddd;padding:.3em}figcaption{font-size:.85em;color:#444}
figure svg{display:block;height:auto;max-width:100%}
ul{font-size:.9em}code{font-size:.95em}
"""


@dataclass(frozen=True)
class Line:
    """How one run is drawn: its size's colour, dashed for deduplicated data (as in the
    report and on Pythia's model card)."""

    colour: str
    dashed: bool


def run_lines(runs: list[tuple[str, str, str]]) -> dict[str, Line]:
    """run name -> Line, from (run, size, variant) in suite order (sizes ascending)."""
    sizes = list(dict.fromkeys(size for _, size, _ in runs))
    palette = [f"C{i % 10}" for i in range(len(sizes))]
    colour = dict(zip(sizes, palette, strict=True))
    return {run: Line(colour[size], variant == "deduped") for run, size, variant in runs}


def _finite(points) -> list[tuple[float, float]]:
    return sorted(
        (float(x), float(y)) for x, y in points if y is not None and math.isfinite(float(y))
    )


def chart_svg(
    title: str,
    series: dict[str, list[tuple[float, float]]],
    lines: dict[str, Line],
    *,
    ylabel: str,
    chance: float | None = None,
) -> str:
    """A line chart drawn by matplotlib as inline SVG with its text kept as text
    (``svg.fonttype: none``): step on a symlog x axis (step 0 at 0), y on a log axis when the
    values span decades (else linear, never below 0 for values that are all >= 0), the chance
    level dotted where there is one, the legend beside the axes. "" when no value is finite."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter, MaxNLocator, ScalarFormatter

    drawn = {run: pts for run, pts in ((r, _finite(p)) for r, p in series.items()) if pts}
    if not drawn:
        return ""
    values = [y for pts in drawn.values() for _, y in pts]
    low = min(values)
    style = {
        "svg.fonttype": "none",  # text stays <text>: selectable, and measurable in the DOM
        "svg.hashsalt": title,  # ids unique per chart (several SVGs share one page) and stable
        "font.size": 9,
    }
    with plt.rc_context(style):
        fig, ax = plt.subplots(figsize=(4.6, 2.8))
        for run, pts in drawn.items():
            line = lines.get(run, Line("C7", False))
            ax.plot(
                [x for x, _ in pts],
                [y for _, y in pts],
                "--" if line.dashed else "-",
                color=line.colour,
                marker="o",
                markersize=2.5,
                linewidth=1.3,
                label=run,
            )
        if chance is not None:
            ax.axhline(
                chance, color="0.35", linestyle=":", linewidth=1.2, label=f"chance {chance:g}"
            )
        ax.set_xscale("symlog", linthresh=1)
        ax.set_xlim(left=0)
        ax.xaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))
        if units.spans_decades(values):
            ax.set_yscale("log")
        else:
            ax.yaxis.set_major_locator(MaxNLocator(nbins=6, steps=[1, 2, 2.5, 5, 10]))
            if max(values) >= 1e4:  # counts as the tables write them: 2M, not 2 with "1e6"
                ax.yaxis.set_major_formatter(FuncFormatter(lambda value, _: units.count(value)))
            else:
                formatter = ScalarFormatter(useOffset=False)
                formatter.set_powerlimits((-4, 6))
                ax.yaxis.set_major_formatter(formatter)
            if low >= 0:  # nothing below 0 to show: no negative range
                ax.set_ylim(bottom=max(ax.get_ylim()[0], 0))
        ax.set_xlabel("step")
        ax.set_ylabel(ylabel)
        ax.set_title(title)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
        buffer = io.StringIO()
        fig.savefig(buffer, format="svg", bbox_inches="tight", metadata={"Date": None})
        plt.close(fig)
    svg = buffer.getvalue()
    svg = svg[svg.index("<svg") :]  # inline: no XML declaration or DOCTYPE
    return svg.replace("<svg ", f'<svg role="img" aria-label="{html.escape(title)}" ', 1)


def never_leaves_zero(series: dict[str, list[tuple[float, float]]]) -> bool:
    """Every finite value of every run is 0 (a curve would say nothing: state it instead)."""
    values = [y for pts in series.values() for _, y in _finite(pts)]
    return bool(values) and all(v == 0 for v in values)


def eval_series(results: str, runs: list[str]) -> dict[tuple[int, str, str], dict[str, list]]:
    """(shots, task, metric) -> run -> [(step, value)] from finished evaluation batches."""
    series: dict = defaultdict(lambda: defaultdict(list))
    for run in runs:
        base = Path(results) / "runs" / run / "evals"
        for batch in base.glob("*-shot/batch*"):
            if not (batch / RECORD_NAME).exists():
                continue
            for path in batch.rglob("*_step*.json"):
                step = result_file_step(path.name)
                if step is None:
                    continue
                try:
                    doc = read_json(path)
                    shots = int(doc["config"]["num_fewshot"])
                    items = doc["results"].items()
                except (OSError, ValueError, KeyError, TypeError):
                    continue
                for task, metrics in items:
                    for metric, value in metrics.items():
                        if metric.endswith("_stderr") or not isinstance(value, int | float):
                            continue
                        series[(shots, task, metric)][run].append((step, float(value)))
    return series


def _page_head(status: SuiteStatus) -> list[str]:
    """The page's head, title and the paragraph saying where its figures come from."""
    esc = html.escape
    return [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>pythia-suite status {esc(status.generated_at)}</title>",
        f"<style>{_CSS}</style></head><body>",
        "<h1>pythia-suite progress</h1>",
        f'<p class="meta">Generated {esc(status.generated_at)} from <code>{esc(status.results)}'
        "</code> by <code>pythia-suite status --html</code>. "
        + (
            f"Predictions: <code>{esc(status.plan_recorded)}</code> (recorded "
            f"{esc(str(status.plan_recorded_at))})."
            if status.plan_recorded
            else "No prediction recorded (results/plan.json)."
        )
        + " Device-hours = allocated devices x segment wall time.</p>",
    ]


def _runs_table(status: SuiteStatus) -> list[str]:
    """The runs table (the rows of `status`'s text table), finished runs marked."""
    esc = html.escape
    parts = [
        "<h2>Runs</h2>",
        "<table><thead><tr>" + "".join(f"<th>{esc(c)}</th>" for c in TABLE_COLUMNS),
        "</tr></thead><tbody>",
    ]
    for r, row in zip(status.runs, table_rows(status), strict=True):
        cls = ' class="done"' if r.last_step == r.final_step else ""
        parts.append(f"<tr{cls}>" + "".join(f"<td>{esc(c)}</td>" for c in row) + "</tr>")
    parts.append("</tbody></table>")
    return parts


def _problems_section(status: SuiteStatus) -> list[str]:
    """Failed or incomplete jobs with their logs and errors, then what SLURM says."""
    esc = html.escape
    parts = ["<h2>Failed or incomplete jobs</h2>"]
    if status.problems:
        parts.append("<ul>")
        for p in status.problems:
            job = f" (SLURM job {esc(p.job_id)} {esc(p.slurm_state or '')})" if p.job_id else ""
            log = f"<br>log: <code>{esc(p.log)}</code>" if p.log else ""
            if p.slurm_log:
                log += f"<br>SLURM log: <code>{esc(p.slurm_log)}</code>"
            err = f'<br><span class="bad">{esc(p.error)}</span>' if p.error else ""
            parts.append(
                f"<li><b>{esc(p.kind)}</b> {esc(p.rule)} <code>{esc(p.target)}</code>"
                f"{job}{log}{err}</li>"
            )
        parts.append("</ul>")
    else:
        parts.append("<p>None.</p>")
    if not status.slurm.reachable:
        parts.append(f"<p>{esc(status.slurm.reason)}</p>")
    elif status.slurm.jobs:
        parts.append("<p>SLURM jobs of the suite:</p><ul>")
        parts.extend(
            f"<li>{esc(j['job_id'])} {esc(j['state'])} <code>{esc(j['comment'])}</code></li>"
            for j in status.slurm.jobs
        )
        parts.append("</ul>")
    else:
        parts.append("<p>SLURM: no running or pending jobs of the suite.</p>")
    return parts


def _training_section(status: SuiteStatus, lines) -> list[str]:
    """Charts of each segment's last loss and tokens/s, per run."""
    esc = html.escape
    loss = {r.run: [(s["end_step"], s["loss_last"]) for s in r.segments] for r in status.runs}
    speed = {r.run: [(s["end_step"], s["tokens_per_s"]) for s in r.segments] for r in status.runs}
    charts = [
        (
            "Training loss (last loss of each segment)",
            chart_svg("training loss", loss, lines, ylabel="loss"),
        ),
        (
            "Tokens/s per segment",
            chart_svg("tokens/s per segment", speed, lines, ylabel="tokens/s"),
        ),
    ]
    parts = ["<h2>Training so far</h2>"]
    if any(c for _, c in charts):
        parts.append('<div class="charts">')
        parts.extend(
            f"<figure>{c}<figcaption>{esc(t)}</figcaption></figure>" for t, c in charts if c
        )
        parts.append("</div>")
    else:
        parts.append("<p>No segment summaries yet.</p>")
    return parts


def _evaluations_section(status: SuiteStatus, lines) -> list[str]:
    """A chart per evaluated (shots, task, metric), chance marked; metrics still 0 everywhere
    are listed, not plotted."""
    esc = html.escape
    parts = [
        "<h2>Evaluations so far</h2>",
        "<p>Colour: model size; solid: the Pile, dashed: deduplicated; dotted: chance, where "
        "the task has one. x: step (0, then log-spaced).</p>",
    ]
    series = eval_series(status.results, [r.run for r in status.runs])
    chance = chance_levels(paths.eval_tasks_dir(status.results))
    flat = []
    if not series:
        return [*parts, "<p>No checkpoint evaluated yet.</p>"]
    parts.append('<div class="charts">')
    for (shots, task, metric), by_run in merge_identical_metrics(series).items():
        title = f"{task} {metric} ({shots}-shot)"
        if never_leaves_zero(by_run):
            flat.append(title)
            continue
        chart = chart_svg(
            title,
            dict(sorted(by_run.items())),
            lines,
            ylabel=metric,
            chance=chance.get(task, {}).get(metric.split(" = ")[0]),
        )
        parts.append(f"<figure>{chart}<figcaption>{esc(title)}</figcaption></figure>")
    parts.append("</div>")
    if flat:
        parts.append(
            "<p>0 at every step evaluated so far, in every run (not plotted): "
            + ", ".join(esc(t) for t in flat)
            + ".</p>"
        )
    return parts


def render_page(status: SuiteStatus) -> str:
    """The progress page as one HTML string."""
    lines = run_lines([(r.run, r.size, r.variant) for r in status.runs])
    parts = [
        *_page_head(status),
        *_runs_table(status),
        *_problems_section(status),
        *_training_section(status, lines),
        *_evaluations_section(status, lines),
        "</body></html>\n",
    ]
    return "\n".join(parts)


def write_page(status: SuiteStatus, path: str | os.PathLike | None = None) -> Path:
    """Write the page atomically (default `paths.status_page(results)`); returns its path."""
    path = Path(path or paths.status_page(status.results))
    write_text_atomic(path, render_page(status))
    return path


def show_status(
    config: dict,
    runs: list[str],
    *,
    ask_slurm: bool,
    as_json: bool,
    write_html: bool,
    html_path: str | None,
    watch: float | None,
    log,
) -> None:
    """`pythia-suite status`: the text (or JSON) status on stdout, with `write_html` the page
    (its path said through `log`); with `watch`, again every `watch` seconds until interrupted."""
    while True:
        state = collect_status(config, runs, ask_slurm=ask_slurm)
        if write_html:
            log(f"progress page: {write_page(state, html_path)}")
        if as_json:
            print(json.dumps(state.as_dict(), indent=1))
        else:
            if watch:
                print("\033[H\033[2J", end="")
            print(render_text(state), end="", flush=True)
        if not watch:
            return
        time.sleep(watch)
