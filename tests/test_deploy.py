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


def test_load_model_without_yaml_detects_as_the_training_time_model(student_run, tiny_demo_dir):
    import detkd
    from detkd.config.load import load_config
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


# ----------------------------------------------------------------------------- export


def _cli(name: str, argv: list[str]) -> int:
    import importlib

    from detkd.utils.cli import run_cli

    module = importlib.import_module(f"detkd.cli.{name}")
    return run_cli(module.main, module.build_parser(), argv)


@pytest.fixture(scope="module")
def held_out(tiny_demo_dir, tmp_path_factory) -> Path:
    """>= 20 real held-out demo images (the tiny fixture has 8 val images: add the train split's)."""
    import shutil

    folder = tmp_path_factory.mktemp("held_out")
    for p in val_images(tiny_demo_dir) + sorted((tiny_demo_dir / "train").glob("*.jpg"))[:12]:
        shutil.copy(p, folder / f"{p.parent.name}_{p.name}")
    return folder


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
    with pytest.raises(DetkdError, match="boxes differ by up to 1"):
        export_mod.export_model(model, "torchscript", out, images)
    assert not out.exists() and not list(tmp_path.iterdir())
