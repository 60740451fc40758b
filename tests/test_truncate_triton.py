"""The Triton truncation kernel (interpreted on the CPU) against Hugging Face's warpers and the reference."""

from __future__ import annotations

import pytest
import torch
from helpers import TRITON_RUNS, make_logits

import fuq

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

    x = make_logits(4, 999, torch.float32, "llm", seed=6)
    g1 = torch.Generator(device=DEV).manual_seed(7)
    g2 = torch.Generator(device="cpu").manual_seed(7)
    ids, st = fuq.sample(x.to(DEV), top_p=0.9, temperature=0.8, k=3, generator=g1, backend="triton")
    ids_ref, st_ref = fuq.sample(x, top_p=0.9, temperature=0.8, k=3, generator=g2, backend="reference")
    if DEV == "cpu":
        assert torch.equal(ids.cpu(), ids_ref)
    torch.testing.assert_close(st.entropy.cpu(), st_ref.entropy, atol=2e-4, rtol=1e-4)


# ---------------------------------------------------------------------------------------------
# The tie rule (fuq.reference's module docstring), split rows, top-h far ahead.
#
# _expected_keep is the tie rule written out in float64 with sorts, one knob at a time; the
# tests check the Triton kernel against it, and fuq.reference against it too (so the kernel
# equals the reference).
_NEG = float("-inf")


def _toph_terms(zs: torch.Tensor) -> torch.Tensor:
    """Entropy terms of a row sorted descending, scaled by one factor (relative to the runner-up
    when the maximum is alone), float64: robust to a maximum far ahead."""
    live = zs > _NEG
    zd = zs.double()
    d = torch.where(live, zd[..., :1] - zd, torch.full_like(zd, float("inf")))
    top = live & (d == 0)
    rest = live & ~top
    n_top = top.sum(-1, keepdim=True).double()
    g = torch.where(rest, d, torch.full_like(d, float("inf"))).amin(-1, keepdim=True)
    alone = (n_top == 1) & torch.isfinite(g)
    s = torch.where(alone, g, torch.zeros_like(g))
    dr = torch.where(rest, d, torch.zeros_like(d))
    e = torch.where(rest, torch.exp(s - dr), torch.zeros_like(d))
    R = e.sum(-1, keepdim=True)
    x = torch.exp(-s) * R
    log_s = torch.where(alone, torch.log1p(x), torch.log(n_top + x))
    ratio = torch.where(x > 0, torch.log1p(x) / torch.where(x > 0, x, torch.ones_like(x)), torch.ones_like(x))
    top_term = torch.where(alone, R * ratio, log_s)
    return torch.where(rest, e * (dr + log_s), torch.where(top, top_term, torch.zeros_like(d)))


def _expected_keep(z: torch.Tensor, knob: str, param, mtk: int = 1) -> torch.Tensor:
    """Kept mask of one knob on float32 z [B, V] (after the temperature), by the tie rule."""
    live = z > _NEG
    logp = torch.log_softmax(z.double(), dim=-1)
    p = logp.exp()
    V = z.shape[-1]
    first = torch.arange(V) < mtk

    def kth(n):  # the n-th largest z (ties kept at or above it)
        return torch.topk(z, min(max(n, 1), V), dim=-1).values[..., -1:]

    def prefix(order, kept_sorted):
        return torch.zeros_like(kept_sorted).scatter(-1, order, kept_sorted) & live

    if knob == "top_k":
        return (z >= kth(max(param, mtk))) & live
    if knob in ("top_p", "typical_p"):
        if knob == "top_p":
            order = torch.sort(z, dim=-1, descending=True, stable=True).indices
        else:
            H = -torch.where(p > 0, p * logp, torch.zeros_like(p)).sum(-1, keepdim=True)
            order = torch.sort(torch.abs(-logp - H), dim=-1, stable=True).indices
        ps = p.gather(-1, order)
        before = torch.cumsum(ps, -1) - ps
        return prefix(order, (before < param) | first)
    if knob == "top_h":
        zs, order = torch.sort(z, dim=-1, descending=True, stable=True)
        terms = _toph_terms(zs)
        kept = torch.cumsum(terms, -1) <= param * terms.sum(-1, keepdim=True)
        kept[..., 0] = True
        return prefix(order, kept)
    cut = {"min_p": lambda: param * p.amax(-1, keepdim=True), "epsilon": lambda: param,
           "p_less": lambda: (p * p).sum(-1, keepdim=True)}[knob]()
    return ((p >= cut) & live) | ((z >= kth(mtk)) & live)


def _tie_rows(V: int, seed: int) -> torch.Tensor:
    """bf16 rows with many exact ties: few distinct values, a tie group at the max, -inf entries."""
    g = torch.Generator().manual_seed(seed)
    x = (torch.randn(4, V, generator=g) * 1.5).to(torch.bfloat16).float()
    x = torch.round(x * 4) / 4  # ~30 distinct values per row
    x[1] = torch.randint(0, 3, (V,), generator=g).float()  # 3 values: big tie groups everywhere
    x[2, : V // 3] = _NEG
    x[3] = 0.0
    x[3, 5] = -0.0  # -0.0 ties with +0.0
    return x


@pytest.fixture(params=["rows", "split"])
def shape(request, monkeypatch):
    """Run each test with one program per row, and with rows split over several programs
    (small blocks, so that a few hundred tokens already make several segments)."""
    import fuq.triton_kernels.truncate as tt

    if request.param == "split":
        monkeypatch.setattr(tt, "BLOCK", 64)
        monkeypatch.setattr(tt, "SB", 64)
        monkeypatch.setattr(tt, "MIN_CHUNKS", 2)
        monkeypatch.setattr(tt, "SPLIT_TARGET", 64)
    else:
        monkeypatch.setattr(tt, "SPLIT_TARGET", 1)
    return request.param


TIE_CASES = [  # (knob, value, min_tokens_to_keep, also on split rows)
    ("top_k", 7, 1, False), ("top_k", 3, 20, True), ("top_p", 0.5, 1, False), ("top_p", 0.83, 1, True),
    ("top_p", 0.2, 9, True), ("typical_p", 0.6, 1, False), ("typical_p", 0.3, 12, True), ("top_h", 0.5, 1, True),
    ("top_h", 0.9, 1, False), ("min_p", 0.3, 1, False), ("min_p", 0.9, 40, True), ("epsilon", 2e-3, 1, False),
    ("p_less", True, 1, False),
]


@pytest.mark.parametrize("knob, param, mtk, split", TIE_CASES, ids=[f"{k}={p},mtk={m}" for k, p, m, _ in TIE_CASES])
def test_tie_rule_on_tie_heavy_rows(shape, knob, param, mtk, split):
    """Tie-heavy bf16 rows, V not a multiple of any block: the kept set is the tie rule's, exactly."""
    if shape == "split" and not split:
        pytest.skip("covered on one program per row (the interpreter is slow on the split launches)")
    x = _tie_rows(301, seed=len(knob))
    got = _kernel()(x.to(DEV), **{knob: param}, min_tokens_to_keep=mtk).cpu()
    want = _expected_keep(x, knob, param, mtk)
    assert torch.equal(~torch.isinf(got), want), (knob, (~torch.isinf(got)).sum(-1), want.sum(-1))
    assert torch.equal(got[want], x[want])
    ref = fuq.truncate(x, backend="reference", **{knob: param}, min_tokens_to_keep=mtk)
    assert torch.equal(~torch.isinf(ref), want), "fuq.reference and the written-out tie rule disagree"


def test_tie_rule_hand_made(shape):
    t = _kernel()
    u = torch.zeros(1, 4, device=DEV)
    assert (~torch.isinf(t(u, top_p=0.5))).tolist() == [[True, True, False, False]]  # a uniform row is cut
    assert (~torch.isinf(t(u, top_p=0.51))).tolist() == [[True, True, True, False]]
    assert (~torch.isinf(t(u, top_k=2))).all()  # top-k keeps ties with the k-th value
    assert (~torch.isinf(t(u, min_p=1.0))).all()  # thresholds keep equal values together
    q = torch.log(torch.tensor([[0.25] * 4], device=DEV))
    assert (~torch.isinf(t(q, top_h=0.5))).tolist() == [[True, True, False, False]]  # as HF's TopHLogitsWarper
    y = torch.tensor([[1.0, 3.0, 2.0, 3.0, 2.0, 2.0, 3.0]], device=DEV)
    p = torch.softmax(y, -1)[0]
    cut = (3 * p[1] + 0.5 * p[2]).item()  # halfway into the tie group at 2.0
    assert (~torch.isinf(t(y, top_p=cut))).tolist() == [[False, True, True, True, False, False, True]]
    kept = [[False, True, True, True, True, False, True]]  # min_tokens_to_keep: the first 5 of the order
    assert (~torch.isinf(t(y, top_p=cut, min_tokens_to_keep=5))).tolist() == kept


def test_top_h_with_a_logit_far_ahead(shape):
    """The sums do not collapse when the max is 20, 90, 300 or 1000 nats ahead: same cut as the float64 rule."""
    g = torch.Generator().manual_seed(1)
    x = torch.randn(5, 523, generator=g)
    for r, gap in enumerate((20.0, 90.0, 300.0, 1000.0)):
        x[r, 17 + r] += gap
    x[4, 400] += 300.0
    x[4, 401] = x[4, 400]  # a tie at the far max: no scaling needed
    got = _kernel()(x.to(DEV), top_h=0.4).cpu()
    want = _expected_keep(x, "top_h", 0.4)
    assert (want[:4].sum(-1) > 20).all()  # the rule keeps a real set, not just the max
    assert torch.equal(~torch.isinf(got), want), ((~torch.isinf(got)).sum(-1), want.sum(-1))


def test_split_rows_degenerate(shape):
    """V = 1, all -inf, NaN and +inf rows, temperature != 1, on both launch shapes."""
    t = _kernel()
    assert t(torch.tensor([[3.0]], device=DEV), top_p=0.5, top_k=1, typical_p=0.5, top_h=0.3).cpu().tolist() == [[3.0]]
    x = make_logits(5, 333, torch.float16, "masked", seed=8)
    x[1] = float("-inf")
    x[2, 100] = float("nan")
    x[3, 300] = float("inf")
    for kw in (dict(top_p=0.7, temperature=0.7), dict(top_h=0.6, top_k=30, min_p=0.02)):
        got = t(x.to(DEV), **kw).cpu()
        assert torch.isinf(got[1]).all() and (got[1] < 0).all()
        assert torch.isnan(got[2]).all() and torch.isnan(got[3]).all()
        z = x.float() / kw.get("temperature", 1.0)
        for knob in ("top_h", "top_k", "top_p", "min_p", "typical_p"):
            if knob in kw:
                z = torch.where(_expected_keep(z, knob, kw[knob]), z, torch.full_like(z, _NEG))
        ok = [0, 4]
        assert torch.equal(torch.isinf(got[ok]), torch.isinf(z[ok])), kw


def test_split_plan():
    from fuq.triton_kernels.truncate import BLOCK, split_plan

    for B, V, target in ((1, 262144, 264), (2, 128256, 264), (8, 32000, 264), (1, 5000, 264), (1, 1, 264)):
        S, seg = split_plan(B, V, target)
        assert seg % BLOCK == 0 and (S - 1) * seg < V <= S * seg  # every program has work, the row is covered
        assert B * S <= target + B
    assert split_plan(1, 262144, 264)[0] >= 132  # B = 1 spreads over every SM (132 on an H100)
    assert split_plan(264, 262144, 264) == (1, 262144)  # B fills the GPU: one program per row
    assert split_plan(1000, 32000, 264)[0] == 1
    assert split_plan(1, 1024, 264)[0] == 1  # one block: nothing to split


SPLIT_SEARCH_CASES = [  # (knobs, min_tokens_to_keep): the first round in _scale_kernel (top-k, top-p) or not
    (dict(top_p=0.83), 1), (dict(top_p=0.2), 9), (dict(top_k=3), 20), (dict(typical_p=0.3), 12),
    (dict(top_h=0.5), 1), (dict(min_p=0.9), 40), (dict(top_k=50, top_p=0.9, min_p=0.02), 1),
]


@pytest.mark.parametrize("kw, mtk", SPLIT_SEARCH_CASES, ids=[f"{k},mtk={m}" for k, m in SPLIT_SEARCH_CASES])
@pytest.mark.parametrize("eps", [None, 0.05, 1.0], ids=["eps=2^-12", "eps=0.05", "eps=1"])
def test_split_search_and_fused_draw(kw, mtk, eps, monkeypatch):
    """Split rows (V = 301, not a multiple of the block; tie rows, a uniform row, -inf entries, a
    random row): the candidate launch and its one-program finish keep the tie rule's set; with
    a wide margin the approximate first round of _scale_kernel widens its interval to 16 or 256
    sub-intervals and the cut is the same; truncate_draw (the draw folded into the last apply)
    draws the ids of draw(truncate(...))."""
    import fuq.triton_kernels.truncate as tt
    import triton.language as tl
    from fuq.triton_kernels.draw import draw

    monkeypatch.setattr(tt, "BLOCK", 64)
    monkeypatch.setattr(tt, "SB", 64)
    monkeypatch.setattr(tt, "SBP", 16)
    monkeypatch.setattr(tt, "MIN_CHUNKS", 2)
    monkeypatch.setattr(tt, "SPLIT_TARGET", 64)
    if eps is not None:
        if "top_p" not in kw and "top_k" not in kw:
            pytest.skip("the margin only matters to the first round of _scale_kernel (top-k, top-p first)")
        monkeypatch.setattr(tt, "EPS1", tl.constexpr(eps))
    x = _tie_rows(301, seed=3)
    x = torch.cat([x, torch.randn(1, 301, generator=torch.Generator().manual_seed(0)) * 3])
    assert tt.split_plan(x.shape[0], 301, 64)[0] > 1
    got = tt.truncate(x.to(DEV), **kw, min_tokens_to_keep=mtk).cpu()
    want = torch.ones_like(x, dtype=torch.bool)
    z = x.clone()
    for knob in ("top_h", "top_k", "top_p", "min_p", "typical_p"):  # Hugging Face's order
        if knob in kw:
            want = _expected_keep(z, knob, kw[knob], mtk)
            z = torch.where(want, z, torch.full_like(z, _NEG))
    assert torch.equal(~torch.isinf(got), want), ((~torch.isinf(got)).sum(-1), want.sum(-1))
    u = torch.tensor([0.0, 0.37, 0.5, 0.91, 1.0 - 2.0**-53], dtype=torch.float64)
    ids = tt.truncate_draw(x.to(DEV), u.to(DEV), **kw, min_tokens_to_keep=mtk).cpu()
    assert torch.equal(ids, draw(got.to(DEV), u.to(DEV)).cpu())
    assert torch.equal(ids, fuq.reference.sample_from(got, u))
