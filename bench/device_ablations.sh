#!/usr/bin/env bash
# Session 3 on the lent H100: the STAB ablations with an equal budget (bench/ablations.py). Every variant trains the
# same number of steps (STEPS) on the same data; the wall-clock cap (--max-minutes) is a safety net only, and a
# variant that hits it is reported with its step count. VARIANTS picks which run in this call (the five do not fit
# one 10-minute call). Carries .whl/; the GGUF parts come first (bench/device_env.sh).
set -euo pipefail
STEPS=${STEPS:-1200}
VARIANTS=${VARIANTS:-full,no_gstra,no_lste}
source bench/device_env.sh
export PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True
python3 bench/ablations.py --out /tmp/abl --variants "$VARIANTS" --steps "$STEPS" --max-minutes "${MINUTES:-8.2}" \
  --batch-size 32 --workers 4 --eval-n 400 > $OUT/ablations_stdout.txt 2>&1 || true
cp /tmp/abl/ablations.json /tmp/abl/ablations.md $OUT/
cat /tmp/abl/ablations.md 2>/dev/null || tail -20 $OUT/ablations_stdout.txt
