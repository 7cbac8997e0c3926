"""The method interface of the Distiller: FPN-feature methods (PKD, CWD, MGD, FGD, FGFI) on
real torchvision Faster R-CNNs, alone and beside Chen et al., for heterogeneous pairs, and
their learnable parts through the trainer's checkpoints (docs/methods.md, section 3).

The loss functions themselves are checked against independent formulas in
test_losses_feature.py; here the question is whether the Distiller feeds them the right
maps (levels, frames, detached teacher), weights them as configured, runs only the teacher
work they need, and leaves torchvision's loss untouched when their weights are 0.
"""

from __future__ import annotations

import signal
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from torchvision.models.detection.transform import GeneralizedRCNNTransform

from conftest import tiny_opts
from detkd.recipe import load_config
from detkd.config.schema import DistillConfig
from detkd.distill import Distiller
from detkd.distill.methods import METHODS, ChenConfig, DistillMethod
from detkd.distill.methods.cwd import CWDConfig
from detkd.distill.methods.fgd import FGDConfig
from detkd.distill.methods.fgfi import FGFIConfig
from detkd.distill.methods.mgd import MGDConfig
from detkd.distill.methods.pkd import PKDConfig
from detkd.errors import DetkdError
from detkd.losses.feature import fgfi_masks, masked_imitation_loss
from detkd.modeling.sampling import set_sampling_keys
from test_distiller import HARD_KEYS, batch, build, count_calls, mcfg, run, torchvision_reference

pytestmark = pytest.mark.usefixtures("one_thread")

# Derived from METHODS: every method for Faster R-CNN pairs at weight 0; those that read only the
# teacher's FPN maps, no teacher work of their own (the one-stage pairs: test_distill_families.py).
ZERO = {name: method.zero_config() for name, method in METHODS.items()
        if method.applies_to("faster_rcnn", "faster_rcnn")}
SECTIONS = {name: method.config() for name, method in METHODS.items()
            if method.teacher_step is DistillMethod.teacher_step and method.applies_to("faster_rcnn", "faster_rcnn")}


def methods(chen: dict | None = None, **sections) -> DistillConfig:
    """A distill section: run-wide keys (level_map, teacher_input, ...) and method sections;
    ``chen``: Chen et al.'s options (None: no Chen et al.)."""
    run = {k: sections.pop(k) for k in ("level_map", "teacher_input", "start_epoch", "stop_epoch") if k in sections}
    if chen is not None:
        sections = {"chen": ChenConfig(**chen), **sections}
    return DistillConfig(**run, methods=sections)


def capture(module):
    out = []
    module.register_forward_hook(lambda m, i, o: out.append(o))
    return out


def teacher_head_calls(teacher):
    return {name: count_calls(mod) for name, mod in (("rpn_head", teacher.rpn.head),
                                                     ("box_roi_pool", teacher.roi_heads.box_roi_pool),
                                                     ("box_head", teacher.roi_heads.box_head))}


def zscore(x):
    """Per-channel standardization over (N, H, W), unbiased std (float64)."""
    x = x.double().transpose(0, 1).reshape(x.shape[1], -1)
    z = (x - x.mean(dim=1, keepdim=True)) / (x.std(dim=1, keepdim=True) + 1e-6)
    return z


# --------------------------------------------------------------------------- exactness, teacher work


@pytest.mark.parametrize("name", list(ZERO))
def test_a_method_at_weight_zero_is_torchvision_exactly(name):
    check_weight_zero_is_torchvision(name)


def check_weight_zero_is_torchvision(name: str) -> None:
    """METHODS[name] at its zero_config(): torchvision's losses and random draws, bit for bit."""
    images, targets = batch()
    student, teacher = build(mcfg(), 0), build(mcfg(), 1)
    d = Distiller(student, teacher, DistillConfig(methods={name: METHODS[name].zero_config()}))
    calls = count_calls(teacher.backbone)
    ours, rng = run(d, images, targets, seed=7)
    ref = torchvision_reference(student, images, targets, seed=7)
    assert list(ours) == list(ref["losses"])
    for k in ref["losses"]:
        assert torch.equal(ours[k], ref["losses"][k]), k
    assert torch.equal(sum(ours.values()), sum(ref["losses"].values()))
    assert torch.equal(rng, ref["rng"]) and calls == [] and len(d.methods) == 0


@pytest.mark.parametrize("name", list(SECTIONS))
def test_feature_method_alone_reads_only_the_teacher_fpn_and_trains_its_parts(name):
    check_feature_method_alone(name)


def check_feature_method_alone(name: str) -> None:
    """METHODS[name] with its default section, alone: only the teacher's backbone + FPN runs,
    the student's own terms and random draws are untouched, its parts get gradient."""
    images, targets = batch()
    student, teacher = build(mcfg(), 0), build(mcfg(out_channels=48), 1)  # widths differ: 32 -> 48
    d = Distiller(student, teacher, DistillConfig(methods={name: METHODS[name].config()}))
    set_sampling_keys(student, [11, 12])  # as the trainer does: MGD's masks follow these keys
    heads = teacher_head_calls(teacher)
    t_calls = count_calls(teacher.backbone)
    losses, rng = run(d, images, targets, seed=3)
    ref = torchvision_reference(student, images, targets, seed=3)
    # The student's own terms are untouched, the random draws too (MGD's masks are keyed).
    for k in HARD_KEYS:
        assert torch.equal(losses[k], ref["losses"][k]), k
    assert torch.equal(rng, ref["rng"])
    assert list(losses) == HARD_KEYS + [f"loss_{name}"]
    assert len(t_calls) == 1 and all(calls == [] for calls in heads.values()), {k: len(v) for k, v in heads.items()}
    value = losses[f"loss_{name}"]
    assert torch.isfinite(value) and value.item() > 0
    assert d.active_terms() == {name} and f"raw_{name}" in d.last_stats
    sum(losses.values()).backward()
    own = list(d.methods[name].parameters())
    assert own and all(p.grad is not None for p in own if p.requires_grad and p.dim() > 1 and p.abs().sum() > 0)
    assert all(p.grad is None for p in teacher.parameters())
    assert student.backbone.fpn.layer_blocks[0][0].weight.grad.abs().sum() > 0


def test_pkd_value_and_cwd_value_from_the_maps_by_independent_formulas():
    images, targets = batch()
    student, teacher = build(mcfg(), 0), build(mcfg(), 1)
    s_maps, t_maps = capture(student.backbone), capture(teacher.backbone)
    d = Distiller(student, teacher, methods(pkd=PKDConfig(weight=2.0),
                                                  cwd=CWDConfig(weight=3.0, temperature=2.0, levels=["1", "pool"])))
    losses, _ = run(d, images, targets, seed=1)
    s, t = s_maps[-1], t_maps[-1]
    # PKD: every level but "pool" (P2-P5), 1 - Pearson per channel via z-scores; no align conv at equal widths.
    levels = [k for k in s if k != "pool"]
    assert not list(d.methods["pkd"].parameters())
    pkd = sum(((zscore(s[k]) - zscore(t[k])) ** 2).mean() / 2 for k in levels)
    assert losses["loss_pkd"].item() == pytest.approx(2.0 * pkd.item(), rel=1e-4)
    # CWD on the two named levels, tau^2 / (N C) sum KL(softmax_hw T/tau || softmax_hw S/tau).
    tau, cwd = 2.0, 0.0
    for k in ("1", "pool"):
        n, c = s[k].shape[:2]
        ls = torch.log_softmax(s[k].double().reshape(n, c, -1) / tau, dim=2)
        lt = torch.log_softmax(t[k].double().reshape(n, c, -1) / tau, dim=2)
        cwd += tau ** 2 * (lt.exp() * (lt - ls)).sum() / (n * c)
    assert losses["loss_cwd"].item() == pytest.approx(3.0 * cwd.item(), rel=1e-4)


def test_fgfi_mask_comes_from_the_student_anchors_and_ground_truth():
    images, targets = batch()
    student, teacher = build(mcfg(), 0), build(mcfg(), 1)
    s_maps, t_maps = capture(student.backbone), capture(teacher.backbone)
    anchors = []
    gen = student.rpn.anchor_generator
    gen.register_forward_hook(lambda m, i, o: anchors.append(o))
    d = Distiller(student, teacher, methods(fgfi=FGFIConfig(weight=1.0, levels=["0"])))
    losses, _ = run(d, images, targets, seed=2)
    s, t = s_maps[-1]["0"], t_maps[-1]["0"]
    grids = [tuple(v.shape[-2:]) for v in s_maps[-1].values()]
    transformed = GeneralizedRCNNTransform(128, 128, student.transform.image_mean, student.transform.image_std)
    boxes = [tt["boxes"] for tt in transformed(images, [dict(x) for x in targets])[1]]
    masks = torch.stack([fgfi_masks(a, b, grids, 3, 0.5)[0] for a, b in zip(anchors[0], boxes)])
    assert 0 < masks.sum() < masks.numel()
    conv = d.methods["fgfi"].per_level["l_0"]
    expect = masked_imitation_loss(conv(s), t, masks)
    assert losses["loss_fgfi"].item() == pytest.approx(expect.item(), rel=1e-5)


def test_chen_and_pkd_together_keep_chens_numbers():
    images, targets = batch()
    student, teacher = build(mcfg(), 0), build(mcfg(), 1)
    chen = run(Distiller(student, teacher, methods(chen={})), images, targets, seed=4)[0]
    both = run(Distiller(student, teacher, methods(chen={}, pkd=PKDConfig())), images, targets, seed=4)[0]
    assert list(both) == list(chen) + ["loss_pkd"]
    for k in chen:
        if k != "loss_hint":  # the hint's adapters are initialized from the RNG afresh in each Distiller
            assert torch.equal(both[k], chen[k]), k


def test_each_backbone_is_probed_once_per_build():
    """Chen et al.'s checks and the feature methods read one probe of each backbone."""
    student, teacher = build(mcfg(), 0), build(mcfg(), 1)
    s_calls, t_calls = count_calls(student.backbone), count_calls(teacher.backbone)
    Distiller(student, teacher, methods(chen={}, pkd=PKDConfig(), cwd=CWDConfig()))
    assert (len(s_calls), len(t_calls)) == (1, 1)


# --------------------------------------------------------------------------- heterogeneous pairs


def test_levels_pair_by_stride_and_a_level_map_of_other_strides_is_refused():
    images, targets = batch()
    student = build(mcfg(returned_layers=[2, 3, 4], out_channels=16), 0)  # "0" s8, "1" s16, "2" s32, "pool" s64
    teacher = build(mcfg(returned_layers=[1, 2, 3, 4]), 1)  # "0" s4, "1" s8, "2" s16, "3" s32, "pool" s64
    # By default each student map meets the teacher's map of its stride (names differ here).
    d = Distiller(student, teacher, methods(pkd=PKDConfig(), cwd=CWDConfig()))
    assert [(p.student, p.teacher, p.student_channels, p.teacher_channels) for p in d.methods["pkd"].pairs] == \
        [("0", "1", 16, 32), ("1", "2", 16, 32), ("2", "3", 16, 32)]  # PKD leaves "pool" out
    assert [(p.student, p.teacher) for p in d.methods["cwd"].pairs][-1] == ("pool", "pool")
    with pytest.raises(DetkdError, match=r"distill.pkd.levels: student level '0' and teacher level '0' have "
                                         r"different strides \(8 vs 4.*level_map \{'0': '1'\}"):
        Distiller(student, teacher, methods(level_map={"0": "0"}, pkd=PKDConfig()))
    with pytest.raises(DetkdError, match=r"distill.cwd.levels: 'p9' is not a student feature map"):
        Distiller(student, teacher, methods(cwd=CWDConfig(levels=["p9"])))
    with pytest.raises(DetkdError, match=r"teacher level 'x', which is not a teacher feature map"):
        Distiller(student, teacher, methods(level_map={"0": "x"}, cwd=CWDConfig(levels=["0"])))
    narrow = build(mcfg(returned_layers=[3, 4]), 1)  # "0" s16, "1" s32, "pool" s64: nothing at s8
    with pytest.raises(DetkdError, match=r"distill.pkd.levels: student level '0' \(stride 8\) has no teacher map of "
                                         r"the same stride"):
        Distiller(student, narrow, methods(pkd=PKDConfig(levels=["0"])))
    assert [(p.student, p.teacher) for p in Distiller(student, narrow, methods(pkd=PKDConfig())).methods["pkd"].pairs] \
        == [("1", "0"), ("2", "1")]  # "0" (s8) has no partner: skipped
    mapping = {"0": "1", "1": "2", "2": "3"}
    t_maps = capture(teacher.backbone)
    d = Distiller(student, teacher, methods(level_map=mapping, chen=dict(hint_levels=["1"], rpn_soft=False,
                                                                          rpn_bound=False), pkd=PKDConfig()))
    assert [(p.student, p.teacher, p.student_channels, p.teacher_channels) for p in d.methods["pkd"].pairs] == \
        [("0", "1", 16, 32), ("1", "2", 16, 32), ("2", "3", 16, 32)]
    assert d.methods["chen"].adapters.channels == {"1": (16, 32)}
    losses, _ = run(d, images, targets, seed=0)
    assert {"loss_pkd", "loss_hint", "loss_rcn_soft"} <= set(losses) and torch.isfinite(sum(losses.values()))
    assert set(t_maps[-1]) == {"0", "1", "2", "3", "pool"}


def test_teacher_at_its_own_input_size():
    images, targets = batch()
    student, teacher = build(mcfg(), 0), build(mcfg(min_size=192, max_size=192), 1)
    seen, pooled = [], []
    teacher.backbone.register_forward_pre_hook(lambda m, i: seen.append(i[0]))
    teacher.roi_heads.box_roi_pool.register_forward_pre_hook(lambda m, i: pooled.append(i))
    student_pool = []
    student.roi_heads.box_roi_pool.register_forward_pre_hook(lambda m, i: student_pool.append(i))
    cfg = methods(chen=dict(hint_levels=["0"], rpn_soft=False, rpn_bound=False), fgd=FGDConfig())  # auto: own size
    d = Distiller(student, teacher, cfg)
    assert d.own_size and not d.renorm
    losses, _ = run(d, images, targets, seed=5)
    own = GeneralizedRCNNTransform(192, 192, teacher.transform.image_mean, teacher.transform.image_std).eval()
    t_list = own(images)[0]
    assert torch.allclose(seen[-1], t_list.tensors, atol=1e-6)  # the images at the teacher's size
    s_sizes, t_sizes = student_pool[0][2], pooled[0][2]
    assert t_sizes == t_list.image_sizes and s_sizes != t_sizes
    for s_boxes, t_boxes, (hs, ws), (ht, wt) in zip(student_pool[0][1], pooled[0][1], s_sizes, t_sizes):
        ratio = torch.tensor([wt / ws, ht / hs, wt / ws, ht / hs])
        assert torch.allclose(t_boxes, s_boxes * ratio, atol=1e-4)  # the student's RoIs in the teacher's frame
    assert {"loss_fgd", "loss_hint", "loss_rcn_soft", "loss_rcn_bound"} <= set(losses)
    assert torch.isfinite(sum(losses.values()))
    with pytest.raises(DetkdError, match=r"RPN distillation \(distill.chen.rpn_bound/distill.chen.rpn_soft\).*"
                                         r"distill.teacher_input: student"):
        Distiller(student, teacher, methods(teacher_input="own", chen={}))
    # The student's batch: asked for, or (auto) because the RPN terms compare anchor by anchor.
    assert not Distiller(student, teacher, methods(teacher_input="student", chen=dict(rpn_soft=False))).own_size
    assert not Distiller(student, teacher, methods(chen={})).own_size


# --------------------------------------------------------------------------- configs


@pytest.mark.parametrize("opt, message", [
    ("distill.pkd.wieght=1", r"unknown config key 'distill.pkd.wieght' \(did you mean 'weight'\?\)"),
    ("distill.level_map=[0]", r"'distill.level_map': expected dict\[str, str\] \| null, got \[0\]"),
    ("distill.mgd.lambda_mask=2", r"'distill.mgd.lambda_mask' must be in \[0, 1\]"),
    ("distill.fgd.temperature=0", r"'distill.fgd.temperature' must be > 0"),
    ("distill.cwd.levels=[]", r"'distill.cwd.levels' is empty"),
    ("distill.fgfi.weight=-1", r"'distill.fgfi.weight' must be >= 0"),
])
def test_method_sections_are_typed_and_validated(opt, message):
    cfg_path = Path(__file__).resolve().parents[1] / "configs" / "demo" / "distill_demo.yaml"
    with pytest.raises(DetkdError, match=message):
        load_config(cfg_path, [opt])
    cfg = load_config(cfg_path, ["distill.pkd={}", "distill.level_map={'0': '0'}"])
    assert cfg.distill.methods["pkd"] == PKDConfig() and cfg.distill.level_map == {"0": "0"}
    assert "fgd" not in cfg.distill.methods


# --------------------------------------------------------------------------- through the trainer


def _train(cfg, **kw):
    from detkd.engine.trainer import train

    return train(cfg, progress=False, **kw)


def test_method_parameters_are_saved_restored_exactly_and_not_in_model_final(tiny_demo_dir, tmp_path):
    stopped = check_sigterm_resume_is_exact(tiny_demo_dir, tmp_path, {"mgd": "{}", "fgd": "{alpha: 1e-3}"})
    assert any(".generator." in k for k in stopped["distill"]) and any("gc_student" in k for k in stopped["distill"])


def check_sigterm_resume_is_exact(tiny_demo_dir, tmp_path, sections: dict[str, str]) -> dict:
    """The demo run with only ``sections`` (distill.<name>: YAML), stopped by SIGTERM in
    iteration 3 and resumed with --resume auto, ends as the uninterrupted run: the methods'
    parameters (``last.pth``'s ``distill``) and the student bit for bit, and model_final.pth
    holds the student alone. Returns the stopped checkpoint."""
    from detkd.modeling.detector import build_detector

    demo = Path(__file__).resolve().parents[1] / "configs" / "demo" / "distill_demo.yaml"
    teacher_ckpt = tmp_path / "teacher.pth"
    extra = {"distill.chen": "null", **{f"distill.{name}": v for name, v in sections.items()},
             "teacher.model.out_channels": 48, "teacher.model.representation_size": 64,
             "teacher.model.min_size": 96, "teacher.model.max_size": 96,
             "teacher.checkpoint": str(teacher_ckpt), "train.epochs": 1, "train.checkpoint_period_iters": 1}
    cfg_a = load_config(demo, tiny_opts(tiny_demo_dir, tmp_path / "a", **extra))
    torch.manual_seed(0)
    torch.save(build_detector(cfg_a.teacher.model).state_dict(), teacher_ckpt)
    _train(cfg_a)
    cfg_b = replace(cfg_a, output_dir=str(tmp_path / "b"))
    # SIGTERM in the middle of iteration 3: the trainer saves last.pth at the boundary and exits.
    calls = []

    def hook(module, inputs, output):
        calls.append(1)
        if len(calls) == 3:
            # Delivered now: Python runs the trainer's handler (which only records the signal) as
            # soon as this call returns, however loaded the machine (no thread, no wait).
            signal.raise_signal(signal.SIGTERM)

    # Global hook: the Distiller is built inside train(); one forward per iteration.
    handle = torch.nn.modules.module.register_module_forward_hook(
        lambda m, i, o: hook(m, i, o) if isinstance(m, Distiller) else None)
    try:
        with pytest.raises(SystemExit):
            _train(cfg_b)
    finally:
        handle.remove()
    stopped = torch.load(tmp_path / "b" / "last.pth", map_location="cpu", weights_only=False)
    assert 0 < stopped["iter"] < 8
    assert {k.split(".")[0] for k in stopped["distill"]} == set(sections)  # every method's parameters, by name
    _train(cfg_b, resume="auto")
    a = torch.load(tmp_path / "a" / "last.pth", map_location="cpu", weights_only=False)
    b = torch.load(tmp_path / "b" / "last.pth", map_location="cpu", weights_only=False)
    assert a["distill"].keys() == b["distill"].keys()
    for k in a["distill"]:
        assert torch.equal(a["distill"][k], b["distill"][k]), k
    fa = torch.load(tmp_path / "a" / "model_final.pth", map_location="cpu", weights_only=True)
    fb = torch.load(tmp_path / "b" / "model_final.pth", map_location="cpu", weights_only=True)
    weights_a = fa.get("model", fa) if "model" in fa else fa
    weights_b = fb.get("model", fb) if "model" in fb else fb
    assert all(torch.equal(weights_a[k], weights_b[k]) for k in weights_a)
    assert not [k for k in weights_a if "generator" in k or "gc_" in k or "methods" in k]
    assert set(weights_a) == set(build_detector(cfg_a.model).state_dict())
    return stopped


def test_resuming_with_other_methods_is_one_line_and_old_adapter_checkpoints_load():
    student, teacher = build(mcfg(), 0), build(mcfg(out_channels=48), 1)
    d = Distiller(student, teacher, methods(mgd=MGDConfig()))
    with pytest.raises(DetkdError, match=r"^last.pth: the distillation methods' weights do not match this config "
                                         r"\(mgd\.per_level\.l_0\.align\.bias"):
        d.load_extra_state({"distill": {}}, Path("last.pth"))
    # A checkpoint written before the method interface kept Chen et al.'s adapters under "adapters".
    chen = Distiller(student, teacher, methods(chen=dict(hint_levels=["0"])))
    old = {"adapters": {k: torch.full_like(v, 0.5) for k, v in chen.methods["chen"].adapters.state_dict().items()}}
    chen.load_extra_state(old, Path("last.pth"))
    assert all((v == 0.5).all() for v in chen.methods["chen"].adapters.state_dict().values())
