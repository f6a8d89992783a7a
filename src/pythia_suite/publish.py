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
import logging
import os
import re
import shutil
import tempfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from huggingface_hub import CommitOperationAdd, CommitOperationDelete, get_token
from huggingface_hub.hf_api import RepoFile

from pythia_suite.atomic import write_json_atomic

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
_CHUNK = 8 * 1024 * 1024


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
        return self.repo_path.endswith(_LFS_SUFFIXES) or self.size >= _LFS_MIN_SIZE

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
    """Return ``(size, sha256, git blob sha1)`` of a file, reading it once."""
    path = Path(path)
    size = path.stat().st_size
    sha256 = hashlib.sha256()
    sha1 = hashlib.sha1(b"blob %d\0" % size)
    with path.open("rb") as handle:
        while chunk := handle.read(_CHUNK):
            sha256.update(chunk)
            sha1.update(chunk)
    return size, sha256.hexdigest(), sha1.hexdigest()


def local_files(
    export_dir: str | os.PathLike[str],
    extra_files: Mapping[str, str | os.PathLike[str]] | None = None,
) -> dict[str, LocalFile]:
    """Hash every file below ``export_dir`` (and ``extra_files``: repo path -> local path).

    Raises:
        PublishError: ``export_dir`` is not a directory, is empty, or an extra file is missing.
    """
    export_dir = Path(export_dir)
    if not export_dir.is_dir():
        raise PublishError(f"{export_dir}: export directory not found")
    sources = {
        p.relative_to(export_dir).as_posix(): p
        for p in sorted(export_dir.rglob("*"))
        if p.is_file()
    }
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
) -> dict[str, str]:
    """Check a run's branches: each exists, and no two serve the same weights unless they must.

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
        listing = _remote_files(_listing(api, repo_id, heads[name], token))
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
            fd, tmp = tempfile.mkstemp(prefix=f".{f.etag}.", suffix=".incomplete", dir=blobs)
            os.close(fd)
            try:
                shutil.copyfile(f.local_path, tmp)
                os.replace(tmp, blob)
            except BaseException:
                Path(tmp).unlink(missing_ok=True)
                raise
        link = snapshot / path
        link.parent.mkdir(parents=True, exist_ok=True)
        _replace_symlink(os.path.relpath(blob, link.parent), link)
    ref.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{ref.name}.", dir=ref.parent)
    with os.fdopen(fd, "w") as handle:
        handle.write(commit)  # huggingface_hub writes refs without a trailing newline
    os.replace(tmp, ref)
    logger.info("local hub %s@%s -> %s (%d files)", repo_id, branch, commit, len(files))
    return commit
