#!/usr/bin/env python
"""Evaluate a detector checkpoint on the config's validation split (COCO and/or VOC metrics).

The checkpoint may be a detkd checkpoint (last.pth, best.pth), a student-only file
(model_final.pth) or any plain torchvision FasterRCNN state dict matching the config.

Example:
  python tools/eval_det.py --cfg configs/demo/faster_rcnn_demo.yaml --ckpt outputs/demo/model_final.pth
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from detkd.config.load import load_config  # noqa: E402
from detkd.utils.cli import add_config_args, run_cli  # noqa: E402


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_config_args(parser)
    parser.add_argument("--ckpt", required=True, metavar="FILE", help="weights to evaluate")
    parser.add_argument("--out", default=None, metavar="FILE.json",
                        help="write the metrics here (default: print only)")
    parser.add_argument("--metric", choices=["coco", "voc", "both"], default=None,
                        help="override eval.metric")
    parser.add_argument("--device", default=None, help="override train.device (auto, cpu, cuda, cuda:N)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    return parser


def main(args: argparse.Namespace) -> int:
    from detkd.engine import dist
    from detkd.engine.trainer import resolve_device
    from detkd.evaluation.inference import build_eval_data, evaluate_detector, load_detector
    from detkd.utils.logger import format_terms

    cfg = load_config(args.cfg, args.opts)
    device = resolve_device(args.device or cfg.train.device)
    dist.init_distributed(device)
    model = load_detector(cfg.model, args.ckpt).to(device)
    dataset, loader = build_eval_data(cfg, "val")
    metrics = evaluate_detector(model, loader, dataset, args.metric or cfg.eval.metric, device,
                                progress=False if args.no_progress else None)
    if dist.is_main():
        print(format_terms(metrics, 4))
        if args.out:
            Path(args.out).parent.mkdir(parents=True, exist_ok=True)
            Path(args.out).write_text(json.dumps(metrics, indent=2))
    dist.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main, build_parser()))
