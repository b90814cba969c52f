#!/usr/bin/env bash
# Every GPU-marked test, then the kernel and sampler benchmarks, in one call on one CUDA machine (at most 11 minutes:
# each phase has its own time limit). Uses $PYTHON, else python3, as it is: it must already hold torch and triton (and pytest);
# the project is put on PYTHONPATH, nothing is installed. Logs and results go to $OUT when set, else runs/gpu_check.
#   bash benchmarks/gpu_check.sh
set -uo pipefail
cd "$(dirname "$0")/.."

out=${OUT:-runs/gpu_check}
mkdir -p "$out"
py=${PYTHON:-python3}
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
export TRITON_PRINT_AUTOTUNING=1  # the logs then record which tiles won on this card
unset TRITON_INTERPRET LITERE_KERNELS

echo "== device"
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,clocks.max.sm --format=csv 2>&1 | tee "$out/device.txt"
if ! "$py" -c 'import platform, torch, triton
assert torch.cuda.is_available(), "torch sees no CUDA device"
print("python", platform.python_version(), "| torch", torch.__version__, "| triton", triton.__version__, "|",
      torch.cuda.get_device_name())' 2>&1 | tee -a "$out/device.txt"; then
    echo "gpu_check: $py cannot use a CUDA device with torch and triton; stopping" >&2
    exit 1
fi

echo "== GPU-marked tests (limit 200 s)"
timeout 200 "$py" -m pytest tests -m gpu -q -rs -p no:cacheprovider --continue-on-collection-errors 2>&1 \
    | tee "$out/gpu_tests.log"
tests_rc=${PIPESTATUS[0]}

echo "== kernel benchmarks (limit 200 s)"
timeout 200 "$py" benchmarks/bench_kernels.py --json "$out/bench_kernels.json" 2>&1 | tee "$out/bench_kernels.log"
bench_rc=${PIPESTATUS[0]}

echo "== sampler on the GPU: eager, compiled, transformers, 0.6B shape in bf16 (limit 150 s)"
timeout 150 "$py" benchmarks/bench_sampler.py --presets qwen3-0.6b --dtypes bf16 --batches 1,16 --no-floors \
    --no-multiturn --repeats 2 --device cuda --json "$out/bench_sampler.json" 2>&1 | tee "$out/bench_sampler.log"
sampler_rc=${PIPESTATUS[0]}

echo "gpu_check: tests exit $tests_rc, kernel benchmarks exit $bench_rc, sampler benchmark exit $sampler_rc" \
     "(124 = hit its time limit); logs in $out"
[ "$tests_rc" -eq 0 ] && [ "$bench_rc" -eq 0 ] && [ "$sampler_rc" -eq 0 ]
