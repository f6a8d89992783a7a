"""Helpers for the tests that run the GPT-NeoX backend against the stand-in GPT-NeoX
(tests/neox_standin): a checkout of it, its call log, a tokenizer, and placeholder data."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import yaml

STANDIN = Path(__file__).resolve().parent / "neox_standin"


def standin_checkout(dest: Path) -> Path:
    """A fresh copy of the stand-in GPT-NeoX at ``dest`` (its call log starts empty)."""
    shutil.copytree(STANDIN, dest, ignore=shutil.ignore_patterns("__pycache__", "calls.jsonl"))
    return dest


def calls(checkout: Path, prog: str | None = None) -> list[dict]:
    """The processes the stand-ins started, in order (optionally only ``prog``'s)."""
    log = checkout / "calls.jsonl"
    lines = log.read_text().splitlines() if log.exists() else []
    records = [json.loads(line) for line in lines]
    return [r for r in records if prog is None or r["prog"] == prog]


def tiny_tokenizer(path: Path, vocab_size: int) -> Path:
    """A word-level tokenizer of exactly ``vocab_size`` tokens, ``<|endoftext|>`` = id 0."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    vocab = {"<|endoftext|>": 0, **{f"w{i}": i for i in range(1, vocab_size)}}
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="<|endoftext|>"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    path.parent.mkdir(parents=True, exist_ok=True)
    tokenizer.save(str(path))
    return path


def placeholder_training_data(config: dict, run) -> list[Path]:
    """Empty stand-ins for a run's dataset and index maps (``data.source: raw``) under the
    results tree, named as the rules and GPT-NeoX name them: the stand-in trainer reads none."""
    from pythia_suite import config as cfg
    from pythia_suite import layout
    from pythia_suite.data.order import index_map_paths

    results = config["paths"]["results"]
    prefix = layout.dataset_prefix(results, run.variant)
    order = Path(layout.order_dir(results, run.variant, run.data_seed))
    order.mkdir(parents=True, exist_ok=True)
    made = [Path(prefix + ".bin"), Path(prefix + ".idx")]
    made += index_map_paths(
        prefix, order, cfg.num_samples(config), config["model"]["seq_length"], run.data_seed
    )
    for path in made:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"")
    tiny_tokenizer(Path(layout.tokenizer(results)), config["data"]["tokenizer"]["vocab_size"])
    return made


def neox_overlay(path: Path, checkout: Path, python: str, **extra) -> Path:
    """A config overlay selecting the neox backend with the stand-in checkout."""
    training = {"backend": "neox", "neox": {"dir": str(checkout), "python": python}}
    overlay = {**extra, "training": {**extra.get("training", {}), **training}}
    path.write_text(yaml.safe_dump(overlay))
    return path
