"""Tensor and data parallelism (train/parallel.py) on CPU gloo ranks against the 1-rank run.

Every multi-rank run trains the tiny GPT-NeoX in fp32 from the same step0 and is compared with
one uninterrupted single-process run: same losses (rtol 1e-5), same fp32 weights (rtol 1e-5).
Every layout runs again with the GPU's optimizer (``DeviceChoices.fused_adamw``, torch's fused
AdamW kernel, which the CPU has too) and matches its unfused run: losses within a relative
1e-6, weights within rtol 1e-5.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from train_support import (
    TINY_CONFIG,
    RandomTokens,
    assert_weights_close,
    first_segment,
    read_weights,
    run_in_ranks,
    run_ranks,
    tiny_settings,
    train_in_this_process,
)

from pythia_suite import config as cfg
from pythia_suite.train import parallel
from pythia_suite.train import settings as config_settings
from pythia_suite.train.model import build_model, init_gpt_neox_weights

RTOL = 1e-5
FUSED_LOSS_RTOL = 1e-6
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """step0, and one uninterrupted single-process run (0, 3] from it."""
    root = tmp_path_factory.mktemp("ref")
    settings = tiny_settings()
    train_in_this_process(
        settings, start_checkpoint=None, start_step=0, end_step=0, out_dir=root / "step0"
    )
    state = train_in_this_process(
        settings, start_checkpoint=root / "step0", start_step=0, end_step=3, out_dir=root / "step3"
    )
    return root, state


def _assert_same_run(out: Path, root: Path, ref_state: dict) -> dict:
    state = json.loads((out / "trainer_state.json").read_text())
    np.testing.assert_allclose(state["losses"], ref_state["losses"], rtol=RTOL)
    assert state["data_fingerprint"] == ref_state["data_fingerprint"]
    assert_weights_close(read_weights(out), read_weights(root / "step3"), rtol=RTOL)
    return state


# ----------------------------------------------------------------------------- the split


def test_contiguous_qkv_row_shard_holds_whole_heads():
    """transformers views query_key_value's output as (-1, 3 * head_size): rows are grouped
    head by head, so rank r of T computes exactly heads [r*H/T, (r+1)*H/T) with its row block."""
    model = build_model(TINY_CONFIG, empty=True)
    init_gpt_neox_weights(model, weight_seed=3)
    attention = model.gpt_neox.layers[0].attention
    heads, head_size = TINY_CONFIG["num_attention_heads"], attention.head_size
    x = torch.randn(2, 5, TINY_CONFIG["hidden_size"])
    weight, bias = attention.query_key_value.weight, attention.query_key_value.bias
    with torch.no_grad():
        full = attention.query_key_value(x).view(2, 5, -1, 3 * head_size).transpose(1, 2)
        for tp in (2, 4):
            rows = weight.shape[0] // tp
            for r in range(tp):
                block = slice(r * rows, (r + 1) * rows)
                local = torch.nn.functional.linear(x, weight[block], bias[block])
                local = local.view(2, 5, -1, 3 * head_size).transpose(1, 2)
                assert local.shape[1] == heads // tp  # the -1 is the local head count
                per_rank = heads // tp
                torch.testing.assert_close(local, full[:, r * per_rank : (r + 1) * per_rank])
    # Grouped q-block, k-block, v-block rows would not: a contiguous half would be q and k.
    q_rows = weight.view(heads, 3, head_size, -1)[:, 0].reshape(-1, weight.shape[1])
    assert not torch.equal(weight[: weight.shape[0] // 3], q_rows)


def _check_sharding(par: parallel.Parallelism) -> dict:
    model = build_model(TINY_CONFIG, empty=True)
    init_gpt_neox_weights(model, weight_seed=3)
    parallel.apply_tensor_parallel_once(model, par)
    from torch.distributed.tensor import DTensor

    placements = {
        n: str(tuple(p.placements)) for n, p in model.named_parameters() if isinstance(p, DTensor)
    }
    local_qkv = parallel.local_view(model.gpt_neox.layers[0].attention.query_key_value.weight)

    # A plan keyed on a wrong name ("embed_out" instead of transformers' "lm_head") only warns
    # in parallelize_module; check_tensor_parallel refuses it.
    from torch.distributed.tensor.parallel import parallelize_module

    other = build_model(TINY_CONFIG, empty=True)
    plan = parallel.tensor_parallel_plan(other)
    plan["embed_out"] = plan.pop("lm_head")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        parallelize_module(other, par.tensor_mesh, plan)
    try:
        parallel.check_tensor_parallel(other, par)
        refused = None
    except parallel.ParallelLayoutError as err:
        refused = str(err)
    return {
        "placements": placements,
        "local_qkv_rows": local_qkv.shape[0],
        "warned": [str(w.message) for w in caught],
        "refused": refused,
    }


def test_every_intended_module_is_sharded_and_a_wrong_name_is_refused():
    results = run_in_ranks(2, _check_sharding, tensor_parallel=2)
    model = build_model(TINY_CONFIG, empty=True)
    expected = parallel.expected_weight_placements(model)
    for result in results:
        placements = result["placements"]
        assert set(placements) == set(expected)
        for name, dim in expected.items():
            want = "(Replicate(),)" if dim is None else f"(Shard(dim={dim}),)"
            assert placements[name] == want, name
        # Every weight matrix of the model is sharded; only LayerNorms stay plain tensors.
        assert {n for n in placements if n.endswith("weight") and "layernorm" not in n} == {
            n for n in expected if n.endswith("weight")
        }
        assert result["local_qkv_rows"] == 3 * TINY_CONFIG["hidden_size"] // 2
        assert any("embed_out" in w for w in result["warned"])
        assert result["refused"] and "lm_head.weight" in result["refused"]


def _partitioned_checkpoint_saves(par: parallel.Parallelism) -> dict:
    layer = torch.nn.Linear(8, 8)
    torch.manual_seed(0)
    x = torch.randn(3, 5, 8, requires_grad=True)
    out = parallel.partitioned_checkpoint(layer, x, group=par.tensor_group)
    saved = [t.numel() for t in out.grad_fn.saved_tensors]
    out.sum().backward()
    reference = torch.nn.Linear(8, 8)
    reference.load_state_dict(layer.state_dict())
    x_ref = x.detach().clone().requires_grad_(True)
    reference(x_ref).sum().backward()
    return {
        "saved": saved,
        "grad_equal": torch.equal(x.grad, x_ref.grad),
        "weight_grad_equal": torch.equal(layer.weight.grad, reference.weight.grad),
    }


def test_partitioned_checkpoint_keeps_one_slice_per_tensor_rank():
    """DeepSpeed's partition-activations: each of T ranks keeps ceil(n / T) of a layer's input
    (here 120 values over 2 ranks: 60), and the recomputed backward equals the plain one."""
    for result in run_in_ranks(2, _partitioned_checkpoint_saves, tensor_parallel=2):
        assert result["saved"] == [60]
        assert result["grad_equal"] and result["weight_grad_equal"]


# ----------------------------------------------------------------------------- equivalence


LAYOUTS = {
    "tp2": (2, {"tensor_parallel": 2}),
    "tp2-partitioned-checkpoints": (2, {"tensor_parallel": 2, "partition_activations": True}),
    "dp2xtp2": (4, {"tensor_parallel": 2, "micro_batch": 2}),
    "fsdp2": (2, {"data_parallel": "fsdp", "micro_batch": 2}),
    "fsdp2-checkpointed-chunked-loss": (
        2,
        {
            "data_parallel": "fsdp",
            "micro_batch": 2,
            "activation_checkpointing": True,
            "loss_chunk_tokens": 8,
        },
    ),
    "zero1-ddp-checkpointed-chunked-loss": (
        2,
        {"micro_batch": 2, "activation_checkpointing": True, "loss_chunk_tokens": 8},
    ),
}


@pytest.fixture(scope="module")
def layout_run(reference, tmp_path_factory):
    """``run(layout, fused)``: the layout's 3-step run from step0 (``step3`` directory), trained
    on first use and kept for the module (the fused tests compare with the unfused run)."""
    root, _ = reference
    done: dict[tuple, Path] = {}

    def run(layout: str, fused: bool) -> Path:
        if (layout, fused) not in done:
            world, settings = LAYOUTS[layout]
            base = tmp_path_factory.mktemp(f"{layout}-{'fused' if fused else 'unfused'}")
            codes = run_ranks(
                world,
                first_segment(root, base / "step3", 3),
                settings=settings,
                choices={"fused_adamw": True} if fused else None,
                log=str(base / "rank0.log"),
                timeout=240,
            )
            assert codes == [0] * world
            done[layout, fused] = base / "step3"
        return done[layout, fused]

    return run


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_parallel_layout_matches_one_rank(reference, layout_run, layout):
    root, ref_state = reference
    world, settings = LAYOUTS[layout]
    out = layout_run(layout, fused=False)
    assert "unfused AdamW" in (out.parent / "rank0.log").read_text()
    state = _assert_same_run(out, root, ref_state)
    assert state["world_size"] == world
    summary = json.loads((out / "segment_summary.json").read_text())
    tp = settings.get("tensor_parallel", 1)
    assert (summary["devices"], summary["tensor_parallel"]) == (world, tp)
    assert summary["data_parallel"] == world // tp
    # One copy of every optimizer block, whatever the layout: the blocks tile each parameter.
    shards = [
        torch.load(path, weights_only=True)["state"]
        for path in sorted((out / "optimizer").iterdir())
    ]
    weights = read_weights(out)
    for name, tensor in weights.items():
        blocks = [shard[name]["exp_avg"] for shard in shards if name in shard]
        assert sum(b.numel() for b in blocks) == tensor.numel(), name


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_parallel_layout_with_fused_adamw_matches_unfused(layout_run, layout):
    """The GPU's optimizer choice in every layout: torch's fused AdamW (one kernel per group of
    one placement kind, ``optim.split_by_placement``) against the unfused run."""
    fused, unfused = layout_run(layout, fused=True), layout_run(layout, fused=False)
    assert "fused AdamW" in (fused.parent / "rank0.log").read_text()
    a = json.loads((fused / "trainer_state.json").read_text())
    b = json.loads((unfused / "trainer_state.json").read_text())
    np.testing.assert_allclose(a["losses"], b["losses"], rtol=FUSED_LOSS_RTOL, atol=0)
    assert_weights_close(read_weights(fused), read_weights(unfused), rtol=RTOL)


@pytest.mark.slow
def test_compiled_layers_with_fused_adamw_match_one_rank(reference, tmp_path):
    """The GPU's speed choices together at TP 1: each layer compiled (``compile_layers``) and
    the fused AdamW, against the 1-rank eager unfused run (slow: inductor compiles the layers)."""
    root, ref_state = reference
    segment = first_segment(root, tmp_path / "step3", 3)
    codes = run_ranks(
        1, segment, settings={"compile_layers": True}, choices={"fused_adamw": True}, timeout=600
    )
    assert codes == [0]
    _assert_same_run(tmp_path / "step3", root, ref_state)


def test_compiled_layers_under_tensor_parallelism_are_refused_before_training(tmp_path):
    """Compiled layers at TP 2 crashed in the first backward (DTensor's redistribute got a
    plain-tensor gradient from the compiled layer; torch 2.13, CPU): refused up front, naming
    both settings, with nothing written."""
    with pytest.raises(ValueError, match="compile_layers is offered at tensor_parallel 1 only"):
        train_in_this_process(
            tiny_settings(compile_layers=True, tensor_parallel=2),
            start_checkpoint=None,
            start_step=0,
            end_step=0,
            out_dir=tmp_path / "step0",
        )
    assert not (tmp_path / "step0").exists()


def _fused_step_under_tensor_parallelism(par: parallel.Parallelism) -> dict:
    """One TP 2 backward and a fused AdamW step, as on a GPU (the loop's groups and optimizer);
    what the input embedding's gradient holds on this rank."""
    from torch.distributed.tensor import DTensor

    from pythia_suite.train.loss import causal_lm_loss, loss_context
    from pythia_suite.train.optim import build_optimizer, build_param_groups

    model = build_model(TINY_CONFIG, empty=True)
    init_gpt_neox_weights(model, weight_seed=3)
    parallel.apply_tensor_parallel_once(model, par)
    groups = build_param_groups(model, 0.1)
    mixed = [{isinstance(p, DTensor) for p in g["params"]} == {True, False} for g in groups]
    opt = build_optimizer(groups, par, betas=(0.9, 0.95), eps=1e-8, fused=True)
    parallel.shard_gradients_like_parameters(model, par)
    tokens = torch.from_numpy(RandomTokens().batch(0, 2))
    with loss_context(par):
        logits = model(tokens[:, :-1]).logits
        causal_lm_loss(logits, tokens[:, 1:]).backward()
    grad = model.gpt_neox.embed_in.weight.grad
    for group in opt.param_groups:
        group["lr"] = 1e-3
    opt.step()
    return {
        "mixed_groups": mixed,
        "fused": [g["fused"] for g in opt.param_groups],
        "embedding_grad": (str(tuple(grad.placements)), tuple(grad.to_local().shape)),
    }


def test_fused_adamw_steps_under_tensor_parallelism_and_the_embedding_gradient_is_sharded():
    """The no-decay group mixes LayerNorm weights (plain) with sharded biases (DTensors): the
    fused kernel refuses such a group, so each is split by placement kind. The input
    embedding's gradient is this rank's vocabulary rows, not the whole matrix."""
    for result in run_in_ranks(2, _fused_step_under_tensor_parallelism, tensor_parallel=2):
        assert result["mixed_groups"] == [False, True]  # decay: all DTensors; no decay: mixed
        assert result["fused"] == [True] * 3
        vocab, hidden = TINY_CONFIG["vocab_size"], TINY_CONFIG["hidden_size"]
        assert result["embedding_grad"] == ("(Shard(dim=0),)", (vocab // 2, hidden))


@pytest.mark.parametrize("first, second", [(2, 1), (1, 2)], ids=["tp2-to-tp1", "tp1-to-tp2"])
def test_resume_across_tensor_parallel_degrees(reference, tmp_path, first, second):
    """Killed after step 2 at one TP degree (snapshot at 2), finished at the other."""
    root, ref_state = reference
    state_dir = tmp_path / "state"
    segment = first_segment(root, tmp_path / "step3", 3, state_dir)
    fault = {"event": "step_end", "step": 3, "action": "raise"}
    codes = run_ranks(
        first, segment, settings={"tensor_parallel": first, "state_interval": 2}, fault=fault
    )
    assert codes == [3] * first
    assert (state_dir / "snapshot-step2").is_dir() and not (tmp_path / "step3").exists()
    codes = run_ranks(second, segment, settings={"tensor_parallel": second, "state_interval": 2})
    assert codes == [0] * second
    state = _assert_same_run(tmp_path / "step3", root, ref_state)
    assert [r["step"] for r in state["history"]] == [1, 2, 3]


# ----------------------------------------------------------------------------- every size


def _size_shapes() -> dict[tuple, list[str]]:
    """Distinct (tensor parallel, micro_batch, gas, activation checkpointing,
    partition-activations, CPU precision) of config.yaml's sizes (fp16 needs CUDA: fp32 here;
    pythia-1b's bf16 runs as bf16)."""
    config = cfg.load_config([ROOT / "config.yaml"])
    shapes: dict[tuple, list[str]] = {}
    for name, size in config["sizes"].items():
        precision = size["precision"]
        if isinstance(precision, dict):
            precision = precision.get("standard", "fp16")
        shape = (
            size["tensor_parallel"],
            size["micro_batch"],
            size["gas"],
            config_settings.activation_checkpointing(config, name),
            config_settings.partition_activations(config, name),
            "bf16" if precision == "bf16" else "fp32",
        )
        shapes.setdefault(shape, []).append(name)
    return shapes


_SHAPES = _size_shapes()


@pytest.mark.parametrize("shape", list(_SHAPES), ids=[",".join(v) for v in _SHAPES.values()])
def test_each_size_parallel_shape_trains(tmp_path, shape):
    """Each size's tensor-parallel degree, micro-batch : gas ratio (micro-batch / 8),
    activation checkpointing and partitioned activations, at tiny width, in at most 4
    processes, for 2 steps."""
    tp, micro, gas, checkpointing, partition, precision = shape
    data = max(1, 4 // tp) if tp > 1 else 2
    world = data * tp
    assert world <= 4
    micro = max(1, micro // 8)
    settings = {
        "tensor_parallel": tp,
        "activation_checkpointing": checkpointing,
        "partition_activations": partition,
        "precision": precision,
        "micro_batch": micro,
        "global_batch": micro * gas * data,
    }
    segment = {
        "start_checkpoint": None,
        "start_step": 0,
        "end_step": 2,
        "out_dir": str(tmp_path / "step2"),
    }
    assert run_ranks(world, segment, settings=settings, timeout=240) == [0] * world
    state = json.loads((tmp_path / "step2" / "trainer_state.json").read_text())
    assert state["world_size"] == world and len(state["losses"]) == 2
    assert all(np.isfinite(state["losses"]))


def test_fsdp_bf16_mixed_precision_trains_close_to_fp32(reference, tmp_path):
    """FSDP2's MixedPrecisionPolicy (bf16 compute, fp32 reduction and master weights)."""
    root, ref_state = reference
    segment = first_segment(root, tmp_path / "step3", 3)
    settings = {"data_parallel": "fsdp", "micro_batch": 2, "precision": "bf16"}
    assert run_ranks(2, segment, settings=settings, timeout=240) == [0, 0]
    state = json.loads((tmp_path / "step3" / "trainer_state.json").read_text())
    np.testing.assert_allclose(state["losses"], ref_state["losses"], rtol=2e-2)
    assert all(t.dtype == torch.float32 for t in read_weights(tmp_path / "step3").values())


# ----------------------------------------------------------------------------- config


def test_config_layout_keys():
    config = cfg.load_config([ROOT / "config.yaml"])
    assert config["training"]["data_parallel"] == "zero1"
    partitioned = {s for s in config["sizes"] if config_settings.partition_activations(config, s)}
    assert partitioned == {"6.9b", "12b"}  # the tensor-parallel originals
    with pytest.raises(cfg.ConfigError, match="training.data_parallel: 'fsdp' is offered"):
        cfg.load_config([ROOT / "config.yaml"], {"training": {"data_parallel": "fsdp"}})
    with pytest.raises(cfg.ConfigError, match="data_parallel"):
        cfg.load_config([ROOT / "config.yaml"], {"training": {"data_parallel": "zero3"}})
