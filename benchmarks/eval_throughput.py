"""Evaluation throughput of the miniature suite's tasks on a tiny GPT-NeoX, on CPU.

Separates the three costs that decide how to batch evaluation jobs:

- start-up: importing lm-eval, torch and transformers' GPTNeoX (once per process);
- per call: one ``simple_evaluate`` on one document per task (model load, task build, dataset
  load from the local cache, bookkeeping), i.e. the overhead of each extra checkpoint;
- per document: the slope between two document counts, per task (mini_lambada: one
  loglikelihood request; mini_heldout: rolling loglikelihood over the whole document).

Also the cost of bootstrap stderrs (``bootstrap_iters``) for ``ppl_stderr``.

    python benchmarks/eval_throughput.py [--heldout SHARD.jsonl.zst] [--docs 16 64]
        [--size 1.3m|0.4m] [--batch-size 8]

Without ``--heldout`` the documents are synthetic (a few sentences of common words each).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

# The miniature suite's sizes (config/mini.yaml): layers, hidden, heads.
SIZES = {"0.4m": (2, 64, 4), "1.3m": (4, 128, 4)}
WORDS = (
    "the a of and to in is was he she it they that for on with as his her at by from this "
    "had not but what all were when we there can an which their said if do will each about "
    "how up out them then many some so these would other into has more time two like him "
    "see could no make than first been its who now people my made over did down only way find"
).split()


def synthetic_shard(path: Path, n: int, seed: int = 0) -> Path:
    import zstandard

    rng = random.Random(seed)
    lines = []
    for _ in range(n):
        sentences = [
            " ".join(rng.choice(WORDS) for _ in range(rng.randint(8, 18))).capitalize() + "."
            for _ in range(rng.randint(4, 8))
        ]
        lines.append(json.dumps({"text": " ".join(sentences), "meta": {"pile_set_name": "x"}}))
    path.write_bytes(zstandard.ZstdCompressor().compress(("\n".join(lines) + "\n").encode()))
    return path


def tiny_model(model_dir: Path, texts: list[str], size: str, vocab: int = 2048) -> Path:
    """A GPT-NeoX of the miniature suite's shape with a byte-level BPE trained on ``texts``."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(
        texts,
        trainers.BpeTrainer(
            vocab_size=vocab,
            special_tokens=["<|endoftext|>", "<|padding|>"],
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        ),
    )
    model_dir.mkdir(parents=True)
    tok.save(str(model_dir / "tokenizer.json"))
    (model_dir / "tokenizer_config.json").write_text(
        json.dumps(
            {
                "tokenizer_class": "GPTNeoXTokenizerFast",
                "eos_token": "<|endoftext|>",
                "pad_token": "<|padding|>",
                "model_max_length": 128,
            }
        )
    )
    layers, hidden, heads = SIZES[size]
    torch.manual_seed(0)
    config = GPTNeoXConfig(
        vocab_size=vocab,
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        intermediate_size=4 * hidden,
        max_position_embeddings=128,
        rotary_pct=0.25,
        bos_token_id=0,
        eos_token_id=0,
        tie_word_embeddings=False,
    )
    model = GPTNeoXForCausalLM(config)
    model.save_pretrained(model_dir)
    return model_dir, sum(p.numel() for p in model.parameters())


def timed(fn, repeat: int = 1) -> tuple[float, float]:
    """Median (wall, CPU of this process) seconds of ``fn()`` over ``repeat`` runs.

    CPU time is what to quote on a shared machine: wall time grows with other people's load.
    It misses the bootstrap's worker processes (lm-eval forks a pool for it).
    """
    walls, cpus = [], []
    for _ in range(repeat):
        w0, c0 = time.perf_counter(), time.process_time()
        fn()
        walls.append(time.perf_counter() - w0)
        cpus.append(time.process_time() - c0)
    return statistics.median(walls), statistics.median(cpus)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--heldout", type=Path, help="Pile-format held-out shard")
    parser.add_argument("--docs", type=int, nargs=2, default=[16, 64], metavar=("LOW", "HIGH"))
    parser.add_argument("--size", choices=sorted(SIZES), default="1.3m")
    parser.add_argument("--batch-size", type=int, default=8)
    args = parser.parse_args()
    low, high = args.docs

    w0, c0 = time.perf_counter(), time.process_time()
    import lm_eval  # noqa: F401
    import transformers.models.gpt_neox.modeling_gpt_neox  # noqa: F401
    from lm_eval.tasks import TaskManager

    t_import = (time.perf_counter() - w0, time.process_time() - c0)

    from pythia_suite import evaluate as ev

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        shard = args.heldout or synthetic_shard(tmp / "heldout.jsonl.zst", 2 * high + 64)
        configs = ev.build_local_tasks(shard, tmp / "tasks", n_docs=high, seed=0)
        texts = [json.loads(line)["text"] for line in open(tmp / "tasks/mini_heldout.jsonl")]
        model_dir, n_params = tiny_model(tmp / "model", texts, args.size)
        tm = TaskManager(include_defaults=False)

        def run(tasks: list[str], limit: int, bootstrap_iters: int = 0) -> None:
            lm_eval.simple_evaluate(
                model="hf",
                model_args={"pretrained": str(model_dir), "dtype": "float32"},
                tasks=[configs[t] for t in tasks],
                num_fewshot=0,
                batch_size=args.batch_size,
                device="cpu",
                task_manager=tm,
                bootstrap_iters=bootstrap_iters,
                limit=limit,
                log_samples=False,
            )

        t_first = timed(lambda: run(list(ev.LOCAL_TASKS), 1))  # also finishes lazy imports
        t_call = timed(lambda: run(list(ev.LOCAL_TASKS), 1), repeat=3)
        per_doc = {}
        for task in ev.LOCAL_TASKS:
            t_low = timed(lambda task=task: run([task], low), repeat=2)
            t_high = timed(lambda task=task: run([task], high), repeat=2)
            per_doc[task] = [(h - lo) / (high - low) for h, lo in zip(t_high, t_low, strict=True)]
        boot = {n: timed(lambda n=n: run(["mini_lambada"], high, n)) for n in (0, 100, 1000)}

    print(
        f"model: {args.size} ({n_params:,} parameters), batch size {args.batch_size}, "
        f"torch threads {__import__('torch').get_num_threads()}, "
        f"documents: {'synthetic' if not args.heldout else args.heldout}"
    )

    def both(t: tuple[float, float]) -> str:
        return f"{t[0]:6.2f} s wall {t[1]:6.2f} s CPU"

    print(f"load average at the end: {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    print(f"start-up (import lm_eval + transformers GPTNeoX): {both(t_import)}")
    print(f"first simple_evaluate call (1 doc/task):          {both(t_first)}")
    print(f"per call overhead (1 doc/task, median of 3):      {both(t_call)}")
    for task, (wall, cpu) in per_doc.items():
        print(
            f"per document, {task:13s} ({low}->{high} docs):  {wall * 1000:6.1f} ms wall "
            f"{cpu * 1000:6.1f} ms CPU = {1 / cpu if cpu > 0 else float('inf'):6.1f} docs/CPU-s"
        )
    for n, t in boot.items():
        print(f"mini_lambada, {high} docs, bootstrap_iters={n:5d}:    {both(t)}")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
