"""Pile-format shards: reading documents, hashing files, fetching shards with resume.

A shard in the Pile's format is a (usually zstd-compressed) JSON Lines file with one document
per line: ``{"text": "...", "meta": {"pile_set_name": "..."}}``.

Reading is strict: a line that is not JSON, a document without a string ``text``, invalid
UTF-8 and a corrupt or truncated zstd stream all raise :class:`DataFormatError` naming the file
and the line. Truncation needs care: ``zstandard``'s ``stream_reader`` returns a short read
without error when the compressed file ends mid-frame, so frames are decoded here with
``decompressobj`` and an unfinished last frame is reported.
"""

from __future__ import annotations

import json
import os
import shutil
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import zstandard

from pythia_suite.hashing import sha256_file

__all__ = [
    "ChecksumError",
    "DataFormatError",
    "fetch_shard",
    "iter_documents",
]

# The Pile's shards were written with long-distance matching windows of up to 2 GiB.
ZSTD_MAX_WINDOW_SIZE = 2**31
_READ_CHUNK = 1 << 20


class DataFormatError(ValueError):
    """A shard's content is not valid Pile-format JSON Lines.

    Attributes:
        path: the file being read.
        line: 1-based line number of the bad line; for a broken zstd stream, the last line
            that was read completely (0 if none).
        reason: what is wrong.
    """

    def __init__(self, path: str | os.PathLike, line: int, reason: str):
        self.path = str(path)
        self.line = line
        self.reason = reason
        super().__init__(f"{self.path}, line {line}: {reason}")


class ChecksumError(ValueError):
    """A fetched file's sha256 differs from the expected one (the bad file has been removed)."""

    def __init__(self, path: str | os.PathLike, expected: str, actual: str):
        self.path = str(path)
        self.expected = expected
        self.actual = actual
        super().__init__(
            f"{self.path}: sha256 mismatch: expected {expected}, got {actual} (file removed)"
        )


def _is_zstd(path: Path) -> bool:
    return path.suffix == ".zst"


def _zstd_chunks(path: Path, fh) -> Iterator[bytes]:
    """Yield the decompressed bytes of every zstd frame in ``fh``.

    Raises:
        zstandard.ZstdError: the stream is corrupt.
        EOFError: the file ends inside a frame (truncated).
    """
    dctx = zstandard.ZstdDecompressor(max_window_size=ZSTD_MAX_WINDOW_SIZE)
    dobj = dctx.decompressobj()
    in_frame = False
    while True:
        compressed = fh.read(_READ_CHUNK)
        if not compressed:
            break
        while compressed:
            in_frame = True
            out = dobj.decompress(compressed)
            if out:
                yield out
            if dobj.eof:
                # One frame finished; whatever follows belongs to the next frame.
                compressed = dobj.unused_data
                dobj = dctx.decompressobj()
                in_frame = False
            else:
                compressed = b""
    if in_frame:
        raise EOFError("compressed stream ends inside a zstd frame")


def _raw_chunks(fh) -> Iterator[bytes]:
    while chunk := fh.read(_READ_CHUNK):
        yield chunk


def _iter_lines(chunks: Iterator[bytes]) -> Iterator[bytes]:
    """Split a stream of byte chunks into lines (without the newline); keeps a last partial line."""
    pending = b""
    for chunk in chunks:
        lines = (pending + chunk).split(b"\n")
        pending = lines.pop()
        yield from lines
    if pending:
        yield pending


def _parse_document(path: Path, line_no: int, line: bytes) -> dict:
    try:
        doc = json.loads(line)
    except UnicodeDecodeError as exc:
        raise DataFormatError(path, line_no, f"invalid UTF-8: {exc}") from None
    except json.JSONDecodeError as exc:
        raise DataFormatError(
            path, line_no, f"not valid JSON: {exc.msg} at column {exc.colno}"
        ) from None
    if not isinstance(doc, dict):
        raise DataFormatError(path, line_no, f"expected a JSON object, got {type(doc).__name__}")
    if not isinstance(doc.get("text"), str):
        found = "missing" if "text" not in doc else type(doc["text"]).__name__
        raise DataFormatError(path, line_no, f'document has no string "text" (found: {found})')
    return doc


def iter_documents(path: str | os.PathLike) -> Iterator[tuple[int, dict]]:
    """Yield ``(line_no, document)`` for each line of a Pile-format ``.jsonl.zst`` or ``.jsonl``.

    ``line_no`` is 1-based. Blank lines are skipped (but counted). Files ending in ``.zst`` are
    decompressed as a stream (any number of frames, windows up to 2 GiB); anything else is read
    as plain JSON Lines.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        DataFormatError: a line is not a JSON object with a string ``text``, is not UTF-8, or the
            zstd stream is corrupt or truncated (the error names the last good line).
    """
    path = Path(path)
    line_no = 0
    with open(path, "rb") as fh:
        chunks = _zstd_chunks(path, fh) if _is_zstd(path) else _raw_chunks(fh)
        lines = _iter_lines(chunks)
        while True:
            try:
                line = next(lines)
            except StopIteration:
                return
            except zstandard.ZstdError as exc:
                raise DataFormatError(
                    path, line_no, f"corrupt zstd stream after line {line_no}: {exc}"
                ) from None
            except EOFError as exc:
                raise DataFormatError(
                    path, line_no, f"truncated zstd stream after line {line_no}: {exc}"
                ) from None
            line_no += 1
            if not line.strip():
                continue
            yield line_no, _parse_document(path, line_no, line)


def _is_url(source: str) -> bool:
    return source.startswith(("http://", "https://"))


def _download(url: str, part: Path, timeout: float) -> None:
    """Download ``url`` into ``part``, continuing from ``part``'s current size if it exists.

    Uses an HTTP Range request to resume; a server that answers 200 instead of 206 sends the
    whole file, so the partial file is then overwritten from the start.
    """
    offset = part.stat().st_size if part.exists() else 0
    request = urllib.request.Request(url)
    if offset:
        request.add_header("Range", f"bytes={offset}-")
    try:
        response = urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as exc:
        if exc.code == 416 and offset:
            # Range not satisfiable: the partial file already holds every byte; the checksum
            # (if any) decides whether it is the right file.
            return
        raise OSError(f"{url}: HTTP {exc.code} {exc.reason}") from None
    with response:
        resumed = offset and response.status == 206
        with open(part, "ab" if resumed else "wb") as out:
            shutil.copyfileobj(response, out, _READ_CHUNK)
        expected = response.headers.get("Content-Length")
        written = part.stat().st_size - (offset if resumed else 0)
        if expected is not None and written != int(expected):
            raise OSError(
                f"{url}: connection closed after {written} of {expected} bytes; "
                f"partial download kept in {part} for resume"
            )


def fetch_shard(
    source: str | os.PathLike,
    dest: str | os.PathLike,
    sha256: str | None = None,
    *,
    timeout: float = 60.0,
) -> str:
    """Copy a local file or download an http(s) URL to ``dest`` and return its sha256.

    Downloads go to ``dest.part`` and resume from it (HTTP Range) if an earlier attempt was
    interrupted; ``dest`` appears only once complete and verified. If ``dest`` already exists
    and matches ``sha256``, nothing is fetched. Without ``sha256`` the returned digest is what
    the caller should record to pin the file at first use.

    Raises:
        FileNotFoundError: a local ``source`` does not exist.
        OSError: the download failed (HTTP error, connection closed early); ``dest.part`` is kept
            so that a retry resumes.
        ChecksumError: the fetched bytes do not match ``sha256``; ``dest.part`` is removed.
    """
    source = os.fspath(source)
    dest = Path(dest)
    if sha256 is not None:
        sha256 = sha256.lower()
        if dest.exists() and sha256_file(dest) == sha256:
            return sha256
    dest.parent.mkdir(parents=True, exist_ok=True)
    # Not atomic.atomic_path: a failed download keeps its `.part` on purpose, for resume.
    part = dest.with_name(dest.name + ".part")
    if _is_url(source):
        _download(source, part, timeout)
    else:
        if not Path(source).is_file():
            raise FileNotFoundError(f"{source}: no such file")
        shutil.copyfile(source, part)
    actual = sha256_file(part)
    if sha256 is not None and actual != sha256:
        part.unlink()
        raise ChecksumError(dest, sha256, actual)
    os.replace(part, dest)
    return actual


def fetch_shard_with_record(entry: dict, index: int, output: str | os.PathLike, log) -> None:
    """Fetch the raw shard ``entry`` (``data.raw.shards[index]``: ``path`` or ``url``, maybe
    ``sha256``) to ``output`` (``fetch_shard``) with its provenance record; an unpinned shard's
    sha256 is recorded, and said through ``log``, at first use. Raises what ``fetch_shard``
    raises."""
    from pythia_suite.provenance import Recorder

    source = entry.get("path") or entry["url"]
    # A local source is the raw root of every provenance chain; a URL is recorded by value.
    local = [Path(source)] if entry.get("path") else []
    recorder = Recorder(Path(output), "corpus-shard", {"shard": entry}, local)
    sha = fetch_shard(source, output, sha256=entry.get("sha256"))
    if not entry.get("sha256"):
        log(f"data.raw.shards[{index}]: no sha256 configured; recorded {sha} at first use")
    recorder.extra = {"source": source, "sha256_configured": entry.get("sha256")}
    recorder.write()
