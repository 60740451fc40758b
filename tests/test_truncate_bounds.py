"""The bounded histograms of the C++ truncation (csrc/include/fuq/cpu_select.h).

When the first scan takes the row's stats, top-p, typical and top-h bin only the tokens above
a bound derived from them and add every chunk beyond it from that scan's per-chunk sums (taken
relative to the max of the row up to the chunk, rescaled to the bins' reference). These rows
put a deep bulk beyond that bound whose mass (or entropy) moves the cut, with the max early or
late in the row (the chunks before it summed relative to a lower prefix max), and split one row
over two threads (the first scan's two-sweep path) against one thread.
"""

from __future__ import annotations

import pytest
import torch
from helpers import make_logits
from test_truncate import assert_same_kept

import fuq
from fuq import _library, reference

pytestmark = pytest.mark.skipif(not _library.HAS_CPP, reason="needs the C++ extension")

NEG = float("-inf")
KNOBS = [dict(top_p=0.9), dict(top_p=0.6, min_tokens_to_keep=3), dict(typical_p=0.9), dict(typical_p=0.5),
         dict(top_h=0.4), dict(top_h=0.8), dict(eta=1e-3), dict(epsilon=3e-4)]


def _row(V: int, depth: float, seed: int, head_at: str) -> torch.Tensor:
    """A head of 40 tokens 0.1 nats apart (the max alone) over a bulk `depth` nats below the max."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(V, generator=g) * 0.3 + (10.0 - depth)
    n = 40
    if head_at == "end":
        pos = V - 1 - torch.randperm(V // 10, generator=g)[:n]
    elif head_at == "start":
        pos = torch.randperm(V // 10, generator=g)[:n]
    else:
        pos = torch.randperm(V, generator=g)[:n]
    x[pos] = 10.0 - 0.1 * torch.arange(n, dtype=torch.float32)
    return x


@pytest.mark.parametrize("kw", KNOBS, ids=lambda kw: "-".join(f"{k}={v}" for k, v in kw.items()))
def test_deep_bulk_moves_the_cut(kw):
    rows, headless = [], []
    for depth in (11.0, 12.0, 13.5):
        for i, head_at in enumerate(("end", "start", "any")):
            x = _row(50_000, depth, seed=int(depth * 10) + i, head_at=head_at)
            rows.append(x)
            headless.append(torch.where(x >= 10.0 - 0.1 * 39, x, torch.full_like(x, NEG)))  # the bulk removed
    x = torch.stack(rows)
    got = fuq.truncate(x, backend="cpp", **kw)
    want = reference.truncate(x, *_op_args(kw))
    assert_same_kept(got, want, x, kw)
    if "top_p" in kw or "typical_p" in kw or "top_h" in kw:
        # the bulk matters: without it the reference cuts elsewhere on some rows
        alone = reference.truncate(torch.stack(headless), *_op_args(kw))
        assert ((want > NEG).sum(-1) != (alone > NEG).sum(-1)).any(), kw


def _op_args(kw: dict) -> tuple:
    from fuq import knobs

    return knobs.resolve(**kw)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_split_row_equals_one_thread(dtype):
    """B = 1 over two threads: the first scan runs as two sweeps; the same bits as one thread."""
    V = 262_147
    x = make_logits(2, V, dtype, "llm", seed=5)
    x[1, V - 3] = 30.0  # the max in the last chunk: every earlier chunk's sums rescaled
    x[1, : V // 3] = NEG  # the first chunks see nothing live
    old = torch.get_num_threads()
    try:
        outs = {}
        for threads in (1, 2):
            torch.set_num_threads(threads)
            res = []
            for r in range(2):
                xr = x[r : r + 1]
                for kw in KNOBS + [dict(top_p=0.9, temperature=0.7), dict(top_h=0.4, top_p=0.8)]:
                    res.append(fuq.truncate(xr, backend="cpp", **kw))
                    ids, st = fuq.sample(xr, backend="cpp", uniform=torch.tensor([0.37]), k=3, **kw)
                    res += [ids, st.lse, st.entropy, st.varentropy]
            outs[threads] = res
    finally:
        torch.set_num_threads(old)
    for a, b in zip(outs[1], outs[2], strict=True):
        assert torch.equal(a, b)
    for r in range(2):
        xr = x[r : r + 1]
        for kw in KNOBS:
            assert_same_kept(fuq.truncate(xr, backend="cpp", **kw), reference.truncate(xr, *_op_args(kw)), xr, kw)
