#!/usr/bin/env bash
# On the lent H100: one call that runs the probes given in PROBES (default: stab, gemm), writing JSON under $OUT.
#   run(command="bash bench/device_probe.sh", carry=[".xfer/wheels"], timeout_s=600)
# stab: bench/speed_probe.py's STAB section with STAB_VARIANTS and extra STAB_ARGS (kernel table at 8 videos);
# gemm: bench/gemm_probe.py (Triton GEMMs with fused epilogues against cuBLAS + inductor), GEMM_BUDGET seconds.
set -uo pipefail
source bench/device_wheels.sh
STAB_VARIANTS=${STAB_VARIANTS:-triton-lsd-graph,plainpool-lsd-graph,graphed-encoder}
for probe in ${PROBES:-stab gemm}; do
  case $probe in
    stab) timeout 400 python3 bench/speed_probe.py --sections stab --table --skip-dpe --stab-batches 1,8 ${STAB_ARGS:-} \
            --stab-variants "$STAB_VARIANTS" --out $OUT/stab_probe.json 2>&1 | grep -v "'all'" | tail -20 ;;
    gemm) timeout 280 python3 bench/gemm_probe.py --budget-s "${GEMM_BUDGET:-150}" --out $OUT/gemm_probe.json \
            2>&1 | tail -30 ;;
  esac
done
