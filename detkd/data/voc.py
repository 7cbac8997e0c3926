"""Pascal VOC detection dataset (``VOCdevkit/VOC2007`` layout)."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import numpy as np
from pycocotools.coco import COCO

from detkd.config.schema import BaseDatasetConfig, DataConfig
from detkd.data.records import ImageRecord, RecordDataset
from detkd.data.utils import DetectionTransform, read_image_size
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


@dataclass
class VOCDatasetConfig(BaseDatasetConfig):
    """Pascal VOC: ``root`` is the ``VOCdevkit/VOC2007`` directory, ``split`` an
    ``ImageSets/Main/<split>.txt`` file (``trainval``, ``test`` ...)."""

    type: str = "voc"
    root: str = ""
    classes: Optional[list[str]] = None  # class names (default: the 20 VOC classes)
    use_difficult: bool = False  # train on difficult boxes too

    def location(self) -> str:
        return self.root


class VOCDetection(RecordDataset):
    """Pascal VOC detection dataset.

    ``root`` is the year directory (e.g. ``VOCdevkit/VOC2007``) with ``Annotations/*.xml``,
    ``JPEGImages/*.jpg`` and ``ImageSets/Main/<split>.txt``. Labels are ``1..C`` in the
    order of ``classes``. Boxes are converted from VOC's 1-based inclusive pixel indices to
    0-based continuous xyxy (``xmin - 1, ymin - 1, xmax, ymax``).

    ``difficult`` boxes are the flagged boxes of :class:`~detkd.data.records.RecordDataset`:
    kept for evaluation (ignored there), left out of training targets unless
    ``use_difficult`` (counted as ``difficult_ignored``); items also carry
    ``target["difficult"]`` (bool ``[N]``). Cleaning, ``skip_empty`` and ``check_files`` are
    the record base's. ``image_id`` is the 1-based position of the image in the split file.
    """

    options = VOCDatasetConfig
    ignored_stat = "difficult_ignored"
    flag_key = "difficult"

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
        if len(set(classes)) != len(classes):
            raise DetkdError(f"VOC classes contain duplicates: {list(classes)}")
        if not self.root.is_dir():
            raise DetkdError(f"VOC root directory not found: {self.root}")
        class_to_label = {name: i + 1 for i, name in enumerate(classes)}
        self.names: dict[int, str] = {}  # image id -> the split file's name of the image
        records = []
        for position, name in enumerate(read_split(self.root / "ImageSets" / "Main" / f"{split}.txt")):
            image = self.root / "JPEGImages" / f"{name}.jpg"
            width, height, boxes, labels, difficult = parse_voc_xml(
                self.root / "Annotations" / f"{name}.xml", class_to_label, image)
            records.append(ImageRecord(image, width, height, position + 1, boxes, labels, difficult))
            self.names[position + 1] = name
        super().__init__(records, classes, f"VOC {self.root.name}/{split}", transforms=transforms,
                         skip_empty=skip_empty, min_box_size=min_box_size, train_flagged=use_difficult,
                         check_files=check_files)

    @classmethod
    def build(cls, ds: VOCDatasetConfig, data: DataConfig, **common: Any) -> VOCDetection:
        if not ds.root:
            raise DetkdError("a voc dataset needs 'root' (the VOCdevkit/VOC2007 directory) in its data section")
        return cls(ds.root, ds.split, ds.classes or VOC_CLASSES, use_difficult=ds.use_difficult, check_files=True,
                   **common)

    def get_annotation(self, idx: int) -> dict[str, Any]:
        """All (cleaned) boxes of item ``idx``, difficult ones included, for evaluation."""
        r = self.records[idx]
        return {"image_id": r.image_id, "name": self.names[r.image_id], "width": r.width, "height": r.height,
                "boxes": r.boxes.copy(), "labels": r.labels.copy(), "difficult": r.flagged.copy()}

    def to_coco(self) -> COCO:
        """The items' ground truth as a pycocotools ``COCO`` (category ids are the labels;
        difficult boxes are ``iscrowd=1``, so COCOeval ignores detections matching them,
        approximating VOC's rule)."""
        return self.coco_ground_truth()[0]
