#!/usr/bin/env bash
# After envs/gpt-neox.yaml: GPT-NeoX v1.0 checked out at NEOX_DIR, DeeperSpeed v1.0 and flash-attn
# installed, GPT-NeoX's fused kernels built. Run with the env active (conda run -p ENV ...).
# Sources of the pins: the header of envs/gpt-neox.yaml. Idempotent; stops at the first failure.
#
# `bash envs/gpt-neox.post-deploy.sh --patch-converter FILE` only patches FILE (a copy of v1.0's
# tools/convert_to_hf.py) as below, and exits: the tests apply it to the upstream file.
set -euo pipefail

# v1.0's tools/convert_to_hf.py, patched in place (idempotent; fails if a patch does not apply):
# 1. `) -> list[torch.Tensor]:` is evaluated when the function is defined, and Python 3.8 raises
#    TypeError ('type' object is not subscriptable): every conversion would fail (the pythia
#    README says to patch it).
# 2. It sums RowParallelLinear's biases (attention.dense, mlp.dense_4h_to_h) over tensor-parallel
#    ranks, but v1.0 keeps that bias whole on every rank (megatron/mpu/layers.py: "bias is not
#    parallelized"): at model-parallel-size 2 and 4 (6.9b, 12b) the converted biases would be
#    2x and 4x. Divide by the number of ranks.
patch_converter() {
    local file=$1
    sed -i \
        -e 's/^) -> list\[torch\.Tensor\]:$/):  # pythia-suite: no list[...] annotation (Python 3.8)/' \
        -e 's/^\(            state_dict\[key\] = sum(\[t\[key\] for t in loaded_tp_ranks\])\)$/\1 \/ len(loaded_tp_ranks)  # pythia-suite: whole bias on every rank/' \
        "$file"
    if grep -q 'list\[torch\.Tensor\]' "$file" || [ "$(grep -c '# pythia-suite:' "$file")" != 2 ]; then
        echo "gpt-neox.post-deploy: could not patch $file (not v1.0's convert_to_hf.py?)" >&2
        return 1
    fi
}

if [ "${1:-}" = "--patch-converter" ]; then
    patch_converter "${2:?usage: --patch-converter FILE}"
    exit 0
fi

NEOX_COMMIT=71df4d5017f9f4919566a11454fe3a507ffdc632        # GPT-NeoX tag v1.0
DEEPERSPEED_COMMIT=7069d10d2c9abac50576c84cb7e45910fafa218c  # DeeperSpeed tag v1.0 (SLURM runner)
FLASH_ATTN=0.2.2                                             # v1.0 requirements-flashattention.txt
NEOX_DIR=${NEOX_DIR:-${CONDA_PREFIX:?activate the env or set NEOX_DIR}/gpt-neox}

if [ ! -d "$NEOX_DIR/.git" ]; then
    git clone https://github.com/EleutherAI/gpt-neox.git "$NEOX_DIR"
fi
git -C "$NEOX_DIR" fetch --tags origin
git -C "$NEOX_DIR" checkout --detach "$NEOX_COMMIT"
head=$(git -C "$NEOX_DIR" rev-parse HEAD)
if [ "$head" != "$NEOX_COMMIT" ]; then
    echo "gpt-neox.post-deploy: $NEOX_DIR is at $head, expected $NEOX_COMMIT" >&2
    exit 1
fi

patch_converter "$NEOX_DIR/tools/convert_to_hf.py"

python -m pip install "git+https://github.com/EleutherAI/DeeperSpeed.git@${DEEPERSPEED_COMMIT}#egg=deepspeed"
python -m pip install --no-build-isolation "flash-attn==${FLASH_ATTN}"
# v1.0's Dockerfile: `python megatron/fused_kernels/setup.py install` (sm_70 and sm_80 kernels).
(cd "$NEOX_DIR" && python megatron/fused_kernels/setup.py install)

echo "GPT-NeoX v1.0 at $NEOX_DIR; set training.neox.dir to it and training.neox.python to $(command -v python)"
echo "then check: pythia-suite neox-doctor --neox-dir $NEOX_DIR --python $(command -v python)"
