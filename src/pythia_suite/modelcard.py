"""Render a run's model card (``README.md`` with Hub metadata), in the shape of Pythia's cards.

:func:`render_model_card` takes a plain dict of the run's fields (the lead wires it from the
config) and optional evaluation results, and returns the Markdown text. It reads these keys:

========================  ========  =====================================================
key                       required  meaning
========================  ========  =====================================================
``name``                  yes       run name, e.g. ``"pythia-410m-deduped"``
``repo_id``               yes       Hub repo, e.g. ``"EleutherAI/pythia-410m-deduped"``
``size``                  yes       size label, e.g. ``"410m"``
``variant``               yes       ``"standard"`` or ``"deduped"``
``layers``                yes       transformer layers
``hidden``                yes       model dimension
``heads``                 yes       attention heads
``lr``                    yes       peak learning rate
``batch``                 yes       global batch, in sequences (``global_batch`` accepted too)
``seq_length``            yes       sequence length, in tokens
``train_iters``           yes       training iterations
``steps``                 yes       checkpoint steps (list of int); the last is ``main``
``tokens``                no        tokens seen (default ``train_iters * batch * seq_length``)
``params``                no        parameter count (int)
``min_lr``                no        final learning rate of the cosine schedule
``warmup``                no        warmup fraction (e.g. 0.01)
``dataset``               no        Hub dataset id (default by variant: the Pile or its
                                    deduplicated version)
``data_description``      no        one paragraph about the training data
``precision``             no        e.g. ``"fp16"``
``seed``                  no        data / init seed
``tokenizer``             no        tokenizer description (default: the GPT-NeoX-20B BPE)
``results_label``         no        what ``results`` are, e.g. ``"Zero-shot results of step3000"``
``cache_dir``             no        quickstart ``cache_dir`` (default ``./{name}/step{N}``)
========================  ========  =====================================================

``results`` is ``{task: {metric: value}}`` (Pythia's result files' ``"results"``), an lm-eval
output dict with a ``"results"`` key (metric names like ``"acc,none"``), or a flat
``{label: value}`` (e.g. ``{"piqa acc (0-shot)": 0.62}``).
A ``<metric>_stderr`` / ``<metric>_stderr,<filter>`` entry is shown beside its metric.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

__all__ = ["ModelCardError", "render_model_card"]

_REQUIRED = (
    "name",
    "repo_id",
    "size",
    "variant",
    "layers",
    "hidden",
    "heads",
    "lr",
    "batch",
    "seq_length",
    "train_iters",
    "steps",
)
_DATASETS = {"standard": "EleutherAI/pile", "deduped": "EleutherAI/the_pile_deduplicated"}
_DATA_TEXT = {
    "standard": "the Pile, an 825 GiB general-purpose English dataset",
    "deduped": "the Pile after global MinHash-LSH near-deduplication (Jaccard threshold 0.87)",
}


class ModelCardError(ValueError):
    """The run dict lacks a key the card needs, or a value has the wrong type."""


def _check(run: Mapping[str, Any]) -> None:
    missing = [key for key in _REQUIRED if run.get(key) is None]
    if missing:
        raise ModelCardError(f"run dict: missing required key {missing[0]!r} (missing: {missing})")
    steps = run["steps"]
    if (
        not isinstance(steps, list | tuple)
        or not steps
        or not all(isinstance(s, int) for s in steps)
    ):
        raise ModelCardError(f"run dict: 'steps' must be a non-empty list of int, got {steps!r}")
    if run["variant"] not in _DATASETS and "dataset" not in run:
        raise ModelCardError(
            f"run dict: variant {run['variant']!r} is not one of {sorted(_DATASETS)}; "
            "pass 'dataset' explicitly"
        )


def _human(n: int) -> str:
    """2097152 -> '2,097,152'."""
    return f"{n:,}"


def _step_ranges(steps: list[int]) -> str:
    """Describe the checkpoint steps compactly: ``step0, step1, ..., step143000 (154 branches)``."""
    names = [f"`step{s}`" for s in steps]
    shown = ", ".join(names) if len(names) <= 8 else ", ".join(names[:5]) + ", ..., " + names[-1]
    return f"{shown} ({len(names)} branches)"


def _metric_rows(results: Mapping[str, Any]) -> list[tuple[str, str, str, str]]:
    """Flatten results into (task, metric, value, stderr) rows, sorted by task then metric."""
    if isinstance(results.get("results"), Mapping):
        results = results["results"]
    rows = []
    for task in sorted(results):
        metrics = results[task]
        if isinstance(metrics, int | float) and not isinstance(metrics, bool):
            rows.append((task, "", f"{metrics:.4f}", ""))  # flat {label: value}
            continue
        if not isinstance(metrics, Mapping):
            raise ModelCardError(f"results[{task!r}]: expected a number or a mapping of metrics")
        for key in sorted(metrics):
            name, _, filt = key.partition(",")
            value = metrics[key]
            if "stderr" in name or name == "alias" or isinstance(value, bool):
                continue
            if not isinstance(value, int | float):
                continue
            stderr_key = f"{name}_stderr" + (f",{filt}" if filt else "")
            stderr = metrics.get(stderr_key)
            rows.append(
                (
                    task,
                    name,
                    f"{value:.4f}",
                    f"{stderr:.4f}" if isinstance(stderr, int | float) else "",
                )
            )
    return rows


def _table(header: tuple[str, ...], rows: list[tuple[Any, ...]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def render_model_card(run: Mapping[str, Any], results: Mapping[str, Any] | None = None) -> str:
    """Return the ``README.md`` of a run's Hub repo: YAML metadata and Pythia-style sections.

    Sections: architecture (hyperparameter table), data, training procedure, checkpoints
    (branch naming, ``main`` = final step), evaluations (a table when ``results`` is given),
    quickstart. See the module docstring for the keys read from ``run``.

    Raises:
        ModelCardError: a required key is missing or ``steps``/``results`` is malformed.
    """
    if run.get("batch") is None and run.get("global_batch") is not None:
        run = {**run, "batch": run["global_batch"]}
    _check(run)
    steps = sorted(run["steps"])
    final = steps[-1]
    example = next((s for s in steps if s == 3000), steps[len(steps) // 2])
    tokens = run.get("tokens") or run["train_iters"] * run["batch"] * run["seq_length"]
    dataset = run.get("dataset") or _DATASETS[run["variant"]]
    repo_id, name = run["repo_id"], run["name"]

    front = [
        "---",
        "language:",
        "- en",
        "license: apache-2.0",
        "library_name: transformers",
        "pipeline_tag: text-generation",
        "tags:",
        "- pytorch",
        "- causal-lm",
        "- pythia",
        "datasets:",
        f"- {dataset}",
        "---",
    ]
    arch_rows = [("Layers", run["layers"]), ("Model dimension", run["hidden"])]
    arch_rows += [("Attention heads", run["heads"])]
    if run.get("params") is not None:
        arch_rows.insert(0, ("Parameters", _human(int(run["params"]))))
    arch_rows += [
        ("Sequence length", run["seq_length"]),
        ("Batch size (sequences)", run["batch"]),
        ("Batch size (tokens)", _human(run["batch"] * run["seq_length"])),
        ("Learning rate", f"{run['lr']:.1e}"),
    ]
    if run.get("min_lr") is not None:
        arch_rows.append(("Final learning rate", f"{run['min_lr']:.1e}"))
    arch_rows.append(("Training iterations", _human(run["train_iters"])))
    arch_rows.append(("Tokens seen", _human(tokens)))

    data_text = run.get("data_description") or (
        f"{name} was trained on {_DATA_TEXT.get(run['variant'], dataset)} "
        f"(`{dataset}`), tokenized with {run.get('tokenizer') or 'the GPT-NeoX-20B BPE tokenizer'}"
        "; each document ends "
        "with `<|endoftext|>` (token 0). All sizes of the suite see the same data in the same "
        "order."
    )
    schedule = "linear warmup"
    if run.get("warmup") is not None:
        schedule += f" over the first {run['warmup']:.0%} of iterations"
    schedule += ", then cosine decay"
    if run.get("min_lr") is not None:
        schedule += f" to {run['min_lr']:.1e}"
    training = [
        f"- {_human(run['train_iters'])} iterations of {run['batch']} sequences x "
        f"{run['seq_length']} tokens ({_human(tokens)} tokens), trained with the GPT-NeoX "
        "architecture (rotary embeddings on 25% of each head, parallel attention and MLP "
        "residuals, untied input and output embeddings).",
        f"- Adam, learning rate {run['lr']:.1e} with {schedule}.",
    ]
    if run.get("precision"):
        training.append(f"- Precision: {run['precision']}.")
    if run.get("seed") is not None:
        training.append(f"- Seed: {run['seed']}.")

    evaluation = "No evaluation results are attached to this card yet."
    if results:
        rows = _metric_rows(results)
        evaluation = (
            f"{run.get('results_label') or f'Results of the final checkpoint (`step{final}`)'}, "
            "lm-evaluation-harness:\n\n" + _table(("Task", "Metric", "Value", "Stderr"), rows)
        )

    cache_dir = run.get("cache_dir") or f"./{name}/step{example}"
    quickstart = f"""```python
from transformers import AutoTokenizer, GPTNeoXForCausalLM

model = GPTNeoXForCausalLM.from_pretrained(
    "{repo_id}",
    revision="step{example}",
    cache_dir="{cache_dir}",
)
tokenizer = AutoTokenizer.from_pretrained(
    "{repo_id}",
    revision="step{example}",
    cache_dir="{cache_dir}",
)

inputs = tokenizer("Hello, I am", return_tensors="pt")
tokens = model.generate(**inputs)
print(tokenizer.decode(tokens[0]))
```"""

    sections = [
        "\n".join(front),
        f"# {name}",
        f"{name} is the {run['size']} model of a rebuilt Pythia Scaling Suite "
        f"({run['variant']} data), trained to study how language models develop over training. "
        f"Every checkpoint is published as a branch of `{repo_id}`.",
        "## Architecture\n\n" + _table(("Hyperparameter", "Value"), arch_rows),
        "## Training data\n\n" + data_text,
        "## Training procedure\n\n" + "\n".join(training),
        "## Checkpoints\n\n"
        f"Checkpoint `step{{N}}` holds the weights after N iterations, on the branch of that "
        f"name: {_step_ranges(steps)}. `step0` is the initialisation. Branch `main` is the "
        f"final checkpoint, `step{final}`. Every branch was listed back after upload and its "
        "files' hashes compared with the exported files.",
        "## Evaluations\n\n" + evaluation,
        "## Quickstart\n\n" + quickstart,
    ]
    return "\n\n".join(sections) + "\n"
