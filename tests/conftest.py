"""Shared test setup: Triton runs interpreted on the CPU when there is no GPU; what is slow is marked.

``python -m pytest -q`` runs everything (CI, the README's test command); ``python -m pytest -q
-m "not slow"`` is the fast local run. ``slow`` is set here on every test with one of the
cost markers below (declared in pyproject.toml), so a test says what it costs once.
"""

import os

import pytest
import torch

if not torch.cuda.is_available():
    # Must be set before any @triton.jit kernel is defined (i.e. imported).
    os.environ.setdefault("TRITON_INTERPRET", "1")


@pytest.fixture(scope="module")
def one_thread():
    """One torch thread for a module's tests (``pytestmark = pytest.mark.usefixtures("one_thread")``).

    Small models gain nothing from threads, and on a shared, loaded CPU two OpenMP threads make
    their small forwards up to ~10x slower (barriers wait for a descheduled thread).
    """
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


#: markers that say a test costs seconds to minutes: each one implies ``slow``
SLOW_MARKERS = ("aot", "distributed", "fuzz", "model", "subprocess", "triton_interp")


def pytest_collection_modifyitems(config, items):
    for item in items:
        if any(item.get_closest_marker(m) is not None for m in SLOW_MARKERS):
            item.add_marker(pytest.mark.slow)
