"""Images without annotations: a folder or a glob pattern (``data.unlabeled: {type: images, root:
DIR}`` or ``{type: images, glob: 'DIR/**/*.jpg'}``), what a distillation run's teacher labels.

Image ids are the images' 1-based order (files sorted by path); there are no boxes and no
classes. See docs/datasets.md.
"""

from __future__ import annotations

import glob
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from detkd.config.schema import BaseDatasetConfig, DataConfig
from detkd.data.records import ImageRecord, RecordDataset
from detkd.data.utils import read_image_size
from detkd.errors import DetkdError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp")


@dataclass
class ImagesDatasetConfig(BaseDatasetConfig):
    """Image files without annotations: every image of the folder ``root`` (not recursive), or
    those matching ``glob`` (``**`` recursive); ``split`` is not used."""

    type: str = "images"
    root: str = ""
    glob: str = ""

    def location(self) -> str:
        return self.root or self.glob


def find_image_files(root: str, pattern: str) -> list[Path]:
    """The image files of folder ``root`` or glob ``pattern``, sorted; one line if there are none."""
    if bool(root) == bool(pattern):
        raise DetkdError("an images dataset needs exactly one of 'root' (a folder) and 'glob' (a pattern)")
    if root:
        folder = Path(root)
        if not folder.is_dir():
            raise DetkdError(f"images folder not found: {folder}")
        files = [p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES]
    else:
        files = [Path(p) for p in glob.glob(pattern, recursive=True)
                 if Path(p).is_file() and Path(p).suffix.lower() in IMAGE_SUFFIXES]
    if not files:
        raise DetkdError(f"{root or pattern}: no image files ({', '.join(IMAGE_SUFFIXES)})")
    return sorted(files)


class ImagesDataset(RecordDataset):
    """Images without boxes (the module docs give the layout); ``common``:
    :class:`~detkd.data.records.RecordDataset`'s ``transforms``, ``skip_empty``, ``min_box_size``."""

    options = ImagesDatasetConfig

    def __init__(self, root: str = "", pattern: str = "", **common: Any) -> None:
        files = find_image_files(root, pattern)
        records = []
        for image_id, path in enumerate(files, start=1):
            width, height = read_image_size(path)
            records.append(ImageRecord(path, width, height, image_id, [], []))
        common["skip_empty"] = False  # every image is empty
        super().__init__(records, [], f"images {root or pattern}", **common)

    @classmethod
    def build(cls, ds: ImagesDatasetConfig, data: DataConfig, **common: Any) -> ImagesDataset:
        return cls(ds.root, ds.glob, **common)
