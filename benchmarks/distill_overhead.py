#!/usr/bin/env python
"""Distillation overhead: time of one distillation training step against its parts.

Side by side in one process, on the same preloaded batches (data loading excluded), repeated
R times in interleaved order (a, b, c, a, b, c, ...) so that machine noise hits all three:

  (a) student alone: the plain torchvision training step (forward, backward, SGD step);
  (b) teacher alone: its forward pass in eval mode under torch.inference_mode (what a
      standalone teacher inference costs: backbone, RPN with proposals/NMS, RoI head);
  (c) distillation: the Distiller's full training step (student step + teacher work + the
      enabled terms + adapters).

Prints ms/iteration of each (median over repeats, with min-max), the overhead ratio
(c) / ((a) + (b)) per repeat (median, min-max), and the peak memory of each mode (CUDA:
max_memory_allocated; CPU: peak RSS above the RSS after setup, each mode in its own child
process). The teacher checkpoint of the config is used when it exists, otherwise random
weights (timings barely depend on the values). Not a test: nothing is asserted.

With ``--each-method`` the measurement is repeated for each distillation method on the
config's pair (Chen et al. as configured, then each FPN-feature method alone at its default
section, Chen et al. off) and a table of the ratios is printed (no memory measurement).

Examples (the figures quoted in the README and docs/results.md):
  python benchmarks/distill_overhead.py --cfg configs/demo/distill_demo.yaml --threads 2
  python benchmarks/distill_overhead.py --cfg configs/experiment/distill_fpn128.yaml --threads 1 --each-method
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import torch  # noqa: E402

from detkd.utils.cli import add_config_args, run_cli  # noqa: E402

MODES = ("student", "teacher", "distill")


def method_opts(families: tuple[str, str] = ("faster_rcnn", "faster_rcnn")) -> dict[str, list[str]]:
    """--each-method: the overrides that turn each method of METHODS that distils this pair of
    detector families (student, teacher) on alone at its default section (Chen et al.: the
    config's own sections, as configured)."""
    from detkd.distill.methods import METHODS

    alone = {name: [*(f"distill.{other}=null" for other in METHODS if other != name), f"distill.{name}={{}}"]
             for name in METHODS if name != "chen" and METHODS[name].applies_to(*families)}
    # The config's own sections first: Chen et al. as configured (Faster R-CNN pairs), else the config as it is.
    return {"chen" if METHODS["chen"].applies_to(*families) else "as configured": [], **alone}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_config_args(parser)
    parser.add_argument("--iters", type=int, default=10, help="timed iterations per mode and repeat (default 10)")
    parser.add_argument("--repeats", type=int, default=5, help="interleaved repeats (default 5)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed iterations per mode first (default 3)")
    parser.add_argument("--batches", type=int, default=4,
                        help="distinct batches preloaded and cycled through (default 4)")
    parser.add_argument("--device", default=None, help="cpu, cuda or cuda:N (default: the config's train.device)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--amp", action="store_true", help="CUDA only: autocast the steps (float16)")
    parser.add_argument("--no-memory", action="store_true", help="skip the per-mode peak-memory measurement")
    parser.add_argument("--each-method", action="store_true",
                        help="repeat the measurement for each method (Chen et al. as configured, then every other "
                             "method of METHODS alone) and print the ratio of each; implies --no-memory")
    parser.add_argument("--out", default=None, metavar="FILE.json", help="also write the results here")
    parser.add_argument("--memory-mode", choices=MODES, default=None, help=argparse.SUPPRESS)  # child process
    return parser


def setup(args: argparse.Namespace):
    """Config, batches, student, teacher and distiller (student weights shared by (a) and (c))."""
    from detkd.recipe import load_config
    from detkd.data.build import build_dataset, collate_fn
    from detkd.distill.distiller import Distiller
    from detkd.utils.runtime import resolve_device
    from detkd.errors import DetkdError
    from detkd.modeling.detector import build_detector
    from detkd.modeling.weights import load_matching, read_state_dict

    cfg = load_config(args.cfg, args.opts)
    if cfg.distill is None or cfg.teacher is None:
        raise DetkdError(f"{args.cfg} is not a distillation config (no 'teacher'/'distill' section)")
    device = resolve_device(args.device or cfg.train.device)
    torch.manual_seed(cfg.train.seed)
    dataset = build_dataset(cfg.data.train, cfg.data, train=True, seed=cfg.train.seed)
    bs = cfg.train.batch_size
    batches = []
    for b in range(args.batches):
        items = [dataset[(b * bs + i) % len(dataset)] for i in range(bs)]
        images, targets = collate_fn(items)
        batches.append(([im.to(device) for im in images],
                        [{k: v.to(device) if torch.is_tensor(v) else v for k, v in t.items()} for t in targets]))
    student = build_detector(cfg.model)
    teacher = build_detector(cfg.teacher.model)
    ckpt = Path(cfg.teacher.checkpoint or "")
    teacher_weights = "random"
    if ckpt.is_file():
        load_matching(teacher, read_state_dict(ckpt), f"teacher.checkpoint {ckpt}")
        teacher_weights = str(ckpt)
    teacher.eval().requires_grad_(False)
    distiller = Distiller(copy.deepcopy(student), copy.deepcopy(teacher), cfg.distill,
                          student_cfg=cfg.model, teacher_cfg=cfg.teacher.model)
    return cfg, device, batches, student.to(device), teacher.to(device), distiller.to(device), teacher_weights


def make_steps(cfg, device, student, teacher, distiller, amp: bool) -> dict[str, Callable[[list, list], None]]:
    def autocast():
        return torch.autocast("cuda", enabled=amp) if device.type == "cuda" else torch.autocast("cpu", enabled=False)

    def trainer_step(model: torch.nn.Module) -> Callable[[list, list], None]:
        model.train()
        params = [p for p in model.parameters() if p.requires_grad]
        opt = torch.optim.SGD(params, lr=1e-4, momentum=0.9)  # tiny lr: the weights stay near the start
        scaler = torch.amp.GradScaler("cuda", enabled=amp)

        def step(images: list, targets: list) -> None:
            with autocast():
                losses = model(images, targets)
            opt.zero_grad(set_to_none=True)
            scaler.scale(sum(losses.values())).backward()
            scaler.step(opt)
            scaler.update()

        return step

    def teacher_step(images: list, targets: list) -> None:
        with torch.inference_mode(), autocast():
            teacher(images)

    return {"student": trainer_step(student), "teacher": teacher_step, "distill": trainer_step(distiller)}


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_mode(step, batches, iters: int, device: torch.device, offset: int) -> float:
    """Mean seconds per iteration over ``iters`` steps."""
    sync(device)
    t0 = time.perf_counter()
    for i in range(iters):
        step(*batches[(offset + i) % len(batches)])
    sync(device)
    return (time.perf_counter() - t0) / iters


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def reset_peak_rss() -> None:
    """Reset VmHWM (Linux >= 4.0: writing 5 to clear_refs); harmless where unsupported."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass


def peak_rss_mb() -> float:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def memory_child(args: argparse.Namespace) -> int:
    """Run one mode a few times in this (fresh) process and print its peak memory in MB."""
    cfg, device, batches, student, teacher, distiller, _ = setup(args)
    step = make_steps(cfg, device, student, teacher, distiller, args.amp)[args.memory_mode]
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
    else:
        reset_peak_rss()  # forget the set-up's transient peak (checkpoint loading, data)
        base = rss_mb()
    for i in range(max(2, args.warmup)):
        step(*batches[i % len(batches)])
    sync(device)
    if device.type == "cuda":
        peak = (torch.cuda.max_memory_allocated(device) - base) / 2**20
    else:
        peak = peak_rss_mb() - base
    print(json.dumps({"peak_mb": round(peak, 1)}))
    return 0


def measure_memory(argv: list[str], mode: str) -> float | None:
    done = subprocess.run([sys.executable, __file__, *argv, "--memory-mode", mode],
                          capture_output=True, text=True, env=dict(os.environ, PYTHONPATH=str(REPO)))
    if done.returncode != 0:
        print(f"memory of {mode}: child failed: {done.stderr.strip().splitlines()[-1:]}", file=sys.stderr)
        return None
    return json.loads(done.stdout.strip().splitlines()[-1])["peak_mb"]


def spread(values: list[float]) -> dict[str, float]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def measure(args: argparse.Namespace) -> dict:
    """Time the three modes side by side (and, unless --no-memory, their peak memory)."""
    cfg, device, batches, student, teacher, distiller, teacher_weights = setup(args)
    steps = make_steps(cfg, device, student, teacher, distiller, args.amp and device.type == "cuda")
    terms = sorted(distiller.active_terms())
    print(f"config {args.cfg}; device {device}; threads {torch.get_num_threads()}; batch {cfg.train.batch_size}; "
          f"terms {', '.join(terms)}; teacher weights {teacher_weights}", flush=True)
    for name in MODES:
        for i in range(args.warmup):
            steps[name](*batches[i % len(batches)])
    times: dict[str, list[float]] = {name: [] for name in MODES}
    for r in range(args.repeats):
        for name in MODES:
            times[name].append(time_mode(steps[name], batches, args.iters, device, offset=r * args.iters))
        print(f"repeat {r + 1}/{args.repeats}: " + ", ".join(f"{n} {times[n][-1] * 1e3:.1f} ms/it" for n in MODES),
              flush=True)
    ratios = [c / (a + b) for a, b, c in zip(times["student"], times["teacher"], times["distill"])]
    result = {
        "config": str(args.cfg), "opts": args.opts, "device": str(device), "threads": torch.get_num_threads(),
        "batch_size": cfg.train.batch_size, "terms": terms, "amp": args.amp and device.type == "cuda",
        "iters": args.iters, "repeats": args.repeats, "torch": torch.__version__,
        "ms_per_iter": {n: {k: v * 1e3 for k, v in spread(times[n]).items()} for n in MODES},
        "overhead_ratio": spread(ratios),
    }
    if not args.no_memory:
        argv = [a for a in sys.argv[1:] if a != "--no-memory"]
        result["peak_memory_mb"] = {n: measure_memory(argv, n) for n in MODES}
    return result


def each_method(args: argparse.Namespace) -> int:
    from detkd.config.schema import ARCH_FAMILIES
    from detkd.recipe import load_config

    cfg = load_config(args.cfg, args.opts)
    results = {}
    for name, extra in method_opts((ARCH_FAMILIES[cfg.model.arch], ARCH_FAMILIES[cfg.teacher.model.arch])).items():
        run = copy.copy(args)
        run.opts, run.no_memory = [*args.opts, *extra], True
        results[name] = measure(run)
    print()
    print("| method | terms | (a) student ms/it | (b) teacher ms/it | (c) distill ms/it | (c) / ((a) + (b)) |")
    print("|---|---|---|---|---|---|")
    for name, r in results.items():
        ms, o = r["ms_per_iter"], r["overhead_ratio"]
        print(f"| {name} | {', '.join(r['terms'])} | {ms['student']['median']:.1f} | {ms['teacher']['median']:.1f} | "
              f"{ms['distill']['median']:.1f} | {o['median']:.3f} ({o['min']:.3f}-{o['max']:.3f}) |")
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=2))
    return 0


def main(args: argparse.Namespace) -> int:
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.memory_mode:
        return memory_child(args)
    if args.each_method:
        return each_method(args)
    result = measure(args)
    print()
    print("| mode | ms/iteration (median, min-max over repeats) | peak memory MB |")
    print("|---|---|---|")
    labels = {"student": "(a) student step", "teacher": "(b) teacher forward (inference)",
              "distill": "(c) distillation step"}
    for n in MODES:
        s = result["ms_per_iter"][n]
        mem = result.get("peak_memory_mb", {}).get(n)
        print(f"| {labels[n]} | {s['median']:.1f} ({s['min']:.1f}-{s['max']:.1f}) | "
              f"{'-' if mem is None else f'{mem:.0f}'} |")
    o = result["overhead_ratio"]
    print(f"\noverhead (c) / ((a) + (b)) = {o['median']:.3f} (min {o['min']:.3f}, max {o['max']:.3f}, "
          f"{args.repeats} repeats of {args.iters} iterations)")
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main, build_parser()))
