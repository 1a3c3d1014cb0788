"""Towers started from a finished contrastive run: whole model or one tower, frozen / full, LoRA merged,
mismatches and changed runs named."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from jointspace.config import load_config
from jointspace.runs import load_run, model_fingerprint
from jointspace.tasks.classify import ClassifyRunConfig, train_classifier
from jointspace.tasks.contrastive import train
from jointspace.tasks.init_from import resolve_init

TOWERS = ["model.embed_dim=8", "model.towers.image.name=cnn", "model.towers.image.params.channels=[4, 8]",
          "model.towers.text.name=transformer", "model.towers.text.params.width=16",
          "model.towers.text.params.layers=1", "model.towers.text.params.heads=2"]
COMMON = ["tracker=none", "data.modalities=[image, text]", "data.image_size=16", "train.epochs=1",
          "train.batch_size=16", "train.warmup_steps=0", "eval.linear_probe=false"]


@pytest.fixture(scope="module")
def joint_run(shapes_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("joint")
    cfg = load_config(None, [f"output_dir={out}", "name=joint", f"data.path={shapes_dir}", *COMMON, *TOWERS,
                             "model.towers.text.lora={r: 4, alpha: 8, targets: [self_attn.out_proj]}"])
    return train(cfg, show_progress=False)


def test_classifier_from_a_joint_space_frozen_tower_and_recorded_fingerprint(joint_run, shapes_dir, tmp_path):
    cfg = load_config(None, model=ClassifyRunConfig, overrides=[f"output_dir={tmp_path}", "name=clf", f"data.path={shapes_dir}", *COMMON,
                             "task=classify", "fusion.strategy=transformer", "fusion.token_dim=8", "fusion.heads=2",
                             f"model.init_from={joint_run}", "model.embed_dim=8",
                             ("model.towers.image={name: cnn, params: {channels: [4, 8]}, freeze: true, "
                             f"init_from: '{joint_run}#image'}}")])
    run = train_classifier(cfg, show_progress=False)
    src, got = load_file(str(joint_run / "model.safetensors")), load_file(str(run / "model.safetensors"))
    image = {k.removeprefix("towers.image."): v for k, v in src.items() if k.startswith("towers.image.")}
    for k, v in image.items():  # frozen: exactly the joint space's weights
        torch.testing.assert_close(got[f"encoders.towers.image.{k}"], v, rtol=0, atol=0, msg=k)
    info = json.loads((run / "run.json").read_text())
    assert info["init_from"] == {str(joint_run): model_fingerprint(joint_run)}
    saved = load_config(run / "config.yaml")  # the text tower's config came from the joint run
    assert saved.model.towers["text"].name == "transformer" and saved.model.towers["text"].params["width"] == 16


def test_lora_adapters_are_merged_into_the_started_tower(joint_run, shapes_dir):
    """The source text tower trained with LoRA; the started tower (plain, no adapters) computes the same."""
    cfg = load_config(None, [f"data.path={shapes_dir}", *COMMON, f"model.init_from={joint_run}", "model.embed_dim=8"])
    cfg, init = resolve_init(cfg, {"image": "image", "text": "text"})
    assert cfg.model.towers["text"].lora is None and set(init["towers"]) == {"image", "text"}
    from jointspace.model import build_model

    fresh = build_model(cfg.model, {"image": "image", "text": "text"}, None, init).eval()
    _, source, _ = load_run(joint_run)
    ids = torch.randint(1, 400, (3, 16))
    ids[:, -1] = 49407  # end of text
    with torch.no_grad():
        torch.testing.assert_close(fresh.encode("text", {"text": ids}), source.encode("text", {"text": ids}),
                                   rtol=1e-5, atol=1e-5)


def test_mismatched_architecture_and_changed_run_are_named(joint_run, shapes_dir, tmp_path):
    cfg = load_config(None, model=ClassifyRunConfig, overrides=[f"output_dir={tmp_path}", "name=bad", f"data.path={shapes_dir}", *COMMON, "task=classify",
                             "fusion.strategy=late", "model.embed_dim=8",
                             f"model.towers.image={{name: cnn, params: {{channels: [4, 16]}}, init_from: '{joint_run}#image'}}"])
    with pytest.raises(ValueError, match=r"model.towers.image: init_from .*parameter 'features\.\d+\.weight' has shape"):
        train_classifier(cfg, show_progress=False)
    pinned = cfg.model_copy(update={"model": cfg.model.model_copy(update={"towers": {}, "init_from": f"{joint_run}@0000"})})
    with pytest.raises(ValueError, match="fingerprint .* not 0000: it changed"):
        resolve_init(pinned, {"image": "image"})
