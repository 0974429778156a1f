#!/usr/bin/env bash
# The prepared accelerator check: one script, under 8 minutes on a fresh single-GPU machine with
# no network. Wheels travel in .whl/ (see the device tool's README: pip download them here for the
# device's Python, name .whl in `carry`); without .whl/ the current environment is used.
#   1. the parallel-equivalence, model and sampling tests on the GPU
#   2. shakespeare_char and a full-size gpt2_124m step (bf16, cuDNN attention): tokens/s and MFU
#   3. a JSON summary in $OUT (or ./device_check_out)
# Usage: bash tools/device_check.sh            (LM_DEVICE_CHECK_SMOKE=1: tiny configs, any machine)
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-./device_check_out}
mkdir -p "$OUT"
start=$(date +%s)
if [ -d .whl ] && ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
      --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site:$PWD
else
  export PYTHONPATH=$PWD
fi
export PYTHONUNBUFFERED=1 LM_DATA_DIR=${LM_DATA_DIR:-$PWD/../shared/data}
python3 -c "import jax; print('jax', jax.__version__, jax.devices())" | tee "$OUT/devices.txt"
smoke=()
[ "${LM_DEVICE_CHECK_SMOKE:-0}" = 1 ] && smoke=(--smoke)
# 1. tests: the equivalence tests run on the accelerator's one device against the 8 host devices
#    they simulate; model and sampling tests on the accelerator
tests_rc=0
if [ "${LM_DEVICE_CHECK_SMOKE:-0}" != 1 ]; then
  timeout 240 python3 -m pytest -q -x tests/test_parallel.py tests/test_model.py \
      tests/test_sampling.py -p no:cacheprovider 2>&1 | tail -5 | tee "$OUT/tests.txt"
  tests_rc=${PIPESTATUS[0]}
fi
# 2. timings
timeout 300 python3 -m tools.device_check "${smoke[@]}" --out "$OUT/device_check.json" \
    2>&1 | tee "$OUT/timings.txt"
timing_rc=${PIPESTATUS[0]}
end=$(date +%s)
python3 - "$OUT" "$tests_rc" "$timing_rc" "$((end - start))" <<'PY'
import json, sys
out, tests_rc, timing_rc, secs = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
try:
    d = json.load(open(f"{out}/device_check.json"))
except OSError:
    d = {"results": []}
d.update(tests_rc=tests_rc, timing_rc=timing_rc, seconds=secs)
json.dump(d, open(f"{out}/device_check.json", "w"), indent=2)
for r in d["results"]:
    mfu = f"{100 * r['mfu']:.1f}%" if r.get("mfu") is not None else "n/a"
    print(f"{r['config']:18s} {r['device_kind']:24s} {r['tokens_per_s']:>12,.0f} tok/s  MFU {mfu}")
print(f"tests rc {tests_rc}, timings rc {timing_rc}, {secs} s")
PY
[ "$tests_rc" = 0 ] && [ "$timing_rc" = 0 ]
