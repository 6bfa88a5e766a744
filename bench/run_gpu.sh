#!/usr/bin/env bash
# The GPU benchmarks of docs/speed.md, on any machine with a CUDA GPU and this package installed
# (`pip install -e '.[bench,quant]'`: einops for the reference STAB, bitsandbytes for the 8-bit and 4-bit rows).
# From the repository root:
#
#   bash bench/run_gpu.sh                          # runs "main eval memory" into bench/results/NAME*.json
#   RUNS=encode NAME=h100 bash bench/run_gpu.sh    # one run, named as the committed H100 files
#
# Each run is one `videopanda bench` process (times on an H100):
#   main    NAME.json                    sections stab, vit, generate; both LLM shapes, every decoding mode  ~5 min
#   encode  NAME_stab_vit_generate.json  the same sections, the 7B shape and compiled decoding only          ~3 min
#   eval    NAME_eval.json               batched VideoQA answers/s, dynamic and compiled decoding            ~7 min
#   memory  NAME_memory.json             weights and peak memory in bf16, 8-bit and 4-bit                    ~1.5 min
#
# Settings (environment):
#   OUT=DIR            where the JSON files go (default: bench/results)
#   NAME=NAME          file name prefix (default: the GPU's model in lower case, e.g. h100)
#   REFERENCE_DIR=DIR  a folder holding the public reference STAB (vision_tokenizer.py of jh-yi/Video-Panda); its
#                      rows are timed beside ours in the main and encode runs. Without it they are skipped.
#   BENCH_FLAGS="..."  extra `videopanda bench` flags for every run (later flags win), e.g. "--repeats 10"
#   PYTHON=python3     the interpreter that has the package
set -euo pipefail
PYTHON=${PYTHON:-python3}
OUT=${OUT:-bench/results}
if [ -z "${NAME:-}" ]; then
  NAME=$("$PYTHON" -c "import re, torch
words = torch.cuda.get_device_name().replace('NVIDIA', '').split() if torch.cuda.is_available() else []
print(re.sub('[^a-z0-9]', '', words[0].lower()) if words else 'gpu')")
fi
REF=()
if [ -n "${REFERENCE_DIR:-}" ]; then REF=(--reference-dir "$REFERENCE_DIR"); fi
read -r -a EXTRA <<< "${BENCH_FLAGS:-}"
mkdir -p "$OUT"

bench() {
  echo "+ videopanda bench --device cuda $* ${EXTRA[*]:-}" >&2
  "$PYTHON" -m videopanda bench --device cuda --quiet "$@" ${EXTRA[@]+"${EXTRA[@]}"}
}

for run in ${RUNS:-main eval memory}; do
  case $run in
    main) bench --sections stab,vit,generate --llm default-random,7b-random --compile ${REF[@]+"${REF[@]}"} \
            --out "$OUT/$NAME.json" ;;
    encode) bench --sections stab,vit,generate --llm 7b-random --decoding compiled --compile ${REF[@]+"${REF[@]}"} \
              --out "$OUT/${NAME}_stab_vit_generate.json" ;;
    eval) bench --sections eval --llm default-random,7b-random --eval-decoding dynamic,compiled \
            --out "$OUT/${NAME}_eval.json" ;;
    memory) bench --sections memory --llm default-random,7b-random --out "$OUT/${NAME}_memory.json" ;;
    *) echo "unknown run '$run': main, encode, eval, memory" >&2; exit 2 ;;
  esac
done
