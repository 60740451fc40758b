"""Vocabulary-parallel statistics and sampling: all-gathering fuq states vs all-gathering the logits.

Two gloo processes on 127.0.0.1 (one thread each) hold half of a ``[B, V]`` float32 logits row
each. Side by side, per B (V = 262144 by default), rank 0 reports:

* ``gather``        — ``dist.all_gather`` of the logit shards alone (what a serving engine does
                      before sampling on one rank);
* ``gather+stats``  — that, ``torch.cat`` and ``fuq.logit_stats`` on the whole row;
* ``fuq``           — ``fuq.distributed.logit_stats`` (local pass, header + state all-gathers,
                      merge), ``fuq nocheck`` the same with ``check=False`` (one all-gather);
* ``state gather``  — the state all-gather alone (the collective ``fuq nocheck`` makes);
* ``gather+sample`` vs ``fuq sample`` — the same for ``top_p = 0.9`` sampling
  (``fuq.sample`` on the gathered row vs ``fuq.distributed.sample``), and how many rows of a
  ``fuq sample`` call fell back to gathering their logits (the cut below the candidates);

with the bytes each rank sends in each collective, and rank 0's CPU time per call of the two stats
routes. Loopback gloo is not a network: the ratio of bytes is the portable figure, the times are
those of this machine (a shared one: see the load average in the JSON; on an overloaded machine
every collective waits for the peer process to get a core, which penalises the route that makes
more collectives and does more Python between them).

Usage::

    python bench/bench_distributed.py                       # B {1, 8, 64}, V 262144, k 5, LLM-like logits
    python bench/bench_distributed.py --logits flat --out bench_distributed_flat   # top-p falls back
    python bench/bench_distributed.py --fallback-model gemma3   # how often real steps fall back (no timing)
    python bench/bench_distributed.py --B 8 --iters 10 --V 131072

Writes a table to stdout and ``bench/results/bench_distributed.json``.
"""

from __future__ import annotations

import argparse
import socket
import sys
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness import print_table, time_fixed_ms, write_json  # noqa: E402

import fuq  # noqa: E402
import fuq.distributed as fd  # noqa: E402
from fuq.distributed import _pack  # noqa: E402

WORLD = 2


def _logits(B: int, V: int, kind: str, g: torch.Generator) -> torch.Tensor:
    """``llm``: a heavy head of 20 tokens over a low tail (top-p 0.9 falls among the head, as for a
    language model's step); ``flat``: N(0, 3^2) everywhere (top-p 0.9 needs ~10^5 tokens)."""
    if kind == "flat":
        return torch.randn(B, V, generator=g) * 3.0
    x = torch.randn(B, V, generator=g) * 1.5 - 5.0
    head = torch.randint(0, V, (B, 20), generator=g)
    return x.scatter_(1, head, 10.0 + 4.0 * torch.rand(B, 20, generator=g))


def _fallback_rows(fn) -> int:
    """Rows of one ``fuq.distributed.sample`` call drawn from gathered logits (the cut fell below the candidates)."""
    real, rows = fd._fallback, []

    def counting(*a, **kw):
        rows.append(int(a[6].sum()))
        return real(*a, **kw)

    fd._fallback = counting
    try:
        fn()
    finally:
        fd._fallback = real
    return sum(rows)


def _case(rank: int, B: int, args: argparse.Namespace) -> dict[str, Any]:
    """Time one batch size on this rank (every rank makes the same calls, in the same order)."""
    Vs = args.V // WORLD
    lo = rank * Vs
    g = torch.Generator().manual_seed(B)
    x = _logits(B, args.V, args.logits, g)
    tokens = torch.randint(0, args.V, (B,), generator=g)
    shard = x[:, lo : lo + Vs].contiguous()
    parts = [torch.empty_like(shard) for _ in range(WORLD)]
    gen = torch.Generator().manual_seed(0)
    state = fuq.logit_stats_partial(shard, vocab_offset=lo, k=args.k, tokens=tokens)
    buf = _pack(state, [], [])
    bufs = [torch.empty_like(buf) for _ in range(WORLD)]

    def gather():
        dist.all_gather(parts, shard)

    def gather_stats():
        gather()
        return fuq.logit_stats(torch.cat(parts, dim=-1), k=args.k, tokens=tokens)

    def gather_sample():
        gather()
        return fuq.sample(torch.cat(parts, dim=-1), top_p=0.9, generator=gen, k=args.k)

    def fuq_stats(check: bool = True):
        return fd.logit_stats(shard, vocab_offset=lo, k=args.k, tokens=tokens, check=check)

    def fuq_sample():
        return fd.sample(shard, vocab_offset=lo, top_p=0.9, generator=gen, k=args.k)

    it = args.iters
    return {
        "B": B,
        "V": args.V,
        "k": args.k,
        "gather_ms": time_fixed_ms(gather, it),
        "gather_stats_ms": time_fixed_ms(gather_stats, it),
        "gather_stats_cpu_ms": time_fixed_ms(gather_stats, it, clock="cpu"),
        "fuq_ms": time_fixed_ms(fuq_stats, it),
        "fuq_cpu_ms": time_fixed_ms(fuq_stats, it, clock="cpu"),
        "fuq_nocheck_ms": time_fixed_ms(lambda: fuq_stats(False), it),
        "state_gather_ms": time_fixed_ms(lambda: dist.all_gather(bufs, buf), it),
        "gather_sample_ms": time_fixed_ms(gather_sample, it),
        "fuq_sample_ms": time_fixed_ms(fuq_sample, it),
        "sample_rows_fallback": _fallback_rows(fuq_sample),
        "logit_bytes_per_rank": shard.numel() * shard.element_size(),
        "state_bytes_per_rank": buf.numel() * buf.element_size(),
        "header_bytes_per_rank": 4 * 8,
    }


def _worker(rank: int, port: int, args: argparse.Namespace) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD)
    try:
        rows = [_case(rank, B, args) for B in args.B]
        if rank == 0:
            _report(rows, args)
    finally:
        dist.destroy_process_group()


def _report(rows: list[dict[str, Any]], args: argparse.Namespace) -> None:
    table = []
    for r in rows:
        table.append([
            r["B"],
            r["gather_ms"],
            r["gather_stats_ms"],
            r["fuq_ms"],
            r["fuq_nocheck_ms"],
            r["state_gather_ms"],
            r["gather_stats_ms"] / r["fuq_ms"],
            r["gather_stats_cpu_ms"],
            r["fuq_cpu_ms"],
            r["gather_sample_ms"],
            r["fuq_sample_ms"],
            r["gather_sample_ms"] / r["fuq_sample_ms"],
            r["sample_rows_fallback"],
            f"{r['logit_bytes_per_rank'] / 2**20:.3g} MiB",
            f"{r['state_bytes_per_rank'] / 2**10:.3g} KiB",
            r["logit_bytes_per_rank"] / r["state_bytes_per_rank"],
        ])
    print_table(
        f"vocabulary-parallel stats and sampling, {WORLD} gloo ranks on loopback, V = {args.V}, k = {args.k}, "
        f"{args.logits} logits (ms)",
        ["B", "gather", "gather+stats", "fuq", "fuq nocheck", "state gather", "stats x",
         "gather+stats cpu", "fuq cpu", "gather+sample",
         "fuq sample", "sample x", "fell back", "logits/rank", "state/rank", "bytes x"],
        table,
        caption="x = gathered-logits route / fuq route (higher is better); wall clock on a shared, loaded CPU machine "
        "(a collective waits for the peer to get a core); cpu = rank 0's CPU time per call",
    )
    path = write_json(args.out, {"args": {**vars(args)}, "world": WORLD, "backend": "gloo", "rows": rows})
    print(f"wrote {path}")


# ---------------------------------------------------------------------------------------------
# how often does a real model's step fall back? (no processes: the shards' states are built here)

_TEXTS = [
    "The history of the printing press begins in the fifteenth century, when Johannes Gutenberg combined "
    "movable metal type, oil-based ink and a wooden press adapted from wine making. Within fifty years, "
    "presses were running in more than two hundred European cities, and the price of books fell sharply.",
    "def merge_sorted(a, b):\n    out = []\n    i = j = 0\n    while i < len(a) and j < len(b):\n"
    "        if a[i] <= b[j]:\n            out.append(a[i]); i += 1\n        else:\n"
    "            out.append(b[j]); j += 1\n    return out + a[i:] + b[j:]\n",
    "Once upon a time, in a village at the edge of a great forest, there lived a girl who could talk to "
    "the wind. Every evening she climbed the hill behind her house and asked it where it had been.",
]

_KNOB_SETS = [
    dict(temperature=1.0, top_p=0.9),
    dict(temperature=1.0, top_p=0.95),
    dict(temperature=0.7, top_p=0.9),
    dict(temperature=1.0, top_k=50, top_p=0.95),
    dict(temperature=1.0, min_p=0.05),
    dict(temperature=1.5, min_p=0.1),
]


def fallback_rates(args: argparse.Namespace) -> None:
    """Fraction of teacher-forced steps of a real model whose cut falls below the candidates (2 shards)."""
    from fuq.distributed import _draw_candidates, _listed

    model, tok = fuq.models.load(args.fallback_model)
    with torch.no_grad():
        logits = torch.cat([model(**tok(t, return_tensors="pt")).logits[0] for t in _TEXTS])  # [T, V]
    T, V = logits.shape
    half = V // 2
    table, rows = [], []
    for knobs in _KNOB_SETS:
        t = knobs["temperature"]
        line = {"knobs": knobs, "steps": T}
        u0 = torch.rand(T, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
        for cand in args.candidates:
            K = _listed(cand, knobs.get("top_k", 0), 0)
            for name, k_listed in ((f"fallback_{cand}", K), (f"gathered_{cand}", 16 * K)):  # 2nd: after "widen"
                states = [fuq.logit_stats_partial(logits[:, a:b], vocab_offset=a, k=k_listed, temperature=t)
                          for a, b in ((0, half), (half, V))]
                _, _, todo = _draw_candidates(states, u0, knobs.get("top_k", 0), knobs.get("top_p", 1.0),
                                              knobs.get("min_p", 0.0))
                line[name] = float(todo.float().mean())
        rows.append(line)
        label = ", ".join(f"{n}={v}" for n, v in knobs.items())
        table.append([label] + [f"{line[f'fallback_{c}']:.3f} / {line[f'gathered_{c}']:.3f}" for c in args.candidates])
    print_table(f"{args.fallback_model}: fraction of {T} teacher-forced steps that fall back / that still gather "
                f"their logits after the widened round (16x candidates); 2 shards of V = {V}",
                ["knobs"] + [f"candidates={c}" for c in args.candidates], table)
    path = write_json(f"bench_distributed_fallback_{args.fallback_model}", {"args": vars(args), "rows": rows})
    print(f"wrote {path}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--B", type=int, nargs="+", default=[1, 8, 64])
    p.add_argument("--V", type=int, default=262144)
    p.add_argument("--k", type=int, default=5)
    p.add_argument("--logits", choices=["llm", "flat"], default="llm", help="the logits' shape (see _logits)")
    p.add_argument("--iters", type=int, default=20, help="timed calls per measurement (the same on each rank)")
    p.add_argument("--out", default="bench_distributed", help="JSON name under bench/results/")
    p.add_argument("--fallback-model", default=None, help="only measure how often a real model's steps fall back "
                   "(e.g. gemma3): no processes, no timing")
    p.add_argument("--candidates", type=int, nargs="+", default=[16, 64, 256], help="with --fallback-model")
    args = p.parse_args()
    if args.fallback_model:
        fallback_rates(args)
        return
    if args.V % WORLD:
        p.error(f"--V must be a multiple of {WORLD}")
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_worker, args=(port, args), nprocs=WORLD, join=True)


if __name__ == "__main__":
    main()
