"""``model.generate`` on a tiny random Llama: fuq's processors and fuq.hf.patch give Hugging Face's tokens."""

from __future__ import annotations

import pytest
import torch

import fuq

transformers = pytest.importorskip("transformers")
L = pytest.importorskip("transformers.generation.logits_process")
P = pytest.importorskip("fuq.processors")
H = pytest.importorskip("fuq.hf")

V = 1000
NEW = 12


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(
        vocab_size=V, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=128, bos_token_id=1, eos_token_id=2, pad_token_id=0,
    )
    m = transformers.LlamaForCausalLM(cfg).eval()
    with torch.no_grad():  # a random head is nearly uniform; sharpen it so truncation has something to cut
        m.lm_head.weight.mul_(60.0)
    return m


@pytest.fixture(scope="module")
def prompt():
    return torch.randint(3, V, (3, 6), generator=torch.Generator().manual_seed(1))


def _gen(model, prompt, seed=0, **kw):
    torch.manual_seed(seed)
    kw.setdefault("max_new_tokens", NEW)
    kw.setdefault("min_new_tokens", NEW)
    with torch.no_grad():
        return model.generate(prompt, attention_mask=torch.ones_like(prompt), **kw)


def _clean(model):
    assert "_get_logits_processor" not in model.__dict__ and "generate" not in model.__dict__


SAMPLING = [
    dict(top_k=50, top_p=0.9, temperature=0.7),
    dict(top_k=20, temperature=1.3, min_p=0.05),
    dict(top_k=0, typical_p=0.9),
    dict(top_k=0, top_p=0.95, epsilon_cutoff=3e-3, eta_cutoff=1e-3),
]


def test_greedy_unchanged_by_patch(model, prompt):
    want = _gen(model, prompt, do_sample=False)
    with H.patch(model):
        got = _gen(model, prompt, do_sample=False)
    _clean(model)
    assert torch.equal(got, want)


@pytest.mark.parametrize("kw", SAMPLING, ids=[str(k) for k in SAMPLING])
def test_patch_samples_the_same_tokens_as_hf(model, prompt, kw):
    want = _gen(model, prompt, seed=3, do_sample=True, **kw)
    with H.patch(model):
        got = _gen(model, prompt, seed=3, do_sample=True, **kw)
    _clean(model)
    assert torch.equal(got, want)


def test_patch_builds_one_fused_processor(model, prompt):
    class Spy(L.LogitsProcessor):
        def __call__(self, input_ids, scores):
            return scores

    with H.patch(model):
        # what the patched model builds
        procs = model._get_logits_processor(
            model._prepare_generation_config(None, do_sample=True, top_p=0.9, temperature=0.7, top_k=50)[0],
            input_ids_seq_length=6, logits_processor=L.LogitsProcessorList([Spy()]), device="cpu",
        )
    kinds = [type(p) for p in procs]
    assert kinds.count(P.FusedLogitsWarper) == 1 and Spy in kinds
    assert not any(t.__module__.startswith("transformers") and t.__name__.endswith("Warper") for t in kinds)
    fused = next(p for p in procs if isinstance(p, P.FusedLogitsWarper))
    assert (fused.temperature, fused.top_k, fused.top_p) == (0.7, 50, 0.9)
    _clean(model)


def test_fuq_processors_in_generate_match_hf_processors(model, prompt):
    """Passing fuq's warpers by hand (HF's own turned off) samples what HF's warpers sample."""
    off = dict(do_sample=True, top_k=0, top_p=1.0, temperature=1.0)
    ours = [P.TemperatureLogitsWarper(0.8), P.TopKLogitsWarper(40), P.TopPLogitsWarper(0.9)]
    theirs = [L.TemperatureLogitsWarper(0.8), L.TopKLogitsWarper(40), L.TopPLogitsWarper(0.9)]
    want = _gen(model, prompt, seed=5, logits_processor=L.LogitsProcessorList(theirs), **off)
    got = _gen(model, prompt, seed=5, logits_processor=L.LogitsProcessorList(ours), **off)
    assert torch.equal(got, want)
    ours = [P.TypicalLogitsWarper(0.9), P.MinPLogitsWarper(0.05)]
    theirs = [L.TypicalLogitsWarper(0.9), L.MinPLogitsWarper(0.05)]
    want = _gen(model, prompt, seed=6, logits_processor=L.LogitsProcessorList(theirs), **off)
    got = _gen(model, prompt, seed=6, logits_processor=L.LogitsProcessorList(ours), **off)
    assert torch.equal(got, want)


@pytest.mark.parametrize("do_sample", [False, True], ids=["greedy", "sample"])
def test_recorder_under_patch_equals_logit_stats_of_the_raw_logits(model, prompt, do_sample):
    rec = P.UncertaintyRecorder(k=4)
    kw = dict(do_sample=do_sample, return_dict_in_generate=True, output_logits=True)
    if do_sample:
        kw.update(top_p=0.9, temperature=0.7)
    with H.patch(model, record=rec):
        out = _gen(model, prompt, seed=7, **kw)
    _clean(model)
    tr = rec.trace()  # finalized by the patched generate
    new = out.sequences[:, prompt.shape[1]:]
    assert torch.equal(tr.token_ids, new) and tr.mask.all()
    for t, logits in enumerate(out.logits):
        want = fuq.logit_stats(logits, k=4, tokens=new[:, t])
        for name in ("lse", "entropy", "varentropy", "max_logprob", "argmax", "topk_logprobs", "topk_ids"):
            torch.testing.assert_close(getattr(tr, name)[:, t], getattr(want, name), msg=name)
        torch.testing.assert_close(tr.token_logprob[:, t], want.token_logprob, atol=2e-5, rtol=1e-5)
    if not do_sample:  # greedy picks the argmax of the raw logits
        assert torch.equal(tr.argmax, new)


def test_recorder_positions_and_eos_mask(model, prompt):
    # "processed": the stats of the distribution sampled from (after temperature + truncation)
    rec = P.UncertaintyRecorder()
    with H.patch(model, record=rec, record_on="processed"):
        _gen(model, prompt, seed=8, do_sample=True, top_k=5, temperature=0.5)
    tr = rec.trace()
    assert tr.meta["recorder"]["recorded_on"] == "processed"
    assert (tr.entropy <= torch.log(torch.tensor(5.0)) + 1e-5).all()  # at most 5 tokens left
    torch.testing.assert_close(tr.token_logprob.exp().sum() > 0, torch.tensor(True))
    # EOS: sequences stop early; the trace masks what follows the first EOS of each row
    rec = P.UncertaintyRecorder()
    with H.patch(model, record=rec):
        greedy = _gen(model, prompt, do_sample=False, max_new_tokens=6, min_new_tokens=6)
        eos = int(greedy[0, prompt.shape[1] + 1])  # row 0 stops after its 2nd token, the others go on
        out = _gen(model, prompt, do_sample=False, max_new_tokens=6, min_new_tokens=0, eos_token_id=eos)
    tr = rec.trace()
    new = out[:, prompt.shape[1]:]
    assert tr.num_tokens == new.shape[1] == 6 and tr.mask[0].sum() == 2 and not tr.mask.all()
    for b in range(new.shape[0]):
        first = tr.mask[b].sum().item()  # tokens up to and including the first EOS
        assert tr.mask[b, :first].all() and not tr.mask[b, first:].any()


def test_patch_restores_the_model_after_an_error(model, prompt):
    before = model.generate
    with pytest.raises(RuntimeError, match="boom"):
        with H.patch(model, record=P.UncertaintyRecorder()):
            assert "generate" in model.__dict__
            raise RuntimeError("boom")
    _clean(model)
    assert model.generate == before
    with pytest.raises(ValueError, match="record_on"):
        with H.patch(model, record_on="later"):
            pass
    rec = P.UncertaintyRecorder()
    with pytest.raises(ValueError, match="num_beams"):
        with H.patch(model, record=rec):
            _gen(model, prompt, num_beams=2, do_sample=False)
    _clean(model)


def test_fused_logits_processor_from_config():
    GC = transformers.GenerationConfig
    assert H.fused_logits_processor(GC(do_sample=False, top_p=0.5)) is None
    assert H.fused_logits_processor(GC(do_sample=True, temperature=1.0, top_k=0, top_p=1.0)) is None
    p = H.fused_logits_processor(GC(do_sample=True, top_k=10, min_p=0.1, typical_p=0.9, epsilon_cutoff=1e-3,
                                    eta_cutoff=2e-3, top_h=0.5), top_n_sigma=2.0)
    want = dict(temperature=1.0, top_h=0.5, top_k=10, min_p=0.1, typical_p=0.9, epsilon=1e-3, eta=2e-3)
    assert p._knobs() == dict(want, top_n_sigma=2.0, min_tokens_to_keep=1)


def test_fuq_sampler_draws_what_fuq_sample_draws(model, prompt):
    """sampler='fuq': each token is fuq.sample's draw on the step's scores, reproducibly; greedy unchanged."""
    kw = dict(do_sample=True, top_k=0, top_p=0.9, temperature=0.7, return_dict_in_generate=True, output_logits=True)
    with H.patch(model, sampler="fuq"):
        out = _gen(model, prompt, seed=11, **kw)
        again = _gen(model, prompt, seed=11, **kw)
        greedy = _gen(model, prompt, do_sample=False)
    _clean(model)
    assert torch.equal(out.sequences, again.sequences)
    assert torch.equal(greedy, _gen(model, prompt, do_sample=False))
    new = out.sequences[:, prompt.shape[1]:]
    torch.manual_seed(11)
    for t, logits in enumerate(out.logits):
        z = logits.clone()
        z[:, model.generation_config.eos_token_id] = float("-inf")  # min_new_tokens masks EOS at every step
        ids, _ = fuq.sample(z, top_p=0.9, temperature=0.7)
        assert torch.equal(ids, new[:, t]), t
    assert len({tuple(r) for r in new.tolist()}) > 1  # it really sampled


def test_fuq_sampler_with_recorder_and_bad_combinations(model, prompt):
    rec = P.UncertaintyRecorder(k=3)
    with H.patch(model, record=rec, sampler="fuq"):
        out = _gen(model, prompt, seed=12, do_sample=True, top_k=50, return_dict_in_generate=True, output_logits=True)
    tr = rec.trace()
    new = out.sequences[:, prompt.shape[1]:]
    assert torch.equal(tr.token_ids, new)
    want = fuq.logit_stats(out.logits[-1], k=3, tokens=new[:, -1])
    torch.testing.assert_close(tr.entropy[:, -1], want.entropy)
    torch.testing.assert_close(tr.token_logprob[:, -1], want.token_logprob, atol=2e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="processed"):
        with H.patch(model, record=rec, record_on="processed", sampler="fuq"):
            pass
    with pytest.raises(ValueError, match="sampler"):
        with H.patch(model, sampler="torch"):
            pass
    with pytest.raises(ValueError, match="num_beams"):
        with H.patch(model, sampler="fuq"):
            _gen(model, prompt, num_beams=2, do_sample=True)
    _clean(model)
