"""Tests for detkd.data: VOC and COCO datasets, augmentations, demo generator, collate."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import detkd.data.demo as demo
from detkd.data import (
    AugmentConfig,
    CocoDetection,
    VOCDetection,
    build_transforms,
    collate_fn,
    generate_demo_dataset,
)
from detkd.config.build import build_dataclass
from detkd.errors import DetkdError

# ---------------------------------------------------------------------------- VOC


def voc_object(name: str, box: tuple[int, int, int, int], difficult: int = 0) -> str:
    xmin, ymin, xmax, ymax = box
    return (
        f"<object><name>{name}</name><difficult>{difficult}</difficult><bndbox>"
        f"<xmin>{xmin}</xmin><ymin>{ymin}</ymin><xmax>{xmax}</xmax><ymax>{ymax}</ymax>"
        "</bndbox></object>"
    )


def voc_xml(objects: list[str], size: tuple[int, int] | None = (40, 30)) -> str:
    size_xml = f"<size><width>{size[0]}</width><height>{size[1]}</height></size>" if size else ""
    return f"<annotation>{size_xml}{''.join(objects)}</annotation>"


@pytest.fixture
def voc_root(tmp_path: Path) -> Path:
    """VOC2007-style tree: 3 images of 40x30 with edge-case annotations."""
    root = tmp_path / "VOCdevkit" / "VOC2007"
    for sub in ("Annotations", "JPEGImages", "ImageSets/Main"):
        (root / sub).mkdir(parents=True)
    anns = {
        "000001": voc_xml(
            [
                voc_object("dog", (1, 1, 10, 20)),  # -> [0, 0, 10, 20]
                voc_object("person", (5, 5, 15, 15), difficult=1),  # -> [4, 4, 15, 15]
                voc_object("car", (20, 10, 50, 25)),  # exceeds W=40 -> clipped
                voc_object("cat", (30, 1, 40, 30)),  # touches right/bottom border exactly
            ]
        ),
        "000002": voc_xml(
            [
                voc_object("dog", (10, 5, 8, 20)),  # xmax < xmin: degenerate
                voc_object("bird", (2, 2, 12, 12), difficult=1),
            ]
        ),
        "000003": voc_xml([], size=None),  # no <size>: read from the JPEG
    }
    for name, xml in anns.items():
        (root / "Annotations" / f"{name}.xml").write_text(xml)
        Image.new("RGB", (40, 30), (10, 20, 30)).save(root / "JPEGImages" / f"{name}.jpg")
    (root / "ImageSets" / "Main" / "trainval.txt").write_text("000001\n000002\n000003\n")
    return root


def test_voc_parsing_and_stats(voc_root: Path) -> None:
    ds = VOCDetection(voc_root)
    assert len(ds) == 3
    assert ds.stats == {
        "images": 3,
        "boxes": 3,
        "clipped": 1,
        "dropped_degenerate": 1,
        "difficult_ignored": 2,
        "empty_images": 2,
        "empty_images_skipped": 0,
    }
    assert "clipped=1" in ds.summary()
    image, target = ds[0]
    assert image.shape == (3, 30, 40) and image.dtype == torch.float32
    assert 0.0 <= float(image.min()) and float(image.max()) <= 1.0
    # 1-based inclusive VOC pixels -> 0-based continuous xyxy; difficult excluded
    expected = torch.tensor([[0, 0, 10, 20], [19, 9, 40, 25], [29, 0, 40, 30]], dtype=torch.float32)
    assert torch.equal(target["boxes"], expected)
    names = ["dog", "car", "cat"]
    assert target["labels"].tolist() == [ds.class_names.index(n) + 1 for n in names]
    assert target["difficult"].tolist() == [False, False, False]
    assert target["image_id"].item() == 1 and target["image_id"].dtype == torch.int64
    assert target["orig_size"].tolist() == [30, 40]
    assert target["iscrowd"].tolist() == [0, 0, 0]
    assert torch.allclose(target["area"], torch.tensor([200.0, 336.0, 330.0]))
    # evaluation view keeps the difficult box
    ann = ds.get_annotation(0)
    assert ann["difficult"].tolist() == [False, True, False, False]
    assert ann["boxes"][1].tolist() == [4, 4, 15, 15]
    assert ds.get_annotation(2)["width"] == 40  # size read from the image
    assert ds[1][1]["boxes"].shape == (0, 4)
    assert ds.get_image_ids() == [1, 2, 3]


def test_voc_use_difficult_skip_empty_and_to_coco(voc_root: Path) -> None:
    ds = VOCDetection(voc_root, use_difficult=True)
    _, target = ds[0]
    assert target["difficult"].tolist() == [False, True, False, False]
    assert ds.stats["boxes"] == 5 and ds.stats["empty_images"] == 1

    skipped = VOCDetection(voc_root, skip_empty=True)
    assert len(skipped) == 1 and skipped.stats["empty_images_skipped"] == 2
    assert skipped.get_image_ids() == [1]

    coco = ds.to_coco()
    assert sorted(coco.getCatIds()) == list(range(1, 21))
    anns = coco.loadAnns(coco.getAnnIds(imgIds=[1]))
    assert [a["iscrowd"] for a in anns] == [0, 1, 0, 0]
    assert anns[0]["bbox"] == [0.0, 0.0, 10.0, 20.0]


def test_voc_errors_name_the_path(voc_root: Path) -> None:
    bad = voc_root / "Annotations" / "000002.xml"
    bad.write_text("<annotation><object>")
    with pytest.raises(DetkdError, match="000002.xml"):
        VOCDetection(voc_root)
    bad.write_text(voc_xml([voc_object("unicorn", (1, 1, 5, 5))]))
    with pytest.raises(DetkdError, match=r"000002\.xml.*unicorn"):
        VOCDetection(voc_root)
    with pytest.raises(DetkdError, match=r"ImageSets/Main/test\.txt"):
        VOCDetection(voc_root, split="test")
    bad.write_text(voc_xml([]))
    ds = VOCDetection(voc_root)
    (voc_root / "JPEGImages" / "000001.jpg").unlink()
    with pytest.raises(DetkdError, match="000001.jpg"):
        ds[0]


# --------------------------------------------------------------------------- COCO


@pytest.fixture
def coco_files(tmp_path: Path) -> tuple[Path, Path]:
    """Three images (RGB, grayscale, RGBA) and edge-case annotations."""
    image_dir = tmp_path / "images"
    image_dir.mkdir()
    Image.new("RGB", (40, 30), (200, 0, 0)).save(image_dir / "a.jpg")
    Image.new("L", (50, 40), 128).save(image_dir / "b.png")
    Image.new("RGBA", (20, 10), (0, 0, 255, 128)).save(image_dir / "c.png")
    data = {
        "images": [
            {"id": 10, "file_name": "a.jpg", "width": 40, "height": 30},
            {"id": 20, "file_name": "b.png", "width": 50, "height": 40},
            {"id": 30, "file_name": "c.png", "width": 20, "height": 10},  # no annotations
        ],
        "categories": [{"id": 11, "name": "bird"}, {"id": 3, "name": "cat"}, {"id": 7, "name": "dog"}],
        "annotations": [
            {"id": 1, "image_id": 10, "category_id": 3, "bbox": [1, 2, 10, 8], "iscrowd": 0},
            {"id": 2, "image_id": 10, "category_id": 7, "bbox": [0, 0, 30, 30], "iscrowd": 1},
            {"id": 3, "image_id": 10, "category_id": 11, "bbox": [35, 20, 10, 20], "iscrowd": 0},
            {"id": 4, "image_id": 20, "category_id": 7, "bbox": [5, 5, 0, 10], "iscrowd": 0},
            {"id": 5, "image_id": 20, "category_id": 3, "bbox": [20, 20, -5, 5], "iscrowd": 0},
            {"id": 6, "image_id": 20, "category_id": 11, "bbox": [60, 10, 5, 5], "iscrowd": 0},
        ],
    }
    ann_file = tmp_path / "instances.json"
    ann_file.write_text(json.dumps(data))
    return image_dir, ann_file


def test_coco_label_mapping_cleaning_and_items(coco_files: tuple[Path, Path]) -> None:
    ds = CocoDetection(*coco_files)
    assert ds.cat_ids == [3, 7, 11]
    assert ds.cat_id_to_label == {3: 1, 7: 2, 11: 3}
    assert ds.label_to_cat_id == {1: 3, 2: 7, 3: 11}
    assert ds.class_names == ["cat", "dog", "bird"]
    assert ds.stats == {
        "images": 3,
        "boxes": 2,
        "clipped": 1,
        "dropped_degenerate": 3,
        "crowd_ignored": 1,
        "empty_images": 2,
        "empty_images_skipped": 0,
    }
    assert "crowd_ignored=1" in ds.summary()
    assert ds.get_image_ids() == [10, 20, 30]
    assert len(ds.coco.getAnnIds()) == 6  # raw annotations stay available for evaluation

    image, target = ds[0]
    assert image.shape == (3, 30, 40)
    assert torch.equal(target["boxes"], torch.tensor([[1.0, 2, 11, 10], [35, 20, 40, 30]]))
    assert target["labels"].tolist() == [1, 3]
    assert target["image_id"].item() == 10
    assert target["iscrowd"].tolist() == [0, 0]
    assert target["orig_size"].tolist() == [30, 40]
    gray, empty = ds[1]
    assert gray.shape == (3, 40, 50) and empty["boxes"].shape == (0, 4)
    assert empty["labels"].dtype == torch.int64
    rgba, _ = ds[2]
    assert rgba.shape == (3, 10, 20)

    skipped = CocoDetection(*coco_files, skip_empty=True)
    assert skipped.get_image_ids() == [10] and skipped.stats["empty_images_skipped"] == 2


def test_coco_min_box_size(coco_files: tuple[Path, Path]) -> None:
    ds = CocoDetection(*coco_files, min_box_size=6.0)  # the clipped 5x10 box is too narrow
    assert ds.stats["dropped_degenerate"] == 4 and ds.stats["clipped"] == 0
    assert ds[0][1]["labels"].tolist() == [1]


def test_coco_errors_name_the_problem(coco_files: tuple[Path, Path], tmp_path: Path) -> None:
    image_dir, ann_file = coco_files
    with pytest.raises(DetkdError, match="missing.json"):
        CocoDetection(image_dir, tmp_path / "missing.json")
    with pytest.raises(DetkdError, match="nope"):
        CocoDetection(tmp_path / "nope", ann_file)
    corrupt = tmp_path / "corrupt.json"
    corrupt.write_text('{"images": [')
    with pytest.raises(DetkdError, match=r"corrupt\.json.*line 1"):
        CocoDetection(image_dir, corrupt)

    data = json.loads(ann_file.read_text())
    data["annotations"][2]["category_id"] = 99
    ann_file.write_text(json.dumps(data))
    with pytest.raises(DetkdError, match="annotation id 3 .*category id 99"):
        CocoDetection(image_dir, ann_file)
    data["annotations"][2]["category_id"] = 3
    data["annotations"][2]["image_id"] = 12345
    ann_file.write_text(json.dumps(data))
    with pytest.raises(DetkdError, match="annotation id 3 .*image id 12345"):
        CocoDetection(image_dir, ann_file)

    data["annotations"][2]["image_id"] = 10
    ann_file.write_text(json.dumps(data))
    (image_dir / "b.png").unlink()
    ds = CocoDetection(image_dir, ann_file)  # missing files are found lazily...
    with pytest.raises(DetkdError, match="b.png"):
        ds[1]
    with pytest.raises(DetkdError, match="b.png"):  # ...or up front on request
        CocoDetection(image_dir, ann_file, check_files=True)


# --------------------------------------------------------------------- transforms


def test_hflip_moves_boxes_exactly() -> None:
    transform = build_transforms(AugmentConfig(hflip=1.0), train=True)
    image = np.zeros((50, 100, 3), np.uint8)
    image[:, :10] = 255
    boxes = np.array([[10, 5, 30, 20], [0, 0, 100, 50]], np.float32)
    out_image, out_boxes, out_labels = transform(image, boxes, np.array([4, 7]))
    assert out_image[:, 90:].min() == 255 and out_image[:, :90].max() == 0
    np.testing.assert_allclose(out_boxes, [[70, 5, 90, 20], [0, 0, 100, 50]])
    assert out_labels.tolist() == [4, 7]


def test_eval_transform_is_identity() -> None:
    transform = build_transforms(AugmentConfig(scale_jitter=(0.5, 2.0), color_jitter=0.5), train=False)
    image = np.random.default_rng(0).integers(0, 255, (20, 30, 3), dtype=np.uint8)
    boxes = np.array([[1, 2, 3, 4]], np.float32)
    out = transform(image, boxes, np.array([1]))
    assert out[0] is image and out[1] is boxes


def test_augmentation_keeps_boxes_valid_and_aligned() -> None:
    """Each box is a solid rectangle of its label's colour; after augmentation the pixel at
    every output box's centre must still have that colour."""
    colours = {1: (255, 0, 0), 2: (0, 255, 0), 3: (0, 0, 255), 4: (255, 255, 0)}
    boxes = np.array([[0, 0, 30, 20], [40, 5, 80, 45], [85, 30, 120, 80], [10, 50, 60, 78]], np.float32)
    image = np.zeros((80, 120, 3), np.uint8)
    for (x1, y1, x2, y2), label in zip(boxes.astype(int), colours):
        image[y1:y2, x1:x2] = colours[label]
    labels = np.array(list(colours))
    transform = build_transforms(AugmentConfig(hflip=0.5, scale_jitter=(0.6, 1.6), min_box_size=4), True)
    torch.manual_seed(0)
    seen_counts = set()
    for _ in range(100):
        out_image, out_boxes, out_labels = transform(image, boxes, labels)
        h, w = out_image.shape[:2]
        assert out_boxes.dtype == np.float32 and len(out_boxes) == len(out_labels)
        assert (out_boxes[:, 0] >= 0).all() and (out_boxes[:, 1] >= 0).all()
        assert (out_boxes[:, 2] <= w).all() and (out_boxes[:, 3] <= h).all()
        assert ((out_boxes[:, 2:] - out_boxes[:, :2]) >= 4).all()
        for box, label in zip(out_boxes, out_labels):
            cx, cy = int((box[0] + box[2]) / 2), int((box[1] + box[3]) / 2)
            assert tuple(out_image[cy, cx]) == pytest.approx(colours[int(label)], abs=40)
        seen_counts.add(len(out_boxes))
    assert len(seen_counts) > 1  # zoom-in really did crop some boxes away

    jitter = build_transforms(AugmentConfig(scale_jitter=(0.8, 1.2), color_jitter=0.4), True)
    torch.manual_seed(1)
    first = jitter(image, boxes, labels)
    torch.manual_seed(1)
    second = jitter(image, boxes, labels)
    assert np.array_equal(first[0], second[0]) and np.array_equal(first[1], second[1])
    empty = jitter(image, np.zeros((0, 4), np.float32), np.zeros(0, np.int64))
    assert empty[1].shape == (0, 4) and empty[2].shape == (0,)


@pytest.mark.parametrize(
    "kwargs, key",
    [
        ({"hflip": 1.5}, "augment.hflip"),
        ({"scale_jitter": (1.2, 0.8)}, "augment.scale_jitter"),
        ({"scale_jitter": (1.0,)}, "augment.scale_jitter"),
        ({"color_jitter": -0.1}, "augment.color_jitter"),
        ({"min_box_size": -1}, "augment.min_box_size"),
    ],
)
def test_augment_config_validation(kwargs: dict, key: str) -> None:
    with pytest.raises(DetkdError, match=key):
        build_dataclass(AugmentConfig, kwargs, "x.yaml", prefix="data.augment.")


def test_augment_config_accepts_lists() -> None:
    built = build_dataclass(AugmentConfig, {"scale_jitter": [0.5, 1.5]}, "x.yaml", prefix="data.augment.")
    assert built.scale_jitter == (0.5, 1.5)


# --------------------------------------------------------------------------- demo


def test_demo_boxes_are_exact_and_tight(monkeypatch: pytest.MonkeyPatch) -> None:
    """On a black background every non-black pixel lies in a box and every box edge
    row/column contains a pasted pixel."""
    monkeypatch.setattr(demo, "random_background", lambda rng, parts, size: np.zeros((size, size, 3), np.float32))
    sources = demo.load_sources()
    params = demo.DemoParams(image_size=96, min_objects=3, max_objects=4, min_scale=20, max_scale=48)
    for i in range(10):
        image, objects = demo.generate_image(np.random.default_rng(i), sources, "train", params)
        assert image.shape == (96, 96, 3) and len(objects) >= 1
        painted = image.max(axis=2) > 0
        inside = np.zeros_like(painted)
        for obj in objects:
            x1, y1, x2, y2 = obj["box"]
            assert 0 <= x1 < x2 <= 96 and 0 <= y1 < y2 <= 96 and 0 <= obj["label"] <= 9
            inside[y1:y2, x1:x2] = True
            region = painted[y1:y2, x1:x2]
            assert region[0].any() and region[-1].any() and region[:, 0].any() and region[:, -1].any()
            assert 0 < obj["area"] <= (x2 - x1) * (y2 - y1)
        assert not (painted & ~inside).any()


def test_demo_generator_deterministic_cached_and_loadable(tmp_path: Path) -> None:
    kwargs = dict(seed=3, num_train=6, num_val=2, image_size=64, max_scale=40)
    paths = generate_demo_dataset(tmp_path / "a", **kwargs)
    other = generate_demo_dataset(tmp_path / "b", **kwargs)
    for key in ("train_ann", "val_ann"):
        assert paths[key].read_bytes() == other[key].read_bytes()
    files = sorted(p.name for p in paths["train_images"].iterdir())
    assert files == [f"{i:06d}.jpg" for i in range(6)]
    for split in ("train_images", "val_images"):
        for path in paths[split].iterdir():
            assert path.read_bytes() == (other[split] / path.name).read_bytes()

    # cache hit: nothing is rewritten; force regenerates
    stamps = {p: p.stat().st_mtime_ns for p in paths["root"].rglob("*") if p.is_file()}
    assert generate_demo_dataset(tmp_path / "a", **kwargs) == paths
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps
    meta = json.loads(paths["meta"].read_text())
    assert meta["params"]["seed"] == 3 and len(meta["hash"]) == 64
    paths["meta"].write_text("{}")
    generate_demo_dataset(tmp_path / "a", **kwargs)
    assert json.loads(paths["meta"].read_text())["hash"] == meta["hash"]

    different = generate_demo_dataset(tmp_path / "c", **{**kwargs, "seed": 4})
    assert different["train_ann"].read_bytes() != paths["train_ann"].read_bytes()

    ds = CocoDetection(paths["train_images"], paths["train_ann"], check_files=True)
    assert len(ds) == 6 and ds.class_names[0] == "T-shirt/top" and len(ds.class_names) == 10
    assert ds.stats["clipped"] == 0 and ds.stats["dropped_degenerate"] == 0
    image, target = ds[0]
    assert image.shape == (3, 64, 64) and len(target["boxes"]) >= 1
    assert (target["boxes"][:, 2:] <= 64).all() and (target["boxes"][:, :2] >= 0).all()
    images, targets = collate_fn([ds[0], ds[1]])
    assert len(images) == 2 and targets[1]["image_id"].item() == 2


def test_demo_rejects_bad_params(tmp_path: Path) -> None:
    with pytest.raises(DetkdError, match="max_scale"):
        generate_demo_dataset(tmp_path, image_size=64, max_scale=100)
    with pytest.raises(DetkdError, match="backgrounds.npz|fashion_mnist_subset.npz"):
        generate_demo_dataset(tmp_path, num_train=1, num_val=1, sources_dir=tmp_path / "none")


def test_max_images_keeps_the_first_items_and_updates_the_counts(voc_root: Path, coco_files: tuple[Path, Path]) -> None:
    from detkd.config.schema import DataConfig
    from detkd.data.build import build_dataset, dataset_options

    image_dir, ann_file = coco_files
    coco = build_dataset(dataset_options(type="coco", image_dir=str(image_dir), ann_file=str(ann_file), max_images=2),
                         DataConfig(), train=False)
    assert coco.get_image_ids() == [10, 20] and (coco.stats["images"], coco.stats["boxes"]) == (2, 2)
    voc = build_dataset(dataset_options(type="voc", root=str(voc_root), split="trainval", max_images=1),
                        DataConfig(), train=True, seed=0)
    assert len(voc) == 1 and voc.get_image_ids() == [1] and (voc.stats["images"], voc.stats["boxes"]) == (1, 3)


def test_image_file_names_each_items_own_file(voc_root: Path, coco_files: tuple[Path, Path]) -> None:
    """``image_file(i)`` is the file item ``i`` is read from (VOC: also when empty images are skipped)."""
    voc = VOCDetection(voc_root, use_difficult=True, skip_empty=True)  # 000003 has no boxes
    assert [voc.image_file(i) for i in range(len(voc))] == [voc_root / "JPEGImages" / f"00000{n}.jpg" for n in (1, 2)]
    image_dir, ann_file = coco_files
    coco = CocoDetection(image_dir, ann_file)
    assert [coco.image_file(i) for i in range(len(coco))] == [image_dir / n for n in ("a.jpg", "b.png", "c.png")]
    for i in range(len(coco)):  # three sizes: each item is read from its own file
        with Image.open(coco.image_file(i)) as img:
            assert tuple(coco[i][1]["orig_size"].tolist()) == (img.height, img.width)
