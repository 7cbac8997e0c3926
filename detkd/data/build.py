"""Datasets and loaders from the config."""

from __future__ import annotations

import hashlib
import random
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from detkd.config.schema import (
    BaseDatasetConfig,
    CocoDatasetConfig,
    DataConfig,
    DemoDatasetConfig,
    VOCDatasetConfig,
    YoloDatasetConfig,
)
from detkd.data.base import DetectionDataset
from detkd.data.coco import CocoDetection
from detkd.data.sampler import ResumableSampler
from detkd.data.transforms import build_transforms
from detkd.data.utils import DetectionTransform, collate_fn
from detkd.data.voc import VOCDetection
from detkd.data.yolo import YoloDetection
from detkd.utils import dist
from detkd.errors import DetkdError

__all__ = ["DATASETS", "EpochSeeded", "build_dataset", "build_eval_loader", "collate_fn", "demo_paths"]


def demo_paths(data: DataConfig, split: str) -> tuple[Path, Path]:
    """Generate (or reuse the cached) embedded demo data; return (image_dir, ann_file)."""
    from detkd.data.demo import generate_demo_dataset

    if split not in ("train", "val"):
        raise DetkdError(f"data split for type 'demo' must be 'train' or 'val', got '{split}'")
    demo = data.demo
    out = Path(demo.out_dir)
    # One process generates; the others wait and reuse the cache.
    if dist.is_main():
        generate_demo_dataset(out, seed=demo.seed, num_train=demo.num_train, num_val=demo.num_val,
                              image_size=demo.image_size)
    dist.barrier()
    return out / split, out / "annotations" / f"instances_{split}.json"


class EpochSeeded(DetectionDataset):
    """Makes augmentation a pure function of (seed, epoch, index).

    Each item re-seeds the transform's random generators, so a resumed run, a run with
    another worker count, or another rank layout augments every image exactly as an
    uninterrupted run would. Everything else is the wrapped dataset's.
    """

    def __init__(self, dataset: DetectionDataset, seed: int) -> None:
        self.dataset = dataset
        self.seed = seed
        self.epoch = 0

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

    @property
    def class_names(self) -> list[str]:  # type: ignore[override]
        return self.dataset.class_names

    @property
    def stats(self) -> dict[str, int]:  # type: ignore[override]
        return self.dataset.stats

    def get_image_ids(self) -> list[int]:
        return self.dataset.get_image_ids()

    def image_file(self, idx: int) -> Path:
        return self.dataset.image_file(idx)

    def coco_ground_truth(self) -> Any:
        return self.dataset.coco_ground_truth()

    def voc_ground_truth(self, image_ids: Sequence[int]) -> list[dict[str, np.ndarray]]:
        return self.dataset.voc_ground_truth(image_ids)

    def summary(self) -> str:
        return self.dataset.summary()

    def limit(self, n: int) -> None:
        self.dataset.limit(n)


# ----------------------------------------------------------------------------- builders
# One per data.<split>.type: (options, data section, train?, transforms) -> dataset. A split
# is trained on with ``train`` (skip_empty applies then) and augmented by ``transforms``.


def _coco_files(image_dir: Path, ann_file: Path, ds: BaseDatasetConfig, data: DataConfig, train: bool,
                transforms: DetectionTransform | None) -> CocoDetection:
    # Missing image files are found here (one stat each), not an epoch into training.
    return CocoDetection(image_dir, ann_file, transforms=transforms, skip_empty=ds.skip_empty and train,
                         min_box_size=data.augment.min_box_size, check_files=True)


def build_coco(ds: CocoDatasetConfig, data: DataConfig, train: bool,
               transforms: DetectionTransform | None) -> DetectionDataset:
    if not ds.ann_file or not ds.image_dir:
        raise DetkdError("a coco dataset needs both 'image_dir' and 'ann_file' in its data section")
    return _coco_files(Path(ds.image_dir), Path(ds.ann_file), ds, data, train, transforms)


def build_demo(ds: DemoDatasetConfig, data: DataConfig, train: bool,
               transforms: DetectionTransform | None) -> DetectionDataset:
    image_dir, ann_file = demo_paths(data, ds.split)
    return _coco_files(image_dir, ann_file, ds, data, train, transforms)


def build_voc(ds: VOCDatasetConfig, data: DataConfig, train: bool,
              transforms: DetectionTransform | None) -> DetectionDataset:
    if not ds.root:
        raise DetkdError("a voc dataset needs 'root' (the VOCdevkit/VOC2007 directory) in its data section")
    kwargs = {"classes": ds.classes} if ds.classes else {}
    return VOCDetection(ds.root, split=ds.split, transforms=transforms, use_difficult=ds.use_difficult,
                        skip_empty=ds.skip_empty and train, min_box_size=data.augment.min_box_size,
                        check_files=True, **kwargs)


def build_yolo(ds: YoloDatasetConfig, data: DataConfig, train: bool,
               transforms: DetectionTransform | None) -> DetectionDataset:
    if not ds.root:
        raise DetkdError("a yolo dataset needs 'root' (the directory of its data.yaml) in its data section")
    return YoloDetection(ds.root, split=ds.split, transforms=transforms, skip_empty=ds.skip_empty and train,
                         min_box_size=data.augment.min_box_size)


# data.<split>.type -> builder; the options of each type are detkd.config.schema.DATASET_TYPES.
DATASETS: dict[str, Callable[[Any, DataConfig, bool, DetectionTransform | None], DetectionDataset]] = {
    "coco": build_coco,
    "voc": build_voc,
    "demo": build_demo,
    "yolo": build_yolo,
}


def build_dataset(ds: BaseDatasetConfig, data: DataConfig, train: bool, seed: int | None = None) -> DetectionDataset:
    """One split as a dataset; training splits get augmentation (seeded per item)."""
    if ds.type not in DATASETS:
        raise DetkdError(f"no dataset builder for type '{ds.type}' (types: {', '.join(DATASETS)})")
    transforms = build_transforms(data.augment, train=train) if train else None
    dataset = DATASETS[ds.type](ds, data, train, transforms)
    if ds.max_images is not None:
        dataset.limit(ds.max_images)
    if train and seed is not None:
        return EpochSeeded(dataset, seed)
    return dataset


def build_eval_loader(dataset: Dataset, batch_size: int, workers: int) -> DataLoader:
    """In-order loader; under torch.distributed each rank gets a disjoint shard."""
    sampler = ResumableSampler(len(dataset), shuffle=False, rank=dist.get_rank(),
                               world_size=dist.get_world_size(), pad=False)
    return DataLoader(dataset, batch_size=batch_size, sampler=sampler, num_workers=workers,
                      collate_fn=collate_fn, generator=torch.Generator().manual_seed(0))
