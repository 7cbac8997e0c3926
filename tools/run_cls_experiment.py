#!/usr/bin/env python
"""Run the embedded-data (Fashion-MNIST subset) distillation experiment and tabulate it.

1. trains the three teachers (configs/cls/fmnist/teacher_{a,b,c}.yaml) once;
2. runs baseline, kd, camkd, dml and ffl (configs/cls/fmnist/<method>.yaml) for every seed,
   the teachers' checkpoints pointed at the ones of step 1;
3. reads every run's results.json and prints (and writes to OUT/table.md, OUT/table.json)
   the mean ± std top-1 of every network over the seeds next to the baseline student of
   the same seeds, with the per-seed values.

Every run is one subprocess of tools/train_cls.py (one CPU thread unless --threads); a run
whose results.json already exists is not repeated, so an interrupted experiment resumes
where it stopped (delete OUT/<run> to redo one; --table-only only tabulates; --reevaluate
scores the finished runs again on the current test set, e.g. runs made before the default
test set became the whole 10,000-image Fashion-MNIST test split).

Examples:
  python tools/run_cls_experiment.py                        # outputs/cls_exp, seeds 0 1 2
  python tools/run_cls_experiment.py --seeds 0 --methods baseline kd --out outputs/cls_exp/try
  python tools/run_cls_experiment.py --opts method.ce_weight=0.5 --out outputs/cls_exp/ce05
  python tools/run_cls_experiment.py --semi --out outputs/cls_exp/semi   # baseline_semi vs dml_semi

--semi: the semi-supervised setting (all 4000 images, 25% labelled): runs baseline_semi and
dml_semi (or baseline_semi and the --methods) and compares them with baseline_semi.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from detkd.utils.stats import mean_std as stats_mean_std  # noqa: E402

CFG = ROOT / "configs" / "cls" / "fmnist"
TEACHERS = ("a", "b", "c")
METHODS = ("baseline", "kd", "camkd", "dml", "ffl")
# What each method's row is labelled with in the table.
LABELS = {"baseline": "baseline", "kd": "KD (teacher a)", "camkd": "CA-MKD (teachers a, b, c)",
          "dml": "DML (2 peers)", "ffl": "FFL (2 sub-networks)", "aver": "AVER (teachers a, b, c)",
          "ebkd": "EBKD (teachers a, b, c)", "aekd": "AEKD (teachers a, b, c)", "fitnet": "FitNet (teacher a)",
          "at": "AT (teacher a)", "sp": "SP (teacher a)", "fitnet_mkd": "FitNet-MKD (teachers a, b, c)",
          "dml_e": "DML_e (3 peers)", "scd": "SCD", "baseline_semi": "baseline (25% labelled)",
          "dml_semi": "DML (2 peers, 25% labelled)"}


# Where --reevaluate keeps a run's first results (and so its own training time).
BEFORE_REEVALUATION = "results_before_reevaluation.json"


def mean_std(values: list[float]) -> tuple[float, float]:
    """detkd.utils.stats.mean_std (sample std, n - 1) with std 0 for a single value, as the
    table prints it ("80.70 ± 0.00"; a verdict needs two or more seeds anyway)."""
    m, s = stats_mean_std(values)
    return m, (0.0 if s is None else s)


def read_results(path: Path) -> dict:
    return json.loads((path / "results.json").read_text())


def training_seconds(path: Path) -> float:
    """A run's own training time: from its first results when it was re-evaluated since."""
    first = path / BEFORE_REEVALUATION
    return json.loads((first if first.is_file() else path / "results.json").read_text())["train_seconds"]


def run_train_cls(args: list[str], threads: int, log: Path, opts: list[str] = ()) -> int:
    """tools/train_cls.py ARGS --opts train.threads=THREADS OPTS (also OMP/MKL threads),
    output to ``log``; its exit code."""
    cmd = [sys.executable, str(ROOT / "tools" / "train_cls.py"), *args, "--opts", f"train.threads={threads}", *opts]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "w") as f:
        return subprocess.run(cmd, cwd=ROOT, env=env, stdout=f, stderr=subprocess.STDOUT).returncode


def train(cfg: Path, out: Path, opts: list[str], threads: int, log: Path) -> float:
    """One tools/train_cls.py run (skipped when out/results.json exists); its wall time in s."""
    if (out / "results.json").is_file():
        print(f"  {out.name}: done already ({out / 'results.json'})", flush=True)
        return float("nan")
    if out.exists() and any(out.iterdir()):
        raise SystemExit(f"error: {out} holds an unfinished run (no results.json); delete it and run again")
    args = ["--cfg", str(cfg), "--output-dir", str(out)]
    print(f"  tools/train_cls.py {' '.join(args)} --opts train.threads={threads} {' '.join(opts)}", flush=True)
    t0 = time.time()
    code = run_train_cls(args, threads, log, opts)
    wall = time.time() - t0
    if code != 0:
        raise SystemExit(f"error: {out.name} failed (exit {code}); see {log}")
    res = read_results(out)
    top = " ".join(f"{k} {v['top1']:.1f}" for k, v in res["networks"].items())
    print(f"  {out.name}: {wall:.0f}s wall, {res['train_seconds']:.0f}s training; top-1 {top}", flush=True)
    return wall


def reevaluate(out: Path, threads: int, log: Path) -> None:
    """Score a finished run again on the test set its config gives now (e.g. after the
    default ``data.test_split`` changed): tools/train_cls.py resumes the run's final last.pth,
    so nothing trains, and rewrites results.json (the previous one is kept once, as
    BEFORE_REEVALUATION). --force-resume: checkpoints of older versions hash
    the test set into their config hash."""
    if not (out / "results.json").is_file():
        return
    keep = out / BEFORE_REEVALUATION
    if not keep.is_file():
        keep.write_text((out / "results.json").read_text())
    code = run_train_cls(["--cfg", str(out / "config.yaml"), "--output-dir", str(out), "--resume", "auto",
                          "--force-resume"], threads, log)
    if code != 0:
        raise SystemExit(f"error: re-evaluating {out.name} failed (exit {code}); see {log}")
    res = read_results(out)
    top = " ".join(f"{k} {v['top1']:.2f}" for k, v in res["networks"].items())
    print(f"  {out.name}: re-evaluated on {res['test_images']} test images; top-1 {top}", flush=True)


def teacher_override(method: str, out: Path) -> list[str]:
    """Point the config's teachers (teacher_a/b/c of the recipes) at the checkpoints under ``out``."""
    from detkd.cls.config import load_cls_config

    cfg = load_cls_config(CFG / f"{method}.yaml")
    if not cfg.teachers:
        return []
    items = []
    for t in cfg.teachers:
        name = Path(t.checkpoint).parent.name  # teacher_a, ...
        ckpt = out / name / "model_final.pth"
        width = "null" if t.width is None else t.width
        items.append(f"{{arch: {t.arch}, width: {width}, stem: {t.stem}, checkpoint: '{ckpt}'}}")
    return ["teachers=[" + ", ".join(items) + "]"]


# ----------------------------------------------------------------------------- the table


def network_label(method: str, key: str) -> str:
    return {"student": "student", "peer0": "peer 0", "peer1": "peer 1", "peer2": "peer 2", "sub0": "sub-network 0",
            "sub1": "sub-network 1", "fused": "fused classifier", "ensemble": "ensemble of the peers"
            if method.startswith("dml") else "ensemble of the sub-networks"}.get(key, key)


def tabulate(out: Path, methods: list[str], seeds: list[int], baseline: str = "baseline") -> tuple[str, dict]:
    """Markdown table (mean ± std over the seeds, per-seed values) and the same as a dict.

    ``baseline``: the method every other one is compared with (its student, same seed)."""
    lines = []
    teachers = {}
    for t in TEACHERS:
        d = out / f"teacher_{t}"
        if (d / "results.json").is_file():
            r = read_results(d)
            teachers[t] = r["networks"]["student"]["top1"]
    if teachers:
        lines += ["| teacher | top-1 |", "|---|---|"]
        lines += [f"| {t} | {v:.2f} |" for t, v in teachers.items()]
        lines.append("")
    base = {}
    for s in seeds:
        d = out / f"{baseline}_s{s}"
        if (d / "results.json").is_file():
            base[s] = read_results(d)["networks"]["student"]["top1"]
    bm, bs = mean_std(list(base.values())) if base else (float("nan"), float("nan"))
    lines += ["| method | network | top-1 mean ± std | per seed (" + ", ".join(str(s) for s in seeds)
              + ") | diff. to baseline, mean ± std over seeds | beats baseline? |",
              "|---|---|---|---|---|---|"]
    rows = []
    for method in methods:
        per_net: dict[str, dict[int, float]] = {}
        for s in seeds:
            d = out / f"{method}_s{s}"
            if not (d / "results.json").is_file():
                continue
            for k, v in read_results(d)["networks"].items():
                per_net.setdefault(k, {})[s] = v["top1"]
        for key, vals in per_net.items():
            m, sd = mean_std(list(vals.values()))
            seeds_txt = ", ".join(f"{vals[s]:.2f}" if s in vals else "-" for s in seeds)
            paired = [vals[s] - base[s] for s in vals if s in base]
            if method == baseline:
                diff_txt, verdict = "", ""
            elif paired:
                dm, ds = mean_std(paired)
                diff_txt = f"{dm:+.2f} ± {ds:.2f}"
                # "beats" only where the mean gain exceeds the seed spread of both runs and of
                # the paired differences
                spread = max(sd, bs, ds)
                verdict = "yes" if dm > spread and len(paired) > 1 else ("no" if dm <= 0 else "not beyond spread")
            else:
                diff_txt, verdict, dm, ds = "", "", float("nan"), float("nan")
            lines.append(f"| {LABELS.get(method, method)} | {network_label(method, key)} | {m:.2f} ± {sd:.2f} | "
                         f"{seeds_txt} | {diff_txt} | {verdict} |")
            rows.append({"method": method, "network": key, "mean": m, "std": sd,
                         "per_seed": {str(s): v for s, v in vals.items()},
                         "diff_mean": None if method == baseline or not paired else dm,
                         "diff_std": None if method == baseline or not paired else ds, "verdict": verdict})
    return "\n".join(lines), {"teachers": teachers, "baseline_mean": bm, "baseline_std": bs, "rows": rows}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="outputs/cls_exp", help="root of all runs (default outputs/cls_exp)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="train.seed of the students")
    p.add_argument("--methods", nargs="+", default=None,
                   help="student configs of configs/cls/fmnist/ (the baseline is always added; default "
                   "baseline kd camkd dml ffl, with --semi dml_semi)")
    p.add_argument("--semi", action="store_true",
                   help="semi-supervised setting: baseline_semi (the baseline) and dml_semi")
    p.add_argument("--opts", nargs="+", default=[], metavar="KEY=VALUE",
                   help="overrides for every student run (not the teachers)")
    p.add_argument("--teacher-opts", nargs="+", default=[], metavar="KEY=VALUE", help="overrides for the teachers")
    p.add_argument("--threads", type=int, default=1, help="CPU threads per run (default 1)")
    p.add_argument("--table-only", action="store_true", help="train nothing; tabulate what exists")
    p.add_argument("--reevaluate", action="store_true",
                   help="train nothing; score every finished run (teachers included) again on the test set "
                   "its saved config gives now, rewriting its results.json (the old one is kept as "
                   "results_before_reevaluation.json), then tabulate")
    args = p.parse_args(argv)

    out = Path(args.out)
    if not out.is_absolute():
        out = ROOT / out
    base_name = "baseline_semi" if args.semi else "baseline"
    chosen = args.methods if args.methods is not None else (["dml_semi"] if args.semi else list(METHODS))
    methods = [base_name] + [m for m in chosen if m != base_name]
    walls: dict[str, float] = {}
    wall_file = out / "wall_seconds.json"
    if wall_file.is_file():
        walls = json.loads(wall_file.read_text())
    t0 = time.time()
    if args.reevaluate:
        print("re-evaluating the finished runs:", flush=True)
        for run in [f"teacher_{t}" for t in TEACHERS] + [f"{m}_s{s}" for s in args.seeds for m in methods]:
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
                run = f"{m}_s{s}"
                w = train(CFG / f"{m}.yaml", out / run, [*teacher_override(m, out), f"train.seed={s}", *args.opts],
                          args.threads, out / "logs" / f"{run}.txt")
                if not math.isnan(w):
                    walls[run] = round(w, 1)
                    wall_file.write_text(json.dumps(walls, indent=2))
    table, data = tabulate(out, methods, args.seeds, base_name)
    runs = [f"teacher_{t}" for t in TEACHERS] + [f"{m}_s{s}" for s in args.seeds for m in methods]
    done = [r for r in runs if (out / r / "results.json").is_file()]
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


if __name__ == "__main__":
    sys.exit(main())
