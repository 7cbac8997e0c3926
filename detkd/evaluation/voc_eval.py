"""PASCAL VOC mean average precision (mAP at one IoU threshold, default 0.5).

Matching follows the VOC devkit (``VOCevaldet.m``), as do mmdetection and
py-faster-rcnn:

* per class, all detections of the dataset are sorted by score (a stable sort: ties keep
  image order, then per-image order);
* each detection is compared with *every* ground-truth box of its class in its image
  (difficult ones included) and takes the one with the highest IoU; if that IoU is
  ``>= iou_thresh``: a difficult box makes the detection neither TP nor FP (it is
  dropped), an unclaimed box makes it a TP and claims the box, an already claimed box
  makes it a FP (duplicate detection) — even if another, unclaimed box also overlaps
  enough. Below the threshold it is a FP;
* difficult boxes do not count among the positives;
* classes with no non-difficult ground truth are left out of ``per_class`` and of the
  mean (their detections are ignored).

Coordinates are continuous: IoU uses ``(x2 - x1) * (y2 - y1)`` areas, without the
devkit's legacy ``+ 1`` pixel, as torchvision and mmdetection's default do. Numbers can
therefore differ slightly from the MATLAB devkit on small boxes.

``mAP`` uses the VOC2010+ "area" metric (exact area under the monotone precision
envelope), ``mAP_07`` the VOC2007 11-point metric, with recall points exactly
``0.0, 0.1, ..., 1.0`` (``k / 10``, not ``np.arange(0, 1.1, 0.1)``, whose 0.3, 0.6, 0.7
overshoot by one ulp and miss a recall of exactly 0.3).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Optional, Union

import numpy as np

from detkd.errors import DetkdError
from detkd.evaluation.coco_eval import to_numpy

__all__ = ["voc_ap", "evaluate_voc"]


def voc_ap(recall, precision, use_07_metric: bool = False) -> float:
    """Average precision from a cumulative PR curve (detections sorted by score).

    Args:
        recall, precision: 1-D arrays of equal length, one point per detection.
        use_07_metric: VOC2007 11-point interpolated AP instead of the VOC2010+ area
            under the interpolated (monotone non-increasing) precision curve.
    """
    rec = np.asarray(recall, dtype=np.float64).reshape(-1)
    prec = np.asarray(precision, dtype=np.float64).reshape(-1)
    if rec.shape != prec.shape:
        raise DetkdError(
            f"voc_ap: recall has {rec.size} points but precision has {prec.size}"
        )
    if use_07_metric:
        ap = 0.0
        for k in range(11):
            above = rec >= k / 10.0
            ap += float(prec[above].max()) if above.any() else 0.0
        return ap / 11.0
    mrec = np.concatenate(([0.0], rec, [1.0]))
    mpre = np.concatenate(([0.0], prec, [0.0]))
    mpre = np.maximum.accumulate(mpre[::-1])[::-1]  # precision envelope
    steps = np.nonzero(mrec[1:] != mrec[:-1])[0]
    return float(np.sum((mrec[steps + 1] - mrec[steps]) * mpre[steps + 1]))


def _boxes(value: Any, what: str) -> np.ndarray:
    boxes = to_numpy(value, np.float64, what)
    if boxes.size == 0:
        return boxes.reshape(0, 4)
    if boxes.ndim != 2 or boxes.shape[1] != 4:
        raise DetkdError(f"{what} have shape {tuple(boxes.shape)}, expected [N, 4]")
    return boxes


def _labels(value: Any, n: int, num_classes: int, what: str) -> np.ndarray:
    labels = to_numpy(value, np.int64, what).reshape(-1)
    if labels.shape[0] != n:
        raise DetkdError(f"{what}: {labels.shape[0]} labels for {n} boxes")
    bad = labels[(labels < 1) | (labels >= num_classes)]
    if bad.size:
        raise DetkdError(
            f"{what}: label {int(bad[0])} outside 1..{num_classes - 1} "
            f"(num_classes={num_classes} includes background 0)"
        )
    return labels


def _class_name_of(class_names, num_classes: int):
    labels = range(1, num_classes)
    if class_names is None:
        return lambda c: c
    if isinstance(class_names, Mapping):
        missing = [c for c in labels if c not in class_names]
        if missing:
            raise DetkdError(f"class_names has no name for label(s) {missing[:10]}")
        table = {c: class_names[c] for c in labels}
    else:
        names = list(class_names)
        if len(names) == num_classes:  # index = label, entry 0 = background
            table = {c: names[c] for c in labels}
        elif len(names) == num_classes - 1:  # entry i names label i + 1
            table = {c: names[c - 1] for c in labels}
        else:
            raise DetkdError(
                f"class_names has {len(names)} entries; expected {num_classes - 1} (labels "
                f"1..{num_classes - 1}) or {num_classes} (with background first)"
            )
    if len(set(table.values())) != len(table):
        raise DetkdError("class_names has duplicate names")
    return table.__getitem__


def _iou(box: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    iw = np.clip(np.minimum(box[2], boxes[:, 2]) - np.maximum(box[0], boxes[:, 0]), 0, None)
    ih = np.clip(np.minimum(box[3], boxes[:, 3]) - np.maximum(box[1], boxes[:, 1]), 0, None)
    inter = iw * ih
    area = (box[2] - box[0]) * (box[3] - box[1])
    areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    union = area + areas - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1.0), 0.0)


def evaluate_voc(
    gts: Sequence[Mapping[str, Any]],
    dets: Sequence[Mapping[str, Any]],
    num_classes: int,
    iou_thresh: float = 0.5,
    class_names: Optional[Union[Sequence[str], Mapping[int, str]]] = None,
) -> dict:
    """VOC mAP of ``dets`` against ``gts`` (see the module docstring for the rules).

    Args:
        gts: per image ``{"boxes": [N, 4] xyxy, "labels": [N], "difficult": [N] bool}``
            (``difficult`` optional, default all False). Tensors, arrays or lists.
        dets: per image ``{"boxes", "scores", "labels"}``, same image order as ``gts``.
        num_classes: number of classes *including* background (label 0), as in
            torchvision; object labels are ``1 .. num_classes - 1``.
        iou_thresh: a detection matches at IoU ``>= iou_thresh``.
        class_names: optional names used as ``per_class`` keys: a sequence for labels
            ``1..C`` (or ``0..C`` with background first) or a ``{label: name}`` mapping.
            Default: the integer labels.

    Returns:
        ``{"mAP": float, "mAP_07": float, "per_class": {key: AP}, "per_class_07":
        {key: AP_07}}``. Means are over the classes with at least one non-difficult
        ground-truth box; when there is none, both means are -1.0 (undefined, as
        pycocotools reports it) and the per-class dicts are empty.
    """
    if not isinstance(num_classes, (int, np.integer)) or num_classes < 2:
        raise DetkdError(f"num_classes must be an int >= 2 (background included), got {num_classes!r}")
    if not 0.0 < float(iou_thresh) <= 1.0:
        raise DetkdError(f"iou_thresh must be in (0, 1], got {iou_thresh}")
    if len(gts) != len(dets):
        raise DetkdError(f"evaluate_voc: {len(gts)} ground-truth images but {len(dets)} detection images")
    name_of = _class_name_of(class_names, int(num_classes))
    truth = [_ground_truth(i, g, num_classes) for i, g in enumerate(gts)]
    found = [_detections(i, d, num_classes) for i, d in enumerate(dets)]

    per_class: dict = {}
    per_class_07: dict = {}
    for c in range(1, int(num_classes)):
        curve = _precision_recall(c, truth, found, iou_thresh)
        if curve is None:
            continue
        recall, precision = curve
        key = name_of(c)
        per_class[key] = voc_ap(recall, precision)
        per_class_07[key] = voc_ap(recall, precision, use_07_metric=True)

    if per_class:
        m_ap = float(np.mean(list(per_class.values())))
        m_ap_07 = float(np.mean(list(per_class_07.values())))
    else:
        m_ap = m_ap_07 = -1.0
    return {"mAP": m_ap, "mAP_07": m_ap_07, "per_class": per_class, "per_class_07": per_class_07}


def _ground_truth(i: int, g: Mapping[str, Any], num_classes: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(boxes, labels, difficult flags) of image ``i``'s ground truth, checked."""
    for key in ("boxes", "labels"):
        if key not in g:
            raise DetkdError(f"ground truth of image #{i} has no '{key}'")
    boxes = _boxes(g["boxes"], f"ground-truth boxes of image #{i}")
    labels = _labels(g["labels"], boxes.shape[0], num_classes, f"ground truth of image #{i}")
    if g.get("difficult") is None:
        difficult = np.zeros(boxes.shape[0], dtype=bool)
    else:
        difficult = to_numpy(g["difficult"], bool, f"difficult flags of image #{i}").reshape(-1)
        if difficult.shape[0] != boxes.shape[0]:
            raise DetkdError(
                f"ground truth of image #{i}: {difficult.shape[0]} difficult flags for "
                f"{boxes.shape[0]} boxes"
            )
    return boxes, labels, difficult


def _detections(i: int, d: Mapping[str, Any], num_classes: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(boxes, scores, labels) of image ``i``'s detections, checked."""
    for key in ("boxes", "scores", "labels"):
        if key not in d:
            raise DetkdError(f"detections of image #{i} have no '{key}'")
    boxes = _boxes(d["boxes"], f"detection boxes of image #{i}")
    scores = to_numpy(d["scores"], np.float64, f"detection scores of image #{i}").reshape(-1)
    if scores.shape[0] != boxes.shape[0]:
        raise DetkdError(f"detections of image #{i}: {scores.shape[0]} scores for {boxes.shape[0]} boxes")
    labels = _labels(d["labels"], boxes.shape[0], num_classes, f"detections of image #{i}")
    return boxes, scores, labels


def _precision_recall(c: int, truth: list, found: list,
                      iou_thresh: float) -> Optional[tuple[np.ndarray, np.ndarray]]:
    """(recall, precision) along class ``c``'s detections by falling score; None when the
    class has no non-difficult ground-truth box."""
    cls_gt = []
    npos = 0
    for boxes, labels, difficult in truth:
        keep = labels == c
        cls_gt.append((boxes[keep], difficult[keep], np.zeros(int(keep.sum()), dtype=bool)))
        npos += int((~difficult[keep]).sum())
    if npos == 0:
        return None

    img_idx, scores, boxes = [], [], []
    for i, (b, s, l) in enumerate(found):
        keep = l == c
        img_idx.append(np.full(int(keep.sum()), i, dtype=np.int64))
        scores.append(s[keep])
        boxes.append(b[keep])
    img_idx = np.concatenate(img_idx) if img_idx else np.zeros(0, dtype=np.int64)
    scores = np.concatenate(scores) if scores else np.zeros(0)
    boxes = np.concatenate(boxes) if boxes else np.zeros((0, 4))

    outcome = []  # True = TP, False = FP; detections on difficult boxes are dropped
    for d in np.argsort(-scores, kind="stable"):
        g_boxes, g_difficult, g_claimed = cls_gt[img_idx[d]]
        if g_boxes.shape[0] == 0:
            outcome.append(False)
            continue
        ious = _iou(boxes[d], g_boxes)
        j = int(np.argmax(ious))
        if ious[j] >= iou_thresh:
            if g_difficult[j]:
                continue
            if not g_claimed[j]:
                g_claimed[j] = True
                outcome.append(True)
            else:
                outcome.append(False)
        else:
            outcome.append(False)

    is_tp = np.asarray(outcome, dtype=bool)
    tp = np.cumsum(is_tp).astype(np.float64)
    fp = np.cumsum(~is_tp).astype(np.float64)
    recall = tp / npos
    precision = tp / np.maximum(tp + fp, np.finfo(np.float64).eps)
    return recall, precision
