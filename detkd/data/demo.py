"""Deterministic synthetic detection dataset: Fashion-MNIST items pasted on real photos.

The demo dataset lets detkd train and distill real Faster R-CNN models on a CPU in
minutes, without downloads. It is synthesised from two small committed arrays in
``data/sources/`` (see ``LICENSES.md`` there and ``tools/make_demo_sources.py``):

* backgrounds: random square crops (random horizontal flip, per-channel colour gain) of
  public-domain/CC0 photos, resized to ``image_size``; train and val crops come from
  disjoint parts of the photos;
* objects: 1-4 Fashion-MNIST items (train split items for train, t10k items for val),
  each upscaled to a random size, tinted with a random colour and alpha-blended using its
  intensity as the mask (items are bright on black). Placements whose box overlaps an
  earlier one too much are retried.

Boxes are exact: the tight box of the pixels the item visibly changed (alpha above
:data:`ALPHA_THRESHOLD`, below which alpha is zeroed, minus pixels fully covered by
later items), in continuous pixel coordinates (a pixel ``c`` spans ``[c, c+1)``).
``area`` is the number of those pixels. Everything is a pure function of the parameters
and the seed; each image has its own RNG stream ``(seed, split, index)``.

Output layout (COCO)::

    out_dir/train/000000.jpg ...        out_dir/annotations/instances_train.json
    out_dir/val/000000.jpg ...          out_dir/annotations/instances_val.json
    out_dir/meta.json                   (parameters + hash; enables caching)

As a dataset format (``type: demo``, the default of ``data.train``/``data.val``),
:class:`DemoDetection` generates the data as ``data.demo`` says and reads it as COCO.
"""

from __future__ import annotations

import colorsys
import hashlib
import json
import logging
import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from detkd.config.schema import BaseDatasetConfig, DataConfig
from detkd.data.coco import CocoDetection
from detkd.errors import DetkdError
from detkd.utils import dist

logger = logging.getLogger(__name__)

DEFAULT_SOURCES_DIR = Path(__file__).resolve().parents[2] / "data" / "sources"
GENERATOR_VERSION = 1  # bump when the synthesis changes, to invalidate caches
ALPHA_GAIN = 2.0  # intensity -> alpha gain: makes garments mostly opaque
ALPHA_THRESHOLD = 0.15  # alpha below this is zeroed so box edges are crisp
TINT_PROBABILITY = 0.8  # otherwise the item stays grey-white like the original
MAX_IOA = 0.5  # max intersection / smaller-box area, so small items are not hidden
PLACEMENT_TRIES = 30
JPEG_QUALITY = 95
SPLITS = ("train", "val")
_IMAGE_NAME = re.compile(r"^\d{6}\.jpg$")


@dataclass(frozen=True)
class DemoParams:
    """Generation parameters (everything that determines the output)."""

    seed: int = 0
    num_train: int = 600
    num_val: int = 150
    image_size: int = 160
    min_objects: int = 1
    max_objects: int = 4
    min_scale: int = 20  # side (px) of the upscaled 28x28 item canvas
    max_scale: int = 72
    max_iou: float = 0.3

    def validate(self) -> None:
        """Raise :class:`DetkdError` for inconsistent parameters."""
        checks = [
            (self.num_train >= 1, "num_train must be >= 1"),
            (self.num_val >= 1, "num_val must be >= 1"),
            (self.image_size >= 32, "image_size must be >= 32"),
            (1 <= self.min_objects <= self.max_objects, "need 1 <= min_objects <= max_objects"),
            (8 <= self.min_scale <= self.max_scale, "need 8 <= min_scale <= max_scale"),
            (self.max_scale <= self.image_size, "max_scale must be <= image_size"),
            (0.0 <= self.max_iou <= 1.0, "max_iou must be in [0, 1]"),
        ]
        for ok, message in checks:
            if not ok:
                raise DetkdError(f"demo dataset: {message} (got {self})")


@dataclass
class DemoSources:
    """Source arrays: Fashion-MNIST items per split and background photo parts per split."""

    items: dict[str, np.ndarray]  # split -> [N,28,28] uint8
    labels: dict[str, np.ndarray]  # split -> [N] int (0..9)
    backgrounds: dict[str, list[np.ndarray]]  # split -> list of HxWx3 uint8
    class_names: list[str]


def load_sources(sources_dir: Path = DEFAULT_SOURCES_DIR) -> DemoSources:
    """Load ``fashion_mnist_subset.npz`` and ``backgrounds.npz``."""
    files = {name: sources_dir / f"{name}.npz" for name in ("fashion_mnist_subset", "backgrounds")}
    for path in files.values():
        if not path.is_file():
            raise DetkdError(f"demo source file not found: {path}")
    with np.load(files["fashion_mnist_subset"]) as fm, np.load(files["backgrounds"]) as bg:
        n_bg = len(bg["names"])
        return DemoSources(
            items={"train": fm["train_images"], "val": fm["test_images"]},
            labels={"train": fm["train_labels"], "val": fm["test_labels"]},
            backgrounds={s: [bg[f"{s}_{i}"] for i in range(n_bg)] for s in SPLITS},
            class_names=[str(n) for n in fm["class_names"]],
        )


def random_background(
    rng: np.random.Generator, parts: list[np.ndarray], size: int
) -> np.ndarray:
    """A random square crop of a random photo part, flipped/tinted, as float32 [size,size,3]."""
    part = parts[rng.integers(len(parts))]
    h, w = part.shape[:2]
    short = min(h, w)
    # Crops of 96-192 px (bounded by the part) keep photo detail at the 160 px output.
    side = int(rng.integers(min(96, short), min(192, short) + 1))
    y, x = int(rng.integers(h - side + 1)), int(rng.integers(w - side + 1))
    crop = Image.fromarray(part[y : y + side, x : x + side])
    if rng.random() < 0.5:
        crop = crop.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    crop = crop.resize((size, size), Image.Resampling.BILINEAR)
    gain = rng.uniform(0.8, 1.2, size=3).astype(np.float32)  # colour variety for grey photos
    return np.clip(np.asarray(crop, dtype=np.float32) * gain, 0, 255)


def random_tint(rng: np.random.Generator) -> np.ndarray:
    """A random RGB colour in [0,1]: saturated with :data:`TINT_PROBABILITY`, else grey."""
    if rng.random() < TINT_PROBABILITY:
        rgb = colorsys.hsv_to_rgb(rng.random(), rng.uniform(0.5, 1.0), rng.uniform(0.75, 1.0))
    else:
        rgb = (rng.uniform(0.8, 1.0),) * 3
    return np.array(rgb, dtype=np.float32)


def render_item(item: np.ndarray, side: int, tint: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Upscale a 28x28 item to ``side`` px; return (colour [S,S,3] 0..255, alpha [S,S])."""
    v = np.asarray(
        Image.fromarray(item.astype(np.float32)).resize((side, side), Image.Resampling.BILINEAR),
        dtype=np.float32,
    )
    v = np.clip(v / 255.0, 0.0, 1.0)
    alpha = np.clip(v * ALPHA_GAIN, 0.0, 1.0)
    alpha[alpha < ALPHA_THRESHOLD] = 0.0
    # Shading keeps the garment's texture visible under the tint.
    colour = tint[None, None, :] * (0.35 + 0.65 * v)[..., None] * 255.0
    return colour, alpha


def paste(canvas: np.ndarray, colour: np.ndarray, alpha: np.ndarray, x: int, y: int) -> None:
    """Alpha-blend ``colour`` onto float ``canvas`` with its top-left corner at (x, y)."""
    s = alpha.shape[0]
    region = canvas[y : y + s, x : x + s]
    region[...] = region * (1.0 - alpha[..., None]) + colour * alpha[..., None]


def mask_box(mask: np.ndarray) -> tuple[int, int, int, int] | None:
    """Tight xyxy box (exclusive x2/y2) of a boolean mask, or None if empty."""
    ys, xs = np.nonzero(mask)
    if len(xs) == 0:
        return None
    return int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1


def overlaps_too_much(box: tuple[int, ...], others: list[tuple[int, ...]], max_iou: float) -> bool:
    """True if ``box`` has IoU > ``max_iou`` or covers > MAX_IOA of a smaller box with any other."""
    for o in others:
        iw = min(box[2], o[2]) - max(box[0], o[0])
        ih = min(box[3], o[3]) - max(box[1], o[1])
        if iw <= 0 or ih <= 0:
            continue
        inter = iw * ih
        a = (box[2] - box[0]) * (box[3] - box[1])
        b = (o[2] - o[0]) * (o[3] - o[1])
        if inter / (a + b - inter) > max_iou or inter / min(a, b) > MAX_IOA:
            return True
    return False


def generate_image(
    rng: np.random.Generator, sources: DemoSources, split: str, params: DemoParams
) -> tuple[np.ndarray, list[dict[str, Any]]]:
    """Synthesise one image; returns (uint8 HxWx3, objects with 'box' xyxy, 'label' 0..9, 'area')."""
    size = params.image_size
    canvas = random_background(rng, sources.backgrounds[split], size)
    items, labels = sources.items[split], sources.labels[split]
    placed: list[tuple[np.ndarray, int]] = []  # (full-image alpha mask, label)
    boxes: list[tuple[int, ...]] = []
    for _ in range(int(rng.integers(params.min_objects, params.max_objects + 1))):
        k = int(rng.integers(len(items)))
        side = int(rng.integers(params.min_scale, params.max_scale + 1))
        colour, alpha = render_item(items[k], side, random_tint(rng))
        local = mask_box(alpha > 0)
        if local is None:  # blank item (does not occur in the shipped subset)
            continue
        for _ in range(PLACEMENT_TRIES):
            x, y = int(rng.integers(size - side + 1)), int(rng.integers(size - side + 1))
            box = (local[0] + x, local[1] + y, local[2] + x, local[3] + y)
            if not overlaps_too_much(box, boxes, params.max_iou):
                break
        else:
            continue  # no room for this item: leave it out
        paste(canvas, colour, alpha, x, y)
        full = np.zeros((size, size), dtype=np.float32)
        full[y : y + side, x : x + side] = alpha
        placed.append((full, int(labels[k])))
        boxes.append(box)
    objects = []
    covered = np.zeros((size, size), dtype=bool)  # pixels fully hidden by later items
    for full, label in reversed(placed):
        visible = (full > 0) & ~covered
        covered |= full >= 1.0
        box = mask_box(visible)
        if box is not None:
            objects.append({"box": box, "label": label, "area": int(visible.sum())})
    objects.reverse()
    return np.round(canvas).astype(np.uint8), objects


def coco_categories(class_names: list[str]) -> list[dict[str, Any]]:
    """COCO categories with ids 1..10 in Fashion-MNIST label order."""
    return [{"id": i + 1, "name": n, "supercategory": "fashion"} for i, n in enumerate(class_names)]


def write_split(
    root: Path, split: str, num: int, sources: DemoSources, params: DemoParams
) -> dict[str, Any]:
    """Generate and write one split's images; return its COCO dataset dict."""
    image_dir = root / split
    image_dir.mkdir(parents=True, exist_ok=True)
    for stale in image_dir.iterdir():  # only files this generator names, never others
        if _IMAGE_NAME.match(stale.name):
            stale.unlink()
    images, annotations = [], []
    split_code = SPLITS.index(split)
    for i in range(num):
        rng = np.random.default_rng([params.seed, split_code, i])
        image, objects = generate_image(rng, sources, split, params)
        file_name = f"{i:06d}.jpg"
        Image.fromarray(image).save(image_dir / file_name, quality=JPEG_QUALITY, subsampling=0)
        images.append(
            {"id": i + 1, "file_name": file_name, "width": params.image_size, "height": params.image_size}
        )
        for obj in objects:
            x1, y1, x2, y2 = obj["box"]
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": i + 1,
                    "category_id": obj["label"] + 1,
                    "bbox": [x1, y1, x2 - x1, y2 - y1],
                    "area": obj["area"],
                    "iscrowd": 0,
                }
            )
    return {
        "info": {"description": f"detkd demo dataset ({split})", "version": GENERATOR_VERSION},
        "licenses": [{"id": 1, "name": "see data/sources/LICENSES.md (Fashion-MNIST: MIT)"}],
        "images": images,
        "annotations": annotations,
        "categories": coco_categories(sources.class_names),
    }


def _file_sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _meta(params: DemoParams, sources_dir: Path) -> dict[str, Any]:
    """Parameters, generator version and source hashes, plus a hash over all of them."""
    meta: dict[str, Any] = {
        "generator_version": GENERATOR_VERSION,
        "params": asdict(params),
        "sources": {p.name: _file_sha256(p) for p in sorted(sources_dir.glob("*.npz"))},
    }
    meta["hash"] = hashlib.sha256(json.dumps(meta, sort_keys=True).encode()).hexdigest()
    return meta


def _paths(root: Path) -> dict[str, Path]:
    return {
        "root": root,
        "train_images": root / "train",
        "val_images": root / "val",
        "train_ann": root / "annotations" / "instances_train.json",
        "val_ann": root / "annotations" / "instances_val.json",
        "meta": root / "meta.json",
    }


def _is_cached(paths: dict[str, Path], meta: dict[str, Any], params: DemoParams) -> bool:
    """True if a complete dataset with the same hash is already on disk."""
    try:
        old = json.loads(paths["meta"].read_text())
    except (OSError, json.JSONDecodeError):
        return False
    if old.get("hash") != meta["hash"]:
        return False
    if not (paths["train_ann"].is_file() and paths["val_ann"].is_file()):
        return False
    return all(
        (paths[f"{split}_images"] / f"{i:06d}.jpg").is_file()
        for split, num in (("train", params.num_train), ("val", params.num_val))
        for i in range(num)
    )


def generate_demo_dataset(
    out_dir: str | Path,
    seed: int = 0,
    num_train: int = 600,
    num_val: int = 150,
    image_size: int = 160,
    min_objects: int = 1,
    max_objects: int = 4,
    min_scale: int = 20,
    max_scale: int = 72,
    max_iou: float = 0.3,
    force: bool = False,
    sources_dir: str | Path = DEFAULT_SOURCES_DIR,
) -> dict[str, Path]:
    """Generate (or reuse) the demo COCO dataset in ``out_dir``; return its paths.

    ``min_scale``/``max_scale`` bound the side in pixels of the upscaled 28x28 item
    canvas (the visible garment is slightly smaller). If ``out_dir/meta.json`` records the
    same parameters, generator version and source files, and all files exist, nothing is
    regenerated unless ``force``. Returns ``root``, ``train_images``, ``val_images``,
    ``train_ann``, ``val_ann`` and ``meta`` paths.
    """
    params = DemoParams(
        seed, num_train, num_val, image_size, min_objects, max_objects, min_scale, max_scale, max_iou
    )
    params.validate()
    root, sources_dir = Path(out_dir), Path(sources_dir)
    sources = load_sources(sources_dir)
    paths = _paths(root)
    meta = _meta(params, sources_dir)
    if not force and _is_cached(paths, meta, params):
        logger.debug("demo dataset in %s is up to date (hash %s)", root, meta["hash"][:12])
        return paths
    root.mkdir(parents=True, exist_ok=True)
    paths["meta"].unlink(missing_ok=True)  # an interrupted run must not look complete
    paths["train_ann"].parent.mkdir(parents=True, exist_ok=True)
    for split, num in (("train", num_train), ("val", num_val)):
        dataset = write_split(root, split, num, sources, params)
        paths[f"{split}_ann"].write_text(json.dumps(dataset))
        meta[f"{split}_boxes"] = len(dataset["annotations"])
    paths["meta"].write_text(json.dumps(meta, indent=2, sort_keys=True))
    logger.info("generated demo dataset in %s", root)
    return paths


def save_preview(
    image_dir: str | Path, ann_file: str | Path, out_file: str | Path, num: int = 16, cols: int = 4
) -> Path:
    """Draw the first ``num`` images with their boxes and class names into a PNG grid."""
    data = json.loads(Path(ann_file).read_text())
    names = {c["id"]: c["name"] for c in data["categories"]}
    by_image: dict[int, list[dict[str, Any]]] = {}
    for ann in data["annotations"]:
        by_image.setdefault(ann["image_id"], []).append(ann)
    scale = 2  # upscaled so small items and 1-px box edges are easy to inspect
    tiles = []
    for info in data["images"][:num]:
        img = Image.open(Path(image_dir) / info["file_name"]).convert("RGB")
        img = img.resize((img.width * scale, img.height * scale), Image.Resampling.NEAREST)
        draw = ImageDraw.Draw(img)
        for ann in by_image.get(info["id"], []):
            x, y, w, h = (v * scale for v in ann["bbox"])
            # Box edges drawn just outside the box so the item's own pixels stay visible.
            draw.rectangle([x - 1, y - 1, x + w, y + h], outline=(255, 0, 0))
            draw.text((x + 1, y + 1), names[ann["category_id"]], fill=(255, 255, 0))
        tiles.append(img)
    if not tiles:
        raise DetkdError(f"{ann_file}: no images to preview")
    tw, th = tiles[0].size
    rows = (len(tiles) + cols - 1) // cols
    grid = Image.new("RGB", (cols * (tw + 4), rows * (th + 4)), (255, 255, 255))
    for i, tile in enumerate(tiles):
        grid.paste(tile, ((i % cols) * (tw + 4), (i // cols) * (th + 4)))
    out_file = Path(out_file)
    out_file.parent.mkdir(parents=True, exist_ok=True)
    grid.save(out_file)
    return out_file


# ----------------------------------------------------------------------------- the demo format

# The demo has no options of its own: its data.<split> section is the common one (type, split,
# skip_empty, max_images), whose default type is "demo"; the generation parameters are data.demo.
DemoDatasetConfig = BaseDatasetConfig


def demo_paths(data: DataConfig, split: str) -> tuple[Path, Path]:
    """Generate (or reuse the cached) embedded demo data; return (image_dir, ann_file)."""
    if split not in SPLITS:
        raise DetkdError(f"data split for type 'demo' must be 'train' or 'val', got '{split}'")
    demo = data.demo
    out = Path(demo.out_dir)
    # One process generates; the others wait and reuse the cache.
    if dist.is_main():
        generate_demo_dataset(out, seed=demo.seed, num_train=demo.num_train, num_val=demo.num_val,
                              image_size=demo.image_size)
    dist.barrier()
    return out / split, out / "annotations" / f"instances_{split}.json"


class DemoDetection(CocoDetection):
    """The embedded demo data of ``data.demo``'s parameters, generated once, read as COCO."""

    options = DemoDatasetConfig

    @classmethod
    def build(cls, ds: BaseDatasetConfig, data: DataConfig, **common: Any) -> DemoDetection:
        image_dir, ann_file = demo_paths(data, ds.split)
        return cls(image_dir, ann_file, check_files=True, **common)
