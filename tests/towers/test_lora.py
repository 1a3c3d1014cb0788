"""LoRA placement (only the named projections get adapters), exactness, freezing, checkpointing."""

from __future__ import annotations

import pytest
import torch
from peft.tuners.lora.layer import Linear as LoraLinear
from peft.tuners.lora.layer import MultiheadAttention as LoraMHA
from torch import nn

from jointspace.towers import build_tower
from jointspace.towers.lora import ProjectedAttention, apply_lora


def _adapted(module: nn.Module) -> dict[str, nn.Module]:
    return {n: m for n, m in module.named_modules() if hasattr(m, "lora_A")}


def test_openclip_adapters_only_on_attention_output_projections(tiny_clip_file):
    name, path, _ = tiny_clip_file
    tower = build_tower("openclip_image", model=name, pretrained=path).eval()
    x = torch.rand(3, 1, 8, 8) * 2 - 1
    ref = tower(x).detach()
    names = apply_lora(tower, tower.default_lora_targets, r=4, alpha=8)
    assert names == [f"visual.transformer.resblocks.{i}.attn.out_proj" for i in range(2)]
    adapted = _adapted(tower)
    assert sorted(adapted) == names and all(isinstance(m, LoraLinear) for m in adapted.values())
    assert all(isinstance(tower.get_submodule(n.rsplit(".", 1)[0]), ProjectedAttention) for n in names)
    trainable = {n for n, p in tower.named_parameters() if p.requires_grad}
    assert trainable == {f"{n}.lora_{ab}.default.weight" for n in names for ab in "AB"}
    # same function as nn.MultiheadAttention while B = 0, and the adapter is really on the path
    torch.testing.assert_close(tower(x), ref, atol=1e-6, rtol=0)
    with torch.no_grad():
        adapted[names[0]].lora_B["default"].weight.normal_(std=0.1)  # not constant: LayerNorm removes that
    assert (tower(x) - ref).abs().max() > 1e-3


def test_hf_adapters_only_on_attention_output_dense(tiny_bert_dir):
    folder, _ = tiny_bert_dir
    tower = build_tower("hf_text", path=str(folder))
    names = apply_lora(tower, tower.default_lora_targets, r=2)
    assert names == [f"model.encoder.layer.{i}.attention.output.dense" for i in range(2)]
    assert sorted(_adapted(tower)) == names  # not the FFN's `output.dense`, not q/k/v
    assert all(("lora_" in n) == p.requires_grad for n, p in tower.named_parameters())


def test_whole_multihead_attention_target_uses_peft_mha(tiny_clip_file):
    name, path, _ = tiny_clip_file
    tower = build_tower("openclip_text", model=name, pretrained=path)
    apply_lora(tower, ["attn"], r=2)
    adapted = _adapted(tower)
    assert {n for n, m in adapted.items() if isinstance(m, LoraMHA)} == {
        f"text.transformer.resblocks.{i}.attn" for i in range(2)}


def test_unknown_target_names_itself(tiny_bert_dir):
    tower = build_tower("hf_text", path=str(tiny_bert_dir[0]))
    with pytest.raises(ValueError, match="'q_proj' matches no module"):
        apply_lora(tower, ["q_proj"])


def test_lora_step_with_grad_checkpointing_keeps_base_weights(tiny_clip_file):
    """One optimizer step through checkpointed blocks: adapters move, frozen weights stay bit-identical."""
    name, path, _ = tiny_clip_file
    for kind, x in (("openclip_image", torch.rand(4, 3, 16, 16) * 2 - 1),
                    ("openclip_text", torch.randint(1, 4000, (4, 12)))):
        tower = build_tower(kind, model=name, pretrained=path)
        apply_lora(tower, tower.default_lora_targets, r=4)
        tower.set_grad_checkpointing(True)
        tower.train()
        before = {n: p.detach().clone() for n, p in tower.named_parameters()}
        opt = torch.optim.AdamW([p for p in tower.parameters() if p.requires_grad], lr=1e-2)
        for _ in range(2):
            opt.zero_grad()
            tower(x).pow(2).sum().backward()
            opt.step()
        after = dict(tower.named_parameters())
        changed = {n for n in before if not torch.equal(before[n], after[n].detach())}
        assert changed and all("lora_" in n for n in changed), kind
        assert all(p.grad is None for n, p in after.items() if "lora_" not in n)


def test_freeze_locks_tower_and_keeps_it_in_eval_mode():
    from jointspace.config import ModelConfig
    from jointspace.kinds import Prep
    from jointspace.model import build_model

    cfg = ModelConfig(embed_dim=8, towers={"image": {"name": "cnn", "params": {"channels": [4]}, "freeze": True}})
    model = build_model(cfg, {"image": "image", "text": "text"}, Prep(channels={"image": 1}, context_length=8))
    model.train()
    assert not any(p.requires_grad for p in model.towers["image"].parameters())
    assert all(p.requires_grad for p in model.heads["image"].parameters())
    assert not model.towers["image"].training and model.towers["text"].training
    with pytest.raises(ValueError, match="model.towers.image: freeze and lora"):
        build_model(ModelConfig(towers={"image": {"name": "cnn", "freeze": True, "lora": {"targets": ["x"]}}}),
                    {"image": "image"})
