"""An offline teacher (``teacher.detections``): the detections any detector wrote, carried by the
training set through the same augmentation as the ground truth, distilled by
``distill.predictions`` exactly as the same detections from an online teacher are; and the config
and file errors, one line each, before anything is written."""

from __future__ import annotations

import copy
import json
from dataclasses import replace
from pathlib import Path

import pytest
import torch
import yaml

from conftest import REPO, tiny_opts
from detkd.config.schema import DistillConfig
from detkd.distill import Distiller
from detkd.errors import DetkdError
from detkd.modeling.families import family_of_model
from detkd.recipe import config_from_dict
from test_distill_families import batch, model
from test_distill_predictions import EVERY_DETECTION

pytestmark = pytest.mark.usefixtures("one_thread")

ALL = replace(EVERY_DETECTION, max_detections=1000)  # no cut: both paths keep every detection


def with_teacher(targets, detections):
    """The targets as the training set gives them with an offline teacher: its detections in
    the image's own pixels."""
    return [{**t, "teacher_boxes": d["boxes"], "teacher_labels": d["labels"], "teacher_scores": d["scores"]}
            for t, d in zip(targets, detections)]


@pytest.mark.parametrize("student_arch", ["retinanet", "fcos"])
def test_a_file_of_the_teachers_detections_distils_as_the_online_teacher(student_arch):
    """Images of 100x120 px, student frame 128 px: the offline path scales the image-frame
    detections into the student's frame as the online teacher's are. (An SSD student is left
    out: the online teacher sees its warped batch, so it finds other boxes than on the image. Not
    a random FCOS teacher: its boxes are points of the student's own grid, where float noise
    decides the match.)"""
    teacher = model("retinanet", 1)
    student = model(student_arch, 0)
    images, targets = batch()
    online = Distiller(copy.deepcopy(student), teacher, DistillConfig(methods={"predictions": ALL})).train()
    want = online(images, targets)
    teacher.eval()
    post = family_of_model(teacher).postprocessor(teacher)
    post.score_thresh, post.detections_per_img = ALL.score_thresh, ALL.max_detections
    with torch.no_grad():
        found = teacher(images)  # the image's own pixels, as detkd predict writes them
    offline = Distiller(student, None, DistillConfig(methods={"predictions": ALL})).train()
    got = offline(images, with_teacher(targets, found))
    assert list(got) == list(want)
    for k in want:  # the same detections through two frame mappings: float noise only
        assert torch.allclose(got[k], want[k], rtol=1e-4, atol=1e-6), (k, got[k], want[k])
    assert offline.last_stats["predictions_teacher_boxes"] == online.last_stats["predictions_teacher_boxes"] > 0
    sum(got.values()).backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in student.parameters())


@pytest.mark.parametrize("student_arch", ["ssdlite", "ssd"])
def test_an_ssd_student_learns_from_a_file_in_its_warped_frame(student_arch):
    student = model(student_arch, 0)
    images, targets = batch()  # 100x120 and 120x100 px, warped to 128x128
    box = torch.tensor([[10.0, 20, 60, 100]])
    one = {"boxes": box, "labels": torch.tensor([2]), "scores": torch.tensor([0.8])}
    d = Distiller(student, None, DistillConfig(methods={"predictions": EVERY_DETECTION})).train()
    rec = {}
    method = d.methods["predictions"]
    step = method.teacher_step
    method.teacher_step = lambda r, t, f: rec.setdefault("out", step(r, t, f))
    losses = d(images, with_teacher(targets, [one, one]))
    (b0, _, _), (b1, _, _) = rec["out"]
    assert torch.allclose(b0, box * torch.tensor([128 / 120, 128 / 100] * 2))  # x by W, y by H
    assert torch.allclose(b1, box * torch.tensor([128 / 100, 128 / 120] * 2))
    assert all(torch.isfinite(v) for v in losses.values()) and losses["loss_predictions_reg"] > 0


def test_the_offline_teacher_keeps_the_best_above_its_score_threshold():
    student = model("retinanet", 0)
    images, targets = batch()
    boxes = torch.tensor([[10.0, 10, 50, 60], [30, 40, 90, 95], [5, 5, 20, 20]])
    detections = [{"boxes": boxes, "labels": torch.tensor([1, 2, 3]), "scores": torch.tensor([0.9, 0.2, 0.5])},
                  {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64),
                   "scores": torch.zeros(0)}]
    section = replace(EVERY_DETECTION, score_thresh=0.3, max_detections=1)
    d = Distiller(student, None, DistillConfig(methods={"predictions": section})).train()
    d(images, with_teacher(targets, detections))
    assert d.last_stats["predictions_teacher_boxes"] == 0.5  # one box (0.9) on image 0, none on image 1
    with pytest.raises(DetkdError, match="the batch carries no teacher detections"):
        d(images, targets)


def test_a_method_that_needs_the_teacher_model_is_refused_with_an_offline_teacher():
    with pytest.raises(DetkdError, match="distill.pkd needs the teacher model"):
        Distiller(model("retinanet", 0), None, DistillConfig(methods={"pkd": {}}))


def _demo_tree(tiny_demo_dir: Path, **teacher) -> dict:
    return {"_base_": [str(REPO / "configs/_base_/demo_data.yaml")],
            "data": {"demo": {"out_dir": str(tiny_demo_dir), "num_train": 16, "num_val": 8, "image_size": 96}},
            "model": {"arch": "fcos", "num_classes": 11, "backbone": "resnet18", "weights_backbone": None,
                      "out_channels": 64, "min_size": 96, "max_size": 96},
            "teacher": teacher, "distill": {"predictions": {}}}


def _plain(tree: dict) -> dict:
    return {k: v for k, v in tree.items() if k != "_base_"}


def gt_as_detections(dataset, path: Path) -> Path:
    """The training set's own boxes as a COCO results file by file and category name."""
    names = dataset.class_names
    dets = [{"file_name": r.file.name, "category_name": names[int(lab) - 1],
             "bbox": [float(b[0]), float(b[1]), float(b[2] - b[0]), float(b[3] - b[1])], "score": 0.9}
            for r in dataset.records for b, lab in zip(r.boxes, r.labels)]
    path.write_text(json.dumps(dets))
    return path


def test_teacher_boxes_go_through_every_augmentation_as_the_ground_truth(tiny_demo_dir, tmp_path):
    """Flips and a zoom that crops boxes away: a teacher box equal to a ground-truth box stays
    equal to it, and is dropped with it."""
    from detkd.data.build import build_dataset
    from detkd.recipe.load import load_config

    cfg_file = tmp_path / "cfg.yaml"
    cfg_file.write_text(yaml.safe_dump(_demo_tree(tiny_demo_dir, detections=str(tmp_path / "dets.json"))))
    cfg = load_config(cfg_file, ["data.augment.hflip=0.5", "data.augment.scale_jitter=[0.6,2.5]"])
    plain = build_dataset(cfg.data.train, cfg.data, train=False)
    gt_as_detections(plain, tmp_path / "dets.json")
    train = build_dataset(cfg.data.train, cfg.data, train=True, seed=0, teacher=cfg.teacher)
    assert train.stats["teacher_boxes"] == train.stats["boxes"] > 0
    dropped = 0
    for epoch in range(3):
        train.set_epoch(epoch)
        for i in range(len(train)):
            _, t = train[i]
            assert torch.equal(t["teacher_labels"], t["labels"]) and torch.equal(t["teacher_boxes"], t["boxes"])
            assert torch.all(t["teacher_scores"] == 0.9)
            dropped += len(plain.records[i].boxes) - len(t["boxes"])
    assert dropped > 0  # the zoom cropped boxes away: the case is exercised


@pytest.mark.parametrize("teacher, message", [
    ({"detections": "d.json", "checkpoint": "t.pth"}, "teacher.detections and teacher.checkpoint are exclusive"),
    ({}, r"'teacher.checkpoint' is required for a distillation run \(or teacher.detections"),
])
def test_teacher_sources_are_checked_in_one_line(tiny_demo_dir, teacher, message):
    with pytest.raises(DetkdError, match=message):
        config_from_dict(_plain(_demo_tree(tiny_demo_dir, **teacher)), source="run.yaml")


def test_an_offline_teacher_with_a_feature_method_is_refused(tiny_demo_dir):
    tree = _demo_tree(tiny_demo_dir, detections="dets.json")
    tree["distill"]["pkd"] = {}
    with pytest.raises(DetkdError, match=r"run.yaml: distill.pkd needs the teacher model \(teacher.config and "
                                         r"teacher.checkpoint\); teacher.detections dets.json feeds only "
                                         r"distill.predictions"):
        config_from_dict(_plain(tree), source="run.yaml")


@pytest.mark.parametrize("content, message", [
    (None, "no such file or folder"),
    ("[]", "no detections"),
    ('[{"file_name": "nope.jpg", "category_name": "Dress", "bbox": [1, 1, 5, 5], "score": 0.5}]',
     "1 detection with images that are not in the training set"),
])
def test_a_bad_detections_file_stops_the_run_before_anything_is_written(tiny_demo_dir, tmp_path, content, message):
    from detkd.cli import train
    from detkd.utils.cli import run_cli

    dets = tmp_path / "dets.json"
    if content is not None:
        dets.write_text(content)
    cfg_file = tmp_path / "cfg.yaml"
    cfg_file.write_text(yaml.safe_dump(_demo_tree(tiny_demo_dir, detections=str(dets))))
    out = tmp_path / "run"
    opts = [o for o in tiny_opts(tiny_demo_dir, out) if not o.startswith("model.")]
    with pytest.raises(DetkdError, match=message):
        train.main(train.build_parser().parse_args(["--cfg", str(cfg_file), "--no-progress", "--opts", *opts]))
    assert not out.exists()
    assert run_cli(train.main, train.build_parser(), ["--cfg", str(cfg_file), "--no-progress", "--opts", *opts]) != 0
