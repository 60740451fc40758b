#!/usr/bin/env bash
# One bounded check of fuq on a CUDA machine (made for a lent H200: torch 2.11 + CUDA 13,
# Triton 3.6, no network), in under 8 minutes, writing at most 8 files:
#
#   gpu_check.log           everything printed (this script and every step)
#   build.log               the build of fuq._C / fuq._C_cuda (setup.py build_ext --inplace)
#   pytest_gpu.xml          the test suite's GPU-relevant tests (Triton on CUDA, CUDA C++)
#   gpu_correctness.json    every op x knob x backend vs the reference (bench/gpu_check.py)
#   bench_gpu.json          timings: CUDA events (cold L2) and CUDA-graph replay, peers, roofline
#   triton_aot.txt          registers / spills / smem of every launched Triton kernel variant
#
#   bash bench/gpu_check.sh        # results in $OUT if set, else bench/results/gpu
#   FUQ_GPU_CHECK_BUDGET=420 bash bench/gpu_check.sh      # seconds for the whole run (default 450)
#   FUQ_GPU_CHECK_SKIP=sanitizer,bench bash bench/gpu_check.sh
#       (steps: tests, correctness, sanitizer, bench, aot)
#
# Every step runs under a timeout cut to the time left; a failed step is reported and the
# script goes on; the summary of step statuses ends the log. compute-sanitizer is probed
# first (a sandboxed device may refuse it): its verdict is reported, never assumed.
set -u -o pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
RES="${OUT:-$ROOT/bench/results/gpu}"
mkdir -p "$RES"
exec > >(tee "$RES/gpu_check.log") 2>&1
PY="$(command -v python3 || command -v python)"

BUDGET="${FUQ_GPU_CHECK_BUDGET:-450}"
DEADLINE=$((SECONDS + BUDGET))
declare -a SUMMARY=()
section() { echo; echo "=================== $* ($((DEADLINE - SECONDS)) s left) ==================="; }
tmo() { local w=$1 l=$((DEADLINE - SECONDS)); ((l < w)) && w=$l; ((w < 5)) && w=5; echo "$w"; }
record() { SUMMARY+=("$1: $2"); }
skip() { [[ ",${FUQ_GPU_CHECK_SKIP:-}," == *",$1,"* ]]; }
export PYTHONUNBUFFERED=1 MAX_JOBS="${MAX_JOBS:-12}" TRITON_DEFAULT_FP_FUSION=1

section "environment"
nvidia-smi --query-gpu=name,memory.total,clocks.max.sm,clocks.max.mem --format=csv || true
"$PY" -c "import torch, triton; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'triton', triton.__version__, torch.cuda.get_device_name(0))"
command -v nvcc >/dev/null && nvcc --version | tail -n 1
SAN="$(command -v compute-sanitizer || echo /usr/local/cuda/bin/compute-sanitizer)"

section "build fuq._C and fuq._C_cuda (in place, against this torch)"
timeout "$(tmo 300)" "$PY" setup.py build_ext --inplace -j "$MAX_JOBS" >"$RES/build.log" 2>&1
rc=$?; tail -n 5 "$RES/build.log"; record build "rc=$rc"
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
# fuq.triton_kernels is installed from triton_kernels/: make it importable in place
[[ -e fuq/triton_kernels ]] || ln -s ../triton_kernels fuq/triton_kernels
"$PY" -c "import fuq; from fuq import _library as L; print('HAS_CPP', L.HAS_CPP, L.C_ERROR); print('HAS_CUDA_CPP', L.HAS_CUDA_CPP, L.C_CUDA_ERROR)"

section "tests on the GPU"
if ! skip tests; then
  timeout "$(tmo 150)" "$PY" -m pytest -q -x -p no:cacheprovider -m "not model" \
    tests/test_logit_stats.py tests/test_logit_stats_gpu.py tests/test_truncate_triton.py tests/test_sample.py \
    $(ls tests/test_hidden_stats.py tests/test_attention_stats.py 2>/dev/null) \
    -k "triton or cuda or gpu" --junitxml="$RES/pytest_gpu.xml" 2>&1 | tail -n 25
  record "pytest gpu" "rc=${PIPESTATUS[0]}"
fi

section "correctness: every op, knob and backend vs the reference"
if ! skip correctness; then
  timeout "$(tmo 120)" "$PY" bench/gpu_check.py correctness "$RES" | grep -v '^ok ' | tail -n 40
  record correctness "rc=${PIPESTATUS[0]}"
fi

section "compute-sanitizer"
if skip sanitizer; then
  record sanitizer skipped
elif [[ ! -x "$SAN" ]]; then
  record sanitizer "not found"
elif ! timeout 60 "$SAN" --tool memcheck --error-exitcode 3 "$PY" -c "import torch; torch.ones(1, device='cuda').sum().item()" >/dev/null 2>&1; then
  echo "compute-sanitizer refuses to run here (probe failed): memcheck/racecheck not run"
  record sanitizer "refused by the device (probe)"
else
  timeout "$(tmo 120)" "$SAN" --tool memcheck --leak-check no --error-exitcode 3 "$PY" bench/gpu_check.py sanitize 2>&1 | tail -n 15
  record "sanitizer memcheck" "rc=${PIPESTATUS[0]}"
  if ((DEADLINE - SECONDS > 150)); then
    timeout "$(tmo 90)" "$SAN" --tool racecheck --racecheck-report hazard --error-exitcode 3 "$PY" bench/gpu_check.py sanitize 2>&1 | tail -n 15
    record "sanitizer racecheck" "rc=${PIPESTATUS[0]}"
  fi
fi

section "benchmark"
if ! skip bench; then
  timeout "$(tmo 220)" "$PY" bench/gpu_check.py bench "$RES"
  record benchmark "rc=$?"
fi

section "Triton kernels: registers and spills of every launched variant (compiled for this GPU's arch too)"
if ! skip aot && ((DEADLINE - SECONDS > 60)); then
  CC="$("$PY" -c "import torch; a, b = torch.cuda.get_device_capability(); print(10 * a + b)")"
  TRITON_INTERPRET=1 timeout "$(tmo 100)" "$PY" tests/triton_launches.py record /tmp/fuq_launches.json | tail -n 3 &&
    timeout "$(tmo 100)" "$PY" tests/triton_launches.py compile /tmp/fuq_launches.json "$CC" >"$RES/triton_aot.txt"
  record "triton aot" "rc=$?"; tail -n 3 "$RES/triton_aot.txt"
fi

section "summary"
for s in "${SUMMARY[@]}"; do echo "  $s"; done
echo "results in $RES: $(ls "$RES" | tr '\n' ' ')"
