"""The document table: where each document of a tokenized dataset came from.

One row per document of the merged dataset, in dataset order (row ``d`` is document ``d`` of the
``.idx``, the id ``doc_idx`` shuffles): source shard, record (1-based line) in the shard, Pile
subset (``meta.pile_set_name`` where present) and token count; for the deduped variant also the
document's id in the standard dataset, so that the two join. Written at tokenization: each
tokenized shard gets ``PREFIX.documents.npz`` (record, subset, text hash of the documents it
kept, in order), and ``build_document_table`` joins those into a directory of ``.npy`` columns
that open memory-mapped (``DocumentTable``).

The deduped-to-standard join matches the text hash (blake2b, 8 bytes) of each deduped document
with the standard table's: the dedup stage copies kept lines verbatim, and among exact duplicates
it keeps the first in (shard, line) order, which is the first standard row with that hash.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from pythia_suite.atomic import write_bytes_atomic, write_json_atomic

__all__ = [
    "NO_SUBSET",
    "DocumentTable",
    "DocumentTableError",
    "build_document_table",
    "read_shard_documents",
    "shard_documents_path",
    "text_hash",
    "write_shard_documents",
]

#: The subset name of documents without ``meta.pile_set_name``.
NO_SUBSET = "(none)"
_COLUMNS = ("shard", "record", "subset", "tokens", "text_hash")


class DocumentTableError(ValueError):
    """A document table disagrees with its dataset or inputs; the message names the file."""


def shard_documents_path(prefix: str | os.PathLike) -> Path:
    """``PREFIX.documents.npz``: the per-shard table written beside a tokenized shard."""
    return Path(f"{os.fspath(prefix)}.documents.npz")


def text_hash(text: str) -> int:
    """The 64-bit content hash of a document's text (blake2b, 8 bytes, little-endian)."""
    return int.from_bytes(hashlib.blake2b(text.encode("utf-8"), digest_size=8).digest(), "little")


def subset_of(document: dict) -> str:
    """A Pile document's subset: ``meta.pile_set_name``, or ``NO_SUBSET``."""
    meta = document.get("meta")
    name = meta.get("pile_set_name") if isinstance(meta, dict) else None
    return name if isinstance(name, str) and name else NO_SUBSET


def write_shard_documents(
    path: str | os.PathLike,
    records: Sequence[int],
    subset_codes: Sequence[int],
    subset_names: Sequence[str],
    hashes: Sequence[int],
) -> Path:
    """Write one shard's table (kept documents, in order) atomically: 1-based record numbers,
    subset codes into ``subset_names``, text hashes."""
    buffer = io.BytesIO()
    np.savez(
        buffer,
        record=np.asarray(records, dtype=np.int64),
        subset=np.asarray(subset_codes, dtype=np.int32),
        subset_names=np.asarray(list(subset_names), dtype=str),
        text_hash=np.asarray(hashes, dtype=np.uint64),
    )
    return write_bytes_atomic(path, buffer.getvalue())


def read_shard_documents(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """A shard's table as arrays; subset codes resolved to names. Raises ``FileNotFoundError``,
    ``DocumentTableError`` naming the file when it is malformed."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such shard document table")
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {k: data[k] for k in ("record", "subset", "subset_names", "text_hash")}
    except (ValueError, KeyError, OSError) as err:
        raise DocumentTableError(f"{path}: not a shard document table ({err})") from None
    n = len(arrays["record"])
    if len(arrays["subset"]) != n or len(arrays["text_hash"]) != n:
        raise DocumentTableError(f"{path}: columns of different lengths")
    return arrays


def build_document_table(
    shard_tables: Sequence[str | os.PathLike],
    shard_ids: Sequence[int],
    sizes: np.ndarray,
    out_dir: str | os.PathLike,
    *,
    standard: str | os.PathLike | None = None,
) -> dict:
    """Join the shard tables (in dataset order) into the table of a dataset whose document
    sizes are ``sizes``, written into the existing directory ``out_dir``.

    ``standard``: the standard variant's table directory; adds ``standard_id`` (int64, -1 where
    no standard document has the same text). Returns the table's metadata.

    Raises ``DocumentTableError`` when the rows do not match the dataset's documents.
    """
    out_dir = Path(out_dir)
    parts = [read_shard_documents(p) for p in shard_tables]
    rows = sum(len(p["record"]) for p in parts)
    if rows != len(sizes):
        raise DocumentTableError(
            f"{out_dir}: the shard tables list {rows} documents, the dataset has {len(sizes)}"
        )
    names = sorted({str(n) for p in parts for n in p["subset_names"]})
    if len(names) > 255:
        raise DocumentTableError(f"{out_dir}: {len(names)} subsets, at most 255 fit uint8")
    code = {name: k for k, name in enumerate(names)}
    columns = {
        "shard": np.concatenate(
            [
                np.full(len(p["record"]), s, dtype=np.uint16)
                for p, s in zip(parts, shard_ids, strict=True)
            ]
        ),
        "record": np.concatenate([p["record"] for p in parts]),
        "subset": np.concatenate(
            [
                np.asarray([code[str(n)] for n in p["subset_names"]], dtype=np.uint8)[p["subset"]]
                if len(p["record"])
                else np.zeros(0, dtype=np.uint8)
                for p in parts
            ]
        ),
        "tokens": np.asarray(sizes, dtype=np.int32),
        "text_hash": np.concatenate([p["text_hash"] for p in parts]),
    }
    meta = {"subsets": names, "shards": [int(s) for s in shard_ids], "rows": rows}
    if standard is not None:
        reference = DocumentTable(standard)
        columns["standard_id"] = _join_on_hash(columns["text_hash"], reference.text_hash)
        meta["standard_unmatched"] = int((columns["standard_id"] < 0).sum())
    for name, array in columns.items():
        np.save(out_dir / f"{name}.npy", array)
    write_json_atomic(out_dir / "table.json", meta, sort_keys=False)
    return meta


def _join_on_hash(hashes: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """For each hash, the first reference row with the same hash, or -1."""
    order = np.argsort(reference, kind="stable")
    sorted_ref = np.asarray(reference)[order]
    at = np.searchsorted(sorted_ref, hashes)
    at_clipped = np.minimum(at, len(sorted_ref) - 1)
    found = (at < len(sorted_ref)) & (sorted_ref[at_clipped] == hashes)
    return np.where(found, order[at_clipped], -1).astype(np.int64)


class DocumentTable:
    """A document table directory, memory-mapped: ``shard``, ``record``, ``subset`` (codes into
    ``subsets``), ``tokens``, ``text_hash`` and, for the deduped variant, ``standard_id``."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        meta_path = self.path / "table.json"
        if not meta_path.is_file():
            raise FileNotFoundError(f"{meta_path}: no document table here")
        self.meta = json.loads(meta_path.read_text())
        self.subsets: list[str] = self.meta["subsets"]
        for name in (*_COLUMNS, "standard_id"):
            file = self.path / f"{name}.npy"
            if name == "standard_id" and not file.exists():
                setattr(self, name, None)
                continue
            setattr(self, name, np.load(file, mmap_mode="r"))

    def __len__(self) -> int:
        return len(self.record)

    def row(self, document: int) -> dict:
        """Shard, record, subset name (and standard id) of one document."""
        out = {
            "shard": int(self.shard[document]),
            "record": int(self.record[document]),
            "subset": self.subsets[int(self.subset[document])],
        }
        if self.standard_id is not None:
            out["standard_id"] = int(self.standard_id[document])
        return out


def build_document_table_with_record(
    dataset_prefix: str, tables: Sequence[str], output: str | os.PathLike, *, standard: str | None
) -> None:
    """The document table of a variant's dataset (``data.documents``) from its shards'
    ``tables``, in the directory ``output`` (complete or absent), with its provenance record."""
    from pythia_suite.atomic import atomic_directory
    from pythia_suite.data.order import read_sizes
    from pythia_suite.provenance import Recorder

    out = Path(output)
    inputs = [Path(dataset_prefix + ".bin"), *(Path(t) for t in tables)]
    recorder = Recorder(out, "document-table", {}, inputs)
    with atomic_directory(out) as tmp:
        recorder.extra = build_document_table(
            tables,
            range(len(tables)),  # in data.raw.shards order: shard id = index
            read_sizes(dataset_prefix),
            tmp,
            standard=standard,
        )
    recorder.write()
