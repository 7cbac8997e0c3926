"""Several detection teachers (the method specification, section 6): the confidence-aware weights
against float64 values written out by hand, and weighted box fusion on made-up detections."""

from __future__ import annotations

import math

import pytest
import torch

from detkd.losses.multi_teacher_detection import detection_confidence_weights, weighted_box_fusion


def dets(boxes, labels, scores):
    return (torch.tensor(boxes, dtype=torch.float64).reshape(-1, 4), torch.tensor(labels, dtype=torch.int64),
            torch.tensor(scores, dtype=torch.float64))


GT = torch.tensor([[0.0, 0, 10, 10], [20, 20, 40, 40]], dtype=torch.float64)
GT_LABELS = torch.tensor([1, 2])


def ca(losses):
    """w_k = (1 - softmax_k(l)) / (K - 1), written out."""
    z = sum(math.exp(v) for v in losses)
    return [(1 - math.exp(v) / z) / (len(losses) - 1) for v in losses]


def test_a_teacher_that_finds_the_boxes_gets_the_weight():
    a = dets([[0, 0, 10, 10], [21, 20, 40, 41]], [1, 2], [0.9, 0.6])
    b = dets([[0, 0, 10, 10], [20, 20, 40, 40], [20, 20, 40, 40]], [2, 2, 2], [0.99, 0.3, 0.2])  # box 1: wrong class
    got = detection_confidence_weights([a, b], GT, GT_LABELS)
    # box 0: a 0.9, b misses (eps 1e-3); box 1: a 0.6 (IoU 0.905), b its best same-class match 0.3
    w0 = ca([-math.log(0.9), -math.log(1e-3)])
    w1 = ca([-math.log(0.6), -math.log(0.3)])
    want = [(w0[k] + w1[k]) / 2 for k in range(2)]
    assert got.tolist() == pytest.approx(want, rel=1e-12) and float(got.sum()) == pytest.approx(1.0)
    assert got[0] > 0.7


def test_three_teachers_an_empty_image_and_a_box_below_the_iou():
    far = dets([[0, 0, 10, 16]], [1], [0.9])  # IoU 100/160 = 0.625 >= 0.5: found
    off = dets([[0, 0, 10, 25]], [1], [0.9])  # IoU 100/250 = 0.4: missed
    none = dets([], [], [])
    got = detection_confidence_weights([far, off, none], GT[:1], GT_LABELS[:1])
    assert got.tolist() == pytest.approx(ca([-math.log(0.9), -math.log(1e-3), -math.log(1e-3)]), rel=1e-12)
    empty = detection_confidence_weights([far, off, none], GT[:0], GT_LABELS[:0])
    assert empty.tolist() == pytest.approx([1 / 3] * 3)
    with pytest.raises(ValueError, match="at least 2 teachers"):
        detection_confidence_weights([far], GT, GT_LABELS)


def test_weighted_box_fusion_with_equal_and_unequal_weights():
    a = dets([[0, 0, 10, 10]], [1], [0.8])
    b = dets([[1, 0, 11, 10], [50, 50, 60, 60], [0, 0, 10, 10]], [1, 2, 2], [0.6, 0.5, 0.4])
    boxes, labels, scores = weighted_box_fusion([a, b], torch.tensor([0.5, 0.5], dtype=torch.float64))
    # a and b's first box overlap by IoU 90/110 > 0.55: one cluster, boxes averaged by score,
    # score mean(0.8, 0.6) * 2/2; b's class-2 boxes are alone: score * 1/2 (never fused with class 1)
    assert labels.tolist() == [1, 2, 2]
    assert scores.tolist() == pytest.approx([0.7, 0.25, 0.2])
    assert boxes[0].tolist() == pytest.approx([(0.8 * 0 + 0.6 * 1) / 1.4, 0, (0.8 * 10 + 0.6 * 11) / 1.4, 10])
    boxes, labels, scores = weighted_box_fusion([a, b], torch.tensor([0.8, 0.2], dtype=torch.float64))
    s_a, s_b = 0.8 * 2 * 0.8, 0.6 * 2 * 0.2  # scores times K w_k
    assert scores.tolist() == pytest.approx([(s_a + s_b) / 2, 0.5 * 0.4 / 2, 0.4 * 0.4 / 2])
    assert boxes[0].tolist() == pytest.approx([s_b * 1 / (s_a + s_b), 0, (s_a * 10 + s_b * 11) / (s_a + s_b), 10])


def test_fusing_nothing_is_empty():
    none = dets([], [], [])
    boxes, labels, scores = weighted_box_fusion([none, none], torch.tensor([0.5, 0.5]))
    assert boxes.shape == (0, 4) and labels.shape == (0,) and scores.shape == (0,)
