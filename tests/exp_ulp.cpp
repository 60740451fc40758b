#include "fuq/cpu_online.h"
#include <cstdio>
#include <cmath>
#include <cstdlib>
// Test driver for tests/test_exp_ulp.py. Sweeps every `stride`-th float in [lo, -0] and compares
// fuq::cpu::fast_exp_nonpos with exp in double: prints the count, the max error in ulps of the
// true value over d >= kExpMin, the d where it occurs, and the max absolute error below kExpMin
// (flushed to 0 there).
int main(int argc, char** argv) {
  const float lo = argc > 1 ? std::atof(argv[1]) : -88.0f;
  const int stride = argc > 2 ? std::atoi(argv[2]) : 1;
  double max_ulp = 0, worst_d = 0, max_abs_small = 0; long n = 0;
  uint32_t b = 0x80000000u;  // -0.0, walking down in magnitude order
  for (float d = -0.0f; d >= lo; b += stride, d = fuq::cpu::bits_to_float(b)) {
    const float got = fuq::cpu::fast_exp_nonpos(d);
    const double want = std::exp((double)d);
    ++n;
    if (d < fuq::cpu::kExpMin) { max_abs_small = std::fmax(max_abs_small, std::fabs(got - want)); continue; }
    int e; std::frexp(want, &e);
    const double ulp = std::ldexp(1.0, e - 24);
    const double err = std::fabs((double)got - want) / ulp;
    if (err > max_ulp) { max_ulp = err; worst_d = d; }
  }
  std::printf("%ld %.6f %.9g %.6g\n", n, max_ulp, worst_d, max_abs_small);
}
