"""Fusion classifiers: output shapes, gradients reaching every tower, downsampling option, errors."""

import pytest
import torch
from torch import nn

from jointspace.config import ModelConfig
from jointspace.fusion import (
    EarlyFusion,
    FusionConfig,
    IntermediateFusion,
    LateFusion,
    TransformerFusion,
    build_fusion,
)

KINDS = {"image": "image", "lidar": "range"}
SHAPES = {"image": (3, 16, 16), "lidar": (1, 8, 24)}
MODEL = ModelConfig(embed_dim=8, towers={"image": {"name": "cnn", "params": {"channels": [4, 8]}},
                                         "lidar": {"name": "range_cnn", "params": {"channels": [4, 8]}}})
VARIANTS = {
    "early": {"strategy": "early"},
    "intermediate-concat": {"strategy": "intermediate", "merge": "concat"},
    "intermediate-add": {"strategy": "intermediate", "merge": "add"},
    "intermediate-multiply": {"strategy": "intermediate", "merge": "multiply", "merge_stage": 2},
    "late-embedding": {"strategy": "late", "combine": "embedding"},
    "late-logits": {"strategy": "late", "combine": "logits"},
    "transformer": {"strategy": "transformer", "token_dim": 8, "heads": 2, "layers": 1},
}


def _batch(n=5):
    torch.manual_seed(0)
    return {m: torch.randn(n, *s) for m, s in SHAPES.items()} | {"label": torch.arange(n) % 3}


def _per_modality_params(model: nn.Module) -> dict[str, list[nn.Parameter]]:
    """The parameters that only see one modality: towers/heads (late, transformer) or stems (intermediate)."""
    if isinstance(model, IntermediateFusion):
        return {m: list(s.parameters()) for m, s in model.stems.items()}
    return {m: list(model.encoders.towers[m].parameters()) + list(model.encoders.heads[m].parameters())
            for m in model.modalities}


@pytest.mark.parametrize("name", list(VARIANTS))
def test_output_shapes_and_gradients_reach_every_tower(name):
    cfg = FusionConfig(channels=[4, 8, 8], size=(8, 16), **VARIANTS[name])
    model = build_fusion(cfg, MODEL, KINDS, SHAPES, n_classes=3)
    batch = _batch()
    logits = model(batch)
    assert logits.shape == (5, 3)
    assert model.features(batch).ndim == 2 and model.features(batch).shape[0] == 5
    nn.functional.cross_entropy(logits, batch["label"]).backward()
    if isinstance(model, EarlyFusion):  # one CNN: its first conv sees both inputs' channels
        w = model.cnn.features[0].weight.grad
        assert w.shape[1] == 4 and (w[:, :3].abs().sum() > 0) and (w[:, 3:].abs().sum() > 0)
    else:
        for m, params in _per_modality_params(model).items():
            assert params and all(p.grad is not None for p in params), m
            assert sum(float(p.grad.abs().sum()) for p in params) > 0, m
    missing = [n for n, p in model.named_parameters() if p.grad is None]
    assert not missing


def test_intermediate_merges_at_the_chosen_stage():
    batch = _batch()
    for merge, width in (("concat", 16), ("add", 8), ("multiply", 8)):
        model = build_fusion(FusionConfig(strategy="intermediate", channels=[4, 8, 16], merge=merge, merge_stage=2,
                                          size=(8, 16)), MODEL, KINDS, SHAPES, 3)
        assert model.merged_map(batch).shape == (5, width, 4, 8)  # stage 2 of 3: resolution halved once
        assert model(batch).shape == (5, 3)


def test_transformer_uses_modality_tokens():
    model = build_fusion(FusionConfig(strategy="transformer", token_dim=8, heads=2, layers=1), MODEL, KINDS, SHAPES, 3)
    assert isinstance(model, TransformerFusion) and model.modality_embed.shape == (2, 8)
    assert model.features(_batch()).shape == (5, 8)


@pytest.mark.parametrize("strategy", ["early", "intermediate", "late", "transformer"])
def test_downsampling_option_reaches_every_conv(strategy):
    for down in ("maxpool", "stride"):
        model = build_fusion(FusionConfig(strategy=strategy, channels=[4, 8], downsample=down, token_dim=8, heads=2),
                             MODEL, KINDS, SHAPES, 3)
        pools = [m for m in model.modules() if isinstance(m, nn.MaxPool2d)]
        strided = [m for m in model.modules() if isinstance(m, nn.Conv2d) and m.stride == (2, 2)]
        assert (bool(pools), bool(strided)) == ((True, False) if down == "maxpool" else (False, True)), (strategy, down)
        assert model(_batch()).shape == (5, 3)


def test_late_fusion_works_for_non_spatial_modalities_and_early_refuses_them():
    kinds = {"image": "image", "audio": "sequence"}
    shapes = {"image": (3, 16, 16), "audio": (12, 13)}
    mcfg = ModelConfig(embed_dim=8, towers={"image": {"name": "cnn", "params": {"channels": [4]}},
                                            "audio": {"name": "frames_cnn", "params": {"channels": [8]}}})
    model = build_fusion(FusionConfig(strategy="late"), mcfg, kinds, shapes, 3)
    assert isinstance(model, LateFusion)
    batch = {"image": torch.randn(2, 3, 16, 16), "audio": torch.randn(2, 12, 13), "audio_len": torch.tensor([12, 5])}
    assert model(batch).shape == (2, 3)
    with pytest.raises(ValueError, match="audio"):
        build_fusion(FusionConfig(strategy="early"), mcfg, kinds, shapes, 3)
    with pytest.raises(ValueError, match="merge_stage"):
        IntermediateFusion({"a": 1, "b": 1}, (8, 8), 3, [4, 8], merge_stage=3)
