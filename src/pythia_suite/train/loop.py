"""Train one checkpoint segment ``(start_step, end_step]`` of a Pythia run with plain PyTorch.

One process per device on a (data, tensor) mesh (``parallel``): tensor parallelism
(``sizes.*.tensor_parallel``), data parallelism with ZeRO-1 or FSDP2, gradient accumulation.
Iteration ``s`` (0-based) consumes the global batch ``samples.batch(s, global_batch)`` whatever
the layout: data-parallel rank ``r`` of ``D`` reads only rows ``[r*B/D, (r+1)*B/D)`` (every rank
of a tensor group the same rows; ``batches``) and its micro-step ``m`` trains on the ``m``-th
``micro_batch`` rows of those. The loss is the mean over the global batch (``loss``). GPT-NeoX
v1.0 semantics otherwise: see ``model`` (init) and ``optim`` (decay groups, LR schedule, loss
scaler, the optimizers).

``train_segment`` is the whole story, top to bottom: ``_set_up`` (model, weights from the start
checkpoint or the newest in-segment snapshot, optimizer), ``_train_iteration`` per step (around
``step.train_step``, one optimizer update), ``_save_checkpoint``. The state one step changes is
a ``step.TrainState``; a step's outcome a ``step.StepResult``; what the segment reads, writes
and reports a ``Segment``.

With ``state_interval > 0`` it snapshots its state to
``state_dir`` every ``state_interval`` steps so that a killed or preempted run continues where it
stopped; at the same world size the final weights are bit-identical to an uninterrupted run
(CPU, ``deterministic=True``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import shutil
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

import torch
import torch.distributed as dist

from ..config import transformer_flops_per_token
from . import checkpoint as ckpt
from . import parallel
from .batches import BatchSource, Fingerprints, Prefetcher, data_parallel_coords
from .device import DeviceChoices, device_choices
from .distributed import DistributedEnv, default_device, detect_distributed_env, distributed_context
from .model import count_parameters, hf_name, init_gpt_neox_weights, load_hf_state_dict
from .optim import MasterWeightOptimizer, local_optimizer, lr_at, parameter_names
from .settings import TrainSettings
from .step import (
    Progress,
    StepResult,
    TrainState,
    attention_kernel,
    init_train_state,
    prepare_model,
    train_step,
)
from .summary import SEGMENT_SUMMARY_NAME, segment_summary_record

__all__ = [
    "SegmentPreempted",
    "RunInfo",
    "Segment",
    "train_segment",
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


# ----------------------------------------------------------------------------- segment state


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
    batches: Prefetcher
    fingerprints: Fingerprints
    names: dict[int, str] = field(default_factory=dict)  # id(parameter) -> HF name
    run_info: RunInfo = field(default_factory=RunInfo)
    first_step: int = 0  # where this process started training (after a resume: the snapshot)
    begun: float = field(default_factory=time.perf_counter)  # this process's wall clock
    started: float = field(default_factory=time.perf_counter)  # the first step's start


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
    ``ckpt.StateDirLockedError``, ``ckpt.InsufficientDiskSpaceError``,
    ``step.NonFiniteLossError`` (naming the step; nothing is saved for it) and
    ``SegmentPreempted`` after SIGTERM.
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
                Prefetcher(samples, settings, env, device, choices.pin_memory)
            ),
            fingerprints=stack.enter_context(Fingerprints(samples, settings, env.is_main)),
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
    seg.names = parameter_names(model, state.optimizer, hf_name)
    if saved is not None:
        owned = _owned_parameters(state.optimizer, seg.names)
        opt_state = ckpt.read_optimizer_state(resume_from, saved, owned)
        _load_optimizer_state(state.optimizer, owned, opt_state)
        if state.scaler is not None and saved.get("loss_scaler"):
            state.scaler.load_state_dict(saved["loss_scaler"])
        ckpt.restore_rng_state(saved["rng"])
        seg.log(f"starting at step {saved['step']} from {resume_from}")
    seg.fingerprints.replay(progress.history)
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
        model_tensors=_full_weights(state),
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
        model_tensors=_full_weights(state),
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


def _full_weights(state: TrainState) -> dict | None:
    """The full fp32 weights under their HF names on rank 0, else None (collective): the
    optimizer's fp32 masters where it keeps them (``optim.MasterWeightOptimizer``)."""
    optimizer = state.optimizer
    master = optimizer.gathered_master if isinstance(optimizer, MasterWeightOptimizer) else None
    return parallel.full_state_dict(state.model, state.env.is_main, hf_name, master)


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
