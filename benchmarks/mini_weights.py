"""The sha256 of every checkpoint's weights in a results tree, and a comparison with another run.

    python benchmarks/mini_weights.py [RESULTS] [--out FILE] [--compare FILE]

Reads `RESULTS/runs/<run>/checkpoints/step<N>/model.safetensors` (default RESULTS:
results-mini, the miniature suite) and prints one JSON object {run: {step: sha256}}. With
`--compare`, a file written by `--out` from another run (another commit, another machine) is
compared step by step: exit 1, naming each difference, unless both hold the same steps with the
same hashes. A restructure that claims "behaviour unchanged" shows it this way: the miniature
suite before and after gives bit-identical weights at every checkpoint.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from pythia_suite.hashing import sha256_file  # noqa: E402


def weight_hashes(results: Path) -> dict[str, dict[str, str]]:
    """{run: {"step<N>": sha256 of model.safetensors}} for every checkpoint under `results`."""
    hashes: dict[str, dict[str, str]] = {}
    for weights in sorted(results.glob("runs/*/checkpoints/step*/model.safetensors")):
        step_dir = weights.parent
        run = step_dir.parent.parent.name
        hashes.setdefault(run, {})[step_dir.name] = sha256_file(weights)
    for run in hashes:
        hashes[run] = dict(sorted(hashes[run].items(), key=lambda kv: int(kv[0][4:])))
    return hashes


def differences(before: dict, after: dict) -> list[str]:
    """One line per run or step present in only one side or hashed differently."""
    lines = []
    for run in sorted(before.keys() | after.keys()):
        old, new = before.get(run, {}), after.get(run, {})
        for step in sorted(old.keys() | new.keys(), key=lambda s: int(s[4:])):
            if old.get(step) != new.get(step):
                lines.append(
                    f"{run} {step}: {old.get(step, 'absent')} != {new.get(step, 'absent')}"
                )
    return lines


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("results", nargs="?", type=Path, default=Path("results-mini"))
    parser.add_argument("--out", type=Path, help="also write the hashes to this file")
    parser.add_argument("--compare", type=Path, help="hashes written by --out from another run")
    args = parser.parse_args()
    hashes = weight_hashes(args.results)
    if not hashes:
        print(f"{args.results}: no runs/*/checkpoints/step*/model.safetensors", file=sys.stderr)
        return 1
    text = json.dumps(hashes, indent=1)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")
    if args.compare:
        diff = differences(json.loads(args.compare.read_text()), hashes)
        checked = sum(len(steps) for steps in hashes.values())
        for line in diff:
            print(f"DIFFERENT {line}", file=sys.stderr)
        print(f"{checked} checkpoints compared with {args.compare}: {len(diff)} differ")
        return 1 if diff else 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
