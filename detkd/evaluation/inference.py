"""Run a detector over an evaluation loader and score it (COCO and/or VOC metrics).

Under ``torch.distributed`` each rank predicts its shard of the loader; the predictions
are gathered on rank 0 for one COCO evaluation, and the metrics broadcast back.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from detkd.data.base import DetectionDataset
from detkd.modeling.checkpoint_io import set_display_threshold
from detkd.utils import dist
from detkd.errors import DetkdError
from detkd.evaluation.coco_eval import detections_to_coco, evaluate_coco
from detkd.evaluation.thresholds import f1_optimal_threshold
from detkd.evaluation.voc_eval import evaluate_voc


@torch.inference_mode()
def predict(model: nn.Module, loader: DataLoader, device: torch.device,
            progress: bool | None = None) -> dict[int, dict[str, np.ndarray]]:
    """``{image_id: {"boxes", "scores", "labels"}}`` (numpy, original image coordinates),
    without label-0 (background) detections (:func:`detkd.modeling.families.foreground`)."""
    from tqdm import tqdm

    from detkd.modeling.families import foreground

    was_training = model.training
    model.eval()
    preds: dict[int, dict[str, np.ndarray]] = {}
    from detkd.utils.runtime import show_progress

    disable = not show_progress(progress)
    for images, targets in tqdm(loader, desc="eval", leave=False, disable=disable, dynamic_ncols=True):
        outputs = model([img.to(device) for img in images])
        for target, out in zip(targets, outputs):
            preds[int(target["image_id"])] = {k: v.cpu().numpy() for k, v in foreground(out).items()}
    model.train(was_training)
    return preds


def score_predictions(preds: dict[int, dict[str, np.ndarray]], dataset: DetectionDataset, metric: str,
                      per_class: list | None = None) -> dict[str, float]:
    """COCO metrics (AP, AP50, ...) and/or VOC mAP@0.5 (``VOC_mAP``, ``VOC_mAP_07``) of
    ``{image_id: detections}`` against the dataset's ground truth; with ``per_class`` (a
    list), also the COCO AP of each class (see ``evaluate_coco``)."""
    names = list(dataset.class_names)
    image_ids = sorted(preds)
    metrics: dict[str, float] = {}
    if metric in ("coco", "both"):
        coco, label_to_cat = dataset.coco_ground_truth()
        results = detections_to_coco([preds[i] for i in image_ids], image_ids, label_to_cat)
        metrics.update(evaluate_coco(coco, results, img_ids=image_ids, per_class=per_class))
    if metric in ("voc", "both"):
        gts = dataset.voc_ground_truth(image_ids)
        voc = evaluate_voc(gts, [preds[i] for i in image_ids], num_classes=len(names) + 1, class_names=names)
        metrics["VOC_mAP"] = voc["mAP"]
        metrics["VOC_mAP_07"] = voc["mAP_07"]
    metrics.update(display_threshold(preds, dataset, image_ids))
    return metrics


def display_threshold(preds: dict[int, dict[str, np.ndarray]], dataset: DetectionDataset,
                      image_ids: list[int]) -> dict[str, float]:
    """``{"F1_50", "display_thresh"}``: the best F1 at IoU 0.5 over all classes and the score
    threshold reaching it (:func:`~detkd.evaluation.thresholds.f1_optimal_threshold`); empty
    without detections or ground truth."""
    best = f1_optimal_threshold([preds[i] for i in image_ids], dataset.voc_ground_truth(image_ids))
    return {} if best is None else {"F1_50": best["F1"], "display_thresh": best["score_thresh"]}


def evaluate_detector(model: nn.Module, loader: DataLoader, dataset: DetectionDataset, metric: str,
                      device: torch.device, progress: bool | None = None, predictions: dict | None = None,
                      per_class: list | None = None) -> dict[str, float]:
    """Predict (sharded over ranks), gather on rank 0, score, broadcast the metrics. On rank 0,
    ``predictions`` (a dict) receives every image's detections and ``per_class`` (a list) the
    per-class COCO APs. The metrics' ``display_thresh`` is left on ``model`` too
    (:func:`~detkd.modeling.checkpoint_io.set_display_threshold`), so that the model file
    written after this evaluation records it."""
    preds = predict(model, loader, device, progress)
    gathered = dist.all_gather_object(preds) if dist.is_dist() else [preds]
    metrics: dict[str, float] = {}
    if dist.is_main():
        merged: dict[int, dict[str, np.ndarray]] = {}
        for part in gathered:
            merged.update(part)
        metrics = score_predictions(merged, dataset, metric, per_class)
        if predictions is not None:
            predictions.update(merged)
    metrics = dist.broadcast_object(metrics)
    set_display_threshold(model, metrics)
    return metrics


def load_detector(model_cfg: Any, checkpoint: str) -> nn.Module:
    """``build_detector(model_cfg)`` with the weights of ``checkpoint`` (a detkd checkpoint
    such as last.pth/best.pth, a model_final.pth or any plain state dict); a file that does
    not match the config is a one-line error naming it. Shared by tools/eval_det.py and
    the speed/accuracy report, so both score exactly the same model."""
    from detkd.modeling.detector import build_detector
    from detkd.modeling.weights import load_matching, read_state_dict

    model = build_detector(model_cfg)
    load_matching(model, read_state_dict(checkpoint), f"checkpoint {checkpoint}")
    return model


def build_eval_data(cfg: Any, split: str = "val") -> tuple[DetectionDataset, DataLoader]:
    """The evaluation dataset (no augmentation) and in-order loader of ``cfg.data.<split>``
    with ``eval.batch_size`` and ``train.workers``, as tools/eval_det.py evaluates."""
    from detkd.data.build import build_dataset, build_eval_loader

    if split not in ("val", "train"):
        raise DetkdError(f"split must be 'val' or 'train', got '{split}'")
    dataset = build_dataset(getattr(cfg.data, split), cfg.data, train=False)
    return dataset, build_eval_loader(dataset, cfg.eval.batch_size, cfg.train.workers)
