// fuq CUDA building blocks shared by the kernels: input conversion, the online
// (m, s, t, u) state of a stream of logits, packed top-k keys, a block top-K.
//
// Torch-free (raw pointers, CUDA runtime, CUB only), C++17. The maths mirrors
// triton_kernels/_common.py; keep the two in step.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>

namespace fuq {

// ---------------------------------------------------------------- conversion
template <typename T>
__device__ __forceinline__ float load_as_float(const T* p);
template <>
__device__ __forceinline__ float load_as_float<float>(const float* p) { return *p; }
template <>
__device__ __forceinline__ float load_as_float<__half>(const __half* p) { return __half2float(*p); }
template <>
__device__ __forceinline__ float load_as_float<__nv_bfloat16>(const __nv_bfloat16* p) {
  return __bfloat162float(*p);
}

// ------------------------------------------------------------- online state
// Relative to the running max m:  s = Σ e^{z-m},  t = Σ e^{z-m}(z-m),  u = Σ e^{z-m}(z-m)².
// Then lse = m + log s, entropy = log s - t/s, varentropy = u/s - (t/s)².
// Invariant: -inf and NaN values leave the state untouched (no 0·(-inf) is formed);
// the caller counts NaN / +inf itself and overwrites that row's results.
struct OnlineState {
  float m, s, t, u;
};

__device__ __forceinline__ OnlineState online_empty() { return {-INFINITY, 0.f, 0.f, 0.f}; }

// Fold one value in, with one exp: r = e^{-|z-m|} weighs z (no new max) or rescales
// the old state (z is the new max, the state moves up by δ = z - m).
__device__ __forceinline__ void online_update(OnlineState& a, float z) {
  const bool up = z > a.m;  // false for NaN and -inf
  const bool live = (z > -INFINITY) && (a.m > -INFINITY);
  const float d = live ? -fabsf(z - a.m) : 0.f;
  const float r = live ? __expf(d) : 0.f;
  if (up) {
    a.u = r * (a.u + 2.f * d * a.t + d * d * a.s);
    a.t = r * (a.t + d * a.s);
    a.s = r * a.s + 1.f;
    a.m = z;
  } else {
    const float rd = r * d;
    a.s += r;
    a.t += rd;
    a.u += rd * d;
  }
}

// The state of the union of two streams (associative, commutative: a reduction operator).
__device__ __forceinline__ OnlineState online_merge(const OnlineState& a, const OnlineState& b) {
  const float M = fmaxf(a.m, b.m);
  OnlineState r{M, 0.f, 0.f, 0.f};
  if (a.m > -INFINITY) {
    const float d = a.m - M, w = __expf(d);
    r.s += w * a.s;
    r.t += w * (a.t + d * a.s);
    r.u += w * (a.u + 2.f * d * a.t + d * d * a.s);
  }
  if (b.m > -INFINITY) {
    const float d = b.m - M, w = __expf(d);
    r.s += w * b.s;
    r.t += w * (b.t + d * b.s);
    r.u += w * (b.u + 2.f * d * b.t + d * d * b.s);
  }
  return r;
}

// ------------------------------------------------------ density-free sums
// logit_stats' opt-in `extra` outputs, relative to the online state's max m as s is:
// sa = Σ e^{alpha(z-m)}, sh = Σ e^{(z-m)/2}, sd = Σ (z-m) and n over the live values. Then
// Σ log p = sd - n log s, log Σ p^alpha = log sa - alpha log s, log Σ √p = log sh - (log s) / 2.
struct DensityState {
  float sa, sh, sd, n;
};

__device__ __forceinline__ DensityState density_empty() { return {0.f, 0.f, 0.f, 0.f}; }

// Fold z in; m is the online state's max *before* online_update folds z. -inf and NaN add nothing.
__device__ __forceinline__ void density_update(DensityState& a, float m, float z, float alpha) {
  if (!(z > -INFINITY)) return;
  if (z > m) {  // z is the new max: the old offsets move by d = m - z < 0
    if (m > -INFINITY) {
      const float d = m - z;
      a.sa *= __expf(alpha * d);
      a.sh *= __expf(0.5f * d);
      a.sd += a.n * d;
    }
    a.sa += 1.f;  // z itself, at offset 0
    a.sh += 1.f;
  } else {
    const float d = z - m;
    a.sa += __expf(alpha * d);
    a.sh += __expf(0.5f * d);
    a.sd += d;
  }
  a.n += 1.f;
}

// The sums of two streams whose online maxima are ma and mb, relative to max(ma, mb).
__device__ __forceinline__ DensityState density_merge(float ma, const DensityState& a, float mb,
                                                      const DensityState& b, float alpha) {
  const float M = fmaxf(ma, mb);
  DensityState r = density_empty();
  const auto add = [&](float mx, const DensityState& s) {  // s moved from mx to M, added to r
    if (!(mx > -INFINITY)) return;
    const float d = mx - M;
    r.sa += __expf(alpha * d) * s.sa;
    r.sh += __expf(0.5f * d) * s.sh;
    r.sd += s.sd + s.n * d;
    r.n += s.n;
  };
  add(ma, a);
  add(mb, b);
  return r;
}

// ------------------------------------------------------------------ top-k keys
// key(z, i) = (ord(z) << 32) | (0x7fffffff - i): larger key <=> larger z, or the same z
// at a lower index. ord is the order-preserving int32 image of the float bits, -0.0
// folded onto +0.0 (they tie in torch.sort). One max gives the first argmax; a top-k
// of keys gives the (z desc, index asc) order of a stable descending sort.
constexpr int64_t kKeyMin = INT64_MIN;  // padding: below every real key

__device__ __forceinline__ int64_t pack_key(float z, int32_t idx) {
  const int32_t bits = __float_as_int(z);
  int32_t ord = bits ^ ((bits >> 31) & 0x7FFFFFFF);
  if (z == 0.f) ord = 0;
  const uint64_t hi = static_cast<uint64_t>(static_cast<uint32_t>(ord)) << 32;
  const uint64_t lo = static_cast<uint32_t>(0x7FFFFFFF - idx);
  return static_cast<int64_t>(hi | lo);
}

__device__ __forceinline__ float key_value(int64_t key) {
  const int32_t hi = static_cast<int32_t>(static_cast<uint32_t>(static_cast<uint64_t>(key) >> 32));
  return __int_as_float(hi ^ ((hi >> 31) & 0x7FFFFFFF));
}

__device__ __forceinline__ int32_t key_index(int64_t key) {
  return 0x7FFFFFFF - static_cast<int32_t>(static_cast<uint32_t>(static_cast<uint64_t>(key) & 0xFFFFFFFFull));
}

struct MaxOp {
  template <typename T>
  __device__ __forceinline__ T operator()(const T& a, const T& b) const {
    return a < b ? b : a;
  }
};

// ------------------------------------------------------------------ block top-K
// A block keeps the K largest keys of a stream in shared memory: keys[0, K) hold the
// current best, sorted descending after every flush; newcomers above the K-th best
// are appended at keys[K + n) (shared atomic); a flush bitonic-sorts the used prefix.
// The caller flushes whenever fewer than `chunk` free slots remain, so one chunk of
// pushes (at most `chunk` keys) never overflows. Capacity: a power of two >= K + 2·chunk.
// Keys must be distinct (they are: the index is in the key).
struct BlockTopK {
  int64_t* keys;  // [cap] shared
  int* n_new;     // shared counter
  int64_t* thr;   // shared: the K-th best (kKeyMin while fewer than K were seen)
  int K, cap;

  __device__ void init() {
    for (int i = threadIdx.x; i < cap; i += blockDim.x) keys[i] = kKeyMin;
    if (threadIdx.x == 0) {
      *n_new = 0;
      *thr = kKeyMin;
    }
    __syncthreads();
  }

  // Any thread, between syncs: offer one key.
  __device__ __forceinline__ void push(int64_t key, int64_t threshold) {
    if (key > threshold) {
      const int pos = atomicAdd(n_new, 1);
      keys[K + pos] = key;
    }
  }

  // All threads, after a __syncthreads() that follows the pushes.
  __device__ void flush() {
    const int used = K + *n_new;
    int n = 1;
    while (n < used) n <<= 1;
    for (int i = used + threadIdx.x; i < n; i += blockDim.x) keys[i] = kKeyMin;
    __syncthreads();
    // bitonic sort, descending, of keys[0, n)
    for (int size = 2; size <= n; size <<= 1) {
      for (int stride = size >> 1; stride > 0; stride >>= 1) {
        for (int i = threadIdx.x; i < n / 2; i += blockDim.x) {
          const int lo = 2 * stride * (i / stride) + (i % stride);
          const int hi = lo + stride;
          const bool desc = (lo & size) == 0 || size == n;
          const int64_t a = keys[lo], b = keys[hi];
          if ((a < b) == desc) {
            keys[lo] = b;
            keys[hi] = a;
          }
        }
        __syncthreads();
      }
    }
    for (int i = K + threadIdx.x; i < n; i += blockDim.x) keys[i] = kKeyMin;
    if (threadIdx.x == 0) {
      *n_new = 0;
      *thr = keys[K - 1];
    }
    __syncthreads();
  }

  // All threads, after the __syncthreads() that follows a chunk of pushes. The counter
  // is read by every thread before the barrier, so the decision is uniform and no
  // thread can start pushing the next chunk while another still reads it.
  __device__ void flush_if_full(int chunk) {
    const int n = *n_new;
    __syncthreads();
    if (n > cap - K - chunk) flush();
  }

  // All threads, after the last pushes' __syncthreads(): sort whatever is pending.
  __device__ void finish() {
    const int n = *n_new;
    __syncthreads();
    if (n > 0) flush();
  }
};

}  // namespace fuq
