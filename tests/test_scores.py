"""fuq.scores against direct computations (plain Python loops over lists), and fuq.score_text (fuq.forced)."""

from __future__ import annotations

import math

import pytest
import torch

import fuq
from fuq import scores
from fuq.trace import Trace


def make_trace(B: int = 3, T: int = 7, k: int = 16, V: int = 50, seed: int = 0, lengths=None) -> Trace:
    """A Trace built from real logit_stats of random logits, with ragged real lengths."""
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(B, T, V, generator=g) * 2.5
    tokens = torch.randint(0, V, (B, T), generator=g)
    s = fuq.logit_stats(logits, k=k, tokens=tokens)
    lengths = lengths if lengths is not None else [T, max(1, T - 3), 2][:B] + [T] * max(0, B - 3)
    mask = torch.zeros(B, T, dtype=torch.bool)
    for b, n in enumerate(lengths):
        mask[b, :n] = True
    tr = Trace.from_stats(s, tokens, mask)
    # Garbage after the end must not leak into any score.
    for name in ("token_logprob", "max_logprob", "entropy", "varentropy"):
        getattr(tr, name)[~mask] = float("nan")
    tr.topk_logprobs[~mask] = float("nan")
    return tr


def rows(tr: Trace, name: str) -> list[list]:
    """Real-token values of a field, as Python lists per sequence."""
    return [tr.row(b)[name] for b in range(tr.batch_size)]


def close(got: torch.Tensor, want: list[float], rel=1e-5, abs_=1e-5):
    got = got.tolist()
    assert len(got) == len(want)
    for g, w in zip(got, want, strict=True):
        if isinstance(w, float) and math.isnan(w):
            assert math.isnan(g), (got, want)
        else:
            assert g == pytest.approx(w, rel=rel, abs=abs_), (got, want)


def quantile(xs: list[float], q: float) -> float:
    """numpy 'linear' quantile, by hand."""
    xs = sorted(xs)
    h = (len(xs) - 1) * q
    lo = math.floor(h)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (h - lo) * (xs[hi] - xs[lo])


@pytest.fixture(params=[(3, 7, [7, 4, 2]), (2, 5, [5, 5]), (4, 9, [1, 9, 3, 6])], ids=["ragged", "full", "ragged4"])
def trace(request):
    B, T, lengths = request.param
    return make_trace(B=B, T=T, lengths=lengths, seed=B * 10 + T)


def test_sums_and_means(trace):
    tl, ml = rows(trace, "token_logprob"), rows(trace, "max_logprob")
    ent, var = rows(trace, "entropy"), rows(trace, "varentropy")
    close(scores.g_nll(trace), [-sum(r) for r in ml])
    close(scores.nll(trace), [-sum(r) for r in tl])
    close(scores.perplexity(trace), [math.exp(-sum(r) / len(r)) for r in tl], rel=1e-4)
    close(scores.mean_entropy(trace), [sum(r) / len(r) for r in ent])
    close(scores.max_entropy(trace), [max(r) for r in ent])
    close(scores.mean_varentropy(trace), [sum(r) / len(r) for r in var], rel=1e-4)
    close(scores.geometric_mean_prob(trace), [math.exp(sum(r) / len(r)) for r in tl], rel=1e-4)
    close(scores.mean_prob(trace), [sum(math.exp(x) for x in r) / len(r) for r in tl])


def test_scores_are_b_shaped_float32(trace):
    for fn in (
        scores.g_nll,
        scores.nll,
        scores.perplexity,
        scores.mean_entropy,
        scores.max_entropy,
        scores.mean_varentropy,
        scores.geometric_mean_prob,
        scores.mean_prob,
        scores.epr,
    ):
        out = fn(trace)
        assert out.shape == (trace.batch_size,) and out.dtype == torch.float32, fn.__name__


@pytest.mark.parametrize("K", [1, 5, 15, 16])
def test_epr(trace, K):
    want = []
    for r in rows(trace, "topk_logprobs"):
        per_tok = [-sum(math.exp(lp) * lp for lp in alts[:K]) for alts in r]
        want.append(sum(per_tok) / len(per_tok))
    close(scores.epr(trace, K), want)


def test_epr_is_not_renormalised():
    # One token: p = (0.5, 0.3, 0.2); top-2 EPR sums over 0.5 and 0.3 as they are.
    p = torch.tensor([0.5, 0.3, 0.2])
    s = fuq.logit_stats(p.log()[None, None], k=2, tokens=torch.tensor([[0]]))
    tr = Trace.from_stats(s, torch.tensor([[0]]))
    want = -(0.5 * math.log(0.5) + 0.3 * math.log(0.3))
    assert scores.epr(tr, 2).item() == pytest.approx(want, rel=1e-5)


def test_epr_ignores_dead_alternatives():
    logits = torch.tensor([[[0.0, 1.0, -math.inf, -math.inf]]])
    s = fuq.logit_stats(logits, k=4, tokens=torch.tensor([[1]]))
    tr = Trace.from_stats(s, torch.tensor([[1]]))
    p = torch.softmax(torch.tensor([0.0, 1.0]), 0).tolist()
    assert scores.epr(tr, 4).item() == pytest.approx(-sum(x * math.log(x) for x in p), rel=1e-5)


def test_epr_needs_enough_alternatives():
    tr = make_trace(k=4)
    with pytest.raises(ValueError, match="K = 15.*k = 4"):
        scores.epr(tr)
    with pytest.raises(ValueError, match="K must be"):
        scores.epr(tr, 0)


@pytest.mark.parametrize("qs", [(0.05, 0.25, 0.5), (0.0, 1.0), (0.9,)])
def test_prob_quantiles(trace, qs):
    got = scores.prob_quantiles(trace, qs)
    assert got.shape == (trace.batch_size, len(qs))
    for b, r in enumerate(rows(trace, "token_logprob")):
        p = [math.exp(x) for x in r]
        close(got[b], [quantile(p, q) for q in qs])


@pytest.mark.parametrize("qs", [(0.05, 0.25, 0.5), (0.0, 1.0), (0.9,)])
def test_logprob_quantiles(trace, qs):
    """Interpolated in log space (not log of prob_quantiles): Chow-Quantile deferral uses it."""
    got = scores.logprob_quantiles(trace, qs)
    assert got.shape == (trace.batch_size, len(qs))
    for b, r in enumerate(rows(trace, "token_logprob")):
        close(got[b], [quantile(r, q) for q in qs])
    with pytest.raises(ValueError, match="qs must all be in"):
        scores.logprob_quantiles(trace, (-0.1,))


def test_prob_quantiles_bad_q():
    with pytest.raises(ValueError, match="qs must all be in"):
        scores.prob_quantiles(make_trace(), (0.5, 1.5))
    with pytest.raises(ValueError, match="qs is empty"):
        scores.prob_quantiles(make_trace(), ())


@pytest.mark.parametrize("field", ["token_logprob", "entropy", "max_logprob", "token_nll", "token_prob"])
def test_weighted_mean(trace, field):
    g = torch.Generator().manual_seed(3)
    w = torch.rand(trace.mask.shape, generator=g)
    w[~trace.mask] = 1e6  # outside the mask: must not count
    want = []
    for b in range(trace.batch_size):
        n = int(trace.mask[b].sum())
        ws = w[b, :n].tolist()
        if field == "token_nll":
            xs = [-x for x in trace.row(b)["token_logprob"]]
        elif field == "token_prob":
            xs = [math.exp(x) for x in trace.row(b)["token_logprob"]]
        else:
            xs = trace.row(b)[field]
        want.append(sum(a * x for a, x in zip(ws, xs, strict=True)) / sum(ws))
    close(scores.weighted_mean(trace, w, field=field), want)


def test_weighted_mean_uniform_equals_mean(trace):
    w = torch.full(trace.mask.shape, 7.0)
    torch.testing.assert_close(scores.weighted_mean(trace, w, "entropy"), scores.mean_entropy(trace))


def test_weighted_mean_bad_weights():
    tr = make_trace()
    with pytest.raises(ValueError, match="weights must have shape"):
        scores.weighted_mean(tr, torch.ones(2, 2))
    with pytest.raises(ValueError, match=">= 0"):
        scores.weighted_mean(tr, -torch.ones(tr.mask.shape))
    with pytest.raises(ValueError, match="finite"):
        scores.weighted_mean(tr, torch.full(tr.mask.shape, float("nan")))
    with pytest.raises(ValueError, match="field must be one of"):
        scores.weighted_mean(tr, torch.ones(tr.mask.shape), field="nope")
    # zero total weight: NaN, documented
    assert math.isnan(scores.weighted_mean(tr, torch.zeros(tr.mask.shape))[0].item())


def test_empty_sequence():
    tr = make_trace(B=2, T=4, lengths=[4, 0])
    assert scores.nll(tr)[1].item() == 0.0 and scores.g_nll(tr)[1].item() == 0.0
    for fn in (scores.perplexity, scores.mean_entropy, scores.max_entropy, scores.mean_prob, scores.epr):
        out = fn(tr)
        assert math.isnan(out[1].item()) and not math.isnan(out[0].item()), fn.__name__
    assert torch.isnan(scores.prob_quantiles(tr)[1]).all()
    s = scores.summary(tr)
    assert s[1]["n_tokens"] == 0 and math.isnan(s[1]["perplexity"])


def test_nan_on_a_real_token_is_reported():
    tr = make_trace(B=2, T=4, lengths=[4, 4])
    tr.token_logprob[0, 1] = float("nan")
    tr.entropy[0, 2] = float("nan")
    assert math.isnan(scores.nll(tr)[0].item()) and not math.isnan(scores.nll(tr)[1].item())
    assert math.isnan(scores.max_entropy(tr)[0].item())


def test_summary_matches_functions(trace):
    s = scores.summary(trace)
    assert len(s) == trace.batch_size
    fns = {
        "g_nll": scores.g_nll,
        "nll": scores.nll,
        "perplexity": scores.perplexity,
        "mean_entropy": scores.mean_entropy,
        "max_entropy": scores.max_entropy,
        "mean_varentropy": scores.mean_varentropy,
        "geometric_mean_prob": scores.geometric_mean_prob,
        "mean_prob": scores.mean_prob,
        "epr": scores.epr,
    }
    q = scores.prob_quantiles(trace)
    for b, d in enumerate(s):
        assert set(scores.SCORE_NAMES) <= set(d) and d["epr_k"] == 15
        assert d["n_tokens"] == int(trace.mask[b].sum())
        for name, fn in fns.items():
            assert d[name] == pytest.approx(fn(trace)[b].item(), rel=1e-6), name
        assert [d["prob_q05"], d["prob_q25"], d["prob_q50"]] == pytest.approx(q[b].tolist())


def test_summary_with_few_alternatives():
    s = scores.summary(make_trace(k=3))
    assert s[0]["epr_k"] == 3 and s[0]["epr"] is not None
    s = scores.summary(make_trace(k=0))
    assert s[0]["epr_k"] == 0 and s[0]["epr"] is None


def test_not_a_trace():
    with pytest.raises(TypeError, match="trace must be"):
        scores.nll({"token_logprob": []})


# ---------------------------------------------------------------------------------------------
# score_text on a tiny random model (no download)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    pytest.importorskip("transformers")
    from helpers import tiny_lm_folder
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = tiny_lm_folder(tmp_path_factory.mktemp("tiny_lm"))
    return AutoModelForCausalLM.from_pretrained(path).eval(), AutoTokenizer.from_pretrained(path)


TEXT = "The cat sat on the mat.\nEntropy, naïve café!"


def _direct(model, ids: list[int]):
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([ids])).logits[0, :-1].double()
    return torch.log_softmax(logits, -1)


@pytest.mark.parametrize("max_chunk_elems", [1 << 25, 3 * 320, 1])
def test_score_text_matches_full_forward(tiny, max_chunk_elems):
    model, tok = tiny
    tr = fuq.score_text(model, tok, TEXT, k=5, max_chunk_elems=max_chunk_elems)
    ids = [tok.bos_token_id] + tok(TEXT, add_special_tokens=False)["input_ids"]
    lp = _direct(model, ids)
    T = len(ids) - 1
    assert tr.token_ids.tolist() == [ids[1:]] and tr.mask.all() and tr.num_tokens == T
    want_tok = [lp[t, ids[t + 1]].item() for t in range(T)]
    close(tr.token_logprob[0], want_tok, rel=1e-4, abs_=1e-4)
    close(tr.max_logprob[0], lp.max(-1).values.tolist(), rel=1e-4, abs_=1e-4)
    close(tr.entropy[0], (-(lp.exp() * lp).sum(-1)).tolist(), rel=1e-4, abs_=1e-4)
    assert tr.topk_ids[0].tolist() == lp.topk(5, -1).indices.tolist()
    assert tr.argmax[0].tolist() == lp.argmax(-1).tolist()
    # the pieces put back together are the text; the first token is scored (BOS is context)
    assert "".join(tr.tokens[0]) == TEXT and tr.prompt == [""]
    assert tr.meta["mode"] == "score" and tr.meta["model_calls"] == 1


def test_score_text_one_model_call(tiny):
    model, tok = tiny
    calls = []
    h = model.model.register_forward_hook(lambda *a: calls.append(1))
    try:
        fuq.score_text(model, tok, TEXT * 5, max_chunk_elems=7 * 320)
    finally:
        h.remove()
    assert len(calls) == 1


def test_score_text_without_bos_and_batch(tiny):
    model, tok = tiny
    texts = ["The cat sat on the mat.", "Entropy"]
    tr = fuq.score_text(model, tok, texts, k=3, add_bos=False)
    ids = [tok(t, add_special_tokens=False)["input_ids"] for t in texts]
    assert tr.mask.sum(1).tolist() == [len(i) - 1 for i in ids]
    for b, i in enumerate(ids):
        lp = _direct(model, i)
        close(tr.token_logprob[b][tr.mask[b]], [lp[t, i[t + 1]].item() for t in range(len(i) - 1)], 1e-4, 1e-4)
        assert tr.prompt[b] + "".join(tr.tokens[b]) == texts[b]
    assert tr.text == texts
    s = scores.summary(tr)
    assert s[1]["n_tokens"] == len(ids[1]) - 1


def test_score_text_too_short(tiny):
    model, tok = tiny
    with pytest.raises(ValueError, match="at least 2 tokens"):
        fuq.score_text(model, tok, "", add_bos=True)


def test_score_text_softcapped_head(tmp_path):
    """A model whose forward post-processes the logits (Gemma's final soft-capping): same as the full forward."""
    transformers = pytest.importorskip("transformers")
    cfg = transformers.Gemma3TextConfig(
        vocab_size=64,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=16,
        max_position_embeddings=64,
        final_logit_softcapping=3.0,
        sliding_window=8,
        layer_types=["sliding_attention", "full_attention"],
    )
    torch.manual_seed(0)
    model = transformers.Gemma3ForCausalLM(cfg).eval()
    with torch.no_grad():
        model.lm_head.weight.mul_(20.0)

    class Tok:  # ids are the characters' codes mod 60, offset by 4
        bos_token_id = 2

        def __call__(self, text, add_special_tokens=False, return_offsets_mapping=False):
            out = {"input_ids": [4 + ord(c) % 60 for c in text]}
            if return_offsets_mapping:
                out["offset_mapping"] = [(i, i + 1) for i in range(len(text))]
            return out

    text = "softcapped logits, please"
    tr = fuq.score_text(model, Tok(), text, k=4)
    ids = [2] + Tok()(text)["input_ids"]
    lp = _direct(model, ids)
    close(tr.token_logprob[0], [lp[t, ids[t + 1]].item() for t in range(len(ids) - 1)], 1e-4, 1e-4)
    assert "".join(tr.tokens[0]) == text


def test_density_free_scores_by_their_formulas():
    """self_certainty, renyi_neg and fisher_rao from the recorded vocabulary sums equal their
    formulas on the full distributions (lm-polygraph 0.7.0's: see tests/test_polygraph_parity.py)."""
    import math

    from fuq.trace import DENSITY_FREE_DEFAULTS, Trace, density_free_sums

    g = torch.Generator().manual_seed(0)
    B, T, V = 2, 5, 50
    z = torch.randn(B, T, V, generator=g, dtype=torch.float64) * 3
    mask = torch.ones(B, T, dtype=torch.bool)
    mask[1, 3:] = False
    lp = torch.log_softmax(z, -1)
    lsum, psum, ssum = density_free_sums(z, **DENSITY_FREE_DEFAULTS)
    f32 = lp.max(-1).values.float()
    tr = Trace(token_ids=torch.zeros(B, T, dtype=torch.long), mask=mask, lse=torch.zeros(B, T),
               entropy=torch.zeros(B, T), varentropy=torch.zeros(B, T), max_logprob=f32,
               argmax=torch.zeros(B, T, dtype=torch.long), topk_logprobs=f32[..., None],
               topk_ids=torch.zeros(B, T, 1, dtype=torch.long), topk_mass=f32.exp(), token_logprob=f32,
               vocab_logprob_sum=lsum, power_sum=psum, sqrt_sum=ssum,
               meta={"density_free": {"vocab_size": V, **DENSITY_FREE_DEFAULTS}})
    q = torch.softmax(z / 2, -1)
    for b in range(B):
        m = mask[b]
        sc = -(-lp[b][m].mean(-1) - math.log(V)).mean()
        rn = (torch.log((q[b][m] ** 0.5).sum(-1)) / (0.5 - 1) - math.log(V)).mean()
        fr = (2 / math.pi * torch.arccos(q[b][m].sqrt().sum(-1) / math.sqrt(V))).mean()
        assert scores.self_certainty(tr)[b].item() == pytest.approx(sc.item(), abs=1e-5)
        assert scores.renyi_neg(tr)[b].item() == pytest.approx(rn.item(), abs=1e-5)
        assert scores.fisher_rao(tr)[b].item() == pytest.approx(fr.item(), abs=1e-5)
    # a sharper distribution is more certain on all three (SelfCertainty down, the other two up)
    tr2 = Trace(**{**tr.__dict__, "vocab_logprob_sum": density_free_sums(z * 3)[0],
                   "power_sum": density_free_sums(z * 3)[1], "sqrt_sum": density_free_sums(z * 3)[2]})
    assert (scores.self_certainty(tr2) < scores.self_certainty(tr)).all()
    assert (scores.renyi_neg(tr2) > scores.renyi_neg(tr)).all()
    assert (scores.fisher_rao(tr2) > scores.fisher_rao(tr)).all()
    with pytest.raises(ValueError, match="extra=True"):
        scores.self_certainty(Trace(**{**tr.__dict__, "vocab_logprob_sum": None}))
