"""Datasets and loaders from the config.

:data:`DATASETS` is the one registry of dataset formats: ``data.<split>.type`` -> the format's
dataset class (one file in detkd/data), which names its options dataclass (``options``) and
makes itself from its section (``build``). The config loader, ``--opts``, the option errors and
:func:`build_dataset` all derive from it (docs/datasets.md, "Adding a format").
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from detkd.config.schema import BaseDatasetConfig, DataConfig, TeacherConfig
from detkd.data.base import Delegating, DetectionDataset
from detkd.data.coco import CocoDetection
from detkd.data.csv import CsvDetection
from detkd.data.demo import DemoDetection
from detkd.data.images import ImagesDataset
from detkd.data.mixed import MixedDataset, MixedSampler, batch_split
from detkd.data.records import RecordDataset, attach_teacher
from detkd.data.sampler import ResumableSampler
from detkd.data.transforms import build_transforms
from detkd.data.utils import collate_fn
from detkd.data.voc import VOCDetection
from detkd.data.yolo import YoloDetection
from detkd.utils import dist
from detkd.errors import DetkdError

__all__ = ["DATASETS", "EpochSeeded", "build_dataset", "build_train_set", "build_train_sampler", "build_eval_loader", "check_label_maps", "dataset_options",
           "collate_fn", "dataset_types"]

# data.<split>.type -> its format; the options of each are DATASETS[type].options.
DATASETS: dict[str, type[RecordDataset]] = {
    "coco": CocoDetection,
    "voc": VOCDetection,
    "demo": DemoDetection,
    "yolo": YoloDetection,
    "csv": CsvDetection,
    "images": ImagesDataset,
}


def dataset_types() -> dict[str, type[BaseDatasetConfig]]:
    """``type`` -> options dataclass of every format (what the config loader validates against)."""
    return {name: fmt.options for name, fmt in DATASETS.items()}


def _check_formats() -> None:
    """Check that each format's options default to its name (a new format's slip is caught on
    import, not in a user's run)."""
    for name, fmt in DATASETS.items():
        if fmt.options.type != name:
            raise TypeError(f"DATASETS['{name}'] is {fmt.__name__}, whose options {fmt.options.__name__} "
                            f"default to type '{fmt.options.type}'")


_check_formats()


def dataset_options(type: str = "demo", **options: Any) -> BaseDatasetConfig:
    """The options of one split from their flat form: ``dataset_options(type="coco",
    image_dir=..., ann_file=...)`` is a :class:`~detkd.data.coco.CocoDatasetConfig`."""
    if type not in DATASETS:
        raise DetkdError(f"unknown dataset type '{type}' (types: {', '.join(DATASETS)})")
    return DATASETS[type].options(type=type, **options)


class EpochSeeded(Delegating):
    """Makes augmentation a pure function of (seed, epoch, index).

    Each item re-seeds the transform's random generators, so a resumed run, a run with
    another worker count, or another rank layout augments every image exactly as an
    uninterrupted run would. Everything else is the wrapped dataset's.
    """

    def __init__(self, dataset: DetectionDataset, seed: int) -> None:
        self.dataset = dataset
        self.seed = seed
        self.epoch = 0

    @property
    def inner(self) -> DetectionDataset:
        return self.dataset

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, idx: int) -> Any:
        digest = hashlib.blake2b(f"{self.seed}/{self.epoch}/{idx}".encode(), digest_size=4).digest()
        item_seed = int.from_bytes(digest, "little")
        random.seed(item_seed)
        np.random.seed(item_seed)
        # The transforms draw from torch's RNG; fork it so the model's random stream (RPN and
        # RoI samplers) never depends on data loading.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(item_seed)
            return self.dataset[idx]


def _read(ds: BaseDatasetConfig, data: DataConfig, train: bool) -> RecordDataset:
    fmt = DATASETS.get(ds.type)
    if fmt is None or type(ds) is not fmt.options:
        raise DetkdError(f"the options of type '{ds.type}' are {fmt.options.__name__ if fmt else 'unknown'} "
                         f"(types: {', '.join(DATASETS)}), got {type(ds).__name__}")
    transforms = build_transforms(data.augment, train=train) if train else None
    return fmt.build(ds, data, transforms=transforms, skip_empty=ds.skip_empty and train,
                     min_box_size=data.augment.min_box_size)


def build_dataset(ds: BaseDatasetConfig, data: DataConfig, train: bool, seed: int | None = None,
                  teacher: TeacherConfig | None = None) -> DetectionDataset:
    """One split as a dataset; training splits get augmentation (seeded per item). ``teacher``
    with ``detections``: every item also carries that offline teacher's detections."""
    dataset = _read(ds, data, train)
    if teacher is not None and teacher.detections:  # before max_images: the file may cover every image
        attach_teacher([dataset], teacher.detections, teacher.drop_unknown_classes)
    if ds.max_images is not None:
        dataset.limit(ds.max_images)
    if not train:  # seconds for a val set; a wrong size would otherwise stop the first evaluation
        dataset.check_image_sizes()
    if train and seed is not None:
        return EpochSeeded(dataset, seed)
    return dataset


def build_train_set(data: DataConfig, seed: int, teacher: TeacherConfig | None = None) -> DetectionDataset:
    """The training set: ``data.train``, and with ``data.unlabeled`` a :class:`MixedDataset` of
    both (the unlabeled set's labels dropped; an offline teacher's file read once for both)."""
    if data.unlabeled is None:
        return build_dataset(data.train, data, train=True, seed=seed, teacher=teacher)
    labeled, unlabeled = _read(data.train, data, True), _read(data.unlabeled, data, True)
    unlabeled.drop_labels()
    for ds, split in ((labeled, data.train), (unlabeled, data.unlabeled)):
        if split.max_images is not None:
            ds.limit(split.max_images)
    if teacher is not None and teacher.detections:  # after max_images: the two sets may share files
        attach_teacher([labeled, unlabeled], teacher.detections, teacher.drop_unknown_classes)
    if len(unlabeled) == 0:
        raise DetkdError(f"data.unlabeled holds no image ({data.unlabeled.type}: {data.unlabeled.location()})")
    # Another seed: an unlabeled image's augmentation is not its labeled namesake's.
    return MixedDataset(EpochSeeded(labeled, seed), EpochSeeded(unlabeled, seed + 1))


def build_train_sampler(train_set: DetectionDataset, data: DataConfig, batch_size: int, seed: int) -> Any:
    """The training sampler: :class:`ResumableSampler`, or for a :class:`MixedDataset`
    :class:`MixedSampler` with ``data.unlabeled_share`` of each batch unlabeled."""
    rank, world = dist.get_rank(), dist.get_world_size()
    if not isinstance(train_set, MixedDataset):
        return ResumableSampler(len(train_set), shuffle=True, seed=seed, rank=rank, world_size=world)
    try:
        n_l, n_u = batch_split(batch_size, data.unlabeled_share, len(train_set.labeled), len(train_set.unlabeled))
    except ValueError as exc:
        raise DetkdError(f"data.unlabeled: {exc}") from None
    return MixedSampler(len(train_set.labeled), len(train_set.unlabeled), n_l, n_u, seed=seed, rank=rank,
                        world_size=world)


def check_label_maps(train_set: DetectionDataset, val_set: DetectionDataset) -> None:
    """Label ``i`` must be the same class in training and validation: a model trained on one
    label map and scored on another is scored against the wrong classes. One line naming the
    first label that differs."""
    a, b = list(train_set.class_names), list(val_set.class_names)
    if a == b:
        return
    i = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
    first = f"train {a[i]!r} vs val {b[i]!r}" if i < min(len(a), len(b)) else \
        f"only the {'training' if len(a) > len(b) else 'validation'} set has it"
    raise DetkdError(f"the training and validation sets have different label maps (label {i + 1}: {first}; "
                     f"{len(a)} vs {len(b)} classes): give data.train and data.val the same classes")


def build_eval_loader(dataset: Dataset, batch_size: int, workers: int) -> DataLoader:
    """In-order loader; under torch.distributed each rank gets a disjoint shard."""
    sampler = ResumableSampler(len(dataset), shuffle=False, rank=dist.get_rank(),
                               world_size=dist.get_world_size(), pad=False)
    return DataLoader(dataset, batch_size=batch_size, sampler=sampler, num_workers=workers,
                      collate_fn=collate_fn, generator=torch.Generator().manual_seed(0))
