"""Rate of ``idxmaps.unshard`` (copy, index check, sha256) and of the provenance re-hash.

Input: a synthetic Megatron dataset of ``--gb`` GB (uint16 tokens, documents of 1-4000 tokens),
cut into ``--shards`` byte shards in the published layout (``STEM-NNNNN-of-LLLLL.bin`` + ``.idx``)
in a temporary directory (``--dir``, default the system's; needs ~3 x ``--gb`` free).

Measured, wall time and GB/s of the unsharded ``.bin``:
  * ``unshard`` end to end (concatenate the shards, validate the ``.idx`` against them, sha256
    of the result), as ``pythia-suite unshard-idxmaps`` runs it;
  * ``sha256_file`` of the result alone (the provenance record hashes the ``.bin`` once more);
  * the projection of both to the deduped set's size (83 shards, 82 of 5,000,000,000 bytes plus
    the last, from the pythia README route; the last shard's size is not published, so the
    projection uses 82.5 shards' worth).

A file this small sits in the page cache: the rates are what the CPU allows (a lower bound on
the real run's time), not what a cluster's disks give.

Run: ``python benchmarks/idxmaps_unshard.py [--gb 1] [--shards 8]``.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np

from pythia_suite.data.idxmaps import shard_names, unshard
from pythia_suite.data.indexed import IndexedDatasetWriter
from pythia_suite.hashing import sha256_file

DEDUPED_BYTES = 82.5 * 5_000_000_000
STEM = "synthetic_text_document"


def write_dataset(prefix: Path, n_bytes: int) -> None:
    rng = np.random.default_rng(0)
    sizes = rng.integers(1, 4000, size=n_bytes // 2 // 2000 + 1)
    sizes = sizes[np.cumsum(sizes) <= n_bytes // 2]
    tokens = rng.integers(0, 50277, size=int(sizes.sum()), dtype=np.uint16)
    with IndexedDatasetWriter(prefix, np.uint16) as writer:
        writer.add_documents(tokens, sizes)


def write_shards(prefix: Path, out: Path, count: int) -> list[Path]:
    """The published layout: ``count`` shards (the last shorter), then the .idx."""
    data = Path(f"{prefix}.bin").read_bytes()
    shard_bytes = len(data) // (count - 1) if count > 1 else len(data) + 1
    names = shard_names({"stem": STEM, "shards": count})
    out.mkdir()
    for i, name in enumerate(names[:-1]):
        (out / name).write_bytes(data[i * shard_bytes : (i + 1) * shard_bytes])
    (out / names[-1]).write_bytes(Path(f"{prefix}.idx").read_bytes())
    return [out / name for name in names]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--gb", type=float, default=1.0)
    parser.add_argument("--shards", type=int, default=8)
    parser.add_argument("--dir", default=None)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        tmp = Path(tmp)
        write_dataset(tmp / STEM, int(args.gb * 1e9))
        files = write_shards(tmp / STEM, tmp / "hub", args.shards)
        Path(f"{tmp / STEM}.bin").unlink()  # keep the shards and the output only
        started = time.perf_counter()
        stats = unshard(files[:-1], files[-1], tmp / "out" / STEM)
        unshard_s = time.perf_counter() - started
        size = Path(f"{tmp / 'out' / STEM}.bin").stat().st_size
        started = time.perf_counter()
        sha256_file(f"{tmp / 'out' / STEM}.bin")
        hash_s = time.perf_counter() - started
    result = {
        "bin_bytes": size,
        "documents": stats["documents"],
        "shards": args.shards,
        "unshard_s": round(unshard_s, 2),
        "unshard_gb_per_s": round(size / unshard_s / 1e9, 3),
        "rehash_s": round(hash_s, 2),
        "rehash_gb_per_s": round(size / hash_s / 1e9, 3),
        "projected_deduped_min": round(DEDUPED_BYTES * (unshard_s + hash_s) / size / 60, 1),
    }
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
