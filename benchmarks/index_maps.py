"""Time and memory of building GPT-NeoX v1.0's index maps at (a fraction of) Pile scale.

Synthetic sizes shaped like the standard Pile: 210M documents, ~332B tokens, 147,164,160
samples requested (143000 x 1024 x 1.005), seq length 2048, seed 1234. ``--scale`` multiplies
the document count, the tokens and the samples (default 0.02; ``--scale 1`` peaks at ~2.8 GB
for ``pythia_suite`` and ~6.3 GB for the GPT-NeoX baseline, ~4 min in all: run it on a quiet
machine). Measured here at scale 1 (2 shared cores, load ~1): pythia_suite 46.2 s minus IO,
2.81 GB peak; GPT-NeoX v1.0 56.8 s, 6.29 GB; the files byte-identical.

Each builder runs in its own subprocess so that its peak RSS (``resource.getrusage``) is its own.
The document sizes are generated once (seeded RandomState, geometric with mean ~1581 tokens)
and memory-mapped by both, as GPT-NeoX memory-maps its ``.idx``.

* ``ours``: ``pythia_suite.data.order.build_index_maps`` (the dataset read replaced by the
  synthetic sizes); the time spent in ``np.save`` is measured and reported apart.
* ``neox`` (``--baseline``): GPT-NeoX v1.0's ``_build_index_mappings`` as written (``np.mgrid``
  doc_idx, the C++ ``build_sample_idx`` loop compiled here with ``cc -O3``, ``np.save`` of each
  map as it is built). With ``--baseline`` the two sets of files are also compared byte for byte.

Usage: ``python benchmarks/index_maps.py [--scale 0.02] [--baseline] [--keep DIR]``
"""

from __future__ import annotations

import argparse
import ctypes
import hashlib
import json
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

PILE_DOCS = 210_000_000
PILE_TOKENS = 332_000_000_000
PILE_SAMPLES = 147_164_160
SEQ_LENGTH = 2048
SEED = 1234

# GPT-NeoX v1.0 megatron/data/helpers.cpp build_sample_idx, as a C function (same loop, same types).
_NEOX_SAMPLE_IDX_C = r"""
#include <stdint.h>
void build_sample_idx(const int32_t* sizes, const int32_t* doc_idx, const int32_t seq_length,
                      const int32_t num_epochs, const int64_t tokens_per_epoch,
                      int32_t* sample_idx) {
    int64_t num_samples = (num_epochs * tokens_per_epoch - 1) / seq_length;
    int64_t sample_index = 0;
    int64_t doc_idx_index = 0;
    int32_t doc_offset = 0;
    sample_idx[2 * sample_index] = doc_idx_index;
    sample_idx[2 * sample_index + 1] = doc_offset;
    ++sample_index;
    while (sample_index <= num_samples) {
        int32_t remaining_seq_length = seq_length + 1;
        while (remaining_seq_length != 0) {
            int32_t doc_id = doc_idx[doc_idx_index];
            int32_t doc_length = sizes[doc_id] - doc_offset;
            remaining_seq_length -= doc_length;
            if (remaining_seq_length <= 0) {
                doc_offset += (remaining_seq_length + doc_length - 1);
                remaining_seq_length = 0;
            } else {
                ++doc_idx_index;
                doc_offset = 0;
            }
        }
        sample_idx[2 * sample_index] = doc_idx_index;
        sample_idx[2 * sample_index + 1] = doc_offset;
        ++sample_index;
    }
}
"""


def make_sizes(path: Path, scale: float) -> tuple[int, int]:
    """Write synthetic int32 document sizes to ``path`` (.npy); return (documents, tokens)."""
    n_docs = max(1, round(PILE_DOCS * scale))
    mean = PILE_TOKENS / PILE_DOCS
    rng = np.random.RandomState(0)
    sizes = np.lib.format.open_memmap(path, mode="w+", dtype=np.int32, shape=(n_docs,))
    chunk = 1 << 24
    for start in range(0, n_docs, chunk):
        stop = min(n_docs, start + chunk)
        sizes[start:stop] = rng.geometric(1.0 / mean, size=stop - start)
    sizes.flush()
    tokens = int(np.asarray(sizes).sum(dtype=np.int64))
    del sizes
    return n_docs, tokens


def compile_neox_helper(workdir: Path) -> Path:
    src = workdir / "neox_helpers.c"
    lib = workdir / "neox_helpers.so"
    src.write_text(_NEOX_SAMPLE_IDX_C)
    subprocess.run(["cc", "-O3", "-shared", "-fPIC", "-o", str(lib), str(src)], check=True)
    return lib


# ----------------------------------------------------------------------------------------------
# Children: one builder each, printing a JSON line of timings and peak RSS
# ----------------------------------------------------------------------------------------------


def child_ours(sizes_path: Path, out_dir: Path, num_samples: int) -> dict:
    from pythia_suite.data import order

    sizes = np.load(sizes_path, mmap_mode="r")
    timings: dict[str, float] = {"save": 0.0}

    def timed(name, fn):
        def wrapper(*args, **kwargs):
            t0 = time.perf_counter()
            result = fn(*args, **kwargs)
            timings[name] = timings.get(name, 0.0) + time.perf_counter() - t0
            return result

        return wrapper

    order.read_sizes = lambda prefix: sizes
    order.build_doc_idx = timed("doc_idx", order.build_doc_idx)
    order.build_sample_idx = timed("sample_idx", order.build_sample_idx)
    order.build_shuffle_idx = timed("shuffle_idx", order.build_shuffle_idx)
    order._save_tmp = timed("save", order._save_tmp)
    t0 = time.perf_counter()
    order.build_index_maps(out_dir / "bench_text_document", out_dir, num_samples, SEQ_LENGTH, SEED)
    timings["total"] = time.perf_counter() - t0
    return timings


def child_neox(sizes_path: Path, out_dir: Path, num_samples: int, helper: Path) -> dict:
    """GPT-NeoX v1.0 ``_build_index_mappings`` (packed path), step by step."""
    lib = ctypes.CDLL(str(helper))
    ptr = ctypes.c_void_p
    lib.build_sample_idx.argtypes = [ptr, ptr, ctypes.c_int32, ctypes.c_int32, ctypes.c_int64, ptr]
    sizes = np.load(sizes_path, mmap_mode="r")
    stem = f"{out_dir}/bench_text_document_train_0_indexmap_{num_samples}ns_{SEQ_LENGTH}sl_{SEED}s"
    timings: dict[str, float] = {"save": 0.0}
    t_start = time.perf_counter()

    documents = np.arange(start=0, stop=sizes.shape[0], step=1, dtype=np.int32)
    tokens_per_epoch = np.sum(sizes[documents])
    num_epochs, total = 0, 0
    while True:
        num_epochs += 1
        total += tokens_per_epoch
        if ((total - 1) // SEQ_LENGTH) >= num_samples:
            break
    np_rng = np.random.RandomState(seed=SEED)

    t0 = time.perf_counter()
    doc_idx = np.mgrid[0:num_epochs, 0 : len(documents)][1]
    doc_idx[:] = documents
    doc_idx = doc_idx.reshape(-1)
    doc_idx = doc_idx.astype(np.int32)
    np_rng.shuffle(doc_idx)
    timings["doc_idx"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    np.save(stem + "_doc_idx.npy", doc_idx, allow_pickle=True)
    timings["save"] += time.perf_counter() - t0

    t0 = time.perf_counter()
    count = (num_epochs * int(tokens_per_epoch) - 1) // SEQ_LENGTH
    sample_idx = np.empty((count + 1, 2), dtype=np.int32)
    sizes_c = np.ascontiguousarray(sizes)
    lib.build_sample_idx(
        sizes_c.ctypes.data, doc_idx.ctypes.data, SEQ_LENGTH, num_epochs,
        int(tokens_per_epoch), sample_idx.ctypes.data,
    )  # fmt: skip
    timings["sample_idx"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    np.save(stem + "_sample_idx.npy", sample_idx, allow_pickle=True)
    timings["save"] += time.perf_counter() - t0

    t0 = time.perf_counter()
    size = sample_idx.shape[0] - 1
    dtype_ = np.uint32 if size < (np.iinfo(np.uint32).max - 1) else np.int64
    shuffle_idx = np.arange(start=0, stop=size, step=1, dtype=dtype_)
    np_rng.shuffle(shuffle_idx)
    timings["shuffle_idx"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    np.save(stem + "_shuffle_idx.npy", shuffle_idx, allow_pickle=True)
    timings["save"] += time.perf_counter() - t0
    timings["total"] = time.perf_counter() - t_start
    return timings


def run_child(kind: str, sizes_path: Path, out_dir: Path, num_samples: int, helper: Path | None):
    out_dir.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, __file__, "--child", kind, "--sizes", str(sizes_path)]
    cmd += ["--out", str(out_dir), "--num-samples", str(num_samples)]
    if helper is not None:
        cmd += ["--helper", str(helper)]
    proc = subprocess.run(cmd, check=True, capture_output=True, text=True)
    return json.loads(proc.stdout.strip().splitlines()[-1])


def sha256_dir(out_dir: Path) -> dict[str, str]:
    digests = {}
    for path in sorted(out_dir.glob("*indexmap*.npy")):
        digest = hashlib.sha256()
        with open(path, "rb") as fh:
            while block := fh.read(1 << 24):
                digest.update(block)
        digests[path.name] = digest.hexdigest()
    return digests


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", type=float, default=0.02, help="fraction of Pile scale")
    parser.add_argument("--baseline", action="store_true", help="also run GPT-NeoX's builder")
    parser.add_argument("--keep", type=Path, help="work in this directory and keep the files")
    parser.add_argument("--child", choices=["ours", "neox"], help=argparse.SUPPRESS)
    parser.add_argument("--sizes", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--num-samples", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--helper", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.child:
        if args.child == "ours":
            result = child_ours(args.sizes, args.out, args.num_samples)
        else:
            result = child_neox(args.sizes, args.out, args.num_samples, args.helper)
        result["peak_rss_gb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
        print(json.dumps(result))
        return

    workdir = args.keep or Path(tempfile.mkdtemp(prefix="index_maps_bench_"))
    workdir.mkdir(parents=True, exist_ok=True)
    try:
        num_samples = max(1, round(PILE_SAMPLES * args.scale))
        n_docs, tokens = make_sizes(workdir / "sizes.npy", args.scale)
        print(
            f"scale {args.scale}: {n_docs:,} documents, {tokens:,} tokens, "
            f"{num_samples:,} samples requested, seq {SEQ_LENGTH}, seed {SEED}"
        )
        results = {
            "pythia_suite": run_child(
                "ours", workdir / "sizes.npy", workdir / "ours", num_samples, None
            )
        }
        if args.baseline:
            helper = compile_neox_helper(workdir)
            results["gpt-neox v1.0"] = run_child(
                "neox", workdir / "sizes.npy", workdir / "neox", num_samples, helper
            )
        columns = ["doc_idx", "sample_idx", "shuffle_idx", "save", "total", "minus IO", "peak RSS"]
        print(f"{'builder':<14}" + "".join(f"{c:>12}" for c in columns))
        for name, r in results.items():
            values = [r["doc_idx"], r["sample_idx"], r["shuffle_idx"], r["save"], r["total"]]
            values.append(r["total"] - r["save"])
            cells = "".join(f"{v:>11.2f}s" for v in values) + f"{r['peak_rss_gb']:>10.2f}GB"
            print(f"{name:<14}{cells}")
        if args.baseline:
            ours, neox = sha256_dir(workdir / "ours"), sha256_dir(workdir / "neox")
            same = ours == neox and len(ours) == 3
            print(f"index map files byte-identical to GPT-NeoX's: {same}")
            if not same:
                sys.exit(1)
    finally:
        if args.keep is None:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
