"""Tests of :class:`detkd.distill.Distiller` (Chen et al., NeurIPS 2017; docs/methods.md, section 1).

Real torchvision Faster R-CNNs at toy sizes (ResNet-18 FPN with 32 channels, 128 px images,
4 classes). Expected values come from torchvision's own ``model(images, targets)`` (with
hooks recording its sampled rows) or are written out from the equations, never from the
distiller's code path.
"""

from __future__ import annotations

import copy
from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F
from torchvision.models.detection.rpn import concat_box_prediction_layers
from torchvision.models.detection.transform import GeneralizedRCNNTransform

from detkd.config.schema import Config, DistillConfig, ModelConfig, TeacherConfig
from detkd.distill.methods import ChenConfig
from detkd.distill import Distiller, build_distiller
from detkd.errors import DetkdError
from detkd.modeling.detector import build_detector

HARD_KEYS = ["loss_classifier", "loss_box_reg", "loss_objectness", "loss_rpn_box_reg"]
ALL_KEYS = HARD_KEYS + ["loss_rcn_soft", "loss_rcn_bound", "loss_rpn_soft", "loss_rpn_bound", "loss_hint"]
ALL_OFF = dict(hint=False, rpn_soft=False, rcn_soft=False, rpn_bound=False, rcn_bound=False)
RUN_WIDE = ("start_epoch", "stop_epoch", "teacher_input", "level_map")


def chen(**options) -> DistillConfig:
    """The distill section with Chen et al. alone (``options``: its own and the run-wide keys)."""
    run = {k: options.pop(k) for k in RUN_WIDE if k in options}
    return DistillConfig(**run, methods={"chen": ChenConfig(**options)})


def rechen(cfg: DistillConfig, **options) -> DistillConfig:
    """``cfg`` with Chen et al.'s ``options`` replaced."""
    return replace(cfg, methods={**cfg.methods, "chen": replace(cfg.methods["chen"], **options)})


pytestmark = pytest.mark.usefixtures("one_thread")


def mcfg(**kw) -> ModelConfig:
    base = dict(arch="custom", backbone="resnet18", num_classes=4, out_channels=32, min_size=128, max_size=128,
                representation_size=64, rpn_batch_size_per_image=64, box_batch_size_per_image=32,
                rpn_pre_nms_top_n_train=200, rpn_post_nms_top_n_train=100)
    return ModelConfig(**{**base, **kw})


def build(cfg: ModelConfig, seed: int = 0):
    torch.manual_seed(seed)
    return build_detector(cfg)


def batch():
    g = torch.Generator().manual_seed(123)
    # Different shapes, so the batched tensor has padding.
    images = [torch.rand(3, 100, 120, generator=g), torch.rand(3, 120, 100, generator=g)]
    targets = [
        {"boxes": torch.tensor([[10.0, 10, 50, 60], [30, 40, 90, 95]]), "labels": torch.tensor([1, 2])},
        {"boxes": torch.tensor([[5.0, 5, 40, 40], [50, 20, 95, 80], [20, 60, 70, 110]]),
         "labels": torch.tensor([3, 1, 2])},
    ]
    return images, targets


def count_calls(module):
    calls = []
    module.register_forward_hook(lambda m, i, o: calls.append(1))
    return calls


def torchvision_reference(student, images, targets, seed):
    """torchvision's own training forward, recording the rows it sampled."""
    rec = {}
    sampler = student.rpn.fg_bg_sampler

    def recording_sampler(labels):
        pos, neg = sampler(labels)
        rec["rpn_pos"], rec["rpn_neg"] = pos, neg
        return pos, neg

    student.rpn.fg_bg_sampler = recording_sampler
    h1 = student.rpn.head.register_forward_hook(lambda m, i, o: rec.__setitem__("rpn_head", o))
    h2 = student.roi_heads.box_predictor.register_forward_hook(lambda m, i, o: rec.__setitem__("predictor", o))
    h3 = student.backbone.register_forward_pre_hook(lambda m, i: rec.__setitem__("input", i[0]))
    select = student.roi_heads.select_training_samples
    encode = student.rpn.box_coder.encode

    def recording_select(*args):
        rec["rcn_samples"] = select(*args)
        return rec["rcn_samples"]

    def recording_encode(*args):
        rec["rpn_targets"] = encode(*args)
        return rec["rpn_targets"]

    student.roi_heads.select_training_samples = recording_select
    student.rpn.box_coder.encode = recording_encode
    try:
        student.train()
        torch.manual_seed(seed)
        rec["losses"] = student(images, targets)
        rec["rng"] = torch.get_rng_state()
    finally:
        student.rpn.fg_bg_sampler = sampler
        del student.roi_heads.select_training_samples, student.rpn.box_coder.encode
        h1.remove(), h2.remove(), h3.remove()
    return rec


def run(distiller, images, targets, seed):
    distiller.train()
    torch.manual_seed(seed)
    losses = distiller(images, targets)
    return losses, torch.get_rng_state()


# --------------------------------------------------------------------------- 1. exact reduction


@pytest.mark.parametrize("dcfg", [chen(mu=1.0, nu=0.0, gamma=0.0), chen(**ALL_OFF)],
                         ids=["weights_zero", "switches_off"])
def test_zero_distillation_equals_torchvision_exactly(dcfg):
    images, targets = batch()
    student, teacher = build(mcfg(), 0), build(mcfg(), 1)
    d = Distiller(student, teacher, dcfg)
    teacher_calls = count_calls(teacher.backbone)
    ours, rng_ours = run(d, images, targets, seed=7)
    ref = torchvision_reference(student, images, targets, seed=7)
    assert list(ours) == list(ref["losses"])  # torchvision's key order, nothing else
    for k in ref["losses"]:
        assert torch.equal(ours[k], ref["losses"][k]), k
    assert torch.equal(sum(ours.values()), sum(ref["losses"].values()))
    assert torch.equal(rng_ours, ref["rng"])  # same random draws
    assert teacher_calls == [] and "chen" not in d.methods and d.last_stats == {}


# --------------------------------------------------------------------------- 2. rows line up


def _weighted_entropy(logits: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    p = torch.softmax(logits.double(), dim=1)
    return -(w.double() * p * torch.log(p)).sum(dim=1).mean()


def _sharpen(model):
    # Random-init RPN logits are ~0 (std 0.01 weights): make rows distinguishable so a
    # row mix-up changes the soft losses measurably.
    with torch.no_grad():
        torch.manual_seed(5)
        model.rpn.head.cls_logits.weight.normal_(0.0, 0.5)
        model.roi_heads.box_predictor.cls_score.weight.mul_(20.0)
    return model


def test_rows_line_up_with_a_copy_of_the_student():
    images, targets = batch()
    student = _sharpen(build(mcfg(), 0))
    teacher = copy.deepcopy(student)
    cfg = chen(adapter="identity", margin=0.0)  # mu 0.5, T 1, bg weight 1.5
    ref = torchvision_reference(student, images, targets, seed=11)

    # Expected soft losses, from torchvision's recorded rows: with P_t = P_s the weighted
    # soft CE is the weighted entropy of the student's own distribution.
    w = torch.tensor([1.5, 1.0, 1.0, 1.0])
    expect_rcn = _weighted_entropy(ref["predictor"][0], w)
    per_level = ref["rpn_head"][0]  # [N, A, H, W] per level
    obj = torch.cat([torch.cat([o[n].permute(1, 2, 0).reshape(-1) for o in per_level])
                     for n in range(per_level[0].shape[0])])
    sampled = torch.where(torch.cat(ref["rpn_pos"]) | torch.cat(ref["rpn_neg"]))[0]
    p_fg = torch.sigmoid(obj[sampled].double())
    expect_rpn = -(1.5 * (1 - p_fg) * torch.log1p(-p_fg) + p_fg * torch.log(p_fg)).mean()

    d = Distiller(student, teacher, cfg)
    t_input = []
    teacher.backbone.register_forward_pre_hook(lambda m, i: t_input.append(i[0]))
    losses, rng = run(d, images, targets, seed=11)
    stats = d.last_stats
    assert torch.equal(rng, ref["rng"])
    assert torch.equal(t_input[0], ref["input"])  # same transformed batch, no re-normalization
    assert stats["raw_rcn_soft"] == pytest.approx(expect_rcn.item(), rel=1e-5)
    assert stats["raw_rpn_soft"] == pytest.approx(expect_rpn.item(), rel=1e-5)
    assert expect_rcn.item() > 0.05 and expect_rpn.item() > 0.05
    # Student == teacher: ||R_s - y||^2 + 0 > ||R_t - y||^2 holds on no row ...
    assert stats["rpn_bound_active"] == 0.0 and stats["rcn_bound_active"] == 0.0
    assert stats["raw_rpn_bound"] == 0.0 and stats["raw_rcn_bound"] == 0.0
    assert stats["raw_hint"] == 0.0  # identity adapter, same features
    # ... and with a margin on every positive row.
    d_margin = Distiller(student, teacher, rechen(cfg, margin=0.1))
    run(d_margin, images, targets, seed=11)
    assert d_margin.last_stats["rpn_bound_active"] == 1.0 and d_margin.last_stats["rcn_bound_active"] == 1.0
    # Every positive row active: the bound is sum over positives of ||R_s - y||^2 divided
    # by the number of sampled rows (torchvision's smooth-L1 normalization), with the RoI
    # deltas taken at the ground-truth class.
    _, _, labels, reg_targets = ref["rcn_samples"]
    labels, reg_targets = torch.cat(labels), torch.cat(reg_targets)
    pos = torch.where(labels > 0)[0]
    box_reg = ref["predictor"][1].reshape(labels.numel(), -1, 4)[pos, labels[pos]]
    expect = ((box_reg - reg_targets[pos]) ** 2).sum() / labels.numel()
    assert d_margin.last_stats["raw_rcn_bound"] == pytest.approx(expect.item(), rel=1e-5)
    rpn_pos = torch.where(torch.cat(ref["rpn_pos"]))[0]
    _, rpn_deltas = concat_box_prediction_layers(*ref["rpn_head"])
    rpn_y = torch.cat(ref["rpn_targets"])
    expect = ((rpn_deltas[rpn_pos] - rpn_y[rpn_pos]) ** 2).sum() / sampled.numel()
    assert d_margin.last_stats["raw_rpn_bound"] == pytest.approx(expect.item(), rel=1e-5)
    assert expect.item() > 0 and pos.numel() < labels.numel()
    # Plain L2 to the teacher (ablation) is exactly 0 on identical nets.
    d_l2 = Distiller(student, teacher, rechen(cfg, bound_kind="l2", **{k: False for k in ALL_OFF
                                                                        if "bound" not in k}))
    l2, _ = run(d_l2, images, targets, seed=11)
    assert l2["loss_rpn_bound"].item() == 0.0 and l2["loss_rcn_bound"].item() == 0.0

    # The classic bug: teacher rows in another order than the student's. Flip the
    # teacher's RoI rows and its RPN maps: the soft losses no longer equal the entropy.
    teacher.roi_heads.box_predictor.register_forward_hook(lambda m, i, o: (o[0].flip(0), o[1].flip(0)))
    teacher.rpn.head.register_forward_hook(lambda m, i, o: ([x.flip(-1) for x in o[0]], [x.flip(-1) for x in o[1]]))
    d_bug = Distiller(student, teacher, cfg)
    run(d_bug, images, targets, seed=11)
    assert abs(d_bug.last_stats["raw_rcn_soft"] - expect_rcn.item()) > 1e-2
    assert abs(d_bug.last_stats["raw_rpn_soft"] - expect_rpn.item()) > 1e-3
    assert d_bug.last_stats["rcn_bound_active"] > 0


# --------------------------------------------------------------------------- 3. frozen teacher


def test_teacher_is_frozen_and_stays_in_eval_mode():
    images, targets = batch()
    student = build(mcfg(norm="bn"), 0)
    teacher = build(mcfg(norm="bn", out_channels=48), 1)
    teacher.train()  # the Distiller must put it in eval mode
    student_before = copy.deepcopy(student.state_dict())
    d = Distiller(student, teacher, chen())
    # The construction-time backbone probe runs in eval mode: no BatchNorm update.
    assert all(torch.equal(v, student.state_dict()[k]) for k, v in student_before.items())
    teacher_before = copy.deepcopy(teacher.state_dict())
    assert any("running_mean" in k for k in teacher_before)
    assert all(not p.requires_grad for p in teacher.parameters())
    params = [p for p in d.parameters() if p.requires_grad]
    assert {id(p) for p in params}.isdisjoint(id(p) for p in teacher.parameters())
    opt = torch.optim.SGD(params, lr=0.01, momentum=0.9)

    d.train()
    assert d.training and student.training and not any(m.training for m in teacher.modules())
    losses = d(images, targets)
    opt.zero_grad()
    sum(losses.values()).backward()
    opt.step()

    assert all(p.grad is None for p in teacher.parameters())
    teacher_after = teacher.state_dict()
    assert all(torch.equal(v, teacher_after[k]) for k, v in teacher_before.items())
    # The student did train (its BatchNorm statistics moved, its weights too).
    assert not torch.equal(student_before["backbone.body.bn1.running_mean"],
                           student.state_dict()["backbone.body.bn1.running_mean"])
    d.train(True)
    assert not any(m.training for m in teacher.modules())
    # Eval mode is the student's inference.
    d.eval()
    with torch.no_grad():
        detections = d(images)
    assert isinstance(detections, list) and set(detections[0]) == {"boxes", "labels", "scores"}


# --------------------------------------------------------------------------- 4. default objective


def test_default_objective_terms_weights_and_gradients():
    images, targets = batch()
    student = build(mcfg(), 0)
    teacher = build(mcfg(out_channels=64, representation_size=96), 1)  # bigger teacher
    d = Distiller(student, teacher, chen())
    assert d.methods["chen"].adapters.channels == {"0": (32, 64)}
    losses, rng = run(d, images, targets, seed=3)
    assert list(losses) == ALL_KEYS
    assert all(v.dim() == 0 and torch.isfinite(v) for v in losses.values())
    stats = d.last_stats
    assert all(isinstance(v, float) for v in stats.values())

    # Hard terms are torchvision's, scaled by mu (cls) and lam (reg); same random draws
    # even though the teacher ran in between.
    ref = torchvision_reference(student, images, targets, seed=3)
    assert torch.equal(rng, ref["rng"])
    assert torch.equal(losses["loss_classifier"], 0.5 * ref["losses"]["loss_classifier"])
    assert torch.equal(losses["loss_objectness"], 0.5 * ref["losses"]["loss_objectness"])
    assert torch.equal(losses["loss_box_reg"], ref["losses"]["loss_box_reg"])
    assert torch.equal(losses["loss_rpn_box_reg"], ref["losses"]["loss_rpn_box_reg"])
    # Distillation terms: (1 - mu) * soft, lam * nu * bound, gamma * hint.
    for key, raw in [("loss_rcn_soft", "raw_rcn_soft"), ("loss_rpn_soft", "raw_rpn_soft"),
                     ("loss_rcn_bound", "raw_rcn_bound"), ("loss_rpn_bound", "raw_rpn_bound"),
                     ("loss_hint", "raw_hint")]:
        assert losses[key].item() == 0.5 * stats[raw], key
    assert 0.0 <= stats["rpn_bound_active"] <= 1.0 and 0.0 <= stats["rcn_bound_active"] <= 1.0
    assert stats["raw_hint"] > 0 and stats["raw_rcn_soft"] > 0

    total = sum(losses.values())
    assert total.item() == pytest.approx(sum(v.item() for v in losses.values()), rel=1e-6)
    total.backward()
    adapter = d.methods["chen"].adapters.adapter("0")
    assert adapter.weight.grad is not None and adapter.weight.grad.abs().sum() > 0
    for name in ["backbone.body.layer1.0.conv1.weight", "backbone.fpn.layer_blocks.0.0.weight",
                 "rpn.head.cls_logits.weight", "roi_heads.box_predictor.cls_score.weight"]:
        grad = dict(student.named_parameters())[name].grad
        assert grad is not None and grad.abs().sum() > 0, name
    assert all(p.grad is None for p in teacher.parameters())


# --------------------------------------------------------------------------- 5. compatibility


def _config(tmp_path, student_cfg, teacher_cfg, ckpt_cfg=None, **distill):
    path = tmp_path / "teacher.pth"
    torch.save(build(ckpt_cfg or teacher_cfg, 1).state_dict(), path)
    return Config(model=student_cfg, teacher=TeacherConfig(model=teacher_cfg, checkpoint=str(path)),
                  distill=chen(**distill))


def test_build_distiller_loads_and_freezes_the_teacher(tmp_path):
    cfg = _config(tmp_path, mcfg(), mcfg())
    saved = torch.load(cfg.teacher.checkpoint, weights_only=True)
    d = build_distiller(cfg, build(cfg.model, 0))
    assert all(torch.equal(v, saved[k]) for k, v in d.teacher.state_dict().items())
    assert not any(p.requires_grad for p in d.teacher.parameters()) and not d.teacher.training


@pytest.mark.parametrize(
    "teacher_kw, distill_kw, match",
    [
        (dict(num_classes=5), {}, r"class counts differ: teacher\.model\.num_classes gives 5"),
        (dict(anchor_sizes=[[16], [32], [64], [128], [256]]), {}, r"RPN distillation .* same anchors"),
        (dict(aspect_ratios=[1.0]), dict(rpn_soft=True, rpn_bound=False),
         r"distill\.chen\.rpn_soft\) needs the same anchors"),
        ({}, dict(hint_levels=["0", "p9"]), r"level 'p9' is not a student feature map; available: 0, 1, 2, 3, pool"),
        (dict(out_channels=64), dict(adapter="identity"), r"'identity' needs equal channels at hint level '0'"),
    ],
    ids=["classes", "anchor_sizes", "aspect_ratios", "hint_level", "identity_channels"],
)
def test_incompatible_teacher_is_refused(tmp_path, teacher_kw, distill_kw, match):
    cfg = _config(tmp_path, mcfg(), mcfg(**teacher_kw), **distill_kw)
    with pytest.raises(DetkdError, match=match) as err:
        build_distiller(cfg, build(cfg.model, 0))
    assert "\n" not in str(err.value)


def test_anchor_and_stride_mismatch_allowed_without_rpn_terms(tmp_path):
    no_rpn = dict(rpn_soft=False, rpn_bound=False)
    cfg = _config(tmp_path, mcfg(), mcfg(anchor_sizes=[[16], [32], [64], [128], [256]]), **no_rpn)
    build_distiller(cfg, build(cfg.model, 0))  # no error
    # Same levels and anchors, different strides (layers 2-4 vs 1-3): refused only with RPN terms.
    student_cfg, teacher_cfg = mcfg(returned_layers=[2, 3, 4]), mcfg(returned_layers=[1, 2, 3])
    cfg = _config(tmp_path, student_cfg, teacher_cfg)
    with pytest.raises(DetkdError, match=r"same feature strides: on a 256x256 image the student's maps are \[0: 32x32"):
        build_distiller(cfg, build(student_cfg, 0))
    d = build_distiller(replace(cfg, distill=chen(**no_rpn)), build(student_cfg, 0))
    assert d.methods["chen"].adapters.channels == {"0": (32, 32)}  # hint maps resized 32x32 -> 64x64


def test_mismatched_checkpoint_and_box_coder(tmp_path):
    cfg = _config(tmp_path, mcfg(), mcfg(), ckpt_cfg=mcfg(out_channels=64))
    with pytest.raises(DetkdError, match=r"teacher\.checkpoint .*teacher\.pth does not match") as err:
        build_distiller(cfg, build(cfg.model, 0))
    assert cfg.teacher.checkpoint in str(err.value) and "\n" not in str(err.value)

    student, teacher = build(mcfg(), 0), build(mcfg(), 1)
    teacher.roi_heads.box_coder.weights = (5.0, 5.0, 2.5, 2.5)
    with pytest.raises(DetkdError, match=r"distill\.chen\.rcn_bound: roi_heads\.box_coder weights differ"):
        Distiller(student, teacher, chen())
    Distiller(student, teacher, chen(rcn_bound=False))  # deltas not compared: fine


# --------------------------------------------------------------------------- 6. schedule


def test_start_and_stop_epoch_switch_the_terms():
    images, targets = batch()
    student, teacher = build(mcfg(), 0), build(mcfg(), 1)
    d = Distiller(student, teacher, chen(start_epoch=1, stop_epoch=3))
    calls = count_calls(teacher.backbone)
    d.set_epoch(0)
    off, _ = run(d, images, targets, seed=5)
    ref = torchvision_reference(student, images, targets, seed=5)["losses"]
    assert list(off) == HARD_KEYS and calls == [] and d.last_stats == {}
    assert all(torch.equal(off[k], ref[k]) for k in HARD_KEYS)  # plain loss, no mu factor
    d.set_epoch(1)
    on, _ = run(d, images, targets, seed=5)
    assert list(on) == ALL_KEYS and len(calls) == 1
    d.set_epoch(3)
    off_again, _ = run(d, images, targets, seed=5)
    assert list(off_again) == HARD_KEYS and len(calls) == 1


# --------------------------------------------------------------------------- 7. re-normalization


def test_teacher_input_is_renormalized():
    images, targets = batch()
    t_mean, t_std = [0.5, 0.4, 0.3], [0.25, 0.2, 0.3]
    student = build(mcfg(), 0)
    teacher = build(mcfg(image_mean=t_mean, image_std=t_std), 1)
    d = Distiller(student, teacher, chen(**{**ALL_OFF, "hint": True}))
    seen, student_seen = [], []
    teacher.backbone.register_forward_pre_hook(lambda m, i: seen.append(i[0]))
    student.backbone.register_forward_pre_hook(lambda m, i: student_seen.append(i[0]))
    run(d, images, targets, seed=9)
    got, x_s = seen[0], student_seen[0]
    # What the teacher's own normalization would give at the student's resolution:
    # normalize with the teacher's mean/std, resize like the student, pad with 0.
    own_images = GeneralizedRCNNTransform(128, 128, t_mean, t_std).train()(images, copy.deepcopy(targets))[0]
    expected = own_images.tensors
    assert got.shape == expected.shape == (2, 3, 128, 128)
    assert torch.allclose(got, expected, atol=1e-5, rtol=0)
    # The formula on the image area, x_t = ((x_s * std_s + mean_s) - mean_t) / std_t,
    # and 0 on the padding (as the teacher's own batching pads after normalizing).
    def col(v):
        return torch.tensor(v).view(3, 1, 1)
    s_mean, s_std = col(student.transform.image_mean), col(student.transform.image_std)
    formula = ((x_s * s_std + s_mean) - col(t_mean)) / col(t_std)
    for i, (h, w) in enumerate(own_images.image_sizes):
        assert torch.allclose(got[i, :, :h, :w], formula[i, :, :h, :w], atol=1e-6, rtol=0)
        assert (got[i, :, h:, :] == 0).all() and (got[i, :, :, w:] == 0).all()
        pad = torch.ones(128, 128, dtype=torch.bool)
        pad[:h, :w] = False
        assert (formula[i][:, pad] != 0).all()  # a naive re-normalization would not give 0 there
    assert all(hw != (128, 128) for hw in own_images.image_sizes)  # both images are padded
    assert not torch.allclose(got, x_s, atol=1e-2)
