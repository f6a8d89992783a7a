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


class PendingFiles:
    """Temporary siblings of final files, committed (renamed in order) or discarded as a whole.

    For streaming writers whose life spans several calls (a dataset writer's `add_item` ...
    `finalize`); a single block reads better with `atomic_path` / `atomic_paths`. Put the file
    that marks the set complete last (a dataset's `.idx` after its `.bin`): a crash between two
    renames then leaves no complete-looking set. Creates the directories.
    """

    def __init__(self, *paths: str | os.PathLike, tmp_stem: str | os.PathLike | None = None):
        """Temporary names are `.NAME.PID.tmp`; with `tmp_stem` (a prefix such as
        `data/set`), each is `.set.PID.tmp` + the final's suffix, so a reader that opens
        `PREFIX.bin` / `PREFIX.idx` can open the temporary set by `self.tmp_prefix`."""
        self.finals = [Path(p) for p in paths]
        if tmp_stem is None:
            self.tmp_prefix = None
            self.tmps = [f.with_name(f".{f.name}.{os.getpid()}.tmp") for f in self.finals]
        else:
            stem = Path(tmp_stem)
            self.tmp_prefix = stem.with_name(f".{stem.name}.{os.getpid()}.tmp")
            self.tmps = [Path(f"{self.tmp_prefix}{f.suffix}") for f in self.finals]
        for final in self.finals:
            final.parent.mkdir(parents=True, exist_ok=True)

    def commit(self) -> None:
        """Rename every temporary file over its final name, in order; on error discard the rest."""
        try:
            for tmp, final in zip(self.tmps, self.finals, strict=True):
                os.replace(tmp, final)
        except BaseException:
            self.discard()
            raise

    def discard(self) -> None:
        """Remove the temporary files that exist (the finals are left as they were)."""
        for tmp in self.tmps:
            tmp.unlink(missing_ok=True)


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """A temporary sibling of `path` (`.NAME.PID.tmp`) to write, renamed to `path` on success.

    For writers that stream into a file of their own (numpy arrays, zstd frames, downloads).
    Creates the directory. On any error, inside the block or in the rename, the temporary file
    is removed and the error re-raised, so `path` is never left half-written.
    """
    with atomic_paths(path) as (tmp,):
        yield tmp


@contextmanager
def atomic_paths(
    *paths: str | os.PathLike, tmp_stem: str | os.PathLike | None = None
) -> Iterator[list[Path]]:
    """Temporary siblings for several files written together, renamed in the order given on
    success, all removed on error (see `PendingFiles`, which also explains `tmp_stem`)."""
    pending = PendingFiles(*paths, tmp_stem=tmp_stem)
    try:
        yield pending.tmps
    except BaseException:
        pending.discard()
        raise
    pending.commit()


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
