"""One decoding step of sampling at T != 1 with the model's (T = 1) stats: one fuq call or two.

``fuq.generate`` records the stats of the model's own distribution (T = 1) while it samples
at the strategy's temperature. Per step, side by side in one run:

* ``one``   — ``fuq.sample(x, temperature=T, top_p=p, k=5, base_stats=True)``: the C++ kernel
              takes the T = 1 stats and the cut at T from the same first pass;
* ``two``   — ``fuq.sample(x, temperature=T, top_p=p, k=5)`` then
              ``fuq.logit_stats(x, k=5, tokens=ids)`` (what generate did before);
* ``naive`` — stock PyTorch: softmax at T, sort + cumsum top-p, multinomial, and
              log_softmax / entropy / topk at T = 1.

Reports ms per step, the saving of ``one`` over ``two`` and GB/s of the logits read once
(B * V * element size). Use ``--clock cpu`` (one thread, CPU time) on a loaded machine.

Usage::

    python bench/bench_sample.py --clock cpu                 # B {1, 8}, V 262144, fp32 + bf16
    python bench/bench_sample.py --B 1 --V 262144 --dtypes float32
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_truncate import cpu_time_ms, make_logits  # noqa: E402
from harness import gbps, print_table, read_bandwidth_gbps, write_json  # noqa: E402
from harness import time_ms as harness_time_ms  # noqa: E402

import fuq  # noqa: E402

#: what ``fuq bench --quick`` runs this script with: part of the quick suite (about a minute in all on a quiet
#: machine); ``fuq bench sample`` runs it in full.
QUICK_ARGS = ["--B", "1", "--min-run-time", "0.1", "--repeats", "1", "--out", "bench_sample_quick"]


def naive_step(x: torch.Tensor, T: float, p: float, k: int, g: torch.Generator) -> tuple:
    z = x.float()
    probs = torch.softmax(z / T, -1)
    sp, si = torch.sort(probs, descending=True)
    cut = (sp.cumsum(-1) - sp) >= p
    sp = sp.masked_fill(cut, 0.0)
    ids = si.gather(-1, torch.multinomial(sp, 1, generator=g))[:, 0]
    logp = torch.log_softmax(z, -1)
    ent = -(logp.exp() * logp).nan_to_num().sum(-1)
    top = logp.topk(k, -1)
    return ids, ent, top, logp.gather(-1, ids[:, None])


def bench_case(B: int, V: int, dtype: torch.dtype, args: argparse.Namespace) -> dict[str, Any]:
    x = make_logits(B, V).to(dtype)
    T, p, k = args.temperature, args.top_p, 5
    g = torch.Generator().manual_seed(0)
    t = dict(min_run_time=args.min_run_time, warmup=1, repeats=args.repeats)
    time_ms = harness_time_ms if args.clock == "wall" else cpu_time_ms

    def two():
        ids, _ = fuq.sample(x, temperature=T, top_p=p, k=k, generator=g)
        return fuq.logit_stats(x, k=k, tokens=ids)

    out: dict[str, Any] = {"B": B, "V": V, "dtype": str(dtype).replace("torch.", ""), "T": T, "top_p": p}
    out["one_ms"] = time_ms(lambda: fuq.sample(x, temperature=T, top_p=p, k=k, generator=g, base_stats=True), **t)
    out["two_ms"] = time_ms(two, **t)
    out["naive_ms"] = time_ms(lambda: naive_step(x, T, p, k, g), **t)
    out["saving_ms"] = out["two_ms"] - out["one_ms"]
    out["two_over_one"] = out["two_ms"] / out["one_ms"]
    out["naive_over_one"] = out["naive_ms"] / out["one_ms"]
    out["one_gbps"] = gbps(B * V * x.element_size(), out["one_ms"])
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--B", type=int, nargs="+", default=[1, 8])
    ap.add_argument("--V", type=int, nargs="+", default=[262144])
    ap.add_argument("--dtypes", nargs="+", default=["float32", "bfloat16"])
    ap.add_argument("--temperature", type=float, default=0.7)
    ap.add_argument("--top-p", type=float, default=0.9)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--min-run-time", type=float, default=0.3)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--clock", choices=["wall", "cpu"], default="wall",
                    help="cpu: median thread CPU time, one thread (fair on a loaded machine)")
    ap.add_argument("--out", default="bench_sample")
    args = ap.parse_args(argv)
    if args.clock == "cpu":
        args.threads = 1
    if args.threads:
        torch.set_num_threads(args.threads)
    bw = read_bandwidth_gbps("cpu")
    rows, results = [], []
    for V in args.V:
        for B in args.B:
            for name in args.dtypes:
                r = bench_case(B, V, getattr(torch, name), args)
                results.append(r)
                rows.append([r["dtype"], B, V, r["one_ms"], r["two_ms"], r["naive_ms"], r["saving_ms"],
                             r["two_over_one"], r["naive_over_one"], r["one_gbps"]])
                print(f"  {name:8s} B={B} V={V}: one {r['one_ms']:.3f} ms, two {r['two_ms']:.3f} ms", flush=True)
    print_table(
        f"fuq.sample at T = {args.temperature}, top_p = {args.top_p}, with the T = 1 stats (CPU)",
        ["dtype", "B", "V", "one ms", "two ms", "naive ms", "saved ms", "two/one", "naive/one", "one GB/s"],
        rows,
        caption=f"read bandwidth {bw:.1f} GB/s; GB/s counts B*V*elem bytes read once; "
        f"threads {torch.get_num_threads()}, {args.clock} clock",
    )
    path = write_json(args.out, {"read_bandwidth_gbps": bw, "clock": args.clock, "cases": results,
                                 "argv": sys.argv[1:]})
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
