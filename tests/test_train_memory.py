"""The memory plan: the traced step, its per-layer extrapolation, the tensor-parallel shapes, the
ZeRO-1 rule, the cached plan and the refusal of a layout that cannot fit (CLI and workflow)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from train_support import run_in_ranks

from pythia_suite import config as cfg
from pythia_suite.cli import main
from pythia_suite.train import memory_plan as memory

REPO = Path(__file__).resolve().parents[1]
SNAKEMAKE = str(Path(sys.executable).with_name("snakemake"))

TINY_RECORD = dict(
    size="tiny",
    hidden=64,
    layers=4,
    heads=4,
    vocab=512,
    intermediate=256,
    rotary_pct=0.25,
    seq_length=64,
    micro_batch=4,
    gas=2,
    precision="fp16",
    activation_checkpointing=True,
    loss_chunk_tokens=96,
    tensor_parallel=1,
    data_parallel=1,
    data_parallel_mode="zero1",
    partition_activations=False,
    gpu_name="test-GPU",
    gpu_memory_gb=1.0,
    reserve_gb=0.0,
)
TINY = memory.layout_from_record(TINY_RECORD)


def layout_of(base: dict = TINY_RECORD, **changes) -> memory.StepLayout:
    """A small model's layout: ``base`` (a plan's layout record) with ``changes``."""
    return memory.layout_from_record(dict(base, **changes))


def test_extrapolated_estimate_equals_the_full_depth_trace_in_every_phase_and_category():
    tensor_parallel = layout_of(
        TINY_RECORD, tensor_parallel=2, data_parallel=2, partition_activations=True
    )
    for layout in (
        TINY,
        layout_of(TINY_RECORD, activation_checkpointing=False, gas=1),
        tensor_parallel,  # the gradient all-reduce's flat buffer peaks in its own phase
    ):
        extrapolated = memory.estimate_layout(layout)
        full = memory.estimate_layout(layout, full_depth=True)
        assert "extrapolated" in extrapolated["method"]["depth"]
        assert "full depth" in full["method"]["depth"]
        if layout is tensor_parallel:
            # ZeRO-1's partition is rescaled to full depth by element counts; AdamW's per-
            # parameter step counters follow parameter counts: equal within a few bytes.
            for phase, cats in full["phases"].items():
                assert extrapolated["phases"][phase] == pytest.approx(cats, rel=1e-3), phase
            continue
        assert extrapolated["phases"] == full["phases"]
        assert extrapolated["peak_bytes"] == full["peak_bytes"] > 0


def test_trace_counts_weights_masters_adam_state_and_accumulated_gradients():
    n_params = sum(cfg_param_numel(TINY).values())
    fp32 = memory.trace_step_peaks(layout_of(TINY_RECORD, precision="fp32"), TINY.layers)
    # fp32: the weights; AdamW exp_avg + exp_avg_sq (fp32) and a step count per parameter.
    assert fp32["forward"]["parameters"] == pytest.approx(4 * n_params, rel=1e-3)
    assert 8 * n_params <= fp32["forward"]["optimizer"] < 9 * n_params
    # gas 2: the second micro-step's forward runs with the first one's gradients alive.
    assert fp32["forward"]["gradients"] == 4 * n_params
    # fp16 (DeepSpeed's fp16 optimizer): fp16 weights and gradients; the fp32 master weights
    # count as optimizer state with the moments, 12 bytes per parameter.
    phases = memory.trace_step_peaks(TINY, TINY.layers)
    assert phases["forward"]["parameters"] == pytest.approx(2 * n_params, rel=1e-3)
    assert 12 * n_params <= phases["forward"]["optimizer"] < 13 * n_params
    assert phases["forward"]["gradients"] == 2 * n_params
    assert phases["loss"]["activations"] > phases["forward"]["activations"] > 0
    without_ac = memory.trace_step_peaks(
        layout_of(TINY_RECORD, activation_checkpointing=False), TINY.layers
    )
    assert without_ac["forward"]["activations"] > phases["forward"]["activations"]


def test_ddp_buckets_are_the_gradients_one_set_in_every_phase():
    """DDP at tensor parallel 1 (by rule): ``gradient_as_bucket_view`` makes the gradients
    views into the buckets, so every phase holds exactly one full set, never two."""
    layout = layout_of(TINY_RECORD, data_parallel=2, gas=1)
    estimate = memory.estimate_layout(layout)
    assert estimate["method"]["ddp_buckets_by_rule"] is True
    traced = memory.trace_step_peaks(layout, layout.layers)
    full_set = max(cats["gradients"] for cats in traced.values())
    assert full_set > 0
    for phase, cats in estimate["phases"].items():
        assert cats["gradients"] == full_set, phase


def cfg_param_numel(layout: memory.StepLayout, tp: int = 1) -> dict[str, int]:
    """Per-rank parameter counts by Megatron's split, written out by hand."""
    hf = layout.hf_config
    h, f, v, n = hf["hidden_size"], hf["intermediate_size"], layout.vocab, layout.layers
    per_layer = (
        (3 * h * h + 3 * h) // tp  # query_key_value: column parallel, bias split
        + h * h // tp  # attention.dense: row parallel
        + h  # its bias, replicated
        + (h * f + f) // tp  # dense_h_to_4h: column parallel
        + f * h // tp  # dense_4h_to_h: row parallel
        + h  # its bias, replicated
        + 4 * h  # two LayerNorms
    )
    return {"layers": n * per_layer, "embeddings": 2 * v * h // tp, "final_norm": 2 * h}


def test_tensor_parallel_and_fsdp_are_traced_through_the_loops_parallelism():
    """TP 2 x DP 2 (DTensor, ZeRO-1 over data) and FSDP over 4 ranks, each in a fake process
    group of the real world size: rank 0 holds its shards, by Megatron's split and by FSDP's."""
    full = sum(cfg_param_numel(TINY).values())
    tp = layout_of(TINY_RECORD, tensor_parallel=2, data_parallel=2, partition_activations=True)
    traced = memory.trace_step_peaks(tp, tp.layers)
    assert memory._traced_world(tp) == 4
    # fp16 parameters (master-weight training): 2 bytes per local parameter.
    buffers = traced["forward"]["parameters"] - 2 * sum(cfg_param_numel(TINY, tp=2).values())
    assert 0 <= buffers < 1024  # the rotary frequencies
    # ZeRO-1 over the 2 data ranks: rank 0 keeps about half of the (per-rank) fp32 masters and
    # AdamW state, 12 bytes per parameter in all.
    local = sum(cfg_param_numel(TINY, tp=2).values())
    assert 0.25 * 12 * local < traced["forward"]["optimizer"] < 0.75 * 12 * local
    estimate = memory.estimate_layout(tp)
    assert estimate["method"]["traced_world_size"] == 4
    assert estimate["method"]["ddp_buckets_by_rule"] is False

    fsdp = layout_of(TINY_RECORD, data_parallel=4, data_parallel_mode="fsdp")
    traced = memory.trace_step_peaks(fsdp, fsdp.layers)
    # FSDP2 keeps its own fp32 sharded parameters (MixedPrecisionPolicy, no master-weight
    # optimizer). Resharded at the optimizer step: a quarter of every parameter (fp32), padding
    # aside.
    assert 0.25 * 4 * full <= traced["optimizer"]["parameters"] < 0.3 * 4 * full
    # In the forward the layer being computed is all-gathered besides: more than the shard.
    assert traced["forward"]["parameters"] > traced["optimizer"]["parameters"]
    assert memory.estimate_layout(fsdp)["method"]["tracker"] == "FSDPMemTracker"


# Pythia 6.9b/12b's shape at small width: bf16 master weights (fp16's layout, runnable on a
# CPU), activation checkpointing, partitioned activations under TP, 2 micro-steps; a vocabulary
# large enough that the loss phase (logits) is a large part of the step, as it is at 50k.
SMALL_RECORD = dict(
    TINY_RECORD,
    hidden=128,
    layers=2,
    vocab=2048,
    intermediate=512,
    precision="bf16",
    loss_chunk_tokens=8192,
)


class _RealTrace:
    """``trace_step_peaks`` on real CPU tensors in a rank of ``run_in_ranks`` (picklable)."""

    def __init__(self, layout: memory.StepLayout) -> None:
        self.layout = layout

    def __call__(self, par) -> dict:
        return memory.trace_step_peaks(self.layout, self.layout.layers, fake=False)


@pytest.mark.parametrize("tp", [1, 2, 4])
def test_fake_tensor_trace_matches_a_real_tensor_trace_in_every_phase(tp):
    """The plan's trace (fake tensors, a fake process group) against the same step on real CPU
    tensors over ``tp`` gloo ranks (MemTracker on both): every phase's peak within 5%. Under
    tensor parallelism the loss phase was over-counted by DTensor's shape propagation of the
    loss-parallel cross-entropy (``memory._untracked_shape_propagation``)."""
    layout = layout_of(SMALL_RECORD, tensor_parallel=tp, partition_activations=tp > 1)
    fake = memory.trace_step_peaks(layout, layout.layers)
    if tp == 1:
        real = memory.trace_step_peaks(layout, layout.layers, fake=False)
    else:
        real = run_in_ranks(tp, _RealTrace(layout), tensor_parallel=tp, timeout=300)[0]
    assert fake.keys() == real.keys() == set(memory.PHASES)
    for phase in memory.PHASES:
        traced, measured = sum(fake[phase].values()), sum(real[phase].values())
        assert abs(traced - measured) <= 0.05 * measured, (phase, traced, measured)


def test_zero1_share_is_zero_redundancy_optimizers_own_partition():
    from torch.distributed.optim import ZeroRedundancyOptimizer
    from torch.testing._internal.distributed.fake_pg import FakeStore

    from pythia_suite.train.model import build_model
    from pythia_suite.train.optim import build_param_groups

    layout = layout_of(TINY_RECORD, data_parallel=4)
    torch.distributed.init_process_group("fake", store=FakeStore(), rank=0, world_size=4)
    try:
        model = build_model(layout.model_config(), empty=True)
        zero = ZeroRedundancyOptimizer(
            build_param_groups(model, 0.1), optimizer_class=torch.optim.AdamW, lr=0.0
        )
        per_rank = [
            sum(p.numel() for group in groups for p in group["params"])
            for groups in zero._partition_parameters()
        ]
    finally:
        torch.distributed.destroy_process_group()
    assert memory.zero1_max_share(layout) == max(per_rank) / sum(per_rank)
    # The embedding matrices are never split: the largest share exceeds 1/DP.
    assert memory.zero1_max_share(layout) > 1 / 4


# ----------------------------------------------------------------------------- plan and refusal


def _overlay(tmp_path: Path, memory_gb: float) -> Path:
    """The 70m run alone, short sequences and a small vocabulary (a fast trace), on a GPU of
    ``memory_gb``, results under ``tmp_path``."""
    overlay = {
        "paths": {"results": str(tmp_path / "results"), "state": str(tmp_path / "state")},
        "matrix": [{"sizes": ["70m"], "variants": ["standard"], "seeds": ["default"]}],
        "model": {"seq_length": 128},
        "data": {"tokenizer": {"vocab_size": 1000}},
        "sizes": {
            "70m": {
                "cluster": {
                    "nodes": 4,
                    "gpus_per_node": 8,
                    "gpu": {"name": "test-GPU", "memory_gb": memory_gb, "peak_tflops": 10},
                }
            }
        },
        "cluster": {"gpu_memory_reserve_gb": 0.1},
    }
    path = tmp_path / "overlay.yaml"
    path.write_text(yaml.safe_dump(overlay))
    return path


def _config_args(overlay: Path) -> list[str]:
    return ["--config", str(REPO / "config.yaml"), "--config", str(overlay)]


def test_check_memory_refuses_naming_size_estimate_and_limit_then_reuses_the_cache(
    tmp_path, capsys, monkeypatch
):
    overlay = _overlay(tmp_path, memory_gb=0.15)
    assert main([*_config_args(overlay), "check-memory"]) == 1
    err = capsys.readouterr().err
    assert "pythia-70m (size 70m): estimated peak" in err
    assert "exceeds the limit 0.0466 GiB (test-GPU, 0.15 GB less a 0.1 GB reserve)" in err
    config = cfg.load_config([REPO / "config.yaml", overlay])
    cached = memory.plan_cache_path(config)
    assert cached.parent == tmp_path / "results" / "plan"
    plan = json.loads(cached.read_text())
    assert plan["runs"]["pythia-70m"]["fits"] is False

    # Once cached, no trace runs again for this config (the workflow relies on it).
    def no_trace(*args, **kwargs):
        raise AssertionError("traced although the plan was cached")

    monkeypatch.setattr(memory, "trace_step_peaks", no_trace)
    assert main([*_config_args(overlay), "check-memory"]) == 1
    assert main([*_config_args(overlay), "plan", "--memory", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert (
        out["memory"]["runs"]["pythia-70m"]["peak_bytes"]
        == plan["runs"]["pythia-70m"]["peak_bytes"]
    )
    assert main([*_config_args(overlay), "plan", "--memory"]) == 0
    text = capsys.readouterr().out.split("peak GPU memory per rank")[1]
    row = next(line for line in text.splitlines() if line.startswith("pythia-70m "))
    peak_gib = plan["runs"]["pythia-70m"]["peak_bytes"] / 2**30
    assert "test-GPU" in row and f"{peak_gib:.2f}" in row and row.split()[-1] == "NO"


def test_check_memory_passes_a_layout_that_fits_and_exempts_cpu_layouts(tmp_path, capsys):
    overlay = _overlay(tmp_path, memory_gb=80)
    assert main([*_config_args(overlay), "check-memory"]) == 0
    assert "1 GPU runs fit" in capsys.readouterr().out
    mini = ["--config", str(REPO / "config.yaml"), "--config", str(REPO / "config" / "mini.yaml")]
    mini_results = tmp_path / "mini.yaml"
    mini_results.write_text(yaml.safe_dump({"paths": {"results": str(tmp_path / "mini")}}))
    assert main([*mini, "--config", str(mini_results), "check-memory"]) == 0
    assert "0 GPU runs fit (CPU runs exempt)" in capsys.readouterr().out
    assert not (tmp_path / "mini").exists()  # nothing traced, nothing cached


def test_plan_reads_the_flop_peak_from_the_gpu_record(capsys):
    assert main(["--config", str(REPO / "config.yaml"), "plan", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert {(r["gpu"], r["peak_tflops"]) for r in rows} == {("A100-SXM4-40GB", 312)}
    assert (
        main(["--config", str(REPO / "config.yaml"), "plan", "--json", "--gpu-peak-tflops", "989"])
        == 0
    )
    faster = json.loads(capsys.readouterr().out)
    assert faster[0]["gpu_hours"] == pytest.approx(rows[0]["gpu_hours"] * 312 / 989)


@pytest.mark.slow
def test_workflow_refuses_a_layout_that_cannot_fit_before_queueing_anything(tmp_path):
    overlay = _overlay(tmp_path, memory_gb=0.15)
    target = tmp_path / "results" / "runs" / "pythia-70m" / "checkpoints" / "step0"
    result = subprocess.run(
        [SNAKEMAKE, "--cores", "1", "--configfile", "config.yaml", str(overlay), "--", str(target)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode != 0
    output = result.stdout + result.stderr
    assert "layout does not fit in GPU memory; nothing was queued" in output
    assert "pythia-70m (size 70m): estimated peak" in output
    assert "Traceback" not in output and 'File "' not in output  # the message alone
    assert "\nrule " not in output and "\nlocalrule " not in output  # no job ran
    assert sorted(p.name for p in (tmp_path / "results").iterdir()) == ["plan"]
