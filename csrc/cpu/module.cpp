// The Python module fuq._C. Importing it loads this shared library, whose static
// initialisers (TORCH_LIBRARY_IMPL blocks in the other files of csrc/cpu/) register the
// C++ kernels against the schemas that fuq/_library.py defines first. The module itself
// has no Python-visible members (the pattern of pytorch/extension-cpp).
#include <Python.h>

extern "C" {
PyObject* PyInit__C(void) {
  static struct PyModuleDef module_def = {
      PyModuleDef_HEAD_INIT,
      "_C",  // name
      "fuq's C++ CPU kernels, registered as torch.ops.fuq.*",
      -1,    // no per-module state
      nullptr,
  };
  return PyModule_Create(&module_def);
}
}
