"""The data lens: which documents every training step and every checkpoint has seen, and how often.

Computed from a run's GPT-NeoX v1.0 index maps (``pythia_suite.data.order``): ``doc_idx`` (the
shuffled document order over all epochs), ``sample_idx`` (where each 2049-token sample starts in
that stream) and ``shuffle_idx`` (training position ``i`` reads sample ``shuffle_idx[i]``).
Step ``s`` reads training positions ``[s * B, (s + 1) * B)``.

Terms (one definition each):

piece
    the tokens one training sample takes from one document occurrence (a sample of
    ``seq_length + 1`` tokens holds one or more pieces; consecutive samples share one token, so
    a document's pieces can overlap by that token).
occurrence
    one position ``p`` of ``doc_idx``: one pass over document ``doc_idx[p]``. With ``E`` epochs in
    ``doc_idx`` each document has ``E`` occurrences; a document longer than a sample spreads one
    occurrence over several (shuffled) samples.
occurrence number
    occurrences of one document ranked by the training position of their first piece (ties, two
    occurrences first met in the same sample, in stream order): 1 for the first, 2 for the
    second, ... GPT-NeoX v1.0 shuffles all epochs together, so this, not the epoch of ``doc_idx``,
    is the "epoch" a reader sees. 0: never read in training.
repeated
    an occurrence (and each of its pieces and their tokens) with occurrence number >= 2: the same
    document was at an earlier training position in another occurrence. (A later piece of the
    first occurrence of a long document is not repeated: its tokens have not been read before.)

The build streams over training positions in chunks, in training order, so the occurrence numbers
come out of one pass with per-document counters (numbers in ``benchmarks/data_lens.py``). The
artifact is a directory of ``.npy`` files read memory-mapped by the queries (``step_view``,
``document_view``) plus ``lens.json`` (summary and the cumulative table per checkpoint).
"""

from __future__ import annotations

import json
import mmap
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pythia_suite.atomic import write_json_atomic

__all__ = [
    "LENS_FORMAT",
    "STEP_COLUMNS",
    "LensError",
    "LensArrays",
    "build_lens",
    "checkpoint_table",
    "compute_lens",
    "data_facts",
    "document_view",
    "load_lens",
    "sample_pieces",
    "split_at_end_of_document",
    "step_view",
    "write_lens",
]

LENS_FORMAT = "pythia-suite/data-lens/1"
#: Columns of ``steps.npy``: per training step, in this order.
STEP_COLUMNS = (
    "tokens",  # tokens read (B x (seq_length + 1))
    "documents_started",  # pieces that hold a document's first token
    "first_occurrences",  # occurrences with number 1 first met in this step (new documents)
    "repeated_occurrences",  # occurrences with number >= 2 first met in this step
    "repeated_tokens",  # tokens of pieces of repeated occurrences
)
_CHUNK_SAMPLES = 1 << 19  # training positions per chunk: ~1.3M pieces, ~100 MB of temporaries
_NEVER = -1


class LensError(ValueError):
    """Index maps or a lens directory cannot give the lens; the message names the file or value."""


@dataclass
class LensArrays:
    """The lens of one order, in memory (``write_lens`` stores it, ``load_lens`` maps it back).

    ``steps`` (T, len(STEP_COLUMNS)) int64; ``subset_tokens`` (T, K) int64 tokens per subset
    and step; ``occurrence_number`` per ``doc_idx`` position (0 = never read);
    ``document_first_step`` per document (-1 = never read); ``document_positions`` (N, E) int32,
    the ``doc_idx`` positions of each document; ``training_position`` per sample of
    ``sample_idx``, the training position that reads it (inverse of ``shuffle_idx``).
    """

    steps: np.ndarray
    subset_tokens: np.ndarray
    occurrence_number: np.ndarray
    document_first_step: np.ndarray
    document_positions: np.ndarray
    training_position: np.ndarray
    global_batch: int
    train_iters: int
    seq_length: int
    epochs: int

    @property
    def first_repeated_step(self) -> int | None:
        """The first step whose batch holds a repeated occurrence, or None."""
        hits = np.flatnonzero(self.steps[:, STEP_COLUMNS.index("repeated_occurrences")])
        return int(hits[0]) if hits.size else None


# --------------------------------------------------------------------------------------------
# Memory-mapped reads for the queries
# --------------------------------------------------------------------------------------------

_PAGE = mmap.PAGESIZE
_PREFETCH_MAX = 1 << 16


def open_for_queries(path: str | os.PathLike) -> np.ndarray:
    """``np.load(path, mmap_mode="r")`` advised for random access (``MADV_RANDOM``): a query
    touches a few thousand scattered rows, and the kernel's read-around would read (and map)
    hundreds of KB around each."""
    array = np.load(path, mmap_mode="r")
    mapping = getattr(array, "_mmap", None)
    if mapping is not None and hasattr(mapping, "madvise"):
        mapping.madvise(mmap.MADV_RANDOM)
    return array


def _gather(array: np.ndarray, indices: np.ndarray) -> np.ndarray:
    """``array[indices]`` (along axis 0); on a memory map the pages are first requested all at
    once (``MADV_WILLNEED``), so that a cold read waits for one round of parallel I/O rather
    than one page after another."""
    indices = np.asarray(indices, dtype=np.int64)
    mapping = getattr(array, "_mmap", None)
    prefetch = 0 < indices.size <= _PREFETCH_MAX  # queries, not the build's chunks
    if mapping is not None and prefetch and hasattr(mapping, "madvise"):
        base = np.frombuffer(mapping, dtype=np.uint8).__array_interface__["data"][0]
        start = array.__array_interface__["data"][0] - base
        first = (start + indices * array.strides[0]) // _PAGE
        last = (
            start + indices * array.strides[0] + array.itemsize * _row_items(array) - 1
        ) // _PAGE
        for page in np.unique(np.concatenate([first, last])).tolist():
            mapping.madvise(mmap.MADV_WILLNEED, page * _PAGE, _PAGE)
    return np.asarray(array[indices])


def _row_items(array: np.ndarray) -> int:
    return int(np.prod(array.shape[1:], dtype=np.int64)) if array.ndim > 1 else 1


# --------------------------------------------------------------------------------------------
# Pieces of samples
# --------------------------------------------------------------------------------------------


def sample_pieces(
    samples: np.ndarray, sizes: np.ndarray, doc_idx: np.ndarray, sample_idx: np.ndarray
) -> dict[str, np.ndarray]:
    """The pieces of the (unshuffled) ``samples``, in stream order, as parallel arrays.

    Keys: ``row`` (index into ``samples``), ``position`` (in ``doc_idx``), ``document``,
    ``begin``/``end`` (token offsets in the document, end exclusive), ``tokens``. Pieces of empty
    documents (0 tokens) are left out. Each sample's pieces sum to ``seq_length + 1`` tokens.
    """
    samples = np.asarray(samples, dtype=np.int64)
    rows = _gather(sample_idx, np.concatenate([samples, samples + 1])).astype(np.int64)
    first, last = rows[: len(samples)], rows[len(samples) :]
    counts = last[:, 0] - first[:, 0] + 1
    row = np.repeat(np.arange(len(samples), dtype=np.int64), counts)
    within = np.arange(row.size, dtype=np.int64)
    within -= np.repeat(np.cumsum(counts) - counts, counts)
    position = first[row, 0] + within
    document = _gather(doc_idx, position).astype(np.int64)
    size = _gather(sizes, document).astype(np.int64)
    begin = np.where(within == 0, first[row, 1], 0)
    end = np.where(position == last[row, 0], last[row, 1] + 1, size)
    tokens = end - begin
    keep = tokens > 0
    return {
        "row": row[keep],
        "position": position[keep],
        "document": document[keep],
        "begin": begin[keep],
        "end": end[keep],
        "tokens": tokens[keep],
    }


# --------------------------------------------------------------------------------------------
# The build
# --------------------------------------------------------------------------------------------


def _number_dtype(epochs: int) -> np.dtype:
    return np.dtype(np.uint8 if epochs < 255 else np.uint16 if epochs < 65535 else np.uint32)


def compute_lens(
    sizes: np.ndarray,
    doc_idx: np.ndarray,
    sample_idx: np.ndarray,
    shuffle_idx: np.ndarray,
    *,
    global_batch: int,
    train_iters: int,
    seq_length: int,
    subset_codes: np.ndarray | None = None,
    num_subsets: int = 1,
    chunk_samples: int = _CHUNK_SAMPLES,
    timings: dict | None = None,
) -> LensArrays:
    """The lens of the order ``(doc_idx, sample_idx, shuffle_idx)`` over documents of ``sizes``.

    ``subset_codes`` (per document, < ``num_subsets``) splits tokens by Pile subset; without it
    every token counts in subset 0. ``timings``, if given, receives seconds per stage.

    Raises ``LensError`` when the maps disagree with each other or with the training length
    (fewer samples than ``train_iters x global_batch``, a ``doc_idx`` whose documents do not each
    appear the same number of times).
    """
    timings = {} if timings is None else timings
    maps = {"doc": doc_idx, "sample": sample_idx, "shuffle": shuffle_idx}
    epochs = _check_maps(sizes, doc_idx, sample_idx, shuffle_idx, global_batch, train_iters)
    arrays = dict(
        _lens_stages(
            sizes, maps.__getitem__, epochs, global_batch, train_iters, subset_codes,
            num_subsets, chunk_samples, timings,
        )
    )  # fmt: skip
    return LensArrays(
        **arrays,
        global_batch=int(global_batch),
        train_iters=int(train_iters),
        seq_length=int(seq_length),
        epochs=epochs,
    )


def _lens_stages(
    sizes, load_map, epochs, global_batch, train_iters, subset_codes, num_subsets,
    chunk_samples, timings,
):  # fmt: skip
    """Yield the lens's arrays as ``(name, array)``, stage by stage: the walk's columns, then
    ``training_position``, then ``document_positions``. ``load_map(name)`` gives the index map
    ``"doc"``, ``"sample"`` or ``"shuffle"``; each stage asks only for the maps it reads and
    drops them after, so a caller that saves each array as it comes holds one stage at a time.
    ``timings`` receives seconds per stage (the caller's handling of its arrays included)."""
    import time

    clock = time.perf_counter
    t0 = clock()
    walked = _walk(
        sizes, load_map("doc"), load_map("sample"), load_map("shuffle"), global_batch,
        train_iters, epochs, subset_codes, num_subsets, chunk_samples,
    )  # fmt: skip
    while walked:
        yield walked.popitem()
    timings["walk"] = clock() - t0
    t0 = clock()
    yield "training_position", _inverse_permutation(load_map("shuffle"))
    timings["inverse_shuffle"] = clock() - t0
    t0 = clock()
    yield "document_positions", _document_positions(load_map("doc"), len(sizes), epochs)
    timings["document_positions"] = clock() - t0


def _check_maps(sizes, doc_idx, sample_idx, shuffle_idx, global_batch, train_iters) -> int:
    """The epochs in ``doc_idx``; raises ``LensError`` when the maps disagree."""
    num_docs = len(sizes)
    if len(doc_idx) % num_docs:
        raise LensError(
            f"doc_idx has {len(doc_idx)} entries, not a multiple of {num_docs} documents"
        )
    read = int(train_iters) * int(global_batch)
    if read > len(shuffle_idx) - 1:  # GPT2Dataset serves len(shuffle_idx) - 1 samples
        raise LensError(
            f"training reads {read} samples ({train_iters} x {global_batch}) but the order serves "
            f"{len(shuffle_idx) - 1}"
        )
    if len(sample_idx) != len(shuffle_idx) + 1:
        raise LensError(
            f"sample_idx has {len(sample_idx)} rows, expected len(shuffle_idx) + 1 = "
            f"{len(shuffle_idx) + 1}"
        )
    return len(doc_idx) // num_docs


def _walk(
    sizes, doc_idx, sample_idx, shuffle_idx, global_batch, train_iters, epochs,
    subset_codes, num_subsets, chunk_samples,
) -> dict[str, np.ndarray]:  # fmt: skip
    """One pass over the training positions in order: per-step columns, subset tokens,
    occurrence numbers and each document's first step."""
    num_docs = len(sizes)
    read = int(train_iters) * int(global_batch)
    occurrence_number = np.zeros(len(doc_idx), dtype=_number_dtype(epochs))
    counts = np.zeros(num_docs, dtype=occurrence_number.dtype)
    first_step = np.full(num_docs, _NEVER, dtype=np.int32)
    steps = np.zeros((train_iters, len(STEP_COLUMNS)), dtype=np.int64)
    subset_tokens = np.zeros((train_iters, max(1, num_subsets)), dtype=np.int64)
    col = {name: k for k, name in enumerate(STEP_COLUMNS)}
    for lo in range(0, read, chunk_samples):
        hi = min(read, lo + chunk_samples)
        pieces = sample_pieces(shuffle_idx[lo:hi], sizes, doc_idx, sample_idx)
        position, document, tokens = pieces["position"], pieces["document"], pieces["tokens"]
        step = (pieces["row"] + lo) // global_batch
        numbers = occurrence_number[position]
        fresh = np.flatnonzero(numbers == 0)
        if fresh.size:
            _number_new_occurrences(
                fresh, position, document, step, occurrence_number, counts, first_step, steps, col
            )
            numbers = occurrence_number[position]
        # Per-step sums over this chunk's steps only (a chunk spans few steps).
        s0, s1 = lo // global_batch, (hi - 1) // global_batch + 1
        local = step - s0
        tokens_f = tokens.astype(np.float64)
        # A document whose first token is a sample's last token starts in the next sample:
        # consecutive samples share that token, and the start is counted once.
        row = pieces["row"]
        last_of_row = np.ones(row.size, dtype=bool)
        last_of_row[:-1] = row[1:] != row[:-1]
        shared_start = last_of_row & (tokens == 1)
        started = ((pieces["begin"] == 0) & ~shared_start).astype(np.float64)
        repeated = np.where(numbers >= 2, tokens_f, 0.0)
        for name, weights in (
            ("tokens", tokens_f),
            ("documents_started", started),
            ("repeated_tokens", repeated),
        ):
            steps[s0:s1, col[name]] += _per_step(local, weights, s1 - s0)
        codes = 0 if subset_codes is None else np.asarray(subset_codes[document], dtype=np.int64)
        k = subset_tokens.shape[1]
        flat = _per_step(local * k + codes, tokens_f, (s1 - s0) * k)
        subset_tokens[s0:s1] += flat.reshape(s1 - s0, k)
    return {
        "steps": steps,
        "subset_tokens": subset_tokens,
        "occurrence_number": occurrence_number,
        "document_first_step": first_step,
    }


def _per_step(step: np.ndarray, weights: np.ndarray, train_iters: int) -> np.ndarray:
    return np.rint(np.bincount(step, weights=weights, minlength=train_iters)).astype(np.int64)


def _number_new_occurrences(
    fresh, position, document, step, occurrence_number, counts, first_step, steps, col
) -> None:
    """Give occurrences first met in this chunk their numbers, in training order.

    ``fresh`` indexes pieces (in training order) of occurrences not numbered yet; an occurrence
    may have several pieces in the chunk: its first one counts.
    """
    unique_positions, first_piece = np.unique(position[fresh], return_index=True)
    first_piece = fresh[first_piece]
    order = np.argsort(first_piece, kind="stable")  # training order of the new occurrences
    first_piece = first_piece[order]
    unique_positions = unique_positions[order]
    docs = document[first_piece]
    # Rank among this chunk's new occurrences of the same document, in training order.
    by_doc = np.argsort(docs, kind="stable")
    sorted_docs = docs[by_doc]
    run_start = np.flatnonzero(np.r_[True, sorted_docs[1:] != sorted_docs[:-1]])
    run_length = np.diff(np.r_[run_start, sorted_docs.size])
    rank = np.empty(docs.size, dtype=np.int64)
    rank[by_doc] = np.arange(docs.size) - np.repeat(run_start, run_length)
    numbers = counts[docs].astype(np.int64) + rank + 1
    if numbers.max() > np.iinfo(occurrence_number.dtype).max:  # cannot happen: <= epochs
        raise LensError(f"occurrence number {numbers.max()} exceeds the epochs in doc_idx")
    occurrence_number[unique_positions] = numbers
    run_docs = sorted_docs[run_start]
    counts[run_docs] += run_length.astype(counts.dtype)
    new_steps = step[first_piece]
    firsts = numbers == 1
    first_step[docs[firsts]] = new_steps[firsts]
    n = steps.shape[0]
    steps[:, col["first_occurrences"]] += np.bincount(new_steps[firsts], minlength=n)
    steps[:, col["repeated_occurrences"]] += np.bincount(new_steps[~firsts], minlength=n)


def _inverse_permutation(shuffle_idx: np.ndarray) -> np.ndarray:
    """``training_position[j]``: the training position that reads sample ``j``."""
    n = len(shuffle_idx)
    dtype = np.int32 if n < np.iinfo(np.int32).max else np.int64
    inverse = np.empty(n, dtype=dtype)
    chunk = 1 << 24
    for lo in range(0, n, chunk):
        hi = min(n, lo + chunk)
        inverse[np.asarray(shuffle_idx[lo:hi], dtype=np.int64)] = np.arange(lo, hi, dtype=dtype)
    return inverse


def _document_positions(doc_idx: np.ndarray, num_docs: int, epochs: int) -> np.ndarray:
    """``(N, E)`` int32: the ``doc_idx`` positions of every document, chunk by chunk.

    Raises ``LensError`` if a document does not appear exactly ``epochs`` times.
    """
    out = np.full((num_docs, epochs), -1, dtype=np.int32)
    flat = out.reshape(-1)
    filled = np.zeros(num_docs, dtype=np.int32)
    chunk = 1 << 22
    for lo in range(0, len(doc_idx), chunk):
        docs = np.asarray(doc_idx[lo : lo + chunk], dtype=np.int64)
        order = np.argsort(docs, kind="stable")
        sorted_docs = docs[order]
        run_start = np.flatnonzero(np.r_[True, sorted_docs[1:] != sorted_docs[:-1]])
        run_length = np.diff(np.r_[run_start, sorted_docs.size])
        rank = np.arange(sorted_docs.size) - np.repeat(run_start, run_length)
        slot = filled[sorted_docs] + rank
        if slot.size and slot.max() >= epochs:
            bad = int(sorted_docs[np.argmax(slot >= epochs)])
            raise LensError(f"doc_idx holds document {bad} more than {epochs} times")
        flat[sorted_docs * epochs + slot] = order + lo
        filled[sorted_docs[run_start]] += run_length
    if (filled != epochs).any():
        bad = int(np.flatnonzero(filled != epochs)[0])
        raise LensError(f"doc_idx holds document {bad} {filled[bad]} times, expected {epochs}")
    return out


# --------------------------------------------------------------------------------------------
# Files
# --------------------------------------------------------------------------------------------

_ARRAYS = (
    "steps",
    "subset_tokens",
    "occurrence_number",
    "document_first_step",
    "document_positions",
    "training_position",
)


def write_lens(lens: LensArrays, out_dir: str | os.PathLike, meta: dict) -> Path:
    """Write the lens's arrays and ``lens.json`` (``meta`` + summary + checkpoint table) into
    ``out_dir`` (an existing directory: the caller makes it atomic)."""
    out_dir = Path(out_dir)
    for name in _ARRAYS:
        np.save(out_dir / f"{name}.npy", getattr(lens, name))
    return _write_summary(out_dir, meta, lens.global_batch, lens.train_iters, lens.seq_length)


def _write_summary(
    out_dir: Path, meta: dict, global_batch: int, train_iters: int, seq_length: int
) -> Path:
    steps = np.load(out_dir / "steps.npy", mmap_mode="r")
    subset_tokens = np.load(out_dir / "subset_tokens.npy", mmap_mode="r")
    positions = np.load(out_dir / "document_positions.npy", mmap_mode="r")
    hits = np.flatnonzero(steps[:, STEP_COLUMNS.index("repeated_occurrences")])
    table = checkpoint_table(
        LensArrays(steps, subset_tokens, *([None] * 4), global_batch, train_iters, seq_length, 0),
        meta.get("checkpoint_steps") or [],
    )
    summary = {
        "format": LENS_FORMAT,
        **meta,
        "global_batch": int(global_batch),
        "train_iters": int(train_iters),
        "seq_length": int(seq_length),
        "epochs": int(positions.shape[1]),
        "num_documents": int(positions.shape[0]),
        "first_repeated_step": int(hits[0]) if hits.size else None,
        "step_columns": list(STEP_COLUMNS),
        "checkpoints": table,
    }
    write_json_atomic(out_dir / "lens.json", summary, sort_keys=False)
    return out_dir


@dataclass
class LensFiles:
    """A lens directory, memory-mapped (``load_lens``)."""

    path: Path
    meta: dict
    steps: np.ndarray
    subset_tokens: np.ndarray
    occurrence_number: np.ndarray
    document_first_step: np.ndarray
    document_positions: np.ndarray
    training_position: np.ndarray


def load_lens(path: str | os.PathLike) -> LensFiles:
    """Open a lens directory memory-mapped. Raises ``FileNotFoundError`` naming the missing file,
    ``LensError`` naming a file of another format."""
    path = Path(path)
    meta_path = path / "lens.json"
    if not meta_path.is_file():
        raise FileNotFoundError(f"{meta_path}: no lens here (build it: snakemake lens targets)")
    meta = json.loads(meta_path.read_text())
    if meta.get("format") != LENS_FORMAT:
        raise LensError(f"{meta_path}: format {meta.get('format')!r}, expected {LENS_FORMAT}")
    arrays = {}
    for name in _ARRAYS:
        file = path / f"{name}.npy"
        if not file.is_file():
            raise FileNotFoundError(f"{file}: missing from the lens")
        arrays[name] = open_for_queries(file)
    return LensFiles(path=path, meta=meta, **arrays)


# --------------------------------------------------------------------------------------------
# Summaries
# --------------------------------------------------------------------------------------------


def checkpoint_table(lens, checkpoint_steps) -> list[dict]:
    """Cumulative figures at each checkpoint step ``N`` (what steps ``0 .. N-1`` read):
    unique documents seen, tokens, tokens per subset, repeated tokens and their share."""
    steps = np.asarray(lens.steps)
    cum = np.cumsum(steps, axis=0)
    cum_subsets = np.cumsum(np.asarray(lens.subset_tokens), axis=0)
    col = {name: k for k, name in enumerate(STEP_COLUMNS)}
    rows = []
    for n in checkpoint_steps:
        n = int(n)
        if not 0 <= n <= steps.shape[0]:
            raise LensError(f"checkpoint step {n} outside 0 .. {steps.shape[0]}")
        at = cum[n - 1] if n else np.zeros(len(STEP_COLUMNS), dtype=np.int64)
        subsets = cum_subsets[n - 1] if n else np.zeros(cum_subsets.shape[1], dtype=np.int64)
        tokens = int(at[col["tokens"]])
        repeated = int(at[col["repeated_tokens"]])
        rows.append(
            {
                "step": n,
                "unique_documents": int(at[col["first_occurrences"]]),
                "occurrences": int(at[col["first_occurrences"]] + at[col["repeated_occurrences"]]),
                "tokens": tokens,
                "repeated_tokens": repeated,
                "repeated_share": repeated / tokens if tokens else 0.0,
                "subset_tokens": [int(x) for x in subsets],
            }
        )
    return rows


def data_facts(lens_dir: str | os.PathLike) -> list[str]:
    """One-line data facts of a run that its lens proves, for the model card."""
    meta = load_lens(lens_dir).meta
    facts = []
    first = meta.get("first_repeated_step")
    table = meta.get("checkpoints") or []
    final = table[-1] if table else None
    if first is None:
        facts.append(
            f"no document repeats in training: every document occurrence read is the "
            f"document's first ({meta['epochs']} epoch(s) in doc_idx, data seed {meta.get('seed')})"
        )
    else:
        facts.append(
            f"documents repeat from step {first} on (GPT-NeoX v1.0 shuffles its "
            f"{meta['epochs']} epochs of doc_idx together; data seed {meta.get('seed')})"
        )
    if final:
        facts.append(
            f"by step {final['step']}: {final['unique_documents']:,} distinct documents of "
            f"{meta['num_documents']:,}; {final['repeated_share']:.1%} of the tokens from repeated "
            "documents"
        )
    if not meta.get("subsets"):
        facts.append("the dataset has no Pile subset labels (tokenized release)")
    return facts


# --------------------------------------------------------------------------------------------
# Queries
# --------------------------------------------------------------------------------------------


def _searchsorted_column(column: np.ndarray, value: int, side: str) -> int:
    """Binary search in a (strided, memory-mapped) sorted column without copying it."""
    lo, hi = 0, len(column)
    while lo < hi:
        mid = (lo + hi) // 2
        x = int(column[mid])
        if x < value or (side == "right" and x == value):
            lo = mid + 1
        else:
            hi = mid
    return lo


def step_view(
    lens: LensFiles,
    step: int,
    sizes: np.ndarray,
    doc_idx: np.ndarray,
    sample_idx: np.ndarray,
    shuffle_idx: np.ndarray,
    documents=None,
) -> list[dict]:
    """Per sample of step ``step``'s batch, its documents in stream order.

    Each piece: ``document`` (dataset id), ``position`` (in doc_idx), ``begin``/``end``,
    ``tokens``, ``occurrence`` (number), ``first_step`` (the document's), ``subset``, and with a
    document table ``shard`` and ``record``. Raises ``LensError`` for a step outside training.
    """
    batch, iters = lens.meta["global_batch"], lens.meta["train_iters"]
    if not 0 <= step < iters:
        raise LensError(f"--step {step}: training runs steps 0 .. {iters - 1}")
    rows = np.asarray(shuffle_idx[step * batch : (step + 1) * batch], dtype=np.int64)
    pieces = sample_pieces(rows, sizes, doc_idx, sample_idx)
    samples = [
        {"sample": int(step * batch + r), "order_sample": int(rows[r]), "pieces": []}
        for r in range(len(rows))
    ]
    occurrence = _gather(lens.occurrence_number, pieces["position"]).tolist()
    first_step = _gather(lens.document_first_step, pieces["document"]).tolist()
    for k in range(pieces["row"].size):
        doc = int(pieces["document"][k])
        piece = {
            "document": doc,
            "position": int(pieces["position"][k]),
            "begin": int(pieces["begin"][k]),
            "end": int(pieces["end"][k]),
            "tokens": int(pieces["tokens"][k]),
            "occurrence": occurrence[k],
            "first_step": first_step[k],
        }
        if documents is not None:  # a DocumentTable (raw source)
            piece.update(documents.row(doc))
        samples[int(pieces["row"][k])]["pieces"].append(piece)
    return samples


def document_view(
    lens: LensFiles, document: int, sizes: np.ndarray, sample_idx: np.ndarray
) -> list[dict]:
    """Every piece of ``document`` read in training, in training order, from the inverse index.

    Each: ``step``, ``row`` (sample within the batch), ``position`` (occurrence in doc_idx),
    ``occurrence`` (number), ``tokens``. Raises ``LensError`` for an id outside the dataset.
    """
    n = lens.document_positions.shape[0]
    if not 0 <= document < n:
        raise LensError(f"--document {document}: the dataset has documents 0 .. {n - 1}")
    batch, read = lens.meta["global_batch"], lens.meta["global_batch"] * lens.meta["train_iters"]
    starts, ends = sample_idx[:, 0], sample_idx[1:, 0]
    size = int(sizes[document])
    hits = []
    for p in sorted(int(x) for x in lens.document_positions[document]):
        # Samples j holding position p: start_j <= p <= end_j (end_j = start_{j+1}).
        first = _searchsorted_column(ends, p, "left")
        last = _searchsorted_column(starts[:-1], p, "right") - 1
        for j in range(first, last + 1):
            i = int(lens.training_position[j])
            if i >= read:
                continue
            (a, ao), (b, bo) = (tuple(int(x) for x in sample_idx[j + k]) for k in (0, 1))
            begin = ao if p == a else 0
            end = bo + 1 if p == b else size
            if end <= begin:
                continue
            hits.append(
                {
                    "step": i // batch,
                    "row": i % batch,
                    "position": p,
                    "occurrence": int(lens.occurrence_number[p]),
                    "begin": begin,
                    "end": end,
                    "tokens": end - begin,
                }
            )
    hits.sort(key=lambda h: (h["step"], h["row"], h["position"]))
    return hits


def split_at_end_of_document(sample: np.ndarray, eod: int = 0) -> list[dict]:
    """A preshuffled sample's documents: spans cut after each end-of-document token.

    Each: ``begin``/``end`` in the sample, ``tokens``, ``ends_document`` (ends with ``eod``).
    Identity and repetition are not knowable from tokens alone.
    """
    cuts = np.flatnonzero(np.asarray(sample) == eod) + 1
    bounds = [0, *(int(c) for c in cuts if c < len(sample)), len(sample)]
    return [
        {
            "begin": lo,
            "end": hi,
            "tokens": hi - lo,
            "ends_document": bool(sample[hi - 1] == eod),
        }
        for lo, hi in zip(bounds[:-1], bounds[1:], strict=True)
    ]


def build_lens(
    sizes: np.ndarray,
    order_paths,
    out_dir: str | os.PathLike,
    *,
    global_batch: int,
    train_iters: int,
    seq_length: int,
    meta: dict,
    subset_codes: np.ndarray | None = None,
    num_subsets: int = 1,
    timings: dict | None = None,
) -> Path:
    """Compute the lens from the index-map files ``order_paths`` (doc, sample, shuffle) into the
    existing directory ``out_dir``, saving each array as soon as it is done so that only one
    stage's inputs and outputs are in memory at a time. ``timings`` receives seconds per stage.

    Raises ``LensError`` (see ``compute_lens``) naming the disagreement.
    """
    timings = {} if timings is None else timings
    out_dir = Path(out_dir)
    paths = dict(zip(("doc", "sample", "shuffle"), order_paths, strict=True))

    def load_map(name: str) -> np.ndarray:
        return np.load(paths[name], mmap_mode="r")

    epochs = _check_maps(
        sizes, load_map("doc"), load_map("sample"), load_map("shuffle"), global_batch,
        train_iters,
    )  # fmt: skip
    for name, array in _lens_stages(
        sizes, load_map, epochs, global_batch, train_iters, subset_codes, num_subsets,
        _CHUNK_SAMPLES, timings,
    ):  # fmt: skip
        np.save(out_dir / f"{name}.npy", array)
        del array
    return _write_summary(out_dir, meta, global_batch, train_iters, seq_length)
