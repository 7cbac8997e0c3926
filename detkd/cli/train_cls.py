"""Train an image classifier, plain or with knowledge distillation.

Methods (config key method.name): baseline, kd, fitnet, at, sp (one teacher); aver, ebkd,
aekd, camkd, fitnet_mkd (several teachers); dml, dml_e, ffl (online, several peers); scd
(self-distillation). Teachers are loaded from checkpoints (e.g. the model_final.pth of a
baseline run). See docs/classification.md.

Examples:
  python tools/train_cls.py --cfg configs/cls/fmnist/baseline.yaml
  python tools/train_cls.py --cfg configs/cls/fmnist/camkd.yaml --opts train.epochs=1
  python tools/train_cls.py --cfg configs/cls/cifar100/camkd_resnet8x4.yaml --output-dir outputs/camkd
  python tools/train_cls.py --cfg configs/cls/cifar100/camkd_resnet8x4.yaml --output-dir outputs/camkd --resume auto
"""

from __future__ import annotations

import argparse

from detkd.cls.config import load_cls_config
from detkd.utils.cli import add_config_args, run_cli


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_config_args(parser)
    parser.add_argument("--output-dir", default=None, metavar="DIR", help="shortcut for --opts output_dir=DIR")
    parser.add_argument("--resume", default=None, metavar="auto|PATH",
                        help="continue from a last.pth: 'auto' = output_dir/last.pth (from scratch if there is "
                             "none), or a path; the run then ends with the same weights as an uninterrupted one")
    parser.add_argument("--force-resume", action="store_true",
                        help="resume even if the checkpoint was made with a different config")
    return parser


def main(args: argparse.Namespace) -> int:
    from detkd.cls.train import train_cls

    opts = list(args.opts) + ([f"output_dir={args.output_dir}"] if args.output_dir else [])
    cfg = load_cls_config(args.cfg, opts)
    train_cls(cfg, resume=args.resume, force_resume=args.force_resume)
    return 0


def cli(argv: list[str] | None = None) -> int:
    return run_cli(main, build_parser(), argv)

