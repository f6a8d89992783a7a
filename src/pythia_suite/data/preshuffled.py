"""Pythia's preshuffled datasets: fetch, verify, merge, and read them as training batches.

EleutherAI published the exact token sequences Pythia trained on as Megatron mmap datasets whose
item ``k`` is global training sample ``k`` (2049 tokens, already in GPT-NeoX's order):
``EleutherAI/pile-standard-pythia-preshuffled`` and ``EleutherAI/pile-deduped-pythia-preshuffled``
on the Hugging Face Hub (dataset repos). The ``.bin`` is split into byte shards
``document-00000-of-00020.bin`` ... ``document-00020-of-00020.bin`` (the ``of`` number is the
last shard's index, as Pythia's ``utils/shard_memmap.py`` writes it) beside one ``document.idx``.
Pythia's batch viewer reads iteration ``s`` as items ``[1024 s, 1024 (s + 1))``.

* :func:`fetch_preshuffled` downloads a repo with ``huggingface_hub.snapshot_download`` and
  verifies it (:func:`verify_preshuffled`: every item has ``seq_length + 1`` tokens, shard sizes
  add up to what the index describes, optional sha256 per shard).
* :func:`merge_preshuffled` streams the shards into one ``.bin`` next to a copy of the index.
* :class:`PreshuffledSamples` serves it with the interface of ``order.GPTNeoXSamples``.
* :func:`write_preshuffled` / :func:`shard_preshuffled` make such a dataset from any sample
  order (e.g. a reproduction's own), in the same layout.

Known facts about the published files (from pythia.md): the deduped set reportedly holds no
token 0 (``<|endoftext|>``); the shard size of the Hub sets is not documented, so verification
only requires equal shards with a last one no larger, summing to the index's byte count.
"""

from __future__ import annotations

import os
import re
import shutil
import struct
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import NamedTuple

import numpy as np

from pythia_suite.atomic import atomic_path, atomic_paths
from pythia_suite.data.indexed import (
    DTYPE_CODES,
    HEADER_SIZE,
    MAGIC,
    IndexedDataset,
    IndexedDatasetWriter,
)
from pythia_suite.data.order import SampleBatches
from pythia_suite.hashing import sha256_file

__all__ = [
    "PRESHUFFLED_REPOS",
    "PreshuffledError",
    "PreshuffledFiles",
    "PreshuffledSamples",
    "fetch_preshuffled",
    "find_preshuffled_files",
    "merge_preshuffled",
    "parse_shard_hashes",
    "shard_preshuffled",
    "verify_preshuffled",
    "write_preshuffled",
]

#: Hub dataset repos of the two variants.
PRESHUFFLED_REPOS = {
    "standard": "EleutherAI/pile-standard-pythia-preshuffled",
    "deduped": "EleutherAI/pile-deduped-pythia-preshuffled",
}
SEQ_LENGTH = 2048
_SHARD_NAME = re.compile(r"^(?P<stem>.+)-(?P<index>\d{5})-of-(?P<last>\d{5})\.bin$")
_COPY_BUFFER = 16 << 20


class PreshuffledError(ValueError):
    """A preshuffled dataset is incomplete or inconsistent; the message names the file."""


class PreshuffledFiles(NamedTuple):
    """The index and the ``.bin`` shards of a preshuffled dataset, shards in order."""

    idx: Path
    shards: list[Path]


# --------------------------------------------------------------------------------------------
# Locating, fetching and verifying
# --------------------------------------------------------------------------------------------


def find_preshuffled_files(
    directory: str | os.PathLike, stem: str = "document"
) -> PreshuffledFiles:
    """Find ``{stem}.idx`` and its shards ``{stem}-NNNNN-of-MMMMM.bin`` under ``directory``.

    Raises ``PreshuffledError`` when the index is missing or ambiguous, or a shard is missing,
    duplicated, or disagrees with the others on the last index ``MMMMM``.
    """
    directory = Path(directory)
    idx = sorted(directory.rglob(f"{stem}.idx"))
    if len(idx) != 1:
        found = ", ".join(map(str, idx)) or "none"
        raise PreshuffledError(f"{directory}: expected one {stem}.idx, found {found}")
    shards: dict[int, Path] = {}
    lasts: set[int] = set()
    for path in sorted(directory.rglob(f"{stem}-*-of-*.bin")):
        match = _SHARD_NAME.match(path.name)
        if not match or match["stem"] != stem:
            continue
        index = int(match["index"])
        if index in shards:
            raise PreshuffledError(f"{path}: shard {index} also at {shards[index]}")
        shards[index] = path
        lasts.add(int(match["last"]))
    if not shards:
        raise PreshuffledError(f"{directory}: no {stem}-NNNNN-of-MMMMM.bin shards")
    if len(lasts) != 1:
        raise PreshuffledError(f"{directory}: shards disagree on their count: -of-{sorted(lasts)}")
    last = lasts.pop()
    missing = [i for i in range(last + 1) if i not in shards]
    if missing or max(shards) != last:
        names = ", ".join(f"{stem}-{i:05d}-of-{last:05d}.bin" for i in missing[:5])
        raise PreshuffledError(f"{directory}: missing shards {names}")
    return PreshuffledFiles(idx[0], [shards[i] for i in range(last + 1)])


def parse_shard_hashes(path: str | os.PathLike) -> dict[str, str]:
    """Read a sha256 list: lines ``<filename> <sha256>`` (Pythia's ``shard_hashes.txt``) or
    ``<sha256>  <filename>`` (``sha256sum``), blank lines ignored. Returns {basename: hex}.

    Raises ``PreshuffledError`` naming the file and line of a malformed entry.
    """
    hashes: dict[str, str] = {}
    path = Path(path)
    for line_no, line in enumerate(path.read_text().splitlines(), start=1):
        fields = line.split()
        if not fields:
            continue
        digests = [f for f in fields if re.fullmatch(r"[0-9a-fA-F]{64}", f)]
        if len(fields) != 2 or len(digests) != 1:
            raise PreshuffledError(f"{path}:{line_no}: expected '<file> <sha256>', got {line!r}")
        name = fields[1] if fields[0] == digests[0] else fields[0]
        hashes[Path(name.lstrip("*")).name] = digests[0].lower()
    return hashes


def _read_index(idx_path: Path) -> tuple[np.dtype, np.ndarray]:
    """(dtype, sizes) of an ``.idx`` on its own (its ``.bin`` may still be in shards)."""
    with open(idx_path, "rb") as fh:
        header = fh.read(HEADER_SIZE)
    if len(header) < HEADER_SIZE or header[: len(MAGIC)] != MAGIC:
        raise PreshuffledError(f"{idx_path}: not a Megatron mmap index (bad header at offset 0)")
    version, code, n_items, n_docs = struct.unpack("<QBQQ", header[len(MAGIC) :])
    if version != 1 or code not in DTYPE_CODES:
        raise PreshuffledError(f"{idx_path}: unsupported version {version} or dtype code {code}")
    expected = HEADER_SIZE + 12 * n_items + 8 * n_docs
    if idx_path.stat().st_size != expected:
        raise PreshuffledError(
            f"{idx_path}: {idx_path.stat().st_size} bytes, its header requires {expected}"
        )
    sizes = np.memmap(idx_path, dtype="<i4", mode="r", offset=HEADER_SIZE, shape=(n_items,))
    return DTYPE_CODES[code], sizes


def _check_sample_sizes(idx_path: Path, sizes: np.ndarray, seq_length: int) -> None:
    bad = np.flatnonzero(sizes != seq_length + 1)
    if bad.size:
        i = int(bad[0])
        raise PreshuffledError(
            f"{idx_path}: item {i} has {int(sizes[i])} tokens, a preshuffled sample has "
            f"{seq_length + 1} (byte offset {HEADER_SIZE + 4 * i})"
        )


def verify_preshuffled(
    files: PreshuffledFiles,
    expected_sha256: Mapping[str, str] | None = None,
    *,
    seq_length: int = SEQ_LENGTH,
) -> int:
    """Check a sharded preshuffled dataset against its index; return the ``.bin`` size in bytes.

    Every item must have ``seq_length + 1`` tokens; shards must be equally sized but the last
    (no larger) and add up to exactly the bytes the index describes. With ``expected_sha256``
    ({shard file name: hex}, see :func:`parse_shard_hashes`) every shard must be listed and match.
    Raises ``PreshuffledError`` naming the first offending file.
    """
    dtype, sizes = _read_index(files.idx)
    _check_sample_sizes(files.idx, sizes, seq_length)
    expected_bytes = len(sizes) * (seq_length + 1) * dtype.itemsize
    shard_bytes = [path.stat().st_size for path in files.shards]
    for path, size in zip(files.shards[:-1], shard_bytes[:-1], strict=True):
        if size != shard_bytes[0]:
            raise PreshuffledError(f"{path}: {size} bytes, the first shard has {shard_bytes[0]}")
    if len(files.shards) > 1 and shard_bytes[-1] > shard_bytes[0]:
        raise PreshuffledError(f"{files.shards[-1]}: last shard larger than the others")
    if sum(shard_bytes) != expected_bytes:
        raise PreshuffledError(
            f"{files.shards[-1]}: shards hold {sum(shard_bytes)} bytes, {files.idx.name} "
            f"describes {expected_bytes} ({len(sizes)} samples of {seq_length + 1} {dtype})"
        )
    if expected_sha256 is not None:
        for path in files.shards:
            if path.name not in expected_sha256:
                raise PreshuffledError(f"{path}: no sha256 listed for this shard")
        listed_idx = [files.idx] if files.idx.name in expected_sha256 else []
        for path in listed_idx + files.shards:
            want = expected_sha256[path.name]
            got = sha256_file(path)
            if got != want.lower():
                raise PreshuffledError(f"{path}: sha256 {got}, expected {want}")
    return expected_bytes


def _snapshot_download(**kwargs) -> str:
    from huggingface_hub import snapshot_download

    return snapshot_download(**kwargs)


def fetch_preshuffled(
    repo_id: str,
    local_dir: str | os.PathLike,
    revision: str | None = None,
    *,
    shard_hashes: str | os.PathLike | Mapping[str, str] | None = None,
    seq_length: int = SEQ_LENGTH,
    download: Callable[..., str] | None = None,
) -> PreshuffledFiles:
    """Download a preshuffled dataset repo into ``local_dir`` and verify it.

    ``download`` defaults to ``huggingface_hub.snapshot_download`` (called with ``repo_id``,
    ``repo_type="dataset"``, ``revision``, ``local_dir``, ``allow_patterns``); tests pass a
    stand-in with the same keywords. ``shard_hashes`` is a ``shard_hashes.txt``-style file or a
    {file name: sha256} mapping. Returns the verified files (merge them with
    :func:`merge_preshuffled`). Raises ``PreshuffledError`` naming the offending file.
    """
    download = download or _snapshot_download
    local_dir = Path(local_dir)
    local_dir.mkdir(parents=True, exist_ok=True)
    download(
        repo_id=repo_id,
        repo_type="dataset",
        revision=revision,
        local_dir=str(local_dir),
        allow_patterns=["*.idx", "*.bin"],
    )
    files = find_preshuffled_files(local_dir)
    if shard_hashes is not None and not isinstance(shard_hashes, Mapping):
        shard_hashes = parse_shard_hashes(shard_hashes)
    verify_preshuffled(files, shard_hashes, seq_length=seq_length)
    return files


# --------------------------------------------------------------------------------------------
# Merging and sharding
# --------------------------------------------------------------------------------------------


def merge_preshuffled(
    shard_paths: Iterable[str | os.PathLike],
    idx_path: str | os.PathLike,
    out_prefix: str | os.PathLike | None = None,
    *,
    seq_length: int = SEQ_LENGTH,
) -> Path:
    """Concatenate byte shards into ``{out_prefix}.bin`` beside ``{out_prefix}.idx``.

    ``out_prefix`` defaults to the index's own prefix (the ``.bin`` lands next to it); otherwise
    the index is copied there. Shards are taken in their ``-NNNNN-of-`` order and checked with
    :func:`verify_preshuffled` first. Both files are written under temporary names and renamed
    (``.bin`` first). Returns ``out_prefix``, ready for :class:`PreshuffledSamples`.
    """
    idx_path = Path(idx_path)
    shards = sorted((Path(p) for p in shard_paths), key=_shard_index)
    if not shards:
        raise PreshuffledError(f"{idx_path}: no shards given")
    verify_preshuffled(PreshuffledFiles(idx_path, shards), seq_length=seq_length)
    out_prefix = Path(out_prefix) if out_prefix is not None else idx_path.with_suffix("")
    out_bin, out_idx = Path(f"{out_prefix}.bin"), Path(f"{out_prefix}.idx")
    same_idx = out_idx.exists() and os.path.samefile(out_idx, idx_path)
    with atomic_paths(*([out_bin] if same_idx else [out_bin, out_idx])) as tmps:
        with open(tmps[0], "wb") as out:
            for shard in shards:
                with open(shard, "rb") as src:
                    shutil.copyfileobj(src, out, _COPY_BUFFER)
        if not same_idx:
            shutil.copyfile(idx_path, tmps[1])
    return out_prefix


def _shard_index(path: Path) -> int:
    match = _SHARD_NAME.match(path.name)
    if not match:
        raise PreshuffledError(f"{path}: not a shard name (expected STEM-NNNNN-of-MMMMM.bin)")
    return int(match["index"])


def shard_preshuffled(
    prefix: str | os.PathLike, out_dir: str | os.PathLike, shard_bytes: int
) -> PreshuffledFiles:
    """Split ``{prefix}.bin`` into ``shard_bytes`` shards named as Pythia's ``shard_memmap.py``
    names them (``{name}-{i:05d}-of-{n:05d}.bin``, ``n = size // shard_bytes`` the last index)
    and copy the ``.idx`` beside them. The inverse of :func:`merge_preshuffled`."""
    prefix, out_dir = Path(prefix), Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    size = Path(f"{prefix}.bin").stat().st_size
    last = size // shard_bytes
    shards = []
    with open(f"{prefix}.bin", "rb") as src:
        for i in range(last + 1):
            path = out_dir / f"{prefix.name}-{i:05d}-of-{last:05d}.bin"
            with atomic_path(path) as tmp, open(tmp, "wb") as out:
                remaining = shard_bytes
                while remaining and (block := src.read(min(remaining, _COPY_BUFFER))):
                    out.write(block)
                    remaining -= len(block)
            shards.append(path)
    idx = out_dir / f"{prefix.name}.idx"
    if not (idx.exists() and os.path.samefile(idx, f"{prefix}.idx")):
        shutil.copyfile(f"{prefix}.idx", idx)
    return PreshuffledFiles(idx, shards)


def write_preshuffled(
    samples: SampleBatches,
    out_prefix: str | os.PathLike,
    num_samples: int,
    dtype=np.uint16,
) -> Path:
    """Write samples ``[0, num_samples)`` of any sample source as a preshuffled dataset
    (item ``k`` = sample ``k``). Atomic, as :class:`indexed.IndexedDatasetWriter` is."""
    if not 0 <= num_samples <= len(samples):
        raise ValueError(f"num_samples {num_samples} outside [0, {len(samples)}]")
    with IndexedDatasetWriter(out_prefix, dtype) as writer:
        for k in range(num_samples):
            writer.add_document(samples[k])
    return Path(out_prefix)


# --------------------------------------------------------------------------------------------
# Reading
# --------------------------------------------------------------------------------------------


class PreshuffledSamples(SampleBatches):
    """A merged preshuffled dataset as training samples: ``samples[k]`` is item ``k``.

    Same interface as ``order.GPTNeoXSamples`` (``len``, ``[i]`` -> int64 ``seq_length + 1``
    tokens, ``batch``, ``local_batch``). Raises ``PreshuffledError`` naming the ``.idx`` when an
    item is not ``seq_length + 1`` tokens long, and ``indexed.IndexFormatError`` for a damaged
    ``.idx``/``.bin`` pair.
    """

    def __init__(self, prefix: str | os.PathLike, seq_length: int = SEQ_LENGTH):
        self.seq_length = int(seq_length)
        self.dataset = IndexedDataset(prefix)
        _check_sample_sizes(self.dataset.idx_path, self.dataset.sizes, self.seq_length)

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int) -> np.ndarray:
        return self.dataset[i].astype(np.int64)


def fetch_preshuffled_with_record(
    repo: str, output_prefix: str, *, revision: str, seq_length: int
) -> None:
    """Download Pythia's preshuffled set ``repo`` at ``revision`` beside ``output_prefix``,
    verify it, merge its shards into ``output_prefix``.{bin,idx} and write its provenance
    record. Raises what ``fetch_preshuffled`` and ``merge_preshuffled`` raise."""
    from pythia_suite.atomic import copy_file_atomic
    from pythia_suite.provenance import Recorder

    out = Path(output_prefix)
    files = fetch_preshuffled(repo, out.parent / "download", revision, seq_length=seq_length)
    merge_preshuffled(files.shards, files.idx, out, seq_length=seq_length)
    copy_file_atomic(files.idx, out.with_name(out.name + ".idx"))  # after the .bin it indexes
    Recorder(Path(output_prefix + ".bin"), "preshuffled", {"repo": repo}).write()
