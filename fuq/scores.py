"""Sequence scores from per-token uncertainty records: pure functions of a Trace, no model.

Every score takes a :class:`~fuq.trace.Trace` (``[B, T]`` per-token stats with a
``mask``) and returns one value per sequence, a ``[B]`` float32 tensor (``[B, Q]``
for :func:`prob_quantiles`). Only the positions where ``mask`` is True count.

Conventions, all in nats:

* sums over no tokens are 0 (``g_nll``, ``nll``); means, maxima and quantiles over
  no tokens are NaN (``perplexity``, ``mean_entropy``, ``epr`` …);
* a NaN in a real token's stat propagates to its sequence's score (it is reported,
  never silently dropped).

A Trace comes from :func:`fuq.generate`, or for a given text from :func:`fuq.score_text`
(teacher forcing, in :mod:`fuq.forced`: the module that runs models). :func:`deferral`
thresholds the Chow scores for a model cascade (``Trace.deferral`` and
:func:`fuq.adaptive.deferral` are this function).

This module imports nothing of fuq at run time (the Trace is read by its fields), so
``fuq.trace`` can offer ``Trace.deferral`` without an import circle.

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

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, NamedTuple

import torch
from torch import Tensor

if TYPE_CHECKING:
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
    "logprob_quantiles",
    "weighted_mean",
    "self_certainty",
    "renyi_neg",
    "fisher_rao",
    "token_sar",
    "summary",
    "UNCERTAINTY_SIGN",
    "SCORE_NAMES",
    "DENSITY_FREE_SCORES",
    "deferral",
    "Deferral",
    "DEFERRAL_RULES",
    "DEFAULT_DEFERRAL_THRESHOLDS",
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
#: the keys :func:`summary` adds when the trace holds the vocabulary sums (recorded with ``extra=True``)
DENSITY_FREE_SCORES = ("self_certainty", "renyi_neg", "fisher_rao")

#: +1 where a higher score means a more uncertain sequence, -1 where it means a more confident one
#: (error detection and rejection read ``sign * score`` as the uncertainty).
UNCERTAINTY_SIGN = {
    "g_nll": 1,
    "nll": 1,
    "perplexity": 1,
    "mean_entropy": 1,
    "max_entropy": 1,
    "mean_varentropy": 1,
    "geometric_mean_prob": -1,
    "mean_prob": -1,
    "epr": 1,
    "prob_q05": -1,
    "prob_q25": -1,
    "prob_q50": -1,
    "self_certainty": 1,
    "renyi_neg": -1,
    "fisher_rao": -1,
    "token_sar": 1,
}

#: the per-token fields the density-free scores read (``None`` in a Trace recorded without them)
DENSITY_FREE_FIELDS = ("vocab_logprob_sum", "power_sum", "sqrt_sum")

_PER_TOKEN_FIELDS = ("lse", "entropy", "varentropy", "max_logprob", "topk_mass", "token_logprob")


# ---------------------------------------------------------------------------------------------
# helpers


def _check_trace(trace: Trace) -> None:
    # A Trace is recognised by its fields (the class is not imported here: see the module docstring).
    if not (isinstance(getattr(trace, "mask", None), Tensor) and isinstance(getattr(trace, "token_ids", None), Tensor)):
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


def _check_qs(qs: Sequence[float]) -> list[float]:
    qs = [float(q) for q in qs]
    if not qs:
        raise ValueError("qs is empty: give at least one quantile in [0, 1]")
    bad = [q for q in qs if not 0.0 <= q <= 1.0]
    if bad:
        raise ValueError(f"qs must all be in [0, 1], got {bad}")
    return qs


def _masked_quantiles(x: Tensor, mask: Tensor, qs: list[float]) -> Tensor:
    """Quantiles of each row's masked entries of ``x`` [B, T], ``[B, len(qs)]``; NaN for an empty row."""
    qt = torch.tensor(qs, dtype=torch.float32)
    out = torch.full((x.shape[0], len(qs)), math.nan, dtype=torch.float32)
    for b in range(x.shape[0]):
        row = x[b][mask[b]]
        if row.numel():
            out[b] = torch.quantile(row, qt)
    return out


def prob_quantiles(trace: Trace, qs: Sequence[float] = (0.05, 0.25, 0.5)) -> Tensor:
    """Quantiles of the chosen-token probability ``p(token_t)`` per sequence, ``[B, len(qs)]`` float32.

    Linear interpolation between order statistics (``torch.quantile``'s default, as
    numpy's ``"linear"``). Low quantiles are the cascade-deferral signal ("how bad
    are the worst tokens"). A sequence with no real token gets NaN.
    """
    _check_trace(trace)
    qs = _check_qs(qs)
    return _masked_quantiles(torch.exp(_field(trace, "token_logprob")), trace.mask, qs)


def logprob_quantiles(trace: Trace, qs: Sequence[float] = (0.05, 0.25, 0.5)) -> Tensor:
    """Quantiles of the chosen-token log-probability ``log p(token_t)``, ``[B, len(qs)]`` float32 (nats).

    As :func:`prob_quantiles` but interpolating the log-probabilities (the two differ
    between order statistics); Chow-Quantile deferral is minus one of these.
    """
    _check_trace(trace)
    qs = _check_qs(qs)
    return _masked_quantiles(_field(trace, "token_logprob"), trace.mask, qs)


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


# ---------------------------------------------------------------------------------------------
# density-free scores (lm-polygraph's SelfCertainty, RenyiNeg, FisherRao): they read sums over the
# whole vocabulary that the Trace holds when it was recorded with ``extra=True``


def _density_free(trace: Trace, name: str) -> tuple[Tensor, dict[str, float]]:
    x = getattr(trace, name, None)
    if x is None:
        raise ValueError(
            f"trace.{name} is None: record the trace with extra=True (fuq.generate(..., extra=True)) "
            "to get the vocabulary sums the density-free scores need"
        )
    if x.shape != trace.mask.shape:
        raise ValueError(f"trace.{name} has shape {tuple(x.shape)}, expected [B, T] = {tuple(trace.mask.shape)}")
    info = (getattr(trace, "meta", None) or {}).get("density_free")
    if not info or "vocab_size" not in info:
        raise ValueError("trace.meta['density_free'] must give vocab_size (and alpha, temperature)")
    return x.to(torch.float64), info


def self_certainty(trace: Trace) -> Tensor:
    """lm-polygraph's SelfCertainty: ``-mean_t KL(U || p_t)``, ``[B]`` float32 (higher = more uncertain).

    ``KL(U || p_t) = -(1/V) Σ_v log p_t(v) - log V`` is the divergence of the model's
    next-token distribution (temperature 1) from the uniform one over the V tokens
    ("Scalable Best-of-N Selection via Self-Certainty", Kang et al., 2025); lm-polygraph
    0.7.0 returns minus its mean over the tokens, as here. Needs ``trace.vocab_logprob_sum``
    (``Σ_v log p_t(v)``, recorded with ``extra=True``). lm-polygraph drops ``-inf`` entries of
    its log-probabilities and counts the rest; fuq uses the vocabulary size, the same whenever
    no logit is ``-inf`` (a model's own distribution).
    """
    _check_trace(trace)
    s, info = _density_free(trace, "vocab_logprob_sum")
    V = float(info["vocab_size"])
    kl = -s / V - math.log(V)
    return (-_masked_mean(kl, trace.mask)).to(torch.float32)


def renyi_neg(trace: Trace) -> Tensor:
    """lm-polygraph's RenyiNeg, ``[B]`` float32: ``mean_t [log Σ_v q_t(v)^α / (α − 1) − log V]``.

    ``q_t = softmax(logits / τ)`` with lm-polygraph's defaults ``α = 0.5``, ``τ = 2`` (the
    ones recorded in ``trace.meta["density_free"]``). This is lm-polygraph 0.7.0's formula
    exactly: the Rényi divergence ``D_α(q_t || U)`` minus ``2 log V``. Note its direction:
    it is LARGER for a peaked (confident) distribution (``−log V`` for one sure token,
    ``−2 log V`` for the uniform one), although lm-polygraph's docstring says "higher = more
    uncertain"; :data:`UNCERTAINTY_SIGN` records -1 for it. Needs ``trace.power_sum``
    (``Σ_v q_t(v)^α``, recorded with ``extra=True``).
    """
    _check_trace(trace)
    s, info = _density_free(trace, "power_sum")
    alpha, V = float(info["alpha"]), float(info["vocab_size"])
    if alpha == 1.0:
        raise ValueError("renyi_neg with alpha = 1 is the KL divergence: record the trace with alpha != 1")
    r = torch.log(s) / (alpha - 1.0) - math.log(V)
    return _masked_mean(r, trace.mask).to(torch.float32)


def fisher_rao(trace: Trace) -> Tensor:
    """lm-polygraph's FisherRao, ``[B]`` float32: ``mean_t (2/π) arccos(Σ_v √q_t(v) / √V)``.

    The Fisher-Rao distance of ``q_t = softmax(logits / τ)`` (``τ = 2``, lm-polygraph's
    default) from the uniform distribution, scaled to [0, 1]: 0 for the uniform, near 1 for
    one sure token, so, as :func:`renyi_neg`, larger = more confident (sign -1). Needs
    ``trace.sqrt_sum`` (``Σ_v √q_t(v)``, recorded with ``extra=True``).
    """
    _check_trace(trace)
    s, info = _density_free(trace, "sqrt_sum")
    V = float(info["vocab_size"])
    c = (s / math.sqrt(V)).clamp(-1.0, 1.0)  # rounding can push Σ√q / √V a hair past 1
    return _masked_mean(2.0 / math.pi * torch.arccos(c), trace.mask).to(torch.float32)


def token_sar(trace: Trace, similarity: Tensor) -> Tensor:
    """TokenSAR (Duan et al., "Shifting Attention to Relevance"), ``[B]`` float32 nats (higher = more uncertain).

    ``Σ_t −log p(token_t) · R_t / Σ_t R_t`` with the relevance ``R_t = 1 − similarity_t``,
    where ``similarity_t`` is how similar the answer stays without token t (a sentence
    similarity model's output, given by the caller): lm-polygraph 0.7.0's TokenSAR.

    Args:
        trace: the record (uses ``token_logprob`` and ``mask``).
        similarity: ``[B, T]`` in [0, 1] (entries outside the mask are ignored).
    """
    sim = torch.as_tensor(similarity)
    if sim.dtype.is_complex or sim.dtype == torch.bool:
        raise TypeError(f"similarity must be a real tensor, got {sim.dtype}")
    return weighted_mean(trace, 1.0 - sim.detach().to("cpu", torch.float32), field="token_nll")


def summary(trace: Trace, K: int = 15, qs: Sequence[float] = (0.05, 0.25, 0.5)) -> list[dict[str, Any]]:
    """All sequence scores, one dict of Python floats per sequence.

    Keys: ``n_tokens``, the :data:`SCORE_NAMES` (``prob_qXX`` for each quantile in ``qs``)
    and ``epr_k``, the K used for ``epr``: ``min(K, trace's k)``; ``epr`` is None when
    the trace holds no alternatives. ``self_certainty``, ``renyi_neg`` and ``fisher_rao``
    (:data:`DENSITY_FREE_SCORES`) are there only when the trace holds the vocabulary sums
    (recorded with ``extra=True``).
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
    if all(getattr(trace, f, None) is not None for f in DENSITY_FREE_FIELDS):
        cols.update(self_certainty=self_certainty(trace), renyi_neg=renyi_neg(trace), fisher_rao=fisher_rao(trace))
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
# cascade deferral: the Chow rules of "Language Model Cascades: Token-level uncertainty and
# beyond" (Gupta et al., 2024), thresholded

DEFERRAL_RULES = ("chow-sum", "chow-average", "chow-quantile")
#: defaults when neither ``threshold`` nor ``rate`` is given (heuristics; tune them on your data):
#: Chow-Sum 16 nats in all; Chow-Average 1 nat per token (geometric-mean p < 0.37);
#: Chow-Quantile: the α-quantile token has p < 0.1.
DEFAULT_DEFERRAL_THRESHOLDS = {"chow-sum": 16.0, "chow-average": 1.0, "chow-quantile": -math.log(0.1)}
_ALIASES = {
    "sum": "chow-sum",
    "chow-sum": "chow-sum",
    "average": "chow-average",
    "avg": "chow-average",
    "mean": "chow-average",
    "chow-avg": "chow-average",
    "chow-mean": "chow-average",
    "chow-average": "chow-average",
    "quantile": "chow-quantile",
    "chow-quantile": "chow-quantile",
}


class Deferral(NamedTuple):
    """Per-sequence cascade decision; ``score`` is an uncertainty (higher = defer)."""

    score: Tensor  #: [B] float32 (NaN for a sequence without tokens)
    defer: Tensor  #: [B] bool, score > threshold
    rule: str
    alpha: float
    threshold: float


def deferral(
    trace: Trace,
    rule: str = "chow-quantile",
    alpha: float = 0.1,
    threshold: float | None = None,
    *,
    rate: float | None = None,
) -> Deferral:
    """Should each generation be deferred to a larger model? (LM-cascade Chow rules.)

    With ``l_t`` = log p of the t-th chosen token of a sequence (real tokens only), the score
    is an uncertainty, higher meaning "defer":

    * ``"chow-sum"``: ``Σ_t −l_t`` (the sequence NLL, :func:`nll`);
    * ``"chow-average"``: ``mean_t −l_t`` (length-normalised);
    * ``"chow-quantile"``: ``−quantile_α(l)`` (:func:`logprob_quantiles`), minus the α-quantile
      (linear interpolation) of the token log-probs: the confidence of the sequence's weakest
      tokens. Small α looks at the worst tokens (α = 0 is the minimum).

    Also :func:`fuq.adaptive.deferral` and ``Trace.deferral``.

    Args:
        trace: a :class:`~fuq.trace.Trace` (uses ``token_logprob`` and ``mask``).
        rule: one of ``"chow-sum"``, ``"chow-average"``, ``"chow-quantile"``.
        alpha: the quantile, in [0, 1] (``chow-quantile`` only).
        threshold: defer where ``score > threshold`` (nats).
        rate: instead of ``threshold``: defer this fraction of the batch, the most uncertain
            (the threshold is the ``1 - rate`` quantile of the scores).

    Returns:
        :class:`Deferral` ``(score [B], defer [B], rule, alpha, threshold)``. Without
        ``threshold`` or ``rate``, the threshold is ``DEFAULT_DEFERRAL_THRESHOLDS[rule]``.
    """
    _check_trace(trace)
    key = _ALIASES.get(str(rule).lower().replace("_", "-"))
    if key is None:
        raise ValueError(f"rule must be one of {list(DEFERRAL_RULES)}, got {rule!r}")
    if not isinstance(alpha, (int, float)) or not 0.0 <= float(alpha) <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha!r}")
    if threshold is not None and rate is not None:
        raise ValueError("give threshold or rate, not both")
    if rate is not None and not 0.0 <= float(rate) <= 1.0:
        raise ValueError(f"rate must be in [0, 1], got {rate!r}")
    n = trace.mask.sum(dim=1)
    if key == "chow-sum":
        score = nll(trace)
    elif key == "chow-average":
        score = nll(trace) / n.clamp_min(1)
    else:
        score = -logprob_quantiles(trace, [float(alpha)])[:, 0]
    score = torch.where(n > 0, score, torch.full_like(score, math.nan))
    if rate is not None:
        # defer the round(rate * n) most uncertain: the cut sits between the k-th and (k+1)-th scores
        live = torch.sort(score[~torch.isnan(score)], descending=True).values
        k = int(round(float(rate) * live.numel()))
        if k == 0:
            thr = math.inf
        elif k == live.numel():
            thr = -math.inf
        else:
            thr = 0.5 * float(live[k - 1] + live[k])
    else:
        thr = float(DEFAULT_DEFERRAL_THRESHOLDS[key] if threshold is None else threshold)
    defer = score > thr  # NaN -> False
    return Deferral(score, defer, key, float(alpha), thr)
