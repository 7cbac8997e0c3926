"""Tests for detkd.evaluation: COCO metrics (pycocotools) and VOC mAP."""

import contextlib
import copy
import io
import json

import numpy as np
import pytest
import torch

from detkd.errors import DetkdError
from detkd.evaluation import (
    COCO_METRIC_NAMES,
    coco_summary_table,
    detections_to_coco,
    evaluate_coco,
    evaluate_voc,
    voc_ap,
)

pycocotools = pytest.importorskip("pycocotools")
from pycocotools.coco import COCO  # noqa: E402
from pycocotools.cocoeval import COCOeval  # noqa: E402

CAT, DOG = 3, 7  # non-contiguous COCO category ids


# ---------------------------------------------------------------------------- COCO


def _gt_dataset():
    """4 images 100x100; 2 cats (+1 crowd cat), 3 dogs. Boxes are [x, y, w, h]."""

    def ann(i, img, cat, box, crowd=0):
        return {"id": i, "image_id": img, "category_id": cat, "bbox": list(box),
                "area": float(box[2] * box[3]), "iscrowd": crowd}

    return {
        "images": [{"id": i, "width": 100, "height": 100, "file_name": f"{i}.jpg"}
                   for i in (1, 2, 3, 4)],
        "categories": [{"id": CAT, "name": "cat"}, {"id": DOG, "name": "dog"}],
        "annotations": [
            ann(1, 1, CAT, (10, 10, 20, 20)),          # small
            ann(2, 1, DOG, (50, 50, 30, 30)),          # small
            ann(3, 2, CAT, (0, 0, 40, 40)),            # medium
            ann(4, 2, CAT, (60, 60, 30, 30), crowd=1), # crowd region
            ann(5, 3, DOG, (20, 20, 50, 50)),          # medium
            ann(6, 4, DOG, (5, 5, 40, 40)),            # medium
        ],
    }


def _coco(dataset):
    coco = COCO()
    coco.dataset = copy.deepcopy(dataset)
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco


def _det(img, cat, box, score):
    return {"image_id": img, "category_id": cat, "bbox": list(map(float, box)), "score": score}


def _direct_pycocotools(dataset, results, img_ids=None):
    gt = _coco(dataset)
    with contextlib.redirect_stdout(io.StringIO()):
        dt = gt.loadRes(copy.deepcopy(results))
        ev = COCOeval(gt, dt, iouType="bbox")
        if img_ids is not None:
            ev.params.imgIds = img_ids
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return [float(v) for v in ev.stats]


def test_coco_perfect_detections_score_one_and_crowd_is_ignored():
    dataset = _gt_dataset()
    results = [
        _det(a["image_id"], a["category_id"], a["bbox"], 0.9)
        for a in dataset["annotations"] if not a["iscrowd"]
    ]
    # A confident detection on the crowd region: matched to the crowd -> ignored, not FP.
    results.append(_det(2, CAT, (60, 60, 30, 30), 0.99))
    m = evaluate_coco(_coco(dataset), results)
    assert list(m) == list(COCO_METRIC_NAMES)
    for name in ("AP", "AP50", "AP75", "APs", "APm", "AR10", "AR100", "ARs", "ARm"):
        assert m[name] == pytest.approx(1.0), name
    assert m["APl"] == -1.0 and m["ARl"] == -1.0  # no large ground truth: undefined
    assert all(type(v) is float for v in m.values())


def test_coco_hand_computed_ap():
    dataset = _gt_dataset()
    results = [  # cats: perfect
        _det(1, CAT, (10, 10, 20, 20), 0.95),
        _det(2, CAT, (0, 0, 40, 40), 0.85),
    ]
    results += [  # dogs (3 GT), by score:
        _det(1, DOG, (50, 50, 30, 30), 0.9),  # TP (exact)
        _det(2, DOG, (0, 50, 20, 20), 0.8),   # FP (no dog in image 2)
        _det(4, DOG, (5, 5, 40, 40), 0.7),    # TP (exact)
        _det(4, DOG, (60, 60, 20, 20), 0.6),  # FP (no overlap)
        _det(3, DOG, (75, 75, 20, 20), 0.5),  # FP (no overlap)
        _det(3, DOG, (32, 20, 50, 50), 0.4),  # IoU 38*50/(5000-38*50) = 38/62 = 0.613
    ]
    m = evaluate_coco(_coco(dataset), results)

    # Dog PR curve when the last detection is a TP (IoU thresholds 0.50, 0.55, 0.60):
    #   TP FP TP FP FP TP -> recall 1/3 1/3 2/3 2/3 2/3 1, precision 1 1/2 2/3 1/2 2/5 1/2
    #   precision envelope (max to the right): 1 2/3 2/3 1/2 1/2 1/2
    #   101 recall points r = k/100: k=0..33 (34 pts, r <= 1/3) -> 1,
    #   k=34..66 (33 pts, r <= 2/3) -> 2/3, k=67..100 (34 pts) -> 1/2.
    dog_hit = (34 * 1 + 33 * (2 / 3) + 34 * (1 / 2)) / 101  # = 73/101
    # When it is a FP (thresholds 0.65 .. 0.95, 7 of them): max recall 2/3, so
    #   k=0..33 -> 1, k=34..66 -> 2/3, k=67..100 -> 0.
    dog_miss = (34 * 1 + 33 * (2 / 3) + 34 * 0) / 101  # = 56/101
    dog_ap = (3 * dog_hit + 7 * dog_miss) / 10
    cat_ap = 1.0
    assert m["AP"] == pytest.approx((cat_ap + dog_ap) / 2, abs=1e-12)
    assert m["AP50"] == pytest.approx((cat_ap + dog_hit) / 2, abs=1e-12)
    assert m["AP75"] == pytest.approx((cat_ap + dog_miss) / 2, abs=1e-12)
    # Recall, maxDets=100: cats 1; dogs 3/3 at 3 thresholds and 2/3 at 7.
    dog_ar = (3 * 1 + 7 * (2 / 3)) / 10
    assert m["AR100"] == pytest.approx((1 + dog_ar) / 2, abs=1e-12)


def _random_results(seed, n=40):
    rng = np.random.default_rng(seed)
    dataset = _gt_dataset()
    results = []
    for _ in range(n):
        a = dataset["annotations"][rng.integers(len(dataset["annotations"]))]
        jitter = rng.normal(0, 6, size=4)
        x, y, w, h = np.array(a["bbox"], float) + jitter
        img = int(a["image_id"]) if rng.random() < 0.8 else int(rng.integers(1, 5))
        cat = a["category_id"] if rng.random() < 0.8 else int(rng.choice([CAT, DOG]))
        results.append(_det(img, cat, (x, y, max(w, 1.0), max(h, 1.0)), float(rng.random())))
    return results


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_evaluate_coco_equals_direct_pycocotools(seed):
    dataset = _gt_dataset()
    results = _random_results(seed)
    expected = _direct_pycocotools(dataset, results)
    got = evaluate_coco(_coco(dataset), results)
    assert [got[n] for n in COCO_METRIC_NAMES] == expected
    assert 0.0 < got["AP"] < 1.0  # a non-trivial case

    # Restricted to a subset of images.
    expected = _direct_pycocotools(dataset, results, img_ids=[1, 3])
    got = evaluate_coco(_coco(dataset), results, img_ids=[3, 1])
    assert [got[n] for n in COCO_METRIC_NAMES] == expected


def test_evaluate_coco_leaves_inputs_untouched_and_is_quiet(capsys):
    dataset = _gt_dataset()
    gt = _coco(dataset)
    results = _random_results(5)
    results_before = copy.deepcopy(results)
    first = evaluate_coco(gt, results)
    assert capsys.readouterr().out == ""
    assert gt.dataset == dataset  # no 'ignore' keys added
    assert results == results_before  # no 'area'/'id'/'segmentation' added
    assert evaluate_coco(gt, results) == first  # repeatable on the same objects
    evaluate_coco(gt, results, verbose=True)
    assert "Average Precision" in capsys.readouterr().out


def test_evaluate_coco_empty_results():
    gt = _coco(_gt_dataset())
    m = evaluate_coco(gt, [])
    for name in ("AP", "AP50", "AP75", "APs", "APm", "AR1", "AR10", "AR100", "ARs", "ARm"):
        assert m[name] == 0.0, name
    assert m["APl"] == -1.0 and m["ARl"] == -1.0  # undefined, as for non-empty results
    # Same as pycocotools on detections that match nothing.
    far = [_det(1, CAT, (90, 0, 5, 5), 0.5)]
    assert evaluate_coco(gt, far) == m


def test_evaluate_coco_rejects_bad_input():
    gt = _coco(_gt_dataset())
    with pytest.raises(DetkdError, match="image_id 99"):
        evaluate_coco(gt, [_det(99, CAT, (0, 0, 5, 5), 0.5)])
    with pytest.raises(DetkdError, match="category_id 1"):
        evaluate_coco(gt, [_det(1, 1, (0, 0, 5, 5), 0.5)])
    with pytest.raises(DetkdError, match="img_ids"):
        evaluate_coco(gt, [], img_ids=[1, 42])
    with pytest.raises(DetkdError, match="iou_type"):
        evaluate_coco(gt, [], iou_type="keypoints")


def test_detections_to_coco_maps_labels_and_boxes():
    outputs = [
        {"boxes": torch.tensor([[10.0, 20.0, 30.0, 60.0], [0.5, 1.5, 2.0, 4.0]]),
         "scores": torch.tensor([0.9, 0.25]),
         "labels": torch.tensor([2, 1])},
        {"boxes": torch.zeros(0, 4), "scores": torch.zeros(0),
         "labels": torch.zeros(0, dtype=torch.int64)},
        {"boxes": np.array([[1.0, 2.0, 4.0, 8.0]]), "scores": np.array([0.5]),
         "labels": np.array([1])},
    ]
    res = detections_to_coco(outputs, [11, 12, 13], {1: CAT, 2: DOG})
    assert len(res) == 3
    assert res[0] == {"image_id": 11, "category_id": DOG, "bbox": [10.0, 20.0, 20.0, 40.0],
                      "score": pytest.approx(0.9)}
    assert res[1]["category_id"] == CAT and res[1]["image_id"] == 11
    assert res[1]["bbox"] == pytest.approx([0.5, 1.5, 1.5, 2.5])
    assert res[2] == {"image_id": 13, "category_id": CAT, "bbox": [1.0, 2.0, 3.0, 6.0],
                      "score": 0.5}
    for r in res:  # plain Python numbers
        assert type(r["image_id"]) is int and type(r["category_id"]) is int
        assert type(r["score"]) is float and all(type(v) is float for v in r["bbox"])
    json.dumps(res)
    assert detections_to_coco([], [], {1: CAT}) == []


def test_detections_to_coco_errors():
    out = {"boxes": torch.ones(1, 4), "scores": torch.ones(1), "labels": torch.tensor([5])}
    with pytest.raises(DetkdError, match="label 5"):
        detections_to_coco([out], [1], {1: CAT})
    with pytest.raises(DetkdError, match="2 outputs but 1 image ids"):
        detections_to_coco([out, out], [1], {5: CAT})
    with pytest.raises(DetkdError, match="no 'scores'"):
        detections_to_coco([{"boxes": torch.ones(1, 4), "labels": torch.tensor([1])}], [1], {1: CAT})


def test_detections_to_coco_round_trip_through_evaluate_coco():
    dataset = _gt_dataset()
    by_img = {i: [] for i in (1, 2, 3, 4)}
    for a in dataset["annotations"]:
        if not a["iscrowd"]:
            by_img[a["image_id"]].append(a)
    label_of = {CAT: 1, DOG: 2}
    outputs = []
    for img in (1, 2, 3, 4):
        anns = by_img[img]
        boxes = [[x, y, x + w, y + h] for x, y, w, h in (a["bbox"] for a in anns)]
        outputs.append({
            "boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
            "scores": torch.full((len(anns),), 0.8),
            "labels": torch.tensor([label_of[a["category_id"]] for a in anns], dtype=torch.int64),
        })
    res = detections_to_coco(outputs, [1, 2, 3, 4], {1: CAT, 2: DOG})
    assert evaluate_coco(_coco(dataset), res)["AP"] == pytest.approx(1.0)


def test_coco_summary_table():
    m = dict(zip(COCO_METRIC_NAMES, [0.372, 0.581, 0.4, 0.21, 0.409, -1.0,
                                      0.31, 0.49, 0.515, 0.32, 0.55, 0.65]))
    table = coco_summary_table(m)
    lines = table.splitlines()
    assert len(lines) == 2
    assert lines[0].startswith("AP 37.2 | AP50 58.1 | AP75 40.0")
    assert "APl n/a" in lines[0]
    assert lines[1].startswith("AR1 31.0") and "AR100 51.5" in lines[1]


# ----------------------------------------------------------------------------- VOC


def test_voc_ap_area_and_11_point():
    rec = [0.5, 0.5, 1.0]
    prec = [1.0, 0.5, 2 / 3]
    # area: envelope 1 on (0, .5], 2/3 on (.5, 1]
    assert voc_ap(rec, prec) == pytest.approx(0.5 * 1 + 0.5 * (2 / 3))
    # 11-point: t = 0..0.5 (6 points) -> 1; t = 0.6..1.0 (5 points) -> 2/3
    assert voc_ap(rec, prec, use_07_metric=True) == pytest.approx((6 + 5 * (2 / 3)) / 11)
    # A recall of exactly 0.3 reaches the 0.3 point (np.arange(0, 1.1, .1) would miss it).
    assert voc_ap([0.3], [1.0], use_07_metric=True) == pytest.approx(4 / 11)
    assert voc_ap([], []) == 0.0 and voc_ap([], [], use_07_metric=True) == 0.0
    with pytest.raises(DetkdError):
        voc_ap([0.1, 0.2], [1.0])


def _voc_case():
    # num_classes = 5: 1 car, 2 person, 3 bike (difficult GT only), 4 dog (no GT).
    gts = [
        {"boxes": torch.tensor([[0., 0, 10, 10], [20, 20, 30, 30], [40, 40, 80, 80]]),
         "labels": torch.tensor([1, 1, 2]),
         "difficult": torch.tensor([False, True, False])},
        {"boxes": [[0., 0, 10, 10], [50, 50, 60, 60], [70, 0, 90, 20]],
         "labels": [1, 1, 3],
         "difficult": [False, False, True]},
    ]
    dets = [
        {"boxes": torch.tensor([[0., 0, 10, 10],    # car .9  TP (car #1)
                                [20, 20, 30, 30],   # car .8  on difficult -> ignored
                                [1, 0, 11, 10],     # car .7  duplicate of car #1 -> FP
                                [40, 40, 80, 80]]), # person .95 TP
         "scores": torch.tensor([0.9, 0.8, 0.7, 0.95]),
         "labels": torch.tensor([1, 1, 1, 2])},
        {"boxes": np.array([[50., 50, 60, 60],      # car .6  TP (car #4)
                            [30, 30, 40, 40],       # car .5  FP; car #3 is missed
                            [0, 60, 10, 70],        # person .3 FP after full recall
                            [70, 0, 90, 20],        # bike .99 on difficult-only class
                            [0, 0, 5, 5]]),         # dog .99, class without GT
         "scores": np.array([0.6, 0.5, 0.3, 0.99, 0.99]),
         "labels": np.array([1, 1, 2, 3, 4])},
    ]
    return gts, dets


def test_evaluate_voc_hand_computed():
    gts, dets = _voc_case()
    r = evaluate_voc(gts, dets, num_classes=5)
    # car: npos = 3 (the difficult one does not count). Without the ignored detection:
    #   TP FP TP FP -> recall 1/3 1/3 2/3 2/3, precision 1 1/2 2/3 1/2
    #   area: 1/3 * 1 + (2/3 - 1/3) * 2/3 = 5/9
    #   11-pt: t=0,.1,.2,.3 -> 1; t=.4,.5,.6 -> 2/3; t=.7..1 -> 0: (4 + 3*2/3)/11 = 6/11
    car, car07 = 1 / 3 * 1 + (2 / 3 - 1 / 3) * (2 / 3), (4 + 3 * (2 / 3)) / 11
    # person: TP then FP -> recall 1 1, precision 1 1/2 -> AP 1 either way.
    assert set(r["per_class"]) == {1, 2}  # bike (difficult only) and dog (no GT) left out
    assert r["per_class"][1] == pytest.approx(car)
    assert r["per_class_07"][1] == pytest.approx(car07)
    assert r["per_class"][2] == pytest.approx(1.0)
    assert r["per_class_07"][2] == pytest.approx(1.0)
    assert r["mAP"] == pytest.approx((car + 1.0) / 2)
    assert r["mAP_07"] == pytest.approx((car07 + 1.0) / 2)


def test_evaluate_voc_class_names_and_default_difficult():
    gts, dets = _voc_case()
    for g in gts:  # without 'difficult' every box counts
        del g["difficult"]
    names = ["car", "person", "bike", "dog"]
    r = evaluate_voc(gts, dets, num_classes=5, class_names=names)
    assert set(r["per_class"]) == {"car", "person", "bike"}
    assert r["per_class"]["bike"] == pytest.approx(1.0)
    # car: npos 4; TP TP FP TP FP -> rec 1/4 2/4 2/4 3/4 3/4, prec 1 1 2/3 3/4 3/5
    assert r["per_class"]["car"] == pytest.approx(0.5 * 1 + 0.25 * 0.75)
    with_bg = evaluate_voc(gts, dets, num_classes=5, class_names=["__bg__"] + names)
    assert with_bg == r
    with pytest.raises(DetkdError, match="class_names"):
        evaluate_voc(gts, dets, num_classes=5, class_names=["car"])


def test_evaluate_voc_matching_rules():
    gt = {"boxes": [[0., 0, 10, 10], [0, 2, 10, 12]], "labels": [1, 1]}
    # Second detection overlaps the already-claimed box most (IoU .905) and the free one
    # enough (IoU .739): VOC devkit rule -> FP, so AP = 1/2 * 1.
    det = {"boxes": [[0., 0, 10, 10], [0, 0.5, 10, 10.5]], "scores": [0.9, 0.8], "labels": [1, 1]}
    assert evaluate_voc([gt], [det], 2)["mAP"] == pytest.approx(0.5)
    # IoU exactly 0.5 matches; 0.49 does not (continuous coordinates, no +1).
    one = {"boxes": [[0., 0, 10, 10]], "labels": [1]}
    half = {"boxes": [[0., 0, 10, 5]], "scores": [0.9], "labels": [1]}
    below = {"boxes": [[0., 0, 10, 4.9]], "scores": [0.9], "labels": [1]}
    assert evaluate_voc([one], [half], 2)["mAP"] == pytest.approx(1.0)
    assert evaluate_voc([one], [below], 2)["mAP"] == 0.0
    assert evaluate_voc([one], [below], 2, iou_thresh=0.45)["mAP"] == pytest.approx(1.0)


def test_evaluate_voc_empty_detections_and_no_gt():
    gts, _ = _voc_case()
    empty = [{"boxes": torch.zeros(0, 4), "scores": torch.zeros(0),
              "labels": torch.zeros(0, dtype=torch.int64)} for _ in gts]
    r = evaluate_voc(gts, empty, num_classes=5)
    assert r["mAP"] == 0.0 and r["mAP_07"] == 0.0
    assert r["per_class"] == {1: 0.0, 2: 0.0}
    no_gt = [{"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)}]
    r = evaluate_voc(no_gt, empty[:1], num_classes=5)
    assert r["mAP"] == -1.0 and r["per_class"] == {}


def test_evaluate_voc_errors():
    gts, dets = _voc_case()
    with pytest.raises(DetkdError, match="label 5 outside 1..4"):
        evaluate_voc(gts, [dict(dets[0], labels=torch.tensor([1, 1, 1, 5])), dets[1]], 5)
    with pytest.raises(DetkdError, match="2 ground-truth images but 1"):
        evaluate_voc(gts, dets[:1], num_classes=5)
    with pytest.raises(DetkdError, match="num_classes"):
        evaluate_voc(gts, dets, num_classes=1)
    with pytest.raises(DetkdError, match="shape"):
        evaluate_voc([{"boxes": [[0., 0, 1]], "labels": [1]}], dets[:1], num_classes=5)
