// CPU kernels of fuq::truncate and fuq::sample (schemas in fuq/_library.py, spec in
// fuq/reference.py: truncate / sample).
//
// One row per task (at::parallel_for over rows). Per row, cpu::RowTruncator
// (csrc/include/fuq/cpu_select.h) reads z = float(x) / T chunk by chunk, finds every
// cut-off without sorting the vocabulary, and writes z with -inf over the removed tokens
// in one final pass. sample takes the stats of the untruncated row (lse, entropy,
// varentropy, max log-prob from the first scan; argmax, top-k) before truncating, then
// draws by inverse CDF with the caller's uniform; it writes no row. With base_stats at
// T != 1 the first scan reads x itself: it gives the stats at T = 1 and, divided by T, the
// per-chunk max / min the truncation at T starts from (RowTruncator::retemper): the two
// temperatures cost one pass.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <tuple>
#include <vector>

#include "fuq/cpu_online.h"
#include "fuq/cpu_select.h"

namespace fuq {
namespace {

using cpu::kInf;
using cpu::kNaN;

cpu::Knobs make_knobs(int64_t top_k, double top_p, double min_p, double typical_p, double epsilon, double eta,
                      double top_h, double top_n_sigma, bool p_less, int64_t min_tokens_to_keep) {
  cpu::Knobs k;
  k.top_k = top_k;
  k.top_p = top_p;
  k.min_p = min_p;
  k.typical_p = typical_p;
  k.epsilon = epsilon;
  k.eta = eta;
  k.top_h = top_h;
  k.top_n_sigma = top_n_sigma;
  k.p_less = p_less;
  k.min_tokens_to_keep = std::max<int64_t>(min_tokens_to_keep, 1);
  return k;
}

void check_knobs(const char* op, const at::Tensor& logits, double temperature, int64_t top_k, double top_p,
                 double min_p, double typical_p, double epsilon, double eta, double top_h, int64_t mtk) {
  TORCH_CHECK(logits.dim() == 2, op, ": logits must be [B, V], got ", logits.dim(), " dims");
  TORCH_CHECK(logits.device().is_cpu(), op, " (CPU kernel): logits must be a CPU tensor");
  const auto dtype = logits.scalar_type();
  TORCH_CHECK(dtype == at::kFloat || dtype == at::kBFloat16 || dtype == at::kHalf, op,
              ": logits must be float32, bfloat16 or float16, got ", dtype);
  TORCH_CHECK(logits.size(1) > 0, op, ": logits has an empty vocabulary (V = 0)");
  TORCH_CHECK(std::isfinite(temperature) && temperature > 0.0, op, ": temperature must be > 0, got ", temperature);
  TORCH_CHECK(top_k >= 0, op, ": top_k must be >= 0, got ", top_k);
  TORCH_CHECK(top_p > 0.0 && top_p <= 1.0, op, ": top_p must be in (0, 1], got ", top_p);
  TORCH_CHECK(min_p >= 0.0 && min_p <= 1.0, op, ": min_p must be in [0, 1], got ", min_p);
  TORCH_CHECK(typical_p > 0.0 && typical_p <= 1.0, op, ": typical_p must be in (0, 1], got ", typical_p);
  TORCH_CHECK(epsilon >= 0.0 && eta >= 0.0, op, ": epsilon and eta must be >= 0");
  TORCH_CHECK(top_h >= 0.0 && top_h <= 1.0, op, ": top_h must be in (0, 1] (0 is off), got ", top_h);
  TORCH_CHECK(mtk >= 1, op, ": min_tokens_to_keep must be >= 1, got ", mtk);
}

// One workspace per thread, kept between calls: its histogram bins and chunk tables (tens of
// KB) were allocated and zeroed on every call, most of a decode-shaped call's time (B = 1,
// V = 1024). Every pass that reads a part of it writes that part first (as between rows).
cpu::Workspace& thread_workspace() {
  static thread_local cpu::Workspace ws;
  return ws;
}

template <typename Tag>
void truncate_rows(const at::Tensor& logits, float t, const cpu::Knobs& knobs, at::Tensor& out) {
  using S = typename Tag::storage;
  const int64_t B = logits.size(0), V = logits.size(1), stride = logits.stride(0);
  const S* base = reinterpret_cast<const S*>(logits.const_data_ptr());
  float* obase = out.data_ptr<float>();
  at::parallel_for(0, B, 1, [&](int64_t r0, int64_t r1) {
    cpu::Workspace& ws = thread_workspace();
    // The first knob gets the row's stats (and its per-chunk sums) from the first scan when it
    // uses them: top-h, top-p and typical to bound their histograms, the thresholds for their cut.
    const bool stats_first = knobs.top_h > 0.0 ||
                             (knobs.top_k == 0 && (knobs.top_p < 1.0 || (knobs.min_p <= 0.0 &&
                              (knobs.typical_p < 1.0 || knobs.epsilon > 0.0 || knobs.eta > 0.0 || knobs.p_less))));
    for (int64_t r = r0; r < r1; ++r) {
      cpu::RowTruncator<Tag> row(base + r * stride, t, obase + r * V, V, ws);
      if (!row.init(stats_first)) {
        row.finish_nan();
        continue;
      }
      row.apply(knobs);
      row.finish();
    }
  });
}

at::Tensor truncate_cpu(const at::Tensor& logits_in, double temperature, int64_t top_k, double top_p, double min_p,
                        double typical_p, double epsilon, double eta, double top_h, double top_n_sigma, bool p_less,
                        int64_t min_tokens_to_keep) {
  check_knobs("fuq::truncate", logits_in, temperature, top_k, top_p, min_p, typical_p, epsilon, eta, top_h,
              min_tokens_to_keep);
  const int64_t V = logits_in.size(1);
  const at::Tensor logits = (logits_in.stride(1) == 1 || V == 1) ? logits_in : logits_in.contiguous();
  at::Tensor out = at::empty(logits.sizes(), logits.options().dtype(at::kFloat));
  if (logits.size(0) == 0) return out;
  const auto knobs = make_knobs(top_k, top_p, min_p, typical_p, epsilon, eta, top_h, top_n_sigma, p_less,
                                min_tokens_to_keep);
  const float t = static_cast<float>(temperature);  // the reference divides by float(T)
  switch (logits.scalar_type()) {
    case at::kFloat:
      truncate_rows<cpu::F32>(logits, t, knobs, out);
      break;
    case at::kBFloat16:
      truncate_rows<cpu::BF16>(logits, t, knobs, out);
      break;
    default:
      truncate_rows<cpu::F16>(logits, t, knobs, out);
      break;
  }
  return out;
}

struct SampleOut {
  int64_t* ids;
  float *lse, *ent, *var, *mx;
  int64_t* am;
  float* tkl;
  int64_t* tki;
  float *tkm, *tl;
  const double* u;
  int64_t k;
  bool base_stats;
};

template <typename Tag>
void sample_rows(const at::Tensor& logits, float t, const cpu::Knobs& knobs, const SampleOut& o) {
  using S = typename Tag::storage;
  const int64_t B = logits.size(0), V = logits.size(1), stride = logits.stride(0), k = o.k;
  const S* base = reinterpret_cast<const S*>(logits.const_data_ptr());
  at::parallel_for(0, B, 1, [&](int64_t r0, int64_t r1) {
    cpu::Workspace& ws = thread_workspace();
    static thread_local std::vector<float> buf;  // written only if typical must write the row out
    if (static_cast<int64_t>(buf.size()) < V) buf.resize(V);
    std::vector<cpu::TopCandidate> top;
    for (int64_t r = r0; r < r1; ++r) {
      const S* x = base + r * stride;
      const float ts = o.base_stats ? 1.0f : t;  // the temperature of the stats
      cpu::RowTruncator<Tag> row(x, ts, buf.data(), V, ws);
      const bool ok_s = row.init(/*with_stats=*/true);  // the untruncated stats, in the first scan
      const float m = row.max();
      const bool pinf = !ok_s && !row.has_nan();  // +inf and no NaN: lse = +inf
      float lse, ent, var, mxl;
      if (!ok_s) {
        lse = pinf ? kInf : kNaN;
        ent = var = mxl = kNaN;
      } else if (m == -kInf) {
        lse = -kInf;
        ent = var = mxl = kNaN;
      } else {
        const cpu::Stats& s = row.stats();
        const double logS = std::log(s.S), mean = s.D / s.S;
        lse = static_cast<float>(static_cast<double>(m) + logS);
        ent = static_cast<float>(logS + mean);
        const double v = s.U / s.S - mean * mean;
        var = static_cast<float>(v > 0 ? v : 0.0);
        mxl = static_cast<float>(-logS);
      }
      o.lse[r] = lse, o.ent[r] = ent, o.var[r] = var, o.mx[r] = mxl;
      o.am[r] = ok_s || pinf ? row.argmax() : 0;
      row.top_candidates(k, top);
      double mass = 0;
      for (int64_t j = 0; j < k; ++j) {
        const float lp = ok_s ? top[j].z - lse : kNaN;
        o.tkl[r * k + j] = lp;
        o.tki[r * k + j] = top[j].idx;
        mass += std::exp(static_cast<double>(lp));
      }
      o.tkm[r] = k == 0 ? 0.0f : static_cast<float>(mass);
      // truncate and draw
      int64_t id = 0;
      const bool ok = ts != t ? ok_s && row.retemper(t) : ok_s;
      if (ok) {
        row.apply(knobs);
        id = row.draw(o.u[r]);
      }
      o.ids[r] = id;
      float zid = cpu::scalar_to_float(x[id], Tag{});
      if (ts != 1.0f) zid = zid / ts;
      o.tl[r] = ok_s && m > -kInf ? zid - lse : kNaN;
    }
  });
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor,
           at::Tensor>
sample_cpu(const at::Tensor& logits_in, const at::Tensor& uniform_in, int64_t k, double temperature, int64_t top_k,
           double top_p, double min_p, double typical_p, double epsilon, double eta, double top_h, double top_n_sigma,
           bool p_less, int64_t min_tokens_to_keep, bool base_stats) {
  check_knobs("fuq::sample", logits_in, temperature, top_k, top_p, min_p, typical_p, epsilon, eta, top_h,
              min_tokens_to_keep);
  const int64_t B = logits_in.size(0), V = logits_in.size(1);
  TORCH_CHECK(k >= 0 && k <= V, "fuq::sample: k must be in [0, V] = [0, ", V, "], got k = ", k);
  TORCH_CHECK(uniform_in.dim() == 1 && uniform_in.size(0) == B, "fuq::sample: uniform must be [B] = [", B,
              "], got ", uniform_in.sizes());
  TORCH_CHECK(uniform_in.device().is_cpu(), "fuq::sample (CPU kernel): uniform must be a CPU tensor");
  const at::Tensor logits = (logits_in.stride(1) == 1 || V == 1) ? logits_in : logits_in.contiguous();
  const at::Tensor u = uniform_in.to(at::kDouble).contiguous();
  const auto fopt = logits.options().dtype(at::kFloat);
  const auto iopt = logits.options().dtype(at::kLong);
  at::Tensor ids = at::empty({B}, iopt), lse = at::empty({B}, fopt), ent = at::empty({B}, fopt),
             var = at::empty({B}, fopt), mx = at::empty({B}, fopt), am = at::empty({B}, iopt),
             tkl = at::empty({B, k}, fopt), tki = at::empty({B, k}, iopt), tkm = at::empty({B}, fopt),
             tl = at::empty({B}, fopt);
  if (B > 0) {
    const SampleOut o{ids.data_ptr<int64_t>(), lse.data_ptr<float>(), ent.data_ptr<float>(), var.data_ptr<float>(),
                      mx.data_ptr<float>(),    am.data_ptr<int64_t>(), tkl.data_ptr<float>(), tki.data_ptr<int64_t>(),
                      tkm.data_ptr<float>(),   tl.data_ptr<float>(),   u.const_data_ptr<double>(), k,
                      base_stats};
    const auto knobs = make_knobs(top_k, top_p, min_p, typical_p, epsilon, eta, top_h, top_n_sigma, p_less,
                                  min_tokens_to_keep);
    const float t = static_cast<float>(temperature);
    switch (logits.scalar_type()) {
      case at::kFloat:
        sample_rows<cpu::F32>(logits, t, knobs, o);
        break;
      case at::kBFloat16:
        sample_rows<cpu::BF16>(logits, t, knobs, o);
        break;
      default:
        sample_rows<cpu::F16>(logits, t, knobs, o);
        break;
    }
  }
  return {ids, lse, ent, var, mx, am, tkl, tki, tkm, tl};
}

}  // namespace
}  // namespace fuq

TORCH_LIBRARY_IMPL(fuq, CPU, m) {
  m.impl("truncate", &fuq::truncate_cpu);
  m.impl("sample", &fuq::sample_cpu);
}
