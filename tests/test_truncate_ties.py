"""The tie rule of fuq.truncate / fuq.sample (fuq/reference.py's module docstring) on every CPU backend.

* hand-made rows whose kept sets are known by heart (uniform rows, tie groups at the cut);
* tie-heavy bfloat16 rows at V = 262144: the kept set of top-p and top-h is a prefix of the
  order (z descending, id ascending) on every backend, and the backends agree;
* a logit 90, 300 and 1000 nats ahead of the rest: top-h follows a 60-digit computation
  (mpmath, log1p for the top token's term).
"""

from __future__ import annotations

import pytest
import torch
from helpers import make_logits
from test_truncate import _op_args, assert_same_kept

import fuq
from fuq import reference

BACKENDS = ["cpp", "reference"]
NEG = float("-inf")


def _kept(z: torch.Tensor) -> torch.Tensor:
    return z > NEG


def _order(x: torch.Tensor) -> torch.Tensor:
    """Token ids in the order of the tie rule: z descending, id ascending."""
    return torch.sort(x.float(), dim=-1, descending=True, stable=True).indices


def _assert_prefix(kept: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Each row's kept set is a prefix of the order; returns the prefix lengths."""
    order = _order(x)
    ks = kept.gather(-1, order)
    n = ks.sum(-1)
    pos = torch.arange(x.shape[-1])
    assert torch.equal(ks, pos[None, :] < n[:, None]), "the kept set is not a prefix of (z desc, id asc)"
    return n


@pytest.mark.parametrize("backend", BACKENDS)
def test_uniform_rows_are_cut(backend):
    u = torch.log(torch.full((1, 4), 0.25))
    assert _kept(fuq.truncate(u, top_h=0.5, backend=backend)).tolist() == [[True, True, False, False]]
    assert _kept(fuq.truncate(u, top_h=1.0, backend=backend)).all()
    z = torch.zeros(2, 4)
    assert _kept(fuq.truncate(z, top_p=0.5, backend=backend)).tolist() == [[True, True, False, False]] * 2
    assert _kept(fuq.truncate(z, top_p=0.51, backend=backend)).tolist() == [[True, True, True, False]] * 2
    assert _kept(fuq.truncate(z, typical_p=0.5, backend=backend)).tolist() == [[True, True, False, False]] * 2
    assert _kept(fuq.truncate(z, top_p=0.3, min_tokens_to_keep=3, backend=backend)).sum().item() == 6
    # top-k and the thresholds keep the tie group whole
    assert _kept(fuq.truncate(z, top_k=1, backend=backend)).all()
    for kw in (dict(min_p=0.9), dict(epsilon=0.2), dict(eta=0.2), dict(top_n_sigma=0.0), dict(p_less=True)):
        assert _kept(fuq.truncate(z, backend=backend, **kw)).all(), kw


@pytest.mark.parametrize("backend", BACKENDS)
def test_tie_group_at_the_cut_keeps_its_lower_ids(backend):
    # p ∝ [4, 1, 2, 1, 2, 1, 2]: order 0, 2, 4, 6, 1, 3, 5 (ties by id)
    x = torch.log(torch.tensor([[4.0, 1, 2, 1, 2, 1, 2]]))
    # mass before: 0, 4, 6, 8, 10, 11, 12 (of 13): top_p = 7/13 keeps 0, 2, 4
    got = _kept(fuq.truncate(x, top_p=7 / 13, backend=backend))
    assert got.tolist() == [[True, False, True, False, True, False, False]]
    got = _kept(fuq.truncate(x, top_p=10.5 / 13, backend=backend))
    assert got.tolist() == [[True, True, True, False, True, False, True]]
    # the same with the max tied: ids 3 and 5 hold it too
    x = torch.tensor([[0.0, 1.0, 0.0, 2.0, 0.0, 2.0]])
    got = fuq.truncate(x, top_k=2, backend=backend)
    assert _kept(got).tolist() == [[False, False, False, True, False, True]]
    got = fuq.truncate(x, top_k=3, backend=backend)
    assert _kept(got).tolist() == [[False, True, False, True, False, True]]


@pytest.mark.parametrize("kw", [dict(top_p=0.8), dict(top_p=0.3, temperature=0.7), dict(top_h=0.5),
                                dict(top_h=0.2, temperature=1.3), dict(top_p=0.9, min_tokens_to_keep=5000)], ids=str)
def test_bf16_tie_heavy_rows_at_262144(kw):
    """bf16 logits over 262,144 tokens hold long runs of equal values: each backend keeps a
    prefix of the order, and the prefixes agree up to a float rounding tie (<= 3 tokens)."""
    g = torch.Generator().manual_seed(3)
    x = (torch.randn(2, 262144, generator=g) * 1.5).to(torch.bfloat16)
    assert x[0].float().unique().numel() < 5000  # ~50 tokens per value: ties are the common case
    z = x.float() / kw.get("temperature", 1.0)
    n = {}
    for backend in BACKENDS:
        n[backend] = _assert_prefix(_kept(fuq.truncate(x, backend=backend, **kw)), z)
    assert (n["cpp"] - n["reference"]).abs().max() <= 3, (n, kw)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("kw", [dict(typical_p=0.7), dict(typical_p=0.2, min_tokens_to_keep=40), dict(top_k=700),
                                dict(min_p=0.02), dict(top_h=0.6, top_k=900, top_p=0.95, typical_p=0.99)], ids=str)
def test_tie_heavy_rows_cpp_equals_reference(dtype, kw):
    x = (make_logits(2, 9000, torch.float32, "normal", seed=6) * 0.7).to(dtype)
    got = fuq.truncate(x, backend="cpp", **kw)
    want = fuq.truncate(x, backend="reference", **kw)
    assert_same_kept(got, want, x, kw)


def _top_h_count_mp(row: torch.Tensor, alpha: float) -> int:
    """Tokens top-h keeps on one row, with 60-digit arithmetic (mpmath), in the order of the rule."""
    mp = pytest.importorskip("mpmath")
    mp.mp.dps = 60
    zs = [mp.mpf(float(v)) for v in torch.sort(row.double(), descending=True).values.tolist()]
    m = zs[0]
    n_top = sum(1 for z in zs if z == m)
    rest = mp.fsum(mp.exp(z - m) for z in zs if z < m)  # S = n_top + rest; 1 + 1e-130 needs log1p
    log_s = mp.log1p(rest) if n_top == 1 else mp.log(n_top + rest)
    S = n_top + rest
    terms = [mp.exp(z - m) / S * ((m - z) + log_s) for z in zs]
    bound = alpha * mp.fsum(terms)
    cum, n = mp.mpf(0), 0
    for t in terms:
        cum += t
        if cum > bound:
            break
        n += 1
    return max(n, 1)


@pytest.mark.parametrize("gap", [20.0, 90.0, 300.0, 1000.0])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_top_h_one_logit_far_ahead(gap, dtype):
    """float32 exp(-90) underflows: the kernel and the reference take the rest relative to the
    runner-up, and keep what 60-digit maths keeps (±1 token: the float64 rounding at the cut)."""
    g = torch.Generator().manual_seed(int(gap))
    x = torch.randn(2, 2000, generator=g)
    x[0, 7] += gap
    x[1, 1999] += gap
    x = x.to(dtype)
    for alpha in (0.4, 0.9):
        want = torch.tensor([_top_h_count_mp(x[r].float(), alpha) for r in range(2)])
        for backend in BACKENDS:
            n = _assert_prefix(_kept(fuq.truncate(x, top_h=alpha, backend=backend)), x.float())
            assert (n - want).abs().max() <= 1, (backend, gap, alpha, n.tolist(), want.tolist())
            assert (n > 100).all() and (n < 1990).all()  # not the collapse to a handful or to all


@pytest.mark.parametrize("gap", [90.0, 300.0, 1000.0])
def test_top_h_far_ahead_at_50000_cpp_equals_reference(gap):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 50000, generator=g)
    x[:, 7] += gap
    n = [_assert_prefix(_kept(fuq.truncate(x, top_h=0.4, backend=b)), x) for b in BACKENDS]
    assert (n[0] - n[1]).abs().max() <= 1 and (n[0] > 4000).all(), n


@pytest.mark.parametrize("backend", BACKENDS)
def test_sample_draws_inside_the_cut_tie_group(backend):
    """top_p = 0.5 on a uniform row of 8 keeps ids 0..3: every draw lands there."""
    x = torch.zeros(64, 8)
    ids, _ = fuq.sample(x, top_p=0.5, generator=torch.Generator().manual_seed(1), backend=backend)
    assert ids.max().item() <= 3 and ids.unique().numel() == 4


def test_sample_ids_equal_on_tie_heavy_rows():
    x = (make_logits(2, 32768, torch.float32, "normal", seed=8) * 0.5).to(torch.bfloat16)
    for kw in (dict(top_p=0.7), dict(top_h=0.5), dict(typical_p=0.6, temperature=0.8)):
        ids = [fuq.sample(x, generator=torch.Generator().manual_seed(5), backend=b, **kw)[0] for b in BACKENDS]
        assert torch.equal(ids[0], ids[1]), kw
        assert _kept(reference.truncate(x, *_op_args(kw))).gather(-1, ids[0][:, None]).all()


@pytest.mark.parametrize("backend", BACKENDS)
def test_min_tokens_to_keep_beyond_the_live_tokens(backend):
    """min_tokens_to_keep larger than the live count keeps every live token (and no -inf one)."""
    x = torch.tensor([[NEG, 3.0, NEG, 1.0, 0.5, NEG]])
    for kw in (dict(top_p=0.1), dict(typical_p=0.1), dict(top_k=1), dict(min_p=0.9), dict(epsilon=0.5)):
        got = fuq.truncate(x, min_tokens_to_keep=5, backend=backend, **kw)
        assert _kept(got).tolist() == [[False, True, False, True, True, False]], kw
