// Instantiates the truncation kernels (one block per row, split rows) for every input
// dtype so nvcc type-checks them; the host planner must be usable without a device.
#include "fuq/truncate.cuh"

#define FUQ_INSTANTIATE_TRUNCATE(T)                                                                      \
  template cudaError_t fuq::truncate<T>(const T*, int64_t, float*, int64_t, int, int,                   \
                                        const fuq::TruncateParams&, const fuq::TruncatePlan&, double*,  \
                                        cudaStream_t);                                                  \
  template cudaError_t fuq::truncate_max_coresident<T>(int, int64_t*);

FUQ_INSTANTIATE_TRUNCATE(float)
FUQ_INSTANTIATE_TRUNCATE(__half)
FUQ_INSTANTIATE_TRUNCATE(__nv_bfloat16)
#undef FUQ_INSTANTIATE_TRUNCATE

int fuq_truncate_check_plan() {
  const fuq::TruncatePlan one = fuq::truncate_plan(1, 262144, 132, 132 * 4);
  const fuq::TruncatePlan big = fuq::truncate_plan(512, 262144, 132, 132 * 4);
  const bool covered = (one.splits - 1) * int64_t{one.seg} < 262144 && int64_t{one.splits} * one.seg >= 262144;
  return one.splits >= 132 && covered && big.splits == 1 ? 0 : 1;
}

int fuq_sample_draw_check(const float* z, const double* u, int64_t* ids) {
  return fuq::sample_draw(z, 7, 3, 7, u, ids, nullptr) == cudaSuccess ? 0 : 1;
}
