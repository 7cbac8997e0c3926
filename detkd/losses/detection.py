"""Detection-distillation losses of Chen et al., "Learning Efficient Object Detection
Models with Knowledge Distillation", NeurIPS 2017 (spec: ``docs/methods.md``, section 1).

The functions here compute the *per-row* terms of the paper and reduce them; choosing the
rows (same anchors / same sampled proposals for teacher and student) and normalizing each
term like the torchvision hard loss beside it is the distiller's job:

* RPN objectness: torchvision's BCE is a mean over the sampled anchors, so the distiller
  uses ``objectness_soft_ce(..., reduction="mean")`` on the same sampled anchors.
* Box regression: torchvision's smooth-L1 is a sum over positive rows divided by the number
  of *sampled* rows (positives + negatives), so the distiller calls
  ``bounded_regression_loss(..., reduction="sum")`` on the positive rows and divides by the
  sampled count itself.

Conventions shared by every function:

* ``reduction`` is one of ``"none"`` (one value per row), ``"mean"`` or ``"sum"``; anything
  else raises :class:`ValueError` naming it. ``"mean"`` over zero rows returns 0 (still
  attached to the graph) instead of NaN, because an image can have no positive sample.
* Teacher outputs and regression targets are detached inside the function: the teacher
  never receives gradient, even if the caller hands in a tensor that requires grad.
* Half-precision inputs (float16 / bfloat16, e.g. under autocast) are cast up to float32
  before any softmax / log, so the losses are safe under AMP; float64 stays float64.
"""

from __future__ import annotations

from typing import Literal, overload

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "REDUCTIONS",
    "weighted_soft_ce",
    "objectness_soft_ce",
    "bounded_regression_loss",
    "bound_active",
    "hint_loss",
]

REDUCTIONS = ("none", "mean", "sum")


# --------------------------------------------------------------------------- helpers


def _check_reduction(reduction: str) -> None:
    if reduction not in REDUCTIONS:
        raise ValueError(
            f"unknown reduction {reduction!r}; expected one of {', '.join(map(repr, REDUCTIONS))}"
        )


def _reduce(values: Tensor, reduction: str) -> Tensor:
    """Reduce per-row values; an empty "mean" is 0 (not NaN) and keeps the graph."""
    if reduction == "none":
        return values
    if reduction == "sum":
        return values.sum()
    if values.numel() == 0:
        return values.sum() * 0.0
    return values.mean()


def _compute_dtype(t: Tensor) -> torch.dtype:
    # Half / bfloat16 softmax and log lose too much precision (and overflow) -> float32.
    # float64 is kept so that tests (and users) can ask for double precision.
    return torch.float64 if t.dtype == torch.float64 else torch.float32


def _check_temperature(temperature: float) -> None:
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature!r}")


# --------------------------------------------------------------------------- soft CE


def weighted_soft_ce(
    student_logits: Tensor,
    teacher_logits: Tensor,
    class_weights: Tensor,
    temperature: float = 1.0,
    reduction: str = "mean",
) -> Tensor:
    r"""Class-weighted soft cross entropy (Chen et al. 2017, Sec. 3.2, eq. 3, "L_soft").

    .. math::
        L_\text{soft}(i) = -\sum_c w_c \, P_{t,c}(i) \log P_{s,c}(i),
        \qquad P = \operatorname{softmax}(z / T)

    The weights counter the background-dominated proposal distribution: the paper uses
    ``w_background = 1.5`` and ``w_other = 1`` (torchvision: class 0 is background).
    All-ones weights give the plain soft cross entropy.

    No ``T**2`` gradient-rescaling factor is applied: the paper found ``T = 1`` works
    best, where the factor is 1 anyway, and its equation has none. With ``T != 1`` the
    gradient is therefore ``1/T`` times that of Hinton's T^2-scaled KD loss term.

    Args:
        student_logits: ``[N, C]`` student class logits (receives gradient).
        teacher_logits: ``[N, C]`` teacher logits on the *same* rows (detached here).
        class_weights: ``[C]`` per-class weights ``w_c`` (treated as constants).
        temperature: ``T > 0``, applied to both teacher and student logits.
        reduction: ``"none"`` -> ``[N]``; ``"mean"`` / ``"sum"`` over rows.
    """
    _check_reduction(reduction)
    _check_temperature(temperature)
    if student_logits.dim() != 2 or student_logits.shape != teacher_logits.shape:
        raise ValueError(
            "weighted_soft_ce expects student and teacher logits of the same shape [N, C], "
            f"got {tuple(student_logits.shape)} and {tuple(teacher_logits.shape)}"
        )
    num_classes = student_logits.shape[1]
    if class_weights.dim() != 1 or class_weights.shape[0] != num_classes:
        raise ValueError(
            f"class_weights must have shape [{num_classes}], got {tuple(class_weights.shape)}"
        )
    dtype = _compute_dtype(student_logits)
    s = student_logits.to(dtype)
    t = teacher_logits.detach().to(dtype)  # the teacher is a fixed target
    w = class_weights.detach().to(device=s.device, dtype=dtype)
    log_p_s = F.log_softmax(s / temperature, dim=1)  # stable log P_s
    p_t = F.softmax(t / temperature, dim=1)
    per_row = -(w * p_t * log_p_s).sum(dim=1)
    return _reduce(per_row, reduction)


def objectness_soft_ce(
    student_logits: Tensor,
    teacher_logits: Tensor,
    bg_weight: float = 1.5,
    temperature: float = 1.0,
    reduction: str = "mean",
) -> Tensor:
    r"""Weighted soft cross entropy on RPN objectness (Chen et al. 2017, Sec. 3.2, eq. 3, RPN).

    torchvision's RPN predicts one objectness logit ``z`` per anchor. It is read as the
    two-class distribution ``P = [1 - sigmoid(z/T), sigmoid(z/T)]`` (index 0 =
    background, weight ``bg_weight``; foreground weight 1), which is exactly
    ``softmax([0, z] / T)``. Per anchor:

    .. math::
        L(i) = -\big[w_{bg}\,(1 - \sigma(z_t/T)) \log(1 - \sigma(z_s/T))
                     + \sigma(z_t/T) \log \sigma(z_s/T)\big]

    ``log(1 - sigmoid(x))`` is computed as ``logsigmoid(-x)`` for numerical stability.
    No ``T**2`` factor (see :func:`weighted_soft_ce`). torchvision's objectness BCE is a
    mean over the sampled anchors, so the distiller uses ``reduction="mean"`` on them.

    Args:
        student_logits: ``[N]`` or ``[N, 1]`` student objectness logits.
        teacher_logits: teacher logits for the same anchors, ``[N]`` or ``[N, 1]``
            (detached here).
        bg_weight: weight of the background class (paper: 1.5).
        temperature: ``T > 0``.
        reduction: ``"none"`` -> ``[N]``; ``"mean"`` / ``"sum"`` over anchors.
    """
    _check_reduction(reduction)
    _check_temperature(temperature)

    def _flat(x: Tensor, name: str) -> Tensor:
        if x.dim() == 1:
            return x
        if x.dim() == 2 and x.shape[1] == 1:
            return x[:, 0]
        raise ValueError(
            f"objectness_soft_ce expects {name} logits of shape [N] or [N, 1], "
            f"got {tuple(x.shape)}"
        )

    s_flat = _flat(student_logits, "student")
    t_flat = _flat(teacher_logits, "teacher")
    if s_flat.shape != t_flat.shape:
        raise ValueError(
            "objectness_soft_ce: student and teacher must have one logit per anchor for the "
            f"same anchors, got {tuple(student_logits.shape)} and {tuple(teacher_logits.shape)}"
        )
    dtype = _compute_dtype(s_flat)
    s = s_flat.to(dtype) / temperature
    t = t_flat.detach().to(dtype) / temperature
    p_t_fg = torch.sigmoid(t)
    p_t_bg = torch.sigmoid(-t)  # = 1 - sigmoid(t), without cancellation
    per_row = -(bg_weight * p_t_bg * F.logsigmoid(-s) + p_t_fg * F.logsigmoid(s))
    return _reduce(per_row, reduction)


# --------------------------------------------------------------------------- bounded L2


def _check_regression_shapes(student: Tensor, teacher: Tensor, target: Tensor) -> None:
    if student.dim() != 2 or not (student.shape == teacher.shape == target.shape):
        raise ValueError(
            "bounded regression expects student, teacher and target deltas of the same shape "
            f"[N, 4], got {tuple(student.shape)}, {tuple(teacher.shape)} and "
            f"{tuple(target.shape)}"
        )


def _check_margin(margin: float) -> None:
    if not margin >= 0:  # also rejects NaN
        raise ValueError(f"margin must be >= 0, got {margin!r}")


def bound_active(
    student_deltas: Tensor,
    teacher_deltas: Tensor,
    target_deltas: Tensor,
    margin: float = 0.0,
) -> Tensor:
    r"""Boolean ``[N]`` mask of rows where the teacher bound is active (Chen et al. 2017, eq. 4).

    ``active(i) = ||R_s(i) - y(i)||^2 + m > ||R_t(i) - y(i)||^2`` (strict inequality:
    an exact tie with ``m = 0`` is *not* active). Evaluated without gradient. The
    distiller logs the active fraction.
    """
    _check_regression_shapes(student_deltas, teacher_deltas, target_deltas)
    _check_margin(margin)
    with torch.no_grad():
        dtype = _compute_dtype(student_deltas)
        y = target_deltas.detach().to(dtype)
        err_s = (student_deltas.detach().to(dtype) - y).pow(2).sum(dim=1)
        err_t = (teacher_deltas.detach().to(dtype) - y).pow(2).sum(dim=1)
        return err_s + margin > err_t


@overload
def bounded_regression_loss(
    student_deltas: Tensor,
    teacher_deltas: Tensor,
    target_deltas: Tensor,
    margin: float = ...,
    reduction: str = ...,
    return_active: Literal[False] = ...,
) -> Tensor: ...


@overload
def bounded_regression_loss(
    student_deltas: Tensor,
    teacher_deltas: Tensor,
    target_deltas: Tensor,
    margin: float = ...,
    reduction: str = ...,
    *,
    return_active: Literal[True],
) -> tuple[Tensor, Tensor]: ...


def bounded_regression_loss(
    student_deltas: Tensor,
    teacher_deltas: Tensor,
    target_deltas: Tensor,
    margin: float = 0.0,
    reduction: str = "mean",
    return_active: bool = False,
) -> Tensor | tuple[Tensor, Tensor]:
    r"""Teacher-bounded L2 regression loss (Chen et al. 2017, Sec. 3.3, eq. 4, "L_b").

    .. math::
        L_b(i) = \begin{cases}
            \|R_s(i) - y(i)\|_2^2 & \text{if } \|R_s(i) - y(i)\|_2^2 + m > \|R_t(i) - y(i)\|_2^2 \\
            0 & \text{otherwise}
        \end{cases}

    The teacher is used as an upper bound, not a target: the student is pushed toward the
    ground truth only on rows where it is not already better than the teacher by more than
    the margin ``m``. The condition is evaluated without gradient (it is a gate), so the
    gradient is ``2 (R_s - y)`` on active rows and 0 elsewhere; teacher and target never
    receive gradient. Rows are positive (foreground) samples only; for the class-specific
    RoI regressor both nets' deltas are taken at the ground-truth class, and both must be
    encoded with the same box-coder weights (the caller's responsibility).

    torchvision's box smooth-L1 is a sum over positives divided by the number of sampled
    rows, so the distiller calls this with ``reduction="sum"`` and divides by that count.

    Args:
        student_deltas, teacher_deltas, target_deltas: ``[N, 4]`` box deltas (any
            ``[N, D]`` with equal shapes is accepted).
        margin: ``m >= 0``; 0 is the paper's formulation, public re-implementations use
            0 to 0.2. A larger margin turns more rows on.
        reduction: ``"none"`` -> ``[N]``; ``"mean"`` / ``"sum"`` over rows.
        return_active: also return the boolean ``[N]`` active mask (see
            :func:`bound_active`).
    """
    _check_reduction(reduction)
    active = bound_active(student_deltas, teacher_deltas, target_deltas, margin)
    dtype = _compute_dtype(student_deltas)
    y = target_deltas.detach().to(dtype)
    err_s = (student_deltas.to(dtype) - y).pow(2).sum(dim=1)
    # where() (not multiplication by the mask) so inactive rows contribute exactly 0 and
    # a zero gradient, even if their error were inf.
    per_row = torch.where(active, err_s, torch.zeros_like(err_s))
    loss = _reduce(per_row, reduction)
    if return_active:
        return loss, active
    return loss


# --------------------------------------------------------------------------- hint


def hint_loss(adapted_student: Tensor, teacher: Tensor, reduction: str = "mean") -> Tensor:
    r"""Hint (feature-imitation) loss (Chen et al. 2017, Sec. 3.4, eq. 5, "L_hint").

    .. math:: L_\text{hint} = \|\operatorname{adapt}(V) - Z\|_2^2

    ``adapted_student`` is the student feature map already passed through the adaptation
    layer (and resized to the teacher's spatial size), see
    :class:`detkd.modeling.adapters.HintAdapters`. Reductions:

    * ``"mean"``: elementwise mean over *all* elements (batch, channels, positions). This
      keeps ``gamma`` independent of feature-map size and channel count (docs/methods.md,
      section 1.5).
    * ``"sum"``: sum over all elements (the literal squared norm).
    * ``"none"``: per-sample mean over the non-batch dimensions, shape ``[B]``
      (so ``"none"`` followed by ``.mean()`` equals ``"mean"``).

    Args:
        adapted_student: ``[B, ...]`` adapted student features (receives gradient).
        teacher: teacher features of exactly the same shape (detached here).
    """
    _check_reduction(reduction)
    if adapted_student.shape != teacher.shape:
        raise ValueError(
            "hint_loss: adapted student and teacher feature shapes must match exactly, got "
            f"student {tuple(adapted_student.shape)} and teacher {tuple(teacher.shape)}"
        )
    if adapted_student.dim() < 1:
        raise ValueError("hint_loss expects at least a batch dimension, got a scalar")
    dtype = _compute_dtype(adapted_student)
    sq = (adapted_student.to(dtype) - teacher.detach().to(dtype)).pow(2)
    if reduction == "sum":
        return sq.sum()
    if reduction == "mean":
        if sq.numel() == 0:
            return sq.sum() * 0.0
        return sq.mean()
    return sq.reshape(sq.shape[0], -1).mean(dim=1)
