#!/usr/bin/env python
"""Issue #5 experiment: is the distilled student better than the baseline beyond seed noise,
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
                     configs/experiment/methods/*.yaml (--seeds; issue #12's FPN-feature methods on the
                     128-ch student, each against baseline_fpn128; only with --only)

(one run of every main group per seed, seed by seed, so a stopped experiment still has pairs), then
writes the speed/accuracy report (detkd.evaluation.report.run_report: report.md/.csv/
.json/.png in OUTPUT_ROOT/report), prints mean ± std over seeds of AP and AP50 per group
(std = SAMPLE standard deviation, n - 1; '-' for n = 1) and writes OUTPUT_ROOT/summary.json.

Runs live in OUTPUT_ROOT/teacher and OUTPUT_ROOT/GROUP/seedN. A run whose results.json
exists is skipped (its numbers are read back); an unfinished one is resumed from its last
checkpoint (--resume auto), so the command can simply be started again after a stop.
Every distillation run reads its teacher from OUTPUT_ROOT/teacher (config.yaml and
model_final.pth), i.e. the teacher exactly as it was trained, overrides included.

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

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from detkd.errors import DetkdError  # noqa: E402
from detkd.utils.cli import run_cli  # noqa: E402
from detkd.utils.stats import mean_std  # noqa: E402

# (group, config, kind): kind "teacher" (one run), "main" (--seeds) or "ablation" (--ablation-seeds).
GROUPS = (
    ("teacher", "configs/experiment/teacher.yaml", "teacher"),
    ("baseline", "configs/experiment/student.yaml", "main"),
    ("distilled", "configs/experiment/distill.yaml", "main"),
    ("baseline_fpn256", "configs/experiment/student_fpn256.yaml", "main"),
    ("distilled_fpn256", "configs/experiment/distill_fpn256.yaml", "main"),
    ("baseline_fpn128", "configs/experiment/student_fpn128.yaml", "main"),
    ("distilled_fpn128", "configs/experiment/distill_fpn128.yaml", "main"),
    ("hint_only", "configs/experiment/ablations/hint_only.yaml", "ablation"),
    ("soft_only", "configs/experiment/ablations/soft_only.yaml", "ablation"),
    ("bound_only", "configs/experiment/ablations/bound_only.yaml", "ablation"),
    ("no_adaptation_ref", "configs/experiment/ablations/no_adaptation_ref.yaml", "ablation"),
    ("no_adaptation", "configs/experiment/ablations/no_adaptation.yaml", "ablation"),
    # Issue #12: the FPN-feature methods on the 128-ch student (only with --only).
    ("pkd_fpn128", "configs/experiment/methods/pkd_fpn128.yaml", "main"),
    ("cwd_fpn128", "configs/experiment/methods/cwd_fpn128.yaml", "main"),
    ("mgd_fpn128", "configs/experiment/methods/mgd_fpn128.yaml", "main"),
    ("fgd_fpn128", "configs/experiment/methods/fgd_fpn128.yaml", "main"),
    ("fgfi_fpn128", "configs/experiment/methods/fgfi_fpn128.yaml", "main"),
    ("chen_pkd_fpn128", "configs/experiment/methods/chen_pkd_fpn128.yaml", "main"),
)
GROUP_NAMES = tuple(g[0] for g in GROUPS)
# What runs without --only (about 100 minutes on one CPU thread: teacher 17, the 32-ch pair
# 20, the 128-ch pair 39, its three term ablations 25): everything but the 256-channel
# groups (about 50 more minutes for the pair over 3 seeds, 20 for the adapter ablation pair;
# --only adds them).
METHOD_GROUPS = ("pkd_fpn128", "cwd_fpn128", "mgd_fpn128", "fgd_fpn128", "fgfi_fpn128", "chen_pkd_fpn128")
OPTIONAL_GROUPS = ("baseline_fpn256", "distilled_fpn256", "no_adaptation_ref", "no_adaptation", *METHOD_GROUPS)
DEFAULT_GROUPS = tuple(g for g in GROUP_NAMES if g not in OPTIONAL_GROUPS)
# (baseline, distilled) groups that differ only in the distillation terms.
PAIRS = (("baseline", "distilled"), ("baseline_fpn256", "distilled_fpn256"), ("baseline_fpn128", "distilled_fpn128"),
         *(("baseline_fpn128", group) for group in METHOD_GROUPS))
# Students trained alone (the baselines): no teacher to point at OUTPUT_ROOT/teacher.
ALONE = tuple(baseline for baseline, _ in PAIRS)
METRICS = ("AP", "AP50")
STD_KIND = "sample standard deviation (n - 1); null for n = 1"


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


# ----------------------------------------------------------------------------- the plan


def plan_runs(args: argparse.Namespace) -> list[dict]:
    """Every run to do, in training order: the teacher, then for each seed one run of every
    "main" group (baseline, distilled, ... in GROUPS order), then the ablations."""
    root = Path(args.output_root)
    by_name = {name: (cfg, kind) for name, cfg, kind in GROUPS}
    runs = []

    def add(name: str, seed: int | None) -> None:
        cfg, kind = by_name[name]
        out = root / "teacher" if kind == "teacher" else root / name / f"seed{seed}"
        runs.append({"name": name, "config": cfg, "kind": kind, "seed": seed, "output_dir": out})

    if "teacher" in args.only:
        add("teacher", None)
    for seed in args.seeds:
        for name, _, kind in GROUPS:
            if kind == "main" and name in args.only:
                add(name, seed)
    for name, _, kind in GROUPS:
        if kind == "ablation" and name in args.only:
            for seed in args.ablation_seeds:
                add(name, seed)
    return runs


def distills(run: dict) -> bool:
    """Whether the run learns from the teacher (reads OUTPUT_ROOT/teacher)."""
    return run["kind"] != "teacher" and run["name"] not in ALONE


def run_overrides(run: dict, args: argparse.Namespace) -> list[str]:
    opts = list(args.opts)
    epochs = args.teacher_epochs if run["kind"] == "teacher" and args.teacher_epochs else args.epochs
    if epochs is not None:
        opts.append(f"train.epochs={epochs}")
    if run["seed"] is not None:
        opts.append(f"train.seed={run['seed']}")
    if distills(run):
        teacher_dir = (Path(args.output_root) / "teacher").resolve()
        opts += [f"teacher.config={teacher_dir / 'config.yaml'}",
                 f"teacher.checkpoint={teacher_dir / 'model_final.pth'}"]
    opts.append(f"output_dir={run['output_dir']}")
    return opts


# ----------------------------------------------------------------------------- statistics


def summarize(runs: list[dict]) -> list[dict]:
    groups: dict[str, list[dict]] = {}
    for run in runs:
        groups.setdefault(run["name"], []).append(run)
    out = []
    for name, members in groups.items():
        row = {"name": name, "n": len(members), "seeds": [m["seed"] for m in members]}
        for key in METRICS:
            values = [m["metrics"].get(key) for m in members]
            row[key], row[f"{key}_mean"], row[f"{key}_std"] = values, *mean_std(values)
        row["train_seconds"] = [m.get("train_seconds") for m in members]
        out.append(row)
    return out


def _fmt(mean: float | None, std: float | None) -> str:
    if mean is None:
        return "-"
    return f"{mean:.3f} ± {std:.3f}" if std is not None else f"{mean:.3f} ± -"


def format_table(groups: list[dict]) -> str:
    lines = [f"{'group':<18} {'n':>2}  {'AP (mean ± std)':>17}  {'AP50 (mean ± std)':>17}  seeds",
             "-" * 72]
    for g in groups:
        seeds = ",".join("-" if s is None else str(s) for s in g["seeds"])
        lines.append(f"{g['name']:<18} {g['n']:>2}  {_fmt(g['AP_mean'], g['AP_std']):>17}  "
                     f"{_fmt(g['AP50_mean'], g['AP50_std']):>17}  {seeds}")
    lines.append("std: sample standard deviation over seeds (n - 1); '-' where n = 1")
    return "\n".join(lines)


def distillation_gain(groups: list[dict], baseline: str = "baseline", distilled: str = "distilled") -> dict | None:
    """Distilled minus baseline AP50 (means) against the seed-to-seed spread.

    spread = the largest of the two groups' sample stds and, where both groups share >= 2
    seeds, the sample std of the seed-for-seed differences (distilled seed s starts from the
    same seed as baseline seed s)."""
    by = {g["name"]: g for g in groups}
    base, dist = by.get(baseline), by.get(distilled)
    if not base or not dist or base["AP50_mean"] is None or dist["AP50_mean"] is None:
        return None
    gain = dist["AP50_mean"] - base["AP50_mean"]
    base_by_seed = dict(zip(base["seeds"], base["AP50"]))
    paired = [v - base_by_seed[s] for s, v in zip(dist["seeds"], dist["AP50"]) if s in base_by_seed]
    paired_std = mean_std(paired)[1] if len(paired) >= 2 else None
    stds = [s for s in (base["AP50_std"], dist["AP50_std"], paired_std) if s is not None]
    spread = max(stds) if stds else None
    return {"baseline": baseline, "distilled": distilled, "AP50_gain": gain, "paired_AP50_gains": paired,
            "paired_std": paired_std, "spread": spread,
            "exceeds_spread": (gain > spread) if spread is not None else None,
            "note": "spread = max of the two groups' sample stds of AP50 over seeds and of the "
                    "sample std of the seed-for-seed differences"}


def distillation_gains(groups: list[dict]) -> list[dict]:
    """distillation_gain of every (baseline, distilled) pair of PAIRS present in ``groups``."""
    gains = [distillation_gain(groups, b, d) for b, d in PAIRS]
    return [g for g in gains if g is not None]


# ----------------------------------------------------------------------------- main


def train_or_reuse(run: dict, args: argparse.Namespace) -> dict:
    from detkd.config.load import load_config
    from detkd.engine.trainer import train

    out = Path(run["output_dir"])
    results = out / "results.json"
    label = run["name"] if run["seed"] is None else f"{run['name']} seed {run['seed']}"
    if results.is_file():
        print(f"[experiment] {label}: finished run in {out}, skipped", flush=True)
    else:
        if distills(run):
            teacher = Path(args.output_root) / "teacher"
            if not (teacher / "results.json").is_file():
                raise DetkdError(f"{label} needs the finished teacher in {teacher} (no results.json there); "
                                 "train it first (--only teacher)")
        cfg = load_config(REPO / run["config"] if not Path(run["config"]).is_absolute() else run["config"],
                          run_overrides(run, args))
        state = "resuming" if (out / "last.pth").is_file() else "training"
        print(f"[experiment] {label}: {state} -> {out}", flush=True)
        t0 = time.time()
        train(cfg, resume="auto", progress=False if args.no_progress else None)
        print(f"[experiment] {label}: done in {time.time() - t0:.0f} s", flush=True)
    data = json.loads(results.read_text())
    return {"name": run["name"], "seed": run["seed"], "config": run["config"], "output_dir": str(out),
            "metrics": {k: v for k, v in (data.get("final") or {}).items()},
            "train_seconds": data.get("train_seconds"), "iterations": data.get("iterations")}


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
                      progress=False if args.no_progress else None,
                      command=" ".join(["python", "tools/run_experiment.py", *sys.argv[1:]]))


def main(args: argparse.Namespace) -> int:
    if args.threads < 1:
        raise DetkdError(f"--threads must be >= 1, got {args.threads}")
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(var, str(args.threads))
    import torch

    torch.set_num_threads(args.threads)
    t_start = time.time()
    runs = plan_runs(args)
    print(f"[experiment] {len(runs)} runs in {args.output_root} ({args.threads} thread(s))", flush=True)
    done = [train_or_reuse(run, args) for run in runs]
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
        "command": " ".join(["python", "tools/run_experiment.py", *sys.argv[1:]]),
    }
    from detkd.engine.checkpoint import atomic_write_text

    Path(args.output_root).mkdir(parents=True, exist_ok=True)
    atomic_write_text(json.dumps(summary, indent=2), Path(args.output_root) / "summary.json")

    print("\nCOCO AP / AP50 on the demo's held-out split, per group over seeds:")
    print(format_table(groups))
    for gain in gains:
        verdict = {True: "exceeds", False: "does NOT exceed", None: "cannot be compared with"}[gain["exceeds_spread"]]
        spread = "n/a" if gain["spread"] is None else f"{gain['spread']:.3f}"
        print(f"{gain['distilled']} - {gain['baseline']} AP50: {gain['AP50_gain']:+.3f}; it {verdict} the "
              f"seed-to-seed spread ({spread})")
    if report_info:
        speed = {n: s for n, s in report_info["speedup_vs_teacher"].items() if s is not None}
        if speed:
            print("batch-1 speed-up vs the teacher: " + ", ".join(f"{n} {s:.2f}x" for n, s in speed.items()))
        print(f"report: {Path(args.output_root) / 'report'}")
    print(f"summary: {Path(args.output_root) / 'summary.json'} (wall {summary['wall_seconds']:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main, build_parser()))
