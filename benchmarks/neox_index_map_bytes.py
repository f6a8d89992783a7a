"""Issue 18's figure: bytes of GPT-NeoX index maps written per segment job, preshuffled data.

Builds a synthetic preshuffled set (``--items`` items of seq_length + 1 tokens; the maps' size
depends only on the item count), then runs what a GPT-NeoX segment job does to prepare its data
prefix with the package at ``--src`` (its ``config.yaml`` beside it), twice (two segment jobs),
and counts the bytes of regular files it wrote (links excluded):

- before issue 18 (``neox_data_prefix(config, run, work_dir)``): every segment job builds the
  maps itself, for the train, valid and test names, into the run's state directory;
- after (rule ``neox_index_maps`` once per dataset, ``build_neox_index_maps``; then
  ``neox_data_prefix(config, run)`` per segment job): the rule's bytes once, the jobs' none.

The per-item bytes are then scaled to Pythia's standard Pile (146,432,000 preshuffled items:
143000 x 1024).

    python benchmarks/neox_index_map_bytes.py --src /tmp/before/src   # git archive of before
    python benchmarks/neox_index_map_bytes.py                         # this checkout
"""

import argparse
import importlib
import os
import sys
import tempfile
from pathlib import Path

import numpy as np
from neox_compat import load_neox

REPO = Path(__file__).resolve().parents[1]
PILE_ITEMS = 143000 * 1024


def regular_bytes(root: Path) -> dict[Path, tuple[int, int, int]]:
    """(size, inode, mtime) of every regular file (not a link) under ``root``."""
    out = {}
    for dirpath, _, names in os.walk(root):
        for name in names:
            path = Path(dirpath) / name
            if not path.is_symlink():
                st = path.stat()
                out[path] = (st.st_size, st.st_ino, st.st_mtime_ns)
    return out


def written(before: dict, after: dict) -> int:
    """Bytes of the files created or rewritten (new inode or mtime) between two snapshots."""
    return sum(stat[0] for path, stat in after.items() if before.get(path) != stat)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--src", type=Path, default=REPO / "src")
    parser.add_argument("--items", type=int, default=1_000_000)
    args = parser.parse_args()
    sys.path.insert(0, str(args.src.resolve()))
    cfg = importlib.import_module("pythia_suite.config")
    paths = importlib.import_module("pythia_suite.paths")
    neox = load_neox()
    from pythia_suite.data.indexed import IndexedDatasetWriter

    with tempfile.TemporaryDirectory(prefix="neox-map-bytes-") as tmp:
        root = Path(tmp)
        config = cfg.load_config([args.src.resolve().parent / "config.yaml",
                                  REPO / "config" / "mini.yaml"])  # fmt: skip
        config["paths"] = {**config["paths"], "results": str(root / "results"),
                           "state": str(root / "state")}  # fmt: skip
        config["data"]["source"] = "preshuffled"
        run = cfg.get_run(config, "pythia-0.4m")
        seq = config["model"]["seq_length"]
        prefix = Path(paths.preshuffled_prefix(config["paths"]["results"], run.variant))
        prefix.parent.mkdir(parents=True)
        with IndexedDatasetWriter(prefix) as writer:
            item = np.arange(seq + 1, dtype=np.int64) % 50000
            for _ in range(args.items):
                writer.add_document(item)
        print(f"package {args.src}; {args.items:,} preshuffled items of {seq + 1} tokens")
        rule_bytes = 0
        if hasattr(neox, "build_neox_index_maps"):  # after: the rule, once per dataset
            start = regular_bytes(root)
            maps = neox.neox_index_maps_dir(config, run.variant, run.data_seed)
            neox.build_neox_index_maps(config, run, maps)
            rule_bytes = written(start, regular_bytes(root))
            print(f"  rule neox_index_maps (once per dataset): {rule_bytes:,} bytes")
        jobs = []
        for job in (1, 2):
            start = regular_bytes(root)
            if hasattr(neox, "build_neox_index_maps"):
                neox.neox_data_prefix(config, run)
            else:
                neox.neox_data_prefix(config, run, neox.neox_work_dir(config, run) / "data")
            jobs.append(written(start, regular_bytes(root)))
            print(f"  segment job {job}: {jobs[-1]:,} bytes of index maps written")
        per_item = max(jobs[0], rule_bytes) / args.items
        print(
            f"per segment job at Pythia scale ({PILE_ITEMS:,} items): "
            f"{jobs[0] / args.items * PILE_ITEMS / 1e9:.2f} GB; once per dataset: "
            f"{rule_bytes / args.items * PILE_ITEMS / 1e9:.2f} GB ({per_item:.1f} B/item)"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
