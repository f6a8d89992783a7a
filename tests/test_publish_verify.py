"""Publishing verifies, then says so: local-hub read-back at publish time, receipts that record
each comparison, and the whole-run check (`run_done`) that reads receipts, refs, sizes and the
Hub's listing instead of re-hashing. Each failure names the branch and the file."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from hub_fake import FakeHfApi, write_export

from pythia_suite.publish import (
    PublishError,
    VerificationError,
    is_verified,
    local_files,
    publish_and_verify,
    publish_card_locally,
    verify_published_run,
)

REPO = "pythia-suite/pythia-mini"
STEPS = [0, 1, 2]


@pytest.fixture(autouse=True)
def no_ambient_token(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf_home"))


def _export(root: Path, step: int) -> Path:
    export = write_export(root / f"exports/step{step}", step)
    (export / ".snakemake_timestamp").touch()  # as Snakemake leaves a directory output
    return export


def _publish_run(root: Path, *, hub_api=None, local: bool = True) -> dict[str, Path]:
    receipts = {}
    for step in STEPS:
        receipts[f"step{step}"] = root / f"published/step{step}.json"
        publish_and_verify(
            _export(root, step),
            REPO,
            step,
            receipts[f"step{step}"],
            final=step == STEPS[-1],
            local_hub=root / "hub" if local else None,
            hub_api=hub_api,
        )
    return receipts


def _blob(root: Path, branch: str, name: str) -> Path:
    folder = root / "hub" / "models--pythia-suite--pythia-mini"
    commit = (folder / "refs" / branch).read_text()
    return (folder / "snapshots" / commit / name).resolve()


def test_receipt_records_every_comparison_and_no_bookkeeping(tmp_path: Path) -> None:
    receipts = _publish_run(tmp_path)
    final = json.loads(receipts["step2"].read_text())
    assert final["verified"] is True
    assert ".snakemake_timestamp" not in final["files"]
    checks = {c["branch"]: c for c in final["verifications"]}
    assert set(checks) == {"step2", "main"}
    for check in checks.values():
        assert check["where"] == "local hub" and check["matched"] is True
        assert check["files_compared"] == len(final["files"]) == 3
        assert "scan_cache_dir" in check["how"] and "sha256" in check["how"]
    snapshots = tmp_path / "hub" / "models--pythia-suite--pythia-mini" / "snapshots"
    assert not list(snapshots.rglob(".snakemake_timestamp"))
    assert ".snakemake_timestamp" not in local_files(tmp_path / "exports/step0")
    summary = verify_published_run(receipts, REPO, local_hub=tmp_path / "hub")
    assert sorted(summary["branches"]) == ["main", "step0", "step1", "step2"]


def test_corrupted_local_hub_blob_fails_publish_and_run_done(tmp_path: Path) -> None:
    receipts = _publish_run(tmp_path)
    blob = _blob(tmp_path, "step1", "tokenizer.json")
    blob.write_bytes(blob.read_bytes().replace(b"BPE", b"XYZ"))  # same size, other bytes
    with pytest.raises(VerificationError) as err:
        verify_published_run(receipts, REPO, local_hub=tmp_path / "hub")
    assert any(
        p.startswith("step1: tokenizer.json: blob ") and "modified after it was verified" in p
        for p in err.value.problems
    ), err.value.problems
    # Publishing the step again reads the branch back and refuses, naming branch and file.
    receipts["step1"].unlink()
    with pytest.raises(VerificationError, match=r"pythia-mini@step1 .*\n(.|\n)*tokenizer\.json: "):
        publish_and_verify(
            tmp_path / "exports/step1",
            REPO,
            1,
            receipts["step1"],
            final=False,
            local_hub=tmp_path / "hub",
        )
    assert not receipts["step1"].exists()


def test_run_done_finds_moved_ref_and_truncated_blob(tmp_path: Path) -> None:
    receipts = _publish_run(tmp_path)
    folder = tmp_path / "hub" / "models--pythia-suite--pythia-mini"
    (folder / "refs" / "step0").write_text((folder / "refs" / "step2").read_text())
    weights = _blob(tmp_path, "step2", "model.safetensors")
    os.chmod(weights, 0o644)
    weights.write_bytes(b"short")
    with pytest.raises(VerificationError) as err:
        verify_published_run(receipts, REPO, local_hub=tmp_path / "hub")
    problems = "\n".join(err.value.problems)
    assert "step0: local hub ref points at" in problems
    assert "step2: model.safetensors: 5 bytes on the local hub" in problems
    assert "main: model.safetensors: 5 bytes on the local hub" in problems


def test_unverified_receipt_fails_run_done_naming_it(tmp_path: Path) -> None:
    receipts = _publish_run(tmp_path)
    receipt = json.loads(receipts["step1"].read_text())
    receipt["verifications"] = []  # an old-style receipt: a flag without a comparison
    receipts["step1"].write_text(json.dumps(receipt))
    with pytest.raises(VerificationError, match=r"step1\.json: records no comparison"):
        verify_published_run(receipts, REPO, local_hub=tmp_path / "hub")
    assert not is_verified([], 3)
    assert not is_verified([{"matched": True, "files_compared": 2}], 3)


def test_duplicate_weights_fail_run_done(tmp_path: Path) -> None:
    receipts = _publish_run(tmp_path)
    receipts["step0"] = receipts["step2"]  # step0 and step2 now claim the same weights
    with pytest.raises(VerificationError, match="identical weights"):
        verify_published_run(receipts, REPO, local_hub=tmp_path / "hub")


def test_nothing_to_publish_to_is_refused(tmp_path: Path) -> None:
    with pytest.raises(PublishError, match="neither publish.local_hub nor publish.hub"):
        publish_and_verify(_export(tmp_path, 0), REPO, 0, tmp_path / "r.json", final=False)
    assert not (tmp_path / "r.json").exists()


def test_hub_receipts_and_run_done_against_listing(tmp_path: Path) -> None:
    api = FakeHfApi.from_fixtures("pythia-new.json")
    repo = "pythia-suite/pythia-new"
    receipts = {}
    for step in STEPS:
        receipts[f"step{step}"] = tmp_path / f"published/step{step}.json"
        receipt = publish_and_verify(
            _export(tmp_path, step),
            repo,
            step,
            receipts[f"step{step}"],
            final=step == 2,
            hub_api=api,
        )
        assert receipt["verified"] and {c["where"] for c in receipt["verifications"]} == {"hub"}
        assert all(c["files_compared"] == 3 for c in receipt["verifications"])
    summary = verify_published_run(receipts, repo, hub_api=api)
    assert "Hub refs and tree listings (with hashes)" in summary["read"]
    # The listing of step1 now reports other weights than the receipt recorded.
    tree = api.tree(repo, api.repos[repo]["heads"]["step1"])
    next(e for e in tree if e["path"] == "model.safetensors")["lfs"]["oid"] = "f" * 64
    with pytest.raises(VerificationError) as err:
        verify_published_run(receipts, repo, hub_api=api)
    assert any(
        p.startswith("step1: model.safetensors: remote " + "f" * 64) for p in err.value.problems
    ), err.value.problems


def test_card_on_main_gets_its_own_verified_receipt(tmp_path: Path) -> None:
    receipts = _publish_run(tmp_path)
    card = tmp_path / "card" / "README.md"
    card.parent.mkdir()
    card.write_text("# card\n")
    receipts["main"] = tmp_path / "card" / "published.json"
    receipt = publish_card_locally(
        tmp_path / "hub", REPO, tmp_path / "exports/step2", card, receipts["main"]
    )
    assert receipt["verified"] and "README.md" in receipt["files"]
    verify_published_run(receipts, REPO, local_hub=tmp_path / "hub")


# ----------------------------------------------------------------------------- the CLI's stage

SUITE_OVERLAY = """\
suite: {name: pythia, hub_org: pythia-suite-test}
matrix:
  - {sizes: [tiny], variants: [standard], seeds: [default]}
training: {train_iters: 8, lr_decay_iters: 8, warmup: 0.1, global_batch: 4,
           checkpoints: {factor: 4, extra: [0]}, early_group_max_step: 0}
sizes:
  tiny:
    {layers: 2, hidden: 32, heads: 2, lr: 3.0e-3, min_lr: 3.0e-4, micro_batch: 4, gas: 1,
     tensor_parallel: 1, init_method: small_init, output_layer_init_method: wang_init,
     precision: fp32, cluster: {nodes: 1, gpus_per_node: 0}}
publish: {hub: false, local_hub: true}
evaluation: {tasks: [], local_tasks: false, zero_shot_steps: [], five_shot_steps: []}
"""


def test_publish_stage_publishes_each_step_and_verify_run_reads_the_receipts(
    tmp_path: Path,
) -> None:
    """`pythia-suite publish` and `verify-run`'s logic (publish.stage) on a 3-checkpoint run:
    each receipt recorded with its provenance, then the whole run checked; a broken receipt
    fails the check naming the file, line and column."""
    from pythia_suite import config as cfg
    from pythia_suite import paths
    from pythia_suite.config import repo_id
    from pythia_suite.publish.stage import publish_run_step, verify_run_publication

    overlay = tmp_path / "overlay.yaml"
    overlay.write_text(SUITE_OVERLAY + f"paths: {{results: {tmp_path / 'results'}}}\n")
    config = cfg.load_config([Path(__file__).parents[1] / "config.yaml", overlay])
    run = cfg.get_run(config, "pythia-tiny")
    results = config["paths"]["results"]
    assert repo_id(config, run) == "pythia-suite-test/pythia-tiny"
    steps = cfg.checkpoint_steps(config)
    assert steps == [0, 4, 8]
    for step in steps:
        export = write_export(Path(paths.export_dir(results, run.name, step)), step)
        receipt = Path(paths.receipt(results, run.name, step))
        published = publish_run_step(config, run, step, export, receipt)
        branches = [c["branch"] for c in published["verifications"]]
        assert branches == ([f"step{step}", "main"] if step == 8 else [f"step{step}"])
        assert published["verified"] is True
        assert json.loads(receipt.read_text()) == published
        assert Path(f"{receipt}.provenance.json").is_file()

    summary = verify_run_publication(config, run, tmp_path / "run_done.json")
    assert json.loads((tmp_path / "run_done.json").read_text()) == summary
    assert summary["branches"] == ["step0", "step4", "step8", "main"]
    assert summary["repo_id"] == "pythia-suite-test/pythia-tiny"

    broken = Path(paths.receipt(results, run.name, 4))
    broken.write_text('{"files": {},\n  oops}')
    with pytest.raises(VerificationError, match="not JSON") as err:
        verify_run_publication(config, run, tmp_path / "run_done2.json")
    [problem] = err.value.problems
    assert problem.startswith(f"{broken}: not valid JSON: ") and "(line 2, column 3)" in problem
    assert not (tmp_path / "run_done2.json").exists()
