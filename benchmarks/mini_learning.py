"""What a finished miniature suite shows: learning on the local multiple-choice task, and how
much publishing compared.

    python benchmarks/mini_learning.py [RESULTS]        # default: results

Reads only what the workflow wrote under RESULTS: the local tasks' manifest (chance levels),
every run's Pythia-layout result files, and the publish receipts. Prints, per run, the final
0-shot accuracy of each task with a known chance level (± its standard error), the first step
whose accuracy exceeds chance by 2 standard errors, the accuracy at every evaluated step, and
the number of files each receipt compared on the local hub (and on the Hub).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from pythia_suite.evaluate import chance_levels
from pythia_suite.report import headline_rows, load_eval_points


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("results", nargs="?", default="results")
    args = parser.parse_args()
    results = Path(args.results)
    chance = chance_levels(results / "data" / "eval_tasks")
    if not chance:
        raise SystemExit(f"{results}/data/eval_tasks/manifest.json records no chance level")
    runs = sorted(p.name for p in (results / "evals").iterdir() if p.is_dir())
    files = {
        run: [
            str(p)
            for p in sorted((results / "evals" / run).rglob("*_step*.json"))
            if ".raw." not in p.name
        ]
        for run in runs
    }
    points = load_eval_points(files)
    table = [{"name": r, "size": r, "variant": "-", "params": 0} for r in runs]
    print(f"{'run':<24} {'task':<16} {'final':>16} {'chance':>7} {'first > chance+2SE':>19}")
    for row in headline_rows(points, table, chance):
        if row["metric"] != "acc":
            continue
        first = row["first_step_above_chance"]
        final = f"{row['value']:.3f} ± {row['stderr'] or 0:.3f}"
        print(
            f"{row['run']:<24} {row['task']:<16} {final:>16} {row['chance']:>7.3f} "
            f"{'never' if first is None else 'step ' + str(first):>19}"
        )
        print("    by step: " + ", ".join(f"{s}: {v:.3f}" for s, v in row["curve"]))
    print()
    print(f"{'run':<24} {'receipts':>8} {'files compared (local hub)':>27} {'(hub)':>6}")
    for run in runs:
        receipts = sorted((results / "runs" / run / "published").glob("step*.json"))
        receipts = [json.loads(p.read_text()) for p in receipts if "provenance" not in p.name]
        compared = {"local hub": 0, "hub": 0}
        for receipt in receipts:
            for check in receipt.get("verifications", []):
                compared[check["where"]] += check["files_compared"]
        print(f"{run:<24} {len(receipts):>8} {compared['local hub']:>27} {compared['hub']:>6}")


if __name__ == "__main__":
    main()
