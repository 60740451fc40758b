"""The error of the CPU kernels' exp (``fuq::cpu::fast_exp_nonpos`` in csrc/include/fuq/cpu_online.h,
used by logit_stats, hidden_stats' fold, truncate and sample) against float64 exp on [-88, 0].

The header is compiled on its own (tests/exp_ulp.cpp) for each ISA the extension is built for
(x86-64-v3 = fuq._C, x86-64-v4 = fuq._C_v4) and swept over every 31st float in [-88, -0]
(about 36 million values; the full sweep, stride 1, measured 2.92 ulp at d = -16.2885 on both ISAs).
Bound: at most 3 ulps of the true value for d >= kExpMin (-87); below kExpMin the
result is flushed to 0 (absolute error < exp(-87) = 1.65e-38, a float64 sum of probabilities of
a row can't see it).
"""

from __future__ import annotations

import platform
import shutil
import subprocess
from pathlib import Path

import pytest

from fuq import _library

ROOT = Path(__file__).resolve().parent.parent
CXX = shutil.which("g++") or shutil.which("c++")

pytestmark = pytest.mark.skipif(
    CXX is None or platform.machine().lower() not in ("x86_64", "amd64"), reason="needs an x86-64 C++ compiler"
)


def _isas() -> list[str]:
    flags = _library._cpu_flags() or set()
    out = ["x86-64-v3"] if all(f in flags for f in _library.X86_64_V3) else []
    if all(f in flags for f in _library.X86_64_V4):
        out.append("x86-64-v4")
    return out


@pytest.mark.parametrize("march", ["x86-64-v3", "x86-64-v4"])
def test_fast_exp_ulp_against_float64(march: str, tmp_path: Path) -> None:
    if march not in _isas():
        pytest.skip(f"this CPU cannot run {march}")
    exe = tmp_path / "exp_ulp"
    subprocess.run(
        [
            CXX,
            "-O2",
            "-std=c++17",
            f"-march={march}",
            f"-I{ROOT / 'csrc' / 'include'}",
            str(ROOT / "tests" / "exp_ulp.cpp"),
            "-o",
            str(exe),
        ],
        check=True,
    )
    n, max_ulp, worst_d, max_abs_flushed = subprocess.run(
        [str(exe), "-88", "31"], check=True, capture_output=True, text=True
    ).stdout.split()
    assert int(n) > 30_000_000
    assert float(max_ulp) <= 3.0, f"fast_exp_nonpos: {max_ulp} ulp at d = {worst_d} ({march})"
    assert float(max_ulp) > 0.0  # the sweep really compared something
    assert float(max_abs_flushed) < 1.7e-38
