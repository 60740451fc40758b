"""fuq.forced.teacher_forced and lm_head: stats from the last hidden state equal those of the full logits."""

from __future__ import annotations

import pytest
import torch

import fuq

transformers = pytest.importorskip("transformers")


def _gemma(softcap):
    cfg = transformers.Gemma3TextConfig(
        vocab_size=301,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=1,
        head_dim=8,
        final_logit_softcapping=softcap,
    )
    torch.manual_seed(0)
    return transformers.Gemma3ForCausalLM(cfg).eval()


def _llama():
    cfg = transformers.LlamaConfig(
        vocab_size=257,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        tie_word_embeddings=False,
    )
    torch.manual_seed(0)
    return transformers.LlamaForCausalLM(cfg).eval()


@pytest.mark.parametrize(
    "make", [lambda: _gemma(3.0), lambda: _gemma(None), _llama], ids=["gemma-softcap", "gemma", "llama"]
)
def test_teacher_forced_matches_full_logits(make):
    model = make()
    V = model.config.vocab_size
    ids = torch.randint(0, V, (2, 11), generator=torch.Generator().manual_seed(1))
    assert fuq.forced.lm_head(model) is not None
    stats, cache = fuq.forced.teacher_forced(model, ids, k=4)
    assert cache is None and stats.entropy.shape == (2, 10) and stats.topk_ids.shape == (2, 10, 4)
    with torch.no_grad():
        want = fuq.logit_stats(model(ids).logits[:, :-1], k=4, tokens=ids[:, 1:])
    for name in ("lse", "entropy", "varentropy", "token_logprob", "topk_logprobs"):
        torch.testing.assert_close(getattr(stats, name), getattr(want, name), atol=2e-5, rtol=1e-5)
    assert torch.equal(stats.topk_ids, want.topk_ids)


def test_teacher_forced_continues_a_cache():
    model = _gemma(3.0)
    ids = torch.randint(0, 301, (1, 12), generator=torch.Generator().manual_seed(2))
    full, _ = fuq.forced.teacher_forced(model, ids)
    a, cache = fuq.forced.teacher_forced(model, ids[:, :6], targets=ids[:, 1:7], use_cache=True)
    b, _ = fuq.forced.teacher_forced(model, ids[:, 6:11], targets=ids[:, 7:12], past_key_values=cache, use_cache=True)
    torch.testing.assert_close(torch.cat([a.token_logprob, b.token_logprob], 1), full.token_logprob, atol=2e-5, rtol=0)


def test_teacher_forced_bad_input():
    model = _llama()
    with pytest.raises(ValueError, match="input_ids"):
        fuq.forced.teacher_forced(model, torch.zeros(5, dtype=torch.long))
    with pytest.raises(ValueError, match="at least 2"):
        fuq.forced.teacher_forced(model, torch.zeros(1, 1, dtype=torch.long))
    with pytest.raises(ValueError, match="targets"):
        fuq.forced.teacher_forced(
            model, torch.zeros(1, 3, dtype=torch.long), targets=torch.zeros(1, 2, dtype=torch.long)
        )


def test_lm_head_none_without_the_usual_structure():
    assert fuq.forced.lm_head(torch.nn.Linear(3, 4)) is None
