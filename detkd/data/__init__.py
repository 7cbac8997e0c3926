"""Datasets (COCO, VOC, YOLO txt, synthetic demo), augmentations and batching for detection.

Every dataset is a :class:`~detkd.data.base.DetectionDataset`; ``build.DATASETS`` maps each
``data.<split>.type`` to its builder.
"""

from detkd.config.schema import AugmentConfig
from detkd.data.base import DetectionDataset
from detkd.data.coco import CocoDetection
from detkd.data.demo import generate_demo_dataset, save_preview
from detkd.data.transforms import build_transforms
from detkd.data.utils import collate_fn
from detkd.data.voc import VOC_CLASSES, VOCDetection
from detkd.data.yolo import YoloDetection

__all__ = [
    "AugmentConfig",
    "CocoDetection",
    "DetectionDataset",
    "VOCDetection",
    "VOC_CLASSES",
    "YoloDetection",
    "build_transforms",
    "collate_fn",
    "generate_demo_dataset",
    "save_preview",
]
