"""Half-precision training with fp32 master weights (optim.MasterWeightOptimizer): bf16 on
CPU, the fp16 loss-scaler path through ``loss_scaler_in_fp32``.

Tolerances: bf16 keeps 8 significant bits (relative rounding 2^-9 = 2e-3 per value), so a
master-weight run and the fp32-parameter autocast run (both bf16 compute, rounding in different
places) agree on the loss, a mean over 128 tokens, to rtol 2e-3 (seen: 2e-4 over 6 steps), and
on the weights to 5% of each tensor's largest value (seen: <= 2e-2; Adam turns a differently
rounded near-zero gradient component into a step of up to the LR, 1e-2 here, in either sign).
A tensor-parallel bf16 run against the 1-rank bf16 run rounds in different places too (the
row-parallel sums): the same tolerances.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from train_support import (
    TINY_CONFIG,
    RandomTokens,
    comparable,
    first_segment,
    read_weights,
    run_ranks,
    tiny_settings,
    train_in_this_process,
)

from pythia_suite.train import optim
from pythia_suite.train.distributed import DistributedEnv
from pythia_suite.train.model import init_gpt_neox_weights
from pythia_suite.train.step import init_train_state, prepare_model, train_step

CPU = torch.device("cpu")
SINGLE = DistributedEnv(0, 1, 0, "", 0, "single")
STEPS = 6
LOSS_RTOL = 2e-3
WEIGHT_TOL = 5e-2  # of each tensor's largest absolute value


def _train(out, settings, start=None, end=STEPS, **kw):
    return train_in_this_process(
        settings, start_checkpoint=start, start_step=0, end_step=end, out_dir=out, **kw
    )


def _assert_close_weights(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for key in a:
        # Non-rotary key biases: rounding noise only (train_support.comparable).
        x, y = comparable(key, a[key]), comparable(key, b[key])
        scale = max(x.abs().max().item(), 1e-3)
        assert (x - y).abs().max().item() <= WEIGHT_TOL * scale, key


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """step0 (fp32), then 6 steps from it: bf16 master weights, and bf16 autocast over fp32
    parameters (``data_parallel: fsdp`` at one rank: FSDP2 is not applied, autocast is)."""
    root = tmp_path_factory.mktemp("master")
    _train(root / "step0", tiny_settings(), end=0)
    master = _train(root / "master", tiny_settings(precision="bf16"), start=root / "step0")
    autocast = _train(
        root / "autocast",
        tiny_settings(precision="bf16", data_parallel="fsdp"),
        start=root / "step0",
    )
    return root, master, autocast


def test_bf16_master_weights_train_close_to_fp32_parameter_autocast(runs):
    root, master, autocast = runs
    np.testing.assert_allclose(master["losses"], autocast["losses"], rtol=LOSS_RTOL)
    assert master["losses"][-1] < master["losses"][0]
    _assert_close_weights(read_weights(root / "master"), read_weights(root / "autocast"))


def test_parameters_are_bf16_and_the_checkpoint_holds_the_fp32_masters(runs):
    root, _, _ = runs
    settings = tiny_settings(precision="bf16")
    model = prepare_model(TINY_CONFIG, settings, CPU)
    init_gpt_neox_weights(model, weight_seed=1234)
    fp32 = {n: p.detach().clone() for n, p in model.named_parameters()}
    state = init_train_state(model, settings, SINGLE, CPU)
    assert isinstance(state.optimizer, optim.MasterWeightOptimizer)
    for name, p in state.model.named_parameters():
        assert p.dtype == torch.bfloat16, name
        master = state.optimizer.master_of(p)
        assert master.dtype == torch.float32 and torch.equal(master, fp32[name]), name
        assert torch.equal(p.float(), fp32[name].bfloat16().float()), name
    # The saved weights are the fp32 masters: most values are not bf16-representable.
    for name, w in read_weights(root / "master").items():
        assert w.dtype == torch.float32, name
        not_bf16 = (w != w.bfloat16().float()).float().mean().item()
        assert not_bf16 > 0.5, (name, not_bf16)


def test_resume_at_the_same_layout_is_bit_identical(runs, tmp_path):
    root, master, _ = runs
    state_dir = tmp_path / "state"
    segment = first_segment(root, tmp_path / "out", STEPS, state_dir)
    settings = {"precision": "bf16", "state_interval": 2}
    fault = {"event": "step_end", "step": 3, "action": "raise"}
    assert run_ranks(1, segment, settings=settings, fault=fault) == [3]
    assert (state_dir / "snapshot-step2").is_dir()
    assert run_ranks(1, segment, settings=settings) == [0]
    state = json.loads((tmp_path / "out" / "trainer_state.json").read_text())
    assert state["losses"] == master["losses"]
    a, b = read_weights(tmp_path / "out"), read_weights(root / "master")
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("fused", [False, True], ids=["unfused", "fused-adamw"])
@pytest.mark.parametrize(
    "world, settings",
    [(2, {"tensor_parallel": 2}), (2, {"micro_batch": 2}), (4, {"tensor_parallel": 2})],
    ids=["tp2", "zero1-dp2", "dp2xtp2"],
)
def test_parallel_bf16_master_weights_match_one_rank(runs, tmp_path, world, settings, fused):
    """Each layout, with the CPU's optimizer and with the GPU's (fused AdamW over the fp32
    masters, ``DeviceChoices.fused_adamw``), against the 1-rank unfused master-weight run."""
    root, master, _ = runs
    segment = first_segment(root, tmp_path / "out", STEPS)
    settings = dict(settings, precision="bf16")
    if world == 4:
        settings["micro_batch"] = 2  # 2 data ranks x 4 rows
    choices = {"fused_adamw": True} if fused else None
    codes = run_ranks(world, segment, settings=settings, choices=choices, timeout=240)
    assert codes == [0] * world
    state = json.loads((tmp_path / "out" / "trainer_state.json").read_text())
    np.testing.assert_allclose(state["losses"], master["losses"], rtol=LOSS_RTOL)
    weights = read_weights(tmp_path / "out")
    assert all(w.dtype == torch.float32 for w in weights.values())
    _assert_close_weights(weights, read_weights(root / "master"))
    # ZeRO-1: one copy of every parameter's Adam state across the ranks' shards.
    shards = [
        torch.load(path, weights_only=True)["state"]
        for path in sorted((tmp_path / "out" / "optimizer").iterdir())
    ]
    for name, tensor in weights.items():
        blocks = [shard[name]["exp_avg"] for shard in shards if name in shard]
        assert sum(b.numel() for b in blocks) == tensor.numel(), name


def test_overflow_skip_leaves_masters_moments_and_schedule_unchanged(monkeypatch):
    import torch.nn.functional as F

    settings = tiny_settings(precision="bf16", loss_scaler_in_fp32=True)
    model = prepare_model(TINY_CONFIG, settings, CPU)
    init_gpt_neox_weights(model, weight_seed=1234)
    state = init_train_state(model, settings, SINGLE, CPU)
    tokens = torch.from_numpy(RandomTokens().batch(0, 8))
    real_ce, calls = F.cross_entropy, {"n": 0}

    def overflowing(*args, **kwargs):
        loss = real_ce(*args, **kwargs)
        calls["n"] += 1
        return loss * float("inf") if (calls["n"] - 1) // 2 == 1 else loss  # iteration 1

    monkeypatch.setattr(F, "cross_entropy", overflowing)
    opt = state.optimizer

    def snapshot():
        params = {n: p.detach().clone() for n, p in state.model.named_parameters()}
        masters = {n: opt.master_of(p).clone() for n, p in state.model.named_parameters()}
        moments = {id(m): {k: v.clone() for k, v in s.items()} for m, s in opt.optim.state.items()}
        return params, masters, moments, state.progress.scheduler_iteration

    train_step(state, tokens)
    state.progress.step += 1
    before = snapshot()
    result = train_step(state, tokens)
    after = snapshot()
    assert result.skipped and not np.isfinite(result.loss)
    for b, a in zip(before[:2], after[:2], strict=True):
        assert all(torch.equal(b[n], a[n]) for n in b)
    for key, moments in before[2].items():
        assert all(torch.equal(v, after[2][key][k]) for k, v in moments.items())
    assert before[3] == after[3] == 1
    assert state.scaler.scale == settings.loss_scale_initial  # hysteresis 2: not yet halved
    assert not train_step(state, tokens).skipped  # iteration 2: the update runs again
    assert state.progress.scheduler_iteration == 2
