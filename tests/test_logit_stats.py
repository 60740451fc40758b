"""fuq.logit_stats on every backend against the reference (and the reference vs float64)."""

from __future__ import annotations

import pytest
import torch
from helpers import DTYPES, assert_stats_close, backends, make_logits

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
    sub = fuq.LogitStats(*(t[ok.to(t.device)] for t in got))
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
    assert_stats_close(fuq.LogitStats(*(t[ok] for t in got)), tuple(t[ok] for t in want), V, dtype)


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
