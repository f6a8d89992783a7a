"""One optimizer step of the PyTorch backend, and the state it runs on.

``prepare_model`` builds the model as it trains (activation checkpointing, compiled layers);
``init_train_state`` parallelises it (``parallelize``: tensor parallelism, FSDP2 or DDP around
``loss.LMLoss``), builds its optimizer (``build_training_optimizer``) and loss scaler, and
returns a ``TrainState``. ``train_step`` is one iteration on this rank's rows: forward and
backward over the micro-batches (``_forward_backward``), the gradient reduction, unscale and
clip, then the update at the schedule's LR, or an fp16 overflow's skipped update; it returns a
``StepResult``. The loop (``loop.train_segment``) and the memory plan's tracer call exactly
these, so the tracer measures the step the loop runs; ``parallelize`` and
``build_training_optimizer`` are the one seam where parallelism plugs in.
"""

from __future__ import annotations

import contextlib
import datetime
import math
import warnings
from dataclasses import dataclass, field

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from . import parallel
from .device import DeviceChoices, device_choices
from .distributed import DistributedEnv
from .loss import LMLoss, loss_context, scalar
from .model import build_model
from .optim import (
    DynamicLossScaler,
    build_optimizer,
    build_param_groups,
    half_parameters,
    lr_at,
    set_lr,
    unscale_and_clip,
)
from .settings import TrainSettings

__all__ = [
    "NonFiniteLossError",
    "Progress",
    "TrainState",
    "StepResult",
    "prepare_model",
    "attention_kernel",
    "parallelize",
    "build_training_optimizer",
    "new_loss_scaler",
    "init_train_state",
    "autocast_context",
    "train_step",
]


class NonFiniteLossError(RuntimeError):
    """The loss (or gradient norm) became NaN/inf at the named step; nothing was saved for it."""


def _utc_now() -> str:
    return datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")


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


# ----------------------------------------------------------------------------- the model


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
    fp32 values become the optimizer's master weights (``optim.MasterWeightOptimizer``).
    """
    masters = None
    if settings.master_weights:
        masters = half_parameters(model, settings.half_dtype)
    return build_optimizer(
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
        with parallel.gradient_sync(module, par, last), loss_context(par):
            with autocast_context(state.settings, state.device):
                loss = module(chunk)
            (loss * (loss_scale / n_micro)).backward()
        total += scalar(loss.detach()) / n_micro
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
    grad_norm = unscale_and_clip(state.optimizer, params, loss_scale, settings.grad_clip)
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
