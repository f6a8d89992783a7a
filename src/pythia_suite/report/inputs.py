"""The report's inputs: the runs table, evaluation points and training logs, read and checked.

- ``runs``: a table of dicts, one per run: ``name``, ``size`` (``"70m"``), ``variant``
  (``"standard"`` | ``"deduped"``), ``params`` (int), optionally ``data_seed``.
- Result files in Pythia's layout (``.../<run>_step<N>.json``) become :class:`EvalPoint` records.
- A run's ``trainer_state.json`` files become one :class:`TrainingLog`.
"""

from __future__ import annotations

import os
import re
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pythia_suite.jsonfile import read_json

_STEP_FILE = re.compile(r"_step(\d+)\.json$")
_REQUIRED_RUN_KEYS = ("name", "size", "variant", "params")


@dataclass(frozen=True)
class EvalPoint:
    """One metric of one task at one checkpoint of one run."""

    run: str
    step: int
    shots: int
    task: str
    metric: str
    value: float
    stderr: float | None


def runs_by_name(runs: Sequence[Mapping[str, Any]]) -> dict[str, Mapping[str, Any]]:
    """``runs`` keyed by name; every run must have name, size, variant and params."""
    table = {}
    for i, run in enumerate(runs):
        missing = [k for k in _REQUIRED_RUN_KEYS if k not in run]
        if missing:
            raise ValueError(f"runs[{i}] ({run.get('name', '?')}): missing key(s) {missing}")
        if run["name"] in table:
            raise ValueError(f"runs[{i}]: duplicate run name {run['name']!r}")
        table[run["name"]] = run
    return table


def load_eval_points(eval_jsons: Mapping[str, Iterable[str | os.PathLike]]) -> list[EvalPoint]:
    """Every non-stderr metric of every Pythia-layout result file, with its stderr.

    The step comes from the file name (``..._step<N>.json``), the number of shots from the
    file's ``config.num_fewshot``. Files ending in ``.raw.json`` are skipped.

    Raises:
        ValueError: a file name has no ``_step<N>``, or a file lacks ``results`` or
            ``config.num_fewshot`` (naming the file).
    """
    points = []
    for run, paths in eval_jsons.items():
        for path in map(Path, paths):
            if path.name.endswith(".raw.json"):
                continue
            match = _STEP_FILE.search(path.name)
            if not match:
                raise ValueError(f"{path}: file name does not end in _step<N>.json")
            doc = read_json(path)
            try:
                results, shots = doc["results"], int(doc["config"]["num_fewshot"])
            except (KeyError, TypeError):
                raise ValueError(f"{path}: needs 'results' and 'config.num_fewshot'") from None
            for task, metrics in results.items():
                for metric, value in metrics.items():
                    if metric.endswith("_stderr") or not isinstance(value, int | float):
                        continue
                    stderr = metrics.get(f"{metric}_stderr")
                    stderr = float(stderr) if isinstance(stderr, int | float) else None
                    points.append(
                        EvalPoint(run, int(match[1]), shots, task, metric, float(value), stderr)
                    )
    return points


@dataclass
class TrainingLog:
    """What a run's trainer_state.json files say: losses, data fingerprints, spikes, by step."""

    run: str
    losses: dict[int, float] = field(default_factory=dict)
    fingerprints: dict[int, str] = field(default_factory=dict)
    spikes: list[dict[str, Any]] = field(default_factory=list)


def _steps_and_values(entries: Any, value_key: str, path: Path, key: str) -> dict[int, Any]:
    """``{step: value}`` from ``{step: value}``, ``[{step, value_key}]`` or ``[[step, value]]``."""
    if isinstance(entries, Mapping):
        return {int(step): value for step, value in entries.items()}
    out = {}
    for i, entry in enumerate(entries or []):
        if isinstance(entry, Mapping) and "step" in entry and value_key in entry:
            out[int(entry["step"])] = entry[value_key]
        elif isinstance(entry, list | tuple) and len(entry) == 2:
            out[int(entry[0])] = entry[1]
        else:
            raise ValueError(f"{path}: {key}[{i}] = {entry!r}: expected step and {value_key}")
    return out


def _fingerprint_entries(state: Mapping[str, Any]) -> tuple[str, Any]:
    """Per-step fingerprints of a trainer state without ``history``, under the key it used."""
    for key in ("step_fingerprints", "fingerprints"):
        if key in state:
            return key, state[key]
    return "fingerprints", None


def _history_entries(state: Mapping[str, Any], path: Path) -> tuple[dict, dict]:
    """Losses and fingerprints by step from the trainer's ``history`` list.

    ``pythia_suite.train.loop`` writes one entry per step: ``{"iteration", "step", "loss",
    "lr", "grad_norm", "skipped", "tokens_per_s", "tokens_sha256"}`` (``step`` = iteration + 1,
    the checkpoint the update produces).
    """
    losses, fingerprints = {}, {}
    for i, entry in enumerate(state["history"]):
        if not isinstance(entry, Mapping) or "step" not in entry or "loss" not in entry:
            raise ValueError(f"{path}: history[{i}] = {entry!r}: expected 'step' and 'loss'")
        losses[int(entry["step"])] = float(entry["loss"])
        if entry.get("tokens_sha256"):
            fingerprints[int(entry["step"])] = str(entry["tokens_sha256"])
    return losses, fingerprints


def read_training_log(run: str, trainer_states: Iterable[str | os.PathLike]) -> TrainingLog:
    """Merge the trainer_state.json files of a run's segments into one :class:`TrainingLog`.

    Reads what ``pythia_suite.train.loop`` writes: ``history`` (per step ``step``, ``loss``,
    ``tokens_sha256``) and ``spikes`` (``{step, loss, running_mean}``). Without ``history``,
    losses come from ``losses`` (``{step, loss}`` dicts or ``[step, loss]`` pairs) and
    fingerprints from ``step_fingerprints``/``fingerprints`` (``{step: hex}``); a bare
    ``[[step, loss], ...]`` JSON list is accepted too.

    Raises:
        ValueError: an entry is malformed, or two files disagree on a step's fingerprint
            (naming the run, the file and the step).
    """
    log = TrainingLog(run)
    for path in sorted(map(Path, trainer_states)):
        state = read_json(path)
        if isinstance(state, list):
            state = {"losses": state}
        if "history" in state:
            losses, fingerprints = _history_entries(state, path)
        else:
            losses = {
                step: float(loss)
                for step, loss in _steps_and_values(
                    state.get("losses"), "loss", path, "losses"
                ).items()
            }
            key, entries = _fingerprint_entries(state)
            fingerprints = _steps_and_values(entries, "fingerprint", path, key)
        log.losses.update(losses)
        for step, fp in fingerprints.items():
            if log.fingerprints.get(step, fp) != fp:
                raise ValueError(
                    f"{run}: {path} gives step {step} fingerprint {fp}, an earlier segment "
                    f"{log.fingerprints[step]}"
                )
            log.fingerprints[step] = str(fp)
        for spike in state.get("spikes", state.get("loss_spikes", [])) or []:
            entry = dict(spike) if isinstance(spike, Mapping) else {"step": int(spike)}
            if entry not in log.spikes:
                log.spikes.append(entry)
    log.spikes.sort(key=lambda s: s.get("step", 0))
    return log


# ---------------------------------------------------------------------------------------------
# Data-order fingerprints
# ---------------------------------------------------------------------------------------------


def merge_identical_metrics(series: Mapping) -> dict:
    """(shots, task, metric) -> run -> points, sorted, with the metrics of a task whose curves
    are identical in every run merged into one key ('acc = acc_norm': one chart or column,
    not two copies)."""
    merged: dict = {}
    for (shots, task, metric), by_run in sorted(series.items()):
        curves = {run: sorted(points) for run, points in by_run.items()}
        twin = next(
            (
                key
                for key, other in merged.items()
                if key[:2] == (shots, task)
                and {run: sorted(points) for run, points in other.items()} == curves
            ),
            None,
        )
        if twin is None:
            merged[(shots, task, metric)] = by_run
        else:
            merged[(shots, task, f"{twin[2]} = {metric}")] = merged.pop(twin)
    return dict(sorted(merged.items()))


def metric_labels(points: Sequence[EvalPoint]) -> dict[tuple[int, str, str], str | None]:
    """(shots, task, metric) -> the label it is shown under ('acc = acc_norm' when the metrics'
    values and standard errors are identical in every run and step), or None for a metric shown
    under another's label."""
    series: dict = defaultdict(lambda: defaultdict(list))
    for p in points:
        series[(p.shots, p.task, p.metric)][p.run].append((p.step, p.value, p.stderr))
    labels: dict[tuple[int, str, str], str | None] = {}
    for shots, task, label in merge_identical_metrics(series):
        first, *others = label.split(" = ")
        labels[(shots, task, first)] = label
        labels.update({(shots, task, other): None for other in others})
    return labels


def run_order(run: Mapping[str, Any]) -> tuple:
    """Runs by size, then standard before deduped before other variants, then name."""
    variant_rank = {"standard": 0, "deduped": 1}.get(run["variant"], 2)
    return (run["params"], variant_rank, run["variant"], run["name"])
