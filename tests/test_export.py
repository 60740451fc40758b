"""fuq's ops outside eager Python: schemas defined in C++, torch.export, AOTInductor, and a C++ program.

A decode step (a tiny random language model's forward + ``fuq.sample`` + ``fuq.logit_stats``)
is exported with ``torch.export``, compiled with ``torch._inductor.aoti_compile_and_package``,
and run from Python (``aoti_load_package``) and from ``csrc/examples/decode_step.cpp`` (built
with CMake against the torch wheel's libtorch and ``libfuq.so``): both must equal eager (the
same ids with the same uniforms, the stats to float32 tolerance). The compile tests are
marked ``slow`` (about a minute for the AOTInductor compile and three for the C++ build on a
loaded 2-core machine).
"""

from __future__ import annotations

import os
import resource
import shutil
import subprocess
import sys
import textwrap
import time

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import fuq
from fuq import _library

NO_EXT = os.environ.get("FUQ_NO_EXT") == "1"
HAS_CXX = shutil.which(os.environ.get("CXX", "c++")) is not None or shutil.which("g++") is not None


# ---- the schemas ------------------------------------------------------------------------------


@pytest.mark.skipif(NO_EXT, reason="built without the C++ extension")
def test_schemas_are_defined_in_cpp_and_equal_the_python_strings():
    ops = set(_library.SCHEMAS)
    assert ops >= {"logit_stats", "truncate", "sample", "attention_stats", "hidden_stats"}
    assert {f"{n}_cuda" for n in ("logit_stats", "truncate", "sample", "attention_stats")} <= ops
    assert _library.SCHEMAS_FROM == dict.fromkeys(ops, "C++"), "fuq._C did not define every schema"
    for name, schema in _library.SCHEMAS.items():
        have = getattr(torch.ops.fuq, name).default._schema
        assert str(have) == str(torch._C.parse_schema(f"fuq::{schema}")), name
    # and no op defined in C++ that Python does not know (no fake for it)
    cpp_ops = {s.name.split("::", 1)[1] for s in torch._C._jit_get_all_schemas() if s.name.startswith("fuq::")}
    assert cpp_ops == ops


_FALLBACK = textwrap.dedent(
    """
    import sys
    sys.modules["fuq._C"] = None  # makes `import fuq._C` raise ImportError, as a missing build does
    sys.modules["fuq._C_v4"] = None
    import warnings
    import torch
    import fuq
    from fuq import _library as L

    assert not L.HAS_CPP
    assert L.SCHEMAS_FROM == dict.fromkeys(L.SCHEMAS, "Python"), L.SCHEMAS_FROM
    for name, schema in L.SCHEMAS.items():
        assert str(getattr(torch.ops.fuq, name).default._schema) == str(torch._C.parse_schema("fuq::" + schema))
    torch.manual_seed(0)
    x = torch.randn(3, 50)
    u = torch.rand(3, dtype=torch.float64)
    knobs = (0.9, 5, 0.9, 0.0, 1.0, 0.0, 0.0, 0.0, -1.0, False, 1)
    q, k = torch.randn(1, 2, 3, 8), torch.randn(1, 1, 6, 8)
    h, w = torch.randn(4, 8), torch.randn(50, 8)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # the one-time "falls back" warnings
        for op, args in [
            (torch.ops.fuq.logit_stats.default, (x, 4, torch.tensor([0, 1, 2]), 0.9)),
            (torch.ops.fuq.truncate.default, (x, *knobs)),
            (torch.ops.fuq.sample.default, (x, u, 4, *knobs)),
            (torch.ops.fuq.attention_stats.default, (q, k, 0.35, None, True, 0)),
            (torch.ops.fuq.hidden_stats.default, (h, w, None, 3, torch.tensor([1, 2, 3, 4]), 1.0, None, 16)),
        ]:
            torch.library.opcheck(op, args)
        st = fuq.logit_stats(x, k=2)
    ref = fuq.reference.logit_stats(x, 2, None, 1.0)
    torch.testing.assert_close(st.entropy, ref[1])
    print("fallback ok")
    """
)


def test_python_defines_the_same_schemas_when_the_extension_is_missing():
    """Without fuq._C the schemas come from fuq._library's strings and the reference runs them."""
    env = dict(os.environ)
    r = subprocess.run([sys.executable, "-c", _FALLBACK], capture_output=True, text=True, env=env, timeout=600)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "fallback ok" in r.stdout


# ---- a decode step ------------------------------------------------------------------------------

V, D, HEADS, K = 384, 64, 4, 4


class TinyLM(nn.Module):
    """Embedding, one pre-norm transformer block (causal attention + MLP), LM head."""

    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(V, D)
        self.norm1, self.norm2, self.norm_f = nn.RMSNorm(D), nn.RMSNorm(D), nn.RMSNorm(D)
        self.qkv = nn.Linear(D, 3 * D, bias=False)
        self.proj = nn.Linear(D, D, bias=False)
        self.mlp = nn.Sequential(nn.Linear(D, 4 * D), nn.GELU(), nn.Linear(4 * D, D))
        self.head = nn.Linear(D, V, bias=False)

    def forward(self, ids):  # [B, T] int64 -> logits of the last position, [B, V] float32
        x = self.embed(ids)
        B, T, _ = x.shape
        q, k, v = self.qkv(self.norm1(x)).view(B, T, 3, HEADS, D // HEADS).permute(2, 0, 3, 1, 4)
        a = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + self.proj(a.transpose(1, 2).reshape(B, T, D))
        x = x + self.mlp(self.norm2(x))
        return 4.0 * self.head(self.norm_f(x[:, -1]))  # x4: a peakier, LLM-like distribution


class DecodeStep(nn.Module):
    """One step: forward, sample (top-p 0.9 at T = 0.8, the caller's uniforms) and the T = 1 stats."""

    def __init__(self, lm: nn.Module):
        super().__init__()
        self.lm = lm

    def forward(self, ids, uniform):
        logits = self.lm(ids)
        nxt, st = fuq.sample(logits, temperature=0.8, top_p=0.9, k=K, uniform=uniform)
        base = fuq.logit_stats(logits, k=K, tokens=nxt)
        return nxt, st.entropy, st.token_logprob, base.entropy, base.varentropy, base.topk_ids, logits


OUTPUTS = ("ids", "entropy", "token_logprob", "base_entropy", "base_varentropy", "topk_ids", "logits")


def _cpu_seconds() -> float:
    """CPU time of this process and its waited-for children (the compilers): a figure that the
    machine's load does not inflate as it does the wall clock."""
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return time.process_time() + kids.ru_utime + kids.ru_stime


def _step() -> DecodeStep:
    torch.manual_seed(0)
    return DecodeStep(TinyLM()).eval()


def _inputs(B: int, T: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, V, (B, T), generator=g), torch.rand(B, dtype=torch.float64, generator=g)


def _export(step: DecodeStep):
    B, T = torch.export.Dim("B", min=1, max=64), torch.export.Dim("T", min=1, max=512)
    ids, u = _inputs(2, 5, 0)
    with torch.no_grad():
        return torch.export.export(step, (ids, u), dynamic_shapes=({0: B, 1: T}, {0: B}))


def _assert_equal_to_eager(got, want):
    assert len(got) == len(want) == len(OUTPUTS)
    for name, g, w in zip(OUTPUTS, got, want, strict=True):
        assert g.shape == w.shape and g.dtype == w.dtype, name
        if w.dtype == torch.int64:
            assert torch.equal(g, w), (name, g, w)
        else:
            torch.testing.assert_close(g, w, rtol=1e-5, atol=1e-5, msg=name)


def test_uniform_draws_the_same_ids_as_the_generator():
    x = torch.randn(3, 7, 100)
    g = torch.Generator().manual_seed(5)
    ids, st = fuq.sample(x, top_p=0.8, k=2, generator=g)
    u = torch.rand(21, dtype=torch.float64, generator=torch.Generator().manual_seed(5)).reshape(3, 7)
    ids2, st2 = fuq.sample(x, top_p=0.8, k=2, uniform=u)
    assert torch.equal(ids, ids2)
    torch.testing.assert_close(st2.token_logprob, st.token_logprob)
    knobs = (1.0, 0, 0.8, 0.0, 1.0, 0.0, 0.0, 0.0, -1.0, False, 1)  # top_p 0.8, the rest off
    ref = fuq.reference.sample(x.reshape(21, 100), u.reshape(21), 0, *knobs)
    assert torch.equal(ids2.reshape(21), ref[0])
    with pytest.raises(ValueError, match=r"uniform must have shape \(3, 7\)"):
        fuq.sample(x, uniform=torch.rand(21))
    with pytest.raises(ValueError, match=r"uniform must be in \[0, 1\)"):
        fuq.sample(x, uniform=torch.full((3, 7), 1.0))
    with pytest.raises(TypeError, match="uniform must be a floating-point tensor"):
        fuq.sample(x, uniform=torch.zeros(3, 7, dtype=torch.int64))


def test_export_decode_step_equals_eager():
    """torch.export traces through the fakes (no graph break, the ops stay fuq::* nodes)."""
    step = _step()
    ep = _export(step)
    targets = {str(n.target) for n in ep.graph.nodes if n.op == "call_function"}
    assert {"fuq.sample.default", "fuq.logit_stats.default"} <= targets, targets
    for B, T, seed in [(2, 5, 1), (3, 9, 2)]:
        ids, u = _inputs(B, T, seed)
        with torch.no_grad():
            _assert_equal_to_eager(ep.module()(ids, u), step(ids, u))


@pytest.fixture(scope="module")
def package(tmp_path_factory):
    """The AOTInductor package of the decode step (compiled once for the tests below)."""
    if not HAS_CXX:
        pytest.skip("no C++ compiler: AOTInductor compiles C++")
    work = tmp_path_factory.mktemp("aoti")
    path = str(work / "decode_step.pt2")
    step = _step()
    ep = _export(step)
    t0, c0 = time.perf_counter(), _cpu_seconds()
    # A cache of its own (a cold compile, each run; nothing left in ~ or the repo), and
    # compile_threads=1: no worker pool (2 cores here), every compiler run a reaped child.
    old = os.environ.get("TORCHINDUCTOR_CACHE_DIR")
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(work / "inductor_cache")
    try:
        with torch.no_grad(), torch._inductor.config.patch(compile_threads=1):
            torch._inductor.aoti_compile_and_package(ep, package_path=path)
    finally:
        if old is None:
            del os.environ["TORCHINDUCTOR_CACHE_DIR"]
        else:
            os.environ["TORCHINDUCTOR_CACHE_DIR"] = old
    print(f"\naoti_compile_and_package: {_cpu_seconds() - c0:.1f} s CPU, {time.perf_counter() - t0:.1f} s wall")
    return step, path


@pytest.mark.slow
def test_aoti_package_from_python_equals_eager(package):
    step, path = package
    runner = torch._inductor.aoti_load_package(path)
    for B, T, seed in [(2, 5, 1), (5, 12, 3)]:
        ids, u = _inputs(B, T, seed)
        with torch.no_grad():
            _assert_equal_to_eager(runner(ids, u), step(ids, u))


# ---- the C++ program ---------------------------------------------------------------------------

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _build_decode_step(build_dir: str) -> str:
    """CMake: libfuq.so (fuq's CPU kernels, no Python) and csrc/examples/decode_step.cpp."""
    cmake = shutil.which("cmake")
    if cmake is None:
        pytest.skip("cmake not found (pip install cmake)")
    cfg = [cmake, "-S", ROOT, "-B", build_dir, "-DCMAKE_BUILD_TYPE=Release", f"-DPython_EXECUTABLE={sys.executable}"]
    march = os.environ.get("FUQ_MARCH")
    if march:  # the same CPU baseline as the Python build
        cfg.append("-DFUQ_NATIVE=ON" if march == "native" else f"-DFUQ_MARCH={march}")
    t0, c0 = time.perf_counter(), _cpu_seconds()
    for cmd in (cfg, [cmake, "--build", build_dir, "--target", "decode_step", "-j", str(os.cpu_count() or 2)]):
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=1800)
        assert r.returncode == 0, f"{' '.join(cmd)}\n{r.stdout[-4000:]}\n{r.stderr[-4000:]}"
    cpu, wall = _cpu_seconds() - c0, time.perf_counter() - t0
    print(f"\ncmake build of libfuq + decode_step: {cpu:.1f} s CPU, {wall:.1f} s wall")
    return os.path.join(build_dir, "decode_step")


def _parse(stdout: str) -> dict[str, list[float]]:
    out = {}
    for line in stdout.splitlines():
        name, _, values = line.partition(":")
        out[name] = [float(v) for v in values.split()]
    return out


@pytest.mark.slow
@pytest.mark.skipif(not HAS_CXX, reason="no C++ compiler")
def test_cpp_program_runs_the_package_and_equals_eager(package, tmp_path):
    step, path = package
    exe = _build_decode_step(str(tmp_path / "build"))
    # a process without Python: libpython is not among the libraries the program needs
    ldd = subprocess.run(["ldd", exe], capture_output=True, text=True)
    assert "libpython" not in ldd.stdout and "libtorch_python" not in ldd.stdout, ldd.stdout
    B, T = 3, 7
    ids, u = _inputs(B, T, 4)
    text = f"{B} {T}\n" + "\n".join(" ".join(str(int(i)) for i in row) for row in ids)
    text += "\n" + " ".join(repr(float(x)) for x in u) + "\n"  # repr: exact doubles
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
    r = subprocess.run([exe, path], input=text, capture_output=True, text=True, timeout=600, env=env)
    assert r.returncode == 0, r.stdout + r.stderr
    got = _parse(r.stdout)
    with torch.no_grad():
        want = dict(zip(OUTPUTS, step(ids, u), strict=True))
    for name in OUTPUTS:
        w = want[name].reshape(-1)
        g = torch.tensor(got[name], dtype=torch.float64)
        if w.dtype == torch.int64:
            assert g.tolist() == w.tolist(), name
        else:
            torch.testing.assert_close(g, w.double(), rtol=1e-5, atol=1e-5, msg=name)
    # fuq::logit_stats called directly from C++ on the returned logits
    torch.testing.assert_close(
        torch.tensor(got["direct_entropy"], dtype=torch.float64), want["base_entropy"].double(), rtol=1e-5, atol=1e-5
    )
