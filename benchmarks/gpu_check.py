"""The GPU check: one table that says whether the PyTorch backend does on a GPU what it claims.

    python benchmarks/gpu_check.py [--peak-tflops 989] [--json out.json]   # one CUDA GPU, < 5 min
    python benchmarks/gpu_check.py --reduced [--json out.json]             # CPU, tiny widths (CI)

Rows (the loop's own code: prepare_model, init_gpt_neox_weights, init_train_state, train_step):
- throughput: 410m at seq 2048, bf16 and fp16, its original micro-batch (32) with activation
  checkpointing, one GPU: tokens/s, MFU = tokens/s x flops_per_token / peak, with
  flops_per_token = 72 L h^2 + 12 L s h + 6 V h (config.training_flops_per_token: forward +
  backward, attention included, recomputation not counted), and torch.cuda.max_memory_allocated
  against the memory plan's estimate for one GPU (train.memory_plan, data parallel 1);
- memory: 1b (bf16) and 1.4b (fp16) at their micro-batches (16): peak against the estimate;
- fp16 overflow: a loss scale of 2^40 overflows fp16 for real: the step is skipped, weights and
  the LR schedule are unchanged, the scale is kept on the first overflow (hysteresis 2) and
  halved on the second;
- GPU vs CPU: 70m, 3 steps in fp32 on the GPU and on the CPU from the same weights and batches:
  the losses agree (rtol 1e-3);
- LR 0: the first update has LR 0 (GPT-NeoX warmup), so the weights after step 1 equal step 0's;
- tensor parallel 2 (with 2 or more GPUs): 6.9b's layout (TP 2, partitioned activations,
  activation checkpointing, fp16 with fp32 master weights, its micro-batch) at reduced depth
  (2 layers), on 2 ranks over nccl with every GPU choice on (``train.device.device_choices``:
  fused AdamW, nccl, the rank bound to its GPU), 3 steps: the losses against the same model on
  one GPU (rtol 2e-3: half-precision sums in different places).

The table names the device and the torch, CUDA and transformers versions. ``--reduced`` runs the
same rows on the CPU with every size shrunk to 2 layers of width 64, sequence 64 (no
max_memory_allocated there: the memory columns say n/a), so the script cannot rot unnoticed; its
tensor-parallel row runs on 2 gloo ranks with the GPU's optimizer (fused AdamW) and bf16 (fp16
needs CUDA in the loop).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import socket
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import transformers

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))
sys.path.insert(0, str(REPO / "benchmarks"))  # spawned tensor-parallel ranks import this module

from pythia_suite import config as cfg  # noqa: E402
from pythia_suite.train import memory_plan as memory  # noqa: E402
from pythia_suite.train.device import device_choices  # noqa: E402
from pythia_suite.train.distributed import DistributedEnv, distributed_context  # noqa: E402
from pythia_suite.train.model import init_gpt_neox_weights  # noqa: E402
from pythia_suite.train.settings import TrainSettings, hf_config, train_settings  # noqa: E402
from pythia_suite.train.step import init_train_state, prepare_model, train_step  # noqa: E402

SINGLE = DistributedEnv(0, 1, 0, "127.0.0.1", 0, "single")
GIB = 2**30
# Dense bf16/fp16 tensor-core peaks (TFLOP/s) of the GPUs a session may be lent.
KNOWN_PEAKS = {"A100": 312.0, "H100": 989.0, "H200": 989.0}
# Every size the check uses, shrunk for --reduced (global batch 256 keeps check_config happy).
REDUCED = {
    "model": {"seq_length": 64},
    "data": {"tokenizer": {"vocab_size": 500}},
    "training": {"global_batch": 256},
    "matrix": [
        {
            "sizes": ["70m", "410m", "1b", "1.4b", "6.9b"],
            "variants": ["standard"],
            "seeds": ["default"],
        }
    ],
    "sizes": {
        "70m": {"layers": 2, "hidden": 64, "heads": 4, "micro_batch": 8},
        "410m": {"layers": 2, "hidden": 64, "heads": 4, "micro_batch": 8},
        "1b": {"layers": 2, "hidden": 64, "heads": 4, "micro_batch": 4},
        "1.4b": {"layers": 2, "hidden": 64, "heads": 4, "micro_batch": 4},
        "6.9b": {"layers": 2, "hidden": 64, "heads": 4, "micro_batch": 2},
    },
}
TP_LAYERS = 2  # the tensor-parallel row's reduced depth
TP_STEPS = 3


def _weights_and_masters(state) -> list[torch.Tensor]:
    """Copies of the model's parameters and, with master weights, of their fp32 masters."""
    params = list(state.model.parameters())
    out = [p.detach().clone() for p in params]
    master_of = getattr(state.optimizer, "master_of", None)
    if master_of is not None:
        out += [master_of(p).detach().clone() for p in params]
    return out


@dataclasses.dataclass
class Row:
    check: str
    setting: str
    measured: str
    expected: str
    ok: bool | None  # None: a measurement with no pass/fail criterion

    def cells(self) -> list[str]:
        verdict = {True: "pass", False: "FAIL", None: "-"}[self.ok]
        return [self.check, self.setting, self.measured, self.expected, verdict]


class Check:
    """One device, one config: builds the loop's training state for a size and runs steps."""

    def __init__(self, device: torch.device, reduced: bool, peak_tflops: float | None) -> None:
        self.device = device
        self.reduced = reduced
        overrides = REDUCED if reduced else {}
        self.config = cfg.load_config([REPO / "config.yaml"], overrides)
        self.peak_tflops = peak_tflops
        self.rows: list[Row] = []

    def run_of(self, size: str, variant: str = "standard"):
        name = next(
            n
            for n, r in cfg.expand_runs(self.config).items()
            if (r.size, r.variant) == (size, variant)
        )
        return cfg.get_run(self.config, name)

    def settings(self, size: str, precision: str | None = None, **overrides) -> TrainSettings:
        """The run's own settings, one GPU: micro-batch as configured, one micro-step a step."""
        settings = train_settings(self.config, self.run_of(size))
        micro = settings.micro_batch
        values = dict(global_batch=micro, micro_batch=micro, state_interval=0)
        if precision:
            values["precision"] = precision
        values.update(overrides)
        return dataclasses.replace(settings, **values)

    def state(
        self,
        size: str,
        settings: TrainSettings,
        device: torch.device | None = None,
        *,
        layers: int | None = None,
        env: DistributedEnv = SINGLE,
        choices=None,
    ):
        device = device or self.device
        hf = hf_config(self.config, self.run_of(size))
        if layers is not None:
            hf = dict(hf, num_hidden_layers=layers)
        model = prepare_model(hf, settings, device)
        init_gpt_neox_weights(
            model,
            weight_seed=settings.weight_seed,
            init_method=settings.init_method,
            output_layer_init_method=settings.output_layer_init_method,
        )
        return init_train_state(model, settings, env, device, choices=choices)

    def tokens(self, settings: TrainSettings, step: int, device=None) -> torch.Tensor:
        vocab = self.config["data"]["tokenizer"]["vocab_size"]
        rs = np.random.RandomState(step)
        rows = rs.randint(0, vocab, size=(settings.micro_batch, settings.seq_length + 1))
        return torch.from_numpy(rows).to(device or self.device)

    def estimate(self, size: str, settings: TrainSettings) -> dict:
        """The memory plan for this size on one GPU (no data parallelism)."""
        layout = memory.memory_layouts(self.config)[self.run_of(size).name]
        one_gpu = dataclasses.replace(  # the size's micro-batch x gas on one data rank
            layout.settings,
            precision=settings.precision,
            global_batch=layout.settings.micro_batch * layout.gas,
        )
        return memory.estimate_layout(
            dataclasses.replace(layout, settings=one_gpu, data_parallel=1)
        )

    def peak_memory(self) -> float | None:
        if self.device.type != "cuda":
            return None
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated(self.device)

    def reset_peak(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(self.device)

    # --------------------------------------------------------------------------- the rows

    def throughput(self, size: str, precision: str, steps: int) -> None:
        settings = self.settings(size, precision)
        self.reset_peak()
        state = self.state(size, settings)
        train_step(state, self.tokens(settings, 0))  # warm-up (kernels, allocator)
        if self.device.type == "cuda":
            torch.cuda.synchronize()
        started = time.perf_counter()
        for step in range(1, steps + 1):
            train_step(state, self.tokens(settings, step))
        if self.device.type == "cuda":
            torch.cuda.synchronize()
        tokens_per_s = (
            steps * settings.micro_batch * settings.seq_length / (time.perf_counter() - started)
        )
        flops = cfg.training_flops_per_token(self.config, size)
        mfu = tokens_per_s * flops / (self.peak_tflops * 1e12) if self.peak_tflops else None
        setting = (
            f"{precision}, micro {settings.micro_batch} x seq {settings.seq_length}, "
            f"AC {'on' if settings.activation_checkpointing else 'off'}"
        )
        self.rows.append(
            Row(
                f"{size} throughput",
                setting,
                f"{tokens_per_s:,.0f} tokens/s"
                + (f", MFU {mfu:.1%}" if mfu is not None else ", MFU n/a (no peak)"),
                f"MFU >= 40% (peak {self.peak_tflops or 'n/a'} TFLOP/s, "
                f"{flops / 1e9:.3g} GFLOP/token)",
                None if mfu is None or self.device.type != "cuda" else mfu >= 0.40,
            )
        )
        self.memory_row(size, settings, state)

    def memory_row(self, size: str, settings: TrainSettings, state=None) -> None:
        if state is None:
            self.reset_peak()
            state = self.state(size, settings)
            for step in range(2):  # the second step holds the optimizer state
                train_step(state, self.tokens(settings, step))
        measured = self.peak_memory()
        estimate = self.estimate(size, settings)["peak_bytes"]
        ratio = measured / estimate if measured else None
        self.rows.append(
            Row(
                f"{size} peak memory",
                f"{settings.precision}, micro {settings.micro_batch}, 1 GPU",
                f"{measured / GIB:.3g} GiB max_memory_allocated" if measured else "n/a (cpu)",
                f"plan {estimate / GIB:.3g} GiB"
                + (f" (measured/plan {ratio:.3f}, within 10%)" if ratio else ""),
                None if ratio is None else abs(ratio - 1) <= 0.10,
            )
        )
        del state

    def fp16_overflow(self) -> None:
        """Real fp16 overflow: scale 2^40 makes the fp16 backward overflow."""
        settings = self.settings(
            "70m", "fp16", loss_scale_initial=2.0**40, warmup_iters=1, loss_scale_hysteresis=2
        )
        state = self.state("70m", settings)
        before = _weights_and_masters(state)
        results = [train_step(state, self.tokens(settings, s)) for s in range(2)]
        unchanged = all(
            torch.equal(a, p) for a, p in zip(before, _weights_and_masters(state), strict=True)
        )
        skipped = [r.skipped for r in results]
        scale = state.scaler.scale
        ok = (
            skipped == [True, True]
            and unchanged
            and state.progress.scheduler_iteration == 0
            and scale == 2.0**39
        )
        self.rows.append(
            Row(
                "fp16 overflow skip",
                "70m fp16, fp32 masters, loss scale 2^40, hysteresis 2, 2 steps",
                f"skipped {skipped}, weights {'unchanged' if unchanged else 'CHANGED'}, "
                f"schedule at {state.progress.scheduler_iteration}, scale 2^{np.log2(scale):g}",
                "skipped [True, True], unchanged, schedule at 0, scale 2^39",
                ok,
            )
        )

    def gpu_vs_cpu(self) -> None:
        settings = self.settings("70m", "fp32", warmup_iters=1)
        losses = {}
        for device in (self.device, torch.device("cpu")):
            state = self.state("70m", settings, device)
            losses[device.type] = [
                train_step(state, self.tokens(settings, s, device)).loss for s in range(3)
            ]
        here, cpu = losses[self.device.type], losses["cpu"]
        ok = bool(np.allclose(here, cpu, rtol=1e-3, atol=0))
        self.rows.append(
            Row(
                f"70m {self.device.type} vs cpu",
                "fp32, 3 steps, same weights and batches",
                " ".join(f"{x:.5f}" for x in here),
                "cpu " + " ".join(f"{x:.5f}" for x in cpu) + " (rtol 1e-3)",
                ok,
            )
        )

    def lr_zero_first_step(self) -> None:
        settings = self.settings("70m", "fp32")
        state = self.state("70m", settings)
        before = [p.detach().clone() for p in state.model.parameters()]
        result = train_step(state, self.tokens(settings, 0))
        equal = all(
            torch.equal(a, p) for a, p in zip(before, state.model.parameters(), strict=True)
        )
        self.rows.append(
            Row(
                "step1 == step0",
                "70m fp32, first update (warmup: LR 0)",
                f"lr {result.lr:g}, weights {'bit-identical' if equal else 'CHANGED'}",
                "lr 0, bit-identical",
                result.lr == 0.0 and equal,
            )
        )

    def tensor_parallel(self) -> None:
        """6.9b's layout at reduced depth on 2 ranks, every GPU choice on, against 1 device."""
        precision = "fp16" if self.device.type == "cuda" else "bf16"
        settings = self.settings("6.9b", precision, warmup_iters=1)
        single = dataclasses.replace(settings, tensor_parallel=1, partition_activations=False)
        state = self.state("6.9b", single, layers=TP_LAYERS)
        reference = [train_step(state, self.tokens(settings, s)).loss for s in range(TP_STEPS)]
        del state
        with tempfile.TemporaryDirectory() as tmp:
            out = Path(tmp) / "losses.json"
            import torch.multiprocessing as mp

            mp.start_processes(
                _tensor_parallel_rank,
                args=(self.device.type, self.reduced, settings, _free_port(), out),
                nprocs=2,
                start_method="spawn",
            )
            losses = json.loads(out.read_text())
        ok = bool(np.allclose(losses, reference, rtol=2e-3, atol=0))
        self.rows.append(
            Row(
                "6.9b tensor parallel 2",
                f"{precision}, {TP_LAYERS} layers, TP 2 + partitioned activations, fused AdamW, "
                f"{'nccl' if self.device.type == 'cuda' else 'gloo'}, {TP_STEPS} steps",
                " ".join(f"{x:.5f}" for x in losses),
                "1 device " + " ".join(f"{x:.5f}" for x in reference) + " (rtol 2e-3)",
                ok,
            )
        )


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _tensor_parallel_rank(
    rank: int, device_type: str, reduced: bool, settings: TrainSettings, port: int, out: Path
) -> None:
    """One rank of the tensor-parallel row: the GPU's choices (fused AdamW, nccl, bound GPU) on
    CUDA, the CPU's with fused AdamW on gloo; rank 0 writes the losses to ``out``."""
    torch.set_num_threads(1)
    device = torch.device("cuda", rank) if device_type == "cuda" else torch.device("cpu")
    choices = device_choices(device, fused_adamw=True)
    env = DistributedEnv(rank, 2, rank, "127.0.0.1", port, "torchrun")
    os.environ.setdefault("TORCH_NCCL_ASYNC_ERROR_HANDLING", "1")
    check = Check(device, reduced, None)
    with distributed_context(env, choices, timeout_s=300):
        state = check.state("6.9b", settings, device, layers=TP_LAYERS, env=env, choices=choices)
        losses = [train_step(state, check.tokens(settings, s)).loss for s in range(TP_STEPS)]
    if rank == 0:
        out.write_text(json.dumps(losses))


def environment(device: torch.device) -> str:
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    return (
        f"device {name}; torch {torch.__version__}; CUDA {torch.version.cuda or 'none'}; "
        f"transformers {transformers.__version__}"
    )


def render(rows: list[Row], header: str) -> str:
    cells = [["check", "setting", "measured", "expected", "result"]] + [r.cells() for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(5)]
    lines = [header, ""]
    for i, row in enumerate(cells):
        lines.append("| " + " | ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) + " |")
        if i == 0:
            lines.append("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reduced", action="store_true", help="CPU, tiny widths (CI)")
    parser.add_argument("--peak-tflops", type=float, help="the GPU's dense bf16/fp16 peak")
    parser.add_argument("--steps", type=int, default=5, help="timed steps per throughput row")
    parser.add_argument("--json", type=Path, help="also write the rows here")
    args = parser.parse_args(argv)
    if args.reduced:
        device = torch.device("cpu")
    elif torch.cuda.is_available():
        device = torch.device("cuda", 0)
        torch.cuda.set_device(device)
    else:
        parser.error("no CUDA device: run with --reduced for the CPU version")
    peak = args.peak_tflops
    if peak is None and device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        peak = next((v for k, v in KNOWN_PEAKS.items() if k in name), None)
    started = time.perf_counter()
    check = Check(device, args.reduced, peak)
    check.throughput("410m", "bf16", args.steps if not args.reduced else 2)
    check.throughput("410m", "fp16", args.steps if not args.reduced else 2)
    check.memory_row("1b", check.settings("1b"))
    check.memory_row("1.4b", check.settings("1.4b"))
    check.fp16_overflow()
    check.gpu_vs_cpu()
    check.lr_zero_first_step()
    gpus = torch.cuda.device_count() if device.type == "cuda" else 0
    if args.reduced or gpus >= 2:
        check.tensor_parallel()
    header = environment(device) + (
        "; REDUCED (CPU, 2 layers of width 64, seq 64)" if args.reduced else ""
    )
    print(render(check.rows, header))
    print(f"\n{time.perf_counter() - started:.0f} s")
    if args.json:
        payload = {"environment": header, "rows": [dataclasses.asdict(r) for r in check.rows]}
        args.json.write_text(json.dumps(payload, indent=2))
    return 0 if all(r.ok is not False for r in check.rows) else 1


if __name__ == "__main__":
    sys.exit(main())
