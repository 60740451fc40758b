"""KV-cache scoring and eviction: which cached keys and values a decoder keeps.

Scorers share one interface: ``score(ctx) -> [B, Hkv, T]`` float32, **higher = keep**, over
the slots of one full-attention layer's cache. The attention-based ones read
:func:`fuq.attention_stats` (per-key mass, per-row entropy), never the model's attention
weights:

* :class:`KeyNorm` (``"knorm"``): ``-||k||`` (low-norm keys draw attention; Devoto et al. 2024).
* :class:`StreamingLLM` (``"streaming"``): sinks + the most recent tokens (Xiao et al. 2023).
* :class:`TOVA` (``"tova"``): the last query's attention averaged over all query heads (Oren et al. 2024).
* :class:`H2O` (``"h2o"``): attention mass accumulated over the prompt and every decode step,
  updated in place (Zhang et al. 2023).
* :class:`SnapKV` (``"snapkv"``): mean attention of the last ``window = 64`` prompt queries,
  average-pooled (kernel 5), GQA group mean; the window itself is kept (Li et al. 2024).
* :class:`EntropyBudget` (``"entropy-budget"``): any scorer, with the budget shared out over
  layers and KV heads by an entropy measured at the prefill: UNComp's matrix entropy of each
  head's keys (:func:`matrix_entropy`; the default), or the attention entropy of the last
  prompt queries (``measure="attention"``). Within a layer, heads get slots in proportion to
  their entropy (richer heads more); across layers, in proportion to the layer's mean entropy
  to the power ``layer_power`` (default -0.5: layers whose keys span fewer directions get more;
  ``layer_power=1`` is UNComp's rule, proportional everywhere). Same total as the uniform split.
* :class:`ProtectUncertain` (``"uncertain"``): any scorer, plus: tokens whose generation step
  had entropy above ``tau`` (the loop's own per-token entropy) are always kept.

:class:`KVPolicy` applies them to a transformers ``DynamicCache`` inside ``fuq.generate``
(``kv_budget=``, ``kv_scorer=``, ``kv_sinks=``, ``kv_window=``, ``kv_every=``):

* **Queries** come from a forward pre-hook on each full-attention module: the hook keeps the
  last rows of its ``hidden_states`` and its ``position_embeddings`` (cos, sin); when a scorer
  needs queries, they are recomputed from them with the module's own ``q_proj``, ``q_norm``
  (if any) and its modelling file's ``apply_rotary_pos_emb`` -- the model is not re-implemented
  and ``output_attentions`` is not needed.
* **Eviction** gathers the kept slots of every full-attention layer (each KV head keeps its
  own set, chronological order). RoPE was applied before caching, so the kept keys keep the
  positions of the original sequence, and the loop keeps feeding the original positions.
* **Masks.** After the first eviction, the same pre-hook replaces the attention mask of each
  full-attention layer by one built from the layer's own ``alive [B, Hkv, T]`` slots (so rows
  of different lengths, per-head and per-layer budgets all work; a dead slot costs memory
  until the next eviction, never attention). ``sdpa`` gets a bool mask, ``eager`` an additive
  one; other attention implementations are refused.
* **Sliding-window layers** (Gemma 3: 5 of every 6 layers, window 512) are left untouched:
  they are already bounded by their window, and their mask is the model's own. Their bytes
  are counted in the cache size.
* ``kv_budget=1.0`` never evicts, installs no mask and therefore gives exactly the tokens of
  a run without eviction.

Budgets: a float ``f`` in (0, 1] keeps ``ceil(f * n)`` of the ``n`` tokens a row has seen; an
int keeps that many tokens per row. The first ``sinks`` and the last ``window`` tokens of a
row are always kept (they count in the budget, which is raised to ``sinks + window`` if smaller).
"""

from __future__ import annotations

import math
import sys
import time
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from .ops import attention_stats

__all__ = [
    "KVContext",
    "Scorer",
    "KeyNorm",
    "StreamingLLM",
    "TOVA",
    "H2O",
    "SnapKV",
    "EntropyBudget",
    "ProtectUncertain",
    "SCORERS",
    "make_scorer",
    "KVPolicy",
    "cache_bytes",
    "allocate_budgets",
    "matrix_entropy",
    "capture_queries",
]

_INF = float("inf")


@dataclass
class KVContext:
    """What a scorer sees of one full-attention layer.

    Attributes:
        layer: the layer index.
        phase: ``"prefill"`` or ``"decode"``.
        keys, values: ``[B, Hkv, T, d]``, the layer's cache (RoPE applied), slot order chronological.
        alive: ``[B, Hkv, T]`` bool, False for padding and dead slots.
        positions: ``[B, Hkv, T]`` int64, each slot's position in its row's sequence (-1: padding).
        token_entropy: ``[B, Hkv, T]`` float32, entropy (nats) of the step that generated the
            token, NaN for prompt tokens.
        scale: the layer's softmax scale.
        module: the attention module (for the queries).
        q: optional precomputed queries ``[B, Hq, Lq, d]`` (RoPE applied), the last ``Lq`` positions;
            otherwise they are recomputed from the hooked hidden states.
        n_queries: how many of the newest query rows :meth:`queries` can return.
    """

    layer: int
    phase: str
    keys: Tensor
    values: Tensor
    alive: Tensor
    positions: Tensor
    token_entropy: Tensor
    scale: float
    module: Any = None
    q: Tensor | None = None
    _hidden: Tensor | None = None
    _cos_sin: tuple[Tensor, Tensor] | None = None

    @property
    def n_queries(self) -> int:
        if self.q is not None:
            return int(self.q.shape[2])
        return 0 if self._hidden is None else int(self._hidden.shape[1])

    def queries(self, n: int | None = None) -> Tensor:
        """The last ``n`` (default all held) query rows ``[B, Hq, n, d]`` float32, RoPE applied."""
        if self.q is not None:
            return (self.q if n is None else self.q[:, :, -n:]).float()
        if self._hidden is None:
            raise RuntimeError("this scorer needs the attention queries, but none were captured")
        h = self._hidden if n is None else self._hidden[:, -n:]
        cos, sin = self._cos_sin
        if n is not None:
            cos, sin = cos[:, -n:], sin[:, -n:]
        return _queries(self.module, h, cos, sin).float()

    def stats(self, q: Tensor, causal: bool = True):
        """``fuq.attention_stats`` of ``q`` (the last ``Lq`` positions) over this layer's live keys.

        The mask is per KV head when the heads' live slots differ (one call per head then).
        """
        alive = self.alive
        if bool((alive == alive[:, :1]).all()):
            return attention_stats(q, self.keys, scale=self.scale, mask=alive[:, 0], causal=causal)
        Hkv = self.keys.shape[1]
        g = q.shape[1] // Hkv
        parts = [
            attention_stats(q[:, h * g : (h + 1) * g], self.keys[:, h : h + 1], scale=self.scale,
                            mask=alive[:, h], causal=causal)
            for h in range(Hkv)
        ]
        return type(parts[0])(*(torch.cat(x, dim=1) for x in zip(*parts, strict=True)))


def _queries(module: Any, hidden: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Query states of ``module`` for ``hidden [B, L, D]``: its q_proj, q_norm and RoPE."""
    B, L, _ = hidden.shape
    q = module.q_proj(hidden).view(B, L, -1, module.head_dim).transpose(1, 2)
    if getattr(module, "q_norm", None) is not None:
        q = module.q_norm(q)
    rope = getattr(sys.modules[type(module).__module__], "apply_rotary_pos_emb", None)
    if rope is None:
        raise NotImplementedError(f"{type(module).__name__}: no apply_rotary_pos_emb in its module")
    return rope(q, q, cos, sin)[0]


# --------------------------------------------------------------------------------------------
# scorers


class Scorer:
    """One KV-cache scoring rule: :meth:`score` -> ``[B, Hkv, T]``, higher = keep.

    Class attributes: ``name``; ``queries`` (how many of the newest prompt query rows the scorer
    reads at prefill: 0 none, -1 all); ``decode_every`` (the default ``kv_every``: evict every
    n decode steps, 0 = only after the prefill).

    Example:
        >>> import torch
        >>> from fuq import kv
        >>> k = torch.randn(1, 2, 10, 8)  # [B, Hkv, T, d]
        >>> ctx = kv.KVContext(0, "prefill", k, k, torch.ones(1, 2, 10, dtype=torch.bool),
        ...                    torch.arange(10).expand(1, 2, 10), torch.full((1, 2, 10), float("nan")),
        ...                    8**-0.5, q=torch.randn(1, 4, 3, 8))  # 4 query heads, the last 3 positions
        >>> kv.TOVA().score(ctx).shape
        torch.Size([1, 2, 10])
    """

    name = "scorer"
    queries = 0
    decode_every = 1
    recent_share = 0.0  # share of each row's budget the policy keeps for the newest tokens (H2O: 0.5)

    def start(self) -> None:
        """Reset per-generation state."""

    def observe(self, ctx: KVContext, new: int) -> None:
        """Called after every forward with ``new`` slots appended (stateful scorers)."""

    def score(self, ctx: KVContext) -> Tensor:
        raise NotImplementedError

    def gather(self, layer: int, idx: Tensor) -> None:
        """The cache of ``layer`` now holds the slots ``idx [B, Hkv, K]`` of the old one."""

    def config(self) -> dict[str, Any]:
        return {}

    def __repr__(self) -> str:
        return f"{type(self).__name__}({', '.join(f'{k}={v!r}' for k, v in self.config().items())})"


class KeyNorm(Scorer):
    """``-||k||_2`` in float32: low-norm keys are kept."""

    name = "knorm"

    def score(self, ctx: KVContext) -> Tensor:
        return -torch.linalg.vector_norm(ctx.keys.float(), dim=-1)


class StreamingLLM(Scorer):
    """Sinks + recency: the score is the slot's position (the policy adds the sinks)."""

    name = "streaming"

    def score(self, ctx: KVContext) -> Tensor:
        return ctx.positions.float()


class TOVA(Scorer):
    """The attention of the newest query, averaged over all query heads (same for every KV head)."""

    name = "tova"
    queries = 1

    def score(self, ctx: KVContext) -> Tensor:
        q = ctx.queries(1)
        mass = ctx.stats(q).mass  # [B, Hkv, T], summed over the group
        s = mass.sum(1, keepdim=True) / q.shape[1]
        return s.expand_as(mass).contiguous()


class H2O(Scorer):
    """Heavy hitters: each slot's attention mass summed over every query so far (prompt, then one
    row per decode step), kept per layer and updated in place.

    As in the H2O paper, the budget is split between heavy hitters and the most recent tokens:
    ``recent`` (default 0.5) of each row's budget is kept for the newest tokens (at least the
    policy's ``window``). The summed mass favours early slots (a key at position ``j`` of ``T`` is
    seen by ``T - j`` queries), so with heavy hitters alone the recent context goes: on SmolLM2,
    whose every layer is full attention, KL 0.87 nats at a 50 % budget with ``recent=0`` vs 0.0009
    with the split (bench/results/bench_kv_quick_smollm2.json). ``mean=True`` divides the mass by
    the number of queries that saw the slot (kvpress's ``ObservedAttentionPress``)."""

    name = "h2o"
    queries = -1

    def __init__(self, chunk: int = 256, init: dict[int, Tensor] | None = None, mean: bool = False,
                 recent: float = 0.5) -> None:
        if not 0.0 <= recent <= 1.0:
            raise ValueError(f"h2o: recent must be a share of the budget in [0, 1], got {recent!r}")
        self.chunk = int(chunk)
        self.mean = bool(mean)
        self.recent_share = float(recent)
        self.init = init  # a known prefill mass {layer: [B, Hkv, T]} (e.g. shared by runs on one prompt)
        self.buf: dict[int, Tensor] = {}  # [B, Hkv, capacity] float32, grown by doubling
        self.n: dict[int, int] = {}  # slots in use

    def start(self) -> None:
        self.buf, self.n = {}, {}

    @property
    def acc(self) -> dict[int, Tensor]:
        """``{layer: [B, Hkv, T]}`` views of the accumulated mass."""
        return {i: b[:, :, : self.n[i]] for i, b in self.buf.items()}

    def observe(self, ctx: KVContext, new: int) -> None:
        T = ctx.keys.shape[2]
        if ctx.phase == "prefill" and self.init is not None and self.init[ctx.layer].shape[2] == T:
            self.buf[ctx.layer], self.n[ctx.layer] = self.init[ctx.layer].clone(), T
            return
        buf = self.buf.get(ctx.layer)
        if buf is None or buf.shape[2] < T:
            grown = ctx.keys.new_zeros((*ctx.keys.shape[:2], max(T, 2 * (0 if buf is None else buf.shape[2]))),
                                       dtype=torch.float32)
            if buf is not None:
                grown[:, :, : self.n[ctx.layer]] = buf[:, :, : self.n[ctx.layer]]
            buf = grown
        buf[:, :, self.n.get(ctx.layer, 0) : T] = 0.0
        self.buf[ctx.layer], self.n[ctx.layer] = buf, T
        n = min(new, ctx.n_queries)
        qs = ctx.queries(n) if n > 0 else None
        for lo in range(0, n, self.chunk):  # query rows T-n+lo ... in chunks: the keys up to the chunk's end
            hi = min(n, lo + self.chunk)
            end = T - n + hi
            buf[:, :, :end].add_(_slice_ctx(ctx, end).stats(qs[:, :, lo:hi]).mass)  # in place

    def config(self) -> dict[str, Any]:
        return {"recent": self.recent_share} | ({"mean": True} if self.mean else {})

    def score(self, ctx: KVContext) -> Tensor:
        s = self.buf[ctx.layer][:, :, : self.n[ctx.layer]].clone()
        if self.mean:  # every query since a slot's own position saw it (causal): divide by their number
            newest = ctx.positions.amax(-1, keepdim=True)
            s = s / (newest - ctx.positions + 1).clamp_min(1).float()
        return s

    def gather(self, layer: int, idx: Tensor) -> None:
        self.buf[layer] = self.buf[layer][:, :, : self.n[layer]].gather(2, idx)
        self.n[layer] = idx.shape[2]


def _slice_ctx(ctx: KVContext, end: int) -> KVContext:
    return KVContext(ctx.layer, ctx.phase, ctx.keys[:, :, :end], ctx.values[:, :, :end], ctx.alive[:, :, :end],
                     ctx.positions[:, :, :end], ctx.token_entropy[:, :, :end], ctx.scale, ctx.module)


class SnapKV(Scorer):
    """Mean attention of the last ``window`` query rows over the earlier keys, average-pooled along
    the keys (``kernel``, stride 1, zero padding, as kvpress), then averaged over the GQA group.
    The window's own keys score +inf (kept). Prefill only by default (``decode_every = 0``);
    at a decode-time eviction the window is the queries available (the newest one)."""

    name = "snapkv"
    decode_every = 0

    def __init__(self, window: int = 64, kernel: int = 5) -> None:
        if window < 1 or kernel < 1 or kernel % 2 == 0:
            raise ValueError(f"snapkv: window >= 1 and an odd kernel >= 1 expected, got {window}, {kernel}")
        self.window, self.kernel = int(window), int(kernel)
        self.queries = self.window

    def config(self) -> dict[str, Any]:
        return {"window": self.window, "kernel": self.kernel}

    def score(self, ctx: KVContext) -> Tensor:
        T = ctx.keys.shape[2]
        w = max(1, min(self.window, ctx.n_queries, T - 1))  # a prompt shorter than the window: a smaller one
        q = ctx.queries(w)
        Hq, (B, Hkv) = q.shape[1], ctx.keys.shape[:2]
        # the window's own keys rank above every pooled mean (<= 1), newest first
        top = 2.0 + torch.arange(w, device=q.device, dtype=torch.float32) / w
        if T <= w:
            return top[-T:].expand(B, Hkv, T).contiguous()
        mass = ctx.stats(q).mass / (w * (Hq // Hkv))  # mean over the window rows and the group
        s = F.avg_pool1d(mass[:, :, : T - w].reshape(B * Hkv, 1, T - w), self.kernel, 1, self.kernel // 2)
        return torch.cat([s.reshape(B, Hkv, T - w), top.expand(B, Hkv, w)], dim=2)


def matrix_entropy(keys: Tensor, alive: Tensor | None = None) -> Tensor:
    """UNComp's matrix entropy of each head's keys (nats): ``H = -sum_i lambda_i log lambda_i`` over the
    eigenvalues of ``Sigma = Z^T Z / N``, ``Z`` the ``N`` live keys of the head scaled to unit norm (so
    ``tr Sigma = 1``: a ``d x d`` density matrix). ``exp(H)`` is the keys' effective rank, from 1 (all
    keys parallel) to ``d``.

    Args:
        keys: ``[B, H, T, d]`` any float dtype (computed in float64).
        alive: ``[B, H, T]`` bool, the slots to use (default all).

    Returns:
        ``[B, H]`` float32.

    Example:
        >>> import torch
        >>> k = torch.randn(1, 2, 100, 8)
        >>> k[:, 1] = k[:, 1, :1]  # head 1: one direction only
        >>> h = matrix_entropy(k)
        >>> bool(h[0, 0] > 1.5) and abs(float(h[0, 1])) < 1e-6
        True
    """
    z = torch.nn.functional.normalize(keys.double(), dim=-1)
    if alive is not None:
        z = z * alive[..., None].to(z.dtype)
        n = alive.sum(-1).clamp_min(1).to(z.dtype)
    else:
        n = torch.full(keys.shape[:2], keys.shape[2], dtype=z.dtype, device=z.device)
    sigma = z.transpose(-1, -2) @ z / n[..., None, None]  # [B, H, d, d]
    lam = torch.linalg.eigvalsh(sigma).clamp_min(0.0)
    lam = lam / lam.sum(-1, keepdim=True).clamp_min(1e-300)
    return -(lam * torch.log(lam.clamp_min(1e-300))).sum(-1).float()


class EntropyBudget(Scorer):
    """``base``'s scores, with the budget of each (layer, KV head) set by an entropy measured once at
    the prefill, same total (see :func:`allocate_budgets`); shares are reused at decode.

    ``measure="matrix"`` (UNComp, Xiong et al. 2024): the matrix entropy of the head's prompt keys
    (:func:`matrix_entropy`, from a ``d x d`` covariance); ``"attention"``: the attention entropy of the
    last ``window`` prompt queries (mean over them and the GQA group, from :func:`fuq.attention_stats`).
    With ``e = entropy ** power`` of a head and ``ē`` the mean ``e`` of its layer, the head's share is
    ``e / ē * ē ** layer_power``: heads of one layer in proportion to ``e``, layers in proportion to
    ``ē ** layer_power``. ``layer_power=1`` is UNComp's rule (``∝ e`` everywhere); the default -0.5
    gives layers with lower-rank keys more. KL to the full cache vs uniform SnapKV at a 25 % budget,
    geometric mean of the per-text ratios (``python bench/bench_kv.py --heldout [bench]``): on the 13
    pydoc texts the rule was chosen on, 0.65 on Gemma 3 270M (its three global layers) and 0.99 on
    SmolLM2, where ``layer_power=1`` gives 1.71 and 0.90; on 4 other texts 0.91 and 1.03 (1.43, 1.00)."""

    name = "entropy-budget"
    MEASURES = ("matrix", "attention")

    def __init__(self, base: Scorer | None = None, window: int = 64, measure: str = "matrix",
                 power: float = 1.0, layer_power: float = -0.5) -> None:
        if measure not in self.MEASURES:
            raise ValueError(f"entropy-budget: measure must be one of {self.MEASURES}, got {measure!r}")
        if not math.isfinite(power) or power < 0:
            raise ValueError(f"entropy-budget: power must be a finite number >= 0, got {power!r}")
        if not math.isfinite(layer_power):
            raise ValueError(f"entropy-budget: layer_power must be a finite number, got {layer_power!r}")
        self.base = base if base is not None else SnapKV()
        self.window, self.measure = int(window), measure
        self.power, self.layer_power = float(power), float(layer_power)
        need = self.window if measure == "attention" else 0
        self.queries = -1 if self.base.queries < 0 else max(need, self.base.queries)
        self.decode_every, self.recent_share = self.base.decode_every, self.base.recent_share
        self.entropy: dict[int, Tensor] = {}
        self.shares: Tensor | None = None  # [B, L, Hkv], sums to L * Hkv per row

    def start(self) -> None:
        self.base.start()
        self.entropy, self.shares = {}, None

    def config(self) -> dict[str, Any]:
        return {"base": self.base.name, "measure": self.measure, "window": self.window, "power": self.power,
                "layer_power": self.layer_power}

    def observe(self, ctx: KVContext, new: int) -> None:
        self.base.observe(ctx, new)
        if ctx.phase != "prefill":
            return
        if self.measure == "matrix":
            ent = matrix_entropy(ctx.keys, ctx.alive)
        else:
            w = min(self.window, ctx.n_queries, ctx.keys.shape[2])
            a = ctx.stats(ctx.queries(w)).entropy  # [B, Hq, w]
            B, Hq = a.shape[:2]
            ent = a.nan_to_num(0.0).mean(-1).view(B, ctx.keys.shape[1], Hq // ctx.keys.shape[1]).mean(-1)
        self.entropy[ctx.layer] = ent.clamp_min(0.0) ** self.power

    def weights(self, layers: list[int]) -> Tensor:
        """``[B, len(layers), Hkv]`` budget weights: ``e / ē * ē ** layer_power`` (see the class)."""
        e = torch.stack([self.entropy[i] for i in layers], 1).double().clamp_min(1e-6)
        mean = e.mean(-1, keepdim=True)
        return (e / mean * mean**self.layer_power).float()

    def score(self, ctx: KVContext) -> Tensor:
        return self.base.score(ctx)

    def gather(self, layer: int, idx: Tensor) -> None:
        self.base.gather(layer, idx)


class ProtectUncertain(Scorer):
    """``base``'s scores, but generated tokens whose step entropy exceeded ``tau`` nats score +inf."""

    name = "uncertain"

    def __init__(self, base: Scorer | None = None, tau: float = 1.0) -> None:
        if not math.isfinite(tau) or tau < 0:
            raise ValueError(f"uncertain: tau must be a finite entropy >= 0 (nats), got {tau!r}")
        self.base = base if base is not None else H2O()
        self.tau = float(tau)
        self.queries, self.decode_every = self.base.queries, self.base.decode_every
        self.recent_share = self.base.recent_share

    def start(self) -> None:
        self.base.start()

    def config(self) -> dict[str, Any]:
        return {"base": self.base.name, "tau": self.tau}

    def observe(self, ctx: KVContext, new: int) -> None:
        self.base.observe(ctx, new)

    def score(self, ctx: KVContext) -> Tensor:
        s = self.base.score(ctx)
        return s.masked_fill(ctx.token_entropy.nan_to_num(-1.0) > self.tau, _INF)

    def gather(self, layer: int, idx: Tensor) -> None:
        self.base.gather(layer, idx)


SCORERS: dict[str, type[Scorer]] = {
    "knorm": KeyNorm,
    "streaming": StreamingLLM,
    "tova": TOVA,
    "h2o": H2O,
    "snapkv": SnapKV,
    "entropy-budget": EntropyBudget,
    "uncertain": ProtectUncertain,
}


def make_scorer(scorer: str | Scorer) -> Scorer:
    """A scorer from its name (see :data:`SCORERS`; ``_`` and ``-`` interchangeable) or the object."""
    if isinstance(scorer, Scorer):
        return scorer
    if not isinstance(scorer, str):
        raise TypeError(f"kv_scorer must be a name or a fuq.kv.Scorer, got {type(scorer).__name__}")
    key = scorer.strip().lower().replace("_", "-")
    key = {"key-norm": "knorm", "streamingllm": "streaming", "entropy": "entropy-budget"}.get(key, key)
    if key not in SCORERS:
        raise ValueError(f"kv_scorer must be one of {sorted(SCORERS)}, got {scorer!r}")
    return SCORERS[key]()


def allocate_budgets(weights: Tensor, total: Tensor, lo: Tensor, hi: Tensor) -> Tensor:
    """Integer budgets ``n [B, N]`` in proportion to ``weights [B, N]`` (>= 0), ``lo <= n <= hi``,
    ``n.sum(-1) == total [B]`` (when ``lo.sum <= total <= hi.sum``): water-filling by bisection
    on the scale, then the remainder to the largest fractional parts."""
    w = weights.double().clamp_min(1e-6)
    lo_, hi_ = lo.double(), hi.double()
    tot = total.double()[:, None]
    a = torch.zeros_like(tot)
    b = (tot / w.min(-1, keepdim=True).values).clamp_min(1.0) * 2
    for _ in range(60):
        mid = (a + b) / 2
        s = (mid * w).clamp(lo_, hi_).sum(-1, keepdim=True)
        a, b = torch.where(s < tot, mid, a), torch.where(s < tot, b, mid)
    x = (b * w).clamp(lo_, hi_)
    n = x.floor()
    rest = (tot[:, 0] - n.sum(-1)).clamp_min(0).long()
    frac = (x - n).masked_fill(n >= hi_, -1.0)
    order = frac.argsort(-1, descending=True)
    rank = order.argsort(-1)
    n = n + (rank < rest[:, None]).double()
    return torch.minimum(n, hi_).long()


# --------------------------------------------------------------------------------------------
# the policy


def cache_bytes(cache: Any) -> int:
    """Bytes held by the key and value tensors of a transformers cache (measured on the tensors)."""
    total = 0
    for layer in getattr(cache, "layers", []):
        for t in (getattr(layer, "keys", None), getattr(layer, "values", None)):
            if isinstance(t, Tensor):
                total += t.numel() * t.element_size()
    return total


def _attention_modules(model: Any) -> dict[int, Any]:
    """``{layer_idx: attention module}`` of the model's full-attention layers."""
    out = {}
    for m in model.modules():
        if hasattr(m, "q_proj") and hasattr(m, "layer_idx") and hasattr(m, "head_dim"):
            if getattr(m, "sliding_window", None) is None and not getattr(m, "is_sliding", False):
                out[int(m.layer_idx)] = m
    if not out:
        raise ValueError(f"{type(model).__name__}: found no full-attention module (q_proj, layer_idx) to hook")
    return out


class capture_queries:
    """Context manager: record, for every full-attention layer, the ``hidden_states`` and
    ``position_embeddings`` its attention module receives (the last call wins), so that one prefill
    can be replayed under many policies (:meth:`KVPolicy.replay_prefill`).

    Example:
        >>> with fuq.kv.capture_queries(model) as cap:  # doctest: +SKIP
        ...     out = model(input_ids=ids, use_cache=True)
        >>> cap.inputs[layer_idx]  # (hidden [B, L, D], cos, sin)  # doctest: +SKIP
    """

    def __init__(self, model: Any) -> None:
        self.modules = _attention_modules(model)
        self.inputs: dict[int, tuple[Tensor, Tensor, Tensor]] = {}
        self._handles: list[Any] = []

    def __enter__(self) -> capture_queries:
        for i, m in self.modules.items():
            def hook(module, args, kwargs, i=i):
                h = kwargs.get("hidden_states", args[0] if args else None)
                cos, sin = kwargs["position_embeddings"]
                self.inputs[i] = (h, cos, sin)

            self._handles.append(m.register_forward_pre_hook(hook, with_kwargs=True))
        return self

    def __exit__(self, *exc: Any) -> None:
        for h in self._handles:
            h.remove()


class _Layer:
    """The policy's bookkeeping of one full-attention layer."""

    def __init__(self, idx: int, module: Any) -> None:
        self.idx, self.module = idx, module
        self.alive: Tensor | None = None  # [B, Hkv, T]
        self.positions: Tensor | None = None
        self.entropy: Tensor | None = None
        self.hidden: Tensor | None = None
        self.cos_sin: tuple[Tensor, Tensor] | None = None


class KVPolicy:
    """KV-cache eviction for ``fuq.generate``: the loop calls :meth:`before` each forward and
    :meth:`after` with the updated cache; everything else happens here.

    Args:
        model: a transformers causal LM (its attention modules are hooked while attached).
        scorer: a name of :data:`SCORERS` or a :class:`Scorer`.
        budget: float in (0, 1] (share of the tokens seen) or int >= 1 (tokens per row).
        sinks: first tokens of every row always kept.
        window: most recent tokens always kept.
        every: evict every n decode steps; 0 = only after the prefill; None = the scorer's default.

    Example (what ``fuq.generate(model, tok, prompt, kv_budget=0.25, kv_scorer="h2o")`` does):
        >>> pol = KVPolicy(model, "h2o", 0.25)  # doctest: +SKIP
        >>> pol.attach()  # doctest: +SKIP
        >>> pol.before(position_ids, attention_mask)  # doctest: +SKIP
        >>> out = model(input_ids=ids, position_ids=position_ids, use_cache=True)  # doctest: +SKIP
        >>> pol.after(out.past_key_values, "prefill")  # evicts down to 25 %  # doctest: +SKIP
        >>> pol.detach()  # doctest: +SKIP
    """

    def __init__(self, model: Any, scorer: str | Scorer = "h2o", budget: float | int = 0.5, *, sinks: int = 4,
                 window: int = 32, every: int | None = None) -> None:
        if isinstance(budget, bool) or not isinstance(budget, (int, float)):
            raise TypeError(f"kv_budget must be a float in (0, 1] or an int >= 1, got {budget!r}")
        if isinstance(budget, float) and not 0.0 < budget <= 1.0:
            raise ValueError(f"kv_budget as a fraction must be in (0, 1], got {budget!r}")
        if isinstance(budget, int) and budget < 1:
            raise ValueError(f"kv_budget as a token count must be >= 1, got {budget!r}")
        for name, v in (("kv_sinks", sinks), ("kv_window", window)):
            if isinstance(v, bool) or not isinstance(v, int) or v < 0:
                raise ValueError(f"{name} must be an int >= 0, got {v!r}")
        if every is not None and (isinstance(every, bool) or not isinstance(every, int) or every < 0):
            raise ValueError(f"kv_every must be an int >= 0 (0: after the prefill only) or None, got {every!r}")
        impl = getattr(getattr(model, "config", None), "_attn_implementation", "eager") or "eager"
        if impl not in ("sdpa", "eager"):
            raise ValueError(f"KV eviction needs attn_implementation 'sdpa' or 'eager', the model uses {impl!r}")
        self.model, self.scorer, self.budget = model, make_scorer(scorer), budget
        self.sinks, self.window = sinks, window
        self.every = self.scorer.decode_every if every is None else every
        self.layers = {i: _Layer(i, m) for i, m in _attention_modules(model).items()}
        self._handles: list[Any] = []
        self._masking = False
        self.seen: Tensor | None = None  # [B] real tokens seen per row
        self._pending: tuple[Tensor, Tensor | None] | None = None
        self.sizes: list[int] = []  # cache bytes after each forward
        self.slots: list[int] = []  # mean live slots per row and full layer after each forward
        self.evictions = 0
        self.score_s = 0.0
        self.prompt_positions: int = 0
        self._prompt_len: list[int] = []

    # -- hooks
    def attach(self) -> None:
        self.scorer.start()
        for lay in self.layers.values():
            self._handles.append(lay.module.register_forward_pre_hook(self._pre_hook(lay), with_kwargs=True))

    def detach(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []

    def _pre_hook(self, lay: _Layer):
        def hook(module, args, kwargs):
            hidden = kwargs.get("hidden_states", args[0] if args else None)
            n = self._n_queries(hidden.shape[1])
            lay.hidden = hidden[:, -n:] if n > 0 else None
            pe = kwargs.get("position_embeddings")
            lay.cos_sin = None if pe is None or n == 0 else (pe[0][:, -n:], pe[1][:, -n:])
            if self._masking:
                kwargs["attention_mask"] = self._mask(lay, hidden)
                return args, kwargs
            return None

        return hook

    def _n_queries(self, L: int) -> int:
        q = self.scorer.queries
        return L if q < 0 else min(L, max(q, 1))

    def _mask(self, lay: _Layer, hidden: Tensor) -> Tensor:
        """``[B, Hq, L, T + L]``: the layer's live slots, then causal over the L new tokens."""
        B, L = hidden.shape[:2]
        alive = lay.alive
        Hkv, T = alive.shape[1], alive.shape[2]
        g = lay.module.config.num_attention_heads // Hkv
        old = alive.repeat_interleave(g, dim=1)[:, :, None, :].expand(B, Hkv * g, L, T)
        new = torch.ones(L, L, dtype=torch.bool, device=alive.device).tril()
        if self._pending is not None and self._pending[1] is not None:  # padding among the new tokens
            new = new[None, None] & self._pending[1][:, None, None, -L:].bool()
        m = torch.cat([old, new.expand(B, Hkv * g, L, L)], dim=-1)
        if lay.module.config._attn_implementation == "sdpa":
            return m
        return torch.zeros(m.shape, dtype=hidden.dtype, device=m.device).masked_fill(~m, torch.finfo(hidden.dtype).min)

    # -- the loop's side
    def before(self, position_ids: Tensor, attention_mask: Tensor | None, entropy: Tensor | None = None) -> None:
        """Before a forward: the fed positions ``[B, L]``, the loop's 2D mask (or None) and the entropy
        ``[B]`` of the steps that chose the fed tokens (None for the prompt)."""
        self._pending = (position_ids, attention_mask, entropy)

    def after(self, cache: Any, phase: str) -> None:
        """After a forward: extend the bookkeeping by the new slots, let the scorer observe, evict."""
        pos, amask, ent = self._pending
        B, L = pos.shape
        real = torch.ones(B, L, dtype=torch.bool, device=pos.device) if amask is None else amask[:, -L:].bool()
        self.seen = real.sum(-1) if self.seen is None else self.seen + real.sum(-1)
        if phase == "prefill":
            self.prompt_positions, self._prompt_len = L, real.sum(-1).tolist()
        t0 = time.perf_counter()
        for lay in self.layers.values():
            layer = cache.layers[lay.idx]
            if type(layer).__name__ != "DynamicLayer":
                raise ValueError(f"KV eviction needs DynamicLayer caches, layer {lay.idx} is {type(layer).__name__}")
            Hkv = layer.keys.shape[1]
            p = pos.masked_fill(~real, -1)[:, None, :].expand(B, Hkv, L)
            e = (ent[:, None, None].float().expand(B, Hkv, L) if ent is not None
                 else torch.full((B, Hkv, L), float("nan"), device=pos.device))
            r = real[:, None, :].expand(B, Hkv, L)
            if lay.alive is None:
                lay.alive, lay.positions, lay.entropy = r.clone(), p.clone(), e.clone()
            else:
                lay.alive = torch.cat([lay.alive, r], 2)
                lay.positions = torch.cat([lay.positions, p], 2)
                lay.entropy = torch.cat([lay.entropy, e], 2)
            self.scorer.observe(self._ctx(lay, layer, phase), L)
        due = phase == "prefill" or (self.every > 0 and self._decode_steps() % self.every == 0)
        if due and self._over_budget():
            self._evict(cache, phase)
        self.score_s += time.perf_counter() - t0
        for lay in self.layers.values():
            lay.hidden, lay.cos_sin = None, None
        self._pending = None
        self.sizes.append(cache_bytes(cache))
        self.slots.append(self._live_slots())

    def replay_prefill(self, cache: Any, position_ids: Tensor, attention_mask: Tensor | None,
                       inputs: dict[int, tuple[Tensor, Tensor, Tensor]]) -> None:
        """Apply the prefill step to ``cache`` (modified in place: pass a copy) from inputs recorded
        by :class:`capture_queries` instead of hooking a forward; then attach for the decode steps."""
        L = position_ids.shape[1]
        n = self._n_queries(L)
        for i, lay in self.layers.items():
            h, cos, sin = inputs[i]
            lay.hidden, lay.cos_sin = (h[:, -n:], (cos[:, -n:], sin[:, -n:])) if n > 0 else (None, None)
        self.before(position_ids, attention_mask, None)
        self.after(cache, "prefill")

    def _decode_steps(self) -> int:
        return len(self.sizes)  # forwards so far, the prefill included; this one not yet counted

    def _ctx(self, lay: _Layer, layer: Any, phase: str) -> KVContext:
        return KVContext(lay.idx, phase, layer.keys, layer.values, lay.alive, lay.positions, lay.entropy,
                         float(lay.module.scaling), lay.module, None, lay.hidden, lay.cos_sin)

    def keep_counts(self) -> Tensor:
        """Tokens each row may keep now, ``[B]`` int64."""
        if isinstance(self.budget, float):
            n = torch.ceil(self.seen.double() * self.budget - 1e-9).long()
        else:
            n = torch.full_like(self.seen, int(self.budget))
        return torch.minimum(n.clamp_min(self.sinks + self.window), self.seen)

    def _over_budget(self) -> bool:
        keep = self.keep_counts()
        return any(bool((lay.alive.sum(-1) > keep[:, None]).any()) for lay in self.layers.values())

    def _live_slots(self) -> float:
        return float(sum(lay.alive.sum(-1).float().mean() for lay in self.layers.values()) / len(self.layers))

    def _budgets(self, keep: Tensor, Hkv: int) -> dict[int, Tensor]:
        """Kept slots per layer and KV head ``{layer: [B, Hkv]}``."""
        idxs = sorted(self.layers)
        uniform = {i: keep[:, None].expand(-1, Hkv) for i in idxs}
        sc = self.scorer
        if not isinstance(sc, EntropyBudget) or not sc.entropy and sc.shares is None:
            return uniform
        if sc.shares is None:
            ent = sc.weights(idxs)  # [B, nL, Hkv]
            sc.shares = ent / ent.sum((1, 2), keepdim=True).clamp_min(1e-12) * (len(idxs) * Hkv)
        B = keep.shape[0]
        nl = len(idxs)
        total = keep * nl * Hkv
        lo = torch.minimum(torch.full_like(keep, self.sinks + self.window), keep)[:, None].expand(B, nl * Hkv)
        hi = self.seen[:, None].expand(B, nl * Hkv)
        n = allocate_budgets(sc.shares.reshape(B, -1), total, lo, hi).view(B, nl, Hkv)
        return {i: n[:, j] for j, i in enumerate(idxs)}

    def _evict(self, cache: Any, phase: str) -> None:
        keep = self.keep_counts()
        first = next(iter(self.layers.values()))
        budgets = self._budgets(keep, first.alive.shape[1])
        for lay in self.layers.values():
            layer = cache.layers[lay.idx]
            ctx = self._ctx(lay, layer, phase)
            s = self.scorer.score(ctx).float()
            s = self._protect(s, lay)
            self._gather(lay, layer, s, budgets[lay.idx])
        self.evictions += 1
        self._masking = True

    def _recent(self) -> Tensor:
        """``[B]`` newest tokens always kept: ``window``, or the scorer's ``recent_share`` of the budget if more."""
        n = torch.full_like(self.seen, self.window)
        if self.scorer.recent_share > 0:
            n = torch.maximum(n, torch.ceil(self.keep_counts().double() * self.scorer.recent_share).long())
        return n

    def _protect(self, s: Tensor, lay: _Layer) -> Tensor:
        """Sinks and the recent tokens (:meth:`_recent`) score +inf, dead slots -inf."""
        pos = lay.positions
        recent = pos >= (self.seen - self._recent())[:, None, None]
        s = s.masked_fill((pos < self.sinks) | recent, _INF)
        return s.masked_fill(~lay.alive, -_INF)

    def _gather(self, lay: _Layer, layer: Any, s: Tensor, n_keep: Tensor) -> None:
        """Keep the ``n_keep [B, Hkv]`` best slots of each head; the cache shrinks to the largest count."""
        K = int(n_keep.max())
        top = s.topk(K, dim=-1)  # descending: the first n_keep of each head stay alive
        rank = torch.arange(K, device=s.device)
        ok = (rank < n_keep[..., None]) & (top.values > -_INF)
        idx, order = top.indices.sort(-1)  # chronological
        ok = ok.gather(-1, order)
        d = layer.keys.shape[-1]
        ix = idx[..., None].expand(*idx.shape, d)
        layer.keys = layer.keys.gather(2, ix)
        layer.values = layer.values.gather(2, idx[..., None].expand(*idx.shape, layer.values.shape[-1]))
        lay.alive = ok
        lay.positions = lay.positions.gather(-1, idx)
        lay.entropy = lay.entropy.gather(-1, idx)
        self.scorer.gather(lay.idx, idx)

    # -- results
    def kept_prompt(self) -> list[list[float]]:
        """Per row, per real prompt token (in order): the share of (full layer, KV head) caches that
        still hold it."""
        P = self.prompt_positions
        tot, heads = None, 0
        for lay in self.layers.values():
            pos = lay.positions
            B, Hkv = pos.shape[:2]
            pos = pos.masked_fill(~lay.alive | (pos < 0) | (pos >= P), P)  # bin P: dead, padding, generated
            hit = torch.zeros(B, Hkv, P + 1, device=pos.device).scatter_(2, pos, 1.0)
            h = hit[:, :, :P].sum(1)
            tot, heads = (h if tot is None else tot + h), heads + Hkv
        share = tot / heads
        return [[round(float(x), 4) for x in share[b, : self._prompt_len[b]]] for b in range(share.shape[0])]

    def evicted_share(self) -> list[float]:
        """Per row: the share of its seen tokens no longer held (mean over full-attention layers and KV heads)."""
        live = sum(lay.alive.sum(-1).float().mean(1) for lay in self.layers.values()) / len(self.layers)
        return [round(1.0 - float(x) / max(1, int(n)), 6) for x, n in zip(live, self.seen, strict=True)]

    def report(self) -> dict[str, Any]:
        return {
            "evicted_share": self.evicted_share() if self.seen is not None else [],
            "scorer": self.scorer.name,
            "scorer_args": self.scorer.config(),
            "budget": self.budget,
            "sinks": self.sinks,
            "window": self.window,
            "every": self.every,
            "evictions": self.evictions,
            "score_s": self.score_s,
            "cache_bytes": list(self.sizes),
            "live_slots": list(self.slots),
            "seen": self.seen.tolist() if self.seen is not None else [],
            "full_layers": sorted(self.layers),
        }
