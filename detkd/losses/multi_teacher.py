"""Multi-teacher classification distillation: AVER, EBKD, AEKD, CA-MKD and FitNet-MKD.

K teachers are given as a list of ``[B, C]`` logit tensors (or feature maps). Conventions
follow detkd's method specification (``docs/methods.md``, section 2): targets detached, KL
batchmean with T^2, T = 4 by default; softmax/log in at least float32.
"""

from __future__ import annotations

import math
from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .kd import _as_float, _resize_spatial, fitnet_loss, kd_loss

__all__ = [
    "aver_loss",
    "ebkd_weights",
    "ebkd_loss",
    "aekd_nu",
    "solve_one_class_svm_dual",
    "aekd_weights",
    "aekd_loss",
    "confidence_weights",
    "camkd_kd_loss",
    "camkd_inter_loss",
    "CAMKDRegressors",
    "fitnet_mkd_loss",
]


def _check_teachers(student_logits: Tensor, teacher_logits_list: Sequence[Tensor]) -> int:
    if len(teacher_logits_list) == 0:
        raise ValueError("at least one teacher is required, got an empty list")
    for k, t in enumerate(teacher_logits_list):
        if t.shape != student_logits.shape:
            raise ValueError(
                f"teacher {k} logits {tuple(t.shape)} do not match student logits "
                f"{tuple(student_logits.shape)}"
            )
    return len(teacher_logits_list)


def _per_sample_kd(
    student_logits: Tensor, teacher_logits_list: Sequence[Tensor], temperature: float
) -> Tensor:
    """[K, B] matrix of KD_i(z_s, z_tk) (T^2 included)."""
    return torch.stack(
        [kd_loss(student_logits, t, temperature, reduction="none") for t in teacher_logits_list]
    )


# --------------------------------------------------------------------------------- AVER


def aver_loss(
    student_logits: Tensor, teacher_logits_list: Sequence[Tensor], temperature: float = 4.0
) -> Tensor:
    """AVER baseline (as named in Kwon et al. 2020, "Adaptive Knowledge Distillation Based on
    Entropy", ICASSP): the mean of the K KD losses,

    ``L = (1/K) sum_k KD(z_s, z_tk)``

    i.e. the average of the losses, not KD towards the averaged teacher.
    """
    _check_teachers(student_logits, teacher_logits_list)
    return torch.stack(
        [kd_loss(student_logits, t, temperature) for t in teacher_logits_list]
    ).mean()


# --------------------------------------------------------------------------------- EBKD


def ebkd_weights(teacher_logits_list: Sequence[Tensor]) -> Tensor:
    """Entropy-based teacher weights (Kwon et al. 2020, EBKD), shape ``[K, B]``.

    ``H_k,i`` = entropy of ``softmax(z_tk,i)`` at T = 1;
    ``w_k,i = 1 - H_k,i / sum_j H_j,i``. The weights sum to K - 1 per sample and are *not*
    renormalized (docs/methods.md, section 2.6). Detached: they come from the teachers only.
    If every teacher is exactly one-hot for a sample (all entropies 0) the ratio is taken as
    1/K so that the weights still sum to K - 1 instead of producing NaN.
    """
    if len(teacher_logits_list) == 0:
        raise ValueError("ebkd_weights: at least one teacher is required")
    logits = torch.stack([_as_float(t.detach()) for t in teacher_logits_list])  # [K, B, C]
    log_p = F.log_softmax(logits, dim=2)
    entropy = -(log_p.exp() * log_p).sum(dim=2)  # [K, B]
    total = entropy.sum(dim=0, keepdim=True)
    k = logits.shape[0]
    ratio = torch.where(total > 0, entropy / total.clamp_min(1e-30), torch.full_like(entropy, 1.0 / k))
    return 1.0 - ratio


def ebkd_loss(
    student_logits: Tensor, teacher_logits_list: Sequence[Tensor], temperature: float = 4.0
) -> Tensor:
    """Kwon et al. 2020 (EBKD): ``L = (1/(B K)) sum_k sum_i w_k,i KD_i(z_s, z_tk)`` with the
    entropy weights of :func:`ebkd_weights` (sum K - 1 per sample) and per-sample KD
    (T^2 included)."""
    k = _check_teachers(student_logits, teacher_logits_list)
    w = ebkd_weights(teacher_logits_list)
    kd = _per_sample_kd(student_logits, teacher_logits_list, temperature)
    return (w * kd).sum() / (student_logits.shape[0] * k)


# --------------------------------------------------------------------------------- AEKD


def aekd_nu(num_teachers: int, c_tol: float = 0.6) -> float:
    """One-class SVM ``nu = 1 / (c_tol K)`` clamped to ``[1/K, 1]`` (Du et al. 2020).

    The resulting per-teacher weight cap ``1 / (K nu)`` equals ``clamp(c_tol, 1/K, 1)``,
    i.e. ``c_tol`` whenever ``c_tol >= 1/K``.
    """
    if num_teachers < 1:
        raise ValueError(f"aekd_nu: need at least one teacher, got {num_teachers}")
    if c_tol <= 0:
        raise ValueError(f"aekd_nu: c_tol must be positive, got {c_tol}")
    k = num_teachers
    return min(max(1.0 / (c_tol * k), 1.0 / k), 1.0)


def solve_one_class_svm_dual(
    gram: Tensor, cap: float, tol: float = 1e-12, max_iter: int = 100_000
) -> Tensor:
    """Solve ``min_a 0.5 a^T G a  s.t.  0 <= a_k <= cap, sum_k a_k = 1`` exactly (to ``tol``).

    Sequential minimal optimization, as libsvm solves the one-class SVM dual: repeatedly take
    the maximal violating pair (i: may grow, smallest gradient; j: may shrink, largest
    gradient), move mass from j to i by the optimal clipped step, and stop when the KKT gap
    ``max_j g_j - min_i g_i`` is below ``tol`` (relative to the Gram scale). K is small, so
    plain Python floats in float64 are fastest. Requires ``1/K <= cap``.

    In libsvm's scaling (``0 <= alpha <= 1, sum alpha = nu K``) this is ``a = alpha / (K nu)``
    with ``cap = 1 / (K nu)``.
    """
    g_mat = gram.detach().to(dtype=torch.float64, device="cpu")
    k = g_mat.shape[0]
    if g_mat.shape != (k, k) or k == 0:
        raise ValueError(f"solve_one_class_svm_dual: expected a square Gram matrix, got {tuple(gram.shape)}")
    if cap * k < 1.0 - 1e-12:
        raise ValueError(f"solve_one_class_svm_dual: infeasible, cap {cap} < 1/K = {1.0 / k}")
    scale = float(g_mat.diagonal().abs().max())
    if not math.isfinite(scale):
        raise ValueError("solve_one_class_svm_dual: Gram matrix is not finite")
    if scale == 0.0:
        # All gradients are zero: every feasible point is optimal; take the uniform one.
        return torch.full((k,), 1.0 / k, dtype=torch.float64)
    q = (g_mat / scale).tolist()  # scaling G does not move the minimizer

    # Feasible start, libsvm style: fill teachers up to the cap in order.
    a = [0.0] * k
    remaining = 1.0
    for i in range(k):
        a[i] = min(cap, remaining)
        remaining -= a[i]
    grad = [sum(q[r][c] * a[c] for c in range(k)) for r in range(k)]

    for _ in range(max_iter):
        i_sel, j_sel = -1, -1
        g_min, g_max = math.inf, -math.inf
        for r in range(k):
            if a[r] < cap and grad[r] < g_min:
                g_min, i_sel = grad[r], r
            if a[r] > 0.0 and grad[r] > g_max:
                g_max, j_sel = grad[r], r
        if i_sel < 0 or j_sel < 0 or g_max - g_min < tol:
            break
        curvature = q[i_sel][i_sel] + q[j_sel][j_sel] - 2.0 * q[i_sel][j_sel]
        step = (g_max - g_min) / curvature if curvature > 1e-15 else math.inf
        step = min(step, cap - a[i_sel], a[j_sel])
        if step <= 0.0:
            break
        a[i_sel] += step
        a[j_sel] -= step
        if a[j_sel] < 1e-15:  # land exactly on the bound so the pair is not picked again
            a[j_sel] = 0.0
        if cap - a[i_sel] < 1e-15:
            a[i_sel] = cap
        for r in range(k):
            grad[r] += step * (q[r][i_sel] - q[r][j_sel])
    out = torch.tensor(a, dtype=torch.float64)
    return out / out.sum()  # remove the rounding drift of the updates


def _kd_gradients(
    student_logits: Tensor, teacher_logits_list: Sequence[Tensor], temperature: float
) -> Tensor:
    """[K, C]: g_k = dL_k/dz_s for the batchmean KD loss L_k, averaged over the batch.

    Taken on a detached copy of the student logits so the caller's graph is untouched.
    """
    z = _as_float(student_logits.detach()).requires_grad_(True)
    grads = []
    with torch.enable_grad():
        for t in teacher_logits_list:
            (g,) = torch.autograd.grad(kd_loss(z, t, temperature), z)
            grads.append(g.mean(dim=0))  # authors' code: mean over the batch dimension
    return torch.stack(grads)


def aekd_weights(
    student_logits: Tensor,
    teacher_logits_list: Sequence[Tensor],
    temperature: float = 4.0,
    c_tol: float = 0.6,
    normalize: bool = False,
) -> Tensor:
    """AEKD teacher weights (Du et al., NeurIPS 2020, "Agree to Disagree: Adaptive Ensemble
    Knowledge Distillation in Gradient Space"), shape ``[K]``, detached.

    g_k = dL_k/dz_s (batchmean KD, T^2 included) averaged over the batch; ``G_kl = g_k.g_l``;
    one-class SVM dual on the precomputed kernel G with ``nu = 1/(c_tol K)`` clamped to
    ``[1/K, 1]``:

        min_a 0.5 a^T G a   s.t.  0 <= a_k <= 1/(K nu),  sum_k a_k = 1

    The weights are ``a`` = libsvm's ``dual_coef_ / (K nu)`` at the support indices and 0
    elsewhere: they sum to 1 and each is at most ``1/(K nu) = clamp(c_tol, 1/K, 1)``
    (0.6 for c_tol = 0.6 and K >= 2).

    ``normalize=True`` reproduces the authors' optional ``svm_norm`` variant (off by
    default; docs/methods.md, section 2.7): the gradient vectors are l2-normalized before the
    Gram matrix and the weights are then divided by the gradient norms and renormalized to
    sum 1 (the cap then no longer holds exactly).
    """
    k = _check_teachers(student_logits, teacher_logits_list)
    grads = _kd_gradients(student_logits, teacher_logits_list, temperature).double()
    norms = grads.norm(dim=1)
    if normalize:
        grads = grads / norms.clamp_min(1e-30)[:, None]
    nu = aekd_nu(k, c_tol)
    a = solve_one_class_svm_dual(grads @ grads.t(), cap=1.0 / (k * nu))
    if normalize:
        a = a / norms.cpu().clamp_min(1e-30)
        a = a / a.sum()
    return a.to(device=student_logits.device, dtype=_as_float(student_logits.detach()).dtype)


def aekd_loss(
    student_logits: Tensor,
    teacher_logits_list: Sequence[Tensor],
    temperature: float = 4.0,
    c_tol: float = 0.6,
    normalize: bool = False,
) -> Tensor:
    """AEKD (Du et al. 2020): ``L = sum_k w_k L_k`` with ``L_k`` the batchmean KD loss to
    teacher k and ``w`` from :func:`aekd_weights`, held constant (no gradient through w)."""
    w = aekd_weights(student_logits, teacher_logits_list, temperature, c_tol, normalize)
    losses = torch.stack([kd_loss(student_logits, t, temperature) for t in teacher_logits_list])
    return (w * losses).sum()


# ------------------------------------------------------------------------------- CA-MKD


def confidence_weights(per_teacher_ce: Tensor) -> Tensor:
    """CA-MKD confidence weights (Zhang et al., ICASSP 2022, "Confidence-Aware Multi-Teacher
    Knowledge Distillation"): ``w_k,i = (1 - softmax over k of l_.,i) / (K - 1)`` for a ``[K, B]``
    matrix of per-sample losses ``l``; sums to 1 over teachers. A lower loss gives a larger
    weight. With a single teacher the weight is 1 (the formula's 0/0 limit is undefined).
    Gradients flow through ``l`` if it carries any; callers detach when they need to.
    """
    if per_teacher_ce.dim() != 2:
        raise ValueError(f"confidence_weights: expected [K, B] losses, got {tuple(per_teacher_ce.shape)}")
    k = per_teacher_ce.shape[0]
    if k == 1:
        return torch.ones_like(_as_float(per_teacher_ce))
    return (1.0 - F.softmax(_as_float(per_teacher_ce), dim=0)) / (k - 1)


def camkd_kd_loss(
    student_logits: Tensor,
    teacher_logits_list: Sequence[Tensor],
    labels: Tensor,
    temperature: float = 4.0,
) -> Tensor:
    """CA-MKD logit term (Zhang et al. 2022):

        l_k,i = CE(z_tk,i, y_i)                 (T = 1, per sample)
        w_k,i = (1 - softmax over k of l_.,i) / (K - 1)
        L_KD  = (1/(B K)) sum_k sum_i w_k,i KD_i(z_s, z_tk)

    Note the extra 1/K (the weights already sum to 1 over teachers; authors' code).
    Weights are detached: they depend on the teachers only.
    """
    k = _check_teachers(student_logits, teacher_logits_list)
    ce = torch.stack(
        [F.cross_entropy(_as_float(t.detach()), labels, reduction="none") for t in teacher_logits_list]
    )
    w = confidence_weights(ce).detach()
    kd = _per_sample_kd(student_logits, teacher_logits_list, temperature)
    return (w * kd).sum() / (student_logits.shape[0] * k)


def camkd_inter_loss(
    regressed_student_feats: Sequence[Tensor],
    teacher_feats: Sequence[Tensor],
    teacher_classifiers: Sequence[Callable[[Tensor], Tensor]],
    labels: Tensor,
    detach_weights: bool = False,
) -> Tensor:
    """CA-MKD intermediate term (Zhang et al. 2022):

        z~_k     = classifier_k(r_k(F_s))      (teacher k's own pooling + linear)
        w~_k,i   = confidence weights of CE(z~_k,i, y_i)
        L_inter  = (1/(B K)) sum_k sum_i w~_k,i * mean_{c,h,w}(r_k(F_s)_i - F_tk,i)^2

    ``regressed_student_feats[k]`` is ``r_k(F_s)`` (see :class:`CAMKDRegressors`); teacher
    features are detached. ``w~`` is *not* detached by default, as in the authors' code, so
    the regressors also receive gradient through the weights; ``detach_weights=True`` stops it.
    """
    k = len(regressed_student_feats)
    if k == 0 or len(teacher_feats) != k or len(teacher_classifiers) != k:
        raise ValueError(
            f"camkd_inter_loss: need equally many regressed student features ({k}), teacher "
            f"features ({len(teacher_feats)}) and classifiers ({len(teacher_classifiers)}), at least one"
        )
    ce, mse = [], []
    for r, f_t, clf in zip(regressed_student_feats, teacher_feats, teacher_classifiers):
        if r.shape != f_t.shape:
            raise ValueError(
                f"camkd_inter_loss: regressed student feature {tuple(r.shape)} does not match "
                f"teacher feature {tuple(f_t.shape)}"
            )
        ce.append(F.cross_entropy(_as_float(clf(r)), labels, reduction="none"))
        mse.append((_as_float(r) - _as_float(f_t.detach())).pow(2).flatten(1).mean(dim=1))
    w = confidence_weights(torch.stack(ce))
    if detach_weights:
        w = w.detach()
    b = regressed_student_feats[0].shape[0]
    return (w * torch.stack(mse)).sum() / (b * k)


class CAMKDRegressors(nn.Module):
    """Per-teacher regressors r_k of CA-MKD: resize the student's last feature map to teacher
    k's spatial size (adaptive average pool if larger, bilinear if smaller), then
    1x1 conv + BatchNorm + ReLU to teacher k's channels. ``forward`` returns a list of K maps.
    """

    def __init__(self, student_channels: int, teacher_shapes: Sequence[Sequence[int]]) -> None:
        super().__init__()
        if len(teacher_shapes) == 0:
            raise ValueError("CAMKDRegressors: at least one teacher shape (C, H, W) is required")
        self.teacher_sizes: list[tuple[int, int]] = []
        layers = []
        for shape in teacher_shapes:
            if len(shape) != 3:
                raise ValueError(f"CAMKDRegressors: teacher shapes must be (C, H, W), got {tuple(shape)}")
            c, h, w = (int(v) for v in shape)
            self.teacher_sizes.append((h, w))
            layers.append(
                nn.Sequential(
                    nn.Conv2d(student_channels, c, kernel_size=1),
                    nn.BatchNorm2d(c),
                    nn.ReLU(inplace=True),
                )
            )
        self.regressors = nn.ModuleList(layers)

    def forward(self, student_feat: Tensor) -> list[Tensor]:
        return [
            reg(_resize_spatial(student_feat, size))
            for reg, size in zip(self.regressors, self.teacher_sizes)
        ]


def fitnet_mkd_loss(regressed_student_feats: Sequence[Tensor], teacher_feats: Sequence[Tensor]) -> Tensor:
    """FitNet-MKD baseline (Romero et al. 2015 hints, one regressor per teacher): mean over
    teachers of the FitNet losses, stacked then averaged so the graph is kept."""
    if len(regressed_student_feats) == 0 or len(regressed_student_feats) != len(teacher_feats):
        raise ValueError(
            f"fitnet_mkd_loss: got {len(regressed_student_feats)} regressed student features "
            f"and {len(teacher_feats)} teacher features"
        )
    return torch.stack(
        [fitnet_loss(r, t) for r, t in zip(regressed_student_feats, teacher_feats)]
    ).mean()
