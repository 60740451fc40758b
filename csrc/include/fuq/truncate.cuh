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
// Rounding ties (one kept set on every backend, fuq/reference.py): the search sums are
// float64; top-p and typical weigh exp(z - m) (1 exactly on the top group) and decide
// "mass before < p" as x < p·S on the exact product (fma) with the caller's float64 knob
// (S: the row's total, the first round's last pivot); top-h counts a row that is one tie
// group as #{i : i <= alpha·n} (alpha·n exact), so a uniform row of V keeps #{j : j / V < p}
// and #{j : (j + 1) / V <= alpha} tokens, as the C++ CPU, Triton and reference kernels.
//
// Launch shapes (truncate_plan): one block per row when B fills the GPU; otherwise split
// rows, S blocks per row in one cooperative launch, every reduction spanning the row's
// blocks through global scratch and a grid sync (so B = 1 at V = 262144 uses every SM).
//
// Status: compile-checked with nvcc for sm_80 and sm_90 (csrc/check_cuda.sh);
// not yet run on a GPU.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <cooperative_groups.h>
#include <cub/block/block_reduce.cuh>
#include <cub/block/block_scan.cuh>
#include <cuda/functional>

namespace fuq {

// Knob values that mean "off": top_k <= 0, the floats < 0, p_less false.
struct TruncateParams {
  float temperature;
  int top_k;
  double top_p;  // float64: the mass cuts compare the caller's knob exactly
  float min_p;
  double typical_p;
  float epsilon;
  float eta;
  double top_h;
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

// Reductions over a row. BlockRed: the row is one block's. GridRed: the row is split over
// the S blocks blockIdx.y = 0..S-1 of a cooperative launch; each block reduces its part,
// writes it to global scratch, grid-syncs, and reduces the S parts in split order, so every
// block of the row gets the same (bitwise) result. Two scratch buffers alternate: a block
// cannot overwrite parts another block still reads, since a grid sync lies between.
template <int BLOCK>
struct BlockRed {
  typename cub::BlockReduce<float, BLOCK>::TempStorage reduce;
  float bcast;
  double piv[BLOCK / 32][kPiv];
  double sums[kPiv];

  __device__ float sum(float v) { return bcast_of(cub::BlockReduce<float, BLOCK>(reduce).Sum(v)); }
  __device__ float max(float v) { return bcast_of(cub::BlockReduce<float, BLOCK>(reduce).Reduce(v, cuda::maximum<>{})); }
  __device__ float bcast_of(float r) {
    if (threadIdx.x == 0) bcast = r;
    __syncthreads();
    const float out = bcast;
    __syncthreads();
    return out;
  }
  // The block's kPiv sums of acc, in shared memory (valid until the next call).
  __device__ const double* sum16(const double (&acc)[kPiv]) {
    const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
#pragma unroll
    for (int b = 0; b < kPiv; ++b) {
      double v = acc[b];
      for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
      if (lane == 0) piv[warp][b] = v;
    }
    __syncthreads();
    if (threadIdx.x < kPiv) {
      double v = 0.0;
      for (int w = 0; w < BLOCK / 32; ++w) v += piv[w][threadIdx.x];
      sums[threadIdx.x] = v;
    }
    __syncthreads();
    return sums;
  }
};

template <int BLOCK>
struct GridRed {
  BlockRed<BLOCK>* blk;  // shared
  double* scratch;       // [2][B][S][kPiv] global
  int64_t row;
  int S, split, parity;

  // Exchange n <= kPiv block results (in blk->sums) across the row's blocks; op 0 sum, 1 max.
  __device__ const double* exchange(int n, int op) {
    double* buf = scratch + (static_cast<int64_t>(parity) * gridDim.x + row) * S * kPiv;
    if (threadIdx.x < n) buf[split * kPiv + threadIdx.x] = blk->sums[threadIdx.x];
    __threadfence();
    cooperative_groups::this_grid().sync();
    __syncthreads();
    if (threadIdx.x < n) {
      double v = op == 0 ? 0.0 : -INFINITY;
      for (int j = 0; j < S; ++j) {
        const double x = buf[j * kPiv + threadIdx.x];
        v = op == 0 ? v + x : fmax(v, x);
      }
      blk->sums[threadIdx.x] = v;
    }
    __syncthreads();
    parity ^= 1;
    return blk->sums;
  }
  __device__ float one(float r, int op) {
    if (threadIdx.x == 0) blk->sums[0] = r;
    __syncthreads();
    const float out = static_cast<float>(exchange(1, op)[0]);  // a float64 sum of the S parts, rounded once
    __syncthreads();
    return out;
  }
  __device__ float sum(float v) { return one(cub::BlockReduce<float, BLOCK>(blk->reduce).Sum(v), 0); }
  __device__ float max(float v) {
    return one(cub::BlockReduce<float, BLOCK>(blk->reduce).Reduce(v, cuda::maximum<>{}), 1);
  }
  __device__ const double* sum16(const double (&acc)[kPiv]) {
    blk->sum16(acc);
    return exchange(kPiv, 0);
  }
};

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
  // wmode 0: 1; 1: p·S = e^{z - m} (1 exactly on the top group; the mass cut compares with
  // p·S); 2: top-h's entropy term scaled by S·e^{m - mref}. z is live.
  __device__ __forceinline__ float weight(float z, int wmode) const {
    if (wmode == 0) return 1.f;
    if (wmode == 1) return expf(z - m);
    return z == m ? wtop : expf(z - mref) * (logs + (m - z));
  }
};

// Row max, then the moments relative to it (one pass): lse, H, Σp², mean z, #live, #max, runner-up.
template <int BLOCK, typename Red>
__device__ Row row_stats(const float* z, int lo, int hi, Red& red) {
  Row r{};
  float mv = -INFINITY;
  for (int i = lo + threadIdx.x; i < hi; i += BLOCK) mv = fmaxf(mv, z[i]);
  r.m = red.max(mv);
  float s = 0.f, t = 0.f, q = 0.f, n = 0.f, sd = 0.f, n0 = 0.f, m2 = -INFINITY;
  for (int i = lo + threadIdx.x; i < hi; i += BLOCK) {
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
  r.s = red.sum(s);
  t = red.sum(t);
  q = red.sum(q);
  r.n = red.sum(n);
  sd = red.sum(sd);
  r.n0 = red.sum(n0);
  r.m2 = red.max(m2);
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
template <int BLOCK, typename Red>
__device__ void top_h_scale(const float* z, int lo, int hi, Row& r, Red& red) {
  float rv = 0.f;
  for (int i = lo + threadIdx.x; i < hi; i += BLOCK) {
    const float x = z[i];
    if (x > -INFINITY && x < r.m) rv += expf(x - r.m2);
  }
  const float r2 = red.sum(rv);
  const bool alone = r.n0 == 1.f && r.m2 > -INFINITY;
  const float x = (alone ? expf(r.m2 - r.m) : 1.f) * r2;
  const float u = 1.f + x;
  const float ratio = u == 1.f ? 1.f - 0.5f * x : __fdiv_rn(logf(u), u - 1.f);  // log1p(x) / x
  r.logs = alone ? ratio * x : logf(r.s);
  r.wtop = alone ? r2 * ratio : r.logs;
  r.mref = alone ? r.m2 : r.m;
}

// The smallest position whose inclusive cumulative weight meets the target (> if strict,
// else >=): nbits / 4 rounds, each one pass summing (in float64) the weights below 16
// pivots. Never met: the last position 2^nbits - 1 (keep all). wmode 1 (mass): the target
// is the float64 knob p and a pivot meets it iff its sum x is not < p·S (S: the row's
// total, the first round's last pivot), decided on the exact product by one fma.
template <int BLOCK, typename Red>
__device__ int64_t search(const float* z, int lo, int hi, int nbits, double target, bool strict, const Row& r,
                          int idb, int pmode, int wmode, Red& red) {
  int64_t base = 0;
  double S = 0.0;
  int sh = nbits - 4;  // step = 2^sh: shifts, not 64-bit divisions (a slow subroutine call)
  for (int round = 0; round < nbits / 4; ++round, sh -= 4) {
    double acc[kPiv];
#pragma unroll
    for (int b = 0; b < kPiv; ++b) acc[b] = 0.0;
    for (int i = lo + threadIdx.x; i < hi; i += BLOCK) {
      const float x = z[i];
      if (!(x > -INFINITY)) continue;
      const double w = r.weight(x, wmode);
      const int64_t p = r.pos(x, i, idb, pmode);
      // pivot b = base + (b + 1)·step - 1 is >= p from b0 = floor((p - base) / step) on
      const int64_t b0 = p < base ? 0 : (p - base) >> sh;
#pragma unroll
      for (int b = 0; b < kPiv; ++b) acc[b] += b >= b0 ? w : 0.0;
    }
    const double* sums = red.sum16(acc);
    if (round == 0) S = sums[kPiv - 1];  // every live token is at or below the last pivot
    int hit = kPiv - 1;
    for (int b = kPiv - 2; b >= 0; --b) {
      const double v = sums[b];
      const bool met = wmode == 1 ? fma(target, S, -v) <= 0.0 : (strict ? v > target : v >= target);
      if (met) hit = b;
    }
    __syncthreads();
    base += static_cast<int64_t>(hit) << sh;
  }
  return base;
}

__host__ __device__ inline int id_bits(int V) {  // a multiple of 4 with 2^bits >= V
  int b = 0;
  while (b < 31 && (int64_t{1} << b) < V) ++b;
  return (b + 3) / 4 * 4;
}

enum Knob { kTopH = 0, kTopK, kTopP, kMinP, kTypical, kEpsilon, kEta, kTopNSigma, kPLess };

// Top-h on a row that is one tie group (every live token at the max: equal terms): weights 1
// and the bound #{i : i <= alpha·n} (alpha·n exact, at least 1), so a uniform row of V keeps
// #{j : (j + 1) / V <= alpha}, as the reference and the C++ CPU / Triton kernels.
__device__ __forceinline__ void top_h_one_group(double alpha, Row& r, float& bound) {
  if (r.n0 != r.n) return;
  const double nd = r.n;
  const double hi = alpha * nd;
  const double lo = fma(alpha, nd, -hi);
  const double f = floor(hi);
  double k = f == hi && lo < 0.0 ? f - 1.0 : f;
  k = fmin(fmax(k, 1.0), nd);
  r.wtop = 1.f;
  bound = static_cast<float>(k);
}

// One knob on one row (one block), in place, by the tie rule of fuq.reference. param64: the
// knob as the caller's float64 (top-p, typical and top-h compare it exactly).
template <int BLOCK, typename Red>
__device__ __forceinline__ void apply_knob(float* z, int lo, int hi, int idb, int knob, double param64, int min_keep,
                                           Red& red) {
  const float param = static_cast<float>(param64);
  Row r = row_stats<BLOCK>(z, lo, hi, red);
  const int nb = 32 + idb;
  int64_t X = 0, Y = 0, KV = vpos(r.m);  // thresholds keep the max
  float cut = 0.f, zcut = -INFINITY;
  switch (knob) {
    case kTopK:
      X = search<BLOCK>(z, lo, hi, 32, param, false, r, 0, 0, 0, red);
      break;
    case kTopP:
    case kTypical: {
      const int pm = knob == kTopP ? 0 : 1;
      X = search<BLOCK>(z, lo, hi, nb, param64, false, r, idb, pm, 1, red);
      if (min_keep > 1) Y = search<BLOCK>(z, lo, hi, nb, float(min_keep), false, r, idb, pm, 0, red);
      break;
    }
    case kTopH: {
      top_h_scale<BLOCK>(z, lo, hi, r, red);
      float hv = 0.f;
      for (int i = lo + threadIdx.x; i < hi; i += BLOCK)
        if (z[i] > -INFINITY) hv += r.weight(z[i], 2);
      float bound = fmaxf(param * red.sum(hv), r.wtop);  // the first token always kept
      top_h_one_group(param64, r, bound);
      X = search<BLOCK>(z, lo, hi, nb, bound, true, r, idb, 0, 2, red);
      break;
    }
    case kTopNSigma: {
      float dv = 0.f;
      for (int i = lo + threadIdx.x; i < hi; i += BLOCK) {
        const float d = z[i] > -INFINITY ? z[i] - r.zmean : 0.f;
        dv += d * d;
      }
      const float zvar = __fdiv_rn(red.sum(dv), fmaxf(r.n - 1.f, 1.f));  // as torch.std
      zcut = r.m - param * __fsqrt_rn(zvar);
      break;
    }
    default:
      if (knob == kMinP) cut = param * expf(r.m - r.lse);
      else if (knob == kEpsilon) cut = param;
      else if (knob == kEta) cut = fminf(param, __fsqrt_rn(param) * expf(-r.H));
      else cut = r.p2;  // p-less
      if (min_keep > 1) KV = search<BLOCK>(z, lo, hi, 32, float(min_keep), false, r, 0, 0, 0, red);
      break;
  }
  // write -inf over the removed tokens
  for (int i = lo + threadIdx.x; i < hi; i += BLOCK) {
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

// z = x / T over [lo, hi) of a row; true if the row holds NaN or +inf (then z is all NaN).
template <typename T, int BLOCK, typename Red>
__device__ bool scale_row(const T* xr, float* z, int lo, int hi, float temperature, Red& red) {
  float badv = 0.f;
  for (int i = lo + threadIdx.x; i < hi; i += BLOCK) {
    const float v = __fdiv_rn(to_float<T>(xr[i]), temperature);
    badv = (v != v || v == INFINITY) ? 1.f : badv;
  }
  const bool bad = red.max(badv) > 0.f;
  for (int i = lo + threadIdx.x; i < hi; i += BLOCK) z[i] = bad ? NAN : __fdiv_rn(to_float<T>(xr[i]), temperature);
  __syncthreads();
  return bad;
}

// The knobs in Hugging Face's order over the row segment [lo, hi) this block holds.
template <int BLOCK, typename Red>
__device__ void apply_knobs(float* z, int lo, int hi, int V, const TruncateParams& P, Red& red) {
  const int idb = id_bits(V);
  const int mk = P.min_tokens_to_keep < V ? P.min_tokens_to_keep : V;
  if (P.top_h >= 0.0) apply_knob<BLOCK>(z, lo, hi, idb, kTopH, P.top_h, 1, red);
  if (P.top_k > 0) {
    const int k = P.top_k > mk ? P.top_k : mk;
    apply_knob<BLOCK>(z, lo, hi, idb, kTopK, double(k < V ? k : V), 1, red);
  }
  if (P.top_p >= 0.0) apply_knob<BLOCK>(z, lo, hi, idb, kTopP, P.top_p, mk, red);
  if (P.min_p >= 0.f) apply_knob<BLOCK>(z, lo, hi, idb, kMinP, P.min_p, mk, red);
  if (P.typical_p >= 0.0) apply_knob<BLOCK>(z, lo, hi, idb, kTypical, P.typical_p, mk, red);
  if (P.epsilon >= 0.f) apply_knob<BLOCK>(z, lo, hi, idb, kEpsilon, P.epsilon, mk, red);
  if (P.eta >= 0.f) apply_knob<BLOCK>(z, lo, hi, idb, kEta, P.eta, mk, red);
  if (P.top_n_sigma >= 0.f) apply_knob<BLOCK>(z, lo, hi, idb, kTopNSigma, P.top_n_sigma, 1, red);
  if (P.p_less) apply_knob<BLOCK>(z, lo, hi, idb, kPLess, 0.0, 1, red);
}

// One block per row (B fills the GPU).
template <typename T, int BLOCK>
__global__ void __launch_bounds__(BLOCK) truncate_kernel(const T* __restrict__ x, int64_t x_stride, float* out,
                                                         int64_t out_stride, int V, TruncateParams P) {
  __shared__ BlockRed<BLOCK> red;
  const int64_t row = blockIdx.x;
  float* z = out + row * out_stride;
  if (scale_row<T, BLOCK>(x + row * x_stride, z, 0, V, P.temperature, red)) return;
  apply_knobs<BLOCK>(z, 0, V, V, P, red);
}

// Split rows (small B): grid (B, S), cooperative launch; block (row, split) holds the
// segment [split·seg, min(V, (split + 1)·seg)) and every reduction spans the row's S blocks.
template <typename T, int BLOCK>
__global__ void __launch_bounds__(BLOCK) truncate_split_kernel(const T* __restrict__ x, int64_t x_stride, float* out,
                                                               int64_t out_stride, int V, int seg, double* scratch,
                                                               TruncateParams P) {
  __shared__ BlockRed<BLOCK> blk;
  const int64_t row = blockIdx.x;
  const int split = blockIdx.y;
  GridRed<BLOCK> red{&blk, scratch, row, static_cast<int>(gridDim.y), split, 0};
  const int lo = split * seg;
  const int hi = lo + seg < V ? lo + seg : V;
  float* z = out + row * out_stride;
  // Every block of the grid must reach every grid sync: no row may leave early, so a bad row
  // (NaN / +inf) runs the knobs on its NaN values too (bounded loops, in-bounds accesses) and
  // is written all NaN again at the end.
  const bool bad = scale_row<T, BLOCK>(x + row * x_stride, z, lo, hi, P.temperature, red);
  apply_knobs<BLOCK>(z, lo, hi, V, P, red);
  if (bad)
    for (int i = lo + threadIdx.x; i < hi; i += BLOCK) z[i] = NAN;
}

// The draw of fuq::sample: one block per row of the truncated z, exact inverse-CDF sampling
// in token-index order, as fuq.reference.sample_from: with w = exp(z - max) summed in
// float64, the id is the first token whose cumulative weight exceeds u·total (capped at the
// last live token); a row with no live token or a NaN gives id 0. Float64 sums in a
// block-wide order: the id can differ from the reference's sequential cumsum only where
// u·total falls within rounding of a boundary.
template <int BLOCK>
__global__ void __launch_bounds__(BLOCK) sample_draw_kernel(const float* __restrict__ z, int64_t z_stride, int V,
                                                            const double* __restrict__ uniform,
                                                            int64_t* __restrict__ ids) {
  using Scan = cub::BlockScan<double, BLOCK>;
  __shared__ union {
    typename cub::BlockReduce<float, BLOCK>::TempStorage f;
    typename cub::BlockReduce<double, BLOCK>::TempStorage d;
    typename cub::BlockReduce<int, BLOCK>::TempStorage i;
    typename Scan::TempStorage scan;
  } tmp;
  __shared__ float s_m;
  __shared__ double s_total, s_carry;
  __shared__ int s_last, s_nan, s_hit;
  const int64_t row = blockIdx.x;
  const float* zr = z + row * z_stride;
  float mv = -INFINITY;
  int last = -1, nan = 0;
  for (int i = threadIdx.x; i < V; i += BLOCK) {
    const float x = zr[i];
    nan |= x != x;
    if (x > -INFINITY) {
      mv = fmaxf(mv, x);
      last = i;
    }
  }
  float r = cub::BlockReduce<float, BLOCK>(tmp.f).Reduce(mv, cuda::maximum<>{});
  if (threadIdx.x == 0) s_m = r;
  __syncthreads();
  int li = cub::BlockReduce<int, BLOCK>(tmp.i).Reduce(last, cuda::maximum<>{});
  if (threadIdx.x == 0) s_last = li;
  __syncthreads();
  li = cub::BlockReduce<int, BLOCK>(tmp.i).Reduce(nan, cuda::maximum<>{});
  if (threadIdx.x == 0) s_nan = li;
  __syncthreads();
  const float m = s_m;
  if (s_last < 0 || s_nan) {
    if (threadIdx.x == 0) ids[row] = 0;
    return;
  }
  double tv = 0.0;
  for (int i = threadIdx.x; i < V; i += BLOCK) {
    const float x = zr[i];
    if (x > -INFINITY) tv += exp(static_cast<double>(x) - static_cast<double>(m));
  }
  const double total = cub::BlockReduce<double, BLOCK>(tmp.d).Sum(tv);
  if (threadIdx.x == 0) {
    s_total = total;
    s_carry = 0.0;
    s_hit = V;
  }
  __syncthreads();
  const double target = uniform[row] * s_total;
  for (int start = 0; start < V; start += BLOCK) {  // uniform trip count: the scan needs every thread
    const int i = start + threadIdx.x;
    const float x = i < V ? zr[i] : -INFINITY;
    const double w = x > -INFINITY ? exp(static_cast<double>(x) - static_cast<double>(m)) : 0.0;
    double cum;
    Scan(tmp.scan).InclusiveSum(w, cum);
    cum += s_carry;
    if (i < V && cum > target) atomicMin(&s_hit, i);
    __syncthreads();
    if (threadIdx.x == BLOCK - 1) s_carry = cum;
    __syncthreads();
    if (s_hit < V) break;
  }
  if (threadIdx.x == 0) ids[row] = s_hit < s_last ? s_hit : s_last;
}

}  // namespace truncate_detail

// ids [B] of fuq::sample from the truncated rows z [B, V] (row stride z_stride) and one
// uniform in [0, 1) per row (float64, device memory).
inline cudaError_t sample_draw(const float* z, int64_t z_stride, int B, int V, const double* uniform, int64_t* ids,
                               cudaStream_t stream) {
  if (B <= 0) return cudaSuccess;
  truncate_detail::sample_draw_kernel<256><<<B, 256, 0, stream>>>(z, z_stride, V, uniform, ids);
  return cudaGetLastError();
}

constexpr int kTruncateThreads = 512;

// How truncate() launches: S blocks per row, each over seg entries (S = 1: one block per row).
struct TruncatePlan {
  int splits;
  int seg;
  int64_t scratch_doubles;  // 2 * B * S * 16 when S > 1, else 0
};

// num_sms: the device's multiprocessor count; max_coresident: blocks of truncate_split_kernel
// that fit on the device at once (cooperative launches need all of them resident).
inline TruncatePlan truncate_plan(int64_t B, int V, int num_sms, int64_t max_coresident) {
  TruncatePlan p{1, V, 0};
  const int64_t target = 2LL * (num_sms > 0 ? num_sms : 1);
  if (B <= 0 || B >= target) return p;
  const int64_t chunks = (V + kTruncateThreads - 1) / kTruncateThreads;
  int64_t S = (target + B - 1) / B;
  if (S > chunks / 2) S = chunks / 2;  // at least 2 chunks per block
  if (B * S > max_coresident) S = max_coresident / B;
  if (S <= 1) return p;
  const int64_t per = (chunks + S - 1) / S;
  p.seg = static_cast<int>(per * kTruncateThreads);
  p.splits = static_cast<int>((V + p.seg - 1) / p.seg);
  p.scratch_doubles = 2 * B * p.splits * truncate_detail::kPiv;
  return p;
}

// Blocks of the split kernel that can be resident at once on the current device.
template <typename T>
cudaError_t truncate_max_coresident(int num_sms, int64_t* out) {
  int per_sm = 0;
  const cudaError_t err = cudaOccupancyMaxActiveBlocksPerMultiprocessor(
      &per_sm, truncate_detail::truncate_split_kernel<T, kTruncateThreads>, kTruncateThreads, 0);
  *out = static_cast<int64_t>(per_sm) * num_sms;
  return err;
}

// logits [B, V] (row stride x_stride, unit column stride) -> out [B, V] float32. scratch:
// plan.scratch_doubles doubles of device memory (null when plan.splits == 1).
template <typename T>
cudaError_t truncate(const T* logits, int64_t x_stride, float* out, int64_t out_stride, int B, int V,
                     const TruncateParams& params, const TruncatePlan& plan, double* scratch, cudaStream_t stream) {
  if (B <= 0 || V <= 0) return cudaSuccess;
  if (plan.splits <= 1) {
    truncate_detail::truncate_kernel<T, kTruncateThreads>
        <<<B, kTruncateThreads, 0, stream>>>(logits, x_stride, out, out_stride, V, params);
    return cudaGetLastError();
  }
  const dim3 grid(static_cast<unsigned>(B), static_cast<unsigned>(plan.splits));
  int seg = plan.seg;
  TruncateParams P = params;
  void* args[] = {&logits, &x_stride, &out, &out_stride, &V, &seg, &scratch, &P};
  return cudaLaunchCooperativeKernel(
      reinterpret_cast<const void*>(&truncate_detail::truncate_split_kernel<T, kTruncateThreads>), grid,
      dim3(kTruncateThreads), args, 0, stream);
}

}  // namespace fuq
