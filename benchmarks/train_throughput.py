"""Tokens/s of ``train_segment`` vs a minimal hand-written PyTorch loop (one process, fp32, CPU).

Same model, same batches, same AdamW + gradient clipping, tensor parallel 1; both measured per
step at steady state (the first steps are warm-up). The two loops alternate step by step in one
process (A B A B ...: the hand loop's step runs in ``train_segment``'s ``step_end`` hook, outside
the backend's timed step), so that the load of a busy shared machine, which changes over
seconds, hurts both alike. Goal: backend / hand loop >= 0.95.

Per round: the median tokens/s of each loop; the result is the median of the rounds' ratios.
The backend's steps include what a real step does: this rank's rows read one step ahead in a
thread, the data fingerprint hashed in another, the per-step record and its log.

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

from pythia_suite.train.loop import train_segment
from pythia_suite.train.model import build_model, count_parameters
from pythia_suite.train.settings import TrainSettings

CONFIG = tiny_hf_config(max_position_embeddings=256)
BATCH, SEQ, WARMUP = 8, 128, 3


class Samples:
    def batch(self, step: int, global_batch: int) -> np.ndarray:
        rs = np.random.RandomState(step)
        return rs.randint(0, CONFIG["vocab_size"], size=(global_batch, SEQ + 1)).astype(np.int64)


class HandLoop:
    """The hand-written loop, one step per call: model, AdamW, clip, the loss read back."""

    def __init__(self) -> None:
        self.model = build_model(CONFIG)
        self.optimizer = torch.optim.AdamW(
            self.model.parameters(), lr=1e-3, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.1
        )
        self.samples, self.step, self.rates = Samples(), 0, []

    def train_one_step(self) -> None:
        t0 = time.perf_counter()
        tokens = torch.from_numpy(self.samples.batch(self.step, BATCH))
        logits = self.model(input_ids=tokens[:, :-1]).logits
        loss = F.cross_entropy(logits.flatten(0, 1), tokens[:, 1:].flatten())
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), 1.0)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        loss.item()
        self.rates.append(BATCH * SEQ / (time.perf_counter() - t0))
        self.step += 1


def one_round(steps: int) -> tuple[float, float]:
    """Median tokens/s of (train_segment, hand loop), their steps interleaved."""
    hand = HandLoop()
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

    def hook(event: str, step: int) -> None:
        if event == "step_end":
            hand.train_one_step()

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
            hook=hook,
        )
    backend = [r["tokens_per_s"] for r in state["history"][WARMUP:]]
    return statistics.median(backend), statistics.median(hand.rates[WARMUP:])


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
    backend, hand = [], []
    for r in range(args.rounds):
        b, h = one_round(args.steps)
        backend.append(b)
        hand.append(h)
        print(
            f"round {r}: hand loop {h:.0f} tokens/s, train_segment {b:.0f} tokens/s, "
            f"ratio {b / h:.3f}"
        )
    ratio = statistics.median(b / h for b, h in zip(backend, hand, strict=True))
    print(
        f"median: hand loop {statistics.median(hand):.0f} tokens/s, train_segment "
        f"{statistics.median(backend):.0f} tokens/s, ratio {ratio:.3f} (goal >= 0.95)"
    )


if __name__ == "__main__":
    main()
