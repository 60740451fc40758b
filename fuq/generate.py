"""A minimal decoding loop with per-token uncertainty, and the decoding strategies it runs.

``fuq.generate`` prefills the prompt once with the model's KV cache, then feeds one
token per step. At every step the strategy makes ONE fused fuq call on the last
logits (``fuq.logit_stats`` for greedy, ``fuq.sample`` for sampling), picks the next
token of every row, and the loop records that step's ``LogitStats`` (with ``k``
alternatives) and the chosen token in a :class:`fuq.trace.Trace`.

Strategies (objects with ``choose(logits, state) -> (ids, stats)``), by name:

* ``"greedy"``: the argmax.
* ``"sample"``: sampling after any ``fuq.truncate`` knobs (temperature, top_k, top_p, min_p…).
* ``"top-h"``: sampling with the entropy-bounded top-H cut (``alpha``).
* ``"entropy-gated"``: greedy while the entropy is below ``tau``, sampling above; or
  the entropy × varentropy quadrant rule (``varentropy_tau=…``).
* ``"adadec"``: AdaDec: above ``tau`` the top ``beam`` candidates are each rolled out
  ``lookahead`` tokens greedily (batched, on a copy of the KV cache) and the one with the
  best mean log-probability is kept.

Conventions of the trace: the stats are those of the model's own distribution
(temperature 1, no truncation), so ``token_logprob`` is log p of the chosen token
under the model (at a temperature other than 1, ``fuq.sample(base_stats=True)``
returns those T = 1 stats from the same call; the C++ kernel from the same pass). A row that has finished (EOS,
a stop string) emits the pad id with ``mask = False``; the EOS token itself is kept
(``mask = True``).

Nothing here imports ``transformers``: the model is any causal LM whose forward takes
``input_ids, attention_mask, position_ids, use_cache`` and a cache (``cache=`` in
transformers >= 5, ``past_key_values=`` before) and returns ``.logits``.
"""

from __future__ import annotations

import copy
import inspect
import math
import time
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor

from . import knobs as _knob_table
from .kv import cache_bytes
from .ops import LogitStats, logit_stats
from .trace import DENSITY_FREE_DEFAULTS, DENSITY_FREE_STATS_KW, Trace, density_free_from_stats, density_free_sums

__all__ = [
    "generate",
    "make_strategy",
    "STRATEGIES",
    "Strategy",
    "Greedy",
    "Sample",
    "TopH",
    "EntropyGated",
    "AdaDec",
    "DecodeState",
]

#: the knobs of ``fuq.sample`` / ``fuq.truncate`` that the sampling strategies pass through.
SAMPLE_KNOBS = _knob_table.NAMES


# --------------------------------------------------------------------------------------------
# helpers


def _chosen_logprob(logits: Tensor, ids: Tensor, lse: Tensor) -> Tensor:
    """``log p(ids)`` at temperature 1 from the row's ``lse``: ``[B]`` float32."""
    return logits.gather(-1, ids[:, None].to(logits.device))[:, 0].float() - lse


def _slice_k(s: LogitStats, k: int) -> LogitStats:
    """Keep the first ``k`` alternatives (``topk_mass`` recomputed for them)."""
    if s.topk_ids.shape[-1] == k:
        return s
    tl = s.topk_logprobs[..., :k]
    return s._replace(topk_logprobs=tl, topk_ids=s.topk_ids[..., :k], topk_mass=tl.exp().sum(-1))


def _sample_fn():
    from ._truncate import sample

    return sample


def _check_knobs(knobs: dict[str, Any], who: str) -> dict[str, Any]:
    bad = sorted(set(knobs) - set(SAMPLE_KNOBS))
    if bad:
        raise TypeError(f"{who}: unknown argument(s) {bad}; the sampling knobs are {list(SAMPLE_KNOBS)}")
    return {k: v for k, v in knobs.items() if v is not None}


def _jsonable(v: Any) -> Any:
    if isinstance(v, (bool, int, str)) or v is None:
        return v
    if isinstance(v, float):
        return v if math.isfinite(v) else str(v)
    if isinstance(v, dict):
        return {str(k): _jsonable(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_jsonable(x) for x in v]
    return str(v)


# --------------------------------------------------------------------------------------------
# strategies


class Strategy:
    """How the next token of every row is picked from the last logits.

    Subclasses implement :meth:`choose`; the loop calls it once per step. ``config()``
    is recorded in ``trace.meta["strategy_args"]`` and ``report()`` (counters of the run,
    reset by ``start()``) in ``trace.meta["strategy_report"]``.
    """

    name: str = "strategy"

    def start(self) -> None:
        """Called once before a generation: reset per-run counters."""

    def choose(self, logits: Tensor, state: DecodeState) -> tuple[Tensor, LogitStats]:
        """Pick the next tokens.

        Args:
            logits: ``[B, V]`` float32 | bfloat16 | float16, the last position of every row.
            state: the loop's :class:`DecodeState` (step, k, generator, finished rows, rollouts).

        Returns:
            ``(ids, stats)``: ``ids`` ``[B]`` int64; ``stats`` the step's :class:`LogitStats`
            of the model's distribution (temperature 1) with ``state.k`` alternatives and
            ``token_logprob`` = log p of ``ids``.
        """
        raise NotImplementedError

    def config(self) -> dict[str, Any]:
        return {}

    def report(self) -> dict[str, Any]:
        return {}

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.config().items())
        return f"{type(self).__name__}({args})"


class Greedy(Strategy):
    """The argmax at every step: one ``fuq.logit_stats`` call, nothing else."""

    name = "greedy"

    def choose(self, logits: Tensor, state: DecodeState) -> tuple[Tensor, LogitStats]:
        s = logit_stats(logits, k=state.k, **state.stats_kw)
        return s.argmax, s._replace(token_logprob=s.max_logprob)


class Sample(Strategy):
    """Sampling after truncation: one ``fuq.sample`` call per step.

    Args:
        temperature: > 0.
        **knobs: any of ``top_k, top_p, min_p, typical_p, epsilon, eta, top_h, top_n_sigma,
            p_less, min_tokens_to_keep`` (the ``fuq.truncate`` knobs, Hugging Face semantics).
    """

    name = "sample"

    def __init__(self, temperature: float = 1.0, **knobs: Any) -> None:
        self.knobs = _check_knobs({"temperature": temperature, **knobs}, self.name)

    def config(self) -> dict[str, Any]:
        return dict(self.knobs)

    def _sample(self, logits: Tensor, state: DecodeState, k: int, **override: Any) -> tuple[Tensor, LogitStats]:
        return _sample_fn()(logits, **{**self.knobs, **override}, generator=state.generator, k=k, base_stats=True)

    def choose(self, logits: Tensor, state: DecodeState) -> tuple[Tensor, LogitStats]:
        return self._sample(logits, state, state.k)  # base_stats: the model's (T = 1) stats, same pass


class TopH(Sample):
    """Top-H sampling ("Top-H Decoding", 2025): keep the smallest head of the distribution whose
    entropy stays within ``alpha`` times the full entropy, then sample (``top_h=alpha``)."""

    name = "top-h"

    def __init__(self, alpha: float = 0.4, temperature: float = 1.0, **knobs: Any) -> None:
        if not isinstance(alpha, (int, float)) or not 0.0 < float(alpha) <= 1.0:
            raise ValueError(f"top-h: alpha must be in (0, 1], got {alpha!r}")
        super().__init__(temperature=temperature, top_h=float(alpha), **knobs)


class EntropyGated(Strategy):
    """Greedy while the model is sure, sampling where it is not.

    Plain rule: a row whose step entropy is below ``tau`` (nats) takes the argmax; the
    others are sampled with ``temperature`` and the other knobs.

    Quadrant rule (``varentropy_tau`` given; the entropix-style variant): each row falls in
    one of four quadrants by (entropy < ``tau``, varentropy < ``varentropy_tau``), named
    ``"LL", "LH", "HL", "HH"`` (entropy first); ``quadrants`` maps each to a sampling
    temperature, 0 meaning greedy. Default: LL greedy, LH (a few sharp alternatives)
    ``temperature``, HL (uniformly unsure) ``temperature``, HH ``1.3 * temperature``.

    Every step makes one ``fuq.logit_stats`` call over the batch; rows that are sampled
    then go through one ``fuq.sample`` call per temperature.
    """

    name = "entropy-gated"

    def __init__(
        self,
        tau: float = 1.0,
        *,
        varentropy_tau: float | None = None,
        quadrants: dict[str, float] | None = None,
        temperature: float = 1.0,
        **knobs: Any,
    ) -> None:
        if not isinstance(tau, (int, float)) or not math.isfinite(tau) or tau < 0:
            raise ValueError(f"entropy-gated: tau must be a finite entropy >= 0 (nats), got {tau!r}")
        if varentropy_tau is not None and (not math.isfinite(varentropy_tau) or varentropy_tau < 0):
            raise ValueError(f"entropy-gated: varentropy_tau must be finite and >= 0, got {varentropy_tau!r}")
        if quadrants is not None and varentropy_tau is None:
            raise ValueError("entropy-gated: quadrants needs varentropy_tau")
        self.tau = float(tau)
        self.varentropy_tau = None if varentropy_tau is None else float(varentropy_tau)
        q = {"LL": 0.0, "LH": float(temperature), "HL": float(temperature), "HH": 1.3 * float(temperature)}
        if quadrants is not None:
            bad = sorted(set(quadrants) - set(q))
            if bad:
                raise ValueError(f"entropy-gated: quadrants keys must be among {sorted(q)}, got {bad}")
            q.update({k: float(v) for k, v in quadrants.items()})
            if any(not math.isfinite(v) or v < 0 for v in q.values()):
                raise ValueError(f"entropy-gated: quadrant temperatures must be >= 0 (0 = greedy), got {q}")
        self.quadrants = q
        self.knobs = _check_knobs({"temperature": temperature, **knobs}, self.name)
        self.sampled = 0
        self.tokens = 0

    def start(self) -> None:
        self.sampled = self.tokens = 0

    def config(self) -> dict[str, Any]:
        c: dict[str, Any] = {"tau": self.tau, **self.knobs}
        if self.varentropy_tau is not None:
            c.update(varentropy_tau=self.varentropy_tau, quadrants=dict(self.quadrants))
        return c

    def report(self) -> dict[str, Any]:
        return {"sampled_steps": self.sampled, "row_steps": self.tokens}

    def temperatures(self, s: LogitStats) -> Tensor:
        """Per-row temperature of this step, ``[B]`` float32 (0 = greedy)."""
        hi_h = s.entropy >= self.tau  # NaN (a dead row) -> False -> greedy
        if self.varentropy_tau is None:
            t = self.knobs.get("temperature", 1.0)
            return torch.where(hi_h, torch.full_like(s.entropy, float(t)), torch.zeros_like(s.entropy))
        hi_v = s.varentropy >= self.varentropy_tau
        q = self.quadrants
        table = torch.tensor([q["LL"], q["LH"], q["HL"], q["HH"]], dtype=torch.float32, device=s.entropy.device)
        return table[hi_h.long() * 2 + hi_v.long()]

    def choose(self, logits: Tensor, state: DecodeState) -> tuple[Tensor, LogitStats]:
        s = logit_stats(logits, k=state.k, **state.stats_kw)
        temps = self.temperatures(s)
        ids = s.argmax.clone()
        live = ~state.finished.to(temps.device)
        self.tokens += int(live.sum())
        for t in torch.unique(temps[(temps > 0) & live]).tolist():
            rows = ((temps == t) & live).nonzero()[:, 0]
            sub, _ = _sample_fn()(logits[rows], **{**self.knobs, "temperature": t}, generator=state.generator, k=0)
            ids[rows] = sub.to(ids.dtype)
            self.sampled += rows.numel()
        return ids, s._replace(token_logprob=_chosen_logprob(logits, ids, s.lse))


class AdaDec(Strategy):
    """AdaDec ("Towards Better Code Generation: Adaptive Decoding with Uncertainty Guidance").

    Greedy while the step entropy is at most ``tau``. Above it, the top ``beam`` candidates
    are each extended ``lookahead`` tokens greedily, all candidates of all such rows in one
    batch that reuses a copy of the KV cache (the prefix is never recomputed: each rollout
    call feeds one token per candidate). A candidate's score is the mean log-probability
    of the candidate and its lookahead tokens (up to and including an EOS); the best one
    is kept and decoding continues from the original cache with it.

    ``tau`` (nats) is learned per model by :func:`fuq.adaptive.calibrate_threshold`; the
    default 1.5 is near what it learns for Gemma 3 270M on short English texts (1.59).
    Costs: ``lookahead`` extra model calls per step where the rule fires, each with
    ``beam`` x (rows firing) tokens; ``trace.meta["strategy_report"]`` counts the pauses
    (``triggered``), the tokens that differ from the argmax (``changed``) and the calls.
    """

    name = "adadec"

    def __init__(self, tau: float = 1.5, *, beam: int = 3, lookahead: int = 5) -> None:
        if not isinstance(tau, (int, float)) or not math.isfinite(tau) or tau < 0:
            raise ValueError(f"adadec: tau must be a finite entropy >= 0 (nats), got {tau!r}")
        if isinstance(beam, bool) or not isinstance(beam, int) or beam < 1:
            raise ValueError(f"adadec: beam must be an int >= 1, got {beam!r}")
        if isinstance(lookahead, bool) or not isinstance(lookahead, int) or lookahead < 1:
            raise ValueError(f"adadec: lookahead must be an int >= 1, got {lookahead!r}")
        self.tau, self.beam, self.lookahead = float(tau), beam, lookahead
        self.start()

    def start(self) -> None:
        self.triggered = 0  # row-steps where the lookahead ran
        self.changed = 0  # ... and picked a token other than the argmax
        self.rollout_calls = 0

    def config(self) -> dict[str, Any]:
        return {"tau": self.tau, "beam": self.beam, "lookahead": self.lookahead}

    def report(self) -> dict[str, Any]:
        return {"triggered": self.triggered, "changed": self.changed, "rollout_calls": self.rollout_calls}

    def choose(self, logits: Tensor, state: DecodeState) -> tuple[Tensor, LogitStats]:
        V = logits.shape[-1]
        beam = min(self.beam, V)
        s = logit_stats(logits, k=max(state.k, beam), **state.stats_kw)
        ids = s.argmax.clone()
        lp = s.max_logprob.clone()
        hot = (s.entropy > self.tau) & ~state.finished.to(s.entropy.device)
        if beam > 1 and bool(hot.any()):
            rows = hot.nonzero()[:, 0]
            cand = s.topk_ids[rows, :beam]  # [n, C]
            cand_lp = s.topk_logprobs[rows, :beam]
            la_lp, la_alive = state.rollout(rows, cand, self.lookahead)  # [n, C, L]
            total = cand_lp + torch.where(la_alive, la_lp, torch.zeros_like(la_lp)).sum(-1)
            score = total / (1.0 + la_alive.sum(-1))
            score = torch.where(torch.isnan(score), torch.full_like(score, float("-inf")), score)
            best = score.argmax(-1)
            ids[rows] = cand.gather(1, best[:, None])[:, 0]
            lp[rows] = cand_lp.gather(1, best[:, None])[:, 0]
            self.triggered += rows.numel()
            self.changed += int((best != 0).sum())
            self.rollout_calls += self.lookahead
        return ids, _slice_k(s._replace(token_logprob=lp), state.k)


STRATEGIES: dict[str, type[Strategy]] = {
    "greedy": Greedy,
    "sample": Sample,
    "top-h": TopH,
    "entropy-gated": EntropyGated,
    "adadec": AdaDec,
}


def make_strategy(strategy: str | Strategy, **kwargs: Any) -> Strategy:
    """A strategy object from its name (``"greedy"``, ``"sample"``, ``"top-h"``, ``"entropy-gated"``,
    ``"adadec"``; ``_`` and ``-`` are interchangeable) and its keyword arguments, or the object itself."""
    if isinstance(strategy, Strategy):
        if kwargs:
            raise TypeError(
                f"strategy is already a {type(strategy).__name__} object; got extra arguments {sorted(kwargs)}"
            )
        return strategy
    if not isinstance(strategy, str):
        raise TypeError(f"strategy must be a name or a Strategy object, got {type(strategy).__name__}")
    key = strategy.strip().lower().replace("_", "-")
    key = {"toph": "top-h", "entropy": "entropy-gated", "gated": "entropy-gated"}.get(key, key)
    if key not in STRATEGIES:
        raise ValueError(f"strategy must be one of {sorted(STRATEGIES)}, got {strategy!r}")
    cls = STRATEGIES[key]
    if cls is Greedy and kwargs:
        raise TypeError(f"strategy 'greedy' takes no arguments, got {sorted(kwargs)}")
    return cls(**kwargs)


# --------------------------------------------------------------------------------------------
# the loop


def _fork_cache(cache: Any, index: Tensor) -> Any:
    """A new cache holding the rows ``index`` of ``cache``; the original is not modified.

    Dynamic layers are shallow-copied and re-indexed (``index_select`` makes the one copy);
    any other cache is deep-copied first.
    """
    layers = getattr(cache, "layers", None)
    dynamic = {"DynamicLayer", "DynamicSlidingWindowLayer"}
    if isinstance(layers, list) and all(type(x).__name__ in dynamic for x in layers):
        new = copy.copy(cache)
        new.layers = [copy.copy(x) for x in layers]
        new.reorder_cache(index)
        return new
    new = copy.deepcopy(cache)
    new.reorder_cache(index)
    return new


class _SkinnyHead:
    """Within the block, the model's output projection (a bias-free ``nn.Linear`` on the CPU)
    computes ``x @ W.T`` as ``(W @ x.T).T``: the same products, one pass over ``W``.

    AdaDec's rollouts feed ``n * C`` rows (3 per row that pauses) of one token. At such small M,
    ``F.linear`` on the CPU costs about M times its one-row cost (Gemma 3 270M's 262144 x 640
    float32 head, one thread: 60 ms at M = 1, 230 ms at M = 3), while ``W @ x.T`` reads W once
    (55 ms at M = 3). The results differ by rounding only (summation order; about 1e-4 on
    logits of that head). Anything else (a bias, a GPU, a quantised or tied-but-wrapped head,
    one row) is left as it is.
    """

    def __init__(self, model: Any, rows: int) -> None:
        get = getattr(model, "get_output_embeddings", None)
        head = get() if callable(get) else None
        ok = (
            rows > 1
            and type(head) is torch.nn.Linear
            and head.bias is None
            and head.weight.device.type == "cpu"
            and head.weight.dtype == torch.float32
            and "forward" not in vars(head)
        )
        self.head = head if ok else None

    def __enter__(self) -> _SkinnyHead:
        if self.head is not None:
            w = self.head.weight

            def forward(x: Tensor) -> Tensor:
                x2 = x.reshape(-1, x.shape[-1])
                return (w @ x2.T).T.contiguous().view(*x.shape[:-1], w.shape[0])

            self.head.forward = forward
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.head is not None:
            del self.head.forward


class DecodeState:
    """What a strategy may see and do during a generation.

    Attributes:
        step: the index of the token being chosen (0 for the first new token).
        k: how many alternatives the step's stats must carry.
        generator: the ``torch.Generator`` for sampling, or None.
        finished: ``[B]`` bool, rows that already ended (their choice is ignored).
        eos: ``[n_eos]`` int64 ids that end a row.
    """

    def __init__(self, model: Any, k: int, generator: torch.Generator | None, eos: Tensor, device: torch.device):
        self.model = model
        self.k = k
        self.generator = generator
        self.eos = eos
        self.device = device
        self.step = 0
        self.finished: Tensor = torch.zeros(0, dtype=torch.bool)
        self.cache: Any = None
        self.attention_mask: Tensor | None = None  # [B, T_seen] or None when there is no padding
        self.next_pos: Tensor = torch.zeros(0, dtype=torch.long)  # [B] position of the next fed token
        self.calls: list[tuple[int, int]] = []  # (rows, tokens per row) of every model call
        self.kv: Any = None  # a fuq.kv.KVPolicy when evicting
        # extra keyword arguments of a strategy's own fuq.logit_stats call: with extra=True,
        # fuq.trace.DENSITY_FREE_STATS_KW (the vocabulary sums then come from that same pass)
        self.stats_kw: dict[str, Any] = {}
        self.cache_bytes: list[int] = []  # KV-cache bytes after every call of the main sequence
        sig = inspect.signature(model.forward).parameters
        self._cache_kw = "cache" if "cache" in sig else "past_key_values"
        self._keep = "logits_to_keep" in sig

    def forward(
        self, ids: Tensor, attention_mask: Tensor | None, position_ids: Tensor, cache: Any
    ) -> tuple[Tensor, Any]:
        """One model call; returns the last position's logits ``[B, V]`` and the (updated) cache."""
        kw: dict[str, Any] = {"input_ids": ids, "position_ids": position_ids, "use_cache": True}
        if attention_mask is not None:
            kw["attention_mask"] = attention_mask
        if cache is not None:
            kw[self._cache_kw] = cache
        if self._keep:
            kw["logits_to_keep"] = 1
        out = self.model(**kw)
        self.calls.append((int(ids.shape[0]), int(ids.shape[1])))
        new_cache = getattr(out, "cache", None)
        if new_cache is None:
            new_cache = getattr(out, "past_key_values", None)
        return out.logits[:, -1, :], new_cache

    def rollout(self, rows: Tensor, first: Tensor, length: int) -> tuple[Tensor, Tensor]:
        """Extend rows greedily from the current cache, on a copy of it.

        Args:
            rows: ``[n]`` int64, the batch rows to branch from.
            first: ``[n, C]`` int64, the candidate tokens fed after each row's prefix.
            length: how many greedy tokens to add after each candidate.

        Returns:
            ``(logprobs, alive)``, both ``[n, C, length]``: log p of each greedy lookahead token,
            and whether it counts (False after the candidate or a lookahead token was EOS).
            Costs ``length`` model calls of ``n * C`` rows x 1 token; the cache is untouched.
            The output projection reads its weight once per call for all rows (:class:`_SkinnyHead`).
        """
        n, C = first.shape
        idx = rows.to(self.device).repeat_interleave(C)
        cache = _fork_cache(self.cache, idx)
        mask = None if self.attention_mask is None else self.attention_mask[idx]
        pos = self.next_pos[idx]
        tok = first.reshape(-1).to(self.device)
        alive = ~torch.isin(tok, self.eos)
        lps, alives = [], []
        with _SkinnyHead(self.model, n * C):  # n * C rows of one token: W read once, not n * C times
            for _ in range(length):
                if mask is not None:
                    mask = torch.cat([mask, mask.new_ones(mask.shape[0], 1)], dim=1)
                logits, cache = self.forward(tok[:, None], mask, pos[:, None], cache)
                st = logit_stats(logits, k=0)
                tok = st.argmax
                lps.append(st.max_logprob)
                alives.append(alive)
                alive = alive & ~torch.isin(tok, self.eos)
                pos = pos + 1
        return torch.stack(lps, -1).view(n, C, length), torch.stack(alives, -1).view(n, C, length)


def _encode(tokenizer: Any, prompts: Sequence[str], chat: bool) -> list[list[int]]:
    if chat and getattr(tokenizer, "chat_template", "") is None:
        raise ValueError("chat=True, but this tokenizer has no chat template (a base model?); leave chat off")
    out = []
    for p in prompts:
        if chat:
            msgs = [{"role": "user", "content": p}]
            text = tokenizer.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
            ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        else:
            ids = tokenizer(p)["input_ids"]
        if len(ids) == 0:
            raise ValueError(f"prompt {p!r} tokenises to no tokens; give a non-empty prompt")
        out.append(list(ids))
    return out


def _left_pad(rows: list[list[int]], pad_id: int) -> tuple[Tensor, Tensor]:
    T = max(len(r) for r in rows)
    ids = torch.full((len(rows), T), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), T), dtype=torch.long)
    for b, r in enumerate(rows):
        ids[b, T - len(r) :] = torch.tensor(r, dtype=torch.long)
        mask[b, T - len(r) :] = 1
    return ids, mask


def _eos_ids(eos_token_id: Any, model: Any, tokenizer: Any) -> list[int]:
    if eos_token_id is not None:
        vals = [eos_token_id] if isinstance(eos_token_id, int) else list(eos_token_id)
        if any(isinstance(v, bool) or not isinstance(v, int) for v in vals):
            raise TypeError(f"eos_token_id must be an int or a list of ints (or [] for none), got {eos_token_id!r}")
        return vals
    vals: list[int] = []
    gc = getattr(model, "generation_config", None)
    for src in (getattr(gc, "eos_token_id", None), getattr(tokenizer, "eos_token_id", None)):
        if src is None:
            continue
        vals.extend([src] if isinstance(src, int) else list(src))
    return sorted(set(vals))


def _pieces(tokenizer: Any, ids: list[int]) -> list[str]:
    """The text each token adds (incremental decode, so the pieces concatenate to the text)."""
    out, prev = [], ""
    for t in range(len(ids)):
        cur = tokenizer.decode(ids[: t + 1], skip_special_tokens=False)
        out.append(cur[len(prev) :] if cur.startswith(prev) else tokenizer.decode([ids[t]], skip_special_tokens=False))
        prev = cur
    return out


def _model_name(model: Any) -> str:
    name = getattr(model, "name_or_path", None) or getattr(getattr(model, "config", None), "_name_or_path", None)
    return str(name) if name else type(model).__name__


def _inputs(model: Any, tokenizer_or_ids: Any, prompts: Any, attention_mask: Tensor | None, stops: list[str],
            eos_token_id: Any, chat: bool) -> tuple[Any, Tensor, Tensor, list[str] | None, list[int], int]:
    """Check and tokenise the prompts: ``(tokenizer, ids [B, T], mask [B, T], prompt_text, eos ids, pad id)``."""
    if isinstance(tokenizer_or_ids, Tensor):
        tokenizer = None
        ids = tokenizer_or_ids
        if prompts is not None:
            raise ValueError("prompts is given but tokenizer_or_ids is a tensor of ids; pass a tokenizer instead")
        if ids.dim() != 2 or ids.shape[0] == 0 or ids.shape[1] == 0:
            raise ValueError(f"tokenizer_or_ids must be [B, T] prompt ids with B, T >= 1, got {tuple(ids.shape)}")
        if ids.dtype.is_floating_point or ids.dtype == torch.bool:
            raise TypeError(f"tokenizer_or_ids must hold integer ids, got {ids.dtype}")
        ids = ids.long()
        if attention_mask is None:
            mask = torch.ones_like(ids)
        else:
            if tuple(attention_mask.shape) != tuple(ids.shape):
                raise ValueError(f"attention_mask must have the shape of the ids {tuple(ids.shape)}, "
                                 f"got {tuple(attention_mask.shape)}")
            mask = attention_mask.long()
            if bool(((mask != 0) & (mask != 1)).any()):
                raise ValueError("attention_mask must hold only 0 and 1")
            if bool((mask[:, 1:] < mask[:, :-1]).any()) or bool((mask[:, -1] == 0).any()):
                raise ValueError("attention_mask must be left-padded (0s then 1s, the last column all 1)")
        if stops:
            raise ValueError("stop strings need a tokenizer: pass the tokenizer and prompts instead of ids")
        prompt_text = None
    else:
        tokenizer = tokenizer_or_ids
        if attention_mask is not None:
            raise ValueError("attention_mask goes with prompt ids, not with a tokenizer (it pads the prompts itself)")
        if prompts is None:
            raise ValueError("prompts is required with a tokenizer (a str or a list of str)")
        prompt_text = [prompts] if isinstance(prompts, str) else list(prompts)
        if not prompt_text or any(not isinstance(p, str) for p in prompt_text):
            raise ValueError(f"prompts must be a str or a non-empty list of str, got {prompts!r}")

    eos_list = _eos_ids(eos_token_id, model, tokenizer)
    pad_id = getattr(tokenizer, "pad_token_id", None)
    if pad_id is None:
        pad_id = getattr(getattr(model, "generation_config", None), "pad_token_id", None)
    if pad_id is None:
        pad_id = eos_list[0] if eos_list else 0
    if isinstance(pad_id, (list, tuple)):
        pad_id = pad_id[0]
    if tokenizer is not None:
        ids, mask = _left_pad(_encode(tokenizer, prompt_text, chat), int(pad_id))
    return tokenizer, ids, mask, prompt_text, eos_list, int(pad_id)


@torch.no_grad()
def generate(
    model: Any,
    tokenizer_or_ids: Any,
    prompts: str | Sequence[str] | None = None,
    *,
    max_new_tokens: int = 64,
    strategy: str | Strategy = "greedy",
    k: int = 15,
    eos_token_id: int | Sequence[int] | None = None,
    stop: str | Sequence[str] | None = None,
    hook: Callable[[int, LogitStats, Tensor], Any] | None = None,
    attention_mask: Tensor | None = None,
    generator: torch.Generator | None = None,
    chat: bool = False,
    kv_budget: float | int | None = None,
    kv_scorer: Any = "snapkv",
    kv_sinks: int = 4,
    kv_window: int = 32,
    kv_every: int | None = None,
    extra: bool = False,
    **strategy_kwargs: Any,
) -> Trace:
    """Generate up to ``max_new_tokens`` per row, recording every step's uncertainty.

    Args:
        model: a causal LM (``transformers`` or compatible, see the module doc).
        tokenizer_or_ids: a tokenizer (then ``prompts`` is a str or a list of str, tokenised with
            the tokenizer's special tokens and left-padded; the chat template is applied only
            when ``chat=True``), or ``[B, T]`` integer prompt ids (left-padded, with
            ``attention_mask`` ``[B, T]`` of 0/1 when there is padding).
        prompts: the prompt(s), with a tokenizer only.
        max_new_tokens: >= 1.
        strategy: a name (``"greedy"``, ``"sample"``, ``"top-h"``, ``"entropy-gated"``,
            ``"adadec"``) whose arguments come from ``**strategy_kwargs``, or a :class:`Strategy`.
        k: alternatives recorded per token (``trace.topk_ids``), 0 <= k <= V.
        eos_token_id: id(s) that end a row; None takes the model's generation config and the
            tokenizer's EOS; ``[]`` disables EOS.
        stop: string(s) that end a row once they appear in its decoded new text (the text
            keeps the stop string, as Hugging Face does). Needs a tokenizer.
        hook: ``hook(step, stats, tokens)`` after every step, with the step's ``LogitStats``
            (``[B]`` fields) and the chosen ids ``[B]`` (pad for finished rows). If it
            returns True, generation stops after this step.
        attention_mask: ``[B, T]`` with prompt ids only.
        generator: ``torch.Generator`` for the sampling strategies.
        chat: apply the tokenizer's chat template to each prompt (one user turn).
        kv_budget: KV-cache eviction (:mod:`fuq.kv`): a float in (0, 1] keeps that share of the tokens
            each row has seen, an int that many tokens per row; None (default) never evicts, and
            1.0 gives exactly the tokens of None.
        kv_scorer: which tokens to keep: a name of ``fuq.kv.SCORERS`` (``"snapkv"``, ``"h2o"``,
            ``"tova"``, ``"knorm"``, ``"streaming"``, ``"entropy-budget"``, ``"uncertain"``) or a
            ``fuq.kv.Scorer``.
        kv_sinks: first tokens of every row always kept (4).
        kv_window: most recent tokens always kept (32).
        kv_every: evict every n decode steps (0: only after the prefill); None: the scorer's
            default (SnapKV: after the prefill only; the others: every step).
        extra: also record, per token, the vocabulary sums of the density-free scores
            (``trace.vocab_logprob_sum``, ``power_sum``, ``sqrt_sum``: see
            :func:`fuq.trace.density_free_sums`, lm-polygraph's alpha 0.5 at temperature 2),
            which ``fuq.scores.self_certainty``, ``renyi_neg`` and ``fisher_rao`` read. Greedy,
            the entropy-gated strategy and AdaDec get them from their own ``fuq.logit_stats``
            pass (``extra=True``); the others from one more fused pass over the step's logits.

    Returns:
        a :class:`~fuq.trace.Trace` ``[B, T_new]``: chosen ids, mask (False after a row ended),
        the step stats of the model's distribution (``token_logprob`` = log p of the chosen
        token), and with a tokenizer ``tokens`` (the text piece of every token), ``prompt``
        and ``text`` (special tokens skipped). ``meta`` holds the strategy, its arguments and
        counters, the model name, ``wall_s``, ``tokens_per_s``, ``model_calls`` and
        ``model_tokens`` (tokens fed to the model, prompt included), ``cache_bytes`` (bytes of the
        KV cache after every model call, measured on its tensors) and, with ``kv_budget``, ``kv``
        (the policy's settings, evictions, scorer time, live slots per step and ``kept_prompt``:
        per prompt token, the share of full-attention KV heads that still hold it).

    Example:
        >>> model, tok = fuq.models.load("smollm2")  # doctest: +SKIP
        >>> tr = fuq.generate(model, tok, "The capital of France is", max_new_tokens=8)  # doctest: +SKIP
        >>> tr.text[0], tr.token_logprob[0].exp()  # doctest: +SKIP
    """
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be an int >= 1, got {max_new_tokens!r}")
    if isinstance(k, bool) or not isinstance(k, int) or k < 0:
        raise ValueError(f"k must be an int >= 0, got {k!r}")
    strat = make_strategy(strategy, **strategy_kwargs)
    if kv_budget is not None and isinstance(strat, AdaDec):
        raise ValueError("kv_budget does not combine with strategy 'adadec' (its rollouts fork the cache)")
    stops = [stop] if isinstance(stop, str) else list(stop or [])
    if any(not isinstance(s, str) or not s for s in stops):
        raise ValueError(f"stop must be a non-empty string or a list of them, got {stop!r}")

    tokenizer, ids, mask, prompt_text, eos_list, pad_id = _inputs(
        model, tokenizer_or_ids, prompts, attention_mask, stops, eos_token_id, chat
    )

    device = next(model.parameters()).device
    ids, mask = ids.to(device), mask.to(device)
    st = DecodeState(model, k, generator, torch.tensor(eos_list, dtype=torch.long, device=device), device)
    if extra:
        st.stats_kw = dict(DENSITY_FREE_STATS_KW)
    if kv_budget is not None:
        from .kv import KVPolicy

        st.kv = KVPolicy(model, kv_scorer, kv_budget, sinks=kv_sinks, window=kv_window, every=kv_every)
        st.kv.attach()
    try:
        run = _Run(B=ids.shape[0], pad_id=int(pad_id), tokenizer=tokenizer, stops=stops)
        strat.start()
        t0 = time.perf_counter()
        logits = _prefill(st, ids, mask)
        t_prefill = time.perf_counter() - t0
        for step in range(max_new_tokens):
            st.step = step
            nxt, stats = _choose(strat, logits, st, run.pad_id)
            if extra:  # from the strategy's own stats pass when it kept the sums, else one fused pass
                if getattr(stats, "sum_logp", None) is not None and stats.sum_logp.shape == logits.shape[:-1]:
                    run.extra.append(density_free_from_stats(stats, int(logits.shape[-1])))
                else:
                    run.extra.append(density_free_sums(logits, **DENSITY_FREE_DEFAULTS))
                run.vocab_size = int(logits.shape[-1])
            if _record(run, st, step, stats, nxt, hook) or step == max_new_tokens - 1:
                break
            logits = _decode(st, nxt, stats)
        wall = time.perf_counter() - t0
    finally:
        if st.kv is not None:
            st.kv.detach()
    return _finish(run, st, strat, model, tokenizer, prompt_text, ids, mask,
                   dict(max_new_tokens=max_new_tokens, k=k, eos_token_id=eos_list, stop=stops),
                   wall, t_prefill)


class _Run:
    """What the loop records: the step stats, chosen ids, live masks and the decoded rows."""

    def __init__(self, B: int, pad_id: int, tokenizer: Any, stops: list[str]) -> None:
        self.B, self.pad_id, self.tokenizer, self.stops = B, pad_id, tokenizer, stops
        self.steps: list[LogitStats] = []
        self.chosen: list[Tensor] = []
        self.masks: list[Tensor] = []
        self.gen: list[list[int]] = [[] for _ in range(B)]
        self.extra: list[tuple[Tensor, Tensor, Tensor]] = []  # density-free sums per step (extra=True)
        self.vocab_size = 0


def _feed(st: DecodeState, ids: Tensor, position_ids: Tensor, phase: str, entropy: Tensor | None = None) -> Tensor:
    """One model call on the main sequence, with the KV policy's hook around it (evict)."""
    if st.kv is not None:
        st.kv.before(position_ids, st.attention_mask, entropy)
    logits, st.cache = st.forward(ids, st.attention_mask, position_ids, st.cache)
    if st.kv is not None:
        st.kv.after(st.cache, phase)
    st.cache_bytes.append(cache_bytes(st.cache))
    return logits


def _prefill(st: DecodeState, ids: Tensor, mask: Tensor) -> Tensor:
    """Run the prompt once; returns the last logits ``[B, V]``."""
    st.finished = torch.zeros(ids.shape[0], dtype=torch.bool, device=st.device)
    # Like Hugging Face: positions count real tokens; an all-ones mask is not passed at all.
    pos = (mask.cumsum(-1) - 1).masked_fill(mask == 0, 0)
    st.attention_mask = None if bool(mask.all()) else mask
    st.next_pos = mask.sum(-1)
    return _feed(st, ids, pos, "prefill")


def _choose(strat: Strategy, logits: Tensor, st: DecodeState, pad_id: int) -> tuple[Tensor, LogitStats]:
    """The strategy's pick; finished rows get the pad id."""
    nxt, stats = strat.choose(logits, st)
    live = ~st.finished
    nxt = torch.where(live, nxt.to(st.device), torch.full_like(nxt, pad_id, device=st.device))
    return nxt, stats


def _record(run: _Run, st: DecodeState, step: int, stats: LogitStats, nxt: Tensor, hook: Any) -> bool:
    """Record the step, apply EOS, stop strings and the user hook; True when generation ends."""
    live = ~st.finished
    run.steps.append(stats)
    run.chosen.append(nxt)
    run.masks.append(live)
    stop_now = bool(hook(step, stats, nxt)) if hook is not None else False
    st.finished = st.finished | (live & torch.isin(nxt, st.eos))
    if run.tokenizer is not None:
        nl, ll = nxt.tolist(), live.tolist()
        for b in range(run.B):
            if ll[b]:
                run.gen[b].append(nl[b])
        if run.stops:
            for b in range(run.B):
                if ll[b] and not bool(st.finished[b]):
                    text = run.tokenizer.decode(run.gen[b], skip_special_tokens=False)
                    if any(s in text for s in run.stops):
                        st.finished[b] = True
    return stop_now or bool(st.finished.all())


def _decode(st: DecodeState, nxt: Tensor, stats: LogitStats) -> Tensor:
    """Feed the chosen tokens at their original positions; returns the next logits."""
    B = nxt.shape[0]
    if st.attention_mask is not None:
        st.attention_mask = torch.cat([st.attention_mask, st.attention_mask.new_ones(B, 1)], dim=1)
    logits = _feed(st, nxt[:, None], st.next_pos[:, None], "decode", stats.entropy)
    st.next_pos = st.next_pos + 1
    return logits


def _finish(run: _Run, st: DecodeState, strat: Strategy, model: Any, tokenizer: Any, prompt_text: Any,
            ids: Tensor, mask: Tensor, args: dict[str, Any], wall: float, t_prefill: float) -> Trace:
    """The trace and its meta."""
    real = int(torch.stack(run.masks).sum())
    calls = st.calls
    meta: dict[str, Any] = {
        "strategy": strat.name,
        "strategy_args": _jsonable(strat.config()),
        "strategy_report": _jsonable(strat.report()),
        "model": _model_name(model),
        "batch_size": run.B,
        **args,
        "new_tokens": real,
        "wall_s": wall,
        "prefill_s": t_prefill,
        "tokens_per_s": real / wall if wall > 0 else float("nan"),
        "model_calls": len(calls),
        "model_tokens": sum(r * t for r, t in calls),
        "cache_bytes": list(st.cache_bytes),
    }
    if st.kv is not None:
        kv = st.kv.report()
        kv["kept_prompt"] = st.kv.kept_prompt()
        if tokenizer is not None:
            kv["prompt_tokens"] = [_pieces(tokenizer, r[m.bool()].tolist()) for r, m in zip(ids.cpu(), mask.cpu(),
                                                                                             strict=True)]
        meta["kv"] = _jsonable(kv)
    kw: dict[str, Any] = {"meta": meta}
    if run.extra:
        for j, name in enumerate(("vocab_logprob_sum", "power_sum", "sqrt_sum")):
            kw[name] = torch.stack([e[j].cpu() for e in run.extra], dim=1)
        meta["density_free"] = {"vocab_size": run.vocab_size, **DENSITY_FREE_DEFAULTS}
    if tokenizer is not None:
        kw["prompt"] = prompt_text
        kw["text"] = [tokenizer.decode(g, skip_special_tokens=True) for g in run.gen]
        T = len(run.steps)
        kw["tokens"] = [_pieces(tokenizer, g) + [""] * (T - len(g)) for g in run.gen]
    return Trace.from_steps(run.steps, run.chosen, run.masks, **kw)
