"""fuq.kv: the KV-cache scorers against float64 maths, the budget allocation, and eviction inside
fuq.generate on tiny random Llama / Gemma 3 models (no downloads): kv_budget=1.0 is exact, the
cache really shrinks, the logits after an eviction equal a full forward whose attention masks
out the evicted keys (original RoPE positions, left-padded rows, Gemma 3's sliding layer), and
bad arguments are refused."""

from __future__ import annotations

import json
import math

import pytest
import torch

import fuq
from fuq import kv

transformers = pytest.importorskip("transformers")

from test_generate import tiny_gemma3, tiny_llama  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py

SCORERS = sorted(kv.SCORERS)


def _ctx(B=2, Hq=6, Hkv=2, T=37, d=16, Lq=9, seed=0, dtype=torch.float32, dead=True):
    g = torch.Generator().manual_seed(seed)
    k = torch.randn(B, Hkv, T, d, generator=g).to(dtype)
    q = torch.randn(B, Hq, Lq, d, generator=g).to(dtype)
    alive = torch.ones(B, Hkv, T, dtype=torch.bool)
    if dead:
        alive[1, :, :3] = False  # a left-padded row
    pos = torch.arange(T).expand(B, Hkv, T).clone()
    ent = torch.full((B, Hkv, T), float("nan"))
    ctx = kv.KVContext(0, "prefill", k, k.clone(), alive, pos, ent, 1 / math.sqrt(d), None, q)
    return ctx


def _probs64(ctx, Lq=None):
    """float64 softmax of the last Lq queries over the live keys, causal: [B, Hq, Lq, T]."""
    q = ctx.q.double() if Lq is None else ctx.q[:, :, -Lq:].double()
    B, Hq, L, d = q.shape
    Hkv, T = ctx.keys.shape[1:3]
    k = ctx.keys.double().repeat_interleave(Hq // Hkv, 1)
    s = torch.einsum("bhld,bhtd->bhlt", q, k) * ctx.scale
    allowed = torch.arange(T)[None, :] <= torch.arange(T - L, T)[:, None]
    allowed = allowed[None, None] & ctx.alive.repeat_interleave(Hq // Hkv, 1)[:, :, None, :]
    s = s.masked_fill(~allowed, float("-inf"))
    return torch.softmax(s, -1).nan_to_num(0.0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_tova_is_head_mean_of_last_query(dtype):
    ctx = _ctx(dtype=dtype)
    p = _probs64(ctx, 1)[:, :, 0]  # [B, Hq, T]
    want = p.mean(1, keepdim=True).expand(-1, 2, -1)
    torch.testing.assert_close(kv.TOVA().score(ctx).double(), want, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("T", [37, 70])
def test_snapkv_window_mean_pool_group_mean(T):
    sc = kv.SnapKV(window=8, kernel=5)
    ctx = _ctx(T=T, Lq=8)
    p = _probs64(ctx, 8)  # [B, Hq, 8, T]
    m = p.mean(2)[..., : T - 8]
    m = torch.nn.functional.avg_pool1d(m, 5, 1, 2)
    want = m.view(2, 2, 3, T - 8).mean(2)
    got = sc.score(ctx)
    torch.testing.assert_close(got[..., : T - 8].double(), want, atol=1e-6, rtol=1e-5)
    assert bool((got[..., T - 8 :] > got[..., : T - 8].max()).all()), "the window ranks first"


def test_h2o_accumulates_mass_in_place():
    sc = kv.H2O(chunk=4)  # several chunks over the 9 prefill queries
    ctx = _ctx(T=37, Lq=9)
    sc.observe(ctx, 9)
    want = _probs64(ctx).sum(2).view(2, 2, 3, 37).sum(2)
    torch.testing.assert_close(sc.score(ctx).double(), want, atol=1e-5, rtol=1e-5)
    buf = sc.buf[0]
    # one decode step: a new key, one query; the buffer grows and adds that row's mass
    g = torch.Generator().manual_seed(5)
    k2 = torch.cat([ctx.keys, torch.randn(2, 2, 1, 16, generator=g)], 2)
    ctx2 = kv.KVContext(0, "decode", k2, k2, torch.cat([ctx.alive, torch.ones(2, 2, 1, dtype=torch.bool)], 2),
                        torch.arange(38).expand(2, 2, 38), torch.zeros(2, 2, 38), ctx.scale, None,
                        torch.randn(2, 6, 1, 16, generator=g))
    sc.observe(ctx2, 1)
    acc = torch.cat([want, want.new_zeros(2, 2, 1)], 2) + _probs64(ctx2).sum(2).view(2, 2, 3, 38).sum(2)
    torch.testing.assert_close(sc.score(ctx2).double(), acc, atol=1e-5, rtol=1e-5)
    assert sc.buf[0].shape[2] == 74 and buf.shape[2] == 37  # grown by doubling, then updated in place
    ctx3 = kv.KVContext(0, "decode", k2, k2, ctx2.alive, ctx2.positions, ctx2.token_entropy, ctx.scale, None,
                        torch.randn(2, 6, 1, 16, generator=g))
    ptr = sc.buf[0].data_ptr()
    sc.observe(ctx3, 0)  # no new slot: nothing moves
    assert sc.buf[0].data_ptr() == ptr
    idx = torch.tensor([0, 5, 37]).expand(2, 2, 3)
    sc.gather(0, idx)
    torch.testing.assert_close(sc.acc[0].double(), acc.gather(2, idx), atol=1e-5, rtol=1e-5)


def test_h2o_mean_divides_by_the_queries_that_saw_each_slot():
    """kvpress's ObservedAttentionPress: the mass of all prompt queries over the number that saw the key."""
    T = 21
    ctx = _ctx(T=T, Lq=T, dead=False)
    sc = kv.H2O(mean=True)
    sc.observe(ctx, T)
    mass = _probs64(ctx).sum(2).view(2, 2, 3, T).sum(2)
    want = mass / torch.arange(T, 0, -1).double()
    torch.testing.assert_close(sc.score(ctx).double(), want, atol=1e-5, rtol=1e-5)
    assert sc.config() == {"recent": 0.5, "mean": True} and kv.H2O().config() == {"recent": 0.5}


def test_h2o_keeps_the_recent_half_of_its_budget():
    """The H2O paper's split: half of each row's budget for the newest tokens, half for heavy hitters."""
    m = tiny_llama()
    ids, am = _batch()
    kept = {}
    for recent in (0.5, 0.0):
        tr = fuq.generate(m, ids, attention_mask=am, max_new_tokens=1, eos_token_id=[], kv_budget=0.5,
                          kv_scorer=kv.H2O(recent=recent), kv_sinks=1, kv_window=1)
        kept[recent] = tr.meta["kv"]["kept_prompt"]
        assert tr.meta["kv"]["scorer_args"]["recent"] == recent
    assert kept[0.5][0][-10:] == [1.0] * 10 and kept[0.5][1][-9:] == [1.0] * 9  # ceil(ceil(40/2)/2), 33 -> 9
    assert kept[0.0][0][-10:] != [1.0] * 10  # heavy hitters alone drop some of them
    # the wrappers pass the split on
    assert kv.ProtectUncertain(kv.H2O()).recent_share == 0.5 == kv.EntropyBudget(kv.H2O()).recent_share
    assert kv.SnapKV().recent_share == 0.0
    with pytest.raises(ValueError, match="recent"):
        kv.H2O(recent=1.5)


def _matrix_entropy64(k: torch.Tensor) -> float:
    z = k.double() / k.double().norm(dim=-1, keepdim=True)
    lam = torch.linalg.eigvalsh(z.T @ z / z.shape[0]).clamp_min(0)
    lam = lam / lam.sum()
    return float(-(lam[lam > 0] * lam[lam > 0].log()).sum())


def test_matrix_entropy_against_float64():
    g = torch.Generator().manual_seed(1)
    k = torch.randn(2, 3, 50, 8, generator=g) * torch.linspace(0.1, 3, 8)  # anisotropic
    alive = torch.ones(2, 3, 50, dtype=torch.bool)
    alive[1, 2, :20] = False
    got = kv.matrix_entropy(k.to(torch.bfloat16), alive)
    assert got.shape == (2, 3) and got.dtype == torch.float32
    for b in range(2):
        for h in range(3):
            want = _matrix_entropy64(k.to(torch.bfloat16)[b, h][alive[b, h]])
            assert float(got[b, h]) == pytest.approx(want, abs=1e-5)
    # limits: one direction -> 0; many isotropic keys -> log d; scaling a key changes nothing
    one = torch.randn(1, 1, 1, 8, generator=g).expand(1, 1, 30, 8) * torch.rand(1, 1, 30, 1, generator=g)
    assert float(kv.matrix_entropy(one)) == pytest.approx(0.0, abs=1e-6)
    iso = torch.randn(1, 1, 20000, 8, generator=g)
    assert float(kv.matrix_entropy(iso)) == pytest.approx(math.log(8), abs=2e-3)
    torch.testing.assert_close(kv.matrix_entropy(k * torch.rand(2, 3, 50, 1, generator=g) * 5), kv.matrix_entropy(k))


@pytest.mark.parametrize("measure", ["matrix", "attention"])
def test_entropy_budget_measures(measure):
    ctx = _ctx(Lq=9)
    sc = kv.EntropyBudget(kv.SnapKV(window=4), window=9, measure=measure, power=2.0)
    sc.observe(ctx, 37)
    if measure == "matrix":
        want = kv.matrix_entropy(ctx.keys, ctx.alive) ** 2
        assert sc.queries == 4  # the keys alone: only SnapKV's queries
    else:
        a = ctx.stats(ctx.q).entropy.nan_to_num(0.0).mean(-1).view(2, 2, 3).mean(-1)
        want = a**2
        assert sc.queries == 9
    torch.testing.assert_close(sc.entropy[0], want)
    assert sc.config()["measure"] == measure
    with pytest.raises(ValueError, match="measure"):
        kv.EntropyBudget(measure="rank")
    with pytest.raises(ValueError, match="power"):
        kv.EntropyBudget(power=float("nan"))


def test_entropy_budget_layer_power():
    """Heads of a layer in proportion to their entropy; layers by their mean entropy ** layer_power."""
    sc = kv.EntropyBudget(layer_power=-0.5)
    sc.entropy = {0: torch.tensor([[1.0, 3.0]]), 4: torch.tensor([[4.0, 4.0]])}
    w = sc.weights([0, 4])
    torch.testing.assert_close(w, torch.tensor([[[0.5 * 2**-0.5, 1.5 * 2**-0.5], [0.5, 0.5]]]))
    uncomp = kv.EntropyBudget(layer_power=1.0)
    uncomp.entropy = sc.entropy
    torch.testing.assert_close(uncomp.weights([0, 4]), torch.tensor([[[1.0, 3.0], [4.0, 4.0]]]))
    flat = kv.EntropyBudget(layer_power=0.0)
    flat.entropy = sc.entropy
    torch.testing.assert_close(flat.weights([0, 4]).sum(-1), torch.tensor([[2.0, 2.0]]))  # equal layers
    assert sc.config()["layer_power"] == -0.5
    with pytest.raises(ValueError, match="layer_power"):
        kv.EntropyBudget(layer_power=float("inf"))


def test_knorm_streaming_uncertain():
    ctx = _ctx()
    torch.testing.assert_close(kv.KeyNorm().score(ctx), -ctx.keys.float().norm(dim=-1))
    assert torch.equal(kv.StreamingLLM().score(ctx), ctx.positions.float())
    ctx.token_entropy[:, :, 30] = 2.5  # an uncertain generated token
    ctx.token_entropy[:, :, 31] = 0.2  # a confident one
    s = kv.ProtectUncertain(kv.KeyNorm(), tau=1.0).score(ctx)
    assert bool(torch.isinf(s[:, :, 30]).all()) and bool(torch.isfinite(s[:, :, 31]).all())
    assert bool(torch.isfinite(s[:, :, :30]).all())


def test_allocate_budgets_sum_bounds_proportional():
    w = torch.tensor([[1.0, 2.0, 3.0, 10.0], [1.0, 1.0, 1.0, 1.0]])
    total = torch.tensor([40, 21])
    lo = torch.full((2, 4), 2)
    hi = torch.full((2, 4), 15)
    n = kv.allocate_budgets(w, total, lo, hi)
    assert n.sum(-1).tolist() == [40, 21]
    assert bool((n >= 2).all() and (n <= 15).all())
    assert n[0].tolist() == sorted(n[0].tolist()) and n[0, 3] == 15  # capped, the rest shared in proportion
    assert n[1].max() - n[1].min() <= 1


def test_make_scorer_and_bad_arguments():
    assert isinstance(kv.make_scorer("SnapKV"), kv.SnapKV)
    assert isinstance(kv.make_scorer("key_norm"), kv.KeyNorm)
    with pytest.raises(ValueError, match="kv_scorer"):
        kv.make_scorer("nope")
    with pytest.raises(TypeError, match="kv_scorer"):
        kv.make_scorer(3)
    m = tiny_llama()
    ids = torch.randint(3, 100, (1, 12))
    for bad, exc in [(0.0, ValueError), (1.5, ValueError), (0, ValueError), (True, TypeError), ("x", TypeError)]:
        with pytest.raises(exc, match="kv_budget"):
            fuq.generate(m, ids, max_new_tokens=2, kv_budget=bad)
    with pytest.raises(ValueError, match="kv_every"):
        fuq.generate(m, ids, max_new_tokens=2, kv_budget=0.5, kv_every=-1)
    with pytest.raises(ValueError, match="kv_sinks"):
        fuq.generate(m, ids, max_new_tokens=2, kv_budget=0.5, kv_sinks=-1)
    with pytest.raises(ValueError, match="adadec"):
        fuq.generate(m, ids, max_new_tokens=2, kv_budget=0.5, strategy="adadec")
    with pytest.raises(ValueError, match="window"):
        kv.SnapKV(window=0)


def _batch(B=2, T=40, pad=7, seed=0):
    ids = torch.randint(3, 128, (B, T), generator=torch.Generator().manual_seed(seed))
    am = torch.ones_like(ids)
    am[1, :pad] = 0
    return ids, am


@pytest.mark.parametrize("make", [tiny_llama, tiny_gemma3])
def test_budget_one_is_exactly_no_eviction(make):
    m = make()
    ids, am = _batch()
    base = fuq.generate(m, ids, attention_mask=am, max_new_tokens=10, eos_token_id=[])
    for sc in SCORERS:
        tr = fuq.generate(m, ids, attention_mask=am, max_new_tokens=10, eos_token_id=[], kv_budget=1.0, kv_scorer=sc)
        assert torch.equal(tr.token_ids, base.token_ids), sc
        assert torch.equal(tr.lse, base.lse), sc
        assert tr.meta["kv"]["evictions"] == 0 and tr.meta["cache_bytes"] == base.meta["cache_bytes"]


@pytest.mark.parametrize("make", [tiny_llama, tiny_gemma3])
@pytest.mark.parametrize("sc", SCORERS)
def test_cache_shrinks_and_is_recorded(make, sc):
    m = make()
    ids, am = _batch()
    n_new = 6
    base = fuq.generate(m, ids, attention_mask=am, max_new_tokens=n_new, eos_token_id=[])
    tr = fuq.generate(m, ids, attention_mask=am, max_new_tokens=n_new, eos_token_id=[], kv_budget=0.5,
                      kv_scorer=sc, kv_sinks=2, kv_window=4)
    rep = tr.meta["kv"]
    assert len(tr.meta["cache_bytes"]) == len(base.meta["cache_bytes"]) == n_new  # prefill + n_new - 1 steps
    assert rep["evictions"] >= 1
    assert tr.meta["cache_bytes"][-1] < base.meta["cache_bytes"][-1]
    # each row keeps ceil(0.5 * seen) live tokens per full layer and head (entropy-budget: on average)
    seen = torch.tensor(rep["seen"])
    keep = torch.ceil(seen / 2)
    if sc != "entropy-budget" and kv.make_scorer(sc).decode_every:
        assert rep["live_slots"][-1] == pytest.approx(float(keep.mean()))
    # the live prompt share: row 0 holds its sinks, row 1's padding is not counted
    kept = rep["kept_prompt"]
    assert len(kept[0]) == 40 and len(kept[1]) == 33 and kept[0][:2] == [1.0, 1.0]
    assert 0 < sum(kept[0]) < 40


def _full_forward_masked(model, seq, am, keep_last):
    """Logits of the last position of a fresh forward over ``seq`` whose last query may attend only
    to the keys ``keep_last [B, T]`` in full-attention layers (causal, padding, sliding windows as
    the model has them elsewhere)."""
    B, T = seq.shape
    causal = torch.ones(T, T, dtype=torch.bool).tril()[None].expand(B, T, T).clone()
    causal &= am.bool()[:, None, :]
    full = causal.clone()
    full[:, -1] &= keep_last
    masks = {"full_attention": full[:, None]}
    types = getattr(model.config, "layer_types", None)
    if types and "sliding_attention" in types:
        w = model.config.sliding_window
        i = torch.arange(T)
        masks["sliding_attention"] = (causal & ((i[:, None] - i[None, :]) < w))[:, None]
        mask = masks
    else:
        mask = masks["full_attention"]
    pos = (am.cumsum(-1) - 1).clamp_min(0)
    return model(input_ids=seq, attention_mask=mask, position_ids=pos).logits[:, -1].float()


@pytest.mark.parametrize("make", [tiny_llama, tiny_gemma3])
def test_logits_after_eviction_equal_masked_full_forward(make):
    """StreamingLLM keeps the sinks and the most recent tokens: the step after the prefill eviction
    must see exactly those keys, at their original RoPE positions, in every full-attention layer."""
    m = make()
    m.config._attn_implementation = "sdpa"
    ids, am = _batch()
    sinks, budget = 3, 12
    tr = fuq.generate(m, ids, attention_mask=am, max_new_tokens=3, eos_token_id=[], kv_budget=budget,
                      kv_scorer="streaming", kv_sinks=sinks, kv_window=4, kv_every=0, k=0)
    seq = torch.cat([ids, tr.token_ids[:, :1]], 1)
    am2 = torch.cat([am, torch.ones(2, 1, dtype=am.dtype)], 1)
    pos = (am2.cumsum(-1) - 1).masked_fill(am2 == 0, -1)
    n = am.sum(-1)  # prompt tokens per row
    keep = (pos >= 0) & ((pos < sinks) | (pos >= (n[:, None] - (budget - sinks))))
    keep[:, -1] = True  # the fed token itself
    want = _full_forward_masked(m, seq, am2, keep)
    st = fuq.logit_stats(want)
    torch.testing.assert_close(tr.lse[:, 1], st.lse, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(tr.entropy[:, 1], st.entropy, atol=1e-4, rtol=1e-4)
    # and a run without eviction differs (the test can fail)
    nope = _full_forward_masked(m, seq, am2, am2.bool())
    assert not torch.allclose(nope, want, atol=1e-3)


def test_gemma3_sliding_layer_untouched():
    m = tiny_gemma3()
    ids, am = _batch()
    pol = kv.KVPolicy(m, "h2o", 0.25, sinks=1, window=2)
    assert sorted(pol.layers) == [1]  # layer 0 slides: not evicted
    tr = fuq.generate(m, ids, attention_mask=am, max_new_tokens=4, eos_token_id=[], kv_budget=0.25, kv_scorer="h2o",
                      kv_sinks=1, kv_window=2)
    assert tr.meta["kv"]["full_layers"] == [1]


@pytest.mark.parametrize("measure", ["matrix", "attention"])
def test_entropy_budget_shares_the_same_total(measure):
    m = tiny_llama()
    ids, am = _batch(T=60)
    sc = kv.EntropyBudget(kv.SnapKV(window=8), window=8, measure=measure)
    tr = fuq.generate(m, ids, attention_mask=am, max_new_tokens=2, eos_token_id=[], kv_budget=0.5,
                      kv_scorer=sc, kv_sinks=2, kv_window=4)
    assert sc.shares is not None and not torch.allclose(sc.shares, torch.ones_like(sc.shares))
    uni = fuq.generate(m, ids, attention_mask=am, max_new_tokens=2, eos_token_id=[], kv_budget=0.5,
                       kv_scorer=kv.SnapKV(window=8), kv_sinks=2, kv_window=4)
    # same total live slots (mean over layers and heads), different split
    assert tr.meta["kv"]["live_slots"][0] == pytest.approx(uni.meta["kv"]["live_slots"][0], abs=0.5)


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory) -> str:
    from helpers import tiny_lm_folder

    return tiny_lm_folder(tmp_path_factory.mktemp("tiny_kv"))


def test_cli_kv_budget_prints_cache_and_greys_evicted_prompt(tiny_folder, tmp_path, capsys):
    from html.parser import HTMLParser

    from fuq import cli

    assert cli.KV_SCORERS == tuple(sorted(kv.SCORERS))
    page = tmp_path / "kv.html"
    prompt = "The cat sat on the mat and the dog sat on the log while the bird sang in the tree"
    rc = cli.main(["generate", prompt, "--model", tiny_folder, "--max-new-tokens", "6", "--kv-budget", "0.25",
                   "--kv-scorer", "snapkv", "--kv-sinks", "1", "--kv-window", "2", "--json", "--html", str(page)])
    out = capsys.readouterr()
    assert rc == 0, out.err
    assert "KV cache" in out.err and "MiB" in out.err and "evicted" in out.err
    meta = json.loads(out.out)["meta"]
    ev = meta["kv"]["evicted_share"][0]
    assert 0.5 < ev < 1.0 and f"{100 * ev:.1f}%" in out.err

    class Spans(HTMLParser):
        def __init__(self):
            super().__init__()
            self.cls: list[str] = []

        def handle_starttag(self, tag, attrs):
            c = dict(attrs).get("class") or ""
            if tag == "span" and c.startswith("prompt") and dict(attrs).get("title"):
                self.cls.append(c)

    p = Spans()
    p.feed(page.read_text(encoding="utf-8"))
    kept = meta["kv"]["kept_prompt"][0]
    assert len(p.cls) == len(kept) == len(meta["kv"]["prompt_tokens"][0])
    assert [c == "prompt kvev" for c in p.cls] == [x == 0 for x in kept]
    assert "prompt kvev" in p.cls and p.cls[0] == "prompt"  # something evicted; the sink kept
    with pytest.raises(SystemExit):
        cli.main(["generate", "x", "--model", tiny_folder, "--kv-budget", "1.5"])
