"""Export a training checkpoint as a Hugging Face model directory in Pythia's published layout.

A training checkpoint (``runs/{run}/checkpoints/step{N}/``) holds fp32 weights with GPTNeoX key
names (``model.safetensors``), the transformers ``GPTNeoXConfig`` dict (``hf_config.json``) and
``trainer_state.json``. :func:`export_checkpoint` turns it into what users of the published Pythia
models get on every branch::

    config.json               Pythia's fields (rotary_pct, rotary_emb_base, bos/eos 0, ...)
    generation_config.json
    model.safetensors         weights cast to ``dtype``, Pythia's key names (``embed_out.weight``)
    tokenizer.json            the BPE tokenizer, byte for byte
    tokenizer_config.json     ``"tokenizer_class": "GPTNeoXTokenizerFast"`` (loads in 4.x and 5.x)
    special_tokens_map.json   ``<|endoftext|>`` as bos/eos/unk

The export path imports only numpy and safetensors (torch only for bfloat16, which numpy
lacks), not transformers: the miniature suite
exports many checkpoints, and importing transformers costs ~5 s per process here.

The files depend only on the weights, the model config and the tokenizer, never on the step
number or the time: two checkpoints with equal weights (Pythia's ``step0`` and ``step1``) export
to byte-identical directories, which is what :func:`pythia_suite.publish.verify_run` relies on.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np
from safetensors import safe_open

from pythia_suite.atomic import atomic_directory
from pythia_suite.jsonfile import JSONFileError, read_json

__all__ = [
    "EOD_TOKEN",
    "ExportError",
    "export_checkpoint",
    "pythia_config",
    "pythia_state_dict_keys",
]

#: Pythia's end-of-document token; the published models use it as bos, eos and unk.
EOD_TOKEN = "<|endoftext|>"

#: Export dtypes. No ``transformers_version`` is written: these files are not made by transformers.
_EXPORT_DTYPES = {"float16": np.float16, "bfloat16": "bfloat16", "float32": np.float32}

# transformers 5 names the output layer `lm_head` in `state_dict()`; Pythia's files and the
# checkpoint contract call it `embed_out`. Both are accepted on input; `embed_out` is written.
_KEY_RENAMES = {"lm_head.weight": "embed_out.weight"}

# Layer parameter names of GPTNeoX (per layer `gpt_neox.layers.{i}.<name>`).
_LAYER_PARAMS = (
    "input_layernorm.weight",
    "input_layernorm.bias",
    "post_attention_layernorm.weight",
    "post_attention_layernorm.bias",
    "attention.query_key_value.weight",
    "attention.query_key_value.bias",
    "attention.dense.weight",
    "attention.dense.bias",
    "mlp.dense_h_to_4h.weight",
    "mlp.dense_h_to_4h.bias",
    "mlp.dense_4h_to_h.weight",
    "mlp.dense_4h_to_h.bias",
)


class ExportError(ValueError):
    """A checkpoint or tokenizer cannot be exported; the message names the file and key."""


def pythia_state_dict_keys(num_layers: int) -> list[str]:
    """Return the sorted tensor names of a Pythia model with ``num_layers`` layers."""
    keys = ["gpt_neox.embed_in.weight", "gpt_neox.final_layer_norm.weight"]
    keys += ["gpt_neox.final_layer_norm.bias", "embed_out.weight"]
    for i in range(num_layers):
        keys += [f"gpt_neox.layers.{i}.{name}" for name in _LAYER_PARAMS]
    return sorted(keys)


def _read_json(path: Path) -> dict[str, Any]:
    """Read a JSON object; raise :class:`ExportError` naming ``path`` when absent or malformed."""
    try:
        return read_json(path, kind=dict)
    except FileNotFoundError:
        raise ExportError(f"{path}: file not found") from None
    except JSONFileError as err:
        raise ExportError(str(err)) from None


def _require(config: dict[str, Any], key: str, source: Path) -> Any:
    if key not in config or config[key] is None:
        raise ExportError(f"{source}: missing required key {key!r}")
    return config[key]


def _eod_token_id(tokenizer: dict[str, Any], source: Path) -> int:
    """Return the id of ``<|endoftext|>`` among the tokenizer's added tokens or vocabulary."""
    for token in tokenizer.get("added_tokens", []):
        if token.get("content") == EOD_TOKEN:
            return int(token["id"])
    vocab = (tokenizer.get("model") or {}).get("vocab") or {}
    if isinstance(vocab, dict) and EOD_TOKEN in vocab:
        return int(vocab[EOD_TOKEN])
    raise ExportError(f"{source}: tokenizer has no {EOD_TOKEN!r} token (Pythia's bos/eos/unk)")


def _rotary_settings(hf_config: dict[str, Any], source: Path) -> tuple[float, float]:
    """Return ``(rotary_pct, rotary_emb_base)`` from a 4.x- or 5.x-style GPTNeoX config dict.

    transformers 5 keeps them in ``rope_parameters`` (``partial_rotary_factor``, ``rope_theta``);
    4.x and Pythia's files use ``rotary_pct`` and ``rotary_emb_base``. Defaults are Pythia's
    (0.25, 10000), as in both transformers versions.
    """
    rope = hf_config.get("rope_parameters") or {}
    if not isinstance(rope, dict):
        raise ExportError(f"{source}: 'rope_parameters' must be an object, got {rope!r}")
    if rope.get("rope_type", "default") != "default":
        raise ExportError(
            f"{source}: rope_parameters.rope_type={rope['rope_type']!r}; Pythia uses 'default'"
        )
    pct = rope.get("partial_rotary_factor", hf_config.get("rotary_pct", 0.25))
    base = rope.get("rope_theta", hf_config.get("rotary_emb_base", 10000))
    return float(pct), base


def pythia_config(
    hf_config: dict[str, Any], eod_token_id: int, dtype: str, *, source: Path | None = None
) -> dict[str, Any]:
    """Return ``config.json`` for an export: Pythia's published fields, written explicitly.

    ``hf_config`` is a ``GPTNeoXConfig`` dict (from either transformers 4.x or 5.x).
    transformers 5 drops ``rotary_pct``/``rotary_emb_base`` and defaults ``eos_token_id`` to 2;
    the published Pythia configs carry them and use token 0 for bos and eos, so they are set
    here rather than inherited. ``rope_parameters`` is left out: transformers 5 rebuilds it from
    ``rotary_pct``/``rotary_emb_base``, and 4.x would keep it as an unknown attribute.

    Raises:
        ExportError: a required field is missing or ``dtype`` is not supported.
    """
    src = source or Path("hf_config")
    if dtype not in _EXPORT_DTYPES:
        raise ExportError(f"dtype={dtype!r} not supported; choose one of {sorted(_EXPORT_DTYPES)}")
    rotary_pct, rotary_emb_base = _rotary_settings(hf_config, src)
    if isinstance(rotary_emb_base, float) and rotary_emb_base.is_integer():
        rotary_emb_base = int(rotary_emb_base)  # Pythia writes 10000, not 10000.0
    config = {
        "architectures": ["GPTNeoXForCausalLM"],
        "attention_bias": bool(hf_config.get("attention_bias", True)),
        "attention_dropout": float(hf_config.get("attention_dropout", 0.0)),
        "bos_token_id": eod_token_id,
        "classifier_dropout": float(hf_config.get("classifier_dropout", 0.1)),
        "dtype": dtype,
        "eos_token_id": eod_token_id,
        "hidden_act": hf_config.get("hidden_act", "gelu"),
        "hidden_dropout": float(hf_config.get("hidden_dropout", 0.0)),
        "hidden_size": int(_require(hf_config, "hidden_size", src)),
        "initializer_range": float(hf_config.get("initializer_range", 0.02)),
        "intermediate_size": int(_require(hf_config, "intermediate_size", src)),
        "layer_norm_eps": float(hf_config.get("layer_norm_eps", 1e-5)),
        "max_position_embeddings": int(_require(hf_config, "max_position_embeddings", src)),
        "model_type": "gpt_neox",
        "num_attention_heads": int(_require(hf_config, "num_attention_heads", src)),
        "num_hidden_layers": int(_require(hf_config, "num_hidden_layers", src)),
        "rotary_emb_base": rotary_emb_base,
        "rotary_pct": rotary_pct,
        "tie_word_embeddings": False,
        "torch_dtype": dtype,  # transformers 4.x reads `torch_dtype`, 5.x reads `dtype`
        "use_cache": True,
        "use_parallel_residual": bool(hf_config.get("use_parallel_residual", True)),
        "vocab_size": int(_require(hf_config, "vocab_size", src)),
    }
    if hf_config.get("tie_word_embeddings"):
        raise ExportError(f"{src}: tie_word_embeddings is true; Pythia's embeddings are untied")
    if config["hidden_size"] % config["num_attention_heads"]:
        raise ExportError(
            f"{src}: hidden_size={config['hidden_size']} is not divisible by "
            f"num_attention_heads={config['num_attention_heads']}"
        )
    return config


def _load_weights(path: Path) -> dict[str, np.ndarray]:
    """Load a checkpoint's tensors, renaming ``lm_head.weight`` to ``embed_out.weight``."""
    if not path.is_file():
        raise ExportError(f"{path}: file not found")
    tensors: dict[str, np.ndarray] = {}
    try:
        with safe_open(str(path), framework="np") as handle:
            for key in handle.keys():
                tensors[_KEY_RENAMES.get(key, key)] = handle.get_tensor(key)
    except Exception as err:  # safetensors raises its own SafetensorError for corrupt files
        raise ExportError(f"{path}: cannot read safetensors file: {err}") from None
    return tensors


def _check_weights(tensors: dict[str, np.ndarray], config: dict[str, Any], path: Path) -> None:
    """Check the tensor names and the shapes that the config determines; name the first misfit."""
    expected = pythia_state_dict_keys(config["num_hidden_layers"])
    missing = sorted(set(expected) - tensors.keys())
    unexpected = sorted(tensors.keys() - set(expected))
    if missing:
        raise ExportError(f"{path}: missing tensor {missing[0]!r} ({len(missing)} missing)")
    if unexpected:
        raise ExportError(f"{path}: unexpected tensor {unexpected[0]!r} ({len(unexpected)} extra)")
    hidden, vocab = config["hidden_size"], config["vocab_size"]
    shapes = {
        "gpt_neox.embed_in.weight": (vocab, hidden),
        "embed_out.weight": (vocab, hidden),
        "gpt_neox.layers.0.attention.query_key_value.weight": (3 * hidden, hidden),
        "gpt_neox.layers.0.mlp.dense_h_to_4h.weight": (config["intermediate_size"], hidden),
    }
    for key, shape in shapes.items():
        if tuple(tensors[key].shape) != shape:
            raise ExportError(
                f"{path}: tensor {key!r} has shape {tuple(tensors[key].shape)}, config says {shape}"
            )
    for key, tensor in tensors.items():
        if not np.issubdtype(tensor.dtype, np.floating):
            raise ExportError(f"{path}: tensor {key!r} has dtype {tensor.dtype}, expected float")


def _save_weights(tensors: dict[str, np.ndarray], path: Path, dtype: str) -> None:
    """Write safetensors with the metadata save_pretrained writes (transformers 4.x checks it).

    numpy has no bfloat16, so that dtype alone goes through torch (imported only then).
    """
    metadata = {"format": "pt"}
    if dtype != "bfloat16":
        from safetensors.numpy import save_file

        save_file(tensors, str(path), metadata=metadata)
        return
    import torch
    from safetensors.torch import save_file

    bf16 = {key: torch.from_numpy(value).to(torch.bfloat16) for key, value in tensors.items()}
    save_file(bf16, str(path), metadata=metadata)


def _tokenizer_files(eod_token: str, model_max_length: int) -> dict[str, dict[str, Any]]:
    """Return ``tokenizer_config.json`` and ``special_tokens_map.json`` contents.

    ``GPTNeoXTokenizerFast`` is what the published Pythia repos need: transformers 5 writes
    ``"TokenizersBackend"``, which 4.x refuses. Both versions build it from ``tokenizer.json``.
    """
    special = {"bos_token": eod_token, "eos_token": eod_token, "unk_token": eod_token}
    tokenizer_config = {
        "add_bos_token": False,
        "add_eos_token": False,
        "add_prefix_space": False,
        **special,
        "clean_up_tokenization_spaces": False,
        "model_max_length": model_max_length,
        "tokenizer_class": "GPTNeoXTokenizerFast",
    }
    return {"tokenizer_config.json": tokenizer_config, "special_tokens_map.json": special}


def _write_json(path: Path, data: dict[str, Any]) -> None:
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def export_checkpoint(
    checkpoint_dir: str | os.PathLike[str],
    tokenizer_json: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    dtype: str = "float16",
) -> Path:
    """Export one training checkpoint as a Hugging Face model directory.

    Args:
        checkpoint_dir: a training checkpoint (``model.safetensors`` + ``hf_config.json``).
        tokenizer_json: the ``tokenizer.json`` the model was trained with; it must contain
            ``<|endoftext|>``, whose id becomes bos/eos.
        out_dir: the directory to create; replaced if it exists. It is written under a temporary
            name beside it and renamed when complete, so a failed export leaves nothing that
            looks like an export.
        dtype: ``"float16"`` (Pythia's published dtype), ``"bfloat16"`` or ``"float32"``.

    Returns:
        ``out_dir`` as a :class:`~pathlib.Path`.

    Raises:
        ExportError: a file is missing or malformed, a config key is missing, a tensor is
            missing, unexpected or mis-shaped (the message names the file and key), or a weight
            overflows ``dtype``.
    """
    checkpoint_dir, out_dir = Path(checkpoint_dir), Path(out_dir)
    tokenizer_json = Path(tokenizer_json)
    config_path = checkpoint_dir / "hf_config.json"
    weights_path = checkpoint_dir / "model.safetensors"

    tokenizer = _read_json(tokenizer_json)
    config = pythia_config(
        _read_json(config_path), _eod_token_id(tokenizer, tokenizer_json), dtype, source=config_path
    )
    tensors = _load_weights(weights_path)
    _check_weights(tensors, config, weights_path)

    target = _EXPORT_DTYPES[dtype]
    cast: dict[str, np.ndarray] = {}
    with np.errstate(over="ignore"):  # overflow is detected below, naming the tensor
        for key in sorted(tensors):
            tensor = np.ascontiguousarray(
                tensors[key].astype(target if target != "bfloat16" else np.float32)
            )
            # fp16 tops out at 65504: an overflowing weight would export silently as inf.
            if not np.isfinite(tensor).all():
                raise ExportError(f"{weights_path}: tensor {key!r} is not finite in {dtype}")
            cast[key] = tensor

    with atomic_directory(out_dir) as tmp:
        # Metadata {"format": "pt"} is what save_pretrained writes and what 4.x checks for.
        _save_weights(cast, tmp / "model.safetensors", dtype)
        _write_json(tmp / "config.json", config)
        generation = {
            "_from_model_config": True,
            "bos_token_id": config["bos_token_id"],
            "eos_token_id": config["eos_token_id"],
        }
        _write_json(tmp / "generation_config.json", generation)
        shutil.copyfile(tokenizer_json, tmp / "tokenizer.json")
        for name, content in _tokenizer_files(EOD_TOKEN, config["max_position_embeddings"]).items():
            _write_json(tmp / name, content)
    return out_dir


# ----------------------------------------------------------------------------- converted weights

_HF_SINGLE_FILES = ("model.safetensors", "pytorch_model.bin")
_HF_INDEX_FILES = ("model.safetensors.index.json", "pytorch_model.bin.index.json")


def hf_weight_files(model_dir: str | os.PathLike[str]) -> list[Path]:
    """The weight files of a Hugging Face model directory, as ``save_pretrained`` writes them:
    one ``model.safetensors`` / ``pytorch_model.bin``, or the shards an index
    (``*.index.json``, key ``weight_map``) names, as large models are saved.

    Raises ``ExportError`` naming the directory when it holds none, or naming the index when it
    is unreadable or names a shard that is missing.
    """
    model_dir = Path(model_dir)
    for name in _HF_SINGLE_FILES:
        if (model_dir / name).is_file():
            return [model_dir / name]
    for name in _HF_INDEX_FILES:
        index = model_dir / name
        if not index.is_file():
            continue
        try:
            weight_map = read_json(index)["weight_map"]
            shards = sorted(set(weight_map.values()))
        except (JSONFileError, KeyError, TypeError, AttributeError) as err:
            raise ExportError(f"{index}: not a weight index ({err})") from None
        for shard in shards:
            if not (model_dir / shard).is_file():
                raise ExportError(f"{index}: shard {shard!r} not found in {model_dir}")
        return [model_dir / shard for shard in shards]
    wanted = ", ".join(_HF_SINGLE_FILES + _HF_INDEX_FILES)
    raise ExportError(f"{model_dir}: no weights ({wanted})")


def load_hf_weights(model_dir: str | os.PathLike[str], framework: str = "np") -> dict[str, Any]:
    """All tensors of a Hugging Face model directory, one file or sharded (``hf_weight_files``).

    ``framework`` is ``"np"`` (numpy arrays) or ``"pt"`` (torch tensors; ``.bin`` files need
    it). Raises ``ExportError`` naming the file for an unreadable file or a tensor that two
    shards both hold.
    """
    tensors: dict[str, Any] = {}
    for path in hf_weight_files(model_dir):
        if path.suffix == ".bin":
            if framework != "pt":
                raise ExportError(f"{path}: a torch pickle; read it with framework='pt'")
            import torch

            try:
                part = torch.load(path, map_location="cpu", weights_only=True)
            except Exception as err:
                raise ExportError(f"{path}: cannot read torch weights: {err}") from None
        else:
            try:
                with safe_open(str(path), framework=framework) as handle:
                    part = {key: handle.get_tensor(key) for key in handle.keys()}
            except Exception as err:
                raise ExportError(f"{path}: cannot read safetensors file: {err}") from None
        for key, tensor in part.items():
            if key in tensors:
                raise ExportError(f"{path}: tensor {key!r} is also in another shard")
            tensors[key] = tensor
    return tensors


def export_checkpoint_with_record(
    checkpoint_dir: str, tokenizer_json: str, out_dir: str, dtype: str
) -> None:
    """``export_checkpoint`` with the export's provenance record (``publish.dtype``, the
    checkpoint and the tokenizer)."""
    from pythia_suite.provenance import Recorder

    out = Path(out_dir)
    inputs = [Path(checkpoint_dir), Path(tokenizer_json)]
    recorder = Recorder(out, "export", {"dtype": dtype}, inputs)
    export_checkpoint(checkpoint_dir, tokenizer_json, out, dtype=dtype)
    recorder.write()
