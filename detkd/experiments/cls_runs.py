"""The classification experiment's runs: each one a subprocess of tools/train_cls.py (its
output in a log file), skipped when finished; ``--reevaluate`` scores a finished run again.

As for detection (:mod:`detkd.experiments.runs`): a run directory is finished when it holds
``results.json``, and is reused only when its saved ``config.yaml`` has the requested
config's resume hash (:func:`detkd.cls.train.resume_hash`), else a one-line error; an
interrupted run (no ``results.json``) is continued with ``--resume auto``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

from detkd.experiments.cls_plan import REPO

# Where --reevaluate keeps a run's first results (and so its own training time).
BEFORE_REEVALUATION = "results_before_reevaluation.json"


def read_results(path: Path) -> dict:
    return json.loads((path / "results.json").read_text())


def training_seconds(path: Path) -> float:
    """A run's own training time: from its first results when it was re-evaluated since."""
    first = path / BEFORE_REEVALUATION
    return json.loads((first if first.is_file() else path / "results.json").read_text())["train_seconds"]


def run_train_cls(args: list[str], threads: int, log: Path, opts: list[str] = ()) -> int:
    """tools/train_cls.py ARGS --opts train.threads=THREADS OPTS (also OMP/MKL threads),
    output to ``log``; its exit code."""
    cmd = [sys.executable, str(REPO / "tools" / "train_cls.py"), *args, "--opts", f"train.threads={threads}", *opts]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "w") as f:
        return subprocess.run(cmd, cwd=REPO, env=env, stdout=f, stderr=subprocess.STDOUT).returncode


def check_same_config(cfg: Path, out: Path, opts: list[str]) -> None:
    """A one-line error (exit 1) unless the finished run in ``out`` was made with ``cfg`` + ``opts``
    (:func:`detkd.experiments.runs.check_finished_run` with the classification resume hash)."""
    from detkd.cls.config import load_cls_config
    from detkd.cls.train import resume_hash
    from detkd.errors import DetkdError
    from detkd.experiments.runs import check_finished_run

    want = resume_hash(load_cls_config(cfg, [*opts, f"output_dir={out}"]))
    try:
        check_finished_run(out, f"{cfg} with these --opts", lambda saved: resume_hash(load_cls_config(saved)) == want,
                           elsewhere="--out")
    except DetkdError as exc:
        raise SystemExit(f"error: {exc}") from None


def train(cfg: Path, out: Path, opts: list[str], threads: int, log: Path) -> float:
    """One tools/train_cls.py run (reused when finished with the same config, resumed when
    interrupted); its wall time in s (NaN when reused)."""
    if (out / "results.json").is_file():
        check_same_config(cfg, out, opts)
        print(f"  {out.name}: done already ({out / 'results.json'})", flush=True)
        return float("nan")
    args = ["--cfg", str(cfg), "--output-dir", str(out), "--resume", "auto"]
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
