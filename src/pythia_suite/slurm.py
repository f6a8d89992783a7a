"""Re-attach to training segments still running in SLURM (issue 7).

Snakemake forgets its SLURM jobs when it dies: a restarted ``snakemake`` submits a segment again
while the first job may still be training it. Two writers must never share one resume state
(``paths.state/<run>/``), and the first job's work should not be thrown away. So before a
segment trains, :func:`await_segment` looks for another live writer of the same segment and
waits for it to end:

- the state dir's lock holder: ``state/<run>/lock`` records the SLURM job id of the process
  that holds (or last held) it (``train.checkpoint.state_dir_lock``); if that job is still
  pending or running in ``squeue`` it is a writer, even on another node where ``fcntl`` locks
  may not reach (some shared filesystems do not propagate them);
- a job of the same segment that has not taken the lock yet (pending, starting up): the
  Snakemake SLURM plugin (2.8.0) submits every job with ``--comment
  rule_<rule>_wildcards_<values joined by _>`` (a group job: ``rule_<group>_<rules>``), so
  ``squeue``'s comment names the segment (or the group of early segments holding it);
- a process on this host holding the ``fcntl`` lock (no SLURM, e.g. ``profiles/local``).

Our own job (``SLURM_JOB_ID``) is never a writer to wait for: the early segments of a run share
one allocation. After the wait the caller checks whether the other job left a complete
checkpoint (:func:`checkpoint_complete`) and, if so, exits without training; if it failed, the
caller trains and resumes from that job's newest snapshot under the state dir lock.
"""

from __future__ import annotations

import dataclasses
import fcntl
import json
import os
import re
import subprocess
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from pythia_suite.jsonfile import JSONFileError, read_json

__all__ = [
    "ACTIVE_STATES",
    "SEGMENT_RULE",
    "SegmentWaitTimeout",
    "SlurmJob",
    "SlurmQueryError",
    "Writer",
    "await_segment",
    "checkpoint_complete",
    "find_other_writers",
    "job_state",
    "list_jobs",
    "lock_holder",
    "lock_is_held",
    "group_comment",
    "plugin_comment",
]

SEGMENT_RULE = "train_segment"

# squeue/sacct states of a job that may still write (everything before a final state).
ACTIVE_STATES = frozenset(
    {
        "PENDING",
        "CONFIGURING",
        "RUNNING",
        "COMPLETING",
        "SUSPENDED",
        "STOPPED",
        "REQUEUED",
        "REQUEUE_HOLD",
        "REQUEUE_FED",
        "RESIZING",
        "SIGNALING",
        "STAGE_OUT",
        "RESV_DEL_HOLD",
    }
)
_FIELD_SEP = "\x1f"  # squeue -o separator that no job name or comment contains
_QUERY_TIMEOUT_S = 60


class SlurmQueryError(RuntimeError):
    """``squeue``/``sacct`` could not be run or gave output we cannot read."""


class SegmentWaitTimeout(RuntimeError):
    """Another writer of the segment was still live when the wait's timeout ran out."""


@dataclasses.dataclass(frozen=True)
class SlurmJob:
    """One row of ``squeue``: job id, state (``RUNNING``...), job name and comment."""

    job_id: str
    state: str
    name: str
    comment: str


@dataclasses.dataclass(frozen=True)
class Writer:
    """Another live writer of a segment: a SLURM job (``job_id``) or a local process."""

    job_id: str | None
    why: str

    def __str__(self) -> str:
        return f"SLURM job {self.job_id} ({self.why})" if self.job_id else self.why


Runner = Callable[..., subprocess.CompletedProcess]


def plugin_comment(rule: str, wildcard_values: Sequence[str]) -> str:
    """The ``--comment`` the Snakemake SLURM plugin gives a job of ``rule``.

    ``rule_<rule>_wildcards_<values joined by "_">``, values in the order of the rule's
    output pattern; ``rule_<rule>`` without wildcards (plugin 2.8.0, ``run_job``).
    """
    values = [str(v).replace("/", "_") for v in wildcard_values]
    return f"rule_{rule}_wildcards_{'_'.join(values)}" if values else f"rule_{rule}"


def group_comment(group: str, rules: Sequence[str]) -> str:
    """The ``--comment`` of a Snakemake group job: ``rule_<group>_<sorted rule names>``
    (the group job's name; it has no wildcards of its own)."""
    return f"rule_{group}_{'_'.join(sorted(set(rules)))}"


def _query(argv: list[str], run: Runner) -> subprocess.CompletedProcess:
    try:
        return run(argv, capture_output=True, text=True, timeout=_QUERY_TIMEOUT_S, check=False)
    except FileNotFoundError as err:
        raise SlurmQueryError(f"{argv[0]}: not found (is this a SLURM client host?)") from err
    except subprocess.TimeoutExpired as err:
        raise SlurmQueryError(f"{' '.join(argv)}: no answer in {_QUERY_TIMEOUT_S} s") from err


def list_jobs(
    *, user: str | None = None, squeue: str = "squeue", run: Runner = subprocess.run
) -> list[SlurmJob]:
    """The jobs ``squeue`` knows (of ``user``, default all visible): id, state, name, comment.

    Raises ``SlurmQueryError`` when ``squeue`` fails or prints a line we cannot split.
    """
    fields = _FIELD_SEP.join(["%i", "%T", "%j", "%k"])
    argv = [squeue, "-h", "-o", fields] + (["-u", user] if user else [])
    result = _query(argv, run)
    if result.returncode != 0:
        raise SlurmQueryError(f"{' '.join(argv)}: exit {result.returncode}: {result.stderr}")
    jobs = []
    for line_no, line in enumerate(result.stdout.splitlines(), 1):
        if not line.strip():
            continue
        parts = line.split(_FIELD_SEP, 3)
        if len(parts) != 4:
            raise SlurmQueryError(f"{squeue}: line {line_no} has not 4 fields: {line!r}")
        job_id, state, name, comment = (p.strip() for p in parts)
        # "(null)" is squeue's spelling of "no comment".
        jobs.append(SlurmJob(job_id, state, name, "" if comment == "(null)" else comment))
    return jobs


def job_state(
    job_id: str, *, squeue: str = "squeue", sacct: str = "sacct", run: Runner = subprocess.run
) -> str | None:
    """The state of one job: from ``squeue`` while slurmctld has it, else from ``sacct``.

    Returns e.g. ``"RUNNING"``, ``"COMPLETED"``, ``"FAILED"``, ``"CANCELLED"`` (sacct's
    ``"CANCELLED by 0"`` is cut to its first word), or ``None`` when neither knows the job
    (accounting lags a finished job by a second or two; purged jobs are unknown).
    """
    result = _query([squeue, "-h", "-j", str(job_id), "-o", "%T"], run)
    if result.returncode == 0 and result.stdout.strip():
        return result.stdout.split()[0]
    # squeue exits non-zero ("Invalid job id specified") for jobs slurmctld has purged.
    result = _query([sacct, "-n", "-X", "-P", "-j", str(job_id), "-o", "State"], run)
    if result.returncode != 0:
        raise SlurmQueryError(
            f"{sacct} -j {job_id}: exit {result.returncode}: {result.stderr.strip()}"
        )
    states = [line.split()[0] for line in result.stdout.splitlines() if line.strip()]
    return states[0] if states else None


def lock_holder(state_dir: Path | str) -> dict | None:
    """What ``state_dir/lock`` says about its holder, or ``None`` (no lock file, empty, or
    not JSON: a holder is written only once the lock is taken)."""
    path = Path(state_dir) / "lock"
    try:
        text = path.read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        return None
    try:
        holder = json.loads(text) if text else None
    except json.JSONDecodeError:
        return None
    return holder if isinstance(holder, dict) else None


def lock_is_held(state_dir: Path | str) -> bool:
    """Whether some process holds the ``fcntl`` lock on ``state_dir/lock`` right now.

    Tries the lock without blocking and lets go at once. Sees holders on this host, and on
    other hosts only where the filesystem propagates ``flock`` (hence the SLURM checks).
    """
    path = Path(state_dir) / "lock"
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)  # also releases the lock if we got it
    return False


def find_other_writers(
    state_dir: Path | str,
    comments: Sequence[str],
    *,
    own_job_id: str | None,
    squeue: str = "squeue",
    sacct: str = "sacct",
    run: Runner = subprocess.run,
) -> list[Writer]:
    """Live writers of the segment other than ourselves (see the module docstring).

    ``comments`` are the plugin's comments a job of the segment may carry
    (:func:`plugin_comment`, :func:`group_comment`); empty skips that check. SLURM is asked
    only when we run in a SLURM job ourselves (``own_job_id`` set): outside SLURM (a local
    Snakemake) only the ``fcntl`` lock counts, and a machine with SLURM's clients but no
    controller up must not fail local runs.
    Raises ``SlurmQueryError`` when ``squeue``/``sacct`` fail inside a job.
    """
    writers: list[Writer] = []
    holder = lock_holder(state_dir) or {}
    holder_job = holder.get("slurm_job_id")
    slurm_here = own_job_id is not None
    if slurm_here and holder_job and str(holder_job) != str(own_job_id):
        state = job_state(str(holder_job), squeue=squeue, sacct=sacct, run=run)
        if state in ACTIVE_STATES:
            where = f"host {holder.get('host')}, pid {holder.get('pid')}"
            writers.append(Writer(str(holder_job), f"{state}, holds {state_dir}/lock: {where}"))
    if comments and slurm_here:
        for job in list_jobs(user=_user(), squeue=squeue, run=run):
            if job.comment not in comments or job.job_id == str(own_job_id):
                continue
            if job.state in ACTIVE_STATES and all(w.job_id != job.job_id for w in writers):
                writers.append(Writer(job.job_id, f"{job.state}, comment {job.comment}"))
    if not writers and lock_is_held(state_dir):
        who = f"host {holder.get('host')}, pid {holder.get('pid')}" if holder else "unknown"
        writers.append(Writer(None, f"a process holds {state_dir}/lock ({who})"))
    return writers


def await_segment(
    state_dir: Path | str,
    comments: Sequence[str],
    *,
    own_job_id: str | None = None,
    timeout_s: float | None = None,
    poll_s: float = 2.0,
    max_poll_s: float = 60.0,
    log: Callable[[str], None] = print,
    squeue: str = "squeue",
    sacct: str = "sacct",
    run: Runner = subprocess.run,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
) -> list[Writer]:
    """Wait until no other writer of the segment is live; return those waited for.

    Polls :func:`find_other_writers` every ``poll_s`` seconds, growing by half each time up to
    ``max_poll_s`` (a long segment must not flood slurmctld). ``own_job_id`` defaults to
    ``SLURM_JOB_ID``. ``timeout_s=None`` waits as long as it takes (the waiting job's own time
    limit bounds it). Raises ``SegmentWaitTimeout`` naming the writers still live after
    ``timeout_s``, ``SlurmQueryError`` when SLURM cannot be asked.
    """
    if own_job_id is None:
        own_job_id = os.environ.get("SLURM_JOB_ID")
    started = clock()
    waited: dict[str, Writer] = {}
    while True:
        writers = find_other_writers(
            state_dir, comments, own_job_id=own_job_id, squeue=squeue, sacct=sacct, run=run
        )
        if not writers:
            if waited:
                log(f"{state_dir}: the other writer(s) ended after {clock() - started:.0f} s")
            return list(waited.values())
        for writer in writers:
            if str(writer) not in waited:
                waited[str(writer)] = writer
                log(f"{state_dir}: waiting for {writer} before touching the segment")
        if timeout_s is not None and clock() - started >= timeout_s:
            names = ", ".join(str(w) for w in writers)
            raise SegmentWaitTimeout(
                f"{state_dir}: still written by {names} after {timeout_s:g} s; not starting a "
                "second writer (cancel that job, or wait longer with --timeout)"
            )
        sleep(poll_s)
        poll_s = min(poll_s * 1.5, max_poll_s)


def checkpoint_complete(out_dir: Path | str, step: int) -> bool:
    """Whether ``out_dir`` is a finished checkpoint of ``step``.

    A checkpoint directory appears only when complete (written as ``.stepN.partial`` and
    renamed); its ``trainer_state.json`` must name ``step`` and the provenance record, written
    right after, must be there too. Anything else (missing, unreadable, another step) is not.
    """
    out_dir = Path(out_dir)
    try:
        state = read_json(out_dir / "trainer_state.json")
    except (FileNotFoundError, JSONFileError):
        return False
    return state.get("step") == step and (out_dir / "provenance.json").is_file()


def _user() -> str | None:
    import getpass

    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return None


# ----------------------------------------------------------------------------- node lists


def _split_outside_brackets(text: str, nodelist: str) -> list[str]:
    """Split ``text`` on commas that are not inside ``[...]``; unbalanced brackets raise."""
    items, depth, start = [], 0, 0
    for i, char in enumerate(text):
        if char == "[":
            depth += 1
        elif char == "]":
            depth -= 1
        elif char == "," and depth == 0:
            items.append(text[start:i])
            start = i + 1
        if depth not in (0, 1):
            raise ValueError(f"cannot parse SLURM node list {nodelist!r}: unbalanced brackets")
    if depth != 0:
        raise ValueError(f"cannot parse SLURM node list {nodelist!r}: unbalanced brackets")
    items.append(text[start:])
    return items


def expand_nodelist(nodelist: str) -> list[str]:
    """Expand a SLURM node list such as ``"n[1-2]"`` or ``"gpu[01-03,07],login1"`` in Python.

    One bracket group per host name (what SLURM writes in ``SLURM_JOB_NODELIST``); zero padding
    is kept. Raises ``ValueError`` naming the list when it cannot be parsed or is empty.
    """
    hosts: list[str] = []
    for item in _split_outside_brackets(nodelist.strip(), nodelist):
        match = re.fullmatch(r"([^\[\],]+)\[([^\]]+)\]([^\[\],]*)", item)
        if match is None:
            if "[" in item or "]" in item or not item.strip():
                raise ValueError(f"cannot parse SLURM node list {nodelist!r} at {item!r}")
            hosts.append(item.strip())
            continue
        prefix, ranges, suffix = match.groups()
        for part in ranges.split(","):
            lo, _, hi = part.partition("-")
            hi = hi or lo
            if not (lo.isdigit() and hi.isdigit()) or int(lo) > int(hi):
                raise ValueError(f"cannot parse SLURM node list {nodelist!r} at range {part!r}")
            hosts.extend(f"{prefix}{i:0{len(lo)}d}{suffix}" for i in range(int(lo), int(hi) + 1))
    if not hosts:
        raise ValueError(f"SLURM node list {nodelist!r} names no host")
    return hosts


def hostnames_from_nodelist(nodelist: str, *, scontrol: str = "scontrol") -> list[str]:
    """Host names of a SLURM node list, in SLURM's order.

    Uses ``scontrol show hostnames`` (SLURM's own parser, any syntax) when it is installed and
    answers within 30 s; otherwise expands simple lists (``n[1-2]``, ``a[01-03,07],b``) in Python.
    Raises ``ValueError`` naming the list when neither can read it.
    """
    try:
        out = subprocess.run(
            [scontrol, "show", "hostnames", nodelist],
            capture_output=True,
            text=True,
            check=True,
            timeout=30,
        ).stdout.split()
        if out:
            return out
    except (OSError, subprocess.SubprocessError):
        pass  # No SLURM client (tests, login containers): parse it ourselves.
    return expand_nodelist(nodelist)
