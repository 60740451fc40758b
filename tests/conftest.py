"""Shared test setup: Triton runs interpreted on the CPU when there is no GPU."""

import os

import torch

if not torch.cuda.is_available():
    # Must be set before any @triton.jit kernel is defined (i.e. imported).
    os.environ.setdefault("TRITON_INTERPRET", "1")
