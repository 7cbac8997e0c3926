"""Bad input through the real command line.

Each case runs ``tools/train_det.py`` (or ``tools/eval_det.py``) as a subprocess and expects a
non-zero exit, one last stderr line ``error: ...`` naming the problem, no traceback, and the
output directory it was pointed at unchanged: every file that was there keeps its checksum and
nothing is added. The output directory holds a previous attempt's files (``log.txt``,
``config.yaml``, ...) or, for the resume cases, a finished run. Cases whose problem only shows
when an image is loaded, in the training loop, may append to ``log.txt`` and rewrite
``config.yaml`` but must leave every other file alone and write no checkpoint.

docs/errors.md lists every case with its message. The subprocesses (3-8 s of CPU each, mostly
imports) run two at a time from a module fixture; each test checks one result.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import REPO, tiny_opts

TRAIN = REPO / "tools" / "train_det.py"
EVAL = REPO / "tools" / "eval_det.py"
PLAIN = REPO / "configs" / "demo" / "faster_rcnn_demo.yaml"
DISTILL = REPO / "configs" / "demo" / "distill_demo.yaml"
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
CLASSES = ["cat", "dog"]


# ----------------------------------------------------------------------------- tiny datasets


def write_coco(root: Path, n: int = 4) -> tuple[Path, Path]:
    """``n`` 64x64 PNG images with one 30x30 box each, categories 1 (cat) and 2 (dog)."""
    images = root / "images"
    images.mkdir(parents=True)
    rng = np.random.default_rng(0)
    categories = [{"id": i + 1, "name": c} for i, c in enumerate(CLASSES)]
    data: dict = {"images": [], "annotations": [], "categories": categories}
    for i in range(n):
        Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(images / f"{i}.png")
        data["images"].append({"id": i + 1, "file_name": f"{i}.png", "width": 64, "height": 64})
        data["annotations"].append({"id": i + 1, "image_id": i + 1, "category_id": 1 + i % 2,
                                    "bbox": [8, 8 + i, 30, 30], "area": 900, "iscrowd": 0})
    ann = root / "ann.json"
    ann.write_text(json.dumps(data))
    return images, ann


def write_voc(root: Path, n: int = 4) -> Path:
    """A VOC2007-style tree: ``n`` 64x64 JPEGs, one object each."""
    for sub in ("Annotations", "JPEGImages", "ImageSets/Main"):
        (root / sub).mkdir(parents=True)
    names = [f"{i:06d}" for i in range(1, n + 1)]
    for i, name in enumerate(names):
        Image.new("RGB", (64, 64), (40 * i, 90, 160)).save(root / "JPEGImages" / f"{name}.jpg")
        (root / "Annotations" / f"{name}.xml").write_text(
            "<annotation><size><width>64</width><height>64</height><depth>3</depth></size>"
            f"<object><name>{CLASSES[i % 2]}</name><difficult>0</difficult><bndbox><xmin>5</xmin><ymin>5</ymin>"
            "<xmax>40</xmax><ymax>40</ymax></bndbox></object></annotation>")
    (root / "ImageSets" / "Main" / "trainval.txt").write_text("\n".join(names) + "\n")
    return root


def coco_opts(images: Path, ann: Path, val_ann: Path | None = None) -> list[str]:
    return ["data.train.type=coco", f"data.train.image_dir={images}", f"data.train.ann_file={ann}",
            "data.val.type=coco", f"data.val.image_dir={images}", f"data.val.ann_file={val_ann or ann}",
            "model.num_classes=3", "model.min_size=64", "model.max_size=64"]


def voc_opts(root: Path) -> list[str]:
    opts = []
    for split in ("train", "val"):
        opts += [f"data.{split}.type=voc", f"data.{split}.root={root}", f"data.{split}.split=trainval",
                 f"data.{split}.classes=[{','.join(CLASSES)}]"]
    return opts + ["model.num_classes=3", "model.min_size=64", "model.max_size=64"]


# ----------------------------------------------------------------------------- the cases


@dataclass
class Ctx:
    """What a case may use: its own directory, the shared tiny demo data, a teacher, a run."""

    tmp: Path
    demo: Path
    teacher: Path  # model_final.pth + classes.json of an (untrained) demo teacher
    teacher_6cls: Path  # the same teacher with 6 classes
    run: Path  # a finished run (max_iters=2) of the plain demo config
    out: Path = field(init=False)  # the output directory the case points the tool at

    def __post_init__(self) -> None:
        # A previous attempt's files (no checkpoint: a fresh run may use the directory).
        self.out = self.tmp / "out"
        self.out.mkdir()
        (self.out / "log.txt").write_text("12:00:00 INFO an earlier attempt\n")
        (self.out / "config.yaml").write_text("# an earlier attempt's config\n")
        (self.out / "classes.json").write_text(json.dumps(CLASSES))
        (self.out / "metrics.jsonl").write_text('{"type": "train", "iter": 1, "loss": 1.0}\n')
        (self.out / "notes.txt").write_text("keep me\n")

    def train(self, *opts: str, cfg: Path = PLAIN, args: tuple[str, ...] = ()) -> list[str]:
        return [str(TRAIN), "--cfg", str(cfg), "--no-progress", *args, "--opts", *tiny_opts(self.demo, self.out),
                *opts]

    def coco(self) -> tuple[Path, Path, dict]:
        images, ann = write_coco(self.tmp / "coco")
        return images, ann, json.loads(ann.read_text())

    def distill(self, *opts: str) -> list[str]:
        return self.train(f"teacher.checkpoint={self.teacher / 'model_final.pth'}", *opts, cfg=DISTILL)

    def resume(self, *args: str, opts: tuple[str, ...] = ()) -> list[str]:
        """The finished run's command, pointed at a copy of it."""
        self.out = self.tmp / "run"
        shutil.copytree(self.run, self.out)
        return self.train("train.max_iters=2", *opts, args=args)


@dataclass
class Case:
    argv: list[str]
    expect: str  # a fragment of the error line
    started: bool = False  # the problem shows only in the training loop


def _yaml(ctx: Ctx, text: str) -> Path:
    path = ctx.tmp / "cfg.yaml"
    path.write_text(text)
    return path


def unknown_key_in_file(ctx):
    cfg = _yaml(ctx, f"_base_: {PLAIN}\nmodel:\n  num_clases: 3\n")
    return Case(ctx.train(cfg=cfg), f"{cfg}: unknown config key 'model.num_clases' (did you mean 'num_classes'?)")


def mistyped_opts_key(ctx):
    return Case(ctx.train("train.epoch=3"), "--opts: unknown config key 'train.epoch' (did you mean 'epochs'?)")


def wrong_type(ctx):
    return Case(ctx.train("train.batch_size=two"), "'train.batch_size': expected an integer, got 'two'")


def out_of_range(ctx):
    return Case(ctx.train("train.optimizer.lr=-0.1"), "'train.optimizer.lr' must be > 0, got -0.1")


def negative_checkpoint_period(ctx):
    return Case(ctx.train("train.checkpoint_period_iters=-1"), "'train.checkpoint_period_iters' must be >= 0, got -1")


def missing_config_file(ctx):
    path = ctx.tmp / "nope.yaml"
    return Case(ctx.train(cfg=path), f"config file not found: {path}")


def missing_base_file(ctx):
    cfg = _yaml(ctx, "_base_: gone.yaml\n")
    return Case(ctx.train(cfg=cfg), f"{cfg}: _base_ file not found: {ctx.tmp / 'gone.yaml'}")


def yaml_syntax_error(ctx):
    cfg = _yaml(ctx, f"_base_: {PLAIN}\nmodel: {{num_classes: 3\ntrain: {{}}\n")
    return Case(ctx.train(cfg=cfg), f"{cfg}: invalid YAML (line 3)")


def missing_annotation_file(ctx):
    images, ann, _ = ctx.coco()
    return Case(ctx.train(*coco_opts(images, ann.with_name("gone.json"))),
                f"annotation file not found: {ann.with_name('gone.json')}")


def truncated_coco_json(ctx):
    images, ann, _ = ctx.coco()
    ann.write_text(ann.read_text()[:200])
    return Case(ctx.train(*coco_opts(images, ann)), f"corrupt COCO annotation file {ann}: ")


def unknown_category_id(ctx):
    images, ann, data = ctx.coco()
    data["annotations"][2]["category_id"] = 99
    ann.write_text(json.dumps(data))
    return Case(ctx.train(*coco_opts(images, ann)), f"{ann}: annotation id 3 references unknown category id 99")


def missing_image_files(ctx):
    images, ann, _ = ctx.coco()
    (images / "1.png").unlink()
    (images / "3.png").unlink()
    return Case(ctx.train(*coco_opts(images, ann)),
                f"image file not found: {images / '1.png'} (image id 2; 2 of 4 image files missing)")


def val_image_size_differs_from_its_annotation(ctx):
    """Caught before the first step (not at the first evaluation, after training): nothing written."""
    images, ann, data = ctx.coco()
    data["images"][2]["width"] = 80
    val = ann.with_name("val.json")
    val.write_text(json.dumps(data))
    return Case(ctx.train(*coco_opts(images, ann, val)),
                f"image {images / '2.png'} is 64x64 but its annotation says 80x64 (COCO val.json; 1 of 4 images differ); "
                "the boxes refer to that size")


def corrupt_image_in_loader_worker(ctx):
    images, ann, data = ctx.coco()
    (images / "2.png").write_bytes(b"these bytes are not an image")
    # A val set without it (a corrupt val image is refused before training, with the same words).
    data["images"] = [i for i in data["images"] if i["file_name"] != "2.png"]
    data["annotations"] = [a for a in data["annotations"] if a["image_id"] in {i["id"] for i in data["images"]}]
    val = ann.with_name("val.json")
    val.write_text(json.dumps(data))
    # workers=1: the error comes back through a DataLoader worker process.
    return Case(ctx.train(*coco_opts(images, ann, val), "train.workers=1"),
                f"cannot read image {images / '2.png'}: not an image file PIL can identify", started=True)


def truncated_image(ctx):
    images, ann, _ = ctx.coco()
    png = (images / "2.png").read_bytes()
    (images / "2.png").write_bytes(png[: len(png) // 2])
    return Case(ctx.train(*coco_opts(images, ann)), f"cannot read image {images / '2.png'}: image file is truncated",
                started=True)


def dataset_without_images(ctx):
    images, ann, data = ctx.coco()
    empty = ann.with_name("empty.json")
    empty.write_text(json.dumps({**data, "images": [], "annotations": []}))
    return Case(ctx.train(*coco_opts(images, empty, val_ann=ann)), f"the training set is empty (coco: {empty}; ")


def every_image_filtered(ctx):
    images, ann, data = ctx.coco()
    for a in data["annotations"]:
        a["bbox"][2] = 0  # zero width: dropped, which leaves every image empty
    ann.write_text(json.dumps(data))
    return Case(ctx.train(*coco_opts(images, ann), "data.train.skip_empty=true"),
                f"the training set is empty (coco: {ann}; COCO ann.json: images=0, boxes=0, clipped=0, "
                "dropped_degenerate=4, crowd_ignored=0, empty_images=4, empty_images_skipped=4)")


def fewer_model_classes_than_data(ctx):
    images, ann, _ = ctx.coco()
    return Case(ctx.train(*coco_opts(images, ann), "model.num_classes=2"),
                "the training data has 2 classes but model.num_classes is 2; it counts the background too: set it to 3")


def corrupt_voc_xml(ctx):
    root = write_voc(ctx.tmp / "VOC2007")
    xml = root / "Annotations" / "000002.xml"
    xml.write_text("<annotation><object><name>cat</name>")
    return Case(ctx.train(*voc_opts(root)), f"corrupt VOC annotation file {xml}: ")


def voc_unknown_class(ctx):
    root = write_voc(ctx.tmp / "VOC2007")
    xml = root / "Annotations" / "000003.xml"
    xml.write_text(xml.read_text().replace("<name>cat</name>", "<name>unicorn</name>"))
    return Case(ctx.train(*voc_opts(root)), f"{xml}: unknown class name 'unicorn'")


def voc_missing_image(ctx):
    root = write_voc(ctx.tmp / "VOC2007")
    (root / "JPEGImages" / "000004.jpg").unlink()
    return Case(ctx.train(*voc_opts(root)),
                f"image file not found: {root / 'JPEGImages' / '000004.jpg'} (1 of 4 image files missing)")


def teacher_checkpoint_missing(ctx):
    path = ctx.tmp / "teacher" / "model_final.pth"
    return Case(ctx.train(f"teacher.checkpoint={path}", cfg=DISTILL), f"weight file not found: {path}")


def teacher_checkpoint_not_its_config(ctx):
    return Case(ctx.distill("teacher.model.out_channels=64"),
                f"teacher.checkpoint {ctx.teacher / 'model_final.pth'} does not match the model config: ")


def teacher_student_class_count(ctx):
    return Case(ctx.train(f"teacher.checkpoint={ctx.teacher_6cls / 'model_final.pth'}", "teacher.model.num_classes=6",
                          cfg=DISTILL),
                "teacher and student class counts differ: teacher.model.num_classes gives 6, "
                "model.num_classes gives 11")


def teacher_label_map(ctx):
    other = ctx.tmp / "teacher"
    shutil.copytree(ctx.teacher, other)
    names = json.loads((other / "classes.json").read_text())
    (other / "classes.json").write_text(json.dumps(names[::-1]))
    return Case(ctx.train(f"teacher.checkpoint={other / 'model_final.pth'}", cfg=DISTILL),
                f"the teacher {other / 'model_final.pth'} was trained with another label map than the student's data "
                f"(label 1: teacher '{names[-1]}' vs student '{names[0]}'")


def hint_level_missing(ctx):
    return Case(ctx.distill("distill.chen.hint_levels=['7']"),
                "distill.chen.hint_levels: level '7' is not a student feature map")


def output_dir_holds_another_run(ctx):
    argv = ctx.resume()
    return Case(argv, f"output directory {ctx.out} already holds a run (last.pth, ")


def resume_with_other_config(ctx):
    return Case(ctx.resume("--resume", "auto", opts=("model.box_score_thresh=0.3",)),
                "was made with a different config (hash ")


def resume_from_weights_only(ctx):
    path = ctx.tmp / "run" / "model_final.pth"
    return Case(ctx.resume("--resume", str(path)),
                f"{path} holds weights only (a plain state dict, no optimizer state)")


def resume_path_missing(ctx):
    path = ctx.tmp / "run" / "lats.pth"
    return Case(ctx.resume("--resume", str(path)), f"checkpoint not found: {path}")


def resume_from_truncated_checkpoint(ctx):
    path = ctx.tmp / "torn.pth"
    path.write_bytes((ctx.run / "last.pth").read_bytes()[:100_000])
    return Case(ctx.resume("--resume", str(path)), f"cannot read checkpoint {path}: ")


def resume_auto_with_only_a_torn_checkpoint(ctx):
    # Starting from scratch here would overwrite the (torn) last.pth without a word.
    argv = ctx.resume("--resume", "auto")
    last = ctx.out / "last.pth"
    last.write_bytes(last.read_bytes()[:100_000])
    return Case(argv, f"--resume auto: no usable checkpoint in {ctx.out} (cannot read checkpoint {last}: ")


def eval_checkpoint_not_its_config(ctx):
    ckpt = ctx.teacher / "model_final.pth"  # the teacher's weights; the config is the student's
    return Case([str(EVAL), "--cfg", str(PLAIN), "--ckpt", str(ckpt), "--no-progress", "--opts",
                 *tiny_opts(ctx.demo, ctx.out)], f"checkpoint {ckpt} does not match the model config: ")


CASES: dict[str, Callable[[Ctx], Case]] = {f.__name__: f for f in (
    unknown_key_in_file, mistyped_opts_key, wrong_type, out_of_range, negative_checkpoint_period,
    missing_config_file, missing_base_file, yaml_syntax_error,
    missing_annotation_file, truncated_coco_json, unknown_category_id, missing_image_files,
    val_image_size_differs_from_its_annotation,
    corrupt_image_in_loader_worker, truncated_image, dataset_without_images, every_image_filtered,
    fewer_model_classes_than_data,
    corrupt_voc_xml, voc_unknown_class, voc_missing_image,
    teacher_checkpoint_missing, teacher_checkpoint_not_its_config, teacher_student_class_count,
    teacher_label_map, hint_level_missing,
    output_dir_holds_another_run, resume_with_other_config, resume_from_weights_only, resume_path_missing,
    resume_from_truncated_checkpoint, resume_auto_with_only_a_torn_checkpoint,
    eval_checkpoint_not_its_config,
)}


# ----------------------------------------------------------------------------- running them


def checksums(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


@dataclass
class Outcome:
    case: Case
    out: Path
    before: dict[str, str]
    proc: subprocess.CompletedProcess


def _run(ctx: Ctx, make: Callable[[Ctx], Case]) -> Outcome:
    case = make(ctx)
    before = checksums(ctx.out)
    proc = subprocess.run([sys.executable, *case.argv], env=ENV, cwd=ctx.tmp, capture_output=True, text=True,
                          timeout=300)
    return Outcome(case, ctx.out, before, proc)


@pytest.fixture(scope="module")
def shared(tiny_demo_dir, tmp_path_factory) -> dict[str, Path]:
    """A finished run and two untrained demo teachers (10 and 6 classes), made in-process."""
    from detkd.recipe import load_config
    from detkd.engine.trainer import train
    from detkd.modeling.detector import build_detector

    root = tmp_path_factory.mktemp("shared")
    run = root / "run"
    train(load_config(PLAIN, tiny_opts(tiny_demo_dir, run, **{"train.max_iters": 2})), progress=False)
    names = json.loads((run / "classes.json").read_text())
    cfg = load_config(DISTILL, tiny_opts(tiny_demo_dir, root / "unused", **{"teacher.checkpoint": "unused.pth"}))
    teachers = {}
    for key, num_classes in (("teacher", cfg.teacher.model.num_classes), ("teacher_6cls", 6)):
        folder = root / key
        folder.mkdir()
        cfg.teacher.model.num_classes = num_classes
        torch.save(build_detector(cfg.teacher.model).state_dict(), folder / "model_final.pth")
        if num_classes == len(names) + 1:
            (folder / "classes.json").write_text(json.dumps(names))
        teachers[key] = folder
    return {"run": run, **teachers}


@pytest.fixture(scope="module")
def outcomes(request, shared, tiny_demo_dir, tmp_path_factory) -> dict[str, Future]:
    """The selected cases, run two at a time in the background; a test waits for its own."""
    test = "test_bad_input_gives_one_error_line_and_leaves_outputs_alone"
    selected = [item.callspec.params["name"] for item in request.session.items
                if getattr(item, "originalname", None) == test]
    pool = ThreadPoolExecutor(max_workers=2)
    futures = {}
    for name in selected:
        make = CASES[name]
        ctx = Ctx(tmp_path_factory.mktemp(name), tiny_demo_dir, shared["teacher"], shared["teacher_6cls"],
                  shared["run"])
        futures[name] = pool.submit(_run, ctx, make)
    yield futures
    pool.shutdown(wait=True, cancel_futures=True)


@pytest.mark.parametrize("name", list(CASES))
def test_bad_input_gives_one_error_line_and_leaves_outputs_alone(name, outcomes):
    result = outcomes[name].result()
    case, proc = result.case, result.proc
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2, (proc.returncode, proc.stderr[-3000:])
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert lines and lines[-1].startswith("error: "), proc.stderr[-3000:]
    assert case.expect in lines[-1], f"expected {case.expect!r} in\n{lines[-1]}"

    after = checksums(result.out)
    if not case.started:
        assert after == result.before, "the output directory changed"
        return
    # The run had started: it wrote its config and log, and nothing else.
    assert not [n for n in after if n.endswith(".pth")]
    for name_ in ("notes.txt", "metrics.jsonl", "classes.json"):
        assert after[name_] == result.before[name_], name_
    assert (result.out / "log.txt").read_text().startswith("12:00:00 INFO an earlier attempt\n")


def test_bad_boxes_are_clipped_or_dropped_and_counted(tiny_demo_dir, tmp_path):
    """Negative, zero-size and out-of-image boxes are not an error: the data layer clips boxes
    that leave the image, drops degenerate ones, and the log counts both."""
    images, ann = write_coco(tmp_path / "coco")
    data = json.loads(ann.read_text())
    data["annotations"][0]["bbox"] = [50, 50, 30, 30]  # leaves the 64x64 image: clipped to 14x14
    data["annotations"][1]["bbox"] = [10, 10, 0, 20]  # zero width: dropped
    data["annotations"][2]["bbox"] = [40, 40, -20, 10]  # negative width: dropped
    data["annotations"][3]["bbox"] = [70, 70, 10, 10]  # entirely outside: dropped
    ann.write_text(json.dumps(data))
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, str(TRAIN), "--cfg", str(PLAIN), "--no-progress", "--opts",
                           *tiny_opts(tiny_demo_dir, out, **{"train.max_iters": 1}), *coco_opts(images, ann)],
                          env=ENV, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert ("train set: 4 images (COCO ann.json: images=4, boxes=1, clipped=1, dropped_degenerate=3, crowd_ignored=0, "
            "empty_images=3, empty_images_skipped=0)") in (out / "log.txt").read_text()
