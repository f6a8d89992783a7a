"""A segment's training settings: every hyperparameter the trainer reads, validated."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from . import parallel
from .model import INIT_METHODS, OUTPUT_LAYER_INIT_METHODS

PRECISIONS = ("fp32", "fp16", "bf16")


@dataclass(frozen=True)
class TrainSettings:
    """Every hyperparameter of a segment (Pythia's values as defaults where they are shared).

    ``micro_batch`` is sequences per rank per micro-step; gradient accumulation steps follow as
    ``global_batch / (data-parallel ranks * micro_batch)``, where the data-parallel ranks are
    ``world_size / tensor_parallel`` (``data_parallel_coords``). ``state_interval`` = snapshot
    every k steps (0: never). ``deterministic`` turns on ``torch.use_deterministic_algorithms``.

    Memory and speed, not mathematics: ``activation_checkpointing`` recomputes each layer in the
    backward pass; ``compile_layers`` compiles each layer with ``torch.compile``; the loss is
    computed ``loss_chunk_tokens`` predicted tokens at a time (``chunked_cross_entropy``).
    Layout, not mathematics: ``tensor_parallel`` ranks per tensor group; ``data_parallel``
    ``"zero1"`` (ZeRO stage 1 over the data ranks) or ``"fsdp"`` (FSDP2); with
    ``partition_activations`` each checkpointed layer input is split over the tensor group.
    ``loss_scaler_in_fp32`` (tests only) runs fp16's dynamic loss scaler and overflow skip
    with another precision's compute (fp32, or bf16 master weights), so that the skip path
    runs on a CPU.

    Precision: ``fp32`` trains fp32 parameters. ``fp16`` / ``bf16`` under ``zero1`` train with
    ``master_weights`` (DeepSpeed's fp16/bf16 optimizer, as Pythia): half-precision parameters
    and gradients, fp32 master weights and AdamW moments in the optimizer (sharded by ZeRO-1),
    no autocast. Under ``fsdp`` FSDP2's mixed-precision policy does the same with autocast.
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
    activation_checkpointing: bool = False
    compile_layers: bool = False
    loss_chunk_tokens: int = 8192
    loss_scaler_in_fp32: bool = False

    @property
    def master_weights(self) -> bool:
        """Half-precision parameters with fp32 masters in the optimizer (fp16/bf16, ZeRO-1)."""
        return self.precision in ("fp16", "bf16") and self.data_parallel == "zero1"

    @property
    def half_dtype(self) -> torch.dtype | None:
        """The compute dtype of fp16/bf16 training; None for fp32."""
        return {"fp16": torch.float16, "bf16": torch.bfloat16}.get(self.precision)

    def validate(self) -> None:
        """Raise ``ValueError`` naming the first setting whose value is out of range."""
        positive = (
            "global_batch",
            "micro_batch",
            "seq_length",
            "decay_iters",
            "log_interval",
            "loss_chunk_tokens",
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
        if self.compile_layers and self.tensor_parallel > 1:
            # Found by tests/test_train_parallel.py (torch 2.13): a compiled layer's backward
            # hands DTensor's redistribute a plain-tensor gradient and the first step crashes.
            raise ValueError(
                f"TrainSettings.compile_layers is offered at tensor_parallel 1 only (got "
                f"tensor_parallel {self.tensor_parallel}): compiled layers crash in the first "
                "backward pass under tensor parallelism with this torch"
            )
        if self.spike_factor <= 1.0:
            raise ValueError(f"TrainSettings.spike_factor must be > 1, got {self.spike_factor}")
