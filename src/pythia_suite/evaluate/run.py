"""Evaluating checkpoints with lm-eval, written in Pythia's result layout.

:func:`evaluate_checkpoints` evaluates several checkpoints of one run in ONE process (importing
torch, transformers and lm-eval costs seconds; indexing lm-eval's built-in tasks costs ~10 s
more) and writes ``<out_dir>/<run>/{zero-shot,five-shot}/<run>_step<N>.json`` shaped like
Pythia's published files, with lm-eval's raw output beside it (``<run>_step<N>.raw.json``).
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from pythia_suite.atomic import write_json_atomic
from pythia_suite.evaluate.names import pythia_task_name, to_pythia_results
from pythia_suite.evaluate.tasks import load_local_tasks

_RESULT_NAME = re.compile(r"_step(0|[1-9][0-9]*)\.json$")


def _write_json(path: Path, obj: Any) -> None:
    write_json_atomic(path, obj, sort_keys=False, default=_json_default)


def _json_default(obj: Any) -> Any:
    """JSON fallback for what lm-eval puts in its output (numpy scalars, sets, dtypes...)."""
    if hasattr(obj, "item"):
        return obj.item()
    if isinstance(obj, set | tuple):
        return list(obj)
    return str(obj)


def shot_dir_name(num_fewshot: int) -> str:
    """Pythia's directory for a number of shots: 0 -> ``zero-shot``, 5 -> ``five-shot``."""
    return {0: "zero-shot", 5: "five-shot"}.get(num_fewshot, f"{num_fewshot}-shot")


def pythia_result_path(
    out_dir: str | os.PathLike, run_name: str, step: int, num_fewshot: int
) -> Path:
    """``<out_dir>/<run>/<zero-shot|five-shot>/<run>_step<N>.json`` (raw output: ``.raw.json``)."""
    return Path(out_dir) / run_name / shot_dir_name(num_fewshot) / f"{run_name}_step{step}.json"


def result_file_step(name: str) -> int | None:
    """The step of a result file named as :func:`pythia_result_path` names it
    (``<run>_step<N>.json``), or None for any other name, lm-eval's ``.raw.json`` included."""
    match = _RESULT_NAME.search(name)
    return int(match[1]) if match and not name.endswith(".raw.json") else None


def _set_offline(offline: bool) -> None:
    """Make the Hub and datasets libraries offline; must run before ``datasets`` is imported."""
    if offline:
        os.environ["HF_HUB_OFFLINE"] = "1"
        os.environ["HF_DATASETS_OFFLINE"] = "1"


def _task_specs(
    tasks: Sequence[str | Mapping[str, Any]], task_dir: str | os.PathLike | None
) -> list[str | dict[str, Any]]:
    """Task names found in ``task_dir`` become their config dicts; other names stay names."""
    local = load_local_tasks(task_dir) if task_dir is not None else {}
    return [local.get(t, t) if isinstance(t, str) else dict(t) for t in tasks]


def _check_model_dirs(model_dirs: Mapping[int, str | os.PathLike]) -> dict[int, Path]:
    """Absolute model directories, checked before any evaluation starts.

    lm-eval treats a ``pretrained`` that is not an existing directory as a Hub repo name, which
    offline fails late with an unrelated message; fail early instead, naming step and path.
    """
    if not model_dirs:
        raise ValueError("model_dirs is empty: nothing to evaluate")
    checked = {}
    for step, path in sorted(model_dirs.items()):
        p = Path(path).resolve()
        if not (p / "config.json").is_file():
            raise FileNotFoundError(
                f"step {step}: {p} is not a Hugging Face model dir (no config.json)"
            )
        checked[int(step)] = p
    return checked


def _pythia_document(
    raw: Mapping[str, Any],
    model_args: str,
    num_fewshot: int,
    batch_size: Any,
    device: str,
    bootstrap_iters: int,
    limit: int | float | None,
) -> dict[str, Any]:
    """Pythia's file from lm-eval 0.4's output: ``results``, ``versions``, ``config``."""
    return {
        "results": to_pythia_results(raw["results"]),
        "versions": {pythia_task_name(t): v for t, v in raw.get("versions", {}).items()},
        "config": {
            "model": "hf",
            "model_args": model_args,
            "num_fewshot": num_fewshot,
            "batch_size": batch_size,
            "device": device,
            "no_cache": True,
            "limit": limit,
            "bootstrap_iters": bootstrap_iters,
            "description_dict": {},
        },
    }


def evaluate_checkpoints(
    model_dirs: Mapping[int, str | os.PathLike],
    tasks: Sequence[str | Mapping[str, Any]],
    num_fewshot: int,
    out_dir: str | os.PathLike,
    run_name: str,
    batch_size: int | str = 8,
    *,
    task_dir: str | os.PathLike | None = None,
    include_defaults: bool = False,
    device: str = "cpu",
    dtype: str = "float32",
    bootstrap_iters: int = 100,
    limit: int | float | None = None,
    offline: bool = True,
) -> dict[int, Path]:
    """Evaluate several checkpoints of one run in this process and write Pythia's layout.

    For each ``step -> model dir`` writes ``<out_dir>/<run_name>/<shots>/<run_name>_step<N>.json``
    (Pythia's ``results``/``versions``/``config``) and lm-eval's own output beside it as
    ``<run_name>_step<N>.raw.json``, each atomically, raw file first: a Pythia file exists only
    with its raw file. lm-eval and the task manager are imported and built once for all steps.

    Args:
        model_dirs: ``{step: Hugging Face model dir}`` (exports, float16 or float32).
        tasks: task names and/or lm-eval task config dicts. Names found in ``task_dir`` (see
            :func:`build_local_tasks`) are loaded from there; other names are lm-eval's built-in
            tasks (``lambada_openai``, ``piqa``, ...), which need ``include_defaults=True`` and
            their datasets in the local cache (:func:`prefetch_datasets`).
        num_fewshot: shots (0 -> ``zero-shot/``, 5 -> ``five-shot/``).
        out_dir: root of the layout.
        run_name: the run (``pythia-70m``...), used in directory and file names.
        batch_size: lm-eval's batch size (an int, or ``"auto"`` on GPU).
        task_dir: directory of local task YAMLs.
        include_defaults: index lm-eval's built-in tasks (~10 s, once per call).
        device: ``cpu``, ``cuda``, ``cuda:0``...
        dtype: weights are cast to this on load (float16 exports run in float32 on CPU).
        bootstrap_iters: bootstrap resamples for stderrs lm-eval cannot compute in closed form
            (``ppl_stderr``); 0 skips them (Pythia used 100000).
        limit: documents per task (for smoke tests); None = all.
        offline: set ``HF_HUB_OFFLINE=1`` and ``HF_DATASETS_OFFLINE=1`` before importing lm-eval.

    Returns:
        ``{step: path of the Pythia-layout JSON}``.

    Raises:
        FileNotFoundError: a model dir has no ``config.json`` (naming the step), or a task's data.
        ValueError: ``model_dirs`` is empty or lm-eval returned nothing (naming the step).
    """
    dirs = _check_model_dirs(model_dirs)
    specs = _task_specs(tasks, task_dir)
    _set_offline(offline)
    import lm_eval
    from lm_eval.tasks import TaskManager

    # One task manager for all steps: with include_defaults it indexes ~10k task configs.
    task_manager = TaskManager(include_defaults=include_defaults)
    settings = {
        "num_fewshot": num_fewshot,
        "batch_size": batch_size,
        "device": device,
        "bootstrap_iters": bootstrap_iters,
        "limit": limit,
    }
    written: dict[int, Path] = {}
    for step, model_dir in dirs.items():
        model_args = {"pretrained": str(model_dir), "dtype": dtype}
        raw = _evaluate_step(lm_eval, task_manager, specs, step, model_args, settings)
        path = pythia_result_path(out_dir, run_name, step, num_fewshot)
        model_args_str = ",".join(f"{k}={v}" for k, v in model_args.items())
        _write_json(path.with_suffix(".raw.json"), raw)
        _write_json(path, _pythia_document(raw, model_args_str, **settings))
        written[step] = path
    return written


def _evaluate_step(
    lm_eval: Any,
    task_manager: Any,
    specs: list[str | dict[str, Any]],
    step: int,
    model_args: dict[str, str],
    settings: Mapping[str, Any],
) -> dict[str, Any]:
    """lm-eval's output for one checkpoint; ValueError (naming the step) when it has none."""
    raw = lm_eval.simple_evaluate(
        model="hf",
        model_args=model_args,
        tasks=specs,
        task_manager=task_manager,
        log_samples=False,
        **settings,
    )
    if not raw or not raw.get("results"):
        raise ValueError(f"step {step}: lm-eval returned no results for {model_args['pretrained']}")
    return raw


def prefetch_datasets(
    tasks: Sequence[str | Mapping[str, Any]],
    *,
    task_dir: str | os.PathLike | None = None,
    include_defaults: bool = True,
) -> dict[str, int]:
    """Download (into the datasets cache) each task's dataset once, so evaluation runs offline.

    Meant for a login node with network access before compute nodes run
    :func:`evaluate_checkpoints` with ``offline=True``; it shares their ``HF_DATASETS_CACHE``.
    Building an lm-eval task loads its dataset, which is all this needs to do.

    Returns:
        ``{task name: number of evaluation documents}``.

    Raises:
        KeyError: a task name lm-eval does not know (lm-eval's message names it).
    """
    specs = _task_specs(tasks, task_dir)
    from lm_eval.tasks import TaskManager

    loaded = TaskManager(include_defaults=include_defaults).load(specs)["tasks"]
    counts = {}
    for name, task in loaded.items():
        docs = task.test_docs() if task.has_test_docs() else task.validation_docs()
        counts[name] = len(docs) if docs is not None else 0
    return counts
