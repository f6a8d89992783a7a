"""Local lm-eval tasks built from held-out Pile-format documents (the miniature suite's).

``mini_lambada`` (LAMBADA-style last-word prediction, like ``lambada_openai``), ``mini_heldout``
(rolling-loglikelihood perplexity, like ``wikitext``/``pile``) and ``mini_next_word``
(:mod:`pythia_suite.evaluate.next_word`), written as task YAMLs with their data and a manifest.
"""

from __future__ import annotations

import json
import os
import random
import re
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from pythia_suite.atomic import write_json_atomic, write_text_atomic
from pythia_suite.evaluate.next_word import build_next_word_items
from pythia_suite.hashing import sha256_file
from pythia_suite.jsonfile import read_json

NEXT_WORD_TASK = "mini_next_word"
LOCAL_TASKS = ("mini_lambada", "mini_heldout", NEXT_WORD_TASK)


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
    n_heldout = n_docs if n_heldout is None else n_heldout
    heldout, passages = _heldout_and_passages(
        texts, seed, max_heldout_chars, max_sentences, min_words
    )
    heldout = heldout[:n_heldout]
    _check_enough_documents(shard, texts, heldout, n_heldout, passages, n_docs, min_words)
    lambada, fewshot = passages[:n_docs], passages[n_docs : n_docs + n_fewshot_pool]
    files, configs = _lambada_and_heldout_tasks(lambada, fewshot, heldout)
    chance = {}
    if n_choice_items > 0:
        chance = _add_next_word_task(
            files, configs, texts, n_choice_items, seed, n_choices, tokenizer_file
        )
    _write_task_files(out, files, configs)
    counts = {"source_documents": len(texts), "mini_lambada": len(lambada)}
    counts |= {"mini_lambada_fewshot": len(fewshot), "mini_heldout": len(heldout)}
    counts |= {NEXT_WORD_TASK: n_choice_items} if n_choice_items > 0 else {}
    manifest = _manifest(shard, seed, n_docs, tokenizer_file, counts, list(configs), chance)
    write_json_atomic(out / "manifest.json", manifest, sort_keys=False)
    return load_local_tasks(out)


def _heldout_and_passages(
    texts: Sequence[str],
    seed: int,
    max_heldout_chars: int | None,
    max_sentences: int,
    min_words: int,
) -> tuple[list[dict[str, str]], list[dict[str, str]]]:
    """Every document cut to ``max_heldout_chars`` (``mini_heldout``'s rows), and the
    LAMBADA-style passages of those that have one, both in the order ``seed`` shuffles."""
    order = list(range(len(texts)))
    random.Random(seed).shuffle(order)
    heldout = [{"text": _truncate_words(texts[i].strip(), max_heldout_chars)} for i in order]
    passages: list[dict[str, str]] = []
    for i in order:
        passage = _lambada_passage(texts[i], max_sentences, min_words)
        if passage is not None:
            passages.append({"text": passage})
    return heldout, passages


def _check_enough_documents(
    shard: Path,
    texts: Sequence[str],
    heldout: Sequence[Any],
    n_heldout: int,
    passages: Sequence[Any],
    n_docs: int,
    min_words: int,
) -> None:
    """Raise ValueError naming the counts when the shard gives too few documents or passages."""
    if len(heldout) < n_heldout or len(passages) < n_docs:
        raise ValueError(
            f"{shard}: {len(texts)} non-empty documents give {len(passages)} LAMBADA-style "
            f"passages (>= {min_words} words ending in an alphabetic word); n_docs={n_docs} "
            "needs that many of each"
        )


def _lambada_and_heldout_tasks(
    lambada: list[dict[str, str]], fewshot: list[dict[str, str]], heldout: list[dict[str, str]]
) -> tuple[dict[str, str], dict[str, dict[str, Any]]]:
    """The data files (name -> text) and task configs of ``mini_lambada`` and ``mini_heldout``."""
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
    if not fewshot:
        configs["mini_lambada"].pop("training_split")
        configs["mini_lambada"]["fewshot_split"] = "test"
    return files, configs


def _add_next_word_task(
    files: dict[str, str],
    configs: dict[str, dict[str, Any]],
    texts: Sequence[str],
    n_items: int,
    seed: int,
    n_choices: int,
    tokenizer_file: str | os.PathLike | None,
) -> dict[str, dict[str, float]]:
    """Add ``mini_next_word``'s data file and config; return its chance levels."""
    items = build_next_word_items(
        texts,
        n_items,
        seed,
        n_choices=n_choices,
        token_count=_continuation_token_counter(tokenizer_file) if tokenizer_file else None,
    )
    files[f"{NEXT_WORD_TASK}.jsonl"] = _jsonl(items)
    configs[NEXT_WORD_TASK] = _task_yaml(NEXT_WORD_TASK, {"test": f"{NEXT_WORD_TASK}.jsonl"})
    return {NEXT_WORD_TASK: {"acc": 1 / n_choices, "acc_norm": 1 / n_choices}}


def _write_task_files(
    out: Path, files: Mapping[str, str], configs: Mapping[str, Mapping[str, Any]]
) -> None:
    """The data files and task YAMLs, with any manifest removed first: the directory counts as
    complete only once the manifest is written again, last."""
    (out / "manifest.json").unlink(missing_ok=True)  # incomplete until rewritten below
    for name, text in files.items():
        write_text_atomic(out / name, text)
    for task, config in configs.items():
        header = "# data_files are relative to this file: load with evaluate.load_local_tasks\n"
        write_text_atomic(out / f"{task}.yaml", header + yaml.safe_dump(config, sort_keys=False))


def _manifest(
    shard: Path,
    seed: int,
    n_docs: int,
    tokenizer_file: str | os.PathLike | None,
    counts: Mapping[str, int],
    tasks: list[str],
    chance: Mapping[str, Mapping[str, float]],
) -> dict[str, Any]:
    """``manifest.json``: the source and tokenizer by sha256, the seed, counts, tasks, chance."""
    return {
        "source": str(shard),
        "source_sha256": sha256_file(shard),
        "seed": seed,
        "n_docs": n_docs,
        **({"tokenizer_sha256": sha256_file(tokenizer_file)} if tokenizer_file else {}),
        "counts": dict(counts),
        "tasks": tasks,
        "chance": dict(chance),
    }


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
    return read_json(manifest, kind=dict).get("chance", {})


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
