"""GPT-NeoX v1.0 initialisation and Hugging Face naming of the training model."""

from __future__ import annotations

import math

import pytest
import torch
from train_support import PYTHIA_70M_SHAPE, TINY_CONFIG, tiny_gpt_neox_config

from pythia_suite.train.model import (
    build_model,
    count_parameters,
    hf_state_dict,
    init_gpt_neox_weights,
    init_std,
    load_hf_state_dict,
)

INPUT_SIDE = ("embed_in", "query_key_value.weight", "dense_h_to_4h.weight", "lm_head")
OUTPUT_SIDE = ("attention.dense.weight", "dense_4h_to_h.weight")

# Wider than the tiny model so that sample standard deviations are tight.
WIDE = dict(
    TINY_CONFIG, vocab_size=512, hidden_size=128, intermediate_size=512, num_hidden_layers=3
)


def test_init_std_formulas():
    assert init_std("small_init", hidden_size=512, num_layers=6) == math.sqrt(2 / (5 * 512))
    assert init_std("wang_init", hidden_size=512, num_layers=6) == 2 / (6 * math.sqrt(512))
    assert init_std("normal", hidden_size=512, num_layers=6) == 0.02
    assert init_std("scaled_normal", hidden_size=4096, num_layers=32) == 0.02 / math.sqrt(64)
    with pytest.raises(ValueError, match="xavier"):
        init_std("xavier", hidden_size=1, num_layers=1)


@pytest.mark.parametrize(
    "init_method, out_method", [("small_init", "wang_init"), ("normal", "scaled_normal")]
)
def test_init_std_per_parameter_class(init_method, out_method):
    model = build_model(WIDE)
    used = init_gpt_neox_weights(
        model, weight_seed=7, init_method=init_method, output_layer_init_method=out_method
    )
    h, layers = WIDE["hidden_size"], WIDE["num_hidden_layers"]
    std_in = init_std(init_method, hidden_size=h, num_layers=layers)
    std_out = init_std(out_method, hidden_size=h, num_layers=layers)
    for name, param in model.named_parameters():
        data = param.detach()
        if name.endswith(OUTPUT_SIDE):
            assert used[name] == std_out
            assert data.std().item() == pytest.approx(std_out, rel=0.05), name
            assert abs(data.mean().item()) < 0.1 * std_out
        elif any(k in name for k in INPUT_SIDE):
            assert used[name] == std_in
            assert data.std().item() == pytest.approx(std_in, rel=0.05), name
        elif name.endswith(".bias"):
            assert torch.count_nonzero(data) == 0, name
        else:
            assert "norm" in name and torch.all(data == 1), name


def test_weight_seed_alone_decides_the_weights():
    a, b, c = build_model(TINY_CONFIG), build_model(TINY_CONFIG), build_model(TINY_CONFIG)
    torch.manual_seed(0)
    init_gpt_neox_weights(a, weight_seed=1)
    torch.manual_seed(99)  # the global RNG (data side, dropout) plays no part
    init_gpt_neox_weights(b, weight_seed=1)
    init_gpt_neox_weights(c, weight_seed=2)
    sa, sb, sc = hf_state_dict(a), hf_state_dict(b), hf_state_dict(c)
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not torch.equal(sa["gpt_neox.embed_in.weight"], sc["gpt_neox.embed_in.weight"])
    # Each parameter has its own stream: layers do not share values.
    q0 = sa["gpt_neox.layers.0.attention.query_key_value.weight"]
    q1 = sa["gpt_neox.layers.1.attention.query_key_value.weight"]
    assert not torch.equal(q0, q1)


def test_hf_names_round_trip_and_load_with_transformers(tmp_path):
    from safetensors.torch import save_file
    from transformers import GPTNeoXForCausalLM

    model = build_model(TINY_CONFIG)
    init_gpt_neox_weights(model, weight_seed=3)
    tensors = hf_state_dict(model)
    assert "embed_out.weight" in tensors and "lm_head.weight" not in tensors
    save_file(tensors, str(tmp_path / "model.safetensors"), metadata={"format": "pt"})
    tiny_gpt_neox_config().save_pretrained(tmp_path)
    loaded = GPTNeoXForCausalLM.from_pretrained(tmp_path)
    assert torch.equal(loaded.lm_head.weight, model.lm_head.weight)
    other = build_model(TINY_CONFIG)
    load_hf_state_dict(other, tensors, "test")
    assert all(torch.equal(v, hf_state_dict(other)[k]) for k, v in tensors.items())


def test_load_rejects_wrong_shapes_and_keys():
    model = build_model(TINY_CONFIG)
    tensors = hf_state_dict(model)
    bad = dict(tensors, **{"embed_out.weight": torch.zeros(3, 3)})
    with pytest.raises(ValueError, match="embed_out.weight.*shape"):
        load_hf_state_dict(model, bad, "ckpt/model.safetensors")
    missing = {k: v for k, v in tensors.items() if k != "gpt_neox.embed_in.weight"}
    with pytest.raises(ValueError, match="ckpt/model.safetensors: missing keys"):
        load_hf_state_dict(model, missing, "ckpt/model.safetensors")


def test_pythia_70m_parameter_count():
    from transformers import GPTNeoXForCausalLM

    with torch.device("meta"):
        model = GPTNeoXForCausalLM(tiny_gpt_neox_config(**PYTHIA_70M_SHAPE))
    assert count_parameters(model) == 70_426_624
