"""Near-deduplication of Pile-format shards with MinHash-LSH: the Pile's "deduped" variant.

The Pile's deduped variant removed near-duplicates globally with MinHash-LSH at Jaccard
threshold 0.87 over word 5-grams (EleutherAI used datasketch). This module does the same as
five restartable stages that fit one Snakemake job each:

1. :func:`compute_signatures` -- per input shard: per document, one 64-bit hash per LSH band,
   a 128-bit hash of the exact text and the b-bit MinHash signature (low 8 bits of each value).
2. :func:`bucket_band` -- per band (or hash partition of a band) across all shards: documents
   with equal band hashes are candidate pairs; a pair becomes an edge only if its Jaccard
   similarity estimated from the memory-mapped b-bit signatures is at least the threshold
   (LSH alone lets through pairs that share one band by chance). The pseudo-band
   :data:`EXACT_BAND` buckets the exact-text hashes, unverified, so exact duplicates always go.
3. :func:`cluster` -- union-find over all edges; in each cluster the first document in
   (shard, line) order is kept, the others are removed.
4. :func:`filter_shard` -- per shard: copy the kept lines byte-for-byte to a new ``.jsonl.zst``
   and write a per-shard report.
5. :func:`merge_reports` -- totals, removals per ``pile_set_name``, and a verification of the
   decisions against exact Jaccard similarity on sampled pairs.

Text normalisation: ``text.lower().split()`` (Unicode lower case, split on any whitespace run);
shingles are the *distinct* word n-grams joined by one space. A document with fewer than n words
is one shingle (all its words); a document with no words has no shingles and takes part only
in exact-duplicate removal. Digits and punctuation are kept: normalising digits away (as
datatrove does) makes numbered documents such as "item 1 ...", "item 2 ..." collide.

MinHash: datasketch 2.0.0's default scheme ("affine32"): each shingle is hashed with
``datasketch.hashfunc.sha1_hash32`` of its UTF-8 bytes, pre-mixed with the 32-bit MurmurHash3
finalizer, then permuted ``a*h + b mod 2**32`` with datasketch's ``(a, b)`` for ``num_perm`` and
``seed``. Signatures are bit-identical to ``datasketch.MinHash(num_perm, seed)`` fed the same
shingles (checked in ``tests/test_dedup.py``); the permutations come from datasketch itself, the
per-document loop is replaced by one numpy pass over many documents at once.

Why this and not datasketch or datatrove directly (``benchmarks/dedup_throughput.py``, 20k
documents / 84 MB, CPU seconds on this 2-core machine): the whole pipeline took 10.2 s with
verification (1970 documents/s per core; signatures 8.7 s), 9.9 s without; plain datasketch
``MinHash`` + ``MinHashLSH`` in one process 12.1 s (1660/s) and removed the *identical* 4624
documents as the pipeline without verification; datatrove 0.10.1's four MinHash stages 21.4 s
(930/s, an earlier run). The deciding reasons besides speed: ``MinHashLSH`` holds every
band of every document in one process (~4 KB per document measured, ~0.8 TB for the Pile);
datatrove normalises digits, defaults to a spaCy word tokenizer, uses its own hash family and
skips "completed" tasks on rerun.

Every stage is deterministic (same inputs and parameters give byte-identical outputs), never
trusts an existing output (it always recomputes), and writes each output under a temporary name
in the output's directory, renamed into place only when complete.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import os
import random
import zipfile
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path

import numpy as np
import zstandard
from datasketch import MinHash

from pythia_suite.data.shards import DataFormatError, iter_documents
from pythia_suite.hashing import sha256_file

__all__ = [
    "EXACT_BAND",
    "DedupFileError",
    "DedupParams",
    "SampleCheck",
    "bbit_signatures",
    "bucket_band",
    "choose_bands_rows",
    "cluster",
    "compute_signatures",
    "estimate_jaccard",
    "exact_jaccard",
    "filter_shard",
    "merge_reports",
    "minhash_signatures",
    "run_pipeline",
    "shingles",
]

#: Band number of the exact-text pseudo-band in :func:`bucket_band`.
EXACT_BAND = -1

# 2: signatures hold the b-bit signature "verify"; edge files hold rejected pairs and counts.
_FORMAT_VERSION = 2
_MAX_HASH = np.uint32(0xFFFFFFFF)
# Rows of the (shingles x num_perm) permutation matrix computed at once: 32k x 128 x 4 B = 16 MiB.
_PERMUTE_CHUNK = 1 << 15
# Candidate pairs verified at once: 2 x 256k x 128 B (8-bit signatures) = 64 MiB of gathered rows.
_VERIFY_CHUNK = 1 << 18
# Pivots tried per bucket in bucket_band before the members left unmatched stay unlinked (kept).
_MAX_PIVOTS = 8
# dtype of the b-bit signature per verify_bits (0: no verification, no array).
_VERIFY_DTYPES = {0: None, 8: np.uint8, 16: np.uint16}
# Documents hashed per batch in compute_signatures.
_DOC_BATCH = 2048
_ZSTD_LEVEL = 3
_ZSTD_MAX_WINDOW_SIZE = 2**31
_READ_CHUNK = 1 << 20
# A document id packs (shard index, 1-based line number) into one uint64, so sorting ids sorts
# documents in (shard, line) order.
_LINE_BITS = 32


class DedupFileError(ValueError):
    """A dedup stage's input file is missing, corrupt, of the wrong kind or inconsistent.

    Attributes:
        path: the offending file.
        reason: what is wrong.
    """

    def __init__(self, path: str | os.PathLike, reason: str):
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")


# --------------------------------------------------------------------------------------------
# Parameters
# --------------------------------------------------------------------------------------------


def _integrate(f, lo: float, hi: float, steps: int = 2048) -> float:
    """Composite Simpson integral of ``f`` over ``[lo, hi]`` (``steps`` even)."""
    if hi <= lo:
        return 0.0
    x = np.linspace(lo, hi, steps + 1)
    y = f(x)
    h = (hi - lo) / steps
    return float(h / 3 * (y[0] + y[-1] + 4 * y[1:-1:2].sum() + 2 * y[2:-1:2].sum()))


def choose_bands_rows(
    threshold: float,
    num_perm: int,
    false_positive_weight: float = 0.5,
    false_negative_weight: float = 0.5,
) -> tuple[int, int]:
    """Return ``(bands, rows)`` with ``bands * rows <= num_perm`` for an LSH at ``threshold``.

    Minimises ``fp_weight * P(false positive) + fn_weight * P(false negative)``, each the
    integral of the LSH collision curve ``1 - (1 - s**rows)**bands`` below (resp. of its
    complement above) the threshold, as datasketch's ``MinHashLSH`` does. For 0.87 and 128
    permutations this gives 7 bands of 18 rows, as datasketch does.

    Raises:
        ValueError: ``threshold`` outside (0, 1), ``num_perm`` < 2 or weights negative or both 0.
    """
    if not 0.0 < threshold < 1.0:
        raise ValueError(f"threshold must be in (0, 1), got {threshold!r}")
    if num_perm < 2:
        raise ValueError(f"num_perm must be at least 2, got {num_perm!r}")
    if (
        false_positive_weight < 0
        or false_negative_weight < 0
        or not (false_positive_weight + false_negative_weight)
    ):
        raise ValueError("false positive/negative weights must be >= 0 and not both 0")
    best, best_error = (0, 0), math.inf
    for bands in range(1, num_perm + 1):
        for rows in range(1, num_perm // bands + 1):
            fp = _integrate(lambda s, b=bands, r=rows: 1 - (1 - s**r) ** b, 0.0, threshold)
            fn = _integrate(lambda s, b=bands, r=rows: (1 - s**r) ** b, threshold, 1.0)
            error = fp * false_positive_weight + fn * false_negative_weight
            if error < best_error:
                best, best_error = (bands, rows), error
    return best


@dataclass(frozen=True)
class DedupParams:
    """Parameters of the near-deduplication (keep them in the project config).

    Attributes:
        threshold: Jaccard similarity of shingle sets above which documents are duplicates.
        ngram: shingle size in words.
        num_perm: MinHash permutations per document.
        bands, rows: LSH banding; ``None`` (both) means :func:`choose_bands_rows`.
        seed: seed of datasketch's permutations.
        verify_bits: bits kept of each MinHash value for candidate verification (8 or 16), or
            0 for none (plain LSH: every candidate pair of a band merges).
        verify_margin: a candidate pair of a band merges only if its b-bit estimated Jaccard
            similarity is at least ``threshold - verify_margin``.
    """

    threshold: float = 0.87
    ngram: int = 5
    num_perm: int = 128
    bands: int | None = None
    rows: int | None = None
    seed: int = 1
    verify_bits: int = 8
    verify_margin: float = 0.0

    def __post_init__(self) -> None:
        if not 0.0 < self.threshold < 1.0:
            raise ValueError(f"threshold must be in (0, 1), got {self.threshold!r}")
        if self.ngram < 1:
            raise ValueError(f"ngram must be >= 1, got {self.ngram!r}")
        if (self.bands is None) != (self.rows is None):
            raise ValueError("give both bands and rows, or neither")
        if self.bands is None:
            bands, rows = choose_bands_rows(self.threshold, self.num_perm)
            object.__setattr__(self, "bands", bands)
            object.__setattr__(self, "rows", rows)
        if self.bands < 1 or self.rows < 1 or self.bands * self.rows > self.num_perm:
            raise ValueError(
                f"need bands >= 1, rows >= 1 and bands*rows <= num_perm={self.num_perm}, "
                f"got bands={self.bands}, rows={self.rows}"
            )
        if self.verify_bits not in _VERIFY_DTYPES:
            raise ValueError(f"verify_bits must be one of 0, 8, 16, got {self.verify_bits!r}")
        if not 0.0 <= self.verify_margin < self.threshold:
            raise ValueError(f"verify_margin must be in [0, threshold), got {self.verify_margin!r}")

    def to_dict(self) -> dict:
        return asdict(self)


# --------------------------------------------------------------------------------------------
# Shingles and MinHash
# --------------------------------------------------------------------------------------------


def shingles(text: str, ngram: int) -> set[str]:
    """Return the set of word ``ngram``-grams of ``text`` after lower-casing and whitespace split.

    A text with fewer than ``ngram`` words gives one shingle (all its words); an empty or
    all-whitespace text gives the empty set.
    """
    words = text.lower().split()
    if len(words) <= ngram:
        return {" ".join(words)} if words else set()
    return {" ".join(words[i : i + ngram]) for i in range(len(words) - ngram + 1)}


def _shingle_hashes(text: str, ngram: int) -> np.ndarray:
    """datasketch's ``sha1_hash32`` of each shingle's UTF-8 bytes, as a uint32 array."""
    digests = b"".join(
        [
            hashlib.sha1(s.encode("utf-8", "surrogatepass")).digest()[:4]
            for s in shingles(text, ngram)
        ]
    )
    return np.frombuffer(digests, dtype="<u4").astype(np.uint32)


def _fmix32(h: np.ndarray) -> np.ndarray:
    """MurmurHash3's 32-bit finalizer, as datasketch applies it before the permutations."""
    h = h ^ (h >> np.uint32(16))
    h = h * np.uint32(0x85EBCA6B)
    h = h ^ (h >> np.uint32(13))
    h = h * np.uint32(0xC2B2AE35)
    return h ^ (h >> np.uint32(16))


class _MinHasher:
    """datasketch's affine32 MinHash, applied to many documents in one numpy pass."""

    def __init__(self, num_perm: int, seed: int):
        reference = MinHash(num_perm=num_perm, seed=seed, scheme="affine32")
        a, b = reference.permutations
        self.a = np.asarray(a, dtype=np.uint32)
        self.b = np.asarray(b, dtype=np.uint32)
        self.num_perm = num_perm

    def _permuted(self, hashes: np.ndarray) -> np.ndarray:
        """``(num_perm, len(hashes))`` permuted hashes.

        Permutations along rows so that the per-document minimum (``reduceat``) runs along the
        contiguous axis: 10x faster than along axis 0. uint32 array arithmetic wraps, which is
        the intended "mod 2**32".
        """
        permuted = self.a[:, None] * _fmix32(hashes)[None, :]
        permuted += self.b[:, None]
        return permuted

    def signatures(self, shingle_hashes: Sequence[np.ndarray]) -> np.ndarray:
        """Return the ``(len(shingle_hashes), num_perm)`` uint32 signatures.

        A document without shingles keeps datasketch's empty value (all ``2**32 - 1``).
        """
        out = np.full((len(shingle_hashes), self.num_perm), _MAX_HASH, dtype=np.uint32)
        batch_docs: list[int] = []
        batch: list[np.ndarray] = []
        batch_rows = 0

        def flush() -> None:
            nonlocal batch_rows
            if not batch:
                return
            starts = np.cumsum([0] + [len(h) for h in batch[:-1]])
            permuted = self._permuted(np.concatenate(batch))
            out[batch_docs] = np.minimum.reduceat(permuted, starts, axis=1).T
            batch_docs.clear()
            batch.clear()
            batch_rows = 0

        for i, hashes in enumerate(shingle_hashes):
            if len(hashes) == 0:
                continue
            if len(hashes) > _PERMUTE_CHUNK:  # one long document: bound memory by slicing it
                for start in range(0, len(hashes), _PERMUTE_CHUNK):
                    chunk = self._permuted(hashes[start : start + _PERMUTE_CHUNK]).min(axis=1)
                    out[i] = np.minimum(out[i], chunk)
                continue
            if batch_rows + len(hashes) > _PERMUTE_CHUNK:
                flush()
            batch_docs.append(i)
            batch.append(hashes)
            batch_rows += len(hashes)
        flush()
        return out


def minhash_signatures(texts: Sequence[str], params: DedupParams) -> np.ndarray:
    """Return the ``(len(texts), num_perm)`` uint32 MinHash signatures of ``texts``.

    Row ``i`` equals ``datasketch.MinHash(num_perm, seed).hashvalues`` after
    ``update_batch`` with the UTF-8 bytes of ``shingles(texts[i], ngram)``.
    """
    hasher = _MinHasher(params.num_perm, params.seed)
    return hasher.signatures([_shingle_hashes(t, params.ngram) for t in texts])


def _band_hashes(signatures: np.ndarray, bands: int, rows: int) -> np.ndarray:
    """64-bit blake2b of each band's ``rows`` little-endian uint32 values: ``(n_docs, bands)``."""
    out = np.empty((len(signatures), bands), dtype=np.uint64)
    sig = np.ascontiguousarray(signatures, dtype="<u4")
    for band in range(bands):
        block = np.ascontiguousarray(sig[:, band * rows : (band + 1) * rows])
        raw = block.tobytes()
        width = rows * 4
        digests = b"".join(
            hashlib.blake2b(raw[i : i + width], digest_size=8).digest()
            for i in range(0, len(raw), width)
        )
        out[:, band] = np.frombuffer(digests, dtype="<u8")
    return out


def _exact_hash(text: str) -> bytes:
    return hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=16).digest()


def exact_jaccard(a: str, b: str, ngram: int) -> float:
    """Exact Jaccard similarity of the shingle sets of two texts (1.0 if both are empty)."""
    sa, sb = shingles(a, ngram), shingles(b, ngram)
    if not sa and not sb:
        return 1.0
    return len(sa & sb) / len(sa | sb)


def bbit_signatures(signatures: np.ndarray, bits: int) -> np.ndarray:
    """Return the low ``bits`` (8 or 16) bits of each MinHash value: b-bit MinHash.

    ``(n, num_perm)`` uint8 or uint16; 128 B per document at 8 bits and 128 permutations.

    Raises:
        ValueError: ``bits`` is not 8 or 16.
    """
    dtype = _VERIFY_DTYPES.get(bits)
    if dtype is None:
        raise ValueError(f"bits must be 8 or 16, got {bits!r}")
    return (np.asarray(signatures, dtype=np.uint32) & np.uint32((1 << bits) - 1)).astype(dtype)


def estimate_jaccard(
    a: np.ndarray, b: np.ndarray, bits: int, columns: np.ndarray | slice | None = None
) -> np.ndarray:
    """Jaccard similarity estimated from b-bit signatures, row by row: ``(n,)`` float64.

    Two unequal MinHash values still agree in their low ``bits`` bits with probability
    ``2**-bits``, so the match rate ``m`` over-estimates J; ``(m - 2**-bits) / (1 - 2**-bits)``
    is unbiased (Li & Koenig, b-bit minwise hashing, for large sets). ``columns`` restricts the
    permutations compared: :func:`bucket_band` leaves out the band that made the pair a
    candidate, whose values agree by construction (using them would add
    ``rows * (1 - J) / num_perm``, 0.03 at J = 0.8, to the estimate).
    """
    a, b = np.atleast_2d(a), np.atleast_2d(b)
    if columns is not None:
        a, b = a[:, columns], b[:, columns]
    match = (a == b).mean(axis=1)
    collide = 2.0**-bits
    return (match - collide) / (1.0 - collide)


# --------------------------------------------------------------------------------------------
# Files: deterministic npz, atomic writes
# --------------------------------------------------------------------------------------------


def _tmp_path(path: Path) -> Path:
    return path.with_name(f".{path.name}.tmp-{os.getpid()}")


def _remove_stale_tmp(path: Path) -> None:
    """Remove leftovers of killed runs (``.NAME.tmp-PID``) so they cannot be mistaken for output."""
    for stale in path.parent.glob(f".{path.name}.tmp-*"):
        stale.unlink(missing_ok=True)


class _AtomicFile:
    """Context manager yielding a temporary path next to ``path``; renamed onto it on success."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)

    def __enter__(self) -> Path:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        _remove_stale_tmp(self.path)
        self.tmp = _tmp_path(self.path)
        return self.tmp

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            os.replace(self.tmp, self.path)
        else:
            self.tmp.unlink(missing_ok=True)


def _write_npz(path: str | os.PathLike, meta: dict, arrays: Mapping[str, np.ndarray]) -> None:
    """Write arrays plus a ``meta.json`` entry as an ``.npz`` whose bytes depend only on content.

    ``np.savez`` stamps the current time into the zip; here every entry gets a fixed date.
    """
    with _AtomicFile(path) as tmp, zipfile.ZipFile(tmp, "w", zipfile.ZIP_STORED) as zf:
        info = zipfile.ZipInfo("meta.json", date_time=(1980, 1, 1, 0, 0, 0))
        zf.writestr(info, json.dumps(meta, sort_keys=True, indent=1))
        for name, array in arrays.items():
            buf = io.BytesIO()
            np.lib.format.write_array(buf, np.ascontiguousarray(array), allow_pickle=False)
            zf.writestr(
                zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0)), buf.getvalue()
            )


def _read_npz(path: str | os.PathLike, kind: str, names: Sequence[str]) -> tuple[dict, dict]:
    """Read ``meta`` and arrays ``names`` from a file written by :func:`_write_npz`.

    Raises:
        DedupFileError: the file is missing, not a complete npz, not of ``kind`` or lacks arrays.
    """
    path = Path(path)
    if not path.is_file():
        raise DedupFileError(path, f"no such {kind} file")
    try:
        with zipfile.ZipFile(path) as zf:
            meta = json.loads(zf.read("meta.json"))
            if meta.get("kind") != kind or meta.get("version") != _FORMAT_VERSION:
                raise DedupFileError(
                    path,
                    f"expected a {kind} file (version {_FORMAT_VERSION}), "
                    f"found kind={meta.get('kind')!r} version={meta.get('version')!r}",
                )
            arrays = {}
            for name in names:
                with zf.open(f"{name}.npy") as fh:
                    arrays[name] = np.lib.format.read_array(
                        io.BytesIO(fh.read()), allow_pickle=False
                    )
    except (zipfile.BadZipFile, KeyError, ValueError, OSError) as exc:
        if isinstance(exc, DedupFileError):
            raise
        raise DedupFileError(path, f"unreadable {kind} file: {exc}") from None
    return meta, arrays


def _mmap_npz_array(path: Path, name: str) -> np.ndarray:
    """Memory-map array ``name`` of an npz written by :func:`_write_npz` (read-only).

    The zip is stored uncompressed, so the ``.npy`` member is a contiguous byte range of the
    file: only the pages of the rows indexed are read.

    Raises:
        DedupFileError: the member is missing, compressed, or not a valid ``.npy``.
    """
    try:
        with zipfile.ZipFile(path) as zf:
            info = zf.getinfo(f"{name}.npy")
        if info.compress_type != zipfile.ZIP_STORED:
            raise DedupFileError(path, f"array {name!r} is compressed and cannot be mapped")
        with open(path, "rb") as fh:
            fh.seek(info.header_offset)
            local = fh.read(30)  # zip local file header: name and extra lengths at bytes 26-29
            if local[:4] != b"PK\x03\x04":
                raise DedupFileError(path, f"bad zip local header for array {name!r}")
            name_len = int.from_bytes(local[26:28], "little")
            extra_len = int.from_bytes(local[28:30], "little")
            fh.seek(info.header_offset + 30 + name_len + extra_len)
            read_header = {
                (1, 0): np.lib.format.read_array_header_1_0,
                (2, 0): np.lib.format.read_array_header_2_0,
            }[np.lib.format.read_magic(fh)]
            shape, fortran, dtype = read_header(fh)
            offset = fh.tell()
    except (zipfile.BadZipFile, KeyError, ValueError, OSError) as exc:
        if isinstance(exc, DedupFileError):
            raise
        raise DedupFileError(path, f"cannot map array {name!r}: {exc}") from None
    if fortran or offset + dtype.itemsize * math.prod(shape) > path.stat().st_size:
        raise DedupFileError(path, f"array {name!r} is truncated or not C-ordered")
    return np.memmap(path, dtype=dtype, mode="r", offset=offset, shape=shape)


def _doc_ids(shard_index: int, line_numbers: np.ndarray) -> np.ndarray:
    return (np.uint64(shard_index) << np.uint64(_LINE_BITS)) | line_numbers.astype(np.uint64)


def _split_ids(ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(shard indices, line numbers)`` of packed document ids."""
    ids = ids.astype(np.uint64)
    return (ids >> np.uint64(_LINE_BITS)).astype(np.int64), (
        ids & np.uint64((1 << _LINE_BITS) - 1)
    ).astype(np.int64)


def _check_shard_index(shard_index: int) -> None:
    if not 0 <= shard_index < 2**31:
        raise ValueError(f"shard_index must be in [0, 2**31), got {shard_index!r}")


# --------------------------------------------------------------------------------------------
# Stage 1: signatures
# --------------------------------------------------------------------------------------------


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
    _check_shard_index(shard_index)
    shard_path = Path(shard_path)
    hasher = _MinHasher(params.num_perm, params.seed)
    lines: list[int] = []
    band_blocks: list[np.ndarray] = []
    verify_blocks: list[np.ndarray] = []
    exact: list[bytes] = []
    nonempty: list[bool] = []
    text_bytes = 0

    def hash_batch(texts: list[str]) -> None:
        hashes = [_shingle_hashes(t, params.ngram) for t in texts]
        nonempty.extend(len(h) > 0 for h in hashes)
        signatures = hasher.signatures(hashes)
        band_blocks.append(_band_hashes(signatures, params.bands, params.rows))
        if params.verify_bits:
            verify_blocks.append(bbit_signatures(signatures, params.verify_bits))

    batch: list[str] = []
    for line_no, doc in iter_documents(shard_path):
        if line_no >= 2**_LINE_BITS:
            raise ValueError(f"{shard_path}, line {line_no}: more lines than dedup ids can hold")
        text = doc["text"]
        lines.append(line_no)
        exact.append(_exact_hash(text))
        text_bytes += len(text.encode("utf-8", "surrogatepass"))
        batch.append(text)
        if len(batch) == _DOC_BATCH:
            hash_batch(batch)
            batch = []
    hash_batch(batch)

    meta = {
        "kind": "signatures",
        "version": _FORMAT_VERSION,
        "params": params.to_dict(),
        "shard": {
            "index": shard_index,
            "name": shard_path.name,
            "sha256": sha256_file(shard_path),
            "num_docs": len(lines),
            "text_bytes": text_bytes,
        },
    }
    arrays = {
        "ids": _doc_ids(shard_index, np.asarray(lines, dtype=np.uint64)),
        "bands": np.concatenate(band_blocks).reshape(len(lines), params.bands),
        "exact": np.frombuffer(b"".join(exact), dtype="<u8").reshape(len(lines), 2).copy(),
        "has_shingles": np.asarray(nonempty, dtype=bool),
    }
    if params.verify_bits:
        arrays["verify"] = np.concatenate(verify_blocks).reshape(len(lines), params.num_perm)
    _write_npz(out_path, meta, arrays)
    return meta


# --------------------------------------------------------------------------------------------
# Stage 2: buckets -> edges
# --------------------------------------------------------------------------------------------


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
            ids, signatures = _mmap_npz_array(path, "ids"), _mmap_npz_array(path, "verify")
            if signatures.shape != (len(ids), self.num_perm) or signatures.dtype != np.dtype(
                _VERIFY_DTYPES[self.bits]
            ):
                raise DedupFileError(
                    path,
                    f"verify array has shape {signatures.shape} and dtype {signatures.dtype}, "
                    f"expected ({len(ids)}, {self.num_perm}) {np.dtype(_VERIFY_DTYPES[self.bits])}",
                )
            self.ids[shard], self.signatures[shard] = ids, signatures

    def _gather(self, ids: np.ndarray) -> np.ndarray:
        """The b-bit signature rows of packed document ``ids``."""
        shard_of, _ = _split_ids(ids)
        out = np.empty((len(ids), self.num_perm), dtype=_VERIFY_DTYPES[self.bits])
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


def _check_same_params(path: Path, meta: dict, expected: dict | None) -> dict:
    if expected is not None and meta["params"] != expected:
        raise DedupFileError(
            path, f"computed with parameters {meta['params']}, others with {expected}"
        )
    return meta["params"]


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
    bands = [band] if isinstance(band, int) else sorted(set(band))
    if not bands:
        raise ValueError("no band given")
    if not 0 <= part < num_parts:
        raise ValueError(f"need 0 <= part < num_parts, got part={part}, num_parts={num_parts}")
    params: dict | None = None
    shards: dict[int, dict] = {}
    paths_by_shard: dict[int, Path] = {}
    ids_per_band: dict[int, list[np.ndarray]] = {b: [] for b in bands}
    keys_per_band: dict[int, list[np.ndarray]] = {b: [] for b in bands}
    for sig_path in map(Path, signature_paths):
        meta, arrays = _read_npz(sig_path, "signatures", ["ids", "bands", "exact", "has_shingles"])
        params = _check_same_params(sig_path, meta, params)
        index = meta["shard"]["index"]
        if index in shards:
            raise DedupFileError(sig_path, f"shard index {index} appears in two signature files")
        shards[index] = meta["shard"]
        paths_by_shard[index] = sig_path
        for b in bands:
            if b != EXACT_BAND and not 0 <= b < params["bands"]:
                raise ValueError(f"band {b} out of range: {params['bands']} bands (or EXACT_BAND)")
            if b == EXACT_BAND:
                keys, keep = arrays["exact"], np.ones(len(arrays["ids"]), dtype=bool)
            else:
                keys, keep = arrays["bands"][:, b : b + 1], arrays["has_shingles"]
            if num_parts > 1:
                keep = keep & (keys[:, 0] % np.uint64(num_parts) == np.uint64(part))
            ids_per_band[b].append(arrays["ids"][keep])
            keys_per_band[b].append(keys[keep])
        del arrays
    if params is None:
        raise ValueError("no signature files given")

    verifier = _PairVerifier(paths_by_shard, params) if params["verify_bits"] else None
    found: dict[int, _BandEdges] = {}
    counts = dict.fromkeys(("compared", "accepted", "rejected", "unverified"), 0)
    for b in bands:
        similar = None
        if verifier is not None and b != EXACT_BAND:
            similar = partial(verifier.similar, band=b)
        found[b] = _bucket_edges(
            np.concatenate(ids_per_band.pop(b)), np.concatenate(keys_per_band.pop(b)), similar
        )
        if similar is not None:
            counts["accepted"] += len(found[b].src)
            counts["rejected"] += len(found[b].rejected_src)
            counts["unverified"] += found[b].unverified
    counts["compared"] = counts["accepted"] + counts["rejected"]
    edges = _unique_pairs([e.src for e in found.values()], [e.dst for e in found.values()])
    rejected = _unique_pairs(
        [e.rejected_src for e in found.values()], [e.rejected_dst for e in found.values()]
    )
    meta = {
        "kind": "edges",
        "version": _FORMAT_VERSION,
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
    _write_npz(out_path, meta, {k: v.copy() for k, v in arrays.items()})
    return meta


def _unique_pairs(src: list[np.ndarray], dst: list[np.ndarray]) -> np.ndarray:
    """``(n, 2)`` uint64 array of the distinct pairs, sorted."""
    pairs = np.stack([np.concatenate(src), np.concatenate(dst)], axis=1).astype(np.uint64)
    return np.unique(pairs, axis=0)


# --------------------------------------------------------------------------------------------
# Stage 3: clusters
# --------------------------------------------------------------------------------------------


def _components(u: np.ndarray, v: np.ndarray, n: int) -> np.ndarray:
    """Root of every node 0..n-1 of the graph with edges (u, v): the smallest node of its component.

    Vectorised union-find: hook the larger root of each edge under the smaller one, then
    compress paths by pointer jumping, until no edge joins two roots. A root only ever gets a
    smaller parent, so each component's final root is its smallest node.
    """
    parent = np.arange(n, dtype=np.int64)
    while True:
        pu, pv = parent[u], parent[v]
        differ = pu != pv
        if not differ.any():
            return parent
        lo, hi = np.minimum(pu[differ], pv[differ]), np.maximum(pu[differ], pv[differ])
        np.minimum.at(parent, hi, lo)
        while True:
            grand = parent[parent]
            if np.array_equal(grand, parent):
                break
            parent = grand


def _check_coverage(edge_paths: Sequence[Path], metas: Sequence[dict], num_bands: int) -> None:
    """Refuse a band set with gaps: every band and the exact band, every part, exactly once."""
    seen: dict[tuple[int, int, int], Path] = {}
    for path, meta in zip(edge_paths, metas, strict=True):
        for b in meta["bands"]:
            key = (b, meta["part"], meta["num_parts"])
            if key in seen:
                raise DedupFileError(path, f"band {b} part {key[1]} also in {seen[key]}")
            seen[key] = path
    for b in [EXACT_BAND, *range(num_bands)]:
        parts = {(p, n) for (bb, p, n) in seen if bb == b}
        splits = {n for _, n in parts}
        if len(splits) != 1 or {p for p, _ in parts} != set(range(next(iter(splits)))):
            name = "the exact band" if b == EXACT_BAND else f"band {b}"
            raise DedupFileError(
                edge_paths[0].parent,
                f"edge files do not cover {name} exactly once (parts found: {sorted(parts)})",
            )


def cluster(edge_paths: Sequence[str | os.PathLike], out_path: str | os.PathLike) -> dict:
    """Union the candidate pairs of all bands into clusters and decide which documents go.

    In every cluster the document first in (shard, line) order is kept and the others are
    removed. The edge files must cover every band and :data:`EXACT_BAND` (every part) exactly
    once, and share parameters and shards.

    The output (``.npz``) holds ``removed`` (uint64 document ids, sorted) and ``kept_as``
    (the id of the document kept in each removed document's cluster), and ``meta.json`` with
    the parameters, shards and counts (``edge_verification``: the edge files' verification
    counts summed over bands). Returns the meta dict.

    Raises:
        DedupFileError: an edge file is missing or corrupt, a band or part is missing or
            repeated, or the files disagree on parameters or shards.
    """
    edge_paths = [Path(p) for p in edge_paths]
    if not edge_paths:
        raise ValueError("no edge files given")
    metas, srcs, dsts = [], [], []
    params: dict | None = None
    for path in edge_paths:
        meta, arrays = _read_npz(path, "edges", ["src", "dst"])
        params = _check_same_params(path, meta, params)
        if metas and meta["shards"] != metas[0]["shards"]:
            raise DedupFileError(path, "built from other shards than " + str(edge_paths[0]))
        metas.append(meta)
        srcs.append(arrays["src"])
        dsts.append(arrays["dst"])
    _check_coverage(edge_paths, metas, params["bands"])

    src, dst = np.concatenate(srcs), np.concatenate(dsts)
    del srcs, dsts
    nodes = np.unique(np.concatenate([src, dst]))  # sorted: node order == (shard, line) order
    roots = _components(np.searchsorted(nodes, src), np.searchsorted(nodes, dst), len(nodes))
    is_removed = roots != np.arange(len(nodes))
    meta = {
        "kind": "removals",
        "version": _FORMAT_VERSION,
        "params": params,
        "shards": metas[0]["shards"],
        "num_edges": int(len(src)),
        "num_clusters": int(len(nodes) - is_removed.sum()),
        "num_docs_in_clusters": int(len(nodes)),
        "num_removed": int(is_removed.sum()),
        "edge_verification": {
            "bits": params["verify_bits"],
            "min_jaccard": params["threshold"] - params["verify_margin"],
            **{
                k: sum(m["verification"][k] for m in metas)
                for k in ("compared", "accepted", "rejected", "unverified")
            },
        },
    }
    _write_npz(out_path, meta, {"removed": nodes[is_removed], "kept_as": nodes[roots[is_removed]]})
    return meta


# --------------------------------------------------------------------------------------------
# Stage 4: filter
# --------------------------------------------------------------------------------------------


class _HashingReader:
    """File wrapper that feeds every byte read through sha256 (one pass for read + checksum)."""

    def __init__(self, fh):
        self.fh = fh
        self.sha256 = hashlib.sha256()

    def read(self, size: int = -1) -> bytes:
        data = self.fh.read(size)
        self.sha256.update(data)
        return data


def _iter_raw_lines(path: Path, reader: _HashingReader) -> Iterator[tuple[int, bytes]]:
    """Yield ``(line_no, line bytes without newline)`` of a ``.jsonl.zst`` or ``.jsonl``.

    Numbers lines like :func:`pythia_suite.data.shards.iter_documents` (1-based, blank lines
    counted but not yielded). Raises :class:`DataFormatError` for a corrupt or truncated zstd
    stream, naming the last line read completely.
    """
    line_no = 0
    pending = b""

    def chunks() -> Iterator[bytes]:
        if path.suffix != ".zst":
            while chunk := reader.read(_READ_CHUNK):
                yield chunk
            return
        dctx = zstandard.ZstdDecompressor(max_window_size=_ZSTD_MAX_WINDOW_SIZE)
        dobj, in_frame = dctx.decompressobj(), False
        while compressed := reader.read(_READ_CHUNK):
            while compressed:
                in_frame = True
                if out := dobj.decompress(compressed):
                    yield out
                if not dobj.eof:
                    break
                compressed, dobj, in_frame = dobj.unused_data, dctx.decompressobj(), False
        if in_frame:
            raise EOFError("compressed stream ends inside a zstd frame")

    stream = chunks()
    while True:
        try:
            chunk = next(stream)
        except StopIteration:
            break
        except (zstandard.ZstdError, EOFError) as exc:
            raise DataFormatError(
                path, line_no, f"corrupt or truncated zstd stream after line {line_no}: {exc}"
            ) from None
        lines = (pending + chunk).split(b"\n")
        pending = lines.pop()
        for line in lines:
            line_no += 1
            if line.strip():
                yield line_no, line
    if pending:
        line_no += 1
        if pending.strip():
            yield line_no, pending


def _shard_record(removals_meta: dict, removals_path: Path, shard_index: int) -> dict:
    record = removals_meta["shards"].get(str(shard_index))
    if record is None:
        raise DedupFileError(removals_path, f"no shard with index {shard_index} was deduplicated")
    return record


def filter_shard(
    shard_path: str | os.PathLike,
    shard_index: int,
    removals_path: str | os.PathLike,
    out_path: str | os.PathLike,
    report_path: str | os.PathLike,
) -> dict:
    """Write the documents of one shard that :func:`cluster` kept, and a per-shard report.

    Kept lines are copied byte-for-byte, in order, into a zstd-compressed ``out_path`` (blank
    lines are dropped). The report (JSON) gives documents and text bytes in and out, per
    ``pile_set_name`` as well, and the output's sha256. The shard must be the very file whose
    signatures were computed (same sha256 and document count), else nothing is written.
    Returns the report dict.

    Raises:
        FileNotFoundError: ``shard_path`` does not exist.
        DataFormatError: a line is bad or the shard is truncated (file and line).
        DedupFileError: the removals file is missing or corrupt, does not know this shard, or
            the shard changed since its signatures were computed.
    """
    _check_shard_index(shard_index)
    shard_path, removals_path = Path(shard_path), Path(removals_path)
    removals_meta, arrays = _read_npz(removals_path, "removals", ["removed"])
    record = _shard_record(removals_meta, removals_path, shard_index)
    shard_of, line_of = _split_ids(arrays["removed"])
    to_remove = set(line_of[shard_of == shard_index].tolist())

    per_set: dict[str, dict[str, int]] = {}
    docs_in = docs_out = bytes_in = bytes_out = 0
    removed_seen = 0
    with (
        _AtomicFile(out_path) as tmp,
        open(tmp, "wb") as raw_out,
        open(shard_path, "rb") as raw_in,
    ):
        reader = _HashingReader(raw_in)
        writer = zstandard.ZstdCompressor(level=_ZSTD_LEVEL).stream_writer(raw_out, closefd=False)
        for line_no, line in _iter_raw_lines(shard_path, reader):
            try:
                doc = json.loads(line)
                text = doc["text"]
                set_name = str((doc.get("meta") or {}).get("pile_set_name", "unknown"))
            except (ValueError, TypeError, KeyError, AttributeError) as exc:
                raise DataFormatError(shard_path, line_no, f"bad document: {exc}") from None
            if not isinstance(text, str):
                raise DataFormatError(shard_path, line_no, 'document has no string "text"')
            size = len(text.encode("utf-8", "surrogatepass"))
            stats = per_set.setdefault(
                set_name, {"docs_in": 0, "docs_removed": 0, "bytes_in": 0, "bytes_removed": 0}
            )
            stats["docs_in"] += 1
            stats["bytes_in"] += size
            docs_in += 1
            bytes_in += size
            if line_no in to_remove:
                removed_seen += 1
                stats["docs_removed"] += 1
                stats["bytes_removed"] += size
                continue
            docs_out += 1
            bytes_out += size
            writer.write(line + b"\n")
        writer.flush(zstandard.FLUSH_FRAME)
        writer.close()
        if reader.sha256.hexdigest() != record["sha256"] or docs_in != record["num_docs"]:
            raise DedupFileError(
                shard_path,
                f"shard changed since its signatures were computed (sha256 "
                f"{reader.sha256.hexdigest()} vs {record['sha256']}, {docs_in} vs "
                f"{record['num_docs']} documents)",
            )
        if removed_seen != len(to_remove):
            raise DedupFileError(removals_path, f"removes lines absent from {shard_path}")
        out_sha256 = sha256_file(tmp)

    report = {
        "kind": "filter_report",
        "version": _FORMAT_VERSION,
        "shard": {"index": shard_index, "name": shard_path.name, "sha256": record["sha256"]},
        "output": {"name": Path(out_path).name, "sha256": out_sha256},
        "params": removals_meta["params"],
        "docs_in": docs_in,
        "docs_out": docs_out,
        "bytes_in": bytes_in,
        "bytes_out": bytes_out,
        "per_set": {k: per_set[k] for k in sorted(per_set)},
    }
    _write_json(report_path, report)
    return report


def _write_json(path: str | os.PathLike, obj: dict) -> None:
    with _AtomicFile(path) as tmp:
        Path(tmp).write_text(json.dumps(obj, sort_keys=True, indent=1) + "\n", encoding="utf-8")


# --------------------------------------------------------------------------------------------
# Stage 5: merged report and verification
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SampleCheck:
    """What :func:`merge_reports` needs to verify decisions against exact Jaccard similarity.

    Attributes:
        shard_paths: input shard path per shard index.
        removals_path: the output of :func:`cluster`.
        edge_paths: the outputs of :func:`bucket_band` (candidate pairs are sampled from them).
        num_pairs: pairs sampled of each kind (candidate, removed-vs-kept, random).
        seed: sampling seed.
    """

    shard_paths: Mapping[int, str | os.PathLike]
    removals_path: str | os.PathLike
    edge_paths: Sequence[str | os.PathLike] = field(default_factory=tuple)
    num_pairs: int = 200
    seed: int = 0


def _load_texts(
    shard_paths: Mapping[int, str | os.PathLike],
    ids: set[int],
    ordinals: set[tuple[int, int]],
) -> tuple[dict[int, str], dict[tuple[int, int], int]]:
    """Read each needed shard once: texts of packed ``ids`` and of ``(shard, k)`` = k-th document.

    Returns ``(texts by packed id, packed id by (shard, k))``; the latter's texts are in the
    former.
    """
    by_shard: dict[int, tuple[set[int], set[int]]] = {}
    for doc_id in ids:
        by_shard.setdefault(doc_id >> _LINE_BITS, (set(), set()))[0].add(
            doc_id & ((1 << _LINE_BITS) - 1)
        )
    for shard, k in ordinals:
        by_shard.setdefault(shard, (set(), set()))[1].add(k)
    texts: dict[int, str] = {}
    id_of: dict[tuple[int, int], int] = {}
    for shard, (lines, ks) in sorted(by_shard.items()):
        if shard not in shard_paths:
            raise ValueError(f"sample check: no path given for shard {shard}")
        for k, (line_no, doc) in enumerate(iter_documents(shard_paths[shard])):
            doc_id = (shard << _LINE_BITS) | line_no
            if k in ks:
                id_of[(shard, k)] = doc_id
            if line_no in lines or k in ks:
                texts[doc_id] = doc["text"]
        missing_lines = sorted(ln for ln in lines if (shard << _LINE_BITS) | ln not in texts)
        missing_ks = sorted(k for k in ks if (shard, k) not in id_of)
        if missing_lines or missing_ks:
            raise DedupFileError(
                shard_paths[shard],
                f"shard changed since deduplication: lines {missing_lines[:5]} or documents "
                f"number {missing_ks[:5]} are absent",
            )
    return texts, id_of


def _summarise(jaccards: list[float], threshold: float) -> dict:
    above = sum(j >= threshold for j in jaccards)
    return {
        "pairs": len(jaccards),
        "above_threshold": above,
        "below_threshold": len(jaccards) - above,
        "rate_above": above / len(jaccards) if jaccards else None,
        "min_jaccard": min(jaccards) if jaccards else None,
    }


def _sample(rng: random.Random, items: Sequence, n: int) -> list:
    return [items[i] for i in sorted(rng.sample(range(len(items)), min(n, len(items))))]


def _sample_check(check: SampleCheck) -> dict:
    """Exact Jaccard of sampled pairs vs the decision (duplicate or not)."""
    meta, arrays = _read_npz(check.removals_path, "removals", ["removed", "kept_as"])
    params = DedupParams(**meta["params"])
    rng = random.Random(check.seed)
    removed, kept_as = arrays["removed"].tolist(), arrays["kept_as"].tolist()
    root = dict(zip(removed, kept_as, strict=True))
    removal_pairs = _sample(rng, list(zip(removed, kept_as, strict=True)), check.num_pairs)

    edges: set[tuple[int, int]] = set()
    rejected: set[tuple[int, int]] = set()
    for path in check.edge_paths:
        _, e = _read_npz(path, "edges", ["src", "dst", "rejected_src", "rejected_dst"])
        edges.update(zip(e["src"].tolist(), e["dst"].tolist(), strict=True))
        rejected.update(zip(e["rejected_src"].tolist(), e["rejected_dst"].tolist(), strict=True))
    candidate_pairs = _sample(rng, sorted(edges), check.num_pairs)
    # Rejected in one band but accepted in another: an edge, not a rejection.
    rejected_pairs = _sample(rng, sorted(rejected - edges), check.num_pairs)

    # Random pairs: uniform over all documents, drawn as (shard, k-th document of the shard).
    population = [
        (int(index), k)
        for index, record in sorted(meta["shards"].items(), key=lambda kv: int(kv[0]))
        for k in range(record["num_docs"])
    ]
    random_ordinals = [tuple(rng.sample(population, 2)) for _ in range(check.num_pairs)]
    random_ordinals = random_ordinals if len(population) >= 2 else []

    texts, id_of = _load_texts(
        check.shard_paths,
        {i for pair in removal_pairs + candidate_pairs + rejected_pairs for i in pair},
        {o for pair in random_ordinals for o in pair},
    )
    random_pairs = [(id_of[a], id_of[b]) for a, b in random_ordinals]

    def jaccards(pairs: list[tuple[int, int]]) -> list[float]:
        return [exact_jaccard(texts[a], texts[b], params.ngram) for a, b in pairs]

    above = [j >= params.threshold for j in jaccards(random_pairs)]
    same = [root.get(a, a) == root.get(b, b) for a, b in random_pairs]
    return {
        "threshold": params.threshold,
        "removed_vs_kept": _summarise(jaccards(removal_pairs), params.threshold),
        "candidate_pairs": _summarise(jaccards(candidate_pairs), params.threshold),
        "rejected_pairs": _summarise(jaccards(rejected_pairs), params.threshold),
        "random_pairs": {
            "pairs": len(random_pairs),
            "above_threshold": sum(above),
            "decided_duplicate": sum(same),
            "kept_although_above_threshold": sum(
                a and not d for a, d in zip(above, same, strict=True)
            ),
            "removed_although_below_threshold": sum(
                d and not a for a, d in zip(above, same, strict=True)
            ),
        },
    }


def merge_reports(
    report_paths: Sequence[str | os.PathLike],
    out_path: str | os.PathLike,
    sample_check: SampleCheck | None = None,
) -> dict:
    """Merge per-shard filter reports into one JSON report, optionally with a verification.

    The report has documents and text bytes in/out, removals per ``pile_set_name``, the
    cluster counts and the candidate-pair verification counts (``clusters``,
    ``edge_verification``; with ``sample_check``), and ``verification``: for sampled removed
    documents paired with the document kept in their cluster, for sampled edges
    (``candidate_pairs``), for sampled pairs that edge verification rejected
    (``rejected_pairs``: its false rejections are those above the threshold) and for random
    pairs, how many have exact shingle Jaccard at/above the threshold. Returns the report.

    Raises:
        DedupFileError: a report is missing, not valid JSON, of the wrong kind, with other
            parameters than the rest, or two reports are of the same shard.
    """
    shards, per_set, params = [], {}, None
    totals = {"docs_in": 0, "docs_out": 0, "bytes_in": 0, "bytes_out": 0}
    for path in map(Path, report_paths):
        try:
            report = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise DedupFileError(path, f"unreadable filter report: {exc}") from None
        if report.get("kind") != "filter_report":
            raise DedupFileError(path, f"not a filter report (kind={report.get('kind')!r})")
        params = _check_same_params(path, report, params)
        if any(s["index"] == report["shard"]["index"] for s in shards):
            raise DedupFileError(path, f"second report for shard {report['shard']['index']}")
        shards.append(
            {
                **report["shard"],
                "docs_in": report["docs_in"],
                "docs_out": report["docs_out"],
                "output": report["output"],
            }
        )
        for key in totals:
            totals[key] += report[key]
        for name, stats in report["per_set"].items():
            merged = per_set.setdefault(name, dict.fromkeys(stats, 0))
            for key, value in stats.items():
                merged[key] += value
    merged_report = {
        "kind": "dedup_report",
        "version": _FORMAT_VERSION,
        "params": params,
        **totals,
        "docs_removed": totals["docs_in"] - totals["docs_out"],
        "removed_fraction": (totals["docs_in"] - totals["docs_out"]) / max(totals["docs_in"], 1),
        "per_set": {k: per_set[k] for k in sorted(per_set)},
        "shards": sorted(shards, key=lambda s: s["index"]),
    }
    if sample_check is not None:
        removals_meta, _ = _read_npz(sample_check.removals_path, "removals", [])
        merged_report["clusters"] = {
            k: removals_meta[k]
            for k in ("num_clusters", "num_docs_in_clusters", "num_removed", "num_edges")
        }
        merged_report["edge_verification"] = removals_meta["edge_verification"]
        merged_report["verification"] = _sample_check(sample_check)
    _write_json(out_path, merged_report)
    return merged_report


# --------------------------------------------------------------------------------------------
# All stages in one process (tests, benchmarks, small corpora)
# --------------------------------------------------------------------------------------------


def run_pipeline(
    shard_paths: Sequence[str | os.PathLike],
    work_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    params: DedupParams,
    *,
    num_pairs: int = 200,
) -> dict:
    """Run every stage in this process, shard ``i`` of ``shard_paths`` having index ``i``.

    Intermediate files go to ``work_dir`` (``signatures/NN.npz``, ``edges/band_B.npz``,
    ``removals.npz``, ``reports/NN.json``); deduplicated shards to ``out_dir`` under their
    input names; the merged report to ``work_dir/report.json``. Returns the merged report.
    """
    work, out = Path(work_dir), Path(out_dir)
    sig_paths, edge_paths, report_paths = [], [], []
    for i, shard in enumerate(shard_paths):
        sig_paths.append(work / "signatures" / f"{i:02d}.npz")
        compute_signatures(shard, i, sig_paths[-1], params)
    for band in [EXACT_BAND, *range(params.bands)]:
        name = "exact" if band == EXACT_BAND else f"{band:03d}"
        edge_paths.append(work / "edges" / f"band_{name}.npz")
        bucket_band(sig_paths, band, edge_paths[-1])
    removals = work / "removals.npz"
    cluster(edge_paths, removals)
    for i, shard in enumerate(shard_paths):
        report_paths.append(work / "reports" / f"{i:02d}.json")
        filter_shard(shard, i, removals, out / Path(shard).name, report_paths[-1])
    check = SampleCheck(dict(enumerate(shard_paths)), removals, edge_paths, num_pairs=num_pairs)
    return merge_reports(report_paths, work / "report.json", sample_check=check)
