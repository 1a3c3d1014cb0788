import json
import shutil

import pytest
import torch
from safetensors.torch import load_file

from jointspace.engine.checkpoint import latest_checkpoint, load_checkpoint
from jointspace.losses import BindingLoss
from jointspace.runs import config_prep
from jointspace.tasks.contrastive import NonFiniteLossError, accumulated_backward, train


def _weights(run_dir):
    return load_file(str(run_dir / "model.safetensors"))


def test_resume_continues_exactly(tiny_cfg):
    """4 epochs straight == 2 epochs, then resume from the epoch-2 checkpoint for 2 more."""
    cfg = tiny_cfg("train.keep_checkpoints=10", "model.towers.audio.params.dropout=0.2", epochs=4)
    full = train(cfg, show_progress=False)
    # A copy of the run as if it had been stopped after epoch 2.
    half = full.parent / "half"
    shutil.copytree(full, half)
    (half / "model.safetensors").unlink()
    (half / "checkpoints" / "latest.json").write_text(json.dumps({"name": "epoch_0002"}))
    for name in ("epoch_0003", "epoch_0004"):
        shutil.rmtree(half / "checkpoints" / name)
    resumed = train(cfg.model_copy(update={"name": "half"}), resume=True, show_progress=False)
    a, b = _weights(full), _weights(resumed)
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=1e-6, rtol=0, msg=k)
    assert any((a[k] - load_file(str(full / "checkpoints/epoch_0002/model.safetensors"))[k]).abs().max() > 1e-4
               for k in a if a[k].is_floating_point())


@pytest.mark.parametrize("loss", ["siglip", "triplet"])
def test_resume_from_a_checkpoint_with_the_old_logit_keys(tiny_cfg, loss):
    """A checkpoint written when the model held `logit_scale` / `logit_bias` (every loss had both) resumes
    exactly: they load into the loss's own parameters (a triplet loss has none: both are dropped)."""
    from safetensors.torch import save_file

    from jointspace.engine.checkpoint import CHECKSUMS, _file_sum

    cfg = tiny_cfg("train.keep_checkpoints=10", f"loss.name={loss}", name=f"old_keys_{loss}")
    full = train(cfg, show_progress=False)
    half = full.parent / f"{full.name}_half"
    shutil.copytree(full, half)
    (half / "model.safetensors").unlink()
    (half / "checkpoints" / "latest.json").write_text(json.dumps({"name": "epoch_0001"}))
    shutil.rmtree(half / "checkpoints" / "epoch_0002")
    ckpt = half / "checkpoints" / "epoch_0001"
    state = load_file(str(ckpt / "model.safetensors"))
    old = {k: v for k, v in state.items() if not k.startswith("logits.")}
    old["logit_scale"] = state.get("logits.log_scale", torch.tensor(2.0))
    old["logit_bias"] = state.get("logits.bias", torch.tensor(-10.0))
    save_file(old, str(ckpt / "model.safetensors"))
    sums = json.loads((ckpt / CHECKSUMS).read_text())
    (ckpt / CHECKSUMS).write_text(json.dumps({**sums, "model.safetensors": _file_sum(ckpt / "model.safetensors")}))
    resumed = train(cfg.model_copy(update={"name": half.name}), resume=True, show_progress=False)
    a, b = _weights(full), _weights(resumed)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_existing_run_is_not_overwritten_silently(tiny_cfg):
    cfg = tiny_cfg(epochs=1)
    train(cfg, show_progress=False)
    with pytest.raises(FileExistsError, match="--resume"):
        train(cfg, show_progress=False)


def test_nan_loss_stops_and_keeps_last_good_checkpoint(tiny_cfg, monkeypatch):
    cfg = tiny_cfg(epochs=3)
    calls = {"n": 0}
    real_forward = BindingLoss.forward

    def flaky(self, *args, **kwargs):
        loss, parts = real_forward(self, *args, **kwargs)
        calls["n"] += 1
        return (loss * float("nan") if calls["n"] > 5 else loss), parts  # 3 steps/epoch: NaN at step 5 (the val pass also counts)

    monkeypatch.setattr(BindingLoss, "forward", flaky)
    with pytest.raises(NonFiniteLossError, match=r"(?s)step 5 \(epoch 2\).*epoch_0001"):
        train(cfg, show_progress=False)
    ckpt = latest_checkpoint(cfg.run_dir / "checkpoints")
    assert ckpt is not None and ckpt.name == "epoch_0001"
    assert not (cfg.run_dir / "model.safetensors").exists()
    from jointspace.runs import build_from_info, read_run_info

    model = build_from_info(cfg, read_run_info(cfg.run_dir))
    state = load_checkpoint(ckpt, model)
    assert state["step"] == 3 and all(torch.isfinite(p).all() for p in model.parameters())


def test_accumulation_keeps_all_negatives(tiny_cfg):
    """Gradients with 4 micro-batches equal one full-batch backward (norm layers without batch stats)."""
    from jointspace.data.dataset import load_split
    from jointspace.losses import positive_mask
    from jointspace.runs import build_from_info

    cfg = tiny_cfg("model.towers.image.params.norm=group", "model.towers.audio.params.norm=group",
                   "model.towers.audio.params.dropout=0.0")
    data = load_split(cfg.data.path, "train", cfg.data.modalities, config_prep(cfg))
    info = {"kinds": data.kinds, "image_channels": 1}
    torch.manual_seed(0)
    model = build_from_info(cfg, info).double()
    batch = {k: (v.double() if v.is_floating_point() else v) for k, v in data.batch(torch.arange(32)).items()}
    mask = positive_mask(batch, "label")
    loss_fn = BindingLoss([("image", "text"), ("image", "audio")])

    import contextlib

    def grads(n_micro):
        model.zero_grad()
        micro = [{k: v[i] for k, v in batch.items()} for i in torch.arange(32).chunk(n_micro)]
        loss, _ = accumulated_backward(model, loss_fn, micro, mask, contextlib.nullcontext())
        return loss, {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    loss1, g1 = grads(1)
    loss4, g4 = grads(4)
    torch.testing.assert_close(loss1, loss4, atol=1e-10, rtol=0)
    assert g1.keys() == g4.keys() and "logits.log_scale" in g1
    for n in g1:
        torch.testing.assert_close(g1[n], g4[n], atol=1e-8, rtol=1e-6, msg=n)


def test_accumulation_updates_batchnorm_statistics_once_per_micro_batch(tiny_cfg):
    """The no-grad caching pass leaves BatchNorm running statistics alone: after an accumulated step they
    are those of the gradient passes only (one update per micro-batch), not of both passes."""
    import contextlib
    import copy

    from jointspace.data.dataset import load_split
    from jointspace.losses import positive_mask
    from jointspace.runs import build_from_info

    cfg = tiny_cfg()  # the image tower's CNN has BatchNorm
    data = load_split(cfg.data.path, "train", cfg.data.modalities, config_prep(cfg))
    torch.manual_seed(0)
    model = build_from_info(cfg, {"kinds": data.kinds, "image_channels": 1}).train()
    reference = copy.deepcopy(model)
    batch = data.batch(torch.arange(32))
    micro = [{k: v[i] for k, v in batch.items()} for i in torch.arange(32).chunk(2)]
    accumulated_backward(model, BindingLoss([("image", "text"), ("image", "audio")]), micro,
                         positive_mask(batch, "label"), contextlib.nullcontext())
    with torch.no_grad():
        for mb in micro:  # what the gradient passes alone do to the statistics
            reference(mb)
    norms = [(n, b) for n, b in model.named_buffers() if "running" in n or "num_batches" in n]
    assert norms and any("num_batches_tracked" in n for n, _ in norms)
    ref = dict(reference.named_buffers())
    for n, b in norms:
        torch.testing.assert_close(b, ref[n], rtol=0, atol=1e-6, msg=n)
    assert all(int(b) == 2 for n, b in norms if n.endswith("num_batches_tracked"))


@pytest.mark.parametrize("streaming", [False, True])
def test_mid_epoch_resume_is_exact(tiny_cfg, streaming):
    """Stopped after step 4 of 6 (mid epoch 2) and resumed == trained straight through."""
    cfg = tiny_cfg("train.checkpoint_every_steps=2", "train.keep_checkpoints=10",
                   "model.towers.audio.params.dropout=0.2", f"data.streaming={str(streaming).lower()}",
                   "data.shuffle_buffer=20", name=f"mid{int(streaming)}", epochs=2)
    full = train(cfg, show_progress=False)
    names = sorted(p.name for p in (full / "checkpoints").iterdir() if p.is_dir())
    assert "step_0000004" in names and "epoch_0001" in names
    half = full.parent / f"mid{int(streaming)}_half"
    shutil.copytree(full, half)
    (half / "model.safetensors").unlink()
    (half / "checkpoints" / "latest.json").write_text(json.dumps({"name": "step_0000004"}))
    resumed = train(cfg.model_copy(update={"name": half.name}), resume=True, show_progress=False)
    a, b = _weights(full), _weights(resumed)
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=1e-6, rtol=0, msg=k)
    steps = [json.loads(x)["step"] for x in (resumed / "metrics.jsonl").read_text().splitlines()
             if json.loads(x)["split"] == "train"]
    assert steps == [1, 2, 3, 4, 5, 6]  # the copy's log cut back to step 4, then the resumed steps: none twice


@pytest.mark.parametrize("loss", [("loss.name=triplet", "loss.params.margin=0.3"),
                                  ("loss.name=pml", "loss.params.loss=MultiSimilarityLoss")], ids=["triplet", "pml"])
def test_a_registered_loss_trains_by_name_and_has_no_parameter_it_does_not_read(tiny_cfg, loss):
    """loss.name picks any registered loss: these read no logit scale, so the model has none to train (the
    temperature logged is the constant initial one)."""
    cfg = tiny_cfg(*loss, name="other_loss", epochs=1)
    weights = _weights(train(cfg, show_progress=False))
    assert not [k for k in weights if k.startswith("logits.")]
    rows = [json.loads(x) for x in (cfg.run_dir / "metrics.jsonl").read_text().splitlines()]
    temperatures = [r["temperature"] for r in rows if "temperature" in r]
    assert temperatures and all(t == pytest.approx(cfg.model.init_temperature) for t in temperatures)
    assert any("loss/image-text" in r for r in rows if r.get("split") == "train")
