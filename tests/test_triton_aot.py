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

import json
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


@pytest.mark.triton_interp
@pytest.mark.skipif(not HAS_TRITON, reason="needs triton")
def test_launch_count_counts_triton_launches_and_device_ops(tmp_path):
    """The launch table counts what a call runs: checked on calls whose kernels are known."""
    code = "import sys\nsys.path.insert(0, " + repr(str(SCRIPT.parent)) + ")\n" + r"""
import json, torch
import triton_launches as L
import fuq
rec = L.Recorder()
out = {}
with rec.patched():
    with L.LaunchCount(rec) as c:
        torch.zeros(3).add_(1.0).sum().item()
    out["torch"] = (c.triton, c.torch, c.syncs, c.torch_ops)
    with rec.planning_only():
        x = torch.empty(1024, 4096)  # B >= 2 programs per SM: one program per row
        with L.LaunchCount(rec) as c:
            fuq.truncate(x, top_p=0.9, backend="triton")
        out["rows"] = (c.triton, c.torch)
        x = torch.empty(1, 262144)
        with L.LaunchCount(rec) as c:
            fuq.truncate(x, top_p=0.9, backend="triton")
        out["split"] = (c.triton, c.torch)
        with L.LaunchCount(rec) as c:
            fuq.sample(x, top_p=0.9, backend="triton")
        out["sample"] = (c.triton, c.torch, c.torch_ops)
print(json.dumps(out))
"""
    env = dict(os.environ, TRITON_INTERPRET="1")
    r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    got = json.loads(r.stdout.strip().splitlines()[-1])
    triton, torch_ops, syncs, names = got["torch"]
    assert triton == 0 and syncs == 1 and torch_ops >= 4, names  # a fill, add_, sum, .item()
    assert "_local_scalar_dense" in names and "empty" not in names
    # one program per row: scale, the knob, the NaN rows; no torch kernel beyond allocations
    assert got["rows"][0] == 3, got
    # split rows (B = 1): scale (with the max and the first search round), the second round, the
    # candidates (the search finished by the row's last program), apply; 18 with a 16-way round per
    # launch, 34 when every pass had its own finaliser
    assert got["split"][0] == 4, got
    # sample: the same 4 (the draw folded into the apply) + logit_stats' 1 (its finaliser folded
    # into its pass); torch: the uniforms only
    assert got["sample"][:2] == [5, 1], got
