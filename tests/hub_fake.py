"""A recorded-listing fake of the ``huggingface_hub.HfApi`` methods that publishing calls.

It holds repos as commits (each with a full tree in the Hub API's raw JSON shape) and branch
heads, loaded from ``tests/fixtures/hub/*.json``, and behaves like the Hub where it matters:
``create_branch`` without ``revision`` starts from ``main``; ``create_commit`` is atomic and
refuses a stale ``parent_commit``; ``.safetensors`` files are LFS (``lfs.oid`` = sha256) and
the others plain git blobs (``oid`` = git blob sha1). Used by tests and by
``benchmarks/publish_noop.py``.
"""

from __future__ import annotations

import copy
import hashlib
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from huggingface_hub import CommitOperationAdd, CommitOperationDelete
from huggingface_hub.hf_api import CommitInfo, GitCommitInfo, GitRefInfo, GitRefs, RepoFile

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "hub"
GITATTRIBUTES = b"*.safetensors filter=lfs diff=lfs merge=lfs -text\n"


def export_files(step: int) -> dict[str, bytes]:
    """The files of the fixtures' fake export of ``step`` (step1 = step0's weights: LR 0)."""
    weights_step = 0 if step == 1 else step
    return {
        "config.json": b'{"model_type": "gpt_neox", "rotary_pct": 0.25}\n',
        "model.safetensors": f"weights of step {weights_step}\n".encode() * 64,
        "tokenizer.json": b'{"version": "1.0", "model": {"type": "BPE"}}\n',
    }


def write_export(directory: Path, step: int) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    for name, data in export_files(step).items():
        (directory / name).write_bytes(data)
    return directory


def _git_sha1(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def tree_entry(path: str, data: bytes) -> dict[str, Any]:
    """A ``/api/models/{repo}/tree/{rev}?recursive=1`` item for a file holding ``data``."""
    if not path.endswith(".safetensors"):
        return {"type": "file", "oid": _git_sha1(data), "size": len(data), "path": path}
    sha256 = hashlib.sha256(data).hexdigest()
    pointer = f"version https://git-lfs.github.com/spec/v1\noid sha256:{sha256}\nsize {len(data)}\n"
    return {
        "type": "file",
        "oid": _git_sha1(pointer.encode()),
        "size": len(data),
        "path": path,
        "lfs": {"oid": sha256, "size": len(data), "pointerSize": len(pointer)},
    }


class FakeHfApi:
    """In-memory Hub: ``repos[repo_id] = {"commits": {id: commit}, "heads": {branch: id}}``."""

    def __init__(self) -> None:
        self.repos: dict[str, dict[str, Any]] = {}
        self.calls: list[str] = []  # method names, in order
        self.uploaded: list[tuple[str, str]] = []  # (branch, path) of every file sent
        self.tokens: list[Any] = []  # every token argument received
        self.fail_commits = 0  # the next N create_commit calls raise ConnectionError
        self.failure_text = "connection reset by peer"

    # -- fixtures ------------------------------------------------------------------
    @classmethod
    def from_fixtures(cls, *names: str) -> FakeHfApi:
        api = cls()
        for name in names:
            api.load(json.loads((FIXTURES / name).read_text()))
        return api

    def load(self, fixture: dict[str, Any]) -> None:
        """Load one repo: ``{"repo_id", "commits": [...], "refs": <list_repo_refs JSON>}``."""
        commits = {c["id"]: copy.deepcopy(c) for c in fixture["commits"]}
        heads = {b["name"]: b["targetCommit"] for b in fixture["refs"]["branches"]}
        self.repos[fixture["repo_id"]] = {"commits": commits, "heads": heads}

    # -- helpers -------------------------------------------------------------------
    def _repo(self, repo_id: str) -> dict[str, Any]:
        if repo_id not in self.repos:
            raise KeyError(f"404 repository {repo_id} not found")
        return self.repos[repo_id]

    def _commit_id(self, repo_id: str, revision: str) -> str:
        repo = self._repo(repo_id)
        if revision in repo["heads"]:
            return repo["heads"][revision]
        if revision in repo["commits"]:
            return revision
        raise KeyError(f"404 revision {revision} not found in {repo_id}")

    def _add_commit(self, repo_id: str, parent: str | None, title: str, tree: list[dict]) -> str:
        repo = self._repo(repo_id)
        body = json.dumps([parent, title, sorted(tree, key=lambda e: e["path"])], sort_keys=True)
        commit_id = hashlib.sha1(body.encode()).hexdigest()
        repo["commits"][commit_id] = {
            "id": commit_id,
            "parents": [parent] if parent else [],
            "title": title,
            "tree": tree,
        }
        return commit_id

    def tree(self, repo_id: str, revision: str) -> list[dict[str, Any]]:
        """The raw tree of a branch or commit (tests edit it to simulate corruption)."""
        return self._repo(repo_id)["commits"][self._commit_id(repo_id, revision)]["tree"]

    def _record(self, name: str, token: Any) -> None:
        self.calls.append(name)
        self.tokens.append(token)

    # -- the HfApi methods ---------------------------------------------------------
    def create_repo(self, repo_id: str, *, token=None, exist_ok=False, private=None, **_: Any):
        self._record("create_repo", token)
        if repo_id in self.repos:
            if not exist_ok:
                raise RuntimeError(f"409 {repo_id} already exists")
        else:
            self.repos[repo_id] = {"commits": {}, "heads": {}}
            entry = tree_entry(".gitattributes", GITATTRIBUTES)
            root = self._add_commit(repo_id, None, "initial commit", [entry])
            self.repos[repo_id]["heads"]["main"] = root
        return f"https://huggingface.co/{repo_id}"

    def list_repo_refs(self, repo_id: str, *, token=None, **_: Any) -> GitRefs:
        self._record("list_repo_refs", token)
        heads = self._repo(repo_id)["heads"]
        branches = [
            GitRefInfo(name=n, ref=f"refs/heads/{n}", target_commit=c) for n, c in heads.items()
        ]
        return GitRefs(branches=branches, converts=[], tags=[])

    def list_repo_commits(self, repo_id: str, *, token=None, revision=None, **_: Any):
        self._record("list_repo_commits", token)
        commits = self._repo(repo_id)["commits"]
        commit_id: str | None = self._commit_id(repo_id, revision or "main")
        out = []
        while commit_id:
            c = commits[commit_id]
            out.append(
                GitCommitInfo(
                    commit_id=commit_id,
                    authors=[],
                    created_at=datetime(2023, 1, 1, tzinfo=UTC),
                    title=c["title"],
                    message="",
                    formatted_title=None,
                    formatted_message=None,
                )
            )
            commit_id = c["parents"][0] if c["parents"] else None
        return out

    def create_branch(
        self, repo_id: str, *, branch: str, revision=None, token=None, exist_ok=False, **_: Any
    ):
        self._record("create_branch", token)
        repo = self._repo(repo_id)
        if branch in repo["heads"]:
            if not exist_ok:
                raise RuntimeError(f"409 branch {branch} already exists")
            return
        repo["heads"][branch] = self._commit_id(repo_id, revision or "main")  # Hub default: main

    def list_repo_tree(
        self,
        repo_id: str,
        path_in_repo=None,
        *,
        recursive=False,
        expand=False,
        revision=None,
        token=None,
        **_: Any,
    ):
        self._record("list_repo_tree", token)
        assert recursive, "publishing must list recursively"
        return [
            RepoFile(**{k: v for k, v in e.items() if k != "type"})
            for e in self.tree(repo_id, revision or "main")
        ]

    def create_commit(
        self,
        repo_id: str,
        operations,
        *,
        commit_message: str,
        revision=None,
        parent_commit=None,
        token=None,
        **_: Any,
    ) -> CommitInfo:
        self._record("create_commit", token)
        branch = revision or "main"
        head = self._commit_id(repo_id, branch)
        if self.fail_commits:
            self.fail_commits -= 1
            raise ConnectionError(self.failure_text)
        if parent_commit is not None and parent_commit != head:
            raise RuntimeError(f"412 parent commit {parent_commit} is not the head of {branch}")
        tree = {e["path"]: e for e in self.tree(repo_id, head)}
        for op in operations:
            if isinstance(op, CommitOperationAdd):
                data = Path(op.path_or_fileobj).read_bytes()
                tree[op.path_in_repo] = tree_entry(op.path_in_repo, data)
                self.uploaded.append((branch, op.path_in_repo))
            elif isinstance(op, CommitOperationDelete):
                del tree[op.path_in_repo]
        new = self._add_commit(repo_id, head, commit_message, list(tree.values()))
        self._repo(repo_id)["heads"][branch] = new
        url = f"https://huggingface.co/{repo_id}/commit/{new}"
        return CommitInfo(
            commit_url=url, commit_message=commit_message, commit_description="", oid=new
        )
