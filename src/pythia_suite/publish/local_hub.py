"""The local hub: an export written into a huggingface_hub cache, and read back through it.

A branch is ``models--{org}--{name}/refs/<branch>`` pointing at a snapshot of symlinks to blobs
named by their Hub ETag, so ``from_pretrained(repo_id, revision=branch, cache_dir=...)`` loads
it offline; :func:`verify_local_branch` reads it back the way a user loads it.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pythia_suite.atomic import copy_file_atomic, replace_symlink, write_text_atomic
from pythia_suite.hashing import sha256_file
from pythia_suite.publish.files import LocalFile, PublishError, VerificationError, local_files

logger = logging.getLogger(__name__)


# ----------------------------------------------------------------------------- local hub


def _repo_folder(cache_dir: Path, repo_id: str) -> Path:
    parts = repo_id.split("/")
    if len(parts) != 2 or not all(parts) or any(p in {".", ".."} for p in parts):
        raise PublishError(f"repo_id {repo_id!r} is not of the form 'org/name'")
    return cache_dir / ("models--" + "--".join(parts))


def local_hub_commit(branch: str, files: Mapping[str, LocalFile]) -> str:
    """The local hub's commit id: sha1 over the branch name and the sorted (path, ETag) pairs.

    Deterministic, so republishing the same export gives the same commit (idempotence), and
    different branches never share a snapshot directory.
    """
    digest = hashlib.sha1(f"pythia-suite local hub\0{branch}\0".encode())
    for path in sorted(files):
        digest.update(f"{path}\0{files[path].etag}\n".encode())
    return digest.hexdigest()


def _snapshot_complete(repo: Path, commit: str, files: Mapping[str, LocalFile]) -> bool:
    snapshot = repo / "snapshots" / commit
    for path, f in files.items():
        link, blob = snapshot / path, repo / "blobs" / f.etag
        if not link.is_symlink() or link.resolve() != blob.resolve():
            return False
        if not blob.is_file() or blob.stat().st_size != f.size:
            return False
    return True


def publish_local(
    cache_dir: str | os.PathLike[str],
    repo_id: str,
    branch: str,
    export_dir: str | os.PathLike[str],
) -> str:
    """Publish an export into a huggingface_hub cache, so it loads offline by revision.

    Writes ``models--{org}--{name}/blobs/<etag>`` (sha256 for LFS-type files, git blob sha1
    for the others, as the Hub's ETags), ``snapshots/<commit>/<path>`` symlinks to the blobs,
    and ``refs/<branch>`` last, so an interrupted publish leaves the branch at its previous
    commit. Then ``from_pretrained("org/name", revision=branch, cache_dir=cache_dir)`` loads it
    with ``HF_HUB_OFFLINE=1``. Idempotent: a rerun with the same export writes nothing.

    Returns:
        The (deterministic) commit id, see :func:`local_hub_commit`.

    Raises:
        PublishError: a malformed ``repo_id``, or a missing or empty ``export_dir``.
    """
    repo = _repo_folder(Path(cache_dir), repo_id)
    files = local_files(export_dir)
    commit = local_hub_commit(branch, files)
    ref = repo / "refs" / branch
    if ref.is_file() and ref.read_text() == commit and _snapshot_complete(repo, commit, files):
        return commit

    blobs, snapshot = repo / "blobs", repo / "snapshots" / commit
    blobs.mkdir(parents=True, exist_ok=True)
    for path, f in files.items():
        blob = blobs / f.etag
        if not (blob.is_file() and blob.stat().st_size == f.size):
            copy_file_atomic(f.local_path, blob)
        link = snapshot / path
        link.parent.mkdir(parents=True, exist_ok=True)
        replace_symlink(link, os.path.relpath(blob, link.parent))
    write_text_atomic(ref, commit)  # huggingface_hub writes refs without a trailing newline
    logger.info("local hub %s@%s -> %s (%d files)", repo_id, branch, commit, len(files))
    return commit


# ----------------------------------------------------------------------------- read-back checks

#: How a local-hub check compares, as receipts record it.
LOCAL_HUB_READBACK = (
    "read back through huggingface_hub's cache API (scan_cache_dir lists the branch's files, "
    "hf_hub_download(local_files_only=True) resolves each); sha256 of every file compared with "
    "the export"
)


def _cached_repo(cache: Any, repo_id: str) -> Any | None:
    return next((r for r in cache.repos if r.repo_id == repo_id and r.repo_type == "model"), None)


def _cached_revision(repo: Any, branch: str) -> Any | None:
    return next((rev for rev in repo.revisions if branch in rev.refs), None) if repo else None


def _revision_files(revision: Any) -> dict[str, Any]:
    """A cached revision's files by repo path (``CachedFileInfo.file_name`` is a basename)."""
    root = Path(revision.snapshot_path)
    return {Path(f.file_path).relative_to(root).as_posix(): f for f in revision.files}


def verify_local_branch(
    cache_dir: str | os.PathLike[str],
    repo_id: str,
    branch: str,
    files: Mapping[str, LocalFile],
) -> dict[str, Any]:
    """Read a local-hub branch back and compare every file's sha256 with the export's.

    The branch is read the way a user loads it: ``scan_cache_dir`` lists the revision the ref
    points at and its files, ``hf_hub_download(..., local_files_only=True)`` resolves each file
    by branch name, and :func:`pythia_suite.hashing.sha256_file` hashes what it resolves to.

    Returns:
        The verification record for the receipt: where, what, how, ``files_compared``, and
        ``matched: True``.

    Raises:
        VerificationError: the branch is missing, or a file is missing, unexpected or differs
            (naming the repo, branch, commit and every file).
    """
    from huggingface_hub import hf_hub_download, scan_cache_dir

    cache_dir = Path(cache_dir)
    revision = _cached_revision(_cached_repo(scan_cache_dir(cache_dir), repo_id), branch)
    where = f"local hub {cache_dir}: {repo_id}@{branch}"
    if revision is None:
        raise VerificationError(f"{where} does not exist", [f"{branch}: branch missing"])
    listed = _revision_files(revision)
    problems = []
    blobs: dict[str, list[int]] = {}
    for path, local in sorted(files.items()):
        if path not in listed:
            problems.append(f"{path}: missing")
            continue
        stat = Path(listed[path].blob_path).stat()
        blobs[path] = [stat.st_size, stat.st_mtime_ns]
        served = Path(
            hf_hub_download(
                repo_id, path, revision=branch, cache_dir=cache_dir, local_files_only=True
            )
        )
        digest = sha256_file(served)
        if digest != local.sha256:
            problems.append(
                f"{path}: local hub {digest} ({served.stat().st_size} bytes, blob "
                f"{served.resolve()}) != export {local.sha256} ({local.size} bytes)"
            )
    problems += [f"{p}: unexpected file" for p in sorted(set(listed) - set(files))]
    if problems:
        raise VerificationError(
            f"{where} (commit {revision.commit_hash}) does not match the export (remove the "
            "differing blobs and publish again: they are rewritten from the export)",
            problems,
        )
    return {
        "where": "local hub",
        "location": str(cache_dir),
        "branch": branch,
        "commit": revision.commit_hash,
        "how": LOCAL_HUB_READBACK,
        "files_compared": len(files),
        "matched": True,
        # [size, mtime_ns] of each blob as verified: run_done checks them unchanged, not re-hashed
        "blob_stat": blobs,
    }
