"""fuq.hidden_stats against the naive LM head + stats, its torch.compile'd and chunked forms, and liger-kernel.

At Gemma 3 270M's output layer (d = 640, V = 262144; random weights by default, the real
tied embedding with ``--model gemma3``), for T positions, one process times

* ``naive``    — ``logits = h @ W.T`` then log_softmax, entropy, varentropy, top-k and the
                 target's log-prob from stock PyTorch ops (holds ``[T, V]`` and a few
                 tensors of that size);
* ``compiled`` — the same function through ``torch.compile`` (compile time reported apart);
* ``chunked``  — the naive function on blocks of rows (``[rows, V]`` logits, about 2^24);
* ``liger``    — liger-kernel's ``LigerFusedLinearScaledCrossEntropyFunction`` (per-token NLL
                 and entropy only; off CUDA its pure-PyTorch path, row chunks), where it imports;
* ``fuq``      — ``fuq.hidden_stats(h, W, k=k, targets=t)`` (C++ on the CPU, Triton on CUDA).

and reports ms, GFLOP/s of the matmul (2·T·V·d), the speed-up over naive, and the peak extra
memory of one call: on CUDA the allocator's peak (``torch.cuda.max_memory_allocated``)
above the inputs; on the CPU the peak resident set size (RSS, ``/proc/self/statm`` sampled
every 0.5 ms by a thread) above the RSS before the call. Targets of issue 8: at T = 4096,
fuq's peak extra memory <= 1/8 of naive's and its time <= naive's.

Usage::

    python bench/bench_hidden_stats.py                 # T {512, 2048, 4096}: naive needs ~16 GiB at T = 4096
    python bench/bench_hidden_stats.py --quick         # T {512, 1024}, fewer repeats (a loaded, small machine)
    python bench/bench_hidden_stats.py --T 4096 --methods fuq
    python bench/bench_hidden_stats.py --clock cpu     # one thread, CPU time: stable on a shared machine

Writes a table to stdout and JSON to ``bench/results/bench_hidden_stats[_<tag>].json``.
"""

from __future__ import annotations

import argparse
import gc
import os
import sys
import threading
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_logit_stats import naive_logit_stats  # noqa: E402
from harness import print_table, time_ms, write_json  # noqa: E402

import fuq  # noqa: E402

D, V = 640, 262144  # Gemma 3 270M's head
METHODS = ("naive", "compiled", "chunked", "liger", "fuq")


def naive(h: torch.Tensor, w: torch.Tensor, tgt: torch.Tensor, k: int):
    return naive_logit_stats(h @ w.T, k, tgt)


def chunked(h: torch.Tensor, w: torch.Tensor, tgt: torch.Tensor, k: int):
    rows = max(1, (1 << 24) // w.shape[0])
    parts = [naive(h[s : s + rows], w, tgt[s : s + rows], k) for s in range(0, h.shape[0], rows)]
    return [torch.cat(f) for f in zip(*parts, strict=True)]


def liger_fn():
    """liger-kernel's fused linear cross-entropy (NLL, entropy), or None with the reason."""
    try:
        from liger_kernel.ops import LigerFusedLinearScaledCrossEntropyFunction as Liger
    except Exception as exc:  # noqa: BLE001 - any failure means "no peer here"
        return None, f"{type(exc).__name__}: {exc}"
    return (lambda h, w, tgt, k: Liger.apply(h, w, tgt, 1.0, -100, 1, True)), None


class PeakMemory:
    """Peak extra memory of a block: the CUDA allocator's peak, or the sampled peak RSS on the CPU."""

    def __init__(self, device: torch.device):
        self.device = device
        self.page = os.sysconf("SC_PAGE_SIZE")

    def _rss(self) -> int:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * self.page

    def __enter__(self):
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self.base = torch.cuda.memory_allocated()
            return self
        self.base = self.peak = self._rss()
        self._stop = False

        def poll():
            while not self._stop:
                self.peak = max(self.peak, self._rss())
                time.sleep(0.0005)

        self._thread = threading.Thread(target=poll, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            self.extra = torch.cuda.max_memory_allocated() - self.base
        else:
            self.peak = max(self.peak, self._rss())
            self._stop = True
            self._thread.join()
            self.extra = self.peak - self.base
        return False


def load_head(model: str | None, device: torch.device, dtype: torch.dtype) -> tuple[torch.Tensor, str]:
    if model is None:
        g = torch.Generator().manual_seed(0)
        return (torch.randn(V, D, generator=g) * 0.05).to(device, dtype), "random N(0, 0.05^2), [262144, 640]"
    m, _ = fuq.models.load(model)
    head = fuq.forced.lm_head(m)
    return head.weight.detach().to(device, dtype).contiguous(), f"{model} output embedding {tuple(head.weight.shape)}"


def run_case(T: int, w: torch.Tensor, methods: list[str], args, compiled_fn) -> list[dict[str, Any]]:
    dev = w.device
    g = torch.Generator().manual_seed(T)
    h = torch.randn(T, w.shape[1], generator=g).to(dev, w.dtype)
    tgt = torch.randint(0, w.shape[0], (T,), generator=g).to(dev)
    fns = {
        "naive": naive,
        "compiled": compiled_fn,
        "chunked": chunked,
        "fuq": lambda h, w, tgt, k: fuq.hidden_stats(h, w, k=k, targets=tgt),
    }
    lig, why = liger_fn()
    if lig is not None:
        fns["liger"] = lig
    flops = 2.0 * T * w.shape[0] * w.shape[1]
    out = []
    for name in methods:
        if name not in fns:
            out.append(dict(T=T, method=name, skipped=why or "not available"))
            continue
        fn = fns[name]
        t0 = time.perf_counter()
        fn(h, w, tgt, args.k)  # warm-up (compilation for "compiled")
        first_s = time.perf_counter() - t0
        with PeakMemory(dev) as mem:
            fn(h, w, tgt, args.k)
        ms = time_ms(lambda fn=fn: fn(h, w, tgt, args.k), device=dev, warmup=0, min_run_time=args.min_run_time,
                     clock=args.clock)
        out.append(dict(T=T, method=name, ms=ms, gflops=flops / (ms * 1e-3) / 1e9, peak_extra_mib=mem.extra / 2**20,
                        first_call_s=first_s))
        print(f"  T={T} {name}: {ms:.0f} ms, peak extra {mem.extra / 2**20:.0f} MiB", file=sys.stderr, flush=True)
    base = next((r for r in out if r["method"] == "naive" and "ms" in r), None)
    for r in out:
        if base is not None and "ms" in r:
            r["speedup_vs_naive"] = base["ms"] / r["ms"]
            r["memory_vs_naive"] = r["peak_extra_mib"] / base["peak_extra_mib"] if base["peak_extra_mib"] > 0 else None
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--T", type=int, nargs="+", default=None, help="positions (default 512 2048 4096)")
    ap.add_argument("--quick", action="store_true", help="T 512 1024, short timing (a small loaded machine)")
    ap.add_argument("--methods", default=",".join(METHODS))
    ap.add_argument("--k", type=int, default=15)
    ap.add_argument("--model", default=None, help="take the real head of fuq.models.load(MODEL), e.g. gemma3")
    ap.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
    ap.add_argument("--clock", default="wall", choices=("wall", "cpu"))
    ap.add_argument("--min-run-time", type=float, default=None)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--tag", default=None, help="suffix of the result file")
    args = ap.parse_args()
    Ts = args.T or ([512, 1024] if args.quick else [512, 2048, 4096])
    if args.min_run_time is None:
        args.min_run_time = 0.1 if args.quick else 1.0
    if args.clock == "cpu":
        torch.set_num_threads(1)
    elif args.threads:
        torch.set_num_threads(args.threads)
    dev = torch.device(args.device)
    w, head = load_head(args.model, dev, getattr(torch, args.dtype))
    methods = [m for m in args.methods.split(",") if m]
    compiled_fn = torch.compile(naive) if "compiled" in methods else None
    results = []
    for T in Ts:
        results += run_case(T, w, methods, args, compiled_fn)
    rows = [
        (r["T"], r["method"], r.get("ms", float("nan")), r.get("gflops", float("nan")),
         r.get("peak_extra_mib", float("nan")), r.get("speedup_vs_naive", float("nan")),
         r.get("memory_vs_naive") or float("nan"), r.get("skipped", ""))
        for r in results
    ]
    mem_how = "CUDA allocator peak" if dev.type == "cuda" else "peak RSS above the RSS before the call (sampled)"
    print_table(
        f"hidden_stats, d = {w.shape[1]}, V = {w.shape[0]}, {args.dtype}, k = {args.k}, {dev.type}, "
        f"{torch.get_num_threads()} thread(s), clock {args.clock}",
        ["T", "method", "ms", "GFLOP/s", "peak extra MiB", "naive / x (time)", "x / naive (memory)", "note"],
        rows,
        caption=f"memory: {mem_how}; liger returns NLL and entropy only; weights: {head}",
    )
    name = "bench_hidden_stats" + (f"_{args.tag}" if args.tag else "")
    path = write_json(name, {
        "config": dict(d=w.shape[1], V=w.shape[0], dtype=args.dtype, k=args.k, T=Ts, clock=args.clock,
                       device=str(dev), weights=head, memory=mem_how, min_run_time=args.min_run_time),
        "results": results,
    })
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
