"""Online (teacher-free) distillation: DML, FFL and SCD.

Conventions follow detkd's method specification (``docs/methods.md``, section 2): targets are
detached, KL is batchmean, T^2 wherever a temperature is used; softmax/log in at least float32
(half inputs are promoted, float64 is kept).
"""

from __future__ import annotations

import math
from typing import Literal, Optional, Sequence, TypedDict

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .kd import _as_float, _resize_spatial, attention_map, similarity_matrix

__all__ = [
    "dml_losses",
    "ffl_rampup",
    "ffl_kl",
    "FFLLosses",
    "ffl_losses",
    "FusionModule",
    "scd_loss",
]


# ---------------------------------------------------------------------------------- DML


def _supervised_ce(logits: Tensor, labels: Tensor, labelled_mask: Optional[Tensor]) -> Tensor:
    """Mean CE over the labelled samples; exactly 0 (finite gradient) when there are none."""
    if labelled_mask is None:
        return F.cross_entropy(_as_float(logits), labels)
    mask = labelled_mask.to(device=logits.device, dtype=torch.bool)
    if mask.shape != (logits.shape[0],):
        raise ValueError(f"labelled_mask must have shape [B] = [{logits.shape[0]}], got {tuple(mask.shape)}")
    # Index instead of masking the loss: unlabelled rows may carry any placeholder label.
    ce_sum = F.cross_entropy(_as_float(logits[mask]), labels[mask], reduction="sum")
    return ce_sum / mask.sum().clamp_min(1)


def dml_losses(
    logits_list: Sequence[Tensor],
    labels: Tensor,
    mode: Literal["peers", "ensemble"] = "peers",
    labelled_mask: Optional[Tensor] = None,
) -> list[Tensor]:
    """Deep Mutual Learning (Zhang et al., CVPR 2018), one loss per peer (T = 1, no T^2):

        "peers":    L_k = CE(z_k, y) + (1/(K-1)) sum_{l != k} KL(sg(p_l) || p_k)
        "ensemble": L_k = CE(z_k, y) + KL(sg(mean_{l != k} p_l) || p_k)       (DML_e)

    KL is batchmean; the two modes coincide for K = 2. Semi-supervised: with
    ``labelled_mask`` ([B] bool) the CE is averaged over the labelled samples only (0, not
    NaN, when there are none) while the KL terms use every sample.
    """
    k_peers = len(logits_list)
    if k_peers < 2:
        raise ValueError(f"dml_losses: need at least 2 peers, got {k_peers}")
    if mode not in ("peers", "ensemble"):
        raise ValueError(f"dml_losses: unknown mode {mode!r}; use 'peers' or 'ensemble'")
    b = logits_list[0].shape[0]
    log_p = [F.log_softmax(_as_float(z), dim=1) for z in logits_list]
    log_p_sg = [lp.detach() for lp in log_p]
    losses = []
    for k in range(k_peers):
        ce = _supervised_ce(logits_list[k], labels, labelled_mask)
        others = [l for l in range(k_peers) if l != k]
        if mode == "peers":
            kl = sum(
                (log_p_sg[l].exp() * (log_p_sg[l] - log_p[k])).sum() / b for l in others
            ) / (k_peers - 1)
        else:
            q = torch.stack([log_p_sg[l].exp() for l in others]).mean(dim=0)
            kl = (torch.xlogy(q, q) - q * log_p[k]).sum() / b
        losses.append(ce + kl)
    return losses


# ---------------------------------------------------------------------------------- FFL


def ffl_rampup(epoch: float, rampup_epochs: float = 80) -> float:
    """FFL consistency ramp-up ``w(e) = exp(-5 (1 - min(e, R)/R)^2)``: exp(-5) at e = 0,
    1 from e = R on."""
    if rampup_epochs <= 0:
        return 1.0
    t = 1.0 - min(float(epoch), float(rampup_epochs)) / float(rampup_epochs)
    return math.exp(-5.0 * t * t)


def ffl_kl(student_logits: Tensor, target_logits: Tensor, temperature: float = 3.0, eps: float = 0.0) -> Tensor:
    """``KL_T(a, b) = T^2 * batchmean KL(sg(softmax(b/T)) || softmax(a/T))``.

    ``eps > 0`` adds ``eps`` to the target probabilities without renormalizing (the FFL
    authors use 1e-7); the default 0 is the exact KL.
    """
    log_q = F.log_softmax(_as_float(student_logits) / temperature, dim=1)
    p = F.softmax(_as_float(target_logits.detach()) / temperature, dim=1)
    if eps:
        p = p + eps
    kl = (torch.xlogy(p, p) - p * log_q).sum() / student_logits.shape[0]
    return kl * temperature**2


class FFLLosses(TypedDict):
    """Named FFL loss terms (see :func:`ffl_losses`)."""

    ce: list[Tensor]  # CE(z_i, y) per sub-network
    ce_fused: Tensor  # CE(z_f, y)
    kd_subs: Tensor  # sum_i KL_T(z_i, z_f)
    kd_fused: Tensor  # KL_T(z_f, z_e)
    weight: float  # w(e)
    total: Tensor


def ffl_losses(
    sub_logits_list: Sequence[Tensor],
    fused_logits: Tensor,
    labels: Tensor,
    epoch: float,
    temperature: float = 3.0,
    rampup_epochs: float = 80,
    eps: float = 0.0,
) -> FFLLosses:
    """Feature Fusion Learning (Kim et al. 2019, "Feature Fusion for Online Mutual Knowledge
    Distillation"):

        z_e = mean_i z_i  (detached, as a target)
        L   = sum_i CE(z_i, y) + CE(z_f, y) + w(e) * (sum_i KL_T(z_i, z_f) + KL_T(z_f, z_e))

    with T = 3 and the ramp-up :func:`ffl_rampup`. The fused classifier teaches the
    sub-networks; the sub-network ensemble teaches the fused classifier.
    """
    if len(sub_logits_list) == 0:
        raise ValueError("ffl_losses: at least one sub-network is required")
    ce = [F.cross_entropy(_as_float(z), labels) for z in sub_logits_list]
    ce_fused = F.cross_entropy(_as_float(fused_logits), labels)
    kd_subs = torch.stack([ffl_kl(z, fused_logits, temperature, eps) for z in sub_logits_list]).sum()
    ensemble = torch.stack([_as_float(z.detach()) for z in sub_logits_list]).mean(dim=0)
    kd_fused = ffl_kl(fused_logits, ensemble, temperature, eps)
    w = ffl_rampup(epoch, rampup_epochs)
    total = torch.stack(ce).sum() + ce_fused + w * (kd_subs + kd_fused)
    return FFLLosses(ce=ce, ce_fused=ce_fused, kd_subs=kd_subs, kd_fused=kd_fused, weight=w, total=total)


class FusionModule(nn.Module):
    """FFL fusion classifier (Kim et al. 2019).

    concat(sub-network last feature maps) -> 3x3 depthwise conv -> BN -> ReLU -> 1x1 conv
    -> BN -> ReLU -> global average pool -> linear = fused logits z_f.

    Maps are resized to the first map's spatial size (adaptive average pool if larger,
    bilinear if smaller). ``align_channels=True`` adds a 1x1 conv on every input whose
    channel count differs from the largest one (optional; plain concatenation otherwise).
    ``out_channels`` of the 1x1 conv defaults to the largest input channel count (the
    authors' module maps 2C concatenated channels back to C).
    """

    def __init__(
        self,
        in_channels: Sequence[int],
        num_classes: int,
        out_channels: Optional[int] = None,
        align_channels: bool = False,
    ) -> None:
        super().__init__()
        if len(in_channels) == 0:
            raise ValueError("FusionModule: at least one input channel count is required")
        c_max = max(int(c) for c in in_channels)
        self.align = nn.ModuleList(
            [
                nn.Conv2d(c, c_max, kernel_size=1, bias=False) if align_channels and c != c_max else nn.Identity()
                for c in in_channels
            ]
        )
        cat_channels = sum(c_max if align_channels else int(c) for c in in_channels)
        out_channels = int(out_channels) if out_channels is not None else c_max
        self.num_inputs = len(in_channels)
        self.dw_conv = nn.Conv2d(
            cat_channels, cat_channels, kernel_size=3, padding=1, groups=cat_channels, bias=False
        )
        self.bn1 = nn.BatchNorm2d(cat_channels)
        self.pw_conv = nn.Conv2d(cat_channels, out_channels, kernel_size=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.relu = nn.ReLU(inplace=True)
        self.fc = nn.Linear(out_channels, num_classes)

    def forward(self, feats: Sequence[Tensor]) -> Tensor:
        if len(feats) != self.num_inputs:
            raise ValueError(f"FusionModule: expected {self.num_inputs} feature maps, got {len(feats)}")
        size = tuple(feats[0].shape[-2:])
        x = torch.cat([a(_resize_spatial(f, size)) for a, f in zip(self.align, feats)], dim=1)
        x = self.relu(self.bn1(self.dw_conv(x)))
        x = self.relu(self.bn2(self.pw_conv(x)))
        x = F.adaptive_avg_pool2d(x, 1).flatten(1)
        return self.fc(x)


# ---------------------------------------------------------------------------------- SCD


def scd_loss(feature_maps: Sequence[Tensor], target: Literal["deepest", "next"] = "deepest") -> Tensor:
    """Similarity-consistency self-distillation. No public code exists; this implementation
    follows detkd's specification (``docs/methods.md``, section 2.12, SCD).

    For stage maps F_1..F_L (shallow -> deep):

        a_l   = l2normalize(mean_c F_l^2) flattened
        S_l   = row-l2-normalize(a_l a_l^T)                  (B x B)
        L_SCD = sum_{l < L} ||S_l - sg(S_target)||_F^2 / B^2

    ``target="deepest"`` (default): S_target = S_L for every l; ``"next"``: S_{l+1}
    (also detached). Knowledge flows one way, deep to shallow: the deepest map is used only
    as a target and receives no gradient from this loss.
    """
    n = len(feature_maps)
    if n < 2:
        raise ValueError(f"scd_loss: need at least 2 feature maps, got {n}")
    if target not in ("deepest", "next"):
        raise ValueError(f"scd_loss: unknown target {target!r}; use 'deepest' or 'next'")
    b = feature_maps[0].shape[0]
    sims = [similarity_matrix(attention_map(f)) for f in feature_maps[:-1]]
    sims.append(similarity_matrix(attention_map(feature_maps[-1].detach())))
    terms = []
    for l in range(n - 1):
        tgt = sims[-1] if target == "deepest" else sims[l + 1]
        terms.append((sims[l] - tgt.detach()).pow(2).sum() / (b * b))
    return torch.stack(terms).sum()
