"""Evaluation with lm-evaluation-harness, written in Pythia's result layout.

Three operations, each a function the CLI can call directly:

- :func:`build_local_tasks` turns held-out Pile-format documents into lm-eval tasks for the
  miniature suite: ``mini_lambada`` (LAMBADA-style last-word prediction, like ``lambada_openai``),
  ``mini_heldout`` (rolling-loglikelihood perplexity, like ``wikitext``/``pile``) and
  ``mini_next_word`` (which of 4 words of the same length, token count and near-equal
  frequency comes next, scored by loglikelihood like ``piqa``/``sciq``; chance 0.25): the one
  on which tiny models show learning.
- :func:`evaluate_checkpoints` evaluates several checkpoints of one run in ONE process (importing
  torch, transformers and lm-eval costs seconds; indexing lm-eval's built-in tasks costs ~10 s
  more) and writes ``<out_dir>/<run>/{zero-shot,five-shot}/<run>_step<N>.json`` shaped like
  Pythia's published files, with lm-eval's raw output beside it (``<run>_step<N>.raw.json``).
- :func:`compare_with_reference` compares a result file with a reference one (ours, lm-eval 0.4
  raw output or Pythia's published files) metric by metric.

lm-eval 0.4 names metrics ``"acc,none"``, ``"perplexity,none"``, ``"acc_stderr,none"``; the
harness Pythia used (0.3) wrote ``acc``, ``ppl``, ``acc_stderr``, and called MMLU subjects
``hendrycksTest-<subject>`` where 0.4 says ``mmlu_<subject>``. :func:`to_pythia_results` and
:func:`to_lm_eval_results` convert between the two, losslessly in both directions.
"""

from __future__ import annotations

import json
import math
import os
import random
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from pythia_suite.atomic import write_json_atomic, write_text_atomic
from pythia_suite.hashing import sha256_file

__all__ = [
    "LOCAL_TASKS",
    "NEXT_WORD_TASK",
    "Comparison",
    "MetricDiff",
    "build_local_tasks",
    "build_next_word_items",
    "chance_levels",
    "compare_with_reference",
    "evaluate_checkpoints",
    "load_local_tasks",
    "load_results",
    "lm_eval_metric_key",
    "lm_eval_task_name",
    "prefetch_datasets",
    "pythia_metric_name",
    "pythia_result_path",
    "pythia_task_name",
    "shot_dir_name",
    "to_lm_eval_results",
    "to_pythia_results",
]

NEXT_WORD_TASK = "mini_next_word"
LOCAL_TASKS = ("mini_lambada", "mini_heldout", NEXT_WORD_TASK)

# ---------------------------------------------------------------------------------------------
# Metric and task names: lm-eval 0.4 <-> Pythia (lm-eval 0.3)
# ---------------------------------------------------------------------------------------------

# Metrics whose name changed between the harness Pythia used and lm-eval 0.4 (0.4 name -> Pythia).
_METRIC_RENAMES = {"perplexity": "ppl", "likelihood_diff": "likelihood_difference"}
_METRIC_RENAMES_BACK = {v: k for k, v in _METRIC_RENAMES.items()}
_STDERR = "_stderr"
# Keys lm-eval puts in a task's results that are not metrics.
_NON_METRIC_KEYS = {"alias", "name", "sample_len", " ", ""}
_MMLU_04, _MMLU_PYTHIA = "mmlu_", "hendrycksTest-"


def pythia_metric_name(lm_eval_key: str) -> str:
    """Pythia's name for an lm-eval 0.4 metric key: ``"perplexity_stderr,none"`` -> ``ppl_stderr``.

    Keys with a filter other than ``none`` keep their filter (``"exact_match,flexible"`` stays
    as is): Pythia's harness had no filters, so there is nothing to map them to.
    """
    metric, _, filter_name = lm_eval_key.partition(",")
    if filter_name and filter_name != "none":
        return lm_eval_key
    is_stderr = metric.endswith(_STDERR)
    base = metric[: -len(_STDERR)] if is_stderr else metric
    base = _METRIC_RENAMES.get(base, base)
    return base + _STDERR if is_stderr else base


def lm_eval_metric_key(pythia_name: str) -> str:
    """The lm-eval 0.4 key for a Pythia metric: ``ppl_stderr`` -> ``"perplexity_stderr,none"``."""
    if "," in pythia_name:
        return pythia_name
    is_stderr = pythia_name.endswith(_STDERR)
    base = pythia_name[: -len(_STDERR)] if is_stderr else pythia_name
    base = _METRIC_RENAMES_BACK.get(base, base)
    return (base + _STDERR if is_stderr else base) + ",none"


def pythia_task_name(lm_eval_task: str) -> str:
    """Pythia's name for an lm-eval 0.4 task: ``mmlu_anatomy`` -> ``hendrycksTest-anatomy``."""
    if lm_eval_task.startswith(_MMLU_04):
        return _MMLU_PYTHIA + lm_eval_task[len(_MMLU_04) :]
    return lm_eval_task


def lm_eval_task_name(pythia_task: str) -> str:
    """The lm-eval 0.4 name of a Pythia task: ``hendrycksTest-anatomy`` -> ``mmlu_anatomy``."""
    if pythia_task.startswith(_MMLU_PYTHIA):
        return _MMLU_04 + pythia_task[len(_MMLU_PYTHIA) :]
    return pythia_task


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def to_pythia_results(lm_eval_results: Mapping[str, Mapping[str, Any]]) -> dict[str, dict]:
    """Map lm-eval 0.4's ``results`` block to Pythia's: task and metric names, numbers only.

    Non-metric keys (``alias``, ``sample_len``, ...) and stderrs lm-eval could not compute
    (``"N/A"``) are dropped: Pythia's files hold numbers only.
    """
    out: dict[str, dict] = {}
    for task, metrics in lm_eval_results.items():
        mapped = {
            pythia_metric_name(key): value
            for key, value in metrics.items()
            if key not in _NON_METRIC_KEYS and _is_number(value)
        }
        out[pythia_task_name(task)] = mapped
    return out


def to_lm_eval_results(pythia_results: Mapping[str, Mapping[str, Any]]) -> dict[str, dict]:
    """Pythia's ``results`` block in lm-eval 0.4 names (inverse of :func:`to_pythia_results`)."""
    return {
        lm_eval_task_name(task): {lm_eval_metric_key(k): v for k, v in metrics.items()}
        for task, metrics in pythia_results.items()
    }


def _looks_like_lm_eval_04(results: Mapping[str, Mapping[str, Any]]) -> bool:
    return any("," in key for metrics in results.values() for key in metrics)


# ---------------------------------------------------------------------------------------------
# Small helpers: atomic writes, documents
# ---------------------------------------------------------------------------------------------


def _write_json(path: Path, obj: Any) -> None:
    write_json_atomic(path, obj, sort_keys=False, default=_json_default)


def _json_default(obj: Any) -> Any:
    """JSON fallback for what lm-eval puts in its output (numpy scalars, sets, dtypes...)."""
    if hasattr(obj, "item"):
        return obj.item()
    if isinstance(obj, set | tuple):
        return list(obj)
    return str(obj)


def _iter_documents(path: Path) -> Iterator[tuple[int, dict]]:
    """``(line_no, doc)`` of a Pile-format shard: the data module's reader, the one definition."""
    from pythia_suite.data.shards import iter_documents

    return iter_documents(path)


# ---------------------------------------------------------------------------------------------
# 1. Local tasks from held-out documents
# ---------------------------------------------------------------------------------------------


def heldout_texts(shard: str | os.PathLike) -> list[str]:
    """The non-empty document texts of a held-out shard, in file order: what the local tasks
    are built from. Raises ``ValueError`` naming the file and line of a bad document."""
    return [doc["text"] for _, doc in _iter_documents(Path(shard)) if doc["text"].strip()]


_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")
_TARGET_WORD = re.compile(r"^[A-Za-z]{2,}$")


def _lambada_passage(text: str, max_sentences: int, min_words: int) -> str | None:
    """A LAMBADA-style passage from a document, or None when the document has none.

    The passage is the document's first few sentences on one line (words separated by single
    spaces, as lambada_openai's ``text.split(' ')`` expects), the final punctuation removed, so
    that its last word is the target. The target must be alphabetic: predicting a number or a
    code token is not the task LAMBADA measures.
    """
    sentences = _SENTENCE_END.split(" ".join(text.split()))
    for n in range(max_sentences, 0, -1):
        passage = " ".join(sentences[:n]).rstrip(" .!?\"'")
        words = passage.split(" ")
        if len(words) >= min_words and _TARGET_WORD.match(words[-1]):
            return passage
    return None


def _truncate_words(text: str, max_chars: int | None) -> str:
    """``text`` cut to at most ``max_chars`` characters at a whitespace boundary."""
    if max_chars is None or len(text) <= max_chars:
        return text
    cut = text.rfind(" ", 0, max_chars + 1)
    return text[: cut if cut > 0 else max_chars]


_WORD = re.compile(r"\S+")
_ALPHA_WORD = re.compile(r"^[A-Za-z]{2,}$")


def _word_counts(texts: Sequence[str]) -> dict[str, int]:
    """How often each alphabetic word (2+ letters, case kept) occurs in ``texts``."""
    counts: dict[str, int] = {}
    for text in texts:
        for match in _WORD.finditer(text):
            word = match.group()
            if _ALPHA_WORD.match(word):
                counts[word] = counts.get(word, 0) + 1
    return counts


def _matched_distractors(
    word: str, counts: Mapping[str, int], pool: Sequence[str], k: int, rng: Any
) -> list[str] | None:
    """``k`` words of ``pool`` closest to ``word`` in frequency (None if too few exist).

    ``pool`` holds the words of ``word``'s shape: its length in characters, and in tokens when
    a tokenizer is given. With near-equal frequency too, neither length nor the unigram prior
    tells the answer: only the context does. At initialisation a model's logits are near
    uniform, so a choice's loglikelihood is about minus its token count times ln(vocabulary):
    equal token counts keep step 0 at chance. Picked at random among the ``2k`` nearest in log
    frequency.
    """
    target = math.log(counts[word])
    nearest = sorted(pool, key=lambda w: (abs(math.log(counts[w]) - target), w))
    seen, candidates = {word.lower()}, []
    for w in nearest:  # one spelling per word: "Said" and "said" are the same choice
        if w.lower() not in seen:
            seen.add(w.lower())
            candidates.append(w)
    if len(candidates) < k:
        return None
    return rng.sample(candidates[: 2 * k], k)


def build_next_word_items(
    texts: Sequence[str],
    n_items: int,
    seed: int,
    *,
    n_choices: int = 4,
    context_words: int = 24,
    min_context_words: int = 16,
    max_context_chars: int = 160,
    token_count: Callable[[Sequence[str]], list[int]] | None = None,
    max_items_per_answer: int = 3,
) -> list[dict[str, Any]]:
    """Multiple-choice next-word items from held-out text: which word comes next?

    Each item is ``{"context", "choices", "gold", "doc"}``: up to ``context_words`` words of a
    document (its own spacing kept; at most ``max_context_chars``, so that the miniature
    models' 128-token window holds it), then ``n_choices`` candidate next words, one of them the
    true one (at position ``gold``, drawn at random), the others length- and frequency-matched
    words from the held-out text (:func:`_matched_distractors`), also matched in token count
    when ``token_count`` is given (it maps words to the number of tokens each costs as a
    continuation, ``" " + word``). Targets are alphabetic words preceded by one space, at
    random positions; documents are visited in turn so that every document contributes.
    Deterministic in ``seed``; built before training, from text the model never trains on, so
    an untrained model scores chance (``1 / n_choices``).

    A word is the answer of at most ``max_items_per_answer`` items (case ignored). An untrained
    model still prefers some words to others at random; were "the" the answer of fifty items,
    that one preference would move step 0's accuracy by several standard errors. Uncapped,
    step 0's accuracy on 1,000 items spread with a standard deviation of 0.033 over ten
    initialisations of the 1.3m model, against a binomial 0.014; capped at 3, 0.010
    (``benchmarks/next_word_control.py``).

    Raises:
        ValueError: fewer than ``n_items`` items can be built (naming both counts).
    """
    rng = random.Random(seed)
    counts = _word_counts(texts)
    words_sorted = sorted(counts)
    tokens = dict(zip(words_sorted, token_count(words_sorted), strict=True)) if token_count else {}

    def shape(word: str) -> tuple[int, int]:
        return len(word), tokens.get(word, 0)

    by_shape: dict[tuple[int, int], list[str]] = {}
    for word in words_sorted:
        by_shape.setdefault(shape(word), []).append(word)
    positions = []  # per document: the shuffled candidate target positions
    for text in texts:
        words = list(_WORD.finditer(text))
        usable = [
            i
            for i in range(min_context_words, len(words))
            # one plain space before the target: lm-eval joins context and choice with " "
            if _ALPHA_WORD.match(words[i].group())
            and words[i].start() - words[i - 1].end() == 1
            and text[words[i].start() - 1] == " "
        ]
        rng.shuffle(usable)
        positions.append((text, words, usable))
    items: list[dict[str, Any]] = []
    answered: dict[str, int] = {}  # lower-cased answer -> items it answers
    while len(items) < n_items and any(usable for _, _, usable in positions):
        for doc, (text, words, usable) in enumerate(positions):
            if len(items) == n_items or not usable:
                continue
            i = usable.pop()
            target = words[i].group()
            if answered.get(target.lower(), 0) == max_items_per_answer:
                continue
            pool = by_shape[shape(target)]
            distractors = _matched_distractors(target, counts, pool, n_choices - 1, rng)
            if distractors is None:
                continue
            gold = rng.randrange(n_choices)
            choices = distractors[:gold] + [target] + distractors[gold:]
            end = words[i - 1].end()
            first = max(0, i - context_words)
            while first < i - 1 and end - words[first].start() > max_context_chars:
                first += 1
            context = text[words[first].start() : end]
            items.append({"context": context, "choices": choices, "gold": gold, "doc": doc})
            answered[target.lower()] = answered.get(target.lower(), 0) + 1
    if len(items) < n_items:
        raise ValueError(
            f"{len(texts)} held-out documents give {len(items)} next-word items; "
            f"{n_items} were asked for"
        )
    return items


def _jsonl(rows: Sequence[Mapping[str, Any]]) -> str:
    return "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)


def _task_yaml(task: str, files: Mapping[str, str]) -> dict[str, Any]:
    """lm-eval task config for one local task; ``files`` maps split -> file name (relative)."""
    common = {
        "task": task,
        "dataset_path": "json",
        "dataset_kwargs": {"data_files": dict(files)},
        "test_split": "test",
    }
    if task == NEXT_WORD_TASK:
        # Scored like piqa/sciq: the loglikelihood of each choice after the context; acc picks
        # the likeliest, acc_norm the likeliest per byte (equal here: equal lengths).
        return {
            **common,
            "output_type": "multiple_choice",
            "fewshot_split": "test",  # lm-eval leaves out the document being scored
            "doc_to_text": "{{context}}",
            "doc_to_choice": "choices",
            "doc_to_target": "gold",
            "metric_list": [
                {"metric": "acc", "aggregation": "mean", "higher_is_better": True},
                {"metric": "acc_norm", "aggregation": "mean", "higher_is_better": True},
            ],
            # 2.0: distractors also match the answer's token count; no answer repeats > 3 times
            "metadata": {"version": 2.0},
        }
    if task == "mini_lambada":
        return {
            **common,
            "output_type": "loglikelihood",
            "training_split": "train",
            "fewshot_split": "train",
            # As lambada_openai: context = all but the last word, target = " " + last word.
            "doc_to_text": "{{text.split(' ')[:-1]|join(' ')}}",
            "doc_to_target": "{{' '+text.split(' ')[-1]}}",
            "metric_list": [
                {"metric": "perplexity", "aggregation": "perplexity", "higher_is_better": False},
                {"metric": "acc", "aggregation": "mean", "higher_is_better": True},
            ],
            "metadata": {"version": 1.0},
        }
    return {
        **common,
        "output_type": "loglikelihood_rolling",
        "doc_to_text": "",
        "doc_to_target": "{{text}}",
        "metric_list": [
            {"metric": "word_perplexity", "aggregation": "weighted_perplexity"},
            {"metric": "byte_perplexity", "aggregation": "weighted_perplexity"},
            {"metric": "bits_per_byte", "aggregation": "bits_per_byte"},
        ],
        "metadata": {"version": 1.0},
    }


def build_local_tasks(
    heldout_shard: str | os.PathLike,
    out_dir: str | os.PathLike,
    n_docs: int,
    seed: int,
    *,
    n_fewshot_pool: int = 32,
    max_sentences: int = 4,
    min_words: int = 12,
    max_heldout_chars: int | None = 4000,
    n_heldout: int | None = None,
    n_choice_items: int = 0,
    n_choices: int = 4,
    tokenizer_file: str | os.PathLike | None = None,
) -> dict[str, dict[str, Any]]:
    """Build the miniature suite's lm-eval tasks from held-out Pile-format documents.

    Writes to ``out_dir``: ``mini_lambada.jsonl`` (``n_docs`` passages, target = last word),
    ``mini_lambada_fewshot.jsonl`` (up to ``n_fewshot_pool`` passages from other documents, the
    few-shot pool), ``mini_heldout.jsonl`` (``n_docs`` documents, each cut to
    ``max_heldout_chars`` at a word boundary to bound the cost), with ``n_choice_items`` > 0
    ``mini_next_word.jsonl`` (multiple-choice next word, :func:`build_next_word_items`; chance
    ``1 / n_choices``, recorded in the manifest), a task YAML per task whose
    ``data_files`` are relative to the YAML (load them with :func:`load_local_tasks`, which
    resolves them; lm-eval itself would resolve them against the current directory), and
    ``manifest.json`` last, so a directory with a manifest is complete.

    The selection is deterministic: documents are visited in an order shuffled with
    ``random.Random(seed)``; the same shard, ``n_docs`` and seed give byte-identical files.

    Args:
        heldout_shard: ``.jsonl.zst`` (or ``.jsonl``) with one ``{"text", "meta"}`` per line.
        out_dir: directory to write the task files into (created if missing).
        n_docs: documents per task.
        seed: seed of the document order.
        n_heldout: documents of ``mini_heldout`` when it should differ from ``n_docs``
            (rolling perplexity costs about twice a passage per document).
        tokenizer_file: the models' ``tokenizer.json``: next-word distractors then also cost
            the true word's number of tokens (recorded in the manifest by its sha256).

    Returns:
        ``{task_name: lm-eval task config dict}`` with absolute data paths, ready for
        :func:`evaluate_checkpoints`.

    Raises:
        FileNotFoundError: the shard does not exist.
        ValueError: ``n_docs`` < 1, a line of the shard is not a document (naming file and
            line), or the shard has fewer than ``n_docs`` usable documents (naming the counts).
    """
    shard, out = Path(heldout_shard), Path(out_dir)
    if n_docs < 1:
        raise ValueError(f"n_docs must be >= 1, got {n_docs}")
    if not shard.is_file():
        raise FileNotFoundError(f"held-out shard not found: {shard}")

    texts = heldout_texts(shard)
    order = list(range(len(texts)))
    random.Random(seed).shuffle(order)

    heldout = [{"text": _truncate_words(texts[i].strip(), max_heldout_chars)} for i in order]
    n_heldout = n_docs if n_heldout is None else n_heldout
    heldout = heldout[:n_heldout]
    passages: list[dict[str, str]] = []
    for i in order:
        passage = _lambada_passage(texts[i], max_sentences, min_words)
        if passage is not None:
            passages.append({"text": passage})
    if len(heldout) < n_heldout or len(passages) < n_docs:
        raise ValueError(
            f"{shard}: {len(texts)} non-empty documents give {len(passages)} LAMBADA-style "
            f"passages (>= {min_words} words ending in an alphabetic word); n_docs={n_docs} "
            "needs that many of each"
        )
    lambada, fewshot = passages[:n_docs], passages[n_docs : n_docs + n_fewshot_pool]
    if not fewshot:
        # Too few documents for a separate pool: few-shot examples come from the test split
        # (lm-eval then excludes the document being scored), as lambada_openai does.
        fewshot_files = {"test": "mini_lambada.jsonl"}
    else:
        fewshot_files = {"test": "mini_lambada.jsonl", "train": "mini_lambada_fewshot.jsonl"}

    files = {
        "mini_lambada.jsonl": _jsonl(lambada),
        "mini_lambada_fewshot.jsonl": _jsonl(fewshot),
        "mini_heldout.jsonl": _jsonl(heldout),
    }
    configs = {
        "mini_lambada": _task_yaml("mini_lambada", fewshot_files),
        "mini_heldout": _task_yaml("mini_heldout", {"test": "mini_heldout.jsonl"}),
    }
    chance = {}
    if n_choice_items > 0:
        items = build_next_word_items(
            texts,
            n_choice_items,
            seed,
            n_choices=n_choices,
            token_count=_continuation_token_counter(tokenizer_file) if tokenizer_file else None,
        )
        files[f"{NEXT_WORD_TASK}.jsonl"] = _jsonl(items)
        configs[NEXT_WORD_TASK] = _task_yaml(NEXT_WORD_TASK, {"test": f"{NEXT_WORD_TASK}.jsonl"})
        chance[NEXT_WORD_TASK] = {"acc": 1 / n_choices, "acc_norm": 1 / n_choices}
    if not fewshot:
        configs["mini_lambada"].pop("training_split")
        configs["mini_lambada"]["fewshot_split"] = "test"

    (out / "manifest.json").unlink(missing_ok=True)  # incomplete until rewritten below
    for name, text in files.items():
        write_text_atomic(out / name, text)
    for task, config in configs.items():
        header = "# data_files are relative to this file: load with evaluate.load_local_tasks\n"
        write_text_atomic(out / f"{task}.yaml", header + yaml.safe_dump(config, sort_keys=False))
    manifest = {
        "source": str(shard),
        "source_sha256": sha256_file(shard),
        "seed": seed,
        "n_docs": n_docs,
        **({"tokenizer_sha256": sha256_file(tokenizer_file)} if tokenizer_file else {}),
        "counts": {
            "source_documents": len(texts),
            "mini_lambada": len(lambada),
            "mini_lambada_fewshot": len(fewshot),
            "mini_heldout": len(heldout),
            **({NEXT_WORD_TASK: n_choice_items} if n_choice_items > 0 else {}),
        },
        "tasks": list(configs),
        "chance": chance,
    }
    _write_json(out / "manifest.json", manifest)
    return load_local_tasks(out)


def _continuation_token_counter(tokenizer_file: str | os.PathLike):
    """A function from words to the number of tokens each costs as a continuation."""
    from pythia_suite.data.tokenize import load_tokenizer

    tokenizer = load_tokenizer(tokenizer_file)

    def count(words: Sequence[str]) -> list[int]:
        encoded = tokenizer.encode_batch([" " + w for w in words], add_special_tokens=False)
        return [len(e.ids) for e in encoded]

    return count


def chance_levels(task_dir: str | os.PathLike) -> dict[str, dict[str, float]]:
    """``{task: {metric: chance value}}`` recorded in a task directory's manifest ({} if none)."""
    manifest = Path(task_dir) / "manifest.json"
    if not manifest.is_file():
        return {}
    return json.loads(manifest.read_text(encoding="utf-8")).get("chance", {})


def load_local_tasks(task_dir: str | os.PathLike) -> dict[str, dict[str, Any]]:
    """Read the task YAMLs in ``task_dir`` as lm-eval task config dicts with absolute data paths.

    Passing dicts to lm-eval (rather than ``include_path``) avoids its trap of resolving
    relative ``data_files`` against the current directory, and indexing nothing.

    Raises:
        FileNotFoundError: ``task_dir`` has no ``*.yaml``, or a data file a YAML names is missing
            (naming the YAML and the file).
        ValueError: a YAML has no ``task`` key (naming the file).
    """
    root = Path(task_dir).resolve()
    yamls = sorted(root.glob("*.yaml"))
    if not yamls:
        raise FileNotFoundError(f"no task YAML (*.yaml) in {root}")
    configs: dict[str, dict[str, Any]] = {}
    for path in yamls:
        config = yaml.safe_load(path.read_text(encoding="utf-8"))
        if not isinstance(config, dict) or "task" not in config:
            raise ValueError(f"{path}: not an lm-eval task config (no 'task' key)")
        data_files = config.get("dataset_kwargs", {}).get("data_files", {})
        for split, name in data_files.items():
            resolved = (path.parent / name).resolve()
            if not resolved.is_file():
                raise FileNotFoundError(
                    f"{path}: data_files.{split} = {name}: {resolved} not found"
                )
            data_files[split] = str(resolved)
        configs[config["task"]] = config
    return configs


# ---------------------------------------------------------------------------------------------
# 2. Evaluating checkpoints
# ---------------------------------------------------------------------------------------------


def shot_dir_name(num_fewshot: int) -> str:
    """Pythia's directory for a number of shots: 0 -> ``zero-shot``, 5 -> ``five-shot``."""
    return {0: "zero-shot", 5: "five-shot"}.get(num_fewshot, f"{num_fewshot}-shot")


def pythia_result_path(
    out_dir: str | os.PathLike, run_name: str, step: int, num_fewshot: int
) -> Path:
    """``<out_dir>/<run>/<zero-shot|five-shot>/<run>_step<N>.json`` (raw output: ``.raw.json``)."""
    return Path(out_dir) / run_name / shot_dir_name(num_fewshot) / f"{run_name}_step{step}.json"


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
    written: dict[int, Path] = {}
    for step, model_dir in dirs.items():
        model_args = {"pretrained": str(model_dir), "dtype": dtype}
        raw = lm_eval.simple_evaluate(
            model="hf",
            model_args=model_args,
            tasks=specs,
            num_fewshot=num_fewshot,
            batch_size=batch_size,
            device=device,
            task_manager=task_manager,
            bootstrap_iters=bootstrap_iters,
            limit=limit,
            log_samples=False,
        )
        if not raw or not raw.get("results"):
            raise ValueError(f"step {step}: lm-eval returned no results for {model_dir}")
        path = pythia_result_path(out_dir, run_name, step, num_fewshot)
        model_args_str = ",".join(f"{k}={v}" for k, v in model_args.items())
        _write_json(path.with_suffix(".raw.json"), raw)
        _write_json(
            path,
            _pythia_document(
                raw, model_args_str, num_fewshot, batch_size, device, bootstrap_iters, limit
            ),
        )
        written[step] = path
    return written


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


# ---------------------------------------------------------------------------------------------
# 3. Comparison with reference results
# ---------------------------------------------------------------------------------------------


def load_results(source: str | os.PathLike | Mapping[str, Any]) -> dict[str, dict[str, float]]:
    """The ``results`` block of a result file in Pythia's names.

    Accepts a path or an already-parsed dict, in Pythia's layout (ours or the published files)
    or lm-eval 0.4's raw output (mapped with :func:`to_pythia_results`).

    Raises:
        ValueError: the JSON has no ``results`` object (naming the file).
    """
    if isinstance(source, Mapping):
        doc, name = source, "<dict>"
    else:
        name = str(source)
        with open(source, encoding="utf-8") as fh:
            try:
                doc = json.load(fh)
            except json.JSONDecodeError as err:
                raise ValueError(f"{name}: invalid JSON at line {err.lineno}: {err.msg}") from None
    results = doc.get("results") if isinstance(doc, Mapping) else None
    if not isinstance(results, Mapping):
        raise ValueError(f"{name}: no 'results' object")
    if _looks_like_lm_eval_04(results):
        return to_pythia_results(results)
    return {task: {k: v for k, v in m.items() if _is_number(v)} for task, m in results.items()}


@dataclass(frozen=True)
class MetricDiff:
    """One metric of one task in both files."""

    task: str
    metric: str
    ours: float
    reference: float
    tolerance: float

    @property
    def diff(self) -> float:
        return self.ours - self.reference

    @property
    def ok(self) -> bool:
        return math.isclose(self.ours, self.reference, rel_tol=0.0, abs_tol=self.tolerance) or (
            math.isnan(self.ours) and math.isnan(self.reference)
        )


@dataclass
class Comparison:
    """Result of :func:`compare_with_reference`: per-metric differences and a verdict."""

    diffs: list[MetricDiff] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)  # "task/metric" in reference, not in ours
    require_all: bool = False

    @property
    def failures(self) -> list[MetricDiff]:
        return [d for d in self.diffs if not d.ok]

    @property
    def passed(self) -> bool:
        return not self.failures and not (self.require_all and self.missing)

    def summary(self) -> str:
        """One line per failure (task, metric, values, tolerance), then a verdict line."""
        lines = [
            f"FAIL {d.task}/{d.metric}: ours {d.ours:.6g} vs reference {d.reference:.6g} "
            f"(diff {d.diff:+.3g}, tolerance {d.tolerance:g})"
            for d in self.failures
        ]
        if self.require_all:
            lines += [f"MISSING {m}" for m in self.missing]
        verdict = "PASS" if self.passed else "FAIL"
        n_ok = len(self.diffs) - len(self.failures)
        missing = f", {len(self.missing)} reference metrics not in ours" if self.missing else ""
        lines.append(f"{verdict}: {n_ok}/{len(self.diffs)} metrics within tolerance{missing}")
        return "\n".join(lines)

    def raise_if_failed(self) -> None:
        """Raise ``AssertionError`` with :meth:`summary` unless the comparison passed."""
        if not self.passed:
            raise AssertionError(self.summary())


def _tolerance_for(tolerance: float | Mapping[str, float], task: str, metric: str) -> float:
    """``tolerance`` as a number, or a mapping ``"task/metric"`` | ``metric`` | ``"*"`` -> tol."""
    if not isinstance(tolerance, Mapping):
        return float(tolerance)
    for key in (f"{task}/{metric}", metric, "*"):
        if key in tolerance:
            return float(tolerance[key])
    raise KeyError(f"no tolerance for {task}/{metric} (give it, its metric or '*')")


def compare_with_reference(
    ours_json: str | os.PathLike | Mapping[str, Any],
    reference_json: str | os.PathLike | Mapping[str, Any],
    tolerance: float | Mapping[str, float],
    *,
    include_stderr: bool = False,
    require_all: bool = False,
) -> Comparison:
    """Compare our results with a reference, task by task and metric by metric.

    Both sides may be Pythia-layout files or lm-eval 0.4 raw outputs (names are mapped). Every
    metric present in both is compared: it passes when ``|ours - reference| <= tolerance``.
    ``tolerance`` is absolute: one number, or a mapping from ``"task/metric"``, ``metric`` or
    ``"*"`` to a number (perplexities need their own). Stderrs are skipped unless
    ``include_stderr`` (bootstrap stderrs vary with the resample count).

    Reference metrics missing from ours are listed in ``missing``; they fail the comparison
    only with ``require_all=True`` (a miniature run evaluates fewer tasks than Pythia).
    """
    ours, reference = load_results(ours_json), load_results(reference_json)
    comparison = Comparison(require_all=require_all)
    for task in sorted(reference):
        for metric in sorted(reference[task]):
            if metric.endswith(_STDERR) and not include_stderr:
                continue
            if metric not in ours.get(task, {}):
                comparison.missing.append(f"{task}/{metric}")
                continue
            comparison.diffs.append(
                MetricDiff(
                    task,
                    metric,
                    float(ours[task][metric]),
                    float(reference[task][metric]),
                    _tolerance_for(tolerance, task, metric),
                )
            )
    return comparison
