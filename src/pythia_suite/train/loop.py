"""Train one checkpoint segment ``(start_step, end_step]`` of a Pythia run with plain PyTorch.

One process per device on a (data, tensor) mesh (``parallel``): tensor parallelism
(``sizes.*.tensor_parallel``), data parallelism with ZeRO-1 or FSDP2, gradient accumulation.
Iteration ``s`` (0-based) consumes the global batch ``samples.batch(s, global_batch)`` whatever
the layout: data-parallel rank ``r`` of ``D`` reads only rows ``[r*B/D, (r+1)*B/D)`` (every rank
of a tensor group the same rows) and its micro-step ``m`` trains on the ``m``-th
``micro_batch`` rows of those. The loss is the mean over the global batch. GPT-NeoX v1.0
semantics otherwise: see ``model`` (init)
and ``optim`` (decay groups, LR schedule, loss scaler).

``train_segment`` is the whole story, top to bottom: ``_set_up`` (model, weights from the start
checkpoint or the newest in-segment snapshot, optimizer), ``_train_iteration`` per step (around
``train_step``, one optimizer update), ``_save_checkpoint``. The state one step changes is a
``TrainState``; a step's outcome a ``StepResult``. ``prepare_model`` / ``init_train_state`` /
``train_step`` are public so that the memory tracer runs exactly the step the loop runs, and
``parallelize`` / ``build_training_optimizer`` are the one seam where parallelism plugs in.

With ``state_interval > 0`` it snapshots its state to
``state_dir`` every ``state_interval`` steps so that a killed or preempted run continues where it
stopped; at the same world size the final weights are bit-identical to an uninterrupted run
(CPU, ``deterministic=True``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import hashlib
import json
import math
import os
import shutil
import signal
import socket
import sys
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol, TextIO

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from ..config import transformer_flops_per_token
from . import checkpoint as ckpt
from . import parallel
from .device import DeviceChoices, device_choices
from .distributed import DistributedEnv, default_device, detect_distributed_env, distributed_context
from .layout import data_ranks
from .model import (
    build_model,
    count_parameters,
    hf_name,
    init_gpt_neox_weights,
    load_hf_state_dict,
)
from .optim import (
    DynamicLossScaler,
    build_param_groups,
    local_optimizer,
    lr_at,
    set_lr,
)
from .settings import TrainSettings
from .summary import SEGMENT_SUMMARY_NAME, segment_summary_record

__all__ = [
    "BatchSource",
    "NonFiniteLossError",
    "SegmentPreempted",
    "Progress",
    "TrainState",
    "StepResult",
    "train_segment",
    "prepare_model",
    "parallelize",
    "build_training_optimizer",
    "init_train_state",
    "forward_loss",
    "chunked_cross_entropy",
    "train_step",
    "batch_fingerprint",
    "segment_key",
]

# Settings left out of the segment key: how the segment is observed (logging, snapshots, spike
# detection) and how each global batch is laid out over ranks and micro-steps (like the world
# size, these change rounding, not the mathematics), so a rerun may change them and still resume.
_NOT_IN_SEGMENT_KEY = (
    "log_interval",
    "state_interval",
    "spike_factor",
    "spike_window",
    "micro_batch",
    "deterministic",
    "zero_optimizer",
    "tensor_parallel",
    "data_parallel",
    "partition_activations",
    "activation_checkpointing",
    "compile_layers",
    "loss_chunk_tokens",
)


class BatchSource(Protocol):
    """What the trainer needs from the data side (``GPTNeoXSamples``, ``PreshuffledSamples``)."""

    def batch(self, step: int, global_batch: int) -> np.ndarray:
        """int64 array ``(global_batch, seq_length + 1)``: samples ``[step*B, (step+1)*B)``."""
        ...

    # Optional (``SampleBatches`` has it): ``local_batch(step, global_batch, dp_rank, dp_size)``,
    # data-parallel rank ``dp_rank``'s block of ``global_batch / dp_size`` rows, read alone.


class NonFiniteLossError(RuntimeError):
    """The loss (or gradient norm) became NaN/inf at the named step; nothing was saved for it."""


class SegmentPreempted(RuntimeError):
    """SIGTERM arrived; a snapshot was saved (if a state dir was given). Exit non-zero."""


@dataclass(frozen=True)
class RunInfo:
    """Whose segment this is, for its summary record (``segment_summary.json``): the run and
    size names, and the GPU's dense fp16/bf16 peak per device (``config.gpu_record``), which
    MFU uses on CUDA only."""

    run: str = ""
    size: str = ""
    gpu_peak_tflops: float | None = None


# ----------------------------------------------------------------------------- small helpers


def batch_fingerprint(tokens: np.ndarray) -> str:
    """sha256 hex digest of a batch's token ids as little-endian int64, row-major."""
    return hashlib.sha256(np.ascontiguousarray(tokens, dtype="<i8").tobytes()).hexdigest()


def segment_key(
    hf_config: dict,
    settings: TrainSettings,
    start_state: dict | None,
    start_step: int,
    end_step: int,
) -> str:
    """Identity of a segment: snapshots resume only a segment with the same key.

    Covers the start checkpoint (its whole ``trainer_state.json``, which names its step, losses
    and data fingerprints; ``None`` for fresh weights), the step range, the model config and
    every setting that changes the computation. Not the world size: any world size resumes.
    """
    computed = {
        k: v for k, v in dataclasses.asdict(settings).items() if k not in _NOT_IN_SEGMENT_KEY
    }
    identity = {
        "start": start_state,
        "start_step": start_step,
        "end_step": end_step,
        "hf_config": hf_config,
        "settings": computed,
    }
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()


def _utc_now() -> str:
    return datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")


def _format_eta(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


class _Log:
    """Rank 0's log: one line per event, flushed at once (a killed job keeps its last lines)."""

    def __init__(self, target: TextIO | Path | str | None, enabled: bool) -> None:
        self._owned = None
        self.enabled = enabled
        if not enabled:
            self.stream = None
        elif target is None:
            self.stream = sys.stderr
        elif isinstance(target, (str, Path)):
            Path(target).parent.mkdir(parents=True, exist_ok=True)
            self._owned = self.stream = open(target, "a", encoding="utf-8")  # noqa: SIM115
        else:
            self.stream = target

    def __call__(self, message: str) -> None:
        if self.stream is not None:
            self.stream.write(message + "\n")
            self.stream.flush()

    def close(self) -> None:
        if self._owned is not None:
            self._owned.close()


def _rank0_check(env: DistributedEnv, check: Callable[[], object]) -> object:
    """Run ``check`` on rank 0 and re-raise its exception on every rank (no rank left waiting)."""
    result: list[object] = [None]
    error: BaseException | None = None
    if env.is_main:
        try:
            result[0] = check()
        except Exception as exc:  # noqa: BLE001 - re-raised below, on every rank
            error = exc
    if env.world_size > 1:
        message = [None if error is None else f"{type(error).__name__}: {error}"]
        dist.broadcast_object_list(message, src=0)
        if error is None and message[0] is not None:
            raise RuntimeError(f"rank 0 failed: {message[0]}")
    if error is not None:
        raise error
    return result[0]


@contextlib.contextmanager
def _deterministic(enabled: bool) -> Iterator[None]:
    previous = torch.are_deterministic_algorithms_enabled()
    if enabled:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(previous)


@contextlib.contextmanager
def _sigterm_flag() -> Iterator[threading.Event]:
    """An event set by SIGTERM (SLURM preemption/time limit); the loop stops at the step's end."""
    event = threading.Event()
    if threading.current_thread() is not threading.main_thread():
        yield event  # signals can only be handled in the main thread
        return
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: event.set())
    try:
        yield event
    finally:
        signal.signal(signal.SIGTERM, previous)


# ----------------------------------------------------------------------------- data


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


class _Prefetcher:
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

    def __enter__(self) -> _Prefetcher:
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


class _Fingerprints:
    """The data fingerprints, on global rank 0 only: sha256 of each step's whole global batch
    and the running sha256 of the segment (``hasher``), computed by a background thread while
    the step trains. Other ranks neither read the global batch nor hash it."""

    def __init__(self, samples: BatchSource, settings: TrainSettings, enabled: bool) -> None:
        self.samples, self.settings, self.enabled = samples, settings, enabled
        self.hasher = hashlib.sha256()
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="fingerprint") if enabled else None
        self._pending: dict[int, Future] = {}

    def __enter__(self) -> _Fingerprints:
        return self

    def __exit__(self, *exc) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)

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
        data = np.ascontiguousarray(batch, dtype="<i8").tobytes()
        self.hasher.update(data)
        return hashlib.sha256(data).hexdigest()


# ----------------------------------------------------------------------------- segment state


@dataclass
class Progress:
    """Per-segment bookkeeping: saved in every snapshot, so a resumed segment continues it."""

    start_step: int
    end_step: int
    segment_key: str
    step: int
    scheduler_iteration: int = 0
    history: list[dict] = field(default_factory=list)
    spikes: list[dict] = field(default_factory=list)
    # The spike detector's window carries over from the previous segment.
    recent_losses: list[float] = field(default_factory=list)
    train_time_s: float = 0.0
    wall_s: float = 0.0  # wall time of earlier attempts, up to their last snapshot
    started_at: str = field(default_factory=lambda: _utc_now())

    @classmethod
    def fresh(cls, start_step: int, end_step: int, key: str, start_state: dict | None):
        """At the segment's start (history empty), continuing the start checkpoint's schedule."""
        carried = start_state or {}
        return cls(
            start_step=start_step,
            end_step=end_step,
            segment_key=key,
            step=start_step,
            scheduler_iteration=carried.get("scheduler", {}).get("iteration", 0),
            recent_losses=list(carried.get("recent_losses", [])),
        )

    @classmethod
    def from_snapshot(cls, saved: dict):
        """As recorded in a snapshot's ``trainer_state.json``."""
        return cls(
            start_step=saved["segment"]["start_step"],
            end_step=saved["segment"]["end_step"],
            segment_key=saved["segment_key"],
            step=saved["step"],
            scheduler_iteration=saved["scheduler"]["iteration"],
            history=saved["history"],
            spikes=saved["spikes"],
            recent_losses=saved["recent_losses"],
            train_time_s=saved["train_time_s"],
            wall_s=saved.get("wall_s", 0.0),
            started_at=saved.get("started_at") or _utc_now(),
        )


@dataclass
class TrainState:
    """What one optimizer step needs and changes (``train_step``); built by ``init_train_state``.

    ``model`` is the ``GPTNeoXForCausalLM`` whose parameters are trained and saved;
    ``train_module`` is what a micro-step calls (the LM loss of ``model``, wrapped for data
    parallelism by ``parallelize``).
    """

    settings: TrainSettings
    env: DistributedEnv
    device: torch.device
    model: nn.Module
    train_module: nn.Module
    optimizer: torch.optim.Optimizer
    scaler: DynamicLossScaler | None
    progress: Progress
    par: parallel.Parallelism  # this rank on the (data, tensor) mesh
    choices: DeviceChoices  # what this device does differently (fused AdamW, ...)


@dataclass(frozen=True)
class StepResult:
    """One optimizer step, as every rank agrees on it (the step's single host sync)."""

    loss: float  # mean over the global batch, unscaled
    grad_norm: float  # after unscaling, before clipping
    lr: float
    skipped: bool  # fp16 overflow: no update, schedule not advanced
    stop_requested: bool  # some rank had ``stop_requested`` set (SIGTERM)


@dataclass
class Segment:
    """The segment being trained: where it reads, writes, logs and reports (not the maths)."""

    hf_config: dict
    samples: BatchSource
    start_step: int
    end_step: int
    out_dir: Path
    state_dir: Path | None
    hook: Callable[[str, int], None]
    log: _Log
    preempt: threading.Event
    batches: _Prefetcher
    fingerprints: _Fingerprints
    names: dict[int, str] = field(default_factory=dict)  # id(parameter) -> HF name
    run_info: RunInfo = field(default_factory=RunInfo)
    first_step: int = 0  # where this process started training (after a resume: the snapshot)
    begun: float = field(default_factory=time.perf_counter)  # this process's wall clock
    started: float = field(default_factory=time.perf_counter)  # the first step's start


# ----------------------------------------------------------------------------- model and loss


def prepare_model(hf_config: dict, settings: TrainSettings, device: torch.device) -> nn.Module:
    """The model as it trains, weights left uninitialised (init or load them next).

    ``GPTNeoXForCausalLM`` on ``device`` in fp32 with the fast paths of ``settings``: activation
    checkpointing of every layer (non-reentrant, recomputed in backward: identical results,
    about one forward more compute) and, with ``compile_layers``, each layer compiled by
    ``torch.compile``. Parameter names are unchanged. The loop and the memory tracer both call
    it; tensor parallelism is applied later, by ``parallelize``, to the initialised model.
    """
    model = build_model(hf_config, device, empty=True)
    model.base_model.rotary_emb.register_forward_hook(_rotary_in_compute_dtype)
    if settings.activation_checkpointing:
        kwargs = {"use_reentrant": False}
        enable = getattr(model, "activation_checkpointing_enable", None)  # transformers >= 5.2x
        if enable is not None:
            enable(kwargs)
        else:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
    if settings.compile_layers:
        for layer in model.base_model.layers:
            layer.compile()
    return model


def _rotary_in_compute_dtype(module: nn.Module, args, output):
    """Under autocast, hand the layers rotary cos/sin in the compute dtype (fp16/bf16).

    transformers returns them in the residual stream's dtype (fp32), which turns ``q * cos``
    into an fp32 product of the half-precision q and k: two full fp32 copies per layer. Exact
    enough in half precision because the angles (position x inverse frequency) are still
    computed in fp32, only the values in [-1, 1] are rounded (relative 2^-11 in fp16, 2^-8 in
    bf16), and q, k are half precision already; GPT-NeoX v1.0 itself applied rotary in the
    training dtype (``cos_cached.to(x.dtype)``), Pythia's runs included.
    """
    device_type = output[0].device.type
    if not torch.is_autocast_enabled(device_type):
        return output
    dtype = torch.get_autocast_dtype(device_type)
    return tuple(t.to(dtype) for t in output)


def attention_kernel(model: nn.Module, settings: TrainSettings, device: torch.device) -> str:
    """Which scaled-dot-product-attention kernel the model's attention runs, checked by trying.

    transformers' ``sdpa`` attention with no mask (causal by ``is_causal``) is what the flash
    kernel needs. Tries flash, then memory-efficient, then math, at the model's head size in
    the compute dtype on ``device``, and returns ``"SDPA flash"`` or the fallback's name with
    why flash was refused. The loop logs it at start-up.
    """
    from torch.nn.attention import SDPBackend, sdpa_kernel

    impl = model.config._attn_implementation
    if impl != "sdpa":
        return f"{impl} attention (not SDPA: no flash kernel)"
    dtype = settings.half_dtype or torch.float32
    heads = model.config.num_attention_heads
    q = torch.ones(1, heads, 64, model.config.hidden_size // heads, device=device, dtype=dtype)
    refused = []
    for backend in (SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH):
        try:
            with warnings.catch_warnings(), sdpa_kernel([backend]):
                warnings.simplefilter("ignore")  # torch warns why; the reason is kept below
                F.scaled_dot_product_attention(q, q, q, is_causal=True)
        except RuntimeError as err:
            refused.append(f"{backend.name}: {str(err).splitlines()[0]}")
            continue
        if not refused:
            return f"SDPA {backend.name} ({device.type}, {dtype})"
        return f"SDPA {backend.name} ({device.type}, {dtype}); refused: {'; '.join(refused)}"
    return f"no SDPA kernel ({device.type}, {dtype}): {'; '.join(refused)}"


class LMLoss(nn.Module):
    """``forward(tokens)`` = ``forward_loss(model, tokens, settings)``: the module that data
    parallel wrappers (DDP, FSDP2) see, so that their hooks run around the whole loss."""

    def __init__(self, model: nn.Module, settings: TrainSettings) -> None:
        super().__init__()
        self.model = model
        self.settings = settings

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return forward_loss(self.model, tokens, self.settings)


def forward_loss(model: nn.Module, tokens: torch.Tensor, settings: TrainSettings) -> torch.Tensor:
    """Mean next-token cross-entropy of ``tokens`` (``(batch, seq_length + 1)`` ids), fp32.

    Up to ``settings.loss_chunk_tokens`` predicted tokens: the output layer's logits in one
    piece (as transformers computes them). More: ``chunked_cross_entropy``, which never holds
    more than one chunk's logits. Under tensor parallelism: the loss-parallel cross-entropy of
    the vocabulary-sharded logits (call inside ``parallel.loss_context``).
    """
    inputs, labels = tokens[:, :-1], tokens[:, 1:]
    hidden = model.base_model(input_ids=inputs).last_hidden_state
    head = model.get_output_embeddings()
    if labels.numel() <= settings.loss_chunk_tokens or parallel.is_vocab_parallel(head):
        # Under tensor parallelism the logits stay vocabulary-sharded (1/T per rank) and the
        # loss is loss-parallel: never gathered, so no chunking is needed.
        logits = head(hidden)
        return parallel.causal_lm_loss(logits, labels)
    return chunked_cross_entropy(
        hidden.flatten(0, 1), head.weight, labels.flatten(), settings.loss_chunk_tokens
    )


class _ChunkedLinearCrossEntropy(torch.autograd.Function):
    """Mean CE of ``hidden @ weight.T`` computed chunk by chunk, gradients included.

    The forward pass computes each chunk's logits (in the autocast dtype where autocast is on,
    as ``nn.Linear`` would), its loss in fp32, and at once the chunk's gradients
    (``softmax - onehot``) with respect to ``hidden`` and ``weight``; the logits are then
    dropped. Backward only scales the stored gradients. Same FLOPs as the plain loss; memory
    ``chunk x vocab`` logits plus one ``weight``-sized fp32 gradient, not ``tokens x vocab``.
    """

    @staticmethod
    def forward(ctx, hidden, weight, labels, chunk_tokens):
        n = hidden.shape[0]
        grad_hidden = torch.empty_like(hidden)
        grad_weight = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device)
        total = torch.zeros((), dtype=torch.float32, device=hidden.device)
        for start in range(0, n, chunk_tokens):
            h = hidden[start : start + chunk_tokens]
            y = labels[start : start + chunk_tokens]
            logits = (h @ weight.t()).float()
            lse = torch.logsumexp(logits, dim=-1)
            total += (lse - logits.gather(1, y[:, None]).squeeze(1)).sum()
            # d(sum of losses)/d(logits) = softmax - onehot, in place: one chunk buffer.
            grad_logits = logits.sub_(lse[:, None]).exp_()
            grad_logits[torch.arange(len(y), device=y.device), y] -= 1.0
            # Under autocast these matmuls run in the compute dtype, as autograd's would.
            # Half-precision weights (master-weight training, no autocast): the gradient
            # matmuls in their dtype; a no-op cast for fp32 weights and under autocast.
            grad_hidden[start : start + chunk_tokens] = grad_logits.to(weight.dtype) @ weight
            grad_weight += (grad_logits.t().to(h.dtype) @ h).float()
            del logits, lse, grad_logits
        ctx.save_for_backward(grad_hidden, grad_weight)
        ctx.n = n
        ctx.weight_dtype = weight.dtype
        return total / n

    @staticmethod
    def backward(ctx, grad_output):
        grad_hidden, grad_weight = ctx.saved_tensors
        scale = grad_output / ctx.n
        return (
            (grad_hidden * scale).to(grad_hidden.dtype),
            (grad_weight * scale).to(ctx.weight_dtype),
            None,
            None,
        )


def chunked_cross_entropy(
    hidden: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor, chunk_tokens: int
) -> torch.Tensor:
    """``F.cross_entropy(hidden @ weight.T, labels)`` (mean) without all the logits at once.

    ``hidden`` is ``(tokens, hidden)``, ``weight`` the output layer's ``(vocab, hidden)``,
    ``labels`` ``(tokens,)``; at most ``chunk_tokens`` rows of logits exist at any time, in
    the forward and the backward pass. Equal to the plain loss and its gradients within fp32
    rounding (tests/test_train_loop.py).
    """
    if chunk_tokens <= 0:
        raise ValueError(f"chunk_tokens must be > 0, got {chunk_tokens}")
    return _ChunkedLinearCrossEntropy.apply(hidden, weight, labels, chunk_tokens)


# ----------------------------------------------------------------------------- parallelism seam


def parallelize(
    model: nn.Module,
    settings: TrainSettings,
    env: DistributedEnv,
    device: torch.device,
    par: parallel.Parallelism | None = None,
) -> tuple[nn.Module, parallel.Parallelism]:
    """The module a micro-step calls (``LMLoss(model)``) and this rank's place on the mesh.

    Tensor parallelism is applied first where ``_set_up`` has not already done so (it shards
    before the weights are set, so no rank holds them whole); under ``data_parallel: fsdp``,
    FSDP2 shards each layer and then ``LMLoss`` as the root. Under ``zero1`` DDP wraps it at
    tensor parallel 1 (``init_train_state``, after the optimizer has set the parameters'
    dtype), and with tensor parallelism the gradient all-reduce runs in ``train_step``
    (``parallel.all_reduce_gradients``).
    """
    if par is None:
        par = parallel.build_parallelism(
            env.world_size, settings.tensor_parallel, device, settings.data_parallel
        )
    parallel.apply_tensor_parallel_once(model, par, settings.partition_activations)
    train_module = LMLoss(model, settings)
    parallel.apply_fsdp(model, train_module, par, settings.half_dtype)
    return train_module, par


def build_training_optimizer(
    model: nn.Module,
    settings: TrainSettings,
    par: parallel.Parallelism,
    choices: DeviceChoices,
) -> torch.optim.Optimizer:
    """AdamW with GPT-NeoX's decay groups; ZeRO-1 over the data ranks when ``zero_optimizer``
    (under ``zero1``); torch's fused AdamW kernel where ``choices.fused_adamw`` (CUDA; the same
    update, one kernel).

    With ``settings.master_weights`` the model's parameters become fp16/bf16 here and their
    fp32 values become the optimizer's master weights (``parallel.MasterWeightOptimizer``).
    """
    masters = None
    if settings.master_weights:
        masters = parallel.half_parameters(model, settings.half_dtype)
    return parallel.build_optimizer(
        build_param_groups(model, settings.weight_decay),
        par,
        betas=(settings.adam_beta1, settings.adam_beta2),
        eps=settings.adam_eps,
        sharded=settings.zero_optimizer,
        masters=masters,
        # Only ask for fused when wanted: torch picks its own default (foreach on CUDA) otherwise.
        **({"fused": True} if choices.fused_adamw else {}),
    )


def new_loss_scaler(settings: TrainSettings) -> DynamicLossScaler | None:
    """DeepSpeed's dynamic loss scaler for fp16 (or ``loss_scaler_in_fp32``), else ``None``."""
    if settings.precision != "fp16" and not settings.loss_scaler_in_fp32:
        return None
    return DynamicLossScaler(
        settings.loss_scale_initial,
        settings.loss_scale_window,
        settings.loss_scale_hysteresis,
        settings.loss_scale_min,
    )


def init_train_state(
    model: nn.Module,
    settings: TrainSettings,
    env: DistributedEnv,
    device: torch.device,
    progress: Progress | None = None,
    par: parallel.Parallelism | None = None,
    choices: DeviceChoices | None = None,
) -> TrainState:
    """Parallelise ``model`` (weights in place) and build its optimizer and loss scaler.

    ``progress`` defaults to a fresh segment at step 0 (what the memory tracer needs); ``par``
    to the mesh of ``env`` and ``settings``; ``choices`` to ``device_choices(device)``.
    """
    choices = choices or device_choices(device)
    train_module, par = parallelize(model, settings, env, device, par)
    optimizer = build_training_optimizer(model, settings, par, choices)
    # After the optimizer: with master weights it replaces the parameters by half ones.
    parallel.shard_gradients_like_parameters(model, par)
    # DDP last: its gradient buckets take the parameters' final dtype.
    train_module = parallel.wrap_data_parallel(train_module, par, choices.ddp_device_ids)
    return TrainState(
        settings=settings,
        env=env,
        device=device,
        model=model,
        train_module=train_module,
        optimizer=optimizer,
        scaler=new_loss_scaler(settings),
        progress=progress or Progress(start_step=0, end_step=0, segment_key="", step=0),
        par=par,
        choices=choices,
    )


# ----------------------------------------------------------------------------- one step


def autocast_context(settings: TrainSettings, device: torch.device):
    """The forward pass's autocast: none for fp32 or master weights (the parameters are
    fp16/bf16 already), else fp16/bf16 on ``device``'s type (FSDP2's mixed precision)."""
    if settings.half_dtype is None or settings.master_weights:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=settings.half_dtype)


def _forward_backward(state: TrainState, tokens: torch.Tensor, loss_scale: float) -> torch.Tensor:
    """Accumulate the gradients of this data rank's rows; return their mean loss (not scaled).

    Each micro-step's loss is divided by the number of micro-steps, and the data-parallel
    reduction (DDP, FSDP2, or ``parallel.all_reduce_gradients`` under tensor parallelism)
    averages over the data ranks, so the gradient is that of the mean loss over the global
    batch.
    """
    micro_batch = state.settings.micro_batch
    module, par = state.train_module, state.par
    n_micro = tokens.shape[0] // micro_batch
    total = torch.zeros((), device=tokens.device)
    for m in range(n_micro):
        chunk = tokens[m * micro_batch : (m + 1) * micro_batch]
        # Reduce gradients across data ranks only once, after the last micro-step.
        last = m == n_micro - 1
        with parallel.gradient_sync(module, par, last), parallel.loss_context(par):
            with autocast_context(state.settings, state.device):
                loss = module(chunk)
            (loss * (loss_scale / n_micro)).backward()
        total += parallel.scalar(loss.detach()) / n_micro
    return total


def train_step(
    state: TrainState, tokens: torch.Tensor, *, stop_requested: bool = False
) -> StepResult:
    """One optimizer iteration on this rank's rows ``tokens`` (``(rows, seq_length + 1)``).

    Forward and backward over the micro-batches, loss averaged over ranks, unscale, clip, then
    the update at the schedule's LR, or (fp16 overflow) a skipped update that leaves weights
    and schedule alone and tells the loss scaler. One host sync: loss, gradient norm and the
    ranks' stop flag in one small tensor. Raises ``NonFiniteLossError`` on a non-finite loss or
    gradient norm without a loss scaler.
    """
    settings, env, progress = state.settings, state.env, state.progress
    params = [p for p in state.model.parameters()]
    loss_scale = state.scaler.scale if state.scaler else 1.0
    local_loss = _forward_backward(state, tokens, loss_scale)
    parallel.all_reduce_gradients(params, state.par)
    # torch.full is a fill kernel; torch.tensor(x, device=cuda) would be a blocking copy.
    stop_flag = torch.full((), float(stop_requested), device=state.device)
    reduced = torch.stack([local_loss, stop_flag])
    if env.world_size > 1:
        dist.all_reduce(reduced, op=dist.ReduceOp.SUM)
        reduced[0] /= env.world_size
    # The global norm over tensor- and data-sharded gradients (each block counted once); with
    # master weights the unscaled, clipped gradients are formed in fp32 by the optimizer.
    grad_norm = parallel.unscale_and_clip(state.optimizer, params, loss_scale, settings.grad_clip)
    loss, stops, norm = _host_values(torch.stack([reduced[0], reduced[1], grad_norm.to(reduced)]))
    overflow = not (math.isfinite(loss) and math.isfinite(norm))
    it = progress.step
    if overflow and state.scaler is None:
        what = "loss" if not math.isfinite(loss) else "gradient norm"
        raise NonFiniteLossError(
            f"{what} is not finite at iteration {it} (the update to step {it + 1}): "
            f"loss={loss}, grad_norm={norm}; stopping before anything is saved"
        )
    lr = lr_at(
        progress.scheduler_iteration,
        lr=settings.lr,
        min_lr=settings.min_lr,
        warmup_iters=settings.warmup_iters,
        decay_iters=settings.decay_iters,
    )
    if overflow:
        # fp16 overflow: DeepSpeed skips the update and the LR schedule does not advance.
        state.optimizer.zero_grad(set_to_none=True)
        state.scaler.update(True)
    else:
        set_lr(state.optimizer, lr)
        state.optimizer.step()
        state.optimizer.zero_grad(set_to_none=True)
        progress.scheduler_iteration += 1
        if state.scaler is not None:
            state.scaler.update(False)
    return StepResult(loss, norm, lr, overflow, stops > 0)


def _host_values(values: torch.Tensor) -> list[float]:
    """The step's one host sync. Under ``FakeTensorMode`` (the memory tracer) there are no
    values: the step is taken as finite, so that the update and its memory are traced."""
    from torch._subclasses.fake_tensor import is_fake

    if is_fake(values):
        return [0.0] * values.numel()
    return values.tolist()


# ----------------------------------------------------------------------------- the segment


def train_segment(
    hf_config: dict,
    settings: TrainSettings,
    samples: BatchSource,
    *,
    start_checkpoint: Path | str | None,
    start_step: int,
    end_step: int,
    out_dir: Path | str,
    state_dir: Path | str | None = None,
    log: TextIO | Path | str | None = None,
    hook: Callable[[str, int], None] | None = None,
    env: DistributedEnv | None = None,
    device: torch.device | str | None = None,
    run_info: RunInfo | None = None,
    choices: DeviceChoices | None = None,
) -> dict:
    """Train from ``start_checkpoint`` (step ``start_step``) to ``end_step``; write ``out_dir``.

    ``start_checkpoint=None`` starts from GPT-NeoX-initialised weights (``start_step`` must be
    0); with ``end_step=0`` this writes the ``step0`` checkpoint. ``out_dir`` is the checkpoint
    directory to create (``.../step{end_step}``); it appears only when complete. ``state_dir``
    holds snapshots (every ``settings.state_interval`` steps) and the writer lock; a rerun
    resumes from the newest snapshot of the same segment. ``log`` is a stream or file (rank 0
    only; default stderr). ``hook(event, step)`` is called on every rank at ``"step_end"`` and
    ``"snapshot_saved"``, and on rank 0 at ``"before_publish"`` (tests inject failures there).
    ``env`` defaults to ``detect_distributed_env()``; ``device`` to ``cuda:{local_rank}`` if
    available, else the CPU; ``choices`` to ``device_choices(device)`` (tests set the GPU's
    choices a CPU can run: ``device_choices("cpu", fused_adamw=True)``). ``run_info`` names
    the run for the segment summary record (``segment_summary.json``, written into
    ``out_dir``). Returns the ``trainer_state`` written
    with the checkpoint.

    Raises ``ValueError`` for inconsistent arguments, ``FileExistsError`` if ``out_dir``
    exists, ``ckpt.CheckpointError`` for a start checkpoint that does not match,
    ``ckpt.StateDirLockedError``, ``ckpt.InsufficientDiskSpaceError``, ``NonFiniteLossError``
    (naming the step; nothing is saved for it) and ``SegmentPreempted`` after SIGTERM.
    """
    settings.validate()
    env = env or detect_distributed_env()
    device = torch.device(device) if device is not None else default_device(env)
    choices = choices or device_choices(device)
    if choices.device != device:
        raise ValueError(f"choices are for device {choices.device}, the segment runs on {device}")
    out_dir = Path(out_dir)
    state_dir = Path(state_dir) if state_dir is not None else None
    start_checkpoint = Path(start_checkpoint) if start_checkpoint is not None else None
    _check_arguments(
        settings, env, choices, start_checkpoint, start_step, end_step, out_dir, state_dir
    )
    with contextlib.ExitStack() as stack:
        seg = Segment(
            hf_config=hf_config,
            samples=samples,
            start_step=start_step,
            end_step=end_step,
            out_dir=out_dir,
            state_dir=state_dir,
            hook=hook or (lambda event, step: None),
            log=_Log(log, enabled=env.is_main),
            preempt=threading.Event(),
            batches=stack.enter_context(
                _Prefetcher(samples, settings, env, device, choices.pin_memory)
            ),
            fingerprints=stack.enter_context(_Fingerprints(samples, settings, env.is_main)),
            run_info=run_info or RunInfo(),
        )
        stack.callback(seg.log.close)
        stack.enter_context(distributed_context(env, choices))
        stack.enter_context(_deterministic(settings.deterministic))
        seg.preempt = stack.enter_context(_sigterm_flag())
        _lock_state_dir(stack, seg, env)
        state = _set_up(seg, settings, start_checkpoint, env, choices)
        for it in range(state.progress.step, end_step):
            _train_iteration(seg, state, it)
        return _save_checkpoint(seg, state)


def _lock_state_dir(stack: contextlib.ExitStack, seg: Segment, env: DistributedEnv) -> None:
    """Rank 0 holds the state dir's writer lock for the whole segment; a failure to take it
    reaches every rank."""
    if seg.state_dir is None:
        return
    if env.is_main:
        _rank0_check(env, lambda: stack.enter_context(ckpt.state_dir_lock(seg.state_dir)))
    else:
        _rank0_check(env, lambda: None)


def _set_up(
    seg: Segment,
    settings: TrainSettings,
    start_checkpoint: Path | None,
    env: DistributedEnv,
    choices: DeviceChoices,
) -> TrainState:
    """Model, weights (fresh, start checkpoint or newer snapshot), optimizer and its state.

    Under tensor parallelism the model is built on the meta device and sharded before it is
    allocated; each rank then copies its block of each weight from the full CPU tensors, one
    parameter at a time.
    """
    device = choices.device
    par = parallel.build_parallelism(
        env.world_size, settings.tensor_parallel, device, settings.data_parallel
    )
    if par.tensor > 1:
        # Built on the meta device and sharded there: no rank ever allocates the whole model.
        model = prepare_model(seg.hf_config, settings, torch.device("meta"))
        parallel.apply_tensor_parallel_once(model, par, settings.partition_activations)
        parallel.materialize(model, device)
    else:
        model = prepare_model(seg.hf_config, settings, device)
    kernel = attention_kernel(model, settings, device)
    seg.log(f"attention kernel: {kernel}")
    if choices.expects_flash_attention and not kernel.startswith("SDPA FLASH_ATTENTION"):
        seg.log(
            "WARNING: not the flash attention kernel; the memory plan assumes flash "
            "(train.memory_plan), so this run may need more memory than planned"
        )
    seg.log(
        f"layout: data {par.data} x tensor {par.tensor} ({settings.data_parallel}), "
        f"micro_batch {settings.micro_batch} x gas "
        f"{settings.accumulation_steps(par.data)}, "
        f"{'fused' if choices.fused_adamw else 'unfused'} AdamW"
    )
    n_params = count_parameters(model)
    _rank0_check(env, lambda: _check_disk_space(n_params, seg.out_dir, seg.state_dir, settings))

    start_state = ckpt.read_trainer_state(start_checkpoint) if start_checkpoint else None
    key = segment_key(seg.hf_config, settings, start_state, seg.start_step, seg.end_step)
    snapshot = None
    if seg.state_dir is not None:
        snapshot, stale = ckpt.find_snapshot(seg.state_dir, key)
        _rank0_check(env, lambda: _remove_stale(stale, seg.log))
    resume_from = snapshot or start_checkpoint
    progress = Progress.fresh(seg.start_step, seg.end_step, key, start_state)
    saved = None
    if resume_from is None:
        init_gpt_neox_weights(
            model,
            weight_seed=settings.weight_seed,
            init_method=settings.init_method,
            output_layer_init_method=settings.output_layer_init_method,
            base_std=settings.init_std,
        )
    else:
        saved, weights = ckpt.read_model_state(resume_from, hf_config=seg.hf_config)
        _check_resumable(resume_from, saved, settings, seg.start_step, seg.end_step, snapshot)
        load_hf_state_dict(model, weights, str(resume_from / "model.safetensors"))
        del weights
        if snapshot:
            progress = Progress.from_snapshot(saved)

    state = init_train_state(model, settings, env, device, progress, par, choices)
    seg.names = parallel.parameter_names(model, state.optimizer, hf_name)
    if saved is not None:
        owned = _owned_parameters(state.optimizer, seg.names)
        opt_state = ckpt.read_optimizer_state(resume_from, saved, owned)
        _load_optimizer_state(state.optimizer, owned, opt_state)
        if state.scaler is not None and saved.get("loss_scaler"):
            state.scaler.load_state_dict(saved["loss_scaler"])
        ckpt.restore_rng_state(saved["rng"])
        seg.log(f"starting at step {saved['step']} from {resume_from}")
    seg.fingerprints.hasher = _segment_hasher(seg.samples, settings, progress, env)
    seg.first_step = progress.step
    seg.started = time.perf_counter()
    return state


def _train_iteration(seg: Segment, state: TrainState, it: int) -> None:
    """Iteration ``it``: this rank's rows of the global batch, ``train_step``, the record, the
    log line, the hook, and a snapshot when due or when a rank got SIGTERM."""
    settings, env = state.settings, state.env
    t0 = time.perf_counter()
    seg.fingerprints.submit(it)  # rank 0, in the background while the step trains
    tokens = seg.batches.tokens(it, next_step=it + 1 if it + 1 < seg.end_step else None)
    result = train_step(state, tokens, stop_requested=seg.preempt.is_set())
    fingerprint = seg.fingerprints.result(it)
    dt = time.perf_counter() - t0
    tokens_per_s = settings.global_batch * settings.seq_length / dt
    _record_step(state.progress, it, result, tokens_per_s, fingerprint, settings, seg.log)
    if state.scaler is not None:  # fp16's scale after this step, for the TensorBoard curves
        state.progress.history[-1]["loss_scale"] = state.scaler.scale
    if (it + 1) % settings.log_interval == 0 or it + 1 == seg.end_step:
        _log_progress(seg, state, it, result, dt)
    seg.hook("step_end", it + 1)

    # One rank: its own flag, now. Several: the flag as the step's reduction agreed on it
    # (no extra host sync); a later SIGTERM is seen at the next step.
    preempted = seg.preempt.is_set() if env.world_size == 1 else result.stop_requested
    due = settings.state_interval and (it + 1) % settings.state_interval == 0
    if seg.state_dir is not None and (preempted or due) and it + 1 < seg.end_step:
        _save_snapshot(seg, state, it + 1)
        seg.hook("snapshot_saved", it + 1)
    if preempted:
        raise SegmentPreempted(
            f"SIGTERM received; stopped after step {it + 1} of {seg.end_step}"
            + (f", snapshot in {seg.state_dir}" if seg.state_dir is not None else "")
        )


def _log_progress(seg: Segment, state: TrainState, it: int, result: StepResult, dt: float) -> None:
    settings = state.settings
    done = it + 1 - seg.first_step
    elapsed = time.perf_counter() - seg.started
    eta = elapsed / max(done, 1) * (seg.end_step - it - 1)
    scale_note = f" | loss_scale {state.scaler.scale:g}" if state.scaler else ""
    seg.log(
        f"step {it + 1}/{seg.end_step} | loss {result.loss:.4f} | lr {result.lr:.3e} | "
        f"grad_norm {result.grad_norm:.3f} | tokens/s "
        f"{settings.global_batch * settings.seq_length / dt:.0f} | "
        f"eta {_format_eta(eta)}{scale_note}"
    )


def _save_checkpoint(seg: Segment, state: TrainState) -> dict:
    """Write ``out_dir`` (every rank: its optimizer shard) and drop the segment's snapshots."""
    env = state.env
    trainer_state = _trainer_state(seg, state, seg.end_step)
    hosts = _hosts(env)
    summary: dict = {}

    def summarise() -> dict:
        summary.update(segment_summary(seg, state, hosts))
        return summary

    ckpt.write_training_state(
        seg.out_dir,
        env=env,
        model_tensors=parallel.full_state_dict(state.model, env.is_main, hf_name, state.optimizer),
        optimizer_shard=_optimizer_shard(state, seg.names),
        trainer_state=trainer_state,
        hf_config=seg.hf_config,
        before_publish=lambda: seg.hook("before_publish", seg.end_step),
        # Last into the directory, inside its atomic rename: its wall time includes the save.
        last_files={SEGMENT_SUMMARY_NAME: summarise},
    )
    seg.log(f"wrote {seg.out_dir}")
    if summary.get("tokens_per_s"):
        mfu = f"{summary['mfu']:.1%}" if summary["mfu"] is not None else "n/a (no GPU peak)"
        seg.log(
            f"segment: {summary['steps']} steps, {summary['tokens_per_s']:.0f} tokens/s, "
            f"MFU {mfu}, wall {summary['wall_s']:.1f} s"
        )
    if seg.state_dir is not None:
        _rank0_check(env, lambda: ckpt.remove_snapshots(seg.state_dir))
    return trainer_state


def _save_snapshot(seg: Segment, state: TrainState, step: int) -> None:
    path = ckpt.snapshot_path(seg.state_dir, step)
    if path.exists():
        return  # resumed from this very snapshot and stopped again at once
    ckpt.write_training_state(
        path,
        env=state.env,
        model_tensors=parallel.full_state_dict(
            state.model, state.env.is_main, hf_name, state.optimizer
        ),
        optimizer_shard=_optimizer_shard(state, seg.names),
        trainer_state=_trainer_state(seg, state, step),
        hf_config=seg.hf_config,
    )
    # The new snapshot is complete: older ones of this segment are no longer needed.
    _rank0_check(state.env, lambda: ckpt.remove_snapshots(seg.state_dir, keep=path))
    seg.log(f"snapshot at step {step}: {path}")


def segment_summary(seg: Segment, state: TrainState, hosts: list[str]) -> dict:
    """The segment's summary record (``summary.SEGMENT_SUMMARY_NAME``), exactly its keys.

    Counts the whole segment ``(start_step, end_step]``, attempts before a resume included.
    ``flops_per_token``: ``config.transformer_flops_per_token`` (attention included, no
    recomputation). ``mfu`` = flops_per_token x tokens_per_s / (devices x peak), on CUDA with a
    known peak; ``None`` on CPU. Losses leave out fp16-skipped steps; ``None`` without steps.
    """
    settings, env, progress, hf = state.settings, state.env, state.progress, seg.hf_config
    dp_size, _ = data_parallel_coords(env, settings)
    flops = transformer_flops_per_token(
        layers=hf["num_hidden_layers"],
        hidden=hf["hidden_size"],
        intermediate=hf["intermediate_size"],
        seq_length=settings.seq_length,
        vocab=hf["vocab_size"],
    )
    choices = state.choices
    return segment_summary_record(
        run=seg.run_info.run,
        size=seg.run_info.size,
        start_step=seg.start_step,
        end_step=seg.end_step,
        steps=len(progress.history),
        skipped_steps=sum(1 for r in progress.history if r["skipped"]),
        tokens_per_step=settings.global_batch * settings.seq_length,
        train_time_s=progress.train_time_s,
        wall_s=progress.wall_s + time.perf_counter() - seg.begun,
        flops_per_token=flops,
        peak_tflops=seg.run_info.gpu_peak_tflops if choices.gpu_summary else None,
        device_kind=state.device.type,
        device_name=choices.device_name(),
        devices=env.world_size,
        nodes=len(hosts),
        data_parallel=dp_size,
        tensor_parallel=settings.tensor_parallel,
        micro_batch=settings.micro_batch,
        gas=settings.accumulation_steps(dp_size),
        precision=settings.precision,
        losses=[r["loss"] for r in progress.history if not r["skipped"]],
        spikes=progress.spikes,
        started_at=progress.started_at,
        hosts=hosts,
    )


def _hosts(env: DistributedEnv) -> list[str]:
    """Host names of every rank, sorted, once each (collective)."""
    names = [socket.gethostname()]
    if env.world_size > 1:
        names = [None] * env.world_size
        dist.all_gather_object(names, socket.gethostname())
    return sorted(set(names))


# ----------------------------------------------------------------------------- optimizer state


def _owned_parameters(optimizer: torch.optim.Optimizer, names: dict[int, str]) -> dict:
    """HF name -> parameter, for the parameters whose optimizer state this rank keeps."""
    local = local_optimizer(optimizer)
    return {names[id(p)]: p for group in local.param_groups for p in group["params"]}


def _optimizer_shard(state: TrainState, names: dict[int, str]) -> dict:
    """This rank's AdamW state keyed by HF parameter name, as CPU blocks with their offsets
    (``parallel.optimizer_blocks``): any (data, tensor) layout can load it."""
    return parallel.optimizer_blocks(local_optimizer(state.optimizer), names, state.par)


def _load_optimizer_state(
    optimizer: torch.optim.Optimizer, owned: dict[str, torch.Tensor], state: dict[str, dict]
) -> None:
    local = local_optimizer(optimizer)
    for name, param_state in state.items():
        local.state[owned[name]] = param_state


# ----------------------------------------------------------------------------- loop helpers


def _check_arguments(
    settings: TrainSettings,
    env: DistributedEnv,
    choices: DeviceChoices,
    start_checkpoint: Path | None,
    start_step: int,
    end_step: int,
    out_dir: Path,
    state_dir: Path | None,
) -> None:
    if not 0 <= start_step <= end_step:
        raise ValueError(f"need 0 <= start_step <= end_step, got {start_step} and {end_step}")
    if start_checkpoint is None and start_step != 0:
        raise ValueError(
            f"start_checkpoint=None (fresh weights) needs start_step=0, got {start_step}"
        )
    dp_size, _ = data_parallel_coords(env, settings)  # both raise layout.LayoutError
    settings.accumulation_steps(dp_size)
    if settings.precision == "fp16" and not choices.fp16_compute:
        raise ValueError("precision 'fp16' needs a CUDA device; use 'fp32' (or 'bf16') on CPU")
    if out_dir.exists():
        raise FileExistsError(f"{out_dir} already exists; refusing to overwrite a checkpoint")
    if state_dir is not None and state_dir.resolve() == out_dir.resolve():
        raise ValueError(f"state_dir must differ from out_dir ({out_dir})")


def _check_disk_space(
    n_params: int, out_dir: Path, state_dir: Path | None, settings: TrainSettings
) -> None:
    needs = {out_dir.parent: ckpt.estimate_state_bytes(n_params)}
    if state_dir is not None and settings.state_interval:
        # A new snapshot is complete before the previous one is removed: room for two.
        needs[state_dir] = 2 * ckpt.estimate_state_bytes(n_params)
    ckpt.check_free_space(needs)


def _remove_stale(stale: list[Path], log_line: _Log) -> None:
    """Snapshots of another segment (older config, abandoned run) can never resume: free them."""
    for path in stale:
        log_line(f"removing snapshot of another segment: {path}")
        shutil.rmtree(path, ignore_errors=True)


def _check_resumable(
    path: Path,
    saved: dict,
    settings: TrainSettings,
    start_step: int,
    end_step: int,
    snapshot: Path | None,
) -> None:
    state_file = path / "trainer_state.json"
    for key in ("global_batch", "seq_length"):
        if saved[key] != getattr(settings, key):
            raise ckpt.CheckpointError(
                f"{state_file}: key {key!r} is {saved[key]}, this run has {getattr(settings, key)}"
            )
    if snapshot is None and saved["step"] != start_step:
        raise ckpt.CheckpointError(
            f"{state_file}: key 'step' is {saved['step']}, expected start_step {start_step}"
        )
    if snapshot is not None and not start_step < saved["step"] <= end_step:
        raise ckpt.CheckpointError(
            f"{state_file}: snapshot step {saved['step']} is outside ({start_step}, {end_step}]"
        )


def _check_batch(batch: np.ndarray, it: int, settings: TrainSettings) -> None:
    expected = (settings.global_batch, settings.seq_length + 1)
    if tuple(batch.shape) != expected:
        raise ValueError(f"samples.batch({it}) has shape {tuple(batch.shape)}, expected {expected}")
    if not np.issubdtype(batch.dtype, np.integer):
        raise ValueError(f"samples.batch({it}) has dtype {batch.dtype}, expected integer ids")


def _segment_hasher(
    samples: BatchSource, settings: TrainSettings, progress: Progress, env: DistributedEnv
):
    """sha256 over every token id the segment consumed so far (rank 0 only).

    After a resume the batches before the snapshot are hashed again and checked against the
    per-step digests recorded then: a data order that changed underneath fails loudly.
    """
    hasher = hashlib.sha256()
    if not env.is_main:
        return hasher
    for record in progress.history:
        batch = samples.batch(record["iteration"], settings.global_batch)
        if batch_fingerprint(batch) != record["tokens_sha256"]:
            raise ckpt.CheckpointError(
                f"samples.batch({record['iteration']}) differs from the batch the snapshot "
                "recorded: the data order changed since the snapshot was taken"
            )
        hasher.update(np.ascontiguousarray(batch, dtype="<i8").tobytes())
    return hasher


def _record_step(
    progress: Progress,
    it: int,
    result: StepResult,
    tokens_per_s: float,
    fingerprint: str,
    settings: TrainSettings,
    log_line: _Log,
) -> None:
    """Append the step to the history; detect a loss spike against the running mean."""
    recent, loss = progress.recent_losses, result.loss
    min_count = min(10, settings.spike_window)
    if not result.skipped and len(recent) >= min_count:
        running_mean = sum(recent) / len(recent)
        if loss > settings.spike_factor * running_mean:
            progress.spikes.append({"step": it + 1, "loss": loss, "running_mean": running_mean})
            log_line(
                f"SPIKE step {it + 1} | loss {loss:.4f} > {settings.spike_factor:g} x "
                f"running mean {running_mean:.4f}"
            )
    if not result.skipped:
        recent.append(loss)
        del recent[: max(0, len(recent) - settings.spike_window)]
    progress.history.append(
        {
            "iteration": it,
            "step": it + 1,
            "loss": loss,
            "lr": result.lr,
            "grad_norm": result.grad_norm,
            "skipped": result.skipped,
            "tokens_per_s": tokens_per_s,
            "tokens_sha256": fingerprint,
        }
    )
    progress.train_time_s += settings.global_batch * settings.seq_length / tokens_per_s
    progress.step = it + 1


def _trainer_state(seg: Segment, state: TrainState, step: int) -> dict:
    """``trainer_state.json`` of a checkpoint or snapshot at ``step``."""
    settings, env, progress = state.settings, state.env, state.progress
    history = progress.history
    tokens = len(history) * settings.global_batch * settings.seq_length
    return {
        "format": ckpt.TRAINER_STATE_FORMAT,
        "step": step,
        "segment": {"start_step": progress.start_step, "end_step": progress.end_step},
        "segment_key": progress.segment_key,
        "world_size": env.world_size,
        "global_batch": settings.global_batch,
        "seq_length": settings.seq_length,
        "consumed_samples": step * settings.global_batch,
        "scheduler": {
            "iteration": progress.scheduler_iteration,
            "next_lr": lr_at(
                progress.scheduler_iteration,
                lr=settings.lr,
                min_lr=settings.min_lr,
                warmup_iters=settings.warmup_iters,
                decay_iters=settings.decay_iters,
            ),
        },
        "loss_scaler": state.scaler.state_dict() if state.scaler else None,
        "rng": ckpt.capture_rng_state(),
        "losses": [r["loss"] for r in history],
        "history": history,
        "spikes": progress.spikes,
        "recent_losses": progress.recent_losses,
        "train_time_s": progress.train_time_s,
        "wall_s": progress.wall_s + time.perf_counter() - seg.begun,
        "started_at": progress.started_at,
        "tokens_per_s": tokens / progress.train_time_s if progress.train_time_s else None,
        "data_fingerprint": {
            "algorithm": "sha256 over int64 little-endian token ids, batch rows in order",
            "segment": seg.fingerprints.hexdigest(),
            "steps": {str(r["iteration"]): r["tokens_sha256"] for r in history},
        },
        "settings": dataclasses.asdict(settings),
    }
