r"""CrossKD (Wang et al., "CrossKD: Cross-Head Knowledge Distillation for Object Detection",
CVPR 2024; public code jbwang1997/CrossKD; spec docs/methods.md, section 4) for one-stage pairs
of one family (RetinaNet -> RetinaNet, FCOS -> FCOS)::

    per level and tower b (cls, reg): h_s = the student's tower output at layer i (before its
    activation; P_l for i = 0), h~ = align(A_b(h_s), h_t), y_x = teacher final conv(teacher
    tower layers i+1..L (ReLU(h~) if i > 0 else h~))
    L = lambda_cls L_cls_kd(z_x, z_t) + lambda_reg L_reg_kd(dec(d_x), dec(d_t))

with the quality-focal soft BCE and the teacher-score-weighted box loss of
:mod:`detkd.losses.crosskd`. The cross-head outputs are read on the student's anchors (the two
nets' anchors must coincide) and normalized by the student's own assignment. The gradient of the
KD terms reaches the student's tower layers 1..i, its FPN and backbone through the frozen teacher
layers; the student's layers > i and its final convs learn from the ground truth only.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from detkd.config.fields import option
from detkd.distill.methods.base import BuildContext, DistillMethod, DistillRecord
from detkd.distill.probe import anchor_layout
from detkd.errors import DetkdError
from detkd.losses.crosskd import crosskd_align, crosskd_cls_loss, crosskd_reg_loss
from detkd.utils import dist

FAMILIES = ("retinanet", "fcos")
TOWERS = ("cls", "reg")


@dataclass
class CrossKDConfig:
    """CrossKD, ``distill.crosskd``: the student's tower maps at ``layer`` continue through the
    frozen teacher's remaining head layers; those predictions are distilled towards the
    teacher's. Defaults by the student's family, the authors' configs: RetinaNet (below:
    crosskd_r50_retinanet_r101_fpn_2x_coco) layer 3, weights 1 / 1, 1 - GIoU; FCOS
    (crosskd_r50_fcos_r101-2x-ms_caffe_fpn_gn-head_2x_ms_coco) layer 2, weights 0.4 / 0.75,
    -log IoU, the normalizer averaged over processes."""

    layer: int = option(3, ge=0)  # i: the tower layer whose output enters the teacher's head (0: the FPN map)
    weight_cls: float = option(1.0, ge=0, weight=True)  # lambda_cls
    weight_reg: float = option(1.0, ge=0, weight=True)  # lambda_reg
    beta: float = option(1.0, ge=0)  # exponent of |q - p| in the classification term
    reg_loss: Literal["giou", "iou_log"] = "giou"  # ell: 1 - GIoU (RetinaNet) or -log IoU (FCOS)
    # Z: "authors" (RetinaNet: sum over images of max(1, positives); FCOS: the positives' centerness
    # targets, 1 without positives) or "torchvision" (as the student's own hard loss normalizes).
    normalizer: Literal["authors", "torchvision"] = "authors"
    sync_normalizer: bool = False  # average Z over processes (the authors' FCOS)


def _tower(head: nn.Module, tower: str) -> nn.Sequential:
    """A head's stacked tower (RetinaNet's and FCOS's heads both keep it in ``conv``)."""
    return (head.classification_head if tower == "cls" else head.regression_head).conv


Layer = tuple[list[nn.Module], nn.Module]  # (modules up to the pre-activation, the activation)


def _layers(tower: nn.Sequential, family: str) -> list[Layer]:
    """A tower's layers, each as (conv [+ norm], activation): RetinaNet's towers are
    ``Conv2dNormActivation`` blocks, FCOS's a flat (conv, GroupNorm, ReLU) list."""
    if family == "retinanet":
        return [(list(block)[:-1], block[-1]) for block in tower]
    modules = list(tower)
    return [(modules[k:k + 2], modules[k + 2]) for k in range(0, len(modules), 3)]


def _run(layers: list[Layer], x: Tensor, tap: int = 0) -> tuple[Tensor, Optional[Tensor]]:
    """``x`` through ``layers``; also layer ``tap``'s pre-activation (1-based; 0: none), cloned
    because the activation after it may be in place (RetinaNet's ``ReLU(inplace=True)``)."""
    h = None
    for k, (pre, act) in enumerate(layers, start=1):
        for module in pre:
            x = module(x)
        if k == tap:
            h = x.clone()
        x = act(x)
    return x, h


def _finals(head: nn.Module) -> dict[str, nn.Module]:
    return {"cls": head.classification_head.cls_logits, "reg": head.regression_head.bbox_reg}


def _rows(x: Tensor, columns: int) -> Tensor:
    """``[N, A * K, H, W]`` -> ``[N, H * W * A, K]``: the head's row order."""
    n, _, h, w = x.shape
    return x.view(n, -1, columns, h, w).permute(0, 3, 4, 1, 2).reshape(n, -1, columns)


def _anchor_layout(model: nn.Module) -> tuple:
    """(sizes, aspect ratios, anchors per location) of a one-stage model's anchor generator."""
    gen = model.anchor_generator
    return (*anchor_layout(gen), tuple(int(a) for a in gen.num_anchors_per_location()))


class CrossKDMethod(DistillMethod):
    """Per tower a 1x1 conv ``A_b`` from the student's to the teacher's width (only where the
    widths differ, shared by all levels); the teacher's head is read, never trained. Loss keys
    ``loss_<name>_cls`` and ``loss_<name>_reg``; stats ``raw_<name>_cls``/``_reg``, ``<name>_z``."""

    config = CrossKDConfig
    family_defaults = {"fcos": {"layer": 2, "weight_cls": 0.4, "weight_reg": 0.75, "reg_loss": "iou_log",
                                "sync_normalizer": True}}

    def __init__(self, cfg: CrossKDConfig, family: str, student: nn.Module, teacher: nn.Module,
                 widths: tuple[int, int], teacher_levels: list[str]) -> None:
        super().__init__()
        self.cfg, self.family, self.layer = cfg, family, int(cfg.layer)
        # Held outside the module tree: the student is the Distiller's, the teacher frozen and not saved here.
        self._student = {"model": student}
        self._teacher = {"model": teacher}
        self.t_levels = teacher_levels
        self.adapters = nn.ModuleDict()
        if widths[0] != widths[1]:
            for tower in TOWERS:
                self.adapters[tower] = nn.Conv2d(widths[0], widths[1], kernel_size=1)

    @classmethod
    def compares_anchors(cls, section: CrossKDConfig) -> bool:
        return True  # rows are the student's anchors: the teacher must see the student's batch

    @classmethod
    def check_families(cls, section: CrossKDConfig, student_family: str, teacher_family: str) -> None:
        if student_family in ("ssdlite", "ssd"):
            raise DetkdError(f"distill.crosskd: CrossKD needs a stacked head tower; {student_family} has one "
                             "depthwise block and a 1x1 predictor per map")
        if student_family not in FAMILIES:
            raise DetkdError(f"distill.crosskd: CrossKD distils one-stage heads (RetinaNet, FCOS); the student is a "
                             f"{student_family}")
        if teacher_family != student_family:
            raise DetkdError(f"distill.crosskd: CrossKD needs a teacher of the student's family (the teacher's head "
                             f"continues the student's tower): student {student_family}, teacher {teacher_family}")

    @classmethod
    def build(cls, section: CrossKDConfig, ctx: BuildContext) -> Optional["CrossKDMethod"]:
        if section.weight_cls == 0 and section.weight_reg == 0:
            return None
        cls.check_families(section, ctx.student_family, ctx.teacher_family)
        family, student, teacher = ctx.student_family, ctx.student, ctx.teacher
        if ctx.own_size:
            raise DetkdError("distill.crosskd compares the two heads anchor by anchor, so the teacher must see the "
                             "student's input: set distill.teacher_input: student (or auto)")
        n_s = student.head.classification_head.num_classes
        n_t = teacher.head.classification_head.num_classes
        if n_s != n_t:
            raise DetkdError(f"distill.crosskd: teacher and student class counts differ ({n_t} vs {n_s})")
        f_s, f_t = ctx.levels()
        strides_s = [v.stride for v in f_s.values()]
        strides_t = [v.stride for v in f_t.values()]
        if strides_s != strides_t:
            raise DetkdError(f"CrossKD: the two nets' feature levels differ (student strides {strides_s}, teacher "
                             f"{strides_t}); the cross head needs the same levels")
        a_s, a_t = _anchor_layout(student), _anchor_layout(teacher)
        if a_s[2] != a_t[2]:
            raise DetkdError(f"CrossKD: teacher and student anchors differ (A_t={a_t[2][0]}, A_s={a_s[2][0]} "
                             "per location)")
        if a_s[:2] != a_t[:2]:
            raise DetkdError(f"CrossKD: teacher and student anchors differ (sizes {a_t[0]} vs {a_s[0]}, ratios "
                             f"{a_t[1]} vs {a_s[1]}); align model.anchor_sizes/aspect_ratios")
        for tower in TOWERS:
            depth_s = len(_layers(_tower(student.head, tower), family))
            depth_t = len(_layers(_tower(teacher.head, tower), family))
            if section.layer > min(depth_s, depth_t):
                raise DetkdError(f"distill.crosskd.layer {section.layer} is beyond the {tower} tower (student "
                                 f"{depth_s} layers, teacher {depth_t})")
        widths = (next(iter(f_s.values())).channels, next(iter(f_t.values())).channels)
        return cls(section, family, student, teacher, widths, list(f_t))

    def terms(self) -> frozenset[str]:
        on = {"cls": self.cfg.weight_cls > 0, "reg": self.cfg.weight_reg > 0}
        return frozenset(f"{self.name}_{t}" for t, is_on in on.items() if is_on)

    def teacher_levels(self) -> list[str]:
        return list(self.t_levels)

    def student_taps(self) -> dict[str, nn.Module]:
        if self.layer == 0:
            return {}
        head = self._student["model"].head
        return {f"{self.name}.{t}": _layers(_tower(head, t), self.family)[self.layer - 1][0][-1] for t in TOWERS}

    # ------------------------------------------------------------------ forward

    def forward(self, rec: DistillRecord) -> dict[str, Tensor]:
        step, layer, family = rec.step, self.layer, self.family
        t_head = self._teacher["model"].head
        t_feats = [rec.teacher_features[k] for k in self.t_levels]
        layers = {t: _layers(_tower(t_head, t), family) for t in TOWERS}
        finals = _finals(t_head)
        h_t: dict[str, list[Tensor]] = {t: [] for t in TOWERS}
        y_t: dict[str, list[Tensor]] = {t: [] for t in TOWERS}
        with torch.no_grad():  # the teacher's own head: its layer-i maps and predictions
            for x in t_feats:
                for t in TOWERS:
                    out, h = _run(layers[t], x, tap=layer)
                    h_t[t].append(x if layer == 0 else h)
                    y_t[t].append(self._final(finals[t], out, t))
        cross = {}
        for t in TOWERS:
            h_s = list(step.features.values()) if layer == 0 else rec.taps[f"{self.name}.{t}"]
            outs = []
            for h, ht in zip(h_s, h_t[t]):
                a = self.adapters[t](h) if t in self.adapters else h
                g = crosskd_align(a, ht)
                g = F.relu(g) if layer > 0 else g
                outs.append(self._final(finals[t], _run(layers[t][layer:], g)[0], t))
            cross[t] = outs
        classes = t_head.classification_head.num_classes
        z_x = torch.cat([_rows(o, classes) for o in cross["cls"]], dim=1)
        z_t = torch.cat([_rows(o, classes) for o in y_t["cls"]], dim=1)
        d_x = torch.cat([_rows(o, 4) for o in cross["reg"]], dim=1)
        d_t = torch.cat([_rows(o, 4) for o in y_t["reg"]], dim=1)
        return self._losses(step, z_x, z_t, d_x, d_t)

    def _final(self, conv: nn.Module, x: Tensor, tower: str) -> Tensor:
        out = conv(x)
        return F.relu(out) if tower == "reg" and self.family == "fcos" else out  # torchvision FCOS: ReLU'd ltrb

    def _losses(self, step, z_x: Tensor, z_t: Tensor, d_x: Tensor, d_t: Tensor) -> dict[str, Tensor]:
        cfg, classes = self.cfg, z_x.shape[2]
        mask, scale, z = self._normalizer(step, torch.float64 if z_x.dtype == torch.float64 else torch.float32)
        weight = (mask * scale).reshape(-1)
        losses, self.stats = {}, {f"{self.name}_z": z.detach()}
        if cfg.weight_cls > 0:
            value = crosskd_cls_loss(z_x.reshape(-1, classes), z_t.reshape(-1, classes), weight, z, cfg.beta)
            losses[f"loss_{self.name}_cls"] = value * cfg.weight_cls
            self.stats[f"raw_{self.name}_cls"] = value.detach()
        if cfg.weight_reg > 0:
            boxes_x, boxes_t = self._decode(d_x, step.anchors), self._decode(d_t, step.anchors)
            score = torch.sigmoid(z_t.detach()).max(dim=2).values.reshape(-1)
            value = crosskd_reg_loss(boxes_x.reshape(-1, 4), boxes_t.reshape(-1, 4), weight * score, z, cfg.reg_loss)
            losses[f"loss_{self.name}_reg"] = value * cfg.weight_reg
            self.stats[f"raw_{self.name}_reg"] = value.detach()
        return losses

    def _decode(self, deltas: Tensor, anchors: list[Tensor]) -> Tensor:
        coder = self._student["model"].box_coder
        if self.family == "fcos":
            return coder.decode(deltas, torch.stack(anchors))
        return torch.stack([coder.decode_single(d, a) for d, a in zip(deltas, anchors)])

    def _normalizer(self, step, dtype: torch.dtype) -> tuple[Tensor, Tensor, Tensor]:
        """(m [N, R], per-row scale [N, R], Z) from the student's own assignment."""
        matched = torch.stack(step.matched_idxs)
        positives = matched >= 0
        ones = torch.ones_like(matched, dtype=dtype)
        if self.family == "retinanet":
            mask = (matched != -2).to(dtype)  # anchors between the IoU thresholds: ignored
            per_image = positives.sum(dim=1).clamp(min=1).to(dtype)
            if self.cfg.normalizer == "torchvision":  # per image by max(1, P_n), then the mean over images
                return mask, ones / (per_image[:, None] * matched.shape[0]), ones.new_ones(())
            z = per_image.sum()
        else:
            mask = ones
            if self.cfg.normalizer == "torchvision":
                z = positives.sum().clamp(min=1).to(dtype)
            else:
                z = self._centerness(step, matched, positives).to(dtype)
        if self.cfg.sync_normalizer and dist.get_world_size() > 1:
            z = z.detach().clone()
            torch.distributed.all_reduce(z)
            z = z / dist.get_world_size()
        return mask, ones, z

    def _centerness(self, step, matched: Tensor, positives: Tensor) -> Tensor:
        """Sum of FCOS's centerness targets sqrt(min(l,r)/max(l,r) * min(t,b)/max(t,b)) over the
        positive points (1 when there are none: the authors' 1e-6 floor would scale the loss by 1e6)."""
        if not bool(positives.any()):
            return torch.ones((), device=matched.device)  # the caller casts it
        boxes = torch.stack([t["boxes"][m.clamp(min=0)] if t["boxes"].numel() else
                             t["boxes"].new_zeros((m.numel(), 4)) for t, m in zip(step.targets, matched)])
        ltrb = self._student["model"].box_coder.encode(torch.stack(step.anchors), boxes)[positives]
        lr, tb = ltrb[:, [0, 2]], ltrb[:, [1, 3]]
        ctr = torch.sqrt((lr.min(dim=1).values / lr.max(dim=1).values) * (tb.min(dim=1).values / tb.max(dim=1).values))
        return ctr.sum()
