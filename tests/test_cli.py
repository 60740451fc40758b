"""The ``fuq`` command end to end on a tiny randomly initialised model (no download), and fuq.viz."""

from __future__ import annotations

import io
import json
import math
import os
import re
import shutil
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import pytest
import torch

import fuq
from fuq import cli, viz
from fuq.trace import Trace

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> str:
    pytest.importorskip("transformers")
    from helpers import tiny_lm_folder

    return tiny_lm_folder(tmp_path_factory.mktemp("tiny_cli"))


def run(capsys, *argv: str) -> tuple[int, str, str]:
    rc = cli.main(list(argv))
    out = capsys.readouterr()
    return rc, out.out, out.err


class TokSpans(HTMLParser):
    """Counts ``<span class="tok">`` elements and collects their attributes and text."""

    def __init__(self):
        super().__init__()
        self.toks: list[dict] = []
        self.depth = 0  # inside a tok span: nesting depth
        self.tags: set[str] = set()

    def handle_starttag(self, tag, attrs):
        self.tags.add(tag)
        a = dict(attrs)
        if self.depth:
            self.depth += tag == "span"
        elif tag == "span" and a.get("class") == "tok":
            self.toks.append({**a, "text": ""})
            self.depth = 1

    def handle_endtag(self, tag):
        if self.depth and tag == "span":
            self.depth -= 1

    def handle_data(self, data):
        if self.depth:
            self.toks[-1]["text"] += data


def parse_html(page: str) -> TokSpans:
    p = TokSpans()
    p.feed(page)
    return p


# ---------------------------------------------------------------------------------------------
# help and argument errors (no model needed)


def test_help(capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(["--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    for cmd in ("generate", "score", "bench"):
        assert cmd in out
    for cmd, words in (
        ("generate", ["--strategy", "--max-new-tokens", "--json", "--html", "--model", "--seed"]),
        ("score", ["file", "--json", "--html", "--no-bos"]),
        ("bench", ["--quick"]),
    ):
        with pytest.raises(SystemExit) as e:
            cli.main([cmd, "--help"])
        assert e.value.code == 0
        out = capsys.readouterr().out
        for w in words:
            assert w in out, (cmd, w)


def test_no_command_prints_help(capsys):
    assert cli.main([]) == 2
    assert "generate" in capsys.readouterr().out


@pytest.mark.parametrize(
    "argv, msg",
    [
        (["generate", "hi", "--temperature", "0.7"], "greedy takes no decoding options"),
        (["generate", "hi", "--strategy", "sample", "--tau", "1"], "--tau applies to"),
        (["generate", "hi", "--strategy", "adadec", "--top-p", "0.9"], "takes only --tau"),
        (["generate", "hi", "--entropy-max", "0"], "--entropy-max"),
        (["generate", "hi", "--model", "/no/such/model/folder"], "not a known model"),
        (["score", "/no/such/file.txt"], "cannot read"),
    ],
)
def test_usage_errors(capsys, argv, msg):
    rc, out, err = run(capsys, *argv)
    assert rc == 2 and msg in err and "Traceback" not in err


@pytest.mark.parametrize(
    "argv, msg",
    [
        (["generate", "hi", "--max-new-tokens", "0"], "expected a positive integer, got 0"),
        (["generate", "hi", "--max-new-tokens", "x"], "expected a positive integer, got 'x'"),
        (["generate", "hi", "-k", "-1"], "expected an integer >= 0, got -1"),
        (["eu-plane", "a", "b", "--token-keep", "0"], "expected a number in (0, 1], got 0"),
        (["eu-plane", "a", "b", "--sample-keep", "nan"], "expected a number in [0, 1], got nan"),
        (["eu-plane", "a", "b", "--lam", "half"], "expected a number, got 'half'"),
    ],
)
def test_number_validators(capsys, argv, msg):
    """The int and fraction options share one validator factory (cli._number); argparse exits 2."""
    with pytest.raises(SystemExit) as e:
        cli.main(argv)
    assert e.value.code == 2 and msg in capsys.readouterr().err


def test_bad_choice_exits_2(capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(["generate", "hi", "--strategy", "beam"])
    assert e.value.code == 2
    with pytest.raises(SystemExit) as e:
        cli.main(["generate", "hi", "--max-new-tokens", "0"])
    assert e.value.code == 2


# ---------------------------------------------------------------------------------------------
# generate


def test_generate_json_and_html(tiny, tmp_path, capsys):
    page = tmp_path / "out.html"
    rc, out, err = run(
        capsys, "generate", "The cat", "--model", tiny, "--max-new-tokens", "8", "--json", "--html", str(page)
    )
    assert rc == 0, err
    d = json.loads(out)
    assert d["meta"]["strategy"] == "greedy" and len(d["sequences"]) == 1
    seq = d["sequences"][0]
    n = len(seq["token_ids"])
    assert 1 <= n <= 8
    for key in ("token_logprob", "max_logprob", "entropy", "varentropy", "tokens", "topk_ids", "topk_tokens"):
        assert len(seq[key]) == n, key
    assert all(len(r) == 15 for r in seq["topk_ids"]) and all(len(r) == 15 for r in seq["topk_tokens"])
    assert seq["prompt"] == "The cat"
    # greedy: the chosen token is the argmax, its log-prob the max
    assert seq["token_ids"] == seq["argmax"]
    assert seq["token_logprob"] == pytest.approx(seq["max_logprob"], abs=1e-6)
    s = seq["scores"]
    assert s["n_tokens"] == n and s["nll"] == pytest.approx(-sum(seq["token_logprob"]), rel=1e-5, abs=1e-5)
    assert s["perplexity"] == pytest.approx(math.exp(-sum(seq["token_logprob"]) / n), rel=1e-4)

    html = page.read_text(encoding="utf-8")
    p = parse_html(html)
    assert len(p.toks) == n  # exactly one element per generated token
    assert [t["text"].replace("↵", "") for t in p.toks] == seq["tokens"]
    assert [int(t["data-i"]) for t in p.toks] == list(range(n))
    for t, alts in zip(p.toks, seq["topk_tokens"], strict=True):
        data = json.loads(t["data-alts"])
        assert [a[0] for a in data] == [viz._visible(a) for a in alts]
        assert len(data) == 15 and sum(a[2] for a in data) == 1  # the chosen (argmax) one is flagged
        assert all(0 <= a[1] <= 1 for a in data)
        assert [a[1] for a in data] == sorted((a[1] for a in data), reverse=True)
    # self-contained: inline style and script, nothing fetched
    assert {"style", "script", "table"} <= p.tags and "<link" not in html and "src=" not in html
    assert "wrote" in err


def test_generate_terminal(tiny, capsys):
    rc, out, err = run(capsys, "generate", "Entropy", "--model", tiny, "--max-new-tokens", "5")
    assert rc == 0, err
    assert "Entropy" in out and "sequence scores" in out and "perplexity" in out and "confidence" in out


def _runs(ansi: str) -> list[tuple[str, str]]:
    """(SGR style, text) runs of terminal output, adjacent runs of one style merged."""
    out: list[tuple[str, str]] = []
    style = ""
    for i, part in enumerate(re.split(r"\x1b\[([0-9;]*)m", ansi)):
        if i % 2:
            style = "" if part in ("", "0") else part
        elif part:
            if out and out[-1][0] == style:
                out[-1] = (style, out[-1][1] + part)
            else:
                out.append((style, part))
    return out


@pytest.mark.parametrize("metric", ["prob", "entropy"])
def test_token_stream_prints_each_token_as_it_is_produced(tiny, metric):
    from rich.console import Console

    from fuq.generate import generate

    model, tok = fuq.models.load(tiny)

    def console():
        return Console(file=io.StringIO(), width=500, color_system="truecolor", force_terminal=True)

    stream = viz.TokenStream(tok, console(), prompt="The cat", metric=metric, entropy_max=2.0)
    after_step = []

    def hook(step, stats, tokens):
        stream(step, stats, tokens)
        after_step.append(stream.console.file.getvalue())

    tr = generate(model, tok, "The cat", max_new_tokens=8, hook=hook)
    stream.end()
    n = tr.num_tokens
    assert len(after_step) == n >= 2
    assert all(len(a) < len(b) for a, b in zip(after_step, after_step[1:], strict=False))  # grows every step
    assert stream.pieces == tr.row(0)["tokens"]  # the same text pieces as the finished trace
    # the same colours as the finished trace's terminal text
    want = console()
    want.print(viz.terminal_text(tr, 0, metric=metric, entropy_max=2.0), soft_wrap=True)
    assert _runs(stream.console.file.getvalue()) == _runs(want.file.getvalue())
    with pytest.raises(ValueError, match="one sequence"):
        stream(0, None, torch.zeros(2, dtype=torch.long))


def test_generate_streams_then_prints_the_scores(tiny, capsys, monkeypatch):
    """One prompt: the text is printed by a viz.TokenStream during generation, once; then the table."""
    from fuq.generate import generate

    calls = []
    real = viz.TokenStream.__call__
    monkeypatch.setattr(viz.TokenStream, "__call__", lambda self, *a: calls.append(a[0]) or real(self, *a))
    rc, out, err = run(capsys, "generate", "The cat", "--model", tiny, "--max-new-tokens", "6")
    assert rc == 0, err
    model, tok = fuq.models.load(tiny)
    want = generate(model, tok, "The cat", max_new_tokens=6)
    assert calls == list(range(want.num_tokens))
    text = "The cat" + "".join(want.row(0)["tokens"])
    assert out.count(text) == 1 and out.index(text) < out.index("sequence scores")
    rc, out, err = run(capsys, "generate", "The cat", "A dog", "--model", tiny, "--max-new-tokens", "3")
    assert rc == 0 and len(calls) == want.num_tokens  # a batch is printed at the end, not streamed
    assert "sequence 1" in out and "sequence scores" in out


def test_generate_matches_the_library(tiny, capsys):
    from fuq.generate import generate

    model, tok = fuq.models.load(tiny)
    want = generate(model, tok, "A small model", max_new_tokens=6)
    rc, out, _ = run(capsys, "generate", "A small model", "--model", tiny, "--max-new-tokens", "6", "--json")
    assert rc == 0
    assert json.loads(out)["sequences"][0]["token_ids"] == want.row(0)["token_ids"]


@pytest.mark.parametrize(
    "opts",
    [
        ["--strategy", "sample", "--temperature", "0.8", "--top-p", "0.9"],
        ["--strategy", "sample", "--top-k", "5", "--min-p", "0.01"],
        ["--strategy", "sample", "--typical-p", "0.9"],
        ["--strategy", "top-h", "--top-h", "0.5"],
        ["--strategy", "entropy-gated", "--tau", "0.5"],
        ["--strategy", "adadec", "--tau", "0.5"],
    ],
    ids=["sample-top-p", "sample-top-k-min-p", "typical", "top-h", "entropy-gated", "adadec"],
)
def test_generate_strategies_seeded(tiny, capsys, opts):
    argv = ["generate", "The cat", "--model", tiny, "--max-new-tokens", "6", "--json", "--seed", "3", *opts]
    rc, out1, err = run(capsys, *argv)
    assert rc == 0, err
    rc, out2, _ = run(capsys, *argv)
    a, b = json.loads(out1), json.loads(out2)
    assert a["meta"]["strategy"] == opts[1]
    assert a["sequences"][0]["token_ids"] == b["sequences"][0]["token_ids"]  # --seed makes it repeatable


def test_generate_batch(tiny, capsys):
    rc, out, err = run(
        capsys, "generate", "The cat", "Entropy measures", "--model", tiny, "--max-new-tokens", "4", "--json", "-k", "3"
    )
    assert rc == 0, err
    d = json.loads(out)
    assert [s["prompt"] for s in d["sequences"]] == ["The cat", "Entropy measures"]
    assert all(len(r) == 3 for s in d["sequences"] for r in s["topk_ids"])


@pytest.mark.subprocess
def test_generate_via_subprocess(tiny, tmp_path):
    """The module entry point (what the `fuq` console script calls) in a fresh interpreter."""
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    r = subprocess.run(
        [sys.executable, "-m", "fuq.cli", "generate", "--model", tiny, "--max-new-tokens", "8", "--json", "The cat"],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
        cwd=tmp_path,
    )
    assert r.returncode == 0, r.stderr
    d = json.loads(r.stdout)
    assert 1 <= len(d["sequences"][0]["token_ids"]) <= 8


# ---------------------------------------------------------------------------------------------
# score

SCORED = 'The cat sat on the mat.\nEntropy <measures> & "quotes".'


def test_score_file(tiny, tmp_path, capsys):
    f = tmp_path / "in.txt"
    f.write_text(SCORED, encoding="utf-8")
    page = tmp_path / "score.html"
    rc, out, err = run(capsys, "score", str(f), "--model", tiny, "--json", "--html", str(page))
    assert rc == 0, err
    seq = json.loads(out)["sequences"][0]
    assert "".join(seq["tokens"]) == SCORED
    assert json.loads(out)["meta"]["mode"] == "score"
    # the same numbers as the library
    model, tok = fuq.models.load(tiny)
    want = fuq.score_text(model, tok, SCORED)
    assert seq["token_logprob"] == pytest.approx(want.row(0)["token_logprob"], abs=1e-5)
    html = page.read_text(encoding="utf-8")
    p = parse_html(html)
    assert len(p.toks) == len(seq["token_ids"])
    assert "".join(t["text"].replace("↵", "") for t in p.toks) == SCORED  # escaped and unescaped back
    assert "&lt;" in html and "&amp;" in html and "<measures" not in html and "measures>" not in html


def test_score_stdin_terminal(tiny, capsys, monkeypatch):
    monkeypatch.setattr(sys, "stdin", io.StringIO("The cat sat on the mat."))
    rc, out, err = run(capsys, "score", "-", "--model", tiny, "--color-by", "entropy")
    assert rc == 0, err
    assert "The cat sat on the mat." in out and "entropy H" in out and "sequence scores" in out


def test_score_empty_file(tmp_path, capsys):
    f = tmp_path / "empty.txt"
    f.write_text("")
    rc, _, err = run(capsys, "score", str(f))
    assert rc == 2 and "empty" in err


# ---------------------------------------------------------------------------------------------
# bench


def test_bench_runs_the_scripts(tmp_path, capsys, monkeypatch):
    bench = tmp_path / "bench"
    bench.mkdir()
    log = tmp_path / "log.txt"
    scripts = {
        "bench_a.py": "QUICK_ARGS = ['--quick', '--n', '1']  # in the quick suite\n",
        "bench_b.py": "",  # no quick mode: skipped by --quick
        "bench_c.py": "# accepts --quick\n",  # its own quick mode, not in the suite
        "bench_e.py": "# reads FUQ_BENCH_QUICK\n",  # reads the variable: run without the flag
    }
    for name, quick in scripts.items():
        src = (
            "import os, sys\n"
            f"open({str(log)!r}, 'a').write(repr((os.path.basename(__file__), sys.argv[1:], "
            "os.environ.get('FUQ_BENCH_' + 'QUICK'))) + '\\n')\n" + quick
        )
        (bench / name).write_text(src)
    monkeypatch.setattr(cli, "bench_dir", lambda: bench)
    monkeypatch.delenv("FUQ_BENCH_QUICK", raising=False)
    # --quick alone: the quick suite, i.e. the scripts with QUICK_ARGS, run with them
    rc, out, err = run(capsys, "bench", "--quick")
    assert rc == 0, err
    assert log.read_text().splitlines() == [repr(("bench_a.py", ["--quick", "--n", "1"], "1"))]
    assert "the quick suite: a; not in it" in err and "b, c, e" in err and "1 script(s) in" in err
    # --quick with names: QUICK_ARGS, else the script's own --quick, else FUQ_BENCH_QUICK; else skipped
    log.unlink()
    rc, out, err = run(capsys, "bench", "a", "b", "c", "e", "--quick")
    assert rc == 0, err
    assert log.read_text().splitlines() == [
        repr(("bench_a.py", ["--quick", "--n", "1"], "1")),
        repr(("bench_c.py", ["--quick"], "1")),
        repr(("bench_e.py", [], "1")),
    ]
    assert "skipping bench_b.py" in err
    rc, out, _ = run(capsys, "bench", "--list")
    assert out.split() == ["a", "b", "c", "e"]
    log.unlink()
    assert run(capsys, "bench", "b")[0] == 0  # a name without --quick: the full run
    assert log.read_text().splitlines() == [repr(("bench_b.py", [], None))]
    rc, _, err = run(capsys, "bench", "nope")
    assert rc == 2 and "no benchmark 'nope'" in err
    (bench / "bench_c.py").write_text("raise SystemExit(3)\n")
    rc, _, err = run(capsys, "bench", "c")
    assert rc == 1 and "bench_c.py (exit 3)" in err


def test_bench_quick_suite_is_declared_in_bench():
    """The repository's quick suite: the scripts with QUICK_ARGS (read without importing them)."""
    suite = {s.stem: cli._quick_args(s) for s in sorted(cli.bench_dir().glob("bench_*.py"))}
    suite = {k: v for k, v in suite.items() if v is not None}
    assert suite, "no bench script declares QUICK_ARGS"
    for name, args in suite.items():
        # quick runs write their own result files, never over the full runs' ones
        assert "--out" in args and "quick" in args[args.index("--out") + 1], (name, args)


@pytest.mark.subprocess
@pytest.mark.skipif(shutil.which("fuq") is None, reason="the fuq console script is not installed")
def test_console_script_help():
    r = subprocess.run(["fuq", "--help"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and "generate" in r.stdout and "score" in r.stdout and "bench" in r.stdout


def test_bench_without_checkout(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(cli, "bench_dir", lambda: tmp_path / "bench")
    rc, _, err = run(capsys, "bench")
    assert rc == 2 and "source checkout" in err and "editable" in err


# ---------------------------------------------------------------------------------------------
# viz on hand-made traces


def hand_trace() -> Trace:
    probs = [[0.95, 0.6, 0.2, 0.01], [0.5, 0.5, 0.9, 0.9]]
    lp = torch.tensor(probs).log()
    s = fuq.logit_stats(torch.randn(2, 4, 6), k=3, tokens=torch.zeros(2, 4, dtype=torch.long))
    tr = Trace.from_stats(s, torch.zeros(2, 4, dtype=torch.long), torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0]]).bool())
    tr.token_logprob = lp
    tr.tokens = [["<a>", " b&", "\n", "c\"'"], ["x", "\n\n", "", ""]]
    tr.prompt = ["P<", "Q"]
    return tr


def test_colors():
    assert viz.color(1.0)[1] > viz.color(1.0)[0]  # green
    assert viz.color(0.0)[0] > viz.color(0.0)[1]  # red
    r, g, _ = viz.color(0.5)
    assert abs(r - g) < 10  # yellow
    assert viz.color(float("nan")) == (128, 128, 128)


def test_html_one_span_per_real_token_and_escaping():
    tr = hand_trace()
    page = viz.render_html(tr)
    p = parse_html(page)
    assert len(p.toks) == int(tr.mask.sum()) == 6
    assert [t["text"] for t in p.toks] == ["<a>", " b&", "↵\n", "c\"'", "x", "↵\n↵\n"]
    assert [float(t["data-p"]) for t in p.toks] == pytest.approx([0.95, 0.6, 0.2, 0.01, 0.5, 0.5], abs=1e-4)
    assert "&lt;a&gt;" in page and "P&lt;" in page
    # confident tokens are shaded greener than unsure ones
    greens = [int(t["style"].split("#")[1][2:4], 16) for t in p.toks[:4]]
    assert greens == sorted(greens, reverse=True)


def test_terminal_text_and_table():
    from rich.console import Console

    tr = hand_trace()
    text = viz.terminal_text(tr, 0)
    assert text.plain == "P<<a> b&↵\nc\"'"
    console = Console(file=io.StringIO(), width=120, color_system="truecolor", force_terminal=True)
    items = viz.render_terminal(tr, console, metric="entropy")
    out = console.file.getvalue()
    assert "sequence 1" in out and "perplexity" in out and "\x1b[" in out
    assert len(items) >= 5
    with pytest.raises(ValueError, match="metric must be one of"):
        viz.render_terminal(tr, console, metric="nope")


def test_json_is_strict(tiny, capsys):
    rc, out, _ = run(capsys, "generate", "The", "--model", tiny, "--max-new-tokens", "3", "--json", "-k", "400")
    assert rc == 2  # k > V is refused with a clear message, not a traceback
    tr = hand_trace()
    tr.entropy[0, 0] = float("nan")
    d = cli.trace_json(tr)
    json.dumps(d, allow_nan=False)  # NaN became null
    assert d["sequences"][0]["entropy"][0] is None
