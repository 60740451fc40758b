"""fuq.logit_stats on a GPU: the Triton and CUDA C++ kernels at real vocabulary sizes.

Everything here needs CUDA and skips cleanly without it, except
``test_triton_bitonic_path_interpreted``, which runs the GPU-only bitonic top-k branch of
the Triton kernel under the interpreter on a tiny shape. References are computed on
the CPU (the spec's ``x / T`` is an IEEE division there; CUDA's tensor-by-scalar
division multiplies by the reciprocal).
"""

from __future__ import annotations

import pytest
import torch
from helpers import DTYPES, HAS_TRITON, TRITON_RUNS, assert_stats_close, make_logits

import fuq
from fuq import _library, reference

HAS_CUDA = torch.cuda.is_available()
cuda_only = pytest.mark.skipif(not HAS_CUDA, reason="needs CUDA")

GPU_BACKENDS = [
    pytest.param("triton", id="triton", marks=[pytest.mark.gpu, cuda_only]),
    pytest.param(
        "cuda",
        id="cuda",
        marks=[
            pytest.mark.gpu,
            cuda_only,
            pytest.mark.skipif(not _library.HAS_CUDA_CPP, reason=f"fuq._C_cuda not built: {_library.C_CUDA_ERROR}"),
        ],
    ),
]


def _check(x: torch.Tensor, k: int, backend: str, temperature: float = 1.0, tokens: torch.Tensor | None = None):
    got = fuq.logit_stats(x, k=k, tokens=tokens, temperature=temperature, backend=backend)
    rows = x.reshape(-1, x.shape[-1]).cpu()
    tok = None if tokens is None else tokens.reshape(-1).cpu()
    want = reference.logit_stats(rows, k, tok, temperature)
    flat = fuq.LogitStats(*(None if t is None else t.reshape(rows.shape[0], *t.shape[x.dim() - 1 :]) for t in got))
    assert_stats_close(flat, want, x.shape[-1], x.dtype)
    return got


@pytest.mark.parametrize("backend", GPU_BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("V", [32000, 128256, 262144])
@pytest.mark.parametrize("B", [1, 7])
def test_real_vocab_sizes(backend, dtype, V, B):
    x = make_logits(B, V, dtype, "llm", seed=B, device="cuda")
    tokens = torch.randint(0, V, (B,), device="cuda")
    for k in (0, 1, 50):
        _check(x, k, backend, temperature=0.8 if k else 1.0, tokens=tokens)


@pytest.mark.parametrize("backend", GPU_BACKENDS)
@pytest.mark.parametrize("kind", ["normal", "peaked", "flat", "masked"])
def test_distributions_batch_64(backend, kind):
    x = make_logits(64, 32000, torch.bfloat16, kind, seed=3, device="cuda")
    _check(x, 20, backend, temperature=1.3)


@pytest.mark.parametrize("backend", GPU_BACKENDS)
@pytest.mark.parametrize("k", [200, 1024, 1025, 4000])
def test_large_k(backend, k):
    """k up to K_MAX uses the running top-K, beyond it the candidate-free route."""
    x = make_logits(3, 50257, torch.float32, "llm", seed=k, device="cuda")
    _check(x, k, backend, temperature=0.9)


@pytest.mark.parametrize("backend", GPU_BACKENDS)
def test_k_equals_v(backend):
    for V in (1, 7, 4097):
        x = make_logits(2, V, torch.float16, "normal", device="cuda")
        _check(x, V, backend)


@pytest.mark.parametrize("backend", GPU_BACKENDS)
def test_ties_across_splits(backend):
    """Equal values in every split: the lower index wins, in argmax and in top-k."""
    V = 262144
    x = torch.zeros(2, V, device="cuda")
    x[1, [5000, 100, 200000, 262143]] = 3.0
    got = fuq.logit_stats(x, k=6, backend=backend)
    assert got.argmax.tolist() == [0, 100]
    assert got.topk_ids.tolist() == [[0, 1, 2, 3, 4, 5], [100, 5000, 200000, 262143, 0, 1]]
    # -0.0 and +0.0 tie too, as in torch.sort
    y = torch.full((1, 1000), -1.0, device="cuda")
    y[0, 10] = -0.0
    y[0, 3] = 0.0
    assert fuq.logit_stats(y, k=2, backend=backend).topk_ids.tolist() == [[3, 10]]


@pytest.mark.parametrize("backend", GPU_BACKENDS)
def test_degenerate_rows_large(backend):
    V = 128256
    x = make_logits(6, V, torch.float32, "llm", device="cuda")
    x[1] = float("-inf")
    x[2, 77777] = float("nan")
    x[3] = float("-inf")
    x[3, 128255] = 2.0  # one live token, in the last split
    x[4, 12345] = float("inf")
    got = fuq.logit_stats(x, k=8, tokens=torch.tensor([0, 1, 2, 128255, 4, 5], device="cuda"), backend=backend)
    want = reference.logit_stats(x.cpu(), 8, torch.tensor([0, 1, 2, 128255, 4, 5]), 1.0)
    assert got.lse[1].item() == float("-inf") and torch.isnan(got.entropy[1]) and torch.isnan(got.varentropy[1])
    assert torch.isnan(got.lse[2]) and torch.isnan(got.entropy[2]) and torch.isnan(got.topk_logprobs[2]).all()
    assert got.lse[4].item() == float("inf") and torch.isnan(got.entropy[4]) and torch.isnan(got.token_logprob[4])
    assert got.argmax[3].item() == 128255 and got.token_logprob[3].item() == 0.0
    assert got.entropy[3].item() == pytest.approx(0.0, abs=1e-6)
    assert ((got.topk_ids >= 0) & (got.topk_ids < V)).all() and ((got.argmax >= 0) & (got.argmax < V)).all()
    ok = torch.tensor([0, 3, 5])
    assert_stats_close(fuq.LogitStats(*(t[ok.cuda()] for t in got)), tuple(t[ok] for t in want), V, torch.float32)
    for name in ("lse", "entropy", "varentropy", "max_logprob", "topk_logprobs", "topk_mass", "token_logprob"):
        a, b = getattr(got, name).cpu(), getattr(fuq.LogitStats(*want), name)
        assert torch.equal(torch.isnan(a), torch.isnan(b)), name


@pytest.mark.parametrize("backend", GPU_BACKENDS)
def test_strided_rows_and_3d(backend):
    wide = make_logits(8, 40000, torch.bfloat16, "masked", device="cuda")
    _check(wide[:, 1000:33000], 10, backend)  # row stride 40000, V 32000
    x = make_logits(2 * 3, 5003, torch.float32, "llm", device="cuda").reshape(2, 3, 5003).transpose(0, 1)
    _check(x, 5, backend, tokens=torch.randint(0, 5003, (3, 2), device="cuda"))


@pytest.mark.parametrize("op", ["logit_stats", "logit_stats_cuda"])
def test_out_of_range_tokens_give_nan(op):
    """The ops themselves (below the validating public function) never read out of bounds."""
    if not HAS_CUDA or (op == "logit_stats_cuda" and not _library.HAS_CUDA_CPP):
        pytest.skip("needs CUDA (and fuq._C_cuda for the CUDA C++ op)")
    V = 1000
    x = make_logits(4, V, torch.float32, device="cuda")
    tokens = torch.tensor([-1, V, 2**40, 5], device="cuda")
    out = getattr(torch.ops.fuq, op)(x, 3, tokens, 1.0)
    tl = out[8].cpu()
    assert torch.isnan(tl[:3]).all()
    assert tl[3].item() == pytest.approx(torch.log_softmax(x[3].float().cpu(), -1)[5].item(), abs=1e-5)


@cuda_only
@pytest.mark.gpu
def test_triton_and_cuda_agree():
    if not _library.HAS_CUDA_CPP:
        pytest.skip("fuq._C_cuda not built")
    x = make_logits(16, 128256, torch.bfloat16, "llm", device="cuda")
    a = fuq.logit_stats(x, k=40, backend="triton")
    b = fuq.logit_stats(x, k=40, backend="cuda")
    assert torch.equal(a.topk_ids, b.topk_ids) and torch.equal(a.argmax, b.argmax)
    torch.testing.assert_close(a.entropy, b.entropy, atol=1e-4, rtol=1e-4)


@cuda_only
@pytest.mark.gpu
def test_auto_is_triton_and_compiles():
    x = make_logits(4, 32000, torch.float32, "llm", device="cuda")

    def step(x):
        s = fuq.logit_stats(x, k=5, temperature=0.7)
        return s.entropy, s.topk_ids

    eager = step(x)
    compiled = torch.compile(step, fullgraph=True)(x)
    torch.testing.assert_close(eager, compiled)
    want = reference.logit_stats(x.cpu(), 5, None, 0.7)
    torch.testing.assert_close(eager[0].cpu(), want[1], atol=2e-4, rtol=1e-4)


@cuda_only
@pytest.mark.gpu
@pytest.mark.parametrize("backend", ["triton", "cuda"])
def test_64bit_row_offsets(backend):
    """B * V > 2^31 elements: the last row must be read at the right place."""
    if backend == "cuda" and not _library.HAS_CUDA_CPP:
        pytest.skip("fuq._C_cuda not built")
    V = 262144
    B = (2**31) // V + 2
    if torch.cuda.get_device_properties(0).total_memory < 4 * B * V:
        pytest.skip("not enough GPU memory")
    x = torch.zeros(B, V, dtype=torch.bfloat16, device="cuda")
    last = make_logits(1, V, torch.bfloat16, "llm", device="cuda")
    x[-1] = last[0]
    got = fuq.logit_stats(x, k=4, backend=backend)
    want = reference.logit_stats(last.cpu(), 4, None, 1.0)
    assert_stats_close(fuq.LogitStats(*(t[-1:] for t in got)), want, V, torch.bfloat16)
    del x


@pytest.mark.skipif(not HAS_TRITON, reason="triton not installed")
def test_triton_plan_spreads_small_batches():
    """B = 1 with a 262k vocabulary is split over many programs; segments tile the row."""
    from fuq.triton_kernels.logit_stats import _plan

    cases = ((1, 262144, 50, 264), (1, 262144, 0, 264), (64, 262144, 50, 528), (3, 7, 7, 4), (1, 1, 1, 4))
    for B, V, k, target in cases:
        k_pad, block, splits, seg = _plan(B, V, k, target)
        assert seg % block == 0 and block >= max(k_pad, 16) and (k == 0 or k_pad >= k)
        assert (splits - 1) * seg < V <= splits * seg  # every program has work, the row is covered
        if V >= 262144 and B == 1:
            assert splits >= 128
        assert B * splits < target + B  # about the target, no more
    assert _plan(1, 50257, 1025, 4)[0] == 0  # k > K_MAX: the candidate-free route


@pytest.mark.triton_interp
@pytest.mark.skipif(not TRITON_RUNS, reason="triton cannot run here")
def test_triton_bitonic_path_interpreted(monkeypatch):
    """The bitonic top-k branch (used on GPUs when a chunk brings many new keys)."""
    import fuq.triton_kernels.logit_stats as tk

    monkeypatch.setattr(tk, "BITONIC", True)
    dev = "cuda" if HAS_CUDA else "cpu"
    for B, V, k, T in ((2, 300, 16, 0.9), (1, 1000, 9, 1.0)):
        x = make_logits(B, V, torch.float32, "llm", device=dev)
        got = fuq.LogitStats(*tk.logit_stats(x, k, None, T)[:9])
        assert_stats_close(got, reference.logit_stats(x.cpu(), k, None, T), V, torch.float32)
