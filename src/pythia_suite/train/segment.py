"""One segment of a run, from the config: what `pythia-suite train-segment` and `await-segment`
run (either backend), and the explanations of the failures a segment can meet."""

from __future__ import annotations

import errno
import os
import shutil
from collections.abc import Callable, Sequence
from pathlib import Path

from pythia_suite import config as cfg
from pythia_suite import paths
from pythia_suite.provenance import Recorder


def train_run_segment(
    config: dict,
    run: cfg.Run,
    step: int,
    output: str,
    resume_from: str | None,
    log: Callable[[str], None],
) -> None:
    """Train ``run`` up to checkpoint ``step`` into ``output`` (from the previous checkpoint, or
    ``resume_from``), with the checkpoint's provenance record and TensorBoard events.

    Nothing is trained when ``output`` is already a complete checkpoint of ``step`` (written by
    another job of this segment that `await-segment` waited for). A failure of a pruned start
    checkpoint or a full disk is raised as a RuntimeError that says so (``explain_*``).
    """
    from pythia_suite.data.source import training_data
    from pythia_suite.slurm import checkpoint_complete

    if checkpoint_complete(output, step):
        log(f"{output}: already a complete checkpoint of step {step}; not training")
        return
    results = config["paths"]["results"]
    start_step = 0 if step == 0 else cfg.previous_step(config, step)
    if step > 0 and not resume_from:
        resume_from = paths.checkpoint_dir(results, run.name, start_step)
    inputs = [Path(resume_from)] if resume_from else []
    inputs += training_data(config, run).recorded_inputs()
    train = backend_entry(config["training"]["backend"])
    state = train(
        config, run, start_checkpoint=resume_from, start_step=start_step, end_step=step,
        out_dir=output, state_dir=paths.state_dir(config["paths"]["state"], run.name),
        inputs=inputs,
    )  # fmt: skip
    # Only the PyTorch loop returns a trainer state (on rank 0) whose history becomes events.
    if train is train_segment_pytorch and state is not None:
        _write_events(results, run, state, start_step, step, log)


def backend_entry(backend: str) -> Callable[..., object]:
    """The segment entry of ``training.backend``: ``train_segment_pytorch`` or
    ``neox.segment.train_segment_neox``, which take the same arguments. Raises ConfigError for
    another name (the schema allows only these two)."""
    if backend == "pytorch":
        return train_segment_pytorch
    if backend == "neox":
        from pythia_suite.neox.segment import train_segment_neox

        return train_segment_neox
    raise cfg.ConfigError(f"training.backend: {backend!r} is neither 'pytorch' nor 'neox'")


def train_segment_pytorch(
    config: dict,
    run: cfg.Run,
    *,
    start_checkpoint: str | None,
    start_step: int,
    end_step: int,
    out_dir: str,
    state_dir: str,
    inputs: Sequence[Path] = (),
) -> dict | None:
    """The PyTorch loop's segment ``(start_step, end_step]`` and its provenance record (rank 0);
    the same entry signature as ``neox.segment.train_segment_neox``. Returns the trainer state
    on rank 0, None on the others."""
    from pythia_suite.data.source import training_data
    from pythia_suite.train.loop import RunInfo, train_segment
    from pythia_suite.train.settings import hf_config, settings_record, train_settings

    settings = train_settings(config, run)
    recorder = Recorder(
        Path(out_dir),
        "checkpoint",
        {"run": run.as_dict(), "settings": settings_record(settings)},
        list(inputs),
    )
    try:
        state = train_segment(
            hf_config(config, run),
            settings,
            training_data(config, run).samples(),
            start_checkpoint=start_checkpoint,
            start_step=start_step,
            end_step=end_step,
            out_dir=out_dir,
            state_dir=state_dir,
            run_info=RunInfo(run.name, run.size, cfg.gpu_record(config, run.size)["peak_tflops"]),
        )
    except (RuntimeError, OSError) as err:
        explain_pruned_start(err, start_checkpoint)
        explain_full_disk(err, Path(out_dir))
        raise
    if int(os.environ.get("RANK", os.environ.get("SLURM_PROCID", "0"))) != 0:
        return None
    recorder.extra = {
        "data_fingerprint": state.get("data_fingerprint", {}).get("segment"),
        "world_size": state.get("world_size"),
    }
    recorder.write()
    return state


def _write_events(results: str, run: cfg.Run, state: dict, start_step: int, step: int, log) -> None:
    """The segment's TensorBoard events beside the run's earlier ones (train.curves)."""
    from pythia_suite.train import curves

    events = curves.write_segment_events(
        curves.run_log_dir(results, run.name),
        state.get("history", []),
        start_step,
        step,
    )
    if events:
        log(f"TensorBoard events: {events}")


def explain_full_disk(err: Exception, output: Path) -> None:
    """A save that failed because the file system filled up (torch's own message does not say
    so: "[enforce fail at inline_container.cc] unexpected pos"): say so, and what to do."""
    from pythia_suite.train.checkpoint import InsufficientDiskSpaceError

    if isinstance(err, InsufficientDiskSpaceError):
        return  # the check before training: its message already says it all
    free = shutil.disk_usage(output.parent).free if output.parent.is_dir() else None
    enospc = isinstance(err, OSError) and err.errno == errno.ENOSPC
    if enospc or (free is not None and free < 1 << 20):
        raise RuntimeError(
            f"no space left on the file system of {output.parent} ({free} bytes free) while "
            f"writing {output} ({err}). {output} was not written; free space and rerun the same "
            f"command: it resumes from the newest snapshot in paths.state"
        ) from None


def explain_pruned_start(err: Exception, resume_from: str | None) -> None:
    """A start checkpoint without its optimizer because retention pruned it: say so."""
    from pythia_suite import retention

    if resume_from and retention.is_pruned(resume_from):
        raise RuntimeError(
            f"{err}; {resume_from} has no resume state: retention pruned it once its weights "
            f"were exported and published (pruned.json, training.keep_resume_states), so no "
            f"segment can start from it. Retrain from the newest earlier checkpoint that kept "
            f"its state (`pythia-suite prune RUN --dry-run` lists them)"
        ) from None


def await_segment(config: dict, run: cfg.Run, step: int, timeout_s, log) -> None:
    """Wait for another live writer of the segment (a SLURM job still running after its
    Snakemake died, or a local process holding the state dir lock); see pythia_suite.slurm."""
    from pythia_suite import slurm

    comments = [slurm.plugin_comment(slurm.SEGMENT_RULE, [run.name, str(step)])]
    group = cfg.segment_group(config, run.name, step)
    if group:  # the early segments share a group job (the rule's `group:`)
        comments.append(slurm.group_comment(group, [slurm.SEGMENT_RULE]))
    slurm.await_segment(
        paths.state_dir(config["paths"]["state"], run.name),
        comments,
        timeout_s=timeout_s,
        log=log,
    )
