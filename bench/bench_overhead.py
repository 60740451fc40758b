"""Per-call overhead of ``fuq.sample`` / ``fuq.truncate`` at decode shapes (issue 16.4).

At B = 1, V = 1024 the kernels' work is tiny, so the time of one call is validation, knob
packing and dispatch in Python. Compared, in one run, with one ``torch.softmax`` of the row
(the yardstick of the issue: within 10x). Thread CPU time (``time.thread_time_ns``), one torch
thread, ``--repeats`` rounds of one block of ``--calls`` calls per case, round robin; the ratio
is the median of the per-round ratios: robust on a loaded machine.

Usage::

    python bench/bench_overhead.py                           # writes bench/results/overhead_B1.json
    python bench/bench_overhead.py --label before --out overhead_B1_before
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import time
from pathlib import Path

import torch

import fuq

CLOCK = "thread CPU time, 1 torch thread, cases round robin; x_softmax = median of per-round ratios"
QUICK_ARGS = ["--calls", "200", "--repeats", "5", "--out", "bench_overhead_quick"]


def per_call_us(cases: dict, calls: int, repeats: int) -> tuple[dict, dict]:
    """Median us per call of each case, and the median over rounds of its ratio to the first case.

    The cases run round robin (one block of ``calls`` calls each per round), so a change of the
    machine's load hits every case of a round alike and the per-round ratios stay comparable."""
    for fn in cases.values():  # warm up
        for _ in range(max(calls // 10, 10)):
            fn()
    blocks: dict[str, list[float]] = {n: [] for n in cases}
    for _ in range(repeats):
        for name, fn in cases.items():
            t0 = time.thread_time_ns()
            for _ in range(calls):
                fn()
            blocks[name].append((time.thread_time_ns() - t0) / calls / 1e3)
    base = blocks[next(iter(cases))]
    us = {n: statistics.median(b) for n, b in blocks.items()}
    ratio = {n: statistics.median(v / w for v, w in zip(b, base, strict=True)) for n, b in blocks.items()}
    return us, ratio


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--B", type=int, default=1)
    ap.add_argument("--V", type=int, default=1024)
    ap.add_argument("--calls", type=int, default=2000)
    ap.add_argument("--repeats", type=int, default=15)
    ap.add_argument("--label", default="")
    ap.add_argument("--out", default="overhead_B1")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    x = torch.randn(args.B, args.V, generator=torch.Generator().manual_seed(0))
    g = torch.Generator().manual_seed(0)
    per_row_p = torch.full((args.B,), 0.9, dtype=torch.float64)
    cases = {
        "softmax": lambda: torch.softmax(x, -1),
        "sample(top_p=0.9)": lambda: fuq.sample(x, top_p=0.9, generator=g),
        "sample(temperature=0.7, top_k=50, top_p=0.9)": lambda: fuq.sample(
            x, temperature=0.7, top_k=50, top_p=0.9, generator=g
        ),
        "truncate(top_p=0.9)": lambda: fuq.truncate(x, top_p=0.9),
        "logit_stats(k=0)": lambda: fuq.logit_stats(x),
    }
    try:  # per-row knob tensors (after the knob table landed)
        fuq.sample(x, top_p=per_row_p, generator=g)
        cases["sample(top_p=[B] tensor)"] = lambda: fuq.sample(x, top_p=per_row_p, generator=g)
    except TypeError:
        pass
    res, ratio = per_call_us(cases, args.calls, args.repeats)
    rows = [{"case": n, "us_per_call": round(v, 2), "x_softmax": round(ratio[n], 2)} for n, v in res.items()]
    for r in rows:
        print(f"{r['case']:<48} {r['us_per_call']:9.2f} us  {r['x_softmax']:7.2f}x softmax")
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                                cwd=Path(__file__).parent).stdout.strip()
    except OSError:
        commit = ""
    out = {
        "label": args.label, "commit": commit, "B": args.B, "V": args.V, "clock": CLOCK,
        "calls": args.calls, "repeats": args.repeats, "machine": platform.processor() or platform.machine(),
        "cpu_build": fuq._library.CPU_BUILD, "loadavg": os.getloadavg(), "rows": rows,
    }
    if args.out:
        path = Path(__file__).parent / "results" / f"{args.out}.json"
        path.write_text(json.dumps(out, indent=1) + "\n")
        print("wrote", path)
    return out


if __name__ == "__main__":
    main()
