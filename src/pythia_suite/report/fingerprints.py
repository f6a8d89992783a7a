"""The data-order check: runs of one data group (variant, data seed) must have consumed
identical batches at every step they share."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Hashable, Mapping
from dataclasses import dataclass
from typing import Any


class FingerprintMismatchError(RuntimeError):
    """Runs that must have consumed identical data, step by step, did not."""


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


def _group_name(key: Hashable) -> str:
    if isinstance(key, tuple):
        return " / ".join(f"{k}" for k in key)
    return str(key)
