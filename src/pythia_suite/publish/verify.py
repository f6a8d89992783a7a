"""Verification of a whole published run, from receipts and listings, without re-hashing.

:func:`verify_run` checks a run's Hub branches (each exists, none serves another's weights
unless it must); :func:`verify_published_run` (the workflow's ``run_done``) checks every
receipt, the local hub's refs and blobs, and the Hub's listings against the receipts.
"""

from __future__ import annotations

import functools
import logging
import os
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

from huggingface_hub.hf_api import RepoFile

from pythia_suite.jsonfile import JSONFileError, read_json
from pythia_suite.publish.files import WEIGHTS_FILE, LocalFile, PublishError, VerificationError
from pythia_suite.publish.hub import (
    _branch_heads,
    _listing,
    _remote_files,
    _resolve_token,
    verify_listing,
)
from pythia_suite.publish.local_hub import _cached_repo, _cached_revision, _revision_files
from pythia_suite.publish.receipts import _files_from_record, is_verified

logger = logging.getLogger(__name__)


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
    weights, problems = _branch_weights(api, repo_id, branches, heads, expected, token)
    problems += _shared_weights_problems(branches, pairs, weights)
    if problems:
        raise VerificationError(f"{repo_id}: {len(problems)} problem(s)", problems)
    logger.info("%s: %d branches verified", repo_id, len(weights))
    return weights


def _branch_weights(
    api: Any,
    repo_id: str,
    branches: list[str],
    heads: Mapping[str, str],
    expected: Mapping[str, tuple[str | None, Mapping[str, LocalFile]]] | None,
    token: str | None,
) -> tuple[dict[str, str], list[str]]:
    """Each branch's weights id from its listing, and the problems found on the way: a missing
    branch or weights file, and (with ``expected``) a moved ref or a listing that disagrees with
    the receipt."""
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
    return weights, problems


def _shared_weights_problems(
    branches: list[str], pairs: list[tuple[str, str]], weights: Mapping[str, str]
) -> list[str]:
    """Branches serving identical weights outside the classes ``pairs`` connect, and expected
    pairs whose weights differ."""
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
    problems = []
    for digest, names in sorted(by_hash.items()):
        for i, a in enumerate(names):
            for b in names[i + 1 :]:
                if find(a) != find(b):
                    problems.append(f"{a} and {b} serve identical weights ({digest})")
    for a, b in pairs:
        if a in weights and b in weights and weights[a] != weights[b]:
            problems.append(f"{a} and {b} must serve identical weights but differ")
    return problems


# ----------------------------------------------------------------------------- the whole run


def _load_receipt(path: Path) -> dict[str, Any]:
    """A receipt's record; VerificationError when it is missing or not a JSON object."""
    try:
        return read_json(path, kind=dict)
    except FileNotFoundError:
        raise VerificationError(f"{path}: receipt missing", [f"{path}: missing"]) from None
    except JSONFileError as err:
        raise VerificationError(f"{path}: not JSON", [str(err)]) from None


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
    files_of = functools.partial(_receipt_files, loaded, final)
    allowed = {frozenset(pair) for pair in expected_identical}
    problems += _identical_weights_problems(loaded, files_of, allowed)

    read = ["receipts"]
    if local_hub is not None:
        recorded = _recorded_checks(loaded, final, "local hub")
        problems += _local_hub_problems(Path(local_hub), repo_id, recorded, files_of)
        read.append(f"local hub refs, file lists and blob size and mtime ({local_hub})")
    if hub_api is not None:
        recorded = _recorded_checks(loaded, final, "hub")
        problems += _hub_problems(
            hub_api, repo_id, steps, final, expected_identical, token, recorded, files_of
        )
        read.append("Hub refs and tree listings (with hashes)")
    if problems:
        raise VerificationError(f"{repo_id}: {len(problems)} problem(s)", problems)
    return {
        "repo_id": repo_id,
        "branches": sorted(loaded) + ([] if "main" in loaded else ["main"]),
        "read": read,
        "identical_allowed": sorted(sorted(p) for p in allowed),
    }


Loaded = Mapping[str, tuple[Path, Mapping[str, Any]]]


def _recorded_checks(loaded: Loaded, final: str, where: str) -> dict[str, dict[str, Any]]:
    """branch -> the comparison a receipt recorded for it at ``where`` (main: the card's
    receipt, or the final step's when the card was not published to main)."""
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


def _receipt_files(loaded: Loaded, final: str, branch: str) -> dict[str, Any]:
    """The files a branch's receipt records (main without its own receipt: the final step's)."""
    return loaded.get(branch, loaded[final])[1].get("files", {})


def _identical_weights_problems(
    loaded: Loaded, files_of: Callable[[str], Mapping[str, Any]], allowed: set[frozenset[str]]
) -> list[str]:
    """Steps whose receipts record the same weights, except the ``allowed`` pairs."""
    weights: dict[str, list[str]] = {}
    for branch in sorted(loaded):
        if branch.startswith("step"):
            digest = files_of(branch).get(WEIGHTS_FILE, {}).get("sha256")
            weights.setdefault(str(digest), []).append(branch)
    problems = []
    for digest, names in sorted(weights.items()):
        if len(names) > 1 and frozenset(names) not in allowed:
            problems.append(f"branches {', '.join(names)} have identical weights ({digest})")
    return problems


def _hub_problems(
    hub_api: Any,
    repo_id: str,
    steps: list[int],
    final: str,
    expected_identical: Iterable[tuple[str, str]],
    token: str | None,
    recorded: Mapping[str, Mapping[str, Any]],
    files_of: Callable[[str], Mapping[str, Any]],
) -> list[str]:
    """What :func:`verify_run` finds on the Hub against the commits and files receipts recorded."""
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
        return err.problems
    return []


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
