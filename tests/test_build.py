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
