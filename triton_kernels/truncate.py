"""Triton truncation: top-k / top-p / min-p / typical / epsilon / eta / top-h / top-nσ / p-less.

No sort. Every cut is either a threshold on p or z (min-p, epsilon, eta, top-nσ, p-less)
or a *position* in a strict order of the row, found by a 16-way search:

* the order of a knob is ``(prim asc, token id asc)``, ``prim`` an order-preserving int32
  key: ``-1 - key(z)`` for "z descending" (top-k, top-p, top-h), ``key(|-log p - H|)`` for
  typical. A token's position is the int64 ``pos = (prim + 2^31) << IDB | id`` (``IDB``
  bits hold any id < V), so positions are distinct and ordered as the order;
* the cut is the smallest position X whose inclusive cumulative weight (probability,
  count or scaled entropy term) reaches a target. Each round of the search splits the
  interval holding X into 16 and sums the weights below the 15 inner pivots in one pass
  over the row: ``(32 + IDB) / 4`` passes, exact, independent of V and of the data;
* a prefix of the order is ``pos <= X``; with ``IDB = 0`` positions are value keys and the
  cut keeps ties (top-k, ``min_tokens_to_keep`` of the thresholds).

That is the tie rule of ``fuq.reference`` (module docstring): top-k and the thresholds
keep equal values together; top-p, typical and top-h keep a prefix of their order, so on
a tie group at the cut only the lower ids stay. Top-h's entropy terms are summed scaled by
one positive factor per row, relative to the runner-up when the maximum is alone, so a
maximum 90 or 1000 nats ahead does not collapse the sums (see :func:`_toph_scale`).

Two launch shapes, chosen by :func:`split_plan`:

* **one program per row** (B fills the GPU): one launch per knob, ``_knob_kernel``, walks
  the row's passes itself (the row stays in L2) with the 16-way search above;
* **split rows** (small B): every launch is ``(B, S)`` (S programs per row, each over a
  segment, writing partial sums); the last program of a row to finish its segment (a
  per-row atomic counter, cached at zero: no fill kernel) reduces the S partials and
  advances the row's state (``fst`` / ``ist``), so no launch waits for another program and
  no finaliser is a launch of its own. The launches of a knob:

  - ``_scale_kernel`` (the first knob only) writes ``x / T`` and reduces the row's max and
    runner-up; the first round of a first top-k / top-p search runs there too, weighted
    relative to each segment's max and rescaled to the row's by the last program: an
    approximate narrowing, so the interval it keeps is the one aligned block of 1, 16 or
    256 sub-intervals that covers every sub-interval within ``EPS1·Σ`` of the target
    (:func:`_fin_first`; the exp errors stay below 2^-14·Σ);
  - ``_part_kernel``: the moments (with top-h's Σ below the max), top-nσ's variance,
    top-h's Σ of terms, and 256-pivot search rounds (8 bits of the position each), fused
    where one does not need the other's result (a search round and the pass that sets its
    target share a launch); the first exact round after the approximate one also sums the
    weight below its interval and Σ;
  - ``_cand_kernel`` after two 8-bit rounds: every program writes the ids of its segment's
    tokens still in the interval (a buffer of V ids per row: it cannot overflow) and the
    row's last program runs the remaining ``(IDB + 16) / 4`` 16-way rounds alone over them
    (:func:`_finish`): few tokens on real rows, the whole row on a uniform one (slower,
    still exact);
  - ``_apply_kernel`` writes -inf over the removed tokens and reduces the max of the kept
    ones for the next knob, or (``fuq.sample``: :func:`truncate_draw`) draws the id in its
    last program (triton_kernels/draw.py's ``_draw_row``).

  At B = 1, V = 262144: top-p and top-k 4 launches (18 and 13 before), min-p / epsilon /
  eta / p-less 3 (5), top-nσ 4 (6), typical and top-h 6 (18, 20), top-p with
  min_tokens_to_keep 7 (31); ``fuq.sample`` adds no launch of its own for the draw (plus
  ``logit_stats``' 1 and ``torch.rand``: top-p sampling is 6 kernels, 24 before). The cut decisions are the ones of the
  one-program path: float64 pivot sums, the fma rule of :func:`_fin_pivots`,
  :func:`_toph_one_group` (counts and a uniform row's weights are exact integers); only
  the order of the float64 additions differs (a pivot's sum is the weight below the
  candidates plus theirs), as between the two launch shapes before.
  B = 1 at V = 262144 spreads over every SM.

Knobs run in Hugging Face's order, each on the output of the previous one. Division and
square roots that decide a kept set are round-to-nearest (``div_rn``, ``sqrt_rn``), as on
the CPU. A row holding NaN or +inf comes back all NaN; an all -inf row stays all -inf.
Every launch runs under ``torch.cuda.device(logits.device)``.
"""

from __future__ import annotations

import contextlib
import struct

import torch
import triton
import triton.language as tl

from ._common import row_counters as _counters
from ._common import sm_count as _sm_count
from .draw import NP as DNP
from .draw import _draw_chunk, _draw_row
from .draw import draw as _draw

# knob ids (constexpr)
TOP_K, TOP_P, MIN_P, TYPICAL, EPSILON, ETA, TOP_H, TOP_N_SIGMA, P_LESS = range(9)
# orders (PMODE) and weights (WMODE) of a search (constexpr)
P_Z, P_TYP = 0, 1
W_CNT, W_P, W_H = 0, 1, 2

NPIV = tl.constexpr(16)  # pivots per search round: 4 bits of the position per pass
_OFF = tl.constexpr(2**31)  # prim + _OFF >= 0
# float state of a row (split path), fst[B, NF]; tl.constexpr: read inside @triton.jit code
F_M, F_LSE, F_H, F_P2, F_ZMEAN, F_CUT, F_ZCUT, F_N0, F_M2, F_LOGS, F_WTOP, F_MREF, F_TARGET, F_N, F_S, F_WTOP1 = (
    tl.constexpr(i) for i in range(16)
)
NF = tl.constexpr(16)
# int64 state of a row (split path), ist[B, NI]: the search interval (base, width), the cuts, Σ
I_BASE, I_STEP, I_X, I_Y, I_KV, I_S = (tl.constexpr(i) for i in range(6))  # I_S: float64 bits of Σ
I_SB = tl.constexpr(6)  # float64 bits of the weight below the search interval
I_BAD = tl.constexpr(7)  # the row holds NaN / +inf
NI = tl.constexpr(8)
NSC = tl.constexpr(16)  # scalar partials per program (split path), then NP8 pivot sums
NP8 = tl.constexpr(256)  # pivots of a split row's parallel search round: 8 bits of the position per launch
PW = tl.constexpr(16 + 256)  # float64 partials per program and launch: NSC + NP8
RCH = tl.constexpr(8)  # partial rows reduced at a time by a finaliser
EPS1 = tl.constexpr(2.0**-12)  # margin of the approximate first round, relative to Σ (exp errors: < 2^-14)


# ------------------------------------------------------------------------------ elementwise


@triton.jit
def _vkey(z):
    """Order-preserving int32 of a float32 (no NaN), -0.0 folded onto +0.0: a < b <=> key(a) < key(b)."""
    b = z.to(tl.int32, bitcast=True)
    k = tl.where(b >= 0, b, b ^ 0x7FFFFFFF)
    return tl.where(z == 0.0, 0, k)


@triton.jit
def _pos(z, idx, lse, H, IDB, PMODE: tl.constexpr):
    """int64 position of each token in the knob's order: (prim asc, id asc)."""
    if PMODE == 0:  # z descending
        prim = -1 - _vkey(z)
    else:  # typical: |-log p - H| ascending
        prim = _vkey(tl.abs(-(z - lse) - H))
    ids = idx.to(tl.int64) & ((tl.full([], 1, tl.int64) << IDB) - 1)  # IDB = 0: value keys, ties equal
    return ((prim.to(tl.int64) + _OFF) << IDB) | ids


@triton.jit
def _vpos(z):
    """The position of z in the order "z descending" with IDB = 0: a value key (ties equal)."""
    return (-1 - _vkey(z)).to(tl.int64) + _OFF


@triton.jit
def _weight(z, live, lse, m, logs, wtop, mref, WMODE: tl.constexpr):
    """The search weight of each token: 1, p, or top-h's scaled entropy term; 0 for removed tokens."""
    if WMODE == 0:
        w = tl.where(live, 1.0, 0.0)
    elif WMODE == 1:  # exp(z - m): 1 exactly on the top group (the cut compares with p·S, S = Σ)
        w = tl.where(live, tl.exp(tl.where(live, z - m, 0.0)), 0.0)
    else:
        # S·e^{m - mref}·(-p log p) = e^{z - mref}·(log S + m - z); the top token's is wtop
        rest = tl.exp(tl.where(live, z - mref, 0.0)) * (logs + (m - z))
        w = tl.where(live, tl.where(z == m, wtop, rest), 0.0)
    return w


@triton.jit
def _keep(z, idx, lse, H, m, cut, zcut, X, Y, KV, IDB, KNOB: tl.constexpr):
    """The kept mask of one knob, given its cut (X, Y positions; KV a value key; cut on p; zcut on z)."""
    live = z > float("-inf")
    if KNOB == 0:  # top-k: ties with the k-th value kept (IDB = 0 positions are value keys)
        keep = _vpos(z) <= X
    elif KNOB == 1:  # top-p: a prefix, at least the first min_keep
        keep = _pos(z, idx, lse, H, IDB, 0) <= tl.maximum(X, Y)
    elif KNOB == 3:  # typical: a prefix of its own order
        keep = _pos(z, idx, lse, H, IDB, 1) <= tl.maximum(X, Y)
    elif KNOB == 6:  # top-h: before the first position past the bound
        keep = _pos(z, idx, lse, H, IDB, 0) < X
    elif KNOB == 7:  # top-nσ
        keep = z >= zcut
    else:  # min-p, epsilon, eta, p-less: p >= cut, or at/above the min_keep-th value
        keep = (tl.exp(z - lse) >= cut) | (_vpos(z) <= KV)
    return live & keep


# --------------------------------------------------------------- passes over [lo, hi) of a row


@triton.jit
def _seg_max(ptr, lo, hi, BLOCK: tl.constexpr):
    mv = tl.full([BLOCK], float("-inf"), tl.float32)
    for start in range(lo, hi, BLOCK):
        cols = start + tl.arange(0, BLOCK)
        mv = tl.maximum(mv, tl.load(ptr + cols, mask=cols < hi, other=float("-inf")))
    return tl.max(mv, axis=0)


@triton.jit
def _seg_moments(ptr, lo, hi, m, BLOCK: tl.constexpr):
    """Relative to the row max m: Σe^d, Σe^d·d, Σe^2d, #live, Σd, #(z == m), max z < m (d = z - m)."""
    s = tl.zeros([BLOCK], tl.float32)
    t = tl.zeros([BLOCK], tl.float32)
    q = tl.zeros([BLOCK], tl.float32)
    n = tl.zeros([BLOCK], tl.float32)
    sd = tl.zeros([BLOCK], tl.float32)
    n0 = tl.zeros([BLOCK], tl.float32)
    m2 = tl.full([BLOCK], float("-inf"), tl.float32)
    for start in range(lo, hi, BLOCK):
        cols = start + tl.arange(0, BLOCK)
        z = tl.load(ptr + cols, mask=cols < hi, other=float("-inf"))
        live = z > float("-inf")
        d = tl.where(live, z - m, 0.0)
        e = tl.where(live, tl.exp(d), 0.0)
        s += e
        t += e * d
        q += e * e
        n += tl.where(live, 1.0, 0.0)
        sd += d
        n0 += tl.where(live & (z == m), 1.0, 0.0)
        m2 = tl.maximum(m2, tl.where(z < m, z, float("-inf")))
    return (
        tl.sum(s, axis=0),
        tl.sum(t, axis=0),
        tl.sum(q, axis=0),
        tl.sum(n, axis=0),
        tl.sum(sd, axis=0),
        tl.sum(n0, axis=0),
        tl.max(m2, axis=0),
    )


@triton.jit
def _seg_var(ptr, lo, hi, zmean, BLOCK: tl.constexpr):
    dv = tl.zeros([BLOCK], tl.float32)
    for start in range(lo, hi, BLOCK):
        cols = start + tl.arange(0, BLOCK)
        z = tl.load(ptr + cols, mask=cols < hi, other=float("-inf"))
        d = tl.where(z > float("-inf"), z - zmean, 0.0)
        dv += d * d
    return tl.sum(dv, axis=0)


@triton.jit
def _seg_r2(ptr, lo, hi, m, m2, BLOCK: tl.constexpr):
    """Σ e^{z - m2} over the live tokens below the max (top-h's sum relative to the runner-up)."""
    rv = tl.zeros([BLOCK], tl.float32)
    for start in range(lo, hi, BLOCK):
        cols = start + tl.arange(0, BLOCK)
        z = tl.load(ptr + cols, mask=cols < hi, other=float("-inf"))
        ok = (z > float("-inf")) & (z < m)
        rv += tl.where(ok, tl.exp(tl.where(ok, z - m2, 0.0)), 0.0)
    return tl.sum(rv, axis=0)


@triton.jit
def _seg_hs(ptr, lo, hi, lse, m, logs, wtop, mref, BLOCK: tl.constexpr):
    hv = tl.zeros([BLOCK], tl.float32)
    for start in range(lo, hi, BLOCK):
        cols = start + tl.arange(0, BLOCK)
        z = tl.load(ptr + cols, mask=cols < hi, other=float("-inf"))
        hv += _weight(z, z > float("-inf"), lse, m, logs, wtop, mref, 2)
    return tl.sum(hv, axis=0)


@triton.jit
def _seg_pivots(ptr, lo, hi, base, step, lse, H, m, logs, wtop, mref, IDB,
                PMODE: tl.constexpr, WMODE: tl.constexpr, NP: tl.constexpr, SB: tl.constexpr):
    """[NP] sums of the weights of the tokens at or below each pivot base + (b + 1)·step - 1."""
    piv = base + (tl.arange(0, NP).to(tl.int64) + 1) * step - 1
    acc = tl.zeros([SB, NP], tl.float64)  # float64: a mass bound 1 float32 ulp away still cuts right
    for start in range(lo, hi, SB):
        cols = start + tl.arange(0, SB)
        z = tl.load(ptr + cols, mask=cols < hi, other=float("-inf"))
        live = z > float("-inf")
        w = _weight(z, live, lse, m, logs, wtop, mref, WMODE).to(tl.float64)
        p = _pos(z, cols, lse, H, IDB, PMODE)
        acc += tl.where(p[:, None] <= piv[None, :], w[:, None], 0.0)
    return tl.sum(acc, axis=0)


# ------------------------------------------------------------------------ per-row finalisers


@triton.jit
def _fin_moments(m, s, t, q, n, sd):
    """(lse, H, Σp², mean z) of the live tokens from the moments' sums."""
    logs = tl.log(s)
    lse = m + logs  # all -inf row: -inf
    H = logs - tl.math.div_rn(t, s)
    p2 = tl.math.div_rn(q, s * s)
    zmean = m + tl.math.div_rn(sd, tl.maximum(n, 1.0))
    return lse, H, p2, zmean


@triton.jit
def _toph_scale(s, n0, m, m2, r2):
    """(log S, the top token's scaled term, the reference of the exponentials) of top-h.

    All terms are scaled by S·e^{m - mref}. A lone maximum (n0 = 1) with a runner-up g nats
    below: mref = m2, x = e^{-g}·r2 (S = 1 + x) and the top term e^{g}·log1p(x) is
    r2·log1p(x)/x, finite whatever g. Otherwise mref = m and the top terms are log S >= log 2
    (or 0 for a single live token).
    """
    alone = (n0 == 1.0) & (m2 > float("-inf"))
    x = tl.exp(tl.where(alone, m2 - m, 0.0)) * r2
    u = 1.0 + x
    ratio = tl.where(u == 1.0, 1.0 - 0.5 * x, tl.math.div_rn(tl.log(u), u - 1.0))  # log1p(x) / x
    logs = tl.where(alone, ratio * x, tl.log(s))
    wtop = tl.where(alone, r2 * ratio, logs)
    mref = tl.where(alone, m2, m)
    return logs, wtop, mref


@triton.jit
def _f64(bits):
    """The float64 whose bits the int64 ``bits`` holds (a Python float argument is float32 in Triton)."""
    return bits.to(tl.int64).to(tl.float64, bitcast=True)


@triton.jit
def _toph_one_group(alpha, n0, n, wtop, bound):
    """(wtop, bound) of top-h's search; on a row that is one tie group (every live token at the
    max: equal terms) the count #{i : i <= alpha·n} (alpha·n exact, at least 1) with weights 1,
    so a uniform row of V keeps #{j : (j + 1) / V <= alpha}, as the reference and the C++ kernel."""
    one = n0 == n
    nd = n.to(tl.float64)
    hi = alpha * nd
    lo = tl.fma(alpha, nd, -hi)
    f = tl.floor(hi)
    k = tl.where((f == hi) & (lo < 0.0), f - 1.0, f)
    k = tl.minimum(tl.maximum(k, 1.0), nd)
    return tl.where(one, 1.0, wtop), tl.where(one, k.to(tl.float32), bound)


@triton.jit
def _fin_pivots(sums, base, step, target, S, STRICT: tl.constexpr, MASS: tl.constexpr):
    """Next (base, step): the first of the 16 sub-intervals whose upper pivot meets the target.

    MASS (top-p, typical: the weights are exp(z - m), S their float64 total): the target is
    the float64 knob p and a pivot meets it iff its sum is not < p·S, decided on the exact
    product (one rounding, in the fma): a uniform row of V keeps #{j : j / V < p}.
    """
    if MASS:
        hit = tl.fma(target, S, -sums) <= 0.0
    elif STRICT:
        hit = sums > target
    else:
        hit = sums >= target
    b = tl.min(tl.where(hit, tl.arange(0, NPIV), NPIV - 1), axis=0)
    return base + b.to(tl.int64) * step, step // NPIV


@triton.jit
def _search(ptr, V, nbits, target, lse, H, m, logs, wtop, mref, IDB,
            PMODE: tl.constexpr, WMODE: tl.constexpr, STRICT: tl.constexpr, SB: tl.constexpr):
    """The smallest position whose inclusive cumulative weight meets the target (one program, whole row).

    Never met (rounding; fewer live tokens than a count): the last position, 2^nbits - 1.
    """
    base = tl.full([], 0, tl.int64)
    step0 = tl.full([], 1, tl.int64) << (nbits - 4)
    step = step0
    S = tl.zeros([], tl.float64)
    for _ in range(0, nbits // 4):
        sums = _seg_pivots(ptr, 0, V, base, step, lse, H, m, logs, wtop, mref, IDB, PMODE, WMODE, NPIV, SB)
        S = tl.where(step == step0, _total(sums), S)  # the first round's last pivot holds every token
        base, step = _fin_pivots(sums, base, step, target, S, STRICT, WMODE == 1)
    return base


@triton.jit
def _total(sums):
    return tl.sum(tl.where(tl.arange(0, NPIV) == NPIV - 1, sums, 0.0), axis=0)


# ------------------------------------------------------------------- one program per row


@triton.jit
def _knob_kernel(out_ptr, out_stride, V, param, pbits, min_keep, IDB,
                 KNOB: tl.constexpr, BLOCK: tl.constexpr, SB: tl.constexpr):
    """One knob on one row per program: stats, cut, then -inf over the removed tokens, in place.

    ``pbits``: the bits of the knob as the caller's float64 (``param`` is it rounded to float32):
    top-p / typical compare masses with it, top-h counts a one-group row with it."""
    param64 = _f64(pbits)
    row = tl.program_id(0).to(tl.int64)
    ptr = out_ptr + row * out_stride
    m = _seg_max(ptr, 0, V, BLOCK)
    s, t, q, n, sd, n0, m2 = _seg_moments(ptr, 0, V, m, BLOCK)
    lse, H, p2, zmean = _fin_moments(m, s, t, q, n, sd)
    logs = tl.log(s)
    wtop = logs
    mref = m
    nb = 32 + IDB
    KV = _vpos(m)  # the max's value key: thresholds keep the max
    X = tl.full([], 0, tl.int64)
    Y = tl.full([], 0, tl.int64)
    cut = 0.0
    zcut = float("-inf")
    if KNOB == 0:
        X = _search(ptr, V, 32, param, lse, H, m, logs, wtop, mref, 0, 0, 0, False, SB)
    elif KNOB == 1:
        X = _search(ptr, V, nb, param64, lse, H, m, logs, wtop, mref, IDB, 0, 1, False, SB)
        if min_keep > 1:
            Y = _search(ptr, V, nb, min_keep.to(tl.float32), lse, H, m, logs, wtop, mref, IDB, 0, 0, False, SB)
    elif KNOB == 3:
        X = _search(ptr, V, nb, param64, lse, H, m, logs, wtop, mref, IDB, 1, 1, False, SB)
        if min_keep > 1:
            Y = _search(ptr, V, nb, min_keep.to(tl.float32), lse, H, m, logs, wtop, mref, IDB, 1, 0, False, SB)
    elif KNOB == 6:
        r2 = _seg_r2(ptr, 0, V, m, m2, BLOCK)
        logs, wtop, mref = _toph_scale(s, n0, m, m2, r2)
        hs = _seg_hs(ptr, 0, V, lse, m, logs, wtop, mref, BLOCK)
        bound = tl.maximum(param * hs, wtop)  # the first token is always kept
        wtop, bound = _toph_one_group(param64, n0, n, wtop, bound)
        X = _search(ptr, V, nb, bound, lse, H, m, logs, wtop, mref, IDB, 0, 2, True, SB)
    elif KNOB == 7:
        zvar = tl.math.div_rn(_seg_var(ptr, 0, V, zmean, BLOCK), tl.maximum(n - 1.0, 1.0))
        zcut = m - param * tl.math.sqrt_rn(zvar)
    else:
        if KNOB == 2:  # min-p
            cut = param * tl.exp(m - lse)
        elif KNOB == 4:  # epsilon
            cut = param
        elif KNOB == 5:  # eta
            cut = tl.minimum(param, tl.math.sqrt_rn(param) * tl.exp(-H))
        else:  # p-less
            cut = p2
        if min_keep > 1:
            KV = _search(ptr, V, 32, min_keep.to(tl.float32), lse, H, m, logs, wtop, mref, 0, 0, 0, False, SB)
    for start in range(0, V, BLOCK):
        cols = start + tl.arange(0, BLOCK)
        msk = cols < V
        z = tl.load(ptr + cols, mask=msk, other=float("-inf"))
        keep = _keep(z, cols, lse, H, m, cut, zcut, X, Y, KV, IDB, KNOB)
        tl.store(ptr + cols, tl.where(keep, z, float("-inf")), mask=msk)


# ----------------------------------------------------------------------- split rows, (B, S)


@triton.jit
def _lane_max2(mv, m2v, z):
    """Per lane: (max, largest value below the max), updated with z (-inf and NaN change nothing)."""
    up = z > mv
    m2v = tl.where(up, mv, tl.where(z < mv, tl.maximum(m2v, z), m2v))
    return tl.where(up, z, mv), m2v


@triton.jit
def _max2(mv, m2v):
    """(max, largest value below it) of [N] lane (or partial) pairs."""
    M = tl.max(mv, axis=0)
    return M, tl.max(tl.where(mv < M, mv, m2v), axis=0)


@triton.jit
def _arrive(cnt_ptr, row, S):
    """True in the row's last program to finish its part of this launch; it resets the row's
    counter for the next launch. The barrier orders every thread's stores before the (acq_rel,
    GPU-scope) counter; the last program reads the others' results past L1 (.cg)."""
    tl.debug_barrier()
    done = tl.atomic_add(cnt_ptr + row, 1, sem="acq_rel")
    last = done == S - 1
    if last:
        tl.store(cnt_ptr + row, 0)
    return last


@triton.jit
def _fin_max(row, fst_ptr, part_ptr, S, S_PAD: tl.constexpr):
    """The row's (max, runner-up) from the S partial pairs in part[row, :, 0:2]."""
    sp = tl.arange(0, S_PAD)
    t = part_ptr + (row * S + sp) * PW
    ms = tl.load(t, mask=sp < S, other=float("-inf"), cache_modifier=".cg")
    m2s = tl.load(t + 1, mask=sp < S, other=float("-inf"), cache_modifier=".cg")
    m, m2 = _max2(ms, m2s)
    tl.store(fst_ptr + row * NF + F_M, m.to(tl.float32))
    tl.store(fst_ptr + row * NF + F_M2, m2.to(tl.float32))
    return m


@triton.jit
def _fin_first(row, fst_ptr, ist_ptr, part_ptr, S, M, pbits, tgt, IDB, WMODE: tl.constexpr):
    """The search interval after the first round of _scale_kernel: the segments' sums rescaled to
    the row max M (float64), so only close to the exact sums (counts: exact). The sub-intervals
    that could hold the cut, [b_lo, b_hi] (a margin of EPS1·Σ either side of the target, far
    above the rounding of exp), are covered by one aligned interval of 1, 16 or 256 of them;
    the next round (EX0) sums exactly and finds the cut in it."""
    k = tl.arange(0, NP8)
    sums = tl.zeros([NP8], tl.float64)
    for s0 in range(0, S, RCH):
        r = s0 + tl.arange(0, RCH)
        ok = r < S
        mj = tl.load(part_ptr + (row * S + r) * PW, mask=ok, other=float("-inf"), cache_modifier=".cg")
        if WMODE == 1:
            sc = tl.where(mj > float("-inf"), tl.exp(mj - M), 0.0)
        else:
            sc = tl.where(ok, 1.0, 0.0).to(tl.float64)
        t = tl.load(part_ptr + (row * S + r[:, None]) * PW + NSC + k[None, :], mask=ok[:, None] & (k[None, :] < NP8),
                    other=0.0, cache_modifier=".cg")
        sums += tl.sum(t * sc[:, None], axis=0)
    if WMODE == 1:
        tot = tl.sum(tl.where(k == NP8 - 1, sums, 0.0), axis=0)
        target = _f64(pbits) * tot
        margin = tot * EPS1
    else:
        tl.store(fst_ptr + row * NF + F_TARGET, tgt)
        target = tgt + tl.zeros([], tl.float64)
        margin = tl.zeros([], tl.float64)
    b_lo = tl.min(tl.where(sums >= target - margin, k, NP8 - 1), axis=0)
    b_hi = tl.min(tl.where(sums >= target + margin, k, NP8 - 1), axis=0)
    step = (tl.full([], 1, tl.int64) << (IDB + 32)) // NP8
    if b_lo == b_hi:
        width = step
        base = b_lo.to(tl.int64) * step
    elif (b_lo // 16) == (b_hi // 16):
        width = step * 16
        base = (b_lo // 16).to(tl.int64) * width
    else:
        width = step * NP8
        base = tl.full([], 0, tl.int64)
    tl.store(ist_ptr + row * NI + I_BASE, base)
    tl.store(ist_ptr + row * NI + I_STEP, width)


@triton.jit
def _scale_kernel(x_ptr, out_ptr, bad_ptr, x_stride, out_stride, V, seg, T, fst_ptr, ist_ptr, part_ptr, cnt_ptr, S,
                  IDB, pbits, tgt, BLOCK: tl.constexpr, FIN: tl.constexpr, PIV: tl.constexpr, WMODE: tl.constexpr,
                  SBP: tl.constexpr, S_PAD: tl.constexpr):
    """out = x / T (IEEE division) over one segment; bad[row, split] flags NaN / +inf.

    FIN (split rows): the segment's (max, runner-up) too; the row's last program stores the
    row's (F_M, F_M2) and I_BAD, and fills a bad row with NaN (it stays NaN: see _apply_kernel).
    PIV: the first 256-pivot round of the first knob's search (top-k, top-p: the order "z
    descending" needs no statistic), weighted relative to the segment's own max, which the
    last program rescales to the row's: a conservative first narrowing (:func:`_fin_first`)."""
    row = tl.program_id(0).to(tl.int64)
    split = tl.program_id(1)
    lo = split * seg
    hi = tl.minimum(lo + seg, V)
    badv = tl.zeros([BLOCK], dtype=tl.int32)
    mv = tl.full([BLOCK], float("-inf"), tl.float32)
    m2v = tl.full([BLOCK], float("-inf"), tl.float32)
    for start in range(lo, hi, BLOCK):
        cols = start + tl.arange(0, BLOCK)
        msk = cols < hi
        x = tl.load(x_ptr + row * x_stride + cols, mask=msk, other=0.0).to(tl.float32)
        z = tl.math.div_rn(x, T)
        badv = badv | ((z != z) | (z == float("inf"))).to(tl.int32)
        tl.store(out_ptr + row * out_stride + cols, z, mask=msk)
        if FIN:
            mv, m2v = _lane_max2(mv, m2v, tl.where(msk, z, float("-inf")))
    tl.store(bad_ptr + row * tl.num_programs(1) + split, tl.max(badv, axis=0))
    if FIN:
        m, m2 = _max2(mv, m2v)
        dst = part_ptr + (row * S + split) * PW
        tl.store(dst + tl.arange(0, 2), tl.where(tl.arange(0, 2) == 0, m, m2))
        if PIV:
            tl.debug_barrier()  # this program's stores of the segment, before its threads read them back
            step = (tl.full([], 1, tl.int64) << (IDB + 32)) // NP8
            sums = _seg_pivots(out_ptr + row * out_stride, lo, hi, tl.full([], 0, tl.int64), step, 0.0, 0.0, m, 0.0,
                               0.0, 0.0, IDB, 0, WMODE, NP8, SBP)
            tl.store(dst + NSC + tl.arange(0, NP8), sums)
        if _arrive(cnt_ptr, row, S):
            M = _fin_max(row, fst_ptr, part_ptr, S, S_PAD)
            if PIV:
                _fin_first(row, fst_ptr, ist_ptr, part_ptr, S, M, pbits, tgt, IDB, WMODE)
            sp = tl.arange(0, S_PAD)
            bad = tl.max(tl.load(bad_ptr + row * S + sp, mask=sp < S, other=0, cache_modifier=".cg"), axis=0)
            tl.store(ist_ptr + row * NI + I_BAD, bad.to(tl.int64))
            if bad != 0:
                for start in range(0, V, BLOCK):
                    cols = start + tl.arange(0, BLOCK)
                    tl.store(out_ptr + row * out_stride + cols, tl.full([BLOCK], float("nan"), tl.float32),
                             mask=cols < V)


@triton.jit
def _nan_rows_kernel(out_ptr, bad_ptr, out_stride, V, seg, S, S_PAD: tl.constexpr, BLOCK: tl.constexpr):
    """A row with a bad segment comes back all NaN (one program per row: after the knobs)."""
    row = tl.program_id(0).to(tl.int64)
    split = tl.program_id(1)
    sp = tl.arange(0, S_PAD)
    bad = tl.max(tl.load(bad_ptr + row * S + sp, mask=sp < S, other=0), axis=0)
    if bad != 0:
        lo = split * seg
        hi = tl.minimum(lo + seg, V)
        for start in range(lo, hi, BLOCK):
            cols = start + tl.arange(0, BLOCK)
            tl.store(out_ptr + row * out_stride + cols, tl.full([BLOCK], float("nan"), tl.float32), mask=cols < hi)


@triton.jit
def _interval(it, IDB, FIRST: tl.constexpr):
    """(base, width) of the search interval: the whole order of 32 + IDB bits in the first round."""
    if FIRST:
        base = tl.full([], 0, tl.int64)
        width = tl.full([], 1, tl.int64) << (IDB + 32)
    else:
        base = tl.load(it + I_BASE)
        width = tl.load(it + I_STEP)
    return base, width


@triton.jit
def _part_kernel(out_ptr, out_stride, V, seg, fst_ptr, ist_ptr, part_ptr, cnt_ptr, IDB, S, param, pbits, tgt,
                 MOM: tl.constexpr, TOPH: tl.constexpr, VAR: tl.constexpr, HS: tl.constexpr, PIV: tl.constexpr,
                 FIRST: tl.constexpr, EX0: tl.constexpr, PMODE: tl.constexpr, WMODE: tl.constexpr,
                 STRICT: tl.constexpr, SET_TARGET: tl.constexpr, KNOB: tl.constexpr, BLOCK: tl.constexpr,
                 SBP: tl.constexpr, S_PAD: tl.constexpr):
    """The passes of one knob that share a launch, over one segment, into part[row, split, :]
    (NSC scalar lanes, then NP8 pivot sums); the row's last program to finish reduces them
    (:func:`_fin_part`). MOM: the moments (TOPH: and top-h's Σ below the max); VAR: top-nσ's
    variance; HS: top-h's Σ of entropy terms; PIV: one 256-pivot round of a search (FIRST: its
    interval is the whole order; SET_TARGET: its target is ``tgt``; EX0: the first exact round
    after _scale_kernel's approximate one, which also sums the weight below its interval and
    the row's total)."""
    row = tl.program_id(0).to(tl.int64)
    split = tl.program_id(1)
    ptr = out_ptr + row * out_stride
    lo = split * seg
    hi = tl.minimum(lo + seg, V)
    f = fst_ptr + row * NF
    m = tl.load(f + F_M)
    v = tl.arange(0, NSC)
    res = tl.zeros([NSC], tl.float64)
    if MOM:
        s, t, q, n, sd, n0, m2 = _seg_moments(ptr, lo, hi, m, BLOCK)
        res = tl.where(v == 0, s, tl.where(v == 1, t, tl.where(v == 2, q, res)))
        res = tl.where(v == 3, n, tl.where(v == 4, sd, tl.where(v == 5, n0, res)))
        if TOPH:
            res = tl.where(v == 7, _seg_r2(ptr, lo, hi, m, tl.load(f + F_M2), BLOCK), res)
    if VAR:
        res = tl.where(v == 8, _seg_var(ptr, lo, hi, tl.load(f + F_ZMEAN), BLOCK), res)
    if HS:
        hs = _seg_hs(ptr, lo, hi, tl.load(f + F_LSE), m, tl.load(f + F_LOGS), tl.load(f + F_WTOP),
                     tl.load(f + F_MREF), BLOCK)
        res = tl.where(v == 9, hs, res)
    dst = part_ptr + (row * S + split) * PW
    if PIV:
        base, width = _interval(ist_ptr + row * NI, IDB, FIRST)
        lse = tl.load(f + F_LSE)
        H = tl.load(f + F_H)
        logs = tl.load(f + F_LOGS)
        wtop = tl.load(f + F_WTOP1)
        mref = tl.load(f + F_MREF)
        sums = _seg_pivots(ptr, lo, hi, base, width // NP8, lse, H, m, logs, wtop, mref, IDB, PMODE, WMODE, NP8, SBP)
        tl.store(dst + NSC + tl.arange(0, NP8), sums)
        if EX0:
            below, tot = _seg_below(ptr, lo, hi, base, lse, H, m, logs, wtop, mref, IDB, PMODE, WMODE, SBP)
            res = tl.where(v == 10, below, tl.where(v == 11, tot, res))
    tl.store(dst + v, res)
    if _arrive(cnt_ptr, row, S):
        _fin_part(row, fst_ptr, ist_ptr, part_ptr, S, param, pbits, tgt, IDB, MOM, TOPH, VAR, HS, PIV, FIRST, EX0,
                  STRICT, SET_TARGET, WMODE == 1, KNOB, S_PAD)


@triton.jit
def _seg_below(ptr, lo, hi, base, lse, H, m, logs, wtop, mref, IDB,
               PMODE: tl.constexpr, WMODE: tl.constexpr, SB: tl.constexpr):
    """float64 (Σ of the weights of the tokens before position base, Σ of all the weights)."""
    below = tl.zeros([SB], tl.float64)
    tot = tl.zeros([SB], tl.float64)
    for start in range(lo, hi, SB):
        cols = start + tl.arange(0, SB)
        z = tl.load(ptr + cols, mask=cols < hi, other=float("-inf"))
        w = _weight(z, z > float("-inf"), lse, m, logs, wtop, mref, WMODE).to(tl.float64)
        below += tl.where(_pos(z, cols, lse, H, IDB, PMODE) < base, w, 0.0)
        tot += w
    return tl.sum(below, axis=0), tl.sum(tot, axis=0)


@triton.jit
def _fin_part(row, fst_ptr, ist_ptr, part_ptr, S, param, pbits, tgt, IDB,
              MOM: tl.constexpr, TOPH: tl.constexpr, VAR: tl.constexpr, HS: tl.constexpr, PIV: tl.constexpr,
              FIRST: tl.constexpr, EX0: tl.constexpr, STRICT: tl.constexpr, SET_TARGET: tl.constexpr,
              MASS: tl.constexpr, KNOB: tl.constexpr, S_PAD: tl.constexpr):
    """Reduce the S partials of a row and advance its state (fst / ist).

    MOM also sets the p cut of min-p / epsilon / eta / p-less (KNOB) and the max's value key;
    PIV narrows the search interval to the first of its 256 sub-intervals whose upper pivot
    meets the target (the rule of :func:`_fin_pivots`) and keeps the weight below it (I_SB)."""
    param64 = _f64(pbits)
    f = fst_ptr + row * NF
    it = ist_ptr + row * NI
    m = tl.load(f + F_M)
    bound = tl.zeros([], tl.float32)
    below0 = tl.zeros([], tl.float64)
    tot0 = tl.zeros([], tl.float64)
    if MOM | VAR | HS | EX0:
        sp = tl.arange(0, S_PAD)
        v = tl.arange(0, NSC)
        tile = part_ptr + (row * S + sp[:, None]) * PW + v[None, :]
        msk = (sp[:, None] < S) & (v[None, :] < NSC)
        sums64 = tl.sum(tl.load(tile, mask=msk, other=0.0, cache_modifier=".cg"), axis=0)
        below0 = tl.sum(tl.where(v == 10, sums64, 0.0), axis=0)
        tot0 = tl.sum(tl.where(v == 11, sums64, 0.0), axis=0)
        sums = sums64.to(tl.float32)
        if MOM:
            s = tl.sum(tl.where(v == 0, sums, 0.0), axis=0)
            t = tl.sum(tl.where(v == 1, sums, 0.0), axis=0)
            q = tl.sum(tl.where(v == 2, sums, 0.0), axis=0)
            n = tl.sum(tl.where(v == 3, sums, 0.0), axis=0)
            sd = tl.sum(tl.where(v == 4, sums, 0.0), axis=0)
            n0 = tl.sum(tl.where(v == 5, sums, 0.0), axis=0)
            lse, H, p2, zmean = _fin_moments(m, s, t, q, n, sd)
            tl.store(f + F_LSE, lse)
            tl.store(f + F_H, H)
            tl.store(f + F_ZMEAN, zmean)
            tl.store(f + F_N, n)
            tl.store(f + F_N0, n0)
            if TOPH:
                r2 = tl.sum(tl.where(v == 7, sums, 0.0), axis=0)
                logs, wtop, mref = _toph_scale(s, n0, m, tl.load(f + F_M2), r2)
                tl.store(f + F_LOGS, logs)
                tl.store(f + F_WTOP, wtop)
                tl.store(f + F_WTOP1, tl.where(n0 == n, 1.0, wtop))  # one tie group: weights 1 (_toph_one_group)
                tl.store(f + F_MREF, mref)
            # the max's value key: thresholds keep the max unless min_keep lowers it
            tl.store(it + I_KV, _vpos(m))
            if (KNOB == 2) | (KNOB == 4) | (KNOB == 5) | (KNOB == 8):
                tl.store(f + F_CUT, _p_cut(m, lse, H, p2, param, KNOB))
        if VAR:
            zvar = tl.math.div_rn(tl.sum(tl.where(v == 8, sums, 0.0), axis=0), tl.maximum(tl.load(f + F_N) - 1.0, 1.0))
            tl.store(f + F_ZCUT, m - param * tl.math.sqrt_rn(zvar))
        if HS:  # top-h's bound, the first token always kept; a one-group row counts (_toph_one_group)
            hs = tl.sum(tl.where(v == 9, sums, 0.0), axis=0)
            wtop = tl.load(f + F_WTOP)
            wtop, bound = _toph_one_group(param64, tl.load(f + F_N0), tl.load(f + F_N), wtop,
                                          tl.maximum(param * hs, wtop))
            tl.store(f + F_TARGET, bound)
    if PIV:
        k = tl.arange(0, NP8)
        sums = tl.zeros([NP8], tl.float64)
        for s0 in range(0, S, RCH):  # the S partials, RCH rows at a time (in a fixed order)
            r = s0 + tl.arange(0, RCH)
            t = tl.load(part_ptr + (row * S + r[:, None]) * PW + NSC + k[None, :],
                        mask=(r[:, None] < S) & (k[None, :] < NP8), other=0.0, cache_modifier=".cg")
            sums += tl.sum(t, axis=0)
        base, width = _interval(it, IDB, FIRST)
        if MASS:
            # the target is the float64 knob; Σ (the first round's last pivot) is kept in I_S
            if FIRST:
                tot = tl.sum(tl.where(k == NP8 - 1, sums, 0.0), axis=0)
                tl.store(it + I_S, tot.to(tl.int64, bitcast=True))
            elif EX0:
                tot = tot0
                tl.store(it + I_S, tot.to(tl.int64, bitcast=True))
            else:
                tot = tl.load(it + I_S).to(tl.float64, bitcast=True)
            target = param64
        else:
            tot = tl.zeros([], tl.float64)
            if HS:
                target = bound.to(tl.float64)
            elif FIRST and SET_TARGET:
                tl.store(f + F_TARGET, tgt)
                target = tgt + tl.zeros([], tl.float64)  # (tgt is a Python float when interpreted)
            else:
                target = tl.load(f + F_TARGET).to(tl.float64)
        step = width // NP8
        b = _first_hit(sums, target, tot, STRICT, MASS, NP8)
        if FIRST:
            below = tl.zeros([], tl.float64)
        elif EX0:
            below = below0
        else:
            below = tl.load(it + I_SB).to(tl.float64, bitcast=True)
        below = tl.where(b > 0, tl.sum(tl.where(k == b - 1, sums, 0.0), axis=0), below)
        tl.store(it + I_BASE, base + b.to(tl.int64) * step)
        tl.store(it + I_STEP, step)
        tl.store(it + I_SB, below.to(tl.int64, bitcast=True))


@triton.jit
def _first_hit(sums, target, tot, STRICT: tl.constexpr, MASS: tl.constexpr, NP: tl.constexpr):
    """The first of NP pivots whose cumulative weight meets the target (NP - 1 if none): the rule
    of :func:`_fin_pivots` (MASS: not < p·Σ, decided on the exact product)."""
    if MASS:
        hit = tl.fma(target, tot, -sums) <= 0.0
    elif STRICT:
        hit = sums > target
    else:
        hit = sums >= target
    return tl.min(tl.where(hit, tl.arange(0, NP), NP - 1), axis=0)


@triton.jit
def _cand_kernel(out_ptr, out_stride, V, seg, fst_ptr, ist_ptr, cand_ptr, ccnt_ptr, cnt_ptr, IDB, S, pbits,
                 PMODE: tl.constexpr, WMODE: tl.constexpr, STRICT: tl.constexpr, SLOT: tl.constexpr,
                 BLOCK: tl.constexpr, SB: tl.constexpr):
    """The end of a search: every program writes the ids of its segment's live tokens inside the
    search interval (the candidates) to cand[row, lo:], in id order, and their number to
    ccnt[row, split]; the row's last program runs the remaining 16-way rounds over them alone
    (:func:`_finish`). The buffer holds a whole row: it cannot overflow (on a row where every
    token is a candidate, a uniform row, the last program merely has the whole row to walk)."""
    row = tl.program_id(0).to(tl.int64)
    split = tl.program_id(1)
    ptr = out_ptr + row * out_stride
    lo = split * seg
    hi = tl.minimum(lo + seg, V)
    f = fst_ptr + row * NF
    it = ist_ptr + row * NI
    lse = tl.load(f + F_LSE)
    H = tl.load(f + F_H)
    base = tl.load(it + I_BASE)
    width = tl.load(it + I_STEP)
    crow = cand_ptr + row * V + lo
    cnt = tl.zeros([], tl.int32)
    for start in range(lo, hi, BLOCK):
        cols = start + tl.arange(0, BLOCK)
        z = tl.load(ptr + cols, mask=cols < hi, other=float("-inf"))
        d = _pos(z, cols, lse, H, IDB, PMODE) - base
        c = (z > float("-inf")) & (d >= 0) & (d < width)
        ci = c.to(tl.int32)
        slot = cnt + tl.cumsum(ci, axis=0) - 1
        tl.store(crow + slot, cols, mask=c)
        cnt += tl.sum(ci, axis=0)
    tl.store(ccnt_ptr + row * S + split, cnt)
    if _arrive(cnt_ptr, row, S):
        _finish(row, ptr, fst_ptr, ist_ptr, cand_ptr + row * V, ccnt_ptr + row * S, seg, S, IDB, pbits,
                PMODE, WMODE, STRICT, SLOT, SB)


@triton.jit
def _finish(row, ptr, fst_ptr, ist_ptr, cand, ccnt, seg, S, IDB, pbits,
            PMODE: tl.constexpr, WMODE: tl.constexpr, STRICT: tl.constexpr, SLOT: tl.constexpr, SB: tl.constexpr):
    """The remaining 16-way rounds of a search over the row's candidates, one program.

    A pivot's cumulative weight is the weight below the candidates' interval (I_SB) plus the
    candidates' at or below it: the same sums as a pass over the whole row (up to the order of float additions)."""
    f = fst_ptr + row * NF
    it = ist_ptr + row * NI
    m = tl.load(f + F_M)
    lse = tl.load(f + F_LSE)
    H = tl.load(f + F_H)
    logs = tl.load(f + F_LOGS)
    wtop = tl.load(f + F_WTOP1)
    mref = tl.load(f + F_MREF)
    if WMODE == 1:
        target = _f64(pbits)
        tot = tl.load(it + I_S).to(tl.float64, bitcast=True)
    else:
        target = tl.load(f + F_TARGET).to(tl.float64)
        tot = tl.zeros([], tl.float64)
    base = tl.load(it + I_BASE)
    width = tl.load(it + I_STEP)
    below = tl.load(it + I_SB).to(tl.float64, bitcast=True)
    k = tl.arange(0, NPIV)
    while width > 1:  # (IDB + 16) / 4 rounds, 1 or 2 more after a wide first narrowing
        step = width // NPIV
        piv = base + (k.to(tl.int64) + 1) * step - 1
        acc = tl.zeros([SB, NPIV], tl.float64)
        for j in range(0, S):
            n = tl.load(ccnt + j, cache_modifier=".cg")
            for start in range(0, n, SB):
                c = start + tl.arange(0, SB)
                ids = tl.load(cand + j * seg + c, mask=c < n, other=0, cache_modifier=".cg")
                z = tl.load(ptr + ids, mask=c < n, other=float("-inf"))
                w = _weight(z, z > float("-inf"), lse, m, logs, wtop, mref, WMODE).to(tl.float64)
                p = _pos(z, ids, lse, H, IDB, PMODE)
                acc += tl.where(p[:, None] <= piv[None, :], w[:, None], 0.0)
        sums = below + tl.sum(acc, axis=0)
        b = _first_hit(sums, target, tot, STRICT, WMODE == 1, NPIV)
        base = base + b.to(tl.int64) * step
        width = step
    tl.store(it + SLOT, base)


@triton.jit
def _p_cut(m, lse, H, p2, param, KNOB: tl.constexpr):
    """The p cut of min-p / epsilon / eta / p-less."""
    if KNOB == 2:
        cut = param * tl.exp(m - lse)
    elif KNOB == 4:
        cut = param + 0.0 * m
    elif KNOB == 5:
        cut = tl.minimum(param, tl.math.sqrt_rn(param) * tl.exp(-H))
    else:
        cut = p2
    return cut


@triton.jit
def _apply_kernel(out_ptr, out_stride, V, seg, fst_ptr, ist_ptr, part_ptr, cnt_ptr, u_ptr, ids_ptr, dpart_ptr, IDB,
                  S, KNOB: tl.constexpr, BLOCK: tl.constexpr, HAS_Y: tl.constexpr, NEXT: tl.constexpr,
                  DRAW: tl.constexpr, S_PAD: tl.constexpr):
    """-inf over the tokens a knob removes, in place (a bad row, already NaN, is left alone).

    NEXT: the (max, runner-up) of the kept tokens for the next knob (the last program stores
    them). DRAW (``fuq.sample``'s last knob): the draw partials of triton_kernels/draw.py over
    the kept tokens, and the row's last program draws the id (:func:`draw._draw_row`)."""
    row = tl.program_id(0).to(tl.int64)
    split = tl.program_id(1)
    ptr = out_ptr + row * out_stride
    lo = split * seg
    hi = tl.minimum(lo + seg, V)
    f = fst_ptr + row * NF
    it = ist_ptr + row * NI
    bad = tl.load(it + I_BAD) != 0
    lse = tl.load(f + F_LSE)
    H = tl.load(f + F_H)
    m = tl.load(f + F_M)
    cut = tl.load(f + F_CUT)
    zcut = tl.load(f + F_ZCUT)
    X = tl.load(it + I_X)
    if HAS_Y:  # top-p / typical's min_keep cut
        Y = tl.load(it + I_Y)
    else:
        Y = tl.zeros([], tl.int64)
    KV = tl.load(it + I_KV)
    mv = tl.full([BLOCK], float("-inf"), tl.float32)
    m2v = tl.full([BLOCK], float("-inf"), tl.float32)
    dm = tl.full([], float("-inf"), tl.float64)  # the draw's online (max, Σ exp(z - max)), float64
    ds = tl.zeros([], tl.float64)
    nan = tl.zeros([], tl.int32)
    last = tl.full([], -1, tl.int32)
    for start in range(lo, hi, BLOCK):
        cols = start + tl.arange(0, BLOCK)
        msk = cols < hi
        z = tl.load(ptr + cols, mask=msk, other=float("-inf"))
        keep = _keep(z, cols, lse, H, m, cut, zcut, X, Y, KV, IDB, KNOB)
        z = tl.where(bad, z, tl.where(keep, z, float("-inf")))  # padding lanes: -inf, never stored
        tl.store(ptr + cols, z, mask=msk)
        if NEXT:
            mv, m2v = _lane_max2(mv, m2v, z)
        if DRAW:  # as draw._draw_kernel
            dm, ds, nan, last = _draw_chunk(z, cols, dm, ds, nan, last)
    if NEXT:
        mx, mx2 = _max2(mv, m2v)
        tl.store(part_ptr + (row * S + split) * PW + tl.arange(0, 2), tl.where(tl.arange(0, 2) == 0, mx, mx2))
    if DRAW:
        p = tl.arange(0, DNP)
        res = tl.where(p == 0, dm, tl.where(p == 1, ds, tl.where(p == 2, nan.to(tl.float64), last.to(tl.float64))))
        tl.store(dpart_ptr + (row * S + split) * DNP + p, res)
    if NEXT | DRAW:
        if _arrive(cnt_ptr, row, S):
            if NEXT:
                _fin_max(row, fst_ptr, part_ptr, S, S_PAD)
            if DRAW:
                _draw_row(ptr, tl.load(u_ptr + row), ids_ptr + row, dpart_ptr + row * S * DNP, V, seg, S, BLOCK,
                          S_PAD)


# ---------------------------------------------------------------------------------- launcher

BLOCK = 1024  # entries per chunk of the streaming passes
SB = 256  # entries per chunk of a 16-way search round ([SB, 16] sums)
SBP = 32  # entries per chunk of a split row's 256-pivot round ([SBP, 256] sums)
MAX_V = 2**24  # counts are float32 sums (exact below 2^24); positions need 32 + IDB <= 56 bits
MIN_CHUNKS = 1  # a split segment holds at least this many BLOCKs


def _bits(x: float) -> int:
    """The bits of the float64 ``x`` as an int64 (kernels read the knob exactly with ``_f64``)."""
    return struct.unpack("<q", struct.pack("<d", float(x)))[0]


def _p2(n: int) -> int:
    return 1 << max(0, (n - 1).bit_length())


def _idb(V: int) -> int:
    """Bits of a position that hold the token id: a multiple of 4 with 2^IDB >= V."""
    return 4 * ((max(V - 1, 0).bit_length() + 3) // 4)


def split_plan(B: int, V: int, target_programs: int) -> tuple[int, int]:
    """``(S, seg)``: S programs per row, each over ``seg`` entries (a multiple of BLOCK).

    S = 1 (one program per row, one launch per knob) when B alone reaches the target
    number of programs in flight (2 per SM); otherwise the rows are split so that B·S is
    about the target, into segments of at least MIN_CHUNKS blocks: at B = 1, V = 262144,
    256 programs of 1024 entries.
    """
    if B >= target_programs:
        return 1, triton.cdiv(V, BLOCK) * BLOCK
    chunks = triton.cdiv(V, BLOCK)
    S = max(1, min(triton.cdiv(target_programs, max(B, 1)), chunks // MIN_CHUNKS))
    seg = triton.cdiv(chunks, S) * BLOCK
    return triton.cdiv(V, seg), seg


def _target_programs(device: torch.device) -> int:
    if device.type == "cuda":
        return 2 * _sm_count(device)
    return 4  # interpreter: a few splits, enough to exercise the merge (tests override SPLIT_TARGET)


SPLIT_TARGET: int | None = None  # tests force a target number of programs


def _plan_knobs(V, top_k, top_p, min_p, typical_p, epsilon, eta, top_h, top_n_sigma, p_less, mk):
    """(knob, param, min_keep) in Hugging Face's order, for the knobs that are on."""
    plan = [
        (TOP_H, top_h if top_h > 0.0 else None, 1),
        (TOP_K, float(min(max(int(top_k), mk), V)) if top_k > 0 else None, 1),
        (TOP_P, float(top_p) if top_p < 1.0 else None, mk),
        (MIN_P, min_p if min_p > 0.0 else None, mk),
        (TYPICAL, typical_p if typical_p < 1.0 else None, mk),
        (EPSILON, epsilon if epsilon > 0.0 else None, mk),
        (ETA, eta if eta > 0.0 else None, mk),
        (TOP_N_SIGMA, top_n_sigma if top_n_sigma >= 0.0 else None, 1),
        (P_LESS, 1.0 if p_less else None, 1),
    ]
    return [(knob, float(param), min(keep, V)) for knob, param, keep in plan if param is not None]


class _Split:
    """The buffers of one split-rows call; none needs zeroing (the row counters are cached at 0)."""

    def __init__(self, out, B, V, S, seg, dev):
        self.out, self.B, self.V, self.S, self.seg = out, B, V, S, seg
        self.S_PAD = max(2, _p2(S))
        self.idb = _idb(V)
        self.fst = torch.empty((B, NF.value), dtype=torch.float32, device=dev)
        self.ist = torch.empty((B, NI.value), dtype=torch.int64, device=dev)
        self.part = torch.empty((B, S, PW.value), dtype=torch.float64, device=dev)
        self.cnt = _counters(B, dev)
        self._cand = None

    def cand(self):
        if self._cand is None:  # a row's worth of ids, and the count of each segment
            self._cand = (torch.empty((self.B, self.V), dtype=torch.int32, device=self.out.device),
                          torch.empty((self.B, self.S), dtype=torch.int32, device=self.out.device))
        return self._cand


def _first_round(knob, param, V):
    """(IDB, WMODE, tgt) of a first knob whose search's first round runs in _scale_kernel, or None."""
    if knob == TOP_K:
        return 0, W_CNT, param
    if knob == TOP_P:
        return _idb(V), W_P, 0.0
    return None


def _split_knob(st, knob, param, min_keep, nxt, draw, r1=False):
    """One knob on split rows: a few (B, S) launches, each finalised by the row's last program.

    The max (and runner-up) of the row is known on entry (from _scale_kernel or the previous
    knob's apply). A search is two 256-pivot rounds (the first one in the launch of the pass
    that sets its target, when there is one; ``r1``: done by _scale_kernel, approximately) and a
    candidate launch that finishes it; the apply computes the next knob's max, or (``draw``:
    ``(u, ids, dpart)``) draws the id."""
    out, B, S = st.out, st.B, st.S
    grid = (B, S)
    idb = st.idb
    nb = 32 + idb

    def part(mom=False, toph=False, var=False, hs=False, piv=False, first=False, ex0=False, pmode=P_Z,
             wmode=W_CNT, strict=False, bits=0, tgt=0.0, set_target=False):
        _part_kernel[grid](out, out.stride(0), st.V, st.seg, st.fst, st.ist, st.part, st.cnt, bits, S, param,
                           _bits(param), float(tgt), MOM=mom, TOPH=toph, VAR=var, HS=hs, PIV=piv, FIRST=first,
                           EX0=ex0, PMODE=pmode, WMODE=wmode, STRICT=strict, SET_TARGET=set_target, KNOB=knob,
                           BLOCK=BLOCK, SBP=SBP, S_PAD=st.S_PAD, num_warps=8)

    def search(nbits, pmode, wmode, slot, tgt=0.0, strict=False, r1=False, **fused):
        if not r1:
            part(piv=True, first=True, pmode=pmode, wmode=wmode, strict=strict, bits=nbits - 32, tgt=tgt,
                 set_target=wmode == W_CNT, **fused)
        part(piv=True, ex0=r1, pmode=pmode, wmode=wmode, strict=strict, bits=nbits - 32)
        cand, ccnt = st.cand()
        _cand_kernel[grid](out, out.stride(0), st.V, st.seg, st.fst, st.ist, cand, ccnt, st.cnt, nbits - 32, S,
                           _bits(param), PMODE=pmode, WMODE=wmode, STRICT=strict, SLOT=slot.value, BLOCK=BLOCK,
                           SB=SB, num_warps=8)

    if knob == TOP_K:
        search(32, P_Z, W_CNT, I_X, tgt=param, r1=r1)
    elif knob in (TOP_P, TYPICAL):
        pm = P_Z if knob == TOP_P else P_TYP
        if knob == TYPICAL:
            part(mom=True)  # the order needs lse and H
        search(nb, pm, W_P, I_X, r1=r1)
        if min_keep > 1:
            search(nb, pm, W_CNT, I_Y, tgt=float(min_keep))
    elif knob == TOP_H:
        part(mom=True, toph=True)
        search(nb, P_Z, W_H, I_X, strict=True, hs=True)
    elif knob == TOP_N_SIGMA:
        part(mom=True)
        part(var=True)
    elif min_keep > 1:  # min-p, epsilon, eta, p-less: the p cut is set with the moments
        search(32, P_Z, W_CNT, I_KV, tgt=float(min_keep), mom=True)
    else:
        part(mom=True)
    u, ids, dpart = draw if draw is not None else (st.ist, st.ist, st.part)
    _apply_kernel[grid](out, out.stride(0), st.V, st.seg, st.fst, st.ist, st.part, st.cnt, u, ids, dpart, idb, S,
                        KNOB=knob, BLOCK=BLOCK, HAS_Y=knob in (TOP_P, TYPICAL) and min_keep > 1, NEXT=nxt,
                        DRAW=draw is not None, S_PAD=st.S_PAD, num_warps=8)


def _run(logits, temperature, top_k, top_p, min_p, typical_p, epsilon, eta, top_h, top_n_sigma, p_less,
         min_tokens_to_keep, uniform=None):
    """The truncated rows and, with ``uniform``, the drawn ids (None without)."""
    B, V = logits.shape
    if V >= MAX_V:
        raise ValueError(f"the Triton truncation kernel needs V < 2^24, got V = {V}")
    dev = logits.device
    out = torch.empty((B, V), dtype=torch.float32, device=dev)
    ids = None if uniform is None else torch.empty((B,), dtype=torch.int64, device=dev)
    if B == 0:
        return out, ids
    guard = torch.cuda.device(dev) if dev.type == "cuda" else contextlib.nullcontext()
    with guard:
        target = SPLIT_TARGET if SPLIT_TARGET is not None else _target_programs(dev)
        S, seg = split_plan(B, V, target)
        knobs = _plan_knobs(V, top_k, top_p, min_p, typical_p, epsilon, eta, top_h, top_n_sigma, p_less,
                            int(min_tokens_to_keep))
        bad = torch.empty((B, S), dtype=torch.int32, device=dev)
        run = _run_rows if S == 1 else _run_split
        ids = run(logits, out, bad, float(temperature), knobs, seg, uniform, ids)
    return out, ids


def _run_rows(logits, out, bad, temperature, knobs, seg, uniform, ids):
    """One program per row: the scale launch, one launch per knob, the NaN rows, the draw."""
    B, V = out.shape
    _scale_kernel[(B, 1)](logits, out, bad, logits.stride(0), out.stride(0), V, seg, temperature,
                          out, bad, out, bad, 1, 0, 0, 0.0, BLOCK=BLOCK, FIN=False, PIV=False, WMODE=0,
                          SBP=SBP, S_PAD=2, num_warps=8)
    for knob, param, keep in knobs:
        _knob_kernel[(B,)](out, out.stride(0), V, param, _bits(param), keep, _idb(V),
                           KNOB=knob, BLOCK=BLOCK, SB=SB, num_warps=8)
    _nan_rows_kernel[(B, 1)](out, bad, out.stride(0), V, seg, 1, S_PAD=2, BLOCK=BLOCK)
    return _draw(out, uniform) if uniform is not None else ids


def _run_split(logits, out, bad, temperature, knobs, seg, uniform, ids):
    """Split rows: the scale launch (max, NaN rows, a first search round), then each knob's launches
    (:func:`_split_knob`); the draw runs in the last knob's apply."""
    B, V = out.shape
    S = bad.shape[1]
    st = _Split(out, B, V, S, seg, out.device)
    r1 = _first_round(*knobs[0][:2], V) if knobs else None
    idb1, wmode1, tgt1 = r1 if r1 is not None else (0, W_CNT, 0.0)
    _scale_kernel[(B, S)](logits, out, bad, logits.stride(0), out.stride(0), V, seg, temperature,
                          st.fst, st.ist, st.part, st.cnt, S, idb1, _bits(knobs[0][1]) if knobs else 0, tgt1,
                          BLOCK=BLOCK, FIN=True, PIV=r1 is not None, WMODE=wmode1, SBP=SBP, S_PAD=st.S_PAD,
                          num_warps=8)
    if uniform is not None and not knobs:
        return _draw(out, uniform)
    draw = None
    if uniform is not None:
        u = uniform if uniform.dtype == torch.float64 and uniform.is_contiguous() else uniform.double().contiguous()
        draw = (u, ids, torch.empty((B, S, DNP.value), dtype=torch.float64, device=out.device))
    for i, (knob, param, keep) in enumerate(knobs):
        last = i == len(knobs) - 1
        _split_knob(st, knob, param, keep, not last, draw if last else None, r1=i == 0 and r1 is not None)
    return ids


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
    ``fuq.truncate``; V must be below 2^24.

    Example (on a CUDA tensor, or a CPU one under ``TRITON_INTERPRET=1``):
        >>> truncate(torch.tensor([[1.0, 1.0, 1.0, 1.0]]), top_p=0.5).tolist()
        [[1.0, 1.0, -inf, -inf]]
    """
    return _run(logits, temperature, top_k, top_p, min_p, typical_p, epsilon, eta, top_h, top_n_sigma, p_less,
                min_tokens_to_keep)[0]


def truncate_draw(
    logits: torch.Tensor,
    uniform: torch.Tensor,
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
    """int64 ``[B]``: the ids ``draw(truncate(logits, ...), uniform)`` draws (triton_kernels/draw.py's
    rule), with the draw folded into the last knob's launch on split rows.

    ``uniform``: ``[B]`` in [0, 1) (float64; other dtypes are converted). Same arguments as
    :func:`truncate`.

    Example (on a CUDA tensor, or a CPU one under ``TRITON_INTERPRET=1``):
        >>> truncate_draw(torch.tensor([[0.0, 0.0, -9.0]]), torch.tensor([0.6], dtype=torch.float64), top_k=2).tolist()
        [1]
    """
    return _run(logits, temperature, top_k, top_p, min_p, typical_p, epsilon, eta, top_h, top_n_sigma, p_less,
                min_tokens_to_keep, uniform)[1]
