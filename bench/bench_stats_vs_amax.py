"""fuq.logit_stats against one bare read of the logits (``torch.amax``), per CPU build (issue 16.1).

The target: ``logit_stats`` k = 0 within 2x of ``amax`` over the same rows, k = 50 within 2.5x,
at B = 8 and 64, V = 262144 fp32, on the AVX2 build (``fuq._C``) and the AVX-512 build
(``fuq._C_v4``). Only one build can be loaded per process, so the parent runs one child per
build (``FUQ_MARCH=native`` makes fuq._library load ``fuq._C``). Each child uses one torch
thread and thread CPU time (stable on a shared machine); ``--rounds`` rounds each time every
function for ``--min-run-time`` seconds in turn (interleaved, so load drifts hit all alike) and
the figure is the median over rounds of the per-round medians.

Usage::

    python bench/bench_stats_vs_amax.py                       # both builds, B {8, 64}
    python bench/bench_stats_vs_amax.py --out logit_stats_vs_amax_cpuclock

Writes ``bench/results/<out>.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness import cpu_time_ms, write_json  # noqa: E402

BUILDS = {"v3": {"FUQ_MARCH": "native"}, "v4": {}}  # v3: fuq._C (AVX2), v4: fuq._C_v4 (AVX-512)


def make_logits(B: int, V: int, seed: int = 0) -> torch.Tensor:
    """LLM-like logits (as bench_logit_stats.make_logits): a normal body with a head of 20 tokens."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(B, V, generator=g) * 1.5 - 5.0
    head = torch.randint(0, V, (B, min(V, 20)), generator=g)
    x.scatter_(1, head, 10.0 + 4.0 * torch.rand(B, min(V, 20), generator=g))
    return x


def child(args: argparse.Namespace) -> dict:
    import fuq
    from fuq import _library

    torch.set_num_threads(1)
    out = {"build": _library.CPU_BUILD, "cases": []}
    for B in args.B:
        x = make_logits(B, args.V)
        fns = {
            "amax": lambda x=x: torch.amax(x, dim=-1),
            "k0": lambda x=x: fuq.logit_stats(x, 0, backend="cpp"),
            "k50": lambda x=x: fuq.logit_stats(x, 50, backend="cpp"),
        }
        for f in fns.values():
            for _ in range(3):
                f()
        per = {name: [] for name in fns}
        for _ in range(args.rounds):
            for name, f in fns.items():
                per[name].append(cpu_time_ms(f, min_run_time=args.min_run_time))
        med = {name: statistics.median(v) for name, v in per.items()}
        out["cases"].append(
            dict(
                B=B,
                V=args.V,
                amax_ms=med["amax"],
                k0_ms=med["k0"],
                k50_ms=med["k50"],
                k0_over_amax=med["k0"] / med["amax"],
                k50_over_amax=med["k50"] / med["amax"],
                amax_gbps=B * args.V * 4 / med["amax"] / 1e6,
                rounds_ms={n: v for n, v in per.items()},
            )
        )
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--B", type=int, nargs="+", default=[8, 64])
    ap.add_argument("--V", type=int, default=262144)
    ap.add_argument("--builds", nargs="+", default=list(BUILDS), choices=list(BUILDS))
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--min-run-time", type=float, default=0.3)
    ap.add_argument("--out", default="logit_stats_vs_amax_cpuclock")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(args)))
        return
    load_start = os.getloadavg()
    results = []
    for b in args.builds:
        env = {**os.environ, **BUILDS[b]}
        cmd = [
            sys.executable,
            __file__,
            "--child",
            "--V",
            str(args.V),
            "--rounds",
            str(args.rounds),
            "--min-run-time",
            str(args.min_run_time),
            "--B",
            *map(str, args.B),
        ]
        res = json.loads(subprocess.run(cmd, env=env, check=True, capture_output=True, text=True).stdout)
        for c in res["cases"]:
            print(
                f"  {res['build']:<6} B={c['B']:<3} amax {c['amax_ms']:7.3f} ms ({c['amax_gbps']:5.1f} GB/s)"
                f"  k=0 {c['k0_ms']:7.3f} ms ({c['k0_over_amax']:.2f}x)  k=50 {c['k50_ms']:7.3f} ms"
                f" ({c['k50_over_amax']:.2f}x)",
                flush=True,
            )
        results.append(res)
    payload = {
        "args": {k: v for k, v in vars(args).items() if k != "child"},
        "load_start": load_start,
        "load_end": os.getloadavg(),
        "clock": "thread CPU time, 1 torch thread",
        "builds": results,
    }
    print(write_json(args.out, payload))


if __name__ == "__main__":
    main()
