"""Training-data pruning on the error-uncertainty plane (Q-Tuning, Wang et al. 2025, arXiv:2509.23873).

Every supervised fine-tuning sample gets two numbers from one teacher-forced pass of the
model over its tokens, computed on the **response tokens only**:

* error ``e`` = perplexity of the response, ``exp(mean_i -log p(y_i | x, y_<i))``;
* uncertainty ``u`` = mean predictive entropy of the response positions (nats).

The plane ``(e, u)`` is split into four quadrants:

====  ===============================  ==========================================
Q1    high error, high uncertainty      noise: dropped
Q2    high error, low uncertainty       misconception: kept, ``token_keep`` of its
                                        response tokens stay in the loss
Q3    low error, low uncertainty        already known: dropped
Q4    low error, high uncertainty       calibration: kept whole
====  ===============================  ==========================================

The rule where the paper is ambiguous (the paper bisects on quantile thresholds
without saying how one target fixes both axes, nor where the samples between the
thresholds go; its project page also contradicts itself on which quadrant is noise)
is, here:

1. Each sample's error and uncertainty are replaced by their mid-ranks in the set,
   ``r = (#{values < v} + #{values <= v}) / (2N)`` in ``(0, 1)`` (ties share a rank;
   the ranks of error and of perplexity are the same).
2. One level ``q`` in ``[0, 1]`` sets both axes' thresholds (``α = β = q``): a sample is
   **noise (Q1)** when ``r_e > 1 - q`` and ``r_u > 1 - q`` (both in the top ``q``), and
   **known (Q3)** when ``r_e <= q`` and ``r_u <= q`` (both in the bottom ``q``). The
   two corner boxes grow with ``q``, so the number of survivors falls monotonically
   from ``N`` (``q = 0``) to 0 (``q = 1``); for ``q > 0.5`` the boxes overlap and a
   sample in both is Q1 when ``r_e + r_u > 1``, else Q3.
3. ``q`` is found by bisection as the largest level that keeps at least
   ``K = round(sample_keep · N)`` samples (half up). Ranks are multiples of ``1 / 2N``,
   so the bisection runs exactly over the integers ``2N·q`` in ``[0, 2N]``. When the
   next level would drop several samples at once and overshoot, only as many as needed
   go, the deepest into their corner first (largest ``r_e + r_u`` entering Q1, smallest
   entering Q3; then the earlier sample): exactly ``K`` samples survive.
4. A surviving sample is a **misconception (Q2)** when its error rank exceeds its
   uncertainty rank (``r_e > r_u``), else **calibration (Q4)**. This agrees with the
   thresholds wherever they decide (a survivor with ``r_e > 1 - q`` must have
   ``r_u <= 1 - q``) and splits the middle of the plane along its rank diagonal.
5. In a misconception sample the per-token perplexity ``PPL_i = 1 / p(y_i)`` is
   smoothed by its neighbours, ``s_i = (1 - λ)·PPL_i + λ·(PPL_{i-1} + PPL_{i+1}) / 2``
   (the first and last response tokens average over the one neighbour they have; a
   one-token response has ``s = PPL``), and the ``ceil(token_keep · n)`` tokens with
   the **lowest** ``s_i`` stay in the loss (ties: the earlier token first). The paper's
   page writes the neighbour term without the ``/ 2`` and says "top": the issue's
   formula and "keep the lowest" are followed here.

Kept samples carry a per-token loss mask over their response tokens (all ones for
Q4); dropped samples carry an all-zero mask.

Example:
    >>> import torch
    >>> from fuq.prune._eu_plane import decide
    >>> err = torch.tensor([1.5, 9.0, 2.0, 8.0, 3.0, 7.0])
    >>> unc = torch.tensor([0.5, 4.0, 3.5, 0.7, 1.0, 3.0])
    >>> d = decide(err, unc, sample_keep=0.5)
    >>> d.quadrant, d.keep.tolist()
    (['Q3', 'Q1', 'Q4', 'Q2', 'Q3', 'Q4'], [False, False, True, True, False, True])
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

__all__ = ["eu_plane", "EUPlaneResult", "Decision", "decide", "mid_ranks", "smoothed_ppl", "token_loss_mask"]

#: quadrant -> (name, kept?)
QUADRANTS = {"Q1": ("noise", False), "Q2": ("misconception", True), "Q3": ("known", False), "Q4": ("calibration", True)}


# ---------------------------------------------------------------------------------------------
# the decision: pure functions of the scores


def _rank2(x: Tensor) -> Tensor:
    """Twice-N mid-ranks as integers: ``#{x < v} + #{x <= v}`` in ``[1, 2N - 1]`` (int64); ties share one."""
    s, _ = torch.sort(x)
    return torch.searchsorted(s, x, right=False) + torch.searchsorted(s, x, right=True)


def mid_ranks(x: Tensor) -> Tensor:
    """Mid-ranks of ``x`` ``[N]`` in ``(0, 1)``, float64: ``(#{x < v} + #{x <= v}) / (2N)``; ties share one."""
    x = torch.as_tensor(x, dtype=torch.float64).reshape(-1)
    return _rank2(x).to(torch.float64) / (2 * x.numel())


def _boxes(Re: Tensor, Ru: Tensor, Q: int, two_n: int) -> tuple[Tensor, Tensor]:
    """(in the noise corner, in the known corner) at level q = Q / 2N, on the integer ranks."""
    return (Re > two_n - Q) & (Ru > two_n - Q), (Re <= Q) & (Ru <= Q)


def _n_kept(Re: Tensor, Ru: Tensor, Q: int, two_n: int) -> int:
    hi, lo = _boxes(Re, Ru, Q, two_n)
    return int((~(hi | lo)).sum())


def _bisect_level(Re: Tensor, Ru: Tensor, target: int) -> int:
    """Largest Q in [0, 2N] with at least ``target`` survivors, by bisection (survivors fall as Q grows).

    The ranks are integers in units of 1 / 2N, so the survivor count changes only at
    integer Q and the bisection over Q is exact.
    """
    two_n = 2 * Re.numel()
    lo, hi = 0, two_n  # invariant: kept(lo) >= target (kept(0) = N >= target)
    if _n_kept(Re, Ru, hi, two_n) >= target:
        return hi
    while hi - lo > 1:  # and kept(hi) < target
        mid = (lo + hi) // 2
        if _n_kept(Re, Ru, mid, two_n) >= target:
            lo = mid
        else:
            hi = mid
    return lo


def _edge(x: Tensor, R: Tensor, Q: int) -> float:
    """A value of ``x`` between those of rank <= Q and those above (where the threshold line is drawn)."""
    below, above = x[R <= Q], x[R > Q]
    if below.numel() == 0:
        return float(x.min())
    if above.numel() == 0:
        return float(x.max())
    return 0.5 * (float(below.max()) + float(above.min()))


@dataclass
class Decision:
    """Which samples survive and in which quadrant each lies.

    ``quadrant``: ``"Q1"`` … ``"Q4"`` per sample; ``keep``: ``[N]`` bool; ``level``: the
    bisected ``q``; ``thresholds``: the four lines of the plane in the scores' units
    (``error_lo``, ``error_hi``, ``uncertainty_lo``, ``uncertainty_hi``: the ``q`` and
    ``1 - q`` quantiles of each axis); ``target``: ``round(sample_keep · N)``.
    """

    quadrant: list[str]
    keep: Tensor
    level: float
    thresholds: dict[str, float]
    target: int
    error_rank: Tensor
    uncertainty_rank: Tensor

    def counts(self) -> dict[str, int]:
        """Samples per quadrant."""
        return {q: self.quadrant.count(q) for q in QUADRANTS}


def _check_fraction(x: Any, name: str, allow_zero: bool) -> float:
    if isinstance(x, bool) or not isinstance(x, (int, float)):
        raise TypeError(f"{name} must be a number in {'[0' if allow_zero else '(0'}, 1], got {x!r}")
    x = float(x)
    if not (0.0 <= x <= 1.0) or (x == 0.0 and not allow_zero):
        raise ValueError(f"{name} must be in {'[0' if allow_zero else '(0'}, 1], got {x!r}")
    return x


def decide(error: Tensor, uncertainty: Tensor, *, sample_keep: float = 0.5) -> Decision:
    """Quadrants of the error-uncertainty plane and the survivors, by the rule of this module's docstring.

    Args:
        error: ``[N]`` per-sample perplexity of the response (finite, > 0).
        uncertainty: ``[N]`` per-sample mean entropy (nats, finite).
        sample_keep: fraction of the samples to keep, in ``[0, 1]``.

    Returns:
        :class:`Decision`.
    """
    sample_keep = _check_fraction(sample_keep, "sample_keep", allow_zero=True)
    e = torch.as_tensor(error, dtype=torch.float64).reshape(-1)
    u = torch.as_tensor(uncertainty, dtype=torch.float64).reshape(-1)
    if e.numel() != u.numel():
        raise ValueError(f"error and uncertainty must have the same length, got {e.numel()} and {u.numel()}")
    if e.numel() == 0:
        raise ValueError("no samples to decide on (error is empty)")
    if not (torch.isfinite(e).all() and torch.isfinite(u).all()):
        raise ValueError("error and uncertainty must be finite for every sample")
    N = e.numel()
    target = min(N, math.floor(sample_keep * N + 0.5))
    Re, Ru = _rank2(e), _rank2(u)
    Q = _bisect_level(Re, Ru, target)
    hi, lo = _boxes(Re, Ru, Q, 2 * N)
    if Q < 2 * N:  # several samples reach a corner at level Q + 1: drop the deepest of them to hit the target
        hi2, lo2 = _boxes(Re, Ru, Q + 1, 2 * N)
        extra = int((~(hi | lo)).sum()) - target
        if extra > 0:
            cand = (~(hi | lo) & (hi2 | lo2)).nonzero().flatten()
            depth = torch.maximum(torch.where(hi2, Re + Ru, -1), torch.where(lo2, 4 * N - Re - Ru, -1))[cand]
            # deepest first, then the earlier sample: sort by index, then stably by -depth
            go = cand[torch.sort(-depth, stable=True).indices[:extra]]
            hi[go], lo[go] = hi2[go], lo2[go]
    keep = ~(hi | lo)
    # survivors: Q2 when the error rank exceeds the uncertainty rank, else Q4; dropped: the corner they are in,
    # or by the anti-diagonal when they are in both (q > 0.5)
    dropped_q1 = torch.where(hi & lo, Re + Ru > 2 * N, hi)
    code = torch.where(keep, torch.where(Re > Ru, 2, 4), torch.where(dropped_q1, 1, 3))
    quad = [f"Q{c}" for c in code.tolist()]
    thr = {
        "error_lo": _edge(e, Re, Q),
        "error_hi": _edge(e, Re, 2 * N - Q),
        "uncertainty_lo": _edge(u, Ru, Q),
        "uncertainty_hi": _edge(u, Ru, 2 * N - Q),
    }
    q = Q / (2 * N)
    re, ru = Re.to(torch.float64) / (2 * N), Ru.to(torch.float64) / (2 * N)
    return Decision(quad, keep, q, thr, target, re, ru)


def smoothed_ppl(token_nll: Tensor, lam: float = 0.5) -> Tensor:
    """``s_i = (1 - λ)·PPL_i + λ·mean(PPL of the neighbours)`` with ``PPL_i = exp(nll_i)``, float64 ``[n]``.

    ``token_nll``: ``[n]`` ``-log p`` of each response token (nats). The first and last
    tokens have one neighbour; a single token is its own score.
    """
    p = torch.as_tensor(token_nll, dtype=torch.float64).reshape(-1).exp()
    n = p.numel()
    if n <= 1:
        return p.clone()
    nb = torch.empty_like(p)
    nb[1:-1] = 0.5 * (p[:-2] + p[2:])
    nb[0], nb[-1] = p[1], p[-2]
    return (1 - lam) * p + lam * nb


def token_loss_mask(token_nll: Tensor, token_keep: float = 0.7, lam: float = 0.5) -> Tensor:
    """``[n]`` bool: the ``ceil(token_keep · n)`` tokens of lowest :func:`smoothed_ppl` (earlier first on ties)."""
    s = smoothed_ppl(token_nll, lam)
    n = s.numel()
    m = torch.zeros(n, dtype=torch.bool)
    if n == 0:
        return m
    n_keep = min(n, max(1, math.ceil(token_keep * n - 1e-9)))
    order = torch.sort(s, stable=True).indices
    m[order[:n_keep]] = True
    return m


# ---------------------------------------------------------------------------------------------
# samples -> token ids with the response positions


def _check_text(x: Any, what: str) -> str:
    if not isinstance(x, str):
        raise ValueError(f"{what} must be a string, got {type(x).__name__}")
    return x


def _messages_of(sample: Mapping[str, Any]) -> tuple[list[dict[str, str]], bool] | None:
    """(messages, from_pair) of a sample, or None when it has neither form."""
    if "messages" in sample:
        msgs = sample["messages"]
        if not isinstance(msgs, list) or not msgs:
            raise ValueError("'messages' must be a non-empty list of {'role', 'content'} objects")
        out = []
        for j, m in enumerate(msgs):
            if not isinstance(m, Mapping) or "role" not in m or "content" not in m:
                raise ValueError(f"messages[{j}] must be an object with 'role' and 'content'")
            out.append({"role": _check_text(m["role"], f"messages[{j}].role"),
                        "content": _check_text(m["content"], f"messages[{j}].content")})
        if not any(m["role"] == "assistant" for m in out):
            raise ValueError("'messages' has no 'assistant' turn: nothing to score")
        return out, False
    if "prompt" in sample and "response" in sample:
        p, r = sample["prompt"], sample["response"]
    elif "instruction" in sample and "output" in sample:  # Alpaca
        p, r = sample["instruction"], sample["output"]
        extra = sample.get("input") or ""
        if not isinstance(extra, str):
            raise ValueError(f"'input' must be a string, got {type(extra).__name__}")
        if isinstance(p, str) and extra:
            p = p + "\n\n" + extra
    else:
        return None
    return [{"role": "user", "content": _check_text(p, "prompt")},
            {"role": "assistant", "content": _check_text(r, "response")}], True


def _ids(tokenizer, text: str) -> list[int]:
    return list(tokenizer(text, add_special_tokens=False)["input_ids"]) if text else []


def _segments_chat(tokenizer, msgs: list[dict[str, str]]) -> list[tuple[str, bool]]:
    """The rendered conversation cut into (text, is_response) pieces; assistant turns are responses."""
    render = tokenizer.apply_chat_template
    pieces: list[tuple[str, bool]] = []
    done = ""
    for j, m in enumerate(msgs):
        if m["role"] != "assistant":
            continue
        before = render(msgs[:j], tokenize=False, add_generation_prompt=True) if j else ""
        upto = render(msgs[: j + 1], tokenize=False)
        if not before.startswith(done) or not upto.startswith(before):
            raise ValueError(
                "the tokenizer's chat template does not render a conversation as a prefix of its continuation; "
                "cannot tell the assistant tokens apart"
            )
        pieces += [(before[len(done):], False), (upto[len(before):], True)]
        done = upto
    return pieces


def encode(tokenizer, sample: Mapping[str, Any], *, chat: bool | None = None) -> tuple[list[int], list[bool]]:
    """``(ids, is_response)`` of one sample: the tokens the model reads and which of them are scored.

    ``sample``: ``{"prompt", "response"}``, Alpaca's ``{"instruction", "input", "output"}``, or
    ``{"messages": [{"role", "content"}, …]}`` (every assistant turn is a response).
    ``chat``: render with the tokenizer's chat template (None: when it has one). Without a
    template a pair is ``BOS + prompt + response + EOS`` (EOS scored as part of the response).
    Each piece is tokenised on its own, so a token never straddles prompt and response.
    """
    if not isinstance(sample, Mapping):
        raise ValueError(f"a sample must be an object, got {type(sample).__name__}")
    got = _messages_of(sample)
    if got is None:
        raise ValueError("a sample needs 'prompt' and 'response', 'instruction' and 'output', or 'messages'")
    msgs, from_pair = got
    if not any(m["content"].strip() for m in msgs if m["role"] == "assistant"):
        raise ValueError("the response is empty (only whitespace): no token to score")
    has_template = getattr(tokenizer, "chat_template", None) is not None
    use_chat = has_template if chat is None else chat
    if use_chat and not has_template:
        raise ValueError("chat=True, but the tokenizer has no chat template")
    if use_chat:
        pieces = _segments_chat(tokenizer, msgs)
    elif from_pair:
        pieces = [(msgs[0]["content"], False), (msgs[1]["content"], True)]
    else:
        raise ValueError("'messages' need a tokenizer with a chat template; give 'prompt' and 'response' instead")
    ids: list[int] = []
    resp: list[bool] = []
    bos = getattr(tokenizer, "bos_token_id", None)
    if not use_chat and bos is not None:
        ids.append(bos)
        resp.append(False)
    for text, is_resp in pieces:
        t = _ids(tokenizer, text)
        ids += t
        resp += [is_resp] * len(t)
    eos = getattr(tokenizer, "eos_token_id", None)
    if not use_chat and eos is not None:
        ids.append(eos)
        resp.append(True)
    if not resp or resp[0]:  # the first token has no prediction: give it context
        if bos is None:
            raise ValueError("the response starts the sequence and the tokenizer has no BOS token to predict it from")
        ids.insert(0, bos)
        resp.insert(0, False)
    if not any(resp[1:]):
        raise ValueError("the response is empty: no token to score")
    return ids, resp


# ---------------------------------------------------------------------------------------------
# scoring: one batched pass


@dataclass
class Scored:
    """One sample's scores: ``error`` (perplexity), ``uncertainty`` (mean entropy, nats), per-token values."""

    error: float
    uncertainty: float
    token_nll: Tensor  #: [n] float32, -log p of each response token
    token_entropy: Tensor  #: [n] float32
    response_ids: list[int]


def _pad_batch(rows: Sequence[tuple[list[int], list[bool]]], pad_id: int) -> tuple[Tensor, Tensor, Tensor]:
    L = max(len(r[0]) for r in rows)
    ids = torch.full((len(rows), L), pad_id, dtype=torch.long)
    att = torch.zeros((len(rows), L), dtype=torch.long)
    resp = torch.zeros((len(rows), L), dtype=torch.bool)
    for b, (i, r) in enumerate(rows):
        ids[b, : len(i)] = torch.tensor(i, dtype=torch.long)
        att[b, : len(i)] = 1
        resp[b, : len(r)] = torch.tensor(r, dtype=torch.bool)
    return ids, att, resp


def score_batch(model, rows: Sequence[tuple[list[int], list[bool]]], *, pad_id: int = 0) -> list[Scored]:
    """Error and uncertainty of a batch of encoded samples in one forward pass (right-padded).

    The model body runs once over ``[B, L]``; the output layer is applied only at the
    positions that predict a response token, through :func:`fuq.hidden_stats` (never the
    ``[B, L, V]`` logits). Models without the usual structure go through
    :func:`fuq.forced.teacher_forced`.
    """
    from ..forced import lm_head, teacher_forced
    from ..ops import hidden_stats

    try:
        device = next(model.parameters()).device
    except (StopIteration, AttributeError):
        device = torch.device("cpu")
    ids, att, resp = _pad_batch(rows, pad_id)
    ids, att = ids.to(device), att.to(device)
    pred = resp[:, 1:]  # row t of the stats predicts token t + 1
    b_idx, t_idx = pred.nonzero(as_tuple=True)
    tgt = ids[:, 1:][b_idx.to(device), t_idx.to(device)]
    head = lm_head(model)
    with torch.inference_mode():
        if head is not None:
            h = head.body(input_ids=ids, attention_mask=att, use_cache=False).last_hidden_state
            h = h[b_idx.to(device), t_idx.to(device)]
            if head.scale != 1.0:
                h = h * head.scale
            st = hidden_stats(h, head.weight, head.bias, targets=tgt, softcap=head.softcap)
            lp, ent = st.token_logprob, st.entropy
        else:
            st, _ = teacher_forced(model, ids, attention_mask=att)
            sel = (b_idx.to(device), t_idx.to(device))
            lp, ent = st.token_logprob[sel], st.entropy[sel]
    nll, ent = (-lp).float().cpu(), ent.float().cpu()
    out = []
    counts = pred.sum(dim=1).tolist()
    start = 0
    for b, n in enumerate(counts):
        tn, te = nll[start : start + n], ent[start : start + n]
        start += n
        rid = ids[b, 1:][pred[b].to(device)].tolist()
        err = math.exp(float(tn.double().mean()))
        out.append(Scored(err, float(te.double().mean()), tn, te, rid))
    return out


# ---------------------------------------------------------------------------------------------
# the public door


@dataclass
class EUPlaneResult:
    """What :func:`eu_plane` decided, per sample (lists of length N) and for the set.

    ``error`` ``[N]`` float64 perplexities; ``uncertainty`` ``[N]`` float64 mean entropies (nats);
    ``quadrant`` ``"Q1"``…``"Q4"``; ``keep`` ``[N]`` bool; ``loss_mask``: per sample a ``[n_i]`` bool
    over its response tokens (``response_ids``); ``decision``: the :class:`Decision` (level ``q``,
    thresholds).
    """

    error: Tensor
    uncertainty: Tensor
    quadrant: list[str]
    keep: Tensor
    loss_mask: list[Tensor]
    response_ids: list[list[int]]
    decision: Decision
    token_nll: list[Tensor] = field(repr=False, default_factory=list)

    def kept_token_fraction(self) -> float:
        """Response tokens left in the loss over all response tokens of the set."""
        n = sum(m.numel() for m in self.loss_mask)
        return sum(int(m.sum()) for m in self.loss_mask) / n if n else float("nan")


def _check_args(sample_keep, token_keep, lam, batch_size) -> tuple[float, float, float]:
    sk = _check_fraction(sample_keep, "sample_keep", allow_zero=True)
    tk = _check_fraction(token_keep, "token_keep", allow_zero=False)
    lm = _check_fraction(lam, "lam", allow_zero=True)
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be an int >= 1, got {batch_size!r}")
    return sk, tk, lm


def _max_length(model, max_length: int | None) -> int | None:
    if max_length is not None:
        if isinstance(max_length, bool) or not isinstance(max_length, int) or max_length < 2:
            raise ValueError(f"max_length must be None or an int >= 2, got {max_length!r}")
        return max_length
    cfg = getattr(model, "config", None)
    cfg = getattr(cfg, "get_text_config", lambda: cfg)() if cfg is not None else None
    return getattr(cfg, "max_position_embeddings", None)


def _pad_id(tokenizer) -> int:
    for name in ("pad_token_id", "eos_token_id", "bos_token_id"):
        v = getattr(tokenizer, name, None)
        if isinstance(v, int):
            return v
    return 0


def encode_checked(tokenizer, sample, chat, max_length) -> tuple[list[int], list[bool]]:
    """:func:`encode` plus the length check against ``max_length``."""
    ids, resp = encode(tokenizer, sample, chat=chat)
    if max_length is not None and len(ids) > max_length:
        raise ValueError(f"the sample is {len(ids)} tokens long, more than max_length = {max_length}")
    return ids, resp


def finish(scored: Sequence[Scored], sample_keep: float, token_keep: float, lam: float) -> EUPlaneResult:
    """The decision pass over all samples' scores (no model)."""
    err = torch.tensor([s.error for s in scored], dtype=torch.float64)
    unc = torch.tensor([s.uncertainty for s in scored], dtype=torch.float64)
    d = decide(err, unc, sample_keep=sample_keep)
    masks = []
    for s, q in zip(scored, d.quadrant, strict=True):
        n = s.token_nll.numel()
        if q == "Q2":
            masks.append(token_loss_mask(s.token_nll, token_keep, lam))
        else:
            masks.append(torch.full((n,), q == "Q4", dtype=torch.bool))
    return EUPlaneResult(err, unc, d.quadrant, d.keep, masks, [s.response_ids for s in scored], d,
                         [s.token_nll for s in scored])


def eu_plane(
    model,
    tokenizer,
    samples: Iterable[Mapping[str, Any]],
    *,
    sample_keep: float = 0.5,
    token_keep: float = 0.7,
    lam: float = 0.5,
    batch_size: int = 8,
    chat: bool | None = None,
    max_length: int | None = None,
    progress: bool = False,
) -> EUPlaneResult:
    """Q-Tuning's sample and token pruning of a fine-tuning set, in memory (see :mod:`fuq.prune` for JSONL).

    Args:
        model: a Hugging Face causal LM (the model to be fine-tuned, or a proxy of it).
        tokenizer: its tokenizer.
        samples: dicts ``{"prompt", "response"}``, ``{"instruction", "input", "output"}`` or
            ``{"messages": [...]}``; only response (assistant) tokens are scored.
        sample_keep: fraction of samples kept, ``[0, 1]``.
        token_keep: fraction of a misconception sample's response tokens kept in the loss, ``(0, 1]``.
        lam: neighbour weight λ of the smoothed token score, ``[0, 1]``.
        batch_size: samples per forward pass.
        chat: use the tokenizer's chat template (None: when it has one).
        max_length: longest sample in tokens (None: the model's ``max_position_embeddings``).
        progress: show a rich progress bar.

    Returns:
        :class:`EUPlaneResult`. A sample that cannot be scored raises ``ValueError`` naming its
        index (the JSONL path :func:`fuq.prune.eu_plane_jsonl` reports and skips such lines instead).

    Example:
        >>> res = fuq.prune.eu_plane(model, tok, [{"prompt": "2+2=", "response": "4"}] * 4)  # doctest: +SKIP
        >>> res.quadrant, res.keep  # doctest: +SKIP
    """
    sk, tk, lm = _check_args(sample_keep, token_keep, lam, batch_size)
    if isinstance(samples, (str, bytes, Mapping)):
        raise TypeError("samples must be an iterable of sample dicts, not a single str or dict")
    L = _max_length(model, max_length)
    rows = []
    for i, s in enumerate(samples):
        try:
            rows.append(encode_checked(tokenizer, s, chat, L))
        except ValueError as exc:
            raise ValueError(f"samples[{i}]: {exc}") from exc
    if not rows:
        raise ValueError("samples is empty")
    pad = _pad_id(tokenizer)
    scored: list[Scored | None] = [None] * len(rows)
    bar = _Bar(len(rows), "scoring") if progress else None
    order = sorted(range(len(rows)), key=lambda i: len(rows[i][0]))  # batches of similar lengths: little padding
    for s in range(0, len(rows), batch_size):
        idx = order[s : s + batch_size]
        for i, sc in zip(idx, score_batch(model, [rows[i] for i in idx], pad_id=pad), strict=True):
            scored[i] = sc
        if bar:
            bar.advance(len(idx))
    if bar:
        bar.close()
    for i, s in enumerate(scored):
        if not (math.isfinite(s.error) and math.isfinite(s.uncertainty)):
            raise ValueError(f"samples[{i}]: non-finite scores (error {s.error}, uncertainty {s.uncertainty})")
    return finish(scored, sk, tk, lm)


class _Bar:
    """A rich progress bar (a thin wrapper so callers need not import rich)."""

    def __init__(self, total: float, what: str, unit: str = "samples"):
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        cols = [TextColumn(f"{what}"), BarColumn(), TimeRemainingColumn()]
        if unit == "samples":
            cols.insert(2, MofNCompleteColumn())
        else:
            cols.insert(2, TextColumn("{task.percentage:>3.0f}% · {task.fields[info]}"))
        self.p = Progress(*cols, transient=False)
        self.task = self.p.add_task(what, total=total, info="")
        self.p.start()

    def advance(self, n: float, info: str | None = None) -> None:
        self.p.update(self.task, advance=n, **({"info": info} if info is not None else {}))

    def close(self) -> None:
        self.p.stop()
