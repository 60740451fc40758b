"""Record every Triton kernel launch the public ops make, then compile each ahead of time.

The Triton interpreter runs kernels as Python and hides what a GPU compiler refuses
(a non-constexpr global, a type mismatch, a shared-memory overflow). This script
closes the gap without a GPU, in two steps run as separate processes:

``python tests/triton_launches.py record OUT.json``
    (needs ``TRITON_INTERPRET=1``) drives the public ops with ``backend="triton"``
    over dtypes, knobs and shapes, and records each launch: the kernel, the types of
    its runtime arguments, its constexpr values and its ``num_warps``/``num_stages``.
    Small shapes run for real; decode shapes (B = 1…256, V = 32000…262144) are
    *planned only*: the launchers run with a GPU's program count (132 SMs) so their
    constexprs (block sizes, split counts, top-k pads) are those a GPU would get, and
    the kernels are recorded without being executed.

``python tests/triton_launches.py compile IN.json CC [CC …]``
    (no interpreter) compiles every recorded constexpr combination and signature
    (:func:`cover`) with ``triton.compile`` for each compute capability (80, 90) and
    prints registers, spills and shared memory per variant (``ptxas -v`` on the PTX).
    Exit status 1 if any variant fails.

``python tests/triton_launches.py count [OUT.json] [--reference-draw]``
    (needs ``TRITON_INTERPRET=1``) plans the decode shapes only and counts, per public
    call, the kernels a GPU would run (:class:`LaunchCount`); the record step prints the
    same table, so the AOT report (which CI prints) lists launches per op next to the
    registers and spills of each kernel.

Every ``@triton.jit`` function of ``fuq.triton_kernels`` whose name ends in
``_kernel`` must be launched by the drive at least once: a new kernel the drive does
not reach fails the record step, so it cannot be missed. The record step also adds
:func:`hand_listed` variants: paths a CPU drive does not take (the bitonic top-k a CUDA
device picks, the prefill plan of ``hidden_stats``, every epilogue flag on and off).
"""

from __future__ import annotations

import contextlib
import importlib
import inspect
import json
import os
import pkgutil
import re
import subprocess
import sys
import tempfile

GPU_SMS = 132  # H100 / H200; the plans of an A100 (108) differ only in split counts
_DTYPE = {
    "float32": "fp32",
    "float16": "fp16",
    "bfloat16": "bf16",
    "float64": "fp64",
    "int64": "i64",
    "int32": "i32",
    "int16": "i16",
    "int8": "i8",
    "uint8": "u8",
    "bool": "i1",
}


# ---------------------------------------------------------------------------------------------
# record


def _kernel_modules():
    import fuq.triton_kernels as pkg

    return [importlib.import_module(f"{pkg.__name__}.{m.name}") for m in pkgutil.iter_modules(pkg.__path__)]


def _is_constexpr(param: inspect.Parameter) -> bool:
    ann = param.annotation
    return "constexpr" in (ann if isinstance(ann, str) else getattr(ann, "__name__", repr(ann)))


def _type_of(v) -> str:
    import torch

    if isinstance(v, torch.Tensor):
        return "*" + _DTYPE[str(v.dtype).removeprefix("torch.")]
    if isinstance(v, bool):
        return "i1"
    if isinstance(v, int):
        return "i32" if -(2**31) <= v < 2**31 else "i64"
    if isinstance(v, float):
        return "fp32"
    raise TypeError(f"cannot type a launch argument of type {type(v).__name__}: {v!r}")


class Recorder:
    """Patches the interpreter's launch to record (and, when ``execute`` is off, skip) kernels."""

    def __init__(self) -> None:
        self.launches: dict[str, dict] = {}
        self.execute = True
        self.n_launches = 0  # Triton launches since the counter was last read (LaunchCount)

    def record(self, fn, args, kwargs) -> None:
        params = list(inspect.signature(fn.fn).parameters.values())
        bound = dict(zip([p.name for p in params], args, strict=False))
        bound.update({k: v for k, v in kwargs.items() if k in {p.name for p in params}})
        sig, consts = {}, {}
        for p in params:
            v = bound.get(p.name, p.default)
            if _is_constexpr(p) or v is None:
                consts[p.name] = v
            else:
                sig[p.name] = _type_of(v)
        opts = {k: kwargs[k] for k in ("num_warps", "num_stages") if k in kwargs}
        entry = {"module": fn.fn.__module__, "kernel": fn.fn.__name__, "signature": sig, "constexprs": consts}
        entry["options"] = opts
        key = json.dumps(entry, sort_keys=True, default=repr)
        self.launches.setdefault(key, entry)

    @contextlib.contextmanager
    def patched(self):
        from triton.runtime.interpreter import InterpretedFunction

        orig = InterpretedFunction.run
        rec = self

        def run(fn, *args, grid, warmup, **kwargs):
            if not warmup:
                rec.record(fn, args, kwargs)
                rec.n_launches += 1
            if rec.execute:
                return orig(fn, *args, grid=grid, warmup=warmup, **kwargs)
            return None

        InterpretedFunction.run = run
        try:
            yield self
        finally:
            InterpretedFunction.run = orig

    @contextlib.contextmanager
    def planning_only(self):
        """Launchers plan for a GPU of ``GPU_SMS`` SMs; kernels are recorded, not executed."""
        patches = []
        for mod in _kernel_modules():
            if hasattr(mod, "_target_programs"):
                orig = mod._target_programs
                patches.append((mod, "_target_programs", orig))
                mod._target_programs = lambda device, *a, _o=orig, **kw: _gpu_programs(_o, *a, **kw)
            if hasattr(mod, "_sm_count"):
                patches.append((mod, "_sm_count", mod._sm_count))
                mod._sm_count = lambda *a, **kw: GPU_SMS
        self.execute = False
        try:
            yield
        finally:
            self.execute = True
            for mod, name, orig in patches:
                setattr(mod, name, orig)


def _gpu_programs(orig, *args, **kwargs):
    """What ``_target_programs`` returns on a CUDA device (``_sm_count`` is patched to ``GPU_SMS``)."""

    class _FakeCuda:
        type = "cuda"
        index = 0

    return orig(_FakeCuda(), *args, **kwargs)


def _calls(x, tokens):
    """(name, thunk) for every public-op configuration the drive runs on one logits tensor."""
    import fuq

    B, V = x.shape
    out = []
    for k in sorted({0, 1, min(5, V), min(50, V), min(64, V), V} | ({1025} if V > 1025 else set())):
        for T in (1.0, 0.7):
            for tok in (None, tokens):
                out.append(
                    (
                        f"logit_stats k={k} T={T} tok={tok is not None}",
                        lambda k=k, T=T, tok=tok: fuq.logit_stats(x, k=k, tokens=tok, temperature=T, backend="triton"),
                    )
                )
    for k, alpha in ((0, 0.5), (min(50, V), 2.0)):  # the density-free sums (extra=True)
        out.append(
            (
                f"logit_stats k={k} extra alpha={alpha}",
                lambda k=k, a=alpha: fuq.logit_stats(x, k=k, temperature=0.7, extra=True, alpha=a, backend="triton"),
            )
        )
    knobs = [
        dict(top_k=min(7, V)),
        dict(top_k=V),
        dict(top_p=0.9),
        dict(min_p=0.05),
        dict(typical_p=0.9),
        dict(epsilon=3e-4),
        dict(eta=3e-4),
        dict(top_h=0.4),
        dict(top_n_sigma=1.0),
        dict(p_less=True),
        dict(top_k=min(50, V), top_p=0.9, min_p=0.02),
        dict(top_p=0.9, min_tokens_to_keep=min(3, V)),
    ]
    gen = None
    for kn in knobs:
        for T in (1.0, 0.7):
            out.append(
                (f"truncate {kn} T={T}", lambda kn=kn, T=T: fuq.truncate(x, temperature=T, backend="triton", **kn))
            )
            out.append(
                (
                    f"sample {kn} T={T}",
                    lambda kn=kn, T=T: fuq.sample(x, temperature=T, k=min(5, V), generator=gen, backend="triton", **kn),
                )
            )
    return out + _extra_calls(x, tokens)


def _extra_calls(x, tokens):
    """Ops added after logit_stats / truncate / sample: drive them when their Triton route exists."""
    import torch

    import fuq

    out = []
    B, V = x.shape
    if hasattr(fuq, "hidden_stats"):
        for d in (64, 640):
            for dtype in {x.dtype, torch.float32}:
                h = torch.randn(B, d, dtype=dtype)
                w = torch.randn(V, d, dtype=dtype)
                for kw in (dict(k=0), dict(k=min(8, V), targets=tokens, softcap=30.0, temperature=0.7)):
                    out.append(
                        (
                            f"hidden_stats d={d} {kw.keys()}",
                            lambda h=h, w=w, kw=kw: fuq.hidden_stats(h, w, backend="triton", **kw),
                        )
                    )
    return out


def _attention_calls(dtype):
    import torch

    import fuq

    out = []
    if not hasattr(fuq, "attention_stats"):
        return out
    for Hq, Hkv, d, T, Lq in ((4, 1, 256, 300, 1), (9, 3, 64, 130, 4), (8, 8, 128, 64, 64)):
        q = torch.randn(2, Hq, Lq, d, dtype=dtype)
        k = torch.randn(2, Hkv, T, d, dtype=dtype)
        mask = torch.rand(2, T) > 0.1
        for kw in (dict(), dict(mask=mask, window=32), dict(causal=False)):
            out.append(
                (
                    f"attention_stats {Hq}/{Hkv} d={d} T={T} Lq={Lq} {sorted(kw)}",
                    lambda q=q, k=k, kw=kw: fuq.attention_stats(q, k, backend="triton", **kw),
                )
            )
    return out


# aten ops that launch no kernel on a GPU: allocation without a fill, views, metadata
_NO_KERNEL = {
    "empty", "empty_strided", "empty_like", "new_empty", "new_empty_strided", "view", "_unsafe_view", "alias",
    "as_strided", "detach", "t", "transpose", "permute", "expand", "unsqueeze", "squeeze", "select", "slice",
    "split", "split_with_sizes", "unbind", "reshape", "_reshape_alias", "lift_fresh", "view_as", "unfold",
    "is_nonzero", "sym_size", "sym_stride", "sym_numel", "sym_storage_offset", "resize_", "set_", "narrow",
}
_SYNC = {"_local_scalar_dense"}  # .item() / .tolist() / bool(t): a device-to-host copy and a sync


class LaunchCount:
    """Kernels one public call runs on the device, as a GPU would run them.

    Counted: every Triton launch (the recorder's patched launch, executed or planned), plus
    every aten op the call's host code issues (``TorchDispatchMode``) except those that
    launch nothing on a GPU (:data:`_NO_KERNEL`: ``empty``, views, metadata); the aten ops
    that read a value back to the host (``.item()``, ``.tolist()``: a copy and a sync) are
    counted too and also listed apart as ``syncs``. Under the planning of
    :meth:`Recorder.planning_only` every op runs on CPU tensors, so ops on small host-side
    tensors (a knob table) count as device kernels too: an upper bound of what a GPU runs.
    """

    def __init__(self, rec: Recorder) -> None:
        self.rec = rec
        self.torch_ops: dict[str, int] = {}

    def __enter__(self):
        from torch.utils._python_dispatch import TorchDispatchMode

        count = self

        class _Mode(TorchDispatchMode):
            def __torch_dispatch__(self, func, types, args=(), kwargs=None):
                name = func.overloadpacket.__name__
                if name not in _NO_KERNEL:
                    count.torch_ops[name] = count.torch_ops.get(name, 0) + 1
                return func(*args, **(kwargs or {}))

        self.rec.n_launches = 0
        self._mode = _Mode()
        self._mode.__enter__()
        return self

    def __exit__(self, *exc):
        self._mode.__exit__(*exc)
        self.triton = self.rec.n_launches
        self.torch = sum(self.torch_ops.values())
        self.syncs = sum(n for k, n in self.torch_ops.items() if k in _SYNC)
        return False

    def row(self, name: str, shape) -> dict:
        return {"call": name, "B": shape[0], "V": shape[1], "triton": self.triton, "torch": self.torch,
                "syncs": self.syncs, "total": self.triton + self.torch,
                "torch_ops": dict(sorted(self.torch_ops.items()))}


COUNT_SHAPES = ((1, 262144), (64, 32000))  # planned: B = 1 takes the split path, B = 64 too (< 264 programs)


def _counted(name: str) -> bool:
    """The configurations the launch table lists: T = 1, no tokens (the others launch the same kernels)."""
    return "T=1.0" in name and "tok=True" not in name and not name.startswith("hidden_stats")


def count_launches(rec: Recorder) -> list[dict]:
    """Launches per public call at the decode shapes, planned for a GPU of ``GPU_SMS`` SMs (fp32 logits)."""
    import torch

    rows = []
    with rec.planning_only():
        for B, V in COUNT_SHAPES:
            x = torch.empty(B, V, dtype=torch.float32)
            tokens = torch.zeros(B, dtype=torch.long)
            for name, call in _calls(x, tokens):
                if not _counted(name):
                    continue
                try:
                    with LaunchCount(rec) as c:
                        call()
                except Exception as e:  # noqa: BLE001 - host code read garbage results: reported as a row
                    rows.append({"call": name, "B": B, "V": V, "error": f"{type(e).__name__}: {e}"})
                    continue
                rows.append(c.row(name, (B, V)))
    return rows


def launch_table(rows: list[dict]) -> str:
    out = [f"launches per public call, planned for a {GPU_SMS}-SM GPU (fp32 logits; triton = Triton launches, "
           "torch = aten ops that launch a kernel, syncs = of those, device-to-host reads)",
           f"{'call':<72} {'B':>4} {'V':>7} {'triton':>6} {'torch':>5} {'syncs':>5} {'total':>5}"]
    for r in rows:
        if "error" in r:
            out.append(f"{r['call']:<72} {r['B']:>4} {r['V']:>7}  host failure: {r['error'][:80]}")
        else:
            out.append(f"{r['call']:<72} {r['B']:>4} {r['V']:>7} {r['triton']:>6} {r['torch']:>5} {r['syncs']:>5} "
                       f"{r['total']:>5}")
    return "\n".join(out)


RUN_SHAPES = ((2, 37), (1, 1))  # executed: V not a multiple of any block, V = 1
PLAN_SHAPES = ((1, 262144), (8, 128256), (64, 32000), (256, 262144))  # planned for a GPU, not executed


def drive(rec: Recorder) -> list[str]:
    """Run every configuration; returns the ones whose host code failed (reported, not fatal in plan mode)."""
    import torch

    failures = []
    for dtype in (torch.float32, torch.bfloat16, torch.float16):
        for B, V in RUN_SHAPES if dtype == torch.float32 else RUN_SHAPES[:1]:
            x = torch.randn(B, V, dtype=dtype) * 3
            tokens = torch.randint(0, V, (B,))
            for name, call in _calls(x, tokens) + _attention_calls(dtype):
                try:
                    call()
                except (ValueError, NotImplementedError) as e:  # an op without this Triton route
                    failures.append(f"run {dtype} [{B},{V}] {name}: {type(e).__name__}: {e}")
        with rec.planning_only():
            for B, V in PLAN_SHAPES:
                x = torch.empty(B, V, dtype=dtype)  # never touched: the kernels do not run
                tokens = torch.zeros(B, dtype=torch.long)
                for name, call in _calls(x, tokens):
                    if B * V > 8 * 262144 and name.startswith(("sample", "hidden_stats")):
                        continue  # their host-side maths would touch B·V memory; the kernels are planned above
                    try:
                        call()
                    except Exception as e:  # noqa: BLE001 - host code read garbage results: reported
                        failures.append(f"plan {dtype} [{B},{V}] {name}: {type(e).__name__}: {e}")
    return failures


def _entry(mod, kernel: str, sig: dict, consts: dict, num_warps: int) -> dict:
    return {"module": mod.__name__, "kernel": kernel, "signature": sig, "constexprs": consts,
            "options": {"num_warps": num_warps}}


def hand_listed() -> list[dict]:
    """Launch variants written out by hand (were three per-op compile scripts in the op tests)."""
    import fuq.triton_kernels.attention_stats as A
    import fuq.triton_kernels.draw as D
    import fuq.triton_kernels.hidden_stats as H
    import fuq.triton_kernels.logit_stats as L

    out = []
    # hidden_stats: each epilogue flag on and off, each dtype, with and without candidates, prefill plan
    for dt, f32, kp, on in (("bf16", False, 64, True), ("fp16", False, 0, False), ("fp32", True, 8, True)):
        p = H._plan(4096, 262144, kp, GPU_SMS)
        sig = dict(h_ptr="*" + dt, w_ptr="*" + dt, b_ptr="*" + dt, tgt_ptr="*i64", N="i32", V="i32", D="i32",
                   stride_h="i64", stride_w="i64", seg="i32", temperature="fp32", softcap="fp32",
                   state_ptr="*fp32", amax_ptr="*i64", cand_ptr="*i64")
        consts = dict(HAS_BIAS=on, HAS_CAP=on, HAS_T=on, HAS_TGT=on, TO_F32=f32, K_PAD=kp,
                      BLOCK_M=p["BLOCK_M"], BLOCK_N=p["BLOCK_N"], BLOCK_K=p["BLOCK_K"])
        out.append(_entry(H, "_hidden_stats_kernel", sig, consts, p["num_warps"]))
    # logit_stats: the bitonic top-k (what a CUDA device runs), the finalize modes, the row keys
    # (extra: the density-free sums of logit_stats(..., extra=True), state rows of NS = 10 floats)
    P = dict(x_ptr="*bf16", stride_row="i64", V="i32", seg="i32", temperature="fp32", alpha="fp32",
             state_ptr="*fp32", cand_ptr="*i64", tokens_ptr="*i64", cnt_ptr="*i32", n_cand="i32", k="i32",
             lse_ptr="*fp32", ent_ptr="*fp32", var_ptr="*fp32", maxlp_ptr="*fp32", argmax_ptr="*i64",
             tkl_ptr="*fp32", tki_ptr="*i64", mass_ptr="*fp32", toklp_ptr="*fp32", extra_ptr="*fp32")
    for kp, bit, ex, fused in ((0, False, False, True), (4, False, True, True), (64, True, False, True),
                               (64, True, True, False)):
        out.append(_entry(L, "_logit_stats_partial_kernel", P,
                          dict(HAS_T=True, EXTRA=ex, NS=10 if ex else 6, BLOCK=1024, K_PAD=kp, BITONIC=bit,
                               E=8, R=128, FUSED=fused, HAS_TOKENS=True, MODE=(1 if kp else 0) if fused else 2,
                               SPLITS_PAD=256 if fused else 16, CAND_PAD=4096 if fused else 2), 4))
    F = dict(x_ptr="*fp32", stride_row="i64", V="i32", temperature="fp32", alpha="fp32", tokens_ptr="*i64",
             state_ptr="*fp32", cand_ptr="*i64", sel_ptr="*i64", n_splits="i32", n_cand="i32", k="i32",
             lse_ptr="*fp32", ent_ptr="*fp32", var_ptr="*fp32", maxlp_ptr="*fp32", argmax_ptr="*i64",
             tkl_ptr="*fp32", tki_ptr="*i64", mass_ptr="*fp32", toklp_ptr="*fp32", extra_ptr="*fp32")
    for mode, ex in ((0, False), (1, False), (2, False), (0, True), (2, True)):
        out.append(_entry(L, "_logit_stats_finalize_kernel", F,
                          dict(HAS_T=True, HAS_TOKENS=True, EXTRA=ex, NS=10 if ex else 6, MODE=mode, SPLITS_PAD=16,
                               CAND_PAD=256, KB=16), 4))
    out.append(_entry(L, "_row_keys_kernel",
                      dict(x_ptr="*fp16", stride_row="i64", V="i32", temperature="fp32", keys_ptr="*i64"),
                      dict(HAS_T=True, BLOCK=1024), 4))
    # attention_stats: keep / window / mask / float32 dot, three tilings
    common = dict(k_ptr="*bf16", sk_b="i64", sk_h="i64", sk_t="i64", mask_ptr="*u8", sm_b="i64", sm_i="i64",
                  sm_t="i64", Hkv="i32", G="i32", Lq="i32", T="i32", d="i32", scale="fp32", window="i32")
    for keep, f32, br, bd, bt in ((True, False, 16, 256, 16), (False, False, 32, 64, 64), (False, True, 32, 128, 32)):
        flags = dict(CAUSAL=True, HAS_WINDOW=not keep, HAS_MASK=f32, KEEP=keep, F32_DOT=f32, BLOCK_R=br,
                     BLOCK_T=bt, BLOCK_D=bd)
        qt = "*fp32" if f32 else "*bf16"
        out.append(_entry(A, "_attention_partial_kernel",
                          dict(q_ptr=qt, **common, seg="i32", state_ptr="*fp32", kept_ptr="*fp32"), flags, 4))
        out.append(_entry(A, "_attention_mass_kernel",
                          dict(q_ptr=qt, **common, lse_ptr="*fp32", kept_ptr="*fp32", mass_ptr="*fp32"), flags, 4))
    # draw: one program per row (S_PAD 2) and B = 1 at V = 262144 on a 132-SM GPU (256 segments)
    for s_pad, zs in ((2, "i32"), (256, "i64")):
        out.append(_entry(D, "_draw_kernel",
                          dict(z_ptr="*fp32", z_stride=zs, u_ptr="*fp64", out_ptr="*i64", part_ptr="*fp64",
                               cnt_ptr="*i32", V="i32", seg="i32", S="i32"),
                          dict(BLOCK=D.BLOCK, S_PAD=s_pad), 4))
    out.append(_entry(A, "_attention_finalize_kernel",
                      dict(state_ptr="*fp32", n_splits="i32", G="i32", lse_ptr="*fp32", ent_ptr="*fp32"),
                      dict(SPLITS_PAD=512, BLOCK_R=16), 4))
    return out


def _jit_kernels() -> set[str]:
    names = set()
    for mod in _kernel_modules():
        for name, obj in vars(mod).items():
            if name.endswith("_kernel") and hasattr(obj, "fn") and getattr(obj.fn, "__module__", None) == mod.__name__:
                names.add(f"{mod.__name__}.{name}")
    return names


def record(path: str) -> int:
    if os.environ.get("TRITON_INTERPRET") != "1":
        print("record needs TRITON_INTERPRET=1", file=sys.stderr)
        return 2
    rec = Recorder()
    with rec.patched():
        failures = drive(rec)
        counts = count_launches(rec)
    launches = list(rec.launches.values())
    seen = {f"{e['module']}.{e['kernel']}" for e in launches}  # by the drive (hand-listed ones do not count)
    missing = sorted(_jit_kernels() - seen)
    keys = {json.dumps(e, sort_keys=True, default=repr) for e in launches}
    hand = [e for e in hand_listed() if json.dumps(e, sort_keys=True, default=repr) not in keys]
    launches += hand
    with open(path, "w") as f:
        json.dump({"launches": launches, "host_failures": failures, "missing": missing, "counts": counts}, f,
                  indent=1, default=repr)
    print(f"recorded {len(launches) - len(hand)} launch variants of {len(seen)} kernels, {len(hand)} more listed "
          f"by hand; {len(failures)} host failures")
    for m in failures[:20]:
        print("  host:", m)
    print(launch_table(counts))
    if missing:
        print("kernels never launched by the drive (add them to tests/triton_launches.py):", *missing, sep="\n  ")
        return 1
    return 0


def count(path: str | None, reference_draw: bool = False) -> int:
    """The launch table alone (plan mode: fast); to ``path`` as JSON when given.

    ``reference_draw``: the Triton sample route draws with ``fuq.reference.sample_from`` (torch
    ops) instead of the Triton draw kernel, as before triton_kernels/draw.py (for before/after).
    """
    if os.environ.get("TRITON_INTERPRET") != "1":
        print("count needs TRITON_INTERPRET=1", file=sys.stderr)
        return 2
    if reference_draw:
        import fuq._library as lib
        from fuq import reference

        lib._triton_draw = lambda: reference.sample_from
        lib._triton_truncate_draw = lambda: None
    rec = Recorder()
    with rec.patched():
        rows = count_launches(rec)
    print(launch_table(rows))
    if path:
        with open(path, "w") as f:
            json.dump({"gpu_sms": GPU_SMS, "counts": rows}, f, indent=1)
    return 1 if any("error" in r for r in rows) else 0


# ---------------------------------------------------------------------------------------------
# compile


def _resources(ptx: str, arch: int) -> dict:
    """Registers, spill bytes and shared memory from ``ptxas -v`` on the kernel's PTX."""
    from triton.backends.nvidia.compiler import get_ptxas

    with tempfile.TemporaryDirectory() as tmp:
        src = os.path.join(tmp, "k.ptx")
        with open(src, "w") as f:
            f.write(ptx)
        r = subprocess.run(
            [
                get_ptxas(arch).path,
                "-v",
                f"--gpu-name=sm_{arch}{'a' if arch == 90 else ''}",
                src,
                "-o",
                os.path.join(tmp, "k.cubin"),
            ],
            capture_output=True,
            text=True,
        )
    text = r.stderr + r.stdout
    regs = re.search(r"Used (\d+) registers", text)
    spill = re.findall(r"(\d+) bytes spill (stores|loads)", text)
    smem = re.search(r"(\d+) bytes smem", text)
    return {
        "regs": int(regs.group(1)) if regs else -1,
        "spill_bytes": sum(int(n) for n, _ in spill),
        "smem": int(smem.group(1)) if smem else 0,
    }


def _why(ex: BaseException) -> str:
    """The innermost cause of a compile failure, in one line."""
    while ex.__cause__ is not None:
        ex = ex.__cause__
    last = ex.args[-1] if ex.args else ex
    return f"{type(ex).__name__}: {' '.join(str(last).split())[:400]}"


def cover(launches: list[dict]) -> list[dict]:
    """The recorded launches that bring a new constexpr combination or a new argument-type
    signature of their kernel: every constexpr variant and every signature gets compiled,
    without the cross product of the two (which only multiplies compile time)."""
    seen, out = set(), []
    for e in launches:
        keys = {
            json.dumps(["c", e["kernel"], e["constexprs"], e["options"]], sort_keys=True, default=repr),
            json.dumps(["s", e["module"], e["kernel"], e["signature"]], sort_keys=True),
        }
        if not keys <= seen:
            seen |= keys
            out.append(e)
    return out


def _compile_one(job: tuple[dict, int]) -> tuple[bool, str]:
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    e, arch = job
    fn = getattr(importlib.import_module(e["module"]), e["kernel"])
    consts = e["constexprs"]
    sig = dict(e["signature"], **{k: "constexpr" for k in consts})
    opts = dict(e["options"])
    name = f"{e['module'].rsplit('.', 1)[-1]}.{e['kernel']}"
    try:
        c = triton.compile(
            ASTSource(fn=fn, signature=sig, constexprs=consts), target=GPUTarget("cuda", arch, 32), options=opts
        )
        res = _resources(c.asm["ptx"], arch)
    except Exception as ex:  # noqa: BLE001 - every failure is reported, then the step fails
        return False, f"FAILED {name} sm_{arch} {consts}: {_why(ex)}"
    shared = max(res["smem"], int(getattr(c.metadata, "shared", 0) or 0))
    cs = ",".join(f"{k}={v}" for k, v in consts.items() if v is not None)
    return True, (
        f"{name:<44} {arch:>3} {opts.get('num_warps', 4):>5} {res['regs']:>4} {res['spill_bytes']:>7} {shared:>7}  {cs}"
    )


def compile_all(path: str, archs: list[int]) -> int:
    """Compile the cover of the recorded launches for every target, on all cores."""
    from concurrent.futures import ProcessPoolExecutor

    with open(path) as f:
        launches = json.load(f)["launches"]
    todo = cover(launches)
    jobs = [(e, arch) for arch in archs for e in todo]
    print(
        f"{len(launches)} recorded launch variants; compiling {len(todo)} (every constexpr combination and "
        f"every signature of each kernel) for sm_{', sm_'.join(map(str, archs))}"
    )
    print(f"{'kernel':<44} {'sm':>3} {'warps':>5} {'regs':>4} {'spill B':>7} {'smem B':>7}  constexprs")
    with ProcessPoolExecutor(max_workers=max(1, os.cpu_count() or 1)) as pool:
        results = list(pool.map(_compile_one, jobs, chunksize=4))
    for _, line in results:
        print(line)
    bad = sum(not ok for ok, _ in results)
    print(f"{len(jobs)} compiles ({len(todo)} variants x {len(archs)} targets), {bad} failed")
    return 1 if bad else 0


if __name__ == "__main__":
    if len(sys.argv) >= 3 and sys.argv[1] == "record":
        sys.exit(record(sys.argv[2]))
    if len(sys.argv) >= 2 and sys.argv[1] == "count":
        ref_draw = "--reference-draw" in sys.argv
        rest = [a for a in sys.argv[2:] if a != "--reference-draw"]
        if len(rest) <= 1:
            sys.exit(count(rest[0] if rest else None, ref_draw))
    if len(sys.argv) >= 4 and sys.argv[1] == "compile":
        sys.exit(compile_all(sys.argv[2], [int(a) for a in sys.argv[3:]]))
    print(__doc__)
    sys.exit(2)
