"""Shared ``@triton.jit`` helpers: the online (m, s, t, u) recurrence and packed top-k keys.

The online state of a stream of values ``z`` is, relative to its running max ``m``::

    s = Σ e^{z-m}    t = Σ e^{z-m}·(z-m)    u = Σ e^{z-m}·(z-m)²

so that ``lse = m + log s``, ``entropy = log s - t/s`` and ``varentropy = u/s - (t/s)²``.
Keeping ``t`` and ``u`` relative to ``m`` (rather than Σ e^{z-m}·z) avoids the
cancellation of two large numbers; moving ``m`` up by ``δ`` rescales the state by
``e^{-δ}``: ``s' = e^{-δ}s``, ``t' = e^{-δ}(t - δs)``, ``u' = e^{-δ}(u - 2δt + δ²s)``.

Invariant of every helper: ``-inf`` values (masked tokens, padding) and NaN leave
the state untouched (no ``0·(-inf)`` is ever formed); NaN and ``+inf`` are counted
separately by the caller, which then overwrites the row's results.

Top-k keys: a value ``z`` at index ``i`` is packed into one int64
``(ord(z) << 32) | (0x7fffffff - i)`` where ``ord`` is the order-preserving int32
image of the float bits (``-0.0`` folded onto ``+0.0``). A larger key means a larger
``z``, or the same ``z`` at a lower index, so one max gives the first argmax and
one top-k gives the ``(z desc, index asc)`` order of a stable descending sort.
"""

from __future__ import annotations

import functools

import torch
import triton
import triton.language as tl


@functools.cache
def _cached_sm_count(index: int) -> int:
    return torch.cuda.get_device_properties(index).multi_processor_count


def sm_count(device: torch.device) -> int:
    """Streaming multiprocessors of a CUDA ``device`` (its index, or the current device), cached.

    The launchers import it as ``_sm_count``: the launch counter of the tests
    (tests/triton_launches.py) patches that module attribute to plan for a GPU it has not.
    """
    return _cached_sm_count(device.index if device.index is not None else torch.cuda.current_device())

_COUNTERS: dict[tuple, torch.Tensor] = {}


def row_counters(B: int, device: torch.device) -> torch.Tensor:
    """int32 [>= B] row counters, zero between launches (each launch that counts on them leaves
    them at 0: the row's last program resets its own), cached per (device, stream) so that two
    streams never share one. The "last program of a row finalises it" launches use them
    (truncate.py, draw.py, logit_stats.py): no zero-fill kernel per call."""
    stream = torch.cuda.current_stream(device).cuda_stream if device.type == "cuda" else 0
    key = (str(device), stream)
    buf = _COUNTERS.get(key)
    if buf is None or buf.numel() < B:
        buf = torch.zeros(max(B, 64), dtype=torch.int32, device=device)
        _COUNTERS[key] = buf
    return buf


KEY_MIN = tl.constexpr(-(2**63))  # below every real key: padding never wins


@triton.jit
def online_update_rows(m, s, t, u, z):
    """Fold a 2-D block ``z`` [R, E] into per-row states ``(m, s, t, u)`` [R]; returns the new state.

    Each row (a thread's few contiguous values, in the usual layout) moves its max once per
    block, so there is one exp per value and the state is per row, not per value. NaN values
    must already be replaced by ``-inf`` (the caller counts them); ``-inf`` values weigh 0.
    """
    m_new = tl.maximum(m, tl.max(z, axis=1))
    old = m > float("-inf")  # an empty row state (m = -inf) has s = t = u = 0
    d = tl.where(old, m - m_new, 0.0)
    r = tl.where(old, tl.exp(d), 0.0)
    live = z > float("-inf")
    dz = tl.where(live, z - m_new[:, None], 0.0)
    e = tl.where(live, tl.exp(dz), 0.0)
    ed = e * dz
    s2 = r * s + tl.sum(e, axis=1)
    t2 = r * (t + d * s) + tl.sum(ed, axis=1)
    u2 = r * (u + 2.0 * d * t + d * d * s) + tl.sum(ed * dz, axis=1)
    return m_new, s2, t2, u2


@triton.jit
def merge_states(m, s, t, u):
    """Reduce lane (or partial) states of a 1-D block to one ``(M, S, T, U)``, relative to ``M``."""
    M = tl.max(m, axis=0)
    ok = m > float("-inf")  # empty states (m = -inf, s = t = u = 0) weigh 0
    d = tl.where(ok, m - M, 0.0)
    w = tl.where(ok, tl.exp(d), 0.0)
    S = tl.sum(w * s, axis=0)
    T = tl.sum(w * (t + d * s), axis=0)
    U = tl.sum(w * (u + 2.0 * d * t + d * d * s), axis=0)
    return M, S, T, U


@triton.jit
def density_update_rows(m, sa, sh, sd, n, z, alpha):
    """Fold a 2-D block ``z`` [R, E] into the per-row density-free sums, relative to the row
    state's max ``m`` [R] *before* :func:`online_update_rows` moves it (it is recomputed here):
    ``sa = Σ e^{alpha (z-m)}``, ``sh = Σ e^{(z-m)/2}``, ``sd = Σ (z-m)`` and ``n`` over the live
    values. NaN values must already be ``-inf``. Returns the new ``(sa, sh, sd, n)``.
    """
    m_new = tl.maximum(m, tl.max(z, axis=1))
    old = m > float("-inf")
    d = tl.where(old, m - m_new, 0.0)  # the rescale: every old offset moves by d <= 0
    live = z > float("-inf")
    dz = tl.where(live, z - m_new[:, None], 0.0)
    ea = tl.where(live, tl.exp(alpha * dz), 0.0)
    eh = tl.where(live, tl.exp(0.5 * dz), 0.0)
    sa2 = tl.where(old, tl.exp(alpha * d), 0.0) * sa + tl.sum(ea, axis=1)
    sh2 = tl.where(old, tl.exp(0.5 * d), 0.0) * sh + tl.sum(eh, axis=1)
    sd2 = sd + n * d + tl.sum(dz, axis=1)
    n2 = n + tl.sum(live.to(tl.float32), axis=1)
    return sa2, sh2, sd2, n2


@triton.jit
def merge_density(m, sa, sh, sd, n, alpha):
    """Reduce lane (or partial) density-free sums of a 1-D block, relative to the max ``M`` of
    ``m`` (as :func:`merge_states`); returns ``(SA, SH, SD, N)``."""
    M = tl.max(m, axis=0)
    ok = m > float("-inf")  # empty states have sa = sh = sd = n = 0
    d = tl.where(ok, m - M, 0.0)
    SA = tl.sum(tl.where(ok, tl.exp(alpha * d), 0.0) * sa, axis=0)
    SH = tl.sum(tl.where(ok, tl.exp(0.5 * d), 0.0) * sh, axis=0)
    SD = tl.sum(sd + n * d, axis=0)
    N = tl.sum(n, axis=0)
    return SA, SH, SD, N


@triton.jit
def pack_key(z, idx):
    """int64 key of float32 ``z`` at int32 index ``idx``: ordered by (z, -idx)."""
    bits = z.to(tl.int32, bitcast=True)
    ordk = bits ^ ((bits >> 31) & 0x7FFFFFFF)  # two's complement order == float order
    ordk = tl.where(z == 0.0, 0, ordk)  # -0.0 ties with +0.0, as in torch.sort
    return (ordk.to(tl.int64) << 32) | (0x7FFFFFFF - idx).to(tl.int64)


@triton.jit
def unpack_key(key):
    """Inverse of :func:`pack_key`: ``(z float32, idx int32)``."""
    hi = (key >> 32).to(tl.int32)
    bits = hi ^ ((hi >> 31) & 0x7FFFFFFF)
    z = bits.to(tl.float32, bitcast=True)
    idx = 0x7FFFFFFF - key.to(tl.int32)  # the low word, < 2^31, survives the truncation
    return z, idx


@triton.jit
def empty_topk(K: tl.constexpr):
    """A running top-K holding K distinct sentinels below every real key (and above padding)."""
    return KEY_MIN + 1 + tl.arange(0, K).to(tl.int64)


@triton.jit
def topk_insert(best, keys, K: tl.constexpr, BITONIC: tl.constexpr):
    """Running top-K (unordered, distinct keys) ``best`` [K] updated with a chunk ``keys`` [N >= K].

    Few newcomers (the usual case once ``best`` is warm): pull them out of the chunk one
    at a time, largest first, each replacing the current K-th best. Many newcomers
    (a cold ``best``) and ``BITONIC``: one bitonic top-K of the chunk merged with ``best``.
    The result is the same set either way: the K largest of ``best`` and ``keys``.
    ``tl.topk`` is avoided under the interpreter, where it is very slow.
    """
    thr = tl.min(best, axis=0)
    mk = tl.max(keys, axis=0)
    if mk > thr:
        use_sort = False
        if BITONIC:
            use_sort = tl.sum((keys > thr).to(tl.int32), axis=0) > K // 8
        if use_sort:
            both = tl.reshape(tl.join(best, tl.topk(keys, K)), [2 * K])
            best = tl.topk(both, K)
        else:
            while mk > thr:
                best = tl.where(best == thr, mk, best)  # keys are distinct: replaces one entry
                thr = tl.min(best, axis=0)
                mk = tl.max(tl.where(keys < mk, keys, KEY_MIN), axis=0)
    return best
