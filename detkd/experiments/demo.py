"""The demo: detection distillation on the embedded demo data, on the CPU.

1. trains the demo teacher (configs/demo/teacher_demo.yaml),
2. trains the baseline student alone (configs/demo/student_demo.yaml),
3. trains the same student distilled from the frozen teacher with PKD on the FPN
   (configs/demo/methods/pkd.yaml; Chen et al.'s objective: configs/demo/distill_demo.yaml),
then prints the three models' COCO AP / AP50 side by side, and ends with their report page
(``detkd report --html``: table, Pareto plot, per-class AP, training curves) and comparison
pictures of the held-out images where they differ most. A finished run is reused
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
    report_with_pictures(root)
    return 0


#: The report's name of each run folder (the pictures' column titles); the gap closed is the
#: distilled student's, from the baseline towards the teacher.
REPORT_NAMES = {"teacher": "teacher", "student": "baseline", "distill": "distilled (PKD)"}


def report_with_pictures(root: Path, n_differ: int = 3, n_typical: int = 2) -> None:
    """The three runs' report with its page (ROOT/report/report.html: detkd report --html) and
    the comparison pictures in ROOT/predictions/compare/: the held-out images where the models
    differ most, the one where distillation helps most and typical ones, each model drawn above
    its own display threshold beside the ground truth."""
    from detkd.deploy.page import report_page
    from detkd.errors import DetkdError
    from detkd.evaluation.report import ModelEntry

    entries = [ModelEntry(name=REPORT_NAMES[folder], config=str(root / folder / "config.yaml"),
                          checkpoint=str(root / folder / "model_final.pth")) for _, _, folder in RUNS]
    out, compare = root / "report", root / "predictions" / "compare"
    try:
        report, pictures, page = report_page(
            entries, out, baseline="baseline", ahead=("distilled (PKD)", "baseline"), pictures_dir=compare,
            n_differ=n_differ, n_typical=n_typical, device="cpu", warmup=3, runs=20, throughput_batch=0,
            latency_rounds=2, progress=False, command="detkd demo (its report: detkd report --html)")
    except DetkdError as exc:  # e.g. runs reused from before self-describing model files
        print(f"[demo] no report page or comparison pictures: {exc}")
        return
    print(f"\n{len(pictures)} comparison pictures in {compare} (teacher, baseline, distilled, ground truth; each "
          "model's boxes above its own F1-optimal threshold on val), chosen by per-image AP50:")
    for p in pictures:
        print(f"  {Path(p['picture']).name}: {p['why']}")
    print(f"the whole report on one page: {page} (open it in a browser)")
