r"""Chen et al., "Learning Efficient Object Detection Models with Knowledge Distillation"
(NeurIPS 2017; spec docs/methods.md, section 1) as a method of the family::

    L      = L_RPN + L_RCN + gamma * L_hint                       gamma = 0.5
    L_cls  = mu * L_hard + (1 - mu) * L_soft                      mu = 0.5
    L_soft = - sum_c w_c P_t,c log P_s,c,  P = softmax(z / T)     w_bg = 1.5, T = 1
    L_reg  = smoothL1(R_s, y) + nu * L_b(R_s, R_t, y)             nu = 0.5
    L_b    = ||R_s - y||^2 if ||R_s - y||^2 + m > ||R_t - y||^2 else 0   (per row)
    L_hint = ||adapt(V) - Z||^2                                   (elementwise mean)

Rows line up because the teacher is read at the student's anchors (RPN) and on the student's
sampled proposals (RoI head): :meth:`ChenMethod.teacher_step` runs the teacher's RPN head on its
own maps and its box head on the student's proposals, once per batch. Normalization follows the hard
term beside each soft/bounded term: RPN soft = mean over the sampled anchors; RCN soft = mean
over the sampled RoIs; bounds = sum over positive rows / number of sampled rows.

Rows are only comparable when both nets agree on what a row is, so before training
:func:`check_compatible` refuses, with one line naming the problem and the config keys, a pair
the enabled terms (:func:`enabled_terms`: switch on *and* weight > 0) cannot compare:
different class counts (the soft CE compares class distributions); different box-coder weights
where a bounded term compares encoded deltas; with an RPN term on, different anchors (sizes,
aspect ratios, anchors per location), feature levels or strides; hint levels that are not maps
of the student or the teacher; an ``identity`` adapter between maps of different widths. So
differing anchors are fine when both RPN terms are off.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal, Optional

import torch
from torch import Tensor, nn
from torchvision.models.detection.rpn import concat_box_prediction_layers

from detkd.config.fields import option
from detkd.config.schema import ModelConfig
from detkd.distill.methods.base import BuildContext, DistillMethod, DistillRecord
from detkd.distill.probe import PROBE_SIZE, anchor_layout
from detkd.errors import DetkdError
from detkd.losses.detection import bounded_regression_loss, objectness_soft_ce, weighted_soft_ce
from detkd.modeling.adapters import HintAdapters, hint_losses
from detkd.modeling.families import check_boxes_only

__all__ = ["TERMS", "RPN_TERMS", "RCN_TERMS", "ChenConfig", "ChenMethod", "check_compatible", "enabled_terms"]

TERMS = ("rpn_soft", "rcn_soft", "rpn_bound", "rcn_bound", "hint")
RPN_TERMS = frozenset({"rpn_soft", "rpn_bound"})
RCN_TERMS = frozenset({"rcn_soft", "rcn_bound"})
PROBED_TERMS = RPN_TERMS | {"hint"}  # the terms whose checks read the backbones' maps

Shapes = OrderedDict[str, tuple[int, ...]]  # level -> (C, H, W) on the probe image


@dataclass
class ChenConfig:
    """Chen et al. (NeurIPS 2017), ``distill.chen`` (docs/methods.md, section 1)::

        L = L_RPN + L_RCN + gamma * L_hint;  L_cls = mu * hard + (1 - mu) * soft;
        L_reg = lam * (smoothL1 + nu * L_b)

    Each term has a switch; a term is on when its switch is on and its weight is > 0
    (soft: 1 - mu, bound: lam * nu, hint: gamma). Defaults: the paper's."""

    hint: bool = True
    rpn_soft: bool = True
    rcn_soft: bool = True
    rpn_bound: bool = True
    rcn_bound: bool = True
    mu: float = option(0.5, ge=0, le=1)
    nu: float = option(0.5, ge=0)
    gamma: float = option(0.5, ge=0)
    lam: float = option(1.0, ge=0)  # lambda: weight of the regression terms in both heads
    temperature: float = option(1.0, gt=0)
    bg_weight: float = option(1.5, ge=0)
    class_weighted: bool = True  # False: unweighted soft CE (ablation)
    margin: float = option(0.0, ge=0)
    bound_kind: Literal["bounded", "l2"] = "bounded"  # l2: plain L2 to the teacher (ablation)
    hint_levels: list[str] = option(default_factory=lambda: ["0"], nonempty=True)
    adapter: Literal["conv1x1", "identity"] = "conv1x1"


def enabled_terms(cfg: ChenConfig) -> frozenset[str]:
    """The distillation terms that contribute: switch on and weight > 0.

    Weights: soft terms ``1 - mu``, bounded terms ``lam * nu``, hint ``gamma``. A term whose
    weight is 0 is skipped entirely (no teacher work, no loss entry), so ``mu = 1, nu = 0,
    gamma = 0`` is the plain student loss exactly (so is leaving ``distill.chen`` out).
    """
    soft_w = 1.0 - cfg.mu
    bound_w = cfg.lam * cfg.nu
    weights = {
        "rpn_soft": (cfg.rpn_soft, soft_w),
        "rcn_soft": (cfg.rcn_soft, soft_w),
        "rpn_bound": (cfg.rpn_bound, bound_w),
        "rcn_bound": (cfg.rcn_bound, bound_w),
        "hint": (cfg.hint, cfg.gamma),
    }
    return frozenset(name for name, (switch, w) in weights.items() if switch and w > 0)


# --------------------------------------------------------------------------- compatibility


def check_compatible(
    student_cfg: Optional[ModelConfig],
    teacher_cfg: Optional[ModelConfig],
    distill_cfg: ChenConfig,
    student: nn.Module,
    teacher: nn.Module,
    level_map: Optional[dict[str, str]] = None,
    *,
    probe: Callable[[], tuple[Shapes, Shapes]],
) -> dict[str, tuple[int, int]]:
    """Refuse a teacher/student pair the enabled distillation terms cannot compare.

    Raises :class:`DetkdError` with one line naming the problem. The configs are only used
    to name keys in messages (``None`` is accepted when the models were built in code);
    everything is read from the models themselves. ``probe`` gives the two backbones' maps on
    a zero image (the build's one probe, ``BuildContext.shapes``), called only when an RPN term
    or the hint is on.

    Returns ``{hint level: (student channels, teacher channels)}`` for the hint levels
    (empty when the hint term is off), which is what
    :class:`detkd.modeling.adapters.HintAdapters` is built from. ``level_map`` matches a
    student hint level with a differently named teacher level (``distill.level_map``).
    """
    terms = enabled_terms(distill_cfg)
    s_pre = "model." if student_cfg is not None else "student "
    t_pre = "teacher.model." if teacher_cfg is not None else "teacher "
    _check_heads(student, teacher, terms, s_pre, t_pre)
    if not terms & PROBED_TERMS:
        return {}
    f_s, f_t = probe()
    if terms & RPN_TERMS:
        _check_rpn(student, teacher, terms, f_s, f_t, s_pre, t_pre)
    if "hint" not in terms:
        return {}
    return _hint_channels(distill_cfg, f_s, f_t, level_map or {})


def _check_heads(student: nn.Module, teacher: nn.Module, terms: frozenset[str], s_pre: str, t_pre: str) -> None:
    """Box heads only, the same class list, and (for a bounded term) the same box coder."""
    for model, who in ((student, "student"), (teacher, "teacher")):
        check_boxes_only(model, who)

    # Classes: the soft CE compares distributions over the same class list.
    n_s, n_t = _num_classes(student), _num_classes(teacher)
    if n_s != n_t:
        raise DetkdError(
            f"teacher and student class counts differ: {t_pre}num_classes gives {n_t}, "
            f"{s_pre}num_classes gives {n_s}; distillation needs the same class list"
        )

    # Box coders: the bounded term compares deltas, which are only comparable when both are
    # encoded with the same weights (torchvision: RPN (1,1,1,1), RoI (10,10,5,5)).
    for term, head in (("rpn_bound", "rpn"), ("rcn_bound", "roi_heads")):
        if term not in terms:
            continue
        w_s = tuple(float(w) for w in getattr(student, head).box_coder.weights)
        w_t = tuple(float(w) for w in getattr(teacher, head).box_coder.weights)
        if w_s != w_t:
            raise DetkdError(
                f"distill.chen.{term}: {head}.box_coder weights differ (student {w_s}, teacher {w_t}); "
                f"the bounded regression compares deltas encoded with the same weights"
            )


def _num_classes(model: nn.Module) -> int:
    predictor = model.roi_heads.box_predictor
    cls_score = getattr(predictor, "cls_score", None)
    if isinstance(cls_score, nn.Linear):
        return cls_score.out_features
    raise DetkdError(f"cannot read the class count of box predictor {type(predictor).__name__}")


def _check_rpn(student: nn.Module, teacher: nn.Module, terms: frozenset[str], f_s: Shapes, f_t: Shapes,
               s_pre: str, t_pre: str) -> None:
    """RPN terms: rows are anchors, so anchors, feature levels and strides must coincide."""
    switch = "/".join(f"distill.chen.{t}" for t in sorted(terms & RPN_TERMS))
    sizes_s, ratios_s = anchor_layout(student.rpn.anchor_generator)
    sizes_t, ratios_t = anchor_layout(teacher.rpn.anchor_generator)
    if sizes_s != sizes_t or ratios_s != ratios_t:
        raise DetkdError(
            f"RPN distillation ({switch}) needs the same anchors: student sizes {sizes_s} "
            f"ratios {ratios_s}, teacher sizes {sizes_t} ratios {ratios_t}; align "
            f"{t_pre}anchor_sizes/aspect_ratios with {s_pre}anchor_sizes/aspect_ratios or turn {switch} off"
        )
    a_s = student.rpn.anchor_generator.num_anchors_per_location()
    a_t = teacher.rpn.anchor_generator.num_anchors_per_location()
    if a_s != a_t:
        raise DetkdError(
            f"RPN distillation ({switch}) needs the same anchors per location: student {a_s}, teacher {a_t}"
        )
    if len(f_s) != len(f_t):
        raise DetkdError(
            f"RPN distillation ({switch}) needs the same number of feature levels: student has "
            f"{len(f_s)} ({', '.join(f_s)}), teacher {len(f_t)} ({', '.join(f_t)}); "
            f"check {s_pre}returned_layers/extra_pool_level against {t_pre}returned_layers/extra_pool_level"
        )
    grids_s = [s[1:] for s in f_s.values()]
    grids_t = [s[1:] for s in f_t.values()]
    if grids_s != grids_t:
        raise DetkdError(
            f"RPN distillation ({switch}) needs the same feature strides: on a {PROBE_SIZE}x{PROBE_SIZE} "
            f"image the student's maps are [{_fmt_levels(f_s)}] and the teacher's [{_fmt_levels(f_t)}]"
        )


def _fmt_levels(shapes: Shapes) -> str:
    return ", ".join(f"{k}: {s[1]}x{s[2]}" if len(s) == 3 else f"{k}: {s}" for k, s in shapes.items())


def _hint_channels(cfg: ChenConfig, f_s: Shapes, f_t: Shapes, level_map: dict[str, str]) -> dict[str, tuple[int, int]]:
    """Hint: named levels on both sides, one adapter each (``identity`` only between equal widths)."""
    levels = [str(level) for level in cfg.hint_levels]
    if not levels:
        raise DetkdError("distill.chen.hint_levels is empty while distill.chen.hint is on")
    channels: dict[str, tuple[int, int]] = {}
    for level in levels:
        t_level = level_map.get(level, level)
        for feats, name, who in ((f_s, level, "student"), (f_t, t_level, "teacher")):
            if name not in feats:
                raise DetkdError(
                    f"distill.chen.hint_levels: level '{name}' is not a {who} feature map; "
                    f"available: {', '.join(feats)}"
                )
        c_s, c_t = f_s[level][0], f_t[t_level][0]
        if cfg.adapter == "identity" and c_s != c_t:
            raise DetkdError(
                f"distill.chen.adapter 'identity' needs equal channels at hint level '{level}': "
                f"student {c_s}, teacher {c_t}; use adapter: conv1x1"
            )
        channels[level] = (c_s, c_t)
    return channels


def _l2_to_teacher(student: Tensor, teacher: Tensor) -> Tensor:
    """Plain L2 ablation: sum over rows of ||R_s - R_t||^2 (teacher detached)."""
    dtype = torch.float64 if student.dtype == torch.float64 else torch.float32
    return (student.to(dtype) - teacher.detach().to(dtype)).pow(2).sum()


class ChenMethod(DistillMethod):
    """Hint with adaptation layers, class-weighted soft CE in both heads, teacher-bounded
    regression. ``adapters`` is the :class:`HintAdapters` of ``hint_levels`` (None when the
    hint is off); loss keys ``loss_rcn_soft``, ``loss_rcn_bound``, ``loss_rpn_soft``,
    ``loss_rpn_bound``, ``loss_hint``; stats ``raw_<term>`` and ``<head>_bound_active``."""

    config = ChenConfig

    def __init__(self, cfg: ChenConfig, terms: frozenset[str], hint_channels: dict[str, tuple[int, int]],
                 num_classes: int, level_map: dict[str, str]) -> None:
        super().__init__()
        self.cfg = cfg
        self._terms = terms
        self.reads_teacher_rpn = bool(terms & RPN_TERMS)  # what teacher_step runs
        self.reads_teacher_rcn = bool(terms & RCN_TERMS)
        self.hint_levels = [str(level) for level in cfg.hint_levels]
        self.level_map = level_map
        self.adapters: Optional[HintAdapters] = None
        if "hint" in terms:
            self.adapters = HintAdapters(hint_channels, cfg.adapter)
        weights = torch.ones(num_classes)
        if cfg.class_weighted:
            weights[0] = cfg.bg_weight  # torchvision: class 0 is background
        self.register_buffer("class_weights", weights, persistent=False)
        self.rpn_bg_weight = float(cfg.bg_weight) if cfg.class_weighted else 1.0

    @classmethod
    def zero_config(cls) -> ChenConfig:
        return ChenConfig(mu=1.0, nu=0.0, gamma=0.0)  # soft weight 1 - mu, bound lam * nu, hint gamma

    @classmethod
    def compares_anchors(cls, section: ChenConfig) -> bool:
        return bool(enabled_terms(section) & RPN_TERMS)

    @classmethod
    def check_families(cls, section: ChenConfig, student_family: str, teacher_family: str) -> None:
        if student_family != "faster_rcnn" or teacher_family != "faster_rcnn":
            raise DetkdError(
                f"distill.chen: Chen et al.'s terms read the RPN and RoI heads of a Faster R-CNN student and teacher; "
                f"this pair is {student_family} <- {teacher_family}: use an FPN-feature method (pkd, cwd, mgd, fgd, "
                "fgfi, mimic)" + (" or crosskd" if student_family == teacher_family else ""))

    @classmethod
    def build(cls, section: ChenConfig, ctx: BuildContext) -> Optional["ChenMethod"]:
        if section.bound_kind not in ("bounded", "l2"):  # a config built in code skips the loader's check
            raise DetkdError(f"distill.chen.bound_kind must be 'bounded' or 'l2', got {section.bound_kind!r}")
        terms = enabled_terms(section)
        if not terms and section.lam == 1.0:
            return None  # every term off and the student's loss untouched
        cls.check_families(section, ctx.student_family, ctx.teacher_family)
        if ctx.own_size and terms & RPN_TERMS:
            switch = "/".join(f"distill.chen.{t}" for t in sorted(terms & RPN_TERMS))
            raise DetkdError(
                f"RPN distillation ({switch}) compares the two nets anchor by anchor, so the teacher must see the "
                f"student's input size: set distill.teacher_input: student, or turn {switch} off")
        hint_channels = check_compatible(ctx.student_cfg, ctx.teacher_cfg, section, ctx.student, ctx.teacher,
                                         level_map=ctx.level_map, probe=ctx.shapes)
        num_classes = ctx.student.roi_heads.box_predictor.cls_score.out_features
        return cls(section, terms, hint_channels, num_classes, ctx.level_map)

    def terms(self) -> frozenset[str]:
        return self._terms

    def teacher_levels(self) -> list[str]:
        return [self.level_map.get(level, level) for level in self.hint_levels] if "hint" in self._terms else []

    def hard_weights(self, distilling: bool) -> dict[str, float]:
        # lambda scales the student's regression terms in every epoch; where a head's soft term
        # is on, its hard CE is weighted by mu (while distilling).
        weights = {"loss_box_reg": self.cfg.lam, "loss_rpn_box_reg": self.cfg.lam}
        if not distilling:
            return weights
        if "rcn_soft" in self._terms:
            weights["loss_classifier"] = self.cfg.mu
        if "rpn_soft" in self._terms:
            weights["loss_objectness"] = self.cfg.mu
        return weights

    def teacher_step(self, rec: DistillRecord, teacher: nn.Module,
                     features: "OrderedDict[str, Tensor]") -> tuple[Optional[tuple[Tensor, Tensor]], ...]:
        """The teacher's rows beside the student's, as far as the terms that are on need:
        (objectness, deltas) of its RPN head at every student anchor, (logits, deltas) of its
        box head on the student's sampled proposals (None where no term reads them)."""
        rpn = _teacher_rpn(teacher, features, rec.step.grids) if self.reads_teacher_rpn else None
        rcn = None
        if self.reads_teacher_rcn:
            proposals = rec.to_teacher_frame(rec.step.rcn["proposals"])
            rcn = _teacher_rcn(teacher, features, proposals, rec.teacher_image_sizes)
        return rpn, rcn

    def forward(self, rec: DistillRecord) -> dict[str, Tensor]:
        cfg, terms, rpn, rcn = self.cfg, self._terms, rec.step.rpn, rec.step.rcn
        self.stats = {}
        losses: dict[str, Tensor] = {}
        soft_w, bound_w = 1.0 - cfg.mu, cfg.lam * cfg.nu
        t_rpn, t_rcn = rec.teacher_outputs[self.name]
        if self.reads_teacher_rcn:
            t_logits, t_regression = t_rcn
        if "rcn_soft" in terms:
            # All sampled RoIs, mean: like the hard CE beside it.
            soft = weighted_soft_ce(rcn["class_logits"], t_logits, self.class_weights, cfg.temperature, "mean")
            losses["loss_rcn_soft"] = soft * soft_w
            self.stats["raw_rcn_soft"] = soft.detach()
        if "rcn_bound" in terms:
            # Positive RoIs, both nets' deltas at the ground-truth class.
            pos = torch.where(rcn["labels"] > 0)[0]  # as in fastrcnn_loss
            labels_pos = rcn["labels"][pos]
            num_rows = rcn["labels"].numel()
            s_d = rcn["box_regression"].reshape(num_rows, -1, 4)[pos, labels_pos]
            t_d = t_regression.reshape(num_rows, -1, 4)[pos, labels_pos]
            bound = self._bound(s_d, t_d, rcn["regression_targets"][pos], num_rows, "rcn")
            losses["loss_rcn_bound"] = bound * bound_w
            self.stats["raw_rcn_bound"] = bound.detach()
        if self.reads_teacher_rpn:
            t_obj, t_deltas = t_rpn
        if "rpn_soft" in terms:
            sampled = rpn["sampled_inds"]
            # Sampled anchors, mean: like the objectness BCE beside it.
            soft = objectness_soft_ce(rpn["objectness"][sampled], t_obj[sampled], self.rpn_bg_weight,
                                      cfg.temperature, "mean")
            losses["loss_rpn_soft"] = soft * soft_w
            self.stats["raw_rpn_soft"] = soft.detach()
        if "rpn_bound" in terms:
            pos = rpn["sampled_pos_inds"]
            bound = self._bound(rpn["pred_bbox_deltas"][pos], t_deltas[pos], rpn["regression_targets"][pos],
                                rpn["sampled_inds"].numel(), "rpn")
            losses["loss_rpn_bound"] = bound * bound_w
            self.stats["raw_rpn_bound"] = bound.detach()
        if "hint" in terms:
            assert self.adapters is not None
            t_feats = {level: rec.teacher_features[self.level_map.get(level, level)] for level in self.hint_levels}
            hint = hint_losses(self.adapters, rec.features, t_feats, self.hint_levels, reduction="mean")
            losses["loss_hint"] = hint * cfg.gamma
            self.stats["raw_hint"] = hint.detach()
        return losses

    def _bound(self, s_d: Tensor, t_d: Tensor, y: Tensor, num_sampled: int, head: str) -> Tensor:
        """Sum over positive rows / number of sampled rows (torchvision's smooth-L1 norm)."""
        if self.cfg.bound_kind == "l2":
            return _l2_to_teacher(s_d, t_d) / num_sampled
        loss, active = bounded_regression_loss(s_d, t_d, y, self.cfg.margin, "sum", return_active=True)
        self.stats[f"{head}_bound_active"] = active.sum() / max(active.numel(), 1)
        return loss / num_sampled


def _teacher_rpn(teacher: nn.Module, features: "OrderedDict[str, Tensor]",
                 student_grids: list[tuple[int, int]]) -> tuple[Tensor, Tensor]:
    """Teacher objectness and deltas for every student anchor (same anchor order)."""
    t_obj, t_deltas = teacher.rpn.head(list(features.values()))
    grids = [tuple(o.shape[-2:]) for o in t_obj]
    if grids != list(student_grids):  # check_compatible makes this unreachable for sane models
        raise DetkdError(
            f"RPN distillation: teacher feature grids {grids} differ from the student's {list(student_grids)}"
        )
    t_obj, t_deltas = concat_box_prediction_layers(t_obj, t_deltas)
    return t_obj.flatten(), t_deltas


def _teacher_rcn(teacher: nn.Module, features: "OrderedDict[str, Tensor]", proposals: list[Tensor],
                 image_sizes: list[tuple[int, int]]) -> tuple[Tensor, Tensor]:
    """The student's sampled proposals, pooled from the teacher's features and run through
    the teacher's box head: one teacher row per student row, same order."""
    heads = teacher.roi_heads
    box_features = heads.box_roi_pool(features, proposals, image_sizes)
    box_features = heads.box_head(box_features)
    return heads.box_predictor(box_features)
