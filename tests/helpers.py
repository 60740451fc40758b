"""Input generators and the one place where tolerances are chosen."""

from __future__ import annotations

import importlib.util
import os

import torch

import fuq
from fuq import _library

DTYPES = (torch.float32, torch.bfloat16, torch.float16)

HAS_TRITON = importlib.util.find_spec("triton") is not None
TRITON_RUNS = HAS_TRITON and (torch.cuda.is_available() or os.environ.get("TRITON_INTERPRET") == "1")


def make_logits(B: int, V: int, dtype=torch.float32, kind: str = "normal", seed: int = 0, device="cpu"):
    """Logits of a given shape: normal, peaked, flat, masked (random -inf), llm (heavy head)."""
    g = torch.Generator().manual_seed(seed * 1000 + V)
    x = torch.randn(B, V, generator=g)
    if kind == "normal":
        x = x * 2.0
    elif kind == "peaked":
        x = x * 0.5
        x[:, torch.randint(0, V, (1,), generator=g)] += 25.0
    elif kind == "flat":
        x = x * 1e-3
    elif kind == "masked":
        x = x * 3.0
        mask = torch.rand(B, V, generator=g) < 0.3
        mask[:, 0] = False  # keep at least one live token per row
        x[mask] = float("-inf")
    elif kind == "llm":
        x = x * 1.5 - 5.0
        head = torch.randint(0, V, (B, min(V, 20)), generator=g)
        x.scatter_(1, head, 10.0 + 4.0 * torch.rand(B, min(V, 20), generator=g))
    else:
        raise ValueError(kind)
    return x.to(dtype).to(device)


def tol(dtype, V: int) -> dict:
    """Tolerances of a kernel against the reference on the same input.

    Both read the same (possibly low-precision) values and accumulate in float32,
    so differences come only from summation order: they grow with log V, not with
    the input dtype.
    """
    return dict(atol=2e-4 + 2e-5 * max(1.0, V**0.5) / 16, rtol=1e-4)


def assert_stats_close(got: fuq.LogitStats, want, V: int, dtype, check_ids: bool = True):
    """``want`` is the reference tuple or a LogitStats; NaN positions must agree."""
    want = fuq.LogitStats(*want) if not isinstance(want, fuq.LogitStats) else want
    t = tol(dtype, V)
    for name in ("lse", "entropy", "max_logprob", "topk_logprobs", "topk_mass", "token_logprob"):
        a, b = getattr(got, name), getattr(want, name)
        if a is None or b is None:
            assert a is None and b is None or name == "token_logprob", name
            continue
        torch.testing.assert_close(a.cpu(), b.cpu(), equal_nan=True, msg=lambda m, n=name: f"{n}: {m}", **t)
    # varentropy is a difference of second moments: looser.
    torch.testing.assert_close(
        got.varentropy.cpu(), want.varentropy.cpu(), atol=2e-3, rtol=2e-3, equal_nan=True,
        msg=lambda m: f"varentropy: {m}",
    )
    if check_ids:
        live = torch.isfinite(want.lse.cpu())
        assert torch.equal(got.argmax.cpu()[live], want.argmax.cpu()[live]), "argmax"
        assert torch.equal(got.topk_ids.cpu()[live], want.topk_ids.cpu()[live]), "topk_ids"
    assert got.argmax.dtype == torch.int64 and got.topk_ids.dtype == torch.int64


def backends():
    """The backends that can run on this machine, as pytest params."""
    import pytest

    out = [pytest.param("reference", id="reference"), pytest.param("cpp", id="cpp")]
    out.append(
        pytest.param(
            "triton",
            id="triton",
            marks=[pytest.mark.triton_interp, pytest.mark.skipif(not TRITON_RUNS, reason="triton not installed")],
        )
    )
    if torch.cuda.is_available():
        out.append(pytest.param("cuda", id="cuda", marks=[pytest.mark.gpu,
                   pytest.mark.skipif(not _library.HAS_CUDA_CPP, reason="fuq._C_cuda not built")]))
    return out


_TINY_CORPUS = [
    "The cat sat on the mat.",
    "Entropy measures how unsure a model is about the next token.",
    "A small model, a short test, and a quick answer.",
    "def f(x):\n    return x * 2\n",
    "Café, naïve, ünïcödé: bytes and letters.",
]


def tiny_lm_folder(path, seed: int = 0, vocab_size: int = 320) -> str:
    """Save a randomly initialised tiny Llama + a byte-level BPE tokenizer to ``path``; no download.

    Returns the folder as a str, loadable with ``AutoModelForCausalLM`` / ``AutoTokenizer``
    (and so with ``fuq.models.load(path)``).
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<s>", "</s>", "<pad>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_TINY_CORPUS, trainer=trainer)
    hf_tok = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>")
    torch.manual_seed(seed)
    cfg = LlamaConfig(
        vocab_size=len(hf_tok),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        bos_token_id=hf_tok.bos_token_id,
        eos_token_id=hf_tok.eos_token_id,
        pad_token_id=hf_tok.pad_token_id,
    )
    model = LlamaForCausalLM(cfg).eval()
    with torch.no_grad():  # a peakier random model: some confident tokens, some unsure ones
        model.lm_head.weight.mul_(60.0)
    model.save_pretrained(str(path))
    hf_tok.save_pretrained(str(path))
    return str(path)
