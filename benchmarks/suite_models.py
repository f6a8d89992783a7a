"""Model configs for the benchmarks, taken from config.yaml (the suite's one source of truth)."""

from __future__ import annotations

from pathlib import Path

from pythia_suite import config as suite_config
from pythia_suite.train.settings import hf_config

REPO = Path(__file__).resolve().parents[1]


def pythia_hf_config(run: str = "pythia-70m") -> dict:
    """The transformers GPTNeoXConfig dict of a run of the suite in config.yaml."""
    config = suite_config.load_config([REPO / "config.yaml"])
    return hf_config(config, suite_config.get_run(config, run))


def tiny_hf_config(max_position_embeddings: int = 2048) -> dict:
    """Pythia's architecture (70m's fields) shrunk to 5.3M parameters for CPU benchmarks."""
    return dict(
        pythia_hf_config(),
        vocab_size=4096,
        hidden_size=256,
        num_hidden_layers=4,
        num_attention_heads=8,
        intermediate_size=1024,
        max_position_embeddings=max_position_embeddings,
    )
