"""Offline teacher detections (detkd.data.teacher_detections): every format read into the same
boxes, and every bad input refused in one line naming the file, the count and the first offender."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from detkd.data.teacher_detections import read_teacher_detections
from detkd.errors import DetkdError

CLASSES = ["cat", "dog", "bird"]


@dataclass
class Rec:
    image_id: int
    file: Path
    width: int
    height: int


IMAGES = [Rec(7, Path("train/a.jpg"), 200, 100), Rec(9, Path("train/b.jpg"), 50, 80)]
# The same two detections on a.jpg in every format: dog [10, 20, 50, 60] 0.9, bird [0, 0, 100, 50] 0.4.
WANT_BOXES = np.array([[10, 20, 50, 60], [0, 0, 100, 50]], np.float32)


def write(tmp_path: Path, data) -> Path:
    path = tmp_path / "dets.json"
    path.write_text(json.dumps(data))
    return path


def check_a(got):
    assert set(got) == {7, 9} and len(got[9].labels) == 0
    np.testing.assert_allclose(got[7].boxes, WANT_BOXES, atol=1e-4)
    assert got[7].labels.tolist() == [2, 3] and np.allclose(got[7].scores, [0.9, 0.4])


def test_coco_results_by_file_name_and_category_name(tmp_path):
    dets = [{"file_name": "a.jpg", "category_name": "dog", "bbox": [10, 20, 40, 40], "score": 0.9},
            {"file_name": "train/a.jpg", "category_name": "bird", "bbox": [0, 0, 100, 50], "score": 0.4}]
    check_a(read_teacher_detections(write(tmp_path, dets), IMAGES, CLASSES))


def test_coco_results_by_image_id_with_the_files_own_categories(tmp_path):
    data = {"categories": [{"id": 17, "name": "dog"}, {"id": 3, "name": "bird"}],
            "detections": [{"image_id": 7, "category_id": 17, "bbox": [10, 20, 40, 40], "score": 0.9},
                           {"image_id": 7, "category_id": 3, "bbox": [0, 0, 100, 50], "score": 0.4}]}
    check_a(read_teacher_detections(write(tmp_path, data), IMAGES, CLASSES))


def test_detkd_predict_records(tmp_path):
    records = [{"file": "/somewhere/a.jpg", "width": 200, "height": 100, "detections": [
        {"box": [10, 20, 50, 60], "score": 0.9, "label": 2, "class": "dog"},
        {"box": [0, 0, 100, 50], "score": 0.4, "label": 3, "class": "bird"}]},
        {"file": "/somewhere/b.jpg", "width": 50, "height": 80, "detections": []}]
    check_a(read_teacher_detections(write(tmp_path, records), IMAGES, CLASSES))


def test_yolo_txt_with_a_confidence_column(tmp_path):
    folder = tmp_path / "labels"
    folder.mkdir()
    # dog: centre (30, 40) size 40x40 in a 200x100 image; bird: centre (50, 25) size 100x50.
    (folder / "a.txt").write_text("1 0.15 0.4 0.2 0.4 0.9\n2 0.25 0.25 0.5 0.5 0.4\n")
    check_a(read_teacher_detections(folder, IMAGES, CLASSES))


@pytest.mark.parametrize("dets, message", [
    ([], "dets.json: no detections"),
    ([{"file_name": "zzz.jpg", "category_name": "dog", "bbox": [1, 1, 5, 5], "score": 0.5},
      {"file_name": "yyy.jpg", "category_name": "dog", "bbox": [1, 1, 5, 5], "score": 0.5}],
     "2 detections with images that are not in the training set (first: zzz.jpg category 'dog')"),
    ([{"image_id": 7, "category_name": "horse", "bbox": [1, 1, 5, 5], "score": 0.5}],
     "1 detection with classes outside the label map (cat, dog, bird) (first: 7 category 'horse'); "
     "set teacher.drop_unknown_classes: true"),
    ([{"image_id": 7, "category_id": 4, "bbox": [1, 1, 5, 5], "score": 0.5}], "classes outside the label map"),
    ([{"image_id": 7, "category_id": 1, "bbox": [1, 1, 5, 5], "score": 1.5}],
     "1 detection with scores outside [0, 1] (first: 1.5 at 7 category 1)"),
    ([{"image_id": 7, "category_id": 1, "bbox": [1, 1, 0, 5], "score": 0.5}],
     "1 detection with degenerate boxes (not finite, or width or height <= 0) (first: [1.0, 1.0, 1.0, 6.0]"),
    ([{"image_id": 7, "bbox": [1, 1, 2, 5], "score": 0.5}], "detection 0 lacks category_id or category_name"),
    ({"something": 1}, "expected a list of detections"),
])
def test_bad_detection_files_are_one_line(tmp_path, dets, message):
    with pytest.raises(DetkdError) as err:
        read_teacher_detections(write(tmp_path, dets), IMAGES, CLASSES)
    text = str(err.value)
    assert message in text and str(tmp_path) in text and "\n" not in text, text


def test_unknown_classes_may_be_dropped(tmp_path):
    dets = [{"image_id": 7, "category_name": "horse", "bbox": [1, 1, 5, 5], "score": 0.5},
            {"image_id": 9, "category_name": "cat", "bbox": [1, 1, 5, 5], "score": 0.5}]
    got = read_teacher_detections(write(tmp_path, dets), IMAGES, CLASSES, drop_unknown_classes=True)
    assert len(got[7].labels) == 0 and got[9].labels.tolist() == [1]


def test_missing_unreadable_and_yolo_without_confidence(tmp_path):
    with pytest.raises(DetkdError, match=r"^teacher.detections .*gone.json: no such file or folder$"):
        read_teacher_detections(tmp_path / "gone.json", IMAGES, CLASSES)
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(DetkdError, match=r"bad.json: not a readable JSON detections file"):
        read_teacher_detections(bad, IMAGES, CLASSES)
    folder = tmp_path / "yolo"
    folder.mkdir()
    (folder / "a.txt").write_text("1 0.15 0.4 0.2 0.4\n")
    with pytest.raises(DetkdError, match=r"a.txt:1: 6 columns expected .* got 5; write the predictions with a "
                                         r"confidence column \(save_conf\)$"):
        read_teacher_detections(folder, IMAGES, CLASSES)
