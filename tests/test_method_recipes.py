"""Every shipped FPN-feature method recipe builds: the config validates, the teacher/student
pair passes the method's level, stride and input-size checks (random weights, nothing is
downloaded), and only the configured method is on."""

from pathlib import Path

import pytest
import torch

from detkd.recipe import load_config
from detkd.distill.distiller import Distiller
from detkd.distill.methods import METHODS
from detkd.modeling.detector import build_detector

REPO = Path(__file__).resolve().parents[1]
RECIPES = sorted(str(p.relative_to(REPO)) for p in REPO.glob("configs/*/methods/*.yaml"))
BUILT = [r for r in RECIPES if not r.startswith("configs/voc/")]
OFFLINE = ["model.weights_backbone=null", "model.weights=null", "teacher.model.weights=null",
           "teacher.model.weights_backbone=null"]
_models: dict = {}


def _model(cfg):
    key = repr(cfg)  # the recipes share a handful of model configs: build each once
    if key not in _models:
        torch.manual_seed(0)
        _models[key] = build_detector(cfg)
    return _models[key]


def test_every_method_has_a_recipe_for_every_pair():
    names = {Path(r).stem for r in RECIPES}
    shipped = {Path(r).stem for r in RECIPES if r.startswith("configs/demo/")}  # a method with a demo recipe ...
    assert shipped and shipped <= set(METHODS)
    for method in shipped:  # ... has one for every pair
        assert f"{method}_r50_to_r18_fpn_1x" in names and f"{method}_r50_to_mnv3_fpn" in names
        assert f"{method}_r50_to_r50_halfres_1x" in names and method in names  # demo


@pytest.mark.parametrize("recipe", [r for r in RECIPES if r.startswith("configs/voc/")])
def test_voc_method_recipe_is_its_coco_twin(recipe):
    """The VOC recipes differ from the COCO ones (built below) only in data and schedule."""
    cfg = load_config(REPO / recipe, OFFLINE)
    twin = load_config(REPO / recipe.replace("voc", "coco").replace(".yaml", "_1x.yaml"), OFFLINE)
    assert cfg.distill == twin.distill
    assert (cfg.teacher.model.min_size, cfg.model.min_size) == (twin.teacher.model.min_size * 600 // 800,
                                                               twin.model.min_size * 600 // 800)


@pytest.mark.parametrize("recipe", BUILT)
def test_method_recipe_builds(recipe):
    cfg = load_config(REPO / recipe, OFFLINE)
    with torch.no_grad():
        d = Distiller(_model(cfg.model), _model(cfg.teacher.model), cfg.distill, student_cfg=cfg.model,
                      teacher_cfg=cfg.teacher.model)
    method = Path(recipe).stem.split("_")[0]
    if method == "chen":  # chen_pkd_*: Chen et al.'s terms of the base recipe and PKD
        assert {"pkd", "hint", "rpn_soft", "rcn_bound"} <= d.active_terms()
    else:
        assert d.active_terms() == {method}
    assert d.own_size == ("halfres" in recipe)
