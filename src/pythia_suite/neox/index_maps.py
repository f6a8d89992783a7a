"""The data GPT-NeoX reads: a dataset's data prefix and index maps, built once per dataset and
data seed by rule ``neox_index_maps`` and read, never written, by every segment job.

The suite's own order (``data.source: raw``: the maps of ``build-order``) or a preshuffled set
read in order (hand-built maps); the PyTorch backend's token stream either way.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from pythia_suite.atomic import atomic_directory, atomic_path, replace_symlink
from pythia_suite.neox.config import (
    index_map_seed,
    neox_data_prefix_path,
    segment_requested_samples,
    trained_samples,
)


def _alias_maps(local: Path, out_dir: Path, made, requested: Mapping[str, int], *,
                seq_length: int, seed: int) -> None:  # fmt: skip
    """Give every other split in ``requested`` the maps ``made`` under its own file names, as
    links: its evaluation is off, so GPT-NeoX finds them (and builds none) but never reads them."""
    from pythia_suite.data.order import index_map_paths

    for name, count in requested.items():
        linked = index_map_paths(local, out_dir, count, seq_length, seed, name=name)
        for path, source in zip(linked, made, strict=True):
            if path != source:
                replace_symlink(path, Path(source).name)  # stays valid when renamed


def preshuffled_index_maps(
    prefix: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    seq_length: int,
    seed: int,
    requested: Mapping[str, int],
    min_items: int = 0,
) -> str:
    """GPT-NeoX v1.0 index maps under which its ``GPT2Dataset`` reads a preshuffled set in order.

    A preshuffled item is ``seq_length + 1`` tokens; GPT-NeoX's samples are ``seq_length + 1``
    tokens at stride ``seq_length``. So each item is one document (``doc_idx`` = identity) and
    item ``k`` is sample ``2k``: ``sample_idx`` rows ``2k = (k, 0)`` and ``2k+1 = (k,
    seq_length)``, ``shuffle_idx[k] = 2k``. ``shuffle_idx`` has one padding entry more than there
    are items, so that ``len(GPT2Dataset)`` (``len(shuffle_idx) - 1``) covers every item.

    Writes ``out_dir/document.{bin,idx}`` (links to ``prefix``) and the three ``.npy`` files
    once, under the names GPT-NeoX looks for for the first dataset name in ``requested``
    (``train_0``: its sample count); every other name gets links to them (the maps do not depend
    on the count), so GPT-NeoX loads them instead of building its own. Returns the prefix to
    give GPT-NeoX. Raises ``ValueError`` naming the ``.idx`` when an item is not
    ``seq_length + 1`` tokens or there are fewer than ``min_items`` items.
    """
    from pythia_suite.data.indexed import IndexedDataset
    from pythia_suite.data.order import index_map_paths

    prefix, out_dir = Path(prefix), Path(out_dir)
    sizes = np.asarray(IndexedDataset(prefix).sizes)
    items = len(sizes)
    bad = np.flatnonzero(sizes != seq_length + 1)
    if bad.size:
        raise ValueError(
            f"{prefix}.idx: item {int(bad[0])} has {int(sizes[bad[0]])} tokens, a preshuffled "
            f"item must have seq_length + 1 = {seq_length + 1}"
        )
    if items < max(min_items, 1):
        raise ValueError(
            f"{prefix}.idx: {items} items, but training reads {min_items} (train_iters x "
            "global_batch)"
        )
    out_dir.mkdir(parents=True, exist_ok=True)
    local = out_dir / "document"
    for ext in (".bin", ".idx"):
        replace_symlink(Path(f"{local}{ext}"), Path(f"{prefix}{ext}").resolve())
    if not requested:
        return str(local)
    k = np.arange(items, dtype=np.int64)
    doc_idx = k.astype(np.int32)
    sample_idx = np.empty((2 * items, 2), dtype=np.int32)
    sample_idx[0::2, 0] = k
    sample_idx[0::2, 1] = 0
    sample_idx[1::2, 0] = k
    sample_idx[1::2, 1] = seq_length
    shuffle_idx = np.empty(items + 1, dtype=np.uint32 if 2 * items < 2**32 - 1 else np.int64)
    shuffle_idx[:items] = 2 * k
    shuffle_idx[items] = 2 * (items - 1)  # padding: never read (len = items)
    first, count = next(iter(requested.items()))
    made = index_map_paths(local, out_dir, count, seq_length, seed, name=first)
    for path, array in zip(made, (doc_idx, sample_idx, shuffle_idx), strict=True):
        with atomic_path(path) as tmp, open(tmp, "wb") as fh:  # a file: np.save adds no .npy
            np.save(fh, array, allow_pickle=False)
    _alias_maps(local, out_dir, made, requested, seq_length=seq_length, seed=seed)
    return str(local)


def _suite_index_maps(dataset_prefix: str, order_dir: str, out_dir: Path, *,
                      requested: Mapping[str, int], seq_length: int, seed: int) -> str:  # fmt: skip
    """Link the dataset and the suite's own ``train_0`` index maps (``build-order``) into
    ``out_dir``, where GPT-NeoX finds them beside the data prefix and loads them instead of
    writing its own; the other names in ``requested`` link to the same maps (never read: the
    segments' evaluation is off). Returns the prefix to give GPT-NeoX."""
    from pythia_suite.data.order import index_map_paths

    out_dir.mkdir(parents=True, exist_ok=True)
    local = out_dir / Path(dataset_prefix).name
    for ext in (".bin", ".idx"):
        replace_symlink(Path(f"{local}{ext}"), Path(f"{dataset_prefix}{ext}").resolve())
    count = requested["train_0"]
    theirs = index_map_paths(dataset_prefix, order_dir, count, seq_length, seed)
    ours = index_map_paths(local, out_dir, count, seq_length, seed)
    for src, dst in zip(theirs, ours, strict=True):
        if not src.is_file():
            raise FileNotFoundError(f"index map not found: {src} (rule build_order)")
        replace_symlink(dst, Path(src).resolve())
    _alias_maps(local, out_dir, ours, requested, seq_length=seq_length, seed=seed)
    return str(local)


def build_neox_index_maps(config: Mapping, run, out_dir: str | os.PathLike) -> str:
    """Rule ``neox_index_maps``: the data prefix GPT-NeoX reads for ``run``'s dataset and data
    seed, with every index map its segments ask for, built once into ``out_dir`` (renamed into
    place when complete): the Megatron dataset with the suite's own maps (``data.source: raw``,
    ``idxmaps``), or the preshuffled set, already in order, with hand-built ones. The PyTorch
    backend's token stream either way (both from ``data.source.training_data``). Returns the
    prefix (``neox_data_prefix_path``)."""
    from pythia_suite.data.source import training_data

    tokens = training_data(config, run)
    requested = segment_requested_samples(config)
    with atomic_directory(out_dir) as tmp:
        if tokens.order_dir is None:
            preshuffled_index_maps(
                tokens.dataset_prefix,
                tmp,
                seq_length=tokens.seq_length,
                seed=index_map_seed(config, run),
                requested=requested,
                min_items=trained_samples(config),
            )
        else:
            _suite_index_maps(
                tokens.dataset_prefix,
                tokens.order_dir,
                tmp,
                requested={**requested, "train_0": tokens.num_samples},
                seq_length=tokens.seq_length,
                seed=tokens.data_seed,
            )
    return str(Path(out_dir) / Path(tokens.dataset_prefix).name)


def neox_data_prefix(config: Mapping, run) -> str:
    """The data prefix a run's GPT-NeoX segment reads, as rule ``neox_index_maps`` left it: a
    segment job writes no index map. Raises ``FileNotFoundError`` naming the first missing file
    (its dataset, or a map for a split GPT-NeoX asks for)."""
    from pythia_suite.data.order import index_map_paths
    from pythia_suite.data.source import training_data

    prefix = neox_data_prefix_path(config, run)
    tokens = training_data(config, run)
    requested = segment_requested_samples(config)
    if tokens.order_dir is not None:
        requested["train_0"] = tokens.num_samples
    seed = index_map_seed(config, run)
    wanted = [Path(prefix + ".bin"), Path(prefix + ".idx")]
    for name, count in requested.items():
        wanted += index_map_paths(prefix, Path(prefix).parent, count, tokens.seq_length, seed,
                                  name=name)  # fmt: skip
    for path in wanted:
        if not path.is_file():  # follows the links
            raise FileNotFoundError(f"GPT-NeoX data not found: {path} (rule neox_index_maps)")
    return prefix
