"""The dedup stages as the workflow runs them: one call per rule, each with its provenance record.

Each function takes `settings` (the config's `data.dedup`), runs one stage and writes the
record beside its output; the stage's own errors (`DedupFileError`, naming the file) pass through
and no record is written.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

from pythia_suite.data.dedup.buckets import bands_of_group, bucket_band
from pythia_suite.data.dedup.clusters import cluster
from pythia_suite.data.dedup.filter import filter_shard
from pythia_suite.data.dedup.params import DedupParams
from pythia_suite.data.dedup.report import SampleCheck, merge_reports
from pythia_suite.data.dedup.signatures import compute_signatures
from pythia_suite.provenance import Recorder


def signatures_with_record(settings: Mapping, shard: str, shard_index: int, output: str) -> None:
    """Rule dedup_signatures: one shard's MinHash band hashes."""
    recorder = Recorder(Path(output), "dedup-signatures", settings, [Path(shard)])
    compute_signatures(shard, shard_index, output, DedupParams.from_config(settings))
    recorder.write()


def buckets_with_record(
    settings: Mapping, signatures: Sequence[str], band_group: int, output: str
) -> None:
    """Rule dedup_buckets: the candidate pairs of one group of bands."""
    params = DedupParams.from_config(settings)
    bands = bands_of_group(params.bands, settings["band_groups"], band_group)
    recorder = Recorder(Path(output), "dedup-edges", settings, [Path(p) for p in signatures])
    bucket_band(signatures, bands, output)
    recorder.write()


def cluster_with_record(settings: Mapping, edges: Sequence[str], output: str) -> None:
    """Rule dedup_cluster: duplicate clusters -> the documents to remove."""
    recorder = Recorder(Path(output), "dedup-removals", settings, [Path(p) for p in edges])
    cluster(edges, output)
    recorder.write()


def filter_with_record(
    settings: Mapping, shard: str, shard_index: int, removals: str, output: str, report: str
) -> None:
    """Rule dedup_filter: one shard without its duplicates, and its report."""
    inputs = [Path(shard), Path(removals)]
    recorder = Recorder(Path(output), "corpus-shard-deduped", settings, inputs)
    filter_shard(shard, shard_index, removals, output, report)
    recorder.write()


def report_with_record(
    settings: Mapping,
    reports: Sequence[str],
    shards: Sequence[str],
    removals: str,
    edges: Sequence[str],
    output: str,
) -> None:
    """Rule dedup_report: the shards' reports merged, with a sampled exact-Jaccard check."""
    check = SampleCheck.from_shard_names(shards, removals, edges)
    inputs = [Path(p) for p in (*reports, *edges)]
    recorder = Recorder(Path(output), "dedup-report", settings, inputs)
    merge_reports(reports, output, sample_check=check)
    recorder.write()
