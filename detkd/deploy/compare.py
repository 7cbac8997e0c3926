"""Several models' detections side by side on the images of a dataset split where they differ.

:func:`compare_on_dataset` takes every model's detections on every image of the split (as
:func:`detkd.evaluation.inference.predict` returns them), scores each image per model (AP50,
:func:`~detkd.evaluation.thresholds.image_ap50`), picks the images with
:func:`~detkd.deploy.pictures.choose_images` and draws each as one row: a panel per model with
the boxes scoring at least its own display threshold, and the ground truth in a last panel.
It writes ``<stem>.png`` per image and ``selection.json`` (why each image was chosen).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import numpy as np

from detkd.deploy.pictures import choose_images, draw_detections, panel_row, save_png

__all__ = ["Shown", "compare_on_dataset", "threshold_caption"]


@dataclass
class Shown:
    """One model in a comparison: its title, detections ``{image_id: {"boxes", "scores",
    "labels"}}``, class names and the score threshold its boxes are drawn from (None: all),
    with where that threshold comes from."""

    title: str
    predictions: Mapping[int, Mapping[str, Any]]
    class_names: Sequence[str]
    score_thresh: Optional[float]
    thresh_source: str


def threshold_caption(score_thresh: Optional[float], source: str) -> str:
    """The caption line that says which boxes a panel shows."""
    return "all its detections" if score_thresh is None else f"boxes scoring >= {score_thresh:.2f} ({source})"


def plural(n: int, noun: str) -> str:
    """``1 box``, ``2 boxes``, ``0 annotated objects``."""
    return f"{n} {noun}" if n == 1 else f"{n} {noun}{'es' if noun.endswith(('x', 's')) else 's'}"


def as_detections(pred: Mapping[str, Any], class_names: Sequence[str],
                  score_thresh: Optional[float] = None) -> list[dict[str, Any]]:
    """Detection dicts (``box``, ``score``, ``label``, ``class``) of arrays, those scoring at least
    ``score_thresh`` (all for None)."""
    out = []
    for box, score, label in zip(np.asarray(pred["boxes"]).reshape(-1, 4).tolist(),
                                 np.asarray(pred["scores"]).reshape(-1).tolist(),
                                 np.asarray(pred["labels"]).reshape(-1).tolist()):
        if score_thresh is None or score >= score_thresh:
            name = class_names[label - 1] if 1 <= label <= len(class_names) else f"class{label}"
            out.append({"box": box, "score": score, "label": int(label), "class": name})
    return out


def shown(pred: Mapping[str, Any], score_thresh: Optional[float]) -> dict[str, np.ndarray]:
    """The detections (arrays) scoring at least ``score_thresh`` (all for None)."""
    scores = np.asarray(pred["scores"]).reshape(-1)
    keep = np.ones(len(scores), bool) if score_thresh is None else scores >= score_thresh
    return {"boxes": np.asarray(pred["boxes"]).reshape(-1, 4)[keep], "scores": scores[keep],
            "labels": np.asarray(pred["labels"]).reshape(-1)[keep]}


def compare_on_dataset(models: Sequence[Shown], dataset: Any, out: Path, n_differ: int = 3, n_typical: int = 2,
                       ahead: Optional[tuple[str, str]] = None) -> list[dict[str, Any]]:
    """Draw the chosen images of ``dataset`` (a :class:`~detkd.data.base.DetectionDataset`)
    into ``out``; returns one dict per picture: ``picture`` (its path), ``image`` (the source
    file), ``why`` and every model's ``ap50`` and ``boxes`` drawn there."""
    from detkd.evaluation.thresholds import image_ap50

    ids = dataset.get_image_ids()
    files = {image_id: Path(dataset.image_file(i)) for i, image_id in enumerate(ids)}
    truth = dict(zip(ids, dataset.voc_ground_truth(ids)))
    empty = {"boxes": np.zeros((0, 4)), "scores": np.zeros(0), "labels": np.zeros(0, np.int64)}
    # Each model's AP50 of what its picture shows (its boxes above its threshold): the images are
    # chosen, and captioned, by the difference a person sees.
    aps = {m.title: {i: image_ap50(shown(m.predictions.get(i, empty), m.score_thresh), truth[i]) for i in ids}
           for m in models}
    entries = []
    for image_id, why in choose_images(aps, n_differ, n_typical, ahead):
        pictures, captions, drawn = [], [], {}
        for m in models:
            dets = as_detections(m.predictions.get(image_id, empty), m.class_names, m.score_thresh)
            drawn[m.title] = len(dets)
            pictures.append(draw_detections(files[image_id], dets))
            captions.append([m.title, threshold_caption(m.score_thresh, m.thresh_source),
                             f"{plural(len(dets), 'box')}; AP50 on this image {aps[m.title][image_id]:.2f}"])
        gt = truth[image_id]
        if len(gt["labels"]):
            names = models[0].class_names
            boxes = [{"box": b, "label": int(lb), "class": names[int(lb) - 1] if 1 <= lb <= len(names) else str(lb)}
                     for b, lb in zip(np.asarray(gt["boxes"]).tolist(), np.asarray(gt["labels"]).tolist())]
            pictures.append(draw_detections(files[image_id], boxes))
            captions.append(["ground truth", f"{plural(len(boxes), 'annotated object')}", ""])
        picture = out / f"{files[image_id].stem}.png"
        save_png(panel_row(pictures, captions), picture)
        entries.append({"picture": str(picture), "image": str(files[image_id]), "why": why,
                        "ap50": {m.title: aps[m.title][image_id] for m in models}, "boxes": drawn})
    from detkd.utils.atomic import atomic_write_text

    atomic_write_text(json.dumps({"rule": selection_rule(n_differ, n_typical, ahead), "pictures": entries},
                                 indent=1), out / "selection.json")
    return entries


def selection_rule(n_differ: int, n_typical: int, ahead: Optional[tuple[str, str]]) -> str:
    """How :func:`compare_on_dataset` chose its images, in words."""
    extra = f", the one where {ahead[0]} beats {ahead[1]} most" if ahead else ""
    return (f"per-image AP50 (IoU 0.5, all classes ranked together) of the boxes each model's picture shows (above "
            f"its threshold) on every annotated image of "
            f"the split: the {n_differ} images with the largest spread between the models{extra}, and "
            f"{n_typical} typical images (mean AP50 over the models nearest the median image's)")
