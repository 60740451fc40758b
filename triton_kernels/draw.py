"""Triton inverse-CDF draw over a truncated row: one launch per call.

Given the truncated rows (float32 ``z`` [B, V], removed tokens at ``-inf``, as
:func:`fuq.triton_kernels.truncate.truncate` returns them) and one float64 uniform ``u``
per row, :func:`draw` returns the first live token, in index order, whose cumulative
weight ``Σ exp(z - m)`` exceeds ``u * total``: the rule of ``fuq.reference.sample_from``
and of the C++ ``RowTruncator::draw`` (csrc/include/fuq/cpu_select.h):

* weights and sums are float64 (``exp`` of ``float64(z) - float64(m)``, ``m`` the row's
  largest live value), so the weights are the reference's; only the order of the float64
  additions differs (a draw can differ from the reference only when ``u * total`` lies
  within float64 rounding of a cumulative sum);
* when ``u * total`` rounds up to (or past) every cumulative sum, the last live token;
* a row with no live token (all ``-inf``) or holding a NaN gives id 0.

One ``(B, S)`` launch (:func:`_draw_kernel`): each of a row's S programs reduces its
segment to ``(m_j, s_j = Σ exp(z - m_j), NaN flag, last live index)`` in float64; the
row's last program to finish (a per-row atomic counter, as in truncate.py's split passes)
rescales the S partials to the row max, finds the segment where the cumulative weight
passes ``u * total`` and scans it (and, if rounding left the target unmet, the segments
after it) element by element. With S = 1 (B alone fills the GPU) the one program does
both. The counters live in a buffer cached per (device, stream) and are left at zero by
every launch, so a call allocates no zeroed memory (no fill kernel).
"""

from __future__ import annotations

import contextlib

import torch
import triton
import triton.language as tl

from ._common import row_counters as _counters
from ._common import sm_count as _sm_count

BLOCK = 1024  # entries per chunk of a segment
NP = tl.constexpr(4)  # float64 partials per program: m, s, NaN count, last live index


@triton.jit
def _draw_chunk(z, cols, m, s, nan, last):
    """One chunk of a segment's partials: the online (max, Σ exp(z - max)) in float64, the NaN
    count and the last live index (also folded into truncate.py's last apply launch)."""
    nan += tl.sum((z != z).to(tl.int32), axis=0)
    live = z > float("-inf")
    zd = z.to(tl.float64)
    m_new = tl.maximum(m, tl.max(tl.where(live, zd, float("-inf")), axis=0))
    if m_new > float("-inf"):
        r = tl.where(m > float("-inf"), tl.exp(m - m_new), 0.0)
        s = r * s + tl.sum(tl.where(live, tl.exp(zd - m_new), 0.0), axis=0)
        m = m_new
    last = tl.maximum(last, tl.max(tl.where(live, cols, -1), axis=0))
    return m, s, nan, last


@triton.jit
def _draw_kernel(z_ptr, z_stride, u_ptr, out_ptr, part_ptr, cnt_ptr, V, seg, S,
                 BLOCK: tl.constexpr, S_PAD: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    split = tl.program_id(1)
    zrow = z_ptr + row * z_stride
    lo = split * seg
    hi = tl.minimum(lo + seg, V)
    # the segment's online (max, Σ exp(z - max)) in float64, NaNs counted, last live index
    m = tl.full([], float("-inf"), tl.float64)
    s = tl.zeros([], tl.float64)
    nan = tl.zeros([], tl.int32)
    last = tl.full([], -1, tl.int32)
    for start in range(lo, hi, BLOCK):
        cols = start + tl.arange(0, BLOCK)
        z = tl.load(zrow + cols, mask=cols < hi, other=float("-inf"))
        m, s, nan, last = _draw_chunk(z, cols, m, s, nan, last)
    p = tl.arange(0, NP)
    res = tl.where(p == 0, m, tl.where(p == 1, s, tl.where(p == 2, nan.to(tl.float64), last.to(tl.float64))))
    tl.store(part_ptr + (row * S + split) * NP + p, res)
    # the row's last program draws: the barrier orders every thread's stores before the
    # (acq_rel, GPU-scope) counter; the partials are read past L1 (.cg)
    tl.debug_barrier()
    done = tl.atomic_add(cnt_ptr + row, 1, sem="acq_rel")
    if done == S - 1:
        tl.store(cnt_ptr + row, 0)  # the next launch on this buffer counts from 0
        _draw_row(zrow, tl.load(u_ptr + row), out_ptr + row, part_ptr + row * S * NP, V, seg, S, BLOCK, S_PAD)


@triton.jit
def _draw_row(zrow, u, out, part, V, seg, S, BLOCK: tl.constexpr, S_PAD: tl.constexpr):
    """The draw of one row from its S partials (see the module docstring)."""
    sp = tl.arange(0, S_PAD)
    ok = sp < S
    ms = tl.load(part + sp * NP, mask=ok, other=float("-inf"), cache_modifier=".cg")
    ss = tl.load(part + sp * NP + 1, mask=ok, other=0.0, cache_modifier=".cg")
    nans = tl.sum(tl.load(part + sp * NP + 2, mask=ok, other=0.0, cache_modifier=".cg"), axis=0)
    last = tl.max(tl.load(part + sp * NP + 3, mask=ok, other=-1.0, cache_modifier=".cg"), axis=0).to(tl.int64)
    M = tl.max(ms, axis=0)
    idx = tl.zeros([], tl.int64)  # no live token or a NaN: id 0
    if (nans == 0) & (M > float("-inf")):
        w = tl.where(ms > float("-inf"), ss * tl.exp(ms - M), 0.0)  # segment weights relative to M
        target = u * tl.sum(w, axis=0)
        cum = tl.cumsum(w, axis=0)
        # the first segment whose cumulative weight passes the target (S: none, rounding)
        c = tl.min(tl.where((cum > target) & ok, sp, S_PAD), axis=0)
        idx = last  # u * total rounded up to the total: the last live token
        if c < S:
            acc = tl.sum(tl.where(sp < c, w, 0.0), axis=0)  # the weight before segment c
            start = c * seg
            found = 0
            # scan from segment c on; past its end only when rounding left the target unmet
            while (found == 0) & (start < V):
                cols = start + tl.arange(0, BLOCK)
                # .cg: the rows may have been written by other programs of this launch (truncate.py)
                z = tl.load(zrow + cols, mask=cols < V, other=float("-inf"), cache_modifier=".cg")
                live = z > float("-inf")
                e = tl.where(live, tl.exp(z.to(tl.float64) - M), 0.0)
                run = acc + tl.cumsum(e, axis=0)
                hit = tl.min(tl.where((run > target) & live, cols, V), axis=0)
                if hit < V:
                    idx = hit.to(tl.int64)
                    found = 1
                acc += tl.sum(e, axis=0)
                start += BLOCK
    tl.store(out, idx)


# ---------------------------------------------------------------------------------- launcher


def _p2(n: int) -> int:
    return 1 << max(0, (n - 1).bit_length())


def split_plan(B: int, V: int, target_programs: int) -> tuple[int, int]:
    """``(S, seg)``: S programs per row over segments of ``seg`` entries (a multiple of BLOCK),
    so that B·S is about ``target_programs``; S = 1 when B alone reaches it."""
    chunks = triton.cdiv(max(V, 1), BLOCK)
    S = 1 if B >= target_programs else max(1, min(triton.cdiv(target_programs, max(B, 1)), chunks))
    seg = triton.cdiv(chunks, S) * BLOCK
    return triton.cdiv(max(V, 1), seg), seg


def _target_programs(device: torch.device) -> int:
    if device.type == "cuda":
        return 2 * _sm_count(device)
    return 4  # interpreter: a few splits, enough to exercise the merge (tests override SPLIT_TARGET)


SPLIT_TARGET: int | None = None  # tests force a target number of programs

def draw(truncated: torch.Tensor, uniform: torch.Tensor) -> torch.Tensor:
    """Inverse-CDF draw from ``softmax(truncated)`` in token-index order -> int64 ``[B]``.

    ``truncated``: float32 ``[B, V]`` (last dim contiguous), removed tokens at ``-inf``, no
    ``+inf`` (the Triton truncation never returns one: such rows come back NaN);
    ``uniform``: ``[B]`` in [0, 1) (float64; other dtypes are converted). Same rule as
    ``fuq.reference.sample_from``: the first live token whose cumulative float64 weight
    ``Σ exp(z - max)`` exceeds ``u * total``; the last live token when rounding leaves none;
    id 0 for a row with no live token or holding a NaN.

    Example (on a CUDA tensor, or a CPU one under ``TRITON_INTERPRET=1``):
        >>> draw(torch.tensor([[0.0, float("-inf"), 0.0]]), torch.tensor([0.6], dtype=torch.float64)).tolist()
        [2]
    """
    if truncated.dim() != 2 or truncated.dtype != torch.float32:
        raise ValueError(f"draw expects float32 [B, V] rows, got {truncated.dtype} {tuple(truncated.shape)}")
    B, V = truncated.shape
    if uniform.shape != (B,):
        raise ValueError(f"draw expects one uniform per row, shape ({B},), got {tuple(uniform.shape)}")
    if V >= 2**31:
        raise ValueError(f"the Triton draw kernel needs V < 2^31, got V = {V}")
    dev = truncated.device
    out = torch.empty((B,), dtype=torch.int64, device=dev)
    if B == 0:
        return out
    if V == 0:
        raise ValueError("draw needs at least one token per row (V = 0)")
    if truncated.stride(-1) != 1:
        truncated = truncated.contiguous()
    u = uniform if uniform.dtype == torch.float64 and uniform.is_contiguous() else uniform.double().contiguous()
    guard = torch.cuda.device(dev) if dev.type == "cuda" else contextlib.nullcontext()
    with guard:
        target = SPLIT_TARGET if SPLIT_TARGET is not None else _target_programs(dev)
        S, seg = split_plan(B, V, target)
        part = torch.empty((B, S, NP.value), dtype=torch.float64, device=dev)
        _draw_kernel[(B, S)](truncated, truncated.stride(0), u, out, part, _counters(B, dev), V, seg, S,
                             BLOCK=BLOCK, S_PAD=max(2, _p2(S)), num_warps=4)
    return out
