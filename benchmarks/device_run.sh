#!/usr/bin/env bash
# The device suite (benchmarks/device_suite.py) on the device machine, in one call.
#
# Here, once:   bash /work/shared/device/fetch-wheels.sh      # diffusers etc. into ./.whl
# Then, with the device tool (tables come back under the call's files_at):
#   run(command="bash benchmarks/device_run.sh", carry=[".whl"], timeout_s=560)
#
# It installs the carried pure-Python wheels (as fetch-wheels.sh prints), runs the suite
# under a time limit (SUITE_LIMIT_S, default 500 s; no section starts after SUITE_BUDGET_S,
# default 420 s) and leaves device_suite.md, device_suite.json and device_suite.log in $OUT.
# Without .whl the suite still runs; its diffusers table says it was skipped.
set -uo pipefail
OUT=${OUT:-/tmp/device_suite_out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 TF_CPP_MIN_LOG_LEVEL=3
# JAX takes 60% of the GPU, so PyTorch (the diffusers table) has room beside it
export XLA_PYTHON_CLIENT_MEM_FRACTION=${XLA_PYTHON_CLIENT_MEM_FRACTION:-0.6}
PY=${PYTHON:-python3}
if compgen -G ".whl/*.whl" > /dev/null; then
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl || echo "warning: the wheels did not all install"
  export PYTHONPATH=/tmp/site:$PWD
else
  echo "note: no .whl folder carried (run fetch-wheels.sh here first): diffusers is skipped"
  export PYTHONPATH=$PWD
fi
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
  $PY -c "import jax; print('jax', jax.__version__, jax.devices())"; } 2>&1 | tee "$OUT/device_suite.log"
timeout "${SUITE_LIMIT_S:-500}" $PY benchmarks/device_suite.py --out "$OUT" \
  --budget-s "${SUITE_BUDGET_S:-420}" "$@" 2>&1 | tee -a "$OUT/device_suite.log"
rc=${PIPESTATUS[0]}
[ "$rc" = 124 ] && echo "the suite hit its ${SUITE_LIMIT_S:-500} s limit: the tables hold what finished" | tee -a "$OUT/device_suite.log"
exit "$rc"
