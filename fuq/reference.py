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
  entropy and varentropy. A row holding a NaN has NaN ``lse``, entropy,
  varentropy and log-probabilities; its ids are unspecified but always valid
  indices. A row holding ``+inf`` and no NaN has ``lse = +inf`` (as
  ``torch.logsumexp``), NaN entropy, varentropy, ``max_logprob``, top-k
  log-probabilities, ``topk_mass`` (0 when k = 0) and ``token_logprob``;
  ``argmax`` is the first ``+inf`` and the top-k ids follow the order below.

The tie rule of the truncation knobs (every backend implements exactly this):

* **The order.** Tokens are ordered by ``z`` descending, then token id ascending
  (``z = logits / T``; ``-0.0`` and ``+0.0`` are equal).
* **top-k** keeps every token whose ``z`` equals the k-th largest ``z`` (as Hugging
  Face's ``TopKLogitsWarper``: it may keep more than k).
* **top-p** keeps the shortest prefix of the order whose cumulative probability
  reaches ``top_p``: token j is kept iff the mass strictly before it in the order is
  ``< top_p``. On a tie group at the cut only the lower ids are kept, so the bound
  holds exactly and a uniform row is cut (4 equal tokens, top_p = 0.5: 2 kept).
* **typical** keeps a prefix of the order (``|-log p - H|`` ascending, token id
  ascending), cut the same way (as HF's ``TypicalLogitsWarper`` on rows without ties).
* **top-H** keeps a prefix of the order (z descending, id ascending): token j is kept
  iff the sum of the entropy terms ``-p log p`` up to and including it is ``<= alpha *
  H``, and the first token always (as HF's ``TopHLogitsWarper`` cuts: the uniform row
  ``log([.25] * 4)`` with alpha 0.5 keeps 2 tokens), but summed over the whole
  vocabulary and computed relative to the runner-up when the maximum is alone, so a
  logit 90, 300 or 1000 nats ahead of the rest does not collapse the sums.
* **thresholds** (min-p, epsilon, eta, top-nσ, p-less) keep or drop equal values
  together.
* ``min_tokens_to_keep`` keeps the first ``min_tokens_to_keep`` tokens of the knob's
  order (top-p, typical), or lowers top-k's / a threshold's value to the
  ``min_tokens_to_keep``-th largest ``z`` (ties with it kept).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = [
    "logit_stats", "logit_stats_extra", "density_free", "log_softmax_t", "truncate", "sample", "sample_from",
    "hidden_stats", "attention_stats",
]


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


def density_free(logits: Tensor, temperature: float = 1.0, alpha: float = 0.5) -> Tensor:
    """The density-free sums of ``softmax(logits / T)`` per row, float32 ``[B, 4]``.

    Columns: ``Σ log p`` over the live tokens (``z > -inf``; SelfCertainty), the number
    of live tokens, ``log Σ p^alpha`` (RenyiNeg) and ``log Σ √p`` (FisherRao); the sums
    run over the whole vocabulary (masked tokens have ``p = 0``). All four are NaN for a
    row whose entropy is NaN: a NaN or ``+inf`` entry, or no live token. ``alpha > 0``.
    """
    z = logits.float() / temperature
    logp = torch.log_softmax(z, dim=-1)
    live = z > float("-inf")  # False for NaN
    sum_logp = torch.where(live, logp, torch.zeros_like(logp)).sum(-1)
    n_live = live.sum(-1).float()
    # log Σ p^a = logsumexp(a log p); a masked token has a log p = -inf and adds 0
    log_sum_p_alpha = torch.logsumexp(alpha * logp, dim=-1)
    log_sum_sqrt_p = torch.logsumexp(0.5 * logp, dim=-1)
    bad = torch.isnan(z).any(-1) | (z == float("inf")).any(-1) | (n_live == 0)
    out = torch.stack([sum_logp, n_live, log_sum_p_alpha, log_sum_sqrt_p], dim=-1)
    return torch.where(bad[:, None], torch.full_like(out, float("nan")), out)


def logit_stats_extra(
    logits: Tensor,
    k: int = 0,
    tokens: Tensor | None = None,
    temperature: float = 1.0,
    alpha: float | None = None,
) -> tuple[Tensor, ...]:
    """Reference for the op ``fuq::logit_stats``: the nine fields of :func:`logit_stats`, then
    ``extra``: :func:`density_free` ``[B, 4]`` when ``alpha`` is given, else empty ``[0, 4]``."""
    out = logit_stats(logits, k, tokens, temperature)
    if alpha is None:
        extra = torch.empty((0, 4), device=logits.device)
    else:
        extra = density_free(logits, temperature, alpha)
    return (*out, extra)


# ---------------------------------------------------------------------------------------
# Truncation and sampling (fuq::truncate, fuq::sample).
#
# Off-values of the knobs, shared with the schemas: top_k 0, top_p 1.0, min_p 0.0,
# typical_p 1.0, epsilon 0.0, eta 0.0, top_h 0.0, top_n_sigma -1.0, p_less False.
# Each knob runs on the output of the previous one, in Hugging Face's order, and keeps
# the tokens the module docstring's tie rule says: top-k and the thresholds keep equal
# values together; top-p, typical and top-h keep a prefix of their order. Probabilities
# are computed in float64 from the float32 z; removed tokens are -inf.
_NEG_INF = float("-inf")


def _probs64(z: Tensor) -> tuple[Tensor, Tensor]:
    """``(p, logp)`` of the live tokens of float32 ``z``, in float64 (0 / -inf for removed)."""
    logp = torch.log_softmax(z.double(), dim=-1)
    return logp.exp(), logp


def _entropy64(p: Tensor, logp: Tensor) -> Tensor:
    return -torch.where(p > 0, p * logp, torch.zeros_like(p)).sum(-1, keepdim=True)


def _keep_top_n(z: Tensor, n: int) -> Tensor:
    """Mask of the tokens at or above the n-th largest value of the row (ties kept)."""
    n = min(max(n, 1), z.shape[-1])
    kth = torch.topk(z, n, dim=-1).values[..., -1:]
    return (z >= kth) & (z > _NEG_INF)


def _apply(z: Tensor, keep: Tensor) -> Tensor:
    return z.masked_fill(~keep, _NEG_INF)


def _top_k(z: Tensor, top_k: int, mtk: int) -> Tensor:
    return _apply(z, _keep_top_n(z, max(top_k, mtk)))


def _sort_desc(z: Tensor) -> tuple[Tensor, Tensor]:
    """``(zs, order)``: the row in the order of the tie rule (z descending, token id ascending)."""
    return torch.sort(z, dim=-1, descending=True, stable=True)


def _keep_prefix(z: Tensor, order: Tensor, kept_sorted: Tensor) -> Tensor:
    """``z`` with the tokens whose sorted position is not kept at -inf."""
    keep = torch.zeros_like(kept_sorted).scatter(-1, order, kept_sorted)
    return _apply(z, keep & (z > _NEG_INF))


def _two_prod(a: Tensor, b: Tensor) -> tuple[Tensor, Tensor]:
    """``(hi, lo)`` with ``hi = fl(a·b)`` and ``hi + lo = a·b`` exactly (Dekker; float64, no overflow)."""
    def split(x: Tensor) -> tuple[Tensor, Tensor]:
        c = 134217729.0 * x  # 2^27 + 1
        h = c - (c - x)
        return h, x - h

    hi = a * b
    ah, al = split(a)
    bh, bl = split(b)
    return hi, ((ah * bh - hi) + ah * bl + al * bh) + al * bl


def _below(x: Tensor, mass: float, S: Tensor) -> Tensor:
    """``x < mass · S`` decided exactly (the product not rounded): ``x``, ``S`` float64."""
    hi, lo = _two_prod(torch.full_like(S, mass), S)
    return (x < hi) | ((x == hi) & (lo > 0))


def _mass_prefix(e_sorted: Tensor, mass: float, mtk: int) -> Tensor:
    """Sorted positions kept by a mass cut: the mass strictly before the position is < ``mass``,
    or the position is among the first ``mtk``.

    ``e_sorted``: the float64 weights ``exp(z - m)`` of the row in the knob's order (1 exactly on
    the top group). The test ``before < mass · S`` compares the running sum with the exact product,
    so a uniform row of V keeps #{j : j / V < mass} tokens (the sums of 1 are exact).
    """
    before = torch.cat([torch.zeros_like(e_sorted[..., :1]), torch.cumsum(e_sorted, dim=-1)[..., :-1]], dim=-1)
    S = e_sorted.sum(-1, keepdim=True)
    first = torch.arange(e_sorted.shape[-1], device=e_sorted.device) < mtk
    return _below(before, mass, S) | first


def _weights64(z: Tensor) -> Tensor:
    """float64 ``exp(z - m)`` of float32 ``z`` (0 for removed tokens, 1 exactly at the max)."""
    zd = z.double()
    m = zd.amax(-1, keepdim=True)
    m = torch.where(torch.isfinite(m), m, torch.zeros_like(m))
    return torch.where(zd > _NEG_INF, torch.exp(zd - m), torch.zeros_like(zd))


def _top_p(z: Tensor, top_p: float, mtk: int) -> Tensor:
    """The shortest prefix of the order (z desc, id asc) of mass >= top_p, at least ``mtk`` tokens.

    HF's rule (remove ascending cumsum <= 1 - top_p) on a strict order: token j is kept iff
    the mass strictly before it is < top_p; of a tie group at the cut only the lower ids stay.
    """
    zs, order = _sort_desc(z)
    return _keep_prefix(z, order, _mass_prefix(_weights64(zs), top_p, mtk))


def _min_p(z: Tensor, min_p: float, mtk: int) -> Tensor:
    p, _ = _probs64(z)
    keep = (p >= min_p * p.amax(-1, keepdim=True)) & (z > _NEG_INF)
    return _apply(z, keep | _keep_top_n(z, mtk))


def _typical(z: Tensor, mass: float, mtk: int) -> Tensor:
    """Most typical tokens (|-log p - H| ascending, id ascending) until their mass reaches
    ``mass``: a prefix of that order, cut as top-p's (at least ``mtk`` tokens)."""
    p, logp = _probs64(z)
    key = torch.abs(-logp - _entropy64(p, logp))  # +inf for removed tokens
    _, order = torch.sort(key, dim=-1, stable=True)
    return _keep_prefix(z, order, _mass_prefix(_weights64(z).gather(-1, order), mass, mtk))


def _epsilon(z: Tensor, epsilon: float, mtk: int) -> Tensor:
    p, _ = _probs64(z)
    return _apply(z, ((p >= epsilon) & (z > _NEG_INF)) | _keep_top_n(z, mtk))


def _eta(z: Tensor, epsilon: float, mtk: int) -> Tensor:
    p, logp = _probs64(z)
    eta = torch.clamp(math.sqrt(epsilon) * torch.exp(-_entropy64(p, logp)), max=epsilon)
    return _apply(z, ((p >= eta) & (z > _NEG_INF)) | _keep_top_n(z, mtk))


def _entropy_terms(zs: Tensor) -> Tensor:
    """The entropy terms ``-p log p`` of a sorted row (z descending), each scaled by one positive
    factor per row, float64, robust to a maximum far ahead of the rest.

    With ``d = m - z``, ``S = Σ exp(-d)``: ``S · (-p log p) = exp(-d) (d + log S)``. When the
    maximum is alone and the runner-up ``g`` nats below, every term is scaled by ``exp(g)``
    (exponentials relative to the runner-up), and the top token's term ``exp(g) log1p(x)``,
    ``x = exp(-g) R``, is ``R log1p(x) / x`` with ``R = Σ exp(g - d)`` over the rest: nothing
    underflows to a collapsed entropy, whatever g is. A tie at the maximum needs no scaling
    (then ``log S >= log 2``).
    """
    inf = torch.tensor(float("inf"), dtype=torch.float64, device=zs.device)
    zero = torch.zeros((), dtype=torch.float64, device=zs.device)
    live = zs > _NEG_INF
    zd = zs.double()
    d = torch.where(live, zd[..., :1] - zd, inf)  # >= 0; 0 on the top group
    top = live & (d == 0)
    rest = live & ~top
    n_top = top.sum(-1, keepdim=True).double()
    g = torch.where(rest, d, inf).amin(-1, keepdim=True)  # the runner-up's gap (inf: none)
    alone = (n_top == 1) & torch.isfinite(g)
    s = torch.where(alone, g, zero)
    e = torch.where(rest, torch.exp(s - torch.where(rest, d, zero)), zero)
    R = e.sum(-1, keepdim=True)
    x = torch.exp(-s) * R  # S = n_top + x
    log_s = torch.where(alone, torch.log1p(x), torch.log(n_top + x))
    ratio = torch.where(x > 0, torch.log1p(x) / torch.where(x > 0, x, 1.0), 1.0)  # log1p(x) / x
    top_term = torch.where(alone, R * ratio, log_s)
    return torch.where(rest, e * (torch.where(rest, d, zero) + log_s), torch.where(top, top_term, zero))


def _top_h(z: Tensor, alpha: float) -> Tensor:
    """Top-H over the full distribution: the prefix of the order (z desc, id asc) whose
    entropy terms, summed up to and including each kept token, stay <= ``alpha * H(p)``;
    the first token is always kept.

    HF's ``TopHLogitsWarper`` cut (``cumsum(-p log p) <= alpha * H``, first token forced),
    exact over the whole vocabulary where HF and the paper's code sum over the top 100
    tokens only; the terms come from :func:`_entropy_terms` (robust to huge gaps).

    A tie group (a run of equal z: equal terms t, n of them, the terms before it summing to
    Cb and after it to Ca) is counted, not summed: its i-th token is kept iff
    ``i - alpha·n <= (alpha·(Cb + Ca) - Cb) / t``, with ``alpha·n`` exact; on a row that is one
    tie group (uniform) that is ``i <= alpha·n`` exactly: #{j : (j + 1) / V <= alpha} kept.
    """
    zs, order = _sort_desc(z)
    terms = _entropy_terms(zs)
    V = zs.shape[-1]
    pos = torch.arange(V, device=zs.device).expand_as(zs)
    new_run = torch.ones_like(zs, dtype=torch.bool)
    new_run[..., 1:] = zs[..., 1:] != zs[..., :-1]
    run = torch.cumsum(new_run.long(), dim=-1) - 1  # run id of each sorted position
    start = torch.zeros_like(run).scatter_reduce(-1, run, pos, reduce="amin", include_self=False)
    count = torch.zeros_like(run).scatter_add(-1, run, torch.ones_like(run))
    s0, n = start.gather(-1, run), count.gather(-1, run)  # run start and length per position
    incl = torch.cumsum(terms, dim=-1)
    excl = incl - terms
    cb = torch.where(s0 > 0, excl.gather(-1, s0), torch.zeros_like(excl))  # the terms before the run
    # the terms after the run, summed from the end of the row (0 exactly when nothing follows)
    rev = torch.flip(torch.cumsum(torch.flip(terms, [-1]), dim=-1), [-1])  # rev[j] = sum of terms[j:]
    after = s0 + n
    ca = torch.where(after < V, rev.gather(-1, after.clamp(max=V - 1)), torch.zeros_like(rev))
    t = terms
    i = (pos - s0 + 1).double()
    hi, lo = _two_prod(torch.full_like(t, alpha), n.double())
    r = (alpha * (cb + ca) - cb) / torch.where(t > 0, t, torch.ones_like(t))
    by_count = ((i - hi) - lo) <= r
    by_sum = incl <= alpha * incl[..., -1:]  # a run of zero terms (underflow): the plain running sum
    kept = torch.where(t > 0, by_count, by_sum) & (zs > _NEG_INF)
    kept[..., 0] = True
    kept = torch.cumprod(kept.long(), dim=-1).bool()  # a prefix, whatever the rounding between runs
    return _keep_prefix(z, order, kept)


def _top_n_sigma(z: Tensor, n: float) -> Tensor:
    """Keep z >= max - n * sigma, sigma the (N - 1)-normalised std of the finite z of the row."""
    live = z > _NEG_INF
    zd = torch.where(live, z.double(), torch.zeros_like(z, dtype=torch.float64))
    cnt = live.sum(-1, keepdim=True)
    mean = zd.sum(-1, keepdim=True) / cnt.clamp(min=1)
    var = torch.where(live, (zd - mean) ** 2, torch.zeros_like(zd)).sum(-1, keepdim=True) / (cnt - 1).clamp(min=1)
    cut = z.double().amax(-1, keepdim=True) - n * var.sqrt()
    return _apply(z, (z.double() >= cut) & live)


def _p_less(z: Tensor) -> Tensor:
    """Keep p >= sum p^2 (the collision probability of the row), and always the top tokens: on a
    uniform row float64 rounding can put sum p^2 a hair above every p."""
    p, _ = _probs64(z)
    return _apply(z, ((p >= (p * p).sum(-1, keepdim=True)) & (z > _NEG_INF)) | _keep_top_n(z, 1))


def truncate(
    logits: Tensor,
    temperature: float = 1.0,
    top_k: int = 0,
    top_p: float = 1.0,
    min_p: float = 0.0,
    typical_p: float = 1.0,
    epsilon: float = 0.0,
    eta: float = 0.0,
    top_h: float = 0.0,
    top_n_sigma: float = -1.0,
    p_less: bool = False,
    min_tokens_to_keep: int = 1,
) -> Tensor:
    """Reference for ``fuq::truncate`` on ``logits: [B, V]`` -> float32 ``[B, V]``.

    ``z = logits.float() / temperature``, then, in Hugging Face's order and each on the
    output of the previous: top-h, top-k, top-p, min-p, typical, epsilon, eta, then
    top-nσ and p-less. Removed tokens are -inf. ``min_tokens_to_keep`` applies to the
    knobs whose HF warper takes it (top-k, top-p, min-p, typical, epsilon, eta); every
    knob keeps at least one live token. A row holding NaN or +inf comes back all NaN;
    a row that is all -inf stays all -inf.
    """
    z = logits.float() / temperature
    bad = (torch.isnan(z) | (z == float("inf"))).any(-1, keepdim=True)
    z = torch.where(bad, torch.zeros_like(z), z)
    mtk = int(min_tokens_to_keep)
    if top_h > 0.0:
        z = _top_h(z, top_h)
    if top_k > 0:
        z = _top_k(z, top_k, mtk)
    if top_p < 1.0:
        z = _top_p(z, top_p, mtk)
    if min_p > 0.0:
        z = _min_p(z, min_p, mtk)
    if typical_p < 1.0:
        z = _typical(z, typical_p, mtk)
    if epsilon > 0.0:
        z = _epsilon(z, epsilon, mtk)
    if eta > 0.0:
        z = _eta(z, eta, mtk)
    if top_n_sigma >= 0.0:
        z = _top_n_sigma(z, top_n_sigma)
    if p_less:
        z = _p_less(z)
    return torch.where(bad, torch.full_like(z, float("nan")), z)


def sample_from(truncated: Tensor, uniform: Tensor) -> Tensor:
    """Inverse-CDF draw from ``softmax(truncated)`` in token-index order -> int64 ``[B]``.

    ``uniform``: float64 ``[B]`` in [0, 1). The id is the first token whose cumulative
    weight ``sum exp(z - max)`` exceeds ``u * total`` (float64 sums). A row with no live
    token (all -inf or NaN) gives id 0.
    """
    z = truncated.double()
    live = z > _NEG_INF
    m = torch.where(live, z, torch.full_like(z, _NEG_INF)).amax(-1, keepdim=True)
    w = torch.where(live, torch.exp(z - torch.where(torch.isfinite(m), m, torch.zeros_like(m))), torch.zeros_like(z))
    cum = torch.cumsum(w, dim=-1)
    target = uniform.double()[:, None] * cum[..., -1:]
    ids = torch.searchsorted(cum, target, right=True)[:, 0]
    # u * total can round up to total: take the last live token then
    last = torch.where(live, torch.arange(z.shape[-1], device=z.device), torch.zeros_like(z, dtype=torch.long))
    ids = torch.minimum(ids, last.amax(-1))
    ok = live.any(-1) & ~torch.isnan(z).any(-1)
    return torch.where(ok, ids, torch.zeros_like(ids))


def sample(
    logits: Tensor,
    uniform: Tensor,
    k: int = 0,
    temperature: float = 1.0,
    top_k: int = 0,
    top_p: float = 1.0,
    min_p: float = 0.0,
    typical_p: float = 1.0,
    epsilon: float = 0.0,
    eta: float = 0.0,
    top_h: float = 0.0,
    top_n_sigma: float = -1.0,
    p_less: bool = False,
    min_tokens_to_keep: int = 1,
    base_stats: bool = False,
) -> tuple[Tensor, ...]:
    """Reference for ``fuq::sample``: ``(ids, *logit_stats(logits, k, ids, temperature))``.

    The id is drawn from the truncated distribution with :func:`sample_from`; the stats
    are those of the untruncated step at the same temperature, or at temperature 1 when
    ``base_stats`` (the model's own distribution; ``token_logprob`` = log p(ids) under it).
    """
    z = truncate(logits, temperature, top_k, top_p, min_p, typical_p, epsilon, eta, top_h, top_n_sigma, p_less,
                 min_tokens_to_keep)
    ids = sample_from(z, uniform)
    return (ids, *logit_stats(logits, k, ids, 1.0 if base_stats else temperature))


# ---------------------------------------------------------------------------------------------
# hidden_stats: logit_stats of hidden @ weight.T (+ bias), soft-capped


def hidden_logits(
    hidden: Tensor, weight: Tensor, bias: Tensor | None = None, softcap: float | None = None
) -> Tensor:
    """``[N, V]`` float32 logits of ``hidden [N, d] @ weight [V, d].T`` (+ ``bias``), then
    ``softcap · tanh(z / softcap)`` when ``softcap`` is set (Gemma's final logit soft-capping)."""
    z = hidden.float() @ weight.float().T
    if bias is not None:
        z = z + bias.float()
    if softcap is not None:
        z = torch.tanh(z / softcap) * softcap
    return z


def hidden_stats(
    hidden: Tensor,
    weight: Tensor,
    bias: Tensor | None = None,
    k: int = 0,
    targets: Tensor | None = None,
    temperature: float = 1.0,
    softcap: float | None = None,
):
    """Reference for ``fuq::hidden_stats``: :func:`logit_stats` of :func:`hidden_logits`.

    ``hidden: [N, d]``, ``weight: [V, d]``, ``bias: [V]``, ``targets: [N]``. The
    soft-capping comes before the temperature: ``z = softcap·tanh((h·w + b)/softcap) / T``.
    """
    return logit_stats(hidden_logits(hidden, weight, bias, softcap), k, targets, temperature)


# ---------------------------------------------------------------------------------------------
# attention_stats: the online softmax with the cached keys in the place of the vocabulary


def attention_allowed(
    Lq: int, T: int, mask: Tensor | None, causal: bool, window: int | None, device=None
) -> Tensor:
    """Bool ``[B or 1, Lq, T]``: may query row ``i`` attend to key ``j``?

    Query row ``i`` sits at position ``T - Lq + i`` (the queries are the last ``Lq``
    positions). ``causal``: ``j <= T - Lq + i``. ``window``: ``j > T - Lq + i - window``.
    ``mask``: bool ``[B, T]`` or ``[B, Lq, T]``, True where the key may be attended.
    """
    pos = torch.arange(T - Lq, T, device=device)[:, None]
    j = torch.arange(T, device=device)[None, :]
    ok = torch.ones(Lq, T, dtype=torch.bool, device=device)
    if causal:
        ok = ok & (j <= pos)
    if window is not None:
        ok = ok & (j > pos - window)
    ok = ok[None]
    if mask is not None:
        m = mask[:, None, :] if mask.dim() == 2 else mask
        ok = ok & m.to(torch.bool)
    return ok


def attention_stats(
    q: Tensor,
    k: Tensor,
    scale: float,
    mask: Tensor | None = None,
    causal: bool = True,
    window: int | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """Reference for ``fuq::attention_stats``.

    ``q: [B, Hq, Lq, d]``, ``k: [B, Hkv, T, d]`` with ``Hq % Hkv == 0`` (query head
    ``h`` reads key head ``h // (Hq // Hkv)``). With ``s = scale · q·kᵀ`` (float32) and
    ``p = softmax(s)`` over the allowed keys of each query row (:func:`attention_allowed`):

    * ``mass [B, Hkv, T]``: Σ of ``p`` over the ``Lq`` query rows and the ``Hq/Hkv``
      query heads of the group (each key's total attention; a row with no allowed key
      adds nothing);
    * ``entropy [B, Hq, Lq]``: ``-Σ p log p`` in nats (NaN for a row with no allowed key);
    * ``lse [B, Hq, Lq]``: ``log Σ exp(s)`` over the allowed keys (``-inf`` for none).

    A row with a NaN or ``+inf`` score among its allowed keys (non-finite ``q`` or ``k``)
    has NaN ``lse`` and ``entropy`` and adds NaN to the mass of every key it may attend:
    bad input is reported, never turned silently into zero attention.
    """
    B, Hq, Lq, d = q.shape
    Hkv, T = k.shape[1], k.shape[2]
    g = Hq // Hkv
    kk = k.float().repeat_interleave(g, dim=1)  # [B, Hq, T, d]
    s = torch.einsum("bhld,bhtd->bhlt", q.float(), kk) * scale
    ok = attention_allowed(Lq, T, mask, causal, window, q.device)[:, None]  # [B|1, 1, Lq, T]
    s = s.masked_fill(~ok, float("-inf"))
    bad = (s.isnan() | (s == float("inf"))).any(-1)
    lse = torch.logsumexp(s, dim=-1).masked_fill(bad, float("nan"))
    logp = s - lse[..., None]
    # allowed keys of live rows only: a row with no allowed key (lse = -inf) adds nothing
    live = ok & (lse != float("-inf"))[..., None]
    p = torch.where(live, logp.exp(), torch.zeros_like(logp))
    entropy = -(p * torch.where(p > 0, logp, torch.zeros_like(logp))).sum(-1)
    entropy = torch.where(lse == float("-inf"), torch.full_like(entropy, float("nan")), entropy)
    mass = p.sum(dim=2).reshape(B, Hkv, g, T).sum(dim=2)
    return mass, entropy, lse
