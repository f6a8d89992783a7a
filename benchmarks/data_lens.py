"""Time and memory of the data lens at (a fraction of) Pile scale, and its repetition figures.

Two synthetic shapes, as ``benchmarks/index_maps.py`` builds them (document sizes geometric with
mean ~1581 tokens, seeded; seq length 2048, global batch 1024, 143,000 steps, GPT-NeoX v1.0
index maps with seed 1234 built by ``pythia_suite.data.order.build_index_maps``):

* ``standard``: 210M documents, ~332B tokens, 147,164,160 samples requested: 1 epoch in
  ``doc_idx``, 146,432,000 samples read.
* ``deduped``: ~207B tokens. Its document count is in the published ``.idx`` header, which
  cannot be fetched here: assumed 131M (the standard mean document length). 2 epochs in
  ``doc_idx``, ~72% of the samples read.

``--scale`` multiplies documents, tokens, samples and steps (the checkpoint steps 1,000, 13,000
and 143,000 become the same fractions of training). Each stage runs in its own subprocess:
``order`` (the index maps, not the lens: for scale), ``lens`` (the whole lens of one order:
walk, inverse shuffle, document positions, write), ``query`` (memory-mapped step and document
queries, 5 random ones each, the page cache as the lens build left it). Two memory figures per
stage: peak RSS (``getrusage``; it also counts the page cache mapped from the memory-mapped
files, and the parent's peak through execve) and peak anonymous RSS (``RssAnon`` sampled every
50 ms: the memory the stage itself needs). Wall times on this shared 2-core machine depend on
the load; the lens stage also reports its CPU time.

For the deduped shape it prints the first repeated step and the share of tokens from repeated
documents at steps 1,000, 13,000 and 143,000 beside a closed form for a uniform shuffle: a piece
read at training fraction ``t`` of all samples is repeated when one of the document's other
``E - 1`` occurrences came earlier, probability ``1 - (1 - t)^(E-1)``; averaged over ``t`` in
``[0, x]``, the share at fraction ``x`` is ``1 - (1 - (1 - x)^E) / (E x)`` (``x / 2`` for two
epochs). The first repeat: documents with two occurrences in the first fraction ``x`` are about
Poisson with mean ``N C(E, 2) x^2``, so the expected first repeated sample is
``S / 2 * sqrt(pi / (N C(E, 2)))``. (Documents spanning several samples make both approximate.)

``--idx PATH``: the same at full scale on a real dataset's document sizes (its ``.idx`` alone,
e.g. the deduped Pile's ``document.idx`` from ``EleutherAI/pythia_deduped_pile_idxmaps``):
Pythia's exact first repeated step and repeated shares for data seed 1234.

``--mini``: the miniature corpus (data/mini-pile) under ``config/mini-epochs.yaml`` (16,000
steps, several epochs; no training needed): tokenizer, tokenized dataset, the default-seed order
and its lens, then the first repeated step and the repeated share at each checkpoint beside an
independent brute force (a plain Python loop over the training order, token by token, without
``sample_idx``).

Usage: ``python benchmarks/data_lens.py [--scale 0.02] [--shape standard|deduped|both]
[--keep DIR]`` or ``python benchmarks/data_lens.py --mini [--keep DIR]``
"""

from __future__ import annotations

import argparse
import json
import math
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

SHAPES = {
    "standard": {"docs": 210_000_000, "tokens": 332_000_000_000},
    "deduped": {"docs": 131_000_000, "tokens": 207_000_000_000},
}
REQUESTED = 147_164_160  # ceil(143000 x 1024 x 1.005)
STEPS = 143_000
BATCH = 1024
SEQ_LENGTH = 2048
SEED = 1234
FIGURE_STEPS = (1_000, 13_000, 143_000)


def make_sizes(path: Path, docs: int, tokens: int) -> int:
    """Synthetic int32 document sizes (.npy, seeded); returns the token count."""
    rng = np.random.RandomState(0)
    sizes = np.lib.format.open_memmap(path, mode="w+", dtype=np.int32, shape=(docs,))
    for start in range(0, docs, 1 << 24):
        stop = min(docs, start + (1 << 24))
        sizes[start:stop] = rng.geometric(docs / tokens, size=stop - start)
    sizes.flush()
    total = int(np.asarray(sizes).sum(dtype=np.int64))
    del sizes
    return total


def _peak_gb() -> float:
    """Peak RSS. It counts the page cache mapped from the memory-mapped maps (clean, shared,
    reclaimable: here a random row maps a whole large folio of the file) and, through execve,
    the parent's peak: see ``_AnonymousPeak`` for the memory the stage itself needs."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


class _AnonymousPeak:
    """Samples ``RssAnon`` (memory only this process holds: arrays, temporaries) every 50 ms."""

    def __init__(self):
        import threading

        self.peak_kb = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(0.05):
            self.sample()

    def sample(self) -> None:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("RssAnon:"):
                self.peak_kb = max(self.peak_kb, int(line.split()[1]))

    def stop_gb(self) -> float:
        self._stop.set()
        self._thread.join()
        self.sample()
        return self.peak_kb / 2**20


def child_order(work: Path, num_samples: int) -> dict:
    from pythia_suite.data import order

    sizes = np.load(work / "sizes.npy", mmap_mode="r")
    order.read_sizes = lambda prefix: sizes
    t0 = time.perf_counter()
    paths = order.build_index_maps(work / "bench", work / "order", num_samples, SEQ_LENGTH, SEED)
    return {"seconds": time.perf_counter() - t0, "paths": [str(p) for p in paths]}


def child_lens(work: Path, steps: int, figure_steps: list[int]) -> dict:
    from pythia_suite.data import lens as data_lens

    sizes = np.load(work / "sizes.npy", mmap_mode="r")
    paths = sorted((work / "order").glob("*_idx.npy"))
    by_kind = {p.name.rsplit("_", 2)[-2]: p for p in paths}
    timings: dict[str, float] = {}
    t0, c0 = time.perf_counter(), time.process_time()
    out = work / "lens"
    out.mkdir(exist_ok=True)
    data_lens.build_lens(
        sizes, [by_kind[k] for k in ("doc", "sample", "shuffle")], out,
        global_batch=BATCH, train_iters=steps, seq_length=SEQ_LENGTH,
        meta={"seed": SEED, "subsets": None, "checkpoint_steps": figure_steps}, timings=timings,
    )  # fmt: skip
    timings["total"] = time.perf_counter() - t0
    timings["cpu (of total)"] = time.process_time() - c0  # the machine's 2 cores are shared
    meta = json.loads((out / "lens.json").read_text())
    samples = len(np.load(by_kind["shuffle"], mmap_mode="r"))
    return {"timings": timings, "epochs": meta["epochs"], "samples": int(samples)}


def _evict_page_cache(root: Path) -> None:
    """Drop this benchmark's own files from the page cache (``POSIX_FADV_DONTNEED``): cold reads
    without touching the rest of the machine's cache."""
    import os

    for path in root.rglob("*.npy"):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def child_query(work: Path, steps: int, docs: int) -> dict:
    """5 random step queries and 5 document queries, first with the files evicted from the page
    cache (cold), then again (warm), through the memory maps the CLI opens."""
    from pythia_suite.data import lens as data_lens

    _evict_page_cache(work)
    t0 = time.perf_counter()
    lens = data_lens.load_lens(work / "lens")
    sizes = data_lens.open_for_queries(work / "sizes.npy")
    paths = sorted((work / "order").glob("*_idx.npy"))
    by_kind = {p.name.rsplit("_", 2)[-2]: p for p in paths}
    doc_idx, sample_idx, shuffle_idx = (
        data_lens.open_for_queries(by_kind[k]) for k in ("doc", "sample", "shuffle")
    )
    result = {"open_s": time.perf_counter() - t0}
    rng = np.random.RandomState(1)
    step_list, doc_list = rng.randint(0, steps, size=5), rng.randint(0, docs, size=5)
    for cache in ("cold", "warm"):
        step_times, doc_times, hits = [], [], []
        for step in step_list:
            t0 = time.perf_counter()
            data_lens.step_view(lens, int(step), sizes, doc_idx, sample_idx, shuffle_idx)
            step_times.append(time.perf_counter() - t0)
        for doc in doc_list:
            t0 = time.perf_counter()
            hits.append(len(data_lens.document_view(lens, int(doc), sizes, sample_idx)))
            doc_times.append(time.perf_counter() - t0)
        result[cache] = {
            "step_s_max": max(step_times),
            "step_s_median": float(np.median(step_times)),
            "document_s_max": max(doc_times),
            "document_s_median": float(np.median(doc_times)),
            "document_hits": hits,
        }
    return result


def run_child(kind: str, work: Path, *extra: str) -> dict:
    cmd = [sys.executable, __file__, "--child", kind, "--work", str(work), *extra]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, check=True, capture_output=True, text=True)
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    result["wall_s"] = time.perf_counter() - t0
    return result


def uniform_share(x: float, epochs: int) -> float:
    """Closed-form share of tokens from repeated documents at training fraction ``x``, every
    occurrence inside one sample."""
    if epochs < 2 or x <= 0:
        return 0.0
    return 1 - (1 - (1 - x) ** epochs) / (epochs * x)


def _samples_spanned(sizes: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per distinct document length: (length, count, samples spanned k0, P(k0 + 1))."""
    lengths, counts = np.unique(np.asarray(sizes), return_counts=True)
    lengths = lengths.astype(np.float64)
    k0 = 1 + (lengths - 1) // SEQ_LENGTH
    extra = ((lengths - 1) % SEQ_LENGTH) / SEQ_LENGTH  # chance of one more sample boundary
    return lengths, counts.astype(np.float64), k0, extra


def uniform_share_lengths(sizes: np.ndarray, x: float) -> float:
    """Two epochs, documents spanning k samples (pieces at independent uniform times): a piece
    at time t of an occurrence spanning kB samples is repeated with probability
    kA / (kA + kB - 1) * (1 - (1 - t)^(kA + kB - 1)); averaged over t in [0, x] and over tokens."""
    if x <= 0:
        return 0.0
    lengths, counts, k0, extra = _samples_spanned(sizes)
    total = 0.0
    for da, pa in ((0, 1 - extra), (1, extra)):
        for db, pb in ((0, 1 - extra), (1, extra)):
            ka, kb = k0 + da, k0 + db
            n = ka + kb - 1
            avg = 1 - (1 - (1 - x) ** (n + 1)) / ((n + 1) * x)
            total += float(np.sum(counts * lengths * pa * pb * ka / n * avg))
    return total / float(np.sum(counts * lengths))


def uniform_first_repeated_step(sizes: np.ndarray, epochs: int, samples: int) -> float | None:
    """Expected first step holding a repeated document under a uniform shuffle: documents
    whose two occurrences (spanning kA, kB samples) both fall in the first fraction x are about
    Poisson with mean x^2 * sum kA kB (two epochs; more: C(E, 2) pairs with single-sample k)."""
    if epochs < 2:
        return None
    lengths, counts, k0, extra = _samples_spanned(sizes)
    rate = (
        float(np.sum(counts * (k0 + extra) ** 2))
        if epochs == 2
        else len(sizes) * math.comb(epochs, 2)
    )
    return samples / 2 * math.sqrt(math.pi / rate) / BATCH


def sizes_from_idx(idx: Path, out: Path) -> tuple[int, int]:
    """Copy the document sizes of a real Megatron ``.idx`` (its ``.bin`` not needed) to ``out``;
    returns (documents, tokens)."""
    from pythia_suite.data.preshuffled import _read_index

    _, sizes = _read_index(idx)
    np.save(out, np.asarray(sizes, dtype=np.int32))
    return len(sizes), int(np.asarray(sizes).sum(dtype=np.int64))


def bench_shape(name: str, scale: float, root: Path, idx: Path | None = None) -> None:
    work = root / name
    work.mkdir(parents=True, exist_ok=True)
    steps = max(1, round(STEPS * scale))
    requested = max(1, round(REQUESTED * scale))
    if idx is not None:  # the real dataset's sizes: the suite's exact figures
        docs, tokens = sizes_from_idx(idx, work / "sizes.npy")
        name = f"{idx} (real sizes)"
    else:
        shape = SHAPES[name]
        docs = max(1, round(shape["docs"] * scale))
        tokens = make_sizes(work / "sizes.npy", docs, round(shape["tokens"] * scale))
    figure_steps = sorted({max(1, round(s * scale)) for s in FIGURE_STEPS})
    print(
        f"\n{name} at scale {scale}: {docs:,} documents, {tokens:,} tokens, {requested:,} samples "
        f"requested, {steps:,} steps x {BATCH}"
    )
    order = run_child("order", work, "--num-samples", str(requested))
    print(
        f"  order (index maps, for scale): {order['seconds']:.1f} s, peak RSS "
        f"{order['peak_gb']:.2f} GB (anonymous {order['peak_anonymous_gb']:.2f} GB)"
    )
    lens = run_child("lens", work, "--steps", str(steps), "--figure-steps", *map(str, figure_steps))
    t = lens["timings"]
    stages = ", ".join(f"{k} {v:.1f} s" for k, v in t.items())
    print(
        f"  lens: {stages}; peak RSS {lens['peak_gb']:.2f} GB (anonymous "
        f"{lens['peak_anonymous_gb']:.2f} GB); epochs {lens['epochs']}, "
        f"{lens['samples']:,} samples in the order, {steps * BATCH / lens['samples']:.1%} read"
    )
    size_mb = sum(p.stat().st_size for p in (work / "lens").iterdir()) / 2**20
    print(f"  lens directory: {size_mb:,.0f} MiB")
    query = run_child("query", work, "--steps", str(steps), "--docs", str(docs))
    for cache in ("cold", "warm"):
        q = query[cache]
        print(
            f"  queries ({cache} page cache): step max {q['step_s_max']:.3f} s (median "
            f"{q['step_s_median']:.3f}); document max {q['document_s_max']:.4f} s (median "
            f"{q['document_s_median']:.4f})"
        )
    print(
        f"  queries: peak RSS {query['peak_gb']:.2f} GB (anonymous "
        f"{query['peak_anonymous_gb']:.2f} GB)"
    )
    meta = json.loads((work / "lens" / "lens.json").read_text())
    epochs, samples = meta["epochs"], lens["samples"]
    sizes = np.load(work / "sizes.npy", mmap_mode="r")
    expected_first = uniform_first_repeated_step(sizes, epochs, samples)
    first = meta["first_repeated_step"]
    print(
        f"  first repeated step: {first}"
        + (f" (uniform-shuffle expectation ~{expected_first:.1f})" if expected_first else "")
    )
    for row in meta["checkpoints"]:
        x = row["step"] * BATCH / samples
        with_length = (
            f", {uniform_share_lengths(sizes, x):.4%} with its length" if epochs == 2 else ""
        )
        print(
            f"  step {row['step']:>7,}: {row['repeated_share']:.4%} of tokens from repeated "
            f"documents (uniform shuffle: {uniform_share(x, epochs):.4%} one sample per "
            f"occurrence{with_length}); {row['unique_documents']:,} distinct documents"
        )


def brute_force_repeats(sizes, doc_idx, shuffle_idx, seq_length, batch, iters):
    """First step holding a repeated occurrence and repeated tokens per step, by a plain loop
    over training positions and their tokens (the stream walked from doc_idx and sizes)."""
    owner = np.repeat(np.arange(len(doc_idx)), np.asarray(sizes)[doc_idx]).tolist()
    doc_idx = np.asarray(doc_idx).tolist()
    numbers: dict[int, int] = {}
    counts: dict[int, int] = {}
    first_repeated = None
    repeated = [0] * iters
    for i in range(batch * iters):
        j = int(shuffle_idx[i])
        step = i // batch
        for p in owner[j * seq_length : (j + 1) * seq_length + 1]:
            n = numbers.get(p)
            if n is None:
                d = doc_idx[p]
                n = numbers[p] = counts[d] = counts.get(d, 0) + 1
                if n >= 2 and first_repeated is None:
                    first_repeated = step
            if n >= 2:
                repeated[step] += 1
    return first_repeated, repeated


def bench_mini(root: Path) -> None:
    from pythia_suite import config as cfg
    from pythia_suite.data import lens as data_lens
    from pythia_suite.data import order
    from pythia_suite.data.source import num_samples
    from pythia_suite.data.tokenize import merge_datasets, tokenize_shard, train_tokenizer

    repo = Path(__file__).resolve().parents[1]
    config = cfg.load_config(
        [repo / "config.yaml", repo / "config/mini.yaml", repo / "config/mini-epochs.yaml"]
    )
    shards = [repo / entry["path"] for entry in config["data"]["raw"]["shards"]]
    t0 = time.perf_counter()
    tokenizer = train_tokenizer(
        shards, config["data"]["tokenizer"]["vocab_size"], root / "tok.json"
    )
    prefixes = []
    for k, shard in enumerate(shards):
        prefix = root / f"{k:02d}_text_document"
        tokenize_shard(shard, tokenizer, prefix, progress=False, workers=1)
        prefixes.append(prefix)
    merged = merge_datasets(prefixes, root / "standard_text_document")
    seq, batch = config["model"]["seq_length"], config["training"]["global_batch"]
    iters, seed = config["training"]["train_iters"], 1234
    paths = order.build_index_maps(
        root / "standard_text_document", root / "order", num_samples(config), seq, seed
    )
    sizes = order.read_sizes(root / "standard_text_document")
    (root / "lens").mkdir(exist_ok=True)
    data_lens.build_lens(
        sizes, paths, root / "lens", global_batch=batch, train_iters=iters, seq_length=seq,
        meta={"seed": seed, "subsets": None, "checkpoint_steps": cfg.checkpoint_steps(config)},
    )  # fmt: skip
    meta = json.loads((root / "lens" / "lens.json").read_text())
    print(
        f"miniature corpus (config/mini-epochs.yaml): {merged['documents']:,} documents, "
        f"{merged['tokens']:,} tokens, {meta['epochs']} epochs in doc_idx, {iters:,} steps x "
        f"{batch} x {seq + 1} tokens; data stages + lens {time.perf_counter() - t0:.1f} s"
    )
    doc_idx, _, shuffle_idx = (np.load(p, mmap_mode="r") for p in paths)
    t0 = time.perf_counter()
    first, repeated = brute_force_repeats(sizes, doc_idx, shuffle_idx, seq, batch, iters)
    brute_s = time.perf_counter() - t0
    print(
        f"  first repeated step: lens {meta['first_repeated_step']}, brute force {first} "
        f"({brute_s:.1f} s)"
    )
    cumulative = np.cumsum(repeated)
    agree = first == meta["first_repeated_step"]
    for row in meta["checkpoints"]:
        if row["step"] in (0, 1) or row["step"] % 4000 and row["step"] != iters:
            continue
        brute = int(cumulative[row["step"] - 1])
        agree &= brute == row["repeated_tokens"]
        print(
            f"  step {row['step']:>6,}: repeated tokens lens {row['repeated_tokens']:,} "
            f"({row['repeated_share']:.2%}), brute force {brute:,}"
        )
    print(f"  lens equals the brute force: {agree}")
    if not agree:
        sys.exit(1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--scale",
        type=float,
        help="fraction of Pile scale (default 0.02; with --idx: of the steps, 1)",
    )
    parser.add_argument("--shape", choices=["standard", "deduped", "both"], default="both")
    parser.add_argument("--keep", type=Path, help="work in this directory and keep the files")
    parser.add_argument("--mini", action="store_true", help="the miniature several-epoch order")
    parser.add_argument(
        "--idx", type=Path, help="a real dataset's .idx (e.g. the deduped Pile's): its sizes"
    )
    parser.add_argument("--child", choices=["order", "lens", "query"], help=argparse.SUPPRESS)
    parser.add_argument("--work", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--num-samples", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--steps", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--docs", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--figure-steps", type=int, nargs="*", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.child:
        anonymous = _AnonymousPeak()
        if args.child == "order":
            result = child_order(args.work, args.num_samples)
        elif args.child == "lens":
            result = child_lens(args.work, args.steps, args.figure_steps)
        else:
            result = child_query(args.work, args.steps, args.docs)
        result["peak_gb"] = _peak_gb()
        result["peak_anonymous_gb"] = anonymous.stop_gb()
        (args.work / f"{args.child}_result.json").write_text(json.dumps(result))
        print(json.dumps(result))
        return

    root = args.keep or Path(tempfile.mkdtemp(prefix="data_lens_bench_"))
    root.mkdir(parents=True, exist_ok=True)
    try:
        if args.mini:
            bench_mini(root)
            return
        if args.idx:
            bench_shape("real", args.scale or 1.0, root, args.idx)
            return
        shapes = ["standard", "deduped"] if args.shape == "both" else [args.shape]
        for name in shapes:
            bench_shape(name, args.scale or 0.02, root)
            if args.keep is None:
                shutil.rmtree(root / name, ignore_errors=True)
    finally:
        if args.keep is None:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
