"""AdamW as built for training: fused where torch has the kernel, the same update as the per-tensor loop."""

import torch
from torch import nn

from jointspace.config import TrainConfig
from jointspace.engine.optim import build_optimizer


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Embedding(50, 8), nn.LayerNorm(8), nn.Linear(8, 4))


def test_fused_on_cpu_by_default_and_same_update_as_the_loop():
    cfg = TrainConfig(lr=1e-2, weight_decay=0.1)
    fused_model, loop_model = _model(), _model()
    fused, loop = build_optimizer(fused_model, cfg), build_optimizer(loop_model, cfg, fused=False)
    assert fused.defaults["fused"] is True and not loop.defaults.get("fused")
    assert [g["weight_decay"] for g in fused.param_groups] == [0.1, 0.0]  # no decay on norms and biases
    ids = torch.randint(0, 50, (16, 5))
    for _ in range(5):
        for model, opt in ((fused_model, fused), (loop_model, loop)):
            opt.zero_grad()
            model(ids).square().mean().backward()
            opt.step()
    for a, b in zip(fused_model.parameters(), loop_model.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    moved = sum((a - b).abs().sum() for a, b in zip(fused_model.parameters(), _model().parameters(), strict=True))
    assert moved > 0.1  # the steps did update the weights
