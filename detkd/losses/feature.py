"""FPN-feature distillation losses for detectors (spec: ``docs/methods.md``, section 3).

Every function matches one student FPN level with the same teacher level:

* ``pkd_loss``: PKD, Pearson-correlation imitation (Cao et al., NeurIPS 2022).
* ``cwd_loss``: channel-wise distillation (Shu et al., ICCV 2021).
* ``mgd_loss`` / ``mgd_mask`` / :class:`MGD`: masked generative distillation (Yang et al., ECCV 2022).
* ``fgd_attention`` / ``fgd_masks`` / ``fgd_loss`` / :class:`GcBlock` / :class:`FGD`: focal and global
  distillation (Yang et al., CVPR 2022).
* ``masked_imitation_loss`` / ``fgfi_masks``: fine-grained feature imitation (Wang et al., CVPR 2019).

Conventions shared by every function:

* Maps are ``[N, C, H, W]``. ``student_feat`` is already aligned to the teacher (same shape): the
  modules (:class:`MGD`, :class:`FGD`) own the 1x1 alignment conv and resize the student map
  bilinearly to the teacher's ``H x W`` when the sizes differ (:func:`match_size`).
* The teacher map is detached inside every function: the teacher never receives gradient.
* Half-precision inputs are computed in float32 (softmax / std / large sums); float64 stays float64.
* Each loss is summed over what its equation sums and divided as docs/methods.md says; the distiller adds the
  levels up and applies the method's weight.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.ops import box_iou

__all__ = [
    "PKD_EPS",
    "align_conv",
    "match_size",
    "pkd_loss",
    "cwd_loss",
    "mgd_loss",
    "mgd_mask",
    "MGDGenerator",
    "MGD",
    "fgd_attention",
    "fgd_masks",
    "GcBlock",
    "fgd_loss",
    "FGD",
    "masked_imitation_loss",
    "fgfi_masks",
]

PKD_EPS = 1e-6


# --------------------------------------------------------------------------- helpers


def _compute_dtype(t: Tensor) -> torch.dtype:
    # Same rule as detection.py: half / bfloat16 -> float32, float64 kept for tests.
    return torch.float64 if t.dtype == torch.float64 else torch.float32


def _pair(student_feat: Tensor, teacher_feat: Tensor, name: str) -> tuple[Tensor, Tensor]:
    """Check the two maps are [N, C, H, W] of one shape; return them cast, the teacher detached."""
    if student_feat.dim() != 4 or student_feat.shape != teacher_feat.shape:
        raise ValueError(
            f"{name} expects student and teacher maps of the same shape [N, C, H, W] (align and resize the "
            f"student first), got {tuple(student_feat.shape)} and {tuple(teacher_feat.shape)}"
        )
    dtype = _compute_dtype(student_feat)
    return student_feat.to(dtype), teacher_feat.detach().to(dtype)


def _check_temperature(temperature: float) -> None:
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature!r}")


def align_conv(student_channels: int, teacher_channels: int) -> nn.Module:
    """1x1 conv student -> teacher channels when the widths differ, else identity (as MGD / FGD code)."""
    if student_channels == teacher_channels:
        return nn.Identity()
    return nn.Conv2d(student_channels, teacher_channels, kernel_size=1)


def match_size(student_feat: Tensor, size: Sequence[int]) -> Tensor:
    """Bilinear resize of the student map to the teacher's ``(H, W)`` (no-op when it already matches).

    ``align_corners=False`` as MMRazor's PKD ``resize_stu``. A 1x1 conv and this resize commute (both
    linear, bilinear weights sum to 1), so aligning before or after resizing gives the same map.
    """
    size = (int(size[0]), int(size[1]))
    if tuple(student_feat.shape[-2:]) == size:
        return student_feat
    return F.interpolate(student_feat, size=size, mode="bilinear", align_corners=False)


# --------------------------------------------------------------------------- PKD


def _pkd_normalize(feat: Tensor) -> Tensor:
    mean = feat.mean(dim=(0, 2, 3), keepdim=True)
    std = feat.std(dim=(0, 2, 3), keepdim=True)  # unbiased (n - 1), like torch.std / MMRazor
    return (feat - mean) / (std + PKD_EPS)


def pkd_loss(student_feat: Tensor, teacher_feat: Tensor) -> Tensor:
    r"""PKD feature imitation (Cao et al., "PKD: General Distillation Framework for Object Detectors
    via Pearson Correlation Coefficient", NeurIPS 2022; public code: MMRazor ``PKDLoss``).

    .. math::
        z(F)_{nchw} = \frac{F_{nchw} - \mu_c}{\sigma_c + 10^{-6}}, \qquad
        L_\text{PKD} = \operatorname{mean}_{nchw} \tfrac12 \left(z(S) - z(T)\right)^2

    ``mu_c`` / ``sigma_c`` are the mean / *unbiased* std of channel ``c`` over ``(N, H, W)``. The
    result is ``1 - r`` per channel (``r`` the Pearson correlation), averaged; no alignment conv is
    needed when the widths match because normalization removes the scale. Public weight: 6 (R101 -> R50).

    With a single value per channel (``N*H*W == 1``, e.g. the 1x1 "pool" level of one tiny image) the
    std is undefined; the centred map is 0 there, so the loss is an exact 0 (still on the graph).
    """
    s, t = _pair(student_feat, teacher_feat, "pkd_loss")
    n, _, h, w = s.shape
    if n * h * w < 2:
        return s.sum() * 0.0
    return F.mse_loss(_pkd_normalize(s), _pkd_normalize(t)) / 2


# --------------------------------------------------------------------------- CWD


def cwd_loss(student_feat: Tensor, teacher_feat: Tensor, temperature: float = 1.0) -> Tensor:
    r"""Channel-wise distillation (Shu et al., "Channel-wise Knowledge Distillation for Dense
    Prediction", ICCV 2021; MMRazor ``ChannelWiseDivergence``).

    .. math::
        \phi(F)_{nc,i} = \operatorname{softmax}_i(F_{nc,i} / \tau), \qquad
        L_\text{CWD} = \frac{\tau^2}{N C} \sum_{n,c} \sum_i \phi(T)_{nc,i}
            \left(\log \phi(T)_{nc,i} - \log \phi(S)_{nc,i}\right)

    ``i`` runs over the ``H*W`` positions: each channel's spatial distribution is matched (KL).
    Public defaults: ``tau = 1``, weight 10, all levels.
    """
    _check_temperature(temperature)
    s, t = _pair(student_feat, teacher_feat, "cwd_loss")
    n, c, h, w = s.shape
    log_p_t = F.log_softmax(t.reshape(n * c, h * w) / temperature, dim=1)
    log_p_s = F.log_softmax(s.reshape(n * c, h * w) / temperature, dim=1)
    kl = (log_p_t.exp() * (log_p_t - log_p_s)).sum()
    return kl * (temperature**2) / (n * c)


# --------------------------------------------------------------------------- MGD


def mgd_mask(
    shape: Sequence[int],
    keys: Sequence[int],
    lambda_mask: float = 0.65,
    device: torch.device | str | None = None,
) -> Tensor:
    r"""MGD's random spatial mask ``M [N, 1, H, W]`` (0 = masked), one per image.

    ``u ~ U[0, 1)`` per position and ``M = 0 where u > 1 - lambda`` (the authors' ``torch.where(mat >
    1 - lambda_mgd, 0, 1)``), so each position is masked with probability ``lambda``.

    Unlike the authors' global ``torch.rand``, each image's mask is drawn from its own CPU
    ``torch.Generator`` seeded by its integer key: the same image (and level, e.g. ``key * 1000 +
    level``) gets the same mask whatever the batch split, rank or device, and a resumed run redraws the
    masks it would have drawn (the caller makes the key change each step / epoch if it wants fresh masks).

    Args:
        shape: the map's shape ``(N, C, H, W)`` (or ``(N, H, W)``); only ``N, H, W`` are used.
        keys: ``N`` integer seeds, one per image.
        lambda_mask: masking ratio ``lambda`` in ``[0, 1]``; public default 0.65.
        device: where to put the mask (drawn on the CPU either way).
    """
    if len(shape) not in (3, 4):
        raise ValueError(f"mgd_mask expects a shape (N, C, H, W) or (N, H, W), got {tuple(shape)}")
    if not 0.0 <= lambda_mask <= 1.0:
        raise ValueError(f"lambda_mask must be in [0, 1], got {lambda_mask!r}")
    n, h, w = int(shape[0]), int(shape[-2]), int(shape[-1])
    keys = [int(k) for k in keys]
    if len(keys) != n:
        raise ValueError(f"mgd_mask needs one key per image: {len(keys)} keys for a batch of {n}")
    masks = []
    for key in keys:
        gen = torch.Generator(device="cpu")
        gen.manual_seed(key)
        u = torch.rand((1, h, w), generator=gen)
        masks.append((u <= 1.0 - lambda_mask).to(torch.float32))
    out = torch.stack(masks) if masks else torch.zeros((0, 1, h, w))
    return out.to(device) if device is not None else out


class MGDGenerator(nn.Module):
    """MGD's generation block G(X) = conv3x3(ReLU(conv3x3(X))) at the teacher's width, padding 1."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, kernel_size=3, padding=1)
        self.conv2 = nn.Conv2d(channels, channels, kernel_size=3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv2(F.relu(self.conv1(x)))


def mgd_loss(
    student_feat: Tensor, teacher_feat: Tensor, generator: nn.Module, mask: Tensor, alpha: float = 2e-5
) -> Tensor:
    r"""Masked generative distillation (Yang et al., "Masked Generative Distillation", ECCV 2022;
    public code yzd-v/MGD ``FeatureLoss.get_dis_loss``, MMRazor ``MGDLoss`` + ``MGDConnector``).

    .. math::
        L_\text{MGD} = \alpha \sum_{n,c,h,w} \left(G(S \odot M) - T\right)^2 / N

    Args:
        student_feat: ``[N, C, H, W]`` student map already aligned to the teacher's channels.
        teacher_feat: ``[N, C, H, W]`` teacher map (detached here).
        generator: the learnable ``G`` (e.g. :class:`MGDGenerator`), at the teacher's width.
        mask: ``[N, 1, H, W]`` 0/1 float mask (:func:`mgd_mask`), broadcast over channels.
        alpha: public default 2e-5 (RetinaNet / RepPoints / SOLO configs; the authors' Faster R-CNN
            configs with a Cascade Mask R-CNN X101 teacher use 5e-7 with ``lambda = 0.45``).
    """
    s, t = _pair(student_feat, teacher_feat, "mgd_loss")
    n, _, h, w = s.shape
    if tuple(mask.shape) != (n, 1, h, w):
        raise ValueError(f"mgd_loss expects a mask of shape {(n, 1, h, w)}, got {tuple(mask.shape)}")
    generated = generator(s * mask.to(device=s.device, dtype=s.dtype))
    return alpha * (generated.to(s.dtype) - t).pow(2).sum() / n


class MGD(nn.Module):
    """MGD for one level: owns the alignment conv and the generator, draws the keyed mask.

    ``forward(student_feat, teacher_feat, keys)`` aligns the student (1x1 conv when the widths differ,
    bilinear resize when the sizes differ), draws :func:`mgd_mask` with the images' ``keys`` and returns
    :func:`mgd_loss`.
    """

    def __init__(
        self, student_channels: int, teacher_channels: int, alpha: float = 2e-5, lambda_mask: float = 0.65
    ) -> None:
        super().__init__()
        self.alpha = alpha
        self.lambda_mask = lambda_mask
        self.align = align_conv(student_channels, teacher_channels)
        self.generator = MGDGenerator(teacher_channels)

    def forward(self, student_feat: Tensor, teacher_feat: Tensor, keys: Sequence[int]) -> Tensor:
        s = match_size(self.align(student_feat), teacher_feat.shape[-2:])
        mask = mgd_mask(teacher_feat.shape, keys, self.lambda_mask, device=s.device)
        return mgd_loss(s, teacher_feat, self.generator, mask, self.alpha)


# --------------------------------------------------------------------------- FGD


def fgd_attention(feat: Tensor, temperature: float) -> tuple[Tensor, Tensor]:
    r"""FGD's spatial and channel attention (Yang et al., "Focal and Global Knowledge Distillation for
    Detectors", CVPR 2022, eq. 4-5; yzd-v/FGD ``get_attention``).

    .. math::
        A^S = H W \operatorname{softmax}_{hw}\left(\tfrac1C \sum_c |F_{c,hw}| / T\right), \qquad
        A^C = C \operatorname{softmax}_c\left(\tfrac{1}{HW} \sum_{hw} |F_{c,hw}| / T\right)

    Returns ``(spatial [N, H, W], channel [N, C])``; each sums to ``H*W`` / ``C`` per image. The map is
    not detached here (the attention loss needs the student's with gradient).
    """
    _check_temperature(temperature)
    if feat.dim() != 4:
        raise ValueError(f"fgd_attention expects a map [N, C, H, W], got {tuple(feat.shape)}")
    n, c, h, w = feat.shape
    value = feat.to(_compute_dtype(feat)).abs()
    spatial = h * w * F.softmax(value.mean(dim=1).reshape(n, h * w) / temperature, dim=1)
    channel = c * F.softmax(value.mean(dim=(2, 3)) / temperature, dim=1)
    return spatial.reshape(n, h, w), channel


def fgd_masks(
    boxes_per_image: Sequence[Tensor], feature_size: Sequence[int], image_size: Sequence[int]
) -> tuple[Tensor, Tensor]:
    r"""FGD's foreground (scale) mask and background mask on one level's grid.

    Each box ``(x1, y1, x2, y2)`` of the (transformed, padded-batch) image frame is scaled to the grid,
    ``x0 = floor(x1 W / W_img)``, ``xe = ceil(x2 W / W_img)`` (rows likewise with ``H / H_img``), and
    covers the *inclusive* cell range ``[y0, ye] x [x0, xe]`` clipped to the grid. Then

    .. math::
        M^{fg}_{hw} = \max_{\text{boxes covering } (h,w)} \frac{1}{(y_e - y_0 + 1)(x_e - x_0 + 1)}
        \ (\text{else } 0), \qquad
        M^{bg}_{hw} = \frac{[M^{fg}_{hw} = 0]}{\sum_{hw} [M^{fg}_{hw} = 0]}

    and ``M^bg`` is 0 everywhere when nothing is background; an image without boxes has ``M^fg = 0`` and
    a uniform ``M^bg = 1 / (H W)``.

    Conventions, checked against the authors' yzd-v/FGD ``FeatureLoss.forward``:

    * detkd indexes ``[y-range, x-range]`` on the ``[H, W]`` map. The authors' first versions (commits
      04900ad, ba9b65a) indexed ``[x-range, y-range]`` (transposed on non-square maps); their fix
      c22b81d (2022-01-04) uses ``[y, x]`` as detkd does.
    * As the authors, the area uses the unclipped ``floor`` / ``ceil`` bounds (a box touching the far
      edge has ``xe = W``, one past the grid: its weight counts that column, the mask stops at the grid).
    * The authors scale by ``img_metas['img_shape']`` (the image before padding) although the map covers
      the padded batch; detkd scales by the padded batch tensor's ``image_size``, which is where the grid
      cells really are (the two agree for an unpadded image).

    Args:
        boxes_per_image: ``N`` tensors ``[G_i, 4]`` xyxy in the image frame.
        feature_size: the level's ``(H, W)``.
        image_size: the padded batch tensor's ``(H_img, W_img)``.

    Returns:
        ``(fg [N, H, W], bg [N, H, W])`` float32 on the boxes' device.
    """
    h, w = int(feature_size[0]), int(feature_size[1])
    img_h, img_w = float(image_size[0]), float(image_size[1])
    if h <= 0 or w <= 0 or not (img_h > 0 and img_w > 0):
        raise ValueError(f"fgd_masks needs positive sizes, got feature {tuple(feature_size)} and "
                         f"image {tuple(image_size)}")
    fgs = []
    for boxes in boxes_per_image:
        if boxes.dim() != 2 or boxes.shape[1] != 4:
            raise ValueError(f"fgd_masks expects boxes [G, 4] per image, got {tuple(boxes.shape)}")
        device = boxes.device
        if boxes.shape[0] == 0:
            fgs.append(torch.zeros((h, w), device=device))
            continue
        b = boxes.detach().to(torch.float64)
        # x * W / W_img (not x / W_img * W) so that exact grid lines stay exact integers.
        x0 = torch.floor(b[:, 0] * w / img_w)
        xe = torch.ceil(b[:, 2] * w / img_w)
        y0 = torch.floor(b[:, 1] * h / img_h)
        ye = torch.ceil(b[:, 3] * h / img_h)
        weight = 1.0 / ((ye - y0 + 1) * (xe - x0 + 1))  # [G]
        rows = torch.arange(h, device=device, dtype=torch.float64).view(1, h, 1)
        cols = torch.arange(w, device=device, dtype=torch.float64).view(1, 1, w)
        covers = (
            (rows >= y0.view(-1, 1, 1)) & (rows <= ye.view(-1, 1, 1))
            & (cols >= x0.view(-1, 1, 1)) & (cols <= xe.view(-1, 1, 1))
        )  # [G, H, W]
        fg = torch.where(covers, weight.view(-1, 1, 1), torch.zeros((), dtype=torch.float64, device=device))
        fgs.append(fg.amax(dim=0).to(torch.float32))
    if not fgs:
        empty = torch.zeros((0, h, w))
        return empty, empty.clone()
    fg = torch.stack(fgs)
    is_bg = (fg == 0).to(torch.float32)
    count = is_bg.sum(dim=(1, 2), keepdim=True)
    bg = is_bg / count.clamp(min=1.0)  # all-foreground image: 0 everywhere, not NaN
    return fg, bg


class GcBlock(nn.Module):
    r"""FGD's global-relation block (a GCNet context block; yzd-v/FGD ``spatial_pool`` +
    ``channel_add_conv``), one per side.

    .. math::
        R(F) = F + W_2\left(\operatorname{ReLU}\left(\operatorname{LN}\left(W_1 \sum_{hw}
            \operatorname{softmax}_{hw}(W_k F)_{hw} F_{hw}\right)\right)\right)

    ``W_k``: 1x1 conv ``C -> 1`` (Kaiming-normal fan-in, as the authors); ``W_1``: 1x1 conv ``C -> C *
    ratio`` with ``ratio = 0.5`` (the authors' ``teacher_channels // 2``); LN over ``[C * ratio, 1, 1]``;
    ``W_2``: 1x1 conv back to ``C``, weight and bias initialised to 0, so ``R(F) = F`` at the start.
    """

    def __init__(self, channels: int, ratio: float = 0.5) -> None:
        super().__init__()
        hidden = max(1, int(channels * ratio))
        self.context_conv = nn.Conv2d(channels, 1, kernel_size=1)
        self.w1 = nn.Conv2d(channels, hidden, kernel_size=1)
        self.norm = nn.LayerNorm([hidden, 1, 1])
        self.w2 = nn.Conv2d(hidden, channels, kernel_size=1)
        nn.init.kaiming_normal_(self.context_conv.weight, mode="fan_in", nonlinearity="relu")
        nn.init.zeros_(self.context_conv.bias)
        nn.init.zeros_(self.w2.weight)
        nn.init.zeros_(self.w2.bias)

    def context(self, x: Tensor) -> Tensor:
        """Attention-pooled context ``sum_hw softmax_hw(W_k x) x``: ``[N, C, 1, 1]``."""
        n, c, h, w = x.shape
        attn = F.softmax(self.context_conv(x).reshape(n, 1, h * w), dim=2)  # [N, 1, HW]
        return torch.bmm(x.reshape(n, c, h * w), attn.transpose(1, 2)).reshape(n, c, 1, 1)

    def forward(self, x: Tensor) -> Tensor:
        return x + self.w2(F.relu(self.norm(self.w1(self.context(x)))))


def fgd_loss(
    student_feat: Tensor,
    teacher_feat: Tensor,
    fg: Tensor,
    bg: Tensor,
    gc_student: nn.Module,
    gc_teacher: nn.Module,
    temperature: float = 0.5,
    alpha: float = 5e-5,
    beta: float = 2.5e-5,
    gamma: float = 5e-5,
    lambda_: float = 5e-7,
) -> tuple[Tensor, dict[str, Tensor]]:
    r"""Focal and global distillation for one level (Yang et al., CVPR 2022; yzd-v/FGD ``FeatureLoss``).

    .. math::
        L_{fg} = \sum M^{fg}_{hw} A^S_{hw}(T) A^C_c(T) (S - T)^2_{chw} / N, \quad
        L_{bg} = \text{same with } M^{bg}

        L_{at} = \left(\sum |A^C(S) - A^C(T)| + \sum |A^S(S) - A^S(T)|\right) / N, \quad
        L_{global} = \sum \left(R_s(S) - R_t(T)\right)^2 / N

        L_\text{FGD} = \alpha L_{fg} + \beta L_{bg} + \gamma L_{at} + \lambda L_{global}

    As in the authors' ``get_fea_loss``, the feature terms weight both maps with the *teacher's*
    attention only (a constant: the teacher is detached); the attention term ``L_at`` compares the
    student's attention (with gradient) and the teacher's. ``R_s`` / ``R_t`` are separate learnable
    :class:`GcBlock`s; ``R_t`` sees the detached teacher map, so only its own weights learn.
    Defaults: the authors' Faster R-CNN R101 -> R50 config (T 0.5, 5e-5, 2.5e-5, 5e-5, 5e-7).

    Args:
        student_feat: ``[N, C, H, W]`` student map aligned to the teacher.
        teacher_feat: ``[N, C, H, W]`` teacher map (detached here).
        fg, bg: ``[N, H, W]`` masks from :func:`fgd_masks`.
        gc_student, gc_teacher: the two global-relation blocks.

    Returns:
        ``(total, {"fg", "bg", "at", "global"})``: the weighted total and the *unweighted* parts.
    """
    s, t = _pair(student_feat, teacher_feat, "fgd_loss")
    n, _, h, w = s.shape
    for name, mask in (("fg", fg), ("bg", bg)):
        if tuple(mask.shape) != (n, h, w):
            raise ValueError(f"fgd_loss expects a {name} mask of shape {(n, h, w)}, got {tuple(mask.shape)}")
    fg = fg.detach().to(device=s.device, dtype=s.dtype)
    bg = bg.detach().to(device=s.device, dtype=s.dtype)
    spatial_t, channel_t = fgd_attention(t, temperature)
    spatial_s, channel_s = fgd_attention(s, temperature)
    weighted_sq = spatial_t.unsqueeze(1) * channel_t.view(n, -1, 1, 1) * (s - t).pow(2)  # [N, C, H, W]
    parts = {
        "fg": (weighted_sq * fg.unsqueeze(1)).sum() / n,
        "bg": (weighted_sq * bg.unsqueeze(1)).sum() / n,
        "at": ((channel_s - channel_t).abs().sum() + (spatial_s - spatial_t).abs().sum()) / n,
        "global": (gc_student(s).to(s.dtype) - gc_teacher(t).to(s.dtype)).pow(2).sum() / n,
    }
    total = alpha * parts["fg"] + beta * parts["bg"] + gamma * parts["at"] + lambda_ * parts["global"]
    return total, parts


class FGD(nn.Module):
    """FGD for one level: owns the alignment conv and the two :class:`GcBlock`s (teacher width).

    ``forward(student_feat, teacher_feat, boxes_per_image, image_size)`` aligns the student (1x1 conv
    when the widths differ, bilinear resize when the sizes differ), builds :func:`fgd_masks` on the
    teacher's grid and returns :func:`fgd_loss` ``(total, parts)``. ``boxes_per_image`` and ``image_size``
    must be in one frame: the padded batch the teacher's map was computed from (the masks only use the
    box / image ratios). Defaults: the authors' Faster R-CNN R101 -> R50 COCO config (their module's own
    defaults are larger: 1e-3, 5e-4, 1e-3, 5e-6).
    """

    def __init__(
        self,
        student_channels: int,
        teacher_channels: int,
        temperature: float = 0.5,
        alpha: float = 5e-5,
        beta: float = 2.5e-5,
        gamma: float = 5e-5,
        lambda_: float = 5e-7,
    ) -> None:
        super().__init__()
        _check_temperature(temperature)
        self.temperature = temperature
        self.alpha, self.beta, self.gamma, self.lambda_ = alpha, beta, gamma, lambda_
        self.align = align_conv(student_channels, teacher_channels)
        self.gc_student = GcBlock(teacher_channels)
        self.gc_teacher = GcBlock(teacher_channels)

    def forward(
        self,
        student_feat: Tensor,
        teacher_feat: Tensor,
        boxes_per_image: Sequence[Tensor],
        image_size: Sequence[int],
    ) -> tuple[Tensor, dict[str, Tensor]]:
        s = match_size(self.align(student_feat), teacher_feat.shape[-2:])
        fg, bg = fgd_masks(boxes_per_image, teacher_feat.shape[-2:], image_size)
        return fgd_loss(
            s, teacher_feat, fg, bg, self.gc_student, self.gc_teacher,
            temperature=self.temperature, alpha=self.alpha, beta=self.beta, gamma=self.gamma,
            lambda_=self.lambda_,
        )


# --------------------------------------------------------------------------- fine-grained imitation


def _spatial_mask(mask: Tensor, n: int, h: int, w: int, name: str) -> Tensor:
    """Accept an [N, H, W] or [N, 1, H, W] mask; return it as [N, 1, H, W]."""
    if tuple(mask.shape) == (n, h, w):
        return mask.unsqueeze(1)
    if tuple(mask.shape) == (n, 1, h, w):
        return mask
    raise ValueError(f"{name} expects a mask of shape {(n, h, w)}, got {tuple(mask.shape)}")


def masked_imitation_loss(adapted_student: Tensor, teacher: Tensor, mask: Tensor) -> Tensor:
    r"""Fine-grained feature imitation (Wang et al., "Distilling Object Detectors with Fine-grained
    Feature Imitation", CVPR 2019, eq. 3-4; twangnh/Distilling-Object-Detectors ``compute_mask_loss``).

    .. math::
        L = \frac{1}{2 N_p} \sum_{n,h,w,c} I_{nhw} \left(\hat S_{nchw} - T_{nchw}\right)^2,
        \qquad N_p = \sum_{n,h,w} I_{nhw}

    ``adapted_student`` is the student map after the method's adaptation layer; ``mask`` the 0/1
    imitation mask ``I`` (``[N, H, W]`` or ``[N, 1, H, W]``, e.g. :func:`fgfi_masks` stacked). With no
    imitated location (``N_p = 0``) the loss is an exact 0 on the graph, not NaN, and no host sync is
    needed. Public weight: 0.01.
    """
    s, t = _pair(adapted_student, teacher, "masked_imitation_loss")
    n, _, h, w = s.shape
    m = _spatial_mask(mask.detach(), n, h, w, "masked_imitation_loss").to(device=s.device, dtype=s.dtype)
    num = (m * (s - t).pow(2)).sum()
    n_p = m.sum()
    # numerator is exactly 0 when the mask is empty: divide by 1 then, instead of 0/0
    return num / torch.where(n_p > 0, 2.0 * n_p, torch.ones_like(n_p))


def fgfi_masks(
    anchors: Tensor,
    gt_boxes: Tensor,
    grids: Sequence[Sequence[int]],
    anchors_per_location: int,
    psi: float = 0.5,
) -> list[Tensor]:
    r"""FGFI's anchor-IoU imitation mask of ONE image, one ``[H_l, W_l]`` float mask per level.

    For each gt box ``g``: ``m_g = psi * max_a IoU(a, g)`` over *all* anchors of all levels (the
    paper's "all anchors"; the authors' single-level code takes the max over every anchor of the map,
    including those across the image border, as here), and location ``(h, w)`` of level ``l`` is
    imitated if any of its ``A`` anchors has ``IoU > m_g`` for some ``g`` (strict, as the authors).

    Args:
        anchors: that image's torchvision ``AnchorGenerator`` output ``[sum_l H_l W_l A, 4]``: levels
            concatenated, and inside a level row ``(h * W_l + w) * A + a`` (torchvision's
            ``grid_anchors``: ``shifts.view(-1, 1, 4) + base_anchors.view(1, -1, 4)`` with
            row-major ``(h, w)`` shifts).
        gt_boxes: ``[G, 4]`` xyxy in the same (transformed) image frame.
        grids: the levels' ``(H_l, W_l)``.
        anchors_per_location: ``A`` (torchvision default for FPN: 3 aspect ratios).
        psi: the threshold factor; public default 0.5.

    Returns all-zero masks when ``G == 0``.
    """
    if not 0.0 <= psi <= 1.0:
        raise ValueError(f"psi must be in [0, 1], got {psi!r}")
    a = int(anchors_per_location)
    sizes = [int(hw[0]) * int(hw[1]) * a for hw in grids]
    if anchors.dim() != 2 or anchors.shape[1] != 4 or anchors.shape[0] != sum(sizes):
        raise ValueError(
            f"fgfi_masks expects anchors [{sum(sizes)}, 4] for grids {[tuple(g) for g in grids]} with "
            f"{a} anchors per location, got {tuple(anchors.shape)}"
        )
    if gt_boxes.dim() != 2 or gt_boxes.shape[1] != 4:
        raise ValueError(f"fgfi_masks expects gt_boxes [G, 4], got {tuple(gt_boxes.shape)}")
    device = anchors.device
    if gt_boxes.shape[0] == 0:
        return [torch.zeros((int(g[0]), int(g[1])), device=device) for g in grids]
    iou = box_iou(anchors.detach().float(), gt_boxes.detach().to(device=device, dtype=torch.float32))  # [M, G]
    threshold = psi * iou.max(dim=0).values  # [G]
    hit = (iou > threshold.unsqueeze(0)).any(dim=1)  # [M]
    masks = []
    for (gh, gw), part in zip(grids, hit.split(sizes)):
        masks.append(part.view(int(gh), int(gw), a).any(dim=2).to(torch.float32))
    return masks
