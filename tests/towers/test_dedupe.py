"""Identical inputs encoded once: the loss and every gradient equal the plain batch's (float64), and
towers whose rows depend on the batch (BatchNorm, dropout) are never deduplicated."""

from __future__ import annotations

import copy

import torch

from jointspace.losses import BindingLoss, LossContext
from jointspace.model import JointModel
from jointspace.towers import build_tower
from jointspace.towers.dedupe import batch_independent, unique_rows


def _model(dedupe: bool) -> JointModel:
    torch.manual_seed(0)
    towers = {"image": build_tower("cnn", in_chans=1, channels=[4, 8], norm="group"),
              "text": build_tower("transformer", context_length=8, width=16, layers=1, heads=2)}
    return JointModel(towers, embed_dim=8, dedupe=dedupe).double()


def test_loss_and_gradients_equal_the_plain_path_in_float64():
    torch.manual_seed(1)
    captions = torch.randint(1, 400, (3, 8))
    captions[:, 5], captions[:, 6:] = 49407, 0
    rows = torch.tensor([0, 1, 0, 2, 2, 0, 1, 0, 0, 2, 1, 1])  # 12 samples, 3 distinct captions
    batch = {"image": torch.randn(12, 1, 8, 8, dtype=torch.float64), "text": captions[rows],
             "label": rows}
    batch["image"][7] = batch["image"][2]  # and one repeated image
    pos = rows[:, None] == rows[None, :]  # a positive mask is boolean (the loss inverts it)
    losses, grads = [], []
    for dedupe in (False, True):
        model = _model(dedupe).train()
        seen = []
        model.towers["text"].register_forward_hook(lambda mod, args, out, seen=seen: seen.append(len(args[0])))
        ctx = LossContext.from_logits(model.logits)
        loss, _ = BindingLoss([("image", "text")], "infonce")(model(batch), pos, ctx)
        loss.backward()
        losses.append(loss.detach())
        assert seen == ([3] if dedupe else [12])  # the text tower encoded each distinct caption once
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
    assert torch.allclose(losses[0], losses[1], rtol=0, atol=1e-12)
    assert grads[0].keys() == grads[1].keys()
    for name in grads[0]:
        assert torch.allclose(grads[0][name], grads[1][name], rtol=1e-10, atol=1e-12), name


def test_towers_that_depend_on_the_batch_are_not_deduplicated():
    bn = build_tower("cnn", in_chans=1, channels=[4], norm="batch").train()
    assert not batch_independent(bn) and batch_independent(copy.deepcopy(bn).eval())
    dropout = build_tower("transformer", context_length=8, width=16, layers=1, heads=2, dropout=0.1)
    assert not batch_independent(dropout.train()) and batch_independent(dropout.eval())
    assert batch_independent(build_tower("transformer", context_length=8, width=16, layers=1, heads=2).train())


def test_unique_rows_keeps_lengths_apart():
    x = torch.tensor([[1, 2], [1, 2], [3, 4]])
    first, inverse = unique_rows(x, torch.tensor([2, 1, 2]))  # the same values, other lengths: distinct
    assert len(first) == 3 and torch.equal(x[first][inverse], x)
    first, inverse = unique_rows(x)
    assert len(first) == 2 and torch.equal(x[first][inverse], x)
