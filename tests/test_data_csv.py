"""The CSV box-list format: a CSV copy of the demo data has the COCO copy's ground truth and
trains/evaluates through the real trainer; bad rows are named by file:line; the worked example
of docs/datasets.md is the real file; train and val label maps must agree."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import REPO, scores_on, tiny_opts
from detkd.recipe import load_config
from detkd.data.build import DATASETS, build_dataset
from detkd.data.coco import CocoDetection
from detkd.data.csv import CsvDatasetConfig, CsvDetection
from detkd.errors import DetkdError
from detkd.evaluation.inference import load_detector, score_predictions

pytestmark = pytest.mark.usefixtures("one_thread")


def write_csv_copy(demo_dir: Path, root: Path) -> list[str]:
    """The demo's COCO data as ``root/<split>.csv`` (train with a header, val without) over
    copies of the images in ``root/images/<split>``; returns the class names in label order."""
    for split in ("train", "val"):
        coco = json.loads((demo_dir / "annotations" / f"instances_{split}.json").read_text())
        names = [c["name"] for c in sorted(coco["categories"], key=lambda c: c["id"])]
        (root / "images" / split).mkdir(parents=True)
        rows = ["file,x1,y1,x2,y2,class"] if split == "train" else []
        for img in coco["images"]:
            shutil.copy(demo_dir / split / img["file_name"], root / "images" / split / img["file_name"])
            for a in (a for a in coco["annotations"] if a["image_id"] == img["id"]):
                x, y, w, h = a["bbox"]
                rows.append(f"images/{split}/{img['file_name']},{x},{y},{x + w},{y + h},{names[a['category_id'] - 1]}")
        (root / f"{split}.csv").write_text("\n".join(rows) + "\n")
    return names


@pytest.fixture(scope="module")
def csv_copy(tiny_demo_dir, tmp_path_factory) -> tuple[Path, list[str]]:
    root = tmp_path_factory.mktemp("csv")
    return root, write_csv_copy(tiny_demo_dir, root)


def coco_copy(demo_dir: Path, split: str) -> CocoDetection:
    return CocoDetection(demo_dir / split, demo_dir / "annotations" / f"instances_{split}.json")


# ----------------------------------------------------------------------------- same ground truth


@pytest.mark.parametrize("split", ["train", "val"])
def test_csv_copy_gives_the_coco_copys_ground_truth(tiny_demo_dir, csv_copy, split):
    root, names = csv_copy
    coco, ds = coco_copy(tiny_demo_dir, split), CsvDetection(root / f"{split}.csv", names)
    assert ds.class_names == coco.class_names and len(names) == 10
    assert len(ds) == len(coco) == {"train": 16, "val": 8}[split]
    assert ds.get_image_ids() == coco.get_image_ids()
    assert ds.stats == {"images": len(coco), "boxes": coco.stats["boxes"], "clipped": 0, "dropped_degenerate": 0,
                        "empty_images": 0, "empty_images_skipped": 0}
    assert ds.summary() == f"CSV {split}.csv: " + ", ".join(f"{k}={v}" for k, v in ds.stats.items())
    for i in range(len(coco)):
        (image_c, target_c), (image_s, target_s) = coco[i], ds[i]
        assert torch.equal(image_c, image_s)
        assert set(target_c) == set(target_s)
        assert all(torch.equal(target_c[k], target_s[k]) for k in target_c)  # integer boxes: exact
    ids = coco.get_image_ids()
    for gt_c, gt_s in zip(coco.voc_ground_truth(ids), ds.voc_ground_truth(ids)):
        assert all(np.array_equal(gt_c[k], gt_s[k]) for k in ("boxes", "labels", "difficult"))


def test_perfect_detections_score_1_and_the_coco_ground_truth_matches(tiny_demo_dir, csv_copy):
    root, names = csv_copy
    coco, ds = coco_copy(tiny_demo_dir, "val"), CsvDetection(root / "val.csv", names)
    ids = coco.get_image_ids()
    preds = {i: {"boxes": gt["boxes"], "labels": gt["labels"], "scores": np.ones(len(gt["labels"]))}
             for i, gt in zip(ids, coco.voc_ground_truth(ids))}
    for dataset in (coco, ds):
        metrics = score_predictions(preds, dataset, "both")
        assert (metrics["AP"], metrics["AP50"], metrics["AP75"], metrics["VOC_mAP"]) == (1.0, 1.0, 1.0, 1.0)
    gt, label_to_cat = ds.coco_ground_truth()
    assert label_to_cat == {i: i for i in range(1, 11)} and sorted(gt.getImgIds()) == ids
    file_gt, _ = coco.coco_ground_truth()
    key = lambda a: (a["image_id"], a["category_id"], a["bbox"])  # noqa: E731
    assert sorted(map(key, gt.dataset["annotations"])) == sorted(map(key, file_gt.dataset["annotations"]))


def test_train_and_evaluate_on_the_csv_copy(tiny_demo_dir, csv_copy, tmp_path, demo_cfg_path):
    from detkd.engine.trainer import train

    root, names = csv_copy
    out = tmp_path / "run"
    csv_opts = [f"data.{s}.{k}={v}" for s in ("train", "val")
                for k, v in (("type", "csv"), ("file", root / f"{s}.csv"), ("classes", json.dumps(names)))]
    cfg = load_config(demo_cfg_path, tiny_opts(tiny_demo_dir, out, **{"train.max_iters": 3}) + csv_opts)
    assert cfg.data.train == CsvDatasetConfig(file=str(root / "train.csv"), classes=names)
    metrics = train(cfg, progress=False)
    assert json.loads((out / "results.json").read_text())["iterations"] == 3
    assert json.loads((out / "classes.json").read_text()) == names
    assert "train set: 16 images (CSV train.csv: images=16, boxes=" in (out / "log.txt").read_text()
    assert load_config(out / "config.yaml") == cfg
    # The trained model scores the same on the CSV and the COCO copy of the validation set.
    model = load_detector(cfg.model, str(out / "model_final.pth"))
    coco_cfg = load_config(demo_cfg_path, tiny_opts(tiny_demo_dir, out))
    scores = scores_on(model, cfg.data, (cfg.data.val, coco_cfg.data.val), "both")
    assert scores[0]["AP"] == pytest.approx(metrics["AP"], abs=1e-9)
    for key in ("AP", "AP50", "VOC_mAP"):
        assert scores[0][key] == pytest.approx(scores[1][key], abs=1e-9), key


def test_train_and_val_label_maps_that_differ_stop_before_training(tiny_demo_dir, csv_copy, tmp_path,
                                                                   demo_cfg_path):
    from detkd.engine.trainer import train

    root, _ = csv_copy
    out = tmp_path / "run"
    # No classes given: the CSV's sorted names, against the demo val set's category order.
    opts = ["data.train.type=csv", f"data.train.file={root / 'train.csv'}"]
    cfg = load_config(demo_cfg_path, tiny_opts(tiny_demo_dir, out, **{"train.max_iters": 1}) + opts)
    with pytest.raises(DetkdError) as err:
        train(cfg, progress=False)
    assert str(err.value) == ("the training and validation sets have different label maps (label 1: train "
                              "'Ankle boot' vs val 'T-shirt/top'; 10 vs 10 classes): give data.train and "
                              "data.val the same classes")
    assert not list(out.glob("*.pth"))


# ----------------------------------------------------------------------------- layout and bad input


def tiny_csv(root: Path, text: str, images: tuple[str, ...] = ("a.png", "b.png"), size=(40, 20)) -> Path:
    """``root/boxes.csv`` with ``text`` over ``size`` PNGs ``root/img/<name>``."""
    (root / "img").mkdir(parents=True, exist_ok=True)
    for name in images:
        Image.new("RGB", size, (90, 120, 30)).save(root / "img" / name)
    (root / "boxes.csv").write_text(text)
    return root / "boxes.csv"


def test_rows_empty_images_order_and_class_names(tmp_path):
    absolute = tmp_path / "img" / "b.png"
    path = tiny_csv(tmp_path, f"img/a.png,1,2,11,12,dog\n\n{absolute},,,,,\nimg/a.png,0,0,5,5,cat\n"
                              "img/c.png,-3,10,50,30,dog\n", images=("a.png", "b.png", "c.png"))
    ds = CsvDetection(path)
    assert ds.class_names == ["cat", "dog"]  # sorted names of the file
    assert ds.get_image_ids() == [1, 2, 3]  # order of first appearance
    assert ds.stats == {"images": 3, "boxes": 3, "clipped": 1, "dropped_degenerate": 0, "empty_images": 1,
                        "empty_images_skipped": 0}
    assert ds[0][1]["boxes"].tolist() == [[1, 2, 11, 12], [0, 0, 5, 5]] and ds[0][1]["labels"].tolist() == [2, 1]
    assert ds[1][1]["boxes"].shape == (0, 4)
    assert ds[2][1]["boxes"].tolist() == [[0, 10, 40, 20]]  # negative and out-of-image parts clipped
    skipped = CsvDetection(path, ["dog", "cat"], skip_empty=True)
    assert skipped.get_image_ids() == [1, 3] and skipped[0][1]["labels"].tolist() == [1, 2]


def test_header_is_optional_and_exact(tmp_path):
    assert len(CsvDetection(tiny_csv(tmp_path, "File, X1,y1,x2,y2,Class\nimg/a.png,1,1,5,5,cat\n"))) == 1
    path = tiny_csv(tmp_path, "image,xmin,ymin,xmax,ymax,label\nimg/a.png,1,1,5,5,cat\n")
    with pytest.raises(DetkdError) as err:
        CsvDetection(path)
    assert str(err.value).startswith(f"{path}:1: expected 'file,x1,y1,x2,y2,class' (4 numbers and a class name")


@pytest.mark.parametrize("line, problem", [
    ("img/a.png,1,1,5,cat", "(6 fields, the header if any exactly so), got 'img/a.png,1,1,5,cat'"),
    ("img/a.png,1,1,5,5,cat,7", "(6 fields, the header if any exactly so), got 'img/a.png,1,1,5,5,cat,7'"),
    (",1,1,5,5,cat", "(6 fields, the header if any exactly so), got ',1,1,5,5,cat'"),
    ("img/a.png,1,one,5,5,cat", "(4 numbers and a class name, or an image without boxes 'file,,,,,'), "
                                "got 'img/a.png,1,one,5,5,cat'"),
    ("img/a.png,1,nan,5,5,cat", "(4 numbers and a class name, or an image without boxes 'file,,,,,'), "
                                "got 'img/a.png,1,nan,5,5,cat'"),
    ("img/a.png,1,1,5,5,", "(4 numbers and a class name, or an image without boxes 'file,,,,,'), "
                           "got 'img/a.png,1,1,5,5,'"),
    ("img/a.png,1,,5,5,cat", "(4 numbers and a class name, or an image without boxes 'file,,,,,'), "
                             "got 'img/a.png,1,,5,5,cat'"),
])
def test_malformed_row_names_file_line_and_text(tmp_path, line, problem):
    path = tiny_csv(tmp_path, f"img/a.png,1,1,5,5,cat\n{line}\n")
    with pytest.raises(DetkdError) as err:
        CsvDetection(path)
    assert str(err.value) == f"{path}:2: expected 'file,x1,y1,x2,y2,class' {problem}"


@pytest.mark.parametrize("box", ["5,1,5,9", "9,1,5,9", "1,9,5,2"])
def test_inverted_or_empty_box_is_an_error(tmp_path, box):
    path = tiny_csv(tmp_path, f"img/a.png,{box},cat\n")
    with pytest.raises(DetkdError) as err:
        CsvDetection(path)
    assert str(err.value) == (f"{path}:1: box {box} has x2 <= x1 or y2 <= y1 (the columns are the corners "
                              "x1,y1,x2,y2, not x,y,w,h)")


def test_unknown_class_missing_image_and_missing_file(tmp_path):
    path = tiny_csv(tmp_path, "img/a.png,1,1,5,5,cat\nimg/b.png,1,1,5,5,bird\n")
    with pytest.raises(DetkdError) as err:
        CsvDetection(path, ["cat", "dog"])
    assert str(err.value) == f"{path}:2: unknown class 'bird' (classes: cat, dog)"
    path.write_text("img/a.png,1,1,5,5,cat\nimg/gone.png,1,1,5,5,cat\nimg/gone.png,2,2,5,5,cat\n")
    with pytest.raises(DetkdError) as err:
        CsvDetection(path)
    assert str(err.value) == f"{path}:2: image file not found: {tmp_path / 'img' / 'gone.png'}"
    with pytest.raises(DetkdError) as err:
        CsvDetection(tmp_path / "nope.csv")
    assert str(err.value) == f"CSV file not found: {tmp_path / 'nope.csv'}"
    with pytest.raises(DetkdError, match=r"the classes must be distinct and at least one, got \['a', 'a'\]"):
        CsvDetection(path, ["a", "a"])


def test_image_size_change_after_reading_is_an_error(tmp_path):
    path = tiny_csv(tmp_path, "img/a.png,1,1,5,5,cat\n")
    ds = CsvDetection(path)
    Image.new("RGB", (30, 20)).save(tmp_path / "img" / "a.png")
    with pytest.raises(DetkdError, match=r"a\.png is 30x20 but its annotation says 40x20 \(CSV boxes\.csv\)"):
        ds[0]


def test_config_section_options_and_errors(tmp_path, demo_cfg_path):
    path = tiny_csv(tmp_path, "img/a.png,1,1,5,5,cat\nimg/b.png,1,1,5,5,dog\n")
    with pytest.raises(DetkdError) as err:
        load_config(demo_cfg_path, ["data.train.type=csv", f"data.train.file={path}", "data.train.root=x"])
    assert str(err.value) == ("--opts: 'data.train.root' is not an option of type 'csv' "
                              "(options: file, classes, split, skip_empty, max_images)")
    cfg = load_config(demo_cfg_path, ["data.train.type=csv", f"data.train.file={path}", "data.train.max_images=1"])
    dataset = build_dataset(cfg.data.train, cfg.data, train=True, seed=0)
    assert len(dataset) == 1 and dataset.class_names == ["cat", "dog"]
    cfg = load_config(demo_cfg_path, ["data.train.type=csv"])
    with pytest.raises(DetkdError, match="a csv dataset needs 'file'"):
        build_dataset(cfg.data.train, cfg.data, train=True)


# ----------------------------------------------------------------------------- the docs' worked example


def test_the_docs_worked_example_is_the_real_file():
    """docs/datasets.md, "Adding a format", shows detkd/data/csv.py whole, and the one line of
    detkd/data/build.py that registers it."""
    doc = (REPO / "docs" / "datasets.md").read_text()
    blocks = re.findall(r"```python\n# detkd/data/csv\.py\n(.*?)```", doc, flags=re.S)
    assert blocks == [(REPO / "detkd" / "data" / "csv.py").read_text()]
    assert '    "csv": CsvDetection,\n' in (REPO / "detkd" / "data" / "build.py").read_text()
    assert '    "csv": CsvDetection,' in doc and DATASETS["csv"] is CsvDetection
    lines = len(blocks[0].splitlines())
    assert re.search(rf" detkd/data/build\.py \|   2 \+\n detkd/data/csv\.py   \| {lines} \+* *\n"
                     rf" 2 files changed, {lines + 2} insertions\(\+\)", doc)


def test_a_format_is_one_class_and_one_dict_entry(tmp_path, demo_cfg_path, monkeypatch):
    """A throwaway format registered in the test alone gets the config type, option errors and
    build_dataset; a format whose options name another type is refused on registration."""
    from dataclasses import dataclass

    import detkd.data.build as build
    from detkd.config.schema import BaseDatasetConfig
    from detkd.data.records import ImageRecord, RecordDataset

    @dataclass
    class SquaresConfig(BaseDatasetConfig):
        type: str = "squares"
        count: int = 1

    class Squares(RecordDataset):
        options = SquaresConfig

        @classmethod
        def build(cls, ds, data, **common):
            Image.new("RGB", (32, 32)).save(tmp_path / "s.png")
            records = [ImageRecord(tmp_path / "s.png", 32, 32, i + 1, [[4, 4, 20, 20]], [1]) for i in range(ds.count)]
            return cls(records, ["square"], "squares", **common)

    monkeypatch.setitem(DATASETS, "squares", Squares)  # the one entry: the loader's registry derives from it
    cfg = load_config(demo_cfg_path, ["data.train.type=squares", "data.train.count=3"])
    assert cfg.data.train == SquaresConfig(count=3)
    dataset = build_dataset(cfg.data.train, cfg.data, train=False)
    assert len(dataset) == 3 and dataset[2][1]["boxes"].tolist() == [[4, 4, 20, 20]]
    assert dataset.summary() == ("squares: images=3, boxes=3, clipped=0, dropped_degenerate=0, empty_images=0, "
                                 "empty_images_skipped=0")
    with pytest.raises(DetkdError, match=r"'data\.train\.file' is not an option of type 'squares' \(options: count,"):
        load_config(demo_cfg_path, ["data.train.type=squares", "data.train.file=x"])
    monkeypatch.setitem(DATASETS, "circles", Squares)
    with pytest.raises(TypeError, match=r"DATASETS\['circles'\] is Squares, whose options SquaresConfig default to "
                                        r"type 'squares'"):
        build._check_formats()
