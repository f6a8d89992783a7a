"""The trainer's data side: the rows each rank reads, read ahead, and their fingerprints.

Iteration ``s`` consumes the global batch ``samples.batch(s, global_batch)`` (a ``BatchSource``)
whatever the layout: data-parallel rank ``r`` of ``D`` reads only rows ``[r*B/D, (r+1)*B/D)``,
every rank of a tensor group the same rows (``data_parallel_coords``, ``local_rows``), one step
ahead in a background thread (``Prefetcher``). Global rank 0 alone fingerprints each step's
whole global batch, and the segment's batches together, with the one data-order fingerprint,
``data.order.fingerprint`` (sha256 of the ids as little-endian int64, in order), in another
thread (``Fingerprints``); ``trainer_state.json`` records them and a resume checks them.
"""

from __future__ import annotations

import hashlib
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Protocol

import numpy as np
import torch

from ..data.order import fingerprint, token_bytes
from . import checkpoint as ckpt
from .distributed import DistributedEnv
from .layout import data_ranks
from .settings import TrainSettings

__all__ = ["BatchSource", "data_parallel_coords", "local_rows", "Prefetcher", "Fingerprints"]


class BatchSource(Protocol):
    """What the trainer needs from the data side (``GPTNeoXSamples``, ``PreshuffledSamples``)."""

    def batch(self, step: int, global_batch: int) -> np.ndarray:
        """int64 array ``(global_batch, seq_length + 1)``: samples ``[step*B, (step+1)*B)``."""
        ...

    # Optional (``SampleBatches`` has it): ``local_batch(step, global_batch, dp_rank, dp_size)``,
    # data-parallel rank ``dp_rank``'s block of ``global_batch / dp_size`` rows, read alone.


def data_parallel_coords(env: DistributedEnv, settings: TrainSettings) -> tuple[int, int]:
    """``(data-parallel size, data-parallel rank)`` of this process.

    Ranks form a (data, tensor) grid with the tensor index fastest, global rank =
    ``dp_rank * tensor_parallel + tp_rank``: a node's GPUs share tensor groups (as Megatron's).
    Tensor-parallel peers read the same rows.
    """
    tp = settings.tensor_parallel
    return data_ranks(env.world_size, tp), env.rank // tp


def local_rows(
    samples: BatchSource, step: int, global_batch: int, dp_size: int, dp_rank: int
) -> np.ndarray:
    """Rows ``[r*B/D, (r+1)*B/D)`` of global batch ``step`` for data-parallel rank ``r`` of
    ``D``: read alone where the source can (``local_batch``), else cut from ``batch``."""
    read_local = getattr(samples, "local_batch", None)
    if read_local is not None:
        return read_local(step, global_batch, dp_rank, dp_size)
    rows = global_batch // dp_size
    return samples.batch(step, global_batch)[dp_rank * rows : (dp_rank + 1) * rows]


class Prefetcher:
    """This rank's rows of each step, read one step ahead by a background thread (into pinned
    memory on CUDA) and copied to the device without blocking."""

    def __init__(
        self,
        samples: BatchSource,
        settings: TrainSettings,
        env: DistributedEnv,
        device: torch.device,
        pin_memory: bool,
    ) -> None:
        self.samples, self.settings, self.device = samples, settings, device
        self.pin_memory = pin_memory
        self.dp_size, self.dp_rank = data_parallel_coords(env, settings)
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="batch-prefetch")
        self._pending: dict[int, Future] = {}

    def __enter__(self) -> Prefetcher:
        return self

    def __exit__(self, *exc) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)

    def tokens(self, step: int, next_step: int | None) -> torch.Tensor:
        """Step ``step``'s rows on the device; starts reading ``next_step``'s."""
        current = self._pending.pop(step, None) or self._pool.submit(self._load, step)
        if next_step is not None and next_step not in self._pending:
            self._pending[next_step] = self._pool.submit(self._load, next_step)
        return current.result().to(self.device, non_blocking=True)

    def _load(self, step: int) -> torch.Tensor:
        s = self.settings
        rows = local_rows(self.samples, step, s.global_batch, self.dp_size, self.dp_rank)
        expected = (s.global_batch // self.dp_size, s.seq_length + 1)
        if tuple(rows.shape) != expected or not np.issubdtype(rows.dtype, np.integer):
            raise ValueError(
                f"samples: rows of step {step} for data-parallel rank {self.dp_rank} of "
                f"{self.dp_size} have shape {tuple(rows.shape)} and dtype {rows.dtype}, "
                f"expected {expected} integer ids"
            )
        host = torch.from_numpy(np.ascontiguousarray(rows, dtype=np.int64))
        return host.pin_memory() if self.pin_memory else host


class Fingerprints:
    """The data fingerprints, on global rank 0 only: ``fingerprint`` of each step's whole global
    batch and the running sha256 of the segment's batches (``hasher``, equal to ``fingerprint``
    of them all), computed by a background thread while the step trains. Other ranks neither
    read the global batch nor hash it."""

    def __init__(self, samples: BatchSource, settings: TrainSettings, enabled: bool) -> None:
        self.samples, self.settings, self.enabled = samples, settings, enabled
        self.hasher = hashlib.sha256()
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="fingerprint") if enabled else None
        self._pending: dict[int, Future] = {}

    def __enter__(self) -> Fingerprints:
        return self

    def __exit__(self, *exc) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)

    def replay(self, history: list[dict]) -> None:
        """Start the segment's hash again from the batches of ``history`` (the steps a resumed
        segment took before its snapshot), each checked against the digest recorded then.

        Raises ``CheckpointError`` when a batch differs: a data order that changed underneath
        fails loudly.
        """
        self.hasher = hashlib.sha256()
        if not self.enabled:
            return
        for record in history:
            batch = self.samples.batch(record["iteration"], self.settings.global_batch)
            if fingerprint(batch) != record["tokens_sha256"]:
                raise ckpt.CheckpointError(
                    f"samples.batch({record['iteration']}) differs from the batch the snapshot "
                    "recorded: the data order changed since the snapshot was taken"
                )
            self.hasher.update(token_bytes(batch))

    def submit(self, step: int) -> None:
        if self.enabled:
            self._pending[step] = self._pool.submit(self._digest, step)

    def result(self, step: int) -> str | None:
        """Step ``step``'s digest (waits for it); the segment hash then includes the step."""
        return self._pending.pop(step).result() if self.enabled else None

    def hexdigest(self) -> str | None:
        return self.hasher.hexdigest() if self.enabled else None

    def _digest(self, step: int) -> str:
        batch = self.samples.batch(step, self.settings.global_batch)
        _check_batch(batch, step, self.settings)
        self.hasher.update(token_bytes(batch))
        return fingerprint(batch)


def _check_batch(batch: np.ndarray, it: int, settings: TrainSettings) -> None:
    expected = (settings.global_batch, settings.seq_length + 1)
    if tuple(batch.shape) != expected:
        raise ValueError(f"samples.batch({it}) has shape {tuple(batch.shape)}, expected {expected}")
    if not np.issubdtype(batch.dtype, np.integer):
        raise ValueError(f"samples.batch({it}) has dtype {batch.dtype}, expected integer ids")
