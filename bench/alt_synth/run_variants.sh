#!/usr/bin/env bash
# Controlled variations: the 60 scenes and questions of the main set (seed 7, 3 questions per clip), rendered
# synth.py-like (preset synthlike) except for one group of factors at its alt_synth distribution. Captions and
# (for most groups) appearance are left out to keep each CPU run to a few minutes.
#   bash bench/alt_synth/run_variants.sh /tmp/vp_head      # SRC: exported videopanda to run (git archive HEAD ...)
set -euo pipefail
SRC=${1:-$(pwd)}
cd "$(dirname "$0")/../.."
gen() { python3 bench/alt_synth/generate.py --n 60 --seed 7 --per-clip 3 --preset synthlike "$@" >/dev/null; }
ev() { python3 bench/alt_synth/evaluate.py --src "$SRC" "$@" 2>&1 | tail -3; }
FAM=colour,shape,count,direction,order
declare -A SETS=(
  [pose]="--set pose=alt"
  [res_timing]="--set res=alt --set timing=alt"
  [size_travel]="--set size=alt --set travel=alt"
  [background_noise_crf]="--set background=alt --set noise=alt --set crf=alt"
  [palette_outline_shading]="--set palette=alt --set outline=alt --set shading=alt"
)
for name in ${VARIANTS:-pose res_timing size_travel background_noise_crf palette_outline_shading}; do
  fams=$FAM; [ "$name" = pose ] && fams=colour,shape,order
  # shellcheck disable=SC2086
  gen --out /tmp/alt_var_$name ${SETS[$name]}
  ev --data /tmp/alt_var_$name --out bench/results/alt_synth/variants/$name --families $fams \
     --title "synthlike + alt $name (same scenes and questions as main)"
done
