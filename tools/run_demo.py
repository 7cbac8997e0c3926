#!/usr/bin/env python
"""The demo: detection distillation on the embedded demo data, on the CPU.

1. trains the demo teacher (configs/demo/teacher_demo.yaml),
2. trains the baseline student alone (configs/demo/student_demo.yaml),
3. trains the same student distilled from the frozen teacher with PKD on the FPN
   (configs/demo/methods/pkd.yaml; Chen et al.'s objective: configs/demo/distill_demo.yaml),
then prints the three models' COCO AP / AP50 side by side. A finished run is reused
(its results.json is read), an interrupted one resumes, so the demo can be re-run cheaply.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from detkd.config.load import config_hash, load_config  # noqa: E402
from detkd.errors import DetkdError  # noqa: E402
from detkd.utils.cli import run_cli  # noqa: E402

SECTIONS = ("model", "data", "train", "teacher", "distill")  # what a reused run must have been trained with

# (name, config, run folder under --output-root). The distilled student uses the best recipe
# measured on the demo pair that fits the demo's CPU budget (docs/results.md): PKD on the FPN.
RUNS = (
    ("teacher", "configs/demo/teacher_demo.yaml", "teacher"),
    ("baseline student", "configs/demo/student_demo.yaml", "student"),
    ("distilled (PKD)", "configs/demo/methods/pkd.yaml", "distill"),
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output-root", default="outputs/demo",
                        help="parent directory of the three runs (default: outputs/demo)")
    parser.add_argument("--epochs", type=int, default=None, help="override train.epochs of every run (quick look)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    parser.add_argument("--debug", action="store_true", help="full tracebacks on errors")
    return parser


def main(args: argparse.Namespace) -> int:
    from detkd.engine.trainer import train
    from detkd.modeling.detector import build_detector, count_parameters

    root = Path(args.output_root)
    rows = []
    for name, cfg_file, folder in RUNS:
        out = root / folder
        opts = [f"output_dir={out}"]
        if folder.startswith("distill"):
            opts.append(f"teacher.checkpoint={root / 'teacher' / 'model_final.pth'}")
        if args.epochs:
            opts.append(f"train.epochs={args.epochs}")
        cfg = load_config(REPO / cfg_file, opts)
        results = out / "results.json"
        if results.is_file():
            if config_hash(load_config(out / "config.yaml"), SECTIONS) != config_hash(cfg, SECTIONS):
                raise DetkdError(f"{out} holds a finished run of another config than {cfg_file}; move it away "
                                 "or choose another --output-root")
            print(f"[demo] {name}: reusing finished run {out}")
            metrics = json.loads(results.read_text())["final"]
        else:
            print(f"[demo] training the {name} -> {out}")
            metrics = train(cfg, resume="auto", progress=False if args.no_progress else None)
        params = count_parameters(build_detector(cfg.model)) / 1e6
        rows.append((name, params, metrics["AP"], metrics["AP50"]))

    print("\nCOCO metrics on the demo's held-out split (150 images):")
    print(f"{'model':<20} {'params (M)':>10} {'AP':>7} {'AP50':>7}")
    for name, params, ap, ap50 in rows:
        print(f"{name:<20} {params:>10.2f} {ap:>7.3f} {ap50:>7.3f}")
    (_, _, t_ap, t_ap50), (_, _, b_ap, b_ap50), (_, _, d_ap, d_ap50) = rows
    print(f"\ndistillation changed the student's AP50 by {d_ap50 - b_ap50:+.3f} and its AP by {d_ap - b_ap:+.3f}: "
          f"{gap_closed(t_ap50, b_ap50, d_ap50)} of the teacher-student AP50 gap, "
          f"{gap_closed(t_ap, b_ap, d_ap)} of the AP gap closed (one seed: docs/results.md has the seed spread)")
    compare_pictures(root, load_config(REPO / RUNS[0][1]).data.demo.out_dir)
    return 0


def gap_closed(teacher: float, baseline: float, distilled: float) -> str:
    """(distilled - baseline) / (teacher - baseline) as a percentage ("n/a" without a gap)."""
    if teacher <= baseline:
        return "n/a (the teacher is not above the baseline)"
    return f"{100 * (distilled - baseline) / (teacher - baseline):.0f}%"


def compare_pictures(root: Path, demo_dir: str, count: int = 4) -> None:
    """Teacher, baseline and distilled detections side by side on a few held-out images
    (detkd predict --compare) in ROOT/predictions/compare/."""
    from detkd.cli import predict as predict_cli
    from detkd.errors import DetkdError

    images = sorted((Path(demo_dir) / "val").glob("*.jpg"))[:count]
    ckpts = [str(root / folder / "model_final.pth") for _, _, folder in RUNS]
    argv = ["--ckpt", ckpts[0], "--compare", *ckpts[1:], "--input", *map(str, images),
            "--out", str(root / "predictions"), "--score-thresh", "0.5", "--no-progress"]
    try:
        predict_cli.main(predict_cli.build_parser().parse_args(argv))
    except DetkdError as exc:  # e.g. runs reused from before self-describing model files
        print(f"[demo] no comparison pictures: {exc}")


if __name__ == "__main__":
    sys.exit(run_cli(main, build_parser()))
