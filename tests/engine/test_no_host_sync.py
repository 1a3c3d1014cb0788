"""A training step never waits for the device: inside the engine's optimizer step nothing reads a tensor
back to the host (no .item(), bool(t), .tolist(), .cpu(), data-dependent shapes). Loss, gradient norm
and the non-finite check are read on the steps that log, after the step."""

from __future__ import annotations

import pytest
import torch

from jointspace.tasks.contrastive import NonFiniteLossError, train


@pytest.mark.parametrize("extra", [(), ("train.accum_steps=2",), ("loss.name=siglip",), ("loss.positives=caption",)],
                          ids=["plain", "accumulated", "siglip", "caption"])
def test_a_training_step_reads_nothing_back(tiny_cfg, counted, extra):
    cfg = tiny_cfg("train.log_every=2", "model.towers.text.params.dropout=0.0", *extra, name="sync", epochs=1)
    train(cfg, show_progress=False)
    assert len(counted) == 3
    assert counted == [[], [], []], counted


def test_dedupe_is_planned_on_the_host_and_still_used(tiny_cfg, counted, monkeypatch):
    """Label positives repeat captions: the host plan sends only the distinct captions through the tower."""
    from jointspace.model import JointModel

    sizes = []
    plain = JointModel.encode

    def encode(self, modality, batch, normalize=True, plan=None):
        if plan is not None and modality == "text" and modality in plan:
            sizes.append((len(plan[modality][0]), len(batch[modality])))
        return plain(self, modality, batch, normalize, plan)

    monkeypatch.setattr(JointModel, "encode", encode)
    cfg = tiny_cfg("model.towers.text.params.dropout=0.0", "train.batch_size=48", name="dedupe", epochs=2)
    train(cfg, show_progress=False)
    assert len(sizes) == 2 and all(distinct < rows == 48 for distinct, rows in sizes), sizes
    assert counted == [[], []]


def test_a_non_finite_loss_is_found_when_the_engine_reads_and_names_its_step(tiny_cfg, monkeypatch):
    """The check is deferred to the log step, yet the error names the first bad step and no checkpoint
    holds weights after it."""
    from jointspace.losses import BindingLoss

    plain = BindingLoss.forward
    calls = {"n": 0}

    def forward(self, emb, positives, ctx):
        loss, parts = plain(self, emb, positives, ctx)
        calls["n"] += 1
        return (loss * float("nan") if calls["n"] == 6 else loss), parts  # step 5 (validation is call 4)

    monkeypatch.setattr(BindingLoss, "forward", forward)
    cfg = tiny_cfg("train.log_every=6", "train.checkpoint_every_steps=2", name="nan", epochs=2)
    with pytest.raises(NonFiniteLossError, match=r"at step 5 \(epoch 2\).*last good checkpoint: .*step_0000004"):
        train(cfg, show_progress=False)  # found at step 6, the log step
    saved = sorted(p.name for p in (cfg.run_dir / "checkpoints").iterdir() if p.is_dir())
    assert saved == ["epoch_0001", "step_0000004"]


def test_the_next_batch_is_prepared_before_the_step_runs():
    from jointspace.tasks.batches import one_ahead, to_device

    drawn = []
    items = one_ahead(drawn.append(i) or i for i in range(3))
    assert next(items) == 0 and drawn == [0, 1]
    assert list(items) == [1, 2] and drawn == [0, 1, 2]
    host = torch.ones(2)
    assert to_device(host, torch.device("cpu")) is host


def test_a_step_with_a_guide_and_a_teacher_reads_nothing_back(tiny_cfg, counted):
    """The reference run embeds the batch at the widths it is given and the guide's exclusions are masks."""
    teacher = train(tiny_cfg("model.embed_dim=8", name="teacher", epochs=1), show_progress=False)
    counted.clear()
    cfg = tiny_cfg("train.log_every=2", "model.towers.text.params.dropout=0.0", "train.accum_steps=2",
                   f"loss.guide={teacher}", f"loss.distill={{teacher: {teacher}}}", name="sync_ref", epochs=1)
    train(cfg, show_progress=False)
    assert counted == [[], [], []], counted
