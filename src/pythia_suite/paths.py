"""Where every artifact lives: the one definition of the results tree.

The workflow builds its rule patterns from these functions (passing wildcard placeholders such
as "{run}" for the values) and the CLI resolves concrete paths with them, so the two agree.
"""

from __future__ import annotations

from pythia_suite.train.summary import SEGMENT_SUMMARY_NAME


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


def segment_summary(results: str, run: str, step: int | str) -> str:
    """The checkpoint's segment summary record (``train.summary``)."""
    return f"{checkpoint_dir(results, run, step)}/{SEGMENT_SUMMARY_NAME}"


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
