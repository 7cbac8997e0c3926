"""Prediction-level distillation losses: a student learns from a teacher's detections (any detector,
online or from a file). Spec: the method specification, section 5. Sources: Zoph et al., NeurIPS 2020
(hard pseudo-labels at score >= 0.5); Liu et al., "Unbiased Teacher", ICLR 2021 (an ignore band, no box
loss on pseudo-boxes); Li et al., GFL, NeurIPS 2020 (quality focal loss: soft targets, beta = 2).

The caller runs the student's own matcher with the teacher detections as targets and passes, per
classification row r (anchor, point, default box, proposal), the class ``c_j(r)`` and score
``s_j(r)`` of the detection assigned to it (class -1 or 0 and score 0 where none is):

* :func:`soft_sigmoid_loss` (RetinaNet, FCOS: one sigmoid per class)::

      q[r, c] = s_j(r) if c = c_j(r) else 0,   p = sigmoid(z)
      L_cls   = (1/N) sum_{r,c} BCE(p[r,c], q[r,c]) * |p[r,c] - q[r,c]|^beta,   N = max(1, sum q)

* :func:`soft_softmax_loss` (SSD, Faster R-CNN RPN and RoI heads: a softmax with background 0)::

      q[r] = s_j(r) on c_j(r), 1 - s_j(r) on the background (1 there where no detection is assigned)
      L_cls = (1/R) sum_r CE(z[r], q[r])

* :func:`score_weighted_box_loss`: ``sum_r s_j(r) ell(r) / max(sum_r s_j(r), 1)`` over assigned rows,
  ``ell`` the family's own box loss per row.
* :func:`split_by_score`: the hard pseudo-labels ``s >= tau_hi`` and the ignore band
  ``tau_lo <= s < tau_hi``.

Conventions as the other loss modules: pure functions; targets are constants (detached inside);
half precision computes in float32, float64 stays float64; an empty input gives a zero that stays
attached to the graph (DDP needs every parameter's gradient).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["QFL_BETA", "soft_sigmoid_loss", "soft_softmax_loss", "score_weighted_box_loss", "split_by_score"]

QFL_BETA = 2.0


def _compute_dtype(t: Tensor) -> torch.dtype:
    return torch.float64 if t.dtype == torch.float64 else torch.float32


def _check_rows(logits: Tensor, target_class: Tensor, target_score: Tensor, name: str) -> None:
    if logits.dim() != 2 or target_class.shape != (logits.shape[0],) or target_score.shape != (logits.shape[0],):
        raise ValueError(f"{name}: logits [R, C], target_class [R] and target_score [R] expected, got "
                         f"{tuple(logits.shape)}, {tuple(target_class.shape)}, {tuple(target_score.shape)}")


def soft_sigmoid_loss(logits: Tensor, target_class: Tensor, target_score: Tensor, beta: float = QFL_BETA) -> Tensor:
    """Quality-focal soft BCE of per-class sigmoid logits ``[R, C]`` against the teacher's scores.

    ``target_class`` ``[R]``: the assigned detection's class (a column of ``logits``), ``-1`` where
    none is assigned; ``target_score`` ``[R]`` its score in [0, 1] (ignored where the class is -1).
    The focal factor ``|p - q|^beta`` is not detached (GFL's quality focal loss)."""
    _check_rows(logits, target_class, target_score, "soft_sigmoid_loss")
    z = logits.to(_compute_dtype(logits))
    q = torch.zeros_like(z)
    rows = torch.nonzero(target_class >= 0).flatten()
    q[rows, target_class[rows]] = target_score[rows].detach().to(z.dtype)
    bce = F.binary_cross_entropy_with_logits(z, q, reduction="none")
    focal = (torch.sigmoid(z) - q).abs().pow(beta)
    return (bce * focal).sum() / q.sum().clamp(min=1.0)


def soft_softmax_loss(logits: Tensor, target_class: Tensor, target_score: Tensor) -> Tensor:
    """Soft cross entropy of softmax logits ``[R, C]`` (column 0 the background) against the
    teacher's score on the assigned class and the rest on the background.

    ``target_class`` ``[R]``: the assigned detection's class ``1..C-1``, ``0`` where none is
    assigned; ``target_score`` ``[R]`` its score (ignored where the class is 0). Mean over rows."""
    _check_rows(logits, target_class, target_score, "soft_softmax_loss")
    z = logits.to(_compute_dtype(logits))
    if z.shape[0] == 0:
        return z.sum() * 0.0
    s = torch.where(target_class > 0, target_score.detach().to(z.dtype), torch.zeros((), dtype=z.dtype))
    q = torch.zeros_like(z)
    q[:, 0] = 1.0 - s
    rows = torch.nonzero(target_class > 0).flatten()
    q[rows, target_class[rows]] += s[rows]
    return -(q * F.log_softmax(z, dim=1)).sum(dim=1).mean()


def score_weighted_box_loss(row_loss: Tensor, scores: Tensor) -> Tensor:
    """``sum_r s_r ell_r / max(sum_r s_r, 1)`` over the assigned rows: ``row_loss`` ``[R]`` the
    family's box loss per row (student box vs the teacher's), ``scores`` ``[R]`` the teacher's."""
    if row_loss.shape != scores.shape or row_loss.dim() != 1:
        raise ValueError(f"score_weighted_box_loss: row_loss [R] and scores [R] expected, got "
                         f"{tuple(row_loss.shape)}, {tuple(scores.shape)}")
    s = scores.detach().to(_compute_dtype(row_loss))
    return (s * row_loss.to(s.dtype)).sum() / s.sum().clamp(min=1.0)


def split_by_score(scores: Tensor, tau_hi: float, tau_lo: float) -> tuple[Tensor, Tensor]:
    """``(hard, ignored)`` boolean masks of teacher detections: ``s >= tau_hi`` are pseudo
    ground truth, ``tau_lo <= s < tau_hi`` the ignore band (defaults 0.5 and 0.3, Zoph et al.)."""
    if not 0.0 <= tau_lo <= tau_hi <= 1.0:
        raise ValueError(f"split_by_score: need 0 <= tau_lo <= tau_hi <= 1, got tau_lo={tau_lo}, tau_hi={tau_hi}")
    hard = scores >= tau_hi
    return hard, (scores >= tau_lo) & ~hard
