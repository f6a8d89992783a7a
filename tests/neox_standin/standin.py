"""Shared by the stand-in GPT-NeoX scripts (tests only): the call log and the tiny model.

The stand-ins cannot fake success: every process they start appends a line to ``calls.jsonl``
beside this file (argv, the environment that decides ranks, host, pid), and the checkpoint the
stand-in trainer writes holds the weights of a real transformers GPTNeoX, in GPT-NeoX v1.0's
``layer_XX-model_00-model_states.pt`` layout, which the tests rebuild independently
(``tiny_model``) to compare logits after conversion and export.
"""

from __future__ import annotations

import json
import math
import os
import socket
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
CALLS = HERE / "calls.jsonl"
RANK_ENV = (
    "RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT", "DLTS_HOSTFILE",
    "SLURM_JOB_ID", "SLURM_PROCID", "SLURM_LOCALID", "SLURM_NTASKS", "SLURM_NODEID",
    "SLURM_STEP_ID", "SLURMD_NODENAME",
)  # fmt: skip


def log_call(prog: str, **extra) -> None:
    """Append one JSON line (one write: O_APPEND keeps concurrent lines whole)."""
    record = {
        "prog": prog,
        "argv": sys.argv[1:],
        "env": {k: os.environ[k] for k in RANK_ENV if k in os.environ},
        "host": os.environ.get("SLURMD_NODENAME") or socket.gethostname(),
        "pid": os.getpid(),
        "time": time.time(),
        **extra,
    }
    fd = os.open(CALLS, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, (json.dumps(record) + "\n").encode())
    finally:
        os.close(fd)


def get(config: dict, key: str, default=None):
    """A GPT-NeoX key in either spelling (as v1.0's tools do)."""
    for spelling in (key.replace("_", "-"), key.replace("-", "_")):
        if spelling in config:
            return config[spelling]
    return default


def padded_vocab(config: dict) -> int:
    """v1.0's padded vocabulary: the tokenizer's size rounded up to divisible-by x mp."""
    from tokenizers import Tokenizer

    size = Tokenizer.from_file(get(config, "vocab-file")).get_vocab_size()
    multiple = get(config, "make-vocab-size-divisible-by", 128) * get(
        config, "model-parallel-size", 1
    )
    return math.ceil(size / multiple) * multiple


def hf_config(config: dict, vocab_size: int):
    """The transformers config v1.0's convert_to_hf.py derives from a GPT-NeoX config."""
    from transformers import GPTNeoXConfig

    return GPTNeoXConfig(
        vocab_size=vocab_size,
        hidden_size=get(config, "hidden-size"),
        num_hidden_layers=get(config, "num-layers"),
        num_attention_heads=get(config, "num-attention-heads"),
        intermediate_size=get(config, "hidden-size") * 4,
        rotary_pct=get(config, "rotary-pct", 1.0),
        rotary_emb_base=get(config, "rotary-emb-base", 10000),
        max_position_embeddings=get(config, "max-position-embeddings"),
        layer_norm_eps=get(config, "layernorm-epsilon", 1e-5),
        tie_word_embeddings=not get(config, "no-weight-tying", False),
        use_parallel_residual=get(config, "gpt-j-residual", False),
        bos_token_id=0,
        eos_token_id=0,
    )


def tiny_model(config: dict, vocab_size: int, step: int):
    """The model "trained" to ``step``: seeded by the config's seed and the step, so every step
    has other weights and anyone can rebuild them."""
    import torch
    from transformers import GPTNeoXForCausalLM

    torch.manual_seed(get(config, "seed", 1234) * 100003 + step)
    model = GPTNeoXForCausalLM(hf_config(config, vocab_size)).float().eval()
    with torch.no_grad():  # LayerNorms start at 1/0 and biases at 0: give them values a
        for name, param in model.named_parameters():  # mix-up (or a doubled bias) would show
            if "layernorm" in name or "layer_norm" in name or name.endswith(".bias"):
                param.add_(torch.randn_like(param) * 0.1)
    return model


LAYER_KEYS = (
    "input_layernorm.weight", "input_layernorm.bias",
    "post_attention_layernorm.weight", "post_attention_layernorm.bias",
    "attention.query_key_value.weight", "attention.query_key_value.bias",
    "attention.dense.weight", "attention.dense.bias",
    "mlp.dense_h_to_4h.weight", "mlp.dense_h_to_4h.bias",
    "mlp.dense_4h_to_h.weight", "mlp.dense_4h_to_h.bias",
)  # fmt: skip


def output_layer_key(state_dict) -> str:
    """transformers 4 names GPTNeoX's output layer ``embed_out``, transformers 5 ``lm_head``."""
    return "embed_out.weight" if "embed_out.weight" in state_dict else "lm_head.weight"


def read_hostfile(path: str) -> dict[str, int]:
    """Hosts and slots of a DeepSpeed hostfile (``host slots=N`` lines), in order."""
    pool = {}
    for line in open(path).read().split("\n"):
        if line.strip():
            host, slots = line.split()
            pool[host] = int(slots.split("=")[1])
    return pool


def save_steps(config: dict, start: int, end: int) -> list[int]:
    """The steps GPT-NeoX v1.0 saves in ``(start, end]`` (``save_iters``: extra-save-iters and
    multiples of checkpoint-factor below train-iters, arguments.py calculate_derived), and 0
    when starting from scratch with 0 among them (training.py)."""
    factor, total = get(config, "checkpoint-factor"), get(config, "train-iters")
    save_iters = set(get(config, "extra-save-iters") or []) | set(range(factor, total, factor))
    steps = [s for s in range(start + 1, end + 1) if s in save_iters]
    return [0, *steps] if start == 0 and 0 in save_iters else steps


# How GPT-NeoX v1.0's model-parallel layers split each tensor across ranks (megatron/mpu/layers.py):
# VocabParallelEmbedding and ColumnParallelLinear split their output dimension (dim 0; the
# output layer is column-parallel in Pythia), RowParallelLinear its input dimension (dim 1) and
# keeps a whole bias on every rank ("bias is not parallelized"); norms and rotary buffers are
# copies.
SPLIT_DIM = {
    "word_embeddings.weight": 0, "final_linear.weight": 0,
    "attention.query_key_value.weight": 0, "attention.query_key_value.bias": 0,
    "mlp.dense_h_to_4h.weight": 0, "mlp.dense_h_to_4h.bias": 0,
    "attention.dense.weight": 1, "mlp.dense_4h_to_h.weight": 1,
}  # fmt: skip


def rotary_inv_freq(config: dict):
    """v1.0's RotaryEmbedding buffer (megatron/model/positional_embeddings.py), in every layer's
    state dict: 1 / base^(arange(0, dim, 2) / dim) over the rotary dimensions of a head."""
    import torch

    head = get(config, "hidden-size") // get(config, "num-attention-heads")
    dim = int(head * get(config, "rotary-pct", 1.0))
    base = get(config, "rotary-emb-base", 10000)
    return 1.0 / (base ** (torch.arange(0, dim, 2).float() / dim))


def layer_specs(model, config: dict) -> dict:
    """The model's tensors by GPT-NeoX v1.0 layer spec index, named as v1.0's modules name them:
    0 embedding, 2..L+1 transformer layers, L+3 final norm, L+4 output layer (untied)."""
    sd = {k: v.detach().clone() for k, v in model.state_dict().items()}
    layers = get(config, "num-layers")
    specs = {0: {"word_embeddings.weight": sd["gpt_neox.embed_in.weight"]}}
    for i in range(layers):
        specs[i + 2] = {key: sd[f"gpt_neox.layers.{i}.{key}"] for key in LAYER_KEYS}
        specs[i + 2]["attention.rotary_emb.inv_freq"] = rotary_inv_freq(config)
    specs[layers + 3] = {"norm.weight": sd["gpt_neox.final_layer_norm.weight"],
                         "norm.bias": sd["gpt_neox.final_layer_norm.bias"]}  # fmt: skip
    specs[layers + 4] = {"final_linear.weight": sd[output_layer_key(sd)]}
    return specs


def shard(tensors: dict, rank: int, ranks: int) -> dict:
    """Model-parallel rank ``rank``'s part of one layer's tensors (``SPLIT_DIM``)."""
    out = {}
    for key, tensor in tensors.items():
        dim = SPLIT_DIM.get(key)
        out[key] = tensor if dim is None else tensor.chunk(ranks, dim=dim)[rank].clone()
    return out


def save_neox_checkpoint(model, config: dict, out_dir: Path, step: int,
                         data_parallel: int = 1) -> None:  # fmt: skip
    """``model`` as GPT-NeoX v1.0 with DeeperSpeed v1.0 saves it, at the config's
    ``model-parallel-size``: with pipeline stages (``pipe-parallel-size`` >= 1) one
    ``layer_II-model_XX-model_states.pt`` per layer spec and rank (``pipe/module.py``) and
    ``mp_rank_XX_model_states.pt`` without weights; without (0, ``to_sequential``) the weights
    as ``module`` (``sequential.<spec>.<name>``) in ``mp_rank_XX_model_states.pt``; with ZeRO
    stage >= 1 one ``zero_pp_rank_D_mp_rank_XX_optim_states.pt`` per data-parallel rank
    (``runtime/engine.py``). The directory appears complete or not at all."""
    import torch

    tp = get(config, "model-parallel-size", 1)
    pipe = get(config, "pipe-parallel-size", 1)
    zero = (get(config, "zero_optimization") or {}).get("stage", 0)
    specs = layer_specs(model, config)
    tmp = out_dir.with_name(f".{out_dir.name}.tmp")
    tmp.mkdir(parents=True, exist_ok=True)
    for rank in range(tp):
        state = {"module": None, "optimizer": None, "lr_scheduler": {}, "skipped_steps": 0,
                 "global_steps": step, "dp_world_size": data_parallel, "mp_world_size": tp,
                 "iteration": step}  # fmt: skip
        if pipe >= 1:
            for index, tensors in specs.items():
                path = tmp / f"layer_{index:02d}-model_{rank:02d}-model_states.pt"
                torch.save(shard(tensors, rank, tp), path)
        else:
            state["module"] = {f"sequential.{index}.{key}": value
                               for index, tensors in specs.items()
                               for key, value in shard(tensors, rank, tp).items()}  # fmt: skip
        torch.save(state, tmp / f"mp_rank_{rank:02d}_model_states.pt")
        if zero >= 1:
            for dp in range(data_parallel):
                name = f"zero_pp_rank_{dp}_mp_rank_{rank:02d}_optim_states.pt"
                torch.save({"optimizer_state_dict": {}, "param_shapes": {}}, tmp / name)
    os.replace(tmp, out_dir)
