"""A guide run's exclusions (GISTEmbed's rule) against hand-worked masks and by-hand losses over the kept
entries; the distillation term against torch ops written out and open_clip's DistillClipLoss."""

import math

import pytest
import torch
import torch.nn.functional as F

from jointspace.errors import UsageError
from jointspace.losses import (
    BindingLoss,
    Exclusions,
    LossContext,
    build_pair_loss,
    clip_loss,
    distill_loss,
    guide_exclusions,
    siglip_loss,
)

# A guide's similarities of a_i (rows) and b_j (columns), written by hand; the diagonal scores each pair.
GUIDE = torch.tensor([[0.90, 0.95, 0.10, 0.85],
                      [0.20, 0.80, 0.85, 0.10],
                      [0.30, 0.40, 0.70, 0.60],
                      [0.50, 0.10, 0.20, 0.60]])


def _bool(rows):
    return torch.tensor(rows, dtype=torch.bool)


def test_guide_mask_by_hand_absolute_margin_zero():
    """a_i leaves out b_j where GUIDE[i, j] > GUIDE[i, i]; b_j leaves out a_i where GUIDE[i, j] > GUIDE[j, j]
    (strictly: GUIDE[2, 3] = GUIDE[3, 3] = 0.6 stays a negative of b_3)."""
    out = guide_exclusions(GUIDE, None, 0.0, "absolute")
    assert out.ab.tolist() == _bool([[0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 0], [0, 0, 0, 0]]).tolist()
    assert out.ba.tolist() == _bool([[0, 0, 0, 0], [1, 0, 0, 0], [0, 1, 0, 0], [1, 0, 0, 0]]).tolist()


def test_guide_mask_by_hand_margins_and_positives():
    # absolute 0.25: thresholds 0.65, 0.55, 0.45, 0.35 by row (a -> b) and by column (b -> a)
    out = guide_exclusions(GUIDE, None, 0.25, "absolute")
    assert out.ab.tolist() == _bool([[0, 1, 0, 1], [0, 0, 1, 0], [0, 0, 0, 1], [1, 0, 0, 0]]).tolist()
    assert out.ba.tolist() == _bool([[0, 0, 0, 0], [1, 0, 0, 0], [0, 1, 0, 0], [1, 0, 1, 0]]).tolist()
    # relative 0.5: thresholds 0.45, 0.40, 0.35, 0.30 (pos - |pos| x 0.5)
    out = guide_exclusions(GUIDE, None, 0.5, "relative")
    assert out.ab.tolist() == _bool([[0, 1, 0, 1], [0, 0, 1, 0], [0, 1, 0, 1], [1, 0, 0, 0]]).tolist()
    assert out.ba.tolist() == _bool([[0, 0, 0, 1], [1, 0, 0, 0], [0, 1, 0, 0], [1, 0, 1, 0]]).tolist()
    # positives (a_0 and b_1 share a label, a_1 and b_0 too) are never left out: they stay positives
    labels = torch.tensor([0, 0, 1, 2])
    out = guide_exclusions(GUIDE, labels[:, None] == labels[None, :], 0.25, "absolute")
    assert out.ab.tolist() == _bool([[0, 0, 0, 1], [0, 0, 1, 0], [0, 0, 0, 1], [1, 0, 0, 0]]).tolist()
    assert out.ba.tolist() == _bool([[0, 0, 0, 0], [0, 0, 0, 0], [0, 1, 0, 0], [1, 0, 1, 0]]).tolist()


def test_relative_margin_is_sign_safe():
    """A negative positive score: threshold pos - |pos| x margin = -0.2 - 0.1 (pos x (1 - margin) would be
    -0.1, above -0.25)."""
    sim = torch.tensor([[-0.20, -0.25], [-0.50, 0.40]])
    assert guide_exclusions(sim, None, 0.5, "relative").ab.tolist() == [[False, True], [False, False]]


def _emb(n, d=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    return F.normalize(torch.randn(n, d, generator=g), dim=-1)


def _by_hand_infonce(a, b, scale, ex: Exclusions, pos):
    """Plain loops: for each anchor, mean over its positives of -(logit_p - logsumexp over kept entries)."""
    sim = [[scale * float(a[i] @ b[j]) for j in range(len(b))] for i in range(len(a))]

    def direction(s, left, msk):
        total = 0.0
        for i, row in enumerate(s):
            kept = [x for j, x in enumerate(row) if not left[i][j]]
            lse = math.log(sum(math.exp(x) for x in kept))
            ps = [j for j in range(len(row)) if msk[i][j]]
            total += sum(lse - row[j] for j in ps) / len(ps)
        return total / len(s)

    sim_t = [list(col) for col in zip(*sim)]
    return 0.5 * (direction(sim, ex.ab.tolist(), pos.tolist()) + direction(sim_t, ex.ba.tolist(), pos.T.tolist()))


@pytest.mark.parametrize("labelled", [False, True], ids=["instance", "label"])
def test_masked_infonce_is_a_log_softmax_over_the_kept_entries(labelled):
    a, b = _emb(4, seed=1), _emb(4, seed=2)
    labels = torch.tensor([0, 0, 1, 2])
    pos = labels[:, None] == labels[None, :] if labelled else torch.eye(4, dtype=torch.bool)
    ex = guide_exclusions(GUIDE, pos, 0.25, "absolute")
    a.requires_grad_(True)
    got = clip_loss(a, b, torch.tensor(10.0), pos if labelled else None, excluded=ex)
    plain = clip_loss(a.detach(), b, torch.tensor(10.0), pos if labelled else None)
    assert got.item() == pytest.approx(_by_hand_infonce(a.detach(), b, 10.0, ex, pos), rel=1e-5)
    assert got.item() != pytest.approx(plain.item(), rel=1e-3)
    got.backward()
    assert torch.isfinite(a.grad).all()
    # data parallel (local loss): each rank's anchors against the gathered batch, averaged over ranks
    halves = [clip_loss(a[r], b[r], torch.tensor(10.0), pos if labelled else None, r, a, b, ex)
              for r in (slice(0, 2), slice(2, 4))]
    assert (sum(halves) / 2).item() == pytest.approx(got.item(), rel=1e-5)


def test_masked_siglip_drops_the_left_out_pairs_from_its_sum():
    a, b = _emb(4, seed=3), _emb(4, seed=4)
    ex = guide_exclusions(GUIDE, None, 0.0, "absolute")
    drop = ex.ab | ex.ba.T  # the pair (i, j) is one term of the sum
    total = 0.0
    for i in range(4):
        for j in range(4):
            if not drop[i, j]:
                z = 1.0 if i == j else -1.0
                total += -math.log(1 / (1 + math.exp(-z * (5.0 * float(a[i] @ b[j]) - 2.0))))
    got = siglip_loss(a, b, torch.tensor(5.0), torch.tensor(-2.0), excluded=ex)
    assert float(got) == pytest.approx(total / 4, rel=1e-5)
    local = sum(siglip_loss(a[r], b, torch.tensor(5.0), torch.tensor(-2.0), None, r, b, ex)
                for r in (slice(0, 2), slice(2, 4))) / 2  # each rank's anchors; DDP averages the ranks
    assert float(local) == pytest.approx(total / 4, rel=1e-5)


def test_triplet_leaves_out_excluded_negatives_and_pml_refuses():
    a, b = _emb(4, seed=5), _emb(4, seed=6)
    ex = guide_exclusions(GUIDE, None, 0.25, "absolute")
    dist = 1 - a @ b.T

    def one_way(d, left):
        terms = [max(float(d[i, i] - d[i, q]) + 0.2, 0.0) for i in range(4) for q in range(4)
                 if q != i and not left[i][q]]
        return sum(terms) / len(terms)

    want = 0.5 * (one_way(dist, ex.ab.tolist()) + one_way(dist.T, ex.ba.tolist()))
    ctx = LossContext(torch.tensor(1.0), excluded=ex)
    assert float(build_pair_loss("triplet", {"margin": 0.2})(a, b, None, ctx)) == pytest.approx(want, rel=1e-5)
    pml = build_pair_loss("pml", {"loss": "MultiSimilarityLoss"})
    with pytest.raises(UsageError, match="cannot leave candidates out"):
        pml(a, b, None, ctx)


def test_binding_loss_hands_each_pair_its_own_exclusions():
    emb = {"image": _emb(4, seed=7), "text": _emb(4, seed=8), "audio": _emb(4, seed=9)}
    fn = BindingLoss([("image", "text"), ("image", "audio")], "infonce")
    ex = {("image", "text"): guide_exclusions(GUIDE, None)}
    total, parts = fn(emb, None, LossContext(torch.tensor(10.0)), excluded=ex)
    assert float(parts["image-text"]) == pytest.approx(
        float(clip_loss(emb["image"], emb["text"], torch.tensor(10.0), excluded=ex[("image", "text")])))
    assert float(parts["image-audio"]) == pytest.approx(float(clip_loss(emb["image"], emb["audio"], torch.tensor(10.0))))
    assert float(total) == pytest.approx(float(parts["image-text"] + parts["image-audio"]))


def test_distill_term_by_hand_and_equal_to_open_clip():
    from open_clip.loss import DistillClipLoss

    sa, sb = _emb(6, 8, seed=10), _emb(6, 8, seed=11)  # student: 8-d
    ta, tb = _emb(6, 16, seed=12), _emb(6, 16, seed=13)  # teacher: a wider space
    s_scale, t_scale = torch.tensor(14.0), torch.tensor(30.0)
    got = distill_loss((sa, sb), s_scale, (ta, tb), t_scale)

    def ce(t_logits, s_logits):
        return -(torch.softmax(t_logits, 1) * torch.log_softmax(s_logits, 1)).sum(1).mean()

    by_hand = 0.5 * (ce(t_scale * ta @ tb.T, s_scale * sa @ sb.T) + ce(t_scale * tb @ ta.T, s_scale * sb @ sa.T))
    torch.testing.assert_close(got, by_hand, rtol=1e-6, atol=1e-6)
    _, reference = DistillClipLoss()(sa, sb, s_scale, ta, tb, t_scale)
    torch.testing.assert_close(got, reference, rtol=1e-6, atol=1e-6)
    halves = [distill_loss((sa, sb), s_scale, (ta, tb), t_scale, r) for r in (slice(0, 3), slice(3, 6))]
    torch.testing.assert_close((halves[0] + halves[1]) / 2, got, rtol=1e-6, atol=1e-6)  # local loss, 2 ranks
