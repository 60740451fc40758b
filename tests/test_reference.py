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
