"""Preshuffled datasets: a local fake of the Hub repo, verification, merge, same batches."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import numpy as np
import pytest

from pythia_suite.data.indexed import IndexedDatasetWriter
from pythia_suite.data.order import GPTNeoXSamples, fingerprint_steps
from pythia_suite.data.preshuffled import (
    PRESHUFFLED_REPOS,
    PreshuffledError,
    PreshuffledFiles,
    PreshuffledSamples,
    fetch_preshuffled,
    find_preshuffled_files,
    merge_preshuffled,
    parse_shard_hashes,
    shard_preshuffled,
    verify_preshuffled,
    write_preshuffled,
)

SEQ = 16


@pytest.fixture
def order_samples(tmp_path):
    """GPT-NeoX order over a small random dataset: 90 samples requested, seq length 16."""
    rng = np.random.default_rng(5)
    prefix = tmp_path / "data" / "corpus_text_document"
    with IndexedDatasetWriter(prefix, np.uint16) as writer:
        for size in rng.integers(1, 40, size=60):
            writer.add_document(rng.integers(0, 50277, size=size).astype(np.uint16))
    return GPTNeoXSamples(prefix, tmp_path / "order", 90, SEQ, 1234)


@pytest.fixture
def fake_repo(tmp_path, order_samples):
    """A folder laid out like EleutherAI/pile-*-pythia-preshuffled: idx + byte shards."""
    write_preshuffled(order_samples, tmp_path / "made" / "document", 88)
    files = shard_preshuffled(tmp_path / "made" / "document", tmp_path / "repo", 1000)
    assert len(files.shards) > 2  # 88 x 17 x 2 bytes = 2992 -> shards 0..2
    return tmp_path / "repo"


def copying_download(repo_dir: Path, calls: list):
    def download(**kwargs):
        calls.append(kwargs)
        shutil.copytree(repo_dir, kwargs["local_dir"], dirs_exist_ok=True)
        return kwargs["local_dir"]

    return download


def test_fetch_merge_and_read_give_the_same_batches(tmp_path, fake_repo, order_samples):
    calls = []
    files = fetch_preshuffled(
        PRESHUFFLED_REPOS["standard"],
        tmp_path / "hub",
        revision="main",
        seq_length=SEQ,
        download=copying_download(fake_repo, calls),
    )
    assert calls[0]["repo_id"] == "EleutherAI/pile-standard-pythia-preshuffled"
    assert calls[0]["repo_type"] == "dataset" and calls[0]["revision"] == "main"
    assert [p.name for p in files.shards] == [f"document-{i:05d}-of-00002.bin" for i in range(3)]

    prefix = merge_preshuffled(
        reversed(files.shards), files.idx, seq_length=SEQ
    )  # any order of paths
    assert prefix == files.idx.with_suffix("")
    pre = PreshuffledSamples(prefix, seq_length=SEQ)
    assert len(pre) == 88
    for step in range(11):  # global batch 8: 88 samples
        np.testing.assert_array_equal(pre.batch(step, 8), order_samples.batch(step, 8))
        for rank in range(4):
            np.testing.assert_array_equal(
                pre.local_batch(step, 8, rank, 4), order_samples.local_batch(step, 8, rank, 4)
            )
    assert pre[3].dtype == np.int64 and pre[3].shape == (SEQ + 1,)
    assert fingerprint_steps(pre, 0, 11, 8) == fingerprint_steps(order_samples, 0, 11, 8)
    assert not [p for p in files.idx.parent.iterdir() if ".tmp" in p.name]


def test_default_download_is_huggingface_hub_snapshot_download(tmp_path, fake_repo, monkeypatch):
    import huggingface_hub

    calls = []
    monkeypatch.setattr(huggingface_hub, "snapshot_download", copying_download(fake_repo, calls))
    files = fetch_preshuffled("EleutherAI/pile-deduped-pythia-preshuffled", tmp_path / "h", None,
                              seq_length=SEQ)  # fmt: skip
    assert calls and calls[0]["revision"] is None
    assert calls[0]["allow_patterns"] == ["*.idx", "*.bin"]
    assert len(files.shards) == 3


def test_merge_to_another_prefix_copies_the_index(tmp_path, fake_repo, order_samples):
    files = find_preshuffled_files(fake_repo)
    prefix = merge_preshuffled(
        files.shards, files.idx, tmp_path / "merged" / "standard", seq_length=SEQ
    )
    assert Path(f"{prefix}.idx").read_bytes() == files.idx.read_bytes()
    made = Path(tmp_path / "made" / "document.bin").read_bytes()
    assert Path(f"{prefix}.bin").read_bytes() == made
    np.testing.assert_array_equal(
        PreshuffledSamples(prefix, SEQ).batch(2, 16), order_samples.batch(2, 16)
    )


def test_shard_hashes_verified(tmp_path, fake_repo):
    files = find_preshuffled_files(fake_repo)
    lines = [f"{p.name} {hashlib.sha256(p.read_bytes()).hexdigest()}" for p in files.shards]
    lines.append(f"{files.idx.name} {hashlib.sha256(files.idx.read_bytes()).hexdigest()}")
    listing = tmp_path / "shard_hashes.txt"
    listing.write_text("\n".join(lines) + "\n")
    hashes = parse_shard_hashes(listing)
    assert verify_preshuffled(files, hashes, seq_length=SEQ) == 88 * 17 * 2
    fetch_preshuffled("x/y", tmp_path / "ok", shard_hashes=listing, seq_length=SEQ,
                      download=copying_download(fake_repo, []))  # fmt: skip

    corrupted = dict(hashes, **{files.shards[1].name: "0" * 64})
    with pytest.raises(PreshuffledError, match=files.shards[1].name + ": sha256"):
        verify_preshuffled(files, corrupted, seq_length=SEQ)
    with pytest.raises(PreshuffledError, match=r"document\.idx: sha256"):
        verify_preshuffled(files, dict(hashes, **{"document.idx": "1" * 64}), seq_length=SEQ)
    del hashes[files.shards[2].name]
    with pytest.raises(PreshuffledError, match=files.shards[2].name + ": no sha256"):
        verify_preshuffled(files, hashes, seq_length=SEQ)


def test_parse_shard_hashes_both_layouts_and_bad_lines(tmp_path):
    digest = "ab" * 32
    listing = tmp_path / "h.txt"
    listing.write_text(f"a-00000-of-00001.bin {digest}\n\n{digest.upper()}  *dir/b.bin\n")
    assert parse_shard_hashes(listing) == {"a-00000-of-00001.bin": digest, "b.bin": digest}
    listing.write_text(f"a.bin {digest}\nb.bin not-a-hash\n")
    with pytest.raises(PreshuffledError, match=r"h\.txt:2"):
        parse_shard_hashes(listing)


def test_pythia_shard_hashes_file_parses(anchor):
    path = anchor("utils/shard_hashes.txt")
    hashes = parse_shard_hashes(path)
    assert len(hashes) == 84  # 83 shards and the index
    assert "pile_0.87_deduped_text_document-00082-of-00082.bin" in hashes
    assert "pile_0.87_deduped_text_document.idx" in hashes


def test_bad_shards_are_named(tmp_path, fake_repo):
    repo = tmp_path / "broken"
    shutil.copytree(fake_repo, repo)
    files = find_preshuffled_files(repo)
    with open(files.shards[1], "r+b") as fh:
        fh.truncate(999)
    with pytest.raises(PreshuffledError, match="document-00001-of-00002.bin: 999 bytes"):
        verify_preshuffled(files, seq_length=SEQ)
    with pytest.raises(PreshuffledError, match="document-00001"):
        merge_preshuffled(files.shards, files.idx, seq_length=SEQ)
    assert not list(repo.glob("*document.bin*"))  # nothing that looks merged

    with open(files.shards[2], "ab") as fh:  # last shard: total now wrong
        fh.write(b"\0")
    with pytest.raises(PreshuffledError):
        verify_preshuffled(PreshuffledFiles(files.idx, [files.shards[0], files.shards[2]]),
                           seq_length=SEQ)  # fmt: skip
    files.shards[1].unlink()
    with pytest.raises(PreshuffledError, match="missing shards document-00001-of-00002.bin"):
        find_preshuffled_files(repo)


def test_items_of_the_wrong_length_are_rejected(tmp_path, fake_repo):
    files = find_preshuffled_files(fake_repo)
    with pytest.raises(PreshuffledError, match=r"document\.idx: item 0 has 17 tokens.*2049"):
        verify_preshuffled(files)  # default seq_length 2048
    prefix = tmp_path / "odd"
    with IndexedDatasetWriter(prefix, np.uint16) as writer:
        writer.add_document(np.arange(17, dtype=np.uint16))
        writer.add_document(np.arange(5, dtype=np.uint16))
    with pytest.raises(PreshuffledError, match=r"odd\.idx: item 1 has 5 tokens"):
        PreshuffledSamples(prefix, SEQ)


def test_missing_index_is_named(tmp_path):
    (tmp_path / "document-00000-of-00000.bin").write_bytes(b"")
    with pytest.raises(PreshuffledError, match="expected one document.idx"):
        find_preshuffled_files(tmp_path)
