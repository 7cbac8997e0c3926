"""Evaluate a detector checkpoint on the config's validation split (COCO and/or VOC metrics).

The checkpoint may be a detkd checkpoint (last.pth, best.pth), a student-only file
(model_final.pth) or any plain torchvision state dict (``FasterRCNN``, ``RetinaNet``, ``FCOS``,
``SSD``) matching the config.

Example:
  python tools/eval_det.py --cfg configs/demo/faster_rcnn_demo.yaml --ckpt outputs/demo/model_final.pth
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from detkd.recipe import load_config
from detkd.utils.cli import add_config_args


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
    parser.add_argument("--save-detections", default=None, metavar="FILE.json",
                        help="write the detections in COCO results format (image_id, category_id of the "
                             "dataset, bbox [x, y, w, h], score; pycocotools loadRes reads it)")
    return parser


def main(args: argparse.Namespace) -> int:
    from detkd.utils import dist
    from detkd.utils.runtime import resolve_device
    from detkd.utils.atomic import atomic_write_text
    from detkd.evaluation.coco_eval import detections_to_coco, per_class_table
    from detkd.evaluation.inference import build_eval_data, evaluate_detector, load_detector
    from detkd.utils.logger import format_terms

    cfg = load_config(args.cfg, args.opts)
    if args.save_detections:
        from detkd.deploy.export import check_writable

        check_writable(Path(args.save_detections), "--save-detections")
    device = resolve_device(args.device or cfg.train.device)
    dist.init_distributed(device)
    model = load_detector(cfg.model, args.ckpt).to(device)
    dataset, loader = build_eval_data(cfg, "val")
    preds: dict = {}
    per_class: list = []
    metrics = evaluate_detector(model, loader, dataset, args.metric or cfg.eval.metric, device,
                                progress=False if args.no_progress else None, predictions=preds,
                                per_class=per_class)
    if dist.is_main():
        print(format_terms(metrics, 4))
        if per_class:
            print(per_class_table(per_class))
        if args.save_detections:
            _, label_to_cat = dataset.coco_ground_truth()
            ids = sorted(preds)
            results = detections_to_coco([preds[i] for i in ids], ids, label_to_cat)
            atomic_write_text(json.dumps(results), args.save_detections)
            print(f"wrote {len(results)} detections of {len(ids)} images to {args.save_detections}")
        if args.out:
            Path(args.out).parent.mkdir(parents=True, exist_ok=True)
            Path(args.out).write_text(json.dumps(metrics, indent=2))
    dist.cleanup()
    return 0

