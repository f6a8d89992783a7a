"""Tensor and data parallelism for the PyTorch backend: one 2-D mesh, (data, tensor).

Ranks form a ``(data_parallel, tensor_parallel)`` mesh with the tensor dimension innermost, so
the ``tensor_parallel`` ranks of one group are consecutive: with one task per GPU and
``tensor_parallel <= gpus_per_node`` they share a node (NVLink), and data parallelism spans
nodes. Every rank of a tensor group reads the same rows of the global batch; data rank ``d``
reads rows ``[d*B/D, (d+1)*B/D)``.

- **Tensor parallelism** (torch's DTensor ``parallelize_module``), Megatron's split of
  transformers' ``GPTNeoXForCausalLM``: column-parallel ``attention.query_key_value`` and
  ``mlp.dense_h_to_4h``, row-parallel ``attention.dense`` and ``mlp.dense_4h_to_h``; the input
  embedding (``gpt_neox.embed_in``) is vocabulary-parallel and so is the output layer
  (transformers' ``lm_head``, saved as ``embed_out``), whose logits stay sharded over the
  vocabulary: the cross-entropy runs under ``loss_parallel`` and never gathers them. The fused
  QKV rows are grouped head by head (q, k, v of head 0, then head 1, ...; transformers views
  them as ``(-1, 3 * head_size)``), so a contiguous row shard holds whole heads and the view's
  ``-1`` becomes the local head count. ``check_tensor_parallel`` fails (parallelize_module only
  warns) when an intended module was not sharded.
- **Partitioned activations** (GPT-NeoX/DeepSpeed ``partition-activations``): with activation
  checkpointing under tensor parallelism, each rank keeps only its 1/T slice of a layer's
  checkpointed input and the tensor group all-gathers it before the layer is recomputed
  (``partitioned_checkpoint``). This is what DeepSpeed's option does; Megatron's later sequence
  parallelism (norms and residual sharded over the sequence) is not used.
- **Data parallelism**: ``zero1`` (Pythia's ZeRO stage 1): gradients all-reduced (mean) over the
  data group, AdamW state sharded over the data ranks (``optim.ZeroOneOptimizer``: each data
  rank updates the parameters it owns and broadcasts them). ``fsdp``: FSDP2 ``fully_shard`` per
  layer, then the embedding, the output layer and the root, over the data group, with a
  ``MixedPrecisionPolicy`` for bf16/fp16. FSDP is offered at tensor parallel 1 only.
- **Reductions**: the gradient all-reduce over the data group (DDP, FSDP2, or
  ``all_reduce_gradients`` under tensor parallelism) and the global gradient norm over sharded
  gradients, each block counted once (``global_grad_norm``, ``clip_grad_norm``).
- **Layout-free state**: ``full_state_dict`` gathers the weights (Hugging Face names) onto rank
  0; ``tensor_slice`` names the block of a parameter a rank holds so optimizer state is saved
  as (name, offsets, block) and any layout reads the blocks it needs (``checkpoint``).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

from .layout import LayoutError, data_ranks

__all__ = [
    "DATA_PARALLEL_MODES",
    "Parallelism",
    "ParallelLayoutError",
    "build_parallelism",
    "tensor_parallel_plan",
    "apply_tensor_parallel",
    "check_tensor_parallel",
    "partitioned_checkpoint",
    "enable_partitioned_checkpointing",
    "apply_tensor_parallel_once",
    "materialize",
    "is_vocab_parallel",
    "apply_fsdp",
    "placed_like",
    "shard_gradients_like_parameters",
    "global_grad_norm",
    "wrap_data_parallel",
    "gradient_sync",
    "all_reduce_gradients",
    "clip_grad_norm",
    "full_state_dict",
    "tensor_slice",
    "copy_full_into",
    "local_view",
    "like_param",
    "is_saving_replica",
    "optimizer_blocks",
]

DATA_PARALLEL_MODES = ("zero1", "fsdp")


class ParallelLayoutError(ValueError):
    """The requested (data, tensor) layout cannot be built; names the numbers."""


@dataclass(frozen=True)
class Parallelism:
    """Where this rank sits on the (data, tensor) mesh; ``mesh`` is None in a world of one."""

    mesh: object | None
    data: int
    tensor: int
    data_rank: int
    tensor_rank: int
    mode: str = "zero1"

    @property
    def data_group(self):
        """The process group of this rank's data-parallel replicas (None: no data parallelism)."""
        return self.mesh["data"].get_group() if self.mesh is not None and self.data > 1 else None

    @property
    def tensor_group(self):
        """The process group of this rank's tensor-parallel peers (None: tensor parallel 1)."""
        return (
            self.mesh["tensor"].get_group() if self.mesh is not None and self.tensor > 1 else None
        )

    @property
    def tensor_mesh(self):
        return self.mesh["tensor"] if self.mesh is not None else None


def build_parallelism(
    world_size: int, tensor_parallel: int, device: torch.device, mode: str = "zero1"
) -> Parallelism:
    """The (data, tensor) mesh of ``world_size`` ranks (needs the default process group if > 1).

    Raises ``ParallelLayoutError`` when ``tensor_parallel`` does not divide ``world_size``, the
    mode is unknown, or FSDP is asked for with tensor parallelism.
    """
    if mode not in DATA_PARALLEL_MODES:
        raise ParallelLayoutError(
            f"data_parallel must be one of {DATA_PARALLEL_MODES}, got {mode!r}"
        )
    try:
        data = data_ranks(world_size, tensor_parallel)
    except LayoutError as err:
        raise ParallelLayoutError(str(err)) from None
    if mode == "fsdp" and tensor_parallel > 1:
        raise ParallelLayoutError(
            f"data_parallel 'fsdp' is offered at tensor_parallel 1 only (got {tensor_parallel}); "
            "use 'zero1', as Pythia did"
        )
    if world_size == 1:
        return Parallelism(None, 1, 1, 0, 0, mode)
    from torch.distributed.device_mesh import init_device_mesh

    mesh = init_device_mesh(device.type, (data, tensor_parallel), mesh_dim_names=("data", "tensor"))
    return Parallelism(
        mesh,
        data,
        tensor_parallel,
        mesh["data"].get_local_rank(),
        mesh["tensor"].get_local_rank(),
        mode,
    )


# ----------------------------------------------------------------------------- tensor parallel

# Megatron's split, by module path under GPTNeoXForCausalLM, with each weight's placement.
_COLUMN = ("attention.query_key_value", "mlp.dense_h_to_4h")
_ROW = ("attention.dense", "mlp.dense_4h_to_h")
EMBEDDING = "gpt_neox.embed_in"
OUTPUT_LAYER = "lm_head"  # transformers' name; saved as embed_out


def tensor_parallel_plan(model: nn.Module) -> dict[str, object]:
    """``parallelize_module`` plan for every sharded module of a ``GPTNeoXForCausalLM``."""
    from torch.distributed.tensor import Replicate, Shard
    from torch.distributed.tensor.parallel import ColwiseParallel, RowwiseParallel

    plan: dict[str, object] = {
        EMBEDDING: RowwiseParallel(input_layouts=Replicate(), output_layouts=Replicate()),
        # Logits stay sharded over the vocabulary (a DTensor) for loss_parallel.
        OUTPUT_LAYER: ColwiseParallel(
            input_layouts=Replicate(), output_layouts=Shard(-1), use_local_output=False
        ),
    }
    for i in range(len(model.gpt_neox.layers)):
        for name in _COLUMN:
            plan[f"gpt_neox.layers.{i}.{name}"] = ColwiseParallel()
        for name in _ROW:
            plan[f"gpt_neox.layers.{i}.{name}"] = RowwiseParallel()
    return plan


def expected_weight_placements(model: nn.Module) -> dict[str, int | None]:
    """Parameter name -> the dimension it is sharded on under tensor parallelism (None:
    replicated as a DTensor).

    Column-parallel weights (out x in) split the output rows (dim 0) and their biases too;
    row-parallel weights split the input columns (dim 1) and keep their bias whole (added once,
    after the reduction); the embedding splits the vocabulary rows (dim 0).
    """
    expected: dict[str, int | None] = {f"{EMBEDDING}.weight": 0, f"{OUTPUT_LAYER}.weight": 0}
    for i in range(len(model.gpt_neox.layers)):
        for name in _COLUMN:
            expected[f"gpt_neox.layers.{i}.{name}.weight"] = 0
            expected[f"gpt_neox.layers.{i}.{name}.bias"] = 0
        for name in _ROW:
            expected[f"gpt_neox.layers.{i}.{name}.weight"] = 1
            expected[f"gpt_neox.layers.{i}.{name}.bias"] = None
    return expected


def check_tensor_parallel(model: nn.Module, par: Parallelism) -> None:
    """Raise ``ParallelLayoutError`` naming each intended parameter that is not sharded as planned.

    ``parallelize_module`` only warns about a plan key that matches no module (a transformers
    rename would silently leave a whole layer replicated).
    """
    from torch.distributed.tensor import DTensor, Replicate, Shard

    params = dict(model.named_parameters())
    wrong = []
    for name, dim in expected_weight_placements(model).items():
        if name not in params:  # a config without biases
            continue
        p = params[name]
        want = (Replicate(),) if dim is None else (Shard(dim),)
        if not isinstance(p, DTensor) or tuple(p.placements) != want:
            placement = tuple(p.placements) if isinstance(p, DTensor) else "not a DTensor"
            wrong.append(f"{name}: {placement}, expected {want}")
    if wrong:
        raise ParallelLayoutError(
            f"tensor parallel {par.tensor}: {len(wrong)} parameters not sharded as planned: "
            + "; ".join(wrong[:5])
        )


def apply_tensor_parallel(model: nn.Module, par: Parallelism) -> nn.Module:
    """Shard ``model`` over the tensor group (Megatron's split); the heads become local.

    Raises ``ParallelLayoutError`` when the heads, the intermediate size or the vocabulary do
    not divide by the tensor-parallel degree, or when a module was not sharded.
    """
    from torch.distributed.tensor.parallel import parallelize_module

    config = model.config
    for key in ("num_attention_heads", "intermediate_size", "vocab_size"):
        if getattr(config, key) % par.tensor:
            raise ParallelLayoutError(
                f"{key} {getattr(config, key)} is not divisible by tensor_parallel {par.tensor}"
            )
    parallelize_module(model, par.tensor_mesh, tensor_parallel_plan(model))
    for layer in model.gpt_neox.layers:
        # transformers' GPTNeoXAttention infers the heads from the view's -1; attention
        # implementations that read a head count from the module must see the local one.
        for attr in ("num_heads", "num_attention_heads", "num_key_value_heads"):
            if hasattr(layer.attention, attr):
                setattr(layer.attention, attr, getattr(layer.attention, attr) // par.tensor)
    check_tensor_parallel(model, par)
    return model


class _PartitionedCheckpoint(torch.autograd.Function):
    """Run ``function(hidden)`` without keeping activations; keep 1/T of ``hidden`` per rank."""

    @staticmethod
    def forward(ctx, function, group, hidden):  # noqa: D401 - autograd signature
        world, rank = dist.get_world_size(group), dist.get_rank(group)
        flat = hidden.detach().reshape(-1)
        per = math.ceil(flat.numel() / world)
        padded = torch.nn.functional.pad(flat, (0, per * world - flat.numel()))
        ctx.save_for_backward(padded[rank * per : (rank + 1) * per].clone())
        ctx.function, ctx.group, ctx.shape, ctx.numel = function, group, hidden.shape, flat.numel()
        ctx.autocast = _autocast_state(hidden.device)
        with torch.no_grad():
            return function(hidden)

    @staticmethod
    def backward(ctx, grad_output):
        (part,) = ctx.saved_tensors
        parts = [torch.empty_like(part) for _ in range(dist.get_world_size(ctx.group))]
        dist.all_gather(parts, part.contiguous(), group=ctx.group)
        hidden = torch.cat(parts)[: ctx.numel].view(ctx.shape).requires_grad_(True)
        with torch.enable_grad(), ctx.autocast():
            output = ctx.function(hidden)
        torch.autograd.backward(output, grad_output)
        return None, None, hidden.grad


def _autocast_state(device: torch.device) -> Callable[[], contextlib.AbstractContextManager]:
    if not torch.is_autocast_enabled(device.type):
        return contextlib.nullcontext
    dtype = torch.get_autocast_dtype(device.type)
    return lambda: torch.autocast(device_type=device.type, dtype=dtype)


def partitioned_checkpoint(function: Callable, hidden: torch.Tensor, *, group) -> torch.Tensor:
    """Activation checkpoint of ``function(hidden)`` whose saved input is split over ``group``.

    Each rank of the tensor group keeps ``1/T`` of the (replicated) layer input; backward
    all-gathers it and recomputes the layer. Dropout RNG is not replayed: Pythia's dropout is 0.
    """
    return _PartitionedCheckpoint.apply(function, group, hidden)


def enable_partitioned_checkpointing(model: nn.Module, par: Parallelism) -> None:
    """Checkpoint every transformer layer with its input partitioned over the tensor group."""
    group = par.tensor_group

    def checkpoint_fn(function, hidden, *args):
        if args:
            raise TypeError("partitioned checkpointing expects the hidden states only")
        return partitioned_checkpoint(function, hidden, group=group)

    model._set_gradient_checkpointing(enable=True, gradient_checkpointing_func=checkpoint_fn)


# ----------------------------------------------------------------------------- data parallel


def apply_tensor_parallel_once(
    model: nn.Module, par: Parallelism, partition_activations: bool = False
) -> nn.Module:
    """``apply_tensor_parallel`` (and partitioned checkpointing) unless already applied; a no-op
    at tensor parallel 1. ``partition_activations`` replaces the model's checkpoint function:
    every layer is then checkpointed with its input split over the tensor group."""
    if par.tensor == 1 or getattr(model, "_pythia_tensor_parallel", False):
        return model
    apply_tensor_parallel(model, par)
    if partition_activations:
        enable_partitioned_checkpointing(model, par)
    model._pythia_tensor_parallel = True
    return model


def materialize(model: nn.Module, device: torch.device) -> nn.Module:
    """Allocate a model built on the meta device (and sharded there) on ``device``.

    Parameters get uninitialised storage (only each rank's block under tensor parallelism); the
    rotary frequencies, the one computed buffer, are recomputed from the config. Set every
    parameter next (GPT-NeoX init or a checkpoint). Raises ``ValueError`` for a rotary type
    other than the default one (Pythia's).
    """
    model.to_empty(device=device)
    for module in model.modules():
        if hasattr(module, "inv_freq") and hasattr(module, "compute_default_rope_parameters"):
            if getattr(module, "rope_type", "default") != "default":
                raise ValueError(f"cannot recompute rotary type {module.rope_type!r} after meta")
            inv_freq, _ = module.compute_default_rope_parameters(module.config, device=device)
            module.inv_freq = inv_freq
            module.original_inv_freq = inv_freq.clone()
    return model


def is_vocab_parallel(head: nn.Module) -> bool:
    """Whether the output layer's weight is sharded over the vocabulary (tensor parallelism)."""
    from torch.distributed.tensor import DTensor, Shard

    return isinstance(head.weight, DTensor) and Shard(0) in tuple(head.weight.placements)


def apply_fsdp(
    model: nn.Module, root: nn.Module, par: Parallelism, half_dtype: torch.dtype | None
) -> None:
    """FSDP2 over the data group (``data_parallel: fsdp``, more than one data rank): each layer,
    then ``root`` (the loss module holding ``model``), which gathers the embedding, the final
    norm and the output layer around the whole loss. With ``half_dtype`` (fp16/bf16) that
    compute dtype with fp32 gradient reduction and fp32 master weights
    (``MixedPrecisionPolicy``). No-op otherwise.
    """
    if par.mode != "fsdp" or par.data == 1:
        return
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    mp_policy = MixedPrecisionPolicy()
    if half_dtype is not None:
        mp_policy = MixedPrecisionPolicy(param_dtype=half_dtype, reduce_dtype=torch.float32)
    mesh = par.mesh["data"]
    for layer in model.gpt_neox.layers:
        fully_shard(layer, mesh=mesh, mp_policy=mp_policy)
    fully_shard(root, mesh=mesh, mp_policy=mp_policy)


# ----------------------------------------------------------------------------- gradients


def placed_like(grad: torch.Tensor, param: torch.Tensor) -> torch.Tensor:
    """``grad`` with ``param``'s placements (a DTensor gradient may come back with others,
    e.g. replicated where the parameter is sharded); plain tensors as they are."""
    from torch.distributed.tensor import DTensor

    if isinstance(grad, DTensor) and tuple(grad.placements) != tuple(param.placements):
        return grad.redistribute(param.device_mesh, param.placements)
    return grad


def shard_gradients_like_parameters(model: nn.Module, par: Parallelism) -> None:
    """Under tensor parallelism, each DTensor parameter's gradient arrives in the parameter's
    own placements (a hook before accumulation).

    DTensor's embedding backward returns the vocabulary-sharded input embedding's gradient
    replicated: every tensor rank would hold, accumulate and all-reduce over the data group
    the whole vocab x hidden gradient. Replicate -> Shard is a local slice (no
    communication), so each rank keeps only its vocabulary rows. Call after the optimizer is
    built (master weights replace the parameters). A no-op at tensor parallel 1.
    """
    if par.tensor == 1:
        return
    from torch.distributed.tensor import DTensor

    for param in model.parameters():
        if isinstance(param, DTensor) and param.requires_grad:
            param.register_hook(lambda grad, param=param: placed_like(grad, param))


def wrap_data_parallel(
    module: nn.Module, par: Parallelism, device_ids: Iterable[torch.device] | None
) -> nn.Module:
    """``zero1`` at tensor parallel 1 with several data ranks: DDP over the data group, whose
    bucketed all-reduce overlaps the backward pass. Under tensor parallelism (DTensor
    parameters) the gradients are all-reduced after the backward (``all_reduce_gradients``).
    ``device_ids``: DDP's, ``DeviceChoices.ddp_device_ids`` (None for a CPU module)."""
    if par.mode != "zero1" or par.data == 1 or par.tensor > 1:
        return module
    # The only buffer (rotary inv_freq) is computed identically on every rank: no sync.
    # gradient_as_bucket_view: the gradients are views into DDP's all-reduce buckets, not a
    # second copy of them (one parameter's worth of memory less; the same values).
    return nn.parallel.DistributedDataParallel(
        module,
        device_ids=list(device_ids) if device_ids is not None else None,
        process_group=par.data_group,
        forward_sync_buffers=False,
        gradient_as_bucket_view=True,
    )


@contextlib.contextmanager
def gradient_sync(module: nn.Module, par: Parallelism, enabled: bool) -> Iterator[None]:
    """Skip the gradient reduction of micro-steps before the last (``enabled=False``): DDP's
    ``no_sync``, FSDP2's ``set_requires_gradient_sync``."""
    if isinstance(module, nn.parallel.DistributedDataParallel) and not enabled:
        with module.no_sync():
            yield
        return
    if par.mode == "fsdp" and par.data > 1:
        module.set_requires_gradient_sync(enabled)
    yield


@torch.no_grad()
def all_reduce_gradients(params: Iterable[torch.Tensor], par: Parallelism) -> None:
    """Mean of the gradients over the data group under ``zero1`` with tensor parallelism, one
    all-reduce of a flat buffer (DDP reduces them at tensor parallel 1, FSDP2 always)."""
    if par.mode != "zero1" or par.data == 1 or par.tensor == 1:
        return
    grads = [local_view(p.grad) for p in params if p.grad is not None]
    if not grads:
        return
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat, group=par.data_group)
    flat /= par.data
    offset = 0
    for g in grads:
        g.copy_(flat[offset : offset + g.numel()].view_as(g))
        offset += g.numel()


@torch.no_grad()
def clip_grad_norm(params: Iterable[torch.Tensor], max_norm: float) -> torch.Tensor:
    """Clip gradients to ``max_norm`` by their global 2-norm; return that norm (a 0-d tensor).

    Each gradient counts once: a DTensor's local squares are summed over the mesh dimensions it
    is sharded on (tensor and/or data), a replicated block and a plain tensor count as they are.
    Same coefficient as ``torch.nn.utils.clip_grad_norm_``.
    """
    from torch.distributed.tensor import DTensor

    params = [p for p in params if p.grad is not None]
    if not any(isinstance(p.grad, DTensor) for p in params):
        # Whole (or data-replicated) gradients: torch's own, foreach kernels included.
        return torch.nn.utils.clip_grad_norm_(params, max_norm)
    norm = global_grad_norm(params)
    coef = torch.clamp(max_norm / (norm + 1e-6), max=1.0)
    for p in params:
        local_view(p.grad).mul_(coef.to(p.grad.device))
    return norm


@torch.no_grad()
def global_grad_norm(params: Iterable[torch.Tensor]) -> torch.Tensor:
    """The 2-norm of all gradients, squares accumulated in fp32, each block counted once: a
    DTensor's local squares are summed over the mesh dimensions it is sharded on."""
    from torch.distributed.tensor import DTensor, Shard

    params = [p for p in params if p.grad is not None]
    buckets: dict[tuple, torch.Tensor] = {}
    meshes: dict[tuple, object] = {}
    for p in params:
        g = p.grad
        key: tuple = ()
        if isinstance(g, DTensor):
            dims = tuple(i for i, pl in enumerate(g.placements) if isinstance(pl, Shard))
            key = (id(g.device_mesh), dims) if dims else ()
            meshes[key] = g.device_mesh
            g = g.to_local()
        if g.dtype == torch.float32:
            sq = g.detach().pow(2).sum()
        else:
            # Half gradients: squares accumulated in fp32 without an fp32 copy of the tensor.
            sq = torch.linalg.vector_norm(g.detach(), dtype=torch.float32).square()
        buckets[key] = buckets[key] + sq if key in buckets else sq
    if not buckets:
        return torch.zeros(())
    total = None
    for key, sq in buckets.items():
        if key:
            for dim in key[1]:
                dist.all_reduce(sq, group=meshes[key].get_group(dim))
        total = sq if total is None else total + sq
    return total.sqrt()


# ----------------------------------------------------------------------------- layout-free state


def local_view(t: torch.Tensor) -> torch.Tensor:
    """The block of ``t`` this rank stores (a DTensor's local tensor, else ``t`` itself)."""
    from torch.distributed.tensor import DTensor

    return t._local_tensor if isinstance(t, DTensor) else t


def tensor_slice(t: torch.Tensor) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """``(offsets, local_shape)`` of the block of the full tensor this rank holds.

    Raises ``ParallelLayoutError`` for placements other than Shard and Replicate.
    """
    from torch.distributed.tensor import DTensor, Replicate, Shard
    from torch.distributed.tensor._utils import compute_local_shape_and_global_offset

    if not isinstance(t, DTensor):
        return (0,) * t.dim(), tuple(t.shape)
    for placement in t.placements:
        if type(placement) not in (Shard, Replicate):
            raise ParallelLayoutError(f"placement {placement} has no contiguous block")
    shape, offsets = compute_local_shape_and_global_offset(t.shape, t.device_mesh, t.placements)
    return tuple(offsets), tuple(shape)


def block_index(offsets: Iterable[int], shape: Iterable[int]) -> tuple[slice, ...]:
    return tuple(slice(o, o + n) for o, n in zip(offsets, shape, strict=True))


def is_saving_replica(t: torch.Tensor, par: Parallelism) -> bool:
    """Whether this rank writes its block of ``t``: one copy of every block, not one per replica.

    A DTensor's block is written by the rank at index 0 of each mesh dimension it is replicated
    on; a plain tensor (replicated over the tensor group) by tensor rank 0.
    """
    from torch.distributed.tensor import DTensor, Replicate

    if not isinstance(t, DTensor):
        return par.tensor_rank == 0
    return all(
        t.device_mesh.get_local_rank(dim) == 0
        for dim, placement in enumerate(t.placements)
        if isinstance(placement, Replicate)
    )


@torch.no_grad()
def copy_full_into(param: torch.Tensor, full: torch.Tensor) -> None:
    """Copy this rank's block of the full tensor ``full`` into ``param`` (DTensor or plain)."""
    offsets, shape = tensor_slice(param)
    local_view(param).copy_(full[block_index(offsets, shape)])


def like_param(local: torch.Tensor, param: torch.Tensor) -> torch.Tensor:
    """``local`` (this rank's block) as a tensor shaped like ``param``: a DTensor for DTensors."""
    from torch.distributed.tensor import DTensor

    local = local.to(local_view(param).device)
    if not isinstance(param, DTensor):
        return local
    return DTensor.from_local(
        local,
        param.device_mesh,
        param.placements,
        run_check=False,
        shape=param.shape,
        stride=param.stride(),
    )


def full_state_dict(
    model: nn.Module,
    is_main: bool,
    rename: Callable[[str], str],
    master: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> dict | None:
    """fp32 CPU copies of the full weights under ``rename(name)`` on the main rank, else None.

    Collective under tensor parallelism, FSDP or master weights: every rank must call it
    (DTensors are gathered with ``full_tensor()``, one parameter at a time). With ``master``
    (``optim.MasterWeightOptimizer.gathered_master``) the weights are the fp32 masters, not the
    half parameters: each owner broadcasts its master block over the data group first.
    """
    from torch.distributed.tensor import DTensor

    out = {}
    for name, p in model.named_parameters():
        if master is not None:
            p = master(p)
        full = p.detach().full_tensor() if isinstance(p, DTensor) else p.detach()
        if is_main:
            out[rename(name)] = full.to("cpu", torch.float32).contiguous()
    return out if is_main else None


def optimizer_blocks(
    local_optimizer: torch.optim.Optimizer, names: dict[int, str], par: Parallelism
) -> dict:
    """This rank's AdamW state as ``{"state": {HF name: {exp_avg, exp_avg_sq, step, offsets}}}``.

    Blocks are CPU copies of what this rank holds (``tensor_slice``); a block replicated over
    several ranks is written by one of them (``is_saving_replica``).
    """
    state = {}
    for group in local_optimizer.param_groups:
        for p in group["params"]:
            if p not in local_optimizer.state or not local_optimizer.state[p]:
                continue
            if not is_saving_replica(p, par):
                continue
            offsets, _ = tensor_slice(p)
            entry = {
                k: local_view(v).detach().to("cpu").clone()
                for k, v in local_optimizer.state[p].items()
            }
            entry["offsets"] = torch.tensor(offsets, dtype=torch.int64)
            state[names[id(p)]] = entry
    return {"state": state}
