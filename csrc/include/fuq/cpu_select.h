// Sort-free truncation of one row of logits (header-only; torch only for at::parallel_for):
// the CPU core of fuq::truncate and fuq::sample.
//
// A row z (float32, already divided by T) is truncated in place, knob after knob, in
// Hugging Face's order. The live tokens are always {z >= lo} (lo > -inf, so masked -inf
// never counts): every knob only raises lo, so a chain of them costs no write until the
// end, except where a cut falls inside a tie group (fuq/reference.py's tie rule keeps its
// lower indices: top-p, top-h) and for typical (a prefix of |z - c| ascending): then the
// row is written out with the removed tokens at -inf and lo starts again from the bottom.
//
// How each cut-off is found, with p = exp(z - m) / S over the live set (m its max):
//   * min-p, epsilon, eta, top-nσ, p-less: a direct threshold on z from one stats pass
//     (S = Σe, D = Σe·d, E2 = Σe², count and moments of z; e = exp(z - m), d = m - z).
//   * top-k (k <= kHeapMax): a min-heap of the k largest values, one pass, rare inserts.
//   * top-p, top-h, large top-k: a histogram of the live tokens over d = m - z (kBins
//     linear bins spanning the live range, capped at kRange nats), with per-bin count,
//     mass Σe and Σe·d. The bin where the descending cumulative criterion crosses its
//     target is the only place the cut can be; its few members are collected and sorted
//     (by z, then index), and the exact cut is resolved inside it.
//   * typical: the same, binned on the key |z - c| ascending, c = lse - H.
//   When the first scan took the row's stats (the first knob: top-h, top-p, typical), the
//   binned range ends where the tokens beyond it provably hold too little of the mass (of the
//   entropy, for top-h) for the cut to lie there, and a chunk entirely beyond it adds the first
//   scan's per-chunk sums to the overflow bin, unread: the row is read once with exp (the
//   first scan), a few chunks are binned, and the output is written once. The bound only
//   narrows the bins: a cut that fell into the overflow bin anyway is still resolved there.
// Sums are float64; exp is cpu::fast_exp_nonpos (~2 ulp). The first scan and the draw's
// per-chunk sums spread a row's chunks over threads (at::parallel_for; serial inside a
// parallel region, i.e. when rows are already spread): each chunk's float partials are
// stored and merged in chunk order afterwards, so the result is bit-identical to one thread.
// Ties (fuq/reference.py): top-k and the thresholds keep equal values together; top-p,
// typical and top-h cut inside a tie group, keeping its lower indices. Top-h takes its
// exponentials relative to the runner-up when the max is alone, so a max 90 or 1000 nats
// ahead of the rest does not underflow the entropy to 0.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <functional>
#include <limits>
#include <queue>
#include <type_traits>
#include <utility>
#include <vector>

#include <ATen/Parallel.h>

#include "fuq/cpu_online.h"

#if defined(__AVX512F__) && defined(__GNUC__) && !defined(__clang__)
#define FUQ_WIDE_VECTORS __attribute__((target("prefer-vector-width=512")))
#else
#define FUQ_WIDE_VECTORS
#endif

namespace fuq {
namespace cpu {

// Knobs with their off-values (see fuq/_library.py): top_k 0, top_p 1, min_p 0,
// typical_p 1, epsilon 0, eta 0, top_h 0, top_n_sigma < 0, p_less false.
struct Knobs {
  int64_t top_k = 0;
  double top_p = 1.0;
  double min_p = 0.0;
  double typical_p = 1.0;
  double epsilon = 0.0;
  double eta = 0.0;
  double top_h = 0.0;
  double top_n_sigma = -1.0;
  bool p_less = false;
  int64_t min_tokens_to_keep = 1;
};

constexpr int kBins = 2048;         // histogram resolution
constexpr double kRange = 40.0;     // nats covered by the bins; beyond: one overflow bin
constexpr int64_t kHeapMax = 2048;  // top-k by heap up to this k, by histogram beyond
constexpr int64_t kChunk = 256;
constexpr int64_t kParGrain = 64;  // chunks per task of a row split over threads
constexpr float kLowest = -std::numeric_limits<float>::max();
constexpr int64_t kAllIdx = std::numeric_limits<int64_t>::max();  // a cut that keeps a whole tie group

// The smallest float f with (double) f >= t (a threshold "z >= t" as "z >= f" on floats).
inline float ceil_float(double t) {
  if (!(t > static_cast<double>(kLowest))) return kLowest;
  if (t > static_cast<double>(std::numeric_limits<float>::max())) return kInf;
  float f = static_cast<float>(t);
  if (static_cast<double>(f) < t) f = std::nextafter(f, kInf);
  return f;
}

struct Member {
  float z;
  int64_t idx;
  double key;  // the sort key of the pass (d or the typical key)
};

struct Workspace {
  std::vector<int64_t> cnt = std::vector<int64_t>(kBins + 2);
  std::vector<double> mass = std::vector<double>(kBins + 2);
  std::vector<double> ment = std::vector<double>(kBins + 2);
  std::vector<Member> members;
  std::vector<double> terms, suffix;  // top-h: the cut bin's terms and their suffix sums
  std::vector<float> heap;
  // Per chunk of the row (index i0 / kChunk), filled by init: the max (NaN ignored) and the
  // min of the finite values. Every later pass skips a chunk these prove irrelevant; after
  // typical writes the row, cmax is the band's max and cmin a lower bound.
  std::vector<float> cmax, cmin;
  std::vector<float> part;     // per chunk: init's float sums relative to pmax (4 per chunk)
  std::vector<uint8_t> cnan;   // per chunk: holds a NaN
  std::vector<int32_t> ccnt;   // per chunk: its live (> -inf, not NaN) tokens, as init saw them
  std::vector<float> pmax;     // per chunk: the max of the row up to it (init)
  alignas(64) float zbuf[kChunk];
  alignas(64) float e[kChunk];
  alignas(64) int32_t bin[kChunk];
  alignas(64) uint8_t inb[kChunk + 8];  // histogram: the token is in a bin of the binned range
};

struct Stats {
  double S = 0, D = 0, U = 0, E2 = 0;  // Σe, Σe·d, Σe·d², Σe² over the live set, d = m - z
  int64_t n = 0;                       // live count
  double A = 0, A2 = 0;                // Σ(z - m), Σ(z - m)² (top-nσ)
};

// Tag: the element type of the input row (cpu::F32, BF16, F16). The row z = float(x) / T is
// never stored whole: every pass converts the chunk it reads (L1-resident), and only
// finish() (or typical, which must) writes float32 z to the output row.
template <typename Tag>
class RowTruncator {
  using Src = typename Tag::storage;

 public:
  RowTruncator(const Src* x, float t, float* z, int64_t V, Workspace& ws)
      : x_(x), t_(t), z_(z), V_(V), ws_(ws), nb_(bins_for(V)) {}

  // The histogram's bin count for a row of V: kBins for long rows, fewer for short ones (a
  // short row's every pass over 2048 bins cost more than its tokens: ~5 us of a B = 1, V = 1024
  // top-p sample). Any count gives the same kept set: the bins only locate the cut.
  static int32_t bins_for(int64_t V) {
    int64_t nb = 64;
    while (nb < kBins && nb * 4 < V) nb *= 2;
    return static_cast<int32_t>(nb);
  }

  // Scan the row: its max (m), the min of its finite values and its live count (all three per
  // chunk too, kept for the later passes' skips) and, when `with_stats`, the stats of the whole
  // row by the online recurrence: each chunk's float sums are taken relative to the max of the
  // row up to that chunk (the prefix max) and merged in chunk order, rescaled when the max grows,
  // as one serial online scan takes them. On one thread (or inside a parallel region: rows
  // already spread) that is one read of the row (each chunk's sums while it is in L1); a row
  // split over threads scans twice (the max first, then the sums). Both give the same bits
  // (the same non-inlined chunk_sums). The per-chunk sums stay (parts_ok_) for the
  // histograms of the first knob, which add a chunk whose tokens all fall into the overflow bin
  // from them, unread. False if the row holds a NaN or +inf (then nothing else may be called
  // but finish_nan).
  bool init(bool with_stats) {
    const int64_t nch = (V_ + kChunk - 1) / kChunk;
    ws_.cmax.resize(nch);
    ws_.cmin.resize(nch);
    ws_.cnan.resize(nch);
    ws_.ccnt.resize(nch);
    ws_.pmax.resize(nch);
    if (with_stats) ws_.part.resize(4 * nch);
    float* cmaxs = ws_.cmax.data();
    float* cmins = ws_.cmin.data();
    uint8_t* cnans = ws_.cnan.data();
    int32_t* ccnts = ws_.ccnt.data();
    float* pm = ws_.pmax.data();
    float* pt = ws_.part.data();
    const bool split = nch > kParGrain && !at::in_parallel_region() && at::get_num_threads() > 1;
    if (!split) {
      // one read: per chunk its scan, then its sums relative to the prefix max
      float run = -kInf;
      for_chunks([&](const float* zc, int64_t i0, int64_t n) {
        const int64_t c = i0 / kChunk;
        scan_chunk(zc, n, cmaxs + c, cmins + c, cnans + c, ccnts + c);
        run = std::max(run, cmaxs[c]);
        pm[c] = run;
        if (with_stats) chunk_sums(zc, n, run, pt + 4 * c);
      });
    } else {
      // 1. per chunk: max (NaN ignored), min of the finite values, NaN present, live count
      par_chunks([&](const float* zc, int64_t i0, int64_t n) {
        const int64_t c = i0 / kChunk;
        scan_chunk(zc, n, cmaxs + c, cmins + c, cnans + c, ccnts + c);
      });
      float run = -kInf;
      for (int64_t c = 0; c < nch; ++c) pm[c] = run = std::max(run, cmaxs[c]);
      // 2. per chunk: its sums relative to the prefix max
      if (with_stats && !(run == kInf)) {
        par_chunks([&](const float* zc, int64_t i0, int64_t n) {
          const int64_t c = i0 / kChunk;
          chunk_sums(zc, n, pm[c], pt + 4 * c);
        });
      }
    }
    float mx = -kInf, mn = kInf;
    bool nan = false;
    for (int64_t c = 0; c < nch; ++c) {
      mx = std::max(mx, cmaxs[c]);
      mn = std::min(mn, cmins[c]);
      nan = nan || cnans[c];
    }
    m_ = mx;
    zmin_ = mn;
    lo_ = kLowest;
    nan_ = nan;
    parts_ok_ = false;
    const bool ok = !nan && mx != kInf;
    if (with_stats && ok && mx > -kInf) {
      // the recurrence, rescaled when the max grows
      double S = 0, D = 0, U = 0, E2 = 0;  // Σe, Σe·d, Σe·d², Σe² relative to the running max
      float rm = -kInf;
      for (int64_t c = 0; c < nch; ++c) {
        const float cmx = cmaxs[c];
        if (cmx > rm) {
          if (rm > -kInf) {  // move the reference point: d -> d + delta, e -> e * exp(-delta)
            const double delta = static_cast<double>(cmx) - static_cast<double>(rm);
            const double a = std::exp(-delta);
            U = a * (U + 2 * delta * D + delta * delta * S);
            D = a * (D + delta * S);
            S = a * S;
            E2 = a * a * E2;
          }
          rm = cmx;
        }
        if (rm == -kInf) continue;
        S += pt[4 * c], D += pt[4 * c + 1], U += pt[4 * c + 2], E2 += pt[4 * c + 3];
      }
      st_ = Stats();
      st_.S = S, st_.D = D, st_.U = U, st_.E2 = E2;
      stats_ok_ = true;
      moments_ok_ = false;
      parts_ok_ = true;
    }
    return ok;
  }

  // Switch the row to z = float(x) / t after an init at t = 1 (x itself), keeping that first
  // scan: division by t > 0 is monotone and correctly rounded, so the per-chunk max / min
  // of x / t are those of x divided by t. Returns init's verdict at t (false: NaN or +inf).
  bool retemper(float t) {
    t_ = t;
    for (float& v : ws_.cmax) v = v / t;
    for (float& v : ws_.cmin) v = v / t;
    m_ = m_ / t;
    zmin_ = zmin_ / t;
    lo_ = kLowest;
    stats_ok_ = moments_ok_ = parts_ok_ = false;
    return !nan_ && m_ != kInf;
  }

  // init saw a NaN (its false then means NaN, not only +inf).
  bool has_nan() const { return nan_; }

  // The first index of the max (call after init; 0 for a row of -inf).
  int64_t argmax() {
    for (int64_t i0 = 0; i0 < V_; i0 += kChunk) {
      if (!(ws_.cmax[i0 / kChunk] == m_)) continue;
      const int64_t n = std::min(kChunk, V_ - i0);
      const float* zc = chunk(i0, n);
      for (int64_t j = 0; j < n; ++j) {
        if (zc[j] == m_) return i0 + j;
      }
    }
    return 0;
  }

  // The k best (z, index) of the row before any knob, z descending then index ascending
  // (cpu::before); a chunk whose max cannot enter the list is skipped after one vector max.
  void top_candidates(int64_t k, std::vector<TopCandidate>& h) {
    h.clear();
    if (k == 0) return;
    auto worse_on_top = [](const TopCandidate& a, const TopCandidate& b) { return before(a, b); };
    const float* cmaxs = ws_.cmax.data();
    for (int64_t i0 = 0; i0 < V_; i0 += kChunk) {
      // a later index never beats an equal value
      if (static_cast<int64_t>(h.size()) == k && !(cmaxs[i0 / kChunk] > h.front().z)) continue;
      const int64_t n = std::min(kChunk, V_ - i0);
      const float* zc = chunk(i0, n);
      for (int64_t j = 0; j < n; ++j) {
        const float v = zc[j];
        if (static_cast<int64_t>(h.size()) < k) {
          h.push_back({v, i0 + j});
          std::push_heap(h.begin(), h.end(), worse_on_top);
        } else if (v > h.front().z) {
          std::pop_heap(h.begin(), h.end(), worse_on_top);
          h.back() = {v, i0 + j};
          std::push_heap(h.begin(), h.end(), worse_on_top);
        }
      }
    }
    std::sort(h.begin(), h.end(), [](const TopCandidate& a, const TopCandidate& b) { return before(a, b); });
  }

  // A row holding NaN or +inf: all NaN out.
  void finish_nan() { std::fill(z_, z_ + V_, kNaN); }

  float max() const { return m_; }
  bool empty() const { return m_ == -kInf; }
  float lo() const { return lo_; }


  // Stats of the live set (one pass). Sums run in float over chunks of kChunk tokens and
  // in float64 across chunks.
  const Stats& stats(bool moments = false) {
    if (stats_ok_ && (!moments || moments_ok_)) return st_;
    if (moments) {
      stats_pass<true>();
    } else {
      stats_pass<false>();
    }
    stats_ok_ = true;
    moments_ok_ = moments;
    return st_;
  }

  // The k-th largest live value (ties counted), or kLowest when fewer than k are live.
  float kth_largest(int64_t k) {
    if (k <= 1) return m_;
    if (k > V_) return kLowest;
    if (k <= kHeapMax) {
      auto& h = ws_.heap;
      h.clear();
      const float lo = lo_;
      float thr = lo;  // below it nothing enters; the heap's min once it holds k values
      const float* cmaxs = ws_.cmax.data();
      for (int64_t i0 = 0; i0 < V_; i0 += kChunk) {
        if (!(cmaxs[i0 / kChunk] >= thr)) continue;  // nothing in this chunk enters the heap
        const int64_t n = std::min(kChunk, V_ - i0);
        const float* zc = chunk(i0, n);
        for (int64_t j = 0; j < n; ++j) {
          const float v = zc[j];
          if (!(v >= thr)) continue;
          if (static_cast<int64_t>(h.size()) < k) {
            h.push_back(v);
            std::push_heap(h.begin(), h.end(), std::greater<float>());
            if (static_cast<int64_t>(h.size()) == k) thr = std::nextafter(h.front(), kInf);
          } else {
            std::pop_heap(h.begin(), h.end(), std::greater<float>());
            h.back() = v;
            std::push_heap(h.begin(), h.end(), std::greater<float>());
            thr = std::nextafter(h.front(), kInf);
          }
        }
      }
      if (static_cast<int64_t>(h.size()) < k) return kLowest;
      return h.front();
    }
    histogram_desc<false, false>(m_);
    int64_t c = 0;
    for (int b = 0; b <= nb_; ++b) {
      if (c + ws_.cnt[b] >= k) {
        collect_desc(b);
        return ws_.members[k - c - 1].z;
      }
      c += ws_.cnt[b];
    }
    return kLowest;
  }

  // ---- the knobs, in Hugging Face's order ----

  // Top-H: the prefix of the order whose entropy terms -p log p, summed up to and including
  // each token, stay <= alpha * H; the first token always. In units of S (e = exp(z - m),
  // d = m - z): S · (-p log p) = e (d + log S). When the max is alone and the runner-up m2 is
  // g nats below it, the rest is histogrammed relative to m2 (e' = exp(z - m2), every term
  // times exp(g)) and the top token's term exp(g) log1p(x) = R log1p(x) / x, x = exp(-g) R,
  // R = Σ e': no float32 exp underflows, whatever g is (as fuq/reference.py's _entropy_terms).
  void top_h(double alpha) {
    int64_t n_top = 0;
    float m2 = -kInf;
    top_group(&n_top, &m2);
    const bool alone = n_top == 1 && m2 > -kInf;
    const float mref = alone ? m2 : m_;
    const double g = alone ? static_cast<double>(m_) - static_cast<double>(m2) : 0.0;
    // With the row's stats at hand (init): the tokens beyond d_T below m hold less than half of
    // the terms the cut leaves out, (1 - alpha) S H, so the cut lies above d_T: bins up to it,
    // and the chunks beyond it added from init's sums (for a lone max at most 40 nats ahead:
    // their float sums relative to it then neither underflow nor cancel).
    double cap = kRange;
    if (stats_ok_ && st_.S >= 1 && alpha < 1.0) {
      const double L = std::log(st_.S), H = L + st_.D / st_.S;
      const double target = 0.5 * (1.0 - alpha) * st_.S * H;
      if (H > 0 && target > 0) {
        const double dT = terms_cap(L, target);
        if (dT - g >= 1.0) cap = dT - g;  // in d' = mref - z
      }
    }
    histogram_desc<true, true>(mref, cap, !alone || g <= 40.0);  // alone: the top token is left out
    double R = 0;
    for (int b = 0; b <= nb_; ++b) R += ws_.mass[b];
    double logS, top_term = 0;
    if (alone) {
      const double x = std::exp(-g) * R;
      logS = std::log1p(x);
      top_term = x > 0 ? R * (logS / x) : R;
    } else {
      logS = std::log(R);
    }
    const double off = logS + g;  // the term of a histogrammed token: e' (off + (mref - z))
    double H = top_term;  // summed as the walk below sums: alpha = 1 keeps every token
    for (int b = 0; b <= nb_; ++b) H += ws_.mass[b] * off + ws_.ment[b];
    const double bound = alpha * H;
    double cum = top_term;  // alone: the top token, first and always kept
    int b = 0;
    for (; b <= nb_; ++b) {
      const double add = ws_.mass[b] * off + ws_.ment[b];
      if (cum + add > bound) break;
      cum += add;
    }
    if (b > nb_) return;  // everything fits
    double after = 0;  // the terms of the bins after b
    for (int bb = b + 1; bb <= nb_; ++bb) after += ws_.mass[bb] * off + ws_.ment[bb];
    collect_desc(b);
    const auto& mem = ws_.members;
    const size_t nm = mem.size();
    auto& terms = ws_.terms;
    terms.resize(nm + 1);
    for (size_t j = 0; j < nm; ++j) terms[j] = static_cast<double>(fast_exp_nonpos(mem[j].z - mref)) * (off + mem[j].key);
    // suffix sums of the bin's terms, from its end: terms[nm + j'] would be past it
    std::vector<double>& suf = ws_.suffix;
    suf.assign(nm + 1, 0.0);
    for (size_t j = nm; j-- > 0;) suf[j] = suf[j + 1] + terms[j];
    // Walk the bin's tie groups (runs of equal z: equal terms t). The i-th token of a run of n
    // is kept iff Cb + i t <= alpha (Cb + n t + Ca) (Cb, Ca: the terms before / after the run),
    // counted as i - alpha n <= (alpha (Cb + Ca) - Cb) / t with alpha n exact: on a row that is
    // one tie group (uniform) the count is #{i : i <= alpha n}, as fuq/reference.py's _top_h.
    size_t j = 0;
    size_t kept = 0;  // members kept
    bool cut = false;
    while (j < nm) {
      size_t e = j + 1;
      while (e < nm && mem[e].z == mem[j].z) ++e;
      const double t = terms[j];
      const int64_t n = static_cast<int64_t>(e - j);
      int64_t k;
      if (t > 0) {
        const double ca = after + suf[e];
        k = count_within(alpha, n, (alpha * (cum + ca) - cum) / t);
      } else {
        k = cum <= bound ? n : 0;  // zero terms (underflow): the running sum decides
      }
      if (k < n) {
        kept = j + static_cast<size_t>(k);
        cut = true;
        break;
      }
      for (size_t q = j; q < e; ++q) cum += terms[q];
      j = e;
    }
    if (!cut) {  // rounding: the bin fitted after all; cut after it
      apply_cut(desc_cut(nm - 1));
    } else if (!alone && b == 0 && kept == 0) {
      apply_cut(desc_cut(0));  // the first token of the order is always kept
    } else if (kept > 0) {
      apply_cut(desc_cut(kept - 1));  // everything before mem[kept]
    } else {
      set_lo(std::nextafter(mem[0].z, kInf));  // mem[0] is its group's first: drop the group
    }
  }

  // A d_T >= 1 with V e^-d_T (d_T + L) <= target: the entropy terms e (d + L) of the tokens beyond
  // d_T (each below e^-d_T (d_T + L): decreasing in d >= 1 - L, L = log S >= 0) sum below target.
  double terms_cap(double L, double target) const {
    const double n = static_cast<double>(V_);
    double d = 20.0;
    for (int it = 0; it < 8; ++it) d = std::max(1.0, std::log(n * (d + L) / target));  // a contraction
    while (n * std::exp(-d) * (d + L) > target) d += 0.5;
    return d;
  }

  // #{i in 1..n : i - alpha n <= r}, with alpha n taken exactly (hi + lo, lo = fma's remainder):
  // exact when r = 0 (a row that is one tie group).
  static int64_t count_within(double alpha, int64_t n, double r) {
    const double nd = static_cast<double>(n);
    const double hi = alpha * nd;
    const double lo = std::fma(alpha, nd, -hi);
    auto ok = [&](int64_t i) { return (static_cast<double>(i) - hi) - lo <= r; };
    const double guess = std::floor(hi + r);
    int64_t k = guess < 0 ? 0 : (guess > nd ? n : static_cast<int64_t>(guess));
    while (k < n && ok(k + 1)) ++k;
    while (k > 0 && !ok(k)) --k;
    return k;
  }

  void top_k(int64_t k) { set_lo(kth_largest(k)); }

  // Top-p: the shortest prefix of the order of mass >= p (a token is kept iff the mass before
  // it is < p), and at least its first mtk tokens.
  void top_p(double p, int64_t mtk) {
    histogram_desc<true, false>(m_, mass_cap(1.0 - p), true);
    double S = 0;
    for (int b = 0; b <= nb_; ++b) S += ws_.mass[b];
    // x < p·S decided on the exact product (one rounding, in the fma): a uniform row of V
    // keeps #{j : j / V < p} tokens (its weights are 1 and their sums exact)
    auto below = [p, S](double x) { return std::fma(p, S, -x) > 0; };
    double cum = 0;
    int b = 0;
    for (; b <= nb_; ++b) {
      if (!below(cum + ws_.mass[b]) && ws_.cnt[b] > 0) break;
      cum += ws_.mass[b];
    }
    if (b > nb_) return;  // rounding: the whole row is needed
    const Cut mk = mtk > 1 ? count_cut(mtk) : Cut{m_, 0, false};  // the mtk-th token of the order
    if (mk.idx == kAllIdx) return;  // fewer than mtk live tokens: keep them all
    collect_desc(b);
    const auto& mem = ws_.members;
    size_t j = 0;
    for (; j + 1 < mem.size(); ++j) {
      cum += static_cast<double>(fast_exp_nonpos(mem[j].z - m_));
      if (!below(cum)) break;
    }
    const Cut cp = desc_cut(j);
    apply_cut(mtk > 1 && before_in_order(cp, mk) ? mk : cp);  // the later of the two cuts
  }

  void min_p(double mp, int64_t mtk) {
    float cut = ceil_float(static_cast<double>(m_) + std::log(mp));
    if (mtk > 1) cut = std::min(cut, kth_largest(mtk));
    set_lo(std::min(cut, m_));
  }

  // Typical: the prefix of the order (|z - c| ascending, index ascending) of mass >= mass
  // (cut as top-p), and at least its first mtk tokens; written out at once.
  void typical(double mass, int64_t mtk) {
    const Stats& s = stats();
    const float c = static_cast<float>(static_cast<double>(m_) - s.D / s.S);  // lse - H
    // the tokens of key > k0 hold < (1 - mass) / 2 of the mass, so the cut lies at or below k0:
    // with k0 >= m - c no token is above c + k0, and c - k0 <= m - mass_cap
    const double dc = static_cast<double>(m_) - static_cast<double>(c);
    const double k0 = std::max(dc, mass_cap(1.0 - mass) - dc);
    histogram_typical(c, k0);
    double S = 0;
    for (int b = 0; b <= nb_; ++b) S += ws_.mass[b];
    auto below = [mass, S](double x) { return std::fma(mass, S, -x) > 0; };  // x < mass·S, exactly
    // mass cut: the first token (key ascending) at which the cumulative mass reaches mass·S
    float key_cut;
    int64_t key_idx = kAllIdx;
    double cum = 0;
    int b = 0;
    for (; b <= nb_; ++b) {
      if (!below(cum + ws_.mass[b]) && ws_.cnt[b] > 0) break;
      cum += ws_.mass[b];
    }
    if (b > nb_) {
      key_cut = kInf;  // rounding: keep every live token
    } else {
      collect_typical(b, c);
      const auto& mem = ws_.members;
      size_t j = 0;
      for (; j + 1 < mem.size(); ++j) {
        cum += static_cast<double>(fast_exp_nonpos(mem[j].z - m_));
        if (!below(cum)) break;
      }
      key_cut = static_cast<float>(mem[j].key);
      key_idx = j + 1 < mem.size() && mem[j + 1].key == mem[j].key ? mem[j].idx : kAllIdx;
    }
    if (mtk > 1) {
      int64_t cc = 0;
      int bb = 0;
      for (; bb <= nb_; ++bb) {
        if (cc + ws_.cnt[bb] >= mtk) {
          collect_typical(bb, c);
          const auto& mem = ws_.members;
          const size_t j = static_cast<size_t>(mtk - cc - 1);
          const float k2 = static_cast<float>(mem[j].key);
          const int64_t i2 = j + 1 < mem.size() && mem[j + 1].key == mem[j].key ? mem[j].idx : kAllIdx;
          if (k2 > key_cut || (k2 == key_cut && i2 > key_idx)) key_cut = k2, key_idx = i2;
          break;
        }
        cc += ws_.cnt[bb];
      }
      if (bb > nb_) key_cut = kInf, key_idx = kAllIdx;  // fewer than mtk live tokens: keep them all
    }
    // write the prefix out. key_idx: the cut falls inside a group of equal keys, whose indices
    // up to key_idx stay
    if (key_idx == kAllIdx) {
      write_kept([=](float v, int64_t) { return std::fabs(v - c) <= key_cut; });
    } else {
      write_kept([=](float v, int64_t i) {
        const float key = std::fabs(v - c);
        return key < key_cut || (key == key_cut && i <= key_idx);
      });
    }
  }

  void epsilon(double eps, int64_t mtk) {
    const Stats& s = stats();
    const double lse = static_cast<double>(m_) + std::log(s.S);
    keep_p_at_least(lse + std::log(eps), mtk);
  }

  void eta(double eps, int64_t mtk) {
    const Stats& s = stats();
    const double logS = std::log(s.S);
    const double H = logS + s.D / s.S;
    const double eta = std::min(eps, std::sqrt(eps) * std::exp(-H));
    keep_p_at_least(static_cast<double>(m_) + logS + std::log(eta), mtk);
  }

  void top_n_sigma(double n) {
    const Stats& s = stats(true);
    double sigma = 0.0;
    if (s.n > 1) {
      const double mean = s.A / static_cast<double>(s.n);
      const double var = (s.A2 - mean * s.A) / static_cast<double>(s.n - 1);
      sigma = var > 0 ? std::sqrt(var) : 0.0;
    }
    set_lo(std::min(ceil_float(static_cast<double>(m_) - n * sigma), m_));
  }

  void p_less() {
    const Stats& s = stats();
    // p >= Σp²  <=>  e >= E2 / S  <=>  z >= m + log(E2 / S)
    set_lo(std::min(ceil_float(static_cast<double>(m_) + std::log(s.E2 / s.S)), m_));
  }

  void apply(const Knobs& k) {
    if (empty()) return;
    const int64_t mtk = k.min_tokens_to_keep;
    if (k.top_h > 0.0) top_h(k.top_h);
    if (k.top_k > 0) top_k(std::max(k.top_k, mtk));
    if (k.top_p < 1.0) top_p(k.top_p, mtk);
    if (k.min_p > 0.0) min_p(k.min_p, mtk);
    if (k.typical_p < 1.0) typical(k.typical_p, mtk);
    if (k.epsilon > 0.0) epsilon(k.epsilon, mtk);
    if (k.eta > 0.0) eta(k.eta, mtk);
    if (k.top_n_sigma >= 0.0) top_n_sigma(k.top_n_sigma);
    if (k.p_less) p_less();
  }

  // Write -inf over the removed tokens.
  void finish() {
    const float lo = lo_;
    if (mat_ && lo == kLowest) return;
    for_chunks_live([&](const float* zc, int64_t i0, int64_t n) {
      float* o = z_ + i0;
#pragma omp simd
      for (int64_t j = 0; j < n; ++j) o[j] = zc[j] >= lo ? zc[j] : -kInf;
    }, [&](int64_t i0, int64_t n) { std::fill(z_ + i0, z_ + i0 + n, -kInf); });
  }

  // Inverse-CDF draw over the live set in index order: the first live token whose
  // cumulative weight Σ exp(z - m) (float64) exceeds u * total.
  int64_t draw(double u) {
    if (empty()) return 0;
    const float m = m_, lo = lo_;
    const int64_t nch = (V_ + kChunk - 1) / kChunk;
    std::vector<double>& part = ws_.mass;  // reuse as per-chunk sums when it is big enough
    std::vector<double> big;
    double* ps;
    if (nch <= static_cast<int64_t>(part.size())) {
      ps = part.data();
    } else {
      big.resize(nch);
      ps = big.data();
    }
    const float* cmaxs = ws_.cmax.data();
    par_chunks([&, m, lo](const float* zc, int64_t i0, int64_t n) {
      float s = 0;
#pragma omp simd reduction(+ : s)
      for (int64_t j = 0; j < n; ++j) {
        const float v = zc[j];
        s += v >= lo ? fast_exp_nonpos(v - m) : 0.0f;
      }
      ps[i0 / kChunk] = s;
    }, [&](int64_t c) { return cmaxs[c] >= lo; }, [&](int64_t c) { ps[c] = 0; });
    double total = 0;
    for (int64_t c = 0; c < nch; ++c) total += ps[c];
    const double target = u * total;
    double cum = 0;
    int64_t last = -1;
    for (int64_t c = 0; c < nch; ++c) {
      if (ps[c] > 0) last = c;
      if (cum + ps[c] > target) {
        const int64_t i0 = c * kChunk, i1 = std::min(V_, i0 + kChunk);
        const float* zc = chunk(i0, i1 - i0);
        int64_t lastlive = -1;
        for (int64_t i = i0; i < i1; ++i) {
          const float v = zc[i - i0];
          if (!(v >= lo)) continue;
          lastlive = i;
          cum += static_cast<double>(fast_exp_nonpos(v - m));
          if (cum > target) return i;
        }
        if (lastlive >= 0 && c == nch - 1) return lastlive;
        // rounding within the chunk: continue with the next chunks
        continue;
      }
      cum += ps[c];
    }
    // u * total rounded up to total: the last live token
    if (last < 0) return 0;
    const int64_t l0 = last * kChunk, l1 = std::min(V_, l0 + kChunk);
    const float* zc = chunk(l0, l1 - l0);
    for (int64_t i = l1 - 1; i >= l0; --i) {
      if (zc[i - l0] >= lo) return i;
    }
    return 0;
  }

 private:
  // Keep z >= v (a threshold: equal values together).
  void set_lo(float v) {
    if (v > lo_) {
      lo_ = v;
      stats_ok_ = parts_ok_ = false;
    }
  }

  // A cut of the order (z descending, index ascending) after the token (z, idx); partial: the
  // token's tie group goes on past it (only its lower indices stay).
  struct Cut {
    float z;
    int64_t idx;
    bool partial;
  };

  // The cut after members[j] of a descending bin (every live token of its value is there).
  Cut desc_cut(size_t j) const {
    const auto& mem = ws_.members;
    return {mem[j].z, mem[j].idx, j + 1 < mem.size() && mem[j + 1].z == mem[j].z};
  }

  void apply_cut(const Cut& c) {
    if (c.partial) {
      write_cut(c.z, c.idx);
    } else {
      set_lo(c.z);
    }
  }

  // Write the row out keeping {z >= lo} ∩ ({z > zc} ∪ {z == zc, index <= idx}): a cut inside
  // a tie group, which no threshold on z can express. lo starts again from the bottom.
  void write_cut(float zcut, int64_t idx) {
    write_kept([=](float v, int64_t i) { return v > zcut || (v == zcut && i <= idx); });
  }

  // Write the row out keeping the tokens with z >= lo and keep(z, index); the new max is that
  // of the kept tokens, and lo starts again from the bottom.
  template <class Keep>
  void write_kept(Keep&& keep) {
    const float lo = lo_;
    float mx = -kInf;
    for_chunks([&](const float* zc, int64_t i0, int64_t n) {
      float* o = z_ + i0;
      float cmx = -kInf;
#pragma omp simd reduction(max : cmx)
      for (int64_t j = 0; j < n; ++j) {
        const float v = zc[j];
        const float w = v >= lo && keep(v, i0 + j) ? v : -kInf;
        o[j] = w;
        cmx = w > cmx ? w : cmx;
      }
      ws_.cmax[i0 / kChunk] = cmx;
      mx = std::max(mx, cmx);
    });
    mat_ = true;
    m_ = mx;
    lo_ = kLowest;
    stats_ok_ = parts_ok_ = false;
  }

  // (a.z, a.idx) comes before (b.z, b.idx) in the order (z descending, index ascending).
  static bool before_in_order(const Cut& a, const Cut& b) {
    return a.z != b.z ? a.z > b.z : a.idx < b.idx;
  }

  // The size of the live top group (z == m) and the largest live value below it (-inf: none).
  void top_group(int64_t* n_top, float* m2) {
    int64_t cnt = 0;
    float sec = -kInf;
    const float* cmaxs = ws_.cmax.data();
    for (int64_t i0 = 0; i0 < V_; i0 += kChunk) {
      const float cmx = cmaxs[i0 / kChunk];
      if (!(cmx >= lo_)) continue;
      if (cmx < m_ && cmx > lo_) {
        sec = std::max(sec, cmx);
        continue;
      }
      const int64_t n = std::min(kChunk, V_ - i0);
      const float* zc = chunk(i0, n);
      for (int64_t j = 0; j < n; ++j) {
        const float v = zc[j];
        if (!(v >= lo_)) continue;
        if (v == m_) {
          ++cnt;
        } else {
          sec = std::max(sec, v);
        }
      }
    }
    *n_top = cnt;
    *m2 = sec;
  }

  // One chunk's max (NaN ignored), min of the finite values, NaN present and live count (exact
  // in any order: inlined into both scans of init).
  __attribute__((always_inline)) static inline void scan_chunk(const float* zc, int64_t n, float* cmax, float* cmin,
                                                   uint8_t* cnan, int32_t* ccnt) {
    float cmx = -kInf, cmn = kInf;
    int32_t cn = 0, cl = 0;
#pragma omp simd reduction(max : cmx) reduction(min : cmn) reduction(+ : cn, cl)
    for (int64_t j = 0; j < n; ++j) {
      const float v = zc[j];
      cn += v != v ? 1 : 0;
      cl += v > -kInf ? 1 : 0;
      cmx = v > cmx ? v : cmx;
      const float w = v > -kInf ? v : kInf;
      cmn = w < cmn ? w : cmn;
    }
    *cmax = cmx, *cmin = cmn, *cnan = cn > 0, *ccnt = cl;
  }

  // One chunk's float sums Σe, Σe·d, Σe·d², Σe² (e = exp(z - m), d = m - z, over z > -inf)
  // relative to m (0 when m = -inf). Not inlined, as scan_chunk: one code, the same bits.
  // Bound by exp: 512-bit vectors in the AVX-512 build (as logit_stats.cpp; the build prefers
  // 256 for the selection passes).
  __attribute__((noinline)) FUQ_WIDE_VECTORS static void chunk_sums(const float* zc, int64_t n, float m, float* out) {
    float s = 0, dd = 0, uu = 0, e2 = 0;
    if (m > -kInf) {
#pragma omp simd reduction(+ : s, dd, uu, e2)
      for (int64_t j = 0; j < n; ++j) {
        const float d0 = m - zc[j];
        const float d = d0 < -kExpMin ? d0 : -kExpMin;  // finite (e = 0 beyond: -inf, underflow)
        const float e = fast_exp_nonpos(-d0);
        const float ed = e * d;
        s += e;
        dd += ed;
        uu += ed * d;
        e2 += e * e;
      }
    }
    out[0] = s, out[1] = dd, out[2] = uu, out[3] = e2;
  }

  template <bool MOM>
  void stats_pass() {
    const float m = m_, lo = lo_;
    double S = 0, D = 0, U = 0, E2 = 0, A = 0, A2 = 0;
    int64_t n = 0;
    for_chunks_live([&](const float* zc, int64_t, int64_t nn) {
      float s = 0, dd = 0, uu = 0, e2 = 0;
      double a = 0, a2 = 0;  // top-nσ: float64, the variance is a difference of moments
      int32_t c = 0;
#pragma omp simd reduction(+ : s, dd, uu, e2, a, a2, c)
      for (int64_t j = 0; j < nn; ++j) {
        const float v = zc[j];
        const bool live = v >= lo;
        const float d = live ? m - v : 0.0f;
        const float e = live ? fast_exp_nonpos(v - m) : 0.0f;
        const float ed = e * d;
        s += e;
        dd += ed;
        uu += ed * d;
        e2 += e * e;
        if (MOM) {
          const double dd64 = live ? static_cast<double>(m) - static_cast<double>(v) : 0.0;
          a += dd64;
          a2 += dd64 * dd64;
          c += live ? 1 : 0;
        }
      }
      S += s, D += dd, U += uu, E2 += e2, A -= a, A2 += a2, n += c;
    }, [](int64_t, int64_t) {});
    st_.S = S, st_.D = D, st_.U = U, st_.E2 = E2, st_.n = n, st_.A = A, st_.A2 = A2;
  }

  // A d_T in [1, kRange] beyond which (d = m - z > d_T) the live tokens hold less than q / 2 of
  // the mass (V e^-d_T <= q S / 2), from the live set's stats: a mass cut at 1 - q lies above it.
  // kRange when the stats are not at hand.
  double mass_cap(double q) const {
    if (!stats_ok_ || !(q > 0) || !(st_.S >= 1)) return kRange;
    const double d = std::log(2.0 * static_cast<double>(V_) / (q * st_.S));
    return std::clamp(d, 1.0, kRange);
  }

  // keep p >= exp(log_cut) or the mtk largest
  void keep_p_at_least(double log_cut, int64_t mtk) {
    float cut = ceil_float(log_cut);
    cut = std::min(cut, mtk > 1 ? kth_largest(mtk) : m_);
    set_lo(cut);
  }

  // the cut after the n-th live token of the order (z desc, index asc), from the current
  // histogram ({kLowest, kAllIdx}: fewer than n are live)
  Cut count_cut(int64_t n) {
    int64_t c = 0;
    for (int b = 0; b <= nb_; ++b) {
      if (c + ws_.cnt[b] >= n) {
        collect_desc(b);
        return desc_cut(static_cast<size_t>(n - c - 1));
      }
      c += ws_.cnt[b];
    }
    return {kLowest, kAllIdx, false};
  }

  // Bins over d = mref - z: width w spans [0, min(mref - zmin, kRange, cap)); bin nb_ = overflow,
  // nb_ + 1 = not live (or above mref: top-h leaves a lone max out this way).
  void bin_setup_desc(float mref, double cap) {
    mref_ = mref;
    const double range = std::min({static_cast<double>(mref) - static_cast<double>(zmin_), kRange, cap});
    inv_w_ = range > 1e-20 ? static_cast<float>(nb_ / range) : 1e20f;
  }

  // The bin of a token; the histogram and the collection use this one expression.
  static inline int32_t bin_of(float key, bool live, float iw, int32_t nb) {
    const float t = std::min(key * iw, static_cast<float>(nb));
    return live ? static_cast<int32_t>(t) : nb + 1;
  }

  // KEY: 0 = d = mref - z (descending z), 1 = |z - c| (typical). Per chunk, a vector pass
  // takes each token's bin and exponential and sums the overflow bin's share; only the tokens of
  // the binned range are scattered into their bins one by one (the costly part: a bin's double
  // sum is a serial chain). TAIL (init's per-chunk sums at hand, parts_ok_): a chunk whose every
  // live token falls into the overflow bin (bin_of is monotone in the key; as collect's skip)
  // adds its live count and its sums, rescaled from its prefix max to m, there unread.
  template <int KEY, bool MASS, bool ENT>
  __attribute__((flatten)) void histogram(float c, float iw, bool tail) {
    const int32_t nb = nb_;
    std::fill(ws_.cnt.begin(), ws_.cnt.begin() + nb + 2, 0);
    if (MASS) std::fill(ws_.mass.begin(), ws_.mass.begin() + nb + 2, 0.0);
    if (ENT) std::fill(ws_.ment.begin(), ws_.ment.begin() + nb + 2, 0.0);
    const float m = KEY == 0 ? mref_ : m_, lo = lo_;  // m: the exponentials' reference point
    int64_t* cnt = ws_.cnt.data();
    double* mass = ws_.mass.data();
    double* ment = ws_.ment.data();
    const float* cmaxs = ws_.cmax.data();
    const float* cmins = ws_.cmin.data();
    const float* pm = ws_.pmax.data();
    const float* pt = ws_.part.data();
    const int32_t* ccnts = ws_.ccnt.data();
    tail = tail && parts_ok_;
    float fpm = kNaN;  // the last prefix max rescaled from: f = exp(fpm - m), fd = fpm - m
    double f = 0, fd = 0;
    int64_t ovc = 0;  // the overflow bin's count and sums
    double ovs = 0, ovd = 0;
    for (int64_t i0 = 0; i0 < V_; i0 += kChunk) {
      const int64_t ci = i0 / kChunk;
      const float cmx = cmaxs[ci];
      if (!(cmx >= lo)) continue;  // no live token
      const int64_t n = std::min(kChunk, V_ - i0);
      if (tail) {
        bool over;
        if (KEY == 0) {
          over = bin_of(std::max(m - cmx, 0.0f), true, iw, nb) == nb;
        } else {
          const float cmn = cmins[ci];
          const float klo = (c >= cmn && c <= cmx) ? 0.0f : std::min(std::fabs(cmx - c), std::fabs(cmn - c));
          over = bin_of(klo, true, iw, nb) == nb;
        }
        if (over) {
          if (!(pm[ci] == fpm)) {
            fpm = pm[ci];
            fd = static_cast<double>(fpm) - static_cast<double>(m);
            f = std::exp(fd);
          }
          ovc += ccnts[ci];
          // e' = exp(z - m) = f e, m - z = (pm - z) - fd
          if (MASS) ovs += f * static_cast<double>(pt[4 * ci]);
          if (ENT) ovd += f * (static_cast<double>(pt[4 * ci + 1]) - fd * static_cast<double>(pt[4 * ci]));
          continue;
        }
      }
      const float* zc = chunk(i0, n);
      float* e = ws_.e;
      int32_t* bn = ws_.bin;
      uint8_t* inb = ws_.inb;
      float os = 0, od = 0;
      int32_t oc = 0;
#pragma omp simd reduction(+ : os, od, oc)
      for (int64_t j = 0; j < n; ++j) {
        const float v = zc[j];
        const bool live = v >= lo && (KEY != 0 || v <= m);
        const int32_t b = bin_of(KEY == 0 ? m - v : std::fabs(v - c), live, iw, nb);
        bn[j] = b;
        inb[j] = b < nb ? 1 : 0;
        const bool o = b == nb;
        oc += o ? 1 : 0;
        if (MASS) {
          const float ej = live ? fast_exp_nonpos(v - m) : 0.0f;
          e[j] = ej;
          os += o ? ej : 0.0f;
          if (ENT) od += o ? ej * (m - v) : 0.0f;
        }
      }
      std::fill(inb + n, inb + ((n + 7) & ~int64_t{7}), uint8_t{0});
      for (int64_t j0 = 0; j0 < n; j0 += 8) {  // 8 flags at a time: most tokens of a chunk are in no bin
        uint64_t w;
        std::memcpy(&w, inb + j0, 8);
        if (w == 0) continue;
        for (int64_t j = j0; j < j0 + 8; ++j) {
          if (!inb[j]) continue;  // overflow (summed above) or not live
          const int32_t b = bn[j];
          cnt[b] += 1;
          if (MASS) mass[b] += static_cast<double>(e[j]);
          if (ENT) ment[b] += static_cast<double>(e[j]) * (static_cast<double>(m) - static_cast<double>(zc[j]));
        }
      }
      ovc += oc, ovs += os, ovd += od;
    }
    cnt[nb] += ovc;
    if (MASS) mass[nb] += ovs;
    if (ENT) ment[nb] += ovd;
  }

  // The live members of bin b, sorted by their key (then index).
  template <int KEY>
  void collect(int b, float c, float iw) {
    const int32_t nb = nb_;
    auto& mem = ws_.members;
    mem.clear();
    const float m = mref_, lo = lo_;
    const float* cmaxs = ws_.cmax.data();
    const float* cmins = ws_.cmin.data();
    for (int64_t i0 = 0; i0 < V_; i0 += kChunk) {
      // bin_of is monotone in the key: a chunk whose live keys' bins all miss b holds no member
      const float cmx = cmaxs[i0 / kChunk], cmn = cmins[i0 / kChunk];
      if (!(cmx >= lo)) continue;
      if (KEY == 0) {
        if (bin_of(std::max(m - cmx, 0.0f), true, iw, nb) > b || bin_of(m - std::max(cmn, lo), true, iw, nb) < b) continue;
      } else {
        const float klo = (c >= std::max(cmn, lo) && c <= cmx) ? 0.0f
                                                                : std::min(std::fabs(cmx - c), std::fabs(std::max(cmn, lo) - c));
        const float khi = std::max(std::fabs(cmx - c), std::fabs(std::max(cmn, lo) - c));
        if (bin_of(klo, true, iw, nb) > b || bin_of(khi, true, iw, nb) < b) continue;
      }
      const int64_t n = std::min(kChunk, V_ - i0);
      const float* zc = chunk(i0, n);
      int32_t* bn = ws_.bin;
#pragma omp simd
      for (int64_t j = 0; j < n; ++j) {
        const float v = zc[j];
        bn[j] = bin_of(KEY == 0 ? m - v : std::fabs(v - c), v >= lo && (KEY != 0 || v <= m), iw, nb);
      }
      for (int64_t j = 0; j < n; ++j) {
        if (bn[j] == b) {
          const float v = zc[j];
          mem.push_back({v, i0 + j, KEY == 0 ? static_cast<double>(m) - v : std::fabs(v - c)});
        }
      }
    }
    if (KEY == 0) {
      std::sort(mem.begin(), mem.end(),
                [](const Member& x, const Member& y) { return x.z != y.z ? x.z > y.z : x.idx < y.idx; });
    } else {
      std::sort(mem.begin(), mem.end(),
                [](const Member& x, const Member& y) { return x.key != y.key ? x.key < y.key : x.idx < y.idx; });
    }
  }

  // cap: the binned range's end in d (the cut is known to lie above it; kRange: unknown);
  // tail: may add init's per-chunk sums (a valid cap with the tokens beyond it of no count).
  template <bool MASS, bool ENT>
  void histogram_desc(float mref, double cap = kRange, bool tail = false) {
    bin_setup_desc(mref, cap);
    histogram<0, MASS, ENT>(0.0f, inv_w_, tail);
  }

  void collect_desc(int b) { collect<0>(b, 0.0f, inv_w_); }

  void histogram_typical(float c, double cap) {
    const float kmax = std::max(std::fabs(m_ - c), std::fabs(zmin_ - c));
    const float range = std::min({kmax, static_cast<float>(kRange), static_cast<float>(cap)});
    inv_wt_ = range > 1e-20f ? static_cast<float>(nb_) / range : 1e20f;
    histogram<1, true, false>(c, inv_wt_, true);
  }

  void collect_typical(int b, float c) { collect<1>(b, c, inv_wt_); }

  // Calls f(zc, i0, n) for each chunk z[i0, i0 + n) of the row as float32.
  // flatten: inline the pass body and what it calls (fast_exp_nonpos above all), so that
  // its inner loops vectorise; GCC otherwise keeps the exp an out-of-line scalar call here.
  template <class F>
  __attribute__((flatten)) inline void for_chunks(F&& f) {
    for (int64_t i0 = 0; i0 < V_; i0 += kChunk) {
      const int64_t n = std::min(kChunk, V_ - i0);
      f(chunk(i0, n), i0, n);
    }
  }

  // Calls f(zc, i0, n) for each chunk with want(c) (else skip(c)), the chunks spread over
  // threads: f may write only its chunk's own slots.
  template <class F, class W, class K>
  void par_chunks(F&& f, W&& want, K&& skip) {
    const int64_t nch = (V_ + kChunk - 1) / kChunk;
    at::parallel_for(0, nch, kParGrain, [&](int64_t c0, int64_t c1) { run_chunks(c0, c1, f, want, skip); });
  }
  template <class F>
  void par_chunks(F&& f) {
    par_chunks(f, [](int64_t) { return true; }, [](int64_t) {});
  }
  template <class F, class W, class K>
  __attribute__((flatten)) void run_chunks(int64_t c0, int64_t c1, F& f, W& want, K& skip) {
    alignas(64) float buf[kChunk];
    for (int64_t c = c0; c < c1; ++c) {
      if (!want(c)) {
        skip(c);
        continue;
      }
      const int64_t i0 = c * kChunk, n = std::min(kChunk, V_ - i0);
      f(chunk_to(i0, n, buf), i0, n);
    }
  }

  // As for_chunks, but a chunk with no live token (its max below lo) goes to dead(i0, n)
  // unread.
  template <class F, class G>
  __attribute__((flatten)) inline void for_chunks_live(F&& f, G&& dead) {
    const float lo = lo_;
    const float* cmaxs = ws_.cmax.data();
    for (int64_t i0 = 0; i0 < V_; i0 += kChunk) {
      const int64_t n = std::min(kChunk, V_ - i0);
      if (!(cmaxs[i0 / kChunk] >= lo)) {
        dead(i0, n);
        continue;
      }
      f(chunk(i0, n), i0, n);
    }
  }

  // z[i0, i0 + n): from the output row once a knob wrote it (typical), else converted from
  // the input (straight from it for float32 at T = 1).
  inline const float* chunk(int64_t i0, int64_t n) { return chunk_to(i0, n, ws_.zbuf); }

  // The same, converting into b when it must.
  inline const float* chunk_to(int64_t i0, int64_t n, float* b) {
    if (mat_) return z_ + i0;
    if constexpr (std::is_same_v<Tag, F32>) {
      if (t_ == 1.0f) return x_ + i0;
    }
    to_float(x_ + i0, n, b, Tag{});
    if (t_ != 1.0f) {
      const float t = t_;
#pragma omp simd
      for (int64_t j = 0; j < n; ++j) b[j] = b[j] / t;
    }
    return b;
  }

  const Src* x_;
  float t_;
  float* z_;
  bool mat_ = false;
  int64_t V_;
  Workspace& ws_;
  float m_ = -kInf, zmin_ = kInf, lo_ = kLowest;
  float mref_ = -kInf;        // the reference point of the descending histogram (m_, or m2 in top-h)
  float inv_w_ = 1.0f;
  float inv_wt_ = 1.0f;
  int32_t nb_ = kBins;  // bins in use (bins_for(V)); bin nb_ = overflow, nb_ + 1 = not live
  Stats st_;
  bool stats_ok_ = false, moments_ok_ = false;
  bool parts_ok_ = false;  // ws_.part / ccnt hold init's per-chunk sums and counts of the live set
  bool nan_ = false;
};

}  // namespace cpu
}  // namespace fuq
