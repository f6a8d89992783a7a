"""Publish to the Hugging Face Hub: one branch per step, committed only where hashes differ.

Branch creation. ``create_branch`` starts a new branch from ``main`` by default, so a new branch
whose upload then fails would silently serve the final model. Here a new branch is created at
the repo's *root commit* (the commit ``create_repo`` makes, holding only ``.gitattributes``) and
the step's files are committed onto it with ``create_commit(revision=branch)``. An interrupted
upload therefore leaves a branch without weights, which fails verification loudly and is
completed by the next run, never a branch serving another step's weights.

Hashes. :func:`plan_branch_upload` compares whichever hash the Hub gives (sha256 for LFS/Xet
files, git blob sha1 for the others) with :func:`pythia_suite.publish.files.hash_file`'s.

Tokens. The token comes from the argument, ``HF_TOKEN`` or the stored login
(``huggingface_hub.get_token``). It is passed to the client and nowhere else: it is never
logged or written, and error messages from the client are re-raised as :class:`PublishError`
with the token (and anything shaped like an ``hf_`` token) redacted.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from huggingface_hub import CommitOperationAdd, CommitOperationDelete, get_token
from huggingface_hub.hf_api import RepoFile

from pythia_suite.atomic import write_json_atomic
from pythia_suite.publish.files import (
    HUB_MANAGED,
    LocalFile,
    PublishError,
    PublishResult,
    UploadPlan,
    VerificationError,
    local_files,
)

logger = logging.getLogger(__name__)


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
