"""Why fuq.attention_stats at Lq = 64 is not yet at SDPA's speed on this CPU: the score GEMM alone.

For the prefill-window shapes of bench_attention_stats.py (B = 1, causal, Lq = 64, bf16 K), one
process, one thread, thread CPU time, medians of --reps runs, times

* ``fuq``        fuq.attention_stats (mass, entropy, lse);
* ``sdpa``       F.scaled_dot_product_attention(q, k, k, causal mask, GQA) in bf16;
* ``mm_f32``     the scores alone as one float32 GEMM, [G, d] x [d, T] (what fuq computes: fp32
                 scores, the precision its float64-checked tests need);
* ``mm_bf16``    the same GEMM in bf16 with a bf16 result (oneDNN's avx512_bf16 path; the
                 result is rounded to bf16, 8 bits of mantissa, so it is only a speed floor).

Run: python bench/bench_attention_floor.py [--T 1024 4096] [--reps 15]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F

import fuq

MODELS = {"gemma3": dict(Hq=4, Hkv=1, d=256), "smollm2": dict(Hq=9, Hkv=3, d=64)}


def t_ms(fn, reps):
    fn()
    xs = []
    for _ in range(reps):
        t = time.thread_time()
        fn()
        xs.append(time.thread_time() - t)
    return 1e3 * statistics.median(xs)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--T", type=int, nargs="+", default=[1024, 4096])
    p.add_argument("--Lq", type=int, default=64)
    p.add_argument("--reps", type=int, default=15)
    p.add_argument("--out", default=str(Path(__file__).parent / "results" / "bench_attention_floor_cpuclock.json"))
    args = p.parse_args()
    torch.set_num_threads(1)
    rows = []
    for model, s in MODELS.items():
        Hq, Hkv, d = s["Hq"], s["Hkv"], s["d"]
        for T in args.T:
            g = torch.Generator().manual_seed(T)
            q = torch.randn(1, Hq, args.Lq, d, generator=g).bfloat16()
            k = torch.randn(1, Hkv, T, d, generator=g).bfloat16()
            scale = 1.0 / math.sqrt(d)
            mask = torch.arange(T)[None, :] <= torch.arange(T - args.Lq, T)[:, None]
            G = (Hq // Hkv) * args.Lq
            qm = q.reshape(Hkv, G, d)  # the G rows of each KV head's group
            qf, kf = qm.float(), k[0].float()
            r = dict(model=model, T=T, Lq=args.Lq)
            fns = dict(
                fuq=lambda q=q, k=k, s=scale: fuq.attention_stats(q, k, scale=s),
                sdpa=lambda q=q, k=k, m=mask, s=scale: F.scaled_dot_product_attention(
                    q, k, k, attn_mask=m, scale=s, enable_gqa=True
                ),
                mm_f32=lambda a=qf, b=kf: torch.bmm(a, b.transpose(1, 2)),
                mm_bf16=lambda a=qm, b=k[0]: torch.bmm(a, b.transpose(1, 2)),
            )
            for name, fn in fns.items():
                r[f"{name}_ms"] = t_ms(fn, args.reps)
            r["fuq_over_sdpa"] = r["fuq_ms"] / r["sdpa_ms"]
            r["mm_f32_over_sdpa"] = r["mm_f32_ms"] / r["sdpa_ms"]
            rows.append(r)
            print(" ".join(f"{k_}={v:.3f}" if isinstance(v, float) else f"{k_}={v}" for k_, v in r.items()), flush=True)
    out = dict(
        machine=dict(
            platform=platform.platform(),
            torch=torch.__version__,
            threads=1,
            clock="thread_time",
            loadavg=os.getloadavg(),
            time_utc=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            cpu=next((ln.split(":", 1)[1].strip() for ln in open("/proc/cpuinfo") if ln.startswith("model name")), "?"),
            cpu_flags=sorted({f for f in open("/proc/cpuinfo").read().split() if f.startswith(("avx512_bf16", "amx"))}),
        ),
        args=vars(args),
        rows=rows,
    )
    Path(args.out).write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
