"""Tests for pythia_suite.export: HF model dirs that load in transformers with the same logits."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file
from tokenizers import Tokenizer, models, pre_tokenizers, trainers
from tokenizers import decoders as tk_decoders
from train_support import PYTHIA_70M_SHAPE, tiny_gpt_neox_config
from transformers import AutoTokenizer, GPTNeoXConfig, GPTNeoXForCausalLM

from pythia_suite.export import (
    ExportError,
    export_checkpoint,
    pythia_config,
    pythia_state_dict_keys,
)

TOKENIZER_20B = "utils/20B_tokenizer.json"

EXPORT_FILES = {
    "config.json",
    "generation_config.json",
    "model.safetensors",
    "special_tokens_map.json",
    "tokenizer.json",
    "tokenizer_config.json",
}

TEXT = "The quick brown fox jumps over the lazy dog.\n  Indented,   spaced; digits 12345!"


def tiny_config(vocab_size: int, rotary_pct: float = 0.5) -> GPTNeoXConfig:
    # rotary_pct 0.5 (not Pythia's 0.25, which is also transformers' default) proves it is read.
    # eos_token_id: transformers' default (2), which the export must replace by the EOD id.
    return tiny_gpt_neox_config(vocab_size=vocab_size, rotary_pct=rotary_pct, eos_token_id=2)


def write_checkpoint(
    path: Path, model: GPTNeoXForCausalLM, step: int = 0, rename_head: bool = True
) -> Path:
    """Write a training checkpoint dir as the trainer does (fp32, `embed_out.weight`)."""
    path.mkdir(parents=True)
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    if rename_head:  # transformers 5's state_dict() says lm_head; the contract says embed_out
        state["embed_out.weight"] = state.pop("lm_head.weight")
    save_file(state, str(path / "model.safetensors"))
    (path / "hf_config.json").write_text(json.dumps(model.config.to_dict()))
    (path / "trainer_state.json").write_text(json.dumps({"step": step}))
    return path


@pytest.fixture(scope="module")
def small_tokenizer(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A byte-level BPE with Pythia's special tokens at ids 0 and 1 (as train-tokenizer makes)."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = tk_decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        special_tokens=["<|endoftext|>", "<|padding|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator([TEXT * 3, "hello world " * 20, "export the model " * 10], trainer)
    path = tmp_path_factory.mktemp("tok") / "tokenizer.json"
    tok.save(str(path))
    return path


@pytest.fixture(scope="module")
def tiny_model() -> GPTNeoXForCausalLM:
    torch.manual_seed(1234)
    model = GPTNeoXForCausalLM(tiny_config(vocab_size=448)).eval()
    with torch.no_grad():  # non-trivial LayerNorm/bias values, so a dropped tensor shows
        for name, param in model.named_parameters():
            if "norm" in name or name.endswith("bias"):
                param.add_(torch.randn_like(param) * 0.1)
    return model


@pytest.fixture(scope="module")
def exported(tmp_path_factory, tiny_model, small_tokenizer) -> Path:
    root = tmp_path_factory.mktemp("export")
    ckpt = write_checkpoint(root / "checkpoints" / "step1", tiny_model, step=1)
    return export_checkpoint(ckpt, small_tokenizer, root / "exports" / "step1")


def test_export_writes_exactly_the_published_files(exported: Path) -> None:
    assert {p.name for p in exported.iterdir()} == EXPORT_FILES
    # nothing temporary left beside it
    assert [p.name for p in exported.parent.iterdir()] == ["step1"]


def test_loads_in_transformers_with_fp32_logits(exported: Path, tiny_model) -> None:
    loaded = GPTNeoXForCausalLM.from_pretrained(exported)
    assert loaded.dtype == torch.float16
    assert loaded.config.rope_parameters["partial_rotary_factor"] == 0.5
    ids = torch.randint(0, 448, (2, 24), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = tiny_model(ids).logits
        got = loaded(ids).logits.float()
        # the same weights, rounded to fp16, in fp32 arithmetic: isolates the export from fp16 math
        rounded = GPTNeoXForCausalLM.from_pretrained(exported, dtype=torch.float32).eval()(ids)
    assert torch.allclose(got, expected, atol=2e-2, rtol=1e-2)
    assert torch.allclose(rounded.logits, expected, atol=5e-3, rtol=1e-3)
    assert not torch.equal(rounded.logits, torch.zeros_like(expected))


def test_weights_have_pythia_names_and_dtype(exported: Path, tiny_model) -> None:
    with safe_open(str(exported / "model.safetensors"), framework="pt") as handle:
        assert handle.metadata() == {"format": "pt"}
        assert sorted(handle.keys()) == pythia_state_dict_keys(2)
        head = handle.get_tensor("embed_out.weight")
    assert head.dtype == torch.float16
    assert torch.equal(head, tiny_model.lm_head.weight.detach().half())


def test_config_has_pythia_fields(exported: Path) -> None:
    config = json.loads((exported / "config.json").read_text())
    assert config["architectures"] == ["GPTNeoXForCausalLM"]
    assert config["model_type"] == "gpt_neox"
    assert config["rotary_pct"] == 0.5 and config["rotary_emb_base"] == 10000
    assert config["bos_token_id"] == 0 and config["eos_token_id"] == 0
    assert config["use_parallel_residual"] is True
    assert config["tie_word_embeddings"] is False
    assert config["torch_dtype"] == config["dtype"] == "float16"
    assert "rope_parameters" not in config
    generation = json.loads((exported / "generation_config.json").read_text())
    assert generation["bos_token_id"] == generation["eos_token_id"] == 0


def test_pythia_70m_config_matches_published_fields() -> None:
    """A transformers-5 dict of pythia-70m's config yields the published config.json values."""
    hf = GPTNeoXConfig(
        **PYTHIA_70M_SHAPE, rotary_pct=0.25, use_parallel_residual=True, tie_word_embeddings=False
    ).to_dict()
    assert hf["eos_token_id"] == 2 and "rotary_pct" not in hf  # why the fields are explicit
    config = pythia_config(hf, eod_token_id=0, dtype="float16")
    published = {  # EleutherAI/pythia-70m config.json
        "architectures": ["GPTNeoXForCausalLM"],
        "bos_token_id": 0,
        "eos_token_id": 0,
        "hidden_act": "gelu",
        "hidden_size": 512,
        "initializer_range": 0.02,
        "intermediate_size": 2048,
        "layer_norm_eps": 1e-05,
        "max_position_embeddings": 2048,
        "model_type": "gpt_neox",
        "num_attention_heads": 8,
        "num_hidden_layers": 6,
        "rotary_emb_base": 10000,
        "rotary_pct": 0.25,
        "tie_word_embeddings": False,
        "torch_dtype": "float16",
        "use_cache": True,
        "use_parallel_residual": True,
        "vocab_size": 50304,
    }
    assert {k: config[k] for k in published} == published
    # and the parameter count of that config is pythia-70m's
    with torch.device("meta"):
        model = GPTNeoXForCausalLM(GPTNeoXConfig(**config))
    assert sum(p.numel() for p in model.parameters()) == 70_426_624


def test_tokenizer_files_for_transformers_4_and_5(exported: Path, small_tokenizer) -> None:
    tok_config = json.loads((exported / "tokenizer_config.json").read_text())
    assert tok_config["tokenizer_class"] == "GPTNeoXTokenizerFast"  # 4.x refuses TokenizersBackend
    special = json.loads((exported / "special_tokens_map.json").read_text())
    assert special == {k: "<|endoftext|>" for k in ("bos_token", "eos_token", "unk_token")}
    assert (exported / "tokenizer.json").read_bytes() == small_tokenizer.read_bytes()


def test_tokenizer_round_trips(exported: Path, small_tokenizer) -> None:
    tok = AutoTokenizer.from_pretrained(exported)
    raw = Tokenizer.from_file(str(small_tokenizer))
    text = TEXT + "<|endoftext|>hello"
    ids = tok(text).input_ids
    assert ids == raw.encode(text).ids  # no BOS added, same ids as the tokenizer file
    assert tok.decode(ids) == text
    assert tok.eos_token_id == tok.bos_token_id == 0


def test_20b_tokenizer_round_trips(tmp_path: Path, tiny_model, anchor) -> None:
    tokenizer = anchor(TOKENIZER_20B)
    model = GPTNeoXForCausalLM(tiny_config(vocab_size=50304))
    out = export_checkpoint(write_checkpoint(tmp_path / "ck", model), tokenizer, tmp_path / "x")
    tok = AutoTokenizer.from_pretrained(out)
    assert tok("Hello world").input_ids == [12092, 1533]
    assert tok.decode(tok(TEXT).input_ids) == TEXT


def test_lm_head_key_is_renamed(tmp_path: Path, tiny_model, small_tokenizer) -> None:
    ckpt = write_checkpoint(tmp_path / "ck", tiny_model, rename_head=False)
    out = export_checkpoint(ckpt, small_tokenizer, tmp_path / "out", dtype="float32")
    with safe_open(str(out / "model.safetensors"), framework="pt") as handle:
        assert "embed_out.weight" in handle.keys() and "lm_head.weight" not in handle.keys()
        assert handle.get_tensor("gpt_neox.embed_in.weight").dtype == torch.float32


def test_equal_weights_export_byte_identical(tmp_path: Path, tiny_model, small_tokenizer) -> None:
    """step0 and step1 of Pythia hold equal weights: their exports must hash equal."""
    outs = []
    for step in (0, 1):
        ckpt = write_checkpoint(tmp_path / f"ck{step}", tiny_model, step=step)
        outs.append(export_checkpoint(ckpt, small_tokenizer, tmp_path / f"step{step}"))
    for name in EXPORT_FILES:
        assert (outs[0] / name).read_bytes() == (outs[1] / name).read_bytes(), name


def test_reexport_replaces(tmp_path: Path, tiny_model, small_tokenizer) -> None:
    ckpt = write_checkpoint(tmp_path / "ck", tiny_model)
    out = tmp_path / "out"
    out.mkdir()
    (out / "stale.bin").write_bytes(b"old")
    export_checkpoint(ckpt, small_tokenizer, out)
    assert {p.name for p in out.iterdir()} == EXPORT_FILES
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ck", "out"]


def test_missing_tensor_is_named_and_leaves_nothing(tmp_path, tiny_model, small_tokenizer) -> None:
    ckpt = write_checkpoint(tmp_path / "ck", tiny_model)
    state = {k: v for k, v in tiny_model.state_dict().items() if "layers.1.mlp" not in k}
    save_file({k: v.contiguous() for k, v in state.items()}, str(ckpt / "model.safetensors"))
    with pytest.raises(ExportError, match=r"model\.safetensors: missing tensor .*layers\.1\.mlp"):
        export_checkpoint(ckpt, small_tokenizer, tmp_path / "out")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ck"]


def test_bad_config_and_tokenizer_are_named(tmp_path, tiny_model, small_tokenizer) -> None:
    ckpt = write_checkpoint(tmp_path / "ck", tiny_model)
    config = json.loads((ckpt / "hf_config.json").read_text())
    del config["hidden_size"]
    (ckpt / "hf_config.json").write_text(json.dumps(config))
    with pytest.raises(ExportError, match=r"hf_config\.json: missing required key 'hidden_size'"):
        export_checkpoint(ckpt, small_tokenizer, tmp_path / "out")
    (ckpt / "hf_config.json").write_text("{not json")
    with pytest.raises(ExportError, match=r"hf_config\.json: not valid JSON: .*\(line 1, column"):
        export_checkpoint(ckpt, small_tokenizer, tmp_path / "out")
    (ckpt / "hf_config.json").write_text(json.dumps(tiny_model.config.to_dict()))
    no_eod = tmp_path / "tok.json"
    no_eod.write_text(json.dumps({"added_tokens": [], "model": {"vocab": {"a": 0}}}))
    with pytest.raises(ExportError, match=r"tok\.json: tokenizer has no '<\|endoftext\|>'"):
        export_checkpoint(ckpt, no_eod, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_fp16_overflow_is_refused(tmp_path, tiny_model, small_tokenizer) -> None:
    ckpt = write_checkpoint(tmp_path / "ck", tiny_model)
    state = {k: v.detach().clone().contiguous() for k, v in tiny_model.state_dict().items()}
    state["embed_out.weight"] = state.pop("lm_head.weight")
    state["gpt_neox.layers.0.attention.dense.bias"][3] = 1e6
    save_file(state, str(ckpt / "model.safetensors"))
    with pytest.raises(ExportError, match=r"attention\.dense\.bias' is not finite in float16"):
        export_checkpoint(ckpt, small_tokenizer, tmp_path / "out")
    assert not (tmp_path / "out").exists()
