"""The YOLO txt dataset: a YOLO copy of the demo data has the COCO copy's ground truth and
trains/evaluates through the real trainer; bad label files are counted or named by file:line."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from conftest import scores_on, tiny_opts
from detkd.recipe import load_config
from detkd.recipe import registries
from detkd.data.build import DATASETS, build_dataset
from detkd.data.coco import CocoDetection
from detkd.data.yolo import YoloDatasetConfig, YoloDetection
from detkd.errors import DetkdError
from detkd.evaluation.inference import load_detector, score_predictions

pytestmark = pytest.mark.usefixtures("one_thread")


def write_yolo_copy(demo_dir: Path, root: Path) -> Path:
    """The demo's COCO data in the ultralytics layout (images copied, boxes normalized)."""
    names = None
    for split in ("train", "val"):
        coco = json.loads((demo_dir / "annotations" / f"instances_{split}.json").read_text())
        names = [c["name"] for c in sorted(coco["categories"], key=lambda c: c["id"])]
        (root / "images" / split).mkdir(parents=True)
        (root / "labels" / split).mkdir(parents=True)
        for img in coco["images"]:
            shutil.copy(demo_dir / split / img["file_name"], root / "images" / split / img["file_name"])
            lines = []
            for a in (a for a in coco["annotations"] if a["image_id"] == img["id"]):
                x, y, w, h = a["bbox"]
                W, H = img["width"], img["height"]
                cx, cy = (x + w / 2) / W, (y + h / 2) / H
                lines.append(f"{a['category_id'] - 1} {cx:.6f} {cy:.6f} {w / W:.6f} {h / H:.6f}")
            (root / "labels" / split / img["file_name"]).with_suffix(".txt").write_text("\n".join(lines) + "\n")
    (root / "data.yaml").write_text(yaml.safe_dump({"path": ".", "train": "images/train", "val": "images/val",
                                                    "names": names}))
    return root


@pytest.fixture(scope="module")
def yolo_copy(tiny_demo_dir, tmp_path_factory) -> Path:
    return write_yolo_copy(tiny_demo_dir, tmp_path_factory.mktemp("yolo"))


def coco_copy(demo_dir: Path, split: str) -> CocoDetection:
    return CocoDetection(demo_dir / split, demo_dir / "annotations" / f"instances_{split}.json")


# ----------------------------------------------------------------------------- same ground truth


@pytest.mark.parametrize("split", ["train", "val"])
def test_yolo_copy_gives_the_coco_copys_ground_truth(tiny_demo_dir, yolo_copy, split):
    coco, yolo = coco_copy(tiny_demo_dir, split), YoloDetection(yolo_copy, split)
    assert yolo.class_names == coco.class_names and len(coco.class_names) == 10
    assert len(yolo) == len(coco) == {"train": 16, "val": 8}[split]
    assert yolo.get_image_ids() == coco.get_image_ids()
    assert yolo.stats == {"images": len(coco), "boxes": coco.stats["boxes"], "clipped": 0, "dropped_degenerate": 0,
                          "missing_label_files": 0, "empty_images": 0, "empty_images_skipped": 0}
    assert yolo.summary() == f"YOLO data.yaml/{split}: " + ", ".join(f"{k}={v}" for k, v in yolo.stats.items())
    for i in range(len(coco)):
        (image_c, target_c), (image_y, target_y) = coco[i], yolo[i]
        assert torch.equal(image_c, image_y)
        assert int(target_c["image_id"]) == int(target_y["image_id"])
        assert torch.equal(target_c["labels"], target_y["labels"])
        assert torch.equal(target_c["orig_size"], target_y["orig_size"])
        torch.testing.assert_close(target_y["boxes"], target_c["boxes"], atol=1e-3, rtol=0)  # 6-decimal labels
    ids = coco.get_image_ids()
    for gt_c, gt_y in zip(coco.voc_ground_truth(ids), yolo.voc_ground_truth(ids)):
        np.testing.assert_allclose(gt_y["boxes"], gt_c["boxes"], atol=1e-3, rtol=0)
        assert np.array_equal(gt_y["labels"], gt_c["labels"]) and not gt_y["difficult"].any()


def test_perfect_detections_score_1_on_both_copies(tiny_demo_dir, yolo_copy):
    coco, yolo = coco_copy(tiny_demo_dir, "val"), YoloDetection(yolo_copy, "val")
    ids = coco.get_image_ids()
    # The COCO copy's ground truth as detections (score 1), scored against each copy's own.
    preds = {i: {"boxes": gt["boxes"], "labels": gt["labels"], "scores": np.ones(len(gt["labels"]))}
             for i, gt in zip(ids, coco.voc_ground_truth(ids))}
    for dataset in (coco, yolo):
        metrics = score_predictions(preds, dataset, "both")
        assert (metrics["AP"], metrics["AP50"], metrics["AP75"], metrics["VOC_mAP"]) == (1.0, 1.0, 1.0, 1.0)
    gt, label_to_cat = yolo.coco_ground_truth()
    assert label_to_cat == {i: i for i in range(1, 11)} and sorted(gt.getImgIds()) == ids
    assert len(gt.getAnnIds()) == coco.stats["boxes"]


def test_train_and_evaluate_on_the_yolo_copy(tiny_demo_dir, yolo_copy, tmp_path, demo_cfg_path):
    from detkd.engine.trainer import train

    out = tmp_path / "run"
    yolo_opts = [f"data.{s}.{k}={v}" for s, split in (("train", "train"), ("val", "val"))
                 for k, v in (("type", "yolo"), ("root", yolo_copy), ("split", split))]
    cfg = load_config(demo_cfg_path, tiny_opts(tiny_demo_dir, out, **{"train.max_iters": 3}) + yolo_opts)
    assert cfg.data.train == YoloDatasetConfig(root=str(yolo_copy), split="train")
    metrics = train(cfg, progress=False)
    assert json.loads((out / "results.json").read_text())["iterations"] == 3
    assert json.loads((out / "classes.json").read_text()) == coco_copy(tiny_demo_dir, "val").class_names
    log = (out / "log.txt").read_text()
    assert "train set: 16 images (YOLO data.yaml/train: images=16, boxes=" in log
    assert load_config(out / "config.yaml") == cfg
    # The trained model scores the same on the YOLO and the COCO copy of the validation set.
    model = load_detector(cfg.model, str(out / "model_final.pth"))
    coco_cfg = load_config(demo_cfg_path, tiny_opts(tiny_demo_dir, out))
    scores = scores_on(model, cfg.data, (cfg.data.val, coco_cfg.data.val), "coco")
    assert scores[0]["AP"] == pytest.approx(metrics["AP"], abs=1e-9)
    assert (scores[0]["AP"], scores[0]["AP50"]) == pytest.approx((scores[1]["AP"], scores[1]["AP50"]), abs=1e-9)


# ----------------------------------------------------------------------------- layout and bad input


def tiny_yolo(root: Path, labels: dict[str, str | None], data: dict | None = None, size=(40, 20)) -> Path:
    """``root/data.yaml`` (names a, b) and one ``size`` PNG per label text (None: no label file)."""
    (root / "images" / "train").mkdir(parents=True)
    (root / "labels" / "train").mkdir(parents=True)
    for stem, text in labels.items():
        Image.new("RGB", size, (90, 120, 30)).save(root / "images" / "train" / f"{stem}.png")
        if text is not None:
            (root / "labels" / "train" / f"{stem}.txt").write_text(text)
    (root / "data.yaml").write_text(yaml.safe_dump(data or {"train": "images/train", "names": ["a", "b"]}))
    return root


def test_out_of_range_values_are_clipped_or_dropped_and_counted(tmp_path):
    root = tiny_yolo(tmp_path, {"x": "0 0.95 0.5 0.2 0.2\n"     # right edge at 1.05: clipped to the image
                                     "1 1.5 0.5 0.2 0.2\n"      # entirely outside: dropped
                                     "1 0.5 0.5 0.0 0.4\n"      # zero width: dropped
                                     "0 0.90005 0.5 0.2 0.2\n"})  # edge at 1.00005: rounding, set to 1, not counted
    ds = YoloDetection(root, "train")
    assert ds.stats == {"images": 1, "boxes": 2, "clipped": 1, "dropped_degenerate": 2, "missing_label_files": 0,
                        "empty_images": 0, "empty_images_skipped": 0}
    _, target = ds[0]
    torch.testing.assert_close(target["boxes"], torch.tensor([[34.0, 8.0, 40.0, 12.0], [32.002, 8.0, 40.0, 12.0]]))
    assert target["labels"].tolist() == [1, 1]


def test_missing_label_file_is_an_empty_image_and_empty_file_no_boxes(tmp_path):
    root = tiny_yolo(tmp_path, {"a": "1 0.5 0.5 0.5 0.5\n", "b": None, "c": ""})
    ds = YoloDetection(root, "train")
    assert ds.stats == {"images": 3, "boxes": 1, "clipped": 0, "dropped_degenerate": 0, "missing_label_files": 1,
                        "empty_images": 2, "empty_images_skipped": 0}
    assert [len(ds[i][1]["boxes"]) for i in range(3)] == [1, 0, 0] and ds[0][1]["labels"].tolist() == [2]
    skipped = YoloDetection(root, "train", skip_empty=True)
    assert len(skipped) == 1 and skipped.get_image_ids() == [1] and skipped.stats["empty_images_skipped"] == 2
    skipped.limit(0)
    assert len(skipped) == 0 and (skipped.stats["images"], skipped.stats["boxes"]) == (0, 0)


def test_unknown_class_index_names_file_line_and_range(tmp_path):
    root = tiny_yolo(tmp_path, {"x": "0 0.5 0.5 0.2 0.2\n2 0.5 0.5 0.2 0.2\n"})
    with pytest.raises(DetkdError) as err:
        YoloDetection(root, "train")
    assert str(err.value) == (f"{root / 'labels/train/x.txt'}:2: class index 2 is not in 0..1 "
                              "(data.yaml names 2 classes)")


@pytest.mark.parametrize("line", ["0 0.5 0.5 0.2", "0 0.5 0.5 0.2 0.2 0.1", "0 0.5 wide 0.2 0.2", "0 nan 0.5 0.2 0.2"])
def test_malformed_line_names_file_line_and_text(tmp_path, line):
    root = tiny_yolo(tmp_path, {"x": f"\n{line}\n"})
    with pytest.raises(DetkdError) as err:
        YoloDetection(root, "train")
    assert str(err.value) == f"{root / 'labels/train/x.txt'}:2: expected 'class cx cy w h' (5 numbers), got '{line}'"


def test_data_yaml_errors_name_the_path_or_key(tmp_path):
    with pytest.raises(DetkdError) as err:
        YoloDetection(tmp_path, "train")
    assert str(err.value) == f"YOLO data.yaml not found: {tmp_path / 'data.yaml'}"
    root = tiny_yolo(tmp_path / "d", {"x": ""})
    with pytest.raises(DetkdError) as err:
        YoloDetection(root, "val")
    assert str(err.value) == (f"{root / 'data.yaml'}: no 'val' entry (the image folder(s) of split 'val'; "
                              "it has: train)")
    (root / "data.yaml").write_text(yaml.safe_dump({"train": "images/nope", "names": ["a"]}))
    with pytest.raises(DetkdError) as err:
        YoloDetection(root, "train")
    assert str(err.value) == f"{root / 'data.yaml'}: 'train' image folder not found: {root / 'images/nope'}"
    (root / "list.txt").write_text("images/train/x.png\n")
    (root / "data.yaml").write_text(yaml.safe_dump({"train": "list.txt", "names": ["a"]}))
    with pytest.raises(DetkdError, match="image list files are not supported"):
        YoloDetection(root, "train")
    (root / "data.yaml").write_text(yaml.safe_dump({"train": "images/train", "names": {0: "a", 2: "b"}}))
    with pytest.raises(DetkdError, match=r"'names' keys must be the class indices 0\.\.1, got \[0, 2\]"):
        YoloDetection(root, "train")


def test_path_key_folder_lists_and_names_mapping(tmp_path):
    data = tiny_yolo(tmp_path / "data", {"x": "1 0.5 0.5 0.5 0.5\n"})
    tiny_yolo(tmp_path / "data" / "more", {"y": "0 0.25 0.5 0.5 0.5\n"})  # .../more/images/train/y.png
    cfg_dir = tmp_path / "cfg"
    cfg_dir.mkdir()
    (cfg_dir / "data.yaml").write_text(yaml.safe_dump({"path": "../data", "names": {0: "cat", 1: "dog"}, "nc": 2,
                                                       "train": ["images/train", "more/images/train"]}))
    ds = YoloDetection(cfg_dir, "train")
    assert ds.class_names == ["cat", "dog"] and len(ds) == 2
    assert [ds[i][1]["labels"].tolist() for i in range(2)] == [[2], [1]]
    torch.testing.assert_close(ds[1][1]["boxes"], torch.tensor([[0.0, 5.0, 20.0, 15.0]]))
    (cfg_dir / "abs.yaml").write_text(yaml.safe_dump({"path": str(data), "train": "images/train", "names": ["a", "b"]}))
    assert len(YoloDetection(cfg_dir / "abs.yaml", "train")) == 1


def test_config_rejects_options_of_another_type_and_builds_yolo(tmp_path, demo_cfg_path):
    with pytest.raises(DetkdError) as err:
        load_config(demo_cfg_path, ["data.train.type=yolo", f"data.train.root={tmp_path}", "data.train.ann_file=j"])
    assert str(err.value) == ("--opts: 'data.train.ann_file' is not an option of type 'yolo' "
                              "(options: root, split, skip_empty, max_images)")
    root = tiny_yolo(tmp_path, {"a": "0 0.5 0.5 0.5 0.5\n", "b": "1 0.5 0.5 0.5 0.5\n"})
    cfg = load_config(demo_cfg_path, ["data.train.type=yolo", f"data.train.root={root}", "data.train.max_images=1"])
    dataset = build_dataset(cfg.data.train, cfg.data, train=True, seed=0)
    assert len(dataset) == 1 and dataset.class_names == ["a", "b"]
    assert dataset.summary() == ("YOLO data.yaml/train: images=1, boxes=1, clipped=0, dropped_degenerate=0, "
                                 "missing_label_files=0, empty_images=0, empty_images_skipped=0")
    # One registry: the loader's options classes are the formats' own (a builder per options class).
    assert registries()["datasets"] == {name: fmt.options for name, fmt in DATASETS.items()} and "yolo" in DATASETS


def test_image_file_is_the_items_own_file(tiny_demo_dir, yolo_copy):
    coco, yolo = coco_copy(tiny_demo_dir, "val"), YoloDetection(yolo_copy, "val")
    assert [yolo.image_file(i) for i in range(len(yolo))] == [yolo_copy / "images" / "val" / coco.image_file(i).name
                                                              for i in range(len(coco))]
