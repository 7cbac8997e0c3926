#!/usr/bin/env python
"""The demo: train and evaluate on the embedded demo data, on the CPU.

Trains a Faster R-CNN on the embedded demo data (generated on first use from the
committed Fashion-MNIST items and photos) and prints its COCO AP.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from detkd.config.load import load_config  # noqa: E402
from detkd.utils.cli import run_cli  # noqa: E402


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output-root", default="outputs/demo", help="where the runs are written")
    parser.add_argument("--epochs", type=int, default=None, help="override train.epochs of every run")
    parser.add_argument("--debug", action="store_true", help="full tracebacks")
    return parser


def main(args: argparse.Namespace) -> int:
    from detkd.engine.trainer import train

    opts = [f"output_dir={args.output_root}/faster_rcnn"]
    if args.epochs:
        opts.append(f"train.epochs={args.epochs}")
    cfg = load_config(REPO / "configs/demo/faster_rcnn_demo.yaml", opts)
    metrics = train(cfg, resume="auto")
    print(f"\ndemo Faster R-CNN: COCO AP {metrics['AP']:.3f}  AP50 {metrics['AP50']:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main, build_parser()))
