"""Collecting a run's evaluations into Pythia's layout, and finding its result files."""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from pathlib import Path

from pythia_suite.atomic import atomic_directory
from pythia_suite.provenance import Recorder


def collect_evals(batches: Sequence[str | Path], output: str | Path) -> None:
    """Gather a run's batch outputs into Pythia's layout: <run>/{zero,five}-shot/*_step<N>.json.

    Every JSON file of every batch (their provenance records left out) is copied into
    ``output`` under its shot directory, written as one directory that appears complete or not
    at all, then recorded.
    """
    out = Path(output)
    recorder = Recorder(out, "evals", {}, [Path(p) for p in batches])
    with atomic_directory(out) as tmp:
        for batch in batches:
            for path in Path(batch).rglob("*.json"):
                if path.name == "provenance.json":
                    continue
                dest = tmp / path.parent.name / path.name
                dest.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(path, dest)
    recorder.write()


def pythia_result_files(evals_dir: str | Path) -> list[str]:
    """A run's result files in Pythia's layout (lm-eval's raw outputs beside them left out)."""
    return sorted(str(p) for p in Path(evals_dir).rglob("*_step*.json") if ".raw." not in p.name)
