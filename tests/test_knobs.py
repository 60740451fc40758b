"""The knob table (fuq/knobs.py): what derives from it, the packed tensor, and per-row knobs on
every backend against the reference row by row."""

from __future__ import annotations

import inspect
import random

import pytest
import torch
from helpers import TRITON_RUNS, make_logits

import fuq
from fuq import _library, knobs, reference

CUT = [k.name for k in knobs.KNOBS if k.name not in ("temperature", "min_tokens_to_keep")]
#: a value that cuts something for each knob (V of a few hundred)
ON = {"temperature": 0.7, "top_k": 7, "top_p": 0.6, "min_p": 0.05, "typical_p": 0.5, "epsilon": 3e-3, "eta": 1e-2,
      "top_h": 0.4, "top_n_sigma": 1.0, "p_less": True, "min_tokens_to_keep": 3}


def test_header_is_current():
    assert knobs.HEADER_PATH.read_text() == knobs.header(), "run `python -m fuq.knobs --header`"


def test_everything_lists_the_table():
    for fn in (fuq.truncate, fuq.sample):
        params = inspect.signature(fn).parameters
        got = [(n, params[n].default) for n in knobs.NAMES]
        assert got == knobs.signature_params(), fn.__name__
        assert all(params[n].kind is inspect.Parameter.KEYWORD_ONLY for n in knobs.NAMES)
    ref = list(inspect.signature(reference.truncate).parameters)[1 : 1 + knobs.NK]
    assert tuple(ref) == knobs.NAMES
    sch = torch._C.parse_schema("fuq::" + _library.SCHEMAS["truncate"])
    assert tuple(a.name for a in sch.arguments[1:]) == knobs.NAMES
    assert [a.type.str() for a in sch.arguments[1:]] == [k.type.__name__ for k in knobs.KNOBS]
    import importlib

    assert importlib.import_module("fuq.generate").SAMPLE_KNOBS == knobs.NAMES
    x = torch.randn(2, 40)
    assert torch.equal(reference.truncate(x, *knobs.OFF), x), "the off-values cut nothing"


def test_hf_sampling_knobs_from_the_table():
    hf = pytest.importorskip("fuq.hf")
    from transformers import GenerationConfig

    gc = GenerationConfig(do_sample=True, temperature=0.5, top_k=0, top_p=0.9, typical_p=1.0, epsilon_cutoff=3e-4,
                          eta_cutoff=0.0, min_p=0.1)
    assert hf.sampling_knobs(gc) == {"temperature": 0.5, "top_p": 0.9, "epsilon": 3e-4, "min_p": 0.1,
                                     "min_tokens_to_keep": 1}


def test_hf_signatures_from_the_table():
    hf = pytest.importorskip("fuq.hf")
    from transformers import GenerationConfig

    from fuq.processors import FusedLogitsWarper

    params = inspect.signature(FusedLogitsWarper).parameters
    assert [(n, params[n].default) for n in knobs.NAMES] == knobs.signature_params()
    assert knobs.FUQ_ONLY == tuple(k.name for k in knobs.KNOBS if k.hf is None and k.name != "min_tokens_to_keep")
    for fn in (hf.patch, hf.fused_logits_processor):
        params = inspect.signature(fn).parameters
        assert [n for n in params if n in knobs.BY_NAME] == list(knobs.FUQ_ONLY), fn.__name__
    gc = GenerationConfig(do_sample=True, top_p=0.9)
    assert hf.fused_logits_processor(gc, top_n_sigma=1.0)._knobs()["top_n_sigma"] == 1.0
    with pytest.raises(TypeError, match="top_p"):  # a GenerationConfig knob is the config's, not an argument
        hf.fused_logits_processor(gc, top_p=0.5)
    with pytest.raises(TypeError, match="top_pp"):
        FusedLogitsWarper(top_pp=0.9)
    with pytest.raises(ValueError, match="top_p"):
        FusedLogitsWarper(top_p=1.5)
    with pytest.raises(TypeError, match="top_pp"):
        fuq.truncate(torch.randn(1, 8), top_pp=0.9)


def test_knob_docs_from_the_table():
    for fn in (fuq.truncate, fuq.sample):
        for kn in knobs.KNOBS:
            assert f"{kn.name}: {kn.doc}" in " ".join(fn.__doc__.split()), (fn.__name__, kn.name)


def test_pack_and_active():
    t, a = knobs.pack(top_p=0.9)
    assert t.shape == (1, knobs.NK) and t.dtype == torch.float64
    assert a == knobs.BY_NAME["top_p"].bit
    assert t[0].tolist() == [float(v) for v in knobs.resolve(top_p=0.9)]
    t, a = knobs.pack(3, top_k=torch.tensor([0, 5, 0]), temperature=0.5)
    assert t.shape == (3, knobs.NK)
    assert t[:, knobs.INDEX["top_k"]].tolist() == [0.0, 5.0, 0.0]
    assert t[:, knobs.INDEX["temperature"]].tolist() == [0.5] * 3
    assert a == knobs.BY_NAME["top_k"].bit | knobs.BY_NAME["temperature"].bit
    t, a = knobs.pack(2, top_p=torch.tensor([1.0, 1.0], dtype=torch.float64))
    assert a == 0, "a tensor of off-values turns nothing on"
    assert knobs.unpack_row(knobs.pack(top_k=3, p_less=True)[0][0]) == knobs.resolve(top_k=3, p_less=True)


@pytest.mark.parametrize(
    "kw, err, msg",
    [
        (dict(top_p=torch.tensor([0.5, 2.0, 0.9])), ValueError, r"top_p\[1\] = 2.0"),
        (dict(top_p=torch.tensor([0.5, 0.9])), ValueError, "top_p must be a number or a \\[B\\] tensor with B = 3"),
        (dict(top_k=torch.tensor([1.0, 2.0, 3.0])), TypeError, "top_k as a tensor must be an integer tensor"),
        (dict(top_k=torch.tensor([1, -2, 3])), ValueError, r"top_k\[1\] = -2"),
        (dict(temperature=torch.tensor([1.0, 0.0, 1.0])), ValueError, r"temperature\[1\]"),
        (dict(p_less=torch.tensor([1, 0, 1])), TypeError, "p_less as a tensor must be a bool tensor"),
        (dict(eta=torch.tensor([0.1, float("nan"), 0.0])), ValueError, r"eta\[1\]"),
        (dict(min_tokens_to_keep=torch.tensor([1, 0, 1])), ValueError, r"min_tokens_to_keep\[1\]"),
        (dict(top_p=torch.ones(3, 1)), ValueError, "top_p must be a number or a \\[B\\] tensor"),
        (dict(top_p=1.5), ValueError, "top_p must be in \\(0, 1\\]"),
    ],
)
def test_bad_per_row_knobs_name_the_argument(kw, err, msg):
    x = torch.randn(3, 20)
    with pytest.raises(err, match=msg):
        fuq.truncate(x, **kw)
    with pytest.raises(err, match=msg):
        fuq.sample(x, **kw)


def _mixed(name: str, B: int, rng: random.Random) -> torch.Tensor:
    """Rows with and without the knob (off-value), at least one of each."""
    kn = knobs.BY_NAME[name]
    on = [rng.random() < 0.5 for _ in range(B)]
    on[0], on[1] = True, False
    if kn.type is bool:
        return torch.tensor(on)
    if kn.type is int:
        return torch.tensor([ON[name] if o else int(kn.off) for o in on])
    vals = {"top_p": [0.3, 0.6, 0.95], "typical_p": [0.2, 0.5], "top_h": [0.2, 0.5, 0.9], "min_p": [0.01, 0.2],
            "epsilon": [1e-3, 1e-2], "eta": [1e-3, 3e-2], "top_n_sigma": [0.0, 1.0, 2.5],
            "temperature": [0.3, 0.7, 1.6]}[name]
    return torch.tensor([rng.choice(vals) if o else kn.off for o in on], dtype=torch.float64)


def _row_reference(x, i, kw, fn="truncate"):
    one = {n: (v[i].item() if isinstance(v, torch.Tensor) else v) for n, v in kw.items()}
    for n, v in list(one.items()):
        kn = knobs.BY_NAME[n]
        one[n] = kn.type(v)
        if kn.default is None and one[n] == kn.type(kn.off):
            one[n] = None  # the row does not use the knob
    return fuq.truncate(x[i : i + 1], backend="reference", **one)


BACKENDS = ["reference"] + (["cpp"] if _library.HAS_CPP_TRUNCATE else [])


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", knobs.NAMES)
def test_per_row_truncate_equals_reference_row_by_row(name, backend):
    rng = random.Random(hash(name) % 1000)
    B, V = 6, 301
    x = make_logits(B, V, seed=5)
    kw = {name: _mixed(name, B, rng)}
    if name == "min_tokens_to_keep":
        kw["top_k"] = 1
    if name == "temperature":
        kw["top_p"] = 0.8
    got = fuq.truncate(x, backend=backend, **kw)
    for i in range(B):
        assert torch.equal(got[i : i + 1], _row_reference(x, i, kw)), (name, i)


@pytest.mark.parametrize("backend", BACKENDS)
def test_per_row_mixture_of_knobs_sample(backend):
    rng = random.Random(1)
    B, V = 8, 257
    x = make_logits(B, V, seed=2)
    kw = {n: _mixed(n, B, rng) for n in ("temperature", "top_k", "top_p", "typical_p", "p_less")}
    kw["min_p"] = 0.01  # a scalar next to the tensors
    u = torch.rand(B, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    ids, st = fuq.sample(x, backend=backend, uniform=u, k=3, **kw)
    trunc = fuq.truncate(x, backend=backend, **kw)
    for i in range(B):
        one = {n: (v[i].item() if isinstance(v, torch.Tensor) else v) for n, v in kw.items()}
        one = {n: knobs.BY_NAME[n].type(v) for n, v in one.items()}
        one = {n: (None if knobs.BY_NAME[n].default is None and v == knobs.BY_NAME[n].type(knobs.BY_NAME[n].off)
                   else v) for n, v in one.items()}
        rid, rst = fuq.sample(x[i : i + 1], backend="reference", uniform=u[i : i + 1], k=3, **one)
        assert ids[i] == rid[0], i
        assert torch.isfinite(trunc[i, ids[i]])
        torch.testing.assert_close(st.entropy[i], rst.entropy[0])
        torch.testing.assert_close(st.topk_ids[i], rst.topk_ids[0])
        torch.testing.assert_close(st.token_logprob[i], rst.token_logprob[0])


def test_per_row_leading_dims_and_scalar_tensors():
    x = make_logits(6, 50, seed=1).reshape(2, 3, 50)
    p = torch.tensor([0.3, 1.0, 0.9, 0.5, 0.7, 1.0], dtype=torch.float64)
    got = fuq.truncate(x, top_p=p)
    assert got.shape == x.shape
    flat = x.reshape(6, 50)
    for i in range(6):
        want = fuq.truncate(flat[i : i + 1], top_p=None if p[i] == 1.0 else float(p[i]), backend="reference")
        assert torch.equal(got.reshape(6, 50)[i : i + 1], want)
    # a 0-d tensor and a [1] tensor are one setting for every row
    assert torch.equal(fuq.truncate(x, top_k=torch.tensor(3)), fuq.truncate(x, top_k=3))
    assert torch.equal(fuq.truncate(x, top_k=torch.tensor([3])), fuq.truncate(x, top_k=3))


@pytest.mark.triton_interp
@pytest.mark.skipif(not TRITON_RUNS, reason="triton cannot run here")
@pytest.mark.parametrize("name", ["top_k", "top_p", "typical_p", "top_h", "temperature"])
def test_per_row_triton_equals_reference_row_by_row(name):
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    rng = random.Random(7)
    B, V = 4, 137  # V not a multiple of the block
    x = make_logits(B, V, seed=9)
    kw = {name: _mixed(name, B, rng).to(dev)}
    if name == "temperature":
        kw["top_p"] = 0.8
    got = fuq.truncate(x.to(dev), backend="triton", **kw).cpu()
    kw = {n: v.cpu() if isinstance(v, torch.Tensor) else v for n, v in kw.items()}
    for i in range(B):
        assert torch.equal(got[i : i + 1], _row_reference(x, i, kw)), (name, i)


def test_resolve_memo_keeps_types_apart_and_never_caches_errors():
    """The scalar fast path's memo (fuq.knobs._MEMO) must give what the checks give."""
    from fuq import knobs as kt

    vals = [1.0, None, 0.9, None, None, None, None, None, None, False, 1]
    first = kt.resolve_values(1, vals)
    assert kt.resolve_values(1, vals) is first  # the memo answers a repeated setting
    bad = list(vals)
    bad[9] = 1  # p_less as an int: a TypeError, even though 1 == True hashes alike
    for _ in range(2):
        with pytest.raises(TypeError, match="p_less"):
            kt.resolve_values(1, bad)
    bad = list(vals)
    bad[2] = 1.5
    for _ in range(2):  # an error is raised again, not remembered as a result
        with pytest.raises(ValueError, match="top_p"):
            kt.resolve_values(1, bad)
    per_row = list(vals)
    per_row[2] = torch.tensor([0.5, 0.9], dtype=torch.float64)
    packed = kt.resolve_values(2, per_row)  # tensors bypass the memo
    assert isinstance(packed, torch.Tensor) and packed[:, 2].tolist() == [0.5, 0.9]
