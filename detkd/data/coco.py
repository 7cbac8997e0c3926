"""COCO-format detection dataset (any dataset with a COCO ``instances_*.json``)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from detkd.config.schema import BaseDatasetConfig, DataConfig
from detkd.data.records import ImageRecord, RecordDataset
from detkd.data.utils import DetectionTransform, build_coco_api
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


@dataclass
class CocoDatasetConfig(BaseDatasetConfig):
    """A COCO ``instances_*.json`` (``ann_file``) over the images in ``image_dir``;
    ``split`` is not used."""

    type: str = "coco"
    image_dir: str = ""
    ann_file: str = ""

    def location(self) -> str:
        return self.ann_file


class CocoDetection(RecordDataset):
    """Detection dataset over COCO-format annotations.

    Category ids (sorted) are mapped to contiguous labels ``1..C`` (0 is background in
    torchvision detectors). Crowd boxes (``iscrowd``) are the flagged boxes of
    :class:`~detkd.data.records.RecordDataset`: left out of training targets and counted as
    ``crowd_ignored``; cleaning, items and ``skip_empty`` are the record base's. COCO
    evaluation scores against the annotation file as loaded (:attr:`coco`, a pycocotools
    ``COCO``: its areas, crowd regions and category ids), so the numbers are COCO's own.

    ``image_id`` is the file's image id. Missing image files are reported (naming the file)
    when an item is loaded, or for all images at construction with ``check_files=True`` (one
    ``stat`` per image). An image whose size differs from the annotation file's
    ``width``/``height`` is an error, since the boxes were cleaned against the recorded size.
    """

    options = CocoDatasetConfig
    ignored_stat = "crowd_ignored"
    ids_are_the_files = True

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
        if not self.image_dir.is_dir():
            raise DetkdError(f"image directory not found: {self.image_dir}")
        data = load_coco_json(self.ann_file)
        validate_coco(data, self.ann_file)
        self.coco = build_coco_api(data)
        self.cat_ids: list[int] = sorted(self.coco.cats)
        self.cat_id_to_label: dict[int, int] = {c: i + 1 for i, c in enumerate(self.cat_ids)}
        records = []
        for image_id in sorted(self.coco.imgs):
            info, anns = self.coco.imgs[image_id], self.coco.imgToAnns.get(image_id, [])
            xywh = np.array([a["bbox"] for a in anns], dtype=np.float32).reshape(-1, 4)
            records.append(ImageRecord(
                self.image_dir / info["file_name"], info["width"], info["height"], image_id,
                boxes=np.concatenate([xywh[:, :2], xywh[:, :2] + xywh[:, 2:]], axis=1),
                labels=[self.cat_id_to_label[a["category_id"]] for a in anns],
                flagged=[bool(a.get("iscrowd", 0)) for a in anns]))
        super().__init__(records, [str(self.coco.cats[c].get("name", c)) for c in self.cat_ids],
                         f"COCO {self.ann_file.name}", transforms=transforms, skip_empty=skip_empty,
                         min_box_size=min_box_size, check_files=check_files,
                         label_to_cat_id={i + 1: c for i, c in enumerate(self.cat_ids)}, coco_gt=self.coco)

    @classmethod
    def build(cls, ds: CocoDatasetConfig, data: DataConfig, **common: Any) -> CocoDetection:
        if not ds.ann_file or not ds.image_dir:
            raise DetkdError("a coco dataset needs both 'image_dir' and 'ann_file' in its data section")
        # Missing image files are found here (one stat each), not an epoch into training.
        return cls(ds.image_dir, ds.ann_file, check_files=True, **common)
