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

__all__ = ["Trace"]

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
        for name in _STEP_FIELDS:
            out[name] = getattr(self, name)[b][keep].tolist()
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
