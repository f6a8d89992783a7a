"""Receipts: each step published, read back, and recorded only once every comparison matched.

A receipt lists each comparison under ``verifications`` (where, branch, commit, how, files
compared) and says ``verified: true`` only when at least one comparison ran and every one
covered every file and matched (:func:`is_verified`).
"""

from __future__ import annotations

import logging
import os
import tempfile
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from pythia_suite.atomic import write_json_atomic
from pythia_suite.publish.files import LocalFile, PublishError, local_files
from pythia_suite.publish.hub import publish_step
from pythia_suite.publish.local_hub import publish_local, verify_local_branch

logger = logging.getLogger(__name__)

#: How a Hub check compares, as receipts record it.
HUB_LISTING = (
    "listed back with list_repo_tree at the branch's new commit; sha256 (LFS files) or git blob "
    "sha1 (others) and size of every file compared with the export"
)


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
