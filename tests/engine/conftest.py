"""The `counted` fixture: host reads inside every engine step (tests/engine/test_no_host_sync.py, test_cuda.py)."""

from __future__ import annotations

import pytest
import torch
from torch.overrides import TorchFunctionMode

from jointspace.engine import loop

READS = {
    torch.Tensor.item, torch.Tensor.tolist, torch.Tensor.cpu, torch.Tensor.numpy, torch.Tensor.__bool__,
    torch.Tensor.__int__, torch.Tensor.__float__, torch.Tensor.__index__, torch.unique, torch.Tensor.unique,
    torch.unique_consecutive, torch.nonzero, torch.Tensor.nonzero, torch.masked_select,
    torch.Tensor.masked_select, torch.argwhere, torch.Tensor.argwhere, torch.Tensor.any, torch.Tensor.all,
}


class CountReads(TorchFunctionMode):
    """Counts the calls that read tensor values back to the host (or make shapes depend on them)."""

    def __init__(self):
        super().__init__()
        self.seen: list[str] = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if func in READS:
            self.seen.append(getattr(func, "__name__", str(func)))
        return func(*args, **(kwargs or {}))


@pytest.fixture
def counted(monkeypatch):
    """Every optimizer step of the runs trained in the test runs under CountReads; one count per step."""
    counts: list[list[str]] = []
    plain = loop.Engine.optimizer_step

    def step(self, batch, epoch):
        with CountReads() as mode:
            out = plain(self, batch, epoch)
        counts.append(mode.seen)
        return out

    monkeypatch.setattr(loop.Engine, "optimizer_step", step)
    return counts
