"""The data lens (pythia_suite.data.lens) against brute-force references on small orders."""

from __future__ import annotations

import collections

import numpy as np
import pytest

from pythia_suite.data import lens as data_lens
from pythia_suite.data.indexed import IndexedDatasetWriter
from pythia_suite.data.order import GPTNeoXSamples, compute_index_maps, total_samples


def _order(num_docs: int, epochs: int, seq_length: int, seed: int, empty_every: int = 0):
    """Sizes and GPT-NeoX index maps of a small synthetic dataset with exactly ``epochs``."""
    rng = np.random.RandomState(seed)
    sizes = rng.randint(1, 3 * seq_length, size=num_docs).astype(np.int32)
    if empty_every:
        sizes[::empty_every] = 0
        sizes[1] = max(sizes[1], 1)
    tokens = int(sizes.sum())
    num_samples = total_samples(tokens, seq_length, epochs - 1) + 1 if epochs > 1 else 1
    doc_idx, sample_idx, shuffle_idx = compute_index_maps(sizes, num_samples, seq_length, seed)
    assert len(doc_idx) == epochs * num_docs
    return sizes, doc_idx, sample_idx, shuffle_idx


def _brute_force(sizes, doc_idx, shuffle_idx, seq_length, batch, iters):
    """A plain loop over the training order, token by token, without sample_idx."""
    # stream token t belongs to doc_idx position owner[t]
    owner = []
    for p, d in enumerate(doc_idx):
        owner.extend([p] * int(sizes[d]))
    numbers, counts = {}, collections.Counter()
    new_first = collections.Counter()
    new_repeated = collections.Counter()
    repeated_tokens = collections.Counter()
    started = collections.Counter()
    for i in range(batch * iters):
        j = int(shuffle_idx[i])
        step = i // batch
        for t in range(j * seq_length, (j + 1) * seq_length + 1):
            p = owner[t]
            d = int(doc_idx[p])
            # a document starts where its first token is; a sample's last token is the next
            # sample's first (they share it), so it starts there, not here
            if (t == 0 or owner[t - 1] != p) and t < (j + 1) * seq_length:
                started[step] += 1
            if p not in numbers:
                counts[d] += 1
                numbers[p] = counts[d]
                (new_first if numbers[p] == 1 else new_repeated)[step] += 1
            if numbers[p] >= 2:
                repeated_tokens[step] += 1
    return numbers, new_first, new_repeated, repeated_tokens, started


@pytest.mark.parametrize("epochs", [1, 2, 5])
@pytest.mark.parametrize("chunk", [3, 1 << 19])
def test_first_seen_and_repeated_equal_a_brute_force_loop(epochs, chunk):
    seq_length, batch = 16, 4
    sizes, doc_idx, sample_idx, shuffle_idx = _order(30, epochs, seq_length, seed=epochs)
    iters = (len(shuffle_idx) - 1) // batch
    lens = data_lens.compute_lens(
        sizes,
        doc_idx,
        sample_idx,
        shuffle_idx,
        global_batch=batch,
        train_iters=iters,
        seq_length=seq_length,
        chunk_samples=chunk,
    )
    numbers, new_first, new_repeated, repeated_tokens, started = _brute_force(
        sizes, doc_idx, shuffle_idx, seq_length, batch, iters
    )
    expected = np.zeros(len(doc_idx), dtype=np.int64)
    for p, n in numbers.items():
        expected[p] = n
    np.testing.assert_array_equal(lens.occurrence_number, expected)
    col = {c: k for k, c in enumerate(data_lens.STEP_COLUMNS)}
    for name, ref in (
        ("first_occurrences", new_first),
        ("repeated_occurrences", new_repeated),
        ("repeated_tokens", repeated_tokens),
        ("documents_started", started),
    ):
        np.testing.assert_array_equal(
            lens.steps[:, col[name]], [ref[s] for s in range(iters)], err_msg=name
        )
    np.testing.assert_array_equal(lens.steps[:, col["tokens"]], batch * (seq_length + 1))
    first_repeated = min(new_repeated) if new_repeated else None
    assert lens.first_repeated_step == first_repeated
    if epochs == 1:
        assert first_repeated is None
    else:
        assert first_repeated is not None
    # the inverse index: every document's doc_idx positions, and the inverse of shuffle_idx
    for d in range(len(sizes)):
        assert sorted(lens.document_positions[d]) == list(np.flatnonzero(doc_idx == d))
    np.testing.assert_array_equal(lens.training_position[shuffle_idx], np.arange(len(shuffle_idx)))


def test_empty_documents_are_never_seen():
    seq_length, batch = 8, 2
    sizes, doc_idx, sample_idx, shuffle_idx = _order(40, 2, seq_length, seed=3, empty_every=5)
    iters = (len(shuffle_idx) - 1) // batch
    lens = data_lens.compute_lens(
        sizes, doc_idx, sample_idx, shuffle_idx,
        global_batch=batch, train_iters=iters, seq_length=seq_length,
    )  # fmt: skip
    numbers, *_ = _brute_force(sizes, doc_idx, shuffle_idx, seq_length, batch, iters)
    empty_positions = np.flatnonzero(sizes[doc_idx] == 0)
    assert lens.occurrence_number[empty_positions].max() == 0
    assert all(p not in numbers for p in empty_positions)


def test_pieces_are_the_tokens_gpt_neox_serves(tmp_path):
    """Step and document queries against GPTNeoXSamples, token by token."""
    seq_length, batch, seed = 16, 4, 7
    rng = np.random.RandomState(0)
    sizes = rng.randint(1, 60, size=25)
    prefix = tmp_path / "ds"
    with IndexedDatasetWriter(prefix, np.uint16) as writer:
        for n in sizes:
            writer.add_document(rng.randint(2, 1000, size=n))
    tokens = int(sizes.sum())
    num_samples = total_samples(tokens, seq_length, 2) + 1  # 3 epochs
    samples = GPTNeoXSamples(prefix, tmp_path / "order", num_samples, seq_length, seed)
    iters = len(samples) // batch
    order = [np.load(p, mmap_mode="r") for p in samples.paths]
    out = tmp_path / "lens"
    out.mkdir()
    data_lens.build_lens(
        sizes, samples.paths, out,
        global_batch=batch, train_iters=iters, seq_length=seq_length,
        meta={"seed": seed, "subsets": None, "checkpoint_steps": [0, 1, iters]},
    )  # fmt: skip
    lens = data_lens.load_lens(out)
    seen_steps = collections.defaultdict(set)
    for step in range(iters):
        view = data_lens.step_view(lens, step, sizes, *order)
        batch_tokens = samples.batch(step, batch)
        for row, sample in enumerate(view):
            rebuilt = np.concatenate(
                [
                    samples.dataset.get(p["document"])[p["begin"] : p["end"]]
                    for p in sample["pieces"]
                ]
            )
            np.testing.assert_array_equal(rebuilt, batch_tokens[row])
            for p in sample["pieces"]:
                seen_steps[p["document"]].add((step, row, p["begin"], p["end"]))
    for doc in range(len(sizes)):
        hits = data_lens.document_view(lens, doc, sizes, order[1])
        assert {(h["step"], h["row"], h["begin"], h["end"]) for h in hits} == seen_steps[doc]
    table = lens.meta["checkpoints"]
    assert [r["step"] for r in table] == [0, 1, iters]
    assert table[0]["tokens"] == 0 and table[-1]["tokens"] == iters * batch * (seq_length + 1)
    assert table[-1]["unique_documents"] == int((lens.document_first_step[:] >= 0).sum())


def test_split_at_end_of_document():
    parts = data_lens.split_at_end_of_document(np.array([5, 6, 0, 7, 0, 8, 9]))
    assert [(p["begin"], p["end"], p["ends_document"]) for p in parts] == [
        (0, 3, True),
        (3, 5, True),
        (5, 7, False),
    ]
