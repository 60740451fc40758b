"""Triton kernels of ``fuq::attention_stats``: online softmax over K tiles, then the mass per key.

The rows of one (batch, KV head) pair ``bh`` are the ``G = (Hq / Hkv) * Lq`` query rows of
its GQA group; with ``q`` contiguous they are adjacent in memory (``[B * Hkv, G, d]``).

Pass 1, ``_attention_partial_kernel``, grid ``(B * Hkv, cdiv(G, BLOCK_R), SPLITS)``: a block
of rows against one segment of the keys, in ``BLOCK_T`` tiles: ``s = scale * q @ k.T`` (one
``tl.dot``), the disallowed keys (causal, window, mask) at ``-inf``, folded into per-row
online states ``(m, s, t)`` (``_common.online_update_rows``); NaN / ``+inf`` scores are
counted. Writes one partial state per row and split, and, when ``KEEP``, the scores.

Pass 2, ``_attention_finalize_kernel``, grid ``(B * Hkv, cdiv(G, BLOCK_R))``: merges the
splits of each row into ``lse`` and ``entropy``.

Pass 3, ``_attention_mass_kernel``, grid ``(B * Hkv, cdiv(T, BLOCK_T))``: for a tile of
keys, ``Σ_rows exp(s - lse)`` over all the group's rows: from the kept scores (``KEEP``),
or recomputed from K.

Passes over K: the mass needs each row's final ``lse``, known only once every key was
seen. When the scores are smaller than the keys (``G * 4 <= d * itemsize``: decoding,
few rows per group) pass 1 keeps them and pass 3 reads ``G`` floats per key instead of
the key: one pass over K. Otherwise (many query rows) pass 3 reads K again: two passes.

Semantics are those of ``fuq.reference.attention_stats`` (the spec).
"""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl
from torch import Tensor

from ._common import merge_states, online_update_rows
from ._common import sm_count as _sm_count

__all__ = ["attention_stats"]


@triton.jit
def _scores(q, k_ptrs, kmask, scale, F32_DOT: tl.constexpr):
    """``scale * q @ k.T`` in float32: q ``[BLOCK_R, BLOCK_D]`` (loaded), k loaded here ``[BLOCK_T, BLOCK_D]``."""
    kt = tl.load(k_ptrs, mask=kmask, other=0.0)
    if F32_DOT:
        acc = tl.dot(q.to(tl.float32), tl.trans(kt.to(tl.float32)), input_precision="ieee")
    else:
        acc = tl.dot(q, tl.trans(kt))  # 16-bit inputs: exact products, float32 accumulation
    return acc * scale


@triton.jit
def _allowed(rows, j, rmask, jmask, pos, b, mask_ptr, sm_b, sm_i, sm_t, Lq, window,
             CAUSAL: tl.constexpr, HAS_WINDOW: tl.constexpr, HAS_MASK: tl.constexpr):  # fmt: skip
    """``[BLOCK_R, BLOCK_T]``: may row ``rows`` (at position ``pos``) attend key ``j``."""
    ok = rmask[:, None] & jmask[None, :]
    if CAUSAL:
        ok = ok & (j[None, :] <= pos[:, None])
    if HAS_WINDOW:
        ok = ok & (j[None, :] > pos[:, None] - window)
    if HAS_MASK:
        i = rows % Lq
        mv = tl.load(mask_ptr + b * sm_b + i[:, None] * sm_i + j[None, :] * sm_t, mask=ok, other=0)
        ok = ok & (mv != 0)
    return ok


@triton.jit
def _attention_partial_kernel(
    q_ptr,  # [B * Hkv, G, d] contiguous
    k_ptr,  # [B, Hkv, T, d], last dim contiguous
    sk_b,
    sk_h,
    sk_t,
    mask_ptr,  # uint8 [B, Lq | 1, T] (unused unless HAS_MASK)
    sm_b,
    sm_i,
    sm_t,
    Hkv,
    G,
    Lq,
    T,
    d,
    scale,
    window,
    seg,  # keys per split, a multiple of BLOCK_T
    state_ptr,  # [B * Hkv, SPLITS, G, 4] float32: m, s, t, #bad
    kept_ptr,  # [B * Hkv, G, T] float32 (KEEP)
    CAUSAL: tl.constexpr,
    HAS_WINDOW: tl.constexpr,
    HAS_MASK: tl.constexpr,
    KEEP: tl.constexpr,
    F32_DOT: tl.constexpr,
    BLOCK_R: tl.constexpr,
    BLOCK_T: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    bh = tl.program_id(0).to(tl.int64)
    split = tl.program_id(1)
    n_splits = tl.num_programs(1)
    rb = tl.program_id(2)
    b = bh // Hkv
    rows = rb * BLOCK_R + tl.arange(0, BLOCK_R)
    rmask = rows < G
    dd = tl.arange(0, BLOCK_D)
    dmask = dd < d
    q = tl.load(q_ptr + (bh * G + rows)[:, None] * d + dd[None, :], mask=rmask[:, None] & dmask[None, :], other=0.0)
    pos = T - Lq + rows % Lq
    k_base = k_ptr + b * sk_b + (bh % Hkv) * sk_h

    lo = split * seg
    hi = tl.minimum(lo + seg, T)
    if HAS_WINDOW:  # keys before every row's window: skipped (never read)
        lo = tl.maximum(lo, T - Lq - window + 1)
    m = tl.full([BLOCK_R], float("-inf"), tl.float32)
    s = tl.zeros([BLOCK_R], tl.float32)
    t = tl.zeros([BLOCK_R], tl.float32)
    u = tl.zeros([BLOCK_R], tl.float32)
    n_bad = tl.zeros([BLOCK_R], tl.int32)
    for start in range(lo, hi, BLOCK_T):
        j = start + tl.arange(0, BLOCK_T)
        jmask = j < hi
        k_ptrs = k_base + j[:, None] * sk_t + dd[None, :]
        sc = _scores(q, k_ptrs, jmask[:, None] & dmask[None, :], scale, F32_DOT)
        ok = _allowed(rows, j, rmask, jmask, pos, b, mask_ptr, sm_b, sm_i, sm_t, Lq, window,
                      CAUSAL, HAS_WINDOW, HAS_MASK)  # fmt: skip
        sc = tl.where(ok, sc, float("-inf"))
        bad = (sc != sc) | (sc == float("inf"))
        n_bad += tl.sum(bad.to(tl.int32), axis=1)
        if KEEP:
            kp = kept_ptr + (bh * G + rows)[:, None] * T + j[None, :]
            tl.store(kp, sc, mask=rmask[:, None] & jmask[None, :])
        m, s, t, u = online_update_rows(m, s, t, u, tl.where(bad, float("-inf"), sc))

    st = state_ptr + ((bh * n_splits + split) * G + rows) * 4
    tl.store(st + 0, m, mask=rmask)
    tl.store(st + 1, s, mask=rmask)
    tl.store(st + 2, t, mask=rmask)
    tl.store(st + 3, n_bad.to(tl.float32), mask=rmask)


@triton.jit
def _attention_finalize_kernel(
    state_ptr,  # [B * Hkv, n_splits, G, 4]
    n_splits,
    G,
    lse_ptr,  # [B * Hkv * G] float32 (= [B, Hq, Lq])
    ent_ptr,
    SPLITS_PAD: tl.constexpr,
    BLOCK_R: tl.constexpr,
):
    bh = tl.program_id(0).to(tl.int64)
    rows = tl.program_id(1) * BLOCK_R + tl.arange(0, BLOCK_R)
    sp = tl.arange(0, SPLITS_PAD)
    ok = (sp[:, None] < n_splits) & (rows[None, :] < G)
    st = state_ptr + ((bh * n_splits + sp[:, None]) * G + rows[None, :]) * 4
    m = tl.load(st + 0, mask=ok, other=float("-inf"))
    s = tl.load(st + 1, mask=ok, other=0.0)
    t = tl.load(st + 2, mask=ok, other=0.0)
    bad = tl.sum(tl.load(st + 3, mask=ok, other=0.0), axis=0) > 0
    M, S, Tt, _ = merge_states(m, s, t, s * 0.0)
    log_s = tl.log(S)
    lse = M + log_s  # no allowed key: -inf + log 0 = -inf
    ent = log_s - Tt / S  # NaN for no allowed key (0 / 0)
    lse = tl.where(bad, float("nan"), lse)
    ent = tl.where(bad | (M == float("-inf")), float("nan"), ent)
    rmask = rows < G
    tl.store(lse_ptr + bh * G + rows, lse, mask=rmask)
    tl.store(ent_ptr + bh * G + rows, ent, mask=rmask)


@triton.jit
def _attention_mass_kernel(
    q_ptr,
    k_ptr,
    sk_b,
    sk_h,
    sk_t,
    mask_ptr,
    sm_b,
    sm_i,
    sm_t,
    Hkv,
    G,
    Lq,
    T,
    d,
    scale,
    window,
    lse_ptr,  # [B * Hkv, G]
    kept_ptr,  # [B * Hkv, G, T] (KEEP)
    mass_ptr,  # [B * Hkv, T] float32
    CAUSAL: tl.constexpr,
    HAS_WINDOW: tl.constexpr,
    HAS_MASK: tl.constexpr,
    KEEP: tl.constexpr,
    F32_DOT: tl.constexpr,
    BLOCK_R: tl.constexpr,
    BLOCK_T: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    bh = tl.program_id(0).to(tl.int64)
    b = bh // Hkv
    j = tl.program_id(1) * BLOCK_T + tl.arange(0, BLOCK_T)
    jmask = j < T
    dd = tl.arange(0, BLOCK_D)
    dmask = dd < d
    k_ptrs = k_ptr + b * sk_b + (bh % Hkv) * sk_h + j[:, None] * sk_t + dd[None, :]
    acc = tl.zeros([BLOCK_T], tl.float32)
    for r0 in range(0, G, BLOCK_R):
        rows = r0 + tl.arange(0, BLOCK_R)
        rmask = rows < G
        lse = tl.load(lse_ptr + bh * G + rows, mask=rmask, other=float("-inf"))
        if KEEP:
            kp = kept_ptr + (bh * G + rows)[:, None] * T + j[None, :]
            sc = tl.load(kp, mask=rmask[:, None] & jmask[None, :], other=float("-inf"))
        else:
            qp = q_ptr + (bh * G + rows)[:, None] * d + dd[None, :]
            q = tl.load(qp, mask=rmask[:, None] & dmask[None, :], other=0.0)
            sc = _scores(q, k_ptrs, jmask[:, None] & dmask[None, :], scale, F32_DOT)
        pos = T - Lq + rows % Lq
        ok = _allowed(rows, j, rmask, jmask, pos, b, mask_ptr, sm_b, sm_i, sm_t, Lq, window,
                      CAUSAL, HAS_WINDOW, HAS_MASK)  # fmt: skip
        ok = ok & (lse != float("-inf"))[:, None]  # a row with no allowed key adds nothing
        # NaN lse (a bad row): NaN on each allowed key, as the reference
        p = tl.where(ok, tl.exp(sc - lse[:, None]), 0.0)
        acc += tl.sum(p, axis=0)
    tl.store(mass_ptr + bh * T + j, acc, mask=jmask)


def _p2(n: int) -> int:
    return 1 << max(0, (n - 1).bit_length())


def plan(BH: int, G: int, T: int, d: int, itemsize: int, target_programs: int) -> dict:
    """Block sizes, splits of the keys and the keep-the-scores decision of one call."""
    block_d = max(16, _p2(d))
    # tiles sized for 4 warps without register spills (checked with ptxas for the fp32 dot)
    block_r = min(32, max(16, _p2(G)))
    block_t = max(16, min(64, 4096 // block_d))
    tiles = triton.cdiv(T, block_t)
    row_blocks = triton.cdiv(G, block_r)
    splits = max(1, min(tiles, triton.cdiv(target_programs, BH * row_blocks)))
    seg = triton.cdiv(triton.cdiv(T, splits), block_t) * block_t
    splits = triton.cdiv(T, seg)
    keep = G * 4 <= d * itemsize
    return dict(BLOCK_D=block_d, BLOCK_R=block_r, BLOCK_T=block_t, splits=splits, seg=seg, keep=keep,
                row_blocks=row_blocks)  # fmt: skip


def attention_stats(
    q: Tensor, k: Tensor, scale: float, mask: Tensor | None, causal: bool, window: int
) -> tuple[Tensor, Tensor, Tensor]:
    """Triton ``fuq::attention_stats``: ``(mass [B, Hkv, T], entropy [B, Hq, Lq], lse [B, Hq, Lq])``.

    ``q``: ``[B, Hq, Lq, d]``, ``k``: ``[B, Hkv, T, d]`` (float32 | bfloat16 | float16),
    ``mask``: None or bool ``[B, T]`` / ``[B, Lq, T]``, ``window``: 0 for none. Runs on CUDA
    tensors, or on CPU tensors under ``TRITON_INTERPRET=1``.
    """
    interp = os.environ.get("TRITON_INTERPRET") == "1"
    if q.device.type != "cuda" and not interp:
        raise RuntimeError(
            f"the Triton kernel needs a CUDA tensor (q is on {q.device}), or TRITON_INTERPRET=1 "
            "set before fuq is imported to run it interpreted on the CPU"
        )
    B, Hq, Lq, d = q.shape
    Hkv, T = k.shape[1], k.shape[2]
    G = (Hq // Hkv) * Lq
    BH = B * Hkv
    dev = q.device
    mass = torch.zeros(B, Hkv, T, device=dev, dtype=torch.float32)
    ent = torch.full((B, Hq, Lq), float("nan"), device=dev, dtype=torch.float32)
    lse = torch.full((B, Hq, Lq), float("-inf"), device=dev, dtype=torch.float32)
    if BH == 0 or G == 0 or T == 0:
        return mass, ent, lse
    q = q.contiguous()
    if k.stride(3) != 1:
        k = k.contiguous()
    if mask is not None:
        m8 = mask.view(torch.uint8)
        sm = (m8.stride(0), m8.stride(1) if m8.dim() == 3 else 0, m8.stride(-1))
    else:
        m8, sm = q, (0, 0, 0)  # placeholder pointer, never read
    target = 4 * _sm_count(dev) if not interp else 4
    p = plan(BH, G, T, d, k.element_size(), target)
    splits = p["splits"]
    state = torch.empty(BH, splits, G, 4, device=dev, dtype=torch.float32)
    kept = torch.empty(BH, G, T, device=dev, dtype=torch.float32) if p["keep"] else state
    f32_dot = interp or k.dtype == torch.float32 or q.dtype != k.dtype
    flags = dict(CAUSAL=bool(causal), HAS_WINDOW=window > 0, HAS_MASK=mask is not None, KEEP=p["keep"],
                 F32_DOT=f32_dot, BLOCK_R=p["BLOCK_R"], BLOCK_T=p["BLOCK_T"], BLOCK_D=p["BLOCK_D"])  # fmt: skip
    common = (k.stride(0), k.stride(1), k.stride(2), m8, *sm, Hkv, G, Lq, T, d, float(scale), int(window))
    _attention_partial_kernel[(BH, splits, p["row_blocks"])](q, k, *common, p["seg"], state, kept, **flags)
    _attention_finalize_kernel[(BH, triton.cdiv(G, 16))](
        state, splits, G, lse, ent, SPLITS_PAD=max(2, _p2(splits)), BLOCK_R=16
    )
    _attention_mass_kernel[(BH, triton.cdiv(T, p["BLOCK_T"]))](q, k, *common, lse, kept, mass, **flags)
    return mass, ent, lse
