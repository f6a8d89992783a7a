"""Metric and task names: lm-eval 0.4 <-> Pythia (lm-eval 0.3).

lm-eval 0.4 names metrics ``"acc,none"``, ``"perplexity,none"``, ``"acc_stderr,none"``; the
harness Pythia used (0.3) wrote ``acc``, ``ppl``, ``acc_stderr``, and called MMLU subjects
``hendrycksTest-<subject>`` where 0.4 says ``mmlu_<subject>``. :func:`to_pythia_results` and
:func:`to_lm_eval_results` convert between the two, losslessly in both directions.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

# Metrics whose name changed between the harness Pythia used and lm-eval 0.4 (0.4 name -> Pythia).
_METRIC_RENAMES = {"perplexity": "ppl", "likelihood_diff": "likelihood_difference"}
_METRIC_RENAMES_BACK = {v: k for k, v in _METRIC_RENAMES.items()}
_STDERR = "_stderr"
# Keys lm-eval puts in a task's results that are not metrics.
_NON_METRIC_KEYS = {"alias", "name", "sample_len", " ", ""}
_MMLU_04, _MMLU_PYTHIA = "mmlu_", "hendrycksTest-"


def pythia_metric_name(lm_eval_key: str) -> str:
    """Pythia's name for an lm-eval 0.4 metric key: ``"perplexity_stderr,none"`` -> ``ppl_stderr``.

    Keys with a filter other than ``none`` keep their filter (``"exact_match,flexible"`` stays
    as is): Pythia's harness had no filters, so there is nothing to map them to.
    """
    metric, _, filter_name = lm_eval_key.partition(",")
    if filter_name and filter_name != "none":
        return lm_eval_key
    is_stderr = metric.endswith(_STDERR)
    base = metric[: -len(_STDERR)] if is_stderr else metric
    base = _METRIC_RENAMES.get(base, base)
    return base + _STDERR if is_stderr else base


def lm_eval_metric_key(pythia_name: str) -> str:
    """The lm-eval 0.4 key for a Pythia metric: ``ppl_stderr`` -> ``"perplexity_stderr,none"``."""
    if "," in pythia_name:
        return pythia_name
    is_stderr = pythia_name.endswith(_STDERR)
    base = pythia_name[: -len(_STDERR)] if is_stderr else pythia_name
    base = _METRIC_RENAMES_BACK.get(base, base)
    return (base + _STDERR if is_stderr else base) + ",none"


def pythia_task_name(lm_eval_task: str) -> str:
    """Pythia's name for an lm-eval 0.4 task: ``mmlu_anatomy`` -> ``hendrycksTest-anatomy``."""
    if lm_eval_task.startswith(_MMLU_04):
        return _MMLU_PYTHIA + lm_eval_task[len(_MMLU_04) :]
    return lm_eval_task


def lm_eval_task_name(pythia_task: str) -> str:
    """The lm-eval 0.4 name of a Pythia task: ``hendrycksTest-anatomy`` -> ``mmlu_anatomy``."""
    if pythia_task.startswith(_MMLU_PYTHIA):
        return _MMLU_04 + pythia_task[len(_MMLU_PYTHIA) :]
    return pythia_task


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def to_pythia_results(lm_eval_results: Mapping[str, Mapping[str, Any]]) -> dict[str, dict]:
    """Map lm-eval 0.4's ``results`` block to Pythia's: task and metric names, numbers only.

    Non-metric keys (``alias``, ``sample_len``, ...) and stderrs lm-eval could not compute
    (``"N/A"``) are dropped: Pythia's files hold numbers only.
    """
    out: dict[str, dict] = {}
    for task, metrics in lm_eval_results.items():
        mapped = {
            pythia_metric_name(key): value
            for key, value in metrics.items()
            if key not in _NON_METRIC_KEYS and _is_number(value)
        }
        out[pythia_task_name(task)] = mapped
    return out


def to_lm_eval_results(pythia_results: Mapping[str, Mapping[str, Any]]) -> dict[str, dict]:
    """Pythia's ``results`` block in lm-eval 0.4 names (inverse of :func:`to_pythia_results`)."""
    return {
        lm_eval_task_name(task): {lm_eval_metric_key(k): v for k, v in metrics.items()}
        for task, metrics in pythia_results.items()
    }


def _looks_like_lm_eval_04(results: Mapping[str, Mapping[str, Any]]) -> bool:
    return any("," in key for metrics in results.values() for key in metrics)
