"""Tokenizer training, shard tokenization into Megatron mmap datasets, and dataset merging.

Each document becomes ``tokenizer.encode(text).ids + [0]`` (``<|endoftext|>`` = 0 ends every
document; no BOS), as GPT-NeoX's ``preprocess_data.py`` wrote the Pile for Pythia. Documents that
encode to no tokens (empty text) are dropped, as GPT-NeoX drops them. Output order is the shard's
line order whatever the number of workers, so a shard always yields the same bytes.

Parallelism: the parent process reads and parses the shard and writes the dataset; worker
processes (each with its own tokenizer) encode chunks of ~256k characters. Chunks are submitted
with a bounded window and collected in submission order, which keeps the output deterministic
and memory bounded however large the shard is. One ``Tokenizer.encode`` per document in worker
processes measured ~2x faster here than the library's multi-threaded ``encode_batch`` on Python
source (``benchmarks/tokenize_throughput.py --encode-batch``). Overheads measured on 40 MB:
parent read + parse ~0.25 CPU-s, each worker's start-up ~0.3-0.5 s (spawn, import, tokenizer).
"""

from __future__ import annotations

import collections
import concurrent.futures
import concurrent.futures.process
import itertools
import multiprocessing
import os
import sys
import time
from array import array
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

from pythia_suite.atomic import write_text_atomic

from .documents import subset_of, text_hash, write_shard_documents
from .indexed import (
    IndexedDataset,
    IndexedDatasetWriter,
    best_dtype,
)
from .shards import iter_documents

__all__ = [
    "EOD_ID",
    "PAD_ID",
    "SPECIAL_TOKENS",
    "load_tokenizer",
    "merge_datasets",
    "tokenize_shard",
    "train_tokenizer",
]

EOD_TOKEN, PAD_TOKEN = "<|endoftext|>", "<|padding|>"
SPECIAL_TOKENS = (EOD_TOKEN, PAD_TOKEN)
EOD_ID, PAD_ID = 0, 1
CHUNK_CHARS = 1 << 18  # text per worker task: amortises IPC; small, so workers finish together
PROGRESS_INTERVAL_S = 5.0


def _iter_texts(shard_paths: Sequence[str | os.PathLike]) -> Iterator[str]:
    for path in shard_paths:
        for _, doc in iter_documents(path):
            if doc["text"]:
                yield doc["text"]


def train_tokenizer(
    shard_paths: Sequence[str | os.PathLike],
    vocab_size: int,
    out_json: str | os.PathLike,
    *,
    min_frequency: int = 2,
) -> Path:
    """Train a byte-level BPE shaped like GPT-NeoX-20B's on the documents of ``shard_paths``.

    Same pipeline as the 20B tokenizer: NFC normalizer, ByteLevel pre-tokenizer and decoder
    (no prefix space), ``<|endoftext|>`` = 0 and ``<|padding|>`` = 1, all 256 byte symbols in
    the vocabulary. Training on the same shards gives a byte-identical file. The file is written
    under a temporary name and renamed when complete.

    Raises:
        ValueError: ``vocab_size`` is too small to hold the specials and the byte alphabet.
        DataFormatError: a shard is malformed (no tokenizer file is written).
    """
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    if vocab_size < len(SPECIAL_TOKENS) + len(alphabet):
        raise ValueError(
            f"vocab_size {vocab_size} < {len(SPECIAL_TOKENS) + len(alphabet)} "
            "(2 special tokens + 256 byte symbols)"
        )
    tokenizer = Tokenizer(models.BPE())
    tokenizer.normalizer = normalizers.NFC()
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True)
    tokenizer.decoder = decoders.ByteLevel(add_prefix_space=False, trim_offsets=True)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=list(SPECIAL_TOKENS),  # ids 0 and 1, in this order
        initial_alphabet=alphabet,
        show_progress=False,
    )
    tokenizer.train_from_iterator(_iter_texts(shard_paths), trainer=trainer)
    return write_text_atomic(out_json, tokenizer.to_str(pretty=True))


def load_tokenizer(tokenizer_json: str | os.PathLike) -> Tokenizer:
    """Load a ``tokenizer.json`` and check that ``<|endoftext|>`` has id 0.

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: the file is not a valid tokenizer, or its EOD token is not id 0.
    """
    path = Path(tokenizer_json)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such tokenizer file")
    try:
        tokenizer = Tokenizer.from_file(str(path))
    except Exception as exc:  # tokenizers raises a bare Exception on parse errors
        raise ValueError(f"{path}: not a valid tokenizer file: {exc}") from None
    eod = tokenizer.token_to_id(EOD_TOKEN)
    if eod != EOD_ID:
        raise ValueError(f"{path}: {EOD_TOKEN} has id {eod}, expected {EOD_ID}")
    return tokenizer


# Worker side. The tokenizer is loaded once per worker process by _init_worker.
_worker_tokenizer: Tokenizer | None = None
_worker_dtype: np.dtype | None = None


def _init_worker(tokenizer_json: str, dtype: str) -> None:
    global _worker_tokenizer, _worker_dtype
    os.environ["TOKENIZERS_PARALLELISM"] = "false"  # one thread per process: we parallelise
    _worker_tokenizer = load_tokenizer(tokenizer_json)
    _worker_dtype = np.dtype(dtype)


def _encode_chunk(texts: list[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Encode texts into (concatenated tokens with an EOD after each, per-document sizes,
    indices in ``texts`` of the documents kept).

    Documents that encode to nothing are dropped (size 0 entries are not returned).
    """
    encode = _worker_tokenizer.encode
    pieces, sizes, kept = [], [], []
    for k, text in enumerate(texts):
        ids = encode(text).ids
        if ids:
            ids.append(EOD_ID)
            pieces.append(ids)
            sizes.append(len(ids))
            kept.append(k)
    # int64 first: range-check before narrowing to the dataset dtype.
    flat = np.fromiter(itertools.chain.from_iterable(pieces), dtype=np.int64, count=sum(sizes))
    if flat.size and flat.max() > np.iinfo(_worker_dtype).max:
        raise ValueError(f"token id {int(flat.max())} does not fit dtype {_worker_dtype}")
    return (
        flat.astype(_worker_dtype),
        np.asarray(sizes, dtype=np.int64),
        np.asarray(kept, dtype=np.int64),
    )


def _chunks(documents: Iterable[tuple[int, dict]], described: list) -> Iterator[list[str]]:
    """Group document texts into lists of about CHUNK_CHARS characters, in order.

    Appends each chunk's ``(records, subsets, text hashes)`` to ``described`` (the document
    table's columns, consumed in the same order as the chunks' results).
    """
    chunk, chars, records = [], 0, []
    for line_no, doc in documents:
        chunk.append(doc["text"])
        records.append((line_no, subset_of(doc)))
        chars += len(doc["text"])
        if chars >= CHUNK_CHARS:
            described.append((records, [text_hash(t) for t in chunk]))
            yield chunk
            chunk, chars, records = [], 0, []
    if chunk:
        described.append((records, [text_hash(t) for t in chunk]))
        yield chunk


class _Progress:
    """Periodic one-line progress report on stderr (works in Snakemake/SLURM logs, no tty)."""

    def __init__(self, label: str, enabled: bool):
        self.label, self.enabled = label, enabled
        self.docs = self.tokens = 0
        self.start = self.last = time.perf_counter()

    def update(self, docs: int, tokens: int) -> None:
        self.docs += docs
        self.tokens += tokens
        now = time.perf_counter()
        if self.enabled and now - self.last >= PROGRESS_INTERVAL_S:
            self.last = now
            self._print(now)

    def done(self) -> None:
        if self.enabled:
            self._print(time.perf_counter(), final=True)

    def _print(self, now: float, final: bool = False) -> None:
        elapsed = max(now - self.start, 1e-9)
        print(
            f"{self.label}: {self.docs:,} documents, {self.tokens:,} tokens, "
            f"{self.tokens / elapsed:,.0f} tokens/s{' (done)' if final else ''}",
            file=sys.stderr,
            flush=True,
        )


def _default_workers() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()


def tokenize_shard(
    shard_path: str | os.PathLike,
    tokenizer_json: str | os.PathLike,
    out_prefix: str | os.PathLike,
    progress: bool = True,
    *,
    workers: int | None = None,
    documents_out: str | os.PathLike | None = None,
) -> dict:
    """Tokenize one Pile-format shard into the mmap dataset ``out_prefix.{bin,idx}``.

    Every document becomes ``encode(text).ids + [0]``; documents with no tokens are dropped;
    items are in line order. The dtype is uint16 for vocabularies under 65500, else int32.
    ``workers`` processes encode in parallel (default: the CPUs available; 1 = in this process);
    the output is byte-identical for any number of workers. Workers are started with ``spawn``,
    so a calling script must guard its entry point with ``if __name__ == "__main__":``.
    Progress lines (documents, tokens, tokens/s) go to stderr every few seconds if ``progress``.
    ``documents_out``: also write the shard's document table there (``data.documents``: record
    number, Pile subset and text hash of every document kept, in item order), before the dataset.

    Returns:
        ``{"documents": kept, "dropped": empty, "tokens": total, "seconds": wall time}``.

    Raises:
        DataFormatError: the shard is malformed (names file and line). No output is left.
        FileNotFoundError, ValueError: the tokenizer file is missing, invalid, or has no EOD 0.
        RuntimeError: a worker process died or could not start.
    """
    shard_path, tokenizer_json = Path(shard_path), Path(tokenizer_json)
    tokenizer = load_tokenizer(tokenizer_json)
    dtype = best_dtype(tokenizer.get_vocab_size())
    workers = workers or _default_workers()
    report = _Progress(f"tokenize {shard_path.name}", progress)
    seen = 0

    def counted_documents():
        nonlocal seen
        for item in iter_documents(shard_path):
            seen += 1
            yield item

    described: list = []  # per chunk: (records, text hashes), in chunk order
    chunks = _chunks(counted_documents(), described)
    # array, not lists: a Pile shard holds ~7M documents
    records, subset_codes, hashes, subset_names = array("q"), array("i"), array("Q"), {}
    with IndexedDatasetWriter(out_prefix, dtype) as writer:
        for k, (tokens, sizes, kept) in enumerate(
            _encode_chunks(chunks, tokenizer, tokenizer_json, dtype, workers)
        ):
            writer.add_documents(tokens, sizes)
            report.update(sizes.size, tokens.size)
            chunk_records, chunk_hashes = described[k]
            described[k] = None  # done: keep memory flat
            for i in kept.tolist():
                records.append(chunk_records[i][0])
                name = chunk_records[i][1]
                subset_codes.append(subset_names.setdefault(name, len(subset_names)))
                hashes.append(chunk_hashes[i])
        if documents_out is not None:  # before the dataset is renamed into place
            write_shard_documents(documents_out, records, subset_codes, list(subset_names), hashes)
    report.done()
    elapsed = time.perf_counter() - report.start
    return {
        "documents": report.docs,
        "dropped": seen - report.docs,
        "tokens": report.tokens,
        "seconds": elapsed,
    }


def _encode_chunks(
    chunks: Iterator[list[str]],
    tokenizer: Tokenizer,
    tokenizer_json: Path,
    dtype: np.dtype,
    workers: int,
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Encode chunks in order, in this process (workers == 1) or in ``workers`` processes.

    Raises:
        RuntimeError: a worker died or could not start.
    """
    global _worker_tokenizer, _worker_dtype
    if workers == 1:
        _worker_tokenizer, _worker_dtype = tokenizer, dtype
        for chunk in chunks:
            yield _encode_chunk(chunk)
        return
    # spawn, not fork: safe whatever threads the caller runs (Snakemake, test servers). Workers
    # that cannot start make the executor raise instead of hanging (unlike multiprocessing.Pool,
    # which respawns them forever).
    executor = concurrent.futures.ProcessPoolExecutor(
        workers,
        mp_context=multiprocessing.get_context("spawn"),
        initializer=_init_worker,
        initargs=(str(tokenizer_json), dtype.str),
    )
    try:
        pending = collections.deque()
        for chunk in chunks:
            pending.append(executor.submit(_encode_chunk, chunk))
            # Two tasks per worker keep every worker busy while bounding memory.
            if len(pending) >= 2 * workers:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()
    except concurrent.futures.process.BrokenProcessPool as exc:
        raise RuntimeError(
            f"tokenizer worker processes died or could not start ({exc}). Workers use 'spawn': "
            "the calling script must guard its entry point with if __name__ == '__main__' and "
            "cannot be read from stdin; or pass workers=1"
        ) from exc
    finally:
        executor.shutdown(wait=True, cancel_futures=True)


def merge_datasets(prefixes: Sequence[str | os.PathLike], out_prefix: str | os.PathLike) -> dict:
    """Concatenate mmap datasets in the given order into ``out_prefix``, streaming.

    Pointers and doc_idx are rebased; ``.bin`` bytes are copied in chunks, so memory use does not
    grow with the data. All inputs must share one dtype.

    Returns:
        ``{"items": N, "documents": D, "tokens": T}`` of the merged dataset.

    Raises:
        ValueError: no inputs, or inputs with different dtypes (nothing is written).
        FileNotFoundError, IndexFormatError: an input is missing or malformed.
    """
    if not prefixes:
        raise ValueError("merge_datasets: no input datasets given")
    datasets = [IndexedDataset(p) for p in prefixes]  # validates every input before writing
    dtypes = {str(ds.dtype) for ds in datasets}
    if len(dtypes) > 1:
        listing = ", ".join(f"{ds.prefix} ({ds.dtype})" for ds in datasets)
        raise ValueError(f"merge_datasets: inputs have different dtypes: {listing}")
    with IndexedDatasetWriter(out_prefix, datasets[0].dtype) as writer:
        for ds in datasets:
            writer.add_items_from(ds)
    return {
        "items": sum(len(ds) for ds in datasets),
        "documents": sum(len(ds.doc_idx) - 1 for ds in datasets),
        "tokens": sum(ds.num_tokens for ds in datasets),
    }


def train_tokenizer_with_record(
    settings: dict, shards: Sequence[str | os.PathLike], output: str | os.PathLike
) -> None:
    """Train the BPE tokenizer of ``settings`` (``data.tokenizer``) on ``shards`` to ``output``,
    with its provenance record."""
    from pythia_suite.provenance import Recorder

    recorder = Recorder(Path(output), "tokenizer", settings, [Path(p) for p in shards])
    train_tokenizer(shards, settings["vocab_size"], output)
    recorder.write()


def fetch_tokenizer_with_record(settings: dict, output: str | os.PathLike) -> None:
    """Copy ``data.tokenizer.path``, or download ``data.tokenizer.file`` from
    ``data.tokenizer.repo``, to ``output`` with its provenance record."""
    from pythia_suite.atomic import copy_file_atomic
    from pythia_suite.provenance import Recorder

    out = Path(output)
    if settings["path"]:
        copy_file_atomic(settings["path"], out)
    else:
        from huggingface_hub import hf_hub_download

        copy_file_atomic(hf_hub_download(settings["repo"], settings["file"]), out)
    Recorder(out, "tokenizer", settings).write()


def tokenize_shard_with_record(
    settings: dict,
    shard: str,
    tokenizer: str,
    output_prefix: str,
    *,
    workers: int | None,
    documents_out: str | None,
) -> None:
    """``tokenize_shard`` with the record of ``output_prefix``.bin (its statistics included);
    ``settings`` is ``data.tokenizer``."""
    from pythia_suite.provenance import Recorder

    recorder = Recorder(
        Path(output_prefix + ".bin"), "tokenized-shard", settings, [Path(shard), Path(tokenizer)]
    )
    recorder.extra = tokenize_shard(
        shard, tokenizer, output_prefix, workers=workers, documents_out=documents_out
    )
    recorder.write()


def merge_datasets_with_record(prefixes: Sequence[str], output_prefix: str) -> None:
    """``merge_datasets`` with the record of ``output_prefix``.bin."""
    from pythia_suite.provenance import Recorder

    inputs = [Path(p + ".bin") for p in prefixes]  # each .bin's record covers its .idx
    recorder = Recorder(Path(output_prefix + ".bin"), "dataset", {}, inputs)
    recorder.extra = merge_datasets(prefixes, output_prefix)
    recorder.write()


def decode_rows(tokenizer_file: str, rows) -> str:
    """``rows`` of token ids decoded with the tokenizer, each followed by a rule of dashes."""
    tokenizer = Tokenizer.from_file(os.fspath(tokenizer_file))
    lines = []
    for row in rows:
        lines += [tokenizer.decode(row.tolist(), skip_special_tokens=False), "-" * 72]
    return "\n".join(lines)
