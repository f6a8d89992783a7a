"""One rank of a 2-rank torch.distributed (gloo) all_reduce, launched by `srun -N 2 -n 2`.

Rank, world size and rendezvous come from the srun task's own environment (SLURM_PROCID,
SLURM_NTASKS, SLURM_STEP_NODELIST, SLURM_JOB_ID): the Snakemake jobstep plugin strips the
allocation's SLURM_* variables, but srun sets them again for every task it launches.
The master address is the first node's NodeAddr from `scontrol`, not its name: on the
one-machine test cluster the node names n1/n2 do not resolve.
Rank 0 writes OUTPUT (JSON) atomically.
"""

import json
import os
import subprocess
import sys
from datetime import timedelta

import torch
import torch.distributed as dist


def first_node_address() -> str:
    nodelist = os.environ["SLURM_STEP_NODELIST"]
    hosts = subprocess.run(
        ["scontrol", "show", "hostnames", nodelist], capture_output=True, text=True, check=True
    ).stdout.split()
    node = subprocess.run(
        ["scontrol", "show", "node", "-o", hosts[0]], capture_output=True, text=True, check=True
    ).stdout
    fields = dict(f.split("=", 1) for f in node.split() if "=" in f)
    return fields.get("NodeAddr", hosts[0])


def main(output: str) -> None:
    rank = int(os.environ["SLURM_PROCID"])
    world = int(os.environ["SLURM_NTASKS"])
    port = 20000 + int(os.environ["SLURM_JOB_ID"]) % 20000  # one port per job
    dist.init_process_group(
        "gloo",
        init_method=f"tcp://{first_node_address()}:{port}",
        rank=rank,
        world_size=world,
        timeout=timedelta(seconds=60),
    )
    value = torch.tensor([float(rank + 1)])
    dist.all_reduce(value)
    nodes = [None] * world
    dist.all_gather_object(nodes, os.environ["SLURMD_NODENAME"])
    dist.destroy_process_group()
    if rank == 0:
        record = {
            "sum": value.item(),
            "world_size": world,
            "nodes": nodes,
            "job_id": os.environ["SLURM_JOB_ID"],
        }
        with open(output + ".tmp", "w") as fh:
            json.dump(record, fh)
        os.replace(output + ".tmp", output)


if __name__ == "__main__":
    main(sys.argv[1])
