"""fuq.logit_stats_partial / fuq.merge_stats: the merge of vocabulary shards equals the op on the whole row."""

from __future__ import annotations

import pytest
import torch

import fuq
from fuq.partial import PAD_ID, hidden_stats_partial
from tests.helpers import DTYPES, assert_stats_close, make_logits


def _cuts(V: int, widths) -> list[tuple[int, int]]:
    out, a = [], 0
    for w in widths:
        out.append((a, a + w))
        a += w
    assert a == V
    return out


def _states(x, cuts, **kw):
    return [fuq.logit_stats_partial(x[..., a:b], vocab_offset=a, **kw) for a, b in cuts]


def _float64_stats(x: torch.Tensor, t: float):
    """lse, entropy, varentropy of softmax(x / t) in float64 (live tokens only)."""
    z = x.double() / t
    lse = torch.logsumexp(z, -1)
    logp = z - lse[..., None]
    p = logp.exp()
    live = z > float("-inf")
    H = -torch.where(live, p * logp, torch.zeros_like(p)).sum(-1)
    var = torch.where(live, p * (logp + H[..., None]) ** 2, torch.zeros_like(p)).sum(-1)
    return lse, H, var


SPLITS = {
    "1": [1000],
    "unequal3": [1, 600, 399],
    "many": [7, 13, 200, 1, 279, 500],
}


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("split", list(SPLITS))
@pytest.mark.parametrize("kind", ["normal", "masked", "llm", "peaked"])
def test_merge_equals_whole_row(dtype, split, kind):
    V, B, k, t = 1000, 5, 9, 0.7
    x = make_logits(B, V, dtype, kind, seed=3)
    tokens = torch.randint(0, V, (B,), generator=torch.Generator().manual_seed(1))
    cuts = _cuts(V, SPLITS[split])
    got = fuq.merge_stats(_states(x, cuts, k=k, tokens=tokens, temperature=t))
    want = fuq.logit_stats(x, k=k, tokens=tokens, temperature=t)
    assert_stats_close(got, want, V, dtype)
    # and against float64 maths
    lse, H, var = _float64_stats(x, t)
    torch.testing.assert_close(got.lse.double(), lse, atol=1e-4, rtol=1e-5)
    torch.testing.assert_close(got.entropy.double(), H, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(got.varentropy.double(), var, atol=1e-3, rtol=1e-3)
    ztok = x.double().gather(-1, tokens[:, None])[:, 0] / t
    torch.testing.assert_close(got.token_logprob.double(), ztok - lse, atol=1e-4, rtol=1e-5)


def test_order_independent_and_lead_dims():
    V = 301
    x = make_logits(6, V, kind="llm", seed=5).reshape(2, 3, V)
    tokens = torch.randint(0, V, (2, 3), generator=torch.Generator().manual_seed(2))
    states = _states(x, _cuts(V, [100, 1, 200]), k=4, tokens=tokens)
    a = fuq.merge_stats(states)
    b = fuq.merge_stats(states[::-1])
    c = fuq.merge_stats([states[1], states[2], states[0]])
    want = fuq.logit_stats(x, k=4, tokens=tokens)
    assert a.lse.shape == (2, 3) and a.topk_ids.shape == (2, 3, 4)
    for other in (b, c):
        for f, u, v in zip(a._fields, a, other, strict=True):
            torch.testing.assert_close(u, v, atol=1e-6, rtol=1e-6, msg=f)
    assert_stats_close(a, want, V, torch.float32)


def test_ties_across_shards_use_global_order():
    # integer logits in a small range: many exact ties, across shard borders
    V = 97
    x = torch.randint(-3, 3, (8, V), generator=torch.Generator().manual_seed(0)).float()
    x[0] = 1.0  # a whole row of ties
    for widths in ([50, 47], [1, 1, 95], [30, 30, 37]):
        cuts = _cuts(V, widths)
        for order in (cuts, cuts[::-1]):
            got = fuq.merge_stats(_states(x, order, k=20))
            want = fuq.logit_stats(x, k=20, backend="reference")
            assert torch.equal(got.topk_ids, want.topk_ids)
            assert torch.equal(got.argmax, want.argmax)
            torch.testing.assert_close(got.topk_logprobs, want.topk_logprobs)


def test_dead_shards_and_rows():
    V = 40
    x = make_logits(4, V, seed=1)
    x[:, 10:25] = float("-inf")  # shard [10, 25) holds no finite value in any row
    x[3] = float("-inf")  # row 3: no finite value anywhere
    tokens = torch.tensor([12, 0, 39, 5])  # row 0's target is in the dead shard (masked: -inf)
    cuts = [(0, 10), (10, 25), (25, 40)]
    got = fuq.merge_stats(_states(x, cuts, k=3, tokens=tokens))
    want = fuq.logit_stats(x, k=3, tokens=tokens, backend="reference")
    assert_stats_close(got, want, V, torch.float32)
    assert got.token_logprob[0] == float("-inf")
    assert got.lse[3] == float("-inf") and torch.isnan(got.entropy[3]) and torch.isnan(got.varentropy[3])
    assert torch.isnan(got.topk_logprobs[3]).all() and torch.isnan(got.token_logprob[3])
    assert ((got.topk_ids >= 0) & (got.topk_ids < V)).all() and got.argmax[3] == 0


def test_nan_shard_poisons_its_row_only():
    x = make_logits(3, 30, seed=2)
    x[1, 20] = float("nan")
    got = fuq.merge_stats(_states(x, [(0, 15), (15, 30)], k=2))
    assert torch.isnan(got.lse[1]) and torch.isnan(got.entropy[1])
    assert torch.isfinite(got.lse[[0, 2]]).all()
    assert ((got.topk_ids >= 0) & (got.topk_ids < 30)).all() and 0 <= got.argmax[1] < 30


def test_k_wider_than_shards_and_size_one():
    V = 6
    x = make_logits(3, V, seed=4)
    states = _states(x, [(i, i + 1) for i in range(V)], k=V)  # six shards of width 1, k = V
    assert states[0].topk_ids[0, 1] == PAD_ID and states[0].topk_values[0, 1] == float("-inf")
    assert_stats_close(fuq.merge_stats(states), fuq.logit_stats(x, k=V), V, torch.float32)
    one = fuq.merge_stats(_states(x[:, :1], [(0, 1)], k=1, tokens=torch.zeros(3, dtype=torch.long)))
    torch.testing.assert_close(one.token_logprob, torch.zeros(3))
    torch.testing.assert_close(one.entropy, torch.zeros(3))


def test_matches_float64_on_shards_of_very_different_scale():
    # one shard far below the other: its weight underflows to ~0 without harming the merge
    x = torch.cat([torch.randn(2, 50) * 2 + 40.0, torch.randn(2, 70) * 2 - 60.0], dim=-1)
    got = fuq.merge_stats(_states(x, [(0, 50), (50, 120)]))
    lse, H, var = _float64_stats(x, 1.0)
    torch.testing.assert_close(got.lse.double(), lse, atol=1e-5, rtol=1e-6)
    torch.testing.assert_close(got.entropy.double(), H, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(got.varentropy.double(), var, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("softcap", [None, 5.0])
def test_hidden_stats_partial_merges_to_hidden_stats(softcap):
    g = torch.Generator().manual_seed(0)
    h, W, b = torch.randn(7, 16, generator=g), torch.randn(53, 16, generator=g), torch.randn(53, generator=g)
    tg = torch.randint(0, 53, (7,), generator=g)
    cuts = _cuts(53, [20, 3, 30])
    parts = [hidden_stats_partial(h, W[a:c], b[a:c], vocab_offset=a, k=5, targets=tg, temperature=0.8,
                                  softcap=softcap) for a, c in cuts]
    got = fuq.merge_stats(parts)
    want = fuq.hidden_stats(h, W, b, k=5, targets=tg, temperature=0.8, softcap=softcap, backend="reference")
    assert_stats_close(got, want, 53, torch.float32)


def test_bad_input():
    x = make_logits(2, 20)
    with pytest.raises(TypeError, match="vocab_offset"):
        fuq.logit_stats_partial(x, vocab_offset=1.0)
    with pytest.raises(ValueError, match="vocab_offset"):
        fuq.logit_stats_partial(x, vocab_offset=-1)
    with pytest.raises(ValueError, match="k must be >= 0"):
        fuq.logit_stats_partial(x, vocab_offset=0, k=-1)
    with pytest.raises(TypeError, match="logits_shard"):
        fuq.logit_stats_partial(x.long(), vocab_offset=0)
    with pytest.raises(ValueError, match="tokens must be global ids >= 0"):
        fuq.logit_stats_partial(x, vocab_offset=0, tokens=torch.tensor([-1, 0]))
    with pytest.raises(ValueError, match="temperature"):
        fuq.logit_stats_partial(x, vocab_offset=0, temperature=0.0)
    a = fuq.logit_stats_partial(x[:, :10], vocab_offset=0, k=2)
    b = fuq.logit_stats_partial(x[:, 10:], vocab_offset=10, k=2)
    with pytest.raises(ValueError, match="overlap"):
        fuq.merge_stats([a, b, a])
    with pytest.raises(ValueError, match=r"\[0, 10\) are in no shard"):
        fuq.merge_stats([b])
    with pytest.raises(ValueError, match=r"\[15, 25\) are in no shard"):
        fuq.merge_stats([a, fuq.logit_stats_partial(x[:, 10:15], vocab_offset=10, k=2),
                         fuq.logit_stats_partial(x[:, 15:], vocab_offset=25, k=2)])
    with pytest.raises(ValueError, match="k = 3"):
        fuq.merge_stats([a, fuq.logit_stats_partial(x[:, 10:], vocab_offset=10, k=3)])
    with pytest.raises(ValueError, match="temperature"):
        fuq.merge_stats([a, fuq.logit_stats_partial(x[:, 10:], vocab_offset=10, k=2, temperature=2.0)])
    with pytest.raises(ValueError, match="leading shape"):
        fuq.merge_stats([a, fuq.logit_stats_partial(x[:1, 10:], vocab_offset=10, k=2)])
    with pytest.raises(ValueError, match="k must be <= the merged vocabulary size"):
        fuq.merge_stats(_states(x, [(0, 10), (10, 20)], k=21))
    t1, t2 = torch.tensor([0, 1]), torch.tensor([0, 2])
    with pytest.raises(ValueError, match="other tokens"):
        fuq.merge_stats([fuq.logit_stats_partial(x[:, :10], vocab_offset=0, tokens=t1),
                         fuq.logit_stats_partial(x[:, 10:], vocab_offset=10, tokens=t2)])
    with pytest.raises(ValueError, match="every state or none"):
        fuq.merge_stats([fuq.logit_stats_partial(x[:, :10], vocab_offset=0, tokens=t1),
                         fuq.logit_stats_partial(x[:, 10:], vocab_offset=10)])
    with pytest.raises(ValueError, match=r"tokens must be in \[0, 20\)"):
        fuq.merge_stats(_states(x, [(0, 10), (10, 20)], tokens=torch.tensor([0, 20])))
    with pytest.raises(TypeError, match="non-empty sequence"):
        fuq.merge_stats([])
    with pytest.raises(TypeError, match="non-empty sequence"):
        fuq.merge_stats(a)
    with pytest.raises(TypeError, match=r"states\[1\]"):
        fuq.merge_stats([a, "b"])


def test_one_row_without_batch_dim_and_empty_batch():
    x = make_logits(1, 10, seed=6)[0]
    t = torch.tensor(7)
    got = fuq.merge_stats(_states(x, [(0, 4), (4, 10)], k=2, tokens=t))
    want = fuq.logit_stats(x, k=2, tokens=t)
    assert got.lse.shape == () and got.topk_ids.shape == (2,)
    assert_stats_close(fuq.LogitStats(*(f[None] for f in got)), fuq.LogitStats(*(f[None] for f in want)), 10,
                       torch.float32)
    empty = fuq.merge_stats(_states(torch.empty(0, 10), [(0, 4), (4, 10)], k=2))
    assert empty.lse.shape == (0,) and empty.topk_ids.shape == (0, 2)
