"""Stage 3, once: union-find over the edges of all bands; in each cluster the first document in
(shard, line) order is kept and the others are removed."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from pythia_suite.data.dedup.files import check_same_params, read_npz, write_npz
from pythia_suite.data.dedup.params import EXACT_BAND, FORMAT_VERSION, DedupFileError


def _components(u: np.ndarray, v: np.ndarray, n: int) -> np.ndarray:
    """Root of every node 0..n-1 of the graph with edges (u, v): the smallest node of its component.

    Vectorised union-find: hook the larger root of each edge under the smaller one, then
    compress paths by pointer jumping, until no edge joins two roots. A root only ever gets a
    smaller parent, so each component's final root is its smallest node.
    """
    parent = np.arange(n, dtype=np.int64)
    while True:
        pu, pv = parent[u], parent[v]
        differ = pu != pv
        if not differ.any():
            return parent
        lo, hi = np.minimum(pu[differ], pv[differ]), np.maximum(pu[differ], pv[differ])
        np.minimum.at(parent, hi, lo)
        while True:
            grand = parent[parent]
            if np.array_equal(grand, parent):
                break
            parent = grand


def _check_coverage(edge_paths: Sequence[Path], metas: Sequence[dict], num_bands: int) -> None:
    """Refuse a band set with gaps: every band and the exact band, every part, exactly once."""
    seen: dict[tuple[int, int, int], Path] = {}
    for path, meta in zip(edge_paths, metas, strict=True):
        for b in meta["bands"]:
            key = (b, meta["part"], meta["num_parts"])
            if key in seen:
                raise DedupFileError(path, f"band {b} part {key[1]} also in {seen[key]}")
            seen[key] = path
    for b in [EXACT_BAND, *range(num_bands)]:
        parts = {(p, n) for (bb, p, n) in seen if bb == b}
        splits = {n for _, n in parts}
        if len(splits) != 1 or {p for p, _ in parts} != set(range(next(iter(splits)))):
            name = "the exact band" if b == EXACT_BAND else f"band {b}"
            raise DedupFileError(
                edge_paths[0].parent,
                f"edge files do not cover {name} exactly once (parts found: {sorted(parts)})",
            )


def cluster(edge_paths: Sequence[str | os.PathLike], out_path: str | os.PathLike) -> dict:
    """Union the candidate pairs of all bands into clusters and decide which documents go.

    In every cluster the document first in (shard, line) order is kept and the others are
    removed. The edge files must cover every band and :data:`EXACT_BAND` (every part) exactly
    once, and share parameters and shards.

    The output (``.npz``) holds ``removed`` (uint64 document ids, sorted) and ``kept_as``
    (the id of the document kept in each removed document's cluster), and ``meta.json`` with
    the parameters, shards and counts (``edge_verification``: the edge files' verification
    counts summed over bands). Returns the meta dict.

    Raises:
        DedupFileError: an edge file is missing or corrupt, a band or part is missing or
            repeated, or the files disagree on parameters or shards.
    """
    edge_paths = [Path(p) for p in edge_paths]
    if not edge_paths:
        raise ValueError("no edge files given")
    metas, srcs, dsts = [], [], []
    params: dict | None = None
    for path in edge_paths:
        meta, arrays = read_npz(path, "edges", ["src", "dst"])
        params = check_same_params(path, meta, params)
        if metas and meta["shards"] != metas[0]["shards"]:
            raise DedupFileError(path, "built from other shards than " + str(edge_paths[0]))
        metas.append(meta)
        srcs.append(arrays["src"])
        dsts.append(arrays["dst"])
    _check_coverage(edge_paths, metas, params["bands"])

    src, dst = np.concatenate(srcs), np.concatenate(dsts)
    del srcs, dsts
    nodes = np.unique(np.concatenate([src, dst]))  # sorted: node order == (shard, line) order
    roots = _components(np.searchsorted(nodes, src), np.searchsorted(nodes, dst), len(nodes))
    is_removed = roots != np.arange(len(nodes))
    meta = {
        "kind": "removals",
        "version": FORMAT_VERSION,
        "params": params,
        "shards": metas[0]["shards"],
        "num_edges": int(len(src)),
        "num_clusters": int(len(nodes) - is_removed.sum()),
        "num_docs_in_clusters": int(len(nodes)),
        "num_removed": int(is_removed.sum()),
        "edge_verification": {
            "bits": params["verify_bits"],
            "min_jaccard": params["threshold"] - params["verify_margin"],
            **{
                k: sum(m["verification"][k] for m in metas)
                for k in ("compared", "accepted", "rejected", "unverified")
            },
        },
    }
    write_npz(out_path, meta, {"removed": nodes[is_removed], "kept_as": nodes[roots[is_removed]]})
    return meta
