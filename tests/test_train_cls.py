"""End-to-end tests of tools/train_cls.py on the embedded Fashion-MNIST subset.

Every method runs a few iterations through the real CLI entry (in-process), with tiny
networks and subsets set by ``--opts``; teachers are trained first (a session fixture)
and loaded from their checkpoints. Bad inputs must give one-line ``error:`` messages.
"""

from __future__ import annotations

import json
import math
import pickle
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))

import train_cls  # noqa: E402

from detkd.cls.config import load_cls_config  # noqa: E402
from detkd.errors import DetkdError  # noqa: E402

CFG = ROOT / "configs" / "cls" / "fmnist"
# Tiny and fast: 64 training images (2 iterations per epoch), 2 epochs (so CA-MKD's
# intermediate term, off in epoch 0, runs too), 40 test images, 1 thread.
SMALL = ["data.train_subset=64", "data.test_subset=40", "train.batch_size=32", "train.epochs=2",
         "train.log_interval=1", "train.threads=1", "model.width=4", "eval.batch_size=40"]
TEACHERS = {"a": ("resnet14", 4), "b": ("resnet8", 4), "c": ("resnet8", 6)}


def run(cfg: str | Path, out: Path | None, *opts: str, args: tuple[str, ...] = ()) -> int:
    argv = ["--cfg", str(cfg), *args]
    if out is not None:
        argv += ["--output-dir", str(out)]
    return train_cls.cli(argv + ["--opts", *SMALL, *opts])


def teacher_list(ckpts: dict[str, Path], names: str) -> str:
    items = [f"{{arch: {TEACHERS[n][0]}, width: {TEACHERS[n][1]}, checkpoint: '{ckpts[n]}'}}" for n in names]
    return "teachers=[" + ", ".join(items) + "]"


def read_metrics(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def assert_run_ok(out: Path, networks: set[str]) -> dict:
    for name in ("config.yaml", "log.txt", "metrics.jsonl", "last.pth", "results.json"):
        assert (out / name).is_file(), name
    res = json.loads((out / "results.json").read_text())
    assert set(res["networks"]) == networks
    for r in res["networks"].values():
        assert 0.0 <= r["top1"] <= r["top5"] <= 100.0
    train = [m for m in read_metrics(out) if m["type"] == "train"]
    assert train, "no training records"
    for m in train:
        for k, v in m.items():
            if isinstance(v, float):
                assert math.isfinite(v), (k, v)
    return res


@pytest.fixture(scope="session")
def teachers(tmp_path_factory) -> dict[str, Path]:
    """Three tiny baseline runs; their model_final.pth serve as teachers."""
    base = tmp_path_factory.mktemp("teachers")
    ckpts = {}
    for name, (arch, width) in TEACHERS.items():
        out = base / name
        assert run(CFG / f"teacher_{name}.yaml", out, "train.epochs=1", f"model.arch={arch}",
                   f"model.width={width}") == 0
        ckpts[name] = out / "model_final.pth"
    return ckpts


def test_baseline_run_is_a_teacher_checkpoint(teachers):
    out = teachers["a"].parent
    res = assert_run_ok(out, {"student"})
    assert res["method"] == "baseline" and res["test_images"] == 40 and res["train_images"] == 64
    ckpt = torch.load(teachers["a"], map_location="cpu", weights_only=False)
    assert ckpt["net"] == {"arch": "resnet14", "width": 4, "stem": None, "num_classes": 10, "in_channels": 1}
    assert math.isclose(ckpt["top1"], res["networks"]["student"]["top1"])
    assert load_cls_config(out / "config.yaml").model.arch == "resnet14"  # the saved config reloads


SINGLE = {"kd": "kd", "fitnet": "fitnet", "at": "at", "sp": "sp"}
MULTI = ["aver", "ebkd", "aekd", "camkd", "fitnet_mkd"]


@pytest.mark.parametrize("method", ["kd", "fitnet", "at", "sp", *MULTI])
def test_distillation_methods(method, teachers, tmp_path):
    names = "a" if method in SINGLE else "abc"
    out = tmp_path / method
    assert run(CFG / f"{method}.yaml", out, teacher_list(teachers, names)) == 0
    res = assert_run_ok(out, {"student"})
    assert set(res["teachers"]) == {f"teacher{i}" for i in range(len(names))}
    assert (out / "model_final.pth").is_file()
    train = [m for m in read_metrics(out) if m["type"] == "train"]
    term = {"kd": "kd", "fitnet": "fitnet", "at": "at", "sp": "sp", "fitnet_mkd": "fitnet"}.get(method, "kd")
    assert all(term in m for m in train)
    if method == "camkd":  # the intermediate term is skipped in epoch 0 only
        assert all(("inter" in m) == (m["epoch"] >= 1) for m in train)


@pytest.mark.parametrize("method,networks", [
    ("dml", {"peer0", "peer1", "ensemble"}),
    ("dml_e", {"peer0", "peer1", "peer2", "ensemble"}),
    ("ffl", {"sub0", "sub1", "fused", "ensemble"}),
    ("scd", {"student"}),
])
def test_online_and_self_distillation(method, networks, tmp_path):
    out = tmp_path / method
    assert run(CFG / f"{method}.yaml", out) == 0
    assert_run_ok(out, networks)
    for name in networks - {"ensemble", "fused", "student"}:
        assert (out / f"{name}_final.pth").is_file()
    if method == "ffl":
        assert (out / "fusion_final.pth").is_file()


def test_dml_semi_supervised_and_simultaneous(tmp_path, teachers):
    out = tmp_path / "semi"
    assert run(CFG / "dml_semi.yaml", out, "method.dml.update=simultaneous") == 0
    res = assert_run_ok(out, {"peer0", "peer1", "ensemble"})
    assert res["labelled_images"] == 16 and res["train_images"] == 64
    # A DML peer can serve as a teacher (same checkpoint format).
    out_kd = tmp_path / "kd_from_peer"
    peer = f"teachers=[{{arch: resnet8, width: 4, checkpoint: '{out / 'peer1_final.pth'}'}}]"
    assert run(CFG / "kd.yaml", out_kd, peer, "train.epochs=1") == 0
    assert_run_ok(out_kd, {"student"})


@pytest.mark.parametrize("method", ["camkd", "ffl"])
def test_resume_ends_with_identical_weights(method, teachers, tmp_path, monkeypatch, capsys):
    """An interrupted run continued with --resume auto ends exactly like an uninterrupted one
    (networks, auxiliary regressors, optimizers, schedulers, RNG states restored)."""
    from detkd.cls import methods

    opts = ["train.epochs=3", *([teacher_list(teachers, "abc")] if method == "camkd" else [])]
    full, part = tmp_path / "full", tmp_path / "part"
    assert run(CFG / f"{method}.yaml", full, *opts) == 0

    cls = methods.FFLMethod if method == "ffl" else methods.StudentMethod
    original, calls = cls.step, {"n": 0}

    def interrupted(self, x, y, epoch):
        calls["n"] += 1
        if calls["n"] == 5:  # 2 iterations per epoch: stop in epoch 2, after the checkpoint of epoch 1
            raise KeyboardInterrupt
        return original(self, x, y, epoch)

    monkeypatch.setattr(cls, "step", interrupted)
    assert run(CFG / f"{method}.yaml", part, *opts) == 130
    monkeypatch.setattr(cls, "step", original)
    assert "interrupted" in capsys.readouterr().err
    assert torch.load(part / "last.pth", map_location="cpu", weights_only=False)["epoch"] == 2
    assert not (part / "results.json").exists()
    # without --resume the directory is refused; with a changed config the checkpoint is refused
    assert "--resume auto" in _error(capsys, run(CFG / f"{method}.yaml", part, *opts))
    msg = _error(capsys, run(CFG / f"{method}.yaml", part, *opts, "train.seed=5", args=("--resume", "auto")))
    assert "different config" in msg and "--force-resume" in msg
    assert run(CFG / f"{method}.yaml", part, *opts, args=("--resume", "auto")) == 0

    a = torch.load(full / "last.pth", map_location="cpu", weights_only=False)
    b = torch.load(part / "last.pth", map_location="cpu", weights_only=False)
    assert a["networks"].keys() == b["networks"].keys() and a["iter"] == b["iter"] == 6
    for key in a["networks"]:
        for name, tensor in a["networks"][key].items():
            assert torch.equal(tensor, b["networks"][key][name]), (key, name)
    for name, tensor in a.get("aux", {}).items():
        assert torch.equal(tensor, b["aux"][name]), name
    ra, rb = (json.loads((d / "results.json").read_text()) for d in (full, part))
    assert ra["networks"] == rb["networks"] and ra["best_top1"] == rb["best_top1"]
    assert ra["iterations"] == rb["iterations"]


def _assert_same_run(a_dir: Path, b_dir: Path) -> None:
    """Bit for bit: every network, auxiliary module and optimizer state of ``last.pth``, the
    weights files and the results."""
    a = torch.load(a_dir / "last.pth", map_location="cpu", weights_only=False)
    b = torch.load(b_dir / "last.pth", map_location="cpu", weights_only=False)
    assert a["iter"] == b["iter"] and a["networks"].keys() == b["networks"].keys()
    for key in a["networks"]:
        for name, tensor in a["networks"][key].items():
            assert torch.equal(tensor, b["networks"][key][name]), (key, name)
    for name, tensor in a.get("aux", {}).items():
        assert torch.equal(tensor, b["aux"][name]), name
    for oa, ob in zip(a["optimizers"], b["optimizers"]):
        for pid, state in oa["state"].items():
            assert all(torch.equal(v, ob["state"][pid][k]) for k, v in state.items() if torch.is_tensor(v)), pid
    assert torch.equal(a["loader_rng"], b["loader_rng"])
    ra, rb = (json.loads((d / "results.json").read_text()) for d in (a_dir, b_dir))
    assert ra["networks"] == rb["networks"] and ra["best_top1"] == rb["best_top1"]
    assert ra["iterations"] == rb["iterations"]


# 4 iterations per epoch, augmented (the loader's RNG is part of the resume), FFL: two
# optimizers, a fusion module.
MID_EPOCH = ("ffl.yaml", "train.batch_size=16", "data.augment=true", "train.epochs=2")


def _stop_in_step(monkeypatch, n: int, stop) -> None:
    """``stop()`` inside the ``n``-th training step (counting from the patch)."""
    from detkd.cls import methods

    original, calls = methods.FFLMethod.step, []

    def step(self, x, y, epoch):
        calls.append(1)
        if len(calls) == n:
            stop()
        return original(self, x, y, epoch)

    monkeypatch.setattr(methods.FFLMethod, "step", step)


def test_sigterm_mid_epoch_saves_and_resume_is_bit_identical(tmp_path, monkeypatch, capsys):
    """SIGTERM in the middle of iteration 3 of 4: last.pth at that iteration boundary, exit
    128 + 15, no results; ``--resume auto`` then ends as the uninterrupted run, bit for bit."""
    cfg, *opts = MID_EPOCH
    full, part = tmp_path / "full", tmp_path / "part"
    assert run(CFG / cfg, full, *opts) == 0
    # Delivered in the main thread: Python runs the driver's handler (which only records the
    # signal) as soon as raise_signal returns; the step goes on and the driver stops after it.
    _stop_in_step(monkeypatch, 3, lambda: signal.raise_signal(signal.SIGTERM))
    with pytest.raises(SystemExit) as stopped:
        run(CFG / cfg, part, *opts)
    monkeypatch.undo()
    assert stopped.value.code == 128 + signal.SIGTERM
    ckpt = torch.load(part / "last.pth", map_location="cpu", weights_only=False)
    assert (ckpt["epoch"], ckpt["iter"], ckpt["iter_in_epoch"]) == (0, 3, 3)
    assert not (part / "results.json").exists()
    assert f"signal {int(signal.SIGTERM)}: saved {part / 'last.pth'} at iteration 3" in (part / "log.txt").read_text()
    assert run(CFG / cfg, part, *opts, args=("--resume", "auto")) == 0
    assert "resumed from" in (part / "log.txt").read_text()
    _assert_same_run(full, part)
    # The steps of the resumed run are those the uninterrupted one logged after iteration 3.
    logged = [[m for m in read_metrics(d) if m["type"] == "train"] for d in (full, part)]
    drop = ("time", "data_time", "eta_seconds")
    assert [{k: v for k, v in m.items() if k not in drop} for m in logged[0]] == \
        [{k: v for k, v in m.items() if k not in drop} for m in logged[1]]


def test_checkpoint_period_iters_keeps_a_mid_epoch_checkpoint_that_resumes_exactly(tmp_path, monkeypatch, capsys):
    """``train.checkpoint_period_iters: 2``: a run interrupted in iteration 4 (no checkpoint of
    its own) left last.pth at iteration 2, mid-epoch, and continues from it exactly."""
    cfg, *opts = MID_EPOCH
    opts.append("train.checkpoint_period_iters=2")
    full, part = tmp_path / "full", tmp_path / "part"
    assert run(CFG / cfg, full, *opts) == 0

    def interrupt() -> None:
        raise KeyboardInterrupt

    _stop_in_step(monkeypatch, 4, interrupt)
    assert run(CFG / cfg, part, *opts) == 130
    monkeypatch.undo()
    ckpt = torch.load(part / "last.pth", map_location="cpu", weights_only=False)
    assert (ckpt["epoch"], ckpt["iter"], ckpt["iter_in_epoch"]) == (0, 2, 2)
    assert run(CFG / cfg, part, *opts, args=("--resume", "auto")) == 0
    _assert_same_run(full, part)


def test_labelled_ce_without_labels_is_zero():
    from detkd.cls.data import UNLABELLED
    from detkd.cls.methods import labelled_ce

    logits = torch.randn(4, 3, requires_grad=True)
    loss = labelled_ce(logits, torch.full((4,), UNLABELLED))
    loss.backward()
    assert loss.item() == 0.0 and torch.isfinite(logits.grad).all()


def test_models_expose_features_and_classifier():
    from detkd.cls.models import build_net

    x = torch.randn(2, 1, 32, 32)
    for arch, width in (("resnet8", 4), ("resnet18", None), ("mobilenet_v2", None)):
        net = build_net(arch, 7, in_channels=1, width=width).eval()
        with torch.no_grad():
            logits, feats = net(x, return_features=True)
            assert logits.shape == (2, 7)
            assert [f.shape[1] for f in feats] == net.feature_channels
            torch.testing.assert_close(net.classifier_from_features(feats[-1]), logits)
            torch.testing.assert_close(net(x), logits)


def _write_fake_cifar(root: Path, hundred: bool) -> None:
    rng = np.random.default_rng(0)

    def batch(n: int) -> dict:
        labels = rng.integers(0, 100 if hundred else 10, n).tolist()
        d = {b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8)}
        d[b"fine_labels" if hundred else b"labels"] = labels
        return d

    folder = root / ("cifar-100-python" if hundred else "cifar-10-batches-py")
    folder.mkdir(parents=True)
    files = ["train", "test"] if hundred else [*(f"data_batch_{i}" for i in range(1, 6)), "test_batch"]
    for f in files:
        (folder / f).write_bytes(pickle.dumps(batch(16)))


@pytest.mark.parametrize("dataset", ["cifar10", "cifar100"])
def test_cifar_pickle_files(dataset, tmp_path):
    _write_fake_cifar(tmp_path / "data", dataset == "cifar100")
    out = tmp_path / "run"
    assert run(CFG / "baseline.yaml", out, f"data.dataset={dataset}", f"data.root={tmp_path / 'data'}",
               "train.epochs=1", "data.test_subset=null") == 0
    res = assert_run_ok(out, {"student"})
    assert res["train_images"] == (64 if dataset == "cifar10" else 16) and res["test_images"] == 16
    ckpt = torch.load(out / "model_final.pth", map_location="cpu", weights_only=False)
    assert ckpt["net"]["in_channels"] == 3 and ckpt["net"]["num_classes"] == (100 if dataset == "cifar100" else 10)


def test_all_shipped_configs_load():
    for path in sorted((ROOT / "configs" / "cls").rglob("*.yaml")):
        if "_base_" not in path.parts:
            load_cls_config(path)


# ------------------------------------------------------------------------------- errors


def _error(capsys, code: int) -> str:
    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: "), err
    return err[0]


def test_error_unknown_method(capsys, tmp_path):
    msg = _error(capsys, run(CFG / "kd.yaml", tmp_path / "x", "method.name=kdd"))
    assert "method.name" in msg and "did you mean 'kd'" in msg


def test_error_unknown_config_key(capsys, tmp_path):
    msg = _error(capsys, run(CFG / "kd.yaml", tmp_path / "x", "method.temprature=3"))
    assert "unknown config key 'method.temprature'" in msg and "--opts" in msg
    bad = tmp_path / "bad.yaml"
    bad.write_text(f"_base_: {CFG / 'baseline.yaml'}\ntrain:\n  epoch: 3\n")
    msg = _error(capsys, train_cls.cli(["--cfg", str(bad)]))
    assert "unknown config key 'train.epoch'" in msg and str(bad) in msg


def test_error_teacher_checkpoint_does_not_match(capsys, tmp_path, teachers):
    # wrong arch in the config
    wrong = f"teachers=[{{arch: resnet8, width: 4, checkpoint: '{teachers['a']}'}}]"
    msg = _error(capsys, run(CFG / "kd.yaml", tmp_path / "x", wrong))
    assert "teachers[0]" in msg and "does not match its config" in msg and "arch" in msg
    # a plain state dict of another width
    sd = torch.load(teachers["b"], map_location="cpu", weights_only=False)["model"]
    plain = tmp_path / "plain.pth"
    torch.save(sd, plain)
    wrong = f"teachers=[{{arch: resnet8, width: 8, checkpoint: '{plain}'}}]"
    msg = _error(capsys, run(CFG / "kd.yaml", tmp_path / "y", wrong))
    assert "does not match its config" in msg and "shape mismatch" in msg
    # no teacher at all for a distillation method
    msg = _error(capsys, run(CFG / "kd.yaml", tmp_path / "z", "teachers=[]"))
    assert "needs exactly 1 entry in 'teachers'" in msg


def test_error_missing_cifar_files(capsys, tmp_path):
    msg = _error(capsys, run(CFG / "baseline.yaml", tmp_path / "x", "data.dataset=cifar100",
                             f"data.root={tmp_path / 'nowhere'}"))
    assert str(tmp_path / "nowhere" / "cifar-100-python" / "train") in msg


def test_error_output_dir_holds_a_run(capsys, teachers):
    msg = _error(capsys, run(CFG / "baseline.yaml", teachers["a"].parent))
    assert "already holds a run" in msg


def test_script_entry_point_one_line_error(tmp_path):
    """The script itself (subprocess): exit status 2 and one 'error:' line, no traceback."""
    proc = subprocess.run([sys.executable, str(ROOT / "tools" / "train_cls.py"), "--cfg", str(CFG / "ffl.yaml"),
                           "--output-dir", str(tmp_path / "x"), "--opts", "method.name=fffl"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [proc.stderr.strip()] and proc.stderr.startswith("error: ")
    assert "did you mean 'ffl'" in proc.stderr


def test_config_errors_are_detkd_errors():
    with pytest.raises(DetkdError, match="labelled_fraction"):
        load_cls_config(CFG / "kd.yaml", ["data.labelled_fraction=0.5"])
    with pytest.raises(DetkdError, match="'peers' is used by dml"):
        load_cls_config(CFG / "baseline.yaml", ["peers=[{arch: resnet8}]"])


def test_embedded_test_split_and_resume_hash():
    from detkd.cls.data import load_cls_data
    from detkd.cls.train import resume_hash

    full = load_cls_config(CFG / "baseline.yaml")
    small = load_cls_config(CFG / "baseline.yaml", ["data.test_split=subset"])
    d_full, d_small = load_cls_data(full.data), load_cls_data(small.data)
    # t10k: Fashion-MNIST's whole test split, 1000 per class; the subset file: 100 per class.
    assert len(d_full.test_labels) == 10000 and torch.bincount(d_full.test_labels).tolist() == [1000] * 10
    assert len(d_small.test_labels) == 1000 and torch.bincount(d_small.test_labels).tolist() == [100] * 10
    # Same training images either way; the subset's test images are among the t10k ones.
    assert torch.equal(d_full.train_images, d_small.train_images)
    full_rows = {bytes(x.numpy()) for x in d_full.test_images}
    assert all(bytes(x.numpy()) in full_rows for x in d_small.test_images[:50])
    # The test set is not part of what a last.pth means: a finished run can be re-evaluated.
    assert resume_hash(full) == resume_hash(small)
    assert resume_hash(full) != resume_hash(load_cls_config(CFG / "baseline.yaml", ["data.train_subset=500"]))


def test_reevaluate_scores_a_finished_run_on_the_new_test_set(tmp_path):
    """run_cls_experiment --reevaluate: nothing trains, the weights stay, results.json is
    rewritten for the test set the saved config gives now and the old one is kept."""
    from detkd.experiments import cls_runs as exp

    out = tmp_path / "baseline_s0"
    assert run(CFG / "baseline.yaml", out, "data.test_subset=null", "data.test_split=subset") == 0
    before = json.loads((out / "results.json").read_text())
    weights = torch.load(out / "model_final.pth", map_location="cpu", weights_only=False)["model"]
    assert before["test_images"] == 1000
    cfg = out / "config.yaml"
    cfg.write_text(cfg.read_text().replace("test_split: subset", "test_split: t10k"))  # as a new default would
    exp.reevaluate(out, 1, tmp_path / "reeval.txt")
    after = json.loads((out / "results.json").read_text())
    assert after["test_images"] == 10000 and after["iterations"] == before["iterations"]
    assert json.loads((out / "results_before_reevaluation.json").read_text()) == before
    again = torch.load(out / "model_final.pth", map_location="cpu", weights_only=False)["model"]
    assert all(torch.equal(weights[k], again[k]) for k in weights)
    assert "resumed from" in (out / "log.txt").read_text()


def test_output_dir_held_by_a_live_run_is_refused(capsys, tmp_path):
    """A second run on a directory another run holds (its RunLock) writes nothing."""
    from detkd.engine.lock import RunLock

    out = tmp_path / "held"
    with RunLock(out):
        (out / "log.txt").write_text("the other run\n")
        for args in ((), ("--resume", "auto")):
            msg = _error(capsys, run(CFG / "baseline.yaml", out, args=args))
            assert msg.startswith(f"error: output directory {out} is in use by another run (pid "), msg
        assert sorted(p.name for p in out.iterdir()) == [".lock", "log.txt"]
        assert (out / "log.txt").read_text() == "the other run\n"


def test_tensorboard_holds_every_metric(tmp_path):
    """train.tensorboard writes every field of metrics.jsonl as a scalar."""
    pytest.importorskip("tensorboard")
    from test_run_dir import assert_tensorboard_has_every_metric

    out = tmp_path / "tb"
    assert run(CFG / "baseline.yaml", out, "train.tensorboard=true", "train.epochs=1") == 0
    assert_tensorboard_has_every_metric(out)
    train = [m for m in read_metrics(out) if m["type"] == "train"]
    assert {"time", "data_time", "eta_seconds", "lr"} <= set(train[0])
