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
