"""GPT-NeoX v1.0 sample order: exact index maps, cache, batches, fingerprints."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest

from pythia_suite.data import order
from pythia_suite.data.indexed import IndexedDatasetWriter, IndexFormatError
from pythia_suite.data.order import (
    GPTNeoXSamples,
    build_index_maps,
    compute_index_maps,
    fingerprint,
    fingerprint_steps,
    index_map_paths,
)

# ----------------------------------------------------------------------------------------------
# Oracle: GPT-NeoX v1.0's megatron/data/gpt2_dataset.py, ported line by line (pure Python loops,
# including the Python twin of the C++ build_sample_idx that ships commented-out in that file).
# ----------------------------------------------------------------------------------------------


def neox_num_epochs(tokens_per_epoch, seq_length, num_samples):
    num_epochs = 0
    total_tokens = 0
    while True:
        num_epochs += 1
        total_tokens += tokens_per_epoch
        if ((total_tokens - 1) // seq_length) >= num_samples:
            return num_epochs


def neox_build_doc_idx(documents, num_epochs, np_rng):
    doc_idx = np.mgrid[0:num_epochs, 0 : len(documents)][1]
    doc_idx[:] = documents
    doc_idx = doc_idx.reshape(-1)
    doc_idx = doc_idx.astype(np.int32)
    np_rng.shuffle(doc_idx)
    return doc_idx


def neox_build_sample_idx(sizes, doc_idx, seq_length, num_epochs, tokens_per_epoch):
    num_samples = (num_epochs * tokens_per_epoch - 1) // seq_length
    sample_idx = np.zeros([num_samples + 1, 2], dtype=np.int32)  # C++ helper: int32
    sample_index = 0
    doc_idx_index = 0
    doc_offset = 0
    sample_idx[sample_index][0] = doc_idx_index
    sample_idx[sample_index][1] = doc_offset
    sample_index += 1
    while sample_index <= num_samples:
        remaining_seq_length = seq_length + 1
        while remaining_seq_length != 0:
            doc_id = doc_idx[doc_idx_index]
            doc_length = sizes[doc_id] - doc_offset
            remaining_seq_length -= doc_length
            if remaining_seq_length <= 0:
                doc_offset += remaining_seq_length + doc_length - 1
                remaining_seq_length = 0
            else:
                doc_idx_index += 1
                doc_offset = 0
        sample_idx[sample_index][0] = doc_idx_index
        sample_idx[sample_index][1] = doc_offset
        sample_index += 1
    return sample_idx


def neox_build_shuffle_idx(size, np_rng):
    dtype_ = np.uint32
    if size >= (np.iinfo(np.uint32).max - 1):
        dtype_ = np.int64
    shuffle_idx = np.arange(start=0, stop=size, step=1, dtype=dtype_)
    np_rng.shuffle(shuffle_idx)
    return shuffle_idx


def neox_index_maps(sizes, num_samples, seq_length, seed):
    documents = np.arange(0, len(sizes), 1, dtype=np.int32)
    tokens_per_epoch = np.sum(sizes[documents])
    num_epochs = neox_num_epochs(tokens_per_epoch, seq_length, num_samples)
    np_rng = np.random.RandomState(seed=seed)
    doc_idx = neox_build_doc_idx(documents, num_epochs, np_rng)
    sample_idx = neox_build_sample_idx(sizes, doc_idx, seq_length, num_epochs, tokens_per_epoch)
    shuffle_idx = neox_build_shuffle_idx(sample_idx.shape[0] - 1, np_rng)
    return doc_idx, sample_idx, shuffle_idx


def neox_getitem(documents, doc_idx, sample_idx, shuffle_idx, idx):
    """GPT2Dataset.__getitem__ over a list of token arrays."""
    idx = shuffle_idx[idx]
    doc_index_f, offset_f = sample_idx[idx]
    doc_index_l, offset_l = sample_idx[idx + 1]
    if doc_index_f == doc_index_l:
        sample = documents[doc_idx[doc_index_f]][offset_f : offset_l + 1]
    else:
        parts = [documents[doc_idx[doc_index_f]][offset_f:]]
        parts += [documents[doc_idx[i]] for i in range(doc_index_f + 1, doc_index_l)]
        parts.append(documents[doc_idx[doc_index_l]][: offset_l + 1])
        sample = np.concatenate(parts)
    return np.array(sample, dtype=np.int64)


# ----------------------------------------------------------------------------------------------
# Fixtures: Megatron mmap datasets written by pythia_suite.data.indexed.
# ----------------------------------------------------------------------------------------------


def write_megatron(prefix: Path, documents: list[np.ndarray], dtype=np.uint16) -> Path:
    with IndexedDatasetWriter(prefix, dtype) as writer:
        for doc in documents:
            writer.add_document(np.asarray(doc, dtype=dtype))
    return prefix


def random_documents(rng: np.random.Generator, n_docs: int, max_len: int, zero_frac=0.0):
    sizes = rng.integers(1, max_len + 1, size=n_docs)
    sizes[rng.random(n_docs) < zero_frac] = 0
    return [rng.integers(0, 50000, size=s).astype(np.uint16) for s in sizes]


@pytest.fixture
def small_dataset(tmp_path):
    rng = np.random.default_rng(7)
    docs = random_documents(rng, 40, 30)
    return write_megatron(tmp_path / "data_text_document", docs), docs


# ----------------------------------------------------------------------------------------------
# Exactness against the oracle
# ----------------------------------------------------------------------------------------------


def assert_maps_equal(ours, theirs):
    for name, a, b in zip(("doc_idx", "sample_idx", "shuffle_idx"), ours, theirs, strict=True):
        assert a.dtype == b.dtype, name
        assert a.shape == b.shape, name
        np.testing.assert_array_equal(a, b, err_msg=name)


@pytest.mark.parametrize("case", range(60))
def test_index_maps_identical_to_gpt_neox(case):
    rng = np.random.default_rng(case)
    n_docs = int(rng.integers(1, 60))
    max_len = int(rng.choice([1, 3, 20, 200]))
    sizes = rng.integers(1, max_len + 1, size=n_docs).astype(np.int32)
    if case % 3 == 0:  # empty documents (GPT-NeoX skips them without reading)
        sizes[rng.random(n_docs) < 0.3] = 0
        sizes[0] = max(int(sizes[0]), 1) if sizes.sum() == 0 else sizes[0]
    seq_length = int(rng.integers(2, 40))
    tokens = int(sizes.sum())
    epochs_wanted = int(rng.integers(1, 6))  # 1..5 epochs
    num_samples = max(0, (epochs_wanted * tokens - 1) // seq_length - int(rng.integers(0, 3)))
    seed = int(rng.integers(0, 2**31))
    theirs = neox_index_maps(sizes, num_samples, seq_length, seed)
    ours = compute_index_maps(sizes, num_samples, seq_length, seed)
    assert_maps_equal(ours, theirs)


def test_index_maps_identical_in_chunked_path(monkeypatch):
    """Chunk boundaries of the vectorised builder fall everywhere, including inside samples."""
    monkeypatch.setattr(order, "_SAMPLE_IDX_CHUNK", 7)
    for case in range(10):
        rng = np.random.default_rng(100 + case)
        sizes = rng.integers(0, 25, size=int(rng.integers(5, 80))).astype(np.int32)
        sizes[0] += 1
        args = (sizes, int(rng.integers(1, 200)), int(rng.integers(2, 30)), case)
        assert_maps_equal(compute_index_maps(*args), neox_index_maps(*args))


def test_mostly_empty_documents_and_empty_first_document():
    # sample_idx[0] is (0, 0) even when doc_idx[0] is an empty document; later rows skip them.
    sizes = np.array([0, 0, 0, 3, 0, 0, 9, 0, 1, 0, 0, 0, 4, 0], dtype=np.int32)
    seen_empty_first = False
    for seed in range(40):
        ours = compute_index_maps(sizes, 9, 2, seed)
        assert_maps_equal(ours, neox_index_maps(sizes, 9, 2, seed))
        seen_empty_first |= sizes[ours[0][0]] == 0
    assert seen_empty_first


def test_sample_ending_exactly_on_document_boundary():
    # Documents of 5 tokens and samples of 4+1 tokens: sample 0 ends on the last token of doc 0,
    # which is shared with sample 1 (offset 4 of the same document, not offset 0 of the next).
    sizes = np.full(6, 5, dtype=np.int32)
    for seed in range(5):
        ours = compute_index_maps(sizes, 7, 4, seed)
        assert_maps_equal(ours, neox_index_maps(sizes, 7, 4, seed))
        assert ours[1][1].tolist() == [0, 4]


def test_num_epochs_closed_form_matches_loop():
    for tokens in (1, 2, 7, 100, 2049, 10**9, 3 * 10**11):
        for seq_length in (2, 3, 2048):
            for n in (0, 1, 5, 1000, 147_164_160):
                if n * seq_length // tokens > 10_000:  # the oracle loops once per epoch
                    continue
                assert order.num_epochs(tokens, seq_length, n) == neox_num_epochs(
                    tokens, seq_length, n
                )


def test_epochs_grow_when_more_samples_are_requested(small_dataset):
    prefix, docs = small_dataset
    tokens = sum(len(d) for d in docs)
    seq_length = 8
    one_epoch = (tokens - 1) // seq_length
    for wanted_epochs, num_samples in ((1, one_epoch), (2, one_epoch + 1), (4, 3 * one_epoch + 5)):
        assert order.num_epochs(tokens, seq_length, num_samples) == wanted_epochs
        doc_idx, sample_idx, shuffle_idx = compute_index_maps(
            np.array([len(d) for d in docs]), num_samples, seq_length, 1
        )
        assert len(doc_idx) == wanted_epochs * len(docs)
        assert len(shuffle_idx) == (wanted_epochs * tokens - 1) // seq_length >= num_samples
        assert np.bincount(doc_idx).tolist() == [wanted_epochs] * len(docs)


def test_pythia_scale_numbers():
    # 143000 iterations x 1024 x 1.005, as GPT-NeoX requests them
    assert int(np.ceil(143000 * 1024 * 1.005)) == 147_164_160
    assert order.num_epochs(300_000_000_000, 2048, 147_164_160) == 2


# ----------------------------------------------------------------------------------------------
# Cache files
# ----------------------------------------------------------------------------------------------


def test_cache_names_and_contents(small_dataset, tmp_path):
    prefix, docs = small_dataset
    paths = build_index_maps(prefix, tmp_path / "order", 30, 16, 1234)
    assert [p.name for p in paths] == [
        f"data_text_document_train_0_indexmap_30ns_16sl_1234s_{k}_idx.npy"
        for k in ("doc", "sample", "shuffle")
    ]
    assert paths == index_map_paths(prefix, tmp_path / "order", 30, 16, 1234)
    sizes = np.array([len(d) for d in docs], dtype=np.int32)
    theirs = neox_index_maps(sizes, 30, 16, 1234)
    assert_maps_equal([np.load(p) for p in paths], theirs)
    assert not [p for p in (tmp_path / "order").iterdir() if p not in paths]  # no temp files left
    named = build_index_maps(prefix, tmp_path / "order", 30, 16, 1234, name="train")
    assert named.doc_idx.name.startswith("data_text_document_train_indexmap_30ns")


def test_valid_cache_is_reused(small_dataset, tmp_path):
    prefix, _ = small_dataset
    paths = build_index_maps(prefix, tmp_path, 30, 16, 3)
    stamps = [p.stat().st_mtime_ns for p in paths]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert build_index_maps(prefix, tmp_path, 30, 16, 3) == paths
    assert [p.stat().st_mtime_ns for p in paths] == stamps


@pytest.mark.parametrize("which", [0, 1, 2])
def test_truncated_cache_is_rebuilt_with_a_warning_naming_it(small_dataset, tmp_path, which):
    prefix, _ = small_dataset
    paths = build_index_maps(prefix, tmp_path, 30, 16, 3)
    good = [np.load(p) for p in paths]
    data = paths[which].read_bytes()
    paths[which].write_bytes(data[: len(data) - 6])
    with pytest.warns(UserWarning, match=paths[which].name):
        build_index_maps(prefix, tmp_path, 30, 16, 3)
    assert_maps_equal([np.load(p) for p in paths], good)


def test_cache_for_another_dataset_is_rebuilt(tmp_path):
    rng = np.random.default_rng(3)
    prefix = write_megatron(tmp_path / "d", random_documents(rng, 20, 30))
    build_index_maps(prefix, tmp_path / "o", 10, 8, 1)
    write_megatron(tmp_path / "d", random_documents(rng, 25, 30))  # same name, other data
    with pytest.warns(UserWarning, match="expected int32"):
        paths = build_index_maps(prefix, tmp_path / "o", 10, 8, 1)
    assert len(np.load(paths.doc_idx)) % 25 == 0


def test_bad_dataset_errors_name_the_file(tmp_path):
    (tmp_path / "x.idx").write_bytes(b"NOTANIDX" + bytes(40))
    with pytest.raises(IndexFormatError, match=r"x\.idx.*magic"):
        build_index_maps(tmp_path / "x", tmp_path, 10, 8, 1)
    with pytest.raises(FileNotFoundError, match=r"missing\.idx"):
        build_index_maps(tmp_path / "missing", tmp_path, 10, 8, 1)
    prefix = write_megatron(tmp_path / "short", [np.arange(10), np.arange(5)])
    Path(f"{prefix}.bin").write_bytes(b"\0\0")
    with pytest.raises(IndexFormatError, match=r"short\.bin"):
        build_index_maps(prefix, tmp_path, 10, 8, 1)
    empty = write_megatron(tmp_path / "empty", [np.arange(0), np.arange(0)])
    with pytest.raises(order.IndexMapError, match=r"empty\.idx.*no tokens"):
        build_index_maps(empty, tmp_path, 10, 8, 1)
    assert not list(tmp_path.glob("*indexmap*"))


# ----------------------------------------------------------------------------------------------
# Samples and batches
# ----------------------------------------------------------------------------------------------


def test_samples_match_gpt2dataset_getitem(small_dataset, tmp_path):
    prefix, docs = small_dataset
    samples = GPTNeoXSamples(prefix, tmp_path / "o", 50, 16, 1234)
    maps = neox_index_maps(np.array([len(d) for d in docs], dtype=np.int32), 50, 16, 1234)
    assert len(samples) == min(len(maps[2]) - 1, len(maps[1]) - 1)
    assert len(samples) >= 50
    for i in range(len(samples)):
        got = samples[i]
        assert got.dtype == np.int64 and got.shape == (17,)
        np.testing.assert_array_equal(got, neox_getitem(docs, *maps, i))
    np.testing.assert_array_equal(samples[-1], samples[len(samples) - 1])
    with pytest.raises(IndexError):
        samples[len(samples)]


def test_samples_concatenate_to_the_shuffled_stream(tmp_path):
    """Unshuffled, consecutive samples share exactly one token and cover every token once."""
    rng = np.random.default_rng(11)
    docs = random_documents(rng, 30, 12, zero_frac=0.2)
    docs[0] = np.arange(5, dtype=np.uint16)
    prefix = write_megatron(tmp_path / "d", docs)
    samples = GPTNeoXSamples(prefix, tmp_path, 20, 6, 5)
    inverse = np.argsort(np.asarray(samples.shuffle_idx))
    stream = np.concatenate([docs[d] for d in samples.doc_idx]).astype(np.int64)
    for j in range(len(inverse)):
        if inverse[j] < len(samples):  # GPT-NeoX never serves the last shuffled sample
            np.testing.assert_array_equal(samples[int(inverse[j])], stream[j * 6 : j * 6 + 7])


def test_batch_is_consecutive_global_samples(small_dataset, tmp_path):
    prefix, _ = small_dataset
    samples = GPTNeoXSamples(prefix, tmp_path, 60, 8, 9)
    batch = samples.batch(3, 4)
    assert batch.shape == (4, 9) and batch.dtype == np.int64
    np.testing.assert_array_equal(batch, np.stack([samples[i] for i in range(12, 16)]))
    with pytest.raises(IndexError):
        samples.batch(len(samples), 4)


@pytest.mark.parametrize("world_size,grad_accum", [(1, 1), (2, 1), (4, 2), (8, 1), (1, 8), (2, 4)])
def test_batch_identical_for_any_world_size_split(small_dataset, tmp_path, world_size, grad_accum):
    prefix, _ = small_dataset
    samples = GPTNeoXSamples(prefix, tmp_path, 60, 8, 9)
    step, global_batch = 2, 8
    pieces = [
        samples.local_batch(step, global_batch, rank, world_size, micro, grad_accum)
        for micro in range(grad_accum)
        for rank in range(world_size)
    ]
    np.testing.assert_array_equal(np.concatenate(pieces), samples.batch(step, global_batch))
    with pytest.raises(ValueError):
        samples.local_batch(step, 6, 0, 4)


# ----------------------------------------------------------------------------------------------
# Fingerprints
# ----------------------------------------------------------------------------------------------


def test_fingerprint_is_sha256_of_little_endian_int64():
    import hashlib

    tokens = np.array([[0, 1, 50276], [65535, 7, 2]], dtype=np.uint16)
    expected = hashlib.sha256(np.array([0, 1, 50276, 65535, 7, 2], dtype="<i8").tobytes())
    assert fingerprint(tokens) == expected.hexdigest()
    assert fingerprint(tokens.astype(np.int64)) == fingerprint(tokens.astype(">i4"))
    assert fingerprint(tokens) != fingerprint(tokens[::-1])
    assert fingerprint([tokens[0], tokens[1]]) == fingerprint(tokens)
    with pytest.raises(TypeError):
        fingerprint(np.zeros(3, dtype=np.float32))


def test_fingerprint_steps_stable_and_streaming(small_dataset, tmp_path):
    prefix, _ = small_dataset
    a = GPTNeoXSamples(prefix, tmp_path / "a", 60, 8, 9)
    b = GPTNeoXSamples(prefix, tmp_path / "b", 60, 8, 9)  # rebuilt from scratch elsewhere
    c = GPTNeoXSamples(prefix, tmp_path / "c", 60, 8, 10)  # another seed
    fp = fingerprint_steps(a, 1, 5, 4)
    assert fp == fingerprint_steps(b, 1, 5, 4)
    assert fp == fingerprint(np.concatenate([a.batch(s, 4) for s in range(1, 5)]))
    assert fp != fingerprint_steps(c, 1, 5, 4)
    assert fp != fingerprint_steps(a, 1, 4, 4)
    assert fingerprint_steps(a, 3, 3, 4) == fingerprint(np.zeros(0, dtype=np.int64))
