"""How close each (data, tensor) layout comes to the 1-rank run: losses and fp32 weights, with
the CPU's optimizer and with the GPU's (fused AdamW).

Trains a tiny GPT-NeoX (CPU, gloo) for ``--steps`` steps from one step0, once in one process
(unfused AdamW: the reference) and per layout twice, with the CPU's device choices and with the
GPU's choices a CPU can run (``device_choices("cpu", fused_adamw=True)``: torch's fused AdamW
kernel): ZeRO-1 with DDP and activation checkpointing; tensor parallel 2; data 2 x tensor 2;
FSDP2; tensor parallel 2 with partitioned activation checkpoints; bf16 master weights at tensor
parallel 2 and data 2 x tensor 2 (against the 1-rank bf16 run). Prints per run the largest
relative loss difference, the largest weight difference relative to the tensor's scale (and its
tensor; the non-rotary key biases left out, ``tests/train_support.comparable``), and the wall
time. Plain data parallelism (the pre-existing path) is the yardstick: any other summation
order drifts as much. The tests assert rtol 1e-5 on learnable data
(tests/test_train_parallel.py); this prints what is reached on random tokens, where Adam turns
the rounding of near-zero gradient components into larger weight differences.

    python benchmarks/parallel_equivalence.py [--steps 4] [--layouts NAME ...]
"""

from __future__ import annotations

import argparse
import io
import json
import os
import socket
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.multiprocessing as mp
from safetensors.torch import load_file
from suite_models import tiny_hf_config

from pythia_suite.train.device import device_choices
from pythia_suite.train.loop import train_segment
from pythia_suite.train.settings import TrainSettings

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from train_support import comparable  # noqa: E402

CONFIG = tiny_hf_config(max_position_embeddings=64)
SEQ, BATCH = 32, 8
LAYOUTS = {
    # The pre-existing path, as a yardstick of summation-order noise alone.
    "data 2 (zero1, DDP)": (2, {"micro_batch": 2}),
    "data 2 (zero1, DDP), checkpointed": (
        2,
        {"micro_batch": 2, "activation_checkpointing": True},
    ),
    "tensor 2": (2, {"tensor_parallel": 2}),
    "data 2 x tensor 2": (4, {"tensor_parallel": 2, "micro_batch": 2}),
    "fsdp2 (data 2)": (2, {"data_parallel": "fsdp", "micro_batch": 2}),
    "tensor 2, partitioned checkpoints": (
        2,
        {"tensor_parallel": 2, "partition_activations": True},
    ),
    "tensor 2, bf16 master weights": (2, {"tensor_parallel": 2, "precision": "bf16"}),
    "data 2 x tensor 2, bf16 master weights": (
        4,
        {"tensor_parallel": 2, "micro_batch": 2, "precision": "bf16"},
    ),
}


class Samples:
    def batch(self, step: int, global_batch: int) -> np.ndarray:
        rs = np.random.RandomState(step)
        return rs.randint(0, CONFIG["vocab_size"], size=(global_batch, SEQ + 1)).astype(np.int64)


def settings(**overrides) -> TrainSettings:
    base = dict(
        global_batch=BATCH,
        micro_batch=4,
        seq_length=SEQ,
        lr=1e-2,
        min_lr=1e-3,
        warmup_iters=1,
        decay_iters=20,
        log_interval=100,
        deterministic=True,
    )
    return TrainSettings(**dict(base, **overrides))


def _rank(rank: int, world: int, port: int, overrides: dict, segment: dict, fused: bool) -> None:
    torch.set_num_threads(1)
    os.environ.update(
        RANK=str(rank),
        WORLD_SIZE=str(world),
        LOCAL_RANK=str(rank),
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
    )
    train_segment(
        CONFIG,
        settings(**overrides),
        Samples(),
        log=io.StringIO(),
        device="cpu",
        choices=device_choices("cpu", fused_adamw=fused),
        **segment,
    )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def compare(out: Path, ref: Path) -> tuple[float, float, str]:
    a = json.loads((out / "trainer_state.json").read_text())["losses"]
    b = json.loads((ref / "trainer_state.json").read_text())["losses"]
    loss_rel = max(abs(x - y) / abs(y) for x, y in zip(a, b, strict=True))
    wa, wb = load_file(str(out / "model.safetensors")), load_file(str(ref / "model.safetensors"))
    worst, worst_key = 0.0, ""
    for key, x in wa.items():
        x, y = comparable(key, x, CONFIG), comparable(key, wb[key], CONFIG)
        diff = float((x - y).abs().max() / y.abs().max().clamp_min(1e-12))
        if diff > worst:
            worst, worst_key = diff, key
    return loss_rel, worst, worst_key


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--layouts", nargs="*", default=list(LAYOUTS), choices=list(LAYOUTS))
    args = parser.parse_args()
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        common = dict(start_step=0, log=io.StringIO())
        train_segment(
            CONFIG, settings(), Samples(), start_checkpoint=None, end_step=0,
            out_dir=root / "step0", **common,
        )  # fmt: skip
        for precision in ("fp32", "bf16"):
            t0 = time.perf_counter()
            train_segment(
                CONFIG, settings(precision=precision), Samples(),
                start_checkpoint=root / "step0", end_step=args.steps,
                out_dir=root / f"ref-{precision}", **common,
            )  # fmt: skip
            print(f"1 rank {precision}: {time.perf_counter() - t0:.1f} s for {args.steps} steps")
        print("| layout | ranks | AdamW | max rel. loss diff | max weight diff / scale | wall s |")
        print("|---|---|---|---|---|---|")
        for name in args.layouts:
            world, overrides = LAYOUTS[name]
            ref = root / f"ref-{overrides.get('precision', 'fp32')}"
            for fused in (False, True):
                out = root / (name.replace(" ", "_").replace(",", "") + f"-{fused}")
                segment = dict(
                    start_checkpoint=str(root / "step0"),
                    start_step=0,
                    end_step=args.steps,
                    out_dir=str(out),
                )
                t0 = time.perf_counter()
                mp.start_processes(
                    _rank,
                    args=(world, free_port(), overrides, segment, fused),
                    nprocs=world,
                    start_method="spawn",
                )
                wall = time.perf_counter() - t0
                loss_rel, weight_rel, key = compare(out, ref)
                kernel = "fused (GPU)" if fused else "unfused (CPU)"
                print(
                    f"| {name} | {world} | {kernel} | {loss_rel:.1e} | {weight_rel:.1e} ({key}) "
                    f"| {wall:.1f} |"
                )


if __name__ == "__main__":
    main()
