#!/usr/bin/env python
"""Regenerate the committed demo source arrays in ``data/sources/`` (developer-only).

The demo detection dataset (``detkd.data.demo``) is synthesised at run time from two
small, committed ``.npz`` files; this script is how they were made. It is NOT needed to
use detkd, only to rebuild the sources reproducibly. It reads:

* Fashion-MNIST from Debian's ``dataset-fashion-mnist`` package
  (``/usr/share/datasets/fashion-mnist/*-ubyte.gz``, MIT licence), and
* public-domain / CC0 photographs bundled with scikit-image (``skimage.data``).

and writes:

``fashion_mnist_subset.npz``
    ``train_images`` uint8 [N,28,28], ``train_labels`` uint8 [N] (from the Fashion-MNIST
    training split), ``test_images`` / ``test_labels`` (from the t10k split, so the demo
    validation set uses items never seen in training), ``class_names`` (10 strings).
    Class balanced: ``--train-per-class`` / ``--test-per-class`` items of every class.
``backgrounds.npz``
    For every photo ``i``: ``train_<i>`` and ``val_<i>``, uint8 RGB [H,W,3]; the photo is
    downscaled (longest side ``--max-side``) and cut along its longer axis into two
    disjoint parts so demo validation backgrounds are unseen pixels of the same photos.
    ``names`` holds the skimage names.

Usage::

    python tools/make_demo_sources.py              # overwrite data/sources/*.npz
    python tools/make_demo_sources.py --out /tmp/x # write elsewhere

Licences of every input are recorded in ``data/sources/LICENSES.md``.
"""

from __future__ import annotations

import argparse
import gzip
from pathlib import Path

import numpy as np
from PIL import Image

FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_MNIST_CLASSES = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)
# skimage.data loaders whose docstrings state public domain or CC0 (see LICENSES.md).
BACKGROUND_PHOTOS = (
    "astronaut",
    "chelsea",
    "coffee",
    "rocket",
    "hubble_deep_field",
    "camera",
    "brick",
    "grass",
    "gravel",
    "clock",
)
REPO_ROOT = Path(__file__).resolve().parents[1]


def read_idx(path: Path) -> np.ndarray:
    """Read a gzipped IDX file (the MNIST container format) into a uint8 array."""
    with gzip.open(path, "rb") as f:
        data = f.read()
    magic = int.from_bytes(data[0:4], "big")
    ndim = magic & 0xFF
    if magic >> 8 != 0x08:  # 0x08 = unsigned byte payload
        raise ValueError(f"{path}: unexpected IDX magic {magic:#x}")
    shape = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(shape)


def balanced_subset(
    images: np.ndarray, labels: np.ndarray, per_class: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Pick ``per_class`` random items of every class, returned sorted by original index."""
    chosen = [
        rng.choice(np.flatnonzero(labels == c), size=per_class, replace=False)
        for c in range(len(FASHION_MNIST_CLASSES))
    ]
    idx = np.sort(np.concatenate(chosen))
    return images[idx].copy(), labels[idx].copy()


def make_fashion_subset(out: Path, train_per_class: int, test_per_class: int, seed: int) -> None:
    """Write the class-balanced Fashion-MNIST subset npz."""
    rng = np.random.default_rng(seed)
    splits = {}
    for split, prefix, per_class in (
        ("train", "train", train_per_class),
        ("test", "t10k", test_per_class),
    ):
        images = read_idx(FASHION_MNIST_DIR / f"{prefix}-images-idx3-ubyte.gz")
        labels = read_idx(FASHION_MNIST_DIR / f"{prefix}-labels-idx1-ubyte.gz")
        splits[f"{split}_images"], splits[f"{split}_labels"] = balanced_subset(
            images, labels, per_class, rng
        )
    np.savez_compressed(out, class_names=np.array(FASHION_MNIST_CLASSES), **splits)


def make_fashion_test(out: Path) -> None:
    """Write the whole Fashion-MNIST test split (t10k: 10,000 images, 1,000 per class), the
    default test set of the classification recipes: with 1,000 test images the sampling
    error of a top-1 near 80% (about 1.3 points) hides the differences between methods."""
    images = read_idx(FASHION_MNIST_DIR / "t10k-images-idx3-ubyte.gz")
    labels = read_idx(FASHION_MNIST_DIR / "t10k-labels-idx1-ubyte.gz")
    np.savez_compressed(out, class_names=np.array(FASHION_MNIST_CLASSES), test_images=images, test_labels=labels)


def load_photo(name: str) -> np.ndarray:
    """Load a bundled skimage photo as uint8 RGB."""
    import skimage.data

    img = np.asarray(getattr(skimage.data, name)())
    if img.ndim == 2:
        img = np.stack([img] * 3, axis=-1)
    return img[..., :3].astype(np.uint8)


def downscale(img: np.ndarray, max_side: int) -> np.ndarray:
    """Resize so the longest side is ``max_side`` (antialiased; never upscales)."""
    h, w = img.shape[:2]
    scale = min(1.0, max_side / max(h, w))
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    return np.asarray(Image.fromarray(img).resize(size, Image.Resampling.LANCZOS))


def split_photo(img: np.ndarray, train_fraction: float) -> tuple[np.ndarray, np.ndarray]:
    """Cut a photo along its longer axis into disjoint train / val parts."""
    h, w = img.shape[:2]
    if w >= h:
        cut = round(w * train_fraction)
        return img[:, :cut].copy(), img[:, cut:].copy()
    cut = round(h * train_fraction)
    return img[:cut].copy(), img[cut:].copy()


def make_backgrounds(out: Path, max_side: int, train_fraction: float) -> None:
    """Write the background photo npz."""
    arrays: dict[str, np.ndarray] = {}
    for i, name in enumerate(BACKGROUND_PHOTOS):
        train, val = split_photo(downscale(load_photo(name), max_side), train_fraction)
        arrays[f"train_{i}"], arrays[f"val_{i}"] = train, val
    np.savez_compressed(out, names=np.array(BACKGROUND_PHOTOS), **arrays)


def main() -> None:
    parser = argparse.ArgumentParser(
        description="Regenerate data/sources/*.npz (demo dataset sources) from the Debian "
        "dataset-fashion-mnist package and scikit-image's bundled photos. Dev-only."
    )
    parser.add_argument(
        "--out", type=Path, default=REPO_ROOT / "data" / "sources", help="output directory"
    )
    parser.add_argument(
        "--train-per-class", type=int, default=400, help="Fashion-MNIST train items per class"
    )
    parser.add_argument(
        "--test-per-class", type=int, default=100, help="Fashion-MNIST t10k items per class"
    )
    parser.add_argument("--max-side", type=int, default=320, help="photo longest side (px)")
    parser.add_argument(
        "--train-fraction",
        type=float,
        default=0.65,
        help="fraction of each photo (along its longer axis) used for train backgrounds",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the subset selection")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    make_fashion_subset(
        args.out / "fashion_mnist_subset.npz", args.train_per_class, args.test_per_class, args.seed
    )
    make_fashion_test(args.out / "fashion_mnist_t10k.npz")
    make_backgrounds(args.out / "backgrounds.npz", args.max_side, args.train_fraction)
    for path in sorted(args.out.glob("*.npz")):
        print(f"{path}: {path.stat().st_size / 1e6:.2f} MB")


if __name__ == "__main__":
    main()
