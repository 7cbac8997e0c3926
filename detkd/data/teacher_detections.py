"""An offline teacher: detections written by any detector, read once and checked before training.

Formats (the method specification, section 5):

* **COCO results JSON**: a list ``[{image_id | file_name, category_id | category_name,
  bbox: [x, y, w, h], score}, ...]`` (what COCO tooling and most detectors write), or an object
  ``{"categories": [{id, name}, ...], "detections": [...]}`` whose ``category_id`` values are
  resolved through its own categories by name. Without such a list a ``category_id`` is a detkd
  label (``1..C``, what ``detkd predict`` calls ``label``); ``image_id`` is the dataset's image id.
* **detkd predict's ``detections.json``**: one record per image ``{file, detections: [{box
  (xyxy), score, label, class}]}``.
* **YOLO txt** (a folder): one ``<image stem>.txt`` per image, lines ``class cx cy w h confidence``
  normalized to the image (ultralytics ``save_conf``), ``class`` 0-based in the dataset's order.

Boxes come back in the image's own pixels (xyxy), classes as detkd labels ``1..C``. Every problem
is one :class:`DetkdError` line naming the file, how many detections it concerns and the first.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from detkd.errors import DetkdError

__all__ = ["TeacherDetections", "read_teacher_detections"]


@dataclass
class TeacherDetections:
    """One image's teacher detections: ``boxes`` ``[K, 4]`` xyxy pixels, ``labels`` ``1..C``, ``scores``."""

    boxes: np.ndarray = field(default_factory=lambda: np.zeros((0, 4), np.float32))
    labels: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    scores: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float32))


@dataclass(frozen=True)
class ImageRef:
    """What the reader needs of a training image: its id, file and size (an ``ImageRecord`` fits)."""

    image_id: int
    file: Path
    width: int
    height: int


class _Rows:
    """Detections gathered as (image id, xyxy box, label, score, where) before the checks."""

    def __init__(self, path: Path) -> None:
        self.path, self.rows, self.unknown_images, self.unknown_classes = path, [], [], []

    def add(self, image: Any, box: Sequence[float], label: Any, score: Any, where: str) -> None:
        if image is None:
            self.unknown_images.append(where)
        elif label is None:
            self.unknown_classes.append(where)
        else:
            self.rows.append((image, [float(v) for v in box], int(label), float(score), where))


def _problem(path: Path, what: str, found: list[str], hint: str = "") -> None:
    if found:
        raise DetkdError(f"{path}: {len(found)} detection{'s' if len(found) > 1 else ''} {what} "
                         f"(first: {found[0]}){hint}")


def _label_of(name_or_id: Any, class_names: Sequence[str], by_name: dict[str, int]) -> int | None:
    if isinstance(name_or_id, str):
        return by_name.get(name_or_id)
    label = int(name_or_id)
    return label if 1 <= label <= len(class_names) else None


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DetkdError(f"{path}: not a readable JSON detections file ({exc})") from None


def _coco_rows(path: Path, data: Any, images: dict[str, dict], class_names: Sequence[str]) -> _Rows:
    by_name = {n: i + 1 for i, n in enumerate(class_names)}
    entries, file_categories = data, None
    if isinstance(data, dict):
        entries = data.get("detections", data.get("annotations"))
        file_categories = {c["id"]: c["name"] for c in data.get("categories", [])}
    if not isinstance(entries, list):
        raise DetkdError(f"{path}: expected a list of detections (COCO results) or an object with 'detections'")
    out = _Rows(path)
    for i, d in enumerate(entries):
        if not isinstance(d, dict):
            raise DetkdError(f"{path}: detection {i} is not an object")
        if "detections" in d and "file" in d:  # detkd predict's per-image record
            image = images["file"].get(Path(d["file"]).name)
            for j, det in enumerate(d["detections"]):
                if not {"box", "score"} <= set(det) or not {"class", "label"} & set(det):
                    raise DetkdError(f"{path}: {d['file']} detection {j} lacks box, score or class")
                label = _label_of(det.get("class", det.get("label")), class_names, by_name)
                out.add(image, det["box"], label, det["score"], f"{d['file']} #{j}")
            continue
        missing = [k for k in ("bbox", "score") if k not in d]
        if missing or not ({"image_id", "file_name"} & set(d)) or not ({"category_id", "category_name"} & set(d)):
            need = missing or ["image_id or file_name" if not ({"image_id", "file_name"} & set(d)) else
                               "category_id or category_name"]
            raise DetkdError(f"{path}: detection {i} lacks {', '.join(need)}")
        image = (images["file"].get(Path(d["file_name"]).name) if "file_name" in d
                 else images["id"].get(int(d["image_id"])))
        category = d.get("category_name", d.get("category_id"))
        if file_categories and "category_name" not in d:
            category = file_categories.get(category, f"id {category}")
        x, y, w, h = d["bbox"]
        where = f"{d.get('file_name', d.get('image_id'))!s} category {category!r}"
        out.add(image, (x, y, x + w, y + h), _label_of(category, class_names, by_name), d["score"], where)
    return out


def _yolo_rows(folder: Path, images: dict[str, dict], class_names: Sequence[str]) -> _Rows:
    out = _Rows(folder)
    for txt in sorted(folder.glob("*.txt")):
        image = images["stem"].get(txt.stem)
        for n, line in enumerate(txt.read_text().splitlines(), 1):
            cols = line.split()
            if not cols:
                continue
            if len(cols) != 6:
                raise DetkdError(f"{txt}:{n}: 6 columns expected (class cx cy w h confidence), got {len(cols)}"
                                 + ("; write the predictions with a confidence column (save_conf)"
                                    if len(cols) == 5 else ""))
            try:
                k, cx, cy, w, h, conf = int(cols[0]), *map(float, cols[1:])
            except ValueError:
                raise DetkdError(f"{txt}:{n}: not numbers: {line.strip()!r}") from None
            where = f"{txt.name}:{n}"
            if image is None:
                out.add(None, (), None, 0.0, where)
                continue
            W, H = image["ref"].width, image["ref"].height
            box = ((cx - w / 2) * W, (cy - h / 2) * H, (cx + w / 2) * W, (cy + h / 2) * H)
            out.add(image, box, k + 1 if 0 <= k < len(class_names) else None, conf, where)
    return out


def _index(refs: Sequence[ImageRef]) -> dict[str, dict]:
    by_file: dict[str, Any] = {}
    for ref in refs:  # a base name two images share cannot name either of them
        by_file[ref.file.name] = None if ref.file.name in by_file else {"ref": ref}
    entries = [{"ref": r} for r in refs]
    return {"file": {k: v for k, v in by_file.items() if v is not None},
            "id": {e["ref"].image_id: e for e in entries},
            "stem": {Path(k).stem: v for k, v in by_file.items() if v is not None}}


def read_teacher_detections(path: str | Path, images: Sequence[Any], class_names: Sequence[str],
                            drop_unknown_classes: bool = False) -> dict[int, TeacherDetections]:
    """Read and check a detections file or YOLO folder for ``images`` (objects with ``image_id``,
    ``file``, ``width``, ``height``: ``ImageRecord``s); ``class_names`` are labels ``1..C``.

    Returns image id -> :class:`TeacherDetections` (images without a detection get an empty one)."""
    path = Path(path)
    refs = [ImageRef(int(r.image_id), Path(r.file), int(r.width), int(r.height)) for r in images]
    index = _index(refs)
    if path.is_dir():
        rows = _yolo_rows(path, index, class_names)
    elif path.is_file():
        rows = _coco_rows(path, _read_json(path), index, class_names)
    else:
        raise DetkdError(f"teacher.detections {path}: no such file or folder")
    total = len(rows.rows) + len(rows.unknown_images) + len(rows.unknown_classes)
    if total == 0:
        raise DetkdError(f"{path}: no detections")
    _problem(path, "with images that are not in the training set", rows.unknown_images)
    if not drop_unknown_classes:
        _problem(path, f"with classes outside the label map ({', '.join(class_names)})", rows.unknown_classes,
                 "; set teacher.drop_unknown_classes: true to leave them out")
    _problem(path, "with scores outside [0, 1]",
             [f"{s!r} at {w}" for _, _, _, s, w in rows.rows if not 0.0 <= s <= 1.0])
    _problem(path, "with degenerate boxes (not finite, or width or height <= 0)",
             [f"{[round(v, 2) for v in b]} at {w}" for _, b, _, _, w in rows.rows
              if not all(map(math.isfinite, b)) or b[2] <= b[0] or b[3] <= b[1]])
    return _gather(rows, refs)


def _gather(rows: _Rows, refs: Sequence[ImageRef]) -> dict[int, TeacherDetections]:
    grouped: dict[int, list] = {r.image_id: [] for r in refs}
    for image, box, label, score, _ in rows.rows:
        grouped[image["ref"].image_id].append((box, label, score))
    out = {}
    for image_id, dets in grouped.items():
        if not dets:
            out[image_id] = TeacherDetections()
            continue
        boxes, labels, scores = zip(*dets)
        out[image_id] = TeacherDetections(np.asarray(boxes, np.float32), np.asarray(labels, np.int64),
                                          np.asarray(scores, np.float32))
    return out
