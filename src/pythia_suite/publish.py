"""Publish exported checkpoints to the Hugging Face Hub (verified) or to a local hub.

Pythia's layout: one repo per run, one branch per checkpoint (``step{N}``), ``main`` = the final
step. Users found published branches serving the wrong weights (86 of 154 pythia-2.8b branches),
so an upload here is not done until the branch has been listed back and every file's hash
compared with the local export; only then is a receipt written.

Branch creation. ``create_branch`` starts a new branch from ``main`` by default, so a new branch
whose upload then fails would silently serve the final model. Here a new branch is created at
the repo's *root commit* (the commit ``create_repo`` makes, holding only ``.gitattributes``) and
the step's files are committed onto it with ``create_commit(revision=branch)``. An interrupted
upload therefore leaves a branch without weights, which fails verification loudly and is
completed by the next run, never a branch serving another step's weights.

Hashes. The Hub reports a sha256 for LFS/Xet files (``RepoFile.lfs.sha256``) and a git blob
sha1 for small files (``RepoFile.blob_id``); :func:`hash_file` computes both for every local
file in one read, and :func:`plan_branch_upload` compares whichever the Hub gives.

Tokens. The token comes from the argument, ``HF_TOKEN`` or the stored login
(``huggingface_hub.get_token``). It is passed to the client and nowhere else: it is never
logged or written, and error messages from the client are re-raised as :class:`PublishError`
with the token (and anything shaped like an ``hf_`` token) redacted.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from huggingface_hub import CommitOperationAdd, CommitOperationDelete, get_token
from huggingface_hub.hf_api import RepoFile

from pythia_suite.atomic import copy_file_atomic, write_json_atomic, write_text_atomic
from pythia_suite.hashing import artifact_files, sha256_file

__all__ = [
    "LocalFile",
    "PublishError",
    "PublishResult",
    "UploadPlan",
    "VerificationError",
    "git_blob_sha1",
    "hash_file",
    "local_files",
    "local_hub_commit",
    "plan_branch_upload",
    "publish_local",
    "publish_step",
    "verify_listing",
    "verify_run",
]

logger = logging.getLogger(__name__)

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


# ----------------------------------------------------------------------------- planning


def _remote_files(remote_listing: Iterable[Any]) -> dict[str, RepoFile]:
    """Index a tree listing by path; folders are dropped, raw API dicts are accepted too."""
    files = {}
    for entry in remote_listing:
        if isinstance(entry, dict):
            if entry.get("type", "file") != "file":
                continue
            entry = RepoFile(**{k: v for k, v in entry.items() if k != "type"})
        if isinstance(entry, RepoFile):
            files[entry.path] = entry
    return files


def _matches(local: LocalFile, remote: RepoFile) -> bool:
    """Whether a remote file has the local file's content (sha256 if LFS, else git blob sha1)."""
    if remote.size != local.size:
        return False
    if remote.lfs is not None:
        return remote.lfs.sha256 == local.sha256
    return remote.blob_id == local.git_sha1


def plan_branch_upload(
    local_files: Mapping[str, LocalFile], remote_listing: Iterable[Any]
) -> UploadPlan:
    """Decide what to send so a branch serves exactly ``local_files``.

    Args:
        local_files: repo path -> :class:`LocalFile` (see :func:`local_files`).
        remote_listing: the branch's ``list_repo_tree(..., recursive=True)`` (``RepoFile``
            objects, or the API's raw dicts).

    Returns:
        An :class:`UploadPlan`: ``upload`` the files missing or different remotely, ``skip``
        those whose hash matches, ``delete`` remote files that are not local (except
        ``.gitattributes``, which the Hub manages).
    """
    remote = _remote_files(remote_listing)
    plan = UploadPlan()
    for path, local in sorted(local_files.items()):
        entry = remote.get(path)
        (plan.skip if entry is not None and _matches(local, entry) else plan.upload).append(path)
    plan.delete = sorted(p for p in remote if p not in local_files and p not in HUB_MANAGED)
    return plan


def verify_listing(
    local_files: Mapping[str, LocalFile], remote_listing: Iterable[Any]
) -> list[str]:
    """Compare a branch's listing with the local files; return one line per problem found."""
    remote = _remote_files(remote_listing)
    problems = []
    for path, local in sorted(local_files.items()):
        entry = remote.get(path)
        if entry is None:
            problems.append(f"{path}: missing")
        elif not _matches(local, entry):
            got = entry.lfs.sha256 if entry.lfs is not None else entry.blob_id
            want = local.sha256 if entry.lfs is not None else local.git_sha1
            problems.append(
                f"{path}: remote {got} ({entry.size} bytes) != local {want} ({local.size} bytes)"
            )
    unexpected = sorted(p for p in remote if p not in local_files and p not in HUB_MANAGED)
    return problems + [f"{p}: unexpected file" for p in unexpected]


# ----------------------------------------------------------------------------- token hygiene

_TOKEN_PATTERN = re.compile(r"hf_[A-Za-z0-9]{8,}")


def _resolve_token(token: str | None) -> str | None:
    """The token to use: the argument, else HF_TOKEN or the stored login (None if neither)."""
    return token if token else get_token()


def _redact(text: str, token: str | None) -> str:
    if token:
        text = text.replace(token, "<redacted>")
    return _TOKEN_PATTERN.sub("<redacted>", text)


def _call(what: str, token: str | None, fn: Any, *args: Any, **kwargs: Any) -> Any:
    """Call a Hub method; re-raise any failure as PublishError with the token redacted.

    The original exception is dropped (not chained) because its message or attributes may
    carry the token; the redacted message keeps its type and text.
    """
    try:
        return fn(*args, token=token, **kwargs)
    except Exception as err:  # every client failure is reported the same way
        message = _redact(f"{what} failed: {type(err).__name__}: {err}", token)
    raise PublishError(message)


# ----------------------------------------------------------------------------- Hub


def _branch_heads(api: Any, repo_id: str, token: str | None) -> dict[str, str]:
    refs = _call(f"list refs of {repo_id}", token, api.list_repo_refs, repo_id)
    return {ref.name: ref.target_commit for ref in refs.branches}


def _root_commit(api: Any, repo_id: str, token: str | None) -> str:
    """The first commit of ``main`` (made by ``create_repo``): where new branches start."""
    commits = _call(f"list commits of {repo_id}", token, api.list_repo_commits, repo_id)
    if not commits:
        raise PublishError(f"{repo_id}: main has no commits; cannot create a branch without one")
    return commits[-1].commit_id  # newest first


def _listing(api: Any, repo_id: str, commit: str, token: str | None) -> list[Any]:
    what = f"list files of {repo_id}@{commit}"
    return list(_call(what, token, api.list_repo_tree, repo_id, recursive=True, revision=commit))


def _publish_branch(
    api: Any,
    repo_id: str,
    branch: str,
    files: Mapping[str, LocalFile],
    heads: dict[str, str],
    token: str | None,
    commit_message: str,
) -> tuple[str, UploadPlan]:
    """Bring one branch to ``files`` and verify it; return its verified commit and the plan."""
    if branch not in heads:
        root = _root_commit(api, repo_id, token)
        _call(
            f"create branch {repo_id}@{branch}",
            token,
            api.create_branch,
            repo_id,
            branch=branch,
            revision=root,
            exist_ok=True,
        )
        heads.update(_branch_heads(api, repo_id, token))  # exist_ok: someone may have made it
        logger.info("%s: created branch %s at root commit %s", repo_id, branch, root)
    head = heads[branch]
    listing = _listing(api, repo_id, head, token)
    plan = plan_branch_upload(files, listing)
    if not plan.is_noop:
        logger.info(
            "%s@%s: uploading %d, deleting %d, skipping %d unchanged",
            repo_id,
            branch,
            len(plan.upload),
            len(plan.delete),
            len(plan.skip),
        )
        operations: list[Any] = [
            CommitOperationAdd(path_in_repo=p, path_or_fileobj=str(files[p].local_path))
            for p in plan.upload
        ]
        operations += [CommitOperationDelete(path_in_repo=p) for p in plan.delete]
        info = _call(
            f"commit to {repo_id}@{branch}",
            token,
            api.create_commit,
            repo_id,
            operations,
            commit_message=commit_message,
            revision=branch,
            parent_commit=head,  # refuse to commit over a branch changed since it was listed
        )
        head = info.oid
        heads[branch] = head
        listing = _listing(api, repo_id, head, token)
    else:
        logger.info("%s@%s: already matches (%d files), nothing sent", repo_id, branch, len(files))
    problems = verify_listing(files, listing)
    if problems:
        raise VerificationError(f"{repo_id}@{branch} (commit {head}) does not match", problems)
    return head, plan


def publish_step(
    api: Any,
    repo_id: str,
    step: int,
    export_dir: str | os.PathLike[str],
    *,
    branch: str | None = None,
    final: bool = False,
    token: str | None = None,
    receipt_path: str | os.PathLike[str] | None = None,
    extra_files: Mapping[str, str | os.PathLike[str]] | None = None,
    private: bool | None = None,
) -> PublishResult:
    """Publish one exported checkpoint to its branch (and to ``main`` if final), verified.

    Creates the repo if needed; creates the branch at the repo's root commit (never from
    ``main``); commits only files whose hash differs, and deletes remote files that are not
    in the export; lists the branch back and compares every hash. The receipt is written only
    after every branch verified, so a run interrupted anywhere is completed by a rerun, and a
    rerun whose remote already matches makes no commit.

    Args:
        api: a ``huggingface_hub.HfApi`` (or an object with its methods ``create_repo``,
            ``list_repo_refs``, ``list_repo_commits``, ``create_branch``, ``list_repo_tree``,
            ``create_commit``).
        repo_id: ``"org/run"``.
        step: the checkpoint's step number.
        export_dir: the export (:func:`pythia_suite.export.export_checkpoint`).
        branch: defaults to ``f"step{step}"``.
        final: also publish to ``main`` (Pythia: ``main`` is the final step).
        token: the Hub token; defaults to ``HF_TOKEN`` or the stored login. Never written.
        receipt_path: where to write the receipt JSON (e.g. ``runs/{run}/published/step{N}.json``).
        extra_files: more files to publish, repo path -> local path (e.g. ``{"README.md": card}``).
        private: passed to ``create_repo``.

    Returns:
        A :class:`PublishResult` (the receipt and each branch's :class:`UploadPlan`).

    Raises:
        PublishError: a Hub call failed (token redacted) or the export is missing.
        VerificationError: a branch does not serve the local files after the upload.
    """
    token = _resolve_token(token)
    branch = branch or f"step{step}"
    files = local_files(export_dir, extra_files)
    _call(f"create repo {repo_id}", token, api.create_repo, repo_id, exist_ok=True, private=private)
    heads = _branch_heads(api, repo_id, token)
    message = f"Upload step {step}"
    refs: dict[str, str] = {}
    plans: dict[str, UploadPlan] = {}
    for name in [branch, "main"] if final and branch != "main" else [branch]:
        refs[name], plans[name] = _publish_branch(api, repo_id, name, files, heads, token, message)
    receipt = {
        "repo_id": repo_id,
        "step": step,
        "branch": branch,
        "commit": refs[branch],
        "refs": refs,
        "files": {
            path: {"size": f.size, "sha256": f.sha256, "git_sha1": f.git_sha1}
            for path, f in files.items()
        },
        "verified": True,
    }
    if receipt_path is not None:
        write_json_atomic(Path(receipt_path), receipt)
    return PublishResult(receipt=receipt, plans=plans)


def _weights_id(entry: RepoFile) -> str:
    return entry.lfs.sha256 if entry.lfs is not None else entry.blob_id


def verify_run(
    api: Any,
    repo_id: str,
    steps: Iterable[int],
    expected_identical: Iterable[tuple[str, str]] | None = None,
    *,
    token: str | None = None,
    expected: Mapping[str, tuple[str | None, Mapping[str, LocalFile]]] | None = None,
) -> dict[str, str]:
    """Check a run's branches: each exists, and no two serve the same weights unless they must.

    With ``expected`` (branch -> (commit its receipt recorded, the receipt's files)), each such
    branch must still point at that commit and its listing, which carries every file's sha256
    or git blob sha1, must agree with the receipt (:func:`verify_listing`): nothing is
    downloaded or re-hashed.

    Args:
        steps: the run's checkpoint steps; branches ``step{N}`` and ``main`` are checked.
        expected_identical: branch pairs the training record says hold equal weights. The
            default, ``[("main", f"step{max(steps)}"), ("step0", "step1")]``, is Pythia's:
            ``main`` is the final step, and the first update runs at learning rate 0. Pairs
            naming a branch outside the run are ignored. Expected pairs must be identical.

    Returns:
        branch -> sha256 (or blob id) of the weights file it serves.

    Raises:
        VerificationError: listing every missing branch or weights file, every pair of branches
            serving identical weights unexpectedly, and every expected pair that differs.
        PublishError: a Hub call failed (token redacted).
    """
    token = _resolve_token(token)
    steps = sorted(set(steps))
    if not steps:
        raise PublishError(f"{repo_id}: no steps to verify")
    branches = [f"step{s}" for s in steps] + ["main"]
    if expected_identical is None:
        expected_identical = [("main", f"step{steps[-1]}"), ("step0", "step1")]
    pairs = [(a, b) for a, b in expected_identical if a in branches and b in branches]

    heads = _branch_heads(api, repo_id, token)
    problems: list[str] = []
    weights: dict[str, str] = {}
    for name in branches:
        if name not in heads:
            problems.append(f"{name}: branch missing")
            continue
        raw_listing = _listing(api, repo_id, heads[name], token)
        listing = _remote_files(raw_listing)
        if expected and name in expected:
            commit, files = expected[name]
            if commit is not None and heads[name] != commit:
                problems.append(f"{name}: ref points at {heads[name]}, receipt recorded {commit}")
            problems += [f"{name}: {p}" for p in verify_listing(files, raw_listing)]
        if WEIGHTS_FILE not in listing:
            problems.append(f"{name}: {WEIGHTS_FILE} missing (commit {heads[name]})")
            continue
        weights[name] = _weights_id(listing[WEIGHTS_FILE])

    # Branches allowed to share weights: the classes the expected pairs connect.
    group = {name: name for name in branches}

    def find(name: str) -> str:
        while group[name] != name:
            name = group[name]
        return name

    for a, b in pairs:
        group[find(a)] = find(b)
    by_hash: dict[str, list[str]] = {}
    for name, digest in weights.items():
        by_hash.setdefault(digest, []).append(name)
    for digest, names in sorted(by_hash.items()):
        for i, a in enumerate(names):
            for b in names[i + 1 :]:
                if find(a) != find(b):
                    problems.append(f"{a} and {b} serve identical weights ({digest})")
    for a, b in pairs:
        if a in weights and b in weights and weights[a] != weights[b]:
            problems.append(f"{a} and {b} must serve identical weights but differ")
    if problems:
        raise VerificationError(f"{repo_id}: {len(problems)} problem(s)", problems)
    logger.info("%s: %d branches verified", repo_id, len(weights))
    return weights


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


def _replace_symlink(target: str, link: Path) -> None:
    tmp = link.with_name(f".{link.name}.tmp-{os.getpid()}")
    tmp.unlink(missing_ok=True)
    os.symlink(target, tmp)
    os.replace(tmp, link)


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
        _replace_symlink(os.path.relpath(blob, link.parent), link)
    write_text_atomic(ref, commit)  # huggingface_hub writes refs without a trailing newline
    logger.info("local hub %s@%s -> %s (%d files)", repo_id, branch, commit, len(files))
    return commit


# ----------------------------------------------------------------------------- read-back checks

#: How each kind of check compares, as receipts record it.
LOCAL_HUB_READBACK = (
    "read back through huggingface_hub's cache API (scan_cache_dir lists the branch's files, "
    "hf_hub_download(local_files_only=True) resolves each); sha256 of every file compared with "
    "the export"
)
HUB_LISTING = (
    "listed back with list_repo_tree at the branch's new commit; sha256 (LFS files) or git blob "
    "sha1 (others) and size of every file compared with the export"
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


def _file_records(files: Mapping[str, LocalFile]) -> dict[str, dict[str, Any]]:
    return {
        path: {"size": f.size, "sha256": f.sha256, "git_sha1": f.git_sha1}
        for path, f in files.items()
    }


def _files_from_record(record: Mapping[str, Mapping[str, Any]]) -> dict[str, LocalFile]:
    return {
        path: LocalFile(path, Path(), int(f["size"]), f["sha256"], f.get("git_sha1", ""))
        for path, f in record.items()
    }


def is_verified(verifications: Iterable[Mapping[str, Any]], n_files: int) -> bool:
    """Whether receipts' verification records show a comparison of every file that matched."""
    checks = list(verifications)
    return bool(checks) and all(
        c.get("matched") is True and c.get("files_compared") == n_files for c in checks
    )


def publish_and_verify(
    export_dir: str | os.PathLike[str],
    repo_id: str,
    step: int,
    receipt_path: str | os.PathLike[str],
    *,
    final: bool,
    local_hub: str | os.PathLike[str] | None = None,
    hub_api: Any | None = None,
    private: bool | None = None,
) -> dict[str, Any]:
    """Publish one export to the local hub and/or the Hub, read it back, and write the receipt.

    Every branch written (``step{N}``, and ``main`` when ``final``) is compared file by file
    with the export: on the local hub by :func:`verify_local_branch`, on the Hub by
    :func:`publish_step`'s listing. The receipt lists each comparison under ``verifications``
    (where, branch, commit, how, files compared) and says ``verified: true`` only when at
    least one comparison ran and every one covered every file and matched. Nothing is
    written when a comparison fails.

    Raises:
        PublishError: neither a local hub nor a Hub client was given (nothing would be
            published), or a Hub call failed.
        VerificationError: a branch does not serve the export (naming branch and file).
    """
    if local_hub is None and hub_api is None:
        raise PublishError(
            f"{repo_id}@step{step}: neither publish.local_hub nor publish.hub is enabled; "
            "nothing would be published"
        )
    files = local_files(export_dir)
    branches = [f"step{step}", "main"] if final else [f"step{step}"]
    verifications: list[dict[str, Any]] = []
    if local_hub is not None:
        for branch in branches:
            publish_local(local_hub, repo_id, branch, export_dir)
            verifications.append(verify_local_branch(local_hub, repo_id, branch, files))
    hub = None
    if hub_api is not None:
        result = publish_step(hub_api, repo_id, step, export_dir, final=final, private=private)
        hub = result.receipt
        verifications += [
            {
                "where": "hub",
                "location": repo_id,
                "branch": branch,
                "commit": commit,
                "how": HUB_LISTING,
                "files_compared": len(hub["files"]),
                "matched": True,
            }
            for branch, commit in hub["refs"].items()
        ]
        logger.info("%s@step%d: %s", repo_id, step, "uploaded" if result.sent else "up to date")
    receipt = {
        "repo_id": repo_id,
        "step": step,
        "branch": f"step{step}",
        "files": _file_records(files),
        "verifications": verifications,
        "verified": is_verified(verifications, len(files)),
    }
    if hub is not None:
        receipt["hub_commit"] = hub["commit"]
    write_json_atomic(Path(receipt_path), receipt, indent=1, sort_keys=False)
    return receipt


def publish_card_locally(
    local_hub: str | os.PathLike[str],
    repo_id: str,
    final_export: str | os.PathLike[str],
    card: str | os.PathLike[str],
    receipt_path: str | os.PathLike[str],
) -> dict[str, Any]:
    """Put the model card on the local hub's ``main`` beside the final step's files, verified.

    ``main`` then holds the final export (its provenance record included) plus ``README.md``;
    the branch is read back as :func:`verify_local_branch` does and a receipt of the same shape
    as a step's is written to ``receipt_path`` (``branch: "main"``).
    """
    files = local_files(final_export, {"README.md": card})
    import tempfile

    with tempfile.TemporaryDirectory(dir=Path(receipt_path).parent) as staging:
        for path, f in files.items():
            target = Path(staging) / path
            target.parent.mkdir(parents=True, exist_ok=True)
            os.link(f.local_path, target)
        publish_local(local_hub, repo_id, "main", staging)
    check = verify_local_branch(local_hub, repo_id, "main", files)
    receipt = {
        "repo_id": repo_id,
        "branch": "main",
        "files": _file_records(files),
        "verifications": [check],
        "verified": is_verified([check], len(files)),
    }
    write_json_atomic(Path(receipt_path), receipt, indent=1, sort_keys=False)
    return receipt


# ----------------------------------------------------------------------------- the whole run


def _load_receipt(path: Path) -> dict[str, Any]:
    try:
        receipt = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise VerificationError(f"{path}: receipt missing", [f"{path}: missing"]) from None
    except json.JSONDecodeError as err:
        raise VerificationError(f"{path}: not JSON", [f"{path}: {err}"]) from None
    return receipt


def _receipt_problems(path: Path, receipt: Mapping[str, Any]) -> list[str]:
    """What a receipt lacks to count as verified (re-derived from its comparisons)."""
    files = receipt.get("files") or {}
    checks = receipt.get("verifications") or []
    if not checks:
        return [f"{path}: records no comparison (verifications is empty)"]
    if not receipt.get("verified") or not is_verified(checks, len(files)):
        return [f"{path}: not verified (a comparison did not cover every file or did not match)"]
    return []


def verify_published_run(
    receipts: Mapping[str, str | os.PathLike[str]],
    repo_id: str,
    *,
    local_hub: str | os.PathLike[str] | None = None,
    hub_api: Any | None = None,
    expected_identical: Iterable[tuple[str, str]] = (("step0", "step1"),),
    token: str | None = None,
) -> dict[str, Any]:
    """Check a whole published run without re-hashing it (the workflow's ``run_done``).

    Reads only the receipts, the local hub's refs and file sizes, and (with the Hub) the
    branches' refs and tree listings, which carry hashes. It checks that:

    - every receipt records a comparison that covered every file and matched;
    - each branch's ref still points at the commit its receipt recorded (local hub and Hub);
    - on the local hub, each branch lists exactly the receipt's files, with their sizes;
    - on the Hub, each branch's listing (sha256 / git blob sha1 and size) agrees with the
      receipt, and no two branches serve the same weights except ``expected_identical`` and
      ``main`` = the final step (:func:`verify_run`);
    - across receipts, no two steps have the same weights except ``expected_identical``.

    Args:
        receipts: branch -> receipt path (``step{N}``; ``main`` for the model card's receipt
            when the card was published to ``main``, else ``main`` is the final step's).

    Returns:
        A summary: branches checked, where, and what was read.

    Raises:
        VerificationError: listing every problem, each naming its branch, file or receipt.
    """
    loaded = {branch: (Path(p), _load_receipt(Path(p))) for branch, p in receipts.items()}
    problems: list[str] = []
    for path, receipt in loaded.values():
        problems += _receipt_problems(path, receipt)
    steps = sorted(int(b.removeprefix("step")) for b in loaded if b.startswith("step"))
    if not steps:
        raise VerificationError(f"{repo_id}: no step receipts", ["no receipts given"])
    final = f"step{steps[-1]}"

    def checks(where: str) -> dict[str, dict[str, Any]]:
        """branch -> the comparison a receipt recorded for it (main: the card's receipt, or
        the final step's when the card was not published to main)."""
        out = {}
        for branch, (_, receipt) in loaded.items():
            for check in receipt.get("verifications", []):
                if check.get("where") != where:
                    continue
                if check.get("branch") == branch:
                    out[branch] = check
                elif "main" not in loaded and branch == final and check.get("branch") == "main":
                    out["main"] = check
        return out

    def files_of(branch: str) -> dict[str, Any]:
        return loaded.get(branch, loaded[final])[1].get("files", {})

    weights: dict[str, list[str]] = {}
    for branch in sorted(loaded):
        if branch.startswith("step"):
            digest = files_of(branch).get(WEIGHTS_FILE, {}).get("sha256")
            weights.setdefault(str(digest), []).append(branch)
    allowed = {frozenset(pair) for pair in expected_identical}
    for digest, names in sorted(weights.items()):
        if len(names) > 1 and frozenset(names) not in allowed:
            problems.append(f"branches {', '.join(names)} have identical weights ({digest})")

    read = ["receipts"]
    if local_hub is not None:
        problems += _local_hub_problems(Path(local_hub), repo_id, checks("local hub"), files_of)
        read.append(f"local hub refs, file lists and blob size and mtime ({local_hub})")
    if hub_api is not None:
        recorded = checks("hub")
        expected = {b: (c["commit"], _files_from_record(files_of(b))) for b, c in recorded.items()}
        try:
            verify_run(
                hub_api,
                repo_id,
                steps,
                [("main", final), *expected_identical],
                token=token,
                expected=expected,
            )
        except VerificationError as err:
            problems += err.problems
        read.append("Hub refs and tree listings (with hashes)")
    if problems:
        raise VerificationError(f"{repo_id}: {len(problems)} problem(s)", problems)
    return {
        "repo_id": repo_id,
        "branches": sorted(loaded) + ([] if "main" in loaded else ["main"]),
        "read": read,
        "identical_allowed": sorted(sorted(p) for p in allowed),
    }


def _local_hub_problems(
    cache_dir: Path,
    repo_id: str,
    recorded: Mapping[str, Mapping[str, Any]],
    files_of: Any,
) -> list[str]:
    """Each branch: ref at the recorded commit, the receipt's files, and every blob's size and
    mtime as they were when verified (a blob written since then was not what was compared)."""
    from huggingface_hub import scan_cache_dir

    repo = _cached_repo(scan_cache_dir(cache_dir), repo_id)
    problems = []
    for branch, check in sorted(recorded.items()):
        revision = _cached_revision(repo, branch)
        if revision is None:
            problems.append(f"{branch}: branch missing from the local hub {cache_dir}")
            continue
        if revision.commit_hash != check["commit"]:
            problems.append(
                f"{branch}: local hub ref points at {revision.commit_hash}, receipt recorded "
                f"{check['commit']}"
            )
            continue
        listed = _revision_files(revision)
        verified_stat = check.get("blob_stat", {})
        for path, record in sorted(files_of(branch).items()):
            entry = listed.get(path)
            if entry is None:
                problems.append(f"{branch}: {path}: missing from the local hub")
                continue
            stat = Path(entry.blob_path).stat()
            if stat.st_size != record["size"]:
                problems.append(
                    f"{branch}: {path}: {stat.st_size} bytes on the local hub, receipt "
                    f"recorded {record['size']}"
                )
            elif path not in verified_stat:
                problems.append(f"{branch}: {path}: the receipt records no verified blob stat")
            elif stat.st_mtime_ns != verified_stat[path][1]:
                problems.append(
                    f"{branch}: {path}: blob {entry.blob_path} was modified after it was "
                    "verified; remove it and publish the listed steps again"
                )
        for path in sorted(set(listed) - set(files_of(branch))):
            problems.append(f"{branch}: {path}: on the local hub but not in the receipt")
    return problems
