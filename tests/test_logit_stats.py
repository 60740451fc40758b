"""fuq.logit_stats on every backend against the reference (and the reference vs float64)."""

from __future__ import annotations

import pytest
import torch
from helpers import DTYPES, assert_stats_close, backends, make_logits, tol

import fuq
from fuq import _library, reference

BACKENDS = backends()
KINDS = ("normal", "peaked", "flat", "masked", "llm")


def _device(backend: str) -> str:
    return "cuda" if backend in ("cuda", "triton") and torch.cuda.is_available() else "cpu"


def _skip_slow(backend: str, V: int, k: int) -> None:
    if backend == "triton" and not torch.cuda.is_available() and (V > 50257 or k > 64):
        pytest.skip("interpreted Triton: kept to small shapes")


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("V", [1, 7, 4097, 50257, 262144])
@pytest.mark.parametrize("k", [0, 1, 50, "V"])
def test_against_reference(backend, dtype, V, k):
    k = V if k == "V" else k
    if k > V:
        pytest.skip("k > V is an error, tested below")
    _skip_slow(backend, V, k)
    B = 3 if V >= 50257 else 5
    x = make_logits(B, V, dtype, "llm" if V > 7 else "normal", device=_device(backend))
    tokens = torch.randint(0, V, (B,), device=x.device)
    got = fuq.logit_stats(x, k=k, tokens=tokens, temperature=0.8, backend=backend)
    want = reference.logit_stats(x.cpu(), k, tokens.cpu(), 0.8)
    assert_stats_close(got, want, V, dtype)
    assert got.topk_ids.shape == (B, k) and got.lse.shape == (B,)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_distributions(backend, kind, dtype):
    V = 4099 if backend == "triton" else 32011
    x = make_logits(4, V, dtype, kind, seed=1, device=_device(backend))
    for T in (1.0, 0.37, 2.5):
        got = fuq.logit_stats(x, k=20, temperature=T, backend=backend)
        want = reference.logit_stats(x.cpu(), 20, None, T)
        assert_stats_close(got, want, V, dtype)
        assert got.token_logprob is None


@pytest.mark.parametrize("backend", BACKENDS)
def test_leading_dims_and_strides(backend):
    dev = _device(backend)
    x = make_logits(2 * 3 * 2, 1031, torch.float32, "masked", device=dev).reshape(2, 3, 2, 1031)
    xt = x.transpose(0, 1)  # non-contiguous leading dims
    tokens = torch.randint(0, 1031, (3, 2, 2), device=dev)
    got = fuq.logit_stats(xt, k=5, tokens=tokens, backend=backend)
    want = fuq.logit_stats(xt.contiguous(), k=5, tokens=tokens, backend="reference")
    assert got.topk_ids.shape == (3, 2, 2, 5) and got.entropy.shape == (3, 2, 2)
    for a, b in zip(got, want, strict=False):
        torch.testing.assert_close(a, b, atol=2e-4, rtol=1e-4)
    # a strided view of a wider buffer, last dim contiguous
    wide = make_logits(4, 2000, torch.float32, device=dev)
    view = wide[:, 100:1131]
    got = fuq.logit_stats(view, k=3, backend=backend)
    want = reference.logit_stats(view.contiguous().cpu(), 3, None, 1.0)
    assert_stats_close(got, want, 1031, torch.float32)
    # a non-unit last-dim stride
    col = make_logits(1031, 4, torch.float32, device=dev).t()
    got = fuq.logit_stats(col, k=3, backend=backend)
    want = reference.logit_stats(col.contiguous().cpu(), 3, None, 1.0)
    assert_stats_close(got, want, 1031, torch.float32)


@pytest.mark.parametrize("backend", BACKENDS)
def test_degenerate_rows(backend):
    """All -inf -> lse -inf, NaN entropy; NaN -> NaN lse; other rows untouched."""
    dev = _device(backend)
    V = 777
    x = make_logits(5, V, torch.float32, device=dev)
    x[1] = float("-inf")
    x[2, 13] = float("nan")
    x[3] = float("-inf")
    x[3, 500] = 1.0  # a single live token: entropy 0, logp 0
    tokens = torch.tensor([0, 1, 2, 500, 4], device=dev)
    got = fuq.logit_stats(x, k=4, tokens=tokens, backend=backend)
    want = reference.logit_stats(x.cpu(), 4, tokens.cpu(), 1.0)
    lse = got.lse.cpu()
    assert lse[1] == float("-inf") and torch.isnan(got.entropy[1]) and torch.isnan(got.varentropy[1])
    assert torch.isnan(lse[2]) and torch.isnan(got.entropy[2]) and torch.isnan(got.token_logprob[2])
    assert got.entropy[3].item() == pytest.approx(0.0, abs=1e-6) and got.token_logprob[3].item() == 0.0
    assert got.argmax[3].item() == 500 and got.topk_ids[3, 0].item() == 500
    assert got.varentropy[3].item() == pytest.approx(0.0, abs=1e-6)
    # ids of degenerate rows are unspecified but valid
    assert ((got.topk_ids >= 0) & (got.topk_ids < V)).all() and ((got.argmax >= 0) & (got.argmax < V)).all()
    ok = torch.tensor([0, 3, 4])
    sub = fuq.LogitStats(*(t[ok.to(t.device)] for t in got[:9]))
    assert_stats_close(sub, tuple(t[ok] for t in want), V, torch.float32)


@pytest.mark.parametrize("backend", BACKENDS)
def test_ties_pick_the_lower_index(backend):
    dev = _device(backend)
    x = torch.zeros(2, 300, device=dev)
    x[0, [7, 100, 250]] = 5.0
    x[1, :] = 1.0
    got = fuq.logit_stats(x, k=4, backend=backend)
    assert got.argmax.tolist() == [7, 0]
    assert got.topk_ids.tolist() == [[7, 100, 250, 0], [0, 1, 2, 3]]


def test_empty_batch():
    x = torch.empty(0, 10)
    s = fuq.logit_stats(x, k=2)
    assert s.lse.shape == (0,) and s.topk_ids.shape == (0, 2)


@pytest.mark.parametrize(
    "kwargs, exc, match",
    [
        (dict(k=-1), ValueError, "k must be in"),
        (dict(k=11), ValueError, "k must be in"),
        (dict(k=1.5), TypeError, "k must be an int"),
        (dict(temperature=0.0), ValueError, "temperature"),
        (dict(temperature=-1.0), ValueError, "temperature"),
        (dict(temperature=float("nan")), ValueError, "temperature"),
        (dict(temperature=float("inf")), ValueError, "temperature"),
        (dict(tokens=torch.tensor([0, 10])), ValueError, "tokens must be in"),
        (dict(tokens=torch.tensor([-1, 0])), ValueError, "tokens must be in"),
        (dict(tokens=torch.tensor([0, 1, 2])), ValueError, "tokens must have shape"),
        (dict(tokens=torch.tensor([0.0, 1.0])), TypeError, "tokens must be an integer"),
        (dict(backend="gpu"), ValueError, "backend must be one of"),
    ],
)
def test_bad_arguments(kwargs, exc, match):
    with pytest.raises(exc, match=match):
        fuq.logit_stats(torch.randn(2, 10), **kwargs)


def test_bad_logits():
    with pytest.raises(TypeError, match="logits must be float32"):
        fuq.logit_stats(torch.ones(2, 10, dtype=torch.int64))
    with pytest.raises(ValueError, match="0-d"):
        fuq.logit_stats(torch.tensor(1.0))
    with pytest.raises(ValueError, match="V = 0"):
        fuq.logit_stats(torch.empty(3, 0))
    with pytest.raises(TypeError, match="logits must be a torch.Tensor"):
        fuq.logit_stats([[1.0, 2.0]])


def test_torch_compile_fullgraph():
    def step(x, t):
        s = fuq.logit_stats(x, k=5, tokens=t, temperature=0.7)
        return s.entropy + s.varentropy, s.topk_ids, s.token_logprob

    x = make_logits(3, 1000, torch.float32)
    t = torch.tensor([1, 2, 3])
    compiled = torch.compile(step, fullgraph=True)
    for a, b in zip(compiled(x, t), step(x, t), strict=False):
        torch.testing.assert_close(a, b)


def test_opcheck():
    x = make_logits(3, 257, torch.float32)
    torch.library.opcheck(torch.ops.fuq.logit_stats.default, (x, 4, torch.tensor([0, 1, 2]), 0.9))
    torch.library.opcheck(torch.ops.fuq.logit_stats.default, (x, 0, None, 1.0))


def test_extension_is_built():
    """CI builds the extension; if it is missing, the fallback must say so."""
    import os

    if os.environ.get("FUQ_NO_EXT") == "1":
        pytest.skip("built without the extension on purpose")
    assert _library.HAS_CPP, _library.C_ERROR


def _cpp_only():
    if not _library.HAS_CPP:
        pytest.skip("fuq._C not built")


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_cpp_split_rows(threads, dtype):
    """Few rows, huge V: the C++ kernel splits each row across threads and merges the parts.

    The max sits in the last segment, an equal max in the first (argmax = the first), top-k
    ties straddle segment boundaries, one row is -inf but for its last entries, one row has a
    NaN only in its last segment.
    """
    _cpp_only()
    V = 200_003  # not a multiple of any block or chunk size
    x = make_logits(3, V, dtype, "normal", seed=3)
    x[0, V - 1] = 30.0  # the max, in the last segment
    x[0, 5] = 30.0  # an equal max, first segment: argmax must be 5
    x[0, [17, 70_000, 140_000, 199_999]] = 20.0  # ties across segments
    x[1, : V - 3] = float("-inf")
    x[2, V - 2] = float("nan")
    tokens = torch.tensor([V - 1, V - 2, 0])
    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        got = fuq.logit_stats(x, k=6, tokens=tokens, temperature=0.9, backend="cpp")
    finally:
        torch.set_num_threads(old)
    want = reference.logit_stats(x, 6, tokens, 0.9)
    assert got.argmax[0].item() == 5
    assert got.topk_ids[0].tolist() == [5, V - 1, 17, 70_000, 140_000, 199_999]
    assert torch.isnan(got.lse[2]) and torch.isnan(got.entropy[2]) and torch.isnan(got.token_logprob[2])
    assert ((got.topk_ids[2] >= 0) & (got.topk_ids[2] < V)).all() and 0 <= got.argmax[2].item() < V
    ok = torch.tensor([0, 1])
    assert_stats_close(fuq.LogitStats(*(t[ok] for t in got[:9])), tuple(t[ok] for t in want), V, dtype)


def test_cpp_many_small_rows():
    """B large, V small: rows are batched per task; k = V sorts every row."""
    _cpp_only()
    for V in (1, 3, 65):
        x = make_logits(4099, V, torch.float32, "masked" if V > 1 else "normal", seed=V)
        tokens = torch.randint(0, V, (4099,))
        got = fuq.logit_stats(x, k=V, tokens=tokens, temperature=1.7, backend="cpp")
        assert_stats_close(got, reference.logit_stats(x, V, tokens, 1.7), V, torch.float32)


def test_cpp_op_token_out_of_range_is_nan():
    """Through the op directly (the public function rejects them): NaN, never an out-of-bounds read."""
    _cpp_only()
    x = make_logits(4, 33, torch.float32)
    tokens = torch.tensor([-1, 33, 1 << 40, 5])
    got = torch.ops.fuq.logit_stats(x, 2, tokens, 1.0)
    want = reference.logit_stats(x, 2, tokens, 1.0)
    assert torch.isnan(got[8][:3]).all()
    torch.testing.assert_close(got[8][3], want[8][3])


@pytest.mark.parametrize("backend", ["cpp", "reference"])
def test_pinf_row_has_lse_pinf(backend):
    """A row holding +inf (no NaN): lse = +inf as torch.logsumexp; NaN entropy, log-probs, mass."""
    x = torch.tensor([[0.0, float("inf"), 1.0, float("inf")], [0.0, float("inf"), float("nan"), 1.0]])
    s = fuq.logit_stats(x, k=2, tokens=torch.tensor([2, 0]), backend=backend)
    assert s.lse[0].item() == float("inf") == torch.logsumexp(x[0], -1).item()
    assert torch.isnan(s.lse[1])  # NaN wins
    assert s.argmax[0].item() == 1 and s.topk_ids[0].tolist() == [1, 3]
    for f in (s.entropy, s.varentropy, s.max_logprob, s.topk_mass, s.token_logprob):
        assert torch.isnan(f).all()
    assert torch.isnan(s.topk_logprobs).all()


def test_token_range_checked_on_cpu_only(monkeypatch):
    """CPU ids out of range raise; on another device the check would sync the host (and break
    CUDA-graph capture), so it is skipped: the kernels give token_logprob = NaN there."""
    from fuq.ops import _check_tokens

    with pytest.raises(ValueError, match="tokens must be in"):
        fuq.logit_stats(torch.randn(2, 5), tokens=torch.tensor([0, 5]))
    calls = []
    real = torch.aminmax
    monkeypatch.setattr(torch, "aminmax", lambda *a, **k: calls.append(1) or real(*a, **k))
    meta = torch.tensor([7, -1], device="meta")  # a device that is not the CPU: no value can be read
    out = _check_tokens(meta, torch.Size([2]), 5, meta.device)
    assert out.device.type == "meta" and out.dtype == torch.int64 and not calls
    _check_tokens(torch.tensor([0, 4]), torch.Size([2]), 5, torch.device("cpu"))
    assert calls  # the CPU path does check


# ---------------------------------------------------------------------------------------------
# The density-free sums (extra=True): Σ log p, #live, log Σ p^alpha, log Σ √p, from the same pass.

EXTRA = ("sum_logp", "n_live", "log_sum_p_alpha", "log_sum_sqrt_p")


def _density_free64(x: torch.Tensor, T: float, alpha: float) -> torch.Tensor:
    """The four sums in float64 maths from the float32 z = x / T (the spec's definitions)."""
    z = (x.float() / T).double()
    logp = torch.log_softmax(z, dim=-1)
    p = logp.exp()
    live = z > float("-inf")
    out = torch.stack(
        [
            torch.where(live, logp, torch.zeros_like(logp)).sum(-1),
            live.sum(-1).double(),
            (p**alpha).sum(-1).log(),
            p.sqrt().sum(-1).log(),
        ],
        dim=-1,
    )
    return out


def _assert_extra_close(got: fuq.LogitStats, want: torch.Tensor, V: int, dtype) -> None:
    t = tol(dtype, V)
    for j, name in enumerate(EXTRA):
        a = getattr(got, name)
        assert a is not None and a.dtype == torch.float32, name
        torch.testing.assert_close(a.cpu().double(), want[..., j].cpu().double(), equal_nan=True,
                                   msg=lambda m, n=name: f"{n}: {m}", **t)


def test_density_free_reference_vs_float64():
    """The reference's float32 sums against float64 maths, to the kernels' tolerances."""
    for kind in KINDS:
        for V in (7, 4097, 262144):
            x = make_logits(3, V, torch.float32, kind, seed=2)
            for T, alpha in ((1.0, 0.5), (0.7, 2.0), (2.0, 0.3)):
                got = reference.density_free(x, T, alpha)
                want = _density_free64(x, T, alpha)
                torch.testing.assert_close(got.double(), want, **tol(torch.float32, V))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("kind", ["llm", "masked", "flat", "peaked"])
def test_extra_against_float64(backend, dtype, kind):
    V = 4099 if backend == "triton" else 50257
    x = make_logits(4, V, dtype, kind, seed=5, device=_device(backend))
    for T, alpha in ((1.0, 0.5), (0.8, 2.0), (2.0, 0.25)):
        got = fuq.logit_stats(x, k=3, temperature=T, backend=backend, extra=True, alpha=alpha)
        _assert_extra_close(got, _density_free64(x.cpu(), T, alpha), V, dtype)
        _assert_extra_close(got, reference.density_free(x.cpu(), T, alpha), V, dtype)
        # the other fields are those of the default call
        assert_stats_close(got, reference.logit_stats(x.cpu(), 3, None, T), V, dtype)


@pytest.mark.parametrize("backend", BACKENDS)
def test_extra_degenerate_rows(backend):
    """NaN / +inf / all -inf rows: all four NaN; one live token: Σ log p = 0, 1 live, both logs 0."""
    dev = _device(backend)
    V = 777
    x = make_logits(6, V, torch.float32, device=dev)
    x[1] = float("-inf")
    x[2, 13] = float("nan")
    x[3] = float("-inf")
    x[3, 500] = 1.0
    x[4, 7] = float("inf")
    x[5, ::3] = float("-inf")  # masked tokens: p = 0, not counted as live
    got = fuq.logit_stats(x, k=2, backend=backend, extra=True, alpha=3.0)
    ex = torch.stack([getattr(got, n).cpu() for n in EXTRA], dim=-1)
    assert torch.isnan(ex[[1, 2, 4]]).all()
    torch.testing.assert_close(ex[3], torch.tensor([0.0, 1.0, 0.0, 0.0]), atol=1e-6, rtol=0)
    assert ex[5, 1].item() == V - len(range(0, V, 3))
    want = _density_free64(x.cpu(), 1.0, 3.0)
    ok = [0, 3, 5]
    torch.testing.assert_close(ex[ok].double(), want[ok], **tol(torch.float32, V))


@pytest.mark.parametrize("backend", BACKENDS)
def test_extra_off_is_none_and_shapes(backend):
    dev = _device(backend)
    x = make_logits(2 * 3, 1031, torch.float32, "masked", device=dev).reshape(2, 3, 1031)
    off = fuq.logit_stats(x, k=2, backend=backend)
    assert type(off) is fuq.LogitStats and not any(hasattr(off, n) for n in EXTRA)
    on = fuq.logit_stats(x, k=2, backend=backend, extra=True)
    assert type(on) is fuq.LogitStatsExtra
    for n in EXTRA:
        assert getattr(on, n).shape == (2, 3)
    for a, b in zip(on[:9], off[:9], strict=True):  # the same nine fields
        torch.testing.assert_close(a, b)
    flat = fuq.logit_stats(x.reshape(6, 1031), k=2, backend=backend, extra=True)
    for n in EXTRA:
        torch.testing.assert_close(getattr(on, n).reshape(6), getattr(flat, n))


@pytest.mark.parametrize("alpha", [0.0, -1.0, float("nan"), float("inf")])
def test_extra_bad_alpha(alpha):
    with pytest.raises(ValueError, match="alpha"):
        fuq.logit_stats(torch.zeros(2, 5), extra=True, alpha=alpha)
    with pytest.raises(TypeError, match="alpha"):
        fuq.logit_stats(torch.zeros(2, 5), extra=True, alpha=torch.tensor(0.5))


@pytest.mark.parametrize("threads", [1, 2])
def test_cpp_extra_split_rows(threads):
    """B = 1, huge V: the row is split into segments whose sums are merged (the max late)."""
    _cpp_only()
    V = 262_147
    x = make_logits(2, V, torch.float32, "llm", seed=7)
    x[0, V - 5] = 40.0  # the max in the last segment: every earlier segment is rescaled
    x[1, : V // 2] = float("-inf")  # the first segments see nothing live
    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        for alpha in (0.5, 1.7):
            got = fuq.logit_stats(x[:1], backend="cpp", extra=True, alpha=alpha)
            _assert_extra_close(got, _density_free64(x[:1], 1.0, alpha), V, torch.float32)
            got = fuq.logit_stats(x[1:], backend="cpp", extra=True, alpha=alpha, temperature=0.6)
            _assert_extra_close(got, _density_free64(x[1:], 0.6, alpha), V, torch.float32)
    finally:
        torch.set_num_threads(old)


def test_extra_gives_lm_polygraph_scores():
    """SelfCertainty, RenyiNeg and FisherRao of one step from the fields, as lm-polygraph defines them."""
    import math

    V = 3001
    x = make_logits(3, V, torch.float32, "llm", seed=9)
    alpha = 0.5
    s = fuq.logit_stats(x, extra=True, alpha=alpha, temperature=2.0)
    logp = torch.log_softmax(x.double() / 2.0, -1)
    p = logp.exp()
    self_certainty = -logp.mean(-1) - math.log(V)
    renyi = ((p**alpha).sum(-1).log() + (alpha - 1) * math.log(V)) / (alpha - 1)
    fisher_rao = 2 / math.pi * torch.acos(p.sqrt().sum(-1) * math.sqrt(1 / V))
    got_sc = -s.sum_logp.double() / s.n_live.double() - s.n_live.double().log()
    got_renyi = (s.log_sum_p_alpha.double() + (alpha - 1) * math.log(V)) / (alpha - 1)
    got_fr = 2 / math.pi * torch.acos(s.log_sum_sqrt_p.double().exp() / math.sqrt(V))
    torch.testing.assert_close(got_sc, self_certainty, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(got_renyi, renyi, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(got_fr, fisher_rao, atol=1e-5, rtol=1e-5)


def test_extra_opcheck():
    x = make_logits(3, 257, torch.float32)
    torch.library.opcheck(torch.ops.fuq.logit_stats.default, (x, 4, torch.tensor([0, 1, 2]), 0.9, 0.5))
    torch.library.opcheck(torch.ops.fuq.logit_stats.default, (x, 0, None, 1.0, 2.0))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_extra_one_token_vocab_and_odd_v(backend, dtype):
    """V = 1 (p = 1: every sum 0, one live token) and small odd V, with and without a mask."""
    dev = _device(backend)
    x = make_logits(3, 1, dtype, "normal", device=dev)
    got = fuq.logit_stats(x, backend=backend, extra=True, alpha=1.5, temperature=0.3)
    ex = torch.stack([getattr(got, n).cpu() for n in EXTRA], dim=-1)
    torch.testing.assert_close(ex, torch.tensor([[0.0, 1.0, 0.0, 0.0]] * 3), atol=1e-6, rtol=0)
    for V in (3, 129, 1025):
        x = make_logits(2, V, dtype, "masked", seed=V, device=dev)
        got = fuq.logit_stats(x, k=1, backend=backend, extra=True, alpha=0.7, temperature=1.3)
        _assert_extra_close(got, _density_free64(x.cpu(), 1.3, 0.7), V, dtype)
