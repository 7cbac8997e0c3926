"""Run the embedded-data (Fashion-MNIST subset) distillation experiment and tabulate it.

1. trains the three teachers (configs/cls/fmnist/teacher_{a,b,c}.yaml) once;
2. runs baseline, kd, camkd, dml and ffl (configs/cls/fmnist/<method>.yaml) for every seed,
   the teachers' checkpoints pointed at the ones of step 1;
3. reads every run's results.json and prints (and writes to OUT/table.md, OUT/table.json)
   the mean ± std top-1 of every network over the seeds next to the baseline student of
   the same seeds, with the per-seed values (std: sample standard deviation, n - 1; '-' for
   one seed).

Every run is one subprocess of tools/train_cls.py (one CPU thread unless --threads); a run
whose results.json already exists is not repeated (when its config.yaml is the requested
config; another config is a one-line error), an interrupted run continues from its
last.pth (--resume auto), so an interrupted experiment resumes where it stopped (delete
OUT/<run> to redo one; --table-only only tabulates; --reevaluate
scores the finished runs again on the current test set, e.g. runs made before the default
test set became the whole 10,000-image Fashion-MNIST test split).

Examples:
  python tools/run_cls_experiment.py                        # outputs/cls_exp, seeds 0 1 2
  python tools/run_cls_experiment.py --seeds 0 --methods baseline kd --out outputs/cls_exp/try
  python tools/run_cls_experiment.py --opts method.ce_weight=0.5 --out outputs/cls_exp/ce05
  python tools/run_cls_experiment.py --methods kd --opts method.kd.temperature=2 --out outputs/cls_exp/t2
  python tools/run_cls_experiment.py --semi --out outputs/cls_exp/semi   # baseline_semi vs dml_semi

--semi: the semi-supervised setting (all 4000 images, 25% labelled): runs baseline_semi and
dml_semi (or baseline_semi and the --methods) and compares them with baseline_semi.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

from detkd.experiments.cls_plan import (CFG, REPO, TEACHERS, all_runs, choose_methods, method_opts, student_run,
                                         teacher_override)
from detkd.experiments.cls_runs import reevaluate, train, training_seconds
from detkd.experiments.cls_tables import tabulate


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="outputs/cls_exp", help="root of all runs (default outputs/cls_exp)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="train.seed of the students")
    p.add_argument("--methods", nargs="+", default=None,
                   help="student configs of configs/cls/fmnist/ (the baseline is always added; default "
                   "baseline kd camkd dml ffl, with --semi dml_semi)")
    p.add_argument("--semi", action="store_true",
                   help="semi-supervised setting: baseline_semi (the baseline) and dml_semi")
    p.add_argument("--opts", nargs="+", default=[], metavar="KEY=VALUE",
                   help="overrides for every student run (not the teachers); a method section's key "
                        "(method.kd.temperature=2) goes only to that method's runs")
    p.add_argument("--teacher-opts", nargs="+", default=[], metavar="KEY=VALUE", help="overrides for the teachers")
    p.add_argument("--threads", type=int, default=1, help="CPU threads per run (default 1)")
    p.add_argument("--table-only", action="store_true", help="train nothing; tabulate what exists")
    p.add_argument("--reevaluate", action="store_true",
                   help="train nothing; score every finished run (teachers included) again on the test set "
                   "its saved config gives now, rewriting its results.json (the old one is kept as "
                   "results_before_reevaluation.json), then tabulate")
    return p


def main(argv: list[str] | None = None) -> int:
    """Parse ``argv`` (the command line's by default), train (or re-evaluate) and tabulate."""
    args = build_parser().parse_args(argv)

    out = Path(args.out)
    if not out.is_absolute():
        out = REPO / out
    base_name, methods = choose_methods(args.methods, args.semi)
    walls: dict[str, float] = {}
    wall_file = out / "wall_seconds.json"
    if wall_file.is_file():
        walls = json.loads(wall_file.read_text())
    t0 = time.time()
    if args.reevaluate:
        print("re-evaluating the finished runs:", flush=True)
        for run in all_runs(methods, args.seeds):
            reevaluate(out / run, args.threads, out / "logs" / f"{run}.reevaluate.txt")
    elif not args.table_only:
        out.mkdir(parents=True, exist_ok=True)
        needs_teachers = any(teacher_override(m, out) for m in methods)
        if needs_teachers:
            print("teachers:", flush=True)
            for t in TEACHERS:
                w = train(CFG / f"teacher_{t}.yaml", out / f"teacher_{t}", args.teacher_opts, args.threads,
                          out / "logs" / f"teacher_{t}.txt")
                if not math.isnan(w):
                    walls[f"teacher_{t}"] = round(w, 1)
                    wall_file.write_text(json.dumps(walls, indent=2))
        for s in args.seeds:
            print(f"seed {s}:", flush=True)
            for m in methods:
                run = student_run(m, s)
                opts = [*teacher_override(m, out), f"train.seed={s}", *method_opts(m, args.opts)]
                w = train(CFG / f"{m}.yaml", out / run, opts,
                          args.threads, out / "logs" / f"{run}.txt")
                if not math.isnan(w):
                    walls[run] = round(w, 1)
                    wall_file.write_text(json.dumps(walls, indent=2))
    table, data = tabulate(out, methods, args.seeds, base_name)
    done = [r for r in all_runs(methods, args.seeds) if (out / r / "results.json").is_file()]
    train_s = {r: training_seconds(out / r) for r in done}
    t_teach = sum(v for r, v in train_s.items() if r.startswith("teacher_"))
    t_stud = sum(v for r, v in train_s.items() if not r.startswith("teacher_"))
    w_known = [walls[r] for r in done if r in walls]
    timing = (f"training time (results.json train_seconds): teachers {t_teach:.0f} s, students {t_stud:.0f} s, "
              f"total {t_teach + t_stud:.0f} s; process wall time of {len(w_known)} of the {len(done)} runs "
              f"(OUT/wall_seconds.json): {sum(w_known):.0f} s; this invocation {time.time() - t0:.0f} s")
    data["train_seconds"] = train_s
    text = f"{table}\n\n{timing}\n"
    print("\n" + text)
    if out.is_dir():
        (out / "table.md").write_text(text)
        (out / "table.json").write_text(json.dumps({**data, "wall_seconds": walls}, indent=2))
    return 0
