"""What the status is made of: runs, problems, the SLURM view, the whole suite."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass
class Problem:
    """A failed, interrupted or still-running job found without a finished output."""

    kind: str  # "failed" | "incomplete" | "running" | "bad-record"
    rule: str
    run: str
    target: str
    log: str | None = None
    error: str | None = None
    job_id: str | None = None
    slurm_state: str | None = None
    slurm_log: str | None = None  # the SLURM plugin's log of the job, when one is kept


@dataclass
class RunStatus:
    run: str
    size: str
    variant: str
    planned: int  # checkpoints in the plan
    trained: int = 0
    exported: int = 0
    published: int = 0
    verified: int = 0
    evaluated: int = 0  # checkpoints with every planned evaluation (zero- and five-shot) done
    eval_planned: int = 0
    last_step: int | None = None
    final_step: int = 0
    tokens_per_s: float | None = None  # segments' tokens / train time
    mfu: float | None = None  # device-hour weighted mean of the segments' MFU
    device_kind: str | None = None
    device_hours: float = 0.0  # allocated devices x segment wall time, summed over summaries
    segments_measured: int = 0
    predicted_device_hours: float | None = None  # whole run, recorded at suite start
    predicted_to_here: float | None = None  # the prediction pro rata for the steps trained
    eta_s: float | None = None  # training left at the measured wall-clock rate
    spikes: list[dict] = field(default_factory=list)
    nan_aborts: list[str] = field(default_factory=list)
    segments: list[dict] = field(default_factory=list)  # per segment: for the page's plots
    eval_steps: dict[str, list[int]] = field(default_factory=dict)

    @property
    def over_prediction(self) -> float | None:
        """Spent / predicted-to-here (1.0 = on plan); None without both figures."""
        if not self.predicted_to_here or not self.segments_measured:
            return None
        return self.device_hours / self.predicted_to_here


@dataclass
class SlurmView:
    reachable: bool
    reason: str = ""
    jobs: list[dict] = field(default_factory=list)  # running and pending jobs of the suite


@dataclass
class SuiteStatus:
    generated_at: str
    results: str
    runs: list[RunStatus]
    problems: list[Problem]
    slurm: SlurmView
    plan_recorded: str | None  # the plan.json path, or None when none was recorded
    plan_recorded_at: str | None = None
    snakemake_running: bool = False

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        for run, rec in zip(self.runs, out["runs"], strict=True):
            rec["over_prediction"] = run.over_prediction
        return out
