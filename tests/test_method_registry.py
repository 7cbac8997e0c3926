"""A method is one file plus one METHODS entry: a throwaway method registered here, in the
test alone, gets its config section, the loader's checks, ``--opts``, checkpointing, log keys
and the invariant tests that every shipped method passes, without another file touched; one
with teacher work of its own gets it done through ``teacher_step``."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import pytest
import torch
import yaml

from detkd.config.fields import option
from detkd.config.dump import config_hash, dump_config
from detkd.config.schema import DistillConfig
from detkd.distill import Distiller
from detkd.distill.methods import METHODS
from detkd.distill.methods.base import DistillMethod, resolve_levels
from detkd.distill.methods.features import LevelMethod
from detkd.errors import DetkdError
from detkd.losses.feature import align_conv
from detkd.modeling.adapters import module_key
from detkd.recipe import config_from_dict, load_config
from test_distill_methods import check_feature_method_alone, check_sigterm_resume_is_exact, \
    check_weight_zero_is_torchvision
from test_distiller import build, mcfg

pytestmark = pytest.mark.usefixtures("one_thread")
DEMO = Path(__file__).resolve().parents[1] / "configs" / "demo" / "distill_demo.yaml"


@dataclass
class ToyConfig:
    """A throwaway method: L = weight * sum_levels mean((align(S) - T)^2) / temperature."""

    weight: float = option(1.0, ge=0, weight=True)
    temperature: float = option(2.0, gt=0)
    levels: Optional[list[str]] = option(None, nonempty=True)


class ToyMethod(LevelMethod):
    config = ToyConfig

    def __init__(self, pairs, weight: float, temperature: float) -> None:
        super().__init__(pairs, weight)
        self.temperature = temperature

    @classmethod
    def build(cls, section: ToyConfig, ctx) -> Optional["ToyMethod"]:
        if section.weight == 0:
            return None
        method = cls(resolve_levels(ctx.name, section.levels, ctx), section.weight, section.temperature)
        for p in method.pairs:
            method.per_level[module_key(p.student)] = align_conv(p.student_channels, p.teacher_channels)
        return method

    def level_loss(self, pair, s, t, rec):
        return (self.level_module(pair)(s) - t).pow(2).mean() / self.temperature


@dataclass
class PooledConfig:
    """A throwaway method with teacher work of its own: L = weight * sum_levels mean((pool(S) - pool(T))^2),
    pool(T) computed in teacher_step (as a prediction-level method runs the teacher's heads there)."""

    weight: float = option(1.0, ge=0, weight=True)


class PooledMethod(DistillMethod):
    config = PooledConfig

    def __init__(self, weight: float) -> None:
        super().__init__()
        self.weight = weight
        self.calls: list[bool] = []  # inference mode on at each teacher_step call

    @classmethod
    def build(cls, section: PooledConfig, ctx) -> Optional["PooledMethod"]:
        return cls(section.weight) if section.weight > 0 else None

    def terms(self) -> frozenset[str]:
        return frozenset({self.name})

    def teacher_step(self, rec, teacher, features):
        self.calls.append(torch.is_inference_mode_enabled())
        return {"pooled": [f.mean(dim=(2, 3)) for f in features.values()]}

    def forward(self, rec):
        pooled = rec.teacher_outputs[self.name]["pooled"]
        assert not any(t.is_inference() for t in pooled)  # cloned out: the student's backward may save them
        s = [f.mean(dim=(2, 3)) for f in rec.features.values()]
        return {f"loss_{self.name}": self.weight * sum((a - b).pow(2).mean() for a, b in zip(s, pooled))}


@pytest.fixture
def toy(monkeypatch):
    monkeypatch.setitem(METHODS, "toy", ToyMethod)
    return "toy"


def test_the_section_loads_dumps_and_takes_opts(toy):
    cfg = load_config(DEMO, ["distill.chen=null", "distill.toy={}", "distill.toy.weight=3"])
    assert cfg.distill.methods == {"toy": ToyConfig(weight=3.0)}
    saved = yaml.safe_load(dump_config(cfg))
    assert saved["distill"]["toy"] == {"weight": 3.0, "temperature": 2.0, "levels": None}
    assert "chen" not in saved["distill"]
    again = config_from_dict(saved)
    assert again == cfg and config_hash(again) == config_hash(cfg)
    assert config_hash(load_config(DEMO, ["distill.chen=null", "distill.toy={}"])) != config_hash(cfg)


@pytest.mark.parametrize("opt, message", [
    ("distill.toy.weight=-1", r"^--opts: 'distill.toy.weight' must be >= 0, got -1.0$"),
    ("distill.toy.temperature=0", r"^--opts: 'distill.toy.temperature' must be > 0, got 0.0$"),
    ("distill.toy.levels=[]", r"^--opts: 'distill.toy.levels' is empty; leave it out \(null\) for the default$"),
    ("distill.toy.psi=0.5", r"^--opts: 'distill.toy.psi' is not an option of toy \(its options: weight, temperature, "
                            r"levels\); 'psi' is an option of fgfi$"),
    ("distill.toy.wieght=1", r"^--opts: unknown config key 'distill.toy.wieght' \(did you mean 'weight'\?\)$"),
    ("distill.toy=3", r"^--opts: 'distill.toy' is a section: give its options as a mapping"),
])
def test_bad_options_are_one_line_naming_the_key(toy, opt, message):
    with pytest.raises(DetkdError, match=message):
        load_config(DEMO, ["distill.toy={}", opt])


def test_an_unknown_level_is_one_line_naming_the_key(toy):
    cfg = load_config(DEMO, ["distill.chen=null", "distill.toy={levels: ['p9']}"])
    with pytest.raises(DetkdError, match=r"^distill.toy.levels: 'p9' is not a student feature map; available: 0, 1, 2"):
        Distiller(build(mcfg(), 0), build(mcfg(), 1), cfg.distill)


def test_weight_zero_is_torchvision_exactly(toy):
    check_weight_zero_is_torchvision(toy)


def test_alone_it_reads_only_the_teacher_fpn_and_logs_its_keys(toy):
    check_feature_method_alone(toy)


def test_sigterm_and_resume_are_bit_exact_and_its_parameters_are_checkpointed(toy, tiny_demo_dir, tmp_path):
    stopped = check_sigterm_resume_is_exact(tiny_demo_dir, tmp_path, {toy: "{weight: 0.5}"})
    assert stopped["distill"] and all(k.startswith("toy.per_level.") for k in stopped["distill"])
    assert torch.is_tensor(next(iter(stopped["distill"].values())))


def test_mimic_is_the_weighted_sum_of_per_level_mean_squared_errors():
    """The shipped mimic method against the equation, from the maps both backbones return."""
    from test_distiller import batch, run

    images, targets = batch()
    student, teacher = build(mcfg(), 0), build(mcfg(), 1)  # equal widths: no align conv
    maps = {"student": [], "teacher": []}
    student.backbone.register_forward_hook(lambda m, i, o: maps["student"].append(o))
    teacher.backbone.register_forward_hook(lambda m, i, o: maps["teacher"].append(o))
    d = Distiller(student, teacher, config_from_dict({"teacher": {"checkpoint": "t"},
                                                      "distill": {"mimic": {"weight": 2.5}}}).distill)
    losses, _ = run(d, images, targets, seed=0)
    s, t = maps["student"][-1], maps["teacher"][-1]
    expect = 2.5 * sum(((s[k].double() - t[k].double()) ** 2).mean() for k in s)
    assert losses["loss_mimic"].item() == pytest.approx(expect.item(), rel=1e-5)
    assert d.last_stats["raw_mimic"] == pytest.approx(expect.item() / 2.5, rel=1e-5)


def test_teacher_work_of_its_own_runs_once_per_batch_and_reaches_forward(monkeypatch):
    from test_distiller import batch, run

    monkeypatch.setitem(METHODS, "pooled", PooledMethod)
    images, targets = batch()
    student, teacher = build(mcfg(), 0), build(mcfg(), 1)
    maps = {"student": [], "teacher": []}
    student.backbone.register_forward_hook(lambda m, i, o: maps["student"].append(o))
    teacher.backbone.register_forward_hook(lambda m, i, o: maps["teacher"].append(o))
    d = Distiller(student, teacher, DistillConfig(methods={"pooled": PooledConfig(weight=2.0)}))
    losses, _ = run(d, images, targets, seed=0)
    assert d.methods["pooled"].calls == [True] and len(maps["teacher"]) == 1  # one teacher pass, nothing probed
    s, t = maps["student"][-1], maps["teacher"][-1]
    expect = 2.0 * sum((s[k].mean(dim=(2, 3)).double() - t[k].mean(dim=(2, 3)).double()).pow(2).mean() for k in s)
    assert losses["loss_pooled"].item() == pytest.approx(expect.item(), rel=1e-5)
    sum(losses.values()).backward()
    assert student.backbone.fpn.layer_blocks[0][0].weight.grad.abs().sum() > 0
