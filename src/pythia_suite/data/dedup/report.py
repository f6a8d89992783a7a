"""Stage 5, once: the per-shard reports merged, with the clusters' counts and a verification of
the decisions against exact Jaccard similarity on sampled pairs."""

from __future__ import annotations

import os
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from pythia_suite.data.dedup.files import check_same_params, read_npz, write_json
from pythia_suite.data.dedup.minhash import exact_jaccard
from pythia_suite.data.dedup.params import FORMAT_VERSION, LINE_BITS, DedupFileError, DedupParams
from pythia_suite.data.shards import iter_documents
from pythia_suite.jsonfile import JSONFileError, read_json


@dataclass(frozen=True)
class SampleCheck:
    """What :func:`merge_reports` needs to verify decisions against exact Jaccard similarity.

    Attributes:
        shard_paths: input shard path per shard index.
        removals_path: the output of :func:`cluster`.
        edge_paths: the outputs of :func:`bucket_band` (candidate pairs are sampled from them).
        num_pairs: pairs sampled of each kind (candidate, removed-vs-kept, random).
        seed: sampling seed.
    """

    shard_paths: Mapping[int, str | os.PathLike]
    removals_path: str | os.PathLike
    edge_paths: Sequence[str | os.PathLike] = field(default_factory=tuple)
    num_pairs: int = 200
    seed: int = 0

    @classmethod
    def from_shard_names(
        cls,
        shard_paths: Sequence[str | os.PathLike],
        removals_path: str | os.PathLike,
        edge_paths: Sequence[str | os.PathLike],
    ) -> SampleCheck:
        """The check of shards named by their index, as the workflow names them (``NN.jsonl.zst``
        is shard NN).

        Raises:
            ValueError: a file name does not start with an integer.
        """
        return cls(
            shard_paths={int(Path(p).name.split(".")[0]): p for p in shard_paths},
            removals_path=removals_path,
            edge_paths=edge_paths,
        )


def _load_texts(
    shard_paths: Mapping[int, str | os.PathLike],
    ids: set[int],
    ordinals: set[tuple[int, int]],
) -> tuple[dict[int, str], dict[tuple[int, int], int]]:
    """Read each needed shard once: texts of packed ``ids`` and of ``(shard, k)`` = k-th document.

    Returns ``(texts by packed id, packed id by (shard, k))``; the latter's texts are in the
    former.
    """
    by_shard: dict[int, tuple[set[int], set[int]]] = {}
    for doc_id in ids:
        by_shard.setdefault(doc_id >> LINE_BITS, (set(), set()))[0].add(
            doc_id & ((1 << LINE_BITS) - 1)
        )
    for shard, k in ordinals:
        by_shard.setdefault(shard, (set(), set()))[1].add(k)
    texts: dict[int, str] = {}
    id_of: dict[tuple[int, int], int] = {}
    for shard, (lines, ks) in sorted(by_shard.items()):
        if shard not in shard_paths:
            raise ValueError(f"sample check: no path given for shard {shard}")
        for k, (line_no, doc) in enumerate(iter_documents(shard_paths[shard])):
            doc_id = (shard << LINE_BITS) | line_no
            if k in ks:
                id_of[(shard, k)] = doc_id
            if line_no in lines or k in ks:
                texts[doc_id] = doc["text"]
        missing_lines = sorted(ln for ln in lines if (shard << LINE_BITS) | ln not in texts)
        missing_ks = sorted(k for k in ks if (shard, k) not in id_of)
        if missing_lines or missing_ks:
            raise DedupFileError(
                shard_paths[shard],
                f"shard changed since deduplication: lines {missing_lines[:5]} or documents "
                f"number {missing_ks[:5]} are absent",
            )
    return texts, id_of


def _summarise(jaccards: list[float], threshold: float) -> dict:
    above = sum(j >= threshold for j in jaccards)
    return {
        "pairs": len(jaccards),
        "above_threshold": above,
        "below_threshold": len(jaccards) - above,
        "rate_above": above / len(jaccards) if jaccards else None,
        "min_jaccard": min(jaccards) if jaccards else None,
    }


def _sample(rng: random.Random, items: Sequence, n: int) -> list:
    return [items[i] for i in sorted(rng.sample(range(len(items)), min(n, len(items))))]


def _sample_check(check: SampleCheck) -> dict:
    """Exact Jaccard of sampled pairs vs the decision (duplicate or not)."""
    meta, arrays = read_npz(check.removals_path, "removals", ["removed", "kept_as"])
    params = DedupParams(**meta["params"])
    rng = random.Random(check.seed)
    removed, kept_as = arrays["removed"].tolist(), arrays["kept_as"].tolist()
    root = dict(zip(removed, kept_as, strict=True))
    removal_pairs = _sample(rng, list(zip(removed, kept_as, strict=True)), check.num_pairs)

    edges: set[tuple[int, int]] = set()
    rejected: set[tuple[int, int]] = set()
    for path in check.edge_paths:
        _, e = read_npz(path, "edges", ["src", "dst", "rejected_src", "rejected_dst"])
        edges.update(zip(e["src"].tolist(), e["dst"].tolist(), strict=True))
        rejected.update(zip(e["rejected_src"].tolist(), e["rejected_dst"].tolist(), strict=True))
    candidate_pairs = _sample(rng, sorted(edges), check.num_pairs)
    # Rejected in one band but accepted in another: an edge, not a rejection.
    rejected_pairs = _sample(rng, sorted(rejected - edges), check.num_pairs)

    # Random pairs: uniform over all documents, drawn as (shard, k-th document of the shard).
    population = [
        (int(index), k)
        for index, record in sorted(meta["shards"].items(), key=lambda kv: int(kv[0]))
        for k in range(record["num_docs"])
    ]
    random_ordinals = [tuple(rng.sample(population, 2)) for _ in range(check.num_pairs)]
    random_ordinals = random_ordinals if len(population) >= 2 else []

    texts, id_of = _load_texts(
        check.shard_paths,
        {i for pair in removal_pairs + candidate_pairs + rejected_pairs for i in pair},
        {o for pair in random_ordinals for o in pair},
    )
    random_pairs = [(id_of[a], id_of[b]) for a, b in random_ordinals]

    def jaccards(pairs: list[tuple[int, int]]) -> list[float]:
        return [exact_jaccard(texts[a], texts[b], params.ngram) for a, b in pairs]

    above = [j >= params.threshold for j in jaccards(random_pairs)]
    same = [root.get(a, a) == root.get(b, b) for a, b in random_pairs]
    return {
        "threshold": params.threshold,
        "removed_vs_kept": _summarise(jaccards(removal_pairs), params.threshold),
        "candidate_pairs": _summarise(jaccards(candidate_pairs), params.threshold),
        "rejected_pairs": _summarise(jaccards(rejected_pairs), params.threshold),
        "random_pairs": {
            "pairs": len(random_pairs),
            "above_threshold": sum(above),
            "decided_duplicate": sum(same),
            "kept_although_above_threshold": sum(
                a and not d for a, d in zip(above, same, strict=True)
            ),
            "removed_although_below_threshold": sum(
                d and not a for a, d in zip(above, same, strict=True)
            ),
        },
    }


def _read_filter_report(path: Path) -> dict:
    """The per-shard report of :func:`filter_shard` in ``path``.

    Raises:
        DedupFileError: the file is missing, not a JSON object, or not a filter report.
    """
    try:
        report = read_json(path, kind=dict)
    except (OSError, JSONFileError) as exc:
        reason = exc.reason if isinstance(exc, JSONFileError) else exc
        raise DedupFileError(path, f"unreadable filter report: {reason}") from None
    if report.get("kind") != "filter_report":
        raise DedupFileError(path, f"not a filter report (kind={report.get('kind')!r})")
    return report


def _sum_filter_reports(
    report_paths: Sequence[str | os.PathLike],
) -> tuple[dict | None, list[dict], dict[str, int], dict[str, dict[str, int]]]:
    """``(params, shards, totals, per_set)`` of the per-shard reports, summed.

    Raises:
        DedupFileError: a report is unreadable (see :func:`_read_filter_report`), has other
            parameters than the rest, or two reports are of the same shard.
    """
    shards, per_set, params = [], {}, None
    totals = {"docs_in": 0, "docs_out": 0, "bytes_in": 0, "bytes_out": 0}
    for path in map(Path, report_paths):
        report = _read_filter_report(path)
        params = check_same_params(path, report, params)
        if any(s["index"] == report["shard"]["index"] for s in shards):
            raise DedupFileError(path, f"second report for shard {report['shard']['index']}")
        shards.append(
            {
                **report["shard"],
                "docs_in": report["docs_in"],
                "docs_out": report["docs_out"],
                "output": report["output"],
            }
        )
        for key in totals:
            totals[key] += report[key]
        for name, stats in report["per_set"].items():
            merged = per_set.setdefault(name, dict.fromkeys(stats, 0))
            for key, value in stats.items():
                merged[key] += value
    return params, shards, totals, per_set


def merge_reports(
    report_paths: Sequence[str | os.PathLike],
    out_path: str | os.PathLike,
    sample_check: SampleCheck | None = None,
) -> dict:
    """Merge per-shard filter reports into one JSON report, optionally with a verification.

    The report has documents and text bytes in/out, removals per ``pile_set_name``, the
    cluster counts and the candidate-pair verification counts (``clusters``,
    ``edge_verification``; with ``sample_check``), and ``verification``: for sampled removed
    documents paired with the document kept in their cluster, for sampled edges
    (``candidate_pairs``), for sampled pairs that edge verification rejected
    (``rejected_pairs``: its false rejections are those above the threshold) and for random
    pairs, how many have exact shingle Jaccard at/above the threshold. Returns the report.

    Raises:
        DedupFileError: a report is missing, not a JSON object, of the wrong kind, with other
            parameters than the rest, or two reports are of the same shard.
    """
    params, shards, totals, per_set = _sum_filter_reports(report_paths)
    merged_report = {
        "kind": "dedup_report",
        "version": FORMAT_VERSION,
        "params": params,
        **totals,
        "docs_removed": totals["docs_in"] - totals["docs_out"],
        "removed_fraction": (totals["docs_in"] - totals["docs_out"]) / max(totals["docs_in"], 1),
        "per_set": {k: per_set[k] for k in sorted(per_set)},
        "shards": sorted(shards, key=lambda s: s["index"]),
    }
    if sample_check is not None:
        removals_meta, _ = read_npz(sample_check.removals_path, "removals", [])
        merged_report["clusters"] = {
            k: removals_meta[k]
            for k in ("num_clusters", "num_docs_in_clusters", "num_removed", "num_edges")
        }
        merged_report["edge_verification"] = removals_meta["edge_verification"]
        merged_report["verification"] = _sample_check(sample_check)
    write_json(out_path, merged_report)
    return merged_report
