"""Vocabulary-parallel statistics and sampling over ``torch.distributed``, from gathered states, not logits.

With a tensor-parallel LM head each rank holds the logits (or the weight rows) of a slice
``[vocab_offset, vocab_offset + Vs)`` of the vocabulary. Instead of all-gathering ``[B, V]``
logits, every rank computes its :class:`fuq.StatsState` (``O(B·k)`` numbers), the states
are all-gathered once, and every rank merges them (:func:`fuq.merge_stats`) into the same
:class:`fuq.LogitStats`. :func:`sample` draws the same token on every rank the same way
(only rows whose truncation cut falls beyond the gathered candidates gather their logits).

Collectives per call: with ``check=True`` (the default) a 4-number header all-gather first
(it turns mismatched batch sizes or ``k`` into a clear ``ValueError`` on every rank instead
of a failed or hung collective), then one all-gather of the states. ``check=False`` skips
the header; the rest (vocabulary ranges that overlap or leave a gap, temperatures, tokens,
knobs) is checked on the gathered states either way, identically on every rank.

Mismatched shards: the shards may have different widths (``k`` may exceed a shard's width,
not V), come in any rank order, and hold different floating dtypes (states are float32
whatever the input). Vocabulary ranges that overlap or leave a gap in ``[0, V)``, different
batch sizes, ``k``, temperatures, tokens or sampling knobs raise a ``ValueError`` naming the
mismatch, the same on every rank (after the collective, so no rank is left waiting).
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor

from . import _validate, reference
from . import knobs as _knob_table
from .ops import LogitStats
from .partial import (
    PAD_ID,
    StatsState,
    _check_k,
    _check_vocab_offset,
    check_states,
    hidden_stats_partial,
    logit_stats_partial,
    merge_stacked,
    merge_topk,
    state_from_stats,
)

__all__ = ["logit_stats", "hidden_stats", "sample"]

_NEG_INF = float("-inf")
_HEAD = 7  # vocab_start, vocab_stop, temperature, B, K, has_tokens + 2 * extra columns, len(meta)


# ---------------------------------------------------------------------------------------------
# the exchange: pack a state into one float64 buffer, all-gather, unpack


def _group_size(group) -> int:
    if not dist.is_available() or not dist.is_initialized():
        raise RuntimeError("fuq.distributed needs torch.distributed initialised (dist.init_process_group) first")
    return dist.get_world_size(group)


def _pack(state: StatsState, extra: list[Tensor], meta: list[float]) -> Tensor:
    """One flat float64 buffer: a header (vocabulary range, temperature, sizes, ``meta``), then
    ``[B, F]`` columns: the state's fields and ``extra`` ``[B]`` columns (ids < 2**53 are exact)."""
    B = state.lse.numel()
    K = state.topk_ids.shape[-1]
    has_tok = state.tokens is not None
    head = [state.vocab_start, state.vocab_stop, state.temperature, B, K, float(has_tok) + 2 * len(extra), len(meta)]
    cols = [x.reshape(B, 1).double() for x in state[:5]]
    cols += [state.topk_values.reshape(B, K).double(), state.topk_ids.reshape(B, K).double()]
    if has_tok:
        cols += [state.tokens.reshape(B, 1).double(), state.token_value.reshape(B, 1).double()]
    cols += [x.reshape(B, 1).double() for x in extra]
    head_t = torch.tensor(head + list(meta), dtype=torch.float64, device=state.lse.device)
    return torch.cat([head_t, torch.cat(cols, dim=-1).reshape(-1)])


def _unpack(buf: Tensor) -> tuple[StatsState, list[Tensor], list[float]]:
    start, stop, t, B, K, flags, n_meta = buf[:_HEAD].tolist()
    B, K, has_tok, n_extra, n_meta = int(B), int(K), int(flags) % 2 == 1, int(flags) // 2, int(n_meta)
    meta = buf[_HEAD : _HEAD + n_meta].tolist()
    F = 5 + 2 * K + 2 * has_tok + n_extra
    x = buf[_HEAD + n_meta :].reshape(B, F)
    topv = x[:, 5 : 5 + K].float()
    topi = x[:, 5 + K : 5 + 2 * K].long()
    c = 5 + 2 * K
    tok = tokv = None
    if has_tok:
        tok, tokv = x[:, c].long(), x[:, c + 1].float()
        c += 2
    f32 = [x[:, j].float() for j in range(4)]
    state = StatsState(*f32, x[:, 4].long(), topv, topi, tok, tokv, int(start), int(stop), t)
    return state, [x[:, c + j] for j in range(n_extra)], meta


def _all_gather(buf: Tensor, group, size: int) -> list[Tensor]:
    out = [torch.empty_like(buf) for _ in range(size)]
    dist.all_gather(out, buf, group=group)
    return out


def _exchange(
    state: StatsState, group, check: bool, extra: list[Tensor] | None = None, meta: list[float] | None = None
) -> tuple[list[StatsState], list[list[Tensor]]]:
    """All-gather the states (and ``extra`` ``[B]`` columns) of every rank, in rank order.

    ``meta``: numbers every rank must agree on (sampling knobs); a ValueError otherwise."""
    size = _group_size(group)
    extra, meta = extra or [], meta or []
    buf = _pack(state, extra, meta)
    if check:
        head = buf[3:_HEAD].clone()  # B, K, flags, len(meta): what fixes the buffer's length
        heads = [tuple(int(v) for v in h.tolist()) for h in _all_gather(head, group, size)]
        if len(set(heads)) > 1:
            raise ValueError(f"the ranks disagree on (rows B, k, tokens given + 2 * extra columns, knobs): {heads}")
    unpacked = [_unpack(b) for b in _all_gather(buf, group, size)]
    metas = [u[2] for u in unpacked]
    if any(m != metas[0] for m in metas):
        raise ValueError(f"the ranks disagree on the sampling knobs (top_k, top_p, min_p, candidates): {metas}")
    return [u[0] for u in unpacked], [u[1] for u in unpacked]


def _merge(states: list[StatsState], k: int) -> LogitStats:
    """Validated merge of gathered states, top ``k``; ``[B]`` rows."""
    check_states(states, k)
    fields = [torch.stack([getattr(s, f) for s in states]) for f in StatsState._fields[:5]]
    topv = torch.stack([s.topk_values for s in states])
    topi = torch.stack([s.topk_ids for s in states])
    tokv = None if states[0].tokens is None else torch.stack([s.token_value for s in states])
    return merge_stacked(*fields, topv, topi, tokv, k)


def _shape(stats: LogitStats, lead: torch.Size, k: int) -> LogitStats:
    return LogitStats(*(None if x is None else x.reshape(tuple(lead) + tuple(x.shape[1:])) for x in stats))


# ---------------------------------------------------------------------------------------------
# statistics


def logit_stats(
    logits_shard: Tensor,
    *,
    vocab_offset: int,
    k: int = 0,
    tokens: Tensor | None = None,
    temperature: float = 1.0,
    group=None,
    check: bool = True,
    backend: str = "auto",
) -> LogitStats:
    """:func:`fuq.logit_stats` of logits split by vocabulary over the ranks of ``group``.

    Each rank passes its shard; every rank gets the stats of the whole row. Moves
    ``8·B·(5 + 2k)`` bytes per rank (plus ``16·B`` with ``tokens``) instead of the logits.

    Args:
        logits_shard: ``[..., Vs]`` float32 | bfloat16 | float16, the columns
            ``[vocab_offset, vocab_offset + Vs)``; the ranks' shards must tile ``[0, V)``
            (any widths, any rank order).
        vocab_offset: global id of this shard's first column.
        k: top tokens, ``0 <= k <= V`` (may exceed a shard's width).
        tokens: ``[...]`` global ids (the same on every rank), or None.
        temperature: finite, > 0, the same on every rank.
        group: the process group (None: the default one).
        check: first all-gather a 4-number header, so that ranks with different batch
            sizes or ``k`` raise a ``ValueError`` rather than break the collective.
        backend: the local pass, as in :func:`fuq.logit_stats`.

    Returns:
        :class:`fuq.LogitStats`, identical on every rank, equal to ``fuq.logit_stats``
        of the concatenated logits (ids exactly, values within float32 rounding).

    Raises:
        ValueError: on every rank, for shards that overlap or leave a gap, different
            batch, ``k``, temperature or tokens across ranks, ``k`` or a token >= V.

    Example (one process; on N ranks each passes its own shard and offset)::

        >>> import tempfile, torch, torch.distributed as dist, fuq
        >>> dist.init_process_group("gloo", init_method="file://" + tempfile.mktemp(), rank=0, world_size=1)
        >>> x = torch.tensor([[2.0, 1.0, 0.0, 3.0]])
        >>> fuq.distributed.logit_stats(x, vocab_offset=0, k=2).topk_ids.tolist()
        [[3, 0]]
        >>> dist.destroy_process_group()
    """
    st = logit_stats_partial(logits_shard, vocab_offset=vocab_offset, k=k, tokens=tokens, temperature=temperature,
                             backend=backend)
    states, _ = _exchange(_flat(st), group, check)
    return _shape(_merge(states, st.topk_ids.shape[-1]), st.lse.shape, st.topk_ids.shape[-1])


def hidden_stats(
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
    group=None,
    check: bool = True,
    backend: str = "auto",
) -> LogitStats:
    """:func:`fuq.hidden_stats` of a vocabulary-parallel LM head: each rank holds rows
    ``[vocab_offset, vocab_offset + Vs)`` of ``weight`` (and ``bias``) and the same ``hidden``.

    Each rank runs :func:`fuq.hidden_stats` on its weight shard (no ``[N, Vs]`` logits),
    recomputes the raw values of its max, top-k and target ids (``hidden · weight[id]``),
    and the states are all-gathered and merged as in :func:`logit_stats`.

    Args:
        hidden: ``[..., d]`` (the same on every rank); weight_shard: ``[Vs, d]``;
            bias_shard: ``[Vs]`` or None; targets: ``[...]`` global ids or None.
        k, temperature, softcap, chunk, backend: as in :func:`fuq.hidden_stats`.
        vocab_offset, group, check: as in :func:`logit_stats`.

    Returns:
        :class:`fuq.LogitStats` with leading dims ``[...]``, identical on every rank.

    Example (one process; on N ranks each passes its rows of the head and their offset)::

        >>> import tempfile, torch, torch.distributed as dist, fuq
        >>> dist.init_process_group("gloo", init_method="file://" + tempfile.mktemp(), rank=0, world_size=1)
        >>> h, W = torch.randn(3, 8), torch.randn(10, 8)
        >>> fuq.distributed.hidden_stats(h, W, vocab_offset=0, k=5).topk_ids.shape
        torch.Size([3, 5])
        >>> dist.destroy_process_group()
    """
    st = hidden_stats_partial(hidden, weight_shard, bias_shard, vocab_offset=vocab_offset, k=k, targets=targets,
                              temperature=temperature, softcap=softcap, chunk=chunk, backend=backend)
    states, _ = _exchange(_flat(st), group, check)
    return _shape(_merge(states, st.topk_ids.shape[-1]), st.lse.shape, st.topk_ids.shape[-1])


def _flat(st: StatsState) -> StatsState:
    """The state with ``[B]`` / ``[B, k]`` fields."""
    B, K = st.lse.numel(), st.topk_ids.shape[-1]
    return st._replace(
        **{f: getattr(st, f).reshape(B) for f in ("lse", "entropy", "varentropy", "max_value", "argmax")},
        topk_values=st.topk_values.reshape(B, K),
        topk_ids=st.topk_ids.reshape(B, K),
        tokens=None if st.tokens is None else st.tokens.reshape(B),
        token_value=None if st.token_value is None else st.token_value.reshape(B),
    )


# ---------------------------------------------------------------------------------------------
# sampling
#
# With no truncation knob the draw is two-level: each rank draws a token from its own shard
# with its own uniform (column `rank` of a [B, world] matrix every rank draws from the shared
# generator), and the shard is chosen with probability exp(lse_s - lse) by the row's first
# uniform. P(token) = P(shard) · P(token | shard) = softmax(z)[token]: exact in distribution,
# one all-gather, but not the token fuq.sample would draw with the same seed.
#
# With top-k / top-p / min-p, every rank gathers each shard's `K = max(candidates, top_k + 1, k)`
# largest values and applies the knobs to their union, which is exact whenever the cut falls
# inside it: every token above F (the largest K-th value among shards wider than K) is listed.
# The draw is then the reference inverse CDF in global id order with the row's first uniform,
# so the id equals fuq.sample(whole logits, same generator state, same knobs). Rows whose cut
# falls at or below F get one more round with 16x the candidates (fallback="widen"), then gather
# their logits (fallback="gather": one more all-gather of those rows only; same ids), or raise
# (fallback="error").

_OFF = _knob_table.OFF[1:]  # the op's knobs after temperature, all off


def _generator(generator, seed, device: torch.device) -> torch.Generator:
    if (generator is None) == (seed is None):
        raise ValueError(
            "pass exactly one of generator= (seeded the same on every rank; it advances with each call) or seed= "
            "(an int, the same on every rank): the ranks must share the draw"
        )
    if generator is not None:
        if not isinstance(generator, torch.Generator):
            raise TypeError(f"generator must be a torch.Generator, got {type(generator).__name__}")
        return generator
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise TypeError(f"seed must be an int, got {type(seed).__name__}")
    return torch.Generator(device=device).manual_seed(seed)


def sample(
    logits_shard: Tensor,
    *,
    vocab_offset: int,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    min_p: float | None = None,
    generator: torch.Generator | None = None,
    seed: int | None = None,
    k: int = 0,
    candidates: int = 64,
    fallback: str = "widen",
    group=None,
    check: bool = True,
    backend: str = "auto",
) -> tuple[Tensor, LogitStats]:
    """Draw one token per row from vocabulary-sharded logits: the same id on every rank, from gathered states.

    Knobs and their exactness across shards (semantics of :func:`fuq.sample`, HF order
    top-k → top-p → min-p, ties at a cut kept):

    * temperature only: exact in distribution (two-level draw, see above); the ids differ
      from those :func:`fuq.sample` draws with the same seed.
    * ``top_k``: ``K = max(candidates, top_k + 1, k)`` values per shard are gathered, so the
      global top-k is always among them: the same ids as ``fuq.sample`` with the same
      generator state, unless the k-th value ties with the next value of the shard holding
      it (then the row falls back).
    * ``top_p`` / ``min_p``: the same ids as ``fuq.sample`` (up to float rounding at the
      cut: the global ``lse`` comes from float32 shard sums) when the cut lies among the
      gathered candidates (min-p: always when ``min_p · p_max`` is above the shard floors;
      top-p: when the kept set is reached within them); otherwise the row falls back.
      How often: on Gemma 3 270M (teacher-forced, 2 shards, ``candidates=64``), top_p = 0.9
      at T = 1 falls back on 14.5% of steps and none of them is left for a gather after
      the widened round; top_p = 0.95: 29%, 1% gathered; min_p = 0.05: 0.5%, none
      gathered; top_k = 50 + top_p = 0.95: never
      (``bench/results/bench_distributed_fallback_gemma3.json``).

    Args:
        logits_shard: ``[..., Vs]`` float32 | bfloat16 | float16, columns
            ``[vocab_offset, vocab_offset + Vs)``; the ranks' shards tile ``[0, V)``.
        vocab_offset: global id of the shard's first column.
        temperature, top_k, top_p, min_p: as in :func:`fuq.sample`, the same on every rank.
        generator: a ``torch.Generator`` in the same state on every rank (advanced by the
            call as ``fuq.sample`` advances it), or ``seed``: an int, the same on every rank.
        k: top tokens in the returned stats.
        candidates: values per shard gathered for truncation (>= 1).
        fallback: for rows whose cut falls below the candidates: ``"widen"`` (default):
            one more all-gather of 16x the candidates for those rows only (not for rows
            whose top-p mass provably needs more), then as ``"gather"`` for rows still open;
            ``"gather"``: all-gather those rows' logits and draw from them exactly;
            ``"error"``: raise a ValueError. The ids are the same.
        group, check: as in :func:`logit_stats`.
        backend: the local stats pass, as in :func:`fuq.logit_stats` (the draws use
            ``fuq::sample``'s kernel of the device, or the reference with ``"reference"``).

    Returns:
        ``(ids, stats)``: int64 global ids ``[...]``, identical on every rank, and the
        :class:`fuq.LogitStats` of the untruncated step with ``token_logprob`` of the drawn
        ids (as :func:`fuq.sample`). A row with no live token gives id 0.

    Example (one process; on N ranks each passes its own shard, offset and a generator in the same state)::

        >>> import tempfile, torch, torch.distributed as dist, fuq
        >>> dist.init_process_group("gloo", init_method="file://" + tempfile.mktemp(), rank=0, world_size=1)
        >>> x = torch.tensor([[5.0, 0.0, -5.0]])
        >>> ids, st = fuq.distributed.sample(x, vocab_offset=0, top_k=1, generator=torch.Generator().manual_seed(0))
        >>> ids.tolist(), round(st.token_logprob.item(), 4)
        ([0], -0.0068)
        >>> dist.destroy_process_group()
    """
    offset, k, knobs, gen = _sample_args(logits_shard, vocab_offset, k, (temperature, top_k, top_p, min_p),
                                         generator, seed, candidates, fallback, backend)
    t, tk, tp, mp = knobs[:4]
    size = _group_size(group)
    lead = logits_shard.shape[:-1]
    rows = _validate.as_rows(logits_shard)
    B = rows.shape[0]
    u0 = torch.rand((B,), dtype=torch.float64, generator=gen, device=gen.device).to(rows.device)
    truncating = tk > 0 or tp < 1.0 or mp > 0.0
    meta = [tk, tp, mp, candidates if truncating else 0]
    if truncating:
        K = _listed(candidates, tk, k)
        st = logit_stats_partial(rows, vocab_offset=offset, k=K, temperature=t, backend=backend)
        states, _ = _exchange(st, group, check, meta=meta)
        check_states(states, k)
        ids, zid, todo = _draw_candidates(states, u0, tk, tp, mp)
        if bool(todo.any()):
            ids, zid = _fallback(rows, states, knobs, u0, ids, zid, todo, fallback, group, size, backend, offset)
    else:
        U = torch.rand((B, size), dtype=torch.float64, generator=gen, device=gen.device).to(rows.device)
        st, extra = _local_draw(rows, U[:, dist.get_rank(group)], offset, k, t, backend)
        states, extras = _exchange(st, group, check, extra=extra, meta=meta)
        check_states(states, k)
        ids, zid = _draw_two_level(states, extras, u0)
    stats = _merge(states, k)
    lse = stats.lse.double()
    dead = ~torch.isfinite(lse)
    ids = torch.where(dead, torch.zeros_like(ids), ids)
    token_lp = torch.where(dead, torch.full_like(lse, float("nan")), zid.double() - lse).float()
    return ids.reshape(lead), _shape(stats._replace(token_logprob=token_lp), lead, k)


def _listed(candidates: int, top_k: int, k: int) -> int:
    """Values each shard sends: top_k + 1 at least, so that the global k-th value is exact unless it ties
    with the next one of the shard holding it (every unlisted value is <= the shard's last listed one)."""
    return max(candidates, top_k + 1 if top_k > 0 else 0, k)


def _sample_args(logits_shard, vocab_offset, k, knobs4, generator, seed, candidates, fallback, backend):
    """Validate :func:`sample`'s arguments (before any collective) -> (offset, k, the op's knobs, generator)."""
    _validate.check_logits(logits_shard, "logits_shard")
    offset = _check_vocab_offset(vocab_offset)
    k = _check_k(k)
    # fuq.distributed takes the first four knobs of the table, as numbers (no per-row tensors)
    knobs = _knob_table.resolve(None, **dict(zip(_knob_table.NAMES[:4], knobs4, strict=True)))
    if isinstance(candidates, bool) or not isinstance(candidates, int) or candidates < 1:
        raise ValueError(f"candidates must be an int >= 1, got {candidates!r}")
    if fallback not in ("widen", "gather", "error"):
        raise ValueError(f"fallback must be 'widen', 'gather' or 'error', got {fallback!r}")
    _validate.check_backend(backend)
    return offset, k, knobs, _generator(generator, seed, logits_shard.device)


def _local_draw(rows: Tensor, u: Tensor, offset: int, k: int, t: float, backend: str):
    """This shard's state and a draw from its own softmax with uniforms ``u`` (one pass: ``fuq::sample``)."""
    Vs = rows.shape[-1]
    ks = min(k, Vs)
    out = reference.sample(rows, u, ks, t, *_OFF) if backend == "reference" else torch.ops.fuq.sample(
        rows, u, ks, t, *_OFF)
    local = out[0]

    def values_of(ids: Tensor) -> Tensor:
        return rows.gather(-1, ids).float() / t

    st = state_from_stats(out[1:], values_of, k, None, offset, Vs, t, torch.Size([rows.shape[0]]))
    return st, [local + offset, values_of(local[:, None])[:, 0]]


def _by_offset(states: list[StatsState]) -> list[int]:
    return sorted(range(len(states)), key=lambda i: states[i].vocab_start)


def _draw_two_level(states: list[StatsState], extras: list[list[Tensor]], u0: Tensor) -> tuple[Tensor, Tensor]:
    """Pick each row's shard by inverse CDF over the shard masses (in vocabulary order); take its draw."""
    order = _by_offset(states)
    lse = torch.stack([states[i].lse for i in order], dim=-1).double()  # [B, S]
    m = lse.amax(-1, keepdim=True)
    live = lse > _NEG_INF
    w = torch.where(live, torch.exp(lse - torch.where(torch.isfinite(m), m, torch.zeros_like(m))),
                    torch.zeros_like(lse))
    cum = torch.cumsum(w, dim=-1)
    s = torch.searchsorted(cum, u0[:, None] * cum[:, -1:], right=True)
    last = torch.where(live, torch.arange(len(order), device=lse.device), torch.zeros_like(lse, dtype=torch.long))
    s = torch.minimum(s, last.amax(-1, keepdim=True))
    ids = torch.stack([extras[i][0] for i in order], dim=-1).gather(-1, s)[:, 0].long()
    z = torch.stack([extras[i][1] for i in order], dim=-1).gather(-1, s)[:, 0].float()
    return ids, z


def _floor(states: list[StatsState]) -> Tensor:
    """F ``[B]``: the largest last-listed value among shards wider than their list (-inf if none).
    Every token of value > F is among the gathered candidates."""
    K = states[0].topk_ids.shape[-1]
    F = torch.full_like(states[0].lse, _NEG_INF)
    for s in states:
        if s.vocab_stop - s.vocab_start > K:
            F = torch.maximum(F, s.topk_values[:, K - 1])
    return F


def _truncate_candidates(z: Tensor, F: Tensor, lse: Tensor, tk: int, tp: float, mp: float):
    """The knobs of :func:`fuq.reference.truncate` on the union of candidates ``z [B, C]`` (float64,
    sorted by value desc then id asc). Returns ``(kept [B, C], exact [B])``: ``exact`` is False for
    rows whose kept set may hold tokens that were not gathered."""
    Fd = F.double()[:, None]
    no_floor = F == _NEG_INF
    exact = torch.ones_like(no_floor)
    known = False  # is the current set exactly the truncated row (so probabilities renormalise over it)?
    ninf = torch.full_like(z, _NEG_INF)
    if tk > 0:
        kth = z[:, tk - 1 : tk]
        exact &= (kth[:, 0] > Fd[:, 0]) | no_floor
        z = torch.where((z >= kth) & (z > _NEG_INF), z, ninf)
        known = True
    if tp < 1.0:
        live = z > _NEG_INF
        logp = torch.log_softmax(z, dim=-1) if known else z - lse[:, None]
        p = torch.where(live, logp.exp(), torch.zeros_like(z))
        kept = ((torch.cumsum(p, dim=-1) - p) < tp) & live
        cut = torch.where(kept, z, torch.full_like(z, float("inf"))).amin(-1, keepdim=True)
        if not known:  # exact if a listed token above F is cut and the cut value itself is above F
            exact &= no_floor | ((~kept & live & (z > Fd)).any(-1) & (cut[:, 0] > Fd[:, 0]))
        z = torch.where((z >= cut) & live, z, ninf)
        known = True
    if mp > 0.0:
        live = z > _NEG_INF
        logp = torch.log_softmax(z, dim=-1) if known else z - lse[:, None]
        p = torch.where(live, logp.exp(), torch.zeros_like(z))
        pmax = p.amax(-1, keepdim=True)
        if not known:  # exact if a token of value F would be cut (then every unlisted one is)
            exact &= no_floor | ~(torch.exp(Fd - lse[:, None]) >= mp * pmax)[:, 0]
        z = torch.where((p >= mp * pmax) & live, z, ninf)
    return z > _NEG_INF, exact


def _draw_candidates(states: list[StatsState], u0: Tensor, tk: int, tp: float, mp: float):
    """Truncate the gathered candidates and draw by inverse CDF in global id order -> (ids, z, todo)."""
    S, K = len(states), states[0].topk_ids.shape[-1]
    v, i = merge_topk(torch.stack([s.topk_values for s in states]), torch.stack([s.topk_ids for s in states]), S * K)
    lse = torch.logsumexp(torch.stack([s.lse for s in states]).double(), dim=0)  # NaN / +inf: a dead row
    z = v.double()
    kept, exact = _truncate_candidates(z, _floor(states), lse, tk, tp, mp)
    # the reference draw (fuq.reference.sample_from) over the kept tokens in id order
    by_id = torch.sort(torch.where(kept, i, torch.full_like(i, PAD_ID)), dim=-1, stable=True).indices
    ids, zk, kk = i.gather(-1, by_id), z.gather(-1, by_id), kept.gather(-1, by_id)
    m = torch.where(kk, zk, torch.full_like(zk, _NEG_INF)).amax(-1, keepdim=True)
    w = torch.where(kk, torch.exp(zk - torch.where(torch.isfinite(m), m, torch.zeros_like(m))), torch.zeros_like(zk))
    cum = torch.cumsum(w, dim=-1)
    pos = torch.searchsorted(cum, u0[:, None] * cum[:, -1:], right=True)
    pos = torch.minimum(pos, (kk.sum(-1, keepdim=True) - 1).clamp(min=0))
    dead = ~torch.isfinite(lse)
    return ids.gather(-1, pos)[:, 0], v.gather(-1, by_id).gather(-1, pos)[:, 0], ~exact & ~dead


def _fallback(rows, states, knobs, u0, ids, zid, todo, fallback, group, size, backend, offset):
    """Rows whose cut fell below the candidates: ``"widen"``: one more round with 16x the candidates
    for those rows only (if that stays under a quarter of the widest shard; not for rows whose top-p
    cut it provably cannot reach), then, like ``"gather"``, all-gather the logits of the rows still
    open and draw as fuq.sample does. Same ids either way."""
    idx = todo.nonzero()[:, 0]
    K = states[0].topk_ids.shape[-1]
    if fallback == "error":
        raise ValueError(
            f"the truncation cut of {idx.numel()} row(s) (rows {idx[:8].tolist()}...) falls below the "
            f"{K} candidates gathered per shard; raise candidates= or pass fallback='widen' or 'gather'"
        )
    ids, zid = ids.clone(), zid.clone()
    widest = max(s.vocab_stop - s.vocab_start for s in states)
    t, tk, tp, mp = knobs[:4]
    far = _far_from_cut(states, idx, tk, tp, 16 * K)
    near, idx = idx[~far], idx[far]
    if fallback == "widen" and 16 * K <= widest // 4 and near.numel():
        st = logit_stats_partial(rows[near], vocab_offset=offset, k=16 * K, temperature=t, backend=backend)
        wide, _ = _exchange(st, group, check=False)  # every rank has the same rows open: same sizes
        got, got_z, still = _draw_candidates(wide, u0[near], tk, tp, mp)
        ids[near], zid[near] = got, got_z  # rows still open are overwritten below
        near = near[still]
    idx = torch.cat([idx, near])
    if idx.numel():
        ids[idx], zid[idx] = _gather_rows(rows, states, knobs, u0[idx], idx, group, size, backend)
    return ids, zid


def _far_from_cut(states: list[StatsState], idx: Tensor, tk: int, tp: float, wide: int) -> Tensor:
    """Rows ``idx`` whose top-p cut a round of ``wide`` candidates per shard cannot reach (top-p the
    first knob): the listed tokens above the floor F hold mass m, every other token has p <= p(F), so
    at least (top_p - m) / p(F) more tokens are needed. Such rows (flat distributions) gather at once.
    Only a choice of path: the ids are the same."""
    if tk > 0 or tp >= 1.0:
        return torch.zeros(idx.numel(), dtype=torch.bool, device=idx.device)
    z = torch.stack([s.topk_values for s in states])[:, idx].double()  # [S, n, K]
    lse = torch.logsumexp(torch.stack([s.lse for s in states])[:, idx].double(), dim=0)
    F = _floor(states)[idx].double()
    m = torch.where(z > F[None, :, None], torch.exp(z - lse[None, :, None]), torch.zeros_like(z)).sum((0, 2))
    return (tp - m) > torch.exp(F - lse) * (wide * len(states))


def _gather_rows(rows, states, knobs, u, idx, group, size, backend):
    """All-gather the logits of rows ``idx`` (float32, exact for every input dtype) and draw from them."""
    widths = [s.vocab_stop - s.vocab_start for s in states]
    mine = torch.full((idx.numel(), max(widths)), _NEG_INF, device=rows.device)
    mine[:, : rows.shape[-1]] = rows[idx].float()
    parts = _all_gather(mine, group, size)
    full = torch.empty(idx.numel(), max(s.vocab_stop for s in states), device=rows.device)
    for s, w, part in zip(states, widths, parts, strict=True):
        full[:, s.vocab_start : s.vocab_stop] = part[:, :w]
    out = reference.sample(full, u, 0, *knobs) if backend == "reference" else torch.ops.fuq.sample(full, u, 0, *knobs)
    got = out[0]
    return got, full.gather(-1, got[:, None])[:, 0] / knobs[0]
