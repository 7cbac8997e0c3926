"""Export a trained detector to ONNX or TorchScript, checked against eager inference.

The exported model takes one float32 RGB image [3, H, W] in 0..1 (batch 1; H and W are
dynamic in both formats) and returns boxes [K, 4] (xyxy, input pixels), labels [K] (int64)
and scores [K]. After exporting, both models run on the --check-images (default: the val
images the model file records, where they are still on disk, else eight held-out demo images
shipped with detkd; so only the model file is needed, from any folder); the export is refused,
and its file deleted, unless every image gets the same detections with the same labels,
boxes within 0.01 px and scores within 1e-4. ONNX needs the 'export' extra
(pip install 'detkd[export]': onnx, onnxruntime).

Examples:
  detkd export --ckpt outputs/demo/distill/model_final.pth --format onnx --out student.onnx
  detkd export --ckpt model_final.pth --format torchscript --out student.pt --check-images photos/
"""

from __future__ import annotations

import argparse
from pathlib import Path


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="detkd export", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ckpt", required=True, metavar="FILE", help="model file (model_final.pth)")
    parser.add_argument("--format", required=True, metavar="onnx|torchscript", help="export format")
    parser.add_argument("--out", required=True, metavar="FILE", help="exported file (.onnx / .pt)")
    parser.add_argument("--cfg", default=None, metavar="FILE.yaml",
                        help="training config, needed only for a bare state dict without a detkd model record")
    parser.add_argument("--check-images", nargs="+", default=None, metavar="PATH",
                        help="images (files, folders, globs) for the parity check (default: the model file's "
                             "val images when on disk, else demo images shipped with detkd)")
    parser.add_argument("--check-count", type=int, default=20, metavar="N",
                        help="check on the first N of them (default: 20)")
    parser.add_argument("--debug", action="store_true",
                        help="show the full traceback of an error instead of one line")
    return parser


def main(args: argparse.Namespace) -> int:
    from detkd.data.utils import image_to_tensor, load_rgb_image
    from detkd.deploy.export import (BOX_ATOL, FORMATS, SCORE_ATOL, check_writable, default_check_images,
                                     export_model)
    from detkd.deploy.predict import find_images
    from detkd.errors import DetkdError
    from detkd.modeling.checkpoint_io import load_model_with_info, recorded_val_images

    if args.format not in FORMATS:
        raise DetkdError(f"unknown export format '{args.format}'; choose one of: {', '.join(FORMATS)}")
    if args.format == "onnx":
        try:
            import onnx  # noqa: F401
            import onnxruntime  # noqa: F401
        except ImportError as exc:
            raise DetkdError(f"ONNX export needs onnx and onnxruntime ({exc.name} is missing): "
                             "pip install 'detkd[export]'") from None
    if args.check_count < 1:
        raise DetkdError(f"--check-count must be at least 1, got {args.check_count}")
    check_writable(Path(args.out))
    files = find_images(args.check_images) if args.check_images else None  # bad --check-images: before loading
    model, _, info = load_model_with_info(args.ckpt, config=args.cfg)
    source = "--check-images"
    if files is None:
        files, source = default_check_images(recorded_val_images(info))
    images = [(str(p), image_to_tensor(load_rgb_image(p))) for p in files[:args.check_count]]
    numbers = export_model(model, args.format, args.out, images)
    print(f"wrote {args.out} ({args.format}); parity on {numbers['images']} images ({source}), "
          f"{numbers['detections']} detections: boxes within {numbers['max_box_diff']:.2g} px (tolerance {BOX_ATOL}), "
          f"scores within {numbers['max_score_diff']:.2g} (tolerance {SCORE_ATOL})"
          + (f"; {numbers['at_cutoff']} on one side only, each at a cut-off (score threshold, detection limit or NMS)"
             if numbers["at_cutoff"] else ""))
    return 0
