#!/usr/bin/env bash
# After envs/gpt-neox.yaml: GPT-NeoX v1.0 checked out at NEOX_DIR, DeeperSpeed v1.0 and flash-attn
# installed, GPT-NeoX's fused kernels built. Run with the env active (conda run -p ENV ...).
# Sources of the pins: the header of envs/gpt-neox.yaml. Idempotent; stops at the first failure.
set -euo pipefail

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

python -m pip install "git+https://github.com/EleutherAI/DeeperSpeed.git@${DEEPERSPEED_COMMIT}#egg=deepspeed"
python -m pip install --no-build-isolation "flash-attn==${FLASH_ATTN}"
# v1.0's Dockerfile: `python megatron/fused_kernels/setup.py install` (sm_70 and sm_80 kernels).
(cd "$NEOX_DIR" && python megatron/fused_kernels/setup.py install)

echo "GPT-NeoX v1.0 at $NEOX_DIR; set training.neox.dir to it and training.neox.python to $(command -v python)"
echo "then check: pythia-suite neox-doctor --neox-dir $NEOX_DIR --python $(command -v python)"
