#!/usr/bin/env bash
# Check that an export made by pythia_suite.export loads in transformers 4.x (Pythia's users).
#
# Installs transformers 4.57.1 (+ the tokenizers and huggingface_hub it requires) into a
# throwaway --target directory, reusing the project venv's torch, exports a tiny model with the
# project's code (transformers 5), then loads model and tokenizer with 4.x and compares logits
# with the fp32 model. Run from the repo root with the venv active:
#   bash benchmarks/check_transformers4.sh
set -euo pipefail

work=$(mktemp -d /tmp/check_tf4.XXXXXX)
trap 'rm -rf "$work"' EXIT
pip install -q --target "$work/site" --no-deps \
  transformers==4.57.1 tokenizers==0.22.1 huggingface_hub==0.36.0

# 1) with transformers 5: a tiny checkpoint, its fp32 logits, and the export.
python - "$work" <<'EOF'
import json, sys, torch
from pathlib import Path
from safetensors.torch import save_file
from tokenizers import Tokenizer, models, pre_tokenizers, trainers, decoders
from transformers import GPTNeoXConfig, GPTNeoXForCausalLM
from pythia_suite.export import export_checkpoint

work = Path(sys.argv[1])
tok = Tokenizer(models.BPE())
tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
tok.decoder = decoders.ByteLevel()
trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=["<|endoftext|>", "<|padding|>"],
                              initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
tok.train_from_iterator(["hello transformers four world " * 40], trainer)
tok.save(str(work / "tokenizer.json"))
torch.manual_seed(0)
config = GPTNeoXConfig(vocab_size=320, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                       intermediate_size=128, rotary_pct=0.5, max_position_embeddings=64)
model = GPTNeoXForCausalLM(config).eval()
(work / "ck").mkdir()
state = {k: v.contiguous() for k, v in model.state_dict().items()}
state["embed_out.weight"] = state.pop("lm_head.weight")
save_file(state, str(work / "ck" / "model.safetensors"))
(work / "ck" / "hf_config.json").write_text(json.dumps(config.to_dict()))
export_checkpoint(work / "ck", work / "tokenizer.json", work / "export")
ids = torch.arange(20).unsqueeze(0)
with torch.no_grad():
    torch.save({"ids": ids, "logits": model(ids).logits}, work / "expected.pt")
print("exported with transformers 5")
EOF

# 2) with transformers 4.57: load the export, compare.
PYTHONPATH="$work/site" python - "$work" <<'EOF'
import sys, torch, transformers
from pathlib import Path
from transformers import AutoTokenizer, AutoModelForCausalLM

work = Path(sys.argv[1])
assert transformers.__version__.startswith("4."), transformers.__version__
model = AutoModelForCausalLM.from_pretrained(work / "export", torch_dtype=torch.float32).eval()
tok = AutoTokenizer.from_pretrained(work / "export")
expected = torch.load(work / "expected.pt")
with torch.no_grad():
    logits = model(expected["ids"]).logits
err = (logits - expected["logits"]).abs().max().item()
print(f"transformers {transformers.__version__}: {type(model).__name__}, {type(tok).__name__}, "
      f"rotary_pct={model.config.rotary_pct}, eos={model.config.eos_token_id}, "
      f"max |logit diff| vs fp32 = {err:.2e}")
assert type(tok).__name__ == "GPTNeoXTokenizerFast"
assert model.config.rotary_pct == 0.5 and model.config.eos_token_id == 0
assert err < 5e-3, err
text = "hello world<|endoftext|>"
assert tok.decode(tok(text).input_ids) == text
print("OK: the export loads in transformers 4.x")
EOF
