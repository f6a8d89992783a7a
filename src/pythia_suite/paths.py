"""Where every artifact lives: the one definition of the results tree.

The workflow builds its rule patterns from these functions (passing wildcard placeholders such
as "{run}" for the values) and the CLI resolves concrete paths with them, so the two agree.
"""

from __future__ import annotations


def corpus_shard(results: str, variant: str, shard: str) -> str:
    """A Pile-format input shard; `deduped` shards are the dedup stage's output."""
    return f"{results}/data/corpus/{variant}/{shard}.jsonl.zst"


def tokenizer(results: str) -> str:
    return f"{results}/data/tokenizer/tokenizer.json"


def dedup_signatures(results: str, shard: str) -> str:
    return f"{results}/data/dedup/signatures/{shard}.npz"


def dedup_edges(results: str, band: str) -> str:
    return f"{results}/data/dedup/edges/group{band}.npz"


def dedup_removals(results: str) -> str:
    return f"{results}/data/dedup/removals.npz"


def dedup_shard_report(results: str, shard: str) -> str:
    return f"{results}/data/dedup/reports/{shard}.json"


def dedup_report(results: str) -> str:
    return f"{results}/data/dedup/report.json"


def tokenized_prefix(results: str, variant: str, shard: str) -> str:
    return f"{results}/data/tokenized/{variant}/{shard}_text_document"


def dataset_prefix(results: str, variant: str) -> str:
    """The training dataset of a variant, named like GPT-NeoX's `*_text_document`."""
    return f"{results}/data/datasets/{variant}/{variant}_text_document"


def order_dir(results: str, variant: str, data_seed: int | str) -> str:
    return f"{results}/data/order/{variant}/seed{data_seed}"


def document_table(results: str, variant: str) -> str:
    """A dataset's document table (pythia_suite.data.documents), raw source."""
    return f"{results}/data/datasets/{variant}/documents"


def shard_document_table(results: str, variant: str, shard: str) -> str:
    """One tokenized shard's document table, written by tokenization."""
    return f"{tokenized_prefix(results, variant, shard)}.documents.npz"


def lens_dir(results: str, variant: str, data_seed: int | str) -> str:
    """The data lens of one order (pythia_suite.data.lens)."""
    return f"{results}/data/lens/{variant}/seed{data_seed}"


def preshuffled_prefix(results: str, variant: str) -> str:
    return f"{results}/data/preshuffled/{variant}/document"


def idxmaps_file(results: str, variant: str, name: str) -> str:
    """One fetched file (shard or .idx) of a variant's pre-tokenized Pile (data.idxmaps)."""
    return f"{results}/data/idxmaps/{variant}/{name}"


def eval_tasks_dir(results: str) -> str:
    return f"{results}/data/eval_tasks"


def eval_datasets_marker(results: str) -> str:
    """Written once lm-eval's datasets for the configured tasks are in the local cache."""
    return f"{results}/data/eval_datasets.json"


def checkpoint_dir(results: str, run: str, step: int | str) -> str:
    return f"{results}/runs/{run}/checkpoints/step{step}"


# Written by the training backend into each checkpoint directory it produces: the segment's
# compact record (steps, tokens/s, MFU, wall and device hours, losses, spikes). Status tooling
# reads this, never the full training history in trainer_state.json.
SEGMENT_SUMMARY_NAME = "segment_summary.json"
SEGMENT_SUMMARY_FORMAT = "pythia-suite/segment-summary/1"


def segment_summary(results: str, run: str, step: int | str) -> str:
    return f"{checkpoint_dir(results, run, step)}/{SEGMENT_SUMMARY_NAME}"


def segment_summary_record(
    *,
    run: str,
    size: str,
    start_step: int,
    end_step: int,
    steps: int,
    skipped_steps: int | None,
    tokens_per_step: int,
    train_time_s: float,
    wall_s: float,
    flops_per_token: float,
    peak_tflops: float | None,
    device_kind: str,
    device_name: str,
    devices: int,
    nodes: int,
    data_parallel: int,
    tensor_parallel: int,
    micro_batch: int,
    gas: int,
    precision: str,
    losses: list[float],
    spikes: list,
    started_at: str,
    hosts: list[str],
) -> dict:
    """The segment summary record, exactly its keys: one builder for both training backends.

    Derives ``tokens`` (steps x tokens per step), ``tokens_per_s`` (over ``train_time_s``;
    None without training time), ``mfu`` (flops_per_token x tokens_per_s / (devices x peak);
    None without a peak), ``device_hours`` (devices x wall), the loss statistics (None where
    ``losses`` is empty) and ``finished_at`` (now, UTC). A NaN abort writes no checkpoint,
    hence no summary: ``nan_abort`` is always false here.
    """
    import datetime
    import os

    tokens = steps * tokens_per_step
    tokens_per_s = tokens / train_time_s if train_time_s > 0 else None
    mfu = None
    if peak_tflops and tokens_per_s:
        mfu = flops_per_token * tokens_per_s / (devices * peak_tflops * 1e12)
    return {
        "format": SEGMENT_SUMMARY_FORMAT,
        "run": run,
        "size": size,
        "start_step": start_step,
        "end_step": end_step,
        "steps": steps,
        "skipped_steps": skipped_steps,
        "tokens": tokens,
        "tokens_per_s": tokens_per_s,
        "flops_per_token": float(flops_per_token),
        "mfu": mfu,
        "peak_tflops": peak_tflops,
        "device_kind": device_kind,
        "device_name": device_name,
        "devices": devices,
        "nodes": nodes,
        "data_parallel": data_parallel,
        "tensor_parallel": tensor_parallel,
        "micro_batch": micro_batch,
        "gas": gas,
        "precision": precision,
        "wall_s": wall_s,
        "train_time_s": train_time_s,
        "device_hours": devices * wall_s / 3600,
        "losses": {
            "first": losses[0] if losses else None,
            "last": losses[-1] if losses else None,
            "min": min(losses) if losses else None,
            "max": max(losses) if losses else None,
            "mean": sum(losses) / len(losses) if losses else None,
        },
        "spikes": spikes,
        "nan_abort": False,
        "started_at": started_at,
        "finished_at": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "slurm_job_id": os.environ.get("SLURM_JOB_ID"),
        "hosts": hosts,
    }


def export_dir(results: str, run: str, step: int | str) -> str:
    return f"{results}/runs/{run}/exports/step{step}"


def receipt(results: str, run: str, step: int | str) -> str:
    return f"{results}/runs/{run}/published/step{step}.json"


def eval_batch_dir(results: str, run: str, shots: str, batch: str) -> str:
    return f"{results}/runs/{run}/evals/{shots}-shot/batch{batch}"


def evals_dir(results: str, run: str) -> str:
    """Pythia's evaluation layout for one run: {zero-shot,five-shot}/<run>_step<N>.json."""
    return f"{results}/evals/{run}"


def model_card(results: str, run: str) -> str:
    return f"{results}/runs/{run}/model_card/README.md"


def model_card_receipt(results: str, run: str) -> str:
    """The receipt of the model card's publication to the local hub's main branch."""
    return f"{results}/runs/{run}/model_card/published.json"


def run_done(results: str, run: str) -> str:
    return f"{results}/runs/{run}/run.done"


def report_dir(results: str) -> str:
    return f"{results}/report"


def local_hub(results: str) -> str:
    """The local hub: huggingface_hub's cache layout, usable as `cache_dir`."""
    return f"{results}/hub"


def state_dir(state: str, run: str) -> str:
    """A run's in-progress resume state: outside every declared output."""
    return f"{state}/{run}"


def plan_record(results: str) -> str:
    """The plan's prediction, recorded once when the suite starts (pythia_suite.costs)."""
    return f"{results}/plan.json"


def status_page(results: str) -> str:
    """The progress page `pythia-suite status --html` writes (outside the report's directory)."""
    return f"{results}/status/index.html"


def log(results: str, *parts: str) -> str:
    return f"{results}/logs/" + "/".join(parts) + ".log"
