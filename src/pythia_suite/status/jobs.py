"""What Snakemake and SLURM say about the suite's jobs, read without taking anything: the
incomplete markers, the lock, the newest log's failures, `squeue`, `sacct`, and a job log's
last error line."""

from __future__ import annotations

import base64
import os
import re
import sqlite3
import subprocess
from collections.abc import Callable, Iterable
from pathlib import Path

from pythia_suite.jsonfile import read_json
from pythia_suite.status.records import SlurmView

_LOG_TAIL_BYTES = 64 * 1024
# A log line that says what went wrong (the last such line is shown).
ERROR_LINE = re.compile(
    r"error|exception|traceback|killed|oom|out of memory|not finite|nan\b|cancelled|timeout",
    re.IGNORECASE,
)


def snakemake_incomplete(workdir: str | os.PathLike = ".") -> dict[str, str | None]:
    """Outputs Snakemake has marked incomplete, by normalised path -> external (SLURM) job id.

    Snakemake 9's default (file) persistence writes one marker per output of a started job at
    `.snakemake/incomplete/<urlsafe base64 of the output path>` (names longer than the file
    system allows are split into `@`-prefixed directories) holding `{"external_jobid": ...}`,
    and removes it when the job succeeds or its failure is cleaned up. A marker left behind
    means the job is running, or its Snakemake died mid-job. With `--persistence-backend db`
    the same flag is a column of `.snakemake/metadata.db`, read here read-only.
    """
    root = Path(workdir) / ".snakemake"
    marked: dict[str, str | None] = {}
    incomplete = root / "incomplete"
    for dirpath, _, files in os.walk(incomplete):
        rel = Path(dirpath).relative_to(incomplete).parts
        for name in files:
            if name == "migration_underway":
                continue
            encoded = "".join(part.lstrip("@") for part in rel) + name
            try:
                target = base64.urlsafe_b64decode(encoded.encode()).decode()
            except (ValueError, UnicodeDecodeError):
                continue
            try:
                job_id = read_json(Path(dirpath, name)).get("external_jobid")
            except (OSError, ValueError, AttributeError):
                job_id = None
            marked[os.path.normpath(target)] = job_id
    db = root / "metadata.db"
    if db.is_file():
        try:
            with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=1) as conn:
                rows = conn.execute(
                    "SELECT target, external_jobid FROM snakemake_metadata WHERE incomplete = 1"
                ).fetchall()
            for target, job_id in rows:
                marked[os.path.normpath(target)] = job_id
        except sqlite3.Error:
            pass
    return marked


def snakemake_running(workdir: str | os.PathLike = ".") -> bool:
    """Whether a Snakemake holds the working directory's lock (read, never taken)."""
    locks = Path(workdir) / ".snakemake" / "locks"
    try:
        return any(locks.iterdir())
    except OSError:
        return False


def snakemake_log_failures(workdir: str | os.PathLike = ".") -> list[dict]:
    """`Error in rule` blocks of the newest Snakemake log (`.snakemake/log/*.snakemake.log`):
    rule, outputs, logs and the SLURM job id, for failures of any rule (data preparation,
    report, model card... as well as a run's jobs). Older logs are not read: a later
    Snakemake run has retried, or will retry, what failed in them."""
    folder = Path(workdir) / ".snakemake" / "log"
    try:
        logs = sorted(folder.glob("*.snakemake.log"))
    except OSError:
        return []
    if not logs:
        return []
    with open(logs[-1], "rb") as fh:
        text = fh.read().decode("utf-8", "replace")
    failures = []
    for block in re.finditer(r"^Error in rule (\S+):\n((?:[ \t]+.*\n?)*)", text, re.M):
        fields = dict(re.findall(r"^ {4}(output|log|external_jobid): (.*)$", block[2], re.M))
        log = fields.get("log", "").replace(" (check log file(s) for error details)", "")
        failures.append(
            {
                "rule": block[1],
                "outputs": [o.strip() for o in fields.get("output", "").split(",") if o.strip()],
                "logs": [p.strip() for p in log.split(",") if p.strip()],
                "job_id": fields.get("external_jobid"),
                "snakemake_log": str(logs[-1]),
            }
        )
    return failures


# ----------------------------------------------------------------------------- SLURM


Runner = Callable[..., subprocess.CompletedProcess]


_SQUEUE_SEP = "\x1f"


def slurm_view(
    run_names: Iterable[str],
    workdir: str | os.PathLike = ".",
    run: Runner = subprocess.run,
    other_runs: Iterable[str] = (),
) -> SlurmView:
    """Running and pending jobs of this suite from `squeue`: submitted from `workdir` (the
    job's working directory, `%Z`: another checkout's or another user's suite on the same
    cluster is not this one) with the plugin's comment naming a run (`rule_<rule>_wildcards_
    <values>`, e.g. `rule_train_segment_wildcards_pythia-70m_2000`)."""
    argv = ["squeue", "-h", "-o", _SQUEUE_SEP.join(["%i", "%T", "%k", "%Z"])]
    try:
        result = run(argv, capture_output=True, text=True, timeout=60, check=False)
    except FileNotFoundError:
        return SlurmView(False, "SLURM cannot be asked: squeue not found (not a SLURM host)")
    except subprocess.TimeoutExpired:
        return SlurmView(False, "SLURM cannot be asked: squeue gave no answer in 60 s")
    if result.returncode != 0:
        return SlurmView(
            False,
            f"SLURM cannot be asked: squeue exit {result.returncode}: "
            f"{result.stderr.strip()[:200]}",
        )
    here = os.path.realpath(workdir)
    names = sorted(run_names, key=len, reverse=True)
    others = set(other_runs) - set(names)
    rows = []
    for line in result.stdout.splitlines():
        parts = [p.strip() for p in line.split(_SQUEUE_SEP)]
        if len(parts) != 4:
            continue
        job_id, state, comment, job_dir = parts
        if not comment.startswith("rule_") or os.path.realpath(job_dir) != here:
            continue
        which = next((n for n in names if f"_{n}_" in comment + "_"), None)
        if which is None and any(f"_{n}_" in comment + "_" for n in others):
            continue  # a job of a run not asked about
        rows.append({"job_id": job_id, "state": state, "run": which or "", "comment": comment})
    return SlurmView(True, "", rows)


def sacct_state(job_id: str, run: Runner) -> str | None:
    from pythia_suite.slurm import SlurmQueryError, job_state

    try:
        return job_state(job_id, run=run)
    except SlurmQueryError:
        return None


def last_error_line(log: str | os.PathLike) -> str | None:
    """The last line of a log's tail that names an error (else its last non-empty line)."""
    try:
        with open(log, "rb") as fh:
            fh.seek(0, os.SEEK_END)
            size = fh.tell()
            fh.seek(max(0, size - _LOG_TAIL_BYTES))
            lines = fh.read().decode("utf-8", "replace").splitlines()
    except OSError:
        return None
    lines = [line.strip() for line in lines if line.strip()]
    for line in reversed(lines):
        if ERROR_LINE.search(line):
            return line[:300]
    return lines[-1][:300] if lines else None
