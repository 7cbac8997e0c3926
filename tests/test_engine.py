"""The training engine on real torchvision models and the embedded demo data (tiny sizes)."""

from __future__ import annotations

import json

import pytest
import torch

from conftest import tiny_opts
from detkd.recipe import load_config
from detkd.data.build import build_dataset
from detkd.data.utils import collate_fn
from detkd.engine.checkpoint import latest_checkpoint, load_checkpoint
from detkd.utils.atomic import atomic_save
from detkd.engine.optim import lr_factor
from detkd.engine.trainer import train
from detkd.errors import DetkdError
from detkd.modeling.detector import build_detector


def test_a_few_iterations_decrease_the_loss(tiny_demo_dir, tmp_path, demo_cfg_path):
    cfg = load_config(demo_cfg_path, tiny_opts(tiny_demo_dir, tmp_path / "run"))
    torch.manual_seed(0)
    model = build_detector(cfg.model)
    model.train()
    dataset = build_dataset(cfg.data.train, cfg.data, train=False)
    images, targets = collate_fn([dataset[i] for i in range(4)])
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.01, momentum=0.9)
    losses = []
    for _ in range(12):
        torch.manual_seed(1)  # same sampled anchors/RoIs each step: a clean descent check
        loss = sum(model(list(images), list(targets)).values())
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.7 * losses[0], losses


def test_lr_schedule_warmup_step_cosine():
    from detkd.config.schema import SchedulerConfig

    step = SchedulerConfig(name="step", warmup_iters=10, warmup_factor=0.1, milestones=[2, 3], gamma=0.1)
    assert lr_factor(0, step, 10, 40) == pytest.approx(0.1)
    assert lr_factor(5, step, 10, 40) == pytest.approx(0.1 * 0.5 + 0.5)
    assert lr_factor(10, step, 10, 40) == 1.0
    assert lr_factor(20, step, 10, 40) == pytest.approx(0.1)
    assert lr_factor(30, step, 10, 40) == pytest.approx(0.01)
    cos = SchedulerConfig(name="cosine", warmup_iters=0, min_lr_factor=0.0)
    assert lr_factor(0, cos, 10, 40) == 1.0
    assert lr_factor(20, cos, 10, 40) == pytest.approx(0.5)
    assert lr_factor(40, cos, 10, 40) == pytest.approx(0.0)


def _weights(path):
    return torch.load(path, map_location="cpu", weights_only=True)


def test_resume_gives_identical_weights(tiny_demo_dir, tmp_path, demo_cfg_path):
    """Stop mid-epoch, resume, cross an epoch boundary: bit-identical to one run."""
    full = load_config(demo_cfg_path, tiny_opts(tiny_demo_dir, tmp_path / "full", **{"train.max_iters": 11}))
    train(full, progress=False)

    part = load_config(demo_cfg_path, tiny_opts(tiny_demo_dir, tmp_path / "part", **{"train.max_iters": 5}))
    train(part, progress=False)
    ckpt = load_checkpoint(tmp_path / "part" / "last.pth")
    assert (ckpt["epoch"], ckpt["iter"], ckpt["iter_in_epoch"]) == (0, 5, 5)
    resumed = load_config(demo_cfg_path, tiny_opts(tiny_demo_dir, tmp_path / "part", **{"train.max_iters": 11}))
    train(resumed, resume="auto", progress=False)

    a, b = _weights(tmp_path / "full" / "model_final.pth"), _weights(tmp_path / "part" / "model_final.pth")
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    # ...and training did change them.
    init = build_detector(full.model).state_dict()
    assert any(not torch.equal(init[k], a[k]) for k in a if a[k].is_floating_point())

    # The run's outputs: merged config, JSON-lines metrics with every term, final results.
    run = tmp_path / "full"
    assert load_config(run / "config.yaml") == full
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    train_rec = [r for r in records if r["type"] == "train"]
    assert {"loss_classifier", "loss_box_reg", "loss_objectness", "loss_rpn_box_reg", "lr"} <= set(train_rec[0])
    assert any(r["type"] == "eval" and "AP50" in r for r in records)
    results = json.loads((run / "results.json").read_text())
    assert results["iterations"] == 11


def test_checkpoint_loads_into_plain_torchvision(tiny_demo_dir, tmp_path, demo_cfg_path):
    from torchvision.models.detection import FasterRCNN

    cfg = load_config(demo_cfg_path, tiny_opts(tiny_demo_dir, tmp_path / "run", **{"train.max_iters": 1}))
    train(cfg, progress=False)
    state = load_checkpoint(tmp_path / "run" / "last.pth")["model"]
    model = build_detector(cfg.model)
    assert isinstance(model, FasterRCNN) and type(model) is FasterRCNN
    model.load_state_dict(state)  # strict
    plain = _weights(tmp_path / "run" / "model_final.pth")
    assert all(torch.equal(plain[k], state[k]) for k in state)


def test_output_dir_with_another_run_is_refused(tiny_demo_dir, tmp_path, demo_cfg_path):
    out = tmp_path / "run"
    out.mkdir()
    atomic_save({"model": {}}, out / "last.pth")
    before = (out / "last.pth").read_bytes()
    cfg = load_config(demo_cfg_path, tiny_opts(tiny_demo_dir, out))
    with pytest.raises(DetkdError, match="already holds a run"):
        train(cfg, progress=False)
    assert (out / "last.pth").read_bytes() == before


def test_resume_with_other_config_is_refused_unless_forced(tiny_demo_dir, tmp_path, demo_cfg_path):
    out = tmp_path / "run"
    train(load_config(demo_cfg_path, tiny_opts(tiny_demo_dir, out, **{"train.max_iters": 1})), progress=False)
    other = load_config(demo_cfg_path, tiny_opts(tiny_demo_dir, out, **{"train.max_iters": 2,
                                                                          "model.box_score_thresh": 0.2}))
    with pytest.raises(DetkdError, match="different config"):
        train(other, resume="auto", progress=False)
    assert latest_checkpoint(out) == out / "last.pth"
