"""Launching GPT-NeoX: the hostfile of a segment's hosts (node lists from
``pythia_suite.slurm``), ``python deepy.py train.py SEGMENT.json`` and running it once for one
segment, with ``latest`` pointed at the checkpoint it starts from.

What deepy.py does with the hostfile (SLURM runner on several hosts, the local launcher on one) is
in the package's docstring.
"""

from __future__ import annotations

import os
import re
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from pythia_suite.atomic import write_text_atomic
from pythia_suite.neox import NeoXError
from pythia_suite.slurm import hostnames_from_nodelist

DEFAULT_MASTER_PORT = 29500  # DeepSpeed's default


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
    """DeepSpeed hostfile lines, one per host: ``"host slots=8"`` (a slot: see the package doc).

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


# --- the command -------------------------------------------------------------------------------


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


# --- running a segment -------------------------------------------------------------------------


def require_path(path: Path, what: str) -> None:
    """Raises ``FileNotFoundError`` naming ``what`` and ``path`` when ``path`` does not exist."""
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


def latest_step(save_dir: str | os.PathLike) -> int | None:
    """The step ``save_dir/latest`` names (``global_stepN``), or None without a readable one."""
    try:
        text = (Path(save_dir) / "latest").read_text().strip()
    except OSError:
        return None
    match = re.fullmatch(r"global_step(\d+)", text)
    return int(match[1]) if match else None


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
    require_path(neox_dir / "deepy.py", "GPT-NeoX checkout (deepy.py)")
    require_path(config_path, "GPT-NeoX segment config")
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
