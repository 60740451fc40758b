"""What the density-free sums cost: ``fuq.logit_stats(..., extra=True)`` against the default call,
and the default call against an earlier checkout of fuq (is it still free when not asked?).

Every figure is the median thread CPU time of one call (one thread, ``harness.cpu_time_ms``), so a
shared machine's load does not enter. Each build is timed in its own process (only one fuq can
be imported); the processes alternate ``--rounds`` times and the table gives, per case, the
median over the rounds. ``amax`` (one bare read of the logits) is timed in every process.

Usage::

    # the checkout to compare with, built in place (python setup.py build_ext --inplace):
    git worktree add --detach /tmp/fuq_before <commit> && (cd /tmp/fuq_before && python setup.py build_ext --inplace)
    python bench/bench_extra_cost.py --before /tmp/fuq_before --rounds 3

Writes ``bench/results/bench_extra_cost_cpuclock.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent


def child(args: argparse.Namespace) -> None:
    """Time the cases with the fuq on sys.path; print one JSON line."""
    import torch

    sys.path.insert(0, str(HERE))
    from bench_logit_stats import make_logits
    from harness import cpu_time_ms

    import fuq
    from fuq import _library

    torch.set_num_threads(1)
    so = getattr(_library._C, "__file__", None)  # the extension actually loaded (checked by the parent)
    res: dict[str, Any] = {"fuq": str(Path(fuq.__file__).parent), "so": so, "build": _library.CPU_BUILD, "cases": []}
    for B in args.B:
        x = make_logits(B, args.V, torch.float32, torch.device("cpu"))
        for k in args.k:
            row: dict[str, Any] = {"B": B, "V": args.V, "k": k}

            def t(fn):
                for _ in range(3):
                    fn()
                return cpu_time_ms(fn, min_run_time=args.min_run_time)

            row["amax_ms"] = t(lambda x=x: torch.amax(x, dim=-1))
            row["default_ms"] = t(lambda x=x, k=k: fuq.logit_stats(x, k))
            if args.extra:
                row["extra_ms"] = t(lambda x=x, k=k: fuq.logit_stats(x, k, extra=True))
            res["cases"].append(row)
    print(json.dumps(res), flush=True)


def run_child(tree: Path, extra: bool, args: argparse.Namespace) -> dict[str, Any]:
    env = dict(os.environ, PYTHONPATH=str(tree))
    cmd = [sys.executable, str(HERE / "bench_extra_cost.py"), "--child", "--V", str(args.V),
           "--min-run-time", str(args.min_run_time), "--B", *map(str, args.B), "--k", *map(str, args.k)]
    if extra:
        cmd.append("--extra")
    out = subprocess.run(cmd, env=env, cwd=str(tree), capture_output=True, text=True, check=True).stdout
    res = json.loads(out.strip().splitlines()[-1])
    if not res["fuq"].startswith(str(tree)) or not str(res["so"]).startswith(str(tree)):
        raise RuntimeError(f"the child imported fuq from {res['fuq']} ({res['so']}), not from {tree}")
    return res


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--B", type=int, nargs="+", default=[8, 64])
    p.add_argument("--V", type=int, default=262144)
    p.add_argument("--k", type=int, nargs="+", default=[0, 50])
    p.add_argument("--before", type=Path, default=None, help="an earlier fuq checkout, built in place")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--min-run-time", type=float, default=0.3)
    p.add_argument("--extra", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--out", default="bench_extra_cost_cpuclock")
    p.add_argument("--note", default="")
    args = p.parse_args(argv)
    if args.child:
        child(args)
        return 0
    sys.path.insert(0, str(HERE))
    from harness import print_table, write_json

    runs: dict[str, list[dict[str, Any]]] = {"after": [], "before": []}
    for r in range(args.rounds):
        runs["after"].append(run_child(ROOT, True, args))
        if args.before is not None:
            runs["before"].append(run_child(args.before.resolve(), False, args))
        print(f"round {r + 1}/{args.rounds} done", flush=True)

    def med(which: str, i: int, key: str) -> float:
        return statistics.median(run["cases"][i][key] for run in runs[which])

    rows, table = [], []
    for i, c in enumerate(runs["after"][0]["cases"]):
        row = {"B": c["B"], "V": c["V"], "k": c["k"], "amax_ms": med("after", i, "amax_ms"),
               "default_ms": med("after", i, "default_ms"), "extra_ms": med("after", i, "extra_ms")}
        row["extra_over_default"] = row["extra_ms"] / row["default_ms"]
        if runs["before"]:
            row["before_default_ms"] = med("before", i, "default_ms")
            row["after_over_before"] = row["default_ms"] / row["before_default_ms"]
        rows.append(row)
        table.append([c["B"], c["k"], f"{row['amax_ms']:.3f}", f"{row.get('before_default_ms', float('nan')):.3f}",
                      f"{row['default_ms']:.3f}", f"{row.get('after_over_before', float('nan')):.3f}",
                      f"{row['extra_ms']:.3f}", f"{row['extra_over_default']:.3f}"])
    print_table(
        f"fuq.logit_stats, V = {args.V} fp32, thread CPU ms (median of {args.rounds} processes each)",
        ["B", "k", "amax", "default before", "default after", "after/before", "extra=True", "extra/default"],
        table,
    )
    path = write_json(args.out, {
        "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "build": runs["after"][0]["build"],
        "cases": rows,
        "raw": runs,
        "note": args.note,
    })
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
