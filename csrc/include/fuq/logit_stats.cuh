// fuq::logit_stats, CUDA: lse, entropy, varentropy, max log-prob / argmax, top-k,
// top-k mass and a token's log-prob of each row of logits, in one pass over the row.
//
// Torch-free: raw pointers and a stream (the binding is csrc/cuda/logit_stats.cu).
// Same split-V algorithm as the Triton kernel (triton_kernels/logit_stats.py):
//
//   pass 1  logit_stats_partial_kernel   grid (B, splits), 256 threads: each block
//           streams its segment of a row once, with per-thread online states
//           (common.cuh) merged by a CUB block reduction, NaN / +inf counts, and a
//           block top-K_PAD (shared-memory candidates + bitonic flushes). Writes one
//           partial state and K_PAD candidate keys (or its max key when k = 0).
//   pass 2  logit_stats_finalize_kernel  grid (B): merges the partial states of its
//           row, streams the row's splits·K_PAD candidates through a block top-K_PAD,
//           gathers the token's log-prob, and writes all outputs.
//
// With out.extra set (the density-free sums, alpha > 0), pass 1 also keeps per-thread
// DensityState sums (common.cuh) merged with the online states, and pass 2 writes
// extra [B, 4]: Σ log p over the live entries, their number, log Σ p^alpha, log Σ √p
// (fuq.reference.density_free; all NaN for a row whose entropy is NaN).
//
// k > kLogitStatsKMax takes the candidate-free route: the caller fills `sel` with the
// k largest packed keys of each row, sorted descending (logit_stats_row_keys + a sort;
// the binding uses torch.topk), and pass 2 only decodes them.
//
// Semantics are those of fuq/reference.py: z = x / T (IEEE float32 division), -inf
// entries contribute 0, top-k in (z desc, index asc) order, an all -inf row gives
// lse = -inf and NaN stats, a row with NaN gives NaN lse (+inf without NaN: lse = +inf,
// as torch.logsumexp) and NaN stats and log-probs; ids stay in [0, V).
//
// Status: compile-checked with nvcc for sm_80 and sm_90 (csrc/check_cuda.sh); run on a
// GPU only through bench/gpu_check.sh.
#pragma once

#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>
#include <cub/block/block_reduce.cuh>

#include "fuq/common.cuh"

namespace fuq {

constexpr int kLogitStatsKMax = 1024;  // largest k served by the block top-K
constexpr int kLogitStatsThreads = 256;
constexpr int kLogitStatsItems = 4;  // per thread per chunk
constexpr int kLogitStatsChunk = kLogitStatsThreads * kLogitStatsItems;

// Output pointers, all [B] (device memory) except topk_* [B, k]; token_logprob may be
// null when there are no tokens.
struct LogitStatsOut {
  float* lse;
  float* entropy;
  float* varentropy;
  float* max_logprob;
  int64_t* argmax;
  float* topk_logprobs;
  int64_t* topk_ids;
  float* topk_mass;
  float* token_logprob;
  float* extra;  // [B, 4], or null: the density-free sums are off
};

// How a call is split; sizes of the two scratch buffers the caller allocates.
struct LogitStatsPlan {
  int splits;      // programs per row
  int seg;         // entries per program (a multiple of the chunk)
  int k_pad;       // running top-K size per block (0: k = 0 or k > kLogitStatsKMax)
  int cap;         // shared candidate slots per block (0 when k_pad = 0)
  bool needs_sel;  // k > kLogitStatsKMax: the caller supplies sorted keys [B, k]
  int ns;          // floats of one partial state: 6, or 10 with the density-free sums
  int64_t state_floats;  // B * splits * ns
  int64_t cand_keys;     // B * splits * max(k_pad, 1)
};

inline int logit_stats_pow2(int n) {
  int p = 1;
  while (p < n) p <<= 1;
  return p;
}

// num_sms: the device's multiprocessor count (sizes the grid so small batches fill it).
inline LogitStatsPlan logit_stats_plan(int64_t B, int V, int k, int num_sms, bool extra = false) {
  LogitStatsPlan p{};
  p.ns = extra ? 10 : 6;
  p.needs_sel = k > kLogitStatsKMax;
  p.k_pad = (k == 0 || p.needs_sel) ? 0 : logit_stats_pow2(k < 2 ? 2 : k);
  p.cap = p.k_pad > 0 ? logit_stats_pow2(p.k_pad + 2 * kLogitStatsChunk) : 0;
  const int64_t chunks = (V + kLogitStatsChunk - 1) / kLogitStatsChunk;
  // ~8 blocks per SM in flight (256 threads, 4 loads each) to cover the memory latency
  const int64_t target = 8LL * (num_sms > 0 ? num_sms : 1);
  int64_t splits = B > 0 ? (target + B - 1) / B : 1;
  if (splits > chunks) splits = chunks;
  if (splits < 1) splits = 1;
  const int64_t per = (V + splits - 1) / splits;
  p.seg = static_cast<int>((per + kLogitStatsChunk - 1) / kLogitStatsChunk * kLogitStatsChunk);
  p.splits = static_cast<int>((V + p.seg - 1) / p.seg);
  p.state_floats = B * p.splits * p.ns;
  p.cand_keys = B * p.splits * (p.k_pad > 0 ? p.k_pad : 1);
  return p;
}

namespace logit_stats_detail {

// A block's partial result: the online state plus NaN / +inf counts (and the density-free
// sums, relative to st.m; zero when they are off).
struct Partial {
  OnlineState st;
  int n_nan, n_inf;
  DensityState ex;
};

template <bool EXTRA>
struct PartialMerge {
  float alpha;
  __device__ __forceinline__ Partial operator()(const Partial& a, const Partial& b) const {
    DensityState ex = density_empty();
    if (EXTRA) ex = density_merge(a.st.m, a.ex, b.st.m, b.ex, alpha);
    return {online_merge(a.st, b.st), a.n_nan + b.n_nan, a.n_inf + b.n_inf, ex};
  }
};

template <int THREADS>
union ReduceStorage {
  typename cub::BlockReduce<Partial, THREADS>::TempStorage partial;
  typename cub::BlockReduce<long long, THREADS>::TempStorage key;
  typename cub::BlockReduce<float, THREADS>::TempStorage sum;
};

__device__ __forceinline__ float apply_t(float x, float temperature, bool has_t) {
  return has_t ? __fdiv_rn(x, temperature) : x;  // x / 1 == x exactly
}

}  // namespace logit_stats_detail

// Pass 1. state: [B, splits, NS] (m, s, t, u, #NaN, #+inf; EXTRA: then sa, sh, sd, n);
// cand: [B, splits, max(k_pad, 1)]. Dynamic shared memory: cap * 8 bytes.
template <typename T, bool EXTRA, int THREADS = kLogitStatsThreads, int ITEMS = kLogitStatsItems>
__global__ void __launch_bounds__(THREADS)
    logit_stats_partial_kernel(const T* __restrict__ x, int64_t stride_row, int V, int seg, float temperature,
                               bool has_t, float alpha, float* __restrict__ state, int64_t* __restrict__ cand,
                               int k_pad, int cap) {
  constexpr int NS = EXTRA ? 10 : 6;
  using namespace logit_stats_detail;
  constexpr int CHUNK = THREADS * ITEMS;
  extern __shared__ int64_t fuq_ls_keys[];
  __shared__ int s_n;
  __shared__ int64_t s_thr;
  __shared__ ReduceStorage<THREADS> s_red;

  const int64_t row = blockIdx.x;
  const int split = blockIdx.y;
  const int n_splits = gridDim.y;
  const T* xr = x + row * stride_row;  // 64-bit row offset
  const int64_t lo = static_cast<int64_t>(split) * seg;
  const int64_t hi = lo + seg < V ? lo + seg : V;

  BlockTopK top{fuq_ls_keys, &s_n, &s_thr, k_pad, cap};
  if (k_pad > 0) top.init();

  OnlineState st = online_empty();
  DensityState ex = density_empty();
  int n_nan = 0, n_inf = 0;
  int64_t kmax = kKeyMin;
  for (int64_t start = lo; start < hi; start += CHUNK) {
    float v[ITEMS];
#pragma unroll
    for (int i = 0; i < ITEMS; ++i) {  // issue every load of the chunk first
      const int64_t idx = start + i * THREADS + threadIdx.x;
      v[i] = idx < hi ? load_as_float(xr + idx) : -INFINITY;
    }
    const int64_t thr = k_pad > 0 ? s_thr : kKeyMin;
#pragma unroll
    for (int i = 0; i < ITEMS; ++i) {
      const int64_t idx = start + i * THREADS + threadIdx.x;
      if (idx < hi) {
        const float z = apply_t(v[i], temperature, has_t);
        n_nan += z != z;
        n_inf += z == INFINITY;
        if (EXTRA) density_update(ex, st.m, z, alpha);  // before st.m moves
        online_update(st, z);
        const int64_t key = pack_key(z, static_cast<int32_t>(idx));
        if (k_pad > 0) {
          top.push(key, thr);
        } else {
          kmax = key > kmax ? key : kmax;
        }
      }
    }
    if (k_pad > 0) {
      __syncthreads();
      top.flush_if_full(CHUNK);
    }
  }
  if (k_pad > 0) {
    __syncthreads();
    top.finish();
  }

  const int64_t slot = row * n_splits + split;
  const Partial r = cub::BlockReduce<Partial, THREADS>(s_red.partial)
                        .Reduce(Partial{st, n_nan, n_inf, ex}, PartialMerge<EXTRA>{alpha});
  if (threadIdx.x == 0) {
    float* o = state + slot * NS;
    o[0] = r.st.m;
    o[1] = r.st.s;
    o[2] = r.st.t;
    o[3] = r.st.u;
    o[4] = static_cast<float>(r.n_nan);
    o[5] = static_cast<float>(r.n_inf);
    if (EXTRA) {
      o[6] = r.ex.sa;
      o[7] = r.ex.sh;
      o[8] = r.ex.sd;
      o[9] = r.ex.n;
    }
  }
  if (k_pad > 0) {
    for (int j = threadIdx.x; j < k_pad; j += THREADS) cand[slot * k_pad + j] = fuq_ls_keys[j];
  } else {
    __syncthreads();  // s_red is reused
    const long long m = cub::BlockReduce<long long, THREADS>(s_red.key).Reduce(static_cast<long long>(kmax), MaxOp{});
    if (threadIdx.x == 0) cand[slot] = m;
  }
}

// Pass 2, one block per row. sel: null, or [B, k] sorted keys (plan.needs_sel).
// tokens: null, or [B] int64 ids (out-of-range ids give NaN, never a read).
// Dynamic shared memory: cap * 8 bytes.
template <typename T, bool EXTRA, int THREADS = kLogitStatsThreads, int ITEMS = kLogitStatsItems>
__global__ void __launch_bounds__(THREADS)
    logit_stats_finalize_kernel(const T* __restrict__ x, int64_t stride_row, int V, float temperature, bool has_t,
                                float alpha, const int64_t* __restrict__ tokens, const float* __restrict__ state,
                                const int64_t* __restrict__ cand, int n_splits, const int64_t* __restrict__ sel, int k,
                                int k_pad, int cap, LogitStatsOut out) {
  using namespace logit_stats_detail;
  constexpr int CHUNK = THREADS * ITEMS;
  constexpr int NS = EXTRA ? 10 : 6;
  extern __shared__ int64_t fuq_ls_keys[];
  __shared__ int s_n;
  __shared__ int64_t s_thr;
  __shared__ ReduceStorage<THREADS> s_red;
  __shared__ float s_lse;
  __shared__ bool s_bad;
  __shared__ long long s_kmax;
  const float nan = __int_as_float(0x7FC00000);

  const int64_t row = blockIdx.x;

  // 1. merge the row's partial states
  const PartialMerge<EXTRA> merge{alpha};
  Partial p{online_empty(), 0, 0, density_empty()};
  for (int i = threadIdx.x; i < n_splits; i += THREADS) {
    const float* o = state + (row * n_splits + i) * NS;
    const DensityState ex = EXTRA ? DensityState{o[6], o[7], o[8], o[9]} : density_empty();
    p = merge(p, Partial{{o[0], o[1], o[2], o[3]}, static_cast<int>(o[4] > 0.f), static_cast<int>(o[5] > 0.f), ex});
  }
  const Partial r = cub::BlockReduce<Partial, THREADS>(s_red.partial).Reduce(p, merge);
  if (threadIdx.x == 0) {
    const bool has_nan = r.n_nan > 0, has_inf = r.n_inf > 0, bad = has_nan || has_inf;
    const float log_s = logf(r.st.s);
    float lse = r.st.m + log_s;  // all -inf row: -inf + log 0 = -inf
    const float mean = r.st.t / r.st.s;  // E_p[z - m]; 0/0 = NaN for an all -inf row
    const float entropy = log_s - mean;
    float var = r.st.u / r.st.s - mean * mean;
    if (var < 0.f) var = 0.f;  // rounding; NaN stays NaN
    lse = has_nan ? nan : (has_inf ? INFINITY : lse);
    out.lse[row] = lse;
    out.entropy[row] = bad ? nan : entropy;
    out.varentropy[row] = bad ? nan : var;
    out.max_logprob[row] = bad ? nan : r.st.m - lse;
    if (EXTRA) {
      float* e = out.extra + row * 4;
      const bool none = bad || r.ex.n == 0.f;  // entropy is NaN: all four NaN
      e[0] = none ? nan : r.ex.sd - r.ex.n * log_s;
      e[1] = none ? nan : r.ex.n;
      e[2] = none ? nan : logf(r.ex.sa) - alpha * log_s;
      e[3] = none ? nan : logf(r.ex.sh) - 0.5f * log_s;
    }
    s_lse = lse;
    s_bad = bad;
  }
  __syncthreads();
  const float lse = s_lse;
  const bool bad = s_bad;

  // 2. the row's top-k keys (smem, or sel) and its max key
  const int64_t* top_keys = nullptr;
  if (sel != nullptr) {
    top_keys = sel + row * k;
    if (threadIdx.x == 0) s_kmax = top_keys[0];
  } else if (k_pad > 0) {
    BlockTopK top{fuq_ls_keys, &s_n, &s_thr, k_pad, cap};
    top.init();
    const int64_t n_cand = static_cast<int64_t>(n_splits) * k_pad;
    const int64_t* c = cand + row * n_cand;
    for (int64_t start = 0; start < n_cand; start += CHUNK) {
      const int64_t thr = s_thr;
#pragma unroll
      for (int i = 0; i < ITEMS; ++i) {
        const int64_t j = start + i * THREADS + threadIdx.x;
        if (j < n_cand) top.push(c[j], thr);
      }
      __syncthreads();
      top.flush_if_full(CHUNK);
    }
    __syncthreads();
    top.finish();
    top_keys = fuq_ls_keys;
    if (threadIdx.x == 0) s_kmax = fuq_ls_keys[0];
  } else {
    long long m = kKeyMin;
    for (int i = threadIdx.x; i < n_splits; i += THREADS) {
      const long long c = cand[row * n_splits + i];
      m = c > m ? c : m;
    }
    __syncthreads();  // s_red is reused
    m = cub::BlockReduce<long long, THREADS>(s_red.key).Reduce(m, MaxOp{});
    if (threadIdx.x == 0) s_kmax = m;
  }
  __syncthreads();
  if (threadIdx.x == 0) out.argmax[row] = key_index(s_kmax);

  // 3. top-k log-probs, ids, mass
  float mass = 0.f;
  for (int j = threadIdx.x; j < k; j += THREADS) {
    const int64_t key = top_keys[j];
    const float lp = bad ? nan : key_value(key) - lse;
    out.topk_logprobs[row * k + j] = lp;
    out.topk_ids[row * k + j] = key_index(key);
    mass += expf(lp);
  }
  __syncthreads();  // s_red is reused
  mass = cub::BlockReduce<float, THREADS>(s_red.sum).Sum(mass);
  if (threadIdx.x == 0) {
    out.topk_mass[row] = mass;
    // 4. the token's log-prob: one guarded gather
    if (tokens != nullptr) {
      const int64_t tok = tokens[row];
      float lp = nan;
      if (tok >= 0 && tok < V && !bad) lp = apply_t(load_as_float(x + row * stride_row + tok), temperature, has_t) - lse;
      out.token_logprob[row] = lp;
    }
  }
}

// keys[b, i] = pack_key(x[b, i] / T, i), [B, V] contiguous: the k > kLogitStatsKMax route.
template <typename T>
__global__ void logit_stats_row_keys_kernel(const T* __restrict__ x, int64_t stride_row, int64_t B, int V,
                                            float temperature, bool has_t, int64_t* __restrict__ keys) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= V) return;
  for (int64_t row = blockIdx.y; row < B; row += gridDim.y) {  // gridDim.y <= 65535
    const float z = logit_stats_detail::apply_t(load_as_float(x + row * stride_row + i), temperature, has_t);
    keys[row * V + i] = pack_key(z, static_cast<int32_t>(i));
  }
}

namespace logit_stats_detail {

template <typename T, bool EXTRA>
cudaError_t launch_both(const T* x, int64_t stride_row, int64_t B, int V, int k, const int64_t* tokens,
                        float temperature, float alpha, const LogitStatsPlan& plan, float* state, int64_t* cand,
                        const int64_t* sel, LogitStatsOut out, cudaStream_t stream) {
  const bool has_t = temperature != 1.0f;
  const size_t smem = static_cast<size_t>(plan.cap) * sizeof(int64_t);
  const dim3 grid1(static_cast<unsigned>(B), static_cast<unsigned>(plan.splits));
  logit_stats_partial_kernel<T, EXTRA><<<grid1, kLogitStatsThreads, smem, stream>>>(
      x, stride_row, V, plan.seg, temperature, has_t, alpha, state, cand, plan.k_pad, plan.cap);
  cudaError_t err = cudaGetLastError();
  if (err != cudaSuccess) return err;
  logit_stats_finalize_kernel<T, EXTRA><<<static_cast<unsigned>(B), kLogitStatsThreads, smem, stream>>>(
      x, stride_row, V, temperature, has_t, alpha, tokens, state, cand, plan.splits, plan.needs_sel ? sel : nullptr,
      k, plan.k_pad, plan.cap, out);
  return cudaGetLastError();
}

}  // namespace logit_stats_detail

// Launches both passes on `stream`. x: [B, V] with unit last-dim stride; state and cand
// sized by `plan` (planned with extra = out.extra != null); sel as described above (null
// unless plan.needs_sel); alpha > 0, read only with out.extra.
template <typename T>
cudaError_t logit_stats(const T* x, int64_t stride_row, int64_t B, int V, int k, const int64_t* tokens,
                        float temperature, float alpha, const LogitStatsPlan& plan, float* state, int64_t* cand,
                        const int64_t* sel, LogitStatsOut out, cudaStream_t stream) {
  if (B == 0) return cudaSuccess;
  if (plan.needs_sel && sel == nullptr) return cudaErrorInvalidValue;
  if ((out.extra != nullptr) != (plan.ns == 10)) return cudaErrorInvalidValue;
  if (out.extra != nullptr) {
    return logit_stats_detail::launch_both<T, true>(x, stride_row, B, V, k, tokens, temperature, alpha, plan, state,
                                                    cand, sel, out, stream);
  }
  return logit_stats_detail::launch_both<T, false>(x, stride_row, B, V, k, tokens, temperature, alpha, plan, state,
                                                   cand, sel, out, stream);
}

// The packed keys of whole rows (for the k > kLogitStatsKMax route). keys: [B, V].
template <typename T>
cudaError_t logit_stats_row_keys(const T* x, int64_t stride_row, int64_t B, int V, float temperature, int64_t* keys,
                                 cudaStream_t stream) {
  if (B == 0) return cudaSuccess;
  const dim3 grid(static_cast<unsigned>((V + 255) / 256), static_cast<unsigned>(B < 65535 ? B : 65535));
  logit_stats_row_keys_kernel<T><<<grid, 256, 0, stream>>>(x, stride_row, B, V, temperature, temperature != 1.0f, keys);
  return cudaGetLastError();
}

}  // namespace fuq
