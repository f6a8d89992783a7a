"""Full-suite dry run: wall time and peak memory, against a bare Snakefile of the same shape.

    python benchmarks/dryrun.py [--repeat 3]

Runs `snakemake --profile profiles/slurm -n all` from the repository root and
`snakemake -n` on benchmarks/bare_dryrun/Snakefile, each as a child process, in one call:
the cases take turns (bare, bare, suite, bare, bare, suite, ...) so that a change in the
machine's load reaches all of them. It prints every timing, the best wall time and the peak
resident memory (ru_maxrss of the child) per case, the number of jobs planned, and the
machine's load (os.getloadavg, the number of CPUs) before and after. Goal (issue 20): the
suite's dry run <= 1.2x the bare one with the same executor, and <= 1 GB.
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


def measure(cmd: list[str], cwd: Path) -> tuple[float, float, int]:
    """(wall seconds, peak RSS MiB, jobs planned) of one child process."""
    start = time.perf_counter()
    proc = subprocess.Popen(
        cmd, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    out, _ = proc.communicate()
    _, status, usage = os.wait4(proc.pid, 0) if proc.returncode is None else (0, 0, None)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed:\n{out[-3000:]}")
    jobs = re.search(r"^total\s+(\d+)", out, re.M)
    rss = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    return wall, rss, int(jobs.group(1)) if jobs else -1


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
        cases = [
            ("bare Snakefile, local executor", [snakemake, "-n"], Path(bare_dir)),
            ("bare Snakefile, same executor", [snakemake, "-n", *same_executor], Path(bare_dir)),
            (
                "suite: --profile profiles/slurm -n all",
                [snakemake, "all", "--profile", "profiles/slurm", "-n"],
                REPO,
            ),
        ]
        load_before = os.getloadavg()
        timings: dict[str, list[tuple[float, float, int]]] = {label: [] for label, _, _ in cases}
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
                wall, rss, jobs = map(float, probe.stdout.split())
                timings[label].append((wall, rss, int(jobs)))
        load_after = os.getloadavg()
    print(f"{'case':<42} {'jobs':>6} {'wall s (each run)':>24} {'best s':>7} {'peak MiB':>9}")
    rows = []
    for label, runs in timings.items():
        wall, rss, jobs = min(runs)
        each = " ".join(f"{w:.1f}" for w, _, _ in runs)
        print(f"{label:<42} {jobs:>6} {each:>24} {wall:>7.1f} {rss:>9.0f}")
        rows.append((wall, rss))
    (bare_wall, bare_rss), (wall, rss) = rows[1], rows[2]
    print(
        f"\nratio suite/bare (same executor, best of {args.repeat}): time {wall / bare_wall:.2f}x, "
        f"memory {rss / bare_rss:.2f}x (goal <= 1.2x and <= 1024 MiB)"
    )
    print(
        "load average (1, 5, 15 min) before: "
        + ", ".join(f"{x:.2f}" for x in load_before)
        + "; after: "
        + ", ".join(f"{x:.2f}" for x in load_after)
        + f"; nproc: {len(os.sched_getaffinity(0))}"
    )


if __name__ == "__main__":
    if len(sys.argv) > 2 and sys.argv[1] == "--one":
        wall, rss, jobs = measure(sys.argv[2:], Path.cwd())
        print(wall, rss, jobs)
    else:
        main()
