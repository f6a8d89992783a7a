#!/usr/bin/env bash
# neox-doctor on this machine, against a real GPT-NeoX v1.0 checkout: what it says is missing and
# its exit status (the figure for issue 11). NEOX_SRC: where to clone GPT-NeoX from (default
# GitHub; any clone with tag v1.0 works offline); NEOX_PYTHON: the Python GPT-NeoX would run with
# (default: this one).
#   bash benchmarks/neox_doctor.sh
set -uo pipefail
NEOX_SRC=${NEOX_SRC:-https://github.com/EleutherAI/gpt-neox.git}
NEOX_PYTHON=${NEOX_PYTHON:-$(command -v python)}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
git clone -q "$NEOX_SRC" "$work/gpt-neox" && git -C "$work/gpt-neox" checkout -q --detach v1.0 || exit 2
echo "\$ pythia-suite neox-doctor --neox-dir <clone at v1.0> --python $NEOX_PYTHON"
pythia-suite neox-doctor --neox-dir "$work/gpt-neox" --python "$NEOX_PYTHON" 2>&1 \
    | sed "s#$work#<tmp>#g"
echo "exit status: ${PIPESTATUS[0]}"
