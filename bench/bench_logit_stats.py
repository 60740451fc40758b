"""fuq.logit_stats against the naive PyTorch composition and the logsumexp floor.

For every B x V x dtype case, one process times

* ``fuq``       — ``fuq.logit_stats(x, k, tokens)`` (backend "auto": C++ on the CPU, Triton on CUDA;
                  ``--backends auto,cuda`` adds the CUDA C++ kernel on a GPU);
* ``naive``     — the same outputs composed from PyTorch ops (log_softmax, exp, products and
                  sums, max, topk, gather): what one writes without fuq;
* ``logsumexp`` — ``torch.logsumexp(x, -1)`` alone: the floor for any exact op, which must
                  read every logit at least once.

and reports ms, GB/s of logits read (B * V * itemsize), naive / fuq and fuq / logsumexp. A
second table gives the cost of the door at B = 1 with a tiny V: the public
``fuq.logit_stats`` (argument checks, reshapes, the named tuple) against calling
``torch.ops.fuq.logit_stats`` directly.

Usage::

    python bench/bench_logit_stats.py              # B {1, 8, 64} x V {32000, 128256, 262144} x {fp32, bf16}
    python bench/bench_logit_stats.py --quick      # B {1, 8} x V {262144} x fp32, short runs
    python bench/bench_logit_stats.py --B 8 --V 262144 --dtypes float32 --k 50 --repeats 5
    python bench/bench_logit_stats.py --clock cpu      # one thread, CPU time: stable on a shared machine

Writes the tables to stdout and JSON to ``bench/results/bench_logit_stats[_<device>].json``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness import gbps, print_table, read_bandwidth_gbps, time_ms, write_json  # noqa: E402

import fuq  # noqa: E402
from fuq import _library  # noqa: E402

#: what ``fuq bench --quick`` runs this script with: part of the quick suite (about a minute in all on a quiet
#: machine); ``fuq bench logit_stats`` runs it in full.
QUICK_ARGS = ["--quick", "--out", "bench_logit_stats_quick"]  # B {1, 8} x V 262144, fp32

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def naive_logit_stats(x: torch.Tensor, k: int, tokens: torch.Tensor | None, temperature: float = 1.0):
    """The outputs of fuq.logit_stats from stock PyTorch ops (finite logits; several passes)."""
    z = x.float() / temperature
    lse = torch.logsumexp(z, dim=-1)
    logp = torch.log_softmax(z, dim=-1)
    p = logp.exp()
    entropy = -(p * logp).sum(-1)
    varentropy = (p * logp * logp).sum(-1) - entropy * entropy
    max_logprob, argmax = logp.max(dim=-1)
    topk_logprobs, topk_ids = logp.topk(k, dim=-1)
    topk_mass = topk_logprobs.exp().sum(-1)
    token_logprob = None if tokens is None else logp.gather(-1, tokens[:, None])[:, 0]
    return lse, entropy, varentropy, max_logprob, argmax, topk_logprobs, topk_ids, topk_mass, token_logprob


def make_logits(B: int, V: int, dtype: torch.dtype, device: torch.device, seed: int = 0) -> torch.Tensor:
    """LLM-like logits: a normal body with a heavy head of 20 tokens per row."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(B, V, generator=g) * 1.5 - 5.0
    head = torch.randint(0, V, (B, min(V, 20)), generator=g)
    x.scatter_(1, head, 10.0 + 4.0 * torch.rand(B, min(V, 20), generator=g))
    return x.to(dtype).to(device)


def bench_one(x: torch.Tensor, tokens: torch.Tensor, args: argparse.Namespace) -> dict[str, float]:
    """Times of fuq (each backend), naive and logsumexp on one input, in ms."""
    t = dict(device=x.device, min_run_time=args.min_run_time, repeats=args.repeats, clock=args.clock)
    row = {
        f"fuq_{be}_ms": time_ms(lambda be=be: fuq.logit_stats(x, args.k, tokens, backend=be), **t)
        for be in args.backends
    }
    row["naive_ms"] = time_ms(lambda: naive_logit_stats(x, args.k, tokens), **t)
    row["logsumexp_ms"] = time_ms(lambda: torch.logsumexp(x, dim=-1), **t)
    return row


def bench_cases(args: argparse.Namespace, device: torch.device) -> list[dict[str, Any]]:
    out = []
    for dname in args.dtypes:
        for V in args.V:
            for B in args.B:
                x = make_logits(B, V, DTYPES[dname], device)
                tokens = torch.randint(0, V, (B,), device=device)
                row: dict[str, Any] = dict(B=B, V=V, dtype=dname, k=args.k, bytes=x.numel() * x.element_size())
                row.update(bench_one(x, tokens, args))
                out.append(row)
                fuq_ms = row[f"fuq_{args.backends[0]}_ms"]
                print(
                    f"  B={B:<3} V={V:<7} {dname:<8} fuq {fuq_ms:8.3f} ms  naive {row['naive_ms']:8.3f} ms"
                    f"  logsumexp {row['logsumexp_ms']:8.3f} ms",
                    flush=True,
                )
    return out


def bench_door(args: argparse.Namespace, device: torch.device) -> dict[str, float]:
    """Per-call cost at B = 1, V = 128: the public function vs the registered op."""
    x = make_logits(1, 128, torch.float32, device)
    tok = torch.zeros(1, dtype=torch.int64, device=device)
    op = torch.ops.fuq.logit_stats
    t = dict(device=device, min_run_time=args.min_run_time, repeats=max(3, args.repeats), clock=args.clock)
    res = {
        "op_us": time_ms(lambda: op(x, 5, None, 1.0), **t) * 1e3,
        "op_default_us": time_ms(lambda: op.default(x, 5, None, 1.0), **t) * 1e3,
        "public_us": time_ms(lambda: fuq.logit_stats(x, k=5), **t) * 1e3,
        "public_tokens_us": time_ms(lambda: fuq.logit_stats(x, k=5, tokens=tok), **t) * 1e3,
        "logsumexp_us": time_ms(lambda: torch.logsumexp(x, -1), **t) * 1e3,
    }
    res["door_us"] = res["public_us"] - res["op_us"]
    return res


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--B", type=int, nargs="+", default=[1, 8, 64])
    p.add_argument("--V", type=int, nargs="+", default=[32000, 128256, 262144])
    p.add_argument("--dtypes", nargs="+", default=["float32", "bfloat16"], choices=sorted(DTYPES))
    p.add_argument("--k", type=int, default=50)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--backends", default="auto", help="comma-separated fuq backends, e.g. auto,cuda")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (CPU)")
    p.add_argument("--min-run-time", type=float, default=0.3, help="seconds per measurement")
    p.add_argument("--repeats", type=int, default=3, help="CPU: minimum over this many medians")
    p.add_argument("--quick", action="store_true", help="B {1, 8}, V 262144, float32, short runs")
    p.add_argument(
        "--clock",
        choices=["wall", "cpu"],
        default="wall",
        help="wall: median wall time; cpu: median thread CPU time (fair on a loaded machine; sets --threads 1)",
    )
    p.add_argument("--no-door", action="store_true", help="skip the per-call overhead table")
    p.add_argument("--out", default=None, help="JSON name under bench/results/ (default from the device)")
    args = p.parse_args(argv)
    args.backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    if args.quick:
        args.B, args.V, args.dtypes, args.min_run_time, args.repeats = [1, 8], [262144], ["float32"], 0.15, 2
    if args.clock == "cpu":
        if args.device != "cpu":
            p.error("--clock cpu times CPU work only")
        args.threads = 1
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if device.type == "cpu" and not _library.HAS_CPP:
        print(f"warning: fuq._C is not built ({_library.C_ERROR}); 'auto' times the reference", file=sys.stderr)

    bw = read_bandwidth_gbps(device, mib=256 if device.type == "cuda" else 128)
    print(
        f"fuq.logit_stats on {device} ({torch.get_num_threads()} threads, {args.clock} clock), k={args.k}; "
        f"read bandwidth {bw:.1f} GB/s"
    )
    rows = bench_cases(args, device)

    cols = ["case"]
    for be in args.backends:
        name = "fuq" if be == "auto" else f"fuq[{be}]"
        cols += [f"{name} ms", f"{name} GB/s"]
    cols += ["naive ms", "lse ms", "lse GB/s", "naive/fuq", "fuq/lse"]
    table = []
    for r in rows:
        line: list[Any] = [f"B={r['B']} V={r['V']} {r['dtype']}"]
        for be in args.backends:
            line += [r[f"fuq_{be}_ms"], gbps(r["bytes"], r[f"fuq_{be}_ms"])]
        f0 = r[f"fuq_{args.backends[0]}_ms"]
        line += [
            r["naive_ms"],
            r["logsumexp_ms"],
            gbps(r["bytes"], r["logsumexp_ms"]),
            r["naive_ms"] / f0,
            f0 / r["logsumexp_ms"],
        ]
        table.append(line)
    print_table(
        f"fuq.logit_stats, k={args.k}, {device}",
        cols,
        table,
        caption=f"lse = torch.logsumexp alone; GB/s = logits read per second; machine read bandwidth {bw:.1f} GB/s",
    )

    door = None
    if not args.no_door:
        door = bench_door(args, device)
        print_table(
            "per-call cost at B=1, V=128, k=5 (µs)",
            ["call", "µs"],
            [
                ["torch.ops.fuq.logit_stats", door["op_us"]],
                ["torch.ops.fuq.logit_stats.default", door["op_default_us"]],
                ["fuq.logit_stats (public)", door["public_us"]],
                ["fuq.logit_stats + tokens", door["public_tokens_us"]],
                ["torch.logsumexp", door["logsumexp_us"]],
                ["door = public - op", door["door_us"]],
            ],
        )
    name = args.out or ("bench_logit_stats" if device.type == "cpu" else f"bench_logit_stats_{device.type}")
    path = write_json(
        name, dict(args={k: v for k, v in vars(args).items()}, read_bandwidth_gbps=bw, cases=rows, door=door)
    )
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
