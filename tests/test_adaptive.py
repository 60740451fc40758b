"""fuq.adaptive: AdaDec's learned entropy threshold and the LM-cascade deferral rules."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import fuq
from fuq import reference
from fuq.adaptive import (
    DEFAULT_DEFERRAL_THRESHOLDS,
    calibrate_threshold,
    deferral,
    fit_threshold,
    teacher_forcing_entropy,
)
from fuq.trace import Trace

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


# ---------------------------------------------------------------------------------- fit_threshold


def synthetic(n: int, hi: float, tau0: float, slope: float = 3.0, seed: int = 0):
    """H ~ U(0, hi); P(first | H) = σ(slope (tau0 - H))."""
    g = torch.Generator().manual_seed(seed)
    H = torch.rand(n, generator=g, dtype=torch.float64) * hi
    first = torch.rand(n, generator=g, dtype=torch.float64) < torch.sigmoid(slope * (tau0 - H))
    return H, first


def weighted_accuracy(H, first, tau, balanced=True):
    pred = H <= tau
    n1, n0 = int(first.sum()), int((~first).sum())
    w = torch.where(first, torch.tensor(len(H) / (2 * n1), dtype=torch.float64),
                    torch.tensor(len(H) / (2 * n0), dtype=torch.float64)) if balanced else None
    ok = (pred == first).double()
    return float((ok * w).sum() / w.sum()) if balanced else float(ok.mean())


def test_fit_threshold_symmetric_case_recovers_the_crossing():
    # base rate 1/2 by symmetry: both the balanced and the plain optimum sit at tau0
    H, first = synthetic(20000, 3.0, 1.5)
    th = fit_threshold(H, first)
    assert abs(th.tau - 1.5) < 0.1
    assert th.weight < 0  # more entropy, less often ranked first
    assert abs(th.weight + 3.0) < 0.4  # the logistic slope is recovered
    assert th.n == 20000 and th.n_first == int(first.sum())
    assert 0.0 < th.p_cut < 1.0
    assert math.isclose(1 / (1 + math.exp(-(th.weight * th.tau + th.bias))), th.p_cut, rel_tol=1e-9)


def test_fit_threshold_balanced_vs_plain():
    # base rate ~0.375: the plain-accuracy cut is where P(first|H) = 1/2 (tau0 = 1.5); the balanced
    # cut is where P(first|H) equals the base rate: 1.5 - logit(0.375)/3 ~ 1.67
    H, first = synthetic(40000, 4.0, 1.5, seed=1)
    base = float(first.double().mean())
    plain = fit_threshold(H, first, balanced=False)
    bal = fit_threshold(H, first, balanced=True)
    assert abs(plain.tau - 1.5) < 0.12
    want = 1.5 - math.log(base / (1 - base)) / 3.0
    assert abs(bal.tau - want) < 0.12
    assert bal.tau > plain.tau


@pytest.mark.parametrize("balanced", [True, False])
def test_fit_threshold_is_the_best_cut(balanced):
    H, first = synthetic(500, 4.0, 2.0, seed=2)
    th = fit_threshold(H, first, balanced=balanced)
    assert math.isclose(th.accuracy, weighted_accuracy(H, first, th.tau, balanced), rel_tol=1e-9)
    Hs = torch.sort(H).values
    cuts = torch.cat([Hs[:1] - 1, 0.5 * (Hs[1:] + Hs[:-1]), Hs[-1:] + 1])
    best = max(weighted_accuracy(H, first, float(c), balanced) for c in cuts)
    assert th.accuracy >= best - 1e-12


def test_fit_threshold_separable():
    H = torch.tensor([0.1, 0.2, 0.3, 2.0, 2.5, 3.0])
    first = torch.tensor([True, True, True, False, False, False])
    th = fit_threshold(H, first)
    assert math.isclose(th.tau, (0.3 + 2.0) / 2, abs_tol=1e-6) and th.accuracy == 1.0


def test_fit_threshold_errors():
    with pytest.raises(ValueError, match="ranked first"):
        fit_threshold(torch.rand(10), torch.ones(10, dtype=torch.bool))
    with pytest.raises(ValueError, match="not ranked first"):
        fit_threshold(torch.rand(10), torch.zeros(10, dtype=torch.bool))
    with pytest.raises(ValueError, match="same length"):
        fit_threshold(torch.rand(10), torch.ones(9, dtype=torch.bool))
    with pytest.raises(ValueError, match="NaN"):
        fit_threshold(torch.tensor([0.1, float("nan")]), torch.tensor([True, False]))


# ---------------------------------------------------------------------------------- calibrate_threshold


class TableLM(torch.nn.Module):
    """A causal LM whose next-token logits depend only on the current token x: the argmax is
    x + 1, sharp (low entropy) for x < V/2 and nearly flat (high entropy) above."""

    V = 64

    def __init__(self):
        super().__init__()
        table = torch.zeros(self.V, self.V)
        for x in range(self.V):
            table[x, (x + 1) % self.V] = 8.0 if x < self.V // 2 else 0.5
        self.register_buffer("table", table)
        self.dummy = torch.nn.Parameter(torch.zeros(1))

    def forward(self, input_ids, use_cache=False, **kw):
        class Out:
            pass

        out = Out()
        out.logits = self.table[input_ids]
        return out


def table_texts(n: int, T: int, seed: int = 0):
    """Low tokens are followed by x + 1 (ranked first); high tokens by a random token."""
    g = torch.Generator().manual_seed(seed)
    V = TableLM.V
    texts = []
    for _ in range(n):
        x = [int(torch.randint(0, V, (1,), generator=g))]
        for _ in range(T - 1):
            cur = x[-1]
            x.append(cur + 1 if cur < V // 2 else int(torch.randint(0, V, (1,), generator=g)))
        texts.append(torch.tensor(x))
    return texts


def test_calibrate_threshold_separates_sure_from_unsure():
    lm = TableLM()
    texts = table_texts(20, 30)
    tau = calibrate_threshold(lm, None, texts)
    ent = fuq.logit_stats(lm.table).entropy
    h_sure, h_unsure = float(ent[: TableLM.V // 2].max()), float(ent[TableLM.V // 2 :].min())
    assert h_sure < tau < h_unsure
    th = calibrate_threshold(lm, None, texts, return_details=True)
    assert th.tau == tau and th.accuracy > 0.9


def test_teacher_forcing_entropy_matches_direct_computation():
    transformers = pytest.importorskip("transformers")
    cfg = transformers.LlamaConfig(vocab_size=96, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                   num_attention_heads=4, num_key_value_heads=2, initializer_range=0.2)
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(cfg).eval()
    g = torch.Generator().manual_seed(0)
    texts = [torch.randint(0, 96, (n,), generator=g) for n in (5, 9, 2)]
    H, first = teacher_forcing_entropy(model, None, texts)
    assert H.shape == first.shape == (4 + 8 + 1,)
    hs, fs = [], []
    with torch.no_grad():
        for t in texts:
            logits = model(input_ids=t[None]).logits[0, :-1]
            st = reference.logit_stats(logits, 0, t[1:], 1.0)
            hs.append(st[1])
            fs.append(st[4] == t[1:])
    torch.testing.assert_close(H, torch.cat(hs), atol=2e-4, rtol=1e-4)
    assert torch.equal(first, torch.cat(fs))
    # the whole pipeline is fit_threshold of these
    texts += [t for t in [torch.cat([texts[0], fuq.generate(model, texts[0][None], max_new_tokens=6,
                                                                eos_token_id=[]).token_ids[0]])]]
    H, first = teacher_forcing_entropy(model, None, texts)
    assert calibrate_threshold(model, None, texts) == fit_threshold(H, first).tau


def test_teacher_forcing_errors():
    lm = TableLM()
    with pytest.raises(ValueError, match="at least 2"):
        teacher_forcing_entropy(lm, None, [torch.tensor([3])])
    with pytest.raises(ValueError, match="non-empty list"):
        teacher_forcing_entropy(lm, None, [])
    with pytest.raises(ValueError, match="without a tokenizer"):
        teacher_forcing_entropy(lm, None, ["text"])


# ---------------------------------------------------------------------------------- deferral


def make_trace(token_logprob: torch.Tensor, mask: torch.Tensor) -> Trace:
    B, T = token_logprob.shape
    z = torch.zeros(B, T)
    stats = fuq.LogitStats(z, z, z, z, z.long(), z[..., None], z[..., None].long(), z, token_logprob)
    return Trace.from_stats(stats, torch.zeros(B, T, dtype=torch.long), mask)


@pytest.fixture
def trace():
    g = torch.Generator().manual_seed(0)
    lp = -torch.rand(6, 12, generator=g) * 4
    mask = torch.ones(6, 12, dtype=torch.bool)
    for b, n in enumerate([12, 7, 3, 12, 1, 9]):
        mask[b, n:] = False
    lp[~mask] = float("nan")  # whatever sits under the mask must not matter
    return make_trace(lp, mask)


def direct(trace, rule, alpha):
    out = []
    for b in range(trace.batch_size):
        x = trace.token_logprob[b][trace.mask[b]].double().numpy()
        if rule == "chow-sum":
            out.append(-x.sum())
        elif rule == "chow-average":
            out.append(-x.mean())
        else:
            out.append(-np.quantile(x, alpha))
    return torch.tensor(out, dtype=torch.float32)


@pytest.mark.parametrize("rule", ["chow-sum", "chow-average", "chow-quantile"])
@pytest.mark.parametrize("alpha", [0.0, 0.1, 0.5])
def test_deferral_scores_match_direct_computation(trace, rule, alpha):
    d = deferral(trace, rule, alpha=alpha, threshold=1.3)
    torch.testing.assert_close(d.score, direct(trace, rule, alpha), atol=1e-5, rtol=1e-5)
    assert torch.equal(d.defer, d.score > 1.3)
    assert d.rule == rule and d.threshold == 1.3 and d.alpha == alpha


def test_quantile_zero_is_the_worst_token(trace):
    d = deferral(trace, "chow-quantile", alpha=0.0, threshold=0.0)
    worst = torch.stack([-trace.token_logprob[b][trace.mask[b]].min() for b in range(6)])
    torch.testing.assert_close(d.score, worst)


def test_deferral_rate_and_defaults(trace):
    for rate, n in [(0.0, 0), (0.5, 3), (1 / 3, 2), (1.0, 6)]:
        d = deferral(trace, "chow-average", rate=rate)
        assert int(d.defer.sum()) == n
        if 0 < n < 6:
            assert d.score[d.defer].min() > d.score[~d.defer].max()
    d = deferral(trace, "chow-sum")
    assert d.threshold == DEFAULT_DEFERRAL_THRESHOLDS["chow-sum"]
    assert torch.equal(d.defer, d.score > 16.0)


def test_trace_deferral_method_and_aliases(trace):
    a = trace.deferral("chow-quantile", alpha=0.2, threshold=1.0)
    b = deferral(trace, "quantile", alpha=0.2, threshold=1.0)
    assert torch.equal(a.score, b.score) and torch.equal(a.defer, b.defer)
    assert deferral(trace, "mean").rule == "chow-average"
    assert deferral(trace, "chow_sum").rule == "chow-sum"


def test_deferral_empty_sequence_and_errors(trace):
    mask = trace.mask.clone()
    mask[2] = False
    empty = make_trace(trace.token_logprob, mask)
    for rule in ("chow-sum", "chow-average", "chow-quantile"):
        d = deferral(empty, rule, threshold=-100.0)
        assert torch.isnan(d.score[2]) and not d.defer[2] and d.defer[0]
    with pytest.raises(ValueError, match="rule must be one of"):
        deferral(trace, "chow-max")
    with pytest.raises(ValueError, match="alpha"):
        deferral(trace, alpha=1.5)
    with pytest.raises(ValueError, match="not both"):
        deferral(trace, threshold=1.0, rate=0.5)
    with pytest.raises(ValueError, match="rate"):
        deferral(trace, rate=2.0)
    with pytest.raises(TypeError, match="Trace"):
        deferral(trace.token_logprob)
