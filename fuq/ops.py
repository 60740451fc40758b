"""fuq's public ops. Arguments are validated here, once; kernels trust them."""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import Tensor

from . import _library, _validate

__all__ = [
    "LogitStats",
    "LogitStatsExtra",
    "logit_stats",
    "hidden_stats",
    "AttentionStats",
    "attention_stats",
    "BACKENDS",
]

from ._validate import _FLOAT_DTYPES, BACKENDS  # noqa: F401

# The old private names, still imported from here by callers outside the package.
_as_rows = _validate.as_rows
_check_backend = _validate.check_backend
_check_cpp = _validate.check_cpp
_check_cuda_cpp = _validate.check_cuda_cpp
_check_float = _validate.check_float
_check_logits = _validate.check_logits
_check_temperature = _validate.check_temperature
_check_tokens = _validate.check_tokens


class LogitStats(NamedTuple):
    """The uncertainty picture of one decoding step, per row (nats).

    Shapes are ``[...]`` (the leading dims of the logits) unless said.
    """

    lse: Tensor  #: float32, log Σ exp(z), z = logits / temperature
    entropy: Tensor  #: float32, H = -Σ p log p
    varentropy: Tensor  #: float32, Var[-log p] = Σ p log² p - H²
    max_logprob: Tensor  #: float32, max log p
    argmax: Tensor  #: int64, first index of the max
    topk_logprobs: Tensor  #: float32 [..., k], descending
    topk_ids: Tensor  #: int64 [..., k]
    topk_mass: Tensor  #: float32, Σ of the top-k probabilities
    token_logprob: Tensor | None  #: float32 log p of ``tokens``, or None


class LogitStatsExtra(NamedTuple):
    """:class:`LogitStats` plus the density-free sums of the same pass (``logit_stats(..., extra=True)``).

    The four extra fields are NaN on a row whose entropy is NaN (a NaN or +inf entry, or no live token).
    """

    lse: Tensor
    entropy: Tensor
    varentropy: Tensor
    max_logprob: Tensor
    argmax: Tensor
    topk_logprobs: Tensor
    topk_ids: Tensor
    topk_mass: Tensor
    token_logprob: Tensor | None
    sum_logp: Tensor  #: float32, Σ log p over the live tokens (SelfCertainty)
    n_live: Tensor  #: float32, the number of live tokens (z > -inf)
    log_sum_p_alpha: Tensor  #: float32, log Σ p^alpha (RenyiNeg)
    log_sum_sqrt_p: Tensor  #: float32, log Σ √p (FisherRao)


def _shaped(out, lead: torch.Size, k: int, has_tokens: bool) -> LogitStats:
    """The ``[B]`` / ``[B, k]`` kernel outputs (nine, or ten with ``extra`` ``[B, 4]``) as a
    :class:`LogitStats` with leading dims ``lead``."""
    lse, ent, var, mx, am, tkl, tki, tkm, tl = out[:9]
    cls = LogitStatsExtra if len(out) > 9 else LogitStats
    return cls(
        lse.reshape(lead),
        ent.reshape(lead),
        var.reshape(lead),
        mx.reshape(lead),
        am.reshape(lead),
        tkl.reshape(*lead, k),
        tki.reshape(*lead, k),
        tkm.reshape(lead),
        tl.reshape(lead) if has_tokens else None,
        *_extra_fields(out, lead),
    )


def _extra_fields(out, lead) -> tuple:
    """The four density-free fields from the op's ``extra`` output ``[B, 4]``; () without it."""
    if len(out) < 10:
        return ()
    return tuple(c.reshape(lead) for c in out[9].unbind(-1))


def _dispatch_logit_stats(rows: Tensor, k: int, tok: Tensor | None, t: float, backend: str, alpha=None):
    """The op's ten outputs; ``alpha`` None leaves the density-free sums off (``extra`` ``[0, 4]``)."""
    fn = _library.pick("logit_stats", backend, rows)
    if alpha is None:  # the default call passes the op's four arguments only
        return fn(rows, k, tok, t)
    return fn(rows, k, tok, t, alpha)


def logit_stats(
    logits: Tensor,
    k: int = 0,
    tokens: Tensor | None = None,
    temperature: float = 1.0,
    backend: str = "auto",
    extra: bool = False,
    alpha: float = 0.5,
) -> LogitStats | LogitStatsExtra:
    """Everything a decoder wants to know about one step, from one pass over the logits.

    Args:
        logits: ``[..., V]`` float32 | bfloat16 | float16, any strides. Entries at
            ``-inf`` are masked tokens.
        k: how many top tokens to return, ``0 <= k <= V``.
        tokens: ``[...]`` integer ids in ``[0, V)`` whose log-probability is wanted
            (the sampled or target token), or None. An id outside ``[0, V)`` raises
            ``ValueError`` on a CPU tensor; on a CUDA tensor it is not checked (the check
            would sync the host and break CUDA-graph capture) and gives
            ``token_logprob = NaN`` for that row.
        temperature: finite, > 0; the stats are those of ``softmax(logits / T)``.
        backend: ``"auto"`` (C++ on CPU, Triton on CUDA), ``"cpp"``, ``"triton"``,
            ``"cuda"`` or ``"reference"``.
        extra: also return the density-free sums of the same pass (``sum_logp``,
            ``n_live``, ``log_sum_p_alpha``, ``log_sum_sqrt_p``): SelfCertainty is
            ``-sum_logp / n_live - log n_live``, RenyiNeg ``(log_sum_p_alpha + (alpha - 1)
            log V) / (alpha - 1)``, FisherRao ``(2 / π) acos(exp(log_sum_sqrt_p) / √V)``.
            The result is then a :class:`LogitStatsExtra` (a :class:`LogitStats` with those
            four fields more); off (the default), a plain :class:`LogitStats`, at no cost.
        alpha: the Rényi order of ``log_sum_p_alpha``, finite and > 0 (used with ``extra``).

    Returns:
        :class:`LogitStats` (float32 stats in nats, int64 ids). A row that is all
        ``-inf`` gives ``lse = -inf`` and NaN entropy, varentropy and log-probs; a
        row holding NaN gives NaN ``lse``; other rows are unaffected.

    Example:
        >>> import torch, fuq
        >>> s = fuq.logit_stats(torch.tensor([[2.0, 1.0, 0.0]]), k=2)
        >>> s.topk_ids.tolist(), round(s.entropy.item(), 4)
        ([[0, 1]], 0.8324)
    """
    V = _check_logits(logits)
    if isinstance(k, bool) or not isinstance(k, int):
        raise TypeError(f"k must be an int, got {type(k).__name__}")
    if k < 0 or k > V:
        raise ValueError(f"k must be in [0, V] = [0, {V}], got k = {k}")
    t = _check_temperature(temperature)
    _check_backend(backend)
    lead = logits.shape[:-1]
    tok = None if tokens is None else _check_tokens(tokens, lead, V, logits.device)
    a = _check_alpha(alpha) if extra else None
    rows = _as_rows(logits)
    out = _dispatch_logit_stats(rows, k, tok, t, backend, a)
    if logits.dim() == 2:  # already [B, ...]: skip nine reshapes (~3 µs each, the cost of the door at B = 1)
        lse, ent, var, mx, am, tkl, tki, tkm, tl = out[:9]
        if extra:
            tlp = None if tokens is None else tl
            return LogitStatsExtra(lse, ent, var, mx, am, tkl, tki, tkm, tlp, *out[9].unbind(-1))
        return LogitStats(lse, ent, var, mx, am, tkl, tki, tkm, None if tokens is None else tl)
    return _shaped(out if extra else out[:9], lead, k, tokens is not None)


def _check_alpha(alpha: float) -> float:
    if isinstance(alpha, (bool, Tensor)) or not isinstance(alpha, (int, float)):
        raise TypeError(f"alpha must be a Python float, got {type(alpha).__name__}")
    a = float(alpha)
    if not math.isfinite(a) or a <= 0.0:
        raise ValueError(f"alpha must be a finite number > 0, got {alpha!r}")
    return a


# ---------------------------------------------------------------------------------------------
# hidden_stats: LogitStats of hidden @ weight.T without holding [T, V]


# The logits buffer of the CPU kernel when ``chunk`` is None: about this many float32 (32 MiB).
_HIDDEN_BUFFER_FLOATS = 1 << 23
_HIDDEN_MAX_ROWS = 4096  # rows per block of the CPU kernel (csrc/cpu/hidden_stats.cpp: kMaxRows)


def _hidden_chunk(N: int, V: int) -> int:
    """The default vocabulary chunk: ``rows x chunk`` logits fit the buffer; a multiple of 64, >= 256."""
    rows = max(1, min(N, _HIDDEN_MAX_ROWS))
    c = max(256, (_HIDDEN_BUFFER_FLOATS // rows) // 64 * 64)
    return min(V, c)


def _dispatch_hidden_stats(h, weight, bias, k, tok, t, softcap, chunk, backend):
    c = _hidden_chunk(h.shape[0], weight.shape[0]) if chunk is None else min(chunk, weight.shape[0])
    return _library.pick("hidden_stats", backend, h)(h, weight, bias, k, tok, t, softcap, c)


def hidden_stats(
    hidden: Tensor,
    weight: Tensor,
    bias: Tensor | None = None,
    *,
    k: int = 0,
    targets: Tensor | None = None,
    temperature: float = 1.0,
    softcap: float | None = None,
    chunk: int | None = None,
    backend: str = "auto",
) -> LogitStats:
    """:func:`logit_stats` of ``hidden @ weight.T (+ bias)`` without materialising ``[N, V]``.

    Args:
        hidden: ``[..., d]`` float32 | bfloat16 | float16 (the model's last hidden states).
        weight: ``[V, d]`` (the output embedding / LM head), same device.
        bias: ``[V]`` or None.
        k: top tokens per position, ``0 <= k <= V``.
        targets: ``[...]`` ids whose log-probability is wanted (teacher forcing), or None.
        temperature: finite, > 0, applied after the soft-capping.
        softcap: Gemma's final logit soft-capping ``cap · tanh(z / cap)``, or None.
        chunk: how many vocabulary entries (columns of the logits) exist at once. The CPU
            kernel's only logits are a float32 ``[min(N, 4096), chunk]`` buffer (None: about
            32 MiB of it); the Triton kernel keeps its tiles in registers and ignores it.
        backend: ``"auto"`` (C++ on CPU, Triton on CUDA), ``"cpp"``, ``"triton"``,
            ``"reference"`` (row blocks of full logits, about 2^24 at once) or ``"cuda"``
            (no kernel of its own: row blocks of logits through the CUDA C++ ``logit_stats``).

    The logits are ``z = softcap · tanh((hidden @ weight.T + bias) / softcap) / temperature``,
    multiplied in float32 (bfloat16 / float16 inputs are widened), the statistics
    accumulated in float32 as in :func:`logit_stats`. No backward.

    Returns:
        :class:`LogitStats` with leading dims ``[...]`` (those of ``hidden``).

    Example:
        >>> import torch, fuq
        >>> h, W = torch.randn(5, 16), torch.randn(100, 16)
        >>> s = fuq.hidden_stats(h, W, k=3, targets=torch.zeros(5, dtype=torch.long))
        >>> s.entropy.shape, s.topk_ids.shape
        (torch.Size([5]), torch.Size([5, 3]))
    """
    _check_float(hidden, "hidden", tuple(range(1, 9)))
    _check_float(weight, "weight", (2,))
    d = hidden.shape[-1]
    V = weight.shape[0]
    if weight.shape[1] != d:
        raise ValueError(f"weight must be [V, d] with d = {d} (hidden's last dim), got {tuple(weight.shape)}")
    if V == 0:
        raise ValueError("weight has an empty vocabulary (V = 0)")
    if weight.device != hidden.device:
        raise ValueError(f"weight is on {weight.device} but hidden is on {hidden.device}")
    if bias is not None:
        _check_float(bias, "bias", (1,))
        if bias.shape[0] != V or bias.device != hidden.device:
            raise ValueError(f"bias must be [V] = [{V}] on {hidden.device}, got {tuple(bias.shape)} on {bias.device}")
    if isinstance(k, bool) or not isinstance(k, int):
        raise TypeError(f"k must be an int, got {type(k).__name__}")
    if k < 0 or k > V:
        raise ValueError(f"k must be in [0, V] = [0, {V}], got k = {k}")
    t = _check_temperature(temperature)
    if softcap is not None:
        softcap = float(softcap)
        if not math.isfinite(softcap) or softcap <= 0.0:
            raise ValueError(f"softcap must be None or a finite number > 0, got {softcap!r}")
    if chunk is not None and (isinstance(chunk, bool) or not isinstance(chunk, int) or chunk < 1):
        raise ValueError(f"chunk must be None or an int >= 1, got {chunk!r}")
    _check_backend(backend)
    lead = hidden.shape[:-1]
    tok = None if targets is None else _check_tokens(targets, lead, V, hidden.device)
    h = hidden.reshape(-1, d)
    out = _dispatch_hidden_stats(h, weight, bias, k, tok, t, softcap, chunk, backend)
    return _shaped(out, lead, k, targets is not None)


# ---------------------------------------------------------------------------------------------
# attention_stats: per-key attention mass, per-row entropy and lse


class AttentionStats(NamedTuple):
    """Attention statistics of one step (nats)."""

    mass: Tensor  #: float32 [B, Hkv, T]: attention summed over query rows and the GQA group
    entropy: Tensor  #: float32 [B, Hq, Lq]: attention entropy of each query row
    lse: Tensor  #: float32 [B, Hq, Lq]: log Σ exp(scale · q·k) over the allowed keys


def attention_stats(
    q: Tensor,
    k: Tensor,
    *,
    scale: float | None = None,
    mask: Tensor | None = None,
    causal: bool = True,
    window: int | None = None,
    backend: str = "auto",
) -> AttentionStats:
    """Per-key attention mass and per-row attention entropy, from one online softmax over K.

    Args:
        q: ``[B, Hq, Lq, d]`` float32 | bfloat16 | float16 (the last ``Lq`` query positions).
        k: ``[B, Hkv, T, d]``, ``Hq % Hkv == 0`` (GQA: query head ``h`` reads key head
            ``h // (Hq // Hkv)``).
        scale: softmax scale, default ``1 / sqrt(d)``.
        mask: bool ``[B, T]`` or ``[B, Lq, T]``, True where a key may be attended, or None.
        causal: query row ``i`` (position ``T - Lq + i``) sees keys ``j <= T - Lq + i``.
        window: sliding window: also ``j > T - Lq + i - window``; None for no window.
        backend: as in :func:`logit_stats`.

    Returns:
        :class:`AttentionStats`; see :func:`fuq.reference.attention_stats` for the maths.
        A row with no allowed key has ``lse = -inf``, NaN entropy and adds no mass; a row
        with a NaN / ``+inf`` score has NaN ``lse`` and entropy and NaN mass on the keys it
        may attend.

    The kernels (C++ on CPU tensors, Triton on CUDA tensors, CUDA C++ with ``backend="cuda"``)
    run one online softmax over tiles of K per query row, then sum ``exp(s - lse)`` per key:
    the mass needs each row's final lse, so the scores are kept (one pass over K; decoding,
    where ``G = Hq / Hkv * Lq`` floats per key are fewer bytes than the key) or recomputed
    (a second pass over K when many query rows make the scores larger than K).

    Example:
        >>> import torch, fuq
        >>> a = fuq.attention_stats(torch.randn(1, 4, 2, 8), torch.randn(1, 2, 10, 8))
        >>> a.mass.shape, a.entropy.shape
        (torch.Size([1, 2, 10]), torch.Size([1, 4, 2]))
    """
    _check_float(q, "q", (4,))
    _check_float(k, "k", (4,))
    B, Hq, Lq, d = q.shape
    if k.shape[0] != B or k.shape[3] != d:
        raise ValueError(f"k must be [B, Hkv, T, d] = [{B}, Hkv, T, {d}], got {tuple(k.shape)}")
    Hkv, T = k.shape[1], k.shape[2]
    if Hkv == 0 or Hq % Hkv != 0:
        raise ValueError(f"q's heads (Hq = {Hq}) must be a multiple of k's heads (Hkv = {Hkv})")
    if k.device != q.device:
        raise ValueError(f"k is on {k.device} but q is on {q.device}")
    if T < Lq and causal:
        raise ValueError(f"causal attention needs T >= Lq (the queries are the last Lq positions), got T={T}, Lq={Lq}")
    if scale is None:
        scale = 1.0 / math.sqrt(d) if d > 0 else 1.0
    scale = float(scale)
    if not math.isfinite(scale) or scale <= 0:
        raise ValueError(f"scale must be a finite number > 0, got {scale!r}")
    if window is not None and (isinstance(window, bool) or not isinstance(window, int) or window < 1):
        raise ValueError(f"window must be None or an int >= 1, got {window!r}")
    if mask is not None:
        if not isinstance(mask, Tensor) or mask.dtype != torch.bool:
            raise TypeError("mask must be a bool tensor (True = may attend)")
        if tuple(mask.shape) not in ((B, T), (B, Lq, T)):
            raise ValueError(f"mask must be [B, T] = [{B}, {T}] or [B, Lq, T], got {tuple(mask.shape)}")
        if mask.device != q.device:
            raise ValueError(f"mask is on {mask.device} but q is on {q.device}")
    _check_backend(backend)
    q = q.contiguous()
    if k.stride(3) != 1:
        k = k.contiguous()
    return AttentionStats(*_dispatch_attention_stats(q, k, scale, mask, causal, window or 0, backend))


def _dispatch_attention_stats(q: Tensor, k: Tensor, scale: float, mask, causal: bool, window: int, backend: str):
    return _library.pick("attention_stats", backend, q)(q, k, scale, mask, causal, window)