// fuq::attention_stats on the CPU: per-key attention mass, per-row entropy and lse.
//
// The rows of one (batch, KV head) pair are the G = (Hq / Hkv) * Lq query rows of its GQA
// group; q is [B, Hkv, G, d] in memory when contiguous, so a group's rows are adjacent.
// Keys are cut into chunks of C keys (C * d floats, ~64 KiB); a work item is (b, kv head,
// chunk), spread over threads with at::parallel_for.
//
//   phase 1  per item: K chunk -> float32 once; for each row, the scores
//            s = scale * q.k of its allowed keys (causal / window range, then the mask;
//            -inf elsewhere; vectorised dot products for a few rows, one float32 GEMM of the
//            chunk from 16 rows per group on), folded into the row's online (m, s, t) state
//            (cpu_online.h).
//            The scores are kept in a [B * Hkv, chunks, G, C] float32 scratch when it fits
//            kScoreBudget (always at decode: G * 4 bytes per key against d * itemsize of K).
//   merge    per row: the chunk states merged -> lse, entropy.
//   phase 2  per item: mass[j] = sum over the group's rows of exp(s - lse), from the kept
//            scores, or recomputed from K when they did not fit.
//
// Passes over K: one when the scores are kept (phase 2 reads G floats per key instead of the
// key's d values), two otherwise. The mass needs each row's final lse, known only after every
// key was seen: either the scores wait in memory or they are recomputed.
//
// Semantics are those of fuq/reference.py (attention_stats); the tests compare the two.

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <memory>
#include <tuple>
#include <vector>

#include "fuq/cpu_online.h"

namespace fuq {
namespace {

using cpu::kInf;
using cpu::kNaN;
using cpu::OnlineStats;

constexpr int64_t kChunkFloats = 16384;           // C * d: a K chunk of 64 KiB as float32
constexpr int64_t kScoreBudget = int64_t{1} << 26;  // floats of kept scores (256 MiB)
constexpr int64_t kGemmRows = 16;                   // from this many rows per group, scores by GEMM

// The budget of kept scores, in floats: kScoreBudget, or FUQ_ATTENTION_SCORE_BUDGET when set
// (the tests set 0 to cover the two-pass route on small inputs).
int64_t score_budget() {
  const char* env = std::getenv("FUQ_ATTENTION_SCORE_BUDGET");
  return env != nullptr ? std::atoll(env) : kScoreBudget;
}

// The kept scores are reused across calls on a thread, up to kRetainFloats (64 MiB): a fresh
// block of tens of MiB is an mmap (glibc serves blocks above 32 MiB so and unmaps them on free)
// whose every page faults and is zeroed on first touch, which took ~45% of a call at T = 16384
// (SmolLM2, Lq = 64: 38 MiB of scores; 45.6 -> 26.7 ms with the heap forced by
// MALLOC_MMAP_THRESHOLD_). A larger scratch is the call's own (`own`).
constexpr int64_t kRetainFloats = int64_t{1} << 24;

float* kept_scratch(int64_t n, std::unique_ptr<float[]>* own) {
  if (n > kRetainFloats) {
    own->reset(new float[static_cast<size_t>(n)]);
    return own->get();
  }
  thread_local std::unique_ptr<float[]> buf;
  thread_local int64_t cap = 0;
  if (cap < n) {
    buf.reset();  // free first: the old block and the new one are never held together
    buf.reset(new float[static_cast<size_t>(n)]);
    cap = n;
  }
  return buf.get();
}

struct Problem {
  int64_t BH, Hkv, G, Lq, T, d;
  const float* q;  // [BH, G, d] float32
  const void* k;   // [B, Hkv, T, d] of the input dtype, last dim contiguous
  int64_t sk_b, sk_h, sk_t;
  const bool* mask;  // nullptr, or [B, Lq|1, T] with strides sm_b, sm_i, sm_t
  int64_t sm_b, sm_i, sm_t;
  float scale;
  bool causal;
  int64_t window;  // 0: none
  int64_t C, nchunks;
};

// Keys [lo, hi) that row r may attend by position (the mask is applied on top).
inline void row_range(const Problem& P, int64_t r, int64_t* lo, int64_t* hi) {
  const int64_t pos = P.T - P.Lq + r % P.Lq;  // the query's position
  *hi = P.causal ? std::min(P.T, pos + 1) : P.T;
  *lo = P.window > 0 ? std::max<int64_t>(0, pos - P.window + 1) : 0;
  if (*hi < *lo) *hi = *lo;
}

inline const bool* mask_row(const Problem& P, int64_t bh, int64_t r) {
  if (P.mask == nullptr) return nullptr;
  return P.mask + (bh / P.Hkv) * P.sm_b + (r % P.Lq) * P.sm_i;
}

// kf = float32 copy of keys [c0, c0 + n) of pair bh, [n, d] (or the input itself for fp32).
template <typename Tag>
const float* load_keys(const Problem& P, int64_t bh, int64_t c0, int64_t n, float* kf) {
  using S = typename Tag::storage;
  const S* base = static_cast<const S*>(P.k) + (bh / P.Hkv) * P.sk_b + (bh % P.Hkv) * P.sk_h;
  if constexpr (std::is_same_v<Tag, cpu::F32>) {
    if (P.sk_t == P.d) return base + c0 * P.d;
  }
  for (int64_t j = 0; j < n; ++j) cpu::to_float(base + (c0 + j) * P.sk_t, P.d, kf + j * P.d, Tag{});
  return kf;
}

// z[j - c0] = scale * q_r . k_j for the allowed j in [c0, c0 + n), -inf for the others.
void row_scores(const Problem& P, const float* qr, const float* kf, int64_t c0, int64_t n, int64_t lo, int64_t hi,
                const bool* mrow, float* z) {
  const int64_t a = std::clamp(lo - c0, int64_t{0}, n), b = std::clamp(hi - c0, int64_t{0}, n);
  const int64_t d = P.d;
  for (int64_t j = 0; j < a; ++j) z[j] = -kInf;
  for (int64_t j = b; j < n; ++j) z[j] = -kInf;
  int64_t j = a;
  for (; j + 4 <= b; j += 4) {  // four keys per pass over q_r
    const float *k0 = kf + j * d, *k1 = k0 + d, *k2 = k1 + d, *k3 = k2 + d;
    float a0 = 0.f, a1 = 0.f, a2 = 0.f, a3 = 0.f;
#pragma omp simd reduction(+ : a0, a1, a2, a3)
    for (int64_t e = 0; e < d; ++e) {
      const float x = qr[e];
      a0 += x * k0[e];
      a1 += x * k1[e];
      a2 += x * k2[e];
      a3 += x * k3[e];
    }
    z[j] = a0 * P.scale;
    z[j + 1] = a1 * P.scale;
    z[j + 2] = a2 * P.scale;
    z[j + 3] = a3 * P.scale;
  }
  for (; j < b; ++j) {
    const float* kj = kf + j * d;
    float acc = 0.f;
#pragma omp simd reduction(+ : acc)
    for (int64_t e = 0; e < d; ++e) acc += qr[e] * kj[e];
    z[j] = acc * P.scale;
  }
  if (mrow != nullptr) {
    for (int64_t jj = a; jj < b; ++jj) z[jj] = mrow[(c0 + jj) * P.sm_t] ? z[jj] : -kInf;
  }
}

// Fold z[0, n) (-inf = not allowed) into st: NaN or +inf marks the row bad.
inline void fold(OnlineStats& st, const float* z, int64_t n) {
  float zmax = -kInf;
  int bad = 0;
#pragma omp simd reduction(max : zmax) reduction(| : bad)
  for (int64_t j = 0; j < n; ++j) {
    zmax = z[j] > zmax ? z[j] : zmax;
    bad |= (z[j] != z[j]) | (z[j] == kInf);
  }
  if (bad) st.nan = true;
  if (!st.nan && zmax > -kInf) st.add(z, n, zmax);
}

// Many rows (G >= kGemmRows: query windows, prefill): the chunk's scores of all G rows by one
// float32 GEMM (ATen's BLAS, single-threaded inside the parallel region), z[r * ld + j], then
// scaled and masked row by row. Rows that may attend nothing in the chunk are left as they are
// (both phases skip them).
void block_scores(const Problem& P, int64_t bh, const float* keys, int64_t c0, int64_t n, float* z, int64_t ld) {
  const at::Tensor qm = at::from_blob(const_cast<float*>(P.q + bh * P.G * P.d), {P.G, P.d}, at::kFloat);
  const at::Tensor km = at::from_blob(const_cast<float*>(keys), {n, P.d}, at::kFloat);
  at::Tensor out = at::from_blob(z, {P.G, n}, {ld, 1}, at::kFloat);
  at::mm_out(out, qm, km.t());
  for (int64_t r = 0; r < P.G; ++r) {
    int64_t lo, hi;
    row_range(P, r, &lo, &hi);
    if (hi <= c0 || lo >= c0 + n) continue;
    const int64_t a = std::clamp(lo - c0, int64_t{0}, n), b = std::clamp(hi - c0, int64_t{0}, n);
    float* zr = z + r * ld;
    const bool* mrow = mask_row(P, bh, r);
    for (int64_t j = 0; j < a; ++j) zr[j] = -kInf;
    for (int64_t j = b; j < n; ++j) zr[j] = -kInf;
#pragma omp simd
    for (int64_t j = a; j < b; ++j) zr[j] *= P.scale;
    if (mrow != nullptr) {
      for (int64_t j = a; j < b; ++j) zr[j] = mrow[(c0 + j) * P.sm_t] ? zr[j] : -kInf;
    }
  }
}

// One row of a GEMM block (route of many rows): z[0, n) holds the raw q.k of the chunk for
// allowed keys [a, b). Scales and masks them, folds them into st and, when `store_p`, leaves
// p_j = exp(z_j - m) in z (m = the row's max over the chunk, kept in st.m; 0 for the keys the
// row may not attend), so that phase 2 sums w * p with w = exp(m - lse) and no second exp.
void gemm_row(const Problem& P, float* z, int64_t c0, int64_t n, int64_t a, int64_t b, const bool* mrow,
              bool store_p, OnlineStats& st) {
  for (int64_t j = 0; j < a; ++j) z[j] = -kInf;
  for (int64_t j = b; j < n; ++j) z[j] = -kInf;
  const float sc = P.scale;
  float zmax = -kInf;
  int bad = 0;
  if (mrow == nullptr) {
#pragma omp simd reduction(max : zmax) reduction(| : bad)
    for (int64_t j = a; j < b; ++j) {
      const float v = z[j] * sc;
      z[j] = v;
      zmax = v > zmax ? v : zmax;
      bad |= (v != v) | (v == kInf);
    }
  } else {
    for (int64_t j = a; j < b; ++j) {
      const float v = mrow[(c0 + j) * P.sm_t] ? z[j] * sc : -kInf;
      z[j] = v;
      zmax = v > zmax ? v : zmax;
      bad |= (v != v) | (v == kInf);
    }
  }
  st = OnlineStats{};
  if (bad) {
    st.nan = true;  // phase 2 marks the row's keys NaN from lse, without reading z
    return;
  }
  if (!(zmax > -kInf)) {  // every allowed key masked
    if (store_p) std::fill_n(z, n, 0.0f);
    return;
  }
  const float ref = zmax;
  float ss = 0.0f, tt = 0.0f, uu = 0.0f;
#pragma omp simd reduction(+ : ss, tt, uu)
  for (int64_t j = 0; j < n; ++j) {  // the same sums as OnlineStats::add, with p stored
    const float d0 = z[j] - ref;
    const float d = d0 > cpu::kExpMin ? d0 : cpu::kExpMin;
    const float e = cpu::fast_exp_nonpos(d0);
    const float ed = e * d;
    ss += e;
    tt += ed;
    uu = std::fma(ed, d, uu);
    if (store_p) z[j] = e;
  }
  st.m = ref;
  st.s = ss;
  st.t = tt;
  st.u = uu;
}

// Phase 1 of item (bh, c): fold the chunk into states[(bh * nchunks + c) * G + r].
template <typename Tag>
void phase1(const Problem& P, int64_t bh, int64_t c, float* kept, float* kf, float* zbuf, OnlineStats* states) {
  const int64_t c0 = c * P.C, n = std::min(P.C, P.T - c0);
  if (P.window > 0 && c0 + n <= P.T - P.Lq - P.window + 1) {  // before every row's window: never read
    for (int64_t r = 0; r < P.G; ++r) states[(bh * P.nchunks + c) * P.G + r] = OnlineStats{};
    return;
  }
  const float* keys = load_keys<Tag>(P, bh, c0, n, kf);
  const bool gemm = P.G >= kGemmRows;
  float* z0 = kept != nullptr ? kept + (bh * P.nchunks + c) * P.G * P.C : zbuf;
  const int64_t ld = kept != nullptr ? P.C : (gemm ? n : 0);  // ld 0: one row buffer, reused
  if (gemm) {  // one GEMM of the block's raw q.k, then each row scaled, masked and folded
    const at::Tensor qm = at::from_blob(const_cast<float*>(P.q + bh * P.G * P.d), {P.G, P.d}, at::kFloat);
    const at::Tensor km = at::from_blob(const_cast<float*>(keys), {n, P.d}, at::kFloat);
    at::Tensor out = at::from_blob(z0, {P.G, n}, {ld, 1}, at::kFloat);
    at::mm_out(out, qm, km.t());
  }
  for (int64_t r = 0; r < P.G; ++r) {
    int64_t lo, hi;
    row_range(P, r, &lo, &hi);
    OnlineStats& st = states[(bh * P.nchunks + c) * P.G + r];
    st = OnlineStats{};
    if (hi <= c0 || lo >= c0 + n) continue;  // nothing allowed here (phase 2 skips it too)
    float* z = z0 + r * ld;
    if (gemm) {
      const int64_t a = std::clamp(lo - c0, int64_t{0}, n), b = std::clamp(hi - c0, int64_t{0}, n);
      gemm_row(P, z, c0, n, a, b, mask_row(P, bh, r), kept != nullptr, st);
      continue;
    }
    row_scores(P, P.q + (bh * P.G + r) * P.d, keys, c0, n, lo, hi, mask_row(P, bh, r), z);
    fold(st, z, n);
  }
}

// Merge of row (bh, r) over the chunks -> lse, entropy (lse NaN for a bad row).
void merge_row(const Problem& P, int64_t bh, int64_t r, const OnlineStats* states, float* lse, float* ent) {
  OnlineStats st;
  for (int64_t c = 0; c < P.nchunks; ++c) st.merge(states[(bh * P.nchunks + c) * P.G + r]);
  const int64_t o = bh * P.G + r;
  if (st.nan) {
    lse[o] = kNaN;
    ent[o] = kNaN;
  } else if (st.m == -kInf) {  // no allowed key
    lse[o] = -kInf;
    ent[o] = kNaN;
  } else {
    lse[o] = st.lse();
    ent[o] = st.entropy();
  }
}

// Phase 2 of item (bh, c): mass of the chunk's keys.
template <typename Tag>
void phase2(const Problem& P, int64_t bh, int64_t c, const float* kept, const OnlineStats* states, const float* lse,
            float* kf, float* zbuf, float* mass) {
  const int64_t c0 = c * P.C, n = std::min(P.C, P.T - c0);
  float* acc = mass + bh * P.T + c0;
  std::fill_n(acc, n, 0.0f);
  const float* keys = nullptr;
  for (int64_t r = 0; r < P.G; ++r) {
    const float l = lse[bh * P.G + r];
    int64_t lo, hi;
    row_range(P, r, &lo, &hi);
    if (l == -kInf || hi <= c0 || lo >= c0 + n) continue;  // the row adds nothing here
    const bool* mrow = mask_row(P, bh, r);
    if (l != l) {  // a bad row: NaN on each key it may attend
      for (int64_t j = std::max(lo, c0); j < std::min(hi, c0 + n); ++j) {
        if (mrow == nullptr || mrow[j * P.sm_t]) acc[j - c0] = kNaN;
      }
      continue;
    }
    const float* z = kept != nullptr ? kept + ((bh * P.nchunks + c) * P.G + r) * P.C : nullptr;
    if (z != nullptr && P.G >= kGemmRows) {  // kept p = exp(s - m): mass += exp(m - lse) * p
      const float m = states[(bh * P.nchunks + c) * P.G + r].m;
      if (!(m > -kInf)) continue;  // every allowed key of the chunk masked
      const float w = cpu::fast_exp_nonpos(m - l);
      if (w == 0.0f) continue;
#pragma omp simd
      for (int64_t j = 0; j < n; ++j) acc[j] = std::fma(w, z[j], acc[j]);
      continue;
    }
    if (z == nullptr && P.G >= kGemmRows) {  // recompute the whole block once
      if (keys == nullptr) {
        keys = load_keys<Tag>(P, bh, c0, n, kf);
        block_scores(P, bh, keys, c0, n, zbuf, n);
      }
      z = zbuf + r * n;
    } else if (z == nullptr) {
      if (keys == nullptr) keys = load_keys<Tag>(P, bh, c0, n, kf);
      row_scores(P, P.q + (bh * P.G + r) * P.d, keys, c0, n, lo, hi, mrow, zbuf);
      z = zbuf;
    }
#pragma omp simd
    for (int64_t j = 0; j < n; ++j) acc[j] += cpu::fast_exp_nonpos(z[j] - l);  // -inf -> 0
  }
}

template <typename Tag>
void run(const Problem& P, float* mass, float* ent, float* lse) {
  const int64_t items = P.BH * P.nchunks;
  // kept scores, chunk by chunk: [BH, nchunks, G, C] (each item writes and reads one block)
  const int64_t kept_floats = items * P.G * P.C;
  const bool keep = kept_floats <= score_budget();
  std::unique_ptr<float[]> own;  // a scratch above kRetainFloats: this call's own
  float* kept = keep ? kept_scratch(kept_floats, &own) : nullptr;
  std::vector<OnlineStats> states(static_cast<size_t>(items * P.G));
  const size_t zsize = static_cast<size_t>(P.G >= kGemmRows ? P.G * P.C : P.C);
  at::parallel_for(0, items, 1, [&](int64_t w0, int64_t w1) {
    std::vector<float> kf(static_cast<size_t>(P.C * P.d)), zbuf(keep ? P.C : zsize);
    for (int64_t w = w0; w < w1; ++w) phase1<Tag>(P, w / P.nchunks, w % P.nchunks, kept, kf.data(), zbuf.data(),
                                                  states.data());
  });
  at::parallel_for(0, P.BH * P.G, 64, [&](int64_t r0, int64_t r1) {
    for (int64_t o = r0; o < r1; ++o) merge_row(P, o / P.G, o % P.G, states.data(), lse, ent);
  });
  at::parallel_for(0, items, 1, [&](int64_t w0, int64_t w1) {
    std::vector<float> kf(keep ? 0 : static_cast<size_t>(P.C * P.d)), zbuf(keep ? 0 : zsize);
    for (int64_t w = w0; w < w1; ++w) phase2<Tag>(P, w / P.nchunks, w % P.nchunks, kept, states.data(), lse, kf.data(),
                                                  zbuf.data(), mass);
  });
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> attention_stats_cpu(const at::Tensor& q_in, const at::Tensor& k_in,
                                                                   double scale,
                                                                   const std::optional<at::Tensor>& mask_in,
                                                                   bool causal, int64_t window) {
  TORCH_CHECK(q_in.dim() == 4 && k_in.dim() == 4, "fuq::attention_stats: q and k must be 4-d, got ", q_in.sizes(),
              " and ", k_in.sizes());
  TORCH_CHECK(q_in.device().is_cpu() && k_in.device().is_cpu(), "fuq::attention_stats (CPU kernel): CPU tensors");
  const auto dtype = k_in.scalar_type();
  TORCH_CHECK(dtype == at::kFloat || dtype == at::kBFloat16 || dtype == at::kHalf,
              "fuq::attention_stats: k must be float32, bfloat16 or float16, got ", dtype);
  const int64_t B = q_in.size(0), Hq = q_in.size(1), Lq = q_in.size(2), d = q_in.size(3);
  const int64_t Hkv = k_in.size(1), T = k_in.size(2);
  TORCH_CHECK(k_in.size(0) == B && k_in.size(3) == d && Hkv > 0 && Hq % Hkv == 0,
              "fuq::attention_stats: k must be [B, Hkv, T, d] with Hq % Hkv == 0, got q ", q_in.sizes(), ", k ",
              k_in.sizes());
  TORCH_CHECK(window >= 0, "fuq::attention_stats: window must be >= 0 (0 = none), got ", window);
  const auto f32 = q_in.options().dtype(at::kFloat);
  at::Tensor mass = at::zeros({B, Hkv, T}, f32);
  at::Tensor ent = at::empty({B, Hq, Lq}, f32), lse = at::empty({B, Hq, Lq}, f32);
  if (B == 0 || Lq == 0 || T == 0 || Hq == 0) {
    lse.fill_(-kInf);
    ent.fill_(kNaN);
    return {mass, ent, lse};
  }
  const at::Tensor q = q_in.to(at::kFloat).contiguous();
  const at::Tensor k = (k_in.stride(3) == 1 || d <= 1) ? k_in : k_in.contiguous();
  at::Tensor mask;
  if (mask_in.has_value()) {
    mask = *mask_in;
    TORCH_CHECK(mask.scalar_type() == at::kBool && mask.device().is_cpu(),
                "fuq::attention_stats: mask must be a bool CPU tensor");
    TORCH_CHECK((mask.dim() == 2 && mask.size(0) == B && mask.size(1) == T) ||
                    (mask.dim() == 3 && mask.size(0) == B && mask.size(1) == Lq && mask.size(2) == T),
                "fuq::attention_stats: mask must be [B, T] or [B, Lq, T], got ", mask.sizes());
  }
  Problem P{};
  P.Hkv = Hkv;
  P.BH = B * Hkv;
  P.G = (Hq / Hkv) * Lq;
  P.Lq = Lq;
  P.T = T;
  P.d = d;
  P.q = q.const_data_ptr<float>();
  P.k = k.const_data_ptr();
  P.sk_b = k.stride(0);
  P.sk_h = k.stride(1);
  P.sk_t = k.stride(2);
  if (mask.defined()) {
    P.mask = mask.const_data_ptr<bool>();
    P.sm_b = mask.stride(0);
    P.sm_i = mask.dim() == 3 ? mask.stride(1) : 0;
    P.sm_t = mask.stride(-1);
  }
  P.scale = static_cast<float>(scale);
  P.causal = causal;
  P.window = window;
  P.C = std::clamp<int64_t>(kChunkFloats / std::max<int64_t>(d, 1) / 16 * 16, 16, 512);
  P.nchunks = (T + P.C - 1) / P.C;
  float *pm = mass.data_ptr<float>(), *pe = ent.data_ptr<float>(), *pl = lse.data_ptr<float>();
  switch (dtype) {
    case at::kFloat:
      run<cpu::F32>(P, pm, pe, pl);
      break;
    case at::kBFloat16:
      run<cpu::BF16>(P, pm, pe, pl);
      break;
    default:
      run<cpu::F16>(P, pm, pe, pl);
      break;
  }
  return {mass, ent, lse};
}

}  // namespace
}  // namespace fuq

TORCH_LIBRARY_IMPL(fuq, CPU, m) { m.impl("attention_stats", &fuq::attention_stats_cpu); }
