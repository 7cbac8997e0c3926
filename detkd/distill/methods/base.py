"""What every distillation method sees and provides (the method interface).

The :class:`~detkd.distill.distiller.Distiller` runs the student's training pipeline and the
frozen teacher once per step and hands each enabled method one :class:`DistillRecord`; a
method turns it into named, already weighted loss terms. A method is an ``nn.Module`` (its
learnable parts, e.g. adaptation convs or generators, are trained with the student, saved in
``last.pth`` and left out of ``model_final.pth``) built from its typed config section by
``build(section, ctx)``. Its class names that section's dataclass (``config``: defaults,
ranges declared with :func:`detkd.config.fields.option`, the equation in its docstring), the
loader's ``distill.<name>`` section. The Distiller reads three class attributes to do only the teacher
work the enabled methods need: ``needs_teacher_rpn`` (teacher RPN head at the student's
anchors), ``needs_teacher_rcn`` (teacher box head on the student's sampled proposals),
``needs_keys`` (per-image keys for reproducible random draws) and
:meth:`DistillMethod.teacher_levels` (the teacher FPN maps it reads).

How to add a method: docs/distillation_methods.md.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Optional

from torch import Tensor, nn

from detkd.config.fields import weights_of
from detkd.config.schema import DistillConfig, ModelConfig
from detkd.distill.compat import PROBE_SIZE, probe_features
from detkd.errors import DetkdError

__all__ = ["DistillRecord", "DistillMethod", "BuildContext", "LevelPair", "resolve_levels"]


@dataclass
class DistillRecord:
    """One training step, as the methods read it (teacher tensors detached, no grad).

    Frames: ``features``/``targets``/``rpn``/``rcn`` are in the student's transformed frame
    (``batch_shape`` the padded batch tensor's (H, W)); ``teacher_*`` in the teacher's, which
    is the same frame unless the teacher's config has another input size (then the teacher
    ran its own transform on the raw images and ``teacher_boxes`` are the ground-truth boxes
    scaled into it).
    """

    features: "OrderedDict[str, Tensor]"  # student maps (receive gradient)
    teacher_features: dict[str, Tensor]  # the teacher levels the methods asked for
    targets: list[dict[str, Tensor]]  # transformed ground truth (student frame)
    image_sizes: list[tuple[int, int]]
    batch_shape: tuple[int, int]
    teacher_boxes: list[Tensor]
    teacher_image_sizes: list[tuple[int, int]]
    teacher_batch_shape: tuple[int, int]
    keys: list[int]  # per-image keys (run seed, epoch, image id) where a method needs_keys, else []
    rpn: dict[str, Any]  # student RPN: anchors, objectness, deltas, sampled rows, targets, grids
    rcn: dict[str, Any]  # student RoI head: sampled proposals, logits, regression, labels
    teacher_rpn: Optional[tuple[Tensor, Tensor]] = None  # teacher objectness/deltas at every student anchor
    teacher_rcn: Optional[tuple[Tensor, Tensor]] = None  # teacher logits/deltas of the student's RoIs


@dataclass
class LevelPair:
    """A student FPN level matched with a teacher level (names may differ: distill.level_map)."""

    student: str
    teacher: str
    student_channels: int
    teacher_channels: int


class BuildContext:
    """What a method's ``build`` may read: the two models, their configs (only for naming
    keys in messages) and their feature maps probed once on a zero image."""

    def __init__(self, cfg: DistillConfig, student: nn.Module, teacher: nn.Module,
                 student_cfg: Optional[ModelConfig], teacher_cfg: Optional[ModelConfig], own_size: bool) -> None:
        self.cfg, self.student, self.teacher = cfg, student, teacher
        self.student_cfg, self.teacher_cfg = student_cfg, teacher_cfg
        self.own_size = own_size  # the teacher runs at its own input size
        self.name = ""  # the METHODS key of the method being built (its config section distill.<name>)
        self._probe: Optional[tuple[OrderedDict, OrderedDict]] = None

    @property
    def level_map(self) -> dict[str, str]:
        return dict(self.cfg.level_map or {})

    def shapes(self) -> tuple["OrderedDict[str, tuple[int, ...]]", "OrderedDict[str, tuple[int, ...]]"]:
        """``level -> (C, H, W)`` of the student and the teacher on a PROBE_SIZE image."""
        if self._probe is None:
            self._probe = (probe_features(self.student), probe_features(self.teacher))
        return self._probe


def resolve_levels(method: str, levels: Optional[list[str]], ctx: BuildContext,
                   include_pool: bool = True) -> list[LevelPair]:
    """The (student, teacher) level pairs of ``distill.<method>.levels``.

    ``None``: every student level (without ``"pool"`` unless ``include_pool``). Each student
    level is matched with ``distill.level_map[level]`` (default: the same name). Refused with
    one line: a level missing on either side, or two matched maps of different strides (on
    the same probe image their sizes differ), with the teacher level of the same stride as
    the suggested fix."""
    f_s, f_t = ctx.shapes()
    mapping = ctx.level_map
    key = f"distill.{method}.levels"
    if levels is None:
        names = [k for k in f_s if include_pool or k != "pool"]
    else:
        names = [str(level) for level in levels]
    pairs = []
    for level in names:
        if level not in f_s:
            raise DetkdError(f"{key}: '{level}' is not a student feature map; available: {', '.join(f_s)}")
        t_level = mapping.get(level, level)
        size_s = f_s[level][1:]
        same_stride = [k for k, v in f_t.items() if v[1:] == size_s]
        hint = (f"; the teacher's map of the same stride is '{same_stride[0]}': set distill.level_map "
                f"{{'{level}': '{same_stride[0]}'}}") if same_stride else ""
        if t_level not in f_t:
            raise DetkdError(f"{key}: student level '{level}' is matched with teacher level '{t_level}', which is "
                             f"not a teacher feature map (available: {', '.join(f_t)}){hint}")
        size_t = f_t[t_level][1:]
        if size_s != size_t:
            raise DetkdError(
                f"{key}: student level '{level}' and teacher level '{t_level}' have different strides "
                f"({size_s[0]}x{size_s[1]} vs {size_t[0]}x{size_t[1]} on a {PROBE_SIZE}x{PROBE_SIZE} image){hint}")
        pairs.append(LevelPair(level, t_level, f_s[level][0], f_t[t_level][0]))
    if not pairs:
        raise DetkdError(f"{key}: no feature level to distill")
    return pairs


class DistillMethod(nn.Module):
    """Base of a method: set ``config`` (its section's dataclass), override ``build``,
    ``forward`` and, where needed, the rest."""

    config: type = type(None)  # the dataclass of its config section distill.<name>
    name = ""  # its METHODS key: set by the Distiller (BuildContext.name while it is built)
    needs_teacher_rpn = False
    needs_teacher_rcn = False
    needs_keys = False  # per-image keys for random draws (DistillRecord.keys; else left empty)

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

    def teacher_levels(self) -> list[str]:
        """Teacher FPN levels this method reads (the only ones cloned out of inference mode)."""
        return []

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
