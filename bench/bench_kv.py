"""KV-cache eviction (fuq.kv): quality and cost per scorer and budget, on Gemma 3 270M and SmolLM2-135M.

For every model, text and scorer x budget (50 / 25 / 12.5 % of the tokens seen), side by side in one run:

* **quality**: the text's first ``--context`` tokens are prefilled once (the prefill is shared by all
  configurations: the attention inputs are recorded and replayed into each policy, see
  ``fuq.kv.capture_queries``), the cache is compressed, then the next ``--steps`` tokens are
  teacher-forced one step at a time with the policy evicting as it would in ``fuq.generate``
  (SnapKV: after the prefill only; the others every step). Against the full cache: mean
  KL(full || evicted) of the next-token distributions (nats) and the perplexity of the forced tokens.
* **cost**: cache bytes after the last step (measured on the cache tensors, sliding-window layers
  included), decode tokens/s of that loop, and the scorer's own time per step (scoring + gather).
* **needle in a haystack**: a passcode sentence at depths 10-90 % of a ~``--context``-token prompt
  built from the same texts, the question at the end, 8 greedy tokens; exact match = the passcode
  appears in the answer.
* **entropy-proportional vs uniform budget**: the same SnapKV scores with budgets per layer and KV
  head in proportion to UNComp's matrix entropy of the head's keys (``entropy-budget``), or to the
  attention entropy of the last prompt queries (``entropy-budget/attention``), vs the uniform split
  of the same total (``snapkv``), on KL at 25 %.
* **the H2O / key-norm investigation**: kvpress 0.5.5's own ``KnormPress`` and
  ``ObservedAttentionPress`` applied to the same prefilled cache (``kvpress-*``: KL, and the share of
  fuq's kept slots they keep), and ablations: ``knorm/prefill-only``, ``h2o/mean`` (kvpress's
  per-query mean), ``h2o/no-recent`` (heavy hitters only, as fuq's H2O was), ``h2o/recent-half``.
  ``--scorers`` / ``--budgets`` / ``--needle-scorers`` pick a subset.

Texts: the Python reference documentation shipped in the standard library (``pydoc_data.topics``).
Writes ``bench/results/bench_kv[_quick].json``, ``.txt`` (the tables) and ``.png`` (KL vs budget).
Times are wall-clock on whatever machine runs it (see ``machine.loadavg`` in the JSON).

Run: python bench/bench_kv.py --quick          # 1 text, 3 depths, 8 steps: ~5 min on a quiet 2-core CPU
     python bench/bench_kv.py                  # 2 texts, 5 depths, 64 steps
"""

from __future__ import annotations

import argparse
import copy
import inspect
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import RESULTS, print_table, write_json  # noqa: E402

import fuq  # noqa: E402
from fuq import kv  # noqa: E402

TOPICS = ("compound", "specialnames", "types", "formatstrings")
SCORERS = ("streaming", "knorm", "tova", "h2o", "snapkv", "entropy-budget", "entropy-budget/attention", "uncertain",
           # the H2O / key-norm investigation: kvpress's own presses on the same prefilled cache, and ablations
           "kvpress-knorm", "knorm/prefill-only", "kvpress-observed", "h2o/mean", "h2o/recent-half")
NEEDLE_SCORERS = ("streaming", "knorm", "tova", "h2o", "snapkv", "entropy-budget", "entropy-budget/attention",
                  "h2o/mean", "h2o/recent-half")
BUDGETS = (0.5, 0.25, 0.125)
PASSCODE = "48213"
NEEDLE = f" The secret passcode is {PASSCODE}. Remember it. "
QUESTION = "\n\nQuestion: What is the secret passcode? Answer: The secret passcode is"


def texts(n: int) -> list[str]:
    from pydoc_data.topics import topics

    return [topics[t] for t in TOPICS[:n]]


def heldout_texts(which: str = "rest") -> list[tuple[str, str]]:
    """``(name, text)``: ``"rest"``, the topics of at least 7000 characters other than :data:`TOPICS`,
    longest first; ``"bench"``, the four :data:`TOPICS` (``--heldout bench``)."""
    from pydoc_data.topics import topics

    if which == "bench":
        return [(k, topics[k]) for k in TOPICS]
    names = sorted((k for k, v in topics.items() if len(v) >= 7000 and k not in TOPICS), key=lambda k: -len(topics[k]))
    return [(k, topics[k]) for k in names]


class Runner:
    """One model: a shared prefill per prompt, then a decode loop per policy."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.model, self.tok = fuq.models.load(name)
        self.model.config._attn_implementation = "sdpa"
        sig = inspect.signature(self.model.forward).parameters
        self.cache_kw = "cache" if "cache" in sig else "past_key_values"

    def forward(self, ids: torch.Tensor, pos: torch.Tensor, cache=None):
        kw = {"input_ids": ids, "position_ids": pos, "use_cache": True, "logits_to_keep": 1}
        if cache is not None:
            kw[self.cache_kw] = cache
        out = self.model(**kw)
        c = getattr(out, "cache", None) or out.past_key_values
        return out.logits[:, -1].float(), c

    @torch.no_grad()
    def prefill(self, ids: torch.Tensor):
        pos = torch.arange(ids.shape[1])[None]
        with kv.capture_queries(self.model) as cap:
            logits, cache = self.forward(ids, pos)
        pre = {"ids": ids, "pos": pos, "logits": logits, "cache": cache, "inputs": cap.inputs}
        # H2O's prefill mass (every prompt query) is the same for every budget: computed once per prompt
        pol = kv.KVPolicy(self.model, "h2o", 1.0)
        pol.attach()
        t0 = time.perf_counter()
        pol.replay_prefill(cache, pos, None, cap.inputs)  # budget 1.0: bookkeeping only, the cache is untouched
        pre["h2o_ms"] = 1e3 * (time.perf_counter() - t0)
        pre["h2o"] = pol.scorer.acc
        pol.detach()
        return pre

    @torch.no_grad()
    def decode(self, pre: dict, scorer: str | kv.Scorer | None, budget: float | None, feed: torch.Tensor | None,
               n: int, policy: dict | None = None, press: str | None = None) -> dict:
        """``n`` steps after the prefill: teacher-forced on ``feed [1, n]`` or greedy (feed None).
        ``policy``: KVPolicy keyword overrides; ``press``: compress the prefill with kvpress's own press
        of that name instead (no eviction while decoding)."""
        cache = copy.deepcopy(pre["cache"])
        pol = None
        t0 = time.perf_counter()
        if press is not None:
            kept_sets = kvpress_compress(self.model, cache, pre, press, budget)
        if scorer is not None:
            pol = kv.KVPolicy(self.model, scorer, budget, **({"sinks": 4, "window": 32} | (policy or {})))
            pol.attach()
            pol.replay_prefill(cache, pre["pos"], None, pre["inputs"])
            kept_sets = {i: lay.positions.masked_fill(~lay.alive, -1) for i, lay in pol.layers.items()}
        t_prefill_evict = time.perf_counter() - t0
        s0 = pol.score_s if pol is not None else 0.0
        logits, P = pre["logits"], pre["ids"].shape[1]
        out_logits, chosen = [logits], []
        t0 = time.perf_counter()
        try:
            for i in range(n):
                tok = feed[:, i : i + 1] if feed is not None else logits.argmax(-1, keepdim=True)
                chosen.append(int(tok))
                if i == n - 1 and feed is None:
                    break
                pos = torch.tensor([[P + i]])
                if pol is not None:
                    pol.before(pos, None, fuq.logit_stats(logits).entropy)
                logits, cache = self.forward(tok, pos, cache)
                if pol is not None:
                    pol.after(cache, "decode")
                out_logits.append(logits)
        finally:
            if pol is not None:
                pol.detach()
        wall = time.perf_counter() - t0
        steps = max(1, len(out_logits) - 1)
        return {
            "logits": torch.cat(out_logits[1:], 0) if len(out_logits) > 1 else out_logits[0],
            "tokens": chosen,
            "cache_bytes": kv.cache_bytes(cache),
            "tokens_per_s": steps / wall,
            "scorer_ms_per_step": 1e3 * (pol.score_s - s0) / steps if pol else 0.0,
            "prefill_evict_ms": 1e3 * t_prefill_evict,
            "live_slots": pol.slots[-1] if pol else None,
            "kept_after_prefill": kept_sets if (pol is not None or press is not None) else None,
        }


def kvpress_compress(model, cache, pre: dict, press: str, budget: float) -> dict:
    """Compress the prefilled ``cache`` (in place) with kvpress 0.5.5's own press: ``knorm`` (KnormPress) or
    ``observed`` (ObservedAttentionPress, the per-key *mean* attention of all prompt queries, H2O's kvpress
    counterpart; its attention weights are computed here in float32). Returns the kept positions per layer."""
    from kvpress import KnormPress, ObservedAttentionPress

    out = {}
    for i, m in kv._attention_modules(model).items():
        layer = cache.layers[i]
        h, cos, sin = pre["inputs"][i]
        att = None
        if press == "observed":
            q = kv._queries(m, h, cos, sin).float()
            k = layer.keys.float().repeat_interleave(q.shape[1] // layer.keys.shape[1], dim=1)
            T = k.shape[2]
            logits = (q @ k.transpose(-1, -2)) * float(m.scaling)
            att = logits.masked_fill(torch.ones(T, T, dtype=torch.bool).triu(1), float("-inf")).softmax(-1)
        p = {"knorm": KnormPress, "observed": ObservedAttentionPress}[press](compression_ratio=1.0 - budget)
        scores = p.score(m, h, layer.keys, layer.values, att, {"position_embeddings": (cos, sin)})
        n_kept = int(layer.keys.shape[2] * budget)
        idx = scores.topk(n_kept, dim=-1).indices.sort(-1).values
        d = layer.keys.shape[-1]
        layer.keys = layer.keys.gather(2, idx[..., None].expand(*idx.shape, d)).contiguous()
        layer.values = layer.values.gather(2, idx[..., None].expand(*idx.shape, layer.values.shape[-1])).contiguous()
        out[i] = idx
    return out


def kept_overlap(a: dict, b: dict) -> float:
    """Mean over layers and heads of |A ∩ B| / |A| for two kept position sets ``{layer: [1, H, K]}`` (-1: none)."""
    vals = []
    for i in a:
        for h in range(a[i].shape[1]):
            x = {int(p) for p in a[i][0, h] if p >= 0}
            y = {int(p) for p in b[i][0, h] if p >= 0}
            vals.append(len(x & y) / max(1, len(x)))
    return sum(vals) / len(vals)


def kl_and_ppl(full: torch.Tensor, got: torch.Tensor, targets: torch.Tensor) -> tuple[float, float]:
    lp, lq = torch.log_softmax(full, -1), torch.log_softmax(got, -1)
    kl = (lp.exp() * (lp - lq)).sum(-1).mean()
    nll = -lq.gather(-1, targets[:, None]).mean()
    return float(kl), float(nll.exp())


def make_config(name: str, pre: dict, budget: float) -> dict:
    """``{"scorer", "policy", "press"}`` for :meth:`Runner.decode`."""
    P = pre["ids"].shape[1]
    if name.startswith("kvpress-"):
        return {"scorer": None, "policy": None, "press": name.split("-", 1)[1]}
    policy = None
    if name == "h2o":
        sc = kv.H2O(init=pre["h2o"])
    elif name == "h2o/mean":  # kvpress's ObservedAttentionPress scores, heavy hitters only
        sc = kv.H2O(init=pre["h2o"], mean=True, recent=0.0)
    elif name == "h2o/no-recent":  # heavy hitters only, the 32-token window (fuq's H2O before the split)
        sc = kv.H2O(init=pre["h2o"], recent=0.0)
    elif name == "h2o/recent-half":  # the split as a fixed window, set at the prefill
        sc, policy = kv.H2O(init=pre["h2o"], recent=0.0), {"window": max(32, int(budget * P / 2))}
    elif name == "uncertain":
        sc = kv.ProtectUncertain(kv.H2O(init=pre["h2o"]))
    elif name == "entropy-budget/attention":
        sc = kv.EntropyBudget(measure="attention")
    elif name == "entropy-budget/uncomp":  # UNComp's rule: budgets in proportion to the matrix entropy everywhere
        sc = kv.EntropyBudget(measure="matrix", layer_power=1.0)
    elif name == "entropy-budget/matrix-p2":
        sc = kv.EntropyBudget(measure="matrix", power=2.0)
    elif name == "knorm/prefill-only":
        sc, policy = kv.KeyNorm(), {"every": 0}
    else:
        sc = kv.make_scorer(name)
    return {"scorer": sc, "policy": policy, "press": None}


def quality(r: Runner, text: str, context: int, steps: int, rows: list, res: list, scorers, budgets,
            overlaps: list) -> None:
    ids = torch.tensor([r.tok(text)["input_ids"][: context + steps + 1]])
    if ids.shape[1] < context + steps + 1:
        raise SystemExit(f"text too short: {ids.shape[1]} tokens")
    ctx, cont = ids[:, :context], ids[:, context : context + steps + 1]
    pre = r.prefill(ctx)
    full = r.decode(pre, None, None, cont, steps)  # logits after feeding cont[i] predict cont[i + 1]
    targets = cont[0, 1:]
    _, ppl_full = kl_and_ppl(full["logits"], full["logits"], targets)
    res.append({"model": r.name, "context": context, "scorer": "full", "budget": 1.0, "kl": 0.0, "ppl": ppl_full,
                "cache_bytes": full["cache_bytes"], "tokens_per_s": full["tokens_per_s"],
                "scorer_ms_per_step": 0.0})
    rows.append([r.name, "full", 1.0, 0.0, ppl_full, full["cache_bytes"] / 2**20, full["tokens_per_s"], 0.0])
    for b in budgets:
        kept = {}
        for sc in scorers:
            h2o_ms = pre["h2o_ms"] if sc.startswith("h2o") or sc == "uncertain" else 0.0  # shared prefill mass
            got = r.decode(pre, n=steps, feed=cont, budget=b, **make_config(sc, pre, b))
            kept[sc] = got["kept_after_prefill"]
            kl, ppl = kl_and_ppl(full["logits"], got["logits"], targets)
            res.append({"model": r.name, "context": context, "scorer": sc, "budget": b, "kl": kl, "ppl": ppl,
                        "cache_bytes": got["cache_bytes"], "tokens_per_s": got["tokens_per_s"],
                        "scorer_ms_per_step": got["scorer_ms_per_step"],
                        "prefill_evict_ms": got["prefill_evict_ms"] + h2o_ms,
                        "live_slots": got["live_slots"]})
            for ours, theirs in (("knorm/prefill-only", "kvpress-knorm"), ("h2o/mean", "kvpress-observed"),
                                 ("h2o", "kvpress-observed")):
                if sc in (ours, theirs) and kept.get(ours) is not None and kept.get(theirs) is not None:
                    overlaps.append({"model": r.name, "budget": b, "fuq": ours, "kvpress": theirs,
                                     "kept_overlap": kept_overlap(kept[ours], kept[theirs])})
            rows.append([r.name, sc, b, kl, ppl, got["cache_bytes"] / 2**20, got["tokens_per_s"],
                         got["scorer_ms_per_step"]])
            print(f"  {r.name} {sc} {b}: KL {kl:.4f} ppl {ppl:.2f}", flush=True)


def haystack(r: Runner, filler: str, context: int, depth: float) -> torch.Tensor:
    fill = r.tok(filler, add_special_tokens=False)["input_ids"][: context]
    cut = int(len(fill) * depth)
    head = r.tok.decode(fill[:cut])
    tail = r.tok.decode(fill[cut:])
    return torch.tensor([r.tok(head + NEEDLE + tail + QUESTION)["input_ids"]])


def needles(r: Runner, filler: str, context: int, depths: list[float], budgets: list[float], res: list,
            scorers) -> None:
    for d in depths:
        pre = r.prefill(haystack(r, filler, context, d))
        configs = [("full", None)] + [(sc, b) for sc in scorers for b in budgets]
        for sc, b in configs:
            cfg = {"scorer": None} if sc == "full" else make_config(sc, pre, b)
            got = r.decode(pre, budget=b, feed=None, n=8, **cfg)
            answer = r.tok.decode(got["tokens"])
            res.append({"model": r.name, "depth": d, "scorer": sc, "budget": b if b else 1.0,
                        "hit": PASSCODE in answer, "answer": answer})
        print(f"  needle {r.name} depth {d}: full {res[-len(configs)]['answer']!r}", flush=True)


def plot(res: list, path: Path) -> None:
    try:
        import matplotlib
    except ImportError:
        print("matplotlib is not installed: no plot")
        return

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = sorted({x["model"] for x in res})
    fig, axes = plt.subplots(1, len(models), figsize=(6 * len(models), 4.2), squeeze=False)
    for ax, m in zip(axes[0], models, strict=True):
        for sc in sorted({x["scorer"] for x in res if x["model"] == m and x["scorer"] != "full"}):
            pts = sorted((x["budget"], x["kl"]) for x in res if x["model"] == m and x["scorer"] == sc)
            by: dict[float, list[float]] = {}
            for b, k in pts:
                by.setdefault(b, []).append(k)
            xs = sorted(by)
            ax.plot([100 * b for b in xs], [sum(by[b]) / len(by[b]) for b in xs], marker="o", label=sc)
        ax.set_xscale("log", base=2)
        ax.set_xticks([12.5, 25, 50], ["12.5", "25", "50"])
        ax.set_yscale("log")
        ax.set_xlabel("KV budget (% of tokens seen)")
        ax.set_ylabel("mean KL(full || evicted), nats")
        ax.set_title(m)
        ax.grid(True, which="both", alpha=0.3)
    axes[0][-1].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


HELDOUT_SCORERS = ("snapkv", "entropy-budget", "entropy-budget/uncomp", "entropy-budget/attention")


def heldout(args, scorers: list[str], budgets: list[float]) -> None:
    """Every held-out text of enough tokens, each configuration vs uniform SnapKV (``snapkv``, which must
    be among the scorers): mean KL, texts where it is lower, geometric mean of the per-text KL ratios."""
    import math

    steps = args.steps or 16
    qual: list = []
    used: dict[str, list[str]] = {}
    t_start = time.time()
    for name in args.models.split(","):
        r = Runner(name)
        used[name] = []
        for topic, text in heldout_texts(args.heldout):
            if len(r.tok(text)["input_ids"]) < args.context + steps + 1:
                continue
            used[name].append(topic)
            quality(r, text, args.context, steps, [], qual, scorers, budgets, [])
            for x in qual:
                x.setdefault("text", topic)
        del r
    rows, summary = [], []
    for m in used:
        for b in budgets:
            def kls(sc: str, m: str = m, b: float = b) -> list[float]:
                return [x["kl"] for x in qual if x["model"] == m and x["scorer"] == sc and x["budget"] == b]

            base = kls("snapkv")
            for sc in scorers:
                k = kls(sc)
                wins = sum(a < u for a, u in zip(k, base, strict=True))
                geo = math.exp(sum(math.log(a / u) for a, u in zip(k, base, strict=True)) / len(k))
                summary.append({"model": m, "budget": b, "scorer": sc, "mean_kl": sum(k) / len(k),
                                "lower_than_uniform": wins, "texts": len(k), "geo_ratio_vs_uniform": geo})
                rows.append([m, b, sc, sum(k) / len(k), f"{wins}/{len(k)}", geo])
    print_table(f"Budget rules vs uniform SnapKV on held-out texts ({steps} teacher-forced steps after "
                f"{args.context} tokens)", ["model", "budget", "scorer", "mean KL", "lower than uniform",
                                             "geo-mean KL ratio"], rows)
    out = write_json(args.out or f"bench_kv_heldout_{args.heldout}", {
        "args": vars(args) | {"steps": steps, "scorers": scorers, "budgets": budgets}, "texts": used,
        "summary": summary, "quality": qual, "elapsed_s": time.time() - t_start,
        "note": "KL(full || evicted) of the next-token distributions per pydoc topic. entropy-budget's default "
                "layer_power -0.5 was chosen among ~10 budget rules on the 13 'rest' texts; the 4 'bench' "
                "texts are the check on texts the choice did not see."})
    print(f"wrote {out}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="1 text, 8 steps, needles at 10/50/90 %% and 25 %% budget")
    p.add_argument("--models", default="gemma3,smollm2")
    p.add_argument("--context", type=int, default=1536, help="prompt tokens (>= 1500)")
    p.add_argument("--steps", type=int, default=None, help="teacher-forced decode steps (8 quick, 64 full)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--scorers", default=None, help="configurations to run (comma-separated; default: all, or the "
                   "budget rules with --heldout)")
    p.add_argument("--heldout", nargs="?", const="rest", choices=("rest", "bench"), default=None,
                   help="the budget rules vs uniform SnapKV per text (16 steps, 25 %%) on the 13 other long pydoc "
                        "topics (rest) or the four of the quality runs (bench)")
    p.add_argument("--budgets", default=None, help="budgets (default 0.5,0.25,0.125)")
    p.add_argument("--needle-scorers", default=",".join(NEEDLE_SCORERS))
    p.add_argument("--depths", default=None, help="needle depths (0.1,0.5,0.9 quick; 5 full)")
    p.add_argument("--out", default=None, help="result name under bench/results/")
    args = p.parse_args()
    scorers = args.scorers.split(",") if args.scorers else list(HELDOUT_SCORERS if args.heldout else SCORERS)
    budgets = [float(x) for x in args.budgets.split(",")] if args.budgets else list(BUDGETS)
    torch.set_num_threads(args.threads)
    if args.heldout:
        return heldout(args, scorers, [float(x) for x in args.budgets.split(",")] if args.budgets else [0.25])
    steps = args.steps or (8 if args.quick else 64)
    n_texts = 1 if args.quick else 2
    depths = ([float(x) for x in args.depths.split(",")] if args.depths else
              [0.1, 0.5, 0.9] if args.quick else [0.1, 0.3, 0.5, 0.7, 0.9])
    needle_budgets = [0.25] if args.quick else list(BUDGETS)
    qual: list = []
    hay: list = []
    rows: list = []
    overlaps: list = []
    t_start = time.time()
    for name in args.models.split(","):
        r = Runner(name)
        for text in texts(n_texts):
            quality(r, text, args.context, steps, rows, qual, scorers, budgets, overlaps)
        needles(r, texts(4)[-1], args.context, depths, needle_budgets, hay, args.needle_scorers.split(","))
        del r
    tag = args.out or (("bench_kv_quick" if args.quick else "bench_kv") + ("" if args.models == "gemma3,smollm2" else
                                                                          "_" + args.models.replace(",", "_")))
    cols = ["model", "scorer", "budget", "KL nats", "ppl", "cache MiB", "tok/s", "scorer ms/step"]
    print_table(f"KV eviction, teacher-forced ({steps} steps after {args.context} tokens)", cols, rows)
    # needle table
    nrows = []
    for m in sorted({x["model"] for x in hay}):
        for sc in ["full"] + args.needle_scorers.split(","):
            for b in sorted({x["budget"] for x in hay if x["scorer"] == sc}, reverse=True):
                hs = [x["hit"] for x in hay if x["model"] == m and x["scorer"] == sc and x["budget"] == b]
                if hs:
                    nrows.append([m, sc, b, f"{sum(hs)}/{len(hs)}"])
    print_table("Needle in a haystack (exact match over depths)", ["model", "scorer", "budget", "hits"], nrows)
    # entropy-proportional vs uniform at 25 %
    cmp = []
    for m in sorted({x["model"] for x in qual}):
        def mean_kl(sc: str, m: str = m) -> float:
            ks = [x["kl"] for x in qual if x["model"] == m and x["scorer"] == sc and x["budget"] == 0.25]
            return sum(ks) / len(ks) if ks else float("nan")

        e, a, u = mean_kl("entropy-budget"), mean_kl("entropy-budget/attention"), mean_kl("snapkv")
        cmp.append({"model": m, "kl_matrix_entropy": e, "kl_attention_entropy": a, "kl_uniform": u,
                    "matrix_wins": e < u, "attention_wins": a < u})
    print_table("Entropy-proportional vs uniform budget (SnapKV scores, 25 %)",
                ["model", "KL matrix entropy (UNComp)", "KL attention entropy", "KL uniform", "matrix wins"],
                [[c["model"], c["kl_matrix_entropy"], c["kl_attention_entropy"], c["kl_uniform"], c["matrix_wins"]]
                 for c in cmp])
    if overlaps:
        print_table("Kept sets after the prefill: fuq's scorer vs kvpress's own press on the same cache",
                    ["model", "budget", "fuq", "kvpress", "share of fuq's kept slots kvpress keeps"],
                    [[o["model"], o["budget"], o["fuq"], o["kvpress"], o["kept_overlap"]] for o in overlaps])
    png = RESULTS / f"{tag}.png"
    plot(qual, png)
    out = write_json(tag, {
        "args": vars(args) | {"steps": steps, "texts": list(TOPICS[:n_texts]), "depths": depths,
                              "needle_budgets": needle_budgets},
        "note": "wall clock on a shared, loaded CPU machine (see machine.loadavg); tokens/s and scorer times are "
                "indicative only. Cache bytes are measured on the cache tensors (sliding-window layers included).",
        "quality": qual, "needle": hay, "entropy_vs_uniform": cmp, "kept_overlap_with_kvpress": overlaps,
        "elapsed_s": time.time() - t_start,
    })
    print(f"wrote {out}" + (f" and {png}" if png.exists() else ""))


if __name__ == "__main__":
    main()
