// Binding of the CUDA C++ truncation kernel (csrc/include/fuq/truncate.cuh): checks,
// dtype dispatch, launch on the current stream. Registered as torch.ops.fuq.truncate_cuda
// (schema in fuq/_library.py); chosen with fuq.truncate(..., backend="cuda").
// Knob off-values as in the fuq::truncate schema: top_k 0, top_p 1, min_p 0, typical_p 1,
// epsilon 0, eta 0, top_h 0, top_n_sigma < 0, p_less false.
#include <ATen/ATen.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <torch/library.h>

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
  Tensor scratch = at::empty({plan.scratch_floats > 0 ? plan.scratch_floats : 1}, logits.options().dtype(at::kFloat));
  C10_CUDA_CHECK(fuq::truncate<T>(px, logits.stride(0), po, V, B, V, P, plan, scratch.data_ptr<float>(), stream));
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
  P.top_p = top_p < 1.0 ? static_cast<float>(top_p) : -1.f;
  P.min_p = min_p > 0.0 ? static_cast<float>(min_p) : -1.f;
  P.typical_p = typical_p < 1.0 ? static_cast<float>(typical_p) : -1.f;
  P.epsilon = epsilon > 0.0 ? static_cast<float>(epsilon) : -1.f;
  P.eta = eta > 0.0 ? static_cast<float>(eta) : -1.f;
  P.top_h = top_h > 0.0 ? static_cast<float>(top_h) : -1.f;
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

}  // namespace

TORCH_LIBRARY_IMPL(fuq, CUDA, m) { m.impl("truncate_cuda", &truncate_cuda); }
