// fuq truncation, CUDA: top-h, top-k, top-p, min-p, typical, epsilon, eta, top-nσ, p-less.
//
// Torch-free: raw pointers and a stream. Same algorithm as the Triton kernel
// (triton_kernels/truncate.py): one block per row, the knobs in Hugging Face's
// order, each on the output of the previous one; every cut-off is a threshold on
// an order-preserving int32 key, found by a 32-step bisection whose steps are
// block-wide counting / mass-summing passes over the row (L2-resident). No sort.
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

constexpr int64_t kInt32Min = -2147483648LL;
constexpr int64_t kInt32Max = 2147483647LL;

// a < b  <=>  key(a) < key(b), for non-NaN floats.
__device__ __forceinline__ int32_t key(float z) {
  int32_t b = __float_as_int(z);
  return b >= 0 ? b : (b ^ 0x7FFFFFFF);
}

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

enum Mode { kCountGt = 0, kMassLe, kTypMassLe, kTypCountLe, kEntGe };

// One pass: a sum over the row selected by the threshold K.
template <int MODE, int BLOCK>
__device__ float agg(const float* z, int V, int64_t K, float lse, float H, Smem<BLOCK>& sm) {
  float acc = 0.f;
  for (int i = threadIdx.x; i < V; i += BLOCK) {
    float x = z[i];
    bool live = x > -INFINITY;
    float logp = live ? x - lse : 0.f;
    float p = live ? expf(logp) : 0.f;
    if (MODE == kCountGt) acc += (live && key(x) > K) ? 1.f : 0.f;
    if (MODE == kMassLe) acc += (key(x) <= K) ? p : 0.f;
    if (MODE == kTypMassLe) acc += (live && key(fabsf(-logp - H)) <= K) ? p : 0.f;
    if (MODE == kTypCountLe) acc += (live && key(fabsf(-logp - H)) <= K) ? 1.f : 0.f;
    if (MODE == kEntGe) acc += (live && key(x) >= K) ? -p * logp : 0.f;
  }
  return block_sum<BLOCK>(acc, sm);
}

// Smallest K in [lo, hi] with ok(K), for ok monotone false -> true.
template <typename F>
__device__ int64_t bisect(int64_t lo, int64_t hi, F ok) {
  for (int it = 0; it < 32; ++it) {
    int64_t mid = lo + (hi - lo) / 2;
    if (ok(mid)) hi = mid; else lo = mid + 1;
  }
  return lo;
}

// The key of the k-th largest live logit (smallest K with count(key > K) < k).
template <int BLOCK>
__device__ int64_t kth_largest_key(const float* z, int V, int k, Smem<BLOCK>& sm) {
  return bisect(kInt32Min, kInt32Max,
                [&](int64_t K) { return agg<kCountGt, BLOCK>(z, V, K, 0.f, 0.f, sm) < float(k); });
}

enum Knob { kTopH = 0, kTopK, kTopP, kMinP, kTypical, kEpsilon, kEta, kTopNSigma, kPLess };

template <int BLOCK>
__device__ void apply_knob(float* z, int V, int knob, float param, int min_keep, Smem<BLOCK>& sm) {
  // stats of the live tokens
  float mv = -INFINITY;
  for (int i = threadIdx.x; i < V; i += BLOCK) mv = fmaxf(mv, z[i]);
  const float m = block_max<BLOCK>(mv, sm);
  float sv = 0.f;
  for (int i = threadIdx.x; i < V; i += BLOCK) sv += z[i] > -INFINITY ? expf(z[i] - m) : 0.f;
  const float lse = m + logf(block_sum<BLOCK>(sv, sm));
  float H = 0.f, p2 = 0.f, zmean = 0.f, zvar = 0.f;
  if (knob == kTypical || knob == kEta || knob == kTopH || knob == kPLess || knob == kTopNSigma) {
    float h = 0.f, q = 0.f, c = 0.f, zs = 0.f;
    for (int i = threadIdx.x; i < V; i += BLOCK) {
      float x = z[i];
      if (x > -INFINITY) {
        float logp = x - lse, p = expf(logp);
        h += -p * logp;
        q += p * p;
        c += 1.f;
        zs += x;
      }
    }
    H = block_sum<BLOCK>(h, sm);
    p2 = block_sum<BLOCK>(q, sm);
    const float n = block_sum<BLOCK>(c, sm);
    zmean = block_sum<BLOCK>(zs, sm) / n;
    if (knob == kTopNSigma) {
      float dv = 0.f;
      for (int i = threadIdx.x; i < V; i += BLOCK) {
        float d = z[i] > -INFINITY ? z[i] - zmean : 0.f;
        dv += d * d;
      }
      zvar = block_sum<BLOCK>(dv, sm) / fmaxf(n - 1.f, 1.f);  // (N - 1)-normalised, as torch.std
    }
  }

  // thresholds
  int64_t K_top = key(m);
  if (min_keep > 1) K_top = kth_largest_key<BLOCK>(z, V, min_keep, sm);
  int64_t K_keep = K_top, K_typ = kInt32Max;
  float cut = 0.f, zcut = -INFINITY;
  switch (knob) {
    case kTopK:
      K_keep = kth_largest_key<BLOCK>(z, V, int(param), sm);
      break;
    case kTopP: {  // param = 1 - top_p
      int64_t K = bisect(kInt32Min, kInt32Max,
                         [&](int64_t k) { return agg<kMassLe, BLOCK>(z, V, k, lse, H, sm) > param; });
      K_keep = K < K_top ? K : K_top;
      break;
    }
    case kTypical: {
      K_typ = bisect(0, kInt32Max, [&](int64_t k) { return agg<kTypMassLe, BLOCK>(z, V, k, lse, H, sm) >= param; });
      if (min_keep > 1) {
        int64_t K2 = bisect(0, kInt32Max,
                            [&](int64_t k) { return agg<kTypCountLe, BLOCK>(z, V, k, lse, H, sm) >= float(min_keep); });
        K_typ = K2 > K_typ ? K2 : K_typ;
      }
      break;
    }
    case kTopH: {
      int64_t K = bisect(kInt32Min, kInt32Max,
                         [&](int64_t k) { return agg<kEntGe, BLOCK>(z, V, k, lse, H, sm) <= param * H; });
      int64_t Km = key(m);
      K_keep = K < Km ? K : Km;
      break;
    }
    case kMinP: cut = param * expf(m - lse); break;
    case kEpsilon: cut = param; break;
    case kEta: cut = fminf(param, sqrtf(param) * expf(-H)); break;
    case kTopNSigma: zcut = m - param * sqrtf(zvar); break;
    default: cut = p2; break;  // p-less
  }

  // write -inf over the removed tokens
  for (int i = threadIdx.x; i < V; i += BLOCK) {
    float x = z[i];
    bool keep;
    if (knob == kTypical) keep = x > -INFINITY && key(fabsf(-(x - lse) - H)) <= K_typ;
    else if (knob == kTopK || knob == kTopP || knob == kTopH) keep = key(x) >= K_keep;
    else if (knob == kTopNSigma) keep = x >= zcut;
    else keep = expf(x - lse) >= cut || key(x) >= K_top;
    if (!keep) z[i] = -INFINITY;
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
    float v = to_float<T>(xr[i]) / P.temperature;
    badv = (v != v || v == INFINITY) ? 1.f : badv;
  }
  const bool bad = block_max<BLOCK>(badv, sm) > 0.f;
  for (int i = threadIdx.x; i < V; i += BLOCK) z[i] = bad ? NAN : to_float<T>(xr[i]) / P.temperature;
  __syncthreads();
  if (bad) return;
  const int mk = P.min_tokens_to_keep < V ? P.min_tokens_to_keep : V;
  if (P.top_h >= 0.f) apply_knob<BLOCK>(z, V, kTopH, P.top_h, 1, sm);
  if (P.top_k > 0) {
    int k = P.top_k > mk ? P.top_k : mk;
    apply_knob<BLOCK>(z, V, kTopK, float(k < V ? k : V), mk, sm);
  }
  if (P.top_p >= 0.f) apply_knob<BLOCK>(z, V, kTopP, 1.f - P.top_p, mk, sm);
  if (P.min_p >= 0.f) apply_knob<BLOCK>(z, V, kMinP, P.min_p, mk, sm);
  if (P.typical_p >= 0.f) apply_knob<BLOCK>(z, V, kTypical, P.typical_p, mk, sm);
  if (P.epsilon >= 0.f) apply_knob<BLOCK>(z, V, kEpsilon, P.epsilon, mk, sm);
  if (P.eta >= 0.f) apply_knob<BLOCK>(z, V, kEta, P.eta, mk, sm);
  if (P.top_n_sigma >= 0.f) apply_knob<BLOCK>(z, V, kTopNSigma, P.top_n_sigma, 1, sm);
  if (P.p_less) apply_knob<BLOCK>(z, V, kPLess, 0.f, 1, sm);
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
