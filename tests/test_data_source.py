"""One data-source function (data.source.training_data) and one data-seed check, everywhere."""

from __future__ import annotations

import copy
import subprocess
import sys
from pathlib import Path

import pytest

from pythia_suite import config as cfg
from pythia_suite.cli import main
from pythia_suite.data.source import check_data_seed, training_data

REPO = Path(__file__).resolve().parents[1]
SNAKEMAKE = str(Path(sys.executable).with_name("snakemake"))
DATA_SEED_RUN = "matrix:\n  - {sizes: [160m], variants: [standard], seeds: [default, data-seed1]}\n"
REFUSED = (
    "run pythia-160m-data-seed1: data seed 1, but data.source: preshuffled is Pythia's "
    "published order, that of data seed 1234; set data.source: idxmaps"
)


@pytest.fixture
def suite():
    return cfg.load_config([REPO / "config.yaml"])


def _run(config, name):
    return cfg.expand_runs(config)[name]


def test_each_source_gives_its_dataset_order_and_inputs(suite):
    config = copy.deepcopy(suite)
    config["matrix"] = [{"sizes": ["160m"], "variants": ["deduped"], "seeds": ["data-seed1"]}]
    run = _run(config, "pythia-160m-deduped-data-seed1")
    results = config["paths"]["results"]
    order = f"{results}/data/order/deduped/seed1"
    dataset = f"{results}/data/datasets/deduped/deduped_text_document"

    config["data"]["source"] = "idxmaps"
    tokens = training_data(config, run)
    assert (tokens.dataset_prefix, tokens.order_dir, tokens.data_seed) == (dataset, order, 1)
    assert tokens.workflow_inputs() == [f"{dataset}.bin", f"{dataset}.idx", order]
    assert tokens.recorded_inputs() == [Path(f"{dataset}.bin"), Path(order)]
    assert tokens.hub_repo == "EleutherAI/pythia_deduped_pile_idxmaps" and tokens.has_documents
    assert (
        "`EleutherAI/pythia_deduped_pile_idxmaps` (revision `main`): its files checked against "
        "their published sha256"
        in tokens.description
        and "data seed 1." in tokens.description
    )

    config["data"]["source"] = "raw"
    with pytest.raises(cfg.ConfigError, match="data.raw.shards: data.source is 'raw' but no shard"):
        training_data(config, run)
    config["data"]["raw"]["shards"] = [{"path": "pile/train/00.jsonl.zst"}]
    raw = training_data(config, run)
    assert (raw.dataset_prefix, raw.order_dir, raw.hub_repo) == (dataset, order, None)
    assert raw.description is None and raw.fingerprint["dedup"] == config["data"]["dedup"]
    assert raw.fingerprint != tokens.fingerprint  # a change of source reruns training

    config["data"]["source"] = "preshuffled"
    default = _run(suite, "pythia-160m-deduped")
    pre = training_data(config, default)
    assert pre.order_dir is None and not pre.has_documents
    preshuffled = f"{results}/data/preshuffled/deduped/document"
    assert pre.workflow_inputs() == [f"{preshuffled}.bin", f"{preshuffled}.idx"]
    assert pre.hub_repo == config["data"]["preshuffled"]["deduped"]


def test_the_seed_check_refuses_what_a_source_or_backend_cannot_give(suite):
    config = copy.deepcopy(suite)
    config["matrix"] = [
        {"sizes": ["160m"], "variants": ["standard"], "seeds": ["data-seed1", "weight-seed2"]}
    ]
    data_seed, weight_seed = (
        _run(config, "pythia-160m-data-seed1"),
        _run(config, "pythia-160m-weight-seed2"),
    )
    with pytest.raises(cfg.ConfigError, match=REFUSED):
        check_data_seed(config, data_seed)
    check_data_seed(config, weight_seed)  # data seed 1234: the preshuffled set is its order
    for source in ("idxmaps", "raw"):
        config["data"]["source"] = source
        check_data_seed(config, data_seed)
        # GPT-NeoX v1.0: one seed for both, whatever the source
        for run in (data_seed, weight_seed):
            with pytest.raises(cfg.ConfigError, match=f"run {run.name}: .* GPT-NeoX v1.0"):
                check_data_seed(config, run, backend="neox")


@pytest.mark.parametrize("command", [["plan"], ["batch", "pythia-160m", "--step", "0"]])
def test_plan_and_batch_refuse_a_data_seed_under_preshuffled_naming_the_run(
    tmp_path, capsys, command
):
    overlay = tmp_path / "seeds.yaml"
    overlay.write_text(DATA_SEED_RUN)
    args = ["--config", str(REPO / "config.yaml"), "--config", str(overlay)]
    assert main([*args, *command]) == 1
    err = capsys.readouterr().err
    assert REFUSED in err and "Traceback" not in err
    overlay.write_text(DATA_SEED_RUN + "data: {source: idxmaps, idxmaps: {standard: "
                       "{repo: some/standard_idxmaps, stem: s, shards: 2}}}\n")  # fmt: skip
    assert main([*args, "plan"]) == 0  # the fix the message names


def _dry_run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [SNAKEMAKE, "-n", "--quiet", "rules", *args],
        cwd=REPO, capture_output=True, text=True, timeout=300,
    )  # fmt: skip


def test_the_workflow_refuses_a_data_seed_under_preshuffled_and_plans_idxmaps(tmp_path):
    overlay = tmp_path / "seeds.yaml"
    overlay.write_text(DATA_SEED_RUN)
    refused = _dry_run("--configfile", "config.yaml", str(overlay))
    assert refused.returncode != 0 and REFUSED in refused.stdout + refused.stderr

    overlay.write_text(
        "matrix:\n  - {sizes: [160m], variants: [deduped], seeds: [default, data-seed1]}\n"
        "data: {source: idxmaps}\n"
    )
    target = "results/runs/pythia-160m-deduped-data-seed1/published/step1.json"
    planned = _dry_run("--configfile", "config.yaml", str(overlay), "--", target)
    output = planned.stdout + planned.stderr
    assert planned.returncode == 0, output[-3000:]
    counts = {line.split()[0]: int(line.split()[1]) for line in output.splitlines()
              if len(line.split()) == 2 and line.split()[1].isdigit()}  # fmt: skip
    # 83 shards and the .idx, one dataset, the run's own order (data seed 1).
    assert counts["fetch_idxmaps"] == 84 and counts["unshard_idxmaps"] == 1
    assert counts["build_order"] == 1 and "merge_dataset" not in counts
