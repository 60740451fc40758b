"""fuq's sequence scores equal lm-polygraph 0.7.0's estimators on a real generation.

lm-polygraph's estimators read a ``stats`` dict (``greedy_log_probs``: the log-softmax rows of
every generated step; ``greedy_log_likelihoods``: log p of each generated token; ``entropy``;
``token_similarity``). The test captures the logits of a ``fuq.generate`` run (a forward hook on
the LM head), builds that dict from them in float64, runs the estimators, and checks fuq's
scores of the same run's Trace to 1e-5. Where the definitions differ, the test says how
(Perplexity there is the mean NLL, with no exp; MaximumTokenProbability drops the last token).

lm-polygraph is installed with ``pip install --no-deps lm-polygraph==0.7.0`` plus the packages
its ``__init__`` imports (see .ci/run, which runs this file in a venv of its own); without it
the module is skipped with the import error as the reason.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import fuq
from fuq import scores

transformers = pytest.importorskip("transformers")
try:
    from lm_polygraph.estimators import (
        FisherRao,
        MaximumSequenceProbability,
        MaximumTokenProbability,
        MeanTokenEntropy,
        Perplexity,
        RenyiNeg,
        SelfCertainty,
        TokenSAR,
    )
    from lm_polygraph.ue_metrics import PredictionRejectionArea
    from lm_polygraph.ue_metrics.ue_metric import get_random_scores, normalize_metric
except Exception as exc:  # noqa: BLE001 - any import failure is the reason to skip
    pytest.skip(f"lm-polygraph 0.7.0 is not importable ({type(exc).__name__}: {exc}); "
                "install: pip install --no-deps lm-polygraph==0.7.0 plus its imports (see .ci/run)",
                allow_module_level=True)

ATOL = 1e-5


def _tiny_llama(V: int = 96, seed: int = 0):
    cfg = transformers.LlamaConfig(
        vocab_size=V, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=256, bos_token_id=1, eos_token_id=2, pad_token_id=0,
        initializer_range=0.3,
    )
    torch.manual_seed(seed)
    return transformers.LlamaForCausalLM(cfg).eval()


def _generate_with_logits(model, ids, mask, **kw):
    """fuq.generate, plus the last-position logits of every main-sequence model call."""
    seen: list[torch.Tensor] = []
    head = model.get_output_embeddings()
    h = head.register_forward_hook(lambda mod, inp, out: seen.append(out[:, -1, :].detach().clone()))
    try:
        tr = fuq.generate(model, ids, attention_mask=mask, extra=True, k=5, **kw)
    finally:
        h.remove()
    return tr, seen


def _polygraph_stats(trace, logits, seed: int = 0):
    """lm-polygraph's stats dict of the trace's real tokens (float64), and the token similarities."""
    rng = np.random.default_rng(seed)
    stats = {"greedy_log_probs": [], "greedy_log_likelihoods": [], "entropy": [], "token_similarity": []}
    for b in range(trace.batch_size):
        rows, lls, ents = [], [], []
        for t in range(trace.num_tokens):
            if not bool(trace.mask[b, t]):
                continue
            lp = torch.log_softmax(logits[t][b].double(), -1).numpy()
            tok = int(trace.token_ids[b, t])
            rows.append(lp)
            lls.append(float(lp[tok]))
            ents.append(float(-(np.exp(lp) * lp).sum()))
        stats["greedy_log_probs"].append(rows)
        stats["greedy_log_likelihoods"].append(lls)
        stats["entropy"].append(ents)
        stats["token_similarity"].append(rng.uniform(0.0, 0.95, size=len(lls)))
    return stats


def _similarity_tensor(trace, sims) -> torch.Tensor:
    out = torch.zeros(trace.mask.shape, dtype=torch.float32)
    for b in range(trace.batch_size):
        out[b][trace.mask[b]] = torch.tensor(sims[b], dtype=torch.float32)
    return out


def _check(trace, logits):
    stats = _polygraph_stats(trace, logits)
    close = dict(atol=ATOL, rtol=1e-6)
    np.testing.assert_allclose(scores.nll(trace).numpy(), MaximumSequenceProbability()(stats), **close)
    # lm-polygraph's Perplexity is the mean NLL (no exp): fuq's perplexity is exp of it.
    np.testing.assert_allclose(torch.log(scores.perplexity(trace)).numpy(), Perplexity()(stats), **close)
    np.testing.assert_allclose(scores.mean_entropy(trace).numpy(), MeanTokenEntropy()(stats), **close)
    np.testing.assert_allclose(scores.self_certainty(trace).numpy(), SelfCertainty()(stats), **close)
    np.testing.assert_allclose(scores.renyi_neg(trace).numpy(), RenyiNeg()(stats), **close)
    np.testing.assert_allclose(scores.fisher_rao(trace).numpy(), FisherRao()(stats), **close)
    sim = _similarity_tensor(trace, stats["token_similarity"])
    np.testing.assert_allclose(scores.token_sar(trace, sim).numpy(), TokenSAR()(stats), **close)
    # MaximumTokenProbability is token level: -log p of every token but the last of each sequence.
    mtp = MaximumTokenProbability()(stats)
    for b in range(trace.batch_size):
        mine = -trace.token_logprob[b][trace.mask[b]].double().numpy()[:-1]
        np.testing.assert_allclose(mine, mtp[b], **close)
    return stats


@pytest.mark.parametrize("strategy", ["greedy", "sample"])
def test_scores_equal_polygraph_estimators(strategy):
    model = _tiny_llama()
    g = torch.Generator().manual_seed(3)
    ids = torch.randint(3, 96, (3, 7), generator=g)
    mask = torch.ones_like(ids)
    mask[1, :3] = 0  # a left-padded row
    kw = {"generator": torch.Generator().manual_seed(5)} if strategy == "sample" else {}
    tr, logits = _generate_with_logits(model, ids, mask, max_new_tokens=12, strategy=strategy, **kw)
    assert len(logits) >= tr.num_tokens and tr.mask.sum() > 10
    stats = _check(tr, logits)
    # the density-free sums really depend on the distribution: the scores differ between rows
    assert np.ptp(SelfCertainty()(stats)) > 1e-4 and np.ptp(FisherRao()(stats)) > 1e-4


def test_eos_ends_a_row_and_scores_still_agree():
    model = _tiny_llama(seed=1)
    # make EOS likely: a large bias on the head row of token 2
    with torch.no_grad():
        model.get_output_embeddings().weight[2] *= 0.0
        model.get_output_embeddings().weight[2] += model.model.norm.weight.detach() * 0.4
    ids = torch.randint(3, 96, (4, 5), generator=torch.Generator().manual_seed(0))
    tr, logits = _generate_with_logits(model, ids, None, max_new_tokens=10, strategy="sample",
                                       generator=torch.Generator().manual_seed(1))
    _check(tr, logits)


def test_prediction_rejection_ratio_equals_polygraph():
    from fuq.eval import prediction_rejection_area, prr

    rng = np.random.default_rng(0)
    for n in (7, 40):
        correct = (rng.uniform(size=n) < 0.6).astype(float)
        ue = rng.normal(size=n) - correct  # somewhat informative
        pra = PredictionRejectionArea()
        assert prediction_rejection_area(ue, correct) == pytest.approx(pra(ue, correct), abs=1e-12)
        oracle = pra(-correct, correct)
        rand = get_random_scores(pra, correct, num_iter=4000)
        want = normalize_metric(pra(ue, correct), oracle, rand)
        # fuq uses the exact expectation of the random area (the mean of the target); lm-polygraph
        # averages 1000 shuffles: equal up to that Monte-Carlo noise
        assert prr(ue, correct) == pytest.approx(want, abs=0.03)
        assert math.isclose(prr(-correct, correct), 1.0)


@pytest.mark.model
def test_smollm2_generation_matches_polygraph():
    try:
        model, tok = fuq.models.load("smollm2")
    except Exception as exc:  # noqa: BLE001
        pytest.skip(f"SmolLM2 not available: {exc}")
    enc = tok(["The capital of France is", "2 + 2 ="], return_tensors="pt", padding=True, padding_side="left")
    tr, logits = _generate_with_logits(model, enc["input_ids"], enc["attention_mask"], max_new_tokens=8)
    _check(tr, logits)
