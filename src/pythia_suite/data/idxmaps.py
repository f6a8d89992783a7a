"""Pythia's pre-tokenized Pile (``data.source: idxmaps``): fetch the shards, verify, unshard.

The pythia README's reproduction route publishes the tokenized deduplicated Pile as one Megatron
dataset (``.idx`` with real document boundaries, one item per document) whose ``.bin`` is cut
into byte shards: ``EleutherAI/pythia_deduped_pile_idxmaps`` holds
``pile_0.87_deduped_text_document-00000-of-00082.bin`` ... ``-00082-of-00082.bin`` (83 shards;
the ``of`` number is the last index, as ``utils/shard_memmap.py`` writes it) beside
``pile_0.87_deduped_text_document.idx``. ``utils/unshard_memmap.py`` concatenates the shards in
index order; every shard but the last has the same size. Its sha256s are
``utils/shard_hashes.txt``, and the README gives the sha256 of the unsharded ``.bin``; both
live in config.yaml (``data.idxmaps.deduped``). The README names no standard counterpart.

* :func:`shard_names` lists a variant's files from its config entry (stem, shard count).
* :func:`file_source` says where a file is fetched from (a local directory or the Hub); the
  fetch itself is ``shards.fetch_shard`` (resumable, sha256 checked).
* :func:`unshard` writes the one dataset a run's order is built over (``order.build_index_maps``
  with its data seed, as for ``data.source: raw``).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path

from pythia_suite.atomic import atomic_paths
from pythia_suite.data.indexed import IndexedDataset, IndexFormatError
from pythia_suite.hashing import sha256_file

__all__ = ["IdxmapsError", "file_source", "shard_names", "unshard"]

_COPY_BUFFER = 16 << 20


class IdxmapsError(ValueError):
    """The pre-tokenized Pile's files are inconsistent; the message names the file."""


def shard_names(entry: Mapping) -> list[str]:
    """The files of one variant's set, shards in index order then the ``.idx``:
    ``{stem}-{i:05d}-of-{shards - 1:05d}.bin`` for every shard, and ``{stem}.idx``."""
    stem, count = entry["stem"], int(entry["shards"])
    last = count - 1
    return [f"{stem}-{i:05d}-of-{last:05d}.bin" for i in range(count)] + [f"{stem}.idx"]


def file_source(entry: Mapping, name: str, revision: str, hub_url: str) -> str:
    """Where file ``name`` comes from: ``{path}/{name}`` when the entry names a local
    directory (e.g. a git-lfs clone of the repo), else its Hub download URL
    ``{hub_url}/datasets/{repo}/resolve/{revision}/{name}``."""
    if entry.get("path"):
        return os.path.join(entry["path"], name)
    return f"{hub_url.rstrip('/')}/datasets/{entry['repo']}/resolve/{revision}/{name}"


def _check_shard_sizes(shards: Sequence[Path]) -> None:
    """Every shard but the last has the first shard's size, the last no more (what
    ``unshard_memmap.py`` assumes when it places shard i at i x the first shard's size)."""
    sizes = [path.stat().st_size for path in shards]
    for path, size in zip(shards[:-1], sizes[:-1], strict=True):
        if size != sizes[0]:
            raise IdxmapsError(f"{path}: {size} bytes, shard 0 ({shards[0].name}) has {sizes[0]}")
    if sizes[-1] > sizes[0]:
        raise IdxmapsError(f"{shards[-1]}: last shard ({sizes[-1]} bytes) larger than shard 0")


def unshard(
    shards: Sequence[str | os.PathLike],
    idx: str | os.PathLike,
    out_prefix: str | os.PathLike,
    *,
    bin_sha256: str | None = None,
) -> dict:
    """Concatenate ``shards`` (in the order given: index order) into ``{out_prefix}.bin`` and
    copy ``idx`` to ``{out_prefix}.idx``; return ``{"bin_sha256", "documents", "tokens"}``.

    Checks, each naming the file: the shard sizes (equal but the last, no larger); that the
    ``.idx`` describes exactly the unsharded bytes (``IndexedDataset`` validation); and, with
    ``bin_sha256``, the unsharded ``.bin``'s sha256. Both files are written under temporary
    names and renamed only once every check passed (``.bin`` first), so a failure leaves
    nothing that looks complete. Raises ``IdxmapsError``.
    """
    shards = [Path(p) for p in shards]
    if not shards:
        raise IdxmapsError(f"{idx}: no shards given")
    _check_shard_sizes(shards)
    out_prefix = Path(out_prefix)
    out_files = (Path(f"{out_prefix}.bin"), Path(f"{out_prefix}.idx"))
    with atomic_paths(*out_files, tmp_stem=out_prefix) as (tmp_bin, tmp_idx):
        tmp_prefix = tmp_bin.with_suffix("")
        with open(tmp_bin, "wb") as out:
            for shard in shards:
                with open(shard, "rb") as src:
                    shutil.copyfileobj(src, out, _COPY_BUFFER)
        shutil.copyfile(idx, tmp_idx)
        try:
            dataset = IndexedDataset(tmp_prefix)
        except IndexFormatError as err:
            raise IdxmapsError(
                f"{idx}: does not describe the {len(shards)} unsharded shards: {err.reason}"
            ) from None
        stats = {"documents": len(dataset.doc_idx) - 1, "tokens": dataset.num_tokens}
        del dataset
        actual = sha256_file(tmp_bin)
        if bin_sha256 is not None and actual != bin_sha256.lower():
            raise IdxmapsError(
                f"{out_prefix}.bin: sha256 of the unsharded file is {actual}, expected "
                f"{bin_sha256} (nothing written)"
            )
    return {"bin_sha256": actual, **stats}
