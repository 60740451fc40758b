"""fuq.generate on tiny randomly initialised models (no downloads): every strategy, batch > 1
with left padding, EOS, stop strings, the hook, greedy equality with Hugging Face generate,
and AdaDec's lookahead on a copy of the KV cache."""

from __future__ import annotations

import pytest
import torch

import fuq
from fuq import reference
from fuq.generate import AdaDec, DecodeState, EntropyGated, Greedy, Sample, TopH, make_strategy

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py

transformers = pytest.importorskip("transformers")

V = 128
EOS = 2
PAD = 0


def tiny_llama(seed: int = 0):
    cfg = transformers.LlamaConfig(
        vocab_size=V, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=256, bos_token_id=1, eos_token_id=EOS, pad_token_id=PAD,
        initializer_range=0.2,
    )
    torch.manual_seed(seed)
    return transformers.LlamaForCausalLM(cfg).eval()


def tiny_gemma3(seed: int = 0):
    """Gemma 3 layout with a 4-token sliding window on layer 0 (exercises sliding cache layers)."""
    cfg = transformers.Gemma3TextConfig(
        vocab_size=V, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
        num_key_value_heads=1, head_dim=16, sliding_window=4, layer_types=["sliding_attention", "full_attention"],
        max_position_embeddings=256, bos_token_id=1, eos_token_id=EOS, pad_token_id=PAD, initializer_range=0.2,
    )
    torch.manual_seed(seed)
    return transformers.Gemma3ForCausalLM(cfg).eval()


class CharTok:
    """A character-level tokenizer over ASCII: id = ord(c); 0 pad, 1 bos, 2 eos."""

    pad_token_id, bos_token_id, eos_token_id = PAD, 1, EOS
    eos_token = "<eos>"
    _special = ("<pad>", "<bos>", "<eos>")

    def __call__(self, text, add_special_tokens=True):
        ids = [ord(c) for c in text]
        assert all(3 <= i < V for i in ids), text
        return {"input_ids": ([1] if add_special_tokens else []) + ids}

    def decode(self, ids, skip_special_tokens=False):
        ids = ids.tolist() if isinstance(ids, torch.Tensor) else ids
        out = []
        for i in ids:
            if i < 3:
                out.append("" if skip_special_tokens else self._special[i])
            else:
                out.append(chr(i))
        return "".join(out)

    def apply_chat_template(self, messages, tokenize=False, add_generation_prompt=True):
        assert not tokenize and add_generation_prompt
        return "".join(f"U:{m['content']}\n" for m in messages) + "A:"


@pytest.fixture(scope="module")
def llama():
    return tiny_llama()


@pytest.fixture(scope="module")
def gemma():
    return tiny_gemma3()


def left_padded(B: int, T: int = 7, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, V, (B, T), generator=g)
    mask = torch.ones_like(ids)
    for b in range(B):
        mask[b, : b % 3 * 2] = 0  # rows with 0, 2, 4 pads
    ids[mask == 0] = PAD
    return ids, mask


def hf_greedy(model, ids, mask, n, eos=EOS):
    out = model.generate(
        ids, attention_mask=mask, do_sample=False, max_new_tokens=n, pad_token_id=PAD, eos_token_id=eos,
    )
    return out[:, ids.shape[1]:]


def check_against_full_forward(model, ids, mask, trace, temperature_free=True):
    """Each row's prompt + real generated tokens through the model without a cache: the trace's
    token_logprob, entropy and max_logprob must match the logits at those positions."""
    for b in range(ids.shape[0]):
        prompt = ids[b][mask[b].bool()]
        gen = trace.token_ids[b][trace.mask[b]]
        seq = torch.cat([prompt, gen])[None]
        with torch.no_grad():
            logits = model(input_ids=seq).logits[0, prompt.numel() - 1 : -1]
        want = reference.logit_stats(logits, 0, gen, 1.0)
        n = gen.numel()
        torch.testing.assert_close(trace.token_logprob[b, :n], want[8], atol=2e-4, rtol=1e-4)
        torch.testing.assert_close(trace.entropy[b, :n], want[1], atol=2e-4, rtol=1e-4)
        torch.testing.assert_close(trace.max_logprob[b, :n], want[3], atol=2e-4, rtol=1e-4)


# ---------------------------------------------------------------------------------- greedy


@pytest.mark.parametrize("B", [1, 4])
@pytest.mark.parametrize("arch", ["llama", "gemma3"])
def test_greedy_equals_hf_generate(request, arch, B):
    model = request.getfixturevalue("llama" if arch == "llama" else "gemma")
    ids, mask = left_padded(B)
    n = 20
    tr = fuq.generate(model, ids, attention_mask=mask, max_new_tokens=n, eos_token_id=[])
    want = hf_greedy(model, ids, mask, n, eos=None)
    assert torch.equal(tr.token_ids, want)
    assert tr.mask.all()
    check_against_full_forward(model, ids, mask, tr)


def test_greedy_no_padding_equals_hf(llama):
    ids = torch.randint(3, V, (2, 5), generator=torch.Generator().manual_seed(3))
    tr = fuq.generate(llama, ids, max_new_tokens=16, eos_token_id=[])
    assert torch.equal(tr.token_ids, hf_greedy(llama, ids, torch.ones_like(ids), 16, eos=None))


def test_greedy_stats_match_hf_logits(llama):
    ids, mask = left_padded(3)
    n = 8
    tr = fuq.generate(llama, ids, attention_mask=mask, max_new_tokens=n, k=5, eos_token_id=[])
    out = llama.generate(ids, attention_mask=mask, do_sample=False, max_new_tokens=n, pad_token_id=PAD,
                         eos_token_id=None, output_logits=True, return_dict_in_generate=True)
    for t, logits in enumerate(out.logits):
        want = fuq.LogitStats(*reference.logit_stats(logits, 5, tr.token_ids[:, t], 1.0))
        torch.testing.assert_close(tr.entropy[:, t], want.entropy, atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(tr.lse[:, t], want.lse, atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(tr.token_logprob[:, t], want.token_logprob, atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(tr.topk_logprobs[:, t], want.topk_logprobs, atol=1e-4, rtol=1e-4)
        assert torch.equal(tr.topk_ids[:, t], want.topk_ids)
    assert tr.topk_ids.shape == (3, n, 5)
    torch.testing.assert_close(tr.token_logprob, tr.max_logprob)


@pytest.mark.parametrize("B", [1, 3])
def test_eos_ends_rows_like_hf(llama, B):
    ids, mask = left_padded(B, seed=5)
    free = fuq.generate(llama, ids, attention_mask=mask, max_new_tokens=12, eos_token_id=[])
    eos = int(free.token_ids[0, 4])  # a token row 0 emits at step 4 becomes the EOS
    tr = fuq.generate(llama, ids, attention_mask=mask, max_new_tokens=12, eos_token_id=eos)
    want = hf_greedy(llama, ids, mask, 12, eos=eos)
    assert torch.equal(tr.token_ids, want)  # HF pads finished rows with pad_token_id too
    for b in range(B):
        row = tr.token_ids[b].tolist()
        if eos in row:
            j = row.index(eos)
            assert tr.mask[b, : j + 1].all() and not tr.mask[b, j + 1 :].any()
            assert (tr.token_ids[b, j + 1 :] == PAD).all()
        else:
            assert tr.mask[b].all()
    j0 = tr.token_ids[0].tolist().index(eos)
    assert j0 <= 4
    if B == 1:
        assert tr.num_tokens == j0 + 1  # stops as soon as every row has ended
        assert tr.meta["model_calls"] == j0 + 1


def test_default_eos_comes_from_generation_config(llama):
    ids, mask = left_padded(1)
    tr = fuq.generate(llama, ids, attention_mask=mask, max_new_tokens=4)
    assert tr.meta["eos_token_id"] == [EOS]


# ---------------------------------------------------------------------------------- counting calls


class CallLog:
    """Forward pre-hook on the model: (rows, tokens) of every call."""

    def __init__(self, model):
        self.calls = []
        self.handle = model.register_forward_pre_hook(self, with_kwargs=True)

    def __call__(self, module, args, kwargs):
        x = kwargs.get("input_ids", args[0] if args else None)
        self.calls.append(tuple(x.shape))

    def close(self):
        self.handle.remove()


def test_one_prefill_then_one_token_per_step(llama):
    ids, mask = left_padded(3)
    log = CallLog(llama)
    try:
        tr = fuq.generate(llama, ids, attention_mask=mask, max_new_tokens=10, eos_token_id=[])
    finally:
        log.close()
    assert log.calls == [(3, 7)] + [(3, 1)] * 9
    assert tr.meta["model_calls"] == 10
    assert tr.meta["model_tokens"] == 3 * 7 + 3 * 9
    assert tr.meta["new_tokens"] == 30
    assert tr.meta["tokens_per_s"] > 0 and tr.meta["wall_s"] > 0


# ---------------------------------------------------------------------------------- tokenizer, stop, hook


def test_tokenizer_prompts_text_and_pieces(llama):
    tok = CharTok()
    prompts = ["Hello", "a much longer prompt"]
    tr = fuq.generate(llama, tok, prompts, max_new_tokens=10, eos_token_id=[])
    assert tr.prompt == prompts
    # same as the ids path with manual left padding (BOS added)
    rows = [tok(p)["input_ids"] for p in prompts]
    T = max(map(len, rows))
    ids = torch.tensor([[PAD] * (T - len(r)) + r for r in rows])
    mask = (torch.arange(T)[None] >= torch.tensor([T - len(r) for r in rows])[:, None]).long()
    ref = fuq.generate(llama, ids, attention_mask=mask, max_new_tokens=10, eos_token_id=[])
    assert torch.equal(tr.token_ids, ref.token_ids)
    for b in range(2):
        assert tr.text[b] == tok.decode(tr.token_ids[b].tolist(), skip_special_tokens=True)
        assert "".join(tr.tokens[b]) == tok.decode(tr.token_ids[b].tolist())
        assert len(tr.tokens[b]) == tr.num_tokens
    d = tr.to_dict()
    assert d["meta"]["strategy"] == "greedy" and len(d["sequences"]) == 2


def test_chat_template(llama):
    tok = CharTok()
    tr = fuq.generate(llama, tok, "hi", max_new_tokens=3, chat=True, eos_token_id=[])
    ids = torch.tensor([tok("U:hi\nA:", add_special_tokens=False)["input_ids"]])
    assert torch.equal(tr.token_ids, fuq.generate(llama, ids, max_new_tokens=3, eos_token_id=[]).token_ids)
    base = CharTok()
    base.chat_template = None
    with pytest.raises(ValueError, match="no chat template"):
        fuq.generate(llama, base, "hi", max_new_tokens=3, chat=True)


def test_stop_strings(llama):
    tok = CharTok()
    prompts = ["The cat", "Once upon"]
    free = fuq.generate(llama, tok, prompts, max_new_tokens=24, eos_token_id=[])
    full = free.text[0]
    stop = full[6:8]
    cut = full.index(stop) + len(stop)
    tr = fuq.generate(llama, tok, prompts, max_new_tokens=24, eos_token_id=[], stop=[stop, "\x7f\x7f\x7f"])
    assert tr.text[0] == full[:cut]  # the stop string is kept, as Hugging Face does
    assert int(tr.mask[0].sum()) == cut
    other = free.text[1]
    want1 = other[: other.index(stop) + len(stop)] if stop in other else other
    assert tr.text[1] == want1
    assert torch.equal(tr.token_ids[:, : tr.num_tokens][tr.mask], free.token_ids[:, : tr.num_tokens][tr.mask])


def test_hook_sees_every_step_and_can_stop(llama):
    ids, mask = left_padded(2)
    seen = []

    def hook(step, stats, tokens):
        seen.append((step, stats.entropy.shape, stats.topk_ids.shape, tokens.clone()))
        return step == 3

    tr = fuq.generate(llama, ids, attention_mask=mask, max_new_tokens=10, hook=hook, k=4, eos_token_id=[])
    assert [s[0] for s in seen] == [0, 1, 2, 3]
    assert all(s[1] == (2,) and s[2] == (2, 4) for s in seen)
    assert torch.equal(torch.stack([s[3] for s in seen], 1), tr.token_ids)
    assert tr.num_tokens == 4


# ---------------------------------------------------------------------------------- sampling strategies


def test_sample_is_reproducible_and_recorded_right(llama):
    ids, mask = left_padded(3)
    kw = dict(attention_mask=mask, max_new_tokens=12, eos_token_id=[], strategy="sample", top_k=20)
    a = fuq.generate(llama, ids, generator=torch.Generator().manual_seed(0), **kw)
    b = fuq.generate(llama, ids, generator=torch.Generator().manual_seed(0), **kw)
    c = fuq.generate(llama, ids, generator=torch.Generator().manual_seed(1), **kw)
    assert torch.equal(a.token_ids, b.token_ids)
    assert not torch.equal(a.token_ids, c.token_ids)
    assert a.meta["strategy"] == "sample" and a.meta["strategy_args"]["top_k"] == 20
    check_against_full_forward(llama, ids, mask, a)


def test_sample_respects_top_k(llama):
    ids, mask = left_padded(2)
    tr = fuq.generate(llama, ids, attention_mask=mask, max_new_tokens=10, eos_token_id=[], strategy="sample",
                      top_k=3, k=3, generator=torch.Generator().manual_seed(0))
    assert (tr.topk_ids == tr.token_ids[..., None]).any(-1).all()


def test_sample_temperature_records_the_models_distribution(llama):
    ids, mask = left_padded(2)
    tr = fuq.generate(llama, ids, attention_mask=mask, max_new_tokens=8, eos_token_id=[], strategy="sample",
                      temperature=0.7, generator=torch.Generator().manual_seed(0))
    check_against_full_forward(llama, ids, mask, tr)


def test_top_h(llama):
    ids, mask = left_padded(2)
    tr = fuq.generate(llama, ids, attention_mask=mask, max_new_tokens=8, eos_token_id=[], strategy="top-h",
                      alpha=0.3, generator=torch.Generator().manual_seed(0))
    assert tr.meta["strategy"] == "top-h" and tr.meta["strategy_args"]["top_h"] == 0.3
    check_against_full_forward(llama, ids, mask, tr)
    # the same draws as "sample" with top_h
    same = fuq.generate(llama, ids, attention_mask=mask, max_new_tokens=8, eos_token_id=[], strategy="sample",
                        top_h=0.3, generator=torch.Generator().manual_seed(0))
    assert torch.equal(tr.token_ids, same.token_ids)


def test_entropy_gated_extremes(llama):
    ids, mask = left_padded(3)
    kw = dict(attention_mask=mask, max_new_tokens=10, eos_token_id=[])
    greedy = fuq.generate(llama, ids, **kw)
    never = fuq.generate(llama, ids, strategy="entropy-gated", tau=1e9, **kw)
    assert torch.equal(never.token_ids, greedy.token_ids)
    assert never.meta["strategy_report"]["sampled_steps"] == 0
    always = fuq.generate(llama, ids, strategy="entropy-gated", tau=0.0, top_k=10,
                          generator=torch.Generator().manual_seed(0), **kw)
    sample = fuq.generate(llama, ids, strategy="sample", top_k=10, generator=torch.Generator().manual_seed(0), **kw)
    assert torch.equal(always.token_ids, sample.token_ids)
    assert always.meta["strategy_report"]["sampled_steps"] == 30
    check_against_full_forward(llama, ids, mask, always)


def test_entropy_gated_mixes_per_row(llama):
    ids, mask = left_padded(4)
    kw = dict(attention_mask=mask, max_new_tokens=12, eos_token_id=[])
    greedy = fuq.generate(llama, ids, **kw)
    tau = float(greedy.entropy.median())
    tr = fuq.generate(llama, ids, strategy="entropy-gated", tau=tau, generator=torch.Generator().manual_seed(0), **kw)
    check_against_full_forward(llama, ids, mask, tr)
    # wherever the step entropy was below tau, the argmax was taken
    low = tr.entropy < tau
    assert torch.equal(tr.token_ids[low], tr.argmax[low])
    assert 0 < tr.meta["strategy_report"]["sampled_steps"] < 48


def test_entropy_gated_quadrants():
    s = EntropyGated(tau=1.0, varentropy_tau=2.0, quadrants={"HH": 0.0})
    stats = fuq.logit_stats(torch.zeros(4, 8))  # placeholders, fields replaced below
    stats = stats._replace(entropy=torch.tensor([0.5, 0.5, 1.5, 1.5]), varentropy=torch.tensor([1.0, 3.0, 1.0, 3.0]))
    assert s.temperatures(stats).tolist() == [0.0, 1.0, 1.0, 0.0]
    with pytest.raises(ValueError, match="quadrants keys"):
        EntropyGated(tau=1.0, varentropy_tau=1.0, quadrants={"XX": 1.0})
    with pytest.raises(ValueError, match="needs varentropy_tau"):
        EntropyGated(tau=1.0, quadrants={"LL": 1.0})


def test_entropy_gated_quadrant_greedy_everywhere_is_greedy(llama):
    ids, mask = left_padded(2)
    kw = dict(attention_mask=mask, max_new_tokens=8, eos_token_id=[])
    q = {"LL": 0.0, "LH": 0.0, "HL": 0.0, "HH": 0.0}
    tr = fuq.generate(llama, ids, strategy="entropy-gated", tau=0.5, varentropy_tau=0.5, quadrants=q, **kw)
    assert torch.equal(tr.token_ids, fuq.generate(llama, ids, **kw).token_ids)


# ---------------------------------------------------------------------------------- AdaDec


def test_adadec_above_every_entropy_is_greedy(llama):
    ids, mask = left_padded(2)
    kw = dict(attention_mask=mask, max_new_tokens=10, eos_token_id=[])
    tr = fuq.generate(llama, ids, strategy="adadec", tau=1e9, **kw)
    assert torch.equal(tr.token_ids, fuq.generate(llama, ids, **kw).token_ids)
    assert tr.meta["model_calls"] == 10 and tr.meta["strategy_report"]["triggered"] == 0


@pytest.mark.parametrize("arch", ["llama", "gemma3"])
def test_adadec_lookahead_reuses_the_cache(request, arch):
    """tau = 0: every step pauses; each rollout call feeds 1 token per candidate, never the prefix."""
    model = request.getfixturevalue("llama" if arch == "llama" else "gemma")
    ids, mask = left_padded(3)
    B, T, n, beam, L = 3, ids.shape[1], 6, 3, 5
    log = CallLog(model)
    try:
        tr = fuq.generate(model, ids, attention_mask=mask, max_new_tokens=n, eos_token_id=[], strategy="adadec",
                          tau=0.0, beam=beam, lookahead=L)
    finally:
        log.close()
    want = [(B, T)]
    for step in range(n):
        want += [(B * beam, 1)] * L
        if step < n - 1:
            want.append((B, 1))
    assert log.calls == want
    assert tr.meta["model_calls"] == len(want)
    assert tr.meta["model_tokens"] == B * T + n * L * B * beam + (n - 1) * B
    rep = tr.meta["strategy_report"]
    assert rep["triggered"] == B * n and rep["rollout_calls"] == n * L
    check_against_full_forward(model, ids, mask, tr)


def brute_force_adadec_step(model, prompt, beam, L):
    """AdaDec's choice at the first step, by full forwards without any cache."""
    with torch.no_grad():
        logp = torch.log_softmax(model(input_ids=prompt[None]).logits[0, -1].float(), -1)
        cands = torch.topk(logp, beam).indices
        scores = []
        for c in cands.tolist():
            seq, lps = torch.cat([prompt, torch.tensor([c])]), [float(logp[c])]
            for _ in range(L):
                lp = torch.log_softmax(model(input_ids=seq[None]).logits[0, -1].float(), -1)
                nxt = int(lp.argmax())
                lps.append(float(lp[nxt]))
                seq = torch.cat([seq, torch.tensor([nxt])])
            scores.append(sum(lps) / len(lps))
    return int(cands[int(torch.tensor(scores).argmax())]), scores


@pytest.mark.parametrize("seed", range(4))
def test_adadec_choice_matches_brute_force(llama, seed):
    ids, mask = left_padded(3, seed=seed)
    tr = fuq.generate(llama, ids, attention_mask=mask, max_new_tokens=1, eos_token_id=[], strategy="adadec",
                      tau=0.0, beam=3, lookahead=4)
    for b in range(3):
        want, _ = brute_force_adadec_step(llama, ids[b][mask[b].bool()], 3, 4)
        assert int(tr.token_ids[b, 0]) == want
        with torch.no_grad():
            lp = torch.log_softmax(llama(input_ids=ids[b][mask[b].bool()][None]).logits[0, -1].float(), -1)
        torch.testing.assert_close(tr.token_logprob[b, 0], lp[want], atol=2e-4, rtol=1e-4)


def test_adadec_changes_some_tokens(llama):
    ids, mask = left_padded(4)
    tr = fuq.generate(llama, ids, attention_mask=mask, max_new_tokens=10, eos_token_id=[], strategy="adadec", tau=0.0)
    assert tr.meta["strategy_report"]["changed"] > 0
    assert (tr.token_ids != tr.argmax).any()


def test_skinny_head_is_the_linear_and_restores_it(llama):
    """The rollouts' output projection: W @ x.T equals F.linear up to rounding; the module is restored."""
    from fuq.generate import _SkinnyHead

    head = llama.get_output_embeddings()
    assert type(head) is torch.nn.Linear and head.bias is None  # the route under test is taken
    x = torch.randn(2, 3, head.in_features, generator=torch.Generator().manual_seed(0))
    want = torch.nn.functional.linear(x, head.weight)
    with _SkinnyHead(llama, 6) as sk:
        assert sk.head is head and "forward" in vars(head)
        got = head(x)
    assert "forward" not in vars(head)
    assert got.shape == want.shape and got.is_contiguous()
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    with _SkinnyHead(llama, 1) as sk:  # one row: F.linear is already one pass over W
        assert sk.head is None and "forward" not in vars(head)
    with pytest.raises(RuntimeError, match="boom"), _SkinnyHead(llama, 3):
        raise RuntimeError("boom")
    assert "forward" not in vars(head)  # restored on an error too


@pytest.mark.parametrize("arch", ["llama", "gemma3"])
def test_adadec_tokens_do_not_depend_on_the_skinny_head(request, arch, monkeypatch):
    """Same prompts, tau = 0 (every step rolls out): the same tokens and scores with F.linear as the head."""
    import sys

    G = sys.modules["fuq.generate"]
    model = request.getfixturevalue("llama" if arch == "llama" else "gemma")
    ids, mask = left_padded(4, seed=3)
    kw = dict(attention_mask=mask, max_new_tokens=8, eos_token_id=[], strategy="adadec", tau=0.0)
    used = []

    class Counting(G._SkinnyHead):
        def __enter__(self):
            used.append(self.head is not None)
            return super().__enter__()

    monkeypatch.setattr(G, "_SkinnyHead", Counting)
    fast = fuq.generate(model, ids, **kw)
    assert used and all(used)  # every rollout took the one-pass head

    class Plain(G._SkinnyHead):
        def __init__(self, model, rows):
            super().__init__(model, 1)

    monkeypatch.setattr(G, "_SkinnyHead", Plain)
    plain = fuq.generate(model, ids, **kw)
    assert torch.equal(fast.token_ids, plain.token_ids)
    assert fast.meta["strategy_report"] == plain.meta["strategy_report"]
    torch.testing.assert_close(fast.token_logprob, plain.token_logprob)


class RolloutThenGreedy(Greedy):
    """Runs a rollout every step and ignores it: the original cache must be untouched."""

    def choose(self, logits, state: DecodeState):
        rows = torch.arange(logits.shape[0])
        state.rollout(rows, torch.topk(logits, 2).indices, 3)
        return super().choose(logits, state)


@pytest.mark.parametrize("arch", ["llama", "gemma3"])
def test_rollout_leaves_the_cache_alone(request, arch):
    model = request.getfixturevalue("llama" if arch == "llama" else "gemma")
    ids, mask = left_padded(3)
    kw = dict(attention_mask=mask, max_new_tokens=10, eos_token_id=[])
    assert torch.equal(fuq.generate(model, ids, strategy=RolloutThenGreedy(), **kw).token_ids,
                       fuq.generate(model, ids, **kw).token_ids)


def test_adadec_rollout_stops_counting_after_eos(llama):
    ids, mask = left_padded(1)
    st = DecodeState(llama, 0, None, torch.tensor([EOS]), torch.device("cpu"))
    st.finished = torch.zeros(1, dtype=torch.bool)
    _, st.cache = st.forward(ids, None, torch.arange(ids.shape[1])[None], None)
    st.next_pos = torch.tensor([ids.shape[1]])
    lp, alive = st.rollout(torch.tensor([0]), torch.tensor([[EOS, 5]]), 3)
    assert lp.shape == (1, 2, 3)
    assert not alive[0, 0].any() and alive[0, 1, 0]


# ---------------------------------------------------------------------------------- errors and names


def test_make_strategy_names_and_errors():
    assert isinstance(make_strategy("greedy"), Greedy)
    assert isinstance(make_strategy("sample", top_p=0.9), Sample)
    assert isinstance(make_strategy("top_h"), TopH)
    assert isinstance(make_strategy("entropy-gated", tau=2.0), EntropyGated)
    assert isinstance(make_strategy("AdaDec", tau=1.0), AdaDec)
    with pytest.raises(ValueError, match="strategy must be one of"):
        make_strategy("beam")
    with pytest.raises(TypeError, match="unknown argument"):
        make_strategy("sample", top_q=0.9)
    with pytest.raises(TypeError, match="takes no arguments"):
        make_strategy("greedy", tau=1.0)
    with pytest.raises(ValueError, match="tau"):
        make_strategy("adadec", tau=-1.0)
    with pytest.raises(ValueError, match="beam"):
        make_strategy("adadec", beam=0)
    with pytest.raises(ValueError, match="alpha"):
        make_strategy("top-h", alpha=1.5)


def test_generate_argument_errors(llama):
    ids, mask = left_padded(2)
    with pytest.raises(ValueError, match="max_new_tokens"):
        fuq.generate(llama, ids, max_new_tokens=0)
    with pytest.raises(ValueError, match="k must be"):
        fuq.generate(llama, ids, k=-1)
    with pytest.raises(ValueError, match="left-padded"):
        fuq.generate(llama, ids, attention_mask=mask.flip(1))
    with pytest.raises(ValueError, match="shape"):
        fuq.generate(llama, ids, attention_mask=mask[:, 1:])
    with pytest.raises(ValueError, match="stop strings need a tokenizer"):
        fuq.generate(llama, ids, stop="x")
    with pytest.raises(ValueError, match=r"\[B, T\]"):
        fuq.generate(llama, ids[0])
    with pytest.raises(ValueError, match="prompts is required"):
        fuq.generate(llama, CharTok())
    with pytest.raises(TypeError, match="eos_token_id"):
        fuq.generate(llama, ids, eos_token_id="x")


@pytest.mark.subprocess
def test_import_fuq_does_not_import_transformers():
    import subprocess
    import sys

    code = "import sys, fuq; fuq.generate; fuq.models; fuq.adaptive; print('transformers' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"


def _sums64(z: torch.Tensor, alpha: float = 0.5, tau: float = 2.0):
    z = z.double()
    lp = torch.log_softmax(z, -1)
    q = torch.softmax(z / tau, -1)
    return lp.sum(-1), (q**alpha).sum(-1), q.sqrt().sum(-1)


def test_density_free_sums_against_float64():
    """fuq.trace.density_free_sums (the fused logit_stats pass) against float64 maths: the
    defaults (one pass, alpha = 1/4 at T = 1) and another setting (two passes); a masked row
    gives Σ log p = -inf, a NaN row NaN."""
    from fuq.trace import density_free_sums

    g = torch.Generator().manual_seed(3)
    z = torch.randn(4, 5003, generator=g) * 4
    z[1, :100] = float("-inf")
    z[2, 7] = float("nan")
    for alpha, tau in ((0.5, 2.0), (2.0, 1.5), (0.3, 1.0)):
        got = density_free_sums(z, alpha=alpha, temperature=tau)
        want = _sums64(z, alpha, tau)
        for a, b in zip(got, want, strict=True):
            assert a.dtype == torch.float64
            ok = [0, 3]
            torch.testing.assert_close(a[ok], b[ok], rtol=2e-6, atol=1e-4)
            assert torch.isnan(a[2])
        assert got[0][1].item() == float("-inf")
        torch.testing.assert_close(got[1][1], want[1][1], rtol=2e-6, atol=0)


@pytest.mark.parametrize("strategy", ["greedy", "adadec", "entropy-gated", "sample"])
def test_generate_extra_sums_match_step_logits(llama, strategy, monkeypatch):
    """generate(extra=True) records the vocabulary sums of each step's logits (from the
    strategy's own logit_stats pass for greedy / adadec / entropy-gated, else a fused pass)."""
    import importlib

    gen = importlib.import_module("fuq.generate")

    if strategy != "sample":  # no second pass: the sums come from the strategy's stats

        def no_second_pass(*a, **k):
            raise AssertionError("density_free_sums called: the strategy's stats had no sums")

        monkeypatch.setattr(gen, "density_free_sums", no_second_pass)
    ids = torch.tensor([[1, 72, 105, 33], [1, 65, 66, 67]])
    kw = {"generator": torch.Generator().manual_seed(0)} if strategy in ("sample", "entropy-gated") else {}
    tr = fuq.generate(llama, ids, max_new_tokens=4, strategy=strategy, extra=True, **kw)
    # teacher-force the chosen tokens to get each step's logits
    full = torch.cat([ids, tr.token_ids], dim=1)
    with torch.no_grad():
        z = llama(full).logits[:, ids.shape[1] - 1 : -1]
    want = _sums64(z)
    for name, w in zip(("vocab_logprob_sum", "power_sum", "sqrt_sum"), want, strict=True):
        got = getattr(tr, name)
        m = tr.mask
        torch.testing.assert_close(got[m], w[m], rtol=1e-5, atol=1e-3)
