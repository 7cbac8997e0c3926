"""Shared fixtures: a tiny embedded demo dataset and a tiny CPU detector config."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch


REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tools"))

# Keep the test processes from oversubscribing a 2-core machine.
torch.set_num_threads(min(2, torch.get_num_threads()))


@pytest.fixture(scope="module")
def one_thread():
    """One torch thread for a module: two OpenMP threads on a shared 2-core box are ~10x
    slower than one for tiny convs (use with ``pytestmark = pytest.mark.usefixtures``)."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


@pytest.fixture(scope="session")
def tiny_demo_dir(tmp_path_factory) -> Path:
    from detkd.data.demo import generate_demo_dataset

    out = tmp_path_factory.mktemp("demo")
    generate_demo_dataset(out, seed=0, num_train=16, num_val=8, image_size=96)
    return out


def tiny_opts(demo_dir: Path, output_dir: Path, **extra: object) -> list[str]:
    """Overrides that turn the demo config into a seconds-long CPU run."""
    opts = {
        "data.demo.out_dir": str(demo_dir), "data.demo.num_train": 16, "data.demo.num_val": 8,
        "data.demo.image_size": 96, "model.min_size": 96, "model.max_size": 96,
        "model.out_channels": 32, "model.representation_size": 64,
        "model.rpn_pre_nms_top_n_train": 200, "model.rpn_post_nms_top_n_train": 100,
        "model.rpn_pre_nms_top_n_test": 100, "model.rpn_post_nms_top_n_test": 50,
        "model.rpn_batch_size_per_image": 64, "model.box_batch_size_per_image": 32,
        "train.batch_size": 2, "train.workers": 0, "train.log_interval": 2,
        "train.scheduler.name": "step", "train.scheduler.warmup_iters": 2, "train.scheduler.milestones": [100],
        "train.optimizer.lr": 0.01, "train.eval_interval": 0, "eval.batch_size": 4,
        "output_dir": str(output_dir),
    }
    opts.update(extra)
    return [f"{k}={v}" for k, v in opts.items()]


@pytest.fixture
def demo_cfg_path() -> Path:
    return REPO / "configs" / "demo" / "faster_rcnn_demo.yaml"


def scores_on(model, data_cfg, splits, metric: str) -> list[dict]:
    """The metrics of ``model`` on each dataset section of ``splits`` (e.g. a format's copy of
    the demo val split and the COCO copy), evaluated the same way."""
    from detkd.data.build import build_dataset, build_eval_loader
    from detkd.evaluation.inference import evaluate_detector

    scores = []
    for ds_cfg in splits:
        dataset = build_dataset(ds_cfg, data_cfg, train=False)
        scores.append(evaluate_detector(model, build_eval_loader(dataset, 4, 0), dataset, metric,
                                        torch.device("cpu"), progress=False))
    return scores


def assert_export_of_a_changed_classifier_is_refused(model, image_dir: Path, out: Path) -> None:
    """The ONNX file of ``model`` with its classification head's weights moved by 1e-2 (noise of
    that standard deviation: a shift common to every class would leave a softmax as it is), checked against
    the unchanged eager ``model`` on the images of ``image_dir``, is refused (a parity rule that
    accepts a wrong export fails here)."""
    import torch

    from detkd.data.utils import image_to_tensor, load_rgb_image
    from detkd.deploy.export import check_parity, export_onnx, exportable_copy, onnx_runner
    from detkd.errors import DetkdError

    images = [(str(p), image_to_tensor(load_rgb_image(p))) for p in sorted(image_dir.glob("*.jpg"))]
    changed = exportable_copy(model)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():  # every weight of the classification head (SSD: of every level's predictor)
        for name, weight in changed.named_parameters():
            if ("cls" in name or "classification" in name) and name.endswith("weight"):
                weight.add_(1e-2 * torch.randn(weight.shape, generator=g))
    export_onnx(changed, out, images[0][1])
    assert check_parity(changed, onnx_runner(out), images)["detections"] > 0  # the file itself is sound
    with pytest.raises(DetkdError, match="exported model disagrees on .*: (eager|exported) detection"):
        check_parity(exportable_copy(model), onnx_runner(out), images)


def check_html_page(path: Path) -> list[str]:
    """Parse a page with the standard library: every element closed in order and every image
    reference a decodable embedded PNG or an existing file beside the page. The ``<h2>`` titles."""
    import base64
    from html.parser import HTMLParser

    void = {"meta", "img", "br", "hr", "link", "input", "source", "col", "area", "base", "wbr"}

    class Checker(HTMLParser):
        def __init__(self) -> None:
            super().__init__(convert_charrefs=True)
            self.stack: list[str] = []
            self.images: list[str] = []
            self.h2: list[str] = []
            self.in_h2 = False

        def handle_starttag(self, tag, attrs):
            if tag == "img":
                self.images.append(dict(attrs)["src"])
            if tag not in void:
                self.stack.append(tag)
            self.in_h2 = tag == "h2"

        def handle_endtag(self, tag):
            assert self.stack and self.stack[-1] == tag, (tag, self.stack[-3:])
            self.stack.pop()
            self.in_h2 = False

        def handle_data(self, data):
            if self.in_h2:
                self.h2.append(data)

    text = path.read_text()
    assert text.startswith("<!DOCTYPE html>")
    checker = Checker()
    checker.feed(text)
    checker.close()
    assert not checker.stack, checker.stack
    assert "http://" not in text and "https://" not in text  # nothing fetched from the network
    for src in checker.images:
        if src.startswith("data:image/png;base64,"):
            assert base64.b64decode(src.split(",", 1)[1], validate=True)[:8] == b"\x89PNG\r\n\x1a\n"
        else:
            assert (path.parent / src).is_file(), src
    return checker.h2
