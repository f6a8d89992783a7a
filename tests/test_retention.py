"""Storage retention (pythia_suite.retention): which resume states go, what stays, and that
provenance still verifies. Runs on small hand-made checkpoint directories with real provenance
records; the Snakemake side (`snakemake -n` after a prune) is in tests/test_failures.py."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from pythia_suite import provenance, retention
from pythia_suite.provenance import Recorder

STEPS = (0, 4, 8, 12)


def make_checkpoint(path: Path, step: int) -> Path:
    (path / "optimizer").mkdir(parents=True)
    (path / "model.safetensors").write_bytes(os.urandom(256))
    (path / "hf_config.json").write_text('{"hidden_size": 32}\n')
    (path / "trainer_state.json").write_text(json.dumps({"step": step}) + "\n")
    for rank in range(2):
        (path / "optimizer" / f"rank{rank:05d}-of-00002.pt").write_bytes(os.urandom(512))
    (path / ".snakemake_timestamp").touch()  # as Snakemake leaves it
    Recorder(path, "checkpoint", {"step": step}).write()
    return path


def make_run(root: Path, exported=STEPS, published=STEPS) -> tuple[dict, dict, dict]:
    """Checkpoints of every step; exports and verified receipts of the given steps."""
    ckpts = {s: root / "checkpoints" / f"step{s}" for s in STEPS}
    exports = {s: root / "exports" / f"step{s}" for s in STEPS}
    receipts = {s: root / "published" / f"step{s}.json" for s in STEPS}
    for step in STEPS:
        make_checkpoint(ckpts[step], step)
        if step in exported:
            exports[step].mkdir(parents=True)
            shutil.copy(ckpts[step] / "model.safetensors", exports[step])
            Recorder(exports[step], "export", {}, [ckpts[step]]).write()
        if step in published:
            receipts[step].parent.mkdir(parents=True, exist_ok=True)
            receipts[step].write_text(json.dumps({"step": step, "verified": True}))
            Recorder(receipts[step], "publish-receipt", {}, [exports[step]]).write()
    return ckpts, exports, receipts


def actions(decisions) -> dict[int, str]:
    return {d.step: d.action for d in decisions}


def test_plan_prunes_safe_older_states_and_keeps_newest_and_step0(tmp_path: Path) -> None:
    run = make_run(tmp_path)
    assert actions(retention.plan_retention(*run, keep=1)) == {
        0: "keep",
        4: "prune",
        8: "prune",
        12: "keep",
    }
    assert actions(retention.plan_retention(*run, keep=2)) == {
        0: "keep",
        4: "prune",
        8: "keep",
        12: "keep",
    }
    # keep 0 still keeps the newest: the next segment resumes from it.
    assert actions(retention.plan_retention(*run, keep=0))[12] == "keep"
    with pytest.raises(ValueError, match="keep_resume_states must be >= 0"):
        retention.plan_retention(*run, keep=-1)


def test_unexported_unpublished_or_unverified_states_are_kept(tmp_path: Path) -> None:
    ckpts, exports, receipts = make_run(tmp_path, exported=(0, 8, 12), published=(0, 12))
    decisions = {d.step: d for d in retention.plan_retention(ckpts, exports, receipts, keep=1)}
    assert decisions[4].action == "keep" and "not exported" in decisions[4].reason
    assert decisions[8].action == "keep" and "no verified receipt" in decisions[8].reason

    # A receipt that does not say verified, or an export of other weights, keeps the state.
    ckpts, exports, receipts = make_run(tmp_path / "b")
    receipts[4].write_text(json.dumps({"step": 4, "verified": False}))
    Recorder(exports[8], "export", {}, [ckpts[4]]).write()  # the export came from step4
    decisions = {d.step: d for d in retention.plan_retention(ckpts, exports, receipts, keep=1)}
    assert decisions[4].action == "keep" and "no verified receipt" in decisions[4].reason
    assert decisions[8].action == "keep" and "not exported from this" in decisions[8].reason


def test_prune_keeps_weights_and_provenance_verifies(tmp_path: Path) -> None:
    ckpts, exports, receipts = make_run(tmp_path)
    before = {s: provenance.content_hash(p) for s, p in ckpts.items()}
    mtimes = {
        s: (p.stat().st_mtime_ns, (p / ".snakemake_timestamp").stat().st_mtime_ns)
        for s, p in ckpts.items()
    }
    optimizer_bytes = retention.resume_bytes(ckpts[4])
    assert optimizer_bytes == 1024

    decisions = retention.apply_retention(ckpts, exports, receipts, keep=1)

    assert actions(decisions) == {0: "keep", 4: "pruned", 8: "pruned", 12: "keep"}
    for step in (4, 8):
        ckpt = ckpts[step]
        assert not (ckpt / "optimizer").exists()
        assert retention.resume_bytes(ckpt) == 0
        assert {p.name for p in ckpt.iterdir()} == {
            "model.safetensors",
            "hf_config.json",
            "trainer_state.json",
            "provenance.json",
            "pruned.json",
            ".snakemake_timestamp",
        }
        marker = json.loads((ckpt / "pruned.json").read_text())
        assert marker["format"] == retention.PRUNED_FORMAT
        assert sorted(marker["removed"]) == [
            "optimizer/rank00000-of-00002.pt",
            "optimizer/rank00001-of-00002.pt",
        ]
        assert all(e["size"] == 512 for e in marker["removed"].values())
        # Same content hash as before: the records downstream still match.
        assert provenance.content_hash(ckpt) == before[step]
        assert (
            ckpt.stat().st_mtime_ns,
            (ckpt / ".snakemake_timestamp").stat().st_mtime_ns,
        ) == mtimes[step]
        result = provenance.verify(receipts[step])
        assert result.ok, result.break_
        assert str(ckpt) in result.checked
    assert (ckpts[12] / "optimizer").is_dir() and not retention.is_pruned(ckpts[12])

    # Idempotent: a second pass changes nothing.
    again = retention.apply_retention(ckpts, exports, receipts, keep=1)
    assert actions(again) == {0: "keep", 4: "pruned", 8: "pruned", 12: "keep"}


def test_tampered_weights_or_marker_break_verification(tmp_path: Path) -> None:
    ckpts, exports, receipts = make_run(tmp_path)
    retention.apply_retention(ckpts, exports, receipts, keep=1)
    marker = ckpts[4] / "pruned.json"
    data = json.loads(marker.read_text())
    data["removed"]["optimizer/rank00000-of-00002.pt"]["sha256"] = "0" * 64
    marker.write_text(json.dumps(data))
    result = provenance.verify(receipts[4])
    assert not result.ok and "step4: content changed" in result.break_

    (ckpts[8] / "model.safetensors").write_bytes(b"other weights")
    result = provenance.verify(receipts[8])
    assert not result.ok and "step8: content changed" in result.break_

    (ckpts[12] / "pruned.json").write_text("{not json")
    with pytest.raises(provenance.ProvenanceError, match="step12/pruned.json: unreadable"):
        provenance.content_hash(ckpts[12])


def test_interrupted_prune_still_verifies_and_is_finished_by_a_rerun(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ckpts, exports, receipts = make_run(tmp_path)
    before = provenance.content_hash(ckpts[4])

    def die_after_one_file(path, ignore_errors=False):
        next(Path(path).iterdir()).unlink()  # one shard gone, then the process dies
        raise KeyboardInterrupt

    monkeypatch.setattr(retention.shutil, "rmtree", die_after_one_file)
    with pytest.raises(KeyboardInterrupt):
        retention.prune_checkpoint(ckpts[4])
    monkeypatch.undo()
    assert len(list((ckpts[4] / "optimizer").iterdir())) == 1
    assert provenance.content_hash(ckpts[4]) == before
    assert provenance.verify(receipts[4]).ok

    decisions = {d.step: d for d in retention.apply_retention(ckpts, exports, receipts, keep=1)}
    assert decisions[4].action == "pruned"
    assert not (ckpts[4] / "optimizer").exists()
    assert len(json.loads((ckpts[4] / "pruned.json").read_text())["removed"]) == 2
    assert provenance.content_hash(ckpts[4]) == before


def test_prune_refuses_a_directory_that_is_not_a_checkpoint(tmp_path: Path) -> None:
    (tmp_path / "optimizer").mkdir()
    with pytest.raises(retention.RetentionError, match="model.safetensors missing"):
        retention.prune_checkpoint(tmp_path)
    assert (tmp_path / "optimizer").is_dir()
