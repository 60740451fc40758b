"""Prompt / context compression by self-information: Selective Context and LLMLingua's token filter.

:func:`compress` drops the tokens (or words, or sentences) of a text that a small causal LM
finds least informative, keeping the order of the rest. Scores are self-information in
nats, ``-log p(token | prefix)``, taken from the last hidden state through
:func:`fuq.hidden_stats` (:func:`fuq.forced.teacher_forced`), never from ``[T, V]`` logits.

Methods:

* ``"self-info"`` (Selective Context, Li et al. 2023): one teacher-forced pass per text
  (several texts go in padded batches); a unit's score is the sum of its tokens'
  self-information; the highest-scored units are kept until the token budget is met,
  the rest are dropped, order kept.
* ``"llmlingua"`` (LLMLingua's iterative token-level filter, Jiang et al. 2023): the text
  is cut into segments of about ``segment`` tokens (at unit boundaries); each segment is
  scored conditioned on the *already-compressed* prefix, then thresholded to keep the
  rate of its own tokens. The prefix is never recomputed: a ``DynamicCache`` holds the
  KV of the kept tokens only. After a segment is scored the cache also holds the KV of
  all its tokens, so it is cropped back (``cache.crop(-n)``) to the compressed prefix,
  and the segment's kept tokens are fed in front of the next segment in the same model
  call, which appends their KV computed on the compressed prefix (exactly the cache a
  model reading the compressed text would build; positions are contiguous). The cost is
  one forward of ``kept + segment`` tokens per segment; a test checks every score
  against recomputing ``compressed prefix + segment`` from scratch.

``question=`` (LongLLMLingua, Jiang et al. 2024, both of its steps):

* **coarse**: the text's sentences are ranked by the question's likelihood given each of them
  alone, ``r_k = mean NLL(question + restriction | BOS + sentence_k + "\\n\\n")`` (LongLLMLingua's
  restrictive statement :data:`RESTRICTION` follows the question; one teacher-forced row per
  sentence, all sentences of all texts in padded batches). The best-ranked sentences are kept
  until :data:`COARSE_KEEP` times the token budget is reached; the others are dropped whole.
* **fine**: within the kept sentences each token is scored by its self-information *plus* the
  question contrast, ``-log p(x_i | prefix) + [log p(x_i | question, prefix) - log p(x_i | prefix)]``
  (the question is prepended as ``question + "\\n\\n"``): the contrast alone ranks away the
  surprising tokens (numbers, names) a question asks for, since the question does not predict
  them either. Each kept sentence gets a share of the budget that falls linearly with its rank
  (LongLLMLingua's dynamic compression ratio, :data:`DYNAMIC_RATIO`), unspent budget carried
  to the next; ``"llmlingua"`` runs its segment loop over the kept sentences instead.

Token units keep a number whole (its digit tokens are one unit): a tokenizer that splits
``1872`` into digits would otherwise keep ``82``.

``rate`` is the fraction of the text's tokens **kept** (LLMLingua's convention:
``rate=0.3`` keeps about 30 %); ``target_tokens`` the number kept. Units are picked
greedily by score, each one added when that brings the kept count closer to the budget,
so the rate reached (``CompressResult.rate``) is close to, not exactly, the target for
words and sentences. ``keep=`` spans are kept first and count in the budget.

Texts longer than ``max_length`` tokens (default: the model's
``max_position_embeddings``) are scored in sliding windows: windows of ``max_length``
tokens, each step half a window, every token scored once, in the window where it has at
least half a window of context. For ``"llmlingua"`` the compressed prefix is cut to its
last part when it would overflow (the cache is then rebuilt from that part, the only
recomputation). ``CompressResult.windows`` says how many windows / rebuilds were used.

Example:
    >>> import fuq
    >>> model, tok = fuq.models.load("smollm2")  # doctest: +SKIP
    >>> r = fuq.prune.compress("The cat sat on the mat. It was a sunny day.", model, tok, rate=0.5)  # doctest: +SKIP
    >>> r.text, r.rate  # doctest: +SKIP
"""

from __future__ import annotations

import math
import re
import sys
from collections.abc import Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from ..forced import _pieces_from_offsets, lm_head, teacher_forced
from ..ops import hidden_stats

__all__ = ["compress", "reselect", "CompressResult", "METHODS", "UNITS"]

METHODS = ("self-info", "llmlingua")
UNITS = ("token", "word", "sentence")

#: With a question, the coarse step keeps the best-ranked sentences up to this multiple of the token
#: budget (all of them when that exceeds the text); the fine step cuts the rest.
COARSE_KEEP = 1.5
#: With a question, the kept sentences' keep rates fall linearly with their rank, from ``1 + d`` to
#: ``1 - d`` times the mean rate (LongLLMLingua's dynamic compression ratio).
DYNAMIC_RATIO = 0.3
#: Appended to the question when sentences are ranked by its likelihood (LongLLMLingua's restrictive statement).
RESTRICTION = " We can get the answer to this question in the given documents."

#: Inputs with more tokens than this (all texts together) show a progress bar when ``progress=None``.
PROGRESS_MIN_TOKENS = 4096

#: A sentence ends after ``.!?`` (and closing quotes / brackets) followed by spaces, or at a line break;
#: group 1 / group 2 is the gap between sentences.
_SENTENCE_END = re.compile(r"[.!?]+[\"')\]]*(\s+)|(\n\s*)")


@dataclass
class CompressResult:
    """One compressed text.

    Attributes:
        text: the compressed text: the kept tokens' pieces joined, order kept.
        original: the input text.
        token_ids: ``[T]`` int64, the text's tokens (no BOS).
        tokens: the ``T`` token pieces (each with the whitespace before it); ``"".join(tokens) == original``.
        kept: ``[T]`` bool, True for a kept token.
        token_scores: ``[T]`` float32, the score that ranked the tokens (nats): self-information
            ``-log p``, or the question contrast; ``inf`` for a token that cannot be scored
            (the first one when the tokenizer has no BOS), which is always kept.
        units: ``U`` character spans ``(start, end)`` of the units (tokens, words or sentences).
        unit_of_token: ``[T]`` int64, the unit of each token.
        unit_scores: ``[U]`` float32, the sum of the unit's token scores.
        unit_kept: ``[U]`` bool.
        forced: ``[T]`` bool, tokens kept because of ``keep=``.
        rate: the rate reached, kept tokens / ``T``.
        target_rate: the rate asked for (``target_tokens / T`` when given as a count).
        method, unit, question: as passed.
        windows: sliding windows used to score the text (1 when it fits the model's context;
            for ``"llmlingua"``, 1 + the number of times the prefix was cut).
        compressed_tokens: tokens of ``text`` when tokenized again (may differ from ``kept.sum()``).
        meta: more facts (``max_length``, ``segment``, ``model_calls``).
    """

    text: str
    original: str
    token_ids: Tensor
    tokens: list[str]
    kept: Tensor
    token_scores: Tensor
    units: list[tuple[int, int]]
    unit_of_token: Tensor
    unit_scores: Tensor
    unit_kept: Tensor
    forced: Tensor
    rate: float
    target_rate: float
    method: str
    unit: str
    question: str | None
    windows: int
    compressed_tokens: int
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def num_tokens(self) -> int:
        """``T``, the tokens of the original text."""
        return int(self.token_ids.shape[0])

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: plain lists and numbers (``inf`` / NaN scores as None)."""

        def num(x: float) -> float | None:
            return float(x) if math.isfinite(x) else None

        return {
            "text": self.text,
            "original": self.original,
            "rate": self.rate,
            "target_rate": self.target_rate,
            "method": self.method,
            "unit": self.unit,
            "question": self.question,
            "windows": self.windows,
            "num_tokens": self.num_tokens,
            "kept_tokens": int(self.kept.sum()),
            "compressed_tokens": self.compressed_tokens,
            "tokens": [
                {"text": p, "id": int(i), "kept": bool(k), "score": num(float(s)), "unit": int(u), "forced": bool(f)}
                for p, i, k, s, u, f in zip(
                    self.tokens, self.token_ids.tolist(), self.kept.tolist(), self.token_scores.tolist(),
                    self.unit_of_token.tolist(), self.forced.tolist(), strict=True,
                )
            ],
            "units": [
                {"start": a, "end": b, "score": num(float(s)), "kept": bool(k)}
                for (a, b), s, k in zip(self.units, self.unit_scores.tolist(), self.unit_kept.tolist(), strict=True)
            ],
            "meta": self.meta,
        }


# ---------------------------------------------------------------------------------------------
# the public door


def compress(
    text: str | Sequence[str],
    model,
    tokenizer,
    *,
    rate: float | None = None,
    target_tokens: int | None = None,
    unit: str = "token",
    method: str = "self-info",
    question: str | Sequence[str] | None = None,
    keep: Sequence[str | tuple[int, int]] = (),
    segment: int = 200,
    max_length: int | None = None,
    batch_size: int = 8,
    progress: bool | None = None,
) -> CompressResult | list[CompressResult]:
    """Compress a text (or a batch of texts) by dropping its least informative units.

    Args:
        text: one string, or a sequence of strings (a batch: a list of results comes back).
        model: a Hugging Face causal LM (any device; scores come back on the CPU).
        tokenizer: its tokenizer; a *fast* tokenizer (character offsets are needed to cut words,
            sentences and ``keep`` spans, and to rebuild the text exactly).
        rate: fraction of the tokens to keep, in (0, 1). Default 0.5 when ``target_tokens`` is None.
        target_tokens: number of tokens to keep (>= 1), instead of ``rate``; a text with fewer
            tokens is kept whole.
        unit: ``"token"``, ``"word"`` (runs of non-space characters, from the tokenizer's offsets)
            or ``"sentence"`` (split after ``.!?`` followed by a space, and at line breaks).
        method: ``"self-info"`` or ``"llmlingua"`` (see the module docstring).
        question: a question (or one per text) to condition the scores on (LongLLMLingua's contrast).
        keep: spans never dropped: strings (every occurrence in each text) or character ranges
            ``(start, end)``; a unit touching a kept span is kept whole.
        segment: tokens per segment for ``"llmlingua"`` (>= 1).
        max_length: the longest input the model reads at once (default: its
            ``max_position_embeddings``); longer texts are scored in sliding windows.
        batch_size: texts / windows per model call for ``"self-info"`` (right-padded). ``"llmlingua"``
            compresses the texts one after the other (each segment depends on that text's kept prefix).
        progress: show a rich progress bar on stderr; None: when the input holds more than
            :data:`PROGRESS_MIN_TOKENS` tokens and stderr is a terminal.

    Returns:
        A :class:`CompressResult` (a list of them for a batch).

    Raises:
        ValueError: rate outside (0, 1), both or a bad ``target_tokens``, an unknown unit or
            method, an empty text or question, a ``keep`` string found in no text or a range
            outside a text, ``segment`` / ``batch_size`` / ``max_length`` < 1.
        TypeError: a text that is not a str, a tokenizer without character offsets.

    Example:
        >>> r = fuq.prune.compress(passage, model, tok, rate=0.5, unit="word", question="Who won?")  # doctest: +SKIP
        >>> print(r.text, r.rate)  # doctest: +SKIP
    """
    texts, single = _check_texts(text)
    questions = _check_questions(question, len(texts))
    _check_choice("unit", unit, UNITS)
    _check_choice("method", method, METHODS)
    rate = _check_rate(rate, target_tokens)
    for name, v in (("segment", segment), ("batch_size", batch_size)):
        _check_int(name, v)
    if max_length is None:
        max_length = _model_context(model)
    _check_int("max_length", max_length, low=4)
    spans = [_keep_spans(t, keep) for t in texts]
    _check_keep_strings(texts, keep)
    encs = [_encode(tokenizer, t) for t in texts]
    bos = getattr(tokenizer, "bos_token_id", None)
    prefixes = [_prefixes(tokenizer, bos, q) for q in questions]
    total = sum(len(e.ids) for e in encs)
    show = progress if progress is not None else (total > PROGRESS_MIN_TOKENS and sys.stderr.isatty())
    with _progress_bar(show, total, method) as advance:
        coarse = _coarse_rank(model, tokenizer, encs, questions, max_length, batch_size)
        if method == "self-info":
            scored = _score_self_info(model, encs, prefixes, max_length, batch_size, advance)
            results = [
                _select_global(e, s, _units(e, unit), _forced(e, sp), rate, target_tokens, coarse=c)
                for e, s, sp, c in zip(encs, scored, spans, coarse, strict=True)
            ]
        else:
            results = [
                _llmlingua_question(model, e, p, _units(e, unit), _forced(e, sp), rate, target_tokens, segment,
                                    max_length, advance, c)
                for e, p, sp, c in zip(encs, prefixes, spans, coarse, strict=True)
            ]
    out = [
        _result(e, r, method, unit, q, max_length, segment, tokenizer)
        for e, r, q in zip(encs, results, questions, strict=True)
    ]
    for r, c in zip(out, coarse, strict=True):
        r.meta["calls_coarse"] = 0 if c is None else c["calls"]
    return out[0] if single else out


def reselect(
    result: CompressResult,
    tokenizer,
    *,
    rate: float | None = None,
    target_tokens: int | None = None,
    unit: str | None = None,
) -> CompressResult:
    """The same ``"self-info"`` scores, another rate or unit: no model call.

    Self-information does not depend on what is kept, so one scoring pass serves every
    rate and unit (``keep=`` spans stay kept); with a question, the sentence ranking of the
    coarse step is reused too. ``"llmlingua"`` scores do depend on it
    (each segment is scored on the compressed prefix): run :func:`compress` again.

    Args:
        result: a ``"self-info"`` result of :func:`compress`.
        tokenizer: the tokenizer it was made with (to count ``compressed_tokens``).
        rate, target_tokens: as in :func:`compress` (default rate 0.5).
        unit: as in :func:`compress`; None keeps the result's unit.

    Example:
        >>> r = fuq.prune.compress(text, model, tok, rate=0.5)  # doctest: +SKIP
        >>> fuq.prune.reselect(r, tok, rate=0.3, unit="word").text  # doctest: +SKIP
    """
    if not isinstance(result, CompressResult):
        raise TypeError(f"result must be a CompressResult, got {type(result).__name__}")
    if result.method != "self-info":
        raise ValueError(f"reselect needs a 'self-info' result, got method {result.method!r}: run compress again")
    unit = result.unit if unit is None else unit
    _check_choice("unit", unit, UNITS)
    rate = _check_rate(rate, target_tokens)
    enc = _Enc(result.original, result.token_ids.tolist(), list(result.tokens),
               [tuple(s) for s in result.meta["token_spans"]])
    scored = {"si": None, "windows": result.windows, "calls": 0}
    c = result.meta.get("coarse")
    coarse = None if c is None else {"sent_of": _units(enc, "sentence")[0], "sentences": c["sentences"],
                                     "nll": torch.tensor(c["nll"]), "calls": 0}
    r = _select_global(enc, scored, _units(enc, unit), result.forced.tolist(), rate, target_tokens,
                       scores=result.token_scores, coarse=coarse)
    out = _result(enc, r, "self-info", unit, result.question, result.meta["max_length"], 0, tokenizer)
    out.meta["model_calls"] = 0
    return out


# ---------------------------------------------------------------------------------------------
# validation


def _check_texts(text) -> tuple[list[str], bool]:
    if isinstance(text, str):
        texts, single = [text], True
    elif isinstance(text, Sequence) and not isinstance(text, (bytes, bytearray)):
        texts, single = list(text), False
        if not texts:
            raise ValueError("text is an empty batch: pass a str or a non-empty sequence of str")
    else:
        raise TypeError(f"text must be a str or a sequence of str, got {type(text).__name__}")
    for i, t in enumerate(texts):
        if not isinstance(t, str):
            raise TypeError(f"text[{i}] must be a str, got {type(t).__name__}")
        if not t.strip():
            raise ValueError(f"text{'' if single else f'[{i}]'} is empty: nothing to compress")
    return texts, single


def _check_questions(question, n: int) -> list[str | None]:
    if question is None:
        return [None] * n
    qs = [question] * n if isinstance(question, str) else list(question)
    if len(qs) != n:
        raise ValueError(f"question must be a str or one per text ({n}), got {len(qs)}")
    for q in qs:
        if not isinstance(q, str) or not q.strip():
            raise ValueError(f"question must be a non-empty str, got {q!r}")
    return qs


def _check_choice(name: str, v, allowed: tuple[str, ...]) -> None:
    if v not in allowed:
        raise ValueError(f"{name} must be one of {allowed}, got {v!r}")


def _check_int(name: str, v, low: int = 1) -> None:
    if isinstance(v, bool) or not isinstance(v, int) or v < low:
        raise ValueError(f"{name} must be an int >= {low}, got {v!r}")


def _check_rate(rate, target_tokens) -> float | None:
    if rate is not None and target_tokens is not None:
        raise ValueError("give rate or target_tokens, not both")
    if target_tokens is not None:
        _check_int("target_tokens", target_tokens)
        return None
    if rate is None:
        return 0.5
    if isinstance(rate, bool) or not isinstance(rate, (int, float)) or not (0.0 < rate < 1.0):
        raise ValueError(f"rate must be a number in (0, 1) (the fraction of tokens kept), got {rate!r}")
    return float(rate)


def _model_context(model) -> int:
    cfg = getattr(model, "config", None)
    cfg = getattr(cfg, "get_text_config", lambda: cfg)() if cfg is not None else None
    n = getattr(cfg, "max_position_embeddings", None)
    return int(n) if isinstance(n, int) and n >= 4 else 2048


def _keep_spans(text: str, keep) -> list[tuple[int, int]]:
    if isinstance(keep, (str, bytes)) or not isinstance(keep, Sequence):
        raise TypeError(f"keep must be a sequence of strings or (start, end) ranges, got {type(keep).__name__}")
    out = []
    for item in keep:
        if isinstance(item, str):
            if not item:
                raise ValueError("keep holds an empty string")
            i = text.find(item)
            while i >= 0:
                out.append((i, i + len(item)))
                i = text.find(item, i + 1)
        elif isinstance(item, (tuple, list)) and len(item) == 2 and all(isinstance(x, int) for x in item):
            a, b = item
            if not 0 <= a < b <= len(text):
                raise ValueError(f"keep range {tuple(item)} is outside the text (0 <= start < end <= {len(text)})")
            out.append((a, b))
        else:
            raise TypeError(f"keep items must be strings or (start, end) int ranges, got {item!r}")
    return out


def _check_keep_strings(texts: list[str], keep) -> None:
    for item in keep:
        if isinstance(item, str) and not any(item in t for t in texts):
            raise ValueError(f"keep string {item!r} occurs in no text")


# ---------------------------------------------------------------------------------------------
# tokens and units


@dataclass
class _Enc:
    text: str
    ids: list[int]
    pieces: list[str]  # with the gap before each token; "".join(pieces) == text
    spans: list[tuple[int, int]]  # each token's own characters (offsets)


def _encode(tokenizer, text: str) -> _Enc:
    try:
        enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        offsets = [tuple(int(x) for x in o) for o in enc["offset_mapping"]]
    except (NotImplementedError, TypeError, KeyError, ValueError) as exc:
        raise TypeError(
            "compress needs a fast tokenizer (return_offsets_mapping=True) to map tokens to characters; "
            f"{type(tokenizer).__name__} failed: {exc}"
        ) from exc
    ids = list(enc["input_ids"])
    if not ids:
        raise ValueError(f"text has no tokens: {text!r}")
    return _Enc(text, ids, _pieces_from_offsets(text, offsets), offsets)


def _unit_spans(text: str, unit: str) -> list[tuple[int, int]]:
    if unit == "word":
        return [m.span() for m in re.finditer(r"\S+", text)]
    out, start = [], 0
    for m in _SENTENCE_END.finditer(text):
        g = 1 if m.group(1) is not None else 2
        if text[start : m.start(g)].strip():
            out.append((start, m.start(g)))
        start = m.end(g)
    if text[start:].strip():
        out.append((start, len(text)))
    return out


def _units(enc: _Enc, unit: str) -> tuple[list[int], list[tuple[int, int]]]:
    """``(unit of each token, unit char spans)``; units are runs of tokens, numbered 0..U-1 in order.

    A word's or sentence's span is its own characters (no surrounding spaces); a token's is its offsets.

    A token belongs to the unit holding its first non-space character; a whitespace-only
    token joins the next token's unit (the last ones join the previous unit). Token units are
    the tokens, except that the digit tokens of one number form one unit.
    """
    T = len(enc.ids)
    if unit == "token":  # a number's digit tokens are one unit: "1872" is never kept as "82"
        of, spans = [], []
        for a, b in enc.spans:
            if spans and enc.text[a:b].isdigit() and spans[-1][1] == a and enc.text[a - 1].isdigit():
                spans[-1] = (spans[-1][0], b)
            else:
                spans.append((a, b))
            of.append(len(spans) - 1)
        return of, spans
    owner = [-1] * (len(enc.text) + 1)
    uspans = _unit_spans(enc.text, unit)
    for u, (a, b) in enumerate(uspans):
        owner[a:b] = [u] * (b - a)
    anchor: list[int | None] = []
    for a, b in enc.spans:
        j = next((c for c in range(a, b) if not enc.text[c].isspace() and owner[c] >= 0), None)
        anchor.append(None if j is None else owner[j])
    nxt = None
    for i in range(T - 1, -1, -1):  # whitespace-only tokens lead the next unit
        anchor[i] = nxt = anchor[i] if anchor[i] is not None else nxt
    prev = 0
    for i in range(T):  # ... or close the last one
        anchor[i] = prev = anchor[i] if anchor[i] is not None else prev
    for i in range(1, T):  # monotone (a token straddling units stays in the earlier one)
        anchor[i] = max(anchor[i], anchor[i - 1])
    ids, spans, last = [], [], None
    for a in anchor:
        if a != last:
            spans.append(uspans[a])
            last = a
        ids.append(len(spans) - 1)
    return ids, spans


def _forced(enc: _Enc, spans: list[tuple[int, int]]) -> list[bool]:
    return [any(s < b and a < e or (s == e and a <= s < b) for a, b in spans) for s, e in enc.spans]


def _prefixes(tokenizer, bos: int | None, question: str | None) -> list[list[int]]:
    """Conditioning prefixes: ``[[BOS]]``, plus ``[BOS] + question + "\\n\\n"`` with a question."""
    base = [bos] if bos is not None else []
    if question is None:
        return [base]
    q = list(tokenizer(question.rstrip() + "\n\n", add_special_tokens=False)["input_ids"])
    return [base, base + q]


# ---------------------------------------------------------------------------------------------
# self-information by teacher forcing (batched, sliding windows)


def _windows(T: int, width: int) -> list[tuple[int, int, int]]:
    """``(start, lo, hi)``: the window ``[start, hi)`` scores tokens ``[lo, hi)``; every token once."""
    if T <= width:
        return [(0, 0, T)]
    step, out, lo, s = max(1, width // 2), [], 0, 0
    while lo < T:
        hi = min(s + width, T)
        out.append((s, lo, hi))
        lo, s = hi, s + step
    return out


def _jobs(encs: list[_Enc], prefixes: list[list[list[int]]], max_length: int) -> list[tuple]:
    """One model row per (text, prefix, window): ``(text, prefix index, input ids, first row, lo, hi)``."""
    jobs = []
    for t, (enc, prefs) in enumerate(zip(encs, prefixes, strict=True)):
        for p, pre in enumerate(prefs):
            width = max_length - len(pre)
            if width < 2:
                raise ValueError(f"the question takes {len(pre)} tokens: it leaves no room in max_length={max_length}")
            for s, lo, hi in _windows(len(enc.ids), width):
                jobs.append((t, p, pre + enc.ids[s:hi], len(pre) + lo - s, lo, hi))
    return jobs


def _device(model) -> torch.device:
    try:
        return next(model.parameters()).device
    except (StopIteration, AttributeError):
        return torch.device("cpu")


def _score_self_info(model, encs, prefixes, max_length: int, batch_size: int, advance) -> list[dict[str, Any]]:
    """Per text: ``{"si": [prefix][T] float32 -log p (NaN when unscorable), "windows": n, "calls": n}``."""
    jobs = _jobs(encs, prefixes, max_length)
    si = [torch.full((len(p), len(e.ids)), math.nan) for e, p in zip(encs, prefixes, strict=True)]
    windows, calls = [0] * len(encs), [0] * len(encs)
    order = sorted(range(len(jobs)), key=lambda j: -len(jobs[j][2]))
    dev = _device(model)
    for b in range(0, len(order), batch_size):
        batch = [jobs[j] for j in order[b : b + batch_size]]
        L = max(len(j[2]) for j in batch)
        ids = torch.zeros(len(batch), L, dtype=torch.long)
        att = torch.zeros(len(batch), L, dtype=torch.long)
        for r, job in enumerate(batch):
            ids[r, : len(job[2])] = torch.tensor(job[2])
            att[r, : len(job[2])] = 1
        tgt = torch.roll(ids, -1, dims=1)
        lp = _token_logprobs(model, ids.to(dev), att.to(dev), tgt.to(dev))
        for r, (t, p, _, first, lo, hi) in enumerate(batch):
            # row first-1+j predicts input position first+j = text token lo+j
            rows = torch.arange(first - 1, first - 1 + hi - lo)
            vals = torch.where(rows >= 0, -lp[r, rows.clamp(min=0)], torch.tensor(math.nan))
            si[t][p, lo:hi] = vals
            windows[t] += p == 0
            calls[t] += 1
            advance((hi - lo) / len(prefixes[t]))
    return [{"si": s, "windows": w, "calls": c} for s, w, c in zip(si, windows, calls, strict=True)]


def _token_logprobs(model, ids: Tensor, att: Tensor | None, tgt: Tensor, **kw) -> Tensor:
    """``[B, L]`` float32 CPU: row t = log p(tgt[:, t] | ids[:, :t+1])."""
    stats, cache = teacher_forced(model, ids, attention_mask=att, targets=tgt, k=0, **kw)
    return stats.token_logprob.float().cpu()


def _token_scores(si: Tensor) -> Tensor:
    """``[T]`` ranking score from ``[P, T]`` self-information: row 0 alone; with a question (row 1 the
    self-information given the question) row 0 plus the contrast ``row 0 - row 1``."""
    score = si[0] if si.shape[0] == 1 else si[0] + (si[0] - si[1])
    return torch.nan_to_num(score, nan=math.inf)


# ---------------------------------------------------------------------------------------------
# LongLLMLingua's coarse step: sentences ranked by the question's likelihood given each


def _coarse_rank(model, tokenizer, encs, questions, max_length: int, batch_size: int) -> list[dict | None]:
    """Per text (None without a question): ``{"sent_of": [T], "sentences": [(a, b)], "nll": [S], "calls": n}``:
    ``nll[k]`` (float32) is the mean ``-log p`` of the question + :data:`RESTRICTION` tokens after
    ``BOS + sentence_k + "\\n\\n"``."""
    out: list[dict | None] = [None] * len(encs)
    bos = getattr(tokenizer, "bos_token_id", None)
    base = [bos] if bos is not None else []
    rows = []  # (text, sentence, input ids, first scored row)
    for t, (enc, q) in enumerate(zip(encs, questions, strict=True)):
        if q is None:
            continue
        sent_of, spans = _units(enc, "sentence")
        tail = list(tokenizer("\n\n" + q.strip() + RESTRICTION, add_special_tokens=False)["input_ids"])
        room = max_length - len(base) - len(tail)
        if room < 1:
            raise ValueError(f"the question takes {len(tail)} tokens: it leaves no room in max_length={max_length}")
        first = [len(sent_of)] * len(spans)
        for i in range(len(sent_of) - 1, -1, -1):
            first[sent_of[i]] = i
        ends = first[1:] + [len(sent_of)]
        for k in range(len(spans)):
            body = enc.ids[first[k] : ends[k]][-room:]
            rows.append((t, k, base + body + tail, len(base) + len(body) - 1))
        out[t] = {"sent_of": sent_of, "sentences": spans, "nll": torch.full((len(spans),), math.nan), "calls": 0}
    dev = _device(model)
    order = sorted(range(len(rows)), key=lambda j: -len(rows[j][2]))
    for b in range(0, len(order), batch_size):
        batch = [rows[j] for j in order[b : b + batch_size]]
        L = max(len(r[2]) for r in batch)
        ids = torch.zeros(len(batch), L, dtype=torch.long)
        att = torch.zeros(len(batch), L, dtype=torch.long)
        for r, row in enumerate(batch):
            ids[r, : len(row[2])] = torch.tensor(row[2])
            att[r, : len(row[2])] = 1
        tgt = torch.roll(ids, -1, dims=1)
        head = lm_head(model)
        if head is None:
            lp = _token_logprobs(model, ids.to(dev), att.to(dev), tgt.to(dev))
            nll = [-lp[r, first : len(x) - 1].mean() for r, (_, _, x, first) in enumerate(batch)]
        else:  # the output layer only where the question is predicted
            rows_ = [torch.arange(first, len(x) - 1) for _, _, x, first in batch]
            want = torch.cat([tgt[r, ix] for r, ix in enumerate(rows_)]).to(dev)
            with torch.inference_mode():
                h = head.body(input_ids=ids.to(dev), attention_mask=att.to(dev)).last_hidden_state
                sel = torch.cat([h[r, ix.to(dev)] for r, ix in enumerate(rows_)]) * head.scale
                lp = hidden_stats(sel, head.weight, head.bias, targets=want, softcap=head.softcap).token_logprob
            lp = lp.float().cpu().split([len(ix) for ix in rows_])
            nll = [-x.mean() for x in lp]
        for (t, k, _, _), v in zip(batch, nll, strict=True):
            out[t]["nll"][k] = v
            out[t]["calls"] += 1
    return out


def _coarse_pick(coarse: dict, forced: list[bool], budget: int) -> list[tuple[int, float]]:
    """The kept sentences, best first, each with its token budget (fractional; they sum to ``budget``
    or to the kept sentences' tokens when fewer).

    Sentences are kept best first while that brings the kept tokens closer to ``COARSE_KEEP * budget``
    (the best one and those holding a forced token always); the i-th of K kept gets the rate
    ``rho * (1 + d * (1 - 2 i / (K - 1)))`` (``d`` = :data:`DYNAMIC_RATIO`), capped at 1, ``rho`` chosen so
    that the budgets sum to ``budget``."""
    sent_of, nll = coarse["sent_of"], coarse["nll"]
    S = len(coarse["sentences"])
    sizes = torch.bincount(torch.tensor(sent_of, dtype=torch.long), minlength=S).tolist()
    sforced = [False] * S
    for i, f in enumerate(forced):
        sforced[sent_of[i]] |= f
    rank = sorted(range(S), key=lambda k: (float(nll[k]), k))
    sforced[rank[0]] = True
    kept = _pick([-float(x) for x in nll], sizes, sforced, min(len(sent_of), COARSE_KEEP * budget))
    order = [k for k in rank if kept[k]]
    K = len(order)
    w = [1.0 + DYNAMIC_RATIO * (1.0 - 2.0 * i / (K - 1)) if K > 1 else 1.0 for i in range(K)]
    n = [sizes[k] for k in order]

    def total(rho: float) -> float:
        return sum(min(nk, rho * wk * nk) for nk, wk in zip(n, w, strict=True))

    lo, hi = 0.0, 1.0 / min(w)
    if total(hi) <= budget:
        lo = hi
    else:
        for _ in range(60):
            mid = (lo + hi) / 2
            lo, hi = (mid, hi) if total(mid) < budget else (lo, mid)
    return [(k, min(nk, lo * wk * nk)) for k, nk, wk in zip(order, n, w, strict=True)]


def _select_question(scores: Tensor, unit_of: list[int], us: Tensor, sizes: list[int], uf: list[bool],
                     forced: list[bool], coarse: dict, budget: int) -> list[bool]:
    """Units kept: the coarse step's sentences, then within each (best first) the units of highest fine
    score up to its budget, what a sentence leaves unspent carried to the next."""
    U = len(sizes)
    usent = [0] * U
    for i in range(len(unit_of) - 1, -1, -1):  # a unit's sentence is its first token's
        usent[unit_of[i]] = coarse["sent_of"][i]
    members: dict[int, list[int]] = {}
    for u in range(U):
        members.setdefault(usent[u], []).append(u)
    ukept, carry = [False] * U, 0.0
    scores_u = us.tolist()
    for k, b in _coarse_pick(coarse, forced, budget):
        mem = members.get(k, [])
        pick = _pick([scores_u[u] for u in mem], [sizes[u] for u in mem], [uf[u] for u in mem], b + carry)
        got = 0
        for u, p in zip(mem, pick, strict=True):
            ukept[u] = p
            got += sizes[u] if p else 0
        carry = b + carry - got
    return ukept


def _coarse_meta(coarse: dict | None, forced: list[bool], budget: int) -> dict | None:
    if coarse is None:
        return None
    kept = {k for k, _ in _coarse_pick(coarse, forced, budget)}
    return {"sentences": [list(x) for x in coarse["sentences"]], "nll": [float(x) for x in coarse["nll"]],
            "kept": [k in kept for k in range(len(coarse["sentences"]))]}


# ---------------------------------------------------------------------------------------------
# selection


def _budget(T: int, rate: float | None, target_tokens: int | None) -> tuple[int, float]:
    if target_tokens is not None:
        n = min(T, target_tokens)
        return n, n / T
    return max(1, round(rate * T)), rate


def _pick(scores: list[float], sizes: list[int], forced: list[bool], budget: int) -> list[bool]:
    """Units to keep: forced ones, then by descending score, each taken when it brings the count closer to budget."""
    kept = list(forced)
    n = sum(s for s, f in zip(sizes, forced, strict=True) if f)
    for u in sorted(range(len(scores)), key=lambda i: (-scores[i], i)):
        if kept[u]:
            continue
        if n + sizes[u] / 2 < budget or (scores[u] == math.inf):
            kept[u] = True
            n += sizes[u]
    return kept


def _unit_table(scores: Tensor, unit_of: list[int], forced: list[bool], n_units: int):
    uo = torch.tensor(unit_of, dtype=torch.long)
    fin = torch.where(torch.isinf(scores), torch.zeros_like(scores), scores)
    us = torch.zeros(n_units).index_add_(0, uo, fin)
    us = torch.where(torch.zeros(n_units).index_add_(0, uo, torch.isinf(scores).float()) > 0, math.inf, us)
    sizes = torch.bincount(uo, minlength=n_units).tolist()
    uf = [False] * n_units
    for i, f in enumerate(forced):
        uf[unit_of[i]] |= f
    return uo, us, sizes, uf


def _select_global(enc: _Enc, scored: dict, units, forced: list[bool], rate, target_tokens, scores=None,
                   coarse: dict | None = None) -> dict:
    unit_of, uspans = units
    scores = _token_scores(scored["si"]) if scores is None else scores
    uo, us, sizes, uf = _unit_table(scores, unit_of, forced, len(uspans))
    budget, target_rate = _budget(len(enc.ids), rate, target_tokens)
    if coarse is None:
        ukept = torch.tensor(_pick(us.tolist(), sizes, uf, budget))
    else:
        ukept = torch.tensor(_select_question(scores, unit_of, us, sizes, uf, forced, coarse, budget))
    return dict(scores=scores, unit_of=uo, uspans=uspans, uscores=us, ukept=ukept, forced=forced,
                target_rate=target_rate, windows=scored["windows"], calls=scored["calls"],
                coarse=_coarse_meta(coarse, forced, budget))


# ---------------------------------------------------------------------------------------------
# LLMLingua: segments scored on the compressed prefix, KV of the kept tokens reused


class _Stream:
    """A model reading ``prefix + compressed text`` with a KV cache of all but its last token.

    Invariant: the cache holds ``ctx[:n_cached]`` with ``n_cached = len(ctx) - 1`` (or 0):
    the last token is fed again with the next segment, so its logits predict the segment's
    first token even when the previous segment kept nothing.
    """

    def __init__(self, model, prefix: list[int], max_length: int):
        self.model, self.prefix, self.max_length = model, list(prefix), max_length
        self.ctx, self.cuts, self.calls = list(prefix), 0, 0
        self._reset_cache()

    def _reset_cache(self) -> None:
        from transformers import DynamicCache

        try:
            self.cache = DynamicCache(config=self.model.config)
        except TypeError:  # older transformers
            self.cache = DynamicCache()
        if hasattr(self.cache, "activate_past_recording"):  # sliding-window layers keep what crop may restore
            self.cache.activate_past_recording()
        self.n_cached = 0

    def _make_room(self, n_new: int) -> None:
        """Cut the compressed text to its last part when ``ctx + n_new`` would exceed max_length."""
        if len(self.ctx) + n_new <= self.max_length:
            return
        room = max(0, (self.max_length - n_new) // 2 - len(self.prefix))
        body = self.ctx[len(self.prefix) :]
        self.ctx = self.prefix + (body[len(body) - room :] if room else [])
        self.cuts += 1
        self._reset_cache()

    def score(self, seg: list[int]) -> Tensor:
        """``[len(seg)]`` float32 ``-log p(seg[j] | ctx, seg[:j])`` (NaN when nothing precedes it)."""
        self._make_room(len(seg))
        inp = self.ctx[self.n_cached :] + seg
        dev = _device(self.model)
        ids = torch.tensor([inp], dtype=torch.long, device=dev)
        tgt = torch.roll(ids, -1, dims=1)
        lp = _token_logprobs(self.model, ids, None, tgt, past_key_values=self.cache, use_cache=True)[0]
        self.calls += 1
        pend = len(inp) - len(seg)
        rows = torch.arange(pend - 1, pend - 1 + len(seg))
        out = torch.where(rows >= 0, -lp[rows.clamp(min=0)], torch.tensor(math.nan))
        keep = max(0, len(self.ctx) - 1)
        drop = self.n_cached + len(inp) - keep
        if keep == 0:
            self._reset_cache()
        elif drop > 0:
            self.cache.crop(-drop)
        self.n_cached = keep
        return out

    def extend(self, kept: list[int]) -> None:
        self.ctx += kept


def _segments(unit_of: list[int], n_units: int, segment: int) -> list[tuple[int, int]]:
    """Runs of whole units ``[u0, u1)`` holding about ``segment`` tokens each (at least one unit)."""
    sizes = [0] * n_units
    for u in unit_of:
        sizes[u] += 1
    out, start, n = [], 0, 0
    for u in range(n_units):
        n += sizes[u]
        if n >= segment:
            out.append((start, u + 1))
            start, n = u + 1, 0
    if start < n_units:
        out.append((start, n_units))
    return out


def _llmlingua_one(model, enc, prefixes, units, forced, rate, target_tokens, segment, max_length, advance):
    unit_of, uspans = units
    T, U = len(enc.ids), len(uspans)
    budget, target_rate = _budget(T, rate, target_tokens)
    seg_rate = budget / T
    longest = max(len(p) for p in prefixes)
    if longest + 2 > max_length:
        raise ValueError(f"the question takes {longest} tokens: it leaves no room in max_length={max_length}")
    segment = max(1, min(segment, (max_length - longest) // 2))
    streams = [_Stream(model, p, max_length) for p in prefixes]
    first_tok = [0] * (U + 1)
    for i in range(T - 1, -1, -1):
        first_tok[unit_of[i]] = i
    first_tok[U] = T
    si = torch.full((len(prefixes), T), math.nan)
    ukept, n_kept = [False] * U, 0
    for u0, u1 in _segments(unit_of, U, segment):
        a, b = first_tok[u0], first_tok[u1]
        seg = enc.ids[a:b]
        for p, st in enumerate(streams):
            si[p, a:b] = st.score(seg)
        scores = _token_scores(si[:, a:b])
        _, us, sizes, uf = _unit_table(scores, [u - u0 for u in unit_of[a:b]], forced[a:b], u1 - u0)
        # the budget carries over: what earlier segments kept too much or too little is made up here
        pick = _pick(us.tolist(), sizes, uf, max(0, round(seg_rate * b) - n_kept))
        ukept[u0:u1] = pick
        n_kept += sum(s for s, k in zip(sizes, pick, strict=True) if k)
        kept_ids = [enc.ids[i] for i in range(a, b) if pick[unit_of[i] - u0]]
        for st in streams:
            st.extend(kept_ids)
        advance(b - a)
    scores = _token_scores(si)
    uo, us, _, _ = _unit_table(scores, unit_of, forced, U)
    return dict(scores=scores, unit_of=uo, uspans=uspans, uscores=us, ukept=torch.tensor(ukept), forced=forced,
                target_rate=target_rate, windows=1 + streams[0].cuts, calls=sum(s.calls for s in streams),
                segment=segment)


def _llmlingua_question(model, enc, prefixes, units, forced, rate, target_tokens, segment, max_length, advance,
                        coarse):
    """``"llmlingua"``; with a question, the segment loop runs over the sentences the coarse step keeps
    (the others are dropped whole, their tokens' scores NaN)."""
    if coarse is None:
        return _llmlingua_one(model, enc, prefixes, units, forced, rate, target_tokens, segment, max_length, advance)
    T = len(enc.ids)
    budget, target_rate = _budget(T, rate, target_tokens)
    ksent = {k for k, _ in _coarse_pick(coarse, forced, budget)}
    idx = [i for i in range(T) if coarse["sent_of"][i] in ksent]
    unit_of, uspans = units
    present = sorted({unit_of[i] for i in idx})
    remap = {u: j for j, u in enumerate(present)}
    sub = _Enc(enc.text, [enc.ids[i] for i in idx], [enc.pieces[i] for i in idx], [enc.spans[i] for i in idx])
    r = _llmlingua_one(model, sub, prefixes, ([remap[unit_of[i]] for i in idx], [uspans[u] for u in present]),
                       [forced[i] for i in idx], None, min(budget, len(idx)), segment, max_length, advance)
    advance(T - len(idx))
    scores = torch.full((T,), math.nan)
    scores[idx] = r["scores"]
    ukept = torch.zeros(len(uspans), dtype=torch.bool)
    ukept[present] = r["ukept"]
    uo, us, _, _ = _unit_table(scores, unit_of, forced, len(uspans))
    return dict(r, scores=scores, unit_of=uo, uspans=uspans, uscores=us, ukept=ukept, forced=forced,
                target_rate=target_rate, coarse=_coarse_meta(coarse, forced, budget))


# ---------------------------------------------------------------------------------------------
# results and progress


def _result(enc: _Enc, r: dict, method, unit, question, max_length, segment, tokenizer) -> CompressResult:
    kept = r["ukept"][r["unit_of"]]
    text = "".join(p for p, k in zip(enc.pieces, kept.tolist(), strict=True) if k)
    n_re = len(tokenizer(text, add_special_tokens=False)["input_ids"]) if text else 0
    meta = {"max_length": max_length, "model_calls": r["calls"], "token_spans": [list(x) for x in enc.spans]}
    if method == "llmlingua":
        meta["segment"] = r["segment"]
    if r.get("coarse") is not None:
        meta["coarse"] = r["coarse"]
    return CompressResult(
        text=text,
        original=enc.text,
        token_ids=torch.tensor(enc.ids, dtype=torch.long),
        tokens=list(enc.pieces),
        kept=kept,
        token_scores=r["scores"].float(),
        units=[tuple(s) for s in r["uspans"]],
        unit_of_token=r["unit_of"],
        unit_scores=r["uscores"].float(),
        unit_kept=r["ukept"],
        forced=torch.tensor(r["forced"], dtype=torch.bool),
        rate=float(kept.float().mean()),
        target_rate=float(r["target_rate"]),
        method=method,
        unit=unit,
        question=question,
        windows=int(r["windows"]),
        compressed_tokens=n_re,
        meta=meta,
    )


def _progress_bar(show: bool, total: int, method: str):
    if not show:
        return nullcontext(lambda n: None)
    from contextlib import contextmanager

    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    @contextmanager
    def bar():
        with Progress(TextColumn(f"compress ({method})"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                      console=Console(stderr=True), transient=True) as prog:
            task = prog.add_task("tokens", total=total)
            yield lambda n: prog.advance(task, n)

    return bar()
