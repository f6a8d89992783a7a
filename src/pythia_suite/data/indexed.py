"""Megatron mmap indexed datasets (``PREFIX.bin`` + ``PREFIX.idx``), as GPT-NeoX v1.0 writes them.

Layout (little-endian). ``PREFIX.bin`` is the concatenation of every item's tokens, no header.
``PREFIX.idx``::

    offset 0   magic   b"MMIDIDX\\x00\\x00"  (9 bytes)
    offset 9   u64     version = 1
    offset 17  u8      dtype code (1 uint8, 2 int8, 3 int16, 4 int32, 5 int64, 8 uint16)
    offset 18  u64     N, the number of items
    offset 26  u64     D, the length of doc_idx
    offset 34  int32[N] sizes (tokens per item)
               int64[N] pointers (byte offset of each item in .bin)
               int64[D] doc_idx (0, then the item count at the end of each document)

Pythia stores one item per document, so ``doc_idx == arange(N + 1)``; the writer also supports
documents made of several items (``add_item`` + ``end_document``) as Megatron does.

Why this module instead of megatron-core: megatron-core (0.16.1) reads and writes this layout on
CPU, but importing it costs ~3 s per process and prints warnings about missing Apex and
Transformer Engine, and its float dtype codes are swapped relative to GPT-NeoX's (6/7 mean
float64/float32 there, float32/float64 in GPT-NeoX). Token datasets only need the integer codes,
on which both agree, so this module accepts integer dtypes only. The layout is small enough to
own; the tests check that megatron-core reads these files identically and vice versa.

Writing is atomic: ``.bin`` and ``.idx`` are written under temporary names and renamed only by
``finalize()`` (``.bin`` first, so a crash never leaves an ``.idx`` describing a missing or
partial ``.bin``). Reading validates the header, the index's length, the pointers and the
``.bin``'s size, and raises :class:`IndexFormatError` naming the file and byte offset.
"""

from __future__ import annotations

import os
import struct
from array import array
from pathlib import Path

import numpy as np

from pythia_suite.atomic import PendingFiles

__all__ = [
    "DTYPE_CODES",
    "IndexFormatError",
    "IndexedDataset",
    "IndexedDatasetWriter",
    "best_dtype",
    "data_file_path",
    "index_file_path",
]

MAGIC = b"MMIDIDX\x00\x00"
VERSION = 1
HEADER_SIZE = len(MAGIC) + 8 + 1 + 8 + 8  # 34 bytes
# Integer codes shared by GPT-NeoX v1.0 and megatron-core. 6 and 7 (floats) are deliberately
# absent: the two projects disagree on which is float32 and which float64.
DTYPE_CODES: dict[int, np.dtype] = {
    1: np.dtype(np.uint8),
    2: np.dtype(np.int8),
    3: np.dtype(np.int16),
    4: np.dtype(np.int32),
    5: np.dtype(np.int64),
    8: np.dtype(np.uint16),
}
_CODE_OF_DTYPE = {dtype: code for code, dtype in DTYPE_CODES.items()}


class IndexFormatError(ValueError):
    """An ``.idx``/``.bin`` pair is malformed; names the file and the byte offset of the problem."""

    def __init__(self, path: str | os.PathLike, offset: int, reason: str):
        self.path = str(path)
        self.offset = offset
        self.reason = reason
        super().__init__(f"{self.path}, offset {offset}: {reason}")


def data_file_path(prefix: str | os.PathLike) -> Path:
    """``PREFIX.bin``."""
    return Path(f"{os.fspath(prefix)}.bin")


def index_file_path(prefix: str | os.PathLike) -> Path:
    """``PREFIX.idx``."""
    return Path(f"{os.fspath(prefix)}.idx")


def best_dtype(vocab_size: int) -> np.dtype:
    """The dtype GPT-NeoX's preprocess_data.py picks: uint16 below 65500 tokens, else int32."""
    return np.dtype(np.uint16) if vocab_size < 65500 else np.dtype(np.int32)


def _dtype_code(dtype) -> int:
    dtype = np.dtype(dtype)
    if dtype not in _CODE_OF_DTYPE:
        supported = ", ".join(str(d) for d in DTYPE_CODES.values())
        raise ValueError(f"unsupported token dtype {dtype}; supported: {supported}")
    return _CODE_OF_DTYPE[dtype]


class IndexedDatasetWriter:
    """Write an mmap indexed dataset item by item; nothing appears under ``prefix`` until
    :meth:`finalize`.

    Use as a context manager: leaving the block normally finalizes, an exception removes the
    temporary files. ``add_document(tokens)`` is the Pythia case (one item per document).

    Raises (from ``add_item``/``add_document``):
        ValueError: tokens are not a 1-D integer array, or hold values the dtype cannot store.
    """

    def __init__(self, prefix: str | os.PathLike, dtype=np.uint16):
        self.prefix = Path(prefix)
        self.dtype = np.dtype(dtype)
        self._code = _dtype_code(self.dtype)
        self._info = np.iinfo(self.dtype)
        self._bin_path = data_file_path(prefix)
        self._idx_path = index_file_path(prefix)
        # .bin renamed first: the .idx marks the pair complete.
        self._pending = PendingFiles(self._bin_path, self._idx_path)
        self._tmp_bin, self._tmp_idx = self._pending.tmps
        self._bin = open(self._tmp_bin, "wb")
        self._sizes = array("q")  # compact even for hundreds of millions of items
        self._doc_idx = array("q", [0])
        self._closed = False

    def __enter__(self) -> IndexedDatasetWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.finalize()
        else:
            self.abort()

    def add_item(self, tokens) -> None:
        """Append one item (a 1-D integer array or sequence of token ids)."""
        tokens = np.asarray(tokens)
        if tokens.ndim != 1:
            raise ValueError(f"{self._bin_path}: item must be 1-D, got shape {tokens.shape}")
        if tokens.size and tokens.dtype != self.dtype:
            if tokens.dtype.kind not in "iu":
                raise ValueError(f"{self._bin_path}: item has non-integer dtype {tokens.dtype}")
            low, high = int(tokens.min()), int(tokens.max())
            if low < self._info.min or high > self._info.max:
                bad = low if low < self._info.min else high
                raise ValueError(
                    f"{self._bin_path}: token id {bad} of item {len(self._sizes)} does not fit "
                    f"dtype {self.dtype} (range {self._info.min}..{self._info.max})"
                )
        self._bin.write(tokens.astype(self.dtype, copy=False).tobytes(order="C"))
        self._sizes.append(tokens.size)

    def end_document(self) -> None:
        """Close the current document (items added since the previous call)."""
        self._doc_idx.append(len(self._sizes))

    def add_document(self, tokens) -> None:
        """Append a document made of a single item."""
        self.add_item(tokens)
        self.end_document()

    def add_documents(self, tokens: np.ndarray, sizes: np.ndarray) -> None:
        """Append many single-item documents at once: ``tokens`` is their concatenation in this
        writer's dtype, ``sizes`` the length of each.

        Raises:
            ValueError: ``tokens`` has another dtype, or ``sizes`` does not sum to its length.
        """
        sizes = np.asarray(sizes, dtype=np.int64)
        if tokens.dtype != self.dtype:
            raise ValueError(f"{self._bin_path}: tokens are {tokens.dtype}, expected {self.dtype}")
        if tokens.ndim != 1 or int(sizes.sum()) != tokens.size:
            raise ValueError(
                f"{self._bin_path}: sizes sum to {int(sizes.sum())} but {tokens.size} tokens given"
            )
        first = len(self._sizes)
        self._bin.write(tokens.tobytes())
        self._sizes.extend(sizes.tolist())
        self._doc_idx.extend(range(first + 1, first + 1 + sizes.size))

    def add_items_from(self, dataset: IndexedDataset, chunk_items: int = 65536) -> None:
        """Append every item and document boundary of ``dataset``, copying ``.bin`` bytes in
        chunks (never the whole dataset in memory).

        Raises:
            ValueError: ``dataset`` has a different dtype.
        """
        if dataset.dtype != self.dtype:
            raise ValueError(
                f"{dataset.prefix}: dtype {dataset.dtype} differs from the output's {self.dtype}"
            )
        base = len(self._sizes)
        with open(dataset.bin_path, "rb") as src:
            for start in range(0, len(dataset), chunk_items):
                sizes = dataset.sizes[start : start + chunk_items]
                nbytes = int(sizes.sum(dtype=np.int64)) * self.dtype.itemsize
                data = src.read(nbytes)
                if len(data) != nbytes:
                    raise IndexFormatError(dataset.bin_path, src.tell(), "unexpected end of file")
                self._bin.write(data)
                self._sizes.extend(sizes.astype(np.int64).tolist())
        # Skip the dataset's leading 0: our own doc_idx already ends at `base`.
        self._doc_idx.extend((dataset.doc_idx[1:] + base).tolist())

    def finalize(self) -> None:
        """Write the index and rename both files into place.

        Raises:
            ValueError: items were added after the last ``end_document``.
        """
        if self._closed:
            return
        if self._doc_idx[-1] != len(self._sizes):
            self.abort()
            raise ValueError(f"{self._bin_path}: items added after the last end_document()")
        self._bin.close()
        sizes = np.frombuffer(self._sizes, dtype=np.int64)
        if sizes.size and sizes.max() > np.iinfo(np.int32).max:
            self.abort()
            raise ValueError(f"{self._bin_path}: an item exceeds 2**31 - 1 tokens")
        pointers = np.zeros(sizes.size, dtype=np.int64)
        np.cumsum(sizes[:-1] * self.dtype.itemsize, out=pointers[1:])
        doc_idx = np.frombuffer(self._doc_idx, dtype=np.int64)
        with open(self._tmp_idx, "wb") as idx:
            idx.write(MAGIC)
            idx.write(struct.pack("<QBQQ", VERSION, self._code, sizes.size, doc_idx.size))
            idx.write(sizes.astype("<i4").tobytes())
            idx.write(pointers.astype("<i8").tobytes())
            idx.write(doc_idx.astype("<i8").tobytes())
        # A stale .idx from an earlier run must not describe the new .bin while we rename.
        self._idx_path.unlink(missing_ok=True)
        self._pending.commit()
        self._closed = True

    def abort(self) -> None:
        """Discard everything written so far (temporary files removed)."""
        if self._closed:
            return
        self._bin.close()
        self._pending.discard()
        self._closed = True


class IndexedDataset:
    """Read-only view of an mmap indexed dataset.

    ``ds[i]`` and ``ds.get(i, offset, length)`` return arrays backed by the memory map (they
    stay valid while referenced, even after the dataset object is gone).

    Raises (on construction):
        FileNotFoundError: ``PREFIX.idx`` or ``PREFIX.bin`` is missing.
        IndexFormatError: bad magic, unsupported version or dtype code, an index whose length
            does not match its header, inconsistent pointers or doc_idx, or a ``.bin`` whose
            size differs from what the index describes.
    """

    def __init__(self, prefix: str | os.PathLike):
        self.prefix = Path(prefix)
        self.idx_path = index_file_path(prefix)
        self.bin_path = data_file_path(prefix)
        n_items, n_docs, code = self._read_header()
        self.dtype = DTYPE_CODES[code]
        index = np.memmap(self.idx_path, dtype=np.uint8, mode="r")
        offset = HEADER_SIZE
        self.sizes = np.frombuffer(index, dtype="<i4", count=n_items, offset=offset)
        offset += 4 * n_items
        self.pointers = np.frombuffer(index, dtype="<i8", count=n_items, offset=offset)
        offset += 8 * n_items
        self.doc_idx = np.frombuffer(index, dtype="<i8", count=n_docs, offset=offset)
        self._validate_index()
        self._bin = self._map_bin()

    def _read_header(self) -> tuple[int, int, int]:
        with open(self.idx_path, "rb") as fh:
            header = fh.read(HEADER_SIZE)
        path = self.idx_path
        if header[: len(MAGIC)] != MAGIC[: len(header)]:
            raise IndexFormatError(path, 0, f"bad magic {header[:9]!r}, expected {MAGIC!r}")
        if len(header) < HEADER_SIZE:
            raise IndexFormatError(path, len(header), f"header truncated ({len(header)} bytes)")
        version, code, n_items, n_docs = struct.unpack("<QBQQ", header[len(MAGIC) :])
        if version != VERSION:
            raise IndexFormatError(path, 9, f"unsupported version {version}, expected 1")
        if code not in DTYPE_CODES:
            why = (
                " (float codes are ambiguous between GPT-NeoX and Megatron)"
                if code in (6, 7)
                else ""
            )
            raise IndexFormatError(path, 17, f"unsupported dtype code {code}{why}")
        expected = HEADER_SIZE + 12 * n_items + 8 * n_docs
        actual = path.stat().st_size
        if actual != expected:
            raise IndexFormatError(
                path,
                min(actual, expected),
                f"index is {actual} bytes but its header (N={n_items} items, "
                f"D={n_docs} doc_idx entries) requires {expected}",
            )
        return n_items, n_docs, code

    def _validate_index(self) -> None:
        path, n = self.idx_path, len(self.sizes)
        sizes_at = HEADER_SIZE
        pointers_at = sizes_at + 4 * n
        doc_idx_at = pointers_at + 8 * n
        if n and self.sizes.min() < 0:
            bad = int(np.argmin(self.sizes))
            raise IndexFormatError(path, sizes_at + 4 * bad, f"negative size for item {bad}")
        expected = np.zeros(n, dtype=np.int64)
        np.cumsum(self.sizes[:-1].astype(np.int64) * self.dtype.itemsize, out=expected[1:])
        mismatch = np.flatnonzero(self.pointers != expected)
        if mismatch.size:
            bad = int(mismatch[0])
            raise IndexFormatError(
                path,
                pointers_at + 8 * bad,
                f"pointer of item {bad} is {int(self.pointers[bad])}, "
                f"expected {int(expected[bad])}",
            )
        doc = self.doc_idx
        if doc.size == 0 or doc[0] != 0:
            raise IndexFormatError(path, doc_idx_at, "doc_idx must start with 0")
        if doc[-1] != n or (doc.size > 1 and np.any(np.diff(doc) < 0)):
            raise IndexFormatError(
                path, doc_idx_at, f"doc_idx must be non-decreasing and end at N={n}"
            )

    def _map_bin(self) -> np.ndarray:
        n_bytes = int(self.sizes.sum(dtype=np.int64)) * self.dtype.itemsize
        actual = self.bin_path.stat().st_size
        if actual != n_bytes:
            raise IndexFormatError(
                self.bin_path,
                min(actual, n_bytes),
                f"data file is {actual} bytes but {self.idx_path.name} describes {n_bytes}",
            )
        if n_bytes == 0:
            return np.zeros(0, dtype=self.dtype)
        return np.memmap(self.bin_path, dtype=self.dtype, mode="r")

    def __len__(self) -> int:
        return len(self.sizes)

    def _check(self, i: int) -> int:
        n = len(self.sizes)
        if not -n <= i < n:
            raise IndexError(f"{self.prefix}: item {i} out of range for {n} items")
        return i % n

    def get(self, i: int, offset: int = 0, length: int | None = None) -> np.ndarray:
        """Tokens ``[offset, offset + length)`` of item ``i`` (to the item's end if no length)."""
        i = self._check(i)
        size = int(self.sizes[i])
        if length is None:
            length = size - offset
        if offset < 0 or length < 0 or offset + length > size:
            raise IndexError(
                f"{self.prefix}: tokens [{offset}, {offset + length}) outside item {i} of {size}"
            )
        start = int(self.pointers[i]) // self.dtype.itemsize + offset
        return self._bin[start : start + length]

    def __getitem__(self, i: int) -> np.ndarray:
        return self.get(i)

    @property
    def num_tokens(self) -> int:
        """Total tokens over all items."""
        return int(self.sizes.sum(dtype=np.int64))
