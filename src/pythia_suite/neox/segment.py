"""A GPT-NeoX segment job, start to finish: ``train_segment_neox``, the neox backend's entry, which
takes the arguments the PyTorch backend's ``train.loop.train_segment`` is given by
``pythia-suite train-segment``, and the segment summary record it leaves.

GPT-NeoX keeps its own checkpoints (``global_stepN``, ZeRO shards included) under
``paths.state/<run>/neox/checkpoints``, outside the declared outputs; a segment's config, hostfile
and logs lie beside them in ``stepN/`` (``neox_work_dir``).
"""

from __future__ import annotations

import datetime
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from pythia_suite.atomic import write_json_atomic
from pythia_suite.neox import NeoXError
from pythia_suite.neox.config import (
    NeoXSegment,
    neox_settings,
    run_deviations,
    run_segment,
    segment_summary_facts,
    slots_per_node,
    write_run_segment_config,
)
from pythia_suite.neox.convert import (
    checkpoint_from_hf_dir,
    convert_neox_checkpoint,
    neox_step_missing,
)
from pythia_suite.neox.index_maps import neox_data_prefix
from pythia_suite.neox.launch import run_neox_segment, segment_hosts
from pythia_suite.train.settings import hf_config
from pythia_suite.train.summary import SEGMENT_SUMMARY_NAME, segment_summary_record


def neox_work_dir(state_dir: str | os.PathLike) -> Path:
    """Where GPT-NeoX's side of a run lives in the run's state directory (``paths.state/<run>``):
    ``neox/`` (``checkpoints/`` = its ``save``/``load``, ``stepN/`` = a segment's config,
    hostfile and logs)."""
    return Path(state_dir) / "neox"


@dataclass(frozen=True)
class _SegmentJob:
    """One segment job's segment, the directory of its config and logs, and its config."""

    segment: NeoXSegment
    work: Path
    config_path: Path
    neox_config: dict


def train_segment_neox(
    config: Mapping,
    run,
    *,
    start_checkpoint: str | os.PathLike | None,
    start_step: int,
    end_step: int,
    out_dir: str | os.PathLike,
    state_dir: str | os.PathLike,
    inputs: Sequence[Path] = (),
) -> Path:
    """Train the segment ``(start_step, end_step]`` with GPT-NeoX v1.0, convert its checkpoint
    with GPT-NeoX's converter, and write the workflow's checkpoint ``out_dir`` (weights, trainer
    state, provenance record naming ``inputs``) as the PyTorch backend does.

    The arguments are ``train.loop.train_segment``'s as ``pythia-suite train-segment`` passes
    them, with the suite's ``config`` and ``run`` in place of the settings it derives from them.
    ``start_checkpoint``, the workflow's checkpoint of ``start_step``, is not read: GPT-NeoX
    resumes from its own ``global_step{start_step}`` (the caller records it among ``inputs``).
    Step 0 is saved by the first segment (0 is in ``extra-save-iters``), so the step0 job
    (``end_step=0``) runs that segment and the next job reuses what exists. The state dir lock
    is held throughout, so a restarted Snakemake waits for this job (``await-segment``). Raises
    ``ConfigError`` for a missing checkout or differing seeds, ``NeoXError`` when GPT-NeoX or
    its converter fail.
    """
    from pythia_suite import config as cfg
    from pythia_suite.data.source import check_data_seed
    from pythia_suite.train.checkpoint import state_dir_lock

    if not neox_settings(config)["dir"]:
        raise cfg.ConfigError("training.neox.dir: the neox backend needs a GPT-NeoX v1.0 checkout")
    check_data_seed(config, run, backend="neox")
    end = end_step if end_step > 0 else cfg.checkpoint_steps(dict(config))[1]
    started = time.time()
    with state_dir_lock(Path(state_dir)):
        job = _write_segment_config(config, run, state_dir, start_step, end)
        summary = _train_unless_saved(config, run, job, end_step, started)
        return _workflow_checkpoint(
            config, run, job, end_step, out_dir, inputs=inputs, started=started, summary=summary
        )


def _write_segment_config(config: Mapping, run, state_dir: str | os.PathLike, start: int,
                          end: int) -> _SegmentJob:  # fmt: skip
    """The segment ``(start, end]`` and its config ``stepN/segment.json``, written: plain JSON,
    which DeeperSpeed's SLURM runner parses. Raises ``FileNotFoundError`` when rule
    ``neox_index_maps`` has not left the run's data prefix and maps."""
    base = neox_work_dir(state_dir)
    segment = run_segment(config, run, save_dir=base / "checkpoints", start_step=start,
                          end_step=end, data_prefix=neox_data_prefix(config, run))  # fmt: skip
    work = base / f"step{end}"
    config_path = work / "segment.json"
    work.mkdir(parents=True, exist_ok=True)
    neox_config = write_run_segment_config(config, run, segment, config_path)
    return _SegmentJob(segment, work, config_path, neox_config)


def _train_unless_saved(config: Mapping, run, job: _SegmentJob, step: int,
                        started: float) -> Path:  # fmt: skip
    """Run GPT-NeoX for the segment unless ``global_step{step}`` is a finished save already
    (the step0 job trained it), then write the segment summary; returns the summary's path
    (absent when this job trained nothing). Raises ``NeoXError`` when GPT-NeoX exits 0 but
    leaves the save incomplete."""
    from pythia_suite import config as cfg

    segment, settings = job.segment, neox_settings(config)
    save_dir, global_dir = segment.save_dir, segment.save_dir / f"global_step{step}"
    summary_path = job.work / SEGMENT_SUMMARY_NAME
    data_parallel = cfg.data_parallel_size(dict(config), run.size)
    if not neox_step_missing(save_dir, step, job.neox_config, data_parallel):
        return summary_path
    launched = time.time()
    run_neox_segment(
        settings["dir"],
        job.config_path,
        save_dir=save_dir,
        start_step=segment.start_step,
        end_step=segment.end_step,
        slots_per_node=slots_per_node(config, run.size),
        work_dir=job.work,
        master_port=settings["master_port"],
        python=settings["python"],
    )
    write_json_atomic(summary_path, neox_segment_summary(
        config, run, segment.start_step, segment.end_step, launch_s=time.time() - launched,
        wall_s=time.time() - started, started=started,
    ))  # fmt: skip
    missing = neox_step_missing(save_dir, step, job.neox_config, data_parallel)
    if missing:
        raise NeoXError(
            f"GPT-NeoX exited 0 but {global_dir} is incomplete: missing "
            f"{', '.join(missing[:5])}{' ...' if len(missing) > 5 else ''}"
        )
    return summary_path


def _workflow_checkpoint(config: Mapping, run, job: _SegmentJob, step: int,
                         out_dir: str | os.PathLike, *, inputs: Sequence[Path], started: float,
                         summary: Path) -> Path:  # fmt: skip
    """Convert ``global_step{step}`` with GPT-NeoX's converter and write the workflow's
    checkpoint ``out_dir`` from it, with the segment summary when this step ends the segment."""

    segment, settings = job.segment, neox_settings(config)
    global_dir = segment.save_dir / f"global_step{step}"
    hf_dir = convert_neox_checkpoint(
        settings["dir"], global_dir, job.config_path, job.work / f"hf-step{step}",
        python=settings["python"], log_path=job.work / f"convert-step{step}.log",
    )  # fmt: skip
    return checkpoint_from_hf_dir(
        hf_dir, out_dir, hf_config(dict(config), run), step=step,
        start_step=segment.start_step, neox_checkpoint=global_dir,
        record_config={"run": run.as_dict(), "backend": "neox", "neox": dict(settings),
                       "deviations": run_deviations(config, run)},
        inputs=inputs, started=started,
        world_size=segment.nodes * slots_per_node(config, run.size),
        segment_summary=summary if step == segment.end_step and summary.is_file() else None,
    )  # fmt: skip


def neox_segment_summary(config: Mapping, run, start: int, end: int, *, launch_s: float,
                         wall_s: float, started: float) -> dict:  # fmt: skip
    """The segment summary record (``train.summary.SEGMENT_SUMMARY_NAME``) of a GPT-NeoX segment.

    What GPT-NeoX does not report back is left null rather than guessed: its losses and fp16
    skips stay in its own log (``neox.log`` in the work directory), so ``losses`` are null,
    ``skipped_steps`` is null and ``spikes`` empty. ``train_time_s`` is the wall time of the one
    ``deepy.py`` launch (its start-up included), so ``tokens_per_s`` and ``mfu`` are lower
    bounds; ``wall_s`` runs from the job's start to the launch's end.
    """
    return segment_summary_record(
        run=run.name,
        start_step=start,
        end_step=end,
        steps=end - start,
        skipped_steps=None,
        train_time_s=launch_s,
        wall_s=wall_s,
        losses=[],
        spikes=[],
        started_at=datetime.datetime.fromtimestamp(started, datetime.UTC).isoformat(
            timespec="seconds"
        ),
        hosts=segment_hosts(None),
        **segment_summary_facts(config, run),
    )
