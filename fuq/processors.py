"""Hugging Face ``LogitsProcessor`` drop-ins backed by ``fuq.truncate``, and a per-step uncertainty recorder.

The warpers have the names and constructor arguments of Hugging Face's
(``transformers.generation.logits_process``) and validate their arguments the same
way (same exception types and messages), so swapping the import is enough::

    from fuq.processors import TopPLogitsWarper        # was: from transformers import TopPLogitsWarper

Each one makes one ``fuq.truncate`` call: no full-vocabulary sort, float32 out (cast
back to the input dtype). They keep the same tokens as Hugging Face's warpers except
where the choice hinges on a float rounding tie, with one documented difference:
``TopHLogitsWarper`` applies the exact Top-H rule over the whole vocabulary, whereas
Hugging Face's (and the paper's reference code) compute both entropy sums over the
100 most probable tokens only; the two agree when those 100 tokens hold almost all
of the mass. Exact ties follow fuq's one tie rule (``fuq/reference.py``): where a tie
group straddles a top-p / top-h cut, the lower token ids are kept (Hugging Face's top-p
keeps whichever its unstable sort puts first). ``TypicalLogitsWarper`` keeps a tie group at
its cut whole, as Hugging Face's does (``ties="group"``); ``ties="prefix"`` gives
``fuq.truncate``'s prefix rule.

``FusedLogitsWarper`` applies several knobs (temperature, top-h, top-k, top-p, min-p,
typical, epsilon, eta, then top-nσ and p-less) in ONE call, in Hugging Face's order;
``fuq.hf`` builds it from a ``GenerationConfig``.

``UncertaintyRecorder`` returns the scores unchanged and records the
``fuq.LogitStats`` of every step and the token that was chosen, without keeping the
``[B, V]`` scores of past steps.

Importing this module needs ``transformers`` (``pip install fuq[hf]``); ``import fuq``
does not.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

try:
    from transformers.generation.logits_process import LogitsProcessor
except ImportError as exc:  # pragma: no cover - exercised only without transformers
    raise ImportError(
        "fuq.processors needs Hugging Face transformers, which is not installed: `pip install fuq[hf]`"
    ) from exc

from . import _validate
from . import knobs as _knob_table
from . import ops as _ops
from .trace import Trace

__all__ = [
    "TemperatureLogitsWarper",
    "TopKLogitsWarper",
    "TopPLogitsWarper",
    "MinPLogitsWarper",
    "TypicalLogitsWarper",
    "EpsilonLogitsWarper",
    "EtaLogitsWarper",
    "TopHLogitsWarper",
    "TopNSigmaLogitsWarper",
    "PLessLogitsWarper",
    "FusedLogitsWarper",
    "FusedSampler",
    "UncertaintyRecorder",
]

_NEG_INF = -float("inf")


def _truncate(scores: Tensor, filter_value: float, **knobs: Any) -> Tensor:
    """One ``fuq.truncate`` call; the result in the dtype of ``scores``, removed tokens at ``filter_value``."""
    import fuq

    out = fuq.truncate(scores, **knobs)
    if filter_value != _NEG_INF:
        out = out.masked_fill(torch.isneginf(out), filter_value)
    if out.dtype != scores.dtype:
        out = out.to(scores.dtype)
    return out


def _check_min_tokens_to_keep(min_tokens_to_keep: Any) -> int:
    # Hugging Face's wording (TopP / MinP / Typical).
    if not isinstance(min_tokens_to_keep, int) or (min_tokens_to_keep < 1):
        raise ValueError(f"`min_tokens_to_keep` has to be a positive integer, but is {min_tokens_to_keep}")
    return min_tokens_to_keep


class _FuqWarper(LogitsProcessor):
    """Common ``__call__``: ``fuq.truncate`` with the knobs returned by ``_knobs()``."""

    filter_value: float = _NEG_INF
    backend: str = "auto"

    def _knobs(self) -> dict[str, Any]:  # pragma: no cover - abstract
        raise NotImplementedError

    def __call__(self, input_ids: torch.LongTensor, scores: Tensor) -> Tensor:
        """``scores``: ``[B, V]`` float; returns ``[B, V]`` of the same dtype, removed tokens at ``filter_value``."""
        return _truncate(scores, self.filter_value, backend=self.backend, **self._knobs())

    def __repr__(self) -> str:
        knobs = ", ".join(f"{k}={v!r}" for k, v in self._knobs().items())
        return f"{type(self).__name__}({knobs})"


class TemperatureLogitsWarper(_FuqWarper):
    """``scores / temperature`` (as Hugging Face's ``TemperatureLogitsWarper``), float32 inside."""

    def __init__(self, temperature: float):
        if not isinstance(temperature, float) or not (temperature > 0):
            except_msg = (
                f"`temperature` (={temperature}) has to be a strictly positive float, otherwise your next token "
                "scores will be invalid."
            )
            if isinstance(temperature, float) and temperature == 0.0:
                except_msg += " If you're looking for greedy decoding strategies, set `do_sample=False`."
            raise ValueError(except_msg)
        self.temperature = temperature

    def _knobs(self) -> dict[str, Any]:
        return {"temperature": self.temperature}


class TopKLogitsWarper(_FuqWarper):
    """Keep the ``max(top_k, min_tokens_to_keep)`` most probable tokens (ties at the k-th value kept, as HF)."""

    def __init__(self, top_k: int, filter_value: float = _NEG_INF, min_tokens_to_keep: int = 1):
        if not isinstance(top_k, int) or top_k <= 0:
            raise ValueError(f"`top_k` has to be a strictly positive integer, but is {top_k}")
        self.top_k = max(top_k, min_tokens_to_keep)
        self.filter_value = filter_value
        self.min_tokens_to_keep = min_tokens_to_keep

    def _knobs(self) -> dict[str, Any]:
        return {"top_k": self.top_k}


class TopPLogitsWarper(_FuqWarper):
    """Keep the smallest set of most probable tokens whose mass reaches ``top_p`` (nucleus), without a sort."""

    def __init__(self, top_p: float, filter_value: float = _NEG_INF, min_tokens_to_keep: int = 1):
        top_p = float(top_p)
        if top_p < 0 or top_p > 1.0:
            raise ValueError(f"`top_p` has to be a float > 0 and < 1, but is {top_p}")
        self.top_p = top_p
        self.filter_value = filter_value
        self.min_tokens_to_keep = _check_min_tokens_to_keep(min_tokens_to_keep)

    def _knobs(self) -> dict[str, Any]:
        if self.top_p >= 1.0:  # HF keeps everything (its cumulative mass never falls below 0)
            return {"min_tokens_to_keep": self.min_tokens_to_keep}
        if self.top_p <= 0.0:  # HF keeps min_tokens_to_keep tokens: the same as a top-k
            return {"top_k": self.min_tokens_to_keep}
        return {"top_p": self.top_p, "min_tokens_to_keep": self.min_tokens_to_keep}


class MinPLogitsWarper(_FuqWarper):
    """Keep tokens with ``p >= min_p * max p``."""

    def __init__(self, min_p: float, filter_value: float = _NEG_INF, min_tokens_to_keep: int = 1):
        if not (0 <= min_p <= 1.0):
            raise ValueError(f"`min_p` has to be a float in the [0, 1] interval, but is {min_p}")
        self.min_p = min_p
        self.filter_value = filter_value
        self.min_tokens_to_keep = _check_min_tokens_to_keep(min_tokens_to_keep)

    def _knobs(self) -> dict[str, Any]:
        return {"min_p": float(self.min_p), "min_tokens_to_keep": self.min_tokens_to_keep}


class TypicalLogitsWarper(_FuqWarper):
    """Locally typical sampling: keep the tokens whose ``|-log p - H|`` is smallest, up to mass ``mass``.

    ``ties`` names the one way it may differ from ``fuq.truncate(typical_p=...)``:

    * ``"group"`` (default, Hugging Face's ``TypicalLogitsWarper``): the tie group at the cut
      is kept whole, i.e. every token whose key equals the key of the token that reaches
      ``mass`` (a uniform row comes back whole), plus the first ``min_tokens_to_keep`` tokens
      of the order;
    * ``"prefix"`` (``fuq.truncate``'s rule, fuq/reference.py): a prefix of the order
      (key ascending, token id ascending), so of a tie group at the cut only the lower ids
      stay and the mass bound holds exactly.

    The two differ only where a tie group straddles the cut. ``"group"`` costs a second
    ``fuq.truncate`` call when ``min_tokens_to_keep > 1`` and one elementwise pass.
    """

    def __init__(self, mass: float = 0.9, filter_value: float = _NEG_INF, min_tokens_to_keep: int = 1,
                 ties: str = "group"):
        mass = float(mass)
        if not (mass > 0 and mass < 1):
            raise ValueError(f"`typical_p` has to be a float > 0 and < 1, but is {mass}")
        if ties not in ("group", "prefix"):
            raise ValueError(f"`ties` must be 'group' (Hugging Face's rule) or 'prefix' (fuq.truncate's), got {ties!r}")
        self.filter_value = filter_value
        self.mass = mass
        self.min_tokens_to_keep = _check_min_tokens_to_keep(min_tokens_to_keep)
        self.ties = ties

    def _knobs(self) -> dict[str, Any]:
        return {"typical_p": self.mass, "min_tokens_to_keep": self.min_tokens_to_keep}

    def __call__(self, input_ids: torch.LongTensor, scores: Tensor) -> Tensor:
        if self.ties == "prefix":
            return super().__call__(input_ids, scores)
        import fuq

        # The prefix cut's kept tokens are a band of z around lse - H (the keys |z - c| grow
        # away from c on both sides): every token inside the band of the mass cut has a key
        # <= the cut's, so keeping the band keeps the cut's tie group whole.
        cut = fuq.truncate(scores, typical_p=self.mass, backend=self.backend)
        kept = cut > _NEG_INF
        lo = torch.where(kept, cut, torch.full_like(cut, float("inf"))).amin(-1, keepdim=True)
        hi = torch.where(kept, cut, torch.full_like(cut, _NEG_INF)).amax(-1, keepdim=True)
        z = scores.float()
        keep = (z >= lo) & (z <= hi)
        if self.min_tokens_to_keep > 1:  # HF: the first min_tokens_to_keep of the order, whatever the cut
            first = fuq.truncate(scores, typical_p=self.mass, min_tokens_to_keep=self.min_tokens_to_keep,
                                 backend=self.backend)
            keep = keep | (first > _NEG_INF)
        out = torch.where(keep, z, torch.full_like(z, self.filter_value))
        out = torch.where(cut.isnan(), cut, out)  # a row holding NaN / +inf comes back NaN, as fuq.truncate
        return out if out.dtype == scores.dtype else out.to(scores.dtype)

    def __repr__(self) -> str:
        return f"TypicalLogitsWarper(typical_p={self.mass!r}, min_tokens_to_keep={self.min_tokens_to_keep!r}, " \
               f"ties={self.ties!r})"


class EpsilonLogitsWarper(_FuqWarper):
    """Keep tokens with ``p >= epsilon`` (and the ``min_tokens_to_keep`` most probable)."""

    def __init__(self, epsilon: float, filter_value: float = _NEG_INF, min_tokens_to_keep: int = 1):
        epsilon = float(epsilon)
        if epsilon <= 0 or epsilon >= 1:
            raise ValueError(f"`epsilon_cutoff` has to be a float > 0 and < 1, but is {epsilon}")
        min_tokens_to_keep = int(min_tokens_to_keep)
        if min_tokens_to_keep < 1:
            raise ValueError(
                f"`min_tokens_to_keep` has to be a strictly positive integer, but is {min_tokens_to_keep}"
            )
        self.epsilon = epsilon
        self.filter_value = filter_value
        self.min_tokens_to_keep = min_tokens_to_keep

    def _knobs(self) -> dict[str, Any]:
        return {"epsilon": self.epsilon, "min_tokens_to_keep": self.min_tokens_to_keep}


class EtaLogitsWarper(_FuqWarper):
    """Keep tokens with ``p >= min(epsilon, sqrt(epsilon) * exp(-H))`` (eta sampling).

    ``device`` is accepted for compatibility with Hugging Face's signature; fuq keeps
    ``epsilon`` as a Python float (``self.epsilon`` is a 0-d tensor on ``device``, as HF's).
    """

    def __init__(
        self, epsilon: float, filter_value: float = _NEG_INF, min_tokens_to_keep: int = 1, device: str = "cpu"
    ):
        epsilon = float(epsilon)
        if epsilon <= 0 or epsilon >= 1:
            raise ValueError(f"`eta_cutoff` has to be a float > 0 and < 1, but is {epsilon}")
        min_tokens_to_keep = int(min_tokens_to_keep)
        if min_tokens_to_keep < 1:
            raise ValueError(
                f"`min_tokens_to_keep` has to be a strictly positive integer, but is {min_tokens_to_keep}"
            )
        self._eta = epsilon
        self.epsilon = torch.tensor(epsilon, device=device)
        self.filter_value = filter_value
        self.min_tokens_to_keep = min_tokens_to_keep

    def _knobs(self) -> dict[str, Any]:
        return {"eta": self._eta, "min_tokens_to_keep": self.min_tokens_to_keep}


class TopHLogitsWarper(_FuqWarper):
    """Top-H: keep the longest most-probable prefix whose entropy terms ``Σ -p log p`` stay ``<= top_h · H(p)``.

    Exact over the whole vocabulary (``p`` is the full distribution, ``H(p)`` its
    entropy); Hugging Face's ``TopHLogitsWarper`` and the paper's reference code
    renormalise over the 100 most probable tokens and compute both sums there. At
    least one token is kept. Same constructor as Hugging Face's (no ``min_tokens_to_keep``).
    """

    def __init__(self, top_h: float, filter_value: float = _NEG_INF):
        super().__init__()
        if not (0 < top_h <= 1):
            raise ValueError("`top_h` must be in the range (0, 1].")
        self.top_h = top_h
        self.filter_value = filter_value

    def _knobs(self) -> dict[str, Any]:
        return {"top_h": float(self.top_h)}


class TopNSigmaLogitsWarper(_FuqWarper):
    """Top-nσ: keep tokens whose logit is ``>= max - top_n_sigma · σ``, σ the std of the row's finite logits.

    Not in Hugging Face; same conventions as its warpers. Apply it after temperature
    (as fuq's fused call does) or before: the rule is scale-invariant.
    """

    def __init__(self, top_n_sigma: float, filter_value: float = _NEG_INF, min_tokens_to_keep: int = 1):
        top_n_sigma = float(top_n_sigma)
        if not math.isfinite(top_n_sigma) or top_n_sigma < 0:
            raise ValueError(f"`top_n_sigma` has to be a finite float >= 0, but is {top_n_sigma}")
        self.top_n_sigma = top_n_sigma
        self.filter_value = filter_value
        self.min_tokens_to_keep = _check_min_tokens_to_keep(min_tokens_to_keep)

    def _knobs(self) -> dict[str, Any]:
        return {"top_n_sigma": self.top_n_sigma, "min_tokens_to_keep": self.min_tokens_to_keep}


class PLessLogitsWarper(_FuqWarper):
    """p-less: keep tokens with ``p >= Σ p²`` (the row's collision probability). No hyper-parameter."""

    def __init__(self, filter_value: float = _NEG_INF, min_tokens_to_keep: int = 1):
        self.filter_value = filter_value
        self.min_tokens_to_keep = _check_min_tokens_to_keep(min_tokens_to_keep)

    def _knobs(self) -> dict[str, Any]:
        return {"p_less": True, "min_tokens_to_keep": self.min_tokens_to_keep}


class FusedLogitsWarper(_FuqWarper):
    """All sampling knobs in ONE ``fuq.truncate`` call, in Hugging Face's order.

    Equivalent to Hugging Face's chain ``Temperature → TopH → TopK → TopP → MinP →
    Typical → Epsilon → Eta`` (the knobs that are set), then fuq's top-nσ and p-less.
    A knob left at None (``p_less=False``) is skipped. Returns ``logits / temperature``
    (float32 inside, cast back to the input dtype) with the removed tokens at
    ``filter_value``. Build one from a ``GenerationConfig`` with
    :func:`fuq.hf.fused_logits_processor`.

    Example:
        >>> w = FusedLogitsWarper(temperature=0.7, top_p=0.9)            # doctest: +SKIP
        >>> out = w(input_ids, scores)                                    # doctest: +SKIP
    """

    #: the knobs held as attributes (None = not set), from fuq/knobs.py
    _KNOBS = tuple(n for n in _knob_table.NAMES if n not in ("p_less", "min_tokens_to_keep"))

    @_knob_table.with_knob_params
    def __init__(self, *, filter_value: float = _NEG_INF, backend: str = "auto", **knobs: Any):
        _validate.check_backend(backend)
        # unknown names and bad numbers refused here, not at the first step ([B] tensors: at the call)
        _knob_table.resolve(None, **{n: v for n, v in knobs.items() if not isinstance(v, Tensor)})
        for kn in _knob_table.KNOBS:
            setattr(self, kn.name, knobs.get(kn.name, kn.default))
        self.temperature = float(self.temperature)
        self.p_less = bool(self.p_less)
        self.min_tokens_to_keep = _check_min_tokens_to_keep(self.min_tokens_to_keep)
        if self.top_k is not None:
            self.top_k = max(int(self.top_k), self.min_tokens_to_keep)
        self.filter_value = filter_value
        self.backend = backend

    def _knobs(self) -> dict[str, Any]:
        out: dict[str, Any] = {k: getattr(self, k) for k in self._KNOBS if getattr(self, k) is not None}
        if self.p_less:
            out["p_less"] = True
        out["min_tokens_to_keep"] = self.min_tokens_to_keep
        return out

    @property
    def is_identity(self) -> bool:
        """True when no knob is set (temperature 1, nothing to truncate): the call can be skipped."""
        return self.temperature == 1.0 and not self.p_less and all(
            getattr(self, k) is None for k in self._KNOBS if k != "temperature"
        )


class FusedSampler(FusedLogitsWarper):
    """Draw the next token with ``fuq.sample`` (all knobs, one call) and hand it to a greedy loop.

    Returns float32 scores that are ``-inf`` everywhere but ``0`` at the drawn token,
    so the ``argmax`` of a greedy decoding loop picks it: Hugging Face's
    ``softmax`` + ``torch.multinomial`` over the whole vocabulary (about 10 ms per row
    at V = 262,144 on a CPU) is skipped. ``fuq.hf.patch(model, sampler="fuq")`` sets
    this up (it runs ``generate``'s loop with ``do_sample`` turned off). The draw is
    reproducible with ``generator`` (or ``torch.manual_seed`` for the default one) but
    uses another random stream than ``torch.multinomial``, so the tokens differ from
    Hugging Face's for the same seed; the distribution is the same.

    Same knobs as :class:`FusedLogitsWarper`, plus ``generator``.
    """

    def __init__(self, *, generator: torch.Generator | None = None, **knobs: Any):
        super().__init__(**knobs)
        if self.filter_value != _NEG_INF:
            raise ValueError("FusedSampler: filter_value must be -inf (the output marks the drawn token only)")
        self.generator = generator
        self.last_ids: Tensor | None = None  #: ``[B]`` int64, the ids drawn at the latest step

    def __call__(self, input_ids: torch.LongTensor, scores: Tensor) -> Tensor:
        """``scores``: ``[B, V]``; returns ``[B, V]`` float32, 0 at the drawn id of each row, -inf elsewhere."""
        import fuq

        ids, _ = fuq.sample(scores, generator=self.generator, backend=self.backend, **self._knobs())
        self.last_ids = ids
        out = torch.full(scores.shape, _NEG_INF, dtype=torch.float32, device=scores.device)
        return out.scatter_(-1, ids.reshape(-1, 1), 0.0)


class UncertaintyRecorder(LogitsProcessor):
    """A ``LogitsProcessor`` that returns the scores unchanged and records the uncertainty of every step.

    Per step and per sequence it keeps the ``fuq.LogitStats`` of the scores it sees
    (one ``fuq.logit_stats`` pass; ``k`` top alternatives) and the log-probability of
    the token that was chosen, never the ``[B, V]`` scores of past steps: only the
    latest step's scores are referenced, because the token chosen at step t is known
    only at step t + 1 (``input_ids[:, -1]``) or from the final sequences
    (:meth:`finalize`). Processors placed after the recorder must not modify their
    input in place (Hugging Face's do not).

    What it sees depends on where it sits in the processor list. Passed to
    ``generate(logits_processor=[rec])`` it runs after Hugging Face's own non-sampling
    processors (repetition penalty, min-length, …) and before the sampling warpers
    (temperature, top-k, top-p, …): it records the model's distribution as shaped by
    those penalties, before truncation. Under ``fuq.hf.patch(model, record=rec)`` it
    sees the raw model logits by default (``record_on="raw"``); see ``fuq.hf``.

    Args:
        k: top alternatives kept per step (``topk_ids`` / ``topk_logprobs``), ``0 <= k <= V``.
        temperature: stats of ``softmax(scores / temperature)`` (1.0: the model's own distribution).
        eos_token_id: id or ids that end a sequence; tokens after the first one are masked
            out of the trace (``finalize`` can also be given them).
        backend: as for ``fuq.logit_stats``.

    Example:
        >>> rec = UncertaintyRecorder(k=5)                                            # doctest: +SKIP
        >>> out = model.generate(ids, logits_processor=[rec], do_sample=True)         # doctest: +SKIP
        >>> trace = rec.trace(out)              # finalize with the sequences, then a fuq.trace.Trace
    """

    def __init__(
        self,
        k: int = 0,
        temperature: float = 1.0,
        eos_token_id: int | list[int] | Tensor | None = None,
        backend: str = "auto",
    ):
        if isinstance(k, bool) or not isinstance(k, int) or k < 0:
            raise ValueError(f"`k` has to be a non-negative integer, but is {k!r}")
        self.k = k
        self.temperature = _validate.check_temperature(temperature)
        self.backend = _validate.check_backend(backend)
        self.eos_token_id = eos_token_id
        self.recorded_on = "processor list position"
        self.reset()

    # ---- recording -------------------------------------------------------------------------------------------
    def reset(self) -> None:
        """Forget everything (a new ``generate`` call resets automatically)."""
        self._prompt_len: int | None = None
        self._batch: int | None = None
        self._stats: list[_ops.LogitStats] = []
        self._token_logprob: list[Tensor] = []
        self._last_scores: Tensor | None = None
        self._chosen: Tensor | None = None
        self._mask: Tensor | None = None

    def _gather_logprob(self, scores: Tensor, lse: Tensor, tokens: Tensor) -> Tensor:
        z = scores.gather(-1, tokens.reshape(-1, 1).to(torch.int64)).squeeze(-1).float()
        return z / self.temperature - lse

    def __call__(self, input_ids: torch.LongTensor, scores: Tensor) -> Tensor:
        """``input_ids``: ``[B, L]``; ``scores``: ``[B, V]``. Returns ``scores`` itself."""
        B, L = input_ids.shape[0], input_ids.shape[-1]
        if self._prompt_len is None or B != self._batch or L != self._prompt_len + len(self._stats):
            self.reset()  # a new generation (or a new batch) starts
            self._prompt_len, self._batch = L, B
        elif self._last_scores is not None:  # the token chosen at the previous step is input_ids[:, -1]
            self._token_logprob.append(self._gather_logprob(self._last_scores, self._stats[-1].lse, input_ids[:, -1]))
        stats = _ops.logit_stats(scores, k=self.k, temperature=self.temperature, backend=self.backend)
        self._stats.append(stats)
        self._last_scores = scores
        self._chosen = None
        return scores

    @property
    def num_steps(self) -> int:
        """Steps recorded so far."""
        return len(self._stats)

    def finalize(self, sequences: Tensor | Any, eos_token_id: int | list[int] | Tensor | None = None) -> None:
        """Fill in the tokens chosen at every step from the final ``sequences`` (``[B, L + T]``).

        Accepts the tensor or a ``generate`` output with ``.sequences``. Steps beyond the
        returned length (a generation that stopped early or undid a step) are dropped.
        Drops the reference to the last step's scores.
        """
        if hasattr(sequences, "sequences"):
            sequences = sequences.sequences
        if self._prompt_len is None:
            raise RuntimeError("UncertaintyRecorder.finalize: nothing was recorded (was it in the processor list?)")
        if sequences.shape[0] != self._batch:
            raise ValueError(f"sequences has {sequences.shape[0]} rows but {self._batch} were recorded")
        n = min(sequences.shape[-1] - self._prompt_len, len(self._stats))
        if n <= 0:
            raise ValueError(
                f"sequences (length {sequences.shape[-1]}) has no token after the prompt (length {self._prompt_len})"
            )
        chosen = sequences[:, self._prompt_len : self._prompt_len + n].to(torch.int64)
        if len(self._token_logprob) < n:  # the last step's token is known only now
            lp = self._gather_logprob(self._last_scores, self._stats[n - 1].lse, chosen[:, n - 1].to(
                self._last_scores.device))
            self._token_logprob.append(lp)
        del self._stats[n:], self._token_logprob[n:]
        self._last_scores = None
        eos = self.eos_token_id if eos_token_id is None else eos_token_id
        self._chosen = chosen.detach().cpu()
        self._mask = _mask_after_eos(self._chosen, eos)

    def trace(self, sequences: Tensor | Any | None = None, **kw: Any) -> Trace:
        """The recorded steps as a :class:`fuq.trace.Trace` (``[B, T]`` fields, CPU).

        Pass ``sequences`` (or call :meth:`finalize` before) so the chosen tokens are
        known. Extra keyword arguments go to ``Trace`` (``tokens``, ``prompt``, ``text``, ``meta``).
        """
        if sequences is not None:
            self.finalize(sequences)
        if self._chosen is None:
            raise RuntimeError("UncertaintyRecorder.trace: call finalize(sequences) first, or pass the sequences")
        steps = [s._replace(token_logprob=lp) for s, lp in zip(self._stats, self._token_logprob, strict=True)]
        meta = {"recorder": {"k": self.k, "temperature": self.temperature, "recorded_on": self.recorded_on}}
        meta.update(kw.pop("meta", {}) or {})
        return Trace.from_steps(
            steps, list(self._chosen.unbind(1)), mask=list(self._mask.unbind(1)), meta=meta, **kw
        )


def _mask_after_eos(chosen: Tensor, eos: int | list[int] | Tensor | None) -> Tensor:
    """``[B, T]`` bool: True up to and including the first EOS of each row."""
    if eos is None:
        return torch.ones_like(chosen, dtype=torch.bool)
    ids = torch.as_tensor(eos, dtype=torch.int64).reshape(-1).cpu()
    is_eos = torch.isin(chosen, ids)
    before = torch.cumsum(is_eos.to(torch.int64), dim=1) - is_eos.to(torch.int64)  # EOS seen strictly before
    return before == 0
