"""The evaluation stage as the workflow runs it: config.evaluation's choices turned into calls.

``pythia-suite build-eval-tasks``, ``evaluate``, ``prefetch-eval-datasets`` and
``evaluate-reference`` call these; each records its output's provenance where the workflow
expects one.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from pythia_suite import config as cfg
from pythia_suite import paths
from pythia_suite.atomic import atomic_directory, write_json_atomic
from pythia_suite.evaluate.compare import Comparison, compare_with_reference
from pythia_suite.evaluate.run import evaluate_checkpoints, prefetch_datasets
from pythia_suite.evaluate.tasks import build_local_tasks
from pythia_suite.hashing import artifact_files, sha256_file
from pythia_suite.provenance import Recorder


def eval_tasks(config: dict, shots: int) -> list[str]:
    """The tasks at `shots`: evaluation.tasks, or evaluation.five_shot_tasks for 5-shot."""
    evaluation = config["evaluation"]
    if shots and evaluation["five_shot_tasks"] is not None:
        return list(evaluation["five_shot_tasks"])
    return list(evaluation["tasks"])


def eval_task_source(config: dict) -> Path:
    """What an evaluation's task data comes from: the local tasks built from the held-out shard
    (their record leads to it), or the marker of lm-eval's prefetched datasets."""
    results = config["paths"]["results"]
    if config["evaluation"]["local_tasks"]:
        return Path(paths.eval_tasks_dir(results))
    return Path(paths.eval_datasets_marker(results))


def task_file_hashes(source: Path) -> dict[str, str]:
    """Each task file an evaluation read, by path, with its sha256 (none: {})."""
    if source.is_file():
        return {str(source): sha256_file(source)}
    if not source.is_dir():
        return {}
    files = artifact_files(source)
    files.pop("provenance.json", None)
    return {str(source / rel): sha256_file(path) for rel, path in sorted(files.items())}


def build_suite_tasks(
    config: dict, heldout: str | Path, tokenizer: str | Path | None, output: str | Path
) -> None:
    """The local tasks (config.evaluation's counts) from the held-out shard, recorded."""
    out = Path(output)
    evaluation = config["evaluation"]
    counts = {
        "n_docs": evaluation["local_task_docs"],
        "n_heldout": evaluation["local_heldout_docs"],
        "n_choice_items": evaluation["local_choice_items"],
    }
    with atomic_directory(out) as tmp:
        build_local_tasks(
            heldout,
            tmp,
            seed=1234,
            max_heldout_chars=2000,
            tokenizer_file=tokenizer,
            **counts,
        )
    inputs = [Path(heldout), *([Path(tokenizer)] if tokenizer else [])]
    Recorder(out, "eval-tasks", counts, inputs).write()


def evaluate_batch(
    config: dict,
    run: cfg.Run,
    shots: int,
    batch: int,
    exports: Sequence[str | Path],
    output: str | Path,
) -> None:
    """Evaluate one batch of a run's exports at `shots` into `output`, recorded with the hash
    of every task file read.

    Raises:
        ValueError: the number of exports differs from the batch's steps (naming both).
    """
    steps = cfg.eval_batches(config, shots)[batch]
    if len(steps) != len(exports):
        raise ValueError(f"batch {batch} has steps {steps} but {len(exports)} exports")
    out = Path(output)
    local = config["evaluation"]["local_tasks"]
    tasks = eval_task_source(config)
    recorder = Recorder(
        out,
        "eval",
        config["evaluation"],
        [*(Path(p) for p in exports), *([tasks] if tasks.exists() else [])],
        extra={"task_files": task_file_hashes(tasks)},
    )
    with atomic_directory(out) as tmp:
        evaluate_checkpoints(
            dict(zip(steps, exports, strict=True)),
            eval_tasks(config, shots),
            shots,
            tmp,
            run.name,
            batch_size=config["evaluation"]["batch_size"],
            task_dir=paths.eval_tasks_dir(config["paths"]["results"]) if local else None,
            include_defaults=not local,
            limit=None if local else config["evaluation"]["limit"],
        )
    recorder.write()


def prefetch_suite_datasets(config: dict, output: str | Path) -> None:
    """Load every configured lm-eval task's dataset once (on a node with network), so that
    compute nodes evaluate offline from the shared datasets cache; `output` lists them."""
    os.environ.pop("HF_DATASETS_OFFLINE", None)
    os.environ.pop("HF_HUB_OFFLINE", None)
    tasks = sorted(set(eval_tasks(config, 0)) | set(eval_tasks(config, 5)))
    write_json_atomic(output, prefetch_datasets(tasks), indent=1)


def evaluate_reference(
    config: dict,
    model: str,
    revision: str,
    shots: int,
    output: str | Path,
    reference: str | Path,
    tolerance: float,
    device: str,
) -> Comparison:
    """Evaluate a published checkpoint (e.g. EleutherAI/pythia-410m at step143000) with this
    stage and compare it with the published result file. Needs the Hub."""
    from huggingface_hub import snapshot_download

    step = int(revision.removeprefix("step")) if revision.startswith("step") else 0
    model_dir = snapshot_download(model, revision=revision)
    name = model.split("/")[-1]
    written = evaluate_checkpoints(
        {step: model_dir},
        eval_tasks(config, shots),
        shots,
        output,
        name,
        batch_size=config["evaluation"]["batch_size"],
        include_defaults=True,
        device=device,
        offline=False,
    )
    return compare_with_reference(written[step], reference, tolerance)
