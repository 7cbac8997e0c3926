"""Golden loss values: every shipped distillation config, shrunk to a tiny input size (the same
overrides every time), given random weights that do not depend on the CPU (:func:`redraw`) and run
in float64 on one fixed batch, gives the loss terms recorded in tests/golden_losses.json. A
refactor that changes any recipe's methods, weights or numbers fails here.

Why not the float32 seeded build: the same computation differs between CPUs' vector kernels
(AVX-512, AVX2, none) by up to ~1e-4 relative after a few hundred float32 accumulations, a term
that is zero in exact arithmetic (CWD of identical maps) comes out as float32 noise, and even the
seeded initial weights differ (``normal_`` has an AVX2 kernel with its own log/cos). In float64
with weights drawn from ``torch.rand`` (the same bits on every kernel) the CPUs agree to ~1e-11
(measured: 5e-12 worst between AVX-512 and plain kernels over every recipe), except the RPN's
objectness loss, which torchvision computes in float32 even in a float64 model (its labels are
float32): one float32 reduction, ~1e-7. So ``REL_TOL`` sits ten times above the kernels and 1e4
times below any real change (a weight moved by 1% moves its term by 1%: tested); ``ABS_TOL``
covers terms that are zero in exact arithmetic.

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
REL_TOL = 1e-6
ABS_TOL = 1e-12  # the inputs are O(1); a zero-in-exact-arithmetic term computes to ~1e-16 in float64
SIDE = 96  # the larger of the two nets' min_size after shrinking
WARPS = ("ssd", "ssdlite")  # families that warp every image to model.<family>.size (no min/max_size)


def _load(path, opts):
    from detkd.recipe import load_config

    return load_config(path, opts)


def distill_recipes() -> list[str]:
    """Every shipped detection config with a distill section (configs/_base_ and cls/ aside; and
    an offline teacher's, whose loss depends on its detections file: tests/test_offline_teacher.py
    compares it with the online teacher's)."""
    found = []
    for p in sorted(REPO.glob("configs/**/*.yaml")):
        rel = p.relative_to(REPO)
        if "_base_" in rel.parts or rel.parts[1] == "cls":
            continue
        cfg = _load(p, [])
        if cfg.distill is not None and not cfg.teacher.detections:
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
    images = [torch.rand(3, 120, 100, generator=g, dtype=torch.float64),
              torch.rand(3, 100, 128, generator=g, dtype=torch.float64)]
    top = min(2, num_classes - 1)
    f64 = torch.float64
    targets = [
        {"boxes": torch.tensor([[10.0, 15.0, 70.0, 90.0], [40.0, 30.0, 95.0, 80.0]], dtype=f64),
         "labels": torch.tensor([1, top]), "image_id": torch.tensor(1)},
        {"boxes": torch.tensor([[5.0, 5.0, 60.0, 50.0]], dtype=f64), "labels": torch.tensor([top]),
         "image_id": torch.tensor(2)},
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


@torch.no_grad()
def redraw(module: torch.nn.Module, seed: int = 0) -> None:
    """Give every parameter that is not a constant (a norm's ones, a zero-initialized layer, a
    prior bias) new values from one ``torch.rand`` stream, in ``named_parameters`` order: uniform
    with Kaiming's variance 2 / fan_in for weights, +-0.1 for vectors. Teacher, student and the
    methods' layers so get distinct weights that are the same on every CPU."""
    g = torch.Generator().manual_seed(seed)
    for _, p in module.named_parameters():
        if p.numel() < 2 or bool((p == p.flatten()[0]).all()):
            continue
        bound = math.sqrt(6.0 / p[0].numel()) if p.dim() > 1 else 0.1
        p.copy_((torch.rand(p.shape, generator=g, dtype=p.dtype) * 2 - 1) * bound)


def losses_of(recipe: str, opts: tuple[str, ...] = ()) -> dict:
    """The recipe's loss terms, in float64, on :func:`fixed_batch`; ``opts`` are more overrides."""
    from detkd.distill.distiller import Distiller

    cfg = _load(REPO / recipe, shrink_opts(_load(REPO / recipe, OFFLINE)) + list(opts))
    student, teacher = _model(cfg.model), _model(cfg.teacher.model)
    torch.manual_seed(1)  # the methods' own layers (adapters, generators)
    d = Distiller(student, teacher, cfg.distill, student_cfg=cfg.model, teacher_cfg=cfg.teacher.model)
    d.double().train()
    redraw(d)
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


def mismatches(got: dict, want: dict) -> list[str]:
    """What differs between two :func:`losses_of` results (empty: equal within the tolerances)."""
    if got["terms"] != want["terms"]:
        return [f"terms {got['terms']} != {want['terms']}"]
    found = []
    for part in ("losses", "stats"):  # stats: unweighted values and bound-active fractions
        if list(got[part]) != list(want[part]):  # the same keys in the same order
            found.append(f"{part} keys {list(got[part])} != {list(want[part])}")
            continue
        found += [f"{key}: {got[part][key]!r} != golden {value!r}" for key, value in want[part].items()
                  if not math.isclose(got[part][key], value, rel_tol=REL_TOL, abs_tol=ABS_TOL)]
    return found


@pytest.mark.parametrize("recipe", sorted(json.loads(GOLDEN.read_text())) if GOLDEN.is_file() else [])
def test_recipe_losses_are_the_golden_ones(recipe):
    assert mismatches(losses_of(recipe), _golden()[recipe]) == []


@pytest.mark.parametrize("opt", ["distill.pkd.weight=6.06", "model.rpn_batch_size_per_image=31"])
def test_a_real_change_of_a_recipe_fails_the_golden_comparison(opt):
    """A method weight moved by 1% (or a sampling size by one) is far outside the tolerances."""
    recipe = "configs/demo/methods/pkd.yaml"
    assert mismatches(losses_of(recipe), _golden()[recipe]) == []
    changed = mismatches(losses_of(recipe, (opt,)), _golden()[recipe])
    assert changed and all("loss" in m or "raw_" in m for m in changed), changed


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
