#!/usr/bin/env bash
# Set up and run the tests. As root (CI) it also installs graphviz and chromium (the progress
# page's browser test) and starts the local two-node SLURM cluster (scripts/slurm-cluster.sh),
# so those tests run instead of skipping. Extra arguments go to pytest (e.g. -m "not slow").
# Two pytest-xdist workers (PYTEST_WORKERS=0: none), one test file or the SLURM tests to a worker
# at a time (tests/conftest.py): the SLURM tests mostly wait on the cluster, the others compute.
# The 30 slowest tests and set-ups are listed at the end (--durations=30): where CI's time goes.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# shellcheck disable=SC1091
. .venv/bin/activate
if [ "$(id -u)" = 0 ]; then
  missing=()
  command -v dot >/dev/null || missing+=(graphviz)
  command -v chromium >/dev/null || missing+=(chromium)
  if [ "${#missing[@]}" -gt 0 ]; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  fi
  bash scripts/slurm-cluster.sh start
fi
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
ruff check src tests benchmarks scripts
python -m pytest -n "${PYTEST_WORKERS:-2}" --dist loadfile --no-loadscope-reorder \
  --durations=30 "$@"
