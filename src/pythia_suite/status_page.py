"""The progress page, `results/status/index.html`: one self-contained file (inline CSS and
inline SVG charts, no scripts, nothing fetched), written atomically by `status --html`.

It holds the status table, failed or incomplete jobs, loss curves so far and tokens/s per
segment (both from the segment summaries), and evaluation curves for the checkpoints evaluated
so far (from the finished evaluation batches' result files).
"""

from __future__ import annotations

import html
import json
import math
import os
import re
from collections import defaultdict
from pathlib import Path

from pythia_suite import layout
from pythia_suite.atomic import write_text_atomic
from pythia_suite.provenance import RECORD_NAME
from pythia_suite.status import TABLE_COLUMNS, SuiteStatus, table_rows

_PALETTE = (
    "#1f77b4 #ff7f0e #2ca02c #d62728 #9467bd #8c564b #e377c2 #7f7f7f #bcbd22 #17becf "
    "#393b79 #637939 #8c6d31 #843c39 #7b4173 #3182bd"
).split()
_RESULT_FILE = re.compile(r"_step(0|[1-9][0-9]*)\.json$")

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
ul{font-size:.9em}code{font-size:.95em}
"""


def _x(step: float) -> float:
    """Symlog-like x: step 0 at 0, then log-spaced (Pythia's checkpoints)."""
    return math.log10(1 + max(step, 0))


def svg_chart(
    title: str,
    series: dict[str, list[tuple[float, float]]],
    *,
    ylabel: str,
    xlabel: str = "step",
    width: int = 520,
    height: int = 300,
) -> str:
    """An inline SVG line chart: one polyline (with dots) per series, x log-spaced by step."""
    pts = [(x, y) for s in series.values() for x, y in s if y is not None and math.isfinite(y)]
    if not pts:
        return ""
    left, right, top, bottom = 60, 150, 24, 36
    xs = [_x(x) for x, _ in pts]
    ys = [y for _, y in pts]
    x0, x1 = min(xs), max(xs)
    y0, y1 = min(ys), max(ys)
    if x1 == x0:
        x1 = x0 + 1
    if y1 == y0:
        y0, y1 = y0 - 0.5, y1 + 0.5
    pad = (y1 - y0) * 0.05
    y0, y1 = y0 - pad, y1 + pad
    pw, ph = width - left - right, height - top - bottom

    def px(x: float) -> float:
        return left + (_x(x) - x0) / (x1 - x0) * pw

    def py(y: float) -> float:
        return top + (1 - (y - y0) / (y1 - y0)) * ph

    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" role="img" aria-label="{html.escape(title)}">',
        f'<text x="{left}" y="16" font-size="13" font-weight="bold">{html.escape(title)}</text>',
        f'<rect x="{left}" y="{top}" width="{pw}" height="{ph}" fill="none" stroke="#999"/>',
    ]
    for i in range(5):
        yv = y0 + (y1 - y0) * i / 4
        out.append(
            f'<line x1="{left}" x2="{left + pw}" y1="{py(yv):.1f}" y2="{py(yv):.1f}" '
            'stroke="#eee"/>'
            f'<text x="{left - 4}" y="{py(yv) + 4:.1f}" font-size="10" text-anchor="end">'
            f"{yv:.4g}</text>"
        )
    # Decades, plus 2x and 5x where the range spans under two decades.
    mults = (1,) if x1 - x0 >= 2 else (1, 2, 5)
    ticks = [0] + [m * 10**k for k in range(0, 7) for m in mults if _x(m * 10**k) <= x1 + 1e-9]
    for t in ticks:
        if _x(t) < x0 - 1e-9:
            continue
        out.append(
            f'<text x="{px(t):.1f}" y="{top + ph + 14}" font-size="10" text-anchor="middle">'
            f"{t:g}</text>"
        )
    out.append(
        f'<text x="{left + pw / 2}" y="{height - 4}" font-size="11" text-anchor="middle">'
        f"{html.escape(xlabel)} (log-spaced)</text>"
        f'<text x="12" y="{top + ph / 2}" font-size="11" text-anchor="middle" '
        f'transform="rotate(-90 12 {top + ph / 2})">{html.escape(ylabel)}</text>'
    )
    for i, (name, s) in enumerate(series.items()):
        colour = _PALETTE[i % len(_PALETTE)]
        good = sorted((x, y) for x, y in s if y is not None and math.isfinite(y))
        if not good:
            continue
        coords = " ".join(f"{px(x):.1f},{py(y):.1f}" for x, y in good)
        out.append(
            f'<polyline fill="none" stroke="{colour}" stroke-width="1.5" points="{coords}"/>'
        )
        out.extend(
            f'<circle cx="{px(x):.1f}" cy="{py(y):.1f}" r="2" fill="{colour}"/>' for x, y in good
        )
        ly = top + 10 + i * 13
        out.append(
            f'<line x1="{left + pw + 8}" x2="{left + pw + 22}" y1="{ly - 4}" y2="{ly - 4}" '
            f'stroke="{colour}" stroke-width="2"/>'
            f'<text x="{left + pw + 26}" y="{ly}" font-size="10">{html.escape(name)}</text>'
        )
    out.append("</svg>")
    return "".join(out)


def eval_series(results: str, runs: list[str]) -> dict[tuple[int, str, str], dict[str, list]]:
    """(shots, task, metric) -> run -> [(step, value)] from finished evaluation batches."""
    series: dict = defaultdict(lambda: defaultdict(list))
    for run in runs:
        base = Path(results) / "runs" / run / "evals"
        for batch in base.glob("*-shot/batch*"):
            if not (batch / RECORD_NAME).exists():
                continue
            for path in batch.rglob("*_step*.json"):
                match = _RESULT_FILE.search(path.name)
                if not match or path.name.endswith(".raw.json"):
                    continue
                try:
                    doc = json.loads(path.read_text(encoding="utf-8"))
                    shots = int(doc["config"]["num_fewshot"])
                    items = doc["results"].items()
                except (OSError, ValueError, KeyError, TypeError):
                    continue
                for task, metrics in items:
                    for metric, value in metrics.items():
                        if metric.endswith("_stderr") or not isinstance(value, int | float):
                            continue
                        series[(shots, task, metric)][run].append((int(match[1]), float(value)))
    return series


def render_page(status: SuiteStatus) -> str:
    """The progress page as one HTML string."""
    esc = html.escape
    rows = table_rows(status)
    parts = [
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
        "<h2>Runs</h2>",
        "<table><thead><tr>" + "".join(f"<th>{esc(c)}</th>" for c in TABLE_COLUMNS),
        "</tr></thead><tbody>",
    ]
    for r, row in zip(status.runs, rows, strict=True):
        cls = ' class="done"' if r.last_step == r.final_step else ""
        parts.append(f"<tr{cls}>" + "".join(f"<td>{esc(c)}</td>" for c in row) + "</tr>")
    parts.append("</tbody></table>")

    parts.append("<h2>Failed or incomplete jobs</h2>")
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

    loss = {r.run: [(s["end_step"], s["loss_last"]) for s in r.segments] for r in status.runs}
    speed = {r.run: [(s["end_step"], s["tokens_per_s"]) for s in r.segments] for r in status.runs}
    charts = [
        (
            "Training loss (last loss of each segment)",
            svg_chart("training loss", loss, ylabel="loss"),
        ),
        ("Tokens/s per segment", svg_chart("tokens/s per segment", speed, ylabel="tokens/s")),
    ]
    parts.append("<h2>Training so far</h2>")
    if any(c for _, c in charts):
        parts.append('<div class="charts">')
        parts.extend(
            f"<figure>{c}<figcaption>{esc(t)}</figcaption></figure>" for t, c in charts if c
        )
        parts.append("</div>")
    else:
        parts.append("<p>No segment summaries yet.</p>")

    parts.append("<h2>Evaluations so far</h2>")
    series = eval_series(status.results, [r.run for r in status.runs])
    if series:
        parts.append('<div class="charts">')
        for (shots, task, metric), by_run in sorted(series.items()):
            title = f"{task} {metric} ({shots}-shot)"
            parts.append(
                f"<figure>{svg_chart(title, dict(sorted(by_run.items())), ylabel=metric)}"
                f"<figcaption>{esc(title)}</figcaption></figure>"
            )
        parts.append("</div>")
    else:
        parts.append("<p>No checkpoint evaluated yet.</p>")
    parts.append("</body></html>\n")
    return "\n".join(parts)


def write_page(status: SuiteStatus, path: str | os.PathLike | None = None) -> Path:
    """Write the page atomically (default `layout.status_page(results)`); returns its path."""
    path = Path(path or layout.status_page(status.results))
    write_text_atomic(path, render_page(status))
    return path
