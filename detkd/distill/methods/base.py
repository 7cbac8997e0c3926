"""What every distillation method sees and provides (the method interface).

The :class:`~detkd.distill.distiller.Distiller` runs the student's training pipeline and the
frozen teacher's backbone once per step and hands each enabled method one
:class:`DistillRecord`; a method turns it into named, already weighted loss terms. A method is
an ``nn.Module`` (its learnable parts, e.g. adaptation convs or generators, are trained with
the student, saved in ``last.pth`` and left out of ``model_final.pth``) built from its typed
config section by ``build(section, ctx)``. Its class names that section's dataclass
(``config``: defaults, ranges declared with :func:`detkd.config.fields.option`, the equation in
its docstring), the loader's ``distill.<name>`` section. The Distiller does only the teacher
work the enabled methods ask for: the teacher maps of :meth:`DistillMethod.teacher_levels`, and
whatever a method computes from the teacher beyond its backbone in
:meth:`DistillMethod.teacher_step` (Chen et al.: the teacher's RPN and box heads on the
student's rows), run once per batch under ``torch.inference_mode()``; ``needs_keys`` asks for
per-image keys for reproducible random draws.

How to add a method: docs/distillation_methods.md.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Optional

import torch
from torch import Tensor, nn

from detkd.config.fields import weights_of
from detkd.config.schema import DistillConfig, ModelConfig
from detkd.distill.probe import LevelInfo, probe_levels
from detkd.errors import DetkdError
from detkd.modeling.families import TrainStep, family_of_model

__all__ = ["DistillRecord", "DistillMethod", "BuildContext", "LevelPair", "LevelInfo", "resolve_levels", "scale_boxes"]


@dataclass
class DistillRecord:
    """One training step, as the methods read it (teacher tensors detached, no grad).

    Frames: ``features``/``targets``/``step`` are in the student's transformed frame
    (``batch_shape`` the padded batch tensor's (H, W)); ``teacher_*`` in the teacher's, which
    is the same frame unless the teacher's config has another input size (then the teacher
    ran its own transform on the raw images and ``teacher_boxes`` are the ground-truth boxes
    scaled into it). ``step`` is the student's whole training forward (its family's
    :class:`~detkd.modeling.families.TrainStep`: anchors, matched indices, head outputs...).
    ``teacher_outputs[name]`` is what method ``name``'s :meth:`DistillMethod.teacher_step`
    returned this batch (tensors cloned out of inference mode; absent where it returned None).
    """

    features: "OrderedDict[str, Tensor]"  # student maps (receive gradient)
    teacher_features: dict[str, Tensor]  # the teacher levels the methods asked for
    targets: list[dict[str, Tensor]]  # transformed ground truth (student frame)
    image_sizes: list[tuple[int, int]]
    batch_shape: tuple[int, int]
    teacher_image_sizes: list[tuple[int, int]]
    teacher_batch_shape: tuple[int, int]
    keys: list[int]  # per-image keys (run seed, epoch, image id) where a method needs_keys, else []
    step: TrainStep  # the student's training forward
    taps: dict[str, list[Tensor]] = field(default_factory=dict)  # student_taps outputs, one per call
    teacher_outputs: dict[str, Any] = field(default_factory=dict)  # method name -> its teacher_step's result
    input_sizes: list[tuple[int, int]] = field(default_factory=list)  # (H, W) of the images before the transform

    @property
    def teacher_boxes(self) -> list[Tensor]:
        """The ground-truth boxes in the teacher's frame."""
        return self.to_teacher_frame([t["boxes"] for t in self.targets])

    def to_teacher_frame(self, boxes: list[Tensor]) -> list[Tensor]:
        """xyxy boxes of each image from the student's frame into the teacher's (the same
        boxes when the teacher saw the student's batch)."""
        if self.teacher_image_sizes == self.image_sizes:
            return boxes
        return scale_boxes(boxes, self.image_sizes, self.teacher_image_sizes)


def scale_boxes(boxes: list[Tensor], src: list[tuple[int, int]], dst: list[tuple[int, int]]) -> list[Tensor]:
    """xyxy boxes of each image from its ``src`` (H, W) frame into its ``dst`` frame."""
    out = []
    for b, (h_s, w_s), (h_d, w_d) in zip(boxes, src, dst):
        ratio = torch.tensor([w_d / w_s, h_d / h_s, w_d / w_s, h_d / h_s], dtype=b.dtype, device=b.device)
        out.append(b * ratio)
    return out


@dataclass
class LevelPair:
    """A student map matched with a teacher map of the same stride (names may differ)."""

    student: str
    teacher: str
    student_channels: int
    teacher_channels: int


class BuildContext:
    """What a method's ``build`` may read: the two models, their families, their configs (only
    for naming keys in messages) and their feature maps probed once on a zero image."""

    def __init__(self, cfg: DistillConfig, student: nn.Module, teacher: Optional[nn.Module],
                 student_cfg: Optional[ModelConfig], teacher_cfg: Optional[ModelConfig], own_size: bool) -> None:
        self.cfg, self.student, self.teacher = cfg, student, teacher
        self.student_cfg, self.teacher_cfg = student_cfg, teacher_cfg
        self.own_size = own_size  # the teacher runs at its own input size
        self.student_family = family_of_model(student).name
        # None: an offline teacher (teacher.detections), only for the methods marked ``offline``
        self.teacher_family = None if teacher is None else family_of_model(teacher).name
        self.name = ""  # the METHODS key of the method being built (its config section distill.<name>)
        self._probe: Optional[tuple[OrderedDict, OrderedDict]] = None

    @property
    def level_map(self) -> dict[str, str]:
        return dict(self.cfg.level_map or {})

    def levels(self) -> tuple["OrderedDict[str, LevelInfo]", "OrderedDict[str, LevelInfo]"]:
        """The student's and the teacher's maps (:class:`LevelInfo`), probed once."""
        if self._probe is None:
            self._probe = tuple(probe_levels(model) for model in (self.student, self.teacher))
        return self._probe

    def shapes(self) -> tuple["OrderedDict[str, tuple[int, ...]]", "OrderedDict[str, tuple[int, ...]]"]:
        """``level -> (C, H, W)`` of the student and the teacher on their probe images."""
        return tuple(OrderedDict((k, (v.channels, v.height, v.width)) for k, v in side.items())
                     for side in self.levels())


# A parameter-free subsample of the level below it (Faster R-CNN's LastLevelMaxPool): matched by
# default only with the other net's map of the same name; distill.level_map may pair it with any map.
SUBSAMPLED_LEVELS = ("pool",)


def _describe(levels: "OrderedDict[str, LevelInfo]") -> str:
    return ", ".join(f"{k} (stride {v.stride or '?'})" for k, v in levels.items())


def _partner(level: str, info: LevelInfo, teacher: "OrderedDict[str, LevelInfo]") -> Optional[str]:
    """The teacher map of the same stride as a student map, by default (see :func:`resolve_levels`)."""
    if info.stride is None:
        return level if level in teacher and teacher[level].stride is None else None
    # A subsampled map on either side pairs only with its namesake, by default.
    same = [k for k, v in teacher.items() if v.stride == info.stride
            and (k == level or (k not in SUBSAMPLED_LEVELS and level not in SUBSAMPLED_LEVELS))]
    return level if level in same else (same[0] if same else None)


def _pairs_by_index(key: str, names: list[str], defaulted: bool, skip: tuple[str, ...],
                    ctx: BuildContext) -> list[LevelPair]:
    """``distill.pairing: index``: the i-th of the method's student maps with the i-th of the
    teacher's (``distill.level_map`` first), whatever their strides."""
    f_s, f_t = ctx.levels()
    partner = dict(zip([k for k in f_s if k not in skip], [k for k in f_t if k not in skip]))
    partner.update(ctx.level_map)
    pairs = []
    for level in names:
        if level not in f_s:
            raise DetkdError(f"{key}: '{level}' is not a student feature map; available: {', '.join(f_s)}")
        t_level = partner.get(level)
        if t_level is None and defaulted:
            continue
        if t_level not in f_t:
            raise DetkdError(f"{key}: student level '{level}' has no teacher map at its position (distill.pairing: "
                             f"index; teacher: {', '.join(f_t)})")
        pairs.append(LevelPair(level, t_level, f_s[level].channels, f_t[t_level].channels))
    if not pairs:
        raise DetkdError(f"{key}: no feature level to distill")
    return pairs


def resolve_levels(method: str, levels: Optional[list[str]], ctx: BuildContext,
                   skip: tuple[str, ...] = ()) -> list[LevelPair]:
    """The (student, teacher) map pairs of ``distill.<method>.levels``.

    Maps pair by equal stride, never by position (docs/methods.md, section 4): each student map
    is matched with ``distill.level_map[level]`` if given, else with the teacher's map of the
    same stride (the one of the same name if several; a ``pool`` map, a parameter-free
    subsample, on either side only with its namesake). ``levels`` None: every student map but ``skip``
    (the method's default, e.g. PKD leaves out the FPN's last extra map), those without a
    partner skipped; a level named in ``levels`` without a partner is refused. Refused with one
    line too: a map missing on either side, a ``level_map`` pair of different strides (with the
    teacher map of the same stride as the fix), and a method left with no pair."""
    f_s, f_t = ctx.levels()
    mapping = ctx.level_map
    key = f"distill.{method}.levels"
    names = [k for k in f_s if k not in skip] if levels is None else [str(level) for level in levels]
    if ctx.cfg.pairing == "index":
        return _pairs_by_index(key, names, levels is None, skip, ctx)
    pairs = []
    for level in names:
        if level not in f_s:
            raise DetkdError(f"{key}: '{level}' is not a student feature map; available: {', '.join(f_s)}")
        info = f_s[level]
        same = _partner(level, info, f_t)
        hint = f"; the teacher's map of the same stride is '{same}': set distill.level_map {{'{level}': '{same}'}}" \
            if same is not None else ""
        if level in mapping:
            t_level = mapping[level]
            if t_level not in f_t:
                raise DetkdError(f"{key}: student level '{level}' is matched with teacher level '{t_level}', which "
                                 f"is not a teacher feature map (available: {', '.join(f_t)}){hint}")
            t_info = f_t[t_level]
            if info.stride is not None and t_info.stride is not None:
                differ = info.stride != t_info.stride
            else:  # a 1-cell map: only another 1-cell map
                differ = (info.height, info.width) != (t_info.height, t_info.width)
            if differ:
                raise DetkdError(
                    f"{key}: student level '{level}' and teacher level '{t_level}' have different strides "
                    f"({info.stride or '?'} vs {t_info.stride or '?'}: {info.height}x{info.width} vs "
                    f"{t_info.height}x{t_info.width} on the probe image){hint}")
        elif same is not None:
            t_level = same
        elif levels is None:
            continue  # no teacher map of this stride: not distilled
        else:
            raise DetkdError(f"{key}: student level '{level}' (stride {info.stride or '?'}) has no teacher map of "
                             f"the same stride (teacher: {_describe(f_t)}); pair it in distill.level_map")
        pairs.append(LevelPair(level, t_level, info.channels, f_t[t_level].channels))
    if not pairs:
        raise DetkdError(f"{key}: no student map has a teacher map of the same stride (student: {_describe(f_s)}; "
                         f"teacher: {_describe(f_t)}); pair maps in distill.level_map")
    return pairs


class DistillMethod(nn.Module):
    """Base of a method: set ``config`` (its section's dataclass), override ``build``,
    ``forward`` and, where needed, the rest."""

    config: type = type(None)  # the dataclass of its config section distill.<name>
    name = ""  # its METHODS key: set by the Distiller (BuildContext.name while it is built)
    needs_keys = False  # per-image keys for random draws (DistillRecord.keys; else left empty)
    # Runs from an offline teacher (teacher.detections: no model; teacher_step gets None and
    # reads the detections the data carries in each target's teacher_boxes/labels/scores).
    offline = False
    # Defaults that depend on the student's family (docs/methods.md, section 4): family name ->
    # {option: value}, filled in by the config loader where the section leaves the option out
    # (so a saved config.yaml shows the values used).
    family_defaults: dict[str, dict[str, Any]] = {}

    def __init__(self) -> None:
        super().__init__()
        # Detached tensors of the last step for the log (unweighted values, active fractions).
        self.stats: dict[str, Tensor] = {}

    @classmethod
    def build(cls, section: Any, ctx: BuildContext) -> Optional["DistillMethod"]:
        """The method for its config section, or None when its weights make it a no-op."""
        raise NotImplementedError

    @classmethod
    def zero_config(cls) -> Any:
        """Its section with every loss weight 0, where the method is a no-op (``build`` gives
        None): the fields declared ``option(..., weight=True)`` set to 0."""
        return cls.config(**dict.fromkeys(weights_of(cls.config), 0.0))

    @classmethod
    def compares_anchors(cls, section: Any) -> bool:
        """Whether the method, so configured, compares the two nets anchor by anchor (then the
        teacher must see the student's input: ``distill.teacher_input: auto`` picks that)."""
        return False

    @classmethod
    def check_families(cls, section: Any, student_family: str, teacher_family: str) -> None:
        """Refuse, with a one-line :class:`DetkdError`, a student/teacher pair of detector families
        the method cannot distil (the config loader calls it before any model is built)."""

    @classmethod
    def applies_to(cls, student_family: str, teacher_family: str) -> bool:
        """Whether the method, at its defaults, distils this pair of families."""
        try:
            cls.check_families(cls.config(), student_family, teacher_family)
        except DetkdError:
            return False
        return True

    def teacher_levels(self) -> list[str]:
        """Teacher FPN levels this method reads (the only ones cloned out of inference mode)."""
        return []

    def teacher_step(self, rec: DistillRecord, teacher: nn.Module, features: "OrderedDict[str, Tensor]") -> Any:
        """The method's own teacher work for this batch, beyond the teacher's backbone, or None.

        Called by the Distiller once per batch for every method that runs, after the teacher's
        backbone (+ FPN) and under ``torch.inference_mode()``: ``teacher`` is the frozen
        teacher, ``features`` all its maps (the teacher's frame; ``rec.to_teacher_frame`` maps
        the student's boxes into it). Whatever it returns (tensors, or tuples, lists and dicts
        of them) reaches :meth:`forward` as ``rec.teacher_outputs[self.name]``, cloned out of
        inference mode. Here, not in :meth:`forward`, so that the teacher runs in one place
        per batch, without autograd, and the Distiller needs to know no detector's heads."""
        return None

    def student_taps(self) -> dict[str, nn.Module]:
        """Student modules whose outputs the method reads (``DistillRecord.taps[name]``: one
        tensor per call in the training forward, cloned as they come out, with gradient)."""
        return {}

    def hard_weights(self, distilling: bool) -> dict[str, float]:
        """Multipliers of the student's own loss terms, at an epoch where the methods run
        (``distilling``) or not (Chen et al.: lambda on the regression always, mu on the
        classification while distilling)."""
        return {}

    def terms(self) -> frozenset[str]:
        """Names of what this method contributes (for the log and ``Distiller.active_terms``)."""
        raise NotImplementedError

    def forward(self, rec: DistillRecord) -> dict[str, Tensor]:
        raise NotImplementedError
