"""Test-only vLLM V1 logits processors that save the logits rows vLLM hands them.

``extra_args={"capture": NAME}`` makes them write each step's row to
``$FUQ_VLLM_CAPTURE/NAME-<raw|cut>-<pos>.pt`` (pos: the output index of the token being chosen).
``CaptureRaw`` is not argmax-invariant: vLLM calls it with the raw logits, before its
temperature and before the argmax-invariant processors. ``CaptureCut`` is argmax-invariant:
placed after ``fuq.vllm.Truncation`` in ``logits_processors`` it sees the truncated logits
(vLLM calls argmax-invariant processors only in batches that sample).
Importable by the engine process (vLLM's spawned engine gets the parent's ``sys.path``).
"""

from __future__ import annotations

import os

import torch
from vllm.v1.sample.logits_processor import LogitsProcessor


class _Capture(LogitsProcessor):
    tag = ""
    invariant = False

    @classmethod
    def validate_params(cls, sampling_params):
        name = (sampling_params.extra_args or {}).get("capture")
        if name is not None and not isinstance(name, str):
            raise ValueError("capture must be a str")

    def __init__(self, vllm_config, device, is_pin_memory):
        self.rows: dict[int, tuple[str, list[int]]] = {}

    def is_argmax_invariant(self) -> bool:
        return self.invariant

    def update_state(self, batch_update):
        if batch_update is None:
            return
        for i in batch_update.removed:
            self.rows.pop(i, None)
        for i, params, _prompt, out in batch_update.added:
            name = (params.extra_args or {}).get("capture")
            self.rows.pop(i, None)
            if name is not None:
                self.rows[i] = (name, out)
        for a, b, direction in batch_update.moved:
            sa, sb = self.rows.pop(a, None), self.rows.pop(b, None)
            if direction.name == "SWAP":
                if sa is not None:
                    self.rows[b] = sa
                if sb is not None:
                    self.rows[a] = sb
            elif sa is not None:
                self.rows[b] = sa

    def apply(self, logits: torch.Tensor) -> torch.Tensor:
        folder = os.environ["FUQ_VLLM_CAPTURE"]
        for i, (name, out) in self.rows.items():
            if i < logits.shape[0]:
                torch.save(logits[i].clone(), os.path.join(folder, f"{name}-{self.tag}-{len(out)}.pt"))
        return logits


class CaptureRaw(_Capture):
    tag = "raw"
    invariant = False


class CaptureCut(_Capture):
    tag = "cut"
    invariant = True
