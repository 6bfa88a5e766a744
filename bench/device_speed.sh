#!/usr/bin/env bash
# Speed benchmarks on the lent H100 (run through the `device` tool from the repo root; docs/speed.md explains the
# numbers). One command, about 5-8 minutes: STAB (ours eager/fused/compiled beside the public reference STAB, batch
# 1/8/32), the ViT-L/14 anchor, generation with the default-shaped and the 7B-shaped LLM (dynamic cache, static
# cache, static cache + compiled CUDA-graph decoding), batched VideoQA answers/s, and memory (bf16, 8-bit, 4-bit).
#
# What it needs in .xfer/ (git-excluded; carry [".xfer/wheels", ".xfer/bnb", ".xfer/reference"], not the whole
# .xfer, which may hold other transfers), made on the dev machine:
#   .xfer/wheels/transformers-5.23.0-py3-none-any.whl   python3 -m pip download --no-deps --only-binary=:all: \
#                                                         --python-version 3.12 -d .xfer/wheels transformers==5.23.0
#   .xfer/bnb/{bitsandbytes,bitsandbytes-*.dist-info}    the bitsandbytes 0.50.2 wheel unpacked, keeping only
#                                                         libbitsandbytes_cuda130.so and _cpu.so (4.5 MB, not 43 MB)
#   .xfer/reference/vision_tokenizer.py                  jh-yi/Video-Panda @ 995a737, never committed
# Each is optional: without the wheel the image's transformers (5.17; untested with this code) is used, without
# bitsandbytes the 8/4-bit rows are skipped, without the reference its rows are skipped. The JSON lands in
# $OUT/h100.json (copy it to bench/results/h100.json) with the log beside it.
set -euo pipefail
SITE=/tmp/site
mkdir -p $SITE
if compgen -G ".xfer/wheels/*.whl" > /dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target $SITE .xfer/wheels/*.whl
fi
if [ -d .xfer/bnb/bitsandbytes ]; then cp -r .xfer/bnb/* $SITE/; fi
REF=()
if [ -f .xfer/reference/vision_tokenizer.py ]; then REF=(--reference-dir .xfer/reference); fi
export PYTHONPATH=$SITE:$PWD HF_HUB_OFFLINE=1 VIDEOPANDA_CACHE=/tmp/vpcache PYTHONUNBUFFERED=1
export TORCHINDUCTOR_CACHE_DIR=/tmp/inductor
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee $OUT/device.txt
python3 -c "import torch, transformers; print(torch.__version__, transformers.__version__)" | tee -a $OUT/device.txt
python3 -m videopanda bench --device cuda --llm default-random,7b-random --compile "${REF[@]}" \
  --out $OUT/h100.json --quiet "$@" 2>&1 | tee $OUT/h100.log
