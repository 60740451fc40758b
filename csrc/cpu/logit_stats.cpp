// fuq::logit_stats on the CPU: one memory pass per row.
//
// Each row of z = logits / T is read once, in L1-sized chunks. Per chunk: convert to
// float32 (and divide by T) into a scratch buffer (float32 with T = 1 is used in place),
// keeping per-block maxima and a NaN flag; fold the
// chunk into the row's cpu::RowPass (fuq/cpu_online.h): the online (m, s, t, u) state, the
// argmax, and a top-k candidate list whose running threshold (the k-th best value so far)
// lets whole blocks be skipped; cpu::finalize_row writes the fields. Rows are spread over threads with
// at::parallel_for; when there are few rows (decoding is B = 1), each row is split into
// segments whose partial states are merged, so every core works.
//
// Semantics are those of fuq/reference.py (the tests compare the two).

#include "fuq/cpu_wide_file.h"  // first: see there

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <optional>
#include <tuple>
#include <type_traits>
#include <vector>

#include "fuq/cpu_online.h"

namespace fuq {
namespace {

using cpu::kNaN;

constexpr int64_t kChunk = 2048;  // floats per chunk: 8 KiB of scratch, stays in L1
constexpr int64_t kBlock = 64;    // granularity of the block maxima used to skip top-k work
constexpr int64_t kBlocksPerChunk = kChunk / kBlock;
constexpr int64_t kMinSegment = 16384;  // a row is split only into segments at least this long

using RowPass = cpu::RowPass<kBlock>;

// Loads of one element as float32 (vectorisable: bf16 is a shift, fp32 a plain load).
inline float load(const float* p, int64_t i) { return p[i]; }
inline float load(const uint16_t* p, int64_t i) { return cpu::bf16_to_float(p[i]); }

// z[i] = float(x[i]) / T for i < n (kStore: else z is x itself), with the block maxima
// (cpu::scan_blocks). Returns the chunk max and sets *bad when a NaN is seen.
template <bool kDivide, bool kStore, typename In>
inline float prepare_chunk(const In* x, float* z, int64_t n, float temperature, float* bmax, bool* bad) {
  return cpu::scan_blocks<kBlock>(n, bmax, bad, [&](int64_t i) {
    float v = load(x, i);
    if constexpr (kDivide) v = v / temperature;
    if constexpr (kStore) z[i] = v;
    return v;
  });
}

// z = logits[c0, c0 + n) / T as float32, in `scratch` unless the input can be used as is.
template <typename Tag>
inline const float* load_chunk(const typename Tag::storage* x, float* scratch, int64_t n, float temperature,
                               float* bmax, float* cmax, bool* bad) {
  const bool divide = temperature != 1.0f;
  if constexpr (std::is_same_v<Tag, cpu::F32>) {
    if (!divide) {
      *cmax = prepare_chunk<false, false>(x, scratch, n, temperature, bmax, bad);
      return x;
    }
    *cmax = prepare_chunk<true, true>(x, scratch, n, temperature, bmax, bad);
  } else if constexpr (std::is_same_v<Tag, cpu::BF16>) {
    *cmax = divide ? prepare_chunk<true, true>(x, scratch, n, temperature, bmax, bad)
                   : prepare_chunk<false, true>(x, scratch, n, temperature, bmax, bad);
  } else {  // fp16: convert (F16C when available), then in place
    cpu::to_float_fp16(x, n, scratch);
    const float* f = scratch;
    *cmax = divide ? prepare_chunk<true, true>(f, scratch, n, temperature, bmax, bad)
                   : prepare_chunk<false, false>(f, scratch, n, temperature, bmax, bad);
  }
  return scratch;
}

// Scan logits[begin, end) of one row into `out`.
template <typename Tag>
void scan_segment(const typename Tag::storage* row, int64_t begin, int64_t end, float temperature, int64_t k,
                  float alpha, RowPass& out) {
  alignas(64) float scratch[kChunk];
  float bmax[kBlocksPerChunk];
  out.start(k, begin, end - begin, alpha);
  for (int64_t c0 = begin; c0 < end; c0 += kChunk) {
    const int64_t n = std::min(kChunk, end - c0);
    bool bad = false;
    float cmax;
    const float* z = load_chunk<Tag>(row + c0, scratch, n, temperature, bmax, &cmax, &bad);
    out.fold(z, n, c0, cmax, bmax, bad, k);
  }
}

// The token's z = logits[r, tok] / T, NaN for an id out of range (never read out of bounds).
template <typename Tag>
float token_z(const typename Tag::storage* row, int64_t V, float temperature, const int64_t* tokens, int64_t r) {
  if (tokens == nullptr) return kNaN;
  const int64_t tok = tokens[r];
  if (tok < 0 || tok >= V) return kNaN;
  float zt = cpu::scalar_to_float(row[tok], Tag{});
  if (temperature != 1.0f) zt = zt / temperature;
  return zt;
}

template <typename Tag>
void finalize(int64_t r, const typename Tag::storage* row, int64_t V, float temperature, int64_t k, RowPass& p,
              const cpu::Outputs& o, const int64_t* tokens) {
  cpu::finalize_row(r, p, k, token_z<Tag>(row, V, temperature, tokens, r), o);
}

template <typename Tag>
void run(const at::Tensor& logits, int64_t k, float temperature, float alpha, const cpu::Outputs& o,
         const int64_t* tokens) {
  using S = typename Tag::storage;
  const int64_t B = logits.size(0), V = logits.size(1), stride = logits.stride(0);
  const S* base = reinterpret_cast<const S*>(logits.const_data_ptr());
  const int64_t nthreads = std::max<int64_t>(1, at::get_num_threads());

  // Segments per row: 1 when there are enough rows to keep every thread busy, otherwise
  // enough (of at least kMinSegment entries) to give each thread a few.
  int64_t nseg = 1;
  if (B < 4 * nthreads) {
    const int64_t want = (4 * nthreads + B - 1) / B;
    nseg = std::max<int64_t>(1, std::min(want, V / kMinSegment));
  }

  if (nseg == 1) {
    const int64_t grain = std::max<int64_t>(1, 32768 / V);  // tiny rows: batch them per task
    at::parallel_for(0, B, grain, [&](int64_t r0, int64_t r1) {
      RowPass p;
      for (int64_t r = r0; r < r1; ++r) {
        const S* row = base + r * stride;
        scan_segment<Tag>(row, 0, V, temperature, k, alpha, p);
        finalize<Tag>(r, row, V, temperature, k, p, o, tokens);
      }
    });
    return;
  }

  const int64_t seg_len = ((V + nseg - 1) / nseg + kBlock - 1) / kBlock * kBlock;
  nseg = (V + seg_len - 1) / seg_len;
  std::vector<RowPass> parts(static_cast<size_t>(B * nseg));
  at::parallel_for(0, B * nseg, 1, [&](int64_t w0, int64_t w1) {
    for (int64_t w = w0; w < w1; ++w) {
      const int64_t r = w / nseg, sgi = w % nseg;
      const int64_t begin = sgi * seg_len, end = std::min(V, begin + seg_len);
      scan_segment<Tag>(base + r * stride, begin, end, temperature, k, alpha, parts[w]);
    }
  });
  at::parallel_for(0, B, 1, [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      RowPass& p = parts[r * nseg];
      for (int64_t sgi = 1; sgi < nseg; ++sgi) p.merge(parts[r * nseg + sgi], k);
      finalize<Tag>(r, base + r * stride, V, temperature, k, p, o, tokens);
    }
  });
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor,
           at::Tensor, at::Tensor>
logit_stats_cpu(const at::Tensor& logits_in, int64_t k, const std::optional<at::Tensor>& tokens_in,
                double temperature, std::optional<double> alpha) {
  TORCH_CHECK(logits_in.dim() == 2, "fuq::logit_stats: logits must be [B, V], got ", logits_in.dim(), " dims");
  TORCH_CHECK(logits_in.device().is_cpu(), "fuq::logit_stats (CPU kernel): logits must be a CPU tensor");
  const auto dtype = logits_in.scalar_type();
  TORCH_CHECK(dtype == at::kFloat || dtype == at::kBFloat16 || dtype == at::kHalf,
              "fuq::logit_stats: logits must be float32, bfloat16 or float16, got ", dtype);
  const int64_t B = logits_in.size(0), V = logits_in.size(1);
  TORCH_CHECK(V > 0, "fuq::logit_stats: logits has an empty vocabulary (V = 0)");
  TORCH_CHECK(k >= 0 && k <= V, "fuq::logit_stats: k must be in [0, V] = [0, ", V, "], got k = ", k);
  TORCH_CHECK(std::isfinite(temperature) && temperature > 0.0,
              "fuq::logit_stats: temperature must be a finite number > 0, got ", temperature);
  TORCH_CHECK(!alpha.has_value() || (std::isfinite(*alpha) && *alpha > 0.0),
              "fuq::logit_stats: alpha must be None or a finite number > 0, got ", alpha.value_or(0.0));
  const at::Tensor logits = (logits_in.stride(1) == 1 || V == 1) ? logits_in : logits_in.contiguous();

  const auto fopt = logits.options().dtype(at::kFloat);
  const auto iopt = logits.options().dtype(at::kLong);
  at::Tensor lse = at::empty({B}, fopt), ent = at::empty({B}, fopt), var = at::empty({B}, fopt);
  at::Tensor mx = at::empty({B}, fopt), am = at::empty({B}, iopt);
  at::Tensor tkl = at::empty({B, k}, fopt), tki = at::empty({B, k}, iopt), tkm = at::empty({B}, fopt);
  at::Tensor tok, tl;
  if (tokens_in.has_value()) {
    TORCH_CHECK(tokens_in->dim() == 1 && tokens_in->size(0) == B, "fuq::logit_stats: tokens must be [B] = [", B,
                "], got ", tokens_in->sizes());
    TORCH_CHECK(tokens_in->device().is_cpu(), "fuq::logit_stats (CPU kernel): tokens must be a CPU tensor");
    TORCH_CHECK(!at::isFloatingType(tokens_in->scalar_type()) && tokens_in->scalar_type() != at::kBool,
                "fuq::logit_stats: tokens must be an integer tensor, got ", tokens_in->scalar_type());
    tok = tokens_in->to(at::kLong).contiguous();
    tl = at::empty({B}, fopt);
  } else {
    tl = at::empty({0}, fopt);
  }
  at::Tensor ex = at::empty({alpha.has_value() ? B : 0, 4}, fopt);  // the density-free sums, or [0, 4]
  if (B == 0) return {lse, ent, var, mx, am, tkl, tki, tkm, tl, ex};

  const cpu::Outputs o{lse.data_ptr<float>(),
                       ent.data_ptr<float>(),
                       var.data_ptr<float>(),
                       mx.data_ptr<float>(),
                       am.data_ptr<int64_t>(),
                       tkl.data_ptr<float>(),
                       tki.data_ptr<int64_t>(),
                       tkm.data_ptr<float>(),
                       tok.defined() ? tl.data_ptr<float>() : nullptr,
                       alpha.has_value() ? ex.data_ptr<float>() : nullptr};
  const int64_t* tokens = tok.defined() ? tok.const_data_ptr<int64_t>() : nullptr;
  // The reference divides a float32 tensor by the Python float, i.e. by float(T).
  const float t = static_cast<float>(temperature);
  // alpha as a float32 (> 0: the sums are kept; 0: off). A tiny alpha that rounds to 0 is refused.
  const float a = alpha.has_value() ? static_cast<float>(*alpha) : 0.0f;
  TORCH_CHECK(!alpha.has_value() || a > 0.0f, "fuq::logit_stats: alpha is too small for float32: ", *alpha);
  switch (dtype) {
    case at::kFloat:
      run<cpu::F32>(logits, k, t, a, o, tokens);
      break;
    case at::kBFloat16:
      run<cpu::BF16>(logits, k, t, a, o, tokens);
      break;
    default:
      run<cpu::F16>(logits, k, t, a, o, tokens);
      break;
  }
  return {lse, ent, var, mx, am, tkl, tki, tkm, tl, ex};
}

}  // namespace
}  // namespace fuq

TORCH_LIBRARY_IMPL(fuq, CPU, m) { m.impl("logit_stats", &fuq::logit_stats_cpu); }
