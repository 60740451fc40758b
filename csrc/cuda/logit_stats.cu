// Binding of the CUDA C++ kernel of fuq::logit_stats (csrc/include/fuq/logit_stats.cuh):
// checks, dtype dispatch, scratch allocation, launch on the current stream. Registered
// as torch.ops.fuq.logit_stats_cuda (schema defined in fuq/_library.py); chosen with
// fuq.logit_stats(..., backend="cuda").
//
// This file also holds the PyInit of the module fuq._C_cuda (the only one in
// csrc/cuda/): importing the module loads the library, whose static initialisers
// register the kernels.
#include <Python.h>

#include <ATen/ATen.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <torch/library.h>

#include <cmath>
#include <optional>
#include <tuple>

#include "fuq/logit_stats.cuh"

namespace {

using at::Tensor;
using Stats = std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor>;

template <typename T>
void launch(const Tensor& x, int64_t k, const int64_t* tokens, float temperature, float alpha,
            const fuq::LogitStatsPlan& plan,
            Tensor& state, Tensor& cand, const int64_t* sel, const fuq::LogitStatsOut& out, cudaStream_t stream) {
  const T* px = reinterpret_cast<const T*>(x.const_data_ptr());
  C10_CUDA_CHECK(fuq::logit_stats<T>(px, x.stride(0), x.size(0), static_cast<int>(x.size(1)), static_cast<int>(k),
                                     tokens, temperature, alpha, plan, state.data_ptr<float>(), cand.data_ptr<int64_t>(), sel,
                                     out, stream));
}

template <typename T>
Tensor row_keys(const Tensor& x, float temperature, cudaStream_t stream) {
  Tensor keys = at::empty({x.size(0), x.size(1)}, x.options().dtype(at::kLong));
  const T* px = reinterpret_cast<const T*>(x.const_data_ptr());
  C10_CUDA_CHECK(fuq::logit_stats_row_keys<T>(px, x.stride(0), x.size(0), static_cast<int>(x.size(1)), temperature,
                                              keys.data_ptr<int64_t>(), stream));
  return keys;
}

Stats logit_stats_cuda(const Tensor& logits_in, int64_t k, const std::optional<Tensor>& tokens, double temperature,
                       std::optional<double> alpha) {
  TORCH_CHECK(logits_in.is_cuda(), "fuq::logit_stats_cuda: logits must be a CUDA tensor, got ", logits_in.device());
  TORCH_CHECK(logits_in.dim() == 2, "fuq::logit_stats_cuda: logits must be [B, V], got ", logits_in.sizes());
  const auto dtype = logits_in.scalar_type();
  TORCH_CHECK(dtype == at::kFloat || dtype == at::kBFloat16 || dtype == at::kHalf,
              "fuq::logit_stats_cuda: logits must be float32, bfloat16 or float16, got ", dtype);
  const int64_t B = logits_in.size(0), V = logits_in.size(1);
  TORCH_CHECK(V >= 1 && V < (int64_t{1} << 31) - 1, "fuq::logit_stats_cuda: V must be in [1, 2^31 - 1), got ", V);
  TORCH_CHECK(k >= 0 && k <= V, "fuq::logit_stats_cuda: k must be in [0, V] = [0, ", V, "], got ", k);
  TORCH_CHECK(temperature > 0.0, "fuq::logit_stats_cuda: temperature must be > 0, got ", temperature);
  TORCH_CHECK(!alpha.has_value() || (std::isfinite(*alpha) && *alpha > 0.0),
              "fuq::logit_stats_cuda: alpha must be None or a finite number > 0");
  const Tensor logits = logits_in.stride(1) == 1 ? logits_in : logits_in.contiguous();

  c10::cuda::CUDAGuard guard(logits.device());
  cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  const auto f32 = logits.options().dtype(at::kFloat);
  const auto i64 = logits.options().dtype(at::kLong);
  Tensor lse = at::empty({B}, f32), ent = at::empty({B}, f32), var = at::empty({B}, f32);
  Tensor maxlp = at::empty({B}, f32), amax = at::empty({B}, i64), mass = at::empty({B}, f32);
  Tensor tkl = at::empty({B, k}, f32), tki = at::empty({B, k}, i64);
  Tensor toklp = at::empty({tokens.has_value() ? B : 0}, f32);
  Tensor extra = at::empty({alpha.has_value() ? B : 0, 4}, f32);
  if (B == 0) return {lse, ent, var, maxlp, amax, tkl, tki, mass, toklp, extra};

  Tensor tok;
  if (tokens.has_value()) {
    TORCH_CHECK(tokens->numel() == B, "fuq::logit_stats_cuda: tokens must have ", B, " entries, got ", tokens->numel());
    tok = tokens->to(logits.device(), at::kLong).contiguous();
  }
  int sms = 0;
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, logits.device().index()));
  const fuq::LogitStatsPlan plan = fuq::logit_stats_plan(B, static_cast<int>(V), static_cast<int>(k), sms, alpha.has_value());
  Tensor state = at::empty({plan.state_floats}, f32);
  Tensor cand = at::empty({plan.cand_keys}, i64);
  const float T = static_cast<float>(temperature);
  const float A = alpha.has_value() ? static_cast<float>(*alpha) : 0.5f;

  Tensor sel;  // k > kLogitStatsKMax: the k largest packed keys of each row, sorted (exact: keys are distinct)
  if (plan.needs_sel) {
    Tensor keys = dtype == at::kFloat      ? row_keys<float>(logits, T, stream)
                  : dtype == at::kBFloat16 ? row_keys<__nv_bfloat16>(logits, T, stream)
                                           : row_keys<__half>(logits, T, stream);
    sel = std::get<0>(at::topk(keys, k, /*dim=*/1, /*largest=*/true, /*sorted=*/true)).contiguous();
  }
  const fuq::LogitStatsOut out{lse.data_ptr<float>(),  ent.data_ptr<float>(),   var.data_ptr<float>(),
                               maxlp.data_ptr<float>(), amax.data_ptr<int64_t>(), tkl.data_ptr<float>(),
                               tki.data_ptr<int64_t>(), mass.data_ptr<float>(),  tokens.has_value() ? toklp.data_ptr<float>() : nullptr,
                               alpha.has_value() ? extra.data_ptr<float>() : nullptr};
  const int64_t* ptok = tokens.has_value() ? tok.data_ptr<int64_t>() : nullptr;
  const int64_t* psel = plan.needs_sel ? sel.data_ptr<int64_t>() : nullptr;
  switch (dtype) {
    case at::kFloat:
      launch<float>(logits, k, ptok, T, A, plan, state, cand, psel, out, stream);
      break;
    case at::kBFloat16:
      launch<__nv_bfloat16>(logits, k, ptok, T, A, plan, state, cand, psel, out, stream);
      break;
    default:
      launch<__half>(logits, k, ptok, T, A, plan, state, cand, psel, out, stream);
      break;
  }
  return {lse, ent, var, maxlp, amax, tkl, tki, mass, toklp, extra};
}

}  // namespace

TORCH_LIBRARY_IMPL(fuq, CUDA, m) { m.impl("logit_stats_cuda", &logit_stats_cuda); }

extern "C" {
PyObject* PyInit__C_cuda(void) {
  static struct PyModuleDef module_def = {
      PyModuleDef_HEAD_INIT,
      "_C_cuda",  // name
      "fuq's CUDA C++ kernels, registered as torch.ops.fuq.*_cuda",
      -1,  // no per-module state
      nullptr,
  };
  return PyModule_Create(&module_def);
}
}
