"""COCO-format detection dataset (any dataset with a COCO ``instances_*.json``)."""

from __future__ import annotations

import contextlib
import io
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from pycocotools.coco import COCO

from detkd.data.base import DetectionDataset
from detkd.data.utils import (
    DetectionTransform,
    apply_transforms,
    clip_boxes,
    format_stats,
    image_to_tensor,
    load_rgb_image,
    make_target,
)
from detkd.errors import DetkdError


def load_coco_json(ann_file: Path) -> dict[str, Any]:
    """Read and structurally check a COCO annotation file."""
    if not ann_file.is_file():
        raise DetkdError(f"annotation file not found: {ann_file}")
    try:
        with open(ann_file, encoding="utf-8") as f:
            data = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DetkdError(f"corrupt COCO annotation file {ann_file}: {exc}") from exc
    if not isinstance(data, dict):
        raise DetkdError(f"{ann_file}: top level must be a JSON object")
    for key in ("images", "categories"):
        if not isinstance(data.get(key), list):
            raise DetkdError(f"{ann_file}: missing or invalid '{key}' list")
    data.setdefault("annotations", [])
    if not isinstance(data["annotations"], list):
        raise DetkdError(f"{ann_file}: 'annotations' must be a list")
    return data


def validate_coco(data: dict[str, Any], ann_file: Path) -> None:
    """Check ids and fields that the dataset relies on; raise naming the bad entry."""
    for img in data["images"]:
        for key in ("id", "file_name", "width", "height"):
            if not isinstance(img, dict) or key not in img:
                raise DetkdError(f"{ann_file}: image entry {img!r:.80} has no '{key}'")
    for cat in data["categories"]:
        if not isinstance(cat, dict) or "id" not in cat:
            raise DetkdError(f"{ann_file}: category entry {cat!r:.80} has no 'id'")
    image_ids = {img["id"] for img in data["images"]}
    cat_ids = {cat["id"] for cat in data["categories"]}
    for ann in data["annotations"]:
        ann_id = ann.get("id") if isinstance(ann, dict) else None
        if ann_id is None:
            raise DetkdError(f"{ann_file}: annotation entry {ann!r:.80} has no 'id'")
        if ann.get("image_id") not in image_ids:
            raise DetkdError(
                f"{ann_file}: annotation id {ann_id} references unknown image id "
                f"{ann.get('image_id')!r}"
            )
        if ann.get("category_id") not in cat_ids:
            raise DetkdError(
                f"{ann_file}: annotation id {ann_id} references unknown category id "
                f"{ann.get('category_id')!r}"
            )
        bbox = ann.get("bbox")
        if not (
            isinstance(bbox, list)
            and len(bbox) == 4
            and all(isinstance(v, (int, float)) for v in bbox)
        ):
            raise DetkdError(f"{ann_file}: annotation id {ann_id} has invalid bbox {bbox!r}")


def build_coco_api(data: dict[str, Any]) -> COCO:
    """Build a pycocotools ``COCO`` object from an already-loaded dataset dict."""
    coco = COCO()
    coco.dataset = data
    with contextlib.redirect_stdout(io.StringIO()):  # createIndex prints progress
        coco.createIndex()
    return coco


class CocoDetection(DetectionDataset):
    """Detection dataset over COCO-format annotations.

    Category ids (sorted) are mapped to contiguous labels ``1..C`` (0 is background in
    torchvision detectors). Annotations are cleaned once at construction and counted in
    :attr:`stats`: boxes partly outside the image are clipped, boxes whose width or height
    is not positive or below ``min_box_size`` after clipping are dropped, crowd boxes are
    removed from training targets, and images left without boxes are kept or skipped
    (``skip_empty``). The unmodified annotations remain available in :attr:`coco`
    (a pycocotools ``COCO``) for evaluation.

    Items are ``(image, target)``: a float tensor ``[3,H,W]`` in ``[0,1]`` and a dict with
    ``boxes`` (float32 ``[N,4]`` xyxy pixels), ``labels`` (int64), ``image_id`` (int64
    COCO image id), ``area``, ``iscrowd`` and ``orig_size`` (``[H, W]`` before transforms).
    ``transforms`` take and return ``(image HxWx3 uint8, boxes [N,4], labels [N])``.

    Missing image files are reported (naming the file) when an item is loaded, or for all
    images at construction with ``check_files=True`` (one ``stat`` per image). An image
    whose size differs from the annotation file's ``width``/``height`` is an error, since
    the boxes were cleaned against the recorded size.
    """

    def __init__(
        self,
        image_dir: str | Path,
        ann_file: str | Path,
        transforms: DetectionTransform | None = None,
        skip_empty: bool = False,
        min_box_size: float = 1.0,
        check_files: bool = False,
    ) -> None:
        self.image_dir = Path(image_dir)
        self.ann_file = Path(ann_file)
        self.transforms = transforms
        self.min_box_size = float(min_box_size)
        if not self.image_dir.is_dir():
            raise DetkdError(f"image directory not found: {self.image_dir}")
        data = load_coco_json(self.ann_file)
        validate_coco(data, self.ann_file)
        self.coco = build_coco_api(data)

        self.cat_ids: list[int] = sorted(self.coco.cats)
        self.cat_id_to_label: dict[int, int] = {c: i + 1 for i, c in enumerate(self.cat_ids)}
        self.label_to_cat_id: dict[int, int] = {i + 1: c for i, c in enumerate(self.cat_ids)}
        self.class_names: list[str] = [
            str(self.coco.cats[c].get("name", c)) for c in self.cat_ids
        ]

        self.stats: dict[str, int] = {
            "images": 0,
            "boxes": 0,
            "clipped": 0,
            "dropped_degenerate": 0,
            "crowd_ignored": 0,
            "empty_images": 0,
            "empty_images_skipped": 0,
        }
        # image id -> (boxes [N,4] xyxy float32, labels [N] int64), cleaned once up front
        self._targets: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        self.ids: list[int] = []
        for image_id in sorted(self.coco.imgs):
            boxes, labels = self._clean_annotations(image_id)
            if len(boxes) == 0:
                self.stats["empty_images"] += 1
                if skip_empty:
                    self.stats["empty_images_skipped"] += 1
                    continue
            self._targets[image_id] = (boxes, labels)
            self.ids.append(image_id)
        self.stats["images"] = len(self.ids)
        self.stats["boxes"] = sum(len(b) for b, _ in self._targets.values())
        if check_files:
            self.check_files()

    def _clean_annotations(self, image_id: int) -> tuple[np.ndarray, np.ndarray]:
        """Clip/drop the boxes of one image and update :attr:`stats`."""
        info = self.coco.imgs[image_id]
        anns = self.coco.imgToAnns.get(image_id, [])
        crowd = np.array([bool(a.get("iscrowd", 0)) for a in anns], dtype=bool)
        self.stats["crowd_ignored"] += int(crowd.sum())
        anns = [a for a, c in zip(anns, crowd) if not c]
        xywh = np.array([a["bbox"] for a in anns], dtype=np.float32).reshape(-1, 4)
        xyxy = np.concatenate([xywh[:, :2], xywh[:, :2] + xywh[:, 2:]], axis=1)
        boxes, keep, was_clipped = clip_boxes(
            xyxy, float(info["width"]), float(info["height"]), self.min_box_size
        )
        self.stats["clipped"] += int(was_clipped.sum())
        self.stats["dropped_degenerate"] += int((~keep).sum())
        labels = np.array(
            [self.cat_id_to_label[a["category_id"]] for a in anns], dtype=np.int64
        ).reshape(-1)
        return boxes[keep], labels[keep]

    def check_files(self) -> None:
        """Raise :class:`DetkdError` naming the first missing image file and the count."""
        missing = [i for i in self.ids if not self.image_path(i).is_file()]
        if missing:
            raise DetkdError(f"image file not found: {self.image_path(missing[0])} (image id {missing[0]}; "
                             f"{len(missing)} of {len(self.ids)} image files missing)")

    def limit(self, n: int) -> None:
        """Keep only the first ``n`` items (``max_images``)."""
        self.ids = self.ids[:n]
        self.stats["images"] = len(self.ids)
        self.stats["boxes"] = sum(len(self._targets[i][0]) for i in self.ids)

    def image_path(self, image_id: int) -> Path:
        """Path of the image file of a COCO image id."""
        return self.image_dir / self.coco.imgs[image_id]["file_name"]

    def image_file(self, idx: int) -> Path:
        return self.image_path(self.ids[idx])

    def get_image_ids(self) -> list[int]:
        """COCO image ids of the dataset items, in item order."""
        return list(self.ids)

    def summary(self) -> str:
        """One line with the annotation cleaning counts."""
        return format_stats(f"COCO {self.ann_file.name}", self.stats)

    def coco_ground_truth(self) -> tuple[COCO, dict[int, int]]:
        """The annotation file as loaded (:attr:`coco`, not cleaned) and the label map."""
        return self.coco, dict(self.label_to_cat_id)

    def voc_ground_truth(self, image_ids: Sequence[int]) -> list[dict[str, np.ndarray]]:
        """The annotation file's boxes of each image (not cleaned); crowd boxes are
        ``difficult`` (ignored by VOC evaluation)."""
        gts = []
        for image_id in image_ids:
            anns = self.coco.imgToAnns.get(image_id, [])
            xywh = np.array([a["bbox"] for a in anns], dtype=np.float64).reshape(-1, 4)
            gts.append({
                "boxes": np.concatenate([xywh[:, :2], xywh[:, :2] + xywh[:, 2:]], axis=1),
                "labels": np.array([self.cat_id_to_label[a["category_id"]] for a in anns], dtype=np.int64),
                "difficult": np.array([bool(a.get("iscrowd", 0)) for a in anns], dtype=bool),
            })
        return gts

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, idx: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        image_id = self.ids[idx]
        path = self.image_path(image_id)
        image = load_rgb_image(path)
        info = self.coco.imgs[image_id]
        height, width = image.shape[:2]
        if (width, height) != (info["width"], info["height"]):
            raise DetkdError(
                f"image {path} is {width}x{height} but {self.ann_file} says "
                f"{info['width']}x{info['height']}"
            )
        boxes, labels = self._targets[image_id]
        image, boxes, keep = apply_transforms(self.transforms, image, boxes)
        target = make_target(boxes, labels[keep], image_id, (height, width))
        return image_to_tensor(image), target
