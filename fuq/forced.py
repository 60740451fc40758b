"""Running a model over a given text: teacher forcing, without ever holding ``[B, L, V]`` logits.

* :func:`lm_head` splits a Hugging Face causal LM at its output layer;
* :func:`teacher_forced` runs the model body once and its output layer through
  :func:`fuq.hidden_stats` (logits built a vocabulary chunk at a time, never stored),
  giving :class:`~fuq.LogitStats` of every position;
* :func:`score_text` does that for a text and returns a :class:`~fuq.trace.Trace`, which
  the pure sequence scores of :mod:`fuq.scores` turn into one value per sequence.

This module runs models; :mod:`fuq.scores` never does (it only reads a Trace).

Example:
    >>> trace = fuq.score_text(model, tokenizer, "The cat sat on the mat.")  # doctest: +SKIP
    >>> fuq.scores.perplexity(trace)  # doctest: +SKIP
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

__all__ = ["LMHead", "lm_head", "teacher_forced", "score_text"]



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
        >>> stats, _ = fuq.forced.teacher_forced(model, ids)  # doctest: +SKIP
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
