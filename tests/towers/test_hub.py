"""Pretrained weights by name, offline, through a real Hugging Face cache folder built here (no mocks):
`models--<org>--<name>/snapshots/<rev>/<files>` + `refs/main`, loaded with HF_HUB_OFFLINE=1."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from jointspace.towers import build_tower
from jointspace.towers.hub import MissingWeightsError

from .conftest import TINY_CLIP_CFG

REV = "0123456789abcdef0123456789abcdef01234567"


def cached_repo(cache: Path, repo_id: str) -> Path:
    """The snapshot folder of `repo_id` in a hub cache, with refs/main pointing at it."""
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    (repo / "refs").mkdir(parents=True, exist_ok=True)
    (repo / "refs" / "main").write_text(REV)
    snap = repo / "snapshots" / REV
    snap.mkdir(parents=True, exist_ok=True)
    return snap


@pytest.fixture(autouse=True)
def _offline():
    assert os.environ.get("HF_HUB_OFFLINE") == "1"  # set by tests/conftest.py and the Makefile


def test_hf_text_by_hub_id(tmp_path, tiny_bert_dir):
    from transformers import BertModel, BertTokenizerFast

    folder, state = tiny_bert_dir
    snap = cached_repo(tmp_path / "hub", "jointspace-test/tiny-bert")
    BertModel.from_pretrained(folder).save_pretrained(snap)
    BertTokenizerFast.from_pretrained(folder).save_pretrained(snap)
    tower = build_tower("hf_text", path="jointspace-test/tiny-bert", cache_dir=str(tmp_path / "hub"))
    loaded = tower.model.state_dict()
    for k, v in state.items():
        torch.testing.assert_close(loaded[k], v, atol=0, rtol=0, msg=k)
    from jointspace.config import ModelConfig
    from jointspace.model import text_tokenizers

    params = {"path": "jointspace-test/tiny-bert", "cache_dir": str(tmp_path / "hub")}
    spec = text_tokenizers(ModelConfig(towers={"text": {"name": "hf_text", "params": params}}))["text"]
    assert spec == f"hf:{snap}"


def test_hf_image_by_hub_id_with_its_processor(tmp_path):
    from transformers import ViTConfig, ViTImageProcessor, ViTModel

    torch.manual_seed(0)
    model = ViTModel(ViTConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                               image_size=16, patch_size=8))
    snap = cached_repo(tmp_path / "hub", "jointspace-test/tiny-vit")
    model.save_pretrained(snap)
    ViTImageProcessor(size={"height": 16, "width": 16}, image_mean=[0.1, 0.2, 0.3],
                      image_std=[0.5, 0.6, 0.7]).save_pretrained(snap)
    tower = build_tower("hf_image", path="jointspace-test/tiny-vit", cache_dir=str(tmp_path / "hub")).eval()
    for k, v in model.state_dict().items():
        torch.testing.assert_close(tower.model.state_dict()[k], v, atol=0, rtol=0, msg=k)
    assert tower.size == (16, 16) and tower.mean.flatten().tolist() == pytest.approx([0.1, 0.2, 0.3])
    x = torch.rand(2, 3, 16, 16) * 2 - 1
    with torch.no_grad():
        ref = model.eval()(pixel_values=((x + 1) / 2 - tower.mean) / tower.std).pooler_output
        torch.testing.assert_close(tower(x), ref)
    assert tower(torch.rand(2, 1, 24, 24)).shape == (2, 32)  # grey, another size: resized and expanded


def _clip_state(name: str) -> dict:
    import open_clip

    torch.manual_seed(1)
    return {k: v.clone().contiguous() for k, v in open_clip.create_model(name).state_dict().items()}


def test_openclip_tag_through_the_pretrained_registry(tmp_path, tiny_clip_file):
    """A tag registered in open_clip's own registry, its weights in the hub cache: loaded by tag."""
    import open_clip.pretrained as ocp

    name, _, _ = tiny_clip_file
    ocp._PRETRAINED.setdefault(name, {})["jointspace_test"] = {"hf_hub": "jointspace-test/tiny-clip/",
                                                               "mean": (0.5,) * 3, "std": (0.5,) * 3}
    state = _clip_state(name)
    save_file(state, str(cached_repo(tmp_path / "hub", "jointspace-test/tiny-clip") / "open_clip_model.safetensors"))
    image = build_tower("openclip_image", model=name, pretrained="jointspace_test", cache_dir=str(tmp_path / "hub"))
    for k, v in image.visual.state_dict().items():
        torch.testing.assert_close(v, state[f"visual.{k}"], atol=0, rtol=0, msg=k)
    with pytest.raises(MissingWeightsError) as err:  # the same tag with an empty cache, offline
        build_tower("openclip_image", model=name, pretrained="jointspace_test", cache_dir=str(tmp_path / "empty"))
    msg = str(err.value)
    for part in ("jointspace_test", "jointspace-test/tiny-clip", str(tmp_path / "empty"), "HF_HUB_OFFLINE=1",
                 "hf download"):
        assert part in msg, (part, msg)
    with pytest.raises(FileNotFoundError, match="its tags: .*jointspace_test"):
        build_tower("openclip_image", model=name, pretrained="no_such_tag")


def test_openclip_hf_hub_id(tmp_path, tiny_clip_file):
    from jointspace.kinds.text import make_tokenizer
    from jointspace.towers.openclip import _tokenizer_spec

    name, _, _ = tiny_clip_file
    state = _clip_state(name)
    snap = cached_repo(tmp_path / "hub", "jointspace-test/tiny-clip-hub")
    save_file(state, str(snap / "open_clip_model.safetensors"))
    (snap / "open_clip_config.json").write_text(json.dumps({"model_cfg": TINY_CLIP_CFG, "preprocess_cfg": {}}))
    params = {"pretrained": "hf-hub:jointspace-test/tiny-clip-hub", "cache_dir": str(tmp_path / "hub")}
    text = build_tower("openclip_text", **params)
    assert torch.equal(text.text.token_embedding.weight, state["token_embedding.weight"])
    ids = make_tokenizer(16, _tokenizer_spec(params))(["a cube"])
    assert ids.shape == (1, 16) and text(ids).shape == (1, 16)
    with pytest.raises(MissingWeightsError, match="jointspace-test/nothing-here"):
        build_tower("openclip_text", pretrained="hf-hub:jointspace-test/nothing-here", cache_dir=str(tmp_path / "hub"))


def test_hf_id_missing_offline_names_what_to_fetch(tmp_path):
    with pytest.raises(MissingWeightsError) as err:
        build_tower("hf_text", path="bert-base-uncased", cache_dir=str(tmp_path / "hub"))
    assert "bert-base-uncased" in str(err.value) and "hf download bert-base-uncased" in str(err.value)


def test_towers_command_lists_pretrained_tags():
    from typer.testing import CliRunner

    from jointspace.cli import app

    out = " ".join(CliRunner().invoke(app, ["towers"], env={"COLUMNS": "300"}).output.split())
    assert "laion2b_s34b_b79k" in out and "hf-hub:org/name" in out and "Hugging Face model id" in out
