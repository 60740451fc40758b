"""fuq.kvpress: fuq's SnapKV, TOVA and key-norm scores equal kvpress's own presses' ``score()`` on the
same tensors of a real attention module (a tiny random Llama), and the whole-model press works under
transformers 5 where kvpress's own fails. Skips (with the reason) where kvpress does not import."""

from __future__ import annotations

import pytest
import torch

transformers = pytest.importorskip("transformers")
try:
    import kvpress  # noqa: F401
    from kvpress import KnormPress, SnapKVPress, TOVAPress

    from fuq import kvpress as fkv
    _WHY = ""
except Exception as e:  # noqa: BLE001
    _WHY = f"kvpress does not import here ({type(e).__name__}: {e}); install kvpress==0.5.5 --no-deps + deps"

pytestmark = pytest.mark.skipif(bool(_WHY), reason=_WHY or "kvpress")

from test_generate import tiny_gemma3, tiny_llama  # noqa: E402


def _capture(model, T=40, seed=0, layer=1):
    """Run a prefill; return the attention module of ``layer`` with its hidden_states, kwargs and
    the cached keys / values after the forward."""
    attn = model.model.layers[layer].self_attn
    seen = {}

    def hook(module, args, kwargs):
        seen["kwargs"] = dict(kwargs)

    h = attn.register_forward_pre_hook(hook, with_kwargs=True)
    ids = torch.randint(3, 128, (2, T), generator=torch.Generator().manual_seed(seed))
    try:
        out = model(input_ids=ids, use_cache=True)
    finally:
        h.remove()
    cache = getattr(out, "cache", None) or out.past_key_values
    kw = seen["kwargs"]
    return attn, kw["hidden_states"], cache.layers[layer].keys, cache.layers[layer].values, kw


@pytest.fixture
def llama():
    m = tiny_llama()
    m.config._attn_implementation = "sdpa"
    return m


@torch.no_grad()
def test_knorm_equals_kvpress(llama):
    attn, h, k, v, kw = _capture(llama)
    want = KnormPress(0.5).score(attn, h, k, v, None, kw)
    got = fkv.FuqKnormPress(0.5).score(attn, h, k, v, None, kw)
    torch.testing.assert_close(got, want)


@torch.no_grad()
@pytest.mark.parametrize("T", [40, 77])
def test_tova_equals_kvpress(llama, T):
    attn, h, k, v, kw = _capture(llama, T=T)
    want = TOVAPress(0.5).score(attn, h, k, v, None, kw)
    got = fkv.FuqTOVAPress(0.5).score(attn, h, k, v, None, kw)
    assert got.shape == want.shape == k.shape[:3]
    torch.testing.assert_close(got[..., :-1], want[..., :-1], atol=1e-6, rtol=1e-5)


@torch.no_grad()
@pytest.mark.parametrize("window", [8, 16])
def test_snapkv_equals_kvpress(llama, window):
    attn, h, k, v, kw = _capture(llama, T=45)
    want = SnapKVPress(0.5, window_size=window, kernel_size=5).score(attn, h, k, v, None, kw)
    got = fkv.FuqSnapKVPress(0.5, window_size=window, kernel_size=5).score(attn, h, k, v, None, kw)
    torch.testing.assert_close(got[..., :-window], want[..., :-window], atol=1e-6, rtol=1e-5)
    # both keep the window first
    assert bool((got[..., -window:] > got[..., :-window].max()).all())


@torch.no_grad()
def test_whole_model_press_under_transformers5(llama):
    ids = torch.randint(3, 128, (1, 40), generator=torch.Generator().manual_seed(1))
    with fkv.FuqSnapKVPress(0.5, window_size=8)(llama):
        out = llama(input_ids=ids, use_cache=True)
    cache = getattr(out, "cache", None) or out.past_key_values
    assert [lay.keys.shape[2] for lay in cache.layers] == [20, 20]
    major = int(transformers.__version__.split(".")[0])
    if major >= 5:  # kvpress's own hook reads kwargs["past_key_values"], which transformers 5 does not pass
        with pytest.raises(KeyError):
            with KnormPress(0.5)(llama):
                llama(input_ids=ids, use_cache=True)


@torch.no_grad()
def test_press_skips_gemma3_sliding_layers():
    m = tiny_gemma3()
    m.config._attn_implementation = "sdpa"
    ids = torch.randint(3, 128, (1, 40), generator=torch.Generator().manual_seed(2))
    with fkv.FuqKnormPress(0.5)(m):
        out = m(input_ids=ids, use_cache=True)
    cache = getattr(out, "cache", None) or out.past_key_values
    assert cache.layers[1].keys.shape[2] == 20  # full attention: compressed
    assert cache.layers[0].keys.shape[2] == 3  # sliding (window 4): untouched, the window's own size
