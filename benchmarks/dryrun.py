"""Full-suite dry run: wall time and peak memory, against a bare Snakefile of the same shape.

    python benchmarks/dryrun.py [--repeat 3]

Runs `snakemake --profile profiles/slurm -n all` from the repository root and `snakemake -n`
on benchmarks/bare_dryrun/Snakefile twice (with the edges the suite declares, and with the
checkpoint chain's edges only, the yardstick before the suite gained the others), each as a
child process, in one call: the cases take turns (bare, bare, suite, bare, bare, suite, ...)
so that a change in the machine's load reaches all of them. It prints every timing, the best
wall time and the peak resident memory (ru_maxrss of the child) per case, the number of jobs
planned, and the machine's load (os.getloadavg, nproc) before and after. CPU time (user +
system of the child and its children) is printed beside wall time: it moves less with the
load of a shared machine. Goal (issue 20): the suite's dry run <= 1.2x the bare one of the
same edges with the same executor, and <= 1 GB.
"""

from __future__ import annotations

import argparse
import os
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def measure(cmd: list[str], cwd: Path) -> tuple[float, float, float, int]:
    """(wall seconds, CPU seconds, peak RSS MiB, jobs planned) of one child process."""
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed:\n{proc.stdout[-3000:]}")
    jobs = re.search(r"^total\s+(\d+)", proc.stdout, re.M)
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = usage.ru_utime + usage.ru_stime
    return wall, cpu, usage.ru_maxrss / 1024, int(jobs.group(1)) if jobs else -1


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    snakemake = shutil.which("snakemake") or sys.exit("snakemake not on PATH")
    with tempfile.TemporaryDirectory() as bare_dir:
        shutil.copy(REPO / "benchmarks" / "bare_dryrun" / "Snakefile", bare_dir)
        # The bare one runs with the same executor and default resources as the suite's
        # profile: the slurm executor's own defaults cost the same in both.
        same_executor = [
            "--executor", "slurm", "--jobs", "64",
            "--default-resources", "mem_mb=4000", "disk_mb=20000", "runtime=60",
        ]  # fmt: skip
        bare = [snakemake, "-n", *same_executor]
        cases = [
            ("bare, chain edges only", [*bare, "--config", "edges=chain"], Path(bare_dir)),
            ("bare, the suite's edges", [*bare, "--config", "edges=suite"], Path(bare_dir)),
            (
                "suite: --profile profiles/slurm -n all",
                [snakemake, "all", "--profile", "profiles/slurm", "-n"],
                REPO,
            ),
        ]
        load_before = os.getloadavg()
        timings: dict[str, list[tuple[float, float, float, int]]] = {
            label: [] for label, _, _ in cases
        }
        for _ in range(args.repeat):
            for label, cmd, cwd in cases:
                # ru_maxrss of RUSAGE_CHILDREN is the max over all children so far: measure
                # each case in a fresh interpreter so the peaks do not mix.
                probe = subprocess.run(
                    [sys.executable, __file__, "--one", *cmd],
                    cwd=cwd,
                    capture_output=True,
                    text=True,
                    check=True,
                )
                wall, cpu, rss, jobs = map(float, probe.stdout.split())
                timings[label].append((wall, cpu, rss, int(jobs)))
        load_after = os.getloadavg()
    print(
        f"{'case':<38} {'jobs':>5} {'wall s (each run)':>18} {'best':>5} "
        f"{'CPU s (each run)':>17} {'best':>5} {'peak MiB':>8}"
    )
    best = []
    for label, runs in timings.items():
        walls, cpus = [r[0] for r in runs], [r[1] for r in runs]
        rss, jobs = max(r[2] for r in runs), runs[0][3]
        print(
            f"{label:<38} {jobs:>5} {' '.join(f'{w:.1f}' for w in walls):>18} {min(walls):>5.1f} "
            f"{' '.join(f'{c:.1f}' for c in cpus):>17} {min(cpus):>5.1f} {rss:>8.0f}"
        )
        best.append((min(walls), min(cpus), rss))
    wall, cpu, rss = best[2]
    for name, (bare_wall, bare_cpu, bare_rss) in (
        ("chain edges", best[0]),
        ("same edges", best[1]),
    ):
        print(
            f"ratio suite/bare ({name}, same executor, best of {args.repeat}): wall time "
            f"{wall / bare_wall:.2f}x, CPU time {cpu / bare_cpu:.2f}x, memory {rss / bare_rss:.2f}x"
        )
    print("goal: wall <= 1.2x the bare DAG of the same edges, <= 1024 MiB")
    print(
        "load average (1, 5, 15 min) before: "
        + ", ".join(f"{x:.2f}" for x in load_before)
        + "; after: "
        + ", ".join(f"{x:.2f}" for x in load_after)
        + f"; nproc: {len(os.sched_getaffinity(0))}"
    )


if __name__ == "__main__":
    if len(sys.argv) > 2 and sys.argv[1] == "--one":
        print(*measure(sys.argv[2:], Path.cwd()))
    else:
        main()
