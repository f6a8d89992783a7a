#!/usr/bin/env bash
# Create .venv (if missing) and install pythia-suite with its pinned dependencies into it.
# PYTHON picks the interpreter (default python3, 3.11+). torch is pinned to 2.13.0: a looser
# spec would download a multi-GB CUDA build where the CPU wheel is not available locally.
set -euo pipefail
cd "$(dirname "$0")/.."
python=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$python" -m venv .venv
fi
# shellcheck disable=SC1091
. .venv/bin/activate
stamp=.venv/.pythia-suite-installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  # Byte-compile on all cores afterwards rather than in pip's single process: ~45 s instead
  # of ~85 s here. Not left to first import: PYTHONDONTWRITEBYTECODE may be set, and
  # then every job would compile torch and transformers again (~20 s each).
  python -m pip install --quiet --disable-pip-version-check --no-compile -e ".[test]"
  # Some packages ship files that do not compile (pip skips them the same way).
  python -m compileall -q -j 0 "$(python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')" \
    > /dev/null || true
  touch "$stamp"
fi
