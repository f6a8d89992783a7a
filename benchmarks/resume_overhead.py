"""Time from process start to the first training step, resuming from checkpoints of two sizes.

For each size: write step0 and step1 (so the checkpoint carries Adam state), then start a fresh
Python process that resumes (1, 2] and reports when its first step began. Compared with (a) the
checkpoint load time alone (weights + optimizer state, measured here) and (b) a fresh process that
starts from newly initialised weights (interpreter, imports, model construction). Goal: resuming
costs the load time plus at most a few seconds.

    python benchmarks/resume_overhead.py [--sizes tiny 70m]
"""

from __future__ import annotations

import argparse
import io
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from suite_models import pythia_hf_config, tiny_hf_config

from pythia_suite.train import checkpoint as ckpt
from pythia_suite.train.loop import train_segment
from pythia_suite.train.model import build_model, hf_name, load_hf_state_dict
from pythia_suite.train.settings import TrainSettings

SIZES = {"70m": pythia_hf_config(), "tiny": tiny_hf_config()}
SETTINGS = dict(
    global_batch=1,
    micro_batch=1,
    seq_length=32,
    lr=1e-3,
    min_lr=1e-4,
    warmup_iters=2,
    decay_iters=100,
    log_interval=1000,
)

CHILD = r"""
import sys, time, json
import numpy as np
from pythia_suite.train.loop import train_segment
from pythia_suite.train.settings import TrainSettings
from suite_models import pythia_hf_config, tiny_hf_config
t_imported = time.time()
cfg, settings, start, a, b, out, t_launch = json.loads(sys.argv[1])
class Samples:
    def batch(self, step, n):
        rs = np.random.RandomState(step)
        return rs.randint(0, cfg["vocab_size"], size=(n, 33)).astype(np.int64)
first = {}
def hook(event, step):
    if event == "step_end" and "t" not in first:
        first["t"] = time.time()
import io
state = train_segment(cfg, TrainSettings(**settings), Samples(), start_checkpoint=start,
                      start_step=a, end_step=b, out_dir=out, log=io.StringIO(), hook=hook)
step_s = settings["global_batch"] * settings["seq_length"] / state["history"][0]["tokens_per_s"]
print(json.dumps({"to_first_step": first["t"] - step_s - t_launch,
                  "imports": t_imported - t_launch}))
"""


def _child(cfg, start, a, b, out) -> dict:
    t_launch = time.time()
    args = json.dumps([cfg, SETTINGS, start, a, b, str(out), t_launch])
    result = subprocess.run(
        [sys.executable, "-c", CHILD, args], check=True, capture_output=True, text=True
    )
    return json.loads(result.stdout.strip().splitlines()[-1])


def _load_seconds(cfg, checkpoint: Path) -> float:
    model = build_model(cfg)
    owned = {hf_name(n): p for n, p in model.named_parameters()}
    t0 = time.perf_counter()
    _, weights, _ = ckpt.read_training_state(checkpoint, hf_config=cfg, owned=owned)
    load_hf_state_dict(model, weights, str(checkpoint))
    return time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", nargs="+", choices=sorted(SIZES), default=["tiny", "70m"])
    args = parser.parse_args()

    class Samples:
        def __init__(self, vocab):
            self.vocab = vocab

        def batch(self, step, n):
            import numpy as np

            rs = np.random.RandomState(step)
            return rs.randint(0, self.vocab, size=(n, 33)).astype(np.int64)

    for size in args.sizes:
        cfg = SIZES[size]
        with tempfile.TemporaryDirectory() as tmp:
            root = Path(tmp)
            settings = TrainSettings(**SETTINGS)
            kw = dict(log=io.StringIO())
            train_segment(
                cfg,
                settings,
                Samples(cfg["vocab_size"]),
                start_checkpoint=None,
                start_step=0,
                end_step=0,
                out_dir=root / "step0",
                **kw,
            )
            train_segment(
                cfg,
                settings,
                Samples(cfg["vocab_size"]),
                start_checkpoint=root / "step0",
                start_step=0,
                end_step=1,
                out_dir=root / "step1",
                **kw,
            )
            size_mb = sum(f.stat().st_size for f in (root / "step1").rglob("*") if f.is_file())
            size_mb /= 2**20
            load_s = _load_seconds(cfg, root / "step1")
            fresh = _child(cfg, None, 0, 1, root / "fresh1")
            resumed = _child(cfg, str(root / "step1"), 1, 2, root / "step2")
        extra = resumed["to_first_step"] - fresh["to_first_step"]
        print(
            f"{size}: checkpoint {size_mb:.1f} MiB, load {load_s:.2f} s | process start -> first "
            f"step: fresh init {fresh['to_first_step']:.2f} s (of which python + imports "
            f"{fresh['imports']:.2f} s), resumed {resumed['to_first_step']:.2f} s | "
            f"resume minus fresh {extra:.2f} s, minus load {extra - load_s:.2f} s"
        )


if __name__ == "__main__":
    main()
