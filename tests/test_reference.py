"""The reference (the spec) against float64 maths written independently."""

from __future__ import annotations

import math

import pytest
import torch
from helpers import DTYPES, make_logits

from fuq import reference


def _f64_stats(row, T):
    """Direct float64 definitions for one 1-D row."""
    z = row.double() / T
    live = z > float("-inf")
    zl = z[live]
    m = zl.max()
    lse = m + torch.log(torch.exp(zl - m).sum())
    logp = zl - lse
    p = logp.exp()
    H = -(p * logp).sum()
    var = (p * logp**2).sum() - H**2
    return lse.item(), H.item(), var.item(), logp.max().item()


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("V", [1, 7, 4097, 50257])
@pytest.mark.parametrize("kind", ["normal", "peaked", "flat", "masked", "llm"])
def test_reference_vs_float64(dtype, V, kind):
    x = make_logits(3, V, dtype, kind if V > 7 else "normal", seed=2)
    T = 0.7
    lse, H, var, mx, am, tkl, tki, tkm, _ = reference.logit_stats(x, min(V, 10), None, T)
    for b in range(3):
        l64, h64, v64, m64 = _f64_stats(x[b], T)
        assert lse[b].item() == pytest.approx(l64, rel=1e-5, abs=1e-4)
        assert H[b].item() == pytest.approx(h64, rel=1e-4, abs=1e-4)
        assert var[b].item() == pytest.approx(v64, rel=1e-3, abs=1e-3)
        assert mx[b].item() == pytest.approx(m64, rel=1e-5, abs=1e-4)
        z = x[b].double() / T
        top = sorted(range(V), key=lambda i: (-z[i].item(), i))[: min(V, 10)]
        assert tki[b].tolist() == top
        mass = sum(math.exp(z[i].item() - l64) for i in top)
        assert tkm[b].item() == pytest.approx(mass, rel=1e-4, abs=1e-5)


def test_reference_token_logprob_and_masks():
    x = torch.tensor([[0.0, float("-inf"), 1.0], [float("-inf")] * 3])
    out = reference.logit_stats(x, 3, torch.tensor([2, 0]), 1.0)
    lse, H, var, mx, am, tkl, tki, tkm, tl = out
    assert tl[0].item() == pytest.approx(1.0 - math.log(1 + math.e))
    assert lse[1].item() == float("-inf") and math.isnan(H[1].item()) and math.isnan(tl[1].item())
    assert tki[0].tolist() == [2, 0, 1] and tkm[0].item() == pytest.approx(1.0)


def _prefix_f64(p, order_key, keep):
    """Token ids kept by a prefix cut: the order by ``order_key``, each token kept while
    ``keep(position, mass_before, entropy_terms_through)`` (plain float64 Python)."""
    order = sorted(range(len(p)), key=order_key)
    out, before, terms = set(), 0.0, 0.0
    for pos, i in enumerate(order):
        terms += -p[i] * math.log(p[i]) if p[i] > 0 else 0.0
        if p[i] > 0 and keep(pos, before, terms):
            out.add(i)
        before += p[i]
    return out


@pytest.mark.parametrize("seed", range(6))
def test_reference_tie_rule_vs_float64(seed):
    """top-p, typical and top-h keep a prefix of their order (ties by id), as written in
    fuq/reference.py, checked against plain float64 loops on tie-heavy rows."""
    g = torch.Generator().manual_seed(seed)
    V = 40
    x = torch.round(torch.randn(1, V, generator=g) * 2) / 2  # about 10 distinct values
    x[0, torch.randint(0, V, (3,), generator=g)] = float("-inf")
    z = x[0].double().tolist()
    m = max(z)
    e = [math.exp(v - m) if v > float("-inf") else 0.0 for v in z]
    p = [w / sum(e) for w in e]
    H = -sum(q * math.log(q) for q in p if q > 0)
    desc = lambda i: (-z[i], i)  # noqa: E731
    typ = lambda i: (abs(-math.log(p[i]) - H) if p[i] > 0 else math.inf, i)  # noqa: E731

    def kept(**kw):
        return set(torch.nonzero(reference.truncate(x, **kw)[0] > float("-inf")).flatten().tolist())

    for top_p in (0.3, 0.5, 0.9):
        assert kept(top_p=top_p) == _prefix_f64(p, desc, lambda pos, b, t, q=top_p: b < q), top_p
    for mass in (0.2, 0.6):
        assert kept(typical_p=mass) == _prefix_f64(p, typ, lambda pos, b, t, q=mass: b < q), mass
    for alpha in (0.3, 0.7, 1.0):
        want = _prefix_f64(p, desc, lambda pos, b, t, a=alpha: pos == 0 or t <= a * H * (1 + 1e-12))
        assert kept(top_h=alpha) == want, alpha
    assert kept(top_k=3) == {i for i in range(V) if z[i] >= sorted(z, reverse=True)[2] and z[i] > -math.inf}
