"""The Triton truncation kernel (interpreted on the CPU) against Hugging Face's warpers and the reference."""

from __future__ import annotations

import pytest
import torch
from helpers import TRITON_RUNS, make_logits

pytestmark = [pytest.mark.triton_interp, pytest.mark.skipif(not TRITON_RUNS, reason="triton cannot run here")]

L = pytest.importorskip("transformers.generation.logits_process")

DEV = "cuda" if torch.cuda.is_available() else "cpu"

CASES = [
    (dict(top_k=50), lambda: L.TopKLogitsWarper(50)),
    (dict(top_k=10, min_tokens_to_keep=20), lambda: L.TopKLogitsWarper(10, min_tokens_to_keep=20)),
    (dict(top_p=0.9), lambda: L.TopPLogitsWarper(0.9)),
    (dict(top_p=0.3, min_tokens_to_keep=5), lambda: L.TopPLogitsWarper(0.3, min_tokens_to_keep=5)),
    (dict(min_p=0.05), lambda: L.MinPLogitsWarper(0.05)),
    (dict(min_p=0.5, min_tokens_to_keep=3), lambda: L.MinPLogitsWarper(0.5, min_tokens_to_keep=3)),
    (dict(typical_p=0.9), lambda: L.TypicalLogitsWarper(0.9)),
    (dict(typical_p=0.2, min_tokens_to_keep=4), lambda: L.TypicalLogitsWarper(0.2, min_tokens_to_keep=4)),
    (dict(epsilon=3e-4), lambda: L.EpsilonLogitsWarper(3e-4)),
    (dict(eta=1e-3), lambda: L.EtaLogitsWarper(1e-3)),
]


def _kernel():
    from fuq.triton_kernels.truncate import truncate

    return truncate


@pytest.mark.parametrize("kw, warper", CASES, ids=[str(c[0]) for c in CASES])
def test_triton_truncate_matches_hf(kw, warper):
    x = make_logits(3, 4099, torch.float32, "masked", seed=3)
    got = _kernel()(x.to(DEV), **kw).cpu()
    want = warper()(None, x.clone())
    assert torch.equal(torch.isinf(got), torch.isinf(want)), kw
    live = ~torch.isinf(want)
    assert torch.equal(got[live], want[live])


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
def test_triton_truncate_chain_low_precision(dtype):
    """Temperature then top-k then top-p, in HF's order, on bf16/fp16 input."""
    x = make_logits(2, 1031, dtype, "llm", seed=4)
    got = _kernel()(x.to(DEV), temperature=0.7, top_k=100, top_p=0.8).cpu()
    z = x.float() / 0.7
    want = L.TopPLogitsWarper(0.8)(None, L.TopKLogitsWarper(100)(None, z))
    assert torch.equal(torch.isinf(got), torch.isinf(want))


def test_triton_truncate_v1_and_all_masked():
    got = _kernel()(torch.tensor([[3.0]], device=DEV), top_p=0.5, top_k=1, typical_p=0.5, min_p=0.9).cpu()
    assert got.tolist() == [[3.0]]
    x = torch.full((1, 5), float("-inf"), device=DEV)
    got = _kernel()(x, top_p=0.9, min_p=0.1).cpu()
    assert torch.isinf(got).all()  # stays masked, no NaN


@pytest.mark.parametrize(
    "kw",
    [dict(top_h=0.4), dict(top_h=0.9, temperature=1.3), dict(top_n_sigma=1.0), dict(top_n_sigma=0.0),
     dict(p_less=True), dict(top_k=40, top_p=0.95, min_p=0.01, typical_p=0.95, epsilon=1e-4, eta=1e-3)],
    ids=str,
)
def test_triton_truncate_matches_reference(kw):
    import fuq

    x = make_logits(3, 2053, torch.float32, "llm", seed=5)
    x[1, 7] = float("nan")
    x[2, :100] = float("-inf")
    got = fuq.truncate(x.to(DEV), backend="triton", **kw).cpu()
    want = fuq.truncate(x, backend="reference", **kw)
    assert torch.isnan(got[1]).all() and torch.isnan(want[1]).all()
    ok = torch.tensor([0, 2])
    assert torch.equal(torch.isinf(got[ok]), torch.isinf(want[ok])), kw
    live = ~torch.isinf(want[ok])
    torch.testing.assert_close(got[ok][live], want[ok][live])


def test_triton_sample_matches_reference_ids():
    import fuq

    x = make_logits(4, 999, torch.float32, "llm", seed=6)
    g1 = torch.Generator(device=DEV).manual_seed(7)
    g2 = torch.Generator(device="cpu").manual_seed(7)
    ids, st = fuq.sample(x.to(DEV), top_p=0.9, temperature=0.8, k=3, generator=g1, backend="triton")
    ids_ref, st_ref = fuq.sample(x, top_p=0.9, temperature=0.8, k=3, generator=g2, backend="reference")
    if DEV == "cpu":
        assert torch.equal(ids.cpu(), ids_ref)
    torch.testing.assert_close(st.entropy.cpu(), st_ref.entropy, atol=2e-4, rtol=1e-4)
