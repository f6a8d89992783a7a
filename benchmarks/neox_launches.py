"""Issue 11's launch figures: the GPT-NeoX backend's segment jobs on the local SLURM cluster
(`scripts/slurm-cluster.sh start`) with the stand-in GPT-NeoX (tests/neox_standin), on 2 nodes x
1 slot and 1 node x 2 slots. Prints, per SLURM job (step0 trains (0, 1], step1 reuses
global_step1, step2 trains (1, 2]): deepy.py launches, stand-in srun calls, training ranks per
host, and the job steps sacct accounted. A few minutes.

    python benchmarks/neox_launches.py
"""

import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from neox_support import launch_summary, prepare_neox_slurm_suite  # noqa: E402


def main() -> int:
    for nodes, slots in ((2, 1), (1, 2)):
        with tempfile.TemporaryDirectory(prefix=f"neox-{nodes}n-") as base:
            suite = prepare_neox_slurm_suite(Path(base), nodes, slots)
            started = time.monotonic()
            proc = suite.snakemake(str(suite.checkpoint(2)))
            wall = time.monotonic() - started
            if proc.returncode != 0:
                print((proc.stdout + proc.stderr)[-3000:], file=sys.stderr)
                return 1
            time.sleep(5)  # sacct records arrive a moment after the jobs end
            print(f"{nodes} node(s) x {slots} slot(s): steps 0 1 2 in {wall:.0f} s")
            print(f"  {'job':>5} {'nodes':>5} {'deepy.py':>8} {'srun':>4} {'ranks':>5}  "
                  "ranks per host / job steps (nodes, tasks)")  # fmt: skip
            for row in launch_summary(suite, proc.stdout + proc.stderr):
                print(f"  {row['job']:>5} {row['nodes']:>5} {row['deepy.py']:>8} "
                      f"{row['srun']:>4} {row['ranks']:>5}  {row['ranks_per_host']} / "
                      f"{row['job_steps']}")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
