"""Re-attach to a segment still running in SLURM (pythia_suite.slurm, issue 7), against fake
`squeue`/`sacct` executables whose answers the tests script. The same behaviour on the real
local cluster is in tests/test_slurm_suite.py."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from pythia_suite import cli, slurm
from pythia_suite import config as cfg

REPO = Path(__file__).resolve().parents[1]

FAKE_SLURM = textwrap.dedent(
    """\
    import json, sys
    from pathlib import Path

    # jobs.json: {id: {"state", "name", "comment", "polls": N}}; a job leaves the queue after N
    # `squeue -j` answers and sacct then reports "final". Every call is appended to calls.log.
    here = Path(__file__).parent
    jobs = json.loads((here / "jobs.json").read_text())
    argv = sys.argv[1:]
    with open(here / "calls.log", "a") as log:
        log.write(Path(sys.argv[0]).name + " " + " ".join(argv) + "\\n")
    def opt(flag):
        return argv[argv.index(flag) + 1] if flag in argv else None
    live = {i: j for i, j in jobs.items() if j.get("polls", 1) > 0}
    if Path(sys.argv[0]).name == "squeue":
        if opt("-j"):
            job = live.get(opt("-j"))
            if job is None:
                sys.exit("slurm_load_jobs error: Invalid job id specified")
            job["polls"] = job.get("polls", 1) - 1
            (here / "jobs.json").write_text(json.dumps(jobs))
            print(job["state"])
        else:
            sep = opt("-o")[2]
            for i, j in live.items():
                comment = j.get("comment") or "(null)"
                print(sep.join([i, j["state"], j.get("name", "uuid"), comment]))
    else:
        job = jobs.get(opt("-j"))
        if job is not None:
            print(job.get("final", "COMPLETED"))
    """
)


@pytest.fixture
def fake(tmp_path):
    """Fake squeue/sacct in tmp/bin; returns a helper to set the jobs and read the calls."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name in ("squeue", "sacct"):
        path = bin_dir / name
        path.write_text(f"#!{sys.executable}\n" + FAKE_SLURM)
        path.chmod(0o755)

    class Fake:
        squeue = str(bin_dir / "squeue")
        sacct = str(bin_dir / "sacct")
        bin = bin_dir

        @staticmethod
        def jobs(**jobs):
            (bin_dir / "jobs.json").write_text(json.dumps(jobs))

        @staticmethod
        def calls() -> list[str]:
            log = bin_dir / "calls.log"
            return log.read_text().splitlines() if log.exists() else []

    Fake.jobs()
    return Fake


def write_holder(state_dir: Path, job_id: str | None, host="n1", pid=4242) -> None:
    state_dir.mkdir(parents=True, exist_ok=True)
    holder = {"host": host, "pid": pid, "slurm_job_id": job_id, "since": "2026-01-01T00:00:00"}
    (state_dir / "lock").write_text(json.dumps(holder) + "\n")


def no_sleep(seconds: float) -> None:
    pass


# ----------------------------------------------------------------------------- SLURM queries


def test_plugin_comment_is_what_the_slurm_plugin_submits_with():
    from snakemake.iocontainers import Wildcards
    from snakemake_executor_plugin_slurm.utils import get_job_wildcards

    class Job:  # what run_job reads: the rule name and the wildcards in pattern order
        name = "train_segment"
        wildcards = Wildcards(fromdict={"run": "pythia-0.4m-deduped", "step": "16"})

    expected = f"rule_{Job.name}_wildcards_{get_job_wildcards(Job)}"
    assert slurm.plugin_comment("train_segment", ["pythia-0.4m-deduped", "16"]) == expected
    assert expected == "rule_train_segment_wildcards_pythia-0.4m-deduped_16"
    assert slurm.plugin_comment("report", []) == "rule_report"


def test_list_jobs_reads_id_state_name_and_comment(fake):
    fake.jobs(
        **{
            "11": {"state": "RUNNING", "name": "a b|c", "comment": "rule_x_wildcards_y"},
            "12": {"state": "PENDING"},
        }
    )
    jobs = slurm.list_jobs(squeue=fake.squeue)
    assert jobs == [
        slurm.SlurmJob("11", "RUNNING", "a b|c", "rule_x_wildcards_y"),
        slurm.SlurmJob("12", "PENDING", "uuid", ""),
    ]


def test_list_jobs_names_squeue_and_the_line_it_cannot_read(tmp_path):
    bad = tmp_path / "squeue"
    bad.write_text("#!/bin/sh\necho 'only one field'\n")
    bad.chmod(0o755)
    with pytest.raises(slurm.SlurmQueryError, match=r"squeue: line 1 .*only one field"):
        slurm.list_jobs(squeue=str(bad))
    with pytest.raises(slurm.SlurmQueryError, match="not found"):
        slurm.list_jobs(squeue=str(tmp_path / "no-such-squeue"))


def test_job_state_from_squeue_then_from_accounting(fake):
    fake.jobs(
        **{
            "5": {"state": "RUNNING", "polls": 1, "final": "CANCELLED by 0"},
            "6": {"state": "RUNNING", "polls": 0, "final": "FAILED"},
        }
    )
    kw = {"squeue": fake.squeue, "sacct": fake.sacct}
    assert slurm.job_state("5", **kw) == "RUNNING"
    assert slurm.job_state("5", **kw) == "CANCELLED"  # left the queue: sacct, first word
    assert slurm.job_state("6", **kw) == "FAILED"
    assert slurm.job_state("7", **kw) is None  # unknown to both


# ----------------------------------------------------------------------------- who writes


def test_waits_for_the_lock_holders_job_until_it_leaves_the_queue(fake, tmp_path):
    state = tmp_path / "state" / "pythia-0.4m"
    write_holder(state, "101")
    fake.jobs(**{"101": {"state": "RUNNING", "polls": 3}})
    messages: list[str] = []
    sleeps: list[float] = []
    waited = slurm.await_segment(
        state,
        ["rule_train_segment_wildcards_pythia-0.4m_8"],
        own_job_id="202",
        log=messages.append,
        squeue=fake.squeue,
        sacct=fake.sacct,
        sleep=sleeps.append,
    )
    assert [w.job_id for w in waited] == ["101"]
    assert "RUNNING" in waited[0].why and "pid 4242" in waited[0].why
    assert len(sleeps) == 3 and sleeps == sorted(sleeps)  # polls back off
    assert "waiting for SLURM job 101" in messages[0]
    assert "ended" in messages[-1]


def test_waits_for_a_pending_job_of_the_same_segment_only(fake, tmp_path):
    state = tmp_path / "state" / "pythia-0.4m"
    comment = slurm.plugin_comment("train_segment", ["pythia-0.4m", "2"])
    group = slurm.group_comment("early_pythia-0.4m", ["train_segment"])
    assert group == "rule_early_pythia-0.4m_train_segment"
    fake.jobs(
        **{
            "301": {"state": "PENDING", "comment": comment, "polls": 2},
            "302": {"state": "RUNNING", "comment": "rule_train_segment_wildcards_pythia-0.4m_16"},
            "303": {"state": "RUNNING", "comment": comment},  # ourselves
            "304": {"state": "CONFIGURING", "comment": group},
            "305": {"state": "RUNNING", "comment": "rule_early_pythia-0.4m-deduped_train_segment"},
        }
    )
    writers = slurm.find_other_writers(
        state, [comment, group], own_job_id="303", squeue=fake.squeue, sacct=fake.sacct
    )
    assert [(w.job_id, w.why) for w in writers] == [
        ("301", f"PENDING, comment {comment}"),
        ("304", f"CONFIGURING, comment {group}"),
    ]


def test_our_own_allocation_is_not_another_writer(fake, tmp_path):
    """The early segments share one allocation: the previous one held the lock as this job."""
    state = tmp_path / "state" / "pythia-0.4m"
    write_holder(state, "404")
    fake.jobs(**{"404": {"state": "RUNNING", "polls": 99}})
    assert (
        slurm.await_segment(
            state, [], own_job_id="404", squeue=fake.squeue, sacct=fake.sacct, sleep=no_sleep
        )
        == []
    )


def test_a_finished_holder_is_no_writer(fake, tmp_path):
    state = tmp_path / "state" / "pythia-0.4m"
    write_holder(state, "505")
    fake.jobs(**{"505": {"state": "RUNNING", "polls": 0, "final": "NODE_FAIL"}})
    assert slurm.find_other_writers(state, [], own_job_id="1", squeue=fake.squeue) == []


def test_timeout_names_the_job_and_starts_nothing(fake, tmp_path):
    state = tmp_path / "state" / "pythia-0.4m"
    write_holder(state, "606")
    fake.jobs(**{"606": {"state": "RUNNING", "polls": 10**6}})
    now = [0.0]

    def sleep(seconds):
        now[0] += seconds

    with pytest.raises(slurm.SegmentWaitTimeout, match=r"SLURM job 606 .*after 30 s"):
        slurm.await_segment(
            state,
            [],
            own_job_id="1",
            timeout_s=30,
            log=lambda m: None,
            squeue=fake.squeue,
            sacct=fake.sacct,
            sleep=sleep,
            clock=lambda: now[0],
        )


def test_outside_slurm_only_the_local_lock_counts(fake, tmp_path):
    """A local Snakemake never asks SLURM (its clients may be installed with no controller up),
    but waits for a process on this host that holds the state dir lock."""
    state = tmp_path / "state" / "pythia-0.4m"
    write_holder(state, "707")
    fake.jobs(**{"707": {"state": "RUNNING", "polls": 10**6}})
    assert slurm.find_other_writers(state, ["c"], own_job_id=None, squeue=fake.squeue) == []
    assert fake.calls() == []

    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import fcntl, sys, time; f = open(sys.argv[1], 'a');"
            "fcntl.flock(f, fcntl.LOCK_EX); print('held', flush=True); time.sleep(60)",
            str(state / "lock"),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        assert slurm.lock_is_held(state)
        writers = slurm.find_other_writers(state, ["c"], own_job_id=None)
        assert len(writers) == 1 and writers[0].job_id is None
        assert "holds" in str(writers[0]) and "pid 4242" in str(writers[0])
    finally:
        holder.kill()
        holder.wait()
    assert not slurm.lock_is_held(state)
    assert not slurm.lock_is_held(tmp_path / "nowhere")


# ----------------------------------------------------------------------------- the outcome


def complete_checkpoint(path: Path, step: int) -> Path:
    path.mkdir(parents=True)
    (path / "trainer_state.json").write_text(json.dumps({"step": step}))
    (path / "provenance.json").write_text("{}")
    return path


def test_checkpoint_complete(tmp_path):
    done = complete_checkpoint(tmp_path / "step8", 8)
    assert slurm.checkpoint_complete(done, 8)
    assert not slurm.checkpoint_complete(done, 16)
    assert not slurm.checkpoint_complete(tmp_path / "missing", 8)
    (done / "provenance.json").unlink()  # killed between the rename and the record
    assert not slurm.checkpoint_complete(done, 8)
    garbled = tmp_path / "step4"
    garbled.mkdir()
    (garbled / "trainer_state.json").write_text("{not json")
    assert not slurm.checkpoint_complete(garbled, 4)


MINI = ["--config", str(REPO / "config.yaml"), "--config", str(REPO / "config" / "mini.yaml")]


def test_train_segment_takes_a_complete_checkpoint_left_by_the_other_job(tmp_path, capsys):
    out = complete_checkpoint(tmp_path / "step8", 8)
    before = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    argv = [*MINI, "train-segment", "pythia-0.4m", "--step", "8", "--output", str(out)]
    assert cli.main(argv) == 0
    assert "already a complete checkpoint of step 8; not training" in capsys.readouterr().err
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == before


def test_await_segment_command_waits_for_the_running_job(fake, tmp_path, monkeypatch):
    """`pythia-suite await-segment` inside a SLURM job, with the lock naming a live job."""
    monkeypatch.chdir(tmp_path)  # paths.state (results-mini/state in mini.yaml) is relative
    state = cfg.load_config([a for a in MINI if a != "--config"])["paths"]["state"]
    write_holder(tmp_path / state / "pythia-0.4m", "808")
    fake.jobs(**{"808": {"state": "RUNNING", "polls": 1}})
    env = {
        **os.environ,
        "PATH": f"{fake.bin}{os.pathsep}{os.environ['PATH']}",
        "SLURM_JOB_ID": "909",
    }
    started = time.monotonic()
    result = subprocess.run(
        [sys.executable, "-m", "pythia_suite.cli", *MINI, "await-segment", "pythia-0.4m"]
        + ["--step", "8"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert "waiting for SLURM job 808 (RUNNING" in result.stderr
    assert time.monotonic() - started >= 2  # one poll
    queried = fake.calls()
    assert any(c.startswith("squeue -h -j 808") for c in queried)  # the lock holder's job
    assert any(c.startswith("squeue -h -o") for c in queried), queried  # jobs by comment

    fake.jobs(**{"808": {"state": "RUNNING", "polls": 10**6}})
    result = subprocess.run(
        [sys.executable, "-m", "pythia_suite.cli", *MINI, "await-segment", "pythia-0.4m"]
        + ["--step", "8", "--timeout", "0"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1
    assert "error:" in result.stderr and "SLURM job 808" in result.stderr
