"""A run's data lens: built per (variant, data seed) order with its provenance record
(``pythia-suite build-lens``), opened with the run's dataset and index maps, queried and
printed (``pythia-suite lens``). The lens itself is ``pythia_suite.data.lens``.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pythia_suite.data.lens import (
    LensFiles,
    build_lens,
    document_view,
    load_lens,
    open_for_queries,
    split_at_end_of_document,
    step_view,
)

NEEDS_DOCUMENT_IDENTITY = (
    "document identity and repetition need the run's index maps: set data.source to idxmaps or "
    "raw (the preshuffled set holds samples, not documents)"
)


@dataclass
class RunLens:
    """Everything the queries of one run read, memory-mapped."""

    lens: LensFiles
    sizes: np.ndarray
    doc_idx: np.ndarray
    sample_idx: np.ndarray
    shuffle_idx: np.ndarray
    documents: object | None  # data.documents.DocumentTable, raw source only

    def step(self, step: int) -> list[dict]:
        return step_view(
            self.lens, step, self.sizes, self.doc_idx, self.sample_idx, self.shuffle_idx,
            self.documents,
        )  # fmt: skip

    def document(self, document: int) -> list[dict]:
        return document_view(self.lens, document, self.sizes, self.sample_idx)


def open_run_lens(
    lens_dir: str | os.PathLike,
    dataset_prefix: str | os.PathLike,
    order_paths,
    documents_dir: str | os.PathLike | None = None,
) -> RunLens:
    """Open a run's lens with its dataset sizes, index maps and (raw) document table.

    Raises ``FileNotFoundError`` naming what is missing."""
    from pythia_suite.data.documents import DocumentTable
    from pythia_suite.data.order import read_sizes

    lens = load_lens(lens_dir)
    for path in order_paths:
        if not Path(path).is_file():
            raise FileNotFoundError(f"{path}: index map missing (build the run's order first)")
    doc_idx, sample_idx, shuffle_idx = (open_for_queries(p) for p in order_paths)
    documents = None
    if documents_dir is not None and (Path(documents_dir) / "table.json").is_file():
        documents = DocumentTable(documents_dir)
    return RunLens(lens, read_sizes(dataset_prefix), doc_idx, sample_idx, shuffle_idx, documents)


def format_step(step: int, samples: list[dict]) -> str:
    """The text of ``lens RUN --step N``: one block per sample, one line per document piece."""
    lines = [f"step {step}: {len(samples)} samples"]
    for sample in samples:
        lines.append(f"sample {sample['sample']} (order sample {sample['order_sample']}):")
        for p in sample["pieces"]:
            where = ""
            if "shard" in p:
                where = f" shard {p['shard']:02d} record {p['record']} [{p['subset']}]"
                if "standard_id" in p:
                    where += f" standard id {p['standard_id']}"
            first = p["first_step"]
            lines.append(
                f"  document {p['document']}{where}: tokens {p['begin']}..{p['end']} "
                f"({p['tokens']}), occurrence {p['occurrence']}, first seen at step {first}"
            )
    return "\n".join(lines)


def format_preshuffled_step(step: int, samples: list[list[dict]]) -> str:
    """The text of ``lens RUN --step N`` for a preshuffled run (documents split at EOD)."""
    lines = [
        f"step {step}: {len(samples)} samples (preshuffled: documents split at end-of-document)"
    ]
    for row, parts in enumerate(samples):
        spans = ", ".join(f"{p['tokens']}{'' if p['ends_document'] else '+'}" for p in parts)
        lines.append(f"sample {row}: {len(parts)} documents, tokens {spans}")
    lines.append(f"note: {NEEDS_DOCUMENT_IDENTITY}")
    return "\n".join(lines)


def format_checkpoints(meta: dict) -> str:
    """The text of ``lens RUN --checkpoints``: the cumulative table."""
    subsets = meta.get("subsets") or []
    lines = [
        f"data seed {meta.get('seed')}, {meta['epochs']} epoch(s) in doc_idx, "
        f"{meta['num_documents']:,} documents; first step holding a repeated document: "
        f"{meta['first_repeated_step']}"
    ]
    if not subsets:
        lines.append("no Pile subset labels in this dataset (tokenized release)")
    header = f"{'step':>8} {'documents':>12} {'tokens':>16} {'repeated':>9}"
    if subsets:
        header += "  top subsets (share of tokens)"
    lines.append(header)
    for row in meta["checkpoints"]:
        line = (
            f"{row['step']:>8} {row['unique_documents']:>12,} {row['tokens']:>16,} "
            f"{row['repeated_share']:>9.2%}"
        )
        if subsets and row["tokens"]:
            shares = sorted(zip(row["subset_tokens"], subsets, strict=True), reverse=True)[:3]
            line += "  " + ", ".join(f"{n} {t / row['tokens']:.1%}" for t, n in shares)
        lines.append(line)
    return "\n".join(lines)


def format_document(document: int, hits: list[dict], info: dict | None = None) -> str:
    """The text of ``lens RUN --document ID``: every step holding the document."""
    where = ""
    if info:
        where = f" (shard {info['shard']:02d} record {info['record']}, {info['subset']})"
    lines = [f"document {document}{where}: {len(hits)} pieces in training"]
    for h in hits:
        lines.append(
            f"  step {h['step']} sample {h['row']}: tokens {h['begin']}..{h['end']}, "
            f"occurrence {h['occurrence']} (doc_idx position {h['position']})"
        )
    return "\n".join(lines)


def build_lens_with_record(
    config: dict,
    *,
    variant: str,
    seed: int,
    dataset_prefix: str,
    order_dir: str,
    documents: str | None,
    output: str | os.PathLike,
) -> None:
    """The data lens of one (variant, data seed) order (``data.lens``) in the directory
    ``output`` (complete or absent), with its provenance record (build timings included).
    ``documents``: the variant's document table (raw source), for Pile subset labels."""
    from pythia_suite import config as cfg
    from pythia_suite.atomic import atomic_directory
    from pythia_suite.data.order import index_map_paths, read_sizes
    from pythia_suite.data.source import num_samples
    from pythia_suite.provenance import Recorder

    seq_length = config["model"]["seq_length"]
    order = index_map_paths(dataset_prefix, order_dir, num_samples(config), seq_length, seed)
    subsets, codes = None, None
    if documents:
        from pythia_suite.data.documents import DocumentTable

        table = DocumentTable(documents)
        subsets, codes = table.subsets, table.subset
    out = Path(output)
    meta = {
        "variant": variant,
        "seed": seed,
        "source": config["data"]["source"],
        "subsets": subsets,
        "checkpoint_steps": cfg.checkpoint_steps(config),
    }
    inputs = [Path(dataset_prefix + ".bin"), Path(order_dir)]
    recorder = Recorder(
        out, "data-lens", meta, inputs + ([Path(documents)] if codes is not None else [])
    )
    timings: dict = {}
    with atomic_directory(out) as tmp:
        build_lens(
            read_sizes(dataset_prefix),
            order,
            tmp,
            global_batch=config["training"]["global_batch"],
            train_iters=config["training"]["train_iters"],
            seq_length=seq_length,
            meta=meta,
            subset_codes=codes,
            num_subsets=len(subsets or [None]),
            timings=timings,
        )
    recorder.extra = {"seconds": timings}
    recorder.write()


def _open_lens_of_run(config: dict, run, data) -> RunLens:
    """A run's lens with its dataset and order (``data``: its ``TrainingData``, with documents)."""
    from pythia_suite import paths
    from pythia_suite.data.order import index_map_paths

    results = config["paths"]["results"]
    order = index_map_paths(
        data.dataset_prefix, data.order_dir, data.num_samples, data.seq_length, data.data_seed
    )
    return open_run_lens(
        paths.lens_dir(results, run.variant, run.data_seed),
        data.dataset_prefix,
        order,
        paths.document_table(results, run.variant),
    )


def _preshuffled_step_answer(config: dict, run, data, step: int | None, as_json: bool) -> str:
    """A preshuffled run's step, its samples split at end-of-document (no document identity).

    Raises ``ConfigError`` without a step, or with one outside training."""
    from pythia_suite.config import ConfigError

    if step is None:
        raise ConfigError(f"{run.name}: {NEEDS_DOCUMENT_IDENTITY}")
    last = config["training"]["train_iters"] - 1
    if not 0 <= step <= last:
        raise ConfigError(f"--step {step}: training runs steps 0 .. {last}")
    batch = data.samples().batch(step, config["training"]["global_batch"])
    parts = [split_at_end_of_document(row) for row in batch]
    if as_json:
        note = NEEDS_DOCUMENT_IDENTITY
        return json.dumps({"run": run.name, "step": step, "samples": parts, "note": note})
    return format_preshuffled_step(step, parts)


def lens_answer(
    config: dict, run, *, step: int | None, document: int | None, checkpoints: bool, as_json: bool
) -> str:
    """What a run's training ``step``, its checkpoints or one ``document`` read (documents,
    subsets, repetition), as text or JSON: the answer of ``pythia-suite lens``.

    Raises ``ConfigError`` for a preshuffled run asked about anything but a step in training,
    ``FileNotFoundError`` naming a lens or index map not built yet."""
    from pythia_suite.data.source import training_data

    data = training_data(config, run)
    if not data.has_documents:  # preshuffled: samples, not documents
        return _preshuffled_step_answer(config, run, data, step, as_json)
    opened = _open_lens_of_run(config, run, data)
    if step is not None:
        result = opened.step(step)
        text = format_step(step, result) if not as_json else None
    elif checkpoints:
        result = opened.lens.meta
        text = format_checkpoints(result) if not as_json else None
    else:
        result = opened.document(document)
        info = opened.documents.row(document) if opened.documents is not None else None
        text = format_document(document, result, info) if not as_json else None
    return json.dumps({"run": run.name, "result": result}) if as_json else text
