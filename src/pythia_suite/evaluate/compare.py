"""Comparison of a result file with a reference one (ours, lm-eval 0.4 raw output or Pythia's
published files), metric by metric."""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from pythia_suite.evaluate.names import (
    _STDERR,
    _is_number,
    _looks_like_lm_eval_04,
    to_pythia_results,
)
from pythia_suite.jsonfile import read_json


def load_results(source: str | os.PathLike | Mapping[str, Any]) -> dict[str, dict[str, float]]:
    """The ``results`` block of a result file in Pythia's names.

    Accepts a path or an already-parsed dict, in Pythia's layout (ours or the published files)
    or lm-eval 0.4's raw output (mapped with :func:`to_pythia_results`).

    Raises:
        ValueError: the JSON has no ``results`` object (naming the file).
    """
    if isinstance(source, Mapping):
        doc, name = source, "<dict>"
    else:
        name = str(source)
        doc = read_json(source)  # JSONFileError (a ValueError) names the file, line and column
    results = doc.get("results") if isinstance(doc, Mapping) else None
    if not isinstance(results, Mapping):
        raise ValueError(f"{name}: no 'results' object")
    if _looks_like_lm_eval_04(results):
        return to_pythia_results(results)
    return {task: {k: v for k, v in m.items() if _is_number(v)} for task, m in results.items()}


@dataclass(frozen=True)
class MetricDiff:
    """One metric of one task in both files."""

    task: str
    metric: str
    ours: float
    reference: float
    tolerance: float

    @property
    def diff(self) -> float:
        return self.ours - self.reference

    @property
    def ok(self) -> bool:
        return math.isclose(self.ours, self.reference, rel_tol=0.0, abs_tol=self.tolerance) or (
            math.isnan(self.ours) and math.isnan(self.reference)
        )


@dataclass
class Comparison:
    """Result of :func:`compare_with_reference`: per-metric differences and a verdict."""

    diffs: list[MetricDiff] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)  # "task/metric" in reference, not in ours
    require_all: bool = False

    @property
    def failures(self) -> list[MetricDiff]:
        return [d for d in self.diffs if not d.ok]

    @property
    def passed(self) -> bool:
        return not self.failures and not (self.require_all and self.missing)

    def summary(self) -> str:
        """One line per failure (task, metric, values, tolerance), then a verdict line."""
        lines = [
            f"FAIL {d.task}/{d.metric}: ours {d.ours:.6g} vs reference {d.reference:.6g} "
            f"(diff {d.diff:+.3g}, tolerance {d.tolerance:g})"
            for d in self.failures
        ]
        if self.require_all:
            lines += [f"MISSING {m}" for m in self.missing]
        verdict = "PASS" if self.passed else "FAIL"
        n_ok = len(self.diffs) - len(self.failures)
        missing = f", {len(self.missing)} reference metrics not in ours" if self.missing else ""
        lines.append(f"{verdict}: {n_ok}/{len(self.diffs)} metrics within tolerance{missing}")
        return "\n".join(lines)

    def raise_if_failed(self) -> None:
        """Raise ``AssertionError`` with :meth:`summary` unless the comparison passed."""
        if not self.passed:
            raise AssertionError(self.summary())


def _tolerance_for(tolerance: float | Mapping[str, float], task: str, metric: str) -> float:
    """``tolerance`` as a number, or a mapping ``"task/metric"`` | ``metric`` | ``"*"`` -> tol."""
    if not isinstance(tolerance, Mapping):
        return float(tolerance)
    for key in (f"{task}/{metric}", metric, "*"):
        if key in tolerance:
            return float(tolerance[key])
    raise KeyError(f"no tolerance for {task}/{metric} (give it, its metric or '*')")


def compare_with_reference(
    ours_json: str | os.PathLike | Mapping[str, Any],
    reference_json: str | os.PathLike | Mapping[str, Any],
    tolerance: float | Mapping[str, float],
    *,
    include_stderr: bool = False,
    require_all: bool = False,
) -> Comparison:
    """Compare our results with a reference, task by task and metric by metric.

    Both sides may be Pythia-layout files or lm-eval 0.4 raw outputs (names are mapped). Every
    metric present in both is compared: it passes when ``|ours - reference| <= tolerance``.
    ``tolerance`` is absolute: one number, or a mapping from ``"task/metric"``, ``metric`` or
    ``"*"`` to a number (perplexities need their own). Stderrs are skipped unless
    ``include_stderr`` (bootstrap stderrs vary with the resample count).

    Reference metrics missing from ours are listed in ``missing``; they fail the comparison
    only with ``require_all=True`` (a miniature run evaluates fewer tasks than Pythia).
    """
    ours, reference = load_results(ours_json), load_results(reference_json)
    comparison = Comparison(require_all=require_all)
    for task in sorted(reference):
        for metric in sorted(reference[task]):
            if metric.endswith(_STDERR) and not include_stderr:
                continue
            if metric not in ours.get(task, {}):
                comparison.missing.append(f"{task}/{metric}")
                continue
            comparison.diffs.append(
                MetricDiff(
                    task,
                    metric,
                    float(ours[task][metric]),
                    float(reference[task][metric]),
                    _tolerance_for(tolerance, task, metric),
                )
            )
    return comparison
