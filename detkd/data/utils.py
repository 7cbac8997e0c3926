"""Helpers shared by the detection datasets: box cleaning, image loading, targets, COCO objects, collate."""

from __future__ import annotations

import contextlib
import io
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from pycocotools.coco import COCO

from detkd.errors import DetkdError

# (image HxWx3 uint8, boxes [N,4] xyxy float32, labels [N] int64) -> same triple
DetectionTransform = Callable[
    [np.ndarray, np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray, np.ndarray]
]


def collate_fn(batch: Sequence[tuple[Any, Any]]) -> tuple[tuple[Any, ...], tuple[Any, ...]]:
    """Collate ``(image, target)`` pairs into ``(images, targets)`` without stacking.

    Detection images differ in size and targets in box count, so (as in torchvision's
    detection references) a batch is kept as two tuples that torchvision detectors accept.
    """
    images, targets = zip(*batch)
    return images, targets


def clip_boxes(
    boxes: np.ndarray, width: float, height: float, min_box_size: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Clip xyxy boxes to the image and find the degenerate ones.

    Returns ``(clipped_boxes, keep, was_clipped)``: ``keep`` is False for boxes whose
    width or height is not positive or below ``min_box_size`` after clipping (this also
    drops boxes given with negative width/height and boxes entirely outside the image);
    ``was_clipped`` marks kept boxes that the clipping changed.
    """
    boxes = np.asarray(boxes, dtype=np.float32).reshape(-1, 4)
    clipped = boxes.copy()
    clipped[:, 0::2] = clipped[:, 0::2].clip(0.0, width)
    clipped[:, 1::2] = clipped[:, 1::2].clip(0.0, height)
    w = clipped[:, 2] - clipped[:, 0]
    h = clipped[:, 3] - clipped[:, 1]
    # A box given with negative size collapses to zero width/height above, but test it
    # explicitly so an inverted box is never "repaired" by clipping.
    valid_input = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
    keep = valid_input & (w > 0) & (h > 0) & (w >= min_box_size) & (h >= min_box_size)
    was_clipped = keep & np.any(clipped != boxes, axis=1)
    return clipped, keep, was_clipped


def load_rgb_image(path: Path) -> np.ndarray:
    """Load an image file as HxWx3 uint8 RGB (grayscale, palette and RGBA are converted)."""
    if not path.is_file():
        raise DetkdError(f"image file not found: {path}")
    try:
        with Image.open(path) as img:
            return np.asarray(img.convert("RGB"), dtype=np.uint8).copy()
    except UnidentifiedImageError:  # PIL's message repeats the path
        raise DetkdError(f"cannot read image {path}: not an image file PIL can identify "
                         "(corrupt or truncated?)") from None
    except (OSError, ValueError) as exc:
        raise DetkdError(f"cannot read image {path}: {exc}") from None


def read_image_size(path: Path) -> tuple[int, int]:
    """Return ``(width, height)`` of an image file, reading only its header."""
    if not path.is_file():
        raise DetkdError(f"image file not found: {path}")
    try:
        with Image.open(path) as img:
            return img.size
    except UnidentifiedImageError:  # PIL's message repeats the path; the same words as load_rgb_image
        raise DetkdError(f"cannot read image {path}: not an image file PIL can identify "
                         "(corrupt or truncated?)") from None
    except OSError as exc:
        raise DetkdError(f"cannot read image {path}: {exc}") from exc


def apply_transforms(
    transforms: DetectionTransform | None,
    image: np.ndarray,
    boxes: np.ndarray,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Run ``transforms`` and return ``(image, boxes, keep_idx)``.

    The transform gets box indices as its labels, so any per-box field (labels, difficult,
    crowd...) can be re-gathered after boxes were dropped or reordered.
    """
    idx = np.arange(len(boxes), dtype=np.int64)
    if transforms is None:
        return image, boxes, idx
    image, boxes, idx = transforms(image, boxes, idx)
    return image, np.asarray(boxes, dtype=np.float32).reshape(-1, 4), np.asarray(idx, np.int64)


def image_to_tensor(image: np.ndarray) -> torch.Tensor:
    """HxWx3 uint8 array -> float tensor [3,H,W] in [0, 1]."""
    return torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).float().div_(255.0)


def make_target(
    boxes: np.ndarray,
    labels: np.ndarray,
    image_id: int,
    orig_size: tuple[int, int],
) -> dict[str, torch.Tensor]:
    """Build a torchvision-style detection target.

    ``area`` is recomputed from the (possibly augmented) boxes so it stays consistent with
    them; ``iscrowd`` is all zeros because crowd boxes never reach training targets.
    ``orig_size`` is ``(height, width)`` of the image before transforms.
    """
    boxes_t = torch.as_tensor(boxes, dtype=torch.float32).reshape(-1, 4)
    return {
        "boxes": boxes_t,
        "labels": torch.as_tensor(labels, dtype=torch.int64).reshape(-1),
        "image_id": torch.tensor(image_id, dtype=torch.int64),
        "area": (boxes_t[:, 2] - boxes_t[:, 0]) * (boxes_t[:, 3] - boxes_t[:, 1]),
        "iscrowd": torch.zeros(len(boxes_t), dtype=torch.int64),
        "orig_size": torch.tensor(orig_size, dtype=torch.int64),
    }


def format_stats(name: str, stats: dict[str, int]) -> str:
    """One-line ``name: key=value, ...`` summary of dataset cleaning counts."""
    return f"{name}: " + ", ".join(f"{k}={v}" for k, v in stats.items())


def build_coco_api(data: dict[str, Any]) -> COCO:
    """Build a pycocotools ``COCO`` object from an already-loaded dataset dict."""
    coco = COCO()
    coco.dataset = data
    with contextlib.redirect_stdout(io.StringIO()):  # createIndex prints progress
        coco.createIndex()
    return coco
