"""The executable specification of fuq's ops, in plain PyTorch.

Every kernel (C++, Triton, CUDA) is tested against these functions, and these
functions are tested against float64 maths (``tests/test_reference.py``). They
favour clarity over speed: a reviewer should be able to check each one against
its definition in a minute.

Conventions shared by all ops:

* ``logits`` is ``[B, V]``; ``z = logits.float() / temperature`` (the division
  is done in float32, as every kernel does it).
* ``logp = log_softmax(z)``, ``p = exp(logp)``; all maths in float32.
* Entries at ``-inf`` are masked tokens: they have ``p = 0`` and contribute 0 to
  every sum (``0 * log 0 = 0``).
* Ties in top-k are broken by the lower token index (stable order), and
  ``argmax`` is the first index of the maximum.
* A row that is all ``-inf`` has ``lse = -inf`` and NaN log-probabilities,
  entropy and varentropy. A row holding a NaN (or ``+inf``) has NaN ``lse``,
  entropy, varentropy and log-probabilities; its ids are unspecified but always
  valid indices.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["logit_stats", "log_softmax_t"]


def log_softmax_t(logits: Tensor, temperature: float = 1.0) -> Tensor:
    """``log_softmax(logits.float() / temperature)`` over the last dim, float32."""
    z = logits.float() / temperature
    return torch.log_softmax(z, dim=-1)


def _masked(logp: Tensor, value: Tensor) -> Tensor:
    """``value`` where the token is live, 0 where it is masked (logp = -inf)."""
    return torch.where(logp == float("-inf"), torch.zeros_like(value), value)


def logit_stats(
    logits: Tensor,
    k: int = 0,
    tokens: Tensor | None = None,
    temperature: float = 1.0,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Reference for ``fuq::logit_stats`` on ``logits: [B, V]``.

    Returns ``(lse, entropy, varentropy, max_logprob, argmax, topk_logprobs,
    topk_ids, topk_mass, token_logprob)``; ``token_logprob`` is ``[B]``, or
    empty ``[0]`` when ``tokens`` is None. Entropies are in nats.
    """
    B, V = logits.shape
    z = logits.float() / temperature
    lse = torch.logsumexp(z, dim=-1)
    logp = torch.log_softmax(z, dim=-1)
    p = logp.exp()
    entropy = -_masked(logp, p * logp).sum(-1)
    # Var[-log p] = sum p (log p + H)^2 ; the centred form is the stable one.
    varentropy = _masked(logp, p * (logp + entropy[:, None]) ** 2).sum(-1)
    max_logprob = logp.amax(dim=-1)
    argmax = torch.argmax(z, dim=-1)  # first index among ties
    # Order on z, not logp: z - lse can round two different z to one logp.
    order = torch.sort(z, dim=-1, descending=True, stable=True).indices[:, :k]
    topk_ids = order.to(torch.int64).contiguous()
    topk_logprobs = logp.gather(-1, topk_ids)
    topk_mass = topk_logprobs.exp().sum(-1)
    if tokens is None:
        token_logprob = torch.empty((0,), device=logits.device)
    else:
        t = tokens.to(torch.int64)
        ok = (t >= 0) & (t < V)
        token_logprob = logp.gather(-1, t.clamp(0, V - 1)[:, None])[:, 0]
        token_logprob = torch.where(ok, token_logprob, torch.full_like(token_logprob, float("nan")))
    return lse, entropy, varentropy, max_logprob, argmax, topk_logprobs, topk_ids, topk_mass, token_logprob
