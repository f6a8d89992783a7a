"""Who am I in the job: rank, world size and rendezvous from SLURM, torchrun, or nothing.

One process per device. The launcher decides the ranks:

- torchrun (or any launcher that exports ``RANK``/``WORLD_SIZE``/``MASTER_ADDR``/``MASTER_PORT``);
- ``srun`` inside a SLURM allocation: ``SLURM_PROCID``/``SLURM_NTASKS``/``SLURM_LOCALID``, the
  master is the first host of the step's node list and the port is derived from the job id.
  Snakemake's jobstep strips ``SLURM_*`` from the rule's environment, but tasks started by an
  inner ``srun`` get fresh ones, which is exactly when they matter;
- otherwise a single process that needs no process group.
"""

from __future__ import annotations

import contextlib
import datetime
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass

import torch
import torch.distributed as dist

from pythia_suite.slurm import expand_nodelist, hostnames_from_nodelist

from .device import DeviceChoices

__all__ = [
    "DistributedEnv",
    "DistributedEnvError",
    "detect_distributed_env",
    "expand_slurm_nodelist",
    "distributed_context",
]

# Ports below 10000 are often taken by system services; 20000 ports leave room for many jobs.
_SLURM_PORT_BASE = 10000
_SLURM_PORT_SPAN = 20000


class DistributedEnvError(RuntimeError):
    """The launcher's environment is inconsistent (names the variable and its value)."""


@dataclass(frozen=True)
class DistributedEnv:
    """Where this process sits in the job.

    ``source`` is ``"torchrun"``, ``"slurm"`` or ``"single"``; ``master_addr``/``master_port`` are
    the TCP rendezvous (unused when ``world_size == 1``).
    """

    rank: int
    world_size: int
    local_rank: int
    master_addr: str
    master_port: int
    source: str

    @property
    def is_main(self) -> bool:
        """True on the rank that writes shared files and logs."""
        return self.rank == 0


def _int_var(environ: Mapping[str, str], name: str) -> int:
    value = environ[name]
    try:
        return int(value)
    except ValueError:
        raise DistributedEnvError(
            f"environment variable {name}={value!r} is not an integer"
        ) from None


def expand_slurm_nodelist(nodelist: str) -> list[str]:
    """Expand a SLURM host list such as ``"gpu[01-03,07],login1"`` into host names
    (`pythia_suite.slurm.expand_nodelist`). Raises ``DistributedEnvError`` naming the list."""
    try:
        return expand_nodelist(nodelist)
    except ValueError as err:
        raise DistributedEnvError(str(err)) from None


def _first_slurm_host(nodelist: str) -> str:
    """First host of ``nodelist``, from ``scontrol show hostnames`` when available."""
    try:
        return hostnames_from_nodelist(nodelist)[0]
    except ValueError as err:
        raise DistributedEnvError(str(err)) from None


def detect_distributed_env(environ: Mapping[str, str] | None = None) -> DistributedEnv:
    """Read rank, world size, local rank and rendezvous from the launcher's environment.

    Order: torchrun's variables (``RANK`` and ``WORLD_SIZE``), then a SLURM task launched by
    ``srun`` (``SLURM_PROCID`` together with ``SLURM_STEP_ID``; a batch script's own environment
    has ``SLURM_PROCID=0`` for the whole allocation and must not count as a rank), else a single
    process. ``MASTER_ADDR``/``MASTER_PORT`` override the SLURM-derived rendezvous.

    Raises ``DistributedEnvError`` naming the variable when a value is missing, not an integer, or
    out of range.
    """
    env = os.environ if environ is None else environ
    if "RANK" in env and "WORLD_SIZE" in env:
        rank, world = _int_var(env, "RANK"), _int_var(env, "WORLD_SIZE")
        local_rank = _int_var(env, "LOCAL_RANK") if "LOCAL_RANK" in env else rank
        addr = env.get("MASTER_ADDR", "127.0.0.1")
        port = _int_var(env, "MASTER_PORT") if "MASTER_PORT" in env else 29500
        if world > 1 and "MASTER_ADDR" not in env:
            raise DistributedEnvError("WORLD_SIZE > 1 but MASTER_ADDR is not set")
        source = "torchrun"
    elif "SLURM_PROCID" in env and ("SLURM_STEP_ID" in env or "SLURM_STEPID" in env):
        rank = _int_var(env, "SLURM_PROCID")
        world_var = "SLURM_STEP_NUM_TASKS" if "SLURM_STEP_NUM_TASKS" in env else "SLURM_NTASKS"
        if world_var not in env:
            raise DistributedEnvError(
                "SLURM_PROCID is set but neither SLURM_NTASKS nor SLURM_STEP_NUM_TASKS is"
            )
        world = _int_var(env, world_var)
        local_rank = _int_var(env, "SLURM_LOCALID") if "SLURM_LOCALID" in env else 0
        if "MASTER_ADDR" in env:
            addr = env["MASTER_ADDR"]
        else:
            nodelist_var = next(
                (
                    v
                    for v in ("SLURM_STEP_NODELIST", "SLURM_JOB_NODELIST", "SLURM_NODELIST")
                    if env.get(v)
                ),
                None,
            )
            if nodelist_var is None and world > 1:
                raise DistributedEnvError(
                    "SLURM task with SLURM_NTASKS > 1 but no SLURM_JOB_NODELIST/SLURM_NODELIST "
                    "and no MASTER_ADDR"
                )
            addr = _first_slurm_host(env[nodelist_var]) if nodelist_var else "127.0.0.1"
        if "MASTER_PORT" in env:
            port = _int_var(env, "MASTER_PORT")
        else:
            job_id = _int_var(env, "SLURM_JOB_ID") if "SLURM_JOB_ID" in env else 0
            port = _SLURM_PORT_BASE + job_id % _SLURM_PORT_SPAN
        source = "slurm"
    else:
        rank, world, local_rank, addr, port, source = 0, 1, 0, "127.0.0.1", 0, "single"

    if world < 1 or not 0 <= rank < world:
        raise DistributedEnvError(f"rank {rank} is not within a world of size {world} ({source})")
    if local_rank < 0:
        raise DistributedEnvError(f"local rank {local_rank} is negative ({source})")
    return DistributedEnv(rank, world, local_rank, addr, port, source)


def default_device(env: DistributedEnv) -> torch.device:
    """``cuda:{local_rank}`` when CUDA is available, else the CPU."""
    if torch.cuda.is_available():
        return torch.device("cuda", env.local_rank % torch.cuda.device_count())
    return torch.device("cpu")


@contextlib.contextmanager
def distributed_context(
    env: DistributedEnv,
    choices: DeviceChoices,
    *,
    timeout_s: float = 1800.0,
) -> Iterator[None]:
    """Join the process group for ``env`` with ``choices.backend`` (nccl on CUDA, binding the
    process to its GPU first; gloo on CPU) and leave it on exit.

    A world of one needs no process group and none is created. Raises ``RuntimeError`` when a
    process group is already initialised (a second segment in the same process must run after
    the first has left).
    """
    if env.world_size == 1:
        yield
        return
    if dist.is_initialized():
        raise RuntimeError("a torch.distributed process group is already initialised")
    if choices.bind_device:
        torch.cuda.set_device(choices.device)
    dist.init_process_group(
        backend=choices.backend,
        init_method=f"tcp://{env.master_addr}:{env.master_port}",
        rank=env.rank,
        world_size=env.world_size,
        timeout=datetime.timedelta(seconds=timeout_s),
    )
    try:
        yield
    finally:
        dist.destroy_process_group()
