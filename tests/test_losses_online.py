"""DML, FFL and SCD against independent float64 computations from the equations."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from detkd.losses.online import FusionModule, dml_losses, ffl_kl, ffl_losses, ffl_rampup, scd_loss


def _np(x: torch.Tensor) -> np.ndarray:
    return x.detach().double().numpy()


def _softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def _ref_kl_batchmean(p: np.ndarray, q: np.ndarray) -> float:
    """sum_i sum_c p (log p - log q) / B with loops (p: target probs, q: student probs)."""
    total = 0.0
    for i in range(p.shape[0]):
        for c in range(p.shape[1]):
            if p[i, c] > 0:
                total += p[i, c] * (math.log(p[i, c]) - math.log(q[i, c]))
    return total / p.shape[0]


def _ref_ce(z: np.ndarray, y: np.ndarray) -> float:
    return float(np.mean([-math.log(_softmax(z[i])[y[i]]) for i in range(z.shape[0])]))


def _peers(k: int, b: int = 6, c: int = 5, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    zs = [(torch.randn(b, c, generator=g) * 2).requires_grad_(True) for _ in range(k)]
    y = torch.randint(0, c, (b,), generator=g)
    return zs, y


# ------------------------------------------------------------------------------------ DML


def test_dml_peers_reference_k3() -> None:
    zs, y = _peers(3)
    losses = dml_losses(zs, y)
    probs = [_softmax(_np(z)) for z in zs]
    for k in range(3):
        kl = sum(_ref_kl_batchmean(probs[l], probs[k]) for l in range(3) if l != k) / 2
        assert losses[k].item() == pytest.approx(_ref_ce(_np(zs[k]), y.numpy()) + kl, rel=1e-5)


def test_dml_ensemble_reference_and_relation_to_peers() -> None:
    zs, y = _peers(3, seed=1)
    ens = dml_losses(zs, y, mode="ensemble")
    peers = dml_losses(zs, y, mode="peers")
    probs = [_softmax(_np(z)) for z in zs]
    for k in range(3):
        target = np.mean([probs[l] for l in range(3) if l != k], axis=0)
        expected = _ref_ce(_np(zs[k]), y.numpy()) + _ref_kl_batchmean(target, probs[k])
        assert ens[k].item() == pytest.approx(expected, rel=1e-5)
        assert ens[k].item() != pytest.approx(peers[k].item(), rel=1e-4)  # K = 3: different
    z2, y2 = _peers(2, seed=2)
    for a, b in zip(dml_losses(z2, y2, mode="ensemble"), dml_losses(z2, y2, mode="peers")):
        assert a.item() == pytest.approx(b.item(), rel=1e-6)  # K = 2: identical


def test_dml_peer_targets_are_detached() -> None:
    for mode in ("peers", "ensemble"):
        zs, y = _peers(3, seed=3)
        dml_losses(zs, y, mode=mode)[0].backward()
        assert zs[0].grad is not None
        assert zs[1].grad is None and zs[2].grad is None


def test_dml_semi_supervised_ce_over_labelled_only() -> None:
    zs, y = _peers(2, b=6, seed=4)
    mask = torch.tensor([True, False, True, False, False, True])
    y_placeholder = torch.where(mask, y, torch.full_like(y, -1))  # unlabelled rows: any value
    losses = dml_losses(zs, y_placeholder, labelled_mask=mask)
    probs = [_softmax(_np(z)) for z in zs]
    idx = mask.numpy()
    for k in range(2):
        ce = _ref_ce(_np(zs[k])[idx], y.numpy()[idx])
        kl = _ref_kl_batchmean(probs[1 - k], probs[k])  # KL over all samples
        assert losses[k].item() == pytest.approx(ce + kl, rel=1e-5)


def test_dml_semi_supervised_no_labelled_sample_gives_zero_ce() -> None:
    zs, _ = _peers(2, b=4, seed=5)
    y = torch.full((4,), -1, dtype=torch.long)
    mask = torch.zeros(4, dtype=torch.bool)
    losses = dml_losses(zs, y, labelled_mask=mask)
    probs = [_softmax(_np(z)) for z in zs]
    for k in range(2):
        assert torch.isfinite(losses[k])
        assert losses[k].item() == pytest.approx(_ref_kl_batchmean(probs[1 - k], probs[k]), rel=1e-5)
    losses[0].backward()
    assert torch.isfinite(zs[0].grad).all()
    # Only the KL term's gradient remains: (p_0 - p_1) / B.
    np.testing.assert_allclose(zs[0].grad.numpy(), (probs[0] - probs[1]) / 4, atol=1e-6)


def test_dml_validation() -> None:
    zs, y = _peers(1)
    with pytest.raises(ValueError):
        dml_losses(zs, y)
    zs, y = _peers(2)
    with pytest.raises(ValueError):
        dml_losses(zs, y, mode="mean")  # type: ignore[arg-type]


# ------------------------------------------------------------------------------------ FFL


def test_ffl_rampup_values() -> None:
    assert ffl_rampup(0) == pytest.approx(math.exp(-5))
    assert ffl_rampup(40) == pytest.approx(math.exp(-5 * 0.25))
    assert ffl_rampup(80) == pytest.approx(1.0)
    assert ffl_rampup(150) == pytest.approx(1.0)
    assert ffl_rampup(10, rampup_epochs=20) == pytest.approx(math.exp(-1.25))


def _ffl_setup(seed: int = 0, n_sub: int = 2, b: int = 6, c: int = 7):
    g = torch.Generator().manual_seed(seed)
    subs = [(torch.randn(b, c, generator=g) * 2).requires_grad_(True) for _ in range(n_sub)]
    fused = (torch.randn(b, c, generator=g) * 2).requires_grad_(True)
    y = torch.randint(0, c, (b,), generator=g)
    return subs, fused, y


@pytest.mark.parametrize("epoch", [0, 30, 80, 200])
def test_ffl_losses_reference(epoch: int) -> None:
    t = 3.0
    subs, fused, y = _ffl_setup(seed=epoch)
    out = ffl_losses(subs, fused, y, epoch)
    zf = _np(fused)
    ze = np.mean([_np(z) for z in subs], axis=0)
    ce = [_ref_ce(_np(z), y.numpy()) for z in subs]
    ce_f = _ref_ce(zf, y.numpy())
    kd_subs = sum(t * t * _ref_kl_batchmean(_softmax(zf / t), _softmax(_np(z) / t)) for z in subs)
    kd_fused = t * t * _ref_kl_batchmean(_softmax(ze / t), _softmax(zf / t))
    w = math.exp(-5 * (1 - min(epoch, 80) / 80) ** 2)
    assert [x.item() for x in out["ce"]] == pytest.approx(ce, rel=1e-5)
    assert out["ce_fused"].item() == pytest.approx(ce_f, rel=1e-5)
    assert out["kd_subs"].item() == pytest.approx(kd_subs, rel=1e-5)
    assert out["kd_fused"].item() == pytest.approx(kd_fused, rel=1e-5)
    assert out["weight"] == pytest.approx(w)
    assert out["total"].item() == pytest.approx(sum(ce) + ce_f + w * (kd_subs + kd_fused), rel=1e-5)


def test_ffl_targets_detached() -> None:
    subs, fused, y = _ffl_setup(seed=7, n_sub=3)
    out = ffl_losses(subs, fused, y, epoch=80)
    out["kd_subs"].backward(retain_graph=True)
    assert fused.grad is None  # the fused distribution is only a target here
    assert all(z.grad is not None for z in subs)
    for z in subs:
        z.grad = None
    out["kd_fused"].backward()
    assert all(z.grad is None for z in subs)  # the ensemble is only a target here
    assert fused.grad is not None


def test_ffl_eps_option_adds_to_target_without_renormalizing() -> None:
    subs, fused, _ = _ffl_setup(seed=8)
    t, eps = 3.0, 1e-3
    got = ffl_kl(subs[0], fused, temperature=t, eps=eps)
    p = _softmax(_np(fused) / t) + eps
    q = _softmax(_np(subs[0]) / t)
    expected = t * t * float(np.sum(p * (np.log(p) - np.log(q)))) / p.shape[0]
    assert got.item() == pytest.approx(expected, rel=1e-5)
    assert got.item() != pytest.approx(ffl_kl(subs[0], fused, temperature=t).item(), rel=1e-4)


def test_fusion_module_shapes_and_gradient() -> None:
    torch.manual_seed(0)
    feats = [
        torch.randn(3, 8, 4, 4, requires_grad=True),
        torch.randn(3, 8, 8, 8, requires_grad=True),  # larger: pooled to 4x4
        torch.randn(3, 8, 2, 2, requires_grad=True),  # smaller: bilinear to 4x4
    ]
    fusion = FusionModule([8, 8, 8], num_classes=10)
    assert fusion.dw_conv.groups == 24 and fusion.dw_conv.kernel_size == (3, 3)
    assert fusion.pw_conv.kernel_size == (1, 1) and fusion.pw_conv.out_channels == 8
    out = fusion(feats)
    assert out.shape == (3, 10)
    out.sum().backward()
    assert all(f.grad is not None and f.grad.abs().sum() > 0 for f in feats)


@pytest.mark.parametrize("align", [False, True])
def test_fusion_module_mixed_channels(align: bool) -> None:
    fusion = FusionModule([4, 8], num_classes=5, align_channels=align)
    out = fusion([torch.randn(2, 4, 4, 4), torch.randn(2, 8, 4, 4)])
    assert out.shape == (2, 5)
    assert fusion.dw_conv.in_channels == (16 if align else 12)
    with pytest.raises(ValueError):
        fusion([torch.randn(2, 4, 4, 4)])


# ------------------------------------------------------------------------------------ SCD


def _ref_scd_sim(f: np.ndarray) -> np.ndarray:
    b, c, h, w = f.shape
    a = np.zeros((b, h * w))
    for i in range(b):
        for y in range(h):
            for x in range(w):
                a[i, y * w + x] = sum(f[i, ch, y, x] ** 2 for ch in range(c)) / c
        a[i] /= math.sqrt(float(np.sum(a[i] ** 2)))
    s = np.array([[float(np.dot(a[i], a[j])) for j in range(b)] for i in range(b)])
    for i in range(b):
        s[i] /= math.sqrt(float(np.sum(s[i] ** 2)))
    return s


def _scd_maps(seed: int = 0, b: int = 4):
    g = torch.Generator().manual_seed(seed)
    shapes = [(4, 8, 8), (6, 4, 4), (8, 2, 2)]
    return [torch.randn(b, *s, generator=g).requires_grad_(True) for s in shapes]


@pytest.mark.parametrize("target", ["deepest", "next"])
def test_scd_loss_reference(target: str) -> None:
    maps = _scd_maps()
    got = scd_loss(maps, target=target)  # type: ignore[arg-type]
    sims = [_ref_scd_sim(_np(f)) for f in maps]
    b = maps[0].shape[0]
    expected = 0.0
    for l in range(len(maps) - 1):
        tgt = sims[-1] if target == "deepest" else sims[l + 1]
        expected += float(np.sum((sims[l] - tgt) ** 2)) / (b * b)
    assert got.item() == pytest.approx(expected, rel=1e-5)


@pytest.mark.parametrize("target", ["deepest", "next"])
def test_scd_deepest_map_gets_no_gradient(target: str) -> None:
    maps = _scd_maps(seed=1)
    scd_loss(maps, target=target).backward()  # type: ignore[arg-type]
    assert maps[-1].grad is None  # used only as a target
    assert all(f.grad is not None and f.grad.abs().sum() > 0 for f in maps[:-1])


def test_scd_next_targets_detached() -> None:
    # With target="next", F_2 is the target of F_1 (detached) and the student of F_3: its
    # gradient must equal that of its own term alone.
    maps = _scd_maps(seed=2)
    scd_loss(maps, target="next").backward()
    full_grad = maps[1].grad.clone()
    m1, m2 = maps[1].detach().clone().requires_grad_(True), maps[2].detach()
    scd_loss([m1, m2], target="next").backward()
    torch.testing.assert_close(full_grad, m1.grad)


def test_scd_validation() -> None:
    with pytest.raises(ValueError):
        scd_loss([torch.randn(2, 3, 4, 4)])
    with pytest.raises(ValueError):
        scd_loss(_scd_maps(), target="first")  # type: ignore[arg-type]
