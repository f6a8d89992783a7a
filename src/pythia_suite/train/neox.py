"""GPT-NeoX v1.0 backend: Pythia's own trainer, launched on SLURM, one checkpoint segment a call.

The faithful GPU path. GPT-NeoX v1.0 (tag ``v1.0``, commit ``71df4d5017f9``) with EleutherAI's
DeeperSpeed (tag ``v1.0``) is installed from ``envs/gpt-neox.yaml`` and checked out at
``neox_dir``; this module only writes its inputs and runs its two entry points:

- ``python deepy.py train.py SEGMENT.yml`` with ``launcher: slurm`` and ``deepspeed_slurm: true``:
  DeeperSpeed's runner calls ``srun -n <GPUs> python -u train.py ...`` inside the allocation and
  each task takes its rank from ``SLURM_PROCID``/``SLURM_LOCALID``/``SLURM_NTASKS``. The number of
  GPUs comes from the hostfile (``DLTS_HOSTFILE``, lines ``host slots=N``) and the rendezvous
  from ``MASTER_ADDR`` (the first host).
- ``python tools/convert_to_hf.py --input_dir SAVE/global_stepN --config_file CFG --output_dir
  DIR`` (v1.0's name; later GPT-NeoX has ``tools/ckpts/convert_neox_to_hf.py``).

A segment ``(a, b]`` loads ``global_step{a}`` and stops after saving ``global_step{b}``. It keeps
the run's ``train-iters`` and stops with ``exit-interval: b`` instead of setting ``train-iters:
b``: GPT-NeoX derives the number of training samples from ``train-iters``, so a shorter value
builds different index maps (for the deduped Pile, a different number of epochs and so a
different data order) and a different warmup/decay unless ``lr-decay-iters`` is pinned. The
exit check runs after the checkpoint save, so ``b`` is written before the process exits.

Nothing here imports torch: the CLI can build configs and commands on a login node.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from pythia_suite.atomic import write_text_atomic
from pythia_suite.slurm import expand_nodelist, hostnames_from_nodelist

__all__ = [
    "NEOX_V1_COMMIT",
    "NeoXError",
    "NeoXLaunch",
    "expand_nodelist",
    "hostnames_from_nodelist",
    "current_job_nodelist",
    "hostfile_lines",
    "write_hostfile",
    "segment_config",
    "write_segment_config",
    "neox_launch_command",
    "neox_convert_command",
    "point_latest_at",
    "run_neox_segment",
    "convert_neox_checkpoint",
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


def hostfile_lines(hostnames: Sequence[str], gpus_per_node: int) -> list[str]:
    """DeepSpeed hostfile lines, one per host: ``"host slots=8"``.

    Raises ``ValueError`` for no hosts, a duplicate or blank host name, or ``gpus_per_node < 1``.
    """
    if gpus_per_node < 1:
        raise ValueError(f"gpus_per_node must be >= 1, got {gpus_per_node}")
    if not hostnames:
        raise ValueError("hostfile needs at least one host name")
    seen: set[str] = set()
    for host in hostnames:
        if not host or any(c.isspace() for c in host):
            raise ValueError(f"invalid host name {host!r} for a hostfile")
        if host in seen:
            raise ValueError(f"host {host!r} listed twice")
        seen.add(host)
    return [f"{host} slots={gpus_per_node}" for host in hostnames]


def write_hostfile(path: str | os.PathLike, hostnames: Sequence[str], gpus_per_node: int) -> Path:
    """Write a DeepSpeed hostfile (see ``hostfile_lines``) atomically; returns its path."""
    path = Path(path)
    write_text_atomic(path, "\n".join(hostfile_lines(hostnames, gpus_per_node)) + "\n")
    return path


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
    """Write the segment's GPT-NeoX YAML (see ``segment_config``) atomically; returns its path.

    ``end_step`` is the step whose checkpoint the segment writes (the run's ``train-iters``
    stays: see the module docstring).
    The YAML is written by PyYAML, which keeps a dot in every float (``1.0e-08``): GPT-NeoX's
    PyYAML reads a JSON-style ``1e-08`` as a string.
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
    write_text_atomic(out_path, yaml.safe_dump(config, sort_keys=False, default_flow_style=None))
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
    _require(save_dir / f"global_step{step}", f"checkpoint of step {step}")
    write_text_atomic(save_dir / "latest", f"global_step{step}")


def run_neox_segment(
    neox_dir: str | os.PathLike,
    config_path: str | os.PathLike,
    *,
    save_dir: str | os.PathLike,
    start_step: int,
    end_step: int,
    gpus_per_node: int,
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
    ``nodelist`` defaults to this job's (``current_job_nodelist``). Raises ``FileNotFoundError``
    for a missing GPT-NeoX checkout, config or start checkpoint, and ``NeoXError`` (with the
    log's last lines) when GPT-NeoX fails or exits without writing ``global_step{end}``.
    """
    neox_dir, config_path = Path(neox_dir), Path(config_path)
    save_dir, work_dir = Path(save_dir), Path(work_dir)
    _require(neox_dir / "deepy.py", "GPT-NeoX checkout (deepy.py)")
    _require(config_path, "GPT-NeoX segment config")
    work_dir.mkdir(parents=True, exist_ok=True)
    save_dir.mkdir(parents=True, exist_ok=True)
    hosts = hostnames_from_nodelist(nodelist or current_job_nodelist())
    hostfile = write_hostfile(work_dir / "hostfile", hosts, gpus_per_node)
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
    Raises ``FileNotFoundError`` naming a missing converter, checkpoint or config, and
    ``NeoXError`` (with the converter's output) when it fails or writes no model.
    """
    neox_dir, step_dir = Path(neox_dir), Path(global_step_dir)
    config_file, output_dir = Path(config_file), Path(output_dir)
    _require(neox_dir / "tools" / "convert_to_hf.py", "GPT-NeoX converter")
    _require(step_dir, "GPT-NeoX checkpoint")
    _require(config_file, "GPT-NeoX config")
    output_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = output_dir.with_name(f".{output_dir.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    argv = neox_convert_command(neox_dir, step_dir, config_file, tmp, python=python)
    proc = subprocess.run(argv, cwd=neox_dir.resolve(), capture_output=True, text=True)
    if log_path is not None:
        write_text_atomic(Path(log_path), proc.stdout + proc.stderr)
    problem = None
    if proc.returncode != 0:
        problem = f"exit code {proc.returncode}"
    elif not (tmp / "config.json").is_file():
        problem = f"no config.json in {tmp}"
    elif not any((tmp / name).is_file() for name in _HF_WEIGHTS):
        problem = f"no weights ({', '.join(_HF_WEIGHTS)}) in {tmp}"
    if problem:
        shutil.rmtree(tmp, ignore_errors=True)
        output = "\n".join((proc.stdout + proc.stderr).splitlines()[-20:])
        raise NeoXError(f"converting {step_dir} failed ({problem}): {' '.join(argv)}\n{output}")
    if output_dir.exists():
        shutil.rmtree(output_dir)
    os.replace(tmp, output_dir)
    return output_dir
