"""fuq on a CUDA GPU: correctness of every op, knob and backend, a sanitizer workload, and timings.

Run by ``bench/gpu_check.sh`` (which builds, probes the tools and keeps to the time budget);
each mode writes one JSON file to the results folder and prints a table:

``python3 bench/gpu_check.py correctness RES``
    every op (logit_stats, truncate per knob, sample, hidden_stats, attention_stats) on every
    GPU backend (triton, cuda) against ``fuq.reference`` on the same (GPU-resident, copied to
    the CPU) input: fp32 / bf16 / fp16, B in {1, 8, 64, 256}, V in {32000, 128256, 262144}.
``python3 bench/gpu_check.py sanitize``
    a small workload of edge shapes (V = 1, odd V, -inf / NaN rows, strided views, bad token
    ids) for compute-sanitizer memcheck / racecheck / synccheck.
``python3 bench/gpu_check.py bench RES``
    timings with CUDA events and cold L2 (``triton.testing.do_bench`` flushes L2 before every
    repeat) and with CUDA-graph replay (``do_bench_cudagraph``): fuq's backends side by side
    with naive torch, naive torch under ``torch.compile``, Hugging Face's warpers on the GPU
    and FlashInfer's sampling ops where FlashInfer imports; bytes read, GB/s and the share of
    the measured copy bandwidth and of the HBM peak (a roofline column).
"""

from __future__ import annotations

import json
import math
import sys
import time
import traceback

import torch

import fuq
from fuq import _library

DTYPES = (torch.float32, torch.bfloat16, torch.float16)
KNOBS = {
    "top_k": dict(top_k=50),
    "top_p": dict(top_p=0.9),
    "min_p": dict(min_p=0.05),
    "typical_p": dict(typical_p=0.9),
    "epsilon": dict(epsilon=3e-4),
    "eta": dict(eta=3e-4),
    "top_h": dict(top_h=0.4),
    "top_n_sigma": dict(top_n_sigma=1.0),
    "p_less": dict(p_less=True),
    "combo": dict(top_k=50, top_p=0.9, min_p=0.02),
}
HBM_PEAK_GBPS = {"H200": 4800.0, "H100": 3350.0, "A100": 2039.0}


def _backends() -> list[str]:
    return ["triton"] + (["cuda"] if _library.HAS_CUDA_CPP else [])


def _logits(B: int, V: int, dtype: torch.dtype, seed: int = 0) -> torch.Tensor:
    g = torch.Generator(device="cuda").manual_seed(seed)
    x = torch.randn(B, V, device="cuda", generator=g) * 2.0
    x[:, : min(V, 20)] += 8.0  # an LLM-like head
    if V > 100:
        x[0, 7::13] = float("-inf")
    return x.to(dtype)


# ---------------------------------------------------------------------------------------------
# correctness


def _cmp_stats(got, want) -> str | None:
    for name in ("lse", "entropy", "varentropy", "max_logprob", "topk_logprobs", "topk_mass"):
        a, b = getattr(got, name).float().cpu(), getattr(want, name).float().cpu()
        if not torch.allclose(a, b, atol=5e-4, rtol=2e-4, equal_nan=True):
            return f"{name}: max |diff| {(a - b).abs().nan_to_num(0).max().item():.3g}"
    if not torch.equal(got.argmax.cpu(), want.argmax.cpu()):
        return "argmax differs"
    return None


def _check_logit_stats(x, backend):
    got = fuq.logit_stats(
        x, k=50, tokens=torch.zeros(x.shape[0], dtype=torch.long, device="cuda"), temperature=0.7, backend=backend
    )
    want = fuq.logit_stats(
        x.cpu(), k=50, tokens=torch.zeros(x.shape[0], dtype=torch.long), temperature=0.7, backend="reference"
    )
    return _cmp_stats(got, want)


def _check_truncate(x, backend, knob):
    got = fuq.truncate(x, temperature=0.7, backend=backend, **KNOBS[knob]).cpu()
    want = fuq.truncate(x.cpu(), temperature=0.7, backend="reference", **KNOBS[knob])
    kept_g, kept_w = got > float("-inf"), want > float("-inf")
    diff = (kept_g != kept_w).sum().item()
    return None if diff == 0 else f"{diff} tokens kept differently (of {kept_w.sum().item()} kept)"


def _check_sample(x, backend):
    got, _ = fuq.sample(
        x, top_p=0.9, temperature=0.7, k=5, backend=backend, generator=torch.Generator(device="cuda").manual_seed(1)
    )
    want_trunc = fuq.truncate(x.cpu(), top_p=0.9, temperature=0.7, backend="reference")
    ok = torch.gather(want_trunc, 1, got.cpu()[:, None]).squeeze(1) > float("-inf")
    return None if bool(ok.all()) else f"{int((~ok).sum())} sampled ids outside the reference's kept set"


def _check_hidden(dtype, backend):
    if not hasattr(fuq, "hidden_stats"):
        return "no fuq.hidden_stats"
    h = torch.randn(37, 640, device="cuda", dtype=dtype)
    w = (torch.randn(32000, 640, device="cuda") * 0.05).to(dtype)
    t = torch.randint(0, 32000, (37,), device="cuda")
    got = fuq.hidden_stats(h, w, k=8, targets=t, softcap=30.0, backend=backend)
    want = fuq.hidden_stats(h.cpu().float(), w.cpu().float(), k=8, targets=t.cpu(), softcap=30.0, backend="reference")
    return _cmp_stats(got, want)


def _check_attention(dtype, backend):
    if not hasattr(fuq, "attention_stats"):
        return "no fuq.attention_stats"
    q = torch.randn(2, 8, 4, 128, device="cuda", dtype=dtype)
    k = torch.randn(2, 2, 3001, 128, device="cuda", dtype=dtype)
    got = fuq.attention_stats(q, k, backend=backend)
    want = fuq.attention_stats(q.cpu().float(), k.cpu().float(), backend="reference")
    for name in ("mass", "entropy", "lse"):
        a, b = getattr(got, name).float().cpu(), getattr(want, name)
        if not torch.allclose(a, b, atol=2e-3, rtol=2e-3, equal_nan=True):
            return f"{name}: max |diff| {(a - b).abs().nan_to_num(0).max().item():.3g}"
    return None


def correctness(res: str) -> int:
    rows, bad = [], 0

    def run(case: dict, fn) -> None:
        nonlocal bad
        try:
            why = fn()
        except Exception as e:  # noqa: BLE001 - a failure is a result, the run goes on
            why = f"{type(e).__name__}: {e}".splitlines()[0][:300]
        case["ok"] = why is None
        case["why"] = why
        bad += why is not None
        rows.append(case)
        print(("ok   " if why is None else "FAIL ") + json.dumps(case))

    for backend in _backends():
        for dtype in DTYPES:
            dn = str(dtype).removeprefix("torch.")
            for B in (1, 8, 64, 256):
                for V in (32000, 128256, 262144):
                    if B * V > 64 * 262144 and dtype != torch.bfloat16:
                        continue  # the largest batch once (bf16), to bound the CPU reference's time
                    x = _logits(B, V, dtype, seed=B + V)
                    base = dict(backend=backend, dtype=dn, B=B, V=V)
                    run(dict(base, op="logit_stats"), lambda x=x, b=backend: _check_logit_stats(x, b))
                    if B <= 8 or V == 32000:
                        for knob in KNOBS:
                            case = dict(base, op="truncate", knob=knob)
                            run(case, lambda x=x, kn=knob, b=backend: _check_truncate(x, b, kn))
                        run(dict(base, op="sample", knob="top_p"), lambda x=x, b=backend: _check_sample(x, b))
            run(dict(backend=backend, dtype=dn, op="hidden_stats"), lambda d=dtype, b=backend: _check_hidden(d, b))
            run(
                dict(backend=backend, dtype=dn, op="attention_stats"), lambda d=dtype, b=backend: _check_attention(d, b)
            )
    with open(f"{res}/gpu_correctness.json", "w") as f:
        json.dump({"device": torch.cuda.get_device_name(0), "cases": rows, "failed": bad}, f, indent=1)
    print(f"correctness: {len(rows) - bad} ok, {bad} failed")
    return 1 if bad else 0


# ---------------------------------------------------------------------------------------------
# sanitizer workload


def sanitize() -> int:
    for backend in _backends():
        for B, V, k in ((1, 1, 1), (3, 7, 7), (2, 4097, 50), (1, 70000, 0), (2, 50257, 1030), (4, 3000, 2)):
            for dtype in (torch.float32, torch.bfloat16):
                x = (torch.randn(B, V, device="cuda") * 3).to(dtype)
                if V > 7:
                    x[0, ::3] = float("-inf")
                if B > 2:
                    x[1] = float("-inf")
                    x[2, V // 2] = float("nan")
                tok = torch.randint(0, V, (B,), device="cuda")
                fuq.logit_stats(x, k=k, tokens=tok, temperature=0.7, backend=backend)
                wide = torch.randn(B, V + 33, device="cuda")[:, 5 : V + 5]
                fuq.logit_stats(wide, k=min(k, 3), backend=backend)
                for kn in KNOBS.values():
                    if kn.get("top_k", 0) <= V:
                        fuq.truncate(x, temperature=0.7, backend=backend, **kn)
                fuq.sample(x, top_p=0.9, k=min(k, 5), backend=backend)
    torch.cuda.synchronize()
    print("sanitize: done", _backends())
    return 0


# ---------------------------------------------------------------------------------------------
# timings


def _naive_stats(x, k, T):
    z = x.float() / T
    lse = torch.logsumexp(z, -1)
    logp = z - lse[:, None]
    p = logp.exp()
    plogp = torch.where(p > 0, p * logp, torch.zeros_like(p))
    ent = -plogp.sum(-1)
    var = torch.where(p > 0, p * (logp + ent[:, None]) ** 2, torch.zeros_like(p)).sum(-1)
    tv, ti = torch.topk(logp, k, -1)
    return lse, ent, var, tv, ti, tv.exp().sum(-1)


def _naive_top_p_sample(x, p, T):
    z = x.float() / T
    sz, si = torch.sort(z, descending=True)
    cp = torch.softmax(sz, -1).cumsum(-1)
    sz = sz.masked_fill(cp - torch.softmax(sz, -1) >= p, float("-inf"))
    ids = torch.multinomial(torch.softmax(sz, -1), 1)
    return si.gather(1, ids)


def _hf_top_p_sample(x, p, T):
    from transformers.generation.logits_process import TemperatureLogitsWarper, TopPLogitsWarper

    z = TopPLogitsWarper(p)(None, TemperatureLogitsWarper(T)(None, x.float()))
    return torch.multinomial(torch.softmax(z, -1), 1)


def _flashinfer():
    try:
        import flashinfer  # noqa: F401

        return flashinfer
    except Exception:  # noqa: BLE001 - not installed / not importable here
        return None


def _time(fn, graph: bool) -> float:
    import triton.testing as tt

    fn()
    if graph:
        return tt.do_bench_cudagraph(fn, rep=40)
    return tt.do_bench(fn, warmup=10, rep=40, return_mode="median")


def _copy_gbps() -> float:
    import triton.testing as tt

    a = torch.empty(2**28, dtype=torch.uint8, device="cuda")
    b = torch.empty_like(a)
    return 2 * a.numel() / tt.do_bench(lambda: b.copy_(a), rep=40) / 1e6


def _methods(k: int) -> dict:
    fi = _flashinfer()
    compiled = torch.compile(_naive_stats, dynamic=False)
    m = {}
    for b in _backends():
        m[f"stats {b}"] = lambda x, b=b: fuq.logit_stats(x, k=k, temperature=0.7, backend=b)
        m[f"top-p sample {b}"] = lambda x, b=b: fuq.sample(x, top_p=0.9, temperature=0.7, k=k, backend=b)
    m["stats naive"] = lambda x: _naive_stats(x, k, 0.7)
    m["stats naive compiled"] = lambda x: compiled(x, k, 0.7)
    m["logsumexp"] = lambda x: torch.logsumexp(x, -1)
    m["top-p sample naive"] = lambda x: _naive_top_p_sample(x, 0.9, 0.7)
    m["top-p sample HF"] = lambda x: _hf_top_p_sample(x, 0.9, 0.7)
    if fi is not None:
        probs = lambda x: torch.softmax(x.float() / 0.7, -1)  # noqa: E731
        m["top-p sample flashinfer"] = lambda x: fi.sampling.top_p_sampling_from_probs(probs(x), 0.9)
    return m


def bench(res: str) -> int:
    dev = torch.cuda.get_device_name(0)
    peak = next((v for key, v in HBM_PEAK_GBPS.items() if key in dev), float("nan"))
    copy = _copy_gbps()
    fi = _flashinfer() is not None
    print(f"{dev}: copy {copy:.0f} GB/s (read+write), HBM peak {peak:.0f} GB/s; flashinfer: {fi}")
    rows = []
    methods = _methods(50)
    t0 = time.time()
    for dtype in (torch.float32, torch.bfloat16):
        for B in (1, 8, 64, 256):
            for V in (32000, 128256, 262144):
                if time.time() - t0 > 200:
                    print("time budget reached: stopping the sweep")
                    break
                x = _logits(B, V, dtype)
                nbytes = x.numel() * x.element_size()
                for name, fn in methods.items():
                    for graph in (False, True):
                        try:
                            ms = _time(lambda fn=fn, x=x: fn(x), graph)
                        except Exception as e:  # noqa: BLE001 - one failed method must not hide the others
                            print(f"  {name} graph={graph} failed: {type(e).__name__}: {str(e)[:200]}")
                            ms = math.nan
                        gbps = nbytes / ms / 1e6
                        rows.append(
                            dict(
                                dtype=str(dtype).removeprefix("torch."),
                                B=B,
                                V=V,
                                method=name,
                                graph=graph,
                                ms=ms,
                                bytes=nbytes,
                                GBps=gbps,
                                of_copy=gbps / copy * 2,
                                of_peak=gbps / peak,
                            )
                        )
                _print_case(rows, dtype, B, V)
    with open(f"{res}/bench_gpu.json", "w") as f:
        json.dump(
            {"device": dev, "copy_GBps": copy, "hbm_peak_GBps": peak, "torch": torch.__version__, "rows": rows},
            f,
            indent=1,
        )
    return 0


def _print_case(rows, dtype, B, V):
    dn = str(dtype).removeprefix("torch.")
    here = [r for r in rows if r["dtype"] == dn and r["B"] == B and r["V"] == V]
    print(f"\n{dn} B={B} V={V} ({here[0]['bytes'] / 1e6:.1f} MB read)")
    print(f"  {'method':<28} {'events ms':>10} {'graph ms':>10} {'GB/s':>7} {'% peak':>7}")
    for name in dict.fromkeys(r["method"] for r in here):
        ev = next(r for r in here if r["method"] == name and not r["graph"])
        gr = next(r for r in here if r["method"] == name and r["graph"])
        print(f"  {name:<28} {ev['ms']:10.4f} {gr['ms']:10.4f} {ev['GBps']:7.0f} {100 * ev['of_peak']:6.1f}%")


if __name__ == "__main__":
    mode = sys.argv[1] if len(sys.argv) > 1 else ""
    try:
        if mode == "correctness":
            sys.exit(correctness(sys.argv[2]))
        if mode == "sanitize":
            sys.exit(sanitize())
        if mode == "bench":
            sys.exit(bench(sys.argv[2]))
    except Exception:  # noqa: BLE001 - print the whole story for the log
        traceback.print_exc()
        sys.exit(1)
    print(__doc__)
    sys.exit(2)
