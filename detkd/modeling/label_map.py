"""Whether a teacher was trained with the student's label map.

Class counts are checked when the models are built; this compares the class *names* and their
order, which only the teacher's run records: its ``classes.json`` beside the checkpoint, or
the class names in a self-describing model file (:mod:`detkd.modeling.checkpoint_io`), for a
teacher file copied away from its run. Label ``i + 1`` is ``class_names[i]`` on both sides.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import torch

from detkd.errors import DetkdError
from detkd.modeling.checkpoint_io import info_of

__all__ = ["check_label_map", "teacher_class_names"]


def teacher_class_names(checkpoint: str | Path) -> Optional[list[str]]:
    """The class names a teacher was trained with, if its run recorded them: ``classes.json``
    beside the checkpoint file, else the class names in a self-describing model file."""
    path = Path(checkpoint)
    sidecar = path.parent / "classes.json"
    if sidecar.is_file():
        try:
            names = json.loads(sidecar.read_text())
        except json.JSONDecodeError as exc:
            raise DetkdError(f"{sidecar}: invalid JSON ({exc.msg}, line {exc.lineno})") from None
        if not isinstance(names, list):
            raise DetkdError(f"{sidecar}: expected a list of class names")
        return [str(n) for n in names]
    return _recorded_class_names(path)


def _recorded_class_names(path: Path) -> Optional[list[str]]:
    """The class names stored in a self-describing model file, or None for a bare state dict."""
    try:  # mmap: only the pickled metadata is read, not the tensors
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception:  # unreadable files are reported by the weight loader, with their name
        return None
    info = info_of(state)
    return [str(n) for n in info["class_names"]] if info and info.get("class_names") else None


def check_label_map(teacher_checkpoint: str | Path, student_classes: list[str]) -> bool:
    """Refuse a teacher trained with another label map (same count, other classes or order).

    Returns False when the teacher's run did not record its classes (nothing to compare).
    """
    teacher_classes = teacher_class_names(teacher_checkpoint)
    if teacher_classes is None:
        return False
    if teacher_classes != list(student_classes):
        diff = next((i for i, (a, b) in enumerate(zip(teacher_classes, student_classes)) if a != b),
                    min(len(teacher_classes), len(student_classes)))
        t = teacher_classes[diff] if diff < len(teacher_classes) else "<none>"
        s = student_classes[diff] if diff < len(student_classes) else "<none>"
        raise DetkdError(
            f"the teacher {teacher_checkpoint} was trained with another label map than the student's data "
            f"(label {diff + 1}: teacher '{t}' vs student '{s}'; {len(teacher_classes)} vs {len(student_classes)} classes)"
        )
    return True
