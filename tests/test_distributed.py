"""fuq.distributed on gloo CPU processes (2 and 4 ranks, loopback only) against the unsharded ops.

Each test spawns the ranks once and runs all its checks inside them (a process start costs
seconds); a failing check raises in its rank and torch.multiprocessing re-raises it here.
"""

from __future__ import annotations

import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import fuq
import fuq.distributed as fd
from tests.helpers import assert_stats_close, make_logits

pytestmark = pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(), reason="no gloo backend")

V = 1000
WIDTHS = {2: [300, 700], 4: [1, 499, 250, 250]}
PERM = {2: [1, 0], 4: [2, 0, 3, 1]}  # rank r holds shard PERM[r]: shards need not follow rank order


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _spawn(fn, world: int) -> None:
    mp.spawn(fn, args=(world, _free_port()), nprocs=world, join=True)


def _shard_of(rank: int) -> tuple[int, int]:
    """The vocabulary range [lo, hi) that ``rank`` holds in the current group."""
    world = dist.get_world_size()
    cuts, a = [], 0
    for w in WIDTHS[world]:
        cuts.append((a, a + w))
        a += w
    return cuts[PERM[world][rank]]


def _init(rank: int, world: int, port: int) -> tuple[int, int]:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    return _shard_of(rank)


def _raises(exc, match: str, fn) -> None:
    with pytest.raises(exc, match=match):
        fn()


# ---------------------------------------------------------------------------------------------
# statistics


def _stats_checks(rank: int, lo: int, hi: int) -> None:
    g = torch.Generator().manual_seed(7)
    tokens = torch.randint(0, V, (6,), generator=g)
    for dtype in (torch.float32, torch.bfloat16, torch.float16):
        for kind in ("llm", "masked"):
            x = make_logits(6, V, dtype, kind, seed=11)
            x[2, 300:800] = float("-inf")  # a shard with no finite value (on 4 ranks), a target in it
            tokens[2] = 500
            got = fd.logit_stats(x[:, lo:hi], vocab_offset=lo, k=7, tokens=tokens, temperature=0.9)
            want = fuq.logit_stats(x, k=7, tokens=tokens, temperature=0.9)
            assert_stats_close(got, want, V, dtype)
    # leading dims, k wider than a shard, check=False
    x = make_logits(6, V, seed=12).reshape(2, 3, V)
    got = fd.logit_stats(x[..., lo:hi], vocab_offset=lo, k=3, check=False)
    assert got.topk_ids.shape == (2, 3, 3)
    assert_stats_close(got, fuq.logit_stats(x, k=3), V, torch.float32)
    # ranks may hold different dtypes: rank 0's shard is bfloat16, the others float32
    x = make_logits(4, V, kind="llm", seed=14)
    a, b = _shard_of(0)
    x[:, a:b] = x[:, a:b].bfloat16().float()  # what rank 0 holds, exactly
    mine = x[:, lo:hi].bfloat16() if rank == 0 else x[:, lo:hi]
    assert_stats_close(fd.logit_stats(mine, vocab_offset=lo, k=4), fuq.logit_stats(x, k=4), V, torch.float32)
    # hidden_stats over a vocabulary-parallel head
    h, W, b = torch.randn(5, 16, generator=g), torch.randn(V, 16, generator=g), torch.randn(V, generator=g)
    tg = torch.randint(0, V, (5,), generator=g)
    for softcap in (None, 8.0):
        got = fd.hidden_stats(h, W[lo:hi], b[lo:hi], vocab_offset=lo, k=4, targets=tg, temperature=1.3,
                              softcap=softcap)
        want = fuq.hidden_stats(h, W, b, k=4, targets=tg, temperature=1.3, softcap=softcap, backend="reference")
        assert_stats_close(got, want, V, torch.float32)
    _bad_input(rank, lo, hi)


def _bad_input(rank: int, lo: int, hi: int) -> None:
    """Mismatched shards raise the same ValueError on every rank (and the group stays usable)."""
    x = make_logits(3, V, seed=13)
    _raises(ValueError, "overlap|in no shard", lambda: fd.logit_stats(x[:, lo:hi], vocab_offset=lo + (rank == 0)))
    _raises(ValueError, "disagree", lambda: fd.logit_stats(x[: 2 + (rank == 0), lo:hi], vocab_offset=lo))
    _raises(ValueError, "disagree", lambda: fd.logit_stats(x[:, lo:hi], vocab_offset=lo, k=1 + (rank == 0)))
    _raises(ValueError, "temperature", lambda: fd.logit_stats(x[:, lo:hi], vocab_offset=lo, temperature=1 + rank))
    t = torch.tensor([0, 1, rank])
    _raises(ValueError, "other tokens", lambda: fd.logit_stats(x[:, lo:hi], vocab_offset=lo, tokens=t))
    _raises(ValueError, "k must be <=", lambda: fd.logit_stats(x[:, lo:hi], vocab_offset=lo, k=V + 1))
    _raises(ValueError, "disagree on the sampling knobs",
            lambda: fd.sample(x[:, lo:hi], vocab_offset=lo, top_k=5 + rank, seed=0))
    _raises(ValueError, "exactly one of generator", lambda: fd.sample(x[:, lo:hi], vocab_offset=lo))
    ok = fd.logit_stats(x[:, lo:hi], vocab_offset=lo, k=2)
    assert torch.equal(ok.topk_ids, fuq.logit_stats(x, k=2).topk_ids)


# ---------------------------------------------------------------------------------------------
# sampling


KNOBS = [  # (knobs, logits, which path the rows 8-15 take: exact / widened round / gathered logits)
    (dict(top_k=20), "normal", "exact"),
    (dict(top_p=0.8), "llm", "exact"),
    (dict(min_p=0.1), "normal", "exact"),
    (dict(top_k=50, top_p=0.9, min_p=0.01), "llm", "exact"),
    (dict(top_p=0.95, temperature=1.7, candidates=4), "normal", "gather"),  # flat: far below 4 candidates
    (dict(min_p=0.01, candidates=2), "llm", "widen"),  # the cut is among 16 x 3 candidates
    (dict(top_p=0.95, candidates=4), "llm", "widen"),
]


def _sample_checks(lo: int, hi: int) -> None:
    real, real_gather, fell_back, gathered = fd._fallback, fd._gather_rows, [], []

    def counting(*args, **kw):
        fell_back.append(int(args[6].sum()))  # rows whose cut fell below the candidates
        return real(*args, **kw)

    def counting_gather(*args, **kw):
        gathered.append(int(args[4].numel()))  # rows drawn from gathered logits
        return real_gather(*args, **kw)

    fd._fallback, fd._gather_rows = counting, counting_gather
    for i, (knobs, kind, path) in enumerate(KNOBS):
        fell_back.clear()
        gathered.clear()
        for dtype in (torch.float32, torch.bfloat16):
            x = make_logits(16, V, torch.float32, kind, seed=20 + i)
            x[:8, 5 + 100 * i] += 40.0  # rows 0-7 peaked (cut among any candidates), rows 8-15 not
            x[3] = float("-inf")  # a dead row: id 0
            x = x.to(dtype)
            g1, g2 = torch.Generator().manual_seed(i), torch.Generator().manual_seed(i)
            ids, st = fd.sample(x[:, lo:hi], vocab_offset=lo, generator=g1, k=3, **knobs)
            knobs_ = {n: v for n, v in knobs.items() if n != "candidates"}
            want_ids, want = fuq.sample(x, generator=g2, k=3, backend="reference", **knobs_)
            assert torch.equal(ids, want_ids), (knobs, dtype, ids, want_ids)
            assert_stats_close(st, want, V, dtype)
            assert torch.equal(torch.rand(1, generator=g1), torch.rand(1, generator=g2))  # same advance
        assert all(n <= 8 for n in fell_back), (knobs, fell_back)  # the peaked rows never fall back
        assert (sum(fell_back) > 0) == (path != "exact"), (knobs, fell_back)
        assert (sum(gathered) > 0) == (path == "gather"), (knobs, gathered)
    # fallback="gather" skips the widened round: same ids
    x = make_logits(16, V, torch.float32, "llm", seed=25)
    gathered.clear()
    ids, _ = fd.sample(x[:, lo:hi], vocab_offset=lo, min_p=0.01, candidates=2, fallback="gather", seed=4)
    want_ids, _ = fuq.sample(x, min_p=0.01, generator=torch.Generator().manual_seed(4), backend="reference")
    assert torch.equal(ids, want_ids) and sum(gathered) == 16, gathered
    # exact ties at the k-th value spill past the lists: those rows fall back, same ids
    fell_back.clear()
    x = torch.randint(-3, 3, (8, V), generator=torch.Generator().manual_seed(3)).float()
    ids, _ = fd.sample(x[:, lo:hi], vocab_offset=lo, top_k=5, candidates=1, seed=5)
    want_ids, _ = fuq.sample(x, top_k=5, generator=torch.Generator().manual_seed(5), backend="reference")
    assert torch.equal(ids, want_ids) and sum(fell_back) == 8, (ids, want_ids, fell_back)
    fd._fallback, fd._gather_rows = real, real_gather
    # fallback="error": the same rows fail on every rank
    x = make_logits(4, V, kind="normal", seed=30)
    _raises(ValueError, "candidates", lambda: fd.sample(x[:, lo:hi], vocab_offset=lo, top_p=0.99, candidates=2,
                                                        fallback="error", seed=1))
    _two_level(lo, hi)


def _two_level(lo: int, hi: int) -> None:
    """No knob: the same id on every rank, distributed as softmax(z / T) (a seeded chi-square check)."""
    n = 20000
    row = torch.full((V,), float("-inf"))
    hot = torch.tensor([0, 1, 299, 300, 301, 500, 750, 999])  # live tokens on every shard layout
    row[hot] = torch.tensor([1.0, 0.5, 0.0, 2.0, -1.0, 1.5, 0.2, 1.0])
    x = row.expand(n, V).contiguous()
    ids, st = fd.sample(x[:, lo:hi], vocab_offset=lo, temperature=0.8, seed=123, k=2)
    every = [torch.empty_like(ids) for _ in range(dist.get_world_size())]
    dist.all_gather(every, ids)
    assert all(torch.equal(e, ids) for e in every)
    assert torch.isin(ids, hot).all()
    p = torch.softmax(row[hot] / 0.8, -1).double()
    counts = (ids[:, None] == hot[None]).sum(0).double()
    chi2 = ((counts - n * p) ** 2 / (n * p)).sum()
    assert chi2 < 24.3, chi2  # 7 degrees of freedom, p = 0.001
    want = fuq.logit_stats(x[:4], k=2, tokens=ids[:4], temperature=0.8)
    assert_stats_close(fuq.LogitStats(*(f[:4] for f in st)), want, V, torch.float32)


def _worker(rank: int, world: int, port: int) -> None:
    lo, hi = _init(rank, world, port)
    try:
        _stats_checks(rank, lo, hi)
        _sample_checks(lo, hi)
    finally:
        dist.destroy_process_group()


@pytest.mark.distributed
@pytest.mark.parametrize("world", [2, 4])
def test_distributed_matches_unsharded(world):
    """logit_stats, hidden_stats and sample on `world` gloo ranks equal the unsharded ops on every rank;
    mismatched shards raise the same ValueError on every rank."""
    _spawn(_worker, world)


def test_errors_before_any_collective():
    """Without an initialised group, and for bad local arguments, the call fails at once (no hang)."""
    x = make_logits(2, 10)
    if not dist.is_initialized():
        with pytest.raises(RuntimeError, match="init_process_group"):
            fd.logit_stats(x, vocab_offset=0)
    with pytest.raises(ValueError, match="exactly one of generator"):
        fd.sample(x, vocab_offset=0, generator=torch.Generator(), seed=1)
    with pytest.raises(TypeError, match="generator must be a torch.Generator"):
        fd.sample(x, vocab_offset=0, generator=1)
    with pytest.raises(ValueError, match="candidates"):
        fd.sample(x, vocab_offset=0, top_p=0.5, candidates=0, seed=1)
    with pytest.raises(ValueError, match="fallback"):
        fd.sample(x, vocab_offset=0, top_p=0.5, fallback="maybe", seed=1)
    with pytest.raises(ValueError, match="top_p"):
        fd.sample(x, vocab_offset=0, top_p=1.5, seed=1)
    with pytest.raises(TypeError, match="vocab_offset"):
        fd.logit_stats(x, vocab_offset=None)
