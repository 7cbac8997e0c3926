"""Interrupted training, through the real command line.

``tools/train_det.py`` runs as a subprocess on the tiny demo settings (24 iterations, ``last.pth``
after every iteration). It is SIGKILLed at seeded random points, or stopped with SIGINT/SIGTERM,
and restarted with ``--resume auto`` each time; every checkpoint on disk must load after each
stop, and the final weights must be bit-identical to an uninterrupted run's.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

import pytest
import torch

from conftest import REPO, tiny_opts

TRAIN = REPO / "tools" / "train_det.py"
CFG = REPO / "configs" / "demo" / "faster_rcnn_demo.yaml"
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
EPOCHS, ITERS = 3, 24  # 16 images in batches of 2
TIMEOUT = 300


class Run:
    """One ``train_det.py`` process writing ``out``; its console goes to ``<out>.console.txt``."""

    def __init__(self, demo_dir: Path, out: Path, *args: str) -> None:
        self.out = out
        self.metrics = out / "metrics.jsonl"
        # Progress is read from what this process appends to metrics.jsonl.
        self.offset = self.metrics.stat().st_size if self.metrics.exists() else 0
        self.console_path = out.with_name(out.name + ".console.txt")
        self.console_start = self.console_path.stat().st_size if self.console_path.exists() else 0
        opts = tiny_opts(demo_dir, out, **{"train.epochs": EPOCHS, "train.log_interval": 1,
                                           "train.checkpoint_period_iters": 1})
        with open(self.console_path, "ab") as console:
            self.proc = subprocess.Popen([sys.executable, str(TRAIN), "--cfg", str(CFG), "--no-progress", *args,
                                          "--opts", *opts], env=ENV, cwd=REPO, stdout=console,
                                         stderr=subprocess.STDOUT)

    def console(self) -> str:
        return self.console_path.read_bytes()[self.console_start:].decode(errors="replace")

    def logged_iter(self) -> int:
        """The highest training iteration this process has logged (-1: none yet)."""
        if not self.metrics.exists():
            return -1
        lines = self.metrics.read_bytes()[self.offset:].split(b"\n")[:-1]  # the last may be half-written
        iters = [r["iter"] for r in map(json.loads, lines) if r["type"] == "train"]
        return max(iters, default=-1)

    def _wait_for(self, ready: Callable[[], bool], what: str, poll: float) -> None:
        deadline = time.monotonic() + TIMEOUT
        while not ready():
            if self.proc.poll() is not None:
                pytest.fail(f"the run ended (status {self.proc.returncode}) before {what}:\n{self.console()[-3000:]}")
            if time.monotonic() > deadline:
                self.proc.kill()
                pytest.fail(f"no {what} after {TIMEOUT} s")
            time.sleep(poll)

    def stop_after(self, iteration: int, delay: float, sig: int, in_write: bool = False) -> int:
        """Send ``sig`` ``delay`` seconds after iteration ``iteration`` is logged, or with
        ``in_write`` as soon as a checkpoint write is seen in progress after it; the exit status."""
        self._wait_for(lambda: self.logged_iter() >= iteration, f"iteration {iteration}", 0.01)
        if in_write:
            # The temporary file exists only while a checkpoint is being written (~60 ms here).
            self._wait_for(lambda: any(self.out.glob(".last.pth.*.tmp")), "checkpoint write", 0.001)
        time.sleep(delay)
        self.proc.send_signal(sig)
        return self.proc.wait(timeout=TIMEOUT)

    def finish(self) -> None:
        code = self.proc.wait(timeout=TIMEOUT)
        assert code == 0, self.console()[-3000:]


def readable_checkpoints(out: Path) -> dict[str, dict]:
    """Every ``*.pth`` in ``out``, loaded: a torn file would raise here."""
    return {p.name: torch.load(p, map_location="cpu", weights_only=False) for p in sorted(out.glob("*.pth"))}


def assert_same_weights(a_path: Path, b_path: Path) -> None:
    a = torch.load(a_path, map_location="cpu", weights_only=True)
    b = torch.load(b_path, map_location="cpu", weights_only=True)
    assert a.keys() == b.keys()
    differ = [k for k in a if not torch.equal(a[k], b[k])]
    assert not differ, f"{len(differ)} tensors differ, e.g. {differ[:3]}"


@pytest.fixture(scope="module")
def reference(tiny_demo_dir, tmp_path_factory):
    """``model_final.pth`` of an uninterrupted run. It starts at once and runs in the background
    while a test interrupts its own runs; asking for the path waits for it."""
    out = tmp_path_factory.mktemp("reference") / "run"
    run = Run(tiny_demo_dir, out)

    def final_weights() -> Path:
        run.finish()
        return out / "model_final.pth"

    yield final_weights
    if run.proc.poll() is None:
        run.proc.kill()
        run.proc.wait()


def test_sigkill_at_random_points_then_resume_is_bit_identical(reference, tiny_demo_dir, tmp_path):
    rng = random.Random(7)
    kill_at = sorted(rng.sample(range(2, ITERS - 5), 3))
    out = tmp_path / "run"
    for k, at in enumerate(kill_at):
        # The first start finds no checkpoint and starts from scratch.
        run = Run(tiny_demo_dir, out, "--resume", "auto")
        # A random delay after the log line of iteration `at` lands before, inside or after the
        # checkpoint write that follows it; the second kill aims inside a write.
        in_write = k == 1
        code = run.stop_after(at, rng.uniform(0.0, 0.01 if in_write else 0.2), signal.SIGKILL, in_write=in_write)
        assert code == -signal.SIGKILL, run.console()[-3000:]
        ckpts = readable_checkpoints(out)
        # last.pth is written every iteration: at most the one being written when killed is lost.
        assert ckpts["last.pth"]["iter"] >= at - 1, (at, ckpts["last.pth"]["iter"])
    # What a kill inside a checkpoint write leaves (whether a random kill above hit one depends
    # on timing): the next start deletes it.
    (out / ".last.pth.k1ll3d.tmp").write_bytes(b"PK\x03\x04 torn")
    Run(tiny_demo_dir, out, "--resume", "auto").finish()

    readable_checkpoints(out)
    assert json.loads((out / "results.json").read_text())["iterations"] == ITERS
    assert (out / "log.txt").read_text().count("resumed from") == len(kill_at)
    assert not list(out.glob(".*.tmp")), "unfinished writes of the killed runs were not cleaned up"
    assert_same_weights(out / "model_final.pth", reference())


def test_sigint_and_sigterm_save_a_checkpoint_then_resume_is_bit_identical(reference, tiny_demo_dir, tmp_path):
    out = tmp_path / "run"
    for sig, at in ((signal.SIGINT, 5), (signal.SIGTERM, 14)):
        run = Run(tiny_demo_dir, out, "--resume", "auto")
        code = run.stop_after(at, 0.0, sig)
        console = run.console()
        # A clean exit: 128 + the signal, a message, no traceback.
        assert code == 128 + sig, console[-3000:]
        assert f"signal {int(sig)}: saved" in console and "Traceback" not in console, console[-3000:]
        # The checkpoint is taken at the iteration boundary after the signal: nothing is lost.
        assert readable_checkpoints(out)["last.pth"]["iter"] == run.logged_iter()
    Run(tiny_demo_dir, out, "--resume", "auto").finish()
    assert_same_weights(out / "model_final.pth", reference())


def test_checkpoint_files_get_the_usual_permissions(tmp_path):
    """Atomic writes go through mkstemp (mode 0600); the result is readable like any output."""
    from detkd.utils.atomic import atomic_save

    umask = os.umask(0)
    os.umask(umask)
    atomic_save({"model": {}}, tmp_path / "last.pth")
    assert (tmp_path / "last.pth").stat().st_mode & 0o777 == 0o666 & ~umask
