#!/usr/bin/env bash
# Everything the fused kernels need checked on a CUDA machine, in one call (about 6-9 minutes):
#   1. the GPU-marked kernel tests (every kernel vs its reference at GPU shapes, fp32 and bf16);
#   2. benchmarks/mixing.py --sweep (GB/s and % of peak per op, eager vs torch.compile vs fused,
#      and the training-step overhead of hc / mhc over standard at the 1B shape);
#   3. the static report of benchmarks/kernel_resources.py for the device's architecture;
#   4. benchmarks/kernel_traffic.py: the bytes each kernel moves are counted by the Triton
#      interpreter on the CPU cores in the background while 1-3 run (~1-2 min of one core), then
#      `--measure` times the same launches on the GPU (~30 s) and prints measured GB/s next to
#      the projected time at the counted bytes.
# Logs go to $OUT (or ./gpu_check); each step has a time limit so a hang cannot eat the others.
# `training` (a second call, about 5-9 minutes) checks what the kernels do not touch:
#   1. the GPU-marked tests outside the kernels (probe peak memory, ZeRO/FSDP paths, GLUE on CUDA);
#   2. benchmarks/memory.py on CUDA: torch.cuda.max_memory_allocated of one training step per mode,
#      recompute setting and dtype, next to the saved-activation tables (docs/performance.md).
#
#   bash benchmarks/gpu_check.sh                # from the repository root, in the project's env
#   bash benchmarks/gpu_check.sh training
set -u
cd "$(dirname "$0")/.."
out="${OUT:-gpu_check}"
mkdir -p "$out"
unset TRITON_INTERPRET
export HF_HUB_OFFLINE=1 TRITON_DEFAULT_FP_FUSION=1

{
  nvidia-smi || true
  python -c "import torch, triton; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'triton', triton.__version__); print(torch.cuda.get_device_name(0), torch.cuda.get_device_capability(0))"
} >"$out/device.txt" 2>&1
cat "$out/device.txt"

step() {  # step NAME LIMIT_S CMD...
  local name=$1 limit=$2
  shift 2
  local t0=$SECONDS
  timeout "$limit" "$@" >"$out/$name.txt" 2>&1
  local rc=$?
  echo "== $name: rc=$rc in $((SECONDS - t0)) s"
  tail -n 40 "$out/$name.txt"
}

if [ "${1:-kernels}" = training ]; then
  step gpu_tests_training 300 python -m pytest -q -m gpu tests/metrics tests/train tests/evals -p no:cacheprovider
  step memory 300 python benchmarks/memory.py --no-live
  exit 0
fi

# CPU-only (the interpreter), alongside the GPU steps; its own time limit
timeout 420 python benchmarks/kernel_traffic.py --json "$out/traffic.json" >"$out/traffic_count.txt" 2>&1 &
traffic_pid=$!
step gpu_tests 240 python -m pytest -q -m gpu tests/kernels -p no:cacheprovider
step mixing 420 python benchmarks/mixing.py --sweep
arch=$(python -c "import torch; a, b = torch.cuda.get_device_capability(0); print(10 * a + b)" 2>/dev/null || echo 90)
step kernel_resources 240 python benchmarks/kernel_resources.py --arch "$arch" --n 4 8
wait "$traffic_pid"
echo "== traffic_count: rc=$?"
tail -n 8 "$out/traffic_count.txt"  # the projected step overhead
step traffic_measure 120 python benchmarks/kernel_traffic.py --measure "$out/traffic.json" --reps 50
