// fuq::hidden_stats on the CPU: the statistics of z = hidden @ weight.T (+ bias), soft-capped
// and divided by T, without ever holding the [N, V] logits.
//
// Rows are taken in blocks of at most kMaxRows. For each block, the vocabulary is walked in
// chunks of `chunk` columns: one ATen matmul (multithreaded by ATen's BLAS) writes the
// block's [rows, chunk] float32 logits into a buffer reused for every chunk; then, in
// parallel over rows, each row's slice is transformed in place (bias, softcap · tanh(z /
// softcap), / T: the reference's order) and folded into that row's state: the online
// cpu::RowPass (the online (m, s, t, u) recurrence, the first argmax and a top-k candidate
// list pruned against a running threshold, fuq/cpu_online.h) and the target's logit. The states live across chunks;
// the block's rows are finalised when the last chunk is in. Memory: rows · chunk floats
// of logits, plus O(rows · k) candidates.
//
// Semantics are those of fuq.reference.hidden_stats (the tests compare the two, and both
// with float64 maths): float32 matmul, float32 accumulation of the statistics.

#include "fuq/cpu_wide_file.h"  // first: see there

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <optional>
#include <tuple>
#include <vector>

#include "fuq/cpu_online.h"

namespace fuq {
namespace {

using cpu::kNaN;

constexpr int64_t kBlock = 64;       // granularity of the block maxima used to skip top-k work
constexpr int64_t kMaxRows = 4096;   // rows per block: the buffer is at most kMaxRows x chunk floats

// tanh(x) in float32, vectorisable (no calls): x - x^3/3 + 2x^5/15 - 17x^7/315 for |x| < 1/8
// (relative error < 1e-8), else sign(x) (1 - e) / (1 + e) with e = exp(-2|x|) <= exp(-1/4),
// so 1 - e has no damaging cancellation. NaN stays NaN; +-inf gives +-1.
inline float tanh_fast(float x) {
  const float ax = std::fabs(x);
  const float x2 = x * x;
  const float poly = x * std::fma(x2, std::fma(x2, std::fma(x2, -17.0f / 315.0f, 2.0f / 15.0f), -1.0f / 3.0f), 1.0f);
  const float e = cpu::fast_exp_nonpos(-2.0f * ax);
  const float big = std::copysign((1.0f - e) / (1.0f + e), x);
  const float r = ax < 0.125f ? poly : big;
  return x != x ? x : r;
}

// z[0..n) <- softcap(z + bias) / T in place (each step only when asked), with the block
// maxima (cpu::scan_blocks). Returns the chunk max; sets *bad when a NaN is seen.
template <bool kBias, bool kCap, bool kDiv>
float transform_chunk(float* z, int64_t n, const float* bias, float cap, float temperature, float* bmax, bool* bad) {
  return cpu::scan_blocks<kBlock>(n, bmax, bad, [&](int64_t i) {
    float v = z[i];
    if constexpr (kBias) v = v + bias[i];
    if constexpr (kCap) v = tanh_fast(v / cap) * cap;
    if constexpr (kDiv) v = v / temperature;
    z[i] = v;
    return v;
  });
}

using TransformFn = float (*)(float*, int64_t, const float*, float, float, float*, bool*);

TransformFn pick_transform(bool bias, bool cap, bool div) {
  const int key = (bias ? 4 : 0) | (cap ? 2 : 0) | (div ? 1 : 0);
  switch (key) {
    case 0: return transform_chunk<false, false, false>;
    case 1: return transform_chunk<false, false, true>;
    case 2: return transform_chunk<false, true, false>;
    case 3: return transform_chunk<false, true, true>;
    case 4: return transform_chunk<true, false, false>;
    case 5: return transform_chunk<true, false, true>;
    case 6: return transform_chunk<true, true, false>;
    default: return transform_chunk<true, true, true>;
  }
}

// One row's state across the vocabulary chunks.
struct RowState {
  cpu::RowPass<kBlock> pass;
  float zt = kNaN;  // the target's z once its chunk was seen
};

struct Params {
  int64_t V;
  int64_t k;
  float temperature;
  float cap;  // 0: no softcap
  const float* bias;  // [V] float32 or nullptr
  const int64_t* targets;  // [N] or nullptr
  TransformFn transform;
};

// Fold the row's logits z[0..n) = columns [c0, c0 + n) (raw matmul output) into its state.
void fold_chunk(RowState& rs, float* z, int64_t n, int64_t c0, int64_t target, const Params& p) {
  float bmax[(1 << 20) / kBlock];  // enough for chunks up to 2^20 columns (the launcher's cap)
  bool bad = false;
  const float cmax = p.transform(z, n, p.bias == nullptr ? nullptr : p.bias + c0, p.cap, p.temperature, bmax, &bad);
  rs.pass.fold(z, n, c0, cmax, bmax, bad, p.k);
  if (target >= c0 && target < c0 + n) rs.zt = z[target - c0];
}

// Rows [r0, r0 + R) of h32 [N, d] float32 against weight [V, d], chunk columns at a time.
void run_block(const at::Tensor& h32, const at::Tensor& weight, int64_t r0, int64_t R, int64_t chunk,
               at::Tensor& buf, const Params& p, const cpu::Outputs& o) {
  std::vector<RowState> rows(static_cast<size_t>(R));
  for (auto& rs : rows) rs.pass.start(p.k, 0, p.V);
  const at::Tensor h = h32.narrow(0, r0, R);
  const int64_t grain = std::max<int64_t>(1, 16384 / chunk);
  for (int64_t c0 = 0; c0 < p.V; c0 += chunk) {
    const int64_t n = std::min(chunk, p.V - c0);
    at::Tensor w = weight.narrow(0, c0, n);
    if (w.scalar_type() != at::kFloat) w = w.to(at::kFloat);
    at::Tensor z = buf.narrow(0, 0, R * n).view({R, n});  // contiguous [R, n] in the reused buffer
    at::mm_out(z, h, w.t());
    float* zp = z.data_ptr<float>();
    at::parallel_for(0, R, grain, [&](int64_t a, int64_t b) {
      for (int64_t r = a; r < b; ++r) {
        const int64_t target = p.targets == nullptr ? -1 : p.targets[r0 + r];
        fold_chunk(rows[r], zp + r * n, n, c0, target, p);
      }
    });
  }
  at::parallel_for(0, R, 16, [&](int64_t a, int64_t b) {
    for (int64_t r = a; r < b; ++r) cpu::finalize_row(r0 + r, rows[r].pass, p.k, rows[r].zt, o);
  });
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor,
           at::Tensor>
hidden_stats_cpu(const at::Tensor& hidden, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
                 int64_t k, const std::optional<at::Tensor>& targets, double temperature,
                 std::optional<double> softcap, int64_t chunk) {
  TORCH_CHECK(hidden.dim() == 2 && weight.dim() == 2 && hidden.size(1) == weight.size(1),
              "fuq::hidden_stats: hidden must be [N, d] and weight [V, d], got ", hidden.sizes(), " and ",
              weight.sizes());
  TORCH_CHECK(hidden.device().is_cpu() && weight.device().is_cpu(), "fuq::hidden_stats (CPU kernel): CPU tensors");
  const int64_t N = hidden.size(0), V = weight.size(0);
  TORCH_CHECK(V > 0, "fuq::hidden_stats: weight has an empty vocabulary (V = 0)");
  TORCH_CHECK(k >= 0 && k <= V, "fuq::hidden_stats: k must be in [0, V] = [0, ", V, "], got k = ", k);
  TORCH_CHECK(chunk >= 1, "fuq::hidden_stats: chunk must be >= 1, got ", chunk);
  TORCH_CHECK(std::isfinite(temperature) && temperature > 0.0, "fuq::hidden_stats: temperature must be > 0");
  TORCH_CHECK(!softcap.has_value() || (std::isfinite(*softcap) && *softcap > 0.0),
              "fuq::hidden_stats: softcap must be None or > 0");
  chunk = std::min<int64_t>({chunk, V, int64_t{1} << 20});

  const auto fopt = hidden.options().dtype(at::kFloat);
  const auto iopt = hidden.options().dtype(at::kLong);
  at::Tensor lse = at::empty({N}, fopt), ent = at::empty({N}, fopt), var = at::empty({N}, fopt);
  at::Tensor mx = at::empty({N}, fopt), am = at::empty({N}, iopt);
  at::Tensor tkl = at::empty({N, k}, fopt), tki = at::empty({N, k}, iopt), tkm = at::empty({N}, fopt);
  at::Tensor tok, tl;
  if (targets.has_value()) {
    TORCH_CHECK(targets->dim() == 1 && targets->size(0) == N, "fuq::hidden_stats: targets must be [N] = [", N,
                "], got ", targets->sizes());
    tok = targets->to(at::kLong).contiguous();
    tl = at::empty({N}, fopt);
  } else {
    tl = at::empty({0}, fopt);
  }
  if (N == 0) return {lse, ent, var, mx, am, tkl, tki, tkm, tl};

  const at::Tensor h32 = hidden.to(at::kFloat).contiguous();
  at::Tensor b32;
  if (bias.has_value()) b32 = bias->to(at::kFloat).contiguous();
  // The reference divides float32 tensors by Python floats, i.e. by float(T), float(cap).
  const float t = static_cast<float>(temperature);
  const float cap = softcap.has_value() ? static_cast<float>(*softcap) : 0.0f;
  const Params p{V,
                 k,
                 t,
                 cap,
                 b32.defined() ? b32.const_data_ptr<float>() : nullptr,
                 tok.defined() ? tok.const_data_ptr<int64_t>() : nullptr,
                 pick_transform(b32.defined(), softcap.has_value(), t != 1.0f)};
  const cpu::Outputs o{lse.data_ptr<float>(), ent.data_ptr<float>(), var.data_ptr<float>(), mx.data_ptr<float>(),
                  am.data_ptr<int64_t>(), tkl.data_ptr<float>(), tki.data_ptr<int64_t>(), tkm.data_ptr<float>(),
                  tok.defined() ? tl.data_ptr<float>() : nullptr};
  const int64_t rows = std::min(N, kMaxRows);
  at::Tensor buf = at::empty({rows * chunk}, fopt);  // the only logits there are: [rows, chunk]
  for (int64_t r0 = 0; r0 < N; r0 += rows) run_block(h32, weight, r0, std::min(rows, N - r0), chunk, buf, p, o);
  return {lse, ent, var, mx, am, tkl, tki, tkm, tl};
}

}  // namespace
}  // namespace fuq

TORCH_LIBRARY_IMPL(fuq, CPU, m) { m.impl("hidden_stats", &fuq::hidden_stats_cpu); }
