"""Argument checks shared by the public ops (``fuq.ops``, ``fuq.truncate`` / ``fuq.sample``,
``fuq.partial``, ``fuq.distributed``, ``fuq.processors``): each raises a clear error naming the
argument. Cheap by design: no host sync for device tensors."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from ._library import check_cpp, check_cuda_cpp  # noqa: F401  (availability checks, with the op table)

BACKENDS = ("auto", "cpp", "triton", "cuda", "reference")
_FLOAT_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


def check_logits(logits: Tensor, name: str = "logits") -> int:
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


def check_temperature(temperature: float) -> float:
    if isinstance(temperature, Tensor):
        raise TypeError("temperature must be a Python float, not a tensor")
    t = float(temperature)
    if not math.isfinite(t) or t <= 0.0:
        raise ValueError(f"temperature must be a finite number > 0, got {temperature!r}")
    return t


def check_backend(backend: str) -> str:
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    return backend


def as_rows(logits: Tensor) -> Tensor:
    """``[..., V]`` -> ``[B, V]`` with a contiguous last dim (any row stride)."""
    if logits.dim() == 2 and logits.stride(-1) == 1:
        return logits  # already rows: skip the reshape (about a microsecond, per decode step)
    V = logits.shape[-1]
    if logits.stride(-1) != 1:
        logits = logits.contiguous()
    return logits.reshape(-1, V)


def check_tokens(tokens: Tensor, lead: torch.Size, V: int, device: torch.device) -> Tensor:
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
    # The range check reads the ids on the host: only for CPU tensors. On a CUDA (or other
    # device) tensor it would sync every call and break CUDA-graph capture, so it is skipped
    # there; the kernels then give token_logprob = NaN for an id outside [0, V).
    if not torch.compiler.is_compiling() and tokens.numel() > 0 and tokens.device.type == "cpu":
        lo, hi = (int(v) for v in torch.aminmax(tokens))
        if lo < 0 or hi >= V:
            raise ValueError(f"tokens must be in [0, {V}) (V = {V}), got values in [{lo}, {hi}]")
    return tokens.reshape(-1).to(torch.int64)


def check_float(x: Tensor, name: str, dims: tuple[int, ...]) -> None:
    if not isinstance(x, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.dtype not in _FLOAT_DTYPES:
        raise TypeError(f"{name} must be float32, bfloat16 or float16, got {x.dtype}")
    if x.dim() not in dims:
        raise ValueError(f"{name} must have {' or '.join(map(str, dims))} dims, got shape {tuple(x.shape)}")
