// fuq truncation, CUDA: top-h, top-k, top-p, min-p, typical, epsilon, eta, top-nσ, p-less.
//
// Torch-free: raw pointers and a stream. Same algorithm and tie rule as the Triton kernel
// (triton_kernels/truncate.py, whose docstring explains it): one block per row, the knobs
// in Hugging Face's order, each on the output of the previous one. A cut is a threshold on
// p or z, or a position in a strict order of the row ((prim asc, token id asc), packed in
// an int64), found by a 16-way search: (32 + id bits) / 4 block-wide passes, each summing
// the weights below 16 pivots. Top-k and thresholds keep ties; top-p, typical and top-h
// keep a prefix of their order. No sort. Divisions and square roots that decide a kept
// set are round-to-nearest (__fdiv_rn, __fsqrt_rn), as on the CPU.
//
// One block per row only: the split-row variant of the Triton path (small batches over
// every SM) is not ported yet; see the status note of fuq::truncate in the README.
//
// Status: compile-checked with nvcc for sm_80 and sm_90 (csrc/check_cuda.sh);
// not yet run on a GPU.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <cub/block/block_reduce.cuh>
#include <cuda/functional>

namespace fuq {

// Knob values that mean "off": top_k <= 0, the floats < 0, p_less false.
struct TruncateParams {
  float temperature;
  int top_k;
  float top_p;
  float min_p;
  float typical_p;
  float epsilon;
  float eta;
  float top_h;
  float top_n_sigma;
  bool p_less;
  int min_tokens_to_keep;
};

namespace truncate_detail {

constexpr int kPiv = 16;  // pivots per search round: 4 bits of a position per pass
constexpr int64_t kOff = int64_t{1} << 31;

// Order-preserving int32 of a float32 (no NaN), -0.0 folded onto +0.0.
__device__ __forceinline__ int32_t vkey(float z) {
  const int32_t b = __float_as_int(z);
  const int32_t k = b >= 0 ? b : (b ^ 0x7FFFFFFF);
  return z == 0.f ? 0 : k;
}

// Position in the order "z descending" with no id bits: a value key (ties equal).
__device__ __forceinline__ int64_t vpos(float z) { return static_cast<int64_t>(-1 - vkey(z)) + kOff; }

template <typename T>
__device__ __forceinline__ float to_float(T x);
template <>
__device__ __forceinline__ float to_float<float>(float x) { return x; }
template <>
__device__ __forceinline__ float to_float<__half>(__half x) { return __half2float(x); }
template <>
__device__ __forceinline__ float to_float<__nv_bfloat16>(__nv_bfloat16 x) { return __bfloat162float(x); }

template <int BLOCK>
struct Smem {
  typename cub::BlockReduce<float, BLOCK>::TempStorage reduce;
  float bcast;
  float piv[BLOCK / 32][kPiv];
  float sums[kPiv];
};

template <int BLOCK>
__device__ float block_sum(float v, Smem<BLOCK>& sm) {
  float r = cub::BlockReduce<float, BLOCK>(sm.reduce).Sum(v);
  if (threadIdx.x == 0) sm.bcast = r;
  __syncthreads();
  float out = sm.bcast;
  __syncthreads();
  return out;
}

template <int BLOCK>
__device__ float block_max(float v, Smem<BLOCK>& sm) {
  float r = cub::BlockReduce<float, BLOCK>(sm.reduce).Reduce(v, cuda::maximum<>{});
  if (threadIdx.x == 0) sm.bcast = r;
  __syncthreads();
  float out = sm.bcast;
  __syncthreads();
  return out;
}

// The row's statistics over its live tokens, and top-h's scale (see Row::weight).
struct Row {
  float m, lse, H, p2, zmean, n, n0, m2, s;
  float logs, wtop, mref;  // top-h: log S, the top token's scaled term, the exponentials' reference

  // pmode 0: z descending; 1: typical, |-log p - H| ascending. Then the token id (idb bits).
  __device__ __forceinline__ int64_t pos(float z, int idx, int idb, int pmode) const {
    const int32_t prim = pmode == 0 ? -1 - vkey(z) : vkey(fabsf(-(z - lse) - H));
    const int64_t ids = idb > 0 ? static_cast<int64_t>(idx) : 0;
    return ((static_cast<int64_t>(prim) + kOff) << idb) | ids;
  }
  // wmode 0: 1; 1: p; 2: top-h's entropy term scaled by S·e^{m - mref}. z is live.
  __device__ __forceinline__ float weight(float z, int wmode) const {
    if (wmode == 0) return 1.f;
    if (wmode == 1) return expf(z - lse);
    return z == m ? wtop : expf(z - mref) * (logs + (m - z));
  }
};

// Row max, then the moments relative to it (one pass): lse, H, Σp², mean z, #live, #max, runner-up.
template <int BLOCK>
__device__ Row row_stats(const float* z, int V, Smem<BLOCK>& sm) {
  Row r{};
  float mv = -INFINITY;
  for (int i = threadIdx.x; i < V; i += BLOCK) mv = fmaxf(mv, z[i]);
  r.m = block_max<BLOCK>(mv, sm);
  float s = 0.f, t = 0.f, q = 0.f, n = 0.f, sd = 0.f, n0 = 0.f, m2 = -INFINITY;
  for (int i = threadIdx.x; i < V; i += BLOCK) {
    const float x = z[i];
    if (x > -INFINITY) {
      const float d = x - r.m, e = expf(d);
      s += e;
      t += e * d;
      q += e * e;
      n += 1.f;
      sd += d;
      n0 += x == r.m ? 1.f : 0.f;
      if (x < r.m) m2 = fmaxf(m2, x);
    }
  }
  r.s = block_sum<BLOCK>(s, sm);
  t = block_sum<BLOCK>(t, sm);
  q = block_sum<BLOCK>(q, sm);
  r.n = block_sum<BLOCK>(n, sm);
  sd = block_sum<BLOCK>(sd, sm);
  r.n0 = block_sum<BLOCK>(n0, sm);
  r.m2 = block_max<BLOCK>(m2, sm);
  const float logs = logf(r.s);
  r.lse = r.m + logs;  // all -inf row: -inf
  r.H = logs - __fdiv_rn(t, r.s);
  r.p2 = __fdiv_rn(q, r.s * r.s);
  r.zmean = r.m + __fdiv_rn(sd, fmaxf(r.n, 1.f));
  r.logs = logs;
  r.wtop = logs;
  r.mref = r.m;
  return r;
}

// Top-h's scale: all terms times S·e^{m - mref}. A lone max with a runner-up g nats below:
// mref = m2, x = e^{-g}·Σe^{z - m2} (S = 1 + x), the top term e^{g}·log1p(x) = r2·log1p(x)/x.
template <int BLOCK>
__device__ void top_h_scale(const float* z, int V, Row& r, Smem<BLOCK>& sm) {
  float rv = 0.f;
  for (int i = threadIdx.x; i < V; i += BLOCK) {
    const float x = z[i];
    if (x > -INFINITY && x < r.m) rv += expf(x - r.m2);
  }
  const float r2 = block_sum<BLOCK>(rv, sm);
  const bool alone = r.n0 == 1.f && r.m2 > -INFINITY;
  const float x = (alone ? expf(r.m2 - r.m) : 1.f) * r2;
  const float u = 1.f + x;
  const float ratio = u == 1.f ? 1.f - 0.5f * x : __fdiv_rn(logf(u), u - 1.f);  // log1p(x) / x
  r.logs = alone ? ratio * x : logf(r.s);
  r.wtop = alone ? r2 * ratio : r.logs;
  r.mref = alone ? r.m2 : r.m;
}

// The smallest position whose inclusive cumulative weight meets the target (> if strict,
// else >=): nbits / 4 rounds, each one pass summing the weights below 16 pivots. Never met:
// the last position 2^nbits - 1 (keep all).
template <int BLOCK>
__device__ int64_t search(const float* z, int V, int nbits, float target, bool strict, const Row& r, int idb,
                          int pmode, int wmode, Smem<BLOCK>& sm) {
  int64_t base = 0, step = int64_t{1} << (nbits - 4);
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  for (int round = 0; round < nbits / 4; ++round) {
    float acc[kPiv];
#pragma unroll
    for (int b = 0; b < kPiv; ++b) acc[b] = 0.f;
    for (int i = threadIdx.x; i < V; i += BLOCK) {
      const float x = z[i];
      if (!(x > -INFINITY)) continue;
      const float w = r.weight(x, wmode);
      const int64_t p = r.pos(x, i, idb, pmode);
      // pivot b = base + (b + 1)·step - 1 is >= p from b0 = floor((p - base) / step) on
      const int64_t b0 = p < base ? 0 : (p - base) / step;
#pragma unroll
      for (int b = 0; b < kPiv; ++b) acc[b] += b >= b0 ? w : 0.f;
    }
#pragma unroll
    for (int b = 0; b < kPiv; ++b) {
      float v = acc[b];
      for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
      if (lane == 0) sm.piv[warp][b] = v;
    }
    __syncthreads();
    if (threadIdx.x < kPiv) {
      float v = 0.f;
      for (int w = 0; w < BLOCK / 32; ++w) v += sm.piv[w][threadIdx.x];
      sm.sums[threadIdx.x] = v;
    }
    __syncthreads();
    int hit = kPiv - 1;
    for (int b = kPiv - 2; b >= 0; --b) {
      const float v = sm.sums[b];
      if (strict ? v > target : v >= target) hit = b;
    }
    __syncthreads();
    base += hit * step;
    step /= kPiv;
  }
  return base;
}

__host__ __device__ inline int id_bits(int V) {  // a multiple of 4 with 2^bits >= V
  int b = 0;
  while (b < 31 && (int64_t{1} << b) < V) ++b;
  return (b + 3) / 4 * 4;
}

enum Knob { kTopH = 0, kTopK, kTopP, kMinP, kTypical, kEpsilon, kEta, kTopNSigma, kPLess };

// One knob on one row (one block), in place, by the tie rule of fuq.reference.
template <int BLOCK>
__device__ void apply_knob(float* z, int V, int idb, int knob, float param, int min_keep, Smem<BLOCK>& sm) {
  Row r = row_stats<BLOCK>(z, V, sm);
  const int nb = 32 + idb;
  int64_t X = 0, Y = 0, KV = vpos(r.m);  // thresholds keep the max
  float cut = 0.f, zcut = -INFINITY;
  switch (knob) {
    case kTopK:
      X = search<BLOCK>(z, V, 32, param, false, r, 0, 0, 0, sm);
      break;
    case kTopP:
    case kTypical: {
      const int pm = knob == kTopP ? 0 : 1;
      X = search<BLOCK>(z, V, nb, param, false, r, idb, pm, 1, sm);
      if (min_keep > 1) Y = search<BLOCK>(z, V, nb, float(min_keep), false, r, idb, pm, 0, sm);
      break;
    }
    case kTopH: {
      top_h_scale<BLOCK>(z, V, r, sm);
      float hv = 0.f;
      for (int i = threadIdx.x; i < V; i += BLOCK)
        if (z[i] > -INFINITY) hv += r.weight(z[i], 2);
      const float bound = fmaxf(param * block_sum<BLOCK>(hv, sm), r.wtop);  // the first token always kept
      X = search<BLOCK>(z, V, nb, bound, true, r, idb, 0, 2, sm);
      break;
    }
    case kTopNSigma: {
      float dv = 0.f;
      for (int i = threadIdx.x; i < V; i += BLOCK) {
        const float d = z[i] > -INFINITY ? z[i] - r.zmean : 0.f;
        dv += d * d;
      }
      const float zvar = __fdiv_rn(block_sum<BLOCK>(dv, sm), fmaxf(r.n - 1.f, 1.f));  // as torch.std
      zcut = r.m - param * __fsqrt_rn(zvar);
      break;
    }
    default:
      if (knob == kMinP) cut = param * expf(r.m - r.lse);
      else if (knob == kEpsilon) cut = param;
      else if (knob == kEta) cut = fminf(param, __fsqrt_rn(param) * expf(-r.H));
      else cut = r.p2;  // p-less
      if (min_keep > 1) KV = search<BLOCK>(z, V, 32, float(min_keep), false, r, 0, 0, 0, sm);
      break;
  }
  // write -inf over the removed tokens
  for (int i = threadIdx.x; i < V; i += BLOCK) {
    const float x = z[i];
    bool keep;
    if (knob == kTopK) keep = vpos(x) <= X;
    else if (knob == kTopP) keep = r.pos(x, i, idb, 0) <= (X > Y ? X : Y);
    else if (knob == kTypical) keep = r.pos(x, i, idb, 1) <= (X > Y ? X : Y);
    else if (knob == kTopH) keep = r.pos(x, i, idb, 0) < X;
    else if (knob == kTopNSigma) keep = x >= zcut;
    else keep = expf(x - r.lse) >= cut || vpos(x) <= KV;
    if (!(keep && x > -INFINITY)) z[i] = -INFINITY;
  }
  __syncthreads();
}

template <typename T, int BLOCK>
__global__ void __launch_bounds__(BLOCK) truncate_kernel(const T* __restrict__ x, int64_t x_stride, float* out,
                                                         int64_t out_stride, int V, TruncateParams P) {
  __shared__ Smem<BLOCK> sm;
  const int64_t row = blockIdx.x;
  const T* xr = x + row * x_stride;
  float* z = out + row * out_stride;
  // A row holding NaN or +inf comes back all NaN (as fuq.reference.truncate).
  float badv = 0.f;
  for (int i = threadIdx.x; i < V; i += BLOCK) {
    float v = __fdiv_rn(to_float<T>(xr[i]), P.temperature);
    badv = (v != v || v == INFINITY) ? 1.f : badv;
  }
  const bool bad = block_max<BLOCK>(badv, sm) > 0.f;
  for (int i = threadIdx.x; i < V; i += BLOCK) z[i] = bad ? NAN : __fdiv_rn(to_float<T>(xr[i]), P.temperature);
  __syncthreads();
  if (bad) return;
  const int idb = id_bits(V);
  const int mk = P.min_tokens_to_keep < V ? P.min_tokens_to_keep : V;
  if (P.top_h >= 0.f) apply_knob<BLOCK>(z, V, idb, kTopH, P.top_h, 1, sm);
  if (P.top_k > 0) {
    int k = P.top_k > mk ? P.top_k : mk;
    apply_knob<BLOCK>(z, V, idb, kTopK, float(k < V ? k : V), 1, sm);
  }
  if (P.top_p >= 0.f) apply_knob<BLOCK>(z, V, idb, kTopP, P.top_p, mk, sm);
  if (P.min_p >= 0.f) apply_knob<BLOCK>(z, V, idb, kMinP, P.min_p, mk, sm);
  if (P.typical_p >= 0.f) apply_knob<BLOCK>(z, V, idb, kTypical, P.typical_p, mk, sm);
  if (P.epsilon >= 0.f) apply_knob<BLOCK>(z, V, idb, kEpsilon, P.epsilon, mk, sm);
  if (P.eta >= 0.f) apply_knob<BLOCK>(z, V, idb, kEta, P.eta, mk, sm);
  if (P.top_n_sigma >= 0.f) apply_knob<BLOCK>(z, V, idb, kTopNSigma, P.top_n_sigma, 1, sm);
  if (P.p_less) apply_knob<BLOCK>(z, V, idb, kPLess, 0.f, 1, sm);
}

}  // namespace truncate_detail

// logits [B, V] (row stride x_stride, unit column stride) -> out [B, V] float32.
template <typename T>
cudaError_t truncate(const T* logits, int64_t x_stride, float* out, int64_t out_stride, int B, int V,
                     const TruncateParams& params, cudaStream_t stream) {
  if (B <= 0 || V <= 0) return cudaSuccess;
  constexpr int kBlock = 512;
  truncate_detail::truncate_kernel<T, kBlock><<<B, kBlock, 0, stream>>>(logits, x_stride, out, out_stride, V, params);
  return cudaGetLastError();
}

}  // namespace fuq
