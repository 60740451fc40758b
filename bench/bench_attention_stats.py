"""fuq.attention_stats against the naive PyTorch composition and against SDPA (a speed yardstick).

At the decode shapes of the two packaged models (B = 1, causal, the queries are the last Lq
positions), for T keys in the cache and Lq query rows, one process times

* ``fuq``   — ``fuq.attention_stats(q, k, scale=...)``: per-key mass [B, Hkv, T], per-row
              entropy and lse (backend "auto": C++ on the CPU, Triton on CUDA; ``--backends``
              adds others);
* ``naive`` — the same outputs from stock PyTorch: einsum of the scores, causal mask,
              log_softmax, the entropy sum, the mass summed over rows and the GQA group;
* ``sdpa``  — ``torch.nn.functional.scaled_dot_product_attention(q, k, v=k)`` with GQA: what one
              attention call costs. It returns no mass or entropy: a yardstick, not a rival.

and reports ms, the bytes of K (B * Hkv * T * d * itemsize), GB/s of K read once, and the
ratios naive / fuq and fuq / sdpa. fuq reads K once at decode (the scores are kept: G * 4
bytes per key < d * itemsize) and twice when many query rows make the scores larger than
the keys (Lq = 64 here): the GB/s column counts K once either way.

A second table gives the cost of the door (argument checks, the named tuple) at a tiny step.

Models: Gemma 3 270M (Hq = 4, Hkv = 1, d = 256), SmolLM2-135M (Hq = 9, Hkv = 3, d = 64); only
their attention shapes are used, no weights are loaded.

Usage::

    python bench/bench_attention_stats.py                       # T {1k, 4k, 16k} x Lq {1, 64}, bf16
    python bench/bench_attention_stats.py --clock cpu --threads 1   # CPU time: stable on a loaded machine
    python bench/bench_attention_stats.py --T 1024 --Lq 1 --min-run-time 0.1   # quick

Writes the table to stdout and JSON to ``bench/results/bench_attention_stats[_<device>].json``.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness import gbps, print_table, time_ms, write_json  # noqa: E402

import fuq  # noqa: E402

MODELS = {"gemma3": dict(Hq=4, Hkv=1, d=256), "smollm2": dict(Hq=9, Hkv=3, d=64)}
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def naive_attention_stats(q: torch.Tensor, k: torch.Tensor, scale: float):
    """mass, entropy, lse of causal attention (queries = the last Lq positions) from stock PyTorch ops."""
    B, Hq, Lq, d = q.shape
    Hkv, T = k.shape[1], k.shape[2]
    g = Hq // Hkv
    s = torch.einsum("bhld,bhtd->bhlt", q.float(), k.float().repeat_interleave(g, dim=1)) * scale
    if Lq > 1:
        pos = torch.arange(T - Lq, T, device=q.device)[:, None]
        s = s.masked_fill(torch.arange(T, device=q.device)[None, :] > pos, float("-inf"))
    lse = torch.logsumexp(s, dim=-1)
    logp = torch.log_softmax(s, dim=-1)
    p = logp.exp()
    entropy = -(p * logp.nan_to_num(neginf=0.0)).sum(-1)
    mass = p.sum(dim=2).reshape(B, Hkv, g, T).sum(dim=2)
    return mass, entropy, lse


def sdpa_fn(q: torch.Tensor, k: torch.Tensor, scale: float):
    Lq, T = q.shape[2], k.shape[2]
    mask = None
    if Lq > 1:  # bottom-right causal: query i sits at position T - Lq + i
        mask = torch.arange(T, device=q.device)[None, :] <= torch.arange(T - Lq, T, device=q.device)[:, None]
    return lambda: F.scaled_dot_product_attention(q, k, k, attn_mask=mask, scale=scale, enable_gqa=True)


def bench_case(model: str, T: int, Lq: int, dtype: torch.dtype, args, device) -> dict[str, Any]:
    shape = MODELS[model]
    Hq, Hkv, d = shape["Hq"], shape["Hkv"], shape["d"]
    g = torch.Generator().manual_seed(T + Lq)
    q = torch.randn(1, Hq, Lq, d, generator=g).to(dtype).to(device)
    k = torch.randn(1, Hkv, T, d, generator=g).to(dtype).to(device)
    scale = 1.0 / math.sqrt(d)
    t = dict(device=device, min_run_time=args.min_run_time, repeats=args.repeats, clock=args.clock)
    row: dict[str, Any] = dict(model=model, T=T, Lq=Lq, dtype=str(dtype).removeprefix("torch."))
    # the outputs agree before anything is timed
    ref = naive_attention_stats(q, k, scale)
    for backend in args.backends.split(","):
        got = fuq.attention_stats(q, k, scale=scale, backend=backend)
        torch.testing.assert_close(got.mass, ref[0], atol=1e-3, rtol=1e-3)
        row[f"fuq_{backend}_ms"] = time_ms(lambda b=backend: fuq.attention_stats(q, k, scale=scale, backend=b), **t)
    row["naive_ms"] = time_ms(lambda: naive_attention_stats(q, k, scale), **t)
    row["sdpa_ms"] = time_ms(sdpa_fn(q, k, scale), **t)
    row["k_bytes"] = k.numel() * k.element_size()
    first = f"fuq_{args.backends.split(',')[0]}_ms"
    row["fuq_gbps"] = gbps(row["k_bytes"], row[first])
    row["naive_over_fuq"] = row["naive_ms"] / row[first]
    row["fuq_over_sdpa"] = row[first] / row["sdpa_ms"]
    return row


def bench_door(args, device) -> dict[str, float]:
    """The cost of the public door at a tiny decode step: fuq.attention_stats vs the bare torch op."""
    q = torch.randn(1, 4, 1, 64, device=device)
    k = torch.randn(1, 1, 16, 64, device=device)
    t = dict(device=device, min_run_time=args.min_run_time, repeats=args.repeats, clock=args.clock)
    public = time_ms(lambda: fuq.attention_stats(q, k), **t)
    op = time_ms(lambda: torch.ops.fuq.attention_stats(q, k, 0.125, None, True, 0), **t)
    return dict(public_us=public * 1e3, op_us=op * 1e3, door_us=(public - op) * 1e3)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    p.add_argument("--T", type=int, nargs="+", default=[1024, 4096, 16384])
    p.add_argument("--Lq", type=int, nargs="+", default=[1, 64])
    p.add_argument("--dtype", default="bfloat16", choices=sorted(DTYPES))
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--backends", default="auto", help="comma-separated fuq backends, e.g. auto,cuda")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (CPU)")
    p.add_argument("--min-run-time", type=float, default=0.3, help="seconds per measurement")
    p.add_argument("--repeats", type=int, default=1, help="CPU: minimum over this many medians")
    p.add_argument("--clock", default="wall", choices=["wall", "cpu"],
                   help="cpu: thread CPU time (one thread; stable on a loaded machine)")  # fmt: skip
    p.add_argument("--out", default=None, help="JSON name under bench/results/ (default from the device)")
    args = p.parse_args()
    device = torch.device(args.device)
    if args.clock == "cpu":
        if device.type != "cpu":
            p.error("--clock cpu times CPU work only")
        args.threads = 1
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    rows = [
        bench_case(m, T, Lq, DTYPES[args.dtype], args, device)
        for m in args.models
        for Lq in args.Lq
        for T in args.T
    ]
    backends = args.backends.split(",")
    cols = ["model", "T", "Lq"] + [f"fuq {b} ms" for b in backends] + [
        "naive ms", "sdpa ms", "K MB", "fuq GB/s", "naive/fuq", "fuq/sdpa"]  # fmt: skip
    table = [
        [r["model"], r["T"], r["Lq"], *(r[f"fuq_{b}_ms"] for b in backends), r["naive_ms"], r["sdpa_ms"],
         r["k_bytes"] / 1e6, r["fuq_gbps"], r["naive_over_fuq"], r["fuq_over_sdpa"]]  # fmt: skip
        for r in rows
    ]
    title = (f"fuq.attention_stats on {device} ({torch.get_num_threads()} threads, {args.clock} clock), "
             f"{args.dtype}, B = 1, causal")  # fmt: skip
    print_table(title, cols, table, caption="GB/s: bytes of K (read once) / fuq's time; sdpa gives no mass")
    door = bench_door(args, device)
    print_table("the door at B = 1, Hq = 4, T = 16, d = 64", ["public µs", "torch.ops µs", "door µs"],
                [[door["public_us"], door["op_us"], door["door_us"]]])  # fmt: skip
    name = args.out or ("bench_attention_stats" + ("" if device.type == "cpu" else f"_{device.type}"))
    path = write_json(name, dict(args=vars(args), rows=rows, door=door))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
