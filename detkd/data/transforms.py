"""Training augmentations for detection (albumentations), configured by
:class:`detkd.config.schema.AugmentConfig`.

Transforms work on numpy data, before tensor conversion: they are called as
``transform(image, boxes, labels) -> (image, boxes, labels)`` with ``image`` HxWx3 uint8,
``boxes`` float32 ``[N,4]`` xyxy pixels and ``labels`` int64 ``[N]``. Evaluation uses the
identity: resizing/normalisation is done by torchvision's ``GeneralizedRCNNTransform``.
"""

from __future__ import annotations

import contextlib
import inspect
import os
import random
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch

from detkd.config.schema import AugmentConfig
from detkd.data.utils import DetectionTransform, clip_boxes

# Padding colour for zoom-out: the ImageNet mean, i.e. ~0 after the model's normalisation.
PAD_FILL = (124, 116, 104)


def _kwargs_for(cls: Any, preferred: dict[str, Any], fallback: dict[str, Any]) -> dict[str, Any]:
    """Pick keyword arguments by name from ``cls``'s signature: each ``preferred`` name
    (albumentations 2.x) if accepted, else its ``fallback`` counterpart (1.x), in order."""
    params = inspect.signature(cls).parameters
    chosen: dict[str, Any] = {}
    for (new, value), (old, old_value) in zip(preferred.items(), fallback.items()):
        if new in params:
            chosen[new] = value
        elif old in params:
            chosen[old] = old_value
    return chosen


@contextlib.contextmanager
def _seeded_global_rngs(seed: int) -> Iterator[None]:
    """Seed Python's and NumPy's global RNGs for a block, then restore their states."""
    py_state, np_state = random.getstate(), np.random.get_state()
    random.seed(seed)
    np.random.seed(seed)
    try:
        yield
    finally:
        random.setstate(py_state)
        np.random.set_state(np_state)


def identity_transform(
    image: np.ndarray, boxes: np.ndarray, labels: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Evaluation transform: returns its inputs unchanged."""
    return image, boxes, labels


class AlbumentationsTransform:
    """Run an albumentations ``Compose`` on ``(image, boxes, labels)`` and re-validate boxes.

    The pipeline is re-seeded from torch's RNG on every call so augmentation is
    reproducible under ``torch.manual_seed`` and differs between DataLoader workers
    (which torch seeds individually), unlike albumentations' own OS-entropy default.
    """

    def __init__(self, compose: Any, min_box_size: float) -> None:
        self.compose = compose
        self.min_box_size = min_box_size

    def __call__(
        self, image: np.ndarray, boxes: np.ndarray, labels: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        boxes = np.asarray(boxes, dtype=np.float32).reshape(-1, 4)
        labels = np.asarray(labels)
        seed = int(torch.randint(0, 2**31 - 1, ()).item())
        if hasattr(self.compose, "set_random_seed"):  # albumentations >= 2
            self.compose.set_random_seed(seed)
            out = self.compose(image=image, bboxes=boxes, labels=labels)
        else:  # albumentations 1.x draws from the global random / np.random state
            with _seeded_global_rngs(seed):
                out = self.compose(image=image, bboxes=boxes, labels=labels)
        image = out["image"]
        boxes = np.asarray(out["bboxes"], dtype=np.float32).reshape(-1, 4)
        labels = np.asarray(out["labels"], dtype=labels.dtype).reshape(-1)
        # albumentations already clips/filters; this guarantees the contract regardless
        # of version-specific rounding (x2 > x1, y2 > y1, inside the image).
        h, w = image.shape[:2]
        boxes, keep, _ = clip_boxes(boxes, w, h, self.min_box_size)
        return image, boxes[keep], labels[keep]


def build_transforms(cfg: AugmentConfig, train: bool) -> DetectionTransform:
    """Build the dataset transform: augmentation for training, identity for evaluation.

    Scale jitter is a zoom of the content on a fixed-size canvas (albumentations
    ``Affine`` with ``keep_ratio``, plus a random shift so zoom-in can show any region):
    a plain image resize would be undone by the detector's own resize to ``min_size``.
    """
    if not train:
        return identity_transform
    # Must be set before albumentations is imported: it otherwise queries PyPI on import.
    os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
    import albumentations as A
    import cv2

    ops: list[Any] = []
    if cfg.hflip > 0:
        ops.append(A.HorizontalFlip(p=cfg.hflip))
    if cfg.scale_jitter is not None:
        lo, hi = cfg.scale_jitter
        shift = max(0.0, (hi - 1.0) / 2.0)
        # albumentations 2.x renamed mode/cval to border_mode/fill (old names warn/fail).
        padding = _kwargs_for(
            A.Affine,
            {"border_mode": cv2.BORDER_CONSTANT, "fill": PAD_FILL},
            {"mode": cv2.BORDER_CONSTANT, "cval": PAD_FILL},
        )
        ops.append(
            A.Affine(
                scale=(lo, hi),
                translate_percent=(-shift, shift) if shift > 0 else None,
                keep_ratio=True,
                p=1.0,
                **padding,
            )
        )
    if cfg.color_jitter > 0:
        s = cfg.color_jitter
        ops.append(A.ColorJitter(brightness=s, contrast=s, saturation=s, hue=0.0, p=1.0))
    # clip / filter_invalid_bboxes only exist in newer versions; AlbumentationsTransform
    # re-validates boxes either way.
    optional = {"clip": True, "filter_invalid_bboxes": True}
    supported = inspect.signature(A.BboxParams).parameters
    bbox_params = A.BboxParams(
        format="pascal_voc",
        label_fields=["labels"],
        min_width=cfg.min_box_size,
        min_height=cfg.min_box_size,
        **{k: v for k, v in optional.items() if k in supported},
    )
    return AlbumentationsTransform(A.Compose(ops, bbox_params=bbox_params), cfg.min_box_size)
