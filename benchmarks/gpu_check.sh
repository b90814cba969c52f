#!/usr/bin/env bash
# Every GPU-marked test, where the compiled decode step parts from eager, then the kernel, sampler, RL-step and rollout
# benchmarks, in one call on one CUDA machine (at most 26 minutes: each phase has its own time limit). Uses $PYTHON,
# else python3, as it is: it must already hold torch and triton (and pytest); the project is put on PYTHONPATH,
# nothing is installed. Logs and results go to $OUT when set, else runs/gpu_check. Name phases to run only those, in
# the order named (tests, diagnose, kernels, sampler, rl, rollout); the default is all of them in that order.
#   bash benchmarks/gpu_check.sh
#   bash benchmarks/gpu_check.sh rl          # the two RL-step rows only (at most 6 minutes)
#   bash benchmarks/gpu_check.sh rollout     # the agent loop against its decode step (at most 7 minutes)
#   bash benchmarks/gpu_check.sh rollout tests kernels   # in this order: at most 14 minutes (the limits)
#   bash benchmarks/gpu_check.sh tests diagnose   # the GPU tests, and where the compiled decode step parts from eager
set -uo pipefail
cd "$(dirname "$0")/.."

out=${OUT:-runs/gpu_check}
mkdir -p "$out"
py=${PYTHON:-python3}
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
export TRITON_PRINT_AUTOTUNING=1  # the logs then record which tiles won on this card
unset TRITON_INTERPRET LITERE_KERNELS

phases=${*:-tests diagnose kernels sampler rl rollout}
for phase in $phases; do
    case $phase in tests|diagnose|kernels|sampler|rl|rollout) ;; *) echo "gpu_check: no phase '$phase'" >&2; exit 2 ;; esac
done

echo "== device"
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,clocks.max.sm --format=csv 2>&1 | tee "$out/device.txt"
if ! "$py" -c 'import platform, torch, triton
assert torch.cuda.is_available(), "torch sees no CUDA device"
print("python", platform.python_version(), "| torch", torch.__version__, "| triton", triton.__version__, "|",
      torch.cuda.get_device_name())' 2>&1 | tee -a "$out/device.txt"; then
    echo "gpu_check: $py cannot use a CUDA device with torch and triton; stopping" >&2
    exit 1
fi

tests_rc=- diagnose_rc=- bench_rc=- sampler_rc=- rl_small_rc=- rl_large_rc=- rollout_rc=-

run_tests() {
    # only the files that hold GPU tests: the others need test-only packages a GPU image may lack
    echo "== GPU-marked tests (limit 200 s)"
    timeout 200 "$py" -m pytest $(grep -l "mark.gpu" tests/test_*.py) -m gpu -q -rs -p no:cacheprovider 2>&1 \
        | tee "$out/gpu_tests.log"
    tests_rc=${PIPESTATUS[0]}
}

run_diagnose() {
    # every call of the compiled decode step against the eager forwards of the same rows (the graph's torch code
    # uncompiled, the sampler's with the Triton kernels, with PyTorch's): which part the tokens part on
    echo "== compiled decode step against eager, call by call (limit 180 s)"
    diagnose_rc=0
    for setting in "default" "reduce-overhead" "default LITERE_KERNELS=torch"; do
        set -- $setting
        echo "-- compile=$1 ${2:-}"
        env ${2:-} timeout 60 "$py" benchmarks/diagnose_compiled_decode.py --device cuda --mode "$1" 2>&1 \
            | tee -a "$out/diagnose_compiled_decode.log"
        [ "${PIPESTATUS[0]}" -eq 0 ] || diagnose_rc=1
    done
}

run_kernels() {
    echo "== kernel benchmarks (limit 200 s)"
    timeout 200 "$py" benchmarks/bench_kernels.py --json "$out/bench_kernels.json" 2>&1 | tee "$out/bench_kernels.log"
    bench_rc=${PIPESTATUS[0]}
}

run_sampler() {
    echo "== sampler on the GPU: eager, compiled, transformers, 0.6B shape in bf16 (limit 150 s)"
    timeout 150 "$py" benchmarks/bench_sampler.py --presets qwen3-0.6b --dtypes bf16 --batches 1,16 --no-floors \
        --no-multiturn --repeats 2 --device cuda --json "$out/bench_sampler.json" 2>&1 | tee "$out/bench_sampler.log"
    sampler_rc=${PIPESTATUS[0]}
}

run_rl() {
    # one GRPO step each (after a short warm-up step): random weights, fp32 master + bf16 autocast, bf16 rollout copy,
    # 16 prompts x 8 samples x 512 fixed-length sampled tokens; rollout and update tokens/s, MFU, weight sync, memory
    echo "== RL step, 0.6B shape in bf16 (limit 150 s)"
    timeout 150 "$py" benchmarks/bench_rl.py --no-toy --device cuda --shape qwen3-0.6b --prompts 16 --n 8 \
        --tokens 512 --steps 1 --json "$out/bench_rl_0.6b.json" 2>&1 | tee "$out/bench_rl_0.6b.log"
    rl_small_rc=${PIPESTATUS[0]}
    echo "== RL step, 4B shape in bf16, activation checkpointing (limit 210 s)"
    timeout 210 "$py" benchmarks/bench_rl.py --no-toy --device cuda --shape qwen3-4b --prompts 16 --n 8 \
        --tokens 512 --steps 1 --json "$out/bench_rl_4b.json" 2>&1 | tee "$out/bench_rl_4b.log"
    rl_large_rc=${PIPESTATUS[0]}
}

run_rollout() {
    # the agent loop over the sampler against its own decode step: random weights, 64 questions greedy and 16 x 8
    # RL samples, 512-token prompts, 4 turns of 128 sampled tokens, 256-token tool responses; the eager sampler
    # (the demo's settings) and the compiled decode step replayed as CUDA graphs
    echo "== rollouts, 0.6B shape in bf16 (limit 420 s)"
    timeout 420 "$py" benchmarks/bench_rollout.py --workload synthetic --shape qwen3-0.6b --device cuda --dtype bf16 \
        --configs eager,graphs --n-questions 64 --rl-questions 16 --threads 0 --json "$out/bench_rollout.json" 2>&1 \
        | tee "$out/bench_rollout.log"
    rollout_rc=${PIPESTATUS[0]}
}

for phase in $phases; do "run_$phase"; done

echo "gpu_check: tests exit $tests_rc, diagnosis exit $diagnose_rc, kernel benchmarks exit $bench_rc," \
     "sampler benchmark exit $sampler_rc," \
     "RL step 0.6B exit $rl_small_rc, 4B exit $rl_large_rc, rollouts exit $rollout_rc (124 = hit its time limit," \
     "- = not run); logs in $out"
for rc in $tests_rc $diagnose_rc $bench_rc $sampler_rc $rl_small_rc $rl_large_rc $rollout_rc; do
    [ "$rc" = - ] || [ "$rc" -eq 0 ] || exit 1
done
