"""Triton kernel of ``fuq::hidden_stats``: a tiled matmul whose epilogue folds the logits into
per-row online states, never writing a logit to memory.

``_hidden_stats_kernel``, grid ``(cdiv(N, BLOCK_M), SPLITS)``: a program owns ``BLOCK_M``
rows of ``hidden`` and one vocabulary segment of ``weight``. It walks the segment in
``BLOCK_N``-column tiles; per tile, ``acc = hidden[rows] @ weight[cols].T`` accumulates over
``d`` in ``BLOCK_K`` steps (``tl.dot``, float32 accumulation), and the epilogue turns ``acc``
into ``z = softcap · tanh((acc + bias) / softcap) / T`` in registers and folds it into the
rows' states: the online (m, s, t, u) recurrence (``_common.online_update_rows``), NaN /
+inf counts, the max packed (z, index) key (the first argmax), the target's ``z``, and a
running top-``K_PAD`` of packed keys per row. Each program writes its rows' partial states
and ``K_PAD`` candidate keys; the launcher merges the ``SPLITS`` partials of a row (a few
float tensors of ``[N, SPLITS]``, and one ``torch.topk`` over ``SPLITS · K_PAD`` candidate
keys) into the fields of ``logit_stats``.

Semantics are those of ``fuq.reference.hidden_stats``. float32 inputs are multiplied in
IEEE float32 (``input_precision="ieee"``, not TF32); bfloat16 / float16 inputs of one dtype
go to the tensor cores with float32 accumulation; mixed dtypes are cast to float32 first.
``k`` above ``K_MAX`` takes a slower exact route (the kernel without candidates, then the
top-k from ``[N, chunk]`` logit blocks built by torch).
"""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl
from torch import Tensor

from ._common import KEY_MIN, empty_topk, online_update_rows, pack_key
from ._common import sm_count as _sm_count

__all__ = ["hidden_stats"]


@triton.jit
def _topk_insert_rows(best, keys, K: tl.constexpr):
    """Per-row running top-K ``best`` [M, K] (distinct keys per row) updated with ``keys`` [M, N].

    Newcomers are pulled out of each row one at a time, largest first, each replacing the
    row's current K-th best; rows advance together, so the loop runs as many times as the
    row with the most newcomers needs (rarely more than a few once the lists are warm).
    """
    thr = tl.min(best, axis=1)
    mk = tl.max(keys, axis=1)
    while tl.max((mk > thr).to(tl.int32), axis=0) > 0:
        take = mk > thr
        best = tl.where((best == thr[:, None]) & take[:, None], mk[:, None], best)
        thr = tl.min(best, axis=1)
        mk = tl.max(tl.where(keys < mk[:, None], keys, KEY_MIN), axis=1)
    return best


@triton.jit
def _hidden_stats_kernel(
    h_ptr,  # [N, D] hidden, last dim contiguous
    w_ptr,  # [V, D] weight, last dim contiguous
    b_ptr,  # [V] bias (unused unless HAS_BIAS)
    tgt_ptr,  # [N] int64 targets (unused unless HAS_TGT)
    N,
    V,
    D,
    stride_h,
    stride_w,
    seg,  # vocabulary columns per program, a multiple of BLOCK_N
    temperature,
    softcap,
    state_ptr,  # [N, SPLITS, 8] float32: m, s, t, u, #NaN, #(+inf), target z, target seen
    amax_ptr,  # [N, SPLITS] int64: the max packed key
    cand_ptr,  # [N, SPLITS, max(K_PAD, 1)] int64: the best keys
    HAS_BIAS: tl.constexpr,
    HAS_CAP: tl.constexpr,
    HAS_T: tl.constexpr,
    HAS_TGT: tl.constexpr,
    TO_F32: tl.constexpr,  # cast both operands to float32 before the dot
    K_PAD: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
):
    pid_m = tl.program_id(0)
    split = tl.program_id(1)
    n_splits = tl.num_programs(1)
    rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    rmask = rows < N
    rows64 = rows.to(tl.int64)  # 64-bit offsets: N * D and V * D may pass 2^31
    lo = split * seg
    hi = tl.minimum(lo + seg, V)

    m = tl.full([BLOCK_M], float("-inf"), tl.float32)
    s = tl.zeros([BLOCK_M], tl.float32)
    t = tl.zeros([BLOCK_M], tl.float32)
    u = tl.zeros([BLOCK_M], tl.float32)
    n_nan = tl.zeros([BLOCK_M], tl.int32)
    n_inf = tl.zeros([BLOCK_M], tl.int32)
    kmax = tl.full([BLOCK_M], KEY_MIN, tl.int64)
    zt = tl.zeros([BLOCK_M], tl.float32)
    seen = tl.zeros([BLOCK_M], tl.int32)
    if HAS_TGT:
        tgt = tl.load(tgt_ptr + rows, mask=rmask, other=-1)
    if K_PAD > 0:
        # K_PAD distinct sentinels per row, below every real key (and above padding)
        sentinels = empty_topk(K_PAD)
        best = tl.zeros([BLOCK_M, K_PAD], tl.int64) + sentinels[None, :]

    for start in range(lo, hi, BLOCK_N):
        cols = start + tl.arange(0, BLOCK_N)
        cmask = cols < hi
        acc = tl.zeros([BLOCK_M, BLOCK_N], tl.float32)
        for k0 in range(0, D, BLOCK_K):
            ks = k0 + tl.arange(0, BLOCK_K)
            kmask = ks < D
            a = tl.load(h_ptr + rows64[:, None] * stride_h + ks[None, :], mask=rmask[:, None] & kmask[None, :],
                        other=0.0)
            b = tl.load(w_ptr + cols.to(tl.int64)[None, :] * stride_w + ks[:, None],
                        mask=kmask[:, None] & cmask[None, :], other=0.0)
            if TO_F32:
                a = a.to(tl.float32)
                b = b.to(tl.float32)
            acc = tl.dot(a, b, acc, input_precision="ieee")
        # the epilogue: the reference's order, bias, soft-capping, temperature
        z = acc
        if HAS_BIAS:
            z = z + tl.load(b_ptr + cols, mask=cmask, other=0.0).to(tl.float32)[None, :]
        if HAS_CAP:
            x = z / softcap
            e = tl.exp(-2.0 * tl.abs(x))  # in [0, 1]: no overflow
            th = (1.0 - e) / (1.0 + e)
            z = tl.where(x < 0.0, -th, th) * softcap  # cap · tanh(x); NaN stays NaN
        if HAS_T:
            z = tl.math.div_rn(z, temperature)
        z = tl.where(cmask[None, :], z, float("-inf"))  # columns past the segment weigh nothing
        is_nan = z != z
        n_nan += tl.sum(is_nan.to(tl.int32), axis=1)
        n_inf += tl.sum((z == float("inf")).to(tl.int32), axis=1)
        m, s, t, u = online_update_rows(m, s, t, u, tl.where(is_nan, float("-inf"), z))
        keys = tl.where(cmask[None, :], pack_key(z, cols[None, :]), KEY_MIN)
        kmax = tl.maximum(kmax, tl.max(keys, axis=1))
        if HAS_TGT:
            hit = cols[None, :] == tgt[:, None]
            zt += tl.sum(tl.where(hit, z, 0.0), axis=1)
            seen += tl.sum(hit.to(tl.int32), axis=1)
        if K_PAD > 0:
            best = _topk_insert_rows(best, keys, K_PAD)

    slot = rows64 * n_splits + split
    st = state_ptr + slot * 8
    tl.store(st + 0, m, mask=rmask)
    tl.store(st + 1, s, mask=rmask)
    tl.store(st + 2, t, mask=rmask)
    tl.store(st + 3, u, mask=rmask)
    tl.store(st + 4, n_nan.to(tl.float32), mask=rmask)
    tl.store(st + 5, n_inf.to(tl.float32), mask=rmask)
    tl.store(st + 6, zt, mask=rmask)
    tl.store(st + 7, seen.to(tl.float32), mask=rmask)
    tl.store(amax_ptr + slot, kmax, mask=rmask)
    if K_PAD > 0:
        kp = tl.arange(0, K_PAD)
        tl.store(cand_ptr + slot[:, None] * K_PAD + kp[None, :], best, mask=rmask[:, None])


# Top-k up to K_MAX keeps a per-row running top-K_PAD in registers; larger k: see module doc.
K_MAX = 64


def _p2(n: int) -> int:
    return 1 << max(0, (n - 1).bit_length())


def _plan(N: int, V: int, k: int, n_sm: int | None) -> dict:
    """Block sizes, warps and the vocabulary split of one launch on a GPU of ``n_sm`` SMs (None: interpreter)."""
    k_pad = 0 if k == 0 or k > K_MAX else max(2, _p2(k))
    if n_sm is not None:
        # untuned first choice (no GPU was at hand when this was written): 64 x 64 tiles
        bm, bn, bk, warps, target = 64, 64, 32, 4, 4 * n_sm
    else:  # interpreter: small tiles, a few splits to exercise the merge
        bm, bn, bk, warps, target = 16, 32, 16, 1, 3
    m_tiles = triton.cdiv(max(N, 1), bm)
    splits = max(1, min(triton.cdiv(V, bn), triton.cdiv(target, m_tiles)))
    seg = triton.cdiv(triton.cdiv(V, splits), bn) * bn
    return dict(K_PAD=k_pad, BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=bk, num_warps=warps, splits=triton.cdiv(V, seg),
                seg=seg, m_tiles=m_tiles)


def _unpack(keys: Tensor) -> tuple[Tensor, Tensor]:
    """Inverse of ``_common.pack_key`` in torch: ``(z float32, index int64)``."""
    hi = (keys >> 32).to(torch.int32)
    bits = hi ^ ((hi >> 31) & 0x7FFFFFFF)
    return bits.view(torch.float32), 0x7FFFFFFF - (keys & 0xFFFFFFFF)


def _merge(state: Tensor, amax: Tensor, cand: Tensor | None, k: int, has_tgt: bool):
    """The ``SPLITS`` partials of each row -> the nine fields of ``logit_stats``."""
    m, s, t, u, n_nan, n_inf, zt, seen = state.unbind(-1)
    M = m.amax(1)
    ok = m > float("-inf")
    d = torch.where(ok, m - M[:, None], 0.0)
    w = torch.where(ok, torch.exp(d), 0.0)
    S = (w * s).sum(1)
    T = (w * (t + d * s)).sum(1)
    U = (w * (u + 2.0 * d * t + d * d * s)).sum(1)
    has_nan, has_inf = n_nan.sum(1) > 0, n_inf.sum(1) > 0
    bad = has_nan | has_inf
    nan = torch.full_like(M, float("nan"))
    log_s = torch.log(S)
    lse = torch.where(has_nan, nan, torch.where(has_inf, float("inf"), M + log_s))
    mean = T / S
    ent = torch.where(bad, nan, log_s - mean)
    var = U / S - mean * mean
    var = torch.where(bad, nan, torch.where(var < 0.0, 0.0, var))
    maxlp = torch.where(bad, nan, M - (M + log_s))
    _, am = _unpack(amax.amax(1))
    if cand is not None and k > 0:
        zk, ik = _unpack(torch.topk(cand.flatten(1), k, dim=1).values)
        tkl = torch.where(bad[:, None], float("nan"), zk - lse[:, None])
        tki, tkm = ik, tkl.exp().sum(1)
    else:
        tkl = torch.empty(M.shape[0], 0, device=M.device)
        tki = torch.empty(M.shape[0], 0, device=M.device, dtype=torch.int64)
        tkm = torch.zeros_like(M)
    if has_tgt:
        tl_ = torch.where(bad | (seen.sum(1) == 0), nan, zt.sum(1) - lse)
    else:
        tl_ = torch.empty(0, device=M.device)
    return lse, ent, var, maxlp, am, tkl, tki, tkm, tl_


def _topk_by_chunks(hidden, weight, bias, k, temperature, softcap, lse, chunk: int = 4096):
    """Exact top-k for ``k > K_MAX`` from ``[N, chunk]`` logit blocks (torch), merged by key."""
    from ..reference import hidden_logits

    N, V = hidden.shape[0], weight.shape[0]
    best = torch.empty(N, 0, dtype=torch.int64, device=hidden.device)
    cols = torch.arange(V, device=hidden.device)
    for c0 in range(0, V, chunk):
        z = hidden_logits(hidden, weight[c0 : c0 + chunk], None if bias is None else bias[c0 : c0 + chunk], softcap)
        if temperature != 1.0:
            z = z / temperature
        bits = z.view(torch.int32)
        ordk = torch.where(z == 0.0, 0, bits ^ ((bits >> 31) & 0x7FFFFFFF)).to(torch.int64)
        keys = (ordk << 32) | (0x7FFFFFFF - cols[c0 : c0 + chunk]).to(torch.int64)
        both = torch.cat([best, keys], 1)
        best = torch.topk(both, min(k, both.shape[1]), dim=1).values
    zk, ik = _unpack(best)
    tkl = zk - lse[:, None]
    return tkl, ik, tkl.exp().sum(1)


def _to_f32(hidden: Tensor, weight: Tensor) -> bool:
    """Cast the dot's operands to float32: float32 or mixed inputs; and bfloat16 under the
    interpreter, whose dot is wrong in bfloat16 (numpy has none), so there the bfloat16
    tensor-core path is only compiled (tests), its values are checked on a GPU."""
    interpreted = hidden.device.type != "cuda"
    return hidden.dtype != weight.dtype or hidden.dtype == torch.float32 or (
        interpreted and hidden.dtype == torch.bfloat16
    )


def hidden_stats(
    hidden: Tensor,
    weight: Tensor,
    bias: Tensor | None,
    k: int,
    targets: Tensor | None,
    temperature: float,
    softcap: float | None,
):
    """Triton ``fuq::hidden_stats`` on ``hidden: [N, d]``, ``weight: [V, d]`` (float32 | bfloat16 | float16).

    ``bias``: ``[V]`` or None; ``k`` in ``[0, V]``; ``targets``: ``[N]`` int64 or None;
    ``temperature > 0``; ``softcap > 0`` or None. Returns the nine fields of
    ``logit_stats`` (``token_logprob`` empty ``[0]`` without targets). Runs on CUDA
    tensors, or on CPU tensors under ``TRITON_INTERPRET=1``.
    """
    if hidden.device.type != "cuda" and os.environ.get("TRITON_INTERPRET") != "1":
        raise RuntimeError(
            f"the Triton kernel needs CUDA tensors (hidden is on {hidden.device}), or TRITON_INTERPRET=1 "
            "set before fuq is imported to run it interpreted on the CPU"
        )
    N, D = hidden.shape
    V = weight.shape[0]
    if hidden.stride(1) != 1:
        hidden = hidden.contiguous()
    if weight.stride(1) != 1:
        weight = weight.contiguous()
    dev = hidden.device
    n_sm = None
    if dev.type == "cuda":
        n_sm = _sm_count(dev)
    p = _plan(N, V, k, n_sm)
    S, kp = p["splits"], p["K_PAD"]
    state = torch.empty(N, S, 8, device=dev, dtype=torch.float32)
    amax = torch.empty(N, S, device=dev, dtype=torch.int64)
    cand = torch.empty(N, S, max(kp, 1), device=dev, dtype=torch.int64)
    if N > 0:
        _hidden_stats_kernel[(p["m_tiles"], S)](
            hidden, weight, bias if bias is not None else hidden, targets if targets is not None else amax,
            N, V, D, hidden.stride(0), weight.stride(0), p["seg"], float(temperature),
            float(softcap) if softcap is not None else 1.0, state, amax, cand,
            HAS_BIAS=bias is not None, HAS_CAP=softcap is not None, HAS_T=float(temperature) != 1.0,
            HAS_TGT=targets is not None, TO_F32=_to_f32(hidden, weight),
            K_PAD=kp, BLOCK_M=p["BLOCK_M"], BLOCK_N=p["BLOCK_N"], BLOCK_K=p["BLOCK_K"], num_warps=p["num_warps"],
        )
    out = list(_merge(state, amax, cand if kp > 0 else None, k if kp > 0 else 0, targets is not None))
    if k > 0 and kp == 0:  # k > K_MAX
        out[5], out[6], out[7] = _topk_by_chunks(hidden, weight, bias, k, float(temperature), softcap, out[0])
        bad = ~torch.isfinite(out[0]) | torch.isnan(out[1])
        out[5] = torch.where(bad[:, None], float("nan"), out[5])
    return tuple(out)
