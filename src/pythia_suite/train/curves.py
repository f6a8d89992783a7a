"""TensorBoard event files of a training segment, so that `tensorboard --logdir results/logs`
shows the suite's training curves as the field reads them.

Written through torch's `SummaryWriter` (the `tensorboard` package's event format, not a
hand-written one) into the run's log folder, `results/logs/train/<run>/`, one event file per
segment: TensorBoard shows each run as one run (`train/<run>`) across its segments.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from pathlib import Path

# History key -> TensorBoard tag. loss_scale exists only with fp16's dynamic loss scaler.
SCALARS = {
    "loss": "train/loss",
    "lr": "train/lr",
    "grad_norm": "train/grad_norm",
    "loss_scale": "train/loss_scale",
    "tokens_per_s": "train/tokens_per_s",
}


def run_log_dir(results: str, run: str) -> Path:
    """The run's log folder: the segments' logs and their event files."""
    return Path(results) / "logs" / "train" / run


def write_segment_events(
    log_dir: str | os.PathLike,
    history: Iterable[Mapping],
    start_step: int,
    end_step: int,
) -> Path | None:
    """Write the steps ``(start_step, end_step]`` of a trainer-state ``history`` as scalars
    (SCALARS) to a new event file in ``log_dir``; returns its path (None: no step to write).

    ``purge_step`` is the segment's first step, so a retrained segment hides the events an
    earlier attempt wrote for the same and later steps instead of drawing both.
    Raises ImportError naming the package when `tensorboard` is not installed.
    """
    steps = [h for h in history if start_step < h["step"] <= end_step]
    if not steps:
        return None
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError as err:
        raise ImportError(
            f"TensorBoard event files need the 'tensorboard' package ({err}); "
            "pip install tensorboard (pyproject.toml and envs/train.yaml pin it)"
        ) from None
    log_dir = Path(log_dir)
    log_dir.mkdir(parents=True, exist_ok=True)
    writer = SummaryWriter(
        str(log_dir), purge_step=start_step + 1, filename_suffix=f".step{end_step}"
    )
    try:
        for entry in steps:
            for key, tag in SCALARS.items():
                value = entry.get(key)
                if value is not None:
                    writer.add_scalar(tag, float(value), global_step=int(entry["step"]))
    finally:
        writer.close()
    written = log_dir.glob(f"events.out.tfevents.*.step{end_step}")
    return max(written, key=lambda p: p.stat().st_mtime_ns)
