"""What is published: the export's files with both Hub hashes, and the package's errors.

The Hub reports a sha256 for LFS/Xet files (``RepoFile.lfs.sha256``) and a git blob sha1 for
small files (``RepoFile.blob_id``); :func:`hash_file` computes both for every local file in one
read, so either side (the Hub, the local hub) can be compared with the export.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pythia_suite.hashing import artifact_files, sha256_file

#: Files the Hub puts in every repo; never uploaded, deleted or compared.
HUB_MANAGED = frozenset({".gitattributes"})

#: Weights file whose hash identifies what a branch serves.
WEIGHTS_FILE = "model.safetensors"

# What the Hub stores through LFS/Xet (default .gitattributes patterns, and anything >= 10 MiB):
# the local hub names those blobs by sha256, the others by git blob sha1, as the Hub's ETags do.
_LFS_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".h5", ".msgpack", ".npy", ".zst")
_LFS_MIN_SIZE = 10 * 1024 * 1024


def _is_lfs(name: str, size: int) -> bool:
    return name.endswith(_LFS_SUFFIXES) or size >= _LFS_MIN_SIZE


class PublishError(RuntimeError):
    """A Hub operation failed; the message names the repo and branch, never the token."""


class VerificationError(PublishError):
    """What a branch serves differs from what it must serve; ``problems`` lists every finding."""

    def __init__(self, message: str, problems: list[str]):
        super().__init__(message + "\n  " + "\n  ".join(problems))
        self.problems = problems


@dataclass(frozen=True)
class LocalFile:
    """A file to publish: its path in the repo, local path, size and both Hub hashes."""

    repo_path: str
    local_path: Path
    size: int
    sha256: str
    git_sha1: str

    @property
    def is_lfs(self) -> bool:
        """Whether the Hub would store this file through LFS/Xet (so its ETag is the sha256)."""
        return _is_lfs(self.repo_path, self.size)

    @property
    def etag(self) -> str:
        """The ETag the Hub serves for this file: sha256 for LFS files, git blob sha1 otherwise."""
        return self.sha256 if self.is_lfs else self.git_sha1


@dataclass
class UploadPlan:
    """What one branch needs: files to upload, files already right, remote files to delete."""

    upload: list[str] = field(default_factory=list)
    skip: list[str] = field(default_factory=list)
    delete: list[str] = field(default_factory=list)

    @property
    def is_noop(self) -> bool:
        """True when the branch already serves exactly the local files."""
        return not self.upload and not self.delete


@dataclass
class PublishResult:
    """What :func:`publish_step` did: the receipt written and the plan of each branch."""

    receipt: dict[str, Any]
    plans: dict[str, UploadPlan]

    @property
    def sent(self) -> bool:
        """Whether any commit was made."""
        return any(not plan.is_noop for plan in self.plans.values())


# ----------------------------------------------------------------------------- hashing


def git_blob_sha1(data: bytes) -> str:
    """Return git's blob id of ``data``: ``sha1(b"blob <len>\\0" + data)`` (the Hub's ``oid``)."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def hash_file(path: str | os.PathLike[str]) -> tuple[int, str, str]:
    """Return ``(size, sha256, git blob sha1)`` of a file.

    The sha256 is :func:`pythia_suite.hashing.sha256_file`'s. The git blob sha1 (what the Hub
    reports for a non-LFS file) is only read for files the Hub stores outside LFS (small by
    definition, so reading them twice costs nothing); LFS files get ``""``.
    """
    path = Path(path)
    size = path.stat().st_size
    sha1 = ""
    if not _is_lfs(path.name, size):
        sha1 = git_blob_sha1(path.read_bytes())
    return size, sha256_file(path), sha1


def local_files(
    export_dir: str | os.PathLike[str],
    extra_files: Mapping[str, str | os.PathLike[str]] | None = None,
) -> dict[str, LocalFile]:
    """Hash every file of ``export_dir`` (and ``extra_files``: repo path -> local path).

    The files are :func:`pythia_suite.hashing.artifact_files`'s: Snakemake's bookkeeping is
    never published.

    Raises:
        PublishError: ``export_dir`` is not a directory, is empty, or an extra file is missing.
    """
    export_dir = Path(export_dir)
    if not export_dir.is_dir():
        raise PublishError(f"{export_dir}: export directory not found")
    sources = artifact_files(export_dir)
    for repo_path, local in (extra_files or {}).items():
        if not Path(local).is_file():
            raise PublishError(f"{local}: file to publish as {repo_path!r} not found")
        sources[repo_path] = Path(local)
    if not sources:
        raise PublishError(f"{export_dir}: export directory is empty")
    files = {}
    for repo_path, local in sorted(sources.items()):
        size, sha256, sha1 = hash_file(local)
        files[repo_path] = LocalFile(repo_path, local, size, sha256, sha1)
    return files
