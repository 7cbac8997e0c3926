"""Prediction-level distillation: the student learns from the teacher's detections, which every
detector has, whatever its family (the method specification, section 5; Zoph et al., NeurIPS 2020;
Liu et al., "Unbiased Teacher", ICLR 2021; Li et al., GFL, NeurIPS 2020).

Per batch the teacher runs once (its own post-processing, score threshold lowered to
``score_thresh`` = tau_lo, at most ``max_detections`` per image; background-label and degenerate
boxes dropped), its detections D_i are mapped into the student's frame, and the student's own
matcher assigns its rows to them (RetinaNet: IoU; FCOS: centre sampling and scale ranges; SSD:
IoU with forced best matches). With j(r) the detection assigned to row r (none: background)::

    sigmoid heads: L_cls = (1/N) sum_{r,c} BCE(p, q) |p - q|^beta,  N = max(1, sum q),
                   q[r, c] = s_j(r) on c_j(r), else 0
    softmax heads: L_cls = (1/R) sum_r CE(z[r], q[r]),
                   q[r] = s_j(r) on c_j(r), 1 - s_j(r) on the background
    L_box = sum_{r assigned} s_j(r) ell_family(box_s[r], b_j(r)) / max(sum s_j(r), 1)
    L     = L_student + weight_cls L_cls + weight_reg L_box

The teacher's scores and boxes are constants; nothing is detached on the student side.
Students: the one-stage families (a family with ``Family.dense``: its rows and matcher) and
Faster R-CNN (its RoI head's sampled proposals, matched at IoU 0.5, softmax classifier and
smooth-L1 deltas of the assigned class; its RPN is not distilled). Teachers: every family.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.ops import box_iou
from torchvision.models.detection.image_list import ImageList

from detkd.config.fields import option
from detkd.distill.methods.base import BuildContext, DistillMethod, DistillRecord, scale_boxes
from detkd.errors import DetkdError
from detkd.losses.predictions import score_weighted_box_loss, soft_sigmoid_loss, soft_softmax_loss
from detkd.modeling.families import FAMILIES, family_of_model, postprocess_settings


MIN_BOX = 1e-2  # pixels: torchvision's remove_small_boxes threshold in its RoI heads


@dataclass
class PredictionsConfig:
    """``distill.predictions``: the teacher's detections as soft targets of the student's own rows."""

    weight_cls: float = option(1.0, ge=0, weight=True)  # lambda_cls
    weight_reg: float = option(1.0, ge=0, weight=True)  # lambda_box
    score_thresh: float = option(0.3, ge=0, le=1)  # tau_lo: the teacher's detections kept
    max_detections: int = option(100, gt=0)  # per image
    beta: float = option(2.0, ge=0)  # the quality-focal exponent of sigmoid heads


def _usable(boxes: Tensor, labels: Tensor, scores: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Leave out a one-stage teacher's background-channel detections (they mean nothing) and
    boxes thinner than MIN_BOX (FCOS at background points): those have no encoding (log of a width)."""
    keep = (labels > 0) & ((boxes[:, 2:] - boxes[:, :2]) >= MIN_BOX).all(dim=1)
    return boxes[keep], labels[keep], scores[keep]


def _students() -> list[str]:
    return [name for name, family in FAMILIES.items() if family.dense is not None or name == "faster_rcnn"]


class PredictionsMethod(DistillMethod):
    """Soft classification and score-weighted box targets from the teacher's detections."""

    config = PredictionsConfig
    offline = True  # teacher.detections: a file of any detector's detections

    def __init__(self, section: PredictionsConfig, student: nn.Module) -> None:
        super().__init__()
        self.section = section
        self._student = {"model": student}  # a dict: not a submodule (its weights are not the method's)

    @classmethod
    def check_families(cls, section: Any, student_family: str, teacher_family: Optional[str]) -> None:
        if FAMILIES[student_family].dense is None and student_family != "faster_rcnn":
            raise DetkdError(f"distill.predictions: a {student_family} student is not supported yet "
                             f"(students: {', '.join(_students())}; the teacher may be any family)")

    @classmethod
    def build(cls, section: PredictionsConfig, ctx: BuildContext) -> Optional["PredictionsMethod"]:
        if section.weight_cls == 0 and section.weight_reg == 0:
            return None
        cls.check_families(section, ctx.student_family, ctx.teacher_family)
        return cls(section, ctx.student)

    def terms(self) -> frozenset[str]:
        weights = {"predictions_cls": self.section.weight_cls, "predictions_reg": self.section.weight_reg}
        return frozenset(term for term, w in weights.items() if w > 0)

    def teacher_step(self, rec: DistillRecord, teacher: nn.Module,
                     features: "OrderedDict[str, Tensor]") -> list[tuple[Tensor, Tensor, Tensor]]:
        """The teacher's detections per image, (boxes in the student's frame, labels, scores)."""
        if teacher is None:
            return self._offline(rec)
        first = next(iter(features.values()))
        batch = first.new_zeros(()).expand(len(rec.image_sizes), 3, *rec.teacher_batch_shape)
        with postprocess_settings(teacher, score_thresh=self.section.score_thresh,
                                  detections_per_img=self.section.max_detections):
            found = family_of_model(teacher).detect(teacher, ImageList(batch, rec.teacher_image_sizes), features)
        boxes = scale_boxes([d["boxes"] for d in found], rec.teacher_image_sizes, rec.image_sizes)
        return [_usable(b, d["labels"], d["scores"]) for b, d in zip(boxes, found)]

    def _offline(self, rec: DistillRecord) -> list[tuple[Tensor, Tensor, Tensor]]:
        """The detections the data carried (``teacher.detections``, augmented with the image),
        from the image's frame into the student's, kept as an online teacher's would be: score
        at least ``score_thresh``, the ``max_detections`` best."""
        if not all("teacher_scores" in t for t in rec.targets):
            raise DetkdError("distill.predictions: the batch carries no teacher detections (teacher.detections "
                             "is read by the training set only)")
        boxes = scale_boxes([t["teacher_boxes"] for t in rec.targets], rec.input_sizes, rec.image_sizes)
        out = []
        for b, t in zip(boxes, rec.targets):
            scores, labels = t["teacher_scores"], t["teacher_labels"]
            order = torch.argsort(scores, descending=True, stable=True)[: self.section.max_detections]
            order = order[scores[order] >= self.section.score_thresh]
            out.append(_usable(b[order], labels[order], scores[order]))
        return out

    def forward(self, rec: DistillRecord) -> dict[str, Tensor]:
        detections = rec.teacher_outputs[self.name]
        student = self._student["model"]
        if family_of_model(student).dense is None:
            cls_loss, box_loss = _roi_head_terms(student, rec.step.rcn, detections)
        else:
            cls_loss, box_loss = self._dense_terms(student, rec.step, detections)
        per_image = float(sum(len(d[1]) for d in detections)) / len(detections)
        self.stats = {"raw_predictions_cls": cls_loss.detach(), "raw_predictions_reg": box_loss.detach(),
                      "predictions_teacher_boxes": torch.tensor(per_image)}
        out = {}
        if self.section.weight_cls > 0:
            out["loss_predictions_cls"] = self.section.weight_cls * cls_loss
        if self.section.weight_reg > 0:
            out["loss_predictions_reg"] = self.section.weight_reg * box_loss
        return out

    def _dense_terms(self, student: nn.Module, step: Any, detections: list) -> tuple[Tensor, Tensor]:
        """A one-stage student: its rows assigned by its own matcher (``Family.dense``)."""
        rows = family_of_model(student).dense
        targets = [{"boxes": b, "labels": lab} for b, lab, _ in detections]
        matched = rows.match(student, step.anchors, targets, step.grids)
        logits = step.head_outputs["cls_logits"]
        regression = step.head_outputs["bbox_regression"]
        none = -1 if rows.sigmoid else 0
        classes, scores, box_rows, box_scores = [], [], [], []
        for i, ((boxes, labels, s), idx) in enumerate(zip(detections, matched)):
            assigned = idx >= 0
            j = idx.clamp(min=0)
            c, q = _row_targets(idx, labels, s, none, logits.dtype)
            classes.append(c)
            scores.append(q)
            if assigned.any():
                rows_i = torch.nonzero(assigned).flatten()
                box_rows.append(rows.row_box_loss(student, step.anchors[i][rows_i], regression[i][rows_i],
                                                  boxes[j[rows_i]]))
                box_scores.append(s[j[rows_i]])
        z, c, q = logits.flatten(0, 1), torch.cat(classes), torch.cat(scores).to(logits.dtype)
        cls_loss = (soft_sigmoid_loss(z, c, q, self.section.beta) if rows.sigmoid else soft_softmax_loss(z, c, q))
        box_loss = (score_weighted_box_loss(torch.cat(box_rows), torch.cat(box_scores)) if box_rows
                    else regression.sum() * 0.0)
        return cls_loss, box_loss


def _row_targets(idx: Tensor, labels: Tensor, scores: Tensor, none: int,
                 dtype: torch.dtype) -> tuple[Tensor, Tensor]:
    """Per row, from the detection index its matcher assigned (< 0: none): that detection's class
    and score, or ``none`` (-1 sigmoid heads, 0 the softmax background) and 0."""
    if not len(labels):
        return torch.full_like(idx, none), torch.zeros(idx.shape, dtype=dtype, device=idx.device)
    assigned, j = idx >= 0, idx.clamp(min=0)
    return (torch.where(assigned, labels[j], torch.full_like(idx, none)),
            torch.where(assigned, scores[j], torch.zeros_like(scores[j])))


def _roi_head_terms(student: nn.Module, rcn: dict, detections: list) -> tuple[Tensor, Tensor]:
    """A Faster R-CNN student: the RoI head's sampled proposals are the rows, assigned to the
    teacher's detections by the head's own matcher (IoU >= 0.5, no low-quality matches); the
    softmax classifier gets ``q = s`` on the class and ``1 - s`` on the background, the assigned
    class's box deltas a smooth-L1 (beta 1/9, summed over the 4 deltas, as ``fastrcnn_loss``) to
    the encoded detection box, score-weighted. (The RPN's anchors are not distilled.)"""
    heads = student.roi_heads
    logits, regression = rcn["class_logits"], rcn["box_regression"]
    classes, scores, box_rows, box_scores, start = [], [], [], [], 0
    for proposals, (boxes, labels, s) in zip(rcn["proposals"], detections):
        n = len(proposals)
        if len(labels):
            idx = heads.proposal_matcher(box_iou(boxes, proposals))
        else:
            idx = torch.full((n,), -1, dtype=torch.int64, device=logits.device)
        assigned = idx >= 0
        j = idx.clamp(min=0)
        c, q = _row_targets(idx, labels, s, 0, logits.dtype)
        classes.append(c)
        scores.append(q)
        if assigned.any():
            r = torch.nonzero(assigned).flatten()
            target = heads.box_coder.encode_single(boxes[j[r]], proposals[r])
            cls = labels[j[r]]
            pred = regression[start + r].reshape(len(r), -1, 4)[torch.arange(len(r), device=r.device), cls]
            box_rows.append(F.smooth_l1_loss(pred, target.to(pred.dtype), beta=1 / 9, reduction="none").sum(dim=1))
            box_scores.append(s[j[r]])
        start += n
    q = torch.cat(scores).to(logits.dtype)
    cls_loss = soft_softmax_loss(logits, torch.cat(classes), q)
    box_loss = (score_weighted_box_loss(torch.cat(box_rows), torch.cat(box_scores)) if box_rows
                else regression.sum() * 0.0)
    return cls_loss, box_loss
