"""Adaptive decoding helpers: AdaDec's learned entropy threshold, and cascade deferral.

* :func:`calibrate_threshold` learns the entropy ``tau`` above which AdaDec pauses and
  reranks, as the AdaDec paper does ("Towards Better Code Generation: Adaptive Decoding
  with Uncertainty Guidance"): teacher forcing over reference texts gives, per position,
  the step entropy and whether the reference token is ranked first; a 1-D logistic
  regression of "ranked first" on entropy with balanced classes is fitted; the probability
  cut that maximises the (class-balanced) accuracy is turned back into an entropy.
* :func:`deferral` scores whole generations for a model cascade, with the Chow rules of
  "Language Model Cascades: Token-level uncertainty and beyond" (Gupta et al., 2024):
  Chow-Sum, Chow-Average and Chow-Quantile over the chosen tokens' log-probabilities. It is
  a pure function of a Trace, so it lives with the other sequence scores
  (:func:`fuq.scores.deferral`) and is re-exported here.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, NamedTuple

import torch
from torch import Tensor

from .forced import teacher_forced
from .scores import DEFAULT_DEFERRAL_THRESHOLDS, DEFERRAL_RULES, Deferral, deferral

__all__ = [
    "calibrate_threshold",
    "teacher_forcing_entropy",
    "fit_threshold",
    "Threshold",
    "deferral",
    "Deferral",
    "DEFERRAL_RULES",
    "DEFAULT_DEFERRAL_THRESHOLDS",
]


# --------------------------------------------------------------------------------------------
# AdaDec threshold


class Threshold(NamedTuple):
    """A learned entropy threshold and how it was found."""

    tau: float  #: nats; AdaDec reranks where the step entropy is above it
    p_cut: float  #: the probability cut of the logistic model that ``tau`` corresponds to
    weight: float  #: logistic slope per nat (negative: more entropy, less often ranked first)
    bias: float  #: logistic intercept
    accuracy: float  #: accuracy of "ranked first iff entropy <= tau" (class-balanced if asked)
    n: int  #: positions used
    n_first: int  #: of which the reference token was ranked first


def _texts_to_ids(tokenizer: Any, texts: Sequence[Any]) -> list[Tensor]:
    out = []
    for i, t in enumerate(texts):
        if isinstance(t, Tensor):
            ids = t.reshape(-1).long()
        elif tokenizer is None:
            raise ValueError(f"texts[{i}] is a {type(t).__name__}; without a tokenizer give id tensors")
        elif isinstance(t, str):
            ids = torch.tensor(tokenizer(t)["input_ids"], dtype=torch.long)
        else:
            raise TypeError(f"texts[{i}] must be a str or a 1-D id tensor, got {type(t).__name__}")
        out.append(ids)
    return out


@torch.no_grad()
def teacher_forcing_entropy(
    model: Any, tokenizer: Any, texts: Sequence[str | Tensor], *, max_length: int = 1024
) -> tuple[Tensor, Tensor]:
    """Per position of every text: the step entropy and whether the next reference token is the argmax.

    Args:
        model: a causal LM (Hugging Face structure: through :func:`fuq.forced.teacher_forced`;
            otherwise it must return ``.logits`` ``[1, T, V]``).
        tokenizer: its tokenizer (special tokens added as for generation), or None when
            ``texts`` are id tensors.
        texts: reference texts (str) or 1-D id tensors; each needs >= 2 tokens.
        max_length: texts are cut to this many tokens.

    Returns:
        ``(entropy, first)``: ``[N]`` float32 nats and ``[N]`` bool, N = Σ (len - 1).
    """
    if isinstance(texts, (str, Tensor)) or len(texts) == 0:
        raise ValueError("texts must be a non-empty list of texts (or of id tensors)")
    device = next(model.parameters()).device
    ents, firsts = [], []
    for i, ids in enumerate(_texts_to_ids(tokenizer, texts)):
        ids = ids[:max_length]
        if ids.numel() < 2:
            raise ValueError(f"texts[{i}] has {ids.numel()} token(s); teacher forcing needs at least 2")
        # the last hidden state through fuq.hidden_stats: the [T, V] logits are never held
        s, _ = teacher_forced(model, ids[None].to(device))
        target = ids[1:].to(s.argmax.device)
        ents.append(s.entropy[0].float().cpu())
        firsts.append((s.argmax[0] == target).cpu())
    return torch.cat(ents), torch.cat(firsts)


def fit_threshold(entropy: Tensor, first: Tensor, *, balanced: bool = True, steps: int = 200) -> Threshold:
    """Fit P(ranked first | entropy) = σ(w·H + b) and return the accuracy-maximising entropy cut.

    Args:
        entropy: ``[N]`` entropies (nats).
        first: ``[N]`` bool, whether the reference token was ranked first.
        balanced: weight both classes equally (in the fit and in the accuracy), as AdaDec does.
        steps: L-BFGS iterations.

    Returns:
        :class:`Threshold`; ``tau`` is the midpoint between the two entropies around the cut.

    Raises:
        ValueError: fewer than 2 positions, a NaN entropy, or only one class present.
    """
    H = torch.as_tensor(entropy).reshape(-1).double()
    y = torch.as_tensor(first).reshape(-1).bool()
    if H.numel() != y.numel():
        raise ValueError(f"entropy and first must have the same length, got {H.numel()} and {y.numel()}")
    if H.numel() < 2:
        raise ValueError(f"need at least 2 positions to fit a threshold, got {H.numel()}")
    if not bool(torch.isfinite(H).all()):
        raise ValueError("entropy holds NaN or inf values")
    n1 = int(y.sum())
    n0 = y.numel() - n1
    if n1 == 0 or n0 == 0:
        which = "ranked first" if n0 == 0 else "not ranked first"
        raise ValueError(f"every one of the {y.numel()} reference tokens is {which}: no threshold can be learned; "
                         "use more (or harder) texts")
    yf = y.double()
    N = y.numel()
    wts = torch.ones_like(H)
    if balanced:
        wts = torch.where(y, torch.full_like(H, N / (2 * n1)), torch.full_like(H, N / (2 * n0)))

    # The logistic fit, on standardised entropy, in float64.
    mu, sd = H.mean(), H.std().clamp_min(1e-12)
    x = (H - mu) / sd
    params = torch.zeros(2, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([params], lr=1.0, max_iter=steps, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        z = params[0] * x + params[1]
        loss = (wts * torch.nn.functional.binary_cross_entropy_with_logits(z, yf, reduction="none")).mean()
        loss = loss + 1e-6 * params[0] ** 2  # keeps a separable set finite
        loss.backward()
        return loss

    with torch.enable_grad():
        opt.step(closure)
    a, c = params.detach().tolist()
    w, b = a / float(sd), c - a * float(mu) / float(sd)

    # The model is monotone in H, so a cut on its probability is a cut on H. Score every cut
    # "ranked first iff H <= cut" (between distinct sorted entropies, and below / above all).
    order = torch.argsort(H)
    Hs, ys, ws = H[order], yf[order], wts[order]
    pos = torch.cat([torch.zeros(1, dtype=torch.float64), torch.cumsum(ws * ys, 0)])  # first, predicted first
    neg_after = (ws * (1 - ys)).sum() - torch.cat([torch.zeros(1, dtype=torch.float64), torch.cumsum(ws * (1 - ys), 0)])
    acc = (pos + neg_after) / ws.sum()  # acc[i]: the first i sorted positions predicted "first"
    valid = torch.ones(N + 1, dtype=torch.bool)
    valid[1:N] = Hs[1:] > Hs[:-1]  # no cut inside a run of equal entropies
    acc = torch.where(valid, acc, torch.full_like(acc, -1.0))
    i = int(torch.argmax(acc))
    if i == 0:
        tau = float(Hs[0]) - 1e-3
    elif i == N:
        tau = float(Hs[-1]) + 1e-3
    else:
        tau = 0.5 * float(Hs[i - 1] + Hs[i])
    p_cut = 1.0 / (1.0 + math.exp(-(w * tau + b)))
    return Threshold(tau, p_cut, w, b, float(acc[i]), N, n1)


def calibrate_threshold(
    model: Any,
    tokenizer: Any,
    texts: Sequence[str | Tensor],
    *,
    balanced: bool = True,
    max_length: int = 1024,
    return_details: bool = False,
) -> float | Threshold:
    """Learn AdaDec's entropy threshold ``tau`` for ``model`` from reference texts.

    Teacher forcing over ``texts`` (one prefill per text) gives per position the entropy
    and whether the reference token is ranked first; :func:`fit_threshold` fits the
    balanced logistic regression and returns the accuracy-maximising cut as an entropy.

    Args:
        model, tokenizer: a causal LM and its tokenizer (None if ``texts`` are id tensors).
        texts: reference texts of the kind the model will generate (code for code, …).
        balanced: balanced classes in the fit and in the accuracy.
        max_length: texts are cut to this many tokens.
        return_details: return the whole :class:`Threshold` instead of ``tau``.

    Returns:
        ``tau`` in nats (or the :class:`Threshold`).

    Example:
        >>> refs = ["def add(a, b):\\n    return a + b\\n"]
        >>> tau = fuq.adaptive.calibrate_threshold(model, tok, refs)  # doctest: +SKIP
        >>> fuq.generate(model, tok, "def fib(n):", strategy="adadec", tau=tau)  # doctest: +SKIP
    """
    H, first = teacher_forcing_entropy(model, tokenizer, texts, max_length=max_length)
    th = fit_threshold(H, first, balanced=balanced)
    return th if return_details else th.tau
