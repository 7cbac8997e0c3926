"""Deployment: self-describing model files, detkd.load_model, detkd predict, saved detections, export."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import train_det
from conftest import REPO, tiny_opts

pytestmark = pytest.mark.usefixtures("one_thread")


def run_tool(module, argv: list[str]) -> int:
    from detkd.utils.cli import run_cli

    return run_cli(module.main, module.build_parser(), argv)


@pytest.fixture(scope="module")
def student_run(tiny_demo_dir, tmp_path_factory) -> Path:
    """A tiny demo student trained for a few iterations (keeps every detection: score 0)."""
    out = tmp_path_factory.mktemp("student") / "run"
    opts = tiny_opts(tiny_demo_dir, out, **{"train.max_iters": 6, "model.box_score_thresh": 0.0,
                                            "model.box_detections_per_img": 20})
    assert run_tool(train_det, ["--cfg", str(REPO / "configs/demo/faster_rcnn_demo.yaml"), "--no-progress",
                                "--opts", *opts]) == 0
    return out


def val_images(demo_dir: Path) -> list[Path]:
    return sorted((demo_dir / "val").glob("*.jpg"))


def test_model_file_is_a_state_dict_with_its_model_record(student_run):
    from torchvision.models.detection import FasterRCNN

    state = torch.load(student_run / "model_final.pth", weights_only=True)
    assert all(torch.is_tensor(v) for v in state.values())  # still a plain state dict
    info = state._metadata["detkd"]
    assert info["format"] == "detkd.model/1"
    assert info["class_names"] == json.loads((student_run / "classes.json").read_text())
    assert info["model"]["num_classes"] == 11 and info["model"]["out_channels"] == 32
    assert info["input"]["min_size"] == 96 and info["input"]["image_mean"] == [0.485, 0.456, 0.406]
    import detkd

    model, names = detkd.load_model(student_run / "model_final.pth")
    assert isinstance(model, FasterRCNN) and not model.training and names == info["class_names"]


def test_model_file_and_results_record_the_display_threshold(student_run):
    from detkd.modeling.checkpoint_io import recorded_display_threshold

    info = torch.load(student_run / "model_final.pth", weights_only=True)._metadata["detkd"]
    final = json.loads((student_run / "results.json").read_text())["final"]
    # The final evaluation's F1-optimal threshold, in the model file and in results.json alike.
    assert 0.0 <= final["display_thresh"] <= 1.0 and 0.0 <= final["F1_50"] <= 1.0
    assert recorded_display_threshold(info) == pytest.approx(final["display_thresh"])
    assert info["display"]["F1_50"] == pytest.approx(final["F1_50"]) and "F1" in info["display"]["rule"]
    assert recorded_display_threshold({k: v for k, v in info.items() if k != "display"}) is None


def test_model_file_records_its_first_val_images(student_run, tiny_demo_dir):
    from detkd.config.schema import ModelConfig
    from detkd.modeling.checkpoint_io import VAL_IMAGES_KEPT, model_info, recorded_val_images

    info = torch.load(student_run / "model_final.pth", weights_only=True)._metadata["detkd"]
    expected = [str(p.resolve()) for p in val_images(tiny_demo_dir)]  # the 8 val files, in item order
    assert len(expected) == 8 and info["val_images"] == expected
    assert recorded_val_images(info) == [Path(p) for p in expected]
    # Only files still on disk count; a file from before the record has none.
    moved = dict(info, val_images=expected[:3] + [str(tiny_demo_dir / "gone.jpg")])
    assert recorded_val_images(moved) == [Path(p) for p in expected[:3]]
    assert recorded_val_images({k: v for k, v in info.items() if k != "val_images"}) == []
    many = model_info(ModelConfig(), ["a"], (f"/data/{i}.jpg" for i in range(VAL_IMAGES_KEPT + 5)))
    assert many["val_images"] == [f"/data/{i}.jpg" for i in range(VAL_IMAGES_KEPT)]


def test_load_model_without_yaml_detects_as_the_training_time_model(student_run, tiny_demo_dir):
    import detkd
    from detkd.recipe import load_config
    from detkd.data.utils import image_to_tensor, load_rgb_image
    from detkd.modeling.detector import build_detector

    # The training-time model: the YAML's builder and the bare weights, as before this file format.
    trained = build_detector(load_config(student_run / "config.yaml").model)
    trained.load_state_dict(dict(torch.load(student_run / "model_final.pth", weights_only=True)))
    trained.eval()
    model, _ = detkd.load_model(student_run / "model_final.pth")
    images = [image_to_tensor(load_rgb_image(p)) for p in val_images(tiny_demo_dir)]
    with torch.no_grad():
        expected, got = trained(images), model(images)
    assert sum(len(e["boxes"]) for e in expected) > 0
    for e, g in zip(expected, got):
        for key in ("boxes", "scores", "labels"):
            assert torch.equal(e[key], g[key]), key


def test_bare_state_dict_needs_a_config(student_run, tmp_path):
    import detkd
    from detkd.errors import DetkdError

    bare = tmp_path / "bare.pth"
    torch.save(dict(torch.load(student_run / "model_final.pth", weights_only=True)), bare)
    with pytest.raises(DetkdError, match="bare state dict"):
        detkd.load_model(bare)
    model, names = detkd.load_model(bare, config=student_run / "config.yaml")
    assert names == [f"class{i}" for i in range(1, 11)]


def test_stock_arch_with_pretrained_weights_rebuilds_offline_with_torchvisions_norm_layers(tmp_path):
    """A stock builder given weights uses FrozenBatchNorm2d (torchvision's rule); load_model
    rebuilds that structure without downloading anything and gives the same detections."""
    import torchvision
    from torchvision.ops import FrozenBatchNorm2d

    import detkd
    from detkd.config.schema import ModelConfig
    from detkd.utils.atomic import atomic_save
    from detkd.modeling.checkpoint_io import build_architecture, model_state

    cfg = ModelConfig(arch="fasterrcnn_mobilenet_v3_large_320_fpn", num_classes=3, weights_backbone="IMAGENET1K_V1",
                      min_size=96, max_size=96, rpn_pre_nms_top_n_test=50, rpn_post_nms_top_n_test=20,
                      box_score_thresh=0.0)
    model = build_architecture(cfg).eval()
    # The reference: torchvision's backbone as its builder makes it when weights are given.
    reference = dict(torchvision.models.mobilenet_v3_large(norm_layer=FrozenBatchNorm2d).features.named_modules())
    body = dict(model.backbone.body.named_modules())
    norms = [n for n, m in reference.items() if isinstance(m, FrozenBatchNorm2d)]
    assert len(norms) > 30
    for name in norms:
        assert type(body[name]) is FrozenBatchNorm2d and body[name].eps == reference[name].eps, name
    torch.manual_seed(0)
    with torch.no_grad():  # non-trivial frozen statistics, so a wrong eps or norm type would show
        for m in model.modules():
            if isinstance(m, FrozenBatchNorm2d):
                m.running_var.uniform_(0.5, 2.0)
                m.running_mean.normal_(0, 0.1)
    path = tmp_path / "model_final.pth"
    atomic_save(model_state(model, cfg, ["a", "b"]), path)
    loaded, names = detkd.load_model(path)
    image = torch.rand(3, 96, 96)
    with torch.no_grad():
        want, got = model([image])[0], loaded([image])[0]
    assert names == ["a", "b"] and len(want["boxes"]) > 0
    for key in ("boxes", "scores", "labels"):
        assert torch.equal(want[key], got[key]), key


def test_teacher_label_map_is_checked_from_the_model_file_without_classes_json(student_run, tmp_path):
    import shutil

    from detkd.modeling.label_map import check_label_map
    from detkd.errors import DetkdError

    names = json.loads((student_run / "classes.json").read_text())
    teacher = tmp_path / "teacher.pth"  # copied away from its run: no classes.json beside it
    shutil.copy(student_run / "model_final.pth", teacher)
    assert check_label_map(teacher, names) is True
    with pytest.raises(DetkdError, match="another label map.*label 1"):
        check_label_map(teacher, names[1:] + names[:1])
    bare = tmp_path / "bare.pth"
    torch.save(dict(torch.load(teacher, weights_only=True)), bare)
    assert check_label_map(bare, names) is False  # nothing recorded: nothing to compare


# ----------------------------------------------------------------------------- export


def _cli(name: str, argv: list[str]) -> int:
    import importlib

    from detkd.utils.cli import run_cli

    module = importlib.import_module(f"detkd.cli.{name}")
    return run_cli(module.main, module.build_parser(), argv)


@pytest.fixture(scope="module")
def held_out(tmp_path_factory) -> Path:
    """20 real held-out demo images: a val split is made of Fashion-MNIST t10k items, never
    trained on (the tiny fixture has only 8 val images, so a second, 20-image split)."""
    from detkd.data.demo import generate_demo_dataset

    root = tmp_path_factory.mktemp("held_out")
    generate_demo_dataset(root, seed=1, num_train=1, num_val=20, image_size=96)
    return root / "val"


@pytest.mark.parametrize("fmt, suffix", [("onnx", ".onnx"), ("torchscript", ".pt")])
def test_export_agrees_with_eager_on_20_real_images(student_run, held_out, tmp_path, fmt, suffix, capsys):
    import detkd
    from detkd.data.utils import image_to_tensor, load_rgb_image
    from detkd.deploy.export import runner

    out = tmp_path / f"student{suffix}"
    assert _cli("export", ["--ckpt", str(student_run / "model_final.pth"), "--format", fmt, "--out", str(out),
                           "--check-images", str(held_out)]) == 0
    assert "parity on 20 images" in capsys.readouterr().out
    # Independently of the tool's own check: rerun both on the images, at their own sizes and a resized one.
    model, _ = detkd.load_model(student_run / "model_final.pth")
    run = runner(fmt, out)
    files = sorted(held_out.glob("*.jpg"))
    images = [image_to_tensor(load_rgb_image(p)) for p in files]
    images.append(torch.nn.functional.interpolate(images[0][None], size=(80, 120))[0])  # dynamic H, W
    total = 0
    for image in images:
        with torch.no_grad():
            want = model([image])[0]
        boxes, labels, scores = run(image)
        assert torch.equal(labels, want["labels"])
        torch.testing.assert_close(boxes, want["boxes"], atol=0.01, rtol=0)
        torch.testing.assert_close(scores, want["scores"], atol=1e-4, rtol=0)
        total += len(labels)
    assert total > 0


def test_shipped_check_images_are_the_demos_first_held_out_images(tmp_path):
    """The package's parity images are the demo val split's first eight images (regenerated
    here from the demo config's seed and size), a few hundred kB at most."""
    import numpy as np

    from detkd.recipe import load_config
    from detkd.data.demo import generate_demo_dataset
    from detkd.data.utils import load_rgb_image
    from detkd.deploy.export import SHIPPED_CHECK_IMAGES

    shipped = sorted(SHIPPED_CHECK_IMAGES.glob("*.jpg"))
    assert [p.name for p in shipped] == [f"{i:06d}.jpg" for i in range(8)]
    assert sum(p.stat().st_size for p in shipped) < 300_000
    demo = load_config(REPO / "configs/demo/faster_rcnn_demo.yaml").data.demo
    generate_demo_dataset(tmp_path, seed=demo.seed, num_train=1, num_val=8, image_size=demo.image_size)
    for p in shipped:  # pixels, not bytes: another libjpeg may round differently
        got, want = load_rgb_image(p).astype(np.int16), load_rgb_image(tmp_path / "val" / p.name).astype(np.int16)
        assert got.shape == want.shape == (demo.image_size, demo.image_size, 3)
        assert np.abs(got - want).mean() < 1.0, p.name


def test_export_without_check_images_uses_the_recorded_then_the_shipped_images(student_run, tmp_path, monkeypatch,
                                                                                 capsys):
    monkeypatch.chdir(tmp_path)  # no data/ here
    ckpt = student_run / "model_final.pth"
    assert _cli("export", ["--ckpt", str(ckpt), "--format", "torchscript", "--out", "a.pt"]) == 0
    assert "parity on 8 images (the model file's val images)" in capsys.readouterr().out
    # The same file where its val images are not (another machine, or written before they were recorded).
    state = torch.load(ckpt, weights_only=True)
    state._metadata["detkd"]["val_images"] = [str(tmp_path / "gone" / "000000.jpg")]
    torch.save(state, tmp_path / "moved.pth")
    assert _cli("export", ["--ckpt", "moved.pth", "--format", "torchscript", "--out", "b.pt"]) == 0
    printed = capsys.readouterr().out
    assert "parity on 8 images (detkd's shipped demo images)" in printed, printed
    assert (tmp_path / "a.pt").is_file() and (tmp_path / "b.pt").is_file()
    import detkd.deploy.export as export_mod

    monkeypatch.setattr(export_mod, "SHIPPED_CHECK_IMAGES", tmp_path / "gone")  # a broken install
    assert _cli("export", ["--ckpt", "moved.pth", "--format", "torchscript", "--out", "c.pt"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"error: no images for the parity check in {tmp_path / 'gone'}: give some with --check-images"
    assert not (tmp_path / "c.pt").exists()


def test_export_refuses_bad_inputs_in_one_line(student_run, held_out, tmp_path, capsys):
    bad = tmp_path / "bad.pth"
    bad.write_bytes(b"not a checkpoint")
    cases = [
        (["--ckpt", str(bad), "--format", "onnx"], "cannot read weight file"),
        (["--ckpt", str(student_run / "model_final.pth"), "--format", "tflite"], "unknown export format 'tflite'"),
        (["--ckpt", str(student_run / "model_final.pth"), "--format", "onnx", "--out", "/proc/x/m.onnx"],
         "cannot write --out"),
    ]
    mismatched = tmp_path / "mismatched.pth"
    state = torch.load(student_run / "model_final.pth", weights_only=True)
    state.pop(next(iter(state)))
    torch.save(state, mismatched)
    cases.append((["--ckpt", str(mismatched), "--format", "torchscript"], "does not match"))
    for argv, message in cases:
        if "--out" not in argv:
            argv = argv + ["--out", str(tmp_path / "m.out")]
        capsys.readouterr()
        assert _cli("export", argv + ["--check-images", str(held_out)]) == 2, argv
        err = capsys.readouterr().err.strip()
        assert err.startswith("error: ") and message in err and "\n" not in err, err
    assert not (tmp_path / "m.out").exists()


def test_failed_parity_deletes_the_export(student_run, held_out, tmp_path, monkeypatch):
    import detkd
    import detkd.deploy.export as export_mod
    from detkd.errors import DetkdError

    model, _ = detkd.load_model(student_run / "model_final.pth")
    real = export_mod.runner

    def shifted(fmt, path, threads=None):  # an exported model whose boxes are 1 px off
        run = real(fmt, path, threads)
        return lambda image: (lambda b, lab, s: (b + 1.0, lab, s))(*run(image))

    monkeypatch.setattr(export_mod, "runner", shifted)
    out = tmp_path / "m.pt"
    from detkd.data.utils import image_to_tensor, load_rgb_image

    images = [(str(p), image_to_tensor(load_rgb_image(p))) for p in sorted(held_out.glob("*.jpg"))[:2]]
    with pytest.raises(DetkdError, match=r"has no exported match .*box off by 1 px"):
        export_mod.export_model(model, "torchscript", out, images)
    assert not out.exists() and not list(tmp_path.iterdir())


def test_export_of_a_changed_classifier_is_refused(student_run, tiny_demo_dir, tmp_path):
    import detkd
    from conftest import assert_export_of_a_changed_classifier_is_refused

    model, _ = detkd.load_model(student_run / "model_final.pth")
    assert_export_of_a_changed_classifier_is_refused(model, tiny_demo_dir / "val", tmp_path / "changed.onnx")


# ----------------------------------------------------------------------------- predict, saved detections


def test_predict_folder_writes_json_and_pictures_equal_to_eval_det_detections(student_run, tiny_demo_dir, tmp_path,
                                                                              capsys):
    import eval_det
    from pycocotools.coco import COCO

    out = tmp_path / "pred"
    ckpt = str(student_run / "model_final.pth")
    assert _cli("predict", ["--ckpt", ckpt, "--input", str(tiny_demo_dir / "val"), "--out", str(out), "--draw",
                            "--compare", ckpt, ckpt, "--no-progress"]) == 0
    records = json.loads((out / "detections.json").read_text())
    files = val_images(tiny_demo_dir)
    assert [Path(r["file"]).name for r in records] == [p.name for p in files]
    assert sorted(p.name for p in (out / "pictures").iterdir()) == sorted(f"{p.stem}.png" for p in files)
    from PIL import Image

    with Image.open(out / "compare" / f"{files[0].stem}.png") as pic:
        # three models side by side, 96 px enlarged to 480, 10 px gaps, three caption lines above
        assert pic.size == (3 * 480 + 4 * 10, 480 + 74 + 10)
    names = json.loads((student_run / "classes.json").read_text())
    for r in records:
        assert (r["width"], r["height"]) == (96, 96)
        for d in r["detections"]:
            assert d["class"] == names[d["label"] - 1] and 0 <= d["score"] <= 1

    saved = tmp_path / "dets.json"
    capsys.readouterr()
    assert run_tool(eval_det, ["--cfg", str(student_run / "config.yaml"), "--ckpt", ckpt, "--no-progress",
                               "--save-detections", str(saved)]) == 0
    printed = capsys.readouterr().out
    assert "class" in printed and names[0] in printed  # the per-class AP table
    gt = COCO(str(tiny_demo_dir / "annotations" / "instances_val.json"))
    dt = gt.loadRes(str(saved))  # COCO results format
    file_of = {img["id"]: img["file_name"] for img in gt.dataset["images"]}
    cat_name = {c["id"]: c["name"] for c in gt.dataset["categories"]}
    by_file: dict[str, list] = {}
    for ann in json.loads(saved.read_text()):
        by_file.setdefault(file_of[ann["image_id"]], []).append(ann)
    assert len(dt.getAnnIds()) == sum(len(r["detections"]) for r in records) > 0
    for r in records:
        anns = by_file.get(Path(r["file"]).name, [])
        assert len(anns) == len(r["detections"])
        for ann, d in zip(anns, r["detections"]):
            x, y, w, h = ann["bbox"]
            assert cat_name[ann["category_id"]] == d["class"]
            assert ann["score"] == pytest.approx(d["score"], abs=1e-6)
            assert [x, y, x + w, y + h] == pytest.approx(d["box"], abs=1e-3)


def test_per_class_ap_matches_cocoeval_restricted_to_each_class(tiny_demo_dir):
    import contextlib
    import io

    import numpy as np
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    from detkd.evaluation.coco_eval import evaluate_coco

    gt = COCO(str(tiny_demo_dir / "annotations" / "instances_val.json"))
    rng = np.random.default_rng(0)
    results = []
    for ann in gt.dataset["annotations"]:  # jittered ground truth, some with the wrong class
        x, y, w, h = ann["bbox"]
        cat = ann["category_id"] if rng.random() < 0.7 else int(rng.choice(gt.getCatIds()))
        results.append({"image_id": ann["image_id"], "category_id": cat, "score": float(rng.random()),
                        "bbox": [x + rng.normal(0, 2), y + rng.normal(0, 2), w, h]})
    rows: list = []
    evaluate_coco(gt, results, per_class=rows)
    assert [r["category_id"] for r in rows] == gt.getCatIds()
    for row in rows:
        with contextlib.redirect_stdout(io.StringIO()):
            ev = COCOeval(gt, gt.loadRes([dict(r) for r in results]), "bbox")
            ev.params.catIds = [row["category_id"]]
            ev.evaluate()
            ev.accumulate()
            ev.summarize()
        assert row["AP"] == pytest.approx(ev.stats[0], abs=1e-12)
        assert row["AP50"] == pytest.approx(ev.stats[1], abs=1e-12)


# ----------------------------------------------------------------------------- the installed command


class Installed:
    """detkd installed from a wheel (not -e) into a fresh venv, run with a clean environment."""

    def __init__(self, venv: Path) -> None:
        import os

        self.venv, self.python, self.detkd = venv, venv / "bin" / "python", venv / "bin" / "detkd"
        self.env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
        self.env["OMP_NUM_THREADS"] = "1"

    def run(self, *argv, cwd: Path, check: bool = True, env: dict | None = None):
        import subprocess

        # A generous bound: a wedged command fails the test instead of hanging it, however loaded the machine.
        proc = subprocess.run([str(a) for a in argv], cwd=cwd, env={**self.env, **(env or {})}, capture_output=True,
                              text=True, timeout=600)
        assert not check or proc.returncode == 0, proc.stdout + proc.stderr
        return proc


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Installed:
    """Build a wheel, install it (not -e) into a fresh venv that reuses this interpreter's torch
    stack through a .pth line: what a user gets from ``pip install detkd``."""
    import shutil
    import sys
    import sysconfig

    tmp_path = tmp_path_factory.mktemp("wheel")
    venv = tmp_path / "venv"
    inst = Installed(venv)
    # A copy of the checkout's tracked package files, so no build output lands in the checkout.
    src = tmp_path / "src"
    shutil.copytree(REPO / "detkd", src / "detkd", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("setup.cfg", "pyproject.toml", "README.md"):
        shutil.copy(REPO / name, src / name)
    inst.run(sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-q",
             "-w", tmp_path / "dist", src, cwd=tmp_path)
    (wheel,) = (tmp_path / "dist").glob("detkd-*.whl")
    inst.run(sys.executable, "-m", "venv", "--without-pip", venv, cwd=tmp_path)
    site = inst.run(inst.python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])",
                    cwd=tmp_path).stdout.strip()
    # The torch stack of this interpreter, after the venv's own site-packages (a .pth adds it to sys.path).
    Path(site, "torch_stack.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    inst.run(sys.executable, "-m", "pip", "--python", inst.python, "install", "--no-deps", "--no-index", "-q", wheel,
             cwd=tmp_path)
    return inst


@pytest.fixture
def outside(tmp_path) -> Path:
    """A working folder outside the checkout."""
    folder = tmp_path / "elsewhere"
    folder.mkdir()
    return folder


@pytest.mark.slow
def test_wheel_installs_a_working_detkd_command(installed, student_run, tiny_demo_dir, outside):
    """Run the installed command from a folder outside the checkout."""
    py, detkd_cmd, venv = installed.python, installed.detkd, installed.venv

    def run(*argv, cwd=outside, check=True):
        return installed.run(*argv, cwd=cwd, check=check)

    where = run(py, "-c", "import detkd; print(detkd.__file__)", cwd=outside).stdout.strip()
    assert where.startswith(str(venv)), where
    assert "predict" in run(detkd_cmd, "--help", cwd=outside).stdout
    assert "--resume" in run(detkd_cmd, "train", "--help", cwd=outside).stdout
    images = sorted((tiny_demo_dir / "val").glob("*.jpg"))[:2]
    run(detkd_cmd, "predict", "--ckpt", student_run / "model_final.pth", "--input", *images, "--out", "pred",
        "--draw", "--no-progress", cwd=outside)
    records = json.loads((outside / "pred" / "detections.json").read_text())
    assert [Path(r["file"]).name for r in records] == [p.name for p in images]
    assert len(list((outside / "pred" / "pictures").glob("*.png"))) == 2
    demo = run(detkd_cmd, "demo", cwd=outside, check=False)
    assert demo.returncode == 2 and demo.stderr.startswith("error: detkd demo needs a detkd checkout"), demo.stderr


@pytest.mark.slow
def test_installed_export_needs_only_the_model_file_and_refuses_a_mismatch(installed, student_run, outside):
    """``detkd export --ckpt --format --out`` from a folder outside the checkout, with the wheel's
    detkd: the model file's val images where they exist, else the images inside the wheel; a
    model that does not load, or an export that disagrees with eager, is refused and leaves no file."""
    where = installed.run(installed.python, "-c", "import detkd.deploy.export as e; print(e.SHIPPED_CHECK_IMAGES)",
                          cwd=outside).stdout.strip()
    assert where.startswith(str(installed.venv)), where
    assert len(list(Path(where).glob("*.jpg"))) == 8  # shipped as package data
    ckpt = student_run / "model_final.pth"
    state = torch.load(ckpt, weights_only=True)
    del state._metadata["detkd"]["val_images"]  # as written before the record, or on another machine
    torch.save(state, outside / "elsewhere.pth")
    cases = [(ckpt, "onnx", "m.onnx", "the model file's val images"),
             ("elsewhere.pth", "onnx", "e.onnx", "detkd's shipped demo images"),
             ("elsewhere.pth", "torchscript", "e.pt", "detkd's shipped demo images")]
    # The CPU's own vector kernels, then AVX2 and plain ones: eager and exported float noise differs by kernel.
    for capability in ("", "avx2", "default"):
        env = {"ATEN_CPU_CAPABILITY": capability} if capability else {}
        for model_file, fmt, out, source in cases if not capability else cases[1:2]:  # ONNX Runtime vs eager
            proc = installed.run(installed.detkd, "export", "--ckpt", model_file, "--format", fmt, "--out", out,
                                 cwd=outside, env=env)
            assert f"parity on 8 images ({source})" in proc.stdout, (capability, proc.stdout)
            assert int(proc.stdout.split("), ")[1].split(" detections")[0]) > 0, proc.stdout
            assert (outside / out).stat().st_size > 0
    # A model file that does not match its record: refused before anything is written.
    state.pop(next(iter(state)))
    torch.save(state, outside / "mismatched.pth")
    proc = installed.run(installed.detkd, "export", "--ckpt", "mismatched.pth", "--format", "torchscript",
                         "--out", "x.pt", cwd=outside, check=False)
    assert proc.returncode == 2 and "does not match" in proc.stderr and "\n" not in proc.stderr.strip()
    # An exported model 1 px off the eager one (the installed exporter's runner shifted): refused, file deleted.
    shifted = (
        "import sys, detkd.deploy.export as e\n"
        "real = e.runner\n"
        "def runner(fmt, path, threads=None):\n"
        "    run = real(fmt, path, threads)\n"
        "    return lambda image: (lambda b, lab, s: (b + 1.0, lab, s))(*run(image))\n"
        "e.runner = runner\n"
        "from detkd.cli.main import main\n"
        "sys.exit(main(sys.argv[1:]))\n")
    for fmt, out in (("onnx", "y.onnx"), ("torchscript", "y.pt")):
        proc = installed.run(installed.python, "-c", shifted, "export", "--ckpt", "elsewhere.pth", "--format", fmt,
                             "--out", out, cwd=outside, check=False)
        assert proc.returncode == 2 and "box off by 1 px" in proc.stderr, proc.stdout + proc.stderr
        assert not (outside / out).exists()
    assert sorted(p.name for p in outside.iterdir()) == ["e.onnx", "e.pt", "elsewhere.pth", "m.onnx",
                                                        "mismatched.pth"]


def test_report_times_onnx_beside_eager(student_run, tmp_path, capsys):
    out = tmp_path / "rep"
    assert _cli("report", ["--out", str(out), "--no-eval", "--threads", "1", "--runs", "4", "--warmup", "1",
                           "--latency-rounds", "2", "--throughput-batch", "0", "--onnx", "--no-progress",
                           "--model", "student", str(student_run / "config.yaml"),
                           str(student_run / "model_final.pth")]) == 0
    numbers = json.loads((out / "onnx_latency.json").read_text())["student"]
    assert numbers["threads"] == 1 and numbers["parity"]["images"] == 8
    assert numbers["eager"]["runs"] == numbers["onnx"]["runs"] == 4
    assert numbers["eager"]["median_ms"] > 0 and numbers["onnx"]["median_ms"] > 0
    md = (out / "onnx_latency.md").read_text()
    assert "| student |" in md and "--onnx" in md and md in capsys.readouterr().out


def test_detkd_predict_of_one_model_is_the_offline_teacher_of_another(student_run, tiny_demo_dir, tmp_path):
    """The round trip: ``detkd predict`` on the training images writes COCO results by file and
    category name; an FCOS student distils from that file (``teacher.detections``)."""
    import yaml

    pred = tmp_path / "pred"
    assert _cli("predict", ["--ckpt", str(student_run / "model_final.pth"), "--input", str(tiny_demo_dir / "train"),
                            "--out", str(pred), "--no-progress"]) == 0
    records = json.loads((pred / "detections.json").read_text())
    coco = json.loads((pred / "detections_coco.json").read_text())
    assert len(coco) == sum(len(r["detections"]) for r in records) > 0
    first = records[0]["detections"][0]
    x0, y0, x1, y1 = first["box"]
    assert coco[0] == {"file_name": Path(records[0]["file"]).name, "category_name": first["class"],
                       "bbox": [x0, y0, x1 - x0, y1 - y0], "score": first["score"]}
    cfg_file = tmp_path / "fcos.yaml"
    cfg_file.write_text(yaml.safe_dump({
        "_base_": [str(REPO / "configs/_base_/demo_data.yaml")],
        "model": {"arch": "fcos", "num_classes": 11, "backbone": "resnet18", "weights_backbone": None,
                  "out_channels": 64, "min_size": 96, "max_size": 96},
        "teacher": {"detections": str(pred / "detections_coco.json")},
        "distill": {"predictions": {"score_thresh": 0.0}}}))  # a 6-iteration teacher scores low
    out = tmp_path / "run"
    opts = [o for o in tiny_opts(tiny_demo_dir, out, **{"train.max_iters": 2, "train.log_interval": 1})
            if not o.startswith("model.")]
    assert _cli("train", ["--cfg", str(cfg_file), "--no-progress", "--opts", *opts]) == 0
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    train = [x for x in lines if x.get("type") == "train"]
    assert train and all(x["loss_predictions_cls"] > 0 and x["predictions_teacher_boxes"] > 0 for x in train), train
    assert "teacher_boxes" in (out / "log.txt").read_text()  # the train set line counts them


def test_predict_and_command_bad_inputs_are_one_line(student_run, tiny_demo_dir, tmp_path, capsys):
    from detkd.cli.main import main as detkd_main

    ckpt = str(student_run / "model_final.pth")
    bare = tmp_path / "bare.pth"
    torch.save(dict(torch.load(ckpt, weights_only=True)), bare)
    val = str(tiny_demo_dir / "val")
    cases = [
        (["predict", "--ckpt", ckpt, "--input", str(tmp_path / "nope.jpg")], "no such file or folder"),
        (["predict", "--ckpt", ckpt, "--input", str(tmp_path / "*.png")], "matches no image files"),
        (["predict", "--ckpt", ckpt, "--input", str(tmp_path)], "no image files"),
        (["predict", "--ckpt", ckpt, "--input", val, "--score-thresh", "1.5"], "--score-thresh must be in [0, 1]"),
        (["predict", "--ckpt", ckpt, "--input", val, "--batch-size", "0"], "--batch-size must be at least 1"),
        (["predict", "--ckpt", str(bare), "--input", val], "bare state dict"),
        (["eval", "--cfg", str(student_run / "config.yaml"), "--ckpt", ckpt, "--save-detections", "/proc/x/d.json"],
         "cannot write --save-detections"),
        (["frobnicate"], "unknown command 'frobnicate'"),
    ]
    for argv, message in cases:
        if argv[0] == "predict":
            argv = argv + ["--out", str(tmp_path / "out")]
        capsys.readouterr()
        assert detkd_main(argv) == 2, argv
        err = capsys.readouterr().err.strip()
        assert err.startswith("error: ") and message in err and "\n" not in err, err
    assert not (tmp_path / "out").exists()


def _panels_with_box_colours(picture: Path, detections: list[list[dict]]) -> list[int]:
    """Per panel of a comparison picture: how many pixels have one of its detections' class colours."""
    import numpy as np
    from PIL import Image

    from detkd.deploy.pictures import class_color

    with Image.open(picture) as pic:
        pixels = np.asarray(pic.convert("RGB"))
    counts = []
    for k, dets in enumerate(detections):
        panel = pixels[74:74 + 480, 10 + k * 490:10 + k * 490 + 480]
        colours = {tuple(int(class_color(d["label"])[i:i + 2], 16) for i in (1, 3, 5)) for d in dets}
        counts.append(int(sum((panel == np.array(c, dtype=np.uint8)).all(axis=2).sum() for c in colours)))
    return counts


def test_comparison_picture_shows_every_models_boxes(student_run, tiny_demo_dir, tmp_path):
    from detkd.deploy.predict import display_thresholds

    ckpt = str(student_run / "model_final.pth")
    out = tmp_path / "pred"
    assert _cli("predict", ["--ckpt", ckpt, "--input", str(tiny_demo_dir / "val"), "--out", str(out), "--compare",
                            ckpt, "--score-thresh", "0.02", "--no-progress"]) == 0
    records = json.loads((out / "detections.json").read_text())
    image = next(r for r in records if r["detections"])  # an image where each model detects something
    counts = _panels_with_box_colours(out / "compare" / f"{Path(image['file']).stem}.png",
                                      [image["detections"]] * 2)
    assert all(c >= 50 for c in counts), counts  # boxes and label tags drawn in both panels
    # Without --score-thresh each model is drawn above the threshold its file records.
    info = torch.load(ckpt, weights_only=True)._metadata["detkd"]
    assert display_thresholds([info, None], None) == [(info["display"]["score_thresh"],
                                                        "its F1-optimal threshold on val"),
                                                       (None, "no threshold recorded")]
    assert display_thresholds([info], 0.3) == [(0.3, "--score-thresh")]


def test_run_demo_ends_with_report_page_and_comparison_pictures(student_run, tiny_demo_dir, tmp_path, capsys):
    import shutil

    from conftest import check_html_page
    from detkd.experiments import demo as run_demo

    for name in ("teacher", "student", "distill"):
        shutil.copytree(student_run, tmp_path / name)
    run_demo.report_with_pictures(tmp_path, n_differ=2, n_typical=1)
    printed = capsys.readouterr().out
    selection = json.loads((tmp_path / "predictions" / "compare" / "selection.json").read_text())
    assert len(selection["pictures"]) == 3 and "largest spread" in selection["rule"]
    for p in selection["pictures"]:
        assert Path(p["picture"]).is_file() and p["why"] in printed
        assert set(p["ap50"]) == {"teacher", "baseline", "distilled (PKD)"}
    assert "AP50" in selection["pictures"][0]["why"]
    titles = check_html_page(tmp_path / "report" / "report.html")
    assert "Training curves" in titles and "Example detections" in titles
    assert "from each run" in (tmp_path / "report" / "report.html").read_text()  # curves drawn: runs have metrics
    (tmp_path / "student" / "model_final.pth").write_bytes(b"torn")
    run_demo.report_with_pictures(tmp_path)  # a note, not a failed demo
    assert "[demo] no report page or comparison pictures: " in capsys.readouterr().out
