"""Sequence scores from per-token uncertainty records, and teacher-forced scoring of a text.

Every score takes a :class:`~fuq.trace.Trace` (``[B, T]`` per-token stats with a
``mask``) and returns one value per sequence, a ``[B]`` float32 tensor (``[B, Q]``
for :func:`prob_quantiles`). Only the positions where ``mask`` is True count.

Conventions, all in nats:

* sums over no tokens are 0 (``g_nll``, ``nll``); means, maxima and quantiles over
  no tokens are NaN (``perplexity``, ``mean_entropy``, ``epr`` …);
* a NaN in a real token's stat propagates to its sequence's score (it is reported,
  never silently dropped).

:func:`score_text` produces such a Trace for a given text by teacher forcing: one
forward pass of the model over the text, with :func:`fuq.logit_stats` run on the
logits that predict each next token.

Example:
    >>> import torch
    >>> from fuq.trace import Trace
    >>> lp = torch.log(torch.tensor([[0.5, 0.25]]))
    >>> t = Trace(token_ids=torch.zeros(1, 2, dtype=torch.long), mask=torch.ones(1, 2, dtype=torch.bool),
    ...           lse=torch.zeros(1, 2), entropy=torch.zeros(1, 2), varentropy=torch.zeros(1, 2),
    ...           max_logprob=lp, argmax=torch.zeros(1, 2, dtype=torch.long),
    ...           topk_logprobs=lp[..., None], topk_ids=torch.zeros(1, 2, 1, dtype=torch.long),
    ...           topk_mass=lp.exp(), token_logprob=lp)
    >>> round(perplexity(t).item(), 4), round(mean_prob(t).item(), 4)
    (2.8284, 0.375)
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Sequence
from typing import Any, NamedTuple

import torch
from torch import Tensor

from .ops import _HIDDEN_MAX_ROWS, LogitStats, hidden_stats, logit_stats
from .trace import Trace

__all__ = [
    "g_nll",
    "nll",
    "perplexity",
    "mean_entropy",
    "max_entropy",
    "mean_varentropy",
    "geometric_mean_prob",
    "mean_prob",
    "epr",
    "prob_quantiles",
    "weighted_mean",
    "summary",
    "score_text",
    "SCORE_NAMES",
]

#: The keys of :func:`summary`'s dicts, in display order (besides ``n_tokens`` and ``epr_k``).
SCORE_NAMES = (
    "g_nll",
    "nll",
    "perplexity",
    "mean_entropy",
    "max_entropy",
    "mean_varentropy",
    "geometric_mean_prob",
    "mean_prob",
    "epr",
    "prob_q05",
    "prob_q25",
    "prob_q50",
)

_PER_TOKEN_FIELDS = ("lse", "entropy", "varentropy", "max_logprob", "topk_mass", "token_logprob")


# ---------------------------------------------------------------------------------------------
# helpers


def _check_trace(trace: Trace) -> None:
    if not isinstance(trace, Trace):
        raise TypeError(f"trace must be a fuq.trace.Trace, got {type(trace).__name__}")
    if trace.mask.shape != trace.token_ids.shape:
        raise ValueError(f"trace.mask has shape {tuple(trace.mask.shape)}, token_ids {tuple(trace.token_ids.shape)}")


def _field(trace: Trace, name: str) -> Tensor:
    x = getattr(trace, name)
    if x is None:
        raise ValueError(f"trace.{name} is None: this trace was recorded without it")
    if x.shape != trace.mask.shape:
        raise ValueError(f"trace.{name} has shape {tuple(x.shape)}, expected [B, T] = {tuple(trace.mask.shape)}")
    return x.to(torch.float32)


def _masked_sum(x: Tensor, mask: Tensor) -> Tensor:
    """Σ of ``x`` [B, T] over ``mask``; masked-out entries (even NaN / inf) do not count."""
    return torch.where(mask, x, torch.zeros_like(x)).sum(dim=1)


def _count(mask: Tensor) -> Tensor:
    return mask.sum(dim=1).to(torch.float32)


def _masked_mean(x: Tensor, mask: Tensor) -> Tensor:
    """Mean over the masked positions; NaN for a row with no real token."""
    return _masked_sum(x, mask) / _count(mask)  # 0 / 0 = NaN


# ---------------------------------------------------------------------------------------------
# scores


def g_nll(trace: Trace) -> Tensor:
    """G-NLL: ``-Σ_t max log p_t`` over the real tokens, ``[B]`` float32 (nats).

    The negative log-likelihood of the greedy path; Aichberger et al. show it is a
    strong, cheap uncertainty score for a generated answer.
    """
    _check_trace(trace)
    return -_masked_sum(_field(trace, "max_logprob"), trace.mask)


def nll(trace: Trace) -> Tensor:
    """Sequence negative log-likelihood ``-Σ_t log p(token_t)``, ``[B]`` float32 (nats)."""
    _check_trace(trace)
    return -_masked_sum(_field(trace, "token_logprob"), trace.mask)


def perplexity(trace: Trace) -> Tensor:
    """``exp(mean_t -log p(token_t))``, ``[B]`` float32; NaN for an empty sequence."""
    _check_trace(trace)
    return torch.exp(-_masked_mean(_field(trace, "token_logprob"), trace.mask))


def mean_entropy(trace: Trace) -> Tensor:
    """Mean over tokens of the predictive entropy ``H_t``, ``[B]`` float32 (nats)."""
    _check_trace(trace)
    return _masked_mean(_field(trace, "entropy"), trace.mask)


def max_entropy(trace: Trace) -> Tensor:
    """Largest predictive entropy of the sequence, ``[B]`` float32 (nats); NaN if empty."""
    _check_trace(trace)
    h = _field(trace, "entropy")
    if h.shape[1] == 0:
        return torch.full((h.shape[0],), math.nan)
    # amax propagates NaN: a NaN among the real tokens is reported, as documented.
    out = torch.where(trace.mask, h, torch.full_like(h, -math.inf)).amax(dim=1)
    return torch.where(trace.mask.any(dim=1), out, torch.full_like(out, math.nan))


def mean_varentropy(trace: Trace) -> Tensor:
    """Mean over tokens of the varentropy ``Var[-log p]``, ``[B]`` float32 (nats²)."""
    _check_trace(trace)
    return _masked_mean(_field(trace, "varentropy"), trace.mask)


def geometric_mean_prob(trace: Trace) -> Tensor:
    """``exp(mean_t log p(token_t))`` = 1 / perplexity, ``[B]`` float32 in [0, 1]."""
    _check_trace(trace)
    return torch.exp(_masked_mean(_field(trace, "token_logprob"), trace.mask))


def mean_prob(trace: Trace) -> Tensor:
    """Arithmetic mean of the chosen-token probabilities ``p(token_t)``, ``[B]`` float32."""
    _check_trace(trace)
    return _masked_mean(torch.exp(_field(trace, "token_logprob")), trace.mask)


def epr(trace: Trace, K: int = 15) -> Tensor:
    """Entropy-production rate: mean over tokens of ``-Σ_{j<K} p_j log p_j`` over the top-K, ``[B]`` float32.

    The top-K probabilities are the model's own (NOT renormalised over the K), as in
    the EPR paper; a top-K entry at ``-inf`` (fewer than K live tokens) contributes 0.

    Args:
        trace: needs ``topk_logprobs`` ``[B, T, k]`` with ``k >= K``.
        K: how many alternatives to sum over, ``K >= 1``.
    """
    _check_trace(trace)
    if isinstance(K, bool) or not isinstance(K, int) or K < 1:
        raise ValueError(f"K must be an int >= 1, got {K!r}")
    lp = trace.topk_logprobs
    if lp is None or lp.dim() != 3 or lp.shape[:2] != trace.mask.shape:
        raise ValueError(f"trace.topk_logprobs must be [B, T, k], got {None if lp is None else tuple(lp.shape)}")
    if lp.shape[2] < K:
        raise ValueError(
            f"epr needs K = {K} alternatives per token but the trace holds only k = {lp.shape[2]}; "
            f"record it with k >= {K} or pass a smaller K"
        )
    lp = lp[..., :K].to(torch.float32)
    p = lp.exp()
    plogp = torch.where(lp == -math.inf, torch.zeros_like(lp), p * lp)
    return _masked_mean(-plogp.sum(dim=2), trace.mask)


def prob_quantiles(trace: Trace, qs: Sequence[float] = (0.05, 0.25, 0.5)) -> Tensor:
    """Quantiles of the chosen-token probability ``p(token_t)`` per sequence, ``[B, len(qs)]`` float32.

    Linear interpolation between order statistics (``torch.quantile``'s default, as
    numpy's ``"linear"``). Low quantiles are the cascade-deferral signal ("how bad
    are the worst tokens"). A sequence with no real token gets NaN.
    """
    _check_trace(trace)
    qs = [float(q) for q in qs]
    if not qs:
        raise ValueError("qs is empty: give at least one quantile in [0, 1]")
    bad = [q for q in qs if not 0.0 <= q <= 1.0]
    if bad:
        raise ValueError(f"qs must all be in [0, 1], got {bad}")
    p = torch.exp(_field(trace, "token_logprob"))
    qt = torch.tensor(qs, dtype=torch.float32)
    out = torch.full((trace.batch_size, len(qs)), math.nan, dtype=torch.float32)
    for b in range(trace.batch_size):
        row = p[b][trace.mask[b]]
        if row.numel():
            out[b] = torch.quantile(row, qt)
    return out


def weighted_mean(trace: Trace, weights: Tensor, field: str = "token_logprob") -> Tensor:
    """``Σ_t w_t x_t / Σ_t w_t`` over the real tokens, ``[B]`` float32.

    The SAR-style relevance-weighted score: ``weights`` are the caller's per-token
    importances (e.g. how much the meaning changes without the token); only their
    ratios matter, as they are normalised over the masked tokens of each sequence.

    Args:
        trace: the record.
        weights: ``[B, T]`` finite, ``>= 0``; entries outside the mask are ignored.
        field: a ``[B, T]`` float field of the trace (``"token_logprob"``, ``"entropy"``,
            ``"max_logprob"``, ``"varentropy"``, ``"topk_mass"``, ``"lse"``), or
            ``"token_nll"`` / ``"token_prob"`` for ``-token_logprob`` / ``exp(token_logprob)``.

    Returns:
        ``[B]``; NaN for a sequence whose real tokens have zero total weight.
    """
    _check_trace(trace)
    if field == "token_nll":
        x = -_field(trace, "token_logprob")
    elif field == "token_prob":
        x = torch.exp(_field(trace, "token_logprob"))
    elif field in _PER_TOKEN_FIELDS:
        x = _field(trace, field)
    else:
        raise ValueError(f"field must be one of {_PER_TOKEN_FIELDS + ('token_nll', 'token_prob')}, got {field!r}")
    w = torch.as_tensor(weights)
    if w.dtype.is_complex or w.dtype == torch.bool:
        raise TypeError(f"weights must be a real tensor, got {w.dtype}")
    if tuple(w.shape) != tuple(trace.mask.shape):
        raise ValueError(f"weights must have shape [B, T] = {tuple(trace.mask.shape)}, got {tuple(w.shape)}")
    w = w.detach().to("cpu", torch.float32)
    wm = torch.where(trace.mask, w, torch.zeros_like(w))
    if not torch.isfinite(wm).all():
        raise ValueError("weights must be finite on the real (masked) tokens")
    if (wm < 0).any():
        raise ValueError(f"weights must be >= 0, got a minimum of {wm.min().item()}")
    return _masked_sum(wm * x, trace.mask) / wm.sum(dim=1)


def summary(trace: Trace, K: int = 15, qs: Sequence[float] = (0.05, 0.25, 0.5)) -> list[dict[str, Any]]:
    """All sequence scores, one dict of Python floats per sequence.

    Keys: ``n_tokens``, the :data:`SCORE_NAMES` (``prob_qXX`` for each quantile in ``qs``)
    and ``epr_k``, the K used for ``epr``: ``min(K, trace's k)``; ``epr`` is None when
    the trace holds no alternatives.
    """
    _check_trace(trace)
    k = trace.topk_logprobs.shape[-1] if trace.topk_logprobs is not None else 0
    kk = min(K, k)
    cols: dict[str, Tensor | None] = {
        "g_nll": g_nll(trace),
        "nll": nll(trace),
        "perplexity": perplexity(trace),
        "mean_entropy": mean_entropy(trace),
        "max_entropy": max_entropy(trace),
        "mean_varentropy": mean_varentropy(trace),
        "geometric_mean_prob": geometric_mean_prob(trace),
        "mean_prob": mean_prob(trace),
        "epr": epr(trace, kk) if kk > 0 else None,
    }
    quant = prob_quantiles(trace, qs)
    n = trace.mask.sum(dim=1)
    out = []
    for b in range(trace.batch_size):
        d: dict[str, Any] = {"n_tokens": int(n[b])}
        for name, v in cols.items():
            d[name] = None if v is None else float(v[b])
        for j, q in enumerate(qs):
            d[f"prob_q{round(100 * float(q)):02d}"] = float(quant[b, j])
        d["epr_k"] = kk
        out.append(d)
    return out


# ---------------------------------------------------------------------------------------------
# teacher forcing


class LMHead(NamedTuple):
    """A causal LM split at its output layer: ``logits = softcap(scale · body(x) @ weight.T + bias)``."""

    body: Any  #: the decoder: ``body(input_ids=..., ...)`` -> ``.last_hidden_state [B, L, d]``
    weight: Tensor  #: ``[V, d]`` output embedding (tied or not)
    bias: Tensor | None  #: ``[V]`` or None
    scale: float  #: multiplies the hidden state (Cohere's logit_scale, 1 / Granite's logits_scaling)
    softcap: float | None  #: Gemma's final logit soft-capping, or None


def lm_head(model) -> LMHead | None:
    """The :class:`LMHead` of a Hugging Face causal LM, or None when it has not the usual structure.

    With it, :func:`fuq.hidden_stats` gives the statistics of every position from the
    last hidden state and the output embedding, without the ``[T, V]`` logits.
    """
    get_dec = getattr(model, "get_decoder", None)
    get_head = getattr(model, "get_output_embeddings", None)
    if get_dec is None or get_head is None:
        return None
    try:
        dec, head = get_dec(), get_head()
    except Exception:  # noqa: BLE001 - any failure means "not the usual structure"
        return None
    weight = getattr(head, "weight", None)
    if dec is None or dec is model or not isinstance(head, torch.nn.Linear) or weight is None:
        return None
    cfg = getattr(model, "config", None)
    cfg = getattr(cfg, "get_text_config", lambda: cfg)() if cfg is not None else None
    scale = float(getattr(cfg, "logit_scale", None) or 1.0)  # Cohere: logits * logit_scale
    scale /= float(getattr(cfg, "logits_scaling", None) or 1.0)  # Granite: logits / logits_scaling
    softcap = getattr(cfg, "final_logit_softcapping", None)
    return LMHead(dec, weight, head.bias, scale, None if softcap is None else float(softcap))


def teacher_forced(
    model,
    input_ids: Tensor,
    *,
    attention_mask: Tensor | None = None,
    targets: Tensor | None = None,
    k: int = 0,
    past_key_values: Any = None,
    use_cache: bool = False,
    chunk: int | None = None,
    **model_kwargs: Any,
) -> tuple[LogitStats, Any]:
    """Per-position statistics of a causal LM by teacher forcing, never holding ``[B, L, V]``.

    Row ``t`` of the result is the distribution that predicts the token after position
    ``t``. The model body runs once; the output layer goes through :func:`fuq.hidden_stats`
    (logits are built a vocabulary chunk at a time and never stored). Models without the
    usual Hugging Face structure (see :func:`lm_head`) fall back to ``model(...).logits``.

    Args:
        model: a Hugging Face causal LM.
        input_ids: ``[B, L]`` int64.
        attention_mask: ``[B, L_past + L]`` or None.
        targets: ``[B, L]`` ids whose log-probability each row gives (``token_logprob``),
            or None: then the result covers positions ``0 .. L-2`` predicting
            ``input_ids[:, 1:]`` (``[B, L-1]`` fields).
        k: top tokens per position.
        past_key_values, use_cache: passed to the model (continue from a cache).
        chunk: vocabulary columns of the logits built at once (``fuq.hidden_stats``'s
            ``chunk``); None picks one.
        model_kwargs: more model arguments (``position_ids``, ``cache_position`` …).

    Returns:
        ``(LogitStats with leading dims [B, L] or [B, L-1], the model's past_key_values or None)``.

    Example:
        >>> stats, _ = fuq.scores.teacher_forced(model, ids)  # doctest: +SKIP
        >>> stats.token_logprob.shape  # [B, L - 1]  # doctest: +SKIP
    """
    if input_ids.dim() != 2:
        raise ValueError(f"input_ids must be [B, L], got shape {tuple(input_ids.shape)}")
    L = input_ids.shape[1]
    if targets is None:
        if L < 2:
            raise ValueError("input_ids must hold at least 2 positions when targets is None")
        keep, tgt = slice(0, L - 1), input_ids[:, 1:]
    else:
        if tuple(targets.shape) != tuple(input_ids.shape):
            raise ValueError(f"targets must be [B, L] = {tuple(input_ids.shape)}, got {tuple(targets.shape)}")
        keep, tgt = slice(0, L), targets
    head = lm_head(model)
    fn = head.body if head is not None else model
    kw = dict(model_kwargs, attention_mask=attention_mask, use_cache=use_cache)
    if past_key_values is not None:  # transformers >= 5 names it ``cache``, earlier ``past_key_values``
        kw["cache" if "cache" in inspect.signature(fn.forward).parameters else "past_key_values"] = past_key_values
    with torch.inference_mode():
        if head is not None:
            out = head.body(input_ids=input_ids, **kw)
            h = out.last_hidden_state[:, keep]
            bias = head.bias
            if head.scale != 1.0:  # logits = scale · (h @ W.T + b) = (scale · h) @ W.T + scale · b
                h = h * head.scale
                bias = None if bias is None else bias * head.scale
            stats = hidden_stats(h, head.weight, bias, k=k, targets=tgt, softcap=head.softcap, chunk=chunk)
        else:
            out = model(input_ids=input_ids, **kw)
            stats = logit_stats(out.logits[:, keep], k=k, tokens=tgt)
    cache = getattr(out, "cache", None)
    if cache is None:
        cache = getattr(out, "past_key_values", None)
    return stats, (cache if use_cache else None)


def _pieces_from_offsets(text: str, offsets: list[tuple[int, int]]) -> list[str]:
    """The text of each token, with the gap before it (spaces the tokenizer drops) included."""
    out, prev = [], 0
    for _, end in offsets:
        end = max(end, prev)
        out.append(text[prev:end])
        prev = end
    if out:
        out[-1] += text[prev:]
    return out


def _pieces_by_decoding(tokenizer, ids: list[int], context: list[int]) -> list[str]:
    """Text of each token: decode(window + token) minus decode(window), a few tokens of context."""
    out = []
    full = list(context) + list(ids)
    off = len(context)
    for i in range(len(ids)):
        lo = max(0, off + i - 4)
        prev = tokenizer.decode(full[lo : off + i], skip_special_tokens=False)
        cur = tokenizer.decode(full[lo : off + i + 1], skip_special_tokens=False)
        out.append(cur[len(prev) :] if cur.startswith(prev) else tokenizer.decode([ids[i]], skip_special_tokens=False))
    return out


def _encode(tokenizer, text: str, add_bos: bool) -> tuple[list[int], list[str], str]:
    """``(ids, pieces of ids[1:], context text of ids[0])`` for one text."""
    pieces: list[str] | None = None
    try:
        enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        ids = list(enc["input_ids"])
        pieces = _pieces_from_offsets(text, [tuple(o) for o in enc["offset_mapping"]])
    except (NotImplementedError, TypeError, KeyError, ValueError):
        ids = list(tokenizer(text, add_special_tokens=False)["input_ids"])
    bos = getattr(tokenizer, "bos_token_id", None)
    if add_bos and bos is not None:
        ids = [bos] + ids
        if pieces is not None:
            pieces = [""] + pieces
    if len(ids) < 2:
        raise ValueError(
            f"text must hold at least 2 tokens (with BOS) to be scored, got {len(ids)}: {text!r}"
            + ("" if add_bos else "; pass add_bos=True")
        )
    if pieces is None:
        pieces = [""] + _pieces_by_decoding(tokenizer, ids[1:], ids[:1])
    bos_text = "" if (add_bos and bos is not None) else (pieces[0] if pieces[0] else tokenizer.decode(ids[:1]))
    return ids, pieces[1:], bos_text


def _stats_one(model, ids: Tensor, k: int, chunk: int) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """LogitStats of positions 0..T-2 predicting ids[1:], each field ``[T-1]`` / ``[T-1, k]``.

    Through :func:`teacher_forced`: the model body once, then :func:`fuq.hidden_stats` on the
    last hidden state, ``chunk`` vocabulary columns at a time (``[T-1, V]`` is never held).
    """
    stats, _ = teacher_forced(model, ids[None], k=k, chunk=chunk)
    fields = {name: getattr(stats, name)[0].cpu() for name in stats._fields}
    return fields, {"model_calls": 1, "chunked_head": lm_head(model) is not None}


def score_text(
    model,
    tokenizer,
    text: str | Sequence[str],
    *,
    k: int = 15,
    add_bos: bool = True,
    max_chunk_elems: int = 1 << 25,
) -> Trace:
    """Per-token uncertainty of a given text by teacher forcing: one forward pass, no generation.

    The model reads the whole text once (prefill); its last hidden state and output
    embedding go through :func:`fuq.hidden_stats` (via :func:`teacher_forced`) with the
    real next token as ``targets``, so ``token_logprob`` is the log-probability of the
    text's own token. The logits are built a vocabulary chunk at a time (at most
    ``max_chunk_elems`` of them at once), so ``[T, V]`` is never held for a long text.

    Args:
        model: a Hugging Face causal LM (``model(input_ids).logits`` ``[1, T, V]``).
        tokenizer: its tokenizer (a fast tokenizer gives exact token texts via offsets).
        text: one string, or several (each scored in its own pass; the Trace is
            right-padded, with ``mask`` False on the padding).
        k: alternatives kept per token (``topk_logprobs`` / ``topk_ids`` ``[B, T, k]``).
        add_bos: prepend the tokenizer's BOS token (when it has one), so the first
            token of the text is scored too; otherwise the first token is only context.
        max_chunk_elems: bound on the ``positions × vocabulary chunk`` logits built at once.

    Returns:
        :class:`Trace` with ``T = max`` scored tokens, ``tokens`` (text pieces),
        ``text`` (the input texts), ``prompt`` (the unscored first token's text, or
        "" with BOS) and ``meta`` (``mode="score"``, ``k``, ``model_calls``).

    Example:
        >>> trace = fuq.score_text(model, tokenizer, "The cat sat on the mat.")  # doctest: +SKIP
        >>> fuq.scores.perplexity(trace)  # doctest: +SKIP
    """
    texts = [text] if isinstance(text, str) else list(text)
    if not texts or not all(isinstance(t, str) for t in texts):
        raise TypeError("text must be a str or a non-empty sequence of str")
    if isinstance(k, bool) or not isinstance(k, int) or k < 0:
        raise ValueError(f"k must be an int >= 0, got {k!r}")
    try:
        device = next(model.parameters()).device
    except (StopIteration, AttributeError):
        device = torch.device("cpu")
    rows, pieces_all, ctx_all, calls = [], [], [], 0
    for t in texts:
        ids, pieces, ctx = _encode(tokenizer, t, add_bos)
        chunk = max(1, max_chunk_elems // max(1, min(len(ids) - 1, _HIDDEN_MAX_ROWS)))  # rows x chunk logits
        fields, info = _stats_one(model, torch.tensor(ids, dtype=torch.long, device=device), k, chunk)
        calls += info["model_calls"]
        rows.append((torch.tensor(ids[1:], dtype=torch.long), fields))
        pieces_all.append(pieces)
        ctx_all.append(ctx)
    B, T = len(rows), max(r[0].shape[0] for r in rows)
    mask = torch.zeros(B, T, dtype=torch.bool)
    token_ids = torch.zeros(B, T, dtype=torch.long)
    cols: dict[str, Tensor] = {}
    for b, (tid, f) in enumerate(rows):
        n = tid.shape[0]
        mask[b, :n] = True
        token_ids[b, :n] = tid
        for name, v in f.items():
            if name not in cols:
                fill = 0 if not v.dtype.is_floating_point else math.nan
                cols[name] = torch.full((B, T, *v.shape[1:]), fill, dtype=v.dtype)
            cols[name][b, :n] = v
        pieces_all[b] = pieces_all[b] + [""] * (T - n)
    name = getattr(getattr(model, "config", None), "_name_or_path", None) or type(model).__name__
    return Trace(
        token_ids=token_ids,
        mask=mask,
        **cols,
        tokens=pieces_all,
        prompt=ctx_all,
        text=texts,
        meta={"mode": "score", "model": name, "k": k, "add_bos": add_bos, "model_calls": calls},
    )
