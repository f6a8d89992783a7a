#!/usr/bin/env bash
# The miniature suite end to end on this machine's CPUs: data, dedup, tokenizer, training of
# 2 tiny sizes x {standard, deduped}, export, local hub, lm-eval, report. Outputs in results-mini/.
# Extra arguments go to snakemake (e.g. --cores 4, or a target).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# shellcheck disable=SC1091
. .venv/bin/activate
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
snakemake --profile profiles/local "$@"
echo "The miniature suite is in results-mini/. After '. .venv/bin/activate', 'pythia-suite status'"
echo "and the README's other pythia-suite commands show it (they read results-mini/config/effective.yaml)."
