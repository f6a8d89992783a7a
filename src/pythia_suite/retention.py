"""Storage retention: prune full resume states once their weights are safe elsewhere.

A training checkpoint (``runs/{run}/checkpoints/step{N}/``) holds the fp32 weights, the
``trainer_state.json`` and ``hf_config.json``, and the ZeRO optimizer shards
(``optimizer/``, ~8 bytes per parameter of the ~16 a full resume state takes). Only the
optimizer part is needed to *resume* training; export, report and the model card read the
weights and the trainer state. So once a checkpoint is

(a) exported: its export's provenance record names this checkpoint, with the content hash the
    checkpoint's own record holds;
(b) published and verified: the step's receipt says ``verified`` and its provenance record names
    that export, with the export record's hash; and
(c) not among the ``keep`` newest checkpoints of the run (the newest is always kept: the next
    segment resumes from it), and not step 0 (its optimizer shards are empty),

its ``optimizer/`` directory is removed and ``pruned.json`` is written beside the weights:
which files went, with their size and sha256. Under the GPT-NeoX backend the resume state is
GPT-NeoX's own ``global_stepN`` under ``paths.state`` (~16 bytes per parameter), which the
checkpoint's ``trainer_state.json`` names (``neox_checkpoint``): the same policy removes it,
recorded under ``removed_outside`` (it is no part of the checkpoint's content hash).
Provenance keeps verifying: the content hash of a directory
(:func:`pythia_suite.provenance.content_hash`) takes a removed file's recorded sha256 from
``pruned.json``, so the checkpoint's hash, and every record downstream, stays what it was.

Snakemake is not disturbed: the mtime of a directory output is that of its
``.snakemake_timestamp`` (Snakemake 9), which pruning never touches; the directory's own mtime
is restored as well, for checkpoints made outside Snakemake.
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from pythia_suite.atomic import write_json_atomic
from pythia_suite.hashing import sha256_file
from pythia_suite.jsonfile import JSONFileError, read_json

__all__ = [
    "PRUNED_NAME",
    "PRUNED_FORMAT",
    "RESUME_PARTS",
    "RetentionError",
    "SAFE",
    "Decision",
    "plan_retention",
    "prune_checkpoint",
    "apply_retention",
    "is_pruned",
    "resume_bytes",
    "external_resume_state",
]

PRUNED_NAME = "pruned.json"
PRUNED_FORMAT = "pythia-suite/pruned/1"
# What only resuming needs (the ZeRO shards); everything else in a checkpoint stays.
RESUME_PARTS = ("optimizer",)
_RECORD = "provenance.json"
SAFE = "exported, published and verified"  # the reason a checkpoint may be pruned


class RetentionError(RuntimeError):
    """A checkpoint cannot be pruned as asked; the message names the directory and why."""


@dataclass(frozen=True)
class Decision:
    """What the policy does with one checkpoint: ``action`` is ``prune``, ``keep`` or
    ``pruned`` (already done); ``reason`` says why in words a log line can carry."""

    step: int
    checkpoint: Path
    action: str
    reason: str


def _read_json(path: Path) -> dict | None:
    """The JSON object at ``path``, or None when it is absent or unreadable (not yet written)."""
    try:
        return read_json(path, missing=None)
    except JSONFileError:
        return None


def _record_of(artifact: Path) -> dict | None:
    """The provenance record of ``artifact`` (see ``pythia_suite.provenance.record_path``)."""
    if artifact.is_dir():
        return _read_json(artifact / _RECORD)
    return _read_json(artifact.with_name(artifact.name + ".provenance.json"))


def _used_as_input(record: dict | None, artifact: Path, sha256: str) -> bool:
    """True when ``record`` lists ``artifact`` as an input with content hash ``sha256``."""
    if record is None:
        return False
    target = os.path.realpath(artifact)
    return any(
        os.path.realpath(entry["path"]) == target and entry["sha256"] == sha256
        for entry in record.get("inputs", [])
    )


def is_pruned(checkpoint: str | os.PathLike) -> bool:
    """True when the checkpoint's resume state was pruned (it carries ``pruned.json``)."""
    return (Path(checkpoint) / PRUNED_NAME).is_file()


def external_resume_state(checkpoint: str | os.PathLike) -> Path | None:
    """The resume state a checkpoint keeps outside itself: GPT-NeoX's ``global_stepN`` that its
    ``trainer_state.json`` names (``neox_checkpoint``, neox backend), or None."""
    state = _read_json(Path(checkpoint) / "trainer_state.json") or {}
    outside = state.get("neox_checkpoint")
    return Path(outside) if outside else None


def _has_resume_state(checkpoint: Path) -> bool:
    outside = external_resume_state(checkpoint)
    inside = any((checkpoint / part).exists() for part in RESUME_PARTS)
    return inside or (outside is not None and outside.exists())


def _why_not_safe(checkpoint: Path, export: Path, receipt: Path) -> str | None:
    """Why the checkpoint's weights are not yet safe elsewhere, or None when they are."""
    ckpt_record = _record_of(checkpoint)
    if ckpt_record is None:
        return f"{checkpoint} has no provenance record"
    export_record = _record_of(export)
    if not _used_as_input(export_record, checkpoint, ckpt_record["sha256"]):
        return f"not exported from this checkpoint ({export} has no matching record)"
    receipt_data = _read_json(receipt)
    if not receipt_data or receipt_data.get("verified") is not True:
        return f"no verified receipt ({receipt})"
    if not _used_as_input(_record_of(receipt), export, export_record["sha256"]):
        return f"{receipt} does not record this export"
    return None


def plan_retention(
    checkpoints: Mapping[int, str | os.PathLike],
    exports: Mapping[int, str | os.PathLike],
    receipts: Mapping[int, str | os.PathLike],
    keep: int,
) -> list[Decision]:
    """Decide, per existing checkpoint of one run, whether its resume state may go.

    ``checkpoints``, ``exports`` and ``receipts`` map steps to paths (the run's schedule; absent
    paths are fine). ``keep`` is ``training.keep_resume_states``; at least the newest existing
    checkpoint always keeps its resume state, whatever ``keep`` says, so a next segment can
    start. Reads only JSON (records, receipts): nothing large is hashed.

    Raises ``ValueError`` when ``keep`` is negative.
    """
    if keep < 0:
        raise ValueError(f"keep_resume_states must be >= 0, got {keep}")
    existing = sorted(step for step, path in checkpoints.items() if Path(path).is_dir())
    newest = set(existing[-max(keep, 1) :]) if existing else set()
    decisions = []
    for step in existing:
        checkpoint = Path(checkpoints[step])
        if is_pruned(checkpoint) and not _has_resume_state(checkpoint):
            decisions.append(Decision(step, checkpoint, "pruned", "resume state already pruned"))
            continue
        if not _has_resume_state(checkpoint):
            decisions.append(Decision(step, checkpoint, "keep", "no resume state to prune"))
            continue
        if step == 0:
            # Its shards are empty (no update yet): nothing to gain, and a retrain from
            # scratch (a rerun forced by a changed rule) must always be able to start.
            decisions.append(Decision(step, checkpoint, "keep", "step0: empty optimizer state"))
            continue
        if step in newest:
            why = f"among the newest {max(keep, 1)} (training.keep_resume_states: {keep})"
            decisions.append(Decision(step, checkpoint, "keep", why))
            continue
        if step not in exports or step not in receipts:
            decisions.append(Decision(step, checkpoint, "keep", "not exported or published"))
            continue
        why_not = _why_not_safe(checkpoint, Path(exports[step]), Path(receipts[step]))
        if why_not:
            decisions.append(Decision(step, checkpoint, "keep", why_not))
        else:
            decisions.append(Decision(step, checkpoint, "prune", SAFE))
    return decisions


def prune_checkpoint(checkpoint: str | os.PathLike, reason: str = "") -> dict:
    """Remove a checkpoint's resume state (``optimizer/``) and write ``pruned.json``.

    ``pruned.json`` records every removed file (relative path, size, sha256) and is written
    before anything is deleted, so an interrupted prune leaves a directory that still verifies
    and that a second call finishes. The directory's mtime is restored afterwards. Idempotent:
    a pruned checkpoint returns its existing record. Returns the ``pruned.json`` content.

    Raises ``RetentionError`` when ``checkpoint`` is not a checkpoint directory (no
    ``model.safetensors`` or ``trainer_state.json``).
    """
    checkpoint = Path(checkpoint)
    for needed in ("model.safetensors", "trainer_state.json"):
        if not (checkpoint / needed).is_file():
            raise RetentionError(f"{checkpoint}: not a complete checkpoint ({needed} missing)")
    stat = checkpoint.stat()
    marker = checkpoint / PRUNED_NAME
    record = _read_json(marker) or {"format": PRUNED_FORMAT, "removed": {}}
    for part in RESUME_PARTS:
        for path in sorted(p for p in (checkpoint / part).rglob("*") if p.is_file()):
            rel = path.relative_to(checkpoint).as_posix()
            record["removed"][rel] = {"size": path.stat().st_size, "sha256": sha256_file(path)}
    outside = external_resume_state(checkpoint)
    if outside is not None and outside.is_dir():
        removed_outside = record.setdefault("removed_outside", {})
        for path in sorted(p for p in outside.rglob("*") if p.is_file()):
            removed_outside[str(path)] = {"size": path.stat().st_size, "sha256": sha256_file(path)}
    record.setdefault("pruned_at", time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
    record.setdefault("reason", reason)
    if (record["removed"] or record.get("removed_outside")) and _has_resume_state(checkpoint):
        _write_record(marker, record)
        for part in RESUME_PARTS:
            shutil.rmtree(checkpoint / part, ignore_errors=True)
        if outside is not None:
            shutil.rmtree(outside, ignore_errors=True)
    # Downstream jobs must not look out of date: give the directory back its mtime.
    os.utime(checkpoint, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    return record


def apply_retention(
    checkpoints: Mapping[int, str | os.PathLike],
    exports: Mapping[int, str | os.PathLike],
    receipts: Mapping[int, str | os.PathLike],
    keep: int,
) -> list[Decision]:
    """:func:`plan_retention`, then :func:`prune_checkpoint` on each ``prune`` decision.

    Returns the decisions (pruned ones now read ``pruned``). Safe to run from several jobs at
    once: pruning is idempotent and every write is atomic.
    """
    done = []
    for decision in plan_retention(checkpoints, exports, receipts, keep):
        if decision.action == "prune":
            prune_checkpoint(decision.checkpoint, decision.reason)
            decision = Decision(decision.step, decision.checkpoint, "pruned", decision.reason)
        done.append(decision)
    return done


def resume_bytes(checkpoint: str | os.PathLike) -> int:
    """Bytes the checkpoint's resume state (``optimizer/``, or GPT-NeoX's ``global_stepN``)
    occupies now (0 once pruned)."""
    checkpoint = Path(checkpoint)
    roots = [checkpoint / part for part in RESUME_PARTS]
    outside = external_resume_state(checkpoint)
    if outside is not None:
        roots.append(outside)
    return sum(p.stat().st_size for root in roots for p in root.rglob("*") if p.is_file())


def _write_record(path: Path, data: dict) -> None:
    write_json_atomic(path, data, indent=1, fsync=True)


def run_paths_by_step(config: dict, run) -> tuple[dict, dict, dict]:
    """A run's checkpoint, export and receipt paths by step (the policy's arguments)."""
    from pythia_suite import config as cfg
    from pythia_suite import paths

    results = config["paths"]["results"]
    steps = cfg.checkpoint_steps(config)
    return (
        {s: Path(paths.checkpoint_dir(results, run.name, s)) for s in steps},
        {s: Path(paths.export_dir(results, run.name, s)) for s in steps},
        {s: Path(paths.receipt(results, run.name, s)) for s in steps},
    )


def prune_run(config: dict, run, *, dry_run: bool) -> list[Decision]:
    """The policy's decisions for a run's checkpoints (``training.keep_resume_states``),
    applied unless ``dry_run``."""
    keep = config["training"]["keep_resume_states"]
    by_step = run_paths_by_step(config, run)
    if dry_run:
        return plan_retention(*by_step, keep=keep)
    return apply_retention(*by_step, keep=keep)


def prune_after_publishing(config: dict, run, log) -> None:
    """Prune the resume states that ``training.keep_resume_states`` lets go (after a verified
    receipt), saying each through ``log``."""
    for decision in prune_run(config, run, dry_run=False):
        if decision.action == "pruned" and decision.reason == SAFE:
            log(f"{decision.checkpoint}: resume state pruned ({decision.reason})")
