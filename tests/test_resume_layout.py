"""Resuming with another world size or per-process batch size.

* The sampler's global order does not depend on the world size: step ``i`` of any layout
  consumes samples ``[i*G, (i+1)*G)`` of the epoch's permutation (checked against
  ``torch.randperm`` directly).
* In 1 process: a checkpoint at global sample 6 resumes exactly with a global batch of 3 (the
  LR is then the new run's, equal to an uninterrupted batch-3 run's), is refused with batch 4,
  and with ``resume_from_epoch_boundary`` restarts its epoch.
* Real gloo: a 2-process run stopped by SIGTERM mid-epoch, resumed in 1 process with the same
  global batch, ends with the weights of an uninterrupted 1-process run (up to the float
  reordering of the all-reduce, as in tests/test_distributed.py).
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from conftest import REPO, tiny_opts
from detkd.recipe import load_config
from detkd.data.sampler import ResumableSampler
from detkd.engine.checkpoint import load_checkpoint
from detkd.engine.resume import resume_position
from detkd.engine.trainer import train
from detkd.errors import DetkdError

CFG = REPO / "configs" / "demo" / "faster_rcnn_demo.yaml"
TRAIN = REPO / "tools" / "train_det.py"


def global_batches(size: int, world: int, batch: int, epoch: int = 3, start: int = 0) -> list[list[int]]:
    """What each step of a ``world`` x ``batch`` layout consumes, all ranks together."""
    ranks = []
    for r in range(world):
        s = ResumableSampler(size, seed=5, rank=r, world_size=world)
        s.set_epoch(epoch, start)
        ranks.append(list(s))
    steps = -(-len(ranks[0]) // batch)
    return [sorted(i for r in ranks for i in r[k * batch:(k + 1) * batch]) for k in range(steps)]


@pytest.mark.parametrize("size", [16, 15])
def test_global_order_is_independent_of_the_world_size(size):
    perm = torch.randperm(size, generator=torch.Generator().manual_seed(5 + 3)).tolist()
    for world, batch in ((1, 4), (2, 2), (4, 1), (1, 2), (2, 1), (3, 2)):
        g = world * batch
        got = global_batches(size, world, batch)
        for k, step in enumerate(got):
            want = perm[k * g:(k + 1) * g]
            if (k + 1) * g <= size:  # the last step may hold the padding of this layout
                assert step == sorted(want), (world, batch, k)
        # Resumed at global sample 6 (start = 6 / world per rank): the same samples follow.
        if 6 % world == 0:
            resumed = global_batches(size, world, batch, start=6 // world)
            assert resumed[0] == sorted(perm[6:6 + g]), (world, batch)


def test_resume_position_rules():
    ckpt = {"epoch": 2, "iter": 10, "iter_in_epoch": 3, "world_size": 2, "batch_size": 2, "epoch_sample": 12}
    same = resume_position(ckpt, 1, 4, "last.pth")
    assert (same.epoch, same.iter_in_epoch, same.moved) == (2, 3, False)
    assert (resume_position(ckpt, 3, 2, "last.pth").iter_in_epoch, resume_position(ckpt, 3, 2, "p").moved) == (2, True)
    with pytest.raises(DetkdError, match=r"^last.pth stopped at sample 12 of epoch 2 with 2 process\(es\) x batch 2 "
                                         r"\(global batch 4\); this run's global batch 1 x 5 = 5 does not divide 12"):
        resume_position(ckpt, 1, 5, "last.pth")
    boundary = resume_position(ckpt, 1, 5, "last.pth", from_epoch_boundary=True)
    assert (boundary.epoch, boundary.iter_in_epoch, boundary.moved) == (2, 0, True)
    legacy = {"epoch": 1, "iter": 7, "iter_in_epoch": 3}  # written before the layout was recorded
    assert resume_position(legacy, 2, 2, "old.pth").iter_in_epoch == 3


def _opts(demo: Path, out: Path, batch: int, max_iters: int) -> list[str]:
    # Cosine over the run: the LR depends on the run's own length, so a wrong mapping shows.
    return tiny_opts(demo, out, **{"train.batch_size": batch, "train.max_iters": max_iters, "train.log_interval": 1,
                                   "train.scheduler.name": "cosine", "train.optimizer.scale_lr": True,
                                   "train.optimizer.reference_batch_size": 4})


def _train_records(out: Path) -> dict[int, dict]:
    return {r["iter"]: r for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines())
            if r["type"] == "train"}


def _checksums(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir()) if p.is_file()}


def test_other_global_batch_resumes_exactly_or_is_refused(tiny_demo_dir, tmp_path):
    demo = tiny_demo_dir
    # Batch 2, stopped after 3 iterations: global sample 6 of epoch 0 (8 iterations per epoch).
    part = tmp_path / "part"
    train(load_config(CFG, _opts(demo, part, 2, 3)), progress=False)
    ckpt = load_checkpoint(part / "last.pth")
    assert (ckpt["world_size"], ckpt["batch_size"], ckpt["epoch_sample"], ckpt["iter"]) == (1, 2, 6, 3)

    # Batch 4 cannot start at sample 6: refused, nothing written.
    before = _checksums(part)
    with pytest.raises(DetkdError, match="does not divide 6, so it cannot continue at that sample"):
        train(load_config(CFG, _opts(demo, part, 4, 10)), resume="auto", progress=False)
    assert _checksums(part) == before

    # Batch 3 can: sample 6 is iteration 2 of a batch-3 run (6 iterations per epoch); its LR
    # is the batch-3 run's own schedule (base LR scaled by 3/4, cosine over 10 iterations).
    train(load_config(CFG, _opts(demo, part, 3, 10)), resume="auto", progress=False)
    full = tmp_path / "full3"
    train(load_config(CFG, _opts(demo, full, 3, 10)), progress=False)
    resumed, reference = _train_records(part), _train_records(full)
    assert [i for i in resumed if i > 3] == list(range(4, 11))  # the batch-2 part logged 1..3; then 3..10
    for it in range(3, 11):
        assert resumed[it]["lr"] == pytest.approx(reference[it]["lr"], rel=1e-12), it
    assert json.loads((part / "results.json").read_text())["iterations"] == 10
    assert "continuing at sample 6 of epoch 0, iteration 2 of this run's 10" in (part / "log.txt").read_text()


def test_resume_from_epoch_boundary_restarts_the_epoch(tiny_demo_dir, tmp_path):
    out = tmp_path / "run"
    train(load_config(CFG, _opts(tiny_demo_dir, out, 2, 3)), progress=False)
    train(load_config(CFG, _opts(tiny_demo_dir, out, 4, 2)), resume="auto", progress=False,
          resume_from_epoch_boundary=True)
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["iter"] for r in records if r["type"] == "train"] == [1, 2, 3, 1, 2]
    assert load_checkpoint(out / "last.pth")["epoch_sample"] == 8


# ----------------------------------------------------------------------------- gloo


def _env() -> dict[str, str]:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    for key in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    return env


def _cmd(demo: Path, out: Path, batch: int, procs: int, *args: str) -> list[str]:
    opts = tiny_opts(demo, out, **{"train.batch_size": batch, "train.max_iters": 8, "train.log_interval": 1,
                                   "train.checkpoint_period_iters": 1, "train.optimizer.lr": 0.02,
                                   "eval.batch_size": 2})
    launch = [sys.executable] if procs == 1 else [sys.executable, "-m", "torch.distributed.run", "--standalone",
                                                  f"--nproc_per_node={procs}"]
    return [*launch, str(TRAIN), "--cfg", str(CFG), "--no-progress", *args, "--opts", *opts]


def _children(pid: int) -> list[int]:
    kids = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        kids += [int(k) for k in (task / "children").read_text().split()]
    return kids


def _logged(out: Path) -> int:
    path = out / "metrics.jsonl"
    lines = path.read_text().split("\n")[:-1] if path.exists() else []
    return max([r["iter"] for r in map(json.loads, lines) if r["type"] == "train"], default=0)


def test_two_processes_stopped_by_sigterm_resume_in_one(tiny_demo_dir, tmp_path):
    demo = tiny_demo_dir
    # Global batch 4 either way; 16 images: 4 iterations per epoch, 8 in all (longer runs drift
    # apart by the float reordering of the all-reduce, amplified by training).
    two = subprocess.Popen(_cmd(demo, tmp_path / "run", 2, 2), env=_env(), stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 300
    while _logged(tmp_path / "run") < 2:
        assert two.poll() is None and time.monotonic() < deadline, two.communicate()[0][-3000:]
        time.sleep(0.02)
    # Preemption: each worker gets SIGTERM (the launcher itself would re-send it as a second signal).
    for pid in _children(two.pid):
        os.kill(pid, signal.SIGTERM)
    console = two.communicate(timeout=300)[0]
    # Rank 0 saves at the iteration boundary after the signal (a rank that sees it one step later
    # may end with a gloo error instead); last.pth is written every iteration anyway.
    assert two.returncode != 0, console[-3000:]
    ckpt = load_checkpoint(tmp_path / "run" / "last.pth")
    assert ckpt["world_size"] == 2 and ckpt["batch_size"] == 2 and 2 <= ckpt["iter"] < 8, ckpt["iter"]
    assert ckpt["epoch_sample"] == 4 * (ckpt["iter"] % 4)

    one = subprocess.run(_cmd(demo, tmp_path / "run", 4, 1, "--resume", "auto"), env=_env(), capture_output=True,
                         text=True, timeout=300)
    assert one.returncode == 0, one.stderr[-3000:]
    full = subprocess.run(_cmd(demo, tmp_path / "full", 4, 1), env=_env(), capture_output=True, text=True,
                          timeout=300)
    assert full.returncode == 0, full.stderr[-3000:]

    assert json.loads((tmp_path / "run" / "results.json").read_text())["iterations"] == 8
    # The same loss at every iteration, before and after the change of world size.
    losses = {}
    for run in ("run", "full"):
        records = [json.loads(line) for line in (tmp_path / run / "metrics.jsonl").read_text().splitlines()]
        losses[run] = {r["iter"]: r["loss"] for r in records if r["type"] == "train"}
    assert sorted(losses["run"]) == sorted(losses["full"]) == list(range(1, 9))
    for it, loss in losses["full"].items():
        assert losses["run"][it] == pytest.approx(loss, rel=1e-4), it
    a = torch.load(tmp_path / "full" / "model_final.pth", map_location="cpu")
    b = torch.load(tmp_path / "run" / "model_final.pth", map_location="cpu")
    assert a.keys() == b.keys()
    for key, value in a.items():
        torch.testing.assert_close(b[key], value, rtol=1e-4, atol=1e-5, msg=key)
    # ...and the runs trained: the weights moved away from the 2-process checkpoint's.
    assert any(not torch.equal(ckpt["model"][k], a[k]) for k in a if a[k].is_floating_point())
