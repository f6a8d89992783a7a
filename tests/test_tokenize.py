"""Tests for pythia_suite.data.tokenize: tokenizer training, shard tokenization, merging."""

from __future__ import annotations

import json
import unicodedata
from pathlib import Path

import numpy as np
import pytest
import zstandard
from conftest import require_anchor
from tokenizers import Tokenizer, models

from pythia_suite.data import tokenize as tokenize_module
from pythia_suite.data.indexed import IndexedDataset, IndexedDatasetWriter, IndexFormatError
from pythia_suite.data.shards import DataFormatError
from pythia_suite.data.tokenize import (
    load_tokenizer,
    merge_datasets,
    tokenize_shard,
    train_tokenizer,
)

TEXTS = [
    "Hello world",
    "In the beginning God created the heaven and the earth.\n\nAnd the earth was without form.",
    "",  # dropped: encodes to no tokens
    "def f(x):\n    return x ** 2  # squares\n\n\tindented\ttabs   and   spaces\n",
    "Unicode: café, naïve, 日本語, emoji 🎉, combining e\u0301 (NFC-normalised)",
    "The quick brown fox jumps over the lazy dog. " * 40,
    "<|endoftext|> is just text here",
] + [f"Document number {i}: " + "lorem ipsum dolor sit amet " * (i % 17) for i in range(60)]


def _write_shard(path: Path, texts, compress=True) -> Path:
    data = "".join(
        json.dumps({"text": t, "meta": {"pile_set_name": "Test"}}) + "\n" for t in texts
    ).encode()
    path.write_bytes(zstandard.ZstdCompressor(level=3).compress(data) if compress else data)
    return path


@pytest.fixture(scope="module")
def tok20b() -> Path:
    return require_anchor("utils/20B_tokenizer.json")


@pytest.fixture(scope="module")
def small_tokenizer(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("tok")
    shard = _write_shard(tmp / "train.jsonl.zst", TEXTS * 3)
    return train_tokenizer([shard], 400, tmp / "tokenizer.json")


def _files(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir())


def test_20b_hello_world(tok20b):
    tokenizer = load_tokenizer(tok20b)
    assert tokenizer.encode("Hello world").ids == [12092, 1533]
    assert tokenizer.get_vocab_size() == 50277


def test_tokenize_shard_round_trips_with_20b(tmp_path, tok20b):
    shard = _write_shard(tmp_path / "00.jsonl.zst", TEXTS)
    stats = tokenize_shard(shard, tok20b, tmp_path / "out", progress=False, workers=1)
    kept = [t for t in TEXTS if t]
    assert stats["documents"] == len(kept) and stats["dropped"] == 1
    ds = IndexedDataset(tmp_path / "out")
    assert ds.dtype == np.uint16 and len(ds) == len(kept) and stats["tokens"] == ds.num_tokens
    assert ds.doc_idx.tolist() == list(range(len(kept) + 1))
    tokenizer = Tokenizer.from_file(str(tok20b))
    assert ds[0].tolist() == [12092, 1533, 0]
    for i, text in enumerate(kept):
        item = ds[i].tolist()
        assert item[-1] == 0 and (0 not in item[:-1] or "<|endoftext|>" in text)
        assert item[:-1] == tokenizer.encode(text).ids
        # The 20B tokenizer normalises to NFC, so compare against the NFC text.
        assert tokenizer.decode(item[:-1], skip_special_tokens=False) == unicodedata.normalize(
            "NFC", text
        )


def test_one_and_two_workers_write_identical_files(tmp_path, tok20b, monkeypatch):
    # Small chunks so that the two workers interleave many tasks.
    monkeypatch.setattr(tokenize_module, "CHUNK_CHARS", 500)
    shard = _write_shard(tmp_path / "00.jsonl.zst", TEXTS * 3)
    one = tokenize_shard(shard, tok20b, tmp_path / "w1", progress=False, workers=1)
    two = tokenize_shard(shard, tok20b, tmp_path / "w2", progress=True, workers=2)
    assert one["tokens"] == two["tokens"] and one["documents"] == two["documents"]
    for ext in ("bin", "idx"):
        assert (tmp_path / f"w1.{ext}").read_bytes() == (tmp_path / f"w2.{ext}").read_bytes()


def test_merge_equals_tokenizing_the_concatenation(tmp_path, tok20b):
    a, b, c = TEXTS[:20], TEXTS[20:45], TEXTS[45:]
    prefixes = []
    for name, texts in (("a", a), ("b", b), ("c", c)):
        shard = _write_shard(tmp_path / f"{name}.jsonl", texts, compress=False)
        tokenize_shard(shard, tok20b, tmp_path / name, progress=False, workers=1)
        prefixes.append(tmp_path / name)
    stats = merge_datasets(prefixes, tmp_path / "merged")
    whole = _write_shard(tmp_path / "whole.jsonl.zst", a + b + c)
    tokenize_shard(whole, tok20b, tmp_path / "whole", progress=False, workers=1)
    for ext in ("bin", "idx"):
        assert (tmp_path / f"merged.{ext}").read_bytes() == (tmp_path / f"whole.{ext}").read_bytes()
    assert stats["documents"] == len(IndexedDataset(tmp_path / "whole"))


def test_train_tokenizer_is_deterministic_and_neox_shaped(tmp_path, small_tokenizer):
    shard = _write_shard(tmp_path / "train.jsonl.zst", TEXTS * 3)
    again = train_tokenizer([shard], 400, tmp_path / "again.json")
    assert again.read_bytes() == small_tokenizer.read_bytes()
    tokenizer = load_tokenizer(small_tokenizer)
    assert tokenizer.get_vocab_size() == 400
    assert tokenizer.token_to_id("<|endoftext|>") == 0
    assert tokenizer.token_to_id("<|padding|>") == 1
    config = json.loads(small_tokenizer.read_text())
    assert config["pre_tokenizer"]["type"] == "ByteLevel"
    assert config["pre_tokenizer"]["add_prefix_space"] is False
    assert config["decoder"]["type"] == "ByteLevel"
    assert config["normalizer"]["type"] == "NFC"
    text = "Any bytes at all: \x00 ü 🎉 and words never seen"  # byte-level: no unknowns
    assert tokenizer.decode(tokenizer.encode(text).ids) == text
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []


def test_train_tokenizer_rejects_tiny_vocab(tmp_path):
    shard = _write_shard(tmp_path / "t.jsonl", ["a b"], compress=False)
    with pytest.raises(ValueError, match="vocab_size 100"):
        train_tokenizer([shard], 100, tmp_path / "t.json")


def test_tokenize_with_trained_tokenizer(tmp_path, small_tokenizer):
    shard = _write_shard(tmp_path / "00.jsonl.zst", TEXTS)
    tokenize_shard(shard, small_tokenizer, tmp_path / "out", progress=False, workers=1)
    ds = IndexedDataset(tmp_path / "out")
    tokenizer = Tokenizer.from_file(str(small_tokenizer))
    decoded = [
        tokenizer.decode(ds[i].tolist()[:-1], skip_special_tokens=False) for i in range(len(ds))
    ]
    assert decoded == [unicodedata.normalize("NFC", t) for t in TEXTS if t]


@pytest.mark.parametrize("workers", [1, 2])
@pytest.mark.parametrize(
    ("bad_line", "message"),
    [("{broken", "line 11: not valid JSON"), ('{"meta": {}}', "line 11: document has no string")],
)
def test_bad_shard_leaves_no_output(tmp_path, small_tokenizer, workers, bad_line, message):
    shard = tmp_path / "bad.jsonl"
    _write_shard(shard, TEXTS[:10], compress=False)
    with open(shard, "a") as fh:
        fh.write(bad_line + "\n")
    (tmp_path / "out").mkdir()
    with pytest.raises(DataFormatError, match=message) as info:
        tokenize_shard(shard, small_tokenizer, tmp_path / "out" / "x", workers=workers)
    assert info.value.path == str(shard)
    assert _files(tmp_path / "out") == []


def test_truncated_shard_leaves_no_output(tmp_path, small_tokenizer):
    rng = np.random.default_rng(0)
    texts = ["".join(rng.choice(list("abcdefghij klmnop"), 400)) for _ in range(3000)]
    data = _write_shard(tmp_path / "full.jsonl.zst", texts).read_bytes()
    shard = tmp_path / "cut.jsonl.zst"
    shard.write_bytes(data[: len(data) * 2 // 3])
    (tmp_path / "out").mkdir()
    with pytest.raises(DataFormatError, match="truncated zstd stream"):
        tokenize_shard(shard, small_tokenizer, tmp_path / "out" / "x", workers=1)
    assert _files(tmp_path / "out") == []


def test_tokenizer_without_eod_zero_is_rejected(tmp_path, small_tokenizer):
    swapped = Tokenizer(models.BPE())
    swapped.add_special_tokens(["<|padding|>", "<|endoftext|>"])  # EOD gets id 1
    bad = tmp_path / "bad.json"
    swapped.save(str(bad))
    with pytest.raises(ValueError, match=r"bad.json: <\|endoftext\|> has id 1, expected 0"):
        load_tokenizer(bad)
    (tmp_path / "junk.json").write_text("{not a tokenizer")
    with pytest.raises(ValueError, match="junk.json: not a valid tokenizer"):
        load_tokenizer(tmp_path / "junk.json")
    with pytest.raises(FileNotFoundError, match="missing.json"):
        load_tokenizer(tmp_path / "missing.json")


def test_merge_rejects_mixed_dtypes_and_truncated_inputs(tmp_path):
    for name, dtype in (("u16", np.uint16), ("i32", np.int32), ("u16b", np.uint16)):
        with IndexedDatasetWriter(tmp_path / name, dtype) as writer:
            writer.add_document([1, 2, 3, 0])
    with pytest.raises(ValueError, match="different dtypes"):
        merge_datasets([tmp_path / "u16", tmp_path / "i32"], tmp_path / "m")
    with open(tmp_path / "u16b.bin", "r+b") as fh:
        fh.truncate(4)
    with pytest.raises(IndexFormatError, match="u16b.bin"):
        merge_datasets([tmp_path / "u16", tmp_path / "u16b"], tmp_path / "m")
    with pytest.raises(ValueError, match="no input"):
        merge_datasets([], tmp_path / "m")
    assert not any(p.name.startswith("m.") for p in tmp_path.iterdir())
