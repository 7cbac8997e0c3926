"""A checkpoint written before the method-interface refactor (tests/fixtures/resume_v0, detkd at 6c19121) still
resumes: its config.yaml (flat Chen et al. keys) loads, ``--resume auto`` accepts its last.pth
(another hash rule: the saved config is hashed again), the methods' weights load, and the
continued run repeats, to the float, the iterations that version logged; so it does with a
defaulted field added to the schema."""

from __future__ import annotations

import dataclasses
import json
import math
import shutil
from pathlib import Path

import pytest
import torch

from detkd.config.dump import config_hash
from detkd.config.schema import ModelConfig
from detkd.distill.methods import METHODS
from detkd.distill.methods.pkd import PKDConfig, PKDMethod
from detkd.engine.trainer import train
from detkd.errors import DetkdError
from detkd.recipe import load_config

FIXTURE = Path(__file__).resolve().parent / "fixtures" / "resume_v0"
LOGGED = ("lr", "loss", "loss_classifier", "loss_box_reg", "loss_objectness", "loss_rpn_box_reg", "loss_rcn_soft",
          "loss_rcn_bound", "loss_rpn_soft", "loss_rpn_bound", "loss_hint", "loss_pkd")


@pytest.fixture
def run_dir(tmp_path, monkeypatch):
    """The fixture laid out as it was written: teacher.pth beside run/ (paths are relative)."""
    (tmp_path / "run").mkdir()
    shutil.copy(FIXTURE / "teacher.pth", tmp_path / "teacher.pth")
    for name in ("last.pth", "config.yaml", "classes.json"):
        shutil.copy(FIXTURE / name, tmp_path / "run" / name)
    monkeypatch.chdir(tmp_path)
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield tmp_path / "run"
    torch.set_num_threads(old)


def _continued(run: Path) -> list[dict]:
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [r for r in records if r["type"] == "train"]


def test_the_fixture_resumes_and_repeats_its_version(run_dir):
    cfg = load_config(run_dir / "config.yaml", ["train.max_iters=5"])
    train(cfg, resume="auto", progress=False)
    got = _continued(run_dir)
    want = json.loads((FIXTURE / "continued.json").read_text())
    assert [r["iter"] for r in got] == [r["iter"] for r in want] == [4, 5]
    for g, w in zip(got, want):
        for key in LOGGED:
            assert math.isclose(g[key], w[key], rel_tol=1e-6, abs_tol=1e-12), (g["iter"], key, g[key], w[key])


class _PKDWithKnob(PKDMethod):
    """PKD as a later version might ship it: its section has one more field, with a default."""

    config = dataclasses.make_dataclass("PKDConfig", [("new_knob", float, dataclasses.field(default=0.25))],
                                        bases=(PKDConfig,))


def test_a_defaulted_field_added_later_keeps_the_fixture_resuming(run_dir, monkeypatch):
    monkeypatch.setitem(METHODS, "pkd", _PKDWithKnob)
    cfg = load_config(run_dir / "config.yaml", ["train.max_iters=5"])
    assert cfg.distill.methods["pkd"].new_knob == 0.25
    train(cfg, resume="auto", progress=False)
    want = json.loads((FIXTURE / "continued.json").read_text())
    assert [r["loss"] for r in _continued(run_dir)] == pytest.approx([r["loss"] for r in want], rel=1e-6)


def test_the_hash_leaves_out_defaults_but_not_a_changed_value():
    cfg = load_config(FIXTURE / "config.yaml")
    model_plus = dataclasses.make_dataclass("ModelConfig", [("new_knob", int, dataclasses.field(default=3))],
                                            bases=(ModelConfig,))
    grown = dataclasses.replace(cfg, model=model_plus(**{f.name: getattr(cfg.model, f.name)
                                                         for f in dataclasses.fields(ModelConfig)}))
    assert config_hash(grown) == config_hash(cfg)
    assert config_hash(dataclasses.replace(grown, model=dataclasses.replace(grown.model, new_knob=4))) != \
        config_hash(cfg)


def test_a_changed_default_is_refused_through_the_saved_config(run_dir):
    # The saved config says pkd.weight 6 explicitly; a run whose (new default) weight is 5 means another thing.
    cfg = load_config(run_dir / "config.yaml", ["train.max_iters=5", "distill.pkd.weight=5"])
    with pytest.raises(DetkdError, match="was made with a different config"):
        train(cfg, resume="auto", progress=False)
