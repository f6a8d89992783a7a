"""The status as plain text: the table (also the HTML page's), problems, SLURM jobs, spikes."""

from __future__ import annotations

import math

from pythia_suite import units
from pythia_suite.status.records import SuiteStatus


def _fmt_hours(h: float | None) -> str:
    return "-" if h is None else units.hours(h)


def _fmt_duration(s: float | None) -> str:
    if s is None or math.isnan(s):
        return "-"
    if s < 3600:
        return f"{s / 60:.0f} min"
    if s < 86400 * 2:
        return f"{s / 3600:.1f} h"
    return f"{s / 86400:.1f} d"


def _fmt_rate(x: float | None) -> str:
    return "-" if x is None else units.count(x)


TABLE_COLUMNS = (
    "run",
    "trained",
    "exported",
    "published (verified)",
    "evaluated",
    "last step",
    "tokens/s",
    "MFU",
    "device-h spent / predicted so far",
    "predicted total",
    "ETA",
    "spikes",
    "NaN aborts",
)


def table_rows(status: SuiteStatus) -> list[list[str]]:
    """The status table as strings, one row per run (TABLE_COLUMNS)."""
    rows = []
    for r in status.runs:
        ratio = r.over_prediction
        spent = _fmt_hours(r.device_hours) if r.segments_measured else "-"
        so_far = _fmt_hours(r.predicted_to_here) if r.predicted_to_here is not None else "-"
        versus = f"{spent} / {so_far}" + (f" ({ratio:.0%})" if ratio is not None else "")
        rows.append(
            [
                r.run,
                f"{r.trained}/{r.planned}",
                f"{r.exported}/{r.planned}",
                f"{r.published} ({r.verified})/{r.planned}",
                f"{r.evaluated}/{r.eval_planned}",
                "-" if r.last_step is None else str(r.last_step),
                _fmt_rate(r.tokens_per_s),
                "-" if r.mfu is None else f"{r.mfu:.1%}",
                versus,
                _fmt_hours(r.predicted_device_hours),
                "done" if r.last_step == r.final_step else _fmt_duration(r.eta_s),
                str(len(r.spikes)),
                str(len(r.nan_aborts)),
            ]
        )
    return rows


def render_text(status: SuiteStatus) -> str:
    """The table, then the problems and the SLURM jobs, as plain text."""
    rows = [list(TABLE_COLUMNS), *table_rows(status)]
    widths = [max(len(row[i]) for row in rows) for i in range(len(TABLE_COLUMNS))]
    lines = [f"pythia-suite status at {status.generated_at} ({status.results})"]
    for i, row in enumerate(rows):
        lines.append(
            "  ".join(
                c.ljust(w) if j == 0 else c.rjust(w)
                for j, (c, w) in enumerate(zip(row, widths, strict=True))
            )
        )
        if i == 0:
            lines.append("  ".join("-" * w for w in widths))
    lines.append("")
    if status.plan_recorded:
        lines.append(
            f"predicted: {status.plan_recorded} (recorded {status.plan_recorded_at}); "
            "device-hours = allocated devices x segment wall time (GPU-hours on GPUs)"
        )
    else:
        lines.append(
            "predicted: none recorded (results/plan.json is written when the workflow starts)"
        )
    lines.append(
        "Snakemake: "
        + ("a run holds the lock" if status.snakemake_running else "no run holds the lock")
    )
    if status.problems:
        lines.append("")
        lines.append(f"{len(status.problems)} failed or incomplete jobs:")
        for p in status.problems:
            job = (
                f" SLURM job {p.job_id}" + (f" {p.slurm_state}" if p.slurm_state else "")
                if p.job_id
                else ""
            )
            lines.append(f"  {p.kind:<10} {p.rule} {p.target}{job}")
            if p.log:
                lines.append(f"             log: {p.log}")
            if p.slurm_log:
                lines.append(f"             SLURM log: {p.slurm_log}")
            if p.error:
                lines.append(f"             last error: {p.error}")
    else:
        lines.append("no failed or incomplete jobs")
    lines.append("")
    if not status.slurm.reachable:
        lines.append(status.slurm.reason)
    elif status.slurm.jobs:
        lines.append(f"SLURM: {len(status.slurm.jobs)} running or pending jobs of the suite:")
        for j in status.slurm.jobs:
            lines.append(f"  {j['job_id']:>10} {j['state']:<10} {j['comment']}")
    else:
        lines.append("SLURM: no running or pending jobs of the suite")
    spikes = [s for r in status.runs for s in r.spikes]
    if spikes:
        lines.append("")
        lines.append("loss spikes:")
        for s in spikes[:20]:
            lines.append(
                f"  {s['run']} step {s.get('step')}: loss {s.get('loss'):.4g} "
                f"(running mean {s.get('running_mean'):.4g})"
            )
        if len(spikes) > 20:
            lines.append(f"  ... and {len(spikes) - 20} more (--json)")
    for r in status.runs:
        for nan in r.nan_aborts:
            lines.append(f"NaN abort: {nan}")
    return "\n".join(lines) + "\n"
