"""Mergeable partial states of :func:`fuq.logit_stats`: statistics of a vocabulary shard, merged exactly.

A row of logits split by vocabulary into shards (a tensor-parallel LM head, or the
vocabulary chunks of a long LM head) need not be gathered to get its statistics: each
shard computes a small :class:`StatsState` (``O(B·k)``), and :func:`merge_stats` combines
any set of states covering ``[0, V)`` into the :class:`fuq.LogitStats` of the whole row.

The merge, per row, with ``w_s = exp(lse_s - lse)`` the probability mass of shard ``s``:

* ``lse = logsumexp_s(lse_s)``;
* ``H = Σ_s w_s H_s - Σ_s w_s log w_s`` (the chain rule of entropy: which shard, then
  which token inside it);
* ``Var[-log p] = Σ_s w_s (V_s + (log w_s - H_s + H)²)`` (Chan's parallel variance: the
  shard means of ``-log p`` are ``H_s - log w_s``, the global mean is ``H``);
* max, argmax, top-k and the target's log-prob from the raw values ``z = logits / T``
  (gathered from the shard, not reconstructed from ``logprob + lse``, so that values of
  different shards compare exactly), ties broken by the lower global id.

Every step is relative (``log w_s``, ``H_s - H``), so nothing cancels catastrophically;
the merge runs in float64 on ``O(S·B·k)`` numbers and returns float32.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import torch
from torch import Tensor

from . import _validate, ops
from .ops import LogitStats

__all__ = ["StatsState", "logit_stats_partial", "hidden_stats_partial", "merge_stats"]

#: Global id of the padding top-k entries of a shard narrower than k: sorts after every real id.
PAD_ID = 1 << 62
_NEG_INF = float("-inf")


class StatsState(NamedTuple):
    """The mergeable statistics of one vocabulary shard ``[vocab_start, vocab_stop)``, per row.

    Shapes are ``[...]`` (the leading dims of the shard's logits) unless said. ``z`` is
    ``logits.float() / temperature``; "of the shard" means of ``softmax(z)`` restricted to
    the shard's columns. A shard holding no finite value has ``lse = -inf`` (its entropy
    and varentropy are NaN and ignored by the merge).
    """

    lse: Tensor  #: float32, log Σ exp(z) over the shard
    entropy: Tensor  #: float32, entropy of the shard's own softmax (nats)
    varentropy: Tensor  #: float32, Var[z] under the shard's own softmax
    max_value: Tensor  #: float32, max z of the shard
    argmax: Tensor  #: int64, global id of the shard's first max
    topk_values: Tensor  #: float32 [..., k], the shard's k largest z, descending; -inf padding past its width
    topk_ids: Tensor  #: int64 [..., k], their global ids (ties: lower id first); PAD_ID for padding
    tokens: Tensor | None  #: int64, the global target ids (the same in every state), or None
    token_value: Tensor | None  #: float32, z of the target if the shard holds it, else -inf; or None
    vocab_start: int  #: first global id of the shard
    vocab_stop: int  #: one past its last global id
    temperature: float  #: the temperature z was divided by


def _check_vocab_offset(vocab_offset) -> int:
    if isinstance(vocab_offset, bool) or not isinstance(vocab_offset, int):
        raise TypeError(f"vocab_offset must be an int (the global id of the shard's first column), got "
                        f"{type(vocab_offset).__name__}")
    if vocab_offset < 0:
        raise ValueError(f"vocab_offset must be >= 0, got vocab_offset = {vocab_offset}")
    return vocab_offset


def _check_k(k) -> int:
    if isinstance(k, bool) or not isinstance(k, int):
        raise TypeError(f"k must be an int, got {type(k).__name__}")
    if k < 0:
        raise ValueError(f"k must be >= 0, got k = {k}")
    return k


def _check_global_tokens(tokens, lead: torch.Size, device: torch.device, name: str = "tokens") -> Tensor:
    """Global ids ``[...]`` >= 0 (the upper bound, the merged V, is checked by the merge)."""
    if not isinstance(tokens, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor of ids, got {type(tokens).__name__}")
    if tokens.dtype.is_floating_point or tokens.dtype.is_complex or tokens.dtype == torch.bool:
        raise TypeError(f"{name} must be an integer tensor, got {tokens.dtype}")
    if tuple(tokens.shape) != tuple(lead):
        raise ValueError(f"{name} must have shape {tuple(lead)} (the leading dims), got {tuple(tokens.shape)}")
    if tokens.device != device:
        raise ValueError(f"{name} is on {tokens.device} but the shard is on {device}")
    if tokens.numel() > 0 and int(tokens.min()) < 0:
        raise ValueError(f"{name} must be global ids >= 0, got {int(tokens.min())}")
    return tokens.reshape(-1).to(torch.int64)


def _pad_topk(values: Tensor, ids: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """Pad ``[B, k_s]`` candidates to ``[B, k]`` with (-inf, PAD_ID)."""
    short = k - values.shape[-1]
    if short <= 0:
        return values, ids
    B = values.shape[0]
    values = torch.cat([values, values.new_full((B, short), _NEG_INF)], dim=-1)
    ids = torch.cat([ids, ids.new_full((B, short), PAD_ID)], dim=-1)
    return values, ids


def _local_token(tok: Tensor, offset: int, width: int) -> tuple[Tensor, Tensor]:
    """(held, local id clamped into the shard) of global ids ``tok``."""
    local = tok - offset
    held = (local >= 0) & (local < width)
    return held, local.clamp(0, width - 1)


def state_from_stats(
    stats, values_of, k: int, tok: Tensor | None, offset: int, width: int, t: float, lead: torch.Size
) -> StatsState:
    """A :class:`StatsState` from the ``[B]``-row stats of a shard (``fuq.logit_stats`` fields,
    computed with ``min(k, width)`` top entries) and ``values_of(local_ids [B, m]) -> z [B, m]``,
    which gives the exact raw values of the shard at local ids."""
    lse, ent, var, _mx, am, _tkl, tki, _tkm = stats[:8]
    B = lse.shape[0]
    cols = [am.reshape(B, 1), tki]
    if tok is not None:
        held, local = _local_token(tok, offset, width)
        cols.append(local[:, None])
    z = values_of(torch.cat(cols, dim=-1))  # one gather for max, top-k and target
    ks = tki.shape[-1]
    top_v, top_i = _pad_topk(z[:, 1 : 1 + ks], tki + offset, k)
    token_value = None
    if tok is not None:
        token_value = torch.where(held, z[:, -1], torch.full_like(z[:, -1], _NEG_INF))
    return StatsState(
        lse.reshape(lead),
        ent.reshape(lead),
        var.reshape(lead),
        z[:, 0].reshape(lead),
        (am + offset).reshape(lead),
        top_v.reshape(*lead, k),
        top_i.reshape(*lead, k),
        None if tok is None else tok.reshape(lead),
        None if tok is None else token_value.reshape(lead),
        offset,
        offset + width,
        t,
    )


def logit_stats_partial(
    logits_shard: Tensor,
    *,
    vocab_offset: int,
    k: int = 0,
    tokens: Tensor | None = None,
    temperature: float = 1.0,
    backend: str = "auto",
) -> StatsState:
    """The mergeable :class:`StatsState` of the vocabulary shard ``logits_shard``, in one pass.

    Args:
        logits_shard: ``[..., Vs]`` float32 | bfloat16 | float16: columns
            ``[vocab_offset, vocab_offset + Vs)`` of the full ``[..., V]`` logits;
            ``-inf`` = masked (a shard may be all ``-inf``).
        vocab_offset: global id of the shard's first column, >= 0.
        k: top tokens wanted in the merged stats, >= 0; may exceed ``Vs`` (the state
            is padded), not the merged V.
        tokens: ``[...]`` *global* ids whose log-prob is wanted (the same tensor on
            every shard), or None. A shard not holding a row's id contributes nothing.
        temperature: finite, > 0.
        backend: as in :func:`fuq.logit_stats` (the shard's pass).

    Returns:
        :class:`StatsState`, ``O(B·k)`` plain tensors on the shard's device.

    Example:
        >>> import torch, fuq
        >>> x = torch.tensor([[2.0, 1.0, 0.0, -1.0, 3.0]])
        >>> a = fuq.logit_stats_partial(x[:, :2], vocab_offset=0, k=2)
        >>> b = fuq.logit_stats_partial(x[:, 2:], vocab_offset=2, k=2)
        >>> s = fuq.merge_stats([b, a])
        >>> s.topk_ids.tolist(), round(s.entropy.item(), 4) == round(fuq.logit_stats(x).entropy.item(), 4)
        ([[4, 0]], True)
    """
    Vs = _validate.check_logits(logits_shard, "logits_shard")
    offset = _check_vocab_offset(vocab_offset)
    k = _check_k(k)
    t = _validate.check_temperature(temperature)
    _validate.check_backend(backend)
    lead = logits_shard.shape[:-1]
    tok = None if tokens is None else _check_global_tokens(tokens, lead, logits_shard.device)
    rows = _validate.as_rows(logits_shard)
    stats = ops._dispatch_logit_stats(rows, min(k, Vs), None, t, backend)
    return state_from_stats(stats, lambda ids: rows.gather(-1, ids).float() / t, k, tok, offset, Vs, t, lead)


def _hidden_values(h: Tensor, weight: Tensor, bias: Tensor | None, softcap: float | None, t: float):
    """``values_of`` for a hidden-state shard: z at given local ids, recomputed as
    :func:`fuq.reference.hidden_logits` does (float32), a few rows at a time."""

    def values_of(ids: Tensor) -> Tensor:
        N, m = ids.shape
        d = h.shape[-1]
        out = torch.empty(N, m, dtype=torch.float32, device=h.device)
        step = max(1, (1 << 23) // max(1, m * d))  # at most ~32 MiB of gathered weight rows at once
        for s in range(0, N, step):
            w = weight[ids[s : s + step]].float()  # [n, m, d]
            z = torch.einsum("nd,nmd->nm", h[s : s + step].float(), w)
            if bias is not None:
                z = z + bias.float()[ids[s : s + step]]
            if softcap is not None:
                z = torch.tanh(z / softcap) * softcap
            out[s : s + step] = z / t
        return out

    return values_of


def hidden_stats_partial(
    hidden: Tensor,
    weight_shard: Tensor,
    bias_shard: Tensor | None = None,
    *,
    vocab_offset: int,
    k: int = 0,
    targets: Tensor | None = None,
    temperature: float = 1.0,
    softcap: float | None = None,
    chunk: int | None = None,
    backend: str = "auto",
) -> StatsState:
    """The :class:`StatsState` of ``hidden @ weight_shard.T`` (rows ``[vocab_offset, +Vs)`` of the LM head).

    The shard's statistics come from :func:`fuq.hidden_stats` (no ``[N, Vs]`` logits);
    the raw values of its max, top-k and target are then recomputed for those ids only
    (``hidden · weight[id]``, float32), so the states of different shards compare exactly.

    Args:
        hidden: ``[..., d]`` float32 | bfloat16 | float16.
        weight_shard: ``[Vs, d]``; bias_shard: ``[Vs]`` or None.
        vocab_offset, k, temperature, backend: as in :func:`logit_stats_partial`.
        targets: ``[...]`` global ids, or None.
        softcap, chunk: as in :func:`fuq.hidden_stats`.

    Returns:
        :class:`StatsState` with leading dims ``[...]``.

    Example:
        >>> import torch, fuq
        >>> h, W = torch.randn(3, 8), torch.randn(10, 8)
        >>> parts = [fuq.partial.hidden_stats_partial(h, W[a:b], vocab_offset=a, k=2) for a, b in ((0, 4), (4, 10))]
        >>> torch.allclose(fuq.merge_stats(parts).entropy, fuq.hidden_stats(h, W).entropy, atol=1e-5)
        True
    """
    _validate.check_float(hidden, "hidden", tuple(range(1, 9)))
    _validate.check_float(weight_shard, "weight_shard", (2,))
    offset = _check_vocab_offset(vocab_offset)
    k = _check_k(k)
    Vs = weight_shard.shape[0]
    lead = hidden.shape[:-1]
    tok = None if targets is None else _check_global_tokens(targets, lead, hidden.device, "targets")
    s = ops.hidden_stats(hidden, weight_shard, bias_shard, k=min(k, Vs), temperature=temperature, softcap=softcap,
                         chunk=chunk, backend=backend)  # validates the rest
    t = float(temperature)
    cap = None if softcap is None else float(softcap)
    h = hidden.reshape(-1, hidden.shape[-1])
    stats = [x.reshape(h.shape[0], x.shape[-1]) if x.dim() > len(lead) else x.reshape(-1) for x in s[:8]]
    values_of = _hidden_values(h, weight_shard, bias_shard, cap, t)
    return state_from_stats(stats, values_of, k, tok, offset, Vs, t, lead)


# ---------------------------------------------------------------------------------------------
# the merge


def check_states(states: Sequence[StatsState], k: int | None = None) -> int:
    """Validate a set of states for one merge (``k``: the top-k wanted, default the states' own);
    returns the merged vocabulary size V."""
    if isinstance(states, StatsState) or not isinstance(states, Sequence) or len(states) == 0:
        raise TypeError("states must be a non-empty sequence (list/tuple) of fuq.StatsState")
    for i, s in enumerate(states):
        if not isinstance(s, StatsState):
            raise TypeError(f"states[{i}] must be a fuq.StatsState, got {type(s).__name__}")
    s0 = states[0]
    for i, s in enumerate(states[1:], 1):
        if s.lse.shape != s0.lse.shape:
            raise ValueError(f"states[{i}] has leading shape {tuple(s.lse.shape)}, states[0] {tuple(s0.lse.shape)}")
        if s.topk_ids.shape[-1] != s0.topk_ids.shape[-1]:
            raise ValueError(f"states[{i}] has k = {s.topk_ids.shape[-1]}, states[0] k = {s0.topk_ids.shape[-1]}")
        if s.lse.device != s0.lse.device:
            raise ValueError(f"states[{i}] is on {s.lse.device}, states[0] on {s0.lse.device}")
        if s.temperature != s0.temperature:
            raise ValueError(f"states[{i}] has temperature {s.temperature}, states[0] {s0.temperature}")
        if (s.tokens is None) != (s0.tokens is None):
            raise ValueError("either every state or none has tokens")
        if s.tokens is not None and not torch.equal(s.tokens, s0.tokens):
            raise ValueError(f"states[{i}] was computed with other tokens than states[0] (tokens are global ids)")
    V = _check_cover([(s.vocab_start, s.vocab_stop) for s in states])
    k = s0.topk_ids.shape[-1] if k is None else k
    if k > V:
        raise ValueError(f"k must be <= the merged vocabulary size V = {V}, got k = {k}")
    if s0.tokens is not None and s0.tokens.numel() > 0 and int(s0.tokens.max()) >= V:
        raise ValueError(f"tokens must be in [0, {V}) (the merged V), got {int(s0.tokens.max())}")
    return V


def _check_cover(ranges: list[tuple[int, int]]) -> int:
    """The ranges must tile ``[0, V)`` exactly (any order); returns V."""
    end = 0
    for a, b in sorted(ranges):
        if a < end:
            raise ValueError(f"vocabulary shards overlap: [{a}, {b}) starts before {end}, the end of another shard")
        if a > end:
            raise ValueError(f"vocabulary ids [{end}, {a}) are in no shard (the shards must tile [0, V))")
        end = b
    return end


def merge_stats(states: Sequence[StatsState]) -> LogitStats:
    """Merge the states of shards tiling ``[0, V)`` into the :class:`fuq.LogitStats` of the whole row.

    Equal to ``fuq.logit_stats(torch.cat(shards, -1), k, tokens, temperature)`` within
    float32 rounding, whatever the order of ``states``, the widths of the shards, or which
    shard holds the target; ids are exact (top-k by value descending, then global id
    ascending; argmax the first global index of the max).

    Args:
        states: :class:`StatsState` of every shard (same leading shape, k, temperature,
            tokens and device), covering ``[0, V)`` without overlap.

    Returns:
        :class:`fuq.LogitStats` with the states' leading dims. Rows with no finite value
        in any shard give ``lse = -inf`` and NaN log-probs, as :func:`fuq.logit_stats`.

    Raises:
        ValueError: shards that overlap or leave a gap, different shapes, k, temperature,
            tokens or devices, k or a token id >= V.

    Example:
        >>> import torch, fuq
        >>> x = torch.randn(2, 7)
        >>> parts = [fuq.logit_stats_partial(x[:, a:b], vocab_offset=a, k=3) for a, b in ((0, 3), (3, 7))]
        >>> torch.equal(fuq.merge_stats(parts).topk_ids, fuq.logit_stats(x, k=3).topk_ids)
        True
    """
    check_states(states)
    lead = states[0].lse.shape
    k = states[0].topk_ids.shape[-1]
    B = states[0].lse.numel()
    fields = [torch.stack([getattr(s, f).reshape(-1) for s in states]) for f in StatsState._fields[:5]]
    topv = torch.stack([s.topk_values.reshape(B, k) for s in states])
    topi = torch.stack([s.topk_ids.reshape(B, k) for s in states])
    tokv = None if states[0].tokens is None else torch.stack([s.token_value.reshape(-1) for s in states])
    out = merge_stacked(*fields, topv, topi, tokv, k)
    return LogitStats(*(None if x is None else x.reshape(tuple(lead) + tuple(x.shape[1:])) for x in out))


def merge_stacked(
    lse: Tensor,
    ent: Tensor,
    var: Tensor,
    mx: Tensor,
    am: Tensor,
    topv: Tensor,
    topi: Tensor,
    tokv: Tensor | None,
    k: int,
) -> LogitStats:
    """The merge maths on stacked states: ``[S, B]`` fields, ``[S, B, K]`` candidates -> ``[B]`` stats (top ``k``)."""
    S, B = lse.shape
    l64 = lse.double()
    bad = torch.isnan(l64) | (l64 == float("inf"))  # a shard holding NaN / +inf poisons its row
    g = torch.logsumexp(l64, dim=0)  # [B]; -inf when no shard holds a finite value
    live = l64 > _NEG_INF
    logw = torch.where(live, l64 - torch.where(torch.isfinite(g), g, torch.zeros_like(g)), torch.zeros_like(l64))
    w = torch.where(live, logw.exp(), torch.zeros_like(l64))
    h_s = torch.where(live, ent.double(), torch.zeros_like(l64))
    H = (w * (h_s - logw)).sum(0)
    d = logw - h_s + H  # shard mean of z minus the global mean
    v_s = torch.where(live, var.double(), torch.zeros_like(l64))
    varent = torch.where(live, w * (v_s + d * d), torch.zeros_like(l64)).sum(0)
    nan = torch.full_like(H, float("nan"))
    dead = (g == _NEG_INF) | bad.any(0)
    g = torch.where(bad.any(0), nan, g)
    H = torch.where(dead, nan, H)
    varent = torch.where(dead, nan, varent)
    # max and argmax: the first global index among the shards holding the max
    M = mx.amax(0)
    at_max = torch.where(mx == M, am, torch.full_like(am, PAD_ID)).amin(0)
    argmax = torch.where(at_max == PAD_ID, am[0], at_max)  # NaN rows: any valid id
    max_logprob = (M.double() - g).float()
    topk_v, topk_i = merge_topk(topv, topi, k)
    topk_lp = topk_v.double() - g[:, None]
    topk_mass = topk_lp.exp().sum(-1)
    token_lp = None
    if tokv is not None:
        token_lp = (tokv.amax(0).double() - g).float()
    return LogitStats(g.float(), H.float(), varent.float(), max_logprob, argmax, topk_lp.float(), topk_i,
                      topk_mass.float(), token_lp)


def merge_topk(topv: Tensor, topi: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """The ``k`` best of ``[S, B, K]`` candidates by (value desc, global id asc) -> ``[B, k]`` values, ids."""
    S, B, K = topv.shape
    v = topv.permute(1, 0, 2).reshape(B, S * K)
    i = topi.permute(1, 0, 2).reshape(B, S * K)
    by_id = torch.sort(i, dim=-1, stable=True).indices  # ids are unique (but padding): id order first,
    v, i = v.gather(-1, by_id), i.gather(-1, by_id)
    by_v = torch.sort(v, dim=-1, descending=True, stable=True).indices[:, :k]  # then a stable sort on value
    return v.gather(-1, by_v), i.gather(-1, by_v)
