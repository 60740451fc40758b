"""fuq's KV-cache scorers as kvpress presses (``ScorerPress`` subclasses).

kvpress users get fuq's scores -- computed with :func:`fuq.attention_stats` -- through kvpress's
own API: ``press.score(module, hidden_states, keys, values, attentions, kwargs)`` and
``with press(model): model(...)``.

=========================  ===========================  ====================================
press                      fuq scorer                   kvpress counterpart
=========================  ===========================  ====================================
:class:`FuqKnormPress`     :class:`fuq.kv.KeyNorm`      ``KnormPress`` (same scores)
:class:`FuqStreamingPress` :class:`fuq.kv.StreamingLLM` ``StreamingLLMPress``
:class:`FuqTOVAPress`      :class:`fuq.kv.TOVA`         ``TOVAPress`` (same on all but the last key)
:class:`FuqSnapKVPress`    :class:`fuq.kv.SnapKV`       ``SnapKVPress`` (same outside the window)
:class:`FuqH2OPress`       :class:`fuq.kv.H2O`          none (prefill mass of all queries)
=========================  ===========================  ====================================

Not offered as presses: ``fuq.kv.EntropyBudget`` (it shares one budget across layers, which a
per-layer press cannot see) and ``fuq.kv.ProtectUncertain`` (it protects tokens by the entropy of
their own generation step; a prefill press sees no generated token). Both work in ``fuq.generate``.

Compatibility (kvpress 0.5.5, installed with ``--no-deps`` next to transformers 5.x plus
``cachetools``, ``datasets`` and ``fire``): kvpress's ``BasePress.forward_hook`` reads
``kwargs["past_key_values"]`` and ``kwargs["cache_position"]``, which transformers >= 5 no longer
passes to attention modules (the cache arrives as ``cache=``; positions only as
``position_embeddings``), so ``with KnormPress(...)(model)`` fails there with a ``KeyError``.
``score()`` can still be called directly. fuq's presses override ``forward_hook`` to supply both
(the cache from ``cache=``, ``cache_position`` from the layer's length), and skip sliding-window
layers (Gemma 3), so the whole-model press compresses the prefill under transformers 5.24 too.
What kvpress does after that (decoding on a compressed cache) is kvpress's and transformers' own
business: under transformers 5 the positions of later tokens must be passed explicitly (the
default ``position_ids`` count the compressed cache); ``fuq.generate(kv_budget=...)`` does that.
Under transformers < 5 the presses behave as kvpress's own.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from . import kv

try:
    from kvpress.presses.scorer_press import ScorerPress
except Exception as e:  # noqa: BLE001 - any import failure of the optional peer
    raise ImportError(
        "fuq.kvpress needs kvpress (pip install --no-deps kvpress==0.5.5 cachetools datasets fire, plus datasets' "
        f"own dependencies): {type(e).__name__}: {e}"
    ) from e

__all__ = ["FuqPress", "FuqKnormPress", "FuqStreamingPress", "FuqTOVAPress", "FuqSnapKVPress", "FuqH2OPress",
           "context"]


def context(module: Any, hidden_states: Tensor, keys: Tensor, values: Tensor, kwargs: dict[str, Any],
            n_queries: int) -> kv.KVContext:
    """A :class:`fuq.kv.KVContext` from what a kvpress press receives (a prefill of ``keys.shape[2]`` tokens):
    the last ``n_queries`` queries (-1: all) from the module's q_proj / q_norm and ``position_embeddings``."""
    B, Hkv, T, _ = keys.shape
    L = hidden_states.shape[1]
    n = L if n_queries < 0 else min(L, max(1, n_queries))
    cos, sin = kwargs["position_embeddings"]
    q = kv._queries(module, hidden_states[:, -n:], cos[:, -n:], sin[:, -n:])
    alive = torch.ones(B, Hkv, T, dtype=torch.bool, device=keys.device)
    pos = torch.arange(T, device=keys.device).expand(B, Hkv, T)
    ent = torch.full((B, Hkv, T), float("nan"), device=keys.device)
    return kv.KVContext(int(module.layer_idx), "prefill", keys, values, alive, pos, ent, float(module.scaling), module,
                        q)


@dataclass
class FuqPress(ScorerPress):
    """A kvpress ``ScorerPress`` whose ``score`` is a fuq scorer's (``make_scorer`` returns it)."""

    compression_ratio: float = 0.0

    def make_scorer(self) -> kv.Scorer:
        raise NotImplementedError

    def score(self, module: Any, hidden_states: Tensor, keys: Tensor, values: Tensor, attentions: Any,
              kwargs: dict[str, Any]) -> Tensor:
        sc = self.make_scorer()
        ctx = context(module, hidden_states, keys, values, kwargs, sc.queries)
        sc.start()
        sc.observe(ctx, keys.shape[2])
        return sc.score(ctx)

    def forward_hook(self, module: Any, input: Any, kwargs: dict[str, Any], output: Any) -> Any:
        if getattr(module, "is_sliding", False) or getattr(module, "sliding_window", None):
            return output  # already bounded by its window; its mask is the model's
        kw = dict(kwargs)
        if "hidden_states" not in kw:
            kw["hidden_states"] = input[0]
        if "past_key_values" not in kw:  # transformers >= 5 passes the cache as cache=
            kw["past_key_values"] = kw.get("cache")
        if kw["past_key_values"] is None:
            return output
        if "cache_position" not in kw:
            n = kw["past_key_values"].layers[module.layer_idx].get_seq_length()
            L = kw["hidden_states"].shape[1]
            kw["cache_position"] = torch.arange(n - L, n, device=kw["hidden_states"].device)
        return super().forward_hook(module, input, kw, output)


@dataclass
class FuqKnormPress(FuqPress):
    """``-||k||``: :class:`fuq.kv.KeyNorm`."""

    def make_scorer(self) -> kv.Scorer:
        return kv.KeyNorm()


@dataclass
class FuqStreamingPress(FuqPress):
    """Sinks + recency: :class:`fuq.kv.StreamingLLM`, the first ``n_sink`` keys kept."""

    n_sink: int = 4

    def make_scorer(self) -> kv.Scorer:
        return kv.StreamingLLM()

    def score(self, module, hidden_states, keys, values, attentions, kwargs) -> Tensor:
        s = super().score(module, hidden_states, keys, values, attentions, kwargs)
        s[..., : self.n_sink] = float("inf")
        return s


@dataclass
class FuqTOVAPress(FuqPress):
    """The last query's attention, averaged over heads: :class:`fuq.kv.TOVA` (the last key itself,
    which kvpress pads with ``max + 1``, keeps its attention score here)."""

    def make_scorer(self) -> kv.Scorer:
        return kv.TOVA()


@dataclass
class FuqSnapKVPress(FuqPress):
    """:class:`fuq.kv.SnapKV` with kvpress's knobs (``window_size``, ``kernel_size``)."""

    window_size: int = 64
    kernel_size: int = 5

    def make_scorer(self) -> kv.Scorer:
        return kv.SnapKV(window=self.window_size, kernel=self.kernel_size)


@dataclass
class FuqH2OPress(FuqPress):
    """:class:`fuq.kv.H2O` at the prefill: each key's attention mass summed over every prompt query
    (``chunk`` queries per ``attention_stats`` call)."""

    chunk: int = field(default=256)

    def make_scorer(self) -> kv.Scorer:
        return kv.H2O(chunk=self.chunk)
