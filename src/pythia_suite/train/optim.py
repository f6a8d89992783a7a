"""Optimizer side of GPT-NeoX v1.0: parameter groups, the LR schedule, the optimizers, the fp16
loss scaler.

- Weight decay applies to weights only: biases and every LayerNorm parameter are exempt
  (GPT-NeoX's ``get_params_for_weight_decay_optimization``).
- Adam with decoupled weight decay (apex/DeepSpeed ``FusedAdam``'s default ``adam_w_mode``), here
  ``torch.optim.AdamW``, built by ``build_optimizer`` (the one builder) for a (data, tensor)
  layout: ZeRO stage 1 over the data ranks (``ZeroOneOptimizer``: each data rank keeps the
  AdamW state of the parameters it owns, updates them and broadcasts them), fp32 master
  weights for half-precision parameters (``MasterWeightOptimizer``, DeepSpeed's fp16/bf16
  optimizer), or a plain AdamW.
- LR (``AnnealingLR``): linear warmup from 0, so the first update has LR 0, then a cosine whose
  denominator is ``decay_iters`` (not ``decay_iters - warmup_iters``), floored at ``min_lr``.
- ``DynamicLossScaler``: DeepSpeed's dynamic loss scaler (window, hysteresis, min scale).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass

import torch
import torch.distributed as dist
from torch import nn

from .parallel import (
    Parallelism,
    clip_grad_norm,
    global_grad_norm,
    like_param,
    local_view,
    placed_like,
)

__all__ = [
    "lr_at",
    "split_decay_parameters",
    "build_param_groups",
    "zero1_owners",
    "split_by_placement",
    "ZeroOneOptimizer",
    "half_parameters",
    "MasterWeightOptimizer",
    "parameter_names",
    "build_optimizer",
    "unscale_and_clip",
    "local_optimizer",
    "set_lr",
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


# ----------------------------------------------------------------------------- ZeRO-1


def zero1_owners(param_groups: list[dict], world: int) -> dict[int, int]:
    """ZeRO-1's partition: ``id(parameter) -> data rank`` that keeps its optimizer state.

    Per parameter group, parameters in decreasing size go to the least-loaded rank
    (deterministic, identical on every rank; ``ZeroRedundancyOptimizer``'s rule)."""
    owner: dict[int, int] = {}
    loads = [0] * world
    for g in param_groups:
        for p in sorted(g["params"], key=lambda p: -p.numel()):
            rank = min(range(world), key=lambda r: loads[r])
            loads[rank] += p.numel()
            owner[id(p)] = rank
    return owner


def _broadcast_from_owners(
    params: list[torch.Tensor], owner: dict[int, int], rank: int, group
) -> None:
    """Each owner's (local blocks of) ``params``, flattened into one buffer, broadcast to the
    group and copied in place on the other ranks."""
    by_owner: dict[int, list[torch.Tensor]] = {}
    for p in params:
        by_owner.setdefault(owner[id(p)], []).append(local_view(p))
    global_ranks = [dist.get_global_rank(group, r) for r in range(dist.get_world_size(group))]
    for source, tensors in sorted(by_owner.items()):
        flat = torch.cat([t.reshape(-1) for t in tensors])
        dist.broadcast(flat, src=global_ranks[source], group=group)
        if source != rank:
            offset = 0
            for t in tensors:
                t.copy_(flat[offset : offset + t.numel()].view_as(t))
                offset += t.numel()


def split_by_placement(param_groups: list[dict]) -> tuple[list[dict], list[int]]:
    """Each group split into its plain tensors and its DTensors, with the same hyperparameters;
    empty halves dropped. Returns the groups and, for each, the index of the group it came from.

    Under tensor parallelism a group mixes LayerNorm weights (plain, replicated) with the
    biases of sharded layers (DTensors), and torch's fused AdamW refuses the mix
    (``aten._fused_adamw_.default got mixed torch.Tensor and DTensor``): one kernel per
    placement kind. The update of each parameter is the same whatever its group.
    """
    from torch.distributed.tensor import DTensor

    out, sources = [], []
    for index, group in enumerate(param_groups):
        for kind in (False, True):
            params = [p for p in group["params"] if isinstance(p, DTensor) is kind]
            if params:
                out.append(dict(group, params=params))
                sources.append(index)
    return out, sources


def _copy_hyperparameters(groups: list[dict], local_groups: list[dict], sources: list[int]) -> None:
    """Each group's LR, decay, ... (set by the schedule) onto the local optimizer's groups
    (``sources[i]``: the group that local group ``i`` came from)."""
    for local, source in zip(local_groups, sources, strict=True):
        for key, value in groups[source].items():
            if key != "params":
                local[key] = value


def _zero_grads(params: list[torch.Tensor], set_to_none: bool) -> None:
    for p in params:
        if set_to_none:
            p.grad = None
        elif p.grad is not None:
            p.grad.zero_()


class ZeroOneOptimizer:
    """ZeRO stage 1 over the data group: each data rank keeps AdamW state for the parameters it
    owns, updates them, and broadcasts them to the other data ranks.

    Ownership: per parameter group, parameters in decreasing size go to the least-loaded data
    rank (deterministic, identical on every rank). Works with DTensor (tensor-parallel)
    parameters: the broadcast moves each rank's local block within its tensor slice.
    ``optim`` is the local AdamW (``optim.local_optimizer``); ``param_groups`` holds every
    parameter and its LR/decay, copied to ``optim`` at each ``step``.
    """

    def __init__(
        self,
        param_groups: list[dict],
        *,
        group,
        optimizer_class: type[torch.optim.Optimizer] = torch.optim.AdamW,
        **defaults,
    ) -> None:
        self.group = group
        world = dist.get_world_size(group)
        self.rank = dist.get_rank(group)
        self.param_groups = [dict(g, params=list(g["params"])) for g in param_groups]
        self.owner = zero1_owners(self.param_groups, world)
        local_groups, self._sources = split_by_placement(
            [
                dict(g, params=[p for p in g["params"] if self.owner[id(p)] == self.rank])
                for g in self.param_groups
            ]
        )
        self.optim = optimizer_class(local_groups, **defaults)

    def params(self) -> list[torch.Tensor]:
        return [p for g in self.param_groups for p in g["params"]]

    def zero_grad(self, set_to_none: bool = True) -> None:
        _zero_grads(self.params(), set_to_none)

    @torch.no_grad()
    def step(self) -> None:
        _copy_hyperparameters(self.param_groups, self.optim.param_groups, self._sources)
        self.optim.step()
        _broadcast_from_owners(self.params(), self.owner, self.rank, self.group)


# ----------------------------------------------------------------------------- master weights


def half_parameters(model: nn.Module, dtype: torch.dtype) -> dict[int, torch.Tensor]:
    """Replace every parameter of ``model`` by a ``dtype`` copy (DTensors stay DTensors);
    return ``id(new parameter) -> the fp32 parameter it replaced`` (the master weights).

    New ``Parameter`` objects rather than an in-place cast: a DTensor's ``.data`` cannot change
    its local dtype, and fake tensors (the memory tracer) refuse ``module.to``."""
    masters: dict[int, torch.Tensor] = {}
    for module in model.modules():
        for name, param in list(module.named_parameters(recurse=False)):
            half = nn.Parameter(param.detach().to(dtype), requires_grad=param.requires_grad)
            setattr(module, name, half)
            masters[id(half)] = param.detach()
    return masters


class MasterWeightOptimizer:
    """Half-precision training with fp32 master weights: DeepSpeed's fp16/bf16 optimizer (as
    Pythia trained), ZeRO stage 1 over ``group`` when one is given.

    The model's parameters and gradients are fp16/bf16 (``half_parameters``). This rank keeps,
    for the parameters it owns (``zero1_owners``; all of them without ``group``), an fp32 master
    copy and AdamW's moments. A step: ``unscale_and_clip`` takes the global norm of the
    (reduced, loss-scaled) half gradients, accumulated in fp32, and keeps the clip coefficient
    divided by the loss scale; ``step`` writes each owned gradient, times that factor, into its
    master's fp32 gradient, runs AdamW on the masters, rounds them into the half parameters and
    broadcasts each owner's half parameters to the other data ranks. On an fp16 overflow the
    loop calls only ``zero_grad``: masters, moments and schedule stay as they were.
    ``optim`` is the AdamW over the masters (what checkpoints save and load, by name);
    ``master_of(param)`` is a parameter's fp32 master (``None`` where another rank owns it).
    """

    def __init__(
        self,
        param_groups: list[dict],
        masters: dict[int, torch.Tensor],
        *,
        group,
        optimizer_class: type[torch.optim.Optimizer] = torch.optim.AdamW,
        **defaults,
    ) -> None:
        self.group = group
        self.rank = dist.get_rank(group) if group is not None else 0
        world = dist.get_world_size(group) if group is not None else 1
        self.param_groups = [dict(g, params=list(g["params"])) for g in param_groups]
        self.owner = zero1_owners(self.param_groups, world)
        self._master = {
            id(p): masters[id(p)]
            for g in self.param_groups
            for p in g["params"]
            if self.owner[id(p)] == self.rank
        }
        local_groups, self._sources = split_by_placement(
            [
                dict(g, params=[self._master[id(p)] for p in g["params"] if id(p) in self._master])
                for g in self.param_groups
            ]
        )
        self.optim = optimizer_class(local_groups, **defaults)
        self._grad_factor: torch.Tensor | None = None

    def master_of(self, param: torch.Tensor) -> torch.Tensor | None:
        return self._master.get(id(param))

    def gathered_master(self, param: torch.Tensor) -> torch.Tensor:
        """``param``'s fp32 master on every data rank (its owner's, broadcast over the data
        group); collective over the data group (``parallel.full_state_dict`` calls it)."""
        master = self.master_of(param)
        if self.group is None:
            return master
        block = local_view(master) if master is not None else None
        if block is None:
            block = torch.empty(local_view(param).shape, dtype=torch.float32, device=param.device)
        owner = dist.get_global_rank(self.group, self.owner[id(param)])
        dist.broadcast(block, src=owner, group=self.group)
        return master if master is not None else like_param(block, param)

    def params(self) -> list[torch.Tensor]:
        return [p for g in self.param_groups for p in g["params"]]

    def zero_grad(self, set_to_none: bool = True) -> None:
        _zero_grads(self.params(), set_to_none)
        self._grad_factor = None

    @torch.no_grad()
    def unscale_and_clip(self, loss_scale: float, max_norm: float) -> torch.Tensor:
        """The global gradient norm after unscaling (fp32, a 0-d tensor); the clip is applied
        to the fp32 master gradients in ``step``. Non-finite on an fp16 overflow."""
        norm = global_grad_norm(self.params()) / loss_scale
        coef = torch.clamp(max_norm / (norm + 1e-6), max=1.0)
        self._grad_factor = coef / loss_scale
        return norm

    @torch.no_grad()
    def step(self) -> None:
        if self._grad_factor is None:
            raise RuntimeError("MasterWeightOptimizer.step needs unscale_and_clip first")
        _copy_hyperparameters(self.param_groups, self.optim.param_groups, self._sources)
        owned = [(p, self._master[id(p)]) for p in self.params() if id(p) in self._master]
        for p, master in owned:
            if p.grad is not None:
                grad = placed_like(p.grad, master)
                grad = local_view(grad).float().mul_(self._grad_factor.to(grad.device))
                master.grad = like_param(grad, master)
        self.optim.step()
        for p, master in owned:
            local_view(p).copy_(local_view(master))
            master.grad = None
        if self.group is not None:
            _broadcast_from_owners(self.params(), self.owner, self.rank, self.group)


def parameter_names(model: nn.Module, optimizer, rename: Callable[[str], str]) -> dict[int, str]:
    """``id(tensor) -> rename(name)`` for every parameter of ``model`` and, with master
    weights, for each parameter's fp32 master (the tensors whose optimizer state is saved)."""
    names = {id(p): rename(n) for n, p in model.named_parameters()}
    if isinstance(optimizer, MasterWeightOptimizer):
        for n, p in model.named_parameters():
            master = optimizer.master_of(p)
            if master is not None:
                names[id(master)] = rename(n)
    return names


# ----------------------------------------------------------------------------- the builder


def build_optimizer(
    param_groups: list[dict],
    par: Parallelism,
    *,
    betas: tuple[float, float],
    eps: float,
    sharded: bool = True,
    masters: dict[int, torch.Tensor] | None = None,
    **kwargs,
):
    """AdamW for ``par``: ZeRO-1 over the data group under ``zero1`` with more than one data
    rank (unless ``sharded=False``: every data rank keeps the whole state), else a plain AdamW
    (under FSDP the parameters are already shards). With ``masters`` (``half_parameters``'
    fp32 copies of half-precision parameters): ``MasterWeightOptimizer``, sharded the same way.
    The LR starts at 0. Every AdamW built here gets groups of one placement kind
    (``split_by_placement``), so ``fused=True`` works under tensor parallelism."""
    defaults = dict(lr=0.0, betas=betas, eps=eps, **kwargs)
    zero1 = sharded and par.mode == "zero1" and par.data > 1
    if masters is not None:
        group = par.data_group if zero1 else None
        return MasterWeightOptimizer(param_groups, masters, group=group, **defaults)
    if zero1:
        return ZeroOneOptimizer(param_groups, group=par.data_group, **defaults)
    return torch.optim.AdamW(split_by_placement(param_groups)[0], **defaults)


# ----------------------------------------------------------------------------- each update


def unscale_and_clip(
    optimizer, params: list[torch.Tensor], loss_scale: float, max_norm: float
) -> torch.Tensor:
    """Divide the gradients by ``loss_scale`` and clip them to ``max_norm`` by their global
    norm; return that norm (after unscaling, before clipping; a 0-d tensor).

    With fp32 parameters: in place on the gradients (``clip_grad_norm``). With master weights
    (``MasterWeightOptimizer``): the norm in fp32 from the half gradients, the unscale and the
    clip applied when the optimizer forms its fp32 master gradients."""
    if isinstance(optimizer, MasterWeightOptimizer):
        return optimizer.unscale_and_clip(loss_scale, max_norm)
    if loss_scale != 1.0:
        for p in params:
            if p.grad is not None:
                p.grad.mul_(1.0 / loss_scale)
    return clip_grad_norm(params, max_norm)


def local_optimizer(optimizer: torch.optim.Optimizer) -> torch.optim.Optimizer:
    """The optimizer that holds this rank's state (the shard's AdamW under ZeRO)."""
    return getattr(optimizer, "optim", optimizer)


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    """Set the LR of every parameter group (ZeRO copies it to its shard at ``step``)."""
    for group in optimizer.param_groups:
        group["lr"] = lr


# ----------------------------------------------------------------------------- loss scaler


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
