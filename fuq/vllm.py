"""fuq inside vLLM: logits processors for the samplers vLLM lacks and for per-token uncertainty.

Three processors, each for vLLM's V1 interface (``vllm.v1.sample.logits_processor.LogitsProcessor``,
the one the CPU and the default GPU model runner call) and for the Model Runner V2 interface
(``vllm.v1.worker.gpu.sample.logits_processor.LogitsProcessor``, suffix ``V2``):

* :class:`Truncation` (``TruncationV2``): the fuq sampling knobs per request,
  ``SamplingParams(extra_args={"fuq": {"typical_p": 0.9}})``: ``typical_p``, ``epsilon``,
  ``eta``, ``top_h``, ``top_n_sigma``, ``p_less`` (vLLM has none of them) and ``top_k``,
  ``top_p``, ``min_p``, ``min_tokens_to_keep``, with :func:`fuq.truncate`'s semantics. One
  batched call over the rows that asked; the other rows are untouched.
* :class:`EntropyGate` (``EntropyGateV2``): entropy-gated temperature per request,
  ``extra_args={"fuq_gate": {"tau": 1.5, "temperature": 0.8, "low_temperature": 0.0}}``: a step
  whose entropy (of the model's own distribution, nats) is below ``tau`` is decoded at
  ``low_temperature`` (0: greedy), the others at ``temperature``, whatever the request's vLLM
  temperature (which must be > 0, so that vLLM samples).
* :class:`UncertaintyRecorder` (``UncertaintyRecorderV2``): per-token entropy, varentropy,
  max log-prob, top-k ids / log-probs / mass and the chosen token's log-prob, from one
  :func:`fuq.logit_stats` pass over the raw logits; not argmax-invariant, so vLLM also runs
  it in greedy batches. It writes what it measures to files that :class:`Recording` reads back
  after ``LLM.generate`` (the channel: see below).

Use::

    from vllm import LLM, SamplingParams
    import fuq.vllm as fv

    llm = LLM(model=folder, logits_processors=[fv.UncertaintyRecorder, fv.EntropyGate, fv.Truncation])
    rec = fv.Recording(k=5)
    params = rec.params(SamplingParams(max_tokens=32, extra_args={"fuq": {"typical_p": 0.9}}), len(prompts))
    outputs = llm.generate(prompts, params)
    trace = rec.read(outputs)                   # a fuq.trace.Trace [len(outputs), T]

The channel. In vLLM's default engine mode (V1 multiprocessing) the processors run in the
engine-core process, not in the caller's: nothing they keep in memory reaches the caller, and
vLLM's outputs carry no custom fields. So the recorder writes, for every request that asks for
it (``extra_args={"fuq_record": {"key": ..., "k": 5}}``, which :meth:`Recording.params` adds), a
small file of per-step records under one folder shared by both processes
(``$FUQ_VLLM_DIR``, else ``<tmp>/fuq-vllm-<uid>``); the request carries only a key, never a
path, so a client cannot make a server write elsewhere. Each record is written with ``os.write``
inside ``apply``, i.e. before the step's token is sampled, so everything about a token is on
disk before vLLM hands that token to anyone. Works the same with
``VLLM_ENABLE_V1_MULTIPROCESSING=0`` (one process) and on one machine only (engine and caller
see the same folder). The log-prob of the token chosen at step t is only known at step t + 1
(from the request's output ids); for the last token the recorder keeps the last raw logits row
of each request in a memory-mapped file (``<key>.last``, V float32) that the reader uses.

Everything vLLM is imported lazily: ``import fuq.vllm`` works without vLLM, and the processor
classes are built on first access (``fuq.vllm.Truncation``), subclassing vLLM's own base class.
"""

from __future__ import annotations

import json
import math
import os
import re
import tempfile
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from . import knobs as _knob_table
from . import ops
from . import truncate as _fuq_truncate

# The processor classes (Truncation, EntropyGate, UncertaintyRecorder and their V2 twins) are built on
# first access (module __getattr__), so they are not in __all__: a star import must not need vLLM.
__all__ = [
    "Recording",
    "record_dir",
    "KNOBS",
    "KNOBS_KEY",
    "GATE_KEY",
    "RECORD_KEY",
]

KNOBS_KEY = "fuq"  #: extra_args key of the truncation knobs
GATE_KEY = "fuq_gate"  #: extra_args key of the entropy gate
RECORD_KEY = "fuq_record"  #: extra_args key of the uncertainty recorder

# The knobs a request may give: those of the knob table (fuq/knobs.py) less temperature (vLLM's own
# SamplingParams.temperature applies; a second one here would only confuse).
KNOBS: tuple[str, ...] = tuple(n for n in _knob_table.NAMES if n != "temperature")
_GATE_FIELDS = ("tau", "temperature", "low_temperature")
_RECORD_FIELDS = ("key", "k")
_KEY_RE = re.compile(r"[A-Za-z0-9_-]{1,64}")
_MAX_K = 1024
_SCALAR = (bool, int, float)


# ---------------------------------------------------------------------------------------------------------------------
# Per-request arguments: validated at submission (validate_params), parsed again in the engine
# ---------------------------------------------------------------------------------------------------------------------


def _extra(params: Any, key: str) -> Any:
    extra = getattr(params, "extra_args", None) or {}
    return extra.get(key)


def _check_dict(value: Any, key: str, allowed: tuple[str, ...], strings: tuple[str, ...] = ()) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ValueError(f"extra_args[{key!r}] must be a dict, got {type(value).__name__}")
    bad = sorted(set(value) - set(allowed))
    if bad:
        raise ValueError(f"extra_args[{key!r}]: unknown key(s) {bad}; known: {list(allowed)}")
    for name, v in value.items():
        if v is not None and not isinstance(v, _SCALAR) and name not in strings:
            raise ValueError(f"extra_args[{key!r}][{name!r}] must be a number (or bool), got {type(v).__name__} {v!r}")
    return value


def _knobs_of(params: Any) -> dict[str, Any] | None:
    """The request's fuq knobs (validated by fuq.truncate itself), or None when it gave none."""
    value = _extra(params, KNOBS_KEY)
    if value is None:
        return None
    knobs = {k: v for k, v in _check_dict(value, KNOBS_KEY, KNOBS).items() if v is not None}
    try:  # fuq's own checks: the same errors as fuq.truncate's, on a 1 x 2 row
        _fuq_truncate(torch.zeros(1, 2), **knobs, backend="reference")
    except (TypeError, ValueError) as exc:
        raise ValueError(f"extra_args[{KNOBS_KEY!r}]: {exc}") from None
    return knobs or None


def _gate_of(params: Any) -> tuple[float, float, float] | None:
    """(tau, temperature, low_temperature) of the request's entropy gate, or None."""
    value = _extra(params, GATE_KEY)
    if value is None:
        return None
    g = _check_dict(value, GATE_KEY, _GATE_FIELDS)
    if "tau" not in g:
        raise ValueError(f"extra_args[{GATE_KEY!r}] needs 'tau' (the entropy threshold, nats)")
    tau = float(g["tau"])
    hi = float(g.get("temperature", 1.0))
    lo = float(g.get("low_temperature", 0.0))
    if not math.isfinite(tau) or tau < 0:
        raise ValueError(f"extra_args[{GATE_KEY!r}]['tau'] must be a finite entropy >= 0 (nats), got {g['tau']!r}")
    if not math.isfinite(hi) or hi <= 0:
        raise ValueError(
            f"extra_args[{GATE_KEY!r}]['temperature'] must be finite and > 0, got {g.get('temperature')!r}"
        )
    if not math.isfinite(lo) or lo < 0:
        raise ValueError(
            f"extra_args[{GATE_KEY!r}]['low_temperature'] must be finite and >= 0 (0: greedy), "
            f"got {g.get('low_temperature')!r}"
        )
    t = getattr(params, "temperature", 1.0)
    if t is not None and float(t) < 1e-5:
        raise ValueError(
            f"extra_args[{GATE_KEY!r}] needs SamplingParams.temperature > 0 (vLLM decodes temperature 0 greedily "
            f"and never calls the gate); the gate's own temperatures replace it"
        )
    return tau, hi, lo


def _record_of(params: Any) -> tuple[str, int] | None:
    """(key, k) of the request's uncertainty record, or None."""
    value = _extra(params, RECORD_KEY)
    if value is None:
        return None
    r = _check_dict(value, RECORD_KEY, _RECORD_FIELDS, strings=("key",))
    key = r.get("key")
    if not isinstance(key, str) or not _KEY_RE.fullmatch(key):
        raise ValueError(
            f"extra_args[{RECORD_KEY!r}]['key'] must be 1 to 64 characters of [A-Za-z0-9_-], got {key!r} "
            "(fuq.vllm.Recording.params makes one)"
        )
    k = r.get("k", 0)
    if isinstance(k, bool) or not isinstance(k, int) or not 0 <= k <= _MAX_K:
        raise ValueError(f"extra_args[{RECORD_KEY!r}]['k'] must be an int in [0, {_MAX_K}], got {k!r}")
    if getattr(params, "n", 1) != 1:
        raise ValueError(
            f"extra_args[{RECORD_KEY!r}] needs n = 1 (the n samples of one request would share one key); "
            "submit the prompt n times instead"
        )
    return key, k


# ---------------------------------------------------------------------------------------------------------------------
# The batched work, host-independent (rows of a [B, V] logits tensor)
# ---------------------------------------------------------------------------------------------------------------------


def _truncate_rows(logits: Tensor, rows: list[int], knob_dicts: list[dict[str, Any]], temperatures=None) -> Tensor:
    """Set to -inf, in place, the tokens that ``fuq.truncate(row / T, **knobs)`` removes from each given row.

    The single place where the processors call ``fuq.truncate``: one call over the rows that
    asked, each knob a ``[n]`` tensor of the rows' values (the knob's off-value where a row did
    not give it). Kept tokens keep their logits (vLLM applies its own temperature and sampling
    afterwards); ``temperatures`` (per row, default 1) is the scale the kept set is decided at.
    """
    if not rows:
        return logits
    dev = logits.device

    per_row: dict[str, Any] = {}
    names = {name for knobs in knob_dicts for name in knobs}
    for name in names:
        kn = _knob_table.BY_NAME[name]
        vals = [d.get(name) for d in knob_dicts]
        if kn.type is bool:
            per_row[name] = torch.tensor([bool(v) if v is not None else False for v in vals], device=dev)
        elif kn.type is int:
            per_row[name] = torch.tensor([int(v) if v is not None else int(kn.off) for v in vals], device=dev)
        else:
            per_row[name] = torch.tensor([float(v) if v is not None else kn.off for v in vals],
                                         dtype=torch.float64, device=dev)
    if temperatures is not None and any(float(t) != 1.0 for t in temperatures):
        per_row["temperature"] = torch.tensor([float(t) for t in temperatures], dtype=torch.float64, device=dev)
    idx = torch.tensor(rows, dtype=torch.long, device=dev)
    sub = logits.index_select(0, idx)
    cut = torch.isneginf(_fuq_truncate(sub, **per_row))
    logits.index_copy_(0, idx, sub.masked_fill_(cut, float("-inf")))
    return logits


def _gate_rows(
    logits: Tensor, rows: list[int], gates: list[tuple[float, float, float]], scales: list[float], posts=None
) -> Tensor:
    """Entropy-gated temperature, in place, on the given rows.

    Row j holds ``raw / scales[j]`` (vLLM V1 hands argmax-invariant processors the logits
    divided by the request's temperature: ``scales[j] = T_vllm``; 1 where they are raw). The
    entropy is that of ``softmax(raw)``; a row whose entropy is < tau is decoded at
    ``low_temperature`` (0: only its argmax kept, i.e. greedy), the others at ``temperature``.
    The row written back is ``raw * posts[j] / t`` (``posts[j]``: what vLLM divides by afterwards;
    1 in V1, ``T_vllm`` in Model Runner V2), so that vLLM samples from ``softmax(raw / t)``.
    """
    if not rows:
        return logits
    dev = logits.device
    idx = torch.tensor(rows, dtype=torch.long, device=dev)
    raw = logits.index_select(0, idx).float() * torch.tensor(scales, dtype=torch.float32, device=dev).unsqueeze(-1)
    s = ops.logit_stats(raw)
    tau, hi, lo = (torch.tensor(c, dtype=torch.float32, device=dev) for c in zip(*gates, strict=True))
    post = torch.ones_like(tau) if posts is None else torch.tensor(posts, dtype=torch.float32, device=dev)
    low = s.entropy < tau  # NaN entropy (a dead row) -> False -> the high temperature
    greedy = low & (lo == 0)
    t = torch.where(low, lo, hi)
    out = raw * (post / torch.where(greedy, torch.ones_like(t), t)).unsqueeze(-1)
    if bool(greedy.any()):
        g = greedy.nonzero()[:, 0]
        am = s.argmax[g].unsqueeze(-1)
        out[g] = torch.full_like(out[g], float("-inf")).scatter_(-1, am, out[g].gather(-1, am))
    logits.index_copy_(0, idx, out.to(logits.dtype))
    return logits


# ---------------------------------------------------------------------------------------------------------------------
# The recorder's channel: one folder, two files per request
# ---------------------------------------------------------------------------------------------------------------------

#: columns of one record (float64), then k top ids and k top log-probs
_COLS = ("pos", "prev_token", "prev_logprob", "lse", "entropy", "varentropy", "max_logprob", "argmax", "topk_mass")


def record_dir() -> Path:
    """The recorder's folder, read by :class:`Recording`: ``$FUQ_VLLM_DIR``, else ``<tmp>/fuq-vllm-<uid>``."""
    env = os.environ.get("FUQ_VLLM_DIR")
    uid = os.getuid() if hasattr(os, "getuid") else 0
    return Path(env) if env else Path(tempfile.gettempdir()) / f"fuq-vllm-{uid}"


@dataclass
class _RecState:
    """One recorded request inside the engine."""

    key: str
    k: int
    fd: int
    last: Tensor  # [V] float32, memory-mapped <key>.last: the raw logits of the latest step
    out_ids: list[int] | None  # V1: the request's live output ids list
    prompt_len: int = 0
    prev_pos: int | None = None
    prev_lse: float = float("nan")

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


def _open_record(key: str, k: int, vocab: int, prompt: list[int] | None, out_ids: list[int] | None) -> _RecState:
    folder = record_dir()
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    head = folder / f"{key}.json"
    if not head.exists():  # a request that comes back after preemption keeps its files
        tmp = folder / f".{key}.json.tmp"
        tmp.write_text(json.dumps({"k": k, "vocab": vocab, "prompt_token_ids": list(prompt) if prompt else None}))
        os.replace(tmp, head)
    fd = os.open(folder / f"{key}.rec", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    last_path = folder / f"{key}.last"
    with open(last_path, "ab") as f:
        if f.tell() < vocab * 4:
            f.truncate(vocab * 4)
    last = torch.from_file(str(last_path), shared=True, size=vocab, dtype=torch.float32)
    return _RecState(key=key, k=k, fd=fd, last=last, out_ids=out_ids, prompt_len=len(prompt or ()))


def _record_rows(
    logits: Tensor, rows: list[int], states: list[_RecState], positions: list[int], prev: list[int | None]
):
    """One fuq.logit_stats over the recorded rows; one record per row appended to its file.

    ``positions[j]``: the output index of the token this step chooses for row j; ``prev[j]``:
    the token chosen at the previous step (output index ``positions[j] - 1``) or None.
    """
    if not rows:
        return
    idx = torch.tensor(rows, dtype=torch.long, device=logits.device)
    x = logits.index_select(0, idx).float()
    kmax = max(s.k for s in states)
    st = ops.logit_stats(x, k=kmax)
    cols = torch.stack(
        [st.lse, st.entropy, st.varentropy, st.max_logprob, st.argmax.double(), st.topk_mass.double()], dim=1
    ).double()
    recs = torch.cat([cols, st.topk_ids.double(), st.topk_logprobs.double()], dim=1).cpu()
    x_host = x.cpu()
    for j, s in enumerate(states):
        pos, tok = positions[j], prev[j]
        lp = float("nan")
        if tok is not None and s.prev_pos is not None and s.prev_pos == pos - 1:
            lp = float(s.last[tok]) - s.prev_lse
        else:
            tok = None
        r = recs[j]
        head = torch.tensor([pos, -1 if tok is None else tok, lp], dtype=torch.float64)
        body = [r[:6], r[6 : 6 + s.k], r[6 + kmax : 6 + kmax + s.k]]
        os.write(s.fd, torch.cat([head, *body]).numpy().tobytes())
        s.last.copy_(x_host[j])
        s.prev_pos, s.prev_lse = pos, float(r[0])


# ---------------------------------------------------------------------------------------------------------------------
# The caller's side: keys in, a Trace out
# ---------------------------------------------------------------------------------------------------------------------


@dataclass
class Recording:
    """Asks the recorder for per-token uncertainty and reads it back after ``LLM.generate``.

    Args:
        k: top alternatives kept per token (``topk_ids`` / ``topk_logprobs`` / ``topk_mass``).
        keep_files: leave the files in :func:`record_dir` after :meth:`read` (default: delete).

    Example:
        >>> rec = Recording(k=5)                                                         # doctest: +SKIP
        >>> outs = llm.generate(prompts, rec.params(SamplingParams(max_tokens=16), len(prompts)))  # doctest: +SKIP
        >>> trace = rec.read(outs); trace.entropy                                        # doctest: +SKIP
    """

    k: int = 5
    keep_files: bool = False
    keys: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        if isinstance(self.k, bool) or not isinstance(self.k, int) or not 0 <= self.k <= _MAX_K:
            raise ValueError(f"k must be an int in [0, {_MAX_K}], got {self.k!r}")

    def params(self, sampling_params: Any, n: int | None = None) -> list[Any]:
        """One copy of ``sampling_params`` per prompt (or one per element of a list), each with its own key.

        Pass the list to ``LLM.generate`` in the order of the prompts; :meth:`read` pairs the
        outputs with the keys in that order (and checks the prompt ids).
        """
        base = list(sampling_params) if isinstance(sampling_params, (list, tuple)) else [sampling_params] * int(n or 1)
        out = []
        for p in base:
            q = p.clone() if hasattr(p, "clone") else __import__("copy").deepcopy(p)
            key = uuid.uuid4().hex
            q.extra_args = {**(getattr(q, "extra_args", None) or {}), RECORD_KEY: {"key": key, "k": self.k}}
            self.keys.append(key)
            out.append(q)
        return out

    def read(self, outputs: list[Any], keys: list[str] | None = None):
        """A :class:`fuq.trace.Trace` ``[len(outputs), T]`` aligned with each output's ``token_ids``.

        ``outputs``: vLLM ``RequestOutput`` objects in the order of :meth:`params`' list (the
        oldest keys not yet read; or pass ``keys``). Positions past an output's length are
        masked. A token whose record is missing (a request preempted and resumed right after
        it) has NaN stats; a record whose token differs from vLLM's output raises
        ``RuntimeError`` (the channel is out of step).
        """
        from .trace import Trace

        own = keys is None
        keys = list(self.keys if own else keys)
        if len(keys) < len(outputs):
            raise ValueError(f"{len(outputs)} outputs but {len(keys)} keys: pass the params from Recording.params")
        keys = keys[: len(outputs)]
        if own:  # the oldest unread keys are this batch's; later params() calls keep theirs
            del self.keys[: len(outputs)]
        seqs = [list(o.outputs[0].token_ids) for o in outputs]
        T = max((len(s) for s in seqs), default=0)
        B = len(outputs)
        nan = float("nan")
        f32 = {n: torch.full((B, T), nan) for n in ("lse", "entropy", "varentropy", "max_logprob", "topk_mass")}
        tl = torch.full((B, T), nan)
        argmax = torch.full((B, T), -1, dtype=torch.long)
        topk_ids = torch.full((B, T, self.k), -1, dtype=torch.long)
        topk_lp = torch.full((B, T, self.k), nan)
        ids = torch.zeros((B, T), dtype=torch.long)
        mask = torch.zeros((B, T), dtype=torch.bool)
        folder = record_dir()
        for b, (o, key) in enumerate(zip(outputs, keys, strict=False)):
            toks = seqs[b]
            n = len(toks)
            ids[b, :n] = torch.tensor(toks, dtype=torch.long)
            mask[b, :n] = True
            head_path = folder / f"{key}.json"
            if not head_path.exists():
                raise RuntimeError(
                    f"no uncertainty record for output {b} (key {key}) in {folder}: was fuq.vllm.UncertaintyRecorder "
                    "in LLM(logits_processors=[...]) and is FUQ_VLLM_DIR the same for the engine?"
                )
            head = json.loads(head_path.read_text())
            k = int(head["k"])
            prompt = getattr(o, "prompt_token_ids", None)
            if (
                head.get("prompt_token_ids") is not None
                and prompt is not None
                and list(prompt) != head["prompt_token_ids"]
            ):
                raise RuntimeError(f"output {b}: its prompt ids differ from those recorded under key {key}")
            width = len(_COLS) + 2 * k
            raw = torch.frombuffer(bytearray((folder / f"{key}.rec").read_bytes()), dtype=torch.float64)
            recs = raw.reshape(-1, width) if raw.numel() else raw.reshape(0, width)
            # the last record of a position wins: a request resumed after preemption (V1), or a
            # rejected speculative row (Model Runner V2), is recorded again at the same position
            by_pos = {int(r[0]): r for r in recs}
            last_pos = max(by_pos, default=-1)
            for pos, r in sorted(by_pos.items()):
                if pos >= 1 and pos - 1 < n and int(r[1]) >= 0:
                    if int(r[1]) != toks[pos - 1]:
                        raise RuntimeError(
                            f"output {b}: token {pos - 1} is {toks[pos - 1]} in vLLM's output but {int(r[1])} in the "
                            "record: the record and the output are out of step"
                        )
                    tl[b, pos - 1] = r[2]
                if pos >= n:
                    continue
                for c, name in enumerate(("lse", "entropy", "varentropy", "max_logprob"), start=3):
                    f32[name][b, pos] = r[c]
                argmax[b, pos] = int(r[7])
                f32["topk_mass"][b, pos] = r[8]
                kk = min(k, self.k)
                topk_ids[b, pos, :kk] = r[len(_COLS) : len(_COLS) + kk].long()
                topk_lp[b, pos, :kk] = r[len(_COLS) + k : len(_COLS) + k + kk]
            if n and last_pos == n - 1 and math.isnan(float(tl[b, n - 1])):  # the last token: the kept row
                vocab = int(head["vocab"])
                last = torch.from_file(str(folder / f"{key}.last"), shared=False, size=vocab, dtype=torch.float32)
                tl[b, n - 1] = float(last[toks[n - 1]]) - float(f32["lse"][b, n - 1])
            if not self.keep_files:
                for suffix in (".json", ".rec", ".last"):
                    (folder / f"{key}{suffix}").unlink(missing_ok=True)
        return Trace(
            token_ids=ids,
            mask=mask,
            argmax=argmax,
            topk_ids=topk_ids,
            topk_logprobs=topk_lp,
            token_logprob=tl,
            **f32,
            meta={"source": "vllm", "k": self.k, "keys": keys[:B]},
        )


# ---------------------------------------------------------------------------------------------------------------------
# Batch bookkeeping shared by the processors (vLLM's persistent-batch slots -> per-request state)
# ---------------------------------------------------------------------------------------------------------------------


class _Slots:
    """Per-slot state of one processor; ``make(params, prompt, out_ids)`` returns a state or None."""

    def __init__(self, make, drop=None):
        self.state: dict[int, Any] = {}
        self._make = make
        self._drop = drop or (lambda s: None)

    def set(self, i: int, s: Any) -> None:
        old = self.state.pop(i, None)
        if old is not None:
            self._drop(old)
        if s is not None:
            self.state[i] = s

    def update(self, batch_update: Any) -> None:
        """V1 ``BatchUpdate``: removed, then added, then moved (vLLM's documented order)."""
        if batch_update is None:
            return
        for i in batch_update.removed:
            self.set(i, None)
        for i, params, prompt, out_ids in batch_update.added:
            self.set(i, self._make(params, prompt, out_ids))
        for a, b, direction in batch_update.moved:
            sa, sb = self.state.pop(a, None), self.state.pop(b, None)
            if getattr(direction, "name", str(direction)) == "SWAP":
                if sa is not None:
                    self.state[b] = sa
                if sb is not None:
                    self.state[a] = sb
            else:  # one-way a -> b: b's previous occupant is replaced
                if sb is not None:
                    self._drop(sb)
                if sa is not None:
                    self.state[b] = sa

    def rows(self) -> list[int]:
        return sorted(self.state)


def _vllm_temperature(params: Any) -> float:
    t = getattr(params, "temperature", 1.0)
    return 1.0 if t is None or float(t) < 1e-5 else float(t)


# ---------------------------------------------------------------------------------------------------------------------
# The vLLM classes, built on first access
# ---------------------------------------------------------------------------------------------------------------------


def _build_v1() -> dict[str, type]:
    from vllm.v1.sample.logits_processor import LogitsProcessor as Base

    class Truncation(Base):
        """fuq's sampling knobs per request (``extra_args={"fuq": {...}}``), V1 interface.

        vLLM V1 calls argmax-invariant processors after its temperature and before its own
        top-k / top-p / min-p, only in batches that sample; greedy rows are never changed.
        """

        @classmethod
        def validate_params(cls, sampling_params):
            _knobs_of(sampling_params)

        def __init__(self, vllm_config, device, is_pin_memory):
            self.slots = _Slots(lambda p, prompt, out: _knobs_of(p))

        def is_argmax_invariant(self) -> bool:
            return True  # every knob keeps the most probable token

        def update_state(self, batch_update):
            self.slots.update(batch_update)

        def apply(self, logits: Tensor) -> Tensor:
            rows = [i for i in self.slots.rows() if i < logits.shape[0]]
            return _truncate_rows(logits, rows, [self.slots.state[i] for i in rows])

    class EntropyGate(Base):
        """Entropy-gated temperature per request (``extra_args={"fuq_gate": {"tau": ...}}``), V1 interface."""

        @classmethod
        def validate_params(cls, sampling_params):
            _gate_of(sampling_params)

        def __init__(self, vllm_config, device, is_pin_memory):
            self.slots = _Slots(lambda p, prompt, out: (g, _vllm_temperature(p)) if (g := _gate_of(p)) else None)

        def is_argmax_invariant(self) -> bool:
            return True  # a temperature and a greedy cut both keep the argmax

        def update_state(self, batch_update):
            self.slots.update(batch_update)

        def apply(self, logits: Tensor) -> Tensor:
            rows = [i for i in self.slots.rows() if i < logits.shape[0]]
            st = [self.slots.state[i] for i in rows]
            return _gate_rows(logits, rows, [g for g, _ in st], [t for _, t in st])

    class UncertaintyRecorder(Base):
        """Per-token uncertainty of the requests that ask (``extra_args={"fuq_record": {...}}``), V1 interface.

        Not argmax-invariant (so vLLM runs it in greedy batches too, before its temperature and
        penalties): it sees the raw logits, after only vLLM's allowed-token / bad-word masks and
        the min-tokens / logit-bias processors when a request sets them. Returns the logits unchanged.
        """

        @classmethod
        def validate_params(cls, sampling_params):
            _record_of(sampling_params)

        def __init__(self, vllm_config, device, is_pin_memory):
            self.vocab = int(vllm_config.model_config.get_vocab_size())

            def make(p, prompt, out):
                r = _record_of(p)
                return None if r is None else _open_record(r[0], r[1], self.vocab, prompt, out)

            self.slots = _Slots(make, drop=_RecState.close)

        def is_argmax_invariant(self) -> bool:
            return False

        def update_state(self, batch_update):
            self.slots.update(batch_update)

        def apply(self, logits: Tensor) -> Tensor:
            rows = [i for i in self.slots.rows() if i < logits.shape[0]]
            states = [self.slots.state[i] for i in rows]
            positions = [len(s.out_ids) for s in states]
            prev = [s.out_ids[-1] if s.out_ids and s.out_ids[-1] >= 0 else None for s in states]
            _record_rows(logits, rows, states, positions, prev)
            return logits

    return {"Truncation": Truncation, "EntropyGate": EntropyGate, "UncertaintyRecorder": UncertaintyRecorder}


def _build_v2() -> dict[str, type]:
    """Model Runner V2 (``vllm.v1.worker.gpu.sample.logits_processor``): written against vLLM's source.

    There ``apply(logits, ctx)`` runs after the penalties and before temperature, min-p and
    top-k / top-p, on rows that map to request slots through ``ctx.expanded_idx_mapping``
    (under speculative decoding a request owns one row per draft token).
    """
    from vllm.v1.worker.gpu.sample.logits_processor import LogitsProcessor as Base

    def _row_slots(ctx) -> list[int]:
        return [int(s) for s in ctx.expanded_idx_mapping.tolist()]

    class TruncationV2(Base):
        """fuq's sampling knobs per request, Model Runner V2. The kept set is decided at the
        request's vLLM temperature (vLLM applies it after this processor)."""

        @classmethod
        def validate_params(cls, sampling_params):
            _knobs_of(sampling_params)

        def __init__(self, vllm_config, req_states=None):
            self.state: dict[int, tuple[dict, float]] = {}

        def add_request(self, req_idx, sampling_params) -> bool:
            knobs = _knobs_of(sampling_params)
            self.state.pop(req_idx, None)
            if knobs is not None:
                self.state[req_idx] = (knobs, _vllm_temperature(sampling_params))
            return knobs is not None

        def apply(self, logits: Tensor, ctx) -> Tensor:
            if not self.state:
                return logits
            rows = [(r, s) for r, s in enumerate(_row_slots(ctx)) if s in self.state]
            return _truncate_rows(
                logits, [r for r, _ in rows], [self.state[s][0] for _, s in rows], [self.state[s][1] for _, s in rows]
            )

    class EntropyGateV2(Base):
        """Entropy-gated temperature per request, Model Runner V2 (raw logits in; vLLM divides by
        the request's temperature afterwards, so the gate multiplies by it)."""

        @classmethod
        def validate_params(cls, sampling_params):
            _gate_of(sampling_params)

        def __init__(self, vllm_config, req_states=None):
            self.state: dict[int, tuple] = {}

        def add_request(self, req_idx, sampling_params) -> bool:
            g = _gate_of(sampling_params)
            self.state.pop(req_idx, None)
            if g is not None:
                self.state[req_idx] = (g, _vllm_temperature(sampling_params))
            return g is not None

        def apply(self, logits: Tensor, ctx) -> Tensor:
            if not self.state:
                return logits
            rows = [(r, s) for r, s in enumerate(_row_slots(ctx)) if s in self.state]
            st = [self.state[s] for _, s in rows]
            return _gate_rows(logits, [r for r, _ in rows], [g for g, _ in st], [1.0] * len(rows), [t for _, t in st])

    class UncertaintyRecorderV2(Base):
        """Per-token uncertainty, Model Runner V2: the previous token is the row's input token
        (``ctx.input_ids``), its output index ``ctx.pos + 1 - prompt_len``. Speculative rows
        record their position; a later step's record of the same position replaces it."""

        @classmethod
        def validate_params(cls, sampling_params):
            _record_of(sampling_params)

        def __init__(self, vllm_config, req_states=None):
            self.vocab = int(vllm_config.model_config.get_vocab_size())
            self.req_states = req_states
            self.state: dict[int, _RecState] = {}

        def add_request(self, req_idx, sampling_params) -> bool:
            old = self.state.pop(req_idx, None)
            if old is not None:
                old.close()
            r = _record_of(sampling_params)
            if r is None:
                return True  # it reads every row; nothing to record for this one
            self.state[req_idx] = _open_record(r[0], r[1], self.vocab, None, None)
            return True

        def apply(self, logits: Tensor, ctx) -> Tensor:
            if not self.state:
                return logits
            slots = _row_slots(ctx)
            rows = [r for r, s in enumerate(slots) if s in self.state]
            if not rows:
                return logits
            pos = ctx.pos.tolist()
            inp = ctx.input_ids.tolist()
            plen = self.req_states.prompt_len.np if self.req_states is not None else None
            states, positions, prev = [], [], []
            for r in rows:
                st = self.state[slots[r]]
                p0 = int(plen[slots[r]]) if plen is not None else st.prompt_len
                out_pos = pos[r] + 1 - p0
                states.append(st)
                positions.append(out_pos)
                prev.append(int(inp[r]) if out_pos >= 1 else None)
            _record_rows(logits, rows, states, positions, prev)
            return logits

    return {
        "TruncationV2": TruncationV2,
        "EntropyGateV2": EntropyGateV2,
        "UncertaintyRecorderV2": UncertaintyRecorderV2,
    }


_BUILT: dict[str, type] = {}


def __getattr__(name: str) -> type:
    builders = {
        "Truncation": _build_v1,
        "EntropyGate": _build_v1,
        "UncertaintyRecorder": _build_v1,
        "TruncationV2": _build_v2,
        "EntropyGateV2": _build_v2,
        "UncertaintyRecorderV2": _build_v2,
    }
    if name not in builders:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    if name not in _BUILT:
        try:
            classes = builders[name]()
        except ImportError as exc:
            raise ImportError(
                f"fuq.vllm.{name} needs vLLM ({exc}); see the README's vLLM section for the install"
            ) from exc
        for cname, cls in classes.items():
            cls.__module__ = __name__
            cls.__qualname__ = cname
            _BUILT[cname] = cls
            globals()[cname] = cls
    return _BUILT[name]
