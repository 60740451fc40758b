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

__all__ = ["Trace", "density_free_sums", "DENSITY_FREE_DEFAULTS"]

#: lm-polygraph 0.7.0's defaults for RenyiNeg / FisherRao: alpha 0.5 on softmax(logits / 2)
DENSITY_FREE_DEFAULTS = {"alpha": 0.5, "temperature": 2.0}
_EXTRA_FIELDS = ("vocab_logprob_sum", "power_sum", "sqrt_sum")


def density_free_sums(logits: Tensor, *, alpha: float = 0.5, temperature: float = 2.0) -> tuple[Tensor, Tensor, Tensor]:
    """The vocabulary sums of the density-free scores, per row of ``logits`` ``[..., V]``.

    Returns ``(Σ_v log p(v), Σ_v q(v)^α, Σ_v √q(v))``, each ``[...]`` float64, with
    ``p = softmax(logits)`` (temperature 1: SelfCertainty) and ``q = softmax(logits / temperature)``
    (RenyiNeg, FisherRao). Plain PyTorch in float64, the one place these sums are computed
    (a stand-in for the same sums computed inside the fused ``fuq.logit_stats`` pass).
    """
    x = logits.detach().to(torch.float64)
    logp = torch.log_softmax(x, dim=-1)
    logq = torch.log_softmax(x / float(temperature), dim=-1)
    return logp.sum(-1), torch.exp(float(alpha) * logq).sum(-1), torch.exp(0.5 * logq).sum(-1)

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
