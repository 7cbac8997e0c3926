"""Datasets (COCO, VOC, YOLO txt, CSV, synthetic demo), augmentations and batching for detection.

Every dataset is a :class:`~detkd.data.base.DetectionDataset` (one implementation:
:class:`~detkd.data.records.RecordDataset`); ``build.DATASETS`` maps each
``data.<split>.type`` to its format.
"""

from detkd.config.schema import AugmentConfig
from detkd.data.base import DetectionDataset
from detkd.data.build import DATASETS  # registers the formats' options with the config loader
from detkd.data.coco import CocoDetection
from detkd.data.demo import generate_demo_dataset, save_preview
from detkd.data.records import ImageRecord, RecordDataset
from detkd.data.transforms import build_transforms
from detkd.data.utils import collate_fn
from detkd.data.voc import VOC_CLASSES, VOCDetection
from detkd.data.yolo import YoloDetection

__all__ = [
    "AugmentConfig",
    "DATASETS",
    "CocoDetection",
    "DetectionDataset",
    "ImageRecord",
    "RecordDataset",
    "VOCDetection",
    "VOC_CLASSES",
    "YoloDetection",
    "build_transforms",
    "collate_fn",
    "generate_demo_dataset",
    "save_preview",
]
