"""Make Hugging Face ``model.generate`` sample with ONE fused fuq call, and record uncertainty on the way.

Design
------
Hugging Face builds the processors of a ``generate`` call in
``GenerationMixin._get_logits_processor(generation_config, ...)``: first the
non-sampling processors (repetition penalty, min-length, bad words, the user's own
``logits_processor`` list, …), then, when ``do_sample`` is set, one warper per
sampling knob of the ``GenerationConfig`` (temperature, top-h, top-k, top-p, min-p,
typical, epsilon, eta; each a few passes over the vocabulary, top-p and typical a
full sort), then the watermark and ``LogitNormalization`` if asked for. ``_sample``
then draws ``torch.multinomial(softmax(scores))`` (or takes the argmax).

:func:`patch` replaces that method on ONE model instance, for the duration of a
``with`` block, by a wrapper that

1. calls Hugging Face's own method with a copy of the config whose ``do_sample`` is
   False, which yields every processor except the sampling warpers (so repetition
   penalties, constraints, the user's processors, watermarking and renormalisation
   are kept, untouched, in Hugging Face's order);
2. when ``do_sample`` is set, inserts one :class:`fuq.processors.FusedLogitsWarper`
   built from the same config (:func:`fused_logits_processor`) where the warpers were:
   ``fuq.truncate`` with all knobs at once, in Hugging Face's order, no sort;
3. optionally inserts an :class:`fuq.processors.UncertaintyRecorder`
   (``record=``): first in the list (``record_on="raw"``: the model's own logits, the
   default), just before the fused call (``"pre_warp"``: after penalties and
   constraints), or last (``"processed"``: the distribution actually sampled from).

By default (``sampler="hf"``) Hugging Face's ``_sample`` still draws the token
(softmax + ``torch.multinomial`` on the global RNG), so with the same seed the
patched and the stock model pick the same tokens whenever the kept sets agree
(everywhere but float rounding ties), and greedy decoding is unchanged. That draw
costs a full-vocabulary softmax and an exponential variate per token (about 10 ms
a row at V = 262,144 on a CPU core); ``sampler="fuq"`` removes it: one
``fuq.sample`` call (:class:`fuq.processors.FusedSampler`) truncates and draws by
inverse CDF from a single uniform, returns scores that are finite only at the drawn
token, and the wrapper turns ``do_sample`` off in ``generate``'s private copy of
the config so the loop takes the argmax. Same distribution, another random stream
(reproducible with ``torch.manual_seed`` or ``generator=``).

``generate`` itself is also wrapped while the patch is active, only to reset the
recorder before the call and call ``recorder.finalize(sequences)`` after it, so
``recorder.trace()`` is ready when ``generate`` returns. On exit both instance
attributes are removed again (the class methods show through), also when the block
raises. Only decoder loops that call the processors once per step with the
growing ``input_ids`` are supported for recording (greedy and sampling; not beam
search or assisted decoding, which raise ``ValueError`` when a recorder is given).

Example::

    import fuq.hf
    from fuq.processors import UncertaintyRecorder

    rec = UncertaintyRecorder(k=5)
    with fuq.hf.patch(model, record=rec):
        out = model.generate(ids, do_sample=True, top_p=0.9, temperature=0.7, max_new_tokens=32)
    trace = rec.trace()          # fuq.trace.Trace: entropy, top-5, chosen-token log-prob per token

Importing this module needs ``transformers`` (``pip install fuq[hf]``).
"""

from __future__ import annotations

import contextlib
import copy
import functools
from collections.abc import Iterator
from typing import Any

import torch

try:
    from transformers import GenerationConfig
    from transformers.generation.logits_process import LogitsProcessorList
except ImportError as exc:  # pragma: no cover - exercised only without transformers
    raise ImportError(
        "fuq.hf needs Hugging Face transformers, which is not installed: `pip install fuq[hf]`"
    ) from exc

from . import knobs as _knob_table
from .processors import FusedLogitsWarper, FusedSampler, UncertaintyRecorder

__all__ = ["fused_logits_processor", "patch", "sampling_knobs"]

_RECORD_ON = ("raw", "pre_warp", "processed")
_SAMPLERS = ("hf", "fuq")


def _min_tokens_to_keep(generation_config: GenerationConfig) -> int:
    """Hugging Face's rule: 1, or (number of EOS ids + 1) under beam search."""
    if generation_config.num_beams is not None and generation_config.num_beams > 1:
        eos = getattr(generation_config, "_eos_token_tensor", None)
        if isinstance(eos, list):
            return len(eos) + 1
        if isinstance(eos, torch.Tensor):
            return eos.shape[0] + 1
        return 2
    return 1


def sampling_knobs(generation_config: GenerationConfig) -> dict[str, Any]:
    """The ``fuq.truncate`` knobs Hugging Face's warper chain would apply for this config.

    Follows ``GenerationMixin._get_logits_processor`` exactly: a knob counts when
    Hugging Face would build its warper (``temperature != 1``, ``top_k != 0``,
    ``top_p < 1``, ``typical_p < 1``, ``0 < epsilon_cutoff < 1``, …). Empty when
    ``do_sample`` is not set. Includes ``min_tokens_to_keep``.
    """
    gc = generation_config
    if not gc.do_sample:
        return {}
    knobs: dict[str, Any] = {}
    for kn in _knob_table.KNOBS:  # the knobs with a GenerationConfig field, from the table
        if kn.hf is None:
            continue
        v = getattr(gc, kn.hf, None)
        if v is not None and kn.hf_on(v):
            knobs[kn.name] = kn.type(v)
    knobs["min_tokens_to_keep"] = _min_tokens_to_keep(gc)
    return knobs


@_knob_table.knob_params(_knob_table.FUQ_ONLY)
def fused_logits_processor(
    generation_config: GenerationConfig,
    *,
    backend: str = "auto",
    **fuq_knobs: Any,
) -> FusedLogitsWarper | None:
    """One processor doing all the sampling warpers of ``generation_config`` in one ``fuq.truncate`` call.

    Args:
        generation_config: a Hugging Face ``GenerationConfig`` (``do_sample`` and its
            temperature / top_h / top_k / top_p / min_p / typical_p / epsilon_cutoff /
            eta_cutoff are read the way ``generate`` reads them).
        {knob_args}
            (fuq's own knobs: no ``GenerationConfig`` field; applied last.)
        backend: as for ``fuq.truncate``.

    Returns:
        A :class:`fuq.processors.FusedLogitsWarper` (``[B, V]`` scores in, ``logits / T``
        with removed tokens at -inf out), or None when nothing would be applied
        (greedy decoding, or sampling with every knob neutral).

    Example:
        >>> cfg = GenerationConfig(do_sample=True, top_p=0.9, temperature=0.7)
        >>> proc = fused_logits_processor(cfg)
        >>> proc.top_p, proc.temperature
        (0.9, 0.7)

        To use it by hand, turn Hugging Face's own warpers off
        (``model.generate(ids, do_sample=True, logits_processor=[proc], top_k=0, top_p=1.0, temperature=1.0)``),
        or let :func:`patch` do it.
    """
    _knob_table.check_names(fuq_knobs, _knob_table.FUQ_ONLY, "fused_logits_processor")
    knobs = sampling_knobs(generation_config)
    if not generation_config.do_sample:
        return None
    proc = FusedLogitsWarper(**knobs, **fuq_knobs, backend=backend)
    return None if proc.is_identity else proc


def _uses_per_step_processors(generation_config: GenerationConfig) -> bool:
    beams = generation_config.num_beams or 1
    assisted = getattr(generation_config, "assistant_early_exit", None) is not None or (
        getattr(generation_config, "prompt_lookup_num_tokens", None) is not None
    )
    return beams == 1 and not assisted


@contextlib.contextmanager
@_knob_table.knob_params(_knob_table.FUQ_ONLY)
def patch(
    model: torch.nn.Module,
    record: UncertaintyRecorder | None = None,
    *,
    record_on: str = "raw",
    sampler: str = "hf",
    generator: torch.Generator | None = None,
    backend: str = "auto",
    **fuq_knobs: Any,
) -> Iterator[torch.nn.Module]:
    """Within the block, ``model.generate`` samples with one fused fuq call instead of HF's warper chain.

    Args:
        model: a Hugging Face model with ``generate`` (``GenerationMixin``).
        record: an :class:`~fuq.processors.UncertaintyRecorder` to run at every step, or None.
        record_on: where the recorder sits: ``"raw"`` (first: the model's logits),
            ``"pre_warp"`` (after penalties / constraints, before temperature and
            truncation) or ``"processed"`` (last: the distribution sampled from; not
            with ``sampler="fuq"``).
        sampler: who draws the token when ``do_sample`` is set. ``"hf"`` (default):
            Hugging Face's ``softmax`` + ``torch.multinomial`` on fuq's truncated scores,
            the same tokens as the stock model for the same seed. ``"fuq"``: one
            ``fuq.sample`` call truncates and draws (:class:`~fuq.processors.FusedSampler`)
            and ``generate``'s loop runs greedy on its one-hot output: no full-vocabulary
            softmax and multinomial (the fastest; same distribution, another random
            stream, reproducible with ``torch.manual_seed`` or ``generator``).
        generator: the ``torch.Generator`` of ``sampler="fuq"`` (None: the default one).
        {knob_args}
            (fuq-only knobs added to the fused call when sampling.)
        backend: as for ``fuq.truncate``.

    Yields:
        the model (patched in place; restored on exit).
    """
    _knob_table.check_names(fuq_knobs, _knob_table.FUQ_ONLY, "fuq.hf.patch")
    if record_on not in _RECORD_ON:
        raise ValueError(f"record_on must be one of {_RECORD_ON}, got {record_on!r}")
    if sampler not in _SAMPLERS:
        raise ValueError(f"sampler must be one of {_SAMPLERS}, got {sampler!r}")
    if sampler == "fuq" and record is not None and record_on == "processed":
        raise ValueError("record_on='processed' needs sampler='hf': with sampler='fuq' the truncated scores are "
                         "never materialised (use record_on='raw' or 'pre_warp')")
    if record is not None and not isinstance(record, UncertaintyRecorder):
        raise TypeError(f"record must be a fuq.processors.UncertaintyRecorder, got {type(record).__name__}")
    if not hasattr(model, "_get_logits_processor") or not hasattr(model, "generate"):
        raise TypeError(f"model must be a Hugging Face generative model, got {type(model).__name__}")
    if record is not None:
        record.recorded_on = record_on

    saved = {name: model.__dict__[name] for name in ("_get_logits_processor", "generate") if name in model.__dict__}
    original_get = model._get_logits_processor
    original_generate = model.generate

    @functools.wraps(original_get)
    def _get_logits_processor(generation_config: GenerationConfig, *args: Any, **kwargs: Any) -> LogitsProcessorList:
        if record is not None and not _uses_per_step_processors(generation_config):
            raise ValueError("fuq.hf.patch(record=...) supports greedy and sampling decoding (num_beams=1) only")
        stock = copy.copy(generation_config)
        stock.do_sample = False  # Hugging Face builds everything but the sampling warpers
        processors = original_get(stock, *args, **kwargs)
        # The watermark and LogitNormalization come after the warpers: insert before them.
        tail = int(generation_config.watermarking_config is not None) + int(
            generation_config.renormalize_logits is True
        )
        at = len(processors) - tail
        if sampler == "fuq" and generation_config.do_sample:
            if (generation_config.num_beams or 1) > 1:
                raise ValueError("fuq.hf.patch(sampler='fuq') supports num_beams=1 only; use sampler='hf'")
            if generation_config.watermarking_config is not None:
                raise ValueError("fuq.hf.patch(sampler='fuq') cannot honour watermarking_config; use sampler='hf'")
            knobs = sampling_knobs(generation_config)
            fused: FusedLogitsWarper | None = FusedSampler(
                **knobs, **fuq_knobs, backend=backend, generator=generator
            )
            # generate() gave us its own copy of the config; _sample reads do_sample from it after this
            # call: greedy argmax over the sampler's one-hot output picks the drawn token.
            generation_config.do_sample = False
        else:
            fused = fused_logits_processor(generation_config, **fuq_knobs, backend=backend)
        if fused is not None:
            processors.insert(at, fused)
        if record is not None:
            if record.eos_token_id is None:
                record.eos_token_id = getattr(generation_config, "_eos_token_tensor", None)
                if record.eos_token_id is None:
                    record.eos_token_id = generation_config.eos_token_id
            where = {"raw": 0, "pre_warp": at, "processed": len(processors)}[record_on]
            processors.insert(where, record)
        return processors

    @functools.wraps(original_generate)
    def generate(*args: Any, **kwargs: Any) -> Any:
        eos_before = None if record is None else record.eos_token_id
        if record is not None:
            record.reset()
        try:
            out = original_generate(*args, **kwargs)
            if record is not None and record.num_steps > 0:
                record.finalize(out)
        finally:
            if record is not None:
                record.eos_token_id = eos_before
        return out

    model._get_logits_processor = _get_logits_processor
    model.generate = generate
    try:
        yield model
    finally:
        for name in ("_get_logits_processor", "generate"):
            if name in saved:
                model.__dict__[name] = saved[name]
            else:
                model.__dict__.pop(name, None)
