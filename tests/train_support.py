"""Shared helpers of the training tests: a tiny model, fake data, and rank processes.

Rank processes come from a ``forkserver`` that has torch and transformers imported once, so a
2-rank run or a run that kills itself costs a fork, not a 5-second interpreter start.
"""

from __future__ import annotations

import io
import multiprocessing as mp
import os
import signal
import socket
import traceback
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file

TINY_CONFIG = dict(
    vocab_size=128,
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=4,
    intermediate_size=128,
    rotary_pct=0.25,
    rotary_emb_base=10000,
    use_parallel_residual=True,
    tie_word_embeddings=False,
    max_position_embeddings=64,
    layer_norm_eps=1e-5,
    hidden_act="gelu",
    attention_dropout=0.0,
    hidden_dropout=0.0,
    bos_token_id=0,
    eos_token_id=0,
)
SEQ = 16
# pythia-70m's shape (its config.json): 70,426,624 parameters with Pythia's other fields.
PYTHIA_70M_SHAPE = dict(
    vocab_size=50304,
    hidden_size=512,
    num_hidden_layers=6,
    num_attention_heads=8,
    intermediate_size=2048,
    max_position_embeddings=2048,
)


def tiny_gpt_neox_config(**fields):
    """transformers' ``GPTNeoXConfig`` of the tiny model (``TINY_CONFIG``), ``fields``
    replacing any of its values."""
    from transformers import GPTNeoXConfig

    return GPTNeoXConfig(**{**TINY_CONFIG, **fields})


class RandomTokens:
    """A ``samples`` object: batch ``s`` is a fixed function of (seed, s), like the real order.

    Tokens follow ``t[i+1] = (a * t[i] + b) mod V`` with a per-row ``(a, b)`` from a small set,
    so there is something to learn and the loss goes down.
    """

    def __init__(self, vocab: int = 128, seq_length: int = SEQ, seed: int = 0) -> None:
        self.vocab, self.seq_length, self.seed = vocab, seq_length, seed

    def batch(self, step: int, global_batch: int) -> np.ndarray:
        rs = np.random.RandomState(self.seed * 1_000_003 + step)
        a = rs.choice([1, 3, 5], size=(global_batch, 1))
        b = rs.choice([1, 2], size=(global_batch, 1))
        out = np.empty((global_batch, self.seq_length + 1), dtype=np.int64)
        out[:, :1] = rs.randint(0, self.vocab, size=(global_batch, 1))
        for i in range(self.seq_length):
            out[:, i + 1 : i + 2] = (a * out[:, i : i + 1] + b) % self.vocab
        return out


# The tiny model's TrainSettings as plain keyword arguments (tiny_settings builds them).
TINY_SETTINGS = dict(
    global_batch=8,
    micro_batch=4,
    seq_length=SEQ,
    lr=1e-2,
    min_lr=1e-3,
    warmup_iters=2,
    decay_iters=20,
    log_interval=1,
    deterministic=True,
)


def tiny_settings(**overrides):
    """TrainSettings for the tiny model: 8 sequences of 16 tokens per step, deterministic."""
    from pythia_suite.train.settings import TrainSettings

    return TrainSettings(**{**TINY_SETTINGS, **overrides})


def first_segment(root: Path, out_dir: Path, end_step: int, state_dir: Path | None = None) -> dict:
    """The segment spec (0, end_step] that starts from ``root/step0`` and writes ``out_dir``."""
    segment = {
        "start_checkpoint": str(root / "step0"),
        "start_step": 0,
        "end_step": end_step,
        "out_dir": str(out_dir),
    }
    if state_dir is not None:
        segment["state_dir"] = str(state_dir)
    return segment


def cpu_choices(choices: dict | None = None):
    """The CPU's ``DeviceChoices`` with ``choices`` (GPU choices a CPU runs, e.g.
    ``{"fused_adamw": True}``) set."""
    from pythia_suite.train.device import device_choices

    return device_choices(torch.device("cpu"), **(choices or {}))


def train_in_this_process(settings, *, choices: dict | None = None, **segment) -> dict:
    """``train_segment`` in the test process on one thread (as each rank process runs: the same
    summation order, bit for bit); ``segment`` holds its step, checkpoint and log arguments,
    ``choices`` the device choices to set (``cpu_choices``)."""
    from pythia_suite.train.loop import train_segment

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        segment.setdefault("log", io.StringIO())
        return train_segment(
            TINY_CONFIG,
            settings,
            RandomTokens(),
            device="cpu",
            choices=cpu_choices(choices),
            **segment,
        )
    finally:
        torch.set_num_threads(threads)


def read_weights(checkpoint: Path) -> dict[str, torch.Tensor]:
    return load_file(str(Path(checkpoint) / "model.safetensors"))


def comparable(key: str, tensor: torch.Tensor, config: dict = TINY_CONFIG) -> torch.Tensor:
    """``tensor`` without the non-rotary part of the attention key biases (others: as is).

    Without rotation a key bias adds the same ``q . b_k`` to every score of a query, so softmax
    ignores it and its true gradient is 0: what those components get is rounding noise, which
    Adam normalises into full-size steps of either sign, different for any two summation
    orders. The rotary part (the first ``rotary_pct`` of each head) is rotated by the key's
    position, changes the scores, and is compared like every other weight. ``config``: the
    model's (heads and rotary_pct).
    """
    if not key.endswith("query_key_value.bias"):
        return tensor
    per_head = tensor.view(config["num_attention_heads"], 3, -1)  # q, k, v of each head
    rotary = int(per_head.shape[-1] * config["rotary_pct"])
    return torch.cat([per_head[:, 0], per_head[:, 1, :rotary], per_head[:, 2]], dim=-1)


def assert_weights_close(a: dict, b: dict, *, rtol: float = 1e-4, atol: float = 1e-6) -> None:
    """Compare two checkpoints' tensors, leaving out the non-rotary key biases (``comparable``)."""
    assert a.keys() == b.keys()
    for key in a:
        x, y = comparable(key, a[key]), comparable(key, b[key])
        torch.testing.assert_close(x, y, rtol=rtol, atol=atol, msg=lambda m, k=key: f"{k}: {m}")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ----------------------------------------------------------------------------- rank processes

_CONTEXT = None


def _context():
    global _CONTEXT
    if _CONTEXT is None:
        _CONTEXT = mp.get_context("forkserver")
        _CONTEXT.set_forkserver_preload(
            ["torch", "transformers", "pythia_suite.train.loop", "train_support"]
        )
    return _CONTEXT


def _worker(spec: dict) -> None:
    """Run one rank: set the launcher's environment, train, die where ``spec['fault']`` says."""
    torch.set_num_threads(1)
    os.environ.update(spec.get("environ", {}))
    fault = spec.get("fault")  # {"event": ..., "step": ..., "action": "SIGKILL"|"SIGTERM"|"raise"}

    def hook(event: str, step: int) -> None:
        if fault and event == fault["event"] and step == fault["step"]:
            if fault["action"] == "raise":
                raise RuntimeError(f"injected failure at {event} {step}")
            os.kill(os.getpid(), getattr(signal, fault["action"]))

    from pythia_suite.train.loop import train_segment

    try:
        train_segment(
            TINY_CONFIG,
            tiny_settings(**spec.get("settings", {})),
            RandomTokens(),
            hook=hook,
            log=spec.get("log"),
            device="cpu",
            choices=cpu_choices(spec.get("choices")),
            **spec["segment"],
        )
    except BaseException:
        traceback.print_exc()
        os._exit(3)


def run_ranks(
    world_size: int,
    segment: dict,
    *,
    settings=None,
    choices=None,
    fault=None,
    timeout=120,
    log=None,
) -> list[int]:
    """Run ``train_segment`` as ``world_size`` rank processes (torchrun-style environment),
    with the CPU's device choices and ``choices`` set (``cpu_choices``).

    Returns the exit codes (negative: killed by that signal). Kills leftovers on timeout.
    """
    ctx = _context()
    port = free_port()
    procs = []
    for rank in range(world_size):
        environ = {
            "RANK": str(rank),
            "WORLD_SIZE": str(world_size),
            "LOCAL_RANK": str(rank),
            "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": str(port),
        }
        spec = {
            "environ": environ,
            "segment": segment,
            "settings": settings or {},
            "choices": choices,
            "fault": fault,
            "log": log,
        }
        proc = ctx.Process(target=_worker, args=(spec,))
        proc.start()
        procs.append(proc)
    codes = []
    for proc in procs:
        proc.join(timeout)
        if proc.is_alive():
            proc.kill()
            proc.join()
        codes.append(proc.exitcode)
    return codes


def _function_worker(spec: dict) -> None:
    """Run ``spec['function'](par)`` on one rank of a (data, tensor) mesh; queue its result."""
    torch.set_num_threads(1)
    import datetime

    import torch.distributed as dist

    from pythia_suite.train import parallel

    rank, world = spec["rank"], spec["world_size"]
    try:
        dist.init_process_group(
            "gloo",
            init_method=f"tcp://127.0.0.1:{spec['port']}",
            rank=rank,
            world_size=world,
            timeout=datetime.timedelta(seconds=120),
        )
        par = parallel.build_parallelism(world, spec["tensor_parallel"], torch.device("cpu"))
        spec["queue"].put((rank, spec["function"](par)))
        dist.destroy_process_group()
    except BaseException:
        traceback.print_exc()
        os._exit(3)


def run_in_ranks(world_size: int, function, *, tensor_parallel: int = 1, timeout=120) -> list:
    """``function(par)`` on ``world_size`` gloo ranks; returns each rank's (picklable) result."""
    ctx = _context()
    queue = ctx.Queue()
    port = free_port()
    procs = []
    for rank in range(world_size):
        spec = {
            "rank": rank,
            "world_size": world_size,
            "port": port,
            "tensor_parallel": tensor_parallel,
            "function": function,
            "queue": queue,
        }
        proc = ctx.Process(target=_function_worker, args=(spec,))
        proc.start()
        procs.append(proc)
    results = {}
    for _ in range(world_size):
        rank, value = queue.get(timeout=timeout)
        results[rank] = value
    for proc in procs:
        proc.join(timeout)
        if proc.is_alive():
            proc.kill()
            proc.join()
    assert [proc.exitcode for proc in procs] == [0] * world_size
    return [results[r] for r in range(world_size)]
