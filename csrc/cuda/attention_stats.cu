// Binding of the CUDA C++ kernel of fuq::attention_stats (csrc/include/fuq/attention_stats.cuh):
// checks, dtype dispatch, scratch allocation, launch on the current stream. Registered as
// torch.ops.fuq.attention_stats_cuda (schema in fuq/_library.py); chosen with
// fuq.attention_stats(..., backend="cuda").
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

#include "fuq/attention_stats.cuh"

namespace {

using at::Tensor;

std::tuple<Tensor, Tensor, Tensor> attention_stats_cuda(const Tensor& q_in, const Tensor& k_in, double scale,
                                                        const std::optional<Tensor>& mask_in, bool causal,
                                                        int64_t window) {
  TORCH_CHECK(q_in.is_cuda() && k_in.is_cuda(), "fuq::attention_stats_cuda: q and k must be CUDA tensors");
  TORCH_CHECK(q_in.dim() == 4 && k_in.dim() == 4, "fuq::attention_stats_cuda: q and k must be 4-d, got ",
              q_in.sizes(), " and ", k_in.sizes());
  const auto dtype = k_in.scalar_type();
  TORCH_CHECK(dtype == at::kFloat || dtype == at::kBFloat16 || dtype == at::kHalf,
              "fuq::attention_stats_cuda: k must be float32, bfloat16 or float16, got ", dtype);
  const int64_t B = q_in.size(0), Hq = q_in.size(1), Lq = q_in.size(2), d = q_in.size(3);
  const int64_t Hkv = k_in.size(1), T = k_in.size(2);
  TORCH_CHECK(k_in.size(0) == B && k_in.size(3) == d && Hkv > 0 && Hq % Hkv == 0,
              "fuq::attention_stats_cuda: k must be [B, Hkv, T, d] with Hq % Hkv == 0, got q ", q_in.sizes(),
              ", k ", k_in.sizes());
  TORCH_CHECK(d <= fuq::kAttnMaxD, "fuq::attention_stats_cuda: d must be <= ", fuq::kAttnMaxD, ", got ", d);
  TORCH_CHECK(window >= 0, "fuq::attention_stats_cuda: window must be >= 0 (0 = none), got ", window);
  c10::cuda::CUDAGuard guard(q_in.device());
  const auto f32 = q_in.options().dtype(at::kFloat);
  Tensor mass = at::zeros({B, Hkv, T}, f32);
  Tensor ent = at::full({B, Hq, Lq}, NAN, f32), lse = at::full({B, Hq, Lq}, -INFINITY, f32);
  if (B == 0 || Lq == 0 || T == 0 || Hq == 0) return {mass, ent, lse};  // d = 0: every score is 0
  const Tensor q = q_in.to(at::kFloat).contiguous();
  const Tensor k = k_in.stride(3) == 1 ? k_in : k_in.contiguous();
  fuq::AttentionStatsArgs a{};
  a.q = q.const_data_ptr<float>();
  a.k = k.const_data_ptr();
  a.sk_b = k.stride(0);
  a.sk_h = k.stride(1);
  a.sk_t = k.stride(2);
  Tensor mask;
  if (mask_in.has_value()) {
    mask = *mask_in;
    TORCH_CHECK(mask.scalar_type() == at::kBool && mask.device() == q_in.device(),
                "fuq::attention_stats_cuda: mask must be a bool tensor on ", q_in.device());
    TORCH_CHECK((mask.dim() == 2 && mask.size(0) == B && mask.size(1) == T) ||
                    (mask.dim() == 3 && mask.size(0) == B && mask.size(1) == Lq && mask.size(2) == T),
                "fuq::attention_stats_cuda: mask must be [B, T] or [B, Lq, T], got ", mask.sizes());
    a.mask = reinterpret_cast<const uint8_t*>(mask.const_data_ptr<bool>());
    a.sm_b = mask.stride(0);
    a.sm_i = mask.dim() == 3 ? mask.stride(1) : 0;
    a.sm_t = mask.stride(-1);
  }
  a.BH = B * Hkv;
  a.Hkv = Hkv;
  a.G = (Hq / Hkv) * Lq;
  a.Lq = Lq;
  a.T = T;
  a.d = d;
  a.scale = static_cast<float>(scale);
  a.causal = causal;
  a.window = window;
  int sms = 0;
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, q_in.device().index()));
  const fuq::AttentionStatsPlan plan =
      fuq::attention_stats_plan(a.BH, a.G, T, d, static_cast<int>(k.element_size()), sms);
  Tensor state = at::empty({plan.state_floats}, f32);
  Tensor kept = at::empty({plan.kept_floats}, f32);
  cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  float *pm = mass.data_ptr<float>(), *pe = ent.data_ptr<float>(), *pl = lse.data_ptr<float>();
  float *ps = state.data_ptr<float>(), *pk = plan.keep ? kept.data_ptr<float>() : nullptr;
  switch (dtype) {
    case at::kFloat:
      C10_CUDA_CHECK(fuq::attention_stats<float>(a, plan, ps, pk, pm, pe, pl, stream));
      break;
    case at::kBFloat16:
      C10_CUDA_CHECK(fuq::attention_stats<__nv_bfloat16>(a, plan, ps, pk, pm, pe, pl, stream));
      break;
    default:
      C10_CUDA_CHECK(fuq::attention_stats<__half>(a, plan, ps, pk, pm, pe, pl, stream));
      break;
  }
  return {mass, ent, lse};
}

}  // namespace

TORCH_LIBRARY_IMPL(fuq, CUDA, m) { m.impl("attention_stats_cuda", &attention_stats_cuda); }
