"""Single-teacher classification distillation losses: KD, FitNet, AT and SP.

Conventions follow detkd's method specification (``docs/methods.md``, section 2): every target is
detached, the student side uses ``log_softmax`` and the target side ``softmax``, every KL
is "batchmean" (sum over classes and batch / B) and carries a factor T^2 wherever a
temperature is used. Softmax and log are computed in at least float32 (half inputs are promoted).
"""

from __future__ import annotations

from typing import Literal, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "KDReduction",
    "kd_loss",
    "fitnet_loss",
    "ConvRegressor",
    "attention_map",
    "at_loss",
    "similarity_matrix",
    "sp_loss",
]

KDReduction = Literal["batchmean", "sum", "none", "mean"]


def _as_float(x: Tensor) -> Tensor:
    """Promote half/bfloat16 to float32 (softmax, log and squares need the range);
    float32 and float64 are kept as they are."""
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x


def _kl_per_sample(student_logits: Tensor, teacher_logits: Tensor, temperature: float) -> Tensor:
    """sum_c p_t,c (log p_t,c - log p_s,c) per sample, without T^2; teacher detached."""
    if student_logits.shape != teacher_logits.shape or student_logits.dim() != 2:
        raise ValueError(
            f"expected student and teacher logits of the same shape [B, C], got "
            f"{tuple(student_logits.shape)} and {tuple(teacher_logits.shape)}"
        )
    log_p_s = F.log_softmax(_as_float(student_logits) / temperature, dim=1)
    # log_softmax on the target too: exact 0 * log 0 handling without log(softmax) underflow.
    log_p_t = F.log_softmax(_as_float(teacher_logits.detach()) / temperature, dim=1)
    p_t = log_p_t.exp()
    return (p_t * (log_p_t - log_p_s)).sum(dim=1)


def kd_loss(
    student_logits: Tensor,
    teacher_logits: Tensor,
    temperature: float = 4.0,
    reduction: KDReduction = "batchmean",
) -> Tensor:
    """Hinton et al. 2015, "Distilling the Knowledge in a Neural Network".

    ``L = T^2 * KL(softmax(z_t / T) || softmax(z_s / T))`` with the teacher detached.

    Reductions (T^2 is included in all of them):

    - ``"batchmean"`` (default; docs/methods.md, section 2.1): sum over classes and batch / B.
    - ``"sum"``: sum over classes and batch.
    - ``"none"``: per-sample vector ``[B]`` (sum over classes), used by the multi-teacher
      methods; ``none.sum() / B == batchmean``.
    - ``"mean"``: elementwise mean, i.e. sum / (B C). It is smaller than batchmean by 1/C; it
      exists only as an explicit option for reproducing code that made that choice.
    """
    per_sample = _kl_per_sample(student_logits, teacher_logits, temperature) * temperature**2
    if reduction == "none":
        return per_sample
    if reduction == "batchmean":
        return per_sample.sum() / student_logits.shape[0]
    if reduction == "sum":
        return per_sample.sum()
    if reduction == "mean":
        return per_sample.sum() / student_logits.numel()
    raise ValueError(f"kd_loss: unknown reduction {reduction!r}; use batchmean, sum, none or mean")


# ------------------------------------------------------------------------------------- FitNet


def fitnet_loss(adapted_student_feat: Tensor, teacher_feat: Tensor) -> Tensor:
    """Romero et al. 2015, "FitNets: Hints for Thin Deep Nets".

    ``L = mean over all elements of (r(F_s) - F_t)^2``, with ``r(F_s)`` already applied by
    the caller (see :class:`ConvRegressor`) and the teacher detached.
    """
    if adapted_student_feat.shape != teacher_feat.shape:
        raise ValueError(
            f"fitnet_loss: adapted student feature {tuple(adapted_student_feat.shape)} and "
            f"teacher feature {tuple(teacher_feat.shape)} differ in shape"
        )
    diff = _as_float(adapted_student_feat) - _as_float(teacher_feat.detach())
    return diff.pow(2).mean()


class ConvRegressor(nn.Module):
    """FitNet regressor r: student feature map -> teacher feature map shape.

    The layer is chosen from the two (C, H, W) shapes, as in docs/methods.md (section 2.2):

    - equal spatial size: 1x1 conv;
    - student twice the teacher's size: 3x3 conv, stride 2, padding 1;
    - student half the teacher's size: 4x4 transposed conv, stride 2, padding 1;

    followed by BatchNorm and ReLU. Any other ratio raises ``ValueError``.
    """

    def __init__(self, student_shape: Sequence[int], teacher_shape: Sequence[int]) -> None:
        super().__init__()
        if len(student_shape) != 3 or len(teacher_shape) != 3:
            raise ValueError(
                f"ConvRegressor: shapes must be (C, H, W), got student {tuple(student_shape)} "
                f"and teacher {tuple(teacher_shape)}"
            )
        s_c, s_h, s_w = (int(v) for v in student_shape)
        t_c, t_h, t_w = (int(v) for v in teacher_shape)
        self.student_shape = (s_c, s_h, s_w)
        self.teacher_shape = (t_c, t_h, t_w)
        conv: nn.Module
        if (s_h, s_w) == (t_h, t_w):
            conv = nn.Conv2d(s_c, t_c, kernel_size=1)
        elif (s_h, s_w) == (2 * t_h, 2 * t_w):
            conv = nn.Conv2d(s_c, t_c, kernel_size=3, stride=2, padding=1)
        elif (2 * s_h, 2 * s_w) == (t_h, t_w):
            conv = nn.ConvTranspose2d(s_c, t_c, kernel_size=4, stride=2, padding=1)
        else:
            raise ValueError(
                f"ConvRegressor: unsupported size ratio between student shape "
                f"{self.student_shape} and teacher shape {self.teacher_shape}; the spatial "
                f"sizes must be equal, or the student's twice or half the teacher's"
            )
        self.conv = conv
        self.bn = nn.BatchNorm2d(t_c)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: Tensor) -> Tensor:
        return self.relu(self.bn(self.conv(x)))


# ------------------------------------------------------------------------------ AT and SP


def _resize_spatial(x: Tensor, size: tuple[int, int]) -> Tensor:
    """Resize [B, C, H, W] to ``size``: adaptive average pool when the map is at least as
    large in both dimensions, bilinear interpolation otherwise; identity when equal."""
    h, w = x.shape[-2:]
    if (h, w) == tuple(size):
        return x
    if h >= size[0] and w >= size[1]:
        return F.adaptive_avg_pool2d(x, size)
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False)


def attention_map(feat: Tensor, p: float = 2.0) -> Tensor:
    """a(F) = l2normalize(mean_c F^p), flattened per sample: [B, C, H, W] -> [B, H*W]."""
    am = _as_float(feat).pow(p).mean(dim=1).flatten(1)
    return F.normalize(am, p=2, dim=1)


def at_loss(student_feat: Tensor, teacher_feat: Tensor, p: float = 2.0) -> Tensor:
    """Zagoruyko & Komodakis 2017, "Paying More Attention to Attention" (attention transfer).

    ``a(F) = l2normalize(mean_c F^p)`` flattened per sample (docs/methods.md's F^2, section 2.3, is p = 2);
    ``L = mean over batch and positions of (a_s - a_t)^2``, teacher detached. When the
    spatial sizes differ the larger feature map is average-pooled to the smaller size
    first (channels may differ: attention maps are channel-free).
    """
    teacher_feat = teacher_feat.detach()
    s_size = tuple(student_feat.shape[-2:])
    t_size = tuple(teacher_feat.shape[-2:])
    if s_size != t_size:
        if s_size[0] >= t_size[0] and s_size[1] >= t_size[1]:
            student_feat = F.adaptive_avg_pool2d(student_feat, t_size)
        elif t_size[0] >= s_size[0] and t_size[1] >= s_size[1]:
            teacher_feat = F.adaptive_avg_pool2d(teacher_feat, s_size)
        else:
            raise ValueError(
                f"at_loss: neither feature map is larger in both dimensions: student "
                f"{tuple(student_feat.shape)}, teacher {tuple(teacher_feat.shape)}"
            )
    a_s = attention_map(student_feat, p)
    a_t = attention_map(teacher_feat, p)
    return (a_s - a_t).pow(2).mean()


def similarity_matrix(feat: Tensor) -> Tensor:
    """G = row-l2-normalize(Q Q^T) with Q = F flattened per sample: [B, ...] -> [B, B]."""
    q = _as_float(feat).flatten(1)
    return F.normalize(q @ q.t(), p=2, dim=1)


def sp_loss(student_feat: Tensor, teacher_feat: Tensor) -> Tensor:
    """Tung & Mori 2019, "Similarity-Preserving Knowledge Distillation".

    ``G = row-l2-normalize(Q Q^T)``, ``Q`` = feature map flattened per sample (B x B, so the
    two networks' channel and spatial sizes may differ); ``L = ||G_t - G_s||_F^2 / B^2``,
    teacher detached.
    """
    b = student_feat.shape[0]
    if teacher_feat.shape[0] != b:
        raise ValueError(
            f"sp_loss: batch sizes differ: student {tuple(student_feat.shape)}, "
            f"teacher {tuple(teacher_feat.shape)}"
        )
    g_s = similarity_matrix(student_feat)
    g_t = similarity_matrix(teacher_feat.detach())
    return (g_t - g_s).pow(2).sum() / (b * b)
