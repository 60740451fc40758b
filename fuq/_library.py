"""Schemas of the ``fuq`` torch ops, their fake (meta) kernels, and kernel loading.

One schema per op, defined in C++ (``TORCH_LIBRARY(fuq, m)`` in csrc/cpu/schemas.cpp, loaded
with fuq._C), so that a process without Python that links libtorch and fuq's library (an
AOTInductor package's runner, a C++ decoder) can call the ops. The same strings are written
here (``SCHEMAS``) and defined from Python only for the ops fuq._C did not define (it could
not be loaded): the reference fallback then still works. The fakes (meta kernels) are here, in
Python, either way. Device kernels register against the schemas:

* CPU  -> the C++ kernel in ``fuq._C`` (``TORCH_LIBRARY_IMPL(fuq, CPU, m)``);
          if the extension cannot be loaded, the reference, with one warning.
* CUDA -> the Triton kernel (``fuq.triton_kernels``); the CUDA C++ kernel is a
          separate op ``fuq::logit_stats_cuda`` registered by ``fuq._C_cuda``
          when that extension was built against a CUDA torch.

``token_logprob`` is ``[B]``, or ``[0]`` when ``tokens`` is None.
Ops take ``[B, V]`` logits whose last dim is contiguous; the public functions in
``fuq.ops`` validate and reshape before calling them.
"""

from __future__ import annotations

import importlib
import os
import platform
import warnings

import torch

from . import knobs as _knob_table
from . import reference

# Python's fragment of the ``fuq`` namespace: the fakes, the Triton / reference kernels and, only
# when fuq._C (which defines the schemas in C++, csrc/cpu/schemas.cpp) could not be loaded, the
# schemas themselves, from the same strings (``SCHEMAS``; tests/test_export.py holds the two equal).
LIB = torch.library.Library("fuq", "FRAGMENT")


def _load(module: str) -> tuple[object | None, str | None]:
    try:
        return importlib.import_module(module, __package__), None
    except (ImportError, OSError) as exc:  # not built, or built against another torch
        return None, f"{type(exc).__name__}: {exc}"


# fuq._C is built for a stated CPU baseline (setup.py's FUQ_MARCH, x86-64-v3 on x86-64). On a
# CPU without those instructions it would die of SIGILL at the first one, so the CPU flags are
# checked before loading it: without them the ops fall back to the reference with a warning
# saying why, and backend="cpp" raises that reason.
X86_64_V3 = ("avx", "avx2", "fma", "f16c", "bmi1", "bmi2", "movbe")
X86_64_V4 = ("avx512f", "avx512bw", "avx512cd", "avx512dq", "avx512vl")  # fuq._C_v4, when built


def _cpu_flags() -> set[str] | None:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return None


def cpu_baseline_error(flags: set[str] | None = None) -> str | None:
    """Why this CPU cannot run fuq._C's x86-64-v3 build, or None (also when it cannot tell:
    not x86-64, no /proc/cpuinfo, or ``FUQ_MARCH=native`` set for a build made on this machine)."""
    if flags is None:
        if platform.machine().lower() not in ("x86_64", "amd64") or os.environ.get("FUQ_MARCH") == "native":
            return None
        flags = _cpu_flags()
        if flags is None:
            return None
    missing = [f for f in X86_64_V3 if f not in flags]
    if not missing:
        return None
    return (
        f"this CPU lacks {', '.join(missing)}: fuq._C is built for x86-64-v3 (AVX2 + FMA + F16C); rebuild it "
        "for this machine with `FUQ_MARCH=native pip install --no-build-isolation -e .` and run with FUQ_MARCH=native"
    )


def _load_cpu() -> tuple[object | None, str | None, str | None]:
    """``(module, error, name)``: fuq._C_v4 (x86-64-v4 build) on a CPU with AVX-512 when it was
    built, else fuq._C (x86-64-v3), unless the CPU lacks even that. Only one is ever loaded (both
    register the same kernels)."""
    err = cpu_baseline_error()
    if err:
        return None, err, None
    flags = _cpu_flags() if platform.machine().lower() in ("x86_64", "amd64") else None
    if flags and all(f in flags for f in X86_64_V4) and os.environ.get("FUQ_MARCH") != "native":
        mod, _ = _load("._C_v4")
        if mod is not None:
            return mod, None, "_C_v4"
    mod, why = _load("._C")
    return mod, why, "_C" if mod is not None else None


_C, C_ERROR, CPU_BUILD = _load_cpu()
CPU_ERROR = cpu_baseline_error()
_C_CUDA, C_CUDA_ERROR = _load("._C_cuda") if torch.cuda.is_available() else (None, "torch has no CUDA")

HAS_CPP = _C is not None
HAS_CUDA_CPP = _C_CUDA is not None


SCHEMAS: dict[str, str] = {}  #: op name -> schema string, every op of the namespace
SCHEMAS_FROM: dict[str, str] = {}  #: op name -> "C++" (fuq._C) or "Python" (the fallback here)


def _define(schema: str) -> None:
    """Record ``schema``; define it from Python when fuq._C has not defined it in C++."""
    name = schema.split("(", 1)[0]
    SCHEMAS[name] = schema
    try:
        have = torch._C._dispatch_find_schema_or_throw(f"fuq::{name}", "").schema()
    except RuntimeError:
        LIB.define(schema)
        SCHEMAS_FROM[name] = "Python"
        return
    SCHEMAS_FROM[name] = "C++"
    if str(have) != str(torch._C.parse_schema(f"fuq::{schema}")):
        warnings.warn(
            f"fuq: the loaded C++ library defines fuq::{name} as `{have}`, but fuq._library expects "
            f"`fuq::{schema}` (a stale build?). Rebuild with `pip install --no-build-isolation -e .`.",
            RuntimeWarning,
            stacklevel=2,
        )


# ``alpha`` None: the density-free sums are off and ``extra`` is [0, 4]; else ``extra`` is
# [B, 4]: Σ log p over the live tokens, their number, log Σ p^alpha, log Σ √p (reference.density_free).
LOGIT_STATS_SCHEMA = (
    "logit_stats(Tensor logits, int k, Tensor? tokens, float temperature, float? alpha=None) -> "
    "(Tensor lse, Tensor entropy, Tensor varentropy, Tensor max_logprob, Tensor argmax, "
    "Tensor topk_logprobs, Tensor topk_ids, Tensor topk_mass, Tensor token_logprob, Tensor extra)"
)
_define(LOGIT_STATS_SCHEMA)
# The CUDA C++ kernel, chosen with backend="cuda"; implemented by fuq._C_cuda.
_define(LOGIT_STATS_SCHEMA.replace("logit_stats(", "logit_stats_cuda(", 1))


@torch.library.register_fake("fuq::logit_stats_cuda")
@torch.library.register_fake("fuq::logit_stats")
def _logit_stats_fake(logits, k, tokens, temperature, alpha=None):
    B = logits.shape[0]
    f = logits.new_empty((B,), dtype=torch.float32)
    i = logits.new_empty((B,), dtype=torch.int64)
    return (
        f,
        f.clone(),
        f.clone(),
        f.clone(),
        i,
        logits.new_empty((B, k), dtype=torch.float32),
        logits.new_empty((B, k), dtype=torch.int64),
        f.clone(),
        f.clone() if tokens is not None else logits.new_empty((0,), dtype=torch.float32),
        logits.new_empty((B if alpha is not None else 0, 4), dtype=torch.float32),
    )


_warned: set[str] = set()


def warn_once(key: str, message: str) -> None:
    if key not in _warned:
        _warned.add(key)
        warnings.warn(message, RuntimeWarning, stacklevel=3)


def _logit_stats_cpu_fallback(logits, k, tokens, temperature, alpha=None):
    warn_once(
        "cpp",
        f"fuq: the C++ extension fuq._C could not be loaded ({C_ERROR}); "
        "fuq.logit_stats falls back to the slow PyTorch reference on the CPU. "
        "Rebuild with `pip install --no-build-isolation -e .`.",
    )
    return reference.logit_stats_extra(logits, k, tokens, temperature, alpha)


if not HAS_CPP:
    LIB.impl("logit_stats", _logit_stats_cpu_fallback, "CPU")


def _triton(op: str):
    """The Triton kernel modules ``(logit_stats, truncate)``, or None (one warning) without Triton."""
    try:
        from .triton_kernels import logit_stats, truncate
    except ImportError as exc:
        warn_once(
            f"triton-{op}",
            f"fuq: Triton is not available ({exc}); fuq.{op} falls back to the PyTorch reference on CUDA.",
        )
        return None
    return logit_stats, truncate


def _logit_stats_cuda(logits, k, tokens, temperature, alpha=None):
    kernels = _triton("logit_stats")
    if kernels is None:
        return reference.logit_stats_extra(logits, k, tokens, temperature, alpha)
    return kernels[0].logit_stats(logits, k, tokens, temperature, alpha)


LIB.impl("logit_stats", _logit_stats_cuda, "CUDA")


# ---------------------------------------------------------------------------------------
# fuq::truncate and fuq::sample. Off-values of the knobs: top_k 0, top_p 1.0, min_p 0.0,
# typical_p 1.0, epsilon 0.0, eta 0.0, top_h 0.0, top_n_sigma -1.0, p_less False.
# ``uniform`` is float64 [B] in [0, 1) (one draw per row, from torch.rand); sample returns
# the ids then the fields of logit_stats (token_logprob always [B]), at ``temperature``, or
# at T = 1 when ``base_stats`` (the model's own distribution; the CPU kernel takes both
# temperatures from one pass over the row, the composed Triton / CUDA route with its stats call).
# The knob arguments come from the knob table (fuq/knobs.py), in its column order.
_KNOBS_SCHEMA = ", ".join(f"{kn.type.__name__} {kn.name}" for kn in _knob_table.KNOBS)
TRUNCATE_SCHEMA = f"truncate(Tensor logits, {_KNOBS_SCHEMA}) -> Tensor"
SAMPLE_SCHEMA = (
    f"sample(Tensor logits, Tensor uniform, int k, {_KNOBS_SCHEMA}, bool base_stats=False) -> "
    "(Tensor ids, Tensor lse, Tensor entropy, Tensor varentropy, Tensor max_logprob, Tensor argmax, "
    "Tensor topk_logprobs, Tensor topk_ids, Tensor topk_mass, Tensor token_logprob)"
)
_define(TRUNCATE_SCHEMA)
_define(SAMPLE_SCHEMA)
# The CUDA C++ truncation kernel, chosen with backend="cuda"; implemented by fuq._C_cuda.
_define(TRUNCATE_SCHEMA.replace("truncate(", "truncate_cuda(", 1))
# The CUDA C++ sampler (truncate + draw + stats, one launch sequence); implemented by fuq._C_cuda.
_define(SAMPLE_SCHEMA.replace("sample(", "sample_cuda(", 1))


@torch.library.register_fake("fuq::truncate_cuda")
@torch.library.register_fake("fuq::truncate")
def _truncate_fake(logits, *knobs):
    return logits.new_empty(logits.shape, dtype=torch.float32)


@torch.library.register_fake("fuq::sample_cuda")
@torch.library.register_fake("fuq::sample")
def _sample_fake(logits, uniform, k, *knobs):
    B = logits.shape[0]
    f = logits.new_empty((B,), dtype=torch.float32)
    i = logits.new_empty((B,), dtype=torch.int64)
    return (
        i,
        f,
        f.clone(),
        f.clone(),
        f.clone(),
        i.clone(),
        logits.new_empty((B, k), dtype=torch.float32),
        logits.new_empty((B, k), dtype=torch.int64),
        f.clone(),
        f.clone(),
    )


def _has_kernel(op: str, key: str) -> bool:
    return torch._C._dispatch_has_kernel_for_dispatch_key(f"fuq::{op}", key)


def _truncate_reference(logits, *knobs):
    return reference.truncate(logits, *knobs)


def _sample_reference(logits, uniform, k, *knobs):
    return reference.sample(logits, uniform, k, *knobs)


def _truncate_cpu_fallback(logits, *knobs):
    warn_once(
        "cpp-truncate",
        f"fuq: fuq._C has no CPU kernel of fuq::truncate ({C_ERROR or 'stale build'}); "
        "falling back to the slow PyTorch reference. Rebuild with `pip install --no-build-isolation -e .`.",
    )
    return reference.truncate(logits, *knobs)


def _sample_cpu_fallback(logits, uniform, k, *knobs):
    warn_once(
        "cpp-sample",
        f"fuq: fuq._C has no CPU kernel of fuq::sample ({C_ERROR or 'stale build'}); "
        "falling back to the slow PyTorch reference. Rebuild with `pip install --no-build-isolation -e .`.",
    )
    return reference.sample(logits, uniform, k, *knobs)


def _truncate_cuda(logits, *knobs):
    kernels = _triton("truncate")
    if kernels is None:
        return reference.truncate(logits, *knobs)
    return kernels[1].truncate(logits, *knobs)


def _sample_cuda(logits, uniform, k, *knobs):
    kernels = _triton("sample")
    if kernels is None:
        return reference.sample(logits, uniform, k, *knobs)
    base = bool(knobs[N_KNOBS]) if len(knobs) > N_KNOBS else False
    return sample_composed(logits, uniform, k, knobs[:N_KNOBS], kernels[1].truncate, kernels[0].logit_stats, base,
                           _triton_draw(), _triton_truncate_draw())


N_KNOBS = _knob_table.NK  # temperature ... min_tokens_to_keep, as in _KNOBS_SCHEMA


def _triton_draw():
    """The Triton draw kernel (triton_kernels/draw.py): one launch instead of the reference's
    ~30 torch ops; the same rule as ``reference.sample_from``."""
    from .triton_kernels.draw import draw

    return draw


def _triton_truncate_draw():
    """The Triton truncation with the draw folded into its last launch (split rows); the same
    ids as ``draw(truncate(...))``."""
    from .triton_kernels.truncate import truncate_draw

    return truncate_draw


def sample_composed(logits, uniform, k, knobs, truncate_fn, stats_fn, base_stats=False, draw_fn=None,
                    truncate_draw_fn=None):
    """``fuq::sample`` from a truncation kernel, a draw and a stats kernel (the Triton routes).

    The draw (``draw_fn``, default the reference's ``sample_from``) is the reference's inverse
    CDF, so the ids equal every other backend's; it is not one fused kernel (the CPU C++ kernel
    is). ``base_stats``: the stats call runs at T = 1 instead of at the sampling temperature
    (still one stats call: no second pass is added). ``truncate_draw_fn(logits, uniform, *knobs)``,
    when given, replaces ``draw_fn(truncate_fn(logits, *knobs), uniform)`` (the same ids, fewer launches).
    """
    if truncate_draw_fn is not None:
        ids = truncate_draw_fn(logits, uniform, *knobs)
    else:
        ids = (draw_fn or reference.sample_from)(truncate_fn(logits, *knobs), uniform)
    return (ids, *stats_fn(logits, k, ids, 1.0 if base_stats else knobs[0])[:9])


HAS_CPP_TRUNCATE = HAS_CPP and _has_kernel("truncate", "CPU")
HAS_CPP_SAMPLE = HAS_CPP and _has_kernel("sample", "CPU")
if not HAS_CPP_TRUNCATE:
    LIB.impl("truncate", _truncate_cpu_fallback, "CPU")
if not HAS_CPP_SAMPLE:
    LIB.impl("sample", _sample_cpu_fallback, "CPU")
LIB.impl("truncate", _truncate_cuda, "CUDA")
LIB.impl("sample", _sample_cuda, "CUDA")


# ---------------------------------------------------------------------------------------
# fuq::attention_stats. q [B, Hq, Lq, d] contiguous, k [B, Hkv, T, d] with a contiguous last
# dim, mask None or bool [B, T] / [B, Lq, T] (True = may attend), window 0 = no window.
# Returns (mass [B, Hkv, T], entropy [B, Hq, Lq], lse [B, Hq, Lq]), float32.
ATTENTION_STATS_SCHEMA = (
    "attention_stats(Tensor q, Tensor k, float scale, Tensor? mask, bool causal, int window) -> "
    "(Tensor mass, Tensor entropy, Tensor lse)"
)
_define(ATTENTION_STATS_SCHEMA)
# The CUDA C++ kernel, chosen with backend="cuda"; implemented by fuq._C_cuda.
_define(ATTENTION_STATS_SCHEMA.replace("attention_stats(", "attention_stats_cuda(", 1))


@torch.library.register_fake("fuq::attention_stats_cuda")
@torch.library.register_fake("fuq::attention_stats")
def _attention_stats_fake(q, k, scale, mask, causal, window):
    B, Hq, Lq, _ = q.shape
    f = q.new_empty((B, Hq, Lq), dtype=torch.float32)
    return q.new_empty((B, k.shape[1], k.shape[2]), dtype=torch.float32), f, f.clone()


def _attention_stats_reference(q, k, scale, mask, causal, window):
    return reference.attention_stats(q, k, scale, mask, causal, window if window > 0 else None)


def _attention_stats_cpu_fallback(q, k, scale, mask, causal, window):
    warn_once(
        "cpp-attention_stats",
        f"fuq: fuq._C has no CPU kernel of fuq::attention_stats ({C_ERROR or 'stale build'}); "
        "falling back to the slow PyTorch reference. Rebuild with `pip install --no-build-isolation -e .`.",
    )
    return _attention_stats_reference(q, k, scale, mask, causal, window)


def _attention_stats_cuda(q, k, scale, mask, causal, window):
    try:
        from .triton_kernels import attention_stats as kernels
    except ImportError as exc:
        warn_once(
            "triton-attention_stats",
            f"fuq: Triton is not available ({exc}); fuq.attention_stats falls back to the PyTorch reference on CUDA.",
        )
        return _attention_stats_reference(q, k, scale, mask, causal, window)
    return kernels.attention_stats(q, k, scale, mask, causal, window)


HAS_CPP_ATTENTION_STATS = HAS_CPP and _has_kernel("attention_stats", "CPU")
if not HAS_CPP_ATTENTION_STATS:
    LIB.impl("attention_stats", _attention_stats_cpu_fallback, "CPU")
LIB.impl("attention_stats", _attention_stats_cuda, "CUDA")


# ---------------------------------------------------------------------------------------
# fuq::hidden_stats: the fields of logit_stats for the logits hidden @ weight.T (+ bias),
# soft-capped (``softcap`` None: off) and divided by ``temperature``, computed ``chunk``
# vocabulary columns at a time so that the [N, V] logits never exist. ``hidden`` is
# ``[N, d]``, ``weight`` ``[V, d]``, ``bias`` ``[V]``, ``targets`` ``[N]`` int64.
HIDDEN_STATS_SCHEMA = (
    "hidden_stats(Tensor hidden, Tensor weight, Tensor? bias, int k, Tensor? targets, float temperature, "
    "float? softcap, int chunk) -> "
    "(Tensor lse, Tensor entropy, Tensor varentropy, Tensor max_logprob, Tensor argmax, "
    "Tensor topk_logprobs, Tensor topk_ids, Tensor topk_mass, Tensor token_logprob)"
)
_define(HIDDEN_STATS_SCHEMA)


@torch.library.register_fake("fuq::hidden_stats")
def _hidden_stats_fake(hidden, weight, bias, k, targets, temperature, softcap, chunk):
    return _logit_stats_fake(hidden.new_empty((hidden.shape[0], 0)), k, targets, temperature)[:9]


def _hidden_stats_reference(hidden, weight, bias, k, targets, temperature, softcap, chunk):
    """The reference, a block of rows at a time (it materialises ``[rows, V]``, about 2^24 logits)."""
    rows = max(1, (1 << 24) // weight.shape[0])
    parts = [
        reference.hidden_stats(
            hidden[s : s + rows], weight, bias, k, None if targets is None else targets[s : s + rows],
            temperature, softcap,
        )
        for s in range(0, hidden.shape[0], rows)
    ]
    if not parts:
        return _hidden_stats_fake(hidden, weight, bias, k, targets, temperature, softcap, chunk)
    out = [torch.cat(f) for f in zip(*parts, strict=True)]
    if targets is None:
        out[-1] = hidden.new_empty((0,), dtype=torch.float32)
    return tuple(out)


def _hidden_stats_cpu_fallback(*args):
    warn_once(
        "cpp-hidden_stats",
        f"fuq: fuq._C has no CPU kernel of fuq::hidden_stats ({C_ERROR or 'stale build'}); "
        "falling back to the PyTorch reference (row chunks of the full logits). "
        "Rebuild with `pip install --no-build-isolation -e .`.",
    )
    return _hidden_stats_reference(*args)


def _hidden_stats_cuda(hidden, weight, bias, k, targets, temperature, softcap, chunk):
    try:
        from .triton_kernels import hidden_stats as kernel
    except ImportError as exc:
        warn_once("triton-hidden_stats", f"fuq: Triton is not available ({exc}); fuq.hidden_stats uses the reference.")
        return _hidden_stats_reference(hidden, weight, bias, k, targets, temperature, softcap, chunk)
    return kernel.hidden_stats(hidden, weight, bias, k, targets, temperature, softcap)


HAS_CPP_HIDDEN_STATS = HAS_CPP and _has_kernel("hidden_stats", "CPU")
if not HAS_CPP_HIDDEN_STATS:
    LIB.impl("hidden_stats", _hidden_stats_cpu_fallback, "CPU")
LIB.impl("hidden_stats", _hidden_stats_cuda, "CUDA")


# ---------------------------------------------------------------------------------------
# One dispatch. Each op declares its implementations once, every one taking the op's schema
# arguments: ``auto`` (the registered op: the C++ kernel on the CPU, Triton on CUDA, or the
# reference fallback with a warning), ``reference``, ``cpp`` (with its availability), ``triton``
# (imported on first use) and ``cuda`` (the CUDA C++ op of fuq._C_cuda). :func:`pick` chooses.


def _hidden_stats_cuda_cpp(h, weight, bias, k, tok, t, softcap, chunk):
    """backend="cuda" for hidden_stats: no CUDA C++ kernel of its own; the logits of a block of
    rows (rows x V, about 2^24 of them) go through the CUDA C++ logit_stats."""
    N, V = h.shape[0], weight.shape[0]
    rows = max(1, (1 << 24) // V)
    parts = [
        torch.ops.fuq.logit_stats_cuda(
            reference.hidden_logits(h[s : s + rows], weight, bias, softcap), k,
            None if tok is None else tok[s : s + rows], t,
        )[:9]
        for s in range(0, N, rows)
    ]
    if not parts:
        return torch.ops.fuq.hidden_stats(h, weight, bias, k, tok, t, softcap, chunk)
    return tuple(torch.cat(f) for f in zip(*parts, strict=True))


def _triton_logit_stats():
    from .triton_kernels.logit_stats import logit_stats

    return logit_stats


def _triton_truncate():
    from .triton_kernels.truncate import truncate

    return truncate


def _triton_sample():
    from .triton_kernels.logit_stats import logit_stats
    from .triton_kernels.truncate import truncate

    draw = _triton_draw()
    truncate_draw = _triton_truncate_draw()

    def sample(logits, uniform, k, *knobs):
        base = bool(knobs[N_KNOBS]) if len(knobs) > N_KNOBS else False
        return sample_composed(logits, uniform, k, knobs[:N_KNOBS], truncate, logit_stats, base, draw, truncate_draw)

    return sample


def _triton_attention_stats():
    from .triton_kernels.attention_stats import attention_stats

    return attention_stats


def _triton_hidden_stats():
    from .triton_kernels.hidden_stats import hidden_stats

    return lambda h, w, b, k, tok, t, softcap, chunk: hidden_stats(h, w, b, k, tok, t, softcap)


class Impls:
    """The implementations of one op (see the comment above :func:`pick`)."""

    __slots__ = ("name", "auto", "reference", "cpp", "cpp_available", "triton", "cuda", "_triton")

    def __init__(self, name, auto, reference, cpp_available, triton, cuda):
        self.name = name
        self.auto = auto
        self.reference = reference
        self.cpp = auto  # the registered op runs the C++ kernel on a CPU tensor
        self.cpp_available = cpp_available
        self._triton = triton
        self.triton = None
        self.cuda = cuda


OPS: dict[str, Impls] = {
    "logit_stats": Impls("logit_stats", torch.ops.fuq.logit_stats.default, reference.logit_stats_extra, HAS_CPP,
                         _triton_logit_stats, torch.ops.fuq.logit_stats_cuda),
    "truncate": Impls("truncate", torch.ops.fuq.truncate.default, reference.truncate, HAS_CPP_TRUNCATE,
                      _triton_truncate, torch.ops.fuq.truncate_cuda),
    "sample": Impls("sample", torch.ops.fuq.sample.default, lambda *a: reference.sample(*a[:-1], base_stats=a[-1]),
                    HAS_CPP_SAMPLE, _triton_sample, torch.ops.fuq.sample_cuda),
    "attention_stats": Impls("attention_stats", torch.ops.fuq.attention_stats.default, _attention_stats_reference,
                             HAS_CPP_ATTENTION_STATS, _triton_attention_stats, torch.ops.fuq.attention_stats_cuda),
    "hidden_stats": Impls("hidden_stats", torch.ops.fuq.hidden_stats.default, _hidden_stats_reference,
                          HAS_CPP_HIDDEN_STATS, _triton_hidden_stats, _hidden_stats_cuda_cpp),
}


def check_cpp(rows: torch.Tensor, op: str, available: bool) -> None:
    """backend="cpp": a CPU tensor and a fuq._C that holds the op's kernel, or a clear error."""
    if rows.device.type != "cpu":
        raise ValueError(f"backend='cpp' needs a CPU tensor, logits is on {rows.device}")
    if not available:
        raise RuntimeError(f"backend='cpp' asked for, but fuq._C has no fuq::{op} kernel ({C_ERROR})")


def check_cuda_cpp(rows: torch.Tensor) -> None:
    """backend="cuda": a CUDA tensor and a loaded fuq._C_cuda, or a clear error."""
    if rows.device.type != "cuda":
        raise ValueError(f"backend='cuda' needs a CUDA tensor, logits is on {rows.device}")
    if not HAS_CUDA_CPP:
        raise RuntimeError(f"backend='cuda' asked for, but fuq._C_cuda could not be loaded: {C_CUDA_ERROR}")


def pick(op: str, backend: str, x: torch.Tensor):
    """The implementation of ``op`` for ``backend`` and the input ``x`` (its device), with a clear
    error when that backend cannot run it here (``cpp`` off the CPU or not built, ``cuda`` without
    fuq._C_cuda). ``auto`` is the registered op (dispatched by device, with its fallbacks)."""
    impl = OPS[op]
    if backend == "auto":
        return impl.auto
    if backend == "reference":
        return impl.reference
    if backend == "cpp":
        check_cpp(x, op, impl.cpp_available)
        return impl.cpp
    if backend == "triton":
        if impl.triton is None:
            impl.triton = impl._triton()
        return impl.triton
    check_cuda_cpp(x)  # backend == "cuda"
    return impl.cuda

