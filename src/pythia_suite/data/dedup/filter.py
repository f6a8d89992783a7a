"""Stage 4, per shard: copy the lines the clusters kept, byte for byte, to a new ``.jsonl.zst``,
with a per-shard report."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import zstandard

from pythia_suite.data.dedup.files import (
    check_shard_index,
    output_path,
    read_npz,
    split_ids,
    write_json,
)
from pythia_suite.data.dedup.params import FORMAT_VERSION, DedupFileError
from pythia_suite.data.shards import DataFormatError
from pythia_suite.hashing import sha256_file

_ZSTD_LEVEL = 3
_ZSTD_MAX_WINDOW_SIZE = 2**31
_READ_CHUNK = 1 << 20


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


def _removed_lines(removals_path: Path, shard_index: int) -> tuple[dict, dict, set[int]]:
    """The removals file's meta, its record of the shard, and the shard's line numbers to remove.

    Raises:
        DedupFileError: the removals file is missing or corrupt, or does not know this shard.
    """
    removals_meta, arrays = read_npz(removals_path, "removals", ["removed"])
    record = removals_meta["shards"].get(str(shard_index))
    if record is None:
        raise DedupFileError(removals_path, f"no shard with index {shard_index} was deduplicated")
    shard_of, line_of = split_ids(arrays["removed"])
    return removals_meta, record, set(line_of[shard_of == shard_index].tolist())


def _parse_document(shard_path: Path, line_no: int, line: bytes) -> tuple[str, str]:
    """``(text, pile_set_name)`` of one line (``"unknown"`` without a set name).

    Raises:
        DataFormatError: the line is not a JSON document with a string ``text``.
    """
    try:
        doc = json.loads(line)
        text = doc["text"]
        set_name = str((doc.get("meta") or {}).get("pile_set_name", "unknown"))
    except (ValueError, TypeError, KeyError, AttributeError) as exc:
        raise DataFormatError(shard_path, line_no, f"bad document: {exc}") from None
    if not isinstance(text, str):
        raise DataFormatError(shard_path, line_no, 'document has no string "text"')
    return text, set_name


@dataclass
class _FilterTally:
    """Documents and text bytes in and out of one shard, in total and per ``pile_set_name``."""

    docs_in: int = 0
    docs_out: int = 0
    bytes_in: int = 0
    bytes_out: int = 0
    removed_seen: int = 0
    per_set: dict[str, dict[str, int]] = field(default_factory=dict)

    def count(self, set_name: str, size: int, removed: bool) -> None:
        """Count one document of ``size`` text bytes, removed or kept."""
        stats = self.per_set.setdefault(
            set_name, {"docs_in": 0, "docs_removed": 0, "bytes_in": 0, "bytes_removed": 0}
        )
        stats["docs_in"] += 1
        stats["bytes_in"] += size
        self.docs_in += 1
        self.bytes_in += size
        if removed:
            self.removed_seen += 1
            stats["docs_removed"] += 1
            stats["bytes_removed"] += size
            return
        self.docs_out += 1
        self.bytes_out += size


def _copy_kept_lines(shard_path: Path, to_remove: set[int], out: Path) -> tuple[_FilterTally, str]:
    """Copy the lines of the shard not in ``to_remove`` to one zstd frame in ``out``.

    Returns the tally and the sha256 of the shard's bytes as read. ``out`` is closed on return,
    so its hash covers the frame's last bytes, which stay in the file's buffer until then.

    Raises:
        FileNotFoundError: ``shard_path`` does not exist.
        DataFormatError: a line is bad or the shard is truncated (file and line).
    """
    tally = _FilterTally()
    with open(out, "wb") as raw_out, open(shard_path, "rb") as raw_in:
        reader = _HashingReader(raw_in)
        writer = zstandard.ZstdCompressor(level=_ZSTD_LEVEL).stream_writer(raw_out, closefd=False)
        for line_no, line in _iter_raw_lines(shard_path, reader):
            text, set_name = _parse_document(shard_path, line_no, line)
            removed = line_no in to_remove
            tally.count(set_name, len(text.encode("utf-8", "surrogatepass")), removed)
            if not removed:
                writer.write(line + b"\n")
        writer.flush(zstandard.FLUSH_FRAME)
        writer.close()
    return tally, reader.sha256.hexdigest()


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
    check_shard_index(shard_index)
    shard_path, removals_path = Path(shard_path), Path(removals_path)
    removals_meta, record, to_remove = _removed_lines(removals_path, shard_index)
    with output_path(out_path) as tmp:
        tally, shard_sha256 = _copy_kept_lines(shard_path, to_remove, tmp)
        if shard_sha256 != record["sha256"] or tally.docs_in != record["num_docs"]:
            raise DedupFileError(
                shard_path,
                f"shard changed since its signatures were computed (sha256 "
                f"{shard_sha256} vs {record['sha256']}, {tally.docs_in} vs "
                f"{record['num_docs']} documents)",
            )
        if tally.removed_seen != len(to_remove):
            raise DedupFileError(removals_path, f"removes lines absent from {shard_path}")
        out_sha256 = sha256_file(tmp)  # closed by _copy_kept_lines: every byte is on disk

    report = {
        "kind": "filter_report",
        "version": FORMAT_VERSION,
        "shard": {"index": shard_index, "name": shard_path.name, "sha256": record["sha256"]},
        "output": {"name": Path(out_path).name, "sha256": out_sha256},
        "params": removals_meta["params"],
        "docs_in": tally.docs_in,
        "docs_out": tally.docs_out,
        "bytes_in": tally.bytes_in,
        "bytes_out": tally.bytes_out,
        "per_set": {k: tally.per_set[k] for k in sorted(tally.per_set)},
    }
    write_json(report_path, report)
    return report
