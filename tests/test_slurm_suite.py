"""The miniature suite through `snakemake --profile profiles/slurm` on the local two-node SLURM
cluster (`scripts/slurm-cluster.sh start`), then re-attaching to a segment job still running in
SLURM (issue 7).

One run serves every test here (config/slurm-ci.yaml: one size x {standard, deduped}, 2 ranks
spanning n1/n2, checkpoints 0 1 2 4 8). Skipped when the cluster is not up. Slow: minutes.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from suite_support import copy_repository, require_slurm_cluster, run_text

pytestmark = [pytest.mark.slurm, pytest.mark.slow]

RUNS = ("pythia-0.4m", "pythia-0.4m-deduped")
STEPS = (0, 1, 2, 4, 8)
RESULTS = "results-slurm"
SUITE_TIMEOUT_S = 1500

# The local cluster: account/partition, memory under a node's RealMemory (6026 MB; the
# profile's real-site sizes would be refused), no GPUs for evaluate.
SITE = [
    "--default-resources",
    "slurm_account=pythia",
    "slurm_partition=debug",
    "mem_mb=1000",
    "runtime=20",
    "--set-resources",
    "export:mem_mb=1500",
    "publish:mem_mb=1000",
    "evaluate:mem_mb=2000",
    "report:mem_mb=1500",
]
# Speed: the plugin's first status check after 2 s, not 40 (it adds 10 s per check that sees no
# job finish, and resets when one does). Grouping the ~20 data-preparation rules into one job
# was slower here: the jobstep runs a group's rules one at a time.
FAST = [
    "--slurm-init-seconds-before-status-checks",
    "2",
    "--latency-wait",
    "5",
    "--jobs",
    "8",
]


@pytest.fixture(scope="module")
def cluster() -> None:
    require_slurm_cluster()


def _env() -> dict[str, str]:
    return {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
        "PYTHONUNBUFFERED": "1",
    }


def _snakemake(root: Path, *extra: str, timeout: float) -> subprocess.CompletedProcess:
    argv = [
        str(Path(sys.executable).with_name("snakemake")),
        "--profile",
        "profiles/slurm",
        "--configfile",
        "config.yaml",
        "config/mini.yaml",
        "config/slurm-ci.yaml",
        *SITE,
        *FAST,
        *extra,
    ]
    return subprocess.run(
        argv, cwd=root, env=_env(), capture_output=True, text=True, timeout=timeout
    )


class Suite:
    def __init__(self, root: Path, output: str, wall_s: float):
        self.root = root
        self.output = output
        self.wall_s = wall_s
        self.results = root / RESULTS

    def slurm_jobs(self) -> dict[str, list[str]]:
        """SLURM job ids by Snakemake rule or group name, from the submission lines."""
        jobs: dict[str, list[str]] = {}
        pattern = r"submitted with SLURM jobid (\d+) \(log: .*/slurm_logs/(rule|group)_([^/]+)/"
        for job_id, kind, name in re.findall(pattern, self.output):
            if kind == "group":
                name = "group:" + re.sub(r"_train_segment$", "", name)
            jobs.setdefault(name, []).append(job_id)
        return jobs


@pytest.fixture(scope="module")
def suite(cluster, tmp_path_factory) -> Suite:
    """A copy of the repository with the miniature SLURM suite run in it."""
    root = tmp_path_factory.mktemp("slurm-suite") / "repo"
    copy_repository(root)
    started = time.monotonic()
    run = _snakemake(root, "--slurm-keep-successful-logs", timeout=SUITE_TIMEOUT_S)
    wall_s = time.monotonic() - started
    output = run.stdout + run.stderr
    (root / "snakemake.out").write_text(output)
    print(f"\nminiature suite through SLURM: {wall_s:.0f} s wall")
    assert run.returncode == 0, output[-6000:]
    return Suite(root, output, wall_s)


def _sacct(job_ids: list[str], deadline_s: float = 30) -> dict[str, dict[str, str]]:
    """sacct rows (jobs and their steps) by JobID, waiting until every job has a final state:
    slurmctld hands the records to slurmdbd a moment after a job ends."""
    fields = ["JobID", "JobName", "State", "NodeList", "NNodes", "NTasks", "AllocCPUS"]
    end = time.monotonic() + deadline_s
    while True:
        out = run_text("sacct", "-n", "-P", "-j", ",".join(job_ids), "-o", ",".join(fields))
        rows = {
            r.split("|")[0]: dict(zip(fields, r.split("|"), strict=True)) for r in out.splitlines()
        }
        done = all(rows.get(j, {}).get("State") == "COMPLETED" for j in job_ids)
        if done or time.monotonic() > end:
            return rows
        time.sleep(1)


def _steps(rows: dict[str, dict[str, str]], job_id: str) -> list[dict[str, str]]:
    """The numbered srun steps (`<job>.0`, `<job>.1`, ...) of a job, in order."""
    numbered = [r for k, r in rows.items() if re.fullmatch(rf"{job_id}\.\d+", k)]
    return sorted(numbered, key=lambda r: int(r["JobID"].split(".")[1]))


# ----------------------------------------------------------------------------- the run


def test_the_suite_finished_and_nothing_is_left_to_do(suite):
    for run in RUNS:
        assert (suite.results / "runs" / run / "run.done").is_file()
        for step in STEPS:
            receipt = json.loads(
                (suite.results / "runs" / run / "published" / f"step{step}.json").read_text()
            )
            assert receipt["verified"] is True and receipt["step"] == step
        zero = suite.results / "evals" / run / "zero-shot" / f"{run}_step8.json"
        assert 0.0 <= json.loads(zero.read_text())["results"]["mini_lambada"]["acc"] <= 1.0
    assert (suite.results / "report" / "report.md").stat().st_size > 0
    # The Snakemake nested in each job saw the same commands as the submitting one.
    dry = _snakemake(suite.root, "-n", timeout=120)
    assert dry.returncode == 0, dry.stderr[-3000:]
    assert "Nothing to be done" in dry.stdout + dry.stderr


def test_training_segments_ran_two_ranks_across_both_nodes(suite):
    jobs = suite.slurm_jobs()
    segment_jobs = jobs["train_segment"] + [j for k, v in jobs.items() if "early" in k for j in v]
    assert len(segment_jobs) == 4, jobs  # per run: the early group and step 8
    rows = _sacct(segment_jobs)
    for job_id in segment_jobs:
        assert rows[job_id]["State"] == "COMPLETED", rows
        assert rows[job_id]["NodeList"] == "n[1-2]", rows[job_id]
        steps = _steps(rows, job_id)
        assert steps, f"job {job_id} ran no srun step: {rows}"
        for step in steps:
            assert (step["NodeList"], step["NTasks"]) == ("n[1-2]", "2"), step
    for run in RUNS:
        state = json.loads(
            (
                suite.results / "runs" / run / "checkpoints" / "step8" / "trainer_state.json"
            ).read_text()
        )
        assert state["world_size"] == 2, run


def test_early_segments_of_a_run_shared_one_allocation(suite):
    jobs = suite.slurm_jobs()
    for run in RUNS:
        group = jobs[f"group:early_{run}"]
        assert len(group) == 1, jobs
        rows = _sacct(group)
        # steps 1, 2 and 4: three 2-rank srun steps inside one job
        steps = _steps(rows, group[0])
        assert len(steps) == 3, rows
        for step in (1, 2, 4):
            record = json.loads(
                (
                    suite.results / "runs" / run / "checkpoints" / f"step{step}" / "provenance.json"
                ).read_text()
            )
            assert str(record["slurm_job_id"]) == group[0], (step, record["slurm_job_id"])
        step8 = suite.results / "runs" / run / "checkpoints" / "step8" / "provenance.json"
        assert str(json.loads(step8.read_text())["slurm_job_id"]) != group[0]


def test_short_jobs_ran_as_single_task_allocations(suite):
    jobs = suite.slurm_jobs()
    short = {rule: jobs[rule] for rule in ("export", "publish", "evaluate")}
    assert len(short["export"]) == len(short["publish"]) == len(RUNS) * len(STEPS), jobs
    assert len(short["evaluate"]) == 2 * len(RUNS), jobs  # zero- and five-shot per run
    ids = [j for v in short.values() for j in v]
    rows = _sacct(ids)
    for job_id in ids:
        assert (rows[job_id]["NNodes"], rows[job_id]["AllocCPUS"]) == ("1", "1"), rows[job_id]
        steps = _steps(rows, job_id)
        assert [s["NTasks"] for s in steps] == ["1"], steps  # the jobstep's `srun -n1`


# ----------------------------------------------------------------------------- re-attach


def test_a_restarted_snakemake_waits_for_the_segment_job_still_in_slurm(suite):
    """As after `kill -9 snakemake`: a job of segment step 8 (the plugin's comment) is still in
    SLURM. A new Snakemake must wait for it and take its checkpoint, not train a second time."""
    run = "pythia-0.4m"
    checkpoints = suite.results / "runs" / run / "checkpoints"
    shutil.rmtree(checkpoints / "step8")
    log = suite.results / "logs" / "train" / run / "step8.log"
    log.unlink()
    train = (
        f"srun -N 2 -n 2 -c 1 --kill-on-bad-exit=1 pythia-suite --config {RESULTS}/config/"
        f"effective.yaml train-segment {run} --step 8 --resume-from {checkpoints}/step4"
        f" --output {checkpoints}/step8 2>> {log}"
    )
    # Starts training after the new Snakemake's job is up: it must be found by its comment
    # first, then as the state dir lock's holder.
    orphan = run_text(
        "sbatch", "--parsable", "-A", "pythia", "-p", "debug", "-N", "2", "-n", "2",
        "--mem", "2000", "-t", "10", "-J", "orphan-segment", "-D", str(suite.root),
        "-o", str(suite.root / "orphan.out"),
        "--comment", f"rule_train_segment_wildcards_{run}_8",
        "--wrap", f"sleep 15; {train}",
    ).strip()  # fmt: skip
    try:
        rerun = _snakemake(suite.root, f"{RESULTS}/runs/{run}/checkpoints/step8", timeout=600)
    finally:
        subprocess.run(["scancel", orphan], capture_output=True)
    output = rerun.stdout + rerun.stderr
    assert rerun.returncode == 0, output[-5000:]
    new_job = re.findall(r"submitted with SLURM jobid (\d+)", output)
    assert len(new_job) == 1, output[-3000:]

    text = log.read_text()
    assert f"waiting for SLURM job {orphan} (" in text, text
    assert text.count("already a complete checkpoint of step 8; not training") == 2, text  # ranks
    assert text.count("wrote ") == 1, text  # one writer: the orphan
    record = json.loads((checkpoints / "step8" / "provenance.json").read_text())
    assert str(record["slurm_job_id"]) == orphan
    state = json.loads((checkpoints / "step8" / "trainer_state.json").read_text())
    assert [h["step"] for h in state["history"]] == [5, 6, 7, 8]
    holder = json.loads((suite.results / "state" / run / "lock").read_text())
    assert str(holder["slurm_job_id"]) == orphan  # nobody took the lock after it
    rows = _sacct([orphan, new_job[0]])
    assert rows[orphan]["State"] == "COMPLETED", rows
