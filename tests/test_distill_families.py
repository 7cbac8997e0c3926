"""Distillation across detector families (docs/methods.md, section 4) on real torchvision models at
toy sizes: each family's training forward is torchvision's bit for bit; the FPN-feature methods pair
maps by stride between a Faster R-CNN teacher and RetinaNet / FCOS / SSDlite students and run only the
teacher's backbone; CrossKD (same-family one-stage pairs) against an independent float64 computation
of its equations, its gradient path and edge cases; every bad pair is one line before training.

The pure loss functions are checked in test_losses_feature.py and test_losses_crosskd.py.
"""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F

from detkd.config.schema import DistillConfig, ModelConfig
from detkd.distill import Distiller
from detkd.distill.methods import METHODS
from detkd.distill.methods.crosskd import CrossKDConfig
from detkd.distill.methods.features import LevelMethod
from detkd.distill.methods.fgfi import FGFIConfig
from detkd.distill.methods.pkd import PKDConfig
from detkd.errors import DetkdError
from detkd.modeling.detector import build_detector
from detkd.modeling.families import FAMILIES, family_of_model
from detkd.recipe import config_from_dict
from test_distiller import count_calls, mcfg

pytestmark = pytest.mark.usefixtures("one_thread")

ONE_STAGE = ("retinanet", "fcos", "ssdlite")


def model(arch: str, seed: int = 0, **kw):
    """A toy detector of ``arch`` (config built by the loader, so validated like a user's)."""
    base = {"retinanet": dict(backbone="resnet18", out_channels=64, retinanet={"head_norm": "group_norm",
                                                                              "box_loss": "giou"}),
            "retinanet_v1": dict(backbone="resnet18", out_channels=32),
            "fcos": dict(backbone="resnet18", out_channels=64),
            "ssdlite": dict(backbone="mobilenet_v2", ssdlite={"size": 128, "extra_channels": [64, 32, 32, 32]}),
            "ssd": dict(backbone="resnet18", ssd={"size": 128, "extra_channels": [64, 32]}),
            "faster_rcnn": {}}[arch]
    arch_name = "retinanet" if arch == "retinanet_v1" else arch
    if arch == "faster_rcnn":
        cfg = mcfg(**kw)
    else:
        size = {} if arch in ("ssdlite", "ssd") else {"min_size": 128, "max_size": 128}  # SSD: its own size
        tree = {"arch": arch_name, "num_classes": 4, **size, **base, **kw}
        cfg = config_from_dict({"model": tree}).model
    torch.manual_seed(seed)
    return build_detector(cfg)


def batch(with_empty: bool = False):
    g = torch.Generator().manual_seed(7)
    images = [torch.rand(3, 100, 120, generator=g), torch.rand(3, 120, 100, generator=g)]
    targets = [
        {"boxes": torch.tensor([[10.0, 10, 50, 60], [30, 40, 90, 95]]), "labels": torch.tensor([1, 2])},
        {"boxes": torch.tensor([[5.0, 5, 40, 40], [50, 20, 95, 80], [20, 60, 70, 110]]),
         "labels": torch.tensor([3, 1, 2])},
    ]
    if with_empty:
        targets[1] = {"boxes": torch.zeros((0, 4)), "labels": torch.zeros((0,), dtype=torch.int64)}
    return images, targets


def torchvision_forward(m, images, targets, seed):
    """torchvision's own training forward: its losses, the RNG state after it, and the matched
    indices its loss received (RetinaNet/FCOS: ``head.compute_loss``; SSD: ``compute_loss``)."""
    seen = {}
    owner = m if type(m).__name__ == "SSD" else m.head
    original = owner.compute_loss

    def recording(*args):
        seen["matched"] = args[-1]
        return original(*args)

    owner.compute_loss = recording
    try:
        m.train()
        torch.manual_seed(seed)
        losses = m(images, targets)
        rng = torch.get_rng_state()
    finally:
        del owner.compute_loss
    return losses, rng, seen.get("matched")


# ----------------------------------------------------------------------------- training forwards


@pytest.mark.parametrize("arch", ["retinanet", "retinanet_v1", "fcos", "ssdlite", "ssd"])
def test_each_familys_train_step_is_torchvisions_forward_bit_for_bit(arch):
    """The loss terms (values, keys, order), the random draws and the matched indices of the
    family's ``train_step`` are torchvision's own forward's (FCOS's center sampling and scale
    ranges restated in detkd.modeling.families.fcos.match_points: checked here)."""
    m = model(arch)
    for with_empty in (False, True):
        images, targets = batch(with_empty)
        ref, rng, matched = torchvision_forward(m, images, targets, seed=5)
        torch.manual_seed(5)
        step = family_of_model(m).train_step(m, images, targets)
        assert list(step.losses) == list(ref) and torch.equal(torch.get_rng_state(), rng)
        for k in ref:
            assert torch.equal(step.losses[k], ref[k]), (arch, k)
        assert matched is not None and all(torch.equal(a, b) for a, b in zip(step.matched_idxs, matched))
        assert len(step.anchors) == 2 and step.anchors[0].shape[0] == step.head_outputs["cls_logits"].shape[1]
        assert sum(h * w * a for (h, w), a in zip(step.grids, step.anchors_per_location)) == step.anchors[0].shape[0]
    if arch == "fcos":
        assert any(bool((mi >= 0).any()) for mi in step.matched_idxs)  # the matcher found foreground


def test_every_family_has_a_train_step():
    assert all(callable(f.train_step) for f in FAMILIES.values())


# ----------------------------------------------------------------------------- feature methods across families

# The FPN-feature methods that pair maps across families (predictions applies across families too,
# without maps: tests/test_distill_predictions.py).
CROSS = {name: method for name, method in METHODS.items()
         if issubclass(method, LevelMethod) and method.applies_to("retinanet", "faster_rcnn")}


def test_chen_and_crosskd_do_not_apply_across_families_and_the_feature_methods_do():
    assert set(CROSS) == {"pkd", "cwd", "mgd", "fgd", "fgfi", "mimic"}
    across = {name for name, method in METHODS.items() if method.applies_to("retinanet", "faster_rcnn")}
    assert across == set(CROSS) | {"predictions"}
    assert METHODS["crosskd"].applies_to("fcos", "fcos") and not METHODS["crosskd"].applies_to("fcos", "retinanet")


@pytest.mark.parametrize("arch", ONE_STAGE)
@pytest.mark.parametrize("name", list(METHODS))
def test_a_method_at_weight_zero_leaves_a_one_stage_students_loss_torchvisions(arch, name):
    student, teacher = model(arch), model("faster_rcnn", 1)
    d = Distiller(student, teacher, DistillConfig(methods={name: METHODS[name].zero_config()}))
    calls = count_calls(teacher.backbone)
    images, targets = batch()
    d.train()
    torch.manual_seed(3)
    ours = d(images, targets)
    rng = torch.get_rng_state()
    ref, ref_rng, _ = torchvision_forward(student, images, targets, seed=3)
    assert list(ours) == list(ref) and all(torch.equal(ours[k], ref[k]) for k in ref)
    assert torch.equal(sum(ours.values()), sum(ref.values())) and torch.equal(rng, ref_rng)
    assert calls == [] and len(d.methods) == 0


STRIDE_PAIRS = {  # Faster R-CNN R18-FPN teacher: "0" s4, "1" s8, "2" s16, "3" s32, "pool" s64
    "retinanet": [("0", "1"), ("1", "2"), ("2", "3")],  # "p6" (s64) meets "pool" only when asked; "p7": nothing
    "fcos": [("0", "1"), ("1", "2"), ("2", "3")],
    "ssdlite": [("0", "2"), ("1", "3")],  # s16, s32; "2".."5" (s64..s512): no partner
}


@pytest.mark.parametrize("arch", ONE_STAGE)
@pytest.mark.parametrize("name", list(CROSS))
def test_feature_methods_pair_maps_by_stride_and_run_only_the_teachers_backbone(arch, name):
    student = model(arch)
    teacher = model("faster_rcnn", 1, returned_layers=[1, 2, 3, 4])
    d = Distiller(student, teacher, DistillConfig(methods={name: METHODS[name].config()}))
    assert [(p.student, p.teacher) for p in d.methods[name].pairs] == STRIDE_PAIRS[arch]
    t_calls = count_calls(teacher.backbone)
    heads = [count_calls(teacher.rpn), count_calls(teacher.roi_heads)]
    images, targets = batch()
    d.train()
    d.set_image_keys([11, 12])
    torch.manual_seed(4)
    losses = d(images, targets)
    ref, _, _ = torchvision_forward(student, images, targets, seed=4)
    assert list(losses) == [*ref, f"loss_{name}"] and all(torch.equal(losses[k], ref[k]) for k in ref)
    assert len(t_calls) == 1 and heads == [[], []]
    assert torch.isfinite(losses[f"loss_{name}"]) and losses[f"loss_{name}"].item() > 0
    sum(losses.values()).backward()
    assert all(p.grad is None for p in teacher.parameters())
    own = [p for p in d.methods[name].parameters() if p.dim() > 1 and p.abs().sum() > 0]
    assert own and all(p.grad is not None for p in own)


def test_an_opt_in_pair_of_the_subsampled_pool_map_and_stride_errors_across_families():
    student, teacher = model("retinanet"), model("faster_rcnn", 1, returned_layers=[1, 2, 3, 4])
    d = Distiller(student, teacher, DistillConfig(level_map={"p6": "pool"}, methods={"cwd": METHODS["cwd"].config()}))
    assert ("p6", "pool") in [(p.student, p.teacher) for p in d.methods["cwd"].pairs]
    with pytest.raises(DetkdError, match=r"distill.pkd.levels: student level '0' and teacher level '0' have different "
                                         r"strides \(8 vs 4.*level_map \{'0': '1'\}"):
        Distiller(student, teacher, DistillConfig(level_map={"0": "0"}, methods={"pkd": PKDConfig()}))
    with pytest.raises(DetkdError, match=r"distill.pkd.levels: student level 'p7' \(stride 128\) has no teacher map"):
        Distiller(student, teacher, DistillConfig(methods={"pkd": PKDConfig(levels=["p7"])}))
    # The other direction: a student's parameter-free "pool" does not meet a teacher's "p6" by default.
    back = Distiller(model("faster_rcnn", 1, returned_layers=[2, 3, 4]), model("retinanet"),
                     DistillConfig(methods={"cwd": METHODS["cwd"].config()}))
    assert [(p.student, p.teacher) for p in back.methods["cwd"].pairs] == [("0", "0"), ("1", "1"), ("2", "2")]
    ssd = model("ssdlite")
    with pytest.raises(DetkdError, match=r"distill.teacher_input: own is not supported for a student that warps"):
        Distiller(ssd, teacher, DistillConfig(teacher_input="own", methods={"cwd": METHODS["cwd"].config()}))
    far = model("faster_rcnn", 1, returned_layers=[1])  # "0" s4, "pool" s8: nothing at s16 or below
    with pytest.raises(DetkdError, match=r"distill.cwd.levels: no student map has a teacher map of the same stride"):
        Distiller(ssd, far, DistillConfig(methods={"cwd": METHODS["cwd"].config()}))


def test_pairing_by_index_is_mmrazors_heterogeneous_rule():
    """distill.pairing: index pairs the i-th of the method's maps on each side (PKD: teacher P2-P5 with
    student P3-P6), the student's map resized to the teacher's; a level_map entry still wins."""
    student, teacher = model("retinanet"), model("faster_rcnn", 1, returned_layers=[1, 2, 3, 4])
    d = Distiller(student, teacher, DistillConfig(pairing="index", level_map={"p6": "3"},
                                                  methods={"pkd": PKDConfig(), "cwd": METHODS["cwd"].config()}))
    assert [(p.student, p.teacher) for p in d.methods["pkd"].pairs] == [("0", "0"), ("1", "1"), ("2", "2"),
                                                                        ("p6", "3")]
    assert [(p.student, p.teacher) for p in d.methods["cwd"].pairs][-2:] == [("p6", "3"), ("p7", "pool")]
    images, targets = batch()
    losses = d.train()(images, targets)
    assert torch.isfinite(losses["loss_pkd"]) and torch.isfinite(losses["loss_cwd"])


def test_the_loader_fills_the_student_familys_defaults_and_keeps_what_is_written():
    def load(arch: str, distill: dict) -> DistillConfig:
        student = {"arch": arch, "backbone": "resnet18", "num_classes": 4, "out_channels": 64}
        return config_from_dict({"model": student, "teacher": {"model": {"num_classes": 4}, "checkpoint": "t.pth"},
                                 "distill": distill}).distill

    assert load("retinanet", {"pkd": {}}).methods["pkd"].weight == 10.0  # MMRazor's RetinaNet config
    assert load("fcos", {"pkd": {"weight": 2.0}}).methods["pkd"].weight == 2.0
    assert load("faster_rcnn", {"pkd": {}}).methods["pkd"].weight == 6.0
    fgd = load("fcos", {"fgd": {}}).methods["fgd"]
    assert (fgd.temperature, fgd.alpha, fgd.lambda_global) == (0.8, 1.6e-3, 8e-6)
    assert load("retinanet", {"fgd": {}}).methods["fgd"].alpha == 1e-3


def test_fgfi_masks_come_from_the_students_own_positives():
    """RetinaNet: its 9 anchors per location and the psi rule; FCOS: the points its assignment
    made foreground (psi unused)."""
    teacher = model("faster_rcnn", 1, returned_layers=[1, 2, 3, 4])
    images, targets = batch()
    for arch in ("retinanet", "fcos"):
        student = model(arch)
        d = Distiller(student, teacher, DistillConfig(methods={"fgfi": FGFIConfig()}))
        seen = []
        d.methods["fgfi"].register_forward_pre_hook(lambda mod, args: seen.append(args[0]))
        d.train()
        d(images, targets)
        step = seen[0].step
        if arch == "fcos":
            grid = step.grids[0]
            first = [(mi[: grid[0] * grid[1]] >= 0).view(grid).float() for mi in step.matched_idxs]
            assert sum(float(m.sum()) for m in first) > 0
        assert step.anchors_per_location == ([9] * 5 if arch == "retinanet" else [1] * 5)


# ----------------------------------------------------------------------------- bad pairs, before training


def student_teacher_tree(student: dict, teacher: dict, distill: dict) -> dict:
    return {"model": {"num_classes": 4, **student}, "distill": distill,
            "teacher": {"model": {"num_classes": 4, **teacher}, "checkpoint": "t.pth"}}


RETINA = {"arch": "retinanet", "backbone": "resnet18", "out_channels": 64}


@pytest.mark.parametrize("student, teacher, distill, message", [
    (RETINA, {}, {"chen": {}}, r"Chen et al.'s terms read the RPN and RoI heads of a Faster R-CNN "
                               r"student and teacher; this pair is retinanet <- faster_rcnn"),
    ({}, RETINA, {"chen": {"hint": True}}, r"this pair is faster_rcnn <- retinanet"),
    (RETINA, {"arch": "fcos"}, {"crosskd": {}}, r"CrossKD needs a teacher of the student's family"),
    ({"arch": "ssdlite", "backbone": "mobilenet_v2"}, {"arch": "ssdlite"}, {"crosskd": {}},
     r"CrossKD needs a stacked head tower; ssdlite has one depthwise block"),
    ({}, {}, {"crosskd": {}}, r"CrossKD distils one-stage heads \(RetinaNet, FCOS\); the student is a faster_rcnn"),
])
def test_bad_family_pairs_are_one_line_errors_when_the_config_loads(student, teacher, distill, message):
    with pytest.raises(DetkdError, match=r"<dict>: distill\.\w+: .*" + message) as err:
        config_from_dict(student_teacher_tree(student, teacher, distill))
    assert "\n" not in str(err.value)


def test_crosskd_refuses_pairs_it_cannot_line_up():
    def refuse(student, teacher, message, **section):
        with pytest.raises(DetkdError, match=message):
            Distiller(student, teacher, DistillConfig(methods={"crosskd": CrossKDConfig(**section)}))

    retina = model("retinanet")
    refuse(retina, model("retinanet", 1, aspect_ratios=[1.0]), r"CrossKD: teacher and student anchors differ "
                                                              r"\(A_t=3, A_s=9 per location\)")
    refuse(retina, model("retinanet", 1, anchor_sizes=[[16, 20, 25], [32, 40, 50], [64, 80, 101], [128, 161, 203],
                                                       [256, 322, 406]]), r"anchors differ \(sizes")
    refuse(retina, model("retinanet", 1, returned_layers=[3, 4], anchor_sizes=[[64, 80, 101], [128, 161, 203],
                                                                               [256, 322, 406], [512, 645, 812]]),
           r"the two nets' feature levels differ")
    refuse(retina, model("retinanet", 1, num_classes=5), r"class counts differ \(5 vs 4\)")
    refuse(retina, model("retinanet", 1), r"distill.crosskd.layer 5 is beyond the cls tower \(student 4 layers",
           layer=5)
    with pytest.raises(DetkdError, match=r"distill.crosskd compares the two heads anchor by anchor"):
        Distiller(retina, model("retinanet", 1, min_size=160, max_size=160),
                  DistillConfig(teacher_input="own", methods={"crosskd": CrossKDConfig()}))


# ----------------------------------------------------------------------------- CrossKD: value, gradient path


def _pre_activation(tower, family: str, layer: int, x):
    """Layer ``layer``'s output before its activation, written with slices (not the method's loop)."""
    if layer == 0:
        return x
    if family == "retinanet":
        return torch.nn.Sequential(*list(tower[layer - 1])[:-1])(tower[: layer - 1](x))
    return tower[: 3 * layer - 1](x)


def crosskd_reference(student, teacher, images, targets, section: CrossKDConfig, family: str, adapters):
    """L_cls_kd and L_reg_kd from the spec's equations in float64, on torchvision's own matched
    indices (recorded from a plain forward of the student); ``adapters``: tower -> the 1x1 conv."""
    _, _, matched = torchvision_forward(student, images, targets, seed=0)
    student.eval(), teacher.eval()
    il, tg = student.transform(images, targets)
    f_s = list(student.backbone(il.tensors).values())
    f_t = list(teacher.backbone(il.tensors).values())
    maps = [f.shape[-2:] for f in f_s]
    anchors = student.anchor_generator(il, f_s)
    i = section.layer
    outs = {}
    for tower_name, part, final in (("cls", "classification_head", "cls_logits"), ("reg", "regression_head",
                                                                                   "bbox_reg")):
        s_tower, t_tower = getattr(student.head, part).conv, getattr(teacher.head, part).conv
        t_final = getattr(getattr(teacher.head, part), final)
        cross, own = [], []
        for xs, xt in zip(f_s, f_t):
            hs = _pre_activation(s_tower, family, i, xs)
            hs = adapters[tower_name](hs) if tower_name in adapters else hs
            ht = _pre_activation(t_tower, family, i, xt)
            c = hs.shape[1]
            a = hs.transpose(0, 1).reshape(c, -1)
            b = ht.detach().transpose(0, 1).reshape(ht.shape[1], -1)
            sd_a = a.std(dim=1) if a.shape[1] > 1 else torch.zeros(c, dtype=a.dtype)
            sd_b = b.std(dim=1) if b.shape[1] > 1 else torch.zeros(c, dtype=a.dtype)
            h = (hs - a.mean(1).view(1, c, 1, 1)) / (sd_a.view(1, c, 1, 1) + 1e-6) * sd_b.view(1, c, 1, 1) \
                + b.mean(1).view(1, c, 1, 1)
            g = torch.relu(h) if i > 0 else h
            rest = t_tower[i:] if family == "retinanet" else t_tower[3 * i:]
            y = t_final(rest(g))
            y_own = t_final(t_tower(xt))
            if tower_name == "reg" and family == "fcos":
                y, y_own = torch.relu(y), torch.relu(y_own)
            cross.append(y)
            own.append(y_own.detach())
        cols = teacher.head.classification_head.num_classes if tower_name == "cls" else 4
        flat = [torch.cat([o.view(o.shape[0], -1, cols, *hw).permute(0, 3, 4, 1, 2).reshape(o.shape[0], -1, cols)
                           for o, hw in zip(side, maps)], dim=1) for side in (cross, own)]
        outs[tower_name] = flat
    (z_x, z_t), (d_x, d_t) = outs["cls"], outs["reg"]
    m_idx = torch.stack(matched)
    if family == "retinanet":
        m = (m_idx != -2).double()
        z = sum(max(int((mi >= 0).sum()), 1) for mi in matched)
    else:
        m = torch.ones_like(m_idx, dtype=torch.float64)
        z = 0.0
        for n, mi in enumerate(matched):
            for r in torch.nonzero(mi >= 0).flatten().tolist():
                box, pt = tg[n]["boxes"][mi[r]], anchors[n][r]
                cx, cy = (pt[0] + pt[2]) / 2, (pt[1] + pt[3]) / 2
                l_, t_, r_, b_ = cx - box[0], cy - box[1], box[2] - cx, box[3] - cy
                z += math.sqrt(min(l_, r_) / max(l_, r_) * min(t_, b_) / max(t_, b_))
        z = z or 1.0
    if section.normalizer == "torchvision":  # as the student's hard loss: RetinaNet per image, FCOS per batch
        if family == "retinanet":
            per_image = torch.tensor([max(int((mi >= 0).sum()), 1) for mi in matched], dtype=torch.float64)
            m = m / (per_image[:, None] * len(matched))
            z = 1.0
        else:
            z = max(int(sum(int((mi >= 0).sum()) for mi in matched)), 1)
    p, q = torch.sigmoid(z_t), torch.sigmoid(z_x)
    bce = F.binary_cross_entropy_with_logits(z_x, p, reduction="none")
    cls = (m[..., None] * bce * (q - p).abs() ** section.beta).sum() / z
    coder = student.box_coder
    reg = 0.0
    for n in range(len(images)):
        if family == "fcos":
            bx, bt = coder.decode(d_x[n], anchors[n]), coder.decode(d_t[n], anchors[n])
        else:
            bx, bt = coder.decode_single(d_x[n], anchors[n]), coder.decode_single(d_t[n], anchors[n])
        w = m[n] * p[n].max(dim=1).values
        reg = reg + (w * box_loss(bx, bt, section.reg_loss)).sum()
    return cls, reg / z


def box_loss(a, b, kind: str):
    """1 - GIoU or -log IoU of row-aligned xyxy boxes, union and enclosing area clamped at 1e-6."""
    wh = (torch.min(a[:, 2:], b[:, 2:]) - torch.max(a[:, :2], b[:, :2])).clamp(min=0)
    inter = wh[:, 0] * wh[:, 1]
    area = lambda x: (x[:, 2] - x[:, 0]) * (x[:, 3] - x[:, 1])  # noqa: E731
    union = (area(a) + area(b) - inter).clamp(min=1e-6)
    iou = inter / union
    if kind == "iou_log":
        return -iou.clamp(min=1e-6).log()
    ewh = (torch.max(a[:, 2:], b[:, 2:]) - torch.min(a[:, :2], b[:, :2])).clamp(min=0)
    enclose = (ewh[:, 0] * ewh[:, 1]).clamp(min=1e-6)
    return 1 - (iou - (enclose - union) / enclose)


@pytest.mark.parametrize("family, layer, normalizer", [("retinanet", 3, "authors"), ("retinanet", 0, "torchvision"),
                                                       ("fcos", 2, "authors"), ("fcos", 4, "torchvision")])
def test_crosskd_equals_the_spec_equations_in_float64(family, layer, normalizer):
    student = model(family).double()
    teacher = model(family, 1, out_channels=96).double()  # widths differ: the 1x1 adapters are in the path
    section = CrossKDConfig(layer=layer, reg_loss="giou" if family == "retinanet" else "iou_log",
                            weight_cls=0.5, weight_reg=0.75, normalizer=normalizer)
    d = Distiller(student, teacher, DistillConfig(methods={"crosskd": section})).double()
    images, targets = batch()
    images = [im.double() for im in images]
    targets = [{**t, "boxes": t["boxes"].double()} for t in targets]
    d.train()
    losses = {k: v.detach() for k, v in d(images, targets).items()}
    with torch.no_grad():
        cls, reg = crosskd_reference(student, teacher, images, targets, section, family,
                                     dict(d.methods["crosskd"].adapters.items()))
    assert float(losses["loss_crosskd_cls"]) == pytest.approx(0.5 * float(cls), rel=1e-9, abs=1e-15)
    assert float(losses["loss_crosskd_reg"]) == pytest.approx(0.75 * float(reg), rel=1e-9)
    assert float(losses["loss_crosskd_reg"]) > 0 and float(losses["loss_crosskd_cls"]) > 0


def test_crosskd_gradient_reaches_only_the_students_layers_up_to_i_and_its_adapters():
    student, teacher = model("fcos"), model("fcos", 1, out_channels=96)
    d = Distiller(student, teacher, DistillConfig(methods={"crosskd": CrossKDConfig(layer=2)}))
    images, targets = batch()
    d.train()
    losses = d(images, targets)
    (losses["loss_crosskd_cls"] + losses["loss_crosskd_reg"]).backward()
    tower = student.head.classification_head.conv
    assert tower[0].weight.grad.abs().sum() > 0 and tower[3].weight.grad.abs().sum() > 0  # layers 1, 2
    assert tower[6].weight.grad is None and tower[9].weight.grad is None  # layers 3, 4: ground truth only
    assert student.head.classification_head.cls_logits.weight.grad is None
    assert student.head.regression_head.bbox_reg.weight.grad is None
    assert student.backbone.fpn.layer_blocks[0][0].weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in teacher.parameters())
    assert all(p.grad is not None for p in d.methods["crosskd"].adapters.parameters())
    assert d.active_terms() == {"crosskd_cls", "crosskd_reg"} and "crosskd_z" in d.last_stats


def test_crosskd_of_a_student_equal_to_its_teacher_is_zero_and_empty_images_work():
    teacher = model("retinanet", 1)
    student = copy.deepcopy(teacher).requires_grad_(True)
    d = Distiller(student, teacher, DistillConfig(methods={"crosskd": CrossKDConfig()}))
    images, targets = batch()
    d.train()
    losses = d(images, targets)
    # h~ = h_t up to eps: the cross head is the teacher's own head, q = p and the boxes coincide.
    assert losses["loss_crosskd_cls"].item() < 1e-6 and losses["loss_crosskd_reg"].item() < 1e-4
    images, targets = batch(with_empty=True)
    losses = d(images, targets)
    assert all(torch.isfinite(v) for v in losses.values())
    positives = int((family_of_model(student).train_step(student, images, targets).matched_idxs[0] >= 0).sum())
    assert d.last_stats["crosskd_z"] == max(positives, 1) + 1  # the empty image adds 1 (RetinaNet)
    fcos = model("fcos")
    d = Distiller(fcos, model("fcos", 1), DistillConfig(methods={"crosskd": CrossKDConfig(layer=2)}))
    images, targets = batch(with_empty=True)
    targets[0] = targets[1]
    losses = d.train()(images, targets)
    assert d.last_stats["crosskd_z"] == 1.0 and all(torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()  # every term stays in the graph


def test_crosskd_mixes_retinanet_v1_and_v2_towers():
    d = Distiller(model("retinanet_v1"), model("retinanet", 1), DistillConfig(methods={"crosskd": CrossKDConfig()}))
    images, targets = batch()
    losses = d.train()(images, targets)
    assert {"loss_crosskd_cls", "loss_crosskd_reg"} <= set(losses)
    assert "cls" in d.methods["crosskd"].adapters  # 32 -> 64 channels
