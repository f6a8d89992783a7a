"""The memory plan of every GPU run, with trace times, and its layer extrapolation checked.

    python benchmarks/memory_plan.py [--config config.yaml ...] [--verify 410m]
    python benchmarks/memory_plan.py --fake-vs-real      # the trace against real tensors

Traces every distinct layout of the config afresh (no cache: train.memory_plan.memory_plan with
use_cache=False, written to a temporary results directory) and prints, per run, the peak GPU
memory per rank by category, the phase of the step where it peaks, whether it fits the GPU
record's memory less the reserve, and the seconds its traces took. ``--verify SIZE`` also traces
that size at full depth and compares it with the extrapolation from 2 and 3 layers, phase by
phase and category by category (they should agree to the byte). The table also gives each
tensor-parallel run's peak by phase (the phase that sets it, and how close the others come).

``--fake-vs-real`` traces a small model (hidden 128, 2 layers, vocabulary 2048, bf16 master
weights, activation checkpointing, partitioned activations under TP, micro-batch 4 x gas 2) at
tensor parallel 1, 2 and 4 twice: as the plan does (fake tensors, a fake process group) and on
real CPU tensors over that many gloo ranks (``trace_step_peaks(fake=False)``, MemTracker on
both), and prints every phase's peak of rank 0 side by side.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from pythia_suite import config as cfg  # noqa: E402
from pythia_suite.train import memory_plan as memory  # noqa: E402

SMALL_RECORD = dict(
    size="small",
    hidden=128,
    layers=2,
    heads=4,
    vocab=2048,
    intermediate=512,
    rotary_pct=0.25,
    seq_length=64,
    micro_batch=4,
    gas=2,
    precision="bf16",
    activation_checkpointing=True,
    loss_chunk_tokens=8192,
    tensor_parallel=1,
    data_parallel=1,
    data_parallel_mode="zero1",
    partition_activations=False,
    gpu_name="cpu",
    gpu_memory_gb=1.0,
    reserve_gb=0.0,
)
SMALL = memory.layout_from_record(SMALL_RECORD)


def _real_rank(rank: int, world: int, port: int, layout: memory.StepLayout, out: Path) -> None:
    import torch
    import torch.distributed as dist

    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        peaks = memory.trace_step_peaks(layout, layout.layers, fake=False)
    finally:
        dist.destroy_process_group()
    if rank == 0:
        out.write_text(json.dumps(peaks))


def real_trace(layout: memory.StepLayout) -> dict:
    """Rank 0's peaks of ``layout`` traced on real tensors over its world of gloo ranks."""
    world = layout.tensor_parallel
    if world == 1:
        return memory.trace_step_peaks(layout, layout.layers, fake=False)
    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "peaks.json"
        mp.start_processes(
            _real_rank, args=(world, port, layout, out), nprocs=world, start_method="spawn"
        )
        return json.loads(out.read_text())


def fake_vs_real() -> None:
    print(
        f"small model: hidden {SMALL_RECORD['hidden']}, {SMALL_RECORD['layers']} layers, "
        f"vocabulary {SMALL_RECORD['vocab']}, {SMALL_RECORD['precision']} master weights, "
        f"seq {SMALL_RECORD['seq_length']}, micro {SMALL_RECORD['micro_batch']} "
        f"x gas {SMALL_RECORD['gas']}, activation checkpointing (partitioned under TP); "
        "rank 0, bytes"
    )
    print("| TP | phase | fake trace | real tensors | fake / real |")
    print("|---|---|---|---|---|")
    worst = 0.0
    for tp in (1, 2, 4):
        layout = memory.layout_from_record(
            dict(SMALL_RECORD, tensor_parallel=tp, partition_activations=tp > 1)
        )
        fake, real = memory.trace_step_peaks(layout, layout.layers), real_trace(layout)
        for phase in memory.PHASES:
            a, b = sum(fake[phase].values()), sum(real[phase].values())
            worst = max(worst, abs(a / b - 1))
            print(f"| {tp} | {phase} | {a:,} | {b:,} | {a / b:.3f} |")
    print(f"largest difference: {worst:.1%}")


def tensor_parallel_phases(plan: dict) -> None:
    print("\ntensor-parallel runs, peak by phase (GiB per rank):")
    for name, e in plan["runs"].items():
        if e["layout"]["tensor_parallel"] > 1 and "deduped" not in name:
            cells = ", ".join(
                f"{phase} {sum(e['phases'][phase].values()) / 2**30:.2f}" for phase in memory.PHASES
            )
            print(f"  {name}: {cells}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", action="append", default=None)
    parser.add_argument("--verify", metavar="SIZE", help="full-depth trace of SIZE to compare")
    parser.add_argument("--fake-vs-real", action="store_true", help="the trace vs real tensors")
    args = parser.parse_args()
    if args.fake_vs_real:
        fake_vs_real()
        return
    paths = args.config or [str(REPO / "config.yaml")]
    with tempfile.TemporaryDirectory() as tmp:
        config = cfg.load_config(paths, {"paths": {"results": tmp}})
        started = time.perf_counter()
        plan = memory.memory_plan(config, use_cache=False)
        total_s = time.perf_counter() - started
    print(memory.render_memory_table(plan, trace_times=True))
    print(f"\nwhole plan: {total_s:.1f} s ({len(plan['runs'])} runs; one trace per layout)")
    tensor_parallel_phases(plan)
    if args.verify:
        run = next(n for n, r in cfg.expand_runs(config).items() if r.size == args.verify)
        layout = memory.memory_layouts(config)[run]
        started = time.perf_counter()
        full = memory.estimate_layout(layout, full_depth=True)
        full_s = time.perf_counter() - started
        extrapolated = plan["runs"][run]
        print(
            f"\n{args.verify}: full depth ({layout.layers} layers) vs 2 and 3 layers extrapolated"
        )
        for phase in memory.PHASES:
            for c in memory.CATEGORIES:
                a, b = full["phases"][phase][c], extrapolated["phases"][phase][c]
                print(f"  {phase:<9} {c:<12} full {a:>14,} extrapolated {b:>14,} diff {b - a:,}")
        print(
            f"  peak: full {full['peak_bytes']:,} B, "
            f"extrapolated {extrapolated['peak_bytes']:,} B; "
            f"full trace {full_s:.1f} s, extrapolated traces {extrapolated['trace_s']:.1f} s"
        )


if __name__ == "__main__":
    main()
