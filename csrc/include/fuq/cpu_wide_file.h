// Include FIRST (before any other header) in a CPU source whose passes are bound by exp: in the
// AVX-512 build (fuq._C_v4, compiled with -mprefer-vector-width=256, which suits the selection
// kernels of truncate.cpp: min-p ran ~1.5x slower with 512-bit vectors) the rest of the file,
// the inline code of the headers it includes too, is vectorised with 512-bit vectors: ~20%
// faster logit_stats (bench/results/v4_width{256,512}_stats_vs_amax_cpuclock.json). A header
// that must stay at 256 in the other files uses FUQ_WIDE_VECTORS on single functions instead
// (cpu_select.h).
#pragma once
#if defined(__AVX512F__) && defined(__GNUC__) && !defined(__clang__)
#pragma GCC target("prefer-vector-width=512")
#endif
