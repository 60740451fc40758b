// Binding of the CUDA C++ truncation kernel (csrc/include/fuq/truncate.cuh): checks,
// dtype dispatch, launch on the current stream. Registered as torch.ops.fuq.truncate_cuda
// (schema in fuq/_library.py); chosen with fuq.truncate(..., backend="cuda").
// Knob off-values as in the fuq::truncate schema: top_k 0, top_p 1, min_p 0, typical_p 1,
// epsilon 0, eta 0, top_h 0, top_n_sigma < 0, p_less false. Also torch.ops.fuq.sample_cuda:
// truncate + draw + stats in one launch sequence (fuq.sample(..., backend="cuda")).
#include <ATen/ATen.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/library.h>

#include <optional>
#include <tuple>

#include "fuq/truncate.cuh"

namespace {

using at::Tensor;

// Plans the launch (split rows for small B, one block per row otherwise), allocates the
// split path's scratch and launches on the current stream.
template <typename T>
void launch(const T* px, const Tensor& logits, float* po, int B, int V, const fuq::TruncateParams& P,
            cudaStream_t stream) {
  const int dev = logits.device().index();
  int sms = 0;
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev));
  int coop = 0;
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&coop, cudaDevAttrCooperativeLaunch, dev));
  int64_t resident = 0;
  if (coop) C10_CUDA_CHECK(fuq::truncate_max_coresident<T>(sms, &resident));
  const fuq::TruncatePlan plan = fuq::truncate_plan(B, V, sms, resident);
  Tensor scratch =
      at::empty({plan.scratch_doubles > 0 ? plan.scratch_doubles : 1}, logits.options().dtype(at::kDouble));
  C10_CUDA_CHECK(fuq::truncate<T>(px, logits.stride(0), po, V, B, V, P, plan, scratch.data_ptr<double>(), stream));
}

Tensor truncate_cuda(const Tensor& logits_in, double temperature, int64_t top_k, double top_p, double min_p,
                     double typical_p, double epsilon, double eta, double top_h, double top_n_sigma, bool p_less,
                     int64_t min_tokens_to_keep) {
  TORCH_CHECK(logits_in.is_cuda(), "fuq::truncate_cuda: logits must be a CUDA tensor, got ", logits_in.device());
  TORCH_CHECK(logits_in.dim() == 2, "fuq::truncate_cuda: logits must be [B, V], got ", logits_in.sizes());
  const auto dtype = logits_in.scalar_type();
  TORCH_CHECK(dtype == at::kFloat || dtype == at::kBFloat16 || dtype == at::kHalf,
              "fuq::truncate_cuda: logits must be float32, bfloat16 or float16, got ", dtype);
  const int64_t B = logits_in.size(0), V = logits_in.size(1);
  // counts are float32 sums (exact below 2^24) and positions need 32 + id bits <= 56
  TORCH_CHECK(V >= 1 && V < (int64_t{1} << 24), "fuq::truncate_cuda: V must be in [1, 2^24), got ", V);
  const Tensor logits = logits_in.stride(1) == 1 ? logits_in : logits_in.contiguous();
  c10::cuda::CUDAGuard guard(logits.device());
  Tensor out = at::empty({B, V}, logits.options().dtype(at::kFloat));
  if (B == 0) return out;
  fuq::TruncateParams P;
  P.temperature = static_cast<float>(temperature);
  P.top_k = static_cast<int>(top_k);
  P.top_p = top_p < 1.0 ? top_p : -1.0;  // float64: the mass cut compares the knob exactly
  P.min_p = min_p > 0.0 ? static_cast<float>(min_p) : -1.f;
  P.typical_p = typical_p < 1.0 ? typical_p : -1.0;
  P.epsilon = epsilon > 0.0 ? static_cast<float>(epsilon) : -1.f;
  P.eta = eta > 0.0 ? static_cast<float>(eta) : -1.f;
  P.top_h = top_h > 0.0 ? top_h : -1.0;
  P.top_n_sigma = static_cast<float>(top_n_sigma);
  P.p_less = p_less;
  P.min_tokens_to_keep = static_cast<int>(min_tokens_to_keep < 1 ? 1 : min_tokens_to_keep);
  cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  float* po = out.data_ptr<float>();
  const int b = static_cast<int>(B), v = static_cast<int>(V);
  if (dtype == at::kFloat) {
    launch<float>(logits.const_data_ptr<float>(), logits, po, b, v, P, stream);
  } else if (dtype == at::kHalf) {
    launch<__half>(reinterpret_cast<const __half*>(logits.const_data_ptr()), logits, po, b, v, P, stream);
  } else {
    launch<__nv_bfloat16>(reinterpret_cast<const __nv_bfloat16*>(logits.const_data_ptr()), logits, po, b, v, P,
                          stream);
  }
  return out;
}

using Sample = std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor>;

// fuq::sample on the CUDA C++ kernels, one launch sequence on the current stream with no
// host round trip: truncate (one block per row, or split rows), the draw (ids stay on the
// device), then fuq::logit_stats_cuda of the untruncated step with the drawn ids as tokens
// (at T, or at T = 1 with base_stats).
Sample sample_cuda(const Tensor& logits, const Tensor& uniform, int64_t k, double temperature, int64_t top_k,
                   double top_p, double min_p, double typical_p, double epsilon, double eta, double top_h,
                   double top_n_sigma, bool p_less, int64_t min_tokens_to_keep, bool base_stats) {
  TORCH_CHECK(uniform.is_cuda() && uniform.scalar_type() == at::kDouble && uniform.dim() == 1 &&
                  uniform.size(0) == logits.size(0),
              "fuq::sample_cuda: uniform must be a float64 CUDA tensor [B], got ", uniform.sizes());
  const Tensor z = truncate_cuda(logits, temperature, top_k, top_p, min_p, typical_p, epsilon, eta, top_h,
                                 top_n_sigma, p_less, min_tokens_to_keep);
  c10::cuda::CUDAGuard guard(logits.device());
  const int64_t B = logits.size(0), V = logits.size(1);
  Tensor ids = at::zeros({B}, logits.options().dtype(at::kLong));
  if (B > 0) {
    const Tensor u = uniform.contiguous();
    C10_CUDA_CHECK(fuq::sample_draw(z.const_data_ptr<float>(), V, static_cast<int>(B), static_cast<int>(V),
                                    u.const_data_ptr<double>(), ids.data_ptr<int64_t>(),
                                    c10::cuda::getCurrentCUDAStream()));
  }
  static auto stats_op = c10::Dispatcher::singleton()
                             .findSchemaOrThrow("fuq::logit_stats_cuda", "")
                             .typed<std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor,
                                               Tensor>(const Tensor&, int64_t, const std::optional<Tensor>&, double,
                                                       std::optional<double>)>();
  // base_stats: the stats of the model's own distribution (T = 1), as the CPU kernel gives them
  auto st = stats_op.call(logits, k, std::optional<Tensor>(ids), base_stats ? 1.0 : temperature, std::nullopt);
  return {ids,
          std::get<0>(st),
          std::get<1>(st),
          std::get<2>(st),
          std::get<3>(st),
          std::get<4>(st),
          std::get<5>(st),
          std::get<6>(st),
          std::get<7>(st),
          std::get<8>(st)};
}

}  // namespace

TORCH_LIBRARY_IMPL(fuq, CUDA, m) {
  m.impl("truncate_cuda", &truncate_cuda);
  m.impl("sample_cuda", &sample_cuda);
}
