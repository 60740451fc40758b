#!/usr/bin/env bash
# One-shot check of fuq's GPU kernels on a CUDA machine (made for a lent H200: torch
# 2.11 + CUDA 13, Triton 3.6, no network), in well under 8 minutes:
#
#   1. install fuq editable without extensions (seconds), then build fuq._C and
#      fuq._C_cuda in the background (setup.py build_ext --inplace);
#   2. while that builds: the Triton tests on the GPU;
#   3. the CUDA C++ tests once the build is done;
#   4. compute-sanitizer memcheck on a small script (both GPU backends, edge shapes);
#   5. the benchmark: Triton, CUDA C++, naive PyTorch and torch.logsumexp (the
#      bandwidth floor) at B in {1, 8, 64}, V in {32000, 128256, 262144}, fp32 and bf16;
#   6. compute-sanitizer racecheck / synccheck of the CUDA kernel, if time is left.
#
#   bash bench/gpu_check.sh                   # results in $OUT if set, else bench/results/gpu
#   FUQ_GPU_CHECK_BUDGET=420 bash bench/gpu_check.sh          # seconds for the whole run (default 450)
#   FUQ_GPU_CHECK_SKIP=sanitizer,triton-tests bash bench/gpu_check.sh
#       (steps: triton-tests, cuda-tests, sanitizer, bench)
#
# First-run cost: Triton compiles each kernel variant once (the bitonic top-k ones take
# ~10-40 s each); later runs hit Triton's on-disk cache.
#
# Robust by design: every step runs under a timeout cut to the time left, a failed
# step is reported and the script goes on; a summary of step statuses ends the log.
# Everything (log, JUnit XML, benchmark JSON / markdown) goes to the results folder.
set -u -o pipefail
set -x

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
RES="${OUT:-$ROOT/bench/results/gpu}"
mkdir -p "$RES"
exec > >(tee "$RES/gpu_check.log") 2>&1

BUDGET="${FUQ_GPU_CHECK_BUDGET:-450}"
DEADLINE=$((SECONDS + BUDGET))
declare -a SUMMARY=()
section() { set +x; echo; echo "=================== $* ($((DEADLINE - SECONDS)) s left) ==================="; set -x; }
# tmo WANT: WANT seconds, or what is left before the deadline (at least 5)
tmo() { local w=$1 l=$((DEADLINE - SECONDS)); ((l < w)) && w=$l; ((w < 5)) && w=5; echo "$w"; }
record() { SUMMARY+=("$1: rc=$2"); }
skip() { [[ ",${FUQ_GPU_CHECK_SKIP:-}," == *",$1,"* ]]; }
export PYTHONUNBUFFERED=1 MAX_JOBS="${MAX_JOBS:-8}"  # leave cores to Triton's compiler meanwhile

section "environment"
nvidia-smi || true
python -c "import torch, triton; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'triton', triton.__version__, torch.cuda.get_device_name(0))" || true
command -v nvcc && nvcc --version | tail -n 2
SAN="$(command -v compute-sanitizer || echo /usr/local/cuda/bin/compute-sanitizer)"

section "install (editable, no extensions yet)"
FUQ_NO_EXT=1 timeout "$(tmo 120)" pip install --no-build-isolation --no-deps --no-index -e . -q
record install $?

section "build fuq._C and fuq._C_cuda (background)"
(timeout "$(tmo 330)" python setup.py build_ext --inplace -j "$MAX_JOBS" >"$RES/build.log" 2>&1; echo $? >"$RES/build.rc") &
BUILD_PID=$!

section "Triton tests on the GPU (while the extension builds)"
if ! skip triton-tests; then
  timeout "$(tmo 270)" python -m pytest -q --maxfail=10 -p no:cacheprovider tests/test_logit_stats.py \
    tests/test_logit_stats_gpu.py tests/test_attention_stats.py -k "triton or out_of_range_tokens_give_nan[logit_stats]" \
    --junitxml="$RES/pytest_triton.xml"
  record "pytest triton" $?
fi

section "wait for the build"
wait "$BUILD_PID"
BUILD_RC="$(cat "$RES/build.rc" 2>/dev/null || echo 1)"
tail -n 30 "$RES/build.log"
record build "$BUILD_RC"
python -c "import fuq; from fuq import _library as L; print('HAS_CPP', L.HAS_CPP, L.C_ERROR); print('HAS_CUDA_CPP', L.HAS_CUDA_CPP, L.C_CUDA_ERROR)"

section "CUDA C++ tests"
if ! skip cuda-tests; then
  timeout "$(tmo 150)" python -m pytest -q --maxfail=10 -p no:cacheprovider tests/test_logit_stats.py \
    tests/test_logit_stats_gpu.py tests/test_attention_stats.py -k "(cuda and not triton) or agree" --junitxml="$RES/pytest_cuda.xml"
  record "pytest cuda" $?
fi

# A small workload for the sanitizers: edge shapes, degenerate rows, both backends.
cat >"$RES/sanitize_small.py" <<'EOF'
import torch

import fuq
from fuq import _library

backends = ["triton"] + (["cuda"] if _library.HAS_CUDA_CPP else [])
ops = {"triton": torch.ops.fuq.logit_stats, "cuda": getattr(torch.ops.fuq, "logit_stats_cuda", None)}
for backend in backends:
    for B, V, k in ((1, 1, 1), (3, 7, 7), (2, 4097, 50), (1, 70000, 0), (2, 50257, 1030), (4, 3000, 2)):
        for dtype in (torch.float32, torch.bfloat16):
            x = (torch.randn(B, V, device="cuda") * 3).to(dtype)
            if V > 7:
                x[0, ::3] = float("-inf")
            if B > 2:
                x[1] = float("-inf")
                x[2, V // 2] = float("nan")
            tok = torch.randint(0, V, (B,), device="cuda")
            fuq.logit_stats(x, k=k, tokens=tok, temperature=0.7, backend=backend)
            wide = torch.randn(B, V + 33, device="cuda")[:, 5 : V + 5]
            fuq.logit_stats(wide, k=min(k, 3), backend=backend)
    bad_tok = torch.tensor([-1, 10**6], device="cuda")
    ops[backend](torch.randn(2, 1000, device="cuda"), 3, bad_tok, 1.0)
torch.cuda.synchronize()
print("sanitize_small: done", backends)
EOF

section "compute-sanitizer memcheck (small script)"
if skip sanitizer; then
  record "sanitizer memcheck" skipped
elif [[ -x "$SAN" ]]; then
  timeout "$(tmo 120)" "$SAN" --tool memcheck --leak-check no --error-exitcode 3 python "$RES/sanitize_small.py"
  record "sanitizer memcheck" $?
else
  echo "compute-sanitizer not found"
  record "sanitizer memcheck" 127
fi

# The benchmark (self-contained: times with triton.testing.do_bench, median of repeats).
cat >"$RES/bench_gpu.py" <<'EOF'
import json
import sys

import torch
import triton

import fuq
from fuq import _library

res = sys.argv[1]
K = 50
torch.backends.cuda.matmul.allow_tf32 = True
dev = torch.cuda.get_device_name(0)


def naive(x, k, T):
    z = x.float() / T
    lse = torch.logsumexp(z, -1)
    logp = torch.log_softmax(z, -1)
    p = logp.exp()
    plogp = torch.where(p > 0, p * logp, torch.zeros_like(p))
    ent = -plogp.sum(-1)
    var = torch.where(p > 0, p * (logp + ent[:, None]) ** 2, torch.zeros_like(p)).sum(-1)
    mx, am = logp.max(-1)
    tv, ti = torch.topk(z, k, -1)
    tkl = logp.gather(-1, ti)
    return lse, ent, var, mx, am, tkl, ti, tkl.exp().sum(-1)


def bench(fn):
    return triton.testing.do_bench(fn, warmup=10, rep=40, return_mode="median")


# the copy bandwidth of this GPU (read + write), for reference
big = torch.empty(2**28, dtype=torch.uint8, device="cuda")
big2 = torch.empty_like(big)
copy_ms = bench(lambda: big2.copy_(big))
copy_gbs = 2 * big.numel() / copy_ms / 1e6
print(f"{dev}: device-to-device copy {copy_gbs:.0f} GB/s (read + write)")
del big, big2

methods = {
    "triton": lambda x: fuq.logit_stats(x, k=K, temperature=0.7, backend="triton"),
    "triton op": lambda x: torch.ops.fuq.logit_stats(x, K, None, 0.7),
    "cuda": lambda x: fuq.logit_stats(x, k=K, temperature=0.7, backend="cuda"),
    "naive": lambda x: naive(x, K, 0.7),
    "logsumexp": lambda x: torch.logsumexp(x, -1),
}
if not _library.HAS_CUDA_CPP:
    del methods["cuda"]
rows = []
hdr = f"{'dtype':>8} {'B':>3} {'V':>7} | " + " | ".join(f"{m:>18}" for m in methods) + " | triton/lse naive/triton"
print(f"k = {K}, T = 0.7; ms (GB/s of logits read)")
print(hdr)
for dtype in (torch.float32, torch.bfloat16):
    for B in (1, 8, 64):
        for V in (32000, 128256, 262144):
            x = (torch.randn(B, V, device="cuda") * 2).to(dtype)
            nbytes = x.numel() * x.element_size()
            r = {"dtype": str(dtype).replace("torch.", ""), "B": B, "V": V, "k": K, "bytes": nbytes}
            for name, fn in methods.items():
                try:
                    fn(x)
                    ms = bench(lambda: fn(x))
                except Exception as exc:  # keep going: one failed method must not hide the others
                    print(f"  {name} failed: {type(exc).__name__}: {exc}")
                    ms = float("nan")
                r[name + "_ms"] = ms
                r[name + "_GBps"] = nbytes / ms / 1e6
            r["triton_over_lse"] = r["triton_ms"] / r["logsumexp_ms"]
            r["naive_over_triton"] = r["naive_ms"] / r["triton_ms"]
            if "cuda" in methods:
                r["cuda_over_lse"] = r["cuda_ms"] / r["logsumexp_ms"]
                r["naive_over_cuda"] = r["naive_ms"] / r["cuda_ms"]
            rows.append(r)
            cells = " | ".join(f"{r[m + '_ms']:7.4f} ({r[m + '_GBps']:6.0f})" for m in methods)
            print(f"{r['dtype']:>8} {B:>3} {V:>7} | {cells} | {r['triton_over_lse']:10.2f} {r['naive_over_triton']:12.2f}")
            del x
# k = 0 (stats only) at the largest shape, the pure-bandwidth case
for dtype in (torch.float32, torch.bfloat16):
    x = (torch.randn(64, 262144, device="cuda") * 2).to(dtype)
    nbytes = x.numel() * x.element_size()
    for name, fn in (("triton k=0", lambda: fuq.logit_stats(x, backend="triton")),
                     ("cuda k=0", lambda: fuq.logit_stats(x, backend="cuda")),
                     ("logsumexp", lambda: torch.logsumexp(x, -1))):
        if name.startswith("cuda") and not _library.HAS_CUDA_CPP:
            continue
        ms = bench(fn)
        print(f"{str(dtype):>15} B=64 V=262144 {name:>12}: {ms:.4f} ms, {nbytes / ms / 1e6:.0f} GB/s")
        rows.append({"dtype": str(dtype).replace("torch.", ""), "B": 64, "V": 262144, "k": 0, "method": name,
                     "ms": ms, "GBps": nbytes / ms / 1e6})
out = {"device": dev, "copy_GBps": copy_gbs, "torch": torch.__version__, "triton": triton.__version__, "rows": rows}
with open(f"{res}/bench_gpu.json", "w") as f:
    json.dump(out, f, indent=1)
print("wrote", f"{res}/bench_gpu.json")
EOF

section "benchmark"
if ! skip bench; then
  timeout "$(tmo 200)" python "$RES/bench_gpu.py" "$RES" | tee "$RES/bench_gpu.txt"
  record benchmark $?
fi

section "compute-sanitizer racecheck + synccheck (CUDA C++ kernel)"
if ! skip sanitizer && [[ -x "$SAN" ]] && ((DEADLINE - SECONDS > 40)); then
  timeout "$(tmo 90)" "$SAN" --tool racecheck --racecheck-report hazard --error-exitcode 3 python "$RES/sanitize_small.py"
  record "sanitizer racecheck" $?
  timeout "$(tmo 60)" "$SAN" --tool synccheck --error-exitcode 3 python "$RES/sanitize_small.py"
  record "sanitizer synccheck" $?
else
  record "sanitizer racecheck/synccheck" "skipped"
fi

set +x
section "summary"
for s in "${SUMMARY[@]}"; do echo "  $s"; done
echo "results in $RES: $(ls "$RES" | tr '\n' ' ')"
