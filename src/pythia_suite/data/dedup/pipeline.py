"""All five stages in one process, for tests, benchmarks and small corpora (the workflow runs each
stage as its own job through the CLI)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from pythia_suite.data.dedup.buckets import bucket_band
from pythia_suite.data.dedup.clusters import cluster
from pythia_suite.data.dedup.filter import filter_shard
from pythia_suite.data.dedup.params import EXACT_BAND, DedupParams
from pythia_suite.data.dedup.report import SampleCheck, merge_reports
from pythia_suite.data.dedup.signatures import compute_signatures


def run_pipeline(
    shard_paths: Sequence[str | os.PathLike],
    work_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    params: DedupParams,
    *,
    num_pairs: int = 200,
) -> dict:
    """Run every stage in this process, shard ``i`` of ``shard_paths`` having index ``i``.

    Intermediate files go to ``work_dir`` (``signatures/NN.npz``, ``edges/band_B.npz``,
    ``removals.npz``, ``reports/NN.json``); deduplicated shards to ``out_dir`` under their
    input names; the merged report to ``work_dir/report.json``. Returns the merged report.
    """
    work, out = Path(work_dir), Path(out_dir)
    sig_paths, edge_paths, report_paths = [], [], []
    for i, shard in enumerate(shard_paths):
        sig_paths.append(work / "signatures" / f"{i:02d}.npz")
        compute_signatures(shard, i, sig_paths[-1], params)
    for band in [EXACT_BAND, *range(params.bands)]:
        name = "exact" if band == EXACT_BAND else f"{band:03d}"
        edge_paths.append(work / "edges" / f"band_{name}.npz")
        bucket_band(sig_paths, band, edge_paths[-1])
    removals = work / "removals.npz"
    cluster(edge_paths, removals)
    for i, shard in enumerate(shard_paths):
        report_paths.append(work / "reports" / f"{i:02d}.json")
        filter_shard(shard, i, removals, out / Path(shard).name, report_paths[-1])
    check = SampleCheck(dict(enumerate(shard_paths)), removals, edge_paths, num_pairs=num_pairs)
    return merge_reports(report_paths, work / "report.json", sample_check=check)
