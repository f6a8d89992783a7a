#!/usr/bin/env bash
# Install pythia-suite (this repository, the working directory of the snakemake run) into the env.
set -euo pipefail
python -m pip install --no-deps --editable "${PYTHIA_SUITE_ROOT:-.}"
