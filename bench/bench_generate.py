"""fuq.generate greedy vs Hugging Face generate greedy on Gemma 3 270M (CPU): tokens/s and the loop's own cost.

Run: python bench/bench_generate.py [--batch 1] [--tokens 32] [--reps 3] [--threads 0]
"""

import argparse
import statistics
import time

import torch

import fuq

p = argparse.ArgumentParser()
p.add_argument("--tokens", type=int, default=32)
p.add_argument("--reps", type=int, default=3)
p.add_argument("--batch", type=int, default=1)
p.add_argument("--threads", type=int, default=0)
args = p.parse_args()
if args.threads:
    torch.set_num_threads(args.threads)

model, tok = fuq.models.load("gemma3")
prompts = ["The history of the Roman Empire", "Photosynthesis is the process by which",
           "In computer science, a hash table", "The best way to learn a new language is"][: args.batch]
N = args.tokens


class FwdTimer:
    def __init__(self, m):
        self.total = 0.0
        self.calls = 0
        m.register_forward_pre_hook(self.pre)
        m.register_forward_hook(self.post)

    def pre(self, *a):
        self.t0 = time.perf_counter()

    def post(self, *a):
        dt = time.perf_counter() - self.t0
        self.total += dt
        self.calls += 1
        self.each.append(dt)

    def reset(self):
        self.total, self.calls, self.each = 0.0, 0, []


timer = FwdTimer(model)
timer.reset()


def hf():
    enc = tok(prompts, return_tensors="pt", padding=True, padding_side="left")
    timer.reset()
    t = time.perf_counter()
    out = model.generate(**enc, do_sample=False, max_new_tokens=N, pad_token_id=tok.pad_token_id)
    return time.perf_counter() - t, timer.total, timer.calls, out[:, enc["input_ids"].shape[1]:]


def ours():
    timer.reset()
    t = time.perf_counter()
    tr = fuq.generate(model, tok, prompts, max_new_tokens=N)
    return time.perf_counter() - t, timer.total, timer.calls, tr.token_ids


hf()
ours()
rows = {"hf": [], "fuq": []}
ids = {}
for _ in range(args.reps):
    for name, fn in (("hf", hf), ("fuq", ours)):
        total, fwd, calls, ids[name] = fn()
        rows[name].append((total, fwd, calls))
        each = timer.each
        med = 1e3 * statistics.median(each[1:])
        print(f"  {name}: prefill {1e3 * each[0]:.1f} ms, decode forward median {med:.2f} ms"
              f" min {1e3 * min(each[1:]):.2f} ms, total {total:.2f} s")
print("identical ids:", torch.equal(ids["hf"], ids["fuq"][:, : ids["hf"].shape[1]]))
print(f"Gemma 3 270M, CPU, torch threads {torch.get_num_threads()}, batch {args.batch}, {N} new tokens, "
      f"{args.reps} interleaved reps")
for name, r in rows.items():
    tot = [x[0] for x in r]
    over = [(x[0] - x[1]) / N * 1000 for x in r]
    print(f"{name:4s}: total median {statistics.median(tot):.2f} s (min {min(tot):.2f}) = "
          f"{N * args.batch / statistics.median(tot):.2f} tok/s; model calls {r[0][2]}; "
          f"outside the model: median {statistics.median(over):.2f} ms/step (min {min(over):.2f})")

# the per-step token choice alone, on one step's logits
with torch.no_grad():
    enc = tok(prompts, return_tensors="pt", padding=True, padding_side="left")
    logits = model(**enc, logits_to_keep=1).logits[:, -1, :]


def bench(fn, n=50):
    ts = []
    for _ in range(n):
        t = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t)
    return statistics.median(ts) * 1e3


op = bench(lambda: fuq.logit_stats(logits, k=15))
hf_choice = bench(lambda: torch.argmax(logits.to(copy=True, dtype=torch.float32), dim=-1))
full = bench(lambda: (torch.log_softmax(logits.float(), -1), torch.topk(logits, 15)))
print(f"per step on [{logits.shape[0]}, {logits.shape[1]}] logits: fuq.logit_stats(k=15) {op:.3f} ms | HF greedy "
      f"choice (fp32 copy + argmax) {hf_choice:.3f} ms | unfused log_softmax + topk(15) {full:.3f} ms")
