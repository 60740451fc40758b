"""Hugging Face's own warper checks, run with fuq's drop-ins (``fuq.processors``) in place of HF's classes.

The checks of the eight sampling-warper tests of transformers'
``tests/generation/test_logits_process.py`` (temperature, top-k, top-p, top-H, min-p,
typical, epsilon, eta), rewritten here from reading that file: the same inputs, the same
expected kept sets, on every CPU backend: all eight hold. ``TypicalLogitsWarper`` keeps a tie
group at its cut whole as Hugging Face's does (``ties="group"``); ``ties="prefix"`` is
``fuq.truncate``'s prefix rule (:func:`test_typical_prefix_ties_follow_the_tie_rule`).
"""

from __future__ import annotations

import pytest
import torch

from fuq import processors as P

pytest.importorskip("transformers")

BACKENDS = ["cpp", "reference"]


def _warper(cls, *args, backend: str, **kwargs):
    w = cls(*args, **kwargs)
    w.backend = backend
    return w


def _uniform(batch: int, length: int) -> torch.Tensor:
    return torch.ones((batch, length)) / length


def _ramp(batch: int, vocab: int) -> torch.Tensor:
    """``arange(vocab) - vocab // 2`` per row, the second row 100x more extreme."""
    x = (torch.arange(vocab, dtype=torch.float) - vocab // 2).repeat(batch, 1)
    x[1] = x[1] * 100.0
    return x


def _kept_probs(out: torch.Tensor) -> torch.Tensor:
    return torch.exp(out)  # exp(-inf) = 0


def _close(a, b):
    torch.testing.assert_close(a, torch.tensor(b, dtype=torch.float), rtol=1e-3, atol=1e-3)


def _nonzero(out: torch.Tensor) -> list[int]:
    return (out != 0.0).sum(-1).tolist()


@pytest.mark.parametrize("backend", BACKENDS)
def test_temperature_dist_warper(backend):
    scores = _uniform(2, 20)
    scores[1, 5] = 1 / 20 + 0.1
    scores[1, 10] = 1 / 20 - 0.4
    probs = torch.softmax(scores, -1)
    sharp = _warper(P.TemperatureLogitsWarper, 0.5, backend=backend)
    smooth = _warper(P.TemperatureLogitsWarper, 1.3, backend=backend)
    p_sharp = torch.softmax(sharp(None, scores), -1)
    p_smooth = torch.softmax(smooth(None, scores), -1)
    torch.testing.assert_close(probs[0], p_sharp[0], rtol=1e-3, atol=1e-3)  # uniform stays uniform
    torch.testing.assert_close(probs[0], p_smooth[0], rtol=1e-3, atol=1e-3)
    assert probs[1].max() < p_sharp[1].max() and probs[1].min() > p_sharp[1].min()
    assert probs[1].max() > p_smooth[1].max() and probs[1].min() < p_smooth[1].min()
    assert not torch.all(scores == smooth(None, scores))  # not in place


@pytest.mark.parametrize("backend", BACKENDS)
def test_top_k_dist_warper(backend):
    ramp = torch.arange(10, dtype=torch.float).repeat(2, 1)
    ramp[1:, :5] += 10
    out = _warper(P.TopKLogitsWarper, 3, backend=backend)(None, ramp)
    assert torch.isinf(out[0]).tolist() == 7 * [True] + 3 * [False]
    assert torch.isinf(out[1]).tolist() == 2 * [True] + 3 * [False] + 5 * [True]
    assert not torch.all(out == ramp)
    safety = _warper(P.TopKLogitsWarper, top_k=1, filter_value=0.0, min_tokens_to_keep=3, backend=backend)
    assert (safety(None, _uniform(2, 5)) == 0.0).sum(-1).tolist() == [0, 0]  # ties with the k-th: all kept
    ramp5 = torch.arange(5, dtype=torch.float).repeat(2, 1)
    assert (safety(None, ramp5) == 0.0).sum(-1).tolist() == [2, 2]  # min_tokens_to_keep overrides k


@pytest.mark.parametrize("backend", BACKENDS)
def test_top_p_dist_warper(backend):
    dist = torch.log(torch.tensor([[0.3, 0.1, 0.1, 0.5], [0.15, 0.3, 0.3, 0.25]]))
    warp = _warper(P.TopPLogitsWarper, 0.8, backend=backend)
    _close(_kept_probs(warp(None, dist)), [[0.3, 0.0, 0.0, 0.5], [0.0, 0.3, 0.3, 0.25]])
    assert not torch.all(warp(None, dist) == dist)
    warp = _warper(P.TopPLogitsWarper, 0.9, min_tokens_to_keep=2, filter_value=0.0, backend=backend)
    assert _nonzero(warp(None, _ramp(2, 10))) == [3, 2]


@pytest.mark.parametrize("backend", BACKENDS)
def test_top_h_dist_warper(backend):
    def run(p, alpha):
        return _kept_probs(_warper(P.TopHLogitsWarper, top_h=alpha, backend=backend)(None, torch.log(torch.tensor(p))))

    _close(run([[0.97, 0.01, 0.01, 0.01]], 0.3), [[0.97, 0.0, 0.0, 0.0]])  # peaked: top-1
    _close(run([[0.4, 0.3, 0.2, 0.1]], 0.7), [[0.4, 0.3, 0.0, 0.0]])  # a 2-token prefix
    _close(run([[0.25, 0.25, 0.25, 0.25]], 1.0), [[0.25, 0.25, 0.25, 0.25]])  # alpha = 1: all
    _close(run([[0.75, 0.25, 0.0, 0.0]], 0.4), [[0.75, 0.0, 0.0, 0.0]])  # zero probabilities
    uniform = torch.log(torch.tensor([[0.25] * 4]))
    again = _warper(P.TopHLogitsWarper, top_h=0.5, backend=backend)(None, uniform)
    assert not torch.all(again == uniform)  # the uniform row is cut (HF: 2 of 4 kept)
    assert torch.isfinite(again).sum().item() == 2


@pytest.mark.parametrize("backend", BACKENDS)
def test_min_p_dist_warper(backend):
    dist = torch.log(torch.tensor([[0.9, 0.0274, 0.047, 0.0274], [0.15, 0.3, 0.3, 0.25], [0.97, 0.01, 0.01, 0.01]]))
    warp = _warper(P.MinPLogitsWarper, 0.05, backend=backend)
    _close(_kept_probs(warp(None, dist)), [[0.9, 0.0, 0.047, 0.0], [0.15, 0.3, 0.3, 0.25], [0.97, 0.0, 0.0, 0.0]])
    assert not torch.all(warp(None, dist) == dist)
    warp = _warper(P.MinPLogitsWarper, 0.9, min_tokens_to_keep=2, filter_value=0.0, backend=backend)
    assert _nonzero(warp(None, _ramp(2, 10))) == [2, 2]


@pytest.mark.parametrize("backend", BACKENDS)
def test_typical_dist_warper(backend):
    dist = torch.log(torch.tensor([[0.97, 0.01, 0.01, 0.01], [0.4, 0.2, 0.2, 0.2]]))
    warp = _warper(P.TypicalLogitsWarper, 0.5, backend=backend)
    _close(_kept_probs(warp(None, dist)), [[0.97, 0.0, 0.0, 0.0], [0.0, 0.2, 0.2, 0.2]])
    assert not torch.all(warp(None, dist) == dist)
    warp = _warper(P.TypicalLogitsWarper, 0.7, min_tokens_to_keep=2, filter_value=0.0, backend=backend)
    assert _nonzero(warp(None, _ramp(2, 10))) == [2, 2]
    # HF's special case: a uniform row is not changed (its tie group at the cut kept whole)
    warp = _warper(P.TypicalLogitsWarper, mass=0.5, filter_value=0.0, min_tokens_to_keep=3, backend=backend)
    assert (warp(None, _uniform(2, 5)) == 0.0).sum(-1).tolist() == [0, 0]


@pytest.mark.parametrize("backend", BACKENDS)
def test_typical_prefix_ties_follow_the_tie_rule(backend):
    """ties="prefix" is fuq.truncate's rule (fuq/reference.py): a prefix of the order. On the
    uniform row of 5 the mass before tokens 0, 1, 2 is 0, 0.2, 0.4 < 0.5, so those 3 are kept
    (also min_tokens_to_keep) and tokens 3, 4 dropped."""
    import fuq

    warp = _warper(P.TypicalLogitsWarper, mass=0.5, filter_value=0.0, min_tokens_to_keep=3, ties="prefix",
                   backend=backend)
    out = warp(None, _uniform(2, 5))
    assert (out == 0.0).tolist() == [[False, False, False, True, True]] * 2
    want = fuq.truncate(_uniform(2, 5), typical_p=0.5, min_tokens_to_keep=3, backend=backend)
    assert torch.equal(out == 0.0, want == float("-inf"))
    with pytest.raises(ValueError, match="ties"):
        P.TypicalLogitsWarper(0.5, ties="all")


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("mass,mtk", [(0.3, 1), (0.7, 1), (0.5, 40), (0.95, 1)])
def test_typical_group_equals_hf_on_tie_heavy_rows(backend, mass, mtk):
    """bf16 rows with long runs of equal values: the kept set is Hugging Face's (tie groups at
    the cut whole, the first min_tokens_to_keep of the order)."""
    hf = pytest.importorskip("transformers.generation.logits_process")
    g = torch.Generator().manual_seed(11)
    x = (torch.randn(4, 3000, generator=g) * 0.6).to(torch.bfloat16).float()
    x[1] = 0.0  # uniform
    x[2, :1500] = 0.0  # two values
    x[2, 1500:] = -0.5
    x[3, ::3] = float("-inf")
    want = hf.TypicalLogitsWarper(mass, min_tokens_to_keep=mtk)(None, x) > float("-inf")
    got = _warper(P.TypicalLogitsWarper, mass, min_tokens_to_keep=mtk, backend=backend)(None, x) > float("-inf")
    # HF's unstable sort picks which members of a tie group fill min_tokens_to_keep: compare counts there
    assert got.sum(-1).tolist() == want.sum(-1).tolist()
    if mtk == 1:
        assert torch.equal(got, want)
    prefix = _warper(P.TypicalLogitsWarper, mass, min_tokens_to_keep=mtk, ties="prefix", backend=backend)(None, x)
    assert (prefix > float("-inf")).sum(-1)[1].item() < 3000 and got[1].all()  # the uniform row


@pytest.mark.parametrize("backend", BACKENDS)
def test_epsilon_dist_warper(backend):
    dist = torch.log(torch.tensor([[0.87, 0.099, 0.001, 0.03], [0.4, 0.299, 0.101, 0.2]]))
    warp = _warper(P.EpsilonLogitsWarper, 0.1, backend=backend)
    _close(_kept_probs(warp(None, dist)), [[0.87, 0, 0, 0], [0.4, 0.299, 0.101, 0.2]])
    assert not torch.all(warp(None, dist) == dist)
    warp = _warper(P.EpsilonLogitsWarper, 5e-2, min_tokens_to_keep=2, filter_value=0.0, backend=backend)
    assert _nonzero(warp(None, _ramp(2, 10))) == [3, 2]


@pytest.mark.parametrize("backend", BACKENDS)
def test_eta_dist_warper(backend):
    dist = torch.log(torch.tensor([[0.0, 0.1, 0.8, 0.1], [0.01, 0.04, 0.9, 0.05]]))
    warp = _warper(P.EtaLogitsWarper, 0.0625, backend=backend)
    # cut-offs min(0.0625, sqrt(0.0625) e^-H): 0.0625 in both rows
    _close(_kept_probs(warp(None, dist)), [[0.0, 0.1, 0.8, 0.1], [0.0, 0.0, 0.9, 0.0]])
    assert not torch.all(warp(None, dist) == dist)
    warp = _warper(P.EtaLogitsWarper, 0.1, min_tokens_to_keep=2, filter_value=0.0, backend=backend)
    assert _nonzero(warp(None, _ramp(2, 10))) == [2, 2]
