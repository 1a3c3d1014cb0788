import math

import pytest
import torch
import torch.nn.functional as F

from jointspace.config import ConfigError, load_config
from jointspace.losses import (
    LOSSES,
    BindingLoss,
    LossContext,
    TripletMargin,
    binding_pairs,
    build_pair_loss,
    clip_loss,
    positive_mask,
    siglip_loss,
)


def _reference_multi_positive(a, b, scale, mask):
    """Plain loops: for each anchor, mean over its positives of -log softmax; both directions averaged."""
    n, m = a.shape[0], b.shape[0]
    sim = [[scale * float(a[i] @ b[j]) for j in range(m)] for i in range(n)]

    def direction(s, msk):
        total = 0.0
        for i, row in enumerate(s):
            lse = math.log(sum(math.exp(x) for x in row))
            pos = [j for j in range(len(row)) if msk[i][j]]
            total += sum(lse - row[j] for j in pos) / len(pos)
        return total / len(s)

    sim_t = [[sim[i][j] for i in range(n)] for j in range(m)]
    mask_t = [[mask[i][j] for i in range(n)] for j in range(m)]
    return 0.5 * (direction(sim, mask) + direction(sim_t, mask_t))


def _emb(n, d=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    return F.normalize(torch.randn(n, d, generator=g, dtype=torch.float64), dim=-1)


def test_clip_loss_identity_matches_reference_and_open_clip_form():
    a, b = _emb(6, seed=1), _emb(6, seed=2)
    scale = torch.tensor(10.0, dtype=torch.float64)
    got = clip_loss(a, b, scale)
    eye = [[i == j for j in range(6)] for i in range(6)]
    assert got.item() == pytest.approx(_reference_multi_positive(a, b, 10.0, eye), rel=1e-10)
    logits = scale * a @ b.T
    labels = torch.arange(6)
    open_clip_form = (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)) / 2
    assert got.item() == pytest.approx(open_clip_form.item(), rel=1e-12)


def test_clip_loss_label_mask_matches_reference():
    a, b = _emb(7, seed=3), _emb(7, seed=4)
    labels = torch.tensor([0, 1, 0, 2, 1, 0, 3])
    mask = positive_mask({"label": labels}, "label")
    assert mask.sum() == 7 + 2 * 3 + 2  # three 0s, two 1s
    got = clip_loss(a, b, torch.tensor(5.0, dtype=torch.float64), mask)
    ref = _reference_multi_positive(a, b, 5.0, mask.tolist())
    assert got.item() == pytest.approx(ref, rel=1e-10)
    assert got.item() != pytest.approx(clip_loss(a, b, torch.tensor(5.0, dtype=torch.float64)).item())


def test_caption_mask_compares_token_rows():
    ids = torch.tensor([[1, 5, 2], [1, 5, 2], [1, 6, 2]])
    mask = positive_mask({"text": ids}, "caption", "text")
    assert mask.tolist() == [[True, True, False], [True, True, False], [False, False, True]]
    assert positive_mask({}, "instance") is None


def test_siglip_matches_reference():
    a, b = _emb(5, seed=5), _emb(5, seed=6)
    t, bias = 3.0, -1.5
    mask = torch.eye(5, dtype=torch.bool)
    mask[0, 3] = True
    got = siglip_loss(a, b, torch.tensor(t, dtype=torch.float64), torch.tensor(bias, dtype=torch.float64), mask)
    ref = 0.0
    for i in range(5):
        for j in range(5):
            z = 1.0 if mask[i, j] else -1.0
            ref += math.log(1 + math.exp(-z * (t * float(a[i] @ b[j]) + bias)))
    assert got.item() == pytest.approx(ref / 5, rel=1e-10)


def test_binding_pairs_and_weights():
    mods = ["image", "text", "audio"]
    assert binding_pairs(mods, anchor="image") == [("image", "text"), ("image", "audio")]
    assert binding_pairs(mods) == [("image", "text"), ("image", "audio"), ("text", "audio")]
    assert binding_pairs(mods, pairs=[("text", "audio")]) == [("text", "audio")]
    with pytest.raises(ValueError, match="anchor"):
        binding_pairs(mods, anchor="lidar")
    emb = {m: _emb(4, seed=i) for i, m in enumerate(mods)}
    scale = torch.tensor(4.0, dtype=torch.float64)
    loss_fn = BindingLoss(binding_pairs(mods, anchor="image"), weights={"audio": 0.5})
    total, parts = loss_fn(emb, None, LossContext(scale))
    expect = clip_loss(emb["image"], emb["text"], scale) + 0.5 * clip_loss(emb["image"], emb["audio"], scale)
    assert total.item() == pytest.approx(expect.item(), rel=1e-12)
    assert set(parts) == {"image-text", "image-audio"}


def _t(rows):
    return torch.tensor(rows, dtype=torch.float64)


def test_triplet_identity_hand_worked():
    # cosine distances d = 1 - a.b: [[0.4, 0], [0.2, 1]]; a->b: relu(.4-0+.5) = .9, relu(1-.2+.5) = 1.3;
    # b->a (d transposed): relu(.4-.2+.5) = .7, relu(1-0+.5) = 1.5; both directions average 1.1
    a, b = _t([[1, 0], [0, 1]]), _t([[0.6, 0.8], [1, 0]])
    loss = build_pair_loss("triplet", {"margin": 0.5})(a, b, None, LossContext(torch.tensor(1.0)))
    assert loss.item() == pytest.approx(1.1, rel=1e-12)


def test_triplet_label_mask_hand_worked():
    # labels [0, 0, 1]; d = [[0, 1, .2], [.4, .2, .04], [1, 0, .4]], margin .1. a->b triplets (i, p, q):
    # (0,0,2) -> 0, (0,1,2) .9, (1,0,2) .46, (1,1,2) .26, (2,2,0) -> 0, (2,2,1) .5: 2.12 / 6
    # b->a: (0,0,2) 0, (0,1,2) 0, (1,0,2) 1.1, (1,1,2) .3, (2,2,0) .3, (2,2,1) .46: 2.16 / 6
    a = _t([[1, 0], [0.6, 0.8], [0, 1]])
    b = _t([[1, 0], [0, 1], [0.8, 0.6]])
    mask = positive_mask({"label": torch.tensor([0, 0, 1])}, "label")
    loss = TripletMargin(TripletMargin.Params(margin=0.1))(a, b, mask, LossContext(torch.tensor(1.0)))
    assert loss.item() == pytest.approx(0.5 * (2.12 + 2.16) / 6, rel=1e-12)


@pytest.mark.parametrize("name", ["infonce", "triplet"])
def test_local_loss_of_two_ranks_averages_to_the_full_loss(name):
    """Identity positives: every anchor has as many candidates, so the ranks' local losses average to the
    loss of the whole batch (what DDP's gradient averaging then sees)."""
    a, b = _emb(6, seed=7), _emb(6, seed=8)
    scale = torch.tensor(5.0, dtype=torch.float64)
    full = build_pair_loss(name)(a, b, None, LossContext(scale))
    local = build_pair_loss(name, local_loss=True)
    parts = [local(a[r], b[r], None, LossContext(scale, rows=r, a_all=a, b_all=b)) for r in (slice(0, 3), slice(3, 6))]
    assert (sum(parts) / 2).item() == pytest.approx(full.item(), rel=1e-12)


def test_registry_names_and_params():
    assert {"infonce", "siglip", "triplet"} <= set(LOSSES)
    assert build_pair_loss("triplet", {"margin": 0.3}).params.margin == 0.3
    assert not LOSSES["triplet"].uses_scale and LOSSES["siglip"].uses_bias and LOSSES["siglip"].always_local
    with pytest.raises(ValueError, match="unknown loss 'nope'; choose from"):
        build_pair_loss("nope")
    with pytest.raises(ConfigError, match=r"loss\.name: .*unknown loss 'nope'"):
        load_config(None, ["loss.name=nope"])
    with pytest.raises(ConfigError, match=r"loss\.params\.margn: unknown field"):
        load_config(None, ["loss.name=triplet", "loss.params.margn=1"])
    with pytest.raises(ConfigError, match=r"loss\.params\.margin: Input should be greater than 0"):
        load_config(None, ["loss.name=triplet", "loss.params.margin=0"])
    assert load_config(None, ["loss.name=triplet", "loss.params.margin=0.3"]).loss.params == {"margin": 0.3}


def test_pml_loss_across_towers_matches_pml_with_ref_emb():
    from pytorch_metric_learning.losses import TripletMarginLoss

    from jointspace.losses.pml import mask_labels

    a, b = _emb(6, seed=9), _emb(6, seed=10)
    labels = torch.tensor([0, 1, 0, 2, 1, 0])
    mask = positive_mask({"label": labels}, "label")
    assert mask_labels(mask, 6, a.device).tolist() == [0, 1, 0, 3, 1, 0]
    assert mask_labels(None, 3, a.device).tolist() == [0, 1, 2]
    loss_fn = build_pair_loss("pml", {"loss": "TripletMarginLoss", "params": {"margin": 0.3}})
    got = loss_fn(a, b, mask, LossContext(torch.tensor(1.0)))
    ref = TripletMarginLoss(margin=0.3)
    expect = 0.5 * (ref(a, labels, ref_emb=b, ref_labels=labels) + ref(b, labels, ref_emb=a, ref_labels=labels))
    assert got.item() == pytest.approx(expect.item(), rel=1e-12) and got.item() > 0
    with pytest.raises(ValueError, match="loss.params.loss: .*no class 'Nope'"):
        build_pair_loss("pml", {"loss": "Nope"})
    with pytest.raises(ValueError, match="loss.params: ArcFaceLoss"):  # needs its classes: the metric task's
        build_pair_loss("pml", {"loss": "ArcFaceLoss"})
    with pytest.raises(ConfigError, match=r"loss\.params\.loss: Field required"):
        load_config(None, ["loss.name=pml"])
