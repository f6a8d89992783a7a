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

The package, by stage:

- :mod:`~pythia_suite.report.inputs`: the runs table, evaluation points, training logs, and the
  labels of metrics identical in every run;
- :mod:`~pythia_suite.report.fingerprints`: the data-order check;
- :mod:`~pythia_suite.report.plots`: the figures;
- :mod:`~pythia_suite.report.tables`: the final-results and headline tables;
- :mod:`~pythia_suite.report.build`: the whole report, and the suite's report from the config.

The names below are re-exported so that ``from pythia_suite import report`` reaches them.
"""

from __future__ import annotations

from pythia_suite.report.build import build_report, run_table, write_suite_report
from pythia_suite.report.fingerprints import (
    FingerprintMismatchError,
    FingerprintSummary,
    check_fingerprints,
)
from pythia_suite.report.inputs import (
    EvalPoint,
    TrainingLog,
    load_eval_points,
    merge_identical_metrics,
    metric_labels,
    read_training_log,
)
from pythia_suite.report.plots import plot_data_composition, plot_eval_curves, plot_loss_curves
from pythia_suite.report.tables import (
    final_results,
    first_step_above_chance,
    headline_rows,
    write_final_results,
)

__all__ = [
    "EvalPoint",
    "FingerprintMismatchError",
    "FingerprintSummary",
    "TrainingLog",
    "build_report",
    "check_fingerprints",
    "final_results",
    "first_step_above_chance",
    "headline_rows",
    "load_eval_points",
    "merge_identical_metrics",
    "metric_labels",
    "plot_data_composition",
    "plot_eval_curves",
    "plot_loss_curves",
    "read_training_log",
    "run_table",
    "write_final_results",
    "write_suite_report",
]
