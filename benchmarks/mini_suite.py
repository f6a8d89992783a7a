"""The miniature suite from a clean clone to finished plots: wall time, and where it goes.

    python benchmarks/mini_suite.py [--setup] [--keep]

Clones this repository (committed state) into a temporary directory, runs
`snakemake --profile profiles/local` there, and prints the total wall time and the summed job
time per rule (from each job's "done in" line). With `--setup`, the clone's own
`scripts/setup.sh` runs first (a fresh .venv, `pip install -e .[test]`) and is timed apart;
without it, the current environment's packages are used.
Goal: <= 10 minutes here (2 cores), aim for 5.
"""

from __future__ import annotations

import argparse
import collections
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keep", action="store_true", help="keep the clone and its results")
    parser.add_argument("--setup", action="store_true", help="time the clone's setup.sh too")
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="pythia-mini-"))
    clone = workdir / "repo"
    subprocess.run(["git", "clone", "--quiet", str(REPO), str(clone)], check=True)
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
    }
    snakemake = Path(sys.executable).with_name("snakemake")
    setup_s = None
    if args.setup:
        start = time.perf_counter()
        subprocess.run(["bash", "scripts/setup.sh"], cwd=clone, env=env, check=True)
        setup_s = time.perf_counter() - start
        snakemake = clone / ".venv" / "bin" / "snakemake"
        env["PATH"] = f"{clone / '.venv' / 'bin'}:{env['PATH']}"
        env.pop("PYTHONPATH", None)
    start = time.perf_counter()
    run = subprocess.run(
        [str(snakemake), "--profile", "profiles/local"],
        cwd=clone,
        env=env,
        capture_output=True,
        text=True,
    )
    wall = time.perf_counter() - start
    if run.returncode != 0:
        sys.exit(f"snakemake failed:\n{(run.stdout + run.stderr)[-4000:]}")
    per_rule: dict[str, list[float]] = collections.defaultdict(list)
    for log in (clone / "results-mini" / "logs").rglob("*.log"):
        found = re.findall(
            r"pythia-suite (\S+): done in ([0-9.]+) s", log.read_text(errors="replace")
        )
        for command, seconds in found:
            per_rule[command].append(float(seconds))
    if setup_s is not None:
        print(f"set-up (scripts/setup.sh in the clone): {setup_s:.0f} s")
    print(f"miniature suite run (snakemake): {wall:.0f} s wall ({wall / 60:.1f} min)")
    if setup_s is not None:
        total = setup_s + wall
        print(
            f"clean clone to finished plots, set-up included: {total:.0f} s ({total / 60:.1f} min)"
        )
    headline = clone / "results-mini" / "report" / "report.md"
    if headline.is_file():
        text = headline.read_text()
        if "## Headline" in text:
            print(text.split("## Headline", 1)[1].split("\n## ", 1)[0])
    print(f"{'command':<20} {'jobs':>5} {'sum s':>8} {'mean s':>8}")
    for command, times in sorted(per_rule.items(), key=lambda kv: -sum(kv[1])):
        print(f"{command:<20} {len(times):>5} {sum(times):>8.1f} {sum(times) / len(times):>8.1f}")
    plots = sorted(p.name for p in (clone / "results-mini" / "report").glob("*.png"))
    print(f"plots: {len(plots)} in results-mini/report")
    if args.keep:
        print(f"kept: {clone}")
    else:
        shutil.rmtree(workdir)


if __name__ == "__main__":
    main()
