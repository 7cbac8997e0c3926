"""Tests of the CrossKD loss functions (alignment, classification and box terms).

Every expected value is computed independently of the code under test: explicit float64 Python loops
over channels / rows / classes with ``math`` (written from the equations of the spec, section 4,
CrossKD), hand-computed box overlaps, or torch float64 references written another way (per-channel
``torch.std``, BCE as ``softplus(z) - z p``) for gradients. Maps have N >= 2 and H != W.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torchvision.ops import generalized_box_iou_loss

from detkd.losses.crosskd import crosskd_align, crosskd_cls_loss, crosskd_reg_loss, giou_loss, iou_log_loss

pytestmark = pytest.mark.usefixtures("one_thread")

EPS = 1e-6


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(0)


def t64(a, grad: bool = False) -> torch.Tensor:
    return torch.tensor(np.asarray(a), dtype=torch.float64, requires_grad=grad)


def sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


# --------------------------------------------------------------------------- align


def ref_align(a: np.ndarray, t: np.ndarray, eps: float = EPS) -> np.ndarray:
    n, c, h, w = a.shape
    out = np.zeros_like(a)

    def stats(x, ch):
        vals = [x[i, ch, y, z] for i in range(n) for y in range(h) for z in range(w)]
        mean = sum(vals) / len(vals)
        sd = math.sqrt(sum((v - mean) ** 2 for v in vals) / (len(vals) - 1)) if len(vals) > 1 else 0.0
        return mean, sd

    for ch in range(c):
        mu_a, sd_a = stats(a, ch)
        mu_t, sd_t = stats(t, ch)
        for i in range(n):
            for y in range(h):
                for z in range(w):
                    out[i, ch, y, z] = (a[i, ch, y, z] - mu_a) / (sd_a + eps) * sd_t + mu_t
    return out


def torch_align_ref(a: torch.Tensor, t: torch.Tensor, detach_student_stats: bool) -> torch.Tensor:
    """Per-channel torch float64 reference (torch.std, unbiased) for gradients."""
    chans = []
    for ch in range(a.shape[1]):
        x = a[:, ch]
        stat_src = x.detach() if detach_student_stats else x
        mu_a, sd_a = stat_src.mean(), stat_src.reshape(-1).std()
        mu_t, sd_t = t[:, ch].mean(), t[:, ch].reshape(-1).std()
        chans.append((x - mu_a) / (sd_a + EPS) * sd_t + mu_t)
    return torch.stack(chans, dim=1)


def test_align_matches_channel_loop(rng):
    a = rng.normal(size=(2, 3, 4, 5)) * 3.0 + 1.5
    t = rng.normal(size=(2, 3, 4, 5)) * 0.5 - 2.0
    got = crosskd_align(t64(a), t64(t))
    assert got.dtype == torch.float64 and got.shape == (2, 3, 4, 5)
    np.testing.assert_allclose(got.numpy(), ref_align(a, t), rtol=1e-12, atol=1e-12)


def test_align_gradient_flows_through_student_stats_not_teacher(rng):
    a_np = rng.normal(size=(2, 3, 4, 5)) * 2.0 + 0.7
    t_np = rng.normal(size=(2, 3, 4, 5)) * 1.3 - 0.4
    r = t64(rng.normal(size=(2, 3, 4, 5)))
    a, t = t64(a_np, grad=True), t64(t_np, grad=True)
    (crosskd_align(a, t) * r).sum().backward()
    assert t.grad is None
    assert a.grad is not None and torch.isfinite(a.grad).all()

    a_ref = t64(a_np, grad=True)
    (torch_align_ref(a_ref, t64(t_np), detach_student_stats=False) * r).sum().backward()
    np.testing.assert_allclose(a.grad.numpy(), a_ref.grad.numpy(), rtol=1e-9, atol=1e-12)

    a_det = t64(a_np, grad=True)
    (torch_align_ref(a_det, t64(t_np), detach_student_stats=True) * r).sum().backward()
    assert (a.grad - a_det.grad).abs().max() > 1e-3  # mu_a, sd_a are not constants


def test_align_output_has_teacher_channel_stats(rng):
    a = t64(rng.normal(size=(3, 4, 5, 2)) * 4.0 + 3.0)
    t = t64(rng.normal(size=(3, 4, 5, 2)) * np.array([0.5, 1.0, 2.0, 7.0]).reshape(1, 4, 1, 1) + 1.0)
    out = crosskd_align(a, t)
    np.testing.assert_allclose(out.mean(dim=(0, 2, 3)).numpy(), t.mean(dim=(0, 2, 3)).numpy(), atol=1e-12)
    sd_out = out.transpose(0, 1).reshape(4, -1).std(dim=1)
    sd_t = t.transpose(0, 1).reshape(4, -1).std(dim=1)
    np.testing.assert_allclose(sd_out.numpy(), sd_t.numpy(), rtol=1e-5)


def test_align_single_element_uses_zero_std():
    a = torch.tensor([[[[2.0]], [[-1.0]]]], dtype=torch.float64, requires_grad=True)  # N = H = W = 1
    t = torch.tensor([[[[0.3]], [[5.0]]]], dtype=torch.float64)
    out = crosskd_align(a, t)
    assert torch.isfinite(out).all()
    np.testing.assert_array_equal(out.detach().numpy(), t.numpy())  # = mu_t
    out.sum().backward()
    assert torch.isfinite(a.grad).all()


def test_align_constant_student_channel_is_finite(rng):
    a_np = rng.normal(size=(2, 2, 3, 4))
    a_np[:, 1] = 0.25  # zero variance with N*H*W > 1
    t_np = rng.normal(size=(2, 2, 3, 4))
    a = t64(a_np, grad=True)
    out = crosskd_align(a, t64(t_np))
    np.testing.assert_allclose(out[:, 1].detach().numpy(), np.full((2, 3, 4), t_np[:, 1].mean()), atol=1e-12)
    (out * t64(rng.normal(size=(2, 2, 3, 4)))).sum().backward()
    assert torch.isfinite(a.grad).all()


def test_align_half_input_returns_half(rng):
    a = torch.tensor(rng.normal(size=(2, 3, 4, 5)), dtype=torch.float16)
    t = torch.tensor(rng.normal(size=(2, 3, 4, 5)), dtype=torch.float16)
    out = crosskd_align(a, t)
    assert out.dtype == torch.float16
    ref = ref_align(a.double().numpy(), t.double().numpy())
    np.testing.assert_allclose(out.double().numpy(), ref, rtol=1e-2, atol=1e-2)


@pytest.mark.parametrize(
    "a_shape, t_shape", [((2, 3, 4, 5), (2, 4, 4, 5)), ((2, 3, 4, 5), (2, 3, 4, 6)), ((3, 4, 5), (3, 4, 5))]
)
def test_align_shape_mismatch_raises(a_shape, t_shape):
    with pytest.raises(ValueError, match="crosskd_align"):
        crosskd_align(torch.zeros(a_shape), torch.zeros(t_shape))


# --------------------------------------------------------------------------- classification


def ref_cls(zx: np.ndarray, zt: np.ndarray, m: np.ndarray, z: float, beta: float) -> float:
    acc = 0.0
    for r in range(zx.shape[0]):
        for c in range(zx.shape[1]):
            p, q = sigmoid(zt[r, c]), sigmoid(zx[r, c])
            bce = -(p * math.log(q) + (1 - p) * math.log(1 - q))
            acc += m[r] * bce * abs(q - p) ** beta
    return acc / z


def ref_cls_grad(zx: np.ndarray, zt: np.ndarray, m: np.ndarray, z: float, beta: float) -> np.ndarray:
    """d/dz [BCE(z, p) |q - p|^beta] = (q - p)|q - p|^beta + BCE beta |q - p|^(beta-1) sign(q - p) q (1 - q)."""
    g = np.zeros_like(zx)
    for r in range(zx.shape[0]):
        for c in range(zx.shape[1]):
            p, q = sigmoid(zt[r, c]), sigmoid(zx[r, c])
            bce = -(p * math.log(q) + (1 - p) * math.log(1 - q))
            d = q - p
            focal_grad = beta * abs(d) ** (beta - 1) * math.copysign(1.0, d) * q * (1 - q)
            g[r, c] = m[r] * (d * abs(d) ** beta + bce * focal_grad) / z
    return g


def cls_inputs(rng, rows=6, classes=5):
    zx = rng.normal(size=(rows, classes)) * 2.0
    zt = rng.normal(size=(rows, classes)) * 2.0 - 0.5
    m = np.array([1.0, 0.0, 1.0, 0.5, 1.0, 2.0])[:rows]
    return zx, zt, m


@pytest.mark.parametrize("beta", [1.0, 2.0])
def test_cls_matches_loop_and_analytic_gradient(rng, beta):
    zx, zt, m = cls_inputs(rng)
    z_x, z_t = t64(zx, grad=True), t64(zt, grad=True)
    loss = crosskd_cls_loss(z_x, z_t, t64(m), 3.5, beta=beta)
    assert loss.dim() == 0 and loss.dtype == torch.float64
    np.testing.assert_allclose(loss.item(), ref_cls(zx, zt, m, 3.5, beta), rtol=1e-12)
    loss.backward()
    assert z_t.grad is None
    np.testing.assert_allclose(z_x.grad.numpy(), ref_cls_grad(zx, zt, m, 3.5, beta), rtol=1e-9, atol=1e-14)


def test_cls_gradient_matches_autograd_reference_with_undetached_focal_factor(rng):
    zx, zt, m = cls_inputs(rng)

    def reference(z, detach_focal):
        p = torch.sigmoid(t64(zt))
        bce = F.softplus(z) - z * p  # = BCE with logits, soft target
        focal = (torch.sigmoid(z) - p).abs()
        if detach_focal:
            focal = focal.detach()
        return (t64(m)[:, None] * bce * focal).sum() / 2.0

    z_x, z_ref, z_det = t64(zx, grad=True), t64(zx, grad=True), t64(zx, grad=True)
    crosskd_cls_loss(z_x, t64(zt), t64(m), 2.0).backward()
    reference(z_ref, False).backward()
    reference(z_det, True).backward()
    np.testing.assert_allclose(z_x.grad.numpy(), z_ref.grad.numpy(), rtol=1e-10, atol=1e-14)
    assert (z_x.grad - z_det.grad).abs().max() > 1e-2


def test_cls_beta_zero_is_soft_target_bce(rng):
    zx, zt, m = cls_inputs(rng)
    got = crosskd_cls_loss(t64(zx), t64(zt), t64(m), 1.7, beta=0.0).item()
    np.testing.assert_allclose(got, ref_cls(zx, zt, m, 1.7, 0.0), rtol=1e-12)
    bce = F.binary_cross_entropy_with_logits(t64(zx), torch.sigmoid(t64(zt)), reduction="none")
    np.testing.assert_allclose(got, (bce.sum(dim=1) * t64(m)).sum().item() / 1.7, rtol=1e-12)


def test_cls_zero_weight_rows_contribute_nothing(rng):
    zx, zt, m = cls_inputs(rng)
    base = crosskd_cls_loss(t64(zx), t64(zt), t64(m), 1.0).item()
    zx2, zt2 = zx.copy(), zt.copy()
    zx2[1], zt2[1] = 30.0, -30.0  # row 1 has m = 0
    z_x = t64(zx2, grad=True)
    loss = crosskd_cls_loss(z_x, t64(zt2), t64(m), 1.0)
    np.testing.assert_allclose(loss.item(), base, rtol=1e-14)
    loss.backward()
    assert (z_x.grad[1] == 0).all() and (z_x.grad[0] != 0).all()


def test_cls_empty_rows_is_attached_zero():
    z_x = torch.zeros((0, 91), requires_grad=True)
    loss = crosskd_cls_loss(z_x, torch.zeros((0, 91)), torch.zeros(0), 1.0)
    assert loss.item() == 0.0 and loss.grad_fn is not None
    loss.backward()
    assert z_x.grad is not None and z_x.grad.shape == (0, 91)


def test_cls_normalizer_divides(rng):
    zx, zt, m = cls_inputs(rng)
    one = crosskd_cls_loss(t64(zx), t64(zt), t64(m), 1.0).item()
    np.testing.assert_allclose(crosskd_cls_loss(t64(zx), t64(zt), t64(m), 4.0).item(), one / 4.0, rtol=1e-14)
    as_tensor = crosskd_cls_loss(t64(zx), t64(zt), t64(m), torch.tensor(4.0))  # float32 0-dim tensor
    assert as_tensor.dtype == torch.float64
    np.testing.assert_allclose(as_tensor.item(), one / 4.0, rtol=1e-14)


@pytest.mark.parametrize(
    "zx_shape, zt_shape, m_shape, normalizer, beta",
    [
        ((6, 5), (6, 4), (6,), 1.0, 1.0),
        ((6, 5), (6, 5), (5,), 1.0, 1.0),
        ((30,), (30,), (30,), 1.0, 1.0),
        ((6, 5), (6, 5), (6,), 0.0, 1.0),
        ((6, 5), (6, 5), (6,), torch.tensor(-1.0), 1.0),
        ((6, 5), (6, 5), (6,), 1.0, -0.5),
    ],
)
def test_cls_bad_inputs_raise(zx_shape, zt_shape, m_shape, normalizer, beta):
    with pytest.raises(ValueError, match="crosskd_cls_loss"):
        crosskd_cls_loss(torch.zeros(zx_shape), torch.zeros(zt_shape), torch.ones(m_shape), normalizer, beta)


# --------------------------------------------------------------------------- box losses


def ref_box(b1, b2, eps: float = EPS) -> tuple[float, float]:
    """(1 - GIoU, -log max(IoU, eps)) of two xyxy boxes, plain floats."""
    area1 = (b1[2] - b1[0]) * (b1[3] - b1[1])
    area2 = (b2[2] - b2[0]) * (b2[3] - b2[1])
    iw = max(min(b1[2], b2[2]) - max(b1[0], b2[0]), 0.0)
    ih = max(min(b1[3], b2[3]) - max(b1[1], b2[1]), 0.0)
    union = max(area1 + area2 - iw * ih, eps)
    iou = iw * ih / union
    hull = max((max(b1[2], b2[2]) - min(b1[0], b2[0])) * (max(b1[3], b2[3]) - min(b1[1], b2[1])), eps)
    return 1.0 - (iou - (hull - union) / hull), -math.log(max(iou, eps))


HAND_CASES = [
    # pred, target, 1 - GIoU, -log IoU
    ([0, 0, 2, 3], [0, 0, 2, 3], 0.0, 0.0),  # identical
    ([0, 0, 1, 1], [2, 0, 3, 1], 4 / 3, -math.log(EPS)),  # disjoint: U = 2, hull 3
    ([0, 0, 1, 1], [2, 2, 3, 3], 16 / 9, -math.log(EPS)),  # disjoint diagonally: U = 2, hull 9
    ([0, 0, 4, 4], [1, 1, 3, 3], 0.75, math.log(4)),  # nested: IoU 4/16, hull = union
    ([0, 0, 2, 2], [1, 1, 3, 3], 1 - 1 / 7 + 2 / 9, math.log(7)),  # overlap 1, union 7, hull 9
    ([1, 1, 1, 1], [0, 0, 2, 2], 1.0, -math.log(EPS)),  # zero-size pred inside: IoU 0, hull = union
]


def test_box_losses_hand_cases():
    pred = t64([c[0] for c in HAND_CASES])
    target = t64([c[1] for c in HAND_CASES])
    np.testing.assert_allclose(giou_loss(pred, target).numpy(), [c[2] for c in HAND_CASES], rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(iou_log_loss(pred, target).numpy(), [c[3] for c in HAND_CASES], rtol=1e-12, atol=1e-15)
    assert giou_loss(pred, target).shape == (len(HAND_CASES),)


def test_iou_log_zero_size_pred_is_constant_with_zero_gradient():
    pred = t64([[1.0, 1.0, 1.0, 1.0], [0.5, 0.5, 0.5, 2.0]], grad=True)
    target = t64([[0.0, 0.0, 2.0, 2.0], [0.0, 0.0, 2.0, 2.0]], grad=True)
    loss = iou_log_loss(pred, target)
    np.testing.assert_allclose(loss.detach().numpy(), [-math.log(1e-6)] * 2, rtol=1e-14)
    loss.sum().backward()
    assert (pred.grad == 0).all() and (target.grad == 0).all()


def test_giou_degenerate_pair_is_finite():
    pred = t64([[5.0, 5.0, 5.0, 5.0]], grad=True)
    loss = giou_loss(pred, t64([[5.0, 5.0, 5.0, 5.0]]))
    np.testing.assert_allclose(loss.detach().numpy(), [ref_box([5.0] * 4, [5.0] * 4)[0]], rtol=1e-12)
    loss.sum().backward()
    assert torch.isfinite(pred.grad).all()


def test_giou_close_to_torchvision_on_proper_boxes(rng):
    xy1 = rng.uniform(0, 50, size=(40, 2))
    pred = t64(np.concatenate([xy1, xy1 + rng.uniform(1, 30, size=(40, 2))], axis=1))
    xy2 = xy1 + rng.normal(size=(40, 2)) * 8
    target = t64(np.concatenate([xy2, xy2 + rng.uniform(1, 30, size=(40, 2))], axis=1))
    expected = generalized_box_iou_loss(pred, target, reduction="none")
    np.testing.assert_allclose(giou_loss(pred, target).numpy(), expected.numpy(), rtol=1e-6, atol=1e-7)
    for i in range(40):
        np.testing.assert_allclose(giou_loss(pred, target)[i].item(), ref_box(pred[i].tolist(), target[i].tolist())[0])


@pytest.mark.parametrize("fn", [giou_loss, iou_log_loss])
def test_box_loss_bad_shapes_raise(fn):
    with pytest.raises(ValueError, match=fn.__name__):
        fn(torch.zeros(3, 4), torch.zeros(2, 4))
    with pytest.raises(ValueError, match=fn.__name__):
        fn(torch.zeros(3, 5), torch.zeros(3, 5))


# --------------------------------------------------------------------------- regression term


def reg_inputs(rng, rows=7):
    xy1 = rng.uniform(0, 20, size=(rows, 2))
    pred = np.concatenate([xy1, xy1 + rng.uniform(1, 10, size=(rows, 2))], axis=1)
    xy2 = xy1 + rng.normal(size=(rows, 2)) * 3
    target = np.concatenate([xy2, xy2 + rng.uniform(1, 10, size=(rows, 2))], axis=1)
    w = rng.uniform(0.1, 1.0, size=rows)
    w[2] = 0.0
    return pred, target, w


@pytest.mark.parametrize("kind, col", [("giou", 0), ("iou_log", 1)])
def test_reg_matches_weighted_loop(rng, kind, col):
    pred, target, w = reg_inputs(rng)
    pred[5] = [4.0, 4.0, 4.0, 6.0]  # zero-width pred at a weighted row: -log(eps) or finite GIoU, not masked
    p, t, wt = t64(pred, grad=True), t64(target, grad=True), t64(w, grad=True)
    loss = crosskd_reg_loss(p, t, wt, 3.7, kind=kind)
    expected = sum(w[r] * ref_box(pred[r].tolist(), target[r].tolist())[col] for r in range(len(w))) / 3.7
    np.testing.assert_allclose(loss.item(), expected, rtol=1e-12)
    loss.backward()
    assert t.grad is None and wt.grad is None
    assert torch.isfinite(p.grad).all() and (p.grad[2] == 0).all() and p.grad[0].abs().sum() > 0


@pytest.mark.parametrize("kind", ["giou", "iou_log"])
@pytest.mark.parametrize("rows", [0, 4])
def test_reg_all_zero_weights_is_attached_exact_zero(rng, kind, rows):
    pred, target, _ = reg_inputs(rng, rows=rows) if rows else (np.zeros((0, 4)), np.zeros((0, 4)), None)
    p = t64(pred, grad=True)
    loss = crosskd_reg_loss(p, t64(target), torch.zeros(rows, dtype=torch.float64), 2.0, kind=kind)
    assert loss.item() == 0.0 and loss.grad_fn is not None
    loss.backward()
    assert p.grad is not None and (p.grad == 0).all()


@pytest.mark.parametrize("kind", ["giou", "iou_log"])
def test_reg_degenerate_boxes_at_zero_weight_rows_are_nan_free(rng, kind):
    pred, target, w = reg_inputs(rng, rows=5)
    keep = [0, 1, 3]
    ref = crosskd_reg_loss(t64(pred[keep]), t64(target[keep]), t64(w[keep]), 1.5, kind=kind).item()
    w[[2, 4]] = 0.0
    pred[2], target[2] = [5.0, 5.0, 5.0, 5.0], [5.0, 5.0, 5.0, 5.0]  # both zero-size, same point
    pred[4], target[4] = [3.0, 3.0, 1.0, 1.0], [7.0, 7.0, 7.0, 2.0]  # inverted / zero-width
    p = t64(pred, grad=True)
    loss = crosskd_reg_loss(p, t64(target), t64(w), 1.5, kind=kind)
    np.testing.assert_allclose(loss.item(), ref, rtol=1e-12)
    loss.backward()
    assert torch.isfinite(p.grad).all() and (p.grad[[2, 4]] == 0).all()


def test_reg_non_finite_boxes_at_zero_weight_rows_are_ignored(rng):
    pred, target, w = reg_inputs(rng, rows=4)
    ref = crosskd_reg_loss(t64(pred[:3]), t64(target[:3]), t64(w[:3]), 1.0).item()
    w[3] = 0.0
    pred[3], target[3] = [0.0, 0.0, math.inf, math.inf], [math.nan, 0.0, 1.0, 1.0]
    p = t64(pred, grad=True)
    loss = crosskd_reg_loss(p, t64(target), t64(w), 1.0)
    np.testing.assert_allclose(loss.item(), ref, rtol=1e-12)
    loss.backward()
    assert torch.isfinite(p.grad).all() and (p.grad[3] == 0).all()


def test_reg_bad_inputs_raise():
    p, t, w = torch.zeros(3, 4), torch.zeros(3, 4), torch.ones(3)
    with pytest.raises(ValueError, match="unknown kind"):
        crosskd_reg_loss(p, t, w, 1.0, kind="l1")
    with pytest.raises(ValueError, match="crosskd_reg_loss"):
        crosskd_reg_loss(p, torch.zeros(2, 4), w, 1.0)
    with pytest.raises(ValueError, match="crosskd_reg_loss"):
        crosskd_reg_loss(p, t, torch.ones(2), 1.0)
    with pytest.raises(ValueError, match="crosskd_reg_loss"):
        crosskd_reg_loss(p, t, w, 0.0)
