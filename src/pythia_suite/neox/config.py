"""GPT-NeoX configs from the suite's config: a run's (``neox_config``, ``run_neox_config``), each
segment's (``segment_config``, written as ``neox_json``), and what the neox path supports
(``check_neox_supported``).

The one module of the ``neox`` package that reads the suite's config keys: the rest of the package
asks these functions (``slots_per_node``, ``neox_settings``, ``segment_requested_samples``...)
for what they need. The segment semantics (``exit-interval``, one deepy.py, ``deepspeed_slurm``)
are in the package's docstring.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pythia_suite import config as cfg
from pythia_suite.atomic import write_text_atomic
from pythia_suite.neox.launch import DEFAULT_MASTER_PORT

# --- a run's GPT-NeoX config, as Pythia's originals spell it -----------------------------------


# NeoX key spellings: GPT-NeoX accepts '-' and '_' alike; these are the 70m config's.
def neox_config(config: dict, run: cfg.Run, dataset_prefix: str | None = None) -> dict:
    """The GPT-NeoX v1.0 training config of a run, key for key like Pythia's originals.

    Keys a size's original config spells differently are normalised to the 70m config's
    spelling; site paths (data, tokenizer) come from `dataset_prefix` and the config.
    """
    size = config["sizes"][run.size]
    model = config["model"]
    training = config["training"]
    scaler = training["loss_scaler"]
    out: dict[str, Any] = {
        "model-parallel-size": size["tensor_parallel"],
        "num-layers": size["layers"],
        "hidden-size": size["hidden"],
        "num-attention-heads": size["heads"],
        "seq-length": model["seq_length"],
        "max-position-embeddings": model["seq_length"],
        "pos-emb": model["pos_emb"],
        "rotary-pct": model["rotary_pct"],
        "no-weight-tying": not model["tie_embeddings"],
        "gpt-j-residual": model["parallel_residual"],
        "attention-config": [[["flash"], size["layers"]]],
        "init_method": size["init_method"],
        "output_layer_init_method": size["output_layer_init_method"],
        "optimizer": {
            "type": "Adam",
            "params": {
                "lr": size["lr"],
                "betas": [training["adam"]["beta1"], training["adam"]["beta2"]],
                "eps": training["adam"]["eps"],
            },
        },
        "min_lr": size["min_lr"],
        "train_micro_batch_size_per_gpu": size["micro_batch"],
        "gradient_accumulation_steps": size["gas"],
        "gradient_clipping": training["gradient_clipping"],
        "weight-decay": training["weight_decay"],
        "hidden-dropout": model["dropout"],
        "attention-dropout": model["dropout"],
        "train-iters": training["train_iters"],
        "lr-decay-iters": training["lr_decay_iters"],
        "lr-decay-style": training["lr_decay_style"],
        "warmup": training["warmup"],
        "checkpoint-factor": training["checkpoints"]["factor"],
        "extra-save-iters": sorted(training["checkpoints"]["extra"]),
        "seed": run.weight_seed,
        "make_vocab_size_divisible_by": model["make_vocab_size_divisible_by"],
    }
    mode = cfg.precision(config, run)
    if mode in ("fp16", "bf16"):
        out["fp16"] = _fp16_block(mode, scaler)
    if mode == "bf16":
        out["fp32_allreduce"] = True
    out = cfg.deep_merge(out, config["neox"])
    out = cfg.deep_merge(out, size.get("neox", {}))
    # A null in a size's `neox` removes the key: that size's original relied on the default.
    out = {key: value for key, value in out.items() if value is not None}
    if dataset_prefix:
        for key in ("train-data-paths", "valid-data-paths", "test-data-paths"):
            out[key] = [dataset_prefix]
    return out


def _fp16_block(mode: str, scaler: Mapping) -> dict:
    """GPT-NeoX v1.0's ``fp16`` block for ``mode`` fp16 or bf16, with the loss scaler's settings.

    GPT-NeoX v1.0 has no ``bf16`` key (``NeoXArgs(**config)`` raises TypeError): its
    configs/bf16_125M.yml spells bf16 as the fp16 block, type bfloat16, all-reduce in fp32.
    """
    if mode == "fp16":
        kind = {"fp16": True, "enabled": True}
    else:
        kind = {"enabled": True, "type": "bfloat16"}
    return {
        **kind,
        "loss_scale": 0,
        "loss_scale_window": scaler["window"],
        "initial_scale_power": scaler["initial_scale_power"],
        "hysteresis": scaler["hysteresis"],
        "min_loss_scale": scaler["min_scale"],
    }


# --- a segment's config from the run's ------------------------------------------------------------


def _spellings(key: str) -> tuple[str, str]:
    # GPT-NeoX accepts "train-iters" and "train_iters" alike (Pythia's 6.9b/12b use underscores).
    return key.replace("_", "-"), key.replace("-", "_")


def neox_value(config: Mapping, key: str, default=None):
    """A GPT-NeoX config's value of ``key`` in either spelling, else ``default``."""
    for spelling in _spellings(key):
        if spelling in config:
            return config[spelling]
    return default


def _set(config: dict, key: str, value) -> None:
    """Set ``key`` spelled as given, dropping the key's other spelling (one value per key)."""
    for spelling in _spellings(key):
        config.pop(spelling, None)
    config[key] = value


def _drop(config: dict, key: str) -> None:
    for spelling in _spellings(key):
        config.pop(spelling, None)


def segment_config(
    base_neox_config: Mapping,
    *,
    save_dir: str | os.PathLike,
    load_dir: str | os.PathLike,
    start_step: int,
    end_step: int,
    train_data_paths: Sequence[str | os.PathLike],
    valid_data_paths: Sequence[str | os.PathLike] | None = None,
    test_data_paths: Sequence[str | os.PathLike] | None = None,
    vocab_file: str | os.PathLike | None = None,
    overrides: Mapping | None = None,
) -> dict:
    """The GPT-NeoX config for the segment ``(start_step, end_step]`` of one run.

    From the run's full config (``train-iters`` = the run's length, e.g. 143000) it sets
    ``save`` and ``load`` (``load`` only when ``start_step > 0``; step 0 starts from scratch),
    ``exit-interval: end_step`` (stop after saving ``end_step``), adds ``end_step`` to
    ``extra-save-iters``, pins ``lr-decay-iters`` to the run's value, sets the data paths,
    ``launcher: slurm`` and ``deepspeed_slurm: true``; then applies ``overrides``.
    Raises ``ValueError`` naming the key when ``train-iters`` is missing or the steps do not
    satisfy ``0 <= start_step < end_step <= train-iters``.
    """
    config = dict(base_neox_config)
    total = neox_value(config, "train-iters")
    if not isinstance(total, int) or isinstance(total, bool) or total < 1:
        raise ValueError(
            f"base GPT-NeoX config: 'train-iters' must be a positive int, got {total!r}"
        )
    if not (0 <= start_step < end_step <= total):
        raise ValueError(
            f"segment ({start_step}, {end_step}] is not inside the run's 'train-iters' {total}"
        )
    if not train_data_paths:
        raise ValueError("train_data_paths is empty")

    _set(config, "train-iters", total)
    # The LR schedule (warmup fraction and cosine length) is over the whole run, never the segment.
    _set(config, "lr-decay-iters", neox_value(config, "lr-decay-iters", total))
    _set(config, "exit-interval", end_step)
    extra = set(neox_value(config, "extra-save-iters", None) or [])
    _set(config, "extra-save-iters", sorted(extra | {end_step}))
    _set(config, "save", str(save_dir))
    if start_step > 0:
        _set(config, "load", str(load_dir))
    else:
        _drop(config, "load")

    train = [str(p) for p in train_data_paths]
    _set(config, "train-data-paths", train)
    _set(config, "valid-data-paths", [str(p) for p in (valid_data_paths or train)])
    _set(config, "test-data-paths", [str(p) for p in (test_data_paths or train)])
    _drop(config, "data-path")  # would take precedence over the split paths
    if vocab_file is not None:
        _set(config, "vocab-file", str(vocab_file))
    _set(config, "launcher", "slurm")
    _set(config, "deepspeed_slurm", True)
    for key, value in (overrides or {}).items():
        _set(config, key, value)
    return config


def neox_json(config: Mapping) -> str:
    """``config`` as the plain JSON DeeperSpeed's SLURM runner demands, readable as YAML too.

    DeeperSpeed v1.0's ``SlurmRunner.parse_user_args`` ``json.loads`` the text of every config
    file (``deepspeed/launcher/multinode_runner.py``: "SLURM is picky and needs you to use plain
    json"), while GPT-NeoX's ``NeoXArgs.from_ymls`` reads the same text with PyYAML. JSON is
    YAML, except that PyYAML (YAML 1.1) reads a float without a dot or an exponent sign
    (``1e-08``, Python's ``json.dumps``) as a string: every float is written as ``1.0e-08``.
    Raises ``ValueError`` naming the key for a value JSON cannot hold (NaN, infinity, objects).
    """

    def encode(value, where: str) -> str:
        if value is None or isinstance(value, (bool, int, str)):
            return json.dumps(value)
        if isinstance(value, float):
            if not np.isfinite(value):
                raise ValueError(f"GPT-NeoX config key {where!r}: {value} is not a JSON number")
            text = repr(value)
            if "e" in text:
                mantissa, exponent = text.split("e")
                if "." not in mantissa:
                    mantissa += ".0"
                if exponent[0] not in "+-":
                    exponent = "+" + exponent
                text = f"{mantissa}e{exponent}"
            return text
        if isinstance(value, Mapping):
            items = (f"{json.dumps(str(k))}: {encode(v, f'{where}.{k}' if where else str(k))}"
                     for k, v in value.items())  # fmt: skip
            return "{" + ", ".join(items) + "}"
        if isinstance(value, (list, tuple)):
            return "[" + ", ".join(encode(v, where) for v in value) + "]"
        raise ValueError(f"GPT-NeoX config key {where!r}: {value!r} is not JSON")

    return (
        "{\n"
        + ",\n".join(f"  {json.dumps(str(k))}: {encode(v, str(k))}" for k, v in config.items())
        + "\n}\n"
    )


def write_segment_config(
    base_neox_config: Mapping,
    out_path: str | os.PathLike,
    *,
    save_dir: str | os.PathLike,
    load_dir: str | os.PathLike,
    start_step: int,
    end_step: int,
    train_data_paths: Sequence[str | os.PathLike],
    valid_data_paths: Sequence[str | os.PathLike] | None = None,
    test_data_paths: Sequence[str | os.PathLike] | None = None,
    vocab_file: str | os.PathLike | None = None,
    overrides: Mapping | None = None,
) -> Path:
    """Write the segment's GPT-NeoX config (see ``segment_config``) atomically as plain JSON
    (``neox_json``: what DeeperSpeed's SLURM runner parses); returns its path.

    ``end_step`` is the step whose checkpoint the segment writes (the run's ``train-iters``
    stays: see the package docstring).
    """
    config = segment_config(
        base_neox_config,
        save_dir=save_dir,
        load_dir=load_dir,
        start_step=start_step,
        end_step=end_step,
        train_data_paths=train_data_paths,
        valid_data_paths=valid_data_paths,
        test_data_paths=test_data_paths,
        vocab_file=vocab_file,
        overrides=overrides,
    )
    out_path = Path(out_path)
    write_text_atomic(out_path, neox_json(config))
    return out_path


# --- what the neox path supports ------------------------------------------------------------------


def slots_per_node(config: Mapping, size: str) -> int:
    """Training ranks per node of a size: its GPUs, or ``cluster.cpu_ranks_per_node`` on CPU-only
    nodes (the local test cluster). The hostfile's ``slots=`` and the SLURM tasks agree on it."""
    layout = config["sizes"][size]["cluster"]
    return layout["gpus_per_node"] or config["cluster"]["cpu_ranks_per_node"]


# flash-attn 0.2.2 (v1.0's requirements-flashattention.txt), csrc/flash_attn/fmha_api.cpp, as the
# review of issue 18 read it (the source is not among the anchors): GPUs sm_75 or sm_8x; head
# dimension at most 128; the backward pass with a head dimension above 64 only on sm_80.
FLASH_ATTN_MAX_HEAD_DIM = 128
FLASH_ATTN_BACKWARD_SM80_ABOVE = 64


def head_dim(config: Mapping, size: str) -> int:
    """A size's attention head dimension (hidden / heads)."""
    return config["sizes"][size]["hidden"] // config["sizes"][size]["heads"]


def attention_types(neox_config: Mapping) -> set[str]:
    """The attention types a GPT-NeoX ``attention-config`` uses (``[[["flash"], 16]]``...)."""
    spec = neox_value(neox_config, "attention-config") or [[["global"], 1]]
    return {kind for kinds, _count in spec for kind in kinds}


def flash_attn_problem(head_dimension: int, capability: Sequence[int] | None) -> str | None:
    """Why flash-attn 0.2.2 cannot train attention of this head dimension (on a GPU of compute
    capability ``(major, minor)``, when given), or None when it can."""
    if head_dimension > FLASH_ATTN_MAX_HEAD_DIM:
        return f"head dimension {head_dimension} > flash-attn 0.2.2's {FLASH_ATTN_MAX_HEAD_DIM}"
    if capability is None:
        return None
    major, minor = int(capability[0]), int(capability[1])
    arch = f"sm_{major}{minor}"
    if not ((major, minor) == (7, 5) or major == 8):
        return f"flash-attn 0.2.2 runs on sm_75 and sm_8x only, not {arch}"
    if head_dimension > FLASH_ATTN_BACKWARD_SM80_ABOVE and (major, minor) != (8, 0):
        return (f"head dimension {head_dimension} > {FLASH_ATTN_BACKWARD_SM80_ABOVE}: "
                f"flash-attn 0.2.2's backward pass needs sm_80, not {arch}")  # fmt: skip
    return None


def run_deviations(config: Mapping, run) -> list[str]:
    """How a run's GPT-NeoX config departs from Pythia's own to be runnable by v1.0 (recorded in
    its checkpoints' provenance and its model card). Today: a size whose attention is not
    flash (Pythia's configs ask for flash everywhere) because its head dimension exceeds
    flash-attn 0.2.2's limit (config.yaml: 1b)."""
    kinds = attention_types(neox_config(dict(config), run))
    if kinds == {"flash"}:
        return []
    dim = head_dim(config, run.size)
    why = flash_attn_problem(dim, None) or f"head dimension {dim}"
    return [f"attention {'/'.join(sorted(kinds))} instead of Pythia's flash ({why}); the same "
            "softmax attention through GPT-NeoX v1.0's fused masked-softmax kernel"]  # fmt: skip


def check_neox_supported(config: Mapping, runs) -> None:
    """Refuse, before anything is queued, a run GPT-NeoX v1.0 cannot train or convert here
    (docs/slurm.md, "What the neox path supports"): a data seed GPT-NeoX cannot be given
    (``data.source.check_data_seed``), flash attention with a head dimension above flash-attn
    0.2.2's limit, one node with GPUs (DeeperSpeed v1.0's runner fails on one host), or more
    than one pipeline stage (the converter and the completeness check read pipe-parallel sizes
    0 and 1). Raises
    ``ConfigError`` naming the run, the key and the value."""
    from pythia_suite.data.source import check_data_seed

    for run in runs:
        check_data_seed(config, run, backend="neox")
        neox_cfg = neox_config(dict(config), run)
        dim = head_dim(config, run.size)
        if "flash" in attention_types(neox_cfg) and flash_attn_problem(dim, None):
            raise cfg.ConfigError(
                f"run {run.name}: attention-config asks for flash, but "
                f"{flash_attn_problem(dim, None)}: set sizes.{run.size}.neox.attention-config to "
                "global (as config.yaml does for 1b) or train with training.backend: pytorch"
            )
        layout = config["sizes"][run.size]["cluster"]
        if layout["nodes"] == 1 and layout["gpus_per_node"]:
            raise cfg.ConfigError(
                f"run {run.name}: 1 node: DeeperSpeed v1.0 cannot launch on one host (its "
                "deepspeed/launcher/runner.py reads `runner.exports` at line 375, which only the "
                "multi-node branch defines: UnboundLocalError); use 2 or more nodes "
                f"(sizes.{run.size}.cluster.nodes) or training.backend: pytorch"
            )
        pipe = neox_value(neox_cfg, "pipe-parallel-size", 1)
        if pipe not in (0, 1):
            raise cfg.ConfigError(
                f"run {run.name}: pipe-parallel-size {pipe}: the neox path converts and checks "
                "checkpoints of pipe-parallel-size 0 or 1 only (Pythia's)"
            )


def flash_head_dims(config: Mapping) -> dict[str, int]:
    """Head dimension of every size a run of the matrix trains with flash attention."""
    out = {}
    for run in cfg.expand_runs(dict(config)).values():
        if "flash" in attention_types(neox_config(dict(config), run)):
            out[run.size] = head_dim(config, run.size)
    return out


# --- one config for `neox-config RUN` and every segment -------------------------------------------


@dataclass(frozen=True)
class NeoXSegment:
    """Where one segment ``(start_step, end_step]`` reads and writes, on how many nodes, and the
    port its ranks meet on."""

    save_dir: Path
    start_step: int
    end_step: int
    data_prefix: str
    vocab_file: str
    nodes: int
    master_port: int = DEFAULT_MASTER_PORT


# GPT-NeoX's own evaluation is off in every segment: its valid/test data paths would be the
# training set (Pythia's configs name one dataset for all three), so its "validation loss" would
# be measured on data it trains on. With eval-iters 0, v1.0 sets do_valid/do_test false
# (megatron/data/data_utils.py) and asks for 0 validation samples. The suite evaluates each
# checkpoint itself (lm-eval, held-out texts).
SEGMENT_EVALUATION = {"eval-iters": 0}


def run_neox_config(config: Mapping, run, *, dataset_prefix: str | None = None,
                    segment: NeoXSegment | None = None) -> dict:  # fmt: skip
    """The GPT-NeoX v1.0 config of a run: ``neox-config RUN`` without ``segment``, the config a
    segment job trains with when given one. Both come from here, so they cannot drift apart.

    A segment's config differs from the run's only in paths (save/load, data, vocab), the
    ``exit-interval``/``extra-save-iters`` that end the segment (``segment_config``),
    ``deepspeed_slurm`` off on one node (the package doc says why), ``master_port`` (deepy.py
    gives DeeperSpeed's runner the config's port, not ``MASTER_PORT``) and GPT-NeoX's evaluation
    off (``SEGMENT_EVALUATION``). Raises ``ConfigError`` when the run's data seed cannot be
    given (``data.source.check_data_seed``: GPT-NeoX has one seed for weights and data).
    """
    from pythia_suite.data.source import check_data_seed

    check_data_seed(config, run, backend="neox")
    if segment is None:
        return neox_config(dict(config), run, dataset_prefix)
    base = neox_config(dict(config), run, segment.data_prefix)
    return segment_config(
        base,
        save_dir=segment.save_dir,
        load_dir=segment.save_dir,
        start_step=segment.start_step,
        end_step=segment.end_step,
        train_data_paths=[segment.data_prefix],
        vocab_file=segment.vocab_file,
        overrides={"deepspeed_slurm": segment.nodes > 1, "master_port": segment.master_port,
                   **SEGMENT_EVALUATION},
    )  # fmt: skip


def write_run_segment_config(config: Mapping, run, segment: NeoXSegment,
                             path: str | os.PathLike) -> dict:  # fmt: skip
    """Write a segment's GPT-NeoX config (``run_neox_config``) as plain JSON (``neox_json``)
    atomically to ``path``, the file deepy.py is given; returns the config."""
    neox_config = run_neox_config(config, run, segment=segment)
    write_text_atomic(Path(path), neox_json(neox_config))
    return neox_config


# --- what the segments read and where (rule neox_index_maps) --------------------------------------


def _requested_samples(neox_config: Mapping, global_batch: int) -> dict[str, int]:
    """Samples GPT-NeoX v1.0 asks of each split (``megatron/data/data_utils.py``), by dataset
    name: the number in the index-map file names."""
    import math

    train_iters = neox_value(neox_config, "train-iters")
    eval_iters = neox_value(neox_config, "eval-iters", 100)
    eval_interval = neox_value(neox_config, "eval-interval", 1000)
    counts = {
        "train_0": train_iters * global_batch,
        "valid_0": (train_iters // eval_interval + 1) * eval_iters * global_batch,
        "test_0": eval_iters * global_batch,
    }
    # get_normalized_weights_and_num_samples: ceil(n x weight x 1.005), one dataset of weight 1
    return {name: math.ceil(n * 1.005) for name, n in counts.items()}


def segment_requested_samples(config: Mapping) -> dict[str, int]:
    """What every segment's GPT-NeoX asks of each split: the run's training samples, and none of
    valid/test (``SEGMENT_EVALUATION``: its evaluation is off). The same for every run of a
    dataset, so one set of index maps serves them all."""
    training = config["training"]
    neox_cfg = {"train-iters": training["train_iters"], **SEGMENT_EVALUATION}
    return _requested_samples(neox_cfg, training["global_batch"])


def neox_index_maps_dir(config: Mapping, variant: str, seed: int | str) -> str:
    """Where rule ``neox_index_maps`` puts a dataset's GPT-NeoX data prefix and index maps (one
    directory per variant and data seed, shared by every run that reads them)."""
    return f"{config['paths']['results']}/data/neox/{variant}/seed{seed}"


def run_of_dataset(config: Mapping, variant: str, seed: int | str):
    """A run of the matrix that trains on ``variant`` with data seed ``seed`` (they all read the
    same data prefix and maps). Raises ``ConfigError`` naming both when no run does."""
    for run in cfg.expand_runs(dict(config)).values():
        if run.variant == variant and str(run.data_seed) == str(seed):
            return run
    raise cfg.ConfigError(f"no run of the matrix trains on {variant} with data seed {seed}")


def index_map_seed(config: Mapping, run) -> int:
    """The seed in the index-map names GPT-NeoX looks for: its config's one ``seed``."""
    return neox_value(neox_config(dict(config), run), "seed")


def neox_data_prefix_path(config: Mapping, run) -> str:
    """The data prefix a run's segments give GPT-NeoX (built by ``build_neox_index_maps``)."""
    from pythia_suite.data.source import training_data

    maps = neox_index_maps_dir(config, run.variant, run.data_seed)
    return str(Path(maps) / Path(training_data(config, run).dataset_prefix).name)


def trained_samples(config: Mapping) -> int:
    """Samples the run's training reads: ``train_iters`` x ``global_batch``."""
    training = config["training"]
    return training["train_iters"] * training["global_batch"]


def neox_config_json(config: Mapping, run, dataset_prefix: str | None = None) -> str:
    """``pythia-suite neox-config RUN``: the run's GPT-NeoX config (``run_neox_config``) reading
    ``dataset_prefix``, by default the prefix its segments read (``neox_data_prefix_path``)."""
    prefix = dataset_prefix or neox_data_prefix_path(config, run)
    # Plain JSON (also YAML): DeeperSpeed v1.0's SLURM runner json.loads every config file.
    return neox_json(run_neox_config(config, run, dataset_prefix=prefix))


# --- a segment job's settings ------------------------------------------------------------------


def neox_settings(config: Mapping) -> dict:
    """``training.neox``: the GPT-NeoX checkout (``dir``), its environment's ``python`` and the
    ``master_port`` its ranks meet on."""
    return config["training"]["neox"]


def run_segment(config: Mapping, run, *, save_dir: Path, start_step: int, end_step: int,
                data_prefix: str) -> NeoXSegment:  # fmt: skip
    """The segment ``(start_step, end_step]`` of ``run``, saving into ``save_dir`` and reading
    ``data_prefix``, with the run's tokenizer, nodes and ``training.neox.master_port``."""
    from pythia_suite import paths

    return NeoXSegment(
        save_dir=save_dir,
        start_step=start_step,
        end_step=end_step,
        data_prefix=data_prefix,
        vocab_file=str(Path(paths.tokenizer(config["paths"]["results"])).resolve()),
        nodes=config["sizes"][run.size]["cluster"]["nodes"],
        master_port=neox_settings(config)["master_port"],
    )


def segment_summary_facts(config: Mapping, run) -> dict:
    """What a GPT-NeoX segment's summary record (``train.summary.segment_summary_record``) takes
    from the config: the run's size and layout, its tokens per step and FLOPs per token, its
    precision, and the GPU's name and peak (``cpu`` and None on CPU-only nodes)."""
    config = dict(config)
    size = config["sizes"][run.size]
    gpu = cfg.gpu_record(config, run.size) if size["cluster"]["gpus_per_node"] else None
    return {
        "size": run.size,
        "tokens_per_step": config["training"]["global_batch"] * config["model"]["seq_length"],
        "flops_per_token": cfg.training_flops_per_token(config, run.size),
        "peak_tflops": gpu["peak_tflops"] if gpu else None,
        "device_kind": "cuda" if gpu else "cpu",
        "device_name": gpu["name"] if gpu else "cpu",
        "devices": cfg.devices(config, run.size),
        "nodes": size["cluster"]["nodes"],
        "data_parallel": cfg.data_parallel_size(config, run.size),
        "tensor_parallel": size["tensor_parallel"],
        "micro_batch": size["micro_batch"],
        "gas": size["gas"],
        "precision": cfg.precision(config, run),
    }
