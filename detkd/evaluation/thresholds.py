"""Detections matched to ground truth at IoU 0.5: a model's display threshold and per-image AP50.

* :func:`match_image`: each detection of one image is a true positive (1), a false positive
  (0) or ignored (-1, it found a ``difficult`` object), matched greedily in descending score
  order to the unmatched same-label ground-truth box it overlaps most (IoU >= 0.5), as COCO
  and VOC evaluation match.
* :func:`f1_optimal_threshold`: over all images and classes pooled, the score cut-off whose
  kept detections have the highest F1 (``2 TP / (kept + ground truth)``); the *display
  threshold* a model records at the end of its evaluation and draws its pictures with.
* :func:`image_ap50`: one image's AP at IoU 0.5, its detections of all classes ranked
  together (class-aware matching): the number that tells which images models differ on.

Predictions are ``{"boxes" [N, 4] xyxy, "scores" [N], "labels" [N]}`` and ground truth
``{"boxes" [M, 4], "labels" [M], "difficult" [M] (optional)}``, numpy arrays or lists.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Optional

import numpy as np

__all__ = ["f1_optimal_threshold", "image_ap50", "match_image"]


def _iou(box: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    ix0, iy0 = np.maximum(box[0], boxes[:, 0]), np.maximum(box[1], boxes[:, 1])
    ix1, iy1 = np.minimum(box[2], boxes[:, 2]), np.minimum(box[3], boxes[:, 3])
    inter = np.clip(ix1 - ix0, 0, None) * np.clip(iy1 - iy0, 0, None)
    area = (box[2] - box[0]) * (box[3] - box[1])
    areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    return inter / np.maximum(area + areas - inter, 1e-12)


def _arrays(pred: Mapping[str, Any], gt: Mapping[str, Any]):
    boxes = np.asarray(pred["boxes"], dtype=np.float64).reshape(-1, 4)
    scores = np.asarray(pred["scores"], dtype=np.float64).reshape(-1)
    labels = np.asarray(pred["labels"]).reshape(-1)
    gt_boxes = np.asarray(gt["boxes"], dtype=np.float64).reshape(-1, 4)
    gt_labels = np.asarray(gt["labels"]).reshape(-1)
    difficult = np.asarray(gt.get("difficult", np.zeros(len(gt_labels), bool)), dtype=bool).reshape(-1)
    return boxes, scores, labels, gt_boxes, gt_labels, difficult


def match_image(pred: Mapping[str, Any], gt: Mapping[str, Any], iou: float = 0.5) -> np.ndarray:
    """Per detection of ``pred`` (in its order): 1 true positive, 0 false positive, -1 ignored."""
    boxes, scores, labels, gt_boxes, gt_labels, difficult = _arrays(pred, gt)
    flags = np.zeros(len(scores), dtype=np.int64)
    taken = np.zeros(len(gt_labels), dtype=bool)
    for i in np.argsort(-scores, kind="stable"):
        same = np.flatnonzero((gt_labels == labels[i]) & ~taken)
        if not len(same):
            continue
        overlaps = _iou(boxes[i], gt_boxes[same])
        best = int(np.argmax(overlaps))
        if overlaps[best] >= iou:
            j = same[best]
            taken[j] = True
            flags[i] = -1 if difficult[j] else 1
    return flags


def _ranked(preds: Sequence[Mapping[str, Any]], gts: Sequence[Mapping[str, Any]], iou: float):
    """(scores descending, their TP flags, number of non-difficult ground-truth boxes)."""
    scores, flags, n_gt = [], [], 0
    for pred, gt in zip(preds, gts):
        f = match_image(pred, gt, iou)
        kept = f >= 0
        scores.append(np.asarray(pred["scores"], dtype=np.float64).reshape(-1)[kept])
        flags.append(f[kept])
        n_gt += int((~_arrays(pred, gt)[5]).sum())
    s, f = (np.concatenate(scores), np.concatenate(flags)) if scores else (np.zeros(0), np.zeros(0, np.int64))
    order = np.argsort(-s, kind="stable")
    return s[order], f[order], n_gt


def f1_optimal_threshold(preds: Sequence[Mapping[str, Any]], gts: Sequence[Mapping[str, Any]],
                         iou: float = 0.5) -> Optional[dict[str, float]]:
    """``{"score_thresh", "F1", "precision", "recall", "kept"}`` of the cut-off with the best
    F1 over all images (``preds[i]`` against ``gts[i]``) and classes, or None without ground
    truth or detections. Keeping the detections scoring above ``score_thresh`` (or at least
    it: it lies halfway between the last kept score and the next one, with 1 above the
    highest and 0 below the lowest) keeps exactly the best prefix of the ranking; cuts fall
    only between different scores, and among equal F1 the higher threshold wins, so a model
    without a single true positive keeps nothing."""
    scores, flags, n_gt = _ranked(preds, gts, iou)
    if not len(scores) or n_gt == 0:
        return None
    # Position k keeps the first k detections (k = 0: none, F1 0); a cut falls only between
    # different scores, so ties are kept or dropped together.
    tp = np.concatenate([[0], np.cumsum(flags)])
    kept = np.arange(len(scores) + 1)
    f1 = 2 * tp / (kept + n_gt)
    cut = np.concatenate([[True], scores[1:] < scores[:-1], [True]])
    k = int(np.argmax(np.where(cut, f1, -1.0)))
    above = scores[k - 1] if k > 0 else 1.0
    below = scores[k] if k < len(scores) else 0.0
    return {"score_thresh": float((above + below) / 2), "F1": float(f1[k]),
            "precision": float(tp[k] / kept[k]) if k else 0.0, "recall": float(tp[k] / n_gt), "kept": int(k)}


def image_ap50(pred: Mapping[str, Any], gt: Mapping[str, Any], iou: float = 0.5) -> Optional[float]:
    """AP at ``iou`` of one image's detections ranked together (all-point interpolation, as
    VOC 2010+), or None when the image has no non-difficult ground truth."""
    scores, flags, n_gt = _ranked([pred], [gt], iou)
    if n_gt == 0:
        return None
    if not len(scores):
        return 0.0
    tp = np.cumsum(flags)
    recall = np.concatenate([[0.0], tp / n_gt, [1.0]])
    precision = np.concatenate([[0.0], tp / np.arange(1, len(scores) + 1), [0.0]])
    precision = np.maximum.accumulate(precision[::-1])[::-1]
    steps = np.flatnonzero(recall[1:] != recall[:-1])
    return float(np.sum((recall[steps + 1] - recall[steps]) * precision[steps + 1]))
