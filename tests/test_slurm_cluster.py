"""Against the real two-node SLURM cluster of `scripts/slurm-cluster.sh start` (nodes n1, n2).

Skipped when that cluster is not up. Proves: a 2-node step runs one rank per node and sacct
accounts it; Snakemake's SLURM executor submits and tracks jobs, a rule with `mpi` gets ranks
on both nodes, and a torch.distributed gloo all_reduce works across the two nodes.
"""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from suite_support import require_slurm_cluster, run_text

pytestmark = pytest.mark.slurm

WORKFLOW = Path(__file__).resolve().parent / "slurm_workflow"


@pytest.fixture(scope="module")
def cluster() -> None:
    require_slurm_cluster()


def _sacct_steps(job_id: str, deadline_s: float = 20) -> dict[str, dict[str, str]]:
    """sacct rows of a finished job by JobID (job, .batch, .0, ...), waiting for the records:
    slurmctld hands them to slurmdbd a moment after the job ends."""
    fields = ["JobID", "State", "NodeList", "NNodes"]
    end = time.monotonic() + deadline_s
    while True:
        out = run_text("sacct", "-n", "-P", "-j", job_id, "-o", ",".join(fields))
        rows = {
            r.split("|")[0]: dict(zip(fields, r.split("|"), strict=True)) for r in out.splitlines()
        }
        done = rows.get(job_id, {}).get("State") == "COMPLETED"
        if done or time.monotonic() > end:
            return rows
        time.sleep(1)


def test_srun_runs_one_rank_on_each_node(cluster):
    out = run_text(
        "srun", "-N", "2", "-n", "2", "-t", "1",
        "bash", "-c", "echo $SLURM_JOB_ID $SLURM_PROCID $SLURM_NODEID $SLURMD_NODENAME",
    )  # fmt: skip
    ranks = sorted(line.split() for line in out.strip().splitlines())
    assert [(r[1], r[2], r[3]) for r in ranks] == [("0", "0", "n1"), ("1", "1", "n2")]
    job_id = ranks[0][0]
    rows = _sacct_steps(job_id)
    assert rows[job_id]["State"] == "COMPLETED", rows
    assert rows[f"{job_id}.0"]["NodeList"] == "n[1-2]", rows


def test_snakemake_slurm_executor_places_ranks_on_both_nodes(cluster, tmp_path):
    proc = subprocess.run(
        [
            sys.executable, "-m", "snakemake",
            "--snakefile", str(WORKFLOW / "Snakefile"),
            "--profile", str(WORKFLOW / "profile"),
            "--directory", str(tmp_path),
            "--config", f"python={sys.executable}",
        ],
        capture_output=True, text=True, timeout=240, cwd=tmp_path,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-4000:]

    # A plain rule ran once, on one node, inside a SLURM job.
    hello = (tmp_path / "out/hello.txt").read_text().split()
    assert hello[0].startswith("job=") and hello[0] != "job="
    assert hello[1] in ("node=n1", "node=n2")

    # The `mpi` rule's inner `srun -N 2 -n 2` put rank 0 on n1 and rank 1 on n2, in one job.
    ranks = [line.split() for line in (tmp_path / "out/ranks.txt").read_text().splitlines()]
    assert [(r[1], r[2], r[3]) for r in ranks] == [("0", "0", "n1"), ("1", "1", "n2")]
    assert ranks[0][0] == ranks[1][0]

    # gloo all_reduce of rank+1 over the two nodes: 1 + 2.
    record = json.loads((tmp_path / "out/allreduce.json").read_text())
    assert record["sum"] == 3.0
    assert record["world_size"] == 2
    assert record["nodes"] == ["n1", "n2"]

    # sacct: both multi-node jobs ran a step on both nodes.
    for job_id in (ranks[0][0], record["job_id"]):
        rows = _sacct_steps(job_id)
        assert rows[job_id]["State"] == "COMPLETED", rows
        assert rows[job_id]["NodeList"] == "n[1-2]", rows
        assert rows[f"{job_id}.0"]["NodeList"] == "n[1-2]", rows
