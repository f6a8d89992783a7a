"""Throughput and peak memory of the dedup stages vs plain datasketch (and datatrove, if installed).

    python benchmarks/dedup_throughput.py                 # ~20k documents built from /usr/share/doc
    python benchmarks/dedup_throughput.py --shards 'data/mini-pile/train/*.jsonl.zst'

Every stage runs in a fresh process (``spawn``), so its peak RSS (``ru_maxrss``) is its own;
CPU seconds (user + sys) of that process give documents/s per core. The baseline is the same
algorithm in one process with datasketch: ``MinHash.generator`` over the same shingles,
``MinHashLSH(threshold, num_perm)`` insert + query, exact-text dict, union-find; its removals
are compared with the pipeline's. datatrove 0.10.1 (whitespace tokenizer, digits and
punctuation kept, 7 x 18 buckets) runs if importable. The Pile projection multiplies the
measured per-byte CPU cost by 825 GB (and per-document by 210M documents); it is a projection.

The pipeline runs twice: without candidate verification (``verify_bits=0``, plain LSH, which
must remove exactly datasketch's set) and with the default b-bit verification; the difference
is the cost of verification. A margin sweep then takes up to 3000 candidate pairs of the
unverified run (pairs that share a band, with that band), computes their exact Jaccard and
their b-bit estimates outside the band, and prints for each margin how many pairs above and
below the threshold verification would accept.
"""

from __future__ import annotations

import argparse
import glob
import gzip
import json
import multiprocessing
import random
import shutil
import tempfile
import time
from pathlib import Path

import zstandard

PILE_DOCS = 210e6
PILE_BYTES = 825e9
PILE_SHARDS = 30


# ----------------------------------------------------------------------------- corpus


def _source_texts() -> list[str]:
    texts = []
    for path in sorted(glob.glob("/usr/share/common-licenses/*")) + sorted(
        glob.glob("/usr/share/doc/*/copyright")
    ):
        try:
            texts.append(Path(path).read_text(errors="replace"))
        except OSError:
            pass
    for path in sorted(glob.glob("/usr/share/doc/*/changelog*.gz"))[:150]:
        try:
            texts.append(gzip.open(path, "rt", errors="replace").read())
        except OSError:
            pass
    return texts


def build_corpus(out_dir: Path, num_docs: int, num_shards: int, seed: int = 0) -> list[Path]:
    """Pile-format shards: 75% chunks of real Debian docs, 25% edited copies of them."""
    rng = random.Random(seed)
    words = " ".join(_source_texts()).split()
    docs = []
    n_base = int(num_docs * 0.75)
    for _ in range(n_base):
        length = rng.randint(20, 900)
        start = rng.randrange(max(1, len(words) - length))
        docs.append((" ".join(words[start : start + length]), "Debian"))
    for _ in range(num_docs - n_base):
        text = rng.choice(docs[:n_base])[0].split()
        kind = rng.choice(["exact", "light", "heavy"])
        edits = {"exact": 0, "light": max(1, len(text) // 100), "heavy": len(text) // 5}[kind]
        for _ in range(edits):
            text[rng.randrange(len(text))] = f"edit{rng.randrange(10**6)}"
        docs.append((" ".join(text), f"copy-{kind}"))
    rng.shuffle(docs)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    per_shard = -(-len(docs) // num_shards)
    for i in range(num_shards):
        lines = b"".join(
            json.dumps({"text": t, "meta": {"pile_set_name": s}}).encode() + b"\n"
            for t, s in docs[i * per_shard : (i + 1) * per_shard]
        )
        paths.append(out_dir / f"{i:02d}.jsonl.zst")
        paths[-1].write_bytes(zstandard.ZstdCompressor().compress(lines))
    return paths


# ----------------------------------------------------------------------------- stages (children)

BAND_JOBS = [-1, *range(7)]  # EXACT_BAND and the 7 bands of 0.87 / 128 permutations
# bucket_band holds per document: id (8 B), band key (8 B), lexsort order (8 B), sorted copies
# of ids and keys (16 B), edge arrays (<= 16 B): analytic, not measured (20k documents are
# below RSS noise).
BUCKET_BYTES_PER_DOC = 56


def import_only():
    import pythia_suite.data.dedup  # noqa: F401


def corpus_size(shards):
    from pythia_suite.data.shards import iter_documents

    docs = nbytes = 0
    for path in shards:
        for _, doc in iter_documents(path):
            docs += 1
            nbytes += len(doc["text"].encode("utf-8", "surrogatepass"))
    return docs, nbytes


def _sig_paths(work):
    return sorted((Path(work) / "signatures").glob("*.npz"))


def stage_signatures(shards, work, verify_bits):
    from pythia_suite.data.dedup import DedupParams, compute_signatures

    params = DedupParams(verify_bits=verify_bits)
    for i, shard in enumerate(shards):
        compute_signatures(shard, i, Path(work) / "signatures" / f"{i:02d}.npz", params)


def stage_buckets(work, bands):
    from pythia_suite.data.dedup import bucket_band

    for band in bands:
        bucket_band(_sig_paths(work), band, Path(work) / "edges" / f"band_{band:+d}.npz")


def stage_cluster(work):
    from pythia_suite.data.dedup import cluster

    cluster(sorted((Path(work) / "edges").glob("*.npz")), Path(work) / "removals.npz")


def stage_filter(shards, work, out):
    from pythia_suite.data.dedup import filter_shard

    for i, shard in enumerate(shards):
        report = Path(work) / "reports" / f"{i:02d}.json"
        filter_shard(shard, i, Path(work) / "removals.npz", Path(out) / Path(shard).name, report)


def stage_merge(shards, work):
    from pythia_suite.data.dedup import SampleCheck, merge_reports

    check = SampleCheck(
        dict(enumerate(shards)),
        Path(work) / "removals.npz",
        sorted((Path(work) / "edges").glob("*.npz")),
        num_pairs=200,
    )
    merge_reports(
        sorted((Path(work) / "reports").glob("*.json")), Path(work) / "report.json", check
    )


def removed_ids(removals_path):
    import numpy as np

    with np.load(removals_path) as npz:
        return [(int(i) >> 32, int(i) & 0xFFFFFFFF) for i in npz["removed"]]


def run_ours(shards, work, out, measure, verify_bits):
    yield "signatures", measure("stage_signatures", shards, work, verify_bits)
    yield "bucket (1 band)", measure("stage_buckets", work, BAND_JOBS[1:2])
    yield "bucket (other bands)", measure("stage_buckets", work, BAND_JOBS[:1] + BAND_JOBS[2:])
    yield "cluster", measure("stage_cluster", work)
    yield "filter", measure("stage_filter", shards, work, out)
    yield "merge_reports + check", measure("stage_merge", shards, work)


def margin_sweep(shards, work, max_pairs=3000, margins=(0.0, 0.01, 0.02, 0.03, 0.05)):
    """Candidate pairs of an unverified run: which would b-bit verification accept, per margin."""
    import numpy as np

    from pythia_suite.data.dedup import (
        DedupParams,
        bbit_signatures,
        estimate_jaccard,
        exact_jaccard,
        minhash_signatures,
    )
    from pythia_suite.data.shards import iter_documents

    params = DedupParams()
    pairs = []  # (src, dst, band)
    for band in range(params.bands):
        with np.load(Path(work) / "edges" / f"band_{band:+d}.npz") as npz:
            pairs += [(int(a), int(b), band) for a, b in zip(npz["src"], npz["dst"], strict=True)]
    pairs = random.Random(0).sample(pairs, min(max_pairs, len(pairs)))
    needed = {i for a, b, _ in pairs for i in (a, b)}
    texts = {}
    for shard, path in enumerate(shards):
        for line, doc in iter_documents(path):
            if (shard << 32 | line) in needed:
                texts[shard << 32 | line] = doc["text"]
    order = sorted(texts)
    row = {doc_id: k for k, doc_id in enumerate(order)}
    full = minhash_signatures([texts[i] for i in order], params)
    exact = np.array([exact_jaccard(texts[a], texts[b], params.ngram) for a, b, _ in pairs])
    src = np.array([row[a] for a, _, _ in pairs])
    dst = np.array([row[b] for _, b, _ in pairs])
    estimates = {}
    for bits in (8, 16):
        sig = bbit_signatures(full, bits)
        est = np.empty(len(pairs))
        for band in range(params.bands):
            sel = np.array([b == band for *_, b in pairs])
            columns = np.ones(params.num_perm, dtype=bool)
            columns[band * params.rows : (band + 1) * params.rows] = False
            est[sel] = estimate_jaccard(sig[src[sel]], sig[dst[sel]], bits, columns)
        estimates[bits] = est
        with_band = estimate_jaccard(sig[src], sig[dst], bits)  # all 128 values: biased
        estimates[f"{bits}, band included"] = with_band
    above = exact >= params.threshold
    rows = []
    for key, est in estimates.items():
        for margin in margins:
            accept = est >= params.threshold - margin
            rows.append(
                {
                    "bits": key,
                    "margin": margin,
                    "accepted_of_above": f"{int((accept & above).sum())}/{int(above.sum())}",
                    "accepted_of_below": f"{int((accept & ~above).sum())}/{int((~above).sum())}",
                }
            )
    errors = {bits: float(np.abs(est - exact).mean()) for bits, est in estimates.items()}
    return {"pairs": len(pairs), "rows": rows, "mean_abs_error": errors}


def datasketch_baseline(shard_paths):
    """The same decisions with datasketch alone, in one process."""
    import hashlib

    from datasketch import MinHash, MinHashLSH

    from pythia_suite.data.dedup import shingles
    from pythia_suite.data.shards import iter_documents

    lsh = MinHashLSH(threshold=0.87, num_perm=128)
    template = MinHash(num_perm=128, seed=1)
    first_with_text: dict[bytes, tuple] = {}
    parent: dict[tuple, tuple] = {}

    def find(x):
        while parent.get(x, x) != x:
            x = parent[x]
        return x

    def union(a, b):
        ra, rb = find(a), find(b)
        if ra != rb:
            parent[max(ra, rb)] = min(ra, rb)

    for shard, path in enumerate(shard_paths):
        for line, doc in iter_documents(path):
            key = (shard, line)
            digest = hashlib.blake2b(doc["text"].encode("utf-8", "surrogatepass")).digest()
            if digest in first_with_text:
                union(key, first_with_text[digest])
            else:
                first_with_text[digest] = key
            sh = shingles(doc["text"], 5)
            if not sh:
                continue
            m = template.copy()
            m.update_batch([s.encode("utf-8", "surrogatepass") for s in sh])
            for other in lsh.query(m):
                union(key, other)
            lsh.insert(key, m)
    return {"removed": sorted(k for k in parent if find(k) != k)}


def _datatrove_config():
    from datatrove.pipeline.dedup.minhash import MinhashConfig
    from datatrove.utils.text import TextNormConfig

    norm = TextNormConfig(
        remove_punctuation=False, norm_unicode_diacritics=False, norm_numbers=False
    )
    return MinhashConfig(n_grams=5, num_buckets=7, hashes_per_bucket=18, norm_config=norm)


def _split_tokenizer():
    from datatrove.utils.word_tokenizers import WordTokenizer

    class SplitTokenizer(WordTokenizer):  # avoids spaCy
        def word_tokenize(self, text):
            return text.split()

        def sent_tokenize(self, text):
            return [text]

        def span_tokenize(self, text):
            return [(0, len(text))]

    return SplitTokenizer()


def datatrove_stage(stage, shard_dir, dt, tasks):
    from datatrove.executor import LocalPipelineExecutor
    from datatrove.pipeline.dedup.minhash import (
        MinhashDedupBuckets,
        MinhashDedupCluster,
        MinhashDedupFilter,
        MinhashDedupSignature,
    )
    from datatrove.pipeline.readers import JsonlReader
    from datatrove.pipeline.writers import JsonlWriter

    cfg, dt = _datatrove_config(), Path(dt)

    def reader():
        return JsonlReader(str(shard_dir), glob_pattern="*.jsonl.zst", compression="zstd")

    pipeline = {
        "signatures": lambda: [
            reader(),
            MinhashDedupSignature(str(dt / "sigs"), config=cfg, language=_split_tokenizer()),
        ],
        "buckets": lambda: [MinhashDedupBuckets(str(dt / "sigs"), str(dt / "buckets"), config=cfg)],
        "cluster": lambda: [MinhashDedupCluster(str(dt / "buckets"), str(dt / "ids"), config=cfg)],
        "filter": lambda: [
            reader(),
            MinhashDedupFilter(str(dt / "ids")),
            JsonlWriter(str(dt / "out")),
        ],
    }[stage]()
    LocalPipelineExecutor(
        pipeline=pipeline,
        tasks=tasks,
        workers=1,
        logging_dir=str(dt / f"logs-{stage}"),
        skip_completed=False,
    ).run()


def run_datatrove(shards, tmp, measure):
    import datatrove  # noqa: F401  (ImportError: skip)

    shard_dir = Path(shards[0]).parent
    n = len(shards)
    for stage, tasks in [("signatures", n), ("buckets", 7), ("cluster", 1), ("filter", n)]:
        yield stage, measure("datatrove_stage", stage, shard_dir, tmp / "datatrove", tasks)


# ----------------------------------------------------------------------------- measuring


def _peak_rss_mb() -> float:
    """VmHWM of this process. (``ru_maxrss`` survives fork + exec, so a spawned child would
    report its parent's peak.)"""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _child(queue, fn_name, args):
    # Imports are not part of a stage's cost: load them before the clock starts.
    import datasketch  # noqa: F401

    import pythia_suite.data.dedup  # noqa: F401

    if fn_name.startswith("datatrove"):
        import datatrove.executor  # noqa: F401
        import datatrove.pipeline.dedup.minhash  # noqa: F401
        import datatrove.pipeline.readers  # noqa: F401
        import datatrove.pipeline.writers  # noqa: F401
    start_cpu = time.process_time()
    start = time.perf_counter()
    result = globals()[fn_name](*args)
    queue.put(
        {
            "cpu_s": time.process_time() - start_cpu,
            "wall_s": time.perf_counter() - start,
            "peak_mb": _peak_rss_mb(),
            "result": result,
        }
    )


def _measure(fn_name: str, *args) -> dict:
    ctx = multiprocessing.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=_child, args=(queue, fn_name, args))
    proc.start()
    out = queue.get()
    proc.join()
    if proc.exitcode:
        raise RuntimeError(f"{fn_name} failed with exit code {proc.exitcode}")
    return out


# ----------------------------------------------------------------------------- main


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shards", help="glob of Pile-format shards (default: build a corpus)")
    parser.add_argument("--docs", type=int, default=20_000)
    parser.add_argument("--num-shards", type=int, default=4)
    parser.add_argument("--skip-datatrove", action="store_true")
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="dedup-bench-"))
    try:
        if args.shards:
            shards = [Path(p) for p in sorted(glob.glob(args.shards))]
        else:
            shards = build_corpus(tmp / "corpus", args.docs, args.num_shards)
        num_docs, num_bytes = corpus_size(shards)
        print(f"corpus: {len(shards)} shards, {num_docs} documents, {num_bytes / 1e6:.1f} MB text")

        rows = [("import only (baseline RSS)", _measure("import_only"))]
        plain = [
            (f"no verification: {name}", m)
            for name, m in run_ours(shards, tmp / "work0", tmp / "out0", _measure, 0)
        ]
        rows += plain
        rows += [
            (f"pipeline: {name}", m)
            for name, m in run_ours(shards, tmp / "work", tmp / "out", _measure, 8)
        ]
        ours_total = {
            k: sum(m[k] for n, m in rows if n.startswith("pipeline")) for k in ("cpu_s", "wall_s")
        }
        plain_total = {k: sum(m[k] for n, m in plain) for k in ("cpu_s", "wall_s")}
        ds = _measure("datasketch_baseline", [str(p) for p in shards])
        rows.append(("datasketch MinHash+MinHashLSH", ds))
        if not args.skip_datatrove:
            try:
                rows += [(f"datatrove: {n}", m) for n, m in run_datatrove(shards, tmp, _measure)]
            except ImportError as exc:
                print(f"datatrove not run: {exc}")

        print(f"\n{'stage':40s} {'cpu s':>8s} {'wall s':>8s} {'docs/s/core':>12s} {'peak MB':>8s}")
        for name, m in rows:
            rate = (
                num_docs / m["cpu_s"]
                if m["cpu_s"] > 0.05 and "import" not in name
                else float("nan")
            )
            print(
                f"{name:40s} {m['cpu_s']:8.2f} {m['wall_s']:8.2f} {rate:12.0f} {m['peak_mb']:8.0f}"
            )
        dt_rows = [m for n, m in rows if n.startswith("datatrove")]
        totals = [
            ("pipeline total (verified)", ours_total),
            ("pipeline total (no verification)", plain_total),
            ("datasketch total", ds),
        ]
        for name, total in totals + (
            [("datatrove total", {"cpu_s": sum(m["cpu_s"] for m in dt_rows)})] if dt_rows else []
        ):
            print(f"{name:40s} {total['cpu_s']:8.2f} {'':8s} {num_docs / total['cpu_s']:12.0f}")

        plain_removed = set(map(tuple, removed_ids(tmp / "work0" / "removals.npz")))
        ours_removed = set(map(tuple, removed_ids(tmp / "work" / "removals.npz")))
        ds_removed = set(map(tuple, ds["result"]["removed"]))
        print(
            f"\nremoved: pipeline without verification {len(plain_removed)}, datasketch "
            f"{len(ds_removed)}, identical sets: {plain_removed == ds_removed}; "
            f"pipeline with verification {len(ours_removed)} "
            f"(subset of the unverified: {ours_removed <= plain_removed})"
        )
        for label, work in [("without", "work0"), ("with", "work")]:
            report = json.loads((tmp / work / "report.json").read_text())
            print(f"{label} verification: edges {json.dumps(report['edge_verification'])}")
            for kind in ("removed_vs_kept", "candidate_pairs", "rejected_pairs", "random_pairs"):
                print(f"  {kind}:", json.dumps(report["verification"][kind]))
        sig_bytes = {
            w: sum(p.stat().st_size for p in _sig_paths(tmp / w)) / num_docs
            for w in ("work0", "work")
        }
        plain_sig = next(m for n, m in plain if n.endswith("signatures"))
        plain_buckets = sum(m["cpu_s"] for n, m in plain if "bucket" in n)
        ours_buckets = sum(m["cpu_s"] for n, m in rows if n.startswith("pipeline: bucket"))
        ours_sig = next(m for n, m in rows if n == "pipeline: signatures")
        print(
            f"verification cost: signature files {sig_bytes['work0']:.0f} -> "
            f"{sig_bytes['work']:.0f} B per document; signatures {plain_sig['cpu_s']:.2f} -> "
            f"{ours_sig['cpu_s']:.2f} cpu s, buckets (all band jobs) {plain_buckets:.2f} -> "
            f"{ours_buckets:.2f} cpu s"
        )
        sweep = margin_sweep(shards, tmp / "work0")
        print(f"\nmargin sweep over {sweep['pairs']} candidate pairs of the unverified run:")
        print(f"  mean |estimate - exact|: {json.dumps(sweep['mean_abs_error'])}")
        for row in sweep["rows"]:
            print(
                f"  bits {row['bits']!s:18s} margin {row['margin']:.2f}: accepts "
                f"{row['accepted_of_above']:>10s} above, {row['accepted_of_below']:>10s} below"
            )

        sig = next(m for n, m in rows if n == "pipeline: signatures")
        band = next(m for n, m in rows if n == "pipeline: bucket (1 band)")
        clus = next(m for n, m in rows if n == "pipeline: cluster")
        filt = next(m for n, m in rows if n == "pipeline: filter")
        per_byte = {k: m["cpu_s"] / num_bytes for k, m in [("sig", sig), ("filter", filt)]}
        bands = len(BAND_JOBS)
        base_mb = rows[0][1]["peak_mb"]
        print("\nprojection for the Pile (210M documents, 825 GB, 30 shards) from the costs above:")
        print(
            f"  signatures: {per_byte['sig'] * PILE_BYTES / 3600:8.0f} core-hours by bytes "
            f"({sig['cpu_s'] / num_docs * PILE_DOCS / 3600:.0f} by documents), "
            f"{PILE_SHARDS} jobs of {per_byte['sig'] * PILE_BYTES / PILE_SHARDS / 3600:.0f} h"
        )
        print(
            f"  buckets: {band['cpu_s'] / num_docs * PILE_DOCS * bands / 3600:8.1f} core-hours "
            f"({bands} jobs), memory ~{BUCKET_BYTES_PER_DOC * PILE_DOCS / 1e9:.0f} GB per "
            f"band job (or / num_parts)"
        )
        print(
            f"  cluster: {clus['cpu_s'] / num_docs * PILE_DOCS / 3600:8.1f} core-hours "
            f"(scales with edges, not documents)"
        )
        print(f"  filter: {per_byte['filter'] * PILE_BYTES / 3600:8.0f} core-hours")
        extra = (ours_buckets - plain_buckets) / num_docs * PILE_DOCS / 3600
        print(
            f"  verification: +{(sig_bytes['work'] - sig_bytes['work0']) * PILE_DOCS / 1e9:.0f} GB "
            f"of signature files (memory-mapped, read only at candidate rows), "
            f"{extra:+.1f} core-hours over all band jobs (scales with candidate pairs)"
        )
        print(
            f"  datasketch in one process: {ds['cpu_s'] / num_docs * PILE_DOCS / 3600:.0f} "
            f"core-hours on one core, "
            f"~{(ds['peak_mb'] - base_mb) / num_docs * PILE_DOCS / 1e3:.0f} GB RAM in one process"
        )
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
