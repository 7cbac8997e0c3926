"""Golden loss values: every shipped distillation config, shrunk to a tiny input size (the same
overrides every time), built with seeded random weights and run on one fixed batch, gives the
loss terms recorded in tests/golden_losses.json (written from main at 6c19121, before the
issue #19 refactor of the method configs). A refactor that changes any recipe's methods,
weights or numbers fails here.

Regenerate (only when a loss is meant to change): ``python tests/test_golden_losses.py --write``.
A recipe added since is recorded when it is added, leaving every existing entry as it is, with
``python tests/test_golden_losses.py --write-missing [RECIPE ...]`` (no RECIPE: every recipe
without an entry).
"""

from __future__ import annotations

import copy
import json
import math
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
GOLDEN = REPO / "tests" / "golden_losses.json"
OFFLINE = ["model.weights_backbone=null", "model.weights=null", "teacher.model.weights=null",
           "teacher.model.weights_backbone=null"]
# Small RPN/RoI sample sizes for Faster R-CNN nets (the teacher's only matter for its sizes).
SMALL = {"rpn_pre_nms_top_n_train": 100, "rpn_post_nms_top_n_train": 50, "rpn_pre_nms_top_n_test": 100,
         "rpn_post_nms_top_n_test": 50, "rpn_batch_size_per_image": 32, "box_batch_size_per_image": 16,
         "representation_size": 64}
SIDE = 96  # the larger of the two nets' min_size after shrinking
WARPS = ("ssd", "ssdlite")  # families that warp every image to model.<family>.size (no min/max_size)


def _load(path, opts):
    from detkd.recipe import load_config

    return load_config(path, opts)


def distill_recipes() -> list[str]:
    """Every shipped detection config with a distill section (configs/_base_ and cls/ aside)."""
    found = []
    for p in sorted(REPO.glob("configs/**/*.yaml")):
        rel = p.relative_to(REPO)
        if "_base_" in rel.parts or rel.parts[1] == "cls":
            continue
        if _load(p, []).distill is not None:
            found.append(str(rel))
    return found


def shrink_opts(cfg) -> list[str]:
    """Overrides scaling both nets' input sizes so the larger min_size is SIDE (ratios kept), with
    small RPN/RoI samples for a Faster R-CNN net: only the keys that apply to each net's family. An
    SSD/SSDlite warps to its fixed size: detkd's (arch ssd/ssdlite) is shrunk to at most SIDE, the
    stock builders' (ssdlite320: 320, ssd300: 300) is fixed and kept."""
    from detkd.config.schema import ARCH_FAMILIES

    nets = (("model", cfg.model), ("teacher.model", cfg.teacher.model))
    sized = [m.min_size for _, m in nets if ARCH_FAMILIES[m.arch] not in WARPS]
    ref = max(sized) if sized else SIDE
    opts = list(OFFLINE)
    for prefix, m in nets:
        family = ARCH_FAMILIES[m.arch]
        if family in WARPS:
            if m.arch == family:
                opts.append(f"{prefix}.{family}.size={min(getattr(m, family).size, SIDE)}")
            continue
        opts += [f"{prefix}.min_size={max(16, round(m.min_size * SIDE / ref))}",
                 f"{prefix}.max_size={max(16, round(m.max_size * SIDE / ref))}"]
        if family == "faster_rcnn":
            opts += [f"{prefix}.{k}={v}" for k, v in SMALL.items() if m.arch == "custom" or k != "representation_size"]
    return opts


def fixed_batch(num_classes: int):
    g = torch.Generator().manual_seed(0)
    images = [torch.rand(3, 120, 100, generator=g), torch.rand(3, 100, 128, generator=g)]
    top = min(2, num_classes - 1)
    targets = [
        {"boxes": torch.tensor([[10.0, 15.0, 70.0, 90.0], [40.0, 30.0, 95.0, 80.0]]),
         "labels": torch.tensor([1, top]), "image_id": torch.tensor(1)},
        {"boxes": torch.tensor([[5.0, 5.0, 60.0, 50.0]]), "labels": torch.tensor([top]), "image_id": torch.tensor(2)},
    ]
    return images, targets


_models: dict = {}


def _model(model_cfg):
    from detkd.modeling.detector import build_detector

    key = repr(model_cfg)
    if key not in _models:  # pristine copies: training-mode BatchNorm updates the one used
        torch.manual_seed(0)
        _models[key] = build_detector(model_cfg)
    return copy.deepcopy(_models[key])


def losses_of(recipe: str) -> dict:
    from detkd.distill.distiller import Distiller

    cfg = _load(REPO / recipe, shrink_opts(_load(REPO / recipe, OFFLINE)))
    student, teacher = _model(cfg.model), _model(cfg.teacher.model)
    torch.manual_seed(1)  # the methods' own layers (adapters, generators)
    d = Distiller(student, teacher, cfg.distill, student_cfg=cfg.model, teacher_cfg=cfg.teacher.model)
    d.train()
    images, targets = fixed_batch(cfg.model.num_classes)
    torch.manual_seed(2)  # torchvision's anchor / proposal sampling, MGD's masks
    losses = d(images, targets)
    return {"terms": sorted(d.active_terms()), "losses": {k: float(v.detach()) for k, v in losses.items()},
            "stats": dict(sorted(d.last_stats.items()))}


def _golden() -> dict:
    return json.loads(GOLDEN.read_text())


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


def test_every_distillation_recipe_has_golden_values():
    assert sorted(_golden()) == distill_recipes()


@pytest.mark.parametrize("recipe", sorted(json.loads(GOLDEN.read_text())) if GOLDEN.is_file() else [])
def test_recipe_losses_are_the_golden_ones(recipe):
    want = _golden()[recipe]
    got = losses_of(recipe)
    assert got["terms"] == want["terms"]
    assert list(got["losses"]) == list(want["losses"])  # the same terms in the same order
    for key, value in want["losses"].items():
        assert math.isclose(got["losses"][key], value, rel_tol=1e-6, abs_tol=1e-12), (key, got["losses"][key], value)
    assert list(got["stats"]) == list(want["stats"])  # unweighted values and bound-active fractions
    for key, value in want["stats"].items():
        assert math.isclose(got["stats"][key], value, rel_tol=1e-6, abs_tol=1e-12), (key, got["stats"][key], value)


if __name__ == "__main__":
    mode, recipes = (sys.argv[1], sys.argv[2:]) if sys.argv[1:] else ("", [])
    if mode not in ("--write", "--write-missing") or (mode == "--write" and recipes):
        sys.exit(__doc__)
    torch.set_num_threads(1)
    if mode == "--write":
        values = {r: losses_of(r) for r in distill_recipes()}
        GOLDEN.write_text(json.dumps(values, indent=1) + "\n")  # distill_recipes() is sorted
        print(f"wrote {len(values)} recipes to {GOLDEN}")
    else:  # add entries, never rewrite one (the existing ones were recorded at older commits)
        values = _golden()
        shipped = distill_recipes()
        todo = recipes or [r for r in shipped if r not in values]
        for r in todo:
            if r in values or r not in shipped:
                sys.exit(f"{r}: {'has an entry already' if r in values else 'not a shipped distillation recipe'}")
        values.update({r: losses_of(r) for r in todo})
        GOLDEN.write_text(json.dumps(dict(sorted(values.items())), indent=1) + "\n")
        print(f"added {len(todo)} recipes to {GOLDEN}: {', '.join(todo)}")
