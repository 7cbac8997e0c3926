"""YOLO txt detection dataset (the ultralytics layout).

::

    ROOT/data.yaml          path: .            # optional: relative to this file's folder, or absolute
                            train: images/train   # a folder, or a list of folders, under `path`
                            val: images/val
                            names: [cat, dog]     # or {0: cat, 1: dog}
    ROOT/images/train/x.jpg
    ROOT/labels/train/x.txt   one "class cx cy w h" line per box, normalized to 0..1

The label file of ``.../images/<split>/x.jpg`` is ``.../labels/<split>/x.txt`` (the last
``images`` folder of the path replaced by ``labels``; an image with no ``images`` folder in
its path has its label file beside it), as ultralytics reads them. See docs/datasets.md.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from pycocotools.coco import COCO

from detkd.config.load import parse_yaml_file
from detkd.data.base import DetectionDataset
from detkd.data.coco import build_coco_api
from detkd.data.utils import (
    DetectionTransform,
    apply_transforms,
    clip_boxes,
    format_stats,
    image_to_tensor,
    load_rgb_image,
    make_target,
    read_image_size,
)
from detkd.errors import DetkdError

IMAGE_SUFFIXES = (".bmp", ".jpeg", ".jpg", ".png", ".tif", ".tiff", ".webp")
# Box edges this far (normalized) outside 0..1 are rounding in the label file (a box drawn
# to the image border, written with a few decimals): they are set to the border, not counted
# as clipped.
EDGE_TOLERANCE = 1e-4


def find_data_yaml(root: str | Path) -> Path:
    """``root/data.yaml``, or ``root`` itself when it is a ``.yaml`` file."""
    root = Path(root)
    path = root if root.suffix in (".yaml", ".yml") else root / "data.yaml"
    if not path.is_file():
        raise DetkdError(f"YOLO data.yaml not found: {path}")
    return path


def read_data_yaml(path: Path) -> dict[str, Any]:
    """The mapping of a ``data.yaml`` (YAML errors name the file)."""
    data = parse_yaml_file(path)
    if not isinstance(data, dict):
        raise DetkdError(f"{path}: the top level must be a mapping (path, train, val, names)")
    return data


def class_names_of(data: dict[str, Any], path: Path) -> list[str]:
    """``names`` as a list (a list, or a mapping of the indices 0..N-1); ``nc`` must agree."""
    names = data.get("names")
    if isinstance(names, dict):
        if not all(type(k) is int for k in names) or sorted(names) != list(range(len(names))):
            raise DetkdError(f"{path}: 'names' keys must be the class indices 0..{len(names) - 1}, "
                             f"got {sorted(names, key=str)}")
        names = [names[i] for i in range(len(names))]
    if not isinstance(names, list) or not names:
        raise DetkdError(f"{path}: 'names' must be a non-empty list of class names (or a mapping index -> name)")
    names = [str(n) for n in names]
    if len(set(names)) != len(names):
        raise DetkdError(f"{path}: 'names' has duplicates: {names}")
    if "nc" in data and data["nc"] != len(names):
        raise DetkdError(f"{path}: 'nc' is {data['nc']} but 'names' has {len(names)} entries")
    return names


def split_image_files(data: dict[str, Any], split: str, path: Path) -> list[Path]:
    """Sorted image files of ``split``'s folder(s) (searched recursively)."""
    entry = data.get(split)
    if entry is None or entry == "" or entry == []:
        present = [k for k in ("train", "val", "test") if data.get(k)]
        raise DetkdError(f"{path}: no '{split}' entry (the image folder(s) of split '{split}'; "
                         f"it has: {', '.join(present) or 'none'})")
    folders = entry if isinstance(entry, list) else [entry]
    if not all(isinstance(f, str) and f for f in folders):
        raise DetkdError(f"{path}: '{split}' must be a folder or a list of folders, got {entry!r}")
    base = path.parent
    if data.get("path"):
        base = base / str(data["path"])  # an absolute 'path' replaces the folder
    files: set[Path] = set()
    for folder in folders:
        where = base / folder
        if where.is_file():
            raise DetkdError(f"{path}: '{split}' names a file ({where}); image list files are not "
                             "supported: name the image folder(s) instead")
        if not where.is_dir():
            raise DetkdError(f"{path}: '{split}' image folder not found: {where}")
        files.update(p for p in where.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    return sorted(files)


def label_file_of(image: Path) -> Path:
    """``.../images/<...>/x.jpg`` -> ``.../labels/<...>/x.txt`` (last ``images`` folder)."""
    parts = list(image.parts)
    for i in range(len(parts) - 2, -1, -1):
        if parts[i] == "images":
            parts[i] = "labels"
            break
    return Path(*parts).with_suffix(".txt")


def parse_label_file(label_file: Path, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """``(class indices [N] int64, cx cy w h [N,4] float64)`` of one label file.

    A line that is not five numbers, or whose class is not an integer in ``0..C-1``, is a
    one-line :class:`DetkdError` naming ``file:line``; blank lines are skipped.
    """
    classes, values = [], []
    for lineno, line in enumerate(label_file.read_text().splitlines(), start=1):
        text = line.strip()
        if not text:
            continue
        fields = text.split()
        try:
            numbers = [float(v) for v in fields]
        except ValueError:
            numbers = []
        if len(fields) != 5 or len(numbers) != 5 or not all(math.isfinite(v) for v in numbers):
            raise DetkdError(f"{label_file}:{lineno}: expected 'class cx cy w h' (5 numbers), got {text!r}")
        cls = numbers[0]
        if not cls.is_integer() or not 0 <= cls < num_classes:
            raise DetkdError(f"{label_file}:{lineno}: class index {fields[0]} is not in 0..{num_classes - 1} "
                             f"(data.yaml names {num_classes} classes)")
        classes.append(int(cls))
        values.append(numbers[1:])
    return np.array(classes, dtype=np.int64), np.array(values, dtype=np.float64).reshape(-1, 4)


class YoloDetection(DetectionDataset):
    """Detection dataset over YOLO txt labels (ultralytics layout, see the module docs).

    ``root`` is the folder of ``data.yaml`` (or the YAML file itself) and ``split`` its key
    naming the image folder(s). Labels are ``class index + 1`` in the order of ``names``.
    Each image's size is read once from its file header; boxes (``cx cy w h`` normalized)
    become xyxy pixels, are clipped to the image and cleaned as in
    :class:`~detkd.data.coco.CocoDetection`, and counted in :attr:`stats`: ``clipped``
    (partly outside the image: an edge outside 0..1 by more than :data:`EDGE_TOLERANCE`;
    within it, the edge is set to the border uncounted), ``dropped_degenerate`` (not
    positive or below ``min_box_size`` after clipping), ``missing_label_files`` (images
    without a label file: no boxes, as ultralytics reads them), ``empty_images`` and
    ``empty_images_skipped`` (``skip_empty``). An empty label file is an image without boxes.

    ``image_id`` is the 1-based position of the image among the split's sorted image paths
    (stable under ``skip_empty`` and ``max_images``).
    """

    def __init__(
        self,
        root: str | Path,
        split: str = "train",
        transforms: DetectionTransform | None = None,
        skip_empty: bool = False,
        min_box_size: float = 1.0,
    ) -> None:
        self.data_yaml = find_data_yaml(root)
        self.split = split
        self.transforms = transforms
        self.min_box_size = float(min_box_size)
        data = read_data_yaml(self.data_yaml)
        self.class_names: list[str] = class_names_of(data, self.data_yaml)
        files = split_image_files(data, split, self.data_yaml)
        self.stats: dict[str, int] = {
            "images": 0,
            "boxes": 0,
            "clipped": 0,
            "dropped_degenerate": 0,
            "missing_label_files": 0,
            "empty_images": 0,
            "empty_images_skipped": 0,
        }
        self._files: list[Path] = []
        self._image_ids: list[int] = []
        self._sizes: list[tuple[int, int]] = []  # (width, height) read from the image files
        self._targets: list[tuple[np.ndarray, np.ndarray]] = []  # (boxes [N,4] xyxy, labels [N])
        for position, image in enumerate(files):
            width, height = read_image_size(image)
            boxes, labels = self._load_labels(label_file_of(image), width, height)
            if len(boxes) == 0:
                self.stats["empty_images"] += 1
                if skip_empty:
                    self.stats["empty_images_skipped"] += 1
                    continue
            self._files.append(image)
            self._image_ids.append(position + 1)
            self._sizes.append((width, height))
            self._targets.append((boxes, labels))
        self._count()
        self._coco: COCO | None = None

    def _load_labels(self, label_file: Path, width: int, height: int) -> tuple[np.ndarray, np.ndarray]:
        """Clean boxes and labels of one image, updating :attr:`stats`."""
        if not label_file.is_file():
            self.stats["missing_label_files"] += 1
            return np.zeros((0, 4), np.float32), np.zeros(0, np.int64)
        classes, cxcywh = parse_label_file(label_file, len(self.class_names))
        cx, cy, w, h = (cxcywh[:, i] for i in range(4))
        edges = np.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], 1)
        edges[(edges < 0) & (edges >= -EDGE_TOLERANCE)] = 0.0
        edges[(edges > 1) & (edges <= 1 + EDGE_TOLERANCE)] = 1.0
        xyxy = edges * np.array([width, height, width, height], dtype=np.float64)
        boxes, keep, was_clipped = clip_boxes(xyxy, float(width), float(height), self.min_box_size)
        self.stats["clipped"] += int(was_clipped.sum())
        self.stats["dropped_degenerate"] += int((~keep).sum())
        return boxes[keep], classes[keep] + 1

    def _count(self) -> None:
        self.stats["images"] = len(self._files)
        self.stats["boxes"] = sum(len(b) for b, _ in self._targets)

    def limit(self, n: int) -> None:
        """Keep only the first ``n`` items (``max_images``)."""
        self._files, self._image_ids = self._files[:n], self._image_ids[:n]
        self._sizes, self._targets = self._sizes[:n], self._targets[:n]
        self._count()
        self._coco = None

    def image_file(self, idx: int) -> Path:
        return self._files[idx]

    def get_image_ids(self) -> list[int]:
        """Image ids (1-based positions among the sorted image paths) of the items, in order."""
        return list(self._image_ids)

    def summary(self) -> str:
        """One line with the annotation cleaning counts."""
        return format_stats(f"YOLO {self.data_yaml.name}/{self.split}", self.stats)

    def coco_ground_truth(self) -> tuple[COCO, dict[int, int]]:
        """The items' (clean) boxes as an in-memory pycocotools ``COCO`` whose category ids
        are the labels ``1..C`` (built once), and the identity label map."""
        if self._coco is None:
            images, annotations = [], []
            for image_id, path, (width, height), (boxes, labels) in zip(
                self._image_ids, self._files, self._sizes, self._targets
            ):
                images.append({"id": image_id, "file_name": str(path), "width": width, "height": height})
                for box, label in zip(boxes.tolist(), labels.tolist()):
                    w, h = box[2] - box[0], box[3] - box[1]
                    annotations.append({"id": len(annotations) + 1, "image_id": image_id, "category_id": label,
                                        "bbox": [box[0], box[1], w, h], "area": w * h, "iscrowd": 0})
            categories = [{"id": i + 1, "name": n} for i, n in enumerate(self.class_names)]
            self._coco = build_coco_api({"images": images, "annotations": annotations, "categories": categories})
        return self._coco, {i + 1: i + 1 for i in range(len(self.class_names))}

    def voc_ground_truth(self, image_ids: Sequence[int]) -> list[dict[str, np.ndarray]]:
        """The items' (clean) boxes; none is difficult."""
        by_id = dict(zip(self._image_ids, self._targets))
        return [{"boxes": by_id[i][0].astype(np.float64), "labels": by_id[i][1].copy(),
                 "difficult": np.zeros(len(by_id[i][1]), dtype=bool)} for i in image_ids]

    def __len__(self) -> int:
        return len(self._files)

    def __getitem__(self, idx: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        image = load_rgb_image(self._files[idx])
        height, width = image.shape[:2]
        boxes, labels = self._targets[idx]
        image, boxes, keep = apply_transforms(self.transforms, image, boxes)
        target = make_target(boxes, labels[keep], self._image_ids[idx], (height, width))
        return image_to_tensor(image), target
