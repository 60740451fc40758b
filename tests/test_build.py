"""The portable build: fuq._C is compiled for a stated CPU baseline and checked against the CPU at import."""

from __future__ import annotations

import os

import pytest

from fuq import _library


def test_cpu_baseline_check():
    full = set(_library.X86_64_V3) | {"sse4_2", "popcnt"}
    assert _library.cpu_baseline_error(full) is None
    msg = _library.cpu_baseline_error(full - {"avx2", "fma"})
    assert "avx2" in msg and "fma" in msg and "FUQ_MARCH=native" in msg


@pytest.mark.skipif(os.environ.get("FUQ_NO_EXT") == "1", reason="built without the C++ extension")
def test_this_cpu_passes_and_loads_the_extension():
    assert _library.CPU_ERROR is None and _library.HAS_CPP, _library.C_ERROR


@pytest.mark.skipif(os.environ.get("FUQ_NO_EXT") == "1", reason="built without the C++ extension")
def test_the_loaded_build_fits_the_cpu():
    """fuq._C_v4 (x86-64-v4) where it was built and the CPU has AVX-512, else fuq._C (x86-64-v3)."""
    import importlib.util

    flags = _library._cpu_flags() or set()
    v4 = importlib.util.find_spec("fuq._C_v4") is not None and all(f in flags for f in _library.X86_64_V4)
    assert _library.CPU_BUILD == ("_C_v4" if v4 and os.environ.get("FUQ_MARCH") != "native" else "_C")
