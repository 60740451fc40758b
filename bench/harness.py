"""The one timing harness of fuq's benchmarks.

Each ``bench_X.py`` declares its cases and baselines and leaves the rest here:

* :func:`time_ms` times a callable properly: warm-up, then the median of repeats
  (``torch.utils.benchmark`` on the CPU, ``triton.testing.do_bench`` on CUDA, CUDA
  events if Triton is missing; ``clock="cpu"``: thread CPU time, for loaded machines);
* :func:`read_bandwidth_gbps` measures the machine's read bandwidth (a large ``sum``),
  the yardstick for the GB/s columns;
* :func:`print_table` prints a rich table; :func:`write_json` writes the results, with a
  description of the machine, to ``bench/results/<name>.json``.

Usage from a bench script::

    from harness import time_ms, print_table, write_json
    ms = time_ms(lambda: f(x), device=x.device)
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

RESULTS = Path(__file__).resolve().parent / "results"


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_ms(
    fn: Callable[[], Any],
    device: torch.device | str = "cpu",
    min_run_time: float = 0.5,
    warmup: int = 3,
    repeats: int = 1,
    clock: str = "wall",
) -> float:
    """Median wall time of ``fn()`` in milliseconds.

    Args:
        fn: the callable, run many times; it must not depend on its previous results.
        device: where ``fn`` runs; CUDA work is synchronised.
        min_run_time: seconds of measurement per repeat (CPU), or the ``rep`` budget
            in ms / 1000 (CUDA).
        warmup: calls before timing (compilation, caches, allocator).
        repeats: the CPU figure is the minimum over this many medians (a shared
            machine inflates some of them; the minimum is the least disturbed one).
        clock: ``"wall"``, or ``"cpu"``: :func:`cpu_time_ms` (CPU only, fair on a
            loaded machine; meaningful with ``torch.set_num_threads(1)``).
    """
    device = torch.device(device)
    for _ in range(warmup):
        fn()
    _sync(device)
    if clock == "cpu":
        return cpu_time_ms(fn, min_run_time=min_run_time)
    if device.type == "cuda":
        try:
            from triton.testing import do_bench
        except ImportError:
            return _cuda_event_ms(fn, device, min_run_time)
        return float(do_bench(fn, warmup=25, rep=max(50, int(min_run_time * 1000)), return_mode="median"))
    from torch.utils import benchmark

    best = float("inf")
    for _ in range(max(1, repeats)):
        # Timer runs single-threaded unless told: time with the threads the caller set.
        timer = benchmark.Timer(stmt="fn()", globals={"fn": fn}, num_threads=torch.get_num_threads())
        m = timer.blocked_autorange(min_run_time=min_run_time)
        best = min(best, m.median)
    return best * 1e3


def time_fixed_ms(
    fn: Callable[[], Any], iters: int, device: torch.device | str = "cpu", warmup: int = 3, clock: str = "wall"
) -> float:
    """Median time of ``fn()`` in ms over exactly ``iters`` calls after ``warmup`` calls.

    For callables that run collectives (``torch.distributed``): every rank must make the same
    number of calls, which the adaptive timers above do not guarantee. ``clock="cpu"``: this
    thread's CPU time (waiting for a peer or for a core is not counted).
    """
    now = time.thread_time if clock == "cpu" else time.perf_counter
    device = torch.device(device)
    for _ in range(warmup):
        fn()
    _sync(device)
    times = []
    for _ in range(iters):
        t0 = now()
        fn()
        _sync(device)
        times.append(now() - t0)
    times.sort()
    return times[len(times) // 2] * 1e3


def cpu_time_ms(fn: Callable[[], Any], min_run_time: float = 0.5) -> float:
    """Median CPU time of ``fn()`` in ms, on this thread's clock (``time.thread_time``).

    Time spent waiting for a core on a shared machine is not counted, so the figure
    is stable under load; it counts only the calling thread, so use it single-threaded
    (``torch.set_num_threads(1)``).
    """
    times: list[float] = []
    deadline = time.perf_counter() + min_run_time
    while time.perf_counter() < deadline or len(times) < 5:
        t0 = time.thread_time()
        fn()
        times.append(time.thread_time() - t0)
    times.sort()
    return times[len(times) // 2] * 1e3


def _cuda_event_ms(fn: Callable[[], Any], device: torch.device, min_run_time: float) -> float:
    times = []
    deadline = time.perf_counter() + min_run_time
    while time.perf_counter() < deadline or len(times) < 10:
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        fn()
        b.record()
        torch.cuda.synchronize(device)
        times.append(a.elapsed_time(b))
    times.sort()
    return times[len(times) // 2]


def gbps(nbytes: int, ms: float) -> float:
    """Bytes per millisecond as GB/s (10^9 bytes per second)."""
    return nbytes / (ms * 1e-3) / 1e9 if ms > 0 else float("nan")


def read_bandwidth_gbps(device: torch.device | str = "cpu", mib: int = 256) -> float:
    """The machine's read bandwidth: GB/s of ``x.sum()`` over a ``mib`` MiB float32 buffer."""
    device = torch.device(device)
    x = torch.ones(mib * 2**20 // 4, device=device)
    ms = time_ms(lambda: x.sum(), device=device, min_run_time=0.3)
    return gbps(x.numel() * 4, ms)


def machine() -> dict[str, Any]:
    """What the numbers were measured on."""
    info: dict[str, Any] = {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "cpu": _cpu_model(),
        "time_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "git": _git_commit(),
    }
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name()
    try:
        info["loadavg"] = os.getloadavg()
    except OSError:
        pass
    return info


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def _git_commit() -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            timeout=5,
            cwd=Path(__file__).resolve().parent,
        )
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def print_table(title: str, columns: Sequence[str], rows: Sequence[Sequence[Any]], caption: str | None = None) -> None:
    """Print ``rows`` under ``columns`` with rich (floats to 3 significant places)."""
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title, caption=caption)
    for i, c in enumerate(columns):
        table.add_column(c, justify="left" if i == 0 else "right")
    for r in rows:
        table.add_row(*(_fmt(v) for v in r))
    # Wide enough not to wrap when piped to a file (rich assumes 80 columns there).
    Console(width=None if os.isatty(1) else 200).print(table)


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        if v != v:
            return "-"
        return f"{v:.3g}" if abs(v) < 1000 else f"{v:.0f}"
    return str(v)


def write_json(name: str, payload: dict[str, Any]) -> Path:
    """Write ``payload`` plus :func:`machine` to ``bench/results/<name>.json``; returns the path."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps({"machine": machine(), **payload}, indent=2) + "\n")
    return path
