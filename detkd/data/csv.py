"""CSV box lists: one ``file,x1,y1,x2,y2,class`` row per box.

::

    file,x1,y1,x2,y2,class          # optional header (exactly these names)
    images/0001.jpg,10,20,110,220,cat
    images/0001.jpg,50,60,80,90,dog
    images/0002.jpg,,,,,            # an image without boxes: empty box and class fields

``file`` is relative to the CSV file's folder (or absolute); an image's rows need not be
adjacent. ``x1,y1,x2,y2`` are pixel corners in continuous coordinates (a box over pixel
columns 10..19 is ``x1=10, x2=20``); parts outside the image are clipped (``clipped``), but
``x2 <= x1`` or ``y2 <= y1`` is an error (a file of ``x,y,w,h`` rows shows this way). Labels
are ``1..C`` in the order of ``classes``, or of the sorted class names of the file. Image
ids are the images' 1-based order of first appearance. See docs/datasets.md.
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from detkd.config.schema import BaseDatasetConfig, DataConfig
from detkd.data.records import ImageRecord, RecordDataset
from detkd.data.utils import read_image_size
from detkd.errors import DetkdError

HEADER = ["file", "x1", "y1", "x2", "y2", "class"]


@dataclass
class CsvDatasetConfig(BaseDatasetConfig):
    """A CSV box list: ``file`` is the CSV, ``classes`` the label order (default: the file's
    class names, sorted); ``split`` is not used."""

    type: str = "csv"
    file: str = ""
    classes: Optional[list[str]] = None

    def location(self) -> str:
        return self.file


def read_rows(path: Path) -> list[tuple[str, list[str]]]:
    """``("FILE:LINE", fields)`` of each non-blank row, the header left out."""
    if not path.is_file():
        raise DetkdError(f"CSV file not found: {path}")
    rows = []
    try:
        with open(path, newline="", encoding="utf-8") as f:
            reader = csv.reader(f)
            for fields in reader:
                if any(v.strip() for v in fields):
                    rows.append((f"{path}:{reader.line_num}", [v.strip() for v in fields]))
    except (csv.Error, UnicodeDecodeError) as exc:
        raise DetkdError(f"{path}: not a readable CSV file: {exc}") from None
    return rows[1:] if rows and [v.lower() for v in rows[0][1]] == HEADER else rows


def parse_row(where: str, fields: list[str]) -> tuple[str, list[float] | None, str]:
    """``(image, box or None, class)`` of one row; a malformed row names ``where``."""
    if len(fields) != 6 or not fields[0]:
        raise DetkdError(f"{where}: expected 'file,x1,y1,x2,y2,class' (6 fields, the header if any "
                         f"exactly so), got {','.join(fields)!r}")
    image, *coords, name = fields
    if not any(coords) and not name:
        return image, None, ""
    try:
        box = [float(v) for v in coords]
    except ValueError:
        box = []
    if len(box) != 4 or not all(math.isfinite(v) for v in box) or not name:
        raise DetkdError(f"{where}: expected 'file,x1,y1,x2,y2,class' (4 numbers and a class name, or an "
                         f"image without boxes 'file,,,,,'), got {','.join(fields)!r}")
    if box[2] <= box[0] or box[3] <= box[1]:
        raise DetkdError(f"{where}: box {','.join(coords)} has x2 <= x1 or y2 <= y1 (the columns are the "
                         "corners x1,y1,x2,y2, not x,y,w,h)")
    return image, box, name


class CsvDetection(RecordDataset):
    """Detection dataset over a CSV box list (the module docs give the layout); ``common``:
    :class:`~detkd.data.records.RecordDataset`'s ``transforms``, ``skip_empty``, ``min_box_size``."""

    options = CsvDatasetConfig

    def __init__(self, file: str | Path, classes: list[str] | None = None, **common: Any) -> None:
        self.file = Path(file)
        rows = [parse_row(where, fields) + (where,) for where, fields in read_rows(self.file)]
        names = list(classes) if classes is not None else sorted({name for _, _, name, _ in rows if name})
        if not names or len(set(names)) != len(names):
            raise DetkdError(f"{self.file}: the classes must be distinct and at least one, got {names}")
        label_of = {name: i + 1 for i, name in enumerate(names)}
        images: dict[str, tuple[str, list]] = {}  # file -> (its first row, [(box, label)])
        for image, box, name, where in rows:
            boxes = images.setdefault(image, (where, []))[1]
            if box is not None:
                if name not in label_of:
                    raise DetkdError(f"{where}: unknown class {name!r} (classes: {', '.join(names)})")
                boxes.append((box, label_of[name]))
        records = []
        for image_id, (image, (where, boxes)) in enumerate(images.items(), start=1):
            path = self.file.parent / image
            if not path.is_file():
                raise DetkdError(f"{where}: image file not found: {path}")
            width, height = read_image_size(path)
            records.append(ImageRecord(path, width, height, image_id, [b for b, _ in boxes], [c for _, c in boxes]))
        super().__init__(records, names, f"CSV {self.file.name}", **common)

    @classmethod
    def build(cls, ds: CsvDatasetConfig, data: DataConfig, **common: Any) -> CsvDetection:
        if not ds.file:
            raise DetkdError("a csv dataset needs 'file' (the CSV box list) in its data section")
        return cls(ds.file, ds.classes, **common)
