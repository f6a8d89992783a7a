"""Helpers for the tests that run the GPT-NeoX backend against the stand-in GPT-NeoX
(tests/neox_standin): a checkout of it, its call log, a tokenizer, and placeholder data."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import yaml
from suite_support import copy_repository

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
    from pythia_suite import paths
    from pythia_suite.data.order import index_map_paths
    from pythia_suite.data.source import num_samples

    results = config["paths"]["results"]
    prefix = paths.dataset_prefix(results, run.variant)
    order = Path(paths.order_dir(results, run.variant, run.data_seed))
    order.mkdir(parents=True, exist_ok=True)
    made = [Path(prefix + ".bin"), Path(prefix + ".idx")]
    made += index_map_paths(
        prefix, order, num_samples(config), config["model"]["seq_length"], run.data_seed
    )
    for path in made:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"")
    tiny_tokenizer(Path(paths.tokenizer(results)), config["data"]["tokenizer"]["vocab_size"])
    return made


def neox_overlay(path: Path, checkout: Path, python: str, **extra) -> Path:
    """A config overlay selecting the neox backend with the stand-in checkout."""
    training = {"backend": "neox", "neox": {"dir": str(checkout), "python": python}}
    overlay = {**extra, "training": {**extra.get("training", {}), **training}}
    path.write_text(yaml.safe_dump(overlay))
    return path


# --- the neox segment jobs on the local SLURM cluster (tests/test_slurm_neox.py, benchmarks) ---

RUN = "pythia-0.4m"
SITE = ["--default-resources", "slurm_account=pythia", "slurm_partition=debug", "mem_mb=1000",
        "runtime=20"]  # fmt: skip
FAST = ["--slurm-init-seconds-before-status-checks", "2", "--latency-wait", "5", "--jobs", "4"]


def _env() -> dict[str, str]:
    return {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
            "PYTHONUNBUFFERED": "1"}  # fmt: skip


class NeoXSuite:
    def __init__(self, root: Path, nodes: int, slots: int, run: str = RUN):
        self.root, self.nodes, self.slots, self.run = root, nodes, slots, run
        self.results = root / "results-neox"
        self.checkout = root.parent / "gpt-neox"
        self.config_files = ["config.yaml", "config/mini.yaml", "neox-ci.yaml"]

    def snakemake(self, *targets: str, timeout: float = 900) -> subprocess.CompletedProcess:
        return subprocess.run(self.argv(*targets), cwd=self.root, env=_env(),
                              capture_output=True, text=True, timeout=timeout)  # fmt: skip

    def start_snakemake(self, *targets: str) -> subprocess.Popen:
        """``snakemake(*targets)`` started, not awaited: its output goes to snakemake.out."""
        with (self.root / "snakemake.out").open("w") as out:
            return subprocess.Popen(self.argv(*targets), cwd=self.root, env=_env(), stdout=out,
                                    stderr=subprocess.STDOUT, text=True)  # fmt: skip

    def argv(self, *targets: str) -> list[str]:
        return [
            str(Path(sys.executable).with_name("snakemake")), "--profile", "profiles/slurm",
            "--configfile", *self.config_files, *SITE, *FAST,
            # Only training runs: the data it reads is placeholder files (the stand-in trainer
            # reads none), so the data-preparation rules must not try to remake them.
            "--allowed-rules", "init_checkpoint", "train_segment", "neox_index_maps", "--",
            *targets,
        ]  # fmt: skip

    def checkpoint(self, step: int) -> Path:
        return self.results / "runs" / self.run / "checkpoints" / f"step{step}"

    def jobs(
        self, output: str, rules: tuple[str, ...] = ("init_checkpoint", "train_segment")
    ) -> list[str]:
        """The SLURM job ids of ``rules``' jobs (the training jobs by default) in Snakemake's
        output, read from the plugin's per-rule log path."""
        pattern = r"submitted with SLURM jobid (\d+) \(log: \S*/slurm_logs/rule_(\w+)/"
        return [job for job, rule in re.findall(pattern, output) if rule in rules]


def prepare_neox_slurm_suite(base: Path, nodes: int, slots: int, seed: str = "default"
                             ) -> NeoXSuite:  # fmt: skip
    """A copy of the repository under ``base`` set up to train steps 0, 1, 2 of one tiny run
    under the neox backend with the stand-in, on ``nodes`` x ``slots`` CPU ranks of the local
    SLURM cluster (one job per step, no group), its data as placeholders. ``seed`` (a key of the
    config's ``seeds``) names the run: suites trained at once need different runs, or each
    segment job would wait for the other suite's job of the same segment (same comment)."""
    from pythia_suite import config as cfg

    root = base / "repo"
    copy_repository(root)
    suite = NeoXSuite(root, nodes, slots)
    standin_checkout(suite.checkout)
    neox_overlay(
        root / "neox-ci.yaml", suite.checkout, sys.executable,
        paths={"results": str(suite.results), "state": str(suite.results / "state")},
        matrix=[{"sizes": ["0.4m"], "variants": ["standard"], "seeds": [seed]}],
        sizes={"0.4m": {"micro_batch": 8 // (nodes * slots),
                        "cluster": {"nodes": nodes, "gpus_per_node": 0}}},
        cluster={"cpu_ranks_per_node": slots, "cpus_per_task": 1, "mem_mb_per_gpu": 800,
                 "minutes_per_segment": 10},
        # Steps 0 1 2, one job each (no group of early segments).
        training={"train_iters": 2, "lr_decay_iters": 2, "early_group_max_step": 0,
                  "checkpoints": {"factor": 2, "extra": [0, 1]}},
        evaluation={"zero_shot_steps": [0, 2], "five_shot_steps": [2]},
    )  # fmt: skip
    config = cfg.load_config([root / f for f in suite.config_files])
    (suite.run,) = cfg.expand_runs(config)
    placeholder_training_data(config, cfg.get_run(config, suite.run))
    return suite


def launch_summary(suite: NeoXSuite, output: str) -> list[dict]:
    """Per SLURM job of a finished run: what the stand-ins logged and what sacct accounted."""
    from suite_support import run_text

    jobs = suite.jobs(output)
    records = calls(suite.checkout)
    fields = ["JobID", "NNodes", "NodeList", "NTasks"]
    out = run_text("sacct", "-n", "-P", "-j", ",".join(jobs), "-o", ",".join(fields))
    rows = [dict(zip(fields, line.split("|"), strict=True)) for line in out.splitlines()]
    summary = []
    for job in jobs:
        mine = [r for r in records if r["env"].get("SLURM_JOB_ID") == job]
        ranks = [r for r in mine if r["prog"] == "train.py"]
        hosts: dict[str, int] = {}
        for r in ranks:
            hosts[r["host"]] = hosts.get(r["host"], 0) + 1
        steps = [r for r in rows if re.fullmatch(rf"{job}\.\d+", r["JobID"])]
        summary.append({
            "job": job,
            "nodes": next((r["NNodes"] for r in rows if r["JobID"] == job), "?"),
            "deepy.py": sum(r["prog"] == "deepy.py" for r in mine),
            "srun": sum(r["prog"] == "srun" for r in mine),
            "ranks": len(ranks),
            "ranks_per_host": hosts,
            "job_steps": [(s["NodeList"], s["NTasks"]) for s in steps],
        })  # fmt: skip
    return summary
