"""Writing files and directories so that nothing partial ever looks complete: write a temporary
file or directory beside the final one (same file system), then rename it over the final name."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """A temporary sibling of `path` (`.NAME.PID.tmp`) to write, renamed to `path` on success.

    For writers that stream into a file of their own (numpy memmaps, zstd frames, a dataset's
    `.bin`). Creates the directory. On any error, inside the block or in the rename, the
    temporary file is removed and the error re-raised, so `path` is never left half-written.
    """
    with atomic_paths(path) as (tmp,):
        yield tmp


@contextmanager
def atomic_paths(*paths: str | os.PathLike) -> Iterator[list[Path]]:
    """Temporary siblings for several files written together, renamed in the order given.

    Put the file that marks the set complete last (a dataset's `.idx` after its `.bin`): a crash
    between two renames then leaves no complete-looking set. On any error every temporary file
    is removed and the error re-raised.
    """
    finals = [Path(p) for p in paths]
    tmps = [f.with_name(f".{f.name}.{os.getpid()}.tmp") for f in finals]
    for final in finals:
        final.parent.mkdir(parents=True, exist_ok=True)
    try:
        yield tmps
        for tmp, final in zip(tmps, finals, strict=True):
            os.replace(tmp, final)
    except BaseException:
        for tmp in tmps:
            tmp.unlink(missing_ok=True)
        raise


def write_text_atomic(path: str | os.PathLike, text: str, *, fsync: bool = False) -> Path:
    """Write `text` to `path` via `.NAME.PID.tmp` and `os.replace`; creates the directory.

    With `fsync`, the data reaches the disk before the rename (for state a crash must not
    lose). On any error the temporary file is removed and the error re-raised.
    """
    with atomic_path(path) as tmp:
        with open(tmp, "w", encoding="utf-8") as fh:
            fh.write(text)
            if fsync:
                fh.flush()
                os.fsync(fh.fileno())
    return Path(path)


def write_bytes_atomic(path: str | os.PathLike, data: bytes) -> Path:
    """Write `data` to `path` via `.NAME.PID.tmp` and `os.replace`; creates the directory."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def replace_symlink(link: str | os.PathLike, target: str | os.PathLike) -> Path:
    """Point `link` at `target` (written as given: absolute or relative), replacing any link or
    file there in one rename, so a reader sees the old target or the new one, never neither."""
    link = Path(link)
    tmp = link.with_name(f".{link.name}.{os.getpid()}.tmp")
    tmp.unlink(missing_ok=True)
    try:
        os.symlink(target, tmp)
        os.replace(tmp, link)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return link


def write_json_atomic(
    path: str | os.PathLike,
    data: Any,
    *,
    indent: int = 2,
    sort_keys: bool = True,
    default: Callable[[Any], Any] | None = None,
    fsync: bool = False,
) -> Path:
    """`data` as JSON (one trailing newline) written with `write_text_atomic`."""
    text = json.dumps(data, indent=indent, sort_keys=sort_keys, default=default) + "\n"
    return write_text_atomic(path, text, fsync=fsync)


def copy_file_atomic(source: str | os.PathLike, path: str | os.PathLike) -> Path:
    """Copy `source` to `path` via `.NAME.PID.tmp` and `os.replace`; creates the directory.

    On any error the temporary file is removed and the error re-raised.
    """
    with atomic_path(path) as tmp:
        shutil.copyfile(source, tmp)
    return Path(path)


@contextmanager
def atomic_directory(path: str | os.PathLike) -> Iterator[Path]:
    """Build a directory in a temporary sibling (`.NAME.tmp-XXXX`) and rename it to `path`.

    Yields the temporary directory to fill. On success it replaces `path` (an existing one is
    moved aside first and removed after, so a crash never leaves a half-written directory under
    the final name); on any error the temporary directory is removed and the error re-raised.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp-", dir=path.parent))
    try:
        yield tmp
        os.chmod(tmp, 0o755)  # mkdtemp creates 0o700
        if path.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{path.name}.old-", dir=path.parent))
            os.replace(path, old / path.name)
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
