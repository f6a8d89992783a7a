"""Tokens/s of ``train_segment`` vs a minimal hand-written PyTorch loop (one process, fp32, CPU).

Same model, same batches, same AdamW + gradient clipping; both measured per step at steady state
(the first steps are warm-up). Runs alternate (A B A B ...) so that a busy shared machine hurts
both alike. Goal: backend / hand loop >= 0.95.

Two statistics: the median of the rounds' median ratios, and the ratio of the fastest steps of
each loop over all rounds (like ``timeit``'s minimum: on a machine other processes share, the
fastest step is the one least slowed by them, so that ratio shows the loops' own overhead).

    python benchmarks/train_throughput.py [--steps 12] [--rounds 5] [--threads N]
"""

from __future__ import annotations

import argparse
import io
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from suite_models import tiny_hf_config

from pythia_suite.train.loop import TrainSettings, train_segment
from pythia_suite.train.model import build_model, count_parameters

CONFIG = tiny_hf_config(max_position_embeddings=256)
BATCH, SEQ, WARMUP = 8, 128, 3


class Samples:
    def batch(self, step: int, global_batch: int) -> np.ndarray:
        rs = np.random.RandomState(step)
        return rs.randint(0, CONFIG["vocab_size"], size=(global_batch, SEQ + 1)).astype(np.int64)


def backend_tokens_per_s(steps: int) -> list[float]:
    settings = TrainSettings(
        global_batch=BATCH,
        micro_batch=BATCH,
        seq_length=SEQ,
        lr=1e-3,
        min_lr=1e-4,
        warmup_iters=2,
        decay_iters=1000,
        log_interval=1000,
    )
    with tempfile.TemporaryDirectory() as tmp:
        state = train_segment(
            CONFIG,
            settings,
            Samples(),
            start_checkpoint=None,
            start_step=0,
            end_step=steps,
            out_dir=Path(tmp) / "out",
            log=io.StringIO(),
        )
    return [r["tokens_per_s"] for r in state["history"][WARMUP:]]


def hand_loop_tokens_per_s(steps: int) -> list[float]:
    model = build_model(CONFIG)
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=1e-3, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.1
    )
    samples, rates = Samples(), []
    for step in range(steps):
        t0 = time.perf_counter()
        tokens = torch.from_numpy(samples.batch(step, BATCH))
        logits = model(input_ids=tokens[:, :-1]).logits
        loss = F.cross_entropy(logits.flatten(0, 1), tokens[:, 1:].flatten())
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        loss.item()
        rates.append(BATCH * SEQ / (time.perf_counter() - t0))
    return rates[WARMUP:]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(
        f"model: {count_parameters(build_model(CONFIG)):,} parameters, batch {BATCH} x {SEQ} "
        f"tokens, fp32, {torch.get_num_threads()} threads"
    )
    backend, hand, all_backend, all_hand = [], [], [], []
    for r in range(args.rounds):
        all_hand += hand_loop_tokens_per_s(args.steps)
        hand.append(statistics.median(all_hand[-(args.steps - WARMUP) :]))
        all_backend += backend_tokens_per_s(args.steps)
        backend.append(statistics.median(all_backend[-(args.steps - WARMUP) :]))
        print(
            f"round {r}: hand loop {hand[-1]:.0f} tokens/s, train_segment {backend[-1]:.0f} "
            f"tokens/s, ratio {backend[-1] / hand[-1]:.3f}"
        )
    ratio = statistics.median(b / h for b, h in zip(backend, hand, strict=True))
    print(
        f"median: hand loop {statistics.median(hand):.0f} tokens/s, train_segment "
        f"{statistics.median(backend):.0f} tokens/s, ratio {ratio:.3f} (goal >= 0.95)"
    )
    print(
        f"fastest step: hand loop {max(all_hand):.0f} tokens/s, train_segment "
        f"{max(all_backend):.0f} tokens/s, ratio {max(all_backend) / max(all_hand):.3f} "
        f"(goal >= 0.95)"
    )


if __name__ == "__main__":
    main()
