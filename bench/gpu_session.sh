#!/usr/bin/env bash
# Everything that needs an NVIDIA GPU, in one go: the tests marked `gpu`, then the GPU benchmarks.
# Made for a GPU machine without a network (the wheels jitorch needs and the machine lacks travel in
# .whl/), run from the repository root:
#
#     OUT=/tmp/gpu-results bash bench/gpu_session.sh [all|tests|bench]   # OUT may come from the runner
#
# Logs and result pages land in $OUT; the last lines printed are a short summary. Benchmarks
# write their pages to $OUT (copy a full run's pages into bench/results/ to record them).
set -uo pipefail
cd "$(dirname "$0")/.."
PHASE=${1:-all}
OUT=${OUT:-/tmp/jitorch-gpu}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 TRITON_DEFAULT_FP_FUSION=1

if ls .whl/*.whl >/dev/null 2>&1; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
        && export PYTHONPATH=/tmp/site
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"

{
    date -u
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
    python3 - <<'EOF'
import cupy, numpy, torch, triton
import jitorch
print("python", __import__("sys").version.split()[0], "numpy", numpy.__version__, "cupy", cupy.__version__,
      "torch", torch.__version__, "triton", triton.__version__)
print("jitorch.cuda.is_available():", jitorch.cuda.is_available(), "|", jitorch.cuda.get_device_name())
EOF
} 2>&1 | tee "$OUT/environment.txt"

status=0
if [ "$PHASE" != bench ]; then
    python3 -m pytest -q -m gpu -p no:cacheprovider -o addopts="" -rs tests 2>&1 | tee "$OUT/gpu_tests.log" | tail -40
    [ "${PIPESTATUS[0]}" -eq 0 ] || status=1
fi

[ "$PHASE" = tests ] || for bench in "eager.py --device cuda --out $OUT/eager_cuda.md" "train.py --device cuda --out $OUT/train_cuda.md"; do
    echo "== bench/$bench"
    # shellcheck disable=SC2086
    timeout 240 python3 bench/$bench > "$OUT/$(echo "$bench" | cut -d. -f1)_cuda.log" 2>&1 || status=1
    tail -25 "$OUT/$(echo "$bench" | cut -d. -f1)_cuda.log"
done

echo "== summary"
[ "$PHASE" = bench ] || grep -E "passed|failed|error" "$OUT/gpu_tests.log" | tail -1
exit $status
