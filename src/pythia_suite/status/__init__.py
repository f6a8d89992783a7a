"""Where a running suite stands: `pythia-suite status`, from finished artifacts only.

What is read, and nothing else (so it is safe while the workflow runs and takes no lock):
- the results tree's directory listings: checkpoints, exports, receipts, evaluation batches;
- each checkpoint's segment summary (`paths.segment_summary`, never trainer_state.json);
- each publish receipt's `verified` flag;
- `results/plan.json`, the prediction recorded when the suite started (`pythia_suite.costs`);
- Snakemake's incomplete markers (`.snakemake/incomplete/`, see `snakemake_incomplete`);
- the tail of the per-job log of every job whose output is missing, and of the SLURM
  plugin's log of such a job (`.snakemake/slurm_logs/`);
- the `Error in rule` blocks of the newest Snakemake log (`.snakemake/log/`), for failures of
  rules outside a run's table (data preparation, report);
- `squeue` (running and pending jobs) and `sacct` (the state of a marked job), when reachable.

A checkpoint, export or evaluation batch counts as finished when its directory exists, its
provenance record is there (written last) and no Snakemake incomplete marker names it.

The package, by part:

- :mod:`~pythia_suite.status.records`: the status's dataclasses (``SuiteStatus``, ``RunStatus``,
  ``Problem``, ``SlurmView``);
- :mod:`~pythia_suite.status.jobs`: what Snakemake and SLURM say about jobs;
- :mod:`~pythia_suite.status.collect`: :func:`collect_status`, from the results tree;
- :mod:`~pythia_suite.status.text`: the plain-text table and report (the HTML page is
  :mod:`pythia_suite.status_page`).

The names below are re-exported so that ``from pythia_suite import status`` reaches them.
"""

from __future__ import annotations

from pythia_suite.status.collect import collect_status
from pythia_suite.status.jobs import (
    last_error_line,
    slurm_view,
    snakemake_incomplete,
    snakemake_log_failures,
    snakemake_running,
)
from pythia_suite.status.records import Problem, RunStatus, SlurmView, SuiteStatus
from pythia_suite.status.text import TABLE_COLUMNS, render_text, table_rows

__all__ = [
    "TABLE_COLUMNS",
    "Problem",
    "RunStatus",
    "SlurmView",
    "SuiteStatus",
    "collect_status",
    "last_error_line",
    "render_text",
    "slurm_view",
    "snakemake_incomplete",
    "snakemake_log_failures",
    "snakemake_running",
    "table_rows",
]
