// The schemas of every fuq op, defined once, in C++: a process that links libtorch and fuq's
// CPU library (fuq/_C*.so from Python, or libfuq.so from CMake for a program without Python)
// sees torch.ops.fuq.* / c10::Dispatcher "fuq::*" without running any Python. The kernels
// register against these names with TORCH_LIBRARY_IMPL (CPU: csrc/cpu/*.cpp; CUDA C++:
// csrc/cuda/*.cu, in fuq._C_cuda); fuq/_library.py registers the Python fakes (meta kernels)
// and the Triton / reference implementations, and defines these same schemas from Python only
// when fuq._C cannot be loaded. tests/test_export.py checks that the strings below equal the
// Python ones (fuq._library.SCHEMAS): change both together.
#include <torch/library.h>

#include "fuq/knobs.h"  // FUQ_KNOBS_SCHEMA: the knob arguments, generated from fuq/knobs.py

// ===== fuq op schemas: BEGIN (keep equal to fuq/_library.py's *_SCHEMA strings) ==============
// The fields of logit_stats, as the outputs of logit_stats (plus `extra`, the density-free
// sums: [B, 4] when alpha is given, else [0, 4]), sample and hidden_stats.
#define FUQ_STATS_FIELDS                                                                       \
  "Tensor lse, Tensor entropy, Tensor varentropy, Tensor max_logprob, Tensor argmax, "         \
  "Tensor topk_logprobs, Tensor topk_ids, Tensor topk_mass, Tensor token_logprob"
#define FUQ_STATS_OUTPUTS "(" FUQ_STATS_FIELDS ")"
#define FUQ_LOGIT_STATS_SIG                                                                      \
  "(Tensor logits, int k, Tensor? tokens, float temperature, float? alpha=None) -> "            \
  "(" FUQ_STATS_FIELDS ", Tensor extra)"
// The sampling knobs of truncate and sample: FUQ_KNOBS_SCHEMA of the generated fuq/knobs.h.
#define FUQ_TRUNCATE_SIG "(Tensor logits, " FUQ_KNOBS_SCHEMA ") -> Tensor"
#define FUQ_SAMPLE_SIG                                                                           \
  "(Tensor logits, Tensor uniform, int k, " FUQ_KNOBS_SCHEMA ", bool base_stats=False) -> "            \
  "(Tensor ids, Tensor lse, Tensor entropy, Tensor varentropy, Tensor max_logprob, "            \
  "Tensor argmax, Tensor topk_logprobs, Tensor topk_ids, Tensor topk_mass, Tensor token_logprob)"
#define FUQ_ATTENTION_STATS_SIG                                                                  \
  "(Tensor q, Tensor k, float scale, Tensor? mask, bool causal, int window) -> "                \
  "(Tensor mass, Tensor entropy, Tensor lse)"
#define FUQ_HIDDEN_STATS_SIG                                                                     \
  "(Tensor hidden, Tensor weight, Tensor? bias, int k, Tensor? targets, float temperature, "    \
  "float? softcap, int chunk) -> " FUQ_STATS_OUTPUTS

TORCH_LIBRARY(fuq, m) {
  // The Python fakes live in fuq._library: torch imports it when a fake is needed.
  m.set_python_module("fuq._library");
  m.def("logit_stats" FUQ_LOGIT_STATS_SIG);
  m.def("truncate" FUQ_TRUNCATE_SIG);
  m.def("sample" FUQ_SAMPLE_SIG);
  m.def("attention_stats" FUQ_ATTENTION_STATS_SIG);
  m.def("hidden_stats" FUQ_HIDDEN_STATS_SIG);
  // The CUDA C++ kernels (backend="cuda"), implemented by fuq._C_cuda when it is built.
  m.def("logit_stats_cuda" FUQ_LOGIT_STATS_SIG);
  m.def("truncate_cuda" FUQ_TRUNCATE_SIG);
  m.def("sample_cuda" FUQ_SAMPLE_SIG);
  m.def("attention_stats_cuda" FUQ_ATTENTION_STATS_SIG);
}
// ===== fuq op schemas: END ========================================================================
