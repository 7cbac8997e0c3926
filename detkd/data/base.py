"""What the trainer, the evaluator and the report need from a detection dataset.

Every format (``coco.py``, ``voc.py``, ``yolo.py``, ``csv.py``; the demo is a COCO copy) is a
:class:`DetectionDataset` through :class:`detkd.data.records.RecordDataset`, its one
implementation, and nothing outside ``detkd/data`` uses more than this interface declares.
Adding a format is one file here (its options dataclass and its parser) and one entry in
:data:`detkd.data.build.DATASETS` (see docs/datasets.md).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch.utils.data import Dataset

if TYPE_CHECKING:
    from pycocotools.coco import COCO

__all__ = ["Delegating", "DetectionDataset"]


class DetectionDataset(Dataset, ABC):
    """A detection dataset as detkd uses it.

    * ``class_names``: ``class_names[i]`` is the name of label ``i + 1`` (0 is background).
    * ``len(ds)`` and ``ds[i]`` -> ``(image, target)``: a float tensor ``[3,H,W]`` in
      ``[0,1]`` and a dict with ``boxes`` (float32 ``[N,4]`` xyxy pixels), ``labels``
      (int64 ``1..C``), ``image_id`` (int64, unique in the dataset), ``area``, ``iscrowd``
      and ``orig_size`` (``[H, W]`` before transforms); see :func:`detkd.data.utils.make_target`.
    * :meth:`coco_ground_truth` and :meth:`voc_ground_truth`: what COCO and VOC
      evaluation score predictions against, keyed by those ``image_id``.
    * :meth:`get_image_ids`: the items' ``image_id`` in item order; :meth:`image_file`: the
      image file of an item (what a model file records for ``detkd export``'s parity check).
    * ``stats`` (name -> count: ``images``, ``boxes``, ``clipped``, ...) and :meth:`summary`,
      one line of them: what was read, clipped and dropped (the log's ``train set:`` line);
      :meth:`limit`: keep the first N images (``max_images``).
    * :meth:`set_epoch`: called before every training epoch (a no-op unless items depend
      on the epoch, as with :class:`detkd.data.build.EpochSeeded`).
    """

    class_names: list[str]
    stats: dict[str, int]

    @abstractmethod
    def __len__(self) -> int:
        """Number of images."""

    @abstractmethod
    def __getitem__(self, idx: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """``(image, target)`` of item ``idx``."""

    @abstractmethod
    def get_image_ids(self) -> list[int]:
        """The items' ``image_id``, in item order."""

    @abstractmethod
    def image_file(self, idx: int) -> Path:
        """Path of the image file of item ``idx``."""

    @abstractmethod
    def coco_ground_truth(self) -> tuple[COCO, dict[int, int]]:
        """``(pycocotools COCO, label -> category id)``: the ground truth COCO evaluation
        scores against (image ids are the items' ``image_id``; it may hold more images
        than the items, which are then left out of the evaluation by id)."""

    @abstractmethod
    def voc_ground_truth(self, image_ids: Sequence[int]) -> list[dict[str, np.ndarray]]:
        """One ``{"boxes" [N,4] xyxy, "labels" [N], "difficult" [N] bool}`` per image id
        (in that order): the ground truth of VOC evaluation."""

    @abstractmethod
    def summary(self) -> str:
        """One line: the images and boxes read and what was clipped, dropped or skipped."""

    @abstractmethod
    def limit(self, n: int) -> None:
        """Keep only the first ``n`` items (``max_images``); the counts follow."""

    def set_epoch(self, epoch: int) -> None:
        """Called with the epoch number before every training epoch."""

    def box_sizes(self, limit: int) -> list[tuple[int, int, torch.Tensor]]:
        """``(width, height, xyxy training boxes)`` of the first ``limit`` images, from the
        annotations (no image is read): what the anchor check compares the anchors with.
        Default: none."""
        return []

    def check_image_sizes(self) -> None:
        """Refuse, before any training step, an image whose size differs from its annotation
        (evaluation splits: otherwise the first evaluation fails, after training). Default: no check."""


class Delegating(DetectionDataset):
    """A dataset whose everything but the items (``__len__``, ``__getitem__``, ``set_epoch``) is
    another's, ``inner``'s: :class:`~detkd.data.build.EpochSeeded` (``inner``: the dataset it seeds),
    :class:`~detkd.data.mixed.MixedDataset` (``inner``: the labeled set)."""

    @property
    def inner(self) -> DetectionDataset:
        raise NotImplementedError

    @property
    def class_names(self) -> list[str]:  # type: ignore[override]
        return self.inner.class_names

    @property
    def stats(self) -> dict[str, int]:  # type: ignore[override]
        return self.inner.stats

    def get_image_ids(self) -> list[int]:
        return self.inner.get_image_ids()

    def image_file(self, idx: int) -> Path:
        return self.inner.image_file(idx)

    def coco_ground_truth(self) -> COCO:
        return self.inner.coco_ground_truth()

    def voc_ground_truth(self, image_ids: Sequence[int]) -> list[dict[str, np.ndarray]]:
        return self.inner.voc_ground_truth(image_ids)

    def summary(self) -> str:
        return self.inner.summary()

    def box_sizes(self, limit: int) -> list[tuple[int, int, torch.Tensor]]:
        return self.inner.box_sizes(limit)

    def limit(self, n: int) -> None:
        self.inner.limit(n)
