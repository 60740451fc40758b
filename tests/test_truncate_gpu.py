"""fuq.truncate / fuq.sample on a GPU: the Triton and CUDA C++ kernels at real vocabulary sizes.

Everything here needs CUDA and skips cleanly without it (the Triton kernels are covered
under the interpreter by tests/test_truncate_triton.py; the CUDA C++ kernels are only
compile-checked without a GPU: csrc/check_cuda.sh). Expected masks come from the float64
tie-rule helper of tests/test_truncate_triton.py, on the CPU.
"""

from __future__ import annotations

import pytest
import torch
from helpers import make_logits
from test_truncate_triton import _expected_keep

import fuq
from fuq import _library

HAS_CUDA = torch.cuda.is_available()

BACKENDS = [
    pytest.param("triton", id="triton", marks=[pytest.mark.gpu, pytest.mark.skipif(not HAS_CUDA, reason="needs CUDA")]),
    pytest.param(
        "cuda",
        id="cuda",
        marks=[
            pytest.mark.gpu,
            pytest.mark.skipif(not HAS_CUDA, reason="needs CUDA"),
            pytest.mark.skipif(not _library.HAS_CUDA_CPP, reason=f"fuq._C_cuda not built: {_library.C_CUDA_ERROR}"),
        ],
    ),
]

KNOBS = [("top_k", 50, 1), ("top_p", 0.9, 1), ("top_p", 0.5, 30), ("typical_p", 0.8, 1), ("top_h", 0.4, 1),
         ("min_p", 0.05, 1), ("epsilon", 3e-4, 1), ("p_less", True, 1)]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("B", [1, 8, 300])  # split rows, few rows, one program per row
@pytest.mark.parametrize("V", [32000, 262144])
def test_tie_heavy_bf16_rows(backend, B, V):
    """bf16 logits over a real vocabulary tie a lot: the kept set is the tie rule's, exactly."""
    x = make_logits(B, V, torch.bfloat16, "llm", seed=B)
    x[0, :100] = x[0, 100]  # a big tie group
    z = x.float()
    for knob, param, mtk in KNOBS:
        got = fuq.truncate(x.cuda(), backend=backend, **{knob: param}, min_tokens_to_keep=mtk).cpu()
        want = _expected_keep(z, knob, param, mtk)
        bad = (~torch.isinf(got) != want).sum().item()
        assert bad == 0, (knob, bad)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("gap", [90.0, 300.0, 1000.0])
def test_top_h_far_ahead(backend, gap):
    x = torch.randn(2, 50000, generator=torch.Generator().manual_seed(0))
    x[:, 123] += gap
    got = fuq.truncate(x.cuda(), top_h=0.4, backend=backend).cpu()
    assert torch.equal(~torch.isinf(got), _expected_keep(x, "top_h", 0.4))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("B", [1, 64])
def test_sample_ids_equal_reference(backend, B):
    x = make_logits(B, 128256, torch.bfloat16, "llm", seed=3)
    g1 = torch.Generator(device="cuda").manual_seed(5)
    g2 = torch.Generator(device="cuda").manual_seed(5)
    ids, st = fuq.sample(x.cuda(), top_p=0.9, temperature=0.8, k=4, generator=g1, backend=backend)
    u = torch.rand((B,), dtype=torch.float64, generator=g2, device="cuda").cpu()
    want = fuq.reference.sample(x, u, 4, 0.8, 0, 0.9)
    assert torch.equal(ids.cpu(), want[0])
    torch.testing.assert_close(st.entropy.cpu(), want[2], atol=2e-4, rtol=1e-4)


@pytest.mark.parametrize("backend", BACKENDS)
def test_degenerate_rows_split(backend):
    x = make_logits(4, 262144, torch.float32, "masked")
    x[1] = float("-inf")
    x[2, 77777] = float("nan")
    x[3, 5] = float("inf")
    got = fuq.truncate(x.cuda(), top_p=0.8, top_h=0.9, backend=backend).cpu()
    assert torch.isinf(got[1]).all() and torch.isnan(got[2]).all() and torch.isnan(got[3]).all()


@pytest.mark.gpu
@pytest.mark.skipif(not HAS_CUDA, reason="needs CUDA")
def test_other_device_is_guarded():
    """A tensor on cuda:1 while cuda:0 is current runs on its own device."""
    if torch.cuda.device_count() < 2:
        pytest.skip("needs two GPUs")
    x = make_logits(2, 5000, torch.float32, "llm").to("cuda:1")
    got = fuq.truncate(x, top_p=0.9, backend="triton")
    assert got.device == x.device
    assert torch.equal(~torch.isinf(got.cpu()), _expected_keep(x.cpu(), "top_p", 0.9))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("B", [1, 300])  # split rows, one program per row
def test_rounding_ties_exact(backend, B):
    """Issue 16.6 on the GPU kernels: uniform rows where 0.2 * V lands on a token keep the exact
    count (top-p / typical #{j : j / V < p}, top-h #{j : (j + 1) / V <= alpha}), the float32-mass
    reproducer keeps both tokens, and the draws equal the reference's."""
    from test_fuzz import TIE_ROWS

    for V, want in TIE_ROWS:
        x = torch.zeros(B, V)
        x[:, ::3] = -0.0
        for name, n in zip(("top_p", "typical_p", "top_h"), want, strict=True):
            got = fuq.truncate(x.cuda(), backend=backend, **{name: 0.2}).cpu() > float("-inf")
            assert got.sum(-1).eq(n).all() and got[:, :n].all(), (V, name)
            u = torch.rand((B,), dtype=torch.float64, generator=torch.Generator().manual_seed(V))
            ids, _ = fuq.sample(x.cuda(), uniform=u.cuda(), backend=backend, **{name: 0.2})
            want_ids, _ = fuq.sample(x, uniform=u, backend="reference", **{name: 0.2})
            assert torch.equal(ids.cpu(), want_ids), (V, name)
    r = torch.tensor([[-0.01005034614354372, -4.605169296264648]])
    assert (fuq.truncate(r.cuda(), top_p=0.99, backend=backend).cpu() > float("-inf")).sum().item() == 2
