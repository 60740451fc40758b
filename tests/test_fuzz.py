"""Differential fuzz: every available backend against fuq/reference.py, and the reference against float64.

Seeded random cases: V from 1 to 262,144, every dtype, temperatures, knobs (alone and
chained), non-contiguous views, tie-heavy rows, NaN, +inf, all -inf rows, huge gaps, and
invalid arguments (which must raise ValueError / TypeError naming the argument). Each case
is one test id (``case_<seed>``), so a failure names the seed that reproduces it.

``FUQ_FUZZ_CASES=N`` runs N cases (default: a bounded set of about a minute on a quiet
2-core machine: the first 40 seeds). The backends under test are listed once, below:
add a backend there when it lands (the Triton and CUDA truncate/sample kernels).
"""

from __future__ import annotations

import math
import os
import random

import pytest
import torch
from helpers import DTYPES, TRITON_RUNS, assert_stats_close
from test_truncate import assert_same_kept

import fuq
from fuq import _library, reference
from fuq import knobs as fuq_knobs

# ---- the backends, in one place ---------------------------------------------------------------
STATS_BACKENDS = ["cpp"] + (["triton"] if TRITON_RUNS else [])  # fuq.logit_stats
TRUNCATE_BACKENDS = ["cpp"] + (["triton"] if TRITON_RUNS else [])  # fuq.truncate and fuq.sample (add "cuda")
TRITON_MAX_V = 2048  # interpreted Triton: small rows only
# -------------------------------------------------------------------------------------------------

N_CASES = int(os.environ.get("FUQ_FUZZ_CASES", "40"))
NEG, INF, NAN = float("-inf"), float("inf"), float("nan")
KINDS = ["normal", "ties", "nan", "pinf", "allneg", "gap", "masked", "flat"]
KNOBS = [k.name for k in fuq_knobs.KNOBS if k.name not in ("temperature", "min_tokens_to_keep")]  # the cut knobs


def _vocab(rng: random.Random) -> int:
    r = rng.random()
    if r < 0.1:
        return rng.choice([1, 2, 3])
    if r < 0.9:
        return int(math.exp(rng.uniform(math.log(4), math.log(40000))))
    return rng.choice([131072 + 5, 262144])


def _row_kind(x: torch.Tensor, kind: str, g: torch.Generator) -> None:
    """Shape row x (float32, in place) as ``kind``."""
    V = x.numel()
    pick = lambda n: torch.randint(0, V, (n,), generator=g)  # noqa: E731
    if kind == "ties":
        x.copy_(torch.round(x * 2) / 2)  # a handful of distinct values
    elif kind == "nan":
        x[pick(1)] = NAN
    elif kind == "pinf":
        x[pick(min(V, 2))] = INF
    elif kind == "allneg":
        x.fill_(NEG)
    elif kind == "gap":
        x[pick(1)] += random.Random(int(x.numel())).choice([90.0, 300.0, 1000.0])
    elif kind == "masked":
        x[torch.rand(V, generator=g) < 0.4] = NEG
    elif kind == "flat":
        x.mul_(1e-3)


def _logits(rng: random.Random, seed: int) -> tuple[torch.Tensor, list[str]]:
    B, V = rng.randint(1, 4), _vocab(rng)
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(B, V, generator=g) * rng.choice([0.5, 2.0, 5.0])
    kinds = [rng.choice(KINDS) if rng.random() < 0.6 else "normal" for _ in range(B)]
    for b in range(B):
        _row_kind(x[b], kinds[b], g)
    x = x.to(rng.choice(DTYPES))
    if rng.random() < 0.3 and V > 1:  # a non-contiguous view with the same values
        x = torch.cat([x, x], dim=-1)[:, ::2] if rng.random() < 0.5 else x.t().contiguous().t()
    return x, kinds


def _knobs(rng: random.Random, V: int) -> dict:
    kw: dict = {}
    for name in rng.sample(KNOBS, rng.choice([1, 1, 2, 3])):
        kw[name] = {
            "top_k": lambda: rng.randint(1, max(1, min(V, 3000))),
            "top_p": lambda: rng.choice([0.05, 0.5, 0.9, 0.999]),
            "min_p": lambda: rng.choice([0.01, 0.1, 0.5]),
            "typical_p": lambda: rng.choice([0.2, 0.7, 0.95]),
            "epsilon": lambda: rng.choice([1e-5, 1e-3, 0.05]),
            "eta": lambda: rng.choice([1e-4, 1e-2]),
            "top_h": lambda: rng.choice([0.2, 0.5, 0.9, 1.0]),
            "top_n_sigma": lambda: rng.choice([0.0, 1.0, 3.0]),
            "p_less": lambda: True,
        }[name]()
    if rng.random() < 0.3:
        kw["min_tokens_to_keep"] = rng.randint(1, 5)
    kw["temperature"] = rng.choice([1.0, 1.0, 0.7, 1.3, 0.1])
    return kw


def _bad_knobs(rng: random.Random) -> tuple[dict, str]:
    return rng.choice([
        (dict(top_p=0.0), "top_p"), (dict(top_p=1.5), "top_p"), (dict(top_k=-2), "top_k"),
        (dict(min_p=2.0), "min_p"), (dict(typical_p=-0.1), "typical_p"), (dict(epsilon=-1.0), "epsilon"),
        (dict(eta=NAN), "eta"), (dict(top_h=1.5), "top_h"), (dict(temperature=0.0), "temperature"),
        (dict(temperature=INF), "temperature"), (dict(min_tokens_to_keep=0), "min_tokens_to_keep"),
        (dict(top_n_sigma=-1.0), "top_n_sigma"),
    ])


def _check_reference_float64(x: torch.Tensor, T: float) -> None:
    """The reference's lse and entropy against float64 maths, on the rows with a live finite token."""
    lse, H = reference.logit_stats(x, 0, None, T)[:2]
    z = x.double() / T
    ok = (z > NEG).any(-1) & ~torch.isnan(z).any(-1) & ~(z == INF).any(-1)
    lse64 = torch.logsumexp(z, -1)
    logp = z - lse64[:, None]
    H64 = -torch.where(z > NEG, logp.exp() * logp, torch.zeros_like(logp)).sum(-1)
    torch.testing.assert_close(lse[ok].double(), lse64[ok], rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(H[ok].double(), H64[ok], rtol=1e-4, atol=1e-4)
    pinf = (z == INF).any(-1) & ~torch.isnan(z).any(-1)
    assert (lse[pinf] == INF).all(), "a +inf row must have lse = +inf"


def _check_stats(x, kinds, k, tokens, T):
    want = fuq.logit_stats(x, k=k, tokens=tokens, temperature=T, backend="reference")
    no_nan = ~torch.isnan(x.float()).any(-1)
    for backend in STATS_BACKENDS:
        if backend == "triton" and x.shape[-1] > TRITON_MAX_V:
            continue
        got = fuq.logit_stats(x, k=k, tokens=tokens, temperature=T, backend=backend)
        assert_stats_close(got, want, x.shape[-1], x.dtype)
        assert torch.equal(got.argmax[no_nan], want.argmax[no_nan]), backend
        assert torch.equal(got.lse.isposinf(), want.lse.isposinf()), f"{backend}: +inf rows"


def _runs(backend: str, V: int) -> bool:
    return not (backend == "triton" and V > TRITON_MAX_V)


def _check_truncate(x, kw):
    want = fuq.truncate(x, backend="reference", **kw)
    for backend in TRUNCATE_BACKENDS:
        if not _runs(backend, x.shape[-1]):
            continue
        got = fuq.truncate(x, backend=backend, **kw)
        assert torch.equal(got.isnan(), want.isnan()), f"{backend}: NaN rows differ ({kw})"
        assert_same_kept(got, want, x, kw)


def _check_sample(x, kw, k, seed):
    for base in (False, True):
        want_ids, want = fuq.sample(x, generator=torch.Generator().manual_seed(seed), k=k, base_stats=base,
                                    backend="reference", **kw)
        for backend in TRUNCATE_BACKENDS:
            if not _runs(backend, x.shape[-1]):
                continue
            ids, st = fuq.sample(x, generator=torch.Generator().manual_seed(seed), k=k, base_stats=base,
                                 backend=backend, **kw)
            # ids: equal but for a draw landing on a cut's rounding tie (never seen so far)
            assert torch.equal(ids, want_ids), f"{backend}: ids differ ({kw}, base_stats={base})"
            assert_stats_close(st, want, x.shape[-1], x.dtype)


@pytest.mark.fuzz
@pytest.mark.parametrize("seed", range(N_CASES), ids=lambda s: f"case_{s}")
def test_fuzz(seed):
    rng = random.Random(seed)
    x, kinds = _logits(rng, seed)
    V = x.shape[-1]
    if rng.random() < 0.08:  # invalid arguments: a clear error on every backend
        kw, name = _bad_knobs(rng)
        for backend in ["reference", *TRUNCATE_BACKENDS]:
            with pytest.raises((ValueError, TypeError), match=name):
                fuq.truncate(x, backend=backend, **kw)
            with pytest.raises((ValueError, TypeError), match=name):
                fuq.sample(x, backend=backend, **kw)
        return
    T = rng.choice([1.0, 0.7, 1.6])
    k = rng.randint(0, min(V, 20))
    tokens = torch.randint(0, V, x.shape[:-1], generator=torch.Generator().manual_seed(seed))
    if V <= 50000:
        _check_reference_float64(x, T)
    _check_stats(x, kinds, k, tokens if rng.random() < 0.7 else None, T)
    kw = _knobs(rng, V)
    _check_truncate(x, kw)
    _check_sample(x, kw, min(k, 5), seed)


def test_backend_lists():
    """The fuzz covers the C++ kernels whenever the extension is built."""
    if os.environ.get("FUQ_NO_EXT") != "1":
        assert _library.HAS_CPP_TRUNCATE and _library.HAS_CPP_SAMPLE and "cpp" in TRUNCATE_BACKENDS


# ---- rounding ties (issue 16.6): the exact answer on every backend ----------------------------
# The knob is the caller's float64 and the probabilities the exact reals of the softmax: on a
# uniform row of V, top-p and typical keep #{j : j / V < p}, top-h #{j : (j + 1) / V <= alpha};
# 0.2 (= 0.2000000000000000111...) lands exactly on a token at these V.
TIE_ROWS = [  # V, (top_p, typical_p, top_h) kept at 0.2
    (2000, (401, 401, 400)),
    (3000, (601, 601, 600)),
    (4095, (820, 820, 819)),
    (32000, (6401, 6401, 6400)),
]


def _tie_rows(V: int) -> torch.Tensor:
    """Uniform rows of V: all +0.0, all -0.0, and mixed signs."""
    x = torch.zeros(3, V)
    x[1] = -0.0
    x[2, ::2] = -0.0
    return x


@pytest.mark.fuzz
@pytest.mark.parametrize("backend", ["reference", *TRUNCATE_BACKENDS])
@pytest.mark.parametrize("V, want", TIE_ROWS, ids=[f"V{v}" for v, _ in TIE_ROWS])
def test_fuzz_tie_rows(backend, V, want):
    if backend == "triton" and V > 4096:
        pytest.skip("interpreted Triton: small rows only")
    x = _tie_rows(V)
    for name, n in zip(("top_p", "typical_p", "top_h"), want, strict=True):
        for xx, T in ((x, 1.0), (x.to(torch.bfloat16), 0.7)):
            got = fuq.truncate(xx, temperature=T, backend=backend, **{name: 0.2}) > NEG
            assert got.sum(-1).tolist() == [n] * 3, (backend, name, T)
            assert got[:, :n].all(), (backend, name)  # the lower ids of the tie group
            ids, _ = fuq.sample(xx, temperature=T, generator=torch.Generator().manual_seed(V), backend=backend,
                                **{name: 0.2})
            want_ids, _ = fuq.sample(xx, temperature=T, generator=torch.Generator().manual_seed(V),
                                     backend="reference", **{name: 0.2})
            assert torch.equal(ids, want_ids) and (ids < n).all(), (backend, name)


@pytest.mark.fuzz
@pytest.mark.parametrize("backend", ["reference", *TRUNCATE_BACKENDS])
def test_fuzz_mass_one_ulp_from_the_bound(backend):
    """p(token 0) = 0.98999999108...: 9e-9 below top_p = 0.99, under float32's resolution
    there: the mass before token 1 is < 0.99, so both tokens are kept."""
    x = torch.tensor([[-0.01005034614354372, -4.605169296264648]])
    assert (fuq.truncate(x, top_p=0.99, backend=backend) > NEG).sum().item() == 2
    assert (fuq.truncate(x.flip(-1), top_p=0.99, backend=backend) > NEG).sum().item() == 2
    assert (fuq.truncate(x, top_p=0.98999, backend=backend) > NEG).sum().item() == 1
