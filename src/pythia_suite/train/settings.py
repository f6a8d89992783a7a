"""A segment's training settings: every hyperparameter the trainer reads, validated, and the one
road from the config to them (``train_settings``, ``hf_config``).

No torch import at module level: the workflow's memory-plan check builds settings at parse time.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from pythia_suite import config as cfg

from .layout import accumulation_steps

if TYPE_CHECKING:
    import torch

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
        import torch

        return {"fp16": torch.float16, "bf16": torch.bfloat16}.get(self.precision)

    def accumulation_steps(self, data_ranks: int) -> int:
        """Micro-steps per step over ``data_ranks`` data-parallel ranks (``layout``); raises
        ``layout.LayoutError`` when they and micro_batch do not divide the global batch."""
        return accumulation_steps(self.global_batch, self.micro_batch, data_ranks)

    def validate(self) -> None:
        """Raise ``ValueError`` naming the first setting whose value is out of range."""
        from . import parallel
        from .model import INIT_METHODS, OUTPUT_LAYER_INIT_METHODS

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


# ----------------------------------------------------------------------------- from the config


def activation_checkpointing(config: dict, size: str) -> bool:
    """Whether a size recomputes each layer's activations in the backward pass.

    The one source is GPT-NeoX's `checkpoint-activations` as the size's neox config has it (the
    size's `neox` over the common `neox`; null or absent: GPT-NeoX's default, false), so both
    backends agree: true for the original 70m-12b, false for 14m and 31m.
    """
    common = config["neox"].get("checkpoint-activations")
    value = config["sizes"][size].get("neox", {}).get("checkpoint-activations", common)
    return bool(value)


def hf_config(config: dict, run: cfg.Run) -> dict:
    """The transformers GPTNeoXConfig of a run, with Pythia's published fields, as a dict."""
    size = config["sizes"][run.size]
    model = config["model"]
    return {
        "architectures": ["GPTNeoXForCausalLM"],
        "model_type": "gpt_neox",
        "vocab_size": cfg.padded_vocab_size(config, run.size),
        "hidden_size": size["hidden"],
        "num_hidden_layers": size["layers"],
        "num_attention_heads": size["heads"],
        "intermediate_size": model["mlp_ratio"] * size["hidden"],
        "hidden_act": model["activation"],
        "rotary_pct": model["rotary_pct"],
        "rotary_emb_base": model["rotary_emb_base"],
        "max_position_embeddings": model["seq_length"],
        "initializer_range": 0.02,
        "layer_norm_eps": model["layernorm_eps"],
        "use_cache": True,
        "bos_token_id": 0,
        "eos_token_id": 0,
        "tie_word_embeddings": model["tie_embeddings"],
        "use_parallel_residual": model["parallel_residual"],
        "attention_dropout": model["dropout"],
        "hidden_dropout": model["dropout"],
        "attention_bias": True,
    }


def train_settings(config: dict, run: cfg.Run) -> TrainSettings:
    """The ``TrainSettings`` of a run: the one mapping from the config to the trainer's settings
    (the loop, the memory plan and the GPU check all take theirs from here).

    Raises ``config.ConfigError`` (``config.check_layout``) when the size's micro_batch and gas
    cannot make the global batch on its cluster. Each rank runs the size's micro_batch; the loop
    derives the accumulation steps from the ranks it actually has, so a resume on another layout
    keeps the micro-batch.
    """
    size = config["sizes"][run.size]
    training = config["training"]
    cfg.check_layout(config, run.size)
    return TrainSettings(**_settings_values(config, run, size, training))


# TrainSettings' fields no config key sets: their defaults, or tests' switches.
_UNCONFIGURED = ("init_std", "spike_window", "zero_optimizer", "loss_scaler_in_fp32")


def settings_record(settings: TrainSettings) -> dict[str, Any]:
    """The settings a checkpoint's provenance record keeps: the fields the config sets."""
    return {name: value for name, value in asdict(settings).items() if name not in _UNCONFIGURED}


def _settings_values(config: dict, run: cfg.Run, size: dict, training: dict) -> dict[str, Any]:
    """``TrainSettings``' keyword arguments, key by key from the config."""
    scaler = training["loss_scaler"]
    return {
        "global_batch": training["global_batch"],
        "micro_batch": size["micro_batch"],
        "tensor_parallel": size["tensor_parallel"],
        "seq_length": config["model"]["seq_length"],
        "lr": size["lr"],
        "min_lr": size["min_lr"],
        # GPT-NeoX v1.0: warmup_iter = warmup x lr_decay_iters (a float; 1430 for Pythia).
        "warmup_iters": training["warmup"] * training["lr_decay_iters"],
        "decay_iters": training["lr_decay_iters"],
        "weight_decay": training["weight_decay"],
        "adam_beta1": training["adam"]["beta1"],
        "adam_beta2": training["adam"]["beta2"],
        "adam_eps": training["adam"]["eps"],
        "grad_clip": training["gradient_clipping"],
        "init_method": size["init_method"],
        "output_layer_init_method": size["output_layer_init_method"],
        "weight_seed": run.weight_seed,
        "precision": cfg.precision(config, run),
        "loss_scale_initial": 2.0 ** scaler["initial_scale_power"],
        "loss_scale_window": scaler["window"],
        "loss_scale_hysteresis": scaler["hysteresis"],
        "loss_scale_min": float(scaler["min_scale"]),
        "spike_factor": training["spike_factor"],
        "log_interval": training["log_interval"],
        "state_interval": training["state_interval"],
        "deterministic": training["deterministic"],
        # Ranks form a (data, tensor) mesh; the tensor groups are consecutive ranks (a node).
        "data_parallel": training["data_parallel"],
        "partition_activations": partition_activations(config, run.size),
        "activation_checkpointing": activation_checkpointing(config, run.size),
        "compile_layers": training["compile_layers"],
        "loss_chunk_tokens": training["loss_chunk_tokens"],
    }


def partition_activations(config: dict, size: str) -> bool:
    """Whether a size's checkpointed activations are split over its tensor-parallel ranks: the
    original's ``partition-activations`` (its `neox` keys; 14m and 31m set it false)."""
    merged = cfg.deep_merge(config["neox"], config["sizes"][size].get("neox") or {})
    tensor_parallel = config["sizes"][size]["tensor_parallel"]
    return bool(merged.get("partition-activations")) and tensor_parallel > 1
