"""Train one checkpoint segment ``(start_step, end_step]`` of a Pythia run with plain PyTorch.

One process per device; data parallel (DDP) with ZeRO-1 optimizer-state sharding
(``ZeroRedundancyOptimizer``) and gradient accumulation. Iteration ``s`` (0-based) consumes the
global batch ``samples.batch(s, global_batch)`` whatever the world size: rank ``r`` takes rows
``[r*B/W, (r+1)*B/W)`` and its micro-step ``m`` the ``m``-th ``micro_batch`` rows of those. The
loss is the mean over the global batch. GPT-NeoX v1.0 semantics otherwise: see ``model`` (init)
and ``optim`` (decay groups, LR schedule, loss scaler).

``train_segment`` is the whole story, top to bottom: set up, restore (start checkpoint or the
newest in-segment snapshot), loop, save. With ``state_interval > 0`` it snapshots its state to
``state_dir`` every ``state_interval`` steps so that a killed or preempted run continues where it
stopped; at the same world size the final weights are bit-identical to an uninterrupted run
(CPU, ``deterministic=True``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import math
import os
import shutil
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, TextIO

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from . import checkpoint as ckpt
from . import parallel
from .distributed import DistributedEnv, default_device, detect_distributed_env, distributed_context
from .model import (
    INIT_METHODS,
    OUTPUT_LAYER_INIT_METHODS,
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

__all__ = [
    "TrainSettings",
    "BatchSource",
    "NonFiniteLossError",
    "SegmentPreempted",
    "train_segment",
    "batch_fingerprint",
    "segment_key",
]

PRECISIONS = ("fp32", "fp16", "bf16")
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
)


class BatchSource(Protocol):
    """What the trainer needs from the data side (``GPTNeoXSamples``, ``PreshuffledSamples``)."""

    def batch(self, step: int, global_batch: int) -> np.ndarray:
        """int64 array ``(global_batch, seq_length + 1)``: samples ``[step*B, (step+1)*B)``."""
        ...


@dataclass(frozen=True)
class TrainSettings:
    """Every hyperparameter of a segment (Pythia's values as defaults where they are shared).

    ``micro_batch`` is sequences per rank per micro-step; gradient accumulation steps follow as
    ``global_batch / (world_size * micro_batch)``. ``state_interval`` = snapshot every k steps
    (0: never). ``deterministic`` turns on ``torch.use_deterministic_algorithms``.
    """

    global_batch: int
    micro_batch: int
    seq_length: int
    lr: float
    min_lr: float
    warmup_iters: int
    decay_iters: int
    weight_decay: float = 0.1
    adam_beta1: float = 0.9
    adam_beta2: float = 0.95
    adam_eps: float = 1e-8
    grad_clip: float = 1.0
    init_method: str = "small_init"
    output_layer_init_method: str = "wang_init"
    init_std: float = 0.02
    weight_seed: int = 1234
    precision: str = "fp32"
    loss_scale_initial: float = 2.0**12
    loss_scale_window: int = 1000
    loss_scale_hysteresis: int = 2
    loss_scale_min: float = 1.0
    spike_factor: float = 2.0
    spike_window: int = 100
    log_interval: int = 10
    state_interval: int = 0
    deterministic: bool = False
    zero_optimizer: bool = True
    tensor_parallel: int = 1
    data_parallel: str = "zero1"
    partition_activations: bool = False

    def validate(self) -> None:
        """Raise ``ValueError`` naming the first setting whose value is out of range."""
        positive = (
            "global_batch",
            "micro_batch",
            "seq_length",
            "decay_iters",
            "log_interval",
            "tensor_parallel",
        )
        for name in positive:
            if getattr(self, name) <= 0:
                raise ValueError(f"TrainSettings.{name} must be > 0, got {getattr(self, name)}")
        for name in ("warmup_iters", "state_interval", "lr", "min_lr", "weight_decay", "grad_clip"):
            if getattr(self, name) < 0:
                raise ValueError(f"TrainSettings.{name} must be >= 0, got {getattr(self, name)}")
        if self.precision not in PRECISIONS:
            raise ValueError(
                f"TrainSettings.precision must be one of {PRECISIONS}, got {self.precision!r}"
            )
        if self.init_method not in INIT_METHODS:
            raise ValueError(
                f"TrainSettings.init_method must be one of {INIT_METHODS}, got {self.init_method!r}"
            )
        if self.output_layer_init_method not in OUTPUT_LAYER_INIT_METHODS:
            raise ValueError(
                f"TrainSettings.output_layer_init_method must be one of "
                f"{OUTPUT_LAYER_INIT_METHODS}, got {self.output_layer_init_method!r}"
            )
        if self.data_parallel not in parallel.DATA_PARALLEL_MODES:
            raise ValueError(
                f"TrainSettings.data_parallel must be one of {parallel.DATA_PARALLEL_MODES}, "
                f"got {self.data_parallel!r}"
            )
        if self.spike_factor <= 1.0:
            raise ValueError(f"TrainSettings.spike_factor must be > 1, got {self.spike_factor}")


class NonFiniteLossError(RuntimeError):
    """The loss (or gradient norm) became NaN/inf at the named step; nothing was saved for it."""


class SegmentPreempted(RuntimeError):
    """SIGTERM arrived; a snapshot was saved (if a state dir was given). Exit non-zero."""


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


def _any_rank(env: DistributedEnv, flag: bool, device: torch.device) -> bool:
    """True on every rank when ``flag`` is true on at least one."""
    if env.world_size == 1:
        return flag
    t = torch.tensor([1.0 if flag else 0.0], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


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


# ----------------------------------------------------------------------------- optimizer state


def _param_names(model: nn.Module) -> dict[int, str]:
    return {id(p): hf_name(n) for n, p in model.named_parameters()}


def _owned_parameters(optimizer: torch.optim.Optimizer, names: dict[int, str]) -> dict:
    """HF name -> parameter, for the parameters whose optimizer state this rank keeps."""
    local = local_optimizer(optimizer)
    return {names[id(p)]: p for group in local.param_groups for p in group["params"]}


def _load_optimizer_state(
    optimizer: torch.optim.Optimizer, owned: dict[str, torch.Tensor], state: dict[str, dict]
) -> None:
    local = local_optimizer(optimizer)
    for name, param_state in state.items():
        local.state[owned[name]] = param_state


# ----------------------------------------------------------------------------- one update


def _forward_backward(
    model: nn.Module,
    tokens: torch.Tensor,
    *,
    micro_batch: int,
    loss_scale: float,
    autocast: Callable[[], contextlib.AbstractContextManager],
    par: parallel.Parallelism,
) -> torch.Tensor:
    """Accumulate the gradients of this data rank's rows; return their mean loss (not scaled).

    Each micro-step's loss is divided by the number of micro-steps, and the data-parallel
    reduction averages over the data ranks, so the gradient is that of the mean loss over the
    global batch. Under tensor parallelism the logits stay vocabulary-sharded (loss_parallel).
    """
    n_micro = tokens.shape[0] // micro_batch
    total = torch.zeros((), device=tokens.device)
    for m in range(n_micro):
        chunk = tokens[m * micro_batch : (m + 1) * micro_batch]
        inputs, labels = chunk[:, :-1], chunk[:, 1:]
        # Reduce gradients across data ranks only once, after the last micro-step.
        with parallel.gradient_sync(model, par, m == n_micro - 1), parallel.loss_context(par):
            with autocast():
                logits = model(input_ids=inputs).logits
            loss = parallel.causal_lm_loss(logits, labels)
            (loss * (loss_scale / n_micro)).backward()
        total += parallel.scalar(loss.detach()) / n_micro
    return total


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
    available, else the CPU. Returns the ``trainer_state`` written with the checkpoint.

    Raises ``ValueError`` for inconsistent arguments, ``FileExistsError`` if ``out_dir``
    exists, ``ckpt.CheckpointError`` for a start checkpoint that does not match,
    ``ckpt.StateDirLockedError``, ``ckpt.InsufficientDiskSpaceError``, ``NonFiniteLossError``
    (naming the step; nothing is saved for it) and ``SegmentPreempted`` after SIGTERM.
    """
    settings.validate()
    env = env or detect_distributed_env()
    device = torch.device(device) if device is not None else default_device(env)
    out_dir = Path(out_dir)
    state_dir = Path(state_dir) if state_dir is not None else None
    start_checkpoint = Path(start_checkpoint) if start_checkpoint is not None else None
    hook = hook or (lambda event, step: None)
    _check_arguments(
        settings, env, device, start_checkpoint, start_step, end_step, out_dir, state_dir
    )
    log_line = _Log(log, enabled=env.is_main)

    with contextlib.ExitStack() as stack:
        stack.callback(log_line.close)
        stack.enter_context(distributed_context(env, device))
        stack.enter_context(_deterministic(settings.deterministic))
        preempt = stack.enter_context(_sigterm_flag())
        if state_dir is not None and env.is_main:
            # Held by rank 0 for the whole segment; the failure reaches every rank below.
            _rank0_check(env, lambda: stack.enter_context(ckpt.state_dir_lock(state_dir)))
        elif state_dir is not None:
            _rank0_check(env, lambda: None)

        # --- model and optimizer ---------------------------------------------------------
        # The (data, tensor) mesh; the model is sharded before its values are set, so that a
        # rank never holds more than its block (plus one full parameter on the CPU at a time).
        par = parallel.build_parallelism(
            env.world_size,
            settings.tensor_parallel,
            device,
            settings.data_parallel,
        )
        ranks_rows = settings.global_batch // par.data
        # Every parameter is overwritten below (GPT-NeoX init or the checkpoint's weights).
        model = build_model(hf_config, device, empty=True)
        parallel.prepare_model(
            model,
            par,
            precision=settings.precision,
            partition_activations=settings.partition_activations,
        )
        names = _param_names(model)
        n_params = count_parameters(model)
        _rank0_check(env, lambda: _check_disk_space(n_params, out_dir, state_dir, settings))
        optimizer = parallel.build_optimizer(
            build_param_groups(model, settings.weight_decay),
            par,
            betas=(settings.adam_beta1, settings.adam_beta2),
            eps=settings.adam_eps,
            sharded=settings.zero_optimizer,
        )
        scaler = (
            DynamicLossScaler(
                settings.loss_scale_initial,
                settings.loss_scale_window,
                settings.loss_scale_hysteresis,
                settings.loss_scale_min,
            )
            if settings.precision == "fp16"
            else None
        )

        # --- where to start: fresh weights, the start checkpoint, or a newer snapshot ----
        start_state = ckpt.read_trainer_state(start_checkpoint) if start_checkpoint else None
        key = segment_key(hf_config, settings, start_state, start_step, end_step)
        snapshot = None
        if state_dir is not None:
            snapshot, stale = ckpt.find_snapshot(state_dir, key)
            _rank0_check(env, lambda: _remove_stale(stale, log_line))
        resume_from = snapshot or start_checkpoint
        if resume_from is None:
            init_gpt_neox_weights(
                model,
                weight_seed=settings.weight_seed,
                init_method=settings.init_method,
                output_layer_init_method=settings.output_layer_init_method,
                base_std=settings.init_std,
            )
            progress = _fresh_progress(start_step, end_step, key, start_state)
        else:
            owned = _owned_parameters(optimizer, names)
            saved, weights, opt_state = ckpt.read_training_state(
                resume_from, hf_config=hf_config, owned=owned
            )
            _check_resumable(resume_from, saved, settings, start_step, end_step, snapshot)
            load_hf_state_dict(model, weights, str(resume_from / "model.safetensors"))
            del weights
            _load_optimizer_state(optimizer, owned, opt_state)
            if scaler is not None and saved.get("loss_scaler"):
                scaler.load_state_dict(saved["loss_scaler"])
            ckpt.restore_rng_state(saved["rng"])
            progress = (
                _progress_from_snapshot(saved)
                if snapshot
                else _fresh_progress(start_step, end_step, key, start_state)
            )
            log_line(f"starting at step {saved['step']} from {resume_from}")
        segment_hash = _segment_hasher(samples, settings, progress, env)

        # The only buffer (rotary inv_freq) is computed identically on every rank: no sync.
        autocast = _autocast_factory(settings.precision, device)
        params = [p for p in model.parameters()]
        tokens_per_step = settings.global_batch * settings.seq_length

        # --- the loop ----------------------------------------------------------------------
        first_step = progress["step"]
        t_segment = time.perf_counter()
        for it in range(first_step, end_step):
            t0 = time.perf_counter()
            batch = samples.batch(it, settings.global_batch)
            _check_batch(batch, it, settings)
            fingerprint = batch_fingerprint(batch)
            if env.is_main:
                segment_hash.update(np.ascontiguousarray(batch, dtype="<i8").tobytes())
            rows = batch[par.data_rank * ranks_rows : (par.data_rank + 1) * ranks_rows]
            tokens = torch.from_numpy(np.ascontiguousarray(rows, dtype=np.int64)).to(device)

            loss_scale = scaler.scale if scaler else 1.0
            local_loss = _forward_backward(
                model,
                tokens,
                micro_batch=settings.micro_batch,
                loss_scale=loss_scale,
                autocast=autocast,
                par=par,
            )
            parallel.all_reduce_gradients(params, par)
            loss = _mean_over_ranks(local_loss, env)
            if loss_scale != 1.0:
                for p in params:
                    if p.grad is not None:
                        p.grad.mul_(1.0 / loss_scale)
            grad_norm = float(parallel.clip_grad_norm(params, settings.grad_clip))
            overflow = not (math.isfinite(loss) and math.isfinite(grad_norm))
            if overflow and scaler is None:
                what = "loss" if not math.isfinite(loss) else "gradient norm"
                raise NonFiniteLossError(
                    f"{what} is not finite at iteration {it} (the update to step {it + 1}): "
                    f"loss={loss}, grad_norm={grad_norm}; stopping before anything is saved"
                )
            lr = lr_at(
                progress["scheduler_iteration"],
                lr=settings.lr,
                min_lr=settings.min_lr,
                warmup_iters=settings.warmup_iters,
                decay_iters=settings.decay_iters,
            )
            if overflow:
                # fp16 overflow: DeepSpeed skips the update and the LR schedule does not advance.
                optimizer.zero_grad(set_to_none=True)
                scaler.update(True)
            else:
                set_lr(optimizer, lr)
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                progress["scheduler_iteration"] += 1
                if scaler is not None:
                    scaler.update(False)
            dt = time.perf_counter() - t0

            _record_step(
                progress,
                it,
                loss,
                lr,
                grad_norm,
                overflow,
                tokens_per_step / dt,
                fingerprint,
                settings,
                log_line,
            )
            done = it + 1 - first_step
            if (it + 1) % settings.log_interval == 0 or it + 1 == end_step:
                elapsed = time.perf_counter() - t_segment
                eta = elapsed / done * (end_step - it - 1)
                scale_note = f" | loss_scale {scaler.scale:g}" if scaler else ""
                log_line(
                    f"step {it + 1}/{end_step} | loss {loss:.4f} | lr {lr:.3e} | "
                    f"grad_norm {grad_norm:.3f} | tokens/s {tokens_per_step / dt:.0f} | "
                    f"eta {_format_eta(eta)}{scale_note}"
                )
            hook("step_end", it + 1)

            preempted = _any_rank(env, preempt.is_set(), device)
            due = settings.state_interval and (it + 1) % settings.state_interval == 0
            if state_dir is not None and (preempted or due) and it + 1 < end_step:
                _save_snapshot(
                    state_dir,
                    it + 1,
                    model,
                    optimizer,
                    names,
                    scaler,
                    progress,
                    segment_hash,
                    hf_config,
                    settings,
                    env,
                    par,
                    log_line,
                )
                hook("snapshot_saved", it + 1)
            if preempted:
                raise SegmentPreempted(
                    f"SIGTERM received; stopped after step {it + 1} of {end_step}"
                    + (f", snapshot in {state_dir}" if state_dir is not None else "")
                )

        # --- the checkpoint -----------------------------------------------------------------
        trainer_state = _trainer_state(end_step, scaler, progress, segment_hash, settings, env)
        ckpt.write_training_state(
            out_dir,
            env=env,
            model_tensors=parallel.full_state_dict(model, env.is_main, hf_name),
            optimizer_shard=parallel.optimizer_blocks(local_optimizer(optimizer), names, par),
            trainer_state=trainer_state,
            hf_config=hf_config,
            before_publish=lambda: hook("before_publish", end_step),
        )
        log_line(f"wrote {out_dir}")
        if state_dir is not None:
            _rank0_check(env, lambda: ckpt.remove_snapshots(state_dir))
        return trainer_state


# ----------------------------------------------------------------------------- loop helpers


def _check_arguments(
    settings: TrainSettings,
    env: DistributedEnv,
    device: torch.device,
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
    if env.world_size % settings.tensor_parallel:
        raise ValueError(
            f"tensor_parallel {settings.tensor_parallel} does not divide world_size "
            f"{env.world_size}"
        )
    data_parallel = env.world_size // settings.tensor_parallel
    rows_per_step = data_parallel * settings.micro_batch
    if settings.global_batch % rows_per_step:
        raise ValueError(
            f"global_batch {settings.global_batch} is not a multiple of data-parallel ranks "
            f"{data_parallel} x micro_batch {settings.micro_batch}"
        )
    if settings.precision == "fp16" and device.type != "cuda":
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


def _mean_over_ranks(local_loss: torch.Tensor, env: DistributedEnv) -> float:
    if env.world_size > 1:
        local_loss = local_loss.clone()
        dist.all_reduce(local_loss, op=dist.ReduceOp.SUM)
        local_loss /= env.world_size
    return float(local_loss)


def _autocast_factory(precision: str, device: torch.device):
    if precision == "fp32":
        return contextlib.nullcontext
    dtype = torch.float16 if precision == "fp16" else torch.bfloat16
    return lambda: torch.autocast(device_type=device.type, dtype=dtype)


def _fresh_progress(start_step: int, end_step: int, key: str, start_state: dict | None) -> dict:
    """Per-segment bookkeeping at the segment's start (history empty)."""
    carried = start_state or {}
    return {
        "step": start_step,
        "start_step": start_step,
        "end_step": end_step,
        "segment_key": key,
        "scheduler_iteration": carried.get("scheduler", {}).get("iteration", 0),
        "history": [],
        "spikes": [],
        # The spike detector's window carries over from the previous segment.
        "recent_losses": list(carried.get("recent_losses", [])),
        "train_time_s": 0.0,
    }


def _progress_from_snapshot(saved: dict) -> dict:
    return {
        "step": saved["step"],
        "start_step": saved["segment"]["start_step"],
        "end_step": saved["segment"]["end_step"],
        "segment_key": saved["segment_key"],
        "scheduler_iteration": saved["scheduler"]["iteration"],
        "history": saved["history"],
        "spikes": saved["spikes"],
        "recent_losses": saved["recent_losses"],
        "train_time_s": saved["train_time_s"],
    }


def _segment_hasher(
    samples: BatchSource, settings: TrainSettings, progress: dict, env: DistributedEnv
):
    """sha256 over every token id the segment consumed so far (rank 0 only).

    After a resume the batches before the snapshot are hashed again and checked against the
    per-step digests recorded then: a data order that changed underneath fails loudly.
    """
    hasher = hashlib.sha256()
    if not env.is_main:
        return hasher
    for record in progress["history"]:
        batch = samples.batch(record["iteration"], settings.global_batch)
        if batch_fingerprint(batch) != record["tokens_sha256"]:
            raise ckpt.CheckpointError(
                f"samples.batch({record['iteration']}) differs from the batch the snapshot "
                "recorded: the data order changed since the snapshot was taken"
            )
        hasher.update(np.ascontiguousarray(batch, dtype="<i8").tobytes())
    return hasher


def _record_step(
    progress: dict,
    it: int,
    loss: float,
    lr: float,
    grad_norm: float,
    skipped: bool,
    tokens_per_s: float,
    fingerprint: str,
    settings: TrainSettings,
    log_line: _Log,
) -> None:
    """Append the step to the history; detect a loss spike against the running mean."""
    recent = progress["recent_losses"]
    min_count = min(10, settings.spike_window)
    if not skipped and len(recent) >= min_count:
        running_mean = sum(recent) / len(recent)
        if loss > settings.spike_factor * running_mean:
            progress["spikes"].append({"step": it + 1, "loss": loss, "running_mean": running_mean})
            log_line(
                f"SPIKE step {it + 1} | loss {loss:.4f} > {settings.spike_factor:g} x "
                f"running mean {running_mean:.4f}"
            )
    if not skipped:
        recent.append(loss)
        del recent[: max(0, len(recent) - settings.spike_window)]
    progress["history"].append(
        {
            "iteration": it,
            "step": it + 1,
            "loss": loss,
            "lr": lr,
            "grad_norm": grad_norm,
            "skipped": skipped,
            "tokens_per_s": tokens_per_s,
            "tokens_sha256": fingerprint,
        }
    )
    progress["train_time_s"] += settings.global_batch * settings.seq_length / tokens_per_s
    progress["step"] = it + 1


def _trainer_state(
    step: int,
    scaler: DynamicLossScaler | None,
    progress: dict,
    segment_hash,
    settings: TrainSettings,
    env: DistributedEnv,
) -> dict:
    history = progress["history"]
    tokens = len(history) * settings.global_batch * settings.seq_length
    return {
        "format": ckpt.TRAINER_STATE_FORMAT,
        "step": step,
        "segment": {"start_step": progress["start_step"], "end_step": progress["end_step"]},
        "segment_key": progress["segment_key"],
        "world_size": env.world_size,
        "global_batch": settings.global_batch,
        "seq_length": settings.seq_length,
        "consumed_samples": step * settings.global_batch,
        "scheduler": {
            "iteration": progress["scheduler_iteration"],
            "next_lr": lr_at(
                progress["scheduler_iteration"],
                lr=settings.lr,
                min_lr=settings.min_lr,
                warmup_iters=settings.warmup_iters,
                decay_iters=settings.decay_iters,
            ),
        },
        "loss_scaler": scaler.state_dict() if scaler else None,
        "rng": ckpt.capture_rng_state(),
        "losses": [r["loss"] for r in history],
        "history": history,
        "spikes": progress["spikes"],
        "recent_losses": progress["recent_losses"],
        "train_time_s": progress["train_time_s"],
        "tokens_per_s": tokens / progress["train_time_s"] if progress["train_time_s"] else None,
        "data_fingerprint": {
            "algorithm": "sha256 over int64 little-endian token ids, batch rows in order",
            "segment": segment_hash.hexdigest() if env.is_main else None,
            "steps": {str(r["iteration"]): r["tokens_sha256"] for r in history},
        },
        "settings": dataclasses.asdict(settings),
    }


def _save_snapshot(
    state_dir: Path,
    step: int,
    model: nn.Module,
    optimizer,
    names,
    scaler,
    progress: dict,
    segment_hash,
    hf_config: dict,
    settings: TrainSettings,
    env: DistributedEnv,
    par: parallel.Parallelism,
    log_line: _Log,
) -> None:
    path = ckpt.snapshot_path(state_dir, step)
    if path.exists():
        return  # resumed from this very snapshot and stopped again at once
    ckpt.write_training_state(
        path,
        env=env,
        model_tensors=parallel.full_state_dict(model, env.is_main, hf_name),
        optimizer_shard=parallel.optimizer_blocks(local_optimizer(optimizer), names, par),
        trainer_state=_trainer_state(step, scaler, progress, segment_hash, settings, env),
        hf_config=hf_config,
    )
    # The new snapshot is complete: older ones of this segment are no longer needed.
    _rank0_check(env, lambda: ckpt.remove_snapshots(state_dir, keep=path))
    log_line(f"snapshot at step {step}: {path}")
