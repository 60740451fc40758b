"""``fuq.truncate`` and ``fuq.sample``: the Hugging Face sampling warpers, fused and sort-free.

The public functions validate their knobs once, here, and call one op
(``fuq::truncate`` / ``fuq::sample``) whose kernels trust them. The semantics are
those of :func:`fuq.reference.truncate` (the spec); see its docstring and the
helpers above it for each knob.
"""

from __future__ import annotations

import torch
from torch import Tensor

from . import _library
from . import knobs as _kt
from ._validate import as_rows, check_backend, check_logits
from .ops import LogitStats, _shaped

__all__ = ["truncate", "sample"]


def _knobs(
    temperature, top_k, top_p, min_p, typical_p, epsilon, eta, top_h, top_n_sigma, p_less, min_tokens_to_keep
) -> tuple:
    """Validated scalar knobs as the op's arguments, with the off-values of the table (fuq/knobs.py)."""
    r = _kt.resolve_values(
        None, (temperature, top_k, top_p, min_p, typical_p, epsilon, eta, top_h, top_n_sigma, p_less,
               min_tokens_to_keep)
    )
    return r


def _grouped(fn, packed: Tensor, rows: Tensor, *per_row: Tensor, args: tuple = (), tail: tuple = ()):
    """Per-row knobs: one call of ``fn(rows[g], *per_row[g], *args, *knobs_g, *tail)`` per distinct
    knob setting g (one call when every row has the same), scattered back into ``[B, ...]`` outputs."""
    B = rows.shape[0]
    if B == 0:
        return fn(rows, *per_row, *args, *_kt.OFF, *tail)
    if B == 1:
        return fn(rows, *per_row, *args, *_kt.unpack_row(packed[0]), *tail)
    uniq, inv = torch.unique(packed, dim=0, return_inverse=True)
    if uniq.shape[0] == 1:
        return fn(rows, *per_row, *args, *_kt.unpack_row(uniq[0]), *tail)
    inv = inv.to(rows.device)
    outs = None
    single = False
    for g in range(uniq.shape[0]):
        idx = (inv == g).nonzero()[:, 0]
        got = fn(rows[idx], *(p[idx] for p in per_row), *args, *_kt.unpack_row(uniq[g]), *tail)
        if isinstance(got, Tensor):
            single, got = True, (got,)
        if outs is None:
            outs = [o.new_empty((B, *o.shape[1:])) for o in got]
        for o, v in zip(outs, got, strict=True):
            o[idx] = v
    return outs[0] if single else tuple(outs)


def _check_uniform(uniform: Tensor, lead: torch.Size, device: torch.device) -> Tensor:
    """``sample(uniform=...)``: ``[...]`` floats in [0, 1) on the logits' device -> float64 ``[B]``."""
    if not isinstance(uniform, Tensor):
        raise TypeError(f"uniform must be a torch.Tensor, got {type(uniform).__name__}")
    if not uniform.dtype.is_floating_point:
        raise TypeError(f"uniform must be a floating-point tensor, got {uniform.dtype}")
    if tuple(uniform.shape) != tuple(lead):
        raise ValueError(
            f"uniform must have shape {tuple(lead)} (the leading dims of logits), got {tuple(uniform.shape)}"
        )
    if uniform.device != device:
        raise ValueError(f"uniform is on {uniform.device} but logits is on {device}")
    # Read on the host only for CPU tensors outside tracing (as the tokens of logit_stats).
    if not torch.compiler.is_compiling() and uniform.numel() > 0 and uniform.device.type == "cpu":
        lo, hi = (float(v) for v in torch.aminmax(uniform))
        if not (lo >= 0.0 and hi < 1.0):
            raise ValueError(f"uniform must be in [0, 1), got values in [{lo}, {hi}]")
    return uniform.reshape(-1).to(torch.float64)


def truncate(
    logits: Tensor,
    *,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    min_p: float | None = None,
    typical_p: float | None = None,
    epsilon: float | None = None,
    eta: float | None = None,
    top_h: float | None = None,
    top_n_sigma: float | None = None,
    p_less: bool = False,
    min_tokens_to_keep: int = 1,
    backend: str = "auto",
) -> Tensor:
    """``logits / temperature`` with every token the sampling knobs remove at ``-inf``.

    The knobs run in Hugging Face's order (temperature, top-h, top-k, top-p, min-p,
    typical, epsilon, eta), then top-nσ and p-less, each on the output of the previous,
    and keep the same tokens as HF's warpers of the same names (``TopKLogitsWarper``,
    ``TopPLogitsWarper``, ``MinPLogitsWarper``, ``TypicalLogitsWarper``,
    ``EpsilonLogitsWarper``, ``EtaLogitsWarper``) except where a float rounding tie
    decides. Exact ties follow one rule on every backend (``fuq/reference.py``): top-k and
    the thresholds keep equal values together; top-p, typical and top-h keep a prefix of
    their order (z descending, then token id ascending; typical: ``|-log p - H|``
    ascending), so of a tie group at the cut only the lower ids stay. No full-vocabulary
    sort.

    Args:
        logits: ``[..., V]`` float32 | bfloat16 | float16, any strides; ``-inf`` = masked.
        temperature: finite, > 0.
        top_k: keep the k most probable tokens (and ties with the k-th); None or 0 is off; >= 0.
        top_p: keep the shortest prefix of the order of mass >= top_p; in (0, 1], 1 is off.
        min_p: keep p >= min_p * max p; in [0, 1], 0 is off.
        typical_p: keep the most typical tokens (|-log p - H| ascending) up to this
            mass; in (0, 1], 1 is off.
        epsilon: keep p >= epsilon (HF's ``epsilon_cutoff``); >= 0, 0 is off.
        eta: keep p >= min(eta, sqrt(eta) * exp(-H)) (HF's ``eta_cutoff``); >= 0, 0 is off.
        top_h: Top-H with alpha = top_h over the full distribution: keep the longest
            prefix of the order whose entropy terms sum to <= alpha * H(p) (at least the
            top token; exact when one logit is hundreds of nats ahead); in (0, 1].
            Unlike HF's ``TopHLogitsWarper`` (and the paper's code), which computes both
            sums over the 100 most probable tokens only, the sums here run over the
            whole vocabulary.
        top_n_sigma: keep z >= max z - n * sigma, sigma the (N - 1)-normalised standard
            deviation of the finite z of the row; >= 0.
        p_less: keep p >= sum p^2 (the row's collision probability).
        min_tokens_to_keep: >= 1; honoured by top-k, top-p, min-p, typical, epsilon and
            eta as HF does (top-h, top-nσ and p-less keep at least one token).
        backend: ``"auto"`` (C++ on the CPU), ``"cpp"``, ``"triton"`` or ``"reference"``.

    Returns:
        float32 ``[..., V]``. A row holding NaN or +inf comes back all NaN; a row that is
        all ``-inf`` stays all ``-inf``.

    Example:
        >>> import torch, fuq
        >>> fuq.truncate(torch.tensor([[3.0, 2.0, 1.0, 0.0]]), top_k=2).tolist()
        [[3.0, 2.0, -inf, -inf]]
    """
    check_logits(logits)
    check_backend(backend)
    shape = logits.shape
    rows = as_rows(logits)
    knobs = _kt.resolve_values(
        rows.shape[0],
        (temperature, top_k, top_p, min_p, typical_p, epsilon, eta, top_h, top_n_sigma, p_less, min_tokens_to_keep),
    )
    fn = _library.pick("truncate", backend, rows)
    out = fn(rows, *knobs) if isinstance(knobs, tuple) else _grouped(fn, knobs, rows)
    return out.reshape(shape)


def sample(
    logits: Tensor,
    *,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    min_p: float | None = None,
    typical_p: float | None = None,
    epsilon: float | None = None,
    eta: float | None = None,
    top_h: float | None = None,
    top_n_sigma: float | None = None,
    p_less: bool = False,
    min_tokens_to_keep: int = 1,
    generator: torch.Generator | None = None,
    k: int = 0,
    base_stats: bool = False,
    backend: str = "auto",
    uniform: Tensor | None = None,
) -> tuple[Tensor, LogitStats]:
    """Draw one token per row from the truncated distribution, with the step's stats, in one call.

    The knobs are those of :func:`truncate`; with all of them off this samples from
    ``softmax(logits / temperature)``. One uniform per row is drawn with
    ``torch.rand(..., dtype=float64, generator=generator)`` and the id is found by exact
    inverse-CDF sampling over the kept tokens in index order, so a seeded generator
    gives the same ids on every backend.

    Args:
        logits: ``[..., V]`` float32 | bfloat16 | float16.
        generator: a ``torch.Generator`` (any device) or None for the default one.
        k: how many top tokens the returned stats hold, ``0 <= k <= V``.
        base_stats: return the stats at temperature 1 (the model's own distribution, what
            a trace records) instead of at ``temperature``. The C++ kernel computes both
            temperatures in the same pass over the row; the Triton / CUDA routes run their
            one stats call at T = 1 instead.
        backend: ``"auto"``, ``"cpp"``, ``"triton"`` or ``"reference"``.
        uniform: your own draws instead of ``torch.rand``: a float tensor of the leading
            shape of ``logits`` (``[...]``), values in [0, 1), on the logits' device (used in
            float64; ``generator`` is then unused). Pass it as an input of a
            ``torch.export`` / AOTInductor graph to make the draw the caller's, so the
            compiled step picks the same ids as eager.

    Returns:
        ``(ids, stats)``: int64 ids ``[...]`` and the :class:`fuq.LogitStats` of the
        *untruncated* step at this temperature (as ``fuq.logit_stats(logits, k=k,
        tokens=ids, temperature=temperature)``; at 1 with ``base_stats``), ``token_logprob``
        being log p of the drawn id under the untruncated distribution. A row with no live
        token (all ``-inf``, NaN) gives id 0.

    Example:
        >>> import torch, fuq
        >>> g = torch.Generator().manual_seed(0)
        >>> ids, st = fuq.sample(torch.tensor([[5.0, 0.0, -5.0]]), top_k=1, generator=g)
        >>> ids.tolist(), round(st.token_logprob.item(), 4)
        ([0], -0.0068)
    """
    V = check_logits(logits)
    if isinstance(k, bool) or not isinstance(k, int):
        raise TypeError(f"k must be an int, got {type(k).__name__}")
    if k < 0 or k > V:
        raise ValueError(f"k must be in [0, V] = [0, {V}], got k = {k}")
    if not isinstance(base_stats, bool):
        raise TypeError(f"base_stats must be a bool, got {type(base_stats).__name__}")
    check_backend(backend)
    lead = logits.shape[:-1]
    rows = as_rows(logits)
    B = rows.shape[0]
    knobs = _kt.resolve_values(
        B, (temperature, top_k, top_p, min_p, typical_p, epsilon, eta, top_h, top_n_sigma, p_less, min_tokens_to_keep)
    )
    if uniform is None:
        gdev = generator.device if generator is not None else rows.device
        u = torch.rand((B,), dtype=torch.float64, generator=generator, device=gdev)
        if gdev != rows.device:
            u = u.to(rows.device)
    else:
        u = _check_uniform(uniform, lead, rows.device)
    fn = _library.pick("sample", backend, rows)
    if isinstance(knobs, tuple):
        out = fn(rows, u, k, *knobs, base_stats)
    else:
        out = _grouped(fn, knobs, rows, u, args=(k,), tail=(base_stats,))
    if logits.dim() == 2:  # already [B, V]: skip ten reshapes (microseconds each at B = 1)
        return out[0], LogitStats(*out[1:])
    return out[0].reshape(lead), _shaped(out[1:], lead, k, True)
