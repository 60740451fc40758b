"""fuq.prune.eu_plane (Q-Tuning): scoring speed on Gemma 3 270M, and where corrupted samples land on the plane.

1. Speed: samples/s of the scoring pass (the only model work) at 256-token responses on Gemma 3 270M,
   fuq (body once, output layer only at response positions through fuq.hidden_stats) side by side with
   the naive PyTorch composition (full ``[B, L, V]`` logits, log_softmax, gather), which must agree.
   No peer library: the Q-Tuning authors' repository (gszfwsb/Q-tuning) holds no code.
2. Quality: the instruction set bench/data/eu_plane_instructions.jsonl (72 short pairs written for this
   repository) with a sixth of the responses word-shuffled and a sixth swapped between questions; the
   rate at which clean and corrupted samples land in the dropped quadrants (Q1 noise, Q3 known).

Run: python bench/bench_prune_eu_plane.py [--quick] [--models smollm2,gemma3] [--samples 4] [--threads 1]
Results: bench/results/bench_prune_eu_plane.json (+ the plane of each model as HTML next to it).
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path

import torch
from harness import RESULTS, cpu_time_ms, print_table, write_json

import fuq
from fuq.forced import lm_head
from fuq.prune import _eu_plane as ep
from fuq.prune import eu_plane, plot_plane

DATA = Path(__file__).resolve().parent / "data" / "eu_plane_instructions.jsonl"


def load_set() -> list[dict]:
    return [json.loads(x) for x in DATA.read_text(encoding="utf-8").splitlines() if x.strip()]


def corrupt(rows: list[dict], seed: int = 0) -> list[dict]:
    """A sixth of the responses word-shuffled, a sixth rotated to the next question in that group; rest clean."""
    rng = random.Random(seed)
    idx = list(range(len(rows)))
    rng.shuffle(idx)
    k = len(rows) // 6
    shuf, swap = set(idx[:k]), idx[k : 2 * k]
    out = []
    for i, r in enumerate(rows):
        r = dict(r, kind="clean")
        if i in shuf:
            words = r["response"].split()
            while len(words) > 1 and words == r["response"].split():
                rng.shuffle(words)
            r["response"], r["kind"] = " ".join(words), "shuffled"
        out.append(r)
    for a, b in zip(swap, swap[1:] + swap[:1], strict=True):
        out[a]["response"], out[a]["kind"] = rows[b]["response"], "swapped"
    return out


def samples_for(model_name: str, rows: list[dict]) -> list[dict]:
    """SmolLM2-Instruct: its chat template. Gemma 3 270M (a base model here, no template): 'question\\n' + answer."""
    if model_name == "gemma3":
        return [{"prompt": r["prompt"] + "\n", "response": r["response"]} for r in rows]
    return [{"prompt": r["prompt"], "response": r["response"]} for r in rows]


# ---------------------------------------------------------------------------------------------
# 1. speed


def naive_scores(model, rows):
    """The plain PyTorch way: full logits [B, L, V], log_softmax, gather at the response positions."""
    ids, att, resp = ep._pad_batch(rows, 0)
    with torch.inference_mode():
        z = model(input_ids=ids, attention_mask=att).logits[:, :-1].float()
        lp = torch.log_softmax(z, -1)
        nll = -lp.gather(-1, ids[:, 1:, None])[..., 0]
        ent = -(lp.exp() * lp).sum(-1)
    pred = resp[:, 1:]
    n = pred.sum(1)
    ppl = torch.exp((nll * pred).sum(1) / n)
    return ppl, (ent * pred).sum(1) / n, z.numel() * 4


def speed(model, tok, n: int, resp_tokens: int, reps_note: str) -> dict:
    text = " ".join(r["response"] for r in load_set()) * 4
    ids = tok(text, add_special_tokens=False)["input_ids"]
    prompts = [r["prompt"] + "\n" for r in load_set()[:n]]
    rows = []
    for i, p in enumerate(prompts):  # exactly resp_tokens response tokens (incl. EOS), different for each sample
        body = ids[i * 7 : i * 7 + resp_tokens - 1]
        pid = tok(p, add_special_tokens=False)["input_ids"]
        rows.append(([tok.bos_token_id] + pid + body + [tok.eos_token_id],
                     [False] * (1 + len(pid)) + [True] * resp_tokens))
    got = ep.score_batch(model, rows, pad_id=tok.pad_token_id)
    ppl, ent, logit_bytes = naive_scores(model, rows)
    err = max(abs(g.error - float(p)) / float(p) for g, p in zip(got, ppl, strict=True))
    err_h = max(abs(g.uncertainty - float(h)) for g, h in zip(got, ent, strict=True))
    ms_fuq = cpu_time_ms(lambda: ep.score_batch(model, rows, pad_id=tok.pad_token_id), min_run_time=0.0)
    ms_naive = cpu_time_ms(lambda: naive_scores(model, rows), min_run_time=0.0)
    # where fuq's time goes: the model body, and the output layer + statistics (fuq.hidden_stats)
    head = lm_head(model)
    x, att, resp = ep._pad_batch(rows, tok.pad_token_id)
    with torch.inference_mode():
        h = head.body(input_ids=x, attention_mask=att, use_cache=False).last_hidden_state[:, :-1][resp[:, 1:]]
    tgt = x[:, 1:][resp[:, 1:]]

    def body():
        with torch.inference_mode():
            head.body(input_ids=x, attention_mask=att, use_cache=False)

    def stats():
        with torch.inference_mode():
            fuq.hidden_stats(h, head.weight, head.bias, targets=tgt, softcap=head.softcap)

    def matmul():
        with torch.inference_mode():
            torch.matmul(h, head.weight.T)

    parts = {k: cpu_time_ms(f, min_run_time=0.0) for k, f in (("body", body), ("hidden_stats", stats),
                                                              ("matmul_only", matmul))}
    L = max(len(r[0]) for r in rows)
    return {
        "samples": n, "response_tokens": resp_tokens, "sequence_tokens_max": L, "batch": n,
        "fuq_samples_per_s": n / (ms_fuq / 1e3), "naive_samples_per_s": n / (ms_naive / 1e3),
        "fuq_ms": ms_fuq, "naive_ms": ms_naive, "speedup": ms_naive / ms_fuq,
        "fuq_parts_ms": {**parts, "note": "body: the model without its output layer; hidden_stats: output layer + "
                         "statistics at the response positions; matmul_only: just h @ W.T there, the floor"},
        "naive_logits_bytes": logit_bytes, "max_rel_diff_perplexity": err, "max_abs_diff_entropy_nats": err_h,
        "clock": "cpu (thread_time, median of 5 after one warm-up call each)", "note": reps_note,
    }


# ---------------------------------------------------------------------------------------------
# 2. where the corrupted samples land


def quality(name: str, model, tok, rows: list[dict], keeps=(0.3, 0.5, 0.7)) -> dict:
    samples = samples_for(name, rows)
    t0, c0 = time.perf_counter(), time.process_time()
    res = eu_plane(model, tok, samples, sample_keep=0.5, batch_size=8)
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    kinds = [r["kind"] for r in rows]
    out: dict = {"model": name, "samples": len(rows), "score_wall_s": wall, "score_cpu_s": cpu, "by_keep": {}}
    scored = [ep.Scored(float(e), float(u), n, torch.empty(0), [])
              for e, u, n in zip(res.error, res.uncertainty, res.token_nll, strict=True)]
    for keep in keeps:
        r = ep.finish(scored, keep, 0.7, 0.5)
        per: dict = {}
        for kind in ("clean", "shuffled", "swapped"):
            sel = [i for i, k in enumerate(kinds) if k == kind]
            qs = [r.quadrant[i] for i in sel]
            per[kind] = {
                "n": len(sel),
                "dropped_rate": sum(q in ("Q1", "Q3") for q in qs) / len(sel),
                "noise_Q1_rate": qs.count("Q1") / len(sel),
                "quadrants": {q: qs.count(q) for q in ep.QUADRANTS},
            }
        # the one-dimensional baseline: drop the highest-perplexity samples only
        order = sorted(range(len(rows)), key=lambda i: -float(res.error[i]))
        drop = set(order[: len(rows) - r.decision.target])
        per["ppl_only_dropped_rate"] = {
            kind: sum(i in drop for i, k in enumerate(kinds) if k == kind) / kinds.count(kind)
            for kind in ("clean", "shuffled", "swapped")
        }
        per["level_q"], per["thresholds"] = r.decision.level, r.decision.thresholds
        out["by_keep"][str(keep)] = per
        if keep == 0.5:
            plot = plot_plane(res.error, res.uncertainty, r.quadrant, r.decision.thresholds,
                              RESULTS / f"bench_prune_eu_plane_{name}.html",
                              title=f"{DATA.name} on {name}: sample_keep 0.5")
            out["plot"] = str(Path(plot).relative_to(RESULTS.parent.parent))
    mean = {k: [float(res.error[i]) for i, kk in enumerate(kinds) if kk == k] for k in ("clean", "shuffled", "swapped")}
    out["median_perplexity"] = {k: sorted(v)[len(v) // 2] for k, v in mean.items()}
    ent = {k: [float(res.uncertainty[i]) for i, kk in enumerate(kinds) if kk == k] for k in mean}
    out["median_entropy"] = {k: sorted(v)[len(v) // 2] for k, v in ent.items()}
    return out


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--quick", action="store_true", help="2 samples at 64-token responses, SmolLM2 only")
    p.add_argument("--models", default="smollm2,gemma3")
    p.add_argument("--samples", type=int, default=4, help="samples in the speed run (one batch)")
    p.add_argument("--response-tokens", type=int, default=256)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--no-speed", action="store_true")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    names = ["smollm2"] if args.quick else args.models.split(",")
    n, T = (2, 64) if args.quick else (args.samples, args.response_tokens)
    rows = corrupt(load_set())
    results: dict = {"data": str(DATA.relative_to(RESULTS.parent.parent)), "quality": {}, "speed": {}}
    note = "shared 2-core machine under load by other engineers; CPU clock, so waiting for a core is not counted"
    for name in names:
        model, tok = fuq.models.load(name)
        if name == "gemma3" and not args.no_speed:
            results["speed"][name] = speed(model, tok, n, T, note)
        results["quality"][name] = quality(name, model, tok, rows)
        del model
    if args.quick and not args.no_speed:
        model, tok = fuq.models.load("smollm2")
        results["speed"]["smollm2"] = speed(model, tok, n, T, note)
    for name, s in results["speed"].items():
        print_table(
            f"eu_plane scoring on {name}: {s['samples']} samples x {s['response_tokens']} response tokens, one batch",
            ["method", "samples/s", "ms", "ratio", "logits held"],
            [["fuq (hidden_stats, response positions)", s["fuq_samples_per_s"], s["fuq_ms"], 1.0, "chunked"],
             ["naive PyTorch (full logits)", s["naive_samples_per_s"], s["naive_ms"], s["fuq_ms"] / s["naive_ms"],
              f"{s['naive_logits_bytes'] / 2**20:.0f} MiB"]],
            caption=f"{s['clock']}; {note}; agreement: perplexity {s['max_rel_diff_perplexity']:.1e} rel, "
            f"entropy {s['max_abs_diff_entropy_nats']:.1e} nats; fuq's parts: body {s['fuq_parts_ms']['body']:.0f} ms, "
            f"hidden_stats {s['fuq_parts_ms']['hidden_stats']:.0f} ms (its matmul alone "
            f"{s['fuq_parts_ms']['matmul_only']:.0f} ms)",
        )
    for name, q in results["quality"].items():
        table = []
        for keep, per in q["by_keep"].items():
            for kind in ("clean", "shuffled", "swapped"):
                d = per[kind]
                quads = " ".join(f"{k}:{v}" for k, v in d["quadrants"].items())
                table.append([f"{keep} {kind}", d["n"], d["dropped_rate"], d["noise_Q1_rate"],
                              per["ppl_only_dropped_rate"][kind], quads])
        print_table(f"where the samples land, {name} ({q['samples']} samples)",
                    ["sample_keep, kind", "n", "dropped (Q1+Q3)", "in Q1 noise", "dropped by PPL alone", "quadrants"],
                    table, caption=f"median perplexity {q['median_perplexity']}")
    path = write_json("bench_prune_eu_plane" + ("_quick" if args.quick else ""), results)
    print(f"wrote {path}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
