"""The scratch towers: output widths, masking of padded frames, registry errors."""

import pytest
import torch

from jointspace.towers import build_tower, list_towers


def test_registry_lists_and_rejects():
    assert {"cnn", "vit", "transformer", "frames_cnn", "range_cnn"} <= set(list_towers())
    with pytest.raises(ValueError, match="unknown tower 'resnet9000'"):
        build_tower("resnet9000")
    with pytest.raises(ValueError, match="unknown parameters \\['depht'\\]"):
        build_tower("vit", depht=2)


@pytest.mark.parametrize("downsample", ["maxpool", "stride"])
def test_cnn_and_range_cnn_shapes(downsample):
    cnn = build_tower("cnn", in_chans=3, channels=[8, 16, 32], downsample=downsample)
    assert cnn(torch.randn(2, 3, 32, 32)).shape == (2, cnn.out_dim) == (2, 32)
    lidar = build_tower("range_cnn", channels=[8, 16], downsample=downsample)
    assert lidar(torch.randn(2, 1, 32, 96)).shape == (2, 16)


def test_vit_is_timm_and_trains():
    vit = build_tower("vit", img_size=16, patch_size=4, in_chans=1, width=32, depth=1, heads=2)
    x = torch.randn(3, 1, 16, 16)
    out = vit(x)
    assert out.shape == (3, 32) and type(vit.vit).__module__.startswith("timm")
    out.sum().backward()
    assert all(p.grad is not None for p in vit.parameters() if p.requires_grad)


def test_frames_cnn_ignores_padding():
    tower = build_tower("frames_cnn", in_features=4, channels=[8], kernel=1, dropout=0.0).eval()
    x = torch.randn(1, 5, 4)
    padded = torch.cat([x, torch.randn(1, 3, 4) * 100], dim=1)  # garbage after the valid frames
    a = tower(x, torch.tensor([5]))
    b = tower(padded, torch.tensor([5]))
    torch.testing.assert_close(a, b)


def test_text_transformer_pools_eot_and_ignores_padding():
    tower = build_tower("transformer", context_length=8, width=16, layers=1, heads=2).eval()
    ids = torch.tensor([[49406, 320, 1125, 49407, 0, 0, 0, 0]])
    assert tower(ids).shape == (1, 16)
    torch.testing.assert_close(tower(ids), tower(ids[:, :4]))  # padding is masked out
    other = torch.tensor([[49406, 320, 1126, 49407, 0, 0, 0, 0]])
    assert not torch.allclose(tower(ids), tower(other))
