"""Where a run's tokens come from, for every ``data.source``: the one place that asks.

``data.source`` is one of:

* ``raw``: Pile-format shards -> (dedup) -> tokenize -> one Megatron dataset per variant; the
  run's order is built over it with its data seed (``build-order``).
* ``idxmaps``: Pythia's pre-tokenized Pile (``data.idxmaps``), fetched, verified and unsharded
  into the same dataset path; the run's order is built as for ``raw``.
* ``preshuffled``: Pythia's published samples, already in data seed 1234's order; no order is
  built, item ``k`` is sample ``k``.

Use :func:`training_data` (config, run) -> :class:`TrainingData` for paths, workflow inputs,
provenance inputs, the token stream and the config values that fix it; and
:func:`check_data_seed` to refuse a run whose data seed the source (or the backend) cannot give.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from pythia_suite import paths
from pythia_suite.errors import ConfigError

__all__ = ["SOURCES", "TrainingData", "check_data_seed", "idxmaps_entry", "training_data"]

SOURCES = ("raw", "idxmaps", "preshuffled")


@dataclass(frozen=True)
class TrainingData:
    """What a run reads.

    Attributes:
        source: ``raw``, ``idxmaps`` or ``preshuffled``.
        dataset_prefix: the Megatron dataset read (``PREFIX.bin`` + ``PREFIX.idx``): the
            variant's dataset (``raw``, ``idxmaps``: one item per document) or the preshuffled
            set (one item per training sample).
        order_dir: the run's index maps (``doc_idx``, ``sample_idx``, ``shuffle_idx``, built by
            ``build-order`` with ``data_seed``); None for ``preshuffled``, already in order.
        data_seed: the run's data seed.
        num_samples, seq_length: GPT-NeoX's requested samples and sequence length.
        hub_repo, hub_revision: the Hub dataset the tokens come from (None for ``raw``, or an
            ``idxmaps`` set read from a local ``path``).
        description: one sentence on a Hub dataset's tokens for the model card (None for
            ``raw``, whose card describes the shards).
        fingerprint: the config values that determine the token stream (rerun triggers).
    """

    source: str
    dataset_prefix: str
    order_dir: str | None
    data_seed: int
    num_samples: int
    seq_length: int
    hub_repo: str | None = None
    hub_revision: str | None = None
    description: str | None = None
    fingerprint: dict = field(default_factory=dict, compare=False)

    @property
    def has_documents(self) -> bool:
        """Whether the dataset's items are documents (their ids mean something): not for
        ``preshuffled``, whose items are samples."""
        return self.order_dir is not None

    def workflow_inputs(self) -> list[str]:
        """The files a training segment reads: the dataset's ``.bin`` and ``.idx``, and the
        order directory when there is one."""
        files = [f"{self.dataset_prefix}.bin", f"{self.dataset_prefix}.idx"]
        return files + ([self.order_dir] if self.order_dir else [])

    def recorded_inputs(self) -> list[Path]:
        """The artifacts a checkpoint's provenance record names: the ``.bin`` (its record
        covers the ``.idx`` and where it came from) and the order directory."""
        return [Path(f"{self.dataset_prefix}.bin")] + (
            [Path(self.order_dir)] if self.order_dir else []
        )

    def samples(self):
        """The token stream: ``order.SampleBatches`` (``samples[i]`` = global sample ``i``,
        ``batch(step, global_batch)``). Builds the index maps in ``order_dir`` if absent.
        Raises what the readers raise for missing or damaged files."""
        if self.order_dir is None:
            from pythia_suite.data.preshuffled import PreshuffledSamples

            return PreshuffledSamples(self.dataset_prefix, seq_length=self.seq_length)
        from pythia_suite.data.order import GPTNeoXSamples

        return GPTNeoXSamples(
            self.dataset_prefix, self.order_dir, self.num_samples, self.seq_length, self.data_seed
        )


def idxmaps_entry(config: Mapping, variant: str) -> Mapping:
    """``data.idxmaps.<variant>``. Raises ``ConfigError`` naming the key when the variant has
    no pre-tokenized set configured (the pythia README publishes only the deduped one)."""
    entry = config["data"]["idxmaps"].get(variant)
    if not entry or not (entry.get("repo") or entry.get("path")):
        raise ConfigError(
            f"data.idxmaps.{variant}: no pre-tokenized set configured for this variant (give "
            "repo or path, stem and shards); the pythia README publishes only the deduped one"
        )
    return entry


def training_data(config: Mapping, run) -> TrainingData:
    """The data a run trains on, under the configured ``data.source``.

    Raises ``ConfigError`` naming the key when the source has nothing configured for the run's
    variant (no preshuffled repo, no idxmaps set, no raw shard).
    """
    from pythia_suite.data.idxmaps import shard_names

    data = config["data"]
    results = config["paths"]["results"]
    source = data["source"]
    common = {
        "source": source,
        "data_seed": run.data_seed,
        "num_samples": num_samples(config),
        "seq_length": config["model"]["seq_length"],
    }
    fingerprint = {"source": source, "tokenizer": data["tokenizer"], "seed": run.data_seed}
    if source == "preshuffled":
        repo = data["preshuffled"].get(run.variant)
        if not repo:
            raise ConfigError(f"data.preshuffled.{run.variant}: no repository configured")
        return TrainingData(
            dataset_prefix=paths.preshuffled_prefix(results, run.variant),
            order_dir=None,
            hub_repo=repo,
            hub_revision=data["preshuffled"]["revision"],
            description=(
                f"Trained on Pythia's published token order, `{repo}` (revision "
                f"`{data['preshuffled']['revision']}`): already tokenized and shuffled, consumed "
                "in its stored order, so every size sees the same data in the same order."
            ),
            fingerprint={**fingerprint, "repo": repo},
            **common,
        )
    order = paths.order_dir(results, run.variant, run.data_seed)
    prefix = paths.dataset_prefix(results, run.variant)
    if source == "idxmaps":
        entry = idxmaps_entry(config, run.variant)
        local = bool(entry.get("path"))
        revision = data["idxmaps"]["revision"]
        where = (
            "a local copy of its files" if local else f"`{entry['repo']}` (revision `{revision}`)"
        )
        checked = (
            "its files checked against their published sha256 and the unsharded dataset against "
            "its published sha256"
            if entry.get("bin_sha256") and set(shard_names(entry)) <= set(entry.get("sha256", {}))
            else "its files' sha256 recorded at first use where none is configured"
        )
        return TrainingData(
            dataset_prefix=prefix,
            order_dir=order,
            hub_repo=None if local else entry["repo"],
            hub_revision=None if local else revision,
            description=(
                f"Trained on Pythia's pre-tokenized Pile, {where}: {checked}; read in GPT-NeoX "
                f"v1.0's order for data seed {run.data_seed}."
            ),
            fingerprint={**fingerprint, "idxmaps": dict(entry)},
            **common,
        )
    if not data["raw"]["shards"]:
        raise ConfigError("data.raw.shards: data.source is 'raw' but no shard is listed")
    fingerprint["shards"] = data["raw"]["shards"]
    if run.dedup:
        fingerprint["dedup"] = data["dedup"]
    return TrainingData(dataset_prefix=prefix, order_dir=order, fingerprint=fingerprint, **common)


def check_data_seed(config: Mapping, run, backend: str | None = None) -> None:
    """Refuse a run whose data order cannot be given; ``backend`` defaults to
    ``training.backend`` (``neox-config`` asks for ``neox`` whatever is configured).

    * ``neox``: GPT-NeoX v1.0 has one ``seed`` for the weight init and the index maps, so the
      run's data and weight seeds must be equal.
    * ``preshuffled``: the published set is data seed ``data.preshuffled.data_seed``'s (1234)
      order; any other data seed would train on it while claiming another.

    Raises ``ConfigError`` naming the run and the fix.
    """
    if (backend or config["training"]["backend"]) == "neox" and run.data_seed != run.weight_seed:
        raise ConfigError(
            f"run {run.name}: data seed {run.data_seed} differs from weight seed "
            f"{run.weight_seed}, but GPT-NeoX v1.0 has one `seed` for both the weight init and "
            "the data order; train this run with training.backend: pytorch"
        )
    published = config["data"]["preshuffled"]["data_seed"]
    if config["data"]["source"] == "preshuffled" and run.data_seed != published:
        raise ConfigError(
            f"run {run.name}: data seed {run.data_seed}, but data.source: preshuffled is "
            f"Pythia's published order, that of data seed {published}; set data.source: "
            "idxmaps (Pythia's tokenized Pile, ordered with any data seed) or raw"
        )


def raw_shard(config: Mapping, shard: str) -> tuple[int, Mapping]:
    """``data.raw.shards[shard]`` with its index. Raises ``ConfigError`` when there is no such
    shard."""
    shards = config["data"]["raw"]["shards"]
    index = int(shard)
    if index >= len(shards):
        raise ConfigError(f"data.raw.shards: no shard {shard} (there are {len(shards)})")
    return index, shards[index]


def preshuffled_repo(config: Mapping, variant: str) -> str:
    """``data.preshuffled.<variant>``: the Hub repository of a variant's preshuffled set.
    Raises ``ConfigError`` naming the key when none is configured."""
    repo = config["data"]["preshuffled"].get(variant)
    if not repo:
        raise ConfigError(f"data.preshuffled.{variant}: no repository configured")
    return repo


def fetch_idxmaps_file_with_record(
    config: Mapping, variant: str, name: str, output: str, log
) -> None:
    """Fetch one file of a variant's pre-tokenized Pile (resumable) to ``output``, checked
    against its configured sha256 (an unknown one is recorded at first use and said through
    ``log``), with its provenance record.

    Raises ``ConfigError`` naming the key when ``name`` is not one of the variant's files, and
    what ``data.shards.fetch_shard`` raises."""
    from pythia_suite.data import idxmaps
    from pythia_suite.data.shards import fetch_shard
    from pythia_suite.provenance import Recorder

    entry = idxmaps_entry(config, variant)
    if name not in idxmaps.shard_names(entry):
        raise ConfigError(
            f"data.idxmaps.{variant}: {name!r} is not one of its files "
            f"(stem {entry['stem']!r}, {entry['shards']} shards)"
        )
    settings = config["data"]["idxmaps"]
    source = idxmaps.file_source(entry, name, settings["revision"], settings["hub_url"])
    expected = entry["sha256"].get(name)
    local = [Path(source)] if entry.get("path") else []
    settings_record = {"file": name, "sha256": expected}
    recorder = Recorder(Path(output), "idxmaps-file", settings_record, local)
    sha = fetch_shard(source, output, sha256=expected)
    if not expected:
        log(f"data.idxmaps.{variant}.sha256.{name}: none; recorded {sha} at first use")
    recorder.extra = {"source": source, "sha256_configured": expected}
    recorder.write()


def unshard_idxmaps_with_record(
    config: Mapping, variant: str, files: list[str], output_prefix: str
) -> None:
    """Unshard a variant's fetched pre-tokenized Pile ``files`` into the dataset
    ``output_prefix`` (checked as ``idxmaps.unshard`` says; the unsharded .bin against
    ``data.idxmaps.<variant>.bin_sha256``), with its provenance record.

    Raises ``ConfigError`` naming the first of the variant's files not given."""
    from pythia_suite.data import idxmaps
    from pythia_suite.provenance import Recorder

    entry = idxmaps_entry(config, variant)
    names = idxmaps.shard_names(entry)
    given = {Path(p).name: Path(p) for p in files}
    missing = [name for name in names if name not in given]
    if missing:
        raise ConfigError(f"data.idxmaps.{variant}: file {missing[0]} not given")
    ordered = [given[name] for name in names]
    recorder = Recorder(Path(output_prefix + ".bin"), "dataset", dict(entry), ordered)
    recorder.extra = idxmaps.unshard(
        ordered[:-1], ordered[-1], output_prefix, bin_sha256=entry.get("bin_sha256")
    )
    recorder.extra["bin_sha256_configured"] = entry.get("bin_sha256")
    recorder.write()


def step_batch(config: Mapping, run, step: int, *, decode: bool):
    """The token rows (``global_batch x (seq_length + 1)``) that ``run`` trains on at ``step``.

    Raises ``ConfigError`` for a step outside training, ``FileNotFoundError`` naming the
    inputs not built yet (the tokenizer too when ``decode``), with the command that builds them.
    """
    from pythia_suite import paths

    last = config["training"]["train_iters"] - 1
    if not 0 <= step <= last:
        raise ConfigError(
            f"--step {step}: training.train_iters is {last + 1}, so steps run 0 .. {last}"
        )
    data = training_data(config, run)
    needed = [Path(p) for p in data.workflow_inputs()]
    if decode:
        needed.append(Path(paths.tokenizer(config["paths"]["results"])))
    missing = [str(p) for p in needed if not p.exists()]
    if missing:
        raise FileNotFoundError(
            f"{', '.join(missing)}: not built yet; `snakemake {' '.join(missing)}` (with the "
            "suite's --profile/--configfile) builds them"
        )
    return data.samples().batch(step, config["training"]["global_batch"])


def save_batch(output: str, tokens) -> None:
    """Write a step's token rows to ``output`` as one ``.npy`` array (complete or absent)."""
    import io

    import numpy as np

    from pythia_suite.atomic import write_bytes_atomic

    buffer = io.BytesIO()
    np.save(buffer, tokens)
    write_bytes_atomic(Path(output), buffer.getvalue())


def num_samples(config: Mapping) -> int:
    """Samples GPT-NeoX requests for training: ceil(train_iters x global_batch x 1.005)."""
    training = config["training"]
    return math.ceil(training["train_iters"] * training["global_batch"] * 1.005)


def batch_command(config: Mapping, run, step: int, output: str | None, decode: int, log) -> str:
    """`pythia-suite batch`: the step's rows saved to `output` (said through `log`) when given,
    and the text of the first `decode` rows (empty when `decode` is 0)."""
    tokens = step_batch(config, run, step, decode=bool(decode))
    if output:
        save_batch(output, tokens)
        log(f"{Path(output)}: step {step} of {run.name}: tokens {tokens.shape}")
    if not decode:
        return ""
    from pythia_suite.data.tokenize import decode_rows

    return decode_rows(paths.tokenizer(config["paths"]["results"]), tokens[:decode])
