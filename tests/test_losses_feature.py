"""Tests of the FPN-feature distillation losses (PKD, CWD, MGD, FGD, FGFI).

Every expected value is computed independently of the code under test: explicit NumPy float64
loops over images / channels / positions (exact fractions for the FGD box grid), written from the
equations in docs/methods.md, section 3. Maps are non-square (H != W) with N >= 2 so that a transposed
mask or a mixed-up axis shows.
"""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.image_list import ImageList

from detkd.losses.feature import (
    FGD,
    MGD,
    GcBlock,
    MGDGenerator,
    cwd_loss,
    fgd_attention,
    fgd_loss,
    fgd_masks,
    fgfi_masks,
    masked_imitation_loss,
    match_size,
    mgd_loss,
    mgd_mask,
    pkd_loss,
)

# --------------------------------------------------------------------------- helpers


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(0)


def t64(a, grad: bool = False) -> torch.Tensor:
    return torch.tensor(np.asarray(a), dtype=torch.float64, requires_grad=grad)


def maps(rng, shape=(2, 3, 4, 6), scale=2.0):
    """A student map (requires grad) and a teacher map that also requires grad: the loss must
    still leave the teacher's .grad at None."""
    s = rng.normal(size=shape) * scale + 0.3
    t = rng.normal(size=shape) * scale - 0.2
    return s, t, t64(s, grad=True), t64(t, grad=True)


def assert_grad_student_only(loss: torch.Tensor, s: torch.Tensor, t: torch.Tensor) -> None:
    loss.backward()
    assert s.grad is not None and torch.isfinite(s.grad).all() and s.grad.abs().sum() > 0
    assert t.grad is None


def np_softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max())
    return e / e.sum()


# --------------------------------------------------------------------------- PKD


def ref_pkd(s: np.ndarray, t: np.ndarray) -> float:
    n, c, h, w = s.shape

    def normalize(x):
        out = np.zeros_like(x)
        for ch in range(c):
            vals = [x[i, ch, y, z] for i in range(n) for y in range(h) for z in range(w)]
            mean = sum(vals) / len(vals)
            std = math.sqrt(sum((v - mean) ** 2 for v in vals) / (len(vals) - 1))
            out[:, ch] = (x[:, ch] - mean) / (std + 1e-6)
        return out

    zs, zt = normalize(s), normalize(t)
    acc = 0.0
    for i in range(n):
        for ch in range(c):
            for y in range(h):
                for z in range(w):
                    acc += (zs[i, ch, y, z] - zt[i, ch, y, z]) ** 2 / 2
    return acc / s.size


def test_pkd_matches_reference_and_gradient_only_to_student(rng):
    s, t, S, T = maps(rng, (2, 3, 4, 6))
    got = pkd_loss(S, T)
    assert got.dim() == 0
    np.testing.assert_allclose(got.item(), ref_pkd(s, t), rtol=1e-10)
    assert_grad_student_only(got, S, T)


def test_pkd_is_one_minus_pearson_and_scale_free(rng):
    s, t, S, T = maps(rng, (3, 4, 5, 3))
    k = 3 * 5 * 3
    # with the unbiased std, mean (z_s - z_t)^2 / 2 = (k - 1) / k * mean_c (1 - r_c)
    r = [np.corrcoef(s[:, c].ravel(), t[:, c].ravel())[0, 1] for c in range(4)]
    expected = (k - 1) / k * np.mean(1 - np.array(r))
    np.testing.assert_allclose(pkd_loss(S, T).item(), expected, rtol=1e-5)
    # a per-channel affine map of the student changes nothing (no alignment conv needed)
    a = t64(np.array([0.5, 3.0, 7.0, 0.1]).reshape(1, 4, 1, 1))
    np.testing.assert_allclose(pkd_loss(S * a + 4.0, T).item(), pkd_loss(S, T).item(), rtol=1e-5)


def test_pkd_single_value_per_channel_is_zero_not_nan():
    s = torch.randn(1, 3, 1, 1, dtype=torch.float64, requires_grad=True)
    loss = pkd_loss(s, torch.randn(1, 3, 1, 1, dtype=torch.float64))
    assert loss.item() == 0.0
    loss.backward()
    assert torch.isfinite(s.grad).all()


def test_pkd_rejects_mismatched_maps():
    with pytest.raises(ValueError, match="same shape"):
        pkd_loss(torch.zeros(2, 3, 4, 6), torch.zeros(2, 3, 6, 4))


def test_pkd_half_precision_computes_in_float32(rng):
    _, _, S, T = maps(rng)
    got = pkd_loss(S.detach().to(torch.bfloat16), T.detach().to(torch.bfloat16))
    assert got.dtype == torch.float32 and torch.isfinite(got)
    np.testing.assert_allclose(got.item(), pkd_loss(S, T).item(), rtol=0.05)


# --------------------------------------------------------------------------- CWD


def ref_cwd(s: np.ndarray, t: np.ndarray, tau: float) -> float:
    n, c = s.shape[:2]
    acc = 0.0
    for i in range(n):
        for ch in range(c):
            p_t = np_softmax(t[i, ch].ravel() / tau)
            p_s = np_softmax(s[i, ch].ravel() / tau)
            acc += sum(p_t[k] * (math.log(p_t[k]) - math.log(p_s[k])) for k in range(p_t.size))
    return tau**2 * acc / (n * c)


@pytest.mark.parametrize("tau", [1.0, 2.5])
def test_cwd_matches_reference(rng, tau):
    s, t, S, T = maps(rng, (2, 3, 4, 6))
    got = cwd_loss(S, T, temperature=tau)
    np.testing.assert_allclose(got.item(), ref_cwd(s, t, tau), rtol=1e-10)
    assert_grad_student_only(got, S, T)


def test_cwd_zero_for_equal_maps_and_bad_temperature(rng):
    _, _, S, _ = maps(rng)
    assert abs(cwd_loss(S, S.detach().clone()).item()) < 1e-12
    with pytest.raises(ValueError, match="temperature"):
        cwd_loss(S, S, temperature=0.0)


# --------------------------------------------------------------------------- MGD


def np_conv3x3(x: np.ndarray, weight: np.ndarray, bias: np.ndarray) -> np.ndarray:
    """Explicit-loop 3x3 convolution, padding 1, of one image [C, H, W]."""
    c_in, h, w = x.shape
    pad = np.zeros((c_in, h + 2, w + 2))
    pad[:, 1:-1, 1:-1] = x
    out = np.zeros((weight.shape[0], h, w))
    for o in range(weight.shape[0]):
        for y in range(h):
            for z in range(w):
                acc = bias[o]
                for i in range(c_in):
                    for dy in range(3):
                        for dz in range(3):
                            acc += weight[o, i, dy, dz] * pad[i, y + dy, z + dz]
                out[o, y, z] = acc
    return out


def ref_generator(gen: MGDGenerator, x: np.ndarray) -> np.ndarray:
    w1, b1 = gen.conv1.weight.detach().numpy(), gen.conv1.bias.detach().numpy()
    w2, b2 = gen.conv2.weight.detach().numpy(), gen.conv2.bias.detach().numpy()
    return np_conv3x3(np.maximum(np_conv3x3(x, w1, b1), 0.0), w2, b2)


def test_mgd_loss_matches_reference(rng):
    torch.manual_seed(0)
    s, t, S, T = maps(rng, (2, 3, 4, 5))
    gen = MGDGenerator(3).double()
    mask = (rng.uniform(size=(2, 1, 4, 5)) > 0.5).astype(float)
    alpha = 0.3
    got = mgd_loss(S, T, gen, t64(mask), alpha=alpha)
    acc = 0.0
    for i in range(2):
        g = ref_generator(gen, s[i] * mask[i])  # mask broadcast over the channels
        acc += ((g - t[i]) ** 2).sum()
    np.testing.assert_allclose(got.item(), alpha * acc / 2, rtol=1e-10)
    assert_grad_student_only(got, S, T)
    assert gen.conv1.weight.grad is not None and gen.conv1.weight.grad.abs().sum() > 0


def test_mgd_loss_rejects_wrong_mask_shape(rng):
    _, _, S, T = maps(rng, (2, 3, 4, 5))
    with pytest.raises(ValueError, match="mask of shape"):
        mgd_loss(S, T, MGDGenerator(3).double(), torch.ones(2, 1, 5, 4, dtype=torch.float64))


def test_mgd_mask_keyed_reproducible_and_batch_independent():
    shape = (3, 256, 40, 60)
    a = mgd_mask(shape, [7, 8, 9])
    assert a.shape == (3, 1, 40, 60) and a.dtype == torch.float32
    assert set(a.unique().tolist()) <= {0.0, 1.0}
    assert torch.equal(a, mgd_mask(shape, [7, 8, 9]))
    # the same image gets the same mask whatever its batch neighbours
    assert torch.equal(a[1], mgd_mask((1, 256, 40, 60), [8])[0])
    assert torch.equal(a[2], mgd_mask((2, 256, 40, 60), [1, 9])[1])
    # different keys -> different masks
    assert not torch.equal(a[0], a[1])
    # the global RNG neither decides nor is consumed
    state = torch.get_rng_state()
    torch.manual_seed(123)
    before = torch.get_rng_state()
    b = mgd_mask(shape, [7, 8, 9])
    assert torch.equal(torch.get_rng_state(), before)
    assert torch.equal(a, b)
    torch.set_rng_state(state)


@pytest.mark.parametrize("lam", [0.65, 0.2])
def test_mgd_mask_masks_lambda_of_positions(lam):
    m = mgd_mask((4, 1, 150, 200), [0, 1, 2, 3], lambda_mask=lam)
    masked = 1.0 - m.mean().item()
    assert abs(masked - lam) < 0.01  # 120000 draws: the std of the fraction is ~0.0014


def test_mgd_mask_rejects_bad_arguments():
    with pytest.raises(ValueError, match="one key per image"):
        mgd_mask((2, 3, 4, 5), [1])
    with pytest.raises(ValueError, match="lambda_mask"):
        mgd_mask((1, 3, 4, 5), [1], lambda_mask=1.5)


def test_mgd_module_align_and_forward(rng):
    assert isinstance(MGD(8, 8).align, nn.Identity)
    mod = MGD(4, 6, alpha=1e-2).double()
    assert isinstance(mod.align, nn.Conv2d)
    assert (mod.align.in_channels, mod.align.out_channels, mod.align.kernel_size) == (4, 6, (1, 1))
    names = {n for n, _ in mod.named_parameters()}
    assert {"align.weight", "generator.conv1.weight", "generator.conv2.weight"} <= names
    s = t64(rng.normal(size=(2, 4, 3, 5)), grad=True)
    t = t64(rng.normal(size=(2, 6, 3, 5)), grad=True)
    got = mod(s, t, keys=[11, 12])
    mask = mgd_mask(t.shape, [11, 12], 0.65).double()
    expected = mgd_loss(mod.align(s), t, mod.generator, mask, alpha=1e-2)
    assert torch.equal(got, expected)
    assert_grad_student_only(got, s, t)
    # a smaller student map is resized to the teacher's grid first
    small = t64(rng.normal(size=(2, 4, 2, 3)))
    resized = F.interpolate(mod.align(small), size=(3, 5), mode="bilinear", align_corners=False)
    assert torch.allclose(mod(small, t, [11, 12]), mgd_loss(resized, t, mod.generator, mask, 1e-2))


def test_match_size_is_noop_when_sizes_agree(rng):
    x = t64(rng.normal(size=(2, 3, 4, 6)))
    assert match_size(x, (4, 6)) is x
    assert match_size(x, (8, 12)).shape == (2, 3, 8, 12)


# --------------------------------------------------------------------------- FGD attention / masks


def ref_attention(x: np.ndarray, temp: float):
    n, c, h, w = x.shape
    spatial = np.zeros((n, h, w))
    channel = np.zeros((n, c))
    for i in range(n):
        sp = np.array([[sum(abs(x[i, ch, y, z]) for ch in range(c)) / c for z in range(w)] for y in range(h)])
        e = np.exp(sp / temp)
        spatial[i] = h * w * e / e.sum()
        ch_vals = np.array([abs(x[i, ch]).sum() / (h * w) for ch in range(c)])
        e = np.exp(ch_vals / temp)
        channel[i] = c * e / e.sum()
    return spatial, channel


def test_fgd_attention_matches_reference(rng):
    x = rng.normal(size=(2, 5, 3, 7))
    spatial, channel = fgd_attention(t64(x), 0.5)
    assert spatial.shape == (2, 3, 7) and channel.shape == (2, 5)
    ref_s, ref_c = ref_attention(x, 0.5)
    np.testing.assert_allclose(spatial.numpy(), ref_s, rtol=1e-10)
    np.testing.assert_allclose(channel.numpy(), ref_c, rtol=1e-10)
    np.testing.assert_allclose(spatial.sum(dim=(1, 2)).numpy(), [21.0, 21.0])
    np.testing.assert_allclose(channel.sum(dim=1).numpy(), [5.0, 5.0])


def ref_fgd_masks(boxes_per_image, feature_size, image_size):
    """Exact-fraction box scaling and a cell-by-cell max, as docs/methods.md (section 3.4) words it."""
    h, w = feature_size
    img_h, img_w = image_size
    n = len(boxes_per_image)
    fg = np.zeros((n, h, w))
    bg = np.zeros((n, h, w))
    for i, boxes in enumerate(boxes_per_image):
        for x1, y1, x2, y2 in boxes:
            c0 = math.floor(Fraction(x1) * w / img_w)
            c1 = math.ceil(Fraction(x2) * w / img_w)
            r0 = math.floor(Fraction(y1) * h / img_h)
            r1 = math.ceil(Fraction(y2) * h / img_h)
            weight = 1.0 / ((r1 - r0 + 1) * (c1 - c0 + 1))
            for y in range(h):
                for z in range(w):
                    if r0 <= y <= r1 and c0 <= z <= c1:
                        fg[i, y, z] = max(fg[i, y, z], weight)
        count = sum(1 for y in range(h) for z in range(w) if fg[i, y, z] == 0)
        for y in range(h):
            for z in range(w):
                if fg[i, y, z] == 0:
                    bg[i, y, z] = 1.0 / count
    return fg, bg


def test_fgd_masks_hand_checked_non_square():
    # image 64 x 96 (H x W), level 4 x 6 (stride 16)
    boxes = [
        torch.tensor([[16.0, 0.0, 48.0, 32.0]]),  # cols floor(1)..ceil(3), rows 0..2 -> 1/9
        torch.tensor([[80.0, 48.0, 96.0, 64.0]]),  # touches the far corner: cols 5..6, rows 3..4 -> 1/4
    ]
    fg, bg = fgd_masks(boxes, (4, 6), (64, 96))
    assert fg.shape == (2, 4, 6) and bg.shape == (2, 4, 6)
    exp0 = np.zeros((4, 6))
    exp0[0:3, 1:4] = 1.0 / 9
    exp1 = np.zeros((4, 6))
    exp1[3, 5] = 1.0 / 4  # the area counts the cell past the grid (the authors' unclipped bounds)
    np.testing.assert_allclose(fg[0].numpy(), exp0, rtol=1e-7)
    np.testing.assert_allclose(fg[1].numpy(), exp1, rtol=1e-7)
    np.testing.assert_allclose(bg[0].numpy(), (exp0 == 0) / 15.0, rtol=1e-7)
    np.testing.assert_allclose(bg[1].numpy(), (exp1 == 0) / 23.0, rtol=1e-7)


def test_fgd_masks_match_reference_on_random_overlapping_boxes(rng):
    img_h, img_w, feat = (75, 130), (75, 130), (10, 17)
    boxes = []
    for g in (5, 3):
        xy = rng.uniform(0, 1, size=(g, 2)) * [img_w[1] * 0.8, img_h[0] * 0.8]
        wh = rng.uniform(4, 40, size=(g, 2))
        b = np.concatenate([xy, np.minimum(xy + wh, [img_w[1], img_h[0]])], axis=1)
        boxes.append(b)
    fg, bg = fgd_masks([torch.tensor(b, dtype=torch.float32) for b in boxes], feat, img_h)
    # the reference sees the same float32 coordinates, exactly
    ref_fg, ref_bg = ref_fgd_masks([b.astype(np.float32).tolist() for b in boxes], feat, img_h)
    np.testing.assert_allclose(fg.numpy(), ref_fg, rtol=1e-6)
    np.testing.assert_allclose(bg.numpy(), ref_bg, rtol=1e-6)
    assert (fg[0] > 0).sum() > 0 and len(np.unique(ref_fg[0])) > 2  # overlapping boxes of several sizes


def test_fgd_masks_box_edges_on_grid_lines_stay_exact():
    # 42 / 150 * 25 = 7.000000000000001 and 28 / 100 * 25 = 7.000000000000001 in floating point: the
    # ceil must still give 7 (x * W / W_img is exact here), not push the box one cell out
    fg, _ = fgd_masks([torch.tensor([[0.0, 0.0, 42.0, 28.0]])], (25, 25), (100, 150))
    expected = np.zeros((25, 25))
    expected[0:8, 0:8] = 1.0 / 64
    np.testing.assert_allclose(fg[0].numpy(), expected, rtol=1e-7)


def test_fgd_masks_no_boxes_and_all_foreground():
    fg, bg = fgd_masks([torch.zeros((0, 4)), torch.tensor([[0.0, 0.0, 96.0, 64.0]])], (4, 6), (64, 96))
    assert torch.equal(fg[0], torch.zeros(4, 6))
    np.testing.assert_allclose(bg[0].numpy(), np.full((4, 6), 1 / 24), rtol=1e-7)
    assert (fg[1] > 0).all()
    assert torch.equal(bg[1], torch.zeros(4, 6))  # no background: 0, not NaN


# --------------------------------------------------------------------------- GcBlock / FGD loss


def randomize(module: nn.Module, seed: int) -> nn.Module:
    """Random non-zero weights everywhere (so that W2 = 0 cannot hide a wrong path)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=p.dtype) * 0.5)
    return module


def ref_gcblock(gc: GcBlock, x: np.ndarray) -> np.ndarray:
    wk, bk = gc.context_conv.weight.detach().numpy()[0, :, 0, 0], gc.context_conv.bias.item()
    w1, b1 = gc.w1.weight.detach().numpy()[:, :, 0, 0], gc.w1.bias.detach().numpy()
    gam, bet = gc.norm.weight.detach().numpy()[:, 0, 0], gc.norm.bias.detach().numpy()[:, 0, 0]
    w2, b2 = gc.w2.weight.detach().numpy()[:, :, 0, 0], gc.w2.bias.detach().numpy()
    n, c, h, w = x.shape
    out = np.zeros_like(x)
    for i in range(n):
        logits = np.array([[sum(wk[ch] * x[i, ch, y, z] for ch in range(c)) + bk for z in range(w)]
                           for y in range(h)])
        att = np_softmax(logits.ravel()).reshape(h, w)
        ctx = np.array([(att * x[i, ch]).sum() for ch in range(c)])
        hid = w1 @ ctx + b1
        hid = (hid - hid.mean()) / math.sqrt(hid.var() + 1e-5) * gam + bet  # LayerNorm, biased variance
        add = w2 @ np.maximum(hid, 0.0) + b2
        out[i] = x[i] + add[:, None, None]
    return out


def test_gcblock_starts_as_identity_and_matches_reference(rng):
    gc = GcBlock(6).double()
    assert gc.w1.out_channels == 3 and tuple(gc.norm.normalized_shape) == (3, 1, 1)
    assert torch.count_nonzero(gc.w2.weight) == 0 and torch.count_nonzero(gc.w2.bias) == 0
    x = t64(rng.normal(size=(2, 6, 3, 5)))
    assert torch.equal(gc(x), x)
    randomize(gc, 1)
    np.testing.assert_allclose(gc(x).detach().numpy(), ref_gcblock(gc, x.numpy()), rtol=1e-10)


def ref_fgd(s, t, fg, bg, gc_s, gc_t, temp, weights):
    n, c, h, w = s.shape
    sp_t, ch_t = ref_attention(t, temp)
    sp_s, ch_s = ref_attention(s, temp)
    l_fg = l_bg = 0.0
    for i in range(n):
        for ch in range(c):
            for y in range(h):
                for z in range(w):
                    sq = sp_t[i, y, z] * ch_t[i, ch] * (s[i, ch, y, z] - t[i, ch, y, z]) ** 2
                    l_fg += fg[i, y, z] * sq
                    l_bg += bg[i, y, z] * sq
    l_at = (np.abs(ch_s - ch_t).sum() + np.abs(sp_s - sp_t).sum()) / n
    l_gl = ((ref_gcblock(gc_s, s) - ref_gcblock(gc_t, t)) ** 2).sum() / n
    parts = {"fg": l_fg / n, "bg": l_bg / n, "at": l_at, "global": l_gl}
    total = sum(wt * parts[k] for k, wt in zip(("fg", "bg", "at", "global"), weights))
    return total, parts


def test_fgd_loss_matches_reference(rng):
    s, t, S, T = maps(rng, (2, 4, 3, 5))
    boxes = [torch.tensor([[0.0, 0.0, 20.0, 10.0], [30.0, 10.0, 50.0, 30.0]]), torch.tensor([[10.0, 5.0, 35.0, 25.0]])]
    fg, bg = fgd_masks(boxes, (3, 5), (30, 50))
    gc_s, gc_t = randomize(GcBlock(4).double(), 2), randomize(GcBlock(4).double(), 3)
    weights = (0.7, 0.2, 0.05, 0.01)
    total, parts = fgd_loss(S, T, fg.double(), bg.double(), gc_s, gc_t, 0.5, *weights)
    ref_total, ref_parts = ref_fgd(s, t, fg.double().numpy(), bg.double().numpy(), gc_s, gc_t, 0.5, weights)
    assert set(parts) == {"fg", "bg", "at", "global"}
    for k in parts:
        assert parts[k].dim() == 0
        np.testing.assert_allclose(parts[k].item(), ref_parts[k], rtol=1e-10, err_msg=k)
    np.testing.assert_allclose(total.item(), ref_total, rtol=1e-10)
    assert_grad_student_only(total, S, T)
    for gc in (gc_s, gc_t):  # both GcBlocks learn (the teacher side through its own weights only)
        assert gc.w1.weight.grad is not None and gc.w1.weight.grad.abs().sum() > 0


def test_fgd_loss_default_weights_and_no_boxes(rng):
    _, _, S, T = maps(rng, (2, 4, 3, 5))
    fg, bg = fgd_masks([torch.zeros((0, 4)), torch.zeros((0, 4))], (3, 5), (30, 50))
    total, parts = fgd_loss(S, T, fg.double(), bg.double(), GcBlock(4).double(), GcBlock(4).double())
    assert parts["fg"].item() == 0.0 and torch.isfinite(total)
    expected = 5e-5 * parts["fg"] + 2.5e-5 * parts["bg"] + 5e-5 * parts["at"] + 5e-7 * parts["global"]
    assert torch.allclose(total, expected, rtol=1e-12)
    with pytest.raises(ValueError, match="fg mask"):
        fgd_loss(S, T, fg.transpose(1, 2), bg, GcBlock(4).double(), GcBlock(4).double())


def test_fgd_module_align_and_forward(rng):
    assert isinstance(FGD(8, 8).align, nn.Identity)
    mod = FGD(3, 4, temperature=0.7).double()
    assert isinstance(mod.align, nn.Conv2d) and (mod.align.in_channels, mod.align.out_channels) == (3, 4)
    names = {n for n, _ in mod.named_parameters()}
    assert {"align.weight", "gc_student.w2.weight", "gc_teacher.context_conv.weight"} <= names
    randomize(mod.gc_student, 4)
    s = t64(rng.normal(size=(2, 3, 3, 5)), grad=True)
    t = t64(rng.normal(size=(2, 4, 3, 5)), grad=True)
    boxes = [torch.tensor([[0.0, 0.0, 20.0, 10.0]]), torch.zeros((0, 4))]
    total, parts = mod(s, t, boxes, (30, 50))
    fg, bg = fgd_masks(boxes, (3, 5), (30, 50))
    exp_total, exp_parts = fgd_loss(mod.align(s), t, fg.double(), bg.double(), mod.gc_student, mod.gc_teacher,
                                    0.7)
    assert torch.allclose(total, exp_total, rtol=1e-12)
    assert all(torch.allclose(parts[k], exp_parts[k], rtol=1e-12) for k in parts)
    assert_grad_student_only(total, s, t)


# --------------------------------------------------------------------------- masked imitation / FGFI


def ref_masked_imitation(s, t, mask):
    n, c, h, w = s.shape
    num = 0.0
    n_p = 0.0
    for i in range(n):
        for y in range(h):
            for z in range(w):
                n_p += mask[i, y, z]
                for ch in range(c):
                    num += mask[i, y, z] * (s[i, ch, y, z] - t[i, ch, y, z]) ** 2
    return num / (2 * n_p)


def test_masked_imitation_matches_reference(rng):
    s, t, S, T = maps(rng, (2, 3, 4, 6))
    mask = (rng.uniform(size=(2, 4, 6)) > 0.6).astype(float)
    got = masked_imitation_loss(S, T, t64(mask))
    np.testing.assert_allclose(got.item(), ref_masked_imitation(s, t, mask), rtol=1e-10)
    # [N, 1, H, W] is accepted and means the same
    assert torch.equal(masked_imitation_loss(S, T, t64(mask[:, None])), got)
    assert_grad_student_only(got, S, T)
    with pytest.raises(ValueError, match="mask of shape"):
        masked_imitation_loss(S, T, t64(mask.transpose(0, 2, 1)))


def test_masked_imitation_empty_mask_is_zero_on_graph(rng):
    _, _, S, T = maps(rng)
    loss = masked_imitation_loss(S, T, torch.zeros(2, 4, 6, dtype=torch.float64))
    assert loss.item() == 0.0 and loss.requires_grad
    loss.backward()
    assert torch.equal(S.grad, torch.zeros_like(S))  # no NaN in the gradient either


def tiny_anchors():
    """Real torchvision anchors: image 64 x 96, levels 4 x 6 (stride 16, size 16) and 2 x 3 (stride 32,
    size 32), aspect ratios 0.5 / 1 / 2 -> A = 3."""
    gen = AnchorGenerator(sizes=((16,), (32,)), aspect_ratios=((0.5, 1.0, 2.0),) * 2)
    images = ImageList(torch.zeros(1, 3, 64, 96), [(64, 96)])
    feats = [torch.zeros(1, 8, 4, 6), torch.zeros(1, 8, 2, 3)]
    (anchors,) = gen(images, feats)
    return anchors, [(4, 6), (2, 3)]


def test_fgfi_gt_equal_to_an_anchor_marks_exactly_its_location():
    anchors, grids = tiny_anchors()
    assert anchors.shape == (4 * 6 * 3 + 2 * 3 * 3, 4)
    # the square 16 x 16 anchor centred on pixel (x, y) = (4 * 16, 2 * 16): level 0, h = 2, w = 4
    gt = torch.tensor([[56.0, 24.0, 72.0, 40.0]])
    # torchvision's row order inside a level: (h * W + w) * A + a (a = 1 is aspect ratio 1)
    assert torch.equal(anchors[(2 * 6 + 4) * 3 + 1], gt[0])
    masks = fgfi_masks(anchors, gt, grids, anchors_per_location=3)
    expected0 = torch.zeros(4, 6)
    expected0[2, 4] = 1.0
    assert torch.equal(masks[0], expected0)
    assert torch.equal(masks[1], torch.zeros(2, 3))  # 32 x 32 anchors reach IoU 0.25 < 0.5 * 1


def test_fgfi_threshold_uses_the_max_over_all_levels():
    anchors, grids = tiny_anchors()
    # a 32 x 32 box equal to the level-1 anchor at (h, w) = (1, 2): level-0 anchors reach at most
    # IoU 0.27 < 0.5 * 1, so only the level-1 location is imitated
    gt = torch.tensor([[48.0, 16.0, 80.0, 48.0]])
    assert torch.equal(anchors[4 * 6 * 3 + (1 * 3 + 2) * 3 + 1], gt[0])
    masks = fgfi_masks(anchors, gt, grids, 3)
    assert masks[0].sum() == 0
    expected1 = torch.zeros(2, 3)
    expected1[1, 2] = 1.0
    assert torch.equal(masks[1], expected1)


def test_fgfi_iou_must_exceed_the_threshold_strictly():
    # one level 1 x 3, one anchor per location; gt = anchor 0 (IoU 1, threshold 0.5): anchor 1 has
    # IoU exactly 0.5 (not imitated), anchor 2 has IoU 0.75 (imitated)
    anchors = torch.tensor([[0.0, 0.0, 2.0, 2.0], [0.0, 0.0, 2.0, 1.0], [0.0, 0.0, 2.0, 1.5]])
    (mask,) = fgfi_masks(anchors, anchors[:1].clone(), [(1, 3)], 1)
    assert torch.equal(mask, torch.tensor([[1.0, 0.0, 1.0]]))


def np_iou(a, b):
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


def test_fgfi_matches_loop_reference(rng):
    anchors, grids = tiny_anchors()
    xy = rng.uniform(0, 50, size=(3, 2))
    gts = np.concatenate([xy, xy + rng.uniform(10, 40, size=(3, 2))], axis=1)
    psi = 0.4
    masks = fgfi_masks(anchors, torch.tensor(gts, dtype=torch.float32), grids, 3, psi=psi)
    a_np = anchors.double().numpy()
    ious = [[np_iou(a_np[k], g) for g in gts] for k in range(len(a_np))]
    thr = [psi * max(ious[k][j] for k in range(len(a_np))) for j in range(len(gts))]
    offset = 0
    for (gh, gw), got in zip(grids, masks):
        exp = np.zeros((gh, gw))
        for y in range(gh):
            for x in range(gw):
                for a in range(3):
                    row = offset + (y * gw + x) * 3 + a
                    if any(ious[row][j] > thr[j] for j in range(len(gts))):
                        exp[y, x] = 1.0
        offset += gh * gw * 3
        np.testing.assert_array_equal(got.numpy(), exp)
    assert sum(m.sum() for m in masks) > 3


def test_fgfi_no_gt_and_bad_anchor_count():
    anchors, grids = tiny_anchors()
    masks = fgfi_masks(anchors, torch.zeros((0, 4)), grids, 3)
    assert [tuple(m.shape) for m in masks] == [(4, 6), (2, 3)] and all(m.sum() == 0 for m in masks)
    with pytest.raises(ValueError, match="anchors per location"):
        fgfi_masks(anchors[:-1], torch.zeros((0, 4)), grids, 3)
