"""``fuq.truncate`` and ``fuq.sample``: the Hugging Face sampling warpers, fused and sort-free.

The public functions validate their knobs once, here, and call one op
(``fuq::truncate`` / ``fuq::sample``) whose kernels trust them. The semantics are
those of :func:`fuq.reference.truncate` (the spec); see its docstring and the
helpers above it for each knob.
"""

from __future__ import annotations

import threading

import torch
from torch import Tensor

from . import _library
from . import knobs as _kt
from ._validate import as_rows, check_backend, check_logits
from .ops import LogitStats, _shaped

__all__ = ["truncate", "sample"]


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


_DRAWS = threading.local()


def _draw(B: int, generator: torch.Generator | None, device: torch.device) -> Tensor:
    """One float64 uniform per row, the numbers ``torch.rand((B,), dtype=float64, generator=...)`` gives.

    On the CPU, outside tracing, they are drawn in place into a per-thread buffer with
    ``uniform_`` (the same kernel and generator stream as ``torch.rand``): a decode step saves
    the allocation and the factory call (~2 us of ~25 at B = 1). The buffer is only an input
    of the op (never returned) and is rebuilt when the inference-mode state changes (an
    inference tensor cannot be written outside inference mode).
    """
    if device.type == "cpu" and (generator is None or generator.device.type == "cpu"):
        if not torch.compiler.is_compiling():
            buf = getattr(_DRAWS, "buf", None)
            if buf is None or buf.shape[0] != B or buf.is_inference() != torch.is_inference_mode_enabled():
                buf = _DRAWS.buf = torch.empty((B,), dtype=torch.float64, device=device)
            return buf.uniform_(generator=generator)
        return torch.rand((B,), dtype=torch.float64, generator=generator, device=device)
    if generator is None or generator.device == device:
        return torch.rand((B,), dtype=torch.float64, generator=generator, device=device)
    return torch.rand((B,), dtype=torch.float64, generator=generator, device=generator.device).to(device)


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


@_kt.with_knob_params
def truncate(logits: Tensor, *, backend: str = "auto", **knobs) -> Tensor:
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
    sort. Top-H (``top_h`` = alpha) runs over the full distribution: unlike HF's
    ``TopHLogitsWarper`` (and the paper's code), which computes both sums over the 100 most
    probable tokens only, the sums here run over the whole vocabulary (exact when one logit
    is hundreds of nats ahead). Top-nσ's sigma is the (N - 1)-normalised standard deviation
    of the row's finite z. ``min_tokens_to_keep`` is honoured by top-k, top-p, min-p,
    typical, epsilon and eta as HF does (top-h, top-nσ and p-less keep at least one token).
    The knobs are declared in ``fuq/knobs.py``; each is a number or a ``[B]`` tensor (one
    value per row of ``logits``; a row holding the knob's off-value does not use it).

    Args:
        logits: ``[..., V]`` float32 | bfloat16 | float16, any strides; ``-inf`` = masked.
        {knob_args}
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
    kn = _kt.resolve(rows.shape[0], **knobs)
    fn = _library.pick("truncate", backend, rows)
    out = fn(rows, *kn) if isinstance(kn, tuple) else _grouped(fn, kn, rows)
    return out.reshape(shape)


@_kt.with_knob_params
def sample(
    logits: Tensor,
    *,
    generator: torch.Generator | None = None,
    k: int = 0,
    base_stats: bool = False,
    backend: str = "auto",
    uniform: Tensor | None = None,
    **knobs,
) -> tuple[Tensor, LogitStats]:
    """Draw one token per row from the truncated distribution, with the step's stats, in one call.

    The knobs are those of :func:`truncate`; with all of them off this samples from
    ``softmax(logits / temperature)``. One uniform per row is drawn with
    ``torch.rand(..., dtype=float64, generator=generator)`` and the id is found by exact
    inverse-CDF sampling over the kept tokens in index order, so a seeded generator
    gives the same ids on every backend.

    Args:
        logits: ``[..., V]`` float32 | bfloat16 | float16.
        {knob_args}
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
    if type(k) is not int and (isinstance(k, bool) or not isinstance(k, int)):
        raise TypeError(f"k must be an int, got {type(k).__name__}")
    if k < 0 or k > V:
        raise ValueError(f"k must be in [0, V] = [0, {V}], got k = {k}")
    if base_stats is not False and base_stats is not True:
        raise TypeError(f"base_stats must be a bool, got {type(base_stats).__name__}")
    check_backend(backend)
    two_d = logits.dim() == 2
    lead = None if two_d and uniform is None else logits.shape[:-1]
    rows = as_rows(logits)
    B = rows.shape[0]
    kn = _kt.resolve(B, **knobs)
    u = _draw(B, generator, rows.device) if uniform is None else _check_uniform(uniform, lead, rows.device)
    fn = _library.pick("sample", backend, rows)
    if isinstance(kn, tuple):
        out = fn(rows, u, k, *kn, base_stats)
    else:
        out = _grouped(fn, kn, rows, u, args=(k,), tail=(base_stats,))
    if two_d:  # already [B, V]: skip ten reshapes (microseconds each at B = 1)
        return out[0], LogitStats(*out[1:])
    return out[0].reshape(lead), _shaped(out[1:], lead, k, True)
