"""CrossKD loss functions (Wang et al., "CrossKD: Cross-Head Knowledge Distillation for Object Detection",
CVPR 2024; public code jbwang1997/CrossKD). Spec: the method specification, section 4 (CrossKD).

* ``crosskd_align``: matches a student tower map to the teacher's per-channel statistics before it
  enters the teacher's remaining head layers (the cross head).
* ``crosskd_cls_loss``: quality-focal-style soft BCE between the cross-head logits and the teacher's
  (the authors' ``KDQualityFocalLoss``, beta = 1).
* ``crosskd_reg_loss``: teacher-score-weighted box loss between cross-head and teacher boxes, with
  ``giou_loss`` (RetinaNet) or ``iou_log_loss`` (FCOS) as ``ell``.

Conventions: every function is pure; teacher tensors are detached inside (constants); half-precision
inputs are computed in float32, float64 stays float64. The distiller builds the cross-head outputs,
the row masks / weights and the normalizer ``Z``, and applies ``lambda_cls`` / ``lambda_reg``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "CROSSKD_EPS",
    "crosskd_align",
    "crosskd_cls_loss",
    "giou_loss",
    "iou_log_loss",
    "crosskd_reg_loss",
]

CROSSKD_EPS = 1e-6
_REG_KINDS = ("giou", "iou_log")


# --------------------------------------------------------------------------- helpers


def _compute_dtype(t: Tensor) -> torch.dtype:
    # Same rule as detection.py / feature.py: half / bfloat16 -> float32, float64 kept for tests.
    return torch.float64 if t.dtype == torch.float64 else torch.float32


def _channel_stats(x: Tensor) -> tuple[Tensor, Tensor]:
    """Per-channel mean and unbiased std of ``x [N, C, H, W]`` over ``(N, H, W)``, each ``[1, C, 1, 1]``.

    ``sd = 0`` when the variance is 0, in particular for a single element (``N*H*W == 1``, where
    ``torch.std`` gives NaN). The double ``where`` keeps the gradient finite there (sqrt'(0) is inf).
    """
    n = x.shape[0] * x.shape[2] * x.shape[3]
    mean = x.mean(dim=(0, 2, 3), keepdim=True)
    var = (x - mean).pow(2).sum(dim=(0, 2, 3), keepdim=True) / max(n - 1, 1)
    positive = var > 0
    sd = torch.where(positive, torch.where(positive, var, torch.ones_like(var)).sqrt(), torch.zeros_like(var))
    return mean, sd


def _check_normalizer(normalizer: float | Tensor, name: str, dtype: torch.dtype) -> Tensor | float:
    if isinstance(normalizer, Tensor):
        if normalizer.numel() != 1:
            raise ValueError(f"{name}: normalizer must be a number or a 0-dim tensor, got shape "
                             f"{tuple(normalizer.shape)}")
        # A CUDA value is not checked: that would cost a host sync every step.
        if normalizer.device.type == "cpu" and not bool(normalizer > 0):
            raise ValueError(f"{name}: normalizer must be > 0, got {normalizer.item()!r}")
        return normalizer.detach().reshape(()).to(dtype)
    if not float(normalizer) > 0:
        raise ValueError(f"{name}: normalizer must be > 0, got {normalizer!r}")
    return float(normalizer)


def _check_boxes(pred: Tensor, target: Tensor, name: str) -> None:
    if pred.dim() != 2 or pred.shape[-1] != 4 or pred.shape != target.shape:
        raise ValueError(f"{name} expects pred and target boxes of one shape [R, 4] (x1, y1, x2, y2), got "
                         f"{tuple(pred.shape)} and {tuple(target.shape)}")


def _check_row_weight(row_weight: Tensor, rows: int, name: str) -> None:
    if row_weight.shape != (rows,):
        raise ValueError(f"{name} expects row_weight of shape [{rows}], got {tuple(row_weight.shape)}")


# --------------------------------------------------------------------------- feature alignment


def crosskd_align(a: Tensor, h_t: Tensor, eps: float = CROSSKD_EPS) -> Tensor:
    r"""CrossKD's statistics alignment of a student tower map to the teacher's (spec section 4;
    authors' ``align_scale`` in crosskd_single_stage.py).

    .. math::
        \tilde h = \frac{a - \mu_a}{\sigma_a + \epsilon} \, \sigma_t + \mu_t

    ``mu_x[c]`` / ``sigma_x[c]`` are the mean / *unbiased* std of channel ``c`` over ``(N, H, W)``
    (batch statistics: the output depends on the other local images). ``mu_t, sigma_t`` are constants
    (``h_t`` detached); ``mu_a, sigma_a`` are not detached, so the gradient flows through them. A channel
    with zero variance (e.g. one element, ``N*H*W == 1``) uses ``sigma = 0`` (finite value and gradient;
    the output there is ``mu_t`` when the teacher's channel is constant too).

    Args:
        a: the student map, already mapped to the teacher's width, ``[N, C, H, W]``.
        h_t: the teacher's map at the same layer, same shape.
        eps: added to ``sigma_a``; the authors' 1e-6.

    Returns:
        ``h~`` in ``a``'s dtype (computed in float32, or float64 for float64 input).
    """
    if a.dim() != 4 or a.shape != h_t.shape:
        raise ValueError(f"crosskd_align expects student and teacher maps of one shape [N, C, H, W], got "
                         f"{tuple(a.shape)} and {tuple(h_t.shape)}")
    dtype = _compute_dtype(a)
    x = a.to(dtype)
    mu_a, sd_a = _channel_stats(x)
    with torch.no_grad():
        mu_t, sd_t = _channel_stats(h_t.detach().to(dtype))
    return ((x - mu_a) / (sd_a + eps) * sd_t + mu_t).to(a.dtype)


# --------------------------------------------------------------------------- classification


def crosskd_cls_loss(
    z_x: Tensor, z_t: Tensor, row_weight: Tensor, normalizer: float | Tensor, beta: float = 1.0
) -> Tensor:
    r"""CrossKD classification term (spec section 4; authors' ``KDQualityFocalLoss`` in kd_loss.py).

    .. math::
        p = \sigma(z_t)\ \text{(detached)}, \quad q = \sigma(z_x), \qquad
        L_\text{cls} = \frac{1}{Z} \sum_{r,c} m_r \, \mathrm{BCE}(z_x[r,c], p[r,c]) \, |q[r,c] - p[r,c]|^\beta

    with ``BCE(z, p) = -p log sigma(z) - (1 - p) log(1 - sigma(z))`` (BCE with logits, soft target).
    ``|q - p|^beta`` is *not* detached; classes are summed, not averaged; no temperature. Rows with
    ``m_r = 0`` contribute nothing. Zero rows give an exact 0 that stays on ``z_x``'s graph. The
    authors divide by ``Z + finfo(float32).eps``; this divides by ``Z`` (the caller floors ``Z``).

    Args:
        z_x: cross-head logits ``[R, C]`` (rows: anchors / points of all images and levels).
        z_t: the teacher's own logits ``[R, C]`` (detached inside).
        row_weight: ``m_r [R]`` (0/1 or float; treated as a constant).
        normalizer: ``Z > 0``, a number or a 0-dim tensor.
        beta: focal exponent ``>= 0`` (authors: 1; 0 gives plain soft-target BCE).
    """
    if z_x.dim() != 2 or z_x.shape != z_t.shape:
        raise ValueError(f"crosskd_cls_loss expects cross-head and teacher logits of one shape [R, C], got "
                         f"{tuple(z_x.shape)} and {tuple(z_t.shape)}")
    _check_row_weight(row_weight, z_x.shape[0], "crosskd_cls_loss")
    if not beta >= 0:
        raise ValueError(f"crosskd_cls_loss: beta must be >= 0, got {beta!r}")
    dtype = _compute_dtype(z_x)
    z = _check_normalizer(normalizer, "crosskd_cls_loss", dtype)
    logits = z_x.to(dtype)
    p = torch.sigmoid(z_t.detach().to(dtype))
    bce = F.binary_cross_entropy_with_logits(logits, p, reduction="none")
    focal = (torch.sigmoid(logits) - p).abs().pow(beta)
    m = row_weight.detach().to(dtype).unsqueeze(1)
    return (m * bce * focal).sum() / z


# --------------------------------------------------------------------------- box losses


def _aligned_overlap(pred: Tensor, target: Tensor, eps: float) -> tuple[Tensor, Tensor, Tensor]:
    """Intersection and eps-clamped union of row-aligned xyxy boxes (mmdet ``bbox_overlaps``,
    ``is_aligned=True``: areas are not clamped, the intersection's sides are)."""
    area_p = (pred[:, 2] - pred[:, 0]) * (pred[:, 3] - pred[:, 1])
    area_t = (target[:, 2] - target[:, 0]) * (target[:, 3] - target[:, 1])
    lt = torch.maximum(pred[:, :2], target[:, :2])
    rb = torch.minimum(pred[:, 2:], target[:, 2:])
    wh = (rb - lt).clamp(min=0)
    inter = wh[:, 0] * wh[:, 1]
    union = (area_p + area_t - inter).clamp(min=eps)
    return inter, union, inter / union


def giou_loss(pred: Tensor, target: Tensor, eps: float = CROSSKD_EPS) -> Tensor:
    r"""Elementwise ``1 - GIoU`` of xyxy boxes ``[R, 4]`` -> ``[R]`` (Rezatofighi et al., CVPR 2019; as
    mmdet ``GIoULoss`` / ``bbox_overlaps(mode='giou', is_aligned=True, eps)``).

    .. math::
        U = \max(|P| + |T| - |P \cap T|, \epsilon), \quad E = \max(|\mathrm{hull}(P, T)|, \epsilon), \qquad
        \ell = 1 - \left(\frac{|P \cap T|}{U} - \frac{E - U}{E}\right)

    Both clamps keep zero-size boxes finite (value and gradient). Gradient flows to both arguments.
    """
    _check_boxes(pred, target, "giou_loss")
    dtype = _compute_dtype(pred)
    p, t = pred.to(dtype), target.to(dtype)
    _, union, iou = _aligned_overlap(p, t, eps)
    hull_wh = (torch.maximum(p[:, 2:], t[:, 2:]) - torch.minimum(p[:, :2], t[:, :2])).clamp(min=0)
    hull = (hull_wh[:, 0] * hull_wh[:, 1]).clamp(min=eps)
    return 1 - (iou - (hull - union) / hull)


def iou_log_loss(pred: Tensor, target: Tensor, eps: float = CROSSKD_EPS) -> Tensor:
    r"""Elementwise ``-log IoU`` of xyxy boxes ``[R, 4]`` -> ``[R]`` (UnitBox, Yu et al., ACM MM 2016; as
    mmdet ``IoULoss(mode='log', eps)``).

    .. math::
        \ell = -\log \max\!\left(\frac{|P \cap T|}{\max(|P| + |T| - |P \cap T|, \epsilon)}, \epsilon\right)

    Disjoint or zero-size boxes give the constant ``-log(eps)`` with zero gradient (not masked: spec).
    """
    _check_boxes(pred, target, "iou_log_loss")
    dtype = _compute_dtype(pred)
    _, _, iou = _aligned_overlap(pred.to(dtype), target.to(dtype), eps)
    return -iou.clamp(min=eps).log()


def crosskd_reg_loss(
    pred_boxes: Tensor,
    target_boxes: Tensor,
    row_weight: Tensor,
    normalizer: float | Tensor,
    kind: str = "giou",
    eps: float = CROSSKD_EPS,
) -> Tensor:
    r"""CrossKD regression term (spec section 4; authors' ``loss_reg_kd``: GIoULoss for RetinaNet,
    IoULoss(mode='log') for FCOS).

    .. math::
        L_\text{reg} = \frac{1}{Z} \sum_r w_r \, \ell(\hat b_x[r], \hat b_t[r]), \qquad w_r = m_r \max_c p[r, c]

    Args:
        pred_boxes: decoded cross-head boxes ``[R, 4]`` xyxy.
        target_boxes: decoded teacher boxes ``[R, 4]`` (detached inside).
        row_weight: ``w_r [R]`` (computed by the caller; treated as a constant).
        normalizer: ``Z > 0``, a number or a 0-dim tensor.
        kind: ``"giou"`` (``giou_loss``, RetinaNet) or ``"iou_log"`` (``iou_log_loss``, FCOS).
        eps: the box losses' clamp, 1e-6.

    Rows with ``w_r == 0`` contribute an exact 0 with zero gradient, whatever their boxes (even
    non-finite ones: they are replaced with ``where`` before ``ell``, no host sync). If every ``w_r``
    is 0 (or ``R == 0``) the result is a sum of zeros: an exact 0 still attached to ``pred_boxes``'
    graph (as mmdet; DDP needs the graph).
    """
    if kind not in _REG_KINDS:
        raise ValueError(f"crosskd_reg_loss: unknown kind {kind!r}, expected one of {_REG_KINDS}")
    _check_boxes(pred_boxes, target_boxes, "crosskd_reg_loss")
    _check_row_weight(row_weight, pred_boxes.shape[0], "crosskd_reg_loss")
    z = _check_normalizer(normalizer, "crosskd_reg_loss", _compute_dtype(pred_boxes))
    ell = giou_loss if kind == "giou" else iou_log_loss
    w = row_weight.detach().to(_compute_dtype(pred_boxes))
    # Zero-weight rows get a fixed finite box before ``ell``: ``where`` passes them no gradient, so even
    # non-finite boxes there cannot turn into NaN (0 * inf) in the backward pass.
    keep = (w != 0).unsqueeze(1)
    pred = torch.where(keep, pred_boxes, torch.zeros_like(pred_boxes))
    target = torch.where(keep, target_boxes.detach(), torch.zeros_like(target_boxes))
    return (w * ell(pred, target, eps)).sum() / z
