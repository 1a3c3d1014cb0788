"""`jointspace export`: open_clip, hf and onnx exports round-trip to the run's embeddings."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from safetensors import safe_open
from typer.testing import CliRunner

from jointspace.cli import app
from jointspace.export import MANIFEST, export_run
from jointspace.runs import load_run, load_run_split, model_fingerprint
from jointspace.tasks.contrastive import train


def _test_batch(run):
    cfg, model, info = load_run(run)
    data = load_run_split(cfg, info, cfg.data.path, "test")
    return model, data.batch(torch.arange(len(data)))


@pytest.fixture
def clip_run(tiny_cfg, tiny_clip_file):
    """A contrastive run with open_clip towers of the tiny architecture, LoRA on the image tower."""
    name, path, _ = tiny_clip_file
    return train(tiny_cfg(
        "eval.linear_probe=false",
        f"model.towers.image={{name: openclip_image, params: {{model: {name}, pretrained: {path}}}, lora: {{r: 4}}}}",
        f"model.towers.text={{name: openclip_text, params: {{model: {name}, pretrained: {path}}}}}",
        name="clip", epochs=1), show_progress=False)


def test_open_clip_export_loads_in_open_clip_with_equal_features(clip_run, tiny_clip_file, tmp_path):
    """open_clip.create_model_and_transforms(arch, pretrained=FILE) and local-dir: give the run's features."""
    import open_clip

    arch = tiny_clip_file[0]
    manifest = export_run(clip_run, tmp_path / "oc", "open_clip")
    weights = tmp_path / "oc" / "open_clip_model.safetensors"
    fingerprint = model_fingerprint(clip_run)
    with safe_open(str(weights), "pt") as f:
        assert f.metadata()["jointspace_fingerprint"] == fingerprint
    assert json.loads((tmp_path / "oc" / MANIFEST).read_text())["jointspace_fingerprint"] == fingerprint
    model, batch = _test_batch(clip_run)
    tower = model.towers["image"]
    with torch.no_grad():
        ours_i, ours_t = model.encode("image", batch), model.encode("text", batch)
    pixels = (((batch["image"] + 1) / 2).expand(-1, 3, -1, -1) - tower.mean) / tower.std
    for name in (arch, f"local-dir:{tmp_path / 'oc'}"):
        clip, _, preprocess = open_clip.create_model_and_transforms(
            name, pretrained=str(weights) if name == arch else None)
        clip.eval()
        with torch.no_grad():
            theirs_i = F.normalize(clip.encode_image(pixels), dim=-1)
            theirs_t = F.normalize(clip.encode_text(batch["text"]), dim=-1)
        assert torch.allclose(ours_i, theirs_i, atol=1e-5), (ours_i - theirs_i).abs().max()
        assert torch.allclose(ours_t, theirs_t, atol=1e-5), (ours_t - theirs_t).abs().max()
        assert torch.allclose(clip.logit_scale, model.logits.log_scale)
        norm = preprocess.transforms[-1]  # open_clip's Normalize: the mean and std the tower used
        assert np.allclose(norm.mean, tower.mean.flatten().tolist()) and np.allclose(norm.std, tower.std.flatten().tolist())
    assert manifest["arch_loads_file"] and manifest["left_out"] == ["audio"]


def test_hf_export_loads_back_as_a_tower_and_trains(tiny_cfg, tiny_bert_dir, tmp_path):
    """Each modality folder rebuilds its tower + head (LoRA merged) and starts a new run's tower."""
    from jointspace.towers import build_tower

    cfg = tiny_cfg("eval.linear_probe=false", f"model.towers.text={{name: hf_text, params: {{path: {tiny_bert_dir[0]}}}, "
                   "lora: {r: 4}}", name="bert", epochs=1)
    run = train(cfg, show_progress=False)
    export_run(run, tmp_path / "hf", "hf")
    text_dir = tmp_path / "hf" / "text"
    config = json.loads((text_dir / "config.json").read_text())
    assert config["fingerprint"] == model_fingerprint(run) and config["tower"]["params"]["path"] == "backbone"
    assert (text_dir / "backbone" / "tokenizer.json").exists() and (text_dir / "preprocessor_config.json").exists()
    model, batch = _test_batch(run)
    for m in ("image", "text", "audio"):
        tower = build_tower("jointspace", pretrained=str(tmp_path / "hf" / m)).eval()
        with torch.no_grad():
            ours = model.encode(m, batch, normalize=False)
            theirs = tower(batch[m], batch.get(f"{m}_len"))
        assert torch.allclose(ours, theirs, atol=1e-6), m
    image_config = tmp_path / "hf" / "image" / "config.json"  # as exported when the head's `type` was `kind`
    old = json.loads(image_config.read_text())
    old["head"]["kind"] = old["head"].pop("type")
    image_config.write_text(json.dumps(old))
    with torch.no_grad():
        theirs = build_tower("jointspace", pretrained=str(image_config.parent)).eval()(batch["image"])
        assert torch.allclose(model.encode("image", batch, normalize=False), theirs, atol=1e-6)
    again = tiny_cfg("eval.linear_probe=false", "model.towers.text={name: jointspace, params: "
                     f"{{pretrained: {text_dir}}}, lora: {{r: 2}}}}", name="from-export", epochs=1)
    second = train(again, show_progress=False)
    assert json.loads((second / "run.json").read_text())["prep"]["tokenizers"]["text"] == f"hf:{text_dir / 'backbone'}"


def test_onnx_export_matches_torch_with_any_batch_size(tiny_cfg, tmp_path):
    """onnxruntime's embeddings of every modality (audio with lengths) equal torch's (atol 1e-4)."""
    import onnx
    import onnxruntime as ort

    run = train(tiny_cfg("eval.linear_probe=false", epochs=1), show_progress=False)
    result = CliRunner().invoke(app, ["export", str(run), "--format", "onnx", "--out", str(tmp_path / "onnx")])
    assert result.exit_code == 0, result.output
    assert "load it with" in result.output
    model, batch = _test_batch(run)
    for m in ("image", "text", "audio"):
        path = tmp_path / "onnx" / f"{m}.onnx"
        meta = {p.key: p.value for p in onnx.load(str(path)).metadata_props}
        assert meta["jointspace_fingerprint"] == model_fingerprint(run) and meta["modality"] == m
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        feed = {"input": batch[m].numpy()} | ({"lengths": batch[f"{m}_len"].numpy()} if m == "audio" else {})
        got = session.run(None, feed)[0]
        with torch.no_grad():
            ref = model.encode(m, batch).numpy()
        assert got.shape == ref.shape == (len(batch[m]), 16)
        assert np.allclose(got, ref, atol=1e-4), (m, abs(got - ref).max())


def test_export_refuses_clearly_and_writes_nothing(tiny_cfg, tmp_path):
    run = train(tiny_cfg("eval.linear_probe=false", epochs=1), show_progress=False)
    runner = CliRunner()
    result = runner.invoke(app, ["export", str(run), "--format", "open_clip", "--out", str(tmp_path / "x")])
    assert result.exit_code == 2 and "openclip_image" in result.output
    assert not (tmp_path / "x").exists() and not list(tmp_path.glob(".x.*"))
    (tmp_path / "y").mkdir()
    (tmp_path / "y" / "notes.txt").write_text("mine")
    result = runner.invoke(app, ["export", str(run), "--format", "hf", "--out", str(tmp_path / "y")])
    assert result.exit_code == 2 and "not an export" in result.output
    assert (tmp_path / "y" / "notes.txt").read_text() == "mine"
    (tmp_path / "y" / "jointspace_export.json").write_text('{"format": "hf"}')  # an earlier export: --overwrite
    result = runner.invoke(app, ["export", str(run), "--format", "hf", "--out", str(tmp_path / "y")])
    assert result.exit_code == 2 and "--overwrite" in result.output
    result = runner.invoke(app, ["export", str(run), "--format", "hf", "--out", str(run.parent)])
    assert result.exit_code == 2 and "would replace the source" in result.output
    result = runner.invoke(app, ["export", str(run), "--format", "tflite", "--out", str(tmp_path / "z")])
    assert result.exit_code == 2 and "open_clip, hf, onnx" in result.output
