#!/usr/bin/env bash
# Session 3 on the lent H100 (through the `device` tool): default model version 3. Version 2's STAB + projector AND
# a new rank-16 LoRA on the LLM (stacked onto version 1's in the shipped file) continue on the wide synthetic stream
# with shading, more backgrounds, rotations, photometric jitter and fourteen wordings per family (synth:5:wide).
# Then the held-out narrow and wide stream splits. Carries .whl/; the GGUF parts come first (bench/device_env.sh).
set -euo pipefail
STEPS=${STEPS:-700}
MINUTES=${MINUTES:-6.5}
source bench/device_env.sh
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader | tee $OUT/device.txt
python3 -c "import torch, transformers; print(torch.__version__, transformers.__version__)" | tee -a $OUT/device.txt
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
# The 29 MB LoRA file is over what one device call returns per file: split it (cat lora.part.* on the way back).
split -b 9000000 $R/lora.safetensors $R/lora.part. && md5sum $R/lora.safetensors > $R/lora.md5 && rm $R/lora.safetensors
# The independent-renderer check (bench/alt_synth) needs PyAV, which the device image lacks: it runs on the CPU
# afterwards, with these weights (bench/alt_synth/README.md, "How to run").
