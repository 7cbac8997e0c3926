"""Every shipped distillation-method recipe builds: the config validates, the teacher/student
pair passes the methods' family, level, stride, anchor and input-size checks (random weights,
nothing is downloaded), and exactly the configured methods are on."""

import dataclasses
import re
from pathlib import Path

import pytest
import torch

from detkd.config.schema import ARCH_FAMILIES
from detkd.recipe import load_config
from detkd.distill.distiller import Distiller
from detkd.distill.methods import METHODS
from detkd.modeling.detector import build_detector

REPO = Path(__file__).resolve().parents[1]
RECIPES = sorted(str(p.relative_to(REPO)) for p in REPO.glob("configs/*/methods/*.yaml"))
BUILT = [r for r in RECIPES if not r.startswith("configs/voc/")]
OFFLINE = ["model.weights_backbone=null", "model.weights=null", "teacher.model.weights=null",
           "teacher.model.weights_backbone=null"]
SCHEDULE = re.compile(r"_\d+x$")  # a COCO recipe's schedule suffix (_1x, _2x), absent from its VOC twin's name
WARPS = ("ssd", "ssdlite")  # families that warp to a fixed size (model.<family>.size): min/max_size do not apply
_models: dict = {}


def _model(cfg):
    key = repr(cfg)  # the recipes share a handful of model configs: build each once
    if key not in _models:
        torch.manual_seed(0)
        _models[key] = build_detector(cfg)
    return _models[key]


def _stems(prefix: str) -> set[str]:
    return {Path(r).stem for r in RECIPES if r.startswith(prefix)}


def _coco_twin(voc_recipe: str) -> str:
    """The COCO recipe of a VOC one: the same name with its schedule suffix (_1x, _2x)."""
    stem = Path(voc_recipe).stem
    twins = [r for r in RECIPES if r.startswith("configs/coco/") and SCHEDULE.sub("", Path(r).stem) == stem]
    assert len(twins) == 1, (voc_recipe, twins)
    return twins[0]


def test_every_method_has_a_recipe_for_every_pair():
    names = {Path(r).stem for r in RECIPES}
    shipped = _stems("configs/demo/")  # a method with a demo recipe ...
    assert shipped and shipped <= set(METHODS)
    for method in shipped:  # ... has one for every pair
        assert f"{method}_r50_to_r18_fpn_1x" in names and f"{method}_r50_to_mnv3_fpn" in names
        assert f"{method}_r50_to_r50_halfres_1x" in names and method in names  # demo


def test_every_coco_method_recipe_has_a_voc_twin():
    """Every (methods, pair) shipped for COCO is shipped for VOC under the same name without the
    schedule suffix, and VOC has no recipe of its own."""
    coco = _stems("configs/coco/")
    assert all(SCHEDULE.search(stem) for stem in coco), "a COCO recipe name ends in its schedule (_1x, _2x)"
    assert {SCHEDULE.sub("", stem) for stem in coco} == _stems("configs/voc/")


def _same_model(a, b) -> bool:
    """Two model configs equal but for the dataset's class count and the input size."""
    def norm(m):
        return dataclasses.replace(m, num_classes=0, min_size=0, max_size=0)
    return norm(a) == norm(b)


@pytest.mark.parametrize("recipe", [r for r in RECIPES if r.startswith("configs/voc/")])
def test_voc_method_recipe_is_its_coco_twin(recipe):
    """The VOC recipes differ from the COCO ones (built below) only in data, classes and input size
    (the VOC base's 600/1000 for COCO's 800/1333; an SSD/SSDlite warps to its fixed size on both)."""
    cfg = load_config(REPO / recipe, OFFLINE)
    twin = load_config(REPO / _coco_twin(recipe), OFFLINE)
    assert cfg.distill == twin.distill
    assert cfg.train == twin.train
    for net, coco_net in ((cfg.teacher.model, twin.teacher.model), (cfg.model, twin.model)):
        assert _same_model(net, coco_net)
        if ARCH_FAMILIES[net.arch] not in WARPS:
            assert net.min_size == coco_net.min_size * 600 // 800


@pytest.mark.parametrize("recipe", BUILT)
def test_method_recipe_builds(recipe):
    cfg = load_config(REPO / recipe, OFFLINE)
    with torch.no_grad():
        d = Distiller(_model(cfg.model), _model(cfg.teacher.model), cfg.distill, student_cfg=cfg.model,
                      teacher_cfg=cfg.teacher.model)
    configured = {name for name, section in cfg.distill.methods.items() if section is not None}
    # The recipe's name says its methods (chen_pkd_*: Chen et al.'s terms of the base recipe and PKD) ...
    assert configured == {word for word in Path(recipe).stem.split("_") if word in METHODS}
    assert set(d.methods) == configured  # ... each of them is built and on ...
    terms = {name: d.methods[name].terms() for name in configured}
    assert d.active_terms() == frozenset().union(*terms.values())  # ... and nothing else is
    for name, own in terms.items():  # every method contributes; its terms carry its name
        assert own, name
        if name == "chen":
            assert {"hint", "rpn_soft", "rcn_bound"} <= own
        elif name in ("crosskd", "predictions"):
            assert own == {f"{name}_cls", f"{name}_reg"}
        else:
            assert own == {name}
    assert d.own_size == ("halfres" in recipe)
