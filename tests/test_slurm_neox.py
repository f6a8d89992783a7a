"""The GPT-NeoX backend's segment jobs on the real two-node SLURM cluster
(`scripts/slurm-cluster.sh start`), with the stand-in GPT-NeoX of tests/neox_standin.

`snakemake --profile profiles/slurm` trains steps 0, 1, 2 of a tiny run with
`training.backend: neox`, on 2 nodes x 1 slot and, at the same time, of another run on 1 node
x 2 slots (a slot is a CPU rank here: the cluster has no GPUs). The stand-ins log every
process they start; the tests assert exactly one deepy.py per segment that trains, one rank per
slot, no nested launcher (sacct's job steps), and that a restarted Snakemake re-attaches to a
neox segment job still running.
Skipped when the cluster is not up. Slow: minutes.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import time

import pytest
from neox_support import NeoXSuite, calls, prepare_neox_slurm_suite
from suite_support import require_slurm_cluster, run_text

pytestmark = [pytest.mark.slurm, pytest.mark.slow]

STEPS = (0, 1, 2)


# The two layouts, each with its own run, trained at the same time: their jobs fit the
# cluster together (2 + 2 CPUs), and most of a run's wall time is waiting on SLURM.
LAYOUTS = {"two_nodes": (2, 1, "default"), "one_node": (1, 2, "seed3")}


@pytest.fixture(scope="module")
def layouts(tmp_path_factory) -> dict[str, tuple[NeoXSuite, subprocess.Popen]]:
    require_slurm_cluster()
    started = {}
    for name, (nodes, slots, seed) in LAYOUTS.items():
        suite = prepare_neox_slurm_suite(tmp_path_factory.mktemp(name), nodes, slots, seed)
        started[name] = (suite, suite.start_snakemake(str(suite.checkpoint(2))))
    t0 = time.monotonic()
    try:
        for _, proc in started.values():
            proc.wait(timeout=900)
    finally:
        for _, proc in started.values():
            proc.kill()
    print(f"\nneox segments, both layouts at once: {time.monotonic() - t0:.0f} s wall")
    return started


def _finished(layouts, name: str) -> tuple[NeoXSuite, str]:
    suite, proc = layouts[name]
    output = (suite.root / "snakemake.out").read_text()
    assert proc.returncode == 0, output[-6000:]
    return suite, output


@pytest.fixture(scope="module")
def two_nodes(layouts):
    return _finished(layouts, "two_nodes")


@pytest.fixture(scope="module")
def one_node(layouts):
    return _finished(layouts, "one_node")


def _sacct(job_ids: list[str], deadline_s: float = 30) -> dict[str, dict[str, str]]:
    fields = ["JobID", "State", "NodeList", "NNodes", "NTasks"]
    end = time.monotonic() + deadline_s
    while True:
        out = run_text("sacct", "-n", "-P", "-j", ",".join(job_ids), "-o", ",".join(fields))
        rows = {r.split("|")[0]: dict(zip(fields, r.split("|"), strict=True))
                for r in out.splitlines()}  # fmt: skip
        if all(rows.get(j, {}).get("State") == "COMPLETED" for j in job_ids):
            return rows
        if time.monotonic() > end:
            return rows
        time.sleep(1)


def _numbered_steps(rows: dict, job_id: str) -> list[dict]:
    return [r for k, r in rows.items() if re.fullmatch(rf"{job_id}\.\d+", k)]


def _check_launches(suite: NeoXSuite, output: str) -> dict:
    """What each segment job started: one deepy.py where it trained, one rank per slot."""
    jobs = suite.jobs(output)
    assert len(jobs) == len(STEPS), output[-3000:]  # init_checkpoint + 2 train_segment jobs
    # the index maps: one job before the segments, which read them and write none
    assert len(suite.jobs(output, rules=("neox_index_maps",))) == 1, output[-3000:]
    for step in STEPS:
        record = json.loads((suite.checkpoint(step) / "provenance.json").read_text())
        assert str(record["slurm_job_id"]) in jobs
        state = json.loads((suite.checkpoint(step) / "trainer_state.json").read_text())
        assert state["format"] == "pythia-suite/trainer-state/1" and state["step"] == step
    deepy = calls(suite.checkout, "deepy.py")
    by_job: dict[str, int] = {}
    for launch in deepy:
        by_job[launch["env"]["SLURM_JOB_ID"]] = by_job.get(launch["env"]["SLURM_JOB_ID"], 0) + 1
    # step0's job trains (0, 1] (GPT-NeoX saves 0 on the way), step1's reuses global_step1,
    # step2's trains (1, 2]: two launches, one per training job, never two in one job.
    assert len(deepy) == 2 and set(by_job.values()) == {1}, by_job
    ranks = calls(suite.checkout, "train.py")
    world = suite.nodes * suite.slots
    assert len(ranks) == 2 * world
    for job in by_job:
        mine = [r for r in ranks if r["env"].get("SLURM_JOB_ID") == job]
        assert sorted(r["rank"] for r in mine) == list(range(world)), mine
        assert {r["world_size"] for r in mine} == {world}
        per_host: dict[str, int] = {}
        for r in mine:
            per_host[r["host"]] = per_host.get(r["host"], 0) + 1
        assert sorted(per_host.values()) == [suite.slots] * suite.nodes, per_host
    return {"jobs": jobs, "deepy_by_job": by_job, "ranks": ranks}


def test_two_nodes_one_deepy_per_segment_whose_srun_starts_one_rank_per_slot(two_nodes):
    suite, output = two_nodes
    seen = _check_launches(suite, output)
    srun = calls(suite.checkout, "srun")
    assert len(srun) == 2  # deepy.py's own, once per launch: no srun around the rule
    for call in srun:
        assert call["argv"][:3] == ["-n", "2", "--export=ALL"], call
    for rank in seen["ranks"]:  # ranks from the srun task (deepspeed_slurm: true)
        assert rank["env"]["SLURM_PROCID"] == str(rank["rank"])
    assert {r["host"] for r in seen["ranks"]} == {"n1", "n2"}
    rows = _sacct(list(seen["deepy_by_job"]))
    for job in seen["deepy_by_job"]:
        assert rows[job]["NNodes"] == "2", rows[job]
        steps = _numbered_steps(rows, job)
        # One job step: deepy.py's srun over both nodes. A plugin `srun -n1` wrapper or a
        # rule-level srun prefix would show as another step.
        assert [(s["NodeList"], s["NTasks"]) for s in steps] == [("n[1-2]", "2")], rows


def test_one_node_one_deepy_per_segment_starting_its_slots_locally(one_node):
    suite, output = one_node
    seen = _check_launches(suite, output)
    assert calls(suite.checkout, "srun") == []  # one host: DeeperSpeed's local launcher
    for rank in seen["ranks"]:
        assert "SLURM_PROCID" not in rank["env"] and rank["env"]["RANK"] == str(rank["rank"])
    rows = _sacct(list(seen["deepy_by_job"]))
    for job in seen["deepy_by_job"]:
        assert rows[job]["NNodes"] == "1", rows[job]
        assert _numbered_steps(rows, job) == [], rows  # `mpi`: no srun -n1 wrapper either


def test_a_restarted_snakemake_reattaches_to_a_running_neox_segment(two_nodes):
    """As after `kill -9 snakemake`: a job of segment step 2 (the plugin's comment) still runs
    GPT-NeoX. The new Snakemake's job must wait for it and take its checkpoint: deepy.py runs
    once, in the orphan."""
    suite, _ = two_nodes
    shutil.rmtree(suite.checkpoint(2))
    state = suite.results / "state" / suite.run / "neox" / "checkpoints"
    shutil.rmtree(state / "global_step2")
    (state / "latest").write_text("global_step1")
    log = suite.results / "logs" / "train" / suite.run / "step2.log"
    log.unlink()
    before = len(calls(suite.checkout, "deepy.py"))
    effective = suite.results / "config" / "effective.yaml"
    train = (
        f"STANDIN_TRAIN_SECONDS=20 pythia-suite --config {effective} train-segment {suite.run} "
        f"--step 2 --resume-from {suite.checkpoint(1)} --output {suite.checkpoint(2)} 2>> {log}"
    )
    orphan = run_text(
        "sbatch", "--parsable", "-A", "pythia", "-p", "debug", "-N", "2", "-n", "2",
        "--mem", "1000", "-t", "10", "-J", "orphan-neox-segment", "-D", str(suite.root),
        "-o", str(suite.root / "orphan.out"),
        "--comment", f"rule_train_segment_wildcards_{suite.run}_2", "--wrap", f"sleep 5; {train}",
    ).strip()  # fmt: skip
    try:
        rerun = suite.snakemake(str(suite.checkpoint(2)), timeout=600)
    finally:
        subprocess.run(["scancel", orphan], capture_output=True)
    output = rerun.stdout + rerun.stderr
    assert rerun.returncode == 0, output[-5000:]
    assert len(suite.jobs(output)) == 1, output[-3000:]
    text = log.read_text()
    assert f"waiting for SLURM job {orphan} (" in text, text
    assert "already a complete checkpoint of step 2; not training" in text, text
    launches = calls(suite.checkout, "deepy.py")[before:]
    assert [launch["env"]["SLURM_JOB_ID"] for launch in launches] == [orphan]
    record = json.loads((suite.checkpoint(2) / "provenance.json").read_text())
    assert str(record["slurm_job_id"]) == orphan
