"""Tests for pythia_suite.data.indexed: the Megatron mmap indexed dataset layout."""

from __future__ import annotations

import struct
import warnings

import numpy as np
import pytest

from pythia_suite.data.indexed import (
    HEADER_SIZE,
    MAGIC,
    IndexedDataset,
    IndexedDatasetWriter,
    IndexFormatError,
    best_dtype,
)


def _docs(n=50, seed=0, high=50277):
    rng = np.random.default_rng(seed)
    return [rng.integers(0, high, size=rng.integers(0, 300)) for _ in range(n)]


def _write(prefix, docs, dtype=np.uint16):
    with IndexedDatasetWriter(prefix, dtype) as writer:
        for doc in docs:
            writer.add_document(doc)
    return prefix


def test_round_trip_and_exact_layout(tmp_path):
    docs = [np.array([5, 6, 7]), np.array([], dtype=np.int64), np.array([65535, 0])]
    prefix = _write(tmp_path / "ds", docs)
    idx = (tmp_path / "ds.idx").read_bytes()
    # Header exactly as documented for GPT-NeoX v1.0: magic, version 1, code 8, N, D.
    assert idx[:9] == MAGIC
    assert struct.unpack("<QBQQ", idx[9:HEADER_SIZE]) == (1, 8, 3, 4)
    body = np.frombuffer(idx[HEADER_SIZE:], dtype=np.uint8)
    assert np.frombuffer(body[:12], "<i4").tolist() == [3, 0, 2]
    assert np.frombuffer(body[12:36], "<i8").tolist() == [0, 6, 6]
    assert np.frombuffer(body[36:], "<i8").tolist() == [0, 1, 2, 3]
    assert (tmp_path / "ds.bin").read_bytes() == np.array([5, 6, 7, 65535, 0], "<u2").tobytes()

    ds = IndexedDataset(prefix)
    assert len(ds) == 3 and ds.dtype == np.uint16 and ds.num_tokens == 5
    assert [ds[i].tolist() for i in range(3)] == [[5, 6, 7], [], [65535, 0]]
    assert ds[-1].tolist() == [65535, 0]
    assert ds.get(0, 1).tolist() == [6, 7] and ds.get(0, 1, 1).tolist() == [6]
    assert ds.sizes.tolist() == [3, 0, 2] and ds.doc_idx.tolist() == [0, 1, 2, 3]
    with pytest.raises(IndexError):
        ds[3]
    with pytest.raises(IndexError):
        ds.get(0, 2, 5)


def test_arrays_outlive_the_dataset_object(tmp_path):
    prefix = _write(tmp_path / "ds", _docs())
    item = IndexedDataset(prefix)[3]  # the dataset object is garbage right away
    assert item.tolist() == _docs()[3].tolist()


def test_multi_item_documents_and_int32(tmp_path):
    with IndexedDatasetWriter(tmp_path / "ds", np.int32) as writer:
        writer.add_item([1, 2])
        writer.add_item([100_000])
        writer.end_document()
        writer.add_document([3])
    ds = IndexedDataset(tmp_path / "ds")
    assert ds.dtype == np.int32 and ds.doc_idx.tolist() == [0, 2, 3]
    assert [ds[i].tolist() for i in range(3)] == [[1, 2], [100_000], [3]]


def test_best_dtype():
    assert best_dtype(50277) == np.uint16 and best_dtype(65500) == np.int32


def test_nothing_visible_until_finalize_and_abort_on_error(tmp_path):
    writer = IndexedDatasetWriter(tmp_path / "ds")
    writer.add_document([1, 2, 3])
    assert not (tmp_path / "ds.bin").exists() and not (tmp_path / "ds.idx").exists()
    writer.finalize()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ds.bin", "ds.idx"]

    with pytest.raises(RuntimeError), IndexedDatasetWriter(tmp_path / "other") as writer:
        writer.add_document([1])
        raise RuntimeError("boom")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ds.bin", "ds.idx"]


@pytest.mark.parametrize(
    ("tokens", "message"),
    [
        (np.array([1, 70000]), "token id 70000 of item 0 does not fit dtype uint16"),
        (np.array([-1]), "token id -1"),
        (np.array([1.5]), "non-integer dtype float64"),
        (np.zeros((2, 2), dtype=np.int64), "must be 1-D"),
    ],
)
def test_writer_rejects_bad_tokens(tmp_path, tokens, message):
    with pytest.raises(ValueError, match=message), IndexedDatasetWriter(tmp_path / "ds") as w:
        w.add_document(tokens)
    assert list(tmp_path.iterdir()) == []


def test_writer_rejects_float_dtype(tmp_path):
    with pytest.raises(ValueError, match="unsupported token dtype float32"):
        IndexedDatasetWriter(tmp_path / "ds", np.float32)


def test_unfinished_document_is_an_error(tmp_path):
    writer = IndexedDatasetWriter(tmp_path / "ds")
    writer.add_item([1])
    with pytest.raises(ValueError, match="after the last end_document"):
        writer.finalize()
    assert list(tmp_path.iterdir()) == []


def _corrupt(path, offset, data):
    raw = bytearray(path.read_bytes())
    raw[offset : offset + len(data)] = data
    path.write_bytes(bytes(raw))


@pytest.mark.parametrize(
    ("mutate", "file", "offset", "message"),
    [
        (lambda p: _corrupt(p.with_suffix(".idx"), 0, b"XX"), "idx", 0, "bad magic"),
        (lambda p: _corrupt(p.with_suffix(".idx"), 9, b"\x02"), "idx", 9, "version 2"),
        (lambda p: _corrupt(p.with_suffix(".idx"), 17, b"\x09"), "idx", 17, "dtype code 9"),
        (lambda p: _corrupt(p.with_suffix(".idx"), 17, b"\x06"), "idx", 17, "ambiguous"),
        (
            lambda p: p.with_suffix(".idx").write_bytes(p.with_suffix(".idx").read_bytes()[:-8]),
            "idx",
            None,
            "requires",
        ),
        (
            lambda p: p.with_suffix(".idx").write_bytes(p.with_suffix(".idx").read_bytes()[:20]),
            "idx",
            20,
            "header truncated",
        ),
        (
            lambda p: p.with_suffix(".bin").write_bytes(p.with_suffix(".bin").read_bytes()[:-2]),
            "bin",
            None,
            "describes",
        ),
        (
            lambda p: _corrupt(p.with_suffix(".idx"), HEADER_SIZE + 4 * 50 + 8, b"\x07"),
            "idx",
            HEADER_SIZE + 4 * 50 + 8,
            "pointer of item 1",
        ),
    ],
)
def test_reader_rejects_malformed_files(tmp_path, mutate, file, offset, message):
    prefix = _write(tmp_path / "ds", _docs())
    mutate(prefix)
    with pytest.raises(IndexFormatError, match=message) as info:
        IndexedDataset(prefix)
    assert info.value.path == str(tmp_path / f"ds.{file}")
    if offset is not None:
        assert info.value.offset == offset


def test_add_items_from_appends_datasets(tmp_path):
    a, b = _docs(30, seed=1), _docs(20, seed=2)
    _write(tmp_path / "a", a)
    _write(tmp_path / "b", b)
    with IndexedDatasetWriter(tmp_path / "m") as writer:
        writer.add_items_from(IndexedDataset(tmp_path / "a"), chunk_items=7)
        writer.add_items_from(IndexedDataset(tmp_path / "b"), chunk_items=7)
    _write(tmp_path / "direct", a + b)
    for ext in ("bin", "idx"):
        assert (tmp_path / f"m.{ext}").read_bytes() == (tmp_path / f"direct.{ext}").read_bytes()


@pytest.fixture(scope="module")
def megatron_indexed():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return pytest.importorskip(
            "megatron.core.datasets.indexed_dataset",
            reason="megatron-core not installed (pip install megatron-core==0.16.1 to cross-check)",
        )


@pytest.mark.parametrize("dtype", [np.uint16, np.int32])
def test_megatron_core_reads_our_files(tmp_path, megatron_indexed, dtype):
    docs = _docs()
    prefix = _write(tmp_path / "ds", docs, dtype)
    theirs = megatron_indexed.IndexedDataset(str(prefix))
    assert len(theirs) == len(docs)
    assert theirs.sequence_lengths.tolist() == [len(d) for d in docs]
    assert theirs.document_indices.tolist() == list(range(len(docs) + 1))
    for i, doc in enumerate(docs):
        item = theirs[i]
        assert item.dtype == dtype and item.tolist() == doc.tolist()
    assert theirs.get(5, 2, 3).tolist() == docs[5][2:5].tolist()


@pytest.mark.parametrize("dtype", [np.uint16, np.int32])
def test_we_read_megatron_core_files_byte_identically(tmp_path, megatron_indexed, dtype):
    import torch

    docs = _docs(seed=3)
    builder = megatron_indexed.IndexedDatasetBuilder(str(tmp_path / "theirs.bin"), dtype=dtype)
    for doc in docs:
        builder.add_item(torch.from_numpy(doc.astype(np.int64)))
        builder.end_document()
    builder.finalize(str(tmp_path / "theirs.idx"))
    ours = IndexedDataset(tmp_path / "theirs")
    assert ours.dtype == dtype and ours.doc_idx.tolist() == list(range(len(docs) + 1))
    assert [ours[i].tolist() for i in range(len(docs))] == [d.tolist() for d in docs]
    _write(tmp_path / "ours", docs, dtype)
    for ext in ("bin", "idx"):
        assert (tmp_path / f"ours.{ext}").read_bytes() == (tmp_path / f"theirs.{ext}").read_bytes()
