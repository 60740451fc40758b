"""fuq's public ops. Arguments are validated here, once; kernels trust them."""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import Tensor

from . import _library, reference

__all__ = ["LogitStats", "logit_stats", "BACKENDS"]

BACKENDS = ("auto", "cpp", "triton", "cuda", "reference")
_FLOAT_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


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


def _check_logits(logits: Tensor, name: str = "logits") -> int:
    if not isinstance(logits, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(logits).__name__}")
    if logits.dtype not in _FLOAT_DTYPES:
        raise TypeError(f"{name} must be float32, bfloat16 or float16, got {logits.dtype}")
    if logits.dim() == 0:
        raise ValueError(f"{name} must have shape [..., V], got a 0-d tensor")
    V = logits.shape[-1]
    if V == 0:
        raise ValueError(f"{name} has an empty vocabulary (V = 0), shape {tuple(logits.shape)}")
    return V


def _check_temperature(temperature: float) -> float:
    if isinstance(temperature, Tensor):
        raise TypeError("temperature must be a Python float, not a tensor")
    t = float(temperature)
    if not math.isfinite(t) or t <= 0.0:
        raise ValueError(f"temperature must be a finite number > 0, got {temperature!r}")
    return t


def _check_backend(backend: str) -> str:
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    return backend


def _as_rows(logits: Tensor) -> Tensor:
    """``[..., V]`` -> ``[B, V]`` with a contiguous last dim (any row stride)."""
    V = logits.shape[-1]
    if logits.stride(-1) != 1:
        logits = logits.contiguous()
    return logits.reshape(-1, V)


def _check_tokens(tokens: Tensor, lead: torch.Size, V: int, device: torch.device) -> Tensor:
    if not isinstance(tokens, Tensor):
        raise TypeError(f"tokens must be a torch.Tensor of ids, got {type(tokens).__name__}")
    if tokens.dtype.is_floating_point or tokens.dtype.is_complex or tokens.dtype == torch.bool:
        raise TypeError(f"tokens must be an integer tensor, got {tokens.dtype}")
    if tuple(tokens.shape) != tuple(lead):
        raise ValueError(
            f"tokens must have shape {tuple(lead)} (the leading dims of logits), got {tuple(tokens.shape)}"
        )
    if tokens.device != device:
        raise ValueError(f"tokens is on {tokens.device} but logits is on {device}")
    if not torch.compiler.is_compiling() and tokens.numel() > 0:
        lo, hi = (int(v) for v in torch.aminmax(tokens))
        if lo < 0 or hi >= V:
            raise ValueError(f"tokens must be in [0, {V}) (V = {V}), got values in [{lo}, {hi}]")
    return tokens.reshape(-1).to(torch.int64)


def _check_cpp(rows: Tensor, op: str, available: bool) -> None:
    """backend="cpp": a CPU tensor and a fuq._C that holds the op's kernel, or a clear error."""
    if rows.device.type != "cpu":
        raise ValueError(f"backend='cpp' needs a CPU tensor, logits is on {rows.device}")
    if not available:
        raise RuntimeError(f"backend='cpp' asked for, but fuq._C has no fuq::{op} kernel ({_library.C_ERROR})")


def _check_cuda_cpp(rows: Tensor) -> None:
    """backend="cuda": a CUDA tensor and a loaded fuq._C_cuda, or a clear error."""
    if rows.device.type != "cuda":
        raise ValueError(f"backend='cuda' needs a CUDA tensor, logits is on {rows.device}")
    if not _library.HAS_CUDA_CPP:
        raise RuntimeError(f"backend='cuda' asked for, but fuq._C_cuda could not be loaded: {_library.C_CUDA_ERROR}")


def _dispatch_logit_stats(rows: Tensor, k: int, tok: Tensor | None, t: float, backend: str):
    if backend == "auto":
        return torch.ops.fuq.logit_stats(rows, k, tok, t)
    if backend == "reference":
        return reference.logit_stats(rows, k, tok, t)
    if backend == "cpp":
        _check_cpp(rows, "logit_stats", _library.HAS_CPP)
        return torch.ops.fuq.logit_stats(rows, k, tok, t)
    if backend == "triton":
        from .triton_kernels.logit_stats import logit_stats as triton_logit_stats

        return triton_logit_stats(rows, k, tok, t)
    _check_cuda_cpp(rows)  # backend == "cuda"
    return torch.ops.fuq.logit_stats_cuda(rows, k, tok, t)


def logit_stats(
    logits: Tensor,
    k: int = 0,
    tokens: Tensor | None = None,
    temperature: float = 1.0,
    backend: str = "auto",
) -> LogitStats:
    """Everything a decoder wants to know about one step, from one pass over the logits.

    Args:
        logits: ``[..., V]`` float32 | bfloat16 | float16, any strides. Entries at
            ``-inf`` are masked tokens.
        k: how many top tokens to return, ``0 <= k <= V``.
        tokens: ``[...]`` integer ids in ``[0, V)`` whose log-probability is wanted
            (the sampled or target token), or None.
        temperature: finite, > 0; the stats are those of ``softmax(logits / T)``.
        backend: ``"auto"`` (C++ on CPU, Triton on CUDA), ``"cpp"``, ``"triton"``,
            ``"cuda"`` or ``"reference"``.

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
    rows = _as_rows(logits)
    out = _dispatch_logit_stats(rows, k, tok, t, backend)
    lse, ent, var, mx, am, tkl, tki, tkm, tl = out
    if logits.dim() == 2:  # already [B, ...]: skip nine reshapes (~3 µs each, the cost of the door at B = 1)
        return LogitStats(lse, ent, var, mx, am, tkl, tki, tkm, None if tokens is None else tl)
    return LogitStats(
        lse.reshape(lead),
        ent.reshape(lead),
        var.reshape(lead),
        mx.reshape(lead),
        am.reshape(lead),
        tkl.reshape(*lead, k),
        tki.reshape(*lead, k),
        tkm.reshape(lead),
        None if tokens is None else tl.reshape(lead),
    )
