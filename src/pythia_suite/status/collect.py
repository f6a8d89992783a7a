"""The status of every run from the results tree, the plan, and what Snakemake and SLURM say:
:func:`collect_status`."""

from __future__ import annotations

import os
import re
import subprocess
import time
from collections.abc import Callable, Iterable
from pathlib import Path

from pythia_suite import config as cfg
from pythia_suite import costs, paths
from pythia_suite.evaluate.run import result_file_step
from pythia_suite.jsonfile import read_json
from pythia_suite.provenance import RECORD_NAME
from pythia_suite.status.jobs import (
    ERROR_LINE,
    Runner,
    last_error_line,
    sacct_state,
    slurm_view,
    snakemake_incomplete,
    snakemake_log_failures,
    snakemake_running,
)
from pythia_suite.status.records import Problem, RunStatus, SlurmView, SuiteStatus
from pythia_suite.train.summary import read_summary

_STEP_DIR = re.compile(r"^step(0|[1-9][0-9]*)$")
_STEP_RECEIPT = re.compile(r"^step(0|[1-9][0-9]*)\.json$")
_NAN_ABORT = re.compile(r"NonFiniteLossError|not finite|\bnan\b", re.IGNORECASE)


def _step_dirs(path: str) -> set[int]:
    """Steps of finished `step<N>` directories (provenance record present) under `path`."""
    steps = set()
    try:
        entries = list(os.scandir(path))
    except OSError:
        return steps
    for entry in entries:
        match = _STEP_DIR.match(entry.name)
        if match and os.path.exists(os.path.join(entry.path, RECORD_NAME)):
            steps.add(int(match[1]))
    return steps


def _receipts(path: str) -> tuple[set[int], set[int], list[str]]:
    """(published steps, verified steps, unreadable receipt paths) of a run."""
    published, verified, bad = set(), set(), []
    try:
        entries = list(os.scandir(path))
    except OSError:
        return published, verified, bad
    for entry in entries:
        match = _STEP_RECEIPT.match(entry.name)
        if not match:
            continue
        step = int(match[1])
        published.add(step)
        try:
            if read_json(entry.path).get("verified") is True:
                verified.add(step)
        except (OSError, ValueError, AttributeError):
            bad.append(entry.path)
    return published, verified, bad


def _result_steps(folder: str) -> set[int]:
    """Steps of the Pythia-layout result files (`*_step<N>.json`, not `.raw.json`) in a folder."""
    try:
        names = os.listdir(folder)
    except OSError:
        return set()
    return {step for name in names if (step := result_file_step(name)) is not None}


def _eval_steps(results: str, run: str) -> dict[str, set[int]]:
    """Evaluated steps by shots ("zero"/"five") from finished batch dirs and collected evals.

    A batch directory holds `<run>/{zero-shot,five-shot}/<run>_step<N>.json`
    (pythia_suite.evaluate); it is finished once its provenance record is there.
    """
    found: dict[str, set[int]] = {"zero": set(), "five": set()}
    base = os.path.join(results, "runs", run, "evals")
    for shots in found:
        shots_dir = os.path.join(base, f"{shots}-shot")
        try:
            batches = [e.path for e in os.scandir(shots_dir) if e.name.startswith("batch")]
        except OSError:
            batches = []
        for batch in batches:
            if not os.path.exists(os.path.join(batch, RECORD_NAME)):
                continue
            found[shots] |= _result_steps(os.path.join(batch, run, f"{shots}-shot"))
        found[shots] |= _result_steps(os.path.join(paths.evals_dir(results, run), f"{shots}-shot"))
    return found


def _job_targets(config: dict, run: cfg.Run) -> list[tuple[str, str, tuple, str]]:
    """(rule, output path, wildcard values, log path) of every job of a run the status
    watches; wildcard values in the order of the rule's output pattern."""
    results = config["paths"]["results"]
    out = []
    for step in cfg.checkpoint_steps(config):
        out.append(
            (
                "train_segment" if step else "init_checkpoint",
                paths.checkpoint_dir(results, run.name, step),
                (run.name, step) if step else (run.name,),
                paths.log(results, "train", run.name, f"step{step}"),
            )
        )
        out.append(
            (
                "export",
                paths.export_dir(results, run.name, step),
                (run.name, step),
                paths.log(results, "export", run.name, f"step{step}"),
            )
        )
        out.append(
            (
                "publish",
                paths.receipt(results, run.name, step),
                (run.name, step),
                paths.log(results, "publish", run.name, f"step{step}"),
            )
        )
    for shots, n in (("zero", 0), ("five", 5)):
        for i, _ in enumerate(cfg.eval_batches(config, n)):
            batch = f"{i:03d}"
            out.append(
                (
                    "evaluate",
                    paths.eval_batch_dir(results, run.name, shots, batch),
                    (run.name, shots, batch),
                    paths.log(results, "evaluate", run.name, f"{shots}-shot", f"batch{batch}"),
                )
            )
    return out


def _existing_logs(config: dict, run: str) -> set[str]:
    """Normalised paths of the per-job logs of a run that exist (one listing per folder)."""
    results = config["paths"]["results"]
    found = set()
    for stage in ("train", "export", "publish", "evaluate"):
        top = os.path.join(results, "logs", stage, run)
        for dirpath, _, files in os.walk(top):
            found.update(os.path.normpath(os.path.join(dirpath, f)) for f in files)
    return found


def _problems_of_run(
    config: dict,
    run: cfg.Run,
    finished: set[str],
    marked: dict[str, str | None],
    sacct: Callable[[str], str | None],
    workdir: str | os.PathLike = ".",
) -> list[Problem]:
    logs = _existing_logs(config, run.name)
    problems = []
    for rule, target, values, log in _job_targets(config, run):
        target_n, log_n = os.path.normpath(target), os.path.normpath(log)
        if target_n in marked:
            job_id = marked[target_n]
            state = sacct(job_id) if job_id else None
            problems.append(
                Problem(
                    "incomplete",
                    rule,
                    run.name,
                    target,
                    log if log_n in logs else None,
                    last_error_line(log) if log_n in logs else None,
                    job_id,
                    state,
                )
            )
        elif log_n in logs and target_n not in finished:
            problems.append(Problem("failed", rule, run.name, target, log, last_error_line(log)))
        else:
            continue
        _attach_slurm_log(problems[-1], workdir, values)
    return problems


def _attach_slurm_log(problem: Problem, workdir: str | os.PathLike, values: tuple) -> None:
    """Add the SLURM plugin's log of the job (`.snakemake/slurm_logs/rule_<rule>/<wildcard
    values joined by _>/<job id>.log`; kept for failed jobs): the job's own, else the newest.
    Its last error line stands in when the rule's log names none (a job killed by SLURM for
    time or memory leaves its message there, not in the rule's log)."""
    folder = Path(
        workdir,
        ".snakemake",
        "slurm_logs",
        f"rule_{problem.rule}",
        "_".join(str(v) for v in values).replace("/", "_"),
    )
    try:
        candidates = [e for e in os.scandir(folder) if e.name.endswith(".log")]
    except OSError:
        return
    if not candidates:
        return
    own = [e for e in candidates if problem.job_id and e.name == f"{problem.job_id}.log"]
    chosen = own[0] if own else max(candidates, key=lambda e: e.stat().st_mtime)
    problem.slurm_log = os.path.relpath(chosen.path, workdir)
    if problem.error is None or not ERROR_LINE.search(problem.error):
        problem.error = last_error_line(chosen.path) or problem.error


def _finished_targets(config: dict, run: str, trained, exported, published, evals) -> set[str]:
    results = config["paths"]["results"]
    done = {os.path.normpath(paths.checkpoint_dir(results, run, s)) for s in trained}
    done |= {os.path.normpath(paths.export_dir(results, run, s)) for s in exported}
    done |= {os.path.normpath(paths.receipt(results, run, s)) for s in published}
    for shots, n in (("zero", 0), ("five", 5)):
        for i, steps in enumerate(cfg.eval_batches(config, n)):
            if set(steps) <= evals[shots]:
                done.add(os.path.normpath(paths.eval_batch_dir(results, run, shots, f"{i:03d}")))
    return done


def runs_outputs_filter(outputs: list[str], chosen: list, all_runs: dict) -> bool:
    """Whether a failure with these outputs concerns the chosen runs: outputs of another run
    (a path segment naming it) are left out when `status RUN...` names runs."""
    if len(chosen) == len(all_runs):
        return True
    others = set(all_runs) - {r.name for r in chosen}
    for output in outputs:
        parts = set(Path(output).parts)
        if parts & others:
            return False
    return True


def _measure(status: RunStatus, summaries: list[dict]) -> None:
    """Fill the measured figures of a run from its segment summaries."""
    if not summaries:
        return
    tokens = sum(s["tokens"] for s in summaries)
    train_s = sum(s.get("train_time_s") or 0 for s in summaries)
    status.tokens_per_s = tokens / train_s if train_s > 0 else None
    status.device_hours = sum(s["device_hours"] for s in summaries)
    weighted = [(s["mfu"], s["device_hours"]) for s in summaries if s.get("mfu") is not None]
    hours = sum(h for _, h in weighted)
    if weighted and hours > 0:
        status.mfu = sum(m * h for m, h in weighted) / hours
    status.device_kind = summaries[-1].get("device_kind")
    status.segments_measured = len(summaries)
    for s in summaries:
        for spike in s.get("spikes") or []:
            status.spikes.append(dict(spike, run=status.run))
        losses = s.get("losses") or {}
        status.segments.append(
            {
                "start_step": s.get("start_step"),
                "end_step": s["end_step"],
                "tokens_per_s": s["tokens_per_s"],
                "mfu": s.get("mfu"),
                "wall_s": s["wall_s"],
                "device_hours": s["device_hours"],
                "loss_first": losses.get("first"),
                "loss_last": losses.get("last"),
                "loss_min": losses.get("min"),
                "loss_max": losses.get("max"),
                "loss_mean": losses.get("mean"),
            }
        )


def _eta(status: RunStatus, summaries: list[dict], config: dict) -> float | None:
    """Seconds of training left at the measured wall-clock rate (set-up and saves included)."""
    if status.last_step is None or not summaries:
        return None
    wall = sum(s["wall_s"] for s in summaries)
    steps = sum(s["end_step"] - s.get("start_step", s["end_step"]) for s in summaries)
    if wall <= 0 or steps <= 0:
        return None
    return (status.final_step - status.last_step) * wall / steps


def _sacct_lookup(slurm: SlurmView, run_command: Runner) -> Callable[[str], str | None]:
    """sacct's state of a job, asked once per job, and only while SLURM answers."""
    sacct_cache: dict[str, str | None] = {}

    def sacct(job_id: str) -> str | None:
        if not slurm.reachable:
            return None
        if job_id not in sacct_cache:
            sacct_cache[job_id] = sacct_state(job_id, run_command)
        return sacct_cache[job_id]

    return sacct


def _count_artifacts(
    status: RunStatus, results: str, run, steps: list[int], eval_plan: dict, marked: dict
) -> tuple[set, set, set, dict, list]:
    """Fill the run's counts (trained, exported, published, verified, evaluated, last step of
    the unbroken chain) from its finished artifacts; a checkpoint Snakemake marks incomplete
    does not count. Returns (trained, exported, published, evals, unreadable receipts)."""
    eval_steps = eval_plan["zero"] | eval_plan["five"]
    ckpt_root = os.path.dirname(paths.checkpoint_dir(results, run.name, 0))
    trained = _step_dirs(ckpt_root) & set(steps)
    trained = {
        s
        for s in trained
        if os.path.normpath(paths.checkpoint_dir(results, run.name, s)) not in marked
    }
    exported = _step_dirs(os.path.dirname(paths.export_dir(results, run.name, 0)))
    exported &= set(steps)
    published, verified, bad = _receipts(os.path.dirname(paths.receipt(results, run.name, 0)))
    evals = _eval_steps(results, run.name)
    status.trained, status.exported = len(trained), len(exported & set(steps))
    status.published, status.verified = len(published), len(verified)
    status.eval_planned = len(eval_steps)
    status.evaluated = sum(
        1
        for s in eval_steps
        if all(s in evals[shots] for shots in eval_plan if s in eval_plan[shots])
    )
    status.eval_steps = {shots: sorted(v) for shots, v in evals.items()}
    # The last step of the unbroken chain: segments train in order from step0.
    chain = [s for s in steps if s in trained]
    status.last_step = max(chain) if chain else None
    return trained, exported, published, evals, bad


def _segment_summaries(results: str, run, trained: set, problems: list) -> list[dict]:
    """The segment summaries of the run's trained checkpoints; an unreadable one becomes a
    bad-record problem (reported, not raised)."""
    summaries = []
    for step in sorted(trained):
        path = paths.segment_summary(results, run.name, step)
        try:
            summary = read_summary(path)
        except ValueError as err:
            problems.append(Problem("bad-record", "train_segment", run.name, path, None, str(err)))
            continue
        if summary is not None:
            summaries.append(summary)
    return summaries


def _compare_with_plan(
    status: RunStatus, recorded: dict | None, summaries: list[dict], steps: list[int]
) -> None:
    """The run's recorded prediction of device-hours, in total and to the step trained."""
    if recorded and status.run in recorded["runs"]:
        predicted = recorded["runs"][status.run]["device_hours"]
        status.predicted_device_hours = predicted
        done = sum(s["end_step"] - s.get("start_step", s["end_step"]) for s in summaries)
        status.predicted_to_here = predicted * done / steps[-1] if steps[-1] else None


def _run_status(
    config: dict, run, context: dict, problems: list, sacct: Callable[[str], str | None]
) -> RunStatus:
    """One run's status from its artifacts, records and logs; its problems are appended to
    ``problems``. ``context``: what ``collect_status`` reads once for every run."""
    results, steps, workdir = context["results"], context["steps"], context["workdir"]
    marked = context["marked"]
    status = RunStatus(run.name, run.size, run.variant, len(steps), final_step=steps[-1])
    trained, exported, published, evals, bad = _count_artifacts(
        status, results, run, steps, context["eval_plan"], marked
    )
    summaries = _segment_summaries(results, run, trained, problems)
    for path in bad:
        problems.append(Problem("bad-record", "publish", run.name, path, None, "unreadable"))
    _measure(status, summaries)
    status.eta_s = _eta(status, summaries, config)
    _compare_with_plan(status, context["recorded"], summaries, steps)
    finished = _finished_targets(config, run.name, trained, exported, published, evals)
    run_problems = _problems_of_run(config, run, finished, marked, sacct, workdir)
    for p in run_problems:
        if p.rule == "train_segment" and p.error and _NAN_ABORT.search(p.error):
            status.nan_aborts.append(f"{p.target}: {p.error}")
    problems.extend(run_problems)
    return status


def _snakemake_log_problems(
    workdir: str | os.PathLike, problems: list[Problem], chosen: list, all_runs: dict
) -> None:
    """Failures of rules outside the runs' table (data preparation, report...) or not yet
    matched: from the newest Snakemake log, while their outputs are still missing."""
    listed = {os.path.normpath(p.target) for p in problems}
    for failure in snakemake_log_failures(workdir):
        outputs = [os.path.normpath(os.path.join(workdir, o)) for o in failure["outputs"]]
        missing = [o for o in outputs if not os.path.exists(o)]
        if not missing or any(o in listed for o in outputs):
            continue
        if failure["outputs"] and not runs_outputs_filter(missing, chosen, all_runs):
            continue
        log = failure["logs"][0] if failure["logs"] else None
        problems.append(
            Problem(
                "failed",
                failure["rule"],
                "",
                failure["outputs"][0] if failure["outputs"] else "(no output)",
                log,
                last_error_line(os.path.join(workdir, log)) if log else None,
                failure["job_id"],
            )
        )
        listed.update(outputs)


def collect_status(
    config: dict,
    runs: Iterable[str] | None = None,
    *,
    workdir: str | os.PathLike = ".",
    ask_slurm: bool = True,
    run_command: Runner = subprocess.run,
) -> SuiteStatus:
    """The status of the suite (or of the named runs). Raises ConfigError on an unknown run."""
    results = config["paths"]["results"]
    if not os.path.isabs(results):
        results = os.path.normpath(os.path.join(workdir, results))
        config = dict(config, paths=dict(config["paths"], results=results))
    all_runs = cfg.expand_runs(config)
    chosen = [cfg.get_run(config, name) for name in runs] if runs else list(all_runs.values())
    context = {
        "results": results,
        "steps": cfg.checkpoint_steps(config),
        "workdir": workdir,
        "eval_plan": {
            "zero": set(config["evaluation"]["zero_shot_steps"]),
            "five": set(config["evaluation"]["five_shot_steps"]),
        },
        "marked": {
            os.path.normpath(os.path.join(workdir, t)): j
            for t, j in snakemake_incomplete(workdir).items()
        },
        "recorded": costs.read_recorded_plan(results),
    }
    slurm = (
        slurm_view([r.name for r in chosen], workdir, run_command, all_runs)
        if ask_slurm
        else SlurmView(False, "SLURM not asked (--no-slurm)")
    )
    sacct = _sacct_lookup(slurm, run_command)
    problems: list[Problem] = []
    out_runs = [_run_status(config, run, context, problems, sacct) for run in chosen]
    _snakemake_log_problems(workdir, problems, chosen, all_runs)
    running = {j["job_id"]: j["state"] for j in slurm.jobs}
    for p in problems:
        if p.job_id and p.job_id in running:
            p.slurm_state = running[p.job_id]
            p.kind = "running"
    recorded = context["recorded"]
    return SuiteStatus(
        generated_at=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        results=results,
        runs=out_runs,
        problems=problems,
        slurm=slurm,
        plan_recorded=recorded["path"] if recorded else None,
        plan_recorded_at=recorded.get("recorded_at") if recorded else None,
        snakemake_running=snakemake_running(workdir),
    )
