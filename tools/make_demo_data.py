#!/usr/bin/env python
"""Generate the demo detection dataset (Fashion-MNIST items on real photos, COCO format).

Example::

    python tools/make_demo_data.py                    # data/demo, cached if unchanged
    python tools/make_demo_data.py --preview          # also write data/demo/preview.png
    python tools/make_demo_data.py --num-train 64 --num-val 16 --out /tmp/demo_small
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))  # run from a checkout without installing detkd

from detkd.data.demo import DEFAULT_SOURCES_DIR, generate_demo_dataset, save_preview  # noqa: E402
from detkd.errors import DetkdError  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Generate the deterministic demo detection dataset: Fashion-MNIST items "
        "pasted (random size, colour, position) on crops of public-domain photos, with exact "
        "boxes, written as JPEGs plus COCO instances_{train,val}.json. Regeneration is "
        "skipped when OUT/meta.json records the same parameters and sources.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "data" / "demo",
                        help="output directory")
    parser.add_argument("--seed", type=int, default=0, help="random seed (output is a pure function of it)")
    parser.add_argument("--num-train", type=int, default=600, help="number of training images")
    parser.add_argument("--num-val", type=int, default=150, help="number of validation images")
    parser.add_argument("--image-size", type=int, default=160, help="side of the square images (px)")
    parser.add_argument("--min-objects", type=int, default=1, help="minimum items per image")
    parser.add_argument("--max-objects", type=int, default=4,
                        help="maximum items per image (fewer if they do not fit)")
    parser.add_argument("--min-scale", type=int, default=20,
                        help="smallest side (px) of an upscaled 28x28 item canvas")
    parser.add_argument("--max-scale", type=int, default=72,
                        help="largest side (px) of an upscaled 28x28 item canvas")
    parser.add_argument("--max-iou", type=float, default=0.3,
                        help="maximum IoU between the boxes of two items in one image")
    parser.add_argument("--force", action="store_true", help="regenerate even if cached")
    parser.add_argument("--preview", action="store_true",
                        help="also write OUT/preview.png: 16 training images with boxes drawn")
    parser.add_argument("--sources-dir", type=Path, default=DEFAULT_SOURCES_DIR,
                        help="directory with fashion_mnist_subset.npz and backgrounds.npz")
    parser.add_argument("--debug", action="store_true", help="show tracebacks on errors")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    start = time.perf_counter()
    try:
        paths = generate_demo_dataset(
            args.out,
            seed=args.seed,
            num_train=args.num_train,
            num_val=args.num_val,
            image_size=args.image_size,
            min_objects=args.min_objects,
            max_objects=args.max_objects,
            min_scale=args.min_scale,
            max_scale=args.max_scale,
            max_iou=args.max_iou,
            force=args.force,
            sources_dir=args.sources_dir,
        )
        if args.preview:
            preview = save_preview(paths["train_images"], paths["train_ann"], args.out / "preview.png")
            print(f"preview: {preview}")
    except DetkdError as exc:
        if args.debug:
            raise
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for key, path in paths.items():
        print(f"{key}: {path}")
    print(f"done in {time.perf_counter() - start:.1f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
