"""Prediction-level distillation (distill.predictions, the method specification's section 5) on real
torchvision models at toy sizes: each family's detections from its own maps equal its eval forward;
the soft terms equal an independent float64 computation (teacher eval forward, the student's anchors,
IoU matching and the GIoU box loss written out by hand); weight 0 is the student's own loss; every
one-stage student learns from teachers of other families with the teacher run once per batch."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest
import torch

from detkd.config.schema import DistillConfig
from detkd.distill import Distiller
from detkd.distill.methods.predictions import PredictionsConfig
from detkd.errors import DetkdError
from detkd.modeling.families import FAMILIES, family_of_model
from detkd.recipe import config_from_dict
from test_distill_families import batch, model
from test_distiller import count_calls
from test_losses_predictions import ref_sigmoid

pytestmark = pytest.mark.usefixtures("one_thread")

EVERY_DETECTION = PredictionsConfig(score_thresh=0.0, max_detections=20)  # random teachers score low


def distiller(student, teacher, section=EVERY_DETECTION):
    d = Distiller(student, teacher, DistillConfig(methods={"predictions": section}))
    return d.train()


@pytest.mark.parametrize("arch", ["faster_rcnn", "retinanet", "fcos", "ssdlite"])
def test_detect_from_the_maps_is_the_eval_forward(arch):
    m = model(arch).eval()
    family = FAMILIES[family_of_model(m).name]
    family.postprocessor(m).score_thresh = 0.0  # random weights score low
    images, _ = batch()
    with torch.no_grad():
        want = m(images)
        image_list, _ = m.transform(images)
        found = family.detect(m, image_list, m.backbone(image_list.tensors))
        got = m.transform.postprocess(found, image_list.image_sizes, [tuple(i.shape[-2:]) for i in images])
    for w, g in zip(want, got):
        assert len(w["boxes"]) > 0
        assert torch.equal(w["labels"], g["labels"]) and torch.allclose(w["boxes"], g["boxes"])
        assert torch.allclose(w["scores"], g["scores"])


def _decode(delta, anchor):
    """torchvision BoxCoder(1, 1, 1, 1).decode_single for one row, written out."""
    w, h = anchor[2] - anchor[0], anchor[3] - anchor[1]
    cx, cy = anchor[0] + 0.5 * w, anchor[1] + 0.5 * h
    clip = math.log(1000.0 / 16)
    dw, dh = min(delta[2], clip), min(delta[3], clip)
    px, py, pw, ph = delta[0] * w + cx, delta[1] * h + cy, math.exp(dw) * w, math.exp(dh) * h
    return [px - 0.5 * pw, py - 0.5 * ph, px + 0.5 * pw, py + 0.5 * ph]


def _giou_loss(a, b, eps=1e-7):
    inter = max(0.0, min(a[2], b[2]) - max(a[0], b[0])) * max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    iou = inter / (union + eps)
    hull = (max(a[2], b[2]) - min(a[0], b[0])) * (max(a[3], b[3]) - min(a[1], b[1]))
    return 1.0 - (iou - (hull - union) / (hull + eps))


def test_soft_terms_equal_an_independent_float64_computation():
    student, teacher = model("retinanet", 0).double(), model("fcos", 1).double()  # RetinaNet v2: GIoU boxes
    images, targets = batch()
    images = [i.double() for i in images]
    targets = [{**t, "boxes": t["boxes"].double()} for t in targets]
    losses = distiller(student, teacher)(images, targets)
    # The teacher's eval forward, written out from torchvision's calls (both nets see 128 px).
    teacher.eval()
    teacher.score_thresh, teacher.detections_per_img = 0.0, 20
    with torch.no_grad():
        t_list, _ = teacher.transform(images)
        t_maps = list(teacher.backbone(t_list.tensors).values())
        t_head, t_anchors = teacher.head(t_maps), teacher.anchor_generator(t_list, t_maps)
        n = [m.size(2) * m.size(3) for m in t_maps]  # FCOS: one point per location
        dets = teacher.postprocess_detections({k: list(v.split(n, 1)) for k, v in t_head.items()},
                                              [list(a.split(n)) for a in t_anchors], t_list.image_sizes)
        image_list, _ = student.transform(images, [dict(t) for t in targets])
        maps = list(student.backbone(image_list.tensors).values())
        head = student.head(maps)
        anchors = student.anchor_generator(image_list, maps)
    assert t_list.image_sizes == image_list.image_sizes
    z, c, q, box_terms = [], [], [], []
    for i, d in enumerate(dets):
        wh = d["boxes"][:, 2:] - d["boxes"][:, :2]
        keep = (d["labels"] > 0) & (wh >= 1e-2).all(dim=1)  # background channel, degenerate boxes
        boxes, labels, scores = d["boxes"][keep], d["labels"][keep], d["scores"][keep]
        matched = student.proposal_matcher(_iou(boxes, anchors[i]))
        for r in range(len(matched)):
            j = int(matched[r])
            z.append(head["cls_logits"][i, r].tolist())
            c.append(int(labels[j]) if j >= 0 else -1)
            q.append(float(scores[j]) if j >= 0 else 0.0)
            if j >= 0:
                pred = _decode(head["bbox_regression"][i, r].tolist(), anchors[i][r].tolist())
                box_terms.append((float(scores[j]), _giou_loss(pred, boxes[j].tolist())))
    assert box_terms, "the toy teacher's detections must match some anchors"
    want_cls = ref_sigmoid(z, c, q)
    want_box = sum(s * ell for s, ell in box_terms) / max(1.0, sum(s for s, _ in box_terms))
    assert float(losses["loss_predictions_cls"]) == pytest.approx(want_cls, rel=1e-9)
    assert float(losses["loss_predictions_reg"]) == pytest.approx(want_box, rel=1e-9)


def _iou(a, b):
    from torchvision.ops import box_iou

    return box_iou(a, b)


def test_zero_weights_are_the_students_own_loss():
    student, teacher = model("fcos", 0), model("retinanet", 1)
    images, targets = batch()
    section = PredictionsConfig(weight_cls=0.0, weight_reg=0.0)
    ours = distiller(student, teacher, section)(images, targets)
    torch.manual_seed(0)
    own = FAMILIES["fcos"].train_step(student, images, [dict(t) for t in targets]).losses
    assert list(ours) == list(own) and all(torch.equal(ours[k], own[k]) for k in own)


@pytest.mark.parametrize("student_arch", ["retinanet", "fcos", "ssdlite", "ssd"])
@pytest.mark.parametrize("teacher_arch", ["faster_rcnn", "fcos"])
def test_every_one_stage_student_learns_from_other_families_with_one_teacher_run(student_arch, teacher_arch):
    student, teacher = model(student_arch, 0), model(teacher_arch, 1)
    if teacher_arch == "faster_rcnn":
        teacher.roi_heads.score_thresh = 0.0
    d = distiller(student, teacher)
    runs = count_calls(teacher.backbone)
    images, targets = batch(with_empty=True)
    losses = d(images, targets)
    assert len(runs) == 1
    assert {"loss_predictions_cls", "loss_predictions_reg"} <= set(losses)
    assert all(torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()
    head = student.head.classification_head
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in head.parameters())
    assert all(p.grad is None for p in teacher.parameters())
    assert d.last_stats["predictions_teacher_boxes"] > 0


def test_a_teacher_without_detections_gives_a_zero_box_term_and_background_targets():
    student, teacher = model("retinanet", 0), model("fcos", 1)
    d = distiller(student, teacher, replace(EVERY_DETECTION, score_thresh=1.0))  # nothing scores above 1
    losses = d(*batch())
    assert float(losses["loss_predictions_reg"].detach()) == 0.0 and losses["loss_predictions_reg"].requires_grad
    assert float(losses["loss_predictions_cls"].detach()) > 0 and d.last_stats["predictions_teacher_boxes"] == 0


def _iou_of(a, b):
    inter = max(0.0, min(a[2], b[2]) - max(a[0], b[0])) * max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


def test_a_faster_rcnn_student_equals_an_independent_float64_computation(monkeypatch):
    """The RoI head's sampled proposals as rows: IoU >= 0.5 to a teacher detection, soft CE with
    q = s on its class and 1 - s on the background, smooth L1 (beta 1/9) of the class's deltas to
    the encoded box (weights 10, 10, 5, 5), score-weighted; written out per row in float64."""
    import detkd.distill.methods.predictions as P

    student, teacher = model("faster_rcnn", 0).double(), model("retinanet", 1).double()
    seen = {}
    real = P._roi_head_terms
    monkeypatch.setattr(P, "_roi_head_terms", lambda s, rcn, d: seen.update(rcn=rcn, d=d) or real(s, rcn, d))
    images, targets = batch()
    images = [i.double() for i in images]
    targets = [{**t, "boxes": t["boxes"].double()} for t in targets]
    losses = distiller(student, teacher)(images, targets)
    rcn, dets = seen["rcn"], seen["d"]
    logits, deltas = rcn["class_logits"].detach().tolist(), rcn["box_regression"].detach().tolist()
    ce, box_num, box_den, row = 0.0, 0.0, 0.0, 0
    for proposals, (boxes, labels, scores) in zip(rcn["proposals"], dets):
        assert len(labels) > 0
        for p in proposals.tolist():
            ious = [_iou_of(p, b) for b in boxes.tolist()]
            best = max(range(len(ious)), key=lambda k: ious[k])
            z = logits[row]
            log_z = math.log(sum(math.exp(v) for v in z))
            if ious[best] >= 0.5:
                c, sc = int(labels[best]), float(scores[best])
                ce -= sc * (z[c] - log_z) + (1 - sc) * (z[0] - log_z)
                b = boxes[best].tolist()
                pw, ph = p[2] - p[0], p[3] - p[1]
                gw, gh = b[2] - b[0], b[3] - b[1]
                t = [10 * ((b[0] + gw / 2) - (p[0] + pw / 2)) / pw, 10 * ((b[1] + gh / 2) - (p[1] + ph / 2)) / ph,
                     5 * math.log(gw / pw), 5 * math.log(gh / ph)]
                d = deltas[row][4 * c:4 * c + 4]
                sl1 = sum(0.5 * (x - y) ** 2 / (1 / 9) if abs(x - y) < 1 / 9 else abs(x - y) - 0.5 / 9
                          for x, y in zip(d, t))
                box_num, box_den = box_num + sc * sl1, box_den + sc
            else:
                ce -= z[0] - log_z
            row += 1
    assert row == len(logits) and box_den > 0
    assert float(losses["loss_predictions_cls"]) == pytest.approx(ce / row, rel=1e-9)
    assert float(losses["loss_predictions_reg"]) == pytest.approx(box_num / max(box_den, 1.0), rel=1e-9)


def test_bad_options_are_one_line():
    teacher = {"model": {"arch": "fcos", "num_classes": 4}, "checkpoint": "t.pth"}
    tree = {"model": {"num_classes": 4}, "teacher": teacher,
            "distill": {"predictions": {}}}
    config_from_dict(tree)  # a Faster R-CNN student
    with pytest.raises(DetkdError, match=r"'distill.predictions.score_thresh' must be in \[0, 1\], got 1.5"):
        config_from_dict({**tree, "model": {"arch": "fcos", "num_classes": 4},
                          "distill": {"predictions": {"score_thresh": 1.5}}})
