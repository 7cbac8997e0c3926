"""Do two runs of one detector agree? Its detections compared as sets, with the cut-offs in mind.

An exported model (ONNX Runtime, TorchScript) computes the same function as the eager one in
another order, so scores and boxes differ by float noise (~1e-6). What that noise decides in the
output: the order of detections whose scores differ by less than it, and whether a detection at a
cut-off survives it (the score threshold, the last of the ``detections_per_img`` kept, the NMS IoU
threshold; also which of two near-tied overlapping boxes NMS keeps, and cut-offs the output does
not show, see the end). So:

1. Each eager detection is matched to an unmatched exported one of the same label whose score is
   within ``score_atol`` and whose every box coordinate is within ``box_atol`` pixels (closest box
   first, eager detections in descending score order). Order does not matter.
2. A detection left without a partner on one side is accepted only where float noise explains its
   absence on the other side (:func:`explained`): its score is within ``score_atol`` of the other
   side's score threshold; or the other side is full (``detections_per_img``) and it scores no more
   than ``score_atol`` above the lowest score kept there; or the other side kept a same-label box
   scoring at least as high whose IoU with it is within ``IOU_ATOL`` of the NMS threshold.

Anything else is a disagreement, named with its detection and how far the nearest partner is.
Float-noise cases that stay refused on purpose, because telling them from a wrong export would need
what the exported model does not return (its candidates before NMS and before each top-k): two
same-label boxes overlapping above the NMS threshold with scores within ``score_atol`` where each
side kept the other one (and what that flip lets survive further down); a candidate at a per-level
``topk_candidates`` cut (RetinaNet, FCOS, SSD) or at the RPN's pre/post-NMS top-n (Faster R-CNN)
whose final detection scores well above the output cut-offs. Trained models rarely meet them (the
demo's and the tests' never did); a refused export names the detection, so a user can see it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor
from torchvision.ops import box_iou

BOX_ATOL = 0.01  # pixels
SCORE_ATOL = 1e-4
IOU_ATOL = 1e-4  # a box moved by float noise moves its IoU by far less

Detections = tuple[Tensor, Tensor, Tensor]  # boxes [K, 4] xyxy, labels [K], scores [K]


@dataclass(frozen=True)
class Cutoffs:
    """A detector's post-processing cut-offs (torchvision: ``score_thresh``, ``nms_thresh``,
    ``detections_per_img``)."""

    score_thresh: float
    nms_thresh: float
    detections_per_img: int

    @classmethod
    def of(cls, module: object) -> "Cutoffs":
        return cls(float(module.score_thresh), float(module.nms_thresh), int(module.detections_per_img))


@dataclass
class Comparison:
    """What :func:`compare` found: matched pairs' largest differences, the unmatched detections
    accepted at a cut-off, and the disagreements (empty: the two agree)."""

    matched: int = 0
    max_box_diff: float = 0.0
    max_score_diff: float = 0.0
    at_cutoff: int = 0
    problems: list[str] = field(default_factory=list)


def _describe(dets: Detections, i: int) -> str:
    box = ", ".join(f"{v:.2f}" for v in dets[0][i].tolist())
    return f"label {int(dets[1][i])} score {float(dets[2][i]):.6f} box [{box}]"


def _match(want: Detections, got: Detections, box_atol: float, score_atol: float) -> list[tuple[int, int]]:
    """Greedy pairs (eager index, exported index) within the tolerances, closest box first."""
    if not len(want[1]) or not len(got[1]):
        return []
    box_diff = (want[0][:, None, :] - got[0][None, :, :]).abs().amax(dim=2)  # [W, G]
    ok = ((want[1][:, None] == got[1][None, :]) & ((want[2][:, None] - got[2][None, :]).abs() <= score_atol)
          & (box_diff <= box_atol))
    pairs, taken = [], torch.zeros(len(got[1]), dtype=torch.bool)
    for i in torch.argsort(want[2], descending=True, stable=True).tolist():
        free = ok[i] & ~taken
        if free.any():
            j = int(torch.where(free, box_diff[i], torch.inf).argmin())
            taken[j] = True
            pairs.append((i, j))
    return pairs


def explained(dets: Detections, i: int, other: Detections, cut: Cutoffs, score_atol: float = SCORE_ATOL) -> str:
    """Why detection ``i`` of ``dets`` may be missing from ``other`` by float noise alone (a
    non-empty reason), or ``""``."""
    score = float(dets[2][i])
    if abs(score - cut.score_thresh) <= score_atol:
        return "at the score threshold"
    if len(other[2]) >= cut.detections_per_img and score <= float(other[2].min()) + score_atol:
        return "at the detections-per-image limit"
    same = other[1] == dets[1][i]
    if same.any():
        iou = box_iou(dets[0][i:i + 1].double(), other[0][same].double())[0]
        if (((iou - cut.nms_thresh).abs() <= IOU_ATOL) & (other[2][same] >= score - score_atol)).any():
            return "at the non-maximum suppression IoU threshold"
    return ""


def _nearest(dets: Detections, i: int, other: Detections) -> str:
    same = torch.nonzero(other[1] == dets[1][i]).flatten()
    if not len(same):
        return f"none of label {int(dets[1][i])} on the other side"
    diff = (other[0][same] - dets[0][i]).abs().amax(dim=1)
    j = int(same[int(diff.argmin())])
    return (f"nearest of its label: box off by {float(diff.min()):.3g} px, score by "
            f"{abs(float(other[2][j]) - float(dets[2][i])):.3g}")


def compare(want: Detections, got: Detections, cut: Cutoffs, box_atol: float = BOX_ATOL,
            score_atol: float = SCORE_ATOL) -> Comparison:
    """Compare ``got`` (exported) with ``want`` (eager) by the rules of this module's docstring."""
    want = (want[0].double(), want[1].long(), want[2].double())
    got = (got[0].double(), got[1].long(), got[2].double())
    result = Comparison()
    pairs = _match(want, got, box_atol, score_atol)
    for i, j in pairs:
        result.max_box_diff = max(result.max_box_diff, float((want[0][i] - got[0][j]).abs().max()))
        result.max_score_diff = max(result.max_score_diff, abs(float(want[2][i] - got[2][j])))
    result.matched = len(pairs)
    for side, dets, other, used in (("eager", want, got, {i for i, _ in pairs}),
                                    ("exported", got, want, {j for _, j in pairs})):
        for i in range(len(dets[1])):
            if i in used:
                continue
            if explained(dets, i, other, cut, score_atol):
                result.at_cutoff += 1
                continue
            peer = "exported" if side == "eager" else "eager"
            result.problems.append(f"{side} detection ({_describe(dets, i)}) has no {peer} match within "
                                   f"{box_atol} px and {score_atol} ({_nearest(dets, i, other)})")
    return result
