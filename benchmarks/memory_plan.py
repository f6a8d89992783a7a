"""The memory plan of every GPU run, with trace times, and its layer extrapolation checked.

    python benchmarks/memory_plan.py [--config config.yaml ...] [--verify 410m]

Traces every distinct layout of the config afresh (no cache: train.memory.memory_plan with
use_cache=False, written to a temporary results directory) and prints, per run, the peak GPU
memory per rank by category, the phase of the step where it peaks, whether it fits the GPU
record's memory less the reserve, and the seconds its traces took. ``--verify SIZE`` also traces
that size at full depth and compares it with the extrapolation from 2 and 3 layers, phase by
phase and category by category (they should agree to the byte).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from pythia_suite import config as cfg  # noqa: E402
from pythia_suite.train import memory  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", action="append", default=None)
    parser.add_argument("--verify", metavar="SIZE", help="full-depth trace of SIZE to compare")
    args = parser.parse_args()
    paths = args.config or [str(REPO / "config.yaml")]
    with tempfile.TemporaryDirectory() as tmp:
        config = cfg.load_config(paths, {"paths": {"results": tmp}})
        started = time.perf_counter()
        plan = memory.memory_plan(config, use_cache=False)
        total_s = time.perf_counter() - started
    print(memory.render_memory_table(plan, trace_times=True))
    print(f"\nwhole plan: {total_s:.1f} s ({len(plan['runs'])} runs; one trace per layout)")
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
