"""The export parity rule (detkd.deploy.parity) on made-up detection lists with known answers."""

from __future__ import annotations

import pytest
import torch

from detkd.deploy.parity import BOX_ATOL, SCORE_ATOL, Cutoffs, compare

CUT = Cutoffs(score_thresh=0.05, nms_thresh=0.5, detections_per_img=4)


def dets(*rows):
    """(label, score, x0, y0, x1, y1) rows -> (boxes, labels, scores) as a detector returns them."""
    rows = sorted(rows, key=lambda r: -r[1])
    boxes = torch.tensor([r[2:] for r in rows], dtype=torch.float32).reshape(-1, 4)
    return boxes, torch.tensor([r[0] for r in rows], dtype=torch.int64), torch.tensor([r[1] for r in rows])


EAGER = dets((1, 0.90, 10, 10, 50, 50), (2, 0.600002, 60, 10, 90, 40), (1, 0.600001, 5, 60, 40, 95))


def test_identical_lists_agree():
    found = compare(EAGER, EAGER, CUT)
    assert found.problems == [] and found.matched == 3 and found.at_cutoff == 0


def test_an_order_swap_of_near_tied_scores_is_no_disagreement():
    boxes, labels, scores = EAGER
    order = torch.tensor([0, 2, 1])  # the two detections 1e-6 apart swap places
    swapped = (boxes[order] + 1e-4, labels[order], scores[order] + torch.tensor([0.0, 2e-6, -2e-6]))
    found = compare(EAGER, swapped, CUT)
    assert found.problems == [] and found.matched == 3
    assert found.max_box_diff == pytest.approx(1e-4, rel=1e-2) and found.max_score_diff <= 3e-6


def test_a_box_off_by_one_pixel_is_refused_and_named():
    boxes, labels, scores = EAGER
    moved = boxes.clone()
    moved[1, 2] += 1.0
    found = compare(EAGER, (moved, labels, scores), CUT)
    assert len(found.problems) == 2  # the eager one unmatched and the exported one unmatched
    assert found.problems[0].startswith("eager detection (label 2 score 0.600002 box [60.00, 10.00, 90.00, 40.00])")
    assert "box off by 1 px" in found.problems[0]


def test_a_score_off_by_more_than_the_tolerance_is_refused():
    boxes, labels, scores = EAGER
    found = compare(EAGER, (boxes, labels, scores + torch.tensor([0.0, 0.0, 3 * SCORE_ATOL])), CUT)
    assert found.problems and "score by 0.0003" in found.problems[0]


def test_a_detection_missing_far_above_the_cut_offs_is_refused():
    boxes, labels, scores = EAGER
    found = compare(EAGER, (boxes[1:], labels[1:], scores[1:]), CUT)
    assert len(found.problems) == 1 and "score 0.900000" in found.problems[0]
    assert "none of label 1" not in found.problems[0]  # a label-1 detection remains: the nearest is named


def test_a_detection_missing_at_the_score_threshold_is_accepted():
    low = dets(*[(1, 0.90, 10, 10, 50, 50), (3, CUT.score_thresh + SCORE_ATOL / 2, 0, 0, 20, 20)])
    found = compare(low, dets((1, 0.90, 10, 10, 50, 50)), CUT)
    assert found.problems == [] and found.at_cutoff == 1
    above = dets(*[(1, 0.90, 10, 10, 50, 50), (3, CUT.score_thresh + 3 * SCORE_ATOL, 0, 0, 20, 20)])
    assert compare(above, dets((1, 0.90, 10, 10, 50, 50)), CUT).problems


def test_a_detection_missing_at_the_detection_limit_is_accepted_only_when_the_other_side_is_full():
    full = dets(*[(1, s, 10 * i, 0, 10 * i + 8, 8) for i, s in enumerate((0.9, 0.8, 0.7, 0.3))])
    other = dets(*[(1, s, 10 * i, 0, 10 * i + 8, 8) for i, s in enumerate((0.9, 0.8, 0.7))],
                 (2, 0.3 - SCORE_ATOL / 2, 50, 50, 60, 60))  # exported kept another near-tied one
    found = compare(full, other, CUT)
    assert found.problems == [] and found.at_cutoff == 2
    short = tuple(t[:3] for t in full)  # three of four: not full, so a 0.3 detection missing is real
    assert compare(full, short, CUT).problems


def test_a_detection_missing_at_the_nms_iou_threshold_is_accepted_but_not_an_nms_tie_swap():
    # IoU of the two boxes: 600 / 1200 = 0.5 exactly, NMS's threshold: float noise decides.
    pair = dets((1, 0.8, 0, 0, 30, 30), (1, 0.7, 0, 10, 30, 40))
    found = compare(pair, dets((1, 0.8, 0, 0, 30, 30)), CUT)
    assert found.problems == [] and found.at_cutoff == 1
    apart = dets((1, 0.8, 0, 0, 30, 30), (1, 0.7, 0, 12, 30, 42))  # IoU 0.43: NMS keeps both
    assert compare(apart, dets((1, 0.8, 0, 0, 30, 30)), CUT).problems
    # Each side kept the other of two overlapping near-tied boxes: indistinguishable from a moved box.
    assert compare(dets((1, 0.700001, 10, 10, 50, 50)), dets((1, 0.700000, 12, 10, 52, 50)), CUT).problems


def test_a_detection_of_another_label_is_never_a_match():
    boxes, labels, scores = EAGER
    relabelled = labels.clone()
    relabelled[0] = 5
    found = compare(EAGER, (boxes, relabelled, scores), CUT)
    assert found.problems and "label 1 score 0.900000" in found.problems[0]


def test_empty_lists_agree_and_one_empty_side_is_refused():
    empty = dets()
    assert compare(empty, empty, CUT).problems == []
    assert len(compare(EAGER, empty, CUT).problems) == 3
    assert "none of label" in compare(EAGER, empty, CUT).problems[0]


def test_tolerances_are_the_documented_ones():
    from pathlib import Path

    doc = (Path(__file__).resolve().parents[1] / "docs" / "deploy.md").read_text()
    assert f"**{BOX_ATOL} px**" in doc and f"**{SCORE_ATOL}**" in doc
