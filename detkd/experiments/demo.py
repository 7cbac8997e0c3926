"""The demo: detection distillation on the embedded demo data, on the CPU.

1. trains the demo teacher (configs/demo/teacher_demo.yaml),
2. trains the baseline student alone (configs/demo/student_demo.yaml),
3. trains the same student distilled from the frozen teacher with PKD on the FPN
   (configs/demo/methods/pkd.yaml; Chen et al.'s objective: configs/demo/distill_demo.yaml),
then prints the three models' COCO AP / AP50 side by side. A finished run is reused
(its results.json is read) if it was trained with the same config (else a one-line error),
an interrupted one resumes, so the demo can be re-run cheaply.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from detkd.experiments.stats import gap_closed

#: The checkout whose configs/demo/ the runs name (this package's parent directory).
REPO = Path(__file__).resolve().parents[2]

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


def main(args: argparse.Namespace, repo: Path = REPO) -> int:
    """Train or reuse the three runs of the checkout ``repo``, print their metrics and the gap closed."""
    from detkd.recipe import load_config
    from detkd.experiments.runs import train_or_reuse
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
        cfg = load_config(repo / cfg_file, opts)

        def say(event: str, where: Path, seconds: float | None, name: str = name) -> None:
            if event == "reused":
                print(f"[demo] {name}: reusing finished run {where}")
            elif event in ("training", "resuming"):
                print(f"[demo] training the {name} -> {where}")

        metrics = train_or_reuse(cfg, cfg_file, say, progress=False if args.no_progress else None)["final"]
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
    compare_pictures(root, load_config(repo / RUNS[0][1]).data.demo.out_dir)
    return 0


def compare_pictures(root: Path, demo_dir: str, count: int = 4) -> None:
    """Teacher, baseline and distilled detections side by side on a few held-out images
    (detkd predict --compare) in ROOT/predictions/compare/."""
    from detkd.deploy.predict import predict_and_draw
    from detkd.errors import DetkdError
    from detkd.utils.runtime import resolve_device

    images = sorted((Path(demo_dir) / "val").glob("*.jpg"))[:count]
    if not images:  # e.g. reused runs after the demo data were deleted
        print(f"[demo] no comparison pictures: no held-out images in {Path(demo_dir) / 'val'}")
        return
    ckpts = [str(root / folder / "model_final.pth") for _, _, folder in RUNS]
    out = root / "predictions"
    try:
        records = predict_and_draw(ckpts, images, out, resolve_device("auto"), score_thresh=0.5)
        n_dets = sum(len(r["detections"]) for r in records)
        print(f"{len(images)} images, {n_dets} detections -> {out / 'detections.json'}; comparisons in "
              f"{out / 'compare'}")
    except DetkdError as exc:  # e.g. runs reused from before self-describing model files
        print(f"[demo] no comparison pictures: {exc}")
