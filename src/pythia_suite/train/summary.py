"""The segment summary record: its format, its one writer (both training backends) and its
reader (`status`, `costs`).

Written by the training backend into each checkpoint directory it produces: the segment's
compact record (steps, tokens/s, MFU, wall and device hours, losses, spikes). Status tooling
reads this, never the full training history in trainer_state.json. No imports beyond the
standard library: the status tools read it without torch.
"""

from __future__ import annotations

import datetime
import os

from pythia_suite.jsonfile import JSONFileError, read_json

SEGMENT_SUMMARY_NAME = "segment_summary.json"
SEGMENT_SUMMARY_FORMAT = "pythia-suite/segment-summary/1"


def segment_summary_record(
    *,
    run: str,
    size: str,
    start_step: int,
    end_step: int,
    steps: int,
    skipped_steps: int | None,
    tokens_per_step: int,
    train_time_s: float,
    wall_s: float,
    flops_per_token: float,
    peak_tflops: float | None,
    device_kind: str,
    device_name: str,
    devices: int,
    nodes: int,
    data_parallel: int,
    tensor_parallel: int,
    micro_batch: int,
    gas: int,
    precision: str,
    losses: list[float],
    spikes: list,
    started_at: str,
    hosts: list[str],
) -> dict:
    """The segment summary record, exactly its keys: one builder for both training backends.

    Derives ``tokens`` (steps x tokens per step), ``tokens_per_s`` (over ``train_time_s``;
    None without training time), ``mfu`` (flops_per_token x tokens_per_s / (devices x peak);
    None without a peak), ``device_hours`` (devices x wall), the loss statistics (None where
    ``losses`` is empty) and ``finished_at`` (now, UTC). A NaN abort writes no checkpoint,
    hence no summary: ``nan_abort`` is always false here.
    """
    tokens = steps * tokens_per_step
    tokens_per_s = tokens / train_time_s if train_time_s > 0 else None
    return {
        "format": SEGMENT_SUMMARY_FORMAT,
        "run": run,
        "size": size,
        "start_step": start_step,
        "end_step": end_step,
        "steps": steps,
        "skipped_steps": skipped_steps,
        "tokens": tokens,
        "tokens_per_s": tokens_per_s,
        "flops_per_token": float(flops_per_token),
        "mfu": _mfu(flops_per_token, tokens_per_s, devices, peak_tflops),
        "peak_tflops": peak_tflops,
        "device_kind": device_kind,
        "device_name": device_name,
        "devices": devices,
        "nodes": nodes,
        "data_parallel": data_parallel,
        "tensor_parallel": tensor_parallel,
        "micro_batch": micro_batch,
        "gas": gas,
        "precision": precision,
        "wall_s": wall_s,
        "train_time_s": train_time_s,
        "device_hours": devices * wall_s / 3600,
        "losses": _loss_statistics(losses),
        "spikes": spikes,
        "nan_abort": False,
        "started_at": started_at,
        "finished_at": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "slurm_job_id": os.environ.get("SLURM_JOB_ID"),
        "hosts": hosts,
    }


def _mfu(
    flops_per_token: float, tokens_per_s: float | None, devices: int, peak_tflops: float | None
) -> float | None:
    """Model FLOPs utilisation: achieved over peak FLOP/s of all devices; None without a peak
    or a rate."""
    if peak_tflops and tokens_per_s:
        return flops_per_token * tokens_per_s / (devices * peak_tflops * 1e12)
    return None


def _loss_statistics(losses: list[float]) -> dict:
    """First, last, min, max and mean of the segment's losses (None each when there are none)."""
    return {
        "first": losses[0] if losses else None,
        "last": losses[-1] if losses else None,
        "min": min(losses) if losses else None,
        "max": max(losses) if losses else None,
        "mean": sum(losses) / len(losses) if losses else None,
    }


def read_summary(path: str) -> dict | None:
    """A segment summary, or None when the checkpoint has none (step0, or written before
    summaries existed). Raises ValueError naming the file when it is not a summary."""
    try:
        data = read_json(path, missing=None)
    except JSONFileError as err:
        raise ValueError(f"{err.path}: unreadable segment summary: {err.reason}") from None
    if data is None:
        return None
    if not isinstance(data, dict) or data.get("format") != SEGMENT_SUMMARY_FORMAT:
        raise ValueError(f"{path}: format is not {SEGMENT_SUMMARY_FORMAT!r}")
    for key in ("end_step", "tokens", "wall_s", "device_hours", "devices"):
        if not isinstance(data.get(key), int | float):
            raise ValueError(f"{path}: key {key!r} is missing or not a number")
    # A segment without training steps (step0's, which only initialises) has no rate.
    if not isinstance(data.get("tokens_per_s"), int | float | None):
        raise ValueError(f"{path}: key 'tokens_per_s' is not a number or null")
    return data
