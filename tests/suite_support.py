"""Helpers shared by the tests that run the workflow for real: a copy of the repository to
run it in, and the local SLURM cluster (scripts/slurm-cluster.sh) they need."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
START_HINT = "start it with `sudo scripts/slurm-cluster.sh start` (Debian 12, root)"


def run_text(*argv: str, timeout: float = 60) -> str:
    """stdout of a command that must succeed."""
    return subprocess.run(argv, capture_output=True, text=True, check=True, timeout=timeout).stdout


def copy_repository(root: Path) -> None:
    """Copy the repository's tracked and untracked-not-ignored files to `root`."""
    listing = run_text(
        "git", "-C", str(REPO), "ls-files", "--cached", "--others", "--exclude-standard"
    )
    for rel in listing.splitlines():
        if (REPO / rel).is_file():
            dest = root / rel
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / rel, dest, follow_symlinks=False)


def require_slurm_cluster() -> None:
    """Skip unless slurmctld answers and both nodes n1, n2 are up in partition debug."""
    if shutil.which("sinfo") is None:
        pytest.skip(f"SLURM not installed: {START_HINT}")
    try:
        run_text("scontrol", "ping", timeout=5)
        out = run_text("sinfo", "-h", "-N", "-p", "debug", "-o", "%N %T", timeout=15)
        states = dict(line.split() for line in out.strip().splitlines())
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired, ValueError) as err:
        pytest.skip(f"SLURM cluster not up ({err}): {START_HINT}")
    usable = {"idle", "mixed", "allocated", "completing"}
    if not all(states.get(node) in usable for node in ("n1", "n2")):
        pytest.skip(f"SLURM nodes n1/n2 not both up (sinfo: {states}): {START_HINT}")
