"""Teacher/student compatibility checks for detection distillation (Chen et al., NeurIPS 2017).

The soft and bounded terms compare teacher and student *row by row* (``docs/methods.md``,
section 1.2, "Same samples"): the RPN terms on the student's sampled anchors, the RCN terms on
the student's sampled proposals. That is only meaningful when both nets agree on what a row
is, so before training starts :func:`check_compatible` refuses, with one line naming the
problem and the config keys involved:

* different class counts (the soft CE compares class distributions);
* different box-coder weights where a bounded term compares encoded deltas;
* with RPN distillation on: different anchors (sizes, aspect ratios, anchors per location),
  a different number of feature levels, or different feature strides;
* hint levels that are not feature maps of the student or the teacher;
* an ``identity`` hint adapter between maps of different channel counts.

Which checks apply depends on which terms are on (:func:`enabled_terms`): a term is on when
its switch is on *and* its weight is > 0, so e.g. differing anchors are fine when both RPN
terms are off.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import TYPE_CHECKING, Optional

from torch import nn

from detkd.config.schema import ModelConfig
from detkd.distill.probe import PROBE_SIZE, anchor_layout, probe_features
from detkd.errors import DetkdError

if TYPE_CHECKING:  # for annotations only: chen.py imports this module
    from detkd.distill.methods.chen import ChenConfig

__all__ = ["TERMS", "RPN_TERMS", "RCN_TERMS", "enabled_terms", "check_compatible"]

TERMS = ("rpn_soft", "rcn_soft", "rpn_bound", "rcn_bound", "hint")
RPN_TERMS = frozenset({"rpn_soft", "rpn_bound"})
RCN_TERMS = frozenset({"rcn_soft", "rcn_bound"})


def enabled_terms(cfg: "ChenConfig") -> frozenset[str]:
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


def _num_classes(model: nn.Module) -> int:
    predictor = model.roi_heads.box_predictor
    cls_score = getattr(predictor, "cls_score", None)
    if isinstance(cls_score, nn.Linear):
        return cls_score.out_features
    raise DetkdError(f"cannot read the class count of box predictor {type(predictor).__name__}")


def _anchors(model: nn.Module) -> tuple[tuple[tuple[float, ...], ...], tuple[tuple[float, ...], ...]]:
    return anchor_layout(model.rpn.anchor_generator)


def _fmt_levels(shapes: "OrderedDict[str, tuple[int, ...]]") -> str:
    return ", ".join(f"{k}: {s[1]}x{s[2]}" if len(s) == 3 else f"{k}: {s}" for k, s in shapes.items())


def check_compatible(
    student_cfg: Optional[ModelConfig],
    teacher_cfg: Optional[ModelConfig],
    distill_cfg: "ChenConfig",
    student: nn.Module,
    teacher: nn.Module,
    level_map: Optional[dict[str, str]] = None,
) -> dict[str, tuple[int, int]]:
    """Refuse a teacher/student pair the enabled distillation terms cannot compare.

    Raises :class:`DetkdError` with one line naming the problem. The configs are only used
    to name keys in messages (``None`` is accepted when the models were built in code);
    everything is read from the models themselves. Backbones are probed once with a zero
    image (:func:`probe_features`) for feature-level names, channels and strides.

    Returns ``{hint level: (student channels, teacher channels)}`` for the hint levels
    (empty when the hint term is off), which is what
    :class:`detkd.modeling.adapters.HintAdapters` is built from. ``level_map`` matches a
    student hint level with a differently named teacher level (``distill.level_map``).
    """
    terms = enabled_terms(distill_cfg)
    s_pre = "model." if student_cfg is not None else "student "
    t_pre = "teacher.model." if teacher_cfg is not None else "teacher "
    for model, who in ((student, "student"), (teacher, "teacher")):
        heads = model.roi_heads
        if heads.has_mask() or heads.has_keypoint():
            raise DetkdError(f"the {who} has mask/keypoint heads; detkd distills Faster R-CNN box detectors only")

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

    need_probe = bool(terms & {"rpn_soft", "rpn_bound", "hint"})
    if not need_probe:
        return {}
    f_s, f_t = probe_features(student), probe_features(teacher)

    # RPN: rows are anchors, so anchors, feature levels and strides must coincide.
    rpn_terms = sorted(terms & {"rpn_soft", "rpn_bound"})
    if rpn_terms:
        switch = "/".join(f"distill.chen.{t}" for t in rpn_terms)
        sizes_s, ratios_s = _anchors(student)
        sizes_t, ratios_t = _anchors(teacher)
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

    # Hint: named levels, one adapter each.
    channels: dict[str, tuple[int, int]] = {}
    if "hint" in terms:
        levels = [str(level) for level in distill_cfg.hint_levels]
        if not levels:
            raise DetkdError("distill.chen.hint_levels is empty while distill.chen.hint is on")
        mapping = level_map or {}
        for level in levels:
            t_level = mapping.get(level, level)
            for feats, name, who in ((f_s, level, "student"), (f_t, t_level, "teacher")):
                if name not in feats:
                    raise DetkdError(
                        f"distill.chen.hint_levels: level '{name}' is not a {who} feature map; "
                        f"available: {', '.join(feats)}"
                    )
            c_s, c_t = f_s[level][0], f_t[t_level][0]
            if distill_cfg.adapter == "identity" and c_s != c_t:
                raise DetkdError(
                    f"distill.chen.adapter 'identity' needs equal channels at hint level '{level}': "
                    f"student {c_s}, teacher {c_t}; use adapter: conv1x1"
                )
            channels[level] = (c_s, c_t)
    return channels
