"""Evaluation with lm-evaluation-harness, written in Pythia's result layout.

The package, by stage:

- :mod:`~pythia_suite.evaluate.tasks` (with :mod:`~pythia_suite.evaluate.next_word`):
  :func:`build_local_tasks` turns held-out Pile-format documents into lm-eval tasks for the
  miniature suite: ``mini_lambada`` (LAMBADA-style last-word prediction, like
  ``lambada_openai``), ``mini_heldout`` (rolling-loglikelihood perplexity, like
  ``wikitext``/``pile``) and ``mini_next_word`` (which of 4 words of the same length, token
  count and near-equal frequency comes next, scored by loglikelihood like ``piqa``/``sciq``;
  chance 0.25): the one on which tiny models show learning.
- :mod:`~pythia_suite.evaluate.run`: :func:`evaluate_checkpoints` evaluates several
  checkpoints of one run in ONE process (importing torch, transformers and lm-eval costs
  seconds; indexing lm-eval's built-in tasks costs ~10 s more) and writes
  ``<out_dir>/<run>/{zero-shot,five-shot}/<run>_step<N>.json`` shaped like Pythia's published
  files, with lm-eval's raw output beside it (``<run>_step<N>.raw.json``).
- :mod:`~pythia_suite.evaluate.collect`: a run's batches gathered into Pythia's layout.
- :mod:`~pythia_suite.evaluate.compare`: :func:`compare_with_reference` compares a result file
  with a reference one (ours, lm-eval 0.4 raw output or Pythia's published files) metric by
  metric.
- :mod:`~pythia_suite.evaluate.names`: lm-eval 0.4 <-> Pythia (0.3) task and metric names.
- :mod:`~pythia_suite.evaluate.stage`: the CLI's entry points, reading config.evaluation.

The names below are re-exported so that ``from pythia_suite import evaluate`` reaches them.
"""

from __future__ import annotations

from pythia_suite.evaluate.compare import (
    Comparison,
    MetricDiff,
    compare_with_reference,
    load_results,
)
from pythia_suite.evaluate.names import (
    lm_eval_metric_key,
    lm_eval_task_name,
    pythia_metric_name,
    pythia_task_name,
    to_lm_eval_results,
    to_pythia_results,
)
from pythia_suite.evaluate.next_word import build_next_word_items
from pythia_suite.evaluate.run import (
    evaluate_checkpoints,
    prefetch_datasets,
    pythia_result_path,
    result_file_step,
    shot_dir_name,
)
from pythia_suite.evaluate.tasks import (
    LOCAL_TASKS,
    NEXT_WORD_TASK,
    build_local_tasks,
    chance_levels,
    heldout_texts,
    load_local_tasks,
)

__all__ = [
    "LOCAL_TASKS",
    "NEXT_WORD_TASK",
    "Comparison",
    "MetricDiff",
    "build_local_tasks",
    "build_next_word_items",
    "chance_levels",
    "compare_with_reference",
    "evaluate_checkpoints",
    "heldout_texts",
    "load_local_tasks",
    "load_results",
    "lm_eval_metric_key",
    "lm_eval_task_name",
    "prefetch_datasets",
    "pythia_metric_name",
    "pythia_result_path",
    "result_file_step",
    "pythia_task_name",
    "shot_dir_name",
    "to_lm_eval_results",
    "to_pythia_results",
]
