"""Training health: the loss terms of every step watched for the failures that otherwise show only
after a run (``train.health: warn | stop | off``, default warn; detection and classification alike).

Over each window of ``train.health_window`` steps (default 50), per term:

* **stuck**: the term is a non-zero constant (spread ``max - min`` at most 1e-6 of its mean): no
  gradient reaches what it measures (torchvision FCOS's ReLU'd box outputs pushed to 0 give a GIoU
  loss of exactly 1; a frozen or disconnected module).
* **zero**: the term is exactly 0 on every step: a box loss without any positive sample (anchor sizes
  or FCOS scale ranges that match no box), a distillation term that matches nothing.
* **exploding**: the term's median over the window is 1000 times its median over the first window.
* **no_gradient**: a module's own parameters got a gradient of exactly 0 on every step
  (:class:`GradientWatch`, detection runs): a dead output behind it, or a disconnected module.

Before the first step of a distillation run, the teacher and the student see the first val batch
(:func:`teacher_problems`): a teacher that finds almost none of its boxes, or whose detections are
the student's own, is reported too (check ``teacher`` / ``teacher_is_student``).

The student's anchors are checked against the training boxes first as well (:func:`anchor_fit`,
check ``anchor_fit``).

Each (check, term) is reported once, as one log line that names the term and says what to try,
and a ``{"type": "health", ...}`` record in ``metrics.jsonl``; ``stop`` ends the run with that line.
The cost is one list of floats per step (the terms are already on the host for the non-finite check)
and a few comparisons per term and window.
"""

from __future__ import annotations

import logging
import statistics
from collections import deque
from typing import Any, Mapping

import torch

from detkd.errors import DetkdError
from detkd.modeling.families import family_of_model
from detkd.modeling.families.base import feature_dict
from detkd.utils.logger import MetricsWriter

__all__ = ["GradientWatch", "HealthMonitor", "anchor_fit", "anchor_problems", "report", "teacher_problems", "window_problems"]

STUCK_SPREAD = 1e-6  # relative: float noise of a live term is far above it
EXPLODE_FACTOR = 1e3

_BOX_WORDS = ("box", "bbox", "reg")


def _zero_hint(term: str) -> str:
    if "bound" in term:  # Chen et al.'s teacher-bounded regression
        return ("the teacher bound never activates: the student already regresses better than the teacher "
                "on every positive")
    if any(w in term for w in _BOX_WORDS):
        return ("no anchor or point matched a ground-truth box: check the anchor sizes (model.anchor_sizes), "
                "FCOS's scale ranges against your box sizes, and model.min_size")
    return "it matches nothing: for a distillation term, check that the teacher checkpoint is the trained one"


GRAD_PREFIX = "grad "  # a term "grad <module>": the gradient norm of a module's own parameters this step


class GradientWatch:
    """Per module with trainable parameters of its own: the norm of their gradients after the
    step's backward (one ``torch._foreach_norm`` over all parameters), as health terms
    ``"grad <module>"``: exactly 0 over a window is a dead output behind it (torchvision FCOS's
    ReLU'd box conv), a disconnected module, or parameters the loss never reaches."""

    def __init__(self, model: torch.nn.Module) -> None:
        groups: dict[str, list] = {}
        for name, p in model.named_parameters():
            if p.requires_grad:
                groups.setdefault(name.rpartition(".")[0] or name, []).append(p)
        self.names = [GRAD_PREFIX + n for n in groups]
        self.params = [p for ps in groups.values() for p in ps]
        self.index = torch.tensor([i for i, ps in enumerate(groups.values()) for _ in ps])

    def norms(self) -> dict[str, torch.Tensor]:
        if not self.params:
            return {}
        grads = [p.grad if p.grad is not None else torch.zeros((), device=p.device) for p in self.params]
        per_param = torch.stack(torch._foreach_norm(grads)).float()
        per_group = torch.zeros(len(self.names), device=per_param.device).index_add_(
            0, self.index.to(per_param.device), per_param)
        return dict(zip(self.names, per_group))


def window_problems(term: str, values: list[float], first_median: float | None) -> list[tuple[str, str]]:
    """``(check, message)`` of one term over one full window of finite values (a gradient term,
    ``"grad <module>"``: only whether it stayed 0)."""
    low, high = min(values), max(values)
    mean = sum(values) / len(values)
    if term.startswith(GRAD_PREFIX):
        module = term[len(GRAD_PREFIX):]
        return [("no_gradient", f"module '{module}' has had no gradient for {len(values)} iterations: a dead ReLU "
                                "output behind it (torchvision FCOS's box branch: try model.fcos.box_output: exp), "
                                "a disconnected module, or parameters no loss term reaches")] if high == 0.0 else []
    found = []
    if high == 0.0 and low == 0.0:
        found.append(("zero", f"loss term '{term}' has been 0 for {len(values)} iterations: {_zero_hint(term)}"))
    elif high - low <= STUCK_SPREAD * abs(mean):
        found.append(("stuck", f"loss term '{term}' has stayed at {mean:.6g} for {len(values)} iterations: no "
                               "gradient reaches what it measures (a dead ReLU output such as torchvision FCOS's "
                               "box branch, a frozen or disconnected module); try another init or a lower "
                               "learning rate"))
    if first_median is not None and first_median > 0:
        median = statistics.median(values)
        if median > EXPLODE_FACTOR * first_median:
            found.append(("exploding", f"loss term '{term}' grew from {first_median:.4g} to {median:.4g} (median "
                                       f"over {len(values)} iterations): lower train.optimizer.lr or set "
                                       "train.clip_grad_norm"))
    return found


class HealthMonitor:
    """Watches the loss terms step by step (see the module docs)."""

    def __init__(self, mode: str, window: int, logger: logging.Logger, metrics: MetricsWriter) -> None:
        self.mode, self.window, self.logger, self.metrics = mode, window, logger, metrics
        self.values: dict[str, deque] = {}
        self.first: dict[str, float] = {}
        self.reported: set[tuple[str, str]] = set()

    def observe(self, iteration: int, terms: Mapping[str, Any]) -> None:
        """Record one step's terms (tensors or floats); check each full window."""
        if self.mode == "off" or not terms:
            return
        names = list(terms)
        raw = list(terms.values())
        if any(isinstance(v, torch.Tensor) for v in raw):
            raw = torch.stack([torch.as_tensor(v).detach().float().reshape(()).cpu() for v in raw]).tolist()
        for name, value in zip(names, raw):
            window = self.values.setdefault(name, deque(maxlen=self.window))
            window.append(float(value))
            if len(window) == self.window and iteration % self.window == 0:
                self._check(iteration, name, list(window))

    def _check(self, iteration: int, name: str, values: list[float]) -> None:
        if not all(v == v and abs(v) != float("inf") for v in values):
            return  # non-finite steps are the non-finite guard's
        for check, message in window_problems(name, values, self.first.get(name)):
            if (check, name) in self.reported:
                continue
            self.reported.add((check, name))
            report(self.mode, self.logger, self.metrics, iteration, check, name, message)
        self.first.setdefault(name, statistics.median(values))


def report(mode: str, logger: logging.Logger, metrics: MetricsWriter, iteration: int, check: str, term: str,
           message: str) -> None:
    """One health event: a ``{"type": "health"}`` record in ``metrics.jsonl`` and a warning line, or
    (``mode`` stop) the run's end with that line."""
    metrics.write({"type": "health", "iter": iteration, "check": check, "term": term, "message": message})
    if mode == "stop":
        raise DetkdError(f"train.health: stop: {message}")
    logger.warning("health: %s", message)


TEACHER_RECALL = 0.05  # below it the teacher finds (almost) nothing of what the student is to learn
TEACHER_SCORE = 0.05  # a detection counts from this score (torchvision's default box_score_thresh)


def _recall50(outputs: list[dict], targets: list[dict]) -> tuple[int, int]:
    """(ground-truth boxes found by a same-label detection at IoU >= 0.5 and score >= TEACHER_SCORE, all)."""
    from torchvision.ops import box_iou

    found = total = 0
    for out, t in zip(outputs, targets):
        total += len(t["labels"])
        keep = out["scores"] >= TEACHER_SCORE
        boxes, labels = out["boxes"][keep], out["labels"][keep]
        if len(t["labels"]) and len(labels):
            hit = (box_iou(t["boxes"].to(boxes.dtype), boxes) >= 0.5) & (t["labels"][:, None] == labels[None, :])
            found += int(hit.any(dim=1).sum())
    return found, total


def teacher_problems(teacher_out: list[dict], student_out: list[dict],
                     targets: list[dict]) -> list[tuple[str, str]]:
    """``(check, message)`` from the teacher's and the (untrained) student's eval outputs on the
    first val batch: a teacher that finds almost none of its boxes (random or wrong weights, another
    label map, another normalization), or one whose outputs are the student's own (the teacher is
    the student)."""
    found, total = _recall50(teacher_out, targets)
    problems = []
    if total and found < TEACHER_RECALL * total:
        problems.append(("teacher", f"the teacher finds {found} of the {total} boxes of the first val batch (same "
                                    "class, IoU >= 0.5, score >= 0.05): a random or wrong teacher.checkpoint, "
                                    "another label map or input normalization? Evaluate it with detkd eval"))
    same = len(teacher_out) == len(student_out) and all(
        t["boxes"].shape == s["boxes"].shape and torch.equal(t["boxes"], s["boxes"])
        and torch.equal(t["scores"], s["scores"]) for t, s in zip(teacher_out, student_out))
    if same and any(len(t["boxes"]) for t in teacher_out):
        problems.append(("teacher_is_student", "the teacher's detections on the first val batch are the student's "
                                               "own: teacher.checkpoint is the student's starting weights?"))
    return problems


ANCHOR_FIT = 0.3  # median best IoU of a box with the anchors below which the anchors do not fit the boxes


@torch.inference_mode()
def anchor_fit(model: torch.nn.Module, boxes_by_size: list[tuple[int, int, torch.Tensor]]) -> float | None:
    """The median over ground-truth boxes of their best IoU with the anchors of an anchor-based
    detector (Faster R-CNN's RPN, RetinaNet, SSD; None for FCOS, whose points are not anchors),
    each image's boxes scaled as the model's transform scales it (ultralytics' check_anchors asks
    the same question of YOLO's anchors). ``boxes_by_size``: (width, height, xyxy boxes) per image."""
    from torchvision.ops import box_iou

    generator = getattr(getattr(model, "rpn", model), "anchor_generator", None)
    if generator is None or family_of_model(model).name == "fcos" or not boxes_by_size:
        return None
    was_training = model.training
    model.eval()
    best, anchors_of = [], {}
    try:
        for width, height, boxes in boxes_by_size:
            if not len(boxes):
                continue
            if (width, height) not in anchors_of:
                image_list, _ = model.transform([torch.zeros(3, height, width)])
                maps = list(feature_dict(model.backbone(image_list.tensors)).values())
                size = image_list.image_sizes[0]
                anchors_of[(width, height)] = (generator(image_list, maps)[0], size[0] / height, size[1] / width)
            anchors, sy, sx = anchors_of[(width, height)]
            scaled = boxes.to(anchors.dtype) * torch.tensor([sx, sy, sx, sy], dtype=anchors.dtype)
            best.append(box_iou(scaled, anchors).max(dim=1).values)
    finally:
        model.train(was_training)
    return float(torch.cat(best).median()) if best else None


def anchor_problems(fit: float | None) -> list[tuple[str, str]]:
    """``(check, message)`` when the anchors fit the training boxes poorly (:func:`anchor_fit`)."""
    if fit is None or fit >= ANCHOR_FIT:
        return []
    return [("anchor_fit", f"the anchors fit the training boxes poorly: a box's best anchor overlaps it by IoU "
                           f"{fit:.2f} (median; the matcher wants 0.5 and more): set model.anchor_sizes (and "
                           "model.aspect_ratios) to your boxes' sizes at model.min_size")]
