"""The training health monitor (detkd.engine.health): its rules on made-up loss sequences, and
through the real command line a dead FCOS box branch reported within the window while a healthy
run reports nothing."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import torch
import yaml

from conftest import REPO, tiny_opts
from detkd.engine.health import HealthMonitor, window_problems
from detkd.errors import DetkdError
from detkd.utils.logger import MetricsWriter

pytestmark = pytest.mark.usefixtures("one_thread")


def test_window_rules():
    rng = random.Random(0)
    alive = [1.0 + 0.01 * rng.random() for _ in range(50)]
    assert window_problems("loss_box_reg", alive, first_median=1.0) == []
    (check, message), = window_problems("bbox_regression", [1.0] * 50, None)
    assert check == "stuck" and "'bbox_regression' has stayed at 1 for 50 iterations" in message
    (check, message), = window_problems("bbox_regression", [0.0] * 50, None)
    assert check == "zero" and "no anchor or point matched a ground-truth box" in message
    assert "teacher bound never activates" in window_problems("loss_rcn_bound", [0.0] * 50, None)[0][1]
    (check, message), = window_problems("loss_pkd", [0.0] * 50, None)
    assert check == "zero" and "teacher checkpoint" in message
    (check, message), = window_problems("loss", [2000.0 + i for i in range(50)], first_median=1.5)
    assert check == "exploding" and "grew from 1.5 to 2024" in message
    assert window_problems("loss", [2.0 + i for i in range(50)], first_median=1.5) == []  # 10x is no explosion


def monitor(tmp_path, mode="warn", window=4):
    import logging

    return HealthMonitor(mode, window, logging.getLogger("test_health"), MetricsWriter(tmp_path / "metrics.jsonl"))


def test_each_problem_is_reported_once_in_the_log_and_metrics(tmp_path, caplog):
    m = monitor(tmp_path)
    for it in range(1, 13):  # three windows of 4
        m.observe(it, {"classification": torch.tensor(0.5 + 0.1 * it), "bbox_regression": torch.tensor(1.0)})
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [(r["type"], r["iter"], r["check"], r["term"]) for r in records] == [
        ("health", 4, "stuck", "bbox_regression")]
    assert sum("health: loss term 'bbox_regression' has stayed at 1" in r.message for r in caplog.records) == 1


def test_stop_ends_the_run_and_off_says_nothing(tmp_path):
    with pytest.raises(DetkdError, match=r"^train.health: stop: loss term 'loss_fgd' has been 0 for 4 iterations"):
        m = monitor(tmp_path, "stop")
        for it in range(1, 5):
            m.observe(it, {"loss_fgd": 0.0})
    quiet = monitor(tmp_path / "off", "off")
    (tmp_path / "off").mkdir()
    for it in range(1, 9):
        quiet.observe(it, {"loss_fgd": 0.0})
    assert not (tmp_path / "off" / "metrics.jsonl").exists()


def test_non_finite_windows_are_left_to_the_non_finite_guard(tmp_path):
    m = monitor(tmp_path)
    for it in range(1, 5):
        m.observe(it, {"loss": float("nan")})
    assert not (tmp_path / "metrics.jsonl").exists()


FCOS = {"arch": "fcos", "backbone": "resnet18", "weights_backbone": None, "out_channels": 64, "min_size": 96,
        "max_size": 96, "num_classes": 11}


def _train(tiny_demo_dir: Path, out: Path, cfg_file: Path, *extra: str) -> list[dict]:
    from detkd.cli import train
    from detkd.utils.cli import run_cli

    opts = [o for o in tiny_opts(tiny_demo_dir, out, **{"train.max_iters": 8, "train.health_window": 4})
            if not o.startswith("model.")]
    assert run_cli(train.main, train.build_parser(), ["--cfg", str(cfg_file), "--no-progress", "--opts", *opts,
                                                      *extra]) == 0
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.slow
def test_a_dead_fcos_box_branch_is_reported_and_a_healthy_run_is_not(tiny_demo_dir, tmp_path):
    from detkd.modeling.detector import build_detector
    from detkd.recipe import config_from_dict

    cfg_file = tmp_path / "fcos.yaml"
    cfg_file.write_text(yaml.safe_dump({
        "_base_": [str(REPO / "configs/_base_/demo_data.yaml"), str(REPO / "configs/_base_/demo_schedule.yaml")],
        "model": FCOS}))
    healthy = _train(tiny_demo_dir, tmp_path / "healthy", cfg_file)
    assert [r for r in healthy if r["type"] == "health"] == []
    # The ReLU'd ltrb outputs pushed below 0 everywhere: exactly 0, no gradient, GIoU loss 1.
    torch.manual_seed(0)
    model = build_detector(config_from_dict({"model": FCOS}).model)
    with torch.no_grad():
        model.head.regression_head.bbox_reg.bias.fill_(-100.0)
    torch.save(model.state_dict(), tmp_path / "dead.pth")
    dead = _train(tiny_demo_dir, tmp_path / "dead", cfg_file, f"model.weights={tmp_path / 'dead.pth'}")
    events = [r for r in dead if r["type"] == "health"]
    # The loss stuck at 1, and the box conv behind the ReLU without any gradient (the tower before
    # it still gets the centerness branch's).
    assert [(e["iter"], e["check"], e["term"]) for e in events] == [
        (4, "stuck", "bbox_regression"), (4, "no_gradient", "grad head.regression_head.bbox_reg")], events
    assert "model.fcos.box_output: exp" in events[1]["message"]


def _dets(boxes, labels, scores):
    return {"boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4), "labels": torch.tensor(labels),
            "scores": torch.tensor(scores, dtype=torch.float32)}


def test_a_teacher_that_finds_nothing_or_is_the_student_is_reported():
    from detkd.engine.health import teacher_problems

    gt = [{"boxes": torch.tensor([[10.0, 10, 50, 50], [60, 60, 90, 90]]), "labels": torch.tensor([1, 2])}]
    good = [_dets([[11, 10, 50, 52], [60, 61, 90, 90]], [1, 2], [0.9, 0.6])]
    student = [_dets([[0, 0, 5, 5]], [3], [0.2])]
    assert teacher_problems(good, student, gt) == []
    wrong_labels = [_dets([[11, 10, 50, 52], [60, 61, 90, 90]], [2, 1], [0.9, 0.6])]  # another label map
    low = [_dets([[11, 10, 50, 52]], [1], [0.01])]
    for teacher in (wrong_labels, low, [_dets([], [], [])]):
        assert [c for c, _ in teacher_problems(teacher, student, gt)] == ["teacher"]
    checks = [c for c, _ in teacher_problems(good, good, gt)]
    assert checks == ["teacher_is_student"]


def test_a_distillation_run_from_a_random_teacher_is_reported_before_its_first_step(tiny_demo_dir, tmp_path):
    from detkd.modeling.detector import build_detector
    from detkd.recipe import load_config

    cfg_file = REPO / "configs/demo/distill_demo.yaml"
    teacher = build_detector(load_config(cfg_file).teacher.model)
    torch.save(teacher.state_dict(), tmp_path / "random.pth")
    records = _train(tiny_demo_dir, tmp_path / "run", cfg_file, f"teacher.checkpoint={tmp_path / 'random.pth'}",
                     "train.max_iters=2")
    events = [(r["iter"], r["check"]) for r in records if r["type"] == "health"]
    assert events == [(0, "teacher")], events
    assert "health: the teacher finds 0 of the" in (tmp_path / "run" / "log.txt").read_text()


@pytest.mark.parametrize("anchor_sizes, reported", [(None, False), ([[512], [640], [768], [896], [1024]], True)])
def test_anchors_that_fit_no_box_are_reported_before_the_first_step(tiny_demo_dir, tmp_path, anchor_sizes, reported):
    """RetinaNet anchors of 512-1024 px on 96 px images overlap every box by IoU ~0 (torchvision's
    low-quality matches still give each box an anchor, so no loss term is 0 or stuck); its own
    anchors raise nothing."""
    from detkd.engine.health import anchor_fit
    from detkd.modeling.detector import build_detector
    from detkd.recipe import config_from_dict

    model = {**FCOS, "arch": "retinanet", **({"anchor_sizes": anchor_sizes} if anchor_sizes else {})}
    cfg_file = tmp_path / "retinanet.yaml"
    cfg_file.write_text(yaml.safe_dump({
        "_base_": [str(REPO / "configs/_base_/demo_data.yaml"), str(REPO / "configs/_base_/demo_schedule.yaml")],
        "model": model}))
    records = _train(tiny_demo_dir, tmp_path / "run", cfg_file)
    events = [(r["iter"], r["check"], r["term"]) for r in records if r["type"] == "health"]
    assert events == ([(0, "anchor_fit", "anchors")] if reported else []), events
    # The rule on a box that one anchor covers exactly: IoU 1.
    net = build_detector(config_from_dict({"model": model}).model)
    net.eval()
    image_list, _ = net.transform([torch.zeros(3, 96, 96)])
    feats = list(net.backbone(image_list.tensors).values())
    anchor = net.anchor_generator(image_list, feats)[0][100]
    assert anchor_fit(net, [(96, 96, anchor[None] * 96 / image_list.image_sizes[0][0])]) == pytest.approx(1.0)


def test_gradient_watch_groups_by_module_and_sees_a_disconnected_one():
    from detkd.engine.health import GradientWatch, window_problems

    net = torch.nn.ModuleDict({"used": torch.nn.Linear(3, 2), "unused": torch.nn.Linear(3, 2),
                               "frozen": torch.nn.Linear(3, 2)})
    net["frozen"].requires_grad_(False)
    watch = GradientWatch(net)
    assert watch.names == ["grad used", "grad unused"]
    x = torch.randn(4, 3)
    (net["used"](x).sum() + net["frozen"](x).sum()).backward()
    norms = watch.norms()
    want = torch.sqrt(net["used"].weight.grad.pow(2).sum()) + net["used"].bias.grad.norm()  # sum of per-param norms
    assert float(norms["grad used"]) == pytest.approx(float(want)) and float(norms["grad unused"]) == 0.0
    assert [c for c, _ in window_problems("grad unused", [0.0] * 4, None)] == ["no_gradient"]
    assert window_problems("grad used", [0.0, 0.0, 1e-9, 0.0], None) == []
    assert window_problems("grad used", [2.0] * 4, 1e-6) == []  # gradient norms: only the zero check
