"""AdaDec on Gemma 3 270M (CPU): tau learned by fuq.adaptive.calibrate_threshold, then the extra model calls
and time per token of strategy="adadec" against greedy fuq.generate (and fuq.generate vs HF generate greedy).

Run: python bench/bench_adadec.py [--tokens 32] [--reps 3] [--batches 1,4] [--skip-speed]
"""

import argparse
import statistics
import time

import torch

import fuq
from fuq.adaptive import calibrate_threshold

p = argparse.ArgumentParser()
p.add_argument("--tokens", type=int, default=64)
p.add_argument("--reps", type=int, default=3)
p.add_argument("--model", default="gemma3")
p.add_argument("--batches", default="1,4")
p.add_argument("--skip-speed", action="store_true")
p.add_argument("--threads", type=int, default=0)
args = p.parse_args()
if args.threads:
    torch.set_num_threads(args.threads)

print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, fuq C++ {fuq._library.HAS_CPP}")
t = time.perf_counter()
model, tok = fuq.models.load(args.model)
print(f"load from cache: {time.perf_counter() - t:.1f} s; vocab {model.config.vocab_size}")

PROMPTS = [
    "The history of the Roman Empire",
    "Photosynthesis is the process by which",
    "In computer science, a hash table",
    "The best way to learn a new language is",
]
N = args.tokens


def hf(prompts):
    enc = tok(prompts, return_tensors="pt", padding=True, padding_side="left")
    t = time.perf_counter()
    out = model.generate(**enc, do_sample=False, max_new_tokens=N, pad_token_id=tok.pad_token_id)
    return time.perf_counter() - t, out[:, enc["input_ids"].shape[1]:]


def ours(prompts, **kw):
    t = time.perf_counter()
    tr = fuq.generate(model, tok, prompts, max_new_tokens=N, **kw)
    return time.perf_counter() - t, tr


BATCHES = [int(x) for x in args.batches.split(',')]
for B in ([] if args.skip_speed else BATCHES):
    prompts = PROMPTS[:B]
    hf(prompts)
    ours(prompts)  # warm-up
    th, tf = [], []
    for _ in range(args.reps):
        a, want = hf(prompts)
        b, tr = ours(prompts)
        th.append(a)
        tf.append(b)
    same = torch.equal(tr.token_ids[:, : want.shape[1]], want)
    n = int(tr.mask.sum())
    mh, mf = statistics.median(th), statistics.median(tf)
    print(f"B={B}: min HF {min(th):.2f} s ({n / min(th):.2f} tok/s), min fuq {min(tf):.2f} s "
          f"({n / min(tf):.2f} tok/s), ratio of mins {min(tf) / min(th):.3f}")
    print(f"B={B}: {n} new tokens; HF generate {mh:.2f} s ({n / mh:.1f} tok/s) | fuq.generate {mf:.2f} s "
          f"({n / mf:.1f} tok/s, loop-only {tr.meta['tokens_per_s']:.1f} tok/s) | fuq/HF time {mf / mh:.3f} | "
          f"identical ids: {same} | HF times {[round(x, 2) for x in th]} fuq times {[round(x, 2) for x in tf]}")

# AdaDec at a learned tau
texts = [
    "The Roman Empire was the post-Republican state of ancient Rome. It ruled the Mediterranean for centuries.",
    "Water boils at one hundred degrees Celsius at sea level, and freezes at zero degrees.",
    "A hash table stores key-value pairs and finds a value from its key in constant time on average.",
    "Paris is the capital and largest city of France, on the river Seine.",
    "The mitochondria is the powerhouse of the cell; it produces most of the cell's supply of energy.",
    "def add(a, b):\n    return a + b\n\nprint(add(2, 3))\n",
]
t = time.perf_counter()
th = calibrate_threshold(model, tok, texts, return_details=True)
print(f"calibrate_threshold on {len(texts)} texts ({th.n} positions, {th.n_first} ranked first): tau = {th.tau:.3f} "
      f"nats (p_cut {th.p_cut:.3f}, w {th.weight:.3f}/nat, balanced accuracy {th.accuracy:.3f}) in "
      f"{time.perf_counter() - t:.1f} s")
for B in BATCHES:
    prompts = PROMPTS[:B]
    g_t, g = ours(prompts)
    a_t, a = ours(prompts, strategy="adadec", tau=th.tau)
    ng, na = int(g.mask.sum()), int(a.mask.sum())
    rep = a.meta["strategy_report"]
    print(f"B={B}: greedy {g.meta['model_calls']} calls, {g.meta['model_tokens']} tokens fed, "
          f"{1000 * g_t / ng:.1f} ms/token | adadec {a.meta['model_calls']} calls "
          f"(+{a.meta['model_calls'] - g.meta['model_calls']}), {a.meta['model_tokens']} tokens fed, "
          f"{1000 * a_t / na:.1f} ms/token ({a_t / na / (g_t / ng):.2f}x) | paused at {rep['triggered']} of {na} "
          f"row-steps ({rep['triggered'] / na:.1%}), changed {rep['changed']} tokens")
    print("   greedy:", repr(g.text[0][:120]))
    print("   adadec:", repr(a.text[0][:120]))
