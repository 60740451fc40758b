"""Shared test setup: Triton runs interpreted on the CPU when there is no GPU."""

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
