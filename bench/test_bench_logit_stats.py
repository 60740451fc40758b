"""fuq.logit_stats through pytest-benchmark (not part of the default ``pytest`` run).

    python -m pytest bench/test_bench_logit_stats.py --benchmark-group-by=param:case

Each case is timed for fuq, the naive composition and torch.logsumexp; the plain
script ``bench/bench_logit_stats.py`` gives the same figures as one table plus JSON.
"""

from __future__ import annotations

import pytest
import torch
from bench_logit_stats import make_logits, naive_logit_stats

import fuq

CASES = [(1, 262144, torch.float32), (8, 262144, torch.float32), (8, 128256, torch.bfloat16)]
K = 50


def _impl(name: str):
    if name == "fuq":
        return lambda x, t: fuq.logit_stats(x, K, t)
    if name == "naive":
        return lambda x, t: naive_logit_stats(x, K, t)
    return lambda x, t: torch.logsumexp(x, dim=-1)


@pytest.mark.parametrize("impl", ["fuq", "naive", "logsumexp"])
@pytest.mark.parametrize("case", CASES, ids=lambda c: f"B{c[0]}-V{c[1]}-{str(c[2]).split('.')[-1]}")
def test_logit_stats(benchmark, case, impl):
    B, V, dtype = case
    x = make_logits(B, V, dtype, torch.device("cpu"))
    tokens = torch.randint(0, V, (B,))
    fn = _impl(impl)
    benchmark.group = f"B={B} V={V} {dtype}"
    benchmark(fn, x, tokens)
