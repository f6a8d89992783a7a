"""Tests for pythia_suite.modelcard: Hub metadata, sections, tables, runnable quickstart."""

from __future__ import annotations

import ast
import json
import re
from pathlib import Path

import pytest
import yaml

from pythia_suite.modelcard import ModelCardError, render_model_card

ANCHORS = Path(__file__).resolve().parents[2] / "shared" / "anchors" / "pythia"
EVAL_410M = ANCHORS / "EleutherAI_pythia/evals/pythia-v1/pythia-410m/zero-shot/410m_step143000.json"

PYTHIA_STEPS = [0] + [2**i for i in range(10)] + list(range(1000, 143001, 1000))

RUN_410M = {
    "name": "pythia-410m-deduped",
    "repo_id": "EleutherAI/pythia-410m-deduped",
    "size": "410m",
    "variant": "deduped",
    "layers": 24,
    "hidden": 1024,
    "heads": 16,
    "lr": 3.0e-4,
    "min_lr": 3.0e-5,
    "warmup": 0.01,
    "batch": 1024,
    "seq_length": 2048,
    "train_iters": 143000,
    "steps": PYTHIA_STEPS,
    "params": 405_334_016,
}


def split_card(card: str) -> tuple[dict, str]:
    match = re.match(r"^---\n(.*?)\n---\n(.*)$", card, re.S)
    assert match, "card must start with YAML front matter"
    return yaml.safe_load(match.group(1)), match.group(2)


def test_front_matter_is_hub_metadata() -> None:
    meta, _ = split_card(render_model_card(RUN_410M))
    assert meta["language"] == ["en"] and meta["license"] == "apache-2.0"
    assert {"pytorch", "causal-lm", "pythia"} <= set(meta["tags"])
    assert meta["datasets"] == ["EleutherAI/the_pile_deduplicated"]
    standard = split_card(render_model_card(RUN_410M | {"variant": "standard"}))[0]
    assert standard["datasets"] == ["EleutherAI/pile"]


def test_sections_and_architecture_table() -> None:
    _, body = split_card(render_model_card(RUN_410M))
    headings = re.findall(r"^## (.+)$", body, re.M)
    assert headings == [
        "Architecture",
        "Training data",
        "Training procedure",
        "Checkpoints",
        "Evaluations",
        "Quickstart",
    ]
    assert "| Layers | 24 |" in body and "| Attention heads | 16 |" in body
    assert "| Parameters | 405,334,016 |" in body
    assert "| Tokens seen | 299,892,736,000 |" in body  # 143000 x 1024 x 2048
    assert "| Batch size (tokens) | 2,097,152 |" in body
    assert (
        "(154 branches)" in body and "Branch `main` is the final checkpoint, `step143000`" in body
    )
    assert "over the first 1% of iterations" in body
    assert "No evaluation results" in body


def test_quickstart_is_valid_python_with_revision() -> None:
    card = render_model_card(RUN_410M)
    code = re.search(r"```python\n(.*?)```", card, re.S).group(1)
    tree = ast.parse(code)
    calls = [n for n in ast.walk(tree) if isinstance(n, ast.Call) and hasattr(n.func, "attr")]
    loads = [c for c in calls if c.func.attr == "from_pretrained"]
    assert len(loads) == 2
    for call in loads:
        assert call.args[0].value == "EleutherAI/pythia-410m-deduped"
        kwargs = {k.arg: k.value.value for k in call.keywords}
        assert kwargs["revision"] == "step3000" and "cache_dir" in kwargs


def test_results_table_from_pythia_file() -> None:
    if not EVAL_410M.is_file():
        pytest.skip(f"Pythia eval file not found at {EVAL_410M} (../shared anchors)")
    results = json.loads(EVAL_410M.read_text())
    _, body = split_card(render_model_card(RUN_410M, results))
    assert re.search(r"\| lambada_openai \| acc \| 0\.516\d \| 0\.00\d\d \|", body)
    assert re.search(r"\| sciq \| acc \| 0\.81\d\d \|", body)
    assert "No evaluation results" not in body


def test_results_table_from_lm_eval_output() -> None:
    results = {
        "results": {
            "piqa": {"alias": "piqa", "acc,none": 0.6, "acc_stderr,none": 0.01},
            "lambada_openai": {"perplexity,none": 10.83, "acc,none": 0.5},
        },
        "versions": {"piqa": 1.0},
    }
    _, body = split_card(render_model_card(RUN_410M, results))
    assert "| piqa | acc | 0.6000 | 0.0100 |" in body
    assert "| lambada_openai | perplexity | 10.8300 |  |" in body


def test_mini_run_example_revision_is_a_real_step() -> None:
    mini = RUN_410M | {"name": "pythia-mini", "repo_id": "local/pythia-mini", "steps": [0, 1, 2, 4]}
    card = render_model_card(mini)
    assert 'revision="step2"' in card and "`step4`" in card


def test_missing_key_is_named() -> None:
    run = dict(RUN_410M)
    del run["heads"]
    with pytest.raises(ModelCardError, match="missing required key 'heads'"):
        render_model_card(run)
    with pytest.raises(ModelCardError, match="'steps' must be a non-empty list of int"):
        render_model_card(RUN_410M | {"steps": []})


def test_lead_style_run_dict_and_flat_results() -> None:
    run = {k: v for k, v in RUN_410M.items() if k != "batch"} | {
        "global_batch": 1024,
        "cache_dir": "/results/hub",
    }
    card = render_model_card(run, {"piqa acc (0-shot)": 0.6676, "sciq acc (5-shot)": 0.811})
    assert "| Batch size (sequences) | 1024 |" in card
    assert "| piqa acc (0-shot) |  | 0.6676 |  |" in card
    assert card.count('cache_dir="/results/hub"') == 2
