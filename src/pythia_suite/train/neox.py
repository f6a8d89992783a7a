"""GPT-NeoX v1.0 backend: Pythia's own trainer, launched on SLURM, one checkpoint segment a job.

The faithful GPU path. GPT-NeoX v1.0 (tag ``v1.0``, commit ``71df4d5017f9``) with EleutherAI's
DeeperSpeed (tag ``v1.0``) is installed from ``envs/gpt-neox.yaml`` (its post-deploy script
clones GPT-NeoX, installs DeeperSpeed and builds the fused kernels) and checked out at
``training.neox.dir``; this module writes GPT-NeoX's inputs, runs its two entry points, and
turns what they write into a checkpoint the rest of the workflow accepts.

One segment job starts exactly one ``python deepy.py train.py SEGMENT.json`` (the rule adds no
launch prefix under this backend; see ``workflow/rules/common.smk``). What deepy.py then does
depends on the hosts in the hostfile (``DLTS_HOSTFILE``, lines ``host slots=N``), as in
DeeperSpeed v1.0's ``deepspeed/launcher/runner.py``:

- several hosts: the SLURM runner calls ``srun -n <all slots> --export=ALL python -u train.py``
  inside the allocation, and each task takes RANK/LOCAL_RANK/WORLD_SIZE from
  SLURM_PROCID/SLURM_LOCALID/SLURM_NTASKS (``deepspeed_slurm: true``);
- one host: the runner is meant to start the slots itself (``deepspeed.launcher.launch``),
  which sets RANK/LOCAL_RANK/WORLD_SIZE; no srun task exists, so ``deepspeed_slurm`` must be
  false there (with it GPT-NeoX would read SLURM_LOCALID, which no process has). The segment
  config says so. DeeperSpeed v1.0's runner fails on this branch (``runner.exports`` unbound,
  runner.py line 375), so ``check_neox_supported`` refuses one-node GPU layouts; the branch
  serves the CPU test layouts with the stand-in GPT-NeoX.

A *slot* is a GPU (``gpus_per_node``) or, on CPU-only nodes such as the local test cluster,
one of ``cluster.cpu_ranks_per_node`` ranks: one training rank per slot either way
(``slots_per_node``).

A segment ``(a, b]`` loads ``global_step{a}`` and stops after saving ``global_step{b}``. It keeps
the run's ``train-iters`` and stops with ``exit-interval: b`` instead of setting ``train-iters:
b``: GPT-NeoX derives the number of training samples from ``train-iters``, so a shorter value
builds different index maps (for the deduped Pile, a different number of epochs and so a
different data order) and a different warmup/decay unless ``lr-decay-iters`` is pinned. The
exit check runs after the checkpoint save, so ``b`` is written before the process exits.

Conversion: ``python tools/convert_to_hf.py --input_dir SAVE/global_stepN --config_file CFG
--output_dir DIR`` (v1.0's name; later GPT-NeoX has ``tools/ckpts/convert_neox_to_hf.py``).

Importing this module does not import torch: configs and commands can be built on a login node.
"""

from __future__ import annotations

import datetime
import json
import os
import re
import shutil
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from pythia_suite.atomic import atomic_directory, write_json_atomic, write_text_atomic
from pythia_suite.slurm import expand_nodelist, hostnames_from_nodelist
from pythia_suite.train.settings import hf_config
from pythia_suite.train.summary import SEGMENT_SUMMARY_NAME, segment_summary_record

__all__ = [
    "NEOX_V1_COMMIT",
    "NeoXError",
    "NeoXLaunch",
    "expand_nodelist",
    "hostnames_from_nodelist",
    "current_job_nodelist",
    "hostfile_lines",
    "segment_hosts",
    "write_hostfile",
    "segment_config",
    "write_segment_config",
    "neox_json",
    "neox_launch_command",
    "neox_convert_command",
    "point_latest_at",
    "run_neox_segment",
    "convert_neox_checkpoint",
    "slots_per_node",
    "check_neox_supported",
    "run_deviations",
    "neox_step_files",
    "neox_step_missing",
    "sequential_to_layer_files",
    "NeoXSegment",
    "run_neox_config",
    "write_run_segment_config",
    "preshuffled_index_maps",
    "build_neox_index_maps",
    "neox_index_maps_dir",
    "neox_data_prefix",
    "train_segment_neox",
    "checkpoint_from_hf_dir",
    "DoctorCheck",
    "neox_doctor",
    "flash_head_dims",
]

NEOX_V1_COMMIT = "71df4d5017f9f4919566a11454fe3a507ffdc632"
DEFAULT_MASTER_PORT = 29500  # DeepSpeed's default


class NeoXError(RuntimeError):
    """GPT-NeoX could not be prepared or failed; the message names the file, key or command."""


# --- SLURM node lists and hostfiles ---------------------------------------------------------


def current_job_nodelist(environ: Mapping[str, str] | None = None) -> str:
    """The node list of the SLURM job this process runs in.

    ``SLURM_JOB_NODELIST`` when set; Snakemake's jobstep plugin strips it from a rule's
    environment but keeps ``SLURM_JOB_ID``, so then ask ``squeue`` for that job's nodes.
    Raises ``NeoXError`` when the process is not inside a SLURM job or squeue cannot tell.
    """
    env = os.environ if environ is None else environ
    if env.get("SLURM_JOB_NODELIST"):
        return env["SLURM_JOB_NODELIST"]
    job_id = env.get("SLURM_JOB_ID")
    if not job_id:
        raise NeoXError(
            "not inside a SLURM job: neither SLURM_JOB_NODELIST nor SLURM_JOB_ID is set "
            "(pass the node list explicitly)"
        )
    try:
        out = subprocess.run(
            ["squeue", "-h", "-j", job_id, "-o", "%N"],
            capture_output=True,
            text=True,
            check=True,
            timeout=30,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError) as err:
        raise NeoXError(f"squeue could not report the nodes of SLURM job {job_id}: {err}") from err
    if not out:
        raise NeoXError(f"squeue reports no nodes for SLURM job {job_id}")
    return out


def hostfile_lines(hostnames: Sequence[str], slots_per_node: int) -> list[str]:
    """DeepSpeed hostfile lines, one per host: ``"host slots=8"`` (a slot: see the module doc).

    Raises ``ValueError`` for no hosts, a duplicate or blank host name, or ``slots_per_node < 1``.
    """
    if slots_per_node < 1:
        raise ValueError(f"slots_per_node must be >= 1, got {slots_per_node}")
    if not hostnames:
        raise ValueError("hostfile needs at least one host name")
    seen: set[str] = set()
    for host in hostnames:
        if not host or any(c.isspace() for c in host):
            raise ValueError(f"invalid host name {host!r} for a hostfile")
        if host in seen:
            raise ValueError(f"host {host!r} listed twice")
        seen.add(host)
    return [f"{host} slots={slots_per_node}" for host in hostnames]


def write_hostfile(path: str | os.PathLike, hostnames: Sequence[str], slots_per_node: int) -> Path:
    """Write a DeepSpeed hostfile (see ``hostfile_lines``) atomically; returns its path."""
    path = Path(path)
    write_text_atomic(path, "\n".join(hostfile_lines(hostnames, slots_per_node)) + "\n")
    return path


def segment_hosts(
    nodelist: str | None = None, environ: Mapping[str, str] | None = None
) -> list[str]:
    """The hosts a segment trains on: ``nodelist``, else this SLURM job's nodes, else (no SLURM
    job at all, e.g. ``profiles/local``) this machine alone as ``localhost``."""
    env = os.environ if environ is None else environ
    if nodelist is None and not (env.get("SLURM_JOB_NODELIST") or env.get("SLURM_JOB_ID")):
        return ["localhost"]
    return hostnames_from_nodelist(nodelist or current_job_nodelist(env))


# --- segment configs ------------------------------------------------------------------------


def _spellings(key: str) -> tuple[str, str]:
    # GPT-NeoX accepts "train-iters" and "train_iters" alike (Pythia's 6.9b/12b use underscores).
    return key.replace("_", "-"), key.replace("-", "_")


def _get(config: Mapping, key: str, default=None):
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
    total = _get(config, "train-iters")
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
    _set(config, "lr-decay-iters", _get(config, "lr-decay-iters", total))
    _set(config, "exit-interval", end_step)
    extra = set(_get(config, "extra-save-iters", None) or [])
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
    stays: see the module docstring).
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


# --- commands -------------------------------------------------------------------------------


@dataclass(frozen=True)
class NeoXLaunch:
    """A GPT-NeoX launch: run ``argv`` in ``cwd`` with ``env`` added to the environment."""

    argv: list[str]
    cwd: Path
    env: dict[str, str] = field(default_factory=dict)


def neox_launch_command(
    neox_dir: str | os.PathLike,
    config_paths: Sequence[str | os.PathLike],
    *,
    hostnames: Sequence[str],
    hostfile: str | os.PathLike,
    master_port: int = DEFAULT_MASTER_PORT,
    python: str = "python",
) -> NeoXLaunch:
    """``python deepy.py train.py CONFIG.yml ...`` for GPT-NeoX at ``neox_dir``.

    Runs in ``neox_dir`` (deepy.py finds ``train.py`` there) with config paths made absolute.
    Env: ``MASTER_ADDR`` = first host (GPT-NeoX passes it to DeepSpeed's runner as
    ``--master_addr``), ``MASTER_PORT``, and ``DLTS_HOSTFILE`` = the hostfile that GPT-NeoX
    counts GPUs from. The configs must set ``launcher: slurm`` and ``deepspeed_slurm: true``.
    Raises ``ValueError`` for no config or no host.
    """
    if not config_paths:
        raise ValueError("GPT-NeoX needs at least one config file")
    if not hostnames:
        raise ValueError("GPT-NeoX launch needs at least one host")
    neox_dir = Path(neox_dir).resolve()
    argv = [python, str(neox_dir / "deepy.py"), "train.py"]
    argv += [str(Path(p).resolve()) for p in config_paths]
    env = {
        "MASTER_ADDR": hostnames[0],
        "MASTER_PORT": str(master_port),
        "DLTS_HOSTFILE": str(Path(hostfile).resolve()),
    }
    return NeoXLaunch(argv=argv, cwd=neox_dir, env=env)


def neox_convert_command(
    neox_dir: str | os.PathLike,
    global_step_dir: str | os.PathLike,
    config_file: str | os.PathLike,
    output_dir: str | os.PathLike,
    *,
    python: str = "python",
) -> list[str]:
    """argv of GPT-NeoX v1.0's ``tools/convert_to_hf.py`` for one ``global_stepN`` directory.

    v1.0's converter takes one YAML (GPT-NeoX copies the run's configs into
    ``global_stepN/configs/``) and writes a ``GPTNeoXForCausalLM`` directory.
    """
    return [
        python,
        str(Path(neox_dir).resolve() / "tools" / "convert_to_hf.py"),
        "--input_dir",
        str(Path(global_step_dir).resolve()),
        "--config_file",
        str(Path(config_file).resolve()),
        "--output_dir",
        str(Path(output_dir).resolve()),
    ]


# --- running --------------------------------------------------------------------------------


def _require(path: Path, what: str) -> None:
    if not path.exists():
        raise FileNotFoundError(f"{what} not found: {path}")


def _tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def point_latest_at(save_dir: str | os.PathLike, step: int) -> None:
    """Make ``save_dir/latest`` name ``global_step{step}``, the checkpoint GPT-NeoX loads next.

    DeepSpeed loads whatever ``latest`` names; after a rerun or a later segment it may name a
    newer step than the one this segment must start from. Raises ``FileNotFoundError`` naming
    the directory when ``global_step{step}`` does not exist.
    """
    save_dir = Path(save_dir)
    if not (save_dir / f"global_step{step}").exists():
        raise FileNotFoundError(
            f"GPT-NeoX checkpoint of step {step} not found: {save_dir / f'global_step{step}'} "
            "(retention removes the global_stepN of exported, published steps beyond "
            "training.keep_resume_states: retrain from the newest step that kept it)"
        )
    write_text_atomic(save_dir / "latest", f"global_step{step}")


def run_neox_segment(
    neox_dir: str | os.PathLike,
    config_path: str | os.PathLike,
    *,
    save_dir: str | os.PathLike,
    start_step: int,
    end_step: int,
    slots_per_node: int,
    work_dir: str | os.PathLike,
    nodelist: str | None = None,
    master_port: int = DEFAULT_MASTER_PORT,
    python: str = "python",
    log_path: str | os.PathLike | None = None,
) -> Path:
    """Train the segment ``(start_step, end_step]`` with GPT-NeoX inside a SLURM allocation.

    ``config_path`` is the segment's YAML from ``write_segment_config``. Writes the hostfile
    into ``work_dir``, points ``save_dir/latest`` at ``start_step``, runs deepy.py with output
    to ``log_path`` (default ``work_dir/neox.log``) and returns ``save_dir/global_step{end}``.
    ``nodelist`` defaults to this job's (``segment_hosts``). Exactly one deepy.py is started.
    Raises ``FileNotFoundError`` for a missing GPT-NeoX checkout or config, a start checkpoint
    that does not exist (or that retention pruned), and ``NeoXError`` (with the
    log's last lines) when GPT-NeoX fails or exits without writing ``global_step{end}``.
    """
    neox_dir, config_path = Path(neox_dir), Path(config_path)
    save_dir, work_dir = Path(save_dir), Path(work_dir)
    _require(neox_dir / "deepy.py", "GPT-NeoX checkout (deepy.py)")
    _require(config_path, "GPT-NeoX segment config")
    work_dir.mkdir(parents=True, exist_ok=True)
    save_dir.mkdir(parents=True, exist_ok=True)
    hosts = segment_hosts(nodelist)
    hostfile = write_hostfile(work_dir / "hostfile", hosts, slots_per_node)
    if start_step > 0:
        point_latest_at(save_dir, start_step)
    launch = neox_launch_command(
        neox_dir, [config_path], hostnames=hosts, hostfile=hostfile,
        master_port=master_port, python=python,
    )  # fmt: skip
    log_path = Path(log_path) if log_path else work_dir / "neox.log"
    with open(log_path, "w") as log:
        proc = subprocess.run(
            launch.argv, cwd=launch.cwd, env={**os.environ, **launch.env},
            stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
    if proc.returncode != 0:
        raise NeoXError(
            f"GPT-NeoX segment ({start_step}, {end_step}] failed with exit code "
            f"{proc.returncode}: {' '.join(launch.argv)}\nlast lines of {log_path}:\n"
            f"{_tail(log_path)}"
        )
    out = save_dir / f"global_step{end_step}"
    if not out.is_dir():
        raise NeoXError(
            f"GPT-NeoX exited 0 but wrote no {out} (is {end_step} a save step of "
            f"{config_path}?)\nlast lines of {log_path}:\n{_tail(log_path)}"
        )
    return out


_HF_WEIGHTS = ("pytorch_model.bin", "model.safetensors", "pytorch_model.bin.index.json",
               "model.safetensors.index.json")  # fmt: skip


def _read_neox_config(config_file: Path) -> dict:
    """A segment config (plain JSON, see ``neox_json``) or a GPT-NeoX YAML; both parse as YAML."""
    import yaml

    return yaml.safe_load(config_file.read_text()) or {}


def sequential_to_layer_files(global_step_dir: str | os.PathLike, out_dir: str | os.PathLike,
                              tensor_parallel: int) -> Path:  # fmt: skip
    """The layer files v1.0's converter reads, from a checkpoint saved without pipeline stages.

    With ``pipe-parallel-size: 0`` (Pythia's 14m and 31m) GPT-NeoX v1.0 trains
    ``GPT2ModelPipe.to_sequential()``, an ``nn.Sequential`` of the same layer specs
    (``megatron/model/gpt2_model.py``), and DeepSpeed's engine saves its whole state dict as
    ``module`` in ``mp_rank_XX_model_states.pt`` (``runtime/engine.py`` ``_save_checkpoint``),
    keys ``sequential.<spec index>.<name>``. The pipeline engine would have saved spec ``i``'s
    tensors as ``layer_<i>-model_XX-model_states.pt`` (``runtime/pipe/module.py``
    ``ckpt_layer_path``), the files ``tools/convert_to_hf.py`` reads. This writes those files
    into ``out_dir`` and returns it. Raises ``NeoXError`` naming the file when a model-parallel
    rank's file is missing or holds no ``sequential.*`` tensors.
    """
    import torch

    step_dir, out_dir = Path(global_step_dir), Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    for rank in range(tensor_parallel):
        path = step_dir / f"mp_rank_{rank:02d}_model_states.pt"
        if not path.is_file():
            raise NeoXError(f"sequential GPT-NeoX checkpoint incomplete: {path} not found")
        # Written by this run's own GPT-NeoX: the file also holds optimizer and scheduler state
        # (Python objects), so it cannot be read with weights_only.
        module = torch.load(path, map_location="cpu", weights_only=False).get("module") or {}
        layers: dict[int, dict] = {}
        for key, tensor in module.items():
            match = re.fullmatch(r"sequential\.(\d+)\.(.+)", key)
            if match:
                layers.setdefault(int(match[1]), {})[match[2]] = tensor
        if not layers:
            raise NeoXError(f"{path}: no sequential.* tensors in 'module' (not a pipe-parallel-"
                            "size 0 checkpoint?)")  # fmt: skip
        for index, tensors in layers.items():
            torch.save(tensors, out_dir / f"layer_{index:02d}-model_{rank:02d}-model_states.pt")
    return out_dir


def convert_neox_checkpoint(
    neox_dir: str | os.PathLike,
    global_step_dir: str | os.PathLike,
    config_file: str | os.PathLike,
    output_dir: str | os.PathLike,
    *,
    python: str = "python",
    log_path: str | os.PathLike | None = None,
) -> Path:
    """Convert ``global_stepN`` to a Hugging Face model directory at ``output_dir``.

    Runs v1.0's ``tools/convert_to_hf.py`` into a temporary sibling directory and renames it
    to ``output_dir`` (replacing an old one) only once it holds ``config.json`` and weights.
    A checkpoint saved without pipeline stages (``pipe-parallel-size: 0``) is first rewritten
    into the layer files the converter reads (``sequential_to_layer_files``), beside the output.
    Raises ``FileNotFoundError`` naming a missing converter, checkpoint or config, and
    ``NeoXError`` (with the converter's output) when it fails or writes no model.
    """
    neox_dir, step_dir = Path(neox_dir), Path(global_step_dir)
    config_file, output_dir = Path(config_file), Path(output_dir)
    _require(neox_dir / "tools" / "convert_to_hf.py", "GPT-NeoX converter")
    _require(step_dir, "GPT-NeoX checkpoint")
    _require(config_file, "GPT-NeoX config")
    neox_cfg = _read_neox_config(config_file)
    with atomic_directory(output_dir) as tmp:
        source = step_dir
        if _get(neox_cfg, "pipe-parallel-size", 1) == 0:
            source = sequential_to_layer_files(
                step_dir, tmp / "layers", _get(neox_cfg, "model-parallel-size", 1)
            )
        argv = neox_convert_command(neox_dir, source, config_file, tmp / "hf", python=python)
        proc = subprocess.run(argv, cwd=neox_dir.resolve(), capture_output=True, text=True)
        if log_path is not None:
            write_text_atomic(Path(log_path), proc.stdout + proc.stderr)
        problem = None
        if proc.returncode != 0:
            problem = f"exit code {proc.returncode}"
        elif not (tmp / "hf" / "config.json").is_file():
            problem = f"no config.json in {tmp / 'hf'}"
        elif not any((tmp / "hf" / name).is_file() for name in _HF_WEIGHTS):
            problem = f"no weights ({', '.join(_HF_WEIGHTS)}) in {tmp / 'hf'}"
        if problem:
            output = "\n".join((proc.stdout + proc.stderr).splitlines()[-20:])
            raise NeoXError(f"converting {step_dir} failed ({problem}): {' '.join(argv)}\n{output}")
        shutil.rmtree(tmp / "layers", ignore_errors=True)
        for item in (tmp / "hf").iterdir():
            os.replace(item, tmp / item.name)
        (tmp / "hf").rmdir()
    return output_dir


# --- one config for `neox-config RUN` and every segment ---------------------------------------


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
    spec = _get(neox_config, "attention-config") or [[["global"], 1]]
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
    from pythia_suite import config as cfg

    kinds = attention_types(cfg.neox_config(dict(config), run))
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
    from pythia_suite import config as cfg
    from pythia_suite.data.source import check_data_seed

    for run in runs:
        check_data_seed(config, run, backend="neox")
        neox_cfg = cfg.neox_config(dict(config), run)
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
        pipe = _get(neox_cfg, "pipe-parallel-size", 1)
        if pipe not in (0, 1):
            raise cfg.ConfigError(
                f"run {run.name}: pipe-parallel-size {pipe}: the neox path converts and checks "
                "checkpoints of pipe-parallel-size 0 or 1 only (Pythia's)"
            )


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
    ``deepspeed_slurm`` off on one node (the module doc says why), ``master_port`` (deepy.py
    gives DeeperSpeed's runner the config's port, not ``MASTER_PORT``) and GPT-NeoX's evaluation
    off (``SEGMENT_EVALUATION``). Raises ``ConfigError`` when the run's data seed cannot be
    given (``data.source.check_data_seed``: GPT-NeoX has one seed for weights and data).
    """
    from pythia_suite import config as cfg
    from pythia_suite.data.source import check_data_seed

    check_data_seed(config, run, backend="neox")
    if segment is None:
        return cfg.neox_config(dict(config), run, dataset_prefix)
    base = cfg.neox_config(dict(config), run, segment.data_prefix)
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


# --- data: index maps built once per dataset (rule neox_index_maps), read by every segment ---


def _requested_samples(neox_config: Mapping, global_batch: int) -> dict[str, int]:
    """Samples GPT-NeoX v1.0 asks of each split (``megatron/data/data_utils.py``), by dataset
    name: the number in the index-map file names."""
    import math

    train_iters = _get(neox_config, "train-iters")
    eval_iters = _get(neox_config, "eval-iters", 100)
    eval_interval = _get(neox_config, "eval-interval", 1000)
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


def _link(target: Path, link: Path) -> None:
    """``link`` -> ``target`` (absolute), replacing an older link."""
    tmp = link.with_name(f".{link.name}.tmp-{os.getpid()}")
    tmp.unlink(missing_ok=True)
    tmp.symlink_to(Path(target).resolve())
    os.replace(tmp, link)


def _link_beside(target: Path, link: Path) -> None:
    """``link`` -> ``target``'s name, both in one directory (stays valid when it is renamed)."""
    tmp = link.with_name(f".{link.name}.tmp-{os.getpid()}")
    tmp.unlink(missing_ok=True)
    tmp.symlink_to(Path(target).name)
    os.replace(tmp, link)


def _alias_maps(local: Path, out_dir: Path, made, requested: Mapping[str, int], *,
                seq_length: int, seed: int) -> None:  # fmt: skip
    """Give every other split in ``requested`` the maps ``made`` under its own file names, as
    links: its evaluation is off, so GPT-NeoX finds them (and builds none) but never reads them."""
    from pythia_suite.data.order import index_map_paths

    for name, count in requested.items():
        linked = index_map_paths(local, out_dir, count, seq_length, seed, name=name)
        for path, source in zip(linked, made, strict=True):
            if path != source:
                _link_beside(source, path)


def preshuffled_index_maps(
    prefix: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    seq_length: int,
    seed: int,
    requested: Mapping[str, int],
    min_items: int = 0,
) -> str:
    """GPT-NeoX v1.0 index maps under which its ``GPT2Dataset`` reads a preshuffled set in order.

    A preshuffled item is ``seq_length + 1`` tokens; GPT-NeoX's samples are ``seq_length + 1``
    tokens at stride ``seq_length``. So each item is one document (``doc_idx`` = identity) and
    item ``k`` is sample ``2k``: ``sample_idx`` rows ``2k = (k, 0)`` and ``2k+1 = (k,
    seq_length)``, ``shuffle_idx[k] = 2k``. ``shuffle_idx`` has one padding entry more than there
    are items, so that ``len(GPT2Dataset)`` (``len(shuffle_idx) - 1``) covers every item.

    Writes ``out_dir/document.{bin,idx}`` (links to ``prefix``) and the three ``.npy`` files
    once, under the names GPT-NeoX looks for for the first dataset name in ``requested``
    (``train_0``: its sample count); every other name gets links to them (the maps do not depend
    on the count), so GPT-NeoX loads them instead of building its own. Returns the prefix to
    give GPT-NeoX. Raises ``ValueError`` naming the ``.idx`` when an item is not
    ``seq_length + 1`` tokens or there are fewer than ``min_items`` items.
    """
    from pythia_suite.data.indexed import IndexedDataset
    from pythia_suite.data.order import index_map_paths

    prefix, out_dir = Path(prefix), Path(out_dir)
    sizes = np.asarray(IndexedDataset(prefix).sizes)
    items = len(sizes)
    bad = np.flatnonzero(sizes != seq_length + 1)
    if bad.size:
        raise ValueError(
            f"{prefix}.idx: item {int(bad[0])} has {int(sizes[bad[0]])} tokens, a preshuffled "
            f"item must have seq_length + 1 = {seq_length + 1}"
        )
    if items < max(min_items, 1):
        raise ValueError(
            f"{prefix}.idx: {items} items, but training reads {min_items} (train_iters x "
            "global_batch)"
        )
    out_dir.mkdir(parents=True, exist_ok=True)
    local = out_dir / "document"
    for ext in (".bin", ".idx"):
        _link(Path(f"{prefix}{ext}"), Path(f"{local}{ext}"))
    if not requested:
        return str(local)
    k = np.arange(items, dtype=np.int64)
    doc_idx = k.astype(np.int32)
    sample_idx = np.empty((2 * items, 2), dtype=np.int32)
    sample_idx[0::2, 0] = k
    sample_idx[0::2, 1] = 0
    sample_idx[1::2, 0] = k
    sample_idx[1::2, 1] = seq_length
    shuffle_idx = np.empty(items + 1, dtype=np.uint32 if 2 * items < 2**32 - 1 else np.int64)
    shuffle_idx[:items] = 2 * k
    shuffle_idx[items] = 2 * (items - 1)  # padding: never read (len = items)
    first, count = next(iter(requested.items()))
    made = index_map_paths(local, out_dir, count, seq_length, seed, name=first)
    for path, array in zip(made, (doc_idx, sample_idx, shuffle_idx), strict=True):
        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}.npy")
        np.save(tmp, array, allow_pickle=False)
        os.replace(tmp, path)
    _alias_maps(local, out_dir, made, requested, seq_length=seq_length, seed=seed)
    return str(local)


def _suite_index_maps(dataset_prefix: str, order_dir: str, out_dir: Path, *,
                      requested: Mapping[str, int], seq_length: int, seed: int) -> str:  # fmt: skip
    """Link the dataset and the suite's own ``train_0`` index maps (``build-order``) into
    ``out_dir``, where GPT-NeoX finds them beside the data prefix and loads them instead of
    writing its own; the other names in ``requested`` link to the same maps (never read: the
    segments' evaluation is off). Returns the prefix to give GPT-NeoX."""
    from pythia_suite.data.order import index_map_paths

    out_dir.mkdir(parents=True, exist_ok=True)
    local = out_dir / Path(dataset_prefix).name
    for ext in (".bin", ".idx"):
        _link(Path(f"{dataset_prefix}{ext}"), Path(f"{local}{ext}"))
    count = requested["train_0"]
    theirs = index_map_paths(dataset_prefix, order_dir, count, seq_length, seed)
    ours = index_map_paths(local, out_dir, count, seq_length, seed)
    for src, dst in zip(theirs, ours, strict=True):
        if not src.is_file():
            raise FileNotFoundError(f"index map not found: {src} (rule build_order)")
        _link(src, dst)
    _alias_maps(local, out_dir, ours, requested, seq_length=seq_length, seed=seed)
    return str(local)


def neox_work_dir(config: Mapping, run) -> Path:
    """Where GPT-NeoX's side of a run lives: ``paths.state/<run>/neox`` (``checkpoints/`` =
    its ``save``/``load``, ``stepN/`` = a segment's config, hostfile and logs)."""
    from pythia_suite import paths

    return Path(paths.state_dir(config["paths"]["state"], run.name)) / "neox"


def neox_index_maps_dir(config: Mapping, variant: str, seed: int | str) -> str:
    """Where rule ``neox_index_maps`` puts a dataset's GPT-NeoX data prefix and index maps (one
    directory per variant and data seed, shared by every run that reads them)."""
    return f"{config['paths']['results']}/data/neox/{variant}/seed{seed}"


def run_of_dataset(config: Mapping, variant: str, seed: int | str):
    """A run of the matrix that trains on ``variant`` with data seed ``seed`` (they all read the
    same data prefix and maps). Raises ``ConfigError`` naming both when no run does."""
    from pythia_suite import config as cfg

    for run in cfg.expand_runs(dict(config)).values():
        if run.variant == variant and str(run.data_seed) == str(seed):
            return run
    raise cfg.ConfigError(f"no run of the matrix trains on {variant} with data seed {seed}")


def _map_seed(config: Mapping, run) -> int:
    """The seed in the index-map names GPT-NeoX looks for: its config's one ``seed``."""
    from pythia_suite import config as cfg

    return _get(cfg.neox_config(dict(config), run), "seed")


def neox_data_prefix_path(config: Mapping, run) -> str:
    """The data prefix a run's segments give GPT-NeoX (built by ``build_neox_index_maps``)."""
    from pythia_suite.data.source import training_data

    maps = neox_index_maps_dir(config, run.variant, run.data_seed)
    return str(Path(maps) / Path(training_data(config, run).dataset_prefix).name)


def build_neox_index_maps(config: Mapping, run, out_dir: str | os.PathLike) -> str:
    """Rule ``neox_index_maps``: the data prefix GPT-NeoX reads for ``run``'s dataset and data
    seed, with every index map its segments ask for, built once into ``out_dir`` (renamed into
    place when complete): the Megatron dataset with the suite's own maps (``data.source: raw``,
    ``idxmaps``), or the preshuffled set, already in order, with hand-built ones. The PyTorch
    backend's token stream either way (both from ``data.source.training_data``). Returns the
    prefix (``neox_data_prefix_path``)."""
    from pythia_suite.data.source import training_data

    tokens = training_data(config, run)
    requested = segment_requested_samples(config)
    with atomic_directory(out_dir) as tmp:
        if tokens.order_dir is None:
            training = config["training"]
            preshuffled_index_maps(
                tokens.dataset_prefix,
                tmp,
                seq_length=tokens.seq_length,
                seed=_map_seed(config, run),
                requested=requested,
                min_items=training["train_iters"] * training["global_batch"],
            )
        else:
            _suite_index_maps(
                tokens.dataset_prefix,
                tokens.order_dir,
                tmp,
                requested={**requested, "train_0": tokens.num_samples},
                seq_length=tokens.seq_length,
                seed=tokens.data_seed,
            )
    return str(Path(out_dir) / Path(tokens.dataset_prefix).name)


def neox_data_prefix(config: Mapping, run) -> str:
    """The data prefix a run's GPT-NeoX segment reads, as rule ``neox_index_maps`` left it: a
    segment job writes no index map. Raises ``FileNotFoundError`` naming the first missing file
    (its dataset, or a map for a split GPT-NeoX asks for)."""
    from pythia_suite.data.order import index_map_paths
    from pythia_suite.data.source import training_data

    prefix = neox_data_prefix_path(config, run)
    tokens = training_data(config, run)
    requested = segment_requested_samples(config)
    if tokens.order_dir is not None:
        requested["train_0"] = tokens.num_samples
    seed = _map_seed(config, run)
    wanted = [Path(prefix + ".bin"), Path(prefix + ".idx")]
    for name, count in requested.items():
        wanted += index_map_paths(prefix, Path(prefix).parent, count, tokens.seq_length, seed,
                                  name=name)  # fmt: skip
    for path in wanted:
        if not path.is_file():  # follows the links
            raise FileNotFoundError(f"GPT-NeoX data not found: {path} (rule neox_index_maps)")
    return prefix


# --- a segment, start to finish ----------------------------------------------------------------


def neox_step_files(neox_config: Mapping, data_parallel: int) -> list[str]:
    """The files a finished GPT-NeoX v1.0 save leaves in ``global_stepN``, for a run's config
    and data-parallel size, as DeeperSpeed v1.0 names them:

    - ``mp_rank_XX_model_states.pt``, one per model-parallel rank (``engine._get_ckpt_name``);
    - with pipeline stages (``pipe-parallel-size`` >= 1), one
      ``layer_II-model_XX-model_states.pt`` per layer spec with weights and model-parallel rank
      (``pipe/module.py`` ``ckpt_layer_path``): 0 (embedding), 2..L+1 (transformer layers),
      L+3 (final norm), L+4 (output layer, untied);
    - with ZeRO (stage >= 1), ``zero_pp_rank_D_mp_rank_XX_optim_states.pt`` per data-parallel
      and model-parallel rank (``engine._get_rank_zero_ckpt_name``).
    """
    tp = _get(neox_config, "model-parallel-size", 1)
    layers = _get(neox_config, "num-layers")
    pipe = _get(neox_config, "pipe-parallel-size", 1)
    zero = (_get(neox_config, "zero_optimization") or {}).get("stage", 0)
    files = [f"mp_rank_{m:02d}_model_states.pt" for m in range(tp)]
    if pipe >= 1:
        specs = [0, *range(2, layers + 2), layers + 3]
        if _get(neox_config, "no-weight-tying", False):
            specs.append(layers + 4)
        files += [f"layer_{i:02d}-model_{m:02d}-model_states.pt" for i in specs for m in range(tp)]
    if zero >= 1:
        files += [f"zero_pp_rank_{d}_mp_rank_{m:02d}_optim_states.pt"
                  for d in range(data_parallel) for m in range(tp)]  # fmt: skip
    return files


def latest_step(save_dir: str | os.PathLike) -> int | None:
    """The step ``save_dir/latest`` names (``global_stepN``), or None without a readable one."""
    try:
        text = (Path(save_dir) / "latest").read_text().strip()
    except OSError:
        return None
    match = re.fullmatch(r"global_step(\d+)", text)
    return int(match[1]) if match else None


def neox_step_missing(save_dir: str | os.PathLike, step: int, neox_config: Mapping,
                      data_parallel: int) -> list[str]:  # fmt: skip
    """What ``save_dir/global_step{step}`` lacks of a finished save (``neox_step_files``), and
    ``latest`` when it names an earlier step: DeepSpeed writes ``latest`` after every rank's
    files and a barrier, so a save that was killed leaves it at an older step. Empty when
    complete."""
    step_dir = Path(save_dir) / f"global_step{step}"
    missing = [n for n in neox_step_files(neox_config, data_parallel)
               if not (step_dir / n).is_file()]  # fmt: skip
    named = latest_step(save_dir)
    if named is None or named < step:
        missing.append(f"latest (names global_step{named}, not >= {step})")
    return missing


def train_segment_neox(config: Mapping, run, step: int, output: str | os.PathLike,
                       inputs: Sequence[Path] = ()) -> Path:  # fmt: skip
    """Train the segment ending at ``step`` with GPT-NeoX v1.0, convert its checkpoint with
    GPT-NeoX's converter, and write the workflow's checkpoint ``output`` (weights, trainer
    state, provenance record naming ``inputs``) as the PyTorch backend does.

    GPT-NeoX keeps its own checkpoints (``global_stepN``, ZeRO shards included) under
    ``paths.state/<run>/neox/checkpoints``, outside the declared outputs. Step 0 is saved by the
    first segment (0 is in ``extra-save-iters``), so the step0 job runs that segment and the
    next job reuses what exists. The state dir lock is held throughout, so a restarted Snakemake
    waits for this job (``await-segment``). Raises ``ConfigError`` for a missing checkout or
    differing seeds, ``NeoXError`` when GPT-NeoX or its converter fail.
    """
    from pythia_suite import config as cfg
    from pythia_suite import paths
    from pythia_suite.data.source import check_data_seed
    from pythia_suite.train.checkpoint import state_dir_lock

    settings = config["training"]["neox"]
    if not settings["dir"]:
        raise cfg.ConfigError("training.neox.dir: the neox backend needs a GPT-NeoX v1.0 checkout")
    check_data_seed(config, run, backend="neox")
    steps = cfg.checkpoint_steps(dict(config))
    end = step if step > 0 else steps[1]
    start = cfg.previous_step(dict(config), end)
    state = Path(paths.state_dir(config["paths"]["state"], run.name))
    base = neox_work_dir(config, run)
    save_dir, work = base / "checkpoints", base / f"step{end}"
    nodes = config["sizes"][run.size]["cluster"]["nodes"]
    started = time.time()
    with state_dir_lock(state):
        segment = NeoXSegment(
            save_dir=save_dir,
            start_step=start,
            end_step=end,
            data_prefix=neox_data_prefix(config, run),
            vocab_file=str(Path(paths.tokenizer(config["paths"]["results"])).resolve()),
            nodes=nodes,
            master_port=settings["master_port"],
        )
        segment_yml = work / "segment.json"  # plain JSON: DeeperSpeed's SLURM runner parses it
        work.mkdir(parents=True, exist_ok=True)
        segment_config = write_run_segment_config(config, run, segment, segment_yml)
        global_dir = save_dir / f"global_step{step}"
        summary_path = work / SEGMENT_SUMMARY_NAME
        data_parallel = cfg.data_parallel_size(dict(config), run.size)
        if neox_step_missing(save_dir, step, segment_config, data_parallel):
            launched = time.time()
            run_neox_segment(
                settings["dir"],
                segment_yml,
                save_dir=save_dir,
                start_step=start,
                end_step=end,
                slots_per_node=slots_per_node(config, run.size),
                work_dir=work,
                master_port=settings["master_port"],
                python=settings["python"],
            )
            write_json_atomic(summary_path, neox_segment_summary(
                config, run, start, end, launch_s=time.time() - launched,
                wall_s=time.time() - started, started=started,
            ))  # fmt: skip
            missing = neox_step_missing(save_dir, step, segment_config, data_parallel)
            if missing:
                raise NeoXError(
                    f"GPT-NeoX exited 0 but {global_dir} is incomplete: missing "
                    f"{', '.join(missing[:5])}{' ...' if len(missing) > 5 else ''}"
                )
        hf_dir = convert_neox_checkpoint(
            settings["dir"], global_dir, segment_yml, work / f"hf-step{step}",
            python=settings["python"], log_path=work / f"convert-step{step}.log",
        )  # fmt: skip
        return checkpoint_from_hf_dir(
            hf_dir, output, hf_config(dict(config), run), step=step, start_step=start,
            neox_checkpoint=global_dir, record_config={"run": run.as_dict(), "backend": "neox",
            "neox": dict(settings),
            "deviations": run_deviations(config, run)}, inputs=inputs, started=started,
            world_size=nodes * slots_per_node(config, run.size),
            segment_summary=summary_path if step == end and summary_path.is_file() else None,
        )  # fmt: skip


def neox_segment_summary(config: Mapping, run, start: int, end: int, *, launch_s: float,
                         wall_s: float, started: float) -> dict:  # fmt: skip
    """The segment summary record (``paths.SEGMENT_SUMMARY_NAME``) of a GPT-NeoX segment.

    What GPT-NeoX does not report back is left null rather than guessed: its losses and fp16
    skips stay in its own log (``neox.log`` in the work directory), so ``losses`` are null,
    ``skipped_steps`` is null and ``spikes`` empty. ``train_time_s`` is the wall time of the one
    ``deepy.py`` launch (its start-up included), so ``tokens_per_s`` and ``mfu`` are lower
    bounds; ``wall_s`` runs from the job's start to the launch's end.
    """
    from pythia_suite import config as cfg

    config = dict(config)
    size = config["sizes"][run.size]
    gpu = cfg.gpu_record(config, run.size) if size["cluster"]["gpus_per_node"] else None
    return segment_summary_record(
        run=run.name,
        size=run.size,
        start_step=start,
        end_step=end,
        steps=end - start,
        skipped_steps=None,
        tokens_per_step=config["training"]["global_batch"] * config["model"]["seq_length"],
        train_time_s=launch_s,
        wall_s=wall_s,
        flops_per_token=cfg.training_flops_per_token(config, run.size),
        peak_tflops=gpu["peak_tflops"] if gpu else None,
        device_kind="cuda" if gpu else "cpu",
        device_name=gpu["name"] if gpu else "cpu",
        devices=cfg.devices(config, run.size),
        nodes=size["cluster"]["nodes"],
        data_parallel=cfg.data_parallel_size(config, run.size),
        tensor_parallel=size["tensor_parallel"],
        micro_batch=size["micro_batch"],
        gas=size["gas"],
        precision=cfg.precision(config, run),
        losses=[],
        spikes=[],
        started_at=datetime.datetime.fromtimestamp(started, datetime.UTC).isoformat(
            timespec="seconds"
        ),
        hosts=segment_hosts(None),
    )


def checkpoint_from_hf_dir(
    hf_dir: str | os.PathLike,
    output: str | os.PathLike,
    hf_config: dict,
    *,
    step: int,
    start_step: int,
    neox_checkpoint: str | os.PathLike,
    record_config: dict,
    inputs: Sequence[Path] = (),
    started: float | None = None,
    world_size: int | None = None,
    segment_summary: str | os.PathLike | None = None,
) -> Path:
    """The workflow's checkpoint ``output`` from a converted GPT-NeoX checkpoint.

    Reads the converter's weights (one file or an index of shards: ``export.load_hf_weights``),
    writes them as fp32 ``model.safetensors`` with ``hf_config.json`` and a
    ``trainer_state.json`` in the PyTorch backend's format (``backend: neox``, the
    ``global_stepN`` it came from, which retention prunes like ``optimizer/``), renames the
    directory into place, then writes its provenance record: so ``checkpoint_complete``,
    ``verify``, export and retention take it as they take the PyTorch backend's. Raises
    ``ExportError`` naming the file when the converted weights cannot be read.
    """
    from safetensors.torch import save_file

    from pythia_suite.export import load_hf_weights
    from pythia_suite.provenance import Recorder
    from pythia_suite.train.checkpoint import TRAINER_STATE_FORMAT

    output = Path(output)
    tensors = load_hf_weights(hf_dir, framework="pt")
    recorder = Recorder(output, "checkpoint", record_config, list(inputs))
    if started is not None:
        recorder.started = started
    state = {
        "format": TRAINER_STATE_FORMAT,
        "step": step,
        "start_step": start_step,
        "backend": "neox",
        "neox_checkpoint": str(Path(neox_checkpoint).resolve()),
        "world_size": world_size,
        "history": [],  # GPT-NeoX logs its losses itself (neox.log in the state dir)
    }
    with atomic_directory(output) as tmp:  # replaces an old one only once the new one is whole
        save_file({k: v.float().contiguous() for k, v in tensors.items()},
                  str(tmp / "model.safetensors"), metadata={"format": "pt"})  # fmt: skip
        write_json_atomic(tmp / "hf_config.json", hf_config, indent=1)
        write_json_atomic(tmp / "trainer_state.json", state, indent=1)
        if segment_summary is not None:  # written by the job that trained the segment ending here
            shutil.copyfile(segment_summary, tmp / SEGMENT_SUMMARY_NAME)
    recorder.extra = {"neox_checkpoint": state["neox_checkpoint"], "world_size": world_size}
    recorder.write()
    return output


# --- neox-doctor ---------------------------------------------------------------------------------

# What envs/gpt-neox.yaml installs; the doctor checks the environment against it.
# GPT-NeoX v1.0 README: "developed and tested for Python 3.8"; 3.9 "appears to work".
SUPPORTED_PYTHON = ((3, 8), (3, 9))
PINNED_TORCH = "1.12.1"  # envs/gpt-neox.yaml
# DeeperSpeed tag v1.0 (the SLURM runner); its setup.py records `git rev-parse --short HEAD` as
# deepspeed.__git_hash__. v1.0's own requirements pin eb7f5cff, which has no SLURM runner.
DEEPERSPEED_V1_COMMIT = "7069d10d2c9abac50576c84cb7e45910fafa218c"
FUSED_KERNELS = ("scaled_upper_triang_masked_softmax_cuda", "scaled_masked_softmax_cuda")
FLASH_KERNEL = "flash_attn_cuda"  # flash-attn 0.2.2's extension, used when a layer is flash

# Run by the GPT-NeoX environment's Python: reports what it has, never fails itself.
_PROBE = r"""
import importlib, importlib.util, json, os, sys
out = {"python": list(sys.version_info[:3])}
sys.path.insert(0, sys.argv[1])
def attempt(name):
    try:
        module = importlib.import_module(name)
        return {"ok": True, "version": getattr(module, "__version__", None),
                "git_hash": getattr(module, "__git_hash__", None)}
    except BaseException as err:
        return {"ok": False, "error": f"{type(err).__name__}: {err}"}
out["torch"] = attempt("torch")
if out["torch"]["ok"]:
    import torch
    out["torch"]["cuda"] = torch.version.cuda
    try:
        out["torch"]["arch_list"] = torch.cuda.get_arch_list()
        n = torch.cuda.device_count() if torch.cuda.is_available() else 0
        out["gpus"] = [{"name": torch.cuda.get_device_name(i),
                        "capability": list(torch.cuda.get_device_capability(i))} for i in range(n)]
    except BaseException as err:
        out["gpus"] = []
        out["gpu_error"] = f"{type(err).__name__}: {err}"
out["deepspeed"] = attempt("deepspeed")
out["megatron"] = attempt("megatron")
out["kernels"] = {name: attempt(name) for name in sys.argv[2:]}
try:  # definitions and imports only: the script's work is under __main__
    path = os.path.join(sys.argv[1], "tools", "convert_to_hf.py")
    spec = importlib.util.spec_from_file_location("convert_to_hf", path)
    spec.loader.exec_module(importlib.util.module_from_spec(spec))
    out["converter"] = {"ok": True}
except BaseException as err:
    out["converter"] = {"ok": False, "error": f"{type(err).__name__}: {err}"}
print(json.dumps(out))
"""


@dataclass(frozen=True)
class DoctorCheck:
    """One line of ``neox-doctor``: what was checked, whether it passed, what was found."""

    name: str
    ok: bool
    detail: str


def kernel_archs(neox_dir: str | os.PathLike) -> list[tuple[int, int]]:
    """The GPU architectures GPT-NeoX's fused kernels are compiled for (``code=sm_XY`` in
    ``megatron/fused_kernels/setup.py``; v1.0: sm_70 and sm_80). Empty when unreadable."""
    path = Path(neox_dir) / "megatron" / "fused_kernels" / "setup.py"
    try:
        text = path.read_text()
    except OSError:
        return []
    found = {(int(m[0]), int(m[1])) for m in re.findall(r"code=sm_(\d)(\d+)", text)}
    return sorted(found)


def arch_supported(capability: Sequence[int], archs: Sequence[tuple[int, int]]) -> bool:
    """Whether a GPU of compute capability ``(major, minor)`` runs cubins built for ``archs``:
    same major, built minor <= the GPU's (CUDA's binary compatibility; no PTX is embedded)."""
    major, minor = int(capability[0]), int(capability[1])
    return any(a_major == major and a_minor <= minor for a_major, a_minor in archs)


def torch_runs_on(capability: Sequence[int], arch_list: Sequence[str]) -> bool:
    """Whether a torch build whose ``torch.cuda.get_arch_list()`` is ``arch_list`` has kernels
    for a GPU of ``capability``: a cubin ``sm_XY`` of the same major and minor <= the GPU's, or
    PTX ``compute_XY`` at or below it (compiled on load)."""
    gpu = (int(capability[0]), int(capability[1]))
    for arch in arch_list:
        match = re.fullmatch(r"(sm|compute)_(\d)(\d+)", arch)
        if not match:
            continue
        built = (int(match[2]), int(match[3]))
        if match[1] == "sm" and built[0] == gpu[0] and built[1] <= gpu[1]:
            return True
        if match[1] == "compute" and built <= gpu:
            return True
    return False


def _git_head(neox_dir: Path) -> str:
    proc = subprocess.run(["git", "-C", str(neox_dir), "rev-parse", "HEAD"],
                          capture_output=True, text=True, timeout=30)  # fmt: skip
    if proc.returncode != 0:
        raise NeoXError(proc.stderr.strip() or f"git rev-parse failed in {neox_dir}")
    return proc.stdout.strip()


PROBE_TIMEOUT_S = 300


def _probe(python: str, neox_dir: Path) -> dict:
    argv = [python, "-c", _PROBE, str(neox_dir), *FUSED_KERNELS, FLASH_KERNEL]
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=PROBE_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        raise NeoXError(f"{python} did not finish the probe in {PROBE_TIMEOUT_S} s") from None
    except OSError as err:
        raise NeoXError(f"cannot run {python}: {err}") from None
    try:
        return json.loads(proc.stdout.strip().splitlines()[-1])
    except (IndexError, json.JSONDecodeError):
        tail = " | ".join((proc.stdout + proc.stderr).strip().splitlines()[-3:])
        raise NeoXError(
            f"{python} could not run the probe (exit {proc.returncode}): {tail}"
        ) from None


def _one_line(text: str, limit: int = 400) -> str:
    """``text`` on one line (a traceback or a multi-line error would break the report)."""
    line = " ".join(str(text).split())
    return line if len(line) <= limit else line[: limit - 3] + "..."


def neox_doctor(
    neox_dir: str | os.PathLike | None,
    python: str = "python",
    *,
    flash_head_dims: Mapping[str, int] | None = None,
    git_head: Callable[[Path], str] = _git_head,
    probe: Callable[[str, Path], dict] = _probe,
) -> list[DoctorCheck]:
    """Check that GPT-NeoX v1.0 can launch, train and convert here, in order; stops at the
    first failure.

    The checkout (deepy.py, pinned commit), the environment's Python and torch (the pinned
    CUDA build, with kernels for every GPU: ``torch.cuda.get_arch_list()``), DeeperSpeed at
    tag v1.0's commit, ``megatron`` importable, GPT-NeoX's fused kernels built and built for
    every GPU, flash-attn's kernel (``flash_attn_cuda``) importable, flash-attn 0.2.2's limits
    for every configured size that uses flash (``flash_head_dims``: size -> head dimension) on
    every GPU, and ``tools/convert_to_hf.py`` importable (as ``envs/gpt-neox.post-deploy.sh``
    patched it). ``git_head`` and ``probe`` (what ``python`` reports about itself) are
    parameters so that each failure can be tested without GPT-NeoX. Every detail is one line.
    Returns the checks done; the last one failed when any did.
    """
    checks: list[DoctorCheck] = []

    def passed(name: str, ok: bool, detail: str, fix: str = "") -> bool:
        checks.append(DoctorCheck(name, ok, _one_line(detail if ok else f"{detail}{fix}")))
        return ok

    if not neox_dir:
        passed("GPT-NeoX checkout", False, "training.neox.dir is not set (envs/gpt-neox.yaml)")
        return checks
    root = Path(neox_dir)
    deepy = root / "deepy.py"
    if not passed("GPT-NeoX checkout", deepy.is_file(), str(deepy), " not found"):
        return checks
    try:
        head = git_head(root)
    except (NeoXError, OSError, subprocess.SubprocessError) as err:
        passed("pinned commit", False, f"cannot read the commit of {root}: {err}")
        return checks
    pinned = f", expected {NEOX_V1_COMMIT} (tag v1.0)"
    if not passed("pinned commit", head == NEOX_V1_COMMIT, f"{root} is at {head}", pinned):
        return checks
    try:
        found = probe(python, root)
    except NeoXError as err:
        passed("Python", False, str(err))
        return checks

    version = tuple(found.get("python", ()))
    wanted = " or ".join(f"{a}.{b}" for a, b in SUPPORTED_PYTHON)
    detail = f"{python}: Python {'.'.join(map(str, version))}"
    if not passed("Python", version[:2] in SUPPORTED_PYTHON, detail, f"; v1.0 needs {wanted}"):
        return checks

    torch = found.get("torch", {})
    if not torch.get("ok"):
        passed("torch", False, f"not importable: {torch.get('error')}")
        return checks
    good = str(torch.get("version", "")).split("+")[0] == PINNED_TORCH and bool(torch.get("cuda"))
    detail = f"torch {torch.get('version')} (CUDA {torch.get('cuda')})"
    fix = f"; envs/gpt-neox.yaml pins {PINNED_TORCH}, a CUDA build"
    if not passed("torch", good, detail, fix):
        return checks

    gpus = found.get("gpus") or []
    if not gpus:
        why = found.get("gpu_error") or "torch sees no CUDA device"
        passed("GPU", False, f"no GPU ({why})")
        return checks
    seen = "; ".join(f"{g['name']} sm_{g['capability'][0]}{g['capability'][1]}" for g in gpus)
    arch_list = torch.get("arch_list") or []
    bad = [g for g in gpus if not torch_runs_on(g["capability"], arch_list)]
    detail = f"{seen}; torch {torch.get('version')} has kernels for {', '.join(arch_list)}"
    if not passed("torch GPU kernels", not bad, detail, " (none for this GPU)"):
        return checks

    deepspeed = found.get("deepspeed", {})
    if not deepspeed.get("ok"):
        passed("DeeperSpeed", False, f"not importable: {deepspeed.get('error')}")
        return checks
    commit = str(deepspeed.get("git_hash") or "")
    detail = f"deepspeed {deepspeed.get('version')} at commit {commit or 'unknown'}"
    fix = f", expected DeeperSpeed tag v1.0 = {DEEPERSPEED_V1_COMMIT[:7]} (its SLURM runner)"
    right = len(commit) >= 7 and DEEPERSPEED_V1_COMMIT.startswith(commit)
    if not passed("DeeperSpeed", right, detail, fix):
        return checks

    megatron = found.get("megatron", {})
    detail = "importable" if megatron.get("ok") else f"not importable: {megatron.get('error')}"
    if not passed("megatron", bool(megatron.get("ok")), detail):
        return checks

    kernels = found.get("kernels") or {}
    missing = [name for name in FUSED_KERNELS if not kernels.get(name, {}).get("ok")]
    fix = " (python megatron/fused_kernels/setup.py install)"
    detail = f"not built: {', '.join(missing)}" if missing else "built: " + ", ".join(FUSED_KERNELS)
    if not passed("fused kernels", not missing, detail, fix):
        return checks

    archs = kernel_archs(root)
    built = ", ".join(f"sm_{a}{b}" for a, b in archs) or "no architecture found"
    bad = [g for g in gpus if not arch_supported(g["capability"], archs)]
    fix = " (no kernel for this GPU: H100-class needs the changes in envs/gpt-neox.yaml)"
    if not passed("GPU architecture", not bad, f"{seen}; kernels built for {built}", fix):
        return checks

    if flash_head_dims:
        flash = kernels.get(FLASH_KERNEL, {})
        error = flash.get("error") or "not probed"
        detail = "importable" if flash.get("ok") else f"not importable: {error}"
        fix = " (flash-attn==0.2.2, envs/gpt-neox.post-deploy.sh)"
        if not passed("flash-attn kernel", bool(flash.get("ok")), detail, fix):
            return checks
        problems = [
            f"{size} (head dim {dim}) on {g['name']}: {why}"
            for size, dim in sorted(flash_head_dims.items())
            for g in gpus
            if (why := flash_attn_problem(dim, g["capability"]))
        ]
        sizes = ", ".join(f"{s} ({d})" for s, d in sorted(flash_head_dims.items()))
        detail = problems[0] if problems else f"sizes using flash (head dim): {sizes}; {seen}"
        if not passed("flash-attn limits", not problems, detail):
            return checks

    converter = found.get("converter", {})
    detail = "tools/convert_to_hf.py imports" if converter.get("ok") else (
        f"tools/convert_to_hf.py does not import: {converter.get('error')}"
    )  # fmt: skip
    fix = " (envs/gpt-neox.post-deploy.sh patches it for Python 3.8)"
    passed("converter", bool(converter.get("ok")), detail, fix)
    return checks


def flash_head_dims(config: Mapping) -> dict[str, int]:
    """Head dimension of every size a run of the matrix trains with flash attention."""
    from pythia_suite import config as cfg

    out = {}
    for run in cfg.expand_runs(dict(config)).values():
        if "flash" in attention_types(cfg.neox_config(dict(config), run)):
            out[run.size] = head_dim(config, run.size)
    return out
