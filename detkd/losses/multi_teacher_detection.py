"""Several detection teachers (the method specification, section 6): how much each teacher is
trusted per image, and the fusion of their detections into one set of soft targets.

* :func:`detection_confidence_weights`, the detection analogue of CA-MKD (Zhang et al., ICASSP
  2022) through the same :func:`~detkd.losses.multi_teacher.confidence_weights`::

      l_k,g = -log(max(eps, max {s_j : j in D_k, c_j = y_g, IoU(b_j, g) >= 0.5}))   eps = 1e-3
      w_k,g = (1 - softmax over k of l_.,g) / (K - 1)
      w_k,i = mean over the image's ground-truth boxes g of w_k,g;  an image without boxes: 1/K

* :func:`weighted_box_fusion` (Solovyev et al., "Weighted boxes fusion", Image and Vision
  Computing 2021), each box's score first multiplied by ``K * w_k,i``: boxes of all teachers by
  decreasing score, each joins the first cluster of its class whose fused box it overlaps by IoU
  > 0.55 (else starts one); a cluster's box is the score-weighted mean of its boxes and its score
  the mean score times ``min(T, K) / K`` (T boxes in it). With equal weights (``w = 1/K``) it is
  plain WBF; a box only one teacher found keeps ``w_k s``.

Constants throughout (the teachers' outputs and the ground truth): nothing here has a gradient.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor
from torchvision.ops import box_iou

from detkd.losses.multi_teacher import confidence_weights

__all__ = ["detection_confidence_weights", "weighted_box_fusion", "CA_EPS", "WBF_IOU"]

CA_EPS = 1e-3  # a teacher that misses a box entirely: its confidence there, not log(0)
MATCH_IOU = 0.5
WBF_IOU = 0.55

Detections = tuple[Tensor, Tensor, Tensor]  # boxes [N, 4] xyxy, labels [N], scores [N]


def detection_confidence_weights(teachers: Sequence[Detections], gt_boxes: Tensor, gt_labels: Tensor,
                                 eps: float = CA_EPS) -> Tensor:
    """``[K]`` weights of the K teachers on one image (sum 1): see the module docs."""
    k = len(teachers)
    if k < 2:
        raise ValueError("detection_confidence_weights needs at least 2 teachers")
    if len(gt_labels) == 0:
        return torch.full((k,), 1.0 / k, dtype=torch.float64)
    losses = []
    for boxes, labels, scores in teachers:
        best = torch.zeros(len(gt_labels), dtype=torch.float64)
        if len(labels):
            iou = box_iou(gt_boxes.double(), boxes.double())
            hit = (iou >= MATCH_IOU) & (gt_labels[:, None] == labels[None, :])
            best = torch.where(hit, scores.double()[None, :], torch.zeros_like(iou)).max(dim=1).values
        losses.append(-torch.log(best.clamp(min=eps)))
    return confidence_weights(torch.stack(losses)).mean(dim=1)


def weighted_box_fusion(teachers: Sequence[Detections], weights: Tensor, iou_thresh: float = WBF_IOU) -> Detections:
    """The K teachers' detections of one image fused into one set (see the module docs);
    ``weights`` ``[K]`` (sum 1). Returns (boxes, labels, scores) by decreasing score."""
    k = len(teachers)
    entries = []  # (score * K * w_k, box, label)
    for (boxes, labels, scores), w in zip(teachers, weights.tolist()):
        for b, c, s in zip(boxes.double(), labels.tolist(), scores.double().tolist()):
            entries.append((s * k * w, b, c))
    entries.sort(key=lambda e: -e[0])
    clusters: list[list] = []  # [label, [(score, box)], fused box]
    for score, box, label in entries:
        match = None
        for cluster in clusters:
            if cluster[0] == label and float(box_iou(box[None], cluster[2][None])) > iou_thresh:
                match = cluster
                break
        if match is None:
            clusters.append([label, [(score, box)], box.clone()])
            continue
        match[1].append((score, box))
        s = torch.tensor([m[0] for m in match[1]], dtype=torch.float64)
        match[2] = (s[:, None] * torch.stack([m[1] for m in match[1]])).sum(dim=0) / s.sum().clamp(min=1e-12)
    if not clusters:
        ref = teachers[0][0] if teachers else torch.zeros(0, 4)
        return ref.new_zeros(0, 4), torch.zeros(0, dtype=torch.int64), ref.new_zeros(0)
    fused = [(sum(m[0] for m in c[1]) / len(c[1]) * min(len(c[1]), k) / k, c[2], c[0]) for c in clusters]
    fused.sort(key=lambda f: -f[0])
    dtype = teachers[0][0].dtype
    return (torch.stack([f[1] for f in fused]).to(dtype), torch.tensor([f[2] for f in fused], dtype=torch.int64),
            torch.tensor([f[0] for f in fused], dtype=dtype))
