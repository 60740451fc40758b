"""``fuq.truncate`` and ``fuq.sample``: the Hugging Face sampling warpers, fused and sort-free.

The public functions validate their knobs once, here, and call one op
(``fuq::truncate`` / ``fuq::sample``) whose kernels trust them. The semantics are
those of :func:`fuq.reference.truncate` (the spec); see its docstring and the
helpers above it for each knob.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from . import _library, reference
from .ops import (
    LogitStats,
    _as_rows,
    _check_backend,
    _check_cpp,
    _check_cuda_cpp,
    _check_logits,
    _check_temperature,
    _shaped,
)

__all__ = ["truncate", "sample"]


def _is_int(x) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _prob_knob(name: str, value, lo_open: bool, off: float) -> float:
    """A probability-like knob in (0, 1] (``lo_open``) or [0, 1]; None -> its off-value."""
    if value is None:
        return off
    if isinstance(value, Tensor) or isinstance(value, bool):
        raise TypeError(f"{name} must be a Python float, got {type(value).__name__}")
    v = float(value)
    ok = (0.0 < v <= 1.0) if lo_open else (0.0 <= v <= 1.0)
    if not ok:
        interval = "(0, 1]" if lo_open else "[0, 1]"
        raise ValueError(f"{name} must be in {interval}, got {name} = {value!r}")
    return v


def _nonneg_knob(name: str, value, off: float) -> float:
    if value is None:
        return off
    if isinstance(value, Tensor) or isinstance(value, bool):
        raise TypeError(f"{name} must be a Python float, got {type(value).__name__}")
    v = float(value)
    if not math.isfinite(v) or v < 0.0:
        raise ValueError(f"{name} must be a finite number >= 0, got {name} = {value!r}")
    return v


def _knobs(
    temperature, top_k, top_p, min_p, typical_p, epsilon, eta, top_h, top_n_sigma, p_less, min_tokens_to_keep
) -> tuple:
    """Validated knobs as the op's arguments, with the off-values of the schema."""
    t = _check_temperature(temperature)
    if top_k is None:
        k = 0
    elif not _is_int(top_k):
        raise TypeError(f"top_k must be an int, got {type(top_k).__name__}")
    elif top_k < 0:
        raise ValueError(f"top_k must be >= 0 (0 is off), got top_k = {top_k}")
    else:
        k = int(top_k)
    if not _is_int(min_tokens_to_keep):
        raise TypeError(f"min_tokens_to_keep must be an int, got {type(min_tokens_to_keep).__name__}")
    if min_tokens_to_keep < 1:
        raise ValueError(f"min_tokens_to_keep must be >= 1, got min_tokens_to_keep = {min_tokens_to_keep}")
    if not isinstance(p_less, bool):
        raise TypeError(f"p_less must be a bool, got {type(p_less).__name__}")
    eps = _nonneg_knob("epsilon", epsilon, 0.0)
    et = _nonneg_knob("eta", eta, 0.0)
    return (
        t,
        k,
        _prob_knob("top_p", top_p, True, 1.0),
        _prob_knob("min_p", min_p, False, 0.0),
        _prob_knob("typical_p", typical_p, True, 1.0),
        eps,
        et,
        _prob_knob("top_h", top_h, True, 0.0),
        _nonneg_knob("top_n_sigma", top_n_sigma, -1.0),
        p_less,
        int(min_tokens_to_keep),
    )


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
    _check_logits(logits)
    knobs = _knobs(
        temperature, top_k, top_p, min_p, typical_p, epsilon, eta, top_h, top_n_sigma, p_less, min_tokens_to_keep
    )
    _check_backend(backend)
    shape = logits.shape
    rows = _as_rows(logits)
    if backend == "auto":
        out = torch.ops.fuq.truncate(rows, *knobs)
    elif backend == "reference":
        out = reference.truncate(rows, *knobs)
    elif backend == "cpp":
        _check_cpp(rows, "truncate", _library.HAS_CPP_TRUNCATE)
        out = torch.ops.fuq.truncate(rows, *knobs)
    elif backend == "triton":
        from .triton_kernels.truncate import truncate as triton_truncate

        out = triton_truncate(rows, *knobs)
    else:
        _check_cuda_cpp(rows)
        out = torch.ops.fuq.truncate_cuda(rows, *knobs)
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
    V = _check_logits(logits)
    if isinstance(k, bool) or not isinstance(k, int):
        raise TypeError(f"k must be an int, got {type(k).__name__}")
    if k < 0 or k > V:
        raise ValueError(f"k must be in [0, V] = [0, {V}], got k = {k}")
    if not isinstance(base_stats, bool):
        raise TypeError(f"base_stats must be a bool, got {type(base_stats).__name__}")
    knobs = _knobs(
        temperature, top_k, top_p, min_p, typical_p, epsilon, eta, top_h, top_n_sigma, p_less, min_tokens_to_keep
    )
    _check_backend(backend)
    lead = logits.shape[:-1]
    rows = _as_rows(logits)
    B = rows.shape[0]
    if uniform is None:
        gdev = generator.device if generator is not None else rows.device
        u = torch.rand((B,), dtype=torch.float64, generator=generator, device=gdev).to(rows.device)
    else:
        u = _check_uniform(uniform, lead, rows.device)
    if backend == "auto":
        out = torch.ops.fuq.sample(rows, u, k, *knobs, base_stats)
    elif backend == "reference":
        out = reference.sample(rows, u, k, *knobs, base_stats=base_stats)
    elif backend == "cpp":
        _check_cpp(rows, "sample", _library.HAS_CPP_SAMPLE)
        out = torch.ops.fuq.sample(rows, u, k, *knobs, base_stats)
    elif backend == "triton":
        from .triton_kernels.logit_stats import logit_stats as triton_logit_stats
        from .triton_kernels.truncate import truncate as triton_truncate

        out = _library.sample_composed(rows, u, k, knobs, triton_truncate, triton_logit_stats, base_stats)
    else:
        _check_cuda_cpp(rows)
        # truncate + draw + stats in one launch sequence, no host round trip
        out = torch.ops.fuq.sample_cuda(rows, u, k, *knobs, base_stats)
    return out[0].reshape(lead), _shaped(out[1:], lead, k, True)
