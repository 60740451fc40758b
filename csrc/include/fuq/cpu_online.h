// CPU-side building blocks shared by fuq's C++ kernels (torch-free, header-only).
//
//   * bf16_to_float, fp16_to_float, to_float*: bf16 / fp16 / fp32 -> float32 (vectorised
//                       for arrays; F32 / BF16 / F16 tags let kernels template on the dtype)
//   * fast_exp_nonpos : a vectorisable exp for d <= 0 (Cody-Waite + degree-6 polynomial,
//                       ~2 ulp), exactly 0 below -87 (so -inf gives 0)
//   * OnlineStats     : the online (m, s, t, u) recurrence of log-sum-exp, entropy, varentropy
//   * order_key       : an order-preserving uint32 key of a float (total order, NaN included)
//   * TopK            : the k best (z, index) of a stream, block maxima to skip blocks
//   * TopCandidate    : (z, index) with the order "z descending, then index ascending"
//   * gt_mask8        : which of 8 floats exceed a threshold (top-k candidate scans)
//   * scan_blocks     : one chunk's values v_i = f(i), with the max of each block and a NaN flag
//   * RowPass         : one row's (or row segment's) state over its chunks: the online stats,
//                       the first argmax and the top-k candidates; fold a chunk, merge segments
//   * Outputs, finalize_row : the fields of logit_stats (the outputs of logit_stats and
//                       hidden_stats) written from a finished RowPass
//
// The loops here are written for the compiler to vectorise (`#pragma omp simd`, branch-free
// selects; build with -fopenmp or -fopenmp-simd so the simd reductions may reassociate, and
// with -fno-trapping-math so GCC if-converts the selects), so they work on any ISA
// and use AVX2/FMA when built with -march=native (or -mavx2 -mfma -mf16c). The only
// intrinsics, each with a scalar fallback, are the F16C conversion and an 8-lane compare mask.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <vector>

#if defined(__AVX__) || defined(__F16C__)
#include <immintrin.h>
#endif

namespace fuq {
namespace cpu {

constexpr float kInf = std::numeric_limits<float>::infinity();
constexpr float kNaN = std::numeric_limits<float>::quiet_NaN();

// ---------------------------------------------------------------------------------------
// Scalar conversions (the exact IEEE conversions: bf16 is the top half of a float32).

// __builtin_bit_cast (GCC >= 11, Clang >= 9) keeps the loops that use these vectorisable;
// memcpy is the portable spelling.
#if defined(__has_builtin)
#if __has_builtin(__builtin_bit_cast)
#define FUQ_HAS_BIT_CAST 1
#endif
#endif

inline float bits_to_float(uint32_t b) {
#ifdef FUQ_HAS_BIT_CAST
  return __builtin_bit_cast(float, b);
#else
  float f;
  std::memcpy(&f, &b, sizeof f);
  return f;
#endif
}

inline uint32_t float_to_bits(float f) {
#ifdef FUQ_HAS_BIT_CAST
  return __builtin_bit_cast(uint32_t, f);
#else
  uint32_t b;
  std::memcpy(&b, &f, sizeof b);
  return b;
#endif
}

inline float bf16_to_float(uint16_t h) { return bits_to_float(static_cast<uint32_t>(h) << 16); }

inline float fp16_to_float(uint16_t h) {
#if defined(__F16C__)
  return _cvtsh_ss(h);
#else
  // IEEE binary16 -> binary32, subnormals included.
  const uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
  const uint32_t exp = (h >> 10) & 0x1fu;
  uint32_t mant = h & 0x3ffu;
  if (exp == 0x1f) return bits_to_float(sign | 0x7f800000u | (mant << 13));  // inf / NaN
  if (exp == 0) {
    if (mant == 0) return bits_to_float(sign);
    // subnormal: value = mant * 2^-24
    const float v = static_cast<float>(mant) * 5.9604644775390625e-8f;
    return sign ? -v : v;
  }
  return bits_to_float(sign | ((exp + 112u) << 23) | (mant << 13));
#endif
}

// Input element types, tagged so the kernels can template on them without torch.
struct F32 {
  using storage = float;
};
struct BF16 {
  using storage = uint16_t;
};
struct F16 {
  using storage = uint16_t;
};

// dst[i] = float(src[i]) for i < n, vectorised.
inline void to_float(const float* src, int64_t n, float* dst) { std::memcpy(dst, src, sizeof(float) * n); }

inline void to_float_bf16(const uint16_t* src, int64_t n, float* dst) {
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) dst[i] = bf16_to_float(src[i]);
}

inline void to_float_fp16(const uint16_t* src, int64_t n, float* dst) {
  int64_t i = 0;
#if defined(__F16C__) && defined(__AVX__)
  for (; i + 8 <= n; i += 8) {
    const __m128i h = _mm_loadu_si128(reinterpret_cast<const __m128i*>(src + i));
    _mm256_storeu_ps(dst + i, _mm256_cvtph_ps(h));
  }
#endif
  for (; i < n; ++i) dst[i] = fp16_to_float(src[i]);
}

inline void to_float(const uint16_t* src, int64_t n, float* dst, BF16) { to_float_bf16(src, n, dst); }
inline void to_float(const uint16_t* src, int64_t n, float* dst, F16) { to_float_fp16(src, n, dst); }
inline void to_float(const float* src, int64_t n, float* dst, F32) { to_float(src, n, dst); }

inline float scalar_to_float(float x, F32) { return x; }
inline float scalar_to_float(uint16_t x, BF16) { return bf16_to_float(x); }
inline float scalar_to_float(uint16_t x, F16) { return fp16_to_float(x); }

// ---------------------------------------------------------------------------------------
// exp for d <= 0, vectorisable (branch-free, no calls: GCC and Clang vectorise loops of it).
//
// exp(d) = 2^n * exp(r), n = round(d / ln 2), r = d - n ln 2 in [-ln2/2, ln2/2] (Cody-Waite
// with a two-part ln 2), exp(r) by a degree-6 Taylor/minimax polynomial in Horner form.
// d below kExpMin (about -87.3, where exp underflows past FLT_MIN) returns exactly 0, so
// masked entries (d = -inf) contribute nothing. NaN input returns 0 as well: callers detect
// NaN separately (see OnlineStats::nan).
constexpr float kExpMin = -87.0f;

// Always inlined: a call inside the simd loops stops their vectorisation (GCC's inliner gave up on
// it in the density-free instantiations of OnlineStats::add_impl, and then in the default one too).
#if defined(__GNUC__)
__attribute__((always_inline))
#endif
inline float fast_exp_nonpos(float d) {
  const float dc = d > kExpMin ? d : kExpMin;  // maxps; a NaN d becomes kExpMin, zeroed below
  // Round d / ln 2 to an integer with the 1.5 * 2^23 shifter: the low mantissa bits of
  // `shifted` then hold n (two's complement), and n = shifted - shifter exactly.
  constexpr float kShifter = 12582912.0f;
  const float shifted = std::fma(dc, 1.44269504088896341f, kShifter);
  const float n = shifted - kShifter;
  float r = std::fma(n, -0.693359375f, dc);  // - n * ln2_hi (ln2_hi exact in 9 bits)
  r = std::fma(n, 2.12194440e-4f, r);         // - n * ln2_lo
  float p = 1.3981999507e-3f;
  p = std::fma(p, r, 8.3334519073e-3f);
  p = std::fma(p, r, 4.1665795894e-2f);
  p = std::fma(p, r, 1.6666665459e-1f);
  p = std::fma(p, r, 5.0000001201e-1f);
  p = std::fma(p, r * r, r);
  p = p + 1.0f;
  // 2^n: put n + 127 in the exponent field (the shifter's own bits shift out); n in [-126, 0].
  const float scale = bits_to_float((float_to_bits(shifted) + 127u) << 23);
  const float v = p * scale;
  return d >= kExpMin ? v : 0.0f;  // also 0 for NaN d
}

// ---------------------------------------------------------------------------------------
// The online recurrence.
//
// Invariant, for the values z_i seen so far (d_i = z_i - m, m = max z_i seen):
//   s = sum exp(d_i),  t = sum exp(d_i) d_i,  u = sum exp(d_i) d_i^2.
// Entries at -inf contribute exactly 0. Keeping d relative to the running max avoids the
// cancellation of raw moments. When m grows by delta > 0, d_i -> d_i - delta, so
//   s' = e^-delta s,  t' = e^-delta (t - delta s),  u' = e^-delta (u - 2 delta t + delta^2 s).
// Then with p_i = exp(d_i) / s:
//   lse = m + log s,  H = log s - t / s,  Var[-log p] = u / s - (t / s)^2,
//   log p_i = (z_i - m) - log s,  max log p = -log s.
// `nan` records a NaN or +inf seen (the reference gives NaN statistics for such rows);
// `pinf` a +inf, `qnan` a NaN: a row with +inf and no NaN has lse = +inf (torch.logsumexp).
//
// The density-free sums (logit_stats' opt-in `extra`; kept only when `extra` is set, with
// the order `alpha` > 0), relative to the same m:
//   sa = sum exp(alpha d_i),  sh = sum exp(d_i / 2),  sd = sum d_i,  n = #live
// over the live entries (z_i > -inf). Moving m up by delta: sa' = e^{-alpha delta} sa,
// sh' = e^{-delta/2} sh, sd' = sd - n delta. Then
//   sum log p_i = sd - n log s,  log sum p_i^alpha = log sa - alpha log s,
//   log sum sqrt(p_i) = log sh - (log s) / 2.
struct OnlineStats {
  float m = -kInf;
  float s = 0.0f;
  float t = 0.0f;
  float u = 0.0f;
  bool nan = false;
  bool pinf = false;
  bool qnan = false;
  bool extra = false;
  float alpha = 0.5f;
  float sa = 0.0f;
  float sh = 0.0f;
  double sd = 0.0;
  double n = 0.0;

  // Move the reference point to new_m >= m (new_m finite).
  inline void rescale_to(float new_m) {
    if (!(new_m > m)) return;
    if (m == -kInf) {  // nothing accumulated yet: s = t = u = 0 (and the extra sums)
      m = new_m;
      return;
    }
    const float delta = new_m - m;
    const float a = std::exp(-delta);
    u = a * (u - 2.0f * delta * t + delta * delta * s);
    t = a * (t - delta * s);
    s = a * s;
    if (extra) {
      sa *= std::exp(-alpha * delta);
      sh *= std::exp(-0.5f * delta);
      sd -= n * static_cast<double>(delta);
    }
    m = new_m;
  }

  // Accumulate z[0..n) whose maximum (ignoring NaN) is zmax. Call only with zmax finite.
  inline void add(const float* z, int64_t len, float zmax) {
    if (!extra) return add_impl<false, false>(z, len, zmax);
    if (alpha == 0.5f) return add_impl<true, true>(z, len, zmax);
    add_impl<true, false>(z, len, zmax);
  }

  // kExtra: also the density-free sums; kHalf: alpha = 1/2, so sa = sh (one exp less).
  template <bool kExtra, bool kHalf>
  inline void add_impl(const float* z, int64_t len, float zmax) {
    rescale_to(zmax);
    const float ref = m;
    [[maybe_unused]] const float al = alpha;
    float ss = 0.0f, tt = 0.0f, uu = 0.0f, aa = 0.0f, hh = 0.0f, dd = 0.0f, nn = 0.0f;
#pragma omp simd reduction(+ : ss, tt, uu, aa, hh, dd, nn)
    for (int64_t i = 0; i < len; ++i) {
      const float d0 = z[i] - ref;
      const float d = d0 > kExpMin ? d0 : kExpMin;  // keeps e * d finite for d0 = -inf (e = 0 there)
      const float e = fast_exp_nonpos(d0);
      const float ed = e * d;
      ss += e;
      tt += ed;
      uu = std::fma(ed, d, uu);
      if constexpr (kExtra) {
        const float h = fast_exp_nonpos(0.5f * d0);  // 0 for d0 = -inf
        hh += h;
        if constexpr (kHalf) {
          aa += h;
        } else {
          aa += fast_exp_nonpos(al * d0);
        }
        const bool live = d0 > -kInf;
        dd += live ? d0 : 0.0f;
        nn += live ? 1.0f : 0.0f;
      }
    }
    s += ss;
    t += tt;
    u += uu;
    if constexpr (kExtra) {
      sa += aa;
      sh += hh;
      sd += dd;
      n += nn;
    }
  }

  // Fold another partial state (of a disjoint set of entries) into this one.
  inline void merge(const OnlineStats& o) {
    nan = nan || o.nan;
    pinf = pinf || o.pinf;
    qnan = qnan || o.qnan;
    if (o.m == -kInf) return;  // o saw only -inf (or nothing)
    OnlineStats b = o;
    if (b.m > m) {
      rescale_to(b.m);
    } else {
      b.rescale_to(m);
    }
    s += b.s;
    t += b.t;
    u += b.u;
    sa += b.sa;
    sh += b.sh;
    sd += b.sd;
    n += b.n;
  }

  // log s, NaN if a NaN / +inf was seen, -inf if every entry was -inf.
  inline float log_s() const { return nan ? kNaN : std::log(s); }
  inline float lse() const { return nan ? (pinf && !qnan ? kInf : kNaN) : m + log_s(); }
  inline float entropy() const { return nan ? kNaN : std::log(s) - t / s; }
  inline float varentropy() const {
    if (nan) return kNaN;
    const float mean = t / s;
    const float v = u / s - mean * mean;
    return v > 0.0f ? v : (v == v ? 0.0f : v);  // rounding can push a zero variance below 0
  }
};

// ---------------------------------------------------------------------------------------
// Ordering for top-k and argmax: on z, descending, ties -> lower index.

// An order-preserving key: a < b (as floats, with -0 == +0) <=> key(a) < key(b).
// Total on all bit patterns: positive NaNs sort above +inf, negative NaNs below -inf.
inline uint32_t order_key(float x) {
  const uint32_t b = float_to_bits(x + 0.0f);  // -0 -> +0, so -0 and +0 tie as in float compare
  return (b & 0x80000000u) ? ~b : (b | 0x80000000u);
}

// Bit j of the result is set when z[j] > thr, for j < 8 (NaN compares false).
inline unsigned gt_mask8(const float* z, float thr) {
#if defined(__AVX__)
  return static_cast<unsigned>(
      _mm256_movemask_ps(_mm256_cmp_ps(_mm256_loadu_ps(z), _mm256_set1_ps(thr), _CMP_GT_OQ)));
#else
  unsigned m = 0;
  for (int j = 0; j < 8; ++j) m |= static_cast<unsigned>(z[j] > thr) << j;
  return m;
#endif
}

struct TopCandidate {
  float z;
  int64_t idx;
};

// "a comes before b": larger z first, then lower index. A strict weak order even with NaN.
inline bool before(const TopCandidate& a, const TopCandidate& b) {
  const uint32_t ka = order_key(a.z), kb = order_key(b.z);
  return ka != kb ? ka > kb : a.idx < b.idx;
}

// The k best (z, index) of a row or row segment, by before(); entries are offered in index
// order, with the maxima of blocks of kBlock entries to skip whole blocks. Until the list first fills up it
// takes every entry; then it keeps the k best (nth_element) and from there on takes only
// z > thr, thr being the k-th best so far. An entry equal to thr seen later has a larger
// index, so it would lose the tie: strict > is exact.
template <int64_t kBlock>
struct TopK {
  int64_t k = 0;
  int64_t cap = 0;
  bool pruned = false;
  float thr = -kInf;
  std::vector<TopCandidate> c;

  void init(int64_t k_, int64_t seg_len) {
    k = k_;
    pruned = false;
    thr = -kInf;
    // Room for k + slack: a small slack prunes often, so thr stays close to the true k-th
    // best and few blocks pass the skip test; each prune costs O(cap).
    cap = std::min(seg_len, 2 * k + 64);
    c.clear();
    c.reserve(static_cast<size_t>(cap));
  }

  void prune() {
    std::nth_element(c.begin(), c.begin() + (k - 1), c.end(), before);
    c.resize(static_cast<size_t>(k));
    thr = c[k - 1].z;  // the worst kept entry
    pruned = true;
  }

  inline void push(float z, int64_t idx) {
    c.push_back({z, idx});
    if (static_cast<int64_t>(c.size()) >= cap && cap > k) prune();
  }

  // Offer z[0..n) (indices base + i) with block maxima bmax.
  void offer(const float* z, int64_t n, const float* bmax, int64_t base) {
    int64_t i = 0;
    if (!pruned) {  // fill up: take everything until the first prune
      for (; i < n && !pruned; ++i) push(z[i], base + i);
    }
    for (; i < n; ++i) {  // the rest of the current block, one by one
      if (i % kBlock == 0) break;
      if (z[i] > thr) push(z[i], base + i);
    }
    for (int64_t b0 = i; b0 < n; b0 += kBlock) {
      if (!(bmax[b0 / kBlock] > thr)) continue;
      const int64_t b1 = std::min(n, b0 + kBlock);
      int64_t j = b0;
      for (; j + 8 <= b1; j += 8) {
        // An entry pushed after a prune inside this group may be <= the new thr: harmless,
        // the list then holds a few extra entries that the next prune removes.
        for (unsigned m = gt_mask8(z + j, thr); m != 0; m &= m - 1) {
          const int64_t q = j + __builtin_ctz(m);
          push(z[q], base + q);
        }
      }
      for (; j < b1; ++j) {
        if (z[j] > thr) push(z[j], base + j);
      }
    }
  }
};

// ---------------------------------------------------------------------------------------
// The chunked row pass shared by logit_stats and hidden_stats.

// v_i = f(i) for i < n (f may also store v_i), in blocks of kBlock: bmax[b] = max of block b
// (NaN ignored, -inf for an all -inf / NaN block). Returns the chunk max; sets *bad when a NaN
// is seen. f must be branch-free for the loop to vectorise.
template <int64_t kBlock, typename F>
inline float scan_blocks(int64_t n, float* bmax, bool* bad, F&& f) {
  float cmax = -kInf;
  int nan = 0;
  for (int64_t b0 = 0, bi = 0; b0 < n; b0 += kBlock, ++bi) {
    const int64_t b1 = std::min(n, b0 + kBlock);
    float bm = -kInf;
#pragma omp simd reduction(max : bm) reduction(| : nan)
    for (int64_t i = b0; i < b1; ++i) {
      const float v = f(i);
      bm = v > bm ? v : bm;
      nan |= (v != v);
    }
    bmax[bi] = bm;
    cmax = bm > cmax ? bm : cmax;
  }
  *bad = *bad || nan != 0;
  return cmax;
}

// One row (or one segment of a row) seen chunk by chunk: the online (m, s, t, u) state, the
// first index of the max and the top-k candidates.
template <int64_t kBlock>
struct RowPass {
  OnlineStats st;
  float best = -kInf;  // max z (NaN ignored)
  int64_t best_idx = 0;
  TopK<kBlock> top;

  // Start over for entries [begin, begin + len); best_idx = begin stays valid even if every
  // entry is -inf or NaN. alpha > 0: keep the density-free sums too (alpha = 0: off).
  void start(int64_t k, int64_t begin, int64_t len, float alpha = 0.0f) {
    st = OnlineStats{};
    st.extra = alpha > 0.0f;
    st.alpha = st.extra ? alpha : 0.5f;
    best = -kInf;
    best_idx = begin;
    if (k > 0) top.init(k, len);
  }

  // Fold the chunk z[0..n) = entries [c0, c0 + n), whose scan_blocks gave cmax, bmax and bad.
  void fold(const float* z, int64_t n, int64_t c0, float cmax, const float* bmax, bool bad, int64_t k) {
    if (bad || cmax == kInf) st.nan = true;  // NaN statistics from here on: stop accumulating
    st.qnan = st.qnan || bad;
    st.pinf = st.pinf || cmax == kInf;
    if (!st.nan && cmax > -kInf) st.add(z, n, cmax);
    if (cmax > best) {  // first index of the new max
      int64_t bi = 0;
      while (bmax[bi] != cmax) ++bi;
      int64_t i = bi * kBlock;
      while (z[i] != cmax) ++i;
      best = cmax;
      best_idx = c0 + i;
    }
    if (k > 0) top.offer(z, n, bmax, c0);
  }

  // Fold b, a later segment of the same row, into this one.
  void merge(const RowPass& b, int64_t k) {
    st.merge(b.st);
    if (b.best > best) {  // strict: on a tie the earlier segment has the lower index
      best = b.best;
      best_idx = b.best_idx;
    }
    if (k > 0) top.c.insert(top.c.end(), b.top.c.begin(), b.top.c.end());
  }
};

// Where finalize_row writes row r's fields (fuq::logit_stats' outputs, in its order).
struct Outputs {
  float* lse;
  float* entropy;
  float* varentropy;
  float* max_logprob;
  int64_t* argmax;
  float* topk_logprobs;  // [B, k]
  int64_t* topk_ids;     // [B, k]
  float* topk_mass;
  float* token_logprob;  // nullptr without tokens
  float* extra = nullptr;  // [B, 4]: sum log p, #live, log sum p^alpha, log sum sqrt p; or nullptr
};

// Write row r's fields from its finished pass; zt is the token's z (NaN for an id out of
// range: its log-prob is then NaN), read only when o.token_logprob is set.
template <int64_t kBlock>
void finalize_row(int64_t r, RowPass<kBlock>& p, int64_t k, float zt, const Outputs& o) {
  const OnlineStats& st = p.st;
  const float log_s = st.log_s();
  o.lse[r] = st.lse();
  o.entropy[r] = st.entropy();
  o.varentropy[r] = st.varentropy();
  o.max_logprob[r] = (p.best - st.m) - log_s;  // NaN for an all -inf row, as log_softmax gives
  o.argmax[r] = p.best_idx;
  float mass = 0.0f;
  if (k > 0) {
    auto& c = p.top.c;
    // c holds at least k entries: each segment keeps min(its length, >= k) of them.
    if (static_cast<int64_t>(c.size()) > k) std::nth_element(c.begin(), c.begin() + (k - 1), c.end(), before);
    std::sort(c.begin(), c.begin() + k, before);
    for (int64_t j = 0; j < k; ++j) {
      const float lp = (c[j].z - st.m) - log_s;
      o.topk_logprobs[r * k + j] = lp;
      o.topk_ids[r * k + j] = c[j].idx;
      mass += std::exp(lp);
    }
  }
  o.topk_mass[r] = mass;
  if (o.token_logprob != nullptr) o.token_logprob[r] = (zt - st.m) - log_s;
  if (o.extra != nullptr) {
    float* e = o.extra + 4 * r;
    if (st.nan || !(st.n > 0.0)) {  // the entropy is NaN: so are these
      e[0] = e[1] = e[2] = e[3] = kNaN;
    } else {
      const double ls = std::log(static_cast<double>(st.s));
      e[0] = static_cast<float>(st.sd - st.n * ls);
      e[1] = static_cast<float>(st.n);
      e[2] = static_cast<float>(std::log(static_cast<double>(st.sa)) - st.alpha * ls);
      e[3] = static_cast<float>(std::log(static_cast<double>(st.sh)) - 0.5 * ls);
    }
  }
}

}  // namespace cpu
}  // namespace fuq
