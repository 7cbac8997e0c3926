"""The distill section: Chen et al. is a section like the others, a method is on
exactly when its section is there, old flat keys are one-line errors saying where each moved,
and a config.yaml saved by an earlier version loads as the same run with one warning line."""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

import pytest
import yaml

from detkd.config.schema import DistillConfig
from detkd.distill.methods import METHODS, ChenConfig
from detkd.distill.methods.pkd import PKDConfig
from detkd.errors import DetkdError
from detkd.recipe import load_config

REPO = Path(__file__).resolve().parents[1]
DEMO = REPO / "configs" / "demo" / "distill_demo.yaml"
SAVED = REPO / "tests" / "fixtures" / "resume_v0" / "config.yaml"  # written by detkd at 6c19121


def write(path: Path, tree: dict) -> Path:
    path.write_text(yaml.safe_dump(tree))
    return path


def run(tmp_path: Path, distill: dict) -> Path:
    return write(tmp_path / "c.yaml", {"_base_": str(REPO / "configs" / "demo" / "student_demo.yaml"),
                                       "teacher": {"checkpoint": "t.pth"}, "distill": distill})


def test_pkd_alone_is_pkd_alone(tmp_path):
    cfg = load_config(run(tmp_path, {"pkd": {}}))
    assert cfg.distill.methods == {"pkd": PKDConfig()}


def test_sections_in_the_order_of_methods_and_null_drops_an_inherited_one(tmp_path):
    cfg = load_config(DEMO, ["distill.pkd={weight: 2}"])
    assert list(cfg.distill.methods) == ["chen", "pkd"]
    assert cfg.distill.methods["chen"] == ChenConfig(hint_levels=["0", "1"])
    assert list(load_config(DEMO, ["distill.chen=null", "distill.pkd={}"]).distill.methods) == ["pkd"]


def test_run_wide_keys_stay_under_distill(tmp_path):
    cfg = load_config(run(tmp_path, {"level_map": {"0": "1"}, "teacher_input": "own", "start_epoch": 1,
                                     "cwd": {"temperature": 2.0}}))
    assert (cfg.distill.level_map, cfg.distill.teacher_input, cfg.distill.start_epoch) == ({"0": "1"}, "own", 1)


def test_old_flat_keys_are_one_line_saying_where_each_moved(tmp_path):
    path = run(tmp_path, {"mu": 0.3, "hint": False, "pkd": {}})
    with pytest.raises(DetkdError) as err:
        load_config(path)
    msg = str(err.value)
    assert "\n" not in msg and msg.startswith(f"{path}: Chen et al. is a section now")
    assert "'distill.mu' -> 'distill.chen.mu'" in msg and "'distill.hint' -> 'distill.chen.hint'" in msg
    with pytest.raises(DetkdError, match=r"'distill.chen: false' -> leave 'distill.chen' out"):
        load_config(run(tmp_path, {"chen": False, "pkd": {}}))
    with pytest.raises(DetkdError, match=r"^--opts: Chen et al. is a section now.*"
                                         r"'distill.gamma' -> 'distill.chen.gamma'"):
        load_config(DEMO, ["distill.gamma=0.1"])


def test_bad_options_of_a_method_name_the_key():
    for opt, message in (("distill.chen.mu=2", r"'distill.chen.mu' must be in \[0, 1\], got 2.0"),
                         ("distill.chen.temperature=0", r"'distill.chen.temperature' must be > 0, got 0.0"),
                         ("distill.chen.nu=-1", r"'distill.chen.nu' must be >= 0, got -1.0"),
                         ("distill.chen.hint_levels=[]", r"'distill.chen.hint_levels' is empty"),
                         ("distill.chen.psi=1",
                          r"'distill.chen.psi' is not an option of chen .*'psi' is an option of fgfi"),
                         ("distill.nope={}", r"unknown config key 'distill.nope'")):
        with pytest.raises(DetkdError, match=message):
            load_config(DEMO, [opt])


def test_an_earlier_versions_config_yaml_loads_as_the_same_run_with_one_warning(caplog):
    with caplog.at_level(logging.WARNING):
        cfg = load_config(SAVED)
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "earlier detkd" in warnings[0].getMessage()
    assert "\n" not in warnings[0].getMessage()
    assert list(cfg.distill.methods) == ["chen", "pkd"]
    assert cfg.distill.methods["chen"] == ChenConfig(hint_levels=["0"]) and cfg.distill.methods["pkd"] == PKDConfig()


def test_an_earlier_config_yaml_with_chen_off_has_no_chen(tmp_path):
    tree = yaml.safe_load(SAVED.read_text())
    tree["distill"]["chen"] = False
    cfg = load_config(write(tmp_path / "config.yaml", tree))
    assert list(cfg.distill.methods) == ["pkd"]


def test_every_shipped_distill_config_uses_sections_only():
    flat = {f.name for f in dataclasses.fields(ChenConfig)}
    for path in sorted(REPO.glob("configs/**/*.yaml")):
        distill = (yaml.safe_load(path.read_text()) or {}).get("distill") or {}
        assert not (flat & set(distill)), path
        run_wide = {f.name for f in dataclasses.fields(DistillConfig)} - {"methods"}
        assert all(k in METHODS or k in run_wide for k in distill), path
