"""Where AdaDec's time goes on Gemma 3 270M (CPU): greedy vs strategy="adadec" on one code prompt.

One process, one thread (torch.set_num_threads(1)), thread CPU time (time.thread_time), so the
figures hold on a loaded machine. For each strategy, ``--reps`` runs (after a warm-up); per run:
total time, the time inside model calls of the main loop, inside AdaDec's rollouts (model
calls + stats), in ``_fork_cache`` and in ``fuq.logit_stats``; the medians are printed and
written as JSON. It also checks that AdaDec's tokens are the same in every run.

Run: python bench/profile_adadec.py [--tokens 32] [--reps 3] [--tau 1.5]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path

import torch

import fuq
import fuq.generate  # noqa: F401  (the module; fuq.generate the attribute is the function)

G = sys.modules["fuq.generate"]

PROMPT = (
    "def merge_sorted(a: list[int], b: list[int]) -> list[int]:\n"
    '    """Merge two sorted lists into one sorted list, keeping duplicates."""\n'
    "    out = []\n    i = j = 0\n    while i < len(a) and j < len(b):\n"
)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--tokens", type=int, default=32)
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--tau", type=float, default=1.5)
    p.add_argument("--model", default="gemma3")
    p.add_argument("--out", default=str(Path(__file__).parent / "results" / "profile_adadec_gemma3_cpuclock.json"))
    args = p.parse_args()
    torch.set_num_threads(1)
    model, tok = fuq.models.load(args.model)
    n_prompt = len(tok(PROMPT)["input_ids"])

    acc: dict[str, float] = defaultdict(float)
    where = ["main"]

    def timed(name, fn):
        def wrap(*a, **k):
            t = time.thread_time()
            try:
                return fn(*a, **k)
            finally:
                acc[f"{name}:{where[0]}"] += time.thread_time() - t

        return wrap

    orig_forward, orig_rollout = G.DecodeState.forward, G.DecodeState.rollout

    def rollout(self, *a, **k):
        where[0] = "rollout"
        t = time.thread_time()
        try:
            return orig_rollout(self, *a, **k)
        finally:
            acc["rollout_total"] += time.thread_time() - t
            where[0] = "main"

    G.DecodeState.forward = timed("forward", orig_forward)
    G.DecodeState.rollout = rollout
    G._fork_cache = timed("fork_cache", G._fork_cache)
    G.logit_stats = timed("logit_stats", G.logit_stats)

    class PlainHead(G._SkinnyHead):  # the rollouts as before: F.linear of the output head
        def __init__(self, model, rows):
            super().__init__(model, 1)

    skinny = G._SkinnyHead
    rows = {}
    cases = (
        ("greedy", {}, skinny),
        ("adadec_plain_head", {"strategy": "adadec", "tau": args.tau}, PlainHead),
        ("adadec", {"strategy": "adadec", "tau": args.tau}, skinny),
    )
    for strat, kw, head in cases:
        G._SkinnyHead = head
        runs, texts = [], set()
        for r in range(args.reps + 1):
            acc.clear()
            t = time.thread_time()
            tr = fuq.generate(model, tok, PROMPT, max_new_tokens=args.tokens, **kw)
            total = time.thread_time() - t
            if r == 0:
                continue  # warm-up
            texts.add(tuple(tr.token_ids[0][tr.mask[0]].tolist()))
            n = int(tr.mask.sum())
            runs.append(
                dict(
                    total_s=total,
                    tokens=n,
                    ms_per_token=1e3 * total / n,
                    calls=tr.meta["model_calls"],
                    report=tr.meta.get("strategy_report"),
                    **dict(acc),
                )
            )
        G._SkinnyHead = skinny
        med = {k: statistics.median(r[k] for r in runs) for k in runs[0] if isinstance(runs[0][k], (int, float))}
        ids = list(texts)[0]
        med.update(report=runs[0]["report"], same_tokens_every_run=len(texts) == 1, ids=list(ids), text=tok.decode(ids))
        rows[strat] = med
        print(
            strat, json.dumps({k: (round(v, 4) if isinstance(v, float) else v) for k, v in med.items() if k != "ids"})
        )
    print("adadec tokens == adadec_plain_head tokens:", rows["adadec"]["ids"] == rows["adadec_plain_head"]["ids"])
    g, p0 = rows["greedy"], rows["adadec_plain_head"]
    before = (p0["tokens"] / p0["total_s"]) / (g["tokens"] / g["total_s"])
    print(f"before (plain head): adadec tokens/s / greedy tokens/s = {before:.3f}")
    g, a = rows["greedy"], rows["adadec"]
    ratio = (a["tokens"] / a["total_s"]) / (g["tokens"] / g["total_s"])
    print(f"adadec tokens/s / greedy tokens/s = {ratio:.3f} (thread CPU time, 1 thread, prompt {n_prompt} tokens)")
    out = dict(
        machine=dict(
            platform=platform.platform(),
            torch=torch.__version__,
            threads=1,
            cpu=next((ln.split(":", 1)[1].strip() for ln in open("/proc/cpuinfo") if ln.startswith("model name")), "?"),
            clock="thread_time",
            loadavg=os.getloadavg(),
            time_utc=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            git=subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip(),
        ),
        args=vars(args),
        prompt_tokens=n_prompt,
        rows=rows,
        adadec_over_greedy_tokens_per_s=ratio,
        before_plain_head_adadec_over_greedy=before,
        same_tokens_as_plain_head=rows["adadec"]["ids"] == p0["ids"],
    )
    Path(args.out).write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
