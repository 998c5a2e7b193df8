#!/usr/bin/env bash
# Everything that needs an NVIDIA GPU, in one go: the tests marked `gpu`, then the GPU benchmarks.
# Made for a GPU machine without a network (the wheels jitorch needs and the machine lacks travel in
# .whl/), run from the repository root:
#
#     OUT=/tmp/gpu-results bash bench/gpu_session.sh [PHASE ...]   # OUT may come from the runner
#
# Phases, in the order given (default: all of them but profile and tests-new): tests (the tests
# marked gpu), tests-new (those of the newest parts and the op harness's cases near them),
# eager (bench/eager.py), fusion (bench/fusion.py), train-highest and train-high (bench/train.py at
# one float32 matmul precision each: a full run takes both), gpt-highest and gpt-high (its GPT-sized
# row alone), amp-bf16 (char_lm and GPT-sized steps under bfloat16 autocast), first-call (what
# building the GPT-sized step's runners costs under bfloat16 autocast, one short run), where (each runner's
# device time per kernel, by the profilers), memory (peak device memory: bench/memory.py), profile
# (where one eager and compiled char_lm step spend their time), serve (the server's and export's
# tests, and bench/serve.py --device cuda). Each fits one 10-minute call of a GPU machine.
# Logs and result pages land in $OUT; the last lines printed are a short summary. Benchmarks
# write their pages to $OUT (copy a full run's pages into bench/results/ to record them).
set -uo pipefail
cd "$(dirname "$0")/.."
PHASES=("$@")
[ ${#PHASES[@]} -gt 0 ] || PHASES=(tests eager fusion train-highest train-high)
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
run_bench() {  # name, timeout in seconds, command...
    local name=$1 limit=$2
    shift 2
    echo "== $name: $*"
    timeout "$limit" "$@" > "$OUT/$name.log" 2>&1 || { echo "$name failed or timed out"; status=1; }
    tail -30 "$OUT/$name.log"
}
for phase in "${PHASES[@]}"; do
    case $phase in
        tests)
            python3 -m pytest -q -m gpu -p no:cacheprovider -o addopts="" -rs tests 2>&1 | tee "$OUT/gpu_tests.log" | tail -40
            [ "${PIPESTATUS[0]}" -eq 0 ] || status=1 ;;
        eager) run_bench eager_cuda 120 python3 bench/eager.py --device cuda --out "$OUT/eager_cuda.md" ;;
        fusion) run_bench fusion_cuda 420 python3 bench/fusion.py --device cuda --out "$OUT/fusion-cuda.md" ;;
        tests-new)  # a short call: the GPU tests of the newest parts, and the op harness's cases near them
            files=()
            for f in tests/test_eager_pointwise.py tests/test_eager_fusion.py tests/test_cuda_graphs.py \
                     tests/test_autotune.py tests/test_cuda_backend.py tests/test_attention_triton.py \
                     tests/test_triton_driver.py tests/test_triton_codegen.py tests/test_ops_cuda.py \
                     tests/test_horizontal_fusion.py tests/test_dynamic_shapes.py tests/test_matmul_epilogue.py \
                     tests/test_torch_api.py; do
                [ -f "$f" ] && files+=("$f")
            done
            python3 -m pytest -q -m gpu -p no:cacheprovider -o addopts="" -rs "${files[@]}" \
                -k "not test_op_matches or 0d or scalar or inplace or softmax or attention" 2>&1 \
                | tee "$OUT/gpu_tests.log" | tail -40
            [ "${PIPESTATUS[0]}" -eq 0 ] || status=1 ;;
        train-highest|train-high)
            run_bench "${phase/-/_cuda_}" 560 python3 bench/train.py --device cuda --precisions "${phase#train-}" \
                --out "$OUT/${phase/-/_cuda_}.md" ;;
        gpt-highest|gpt-high)  # the GPT-sized row alone, at one precision
            run_bench "train_cuda_${phase}" 400 python3 bench/train.py --device cuda --precisions "${phase#gpt-}" \
                --workloads gpt --out "$OUT/train_cuda_${phase}.md" ;;
        first-call)  # what building each runner of the GPT-sized step costs on a fresh machine (bf16 autocast)
            run_bench first_call_gpt 560 python3 bench/train.py --device cuda --precisions high --amp bf16 \
                --workloads gpt --repeats 1 --gpt-steps 2 --out "$OUT/first_call_gpt.md" ;;
        amp-bf16)  # the char_lm and GPT-sized steps under autocast in bfloat16 (TF32 for what stays float32)
            run_bench train_cuda_amp_bf16 560 python3 bench/train.py --device cuda --precisions high --amp bf16 \
                --out "$OUT/train_cuda_high_amp_bf16.md" ;;
        where)  # where each runner's GPU time goes, kernel by kernel: the MLP and the GPT-sized step
            run_bench where_cuda 560 python3 bench/train.py --device cuda --precisions highest --workloads mlp,gpt \
                --repeats 1 --gpt-steps 2 --prims --out "$OUT/where_cuda.md" ;;
        memory)  # peak device memory of char_lm and GPT-sized steps, eager/compiled, with and without checkpointing
            run_bench memory_cuda 560 python3 bench/memory.py --device cuda --out "$OUT/memory_cuda.md" ;;
        serve)  # exported programs served on the GPU: the server's tests, then bench/serve.py --device cuda (the
            # serve extra travels as wheels in .whl/serve/ where the machine lacks Starlette and uvicorn)
            if ls .whl/serve/*.whl >/dev/null 2>&1; then
                python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
                    .whl/serve/*.whl >/dev/null 2>&1
            fi
            python3 -m pytest -q -p no:cacheprovider -o addopts="" -m "gpu or not gpu" tests/test_serve.py \
                tests/test_export.py 2>&1 | tee "$OUT/serve_tests.log" | tail -5
            run_bench serve_cuda 300 python3 bench/serve.py --device cuda --out "$OUT/serve_cuda.md" ;;
        profile)
            run_bench profile_cuda 300 python3 bench/train.py --device cuda --precisions highest --workloads char_lm \
                --repeats 1 --lm-steps 5 --profile --prims ;;
        *) echo "unknown phase $phase"; status=1 ;;
    esac
done

echo "== summary"
[ -f "$OUT/gpu_tests.log" ] && grep -E "passed|failed|error" "$OUT/gpu_tests.log" | tail -1
exit $status
