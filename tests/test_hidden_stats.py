"""fuq.hidden_stats (fuq::hidden_stats) against float64 ``hidden @ weight.T`` -> logit_stats maths, on every backend."""

from __future__ import annotations

import importlib.util

import pytest
import torch
from helpers import DTYPES, TRITON_RUNS, assert_stats_close

import fuq
from fuq import _library

HAS_CUDA = torch.cuda.is_available()
DEV = "cuda" if HAS_CUDA else "cpu"

BACKENDS = [
    pytest.param("reference", id="reference"),
    pytest.param("cpp", id="cpp"),
    pytest.param(
        "triton",
        id="triton",
        marks=[pytest.mark.triton_interp, pytest.mark.skipif(not TRITON_RUNS, reason="triton cannot run here")],
    ),
]


def stats64(hidden, weight, bias=None, k=0, targets=None, temperature=1.0, softcap=None) -> fuq.LogitStats:
    """The spec in float64: z = softcap·tanh((h·w + b)/softcap) / T, then log-softmax maths."""
    h = hidden.reshape(-1, hidden.shape[-1]).double()
    z = h @ weight.double().T
    if bias is not None:
        z = z + bias.double()
    if softcap is not None:
        z = torch.tanh(z / softcap) * softcap
    z = z / temperature
    lse = torch.logsumexp(z, -1)
    logp = z - lse[:, None]
    p = logp.exp()
    plogp = torch.where(p > 0, p * logp, torch.zeros_like(p))
    ent = -plogp.sum(-1)
    var = torch.where(p > 0, p * (logp + ent[:, None]) ** 2, torch.zeros_like(p)).sum(-1)
    order = torch.sort(z, dim=-1, descending=True, stable=True).indices[:, :k]
    tkl = logp.gather(-1, order)
    tl = None if targets is None else logp.gather(-1, targets.reshape(-1, 1).long())[:, 0]
    lead = hidden.shape[:-1]
    f = lambda x: x.float().reshape(*lead, *x.shape[1:])  # noqa: E731
    return fuq.LogitStats(
        f(lse), f(ent), f(var), f(logp.amax(-1)), z.argmax(-1).reshape(lead), f(tkl),
        order.reshape(*lead, k), f(tkl.exp().sum(-1)), None if tl is None else f(tl),
    )


def make(N, d, V, dtype, seed=0, scale=1.0, bias=False, device=DEV):
    g = torch.Generator().manual_seed(seed)
    h = torch.randn(N, d, generator=g)
    w = torch.randn(V, d, generator=g) * (scale / d**0.5) * 3.0
    b = torch.randn(V, generator=g) if bias else None
    tgt = torch.randint(0, V, (N,), generator=g)
    to = lambda x: None if x is None else x.to(device)  # noqa: E731
    return to(h.to(dtype)), to(w.to(dtype)), to(None if b is None else b.to(dtype)), to(tgt)


# (N, d, V, k, bias, temperature, softcap, chunk): T odd, d odd, V not a multiple of the chunk / tile
CASES = [
    (7, 17, 300, 5, True, 0.7, 3.0, 64),
    (5, 24, 200, 64, False, 1.0, None, 96),
    (1, 1, 1, 1, True, 1.3, 30.0, 1),
    (3, 9, 77, 0, False, 2.0, 1.5, 1000),
]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("case", CASES, ids=lambda c: "N{}-d{}-V{}-k{}".format(*c[:4]))
def test_against_float64(backend, dtype, case):
    N, d, V, k, bias, T, cap, chunk = case
    h, w, b, tgt = make(N, d, V, dtype, bias=bias)
    got = fuq.hidden_stats(h, w, b, k=k, targets=tgt, temperature=T, softcap=cap, chunk=chunk, backend=backend)
    want = stats64(h.cpu(), w.cpu(), None if b is None else b.cpu(), k, tgt.cpu(), T, cap)
    assert_stats_close(got, want, V, dtype)
    assert got.topk_ids.shape == (N, k) and got.token_logprob.shape == (N,)


@pytest.mark.parametrize("backend", BACKENDS)
def test_mixed_dtypes(backend):
    """bfloat16 hidden states with a float32 head (and a float16 bias): all widened to float32."""
    h, w, b, tgt = make(6, 20, 130, torch.float32, seed=9, bias=True)
    h, b = h.to(torch.bfloat16), b.to(torch.float16)
    got = fuq.hidden_stats(h, w, b, k=7, targets=tgt, softcap=2.5, chunk=50, backend=backend)
    assert_stats_close(got, stats64(h.cpu(), w.cpu(), b.cpu(), 7, tgt.cpu(), 1.0, 2.5), 130, torch.bfloat16)


@pytest.mark.parametrize("chunk", [1, 7, 64, 4096, None])
def test_cpp_chunks_agree(chunk):
    """Every chunk width (1 column, not a divisor of V, wider than V, the default) gives the same stats."""
    h, w, b, tgt = make(11, 33, 1000, torch.float32, seed=3, bias=True, device="cpu")
    got = fuq.hidden_stats(h, w, b, k=10, targets=tgt, softcap=5.0, temperature=0.9, chunk=chunk, backend="cpp")
    assert_stats_close(got, stats64(h, w, b, 10, tgt, 0.9, 5.0), 1000, torch.float32)


def test_cpp_many_row_blocks():
    """More rows than one block of the CPU kernel (4096): blocks are independent."""
    h, w, b, tgt = make(4099, 8, 70, torch.bfloat16, seed=4, device="cpu")
    got = fuq.hidden_stats(h, w, k=3, targets=tgt, chunk=32, backend="cpp")
    assert_stats_close(got, stats64(h, w, None, 3, tgt), 70, torch.bfloat16)


@pytest.mark.parametrize("backend", BACKENDS)
def test_leading_dims_masked_bias_and_k_max(backend):
    """hidden [2, 3, d], targets [2, 3]; -inf in the bias masks tokens; k = V."""
    h, w, _, _ = make(6, 10, 40, torch.float32, seed=5)
    b = torch.zeros(40, device=h.device)
    b[::3] = float("-inf")
    h = h.reshape(2, 3, 10)
    tgt = torch.arange(6, device=h.device).reshape(2, 3) * 2 + 1  # never a masked token
    got = fuq.hidden_stats(h, w, b, k=40, targets=tgt, backend=backend)
    want = stats64(h.cpu(), w.cpu(), b.cpu(), 40, tgt.cpu())
    assert got.entropy.shape == (2, 3) and got.topk_ids.shape == (2, 3, 40)
    live = torch.isfinite(want.topk_logprobs)
    assert_stats_close(
        got._replace(topk_logprobs=got.topk_logprobs.cpu()[..., :26]),
        want._replace(topk_logprobs=want.topk_logprobs[..., :26]),
        40,
        torch.float32,
        check_ids=False,
    )
    assert torch.equal(got.topk_ids.cpu()[live], want.topk_ids[live])  # the 26 live ones, in order
    assert torch.isneginf(got.topk_logprobs.cpu()[~live]).all()
    assert set(got.topk_ids.cpu()[0, 0, 26:].tolist()) == set(range(0, 40, 3))


@pytest.mark.parametrize("backend", BACKENDS)
def test_empty_and_nan_rows(backend):
    h, w, _, _ = make(3, 8, 50, torch.float32, seed=6)
    s = fuq.hidden_stats(h[:0], w, k=4, targets=torch.zeros(0, dtype=torch.long, device=h.device), backend=backend)
    assert s.entropy.shape == (0,) and s.topk_ids.shape == (0, 4) and s.token_logprob.shape == (0,)
    h = h.clone()
    h[1, 2] = float("nan")
    s = fuq.hidden_stats(h, w, k=4, backend=backend)
    assert torch.isnan(s.lse[1]) and torch.isnan(s.entropy[1]) and s.token_logprob is None
    assert torch.isfinite(s.entropy[[0, 2]]).all()
    assert ((s.topk_ids >= 0) & (s.topk_ids < 50)).all() and 0 <= int(s.argmax[1]) < 50


@pytest.mark.triton_interp
@pytest.mark.skipif(not TRITON_RUNS, reason="triton cannot run here")
def test_triton_large_k_route():
    """k > K_MAX: the kernel without candidates, the top-k from [N, chunk] logit blocks."""
    from fuq.triton_kernels import hidden_stats as th

    h, w, b, tgt = make(3, 12, 150, torch.float32, seed=7, bias=True)
    got = fuq.hidden_stats(h, w, b, k=th.K_MAX + 9, targets=tgt, softcap=4.0, backend="triton")
    assert_stats_close(got, stats64(h.cpu(), w.cpu(), b.cpu(), th.K_MAX + 9, tgt.cpu(), 1.0, 4.0), 150, torch.float32)


@pytest.mark.parametrize(
    "kwargs, exc, match",
    [
        (dict(hidden=torch.zeros(2, 4, dtype=torch.long)), TypeError, "hidden must be float32"),
        (dict(hidden="x"), TypeError, "hidden must be a torch.Tensor"),
        (dict(weight=torch.zeros(10, 5)), ValueError, "weight must be \\[V, d\\] with d = 4"),
        (dict(weight=torch.zeros(0, 4)), ValueError, "empty vocabulary"),
        (dict(weight=torch.zeros(10)), ValueError, "weight must have 2 dims"),
        (dict(bias=torch.zeros(9)), ValueError, "bias must be \\[V\\]"),
        (dict(k=11), ValueError, "k must be in \\[0, V\\]"),
        (dict(k=1.0), TypeError, "k must be an int"),
        (dict(targets=torch.tensor([0, 10])), ValueError, "tokens must be in \\[0, 10\\)"),
        (dict(targets=torch.zeros(3, dtype=torch.long)), ValueError, "tokens must have shape"),
        (dict(temperature=0.0), ValueError, "temperature"),
        (dict(softcap=-1.0), ValueError, "softcap"),
        (dict(softcap=float("inf")), ValueError, "softcap"),
        (dict(chunk=0), ValueError, "chunk"),
        (dict(chunk=True), ValueError, "chunk"),
        (dict(backend="gpu"), ValueError, "backend must be one of"),
    ],
)
def test_bad_input(kwargs, exc, match):
    args = dict(hidden=torch.zeros(2, 4), weight=torch.zeros(10, 4))
    args.update(kwargs)
    with pytest.raises(exc, match=match):
        fuq.hidden_stats(args.pop("hidden"), args.pop("weight"), args.pop("bias", None), **args)


def test_backend_cpp_needs_cpu_and_kernel():
    assert _library.HAS_CPP_HIDDEN_STATS, f"fuq._C has no hidden_stats kernel: {_library.C_ERROR}"
    s = fuq.hidden_stats(torch.randn(2, 4), torch.randn(10, 4), backend="cpp")
    assert s.lse.shape == (2,)


def test_opcheck():
    h, w, b, tgt = make(5, 7, 33, torch.float32, device="cpu", bias=True)
    for args in ((h, w, b, 3, tgt, 0.8, 2.0, 16), (h, w, None, 0, None, 1.0, None, 33)):
        torch.library.opcheck(torch.ops.fuq.hidden_stats.default, args)


def test_torch_compile_fullgraph():
    h, w, _, tgt = make(4, 6, 20, torch.float32, device="cpu")
    f = torch.compile(lambda h, w, t: fuq.hidden_stats(h, w, k=2, targets=t, chunk=8).entropy, fullgraph=True)
    torch.testing.assert_close(f(h, w, tgt), fuq.hidden_stats(h, w, k=2, targets=tgt).entropy)


# ---------------------------------------------------------------------------------------------
# The peer: liger-kernel's fused linear cross-entropy (its pure-torch path off CUDA)


HAS_LIGER = importlib.util.find_spec("liger_kernel") is not None


@pytest.mark.skipif(not HAS_LIGER, reason="liger-kernel is not installed (pip install --no-deps liger-kernel)")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_against_liger_fused_linear_scaled_cross_entropy(dtype):
    """Per-token NLL and entropy side by side with LigerFusedLinearScaledCrossEntropyFunction."""
    try:
        from liger_kernel.ops import LigerFusedLinearScaledCrossEntropyFunction as Liger
    except Exception as exc:  # noqa: BLE001 - an import that fails for any reason means "no peer here"
        pytest.skip(f"liger_kernel.ops does not import here: {type(exc).__name__}: {exc}")
    h, w, _, tgt = make(37, 48, 3001, dtype, seed=8, scale=2.0)
    T = 0.8
    nll, ent = Liger.apply(h, w, tgt, T, -100, 1, True)[:2]
    s = fuq.hidden_stats(h, w, targets=tgt, temperature=T)
    want = stats64(h, w, None, 0, tgt, T)
    if dtype == torch.float32:  # the same float32 maths: equal within summation order
        torch.testing.assert_close(-s.token_logprob, nll.float(), atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(s.entropy, ent.float(), atol=1e-4, rtol=1e-4)
    else:
        # liger rounds the bfloat16 logits (and z / T) to bfloat16 before its float32 softmax;
        # fuq keeps float32 logits: fuq is the closer of the two to the float64 truth
        for mine, theirs, truth in ((-s.token_logprob, nll, -want.token_logprob), (s.entropy, ent, want.entropy)):
            err_fuq = (mine - truth).abs().max().item()
            err_liger = (theirs.float() - truth).abs().max().item()
            assert err_fuq < 1e-3 and err_liger < 0.5 and err_fuq <= err_liger, (err_fuq, err_liger)


# ---------------------------------------------------------------------------------------------
# Teacher forcing goes through hidden_stats: the LM head's full logits are never built


def test_score_text_never_builds_full_logits(tmp_path, monkeypatch):
    pytest.importorskip("transformers")
    from helpers import tiny_lm_folder
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = tiny_lm_folder(tmp_path)
    model, tok = AutoModelForCausalLM.from_pretrained(path).eval(), AutoTokenizer.from_pretrained(path)
    text = "The cat sat on the mat. Entropy measures how unsure a model is."
    ids = [tok.bos_token_id] + tok(text, add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        lp = torch.log_softmax(model(input_ids=torch.tensor([ids])).logits[0, :-1].double(), -1)
    seen = []
    real = fuq.forced.hidden_stats
    monkeypatch.setattr(fuq.forced, "hidden_stats", lambda *a, **kw: seen.append(kw["chunk"]) or real(*a, **kw))
    hook = model.lm_head.register_forward_hook(lambda *a: pytest.fail("the LM head ran: [T, V] logits were built"))
    try:
        tr = fuq.score_text(model, tok, text, k=3, max_chunk_elems=10 * (len(ids) - 1))
    finally:
        hook.remove()
    assert seen == [10]  # 10 vocabulary columns per position at once, of V = 320
    want = [lp[t, ids[t + 1]].item() for t in range(len(ids) - 1)]
    torch.testing.assert_close(tr.token_logprob[0], torch.tensor(want, dtype=torch.float32), atol=1e-4, rtol=1e-4)
    assert tr.topk_ids[0].tolist() == lp.topk(3, -1).indices.tolist()


def test_teacher_forced_scale_bias_and_softcap(tmp_path):
    """logits = softcap(scale · (h @ W.T + b)): the bias is scaled with the hidden state (Cohere / Granite)."""
    pytest.importorskip("transformers")
    from helpers import tiny_lm_folder
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_lm_folder(tmp_path)).eval()
    V = model.lm_head.weight.shape[0]
    model.lm_head.bias = torch.nn.Parameter(torch.randn(V, generator=torch.Generator().manual_seed(0)))
    model.config.logit_scale, model.config.final_logit_softcapping = 0.5, 20.0
    ids = torch.randint(0, V, (2, 9), generator=torch.Generator().manual_seed(1))
    stats, _ = fuq.forced.teacher_forced(model, ids, k=4, chunk=37)
    with torch.no_grad():
        h = model.model(input_ids=ids).last_hidden_state[:, :-1]
    z = 0.5 * (h.double() @ model.lm_head.weight.double().T + model.lm_head.bias.double())
    lp = torch.log_softmax(torch.tanh(z / 20.0) * 20.0, -1)
    want = lp.gather(-1, ids[:, 1:, None])[..., 0]
    torch.testing.assert_close(stats.token_logprob, want.float(), atol=1e-4, rtol=1e-4)
    assert torch.equal(stats.topk_ids, lp.topk(4, -1).indices)
