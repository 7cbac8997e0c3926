"""The detection experiment: is the distilled student better than the baseline beyond seed noise,
and how much faster is it than its teacher?

On the embedded demo data (generated from the repository on first use), one command
trains, in this order (each run evaluates itself on the held-out split and writes
results.json with COCO AP/AP50):

  teacher            configs/experiment/teacher.yaml           (one run, its config's seed)
  baseline           configs/experiment/student.yaml           (--seeds)
  distilled          configs/experiment/distill.yaml           (--seeds; all Chen et al. terms)
  baseline_fpn256    configs/experiment/student_fpn256.yaml    (--seeds; the teacher's FPN width; only with --only)
  distilled_fpn256   configs/experiment/distill_fpn256.yaml    (--seeds; all terms, no adapter; only with --only)
  baseline_fpn128    configs/experiment/student_fpn128.yaml    (--seeds; 128-ch FPN, 4x4 RoI pool)
  distilled_fpn128   configs/experiment/distill_fpn128.yaml    (--seeds; all terms, 1x1 adapters)
  hint_only          configs/experiment/ablations/hint_only.yaml          (--ablation-seeds; 128-ch student)
  soft_only          configs/experiment/ablations/soft_only.yaml          (RPN + RCN soft CE; 128-ch student)
  bound_only         configs/experiment/ablations/bound_only.yaml         (bounded regression; 128-ch student)
  no_adaptation_ref  configs/experiment/ablations/no_adaptation_ref.yaml  (256-ch, 1x1 adapter; only with --only)
  no_adaptation      configs/experiment/ablations/no_adaptation.yaml      (256-ch, identity; only with --only)
  pkd_fpn128, cwd_fpn128, mgd_fpn128, fgd_fpn128, fgfi_fpn128, chen_pkd_fpn128
                     configs/experiment/methods/*.yaml (--seeds; the FPN-feature methods on the
                     128-ch student, each against baseline_fpn128; only with --only)
  retinanet, fcos, ssdlite, *_cwd
                     configs/experiment/families/*.yaml (--seeds; one-stage students alone and distilled
                     from the same Faster R-CNN teacher with CWD; only with --only)
  fcos_teacher       configs/experiment/families/fcos_teacher.yaml (one run, OUTPUT_ROOT/fcos_teacher)
  fcos_crosskd       configs/experiment/families/fcos_crosskd.yaml (--seeds; fcos distilled from
                     fcos_teacher with CrossKD; only with --only)
  fcos128, fcos128_predictions, fcos128_predictions_offline
                     configs/experiment/families/fcos128*.yaml (--seeds; a 128 px FCOS alone and
                     distilled by prediction-level distillation from the Faster R-CNN teacher, online
                     and from its detections file, which detkd predict writes into
                     OUTPUT_ROOT/teacher/detections first; only with --only)
  fcos128_l100, fcos128_l100_predictions, fcos128_l100_unlabeled
                     the same student with the labels of 100 of the 600 training images: alone,
                     distilled on those, distilled on those plus the other 500 as unlabeled images

(one run of every main group per seed, seed by seed, so a stopped experiment still has pairs), then
writes the speed/accuracy report (detkd.evaluation.report.run_report: report.md/.csv/
.json/.png in OUTPUT_ROOT/report), prints mean ± std over seeds of AP and AP50 per group
(std = SAMPLE standard deviation, n - 1; '-' for n = 1) and writes OUTPUT_ROOT/summary.json.

Runs live in OUTPUT_ROOT/teacher and OUTPUT_ROOT/GROUP/seedN. A run whose results.json
exists is skipped (its numbers are read back) if its saved config.yaml is the requested
config (model, data, train, teacher, distill; a finished run of another config is a
one-line error); an unfinished one is resumed from its last checkpoint (--resume auto), so
the command can simply be started again after a stop.
Every distillation run reads its teacher from OUTPUT_ROOT/teacher (config.yaml and
model_final.pth), i.e. the teacher exactly as it was trained, overrides included; fcos_crosskd
reads OUTPUT_ROOT/fcos_teacher.

Examples:
  python tools/run_experiment.py                                   # the default CPU setting (~100 min)
  python tools/run_experiment.py --only teacher,baseline,distilled --seeds 0,1,2,3,4
  python tools/run_experiment.py --output-root outputs/exp_gpu --threads 8 \\
      --opts train.device=cuda train.epochs=12 data.demo.num_train=6000   # GPU scale-up
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from detkd.errors import DetkdError
from detkd.experiments.plan import DEFAULT_GROUPS, GROUP_NAMES, OPTIONAL_GROUPS, distills, plan_runs, \
    run_overrides, teacher_dir, OFFLINE, offline_detections
from detkd.experiments.stats import STD_KIND
from detkd.experiments.tables import distillation_gains, format_gain, format_table, summarize

#: The checkout whose configs/experiment/ the groups name (this package's parent directory).
REPO = Path(__file__).resolve().parents[2]
COMMAND = ("python", "tools/run_experiment.py")


def _int_list(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got '{text}'") from None
    if not values or len(set(values)) != len(values) or min(values) < 0:
        raise argparse.ArgumentTypeError(f"expected distinct non-negative integers, got '{text}'")
    return values


def _groups(text: str) -> list[str]:
    names = [v.strip() for v in text.split(",") if v.strip()]
    bad = [n for n in names if n not in GROUP_NAMES]
    if not names or bad:
        raise argparse.ArgumentTypeError(f"unknown group(s) {bad or text!r}; choose from {','.join(GROUP_NAMES)}")
    return names


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output-root", default="outputs/experiment", metavar="DIR",
                        help="parent directory of every run, the report and summary.json "
                             "(default: outputs/experiment)")
    parser.add_argument("--seeds", type=_int_list, default=[0, 1, 2], metavar="S,S,...",
                        help="training seeds (train.seed) of the baseline and distilled students (default: 0,1,2)")
    parser.add_argument("--ablation-seeds", type=_int_list, default=[0], metavar="S,S,...",
                        help="training seeds of each ablation group (default: 0)")
    parser.add_argument("--only", type=_groups, default=list(DEFAULT_GROUPS), metavar="G,G,...",
                        help="train and report only these groups, from: " + ",".join(GROUP_NAMES) +
                             " (default: all but " + ",".join(OPTIONAL_GROUPS) + "). Distillation groups need a "
                             "finished teacher in OUTPUT_ROOT/teacher: include 'teacher' or train it first")
    parser.add_argument("--epochs", type=int, default=None, metavar="N",
                        help="override train.epochs of every run (default: each config's own)")
    parser.add_argument("--teacher-epochs", type=int, default=None, metavar="N",
                        help="override train.epochs of the teacher only (default: --epochs, else the config's)")
    parser.add_argument("--opts", nargs="+", default=[], metavar="KEY=VALUE",
                        help="config overrides for every run (as tools/train_det.py --opts), e.g. "
                             "train.device=cuda data.demo.num_train=2000; the distillation runs take the "
                             "teacher's model from the teacher's own run, so model.* overrides stay consistent")
    parser.add_argument("--threads", type=int, default=1, metavar="N",
                        help="torch CPU threads for training and for the report's timings (default: 1; "
                             "also sets OMP_NUM_THREADS/MKL_NUM_THREADS when they are unset)")
    parser.add_argument("--no-report", action="store_true",
                        help="train and summarize only: skip the speed/accuracy report")
    parser.add_argument("--report-device", default="cpu",
                        help="device of the report's timings: cpu, cuda, cuda:N or auto (default: cpu)")
    parser.add_argument("--report-warmup", type=int, default=10, metavar="N",
                        help="report: untimed warm-up forwards per timed model (default: 10)")
    parser.add_argument("--report-runs", type=int, default=50, metavar="N",
                        help="report: timed batch-1 forwards per timed model (default: 50)")
    parser.add_argument("--throughput-batch", type=int, default=8, metavar="B",
                        help="report: batch size of the throughput measurement, 0 to skip it (default: 8)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars (log lines only)")
    parser.add_argument("--debug", action="store_true", help="full tracebacks on errors")
    return parser


def command_line() -> str:
    return " ".join([*COMMAND, *sys.argv[1:]])


def train_run(run: dict, args: argparse.Namespace, repo: Path = REPO) -> dict:
    """Train one planned run, or read back its finished run (:func:`detkd.experiments.runs.train_or_reuse`);
    its numbers as a dict. A distillation run needs the finished teacher first."""
    from detkd.recipe import load_config
    from detkd.experiments.runs import finished, train_or_reuse

    out = Path(run["output_dir"])
    label = run["name"] if run["seed"] is None else f"{run['name']} seed {run['seed']}"
    teacher = teacher_dir(args, run)
    if distills(run) and not finished(out) and not finished(teacher):
        raise DetkdError(f"{label} needs the finished teacher in {teacher} (no results.json there); "
                         f"train it first (--only {teacher.name})")

    def say(event: str, where: Path, seconds: float | None) -> None:
        if event == "reused":
            print(f"[experiment] {label}: finished run in {where}, skipped", flush=True)
        elif event == "done":
            print(f"[experiment] {label}: done in {seconds:.0f} s", flush=True)
        else:
            print(f"[experiment] {label}: {event} -> {where}", flush=True)

    if distills(run) and run["name"] in OFFLINE and not offline_detections(args, run).is_file():
        write_teacher_detections(teacher, offline_detections(args, run).parent, args, repo)
    config = Path(run["config"])
    cfg = load_config(config if config.is_absolute() else repo / config, run_overrides(run, args))
    data = train_or_reuse(cfg, run["config"], say, progress=False if args.no_progress else None)
    return {"name": run["name"], "seed": run["seed"], "config": run["config"], "output_dir": str(out),
            "metrics": {k: v for k, v in (data.get("final") or {}).items()},
            "train_seconds": data.get("train_seconds"), "iterations": data.get("iterations")}


def write_teacher_detections(teacher: Path, out: Path, args: argparse.Namespace, repo: Path) -> None:
    """The teacher run's detections on its training images (``detkd predict``, score >= 0.05): the
    ``teacher.detections`` of the :data:`OFFLINE` groups."""
    from detkd.deploy.predict import find_images, predict_and_draw
    from detkd.recipe.load import read_saved_config

    cfg = read_saved_config((teacher / "config.yaml").read_text(), str(teacher / "config.yaml"))
    images = Path(cfg.data.demo.out_dir)
    images = images if images.is_absolute() else repo / images
    files = find_images([str(images / cfg.data.train.split)])
    print(f"[experiment] teacher detections on {len(files)} training images -> {out}", flush=True)
    predict_and_draw([teacher / "model_final.pth"], files, out, "cpu", score_thresh=0.05,
                     progress=False if args.no_progress else None)


def make_report(done: list[dict], args: argparse.Namespace) -> dict:
    from detkd.evaluation.report import ModelEntry, run_report  # lazily: the heavy part

    entries = [ModelEntry(name=r["name"], config=str(Path(r["output_dir"]) / "config.yaml"),
                          checkpoint=str(Path(r["output_dir"]) / "model_final.pth"),
                          seed=r["seed"] if r["seed"] is not None else None,
                          role="teacher" if r["name"] == "teacher" else "student",
                          metrics={k: v for k, v in r["metrics"].items() if isinstance(v, (int, float))})
               for r in done]
    return run_report(entries, Path(args.output_root) / "report", device=args.report_device, split="val",
                      warmup=args.report_warmup, runs=args.report_runs, throughput_batch=args.throughput_batch,
                      threads=args.threads, measure_speed_for="first_of_group",
                      progress=False if args.no_progress else None, command=command_line())


def main(args: argparse.Namespace, repo: Path = REPO) -> int:
    """The whole experiment: plan, train or reuse every run, summarize, report, print."""
    if args.threads < 1:
        raise DetkdError(f"--threads must be >= 1, got {args.threads}")
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(var, str(args.threads))
    import torch

    torch.set_num_threads(args.threads)
    t_start = time.time()
    runs = plan_runs(args)
    print(f"[experiment] {len(runs)} runs in {args.output_root} ({args.threads} thread(s))", flush=True)
    done = [train_run(run, args, repo) for run in runs]
    train_wall = time.time() - t_start

    groups = summarize(done)
    gains = distillation_gains(groups)
    report_info = None
    if not args.no_report:
        t0 = time.time()
        report = make_report(done, args)
        by = {g["name"]: g for g in report.get("groups", [])}
        report_info = {"files": report.get("files"), "seconds": round(time.time() - t0, 1),
                       "latency_median_ms": {n: g.get("latency_median_ms") for n, g in by.items()},
                       "speedup_vs_teacher": {n: g.get("speedup_vs_teacher") for n, g in by.items()}}

    summary = {
        "std": STD_KIND,
        "settings": {"output_root": args.output_root, "seeds": args.seeds, "ablation_seeds": args.ablation_seeds,
                     "only": args.only, "epochs": args.epochs, "teacher_epochs": args.teacher_epochs,
                     "opts": args.opts, "threads": args.threads},
        "groups": groups,
        "distillation_gains": gains,
        "runs": done,
        "report": report_info,
        "train_wall_seconds": round(train_wall, 1),
        "wall_seconds": round(time.time() - t_start, 1),
        "command": command_line(),
    }
    from detkd.utils.atomic import atomic_write_text

    Path(args.output_root).mkdir(parents=True, exist_ok=True)
    atomic_write_text(json.dumps(summary, indent=2), Path(args.output_root) / "summary.json")

    print("\nCOCO AP / AP50 on the demo's held-out split, per group over seeds:")
    print(format_table(groups))
    for gain in gains:
        print(format_gain(gain))
    if report_info:
        speed = {n: s for n, s in report_info["speedup_vs_teacher"].items() if s is not None}
        if speed:
            print("batch-1 speed-up vs the teacher: " + ", ".join(f"{n} {s:.2f}x" for n, s in speed.items()))
        print(f"report: {Path(args.output_root) / 'report'}")
    print(f"summary: {Path(args.output_root) / 'summary.json'} (wall {summary['wall_seconds']:.0f} s)")
    return 0
