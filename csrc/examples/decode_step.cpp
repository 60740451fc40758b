// A decode step without Python: load an AOTInductor package (a model's forward + fuq.sample +
// fuq.logit_stats, exported and compiled from Python with torch.export and
// torch._inductor.aoti_compile_and_package), run it, and call a fuq op directly through the
// dispatcher. The process links libtorch and libfuq.so (fuq's CPU kernels and the op schemas,
// csrc/cpu/*.cpp without the Python module): nothing here needs libpython.
//
//   decode_step PACKAGE.pt2 < inputs
//
// inputs (text): "B T", then B lines of T token ids, then B uniforms in [0, 1) (the draws of
// fuq.sample, an input of the exported program). The package is expected to take
// (ids int64 [B, T], uniform float64 [B]) and return (ids, entropy, token_logprob,
// base_entropy, base_varentropy, topk_ids, logits) as the one tests/test_export.py builds.
// Output: one line per tensor, "name: v v v ..." (row-major), then "direct_entropy: ..." from
// a direct call of fuq::logit_stats on the returned logits, at temperature 1.
#include <torch/csrc/inductor/aoti_package/model_package_loader.h>
#include <torch/torch.h>

#include <ATen/core/dispatch/Dispatcher.h>

#include <cstdio>
#include <iostream>
#include <string>
#include <tuple>
#include <vector>

namespace {

void print(const char* name, const at::Tensor& t) {
  at::Tensor c = t.contiguous().cpu();
  std::printf("%s:", name);
  if (c.scalar_type() == at::kLong) {
    const int64_t* p = c.data_ptr<int64_t>();
    for (int64_t i = 0; i < c.numel(); ++i) std::printf(" %lld", static_cast<long long>(p[i]));
  } else {
    at::Tensor d = c.to(at::kDouble);
    const double* p = d.data_ptr<double>();
    for (int64_t i = 0; i < d.numel(); ++i) std::printf(" %.9g", p[i]);
  }
  std::printf("\n");
}

// The outputs of fuq::logit_stats (its schema: csrc/cpu/schemas.cpp): the nine fields, then extra.
using Stats = std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor,
                         at::Tensor, at::Tensor, at::Tensor, at::Tensor>;

}  // namespace

int main(int argc, char** argv) {
  if (argc != 2) {
    std::fprintf(stderr, "usage: %s PACKAGE.pt2 < inputs\n", argv[0]);
    return 2;
  }
  int64_t B = 0, T = 0;
  if (!(std::cin >> B >> T) || B <= 0 || T <= 0) {
    std::fprintf(stderr, "decode_step: the input must start with \"B T\" (both > 0)\n");
    return 2;
  }
  at::Tensor ids = at::empty({B, T}, at::kLong);
  at::Tensor uniform = at::empty({B}, at::kDouble);
  for (int64_t i = 0; i < B * T; ++i) {
    if (!(std::cin >> ids.data_ptr<int64_t>()[i])) {
      std::fprintf(stderr, "decode_step: expected %lld token ids\n", static_cast<long long>(B * T));
      return 2;
    }
  }
  for (int64_t i = 0; i < B; ++i) {
    if (!(std::cin >> uniform.data_ptr<double>()[i])) {
      std::fprintf(stderr, "decode_step: expected %lld uniforms\n", static_cast<long long>(B));
      return 2;
    }
  }

  torch::NoGradGuard no_grad;
  torch::inductor::AOTIModelPackageLoader loader(argv[1]);
  std::vector<at::Tensor> out = loader.run({ids, uniform});
  const char* names[] = {"ids", "entropy", "token_logprob", "base_entropy", "base_varentropy", "topk_ids",
                         "logits"};
  if (out.size() != std::size(names)) {
    std::fprintf(stderr, "decode_step: the package returned %zu tensors, expected %zu\n", out.size(),
                 std::size(names));
    return 1;
  }
  for (size_t i = 0; i < out.size(); ++i) print(names[i], out[i]);

  // A fuq op called directly from C++: the schema and the CPU kernel come from libfuq.so.
  auto logit_stats = c10::Dispatcher::singleton()
                         .findSchemaOrThrow("fuq::logit_stats", "")
                         .typed<Stats(const at::Tensor&, int64_t, const std::optional<at::Tensor>&, double,
                                      std::optional<double>)>();
  Stats st = logit_stats.call(out[6], 0, std::nullopt, 1.0, std::nullopt);
  print("direct_entropy", std::get<1>(st));
  return 0;
}
