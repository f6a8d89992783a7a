"""Tests for pythia_suite.modelcard: Hub metadata, sections, tables, runnable quickstart."""

from __future__ import annotations

import ast
import json
import re
from pathlib import Path

import pytest
import yaml

from pythia_suite.modelcard import ModelCardError, render_model_card

EVAL_410M = "evals/pythia-v1/pythia-410m/zero-shot/410m_step143000.json"

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
    "dataset": "EleutherAI/the_pile_deduplicated",
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
    with pytest.raises(ModelCardError, match="missing required key 'dataset'"):
        render_model_card({k: v for k, v in RUN_410M.items() if k != "dataset"})


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
    # Nothing is claimed that the run dict does not say: no architecture, optimizer, decay
    # style or verification without their facts.
    for phrase in ("rotary", "Adam", "cosine", "verified", "compared", "Pile"):
        assert phrase not in body, phrase


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
        assert kwargs["revision"] == "main" and "cache_dir" in kwargs  # the final checkpoint
    assert 'e.g. revision="step3000"' in code  # how to load any other step
    (generate,) = [c for c in calls if c.func.attr == "generate"]
    kwargs = {k.arg: k.value for k in generate.keywords if k.arg}
    assert kwargs["max_new_tokens"].value > 0  # no max_length warning, no 20-token cut


def test_card_states_scale_dtype_chance_and_dedup_removals() -> None:
    run = RUN_410M | {
        "train_iters": 128,
        "batch": 8,
        "seq_length": 128,
        "epoch_tokens": 4_200_000,
        "published_dtype": "float16",
        "precision": "fp32",
        "chance": {"mini_next_word": {"acc": 0.25}},
    }
    results = {
        "mini_next_word (0-shot)": {"acc": 0.41, "acc_stderr": 0.02},
        "mini_lambada (0-shot)": {"acc": 0.0},
    }
    _, body = split_card(render_model_card(run, results))
    assert "trained on 131K tokens (131,072), 3.1% of one pass over its training data" in body
    assert "It is a miniature" in body
    assert "The published weights are float16 (trained in fp32)." in body
    assert "| mini_next_word (0-shot) | acc | 0.4100 | 0.0200 | 0.2500 |" in body
    assert "| mini_lambada (0-shot) | acc | 0.0000 |  | — |" in body
    merged = {"mini_next_word (0-shot)": {"acc = acc_norm": 0.41, "acc = acc_norm_stderr": 0.02}}
    _, body = split_card(render_model_card(run, merged))
    assert "| mini_next_word (0-shot) | acc = acc_norm | 0.4100 | 0.0200 | 0.2500 |" in body
    # Pythia's scale: 300B tokens, about one pass: no miniature sentence.
    big = RUN_410M | {"epoch_tokens": 300_000_000_000}
    assert "It is a miniature" not in render_model_card(big)
    assert "300B tokens (299,892,736,000), 100.0% of one pass" in render_model_card(big)


def test_results_table_from_pythia_file(anchor) -> None:
    results = json.loads(anchor(EVAL_410M).read_text())
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


# ----------------------------------------------------------------------------- cards from facts

REPO_ROOT = Path(__file__).resolve().parents[1]


def _config(*overlays: str) -> dict:
    from pythia_suite.config import load_config

    return load_config([REPO_ROOT / "config.yaml", *(REPO_ROOT / o for o in overlays)])


def _raw_yaml(*names: str) -> dict:
    """The config files read as plain YAML, merged by hand: a source independent of the card
    code and of the config loader."""

    def merge(base: dict, over: dict) -> dict:
        out = dict(base)
        for key, value in over.items():
            both = isinstance(value, dict) and isinstance(base.get(key), dict)
            out[key] = merge(base[key], value) if both else value
        return out

    merged: dict = {}
    for name in names:
        merged = merge(merged, yaml.safe_load((REPO_ROOT / name).read_text()))
    return merged


def _receipts(steps, verified: bool) -> dict:
    files = {"model.safetensors": {"size": 1, "sha256": "0" * 64}}
    check = {"where": "local hub", "branch": "x", "commit": "c", "files_compared": 1}
    return {
        f"step{s}": {
            "files": files,
            "verifications": [check | {"matched": True}] if verified else [],
            "verified": verified,
        }
        for s in steps
    }


def test_mini_card_states_what_config_data_record_and_receipts_say(tmp_path: Path) -> None:
    from pythia_suite.config import checkpoint_steps
    from pythia_suite.modelcard import card_facts

    config = _config("config/mini.yaml")
    raw = _raw_yaml("config.yaml", "config/mini.yaml")
    steps = checkpoint_steps(config)
    card = render_model_card(
        card_facts(config, "pythia-1.3m-deduped", _receipts(steps, True), cache_dir="results/hub"),
        {"mini_next_word (0-shot)": {"acc": 0.55, "acc_stderr": 0.03}},
    )
    meta, body = split_card(card)
    # Data: the shipped corpus, named by its shards and its own manifest; never the Pile.
    assert "Pile," not in body and "the_pile" not in card and "GPT-NeoX-20B" not in body
    assert "datasets" not in meta  # not a Hub dataset
    manifest = json.loads((REPO_ROOT / "data/mini-pile/manifest.json").read_text())
    for shard in raw["data"]["raw"]["shards"]:
        assert f"`{shard['path']}`" in body
    for source in manifest["files"]["train/00.jsonl.zst"]["pile_set_names"]:
        assert source in body
    assert "`data/mini-pile/SOURCES.md`" in body
    dedup = raw["data"]["dedup"]
    assert f"Jaccard threshold {dedup['threshold']}" in body
    vocab = raw["data"]["tokenizer"]["vocab_size"]
    assert f"a byte-level BPE of {vocab:,} tokens trained by this pipeline" in body
    # Architecture, optimizer and schedule: the config's values.
    model, training = raw["model"], raw["training"]
    assert f"rotary position embeddings on {model['rotary_pct']:.0%}" in body
    assert ("untied" if not model["tie_embeddings"] else "tied") + " input and output" in body
    assert f"beta2 {training['adam']['beta2']}" in body
    assert f"then {training['lr_decay_style']} decay" in body
    assert f"weight decay {training['weight_decay']}" in body
    # Verified, because every receipt records a matching comparison.
    assert f"Each of the {len(steps)} published branches was read back" in body
    # The quickstart's revision is a branch of this run, loaded offline from the local hub.
    revision = re.search(r'revision="step(\d+)"', card).group(1)
    assert int(revision) in steps and 'cache_dir="results/hub"' in card
    assert 'os.environ["HF_HUB_OFFLINE"] = "1"' in card
    # The evaluation table names its metric.
    assert "| mini_next_word (0-shot) | acc | 0.5500 | 0.0300 |" in body
    # No dedup report given: no removed counts claimed.
    assert "removed" not in body


def test_deduped_card_gives_documents_after_dedup_and_removed(tmp_path: Path) -> None:
    from pythia_suite.config import checkpoint_steps
    from pythia_suite.modelcard import card_facts

    config = _config("config/mini.yaml")
    manifest = json.loads((REPO_ROOT / "data/mini-pile/manifest.json").read_text())
    before: dict[str, int] = {}
    for name, entry in manifest["files"].items():
        for source, n in entry.get("pile_set_names", {}).items() if "train/" in name else ():
            before[source] = before.get(source, 0) + n
    source = sorted(before)[0]
    per_set = {source: {"docs_in": before[source], "docs_removed": 3}}
    total = sum(before.values())
    report = {"docs_in": total, "docs_removed": 3, "docs_out": total - 3, "per_set": per_set}
    path = tmp_path / "report.json"
    path.write_text(json.dumps(report))
    steps = checkpoint_steps(config)
    facts = card_facts(config, "pythia-0.4m-deduped", _receipts(steps, True), dedup_report=path)
    body = split_card(render_model_card(facts))[1]
    assert f"which removed 3 of {total:,} documents" in body and f"leaving {total - 3:,}" in body
    assert f"{source} ({before[source] - 3} documents after deduplication, 3 removed)" in body
    # The share of one pass: from the training dataset's index.
    import numpy as np

    from pythia_suite.data.indexed import IndexedDatasetWriter

    prefix = tmp_path / "data" / "deduped_text_document"
    with IndexedDatasetWriter(prefix) as writer:
        for _ in range(4):
            writer.add_document(np.arange(8_192, dtype=np.int64) % 100)
    facts = card_facts(
        config, "pythia-0.4m-deduped", _receipts(steps, True), dataset_prefix=str(prefix)
    )
    assert facts["epoch_tokens"] == 32_768
    assert "trained on 131K tokens (131,072), 400.0% of one pass" in render_model_card(facts)
    # The standard run's card states the corpus as shipped.
    standard = card_facts(config, "pythia-0.4m", _receipts(steps, True), dedup_report=path)
    assert "removed" not in render_model_card(standard)


def test_real_card_states_the_preshuffled_pile_and_gpt_neox_tokenizer() -> None:
    from pythia_suite.config import checkpoint_steps
    from pythia_suite.modelcard import card_facts

    config = _config()
    raw = _raw_yaml("config.yaml")
    steps = checkpoint_steps(config)
    card = render_model_card(card_facts(config, "pythia-410m-deduped", _receipts(steps, True)))
    meta, body = split_card(card)
    assert meta["datasets"] == [raw["data"]["preshuffled"]["deduped"]]
    tok = raw["data"]["tokenizer"]
    assert f"`{tok['repo']}` (`{tok['file']}`), {tok['vocab_size']:,} tokens" in body
    assert f"| Layers | {raw['sizes']['410m']['layers']} |" in body
    assert f"Each of {len(steps)}" not in body and f"Each of the {len(steps)}" in body
    local_only = raw["publish"]["local_hub"] and not raw["publish"]["hub"]
    assert ("HF_HUB_OFFLINE" in card) == local_only  # offline only when only the local hub
    hub = render_model_card(
        card_facts(config | {"publish": {**config["publish"], "hub": True}}, "pythia-410m", {})
    )
    assert "HF_HUB_OFFLINE" not in hub and "read back" not in hub  # no receipts: no claim


def test_unverified_receipt_means_no_verified_sentence() -> None:
    from pythia_suite.config import checkpoint_steps
    from pythia_suite.modelcard import card_facts, verification_sentence

    config = _config("config/mini.yaml")
    steps = checkpoint_steps(config)
    receipts = _receipts(steps, True)
    receipts["step2"] = _receipts([2], False)["step2"]
    body = split_card(render_model_card(card_facts(config, "pythia-0.4m", receipts)))[1]
    assert "read back" not in body and "verified" not in body and "compared" not in body
    flag_only = _receipts(steps, True)
    flag_only["step4"]["verifications"][0]["matched"] = False  # the flag alone is not enough
    assert verification_sentence(flag_only) is None
    assert verification_sentence({}) is None
