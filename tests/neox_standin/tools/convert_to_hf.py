"""Stand-in for GPT-NeoX v1.0's tools/convert_to_hf.py (tests only), same arguments and mapping
(model-parallel size 1): reads the layer files, loads them into a GPTNeoXForCausalLM made
``.half()`` as v1.0 does, and saves it with ``save_pretrained`` in shards (an index plus
several files, as large models convert), so the workflow must read sharded weights."""

import argparse
import sys
from pathlib import Path

import torch
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from standin import LAYER_KEYS, get, hf_config, log_call, output_layer_key  # noqa: E402


def main() -> int:
    log_call("convert_to_hf.py")
    parser = argparse.ArgumentParser()
    parser.add_argument("--input_dir", required=True)
    parser.add_argument("--config_file", required=True)
    parser.add_argument("--output_dir", required=True)
    args = parser.parse_args()
    config = yaml.safe_load(open(args.config_file))
    src = Path(args.input_dir)

    def load(index: int) -> dict:
        return torch.load(src / f"layer_{index:02}-model_00-model_states.pt", weights_only=True)

    from transformers import GPTNeoXForCausalLM

    embed = load(0)["word_embeddings.weight"]
    model = GPTNeoXForCausalLM(hf_config(config, embed.shape[0])).half()
    layers = get(config, "num-layers")
    state = {"gpt_neox.embed_in.weight": embed}
    for i in range(layers):
        part = load(i + 2)
        state.update({f"gpt_neox.layers.{i}.{key}": part[key] for key in LAYER_KEYS})
    norm = load(layers + 3)
    state["gpt_neox.final_layer_norm.weight"] = norm["norm.weight"]
    state["gpt_neox.final_layer_norm.bias"] = norm["norm.bias"]
    state[output_layer_key(model.state_dict())] = load(layers + 4)["final_linear.weight"]
    missing, unexpected = model.load_state_dict(state, strict=False)
    if unexpected or any(
        "inv_freq" not in k and "masked_bias" not in k and not k.endswith(".attention.bias")
        for k in missing
    ):
        sys.exit(f"conversion mismatch: missing {missing}, unexpected {unexpected}")
    model.save_pretrained(args.output_dir, max_shard_size="100KB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
