"""LR schedule, weight-decay groups and the DeepSpeed loss scaler of the training backend."""

from __future__ import annotations

import math

import pytest
from train_support import TINY_CONFIG

from pythia_suite.train.model import build_model
from pythia_suite.train.optim import (
    DynamicLossScaler,
    build_param_groups,
    lr_at,
    split_decay_parameters,
)

PYTHIA_70M = dict(lr=1e-3, min_lr=1e-4, warmup_iters=1430, decay_iters=143000)


def test_lr_warmup_starts_at_zero_and_is_linear():
    assert lr_at(0, **PYTHIA_70M) == 0.0
    assert lr_at(1, **PYTHIA_70M) == pytest.approx(1e-3 / 1430)
    assert lr_at(715, **PYTHIA_70M) == pytest.approx(0.5e-3)
    assert lr_at(1430, **PYTHIA_70M) == pytest.approx(1e-3)


@pytest.mark.parametrize("it", [1431, 10000, 71500, 100000])
def test_lr_cosine_uses_decay_iters_as_denominator(it):
    expected = max(1e-4, 1e-3 / 2 * (math.cos(math.pi * (it - 1430) / 143000) + 1))
    assert lr_at(it, **PYTHIA_70M) == pytest.approx(expected, rel=1e-12)
    # Not the (decay - warmup) denominator of later GPT-NeoX versions.
    other = 1e-3 / 2 * (math.cos(math.pi * (it - 1430) / (143000 - 1430)) + 1)
    assert lr_at(it, **PYTHIA_70M) != pytest.approx(other, rel=1e-13, abs=0)


def test_lr_is_floored_at_min_lr_late_in_training():
    assert lr_at(143000, **PYTHIA_70M) == pytest.approx(1e-4)
    assert lr_at(142000, **PYTHIA_70M) == pytest.approx(1e-4)


def test_lr_rejects_negative_iteration():
    with pytest.raises(ValueError, match="iteration"):
        lr_at(-1, **PYTHIA_70M)


def test_no_weight_decay_on_biases_and_layernorm():
    model = build_model(TINY_CONFIG)
    decay, no_decay = split_decay_parameters(model)
    assert all(n.endswith(".weight") for n in decay)
    assert not any("layernorm" in n or "layer_norm" in n for n in decay)
    assert {n for n in no_decay if n.endswith(".bias")} == {
        n for n, _ in model.named_parameters() if n.endswith(".bias")
    }
    assert "gpt_neox.final_layer_norm.weight" in no_decay
    assert "gpt_neox.layers.0.input_layernorm.weight" in no_decay
    assert "gpt_neox.layers.1.post_attention_layernorm.weight" in no_decay
    assert {"gpt_neox.embed_in.weight", "lm_head.weight"} <= set(decay)
    assert len(decay) + len(no_decay) == len(list(model.parameters()))
    groups = build_param_groups(model, 0.1)
    assert [g["weight_decay"] for g in groups] == [0.1, 0.0]
    assert [len(g["params"]) for g in groups] == [len(decay), len(no_decay)]


def test_loss_scaler_grows_after_a_window_of_good_steps():
    scaler = DynamicLossScaler(initial_scale=2**12, window=3, hysteresis=2, min_scale=1)
    scales = []
    for _ in range(7):
        scaler.update(False)
        scales.append(scaler.scale)
    # cur_iter - last_overflow_iter (-1) hits a multiple of 3 after iterations 2 and 5.
    assert scales == [2**12, 2**12, 2**13, 2**13, 2**13, 2**14, 2**14]


def test_loss_scaler_hysteresis_then_halving_and_floor():
    scaler = DynamicLossScaler(initial_scale=4.0, window=1000, hysteresis=2, min_scale=1.0)
    scaler.update(True)  # absorbed by hysteresis
    assert scaler.scale == 4.0
    scaler.update(True)
    assert scaler.scale == 2.0
    scaler.update(True)  # hysteresis is not refilled by overflows
    assert scaler.scale == 1.0
    scaler.update(True)
    assert scaler.scale == 1.0  # min scale
    # A good step does not refill the hysteresis (DeepSpeed's consecutive_hysteresis=False) ...
    scaler.update(False)
    scaler.update(True)
    assert scaler.scale == 1.0 and scaler.state.cur_hysteresis == 1


def test_loss_scaler_window_counts_from_the_last_overflow():
    scaler = DynamicLossScaler(initial_scale=8.0, window=2, hysteresis=1, min_scale=1.0)
    scaler.update(True)  # iter 0 overflows: 8 -> 4, last_overflow_iter = 0
    assert scaler.scale == 4.0
    scaler.update(False)  # iter 1: 1 - 0 = 1, not a multiple of 2
    assert scaler.scale == 4.0
    scaler.update(False)  # iter 2: 2 - 0 = 2 -> grow
    assert scaler.scale == 8.0


def test_loss_scaler_state_round_trip():
    scaler = DynamicLossScaler(initial_scale=16.0, window=5, hysteresis=2)
    for overflow in (True, False, True, True, False):
        scaler.update(overflow)
    restored = DynamicLossScaler(initial_scale=16.0, window=5, hysteresis=2)
    restored.load_state_dict(scaler.state_dict())
    for overflow in (False, False, True, False):
        scaler.update(overflow)
        restored.update(overflow)
        assert restored.state_dict() == scaler.state_dict()


def test_loss_scaler_rejects_bad_settings():
    with pytest.raises(ValueError, match="window=0"):
        DynamicLossScaler(window=0)
