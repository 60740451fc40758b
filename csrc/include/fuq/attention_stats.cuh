// fuq::attention_stats, CUDA: per-key attention mass (summed over query rows and the GQA
// group), per-row attention entropy and lse.
//
// Torch-free: raw pointers and a stream (the binding is csrc/cuda/attention_stats.cu). The
// rows of one (batch, KV head) pair bh are the G = (Hq / Hkv) * Lq query rows of its group,
// adjacent in q ([B * Hkv, G, d] float32, converted by the caller). Same three passes as
// the Triton kernels (triton_kernels/attention_stats.py):
//
//   pass 1  attention_partial_kernel   grid (B * Hkv, splits, cdiv(G, 16)), 128 threads:
//           16 query rows in shared memory against one segment of the keys; each warp
//           takes one key at a time (lanes over d), 16 dot products reduced by shuffles;
//           lane r folds row r's score into its online state (common.cuh). The warps'
//           states are merged at the end; one partial (m, s, t, #bad) per row and split.
//           With `keep`, the scores are written to a [B * Hkv, G, T] float32 scratch.
//   pass 2  attention_finalize_kernel  one thread per row: the splits merged -> lse, entropy.
//   pass 3  attention_mass_kernel      a tile of keys: mass[j] = Σ_rows exp(s - lse), from the
//           kept scores (one thread per key, coalesced) or recomputed from K (a warp per key).
//
// Passes over K: one when the scores are kept (G * 4 bytes per key <= the key's d * itemsize:
// decoding), two otherwise: the mass needs every row's final lse, known only after the last
// key, so the scores either wait in memory or are recomputed.
//
// Semantics are those of fuq/reference.py: a row with no allowed key has lse = -inf, NaN
// entropy and adds nothing; a row with a NaN / +inf score has NaN lse and entropy and adds
// NaN to each key it may attend.
//
// Status: compile-checked with nvcc for sm_80 and sm_90 (csrc/check_cuda.sh); not yet run on
// a GPU (no GPU in the session that wrote it): run it through bench/gpu_check.sh first.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "fuq/common.cuh"

namespace fuq {

constexpr int kAttnThreads = 128;  // 4 warps
constexpr int kAttnWarps = kAttnThreads / 32;
constexpr int kAttnRows = 16;           // query rows per block of pass 1 (lane r holds row r)
constexpr int kAttnKeysPerBlock = 128;  // keys per block of pass 3
constexpr int kAttnMaxD = 2048;         // q rows in shared memory: kAttnRows * d * 4 bytes <= 128 KiB

struct AttentionStatsArgs {
  const float* q;  // [BH, G, d] float32
  const void* k;   // [B, Hkv, T, d] (element type T), last dim contiguous
  int64_t sk_b, sk_h, sk_t;
  const uint8_t* mask;  // nullptr, or bool [B, Lq | 1, T] with strides sm_b, sm_i, sm_t
  int64_t sm_b, sm_i, sm_t;
  int64_t BH, Hkv, G, Lq, T, d;
  float scale;
  bool causal;
  int64_t window;  // 0: none
};

struct AttentionStatsPlan {
  int splits;
  int64_t seg;  // keys per split
  bool keep;    // scores kept in scratch (one pass over K)
  int64_t state_floats;  // BH * splits * G * 4
  int64_t kept_floats;   // BH * G * T when keep, else 0
  size_t smem_partial;   // dynamic shared memory of pass 1 (and of pass 3 without keep)
};

inline AttentionStatsPlan attention_stats_plan(int64_t BH, int64_t G, int64_t T, int64_t d, int itemsize,
                                               int num_sms) {
  AttentionStatsPlan p{};
  const int64_t row_blocks = (G + kAttnRows - 1) / kAttnRows;
  const int64_t target = 4 * static_cast<int64_t>(num_sms);
  const int64_t tiles = (T + 31) / 32;
  int64_t splits = (target + BH * row_blocks - 1) / (BH * row_blocks);
  splits = splits < 1 ? 1 : (splits > tiles ? tiles : splits);
  p.seg = (T + splits - 1) / splits;
  p.splits = static_cast<int>((T + p.seg - 1) / p.seg);
  p.keep = G * 4 <= d * itemsize;
  p.state_floats = BH * p.splits * G * 4;
  p.kept_floats = p.keep ? BH * G * T : 0;
  p.smem_partial = static_cast<size_t>(kAttnRows) * static_cast<size_t>(d) * sizeof(float);
  return p;
}

namespace attn_detail {

__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

// May row r (global row index in the group) attend key j?
__device__ __forceinline__ bool allowed(const AttentionStatsArgs& a, int64_t b, int64_t r, int64_t j) {
  const int64_t i = r % a.Lq;
  const int64_t pos = a.T - a.Lq + i;
  if (a.causal && j > pos) return false;
  if (a.window > 0 && j <= pos - a.window) return false;
  if (a.mask != nullptr && a.mask[b * a.sm_b + i * a.sm_i + j * a.sm_t] == 0) return false;
  return true;
}

// q_s [kAttnRows, d] (shared) dotted with key kj: acc[r] = Σ_e q_s[r, e] kj[e], in every lane.
template <typename T>
__device__ __forceinline__ void warp_dots(const float* q_s, const T* __restrict__ kj, int64_t d, int lane,
                                          float (&acc)[kAttnRows]) {
#pragma unroll
  for (int r = 0; r < kAttnRows; ++r) acc[r] = 0.f;
  for (int64_t e = lane; e < d; e += 32) {
    const float kv = load_as_float(kj + e);
#pragma unroll
    for (int r = 0; r < kAttnRows; ++r) acc[r] = fmaf(q_s[r * d + e], kv, acc[r]);
  }
#pragma unroll
  for (int r = 0; r < kAttnRows; ++r) acc[r] = warp_sum(acc[r]);
}

// acc[lane] without dynamic register indexing (lane < kAttnRows), else 0.
__device__ __forceinline__ float pick(const float (&acc)[kAttnRows], int lane) {
  float v = 0.f;
#pragma unroll
  for (int r = 0; r < kAttnRows; ++r) v = lane == r ? acc[r] : v;
  return v;
}

// Rows [r0, r0 + kAttnRows) of pair bh into shared memory (zeros past G).
__device__ __forceinline__ void load_rows(const AttentionStatsArgs& a, int64_t bh, int64_t r0, float* q_s) {
  for (int64_t x = threadIdx.x; x < kAttnRows * a.d; x += blockDim.x) {
    const int64_t r = r0 + x / a.d;
    q_s[x] = r < a.G ? a.q[(bh * a.G + r) * a.d + x % a.d] : 0.f;
  }
}

template <typename T>
__device__ __forceinline__ const T* key_ptr(const AttentionStatsArgs& a, int64_t bh, int64_t j) {
  return static_cast<const T*>(a.k) + (bh / a.Hkv) * a.sk_b + (bh % a.Hkv) * a.sk_h + j * a.sk_t;
}

}  // namespace attn_detail

// Pass 1. state: [BH, splits, G, 4] (m, s, t, #bad); kept: [BH, G, T] or null.
// Dynamic shared memory: kAttnRows * d floats.
template <typename T>
__global__ void __launch_bounds__(kAttnThreads)
    attention_partial_kernel(AttentionStatsArgs a, int64_t seg, float* __restrict__ state, float* __restrict__ kept) {
  using namespace attn_detail;
  extern __shared__ float fuq_attn_q[];
  __shared__ OnlineState warp_state[kAttnWarps][kAttnRows];
  __shared__ int warp_bad[kAttnWarps][kAttnRows];
  const int64_t bh = blockIdx.x, b = bh / a.Hkv;
  const int split = blockIdx.y, n_splits = gridDim.y;
  const int64_t r0 = static_cast<int64_t>(blockIdx.z) * kAttnRows;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  load_rows(a, bh, r0, fuq_attn_q);
  __syncthreads();

  const int64_t r = r0 + lane;  // the row this lane tracks (lane < kAttnRows)
  const bool tracks = lane < kAttnRows && r < a.G;
  OnlineState st = online_empty();
  int n_bad = 0;
  int64_t lo = split * seg;
  const int64_t hi = lo + seg < a.T ? lo + seg : a.T;
  if (a.window > 0) {  // keys before every row's window are never read
    const int64_t first = a.T - a.Lq - a.window + 1;
    lo = lo > first ? lo : first;
  }
  float acc[kAttnRows];
  for (int64_t j = lo + warp; j < hi; j += kAttnWarps) {
    warp_dots(fuq_attn_q, key_ptr<T>(a, bh, j), a.d, lane, acc);
    if (tracks) {
      float z = allowed(a, b, r, j) ? pick(acc, lane) * a.scale : -INFINITY;
      if (kept != nullptr) kept[(bh * a.G + r) * a.T + j] = z;
      if (z != z || z == INFINITY) {
        ++n_bad;
        z = -INFINITY;
      }
      online_update(st, z);
    }
  }
  if (lane < kAttnRows) {
    warp_state[warp][lane] = st;
    warp_bad[warp][lane] = n_bad;
  }
  __syncthreads();
  if (threadIdx.x < kAttnRows && r0 + threadIdx.x < a.G) {
    OnlineState m = warp_state[0][threadIdx.x];
    int bad = warp_bad[0][threadIdx.x];
    for (int w = 1; w < kAttnWarps; ++w) {
      m = online_merge(m, warp_state[w][threadIdx.x]);
      bad += warp_bad[w][threadIdx.x];
    }
    float* out = state + ((bh * n_splits + split) * a.G + r0 + threadIdx.x) * 4;
    out[0] = m.m;
    out[1] = m.s;
    out[2] = m.t;
    out[3] = static_cast<float>(bad);
  }
}

// Pass 2: one thread per row of [BH * G]; lse and entropy share that layout ([B, Hq, Lq]).
// (static: a header may be included by several translation units of one program)
static __global__ void __launch_bounds__(kAttnThreads)
    attention_finalize_kernel(const float* __restrict__ state, int n_splits, int64_t BH, int64_t G,
                              float* __restrict__ lse, float* __restrict__ entropy) {
  const int64_t o = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (o >= BH * G) return;
  const int64_t bh = o / G, r = o % G;
  OnlineState st = online_empty();
  float bad = 0.f;
  for (int sp = 0; sp < n_splits; ++sp) {
    const float* p = state + ((bh * n_splits + sp) * G + r) * 4;
    st = online_merge(st, OnlineState{p[0], p[1], p[2], 0.f});
    bad += p[3];
  }
  if (bad > 0.f) {
    lse[o] = NAN;
    entropy[o] = NAN;
  } else if (st.m == -INFINITY) {  // no allowed key
    lse[o] = -INFINITY;
    entropy[o] = NAN;
  } else {
    const float log_s = logf(st.s);
    lse[o] = st.m + log_s;
    entropy[o] = log_s - st.t / st.s;
  }
}

// Pass 3 from kept scores: one thread per key, rows in a loop (coalesced across the keys).
static __global__ void __launch_bounds__(kAttnThreads)
    attention_mass_kept_kernel(AttentionStatsArgs a, const float* __restrict__ lse, const float* __restrict__ kept,
                               float* __restrict__ mass) {
  using namespace attn_detail;
  const int64_t bh = blockIdx.x, b = bh / a.Hkv;
  const int64_t j = static_cast<int64_t>(blockIdx.y) * blockDim.x + threadIdx.x;
  if (j >= a.T) return;
  float acc = 0.f;
  for (int64_t r = 0; r < a.G; ++r) {
    const float l = lse[bh * a.G + r];
    if (l == -INFINITY || !allowed(a, b, r, j)) continue;
    acc += __expf(kept[(bh * a.G + r) * a.T + j] - l);  // NaN l: NaN, as the reference
  }
  mass[bh * a.T + j] = acc;
}

// Pass 3 recomputing the scores: block = kAttnKeysPerBlock keys, rows in chunks of kAttnRows
// (shared memory), a warp per key. Dynamic shared memory: kAttnRows * d floats.
template <typename T>
__global__ void __launch_bounds__(kAttnThreads)
    attention_mass_recompute_kernel(AttentionStatsArgs a, const float* __restrict__ lse, float* __restrict__ mass) {
  using namespace attn_detail;
  extern __shared__ float fuq_attn_q[];
  __shared__ float mass_s[kAttnKeysPerBlock];
  const int64_t bh = blockIdx.x, b = bh / a.Hkv;
  const int64_t j0 = static_cast<int64_t>(blockIdx.y) * kAttnKeysPerBlock;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  for (int x = threadIdx.x; x < kAttnKeysPerBlock; x += blockDim.x) mass_s[x] = 0.f;
  float acc[kAttnRows];
  for (int64_t r0 = 0; r0 < a.G; r0 += kAttnRows) {
    __syncthreads();  // the previous chunk's rows are no longer read
    load_rows(a, bh, r0, fuq_attn_q);
    __syncthreads();
    const int64_t r = r0 + lane;
    const float l = (lane < kAttnRows && r < a.G) ? lse[bh * a.G + r] : -INFINITY;
    for (int x = warp; x < kAttnKeysPerBlock && j0 + x < a.T; x += kAttnWarps) {
      const int64_t j = j0 + x;
      warp_dots(fuq_attn_q, key_ptr<T>(a, bh, j), a.d, lane, acc);
      float p = 0.f;
      if (l != -INFINITY && allowed(a, b, r, j)) p = __expf(pick(acc, lane) * a.scale - l);
      p = warp_sum(p);
      if (lane == 0) mass_s[x] += p;  // key x belongs to this warp alone
    }
  }
  __syncthreads();
  for (int x = threadIdx.x; x < kAttnKeysPerBlock && j0 + x < a.T; x += blockDim.x) mass[bh * a.T + j0 + x] = mass_s[x];
}

// All three passes on `stream`. state / kept: scratch of plan.state_floats / plan.kept_floats.
// Outputs: mass [BH, T], lse and entropy [BH * G]. Requires 1 <= d <= kAttnMaxD, BH, G, T >= 1.
template <typename T>
cudaError_t attention_stats(const AttentionStatsArgs& a, const AttentionStatsPlan& plan, float* state, float* kept,
                            float* mass, float* entropy, float* lse, cudaStream_t stream) {
  if (plan.smem_partial > 48 * 1024) {
    cudaError_t e = cudaFuncSetAttribute(attention_partial_kernel<T>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                         static_cast<int>(plan.smem_partial));
    if (e != cudaSuccess) return e;
    e = cudaFuncSetAttribute(attention_mass_recompute_kernel<T>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                             static_cast<int>(plan.smem_partial));
    if (e != cudaSuccess) return e;
  }
  const dim3 g1(static_cast<unsigned>(a.BH), static_cast<unsigned>(plan.splits),
                static_cast<unsigned>((a.G + kAttnRows - 1) / kAttnRows));
  attention_partial_kernel<T><<<g1, kAttnThreads, plan.smem_partial, stream>>>(a, plan.seg, state,
                                                                             plan.keep ? kept : nullptr);
  const unsigned g2 = static_cast<unsigned>((a.BH * a.G + kAttnThreads - 1) / kAttnThreads);
  attention_finalize_kernel<<<g2, kAttnThreads, 0, stream>>>(state, plan.splits, a.BH, a.G, lse, entropy);
  if (plan.keep) {
    const dim3 g3(static_cast<unsigned>(a.BH), static_cast<unsigned>((a.T + kAttnThreads - 1) / kAttnThreads));
    attention_mass_kept_kernel<<<g3, kAttnThreads, 0, stream>>>(a, lse, kept, mass);
  } else {
    const dim3 g3(static_cast<unsigned>(a.BH),
                  static_cast<unsigned>((a.T + kAttnKeysPerBlock - 1) / kAttnKeysPerBlock));
    attention_mass_recompute_kernel<T><<<g3, kAttnThreads, plan.smem_partial, stream>>>(a, lse, mass);
  }
  return cudaGetLastError();
}

}  // namespace fuq
