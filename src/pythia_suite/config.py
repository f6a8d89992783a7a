"""The suite's one config: loading, validation, the run matrix and everything derived from it.

This module and `pythia_suite.cli` are the only places that know the config's layout. Stage
modules receive plain values from here.
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
import os
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import yaml

from pythia_suite.atomic import write_text_atomic
from pythia_suite.errors import ConfigError
from pythia_suite.train.layout import LayoutError, accumulation_steps, data_ranks

SCHEMA_PATH = Path(__file__).parent / "schemas" / "config.schema.yaml"
# Where the workflow writes the merged config at start, below the results root.
EFFECTIVE_CONFIG = "config/effective.yaml"

# Checkpoint resume state per parameter: fp16 weights (2) + fp32 master weights (4) + Adam's
# two fp32 moments (8) + fp16 gradients (2), as GPT-NeoX/DeepSpeed keep them.
RESUME_BYTES_PER_PARAM = 16


@dataclass(frozen=True)
class Run:
    """One training run of the suite: a size trained on a data variant with a seed."""

    name: str
    size: str
    variant: str
    seed: str
    data_seed: int
    weight_seed: int
    dedup: bool

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


# ----------------------------------------------------------------------------- loading


def deep_merge(base: dict, overlay: dict) -> dict:
    """Merge `overlay` into a copy of `base`: mappings key by key, anything else replaced."""
    merged = copy.deepcopy(base)
    for key, value in overlay.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def read_yaml(path: str | Path) -> dict:
    """Read one YAML mapping. Raises ConfigError naming the file on a missing file or bad YAML."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as err:
        raise ConfigError(f"{path}: cannot read config file: {err.strerror}") from err
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML: {_yaml_error_text(err)}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping, got {type(data).__name__}")
    return data


def sources_text(paths) -> str:
    """The config files as error messages name them: relative to here when below it, joined
    with ' + ' in merge order ('config' when there are none)."""
    names = []
    for path in paths:
        path = Path(path)
        try:
            path = path.resolve().relative_to(Path.cwd().resolve())
        except ValueError:
            pass
        if str(path) not in names:  # Snakemake lists config.yaml again after the overlays
            names.append(str(path))
    return " + ".join(names) or "config"


def _yaml_error_text(err: yaml.YAMLError) -> str:
    """PyYAML's error as one line, 'line L, column C: problem (context)', without its multi-line
    position mark."""
    mark = getattr(err, "problem_mark", None)
    problem = getattr(err, "problem", None) or str(err).splitlines()[0]
    context, context_mark = getattr(err, "context", None), getattr(err, "context_mark", None)
    where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
    if context and context_mark is not None:
        context += f" at line {context_mark.line + 1}, column {context_mark.column + 1}"
    return f"{where}{problem}" + (f" ({context})" if context else "")


def find_default_config(directory: str | Path = ".") -> tuple[list[Path], str]:
    """The config `pythia-suite` reads without --config, and why: the merged config of the suite
    last started in `directory` (the newest `<results root>/config/effective.yaml`, which the
    workflow writes at every start), else `config.yaml`."""
    directory = Path(directory)
    started = sorted(
        directory.glob(f"*/{EFFECTIVE_CONFIG}"), key=lambda p: p.stat().st_mtime, reverse=True
    )
    if started:
        newest = started[0]
        return [newest], f"the config {newest.parent.parent}/ was last run with"
    return [directory / "config.yaml"], "no results folder here holds config/effective.yaml"


def load_config(paths: list[str | Path], overrides: dict | None = None) -> dict:
    """Read, deep-merge, validate (filling defaults) and check the config files, in order."""
    if not paths:
        raise ConfigError("no config file given")
    merged: dict = {}
    for path in paths:
        merged = deep_merge(merged, read_yaml(path))
    if overrides:
        merged = deep_merge(merged, overrides)
    source = sources_text(paths)
    validate_config(merged, source)
    check_config(merged, source)
    return merged


@cache
def _schema() -> dict:
    return yaml.safe_load(SCHEMA_PATH.read_text(encoding="utf-8"))


def _key_path(parts) -> str:
    return ".".join(str(p) for p in parts) or "(top level)"


def validate_config(config: dict, source: str = "config") -> None:
    """Validate `config` against the JSON schema, filling defaults in place.

    Raises ConfigError naming the first offending key and value.
    """
    import jsonschema

    validator_class = _defaults_filling(jsonschema.Draft202012Validator)
    errors = sorted(
        validator_class(_schema()).iter_errors(config), key=lambda e: list(e.absolute_path)
    )
    if errors:
        err = errors[0]
        raise ConfigError(f"{source}: {_key_path(err.absolute_path)}: {err.message}")


def _defaults_filling(validator_class):
    """A validator that fills `default`s of properties (the jsonschema FAQ recipe)."""
    import jsonschema

    validate_properties = validator_class.VALIDATORS["properties"]

    def set_defaults(validator, properties, instance, schema):
        if isinstance(instance, dict):
            for name, subschema in properties.items():
                if "default" in subschema and name not in instance:
                    instance[name] = copy.deepcopy(subschema["default"])
        yield from validate_properties(validator, properties, instance, schema)

    return jsonschema.validators.extend(validator_class, {"properties": set_defaults})


def _check_matrix(config: dict, source: str) -> None:
    """Every size, variant and seed the matrix names is defined."""
    for i, entry in enumerate(config["matrix"]):
        for field, table in (("sizes", "sizes"), ("variants", "variants"), ("seeds", "seeds")):
            for name in entry[field]:
                if name not in config[table]:
                    raise ConfigError(
                        f"{source}: matrix[{i}].{field}: {name!r} is not defined under "
                        f"'{table}' (defined: {', '.join(config[table])})"
                    )


def _check_size(config: dict, name: str, source: str) -> None:
    """A size the matrix uses: its shape, layout, tensor parallelism, learning rates and
    precision table."""
    training = config["training"]
    size = config["sizes"][name]
    key = f"sizes.{name}"
    if size["hidden"] % size["heads"]:
        raise ConfigError(
            f"{source}: {key}.hidden: {size['hidden']} is not divisible by heads {size['heads']}"
        )
    check_layout(config, name, source)
    tp = size["tensor_parallel"]
    gpus_per_node = size["cluster"]["gpus_per_node"]
    if gpus_per_node and gpus_per_node % tp:
        raise ConfigError(
            f"{source}: {key}.tensor_parallel: {tp} does not divide gpus_per_node "
            f"{gpus_per_node}: a tensor-parallel group must sit within one node"
        )
    if size["heads"] % tp:
        raise ConfigError(
            f"{source}: {key}.heads: {size['heads']} heads do not split over "
            f"tensor_parallel {tp} (each tensor-parallel rank holds whole heads)"
        )
    if tp > 1 and training.get("data_parallel") == "fsdp":
        raise ConfigError(
            f"{source}: training.data_parallel: 'fsdp' is offered at tensor_parallel 1 only, "
            f"but {key}.tensor_parallel is {tp}; use 'zero1' (Pythia's ZeRO stage 1)"
        )
    if tp > 1 and training.get("compile_layers") and training.get("backend") != "neox":
        # torch 2.13's compiled layers crash in DTensor's backward (TrainSettings refuses
        # it too); refused here so that no segment job is queued for it.
        raise ConfigError(
            f"{source}: training.compile_layers: true is offered at tensor_parallel 1 only, "
            f"but {key}.tensor_parallel is {tp}; set training.compile_layers: false"
        )
    if size["min_lr"] > size["lr"]:
        raise ConfigError(f"{source}: {key}.min_lr: {size['min_lr']} exceeds lr {size['lr']}")
    precision = size["precision"]
    if isinstance(precision, dict):
        for variant in precision:
            if variant not in config["variants"]:
                raise ConfigError(f"{source}: {key}.precision: variant {variant!r} is not defined")


def _check_steps(config: dict, source: str) -> None:
    """Checkpoint and evaluation steps lie within training; evaluated steps are checkpoints."""
    training = config["training"]
    iters = training["train_iters"]
    for key, steps in (
        ("training.checkpoints.extra", training["checkpoints"]["extra"]),
        ("evaluation.zero_shot_steps", config["evaluation"]["zero_shot_steps"]),
        ("evaluation.five_shot_steps", config["evaluation"]["five_shot_steps"]),
    ):
        beyond = [s for s in steps if s > iters]
        if beyond:
            raise ConfigError(
                f"{source}: {key}: step {beyond[0]} is beyond training.train_iters ({iters})"
            )
    schedule = set(checkpoint_steps(config))
    for key in ("zero_shot_steps", "five_shot_steps"):
        missing = [s for s in config["evaluation"][key] if s not in schedule]
        if missing:
            raise ConfigError(
                f"{source}: evaluation.{key}: step {missing[0]} is not a checkpoint step "
                "(training.checkpoints)"
            )


def check_config(config: dict, source: str = "config") -> None:
    """Checks a schema cannot express. Raises ConfigError naming the key and the values."""
    training = config["training"]
    training.setdefault("lr_decay_iters", training["train_iters"])
    _check_matrix(config, source)
    used_sizes = {size for entry in config["matrix"] for size in entry["sizes"]}
    for name in config["sizes"]:
        if name in used_sizes:
            _check_size(config, name, source)
    _check_steps(config, source)
    _check_training_data(config, source)
    if config["evaluation"]["local_tasks"] and not config["data"]["raw"]["heldout"]:
        raise ConfigError(
            f"{source}: data.raw.heldout: evaluation.local_tasks needs a held-out shard"
        )
    if not config["publish"]["hub"] and not config["publish"]["local_hub"]:
        raise ConfigError(
            f"{source}: publish.hub and publish.local_hub are both false: nothing would be "
            "published (set one of them true)"
        )
    runs = expand_runs(config)
    if not runs:
        raise ConfigError(f"{source}: matrix: no runs")


# ----------------------------------------------------------------------------- the run matrix


def expand_runs(config: dict) -> dict[str, Run]:
    """All runs of the matrix by name, in matrix order. Raises ConfigError on a name clash."""
    runs: dict[str, Run] = {}
    prefix = config["suite"]["name"]
    for entry in config["matrix"]:
        for size in entry["sizes"]:
            for variant in entry["variants"]:
                for seed in entry["seeds"]:
                    seed_cfg = config["seeds"][seed]
                    variant_cfg = config["variants"][variant]
                    name = f"{prefix}-{size}{variant_cfg['suffix']}{seed_cfg['suffix']}"
                    run = Run(
                        name=name,
                        size=size,
                        variant=variant,
                        seed=seed,
                        data_seed=seed_cfg["data_seed"],
                        weight_seed=seed_cfg["weight_seed"],
                        dedup=variant_cfg["dedup"],
                    )
                    if name in runs and runs[name] != run:
                        raise ConfigError(
                            f"matrix: two different runs are both named {name!r}: give the "
                            "variants or seeds distinct suffixes"
                        )
                    runs[name] = run
    return runs


def get_run(config: dict, name: str) -> Run:
    """The run called `name`. Raises ConfigError listing the runs when there is none."""
    runs = expand_runs(config)
    if name not in runs:
        raise ConfigError(f"no run named {name!r} in the matrix (runs: {', '.join(runs)})")
    return runs[name]


def repo_id(config: dict, run: Run) -> str:
    """The run's repo on the Hub (and the local hub): ``{suite.hub_org}/{run}``."""
    return f"{config['suite']['hub_org']}/{run.name}"


def checkpoint_steps(config: dict) -> list[int]:
    """Every checkpoint step, ascending: extra steps, multiples of factor, and the final step."""
    training = config["training"]
    iters = training["train_iters"]
    factor = training["checkpoints"]["factor"]
    steps = set(training["checkpoints"]["extra"]) | set(range(0, iters + 1, factor)) | {0, iters}
    return sorted(s for s in steps if s <= iters)


def previous_step(config: dict, step: int) -> int:
    """The checkpoint a segment ending at `step` resumes from. Raises ConfigError if none."""
    steps = checkpoint_steps(config)
    if step not in steps or step == 0:
        raise ConfigError(f"step {step} is not a checkpoint step after step0")
    return steps[steps.index(step) - 1]


def segment_group(config: dict, run_name: str, step: int) -> str | None:
    """The Snakemake group of a training segment: the short early segments of a run share
    one allocation; later segments are jobs of their own (None)."""
    if step <= config["training"]["early_group_max_step"]:
        return f"early_{run_name}"
    return None


def eval_batches(config: dict, shots: int) -> list[list[int]]:
    """The evaluation steps for `shots` (0 or 5), chunked into lm-eval jobs."""
    key = {0: "zero_shot_steps", 5: "five_shot_steps"}[shots]
    steps = sorted(set(config["evaluation"][key]))
    per_job = config["evaluation"]["steps_per_job"]
    return [steps[i : i + per_job] for i in range(0, len(steps), per_job)]


def precision(config: dict, run: Run) -> str:
    """The run's training precision: the size's value, or its per-variant value."""
    value = config["sizes"][run.size]["precision"]
    if isinstance(value, dict):
        return value.get(run.variant, "fp16")
    return value


def padded_vocab_size(config: dict, size: str) -> int:
    """GPT-NeoX's padded vocabulary: the tokenizer size rounded up to 128 x tensor parallel."""
    multiple = (
        config["model"]["make_vocab_size_divisible_by"] * config["sizes"][size]["tensor_parallel"]
    )
    return math.ceil(config["data"]["tokenizer"]["vocab_size"] / multiple) * multiple


def ranks_per_node(config: dict, size: str) -> int:
    """Training processes per node of a size: one per GPU, or cluster.cpu_ranks_per_node on CPU
    nodes (gpus_per_node 0)."""
    layout = config["sizes"][size]["cluster"]
    return layout["gpus_per_node"] or config["cluster"]["cpu_ranks_per_node"]


def devices(config: dict, size: str) -> int:
    """Devices (= training ranks) of a size: nodes x ranks_per_node. The one count of them."""
    return config["sizes"][size]["cluster"]["nodes"] * ranks_per_node(config, size)


def data_parallel_size(config: dict, size: str) -> int:
    """Data-parallel ranks of a size: devices / tensor_parallel (each holds whole batch rows).
    Raises ``train.layout.LayoutError`` when tensor_parallel does not divide the devices."""
    return data_ranks(devices(config, size), config["sizes"][size]["tensor_parallel"])


def check_layout(config: dict, size: str, source: str = "config") -> None:
    """The original layout holds: micro_batch x gas x data-parallel ranks = global_batch.

    A GPU always runs the size's configured micro_batch; a cluster layout on which that cannot
    reach the global batch is refused, never silently changed. Raises ConfigError naming the
    size, micro_batch, gas, devices, tensor_parallel and global_batch.
    """
    entry = config["sizes"][size]
    key, tp, n = f"sizes.{size}", entry["tensor_parallel"], devices(config, size)
    global_batch = config["training"]["global_batch"]
    try:
        dp = data_ranks(n, tp)
    except LayoutError:
        raise ConfigError(
            f"{source}: {key}.tensor_parallel: {tp} does not divide the {n} devices "
            f"of {key}.cluster"
        ) from None
    micro, gas = entry["micro_batch"], entry["gas"]
    try:
        steps = accumulation_steps(global_batch, micro, dp)
    except LayoutError:
        steps = None
    if steps != gas:
        raise ConfigError(
            f"{source}: {key}: micro_batch {micro} x gas {gas} x data-parallel ranks {dp} "
            f"(devices {n} / tensor_parallel {tp}) = {micro * gas * dp} sequences per step, "
            f"but training.global_batch is {global_batch}. Each GPU runs {key}.micro_batch as "
            f"configured, so change {key}.gas or {key}.cluster (nodes x gpus_per_node) to "
            f"reach it"
        )


def gpu_record(config: dict, size: str) -> dict:
    """The accelerator a size trains on: `sizes.<size>.cluster.gpu`, else `cluster.gpu`.

    A dict with `name`, `memory_gb` (per device, GB = 1e9 bytes) and `peak_tflops` (dense
    bf16/fp16 peak per device). Raises KeyError naming the size when it is not defined.
    """
    if size not in config["sizes"]:
        raise KeyError(f"sizes.{size}: not defined")
    return dict(config["sizes"][size]["cluster"].get("gpu") or config["cluster"]["gpu"])


def run_config_hash(config: dict, run: Run) -> str:
    """A short hash of everything that determines a run's training (for rerun triggers)."""
    subset = {
        "run": run.as_dict(),
        "size": {k: v for k, v in config["sizes"][run.size].items() if k != "cluster"},
        "model": config["model"],
        "training": {
            k: v
            for k, v in config["training"].items()
            if k not in ("state_interval", "log_interval", "keep_resume_states")
        },
        "data": data_fingerprint_subset(config, run),
    }
    blob = json.dumps(subset, sort_keys=True).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def data_fingerprint_subset(config: dict, run: Run) -> dict:
    """The part of the config that determines a run's token stream (data.source.training_data)."""
    from pythia_suite.data.source import training_data

    return training_data(config, run).fingerprint


def _check_training_data(config: dict, source: str) -> None:
    """Every run's data can be given: its variant has a set under data.source, and its data
    seed is one the source and the backend can give (data.source.check_data_seed). Raises
    ConfigError naming the run or key, before anything is planned or queued."""
    from pythia_suite.data.source import check_data_seed, training_data

    for run in expand_runs(config).values():
        try:
            training_data(config, run)
            check_data_seed(config, run)
        except ConfigError as err:
            raise ConfigError(f"{source}: {err}") from None


# ----------------------------------------------------------------------------- the plan


def parameter_counts(config: dict, size: str) -> tuple[int, int]:
    """(total, non-embedding) parameters of a size, as Pythia counts them."""
    s = config["sizes"][size]
    h, layers = s["hidden"], s["layers"]
    vocab = padded_vocab_size(config, size)
    ffn = config["model"]["mlp_ratio"] * h
    per_layer = (3 * h * h + 3 * h) + (h * h + h) + (h * ffn + ffn) + (ffn * h + h) + 4 * h
    non_embedding = layers * per_layer + 2 * h
    embeddings = vocab * h * (1 if config["model"]["tie_embeddings"] else 2)
    return non_embedding + embeddings, non_embedding


def transformer_flops_per_token(
    *, layers: int, hidden: int, intermediate: int, seq_length: int, vocab: int
) -> int:
    """Training FLOPs per token of a GPT-NeoX model, forward + backward, attention included.

    The one FLOP formula of the suite (plan, segment summaries, MFU), PaLM's / Megatron's
    counting with no recomputation: 6 FLOPs per matmul parameter per token (2 forward, 4
    backward), output layer included, input embedding (a lookup) not; plus attention's scores
    and weighted values, 2 matmuls of S x h per token per layer, x 6:

        6 x L x (4 h^2 + 2 h ffn)  +  12 x L x S x h  +  6 x V x h

    (= 72 L h^2 + 12 L S h + 6 V h for Pythia's ffn = 4h). Biases, norms, softmax and rotary
    are left out, as in those papers. Activation checkpointing's recomputation is not counted:
    MFU counts the model's FLOPs, not the hardware's.
    """
    matmul_params = layers * (4 * hidden * hidden + 2 * hidden * intermediate) + vocab * hidden
    return 6 * matmul_params + 12 * layers * seq_length * hidden


def training_flops_per_token(config: dict, size: str) -> int:
    """Model FLOPs per token of a size, forward + backward (`transformer_flops_per_token`)."""
    s = config["sizes"][size]
    return transformer_flops_per_token(
        layers=s["layers"],
        hidden=s["hidden"],
        intermediate=config["model"]["mlp_ratio"] * s["hidden"],
        seq_length=config["model"]["seq_length"],
        vocab=padded_vocab_size(config, size),
    )


def total_tokens(config: dict) -> int:
    """Tokens every run trains on: train_iters x global_batch x seq_length."""
    training = config["training"]
    return training["train_iters"] * training["global_batch"] * config["model"]["seq_length"]


def plan_rows(config: dict, gpu_peak_tflops: float | None, mfu: float) -> list[dict]:
    """One row per run: parameters, tokens, FLOPs, storage, and GPU-hours at the given MFU.

    The FLOP peak is each size's `gpu_record` unless `gpu_peak_tflops` overrides it.
    """
    training = config["training"]
    tokens = total_tokens(config)
    n_checkpoints = len(checkpoint_steps(config))
    keep = min(training["keep_resume_states"], n_checkpoints)
    publish_bytes = {"float16": 2, "bfloat16": 2, "float32": 4}[config["publish"]["dtype"]]
    rows = []
    for run in expand_runs(config).values():
        total, non_embedding = parameter_counts(config, run.size)
        flops = training_flops_per_token(config, run.size) * tokens
        peak = gpu_peak_tflops or gpu_record(config, run.size)["peak_tflops"]
        gpu_hours = flops / (peak * 1e12 * mfu) / 3600
        rows.append(
            {
                "run": run.name,
                "params": total,
                "non_embedding_params": non_embedding,
                "tokens": tokens,
                "train_flops": flops,
                "checkpoints": n_checkpoints,
                "published_bytes": total * publish_bytes * n_checkpoints,
                "resume_bytes_all": total * RESUME_BYTES_PER_PARAM * n_checkpoints,
                "resume_states_kept": keep,
                "resume_bytes_kept": total * RESUME_BYTES_PER_PARAM * keep,
                "gpus": config["sizes"][run.size]["cluster"]["nodes"]
                * config["sizes"][run.size]["cluster"]["gpus_per_node"],
                "gpu_hours": gpu_hours,
                "gpu": gpu_record(config, run.size)["name"],
                "peak_tflops": peak,
            }
        )
    return rows


def write_effective_config(config: dict, path: str | Path) -> None:
    """Write the merged, validated config for the CLI, atomically. Unchanged content is not
    rewritten, only touched: its time says which suite started last (`find_default_config`)."""
    path = Path(path)
    text = yaml.safe_dump(json.loads(json.dumps(config)), sort_keys=False)
    if path.exists() and path.read_text(encoding="utf-8") == text:
        os.utime(path)
        return
    write_text_atomic(path, text)
