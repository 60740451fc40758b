"""fuq.attention_stats: the reference against float64 maths, every kernel against the reference."""

from __future__ import annotations

import math

import pytest
import torch
from helpers import DTYPES, TRITON_RUNS

import fuq
from fuq import _library, reference

# (B, Hq, Hkv, Lq, T, d, causal, window, mask): GQA ratios 1, 3, 4, 8; d 64 / 128 / 256 (and
# small d for the interpreter); T of 1, T = Lq, T not a multiple of any tile; masks on keys
# ([B, T]) and per row ([B, Lq, T], with a row that may attend no key).
CASES = [
    (1, 4, 4, 1, 1, 64, True, None, None),
    (2, 3, 1, 1, 77, 64, True, None, "keys"),
    (1, 4, 1, 1, 300, 256, True, None, None),
    (2, 8, 1, 5, 150, 128, True, 40, "rows"),
    (1, 6, 2, 7, 7, 64, True, None, None),
    (2, 9, 3, 3, 200, 64, False, None, "keys"),
    (1, 4, 2, 4, 130, 128, False, 16, "rows"),
    (1, 2, 1, 40, 90, 16, True, None, None),
    (1, 8, 1, 1, 1000, 8, True, 100, "keys"),
]
IDS = [f"B{c[0]}-Hq{c[1]}-Hkv{c[2]}-Lq{c[3]}-T{c[4]}-d{c[5]}-{'c' if c[6] else 'nc'}-w{c[7]}-{c[8]}" for c in CASES]
# The interpreter is slow: a subset that still covers each ratio, d, dtype, mask kind and both
# mass routes (kept scores; recomputed from K: case 7, 80 query rows of d = 16).
_TRITON = ((1, torch.float32), (2, torch.bfloat16), (3, torch.float16), (5, torch.float32), (6, torch.bfloat16),
           (7, torch.float16))  # fmt: skip
TRITON_PARAMS = [pytest.param(CASES[i], dt, id=f"{IDS[i]}-{dt}") for i, dt in _TRITON]


def make_inputs(case, dtype=torch.float32, seed=0):
    B, Hq, Hkv, Lq, T, d, causal, window, mask_kind = case
    g = torch.Generator().manual_seed(seed + 7 * T + d)
    q = (torch.randn(B, Hq, Lq, d, generator=g) * 1.5).to(dtype)
    k = torch.randn(B, Hkv, T, d, generator=g).to(dtype)
    mask = None
    if mask_kind == "keys":
        mask = torch.rand(B, T, generator=g) > 0.3
    elif mask_kind == "rows":
        mask = torch.rand(B, Lq, T, generator=g) > 0.3
        mask[0, 0] = False  # a row that may attend no key
    return q, k, dict(mask=mask, causal=causal, window=window)


def float64_stats(q, k, scale, mask, causal, window):
    """The definition, in float64, one query row at a time."""
    B, Hq, Lq, d = q.shape
    Hkv, T = k.shape[1], k.shape[2]
    g = Hq // Hkv
    mass = torch.zeros(B, Hkv, T, dtype=torch.float64)
    ent = torch.full((B, Hq, Lq), float("nan"), dtype=torch.float64)
    lse = torch.full((B, Hq, Lq), float("-inf"), dtype=torch.float64)
    for b in range(B):
        for h in range(Hq):
            for i in range(Lq):
                pos = T - Lq + i
                ok = [
                    (not causal or j <= pos)
                    and (window is None or j > pos - window)
                    and (mask is None or bool(mask[b, j] if mask.dim() == 2 else mask[b, i, j]))
                    for j in range(T)
                ]
                idx = torch.tensor([j for j in range(T) if ok[j]], dtype=torch.long)
                if idx.numel() == 0:
                    continue
                s = (k[b, h // g, idx].double() @ q[b, h, i].double()) * scale
                lse[b, h, i] = torch.logsumexp(s, 0)
                p = torch.softmax(s, 0)
                ent[b, h, i] = -(p * torch.log(p.clamp_min(1e-300))).sum()
                mass[b, h // g, idx] += p
    return mass, ent, lse


def assert_attention_close(got, want, atol=2e-4, rtol=1e-4):
    for name, a, b in zip(("mass", "entropy", "lse"), got, want, strict=True):
        assert a.dtype == torch.float32, name
        torch.testing.assert_close(
            a.cpu(), b.cpu().float(), atol=atol, rtol=rtol, equal_nan=True, msg=lambda m, n=name: f"{n}: {m}"
        )


def backends():
    out = [pytest.param("cpp", id="cpp")]
    out.append(
        pytest.param(
            "triton",
            id="triton",
            marks=[pytest.mark.triton_interp, pytest.mark.skipif(not TRITON_RUNS, reason="triton not installed")],
        )
    )
    if torch.cuda.is_available():
        out.append(pytest.param("cuda", id="cuda", marks=[pytest.mark.gpu,
                   pytest.mark.skipif(not _library.HAS_CUDA_CPP, reason="fuq._C_cuda not built")]))  # fmt: skip
    return out


def _device(backend):
    return "cuda" if backend == "cuda" or (backend == "triton" and torch.cuda.is_available()) else "cpu"


# ---------------------------------------------------------------------------------------------
# the reference


@pytest.mark.parametrize("case", CASES[:7], ids=IDS[:7])
def test_reference_matches_float64(case):
    q, k, kw = make_inputs(case)
    scale = 1.0 / math.sqrt(q.shape[-1])
    want = float64_stats(q, k, scale, kw["mask"], kw["causal"], kw["window"])
    got = reference.attention_stats(q, k, scale, kw["mask"], kw["causal"], kw["window"])
    assert_attention_close(got, want, atol=2e-5, rtol=2e-5)
    # each query row's probabilities sum to 1: the mass of a group sums to its live rows
    live = torch.isfinite(got[2]).reshape(q.shape[0], k.shape[1], -1).sum(-1).float()
    torch.testing.assert_close(got[0].sum(-1), live, atol=1e-4, rtol=1e-5)


def test_reference_rows_without_keys_and_nan():
    q = torch.randn(1, 2, 2, 8)
    k = torch.randn(1, 1, 5, 8)
    mask = torch.ones(1, 2, 5, dtype=torch.bool)
    mask[0, 0] = False  # row 0 may attend nothing
    q[0, 1, 1, 0] = float("nan")  # head 1, row 1: a NaN score on every key
    mass, ent, lse = reference.attention_stats(q, k, 0.5, mask, True, None)
    assert torch.isneginf(lse[0, :, 0]).all() and ent[0, :, 0].isnan().all()
    assert lse[0, 1, 1].isnan() and ent[0, 1, 1].isnan() and lse[0, 0, 1].isfinite()
    assert mass.isnan().all()  # row (1, 1) may attend every key: NaN, never a silent 0


# ---------------------------------------------------------------------------------------------
# kernels against the reference


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_cpp_matches_reference(case, dtype):
    q, k, kw = make_inputs(case, dtype)
    got = fuq.attention_stats(q, k, backend="cpp", **kw)
    want = fuq.attention_stats(q, k, backend="reference", **kw)
    assert_attention_close(got, want)


@pytest.mark.parametrize("case", [CASES[3], CASES[5], CASES[7]], ids=[IDS[3], IDS[5], IDS[7]])
def test_cpp_two_pass_route(case, monkeypatch):
    """Scores that do not fit the budget are recomputed from K (a second pass): same result."""
    monkeypatch.setenv("FUQ_ATTENTION_SCORE_BUDGET", "0")
    q, k, kw = make_inputs(case, torch.bfloat16)
    assert_attention_close(fuq.attention_stats(q, k, backend="cpp", **kw),
                           fuq.attention_stats(q, k, backend="reference", **kw))  # fmt: skip


# Prefill windows (the SnapKV observation window, Lq = 64) on the C++ GEMM route (G >= 16 rows per
# KV head): GQA 3 and 4, T over several key chunks and not a multiple of one, a sliding window, row
# and key masks (row 0 of the row mask may attend nothing).
PREFILL_CASES = [
    (1, 9, 3, 64, 700, 64, True, None, "rows"),
    (2, 4, 1, 64, 600, 256, True, 200, "keys"),
    (1, 8, 2, 64, 64, 128, False, None, None),
]
PREFILL_IDS = [f"Hq{c[1]}-Hkv{c[2]}-T{c[4]}-d{c[5]}-w{c[7]}-{c[8]}" for c in PREFILL_CASES]


@pytest.mark.parametrize("budget", [None, "0"], ids=["kept", "two-pass"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("case", PREFILL_CASES, ids=PREFILL_IDS)
def test_cpp_prefill_window(case, dtype, budget, monkeypatch):
    if budget is not None:
        monkeypatch.setenv("FUQ_ATTENTION_SCORE_BUDGET", budget)
    q, k, kw = make_inputs(case, dtype)
    got = fuq.attention_stats(q, k, backend="cpp", **kw)
    assert_attention_close(got, fuq.attention_stats(q, k, backend="reference", **kw))
    if dtype == torch.float32:  # and against float64 directly
        want = float64_stats(q, k, 1.0 / math.sqrt(q.shape[-1]), kw["mask"], kw["causal"], kw["window"])
        assert_attention_close(got, want)


def test_cpp_kept_scores_reused_across_calls():
    """The kept scores live in a per-thread scratch reused by the next call (grown when too small):
    calls of growing, shrinking and growing sizes, one after another, each equal the reference."""
    cases = [PREFILL_CASES[0], CASES[1], PREFILL_CASES[1], CASES[0], PREFILL_CASES[0], PREFILL_CASES[2]]
    for seed, case in enumerate(cases):
        q, k, kw = make_inputs(case, torch.float32, seed=seed)
        got = fuq.attention_stats(q, k, backend="cpp", **kw)
        assert_attention_close(got, fuq.attention_stats(q, k, backend="reference", **kw))


@pytest.mark.parametrize("budget", [None, "0"], ids=["kept", "two-pass"])
def test_cpp_prefill_non_finite(budget, monkeypatch):
    """NaN / inf scores and fully masked rows on the GEMM route (16 rows per KV head)."""
    if budget is not None:
        monkeypatch.setenv("FUQ_ATTENTION_SCORE_BUDGET", budget)
    q = torch.randn(1, 4, 8, 16)
    k = torch.randn(1, 2, 600, 16)
    q[0, 3, 2, 5] = float("nan")  # head 3 (KV head 1), row 2: NaN scores
    k[0, 0, 400, 0] = float("inf")  # KV head 0, key 400: +-inf scores for heads 0 and 1
    mask = torch.rand(1, 8, 600, generator=torch.Generator().manual_seed(1)) > 0.2
    mask[0, 1] = False  # row 1 may attend nothing
    mask[0, 4, 300:] = False  # row 4: nothing in the last key chunks
    want = reference.attention_stats(q, k, 0.25, mask, True, None)
    got = fuq.attention_stats(q, k, scale=0.25, mask=mask, backend="cpp")
    assert_attention_close(got, want)
    assert got.mass[0, 1].isnan().any() and got.mass[0, 0].isnan().any()


@pytest.mark.triton_interp
@pytest.mark.skipif(not TRITON_RUNS, reason="triton not installed")
@pytest.mark.parametrize("case, dtype", TRITON_PARAMS)
def test_triton_matches_reference(case, dtype):
    dev = _device("triton")
    q, k, kw = make_inputs(case, dtype)
    want = fuq.attention_stats(q, k, backend="reference", **kw)
    if kw["mask"] is not None:
        kw["mask"] = kw["mask"].to(dev)
    got = fuq.attention_stats(q.to(dev), k.to(dev), backend="triton", **kw)
    assert_attention_close(got, want)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available() or not _library.HAS_CUDA_CPP, reason="needs a GPU and fuq._C_cuda")
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_cuda_matches_reference(case, dtype):
    q, k, kw = make_inputs(case, dtype)
    want = fuq.attention_stats(q, k, backend="reference", **kw)
    if kw["mask"] is not None:
        kw["mask"] = kw["mask"].cuda()
    assert_attention_close(fuq.attention_stats(q.cuda(), k.cuda(), backend="cuda", **kw), want)


@pytest.mark.parametrize("backend", backends())
def test_non_finite_and_empty(backend):
    dev = _device(backend)
    q = torch.randn(1, 4, 2, 16)
    k = torch.randn(1, 2, 20, 16)
    q[0, 3, 0, 5] = float("nan")  # head 3 (KV head 1), row 0: NaN scores
    k[0, 0, 4, 0] = float("inf")  # KV head 0, key 4: +-inf scores for heads 0 and 1
    mask = torch.ones(1, 20, dtype=torch.bool)
    mask[0, 7] = False
    want = reference.attention_stats(q, k, 0.25, mask, True, None)
    got = fuq.attention_stats(q.to(dev), k.to(dev), scale=0.25, mask=mask.to(dev), backend=backend)
    assert_attention_close(got, want)
    assert got.mass[0, 1].isnan().sum() == 18  # the NaN row may attend keys 0..18 but 7
    # no query row / no key / no batch: well-formed empty or -inf results
    for qs, ks, causal in (((0, 4, 1, 16), (0, 2, 5, 16), True), ((1, 4, 1, 16), (1, 2, 0, 16), False),
                           ((1, 4, 0, 16), (1, 2, 5, 16), True)):  # fmt: skip
        q0, k0 = torch.randn(qs), torch.randn(ks)
        want = reference.attention_stats(q0, k0, 0.25, None, causal, None)
        got = fuq.attention_stats(q0.to(dev), k0.to(dev), scale=0.25, causal=causal, backend=backend)
        assert [tuple(t.shape) for t in got] == [tuple(t.shape) for t in want]
        assert_attention_close(got, want)


def test_auto_is_cpp_on_cpu_and_strided_k():
    q, k, kw = make_inputs(CASES[5])
    big = torch.randn(2, 3, 256, 64)
    big[:, :, :200] = k
    ks = big[:, :, :200]  # a view into a larger cache: T stride 64, head stride 256 * 64
    assert not ks.is_contiguous()
    got = fuq.attention_stats(q, ks, **kw)
    assert_attention_close(got, fuq.attention_stats(q, k, backend="reference", **kw))
    assert isinstance(got, fuq.AttentionStats)
    assert got.mass.shape == (2, 3, 200) and got.entropy.shape == (2, 9, 3) and got.lse.shape == (2, 9, 3)


def test_opcheck():
    """Schema, fake kernel and torch.compile tracing (inputs whose outputs hold no NaN: opcheck compares exactly)."""
    q, k, kw = make_inputs(CASES[5])
    torch.library.opcheck(torch.ops.fuq.attention_stats.default, (q, k, 0.125, kw["mask"], True, 40))


# ---------------------------------------------------------------------------------------------
# bad input: a clear error naming the argument


@pytest.mark.parametrize(
    "q_shape, k_shape, kwargs, exc, match",
    [
        ((1, 4, 1, 8), (1, 4, 3, 8), dict(backend="nope"), ValueError, "backend"),
        ((4, 1, 8), (1, 4, 3, 8), {}, ValueError, "q must have 4 dims"),
        ((1, 4, 1, 8), (1, 4, 3, 4), {}, ValueError, "k must be"),
        ((1, 4, 1, 8), (2, 4, 3, 8), {}, ValueError, "k must be"),
        ((1, 4, 1, 8), (1, 3, 3, 8), {}, ValueError, "multiple of k's heads"),
        ((1, 4, 5, 8), (1, 4, 3, 8), {}, ValueError, "T >= Lq"),
        ((1, 4, 1, 8), (1, 4, 3, 8), dict(scale=0.0), ValueError, "scale"),
        ((1, 4, 1, 8), (1, 4, 3, 8), dict(scale=float("nan")), ValueError, "scale"),
        ((1, 4, 1, 8), (1, 4, 3, 8), dict(window=0), ValueError, "window"),
        ((1, 4, 1, 8), (1, 4, 3, 8), dict(window=True), ValueError, "window"),
        ((1, 4, 1, 8), (1, 4, 3, 8), dict(mask=torch.ones(1, 3)), TypeError, "mask must be a bool"),
        ((1, 4, 1, 8), (1, 4, 3, 8), dict(mask=torch.ones(1, 4, dtype=torch.bool)), ValueError, "mask must be"),
    ],
)
def test_bad_input(q_shape, k_shape, kwargs, exc, match):
    with pytest.raises(exc, match=match):
        fuq.attention_stats(torch.randn(q_shape), torch.randn(k_shape), **kwargs)


def test_bad_dtype_and_type():
    with pytest.raises(TypeError, match="q must be float32"):
        fuq.attention_stats(torch.ones(1, 1, 1, 4, dtype=torch.int32), torch.randn(1, 1, 2, 4))
    with pytest.raises(TypeError, match="k must be a torch.Tensor"):
        fuq.attention_stats(torch.randn(1, 1, 1, 4), [[1.0]])
    with pytest.raises(ValueError, match="needs a CUDA tensor"):
        fuq.attention_stats(torch.randn(1, 1, 1, 4), torch.randn(1, 1, 2, 4), backend="cuda")


@pytest.mark.parametrize("backend", backends())
def test_mixed_dtypes(backend):
    """q and k of different float dtypes (a float32 query against a bfloat16 cache): float32 maths."""
    dev = _device(backend)
    q, k, kw = make_inputs(CASES[1])
    k = k.to(torch.bfloat16)
    want = reference.attention_stats(q, k, 0.125, kw["mask"], True, None)
    got = fuq.attention_stats(q.to(dev), k.to(dev), scale=0.125, mask=kw["mask"].to(dev), backend=backend)
    assert_attention_close(got, want)
