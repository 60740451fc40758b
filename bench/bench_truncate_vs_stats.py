"""Truncation per knob over one ``logit_stats`` pass (k = 0), CPU, thread CPU time; A / B builds.

Issue 16.2 asks for every knob within 3x of one statistics pass at B = 8, V = 262144. This
times, in one process per tree, ``fuq.logit_stats(x, k=0)`` and ``fuq.truncate(x, <knob>)``
for each knob of bench_truncate (its LLM-like rows), one thread, median thread CPU time, the
ops interleaved within each round; the ratio truncate / stats is taken in the same process.
With ``--a TREE`` (a source tree with its extension built in place) the rounds alternate
between that tree and this one, so both builds see the same machine load. ``--isa`` picks the
CPU builds timed: ``v4`` (fuq._C_v4, AVX-512, where the CPU has it) and ``avx2`` (fuq._C, the
x86-64-v3 build, forced with FUQ_MARCH=native in the child's environment); the JSON holds one
result per build.

Usage::

    python bench/bench_truncate_vs_stats.py --rounds 3 --out truncate_vs_stats_cpuclock
    python bench/bench_truncate_vs_stats.py --a /tmp/base_tree --rounds 3 --out ...
    python bench/bench_truncate_vs_stats.py --isa avx2 --out ...

Writes ``bench/results/<out>.json``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))


def child(args: argparse.Namespace) -> None:
    import torch

    torch.set_num_threads(1)
    from bench_truncate import KNOBS, cpu_time_ms, make_logits

    import fuq
    from fuq import _library

    x = make_logits(args.B, args.V)
    ops = {}
    if not args.no_stats:
        ops["logit_stats_k0"] = lambda: fuq.logit_stats(x, k=0)
    for name, value in KNOBS.items():
        ops[name] = (lambda kw: lambda: fuq.truncate(x, **kw))({name: value})
    out = {name: cpu_time_ms(fn, min_run_time=args.min_run_time, warmup=2) for name, fn in ops.items()}
    print(json.dumps({"fuq": fuq.__file__, "ext": _library.CPU_BUILD, "ms": out}))


ISA_ENV = {"v4": {}, "avx2": {"FUQ_MARCH": "native"}}  # avx2: fuq._library loads fuq._C
ISA_EXT = {"v4": "_C_v4", "avx2": "_C"}


def run_tree(tree: Path, args: argparse.Namespace, no_stats: bool = False, isa: str = "v4") -> dict:
    env = dict(os.environ, PYTHONPATH=str(tree), **ISA_ENV[isa])
    if isa == "v4":
        env.pop("FUQ_MARCH", None)
    cmd = [sys.executable, str(tree / "bench" / Path(__file__).name), "--child", "--B", str(args.B), "--V",
           str(args.V), "--min-run-time", str(args.min_run_time)]
    if no_stats:
        cmd.append("--no-stats")
    if not (tree / "bench" / Path(__file__).name).exists():
        cmd[1] = str(Path(__file__).resolve())
    res = subprocess.run(cmd, env=env, cwd=tree, capture_output=True, text=True, check=True)
    data = json.loads(res.stdout.strip().splitlines()[-1])
    if not data["fuq"].startswith(str(tree)):
        raise SystemExit(f"{tree}: fuq imported from {data['fuq']}")
    if data["ext"] is None:
        raise SystemExit(f"{tree}: no C++ extension loaded (build it in place first)")
    if data["ext"] != ISA_EXT[isa]:
        raise SystemExit(f"{tree}: asked for {isa} ({ISA_EXT[isa]}), loaded {data['ext']}")
    return data


def run_isa(isa: str, trees: dict[str, Path], args: argparse.Namespace) -> dict:
    runs: dict[str, list[dict]] = {k: [] for k in trees}
    for r in range(args.rounds):
        order = list(trees) if r % 2 == 0 else list(trees)[::-1]
        for side in order:
            no_stats = args.no_stats or (args.stats_from_a and side == "B")
            runs[side].append(run_tree(trees[side], args, no_stats=no_stats, isa=isa))
            print(f"[{isa}] round {r + 1}: {side} done", flush=True)
    if args.stats_from_a:
        for xa, xb in zip(runs["A"], runs["B"], strict=True):
            xb["ms"] = {"logit_stats_k0": xa["ms"]["logit_stats_k0"], **xb["ms"]}
    result: dict = {}
    for side, rs in runs.items():
        names = list(rs[0]["ms"])
        med = {n: statistics.median(x["ms"][n] for x in rs) for n in names}
        # the ratio per round (same process), then its median
        ratio = {
            n: statistics.median(x["ms"][n] / x["ms"].get("logit_stats_k0", math.nan) for x in rs) for n in names
        }
        result[side] = {"tree": str(trees[side]), "fuq": rs[0]["fuq"], "ext": rs[0]["ext"], "median_ms": med,
                        "over_stats": ratio, "rounds": [x["ms"] for x in rs]}
    return result


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--B", type=int, default=8)
    p.add_argument("--V", type=int, default=262144)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--min-run-time", type=float, default=0.3)
    p.add_argument("--a", type=Path, default=None, help="baseline tree A (extension built in place)")
    p.add_argument("--a-label", default="A")
    p.add_argument("--b-label", default="this tree")
    p.add_argument("--note", default="")
    p.add_argument("--out", default="truncate_vs_stats_cpuclock")
    p.add_argument(
        "--stats-from-a",
        action="store_true",
        help="time logit_stats in tree A only and take B's ratios over A's stats of the same round "
        "(for a B build holding only the truncate kernels)",
    )
    p.add_argument("--no-stats", action="store_true", help="time truncate only (B / A, no ratio to logit_stats)")
    p.add_argument("--isa", nargs="+", choices=sorted(ISA_ENV), default=["v4", "avx2"])
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        child(args)
        return 0
    trees = {"B": HERE.parent}
    if args.a is not None:
        trees = {"A": args.a.resolve(), "B": HERE.parent}
    loadavg_start = os.getloadavg()
    results: dict = {}
    for isa in args.isa:
        results[isa] = result = run_isa(isa, trees, args)
        names = list(result["B"]["median_ms"])
        print(f"[{isa}] {'op':16s}" + "".join(f" {s + ' ms':>10s} {s + '/stats':>9s}" for s in result) +
              ("   B/A" if "A" in result else ""))
        for n in names:
            line = f"[{isa}] {n:16s}" + "".join(
                f" {result[s]['median_ms'][n]:10.3f} {result[s]['over_stats'][n]:9.2f}" for s in result)
            if "A" in result:
                line += f" {result['B']['median_ms'][n] / result['A']['median_ms'][n]:6.3f}"
            print(line)
    from harness import write_json

    payload = {
        "stats_from_a": args.stats_from_a,
        "B": args.B,
        "V": args.V,
        "rounds": args.rounds,
        "clock": "thread CPU time, 1 thread",
        "labels": {"A": args.a_label, "B": args.b_label},
        "note": args.note,
        "result": results,
        "argv": sys.argv[1:],
        "loadavg_start": loadavg_start,
        "loadavg_end": os.getloadavg(),
    }
    print(write_json(args.out, payload))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
