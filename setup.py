"""Builds fuq's C++ extension (fuq._C) and, against a CUDA torch, fuq._C_cuda.

Install with ``pip install --no-build-isolation -e .`` so the extension builds
against the torch already installed (never a second one).
Environment: ``FUQ_NO_EXT=1`` skips the extensions (pure-Python install, the ops
then fall back to the reference); ``FUQ_NO_CUDA=1`` skips the CUDA one;
``FUQ_MARCH`` sets the CPU baseline of the C++ code (default ``x86-64-v3`` on x86-64:
AVX2 + FMA + F16C, checked at import by ``fuq._library``; ``native`` for a build that
only runs where it was built). With the default, the same sources are also built for
x86-64-v4 (AVX-512) as ``fuq._C_v4``, which ``fuq._library`` loads instead on a CPU that
has it (runtime dispatch by build, as ATen compiles its kernels per CPU capability).
"""

import glob
import os
import platform

from setuptools import setup

ROOT = os.path.dirname(os.path.abspath(__file__))


def _extensions():
    if os.environ.get("FUQ_NO_EXT") == "1":
        return [], {}
    import torch
    from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CppExtension, CUDAExtension

    include = [os.path.join(ROOT, "csrc", "include")]
    # -fno-trapping-math lets GCC if-convert (and so vectorise) the selects of the exp loops.
    # A stated baseline, not -march=native: a wheel built here runs on any x86-64-v3 CPU.
    x86 = platform.machine().lower() in ("x86_64", "amd64")
    march = os.environ.get("FUQ_MARCH", "x86-64-v3" if x86 else "")
    cxx = ["-O3", "-std=c++20", "-fopenmp", "-fno-math-errno", "-fno-trapping-math"]
    cxx += [f"-march={march}"] if march else []
    cpu_sources = sorted(glob.glob("csrc/cpu/*.cpp"))
    exts = [
        CppExtension(
            "fuq._C",
            cpu_sources,
            include_dirs=include,
            extra_compile_args={"cxx": cxx},
            extra_link_args=["-fopenmp"],
        )
    ]
    if x86 and "FUQ_MARCH" not in os.environ:  # the AVX-512 build of the same sources
        width = os.environ.get("FUQ_V4_VECTOR_WIDTH", "256")  # A/B of the AVX-512 build's vector width
        v4 = [f for f in cxx if not f.startswith("-march=")] + ["-march=x86-64-v4", f"-mprefer-vector-width={width}"]
        exts.append(
            CppExtension(
                "fuq._C_v4", cpu_sources, include_dirs=include, extra_compile_args={"cxx": v4},
                extra_link_args=["-fopenmp"],
            )
        )
    cuda_sources = sorted(glob.glob("csrc/cuda/*.cu"))
    if (
        os.environ.get("FUQ_NO_CUDA") != "1"
        and torch.version.cuda is not None
        and CUDA_HOME is not None
        and cuda_sources
    ):
        exts.append(
            CUDAExtension(
                "fuq._C_cuda",
                cuda_sources,
                include_dirs=include,
                # no -std: BuildExtension adds the one the torch headers need (C++20 for
                # torch >= 2.10, e.g. 2.11 and 2.13), for the host compiler and nvcc alike.
                extra_compile_args={
                    "cxx": ["-O3"],
                    "nvcc": ["-O3", "--expt-relaxed-constexpr",
                             "-gencode=arch=compute_80,code=sm_80",
                             "-gencode=arch=compute_90,code=sm_90"],
                },
            )
        )
    return exts, {"build_ext": BuildExtension}


ext_modules, cmdclass = _extensions()
setup(ext_modules=ext_modules, cmdclass=cmdclass)
