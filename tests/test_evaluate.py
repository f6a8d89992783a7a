"""Tests for pythia_suite.evaluate: local tasks, lm-eval end to end, Pythia layout, comparison."""

from __future__ import annotations

import copy
import hashlib
import json
import random
import shutil
from pathlib import Path

import pytest
import zstandard

from pythia_suite import evaluate as ev
from pythia_suite.evaluate.next_word import _word_counts
from pythia_suite.evaluate.tasks import _continuation_token_counter

ANCHOR_EVALS = "evals/pythia-v1/pythia-410m"

WORDS = (
    "the a cat dog sat ran on under mat house tree river stone light small big red old young "
    "farmer king queen walked looked found said gave bread water morning evening road garden"
).split()


def make_documents(n: int, seed: int = 0) -> list[str]:
    """Synthetic English-like documents of a few sentences each."""
    rng = random.Random(seed)
    docs = []
    for _ in range(n):
        sentences = []
        for _ in range(rng.randint(3, 6)):
            words = [rng.choice(WORDS) for _ in range(rng.randint(6, 12))]
            sentences.append(" ".join(words).capitalize() + ".")
        docs.append(" ".join(sentences))
    return docs


def write_shard(path: Path, texts: list[str]) -> Path:
    lines = "".join(
        json.dumps({"text": t, "meta": {"pile_set_name": "Synthetic"}}) + "\n" for t in texts
    )
    path.write_bytes(zstandard.ZstdCompressor().compress(lines.encode()))
    return path


def make_tiny_model(model_dir: Path, texts: list[str], seed: int) -> Path:
    """A GPTNeoX of a few thousand parameters with a byte-level BPE trained on ``texts``."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from train_support import tiny_gpt_neox_config
    from transformers import GPTNeoXForCausalLM

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=320,
        special_tokens=["<|endoftext|>", "<|padding|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tokenizer.train_from_iterator(texts, trainer)
    model_dir.mkdir(parents=True)
    tokenizer.save(str(model_dir / "tokenizer.json"))
    (model_dir / "tokenizer_config.json").write_text(
        json.dumps(
            {
                "tokenizer_class": "GPTNeoXTokenizerFast",
                "eos_token": "<|endoftext|>",
                "bos_token": "<|endoftext|>",
                "unk_token": "<|endoftext|>",
                "pad_token": "<|padding|>",
                "model_max_length": 256,
            }
        )
    )
    torch.manual_seed(seed)
    config = tiny_gpt_neox_config(
        vocab_size=320, num_attention_heads=2, intermediate_size=64, max_position_embeddings=256
    )
    GPTNeoXForCausalLM(config).save_pretrained(model_dir)
    return model_dir


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("corpus")
    texts = make_documents(60, seed=1)
    return write_shard(root / "heldout.jsonl.zst", texts), texts


@pytest.fixture(scope="module")
def task_dir(corpus, tmp_path_factory):
    shard, _ = corpus
    out = tmp_path_factory.mktemp("tasks")
    ev.build_local_tasks(shard, out, n_docs=12, seed=7, n_fewshot_pool=8, n_choice_items=20)
    return out


@pytest.fixture(scope="module")
def evaluated(corpus, task_dir, tmp_path_factory):
    """Two checkpoints of one run, zero-shot, evaluated in one call."""
    _, texts = corpus
    root = tmp_path_factory.mktemp("run")
    dirs = {step: make_tiny_model(root / f"step{step}", texts, seed=step) for step in (0, 4)}
    out = root / "evals"
    written = ev.evaluate_checkpoints(
        dirs, list(ev.LOCAL_TASKS), 0, out, "mini-a", batch_size=4, task_dir=task_dir
    )
    return out, written


# --- local tasks ------------------------------------------------------------------------------


def test_build_local_tasks_is_deterministic_and_lambada_shaped(corpus, task_dir, tmp_path):
    shard, texts = corpus
    again = tmp_path / "again"
    configs = ev.build_local_tasks(
        shard, again, n_docs=12, seed=7, n_fewshot_pool=8, n_choice_items=20
    )
    names = ("mini_lambada.jsonl", "mini_lambada_fewshot.jsonl", "mini_heldout.jsonl")
    for name in (*names, "mini_next_word.jsonl"):
        assert (again / name).read_bytes() == (task_dir / name).read_bytes(), name

    lambada = [json.loads(line)["text"] for line in (again / "mini_lambada.jsonl").open()]
    pool = [json.loads(line)["text"] for line in (again / "mini_lambada_fewshot.jsonl").open()]
    assert len(lambada) == 12 and len(pool) == 8
    assert not set(lambada) & set(pool)  # few-shot examples never score the test documents
    for passage in lambada:
        assert passage.split(" ")[-1].isalpha()  # the target is a word, no punctuation
        assert any(t.startswith(passage) or passage in " ".join(t.split()) for t in texts)

    manifest = json.loads((again / "manifest.json").read_text())
    assert manifest["counts"]["mini_heldout"] == 12 and manifest["seed"] == 7
    assert configs["mini_lambada"]["output_type"] == "loglikelihood"
    assert configs["mini_heldout"]["output_type"] == "loglikelihood_rolling"
    assert Path(configs["mini_lambada"]["dataset_kwargs"]["data_files"]["test"]).is_absolute()

    other = ev.build_local_tasks(shard, tmp_path / "other", n_docs=12, seed=8, n_fewshot_pool=8)
    assert (tmp_path / "other/mini_lambada.jsonl").read_bytes() != (
        again / "mini_lambada.jsonl"
    ).read_bytes()
    assert set(other) == {"mini_lambada", "mini_heldout"}  # no choice items asked for
    assert set(configs) == set(ev.LOCAL_TASKS)
    assert manifest["chance"] == {"mini_next_word": {"acc": 0.25, "acc_norm": 0.25}}
    assert configs["mini_next_word"]["output_type"] == "multiple_choice"


def test_next_word_items_are_fair_multiple_choice(corpus):
    """The true next word among length- and frequency-matched distractors, gold at random."""
    _, texts = corpus
    items = ev.build_next_word_items(texts, 40, seed=3)
    assert items == ev.build_next_word_items(texts, 40, seed=3)  # fixed before training
    counts = _word_counts(texts)
    golds = set()
    for item in items:
        choices, gold = item["choices"], item["gold"]
        answer = choices[gold]
        golds.add(gold)
        assert len(choices) == 4 and len({c.lower() for c in choices}) == 4
        assert {len(c) for c in choices} == {len(answer)}  # length-matched
        assert all(c in counts for c in choices)  # words of the held-out text
        text = texts[item["doc"]]
        assert item["context"] + " " + answer in text  # the true continuation
        assert len(item["context"]) <= 160
    assert golds == {0, 1, 2, 3}
    with pytest.raises(ValueError, match=r"give \d+ next-word items; 100000 were asked for"):
        ev.build_next_word_items(texts, 100_000, seed=3)


def test_next_word_distractors_cost_the_answers_tokens_and_answers_repeat_at_most_the_cap(
    corpus, tmp_path
):
    """Equal token counts keep an untrained model (near-uniform logits) at chance; the cap keeps
    one word's random preference from moving many items."""
    shard, texts = corpus
    model_dir = make_tiny_model(tmp_path / "tok", texts, seed=0)
    tokenizer_file = model_dir / "tokenizer.json"
    count = _continuation_token_counter(tokenizer_file)
    uncapped = ev.build_next_word_items(texts, 40, seed=3, max_items_per_answer=10**9)
    assert max(_answer_counts(uncapped).values()) > 3  # the synthetic corpus repeats words
    for cap in (1, 3):
        items = ev.build_next_word_items(
            texts, 20, seed=3, token_count=count, max_items_per_answer=cap
        )
        assert max(_answer_counts(items).values()) == cap
        for item in items:
            assert len(set(count(item["choices"]))) == 1, item  # same number of tokens
            assert len({len(c) for c in item["choices"]}) == 1, item  # same length

    ev.build_local_tasks(
        shard,
        tmp_path / "tasks",
        n_docs=12,
        seed=7,
        n_choice_items=20,
        tokenizer_file=tokenizer_file,
    )
    manifest = json.loads((tmp_path / "tasks" / "manifest.json").read_text())
    assert manifest["tokenizer_sha256"] == hashlib.sha256(tokenizer_file.read_bytes()).hexdigest()
    items = [json.loads(line) for line in (tmp_path / "tasks" / "mini_next_word.jsonl").open()]
    assert all(len(set(count(item["choices"]))) == 1 for item in items)


def _answer_counts(items: list[dict]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for item in items:
        answer = item["choices"][item["gold"]].lower()
        counts[answer] = counts.get(answer, 0) + 1
    return counts


def test_build_local_tasks_rejects_bad_input(corpus, tmp_path):
    shard, _ = corpus
    with pytest.raises(ValueError, match=r"n_docs=1000 needs"):
        ev.build_local_tasks(shard, tmp_path / "t", n_docs=1000, seed=0)
    assert not (tmp_path / "t/manifest.json").exists()

    bad = tmp_path / "bad.jsonl.zst"
    bad.write_bytes(zstandard.ZstdCompressor().compress(b'{"text": "fine"}\n{not json\n'))
    with pytest.raises(ValueError, match=r"bad\.jsonl\.zst.*line 2"):
        ev.build_local_tasks(bad, tmp_path / "u", n_docs=1, seed=0)
    with pytest.raises(FileNotFoundError, match="missing.jsonl.zst"):
        ev.build_local_tasks(tmp_path / "missing.jsonl.zst", tmp_path / "v", n_docs=1, seed=0)


def test_load_local_tasks_resolves_paths_after_a_move(task_dir, tmp_path):
    import shutil

    moved = tmp_path / "moved"
    shutil.copytree(task_dir, moved)
    configs = ev.load_local_tasks(moved)
    assert configs["mini_heldout"]["dataset_kwargs"]["data_files"]["test"] == str(
        (moved / "mini_heldout.jsonl").resolve()
    )
    (moved / "mini_heldout.jsonl").unlink()
    with pytest.raises(FileNotFoundError, match=r"mini_heldout\.yaml.*data_files\.test"):
        ev.load_local_tasks(moved)


# --- lm-eval end to end -----------------------------------------------------------------------


def test_evaluate_checkpoints_writes_pythia_layout(evaluated):
    out, written = evaluated
    assert set(written) == {0, 4}
    for step, path in written.items():
        assert path == out / "mini-a" / "zero-shot" / f"mini-a_step{step}.json"
        doc = json.loads(path.read_text())
        assert set(doc) == {"results", "versions", "config"}
        lam, held = doc["results"]["mini_lambada"], doc["results"]["mini_heldout"]
        assert set(lam) == {"acc", "acc_stderr", "ppl", "ppl_stderr"}
        assert 0.0 <= lam["acc"] <= 1.0 and lam["ppl"] > 1.0
        assert {"word_perplexity", "byte_perplexity", "bits_per_byte"} <= set(held)
        assert doc["config"]["num_fewshot"] == 0 and doc["config"]["device"] == "cpu"
        assert doc["config"]["model_args"].startswith("pretrained=")
        raw = json.loads(path.with_suffix(".raw.json").read_text())
        assert raw["results"]["mini_lambada"]["acc,none"] == lam["acc"]
        assert raw["results"]["mini_lambada"]["perplexity,none"] == lam["ppl"]
    # Different weights give different numbers: the steps were really evaluated separately.
    ppl = [json.loads(p.read_text())["results"]["mini_lambada"]["ppl"] for p in written.values()]
    assert ppl[0] != ppl[1]
    assert not list(out.rglob("*.tmp"))
    # The step is read back from the names written, and from no other name.
    assert {ev.result_file_step(p.name) for p in written.values()} == {0, 4}
    assert not any(ev.result_file_step(p.name) is not None for p in out.rglob("*.raw.json"))


def test_result_file_step_reads_only_the_names_pythia_result_path_writes():
    assert ev.result_file_step(ev.pythia_result_path("o", "pythia-70m", 143000, 0).name) == 143000
    for name in ("r_step007.json", "r_step5.raw.json", "r_step5.json.tmp", "r_step.json"):
        assert ev.result_file_step(name) is None, name


def test_our_output_compares_with_itself_and_with_raw(evaluated):
    _, written = evaluated
    path = written[4]
    assert ev.compare_with_reference(path, path, 0.0).passed
    # The raw lm-eval 0.4 output maps onto the same Pythia names and values.
    both = ev.compare_with_reference(path.with_suffix(".raw.json"), path, 0.0, include_stderr=True)
    assert both.passed and not both.missing and len(both.diffs) >= 6


def test_evaluate_checkpoints_fails_early_on_missing_model(task_dir, tmp_path):
    with pytest.raises(FileNotFoundError, match=r"step 3: .*nope"):
        ev.evaluate_checkpoints(
            {3: tmp_path / "nope"}, ["mini_lambada"], 0, tmp_path, "r", task_dir=task_dir
        )
    assert not list(tmp_path.rglob("*.json"))


# --- names and comparison on Pythia's published files ----------------------------------------


def test_metric_names_map_both_ways():
    assert ev.pythia_metric_name("perplexity,none") == "ppl"
    assert ev.pythia_metric_name("perplexity_stderr,none") == "ppl_stderr"
    assert ev.pythia_metric_name("acc_norm,none") == "acc_norm"
    assert ev.pythia_metric_name("likelihood_diff,none") == "likelihood_difference"
    assert ev.lm_eval_metric_key("ppl_stderr") == "perplexity_stderr,none"
    assert ev.lm_eval_task_name("hendrycksTest-anatomy") == "mmlu_anatomy"
    assert ev.pythia_task_name("mmlu_anatomy") == "hendrycksTest-anatomy"


def test_anchor_files_round_trip_through_lm_eval_names(anchor):
    paths = sorted(anchor(ANCHOR_EVALS).glob("*/*.json"))
    assert paths
    for path in paths:
        doc = json.loads(path.read_text())
        as_04 = ev.to_lm_eval_results(doc["results"])
        assert "perplexity,none" in as_04["lambada_openai"], path
        assert "mmlu_anatomy" in as_04, path
        assert ev.to_pythia_results(as_04) == doc["results"], path
        # And lm-eval 0.4 keys survive the trip the other way.
        assert ev.to_lm_eval_results(ev.to_pythia_results(as_04)) == as_04, path


def test_compare_anchor_with_itself_and_perturbed(tmp_path, anchor):
    ref = anchor(ANCHOR_EVALS) / "zero-shot/410m_step143000.json"
    same = ev.compare_with_reference(ref, ref, 1e-9, require_all=True)
    assert same.passed and not same.missing
    assert len(same.diffs) == sum(
        1 for m in json.loads(ref.read_text())["results"].values() for k in m if "stderr" not in k
    )

    doc = json.loads(ref.read_text())
    perturbed = copy.deepcopy(doc)
    perturbed["results"]["piqa"]["acc"] += 0.02
    ours = tmp_path / "ours.json"
    ours.write_text(json.dumps(perturbed))
    result = ev.compare_with_reference(ours, ref, 0.01)
    assert not result.passed
    assert [(d.task, d.metric) for d in result.failures] == [("piqa", "acc")]
    with pytest.raises(AssertionError, match=r"piqa/acc"):
        result.raise_if_failed()
    # Within tolerance passes; per-metric tolerances are honoured.
    assert ev.compare_with_reference(ours, ref, 0.03).passed
    assert ev.compare_with_reference(ours, ref, {"piqa/acc": 0.03, "*": 0.0}).passed

    # lm-eval 0.4 shaped output is compared under Pythia's names.
    raw_like = {"results": ev.to_lm_eval_results(perturbed["results"])}
    assert [
        (d.task, d.metric) for d in ev.compare_with_reference(raw_like, ref, 0.01).failures
    ] == [("piqa", "acc")]


def test_compare_reports_missing_and_perplexity_tolerance(anchor):
    evals = anchor(ANCHOR_EVALS)
    early = evals / "zero-shot/410m_step1000.json"
    final = evals / "zero-shot/410m_step143000.json"
    five = evals / "five-shot/410m-5shot_step143000.json"
    # Step 1000 and step 143000 differ wildly in lambada perplexity (4770 vs 10.8).
    tolerance = {"ppl": 1.0, "likelihood_difference": 100.0, "*": 1.0}
    result = ev.compare_with_reference(early, final, tolerance)
    assert [(d.task, d.metric) for d in result.failures] == [("lambada_openai", "ppl")]
    # The five-shot file evaluated fewer tasks: missing fails only with require_all.
    assert ev.compare_with_reference(five, final, 1e9).passed
    strict = ev.compare_with_reference(five, final, 1e9, require_all=True)
    assert not strict.passed and any(m.startswith("crows_pairs") for m in strict.missing)


def test_five_shot_uses_the_fewshot_pool_and_five_shot_dir(corpus, task_dir, tmp_path):
    _, texts = corpus
    model = make_tiny_model(tmp_path / "m", texts, seed=1)
    written = ev.evaluate_checkpoints(
        {8: model}, ["mini_lambada"], 5, tmp_path / "out", "mini-a", task_dir=task_dir, limit=4
    )
    path = written[8]
    assert path == tmp_path / "out/mini-a/five-shot/mini-a_step8.json"
    doc = json.loads(path.read_text())
    assert doc["config"]["num_fewshot"] == 5 and doc["config"]["limit"] == 4
    raw = json.loads(path.with_suffix(".raw.json").read_text())
    assert raw["n-shot"]["mini_lambada"] == 5
    assert raw["configs"]["mini_lambada"]["fewshot_split"] == "train"


# --- the CLI's stage: local tasks from the config, collecting a run's batches ---------------


def test_build_suite_tasks_uses_the_configured_counts_and_records_them(corpus, tmp_path):
    from pythia_suite.evaluate.stage import build_suite_tasks

    shard, _ = corpus
    evaluation = {"local_task_docs": 12, "local_heldout_docs": 6, "local_choice_items": 20}
    out = tmp_path / "eval_tasks"
    build_suite_tasks({"evaluation": evaluation}, shard, None, out)
    by_hand = tmp_path / "by_hand"
    by_hand.mkdir()
    ev.build_local_tasks(
        shard, by_hand, 12, 1234, max_heldout_chars=2000, n_heldout=6, n_choice_items=20
    )
    built = {p.name: p.read_bytes() for p in out.iterdir() if p.name != "provenance.json"}
    assert built == {p.name: p.read_bytes() for p in by_hand.iterdir()}
    record = json.loads((out / "provenance.json").read_text())
    assert str(shard) in json.dumps(record["inputs"])
    assert record["config"]["values"] == {"n_docs": 12, "n_heldout": 6, "n_choice_items": 20}


def test_collect_evals_gathers_batches_in_pythia_layout(evaluated, tmp_path):
    from pythia_suite.evaluate.collect import collect_evals, pythia_result_files
    from pythia_suite.provenance import Recorder

    out, _ = evaluated
    batch = tmp_path / "batch0"
    shutil.copytree(out, batch)
    Recorder(batch, "eval", {}, []).write()  # the batch's own record: not collected
    collected = tmp_path / "evals" / "mini-a"
    collect_evals([batch], collected)
    names = sorted(p.relative_to(collected).as_posix() for p in collected.rglob("*.json"))
    assert names == [
        "provenance.json",
        "zero-shot/mini-a_step0.json",
        "zero-shot/mini-a_step0.raw.json",
        "zero-shot/mini-a_step4.json",
        "zero-shot/mini-a_step4.raw.json",
    ]
    record = json.loads((collected / "provenance.json").read_text())
    assert [i["path"] for i in record["inputs"]] == [str(batch)]
    assert pythia_result_files(collected) == [
        str(collected / "zero-shot/mini-a_step0.json"),
        str(collected / "zero-shot/mini-a_step4.json"),
    ]
