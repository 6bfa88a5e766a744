# Sourced by the device scripts that time the package (device_probe.sh, device_decode_ab.sh): installs the carried
# wheels (.xfer/wheels, e.g. transformers) into /tmp/site and exports the environment the runs share.
SITE=/tmp/site
mkdir -p $SITE
if compgen -G ".xfer/wheels/*.whl" > /dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target $SITE .xfer/wheels/*.whl
fi
export PYTHONPATH=$SITE:$PWD HF_HUB_OFFLINE=1 VIDEOPANDA_CACHE=/tmp/vpcache PYTHONUNBUFFERED=1
export TORCHINDUCTOR_CACHE_DIR=/tmp/inductor
