"""`pythia-suite status` and the plan's measured cost, on synthetic results trees
(tests/status_fixture.py) in the segment-summary format the training helper writes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from status_fixture import build_tree, incomplete_marker, segment_summary, write_log

from pythia_suite import config as cfg
from pythia_suite import costs, paths, status
from pythia_suite.cli import main

REPO = Path(__file__).resolve().parents[1]
CONFIGS = [REPO / "config.yaml", REPO / "config/mini.yaml"]


@pytest.fixture
def mini(tmp_path, monkeypatch) -> dict:
    """The miniature suite's config with results in tmp_path (the working directory)."""
    monkeypatch.chdir(tmp_path)
    return cfg.load_config(CONFIGS, {"paths": {"results": "results", "state": "results/state"}})


def _collect(config, **kw) -> status.SuiteStatus:
    return status.collect_status(config, ask_slurm=False, **kw)


def test_counts_measured_rates_and_eta(mini):
    costs.record_plan(mini)
    build_tree(mini, 0.5, tokens_per_s=2000.0, spike_every=2)
    st = _collect(mini)
    steps = cfg.checkpoint_steps(mini)
    done = steps[: round(len(steps) * 0.5)]
    assert [r.run for r in st.runs] == list(cfg.expand_runs(mini))
    r = st.runs[0]
    assert (r.trained, r.exported, r.published, r.verified) == (len(done),) * 4
    assert r.planned == len(steps) and r.last_step == done[-1]
    assert r.tokens_per_s == pytest.approx(2000.0)
    summaries = [
        json.loads(Path(paths.segment_summary("results", r.run, s)).read_text()) for s in done[1:]
    ]
    assert r.device_hours == pytest.approx(sum(s["device_hours"] for s in summaries))
    assert r.mfu == pytest.approx(summaries[0]["mfu"])
    wall_per_step = sum(s["wall_s"] for s in summaries) / done[-1]
    assert r.eta_s == pytest.approx((steps[-1] - done[-1]) * wall_per_step)
    assert len(r.spikes) == len([s for s in summaries if s["spikes"]]) > 0
    assert r.predicted_device_hours is not None
    assert st.problems == [] and not st.snakemake_running


def test_comparison_with_recorded_prediction_can_fail(mini):
    costs.record_plan(mini)
    predicted = costs.read_recorded_plan("results")["runs"]["pythia-0.4m"]["device_hours"]
    # The rate the prediction implies (one rank, peak x MFU): 10x slower must read as over plan.
    flops = cfg.training_flops_per_token(mini, "0.4m")
    implied = 0.3e12 * mini["cluster"]["assumed_mfu"] / flops
    build_tree(mini, 1.0, tokens_per_s=implied / 10, overhead_s=0)
    slow = _collect(mini, runs=["pythia-0.4m"]).runs[0]
    assert slow.predicted_to_here == pytest.approx(predicted)
    assert slow.over_prediction == pytest.approx(10 * 1.05)  # wall = 1.05 x train time
    build_tree(mini, 1.0, tokens_per_s=implied * 2, overhead_s=0)
    fast = _collect(mini, runs=["pythia-0.4m"]).runs[0]
    assert fast.over_prediction == pytest.approx(1.05 / 2)
    assert "(52%)" in status.render_text(_collect(mini, runs=["pythia-0.4m"]))


def test_plan_json_written_once(mini):
    path = Path(paths.plan_record("results"))
    assert costs.record_plan(mini) is True
    first = path.read_text()
    changed = cfg.deep_merge(mini, {"cluster": {"assumed_mfu": 0.9}})
    assert costs.record_plan(changed) is False
    assert path.read_text() == first
    record = json.loads(first)
    assert record["format"] == costs.PLAN_FORMAT
    assert set(record["runs"]) == set(cfg.expand_runs(mini))
    assert record["runs"]["pythia-0.4m"]["mfu"] == mini["cluster"]["assumed_mfu"]
    assert list(path.parent.glob(".plan.json*")) == []


def test_plan_uses_measured_rates_of_same_size_and_layout(mini, capsys):
    rows = costs.cost_rows(mini, measured=costs.measured_rates(mini))
    assert {r["device_hours_source"] for r in rows} == {"assumed"}
    assert {r["mfu_source"] for r in rows} == {"assumed (cluster.assumed_mfu)"}
    build_tree(mini, 0.5, tokens_per_s={"0.4m": 4000.0, "1.3m": 1000.0})
    # A segment of 0.4m on another layout (2 ranks) must not count as 0.4m's measurement.
    run = cfg.get_run(mini, "pythia-0.4m")
    odd = segment_summary(mini, run, 64, 96, tokens_per_s=1.0)
    odd["devices"] = 2
    path = Path(paths.segment_summary("results", run.name, 96))
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps(odd))
    measured = costs.measured_rates(mini)
    assert measured["0.4m"]["tokens_per_s"] == pytest.approx(4000.0)
    rows = {r["run"]: r for r in costs.cost_rows(mini, measured=measured)}
    row = rows["pythia-0.4m"]
    assert row["device_hours_source"].startswith("measured")
    assert row["tokens_per_s"] == pytest.approx(4000.0)
    wall_rate = measured["0.4m"]["tokens"] / measured["0.4m"]["wall_s"]
    assert row["device_hours"] == pytest.approx(cfg.total_tokens(mini) / wall_rate / 3600)
    assert row["predicted_device_hours"] != row["device_hours"]
    overlay = Path("paths.yaml")
    overlay.write_text(yaml.safe_dump({"paths": {"results": "results"}}))
    assert (
        main(
            [
                "--config",
                str(CONFIGS[0]),
                "--config",
                str(CONFIGS[1]),
                "--config",
                str(overlay),
                "plan",
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "THROUGHPUT AND DEVICE-HOURS" in out
    assert "measured (" in out and "assumed MFU 2% from cluster.assumed_mfu" not in out
    assert "CPU rank (fp32)" in out


def test_failed_incomplete_and_nan_abort_jobs(mini):
    build_tree(mini, 0.5)
    log = write_log(
        mini,
        "train",
        "pythia-0.4m",
        "step64",
        text="step 40 loss 3.2\nTraceback (most recent call last):\n  File x\n"
        "pythia_suite.train.step.NonFiniteLossError: loss is not finite at iteration 40\n"
        "pythia-suite train-segment: done\n",
    )
    write_log(mini, "export", "pythia-1.3m", "step8", text="export ok\n")  # finished: no problem
    write_log(mini, "publish", "pythia-1.3m", "step16", text="RuntimeError: hub said 500\n")
    incomplete_marker(".", "results/runs/pythia-1.3m/checkpoints/step64", "4242")
    # Long paths are split into @-prefixed directories by Snakemake; decode those too.
    long_target = "results/runs/pythia-1.3m-deduped/checkpoints/step64"
    name = __import__("base64").urlsafe_b64encode(long_target.encode()).decode()
    split = Path(".snakemake/incomplete") / ("@" + name[:10]) / name[10:]
    split.parent.mkdir(parents=True)
    split.write_text(json.dumps({"external_jobid": None}))
    st = _collect(mini)
    by = {(p.kind, p.target): p for p in st.problems}
    failed = by[("failed", paths.checkpoint_dir(st.results, "pythia-0.4m", 64))]
    assert failed.log == paths.log(st.results, "train", "pythia-0.4m", "step64")
    assert failed.error.endswith("NonFiniteLossError: loss is not finite at iteration 40")
    assert Path(log).is_file()
    pub = by[("failed", paths.receipt(st.results, "pythia-1.3m", 16))]
    assert pub.error == "RuntimeError: hub said 500"
    inc = by[("incomplete", paths.checkpoint_dir(st.results, "pythia-1.3m", 64))]
    assert inc.job_id == "4242" and inc.rule == "train_segment"
    assert ("incomplete", paths.checkpoint_dir(st.results, "pythia-1.3m-deduped", 64)) in by
    assert len(st.problems) == 4
    runs = {r.run: r for r in st.runs}
    assert len(runs["pythia-0.4m"].nan_aborts) == 1 and runs["pythia-1.3m"].nan_aborts == []
    text = status.render_text(st)
    assert "4 failed or incomplete jobs" in text and "SLURM job 4242" in text
    assert "NaN abort: " in text


def test_slurm_plugin_log_of_a_job_killed_by_slurm(mini):
    """A segment killed for memory: the rule's log stops mid-run; the plugin's log says why."""
    build_tree(mini, 0.5)
    write_log(mini, "train", "pythia-0.4m", "step64", text="step 40 loss 3.2\nstep 48 loss 3.1\n")
    slurm_log = Path(".snakemake/slurm_logs/rule_train_segment/pythia-0.4m_64/5151.log")
    slurm_log.parent.mkdir(parents=True)
    slurm_log.write_text(
        "Building DAG of jobs...\nslurmstepd: error: Detected 1 oom_kill event in StepId=5151.0."
        " Some of the step tasks have been OOM Killed.\n"
    )
    (p,) = _collect(mini).problems
    assert (p.kind, p.slurm_log) == ("failed", str(slurm_log))
    assert p.error.startswith("slurmstepd: error: Detected 1 oom_kill event")
    assert f"SLURM log: {slurm_log}" in status.render_text(_collect(mini))


def test_incomplete_output_does_not_count_as_trained(mini):
    build_tree(mini, 0.5)
    steps = cfg.checkpoint_steps(mini)
    last = steps[round(len(steps) * 0.5) - 1]
    incomplete_marker(".", f"results/runs/pythia-0.4m/checkpoints/step{last}")
    r = _collect(mini, runs=["pythia-0.4m"]).runs[0]
    assert r.trained == round(len(steps) * 0.5) - 1
    assert r.last_step < last


def test_running_slurm_jobs_and_unreachable_slurm(mini):
    build_tree(mini, 0.5)
    incomplete_marker(".", "results/runs/pythia-0.4m/checkpoints/step64", "77")
    sep = "\x1f"
    here, elsewhere = os.getcwd(), "/elsewhere/checkout"
    squeue_out = "\n".join(
        [
            sep.join(["77", "RUNNING", "rule_train_segment_wildcards_pythia-0.4m_64", here]),
            sep.join(["78", "PENDING", "rule_train_segment_wildcards_pythia-0.4m_96", here]),
            sep.join(["79", "PENDING", "rule_train_segment_wildcards_pythia-0.4m_96", elsewhere]),
            sep.join(["80", "PENDING", "rule_early_pythia-1.3m_train_segment", here]),
            sep.join(["81", "RUNNING", "(null)", here]),
        ]
    )

    def fake(argv, **kw):
        assert argv[0] in ("squeue", "sacct")
        return subprocess.CompletedProcess(argv, 0, squeue_out + "\n", "")

    st = status.collect_status(mini, ask_slurm=True, run_command=fake)
    assert st.slurm.reachable
    assert [(j["job_id"], j["state"], j["run"]) for j in st.slurm.jobs] == [
        ("77", "RUNNING", "pythia-0.4m"),
        ("78", "PENDING", "pythia-0.4m"),
        ("80", "PENDING", "pythia-1.3m"),
    ]
    (p,) = st.problems
    assert (p.kind, p.job_id, p.slurm_state) == ("running", "77", "RUNNING")
    only = status.collect_status(mini, ["pythia-1.3m"], ask_slurm=True, run_command=fake)
    assert [j["job_id"] for j in only.slurm.jobs] == ["80"]

    def missing(argv, **kw):
        raise FileNotFoundError(argv[0])

    st = status.collect_status(mini, ask_slurm=True, run_command=missing)
    assert not st.slurm.reachable and "SLURM cannot be asked" in st.slurm.reason
    assert "SLURM cannot be asked" in status.render_text(st)


def test_bad_records_are_named_not_fatal(mini):
    build_tree(mini, 0.5)
    bad = Path(paths.segment_summary("results", "pythia-0.4m", 8))
    bad.write_text('{"format": "something-else"}')
    Path(paths.receipt("results", "pythia-1.3m", 4)).write_text("{not json")
    st = _collect(mini)
    kinds = {(p.kind, p.target) for p in st.problems}
    assert ("bad-record", str(Path(st.results) / bad.relative_to("results"))) in {
        (k, str(Path(t))) for k, t in kinds
    }
    assert any(
        p.kind == "bad-record" and p.target.endswith("published/step4.json") for p in st.problems
    )


def test_a_segment_without_steps_is_a_record_not_a_problem(mini):
    """step0's summary, as the loop writes it: no steps, so no rate and no losses."""
    build_tree(mini, 0.5)
    before = _collect(mini).runs[0]
    path = Path(paths.segment_summary("results", before.run, 0))
    assert path.parent.is_dir()
    record = json.loads(Path(paths.segment_summary("results", before.run, 1)).read_text())
    record.update(start_step=0, end_step=0, steps=0, tokens=0, tokens_per_s=None, mfu=None)
    record.update(train_time_s=0.0, wall_s=2.0, device_hours=2.0 * record["devices"] / 3600)
    record["losses"] = dict.fromkeys(record["losses"])
    path.write_text(json.dumps(record))
    after = _collect(mini)
    assert not [p for p in after.problems if p.kind == "bad-record"]
    assert after.runs[0].tokens_per_s == pytest.approx(before.tokens_per_s)
    record["tokens_per_s"] = "fast"
    path.write_text(json.dumps(record))
    assert any(p.kind == "bad-record" for p in _collect(mini).problems)


def test_never_reads_trainer_state(mini):
    build_tree(mini, 0.5)
    for path in Path("results").rglob("trainer_state.json"):
        path.write_bytes(b"\xff not json at all")
        path.chmod(0)
    r = _collect(mini).runs[0]
    assert r.trained > 0 and r.tokens_per_s is not None


def test_unknown_run_names_the_runs(mini):
    with pytest.raises(cfg.ConfigError, match="no run named 'pythia-9b'.*pythia-0.4m"):
        _collect(mini, runs=["pythia-9b"])


def _cli(*args: str) -> list[str]:
    overlay = Path("paths.yaml")
    overlay.write_text(yaml.safe_dump({"paths": {"results": "results"}}))
    return [
        sys.executable,
        "-m",
        "pythia_suite.cli",
        "--config",
        str(CONFIGS[0]),
        "--config",
        str(CONFIGS[1]),
        "--config",
        str(overlay),
        *args,
    ]


def _env() -> dict:
    return {**os.environ, "PYTHONPATH": str(REPO / "src")}


def test_cli_json_text_html_and_run_filter(mini):
    costs.record_plan(mini)
    build_tree(mini, 0.5)
    out = subprocess.run(
        _cli("status", "--json", "--no-slurm", "pythia-1.3m"),
        env=_env(),
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    ).stdout
    data = json.loads(out)
    assert [r["run"] for r in data["runs"]] == ["pythia-1.3m"]
    assert data["runs"][0]["over_prediction"] is not None
    assert data["plan_recorded"].endswith("plan.json")
    text = subprocess.run(
        _cli("status", "--html", "--no-slurm"),
        env=_env(),
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    assert "pythia-0.4m-deduped" in text.stdout and "progress page:" in text.stderr
    page = Path(paths.status_page("results"))
    assert page.is_file() and not Path(paths.report_dir("results")).exists()
    assert "<svg" in page.read_text() and "<script" not in page.read_text()


def test_cli_watch_refreshes(mini):
    build_tree(mini, 0.3)
    proc = subprocess.Popen(
        _cli("status", "--no-slurm", "--watch", "0.3"),
        env=_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        time.sleep(4)
    finally:
        proc.terminate()
        out, _ = proc.communicate(timeout=30)
    assert out.count("pythia-suite status at") >= 2


def test_mini_cost_benchmark_on_synthetic_records(mini, capsys):
    """benchmarks/status_scale.py mini: predicted (recorded) vs measured CPU-rank-hours."""
    sys.path.insert(0, str(REPO / "benchmarks"))
    from status_scale import mini_costs, print_mini

    costs.record_plan(mini)
    recorded = costs.read_recorded_plan("results")
    build_tree(mini, 1.0, tokens_per_s=1500.0, overhead_s=0)
    rows = {r["run"]: r for r in mini_costs(mini)}
    row = rows["pythia-1.3m"]
    assert row["prediction_from"].endswith("plan.json")
    assert row["predicted_h"] == recorded["runs"]["pythia-1.3m"]["device_hours"]
    assert row["segments"] == row["of_segments"] == len(cfg.checkpoint_steps(mini)) - 1
    tokens = cfg.total_tokens(mini)
    assert row["measured_h"] == pytest.approx(tokens / 1500.0 * 1.05 / 3600)
    assert row["measured_over_predicted"] == pytest.approx(row["measured_h"] / row["predicted_h"])
    assert row["device"] == "CPU rank (fp32)"
    print_mini(list(rows.values()))
    assert "pythia-1.3m" in capsys.readouterr().out


def test_failures_from_the_newest_snakemake_log(mini):
    """Rules outside the run table (data, report) fail too: read from Snakemake's own log."""
    build_tree(mini, 0.5)
    log_dir = Path(".snakemake/log")
    log_dir.mkdir(parents=True)
    (log_dir / "2026-01-01T000000.000000.snakemake.log").write_text(
        "Error in rule tokenize_shard:\n    jobid: 3\n    output: results/data/gone.bin\n"
    )
    write_log(mini, "data", "tokenize", "01", text="ValueError: shard 01 is truncated\n")
    (log_dir / "2026-01-02T000000.000000.snakemake.log").write_text(
        "Building DAG of jobs...\n"
        "Error in rule tokenize_shard:\n"
        "    message: None\n    jobid: 7\n"
        "    output: results/data/tokenized/standard/01_text_document.bin, "
        "results/data/tokenized/standard/01_text_document.idx\n"
        "    log: results/logs/data/tokenize/01.log (check log file(s) for error details)\n"
        "    shell:\n        pythia-suite tokenize ...\n"
        "        (command exited with non-zero exit code)\n"
        "    external_jobid: 8080\n"
        "\n"
        "Error in rule export:\n    jobid: 9\n"
        f"    output: {paths.export_dir('results', 'pythia-1.3m', 1)}\n"  # exists: resolved
        "Error in rule model_card:\n    jobid: 11\n"
        "    output: results/runs/pythia-1.3m/model_card/README.md\n"
        "    log: results/logs/publish/pythia-1.3m/model_card.log (check log file(s) for error"
        " details)\n"
    )
    st = _collect(mini)
    by_rule = {p.rule: p for p in st.problems}
    assert set(by_rule) == {"tokenize_shard", "model_card"}  # the older log is not read
    tok = by_rule["tokenize_shard"]
    assert tok.target == "results/data/tokenized/standard/01_text_document.bin"
    assert (tok.log, tok.error, tok.job_id) == (
        "results/logs/data/tokenize/01.log",
        "ValueError: shard 01 is truncated",
        "8080",
    )
    # `status RUN` leaves out another run's failures, keeps the suite's.
    only = {p.rule for p in _collect(mini, runs=["pythia-0.4m"]).problems}
    assert only == {"tokenize_shard"}
