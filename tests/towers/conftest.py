"""Tiny pretrained-style towers saved to local files: an open_clip model and a BERT folder (no hub)."""

from __future__ import annotations

import json

import pytest
import torch

TINY_CLIP = "jointspace-tiny-clip"
TINY_CLIP_CFG = {
    "embed_dim": 16,
    "vision_cfg": {"image_size": 16, "layers": 2, "width": 32, "patch_size": 8, "head_width": 16},
    "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 2},
}


@pytest.fixture(scope="session")
def tiny_clip_file(tmp_path_factory):
    """(architecture name, checkpoint path, saved state_dict) of a random tiny open_clip CLIP."""
    import open_clip

    folder = tmp_path_factory.mktemp("openclip")
    (folder / f"{TINY_CLIP}.json").write_text(json.dumps(TINY_CLIP_CFG))
    open_clip.add_model_config(folder / f"{TINY_CLIP}.json")  # open_clip's way to add an architecture
    torch.manual_seed(0)
    model = open_clip.create_model(TINY_CLIP)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    torch.save(state, folder / "tiny.pt")
    return TINY_CLIP, str(folder / "tiny.pt"), state


@pytest.fixture(scope="session")
def tiny_bert_dir(tmp_path_factory):
    """A folder with a random tiny BertModel and MiniLM's tokenizer, written with save_pretrained."""
    from transformers import BertConfig, BertModel, BertTokenizerFast

    from jointspace.towers.hf_text import minilm_path

    folder = tmp_path_factory.mktemp("bert") / "tiny-bert"
    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                     intermediate_size=64, max_position_embeddings=64)
    model = BertModel(cfg)
    model.save_pretrained(folder)
    BertTokenizerFast.from_pretrained(minilm_path()).save_pretrained(folder)
    return folder, {k: v.clone() for k, v in model.state_dict().items()}
