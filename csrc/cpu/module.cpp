// The Python module fuq._C (or fuq._C_v4: the same sources built for x86-64-v4, see
// setup.py; the name comes from TORCH_EXTENSION_NAME). Importing it loads this shared library, whose static
// initialisers define the op schemas (TORCH_LIBRARY in schemas.cpp) and register the C++
// kernels against them (TORCH_LIBRARY_IMPL blocks in the other files of csrc/cpu/). The module
// itself has no Python-visible members (the pattern of pytorch/extension-cpp). This file is the
// only one that needs Python (PyModule_Create): CMake's libfuq.so is csrc/cpu/ without it.
#include <Python.h>

#ifndef TORCH_EXTENSION_NAME
#define TORCH_EXTENSION_NAME _C
#endif
#define FUQ_CAT2(a, b) a##b
#define FUQ_CAT(a, b) FUQ_CAT2(a, b)
#define FUQ_STR2(a) #a
#define FUQ_STR(a) FUQ_STR2(a)

extern "C" {
PyObject* FUQ_CAT(PyInit_, TORCH_EXTENSION_NAME)(void) {
  static struct PyModuleDef module_def = {
      PyModuleDef_HEAD_INIT,
      FUQ_STR(TORCH_EXTENSION_NAME),  // name
      "fuq's C++ CPU kernels, registered as torch.ops.fuq.*",
      -1,    // no per-module state
      nullptr,
  };
  return PyModule_Create(&module_def);
}
}
