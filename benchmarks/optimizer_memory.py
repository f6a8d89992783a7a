"""Optimizer-state bytes per rank with ZeRO-1 over 2 gloo ranks vs 1 rank (goal: ratio ~0.5).

Builds the backend's model, parameter groups and optimizer with the loop's builder
(``optim.build_optimizer``: ``ZeroOneOptimizer`` over AdamW when there are 2 data ranks), takes
one step on one short sequence, and counts the bytes of each rank's Adam state (exp_avg,
exp_avg_sq, step).

    python benchmarks/optimizer_memory.py [--size 70m|tiny]
"""

from __future__ import annotations

import argparse
import os
import socket
from datetime import timedelta

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from suite_models import pythia_hf_config, tiny_hf_config

from pythia_suite.train.model import build_model, count_parameters, init_gpt_neox_weights
from pythia_suite.train.optim import build_optimizer, build_param_groups, local_optimizer
from pythia_suite.train.parallel import build_parallelism

SIZES = {"70m": pythia_hf_config(), "tiny": tiny_hf_config()}


def optimizer_state_bytes(rank: int, world_size: int, config: dict, port: int, out) -> None:
    torch.set_num_threads(1)
    if world_size > 1:
        dist.init_process_group(
            "gloo",
            init_method=f"tcp://127.0.0.1:{port}",
            rank=rank,
            world_size=world_size,
            timeout=timedelta(minutes=10),
        )
    model = build_model(config)
    init_gpt_neox_weights(model, weight_seed=1)
    par = build_parallelism(world_size, 1, torch.device("cpu"))
    optimizer = build_optimizer(build_param_groups(model, 0.1), par, betas=(0.9, 0.95), eps=1e-8)
    generator = torch.Generator().manual_seed(0)
    tokens = torch.randint(0, config["vocab_size"], (1, 33), generator=generator)
    model(input_ids=tokens[:, :-1]).logits.float().mean().backward()
    optimizer.step()
    local = local_optimizer(optimizer)
    nbytes = sum(
        t.numel() * t.element_size()
        for state in local.state.values()
        for t in state.values()
        if torch.is_tensor(t)
    )
    out[rank] = nbytes
    if world_size > 1:
        dist.destroy_process_group()


def run(world_size: int, config: dict) -> list[int]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    manager = mp.Manager()
    out = manager.dict()
    mp.spawn(optimizer_state_bytes, args=(world_size, config, port, out), nprocs=world_size)
    return [out[r] for r in range(world_size)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", choices=sorted(SIZES), default="70m")
    args = parser.parse_args()
    config = SIZES[args.size]
    n = count_parameters(build_model(config))
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    one = run(1, config)
    two = run(2, config)
    print(f"model {args.size}: {n:,} parameters; Adam state = 8 bytes/parameter + step counters")
    print(f"1 rank : {one[0]:,} bytes")
    for r, b in enumerate(two):
        print(f"2 ranks: rank {r} {b:,} bytes ({b / one[0]:.3f} of 1 rank)")
    print(f"max per rank, 2 ranks vs 1: {max(two) / one[0]:.3f} (goal ~0.5)")


if __name__ == "__main__":
    main()
