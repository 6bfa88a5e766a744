#!/usr/bin/env bash
# Session 7: which earlier section makes the 7B compiled answer fail with "CUDA error: unspecified launch failure"
# (`bench/device_speed.sh --sections stab,vit,generate --llm 7b-random --decoding compiled` failed so in sessions 6
# and 7; generate alone passes). Each case runs in its own process; the JSON of each lands in $OUT/<case>.json and its
# log in $OUT/<case>.log. Usage (GPU, from the repo root; carry .xfer/wheels and .xfer/reference):
#   bash bench/device_fault_bisect.sh [case ...]     cases: stab-generate vit-generate nocompile all
set -uo pipefail
SITE=/tmp/site
mkdir -p $SITE
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target $SITE .xfer/wheels/*.whl
export PYTHONPATH=$SITE:$PWD HF_HUB_OFFLINE=1 VIDEOPANDA_CACHE=/tmp/vpcache PYTHONUNBUFFERED=1
export TORCHINDUCTOR_CACHE_DIR=/tmp/inductor
COMMON=(--device cuda --llm 7b-random --decoding compiled --reference-dir .xfer/reference --quiet)
for case in "${@:-stab-generate vit-generate nocompile}"; do
  for c in $case; do
    case $c in
      stab-generate) flags=(--sections stab,generate --compile) ;;
      vit-generate) flags=(--sections vit,generate --compile) ;;
      nocompile) flags=(--sections stab,vit,generate) ;;  # no compiled STAB rows (ours-graph, GraphedEncoder)
      all) flags=(--sections stab,vit,generate --compile) ;;
      *) echo "unknown case $c"; exit 2 ;;
    esac
    start=$(date +%s)
    timeout 280 python3 -m videopanda bench "${COMMON[@]}" "${flags[@]}" --out $OUT/$c.json > $OUT/$c.log 2>&1
    echo "$c: rc=$? $(( $(date +%s) - start ))s; generate: $(grep -h -E 'generate 7b|device unusable' $OUT/$c.log | head -2)"
  done
done
