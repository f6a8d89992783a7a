"""The one sha256 of a file's bytes that every stage uses (shards, provenance, receipts, ...)."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

_CHUNK = 1 << 20


def sha256_file(path: str | os.PathLike, chunk_size: int = _CHUNK) -> str:
    """Return the hex sha256 of the bytes of the file at `path`, read in `chunk_size` blocks.

    Raises:
        FileNotFoundError: `path` does not exist.
        IsADirectoryError: `path` is a directory.
    """
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(chunk_size):
            digest.update(chunk)
    return digest.hexdigest()


#: Files Snakemake writes into directory outputs after the job: bookkeeping, never content.
SNAKEMAKE_BOOKKEEPING = frozenset({".snakemake_timestamp"})


def artifact_files(directory: str | os.PathLike) -> dict[str, Path]:
    """Every file below `directory` that is content: relative POSIX path -> path, sorted.

    The one place that lists a directory artifact's files for hashing, receipts and upload;
    Snakemake's bookkeeping (`.snakemake_timestamp`) is left out, so it never reaches a hash,
    a receipt or a Hub branch.
    """
    directory = Path(directory)
    return {
        p.relative_to(directory).as_posix(): p
        for p in sorted(directory.rglob("*"))
        if p.is_file() and p.name not in SNAKEMAKE_BOOKKEEPING
    }
