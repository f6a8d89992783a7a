"""The stages' files: deterministic ``.npz`` (read, written, memory-mapped), packed document ids,
JSON reports, all written through :func:`pythia_suite.atomic.atomic_path`."""

from __future__ import annotations

import io
import json
import math
import os
import zipfile
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from pythia_suite.atomic import atomic_path
from pythia_suite.data.dedup.params import FORMAT_VERSION, LINE_BITS, DedupFileError


@contextmanager
def output_path(path: str | os.PathLike) -> Iterator[Path]:
    """:func:`~pythia_suite.atomic.atomic_path` of ``path``, after removing the temporaries that
    killed runs left beside it (``.NAME.PID.tmp``), so they cannot be mistaken for output."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    for stale in path.parent.glob(f".{path.name}.*.tmp"):
        stale.unlink(missing_ok=True)
    with atomic_path(path) as tmp:
        yield tmp


def write_npz(path: str | os.PathLike, meta: dict, arrays: Mapping[str, np.ndarray]) -> None:
    """Write arrays plus a ``meta.json`` entry as an ``.npz`` whose bytes depend only on content.

    ``np.savez`` stamps the current time into the zip; here every entry gets a fixed date.
    """
    with output_path(path) as tmp, zipfile.ZipFile(tmp, "w", zipfile.ZIP_STORED) as zf:
        info = zipfile.ZipInfo("meta.json", date_time=(1980, 1, 1, 0, 0, 0))
        zf.writestr(info, json.dumps(meta, sort_keys=True, indent=1))
        for name, array in arrays.items():
            buf = io.BytesIO()
            np.lib.format.write_array(buf, np.ascontiguousarray(array), allow_pickle=False)
            zf.writestr(
                zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0)), buf.getvalue()
            )


def read_npz(path: str | os.PathLike, kind: str, names: Sequence[str]) -> tuple[dict, dict]:
    """Read ``meta`` and arrays ``names`` from a file written by :func:`write_npz`.

    Raises:
        DedupFileError: the file is missing, not a complete npz, not of ``kind`` or lacks arrays.
    """
    path = Path(path)
    if not path.is_file():
        raise DedupFileError(path, f"no such {kind} file")
    try:
        with zipfile.ZipFile(path) as zf:
            meta = json.loads(zf.read("meta.json"))
            if meta.get("kind") != kind or meta.get("version") != FORMAT_VERSION:
                raise DedupFileError(
                    path,
                    f"expected a {kind} file (version {FORMAT_VERSION}), "
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


def mmap_npz_array(path: Path, name: str) -> np.ndarray:
    """Memory-map array ``name`` of an npz written by :func:`write_npz` (read-only).

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


def doc_ids(shard_index: int, line_numbers: np.ndarray) -> np.ndarray:
    """Packed uint64 document ids ``shard_index << 32 | line`` of a shard's line numbers."""
    return (np.uint64(shard_index) << np.uint64(LINE_BITS)) | line_numbers.astype(np.uint64)


def split_ids(ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(shard indices, line numbers)`` of packed document ids."""
    ids = ids.astype(np.uint64)
    return (ids >> np.uint64(LINE_BITS)).astype(np.int64), (
        ids & np.uint64((1 << LINE_BITS) - 1)
    ).astype(np.int64)


def check_shard_index(shard_index: int) -> None:
    """Raises ValueError: ``shard_index`` does not fit the 31 bits a packed id gives it."""
    if not 0 <= shard_index < 2**31:
        raise ValueError(f"shard_index must be in [0, 2**31), got {shard_index!r}")


def check_same_params(path: Path, meta: dict, expected: dict | None) -> dict:
    """``meta``'s parameters, which must equal ``expected`` (those of the files read before).

    Raises:
        DedupFileError: they differ.
    """
    if expected is not None and meta["params"] != expected:
        raise DedupFileError(
            path, f"computed with parameters {meta['params']}, others with {expected}"
        )
    return meta["params"]


def write_json(path: str | os.PathLike, obj: dict) -> None:
    """``obj`` as sorted JSON (indent 1, one trailing newline), written atomically."""
    with output_path(path) as tmp:
        Path(tmp).write_text(json.dumps(obj, sort_keys=True, indent=1) + "\n", encoding="utf-8")
