#!/usr/bin/env bash
# On the lent H100: bench/floor_probe.py at 8 videos, with inductor's CUTLASS backend tried from the nvidia-cutlass
# wheel carried in .xfer/wheels (its headers and Python packages laid out as the CUTLASS tree inductor expects).
#   run(command="bash bench/device_floor.sh", carry=[".xfer/wheels"], timeout_s=600)   (CUTLASS=0: skip CUTLASS)
set -uo pipefail
source bench/device_wheels.sh
CUTLASS_ARGS=()
if [ "${CUTLASS:-1}" = 1 ] && [ -d $SITE/cutlass_library/source/include ]; then
  root=/tmp/cutlass_tree
  mkdir -p $root/python
  for pkg in cutlass_library cutlass_cppgen pycute; do ln -sfn $SITE/$pkg $root/python/$pkg; done
  ln -sfn $SITE/cutlass_library/source/include $root/include
  ln -sfn $SITE/cutlass_library/source/tools $root/tools
  export PATH=/usr/local/cuda/bin:$PATH CUDA_HOME=${CUDA_HOME:-/usr/local/cuda}
  CUTLASS_ARGS=(--cutlass-dir $root)
fi
timeout 560 python3 bench/floor_probe.py --videos "${VIDEOS:-8}" ${FLOOR_ARGS:-} --out $OUT/floor.json "${CUTLASS_ARGS[@]}" 2>&1 | tail -40
