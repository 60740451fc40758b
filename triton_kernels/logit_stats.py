"""Triton kernels of ``fuq::logit_stats``: split-V partial states, then a per-row merge.

Pass 1, ``_logit_stats_partial_kernel``, grid ``(B, SPLITS)``: each program streams
its segment of one row in ``BLOCK`` chunks, once, keeping per-lane online states
(m, s, t, u) (see ``_common.py``), NaN / +inf counts and a running top-``K_PAD`` of
packed (value, index) keys; it writes one partial state and ``K_PAD`` candidate
keys. ``SPLITS`` is chosen so that ``B * SPLITS`` fills the GPU: at ``B = 1`` a
262k-entry row is spread over ~2 programs per SM, not walked by one.

With ``alpha`` given (``EXTRA``), pass 1 also keeps the density-free sums per lane (Σ
e^{alpha (z-m)}, Σ e^{(z-m)/2}, Σ (z-m) and the live count, rescaled with the same max) and
writes them after the state; pass 2 merges them into ``extra [B, 4]``: Σ log p, the live
count, log Σ p^alpha, log Σ √p (``fuq.reference.density_free``).

Pass 2, :func:`_finalize_row`: merges the partial states of a row into lse / entropy /
varentropy, picks the final top-k among the ``SPLITS * K_PAD`` candidates (in the kernel
when there are few, otherwise from a ``torch.topk`` on the candidate keys done by the
launcher), gathers the token's log-probability, and writes every output. When the
candidates are picked in the kernel (k = 0, or few candidates: MODE 0 / 1), pass 2 runs in
the last program of each row of pass 1 (``FUSED``: a per-row atomic counter, cached at
zero, as in truncate.py): one launch per call. Otherwise (the ``torch.topk`` route) it is
``_logit_stats_finalize_kernel``, grid ``(B,)``, after the sort.

Semantics are those of ``fuq.reference.logit_stats`` (the spec): ``z = x / T`` with
an IEEE division in float32, ``-inf`` entries contribute 0, top-k ordered by
(z desc, index asc), an all ``-inf`` row gives ``lse = -inf`` and NaN stats, a row
with NaN gives NaN ``lse`` (``+inf`` without NaN gives ``lse = +inf``, as
``torch.logsumexp``) and NaN stats and log-probs, with ids still in ``[0, V)``.
"""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl
from torch import Tensor

from ._common import (
    KEY_MIN,
    density_update_rows,
    empty_topk,
    merge_density,
    merge_states,
    online_update_rows,
    pack_key,
    row_counters,
    topk_insert,
    unpack_key,
)
from ._common import sm_count as _sm_count

__all__ = ["logit_stats"]


@triton.jit
def _logit_stats_partial_kernel(
    x_ptr,  # [B, V] logits, last dim contiguous
    stride_row,
    V,
    seg,  # entries per program, a multiple of BLOCK
    temperature,
    alpha,
    state_ptr,  # [B, SPLITS, NS] float32: m, s, t, u, #NaN, #(+inf) (EXTRA: then sa, sh, sd, n)
    cand_ptr,  # [B, SPLITS, max(K_PAD, 1)] int64: the segment's best keys (or its max key)
    tokens_ptr,  # FUSED: the arguments of _finalize_row
    cnt_ptr,  # FUSED: [>= B] int32 row counters, zero between launches
    n_cand,
    k,
    lse_ptr,
    ent_ptr,
    var_ptr,
    maxlp_ptr,
    argmax_ptr,
    tkl_ptr,
    tki_ptr,
    mass_ptr,
    toklp_ptr,
    extra_ptr,
    HAS_T: tl.constexpr,
    EXTRA: tl.constexpr,
    NS: tl.constexpr,
    BLOCK: tl.constexpr,
    K_PAD: tl.constexpr,
    BITONIC: tl.constexpr,
    E: tl.constexpr,  # entries per row of a chunk
    R: tl.constexpr,  # rows of a chunk: BLOCK = R * E
    FUSED: tl.constexpr,  # the row's last program finalises it (MODE 0 / 1): no second launch
    HAS_TOKENS: tl.constexpr,
    MODE: tl.constexpr,
    SPLITS_PAD: tl.constexpr,
    CAND_PAD: tl.constexpr,
):
    row = tl.program_id(0)
    split = tl.program_id(1)
    n_splits = tl.num_programs(1)
    x_row = x_ptr + row.to(tl.int64) * stride_row  # 64-bit row offset: B*V may pass 2^31
    lo = split * seg
    hi = tl.minimum(lo + seg, V)
    # A chunk is [R, E]: R rows of E contiguous entries (a thread's vector load); the online
    # state is kept per row.
    lanes = tl.arange(0, R)[:, None] * E + tl.arange(0, E)[None, :]

    m = tl.full([R], float("-inf"), tl.float32)
    s = tl.zeros([R], tl.float32)
    t = tl.zeros([R], tl.float32)
    u = tl.zeros([R], tl.float32)
    n_nan = tl.zeros([R], tl.int32)
    n_inf = tl.zeros([R], tl.int32)
    sa = tl.zeros([R], tl.float32)
    sh = tl.zeros([R], tl.float32)
    sd = tl.zeros([R], tl.float32)
    nl = tl.zeros([R], tl.float32)
    if K_PAD > 0:
        best = empty_topk(K_PAD)  # the segment's K_PAD largest keys so far, unordered
    else:
        kmax = tl.full([R], KEY_MIN, tl.int64)

    for start in range(lo, hi, BLOCK):
        idx = start + lanes
        mask = idx < hi
        # float32 right after the load: all maths (and the interpreter's reductions) in fp32
        x = tl.load(x_row + idx, mask=mask, other=float("-inf")).to(tl.float32)
        if HAS_T:
            z = tl.math.div_rn(x, temperature)  # IEEE division, as the reference's z = x / T
        else:
            z = x
        is_nan = z != z
        n_nan += tl.sum(is_nan.to(tl.int32), axis=1)
        n_inf += tl.sum((z == float("inf")).to(tl.int32), axis=1)
        zc = tl.where(is_nan, float("-inf"), z)
        if EXTRA:
            sa, sh, sd, nl = density_update_rows(m, sa, sh, sd, nl, zc, alpha)
        m, s, t, u = online_update_rows(m, s, t, u, zc)
        keys = tl.where(mask, pack_key(z, idx), KEY_MIN)
        if K_PAD > 0:
            best = topk_insert(best, tl.reshape(keys, [BLOCK]), K_PAD, BITONIC)
        else:
            kmax = tl.maximum(kmax, tl.max(keys, axis=1))

    M, S, T, U = merge_states(m, s, t, u)
    st = state_ptr + (row.to(tl.int64) * n_splits + split) * NS
    tl.store(st + 0, M)
    tl.store(st + 1, S)
    tl.store(st + 2, T)
    tl.store(st + 3, U)
    tl.store(st + 4, tl.sum(n_nan, axis=0).to(tl.float32))
    tl.store(st + 5, tl.sum(n_inf, axis=0).to(tl.float32))
    if EXTRA:
        SA, SH, SD, N = merge_density(m, sa, sh, sd, nl, alpha)
        tl.store(st + 6, SA)
        tl.store(st + 7, SH)
        tl.store(st + 8, SD)
        tl.store(st + 9, N)
    if K_PAD > 0:
        kp = tl.arange(0, K_PAD)
        tl.store(cand_ptr + (row.to(tl.int64) * n_splits + split) * K_PAD + kp, best)
    else:
        tl.store(cand_ptr + row.to(tl.int64) * n_splits + split, tl.max(kmax, axis=0))
    if FUSED:
        # the row's last program finalises it: the barrier orders every thread's stores before
        # the (acq_rel, GPU-scope) counter; _finalize_row reads the partials past L1 (.cg)
        tl.debug_barrier()
        done = tl.atomic_add(cnt_ptr + row, 1, sem="acq_rel")
        if done == n_splits - 1:
            tl.store(cnt_ptr + row, 0)  # the next launch on this buffer counts from 0
            _finalize_row(row, x_ptr, stride_row, V, temperature, alpha, tokens_ptr, state_ptr, cand_ptr, cand_ptr,
                          n_splits, n_cand, k, lse_ptr, ent_ptr, var_ptr, maxlp_ptr, argmax_ptr, tkl_ptr, tki_ptr,
                          mass_ptr, toklp_ptr, extra_ptr, HAS_T, HAS_TOKENS, EXTRA, NS, MODE, SPLITS_PAD, CAND_PAD, 2)


@triton.jit
def _logit_stats_finalize_kernel(
    x_ptr,
    stride_row,
    V,
    temperature,
    alpha,
    tokens_ptr,  # [B] int64 (unused unless HAS_TOKENS)
    state_ptr,  # [B, n_splits, NS] float32
    cand_ptr,  # [B, n_cand] int64 (MODE 0 / 1)
    sel_ptr,  # [B, k] int64 keys of the final top-k, sorted descending (MODE 2)
    n_splits,
    n_cand,
    k,
    lse_ptr,
    ent_ptr,
    var_ptr,
    maxlp_ptr,
    argmax_ptr,
    tkl_ptr,  # [B, k] float32
    tki_ptr,  # [B, k] int64
    mass_ptr,
    toklp_ptr,
    extra_ptr,  # [B, 4] float32 (EXTRA)
    HAS_T: tl.constexpr,
    HAS_TOKENS: tl.constexpr,
    EXTRA: tl.constexpr,
    NS: tl.constexpr,
    MODE: tl.constexpr,  # 0: k = 0; 1: top-k of the candidates here; 2: keys given in sel
    SPLITS_PAD: tl.constexpr,
    CAND_PAD: tl.constexpr,  # MODE 0 / 1
    KB: tl.constexpr,  # MODE 2: keys decoded per step
):
    _finalize_row(tl.program_id(0), x_ptr, stride_row, V, temperature, alpha, tokens_ptr, state_ptr, cand_ptr, sel_ptr,
                  n_splits, n_cand, k, lse_ptr, ent_ptr, var_ptr, maxlp_ptr, argmax_ptr, tkl_ptr, tki_ptr, mass_ptr,
                  toklp_ptr, extra_ptr, HAS_T, HAS_TOKENS, EXTRA, NS, MODE, SPLITS_PAD, CAND_PAD, KB)


@triton.jit
def _finalize_row(row, x_ptr, stride_row, V, temperature, alpha, tokens_ptr, state_ptr, cand_ptr, sel_ptr, n_splits,
                  n_cand, k, lse_ptr, ent_ptr, var_ptr, maxlp_ptr, argmax_ptr, tkl_ptr, tki_ptr, mass_ptr, toklp_ptr,
                  extra_ptr, HAS_T: tl.constexpr, HAS_TOKENS: tl.constexpr, EXTRA: tl.constexpr, NS: tl.constexpr,
                  MODE: tl.constexpr, SPLITS_PAD: tl.constexpr, CAND_PAD: tl.constexpr, KB: tl.constexpr):
    """Pass 2 of one row (the finalize kernel's program, or the last program of a FUSED pass 1:
    the partials of the other programs are read past L1, .cg)."""
    row64 = row.to(tl.int64)
    nan = float("nan")

    sp = tl.arange(0, SPLITS_PAD)
    smask = sp < n_splits
    st = state_ptr + (row64 * n_splits + sp) * NS
    m = tl.load(st + 0, mask=smask, other=float("-inf"), cache_modifier=".cg")
    s = tl.load(st + 1, mask=smask, other=0.0, cache_modifier=".cg")
    t = tl.load(st + 2, mask=smask, other=0.0, cache_modifier=".cg")
    u = tl.load(st + 3, mask=smask, other=0.0, cache_modifier=".cg")
    has_nan = tl.sum(tl.load(st + 4, mask=smask, other=0.0, cache_modifier=".cg"), axis=0) > 0
    has_inf = tl.sum(tl.load(st + 5, mask=smask, other=0.0, cache_modifier=".cg"), axis=0) > 0
    bad = has_nan | has_inf
    M, S, T, U = merge_states(m, s, t, u)

    log_s = tl.log(S)
    lse = M + log_s  # all -inf row: -inf + log 0 = -inf
    mean = T / S  # E_p[z - M]; NaN for an all -inf row (0 / 0)
    entropy = log_s - mean
    var = U / S - mean * mean
    var = tl.where(var < 0.0, 0.0, var)  # rounding; keeps NaN
    lse = tl.where(has_nan, nan, tl.where(has_inf, float("inf"), lse))
    entropy = tl.where(bad, nan, entropy)
    var = tl.where(bad, nan, var)
    tl.store(lse_ptr + row, lse)
    tl.store(ent_ptr + row, entropy)
    tl.store(var_ptr + row, var)
    tl.store(maxlp_ptr + row, tl.where(bad, nan, M - lse))
    if EXTRA:
        SA, SH, SD, N = merge_density(
            m,
            tl.load(st + 6, mask=smask, other=0.0, cache_modifier=".cg"),
            tl.load(st + 7, mask=smask, other=0.0, cache_modifier=".cg"),
            tl.load(st + 8, mask=smask, other=0.0, cache_modifier=".cg"),
            tl.load(st + 9, mask=smask, other=0.0, cache_modifier=".cg"),
            alpha,
        )
        none = bad | (N == 0.0)  # entropy is NaN: all four NaN
        ex = extra_ptr + row64 * 4
        tl.store(ex + 0, tl.where(none, nan, SD - N * log_s))
        tl.store(ex + 1, tl.where(none, nan, N))
        tl.store(ex + 2, tl.where(none, nan, tl.log(SA) - alpha * log_s))
        tl.store(ex + 3, tl.where(none, nan, tl.log(SH) - 0.5 * log_s))

    if MODE == 2:
        kmax = tl.load(sel_ptr + row64 * k)  # the first key of the sorted top-k
    else:
        c = tl.arange(0, CAND_PAD)
        keys = tl.load(cand_ptr + row64 * n_cand + c, mask=c < n_cand, other=KEY_MIN, cache_modifier=".cg")
        kmax = tl.max(keys, axis=0)
    _, amax = unpack_key(kmax)
    tl.store(argmax_ptr + row, amax.to(tl.int64))

    if MODE == 1:
        # k small: walk the candidates down from the max, one key per step (keys are distinct).
        mk = kmax
        mass = tl.sum(tl.zeros([2], tl.float32), axis=0)  # a float32 scalar tensor (loop-carried)
        for j in range(0, k):
            z, idx = unpack_key(mk)
            lp = tl.where(bad, nan, z - lse)
            tl.store(tkl_ptr + row64 * k + j, lp)
            tl.store(tki_ptr + row64 * k + j, idx.to(tl.int64))
            mass += tl.exp(lp)
            mk = tl.max(tl.where(keys < mk, keys, KEY_MIN), axis=0)
        tl.store(mass_ptr + row, mass)
    elif MODE == 2:
        mass = tl.zeros([KB], tl.float32)
        for j0 in range(0, k, KB):
            j = j0 + tl.arange(0, KB)
            jm = j < k
            key = tl.load(sel_ptr + row64 * k + j, mask=jm, other=KEY_MIN)
            z, idx = unpack_key(key)
            lp = tl.where(bad, nan, z - lse)
            tl.store(tkl_ptr + row64 * k + j, lp, mask=jm)
            tl.store(tki_ptr + row64 * k + j, idx.to(tl.int64), mask=jm)
            mass += tl.where(jm, tl.exp(lp), 0.0)
        tl.store(mass_ptr + row, tl.sum(mass, axis=0))
    else:
        tl.store(mass_ptr + row, 0.0)

    if HAS_TOKENS:
        tok = tl.load(tokens_ptr + row)
        ok = (tok >= 0) & (tok < V)
        xt = tl.load(x_ptr + row64 * stride_row + tl.where(ok, tok, 0), mask=ok, other=0.0).to(tl.float32)
        if HAS_T:
            zt = tl.math.div_rn(xt, temperature)
        else:
            zt = xt
        tl.store(toklp_ptr + row, tl.where(ok & (bad == 0), zt - lse, nan))


@triton.jit
def _row_keys_kernel(x_ptr, stride_row, V, temperature, keys_ptr, HAS_T: tl.constexpr, BLOCK: tl.constexpr):
    """keys[b, i] = pack_key(x[b, i] / T, i): the large-k route (k > K_MAX) sorts these with torch."""
    row = tl.program_id(0).to(tl.int64)
    idx = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    mask = idx < V
    x = tl.load(x_ptr + row * stride_row + idx, mask=mask, other=0.0).to(tl.float32)
    if HAS_T:
        z = tl.math.div_rn(x, temperature)
    else:
        z = x
    tl.store(keys_ptr + row * V + idx, pack_key(z, idx), mask=mask)


# k up to K_MAX keeps a running top-K_PAD per program; larger k (say k = V) takes the
# candidate-free route: pass 1 without top-k, then one torch.topk over the packed keys
# of the whole row (exact, same tie rule, but a second read of the row and B*V*8 bytes).
K_MAX = 1024
# Up to these sizes the final top-k is picked inside the finalize kernel (k steps over the
# candidates); beyond, by torch.topk on the candidate keys (distinct keys: exact order).
MERGE_IN_KERNEL_MAX_K = 128
MERGE_IN_KERNEL_MAX_CAND = 4096
# Bitonic tl.topk for chunks that bring many new top-k keys: None = on GPUs only (it is very
# slow under the interpreter); tests may force it on to cover that path.
BITONIC: bool | None = None


# Chunk sizes of pass 1 (4 warps), sized so that the programs per SM the plan assumes fit in
# the register file (ptxas for sm_90 / sm_80, BLOCK -> registers per thread -> blocks per SM):
# k = 0: 1024 -> 110 / 128 regs, 4 blocks; 512 -> 56 regs, 8 blocks (the plan's 8 per SM).
# K_PAD = 64: 1024 -> 198 / 194 regs, 2 blocks; 256 -> 96 regs, 5 blocks (the plan's 4 per SM).
# K_PAD > 256 needs BLOCK >= K_PAD and gets fewer. num_stages does not apply: Triton does not
# pipeline these loads (no tl.dot), so the latency is covered by programs in flight instead.
BLOCK_STATS = 512
BLOCK_TOPK = 256


def _target_programs(device: torch.device, k: int) -> int:
    if device.type == "cuda":
        # enough programs in flight per SM to cover the memory latency (a program holds one
        # BLOCK of loads at a time); with top-k, fewer, since the candidates to merge grow
        per_sm = 4 if k > 0 else 8
        return per_sm * _sm_count(device)
    return 4  # interpreter: a few splits, enough to exercise the merge


def _p2(n: int) -> int:
    return 1 << max(0, (n - 1).bit_length())


def _plan(B: int, V: int, k: int, target_programs: int) -> tuple[int, int, int, int]:
    """``(K_PAD, BLOCK, SPLITS, seg)``: SPLITS programs per row, each over ``seg`` entries (a multiple of BLOCK)."""
    k_pad = 0 if k == 0 or k > K_MAX else max(2, _p2(k))
    block = max(k_pad, 16, min(BLOCK_TOPK if k_pad else BLOCK_STATS, _p2(V)))
    splits = max(1, min(triton.cdiv(V, block), triton.cdiv(target_programs, max(B, 1))))
    seg = triton.cdiv(triton.cdiv(V, splits), block) * block
    return k_pad, block, triton.cdiv(V, seg), seg


def logit_stats(
    logits: Tensor, k: int, tokens: Tensor | None, temperature: float, alpha: float | None = None
) -> tuple[Tensor, ...]:
    """Triton ``fuq::logit_stats`` on ``logits: [B, V]`` float32 | bfloat16 | float16.

    ``k`` in ``[0, V]``; ``tokens``: ``[B]`` integer ids or None; ``temperature > 0``;
    ``alpha``: None, or > 0 for the density-free sums.
    Returns ``(lse, entropy, varentropy, max_logprob, argmax, topk_logprobs [B, k],
    topk_ids [B, k], topk_mass, token_logprob, extra)``: float32 / int64, contiguous;
    ``token_logprob`` is ``[B]``, or empty ``[0]`` when ``tokens`` is None; ``extra`` is
    ``[B, 4]``, or empty ``[0, 4]`` when ``alpha`` is None. Runs on
    CUDA tensors, or on CPU tensors under ``TRITON_INTERPRET=1``.
    """
    if logits.dim() != 2:
        raise ValueError(f"logits must be [B, V], got shape {tuple(logits.shape)}")
    if logits.dtype not in (torch.float32, torch.bfloat16, torch.float16):
        raise TypeError(f"logits must be float32, bfloat16 or float16, got {logits.dtype}")
    B, V = logits.shape
    if logits.device.type != "cuda" and os.environ.get("TRITON_INTERPRET") != "1":
        raise RuntimeError(
            f"the Triton kernel needs a CUDA tensor (logits is on {logits.device}), or TRITON_INTERPRET=1 "
            "set before fuq is imported to run it interpreted on the CPU"
        )
    if not 0 <= k <= V:
        raise ValueError(f"k must be in [0, V] = [0, {V}], got k = {k}")
    if logits.stride(1) != 1 and V > 1:
        logits = logits.contiguous()
    dev = logits.device
    f32 = dict(device=dev, dtype=torch.float32)
    lse = torch.empty(B, **f32)
    ent = torch.empty(B, **f32)
    var = torch.empty(B, **f32)
    maxlp = torch.empty(B, **f32)
    amax = torch.empty(B, device=dev, dtype=torch.int64)
    tkl = torch.empty(B, k, **f32)
    tki = torch.empty(B, k, device=dev, dtype=torch.int64)
    mass = torch.empty(B, **f32)
    toklp = torch.empty(B if tokens is not None else 0, **f32)
    has_extra = alpha is not None
    extra = torch.empty(B if has_extra else 0, 4, **f32)
    if B == 0:
        return lse, ent, var, maxlp, amax, tkl, tki, mass, toklp, extra
    T = float(temperature)
    has_t = T != 1.0  # x / 1.0 == x exactly
    stride = logits.stride(0)

    k_pad, block, splits, seg = _plan(B, V, k, _target_programs(dev, k))
    kc = max(k_pad, 1)
    ns = 10 if has_extra else 6
    a = float(alpha) if has_extra else 0.5
    state = torch.empty(B, splits, ns, **f32)
    cand = torch.empty(B, splits, kc, device=dev, dtype=torch.int64)
    num_warps = 4 if block <= 1024 else 8
    bitonic = (dev.type == "cuda") if BITONIC is None else BITONIC
    n_cand = splits * kc
    if k == 0:
        mode = 0
    elif k_pad > 0 and k <= MERGE_IN_KERNEL_MAX_K and n_cand <= MERGE_IN_KERNEL_MAX_CAND:
        mode = 1
    else:
        mode = 2
    tok = tokens.to(device=dev, dtype=torch.int64).contiguous() if tokens is not None else amax
    outs = (lse, ent, var, maxlp, amax, tkl, tki, mass, toklp, extra)
    # pads rounded up to a few sizes: fewer distinct compilations on the GPU
    pads = dict(SPLITS_PAD=max(16, _p2(splits)), CAND_PAD=max(128, _p2(n_cand)) if mode != 2 else 2)
    fused = mode != 2  # MODE 0 / 1: the finaliser runs in the row's last program of pass 1
    _logit_stats_partial_kernel[(B, splits)](
        logits, stride, V, seg, T, a, state, cand, tok, row_counters(B, dev), n_cand, k, *outs,
        HAS_T=has_t, EXTRA=has_extra, NS=ns, BLOCK=block, K_PAD=k_pad, BITONIC=bitonic and k_pad >= 16,
        E=8, R=block // 8, FUSED=fused, HAS_TOKENS=tokens is not None, MODE=mode,
        **(pads if fused else dict(SPLITS_PAD=16, CAND_PAD=2)), num_warps=num_warps,
    )  # fmt: skip
    if fused:
        return outs

    sel = cand  # placeholder pointer when unused
    if mode == 2:
        if k_pad > 0:
            sel = torch.topk(cand.view(B, n_cand), k, dim=1, sorted=True).values.contiguous()
        else:  # k > K_MAX: exact top-k from the keys of the whole row
            keys = torch.empty(B, V, device=dev, dtype=torch.int64)
            kblock = 1024
            _row_keys_kernel[(B, triton.cdiv(V, kblock))](logits, stride, V, T, keys, HAS_T=has_t, BLOCK=kblock)
            sel = torch.topk(keys, k, dim=1, sorted=True).values.contiguous()
    _logit_stats_finalize_kernel[(B,)](
        logits,
        stride,
        V,
        T,
        a,
        tok,
        state,
        cand,
        sel,
        splits,
        n_cand,
        k,
        lse,
        ent,
        var,
        maxlp,
        amax,
        tkl,
        tki,
        mass,
        toklp,
        extra,
        HAS_T=has_t,
        HAS_TOKENS=tokens is not None,
        EXTRA=has_extra,
        NS=ns,
        MODE=mode,
        **pads,
        KB=max(16, min(1024, _p2(k))),
        num_warps=4,
    )
    return lse, ent, var, maxlp, amax, tkl, tki, mass, toklp, extra
