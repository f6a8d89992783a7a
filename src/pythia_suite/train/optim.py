"""Optimizer side of GPT-NeoX v1.0: parameter groups, the LR schedule, the fp16 loss scaler.

- Weight decay applies to weights only: biases and every LayerNorm parameter are exempt
  (GPT-NeoX's ``get_params_for_weight_decay_optimization``).
- Adam with decoupled weight decay (apex/DeepSpeed ``FusedAdam``'s default ``adam_w_mode``), here
  ``torch.optim.AdamW``; with more than one rank its state is sharded by
  ``torch.distributed.optim.ZeroRedundancyOptimizer`` (ZeRO stage 1).
- LR (``AnnealingLR``): linear warmup from 0, so the first update has LR 0, then a cosine whose
  denominator is ``decay_iters`` (not ``decay_iters - warmup_iters``), floored at ``min_lr``.
- ``DynamicLossScaler``: DeepSpeed's dynamic loss scaler (window, hysteresis, min scale).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
from torch import nn

__all__ = [
    "lr_at",
    "split_decay_parameters",
    "build_param_groups",
    "build_optimizer",
    "local_optimizer",
    "DynamicLossScaler",
    "LossScalerState",
]


def lr_at(
    iteration: int, *, lr: float, min_lr: float, warmup_iters: int, decay_iters: int
) -> float:
    """Learning rate of the update that ``iteration`` (0-based count of applied updates) makes.

    GPT-NeoX v1.0 ``AnnealingLR.get_lr`` with ``decay_style="cosine"``::

        it <= warmup:  lr * it / warmup                       (it = 0 -> LR 0)
        otherwise:     max(min_lr, lr / 2 * (cos(pi * (it - warmup) / decay_iters) + 1))

    Raises ``ValueError`` for a negative iteration or non-positive ``decay_iters``.
    """
    if iteration < 0:
        raise ValueError(f"iteration must be >= 0, got {iteration}")
    if decay_iters <= 0:
        raise ValueError(f"decay_iters must be > 0, got {decay_iters}")
    if warmup_iters > 0 and iteration <= warmup_iters:
        return lr * iteration / warmup_iters
    progress = (iteration - warmup_iters) / decay_iters
    return max(min_lr, lr / 2.0 * (math.cos(math.pi * progress) + 1.0))


def split_decay_parameters(model: nn.Module) -> tuple[list[str], list[str]]:
    """Names of the parameters that get weight decay, and of those that do not.

    No decay for any parameter of a LayerNorm module and for every bias, as GPT-NeoX does.
    Order follows ``model.named_parameters()`` so that every rank builds identical groups.
    """
    no_decay_ids = set()
    for module in model.modules():
        if isinstance(module, nn.LayerNorm):
            no_decay_ids.update(id(p) for p in module.parameters(recurse=False))
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if id(param) in no_decay_ids or name.endswith(".bias"):
            no_decay.append(name)
        else:
            decay.append(name)
    return decay, no_decay


def build_param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Two AdamW parameter groups: weights with ``weight_decay``, biases and LayerNorm with 0."""
    params = dict(model.named_parameters())
    decay, no_decay = split_decay_parameters(model)
    return [
        {"params": [params[n] for n in decay], "weight_decay": weight_decay},
        {"params": [params[n] for n in no_decay], "weight_decay": 0.0},
    ]


def build_optimizer(
    param_groups: list[dict],
    *,
    betas: tuple[float, float],
    eps: float,
    sharded: bool,
    fused: bool = False,
) -> torch.optim.Optimizer:
    """AdamW over ``param_groups``; ZeRO-1 sharded across the process group when ``sharded``.

    The LR is set before every step from the schedule, so it starts at 0 here.
    ``sharded`` needs an initialised ``torch.distributed`` process group. ``fused`` selects
    torch's fused (single-kernel) AdamW, for CUDA parameters.
    """
    # Only ask for fused when wanted: torch picks its own default (foreach on CUDA) otherwise.
    kernel = {"fused": True} if fused else {}
    if sharded:
        from torch.distributed.optim import ZeroRedundancyOptimizer

        return ZeroRedundancyOptimizer(
            param_groups,
            optimizer_class=torch.optim.AdamW,
            lr=0.0,
            betas=betas,
            eps=eps,
            **kernel,
        )
    return torch.optim.AdamW(param_groups, lr=0.0, betas=betas, eps=eps, **kernel)


def local_optimizer(optimizer: torch.optim.Optimizer) -> torch.optim.Optimizer:
    """The optimizer that holds this rank's state (the shard's AdamW under ZeRO)."""
    return getattr(optimizer, "optim", optimizer)


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    """Set the LR of every parameter group (ZeRO copies it to its shard at ``step``)."""
    for group in optimizer.param_groups:
        group["lr"] = lr


@dataclass
class LossScalerState:
    """Everything ``DynamicLossScaler`` needs to resume: saved in ``trainer_state.json``."""

    cur_scale: float
    cur_iter: int
    last_overflow_iter: int
    cur_hysteresis: int


class DynamicLossScaler:
    """DeepSpeed's dynamic loss scaler (``deepspeed/runtime/fp16/loss_scaler.py``).

    Multiply the loss by ``scale`` before ``backward``; after the gradients are reduced, call
    ``update(overflow)``. On an overflow the step is skipped and, once ``hysteresis`` overflows
    have been absorbed, the scale is halved (never below ``min_scale``). After every
    ``window`` consecutive good iterations since the last overflow the scale doubles (and the
    hysteresis budget is refilled). Pythia: initial 2**12, window 1000, hysteresis 2, min 1.
    """

    def __init__(
        self,
        initial_scale: float = 2.0**12,
        window: int = 1000,
        hysteresis: int = 2,
        min_scale: float = 1.0,
        factor: float = 2.0,
    ) -> None:
        if initial_scale <= 0 or min_scale <= 0 or window < 1 or hysteresis < 1 or factor <= 1:
            raise ValueError(
                f"invalid loss scaler settings: initial_scale={initial_scale}, window={window}, "
                f"hysteresis={hysteresis}, min_scale={min_scale}, factor={factor}"
            )
        self.window = window
        self.hysteresis = hysteresis
        self.min_scale = min_scale
        self.factor = factor
        self.state = LossScalerState(
            cur_scale=float(initial_scale),
            cur_iter=0,
            last_overflow_iter=-1,
            cur_hysteresis=hysteresis,
        )

    @property
    def scale(self) -> float:
        """The current loss scale."""
        return self.state.cur_scale

    def update(self, overflow: bool) -> None:
        """Advance one iteration; ``overflow`` says the gradients held an inf or NaN."""
        s = self.state
        if overflow:
            if self.hysteresis == 1 or s.cur_hysteresis == 1:
                s.cur_scale = max(s.cur_scale / self.factor, self.min_scale)
            else:
                s.cur_hysteresis -= 1
            s.last_overflow_iter = s.cur_iter
        elif (s.cur_iter - s.last_overflow_iter) % self.window == 0:
            s.cur_hysteresis = self.hysteresis
            s.cur_scale *= self.factor
        s.cur_iter += 1

    def state_dict(self) -> dict:
        """JSON-serialisable state."""
        return asdict(self.state)

    def load_state_dict(self, state: dict) -> None:
        """Restore from ``state_dict()``; raises ``KeyError`` naming a missing field."""
        self.state = LossScalerState(**{k: state[k] for k in LossScalerState.__dataclass_fields__})
