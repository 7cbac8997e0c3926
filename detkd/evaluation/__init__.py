"""Detection metrics: COCO (pycocotools) and PASCAL VOC mAP."""

from detkd.evaluation.coco_eval import (
    COCO_METRIC_NAMES,
    coco_summary_table,
    detections_to_coco,
    evaluate_coco,
)
from detkd.evaluation.voc_eval import evaluate_voc, voc_ap

__all__ = [
    "COCO_METRIC_NAMES",
    "coco_summary_table",
    "detections_to_coco",
    "evaluate_coco",
    "evaluate_voc",
    "voc_ap",
]
