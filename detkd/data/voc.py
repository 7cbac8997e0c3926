"""Pascal VOC detection dataset (``VOCdevkit/VOC2007`` layout)."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from pycocotools.coco import COCO

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

VOC_CLASSES: tuple[str, ...] = (
    "aeroplane",
    "bicycle",
    "bird",
    "boat",
    "bottle",
    "bus",
    "car",
    "cat",
    "chair",
    "cow",
    "diningtable",
    "dog",
    "horse",
    "motorbike",
    "person",
    "pottedplant",
    "sheep",
    "sofa",
    "train",
    "tvmonitor",
)


@dataclass
class VOCAnnotation:
    """All objects of one VOC image (0-based xyxy pixel boxes, labels 1..C)."""

    name: str  # image id from the split file, e.g. "000005"
    width: int
    height: int
    boxes: np.ndarray  # [N,4] float32
    labels: np.ndarray  # [N] int64
    difficult: np.ndarray  # [N] bool


def _text(node: ET.Element, tag: str, xml_file: Path) -> str:
    child = node.find(tag)
    if child is None or child.text is None or not child.text.strip():
        raise DetkdError(f"{xml_file}: missing <{tag}>")
    return child.text.strip()


def _number(node: ET.Element, tag: str, xml_file: Path) -> float:
    text = _text(node, tag, xml_file)
    try:
        return float(text)
    except ValueError:
        raise DetkdError(f"{xml_file}: <{tag}> is not a number: {text!r}") from None


def parse_voc_xml(
    xml_file: Path, class_to_label: dict[str, int], image_file: Path
) -> tuple[int, int, np.ndarray, np.ndarray, np.ndarray]:
    """Parse one VOC annotation file.

    Returns ``(width, height, boxes, labels, difficult)``. VOC pixel coordinates are
    1-based and inclusive (pixel ``xmin`` .. ``xmax``), so the box covering them in
    0-based continuous coordinates is ``[xmin - 1, ymin - 1, xmax, ymax]``. The image size
    comes from ``<size>``, or from the image header when the XML lacks it.
    """
    if not xml_file.is_file():
        raise DetkdError(f"annotation file not found: {xml_file}")
    try:
        root = ET.parse(xml_file).getroot()
    except ET.ParseError as exc:
        raise DetkdError(f"corrupt VOC annotation file {xml_file}: {exc}") from exc
    size = root.find("size")
    width = height = 0
    if size is not None and size.find("width") is not None and size.find("height") is not None:
        width, height = int(_number(size, "width", xml_file)), int(_number(size, "height", xml_file))
    if width <= 0 or height <= 0:  # some converted datasets write a 0x0 <size>
        width, height = read_image_size(image_file)
    boxes, labels, difficult = [], [], []
    for obj in root.iter("object"):
        name = _text(obj, "name", xml_file)
        if name not in class_to_label:
            raise DetkdError(f"{xml_file}: unknown class name {name!r}")
        bndbox = obj.find("bndbox")
        if bndbox is None:
            raise DetkdError(f"{xml_file}: object {name!r} has no <bndbox>")
        xmin, ymin, xmax, ymax = (_number(bndbox, t, xml_file) for t in ("xmin", "ymin", "xmax", "ymax"))
        boxes.append([xmin - 1.0, ymin - 1.0, xmax, ymax])
        labels.append(class_to_label[name])
        diff = obj.find("difficult")
        difficult.append(diff is not None and (diff.text or "0").strip() not in ("0", ""))
    return (
        width,
        height,
        np.array(boxes, dtype=np.float32).reshape(-1, 4),
        np.array(labels, dtype=np.int64),
        np.array(difficult, dtype=bool),
    )


def read_split(split_file: Path) -> list[str]:
    """Image ids listed in an ``ImageSets/Main/<split>.txt`` file."""
    if not split_file.is_file():
        raise DetkdError(f"VOC split file not found: {split_file}")
    # Lines may carry a second column (per-class split files); the id is the first token.
    return [line.split()[0] for line in split_file.read_text().splitlines() if line.strip()]


class VOCDetection(DetectionDataset):
    """Pascal VOC detection dataset.

    ``root`` is the year directory (e.g. ``VOCdevkit/VOC2007``) with ``Annotations/*.xml``,
    ``JPEGImages/*.jpg`` and ``ImageSets/Main/<split>.txt``. Labels are ``1..C`` in the
    order of ``classes``. Boxes are converted from VOC's 1-based inclusive pixel indices to
    0-based continuous xyxy (``xmin - 1, ymin - 1, xmax, ymax``).

    Annotations are cleaned at construction and counted in :attr:`stats` (as for
    :class:`~detkd.data.coco.CocoDetection`): boxes clipped to the image, degenerate boxes
    (non-positive size or below ``min_box_size``) dropped, ``difficult`` boxes excluded
    from training targets unless ``use_difficult``, and images without training boxes kept
    or skipped (``skip_empty``); ``check_files`` checks at construction that every image
    file exists (one ``stat`` each). :meth:`get_annotation` returns all (clean) boxes with
    their difficult flags for evaluation, and :meth:`to_coco` builds a pycocotools object.

    Items are ``(image, target)`` like ``CocoDetection`` plus ``target["difficult"]``
    (bool ``[N]``); ``image_id`` is the 1-based position of the image in the split file.
    """

    def __init__(
        self,
        root: str | Path,
        split: str = "trainval",
        classes: Sequence[str] = VOC_CLASSES,
        transforms: DetectionTransform | None = None,
        use_difficult: bool = False,
        skip_empty: bool = False,
        min_box_size: float = 1.0,
        check_files: bool = False,
    ) -> None:
        self.root = Path(root)
        self.split = split
        self.class_names: list[str] = list(classes)
        if len(set(self.class_names)) != len(self.class_names):
            raise DetkdError(f"VOC classes contain duplicates: {self.class_names}")
        self.transforms = transforms
        self.use_difficult = use_difficult
        self.min_box_size = float(min_box_size)
        if not self.root.is_dir():
            raise DetkdError(f"VOC root directory not found: {self.root}")
        class_to_label = {name: i + 1 for i, name in enumerate(self.class_names)}

        self.stats: dict[str, int] = {
            "images": 0,
            "boxes": 0,
            "clipped": 0,
            "dropped_degenerate": 0,
            "difficult_ignored": 0,
            "empty_images": 0,
            "empty_images_skipped": 0,
        }
        self._annotations: list[VOCAnnotation] = []
        self._image_ids: list[int] = []
        for position, name in enumerate(read_split(self.root / "ImageSets" / "Main" / f"{split}.txt")):
            ann = self._load_annotation(name, class_to_label)
            n_train = int(len(ann.boxes) if use_difficult else (~ann.difficult).sum())
            if not use_difficult:
                self.stats["difficult_ignored"] += int(ann.difficult.sum())
            if n_train == 0:
                self.stats["empty_images"] += 1
                if skip_empty:
                    self.stats["empty_images_skipped"] += 1
                    continue
            self.stats["boxes"] += n_train
            self._annotations.append(ann)
            self._image_ids.append(position + 1)
        self.stats["images"] = len(self._annotations)
        if check_files:
            self.check_files()

    def check_files(self) -> None:
        """Raise :class:`DetkdError` naming the first missing image file and the count."""
        missing = [a.name for a in self._annotations if not self.image_path(a.name).is_file()]
        if missing:
            raise DetkdError(f"image file not found: {self.image_path(missing[0])} "
                             f"({len(missing)} of {len(self._annotations)} image files missing)")

    def _load_annotation(self, name: str, class_to_label: dict[str, int]) -> VOCAnnotation:
        """Parse, clip and filter one image's annotation, updating :attr:`stats`."""
        xml_file = self.root / "Annotations" / f"{name}.xml"
        width, height, boxes, labels, difficult = parse_voc_xml(
            xml_file, class_to_label, self.image_path(name)
        )
        boxes, keep, was_clipped = clip_boxes(boxes, width, height, self.min_box_size)
        self.stats["clipped"] += int(was_clipped.sum())
        self.stats["dropped_degenerate"] += int((~keep).sum())
        return VOCAnnotation(name, width, height, boxes[keep], labels[keep], difficult[keep])

    def limit(self, n: int) -> None:
        """Keep only the first ``n`` items (``max_images``)."""
        self._annotations, self._image_ids = self._annotations[:n], self._image_ids[:n]
        self.stats["images"] = len(self._annotations)
        self.stats["boxes"] = sum(int(len(a.boxes) if self.use_difficult else (~a.difficult).sum())
                                  for a in self._annotations)

    def image_path(self, name: str) -> Path:
        """Path of the JPEG of a VOC image id."""
        return self.root / "JPEGImages" / f"{name}.jpg"

    def image_file(self, idx: int) -> Path:
        return self.image_path(self._annotations[idx].name)

    def get_image_ids(self) -> list[int]:
        """Integer image ids (1-based split-file positions) of the items, in item order."""
        return list(self._image_ids)

    def get_annotation(self, idx: int) -> dict[str, Any]:
        """All boxes of item ``idx`` including difficult ones (numpy), for evaluation."""
        ann = self._annotations[idx]
        return {
            "image_id": self._image_ids[idx],
            "name": ann.name,
            "width": ann.width,
            "height": ann.height,
            "boxes": ann.boxes.copy(),
            "labels": ann.labels.copy(),
            "difficult": ann.difficult.copy(),
        }

    def to_coco(self) -> COCO:
        """Ground truth of the dataset's items as an in-memory pycocotools ``COCO``.

        Category ids are the labels ``1..C``. Difficult boxes are marked ``iscrowd=1`` so
        COCOeval ignores detections matching them instead of counting them as false
        positives, approximating VOC's rule (they also carry ``"difficult": 1``).
        """
        images, annotations = [], []
        for idx, ann in enumerate(self._annotations):
            image_id = self._image_ids[idx]
            images.append(
                {"id": image_id, "file_name": f"{ann.name}.jpg", "width": ann.width, "height": ann.height}
            )
            for box, label, diff in zip(ann.boxes.tolist(), ann.labels.tolist(), ann.difficult.tolist()):
                w, h = box[2] - box[0], box[3] - box[1]
                annotations.append(
                    {
                        "id": len(annotations) + 1,
                        "image_id": image_id,
                        "category_id": label,
                        "bbox": [box[0], box[1], w, h],
                        "area": w * h,
                        "iscrowd": int(diff),
                        "difficult": int(diff),
                    }
                )
        categories = [{"id": i + 1, "name": n} for i, n in enumerate(self.class_names)]
        return build_coco_api({"images": images, "annotations": annotations, "categories": categories})

    def summary(self) -> str:
        """One line with the annotation cleaning counts."""
        return format_stats(f"VOC {self.root.name}/{self.split}", self.stats)

    def coco_ground_truth(self) -> tuple[COCO, dict[int, int]]:
        """:meth:`to_coco` (category ids are the labels) and the identity label map."""
        return self.to_coco(), {i + 1: i + 1 for i in range(len(self.class_names))}

    def voc_ground_truth(self, image_ids: Sequence[int]) -> list[dict[str, Any]]:
        """:meth:`get_annotation` of the items with these image ids, in that order."""
        by_id = {a["image_id"]: a for a in (self.get_annotation(i) for i in range(len(self)))}
        return [by_id[i] for i in image_ids]

    def __len__(self) -> int:
        return len(self._annotations)

    def __getitem__(self, idx: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        ann = self._annotations[idx]
        image = load_rgb_image(self.image_path(ann.name))
        height, width = image.shape[:2]
        train = np.ones(len(ann.boxes), bool) if self.use_difficult else ~ann.difficult
        image, boxes, keep = apply_transforms(self.transforms, image, ann.boxes[train])
        target = make_target(boxes, ann.labels[train][keep], self._image_ids[idx], (height, width))
        target["difficult"] = torch.as_tensor(ann.difficult[train][keep], dtype=torch.bool)
        return image_to_tensor(image), target
