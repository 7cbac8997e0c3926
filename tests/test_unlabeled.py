"""Unlabeled images (``data.unlabeled``): the images format, batches that mix both sets at a
share with exact resume, the teacher's confident detections as the hard pseudo-labels of an
unlabeled image (online and offline teachers), and the one-line refusals."""

from __future__ import annotations

import json
import shutil
from collections import Counter
from pathlib import Path

import pytest
import torch
import yaml

from conftest import REPO, tiny_opts
from detkd.config.schema import DistillConfig
from detkd.data.images import ImagesDataset
from detkd.data.mixed import MixedSampler, batch_split
from detkd.distill import Distiller
from detkd.errors import DetkdError
from detkd.modeling.families import FAMILIES, family_of_model
from detkd.recipe import config_from_dict
from test_distill_families import batch, model
from test_distill_predictions import EVERY_DETECTION

pytestmark = pytest.mark.usefixtures("one_thread")


def test_each_batch_mixes_the_sets_and_a_resumed_epoch_continues_exactly():
    s = MixedSampler(labeled=10, unlabeled=7, n_l=3, n_u=1, seed=5)
    assert s.batches() == 4 and s.per_rank() == 16
    seen_u = []
    for epoch in range(3):
        s.set_epoch(epoch)
        order = list(s)
        batches = [order[i:i + 4] for i in range(0, 16, 4)]
        assert all(all(i < 10 for i in b[:3]) and b[3] >= 10 for b in batches)
        assert set(i for b in batches for i in b[:3]) == set(range(10))  # every labeled image each epoch
        seen_u += [b[3] for b in batches]
        s.set_epoch(epoch, start=8)  # resumed after two batches
        assert list(s) == order[8:]
    counts = Counter(seen_u)  # 12 draws from the endless stream of 7: each image once or twice
    assert set(counts) == set(range(10, 17)) and max(counts.values()) - min(counts.values()) <= 1


def test_two_ranks_share_the_labeled_set_and_never_repeat_an_unlabeled_draw():
    ranks = [MixedSampler(8, 20, 2, 2, seed=0, rank=r, world_size=2) for r in (0, 1)]
    orders = [list(s) for s in ranks]
    labeled = [i for o in orders for i in o if i < 8]
    unlabeled = [i for o in orders for i in o if i >= 8]
    assert sorted(labeled) == list(range(8)) and len(set(unlabeled)) == len(unlabeled) == 8


@pytest.mark.parametrize("share, want", [(None, (3, 1)), (0.5, (2, 2)), (0.99, (3, 1)), (0.01, (3, 1))])
def test_the_batch_split(share, want):
    # None: the sets' size ratio (10 vs 3 -> 1 of 4); at least one of each.
    assert batch_split(4, share, 10, 3) == (want if share != 0.99 else (1, 3))
    with pytest.raises(ValueError, match="train.batch_size >= 2"):
        batch_split(1, None, 10, 3)


def test_the_images_format_reads_a_folder_or_a_glob(tiny_demo_dir, tmp_path):
    files = sorted((tiny_demo_dir / "val").glob("*.jpg"))
    by_folder = ImagesDataset(root=str(tiny_demo_dir / "val"))
    by_glob = ImagesDataset(pattern=str(tiny_demo_dir / "val" / "*.jpg"))
    assert [r.file for r in by_folder.records] == [r.file for r in by_glob.records] == files
    image, target = by_folder[0]
    assert image.shape[0] == 3 and target["boxes"].shape == (0, 4) and by_folder.class_names == []
    (tmp_path / "empty").mkdir()
    for kwargs, message in (({"root": str(tmp_path / "nowhere")}, "images folder not found"),
                            ({"root": str(tmp_path / "empty")}, "no image files"),
                            ({}, "exactly one of 'root'")):
        with pytest.raises(DetkdError, match=message):
            ImagesDataset(**kwargs)


def with_unlabeled(targets, which):
    return [{**t, "unlabeled": torch.tensor(i in which)} for i, t in enumerate(targets)]


def seen_targets(d):
    """The targets the student's training forward receives (its family's train_step)."""
    family = d.student_family
    seen = {}
    original = family.train_step

    def recording(student, images, targets):
        seen["targets"] = targets
        return original(student, images, targets)

    d.student_family = type("Recorded", (), {"train_step": staticmethod(recording), "name": family.name})()
    return seen


def test_an_online_teacher_labels_the_unlabeled_images_with_its_confident_detections():
    student, teacher = model("fcos", 0), model("retinanet", 1)
    images, targets = batch()
    d = Distiller(student, teacher, DistillConfig(pseudo_thresh=0.005, methods={"predictions": EVERY_DETECTION}))
    d.train()
    seen = seen_targets(d)
    losses = d(images, with_unlabeled(targets, {1}))
    teacher.eval()
    post = family_of_model(teacher).postprocessor(teacher)
    assert post.score_thresh == 0.05  # the Distiller restored its own (0.005 while it labelled)
    post.score_thresh = 0.005
    with torch.no_grad():
        found = teacher([images[1]])[0]
    wide = ((found["boxes"][:, 2:] - found["boxes"][:, :2]) >= 1.0).all(dim=1)  # thinner: no usable box
    keep = (found["scores"] >= 0.005) & (found["labels"] > 0) & wide
    got = seen["targets"][1]
    assert keep.sum() > 0 and torch.equal(got["labels"], found["labels"][keep])
    assert torch.allclose(got["boxes"], found["boxes"][keep])
    assert torch.equal(seen["targets"][0]["boxes"], targets[0]["boxes"])  # a labeled image keeps its own
    assert d.last_stats["pseudo_boxes"] == keep.sum() and all(torch.isfinite(v) for v in losses.values())


def test_an_offline_teacher_labels_them_from_its_file_detections():
    student = model("fcos", 0)
    images, targets = batch()
    dets = {"teacher_boxes": torch.tensor([[10.0, 10, 50, 60], [30, 40, 90, 95]]),
            "teacher_labels": torch.tensor([2, 3]), "teacher_scores": torch.tensor([0.9, 0.4])}
    targets = [{**t, **dets} for t in targets]
    d = Distiller(student, None, DistillConfig(methods={"predictions": EVERY_DETECTION})).train()
    seen = seen_targets(d)
    d(images, with_unlabeled(targets, {0}))
    assert torch.equal(seen["targets"][0]["boxes"], dets["teacher_boxes"][:1])  # 0.9 >= 0.5; 0.4 is not
    assert torch.equal(seen["targets"][0]["labels"], torch.tensor([2]))


def _tree(tiny_demo_dir: Path, **data) -> dict:
    return {"data": {"demo": {"out_dir": str(tiny_demo_dir)}, **data},
            "model": {"arch": "fcos", "num_classes": 11}}


def test_unlabeled_images_without_a_teacher_and_a_bad_share_are_one_line(tiny_demo_dir):
    unlabeled = {"type": "images", "root": str(tiny_demo_dir / "val")}
    with pytest.raises(DetkdError, match="run.yaml: data.unlabeled needs a teacher"):
        config_from_dict(_tree(tiny_demo_dir, unlabeled=unlabeled), source="run.yaml")
    with pytest.raises(DetkdError, match=r"'data.unlabeled_share' must be .*1"):
        config_from_dict(_tree(tiny_demo_dir, unlabeled=unlabeled, unlabeled_share=1.0), source="run.yaml")
    with pytest.raises(DetkdError, match=r"run.yaml: unknown config key 'data.unlabeled.roots' "
                                         r"\(did you mean 'root'\?\)"):
        config_from_dict(_tree(tiny_demo_dir, unlabeled={"type": "images", "roots": "x"}), source="run.yaml")


def _offline_unlabeled_run(tiny_demo_dir: Path, tmp_path: Path) -> Path:
    """A config: an FCOS student, the 16 tiny demo training images labeled and 4 other images
    (val images under new names) unlabeled, half of each batch; the teacher a detections file of
    one box per image on both sets."""
    unlabeled = tmp_path / "unlabeled"
    unlabeled.mkdir()
    for p in sorted((tiny_demo_dir / "val").glob("*.jpg"))[:4]:
        shutil.copy(p, unlabeled / f"u_{p.name}")
    classes = json.loads((tiny_demo_dir / "annotations" / "instances_train.json").read_text())["categories"]
    name = classes[0]["name"]
    dets = [{"file_name": p.name, "category_name": name, "bbox": [10, 10, 40, 40], "score": 0.9}
            for folder in (tiny_demo_dir / "train", unlabeled) for p in sorted(folder.glob("*.jpg"))]
    (tmp_path / "dets.json").write_text(json.dumps(dets))
    cfg_file = tmp_path / "cfg.yaml"
    cfg_file.write_text(yaml.safe_dump({
        "_base_": [str(REPO / "configs/_base_/demo_data.yaml")],
        "data": {"unlabeled": {"type": "images", "root": str(unlabeled)}, "unlabeled_share": 0.5},
        "model": {"arch": "fcos", "num_classes": 11, "backbone": "resnet18", "weights_backbone": None,
                  "out_channels": 64, "min_size": 96, "max_size": 96},
        "teacher": {"detections": str(tmp_path / "dets.json")}, "distill": {"predictions": {}}}))
    return cfg_file


def _opts(tiny_demo_dir: Path, out: Path, **extra) -> list[str]:
    return [o for o in tiny_opts(tiny_demo_dir, out, **{"train.log_interval": 1, **extra}) if not o.startswith("model.")]


def test_a_student_distils_on_labeled_and_unlabeled_images_from_a_detections_file(tiny_demo_dir, tmp_path):
    """End to end: the log and metrics count the pseudo-boxes (one per unlabeled image)."""
    from detkd.cli import train
    from detkd.utils.cli import run_cli

    cfg_file = _offline_unlabeled_run(tiny_demo_dir, tmp_path)
    out = tmp_path / "run"
    argv = ["--cfg", str(cfg_file), "--no-progress", "--opts", *_opts(tiny_demo_dir, out, **{"train.max_iters": 2})]
    assert run_cli(train.main, train.build_parser(), argv) == 0
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    steps = [x for x in lines if x.get("type") == "train"]
    assert steps and all(x["pseudo_boxes"] == 1.0 and x["unlabeled_images"] == 1.0 for x in steps), steps
    log = (out / "log.txt").read_text()
    assert "unlabeled: images" in log and "pseudo_boxes=1" in log


def test_a_resumed_mixed_run_is_bit_identical_across_an_epoch_boundary(tiny_demo_dir, tmp_path):
    """16 labeled images at 2 per batch: 8 steps an epoch; stopped after 5, resumed to 11."""
    from detkd.engine.checkpoint import load_checkpoint
    from detkd.engine.trainer import train
    from detkd.recipe import load_config

    cfg_file = _offline_unlabeled_run(tiny_demo_dir, tmp_path)
    train(load_config(cfg_file, _opts(tiny_demo_dir, tmp_path / "full", **{"train.max_iters": 11})), progress=False)
    train(load_config(cfg_file, _opts(tiny_demo_dir, tmp_path / "part", **{"train.max_iters": 5})), progress=False)
    assert load_checkpoint(tmp_path / "part" / "last.pth")["iter_in_epoch"] == 5
    train(load_config(cfg_file, _opts(tiny_demo_dir, tmp_path / "part", **{"train.max_iters": 11})), resume="auto",
          progress=False)
    a = torch.load(tmp_path / "full" / "model_final.pth", weights_only=True)
    b = torch.load(tmp_path / "part" / "model_final.pth", weights_only=True)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
