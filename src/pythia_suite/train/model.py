"""The model: transformers' ``GPTNeoXForCausalLM`` with GPT-NeoX v1.0's initialisation.

GPT-NeoX gives each weight one of two init functions:

- ``init_method`` (``small_init`` for Pythia up to 2.8b, ``normal`` for 6.9b/12b): the input
  embedding, ``attention.query_key_value``, ``mlp.dense_h_to_4h`` and the output layer
  (``embed_out``, GPT-NeoX's ``final_linear``);
- ``output_layer_init_method`` (``wang_init``, or ``scaled_normal``): the layers that write into
  the residual stream, ``attention.dense`` and ``mlp.dense_4h_to_h``.

Biases start at 0, LayerNorm weights at 1 and biases at 0.

Every parameter draws from its own CPU generator seeded by ``(weight_seed, parameter name)``, so
the initial weights depend only on the weight seed: not on the device, the world size, the data
seed or the order in which modules are built (PolyPythias' weight-seed variants change only it).
"""

from __future__ import annotations

import contextlib
import hashlib
import math

import torch
from torch import nn

from .parallel import copy_full_into

__all__ = [
    "INIT_METHODS",
    "OUTPUT_LAYER_INIT_METHODS",
    "build_model",
    "init_std",
    "init_gpt_neox_weights",
    "hf_state_dict",
    "load_hf_state_dict",
    "count_parameters",
]

INIT_METHODS = ("small_init", "normal")
OUTPUT_LAYER_INIT_METHODS = ("wang_init", "scaled_normal")

# transformers names the output layer ``lm_head``; Pythia's checkpoints (and transformers'
# ``save_pretrained``) call it ``embed_out``.
_HF_RENAMES = {"lm_head.weight": "embed_out.weight"}
_INTERNAL_NAMES = {v: k for k, v in _HF_RENAMES.items()}

_INPUT_SIDE = (
    "embed_in.weight",
    "query_key_value.weight",
    "dense_h_to_4h.weight",
    "lm_head.weight",
)
_OUTPUT_SIDE = ("attention.dense.weight", "dense_4h_to_h.weight")


def build_model(hf_config: dict, device: torch.device | str = "cpu", *, empty: bool = False):
    """``GPTNeoXForCausalLM(GPTNeoXConfig(**hf_config))`` on ``device``, in fp32, in train mode.

    ``empty=True`` skips transformers' own weight init (half the construction time of a 70m
    model on a CPU) and leaves the parameters uninitialised: only for callers that overwrite
    every parameter next (``init_gpt_neox_weights`` or loading a checkpoint). Buffers (the
    rotary frequencies) are computed either way. Raises ``ValueError`` naming the problem when
    ``hf_config`` is not a valid GPTNeoX config.
    """
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

    try:
        config = GPTNeoXConfig(**hf_config)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"invalid GPTNeoX hf_config: {exc}") from exc
    config.use_cache = False
    skip_init = contextlib.nullcontext()
    if empty:
        from transformers.initialization import no_init_weights

        skip_init = no_init_weights()
    with torch.device(device), skip_init:
        model = GPTNeoXForCausalLM(config)
    # Converting tensors that are fp32 already is a no-op, except under FakeTensorMode (the
    # memory tracer), where swapping a parameter fails: convert only when needed.
    if any(p.dtype != torch.float32 for p in model.parameters()):
        model = model.float()
    return model.train()


def init_std(kind: str, *, hidden_size: int, num_layers: int, base_std: float = 0.02) -> float:
    """Standard deviation of GPT-NeoX's init method ``kind``.

    ``small_init``: sqrt(2 / (5 h)); ``wang_init``: 2 / (L sqrt(h)); ``normal``: base_std;
    ``scaled_normal``: base_std / sqrt(2 L). Raises ``ValueError`` for another name.
    """
    if kind == "small_init":
        return math.sqrt(2.0 / (5.0 * hidden_size))
    if kind == "wang_init":
        return 2.0 / (num_layers * math.sqrt(hidden_size))
    if kind == "normal":
        return base_std
    if kind == "scaled_normal":
        return base_std / math.sqrt(2.0 * num_layers)
    raise ValueError(
        f"unknown init method {kind!r}; expected one of {INIT_METHODS + OUTPUT_LAYER_INIT_METHODS}"
    )


def _param_seed(weight_seed: int, name: str) -> int:
    digest = hashlib.sha256(f"{weight_seed}:{hf_name(name)}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def hf_name(name: str) -> str:
    """The Hugging Face checkpoint key of the model parameter ``name``."""
    return _HF_RENAMES.get(name, name)


def param_init_kind(name: str) -> str:
    """Which init a parameter gets: ``"input"``, ``"output"``, ``"zero"`` or ``"one"``.

    Raises ``ValueError`` for a parameter that GPT-NeoX's scheme does not cover (a newer
    transformers adding one must not silently keep its own init).
    """
    if name.endswith(_OUTPUT_SIDE):
        return "output"
    if name.endswith(_INPUT_SIDE):
        return "input"
    if name.endswith(".bias"):
        return "zero"
    if name.endswith(("layernorm.weight", "layer_norm.weight")):
        return "one"
    raise ValueError(f"no GPT-NeoX init rule for parameter {name!r}")


@torch.no_grad()
def init_gpt_neox_weights(
    model: nn.Module,
    *,
    weight_seed: int,
    init_method: str = "small_init",
    output_layer_init_method: str = "wang_init",
    base_std: float = 0.02,
) -> dict[str, float]:
    """Overwrite every parameter of ``model`` with GPT-NeoX v1.0's initialisation.

    Returns ``{parameter name: std used}`` (0 for constants). Raises ``ValueError`` for an
    unknown init method or a parameter outside the scheme. A sharded model (tensor parallel,
    FSDP) gets, on each rank, its block of the same full values.
    """
    config = model.config
    hidden, layers = config.hidden_size, config.num_hidden_layers
    stds = {
        "input": init_std(init_method, hidden_size=hidden, num_layers=layers, base_std=base_std),
        "output": init_std(
            output_layer_init_method, hidden_size=hidden, num_layers=layers, base_std=base_std
        ),
    }
    used = {}
    for name, param in model.named_parameters():
        kind = param_init_kind(name)
        if kind in stds:
            generator = torch.Generator(device="cpu").manual_seed(_param_seed(weight_seed, name))
            values = torch.empty(param.shape, dtype=torch.float32)
            values.normal_(mean=0.0, std=stds[kind], generator=generator)
            copy_full_into(param, values)  # this rank's block under tensor parallel / FSDP
            used[name] = stds[kind]
        else:
            param.fill_(1.0 if kind == "one" else 0.0)
            used[name] = 0.0
    return used


def hf_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """Contiguous fp32 CPU copies of the parameters under their Hugging Face key names."""
    return {
        hf_name(name): p.detach().to("cpu", torch.float32).contiguous()
        for name, p in model.named_parameters()
    }


@torch.no_grad()
def load_hf_state_dict(model: nn.Module, tensors: dict[str, torch.Tensor], source: str) -> None:
    """Copy ``tensors`` (Hugging Face key names) into ``model``'s parameters.

    Raises ``ValueError`` naming ``source`` and the key on a missing, unexpected or misshapen
    tensor; nothing is half-loaded silently (the caller discards the model on error).
    """
    params = dict(model.named_parameters())
    expected = {hf_name(n) for n in params}
    missing = sorted(expected - tensors.keys())
    unexpected = sorted(tensors.keys() - expected)
    if missing or unexpected:
        raise ValueError(f"{source}: missing keys {missing[:5]}, unexpected keys {unexpected[:5]}")
    for key, tensor in tensors.items():
        param = params[_INTERNAL_NAMES.get(key, key)]
        if tuple(tensor.shape) != tuple(param.shape):
            raise ValueError(
                f"{source}: key {key!r} has shape {tuple(tensor.shape)}, "
                f"the model expects {tuple(param.shape)}"
            )
        copy_full_into(param, tensor)


def count_parameters(model: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in model.parameters())
