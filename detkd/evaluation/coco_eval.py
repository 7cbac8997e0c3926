"""COCO-style detection metrics computed with pycocotools.

:func:`detections_to_coco` turns torchvision detectors' eval outputs into COCO result
dicts, :func:`evaluate_coco` runs the official ``COCOeval`` on them and returns the 12
standard numbers by name. The numbers are exactly those of a direct pycocotools run on
the same detections; the wrapper only adds input checks, quiet output and two fixes:

* the caller's ground truth and result dicts are left untouched (``loadRes`` writes
  ``area``/``id``/``iscrowd``/``segmentation`` into each result dict and ``COCOeval``
  writes ``ignore`` — and for ``segm`` RLE masks — into the ground-truth annotations;
  both happen here on private shallow copies);
* an empty result list, on which ``loadRes`` crashes, is evaluated against an empty
  result set instead. This gives what pycocotools reports for detections that match
  nothing: 0.0 for every AP/AR whose ground truth is non-empty, and -1.0 where the metric
  is undefined (e.g. ``APl`` when there is no large ground-truth box), just as for a
  non-empty result list.
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Optional

import numpy as np

from detkd.errors import DetkdError

__all__ = ["COCO_METRIC_NAMES", "detections_to_coco", "evaluate_coco", "coco_summary_table", "per_class_table"]

#: Names of ``COCOeval.stats`` for ``bbox``/``segm``, in pycocotools' order.
COCO_METRIC_NAMES = (
    "AP", "AP50", "AP75", "APs", "APm", "APl",
    "AR1", "AR10", "AR100", "ARs", "ARm", "ARl",
)

_IOU_TYPES = ("bbox", "segm")


def to_numpy(value: Any, dtype, what: str) -> np.ndarray:
    if hasattr(value, "detach"):  # torch.Tensor, on any device
        value = value.detach().cpu().numpy()
    try:
        return np.asarray(value, dtype=dtype)
    except (TypeError, ValueError) as exc:
        raise DetkdError(f"{what} cannot be read as a numeric array: {exc}") from None


def detections_to_coco(
    outputs: Sequence[Mapping[str, Any]],
    image_ids: Sequence[int],
    label_to_cat_id: Mapping[int, int],
) -> list[dict]:
    """Convert detector outputs to COCO result dicts.

    Args:
        outputs: one dict per image as returned by a torchvision detector in eval
            mode: ``boxes`` [N, 4] xyxy in original image coordinates, ``scores`` [N],
            ``labels`` [N] contiguous labels 1..C. Tensors (any device) or arrays.
        image_ids: the COCO image id of each output, same order.
        label_to_cat_id: contiguous label -> COCO category id.

    Returns:
        ``[{"image_id": int, "category_id": int, "bbox": [x, y, w, h], "score": float}]``
        with plain Python numbers (JSON-serialisable), images in input order and
        detections in their per-image order.
    """
    if len(outputs) != len(image_ids):
        raise DetkdError(
            f"detections_to_coco: {len(outputs)} outputs but {len(image_ids)} image ids"
        )
    cat_of = {int(k): int(v) for k, v in label_to_cat_id.items()}
    results: list[dict] = []
    for out, image_id in zip(outputs, image_ids):
        for key in ("boxes", "scores", "labels"):
            if key not in out:
                raise DetkdError(f"detections for image {image_id} have no '{key}'")
        boxes = to_numpy(out["boxes"], np.float64, f"boxes of image {image_id}")
        scores = to_numpy(out["scores"], np.float64, f"scores of image {image_id}")
        labels = to_numpy(out["labels"], np.int64, f"labels of image {image_id}")
        n = labels.reshape(-1).shape[0]
        if boxes.size == 0 and n == 0 and scores.size == 0:
            continue
        if boxes.ndim != 2 or boxes.shape[1] != 4:
            raise DetkdError(
                f"boxes of image {image_id} have shape {tuple(boxes.shape)}, expected [N, 4]"
            )
        scores, labels = scores.reshape(-1), labels.reshape(-1)
        if not (boxes.shape[0] == scores.shape[0] == labels.shape[0]):
            raise DetkdError(
                f"image {image_id}: {boxes.shape[0]} boxes, {scores.shape[0]} scores and "
                f"{labels.shape[0]} labels"
            )
        xywh = boxes.copy()
        xywh[:, 2:] -= boxes[:, :2]
        for box, score, label in zip(xywh.tolist(), scores.tolist(), labels.tolist()):
            try:
                cat_id = cat_of[label]
            except KeyError:
                raise DetkdError(
                    f"label {label} in detections of image {image_id} has no COCO "
                    f"category id (known labels: {sorted(cat_of)})"
                ) from None
            results.append(
                {"image_id": int(image_id), "category_id": cat_id, "bbox": box, "score": score}
            )
    return results


def _private_gt(coco_gt):
    """A COCO object sharing everything with ``coco_gt`` but its annotation dicts."""
    from pycocotools.coco import COCO

    dataset = coco_gt.dataset
    if "images" not in dataset or "categories" not in dataset:
        raise DetkdError("COCO ground truth has no 'images' or no 'categories' list")
    gt = COCO()
    gt.dataset = dict(dataset)
    gt.dataset["annotations"] = [dict(a) for a in dataset.get("annotations", [])]
    with contextlib.redirect_stdout(io.StringIO()):  # our copy: never chatty
        gt.createIndex()
    return gt


def _empty_results(coco_gt):
    from pycocotools.coco import COCO

    dt = COCO()
    dt.dataset = {
        "images": list(coco_gt.dataset["images"]),
        "categories": [dict(c) for c in coco_gt.dataset["categories"]],
        "annotations": [],
    }
    with contextlib.redirect_stdout(io.StringIO()):
        dt.createIndex()
    return dt


def _check_results(results: Sequence[Mapping], gt_img_ids: set, gt_cat_ids: set, iou_type: str):
    need = "bbox" if iou_type == "bbox" else "segmentation"
    for i, r in enumerate(results):
        for key in ("image_id", "category_id", "score", need):
            if key not in r:
                raise DetkdError(f"COCO result #{i} has no '{key}'")
        if r["image_id"] not in gt_img_ids:
            raise DetkdError(
                f"COCO result #{i} refers to image_id {r['image_id']}, which is not in the "
                f"ground truth"
            )
        if r["category_id"] not in gt_cat_ids:
            raise DetkdError(
                f"COCO result #{i} has category_id {r['category_id']}, which is not a "
                f"ground-truth category (known: {sorted(gt_cat_ids)})"
            )


def evaluate_coco(
    coco_gt,
    results: Sequence[Mapping[str, Any]],
    img_ids: Optional[Iterable[int]] = None,
    iou_type: str = "bbox",
    verbose: bool = False,
    per_class: Optional[list] = None,
) -> dict[str, float]:
    """Run pycocotools' ``COCOeval`` and return its 12 summary numbers by name.

    Args:
        coco_gt: a ``pycocotools.coco.COCO`` ground truth (not modified).
        results: COCO result dicts, e.g. from :func:`detections_to_coco` (not modified).
        img_ids: evaluate on these images only (default: every image of ``coco_gt``).
            Detections on other images are ignored, like ``params.imgIds`` does.
        iou_type: ``"bbox"`` or ``"segm"``.
        verbose: print pycocotools' own output (otherwise it is swallowed).
        per_class: a list to extend with one ``{"category_id", "name", "AP", "AP50"}`` row
            per category (from the same COCOeval run; see :func:`per_class_table`).

    Returns:
        ``{name: float}`` for the names in :data:`COCO_METRIC_NAMES` (fractions in
        [0, 1]; -1.0 where pycocotools finds the metric undefined, e.g. no ground truth
        in that area range). An empty ``results`` gives 0.0 where ground truth exists.
    """
    from pycocotools.cocoeval import COCOeval

    if iou_type not in _IOU_TYPES:
        raise DetkdError(f"iou_type must be one of {_IOU_TYPES}, got {iou_type!r}")
    gt = _private_gt(coco_gt)
    gt_img_ids = set(gt.getImgIds())
    if img_ids is None:
        eval_ids = sorted(gt_img_ids)
    else:
        eval_ids = sorted({int(i) for i in img_ids})
        unknown = [i for i in eval_ids if i not in gt_img_ids]
        if unknown:
            raise DetkdError(f"img_ids not in the COCO ground truth: {unknown[:10]}")
    if not eval_ids:
        raise DetkdError("no images to evaluate (empty COCO ground truth or img_ids)")
    results = list(results)
    _check_results(results, gt_img_ids, set(gt.getCatIds()), iou_type)

    sink = contextlib.nullcontext() if verbose else contextlib.redirect_stdout(io.StringIO())
    with sink:
        if results:
            # loadRes writes into every result dict: hand it copies.
            dt = gt.loadRes([dict(r) for r in results])
        else:
            dt = _empty_results(gt)
        coco_eval = COCOeval(gt, dt, iouType=iou_type)
        coco_eval.params.imgIds = eval_ids
        coco_eval.evaluate()
        coco_eval.accumulate()
        coco_eval.summarize()
    if per_class is not None:
        per_class.extend(_per_class_ap(coco_eval, gt))
    return {name: float(v) for name, v in zip(COCO_METRIC_NAMES, coco_eval.stats)}


def _per_class_ap(coco_eval, gt) -> list[dict]:
    """AP and AP50 of each category from ``COCOeval.eval["precision"]`` ([T, R, K, A, M]:
    IoU thresholds, recall points, categories, area ranges, max detections), area "all",
    100 detections: the per-category version of ``stats[0]``/``stats[1]`` (-1 where the
    category has no ground truth)."""
    precision = coco_eval.eval["precision"]
    iou50 = int(np.argmin(np.abs(coco_eval.params.iouThrs - 0.5)))
    rows = []
    for k, cat_id in enumerate(coco_eval.params.catIds):
        p_all = precision[:, :, k, 0, -1]
        p_50 = precision[iou50, :, k, 0, -1]
        rows.append({
            "category_id": int(cat_id), "name": gt.cats[cat_id]["name"],
            "AP": float(np.mean(p_all[p_all > -1])) if (p_all > -1).any() else -1.0,
            "AP50": float(np.mean(p_50[p_50 > -1])) if (p_50 > -1).any() else -1.0,
        })
    return rows


def per_class_table(rows: Sequence[Mapping[str, Any]]) -> str:
    """The per-class AP rows of :func:`evaluate_coco` as a plain-text table (percent)."""
    width = max([len("class")] + [len(str(r["name"])) for r in rows])
    lines = [f"{'class':<{width}}  {'AP':>5}  {'AP50':>5}"]
    for r in rows:
        cells = ["  n/a" if r[k] < 0 else f"{100 * r[k]:5.1f}" for k in ("AP", "AP50")]
        lines.append(f"{str(r['name']):<{width}}  {cells[0]}  {cells[1]}")
    return "\n".join(lines)


def coco_summary_table(metrics: Mapping[str, float]) -> str:
    """Two log lines with the AP and AR numbers in percent (``n/a`` for -1).

    Example::

        AP 37.2 | AP50 58.1 | AP75 40.0 | APs 21.0 | APm 40.9 | APl 48.0
        AR1 31.0 | AR10 49.0 | AR100 51.5 | ARs 32.0 | ARm 55.0 | ARl 65.0

    Only the standard names present in ``metrics`` are shown.
    """

    def fmt(name: str) -> str:
        value = float(metrics[name])
        return f"{name} n/a" if value < 0 else f"{name} {100.0 * value:.1f}"

    lines = []
    for group in (COCO_METRIC_NAMES[:6], COCO_METRIC_NAMES[6:]):
        cells = [fmt(n) for n in group if n in metrics]
        if cells:
            lines.append(" | ".join(cells))
    return "\n".join(lines)
