"""The Triton draw kernel (triton_kernels/draw.py, interpreted on the CPU) against fuq.reference.sample_from."""

from __future__ import annotations

import pytest
import torch
from helpers import TRITON_RUNS, make_logits

import fuq
from fuq import reference

pytestmark = [pytest.mark.triton_interp, pytest.mark.skipif(not TRITON_RUNS, reason="triton cannot run here")]

DEV = "cuda" if torch.cuda.is_available() else "cpu"
_NEG = float("-inf")
U_EDGE = (0.0, 2.0**-53, 0.5, 1.0 - 2.0**-53)  # u at 0, just above it, and just below 1


@pytest.fixture(params=[1, 3, 64])
def split(request, monkeypatch):
    """Programs per row: 1 (one program draws alone), 3 and up to 64 (the row's last program draws)."""
    import fuq.triton_kernels.draw as dr

    monkeypatch.setattr(dr, "SPLIT_TARGET", request.param)
    return request.param


def _draw(z, u):
    from fuq.triton_kernels.draw import draw

    return draw(z.to(DEV), u.to(DEV)).cpu()


def _rows(B, V, seed):
    """Masked rows (about half the tokens removed), one all -inf row and one holding a NaN."""
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(B, V, generator=g) * 3
    z[torch.rand(B, V, generator=g) < 0.5] = _NEG
    z[0, -1] = 2.0  # a live last token in row 0
    if B >= 3:
        z[1] = _NEG
        z[2, V // 2] = float("nan")
    return z, g


@pytest.mark.parametrize("B,V", [(4, 37), (3, 2500), (2, 1), (3, 1025)])
def test_draw_matches_reference(B, V, split):
    z, g = _rows(B, V, seed=V)
    for u in [torch.rand(B, dtype=torch.float64, generator=g)] + [torch.full((B,), e, dtype=torch.float64)
                                                                 for e in U_EDGE]:
        got = _draw(z, u)
        assert torch.equal(got, reference.sample_from(z, u)), (u, got)
    if B >= 3:
        assert got[1] == 0 and got[2] == 0  # no live token / a NaN: id 0


def test_draw_segment_boundaries(split):
    """Uniform rows, u = j / V: the cumulative weights are exact integers, so the target lands
    exactly on a cumulative sum, at the start and end of segments (1024 entries each)."""
    V = 3000
    z = torch.zeros(2, V)
    z[1, 2500:] = _NEG  # the last live token is 2499
    for j in (0, 1, 1023, 1024, 1025, 2048, 2499, 2999):
        u = torch.tensor([j / V, j / 2500], dtype=torch.float64)
        got = _draw(z, u)
        assert torch.equal(got, reference.sample_from(z, u)), (j, got)


def test_draw_weights_far_apart(split):
    """A max 1000 nats ahead (the others underflow to 0 in float64) and equal maxima in two segments."""
    V = 2100
    z = torch.full((2, V), -5.0)
    z[0, 1500] = 1000.0
    z[1, 10] = z[1, 2000] = 40.0
    for e in U_EDGE:
        u = torch.full((2,), e, dtype=torch.float64)
        assert torch.equal(_draw(z, u), reference.sample_from(z, u)), e


def test_draw_counters_left_at_zero(split, monkeypatch):
    """The cached row counters (draw, truncate's split rows, logit_stats' fused pass 2) are back at 0
    after every launch: no call needs a zero fill."""
    import fuq.triton_kernels.truncate as tt
    from fuq.triton_kernels._common import _COUNTERS

    monkeypatch.setattr(tt, "SPLIT_TARGET", split)
    z, g = _rows(3, 1500, seed=4)
    _draw(z, torch.rand(3, dtype=torch.float64, generator=g))
    assert _COUNTERS and all(int(c.abs().sum()) == 0 for c in _COUNTERS.values())
    fuq.sample(z.to(DEV), top_p=0.9, k=3, generator=torch.Generator(device=DEV).manual_seed(0), backend="triton")
    assert all(int(c.abs().sum()) == 0 for c in _COUNTERS.values())


def test_draw_bad_input():
    from fuq.triton_kernels.draw import draw

    with pytest.raises(ValueError, match="float32"):
        draw(torch.zeros(2, 5, dtype=torch.float64), torch.zeros(2, dtype=torch.float64))
    with pytest.raises(ValueError, match="one uniform per row"):
        draw(torch.zeros(2, 5), torch.zeros(3, dtype=torch.float64))
    assert draw(torch.zeros(0, 5), torch.zeros(0, dtype=torch.float64)).shape == (0,)


@pytest.mark.parametrize("kw", [dict(top_p=0.9, temperature=0.8), dict(top_k=20, min_p=0.02), dict()], ids=str)
def test_triton_sample_same_ids_as_cpp_and_reference(kw, split, monkeypatch):
    """fuq.sample(backend='triton') (truncate + this draw) with a seeded generator: the ids of
    backend='cpp' and 'reference' on the same rows, both launch shapes of the truncation too."""
    import fuq.triton_kernels.truncate as tt

    monkeypatch.setattr(tt, "SPLIT_TARGET", split)
    x = make_logits(3, 1500, torch.float32, "masked", seed=5)
    x[1, 7] = float("nan")
    for seed in range(2):
        got, _ = fuq.sample(x.to(DEV), generator=torch.Generator(device=DEV).manual_seed(seed), backend="triton", **kw)
        ref, _ = fuq.sample(x, generator=torch.Generator().manual_seed(seed), backend="reference", **kw)
        cpp, _ = fuq.sample(x, generator=torch.Generator().manual_seed(seed), backend="cpp", **kw)
        if DEV == "cpu":  # the same generator stream: the same uniforms
            assert torch.equal(got.cpu(), ref) and torch.equal(ref, cpp), (seed, got, ref, cpp)
