"""Train a torchvision detector (Faster R-CNN, RetinaNet, FCOS, SSDlite, SSD), plain or distilled from a teacher.

Examples:
  python tools/train_det.py --cfg configs/demo/faster_rcnn_demo.yaml
  python tools/train_det.py --cfg configs/demo/distill_demo.yaml --opts train.epochs=2
  python tools/train_det.py --cfg my.yaml --resume auto            # continue an interrupted run
  torchrun --nproc_per_node 8 tools/train_det.py --cfg configs/coco/...  # distributed
"""

from __future__ import annotations

import argparse

from detkd.recipe import load_config
from detkd.utils.cli import add_config_args


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_config_args(parser)
    parser.add_argument("--resume", metavar="CKPT|auto", default=None,
                        help="resume from a checkpoint file, or 'auto' for the latest valid one in output_dir")
    parser.add_argument("--force-resume", action="store_true",
                        help="resume even if the checkpoint was made with a different config")
    parser.add_argument("--resume-from-epoch-boundary", action="store_true",
                        help="when the global batch (processes x train.batch_size) changed and the checkpoint's "
                             "sample cannot be continued exactly, restart its epoch from the first sample")
    parser.add_argument("--output-dir", default=None, metavar="DIR",
                        help="shortcut for --opts output_dir=DIR")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars (log lines only)")
    return parser


def main(args: argparse.Namespace) -> int:

    opts = list(args.opts) + ([f"output_dir={args.output_dir}"] if args.output_dir else [])
    cfg = load_config(args.cfg, opts)
    from detkd.utils import dist
    from detkd.engine.trainer import train  # after the config: a config error reports in less time

    try:
        train(cfg, resume=args.resume, force_resume=args.force_resume,
              progress=False if args.no_progress else None,
              resume_from_epoch_boundary=args.resume_from_epoch_boundary)
    finally:
        # An error on one rank: leave the process group so torchrun can stop the others cleanly.
        dist.cleanup()
    return 0

