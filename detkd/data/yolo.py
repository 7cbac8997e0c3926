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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from detkd.config.tree import parse_yaml_file
from detkd.config.schema import BaseDatasetConfig, DataConfig
from detkd.data.records import ImageRecord, RecordDataset
from detkd.data.utils import DetectionTransform, read_image_size
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


def read_boxes(label_file: Path, num_classes: int, width: int, height: int) -> tuple[np.ndarray, np.ndarray]:
    """``(xyxy pixel boxes [N,4], labels [N] 1..C)`` of one label file; edges within
    :data:`EDGE_TOLERANCE` outside 0..1 are set to the border."""
    classes, cxcywh = parse_label_file(label_file, num_classes)
    cx, cy, w, h = (cxcywh[:, i] for i in range(4))
    edges = np.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], 1)
    edges[(edges < 0) & (edges >= -EDGE_TOLERANCE)] = 0.0
    edges[(edges > 1) & (edges <= 1 + EDGE_TOLERANCE)] = 1.0
    return edges * np.array([width, height, width, height], dtype=np.float64), classes + 1


@dataclass
class YoloDatasetConfig(BaseDatasetConfig):
    """An ultralytics-layout YOLO dataset: ``root`` is the directory of its ``data.yaml``,
    ``split`` the ``data.yaml`` key naming the image folder(s) (``train``, ``val``, ``test``).
    See docs/datasets.md."""

    type: str = "yolo"
    root: str = ""

    def location(self) -> str:
        return self.root


class YoloDetection(RecordDataset):
    """Detection dataset over YOLO txt labels (ultralytics layout, see the module docs).

    ``root`` is the folder of ``data.yaml`` (or the YAML file itself) and ``split`` its key
    naming the image folder(s). Labels are ``class index + 1`` in the order of ``names``.
    Each image's size is read once from its file header; boxes (``cx cy w h`` normalized)
    become xyxy pixels and are cleaned by :class:`~detkd.data.records.RecordDataset`:
    ``clipped`` counts an edge outside 0..1 by more than :data:`EDGE_TOLERANCE` (within it,
    the edge is set to the border uncounted). ``missing_label_files`` counts images without
    a label file: no boxes, as ultralytics reads them. An empty label file is an image
    without boxes.

    ``image_id`` is the 1-based position of the image among the split's sorted image paths
    (stable under ``skip_empty`` and ``max_images``).
    """

    options = YoloDatasetConfig

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
        data = read_data_yaml(self.data_yaml)
        class_names = class_names_of(data, self.data_yaml)
        records, missing = [], 0
        for position, image in enumerate(split_image_files(data, split, self.data_yaml)):
            width, height = read_image_size(image)
            label_file = label_file_of(image)
            if label_file.is_file():
                boxes, labels = read_boxes(label_file, len(class_names), width, height)
            else:
                missing += 1
                boxes, labels = np.zeros((0, 4)), np.zeros(0)
            records.append(ImageRecord(image, width, height, position + 1, boxes, labels))
        super().__init__(records, class_names, f"YOLO {self.data_yaml.name}/{split}", transforms=transforms,
                         skip_empty=skip_empty, min_box_size=min_box_size, counts={"missing_label_files": missing})

    @classmethod
    def build(cls, ds: YoloDatasetConfig, data: DataConfig, **common: Any) -> YoloDetection:
        if not ds.root:
            raise DetkdError("a yolo dataset needs 'root' (the directory of its data.yaml) in its data section")
        return cls(ds.root, ds.split, **common)
