"""The one implementation of a detection dataset: a list of image records.

A format's parser (``coco.py``, ``voc.py``, ``yolo.py``, ``csv.py``) reads its files into
:class:`ImageRecord`s, one per image, with the boxes as the file gives them (xyxy pixels),
and hands them to :class:`RecordDataset`. Everything else is done here, the same way for
every format:

* cleaning, counted in ``stats``: boxes are clipped to the image (``clipped``); boxes whose
  width or height is not positive or below ``min_box_size`` after clipping are dropped
  (``dropped_degenerate``); flagged boxes (COCO ``iscrowd``, VOC ``difficult``) are left out
  of the training targets (the format's ``ignored_stat``) unless ``train_flagged``; images
  left without training boxes are kept or skipped (``empty_images``, ``empty_images_skipped``);
* items ``(image, target)`` (:func:`~detkd.data.utils.make_target`), the image size checked
  against the record's;
* the ground truth of COCO and VOC evaluation, built from the cleaned records (flagged
  boxes are ``iscrowd`` / ``difficult`` there, i.e. ignored), unless the format hands over
  its own COCO ground truth (the COCO format: the annotation file as given);
* ``limit`` (``max_images``), ``summary``, ``check_files``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from pycocotools.coco import COCO

from detkd.config.schema import BaseDatasetConfig, DataConfig
from detkd.data.base import DetectionDataset
from detkd.data.utils import (
    DetectionTransform,
    apply_transforms,
    build_coco_api,
    clip_boxes,
    format_stats,
    image_to_tensor,
    load_rgb_image,
    make_target,
    read_image_size,
)
from detkd.data.teacher_detections import TeacherDetections, read_teacher_detections
from detkd.errors import DetkdError

__all__ = ["ImageRecord", "RecordDataset"]


@dataclass
class ImageRecord:
    """One image as a format's files describe it.

    ``boxes`` are xyxy pixels in continuous coordinates (a pixel ``c`` spans ``[c, c+1)``),
    as read (:class:`RecordDataset` cleans them); ``labels`` are ``1..C``; ``flagged`` marks
    the boxes evaluation ignores (COCO ``iscrowd``, VOC ``difficult``; none if omitted).
    ``image_id`` is unique in the dataset; ``width``/``height`` are what the boxes refer to.
    """

    file: Path
    width: int
    height: int
    image_id: int
    boxes: np.ndarray
    labels: np.ndarray
    flagged: np.ndarray | None = None

    def __post_init__(self) -> None:
        self.boxes = np.asarray(self.boxes, dtype=np.float32).reshape(-1, 4)
        self.labels = np.asarray(self.labels, dtype=np.int64).reshape(-1)
        n = len(self.labels)
        self.flagged = np.zeros(n, bool) if self.flagged is None else np.asarray(self.flagged, bool).reshape(-1)
        if not len(self.boxes) == n == len(self.flagged):
            raise ValueError(f"{self.file}: {len(self.boxes)} boxes, {n} labels, {len(self.flagged)} flags")


class RecordDataset(DetectionDataset):
    """A :class:`DetectionDataset` over cleaned :class:`ImageRecord`s (see the module docs).

    A format subclasses it, names its options dataclass (``options``: its ``data.<split>``
    section), parses its files into records in ``__init__`` and calls ``super().__init__``;
    :meth:`build` makes it from a config section. ``name`` starts the :meth:`summary` line; ``counts`` are the
    format's own counts (e.g. YOLO's ``missing_label_files``), listed after the cleaning
    counts. ``label_to_cat_id`` maps labels to the category ids of COCO evaluation (default:
    the labels); ``coco_gt`` is a COCO ground truth to score against instead of the one built
    from the records (its category ids those of ``label_to_cat_id``).
    """

    options: ClassVar[type[BaseDatasetConfig]]
    ignored_stat: ClassVar[str | None] = None  # stats key of the flagged boxes left out of training
    flag_key: ClassVar[str | None] = None  # items also carry target[flag_key]: the flags of their boxes
    ids_are_the_files: ClassVar[bool] = False  # image ids come from the files: messages name them

    def __init__(
        self,
        records: Sequence[ImageRecord],
        class_names: Sequence[str],
        name: str,
        transforms: DetectionTransform | None = None,
        skip_empty: bool = False,
        min_box_size: float = 1.0,
        train_flagged: bool = False,
        check_files: bool = False,
        counts: dict[str, int] | None = None,
        label_to_cat_id: dict[int, int] | None = None,
        coco_gt: COCO | None = None,
    ) -> None:
        self.class_names: list[str] = list(class_names)
        self.name = name
        self.transforms = transforms
        self.min_box_size = float(min_box_size)
        self.train_flagged = train_flagged
        self.label_to_cat_id = label_to_cat_id or {i + 1: i + 1 for i in range(len(self.class_names))}
        self._coco_gt = coco_gt
        self._built_gt: COCO | None = None
        self.stats: dict[str, int] = {"images": 0, "boxes": 0, "clipped": 0, "dropped_degenerate": 0}
        if self.ignored_stat:
            self.stats[self.ignored_stat] = 0
        self.stats.update(counts or {})
        self.stats.update(empty_images=0, empty_images_skipped=0)
        self.records: list[ImageRecord] = []
        # image id -> an offline teacher's detections (attach_teacher), carried through augmentation
        self.teacher: dict[int, TeacherDetections] | None = None
        for record in records:
            record = self._clean(record)
            if not self._trained(record).any():
                self.stats["empty_images"] += 1
                if skip_empty:
                    self.stats["empty_images_skipped"] += 1
                    continue
            self.records.append(record)
        self._count()
        if check_files:
            self.check_files()

    @classmethod
    def build(cls, ds: Any, data: DataConfig, **common: Any) -> RecordDataset:
        """The dataset of the config section ``ds`` (an instance of :attr:`options`); ``common``
        are ``__init__``'s ``transforms``, ``skip_empty`` and ``min_box_size``, as the split
        is trained on or evaluated (:func:`detkd.data.build.build_dataset`)."""
        raise NotImplementedError(f"{cls.__name__} has no build()")

    def _clean(self, record: ImageRecord) -> ImageRecord:
        """The record with its boxes clipped and the degenerate ones dropped, counted."""
        boxes, keep, was_clipped = clip_boxes(record.boxes, float(record.width), float(record.height),
                                              self.min_box_size)
        self.stats["clipped"] += int(was_clipped.sum())
        self.stats["dropped_degenerate"] += int((~keep).sum())
        record = dataclasses.replace(record, boxes=boxes[keep], labels=record.labels[keep],
                                     flagged=record.flagged[keep])
        if self.ignored_stat:
            self.stats[self.ignored_stat] += int((~self._trained(record)).sum())
        return record

    def _trained(self, record: ImageRecord) -> np.ndarray:
        """Which of the record's boxes are training targets."""
        return np.ones(len(record.labels), bool) if self.train_flagged else ~record.flagged

    def _count(self) -> None:
        self.stats["images"] = len(self.records)
        self.stats["boxes"] = sum(int(self._trained(r).sum()) for r in self.records)

    def _describe(self, record: ImageRecord) -> str:
        return f"image id {record.image_id}; " if self.ids_are_the_files else ""

    def check_files(self) -> None:
        """Raise :class:`DetkdError` naming the first missing image file and the count."""
        missing = [r for r in self.records if not r.file.is_file()]
        if missing:
            raise DetkdError(f"image file not found: {missing[0].file} ({self._describe(missing[0])}"
                             f"{len(missing)} of {len(self.records)} image files missing)")

    def _size_error(self, record: ImageRecord, width: int, height: int, more: str = "") -> DetkdError:
        return DetkdError(f"image {record.file} is {width}x{height} but its annotation says "
                          f"{record.width}x{record.height} ({self.name}{more}); the boxes refer to that size")

    def check_image_sizes(self) -> None:
        """Every image's size, read from its header only, against its record: the first that
        differs, with the count, in one line."""
        bad = []
        for record in self.records:
            width, height = read_image_size(record.file)
            if (width, height) != (record.width, record.height):
                bad.append((record, width, height))
        if bad:
            raise self._size_error(*bad[0], more=f"; {len(bad)} of {len(self.records)} images differ")

    def limit(self, n: int) -> None:
        """Keep only the first ``n`` items (``max_images``)."""
        self.records = self.records[:n]
        self._count()
        self._built_gt = None

    def get_image_ids(self) -> list[int]:
        """The items' ``image_id``, in item order."""
        return [r.image_id for r in self.records]

    def image_file(self, idx: int) -> Path:
        """The image file of item ``idx``."""
        return Path(self.records[idx].file)

    def summary(self) -> str:
        """One line with the annotation cleaning counts."""
        return format_stats(self.name, self.stats)

    def coco_ground_truth(self) -> tuple[COCO, dict[int, int]]:
        """The format's own COCO ground truth if it gave one, else the items' (cleaned)
        boxes as an in-memory pycocotools ``COCO`` (flagged boxes ``iscrowd``, built once),
        and the label -> category id map."""
        if self._coco_gt is not None:
            return self._coco_gt, dict(self.label_to_cat_id)
        if self._built_gt is None:
            images, annotations = [], []
            for r in self.records:
                images.append({"id": r.image_id, "file_name": str(r.file), "width": r.width, "height": r.height})
                for box, label, flag in zip(r.boxes.tolist(), r.labels.tolist(), r.flagged.tolist()):
                    w, h = box[2] - box[0], box[3] - box[1]
                    annotations.append({"id": len(annotations) + 1, "image_id": r.image_id,
                                        "category_id": self.label_to_cat_id[label], "bbox": [box[0], box[1], w, h],
                                        "area": w * h, "iscrowd": int(flag)})
            categories = [{"id": self.label_to_cat_id[i + 1], "name": n} for i, n in enumerate(self.class_names)]
            self._built_gt = build_coco_api({"images": images, "annotations": annotations, "categories": categories})
        return self._built_gt, dict(self.label_to_cat_id)

    def voc_ground_truth(self, image_ids: Sequence[int]) -> list[dict[str, np.ndarray]]:
        """The (cleaned) boxes of the items with these image ids, in that order; flagged
        boxes are ``difficult``."""
        by_id = {r.image_id: r for r in self.records}
        return [{"boxes": by_id[i].boxes.astype(np.float64), "labels": by_id[i].labels.copy(),
                 "difficult": by_id[i].flagged.copy()} for i in image_ids]

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, idx: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        record = self.records[idx]
        image = load_rgb_image(record.file)
        height, width = image.shape[:2]
        if (width, height) != (record.width, record.height):
            raise self._size_error(record, width, height)
        train = self._trained(record)
        gt = record.boxes[train]
        teacher = self.teacher[record.image_id] if self.teacher is not None else None
        if teacher is not None:  # the teacher's boxes go through the very same augmentation
            gt = np.concatenate([gt, teacher.boxes])
        image, boxes, keep = apply_transforms(self.transforms, image, gt)
        n = int(train.sum())
        own = keep < n
        target = make_target(boxes[own], record.labels[train][keep[own]], record.image_id, (height, width))
        if self.flag_key:
            target[self.flag_key] = torch.as_tensor(record.flagged[train][keep[own]], dtype=torch.bool)
        if teacher is not None:
            rows = keep[~own] - n
            target.update(teacher_boxes=torch.as_tensor(boxes[~own], dtype=torch.float32).reshape(-1, 4),
                          teacher_labels=torch.as_tensor(teacher.labels[rows], dtype=torch.int64),
                          teacher_scores=torch.as_tensor(teacher.scores[rows], dtype=torch.float32))
        return image_to_tensor(image), target

    def box_sizes(self, limit: int) -> list[tuple[int, int, torch.Tensor]]:
        return [(r.width, r.height, torch.as_tensor(r.boxes[self._trained(r)])) for r in self.records[:limit]]

    def drop_labels(self) -> None:
        """Forget every box (``data.unlabeled`` of a labeled format: its labels are not used)."""
        self.records = [dataclasses.replace(r, boxes=np.zeros((0, 4), np.float32), labels=np.zeros(0, np.int64),
                                            flagged=None) for r in self.records]
        self._count()


def attach_teacher(datasets: Sequence[RecordDataset], path: str | Path, drop_unknown_classes: bool = False) -> None:
    """Carry an offline teacher's detections (``teacher.detections``: a file or folder any
    detector wrote, :func:`read_teacher_detections`, read once for all ``datasets``, the first
    one's label map) in every item's target, as ``teacher_boxes`` / ``teacher_labels`` /
    ``teacher_scores``, augmented as the image is. Boxes are clipped to the image; those left
    thinner than the dataset's ``min_box_size`` are dropped. A COCO ``image_id`` names an image of
    the first dataset (the others' images are matched by file name)."""
    refs, owner, next_id = [], [], max((r.image_id for r in datasets[0].records), default=0) + 1
    for k, ds in enumerate(datasets):
        for record in ds.records:
            image_id = record.image_id if k == 0 else next_id + len(refs)
            refs.append(dataclasses.replace(record, image_id=image_id))
            owner.append((ds, record))
    found = read_teacher_detections(path, refs, datasets[0].class_names, drop_unknown_classes)
    for ds in datasets:
        ds.teacher = {}
    for ref, (ds, record) in zip(refs, owner):
        dets = found[ref.image_id]
        boxes, keep, _ = clip_boxes(dets.boxes, record.width, record.height, ds.min_box_size)
        ds.teacher[record.image_id] = TeacherDetections(boxes[keep], dets.labels[keep], dets.scores[keep])
    for ds in datasets:
        ds.stats["teacher_boxes"] = sum(len(d.labels) for d in ds.teacher.values())
