#!/usr/bin/env bash
# Compile-check fuq's CUDA sources with nvcc for sm_80 and sm_90, without torch.
#
#   bash csrc/check_cuda.sh            # CI calls it this way; exits non-zero on any error
#   NVCC=/path/to/nvcc FUQ_CUDA_ARCHS="80 90" bash csrc/check_cuda.sh
#
# What it compiles (nvcc -std=c++17 -c, object files thrown away):
#   * every header csrc/include/fuq/*.cuh, alone in a translation unit (self-contained
#     includes, no syntax errors);
#   * every csrc/cuda_check/*.cu: small units that include a header and explicitly
#     instantiate its kernels for float, __half and __nv_bfloat16, so that the template
#     code is type-checked too (a header alone instantiates nothing);
#   * every csrc/cuda/*.cu that includes no torch header (the torch bindings need a CUDA
#     build of torch and are compiled by setup.py on a GPU machine instead).
# This checks compilation only: nothing runs, no GPU is needed. The kernels run on a
# GPU through bench/gpu_check.sh.
set -u -o pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

NVCC="${NVCC:-}"
if [[ -z "$NVCC" ]]; then
  if command -v nvcc >/dev/null 2>&1; then
    NVCC="$(command -v nvcc)"
  elif [[ -x "${CUDA_HOME:-/usr/local/cuda}/bin/nvcc" ]]; then
    NVCC="${CUDA_HOME:-/usr/local/cuda}/bin/nvcc"
  fi
fi
if [[ -z "$NVCC" || ! -x "$NVCC" ]]; then
  echo "check_cuda: nvcc not found (set NVCC or CUDA_HOME)" >&2
  exit 2
fi
ARCHS="${FUQ_CUDA_ARCHS:-80 90}"
echo "check_cuda: $("$NVCC" --version | tail -n 1) ; archs: $ARCHS"

TMP="$(mktemp -d)"
trap 'rm -rf "$TMP"' EXIT

FLAGS=(-std=c++17 -O2 --expt-relaxed-constexpr -Icsrc/include -Xcompiler -Wall)
units=()
for h in csrc/include/fuq/*.cuh; do
  [[ -e "$h" ]] || continue
  u="$TMP/header_$(basename "$h" .cuh).cu"
  printf '#include "fuq/%s"\n' "$(basename "$h")" >"$u"
  units+=("$u")
done
for f in csrc/cuda_check/*.cu; do
  [[ -e "$f" ]] && units+=("$f")
done
for f in csrc/cuda/*.cu; do
  [[ -e "$f" ]] || continue
  if grep -Eq '^[[:space:]]*#[[:space:]]*include[[:space:]]*[<"](torch|ATen|c10|Python)' "$f"; then
    echo "check_cuda: skip $f (includes torch; built by setup.py against a CUDA torch)"
    continue
  fi
  units+=("$f")
done
if [[ ${#units[@]} -eq 0 ]]; then
  echo "check_cuda: nothing to compile" >&2
  exit 1
fi

fail=0
for arch in $ARCHS; do
  for u in "${units[@]}"; do
    name="${u#"$TMP"/}"
    if "$NVCC" "${FLAGS[@]}" -gencode "arch=compute_${arch},code=sm_${arch}" -c "$u" -o "$TMP/out.o" \
      >"$TMP/log" 2>&1; then
      echo "ok    sm_${arch}  $name"
    else
      echo "FAIL  sm_${arch}  $name"
      cat "$TMP/log"
      fail=1
    fi
  done
done
if [[ $fail -ne 0 ]]; then
  echo "check_cuda: compile errors" >&2
  exit 1
fi
echo "check_cuda: all units compiled"
