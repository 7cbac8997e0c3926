"""The engine pieces both training loops share: iteration plan and gating,
non-finite policy, resume lookup and check, output-directory guard, weight files, devices.
The classification loop is run for real (tiny Fashion-MNIST runs) to show it now follows
the detection side's non-finite policy."""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

import pytest
import torch

from detkd.engine.checkpoint import prepare_output_dir, resume_checkpoint
from detkd.engine.loop import IterationPlan, NonFiniteGuard, Position, epoch_batches, epoch_due
from detkd.errors import DetkdError
from detkd.modeling.weights import read_weights
from detkd.utils.atomic import atomic_save
from detkd.utils.logger import MetricsWriter
from detkd.utils.runtime import resolve_device
from detkd.utils.speed import SpeedMeter

ROOT = Path(__file__).resolve().parents[1]


def test_iteration_plan_cuts_at_max_iters_and_counts_partial_epochs():
    assert IterationPlan.of(10, 3, None) == IterationPlan(10, 30, 3)
    assert IterationPlan.of(10, 3, 25) == IterationPlan(10, 25, 3)  # 2.5 epochs: the third is partial
    assert IterationPlan.of(10, 3, 20) == IterationPlan(10, 20, 2)
    assert IterationPlan.of(10, 3, 99) == IterationPlan(10, 30, 3)
    plan = IterationPlan.of(10, 3, 25)
    assert [i for i in range(1, 26) if plan.log_due(i, 10)] == [10, 20, 25]


def test_epoch_gating():
    assert [e for e in range(6) if epoch_due(e, 2, done=False)] == [1, 3, 5]
    assert [e for e in range(6) if epoch_due(e, 0, done=False)] == []  # 0: only at the end
    assert epoch_due(0, 0, done=True) and epoch_due(2, 2, done=True)


def test_epoch_batches_stop_at_the_plans_last_iteration_and_time_the_waits():
    ticks = iter(range(100))
    speed = SpeedMeter(0, 5, clock=lambda: float(next(ticks)))
    pos = Position(IterationPlan.of(4, 2, 5))  # 5 iterations: one epoch of 4, then 1
    seen = []
    for epoch in range(pos.plan.epochs):
        pos.epoch, pos.iter_in_epoch = epoch, 0
        for batch in epoch_batches(range(4), pos, speed):
            seen.append((epoch, batch))
            if batch != 1 or epoch:  # a skipped step (non-finite loss) does not count
                pos.step_done()
                speed.step_done()
    assert seen == [(0, 0), (0, 1), (0, 2), (0, 3), (1, 0), (1, 1)] and pos.done
    assert (pos.iteration, pos.iter_in_epoch) == (5, 2)
    # The scripted clock ticks once per call: each of the 6 batches waited one tick for the loader.
    assert speed.data == 6.0


def _guard(tmp_path, policy, max_skips):
    metrics = MetricsWriter(tmp_path / "metrics.jsonl")
    return NonFiniteGuard(policy, max_skips, tmp_path, logging.getLogger("detkd"), metrics), metrics


def test_nonfinite_guard_skips_up_to_max_in_a_row_then_stops(tmp_path):
    guard, metrics = _guard(tmp_path, "skip", 2)
    nan, one = torch.tensor(float("nan")), torch.tensor(1.0)
    terms = {"ce": one, "kd": nan}
    assert guard.skip(terms, nan, 0) and guard.skip(terms, nan, 1)
    assert not guard.skip({"ce": one}, one, 2)  # a finite step resets the streak
    assert guard.skip(terms, nan, 3) and guard.skip(terms, nan, 4)
    with pytest.raises(DetkdError, match=r"^non-finite loss in kd at iteration 5; stopped \(the last checkpoint"):
        guard.skip(terms, nan, 5)
    metrics.close()
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [(r["iter"], r["terms"]) for r in records] == [(i, ["kd"]) for i in (0, 1, 3, 4, 5)]


def test_nonfinite_guard_stop_policy_stops_at_once(tmp_path):
    guard, _ = _guard(tmp_path, "stop", 10)
    inf = torch.tensor(float("inf"))
    with pytest.raises(DetkdError, match="non-finite loss in loss at iteration 7"):
        guard.skip({}, inf, 7)


def _last(path: Path, chash: str, **extra) -> Path:
    atomic_save({"model": {"w": torch.zeros(1)}, "optimizer": {}, "config_hash": chash, **extra}, path)
    return path


def test_resume_checkpoint_lookup_and_checks(tmp_path):
    assert resume_checkpoint(None, tmp_path, "h", False) == (None, None)
    assert resume_checkpoint("auto", tmp_path, "h", False) == (None, None)  # nothing yet: from scratch
    last = _last(tmp_path / "last.pth", "h")
    path, ckpt = resume_checkpoint("auto", tmp_path, "h", False)
    assert path == last and ckpt["config_hash"] == "h"
    with pytest.raises(DetkdError, match=r"was made with a different config \(hash h vs other\); pass --force-resume"):
        resume_checkpoint("auto", tmp_path, "other", False)
    assert resume_checkpoint(str(last), tmp_path, "other", True)[0] == last
    atomic_save({"model": {"w": torch.zeros(1)}}, tmp_path / "weights.pth")
    with pytest.raises(DetkdError, match="holds weights only"):
        resume_checkpoint(str(tmp_path / "weights.pth"), tmp_path, "h", False)
    # Classification checkpoints hold networks/optimizers: the same lookup, other entries.
    cls_dir = tmp_path / "cls"
    atomic_save({"networks": {}, "optimizers": [], "config_hash": "c"}, cls_dir / "last.pth")
    assert resume_checkpoint("auto", cls_dir, "c", False, ("networks", "optimizers"))[0] == cls_dir / "last.pth"
    with pytest.raises(DetkdError, match="no 'model' entry"):
        resume_checkpoint(str(cls_dir / "last.pth"), cls_dir, "c", False)


def test_prepare_output_dir_refuses_any_run(tmp_path):
    prepare_output_dir(tmp_path / "new")
    (tmp_path / "log.txt").write_text("")
    prepare_output_dir(tmp_path)  # logs alone are no run
    (tmp_path / "peer0_final.pth").write_bytes(b"")
    (tmp_path / "last.pth").write_bytes(b"")
    with pytest.raises(DetkdError, match=r"already holds a run \(last.pth, peer0_final.pth\); use --resume auto"):
        prepare_output_dir(tmp_path)


def test_read_weights_names_the_key_and_returns_the_metadata(tmp_path):
    with pytest.raises(DetkdError, match=r"^teachers\[0\]: weight file not found: "):
        read_weights(tmp_path / "gone.pth", who="teachers[0]")
    path = tmp_path / "w.pth"
    torch.save({"model": {"a": torch.ones(2)}, "net": {"arch": "resnet8"}}, path)
    state, entries = read_weights(path)
    assert list(state) == ["a"] and entries == {"net": {"arch": "resnet8"}}
    torch.save({"a": torch.ones(2)}, path)
    state, entries = read_weights(path)
    assert list(state) == ["a"] and entries == {}
    torch.save({"model": 3}, path)
    with pytest.raises(DetkdError, match="does not hold a state dict"):
        read_weights(path, who="model")


def test_resolve_device_errors_name_the_key():
    assert resolve_device("cpu") == torch.device("cpu")
    with pytest.raises(DetkdError, match=r"^train.device: invalid device 'gpu' \(use auto, cpu, cuda or cuda:N\)"):
        resolve_device("gpu")
    with pytest.raises(DetkdError, match=r"^--device: invalid device"):
        resolve_device("tpu", key="--device")
    if not torch.cuda.is_available():
        with pytest.raises(DetkdError, match="CUDA is not available"):
            resolve_device("cuda:0")


# ----------------------------------------------------------------------------- classification loop


@pytest.fixture
def nan_first_ce(monkeypatch):
    """The classification CE is NaN in its first two calls (then real): a transient blow-up."""
    import detkd.cls.methods.base as methods

    real, calls = methods.labelled_ce, []

    def flaky(logits, labels):
        calls.append(1)
        value = real(logits, labels)
        return value * float("nan") if len(calls) <= 2 else value

    monkeypatch.setattr(methods, "labelled_ce", flaky)


def _cls_run(out: Path, *opts: str) -> int:
    sys.path.insert(0, str(ROOT / "tools"))
    import train_cls

    return train_cls.cli(["--cfg", str(ROOT / "configs/cls/fmnist/baseline.yaml"), "--output-dir", str(out), "--opts",
                          "data.train_subset=64", "data.test_subset=20", "train.batch_size=16", "train.epochs=1",
                          "train.log_interval=1", "train.threads=1", "model.width=4", "eval.batch_size=20", *opts])


def test_classification_skips_nonfinite_steps_like_detection(tmp_path, nan_first_ce):
    out = tmp_path / "skip"
    assert _cls_run(out) == 0
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [(r["iter"], r["terms"]) for r in records if r["type"] == "nonfinite"] == [(0, ["ce"]), (0, ["ce"])]
    # 4 batches, 2 skipped: 2 counted iterations, the weights file is written.
    assert [r["iter"] for r in records if r["type"] == "train"] == [1, 2]
    assert (out / "model_final.pth").is_file()


def test_classification_stop_policy(tmp_path, nan_first_ce, capsys):
    assert _cls_run(tmp_path / "stop", "train.nonfinite_policy=stop") == 2
    err = capsys.readouterr().err
    assert "non-finite loss in ce at iteration 0; stopped" in err
