// Instantiates the truncation kernel for every input dtype so nvcc type-checks it.
#include "fuq/truncate.cuh"

template cudaError_t fuq::truncate<float>(const float*, int64_t, float*, int64_t, int, int,
                                         const fuq::TruncateParams&, cudaStream_t);
template cudaError_t fuq::truncate<__half>(const __half*, int64_t, float*, int64_t, int, int,
                                          const fuq::TruncateParams&, cudaStream_t);
template cudaError_t fuq::truncate<__nv_bfloat16>(const __nv_bfloat16*, int64_t, float*, int64_t, int, int,
                                                 const fuq::TruncateParams&, cudaStream_t);
