"""Stage 2, per band (or group of bands, or hash partition of one) across all shards: documents
with equal band hashes are candidate pairs, kept as edges if their b-bit estimated Jaccard
similarity passes verification."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np

from pythia_suite.data.dedup.files import (
    check_same_params,
    mmap_npz_array,
    read_npz,
    split_ids,
    write_npz,
)
from pythia_suite.data.dedup.minhash import estimate_jaccard
from pythia_suite.data.dedup.params import (
    EXACT_BAND,
    FORMAT_VERSION,
    VERIFY_DTYPES,
    DedupFileError,
)

# Candidate pairs verified at once: 2 x 256k x 128 B (8-bit signatures) = 64 MiB of gathered rows.
_VERIFY_CHUNK = 1 << 18
# Pivots tried per bucket in bucket_band before the members left unmatched stay unlinked (kept).
_MAX_PIVOTS = 8


class _PairVerifier:
    """Estimated Jaccard similarity of candidate pairs from the shards' b-bit signatures.

    The ``ids`` and ``verify`` arrays of every signature file are memory-mapped, so memory does
    not grow with the corpus: pairs are verified in chunks of :data:`_VERIFY_CHUNK`, and each
    chunk gathers its endpoints' rows shard by shard (sorted rows, so each shard's pages are read
    in file order; the pairs of a shard pair s, t are read as s's rows, then t's rows).
    """

    def __init__(self, signature_paths: Mapping[int, Path], params: dict):
        self.ids: dict[int, np.ndarray] = {}
        self.signatures: dict[int, np.ndarray] = {}
        self.bits = params["verify_bits"]
        self.min_jaccard = params["threshold"] - params["verify_margin"]
        self.rows, self.num_perm = params["rows"], params["num_perm"]
        for shard, path in signature_paths.items():
            ids, signatures = mmap_npz_array(path, "ids"), mmap_npz_array(path, "verify")
            if signatures.shape != (len(ids), self.num_perm) or signatures.dtype != np.dtype(
                VERIFY_DTYPES[self.bits]
            ):
                raise DedupFileError(
                    path,
                    f"verify array has shape {signatures.shape} and dtype {signatures.dtype}, "
                    f"expected ({len(ids)}, {self.num_perm}) {np.dtype(VERIFY_DTYPES[self.bits])}",
                )
            self.ids[shard], self.signatures[shard] = ids, signatures

    def _gather(self, ids: np.ndarray) -> np.ndarray:
        """The b-bit signature rows of packed document ``ids``."""
        shard_of, _ = split_ids(ids)
        out = np.empty((len(ids), self.num_perm), dtype=VERIFY_DTYPES[self.bits])
        for shard in np.unique(shard_of).tolist():
            where = np.flatnonzero(shard_of == shard)
            rows = np.searchsorted(self.ids[shard], ids[where])
            order = np.argsort(rows, kind="stable")
            out[where[order]] = self.signatures[shard][rows[order]]
        return out

    def similar(self, src: np.ndarray, dst: np.ndarray, band: int) -> np.ndarray:
        """Whether each pair's estimate, outside ``band``'s rows, is >= threshold - margin."""
        columns = np.ones(self.num_perm, dtype=bool)
        columns[band * self.rows : (band + 1) * self.rows] = False
        out = np.empty(len(src), dtype=bool)
        # Chunks in dst order: the dst rows are read in one sweep over each shard's file (each
        # page once, without relying on the page cache); the src rows are bucket pivots, fewer.
        by_dst = np.argsort(dst, kind="stable")
        for start in range(0, len(src), _VERIFY_CHUNK):
            chunk = by_dst[start : start + _VERIFY_CHUNK]
            a, b = self._gather(src[chunk]), self._gather(dst[chunk])
            out[chunk] = estimate_jaccard(a, b, self.bits, columns) >= self.min_jaccard
        return out


@dataclass
class _BandEdges:
    """What :func:`_bucket_edges` found in one band."""

    src: np.ndarray
    dst: np.ndarray
    rejected_src: np.ndarray
    rejected_dst: np.ndarray
    largest_bucket: int
    unverified: int  # members left unlinked after _MAX_PIVOTS pivots


def _bucket_edges(ids: np.ndarray, keys: np.ndarray, similar=None) -> _BandEdges:
    """Edges ``(pivot, member)`` joining the documents of each bucket; rows with equal keys
    (``(n, k)`` uint64) form a bucket.

    Without ``similar``, a star from each bucket's first id (in (shard, line) order) to its
    other ids: enough for connectivity, and fewer edges than documents. With ``similar(src,
    dst) -> bool array``, each member is checked against the bucket's first document and joins
    it if similar; the members rejected are checked against the first of them, and so on for
    up to :data:`_MAX_PIVOTS` pivots per bucket (all buckets at once per round), after which
    members still unmatched stay unlinked, i.e. kept. A member is joined to the first pivot it
    is similar to, which is the document its cluster keeps unless another band links further.
    """
    empty = np.empty(0, dtype=np.uint64)
    if len(ids) == 0:
        return _BandEdges(empty, empty, empty, empty, 0, 0)
    # lexsort: last key is primary; ids last-but-primary order makes the result deterministic.
    order = np.lexsort((ids, *[keys[:, j] for j in range(keys.shape[1] - 1, -1, -1)]))
    sorted_keys = keys[order]
    sorted_ids = ids[order]
    new_bucket = np.ones(len(ids), dtype=bool)
    new_bucket[1:] = np.any(sorted_keys[1:] != sorted_keys[:-1], axis=1)
    bucket_start = np.flatnonzero(new_bucket)
    largest = int(np.diff(np.append(bucket_start, len(ids))).max())
    bucket_of = np.cumsum(new_bucket) - 1
    pending = np.flatnonzero(~new_bucket)  # sorted rows, grouped by bucket
    pivot = bucket_start.copy()  # current pivot row of each bucket
    if similar is None:
        src = sorted_ids[pivot[bucket_of[pending]]]
        return _BandEdges(src, sorted_ids[pending], empty, empty, largest, 0)
    src, dst, rejected_src, rejected_dst = [], [], [], []
    for _ in range(_MAX_PIVOTS):
        if not len(pending):
            break
        pivot_ids, member_ids = sorted_ids[pivot[bucket_of[pending]]], sorted_ids[pending]
        ok = similar(pivot_ids, member_ids)
        src.append(pivot_ids[ok])
        dst.append(member_ids[ok])
        rejected_src.append(pivot_ids[~ok])
        rejected_dst.append(member_ids[~ok])
        # The first rejected member of each bucket becomes its next pivot.
        left = pending[~ok]
        first = np.ones(len(left), dtype=bool)
        first[1:] = bucket_of[left[1:]] != bucket_of[left[:-1]]
        pivot[bucket_of[left[first]]] = left[first]
        pending = left[~first]
    return _BandEdges(
        *(np.concatenate(x) if x else empty for x in (src, dst, rejected_src, rejected_dst)),
        largest,
        len(pending),
    )


def bands_of_group(num_bands: int, groups: int, group: int) -> list[int]:
    """The bands bucket job ``group`` of ``groups`` takes: those ``b`` with ``b % groups ==
    group``, and :data:`EXACT_BAND` in group 0 (the config's ``data.dedup.band_groups``)."""
    bands = [b for b in range(num_bands) if b % groups == group]
    if group == 0:
        bands.append(EXACT_BAND)  # exact duplicates: the whole-text hash, in the first group
    return bands


def _bands_asked(band: int | Sequence[int], part: int, num_parts: int) -> list[int]:
    """``band`` as a sorted list of distinct bands.

    Raises:
        ValueError: no band, or ``part`` not in ``range(num_parts)``.
    """
    bands = [band] if isinstance(band, int) else sorted(set(band))
    if not bands:
        raise ValueError("no band given")
    if not 0 <= part < num_parts:
        raise ValueError(f"need 0 <= part < num_parts, got part={part}, num_parts={num_parts}")
    return bands


@dataclass
class _BandKeys:
    """What :func:`_read_band_keys` gathers from the signature files."""

    params: dict
    shards: dict[int, dict]  # shard index -> the signature file's shard record
    paths_by_shard: dict[int, Path]
    ids: dict[int, list[np.ndarray]]  # band -> document ids, one array per signature file
    keys: dict[int, list[np.ndarray]]  # band -> their bucket keys, (n, k) uint64


def _keys_of_band(
    arrays: dict, band: int, num_bands: int, part: int, num_parts: int
) -> tuple[np.ndarray, np.ndarray]:
    """Ids and bucket keys of one signature file's documents in ``band`` and in ``part``.

    Raises:
        ValueError: ``band`` is neither :data:`EXACT_BAND` nor in ``range(num_bands)``.
    """
    if band != EXACT_BAND and not 0 <= band < num_bands:
        raise ValueError(f"band {band} out of range: {num_bands} bands (or EXACT_BAND)")
    if band == EXACT_BAND:
        keys, keep = arrays["exact"], np.ones(len(arrays["ids"]), dtype=bool)
    else:
        keys, keep = arrays["bands"][:, band : band + 1], arrays["has_shingles"]
    if num_parts > 1:
        keep = keep & (keys[:, 0] % np.uint64(num_parts) == np.uint64(part))
    return arrays["ids"][keep], keys[keep]


def _read_band_keys(
    signature_paths: Sequence[str | os.PathLike], bands: list[int], part: int, num_parts: int
) -> _BandKeys:
    """Read every signature file once, keeping the ids and keys of ``bands`` in ``part``.

    Raises:
        DedupFileError: a signature file is missing, corrupt, has other parameters than the
            rest, or two files hold the same shard index.
        ValueError: no signature file, or a band out of range.
    """
    params: dict | None = None
    shards: dict[int, dict] = {}
    paths_by_shard: dict[int, Path] = {}
    ids_per_band: dict[int, list[np.ndarray]] = {b: [] for b in bands}
    keys_per_band: dict[int, list[np.ndarray]] = {b: [] for b in bands}
    for sig_path in map(Path, signature_paths):
        meta, arrays = read_npz(sig_path, "signatures", ["ids", "bands", "exact", "has_shingles"])
        params = check_same_params(sig_path, meta, params)
        index = meta["shard"]["index"]
        if index in shards:
            raise DedupFileError(sig_path, f"shard index {index} appears in two signature files")
        shards[index] = meta["shard"]
        paths_by_shard[index] = sig_path
        for b in bands:
            ids, keys = _keys_of_band(arrays, b, params["bands"], part, num_parts)
            ids_per_band[b].append(ids)
            keys_per_band[b].append(keys)
        del arrays
    if params is None:
        raise ValueError("no signature files given")
    return _BandKeys(params, shards, paths_by_shard, ids_per_band, keys_per_band)


def _bucket_bands(
    read: _BandKeys, bands: list[int]
) -> tuple[dict[int, _BandEdges], dict[str, int]]:
    """The edges of each band (consuming ``read``'s arrays) and the verification counts."""
    params = read.params
    verifier = _PairVerifier(read.paths_by_shard, params) if params["verify_bits"] else None
    found: dict[int, _BandEdges] = {}
    counts = dict.fromkeys(("compared", "accepted", "rejected", "unverified"), 0)
    for b in bands:
        similar = None
        if verifier is not None and b != EXACT_BAND:
            similar = partial(verifier.similar, band=b)
        found[b] = _bucket_edges(
            np.concatenate(read.ids.pop(b)), np.concatenate(read.keys.pop(b)), similar
        )
        if similar is not None:
            counts["accepted"] += len(found[b].src)
            counts["rejected"] += len(found[b].rejected_src)
            counts["unverified"] += found[b].unverified
    counts["compared"] = counts["accepted"] + counts["rejected"]
    return found, counts


def bucket_band(
    signature_paths: Sequence[str | os.PathLike],
    band: int | Sequence[int],
    out_path: str | os.PathLike,
    *,
    part: int = 0,
    num_parts: int = 1,
) -> dict:
    """Write the candidate pairs (edges) of one band, or several, across all shards.

    Documents whose hashes of ``band`` are equal form a bucket. With ``params.verify_bits`` > 0
    a pair of the bucket becomes an edge only if its Jaccard similarity estimated from the
    b-bit signatures (memory-mapped, leaving out the band's own rows, which agree by
    construction) is at least ``threshold - verify_margin``; see :func:`_bucket_edges` for
    which pairs are compared. :data:`EXACT_BAND` edges are never verified. Without
    verification each bucket becomes edges from its first document (in (shard, line) order) to
    each other one. ``band`` is a band number in
    ``range(params.bands)`` or :data:`EXACT_BAND` for exact-text duplicates, or a sequence of
    these. To bound memory further, ``num_parts > 1`` keeps only the hashes with
    ``hash % num_parts == part``; then every part of the band must be run. Memory: about 40 bytes
    per document of all shards per band (ids, hashes, sort order), divided by ``num_parts``;
    verification adds a bounded buffer (:data:`_VERIFY_CHUNK` pairs) and page cache.

    The output (``.npz``) holds ``src``/``dst`` (uint64 document ids, sorted, unique), the
    pairs verification rejected ``rejected_src``/``rejected_dst`` (same form), and
    ``meta.json`` (parameters, bands, part, shards with their sha256 and document counts, and
    ``verification``: pairs compared, accepted, rejected, and members left unverified after
    :data:`_MAX_PIVOTS` pivots). Returns the meta dict.

    Raises:
        DedupFileError: a signature file is missing, corrupt, has other parameters than the
            rest, or two files hold the same shard index.
        ValueError: a band or the part is out of range.
    """
    bands = _bands_asked(band, part, num_parts)
    read = _read_band_keys(signature_paths, bands, part, num_parts)
    params, shards = read.params, read.shards
    found, counts = _bucket_bands(read, bands)
    edges = _unique_pairs([e.src for e in found.values()], [e.dst for e in found.values()])
    rejected = _unique_pairs(
        [e.rejected_src for e in found.values()], [e.rejected_dst for e in found.values()]
    )
    meta = {
        "kind": "edges",
        "version": FORMAT_VERSION,
        "params": params,
        "bands": bands,
        "part": part,
        "num_parts": num_parts,
        "shards": {str(k): shards[k] for k in sorted(shards)},
        "num_edges": len(edges),
        "largest_bucket": {str(b): found[b].largest_bucket for b in bands},
        "verification": {
            "bits": params["verify_bits"],
            "min_jaccard": params["threshold"] - params["verify_margin"],
            **counts,
        },
    }
    arrays = {"src": edges[:, 0], "dst": edges[:, 1]}
    arrays |= {"rejected_src": rejected[:, 0], "rejected_dst": rejected[:, 1]}
    write_npz(out_path, meta, {k: v.copy() for k, v in arrays.items()})
    return meta


def _unique_pairs(src: list[np.ndarray], dst: list[np.ndarray]) -> np.ndarray:
    """``(n, 2)`` uint64 array of the distinct pairs, sorted."""
    pairs = np.stack([np.concatenate(src), np.concatenate(dst)], axis=1).astype(np.uint64)
    return np.unique(pairs, axis=0)
