#!/usr/bin/env python
"""GPU check: detkd's training, AMP, step timings and memory on a CUDA device.

Where CUDA is absent it prints one line ("gpu_check: skipped: ...") and exits 0, so it can sit
in any script. On a GPU machine it

1. trains the demo teacher (``--teacher-cfg``, ``--teacher-iters`` iterations) unless
   ``--teacher`` names a trained one;
2. trains the demo distillation config (``--cfg``: PKD on the demo pair) twice from that
   teacher with the same seed, in float32 and with ``train.amp: true`` (float16 autocast and
   a GradScaler), ``--iters`` iterations each, and reads every logged loss term back from each
   run's ``metrics.jsonl``: all must be finite and no step may have been skipped as
   non-finite; the two final AP50s must agree within ``--tolerance`` (absolute);
3. times the distillation step against the student's step + the teacher's forward on the GPU
   (``benchmarks/distill_overhead.py --device cuda``, float32 and ``--amp``: one
   implementation of the timing, interleaved repeats) and reports its peak CUDA memory;
4. with two or more visible GPUs, runs a short 2-process NCCL training with torchrun.

It prints a table and writes everything to ``OUT_DIR/gpu_check.json``; exit 1 when a check
fails. Each training's peak CUDA memory is ``torch.cuda.max_memory_allocated`` over that run.

Examples:
  python benchmarks/gpu_check.py                              # the whole check (a few minutes on one GPU)
  python benchmarks/gpu_check.py --iters 300 --teacher-iters 600 --out-dir outputs/gpu_check
  python benchmarks/gpu_check.py --teacher outputs/demo/teacher/model_final.pth --skip-timing
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import torch  # noqa: E402

# The demo's own runs (detkd demo): the teacher and the distilled student it trains.
TEACHER_CFG = "configs/demo/teacher_demo.yaml"
DISTILL_CFG = "configs/demo/methods/pkd.yaml"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cfg", default=DISTILL_CFG, help=f"distillation config (default {DISTILL_CFG})")
    parser.add_argument("--teacher-cfg", default=TEACHER_CFG,
                        help=f"config the teacher is trained with when --teacher is not given (default {TEACHER_CFG})")
    parser.add_argument("--teacher", default=None, metavar="CKPT",
                        help="a trained teacher's model_final.pth (default: train one first)")
    parser.add_argument("--teacher-iters", type=int, default=900,
                        help="teacher iterations (default 900: the demo teacher's 6 epochs)")
    parser.add_argument("--iters", type=int, default=450,
                        help="iterations of each distillation run, fp32 and AMP (default 450: 3 demo epochs)")
    parser.add_argument("--tolerance", type=float, default=0.05,
                        help="largest accepted |AP50(fp32) - AP50(AMP)| (default 0.05)")
    parser.add_argument("--workers", type=int, default=4, help="data-loader workers per run (default 4)")
    parser.add_argument("--device", default="cuda",
                        help="cuda or cuda:N (default cuda); cpu runs the same steps as a dry run of the script "
                             "(AMP is off there and no CUDA memory is read)")
    parser.add_argument("--out-dir", default="outputs/gpu_check",
                        help="runs and gpu_check.json go here; an earlier check's runs there are replaced "
                             "(default outputs/gpu_check)")
    parser.add_argument("--skip-timing", action="store_true", help="skip the step timings (benchmarks/distill_overhead.py)")
    parser.add_argument("--timing-iters", type=int, default=20, help="timed iterations per mode and repeat (default 20)")
    parser.add_argument("--timing-repeats", type=int, default=5, help="interleaved timing repeats (default 5)")
    parser.add_argument("--debug", action="store_true", help="full tracebacks on errors")
    return parser


def skip_reason(device: str) -> str | None:
    """Why this machine cannot run the check on ``device`` (None: it can)."""
    if device.startswith("cuda") and not torch.cuda.is_available():
        build = f"CUDA {torch.version.cuda} build" if torch.version.cuda else "CPU-only build"
        return f"CUDA is not available (torch {torch.__version__}, {build}, no GPU visible)"
    return None


def train_run(cfg_file: str, opts: list[str], out: Path, device: torch.device) -> dict:
    """Train one config into ``out`` (an earlier run there is replaced) and return its results,
    its wall time, the peak CUDA memory and what its metrics.jsonl says about the losses."""
    from detkd.recipe import load_config
    from detkd.engine.trainer import train

    if out.exists():
        shutil.rmtree(out)  # a previous check's run: the check always trains afresh
    cfg = load_config(REPO / cfg_file, [*opts, f"output_dir={out}"])
    cuda = device.type == "cuda"
    if cuda:
        torch.cuda.reset_peak_memory_stats(device)
    t0 = time.perf_counter()
    train(cfg, progress=False)
    seconds = time.perf_counter() - t0
    peak = torch.cuda.max_memory_allocated(device) / 2**20 if cuda else float("nan")
    results = json.loads((out / "results.json").read_text())
    return {"config": cfg_file, "opts": opts, "seconds": round(seconds, 1), "peak_memory_mb": round(peak, 1),
            "iterations": results["iterations"], "final": results["final"], **loss_health(out / "metrics.jsonl")}


def loss_health(metrics_file: Path) -> dict:
    """Counts of logged loss values, of non-finite ones and of steps skipped as non-finite."""
    values = bad = skipped = 0
    for line in metrics_file.read_text().splitlines():
        row = json.loads(line)
        if row.get("type") == "nonfinite":
            skipped += 1
            continue
        for key, value in row.items():
            if key.startswith("loss") and isinstance(value, (int, float)):
                values += 1
                bad += not math.isfinite(value)
    return {"loss_values": values, "nonfinite_values": bad, "skipped_steps": skipped}


def timing(cfg_file: str, teacher: Path, amp: bool, args: argparse.Namespace, out: Path) -> dict:
    """benchmarks/distill_overhead.py on the GPU (its JSON result)."""
    result = out / f"timing_{'amp' if amp else 'fp32'}.json"
    cmd = [sys.executable, str(REPO / "benchmarks" / "distill_overhead.py"), "--cfg", str(REPO / cfg_file),
           "--device", args.device, "--iters", str(args.timing_iters), "--repeats", str(args.timing_repeats),
           "--out", str(result), "--opts", f"teacher.checkpoint={teacher}", f"train.device={args.device}"]
    if amp:
        cmd.insert(2, "--amp")
    subprocess.run(cmd, check=True, cwd=REPO)
    return json.loads(result.read_text())


def nccl_run(cfg_file: str, teacher: Path, out: Path) -> dict:
    """A short 2-process NCCL distillation run with torchrun (one GPU per process)."""
    if out.exists():
        shutil.rmtree(out)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           str(REPO / "tools" / "train_det.py"), "--cfg", str(REPO / cfg_file), "--no-progress",
           "--opts", f"teacher.checkpoint={teacher}", "train.device=cuda", "train.max_iters=60",
           f"output_dir={out}"]
    t0 = time.perf_counter()
    done = subprocess.run(cmd, cwd=REPO)
    return {"returncode": done.returncode, "seconds": round(time.perf_counter() - t0, 1),
            "final": json.loads((out / "results.json").read_text())["final"] if done.returncode == 0 else None}


def main(args: argparse.Namespace) -> int:
    reason = skip_reason(args.device)
    if reason:
        print(f"gpu_check: skipped: {reason}")
        return 0
    device = torch.device(args.device)
    cuda = device.type == "cuda"
    if cuda:
        torch.cuda.set_device(device)
    out = Path(args.out_dir).resolve()
    out.mkdir(parents=True, exist_ok=True)
    os.chdir(REPO)  # the configs' data paths (data/demo) are relative to the checkout
    # A log line every 10 iterations: the finite check reads each one (a skipped step is recorded anyway).
    common = [f"train.device={args.device}", f"train.workers={args.workers}", "train.log_interval=10"]
    report: dict = {"gpu": torch.cuda.get_device_name(device) if cuda else "CPU (dry run)", "torch": torch.__version__,
                    "cuda": torch.version.cuda, "cudnn": torch.backends.cudnn.version(),
                    "date": time.strftime("%Y-%m-%d"), "runs": {}}
    print(f"gpu_check: {report['gpu']}, torch {report['torch']}, CUDA {report['cuda']}", flush=True)

    if args.teacher:
        teacher = Path(args.teacher).resolve()
    else:
        report["runs"]["teacher"] = train_run(args.teacher_cfg, [*common, f"train.max_iters={args.teacher_iters}"],
                                              out / "teacher", device)
        teacher = out / "teacher" / "model_final.pth"
    for name, amp in (("fp32", False), ("amp", True)):
        opts = [*common, f"teacher.checkpoint={teacher}", f"train.max_iters={args.iters}",
                f"train.amp={'true' if amp else 'false'}"]
        report["runs"][name] = train_run(args.cfg, opts, out / name, device)

    fp32, amp = report["runs"]["fp32"], report["runs"]["amp"]
    ap_diff = abs(fp32["final"]["AP50"] - amp["final"]["AP50"])
    checks = {
        "losses finite (fp32 and AMP)": all(r["nonfinite_values"] == 0 and r["skipped_steps"] == 0
                                            for r in report["runs"].values()),
        f"|AP50 fp32 - AP50 AMP| = {ap_diff:.3f} <= {args.tolerance}": ap_diff <= args.tolerance,
    }
    if not args.skip_timing:
        report["timing"] = {name: timing(args.cfg, teacher, name == "amp", args, out) for name in ("fp32", "amp")}
    if cuda and torch.cuda.device_count() >= 2:
        report["nccl"] = nccl_run(args.cfg, teacher, out / "nccl")
        checks["2-process NCCL run"] = report["nccl"]["returncode"] == 0
    else:
        report["nccl"] = f"skipped: {torch.cuda.device_count()} GPU visible (needs 2)"
    report["checks"] = checks
    (out / "gpu_check.json").write_text(json.dumps(report, indent=2))

    print(f"\n{report['gpu']} (torch {report['torch']}, CUDA {report['cuda']})")
    print("| run | iterations | AP | AP50 | loss values (non-finite) | skipped steps | train s | peak CUDA MB |")
    print("|---|---|---|---|---|---|---|---|")
    for name, r in report["runs"].items():
        print(f"| {name} | {r['iterations']} | {r['final']['AP']:.3f} | {r['final']['AP50']:.3f} | "
              f"{r['loss_values']} ({r['nonfinite_values']}) | {r['skipped_steps']} | {r['seconds']} | "
              f"{r['peak_memory_mb']:.0f} |")
    for name, t in report.get("timing", {}).items():
        ms, o, mem = t["ms_per_iter"], t["overhead_ratio"], t.get("peak_memory_mb", {})
        print(f"{name} steps: student {ms['student']['median']:.1f} ms, teacher forward {ms['teacher']['median']:.1f} "
              f"ms, distillation {ms['distill']['median']:.1f} ms; (c)/((a)+(b)) = {o['median']:.3f} "
              f"({o['min']:.3f}-{o['max']:.3f}); peak MB student {mem.get('student')}, teacher {mem.get('teacher')}, "
              f"distill {mem.get('distill')}")
    print(f"NCCL: {report['nccl']}")
    for text, ok in checks.items():
        print(f"{'PASS' if ok else 'FAIL'}: {text}")
    print(f"written: {out / 'gpu_check.json'}")
    return 0 if all(checks.values()) else 1


if __name__ == "__main__":
    from detkd.utils.cli import run_cli

    sys.exit(run_cli(main, build_parser()))
