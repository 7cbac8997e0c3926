"""Multi-teacher losses against independent float64 computations from the equations."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from detkd.losses.multi_teacher import (
    CAMKDRegressors,
    aekd_loss,
    aekd_nu,
    aekd_weights,
    aver_loss,
    camkd_inter_loss,
    camkd_kd_loss,
    confidence_weights,
    ebkd_loss,
    ebkd_weights,
    fitnet_mkd_loss,
    solve_one_class_svm_dual,
)


def _np_softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def _ref_kd_rows(zs: np.ndarray, zt: np.ndarray, t: float) -> np.ndarray:
    """Per-sample T^2 KL(softmax(zt/T) || softmax(zs/T)) with explicit loops."""
    out = np.zeros(zs.shape[0])
    for i in range(zs.shape[0]):
        ps, pt = _np_softmax(zs[i] / t), _np_softmax(zt[i] / t)
        out[i] = t * t * sum(pt[c] * (math.log(pt[c]) - math.log(ps[c])) for c in range(zs.shape[1]))
    return out


def _setup(b: int = 6, c: int = 10, k: int = 3, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    zs = (torch.randn(b, c, generator=g) * 2).requires_grad_(True)
    zts = [(torch.randn(b, c, generator=g) * (1.0 + j)).requires_grad_(True) for j in range(k)]
    labels = torch.randint(0, c, (b,), generator=g)
    return zs, zts, labels


def _np(x: torch.Tensor) -> np.ndarray:
    return x.detach().double().numpy()


# ----------------------------------------------------------------------------------- AVER


def test_aver_is_mean_of_kd_losses() -> None:
    zs, zts, _ = _setup()
    got = aver_loss(zs, zts, temperature=4.0)
    expected = np.mean([_ref_kd_rows(_np(zs), _np(t), 4.0).mean() for t in zts])
    assert got.item() == pytest.approx(expected, rel=1e-5)
    # Not KD towards the averaged teacher.
    mean_teacher = np.mean([_np(t) for t in zts], axis=0)
    assert got.item() != pytest.approx(_ref_kd_rows(_np(zs), mean_teacher, 4.0).mean(), rel=1e-3)
    got.backward()
    assert all(t.grad is None for t in zts)


# ----------------------------------------------------------------------------------- EBKD


def _ref_entropy(z: np.ndarray) -> np.ndarray:
    out = np.zeros(z.shape[0])
    for i in range(z.shape[0]):
        p = _np_softmax(z[i])
        out[i] = -sum(pc * math.log(pc) for pc in p)
    return out


def test_ebkd_weights_reference_and_sum_k_minus_1() -> None:
    k = 4
    zs, zts, _ = _setup(k=k, seed=1)
    w = ebkd_weights(zts)
    assert w.shape == (k, zs.shape[0])
    h = np.stack([_ref_entropy(_np(t)) for t in zts])
    expected = np.array([[1 - h[kk, i] / h[:, i].sum() for i in range(h.shape[1])] for kk in range(k)])
    np.testing.assert_allclose(w.numpy(), expected, rtol=1e-5)
    np.testing.assert_allclose(w.sum(0).numpy(), np.full(zs.shape[0], k - 1.0), rtol=1e-6)
    assert not w.requires_grad


def test_ebkd_weights_all_one_hot_teachers_no_nan() -> None:
    zts = [torch.tensor([[1e4, 0.0, 0.0]]), torch.tensor([[0.0, 1e4, 0.0]])]
    w = ebkd_weights(zts)
    assert torch.isfinite(w).all()
    assert w.sum().item() == pytest.approx(1.0)


def test_ebkd_loss_reference() -> None:
    k, b = 3, 6
    zs, zts, _ = _setup(b=b, k=k, seed=2)
    got = ebkd_loss(zs, zts, temperature=4.0)
    h = np.stack([_ref_entropy(_np(t)) for t in zts])
    total = 0.0
    for kk, t in enumerate(zts):
        kd = _ref_kd_rows(_np(zs), _np(t), 4.0)
        for i in range(b):
            total += (1 - h[kk, i] / h[:, i].sum()) * kd[i]
    assert got.item() == pytest.approx(total / (b * k), rel=1e-5)
    got.backward()
    assert all(t.grad is None for t in zts) and zs.grad is not None


# ----------------------------------------------------------------------------------- AEKD


def _ref_batch_avg_grads(zs: np.ndarray, zts: list[np.ndarray], t: float) -> np.ndarray:
    """Analytic d(batchmean T^2 KL)/dz_s = T (p_s - p_t) / B, then mean over the batch."""
    b = zs.shape[0]
    return np.stack([(t * (_np_softmax(zs / t) - _np_softmax(zt / t)) / b).mean(axis=0) for zt in zts])


def _sklearn_weights(gram: np.ndarray, nu: float) -> np.ndarray:
    svm_mod = pytest.importorskip("sklearn.svm")
    k = gram.shape[0]
    svm = svm_mod.OneClassSVM(kernel="precomputed", nu=nu, tol=1e-12).fit(gram)
    w = np.zeros(k)
    w[svm.support_] = svm.dual_coef_.ravel() / (k * nu)
    return w


def test_aekd_nu_and_cap() -> None:
    assert aekd_nu(1) == 1.0
    assert aekd_nu(2) == pytest.approx(1 / 1.2)
    assert aekd_nu(5) == pytest.approx(1 / 3)
    assert aekd_nu(3, c_tol=0.1) == pytest.approx(1.0)  # clamped to <= 1
    assert aekd_nu(4, c_tol=10.0) == pytest.approx(0.25)  # clamped to >= 1/K
    for k in (2, 3, 5, 8):
        assert 1.0 / (k * aekd_nu(k)) == pytest.approx(0.6)


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("k", [2, 3, 5])
def test_aekd_weights_match_sklearn(seed: int, k: int) -> None:
    zs, zts, _ = _setup(b=8, c=12, k=k, seed=10 + seed)
    w = aekd_weights(zs, zts, temperature=4.0, c_tol=0.6)
    grads = _ref_batch_avg_grads(_np(zs), [_np(t) for t in zts], 4.0)
    expected = _sklearn_weights(grads @ grads.T, aekd_nu(k, 0.6))
    np.testing.assert_allclose(w.numpy(), expected, atol=2e-5)
    assert w.sum().item() == pytest.approx(1.0, abs=1e-6)
    assert (w >= 0).all() and (w <= 0.6 + 1e-6).all()
    assert not w.requires_grad


@pytest.mark.parametrize("seed", range(6))
def test_one_class_dual_solver_matches_sklearn_on_random_grams(seed: int) -> None:
    rng = np.random.default_rng(seed)
    k = int(rng.integers(2, 7))
    x = rng.normal(size=(k, k + 3)) * rng.uniform(0.1, 3.0, size=(k, 1))
    gram = x @ x.T
    for c_tol in (0.6, 0.3, 0.9):
        nu = aekd_nu(k, c_tol)
        a = solve_one_class_svm_dual(torch.from_numpy(gram), cap=1.0 / (k * nu)).numpy()
        np.testing.assert_allclose(a, _sklearn_weights(gram, nu), atol=1e-6)


def test_one_class_dual_solver_cap_binds() -> None:
    # Teacher 0's gradient is tiny: unconstrained it would take all the weight; the cap
    # stops it at 0.6 and the rest goes to the next-smallest direction.
    gram = torch.tensor([[1e-4, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 4.0]], dtype=torch.float64)
    a = solve_one_class_svm_dual(gram, cap=0.6)
    # With a_0 = 0.6: min a1^2 + 4 a2^2 s.t. a1 + a2 = 0.4 -> a1 = 0.32, a2 = 0.08.
    np.testing.assert_allclose(a.numpy(), [0.6, 0.32, 0.08], atol=1e-9)
    assert solve_one_class_svm_dual(torch.zeros(3, 3), cap=0.6).tolist() == pytest.approx([1 / 3] * 3)
    with pytest.raises(ValueError):
        solve_one_class_svm_dual(torch.eye(3), cap=0.2)


def test_aekd_loss_value_gradients_and_caller_graph_untouched() -> None:
    torch.manual_seed(0)
    layer = nn.Linear(5, 10)
    x = torch.randn(6, 5)
    zs = layer(x)  # non-leaf: aekd must not backprop into the caller's graph
    _, zts, _ = _setup(b=6, c=10, k=3, seed=3)
    w = aekd_weights(zs, zts)
    assert layer.weight.grad is None and all(t.grad is None for t in zts)
    loss = aekd_loss(zs, zts)
    per_teacher = [_ref_kd_rows(_np(zs), _np(t), 4.0).mean() for t in zts]
    assert loss.item() == pytest.approx(float(np.dot(w.numpy(), per_teacher)), rel=1e-5)
    zs.retain_grad()
    loss.backward()
    assert all(t.grad is None for t in zts)
    # Weights held constant: dL/dz_s = sum_k w_k T (p_s - p_tk) / B exactly.
    ps = _np_softmax(_np(zs) / 4.0)
    expected = sum(wk * 4.0 * (ps - _np_softmax(_np(t) / 4.0)) / 6 for wk, t in zip(w.tolist(), zts))
    np.testing.assert_allclose(zs.grad.numpy(), expected, atol=1e-6)


def test_aekd_normalize_option_matches_authors_variant() -> None:
    k = 3
    zs, zts, _ = _setup(b=8, c=12, k=k, seed=4)
    w = aekd_weights(zs, zts, normalize=True)
    grads = _ref_batch_avg_grads(_np(zs), [_np(t) for t in zts], 4.0)
    norms = np.sqrt((grads**2).sum(1))
    unit = grads / norms[:, None]
    ref = _sklearn_weights(unit @ unit.T, aekd_nu(k)) / norms
    np.testing.assert_allclose(w.numpy(), ref / ref.sum(), atol=2e-5)


# -------------------------------------------------------------------------------- CA-MKD


def _ref_conf_weights(losses: np.ndarray) -> np.ndarray:
    k, b = losses.shape
    w = np.zeros_like(losses)
    for i in range(b):
        denom = sum(math.exp(losses[j, i]) for j in range(k))
        for kk in range(k):
            w[kk, i] = (1 - math.exp(losses[kk, i]) / denom) / (k - 1)
    return w


def _ref_ce_rows(z: np.ndarray, y: np.ndarray) -> np.ndarray:
    return np.array([-math.log(_np_softmax(z[i])[y[i]]) for i in range(z.shape[0])])


def test_confidence_weights_reference_and_sum_to_one() -> None:
    losses = torch.rand(4, 7, generator=torch.Generator().manual_seed(0)) * 3
    w = confidence_weights(losses)
    np.testing.assert_allclose(w.numpy(), _ref_conf_weights(losses.double().numpy()), rtol=1e-5)
    np.testing.assert_allclose(w.sum(0).numpy(), np.ones(7), rtol=1e-6)
    # Lower loss -> higher weight.
    assert (w.argmax(0) == losses.argmin(0)).all()
    assert torch.equal(confidence_weights(torch.rand(1, 3)), torch.ones(1, 3))


def test_camkd_kd_loss_reference_and_extra_one_over_k() -> None:
    k, b = 3, 6
    zs, zts, y = _setup(b=b, k=k, seed=5)
    got = camkd_kd_loss(zs, zts, y, temperature=4.0)
    ce = np.stack([_ref_ce_rows(_np(t), y.numpy()) for t in zts])
    w = _ref_conf_weights(ce)
    weighted_sum = 0.0
    for kk, t in enumerate(zts):
        kd = _ref_kd_rows(_np(zs), _np(t), 4.0)
        weighted_sum += sum(w[kk, i] * kd[i] for i in range(b))
    assert got.item() == pytest.approx(weighted_sum / (b * k), rel=1e-5)
    # The extra 1/K: without it the value would be K times larger.
    assert got.item() * k == pytest.approx(weighted_sum / b, rel=1e-5)
    got.backward()
    assert all(t.grad is None for t in zts) and zs.grad is not None


def _inter_setup(seed: int = 0, weight_grad: bool = True):
    g = torch.Generator().manual_seed(seed)
    b, c_cls = 5, 4
    shapes = [(3, 4, 4), (6, 2, 2)]
    regs = [torch.randn(b, *s, generator=g).requires_grad_(True) for s in shapes]
    teach = [torch.randn(b, *s, generator=g).requires_grad_(True) for s in shapes]
    fcs = []
    for s in shapes:
        fc = nn.Linear(s[0], c_cls)
        with torch.no_grad():
            fc.weight.copy_(torch.randn(c_cls, s[0], generator=g))
            fc.bias.zero_()
        fc.requires_grad_(weight_grad)
        fcs.append(fc)
    clfs = [lambda f, fc=fc: fc(f.mean(dim=(2, 3))) for fc in fcs]
    y = torch.randint(0, c_cls, (b,), generator=g)
    return regs, teach, fcs, clfs, y


def test_camkd_inter_loss_reference() -> None:
    regs, teach, fcs, clfs, y = _inter_setup()
    got = camkd_inter_loss(regs, teach, clfs, y)
    b, k = regs[0].shape[0], len(regs)
    ce_rows, mse_rows = [], []
    for r, t, fc in zip(regs, teach, fcs):
        pooled = _np(r).mean(axis=(2, 3))
        z = pooled @ _np(fc.weight).T + _np(fc.bias)
        ce_rows.append(_ref_ce_rows(z, y.numpy()))
        diff = (_np(r) - _np(t)) ** 2
        mse_rows.append(np.array([diff[i].sum() / diff[i].size for i in range(b)]))
    w = _ref_conf_weights(np.stack(ce_rows))
    expected = sum(w[kk, i] * mse_rows[kk][i] for kk in range(k) for i in range(b)) / (b * k)
    assert got.item() == pytest.approx(expected, rel=1e-5)
    got.backward()
    assert all(t.grad is None for t in teach)


def test_camkd_inter_weights_carry_gradient_unless_detached() -> None:
    regs, teach, fcs, clfs, y = _inter_setup(seed=1)
    camkd_inter_loss(regs, teach, clfs, y).backward()
    # The classifier is reached only through the weights w~: it gets gradient by default.
    assert fcs[0].weight.grad is not None and fcs[0].weight.grad.abs().sum() > 0
    grad_default = [r.grad.clone() for r in regs]

    regs2, teach2, fcs2, clfs2, y2 = _inter_setup(seed=1)
    camkd_inter_loss(regs2, teach2, clfs2, y2, detach_weights=True).backward()
    assert all(fc.weight.grad is None for fc in fcs2)
    assert not torch.allclose(grad_default[0], regs2[0].grad)
    # With detached weights the gradient is exactly w~ * 2 (r - F_t) / (n_chw B K).
    ce = np.stack(
        [_ref_ce_rows(_np(r).mean(axis=(2, 3)) @ _np(fc.weight).T, y2.numpy()) for r, fc in zip(regs2, fcs2)]
    )
    w = _ref_conf_weights(ce)
    b, k = regs2[0].shape[0], len(regs2)
    for kk, (r, t) in enumerate(zip(regs2, teach2)):
        n = r[0].numel()
        expected = w[kk][:, None, None, None] * 2 * (_np(r) - _np(t)) / (n * b * k)
        np.testing.assert_allclose(r.grad.numpy(), expected, atol=1e-7)


def test_camkd_regressors_resize_rules() -> None:
    regs = CAMKDRegressors(4, [(4, 2, 2), (4, 12, 12), (6, 6, 6)])
    regs.eval()  # BN with default statistics: x / sqrt(1 + eps)
    for seq in regs.regressors[:2]:
        with torch.no_grad():
            seq[0].weight.copy_(torch.eye(4).view(4, 4, 1, 1))
            seq[0].bias.zero_()
    x = torch.rand(2, 4, 6, 6) + 0.1  # positive, so ReLU is the identity
    out = regs(x)
    assert [tuple(o.shape) for o in out] == [(2, 4, 2, 2), (2, 4, 12, 12), (2, 6, 6, 6)]
    bn_scale = 1 / math.sqrt(1 + 1e-5)
    xd = x.double().numpy()
    # larger -> average pool over 3x3 blocks (bilinear would sample, not average)
    pooled = xd.reshape(2, 4, 2, 3, 2, 3).mean(axis=(3, 5))
    np.testing.assert_allclose(out[0].detach().numpy(), pooled * bn_scale, atol=1e-6)
    # smaller -> bilinear (align_corners=False): at scale 2 the output pixel (0, 0) equals
    # the input (0, 0) (edge clamp), and pixel (1, 1) = 0.75^2 x00 + 0.75*0.25 (x01 + x10) + 0.25^2 x11.
    up = out[1].detach().double().numpy() / bn_scale
    np.testing.assert_allclose(up[:, :, 0, 0], xd[:, :, 0, 0], atol=1e-6)
    manual = (
        0.5625 * xd[:, :, 0, 0] + 0.1875 * (xd[:, :, 0, 1] + xd[:, :, 1, 0]) + 0.0625 * xd[:, :, 1, 1]
    )
    np.testing.assert_allclose(up[:, :, 1, 1], manual, atol=1e-6)
    assert all(isinstance(seq[0], nn.Conv2d) and seq[0].kernel_size == (1, 1) for seq in regs.regressors)


def test_fitnet_mkd_loss_mean_over_teachers_keeps_graph() -> None:
    g = torch.Generator().manual_seed(9)
    regs = [torch.randn(2, 3, 4, 4, generator=g, requires_grad=True) for _ in range(3)]
    teach = [torch.randn(2, 3, 4, 4, generator=g, requires_grad=True) for _ in range(3)]
    got = fitnet_mkd_loss(regs, teach)
    expected = np.mean([((_np(r) - _np(t)) ** 2).mean() for r, t in zip(regs, teach)])
    assert got.item() == pytest.approx(expected, rel=1e-5)
    got.backward()
    for r, t in zip(regs, teach):
        assert t.grad is None
        np.testing.assert_allclose(r.grad.numpy(), 2 * (_np(r) - _np(t)) / (r.numel() * 3), atol=1e-7)
