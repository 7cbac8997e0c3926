"""The display-threshold rule and per-image AP50 on made-up detections with known answers."""

from __future__ import annotations

import numpy as np
import pytest

from detkd.evaluation.thresholds import f1_optimal_threshold, image_ap50, match_image


def _box(i: int) -> list[float]:
    return [10.0 * i, 0.0, 10.0 * i + 8, 8.0]


def test_f1_optimum_on_a_made_up_ranking():
    # Four objects (class 1 at 0..2 in image A, class 2 in image B); seven detections ranked
    # TP TP FP TP FP FP TP: F1 after k kept = 2 TP / (k + 4) = .40 .67 .57 .75 .67 .60 .73,
    # so the best cut keeps the first four (scores 0.9, 0.8, 0.7, 0.6), threshold 0.55.
    gt_a = {"boxes": [_box(0), _box(1), _box(2)], "labels": [1, 1, 1]}
    gt_b = {"boxes": [_box(0)], "labels": [2]}
    pred_a = {"boxes": [_box(0), _box(7), _box(1), _box(5), _box(6), _box(2)],
              "scores": [0.9, 0.7, 0.6, 0.5, 0.4, 0.3], "labels": [1, 1, 1, 1, 1, 1]}
    pred_b = {"boxes": [_box(0)], "scores": [0.8], "labels": [2]}
    best = f1_optimal_threshold([pred_a, pred_b], [gt_a, gt_b])
    assert best is not None
    assert best["kept"] == 4 and best["F1"] == pytest.approx(0.75)
    assert best["score_thresh"] == pytest.approx(0.55)
    assert best["precision"] == pytest.approx(0.75) and best["recall"] == pytest.approx(0.75)


def test_ties_are_cut_together_and_no_truth_gives_none():
    gt = {"boxes": [_box(0)], "labels": [1]}
    # Same score for a hit and a miss: the cut keeps both or neither.
    pred = {"boxes": [_box(0), _box(3)], "scores": [0.5, 0.5], "labels": [1, 1]}
    best = f1_optimal_threshold([pred], [gt])
    assert best["kept"] == 2 and best["score_thresh"] == pytest.approx(0.25)
    miss = {"boxes": [_box(3)], "scores": [0.5], "labels": [1]}
    none = f1_optimal_threshold([miss], [gt])
    assert none["kept"] == 0 and none["F1"] == 0.0 and none["score_thresh"] == pytest.approx(0.75)
    assert f1_optimal_threshold([pred], [{"boxes": np.zeros((0, 4)), "labels": []}]) is None
    empty = {"boxes": np.zeros((0, 4)), "scores": [], "labels": []}
    assert f1_optimal_threshold([empty], [gt]) is None


def test_matching_is_greedy_by_score_same_label_and_ignores_difficult():
    gt = {"boxes": [_box(0), _box(1)], "labels": [1, 1], "difficult": [False, True]}
    pred = {"boxes": [_box(0), _box(0), _box(1), _box(0)], "scores": [0.3, 0.9, 0.5, 0.8], "labels": [1, 1, 1, 2]}
    assert match_image(pred, gt).tolist() == [0, 1, -1, 0]  # duplicate, hit, difficult, wrong label


def test_image_ap50():
    gt = {"boxes": [_box(0), _box(1)], "labels": [1, 2]}
    perfect = {"boxes": [_box(0), _box(1)], "scores": [0.9, 0.8], "labels": [1, 2]}
    assert image_ap50(perfect, gt) == pytest.approx(1.0)
    # miss first, then both hits: precision 1/2 at recall 1/2, 2/3 at recall 1 -> AP 2/3
    late = {"boxes": [_box(5), _box(0), _box(1)], "scores": [0.9, 0.8, 0.7], "labels": [1, 1, 2]}
    assert image_ap50(late, gt) == pytest.approx(2 / 3)
    half = {"boxes": [_box(0)], "scores": [0.9], "labels": [1]}
    assert image_ap50(half, gt) == pytest.approx(0.5)
    assert image_ap50({"boxes": np.zeros((0, 4)), "scores": [], "labels": []}, gt) == 0.0
    assert image_ap50(perfect, {"boxes": np.zeros((0, 4)), "labels": []}) is None
