"""fuq.sample: reproducible, distribution-exact draws from the truncated distribution,
with the LogitStats of the untruncated step."""

from __future__ import annotations

import pytest
import torch
from helpers import assert_stats_close, make_logits

import fuq
from fuq import reference

scipy_stats = pytest.importorskip("scipy.stats")

BACKENDS = ["cpp", "reference"]


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize("backend", BACKENDS)
def test_reproducible_and_same_on_every_backend(backend):
    x = make_logits(4, 32000, torch.float32, "llm", seed=1)
    kw = dict(temperature=0.8, top_p=0.9, top_k=200)
    a, _ = fuq.sample(x, generator=_gen(3), backend=backend, **kw)
    b, _ = fuq.sample(x, generator=_gen(3), backend=backend, **kw)
    assert torch.equal(a, b)
    ref, _ = fuq.sample(x, generator=_gen(3), backend="reference", **kw)
    assert torch.equal(a, ref)
    assert a.dtype == torch.int64 and a.shape == (4,)


@pytest.mark.parametrize("V", [32000, 262144])
@pytest.mark.parametrize(
    "kw",
    [
        dict(),
        dict(top_k=50),
        dict(top_p=0.9, temperature=0.7),
        dict(min_p=0.05),
        dict(typical_p=0.9),
        dict(eta=1e-3),
        dict(top_h=0.5),
        dict(top_n_sigma=1.0),
        dict(p_less=True),
        dict(epsilon=3e-4),
    ],
    ids=str,
)
def test_cpp_draws_equal_reference(kw, V):
    """Same uniforms -> same ids as the reference's inverse CDF (up to a rounding tie, never seen here)."""
    x = make_logits(3, V, torch.float32, "masked", seed=2)
    ref = fuq.truncate(x, backend="reference", **kw)
    for seed in range(4):
        got, _ = fuq.sample(x, generator=_gen(seed), backend="cpp", **kw)
        u = torch.rand(3, dtype=torch.float64, generator=_gen(seed))  # what fuq.sample draws
        assert torch.equal(got, reference.sample_from(ref, u)), (kw, seed)
        assert (ref.gather(-1, got[:, None]) > float("-inf")).all(), "drew a removed token"


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("backend", BACKENDS)
def test_stats_are_those_of_the_untruncated_step(dtype, backend):
    x = make_logits(3, 50257, dtype, "llm", seed=4)
    ids, st = fuq.sample(x, temperature=0.6, top_p=0.5, k=7, generator=_gen(0), backend=backend)
    want = fuq.logit_stats(x, k=7, tokens=ids, temperature=0.6, backend="reference")
    assert_stats_close(st, want, 50257, dtype)
    assert st.token_logprob.shape == (3,)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(
    "kw",
    [
        dict(),
        dict(temperature=0.5),
        dict(top_k=5),
        dict(top_p=0.7),
        dict(typical_p=0.6),
        dict(min_p=0.2),
        dict(top_h=0.6),
        dict(p_less=True, temperature=2.0),
    ],
    ids=str,
)
def test_chi_square(backend, kw):
    """Many draws on a small vocabulary follow softmax(truncate(logits)) exactly."""
    V, N = 12, 40000
    row = torch.linspace(2.0, -2.0, V) + 0.3 * torch.sin(torch.arange(V, dtype=torch.float32) * 1.7)
    x = row.expand(N, V).contiguous()
    ids, _ = fuq.sample(x, generator=_gen(123), backend=backend, **kw)
    counts = torch.bincount(ids, minlength=V).double()
    p = torch.softmax(reference.truncate(row[None], *_args(kw))[0].double(), -1)
    kept = p > 0
    assert counts[~kept].sum() == 0, "drew a removed token"
    stat, pval = scipy_stats.chisquare(counts[kept].numpy(), (p[kept] * N).numpy())
    assert pval > 1e-4, (kw, stat, pval)


def _args(kw: dict) -> tuple:
    from fuq import knobs

    return knobs.resolve(None, **kw)


@pytest.mark.parametrize("backend", BACKENDS)
def test_edge_rows(backend):
    x = torch.tensor([[float("-inf")] * 4, [0.0, float("nan"), 1.0, 2.0], [1.0, 1.0, 1.0, 1.0]])
    ids, st = fuq.sample(x, top_p=0.9, generator=_gen(0), backend=backend)
    assert ids[0] == 0 and torch.isnan(st.token_logprob[0]) and st.lse[0] == float("-inf")
    assert ids[1] == 0 and torch.isnan(st.lse[1])
    assert 0 <= ids[2] < 4
    one, st1 = fuq.sample(torch.tensor([[1.5]]), top_k=1, k=1, generator=_gen(0), backend=backend)
    assert one.tolist() == [0] and abs(st1.token_logprob.item()) < 1e-6


def test_leading_dims_and_default_generator():
    x = make_logits(6, 300, torch.float32, "normal").reshape(2, 3, 300)
    torch.manual_seed(0)
    ids, st = fuq.sample(x, top_k=3, k=2)
    assert ids.shape == (2, 3) and st.topk_ids.shape == (2, 3, 2) and st.token_logprob.shape == (2, 3)
    top3 = torch.topk(x, 3, dim=-1).indices
    assert (top3 == ids[..., None]).any(-1).all()


def test_bad_k():
    with pytest.raises(ValueError, match="k must be"):
        fuq.sample(torch.randn(2, 5), k=6)


@pytest.mark.parametrize("backend", ["cpp", "reference"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_base_stats_are_the_temperature_one_stats(backend, dtype):
    """base_stats=True: the same ids as without it, and the stats of softmax(logits) (T = 1)."""
    x = make_logits(3, 5003, dtype, "llm", seed=4)
    kw = dict(temperature=0.6, top_p=0.9, k=4)
    ids, st = fuq.sample(x, generator=torch.Generator().manual_seed(2), base_stats=True, backend=backend, **kw)
    ids_t, st_t = fuq.sample(x, generator=torch.Generator().manual_seed(2), backend=backend, **kw)
    assert torch.equal(ids, ids_t)
    assert_stats_close(st, reference.logit_stats(x, 4, ids, 1.0), 5003, dtype)
    assert not torch.allclose(st.entropy, st_t.entropy)  # T = 0.6 stats are another thing
    with pytest.raises(TypeError, match="base_stats"):
        fuq.sample(x, base_stats=1)


def test_draws_are_torch_rand_in_and_out_of_inference_mode_and_threads():
    """The CPU draw buffer (one uniform_ per call into a per-thread buffer) gives the numbers of
    torch.rand(float64) from the same generator stream: ids equal `uniform=` with those numbers,
    across B changes, inference mode on / off, and two threads at once."""
    import threading

    x = make_logits(3, 101, torch.float32, seed=7)

    def expected(g_seed, B_list, mode_list):
        g = torch.Generator().manual_seed(g_seed)
        out = []
        for B in B_list:
            u = torch.rand((B,), dtype=torch.float64, generator=g)
            out.append(fuq.sample(x[:B], top_p=0.9, uniform=u)[0])
        return out

    Bs = [3, 1, 1, 2, 3]
    modes = [False, True, False, True, True]
    want = expected(11, Bs, modes)
    g = torch.Generator().manual_seed(11)
    for B, inf, w in zip(Bs, modes, want, strict=True):
        with torch.inference_mode(inf):
            ids, _ = fuq.sample(x[:B], top_p=0.9, generator=g)
        assert torch.equal(ids, w)

    got, errors = {}, []

    def worker(seed):
        try:
            gg = torch.Generator().manual_seed(seed)
            got[seed] = [fuq.sample(x, top_p=0.9, generator=gg)[0] for _ in range(200)]
        except Exception as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=worker, args=(s,)) for s in (1, 2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    for seed in (1, 2):
        assert all(torch.equal(a, b) for a, b in zip(got[seed], expected(seed, [3] * 200, [False] * 200), strict=True))
