"""Figures for `pythia-suite status` (issue 13).

1. `scale` (default): status on a synthetic results tree of the real suite's size (config.yaml:
   16 runs x 154 checkpoint steps) at 10 %, 50 % and 100 % done, with realistic records
   (tests/status_fixture.py): wall time and peak memory (ru_maxrss of the `pythia-suite status`
   process), for the table (`--json`) and for the progress page (`--html`, which also reads
   every evaluation result file). Goal: about 1 s and at most 200 MB.

       python benchmarks/status_scale.py scale [--repeat 3]

2. `mini`: on a miniature suite that has run (`snakemake --profile profiles/local`, with the
   segment summaries the training helper writes), the plan's predicted CPU-rank-hours (from
   config/mini.yaml's CPU device record and assumed MFU) against the measured ones, per run.
   Run it in the repository after the suite:

       python benchmarks/status_scale.py mini [--config config.yaml --config config/mini.yaml]

   The prediction is results/plan.json's (recorded when the suite started) when there is one,
   else the plan computed now from the config.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

from status_fixture import build_tree, results_size_bytes  # noqa: E402

from pythia_suite import config as cfg  # noqa: E402
from pythia_suite import costs, paths  # noqa: E402
from pythia_suite.train.summary import read_summary  # noqa: E402


def _run_status(workdir: Path, config_files: list[Path], *extra: str) -> tuple[float, float, float]:
    """(wall seconds, peak RSS MiB, CPU seconds) of one `pythia-suite status` process."""
    argv = [sys.executable, "-m", "pythia_suite.cli"]
    for path in config_files:
        argv += ["--config", str(path)]
    argv += ["status", "--no-slurm", *extra]
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    started = time.perf_counter()
    proc = subprocess.Popen(
        argv, cwd=workdir, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - started
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode:
        raise SystemExit(f"status failed: {proc.stderr.read().decode()[-2000:]}")
    proc.stderr.close()
    return wall, usage.ru_maxrss / 1024, usage.ru_utime + usage.ru_stime  # maxrss: KiB


def scale(repeat: int) -> list[dict]:
    rows = []
    for fraction in (0.1, 0.5, 1.0):
        with tempfile.TemporaryDirectory(prefix="status-scale-") as tmp:
            work = Path(tmp)
            overlay = work / "paths.yaml"
            overlay.write_text("paths: {results: results, state: results/state}\n")
            files = [REPO / "config.yaml", overlay]
            config = cfg.load_config(files)
            os.chdir(work)
            costs.record_plan(config)
            t0 = time.perf_counter()
            build_tree(config, fraction, tokens_per_s=200_000.0, spike_every=17)
            built_s = time.perf_counter() - t0
            n_files = sum(len(f) for _, _, f in os.walk(work / "results"))
            size = results_size_bytes(work / "results")
            for mode, extra in (("table --json", ("--json",)), ("page --html", ("--html",))):
                runs = [_run_status(work, files, *extra) for _ in range(repeat)]
                rows.append(
                    {
                        "done": f"{fraction:.0%}",
                        "mode": mode,
                        "files": n_files,
                        "tree_MB": size / 1e6,
                        "wall_s_first": runs[0][0],
                        "wall_s_median": statistics.median(r[0] for r in runs),
                        "peak_MiB": max(r[1] for r in runs),
                        "cpu_s_median": statistics.median(r[2] for r in runs),
                        "build_s": built_s,
                    }
                )
            os.chdir(REPO)
    print(
        f"{'done':>5} {'mode':<13} {'files':>7} {'tree MB':>8} {'wall s (1st)':>12} "
        f"{'wall s (median)':>15} {'CPU s (median)':>14} {'peak MiB':>9}"
    )
    for r in rows:
        print(
            f"{r['done']:>5} {r['mode']:<13} {r['files']:>7} {r['tree_MB']:>8.1f} "
            f"{r['wall_s_first']:>12.2f} {r['wall_s_median']:>15.2f} {r['cpu_s_median']:>14.2f} "
            f"{r['peak_MiB']:>9.0f}"
        )
    print(
        f"(python {sys.version.split()[0]}, {os.cpu_count()} CPUs, load average "
        f"{os.getloadavg()[0]:.1f}; wall and CPU include interpreter and import start-up; page "
        "cache warm after the tree was written; CPU s = user + system of the status process)"
    )
    return rows


def mini_costs(config: dict) -> list[dict]:
    """Per run: predicted device-hours (recorded plan, else the config's plan) and measured
    (sum over the run's segment summaries), with the segments counted."""
    results = config["paths"]["results"]
    recorded = costs.read_recorded_plan(results)
    if recorded:
        predicted = {run: rec["device_hours"] for run, rec in recorded["runs"].items()}
        source = recorded["path"]
    else:
        predicted = {r["run"]: r["predicted_device_hours"] for r in costs.cost_rows(config)}
        source = "the config (no results/plan.json)"
    rows = []
    steps = cfg.checkpoint_steps(config)
    for run in cfg.expand_runs(config).values():
        summaries = []
        for step in steps[1:]:
            summary = read_summary(paths.segment_summary(results, run.name, step))
            if summary is not None:
                summaries.append(summary)
        measured = sum(s["device_hours"] for s in summaries)
        trained = sum(s["end_step"] - s["start_step"] for s in summaries)
        rows.append(
            {
                "run": run.name,
                "device": cfg.gpu_record(config, run.size)["name"],
                "segments": len(summaries),
                "of_segments": len(steps) - 1,
                "steps_measured": trained,
                "predicted_h": predicted.get(run.name),
                "measured_h": measured if summaries else None,
                "measured_over_predicted": (
                    measured / predicted[run.name]
                    if summaries and predicted.get(run.name)
                    else None
                ),
                "mfu_measured": (
                    sum(s["mfu"] * s["device_hours"] for s in summaries if s.get("mfu") is not None)
                    / measured
                    if summaries and measured and all(s.get("mfu") is not None for s in summaries)
                    else None
                ),
                "prediction_from": source,
            }
        )
    return rows


def print_mini(rows: list[dict]) -> None:
    print(f"prediction from {rows[0]['prediction_from'] if rows else '-'}")
    print(
        f"{'run':<22} {'device':<16} {'segments':>9} {'predicted h':>12} {'measured h':>11} "
        f"{'measured/pred':>13} {'MFU':>6}"
    )
    for r in rows:

        def f(x, spec):
            return "-" if x is None else format(x, spec)

        print(
            f"{r['run']:<22} {r['device'][:16]:<16} {r['segments']:>4}/{r['of_segments']:<4} "
            f"{f(r['predicted_h'], '12.4g')} {f(r['measured_h'], '11.4g')} "
            f"{f(r['measured_over_predicted'], '13.3g')} {f(r['mfu_measured'], '6.2%')}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="what")
    p = sub.add_parser("scale")
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--json", action="store_true")
    p = sub.add_parser("mini")
    p.add_argument("--config", action="append")
    p.add_argument("--json", action="store_true")
    args = parser.parse_args()
    if args.what in (None, "scale"):
        rows = scale(getattr(args, "repeat", 3))
    else:
        files = args.config or [str(REPO / "config.yaml"), str(REPO / "config/mini.yaml")]
        rows = mini_costs(cfg.load_config(files))
        print_mini(rows)
    if getattr(args, "json", False):
        print(json.dumps(rows, indent=1))


if __name__ == "__main__":
    if shutil.which("true") is None:  # pragma: no cover
        raise SystemExit("needs a POSIX system")
    main()
