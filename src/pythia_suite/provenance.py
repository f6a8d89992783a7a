"""Provenance records: what made each artifact, and a walk back from any result to raw data.

Every artifact gets a record beside it: `<dir>/provenance.json` for a directory,
`<file>.provenance.json` for a file. A record holds the artifact's content hash, the config
subset that made it (hash and values), the code version, package versions, its inputs with
their content hashes (and where their own records are), host, SLURM job id, devices, and
start and end times. `verify` recomputes hashes and follows inputs until it reaches artifacts
without records (the raw data), reporting the first break.

No secret ever enters a record: only the config (which holds none), a fixed set of package
versions, and the SLURM job id are recorded; the environment is not.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import subprocess
import time
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

from pythia_suite.atomic import write_json_atomic
from pythia_suite.hashing import artifact_files, sha256_file
from pythia_suite.jsonfile import JSONFileError, read_json

RECORD_NAME = "provenance.json"
PRUNED_NAME = "pruned.json"  # written by pythia_suite.retention
# Files in a directory artifact that are not its content.
_NOT_CONTENT = (RECORD_NAME, PRUNED_NAME)
PACKAGES = (
    "pythia-suite",
    "torch",
    "transformers",
    "tokenizers",
    "safetensors",
    "numpy",
    "lm_eval",
    "huggingface_hub",
    "datasketch",
    "snakemake",
)


class ProvenanceError(RuntimeError):
    """A provenance chain is broken; the message names the artifact and what differs."""


def record_path(artifact: str | os.PathLike) -> Path:
    """Where the record of `artifact` lives."""
    artifact = Path(artifact)
    if artifact.is_dir():
        return artifact / RECORD_NAME
    return artifact.with_name(artifact.name + ".provenance.json")


def content_hash(artifact: str | os.PathLike) -> str:
    """sha256 of a file, or of a directory's sorted (relative path, file sha256) list.

    A directory's own provenance record is left out, so writing it does not change the hash, and
    so is Snakemake's `.snakemake_timestamp` (touched after the job). Files that storage
    retention removed (`pythia_suite.retention`) count with the sha256 its `pruned.json`
    recorded just before removing them, so pruning a checkpoint does not change its hash.
    Raises FileNotFoundError naming the artifact when it does not exist.
    """
    artifact = Path(artifact)
    if artifact.is_file():
        return sha256_file(artifact)
    if not artifact.is_dir():
        raise FileNotFoundError(f"{artifact}: artifact does not exist")
    present = artifact_files(artifact)  # Snakemake's bookkeeping is never content
    for name in _NOT_CONTENT:
        present.pop(name, None)
    removed = _pruned_hashes(artifact)
    digest = hashlib.sha256()
    for rel in sorted(present.keys() | removed.keys()):
        sha = sha256_file(present[rel]) if rel in present else removed[rel]
        digest.update(f"{rel}\0{sha}\n".encode())
    return digest.hexdigest()


def _pruned_hashes(directory: Path) -> dict[str, str]:
    """Relative path -> sha256 of the files retention removed from `directory` (none: {})."""
    path = directory / PRUNED_NAME
    if not path.is_file():
        return {}
    try:
        removed = read_json(path)["removed"]
        return {rel: entry["sha256"] for rel, entry in removed.items()}
    except (JSONFileError, KeyError, TypeError, AttributeError) as err:
        raise ProvenanceError(f"{path}: unreadable retention marker: {err!r}") from None


def config_digest(subset: Any) -> str:
    return hashlib.sha256(json.dumps(subset, sort_keys=True, default=str).encode()).hexdigest()


def code_version() -> dict[str, Any]:
    """The git commit and dirty flag of the checkout this package runs from, if any."""
    root = Path(__file__).resolve().parents[2]
    try:
        commit = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
        status = subprocess.run(
            ["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return {"git_commit": None, "dirty": None, "version": _version("pythia-suite")}
    return {
        "git_commit": commit,
        "dirty": bool(status.strip()),
        "version": _version("pythia-suite"),
    }


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def package_versions() -> dict[str, str | None]:
    return {name: _version(name) for name in PACKAGES}


def devices() -> list[str]:
    """The accelerators this process sees (without importing torch if it is not loaded)."""
    import sys

    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available():
        return [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    return [f"cpu ({os.cpu_count()} cores)"]


@dataclass
class Recorder:
    """Collects a record while a stage runs; `write()` once the artifact is complete."""

    artifact: Path
    kind: str
    config: Any
    inputs: list[Path] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)
    started: float = field(default_factory=time.time)

    def write(self) -> Path:
        """Hash the artifact and its inputs and write the record atomically."""
        record = {
            "artifact": str(self.artifact),
            "kind": self.kind,
            "sha256": content_hash(self.artifact),
            "config": {"sha256": config_digest(self.config), "values": self.config},
            "code": code_version(),
            "packages": package_versions(),
            "inputs": [_input_entry(path) for path in self.inputs],
            "host": platform.node(),
            "slurm_job_id": os.environ.get("SLURM_JOB_ID"),
            "devices": devices(),
            "started": _iso(self.started),
            "finished": _iso(time.time()),
            **({"extra": self.extra} if self.extra else {}),
        }
        return write_json_atomic(
            record_path(self.artifact), record, indent=1, sort_keys=False, default=str
        )


def _iso(ts: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts))


def _input_entry(path: Path) -> dict[str, Any]:
    """An input's hash: taken from its own record when it has one (checked by verify)."""
    own = record_path(path)
    if own.exists():
        sha = read_json(own)["sha256"]
        return {"path": str(path), "sha256": sha, "record": str(own)}
    return {"path": str(path), "sha256": content_hash(path), "record": None}


def read_record(artifact: str | os.PathLike) -> dict:
    """The record of `artifact`. Raises ProvenanceError when it has none or it is unreadable."""
    path = record_path(artifact)
    try:
        return read_json(path)
    except FileNotFoundError as err:
        raise ProvenanceError(f"{artifact}: no provenance record ({path})") from err
    except JSONFileError as err:
        raise ProvenanceError(f"{path}: provenance record: {err.reason}") from err


@dataclass
class Verification:
    checked: list[str]
    roots: list[str]
    break_: str | None

    @property
    def ok(self) -> bool:
        return self.break_ is None

    def report(self) -> str:
        """`pythia-suite verify`'s lines: each record checked, each root, then the verdict."""
        lines = [f"ok    {path}" for path in self.checked] + [f"root  {r}" for r in self.roots]
        if self.ok:
            lines.append(f"chain intact: {len(self.checked)} records, {len(self.roots)} raw inputs")
        else:
            lines.append(f"BREAK {self.break_}")
        return "\n".join(lines)


def verify(target: str | os.PathLike) -> Verification:
    """Walk the chain from `target` back to its raw inputs, recomputing every hash.

    Returns a Verification whose `break_` names the first artifact whose content or inputs do
    not match their record (None when the whole chain holds). Artifacts without a record are
    the roots (raw data); they are reported with the hash their consumer recorded.
    """
    checked: list[str] = []
    roots: list[str] = []
    seen: set[str] = set()
    if not Path(target).exists():
        return Verification(checked, roots, f"{target}: no such file or directory")
    pending = [Path(target)]
    while pending:
        artifact = pending.pop()
        key = str(artifact)
        if key in seen:
            continue
        seen.add(key)
        try:
            record = read_record(artifact)
        except ProvenanceError as err:
            return Verification(checked, roots, str(err))
        actual = content_hash(artifact)
        if actual != record["sha256"]:
            return Verification(
                checked,
                roots,
                f"{artifact}: content changed since it was recorded "
                f"(recorded {record['sha256'][:12]}, now {actual[:12]})",
            )
        checked.append(key)
        for entry in record["inputs"]:
            path = Path(entry["path"])
            if not path.exists():
                return Verification(checked, roots, f"{path}: input of {artifact} is missing")
            if entry["record"] is None:
                now = content_hash(path)
                if now != entry["sha256"]:
                    return Verification(
                        checked,
                        roots,
                        f"{path}: raw input of {artifact} changed "
                        f"(recorded {entry['sha256'][:12]}, now {now[:12]})",
                    )
                roots.append(f"{path} sha256:{entry['sha256']}")
                continue
            own = read_record(path)
            if own["sha256"] != entry["sha256"]:
                return Verification(
                    checked,
                    roots,
                    f"{path}: was rebuilt after {artifact} used it "
                    f"(used {entry['sha256'][:12]}, now {own['sha256'][:12]})",
                )
            pending.append(path)
    return Verification(checked, roots, None)
