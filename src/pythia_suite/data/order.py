"""GPT-NeoX v1.0's training sample order, rebuilt exactly, plus a batch viewer and fingerprints.

GPT-NeoX v1.0 (the version Pythia was trained with) turns a Megatron mmap dataset into
``seq_length + 1``-token samples through three "index maps", built once by
``megatron/data/gpt2_dataset.py::_build_index_mappings`` and cached as ``.npy`` files:

``doc_idx`` (int32, ``num_epochs * num_documents``)
    ``arange(num_documents)`` repeated ``num_epochs`` times, flattened, cast to int32 and shuffled
    in place by ``np.random.RandomState(seed).shuffle``: all epochs are shuffled together.
``sample_idx`` (int32, ``(total_samples + 1, 2)``)
    Row ``j`` is ``(position in doc_idx, token offset in that document)`` of the first token of
    sample ``j`` in the concatenation of the documents in ``doc_idx`` order. Sample ``j`` spans the
    tokens ``[j * seq_length, (j + 1) * seq_length]`` of that stream (both ends included), so
    consecutive samples share one token. ``total_samples = (num_epochs * tokens_per_epoch - 1)
    // seq_length``: every sample that fits the epochs, not only the ``num_samples`` requested.
``shuffle_idx`` (uint32, or int64 when ``total_samples >= 2**32 - 2``, ``total_samples``)
    ``arange(total_samples)`` shuffled by the *same* RandomState, after ``doc_idx``.

Global sample ``i`` of training is sample ``shuffle_idx[i]``; iteration ``s`` consumes global
samples ``[s * B, (s + 1) * B)`` whatever the number of GPUs. ``num_epochs`` is the smallest ``e``
with ``(e * tokens_per_epoch - 1) // seq_length >= num_samples``; GPT-NeoX's caller requests
``num_samples = ceil(train_iters * global_batch * 1.005)``.

This module mirrors GPT-NeoX's Python code line by line for ``doc_idx`` and ``shuffle_idx`` (the
two RandomState shuffles *are* the order: they cannot be replaced by anything faster), and
replaces the C++ ``helpers.build_sample_idx`` loop by a vectorised, linear-time equivalent: the
document holding stream position ``p`` is the last one starting at or before ``p``, found for all
``p`` at once from a cumulative sum of document lengths and a prefix sum of per-row document
counts (``bincount``), chunk by chunk of ``doc_idx``. It needs no C++ build, and by building
``doc_idx`` with ``np.tile`` instead of ``np.mgrid`` and saving each map as soon as it is done,
the peak memory is well below GPT-NeoX's (numbers in ``benchmarks/index_maps.py``).

Details taken on trust or reasoned out rather than read in the v1.0 tag itself (the sources
read were GPT-NeoX's 2023 ``gpt2_dataset.py``, whose helper functions are unchanged since
Megatron-LM 2020, and the int32-only ``helpers.cpp`` ``build_sample_idx`` of the v1.0 era):

* The cache file names use ``name = "train_0"``: GPT-NeoX builds one dataset per entry of
  ``train-data-paths`` and names it ``f"train_{i}"``; Pythia's configs give one path. With the
  ``data-path`` + ``split`` form GPT-NeoX names it ``"train"``; pass ``name=`` for that.
* ``sample_idx`` is int32 as in v1.0's ``build_sample_idx`` (later versions switch to int64 for
  huge maps). v1.0 would silently wrap past 2**31 - 1; we raise instead.
* ``len(GPTNeoXSamples)`` mirrors ``GPT2Dataset.__len__`` = ``min(len(shuffle_idx) - 1,
  len(sample_idx) - 1)``: the last shuffled sample is never served by GPT-NeoX.
* ``RandomState.shuffle`` is numpy's frozen legacy stream, so numpy 2.x is assumed to reproduce
  the permutation numpy 1.x produced in 2022 (numpy documents RandomState as frozen); checked
  here: it depends on the array length only, not its dtype.
* ``doc_idx`` longer than 2**31 - 1 (GPT-NeoX's ``astype(np.int32)`` would wrap) raises.
"""

from __future__ import annotations

import hashlib
import os
import warnings
from collections.abc import Iterable
from pathlib import Path
from typing import NamedTuple

import numpy as np

from pythia_suite.atomic import atomic_paths
from pythia_suite.data.indexed import IndexedDataset

__all__ = [
    "DEFAULT_NAME",
    "IndexMapPaths",
    "IndexMapError",
    "GPTNeoXSamples",
    "SampleBatches",
    "build_doc_idx",
    "build_index_maps",
    "build_sample_idx",
    "build_shuffle_idx",
    "compute_index_maps",
    "token_bytes",
    "fingerprint",
    "fingerprint_steps",
    "index_map_paths",
    "num_epochs",
    "total_samples",
]

#: GPT-NeoX names the training dataset built from ``train-data-paths[0]`` "train_0".
DEFAULT_NAME = "train_0"

# Documents per chunk when building sample_idx: ~10 MB of temporaries, reused by malloc
# (large chunks are page-faulted in afresh each time and run slower).
_SAMPLE_IDX_CHUNK = 1 << 18


class IndexMapError(ValueError):
    """A dataset or index map cannot give an order; the message names the file."""


class IndexMapPaths(NamedTuple):
    """The three cached index maps of one (dataset, num_samples, seq_length, seed)."""

    doc_idx: Path
    sample_idx: Path
    shuffle_idx: Path


# --------------------------------------------------------------------------------------------
# The pure computation (no files)
# --------------------------------------------------------------------------------------------


def num_epochs(tokens_per_epoch: int, seq_length: int, num_samples: int) -> int:
    """Smallest ``e >= 1`` with ``(e * tokens_per_epoch - 1) // seq_length >= num_samples``.

    Closed form of GPT-NeoX's ``_num_epochs`` loop. Raises ``ValueError`` when the dataset has
    no tokens (GPT-NeoX would loop forever).
    """
    tokens_per_epoch, seq_length, num_samples = (
        int(tokens_per_epoch),
        int(seq_length),
        int(num_samples),
    )
    if tokens_per_epoch <= 0:
        raise ValueError(f"tokens_per_epoch must be positive, got {tokens_per_epoch}")
    if seq_length <= 1 or num_samples < 0:
        raise ValueError(
            f"need seq_length > 1 and num_samples >= 0, got {seq_length}, {num_samples}"
        )
    # (e*T - 1) // sl >= n  <=>  e*T - 1 >= n*sl  <=>  e >= (n*sl + 1) / T
    return max(1, -(-(num_samples * seq_length + 1) // tokens_per_epoch))


def total_samples(tokens_per_epoch: int, seq_length: int, epochs: int) -> int:
    """Samples that fit ``epochs`` epochs: ``(epochs * tokens_per_epoch - 1) // seq_length``."""
    return (int(epochs) * int(tokens_per_epoch) - 1) // int(seq_length)


def build_doc_idx(num_documents: int, epochs: int, rng: np.random.RandomState) -> np.ndarray:
    """GPT-NeoX's ``_build_doc_idx`` for ``documents = arange(num_documents)``.

    ``arange`` tiled ``epochs`` times, as int32, shuffled in place by ``rng`` (first RNG use).
    GPT-NeoX builds it through ``np.mgrid`` (two int64 copies); the values are the same.
    """
    if num_documents * epochs > np.iinfo(np.int32).max:
        raise ValueError(
            f"{num_documents} documents x {epochs} epochs overflow GPT-NeoX v1.0's int32 doc_idx"
        )
    doc_idx = np.tile(np.arange(num_documents, dtype=np.int32), epochs)
    rng.shuffle(doc_idx)
    return doc_idx


def build_sample_idx(
    sizes: np.ndarray,
    doc_idx: np.ndarray,
    seq_length: int,
    epochs: int,
    tokens_per_epoch: int,
) -> np.ndarray:
    """Vectorised equivalent of GPT-NeoX's C++ ``helpers.build_sample_idx`` (int32 result).

    Row ``j >= 1`` holds the document (position in ``doc_idx``) and offset of stream position
    ``j * seq_length``: the document ``k`` with ``start_k <= j * seq_length < end_k``. Empty
    documents are skipped exactly as the C++ loop skips them; row 0 is always ``(0, 0)``.
    ``doc_idx`` is processed in chunks, so the temporaries stay near 10 MB at any scale.
    """
    count = total_samples(tokens_per_epoch, seq_length, epochs)
    if count < 0:
        raise ValueError("the dataset holds no tokens")
    if len(doc_idx) > np.iinfo(np.int32).max:
        raise ValueError(f"doc_idx of {len(doc_idx)} entries overflows an int32 sample_idx")
    sample_idx = np.empty((count + 1, 2), dtype=np.int32)
    sample_idx[0] = (0, 0)
    next_row = 1  # first row not yet filled
    stream_pos = 0  # stream position where the current chunk of doc_idx starts
    for chunk_start in range(0, len(doc_idx), _SAMPLE_IDX_CHUNK):
        if next_row > count:
            break
        chunk = doc_idx[chunk_start : chunk_start + _SAMPLE_IDX_CHUNK]
        # starts[k]: stream position of document k of the chunk, relative to the chunk
        starts = np.empty(len(chunk) + 1, dtype=np.int64)
        starts[0] = 0
        np.cumsum(sizes[chunk], dtype=np.int64, out=starts[1:])
        chunk_end = stream_pos + int(starts[-1])
        last_row = min(count, (chunk_end - 1) // seq_length)  # last row whose position < end
        n_rows = last_row - next_row + 1
        if n_rows > 0:
            # The document holding position p is the last one starting at or before p (an empty
            # document shares its start with the next one, so it is never the last). Counting
            # documents by the first row at or after their start, a prefix sum of the counts
            # gives, for every row, how many documents start at or before it: linear time.
            first_row = starts[:-1] + (stream_pos + seq_length - 1 - next_row * seq_length)
            first_row //= seq_length
            np.clip(first_row, 0, n_rows, out=first_row)
            docs = np.cumsum(np.bincount(first_row, minlength=n_rows + 1)[:n_rows])
            docs -= 1
            del first_row
            offsets = np.arange(n_rows, dtype=np.int64)
            offsets *= seq_length
            offsets += next_row * seq_length - stream_pos
            offsets -= starts[docs]
            rows = sample_idx[next_row : last_row + 1]
            docs += chunk_start
            rows[:, 0] = docs
            rows[:, 1] = offsets
            del docs, offsets
            next_row = last_row + 1
        stream_pos = chunk_end
    if next_row != count + 1:  # only possible if sizes disagree with tokens_per_epoch
        raise ValueError(
            f"doc_idx holds fewer tokens than {epochs} x {tokens_per_epoch}: "
            f"filled {next_row} of {count + 1} sample_idx rows"
        )
    return sample_idx


def build_shuffle_idx(size: int, rng: np.random.RandomState) -> np.ndarray:
    """GPT-NeoX's ``_build_shuffle_idx``: ``arange(size)`` (uint32, int64 if huge), shuffled."""
    dtype = np.uint32 if size < np.iinfo(np.uint32).max - 1 else np.int64
    shuffle_idx = np.arange(size, dtype=dtype)
    rng.shuffle(shuffle_idx)
    return shuffle_idx


def compute_index_maps(
    sizes: np.ndarray, num_samples: int, seq_length: int, seed: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(doc_idx, sample_idx, shuffle_idx)`` in memory, for the item ``sizes`` of a dataset."""
    sizes = _as_int32_sizes(sizes)
    tokens_per_epoch = int(sizes.sum(dtype=np.int64))
    epochs = num_epochs(tokens_per_epoch, seq_length, num_samples)
    rng = np.random.RandomState(seed=seed)
    doc_idx = build_doc_idx(len(sizes), epochs, rng)
    sample_idx = build_sample_idx(sizes, doc_idx, seq_length, epochs, tokens_per_epoch)
    shuffle_idx = build_shuffle_idx(sample_idx.shape[0] - 1, rng)
    return doc_idx, sample_idx, shuffle_idx


def _as_int32_sizes(sizes: np.ndarray) -> np.ndarray:
    sizes = np.asarray(sizes)
    if sizes.ndim != 1 or len(sizes) == 0:
        raise ValueError(f"sizes must be a non-empty 1-D array, got shape {sizes.shape}")
    if sizes.dtype != np.int32:
        if sizes.min() < 0 or sizes.max() > np.iinfo(np.int32).max:
            raise ValueError("document sizes must fit int32 (GPT-NeoX's sizes dtype)")
        sizes = sizes.astype(np.int32)
    return sizes


# --------------------------------------------------------------------------------------------
# The cache, under GPT-NeoX's file names
# --------------------------------------------------------------------------------------------


def index_map_paths(
    dataset_prefix: str | os.PathLike,
    out_dir: str | os.PathLike,
    num_samples: int,
    seq_length: int,
    seed: int,
    name: str = DEFAULT_NAME,
) -> IndexMapPaths:
    """GPT-NeoX's cache file names, placed in ``out_dir``.

    ``{basename(prefix)}_{name}_indexmap_{num_samples}ns_{seq_length}sl_{seed}s_{doc,sample,
    shuffle}_idx.npy``. GPT-NeoX v1.0 looks for them next to the dataset (``out_dir`` =
    the prefix's directory); copy or link them there for it to reuse them.
    """
    stem = (
        f"{Path(dataset_prefix).name}_{name}_indexmap_"
        f"{int(num_samples)}ns_{int(seq_length)}sl_{int(seed)}s"
    )
    out_dir = Path(out_dir)
    return IndexMapPaths(
        *(out_dir / f"{stem}_{kind}_idx.npy" for kind in ("doc", "sample", "shuffle"))
    )


def build_index_maps(
    dataset_prefix: str | os.PathLike,
    out_dir: str | os.PathLike,
    num_samples: int,
    seq_length: int,
    seed: int,
    *,
    name: str = DEFAULT_NAME,
) -> IndexMapPaths:
    """Build (or reuse) GPT-NeoX v1.0's index maps of the dataset ``{dataset_prefix}.idx``.

    A complete, consistent cache in ``out_dir`` is reused. An unreadable or inconsistent one
    (truncated file, wrong dtype or shape) is rebuilt with a ``UserWarning`` naming the file.
    Each file is written under a temporary name and renamed when complete, ``shuffle_idx`` last.
    Raises ``FileNotFoundError``/``IndexFormatError`` (from ``indexed.IndexedDataset``) naming
    the file when the dataset cannot be read, ``IndexMapError`` when it holds no tokens.
    """
    paths = index_map_paths(dataset_prefix, out_dir, num_samples, seq_length, seed, name)
    sizes = read_sizes(dataset_prefix)
    tokens_per_epoch = int(sizes.sum(dtype=np.int64))
    if tokens_per_epoch == 0:
        raise IndexMapError(f"{dataset_prefix}.idx: the dataset holds no tokens")
    epochs = num_epochs(tokens_per_epoch, seq_length, num_samples)
    expected = _expected_shapes(
        len(sizes), epochs, total_samples(tokens_per_epoch, seq_length, epochs)
    )
    problem = _cache_problem(paths, expected)
    if problem is None:
        return paths
    if any(p.exists() for p in paths):
        warnings.warn(f"rebuilding GPT-NeoX index maps: {problem}", stacklevel=2)
    Path(out_dir).mkdir(parents=True, exist_ok=True)

    # Same steps and RNG order as GPT-NeoX; each array is saved and dropped as soon as possible
    # so that at most doc_idx + sample_idx (or sample_idx + shuffle_idx) are alive at once.
    rng = np.random.RandomState(seed=seed)
    with atomic_paths(paths.doc_idx, paths.sample_idx, paths.shuffle_idx) as tmps:
        tmp_doc, tmp_sample, tmp_shuffle = tmps
        doc_idx = build_doc_idx(len(sizes), epochs, rng)
        sample_idx = build_sample_idx(sizes, doc_idx, seq_length, epochs, tokens_per_epoch)
        _save_npy(tmp_doc, doc_idx)
        del doc_idx
        _save_npy(tmp_sample, sample_idx)
        shuffle_idx = build_shuffle_idx(sample_idx.shape[0] - 1, rng)
        del sample_idx
        _save_npy(tmp_shuffle, shuffle_idx)
        del shuffle_idx
    return paths


def _expected_shapes(num_documents: int, epochs: int, count: int) -> dict[str, tuple]:
    shuffle_dtype = np.uint32 if count < np.iinfo(np.uint32).max - 1 else np.int64
    return {
        "doc_idx": (np.dtype(np.int32), (num_documents * epochs,)),
        "sample_idx": (np.dtype(np.int32), (count + 1, 2)),
        "shuffle_idx": (np.dtype(shuffle_dtype), (count,)),
    }


def _cache_problem(paths: IndexMapPaths, expected: dict[str, tuple]) -> str | None:
    """Why the cache cannot be reused (naming the file), or None when it can."""
    for field, path in zip(paths._fields, paths, strict=True):
        if not path.is_file():
            return f"{path}: missing"
        try:
            array = np.load(path, mmap_mode="r", allow_pickle=False)
        except (ValueError, OSError, EOFError) as err:
            return f"{path}: unreadable ({err})"
        dtype, shape = expected[field]
        if array.dtype != dtype or array.shape != shape:
            return f"{path}: expected {dtype} {shape}, found {array.dtype} {array.shape}"
        del array
    return None


def _save_npy(path: Path, array: np.ndarray) -> None:
    """Save ``array`` as ``.npy`` to ``path`` exactly (through a handle: no suffix added)."""
    with open(path, "wb") as fh:
        np.save(fh, array, allow_pickle=True)  # GPT-NeoX passes allow_pickle=True; no effect


# --------------------------------------------------------------------------------------------
# Reading the Megatron mmap dataset
# --------------------------------------------------------------------------------------------


def open_dataset(prefix: str | os.PathLike) -> IndexedDataset:
    """Open ``{prefix}.idx``/``.bin`` for reading (``pythia_suite.data.indexed``).

    Raises ``FileNotFoundError`` or ``IndexFormatError`` naming the file (and byte offset).
    """
    return IndexedDataset(prefix)


def read_sizes(prefix: str | os.PathLike) -> np.ndarray:
    """The int32 item sizes of ``{prefix}.idx`` (GPT-NeoX's ``indexed_dataset.sizes``)."""
    return np.asarray(open_dataset(prefix).sizes, dtype=np.int32)


# --------------------------------------------------------------------------------------------
# Samples, batches, fingerprints
# --------------------------------------------------------------------------------------------


class SampleBatches:
    """Batch views shared by every sample source: ``batch``, ``local_batch``.

    Subclasses provide ``__len__`` and ``__getitem__(i) -> int64 array of seq_length + 1``.
    """

    seq_length: int

    def batch(self, step: int, global_batch: int) -> np.ndarray:
        """Samples ``[step * global_batch, (step + 1) * global_batch)`` as a ``(B, seq+1)`` int64
        array: the data iteration ``step`` consumes, whatever the number of GPUs."""
        return self.samples_range(step * global_batch, (step + 1) * global_batch)

    def local_batch(
        self,
        step: int,
        global_batch: int,
        dp_rank: int,
        dp_size: int,
        micro_step: int = 0,
        grad_accum: int = 1,
    ) -> np.ndarray:
        """The rows data-parallel rank ``dp_rank`` of ``dp_size`` reads at ``micro_step`` of
        iteration ``step`` (data-parallel ranks, not the world's: tensor-parallel peers share
        rows). Reads those rows only.

        GPT-NeoX's ``DistributedBatchSampler`` cuts the global batch into ``grad_accum`` chunks of
        ``micro * dp_size`` consecutive samples and gives rank ``r`` the ``r``-th ``micro``
        slice of each, so concatenating ranks then micro-steps gives back ``batch(step)``. With
        ``grad_accum=1`` that is rank ``r``'s block of ``global_batch / dp_size`` rows (what the
        PyTorch trainer reads, accumulating over that block).
        """
        micro, rest = divmod(global_batch, dp_size * grad_accum)
        if rest or not 0 <= dp_rank < dp_size or not 0 <= micro_step < grad_accum:
            raise ValueError(
                f"global_batch {global_batch} must split into grad_accum {grad_accum} x "
                f"dp_size {dp_size} micro-batches; dp_rank {dp_rank}, micro_step {micro_step}"
            )
        first = step * global_batch + micro_step * micro * dp_size + dp_rank * micro
        return self.samples_range(first, first + micro)

    def samples_range(self, start: int, stop: int) -> np.ndarray:
        """Samples ``[start, stop)`` stacked as a ``(stop - start, seq_length + 1)`` int64 array."""
        if not 0 <= start <= stop <= len(self):
            raise IndexError(f"samples [{start}, {stop}) outside [0, {len(self)})")
        out = np.empty((stop - start, self.seq_length + 1), dtype=np.int64)
        for row, i in enumerate(range(start, stop)):
            out[row] = self[i]
        return out

    def __len__(self) -> int:  # pragma: no cover - abstract
        raise NotImplementedError

    def __getitem__(self, i: int) -> np.ndarray:  # pragma: no cover - abstract
        raise NotImplementedError


class GPTNeoXSamples(SampleBatches):
    """Training samples of a Megatron dataset in GPT-NeoX v1.0's order (a batch viewer).

    ``samples[i]`` is global sample ``i`` (int64, ``seq_length + 1`` tokens), exactly what
    GPT-NeoX's ``GPT2Dataset.__getitem__(i)`` returns as ``"text"``. The index maps are built in
    ``order_dir`` on first use (see ``build_index_maps``) and memory-mapped afterwards.
    """

    def __init__(
        self,
        dataset_prefix: str | os.PathLike,
        order_dir: str | os.PathLike,
        num_samples: int,
        seq_length: int,
        seed: int,
        *,
        name: str = DEFAULT_NAME,
    ):
        self.seq_length = int(seq_length)
        self.num_samples = int(num_samples)
        self.paths = build_index_maps(
            dataset_prefix, order_dir, num_samples, seq_length, seed, name=name
        )
        self.dataset = open_dataset(dataset_prefix)
        self.doc_idx = np.load(self.paths.doc_idx, mmap_mode="r")
        self.sample_idx = np.load(self.paths.sample_idx, mmap_mode="r")
        self.shuffle_idx = np.load(self.paths.shuffle_idx, mmap_mode="r")

    def __len__(self) -> int:
        # GPT2Dataset.__len__: min(len(shuffle_idx) - 1, len(sample_idx) - 1)
        return min(self.shuffle_idx.shape[0] - 1, self.sample_idx.shape[0] - 1)

    def __getitem__(self, i: int) -> np.ndarray:
        n = len(self)
        if not -n <= i < n:
            raise IndexError(f"sample {i} outside [0, {n})")
        j = int(self.shuffle_idx[i % n])
        (first_doc, first_offset), (last_doc, last_offset) = self.sample_idx[j : j + 2].tolist()
        get = self.dataset.get
        if first_doc == last_doc:
            tokens = get(int(self.doc_idx[first_doc]), first_offset, last_offset - first_offset + 1)
        else:
            pieces = [get(int(self.doc_idx[first_doc]), first_offset)]
            pieces += [get(int(self.doc_idx[k])) for k in range(first_doc + 1, last_doc)]
            pieces.append(get(int(self.doc_idx[last_doc]), 0, last_offset + 1))
            tokens = np.concatenate(pieces)
        if len(tokens) != self.seq_length + 1:  # cannot happen with consistent index maps
            raise IndexMapError(
                f"{self.paths.sample_idx}: sample {j} has {len(tokens)} tokens, "
                f"expected {self.seq_length + 1}"
            )
        return tokens.astype(np.int64)


def token_bytes(tokens: np.ndarray) -> bytes:
    """What the data-order fingerprint hashes of an integer array: its ids as little-endian
    int64, in C order (the shape does not count). Raises ``TypeError`` for non-integer arrays."""
    array = np.asarray(tokens)
    if array.dtype.kind not in "iu":
        raise TypeError(f"fingerprint needs integer token ids, got dtype {array.dtype}")
    return np.ascontiguousarray(array, dtype="<i8").tobytes()


def fingerprint(tokens: np.ndarray | Iterable[np.ndarray]) -> str:
    """Data-order fingerprint: hex sha256 of the token ids as little-endian int64, in C order.

    The one fingerprint: the trainer records it for every step's global batch and for the
    segment's batches together (``trainer_state.json``'s ``data_fingerprint``), and the report
    compares runs by it. Accepts one integer array (any shape; only the ids and their order
    count, not the shape) or an iterable of them, hashed as their concatenation:
    ``fingerprint([a, b]) == fingerprint(np.concatenate([a.ravel(), b.ravel()]))``. Raises
    ``TypeError`` for non-integer arrays.
    """
    digest = hashlib.sha256()
    arrays = [tokens] if isinstance(tokens, np.ndarray) else tokens
    for array in arrays:
        digest.update(token_bytes(array))
    return digest.hexdigest()


def fingerprint_steps(
    samples: SampleBatches, first_step: int, last_step: int, global_batch: int
) -> str:
    """``fingerprint`` of the batches of iterations ``first_step <= s < last_step``.

    Half-open like a checkpoint segment: the segment ``(a, b]`` (load ``step{a}``, write
    ``step{b}``) runs iterations ``a .. b-1``, so its fingerprint is
    ``fingerprint_steps(samples, a, b, B)``. Streams one batch at a time.
    """
    if last_step < first_step:
        raise ValueError(f"last_step {last_step} < first_step {first_step}")
    return fingerprint(samples.batch(s, global_batch) for s in range(first_step, last_step))


def build_index_maps_with_record(
    dataset_prefix: str, output: str | os.PathLike, *, num_samples: int, seq_length: int, seed: int
) -> None:
    """``build_index_maps`` of ``dataset_prefix`` into the directory ``output`` (complete or
    absent), with its provenance record."""
    from pythia_suite.atomic import atomic_directory
    from pythia_suite.provenance import Recorder

    out = Path(output)
    settings = {"num_samples": num_samples, "seq_length": seq_length, "seed": seed}
    recorder = Recorder(out, "index-maps", settings, [Path(dataset_prefix + ".bin")])
    with atomic_directory(out) as tmp:
        build_index_maps(dataset_prefix, tmp, **settings)
    recorder.write()
