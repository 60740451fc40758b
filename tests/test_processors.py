"""fuq.processors against Hugging Face's own warpers, and the UncertaintyRecorder against fuq.logit_stats."""

from __future__ import annotations

import pytest
import torch
from helpers import make_logits

import fuq

L = pytest.importorskip("transformers.generation.logits_process")
P = pytest.importorskip("fuq.processors")

# (class name, constructor kwargs): several values per knob, with and without min_tokens_to_keep.
CASES = [
    ("TemperatureLogitsWarper", dict(temperature=0.7)),
    ("TopKLogitsWarper", dict(top_k=50)),
    ("TopKLogitsWarper", dict(top_k=1)),
    ("TopKLogitsWarper", dict(top_k=10, min_tokens_to_keep=20)),
    ("TopPLogitsWarper", dict(top_p=0.9)),
    ("TopPLogitsWarper", dict(top_p=0.5)),
    ("TopPLogitsWarper", dict(top_p=0.3, min_tokens_to_keep=5)),
    ("TopPLogitsWarper", dict(top_p=0.99)),
    ("MinPLogitsWarper", dict(min_p=0.05)),
    ("MinPLogitsWarper", dict(min_p=0.5, min_tokens_to_keep=3)),
    ("TypicalLogitsWarper", dict(mass=0.9)),
    ("TypicalLogitsWarper", dict(mass=0.2, min_tokens_to_keep=4)),
    ("EpsilonLogitsWarper", dict(epsilon=3e-4)),
    ("EpsilonLogitsWarper", dict(epsilon=1e-5, min_tokens_to_keep=3)),
    ("EtaLogitsWarper", dict(epsilon=1e-3)),
    ("EtaLogitsWarper", dict(epsilon=4e-4, min_tokens_to_keep=2)),
]
CASE_IDS = [f"{n}-{'-'.join(f'{k}={v}' for k, v in kw.items())}" for n, kw in CASES]


def _assert_same(got: torch.Tensor, want: torch.Tensor, what: str, want64: torch.Tensor | None = None) -> None:
    """Same kept set (finite entries) and the same values on it.

    ``want64`` is Hugging Face's warper run in float64 on the same input: on a row
    where it and the float32 run disagree, the cut is decided by a float32 rounding
    tie, and fuq may side with either.
    """
    assert got.shape == want.shape and got.dtype == want.dtype, what
    kept_got, kept_want = torch.isfinite(got), torch.isfinite(want)
    bad = (kept_got != kept_want).any(-1)
    if want64 is not None:
        kept64 = torch.isfinite(want64)
        tie = (kept64 != kept_want).any(-1)
        assert tie.float().mean() <= 0.5, f"{what}: too many rounding ties ({int(tie.sum())} rows), pick other inputs"
        bad = bad & ~(tie & (kept_got == kept64).all(-1))
    assert not bad.any(), f"{what}: rows {bad.nonzero().flatten().tolist()} keep other tokens than Hugging Face"
    same = kept_got & kept_want
    assert torch.equal(got[same], want[same]), what
    if (~kept_got).any() and (~kept_want).any():  # the same filter value
        assert torch.equal(got[~kept_got].unique(), want[~kept_want].unique()), what


def _hf(name: str, kw: dict, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Hugging Face's warper on ``x`` (float32 result) and on ``x`` in float64."""
    return getattr(L, name)(**kw)(None, x.clone()), getattr(L, name)(**kw)(None, x.double())


@pytest.mark.parametrize("name, kw", CASES, ids=CASE_IDS)
@pytest.mark.parametrize("kind", ["normal", "llm", "masked"])
def test_warper_matches_hf_v32000(name, kw, kind):
    x = make_logits(4, 32000, torch.float32, kind, seed=11)
    want, want64 = _hf(name, kw, x)
    _assert_same(getattr(P, name)(**kw)(None, x.clone()), want, f"{name}{kw} {kind}", want64)


@pytest.mark.parametrize(
    "name, kw",
    [c for c in CASES if c[1] in ({"top_k": 50}, {"top_p": 0.9}, {"min_p": 0.05}, {"mass": 0.9}, {"epsilon": 1e-3})],
    ids=["top_k", "top_p", "min_p", "typical", "eta"],
)
def test_warper_matches_hf_v262144(name, kw):
    x = make_logits(2, 262144, torch.float32, "llm", seed=5)
    want, want64 = _hf(name, kw, x)
    _assert_same(getattr(P, name)(**kw)(None, x.clone()), want, f"{name}{kw}", want64)


def test_filter_value_and_dtype_follow_hf():
    x = make_logits(3, 5000, torch.float32, "normal", seed=2)
    _assert_same(P.TopPLogitsWarper(0.8, filter_value=-100.0)(None, x), L.TopPLogitsWarper(0.8, filter_value=-100.0)(
        None, x), "filter_value")
    xb = x.to(torch.bfloat16)
    got = P.TopKLogitsWarper(20)(None, xb)
    _assert_same(got, L.TopKLogitsWarper(20)(None, xb), "bfloat16 top-k")


def test_fused_warper_matches_hf_chain():
    x = make_logits(4, 32000, torch.float32, "llm", seed=7)
    fused = P.FusedLogitsWarper(temperature=0.7, top_k=200, top_p=0.9, min_p=0.02, typical_p=0.95, epsilon=1e-4)
    chain = L.LogitsProcessorList([
        L.TemperatureLogitsWarper(0.7), L.TopKLogitsWarper(200), L.TopPLogitsWarper(0.9), L.MinPLogitsWarper(0.02),
        L.TypicalLogitsWarper(0.95), L.EpsilonLogitsWarper(1e-4),
    ])
    _assert_same(fused(None, x.clone()), chain(None, x.clone()), "fused chain")
    assert P.FusedLogitsWarper().is_identity and not P.FusedLogitsWarper(p_less=True).is_identity


def _sharp_logits(B: int, V: int, seed: int) -> torch.Tensor:
    """A head of 20 tokens far above the tail: the top 100 tokens hold all the mass (to float32 precision)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(B, V, generator=g) - 10.0
    head = torch.stack([torch.randperm(V, generator=g)[:20] for _ in range(B)])
    x.scatter_(1, head, 20.0 + 3.0 * torch.rand(B, 20, generator=g))
    return x


@pytest.mark.parametrize("top_h", [0.3, 0.6, 0.9, 0.95])
def test_top_h_matches_hf_when_the_top_100_hold_the_mass(top_h):
    # (top_h = 1 differs by design: HF never keeps more than its 100 candidates, fuq keeps every token.)
    x = _sharp_logits(4, 32000, seed=int(top_h * 10))
    _assert_same(P.TopHLogitsWarper(top_h)(None, x.clone()), L.TopHLogitsWarper(top_h)(None, x.clone()), "top-h")


def test_top_h_is_exact_over_the_vocabulary():
    """On flat rows HF's top-100 approximation differs; fuq follows the exact rule (checked in float64 here)."""
    x = make_logits(3, 2000, torch.float32, "normal", seed=4)
    for top_h in (0.4, 0.8):
        got = P.TopHLogitsWarper(top_h)(None, x.clone())
        logp = torch.log_softmax(x.double(), -1)
        p = logp.exp()
        H = -(p * logp).sum(-1, keepdim=True)
        order = p.argsort(-1, descending=True)
        terms = (-(p * logp)).gather(-1, order).cumsum(-1)
        keep_sorted = terms <= top_h * H
        keep_sorted[:, 0] = True
        keep = torch.zeros_like(keep_sorted).scatter(-1, order, keep_sorted)
        assert torch.equal(torch.isfinite(got), keep), top_h


@pytest.mark.parametrize("n", [0.5, 1.0, 3.0])
def test_top_n_sigma(n):
    x = make_logits(4, 32000, torch.float32, "masked", seed=6)
    got = P.TopNSigmaLogitsWarper(n)(None, x.clone())
    fin = torch.isfinite(x)
    cnt = fin.sum(-1, keepdim=True).double()
    z = torch.where(fin, x.double(), 0.0)
    mean = z.sum(-1, keepdim=True) / cnt
    sigma = (torch.where(fin, (x.double() - mean) ** 2, 0.0).sum(-1, keepdim=True) / (cnt - 1)).sqrt()
    keep = fin & (x.double() >= x.double().amax(-1, keepdim=True) - n * sigma)
    assert torch.equal(torch.isfinite(got), keep)
    assert torch.equal(got[keep], x[keep])


def test_p_less():
    x = make_logits(4, 32000, torch.float32, "llm", seed=8)
    got = P.PLessLogitsWarper()(None, x.clone())
    p = torch.softmax(x.double(), -1)
    keep = p >= (p * p).sum(-1, keepdim=True)
    assert torch.equal(torch.isfinite(got), keep)


BAD = [
    ("TemperatureLogitsWarper", (0.0,)),
    ("TemperatureLogitsWarper", (1,)),
    ("TopKLogitsWarper", (0,)),
    ("TopKLogitsWarper", (2.5,)),
    ("TopPLogitsWarper", (1.5,)),
    ("TopPLogitsWarper", (0.5, -float("inf"), 0)),
    ("MinPLogitsWarper", (-0.1,)),
    ("MinPLogitsWarper", (0.1, -float("inf"), 0)),
    ("TypicalLogitsWarper", (1.0,)),
    ("TypicalLogitsWarper", (0.5, -float("inf"), 0)),
    ("EpsilonLogitsWarper", (0.0,)),
    ("EpsilonLogitsWarper", (1e-3, -float("inf"), 0)),
    ("EtaLogitsWarper", (1.0,)),
    ("EtaLogitsWarper", (1e-3, -float("inf"), 0)),
    ("TopHLogitsWarper", (0.0,)),
    ("TopHLogitsWarper", (1.5,)),
]


@pytest.mark.parametrize("name, args", BAD, ids=[f"{n}{a}" for n, a in BAD])
def test_bad_arguments_raise_like_hf(name, args):
    with pytest.raises(ValueError) as theirs:
        getattr(L, name)(*args)
    with pytest.raises(ValueError) as ours:
        getattr(P, name)(*args)
    assert str(ours.value) == str(theirs.value)


def test_bad_arguments_of_fuq_only_warpers():
    with pytest.raises(ValueError, match="top_n_sigma"):
        P.TopNSigmaLogitsWarper(-1.0)
    with pytest.raises(ValueError, match="min_tokens_to_keep"):
        P.PLessLogitsWarper(min_tokens_to_keep=0)
    with pytest.raises(ValueError, match="temperature"):
        P.FusedLogitsWarper(temperature=0.0)
    with pytest.raises(ValueError, match="k"):
        P.UncertaintyRecorder(k=-1)


# ---- UncertaintyRecorder -------------------------------------------------------------------------------------


def _decode_loop(rec, B=3, V=32000, steps=6, prompt_len=4, eos=None, seed=0):
    """A hand-written decoding loop calling ``rec`` like ``generate`` does; returns the scores and the sequences."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, V, (B, prompt_len), generator=g)
    all_scores = []
    for t in range(steps):
        scores = make_logits(B, V, torch.float32, "llm", seed=seed * 100 + t)
        out = rec(ids, scores)
        assert out is scores  # unchanged, not even copied
        nxt = torch.multinomial(torch.softmax(scores, -1), 1, generator=g).squeeze(1)
        if eos is not None and t == 2:
            nxt[0] = eos
        all_scores.append(scores)
        ids = torch.cat([ids, nxt[:, None]], dim=1)
    return all_scores, ids


@pytest.mark.parametrize("k, temperature", [(0, 1.0), (5, 1.0), (3, 0.7)])
def test_recorder_equals_logit_stats(k, temperature):
    rec = P.UncertaintyRecorder(k=k, temperature=temperature)
    scores, seqs = _decode_loop(rec)
    tr = rec.trace(seqs)
    assert tr.token_ids.shape == (3, 6) and tr.mask.all()
    assert torch.equal(tr.token_ids, seqs[:, 4:])
    for t, s in enumerate(scores):
        want = fuq.logit_stats(s, k=k, tokens=seqs[:, 4 + t], temperature=temperature)
        for name in ("lse", "entropy", "varentropy", "max_logprob", "argmax", "topk_logprobs", "topk_ids", "topk_mass"):
            assert torch.equal(getattr(tr, name)[:, t], getattr(want, name)), (name, t)
        torch.testing.assert_close(tr.token_logprob[:, t], want.token_logprob, atol=2e-5, rtol=1e-5)
    assert tr.topk_ids.shape == (3, 6, k)
    assert rec._last_scores is None  # no [B, V] tensor kept after finalize


def test_recorder_masks_after_eos_and_restarts():
    rec = P.UncertaintyRecorder(k=2, eos_token_id=7)
    _, seqs = _decode_loop(rec, eos=7)
    tr = rec.trace(seqs)
    assert tr.mask[0].tolist() == [True, True, True, False, False, False]
    assert tr.mask[1:].all()
    # a shorter returned sequence (a step undone) drops the extra steps
    rec2 = P.UncertaintyRecorder()
    _, seqs2 = _decode_loop(rec2, steps=5)
    tr2 = rec2.trace(seqs2[:, :-1])
    assert tr2.num_tokens == 4
    # a new loop (shorter input_ids) starts a new record
    _decode_loop(rec2, B=2, steps=2, prompt_len=3, seed=1)
    assert rec2.num_steps == 2
    with pytest.raises(RuntimeError, match="finalize"):
        rec2.trace()


@pytest.mark.subprocess
def test_transformers_is_optional():
    """``import fuq`` does not import transformers; fuq.processors / fuq.hf say how to install it."""
    import subprocess
    import sys

    code = (
        "import sys; sys.modules['transformers'] = None\n"
        "import fuq; assert fuq.truncate is not None\n"
        "for mod in ('fuq.processors', 'fuq.hf'):\n"
        "    try:\n"
        "        __import__(mod)\n"
        "    except ImportError as e:\n"
        "        assert 'pip install fuq[hf]' in str(e), e\n"
        "    else:\n"
        "        raise AssertionError(mod + ' imported without transformers')\n"
        "print('ok')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr[-2000:]
    out = subprocess.run([sys.executable, "-c", "import sys, fuq; print('transformers' in sys.modules)"],
                         capture_output=True, text=True, timeout=120)
    assert out.stdout.strip() == "False", out.stderr[-2000:]
