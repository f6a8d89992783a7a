"""Training-state directories: checkpoints, in-segment snapshots, the state-dir lock, disk space.

A training-state directory (a checkpoint ``step{N}/`` or a snapshot in the state dir) holds:

- ``model.safetensors``: fp32 weights under Hugging Face GPTNeoX key names;
- ``optimizer/rank{r:05d}-of-{w:05d}.pt``: AdamW state of the parameters rank ``r`` owned, keyed
  by Hugging Face parameter name; under tensor parallelism or FSDP each entry is the block the
  rank held, with its ``offsets`` in the full tensor (one copy per block, not per replica). A run
  at any (data, tensor) layout reads the blocks it needs (``_assemble_state``);
- ``trainer_state.json``: step, schedule, scaler, RNG, losses, data fingerprints (see ``loop``);
- ``hf_config.json``: the ``GPTNeoXConfig`` dict the weights belong to.

It is written under ``.{name}.partial`` beside its final path and renamed when every rank has
written its part, so a directory under its final name is always complete.
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import json
import os
import pickle
import random
import shutil
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from safetensors.torch import load_file, save_file

from ..jsonfile import JSONFileError, read_json
from .distributed import DistributedEnv

__all__ = [
    "CheckpointError",
    "StateDirLockedError",
    "InsufficientDiskSpaceError",
    "TRAINER_STATE_FORMAT",
    "write_training_state",
    "read_trainer_state",
    "read_training_state",
    "read_model_state",
    "read_optimizer_state",
    "optimizer_shard_name",
    "state_dir_lock",
    "find_snapshot",
    "remove_snapshots",
    "estimate_state_bytes",
    "check_free_space",
    "capture_rng_state",
    "restore_rng_state",
]

TRAINER_STATE_FORMAT = "pythia-suite/trainer-state/1"
_MODEL_FILE = "model.safetensors"
_STATE_FILE = "trainer_state.json"
_CONFIG_FILE = "hf_config.json"
_OPT_DIR = "optimizer"
_SNAPSHOT_PREFIX = "snapshot-step"
# fp32 weights (4) + Adam exp_avg and exp_avg_sq (8) + slack for metadata and rounding (4).
BYTES_PER_PARAMETER = 16


class CheckpointError(RuntimeError):
    """A training-state directory is missing, incomplete or does not match the run."""


class StateDirLockedError(RuntimeError):
    """Another process (named in the message) holds the state dir."""


class InsufficientDiskSpaceError(RuntimeError):
    """Not enough free space for the checkpoint or the snapshots (path, needed, free)."""


# ----------------------------------------------------------------------------- small helpers


def optimizer_shard_name(rank: int, world_size: int) -> str:
    """File name of rank ``rank``'s optimizer shard."""
    return f"rank{rank:05d}-of-{world_size:05d}.pt"


def _barrier(env: DistributedEnv) -> None:
    if env.world_size > 1:
        dist.barrier()


def _fsync_file(path: Path) -> None:
    with open(path, "rb") as fh:
        os.fsync(fh.fileno())


def _write_json(path: Path, data: dict) -> None:
    with open(path, "w", encoding="utf-8") as fh:
        json.dump(data, fh, indent=1, sort_keys=True)
        fh.write("\n")
        fh.flush()
        os.fsync(fh.fileno())


def _partial_path(final_dir: Path) -> Path:
    return final_dir.parent / f".{final_dir.name}.partial"


# ----------------------------------------------------------------------------- RNG state


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def capture_rng_state() -> dict:
    """Python, NumPy, torch CPU and (if present) this device's CUDA RNG states, JSON-ready."""
    state = {
        "python": _b64(pickle.dumps(random.getstate())),
        "numpy": _b64(pickle.dumps(np.random.get_state())),
        "torch_cpu": _b64(torch.get_rng_state().numpy().tobytes()),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["torch_cuda"] = _b64(torch.cuda.get_rng_state().numpy().tobytes())
    return state


def restore_rng_state(state: dict) -> None:
    """Restore what ``capture_rng_state`` captured (the CUDA state only where CUDA is in use)."""
    random.setstate(pickle.loads(base64.b64decode(state["python"])))
    np.random.set_state(pickle.loads(base64.b64decode(state["numpy"])))
    cpu = np.frombuffer(base64.b64decode(state["torch_cpu"]), dtype=np.uint8).copy()
    torch.set_rng_state(torch.from_numpy(cpu))
    if "torch_cuda" in state and torch.cuda.is_available():
        cuda = np.frombuffer(base64.b64decode(state["torch_cuda"]), dtype=np.uint8).copy()
        torch.cuda.set_rng_state(torch.from_numpy(cuda))


# ----------------------------------------------------------------------------- write / read


def write_training_state(
    final_dir: Path,
    *,
    env: DistributedEnv,
    model_tensors: dict[str, torch.Tensor] | None,
    optimizer_shard: dict,
    trainer_state: dict,
    hf_config: dict,
    before_publish: Callable[[], None] | None = None,
    last_files: dict[str, Callable[[], dict]] | None = None,
) -> Path:
    """Write a training-state directory at ``final_dir`` (collective: every rank calls it).

    Rank 0 writes the weights (``model_tensors``, Hugging Face names), ``trainer_state.json`` and
    ``hf_config.json``; every rank writes its ``optimizer_shard``. Everything goes to
    ``.{name}.partial`` first (a stale one from a killed writer is removed) and is renamed to
    ``final_dir`` once complete. ``last_files`` (rank 0: JSON file name -> a function giving
    its content) are written after everything else, just before the rename, so that they can
    time the save too. ``before_publish`` runs on rank 0 just before the rename (tests kill the
    process there). Raises ``FileExistsError`` if ``final_dir`` already exists.
    """
    final_dir = Path(final_dir)
    partial = _partial_path(final_dir)
    if final_dir.exists():
        raise FileExistsError(f"{final_dir} already exists; refusing to overwrite a checkpoint")
    if env.is_main:
        shutil.rmtree(partial, ignore_errors=True)
        (partial / _OPT_DIR).mkdir(parents=True)
    _barrier(env)

    shard_path = partial / _OPT_DIR / optimizer_shard_name(env.rank, env.world_size)
    torch.save(optimizer_shard, shard_path)
    _fsync_file(shard_path)
    if env.is_main:
        if model_tensors is None:
            raise ValueError("rank 0 must pass model_tensors")
        save_file(model_tensors, str(partial / _MODEL_FILE), metadata={"format": "pt"})
        _fsync_file(partial / _MODEL_FILE)
        _write_json(partial / _CONFIG_FILE, hf_config)
        # trainer_state.json last: its presence marks the content complete.
        _write_json(partial / _STATE_FILE, trainer_state)
    _barrier(env)
    if env.is_main:
        for name, content in (last_files or {}).items():
            _write_json(partial / name, content())
        if before_publish is not None:
            before_publish()
        os.replace(partial, final_dir)
        # Make the rename durable before anyone relies on it.
        dir_fd = os.open(final_dir.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    _barrier(env)
    return final_dir


def read_trainer_state(state_dir: Path) -> dict:
    """``trainer_state.json`` of a training-state directory.

    Raises ``CheckpointError`` naming the file when it is missing, not JSON, or of another format.
    """
    path = Path(state_dir) / _STATE_FILE
    try:
        state = read_json(path, kind=dict)
    except FileNotFoundError:
        raise CheckpointError(f"{path} is missing: not a complete training checkpoint") from None
    except JSONFileError as err:
        raise CheckpointError(str(err)) from None
    if state.get("format") != TRAINER_STATE_FORMAT:
        raise CheckpointError(
            f"{path}: key 'format' is {state.get('format')!r}, expected {TRAINER_STATE_FORMAT!r}"
        )
    return state


def _check_hf_config(path: Path, hf_config: dict) -> None:
    try:
        stored = read_json(path, kind=dict)
    except FileNotFoundError:
        raise CheckpointError(f"{path} is missing") from None
    except JSONFileError as err:
        raise CheckpointError(str(err)) from None
    expected = json.loads(json.dumps(hf_config))  # same JSON types as the stored copy
    for key in sorted(stored.keys() | expected.keys()):
        if stored.get(key) != expected.get(key):
            raise CheckpointError(
                f"{path}: key {key!r} is {stored.get(key)!r} but this run's hf_config has "
                f"{expected.get(key)!r}"
            )


def read_model_state(state_dir: Path, *, hf_config: dict) -> tuple[dict, dict[str, torch.Tensor]]:
    """``(trainer_state, weights)`` of a training-state directory: all weights, CPU fp32.

    Raises ``CheckpointError`` naming the file when the config differs or a file is missing.
    """
    state_dir = Path(state_dir)
    trainer_state = read_trainer_state(state_dir)
    _check_hf_config(state_dir / _CONFIG_FILE, hf_config)
    model_path = state_dir / _MODEL_FILE
    if not model_path.is_file():
        raise CheckpointError(f"{model_path} is missing")
    return trainer_state, load_file(str(model_path))


def read_optimizer_state(
    state_dir: Path, trainer_state: dict, owned: dict[str, torch.Tensor]
) -> dict[str, dict]:
    """The AdamW state of the parameters this rank owns, from every saved shard.

    ``owned`` maps Hugging Face parameter names (those whose optimizer state this rank keeps) to
    their parameters (for the device). Empty for a step-0 checkpoint (no state yet). Raises
    ``CheckpointError`` when a shard is missing or the shards cover some owned parameters but
    not others.
    """
    state_dir = Path(state_dir)
    saved_world = trainer_state["world_size"]
    shard_paths = [
        state_dir / _OPT_DIR / optimizer_shard_name(r, saved_world) for r in range(saved_world)
    ]
    pieces: dict[str, list[dict]] = {}
    for shard_path in shard_paths:
        if not shard_path.is_file():
            raise CheckpointError(
                f"{shard_path} is missing (checkpoint saved by {saved_world} ranks)"
            )
        # mmap: each rank only touches the bytes of the parameters it owns.
        shard = torch.load(shard_path, map_location="cpu", weights_only=True, mmap=True)
        for name, param_state in shard["state"].items():
            if name in owned:
                pieces.setdefault(name, []).append(param_state)
    optimizer_state = {
        name: _assemble_state(name, owned[name], entries, state_dir / _OPT_DIR)
        for name, entries in pieces.items()
    }
    if optimizer_state and optimizer_state.keys() != owned.keys():
        missing = sorted(owned.keys() - optimizer_state.keys())
        raise CheckpointError(f"{state_dir / _OPT_DIR}: no optimizer state for {missing[:5]}")
    if not optimizer_state and trainer_state["scheduler"]["iteration"] > 0:
        raise CheckpointError(
            f"{state_dir / _OPT_DIR}: no optimizer state although "
            f"{trainer_state['scheduler']['iteration']} updates were applied"
        )
    return optimizer_state


def read_training_state(
    state_dir: Path,
    *,
    hf_config: dict,
    owned: dict[str, torch.Tensor],
) -> tuple[dict, dict[str, torch.Tensor], dict[str, dict]]:
    """``read_model_state`` then ``read_optimizer_state``: ``(trainer_state, weights,
    optimizer_state)``. Raises ``CheckpointError`` as those do."""
    trainer_state, weights = read_model_state(state_dir, hf_config=hf_config)
    return trainer_state, weights, read_optimizer_state(state_dir, trainer_state, owned)


def _assemble_state(name: str, param: torch.Tensor, entries: list[dict], where: Path) -> dict:
    """AdamW state of the block of ``param`` this rank holds, cut from the saved blocks.

    Each saved entry is one rank's block: ``offsets`` (absent: the whole tensor) and its
    ``exp_avg``/``exp_avg_sq`` blocks, so a checkpoint of any (data, tensor) layout loads on any
    other. Raises ``CheckpointError`` when the saved blocks do not cover this rank's block.
    """
    from .parallel import like_param, tensor_slice

    offsets, shape = tensor_slice(param)
    out: dict[str, torch.Tensor] = {}
    covered = torch.zeros(shape, dtype=torch.bool)
    for entry in entries:
        tensors = {k: v for k, v in entry.items() if k not in ("step", "offsets")}
        some = next(iter(tensors.values()))
        saved_offsets = entry.get("offsets")
        start = (0,) * some.dim() if saved_offsets is None else tuple(saved_offsets.tolist())
        # Intersection of the saved block with the wanted one, in both coordinate frames.
        lo = [max(a, b) for a, b in zip(start, offsets, strict=True)]
        hi = [
            min(a + n, b + m) for a, n, b, m in zip(start, some.shape, offsets, shape, strict=True)
        ]
        if any(low >= high for low, high in zip(lo, hi, strict=True)):
            continue
        src = tuple(slice(low - a, high - a) for low, high, a in zip(lo, hi, start, strict=True))
        dst = tuple(slice(low - b, high - b) for low, high, b in zip(lo, hi, offsets, strict=True))
        for key, value in tensors.items():
            if key not in out:
                out[key] = torch.empty(shape, dtype=value.dtype)
            out[key][dst] = value[src]
        covered[dst] = True
        out["step"] = entry["step"].clone()
    if not bool(covered.all()):
        raise CheckpointError(
            f"{where}: the saved optimizer blocks of {name!r} do not cover offsets {offsets} "
            f"shape {shape} (global {tuple(param.shape)})"
        )
    return {k: v.clone() if k == "step" else like_param(v, param) for k, v in out.items()}


# ----------------------------------------------------------------------------- snapshots


def snapshot_path(state_dir: Path, step: int) -> Path:
    """Where the snapshot at ``step`` lives inside ``state_dir``."""
    return Path(state_dir) / f"{_SNAPSHOT_PREFIX}{step}"


def _snapshot_step(path: Path) -> int | None:
    suffix = path.name.removeprefix(_SNAPSHOT_PREFIX)
    return int(suffix) if path.name.startswith(_SNAPSHOT_PREFIX) and suffix.isdigit() else None


def find_snapshot(state_dir: Path, segment_key: str) -> tuple[Path | None, list[Path]]:
    """Newest complete snapshot of the segment ``segment_key``, and the snapshots of others.

    A snapshot belongs to the segment when its ``trainer_state.json`` records the same
    ``segment_key`` (same start checkpoint, step range, config and settings). Partial
    directories (``.snapshot-stepN.partial``) are never returned.
    """
    state_dir = Path(state_dir)
    ours: list[tuple[int, Path]] = []
    others: list[Path] = []
    if not state_dir.is_dir():
        return None, []
    for path in state_dir.iterdir():
        step = _snapshot_step(path)
        if step is None or not path.is_dir():
            continue
        try:
            key = read_trainer_state(path).get("segment_key")
        except CheckpointError:
            key = None
        if key == segment_key:
            ours.append((step, path))
        else:
            others.append(path)
    newest = max(ours)[1] if ours else None
    return newest, others


def remove_snapshots(state_dir: Path, *, keep: Path | None = None) -> list[Path]:
    """Delete every snapshot (and partial one) in ``state_dir`` except ``keep``; return them."""
    removed = []
    state_dir = Path(state_dir)
    if not state_dir.is_dir():
        return removed
    for path in state_dir.iterdir():
        name = path.name.removeprefix(".").removesuffix(".partial")
        if _snapshot_step(Path(name)) is None or path == keep or not path.is_dir():
            continue
        shutil.rmtree(path)
        removed.append(path)
    return removed


# ----------------------------------------------------------------------------- lock


@contextlib.contextmanager
def state_dir_lock(state_dir: Path) -> Iterator[Path]:
    """Hold an exclusive ``fcntl.flock`` on ``state_dir/lock`` for the duration.

    The lock file records the holder (host, pid, SLURM job id, start time). Raises
    ``StateDirLockedError`` naming the lock file and the holder when another process holds it.
    The lock dies with its process, so a killed writer never blocks a rerun.
    """
    state_dir = Path(state_dir)
    state_dir.mkdir(parents=True, exist_ok=True)
    lock_path = state_dir / "lock"
    fh = open(lock_path, "a+", encoding="utf-8")  # noqa: SIM115 - held until the block ends
    try:
        try:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            fh.seek(0)
            holder = fh.read().strip() or "unknown holder"
            raise StateDirLockedError(
                f"{lock_path} is held by another training process ({holder}); two writers must "
                "not share one state dir"
            ) from None
        fh.seek(0)
        fh.truncate()
        holder = {
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "slurm_job_id": os.environ.get("SLURM_JOB_ID"),
            "since": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }
        fh.write(json.dumps(holder) + "\n")
        fh.flush()
        yield lock_path
    finally:
        fh.close()  # closing the descriptor releases the flock


# ----------------------------------------------------------------------------- disk space


def estimate_state_bytes(num_parameters: int) -> int:
    """Bytes one training-state directory needs: ~16 per parameter (weights + Adam + slack)."""
    return BYTES_PER_PARAMETER * num_parameters


def check_free_space(needs: dict[Path, int]) -> None:
    """Raise ``InsufficientDiskSpaceError`` unless each file system has room for its needs.

    ``needs`` maps directories (created if absent) to the bytes that will be written under
    them; directories on the same file system add up.
    """
    by_device: dict[int, tuple[Path, int]] = {}
    for path, nbytes in needs.items():
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        dev = path.stat().st_dev
        first, total = by_device.get(dev, (path, 0))
        by_device[dev] = (first, total + nbytes)
    for path, nbytes in by_device.values():
        free = shutil.disk_usage(path).free
        if free < nbytes:
            raise InsufficientDiskSpaceError(
                f"not enough free space under {path}: need {nbytes / 2**30:.2f} GiB "
                f"({nbytes} bytes) for checkpoint and snapshots, only {free / 2**30:.2f} GiB "
                f"({free} bytes) free"
            )
