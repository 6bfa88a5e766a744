#!/usr/bin/env bash
# On the lent H100: the decode kernels (modeling/decode_kernels.py) against the library's calls, in one call.
#   run(command="bash bench/device_decode_ab.sh", carry=[".xfer/wheels"], timeout_s=600)
# 1. bench/decode_probe.py (the kernels alone, 32 layers as CUDA graphs; SKIP_PROBE=1 skips it); 2. the 7B-shaped compiled 64-token answer
# (`videopanda bench --sections generate`) with the kernels, then with decode_kernels.IMPL = "torch".
set -euo pipefail
source bench/device_wheels.sh
if [ -z "${SKIP_PROBE:-}" ]; then
  python3 bench/decode_probe.py --out $OUT/decode_probe.json 2>&1 | grep -v "'all'" | tail -30
fi
ARGS=(--device cuda --sections generate --llm 7b-random --decoding compiled --quiet)
timeout 250 python3 -m videopanda bench "${ARGS[@]}" --out $OUT/generate_kernels.json 2>&1 | tail -5
timeout 250 python3 -c "import sys
from videopanda.modeling import decode_kernels
from videopanda.bench import main
decode_kernels.IMPL = 'torch'
sys.exit(main(sys.argv[1:]))" "${ARGS[@]}" --out $OUT/generate_library.json 2>&1 | tail -5
