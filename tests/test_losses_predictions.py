"""Prediction-level distillation losses against independent float64 computations of the method
specification, section 5 (plain Python loops over rows and classes, math module only)."""

from __future__ import annotations

import math

import pytest
import torch

from detkd.losses.predictions import score_weighted_box_loss, soft_sigmoid_loss, soft_softmax_loss, split_by_score


def _sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


def ref_sigmoid(z, cls, score, beta=2.0) -> float:
    total, norm = 0.0, 0.0
    for r, row in enumerate(z):
        for c, zc in enumerate(row):
            q = score[r] if cls[r] == c else 0.0
            p = _sigmoid(zc)
            bce = -(q * math.log(p) + (1.0 - q) * math.log(1.0 - p))
            total += bce * abs(p - q) ** beta
            norm += q
    return total / max(1.0, norm)


def ref_softmax(z, cls, score) -> float:
    if not z:
        return 0.0
    total = 0.0
    for r, row in enumerate(z):
        m = max(row)
        log_norm = m + math.log(sum(math.exp(v - m) for v in row))
        s = score[r] if cls[r] > 0 else 0.0
        q = [0.0] * len(row)
        q[0] = 1.0 - s
        if cls[r] > 0:
            q[cls[r]] += s
        total += -sum(qc * (zc - log_norm) for qc, zc in zip(q, row))
    return total / len(z)


def example(rows=7, classes=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(rows, classes, generator=g, dtype=torch.float64) * 2
    cls = torch.tensor([2, -1, 0, 3, -1, 1, 2][:rows])
    score = torch.rand(rows, generator=g, dtype=torch.float64)
    return z, cls, score


def test_soft_sigmoid_loss_is_the_quality_focal_equation():
    z, cls, score = example()
    got = soft_sigmoid_loss(z, cls, score)
    assert got.dtype == torch.float64
    assert float(got) == pytest.approx(ref_sigmoid(z.tolist(), cls.tolist(), score.tolist()), rel=1e-12)
    assert float(soft_sigmoid_loss(z, cls, score, beta=1.0)) == pytest.approx(
        ref_sigmoid(z.tolist(), cls.tolist(), score.tolist(), beta=1.0), rel=1e-12)


def test_soft_sigmoid_loss_without_any_assigned_row_normalizes_by_one():
    z, _, score = example()
    none = torch.full((7,), -1)
    got = soft_sigmoid_loss(z, none, score)
    assert float(got) == pytest.approx(ref_sigmoid(z.tolist(), none.tolist(), score.tolist()), rel=1e-12)
    assert float(got) > 0  # every class pushed towards 0: the teacher saw nothing there


def test_soft_softmax_loss_is_the_soft_cross_entropy():
    z, cls, score = example(classes=5)
    cls = cls.clamp(min=0)  # softmax heads: 0 = background (no detection assigned)
    got = soft_softmax_loss(z, cls, score)
    assert float(got) == pytest.approx(ref_softmax(z.tolist(), cls.tolist(), score.tolist()), rel=1e-12)


def test_score_one_softmax_target_is_the_hard_cross_entropy():
    z, cls, _ = example(classes=5)
    cls = cls.clamp(min=0)
    ones = torch.ones(7, dtype=torch.float64)
    assert torch.allclose(soft_softmax_loss(z, cls, ones), torch.nn.functional.cross_entropy(z, cls), rtol=1e-12)


def test_targets_are_constants_and_the_gradient_reaches_the_logits():
    z, cls, score = example()
    z.requires_grad_(True)
    score.requires_grad_(True)
    (soft_sigmoid_loss(z, cls, score) + soft_softmax_loss(z, cls.clamp(min=0), score)).backward()
    assert z.grad is not None and z.grad.abs().sum() > 0 and score.grad is None


def test_empty_inputs_give_an_attached_zero():
    z = torch.zeros(0, 4, requires_grad=True)
    empty_cls, empty_score = torch.zeros(0, dtype=torch.int64), torch.zeros(0)
    for loss in (soft_sigmoid_loss(z, empty_cls, empty_score), soft_softmax_loss(z, empty_cls, empty_score),
                 score_weighted_box_loss(z.sum(dim=1), empty_score)):
        assert loss.item() == 0.0 and loss.requires_grad
        loss.backward()


def test_score_weighted_box_loss():
    ell = torch.tensor([0.5, 2.0, 1.0], dtype=torch.float64, requires_grad=True)
    s = torch.tensor([0.9, 0.2, 0.6], dtype=torch.float64)
    want = (0.9 * 0.5 + 0.2 * 2.0 + 0.6 * 1.0) / 1.7
    assert float(score_weighted_box_loss(ell, s)) == pytest.approx(want, rel=1e-12)
    small = torch.tensor([0.1, 0.2, 0.3], dtype=torch.float64)  # sum < 1: normalized by 1
    assert float(score_weighted_box_loss(ell, small)) == pytest.approx(0.1 * 0.5 + 0.2 * 2.0 + 0.3 * 1.0, rel=1e-12)


def test_half_precision_computes_in_float32():
    z, cls, score = example()
    got = soft_sigmoid_loss(z.half(), cls, score.half())
    assert got.dtype == torch.float32
    assert float(got) == pytest.approx(float(soft_sigmoid_loss(z, cls, score)), rel=1e-2)


def test_split_by_score_and_bad_thresholds():
    s = torch.tensor([0.9, 0.5, 0.49, 0.3, 0.29, 0.0])
    hard, ignored = split_by_score(s, tau_hi=0.5, tau_lo=0.3)
    assert hard.tolist() == [True, True, False, False, False, False]
    assert ignored.tolist() == [False, False, True, True, False, False]
    with pytest.raises(ValueError, match="tau_lo <= tau_hi"):
        split_by_score(s, tau_hi=0.3, tau_lo=0.5)


def test_shape_errors_are_one_line():
    with pytest.raises(ValueError, match=r"soft_sigmoid_loss: logits \[R, C\]"):
        soft_sigmoid_loss(torch.zeros(3, 2), torch.zeros(2, dtype=torch.int64), torch.zeros(3))
