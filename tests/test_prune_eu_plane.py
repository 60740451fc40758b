"""fuq.prune.eu_plane (Q-Tuning): the quadrant rule against a brute-force reference, the scores against
float64 log-softmax of the full logits, the token masks, and the JSONL passes (bad lines, resume, plot, CLI)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from fuq.prune import _eu_plane as ep
from fuq.prune import eu_plane, eu_plane_jsonl, plot_plane

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py

transformers = pytest.importorskip("transformers")


# ---------------------------------------------------------------------------------------------
# the decision, model-free


def _ref_decide(e: list[float], u: list[float], sample_keep: float) -> tuple[list[str], list[bool]]:
    """The rule of the module docstring, written plainly: O(N^2) ranks, every level tried from the top."""
    N = len(e)

    def ranks(x):
        return [(sum(y < v for y in x) + sum(y <= v for y in x)) / (2 * N) for v in x]

    re, ru = ranks(e), ranks(u)
    target = min(N, math.floor(sample_keep * N + 0.5))
    def boxes(Q):
        q = Q / (2 * N)
        hi = [a > 1 - q + 1e-12 and b > 1 - q + 1e-12 for a, b in zip(re, ru, strict=True)]
        lo = [a <= q + 1e-12 and b <= q + 1e-12 for a, b in zip(re, ru, strict=True)]
        return hi, lo

    for Q in range(2 * N, -1, -1):  # the largest level with enough survivors
        hi, lo = boxes(Q)
        keep = [not (h or w) for h, w in zip(hi, lo, strict=True)]
        if sum(keep) >= target:
            break
    if Q < 2 * N and sum(keep) > target:  # drop the deepest of the next level's newcomers
        hi2, lo2 = boxes(Q + 1)
        new = [i for i in range(N) if keep[i] and (hi2[i] or lo2[i])]
        depth = {i: max(re[i] + ru[i] if hi2[i] else -1, 2 - re[i] - ru[i] if lo2[i] else -1) for i in new}
        for i in sorted(new, key=lambda i: (-depth[i], i))[: sum(keep) - target]:
            hi[i], lo[i], keep[i] = hi2[i], lo2[i], False
    quad = []
    for i in range(N):
        if keep[i]:
            quad.append("Q2" if re[i] > ru[i] else "Q4")
        elif hi[i] and lo[i]:
            quad.append("Q1" if re[i] + ru[i] > 1 else "Q3")
        else:
            quad.append("Q1" if hi[i] else "Q3")
    return quad, keep


@pytest.mark.parametrize("N", [1, 2, 7, 50])
@pytest.mark.parametrize("corr", [0.0, 0.9, -0.9])
@pytest.mark.parametrize("ties", [False, True])
def test_decide_matches_the_reference(N, corr, ties):
    g = torch.Generator().manual_seed(N * 10 + int(ties))
    z1, z2 = torch.randn(N, generator=g, dtype=torch.float64), torch.randn(N, generator=g, dtype=torch.float64)
    e = torch.exp(z1 + 1.0)
    u = 2.0 + corr * z1 + math.sqrt(1 - corr**2) * z2
    if ties:
        e, u = torch.round(e), torch.round(u)
    for keep in (0.0, 0.125, 0.5, 0.7, 1.0):
        d = ep.decide(e, u, sample_keep=keep)
        quad, kept = _ref_decide(e.tolist(), u.tolist(), keep)
        assert d.quadrant == quad and d.keep.tolist() == kept, (keep, d.level)
        target = min(N, math.floor(keep * N + 0.5))
        assert d.target == target and int(d.keep.sum()) == target
        assert all((q in ("Q2", "Q4")) == k for q, k in zip(d.quadrant, kept, strict=True))


def test_decide_puts_the_corners_where_the_paper_does():
    # a grid of 10 x 10 points: error and uncertainty independent
    pts = [(i, j) for i in range(10) for j in range(10)]
    e = torch.tensor([2.0 + i for i, _ in pts])
    u = torch.tensor([0.3 * j for _, j in pts])
    d = ep.decide(e, u, sample_keep=0.5)
    Q = dict(zip(pts, d.quadrant, strict=True))
    assert Q[(9, 9)] == "Q1" and Q[(0, 0)] == "Q3"  # top-right noise, bottom-left known
    assert Q[(9, 0)] == "Q2" and Q[(0, 9)] == "Q4"  # high error but sure: misconception; the reverse: calibration
    assert int(d.keep.sum()) == 50 and d.counts()["Q2"] == d.counts()["Q4"] == 25  # symmetric grid
    t = d.thresholds
    assert t["error_lo"] == t["error_hi"] == 6.5 and t["uncertainty_lo"] == t["uncertainty_hi"]  # q = 0.5: the medians
    for (i, j), q in Q.items():  # the corners are the corners
        if q == "Q1":
            assert i + j >= 9 and min(i, j) >= 5
        if q == "Q3":
            assert i + j <= 9 and max(i, j) <= 4


def test_decide_bad_input():
    with pytest.raises(ValueError, match="sample_keep"):
        ep.decide(torch.ones(3), torch.ones(3), sample_keep=1.5)
    with pytest.raises(TypeError, match="sample_keep"):
        ep.decide(torch.ones(3), torch.ones(3), sample_keep="half")
    with pytest.raises(ValueError, match="same length"):
        ep.decide(torch.ones(3), torch.ones(2))
    with pytest.raises(ValueError, match="empty"):
        ep.decide(torch.ones(0), torch.ones(0))
    with pytest.raises(ValueError, match="finite"):
        ep.decide(torch.tensor([1.0, math.nan]), torch.ones(2))


def test_smoothed_ppl_and_token_mask():
    nll = torch.tensor([0.1, 3.0, 0.2, 0.05, 2.0, 0.3, 0.01], dtype=torch.float64)
    lam = 0.3
    p = [math.exp(x) for x in nll.tolist()]
    want = []
    for i in range(len(p)):
        nb = [p[j] for j in (i - 1, i + 1) if 0 <= j < len(p)]
        want.append((1 - lam) * p[i] + lam * sum(nb) / len(nb))
    torch.testing.assert_close(ep.smoothed_ppl(nll, lam), torch.tensor(want, dtype=torch.float64), rtol=1e-12,
                               atol=0)
    m = ep.token_loss_mask(nll, 0.5, lam)
    assert int(m.sum()) == 4  # ceil(0.5 * 7)
    order = sorted(range(7), key=lambda i: (want[i], i))
    assert set(torch.nonzero(m).flatten().tolist()) == set(order[:4])
    assert ep.token_loss_mask(nll, 1.0).all()
    assert ep.token_loss_mask(torch.tensor([5.0]), 0.1).tolist() == [True]  # at least one token
    assert ep.token_loss_mask(torch.zeros(4), 0.5).tolist() == [True, True, False, False]  # ties: earlier first
    assert ep.smoothed_ppl(torch.tensor([1.0]), 0.5).item() == pytest.approx(math.e)


# ---------------------------------------------------------------------------------------------
# encoding


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from helpers import tiny_lm_folder

    path = tiny_lm_folder(tmp_path_factory.mktemp("tiny_eu"))
    model = transformers.AutoModelForCausalLM.from_pretrained(path).eval()
    tok = transformers.AutoTokenizer.from_pretrained(path)
    return path, model, tok


_TEMPLATE = (
    "{% for m in messages %}<s>{{ m['role'] }}\n{{ m['content'] }}</s>\n{% endfor %}"
    "{% if add_generation_prompt %}<s>assistant\n{% endif %}"
)


def test_encode_pairs_alpaca_and_chat(tiny):
    _, _, tok = tiny
    ids, resp = ep.encode(tok, {"prompt": "the cat", "response": " sat on the mat"})
    p = tok("the cat", add_special_tokens=False)["input_ids"]
    r = tok(" sat on the mat", add_special_tokens=False)["input_ids"]
    assert ids == [tok.bos_token_id] + p + r + [tok.eos_token_id]
    assert resp == [False] * (1 + len(p)) + [True] * (len(r) + 1)
    ids2, resp2 = ep.encode(tok, {"instruction": "the", "input": "cat", "output": " sat on the mat"})
    assert ids2[: 1 + len(tok("the\n\ncat", add_special_tokens=False)["input_ids"])] == [tok.bos_token_id] + tok(
        "the\n\ncat", add_special_tokens=False
    )["input_ids"]
    assert sum(resp2) == len(r) + 1
    with pytest.raises(ValueError, match="chat template"):
        ep.encode(tok, {"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]})

    tok.chat_template = _TEMPLATE
    try:
        msgs = [{"role": "user", "content": "the cat"}, {"role": "assistant", "content": "sat on"},
                {"role": "user", "content": "the mat"}, {"role": "assistant", "content": "it is"}]
        ids, resp = ep.encode(tok, {"messages": msgs})
        full = tok(tok.apply_chat_template(msgs, tokenize=False), add_special_tokens=False)["input_ids"]
        assert len(ids) == len(resp)
        assert tok.decode(ids) == tok.decode(full)
        scored = [tok.decode([i]) for i, r in zip(ids, resp, strict=True) if r]
        assert "".join(scored) == "sat on</s>\nit is</s>\n"  # both assistant turns, their ends included
        ids_p, resp_p = ep.encode(tok, {"prompt": "the cat", "response": "sat on"})  # a pair uses the template
        assert "".join(tok.decode([i]) for i, r in zip(ids_p, resp_p, strict=True) if r) == "sat on</s>\n"
        ids_n, _ = ep.encode(tok, {"prompt": "the cat", "response": "sat on"}, chat=False)
        assert ids_n[0] == tok.bos_token_id and ids_n != ids_p
    finally:
        tok.chat_template = None


@pytest.mark.parametrize(
    "sample, msg",
    [
        ({"prompt": "a"}, "needs 'prompt' and 'response'"),
        ({"prompt": "a", "response": ""}, "response is empty"),
        ({"prompt": "a", "response": 3}, "response must be a string"),
        ({"messages": []}, "non-empty list"),
        ({"messages": [{"role": "user", "content": "a"}]}, "no 'assistant' turn"),
        ({"messages": [{"role": "user"}]}, r"messages\[0\]"),
        (["prompt", "response"], "must be an object"),
    ],
)
def test_encode_bad_samples(tiny, sample, msg):
    with pytest.raises(ValueError, match=msg):
        ep.encode(tiny[2], sample)


# ---------------------------------------------------------------------------------------------
# scores of a batched pass against the full logits in float64


def _want(model, ids: list[int], resp: list[bool]) -> tuple[float, float, list[float]]:
    with torch.no_grad():
        z = model(torch.tensor([ids])).logits[0].double()
    cfg = model.config
    if getattr(cfg, "final_logit_softcapping", None):
        pass  # HF applies the soft-capping inside .logits already
    lp = torch.log_softmax(z, -1)
    pos = [t for t in range(1, len(ids)) if resp[t]]
    nll = [-lp[t - 1, ids[t]].item() for t in pos]
    ent = [-(lp[t - 1].exp() * lp[t - 1]).sum().item() for t in pos]
    return math.exp(sum(nll) / len(nll)), sum(ent) / len(ent), nll


class _CharTok:
    """Characters as ids (3 + ord % 250); 0 pad, 1 bos, 2 eos."""

    pad_token_id, bos_token_id, eos_token_id, chat_template = 0, 1, 2, None

    def __call__(self, text, add_special_tokens=True):
        return {"input_ids": [3 + ord(c) % 250 for c in text]}


def _gemma():
    cfg = transformers.Gemma3TextConfig(
        vocab_size=257, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=1, head_dim=8, final_logit_softcapping=3.0, max_position_embeddings=128,
        sliding_window=64,
    )
    torch.manual_seed(0)
    return transformers.Gemma3ForCausalLM(cfg).eval()


SAMPLES = [
    {"prompt": "the cat sat", "response": " on the mat."},
    {"prompt": "Once upon a time there was a dog", "response": " who"},
    {"prompt": "q", "response": " a long answer about the weather and the sea and the sky"},
]


@pytest.mark.parametrize("which", ["llama", "gemma-softcap"])
def test_batched_scores_match_full_logits(tiny, which):
    model, tok = (tiny[1], tiny[2]) if which == "llama" else (_gemma(), _CharTok())
    rows = [ep.encode(tok, s) for s in SAMPLES]
    got = ep.score_batch(model, rows, pad_id=ep._pad_id(tok))
    one = [ep.score_batch(model, [r])[0] for r in rows]
    for (ids, resp), g, o in zip(rows, got, one, strict=True):
        e, u, nll = _want(model, ids, resp)
        assert g.error == pytest.approx(e, rel=1e-4) and g.uncertainty == pytest.approx(u, rel=1e-4, abs=1e-5)
        torch.testing.assert_close(g.token_nll.double(), torch.tensor(nll, dtype=torch.float64), atol=1e-4, rtol=1e-4)
        assert g.error == pytest.approx(o.error, rel=1e-4)  # padding changes nothing
        assert g.response_ids == [i for i, r in zip(ids, resp, strict=True) if r]


def test_eu_plane_end_to_end(tiny):
    _, model, tok = tiny
    samples = [SAMPLES[i % 3] | {"response": SAMPLES[i % 3]["response"] + " x" * i} for i in range(10)]
    res = eu_plane(model, tok, samples, sample_keep=0.4, token_keep=0.5, batch_size=4)
    assert int(res.keep.sum()) == 4 and len(res.quadrant) == 10
    for q, m, ids, k in zip(res.quadrant, res.loss_mask, res.response_ids, res.keep, strict=True):
        assert m.numel() == len(ids) and bool(k) == (q in ("Q2", "Q4"))
        if q == "Q2":
            assert int(m.sum()) == math.ceil(0.5 * m.numel())
        else:
            assert bool(m.all()) == (q == "Q4") and bool((~m).all()) == (q != "Q4")
    again = eu_plane(model, tok, samples, sample_keep=0.4, token_keep=0.5, batch_size=3)
    torch.testing.assert_close(again.error, res.error, rtol=1e-4, atol=0)
    with pytest.raises(ValueError, match=r"samples\[1\].*response is empty"):
        eu_plane(model, tok, [SAMPLES[0], {"prompt": "a", "response": ""}])
    with pytest.raises(ValueError, match=r"samples\[0\].*max_length"):
        eu_plane(model, tok, [SAMPLES[2]], max_length=4)
    with pytest.raises(ValueError, match="token_keep"):
        eu_plane(model, tok, SAMPLES, token_keep=0.0)
    with pytest.raises(ValueError, match="lam"):
        eu_plane(model, tok, SAMPLES, lam=-0.1)
    with pytest.raises(ValueError, match="batch_size"):
        eu_plane(model, tok, SAMPLES, batch_size=0)
    with pytest.raises(TypeError, match="iterable"):
        eu_plane(model, tok, SAMPLES[0])
    with pytest.raises(ValueError, match="empty"):
        eu_plane(model, tok, [])


# ---------------------------------------------------------------------------------------------
# JSONL: bad lines, resume after an interruption, plot, CLI


def _write_input(path: Path, n: int = 13) -> list[int]:
    """n good samples with bad lines between them; returns the bad line numbers."""
    lines, bad = [], []
    for i in range(n):
        s = SAMPLES[i % 3]
        lines.append(json.dumps({"id": i, "prompt": s["prompt"], "response": s["response"] + " y" * (i % 4)}))
        if i == 2:
            lines.append("{not json")
            bad.append(len(lines))
        if i == 5:
            lines.append(json.dumps({"prompt": "a", "response": ""}))
            bad.append(len(lines))
            lines.append("[1, 2]")
            bad.append(len(lines))
        if i == 9:
            lines.append("")
            bad.append(len(lines))
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    with open(path, "ab") as f:  # a line that is not UTF-8
        f.write(b'{"prompt": "\xff", "response": "x"}\n')
    bad.append(len(lines) + 1)
    return bad


def _strip(out: Path) -> list[dict]:
    return [json.loads(x) for x in out.read_text(encoding="utf-8").splitlines()]


def test_jsonl_reports_bad_lines_and_matches_eu_plane(tiny, tmp_path):
    _, model, tok = tiny
    src = tmp_path / "in.jsonl"
    bad = _write_input(src)
    seen = []
    s = eu_plane_jsonl(model, tok, src, tmp_path / "out.jsonl", batch_size=4, progress=True,  # the rich bar too
                       on_bad=lambda n, r: seen.append(n))
    assert seen == bad and [b["line"] for b in s["bad_lines"]] == bad
    reasons = " ".join(b["reason"] for b in s["bad_lines"])
    for word in ("not JSON", "response is empty", "not a JSON object", "blank line", "not UTF-8"):
        assert word in reasons
    rows = _strip(tmp_path / "out.jsonl")
    assert [r["id"] for r in rows] == list(range(13)) and s["samples"] == 13 and s["kept"] == 7  # round(6.5) = 7
    samples = [{"prompt": r["prompt"], "response": r["response"]} for r in rows]
    res = eu_plane(model, tok, samples, batch_size=5)
    assert [r["eu_plane"]["quadrant"] for r in rows] == res.quadrant
    for r, m in zip(rows, res.loss_mask, strict=True):
        assert r["eu_plane"]["loss_mask"] == m.to(torch.uint8).tolist()
        assert len(r["eu_plane"]["token_ids"]) == r["eu_plane"]["n_tokens"] == m.numel()
        assert r["eu_plane"]["keep"] == (r["eu_plane"]["quadrant"] in ("Q2", "Q4"))
    # other fractions: no model work, the scores are reused
    s2 = eu_plane_jsonl(model, tok, src, tmp_path / "out.jsonl", sample_keep=0.25, kept_only=True, progress=False)
    assert s2["this_run"]["samples"] == 0 and s2["kept"] == 3 and len(_strip(tmp_path / "out.jsonl")) == 3


class _Interrupt:
    """Counts the model body's forward calls; raises KeyboardInterrupt on call number ``at``."""

    def __init__(self, model, at: int | None):
        self.calls, self.at = 0, at
        self.h = model.get_decoder().register_forward_pre_hook(self)

    def __call__(self, *_):
        self.calls += 1
        if self.at is not None and self.calls == self.at:
            raise KeyboardInterrupt

    def remove(self):
        self.h.remove()


def test_jsonl_resumes_after_an_interruption(tiny, tmp_path):
    _, model, tok = tiny
    src = tmp_path / "in.jsonl"
    _write_input(src)
    ref = tmp_path / "ref.jsonl"
    eu_plane_jsonl(model, tok, src, ref, batch_size=3, progress=False)  # 13 samples: 5 batches

    out = tmp_path / "out.jsonl"
    # windows of 2 batches (6 samples, sorted by length); interrupted in the second batch of the second window
    hook = _Interrupt(model, at=4)
    with pytest.raises(KeyboardInterrupt):
        eu_plane_jsonl(model, tok, src, out, batch_size=3, window=2, progress=False)
    hook.remove()
    assert not out.exists()
    side = Path(str(out) + ".scores.jsonl")
    assert len(side.read_text().splitlines()) == 1 + 3 + 1  # header, window 1 (2 batches, closing), 1 batch
    with open(side, "ab") as f:
        f.write(b'{"end_line": 9, "samp')  # a line torn by the kill
    seen = []
    hook = _Interrupt(model, at=None)
    s = eu_plane_jsonl(model, tok, src, out, batch_size=3, window=2, progress=False,
                       on_bad=lambda n, r: seen.append(n))
    hook.remove()
    assert hook.calls == 2 and s["this_run"]["samples"] == 4  # the rest of window 2, and window 3
    assert s["this_run"]["resumed_at_line"] == 7  # after window 1: 6 samples and the bad line 4
    assert [b["line"] for b in s["bad_lines"]] == _write_input(tmp_path / "again.jsonl")  # old and new bad lines
    got, want = _strip(out), _strip(ref)
    for g, w in zip(got, want, strict=True):
        assert g["eu_plane"]["quadrant"] == w["eu_plane"]["quadrant"]
        assert g["eu_plane"]["loss_mask"] == w["eu_plane"]["loss_mask"]
        assert g["eu_plane"]["error"] == pytest.approx(w["eu_plane"]["error"], rel=1e-5)
    # another model (or input) cannot reuse these scores
    with pytest.raises(ValueError, match="another run"):
        eu_plane_jsonl(_gemma(), _CharTok(), src, out, batch_size=3, progress=False)
    hook = _Interrupt(model, at=None)
    s = eu_plane_jsonl(model, tok, src, out, batch_size=3, progress=False, restart=True)
    hook.remove()
    assert hook.calls == 5 and s["this_run"]["samples"] == 13


def test_plot_html_and_png(tmp_path, monkeypatch):
    e = torch.exp(torch.linspace(0.1, 3, 20))
    u = torch.linspace(0.2, 2.0, 20).flip(0)
    d = ep.decide(e, u, sample_keep=0.5)
    page = Path(plot_plane(e, u, d.quadrant, d.thresholds, tmp_path / "p.html")).read_text()
    assert page.count("<circle") == 20 and page.count("<line") == 4 and "Q1 noise" in page
    png = tmp_path / "p.png"
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        assert plot_plane(e, u, d.quadrant, d.thresholds, png).endswith("p.html")
    else:
        assert plot_plane(e, u, d.quadrant, d.thresholds, png) == str(png)
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        import builtins

        real = builtins.__import__

        def no_mpl(name, *a, **k):
            if name.startswith("matplotlib"):
                raise ImportError(name)
            return real(name, *a, **k)

        monkeypatch.setattr(builtins, "__import__", no_mpl)
        assert plot_plane(e, u, d.quadrant, d.thresholds, tmp_path / "q.png") == str(tmp_path / "q.html")


def test_cli_eu_plane(tiny, tmp_path, capsys):
    from fuq import cli

    path = tiny[0]
    src = tmp_path / "in.jsonl"
    bad = _write_input(src)
    out = tmp_path / "out.jsonl"
    rc = cli.main(["eu-plane", str(src), str(out), "--model", path, "--sample-keep", "0.5", "--token-keep", "0.6",
                   "--batch-size", "4", "--plot", str(tmp_path / "plane.html")])
    err = capsys.readouterr().err
    assert rc == 0, err
    for n in bad:
        assert f"in.jsonl:{n}: skipped" in err
    assert "13 samples, 5 bad lines skipped; kept 7" in err
    assert (tmp_path / "plane.html").read_text().count("<circle") == 13
    assert len(_strip(out)) == 13
    with pytest.raises(SystemExit):
        cli.main(["eu-plane", str(src), str(out), "--sample-keep", "2"])
    assert "expected a number in [0, 1]" in capsys.readouterr().err
    assert cli.main(["eu-plane", str(tmp_path / "missing.jsonl"), str(out), "--model", path]) == 2
    assert "no such file" in capsys.readouterr().err


def test_non_finite_scores_are_reported_not_decided_on(tiny, tmp_path):
    _, model, tok = tiny
    marker = tok("zz", add_special_tokens=False)["input_ids"][0]

    def poison(module, args, kwargs, out):  # a broken model: NaN hidden states for rows holding the marker
        rows = (kwargs["input_ids"] == marker).any(dim=1)
        out.last_hidden_state[rows] = math.nan
        return out

    h = model.get_decoder().register_forward_hook(poison, with_kwargs=True)
    try:
        src = tmp_path / "in.jsonl"
        rows = [SAMPLES[0], {"prompt": "zz", "response": " the mat"}, SAMPLES[1], SAMPLES[2]]
        src.write_text("".join(json.dumps(r) + "\n" for r in rows))
        seen = []
        s = eu_plane_jsonl(model, tok, src, tmp_path / "out.jsonl", batch_size=4, progress=False,
                           on_bad=lambda n, r: seen.append((n, r)))
        assert [n for n, _ in seen] == [2] and "non-finite" in seen[0][1] and s["samples"] == 3
        with pytest.raises(ValueError, match=r"samples\[1\]: non-finite"):
            eu_plane(model, tok, rows)
    finally:
        h.remove()


@pytest.mark.model
def test_smollm2_chat_template_and_corrupted_answers():
    """SmolLM2-Instruct: its chat template is prefix-stable, and a word-shuffled answer scores a higher error."""
    import fuq

    model, tok = fuq.models.load("smollm2")
    clean = {"prompt": "What is the capital of France?", "response": "The capital of France is Paris."}
    ids, resp = ep.encode(tok, clean)
    assert tok.decode([i for i, r in zip(ids, resp, strict=True) if r]) == "The capital of France is Paris.<|im_end|>\n"
    shuffled = dict(clean, response="Paris capital The of is France.")
    res = eu_plane(model, tok, [clean, shuffled], sample_keep=1.0)
    assert float(res.error[1]) > 3 * float(res.error[0])
