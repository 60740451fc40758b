"""fuq.truncate against Hugging Face's warpers and a naive PyTorch composition, per knob.

For every knob (top_k=50, top_p=0.9, min_p=0.05, typical_p=0.9, eta=1e-3, epsilon=3e-4,
top_h=0.4) and every B x V case, one process times

* ``fuq``   — ``fuq.truncate(x, <knob>)`` (backend "auto": the sort-free C++ kernel on the CPU);
* ``hf``    — the Hugging Face warper of the same name on the same float32 scores
              (``TopHLogitsWarper`` sums over its top 100 tokens only, so its kept set is
              not fuq's: its time is shown for scale);
* ``naive`` — the same result composed from stock PyTorch ops the obvious way (softmax,
              sort / cumsum where the rule needs an order, masked_fill).

and reports ms, GB/s of logits read + written (2 * B * V * 4 bytes), hf / fuq and
naive / fuq. The machine's read bandwidth is measured once as the yardstick.

Usage::

    python bench/bench_truncate.py                      # B {1, 8, 64} x V {128256, 262144}, fp32
    python bench/bench_truncate.py --quick              # B 8, V 262144, short runs
    python bench/bench_truncate.py --B 8 --V 262144 --knobs top_p typical_p eta

Writes the table to stdout and JSON to ``bench/results/bench_truncate.json``. On a shared
machine the absolute figures are noisy (CPU time is shared); the ratios, measured in the
same run, are the robust part.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness import gbps, print_table, read_bandwidth_gbps, write_json  # noqa: E402
from harness import time_ms as harness_time_ms  # noqa: E402

import fuq  # noqa: E402
from fuq import _library  # noqa: E402

#: what ``fuq bench --quick`` runs this script with: part of the quick suite (about a minute in all on a quiet
#: machine); ``fuq bench truncate`` runs it in full.
QUICK_ARGS = ["--quick", "--out", "bench_truncate_quick"]  # B 8 x V 262144, each knob

NEG = float("-inf")
KNOBS: dict[str, Any] = {
    "top_k": 50,
    "top_p": 0.9,
    "min_p": 0.05,
    "typical_p": 0.9,
    "eta": 1e-3,
    "epsilon": 3e-4,
    "top_h": 0.4,
}


# ---- naive PyTorch compositions (what one writes without fuq) ------------------------


def naive_top_k(z: torch.Tensor, k: int) -> torch.Tensor:
    kth = torch.topk(z, k, dim=-1).values[..., -1:]
    return z.masked_fill(z < kth, NEG)


def naive_top_p(z: torch.Tensor, p: float) -> torch.Tensor:
    zs, idx = torch.sort(z, dim=-1, descending=True)
    ps = torch.softmax(zs, dim=-1)
    remove = (ps.cumsum(-1) - ps) >= p
    return z.masked_fill(remove.scatter(-1, idx, remove), NEG)


def naive_min_p(z: torch.Tensor, mp: float) -> torch.Tensor:
    p = torch.softmax(z, dim=-1)
    return z.masked_fill(p < mp * p.amax(-1, keepdim=True), NEG)


def naive_typical(z: torch.Tensor, mass: float) -> torch.Tensor:
    logp = torch.log_softmax(z, dim=-1)
    p = logp.exp()
    H = -(p * logp).nansum(-1, keepdim=True)
    key = (-logp - H).abs()
    ks, idx = torch.sort(key, dim=-1)
    cum = p.gather(-1, idx).cumsum(-1)
    last = (cum < mass).sum(-1, keepdim=True).clamp(max=z.shape[-1] - 1)
    remove = ks > ks.gather(-1, last)
    return z.masked_fill(remove.scatter(-1, idx, remove), NEG)


def naive_epsilon(z: torch.Tensor, eps: float) -> torch.Tensor:
    p = torch.softmax(z, dim=-1)
    return z.masked_fill((p < eps) & (z < z.amax(-1, keepdim=True)), NEG)


def naive_eta(z: torch.Tensor, eps: float) -> torch.Tensor:
    logp = torch.log_softmax(z, dim=-1)
    p = logp.exp()
    H = -(p * logp).nansum(-1, keepdim=True)
    eta = torch.clamp(math.sqrt(eps) * torch.exp(-H), max=eps)
    return z.masked_fill((p < eta) & (z < z.amax(-1, keepdim=True)), NEG)


def naive_top_h(z: torch.Tensor, alpha: float) -> torch.Tensor:
    zs, idx = torch.sort(z, dim=-1, descending=True)
    logp = torch.log_softmax(zs, dim=-1)
    terms = -(logp.exp() * logp).nan_to_num()
    cum = terms.cumsum(-1)
    remove = cum > alpha * cum[..., -1:]
    remove[..., 0] = False
    return z.masked_fill(remove.scatter(-1, idx, remove), NEG)


NAIVE = {
    "top_k": naive_top_k,
    "top_p": naive_top_p,
    "min_p": naive_min_p,
    "typical_p": naive_typical,
    "epsilon": naive_epsilon,
    "eta": naive_eta,
    "top_h": naive_top_h,
}


def hf_warper(knob: str, value: Any):
    from transformers.generation import logits_process as L

    return {
        "top_k": lambda: L.TopKLogitsWarper(value),
        "top_p": lambda: L.TopPLogitsWarper(value),
        "min_p": lambda: L.MinPLogitsWarper(value),
        "typical_p": lambda: L.TypicalLogitsWarper(value),
        "epsilon": lambda: L.EpsilonLogitsWarper(value),
        "eta": lambda: L.EtaLogitsWarper(value),
        "top_h": lambda: L.TopHLogitsWarper(value),
    }[knob]()


def make_logits(B: int, V: int, seed: int = 0) -> torch.Tensor:
    """LLM-like rows: a normal bulk and a heavy head of 20 tokens."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(B, V, generator=g) * 1.5 - 5.0
    head = torch.randint(0, V, (B, 20), generator=g)
    x.scatter_(1, head, 10.0 + 4.0 * torch.rand(B, 20, generator=g))
    return x


def cpu_time_ms(fn, min_run_time: float = 0.2, warmup: int = 1, repeats: int = 1) -> float:
    """Median CPU time of ``fn()`` in ms, on this thread (run with --threads 1).

    On a machine shared with other jobs, wall time counts the time slices the scheduler
    hands to the others (every call longer than a slice is inflated); thread CPU time does
    not, so it compares a 1 ms call with a 100 ms one fairly.
    """
    import time

    for _ in range(warmup):
        fn()
    times: list[float] = []
    total = 0.0
    while total < min_run_time or len(times) < 5:
        t0 = time.thread_time()
        fn()
        dt = time.thread_time() - t0
        times.append(dt)
        total += dt
    times.sort()
    return times[len(times) // 2] * 1e3


def bench_case(knob: str, B: int, V: int, args: argparse.Namespace, have_hf: bool) -> dict[str, Any]:
    value = KNOBS[knob]
    x = make_logits(B, V)
    kw = {knob: value}
    t = dict(min_run_time=args.min_run_time, warmup=1, repeats=args.repeats)
    time_ms = harness_time_ms if args.clock == "wall" else cpu_time_ms
    out: dict[str, Any] = {"knob": knob, "value": value, "B": B, "V": V}
    out["fuq_ms"] = time_ms(lambda: fuq.truncate(x, **kw), **t)
    out["naive_ms"] = time_ms(lambda: NAIVE[knob](x, value), **t)
    if have_hf:
        w = hf_warper(knob, value)
        out["hf_ms"] = time_ms(lambda: w(None, x), **t)
    else:
        out["hf_ms"] = float("nan")
    nbytes = 2 * B * V * 4
    out["fuq_gbps"] = gbps(nbytes, out["fuq_ms"])
    out["hf_over_fuq"] = out["hf_ms"] / out["fuq_ms"]
    out["naive_over_fuq"] = out["naive_ms"] / out["fuq_ms"]
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--B", type=int, nargs="+", default=[1, 8, 64])
    p.add_argument("--V", type=int, nargs="+", default=[128256, 262144])
    p.add_argument("--knobs", nargs="+", default=list(KNOBS), choices=list(KNOBS))
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    p.add_argument("--min-run-time", type=float, default=0.2, help="seconds per measurement")
    p.add_argument("--repeats", type=int, default=2, help="minimum over this many medians")
    p.add_argument(
        "--clock",
        choices=["wall", "cpu"],
        default="wall",
        help="wall: harness.time_ms; cpu: median thread CPU time (fair on a loaded machine; sets --threads 1)",
    )
    p.add_argument("--quick", action="store_true", help="B 8, V 262144, short runs")
    p.add_argument("--out", default="bench_truncate", help="JSON name under bench/results/")
    args = p.parse_args(argv)
    if args.quick:
        args.B, args.V, args.min_run_time, args.repeats = [8], [262144], 0.1, 1
    if args.clock == "cpu":
        args.threads = 1
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        import transformers.generation.logits_process  # noqa: F401

        have_hf = True
    except ImportError:
        have_hf = False
        print("transformers is not installed: the hf column is empty (pip install 'fuq[hf]')")
    if not _library.HAS_CPP_TRUNCATE:
        print(f"warning: fuq._C has no truncate kernel ({_library.C_ERROR}); timing the reference")

    bw = read_bandwidth_gbps("cpu")
    rows, results = [], []
    for V in args.V:
        for B in args.B:
            for knob in args.knobs:
                r = bench_case(knob, B, V, args, have_hf)
                results.append(r)
                rows.append(
                    [
                        f"{knob}={r['value']}",
                        B,
                        V,
                        r["fuq_ms"],
                        r["hf_ms"],
                        r["naive_ms"],
                        r["fuq_gbps"],
                        r["hf_over_fuq"],
                        r["naive_over_fuq"],
                    ]
                )
                print(
                    f"  {knob:10s} B={B:3d} V={V:6d}  fuq {r['fuq_ms']:8.3f} ms  hf {r['hf_ms']:9.3f} ms  "
                    f"x{r['hf_over_fuq']:.1f}",
                    flush=True,
                )
    print_table(
        "fuq.truncate vs Hugging Face warpers vs naive PyTorch (float32, CPU)",
        ["knob", "B", "V", "fuq ms", "hf ms", "naive ms", "fuq GB/s", "hf/fuq", "naive/fuq"],
        rows,
        caption=f"read bandwidth {bw:.1f} GB/s; GB/s counts 2*B*V*4 bytes (read + write); "
        f"threads {torch.get_num_threads()}, {args.clock} clock; top_h: HF sums over its top 100 tokens only",
    )
    payload = {"read_bandwidth_gbps": bw, "clock": args.clock, "cases": results, "argv": sys.argv[1:]}
    path = write_json(args.out, payload)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
