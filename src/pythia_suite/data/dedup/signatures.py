"""Stage 1, per input shard: every document's LSH band hashes, exact-text hash and b-bit
signature, in one ``.npz``."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from pythia_suite.data.dedup.files import check_shard_index, doc_ids, write_npz
from pythia_suite.data.dedup.minhash import (
    MinHasher,
    band_hashes,
    bbit_signatures,
    exact_hash,
    shingle_hashes,
)
from pythia_suite.data.dedup.params import FORMAT_VERSION, LINE_BITS, DedupParams
from pythia_suite.data.shards import iter_documents
from pythia_suite.hashing import sha256_file

# Documents hashed per batch in compute_signatures.
_DOC_BATCH = 2048


@dataclass
class _ShardHashes:
    """What :func:`_hash_shard` collects of one shard, document by document."""

    lines: list[int] = field(default_factory=list)
    exact: list[bytes] = field(default_factory=list)
    nonempty: list[bool] = field(default_factory=list)
    band_blocks: list[np.ndarray] = field(default_factory=list)
    verify_blocks: list[np.ndarray] = field(default_factory=list)
    text_bytes: int = 0


def _hash_batch(hashes: _ShardHashes, texts: list[str], hasher: MinHasher, params: DedupParams):
    """Add the band hashes and b-bit signatures of ``texts`` to ``hashes``."""
    shingled = [shingle_hashes(t, params.ngram) for t in texts]
    hashes.nonempty.extend(len(h) > 0 for h in shingled)
    signatures = hasher.signatures(shingled)
    hashes.band_blocks.append(band_hashes(signatures, params.bands, params.rows))
    if params.verify_bits:
        hashes.verify_blocks.append(bbit_signatures(signatures, params.verify_bits))


def _hash_shard(shard_path: Path, params: DedupParams) -> _ShardHashes:
    """Hash every document of the shard, :data:`_DOC_BATCH` documents at a time.

    Raises:
        FileNotFoundError, DataFormatError: as :func:`pythia_suite.data.shards.iter_documents`.
        ValueError: a line number does not fit 32 bits.
    """
    hasher = MinHasher(params.num_perm, params.seed)
    hashes = _ShardHashes()
    batch: list[str] = []
    for line_no, doc in iter_documents(shard_path):
        if line_no >= 2**LINE_BITS:
            raise ValueError(f"{shard_path}, line {line_no}: more lines than dedup ids can hold")
        text = doc["text"]
        hashes.lines.append(line_no)
        hashes.exact.append(exact_hash(text))
        hashes.text_bytes += len(text.encode("utf-8", "surrogatepass"))
        batch.append(text)
        if len(batch) == _DOC_BATCH:
            _hash_batch(hashes, batch, hasher, params)
            batch = []
    _hash_batch(hashes, batch, hasher, params)
    return hashes


def _signature_arrays(
    hashes: _ShardHashes, shard_index: int, params: DedupParams
) -> dict[str, np.ndarray]:
    """The arrays of the signature file (see :func:`compute_signatures`)."""
    n_docs = len(hashes.lines)
    arrays = {
        "ids": doc_ids(shard_index, np.asarray(hashes.lines, dtype=np.uint64)),
        "bands": np.concatenate(hashes.band_blocks).reshape(n_docs, params.bands),
        "exact": np.frombuffer(b"".join(hashes.exact), dtype="<u8").reshape(n_docs, 2).copy(),
        "has_shingles": np.asarray(hashes.nonempty, dtype=bool),
    }
    if params.verify_bits:
        arrays["verify"] = np.concatenate(hashes.verify_blocks).reshape(n_docs, params.num_perm)
    return arrays


def compute_signatures(
    shard_path: str | os.PathLike,
    shard_index: int,
    out_path: str | os.PathLike,
    params: DedupParams,
) -> dict:
    """Write the LSH band hashes and exact-text hash of every document of one shard.

    The output (``.npz``) holds ``ids`` (uint64, ``shard_index << 32 | line``), ``bands``
    (uint64, ``(n_docs, params.bands)``), ``exact`` (uint64, ``(n_docs, 2)``: 128-bit blake2b of
    the text), ``has_shingles`` (bool: documents without words join only the exact band),
    ``verify`` (with ``params.verify_bits`` > 0: the b-bit signatures of :func:`bbit_signatures`,
    ``(n_docs, num_perm)`` uint8/uint16, which :func:`bucket_band` memory-maps), and
    ``meta.json`` with the parameters and the shard's name, sha256 and document count (which
    :func:`filter_shard` checks, so that a shard changed after hashing is refused).

    Returns the meta dict.

    Raises:
        FileNotFoundError: ``shard_path`` does not exist.
        DataFormatError: a line of the shard is bad or the shard is truncated (file and line).
        ValueError: ``shard_index`` out of range, or a line number does not fit 32 bits.
    """
    check_shard_index(shard_index)
    shard_path = Path(shard_path)
    hashes = _hash_shard(shard_path, params)
    meta = {
        "kind": "signatures",
        "version": FORMAT_VERSION,
        "params": params.to_dict(),
        "shard": {
            "index": shard_index,
            "name": shard_path.name,
            "sha256": sha256_file(shard_path),
            "num_docs": len(hashes.lines),
            "text_bytes": hashes.text_bytes,
        },
    }
    write_npz(out_path, meta, _signature_arrays(hashes, shard_index, params))
    return meta
