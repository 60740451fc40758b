"""Triton truncation: top-k / top-p / min-p / typical / epsilon / eta / top-h / top-nσ / p-less.

No sort. Every cut-off is a threshold on a per-token key that is monotone in
what the warper orders by, so it is found by bisection over the 2^32 values of
an order-preserving int32 key of a float32, each step one counting (or mass
summing) pass over the row: 32 passes, exact in float32, independent of V.

One program per row; each knob is one launch that (1) computes the row's stats
over the tokens still alive (max, lse, and the entropy / moments the knob
needs), (2) bisects its threshold, (3) writes -inf over the removed tokens. Knobs
run in Hugging Face's order on the output of the previous one, as HF's warper
chain does. The row lives in L2 on a GPU, so the 30-odd passes are cheap next to
one trip to HBM; B = 1 is a single program (a split-row variant is future work).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

# knob ids (constexpr)
TOP_K, TOP_P, MIN_P, TYPICAL, EPSILON, ETA, TOP_H, TOP_N_SIGMA, P_LESS = range(9)
# aggregate modes of the bisection pass (constexpr)
_CNT_GT, _MASS_LE, _TYP_MASS_LE, _TYP_CNT_LE, _ENT_GE, _CNT_GE = range(6)

_INT32_MIN = -(2**31)
_INT32_MAX = 2**31 - 1


@triton.jit
def _key(z):
    """Order-preserving int32 of a float32: a < b  <=>  key(a) < key(b) (no NaN)."""
    b = z.to(tl.int32, bitcast=True)
    return tl.where(b >= 0, b, b ^ 0x7FFFFFFF)


@triton.jit
def _scale_kernel(x_ptr, out_ptr, bad_ptr, x_stride, out_stride, V, T, BLOCK: tl.constexpr):
    """out = x / T in float32; a row holding NaN or +inf is flagged and zeroed (NaN at the end)."""
    row = tl.program_id(0).to(tl.int64)
    badv = tl.zeros([BLOCK], dtype=tl.int32)
    for start in range(0, V, BLOCK):
        cols = start + tl.arange(0, BLOCK)
        z = tl.load(x_ptr + row * x_stride + cols, mask=cols < V, other=0.0).to(tl.float32) / T
        badv = badv | ((z != z) | (z == float("inf"))).to(tl.int32)
    bad = tl.max(badv, axis=0)
    tl.store(bad_ptr + row, bad)
    for start in range(0, V, BLOCK):
        cols = start + tl.arange(0, BLOCK)
        msk = cols < V
        z = tl.load(x_ptr + row * x_stride + cols, mask=msk, other=0.0).to(tl.float32) / T
        tl.store(out_ptr + row * out_stride + cols, tl.where(bad != 0, 0.0, z), mask=msk)


@triton.jit
def _nan_rows_kernel(out_ptr, bad_ptr, out_stride, V, BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    if tl.load(bad_ptr + row) != 0:
        for start in range(0, V, BLOCK):
            cols = start + tl.arange(0, BLOCK)
            tl.store(out_ptr + row * out_stride + cols, tl.full([BLOCK], float("nan"), tl.float32), mask=cols < V)


@triton.jit
def _agg(ptr, V, K, lse, H, MODE: tl.constexpr, BLOCK: tl.constexpr):
    """One pass: a sum over the row selected by the threshold K (see the modes)."""
    acc = tl.zeros([BLOCK], dtype=tl.float32)
    for start in range(0, V, BLOCK):
        cols = start + tl.arange(0, BLOCK)
        z = tl.load(ptr + cols, mask=cols < V, other=float("-inf"))
        live = z > float("-inf")
        logp = tl.where(live, z - lse, 0.0)
        p = tl.where(live, tl.exp(logp), 0.0)
        if MODE == 0:  # count(key(z) > K), live tokens
            v = tl.where(live & (_key(z) > K), 1.0, 0.0)
        elif MODE == 1:  # mass of key(z) <= K
            v = tl.where(_key(z) <= K, p, 0.0)
        elif MODE == 2:  # typical: mass of key(|-logp - H|) <= K
            v = tl.where(live & (_key(tl.abs(-logp - H)) <= K), p, 0.0)
        elif MODE == 3:  # typical: count of key(|-logp - H|) <= K
            v = tl.where(live & (_key(tl.abs(-logp - H)) <= K), 1.0, 0.0)
        elif MODE == 4:  # top-h: entropy terms of key(z) >= K
            v = tl.where(live & (_key(z) >= K), -p * logp, 0.0)
        else:  # count(key(z) >= K)
            v = tl.where(live & (_key(z) >= K), 1.0, 0.0)
        acc += v
    return tl.sum(acc, axis=0)


@triton.jit
def _kth_largest_key(ptr, V, k, BLOCK: tl.constexpr):
    """Smallest K with count(key > K) < k: the key of the k-th largest live logit."""
    lo = tl.full([], _INT32_MIN, tl.int64)
    hi = tl.full([], _INT32_MAX, tl.int64)
    for _ in range(32):
        mid = lo + (hi - lo) // 2
        ok = _agg(ptr, V, mid, 0.0, 0.0, 0, BLOCK) < k
        hi = tl.where(ok, mid, hi)
        lo = tl.where(ok, lo, mid + 1)
    return lo


@triton.jit
def _knob_kernel(
    out_ptr,
    out_stride,
    V,
    param,
    min_keep,
    KNOB: tl.constexpr,
    BLOCK: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    ptr = out_ptr + row * out_stride
    # -- stats of the live tokens: max m, lse, entropy H, Σp², mean/var of z --
    mv = tl.full([BLOCK], float("-inf"), tl.float32)
    for start in range(0, V, BLOCK):
        cols = start + tl.arange(0, BLOCK)
        mv = tl.maximum(mv, tl.load(ptr + cols, mask=cols < V, other=float("-inf")))
    m = tl.max(mv, axis=0)
    sv = tl.zeros([BLOCK], dtype=tl.float32)
    for start in range(0, V, BLOCK):
        cols = start + tl.arange(0, BLOCK)
        z = tl.load(ptr + cols, mask=cols < V, other=float("-inf"))
        sv += tl.where(z > float("-inf"), tl.exp(z - m), 0.0)
    lse = m + tl.log(tl.sum(sv, axis=0))
    H = 0.0
    p2 = 0.0
    zmean = 0.0
    zvar = 0.0
    if (KNOB == 3) | (KNOB == 5) | (KNOB == 6) | (KNOB == 8) | (KNOB == 7):
        hv = tl.zeros([BLOCK], dtype=tl.float32)
        qv = tl.zeros([BLOCK], dtype=tl.float32)
        cv = tl.zeros([BLOCK], dtype=tl.float32)
        zs = tl.zeros([BLOCK], dtype=tl.float32)
        for start in range(0, V, BLOCK):
            cols = start + tl.arange(0, BLOCK)
            z = tl.load(ptr + cols, mask=cols < V, other=float("-inf"))
            live = z > float("-inf")
            logp = tl.where(live, z - lse, 0.0)
            p = tl.where(live, tl.exp(logp), 0.0)
            hv += -p * logp
            qv += p * p
            cv += tl.where(live, 1.0, 0.0)
            zs += tl.where(live, z, 0.0)
        H = tl.sum(hv, axis=0)
        p2 = tl.sum(qv, axis=0)
        n = tl.sum(cv, axis=0)
        zmean = tl.sum(zs, axis=0) / n
        if KNOB == 7:
            dv = tl.zeros([BLOCK], dtype=tl.float32)
            for start in range(0, V, BLOCK):
                cols = start + tl.arange(0, BLOCK)
                z = tl.load(ptr + cols, mask=cols < V, other=float("-inf"))
                d = tl.where(z > float("-inf"), z - zmean, 0.0)
                dv += d * d
            zvar = tl.sum(dv, axis=0) / tl.maximum(n - 1.0, 1.0)  # (N - 1)-normalised, as torch.std

    # -- the threshold: keep key(z) >= K_keep (or, for typical, key(shift) <= K_typ) --
    K_top = _key(m).to(tl.int64)  # keeps at least the max
    if min_keep > 1:
        K_top = _kth_largest_key(ptr, V, min_keep, BLOCK)
    K_keep = K_top
    K_typ = tl.full([], _INT32_MAX, tl.int64)
    cut = 0.0  # a direct threshold on p, for min-p / epsilon / eta / p-less
    zcut = float("-inf")
    if KNOB == 0:  # top-k: the k-th largest logit (k already max'ed with min_keep)
        K_keep = _kth_largest_key(ptr, V, param, BLOCK)
    elif KNOB == 1:  # top-p: smallest K with mass(key <= K) > 1 - top_p
        lo = tl.full([], _INT32_MIN, tl.int64)
        hi = tl.full([], _INT32_MAX, tl.int64)
        for _ in range(32):
            mid = lo + (hi - lo) // 2
            ok = _agg(ptr, V, mid, lse, H, 1, BLOCK) > param  # param = 1 - top_p
            hi = tl.where(ok, mid, hi)
            lo = tl.where(ok, lo, mid + 1)
        K_keep = tl.minimum(lo, K_top)
    elif KNOB == 3:  # typical: smallest K with mass(key(shift) <= K) >= mass
        lo = tl.full([], 0, tl.int64)
        hi = tl.full([], _INT32_MAX, tl.int64)
        for _ in range(32):
            mid = lo + (hi - lo) // 2
            ok = _agg(ptr, V, mid, lse, H, 2, BLOCK) >= param
            hi = tl.where(ok, mid, hi)
            lo = tl.where(ok, lo, mid + 1)
        K_typ = lo
        if min_keep > 1:  # the min_keep smallest shifts are kept too
            lo = tl.full([], 0, tl.int64)
            hi = tl.full([], _INT32_MAX, tl.int64)
            for _ in range(32):
                mid = lo + (hi - lo) // 2
                ok = _agg(ptr, V, mid, lse, H, 3, BLOCK) >= min_keep
                hi = tl.where(ok, mid, hi)
                lo = tl.where(ok, lo, mid + 1)
            K_typ = tl.maximum(K_typ, lo)
        K_keep = tl.full([], _INT32_MIN, tl.int64)
    elif KNOB == 6:  # top-h: smallest K with Σ_{key >= K} -p log p <= α H, keeping the max
        lo = tl.full([], _INT32_MIN, tl.int64)
        hi = tl.full([], _INT32_MAX, tl.int64)
        for _ in range(32):
            mid = lo + (hi - lo) // 2
            ok = _agg(ptr, V, mid, lse, H, 4, BLOCK) <= param * H
            hi = tl.where(ok, mid, hi)
            lo = tl.where(ok, lo, mid + 1)
        K_keep = tl.minimum(lo, _key(m).to(tl.int64))
    elif KNOB == 2:  # min-p
        cut = param * tl.exp(m - lse)
    elif KNOB == 4:  # epsilon
        cut = param
    elif KNOB == 5:  # eta
        cut = tl.minimum(param, tl.sqrt(param) * tl.exp(-H))
    elif KNOB == 7:  # top-n-sigma
        zcut = m - param * tl.sqrt(zvar)
    else:  # p-less
        cut = p2

    # -- write -inf over the removed tokens --
    for start in range(0, V, BLOCK):
        cols = start + tl.arange(0, BLOCK)
        msk = cols < V
        z = tl.load(ptr + cols, mask=msk, other=float("-inf"))
        k = _key(z)
        if KNOB == 3:
            keep = z > float("-inf")
            keep = keep & (_key(tl.abs(-(z - lse) - H)) <= K_typ)
        elif (KNOB == 0) | (KNOB == 1) | (KNOB == 6):
            keep = k >= K_keep
        elif KNOB == 7:
            keep = z >= zcut
        else:
            keep = (tl.exp(z - lse) >= cut) | (k >= K_top)
        tl.store(ptr + cols, tl.where(keep, z, float("-inf")), mask=msk)


def _block(V: int) -> int:
    return min(1024, triton.next_power_of_2(max(V, 16)))


def truncate(
    logits: torch.Tensor,
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
) -> torch.Tensor:
    """``[B, V]`` logits (last dim contiguous) -> float32 ``logits / T`` with removed tokens at -inf.

    Same arguments, off-values and contract as ``fuq.reference.truncate`` (and the
    ``fuq::truncate`` schema): top_k 0, top_p 1, min_p 0, typical_p 1, epsilon 0, eta 0,
    top_h 0, top_n_sigma < 0 and p_less False are off; a row holding NaN or +inf comes
    back all NaN, an all -inf row stays all -inf. Arguments are assumed validated by
    ``fuq.truncate``.
    """
    B, V = logits.shape
    out = torch.empty((B, V), dtype=torch.float32, device=logits.device)
    if B == 0:
        return out
    BLOCK = _block(V)
    T = float(temperature)
    bad = torch.empty((B,), dtype=torch.int32, device=logits.device)
    _scale_kernel[(B,)](logits, out, bad, logits.stride(0), out.stride(0), V, T, BLOCK=BLOCK)
    mk = int(min_tokens_to_keep)
    plan = [
        (TOP_H, top_h if top_h > 0.0 else None, 1),
        (TOP_K, float(min(max(int(top_k), mk), V)) if top_k > 0 else None, mk),
        (TOP_P, 1.0 - float(top_p) if top_p < 1.0 else None, mk),
        (MIN_P, min_p if min_p > 0.0 else None, mk),
        (TYPICAL, typical_p if typical_p < 1.0 else None, mk),
        (EPSILON, epsilon if epsilon > 0.0 else None, mk),
        (ETA, eta if eta > 0.0 else None, mk),
        (TOP_N_SIGMA, top_n_sigma if top_n_sigma >= 0.0 else None, 1),
        (P_LESS, 1.0 if p_less else None, 1),
    ]
    for knob, param, keep in plan:
        if param is None:
            continue
        _knob_kernel[(B,)](out, out.stride(0), V, float(param), min(keep, V), KNOB=knob, BLOCK=BLOCK, num_warps=8)
    _nan_rows_kernel[(B,)](out, bad, out.stride(0), V, BLOCK=BLOCK)
    return out
