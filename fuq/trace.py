"""``Trace``: the per-token uncertainty record of a generation (or of a scored text).

The decoding loop (``fuq.generate``) and teacher forcing (``fuq.score_text``)
both produce a ``Trace``; ``fuq.scores`` turns one into sequence scores (it reads the
fields and does not import this module, so ``Trace.deferral`` can call it), and the
CLI and ``fuq.viz`` display it. All per-token tensors are ``[B, T]`` (``[B, T, k]``
for the alternatives), on the CPU, with ``mask`` telling which positions are real
tokens (False after EOS / stop, or for padding).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from .ops import LogitStats
from .scores import Deferral, deferral

__all__ = ["Trace", "density_free_sums", "density_free_from_stats", "DENSITY_FREE_DEFAULTS", "DENSITY_FREE_STATS_KW"]

#: lm-polygraph 0.7.0's defaults for RenyiNeg / FisherRao: alpha 0.5 on softmax(logits / 2)
DENSITY_FREE_DEFAULTS = {"alpha": 0.5, "temperature": 2.0}
_EXTRA_FIELDS = ("vocab_logprob_sum", "power_sum", "sqrt_sum")


def density_free_sums(logits: Tensor, *, alpha: float = 0.5, temperature: float = 2.0) -> tuple[Tensor, Tensor, Tensor]:
    """The vocabulary sums of the density-free scores, per row of ``logits`` ``[..., V]``.

    Returns ``(Σ_v log p(v), Σ_v q(v)^α, Σ_v √q(v))``, each ``[...]`` float64, with
    ``p = softmax(logits)`` (temperature 1: SelfCertainty) and ``q = softmax(logits / temperature)``
    (RenyiNeg, FisherRao). Computed by the fused ``fuq.logit_stats(..., extra=True)`` pass
    (float32 results, float64-exact to the kernels' tolerances): at lm-polygraph's defaults
    (``α = 1/2``, ``τ = 2``) one pass at temperature 1 with ``alpha = 1/4`` gives all three
    (:func:`density_free_from_stats`); other settings take a second pass at ``τ``. A masked
    (``-inf``) logit makes ``Σ log p`` ``-inf`` (the sum runs over the whole vocabulary); a row
    with a NaN or ``+inf`` logit, or with none above ``-inf``, gives NaN.
    """
    from .ops import logit_stats

    x = logits.detach()
    if x.dtype not in (torch.float32, torch.bfloat16, torch.float16):
        x = x.float()
    a, tau = float(alpha), float(temperature)
    if a == DENSITY_FREE_DEFAULTS["alpha"] and tau == DENSITY_FREE_DEFAULTS["temperature"]:
        return density_free_from_stats(logit_stats(x, **DENSITY_FREE_STATS_KW), x.shape[-1])
    s1 = logit_stats(x, extra=True)
    sq = logit_stats(x, temperature=tau, extra=True, alpha=a)
    return (
        _sum_logp_all(s1, x.shape[-1]),
        sq.log_sum_p_alpha.double().exp(),
        sq.log_sum_sqrt_p.double().exp(),
    )


#: the ``fuq.logit_stats`` arguments whose ``extra`` fields give the sums at the defaults
#: (see :func:`density_free_from_stats`); a decoding strategy may pass them to its own stats call
DENSITY_FREE_STATS_KW = {"extra": True, "alpha": 0.25}


def _sum_logp_all(s: LogitStats, V: int) -> Tensor:
    """Σ log p over the whole vocabulary: the live sum, or -inf where a token is masked."""
    lsum = s.sum_logp.double()
    return torch.where(s.n_live.double() < V, torch.full_like(lsum, float("-inf")), lsum)  # NaN stays NaN


def density_free_from_stats(s: LogitStats, V: int) -> tuple[Tensor, Tensor, Tensor]:
    """:func:`density_free_sums` at the defaults (α = 1/2, τ = 2) from the stats of one
    ``fuq.logit_stats(logits, **DENSITY_FREE_STATS_KW)`` call at temperature 1 (``V`` the
    vocabulary size). With ``q = p^{1/2} / Σ p^{1/2}``: ``Σ q^{1/2} = Σ p^{1/4} / (Σ p^{1/2})^{1/2}``
    (the same sum is ``Σ √q``), i.e. ``log Σ q^{1/2} = log_sum_p_alpha - log_sum_sqrt_p / 2``."""
    if getattr(s, "sum_logp", None) is None:
        raise ValueError("these stats hold no vocabulary sums: call fuq.logit_stats(..., **DENSITY_FREE_STATS_KW)")
    half = (s.log_sum_p_alpha.double() - 0.5 * s.log_sum_sqrt_p.double()).exp()
    return _sum_logp_all(s, V), half, half.clone()


_STEP_FIELDS = (
    "lse",
    "entropy",
    "varentropy",
    "max_logprob",
    "argmax",
    "topk_logprobs",
    "topk_ids",
    "topk_mass",
    "token_logprob",
)


@dataclass
class Trace:
    """Per-token stats of B sequences of T tokens (nats).

    Attributes:
        token_ids: ``[B, T]`` int64, the chosen (or scored) tokens.
        mask: ``[B, T]`` bool, True where the token is real.
        lse, entropy, varentropy, max_logprob, topk_mass, token_logprob: ``[B, T]`` float32.
        argmax: ``[B, T]`` int64.
        topk_logprobs, topk_ids: ``[B, T, k]``.
        tokens: decoded text piece of every token, ``B`` lists of ``T`` strings (optional).
        prompt: the prompt text of each sequence (optional).
        text: the generated text of each sequence (optional).
        meta: free-form facts about the run (strategy, model, timings, model calls…).
        vocab_logprob_sum, power_sum, sqrt_sum: ``[B, T]`` float64 or None, the vocabulary sums of
            :func:`density_free_sums` (``Σ_v log p``, ``Σ_v q^α``, ``Σ_v √q``), recorded with
            ``extra=True``; ``meta["density_free"]`` then gives ``vocab_size``, ``alpha`` and
            ``temperature``. They feed ``fuq.scores.self_certainty / renyi_neg / fisher_rao``.
    """

    token_ids: Tensor
    mask: Tensor
    lse: Tensor
    entropy: Tensor
    varentropy: Tensor
    max_logprob: Tensor
    argmax: Tensor
    topk_logprobs: Tensor
    topk_ids: Tensor
    topk_mass: Tensor
    token_logprob: Tensor
    tokens: list[list[str]] | None = None
    prompt: list[str] | None = None
    text: list[str] | None = None
    meta: dict[str, Any] = field(default_factory=dict)
    vocab_logprob_sum: Tensor | None = None
    power_sum: Tensor | None = None
    sqrt_sum: Tensor | None = None

    @property
    def batch_size(self) -> int:
        return self.token_ids.shape[0]

    @property
    def num_tokens(self) -> int:
        return self.token_ids.shape[1]

    @classmethod
    def from_steps(cls, steps: list[LogitStats], chosen: list[Tensor], mask: list[Tensor] | None = None, **kw) -> Trace:
        """Stack per-step ``LogitStats`` (each field ``[B]`` / ``[B, k]``) and chosen ids ``[B]``.

        ``token_logprob`` of each step must be the log-prob of the chosen token.
        """
        if not steps:
            raise ValueError("steps is empty: a Trace needs at least one step")
        cols = {}
        for name in _STEP_FIELDS:
            cols[name] = torch.stack([getattr(s, name).detach().cpu() for s in steps], dim=1)
        ids = torch.stack([c.detach().cpu().to(torch.int64) for c in chosen], dim=1)
        m = (
            torch.ones_like(ids, dtype=torch.bool)
            if mask is None
            else torch.stack([x.detach().cpu().bool() for x in mask], dim=1)
        )
        return cls(token_ids=ids, mask=m, **cols, **kw)

    @classmethod
    def from_stats(cls, stats: LogitStats, token_ids: Tensor, mask: Tensor | None = None, **kw) -> Trace:
        """From ``LogitStats`` whose fields are already ``[B, T]`` / ``[B, T, k]`` (teacher forcing)."""
        cols = {name: getattr(stats, name).detach().cpu() for name in _STEP_FIELDS}
        ids = token_ids.detach().cpu().to(torch.int64)
        m = torch.ones_like(ids, dtype=torch.bool) if mask is None else mask.detach().cpu().bool()
        return cls(token_ids=ids, mask=m, **cols, **kw)

    def row(self, b: int) -> dict[str, Any]:
        """Sequence ``b`` as plain Python lists, real tokens only."""
        keep = self.mask[b]
        out: dict[str, Any] = {"token_ids": self.token_ids[b][keep].tolist()}
        for name in _STEP_FIELDS + _EXTRA_FIELDS:
            x = getattr(self, name)
            if x is not None:
                out[name] = x[b][keep].tolist()
        if self.tokens is not None:
            out["tokens"] = [t for t, k in zip(self.tokens[b], keep.tolist(), strict=False) if k]
        if self.prompt is not None:
            out["prompt"] = self.prompt[b]
        if self.text is not None:
            out["text"] = self.text[b]
        return out

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: ``{"meta": …, "sequences": [row(0), row(1), …]}``."""
        return {"meta": dict(self.meta), "sequences": [self.row(b) for b in range(self.batch_size)]}

    def deferral(self, rule: str = "chow-quantile", alpha: float = 0.1, threshold: float | None = None, *,
                 rate: float | None = None) -> Deferral:
        """Cascade deferral of each sequence (Chow-Sum / Chow-Average / Chow-Quantile α):
        see :func:`fuq.scores.deferral`. Returns ``Deferral(score [B], defer [B], …)``."""
        return deferral(self, rule=rule, alpha=alpha, threshold=threshold, rate=rate)
