"""Peak GPU memory per rank of one training step, traced without allocating a byte.

How the estimate is made (docs/ARCHITECTURE.md, "The memory plan"):

- **Traced: the loop's own step.** ``step.prepare_model`` (activation checkpointing as
  configured), ``step.init_train_state`` (tensor parallelism with partitioned activations,
  ZeRO-1 or FSDP2 over the data ranks, fp16/bf16 parameters with fp32 master weights in the
  optimizer, counted as optimizer state and sharded with it, AdamW, the fp16 loss scaler) and
  two ``step.train_step`` calls over the rank's ``micro_batch x gas`` rows run on fake tensors
  (``FakeTensorMode``, CPU) inside ``torch.distributed._tools.MemTracker`` (``FSDPMemTracker``
  under FSDP), as rank 0 of a fake process group of the real world size (torch's testing
  backend, as torchtitan's estimator uses; the device mesh is built outside the fake mode).
  The first step creates the optimizer state; the second is measured. Peak bytes per phase
  (forward; loss; backward; reduce = gradient all-reduce and clipping; optimizer) by category:
  parameters, gradients, optimizer, activations, temporaries.
- **By rule, where the trace cannot run.** DDP's C++ reducer cannot run on fake tensors, so
  ZeRO-1 at tensor parallel 1 is traced as one rank, and its data parallelism is added by rule:
  the optimizer state of the largest data rank's partition (``zero1_shares``: the greedy,
  largest-first partition of ``ZeroRedundancyOptimizer`` and ``optim.ZeroOneOptimizer``; an
  embedding matrix is never split, so a share can exceed 1/DP), and DDP's gradient buckets:
  one whole set of gradients for DDP's whole life, which the gradients themselves are views
  into (``gradient_as_bucket_view``), so every phase counts the full gradient set once. Under
  tensor parallelism ZeRO-1 is traced (``ZeroOneOptimizer`` or ``MasterWeightOptimizer`` and
  the flat gradient all-reduce run), and the optimizer bytes are rescaled from rank 0's
  partition to the largest one at full depth.
- **Layers by extrapolation.** From two layers on, each added layer adds the same bytes to
  every phase's peak, so the estimate traces 2 and 3 layers and extrapolates each phase
  linearly to the configured depth, then takes the largest phase. ``tests/test_train_memory.py``
  and ``benchmarks/memory_plan.py --verify 410m`` check this against full-depth traces.

CPU trace vs CUDA:
- attention: on the CPU, SDPA dispatches to ``_scaled_dot_product_flash_attention_for_cpu``,
  which saves the output and the log-sum-exp as CUDA's flash kernel does (no batch x heads x
  seq^2 matrix). The plan assumes the flash backend on CUDA. The loop does not require it: it
  probes the kernel at start-up, logs it, and on CUDA (``DeviceChoices.expects_flash_attention``)
  logs a warning when it is not flash; the math fallback would need more memory than planned.
- allocator and context: the trace counts tensor storage bytes, what
  ``torch.cuda.max_memory_allocated`` reports. What a device loses besides (CUDA context, NCCL
  and cuBLAS buffers, the caching allocator's rounding and fragmentation) is a reserve set a
  priori in ``cluster.gpu_memory_reserve_gb`` and subtracted from the GPU's memory: not fitted
  to any measurement.

The plan of a config is cached (``results/plan/memory-<hash>.json``, keyed by everything the
estimate reads and the torch/transformers versions) so the workflow checks it once, not at
every Snakefile parse. ``read_cached_plan`` / ``plan_cache_path`` / ``memory_layouts`` do not
import torch.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, replace
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING

from ..atomic import write_json_atomic
from ..hashing import sha256_file

if TYPE_CHECKING:
    from .settings import TrainSettings

__all__ = [
    "CATEGORIES",
    "PHASES",
    "PLAN_FORMAT",
    "StepLayout",
    "layout_from_record",
    "MemoryDoesNotFitError",
    "memory_layouts",
    "trace_step_peaks",
    "estimate_layout",
    "zero1_max_share",
    "plan_cache_path",
    "read_cached_plan",
    "memory_plan",
    "check_memory_plan",
]

PLAN_FORMAT = "pythia-suite/memory-plan/1"
CATEGORIES = ("parameters", "gradients", "optimizer", "activations", "temporaries")
PHASES = ("forward", "loss", "backward", "reduce", "optimizer")
GB = 1e9
GIB = 2**30
# MemTracker's reference types -> the plan's categories (buffers: the rotary frequencies;
# inputs: the token batch).
_CATEGORY_OF = {
    "Parameter": "parameters",
    "Buffer": "parameters",
    "Gradient": "gradients",
    "Optstate": "optimizer",
    "Activation": "activations",
    "Inputs": "activations",
    "Temp": "temporaries",
    "Other": "temporaries",
    # FSDPMemTracker's own types: shards, the all-gathered (unsharded) layer, collectives.
    "Sharded Param": "parameters",
    "Unsharded Param": "parameters",
    "Sharded Grad": "gradients",
    "Unsharded Grad": "gradients",
    "OptState": "optimizer",
    "All Gather": "temporaries",
    "Reduce Scatter": "temporaries",
}


class MemoryDoesNotFitError(RuntimeError):
    """A size's layout needs more memory per GPU than its GPU record allows."""


@dataclass(frozen=True)
class StepLayout:
    """What one rank of a size holds and runs: the run's own settings and model
    (``settings.train_settings``, ``settings.hf_config``), and what the plan adds: the data
    ranks the step runs over and the GPU's memory."""

    size: str
    settings: TrainSettings
    hf_config: dict
    data_parallel: int  # data ranks: devices / tensor_parallel (config.data_parallel_size)
    gpu_name: str
    gpu_memory_gb: float
    reserve_gb: float

    @property
    def layers(self) -> int:
        return self.hf_config["num_hidden_layers"]

    @property
    def vocab(self) -> int:
        """The padded vocabulary (a multiple of 128 x tensor_parallel)."""
        return self.hf_config["vocab_size"]

    @property
    def gas(self) -> int:
        """Micro-steps per step on each of the ``data_parallel`` ranks."""
        return self.settings.accumulation_steps(self.data_parallel)

    def model_config(self, layers: int | None = None) -> dict:
        """The run's GPTNeoXConfig fields, ``layers`` deep (default: the configured depth)."""
        return dict(self.hf_config, num_hidden_layers=layers or self.layers)

    def record(self) -> dict:
        """The layout as the plan records it (``results/plan/memory-<hash>.json``)."""
        s, hf = self.settings, self.hf_config
        return {
            "size": self.size,
            "hidden": hf["hidden_size"],
            "layers": self.layers,
            "heads": hf["num_attention_heads"],
            "vocab": self.vocab,
            "intermediate": hf["intermediate_size"],
            "rotary_pct": hf["rotary_pct"],
            "seq_length": s.seq_length,
            "micro_batch": s.micro_batch,
            "gas": self.gas,
            "precision": s.precision,
            "activation_checkpointing": s.activation_checkpointing,
            "loss_chunk_tokens": s.loss_chunk_tokens,
            "tensor_parallel": s.tensor_parallel,
            "data_parallel": self.data_parallel,
            "data_parallel_mode": s.data_parallel,
            "partition_activations": s.partition_activations,
            "gpu_name": self.gpu_name,
            "gpu_memory_gb": self.gpu_memory_gb,
            "reserve_gb": self.reserve_gb,
        }

    @property
    def limit_bytes(self) -> float:
        """Bytes tensors may use: gpu.memory_gb less cluster.gpu_memory_reserve_gb."""
        return (self.gpu_memory_gb - self.reserve_gb) * GB


def layout_from_record(record: dict) -> StepLayout:
    """The layout a plan's ``layout`` record describes (``StepLayout.record``), for models
    outside the config (tests, benchmarks): Pythia's architecture, TrainSettings' defaults
    for what changes no tensor's size, placeholder learning rates."""
    from .settings import TrainSettings

    r = record
    settings = TrainSettings(
        global_batch=r["micro_batch"] * r["gas"] * r["data_parallel"],
        micro_batch=r["micro_batch"],
        seq_length=r["seq_length"],
        lr=1e-4,
        min_lr=1e-5,
        warmup_iters=0,
        decay_iters=1,
        precision=r["precision"],
        activation_checkpointing=r["activation_checkpointing"],
        loss_chunk_tokens=r["loss_chunk_tokens"],
        tensor_parallel=r["tensor_parallel"],
        data_parallel=r["data_parallel_mode"],
        partition_activations=r["partition_activations"],
    )
    hf_config = {
        "vocab_size": r["vocab"],
        "hidden_size": r["hidden"],
        "num_hidden_layers": r["layers"],
        "num_attention_heads": r["heads"],
        "intermediate_size": r["intermediate"],
        "rotary_pct": r["rotary_pct"],
        "max_position_embeddings": r["seq_length"],
        "use_parallel_residual": True,
        "tie_word_embeddings": False,
        "attention_bias": True,
        "hidden_dropout": 0.0,
        "attention_dropout": 0.0,
    }
    plan_adds = ("data_parallel", "gpu_name", "gpu_memory_gb", "reserve_gb")
    return StepLayout(r["size"], settings, hf_config, **{k: r[k] for k in plan_adds})


def memory_layouts(config: dict) -> dict[str, StepLayout]:
    """Run name -> its ``StepLayout`` for every GPU run (``gpus_per_node > 0``) of the matrix.

    Each rank runs the size's configured micro-batch and gradient accumulation (the original
    layout; ``config.check_layout``), with the settings ``settings.train_settings`` gives the
    loop; data parallel = GPUs / tensor_parallel.
    """
    from ..config import data_parallel_size, expand_runs, gpu_record
    from .settings import hf_config, train_settings

    layouts = {}
    for name, run in expand_runs(config).items():
        if not config["sizes"][run.size]["cluster"]["gpus_per_node"]:
            continue  # CPU layouts are exempt: no device memory to plan
        gpu = gpu_record(config, run.size)
        layouts[name] = StepLayout(
            size=run.size,
            settings=train_settings(config, run),
            hf_config=hf_config(config, run),
            data_parallel=data_parallel_size(config, run.size),
            gpu_name=gpu["name"],
            gpu_memory_gb=float(gpu["memory_gb"]),
            reserve_gb=float(config["cluster"]["gpu_memory_reserve_gb"]),
        )
    return layouts


# ----------------------------------------------------------------------------- tracing


def _traced_world(layout: StepLayout) -> int:
    """Ranks of the fake process group the step is traced in: the real world size where the
    parallelism is traceable (tensor parallel, FSDP), else 1 (DDP's C++ reducer cannot run on
    fake tensors: data parallelism at tensor parallel 1 under ZeRO-1 is added by rule)."""
    tensor_parallel = layout.settings.tensor_parallel
    if tensor_parallel > 1 or (
        layout.settings.data_parallel == "fsdp" and layout.data_parallel > 1
    ):
        return tensor_parallel * layout.data_parallel
    return 1


def _step_settings(layout: StepLayout) -> TrainSettings:
    """The run's ``TrainSettings`` for one rank of the traced world (``_traced_world``): its
    micro-batch x gas rows, as the loop runs them (the global batch of the traced data ranks)."""
    settings = layout.settings
    data_ranks = _traced_world(layout) // settings.tensor_parallel
    return replace(settings, global_batch=settings.micro_batch * layout.gas * data_ranks)


def _fake_model(layout: StepLayout, layers: int):
    """The loop's model (``step.prepare_model``) ``layers`` deep, fake fp32 weights, unsharded
    (``step.init_train_state`` applies the parallelism). Call inside ``FakeTensorMode``."""
    import torch

    from .step import prepare_model

    return prepare_model(layout.model_config(layers), _step_settings(layout), torch.device("cpu"))


@contextlib.contextmanager
def _fake_world(world_size: int):
    """This process as rank 0 of a fake process group of ``world_size`` ranks (collectives are
    no-ops; torch's own testing backend, as torchtitan's estimator uses), with its
    ``DistributedEnv`` and the loop's (data, tensor) mesh built outside ``FakeTensorMode``."""
    import torch
    import torch.distributed as dist

    from .distributed import DistributedEnv

    env = DistributedEnv(
        rank=0,
        world_size=world_size,
        local_rank=0,
        master_addr="",
        master_port=0,
        source="single" if world_size == 1 else "torchrun",
    )
    if world_size == 1:
        yield env
        return
    if dist.is_initialized():
        raise RuntimeError("the memory tracer needs its own process group: one is initialised")
    from torch.testing._internal.distributed.fake_pg import FakeStore

    dist.init_process_group("fake", store=FakeStore(), rank=0, world_size=world_size)
    try:
        yield env
    finally:
        dist.destroy_process_group()
    del torch


class _PhasePeaks:
    """Peak snapshot of each phase of a step, read from a ``MemTracker`` at phase boundaries.

    Boundaries are public hooks: the model's forward pre-hook (forward starts); the final
    LayerNorm's forward hook (the head and the loss start: output layer, cross-entropy and
    their backward); its backward pre-hook (the layers' backward starts; clipping included);
    the optimizer's step pre-hook. MemTracker keeps one running peak; it is restarted at each
    boundary (its ``_peak_mem`` / ``_peak_mem_snap``, torch 2.13).
    """

    def __init__(self, tracker, model, optimizer, outer=None, gas: int = 1) -> None:
        self.tracker = tracker
        self.phase: str | None = None
        self.peaks: dict[str, dict[str, int]] = {}
        final_norm = model.gpt_neox.final_layer_norm
        self.handles = [
            model.base_model.register_forward_pre_hook(lambda *a: self.enter("forward")),
            final_norm.register_forward_hook(lambda *a: self.enter("loss")),
            final_norm.register_full_backward_pre_hook(lambda *a: self.enter("backward")),
            # The input embedding's gradient is the last of a backward pass: after the last
            # micro-step's come the gradient reduction (ZeRO-1's flat all-reduce under tensor
            # parallelism) and clipping; after an earlier one, the rest of its backward (a
            # "reduce" peak that were the larger of two terms would not be linear in depth).
            model.get_input_embeddings().weight.register_post_accumulate_grad_hook(
                lambda param: self.end_of_backward()
            ),
        ]
        self.gas = gas
        self.backward_passes = 0
        self.outer = outer if outer is not None and outer is not optimizer else None
        if self.outer is None:
            self.handles.append(
                optimizer.register_step_pre_hook(lambda *a: self.enter("optimizer"))
            )
        else:
            # A wrapper (ZeRO-1, master weights) does work before its inner AdamW steps (the
            # fp32 master gradients): the optimizer phase starts at the wrapper's step.
            wrapped = self.outer.step

            def step(*args, **kwargs):
                self.enter("optimizer")
                return wrapped(*args, **kwargs)

            self.outer.step = step

    def end_of_backward(self) -> None:
        self.backward_passes += 1
        self.enter("reduce" if self.backward_passes % self.gas == 0 else "backward")

    def enter(self, phase: str | None) -> None:
        tracker = self.tracker
        if not hasattr(tracker, "_peak_mem_snap"):
            raise RuntimeError("this torch's MemTracker has no _peak_mem_snap: update _PhasePeaks")
        if self.phase is not None:
            ((_, snap),) = tracker._peak_mem_snap.items()
            peak = _categorise(snap)
            # A phase recurs once per micro-step: keep its highest peak.
            seen = self.peaks.get(self.phase)
            if seen is None or sum(peak.values()) > sum(seen.values()):
                self.peaks[self.phase] = peak
        current = tracker.get_tracker_snapshot()
        tracker._peak_mem_snap = current
        tracker._peak_mem = {dev: s["Total"] for dev, s in current.items()}
        self.phase = phase

    def close(self) -> None:
        for handle in self.handles:
            handle.remove()
        if self.outer is not None:
            del self.outer.step  # the class's own again


def _categorise(snapshot: dict) -> dict[str, int]:
    out = dict.fromkeys(CATEGORIES, 0)
    for ref, nbytes in snapshot.items():
        key = getattr(ref, "value", ref)
        if key != "Total":
            out[_CATEGORY_OF[key]] += int(nbytes)
    return out


class _HostReads:
    """Answers the step's host reads (loss, gradient norm: ``.tolist()``) with 1.0.

    Fake tensors have no values; the loop's single host sync per step reads three scalars.
    1.0 is finite, so the step takes the update path (the one that touches optimizer state).
    """

    def __new__(cls):
        from torch.utils._python_dispatch import TorchDispatchMode

        class HostReads(TorchDispatchMode):
            def __torch_dispatch__(self, func, types, args=(), kwargs=None):
                import torch

                if func is torch.ops.aten._local_scalar_dense.default:
                    return 1.0
                return func(*args, **(kwargs or {}))

        return HostReads()


class _ResetBeforeEachCall:
    """``state.train_module`` for the tracer: ``tracker.reset_mod_stats()``, then the module."""

    def __init__(self, module, tracker) -> None:
        self.module = module
        self.tracker = tracker

    def __call__(self, *args, **kwargs):
        self.tracker.reset_mod_stats()
        return self.module(*args, **kwargs)

    def __getattr__(self, name: str):
        return getattr(self.module, name)  # no_sync, set_requires_gradient_sync, ...


@contextlib.contextmanager
def _joined_world(world_size: int):
    """This process's place in the process group it has joined (``world_size`` ranks; none for
    one), for a trace on real tensors. Raises ``RuntimeError`` when the group does not match."""
    import torch.distributed as dist

    from .distributed import DistributedEnv

    joined = dist.get_world_size() if dist.is_initialized() else 1
    if joined != world_size:
        raise RuntimeError(
            f"a real-tensor trace of this layout needs a process group of {world_size} ranks, "
            f"this process has joined {joined}"
        )
    rank = dist.get_rank() if dist.is_initialized() else 0
    source = "single" if world_size == 1 else "torchrun"
    yield DistributedEnv(rank, world_size, rank, "", 0, source)


@contextlib.contextmanager
def _untracked_shape_propagation() -> Iterator[None]:
    """DTensor's output-shape propagation, run outside the tracer's modes (as on a device).

    To learn an op's global output shape, DTensor's sharding propagator runs the op on fake
    tensors of the *global* shape (``_propagate_tensor_meta_non_cached``, which
    ``loss_parallel``'s cross-entropy handlers call for every micro-step). On real tensors that
    costs nothing; inside the tracer's ``FakeTensorMode`` it runs in that mode, under
    ``MemTracker``, which counted those global (full-vocabulary) logits and their gradient as
    memory: about 1.5 extra local fp32 logit copies at TP 2 and 5.6 at TP 4 in the loss phase.
    With the current modes disabled it makes its own fake mode, which nothing tracks.
    """
    from torch.distributed.tensor import DTensor
    from torch.utils._python_dispatch import _disable_current_modes

    propagator = DTensor._op_dispatcher.sharding_propagator
    if not hasattr(propagator, "_propagate_tensor_meta_non_cached"):
        raise RuntimeError(
            "this torch's ShardingPropagator has no _propagate_tensor_meta_non_cached: "
            "update _untracked_shape_propagation"
        )
    compute = propagator._propagate_tensor_meta_non_cached

    def untracked(op_schema):
        with _disable_current_modes():
            return compute(op_schema)

    propagator._propagate_tensor_meta_non_cached = untracked
    try:
        yield
    finally:
        del propagator._propagate_tensor_meta_non_cached  # the class's own again


def trace_step_peaks(
    layout: StepLayout, layers: int, *, fake: bool = True
) -> dict[str, dict[str, int]]:
    """Trace two ``step.train_step`` calls of rank 0 of ``layout`` at depth ``layers``.

    The model is ``step.prepare_model``'s (activation checkpointing as configured), the state
    ``step.init_train_state``'s (tensor parallelism with partitioned activations, FSDP2 or
    ZeRO-1 over the data ranks, fp16/bf16 parameters with fp32 master weights, AdamW, the fp16
    loss scaler) in a fake
    process group of the real world size (``_traced_world``), the step ``step.train_step`` over
    ``micro_batch x gas`` rows: the loop's own code, on fake tensors. ``MemTracker``, or
    ``FSDPMemTracker`` under FSDP. Returns ``{phase: {category: bytes}}`` at each phase's peak
    during the second step (the first creates the optimizer state).

    ``fake=False`` traces the same step on real CPU tensors (GPT-NeoX-initialised weights, the
    real values read back) in the process group this process has joined, which must have the
    traced world size (every rank calls it; each returns its own peaks): what the fake trace is
    checked against (``tests/test_train_memory.py``, ``benchmarks/memory_plan.py --real``).
    """
    import torch
    from torch._subclasses.fake_tensor import FakeTensorMode
    from torch.distributed._tools.fsdp2_mem_tracker import FSDPMemTracker
    from torch.distributed._tools.mem_tracker import MemTracker

    from . import parallel
    from .model import init_gpt_neox_weights
    from .optim import local_optimizer
    from .step import init_train_state, train_step

    cpu = torch.device("cpu")
    settings = _step_settings(layout)
    world = _traced_world(layout)
    with (_fake_world if fake else _joined_world)(world) as env:
        par = parallel.build_parallelism(
            world, settings.tensor_parallel, cpu, settings.data_parallel
        )  # the device mesh cannot be built under FakeTensorMode
        with FakeTensorMode() if fake else contextlib.nullcontext():
            model = _fake_model(layout, layers)
            if not fake:
                init_gpt_neox_weights(model, weight_seed=1234)
            state = init_train_state(model, settings, env, cpu, par=par)
            optimizer = local_optimizer(state.optimizer)  # ZeRO-1: this rank's AdamW
            vocab_local = layout.vocab // settings.tensor_parallel
            rows = settings.micro_batch * layout.gas
            generator = torch.Generator().manual_seed(0)  # every rank the same rows
            tokens = torch.randint(
                0, vocab_local, (rows, settings.seq_length + 1), generator=generator
            )
            if settings.data_parallel == "fsdp" and world > 1:
                tracker = FSDPMemTracker(state.train_module, optimizer)
                tracker.track_inputs((tokens,))
            else:
                tracker = MemTracker()
                tracker.track_external(model, optimizer, tokens)
            _track_master_weights(tracker, state.optimizer)
            # MemTracker refuses a second call of the root module (it takes it for a new
            # iteration) unless its module stats are reset first; the loop calls it once per
            # micro-step.
            state.train_module = _ResetBeforeEachCall(state.train_module, tracker)
            host_reads = _HostReads() if fake else contextlib.nullcontext()
            with tracker, host_reads, contextlib.ExitStack() as stack:
                if fake:
                    stack.enter_context(_untracked_shape_propagation())
                train_step(state, tokens)  # step 0 creates the optimizer state; measure step 1
                phases = _PhasePeaks(tracker, model, optimizer, state.optimizer, layout.gas)
                stack.callback(phases.close)
                phases.enter(None)
                train_step(state, tokens)
                phases.enter(None)
            return phases.peaks


def _track_master_weights(tracker, optimizer) -> None:
    """Count a ``MasterWeightOptimizer``'s fp32 masters as optimizer state (DeepSpeed's 12
    bytes per parameter: master, exp_avg, exp_avg_sq, sharded alike by ZeRO-1). They are the
    params of its inner AdamW, which ``track_external`` would not see (it registers an
    optimizer's state only, and a bare tensor as "Other")."""
    from torch.distributed._tools.mem_tracker import _MemRefType

    from .optim import MasterWeightOptimizer
    from .parallel import local_view

    if not isinstance(optimizer, MasterWeightOptimizer):
        return
    if not hasattr(tracker, "_update_and_maybe_create_winfos"):
        raise RuntimeError("this torch's MemTracker has no _update_and_maybe_create_winfos")
    masters = [m for group in optimizer.optim.param_groups for m in group["params"]]
    for master in masters:
        tracker._update_and_maybe_create_winfos(local_view(master), _MemRefType.OPT)

    def master_grads_are_optimizer_state(*args) -> None:
        # The fp32 master gradients exist for the owned shard only, during the step: with the
        # masters, so that the ZeRO-1 rule scales them by the largest rank's share.
        for master in masters:
            if master.grad is not None:
                tracker._update_and_maybe_create_winfos(local_view(master.grad), _MemRefType.OPT)

    optimizer.optim.register_step_pre_hook(master_grads_are_optimizer_state)


def zero1_shares(layout: StepLayout, layers: int | None = None) -> tuple[float, float]:
    """(rank 0's, the largest rank's) share of the optimizer state under ZeRO-1, at ``layers``.

    The partition of ``ZeroRedundancyOptimizer`` and ``optim.ZeroOneOptimizer`` alike: per
    parameter group (decay, then no decay), parameters largest first (by their full element
    count), each to the least-loaded data rank; a share counts the elements this rank holds (a
    tensor-parallel shard is 1/T of its parameter). (1, 1) without ZeRO-1 over several ranks.
    """
    if layout.data_parallel <= 1 or layout.settings.data_parallel != "zero1":
        return 1.0, 1.0
    tensor_parallel = layout.settings.tensor_parallel
    from torch._subclasses.fake_tensor import FakeTensorMode

    from .optim import build_param_groups
    from .parallel import expected_weight_placements

    with FakeTensorMode():
        model = _fake_model(layout, layers or layout.layers)
        names = {id(p): n for n, p in model.named_parameters()}
        split = (
            {n for n, dim in expected_weight_placements(model).items() if dim is not None}
            if tensor_parallel > 1
            else set()
        )
        groups = [
            [(p.numel(), names[id(p)]) for p in g["params"]] for g in build_param_groups(model, 0.1)
        ]
    loads = [0] * layout.data_parallel
    owned = [0] * layout.data_parallel
    for group in groups:
        for numel, name in sorted(group, key=lambda item: -item[0]):
            rank = loads.index(min(loads))
            loads[rank] += numel
            owned[rank] += numel // tensor_parallel if name in split else numel
    return owned[0] / sum(owned), max(owned) / sum(owned)


def zero1_max_share(layout: StepLayout) -> float:
    """The largest data rank's share of the optimizer state under ZeRO-1 (1.0 without it)."""
    return zero1_shares(layout)[1]


def _unsharded_optimizer(phases: dict, layout: StepLayout, layers: int) -> dict:
    """A trace's optimizer bytes as if rank 0 held every parameter's state (÷ its share)."""
    traced_zero1 = _traced_world(layout) > 1
    rank0 = zero1_shares(layout, layers)[0] if traced_zero1 else 1.0
    return {
        phase: {c: (v / rank0 if c == "optimizer" else v) for c, v in cats.items()}
        for phase, cats in phases.items()
    }


def _extrapolate(two: dict, three: dict, layers: int) -> dict[str, dict[str, float]]:
    """Each phase's peak at ``layers`` layers from those at 2 and 3, linearly.

    From 2 layers on, each added layer adds the same bytes (at 1 the first layer's input is the
    embedding output, not a layer's: partitioned activations keep it differently).
    """
    if two.keys() != three.keys():
        raise RuntimeError(
            f"traces at 2 and 3 layers saw different phases: {two.keys()}, {three.keys()}"
        )
    return {
        phase: {
            c: two[phase][c] + (layers - 2) * (three[phase][c] - two[phase][c]) for c in CATEGORIES
        }
        for phase in two
    }


def estimate_layout(layout: StepLayout, *, full_depth: bool = False) -> dict:
    """Peak bytes per rank of ``layout``, by category, with how each part was obtained.

    ``full_depth`` traces all layers instead of extrapolating from 2 and 3 (slow; for checks).
    """
    started = time.perf_counter()
    if full_depth or layout.layers <= 3:
        phases = _unsharded_optimizer(
            trace_step_peaks(layout, layout.layers), layout, layout.layers
        )
        depth = f"traced at full depth ({layout.layers} layers)"
    else:
        phases = _extrapolate(
            _unsharded_optimizer(trace_step_peaks(layout, 2), layout, 2),
            _unsharded_optimizer(trace_step_peaks(layout, 3), layout, 3),
            layout.layers,
        )
        depth = f"traced at 2 and 3 layers, extrapolated linearly to {layout.layers}"
    # ZeRO-1: the largest data rank's partition of the optimizer state, at full depth (the
    # partition of a 1- or 2-layer model is not that of the real one).
    share = zero1_max_share(layout)
    ddp_buckets = _traced_world(layout) == 1 and layout.data_parallel > 1
    # DDP at tensor parallel 1 (not traceable on fake tensors) allocates its all-reduce buckets,
    # one whole set of gradients, at construction and keeps them for its whole life. With
    # ``gradient_as_bucket_view=True`` (parallel.wrap_data_parallel) the gradients ARE views
    # into those buckets, not a second copy: every phase holds the full gradient set, no more.
    # The traced step's largest gradient bytes (after the backward pass) are that set.
    bucket_bytes = max(cats["gradients"] for cats in phases.values())
    for cats in phases.values():
        cats["optimizer"] *= share
        if ddp_buckets:
            cats["gradients"] = bucket_bytes
    phases = {p: {c: round(v) for c, v in cats.items()} for p, cats in phases.items()}
    peak_phase = max(phases, key=lambda p: sum(phases[p].values()))
    breakdown = phases[peak_phase]
    total = sum(breakdown.values())
    return {
        "size": layout.size,
        "layout": layout.record(),
        "peak_bytes": total,
        "peak_phase": peak_phase,
        "breakdown": breakdown,
        "phases": phases,
        "limit_bytes": layout.limit_bytes,
        "fits": total <= layout.limit_bytes,
        "method": {
            "depth": depth,
            "traced_world_size": _traced_world(layout),
            "tracker": "FSDPMemTracker"
            if layout.settings.data_parallel == "fsdp" and _traced_world(layout) > 1
            else "MemTracker",
            "zero1_optimizer_share": share,
            "ddp_buckets_by_rule": ddp_buckets,
        },
        "trace_s": round(time.perf_counter() - started, 2),
    }


# ----------------------------------------------------------------------------- the cached plan


def _versions() -> dict:
    return {pkg: metadata.version(pkg) for pkg in ("torch", "transformers")}


def _plan_key(layouts: dict[str, StepLayout]) -> str:
    """The hash of every input of the plan: the train package's code (the traced step is the
    loop's own, whichever module holds it), the versions, each layout with its full settings."""
    code = sorted(Path(__file__).parent.glob("*.py"))
    blob = {
        "format": PLAN_FORMAT,
        # The step the estimate traces: any change to it makes a new plan.
        "code": {path.name: sha256_file(path) for path in code},
        "versions": _versions(),
        "layouts": {
            name: {
                "layout": layout.record(),
                "settings": asdict(layout.settings),
                "hf_config": layout.hf_config,
            }
            for name, layout in sorted(layouts.items())
        },
    }
    return hashlib.sha256(json.dumps(blob, sort_keys=True).encode()).hexdigest()[:16]


def plan_cache_path(config: dict) -> Path:
    """``{paths.results}/plan/memory-<hash>.json``: the hash covers every input of the plan."""
    return (
        Path(config["paths"]["results"])
        / "plan"
        / f"memory-{_plan_key(memory_layouts(config))}.json"
    )


def read_cached_plan(config: dict) -> dict | None:
    """The cached plan of this config, or None when none was written (no torch import)."""
    path = plan_cache_path(config)
    if not path.exists():
        return None
    plan = json.loads(path.read_text(encoding="utf-8"))
    if plan.get("format") != PLAN_FORMAT:
        return None
    return plan


def memory_plan(config: dict, *, use_cache: bool = True, log=None) -> dict:
    """The memory plan of every GPU run: read from the cache, else traced and cached.

    Runs with the same layout (a size's standard and deduped runs) are traced once.
    """
    if use_cache:
        cached = read_cached_plan(config)
        if cached is not None:
            return cached
    layouts = memory_layouts(config)
    estimates: dict[str, dict] = {}  # by the layout's record: one trace for equal layouts
    for name, layout in layouts.items():
        key = json.dumps(layout.record(), sort_keys=True)
        if key not in estimates:
            if log:
                log(f"memory plan: tracing {layout.size} ({layout.settings.precision}) for {name}")
            estimates[key] = estimate_layout(layout)
    plan = {
        "format": PLAN_FORMAT,
        "versions": _versions(),
        "runs": {
            name: estimates[json.dumps(layout.record(), sort_keys=True)]
            for name, layout in layouts.items()
        },
    }
    write_json_atomic(plan_cache_path(config), plan)
    return plan


def check_memory_plan(config: dict, *, log=None) -> dict:
    """Raise ``MemoryDoesNotFitError`` naming every run whose estimate exceeds its limit.

    Reads the cached plan (traced once if missing). Exempt, with an empty plan: CPU layouts
    (``gpus_per_node: 0``) and the ``neox`` backend (GPT-NeoX's own memory, not this step's).
    """
    if config["training"]["backend"] != "pytorch" or not memory_layouts(config):
        return {"format": PLAN_FORMAT, "runs": {}}
    plan = memory_plan(config, log=log)
    failing = [
        f"{name} (size {e['size']}): estimated peak {e['peak_bytes'] / GIB:.3g} GiB per GPU "
        f"({_breakdown_text(e['breakdown'])}) exceeds the limit "
        f"{e['limit_bytes'] / GIB:.3g} GiB ({e['layout']['gpu_name']}, "
        f"{e['layout']['gpu_memory_gb']:g} GB less a {e['layout']['reserve_gb']:g} GB reserve)"
        for name, e in plan["runs"].items()
        if not e["fits"]
    ]
    if failing:
        raise MemoryDoesNotFitError(
            "layout does not fit in GPU memory; nothing was queued:\n  "
            + "\n  ".join(failing)
            + "\n(raise tensor_parallel, lower micro_batch and raise gas, or set "
            "sizes.<size>.cluster.gpu; plan: `pythia-suite plan --memory`)"
        )
    return plan


def render_memory_table(plan: dict, *, trace_times: bool = False) -> str:
    """`memory_plan`'s result as a text table, GiB per rank (with each trace's seconds)."""
    gib = 2**30
    header = (
        f"{'run':<28} {'GPU':<15} {'TPxDP':>7} {'micro':>8} {'prec':>4} {'AC':>3} "
        f"{'params':>7} {'grads':>7} {'optim':>7} {'activ':>7} {'temp':>7} {'peak':>7} "
        f"{'limit':>7} {'phase':>9} fits" + (" trace s" if trace_times else "")
    )
    lines = ["peak GPU memory per rank (GiB), traced (train.memory_plan; docs/ARCHITECTURE.md)"]
    lines += [header, "-" * len(header)]
    for name, e in plan["runs"].items():
        lay, b = e["layout"], e["breakdown"]
        lines.append(
            f"{name:<28} {lay['gpu_name']:<15} "
            f"{str(lay['tensor_parallel']) + 'x' + str(lay['data_parallel']):>7} "
            f"{str(lay['micro_batch']) + 'x' + str(lay['gas']):>8} {lay['precision']:>4} "
            f"{'yes' if lay['activation_checkpointing'] else 'no':>3} "
            + " ".join(f"{b[c] / gib:>7.2f}" for c in CATEGORIES)
            + f" {e['peak_bytes'] / gib:>7.2f} {e['limit_bytes'] / gib:>7.2f} "
            f"{e['peak_phase']:>9} {'yes ' if e['fits'] else 'NO  '}"
            + (f" {e['trace_s']:>7.1f}" if trace_times else "")
        )
    lines.append(
        "micro = micro-batch x gradient accumulation per rank; limit = gpu.memory_gb less "
        "cluster.gpu_memory_reserve_gb; runs of one layout share a trace"
    )
    lines.append(
        "TPxDP = tensor x data parallel ranks; prec = precision; AC = activation "
        "checkpointing; params = parameters; grads = gradients; optim = optimizer states; "
        "activ = activations; temp = temporaries; peak = the traced peak; phase = the step "
        "phase at the peak; fits = peak <= limit"
    )
    return "\n".join(lines)


def _breakdown_text(breakdown: dict) -> str:
    return ", ".join(f"{c} {breakdown[c] / GIB:.3g}" for c in CATEGORIES) + " GiB"
