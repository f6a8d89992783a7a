"""The data lens on the miniature corpus, through the CLI: `lens` against `batch`, the document
table (shard, record, subset, the deduped-to-standard join) and the preshuffled refusal."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml

from pythia_suite import paths
from pythia_suite.cli import main
from pythia_suite.data.documents import DocumentTable
from pythia_suite.data.shards import iter_documents

REPO = Path(__file__).resolve().parents[1]
SHARDS = [REPO / "data/mini-pile/train/00.jsonl.zst", REPO / "data/mini-pile/train/01.jsonl.zst"]
RUN = "pythia-0.4m"


@pytest.fixture(scope="module")
def mini(tmp_path_factory):
    """The miniature corpus tokenized (standard, and a 'deduped' variant that drops every third
    line of shard 00 verbatim, as dedup-filter copies lines), with document tables, the
    default-seed order and its lens, laid out where the CLI looks."""
    root = tmp_path_factory.mktemp("lens_mini")
    results = root / "results"
    overlay = root / "overlay.yaml"
    overlay.write_text(yaml.safe_dump({"paths": {"results": str(results)}}))
    config = ["--config", str(REPO / "config.yaml"), "--config", str(REPO / "config/mini.yaml")]
    config += ["--config", str(overlay)]
    res = str(results)
    tokenizer = paths.tokenizer(res)
    assert main([*config, "train-tokenizer", *map(str, SHARDS), "--output", tokenizer]) == 0
    deduped_dir = root / "deduped"
    deduped_dir.mkdir()
    lines = [
        line
        for k, line in enumerate(_plain_lines(SHARDS[0]))
        if k % 3 != 1  # drop every third document, keep the others verbatim
    ]
    (deduped_dir / "00.jsonl").write_text("".join(lines))
    sources = {"standard": SHARDS, "deduped": [deduped_dir / "00.jsonl", SHARDS[1]]}
    for variant in ("standard", "deduped"):
        prefixes = []
        for k, shard in enumerate(sources[variant]):
            prefix = paths.tokenized_prefix(res, variant, f"{k:02d}")
            tables = paths.shard_document_table(res, variant, f"{k:02d}")
            argv = [*config, "tokenize", str(shard), "--tokenizer", tokenizer]
            argv += ["--output-prefix", prefix, "--documents", tables, "--workers", "1"]
            assert main(argv) == 0
            prefixes.append(prefix)
        dataset = paths.dataset_prefix(res, variant)
        assert main([*config, "merge-datasets", *prefixes, "--output-prefix", dataset]) == 0
        argv = [*config, "document-table"]
        argv += [paths.shard_document_table(res, variant, f"{k:02d}") for k in range(2)]
        argv += ["--dataset-prefix", dataset, "--output", paths.document_table(res, variant)]
        if variant == "deduped":
            argv += ["--standard", paths.document_table(res, "standard")]
        assert main(argv) == 0
    order = paths.order_dir(res, "standard", 1234)
    dataset = paths.dataset_prefix(res, "standard")
    argv = [*config, "build-order", "--dataset-prefix", dataset, "--seed", "1234"]
    assert main([*argv, "--output", order]) == 0
    argv = [*config, "build-lens", "--variant", "standard", "--dataset-prefix", dataset]
    argv += ["--order", order, "--documents", paths.document_table(res, "standard")]
    argv += ["--seed", "1234", "--output", paths.lens_dir(res, "standard", 1234)]
    assert main(argv) == 0
    return {"config": config, "results": res, "sources": sources}


def _plain_lines(path: Path) -> list[str]:
    return [json.dumps(doc) + "\n" for _, doc in iter_documents(path)]


def _lens_json(capsys, config, *args) -> dict:
    capsys.readouterr()
    assert main([*config, "lens", RUN, *args, "--json"]) == 0
    return json.loads(capsys.readouterr().out)["result"]


@pytest.mark.parametrize("step", [0, 1, 77, 127])
def test_lens_documents_equal_the_batch_position_by_position(mini, capsys, tmp_path, step):
    from pythia_suite.data.indexed import IndexedDataset

    config = mini["config"]
    out = tmp_path / "batch.npy"
    assert main([*config, "batch", RUN, "--step", str(step), "--output", str(out)]) == 0
    batch = np.load(out)
    samples = _lens_json(capsys, config, "--step", str(step))
    dataset = IndexedDataset(paths.dataset_prefix(mini["results"], "standard"))
    table = DocumentTable(paths.document_table(mini["results"], "standard"))
    assert len(samples) == batch.shape[0] == 8
    for row, sample in enumerate(samples):
        position = 0
        for piece in sample["pieces"]:
            tokens = dataset.get(piece["document"])[piece["begin"] : piece["end"]]
            np.testing.assert_array_equal(batch[row, position : position + len(tokens)], tokens)
            position += len(tokens)
            assert piece["tokens"] == len(tokens)
            assert (piece["shard"], piece["record"]) == (
                int(table.shard[piece["document"]]),
                int(table.record[piece["document"]]),
            )
            assert piece["occurrence"] == 1  # one epoch: nothing repeats
            assert 0 <= piece["first_step"] <= step
        assert position == batch.shape[1]


def test_document_table_rows_name_their_shard_record_and_subset(mini):
    table = DocumentTable(paths.document_table(mini["results"], "standard"))
    expected = []
    for shard, path in enumerate(SHARDS):
        for line, doc in iter_documents(path):
            if doc["text"]:
                expected.append((shard, line, doc["meta"]["pile_set_name"]))
    rows = [table.row(d) for d in range(len(table))]
    assert [(r["shard"], r["record"], r["subset"]) for r in rows] == expected
    assert "Gutenberg (PG-19)" in table.subsets


def test_deduped_documents_join_their_standard_ids(mini):
    standard = DocumentTable(paths.document_table(mini["results"], "standard"))
    deduped = DocumentTable(paths.document_table(mini["results"], "deduped"))
    assert standard.standard_id is None and deduped.meta["standard_unmatched"] == 0
    # deduped shard 00 keeps standard lines 1, 3, 4, 6, 7, ... (every third dropped)
    kept_lines = [line for k, line in enumerate(range(1, 10_000)) if k % 3 != 1]
    hashes = np.asarray(standard.text_hash)
    unique = 0
    for d in range(len(deduped)):
        s = int(deduped.standard_id[d])
        same_text = np.flatnonzero(hashes == deduped.text_hash[d])
        assert s == same_text[0]  # exact duplicates: the first in (shard, line) order
        if len(same_text) > 1:
            continue
        unique += 1
        assert int(standard.shard[s]) == int(deduped.shard[d])
        if int(deduped.shard[d]) == 0:
            assert int(standard.record[s]) == kept_lines[int(deduped.record[d]) - 1]
        else:
            assert int(standard.record[s]) == int(deduped.record[d])
    assert unique > len(deduped) // 2


def test_lens_document_query_lists_every_step_holding_it(mini, capsys):
    config = mini["config"]
    first = _lens_json(capsys, config, "--step", "5")[0]["pieces"][0]
    hits = _lens_json(capsys, config, "--document", str(first["document"]))
    assert any(h["step"] == 5 and h["row"] == 0 for h in hits)
    assert all(h["occurrence"] == 1 for h in hits)


def test_lens_checkpoint_table_and_text_output(mini, capsys):
    config = mini["config"]
    meta = _lens_json(capsys, config, "--checkpoints")
    steps = [row["step"] for row in meta["checkpoints"]]
    assert steps[0] == 0 and steps[-1] == 128
    final = meta["checkpoints"][-1]
    assert final["tokens"] == 128 * 8 * 129 == sum(final["subset_tokens"])
    assert meta["first_repeated_step"] is None and final["repeated_share"] == 0.0
    assert main([*config, "lens", RUN, "--checkpoints"]) == 0
    text = capsys.readouterr().out
    assert "first step holding a repeated document: None" in text and "Gutenberg" in text
    assert main([*config, "lens", RUN, "--step", "3"]) == 0
    text = capsys.readouterr().out
    assert text.startswith("step 3: 8 samples") and "record" in text and "occurrence 1" in text


def test_preshuffled_lens_splits_at_end_of_document_and_says_what_it_cannot_know(
    mini, capsys, tmp_path
):
    from pythia_suite.data.preshuffled import write_preshuffled

    results = tmp_path / "results"
    overlay = tmp_path / "pre.yaml"
    overlay.write_text(
        yaml.safe_dump({"paths": {"results": str(results)}, "data": {"source": "preshuffled"}})
    )
    config = [*mini["config"][:4], "--config", str(overlay)]
    rng = np.random.RandomState(0)
    samples = rng.randint(2, 100, size=(8 * 128, 129))
    samples[:, 40] = 0
    write_preshuffled(samples, paths.preshuffled_prefix(str(results), "standard"), len(samples))
    assert main([*config, "lens", RUN, "--step", "2"]) == 0
    text = capsys.readouterr().out
    assert "sample 0: 2 documents, tokens 41, 88+" in text
    assert "need the run's index maps: set data.source to idxmaps or raw" in text
    assert main([*config, "lens", RUN, "--checkpoints"]) == 1
    assert "pythia-0.4m: document identity and repetition need" in capsys.readouterr().err


def test_data_facts_reach_the_model_card_and_the_report_figure(mini, tmp_path):
    from pythia_suite.data.lens import data_facts
    from pythia_suite.modelcard import render_model_card
    from pythia_suite.report import plot_data_composition

    lens_dir = paths.lens_dir(mini["results"], "standard", 1234)
    facts = data_facts(lens_dir)
    assert facts[0].startswith("no document repeats in training")
    assert "0.0% of the tokens from repeated documents" in facts[1]
    run = {
        "name": RUN, "repo_id": f"org/{RUN}", "size": "0.4m", "variant": "standard",
        "layers": 2, "hidden": 64, "heads": 4, "lr": 3e-3, "batch": 8, "seq_length": 128,
        "train_iters": 128, "steps": [0, 128], "dataset": "mini", "data_facts": facts,
    }  # fmt: skip
    card = render_model_card(run)
    assert f"- {facts[0]}." in card and f"- {facts[1]}." in card
    figure, lines = plot_data_composition({"standard, data seed 1234": lens_dir}, tmp_path)
    assert figure.read_bytes().startswith(b"\x89PNG")
    assert lines == [
        "- standard, data seed 1234: 1 epoch(s) in doc_idx; no repeats; 0.0% of all tokens read "
        "come from repeated documents"
    ]


def test_tokenized_shard_table_is_the_same_for_any_number_of_workers(mini, tmp_path):
    from pythia_suite.data.documents import read_shard_documents
    from pythia_suite.data.tokenize import tokenize_shard

    shard = tmp_path / "shard.jsonl"
    lines = _plain_lines(SHARDS[1])[:40]
    lines[3] = json.dumps({"text": "", "meta": {"pile_set_name": "Empty"}}) + "\n"
    lines[7] = json.dumps({"text": "no meta here"}) + "\n"
    shard.write_text("".join(lines))
    tokenizer = paths.tokenizer(mini["results"])
    tables = []
    for workers in (1, 2):
        out = tmp_path / f"w{workers}"
        tokenize_shard(shard, tokenizer, out, progress=False, workers=workers,
                       documents_out=f"{out}.documents.npz")  # fmt: skip
        tables.append(read_shard_documents(f"{out}.documents.npz"))
    one, two = tables
    for key in ("record", "subset", "subset_names", "text_hash"):
        np.testing.assert_array_equal(one[key], two[key])
    assert one["record"].tolist() == [k for k in range(1, 41) if k != 4]  # the empty one dropped
    assert one["subset_names"][one["subset"][6]] == "(none)"  # line 8: no meta


def test_lens_refuses_steps_and_documents_outside_training(mini, capsys):
    config = mini["config"]
    capsys.readouterr()
    assert main([*config, "lens", RUN, "--step", "128"]) == 1
    assert "--step 128: training runs steps 0 .. 127" in capsys.readouterr().err
    assert main([*config, "lens", RUN, "--document", "99999"]) == 1
    err = capsys.readouterr().err
    assert "--document 99999: the dataset has documents 0 .. " in err and "Traceback" not in err
