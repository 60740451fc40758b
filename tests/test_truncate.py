"""fuq.truncate against Hugging Face's warpers, the reference, and bad input.

Kept sets are compared token for token. Where two float computations of the same
cut-off may round a boundary token differently (a "rounding tie"), the test brackets
both results between the float64 reference at the knob nudged by a relative 1e-4
either way, and allows only a handful of such tokens.
"""

from __future__ import annotations

import os

import pytest
import torch
from helpers import make_logits

import fuq
from fuq import _library, reference

L = pytest.importorskip("transformers.generation.logits_process")

NEG = float("-inf")
BACKENDS = ["cpp", "reference"]
DELTA = 1e-4


def _kept(z: torch.Tensor) -> torch.Tensor:
    return z > NEG


def _nudge(kw: dict, looser: bool) -> dict:
    """The same knobs, nudged to keep a little more (looser) or less."""
    out = dict(kw)
    up = 1 + DELTA if looser else 1 - DELTA
    for name in ("top_p", "typical_p", "top_h", "top_n_sigma"):  # larger keeps more
        if name in out:
            out[name] = min(out[name] * up, 1.0) if name != "top_n_sigma" else out[name] * up
    for name in ("min_p", "epsilon"):  # larger keeps less
        if name in out:
            out[name] = out[name] / up
    if "eta" in out:
        # HF's float32 entropy (Categorical over V = 262144, masked entries) is off by ~2e-4
        # nats, which moves its eta cut by as much relative: nudge eta 10x further.
        out["eta"] = out["eta"] / (1 + 10 * DELTA if looser else 1 - 10 * DELTA)
    return out


def assert_same_kept(got: torch.Tensor, want: torch.Tensor, x: torch.Tensor, kw: dict, max_ties: int = 3):
    """Kept masks equal, except a few tokens bracketed by the nudged reference."""
    g, w = _kept(got), _kept(want)
    diff = g != w
    if diff.any() and set(kw) <= {"typical_p", "temperature", "min_tokens_to_keep"}:
        # Typical's key |-log p - H| moves with H, which a float32 sum over V terms gets wrong
        # by ~1e-5 nats at V = 262144 (HF does): a token within that of the cut is a tie.
        z = (x.float() / kw.get("temperature", 1.0)).double()
        logp = torch.log_softmax(z, -1)
        H = -(logp.exp() * logp).nan_to_num().sum(-1, keepdim=True)
        key = (-logp - H).abs()
        cut = torch.where(_kept(want) & _kept(got), key, torch.zeros_like(key)).amax(-1, keepdim=True)
        assert ((key - cut).abs()[diff] <= 5e-5).all(), f"typical: tokens far from the cut differ ({kw})"
        assert diff.sum(-1).max() <= max_ties, f"{int(diff.sum())} tokens differ ({kw})"
    elif diff.any():
        lo = _kept(reference.truncate(x, *_op_args(_nudge(kw, looser=False))))
        hi = _kept(reference.truncate(x, *_op_args(_nudge(kw, looser=True))))
        for name, m in (("fuq", g), ("other", w)):
            assert not (lo & ~m).any(), f"{name} drops tokens the tighter reference keeps ({kw})"
            assert not (m & ~hi).any(), f"{name} keeps tokens the looser reference drops ({kw})"
        assert diff.sum(-1).max() <= max_ties, f"{int(diff.sum())} tokens differ ({kw})"


def _op_args(kw: dict) -> tuple:
    from fuq import knobs

    return knobs.resolve(**kw)


def _hf(kw: dict) -> list:
    """Hugging Face's warpers for the knobs, in generate()'s order."""
    mtk = kw.get("min_tokens_to_keep", 1)
    procs = []
    if kw.get("temperature", 1.0) != 1.0:
        procs.append(L.TemperatureLogitsWarper(kw["temperature"]))
    if "top_h" in kw:
        procs.append(L.TopHLogitsWarper(kw["top_h"]))
    if "top_k" in kw:
        procs.append(L.TopKLogitsWarper(kw["top_k"], min_tokens_to_keep=mtk))
    if "top_p" in kw:
        procs.append(L.TopPLogitsWarper(kw["top_p"], min_tokens_to_keep=mtk))
    if "min_p" in kw:
        procs.append(L.MinPLogitsWarper(kw["min_p"], min_tokens_to_keep=mtk))
    if "typical_p" in kw:
        procs.append(L.TypicalLogitsWarper(kw["typical_p"], min_tokens_to_keep=mtk))
    if "epsilon" in kw:
        procs.append(L.EpsilonLogitsWarper(kw["epsilon"], min_tokens_to_keep=mtk))
    if "eta" in kw:
        procs.append(L.EtaLogitsWarper(kw["eta"], min_tokens_to_keep=mtk))
    return procs


def _run_hf(kw: dict, x: torch.Tensor) -> torch.Tensor:
    scores = x.float().clone()
    return L.LogitsProcessorList(_hf(kw))(None, scores)


HF_CASES = [
    dict(top_k=50),
    dict(top_k=3000, min_tokens_to_keep=5),
    dict(top_p=0.9),
    dict(top_p=0.5, temperature=0.7),
    dict(top_p=0.05, min_tokens_to_keep=4),
    dict(min_p=0.05),
    dict(min_p=0.3, min_tokens_to_keep=6, temperature=1.3),
    dict(typical_p=0.9),
    dict(typical_p=0.3, min_tokens_to_keep=5),
    dict(epsilon=3e-4),
    dict(epsilon=0.05, min_tokens_to_keep=3),
    dict(eta=1e-3),
    dict(eta=4e-3, temperature=0.8),
]


@pytest.mark.parametrize("V", [32000, 262144])
@pytest.mark.parametrize("kw", HF_CASES, ids=[str(c) for c in HF_CASES])
def test_matches_hf_warper(kw, V):
    kind = "masked" if "top_k" in kw or "eta" in kw else "llm" if "min_p" in kw else "normal"
    x = make_logits(3, V, torch.float32, kind, seed=7)
    got = fuq.truncate(x, **kw)
    want = _run_hf(kw, x)
    assert got.dtype == torch.float32 and got.shape == x.shape
    assert_same_kept(got, want, x, kw)
    live = _kept(got)
    assert torch.equal(got[live], (x / kw.get("temperature", 1.0))[live]), "kept values must be logits / T"


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("kw", [dict(top_k=40), dict(min_p=0.1), dict(epsilon=1e-4), dict(eta=2e-3)], ids=str)
def test_low_precision_matches_hf(dtype, kw):
    """bf16 / fp16 input at T = 0.7: HF sees the logits upcast to float32 (as generate does)."""
    kw = dict(kw, temperature=0.7)
    x = make_logits(4, 32000, dtype, "llm", seed=2)
    got = fuq.truncate(x, **kw)
    assert_same_kept(got, _run_hf(kw, x), x, kw)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("kw", [dict(top_p=0.8), dict(typical_p=0.7), dict(top_h=0.5)], ids=str)
def test_low_precision_ties_against_reference(dtype, kw):
    """bf16 holds many exactly equal logits: ties at a cut are all kept (top-h: all dropped)."""
    x = make_logits(3, 32000, dtype, "normal", seed=5)
    got = fuq.truncate(x, temperature=1.3, **kw)
    want = reference.truncate(x, *_op_args(dict(kw, temperature=1.3)))
    assert_same_kept(got, want, x, dict(kw, temperature=1.3))


@pytest.mark.parametrize("mtk", [1, 3])
def test_chain_matches_hf_processor_list(mtk):
    """All HF knobs at once, in generate()'s order, each on the previous one's output."""
    kw = dict(
        temperature=0.7,
        top_k=400,
        top_p=0.95,
        min_p=0.01,
        typical_p=0.97,
        epsilon=1e-5,
        eta=1e-4,
        min_tokens_to_keep=mtk,
    )
    x = make_logits(4, 32000, torch.float32, "llm", seed=11)
    got = fuq.truncate(x, **kw)
    want = _run_hf(kw, x)
    g, w = _kept(got), _kept(want)
    assert (g != w).sum(-1).max() <= 2, f"{int((g != w).sum())} tokens differ"
    assert (g.sum(-1) > 1).all(), "the chain should keep several tokens on these rows"


def test_top_h_equals_hf_when_vocab_is_small():
    """HF's TopHLogitsWarper sums over its top 100 tokens: on V <= 100 that is the whole row."""
    x = make_logits(4, 97, torch.float32, "normal", seed=3)
    for alpha in (0.2, 0.5, 0.9):
        got = fuq.truncate(x, top_h=alpha)
        want = L.TopHLogitsWarper(alpha)(None, x.clone())
        assert_same_kept(got, want, x, dict(top_h=alpha), max_ties=1)


@pytest.mark.parametrize("backend", BACKENDS)
def test_top_h_definition(backend):
    """The kept set is the largest prefix (descending p) with Σ -p log p <= alpha H, in float64."""
    x = make_logits(3, 5000, torch.float32, "llm", seed=4)
    alpha = 0.4
    got = _kept(fuq.truncate(x, top_h=alpha, backend=backend))
    p = torch.softmax(x.double(), -1)
    terms = -(p * p.log())
    H = terms.sum(-1)
    for r in range(3):
        order = torch.argsort(x[r], descending=True, stable=True)
        cum = terms[r, order].cumsum(0)
        n = max(int((cum <= alpha * H[r] * (1 + 1e-9)).sum()), 1)
        assert abs(int(got[r].sum()) - n) <= 1
        assert got[r, order[: n - 1]].all()


@pytest.mark.parametrize("V", [32000, 262144])
@pytest.mark.parametrize(
    "kw",
    [
        dict(top_h=0.4),
        dict(top_h=0.9, temperature=0.6),
        dict(top_n_sigma=1.0),
        dict(top_n_sigma=0.0),
        dict(top_n_sigma=2.5, temperature=1.5),
        dict(p_less=True),
        dict(p_less=True, temperature=2.0),
        dict(top_k=100, top_p=0.9, top_n_sigma=1.5, p_less=True),
    ],
    ids=str,
)
def test_cpp_matches_reference_new_knobs(kw, V):
    x = make_logits(3, V, torch.float32, "llm" if V == 32000 else "masked", seed=9)
    got = fuq.truncate(x, backend="cpp", **kw)
    want = fuq.truncate(x, backend="reference", **kw)
    assert_same_kept(got, want, x, kw)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("kind", ["normal", "peaked", "flat", "masked", "llm"])
def test_cpp_matches_reference(dtype, kind):
    """Every knob, one at a time and all together, on hard inputs."""
    x = make_logits(3, 4099, dtype, kind, seed=1)
    cases = [
        dict(top_k=7),
        dict(top_k=4099),
        dict(top_p=0.9, min_tokens_to_keep=2),
        dict(min_p=0.1),
        dict(typical_p=0.6, min_tokens_to_keep=3),
        dict(epsilon=1e-3),
        dict(eta=1e-2),
        dict(top_h=0.7),
        dict(top_n_sigma=1.2),
        dict(p_less=True),
        dict(
            temperature=0.5,
            top_h=0.95,
            top_k=300,
            top_p=0.97,
            min_p=1e-3,
            typical_p=0.98,
            epsilon=1e-6,
            eta=1e-5,
            top_n_sigma=3.0,
            p_less=True,
            min_tokens_to_keep=2,
        ),
    ]
    for kw in cases:
        got = fuq.truncate(x, backend="cpp", **kw)
        want = fuq.truncate(x, backend="reference", **kw)
        assert_same_kept(got, want, x, kw)
        live = _kept(want)
        assert torch.equal(got[live & _kept(got)], want[live & _kept(got)]), kw


def test_min_tokens_to_keep_is_honoured():
    x = make_logits(2, 32000, torch.float32, "peaked", seed=2)  # one token holds ~all the mass
    for kw in (dict(top_p=0.5), dict(min_p=0.5), dict(typical_p=0.1), dict(epsilon=0.5), dict(eta=0.5)):
        got = fuq.truncate(x, min_tokens_to_keep=9, **kw)
        assert (_kept(got).sum(-1) >= 9).all(), kw
        assert_same_kept(got, _run_hf(dict(kw, min_tokens_to_keep=9), x), x, dict(kw, min_tokens_to_keep=9))


@pytest.mark.parametrize("backend", BACKENDS)
def test_edge_rows(backend):
    one = torch.tensor([[2.5]])
    every = dict(
        top_k=1, top_p=0.5, min_p=0.9, typical_p=0.5, epsilon=0.9, eta=0.9, top_h=0.1, top_n_sigma=0.0, p_less=True
    )
    assert fuq.truncate(one, backend=backend, **every).tolist() == [[2.5]]
    x = torch.tensor([[NEG, NEG, NEG], [1.0, float("nan"), 0.0], [0.0, 0.0, 0.0], [NEG, 3.0, NEG]])
    got = fuq.truncate(x, top_p=0.9, top_k=2, typical_p=0.9, backend=backend)
    assert torch.isinf(got[0]).all() and (got[0] < 0).all()
    assert torch.isnan(got[1]).all()
    assert got[2].tolist() == [0.0, 0.0, 0.0]  # ties: all kept
    assert got[3].tolist() == [NEG, 3.0, NEG]


def test_leading_dims_strides_and_knobs_off():
    x = make_logits(6, 1000, torch.float32, "normal").reshape(2, 3, 1000).transpose(0, 1)
    got = fuq.truncate(x, top_k=10)
    assert got.shape == (3, 2, 1000)
    assert torch.equal(got, fuq.truncate(x.contiguous(), top_k=10))
    assert torch.equal(fuq.truncate(x), x.float())
    assert torch.equal(fuq.truncate(x, top_k=0, top_p=1.0, min_p=0.0, typical_p=1.0, epsilon=0.0, eta=0.0), x.float())


@pytest.mark.parametrize(
    "kw, name",
    [
        (dict(top_p=0.0), "top_p"),
        (dict(top_p=1.5), "top_p"),
        (dict(top_k=-1), "top_k"),
        (dict(min_p=-0.1), "min_p"),
        (dict(min_p=1.1), "min_p"),
        (dict(typical_p=0.0), "typical_p"),
        (dict(epsilon=-1e-3), "epsilon"),
        (dict(eta=-1.0), "eta"),
        (dict(top_n_sigma=-0.5), "top_n_sigma"),
        (dict(top_h=0.0), "top_h"),
        (dict(top_h=1.2), "top_h"),
        (dict(temperature=0.0), "temperature"),
        (dict(temperature=-1.0), "temperature"),
        (dict(min_tokens_to_keep=0), "min_tokens_to_keep"),
        (dict(backend="gpu"), "backend"),
    ],
)
def test_bad_input(kw, name):
    x = torch.randn(2, 10)
    with pytest.raises(ValueError, match=name):
        fuq.truncate(x, **kw)
    with pytest.raises(ValueError, match=name):
        fuq.sample(x, **kw)


def test_bad_types():
    x = torch.randn(2, 10)
    with pytest.raises(TypeError, match="top_k"):
        fuq.truncate(x, top_k=2.5)
    with pytest.raises(TypeError, match="logits"):
        fuq.truncate(x.long())
    with pytest.raises(ValueError, match="empty vocabulary"):
        fuq.truncate(torch.empty(2, 0))


def test_torch_compile_fullgraph():
    def step(logits):
        z = fuq.truncate(logits, temperature=0.8, top_k=20, top_p=0.9)
        return torch.softmax(z, dim=-1)

    x = make_logits(2, 3001, torch.float32, "llm")
    compiled = torch.compile(step, fullgraph=True, backend="aot_eager")
    torch.testing.assert_close(compiled(x), step(x))


def test_opcheck():
    x = make_logits(3, 257, torch.float32, "normal")
    args = (x, 0.9, 5, 0.9, 0.0, 1.0, 0.0, 0.0, 0.0, -1.0, False, 1)
    torch.library.opcheck(torch.ops.fuq.truncate.default, args)
    u = torch.rand(3, dtype=torch.float64)
    torch.library.opcheck(torch.ops.fuq.sample.default, (x, u, 4, *args[1:]))


@pytest.mark.skipif(os.environ.get("FUQ_NO_EXT") == "1", reason="built without the C++ extension")
def test_cpp_kernel_is_loaded():
    assert _library.HAS_CPP_TRUNCATE and _library.HAS_CPP_SAMPLE, _library.C_ERROR
