"""Partial unlocking (`unlocked_groups`, `freeze_norms`) and layer-wise lr decay (`layer_decay`): exactly the
expected parameters train, each at base lr x decay^(depth from the top) in the library's own layer groups."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file

from jointspace.config import TowerConfig, TrainConfig
from jointspace.config.base import ConfigError
from jointspace.engine.optim import build_optimizer, build_scheduler
from jointspace.errors import UsageError
from jointspace.model import JointModel, tune_tower
from jointspace.towers import build_tower

LR, DECAY = 1e-3, 0.5


def tuned(name: str, params: dict, **fields) -> torch.nn.Module:
    tower = build_tower(name, **params)
    tune_tower(tower, TowerConfig(name=name, params=params, **fields))
    return tower


def trainable(module: torch.nn.Module) -> set[str]:
    return {n for n, p in module.named_parameters() if p.requires_grad}


def assert_lrs(model: JointModel, scale_of) -> None:
    """Every trainable parameter sits in one group at LR x scale_of(its name in the tower) (heads and the
    logit scale at LR), with weight decay only on matrices."""
    names = {id(p): n for n, p in model.named_parameters()}
    opt = build_optimizer(model, TrainConfig(lr=LR, weight_decay=0.1))
    seen = []
    for group in opt.param_groups:
        for p in group["params"]:
            name = names[id(p)]
            scale = scale_of(name.removeprefix("towers.image.")) if name.startswith("towers.") else 1.0
            assert group["lr"] == pytest.approx(LR * scale), name
            assert group["weight_decay"] == (0.1 if p.ndim >= 2 else 0.0), name
            seen.append(name)
    assert sorted(seen) == sorted(n for n, p in model.named_parameters() if p.requires_grad)
    assert opt.param_groups[0]["lr"] == LR  # the logged lr (group 0) is the base one


def clip_depth(name: str) -> int:
    """Depth from the top of open_clip's lock() groups of a 2-block tower: projection | block 1 + final norm
    | block 0 | stem (conv1, class and positional embeddings, ln_pre; text: the embeddings)."""
    if name in ("visual.proj", "text.text_projection"):
        return 0
    if ".resblocks.1." in name or ".ln_post." in name or ".ln_final." in name:
        return 1
    return 2 if ".resblocks.0." in name else 3


@pytest.mark.parametrize("side", ["image", "text"])
def test_openclip_towers_unlock_as_openclip_lock(tiny_clip_file, side):
    import open_clip

    arch, path, _ = tiny_clip_file
    tower = tuned(f"openclip_{side}", {"model": arch, "pretrained": path}, unlocked_groups=2, layer_decay=DECAY)
    reference = open_clip.create_model(arch, force_custom_text=True, load_weights=False)
    if side == "image":
        reference.visual.lock(unlocked_groups=2)
    else:
        reference.text.lock(2)
    prefix = "visual." if side == "image" else "text."
    expected = {n for n, p in reference.named_parameters() if p.requires_grad and n.startswith(prefix)}
    assert trainable(tower) == expected
    assert expected == {n for n, _ in tower.named_parameters() if clip_depth(n) <= 1}  # by hand: the top 2 groups
    assert_lrs(JointModel({"image": tower}, embed_dim=8), lambda n: DECAY ** clip_depth(n))


def test_timm_vit_unlocks_and_decays_as_timm():
    from timm.optim import param_groups_layer_decay

    params = {"img_size": 8, "patch_size": 4, "width": 16, "depth": 2, "heads": 2}
    tower = tuned("vit", params, unlocked_groups=3, layer_decay=DECAY)
    # by hand: stem (embeddings) | block 0 | block 1 | fc_norm; the last 3 train
    assert trainable(tower) == {n for n, _ in tower.named_parameters() if n.startswith(("vit.blocks.", "vit.fc_norm."))}
    fresh = build_tower("vit", **params).vit
    timm_scale = {id(p): g["lr_scale"] for g in param_groups_layer_decay(fresh, layer_decay=DECAY) for p in g["params"]}
    reference = {f"vit.{n}": timm_scale[id(p)] for n, p in fresh.named_parameters()}  # timm's own layer decay
    assert reference["vit.blocks.0.attn.qkv.weight"] == DECAY ** 2 and reference["vit.fc_norm.weight"] == 1.0
    assert_lrs(JointModel({"image": tower}, embed_dim=8), reference.__getitem__)


def test_hf_bert_groups_follow_its_layer_list_and_freeze_norms(tiny_bert_dir):
    tower = tuned("hf_text", {"path": str(tiny_bert_dir[0])}, unlocked_groups=2, freeze_norms=True, layer_decay=DECAY)
    names = [n for n, _ in tower.named_parameters()]

    def depth(name: str) -> int:  # by hand: embeddings | encoder.layer.0 | encoder.layer.1 | pooler
        return 0 if ".pooler." in name else 1 if ".layer.1." in name else 2 if ".layer.0." in name else 3

    assert {n.split(".")[1] for n in names if depth(n) == 3} == {"embeddings"}
    assert trainable(tower) == {n for n in names if depth(n) <= 1}
    model = JointModel({"image": tower}, embed_dim=8)
    assert_lrs(model, lambda n: DECAY ** depth(n))
    model.train()
    in_eval = {n for n, m in tower.named_modules() if isinstance(m, torch.nn.LayerNorm) and not m.training}
    assert in_eval == {"model.embeddings.LayerNorm", "model.encoder.layer.0.attention.output.LayerNorm",
                       "model.encoder.layer.0.output.LayerNorm"}  # the locked part's norms only


def test_efficientnet_stages_and_frozen_batchnorm_statistics():
    tower = tuned("efficientnet_lite0", {"size": 32, "pretrained": False}, unlocked_groups=1, freeze_norms=True)
    blocks = [sorted({int(n.split(".")[2]) for n, _ in g}) for g in tower.layer_groups()[1:-1]]
    assert blocks == [[0], [1, 2], [3, 4], [5, 6, 7], [8, 9, 10], [11, 12, 13, 14], [15]]  # Lite0's stage repeats
    assert trainable(tower) == {"net._conv_head.weight", "net._bn1.weight", "net._bn1.bias"}  # the head group
    model = JointModel({"image": tower}, embed_dim=8).train()
    stem, head = tower.net._bn0.running_mean.clone(), tower.net._bn1.running_mean.clone()
    model.encode("image", {"image": torch.rand(4, 3, 32, 32) * 2 - 1})
    assert torch.equal(tower.net._bn0.running_mean, stem)  # a locked BatchNorm keeps its statistics
    assert not torch.equal(tower.net._bn1.running_mean, head)  # the unlocked one updates them


@pytest.mark.parametrize(("fields", "message"), [
    (["model.towers.image.freeze=true", "model.towers.image.unlocked_groups=1"], "unlocked_groups and freeze"),
    (["model.towers.image.lora={r: 4}", "model.towers.image.layer_decay=0.8"], "layer_decay and lora"),
    (["model.towers.image.freeze_norms=true"], "freeze_norms needs unlocked_groups"),
    (["model.towers.image.layer_decay=1.5"], "layer_decay"),
])
def test_senseless_combinations_are_refused(tiny_cfg, fields, message):
    with pytest.raises(ConfigError, match=message):
        tiny_cfg(*fields)


def test_a_tower_without_groups_is_named():
    with pytest.raises(UsageError, match="tower 'cnn' has no layer groups"):
        tuned("cnn", {"channels": [4]}, layer_decay=DECAY)


def test_training_moves_only_the_unlocked_groups_and_resumes_exactly(tiny_cfg):
    from jointspace.runs import build_from_info, read_run_info
    from jointspace.tasks.contrastive import train

    cfg = tiny_cfg("model.towers.image={name: vit, params: {width: 16, depth: 2, heads: 2, patch_size: 8}, "
                   "unlocked_groups: 2, freeze_norms: true, layer_decay: 0.5}",
                   "eval.linear_probe=false", "eval.zero_shot=false", "train.keep_checkpoints=10", epochs=2)
    full = train(cfg, show_progress=False)
    torch.manual_seed(cfg.seed)
    init = build_from_info(cfg, read_run_info(full)).state_dict()
    final = load_file(str(full / "model.safetensors"))
    tower = {k.removeprefix("towers.image.vit."): v for k, v in final.items() if k.startswith("towers.image.")}
    unlocked = {k for k in tower if k.startswith(("blocks.1.", "fc_norm."))}
    assert unlocked and len(tower) > len(unlocked)
    for k, v in tower.items():
        assert torch.equal(v, init[f"towers.image.vit.{k}"]) == (k not in unlocked), k
    half = full.parent / "half"  # the run as if stopped after epoch 1, then resumed
    shutil.copytree(full, half)
    (half / "model.safetensors").unlink()
    (half / "checkpoints" / "latest.json").write_text(json.dumps({"name": "epoch_0001"}))
    shutil.rmtree(half / "checkpoints" / "epoch_0002")
    resumed = load_file(str(train(cfg.model_copy(update={"name": "half"}), resume=True, show_progress=False)
                            / "model.safetensors"))
    for k in final:
        torch.testing.assert_close(resumed[k], final[k], atol=1e-6, rtol=0, msg=k)


def test_schedule_scales_every_group():
    tower = tuned("vit", {"img_size": 8, "patch_size": 4, "width": 16, "depth": 2, "heads": 2}, layer_decay=DECAY)
    opt = build_optimizer(JointModel({"image": tower}, embed_dim=8), TrainConfig(lr=LR, warmup_steps=4))
    sched = build_scheduler(opt, TrainConfig(lr=LR, warmup_steps=4), total_steps=10)
    for _ in range(2):
        opt.step()
        sched.step()
    assert [g["lr"] for g in opt.param_groups] == pytest.approx([LR * g["lr_scale"] * 3 / 4 for g in opt.param_groups])
    assert sorted({g["lr_scale"] for g in opt.param_groups}) == [DECAY ** 3, DECAY ** 2, DECAY, 1.0]


def test_hf_vit_groups_end_with_its_final_norm_and_pooler(tmp_path):
    from transformers import ViTConfig, ViTImageProcessor, ViTModel

    ViTModel(ViTConfig(hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=32,
                       image_size=8, patch_size=4)).save_pretrained(tmp_path)
    ViTImageProcessor(size={"height": 8, "width": 8}).save_pretrained(tmp_path)
    tower = tuned("hf_image", {"path": str(tmp_path)}, unlocked_groups=1, layer_decay=DECAY)
    tops = {n.split(".")[1] for n in trainable(tower)}
    assert tops == {"layernorm", "pooler"}  # by hand: embeddings | encoder.layer.0 | encoder.layer.1 | the rest

    def depth(name: str) -> int:
        return 1 if ".layer.1." in name else 2 if ".layer.0." in name else 3 if ".embeddings." in name else 0

    assert_lrs(JointModel({"image": tower}, embed_dim=8), lambda n: DECAY ** depth(n))
