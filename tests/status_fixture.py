"""A synthetic results tree for `pythia-suite status`: what a suite leaves behind part-way.

Shared by tests/test_status.py and benchmarks/status_scale.py. Records keep to the contracts
the status tool reads: the segment summary (`paths.segment_summary`, keys exactly as in the
developers' brief), publish receipts with `verified`, provenance records, evaluation batch
directories with Pythia-layout result files, per-job logs and Snakemake incomplete markers.
Sizes are realistic (a receipt lists the export's files, a result file holds ~40 metrics, a
provenance record its inputs and packages) so timing the status on it means something.
"""

from __future__ import annotations

import base64
import json
import math
import os
from pathlib import Path

from pythia_suite import config as cfg
from pythia_suite import costs, paths

_PACKAGES = {
    name: "1.0.0"
    for name in (
        "pythia-suite torch transformers tokenizers safetensors numpy lm_eval huggingface_hub "
        "datasketch snakemake"
    ).split()
}


def _write(path: str | Path, text: str) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")


def _provenance(artifact: str, kind: str, inputs: list[str]) -> str:
    return json.dumps(
        {
            "kind": kind,
            "artifact": artifact,
            "sha256": "0" * 64,
            "config": {"hash": "1" * 16, "values": {}},
            "code": {"version": "0.1.0", "git": "2" * 40},
            "packages": _PACKAGES,
            "inputs": [{"path": p, "sha256": "3" * 64, "record": None} for p in inputs],
            "host": "gpu-node-017",
            "slurm_job_id": "123456",
            "devices": ["NVIDIA A100-SXM4-40GB"] * 8,
            "started_at": "2026-01-01T00:00:00Z",
            "finished_at": "2026-01-01T01:00:00Z",
        },
        indent=1,
    )


def segment_summary(
    config: dict,
    run: cfg.Run,
    start: int,
    end: int,
    *,
    tokens_per_s: float,
    spikes: list[dict] | None = None,
    overhead_s: float = 30.0,
) -> dict:
    """A segment summary exactly as the training helper writes it (brief's contract)."""
    size = config["sizes"][run.size]
    cluster = size["cluster"]
    devices = cfg.devices(config, run.size)
    steps = end - start
    tokens = steps * cfg.total_tokens(config) // config["training"]["train_iters"]
    train_time = tokens / tokens_per_s
    wall = train_time * 1.05 + overhead_s  # set-up and save
    flops_per_token = float(cfg.training_flops_per_token(config, run.size))
    kind = costs.device_kind(config, run.size)
    peak = cfg.gpu_record(config, run.size)["peak_tflops"]
    mfu = tokens_per_s * flops_per_token / (devices * peak * 1e12)
    loss = 8.5 * math.exp(-7 * end / config["training"]["train_iters"]) + 2.0
    return {
        "format": "pythia-suite/segment-summary/1",
        "run": run.name,
        "size": run.size,
        "start_step": start,
        "end_step": end,
        "steps": steps,
        "skipped_steps": 0,
        "tokens": tokens,
        "tokens_per_s": tokens_per_s,
        "flops_per_token": flops_per_token,
        "mfu": mfu,
        "peak_tflops": peak,
        "device_kind": kind,
        "device_name": cfg.gpu_record(config, run.size)["name"],
        "devices": devices,
        "nodes": cluster["nodes"],
        "data_parallel": devices // size["tensor_parallel"],
        "tensor_parallel": size["tensor_parallel"],
        "micro_batch": size["micro_batch"],
        "gas": size["gas"],
        "precision": cfg.precision(config, run),
        "wall_s": wall,
        "train_time_s": train_time,
        "device_hours": devices * wall / 3600,
        "losses": {
            "first": loss + 0.1,
            "last": loss,
            "min": loss - 0.02,
            "max": loss + 0.15,
            "mean": loss + 0.05,
        },
        "spikes": spikes or [],
        "nan_abort": False,
        "started_at": "2026-01-01T00:00:00Z",
        "finished_at": "2026-01-01T01:00:00Z",
        "slurm_job_id": "123456",
        "hosts": [f"gpu-node-{i:03d}" for i in range(cluster["nodes"])],
    }


def _receipt(run: str, step: int) -> str:
    files = {
        name: {"size": size, "sha256": f"{step:064x}"}
        for name, size in (
            ("config.json", 580),
            ("generation_config.json", 111),
            ("model.safetensors", 166_049_360),
            ("special_tokens_map.json", 99),
            ("tokenizer.json", 2_113_710),
            ("tokenizer_config.json", 396),
            ("provenance.json", 2400),
        )
    }
    record = {
        "repo_id": f"pythia-suite/{run}",
        "branch": f"step{step}",
        "step": step,
        "local_commit": "4" * 40,
        "hub": {"commit": "5" * 40, "sent": True, "verified": True},
        "files": files,
        "verified": True,
    }
    return json.dumps(record, indent=1)


def _eval_result(run: str, step: int, shots: int) -> str:
    tasks = (
        "lambada_openai piqa winogrande wsc arc_easy arc_challenge sciq logiqa "
        "hendrycksTest-abstract_algebra hendrycksTest-anatomy"
    ).split()
    results = {}
    for i, task in enumerate(tasks):
        acc = 0.25 + 0.4 * (1 - math.exp(-(step + 1) / 30000)) + 0.01 * i
        results[task] = {
            "acc": acc,
            "acc_stderr": 0.01,
            "acc_norm": acc * 0.98,
            "acc_norm_stderr": 0.01,
        }
    return json.dumps(
        {
            "results": results,
            "versions": {t: 0 for t in tasks},
            "config": {
                "model": "hf",
                "model_args": f"pretrained={run},revision=step{step}",
                "num_fewshot": shots,
                "batch_size": 16,
                "limit": None,
            },
        },
        indent=2,
    )


def incomplete_marker(workdir: str | Path, target: str, job_id: str | None = None) -> Path:
    """A Snakemake 9 incomplete marker for `target` (path relative to workdir, as Snakemake
    keys it), as FilePersistence writes it."""
    name = base64.urlsafe_b64encode(target.encode()).decode()
    path = Path(workdir) / ".snakemake" / "incomplete" / name
    _write(path, json.dumps({"external_jobid": job_id}))
    return path


def build_tree(
    config: dict,
    fraction: float,
    *,
    tokens_per_s: float | dict[str, float] = 50_000.0,
    spike_every: int = 0,
    evaluate: bool = True,
    receipts: bool = True,
    overhead_s: float = 30.0,
) -> dict[str, int]:
    """Fill `config.paths.results` as a suite `fraction` (0-1) of the way through.

    Each run has trained, exported and published the first `fraction` of its checkpoint steps
    (a segment summary in every checkpoint after step0), and evaluated those of its evaluation
    steps it has. `tokens_per_s` (one figure or one per size) sets the measured throughput;
    `spike_every` puts a loss spike in every n-th segment. Returns the last step per run.
    """
    results = config["paths"]["results"]
    steps = cfg.checkpoint_steps(config)
    upto = steps[: max(1, round(len(steps) * fraction))]
    last = {}
    zero_steps = set(config["evaluation"]["zero_shot_steps"])
    five_steps = set(config["evaluation"]["five_shot_steps"])
    for run in cfg.expand_runs(config).values():
        rate = tokens_per_s if isinstance(tokens_per_s, float | int) else tokens_per_s[run.size]
        previous = None
        for i, step in enumerate(upto):
            ckpt = paths.checkpoint_dir(results, run.name, step)
            _write(f"{ckpt}/provenance.json", _provenance(ckpt, "checkpoint", []))
            _write(f"{ckpt}/trainer_state.json", json.dumps({"step": step}))
            if previous is not None:
                spikes = (
                    [{"step": step - 1, "loss": 9.9, "running_mean": 3.1}]
                    if spike_every and i % spike_every == 0
                    else []
                )
                summary = segment_summary(
                    config,
                    run,
                    previous,
                    step,
                    tokens_per_s=float(rate),
                    spikes=spikes,
                    overhead_s=overhead_s,
                )
                _write(
                    paths.segment_summary(results, run.name, step), json.dumps(summary, indent=1)
                )
            export = paths.export_dir(results, run.name, step)
            _write(f"{export}/provenance.json", _provenance(export, "export", [ckpt]))
            if receipts:
                receipt = paths.receipt(results, run.name, step)
                _write(receipt, _receipt(run.name, step))
                _write(
                    receipt.replace(".json", ".json.provenance.json"),
                    _provenance(receipt, "publish-receipt", [export]),
                )
            previous = step
        if evaluate:
            done = set(upto)
            for shots, n, planned in (("zero", 0, zero_steps), ("five", 5, five_steps)):
                for b, batch_steps in enumerate(cfg.eval_batches(config, n)):
                    if not set(batch_steps) <= done:
                        continue
                    batch = paths.eval_batch_dir(results, run.name, shots, f"{b:03d}")
                    for s in batch_steps:
                        if s in planned:
                            shot_dir = "zero-shot" if n == 0 else "five-shot"
                            _write(
                                f"{batch}/{run.name}/{shot_dir}/{run.name}_step{s}.json",
                                _eval_result(run.name, s, n),
                            )
                    _write(f"{batch}/provenance.json", _provenance(batch, "eval", []))
        last[run.name] = upto[-1]
    return last


def write_log(config: dict, *parts: str, text: str) -> str:
    """A per-job log at `paths.log(results, *parts)` with `text`; returns its path."""
    path = paths.log(config["paths"]["results"], *parts)
    _write(path, text)
    return path


def results_size_bytes(results: str | os.PathLike) -> int:
    """Bytes of the files under `results` (to report the synthetic tree's size)."""
    return sum(p.stat().st_size for p in Path(results).rglob("*") if p.is_file())
