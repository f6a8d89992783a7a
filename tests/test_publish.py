"""Tests for pythia_suite.publish against a recorded-listing fake Hub and a real local hub."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import subprocess
import sys
import traceback
from pathlib import Path

import pytest
from hub_fake import GITATTRIBUTES, FakeHfApi, export_files, tree_entry, write_export

from pythia_suite.publish import (
    PublishError,
    VerificationError,
    git_blob_sha1,
    hash_file,
    local_files,
    plan_branch_upload,
    publish_local,
    publish_step,
    verify_run,
)

REPO = "pythia-suite/pythia-mini"  # fixtures/hub/pythia-mini.json: steps 0 1 1000 2000 3000
NEW_REPO = "pythia-suite/pythia-new"  # fixtures/hub/pythia-new.json: only the initial commit
ROOT = "dc76e9f0c0006e8f919e0c515c66dbba3982f785"
STEPS = [0, 1, 1000, 2000, 3000]


@pytest.fixture
def api() -> FakeHfApi:
    return FakeHfApi.from_fixtures("pythia-mini.json", "pythia-new.json")


@pytest.fixture(autouse=True)
def no_ambient_token(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf_home"))  # no stored login either


def files_of(api: FakeHfApi, repo: str, branch: str) -> dict[str, dict]:
    return {e["path"]: e for e in api.tree(repo, branch)}


# ----------------------------------------------------------------------------- hashing


def test_git_blob_sha1_is_gits() -> None:
    # `printf '{"model_type": "gpt_neox", "rotary_pct": 0.25}\n' | git hash-object --stdin`
    assert (
        git_blob_sha1(export_files(0)["config.json"]) == "550662a58600dbc5ef86f0331e38bce6337a35ee"
    )
    assert git_blob_sha1(b"") == "e69de29bb2d1d6434b8b29ae775ad8c2e48c5391"


def test_hash_file_reads_both_hashes(tmp_path: Path) -> None:
    data = os.urandom(70_000)
    (tmp_path / "f").write_bytes(data)
    assert hash_file(tmp_path / "f") == (
        len(data),
        hashlib.sha256(data).hexdigest(),
        git_blob_sha1(data),
    )


# ----------------------------------------------------------------------------- planning


def test_plan_compares_lfs_sha256_and_blob_sha1(tmp_path: Path, api: FakeHfApi) -> None:
    local = local_files(write_export(tmp_path / "e", 1000))
    same = plan_branch_upload(local, api.list_repo_tree(REPO, recursive=True, revision="step1000"))
    assert same.is_noop and same.skip == ["config.json", "model.safetensors", "tokenizer.json"]
    on_main = plan_branch_upload(local, api.list_repo_tree(REPO, recursive=True, revision="main"))
    assert on_main.upload == ["model.safetensors"]  # main holds step3000's weights
    assert on_main.skip == ["config.json", "tokenizer.json"]
    empty = plan_branch_upload(local, api.list_repo_tree(REPO, recursive=True, revision=ROOT))
    assert empty.upload == sorted(local) and empty.delete == []  # .gitattributes is the Hub's


def test_plan_deletes_stray_files_and_accepts_raw_listings(tmp_path: Path) -> None:
    local = local_files(write_export(tmp_path / "e", 1000))
    data = export_files(1000)
    listing = [tree_entry(p, d) for p, d in data.items()]
    listing += [tree_entry("pytorch_model.bin", b"old"), tree_entry(".gitattributes", b"x")]
    listing += [{"type": "directory", "oid": "0" * 40, "size": 0, "path": "sub"}]
    plan = plan_branch_upload(local, listing)
    assert plan.delete == ["pytorch_model.bin"] and plan.upload == []
    listing[0] = tree_entry("config.json", data["config.json"] + b" ")  # same name, other bytes
    assert plan_branch_upload(local, listing).upload == ["config.json"]


# ----------------------------------------------------------------------------- publish_step


def test_new_branch_starts_at_root_and_carries_its_files(tmp_path: Path, api: FakeHfApi) -> None:
    export = write_export(tmp_path / "step500", 500)
    receipt_path = tmp_path / "published" / "step500.json"
    result = publish_step(api, REPO, 500, export, receipt_path=receipt_path)
    assert api.uploaded == [("step500", p) for p in sorted(export_files(500))]
    commit = api.repos[REPO]["commits"][result.receipt["commit"]]
    assert commit["parents"] == [ROOT]  # not main's head
    served = files_of(api, REPO, "step500")["model.safetensors"]["lfs"]["oid"]
    assert served == hashlib.sha256(export_files(500)["model.safetensors"]).hexdigest()
    receipt = json.loads(receipt_path.read_text())
    assert receipt == result.receipt
    assert receipt["verified"] is True and receipt["branch"] == "step500"
    assert receipt["refs"] == {"step500": api.repos[REPO]["heads"]["step500"]}
    assert receipt["files"]["config.json"]["git_sha1"] == git_blob_sha1(
        export_files(500)["config.json"]
    )
    assert [p.name for p in receipt_path.parent.iterdir()] == ["step500.json"]


def test_interrupted_upload_never_leaves_main_weights(tmp_path: Path, api: FakeHfApi) -> None:
    export = write_export(tmp_path / "step500", 500)
    receipt_path = tmp_path / "step500.json"
    api.fail_commits = 1
    with pytest.raises(PublishError, match=r"commit to pythia-suite/pythia-mini@step500 failed"):
        publish_step(api, REPO, 500, export, receipt_path=receipt_path)
    assert set(files_of(api, REPO, "step500")) == {".gitattributes"}  # no weights, not main's
    assert not receipt_path.exists()
    with pytest.raises(VerificationError, match="step500: model.safetensors missing"):
        verify_run(api, REPO, [*STEPS, 500])
    result = publish_step(api, REPO, 500, export, receipt_path=receipt_path)  # resume
    assert result.plans["step500"].upload == sorted(export_files(500))
    assert json.loads(receipt_path.read_text())["verified"] is True


def test_rerun_matching_remote_sends_nothing(tmp_path: Path, api: FakeHfApi) -> None:
    export = write_export(tmp_path / "step1000", 1000)
    head = api.repos[REPO]["heads"]["step1000"]
    result = publish_step(api, REPO, 1000, export, receipt_path=tmp_path / "r.json")
    assert not result.sent and api.uploaded == []
    assert "create_commit" not in api.calls and "create_branch" not in api.calls
    assert result.receipt["commit"] == head
    first = (tmp_path / "r.json").read_bytes()
    publish_step(api, REPO, 1000, export, receipt_path=tmp_path / "r.json")
    assert (tmp_path / "r.json").read_bytes() == first  # receipts are reproducible


def test_branch_serving_main_weights_is_repaired(tmp_path: Path, api: FakeHfApi) -> None:
    with pytest.raises(VerificationError) as err:
        verify_run(api, REPO, STEPS)
    assert err.value.problems == [
        "step2000 and step3000 serve identical weights (" + _sha(3000) + ")",
        "step2000 and main serve identical weights (" + _sha(3000) + ")",
    ]
    result = publish_step(api, REPO, 2000, write_export(tmp_path / "e", 2000))
    assert result.plans["step2000"].upload == ["model.safetensors"]  # only what differs
    assert api.uploaded == [("step2000", "model.safetensors")]
    weights = verify_run(api, REPO, STEPS)
    assert weights["step0"] == weights["step1"] and weights["main"] == weights["step3000"]
    assert len(set(weights.values())) == 4


def _sha(step: int) -> str:
    return hashlib.sha256(export_files(step)["model.safetensors"]).hexdigest()


def test_final_step_updates_main(tmp_path: Path, api: FakeHfApi) -> None:
    export = write_export(tmp_path / "step4000", 4000)
    result = publish_step(api, REPO, 4000, export, final=True)
    assert api.uploaded == [("step4000", p) for p in sorted(export_files(4000))] + [
        ("main", "model.safetensors")
    ]
    assert set(result.receipt["refs"]) == {"step4000", "main"}
    assert files_of(api, REPO, "main") == files_of(api, REPO, "step4000")
    publish_step(api, REPO, 2000, write_export(tmp_path / "e2", 2000))
    verify_run(api, REPO, [*STEPS, 4000])  # main == step4000 now, step3000 distinct


def test_new_repo_is_created_and_published(tmp_path: Path, api: FakeHfApi) -> None:
    repo = "pythia-suite/brand-new"
    for step in (0, 1, 2):
        publish_step(api, repo, step, write_export(tmp_path / f"s{step}", step), final=step == 2)
    assert verify_run(api, repo, [0, 1, 2])["main"] == _sha(2)
    for branch in ("step0", "step1", "step2"):
        parents = api.repos[repo]["commits"][api.repos[repo]["heads"][branch]]["parents"]
        assert api.repos[repo]["commits"][parents[0]]["title"] == "initial commit"


class LossyHub(FakeHfApi):
    """A Hub whose commits land damaged: to check that verification, not trust, decides."""

    damage = "wrong-hash"

    def create_commit(self, repo_id, operations, **kwargs):
        info = super().create_commit(repo_id, operations, **kwargs)
        tree = self.tree(repo_id, info.oid)
        if self.damage == "wrong-hash":
            entry = next(e for e in tree if e["path"] == "model.safetensors")
            entry["lfs"]["oid"] = "0" * 64
        elif self.damage == "missing":
            tree[:] = [e for e in tree if e["path"] != "tokenizer.json"]
        return info


@pytest.mark.parametrize(
    ("damage", "problem"),
    [
        ("wrong-hash", r"model\.safetensors: remote 0{64} \(\d+ bytes\) != local [0-9a-f]{64}"),
        ("missing", r"tokenizer\.json: missing"),
    ],
)
def test_failed_verification_writes_no_receipt(tmp_path: Path, damage: str, problem: str) -> None:
    api = LossyHub.from_fixtures("pythia-mini.json")
    api.damage = damage
    receipt = tmp_path / "step500.json"
    with pytest.raises(VerificationError, match=problem):
        publish_step(api, REPO, 500, write_export(tmp_path / "e", 500), receipt_path=receipt)
    assert not receipt.exists()


def test_verify_run_reports_missing_and_diverging(api: FakeHfApi) -> None:
    repo = api.repos[REPO]
    repo["heads"]["main"] = repo["heads"]["step1000"]  # main no longer the final step
    del repo["heads"]["step0"]
    with pytest.raises(VerificationError) as err:
        verify_run(api, REPO, STEPS)
    assert "step0: branch missing" in err.value.problems
    assert "main and step3000 must serve identical weights but differ" in err.value.problems
    assert "step1000 and main serve identical weights (" + _sha(1000) + ")" in err.value.problems


# ----------------------------------------------------------------------------- tokens

PLANTED = "hf_PlantedSecretToken0123456789"


def test_token_never_written_logged_or_raised(
    tmp_path: Path,
    api: FakeHfApi,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    monkeypatch.setenv("HF_TOKEN", PLANTED)
    caplog.set_level(logging.DEBUG)
    out = tmp_path / "out"
    publish_step(api, REPO, 500, write_export(tmp_path / "e", 500), receipt_path=out / "a.json")
    assert set(api.tokens) == {PLANTED}  # the environment's token was used for every call
    api.fail_commits = 1
    api.failure_text = f"401 for url with headers {{'authorization': 'Bearer {PLANTED}'}}"
    with pytest.raises(PublishError) as err:
        publish_step(api, REPO, 600, write_export(tmp_path / "f", 600), receipt_path=out / "b.json")
    shown = "".join(traceback.format_exception(err.value))
    assert "401 for url" in shown and "<redacted>" in shown
    written = [p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()]
    for text in [shown, caplog.text, *map(bytes.decode, written)]:
        assert PLANTED not in text and PLANTED[3:] not in text


# ----------------------------------------------------------------------------- local hub


@pytest.fixture(scope="module")
def real_exports(tmp_path_factory: pytest.TempPathFactory) -> dict[int, Path]:
    """Real exports of a tiny GPTNeoX at steps 0, 1 (same weights) and 2."""
    import torch
    from safetensors.torch import save_file
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from train_support import tiny_gpt_neox_config
    from transformers import GPTNeoXForCausalLM

    from pythia_suite.export import export_checkpoint

    root = tmp_path_factory.mktemp("exports")
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=["<|endoftext|>", "<|padding|>"])
    tok.train_from_iterator(["hello local hub world " * 50], trainer)
    tok.save(str(root / "tokenizer.json"))
    config = tiny_gpt_neox_config(
        vocab_size=320,
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=32,
        eos_token_id=2,  # transformers' default, which the export replaces by the EOD id
    )
    exports = {}
    for step in (0, 1, 2):
        torch.manual_seed(0 if step < 2 else 2)
        model = GPTNeoXForCausalLM(config)
        ckpt = root / f"ck{step}"
        ckpt.mkdir()
        state = {k: v.contiguous() for k, v in model.state_dict().items()}
        state["embed_out.weight"] = state.pop("lm_head.weight")
        save_file(state, str(ckpt / "model.safetensors"))
        (ckpt / "hf_config.json").write_text(json.dumps(config.to_dict()))
        exports[step] = export_checkpoint(ckpt, root / "tokenizer.json", root / f"step{step}")
    return exports


LOAD_SCRIPT = """
import json, sys, torch
from transformers import AutoTokenizer, GPTNeoXForCausalLM
repo, cache, exports = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
ids = torch.arange(10).unsqueeze(0)
for revision, export in exports.items():
    hub = GPTNeoXForCausalLM.from_pretrained(repo, revision=revision, cache_dir=cache)
    ref = GPTNeoXForCausalLM.from_pretrained(export)
    assert torch.equal(hub(ids).logits, ref(ids).logits), revision
    tok = AutoTokenizer.from_pretrained(repo, revision=revision, cache_dir=cache)
    assert tok.decode(tok("hello world").input_ids) == "hello world"
try:
    GPTNeoXForCausalLM.from_pretrained(repo, revision="step999", cache_dir=cache)
except OSError:
    print("unknown revision refused")
print("loaded", sorted(exports))
"""


def test_local_hub_loads_offline_for_every_revision(tmp_path: Path, real_exports) -> None:
    cache = tmp_path / "hub"
    repo = "pythia-suite/pythia-tiny"
    commits = {
        f"step{s}": publish_local(cache, repo, f"step{s}", e) for s, e in real_exports.items()
    }
    commits["main"] = publish_local(cache, repo, "main", real_exports[2])
    assert len(set(commits.values())) == 4  # deterministic per branch, distinct
    folder = cache / "models--pythia-suite--pythia-tiny"
    assert (folder / "refs" / "main").read_text() == commits["main"]
    link = folder / "snapshots" / commits["step0"] / "model.safetensors"
    assert link.is_symlink() and not os.path.isabs(os.readlink(link))
    size, sha256, sha1 = hash_file(real_exports[0] / "model.safetensors")
    assert link.resolve() == (folder / "blobs" / sha256).resolve()  # LFS ETag: sha256
    config_sha1 = hash_file(real_exports[0] / "config.json")[2]
    assert (folder / "snapshots" / commits["step0"] / "config.json").resolve().name == config_sha1
    blobs = sorted(p.name for p in (folder / "blobs").iterdir())
    assert len(blobs) == 2 + 5  # two distinct weights files; the other five files are shared

    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    exports = {f"step{s}": str(e) for s, e in real_exports.items()} | {"main": str(real_exports[2])}
    run = subprocess.run(
        [sys.executable, "-c", LOAD_SCRIPT, repo, str(cache), json.dumps(exports)],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    assert "unknown revision refused" in run.stdout
    assert "loaded ['main', 'step0', 'step1', 'step2']" in run.stdout


def test_local_hub_rerun_is_noop_and_republish_moves_ref(tmp_path: Path, real_exports) -> None:
    cache = tmp_path / "hub"
    repo = "org/run"
    first = publish_local(cache, repo, "step0", real_exports[0])
    before = {p: p.lstat().st_mtime_ns for p in cache.rglob("*")}
    assert publish_local(cache, repo, "step0", real_exports[0]) == first
    assert {p: p.lstat().st_mtime_ns for p in cache.rglob("*")} == before
    moved = publish_local(cache, repo, "step0", real_exports[2])
    assert moved != first and (cache / "models--org--run" / "refs" / "step0").read_text() == moved
    assert not list(cache.rglob("*.incomplete")) and not list(cache.rglob(".*tmp*"))


def test_local_hub_rejects_bad_input(tmp_path: Path) -> None:
    with pytest.raises(PublishError, match="repo_id 'no-slash' is not of the form"):
        publish_local(tmp_path, "no-slash", "main", tmp_path)
    with pytest.raises(PublishError, match=r"missing: export directory not found"):
        publish_local(tmp_path / "hub", "org/run", "main", tmp_path / "missing")
    assert not (tmp_path / "hub").exists()


def test_fixture_gitattributes_entry_matches_content(api: FakeHfApi) -> None:
    """The recorded listings are in the Hub's shape and self-consistent."""
    root = {e["path"]: e for e in api.tree(REPO, ROOT)}
    assert root[".gitattributes"] == tree_entry(".gitattributes", GITATTRIBUTES)
