"""The exp of logit_stats' pass: fuq's own against ATen's ``Vectorized<float>`` exps (issue 16.1).

Issue 16.1 asks for the statistics pass near memory speed, with a vectorised exp from a
well-kept library (ATen's ``at::vec::Vectorized``, which PyTorch's softmax uses, or SLEEF)
rather than a hand-written polynomial. This bench compiles ``bench/cpp/exp_variants.cpp``
(the inner loop of ``OnlineStats::add_impl`` over 4096-float chunks) once per ISA and vector
width the extension can be built for, and runs, on one row of V floats held in cache:

* a bare max over the same floats (the floor of any pass; in cache, so no memory bound),
* the loop with ``fuq::cpu::fast_exp_nonpos`` (what the kernels use),
* the same loop written with ``Vectorized<float>``: ``exp_u20`` (the exp of PyTorch's
  softmax), ``fexp_u20`` (a degree-3 "fast" exp) and ``exp`` (SLEEF, 1.0 ulp),

and reports ns per logit (thread CPU time, best of 7), the relative error of s = sum e^d,
H and Var[-log p] against float64, and each exp's max ulp on [-87, 0] and on [-80, 0]
(every ``--stride``-th float). With ``torch.amax`` and ``fuq.logit_stats`` (k = 0) over the same row, single-threaded,
in the same run.

Usage::

    python bench/bench_exp_variants.py            # writes bench/results/exp_variants_cpuclock.json
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

import fuq

sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness import cpu_time_ms, write_json  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
# (ATen capability, -march, preferred vector width): the builds of fuq._C / fuq._C_v4 and a
# 512-bit variant of the latter
VARIANTS = [("AVX2", "x86-64-v3", 256), ("AVX512", "x86-64-v4", 256), ("AVX512", "x86-64-v4", 512)]
QUICK_ARGS = ["--V", "65536", "--stride", "997", "--out", "exp_variants_quick"]


def build(cap: str, march: str, width: int, where: Path) -> Path:
    inc = Path(torch.__file__).parent / "include"
    lib = Path(torch.__file__).parent / "lib"
    exe = where / f"exp_{march}_{width}"
    cmd = [shutil.which("g++") or "c++", "-O3", "-std=c++20", "-fopenmp", "-fno-math-errno", "-fno-trapping-math",
           f"-march={march}", f"-mprefer-vector-width={width}", f"-DCPU_CAPABILITY_{cap}", f"-DCPU_CAPABILITY={cap}",
           f"-I{inc}", f"-I{ROOT / 'csrc' / 'include'}", str(ROOT / "bench" / "cpp" / "exp_variants.cpp"),
           "-o", str(exe), f"-L{lib}", "-ltorch_cpu", "-lc10", f"-Wl,-rpath,{lib}"]
    subprocess.run(cmd, check=True)
    return exe


def torch_side(V: int) -> dict:
    torch.set_num_threads(1)
    x = torch.randn(1, V, generator=torch.Generator().manual_seed(0)) * 3
    amax = cpu_time_ms(lambda: torch.amax(x, -1), 0.3)
    stats = cpu_time_ms(lambda: fuq.logit_stats(x), 0.3)
    return {"torch_amax_ns_per_logit": amax * 1e6 / V, "fuq_logit_stats_k0_ns_per_logit": stats * 1e6 / V,
            "fuq_cpu_build": fuq._library.CPU_BUILD}


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--V", type=int, default=262144)
    ap.add_argument("--stride", type=int, default=97, help="ulp sweep: every stride-th float of [-87, 0]")
    ap.add_argument("--out", default="exp_variants_cpuclock")
    args = ap.parse_args(argv)
    flags = fuq._library._cpu_flags() or set()
    out = {"V": args.V, "clock": "thread CPU time, best of 7", "loadavg_start": os.getloadavg(), "builds": {}}
    with tempfile.TemporaryDirectory() as tmp:
        for cap, march, width in VARIANTS:
            need = fuq._library.X86_64_V4 if march == "x86-64-v4" else fuq._library.X86_64_V3
            if not all(f in flags for f in need):
                continue
            exe = build(cap, march, width, Path(tmp))
            got = json.loads(subprocess.run([str(exe), str(args.V), str(args.stride)], check=True,
                                            capture_output=True, text=True).stdout)
            out["builds"][f"{march}/{width}"] = got
            print(f"{march} {width}-bit: max {got['max_ns_per_logit']:.3f} ns/logit")
            for name, v in got["variants"].items():
                print(f"  {name:<22} {v['ns_per_logit']:.3f} ns/logit = {v['x_max']:.2f}x max   "
                      f"max ulp {v['max_ulp']:.2f} ([-80, 0]: {v['max_ulp_above_-80']:.2f})   "
                      f"rel err s {v['rel_err_s']:.1e} H {v['rel_err_H']:.1e}")
    out["torch"] = torch_side(args.V)
    out["loadavg_end"] = os.getloadavg()
    out["time_utc"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    print(json.dumps(out["torch"]))
    if args.out:
        print("wrote", write_json(args.out, out))
    return out


if __name__ == "__main__":
    main()
