"""Throughput of ``tokenize_shard`` against the single-thread ``Tokenizer.encode`` rate.

Input: the first ~40 MB (sorted paths) of this interpreter's standard-library Python source,
written as one Pile-format shard (one document per file). Tokenizer: GPT-NeoX-20B's, from
``../shared/anchors/pythia/EleutherAI_pythia/utils/20B_tokenizer.json`` beside the repo (or
``--tokenizer``).

Measured:
  * single-thread ``Tokenizer.encode`` rate on the same documents (tokens/s/core);
  * ``tokenize_shard`` end to end (read + decompress + parse, encode, write .bin/.idx) with
    ``--workers`` processes, in this already-started interpreter: worker start-up is included,
    interpreter start-up is not (it is measured separately: a fresh ``python`` importing the
    module);
  * the ratio end-to-end / (workers x single-thread rate); the goal is >= 0.85;
  * a ceiling: ``--workers`` already-started processes encoding shares of the texts with no I/O
    or ordering; on a shared machine this shows how much parallel speed the cores gave at all;
  * CPU seconds of both runs (process + children), which other load disturbs less than wall time.

Run: ``python benchmarks/tokenize_throughput.py [--mb 40] [--workers 2]``. The machine should be
otherwise idle: other processes on the cores lower the parallel rate more than the single one.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import multiprocessing
import os
import resource
import subprocess
import sys
import sysconfig
import tempfile
import time
from pathlib import Path

import zstandard
from tokenizers import Tokenizer

from pythia_suite.data.tokenize import tokenize_shard

REPO = Path(__file__).resolve().parents[1]
DEFAULT_TOKENIZER = REPO.parent / "shared/anchors/pythia/EleutherAI_pythia/utils/20B_tokenizer.json"


def stdlib_documents(limit_bytes: int) -> list[str]:
    """Texts of the .py files under the stdlib directory (site-packages included), in sorted
    path order, until ``limit_bytes`` of UTF-8."""
    root = Path(sysconfig.get_paths()["stdlib"])
    texts, total = [], 0
    for path in sorted(root.rglob("*.py")):
        text = path.read_text(encoding="utf-8", errors="replace")
        texts.append(text)
        total += len(text.encode("utf-8"))
        if total >= limit_bytes:
            break
    return texts


def write_shard(texts: list[str], path: Path) -> None:
    lines = (json.dumps({"text": t, "meta": {"pile_set_name": "Github"}}) + "\n" for t in texts)
    path.write_bytes(zstandard.ZstdCompressor(level=3).compress("".join(lines).encode("utf-8")))


def cpu_seconds() -> float:
    """CPU time of this process plus its reaped children (the pool's workers)."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def single_thread_rate(texts: list[str], tokenizer_json: Path) -> tuple[int, float, float]:
    """(tokens, wall seconds, CPU seconds) of encoding every text in this thread."""
    tokenizer = Tokenizer.from_file(str(tokenizer_json))
    start, cpu = time.perf_counter(), cpu_seconds()
    tokens = sum(len(tokenizer.encode(t).ids) for t in texts)
    return tokens, time.perf_counter() - start, cpu_seconds() - cpu


def encode_batch_rate(texts: list[str], tokenizer_json: Path) -> float:
    """Tokens/s of the library's own multi-threaded ``encode_batch`` (the alternative design)."""
    os.environ["TOKENIZERS_PARALLELISM"] = "true"
    tokenizer = Tokenizer.from_file(str(tokenizer_json))
    start, tokens = time.perf_counter(), 0
    for i in range(0, len(texts), 64):
        tokens += sum(len(e.ids) for e in tokenizer.encode_batch(texts[i : i + 64]))
    return tokens / (time.perf_counter() - start)


_tokenizer = None


def _load(tokenizer_json: str) -> None:
    global _tokenizer
    _tokenizer = Tokenizer.from_file(tokenizer_json)


def _count(texts: list[str]) -> int:
    return sum(len(_tokenizer.encode(t).ids) for t in texts)


def independent_encoders_rate(texts: list[str], tokenizer_json: Path, workers: int) -> float:
    """Tokens/s of ``workers`` already-started processes each encoding a share of the texts
    with no reading, writing or ordering: the most any design can get from these cores now."""
    context = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(
        workers, context, _load, (str(tokenizer_json),)
    ) as pool:
        list(pool.map(_count, [[""]] * workers))  # start every worker before timing
        start = time.perf_counter()
        tokens = sum(pool.map(_count, [texts[i::workers] for i in range(workers)]))
        return tokens / (time.perf_counter() - start)


def interpreter_startup() -> float:
    start = time.perf_counter()
    subprocess.run([sys.executable, "-c", "import pythia_suite.data.tokenize"], check=True)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mb", type=float, default=40.0, help="input size in MB (default 40)")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--tokenizer", type=Path, default=DEFAULT_TOKENIZER)
    parser.add_argument(
        "--encode-batch", action="store_true", help="also time Tokenizer.encode_batch (threads)"
    )
    args = parser.parse_args()
    if not args.tokenizer.is_file():
        sys.exit(f"tokenizer not found: {args.tokenizer} (pass --tokenizer)")

    load_before = os.getloadavg()[0]
    texts = stdlib_documents(int(args.mb * 1e6))
    n_bytes = sum(len(t.encode("utf-8")) for t in texts)
    with tempfile.TemporaryDirectory() as tmp:
        shard = Path(tmp) / "00.jsonl.zst"
        write_shard(texts, shard)
        tokens, encode_s, encode_cpu = single_thread_rate(texts, args.tokenizer)
        per_core = tokens / encode_s
        cpu = cpu_seconds()
        stats = tokenize_shard(shard, args.tokenizer, Path(tmp) / "out", workers=args.workers)
        e2e_cpu = cpu_seconds() - cpu
    ceiling = independent_encoders_rate(texts, args.tokenizer, args.workers)
    batch_rate = encode_batch_rate(texts, args.tokenizer) if args.encode_batch else None
    startup = interpreter_startup()
    e2e = stats["tokens"] / stats["seconds"]
    target = args.workers * per_core

    print(f"input: {len(texts)} documents, {n_bytes / 1e6:.1f} MB, {tokens:,} tokens (+EOD each)")
    rows = [
        ("single-thread Tokenizer.encode", f"{per_core / 1e6:.3f}M tok/s", f"{encode_s:.1f} s"),
        (
            f"tokenize_shard, {args.workers} workers",
            f"{e2e / 1e6:.3f}M tok/s",
            f"{stats['seconds']:.1f} s",
        ),
        (f"{args.workers} x single-thread", f"{target / 1e6:.3f}M tok/s", ""),
        ("ratio e2e / (workers x single)", f"{e2e / target:.2f}", "goal >= 0.85"),
        ("interpreter + import start-up", "", f"{startup:.2f} s (not in e2e)"),
        (
            "CPU s: single-thread encode",
            f"{encode_cpu:.1f} s",
            f"{encode_cpu / encode_s:.0%} of wall",
        ),
        (
            "CPU s: tokenize_shard (all procs)",
            f"{e2e_cpu:.1f} s",
            f"{e2e_cpu / stats['seconds']:.2f} cores busy",
        ),
        ("CPU efficiency single / e2e", f"{encode_cpu / e2e_cpu:.2f}", "1.0 = no overhead"),
        (
            f"ceiling: {args.workers} bare encoder procs",
            f"{ceiling / 1e6:.3f}M tok/s",
            f"ratio {ceiling / target:.2f}; e2e {e2e / ceiling:.2f} of it",
        ),
    ]
    if batch_rate is not None:
        rows.append(("encode_batch (library threads)", f"{batch_rate / 1e6:.3f}M tok/s", ""))
    print(
        f"load average {load_before:.2f} before, {os.getloadavg()[0]:.2f} after, "
        f"on {os.cpu_count()} CPUs (other processes lower the parallel rate)"
    )
    for name, rate, time_s in rows:
        print(f"{name:<34} {rate:>16} {time_s:>22}")


if __name__ == "__main__":
    main()
