// Compile check only (csrc/check_cuda.sh): instantiates every fuq::logit_stats kernel
// and launcher for the three input types, so nvcc type-checks the templates.
#include "fuq/logit_stats.cuh"

namespace fuq {
#define FUQ_INSTANTIATE_LOGIT_STATS(T)                                                                            \
  template cudaError_t logit_stats<T>(const T*, int64_t, int64_t, int, int, const int64_t*, float, float,       \
                                      const LogitStatsPlan&, float*, int64_t*, const int64_t*, LogitStatsOut,    \
                                      cudaStream_t);                                                             \
  template cudaError_t logit_stats_row_keys<T>(const T*, int64_t, int64_t, int, float, int64_t*, cudaStream_t);

FUQ_INSTANTIATE_LOGIT_STATS(float)
FUQ_INSTANTIATE_LOGIT_STATS(__half)
FUQ_INSTANTIATE_LOGIT_STATS(__nv_bfloat16)
#undef FUQ_INSTANTIATE_LOGIT_STATS
}  // namespace fuq

// The host planner must be usable without a device.
int fuq_logit_stats_check_plan() {
  const fuq::LogitStatsPlan p = fuq::logit_stats_plan(1, 262144, 50, 132);
  const fuq::LogitStatsPlan e = fuq::logit_stats_plan(1, 262144, 50, 132, /*extra=*/true);
  return p.splits > 1 && p.k_pad == 64 && p.ns == 6 && e.ns == 10 ? 0 : 1;
}
