// Compile check only (csrc/check_cuda.sh): instantiates the fuq::attention_stats kernels and
// launcher for the three key types, so nvcc type-checks the templates.
#include "fuq/attention_stats.cuh"

namespace fuq {
#define FUQ_INSTANTIATE_ATTENTION_STATS(T)                                                                      \
  template cudaError_t attention_stats<T>(const AttentionStatsArgs&, const AttentionStatsPlan&, float*, float*, \
                                          float*, float*, float*, cudaStream_t);

FUQ_INSTANTIATE_ATTENTION_STATS(float)
FUQ_INSTANTIATE_ATTENTION_STATS(__half)
FUQ_INSTANTIATE_ATTENTION_STATS(__nv_bfloat16)
#undef FUQ_INSTANTIATE_ATTENTION_STATS
}  // namespace fuq

// The host planner must be usable without a device: Gemma 3 270M decoding (Hq 4, Hkv 1,
// d 256, bf16) keeps the scores; 64 query rows per head recompute them.
int fuq_attention_stats_check_plan() {
  const fuq::AttentionStatsPlan a = fuq::attention_stats_plan(1, 4, 16384, 256, 2, 132);
  const fuq::AttentionStatsPlan b = fuq::attention_stats_plan(1, 256, 16384, 256, 2, 132);
  return a.keep && !b.keep && a.splits > 1 ? 0 : 1;
}
