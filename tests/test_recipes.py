"""Every shipped distillation recipe passes the teacher/student compatibility checks
(built with random weights: nothing is downloaded)."""

from pathlib import Path

import pytest
import torch

from detkd.recipe import load_config
from detkd.distill.distiller import Distiller
from detkd.modeling.detector import build_detector

REPO = Path(__file__).resolve().parents[1]
RECIPES = ["configs/voc/distill_r50_to_r18_fpn.yaml", "configs/voc/distill_r50_to_mnv3_fpn.yaml",
           "configs/coco/distill_r50_to_r50_halfres_1x.yaml", "configs/voc/ablations/no_adaptation.yaml",
           "configs/demo/distill_demo.yaml"]


@pytest.mark.parametrize("recipe", RECIPES)
def test_recipe_is_compatible(recipe):
    offline = ["model.weights_backbone=null", "model.weights=null", "teacher.model.weights=null",
               "teacher.model.weights_backbone=null"]
    cfg = load_config(REPO / recipe, offline)
    with torch.no_grad():
        distiller = Distiller(build_detector(cfg.model), build_detector(cfg.teacher.model), cfg.distill,
                              student_cfg=cfg.model, teacher_cfg=cfg.teacher.model)
    expected = {"rcn_soft", "rcn_bound"} if "mnv3" in recipe else {"hint", "rpn_soft", "rpn_bound", "rcn_soft",
                                                                    "rcn_bound"}
    assert distiller.active_terms() == expected
