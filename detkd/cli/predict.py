"""Run a trained detector on images: detections.json, and pictures with --draw.

INPUT is image files, folders (their images) and glob patterns. The checkpoint is a
self-describing model_final.pth (no config needed); an old bare state dict needs --cfg.
--compare adds checkpoints (teacher, baseline, distilled, ...) drawn side by side with
--ckpt's detections on the same images, in DIR/compare/.

Writes DIR/detections.json: one record per image,
  {"file", "width", "height", "detections": [{"box": [x0, y0, x1, y1], "score", "label", "class"}]}
(boxes in the image's pixels, label 1..C, class its name), DIR/detections_coco.json: the same as
COCO results by file and category name ([{"file_name", "category_name", "bbox": [x, y, w, h],
"score"}]; either file is a distillation run's teacher.detections), and with --draw
DIR/pictures/*.png.
Pictures show each model's boxes scoring at least its display threshold (recorded in its
model file at the end of training: the score maximizing F1 at IoU 0.5 on its val set), or
--score-thresh when given; the caption of each --compare panel says which.

Example:
  detkd predict --ckpt outputs/demo/distill/model_final.pth --input data/demo/val --out outputs/pred --draw
"""

from __future__ import annotations

import argparse
from pathlib import Path


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="detkd predict", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ckpt", required=True, metavar="FILE", help="model file (model_final.pth)")
    parser.add_argument("--input", required=True, nargs="+", metavar="PATH", help="image files, folders or globs")
    parser.add_argument("--out", required=True, metavar="DIR", help="output folder")
    parser.add_argument("--cfg", default=None, metavar="FILE.yaml",
                        help="training config, needed only for a bare state dict without a detkd model record")
    parser.add_argument("--score-thresh", type=float, default=None, metavar="S",
                        help="keep detections scoring above S (default: the model's own box_score_thresh; the "
                             "pictures then show the boxes above the display threshold its file records: the score "
                             "maximizing F1 at IoU 0.5 on its val set)")
    parser.add_argument("--draw", action="store_true",
                        help="also write pictures (enlarged to 480 px, one colour per class, class and score on "
                             "each box) with the detections drawn")
    parser.add_argument("--compare", nargs="+", default=None, metavar="CKPT",
                        help="more model files, drawn side by side with --ckpt's detections (DIR/compare/)")
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (default: cpu)")
    parser.add_argument("--batch-size", type=int, default=1, metavar="B", help="images per forward (default: 1)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("--debug", action="store_true",
                        help="show the full traceback of an error instead of one line")
    return parser


def main(args: argparse.Namespace) -> int:
    from detkd.deploy.predict import find_images, predict_and_draw
    from detkd.errors import DetkdError
    from detkd.utils.runtime import resolve_device, show_progress

    device = resolve_device(args.device, key="--device")
    files = find_images(args.input)
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise DetkdError(f"--out {out} exists and is not a folder")
    records = predict_and_draw([args.ckpt, *(args.compare or [])], files, out, device, config=args.cfg,
                               score_thresh=args.score_thresh, batch_size=args.batch_size, draw=args.draw,
                               progress=show_progress(False if args.no_progress else None))
    n_dets = sum(len(r["detections"]) for r in records)
    print(f"{len(files)} images, {n_dets} detections -> {out / 'detections.json'} (COCO results: "
          f"{out / 'detections_coco.json'})"
          + (f"; pictures in {out / 'pictures'}" if args.draw else "")
          + (f"; comparisons in {out / 'compare'}" if args.compare else ""))
    return 0
