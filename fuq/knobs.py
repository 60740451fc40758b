"""The sampling knobs of ``fuq.truncate`` / ``fuq.sample``, declared once.

Each :class:`Knob` says its name, type, public default, the value that means "off" (what a
kernel receives for a knob that is not set), how it is checked, its Hugging Face
``GenerationConfig`` field, its CLI flag and one line of docs. The order of :data:`KNOBS` is
the order of the packed columns (and of the ops' knob arguments). Everything else that lists
knobs derives from this table: the validation (:func:`check`, :func:`resolve`), the packed
``[1|B, NK]`` float64 tensor and its active bitmask (:func:`pack`), ``fuq.generate``'s
``SAMPLE_KNOBS``, ``fuq.hf.sampling_knobs``, ``fuq.distributed``'s scalar knobs, the tests'
builders, and ``csrc/include/fuq/knobs.h`` (``python -m fuq.knobs --header``).

Each knob is a Python number or a ``[B]`` tensor, one value per row (as FlashInfer's sampling
ops take them). In a tensor, a row holding the knob's off-value does not use the knob.
"""

from __future__ import annotations

import inspect
import math
import sys
import textwrap
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

__all__ = ["Knob", "KNOBS", "NAMES", "NK", "INDEX", "FUQ_ONLY", "check", "resolve", "pack", "header",
           "with_knob_params", "knob_params", "check_names"]


@dataclass(frozen=True)
class Knob:
    name: str
    type: type  #: float, int or bool (all travel as float64 in the packed tensor)
    default: Any  #: the public default (None: off unless given)
    off: float  #: the value that means off (what the kernels receive when the knob is not set)
    check: str  #: "positive" (finite > 0), "count" (int >= 0), "at_least_one" (int >= 1),
    #: "prob_open" (0, 1], "prob" [0, 1], "nonneg" (finite >= 0), "bool"
    hf: str | None  #: the GenerationConfig field, or None
    cli: str | None  #: the ``fuq generate`` flag, or None
    doc: str
    #: when Hugging Face's ``generate`` builds this knob's warper, given the (non-None) field value
    hf_on: Callable[[Any], bool] | None = None

    @property
    def bit(self) -> int:
        return 1 << INDEX[self.name]


KNOBS: tuple[Knob, ...] = (
    Knob("temperature", float, 1.0, 1.0, "positive", "temperature", "--temperature",
         "divide the logits by this before every other knob; finite, > 0", lambda v: v != 1.0),
    Knob("top_k", int, None, 0.0, "count", "top_k", "--top-k",
         "keep the k most probable tokens (and ties with the k-th); 0 is off", lambda v: v != 0),
    Knob("top_p", float, None, 1.0, "prob_open", "top_p", "--top-p",
         "keep the shortest prefix of the order of mass >= top_p; in (0, 1], 1 is off", lambda v: v < 1.0),
    Knob("min_p", float, None, 0.0, "prob", "min_p", "--min-p",
         "keep p >= min_p * max p; in [0, 1], 0 is off", lambda v: True),
    Knob("typical_p", float, None, 1.0, "prob_open", "typical_p", "--typical-p",
         "keep the most typical tokens (|-log p - H| ascending) up to this mass; in (0, 1], 1 is off",
         lambda v: v < 1.0),
    Knob("epsilon", float, None, 0.0, "nonneg", "epsilon_cutoff", None,
         "keep p >= epsilon; >= 0, 0 is off", lambda v: 0.0 < v < 1.0),
    Knob("eta", float, None, 0.0, "nonneg", "eta_cutoff", None,
         "keep p >= min(eta, sqrt(eta) * exp(-H)); >= 0, 0 is off", lambda v: 0.0 < v < 1.0),
    Knob("top_h", float, None, 0.0, "prob_open", "top_h", "--top-h",
         "Top-H: the longest prefix whose entropy terms sum to <= top_h * H; in (0, 1]", lambda v: True),
    Knob("top_n_sigma", float, None, -1.0, "nonneg", None, None,
         "keep z >= max z - n * sigma of the finite z; >= 0"),
    Knob("p_less", bool, False, 0.0, "bool", None, None,
         "keep p >= sum p^2 (the row's collision probability)"),
    Knob("min_tokens_to_keep", int, 1, 1.0, "at_least_one", None, None,
         "the fewest tokens top-k, top-p, min-p, typical, epsilon and eta keep; >= 1"),
)
NAMES: tuple[str, ...] = tuple(k.name for k in KNOBS)
NK = len(KNOBS)
INDEX: dict[str, int] = {k.name: i for i, k in enumerate(KNOBS)}
BY_NAME: dict[str, Knob] = {k.name: k for k in KNOBS}
#: the off-values in column order: the op arguments of a call with every knob off.
OFF: tuple = tuple(k.type(k.off) if k.type is not float else k.off for k in KNOBS)
_OFF_FLOATS = [float(k.off) for k in KNOBS]
#: the knobs Hugging Face's ``GenerationConfig`` has no field for (fuq's own cuts)
FUQ_ONLY: tuple[str, ...] = tuple(k.name for k in KNOBS if k.hf is None and k.name != "min_tokens_to_keep")

_INTERVAL = {"prob_open": "(0, 1]", "prob": "[0, 1]"}


def _scalar(kn: Knob, value: Any) -> Any:
    """One scalar knob, validated -> the value the op receives (None -> the off-value)."""
    c = kn.check
    name = kn.name
    if c == "bool":
        if not isinstance(value, bool):
            raise TypeError(f"{name} must be a bool, got {type(value).__name__}")
        return value
    if c in ("count", "at_least_one"):
        if value is None and c == "count":
            return 0
        if isinstance(value, bool) or not isinstance(value, int):
            raise TypeError(f"{name} must be an int, got {type(value).__name__}")
        if c == "count" and value < 0:
            raise ValueError(f"{name} must be >= 0 (0 is off), got {name} = {value}")
        if c == "at_least_one" and value < 1:
            raise ValueError(f"{name} must be >= 1, got {name} = {value}")
        return int(value)
    if value is None:
        return kn.off
    if isinstance(value, bool):
        raise TypeError(f"{name} must be a Python float, got {type(value).__name__}")
    v = float(value)
    if c == "positive":
        if not math.isfinite(v) or v <= 0.0:
            raise ValueError(f"{name} must be a finite number > 0, got {value!r}")
    elif c == "nonneg":
        if not math.isfinite(v) or v < 0.0:
            raise ValueError(f"{name} must be a finite number >= 0, got {name} = {value!r}")
    else:
        ok = (0.0 < v <= 1.0) if c == "prob_open" else (0.0 <= v <= 1.0)
        if not ok:
            raise ValueError(f"{name} must be in {_INTERVAL[c]}, got {name} = {value!r}")
    return v


def _tensor(kn: Knob, value: Tensor, B: int) -> Tensor:
    """A per-row knob ``[B]`` (or ``[1]``), validated -> float64 ``[B]`` on the CPU.

    A row holding the off-value does not use the knob. Checked on the values (one host read of
    the knob tensor: the per-row path groups rows by setting on the host anyway)."""
    name = kn.name
    if value.dim() > 1 or (value.dim() == 1 and value.shape[0] not in (1, B)):
        raise ValueError(f"{name} must be a number or a [B] tensor with B = {B} (the rows of logits), "
                         f"got shape {tuple(value.shape)}")
    c = kn.check
    if c == "bool":
        if value.dtype != torch.bool:
            raise TypeError(f"{name} as a tensor must be a bool tensor, got {value.dtype}")
    elif c in ("count", "at_least_one"):
        if value.dtype.is_floating_point or value.dtype.is_complex or value.dtype == torch.bool:
            raise TypeError(f"{name} as a tensor must be an integer tensor, got {value.dtype}")
    elif not value.dtype.is_floating_point:
        raise TypeError(f"{name} as a tensor must be a floating-point tensor, got {value.dtype}")
    v = value.detach().reshape(-1).to("cpu", torch.float64).expand(B)
    off = v == kn.off
    if c == "positive":
        bad = ~(torch.isfinite(v) & (v > 0))
        what = "finite numbers > 0"
    elif c == "count":
        bad = v < 0
        what = "integers >= 0 (0 is off)"
    elif c == "at_least_one":
        bad = v < 1
        what = "integers >= 1"
    elif c == "nonneg":
        bad = ~(torch.isfinite(v) & (v >= 0)) & ~off
        what = f"finite numbers >= 0 (or the off-value {kn.off})"
    elif c == "bool":
        bad = torch.zeros_like(off)
        what = ""
    else:
        lo_ok = (v > 0) if c == "prob_open" else (v >= 0)
        bad = ~(lo_ok & (v <= 1)) & ~off
        what = f"values in {_INTERVAL[c]} (or the off-value {kn.off})"
    if bool(bad.any()):
        i = int(bad.nonzero()[0, 0])
        raise ValueError(f"{name} must hold {what}, got {name}[{i}] = {v[i].item()!r}")
    return v


def check(name: str, value: Any) -> Any:
    """Validate one scalar knob -> the value the op receives (the off-value for None)."""
    return _scalar(BY_NAME[name], value)


_DEFAULT_IS_OFF = tuple(
    (k.default is None) or (k.type(k.off) == k.default and type(k.default) is k.type) for k in KNOBS
)


#: the validated op arguments of recent all-scalar knob settings, keyed by the values and their
#: types (so True and 1, 1 and 1.0 stay apart): a decode loop passes the same knobs every step,
#: and their checks cost a couple of microseconds per call otherwise. Bounded; errors never cached.
_MEMO: dict[tuple, tuple] = {}
_MEMO_MAX = 256
_SCALAR_TYPES = frozenset((type(None), float, int, bool))


def resolve_values(B: int | None, values: tuple | list) -> tuple | Tensor:
    """:func:`resolve` for the values of every knob in column order (the fast path of the ops)."""
    return _memoised(_MEMO, values, values, _resolve_values, B, values)


def _memoised(memo: dict, keys, values, fn: Callable, *args: Any) -> tuple | Tensor:
    """``fn(*args)``, memoised in ``memo`` by ``keys`` and the types of ``values`` when every value
    is a Python scalar (tensors are never keys). Bounded; errors never cached."""
    types = tuple(map(type, values))
    if not _SCALAR_TYPES.issuperset(types):
        return fn(*args)
    key = (*keys, *types)
    hit = memo.get(key)
    if hit is None:
        hit = fn(*args)
        if len(memo) >= _MEMO_MAX:
            memo.clear()
        memo[key] = hit
    return hit


def _resolve_values(B: int | None, values: tuple | list) -> tuple | Tensor:
    out = None
    rows = None
    for i, (kn, v) in enumerate(zip(KNOBS, values, strict=True)):
        if v is kn.default and _DEFAULT_IS_OFF[i]:
            continue  # the common case: not set
        if out is None:
            out = list(OFF)
        if isinstance(v, Tensor):
            if v.dim() == 0:
                v = v.item()
                v = kn.type(v)
            else:
                if rows is None:
                    rows = {}
                rows[i] = v
                continue
        out[i] = _scalar(kn, v)
    if out is None:
        return OFF
    if rows is None:
        return tuple(out)
    if B is None:
        raise TypeError("per-row knob tensors are not taken here: give each knob as a number")
    packed = torch.tensor([[float(v) for v in out]], dtype=torch.float64).expand(B, NK).clone()
    for i, v in rows.items():
        packed[:, i] = _tensor(KNOBS[i], v, B)
    return packed


def resolve(B: int | None = None, **knobs: Any) -> tuple | Tensor:
    """The knobs of one call, validated: a tuple of :data:`NK` scalars in column order when every
    knob is a number (the fast path), else the float64 ``[B, NK]`` tensor of :func:`pack`.

    Unknown names raise ``TypeError``; a missing knob takes its default.
    """
    if not knobs:
        return OFF
    # a decode loop's knobs: memoised by name, value and type
    return _memoised(_MEMO_KW, knobs.items(), knobs.values(), _resolve_kw, B, knobs)


_MEMO_KW: dict[tuple, tuple] = {}


def _resolve_kw(B: int | None, knobs: dict[str, Any]) -> tuple | Tensor:
    bad = [n for n in knobs if n not in BY_NAME]
    if bad:
        raise TypeError(f"unknown knob(s) {bad}; the knobs are {list(NAMES)}")
    return resolve_values(B, [knobs.get(k.name, k.default) for k in KNOBS])


def active(packed: Tensor) -> int:
    """The bitmask of the knobs that are on (differ from their off-value) in at least one row."""
    offs = torch.tensor(_OFF_FLOATS, dtype=torch.float64, device=packed.device)
    on = (packed != offs).any(0).tolist()
    return sum(1 << i for i, o in enumerate(on) if o)


def pack(B: int | None = None, **knobs: Any) -> tuple[Tensor, int]:
    """``(knobs, active)``: the float64 ``[1, NK]`` (all scalars) or ``[B, NK]`` (some per-row)
    tensor of the knobs in column order, and the bitmask of the knobs on in some row (bit i =
    column i differs from its off-value; the layout of csrc/include/fuq/knobs.h)."""
    r = resolve(B, **knobs)
    if isinstance(r, tuple):
        r = torch.tensor([[float(v) for v in r]], dtype=torch.float64)
    return r, active(r)


def unpack_row(row: Tensor | list) -> tuple:
    """A packed row -> the op's scalar arguments (ints and bools restored)."""
    vals = row.tolist() if isinstance(row, Tensor) else row
    return tuple(k.type(v) if k.type is not float else float(v) for k, v in zip(KNOBS, vals, strict=True))


def signature_params() -> list[tuple[str, Any]]:
    """``(name, default)`` of the knob parameters of ``fuq.truncate`` / ``fuq.sample``."""
    return [(k.name, k.default) for k in KNOBS]


def _annotation(kn: Knob) -> str:
    t = kn.type.__name__
    return t if kn.default is not None else f"{t} | None"


def doc_args(names: tuple[str, ...] = NAMES, indent: str = "        ") -> str:
    """The ``Args:`` lines of these knobs (Google style), from the table's doc lines."""
    out = []
    for kn in (BY_NAME[n] for n in names):
        off = " (None: off)" if kn.default is None else ""
        out.append(textwrap.fill(f"{kn.name}: {kn.doc}{off}.", width=96, initial_indent=indent,
                                 subsequent_indent=indent + "    "))
    return "\n".join(out).lstrip()


def knob_params(names: tuple[str, ...] = NAMES) -> Callable[[Callable], Callable]:
    """Decorator: give ``fn(..., *, <own keyword args>, **knobs)`` these knobs as keyword parameters.

    ``inspect.signature(fn)`` / ``help(fn)`` show one keyword-only parameter per knob (its public
    default and type), placed before the function's own keyword-only ones; ``{knob_args}`` in the docstring becomes
    their ``Args:`` lines. The function receives the knobs the caller gave in ``**knobs`` and
    passes them to :func:`resolve` (or :func:`check_names`), which refuse unknown names.
    """
    def deco(fn: Callable) -> Callable:
        sig = inspect.signature(fn)
        params = list(sig.parameters.values())
        if not params or params[-1].kind is not inspect.Parameter.VAR_KEYWORD:
            raise TypeError(f"{fn.__name__} must end with **knobs")
        kp = [inspect.Parameter(n, inspect.Parameter.KEYWORD_ONLY, default=BY_NAME[n].default,
                                annotation=_annotation(BY_NAME[n])) for n in names]
        at = next((i for i, q in enumerate(params) if q.kind is inspect.Parameter.KEYWORD_ONLY), len(params) - 1)
        fn.__signature__ = sig.replace(parameters=[*params[:at], *kp, *params[at:-1]])
        if fn.__doc__ and "{knob_args}" in fn.__doc__:
            fn.__doc__ = fn.__doc__.replace("{knob_args}", doc_args(names))
        return fn

    return deco


#: ``fuq.truncate`` / ``fuq.sample`` and the fused HF processors: every knob of the table
with_knob_params = knob_params(NAMES)


def check_names(given: dict[str, Any], allowed: tuple[str, ...], who: str) -> dict[str, Any]:
    """Refuse keyword arguments of ``who`` that are not among the ``allowed`` knobs."""
    bad = sorted(set(given) - set(allowed))
    if bad:
        raise TypeError(f"{who}: unknown argument(s) {bad}; the knobs taken here are {list(allowed)}")
    return given


def header() -> str:
    """The text of ``csrc/include/fuq/knobs.h``: column indices, bits and off-values."""
    lines = [
        "// GENERATED by `python -m fuq.knobs --header` from fuq/knobs.py: do not edit.",
        "// The columns of the packed knob tensor (float64 [1|B, NK]), their bits in the active mask,",
        "// and the value of each that means off. tests/test_knobs.py checks this file is current.",
        "#pragma once",
        "",
        "namespace fuq {",
        "namespace knobs {",
        f"constexpr int NK = {NK};",
    ]
    for i, k in enumerate(KNOBS):
        up = k.name.upper()
        lines.append(f"constexpr int {up} = {i};  // {k.type.__name__}: {k.doc}")
    for i, k in enumerate(KNOBS):
        lines.append(f"constexpr unsigned long long BIT_{k.name.upper()} = 1ull << {i};")
    offs = ", ".join(repr(float(k.off)) for k in KNOBS)
    lines += [f"constexpr double OFF[NK] = {{{offs}}};", "}  // namespace knobs", "}  // namespace fuq", ""]
    schema = ", ".join(f"{k.type.__name__} {k.name}" for k in KNOBS)
    lines += ["// The knob arguments of the truncate / sample op schemas (csrc/cpu/schemas.cpp).",
              f'#define FUQ_KNOBS_SCHEMA "{schema}"', ""]
    return "\n".join(lines)


HEADER_PATH = Path(__file__).resolve().parent.parent / "csrc" / "include" / "fuq" / "knobs.h"


if __name__ == "__main__":
    if "--header" in sys.argv[1:]:
        HEADER_PATH.write_text(header())
        print("wrote", HEADER_PATH)
    else:
        for k in KNOBS:
            print(f"{k.name:<20} {k.type.__name__:<6} default={k.default!r:<6} off={k.off!r:<5} {k.doc}")
