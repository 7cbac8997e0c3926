"""Speed/accuracy report of several detectors: COCO AP/AP50 (as tools/eval_det.py computes
them), parameters, GFLOPs, batch-1 latency, throughput and peak memory, side by side.

Each --model is NAME[@SEED] CONFIG CHECKPOINT. NAME is the group (teacher, baseline,
distilled, ...); runs of one group with different seeds (distilled@0, distilled@1, ...)
are also aggregated as mean ± std. The group named by --teacher (default: teacher) is the
1x reference of the "vs teacher" speed-up. CHECKPOINT is a model_final.pth, a detkd
last.pth/best.pth or a plain state dict matching CONFIG.

Writes into --out: report.md (tables), report.csv (one row per run), report.json (every
number, the environment and this command line) and report.png (AP50 vs median latency,
one point per group, Pareto front); with --html also report.html, the whole report on one
page with per-class AP50, training curves and example pictures (--out/pictures).

Example:
  python tools/report.py --out outputs/report --device cpu --threads 2 \\
      --model teacher   outputs/demo/teacher/config.yaml outputs/demo/teacher/model_final.pth \\
      --model baseline  outputs/demo/student/config.yaml outputs/demo/student/model_final.pth \\
      --model distilled outputs/demo/distill/config.yaml outputs/demo/distill/model_final.pth
"""

from __future__ import annotations

import argparse
import re
import shlex
from pathlib import Path

from detkd.errors import DetkdError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", nargs=3, action="append", required=True,
                        metavar=("NAME[@SEED]", "CONFIG", "CHECKPOINT"),
                        help="a model to report (repeat for each); NAME@SEED (e.g. distilled@1 or distilled@s1) "
                             "marks one seed of group NAME")
    parser.add_argument("--out", required=True, metavar="DIR", help="directory for report.md/.csv/.json/.png")
    parser.add_argument("--teacher", default=None, metavar="NAME",
                        help="the group that is the speed-up reference (default: teacher)")
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or auto (default: cpu)")
    parser.add_argument("--split", choices=["val", "train"], default="val",
                        help="data split to evaluate and time on (default: val)")
    parser.add_argument("--warmup", type=int, default=10, help="untimed warm-up forwards per model (default: 10)")
    parser.add_argument("--runs", type=int, default=50, help="timed batch-1 forwards per model (default: 50)")
    parser.add_argument("--latency-rounds", type=int, default=5, metavar="R",
                        help="time the models' batch-1 latency side by side in R rounds, each round every "
                             "model for RUNS/R forwards, so a slow phase of the machine hits all alike "
                             "(default: 5; 1: one model after the other)")
    parser.add_argument("--throughput-batch", type=int, default=8, metavar="B",
                        help="batch size of the throughput measurement, 0 to skip it (default: 8)")
    parser.add_argument("--threads", type=int, default=None, metavar="N",
                        help="torch CPU threads while measuring (default: torch's own setting)")
    parser.add_argument("--speed-for", choices=["all", "first_of_group"], default="all",
                        help="time every run, or only the first run of each group (default: all)")
    parser.add_argument("--no-eval", action="store_true", help="speed and size only: no AP, no plot")
    parser.add_argument("--metric", choices=["coco", "voc", "both"], default=None,
                        help="override each config's eval.metric")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    parser.add_argument("--onnx", action="store_true",
                        help="also time each model's ONNX export (onnxruntime, CPU) beside the eager model on the "
                             "same images and --threads (default 1): onnx_latency.md/.json in --out")
    parser.add_argument("--html", action="store_true",
                        help="also write report.html: one page that opens from disk, with the comparison table "
                             "(gap closed, seed spread), the Pareto plot, per-class AP50, training curves from each "
                             "run's metrics.jsonl and example pictures (in --out/pictures) of the images where the "
                             "groups differ most, each model's boxes above its own display threshold")
    parser.add_argument("--baseline", default=None, metavar="NAME",
                        help="the group the gap closed is measured from, towards the teacher (default: the group "
                             "named baseline, if any)")
    parser.add_argument("--debug", action="store_true",
                        help="show the full traceback of an error instead of one line")
    return parser


def parse_name(text: str) -> tuple[str, int | None]:
    """``distilled@1`` / ``distilled@s1`` -> ("distilled", 1); ``teacher`` -> ("teacher", None)."""
    name, at, seed = text.partition("@")
    if not at:
        return name, None
    match = re.fullmatch(r"s?(\d+)", seed)
    if not name or not match:
        raise DetkdError(f"--model name '{text}' must be NAME or NAME@SEED with an integer SEED (e.g. distilled@1)")
    return name, int(match.group(1))


def command_line(args: argparse.Namespace) -> str:
    """The command with every option spelled out (defaults included), as it was parsed:
    re-running it reproduces the report's settings, however the tool was called."""
    argv = ["python", "tools/report.py", "--out", args.out]
    for label, config, checkpoint in args.model:
        argv += ["--model", label, config, checkpoint]
    if args.teacher:
        argv += ["--teacher", args.teacher]
    argv += ["--device", args.device, "--split", args.split, "--warmup", str(args.warmup), "--runs", str(args.runs),
             "--latency-rounds", str(args.latency_rounds), "--throughput-batch", str(args.throughput_batch),
             "--speed-for", args.speed_for]
    argv += ["--threads", str(args.threads)] if args.threads is not None else []
    argv += ["--metric", args.metric] if args.metric else []
    argv += ["--no-eval"] if args.no_eval else []
    argv += ["--onnx"] if getattr(args, "onnx", False) else []
    argv += ["--html"] if getattr(args, "html", False) else []
    argv += ["--baseline", args.baseline] if getattr(args, "baseline", None) else []
    return shlex.join(argv)


def main(args: argparse.Namespace) -> int:
    from detkd.evaluation.report import ModelEntry, run_report

    teacher = args.teacher or "teacher"
    entries = []
    for label, config, checkpoint in args.model:
        name, seed = parse_name(label)
        entries.append(ModelEntry(name=name, config=config, checkpoint=checkpoint, seed=seed,
                                  role="teacher" if name == teacher else "student"))
    if args.teacher and not any(e.name == teacher for e in entries):
        raise DetkdError(f"--teacher '{teacher}' is not the name of any --model")
    baseline = args.baseline or ("baseline" if any(e.name == "baseline" for e in entries) else None)
    if baseline and not any(e.name == baseline for e in entries):
        raise DetkdError(f"--baseline '{baseline}' is not the name of any --model")
    if args.html and args.no_eval:
        raise DetkdError("--html needs the evaluation (its pictures and per-class AP): drop --no-eval")
    kwargs = dict(device=args.device, split=args.split, warmup=args.warmup, runs=args.runs,
                  throughput_batch=args.throughput_batch, threads=args.threads, measure_speed_for=args.speed_for,
                  evaluate=not args.no_eval, metric=args.metric, latency_rounds=args.latency_rounds,
                  progress=False if args.no_progress else None, command=command_line(args))
    if args.html:
        from detkd.deploy.page import report_page

        report = report_page(entries, args.out, baseline=baseline, **kwargs)[0]
    else:
        report = run_report(entries, args.out, **kwargs)
    print(Path(report["files"]["md"]).read_text())
    if args.onnx:
        print(onnx_section(args, entries))
    print("wrote " + ", ".join(report["files"].values()))
    return 0


def onnx_section(args: argparse.Namespace, entries: list) -> str:
    """--onnx: eager vs onnxruntime latency of each model (first run of each group), written
    to onnx_latency.md/.json in --out; returns the markdown."""
    import json

    from detkd.deploy.latency import onnx_table, onnx_vs_eager
    from detkd.utils.atomic import atomic_write_text
    from detkd.evaluation.inference import build_eval_data
    from detkd.evaluation.report import load_entry

    threads = args.threads or 1
    rows, seen = [], set()
    for entry in entries:
        if entry.name in seen:
            continue
        seen.add(entry.name)
        cfg, model = load_entry(entry)
        dataset, _ = build_eval_data(cfg, args.split)
        images = [dataset[i][0] for i in range(min(20, len(dataset)))]
        rows.append((entry.label, onnx_vs_eager(model, images, threads, warmup=args.warmup, runs=args.runs,
                                                rounds=args.latency_rounds)))
    md = "\n".join(["## ONNX Runtime vs eager PyTorch (CPU, batch 1)", "", onnx_table(rows), "",
                     f"Command: `{command_line(args)}`", ""])
    atomic_write_text(md, Path(args.out) / "onnx_latency.md")
    atomic_write_text(json.dumps({label: r for label, r in rows}, indent=2), Path(args.out) / "onnx_latency.json")
    return md
