"""The run directory: one run at a time, clear write errors, honest speed, TensorBoard.

* A second ``tools/train_det.py`` on a directory held by a live run stops with one line and
  changes no file; after SIGKILL of the holder, ``--resume auto`` starts at once.
* A checkpoint write past a real file-size limit (``RLIMIT_FSIZE`` in the child process, so
  ``write`` fails with EFBIG) gives one line naming the file and the last complete checkpoint,
  leaves no temporary file, and the previous ``last.pth`` byte-identical.
* The logged s/it agrees with the wall clock of ``log.txt``'s own timestamps when epochs are
  shorter than ``log_interval`` (the old timer restarted every epoch).
* The TensorBoard event file holds every field of ``metrics.jsonl``.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import os
import re
import resource
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from conftest import REPO, tiny_opts
from detkd.recipe import load_config
from detkd.engine.lock import RunLock
from detkd.engine.trainer import train
from detkd.errors import DetkdError

TRAIN = REPO / "tools" / "train_det.py"
CFG = REPO / "configs" / "demo" / "faster_rcnn_demo.yaml"
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}


def checksums(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir()) if p.is_file()}


def start(demo: Path, out: Path, *args: str, preexec=None, **opts: object) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, str(TRAIN), "--cfg", str(CFG), "--no-progress", *args, "--opts",
                             *tiny_opts(demo, out, **opts)], env=ENV, cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, preexec_fn=preexec)


def logged_iters(out: Path) -> list[int]:
    path = out / "metrics.jsonl"
    if not path.exists():
        return []
    lines = path.read_text().split("\n")[:-1]
    return [r["iter"] for r in map(json.loads, lines) if r["type"] == "train"]


def assert_one_error_line(proc: subprocess.CompletedProcess | subprocess.Popen, stderr: str, expect: str) -> None:
    assert proc.returncode == 2, stderr[-3000:]
    assert "Traceback" not in stderr, stderr[-3000:]
    last = stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and expect in last, last


# ----------------------------------------------------------------------------- the lock


def test_run_lock_in_one_process(tmp_path):
    out = tmp_path / "run"
    with RunLock(out):
        assert f"pid {os.getpid()} on " in (out / ".lock").read_text()
        # flock conflicts between two opens even inside one process.
        with pytest.raises(DetkdError, match=f"output directory {out} is in use by another run \\(pid {os.getpid()}"):
            RunLock(out).acquire()
    # Released: the lock file goes, and the directory it created (nothing else was written).
    assert not out.exists()
    out.mkdir()
    (out / "keep.txt").write_text("x")
    with RunLock(out):
        pass
    assert sorted(p.name for p in out.iterdir()) == ["keep.txt"]
    # A stale lock file (its holder was killed) does not block: only the OS lock decides.
    (out / ".lock").write_text("pid 999999 on elsewhere\n")
    with RunLock(out):
        assert f"pid {os.getpid()}" in (out / ".lock").read_text()


def test_a_forked_child_does_not_keep_the_lock_of_a_killed_holder(tmp_path):
    """DataLoader workers are forked with the lock's file open; a SIGKILLed trainer's worker
    that is still alive must not block the next run."""
    out = tmp_path / "run"
    # Both processes live until the test closes their stdin (no sleep to outlast). The child's
    # own line comes after its at-fork hooks ran (where it closes its copy of the lock): on a
    # loaded machine it may be scheduled long after the holder has printed the child's pid.
    # One os.write per line: a pipe never interleaves writes that small.
    holder = subprocess.Popen([sys.executable, "-c", (
        "import os, sys\n"
        "from detkd.engine.lock import RunLock\n"
        f"RunLock({str(out)!r}).acquire()\n"
        "child = os.fork()\n"
        "if child == 0:\n"
        "    os.write(1, b'child ready\\n'); sys.stdin.read(); os._exit(0)\n"
        "os.write(1, f'child {child}\\n'.encode())\n"
        "sys.stdin.read()\n")], env=ENV, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        lines = sorted(holder.stdout.readline().split() for _ in range(2))
        assert lines[0][0] == "child" and lines[1] == ["child", "ready"], lines
        child = int(lines[0][1])
        with pytest.raises(DetkdError, match=f"pid {holder.pid} on "):
            RunLock(out).acquire()
        holder.kill()
        holder.wait()
        os.kill(child, 0)  # the forked child is still alive...
        with RunLock(out):  # ...and the directory is free
            pass
        os.kill(child, signal.SIGKILL)
    finally:
        holder.stdin.close()  # end of input: whatever is still running exits
        holder.kill()
        holder.wait()


def test_second_run_on_a_live_run_is_refused_and_sigkill_frees_it(tiny_demo_dir, tmp_path):
    out = tmp_path / "run"
    opts = {"train.epochs": 1, "train.log_interval": 1, "train.checkpoint_period_iters": 1}
    first = start(tiny_demo_dir, out, **opts)
    deadline = time.monotonic() + 300
    while not logged_iters(out) or not (out / "last.pth").exists():
        assert first.poll() is None, first.communicate()[1][-3000:]
        assert time.monotonic() < deadline
        time.sleep(0.05)
    first.send_signal(signal.SIGSTOP)  # frozen: its files can be compared byte for byte
    try:
        before = checksums(out)
        held = f"output directory {out} is in use by another run (pid {first.pid} on "
        second = start(tiny_demo_dir, out, "--resume", "auto", **opts)
        _, stderr = second.communicate(timeout=300)
        assert_one_error_line(second, stderr, held)
        assert checksums(out) == before
        # Without --resume too (in-process: the same train(), without a second interpreter's start-up).
        with pytest.raises(DetkdError, match=re.escape(held)):
            train(load_config(CFG, tiny_opts(tiny_demo_dir, out, **opts)), progress=False)
        assert checksums(out) == before
    finally:
        first.kill()  # SIGKILL works on a stopped process; the kernel drops its flock
        first.wait()
    assert (out / ".lock").exists()  # the killed holder could not remove it
    resumed = start(tiny_demo_dir, out, "--resume", "auto", **opts)
    _, stderr = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, stderr[-3000:]
    assert "resumed from" in (out / "log.txt").read_text()
    assert json.loads((out / "results.json").read_text())["iterations"] == 8
    assert not (out / ".lock").exists()


# ----------------------------------------------------------------------------- write errors


def _file_size_limit(limit: int):
    def apply() -> None:
        # Past the limit write() fails with EFBIG (SIGXFSZ, which would kill, is ignored).
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    return apply


def test_checkpoint_write_past_a_file_size_limit_is_one_line_and_keeps_last(tiny_demo_dir, tmp_path):
    out = tmp_path / "run"
    opts = {"train.max_iters": 2, "train.checkpoint_period_iters": 1, "train.log_interval": 1}
    train(load_config(CFG, tiny_opts(tiny_demo_dir, out, **opts)), progress=False)
    last = (out / "last.pth").read_bytes()
    assert len(last) > 1_000_000  # the limit below is far under a checkpoint, far over the text files
    proc = start(tiny_demo_dir, out, "--resume", "auto", preexec=_file_size_limit(1_000_000),
                 **{**opts, "train.max_iters": 4})
    _, stderr = proc.communicate(timeout=300)
    assert_one_error_line(proc, stderr, f"cannot write {out / 'last.pth'}: File too large [EFBIG]; the files "
                                        f"already there are intact, the last complete checkpoint is "
                                        f"{out / 'last.pth'} (iteration 2)")
    assert not list(out.glob(".*.tmp")) and not (out / ".lock").exists()
    assert (out / "last.pth").read_bytes() == last
    assert torch.load(out / "last.pth", map_location="cpu", weights_only=False)["iter"] == 2
    # metrics.jsonl is still valid JSON lines (the resumed run logged iteration 3 before failing).
    assert logged_iters(out)[-1] == 3


def test_metrics_append_past_the_limit_is_cut_back_to_whole_lines(tmp_path):
    """metrics.jsonl is appended: a failed append leaves no half line behind."""
    path = tmp_path / "metrics.jsonl"
    code = ("import sys\n"
            "from detkd.utils.logger import MetricsWriter\n"
            f"w = MetricsWriter({str(path)!r})\n"
            "for i in range(1000):\n"
            "    w.write({'type': 'train', 'iter': i, 'loss': 1.0 / (i + 1)})\n")
    proc = subprocess.run([sys.executable, "-c", code], env=ENV, capture_output=True, text=True, timeout=120,
                          preexec_fn=_file_size_limit(1000))
    assert proc.returncode != 0
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith(f"detkd.errors.DetkdError: cannot write {path}: File too large [EFBIG]; "), last
    data = path.read_bytes()
    assert len(data) <= 1000 and data.endswith(b"\n")
    assert [json.loads(line)["iter"] for line in data.splitlines()] == list(range(len(data.splitlines())))


def test_full_file_system_is_one_line_error(tiny_demo_dir, tmp_path):
    """A real full disk: a 3 MB tmpfs as output_dir holds the small files but not a checkpoint."""
    mnt = tmp_path / "small"
    mnt.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(mnt)], capture_output=True).returncode:
        pytest.skip("cannot mount a tmpfs here (needs root); the RLIMIT_FSIZE test covers the same path")
    try:
        out = mnt / "run"
        proc = start(tiny_demo_dir, out, **{"train.max_iters": 1})
        _, stderr = proc.communicate(timeout=300)
        # The first checkpoint of this 1-iteration run is best.pth (the final evaluation), then last.pth.
        assert_one_error_line(proc, stderr, f"cannot write {out / 'best.pth'}: No space left on device [ENOSPC]; "
                                            "the files already there are intact, the last complete checkpoint is "
                                            "none was written yet")
        assert not list(out.glob(".*.tmp"))
        assert {"config.yaml", "classes.json", "log.txt", "metrics.jsonl"} <= set(checksums(out))
    finally:
        subprocess.run(["umount", str(mnt)], check=True)


# ----------------------------------------------------------------------------- speed and TensorBoard


def _log_times(out: Path) -> dict[int, float]:
    """Training iteration -> the time stamp of its log line in log.txt."""
    times = {}
    for line in (out / "log.txt").read_text().splitlines():
        m = re.match(r"(\S+ \S+) INFO epoch \d+ iter (\d+)/", line)
        if m:
            stamp = datetime.datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S,%f")
            times[int(m.group(2))] = stamp.timestamp()
    return times


def test_logged_speed_matches_the_wall_clock_across_short_epochs(tiny_demo_dir, tmp_path):
    # 8 iterations per epoch, log every 10, evaluation after every epoch: each interval crosses
    # an epoch boundary and an evaluation.
    out = tmp_path / "run"
    cfg = load_config(CFG, tiny_opts(tiny_demo_dir, out, **{"train.epochs": 3, "train.log_interval": 10,
                                                              "train.eval_interval": 1}))
    train(cfg, progress=False)
    records = {r["iter"]: r for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines())
               if r["type"] == "train"}
    assert sorted(records) == [10, 20, 24]
    stamps = _log_times(out)
    for a, b in ((10, 20), (20, 24)):
        wall = (stamps[b] - stamps[a]) / (b - a)
        assert records[b]["time"] == pytest.approx(wall, rel=0.2), (a, b, records[b]["time"], wall)
        assert 0 < records[b]["data_time"] < records[b]["time"]
    assert records[24]["eta_seconds"] == 0 and records[10]["eta_seconds"] > 0
    log = (out / "log.txt").read_text()
    # The ETA's format, not its size (a loaded machine may need minutes for the 14 iterations left).
    assert re.search(r"iter 10/24 .*\(\d+\.\d+ s/it, data \d+\.\d+ s/it \(\d+%\), eta \d+:\d\d:\d\d\)", log), log


def test_speed_meter_on_a_scripted_clock():
    """Data wait = from the end of a step (or the epoch start) to the batch; the time between
    epochs counts in s/it but not as data wait; the ETA extrapolates the run's average."""
    from detkd.utils.speed import SpeedMeter, format_speed

    now = [100.0]
    meter = SpeedMeter(start_iter=0, total_iters=10, clock=lambda: now[0])
    for it, (wait, step) in enumerate([(0.5, 1.0), (0.1, 1.0), (0.1, 1.0)], start=1):
        if it == 3:  # an epoch boundary with a 2 s evaluation before it
            now[0] += 2.0
            meter.epoch_start()
        now[0] += wait
        meter.batch_ready()
        now[0] += step
        meter.step_done()
    fields = meter.interval(3)
    assert fields["time"] == pytest.approx((0.5 + 1 + 0.1 + 1 + 2 + 0.1 + 1) / 3)
    assert fields["data_time"] == pytest.approx(0.7 / 3)
    assert fields["eta_seconds"] == pytest.approx(5.7 / 3 * 7)
    assert format_speed(fields) == "1.900 s/it, data 0.233 s/it (12%), eta 0:00:13"


def _scalars(folder: Path) -> dict[str, list[tuple[int, float]]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(folder))
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def assert_tensorboard_has_every_metric(out: Path) -> None:
    assert list(out.glob("events.out.tfevents.*"))
    scalars = _scalars(out)
    expected: dict[str, list[tuple[int, float]]] = {}
    for record in map(json.loads, (out / "metrics.jsonl").read_text().splitlines()):
        for key, value in record.items():
            if key not in ("type", "iter") and isinstance(value, (int, float)):
                expected.setdefault(f"{record['type']}/{key}", []).append((record.get("iter", 0), float(value)))
    assert set(expected) == set(scalars), set(expected) ^ set(scalars)
    for tag, points in expected.items():
        assert [s for s, _ in scalars[tag]] == [s for s, _ in points], tag
        assert [v for _, v in scalars[tag]] == pytest.approx([v for _, v in points], rel=1e-6, abs=1e-6), tag


def test_tensorboard_event_file_holds_every_logged_term(tiny_demo_dir, tmp_path):
    pytest.importorskip("tensorboard")
    out = tmp_path / "run"
    cfg = load_config(CFG, tiny_opts(tiny_demo_dir, out, **{"train.max_iters": 4, "train.tensorboard": True}))
    train(cfg, progress=False)
    assert_tensorboard_has_every_metric(out)
    tags = set(_scalars(out))
    for term in ("loss", "loss_classifier", "loss_box_reg", "loss_objectness", "loss_rpn_box_reg", "lr", "time",
                 "data_time", "eta_seconds"):
        assert f"train/{term}" in tags, term
    assert {"eval/AP", "eval/AP50"} <= tags


def test_tensorboard_missing_is_one_line_before_anything_is_written(tiny_demo_dir, tmp_path, monkeypatch):
    # Hide the installed package (None in sys.modules makes `import` raise ImportError).
    for name in ("tensorboard", "torch.utils.tensorboard"):
        monkeypatch.setitem(sys.modules, name, None)
    out = tmp_path / "run"
    cfg = load_config(CFG, tiny_opts(tiny_demo_dir, out, **{"train.max_iters": 1, "train.tensorboard": True}))
    with pytest.raises(DetkdError, match=r"^train.tensorboard is on but the tensorboard package is not installed"):
        train(cfg, progress=False)
    assert not out.exists()
