"""KD, FitNet, AT and SP against independent float64 computations from the equations."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from detkd.losses.kd import ConvRegressor, at_loss, fitnet_loss, kd_loss, sp_loss


def _logits(b: int = 6, c: int = 10, seed: int = 0, scale: float = 3.0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    zs = (torch.randn(b, c, generator=g) * scale).requires_grad_(True)
    zt = (torch.randn(b, c, generator=g) * scale).requires_grad_(True)
    return zs, zt


def _ref_kd_per_sample(zs: torch.Tensor, zt: torch.Tensor, t: float) -> list[float]:
    """T^2 * sum_c p_t (log p_t - log p_s), written with explicit loops in float64."""
    s, tt = zs.detach().double().tolist(), zt.detach().double().tolist()
    out = []
    for row_s, row_t in zip(s, tt):
        ls = math.log(sum(math.exp(v / t) for v in row_s))
        lt = math.log(sum(math.exp(v / t) for v in row_t))
        kl = 0.0
        for a, b in zip(row_s, row_t):
            log_ps, log_pt = a / t - ls, b / t - lt
            kl += math.exp(log_pt) * (log_pt - log_ps)
        out.append(t * t * kl)
    return out


# ------------------------------------------------------------------------------------ KD


def test_kd_batchmean_matches_reference_with_t_squared() -> None:
    zs, zt = _logits()
    got = kd_loss(zs, zt, temperature=4.0)
    ref = _ref_kd_per_sample(zs, zt, 4.0)
    assert got.item() == pytest.approx(sum(ref) / len(ref), rel=1e-5)
    # T^2 present: the loss is 16x the raw KL, not the raw KL.
    raw = sum(ref) / len(ref) / 16.0
    assert got.item() == pytest.approx(16.0 * raw, rel=1e-5)
    assert got.item() != pytest.approx(raw, rel=1e-2)


def test_kd_default_temperature_is_4() -> None:
    zs, zt = _logits(seed=3)
    assert kd_loss(zs, zt).item() == pytest.approx(kd_loss(zs, zt, temperature=4.0).item(), rel=1e-7)
    ref = _ref_kd_per_sample(zs, zt, 4.0)
    assert kd_loss(zs, zt).item() == pytest.approx(sum(ref) / len(ref), rel=1e-5)


def test_kd_reductions() -> None:
    b, c = 5, 7
    zs, zt = _logits(b, c, seed=1)
    ref = _ref_kd_per_sample(zs, zt, 2.0)
    none = kd_loss(zs, zt, 2.0, reduction="none")
    assert none.shape == (b,)
    np.testing.assert_allclose(none.detach().numpy(), ref, rtol=1e-5)
    batchmean = kd_loss(zs, zt, 2.0, reduction="batchmean")
    assert (none.sum() / b).item() == pytest.approx(batchmean.item(), rel=1e-6)
    assert kd_loss(zs, zt, 2.0, reduction="sum").item() == pytest.approx(sum(ref), rel=1e-5)
    # Elementwise "mean" is wrong by exactly 1/C relative to batchmean.
    mean = kd_loss(zs, zt, 2.0, reduction="mean")
    assert mean.item() == pytest.approx(batchmean.item() / c, rel=1e-6)
    with pytest.raises(ValueError):
        kd_loss(zs, zt, 2.0, reduction="avg")  # type: ignore[arg-type]


def test_kd_gradients_student_only() -> None:
    t = 3.0
    zs, zt = _logits(4, 6, seed=2)
    kd_loss(zs, zt, t).backward()
    assert zt.grad is None
    # d/dz_s [T^2 KL(p_t || p_s) / B] = T (p_s - p_t) / B, computed independently.
    ps = torch.softmax(zs.detach().double() / t, 1)
    pt = torch.softmax(zt.detach().double() / t, 1)
    np.testing.assert_allclose(zs.grad.double().numpy(), (t * (ps - pt) / 4).numpy(), atol=1e-6)


def test_kd_half_inputs_computed_in_float32() -> None:
    zs, zt = _logits(seed=4)
    got = kd_loss(zs.detach().half(), zt.detach().half())
    assert got.dtype == torch.float32
    ref = _ref_kd_per_sample(zs.half().float(), zt.half().float(), 4.0)
    assert got.item() == pytest.approx(sum(ref) / len(ref), rel=1e-4)


def test_kd_shape_mismatch_raises() -> None:
    with pytest.raises(ValueError, match="same shape"):
        kd_loss(torch.zeros(2, 3), torch.zeros(2, 4))


# -------------------------------------------------------------------------------- FitNet


def test_fitnet_loss_value_and_teacher_detached() -> None:
    g = torch.Generator().manual_seed(5)
    s = torch.randn(2, 3, 4, 4, generator=g, requires_grad=True)
    t = torch.randn(2, 3, 4, 4, generator=g, requires_grad=True)
    got = fitnet_loss(s, t)
    sd, td = s.detach().double().numpy(), t.detach().double().numpy()
    total = 0.0
    for idx in np.ndindex(sd.shape):
        total += (sd[idx] - td[idx]) ** 2
    assert got.item() == pytest.approx(total / sd.size, rel=1e-5)
    got.backward()
    assert t.grad is None
    np.testing.assert_allclose(s.grad.numpy(), 2 * (sd - td) / sd.size, atol=1e-6)


def test_fitnet_loss_shape_mismatch_raises() -> None:
    with pytest.raises(ValueError):
        fitnet_loss(torch.zeros(1, 2, 4, 4), torch.zeros(1, 2, 2, 2))


@pytest.mark.parametrize(
    ("student", "teacher", "layer"),
    [
        ((16, 8, 8), (32, 8, 8), torch.nn.Conv2d),
        ((16, 16, 12), (32, 8, 6), torch.nn.Conv2d),
        ((16, 4, 4), (32, 8, 8), torch.nn.ConvTranspose2d),
    ],
)
def test_conv_regressor_shapes(student: tuple, teacher: tuple, layer: type) -> None:
    reg = ConvRegressor(student, teacher)
    assert type(reg.conv) is layer
    out = reg(torch.randn(2, *student))
    assert out.shape == (2, *teacher)
    assert (out >= 0).all()  # BN + ReLU at the end
    assert isinstance(reg.bn, torch.nn.BatchNorm2d)


def test_conv_regressor_layer_hyperparameters() -> None:
    assert ConvRegressor((4, 8, 8), (6, 8, 8)).conv.kernel_size == (1, 1)
    down = ConvRegressor((4, 8, 8), (6, 4, 4)).conv
    assert (down.kernel_size, down.stride, down.padding) == ((3, 3), (2, 2), (1, 1))
    up = ConvRegressor((4, 4, 4), (6, 8, 8)).conv
    assert (up.kernel_size, up.stride, up.padding) == ((4, 4), (2, 2), (1, 1))


@pytest.mark.parametrize(
    ("student", "teacher"), [((16, 12, 12), (32, 4, 4)), ((16, 8, 8), (32, 8, 4)), ((16, 3, 3), (32, 8, 8))]
)
def test_conv_regressor_rejects_other_ratios(student: tuple, teacher: tuple) -> None:
    with pytest.raises(ValueError) as err:
        ConvRegressor(student, teacher)
    assert str(student) in str(err.value) and str(teacher) in str(err.value)


# ------------------------------------------------------------------------------------ AT


def _ref_attention(f: np.ndarray, p: float) -> np.ndarray:
    b, c, h, w = f.shape
    out = np.zeros((b, h * w))
    for i in range(b):
        for y in range(h):
            for x in range(w):
                out[i, y * w + x] = sum(f[i, ch, y, x] ** p for ch in range(c)) / c
        out[i] /= math.sqrt(sum(v * v for v in out[i]))
    return out


def _avg_pool2(f: np.ndarray) -> np.ndarray:
    b, c, h, w = f.shape
    return f.reshape(b, c, h // 2, 2, w // 2, 2).mean(axis=(3, 5))


@pytest.mark.parametrize("p", [2.0, 4.0])
def test_at_loss_same_size(p: float) -> None:
    g = torch.Generator().manual_seed(6)
    s = torch.randn(3, 4, 5, 5, generator=g, requires_grad=True)
    t = torch.randn(3, 8, 5, 5, generator=g, requires_grad=True)
    got = at_loss(s, t, p=p)
    a_s = _ref_attention(s.detach().double().numpy(), p)
    a_t = _ref_attention(t.detach().double().numpy(), p)
    assert got.item() == pytest.approx(((a_s - a_t) ** 2).mean(), rel=1e-5)
    got.backward()
    assert t.grad is None and s.grad is not None


def test_at_loss_pools_the_larger_map() -> None:
    g = torch.Generator().manual_seed(7)
    s = torch.randn(2, 4, 8, 8, generator=g, requires_grad=True)
    t = torch.randn(2, 6, 4, 4, generator=g, requires_grad=True)
    a_s = _ref_attention(_avg_pool2(s.detach().double().numpy()), 2)
    a_t = _ref_attention(t.detach().double().numpy(), 2)
    expected = ((a_s - a_t) ** 2).mean()
    assert at_loss(s, t).item() == pytest.approx(expected, rel=1e-5)
    # Teacher larger: the teacher map is pooled instead.
    a_s2 = _ref_attention(t.detach().double().numpy(), 2)
    a_t2 = _ref_attention(_avg_pool2(s.detach().double().numpy()), 2)
    loss = at_loss(t, s)
    assert loss.item() == pytest.approx(((a_s2 - a_t2) ** 2).mean(), rel=1e-5)
    loss.backward()
    assert s.grad is None and t.grad is not None


# ------------------------------------------------------------------------------------ SP


def _ref_sp(fs: np.ndarray, ft: np.ndarray) -> float:
    b = fs.shape[0]

    def gram(f: np.ndarray) -> np.ndarray:
        q = f.reshape(b, -1)
        g = np.array([[float(np.dot(q[i], q[j])) for j in range(b)] for i in range(b)])
        for i in range(b):
            g[i] /= math.sqrt(sum(v * v for v in g[i]))
        return g

    d = gram(ft) - gram(fs)
    return sum(d[i, j] ** 2 for i in range(b) for j in range(b)) / (b * b)


def test_sp_loss_matches_reference_with_different_shapes() -> None:
    g = torch.Generator().manual_seed(8)
    s = torch.randn(5, 4, 6, 6, generator=g, requires_grad=True)
    t = torch.randn(5, 16, 3, 3, generator=g, requires_grad=True)
    got = sp_loss(s, t)
    expected = _ref_sp(s.detach().double().numpy(), t.detach().double().numpy())
    assert got.item() == pytest.approx(expected, rel=1e-5)
    got.backward()
    assert t.grad is None and s.grad is not None and s.grad.abs().sum() > 0


def test_sp_loss_batch_mismatch_raises() -> None:
    with pytest.raises(ValueError):
        sp_loss(torch.randn(4, 2, 3, 3), torch.randn(5, 2, 3, 3))
