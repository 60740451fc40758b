// Driver of bench/bench_exp_variants.py (issue 16.1): the inner loop of logit_stats' online pass
// (s += e, t += e d, u += e d^2 with e = exp(d), d = z - max over 4096-float chunks, as
// OnlineStats::add_impl) with fuq's fast_exp_nonpos and with ATen's Vectorized<float> exps
// (exp_u20, fexp_u20, exp = Sleef u10), next to a bare max over the same floats.
// Prints one JSON object: ns per logit (thread CPU time, best of 7), relative error of s, H,
// Var[-log p] against float64, and each exp's max ulp over every `stride`-th float in [-87, 0]
// and in [-80, 0] (ATen's exp_u20 loses its accuracy where 2^(n-1) is subnormal, near -87).
#include <ATen/cpu/vec/vec.h>

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <ctime>
#include <random>
#include <vector>

#include "fuq/cpu_online.h"

namespace {
using fuq::cpu::fast_exp_nonpos;
using Vec = at::vec::Vectorized<float>;
constexpr float kMin = -87.0f;
constexpr int64_t kChunk = 4096;
struct S { float s, t, u; };

__attribute__((noinline)) float bare_max(const float* z, int64_t n) {
  float m = -INFINITY;
#pragma omp simd reduction(max : m)
  for (int64_t i = 0; i < n; ++i) m = z[i] > m ? z[i] : m;
  return m;
}

__attribute__((noinline)) S fuq_loop(const float* z, int64_t n, float ref) {
  float ss = 0, tt = 0, uu = 0;
#pragma omp simd reduction(+ : ss, tt, uu)
  for (int64_t i = 0; i < n; ++i) {
    const float d0 = z[i] - ref;
    const float d = d0 > kMin ? d0 : kMin;
    const float e = fast_exp_nonpos(d0);
    const float ed = e * d;
    ss += e;
    tt += ed;
    uu = std::fma(ed, d, uu);
  }
  return {ss, tt, uu};
}

template <int kKind>
inline Vec vexp(const Vec& d) {
  if constexpr (kKind == 0) return d.exp_u20();
  else if constexpr (kKind == 1) return d.fexp_u20();
  else return d.exp();
}

template <int kKind>
__attribute__((noinline)) S aten_loop(const float* z, int64_t n, float ref) {
  Vec ss(0.f), tt(0.f), uu(0.f);
  const Vec vref(ref), vmin(kMin);
  int64_t i = 0;
  for (; i + Vec::size() <= n; i += Vec::size()) {
    const Vec d0 = Vec::loadu(z + i) - vref;
    const Vec d = at::vec::maximum(d0, vmin);
    const Vec e = vexp<kKind>(d0);
    const Vec ed = e * d;
    ss = ss + e;
    tt = tt + ed;
    uu = at::vec::fmadd(ed, d, uu);
  }
  float a[Vec::size()], b[Vec::size()], c[Vec::size()];
  ss.store(a);
  tt.store(b);
  uu.store(c);
  S r{0, 0, 0};
  for (int j = 0; j < Vec::size(); ++j) r.s += a[j], r.t += b[j], r.u += c[j];
  for (; i < n; ++i) {  // tail (none for the chunk size used)
    const float d0 = z[i] - ref, e = std::exp(d0);
    r.s += e, r.t += e * d0, r.u += e * d0 * d0;
  }
  return r;
}

double thread_seconds() {
  timespec ts;
  clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
  return ts.tv_sec + 1e-9 * ts.tv_nsec;
}

template <class F>
double best_seconds(F f, int reps) {
  double best = 1e30;
  for (int r = 0; r < 7; ++r) {
    const double t0 = thread_seconds();
    for (int k = 0; k < reps; ++k) f();
    best = std::min(best, (thread_seconds() - t0) / reps);
  }
  return best;
}

template <class E>
double max_ulp(E scalar_exp, int stride, float lo) {  // over every stride-th float in [lo, -0]
  double worst = 0;
  for (uint32_t b = 0x80000000u;; b += stride) {
    const float d = fuq::cpu::bits_to_float(b);
    if (!(d >= lo)) break;
    const double want = std::exp(static_cast<double>(d));
    int e;
    std::frexp(want, &e);
    worst = std::max(worst, std::fabs(static_cast<double>(scalar_exp(d)) - want) / std::ldexp(1.0, e - 24));
  }
  return worst;
}

template <int kKind>
float aten_scalar(float d) {
  float buf[Vec::size()];
  vexp<kKind>(Vec(d)).store(buf);
  return buf[0];
}
}  // namespace

int main(int argc, char** argv) {
  const int64_t V = argc > 1 ? std::atoll(argv[1]) : 262144;
  const int stride = argc > 2 ? std::atoi(argv[2]) : 97;
  std::vector<float> z(V);
  std::mt19937 g(0);
  std::normal_distribution<float> nd(0.f, 3.f);
  for (auto& x : z) x = nd(g);
  for (int64_t i = 0; i < V; i += 97) z[i] = -INFINITY;  // masked entries
  double m = -INFINITY, s = 0, t = 0, u = 0;
  for (float x : z) m = std::max(m, static_cast<double>(x));
  for (float x : z) {
    const double d = x - m;
    if (std::isinf(d)) continue;
    const double e = std::exp(d);
    s += e, t += e * d, u += e * d * d;
  }
  const double H = std::log(s) - t / s, VH = u / s - (t / s) * (t / s);
  volatile float sink = 0;
  const int reps = static_cast<int>(std::max<int64_t>(1, 50000000 / V));
  const double t_max = best_seconds([&] { for (int64_t c = 0; c < V; c += kChunk) sink = bare_max(z.data() + c, std::min(kChunk, V - c)); }, reps);
  std::printf("{\"V\": %lld, \"lanes\": %d, \"max_ns_per_logit\": %.4f, \"variants\": {", (long long)V, (int)Vec::size(), t_max / V * 1e9);
  auto run = [&](const char* name, auto loop, auto sexp, bool first) {
    auto pass = [&] {
      const float mm = bare_max(z.data(), V);
      S acc{0, 0, 0};
      for (int64_t c = 0; c < V; c += kChunk) {
        const S r = loop(z.data() + c, std::min(kChunk, V - c), mm);
        acc.s += r.s, acc.t += r.t, acc.u += r.u;
      }
      return acc;
    };
    const double tt = best_seconds([&] { sink = pass().s; }, reps);
    const S r = pass();
    const double h = std::log(r.s) - r.t / r.s, vh = r.u / r.s - (r.t / r.s) * (r.t / r.s);
    std::printf("%s\"%s\": {\"ns_per_logit\": %.4f, \"x_max\": %.3f, \"rel_err_s\": %.3g, \"rel_err_H\": %.3g, "
                "\"rel_err_varH\": %.3g, \"max_ulp\": %.3f, \"max_ulp_above_-80\": %.3f}",
                first ? "" : ", ", name, tt / V * 1e9, tt / t_max, std::fabs(r.s - s) / s, std::fabs(h - H) / H,
                std::fabs(vh - VH) / VH, max_ulp(sexp, stride, kMin), max_ulp(sexp, stride, -80.0f));
  };
  run("fuq_fast_exp_nonpos", fuq_loop, [](float d) { return fast_exp_nonpos(d); }, true);
  run("aten_exp_u20", aten_loop<0>, aten_scalar<0>, false);
  run("aten_fexp_u20", aten_loop<1>, aten_scalar<1>, false);
  run("aten_exp_sleef_u10", aten_loop<2>, aten_scalar<2>, false);
  std::printf("}}\n");
  return static_cast<int>(sink) * 0;
}
