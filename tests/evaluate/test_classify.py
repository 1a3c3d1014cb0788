"""Classification metrics: top-k accuracy, zero-shot, linear probe, confusion matrix."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from jointspace.evaluate.classify import confusion_matrix, linear_probe, topk_accuracy, zero_shot_classify


def test_topk_accuracy_hand_worked_and_clipped() -> None:
    logits = torch.tensor([[3.0, 2.0, 1.0], [1.0, 3.0, 2.0], [3.0, 2.0, 1.0], [1.0, 2.0, 3.0]])
    labels = torch.tensor([0, 2, 2, 0])
    # row0: label 0 is top-1. row1: label 2 is 2nd. row2: label 2 is 3rd. row3: label 0 is 3rd.
    out = topk_accuracy(logits, labels, ks=(1, 2, 5))
    assert out == {"top1": pytest.approx(1 / 4), "top2": pytest.approx(2 / 4), "top5": 1.0}
    assert set(topk_accuracy(logits, labels)) == {"top1", "top5"}


def test_zero_shot_normalises_class_embeddings() -> None:
    # Class 0 has a huge norm: unnormalised logits would pick it for every row.
    class_emb = torch.tensor([[10.0, 0.0], [0.0, 1.0], [-3.0, -3.0]])
    emb = torch.tensor([[1.0, 0.0], [0.6, 0.8], [0.0, 1.0], [-0.8, -0.6], [0.8, 0.6]])
    labels = torch.tensor([0, 1, 1, 2, 1])
    # normalised cosines -> predictions [0, 1, 1, 2, 0]; the last row (0.8 > 0.6) is wrong: top1 = 4/5.
    # its label (class 1) is 2nd -> top2 = 1; top5 clipped to 3 classes -> 1.
    metrics, preds = zero_shot_classify(emb, class_emb, labels, ks=(1, 2, 5), return_preds=True)
    assert preds.tolist() == [0, 1, 1, 2, 0]
    assert metrics == {"top1": pytest.approx(4 / 5), "top2": 1.0, "top5": 1.0}
    assert zero_shot_classify(emb, class_emb, labels) == {"top1": pytest.approx(4 / 5), "top5": 1.0}


def test_linear_probe_separable_and_random() -> None:
    rng = np.random.default_rng(0)
    n, d = 400, 20
    y_train, y_test = rng.integers(0, 2, n), rng.integers(0, 2, n)
    shift = np.zeros(d)
    shift[0] = 4.0
    x_train = rng.normal(size=(n, d)) + np.outer(y_train, shift)
    x_test = rng.normal(size=(n, d)) + np.outer(y_test, shift)
    # tensors are accepted too
    acc = linear_probe(torch.from_numpy(x_train), torch.from_numpy(y_train), x_test, y_test)
    assert acc > 0.9
    noise_train, noise_test = rng.normal(size=(n, d)), rng.normal(size=(n, d))
    chance = linear_probe(noise_train, y_train, noise_test, y_test)
    assert 0.35 < chance < 0.65


def test_confusion_matrix_rows_are_true_labels() -> None:
    preds = torch.tensor([0, 1, 1, 2, 2, 2])
    labels = torch.tensor([0, 0, 1, 2, 2, 1])
    expected = np.array([[1, 1, 0], [0, 1, 1], [0, 0, 2]])
    cm = confusion_matrix(preds, labels, 3)
    assert cm.dtype.kind == "i"
    np.testing.assert_array_equal(cm, expected)
    assert cm.sum() == 6
    with pytest.raises(ValueError):
        confusion_matrix([0, 3], [0, 1], 3)
