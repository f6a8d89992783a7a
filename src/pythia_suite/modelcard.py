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
``dataset``               yes       what the data is: a Hub dataset id or a local name
``data_description``      no        one paragraph about the training data (default: the
                                    dataset id)
``architecture``          no        phrases describing the architecture (from the config)
``optimizer``             no        the optimizer sentence (from the config)
``lr_decay_style``        no        ``cosine`` / ``linear`` / ``constant`` (from the config)
``verification``          no        the sentence saying how branches were verified; only
                                    given when every receipt records a matching comparison
``precision``             no        e.g. ``"fp16"``
``deviations``            no        how training departed from Pythia's config (list of str)
``seed``                  no        data / init seed
``tokenizer``             no        tokenizer description (omitted when not given)
``results_label``         no        what ``results`` are, e.g. ``"Zero-shot results of step3000"``
``cache_dir``             no        quickstart ``cache_dir`` (default ``./{name}``)
``offline``               no        the quickstart loads from ``cache_dir`` offline (local hub)
``epoch_tokens``          no        tokens in one pass over the training data (the scale)
``published_dtype``       no        dtype of the published weights, e.g. ``"float16"``
``chance``                no        ``{task: {metric: chance level}}`` for the results table
``dedup``                 no        the dedup report (``docs_in``, ``docs_removed``,
                                    ``docs_out``): removed counts on a deduped card
========================  ========  =====================================================

:func:`card_facts` derives every one of these from the config, the data records and the
publish receipts, so that a card states only what those sources say.

``results`` is ``{task: {metric: value}}`` (Pythia's result files' ``"results"``), an lm-eval
output dict with a ``"results"`` key (metric names like ``"acc,none"``), or a flat
``{label: value}`` (e.g. ``{"piqa acc (0-shot)": 0.62}``).
A ``<metric>_stderr`` / ``<metric>_stderr,<filter>`` entry is shown beside its metric.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pythia_suite import units
from pythia_suite.jsonfile import read_json

__all__ = [
    "ModelCardError",
    "card_facts",
    "final_step_metrics",
    "render_model_card",
    "verification_sentence",
    "write_model_card",
]

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
    "dataset",
)


# The quickstart's generation: greedy, a bounded number of new tokens (no max_length warning),
# repeated tokens discouraged (a small model otherwise repeats a newline or a word).
QUICKSTART_PROMPT = "Hello, I am"
QUICKSTART_NEW_TOKENS = 24
QUICKSTART_REPETITION_PENALTY = 1.3


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


def _chance_cell(chance: Mapping[str, Mapping[str, float]], task: str, metric: str) -> str:
    """The chance level of a results row ('mini_next_word (0-shot)' names the task
    'mini_next_word'; 'acc = acc_norm' the metrics), or '—'."""
    level = chance.get(task.split(" (")[0], {}).get(metric.split(" = ")[0])
    return f"{level:.4f}" if level is not None else "—"


def _scale_text(run: Mapping[str, Any], tokens: int) -> str:
    """Sentences on the scale (tokens trained, share of one pass over the data; a miniature
    when under a billion tokens) and the published dtype; '' for facts the run dict lacks."""
    text = ""
    epoch = run.get("epoch_tokens")
    if epoch:
        text += (
            f" It was trained on {units.count(tokens)} tokens ({_human(tokens)}), "
            f"{tokens / epoch:.1%} of one pass over its training data "
            f"({units.count(epoch)} tokens)."
        )
        if tokens < 1e9:
            text += (
                " It is a miniature: it exercises the pipeline end to end and shows the shape "
                "of learning, not a usable language model."
            )
    if run.get("published_dtype"):
        trained = f" (trained in {run['precision']})" if run.get("precision") else ""
        text += f" The published weights are {run['published_dtype']}{trained}."
    return text


def _table(header: tuple[str, ...], rows: list[tuple[Any, ...]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def _front_matter(run: Mapping[str, Any]) -> str:
    """The card's YAML metadata (the dataset listed when it is a Hub dataset)."""
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
    ]
    if run.get("hub_dataset", True):
        front += ["datasets:", f"- {run['dataset']}"]
    front.append("---")
    return "\n".join(front)


def _architecture_rows(run: Mapping[str, Any], tokens: int) -> list[tuple[str, Any]]:
    """The hyperparameter table's rows."""
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
    return arch_rows


def _data_text(run: Mapping[str, Any]) -> str:
    """The training data section: the dataset, the tokenizer and the data lens's facts."""
    data_text = run.get("data_description") or f"{run['name']} was trained on `{run['dataset']}`."
    if run.get("tokenizer"):
        data_text += f" Tokenizer: {run['tokenizer']}."
    if run.get("data_facts"):  # from the run's data lens (pythia_suite.data.lens.data_facts)
        data_text += "\n\n" + "\n".join(f"- {fact}." for fact in run["data_facts"])
    return data_text


def _training_lines(run: Mapping[str, Any], tokens: int) -> list[str]:
    """The training procedure's bullets: iterations, schedule, optimizer, precision,
    deviations from Pythia's config, seed."""
    style = run.get("lr_decay_style")
    schedule = "linear warmup"
    if run.get("warmup") is not None:
        schedule += f" over the first {run['warmup']:.0%} of iterations"
    if style:
        schedule += f", then {style} decay" if style != "constant" else ", then constant"
    if run.get("min_lr") is not None and style not in (None, "constant"):
        schedule += f" to {run['min_lr']:.1e}"
    architecture = run.get("architecture") or []
    training = [
        f"- {_human(run['train_iters'])} iterations of {run['batch']} sequences x "
        f"{run['seq_length']} tokens ({_human(tokens)} tokens)"
        + (f"; {', '.join(architecture)}." if architecture else "."),
        f"- Learning rate {run['lr']:.1e} with {schedule}.",
    ]
    if run.get("optimizer"):
        training.append(f"- {run['optimizer']}.")
    if run.get("precision"):
        training.append(f"- Precision: {run['precision']}.")
    for deviation in run.get("deviations") or []:
        training.append(f"- Deviation from Pythia's training config: {deviation}.")
    if run.get("seed") is not None:
        training.append(f"- Seed: {run['seed']}.")
    return training


def _evaluation_text(run: Mapping[str, Any], results: Mapping[str, Any] | None, final: int) -> str:
    """The evaluations section: the results table, with chance levels where known."""
    if not results:
        return "No evaluation results are attached to this card yet."
    rows = _metric_rows(results)
    header: tuple[str, ...] = ("Task", "Metric", "Value", "Stderr")
    chance = run.get("chance") or {}
    if chance:
        header += ("Chance",)
        rows = [(*row, _chance_cell(chance, row[0], row[1])) for row in rows]
    evaluation = (
        f"{run.get('results_label') or f'Results of the final checkpoint (`step{final}`)'}, "
        "lm-evaluation-harness:\n\n" + _table(header, rows)
    )
    if chance:
        evaluation += (
            "\n\nChance: what guessing scores (a uniform pick among a task's choices); "
            "— where a task has no such level (exact match, perplexity)."
        )
    return evaluation


def _quickstart(run: Mapping[str, Any], example: int) -> str:
    """Loading the final checkpoint with transformers and generating from the card's prompt."""
    repo_id = run["repo_id"]
    cache_dir = run.get("cache_dir") or f"./{run['name']}"
    offline = (
        'import os\n\nos.environ["HF_HUB_OFFLINE"] = "1"  # the local hub\n'
        if run.get("offline")
        else ""
    )
    return f"""```python
{offline}from transformers import AutoTokenizer, GPTNeoXForCausalLM

# main: the final checkpoint; any other step is its branch, e.g. revision="step{example}".
model = GPTNeoXForCausalLM.from_pretrained(
    "{repo_id}",
    revision="main",
    cache_dir="{cache_dir}",
)
tokenizer = AutoTokenizer.from_pretrained(
    "{repo_id}",
    revision="main",
    cache_dir="{cache_dir}",
)

inputs = tokenizer("{QUICKSTART_PROMPT}", return_tensors="pt")
tokens = model.generate(
    **inputs,
    max_new_tokens={QUICKSTART_NEW_TOKENS},
    do_sample=False,
    repetition_penalty={QUICKSTART_REPETITION_PENALTY},
    pad_token_id=tokenizer.eos_token_id,
)
print(tokenizer.decode(tokens[0]))
```"""


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
    repo_id, name = run["repo_id"], run["name"]
    architecture = _table(("Hyperparameter", "Value"), _architecture_rows(run, tokens))
    sections = [
        _front_matter(run),
        f"# {name}",
        f"{name} is the {run['size']} model of a rebuilt Pythia Scaling Suite "
        f"({run['variant']} data), trained to study how language models develop over training. "
        f"Every checkpoint is published as a branch of `{repo_id}`." + _scale_text(run, tokens),
        "## Architecture\n\n" + architecture,
        "## Training data\n\n" + _data_text(run),
        "## Training procedure\n\n" + "\n".join(_training_lines(run, tokens)),
        "## Checkpoints\n\n"
        f"Checkpoint `step{{N}}` holds the weights after N iterations, on the branch of that "
        f"name: {_step_ranges(steps)}. `step0` is the initialisation. Branch `main` is the "
        f"final checkpoint, `step{final}`."
        + (f" {run['verification']}" if run.get("verification") else ""),
        "## Evaluations\n\n" + _evaluation_text(run, results, final),
        "## Quickstart\n\n" + _quickstart(run, example),
    ]
    return "\n\n".join(sections) + "\n"


# ----------------------------------------------------------------------------- facts


def _data_facts(
    config: Mapping[str, Any], run, dedup_report: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """Dataset id, description and whether it is a Hub dataset, from the run's training data
    (data.source.training_data) and, for raw shards, the corpus's own record (a
    ``manifest.json`` beside the shards, when it ships one); on a deduplicated run with the
    dedup report, the documents left and removed, per source."""
    from pythia_suite.data.source import training_data

    data = config["data"]
    dedup = run.dedup
    tokens = training_data(config, run)
    if tokens.description is not None:
        return {
            "dataset": tokens.hub_repo or tokens.dataset_prefix,
            "hub_dataset": tokens.hub_repo is not None,
            "data_description": tokens.description,
        }
    shards = [entry.get("path") or entry.get("url") for entry in data["raw"]["shards"]]
    text = f"Trained on the Pile-format shards {', '.join(f'`{s}`' for s in shards)}"
    mixes: dict[str, int] = {}
    records = []
    for shard in shards:
        parts = Path(shard).parts
        for depth in (1, 2):  # data/<corpus>/manifest.json lists data/<corpus>/train/00...
            root = Path(*parts[:-depth]) if len(parts) > depth else None
            manifest = root / "manifest.json" if root is not None else None
            if manifest is not None and manifest.is_file():
                entry = read_json(manifest)["files"].get(Path(shard).relative_to(root).as_posix())
                if entry:
                    records.append(manifest)
                    for source, n in entry.get("pile_set_names", {}).items():
                        mixes[source] = mixes.get(source, 0) + n
                break
    removed_per_set = (dedup_report or {}).get("per_set", {}) if dedup else {}
    if mixes and removed_per_set:
        listed = ", ".join(
            f"{source} ({n - removed_per_set.get(source, {}).get('docs_removed', 0)} documents "
            f"after deduplication, {removed_per_set.get(source, {}).get('docs_removed', 0)} "
            "removed)"
            for source, n in sorted(mixes.items())
        )
        text += f", whose documents come from: {listed}"
    elif mixes:
        listed = ", ".join(f"{source} ({n} documents)" for source, n in sorted(mixes.items()))
        text += f", whose documents come from: {listed}"
        sources = sorted({str(m.parent / "SOURCES.md") for m in records})
        if all(Path(s).is_file() for s in sources):
            text += f" (see {', '.join(f'`{s}`' for s in sources)})"
    if dedup:
        d = data["dedup"]
        text += (
            f"; deduplicated with global MinHash-LSH near-deduplication (Jaccard threshold "
            f"{d['threshold']}, {d['ngram']}-word shingles, {d['num_perm']} permutations)"
        )
        if dedup_report:
            text += (
                f", which removed {dedup_report['docs_removed']:,} of "
                f"{dedup_report['docs_in']:,} documents "
                f"({dedup_report['docs_removed'] / max(dedup_report['docs_in'], 1):.1%}), "
                f"leaving {dedup_report['docs_out']:,}"
            )
    return {
        "dataset": shards[0] if len(shards) == 1 else "local Pile-format shards",
        "hub_dataset": False,
        "data_description": text + ".",
    }


def _dataset_tokens(prefix: str | None) -> int | None:
    """Tokens in a Megatron mmap dataset (``prefix``.bin/.idx): one pass over the training
    data. None when there is no such dataset."""
    if not prefix or not Path(prefix + ".idx").is_file():
        return None
    from pythia_suite.data.indexed import IndexedDataset

    return IndexedDataset(prefix).num_tokens


def _tokenizer_fact(config: Mapping[str, Any], tokenizer_file: str | None) -> str:
    tok = config["data"]["tokenizer"]
    size = tok["vocab_size"]
    if tokenizer_file and Path(tokenizer_file).is_file():
        from tokenizers import Tokenizer

        size = Tokenizer.from_file(str(tokenizer_file)).get_vocab_size()
    if tok["kind"] == "train":
        return (
            f"a byte-level BPE of {size:,} tokens trained by this pipeline on the training "
            "shards (`pythia-suite train-tokenizer`)"
        )
    where = f"`{tok['path']}`" if tok["path"] else f"`{tok['repo']}` (`{tok['file']}`)"
    return f"the pretrained BPE {where}, {size:,} tokens"


def _architecture_facts(model: Mapping[str, Any]) -> list[str]:
    if model["pos_emb"] == "rotary":
        position = (
            f"rotary position embeddings on {model['rotary_pct']:.0%} of each head's "
            f"dimensions (base {model['rotary_emb_base']:g})"
        )
    else:
        position = f"{model['pos_emb']} position embeddings"
    residual = "parallel" if model["parallel_residual"] else "sequential"
    tied = "tied" if model["tie_embeddings"] else "untied"
    return [
        "GPT-NeoX architecture",
        position,
        f"{residual} attention and MLP residuals",
        f"{tied} input and output embeddings",
        f"{model['activation']} activation",
    ]


def verification_sentence(receipts: Mapping[str, Mapping[str, Any]]) -> str | None:
    """The card's sentence about verification, or None unless every receipt records a
    comparison of every file that matched (``publish.is_verified``)."""
    from pythia_suite.publish import is_verified

    if not receipts:
        return None
    wheres: set[str] = set()
    for receipt in receipts.values():
        checks = receipt.get("verifications") or []
        if not receipt.get("verified") or not is_verified(checks, len(receipt.get("files", {}))):
            return None
        wheres |= {c["where"] for c in checks}
    how = {
        "local hub": "read back through huggingface_hub's cache API on the local hub",
        "hub": "listed back from the Hub",
    }
    done = " and ".join(how.get(w, w) for w in sorted(wheres))
    return (
        f"Each of the {len(receipts)} published branches was {done} after publishing, and "
        "every file's hash compared with the exported file; the publish receipts record it."
    )


def _deviations(config: Mapping[str, Any], run) -> list[str]:
    """What the run's trainer changed in Pythia's config (GPT-NeoX backend: neox.run_deviations)."""
    if config["training"]["backend"] != "neox":
        return []
    from pythia_suite.neox.config import run_deviations

    return run_deviations(config, run)


def card_facts(
    config: Mapping[str, Any],
    run_name: str,
    receipts: Mapping[str, Mapping[str, Any]],
    *,
    tokenizer_file: str | None = None,
    cache_dir: str | None = None,
    dataset_prefix: str | None = None,
    dedup_report: str | None = None,
    chance: Mapping[str, Mapping[str, float]] | None = None,
) -> dict[str, Any]:
    """The run dict :func:`render_model_card` reads, every value from the config, the data
    records (the corpus manifest, the tokenizer file, the training dataset's index for the
    tokens in one pass, the dedup report), the evaluation tasks' chance levels or the publish
    receipts (branch -> receipt). A record that is absent leaves its statement out.
    """
    from pythia_suite import config as cfg

    run = cfg.get_run(config, run_name)
    size = config["sizes"][run.size]
    training = config["training"]
    total, _ = cfg.parameter_counts(dict(config), run.size)
    adam = training["adam"]
    steps = cfg.checkpoint_steps(dict(config))
    local_only = config["publish"]["local_hub"] and not config["publish"]["hub"]
    report = None
    if dedup_report and Path(dedup_report).is_file():
        report = read_json(dedup_report)
    return {
        **_data_facts(config, run, report),
        "epoch_tokens": _dataset_tokens(dataset_prefix),
        "published_dtype": config["publish"]["dtype"],
        "chance": dict(chance or {}),
        "name": run.name,
        "repo_id": cfg.repo_id(config, run),
        "size": run.size,
        "variant": run.variant,
        "params": total,
        "layers": size["layers"],
        "hidden": size["hidden"],
        "heads": size["heads"],
        "lr": size["lr"],
        "min_lr": size["min_lr"],
        "warmup": training["warmup"],
        "lr_decay_style": training["lr_decay_style"],
        "batch": training["global_batch"],
        "seq_length": config["model"]["seq_length"],
        "train_iters": training["train_iters"],
        "tokens": cfg.total_tokens(dict(config)),
        "steps": steps,
        "precision": cfg.precision(dict(config), run),
        "deviations": _deviations(config, run),
        "tokenizer": _tokenizer_fact(config, tokenizer_file),
        "architecture": _architecture_facts(config["model"]),
        "optimizer": (
            f"Adam (beta1 {adam['beta1']}, beta2 {adam['beta2']}, eps {adam['eps']:g}), weight "
            f"decay {training['weight_decay']}, gradient clipping {training['gradient_clipping']}"
        ),
        "verification": verification_sentence(receipts),
        "cache_dir": cache_dir if local_only else None,
        "offline": bool(local_only),
    }


# ----------------------------------------------------------------------------- the card of a run


def final_step_metrics(points, final_step: int) -> dict[str, dict[str, float]]:
    """The card's results table from a run's evaluation points (``report.load_eval_points``):
    ``{"task (N-shot)": {label: value, "<label>_stderr": stderr}}`` at ``final_step``, identical
    metrics on one row ("acc = acc_norm", ``report.metric_labels``)."""
    from pythia_suite.report import metric_labels

    labels = metric_labels(points)
    table: dict[str, dict[str, float]] = {}
    for p in points:
        label = labels[(p.shots, p.task, p.metric)]
        if p.step == final_step and label is not None:
            metrics = table.setdefault(f"{p.task} ({p.shots}-shot)", {})
            metrics[label] = p.value
            if p.stderr is not None:
                metrics[f"{label}_stderr"] = p.stderr
    return table


def _run_card_facts(config: dict, run, dataset_prefix: str) -> dict[str, Any]:
    """``card_facts`` of a run from the suite's results tree (receipts of every step, tokenizer,
    dedup report, chance levels), with its data lens's facts where the lens is built.

    Raises ``FileNotFoundError`` naming a step's missing publish receipt, ``JSONFileError``
    naming an unreadable one."""
    from pythia_suite import config as cfg
    from pythia_suite import paths
    from pythia_suite.evaluate import chance_levels

    results = config["paths"]["results"]
    steps = cfg.checkpoint_steps(config)
    receipts = {f"step{s}": read_json(paths.receipt(results, run.name, s)) for s in steps}
    info = card_facts(
        config,
        run.name,
        receipts,
        tokenizer_file=paths.tokenizer(results),
        cache_dir=paths.local_hub(results),
        dataset_prefix=dataset_prefix,
        dedup_report=paths.dedup_report(results) if run.dedup else None,
        chance=chance_levels(paths.eval_tasks_dir(results)),
    )
    lens_dir = Path(paths.lens_dir(results, run.variant, run.data_seed))
    if config["data"]["source"] != "preshuffled" and (lens_dir / "lens.json").is_file():
        from pythia_suite.data.lens import data_facts

        info["data_facts"] = data_facts(lens_dir)
    return info


def _card_inputs(config: dict, run, evals_dir: str, dataset_prefix: str, info: dict) -> list:
    """What the card is made from, for its provenance record."""
    from pythia_suite import config as cfg
    from pythia_suite import paths

    results = config["paths"]["results"]
    steps = cfg.checkpoint_steps(config)
    inputs = [Path(evals_dir), *(Path(paths.receipt(results, run.name, s)) for s in steps)]
    inputs.append(Path(dataset_prefix + ".bin"))
    if run.dedup and Path(paths.dedup_report(results)).exists():
        inputs.append(Path(paths.dedup_report(results)))
    if "data_facts" in info:
        inputs.append(Path(paths.lens_dir(results, run.variant, run.data_seed)))
    return inputs


def write_model_card(
    config: dict, run, *, evals_dir: str, result_files: list[str], output: str
) -> None:
    """Write a run's model card (``README.md``) to ``output`` with its provenance record: facts
    from the config and the results tree, the final step's scores from ``result_files`` (the
    run's results in Pythia's layout under ``evals_dir``). With ``publish.local_hub`` the card
    is also put on the local hub's ``main`` branch, verified.

    Raises what ``_run_card_facts`` and ``render_model_card`` raise."""
    from pythia_suite import config as cfg
    from pythia_suite.atomic import write_text_atomic
    from pythia_suite.data.source import training_data
    from pythia_suite.provenance import Recorder
    from pythia_suite.report import load_eval_points

    dataset_prefix = training_data(config, run).dataset_prefix
    info = _run_card_facts(config, run, dataset_prefix)
    points = load_eval_points({run.name: result_files})
    table = final_step_metrics(points, cfg.checkpoint_steps(config)[-1])
    out = Path(output)
    write_text_atomic(out, render_model_card(info, table or None))
    inputs = _card_inputs(config, run, evals_dir, dataset_prefix, info)
    Recorder(out, "model-card", info, inputs).write()
    if config["publish"]["local_hub"]:
        _publish_card_locally(config, run, info["repo_id"], out)


def _publish_card_locally(config: dict, run, repo_id: str, card: Path) -> None:
    """Put the card on the local hub's main branch beside the final step's files, verified."""
    from pythia_suite import config as cfg
    from pythia_suite import paths, publish

    results = config["paths"]["results"]
    publish.publish_card_locally(
        paths.local_hub(results),
        repo_id,
        paths.export_dir(results, run.name, cfg.checkpoint_steps(config)[-1]),
        card,
        paths.model_card_receipt(results, run.name),
    )
