"""Every Triton kernel the public ops launch compiles ahead of time for sm_80 and sm_90.

The interpreter (how the other Triton tests run without a GPU) executes Python and hides
what the GPU compiler refuses. This test records each launch of the public ops under the
interpreter (kernel, argument types, constexprs, warps; decode shapes planned as on a
132-SM GPU) and compiles every recorded variant with ``triton.compile`` for both targets
(``tests/triton_launches.py``; ptxas ships with Triton, no GPU needed), with the variants
the CPU drive cannot reach listed by hand there (``hand_listed``: the bitonic top-k of a
CUDA device, ``hidden_stats``' prefill plan, every epilogue flag; they were three per-op
compile scripts in the op tests). The table of
registers, spills and shared memory per variant goes to ``$FUQ_AOT_REPORT`` when set
(CI prints it), else to the test's temporary folder.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import HAS_TRITON

SCRIPT = Path(__file__).with_name("triton_launches.py")


def _run(args, env, timeout):
    return subprocess.run(
        [sys.executable, str(SCRIPT), *args], env=env, capture_output=True, text=True, timeout=timeout
    )


@pytest.mark.aot
@pytest.mark.triton_interp
@pytest.mark.skipif(not HAS_TRITON, reason="needs triton")
def test_every_launched_triton_kernel_compiles_for_sm80_and_sm90(tmp_path):
    base = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    base.update(TRITON_CACHE_DIR=str(tmp_path / "cache"), TRITON_DEFAULT_FP_FUSION="1")
    launches = tmp_path / "launches.json"
    r = _run(["record", str(launches)], dict(base, TRITON_INTERPRET="1"), 1800)
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-4000:]
    c = _run(["compile", str(launches), "80", "90"], base, 1800)
    report = Path(os.environ.get("FUQ_AOT_REPORT") or tmp_path / "aot.txt")
    report.write_text(r.stdout + c.stdout)
    failed = [line for line in c.stdout.splitlines() if line.startswith("FAILED")]
    assert c.returncode == 0 and not failed, "\n".join(failed[:40]) + c.stderr[-3000:]
