"""bench/bench_uq.py table: the README table is built from the result files (synthetic ones here)."""

from __future__ import annotations

import argparse
import importlib.util
import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def bench(tmp_path, monkeypatch):
    spec = importlib.util.spec_from_file_location("bench_uq_under_test", ROOT / "bench" / "bench_uq.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    (tmp_path / "bench" / "results").mkdir(parents=True)
    monkeypatch.setattr(mod, "ROOT", tmp_path)
    monkeypatch.setattr(mod, "RESULTS", tmp_path / "bench" / "results")
    return mod


def _result(model, correct, unc, aurocs, prrs, task="t"):
    items = [{"id": i, "correct": bool(c), "deferral": {"chow-sum": u, "chow-average": u, "chow-quantile": u}}
             for i, (c, u) in enumerate(zip(correct, unc, strict=True))]
    return {"task": task, "model": model, "n": len(items), "accuracy": sum(correct) / len(correct),
            "strategy": "greedy", "source": {"package": "pkg", "version": "1.0"}, "items": items,
            "command": f"python bench/bench_uq.py eval --tasks {task} --models {model}",
            "scores": {k: {"auroc": aurocs[k], "prr": prrs[k]} for k in aurocs}}


def test_table_marks_the_best_and_writes_the_readme_block(bench, tmp_path):
    res = bench.RESULTS
    small = _result("smollm2", [1, 0, 1, 0], [0.1, 5.0, 0.2, 3.0], {"g_nll": 0.55, "max_entropy": 0.8},
                    {"g_nll": 0.3, "max_entropy": 0.1})
    large = _result("gemma3", [1, 1, 0, 0], [0, 0, 0, 0], {"g_nll": 0.6, "max_entropy": 0.4},
                    {"g_nll": -0.1, "max_entropy": 0.2})
    (res / "bench_uq_t_smollm2.json").write_text(json.dumps(small))
    (res / "bench_uq_t_gemma3.json").write_text(json.dumps(large))
    # a result still being written and a sampled run are left out
    (res / "bench_uq_u_smollm2.json").write_text(json.dumps({**small, "task": "u", "partial": True}))
    (res / "bench_uq_v_smollm2.json").write_text(json.dumps({**small, "task": "v", "strategy": "sample"}))
    readme = tmp_path / "README.md"
    readme.write_text(f"intro\n{bench.README_BEGIN}\nold table\n{bench.README_END}\noutro\n")
    bench.cmd_table(argparse.Namespace(readme=True))

    text = (res / "bench_uq_table.md").read_text()
    rows = json.loads((res / "bench_uq_table.json").read_text())
    assert [(r["task"], r["model"]) for r in rows["eval"]] == [("t", "gemma3"), ("t", "smollm2")]
    assert all(r["right"] == 2 and r["in_band"] for r in rows["eval"])
    # the AUROC matrix: smollm2's best is max_entropy, gemma3's g_nll; the PRR matrix the other way round
    auroc_part, prr_part = text.split("PRR per score")[0], text.split("PRR per score")[1].split("Cascade")[0]
    assert "| t | smollm2 | 0.55 | **0.80** |" in auroc_part and "| t | gemma3 | **0.60** | 0.40 |" in auroc_part
    assert "| t | smollm2 | **0.30** | 0.10 |" in prr_part and "| t | gemma3 | -0.10 | **0.20** |" in prr_part
    # the cascade at 25 % deferral: chow-sum defers item 1 (only the large model right) -> 3 / 4
    cas = rows["cascade"][0]
    assert cas["task"] == "t" and cas["at"]["0.25"]["chow-sum"] == 0.75 and cas["at"]["0.5"]["random"] == 0.5
    s = readme.read_text()
    assert "old table" not in s and s.startswith("intro\n") and s.endswith(f"{bench.README_END}\noutro\n")
    assert text in s and "python bench/bench_uq.py eval --tasks t --models gemma3" in s


def test_table_without_readme_markers_fails_clearly(bench, tmp_path):
    (tmp_path / "README.md").write_text("no markers\n")
    with pytest.raises(SystemExit, match="markers|block"):
        bench.cmd_table(argparse.Namespace(readme=True))


def test_no_right_answer_has_no_best(bench):
    r = _result("gemma3", [0, 0], [0, 0], {"g_nll": 0.5}, {"g_nll": 0.0}, task="w")
    (bench.RESULTS / "bench_uq_w_gemma3.json").write_text(json.dumps(r))
    bench.cmd_table(argparse.Namespace(readme=False))
    text = (bench.RESULTS / "bench_uq_table.md").read_text()
    assert "(no right answer: nothing to detect)" in text and "**" not in text


def _adadec_args(**kw):
    base = {"task": "multi-step-equations", "model": "tiny", "limit": 3, "full": False, "tau": 0.5, "beam": 2,
            "lookahead": 2, "batch_size": 2, "max_new_tokens": 3, "chunk": 2, "resume": False, "stop_after": None}
    return argparse.Namespace(**{**base, **kw})


@pytest.mark.skipif(importlib.util.find_spec("evals") is None, reason="evals not installed")
def test_adadec_long_mode_runs_in_chunks_and_resumes(bench, monkeypatch):
    import sys

    sys.path.insert(0, str(ROOT / "tests"))
    from test_eval import CharTok, tiny_llama

    monkeypatch.setattr(bench, "_load", lambda name: (tiny_llama(), CharTok()))
    monkeypatch.setattr(sys, "argv", ["bench_uq.py", "adadec"])
    out = bench.RESULTS / "bench_uq_adadec_multi-step-equations_tiny_full.json"
    # the long mode stopped after 3 items (chunks of 2: items 0-1, then 2): a partial file
    bench.cmd_adadec(_adadec_args(full=True, stop_after=3))
    r = json.loads(out.read_text())
    total = len(bench.fe.load_items("multi-step-equations"))
    assert r["complete"] is False and r["n_total"] == total > 3
    ids = [it["id"] for it in r["greedy"]["items"]]
    assert ids == [f"multi-step-equations-{i}" for i in range(3)] == [it["id"] for it in r["adadec"]["items"]]
    assert r["greedy"]["n"] == 3 and r["paired"]["n"] == 3 and r["adadec"]["report"].get("rollout_calls", 0) >= 0
    # a cut-off between greedy and AdaDec: resume restarts at the items both have
    r["greedy"]["items"].append({"id": "multi-step-equations-3", "correct": False, "answer": "x"})
    out.write_text(json.dumps(r))
    bench.cmd_adadec(_adadec_args(full=True, resume=True, stop_after=5, tau=9.0))
    r2 = json.loads(out.read_text())
    assert [it["id"] for it in r2["greedy"]["items"]] == [f"multi-step-equations-{i}" for i in range(5)]
    assert r2["greedy"]["items"][:3] == r["greedy"]["items"][:3] and len(r2["adadec"]["items"]) == 5
    assert r2["tau"] == 0.5 and len(r2["resume_commands"]) == 1 and r2["complete"] is False
    # the table shows the partial run as such; a plain run (--limit) is complete
    bench.cmd_table(argparse.Namespace(readme=False))
    assert f"| 5 of {total} (partial) |" in (bench.RESULTS / "bench_uq_table.md").read_text()
    bench.cmd_adadec(_adadec_args(limit=3))
    r3 = json.loads((bench.RESULTS / "bench_uq_adadec_multi-step-equations_tiny.json").read_text())
    assert r3["complete"] is True and r3["greedy"]["n"] == 3 and "paired_held_out" not in r3


@pytest.mark.skipif(importlib.util.find_spec("evals") is None, reason="evals not installed")
def test_eval_resume_continues_a_result_as_one_run(bench, monkeypatch):
    import sys

    sys.path.insert(0, str(ROOT / "tests"))
    from test_eval import CharTok, tiny_llama

    monkeypatch.setattr(bench, "_load", lambda name: (tiny_llama(3), CharTok()))
    monkeypatch.setattr(sys, "argv", ["bench_uq.py", "eval"])
    args = {"tasks": ["multi-step-equations"], "models": ["tiny"], "batch_size": 2}
    out = bench.RESULTS / "bench_uq_multi-step-equations_tiny.json"
    bench.cmd_eval(argparse.Namespace(**args, limit=5, resume=False))
    whole = json.loads(out.read_text())
    bench.cmd_eval(argparse.Namespace(**args, limit=2, resume=False))
    bench.cmd_eval(argparse.Namespace(**args, limit=5, resume=True))
    cont = json.loads(out.read_text())
    assert [it["id"] for it in cont["items"]] == [it["id"] for it in whole["items"]]
    assert [it["answer"] for it in cont["items"]] == [it["answer"] for it in whole["items"]]
    assert cont["n"] == 5 and cont["continued"][0]["from_item"] == 2
    for k, v in whole["scores"].items():
        assert cont["scores"][k]["curve"] == v["curve"], k
    assert not out.with_suffix(".partial.json").exists()
    # already long enough: nothing is run; a sampled result is not continued
    bench.cmd_eval(argparse.Namespace(**args, limit=3, resume=True))
    assert json.loads(out.read_text())["n"] == 5
    out.write_text(json.dumps({**cont, "strategy": "sample"}))
    with pytest.raises(SystemExit, match="partial or sampled"):
        bench.cmd_eval(argparse.Namespace(**args, limit=6, resume=True))
