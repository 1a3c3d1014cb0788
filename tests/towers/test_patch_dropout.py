"""Patch dropout (`model.towers.<m>.patch_dropout`) through open_clip's and timm's own PatchDropout: in
training the first transformer block sees the prefix tokens plus `max(1, int(n * (1 - p)))` of the n
patch tokens (the libraries' rule), each an unchanged row of the full sequence; in evaluation the output
equals the tower's without patch dropout bit for bit; towers without it refuse in one line."""

from __future__ import annotations

import json

import pytest
import torch

from jointspace.config import ConfigError, ModelConfig, load_config, save_config
from jointspace.kinds import Prep
from jointspace.model import build_model
from jointspace.towers import build_tower
from jointspace.towers.dedupe import batch_independent

PD_CLIP = "jointspace-pdrop-clip"  # 32 px images in 8 px patches: 16 patch tokens + the class token
PD_RN = "jointspace-pdrop-rn"  # open_clip's ModifiedResNet: no patch tokens to drop
N_PATCHES = 16
TEXT_CFG = {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1}
VISION_CFGS = {PD_CLIP: {"image_size": 32, "layers": 2, "width": 32, "patch_size": 8, "head_width": 16},
               PD_RN: {"image_size": 32, "layers": [1, 1, 1, 1], "width": 8, "head_width": 8}}


@pytest.fixture(scope="module")
def pd_clip(tmp_path_factory):
    """Registers tiny open_clip architectures (open_clip's own way) and returns the ViT's name."""
    import open_clip

    folder = tmp_path_factory.mktemp("pdrop")
    for name, vision in VISION_CFGS.items():
        (folder / f"{name}.json").write_text(json.dumps({"embed_dim": 16, "vision_cfg": vision, "text_cfg": TEXT_CFG}))
        open_clip.add_model_config(folder / f"{name}.json")
    return PD_CLIP


def _openclip(name):
    torch.manual_seed(0)
    tower = build_tower("openclip_image", model=name)
    return tower, tower.visual.transformer.resblocks[0], lambda: tower.visual.patch_dropout


def _timm(global_pool):
    torch.manual_seed(0)
    tower = build_tower("vit", img_size=32, patch_size=8, width=32, depth=2, heads=2, global_pool=global_pool)
    return tower, tower.vit.blocks[0], lambda: tower.vit.patch_drop


TOWERS = {"openclip_image": (lambda name: _openclip(name), 1), "vit token": (lambda _: _timm("token"), 1),
          "vit avg": (lambda _: _timm("avg"), 0)}  # builder, prefix tokens (class token or none)


@pytest.mark.parametrize("which", list(TOWERS))
@pytest.mark.parametrize("p", [0.5, 0.75, 0.2])
def test_training_drops_patches_and_keeps_the_prefix(pd_clip, which, p):
    build, prefix = TOWERS[which]
    tower, first_block, drop_module = build(pd_clip)
    tower.set_patch_dropout(p)
    seen, dropped = [], []
    first_block.register_forward_pre_hook(lambda m, args: seen.append(args[0].shape))
    drop_module().register_forward_hook(lambda m, args, out: dropped.append((args[0], out)))
    x = torch.rand(3, 3, 32, 32) * 2 - 1
    tower.train()
    tower(x)
    kept = max(1, int(N_PATCHES * (1 - p)))  # open_clip's and timm's rule (floor): 8, 4 and 12 (not 13) here
    assert seen == [torch.Size([3, prefix + kept, 32])]
    full, out = dropped[0]
    assert full.shape[1] == prefix + N_PATCHES
    assert torch.equal(out[:, :prefix], full[:, :prefix])  # the class token is never dropped
    for b in range(3):  # every kept token is one distinct, unchanged patch token of the full sequence
        match = (out[b, prefix:, None, :] == full[b, None, prefix:, :]).all(-1)
        assert (match.sum(1) == 1).all() and (match.sum(0) <= 1).all()
    tower.eval()
    seen.clear()
    tower(x)
    assert seen == [torch.Size([3, prefix + N_PATCHES, 32])]


@pytest.mark.parametrize("which", list(TOWERS))
def test_eval_output_equals_the_tower_without_patch_dropout(pd_clip, which):
    tower, _, _ = TOWERS[which][0](pd_clip)
    x = torch.rand(4, 3, 32, 32) * 2 - 1
    with torch.no_grad():
        plain_train = tower(x)  # (torch's MultiheadAttention takes another kernel in eval mode: compare alike)
        plain = tower.eval()(x)
        tower.set_patch_dropout(0.5)
        tower.train()
        tower.eval()  # and back: nothing is dropped in eval mode
        assert torch.equal(tower(x), plain)
        tower.train()
        assert tower(x).shape == plain.shape and not torch.equal(tower(x), plain_train)
        tower.set_patch_dropout(0.0)
        assert torch.equal(tower(x), plain_train)  # p = 0 restores the library's Identity


def _model(p: float) -> torch.nn.Module:
    torch.manual_seed(0)
    params = {"img_size": 32, "patch_size": 8, "width": 32, "depth": 2, "heads": 2}
    cfg = ModelConfig(embed_dim=8, towers={"image": {"name": "vit", "params": params, "patch_dropout": p}})
    return build_model(cfg, {"image": "image"}, Prep(channels={"image": 3}))


def test_model_applies_it_and_eval_equals_no_dropout_with_duplicates():
    """Through build_model: eval embeddings (identical rows deduplicated) equal the p = 0 model's; in
    training the tower is not batch-independent, so duplicates are not merged while tokens are dropped."""
    with_pd, without = _model(0.5), _model(0.0)
    x = torch.rand(3, 3, 32, 32) * 2 - 1
    batch = {"image": torch.cat([x, x[:1], x[:1], x[:1]])}  # 6 rows, 3 distinct
    with_pd.eval(), without.eval()
    assert batch_independent(with_pd.towers["image"])
    with torch.no_grad():
        assert torch.equal(with_pd.encode("image", batch), without.encode("image", batch))
    with_pd.train(), without.train()
    assert not batch_independent(with_pd.towers["image"]) and batch_independent(without.towers["image"])
    with torch.no_grad():
        emb = with_pd.encode("image", batch)
    assert not torch.equal(emb[3], emb[4])  # the same image, different patches kept


@pytest.mark.parametrize(("kind", "name"), [("image", "cnn"), ("text", "transformer")])
def test_tower_without_patch_dropout_refuses(kind, name):
    cfg = ModelConfig(embed_dim=8, towers={kind: {"name": name, "patch_dropout": 0.5}})
    with pytest.raises(ValueError, match=rf"^model\.towers\.{kind}: tower '{name}' does not support patch_dropout"):
        build_model(cfg, {kind: kind}, Prep(channels={"image": 3}, context_length=8))


def test_refusals_in_one_line(pd_clip):
    torch.manual_seed(0)
    resnet = build_tower("openclip_image", model=PD_RN)
    with pytest.raises(ValueError, match="^patch_dropout: open_clip's ModifiedResNet image tower has no patch dropout"):
        resnet.set_patch_dropout(0.5)
    frozen = ModelConfig(towers={"image": {"name": "vit", "freeze": True, "patch_dropout": 0.5}})
    with pytest.raises(ValueError, match="^model.towers.image: patch_dropout has no effect on a frozen tower"):
        build_model(frozen, {"image": "image"})
    for bad in ("1.0", "-0.1"):
        with pytest.raises(ConfigError, match=r"model\.towers\.image\.patch_dropout"):
            load_config(None, ["model.towers.image.name=vit", f"model.towers.image.patch_dropout={bad}"])


def test_config_round_trip(tmp_path):
    cfg = load_config(None, ["model.towers.image.name=vit", "model.towers.image.patch_dropout=0.5"])
    assert cfg.model.towers["image"].patch_dropout == 0.5
    assert load_config(None, ["model.towers.image.name=vit"]).model.towers["image"].patch_dropout == 0.0
    save_config(cfg, tmp_path / "c.yaml")
    assert load_config(tmp_path / "c.yaml") == cfg


def test_training_run_with_patch_dropout(tiny_cfg):
    """A run trains with it (tokens dropped in training steps) and evaluates (none dropped); the run
    reloads with the same module."""
    from timm.layers import PatchDropout

    from jointspace.evaluate.runner import evaluate_run
    from jointspace.runs import load_run
    from jointspace.tasks.contrastive import train

    cfg = tiny_cfg("model.towers.image={name: vit, params: {width: 16, depth: 1, heads: 2, patch_size: 4}, "
                   "patch_dropout: 0.5}", "eval.linear_probe=false", epochs=1)
    tokens = []
    run = train(cfg, show_progress=False)
    _, model, _ = load_run(run)
    vit = model.towers["image"].vit
    assert isinstance(vit.patch_drop, PatchDropout) and vit.patch_drop.prob == 0.5
    vit.blocks[0].register_forward_pre_hook(lambda m, args: tokens.append(args[0].shape[1]))
    model.train()
    model.encode("image", {"image": torch.zeros(2, vit.patch_embed.proj.in_channels, *vit.patch_embed.img_size)})
    assert tokens == [vit.patch_embed.num_patches // 2]  # global_pool avg: no class token
    assert evaluate_run(run)["retrieval"]["text->image"]["R@1"] >= 0
