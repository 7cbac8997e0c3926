"""The classification config's method sections (``method: {name: kd, kd: {temperature: 3}}``).

Config loading only (no data, no training): defaults of each method's section, a section of
another method refused, the flat keys of before refused with the key they moved to, overrides
and wrong types inside a section.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from detkd.cls.config import MOVED_METHOD_KEYS, load_cls_config
from detkd.config.dump import dump_config
from detkd.errors import DetkdError

ROOT = Path(__file__).resolve().parents[1]
CFG = ROOT / "configs" / "cls" / "fmnist"

# Each method's options and their defaults (docs/classification.md, "Method options").
DEFAULTS = {
    "kd": {"temperature": 4.0, "weight": 1.0},
    "aver": {"temperature": 4.0, "weight": 1.0},
    "ebkd": {"temperature": 4.0, "weight": 1.0},
    "aekd": {"temperature": 4.0, "weight": 1.0, "c_tol": 0.6},
    "camkd": {"temperature": 4.0, "weight": 1.0, "inter_weight": 50.0, "inter_start_epoch": 1,
              "detach_inter_weights": False},
    "fitnet": {"weight": 100.0, "stage": -1, "teacher_stage": None},
    "at": {"weight": 1000.0, "stages": None},
    "sp": {"weight": 3000.0, "stage": -1},
    "fitnet_mkd": {"weight": 50.0},
    "dml": {"update": "sequential"},
    "dml_e": {"update": "sequential"},
    "ffl": {"temperature": 3.0, "rampup_epochs": 80.0, "eps": 0.0, "align_channels": False, "fusion_lr": None},
    "scd": {"beta": 100.0, "target": "deepest"},
}
TEACHERS = {"kd": 1, "fitnet": 1, "at": 1, "sp": 1, "aver": 3, "ebkd": 3, "aekd": 3, "camkd": 3, "fitnet_mkd": 3}

# The flat keys of before -> the key each moved to, in the config of the method that reads it.
MOVED = {
    "temperature": ("kd", "method.kd.temperature"),
    "kd_weight": ("kd", "method.kd.weight"),
    "fitnet_weight": ("fitnet", "method.fitnet.weight"),
    "fitnet_stage": ("fitnet", "method.fitnet.stage"),
    "fitnet_teacher_stage": ("fitnet", "method.fitnet.teacher_stage"),
    "at_weight": ("at", "method.at.weight"),
    "at_stages": ("at", "method.at.stages"),
    "sp_weight": ("sp", "method.sp.weight"),
    "sp_stage": ("sp", "method.sp.stage"),
    "aekd_c_tol": ("aekd", "method.aekd.c_tol"),
    "camkd_inter_weight": ("camkd", "method.camkd.inter_weight"),
    "camkd_inter_start_epoch": ("camkd", "method.camkd.inter_start_epoch"),
    "camkd_detach_inter_weights": ("camkd", "method.camkd.detach_inter_weights"),
    "fitnet_mkd_weight": ("fitnet_mkd", "method.fitnet_mkd.weight"),
    "dml_update": ("dml_e", "method.dml_e.update"),
    "ffl_temperature": ("ffl", "method.ffl.temperature"),
    "ffl_rampup_epochs": ("ffl", "method.ffl.rampup_epochs"),
    "ffl_eps": ("ffl", "method.ffl.eps"),
    "ffl_align_channels": ("ffl", "method.ffl.align_channels"),
    "ffl_fusion_lr": ("ffl", "method.ffl.fusion_lr"),
    "scd_beta": ("scd", "method.scd.beta"),
    "scd_target": ("scd", "method.scd.target"),
}
VALUES = {"at_stages": "[1]", "dml_update": "simultaneous", "scd_target": "next", "camkd_detach_inter_weights": "true",
          "ffl_align_channels": "true", "fitnet_stage": "1", "fitnet_teacher_stage": "1", "sp_stage": "1",
          "camkd_inter_start_epoch": "2"}


def write(tmp_path: Path, text: str, name: str = "cfg.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def teachers_yaml(method: str) -> str:
    n = TEACHERS.get(method, 0)
    return "teachers: [" + ", ".join(f"{{checkpoint: t{i}.pth}}" for i in range(n)) + "]\n"


@pytest.mark.parametrize("method", sorted(DEFAULTS))
def test_named_section_is_filled_with_its_defaults(method, tmp_path):
    cfg = load_cls_config(write(tmp_path, f"method: {{name: {method}}}\n{teachers_yaml(method)}"))
    section = cfg.method.sections[method]
    assert section is cfg.method.options
    assert {k: getattr(section, k) for k in DEFAULTS[method]} == DEFAULTS[method]
    assert vars(section).keys() == DEFAULTS[method].keys()
    assert list(cfg.method.sections) == [method]  # the other methods' sections stay empty


def test_baseline_has_no_section_and_given_options_keep_the_other_defaults(tmp_path):
    cfg = load_cls_config(CFG / "baseline.yaml")
    assert cfg.method.options is None and cfg.method.ce_weight == 1.0
    cfg = load_cls_config(CFG / "camkd.yaml", ["method.camkd.inter_weight=10"])
    assert cfg.method.sections['camkd'].inter_weight == 10.0 and cfg.method.sections['camkd'].temperature == 4.0
    assert cfg.method.sections['camkd'].inter_start_epoch == 1


def test_opts_set_a_section_key(tmp_path):
    cfg = load_cls_config(CFG / "kd.yaml", ["method.kd.temperature=3"])
    assert cfg.method.sections['kd'].temperature == 3.0 and cfg.method.options.weight == 1.0
    cfg = load_cls_config(CFG / "dml_semi.yaml", ["method.dml.update=simultaneous"])
    assert cfg.method.sections['dml'].update == "simultaneous"
    cfg = load_cls_config(CFG / "baseline.yaml", ["method.name=ffl", "method.ffl.fusion_lr=0.01"])
    assert cfg.method.sections['ffl'].fusion_lr == 0.01 and cfg.method.sections['ffl'].rampup_epochs == 80.0


def test_another_methods_section_is_refused_naming_the_key(tmp_path):
    path = write(tmp_path, f"_base_: {CFG / 'kd.yaml'}\nmethod: {{fitnet: {{weight: 10}}}}\n")
    with pytest.raises(DetkdError) as exc:
        load_cls_config(path)
    msg = str(exc.value)
    assert msg.startswith(f"{path.resolve()}: 'method.fitnet' is set but method.name is 'kd'") and "\n" not in msg
    with pytest.raises(DetkdError, match=r"^--opts: 'method.fitnet' is set but method.name is 'kd'"):
        load_cls_config(CFG / "kd.yaml", ["method.fitnet.weight=10"])
    with pytest.raises(DetkdError, match=r"'method.kd' is set but method.name is 'baseline' \(it has no section\)"):
        load_cls_config(CFG / "baseline.yaml", ["method.kd={}"])
    # switching methods on a config that has a section: the section must go too
    with pytest.raises(DetkdError, match=r"'method.kd' is set but method.name is 'aver'.*method.kd=null"):
        load_cls_config(CFG / "kd.yaml", ["method.name=aver"])
    cfg = load_cls_config(CFG / "kd.yaml", ["method.name=aver", "method.kd=null", teachers3()])
    assert "kd" not in cfg.method.sections and cfg.method.sections["aver"].temperature == 4.0


def teachers3() -> str:
    return "teachers=[{checkpoint: a.pth}, {checkpoint: b.pth}, {checkpoint: c.pth}]"


def test_moved_keys_cover_every_flat_key():
    assert set(MOVED) == set(MOVED_METHOD_KEYS)


@pytest.mark.parametrize("old", sorted(MOVED))
def test_old_flat_key_says_where_it_moved(old, tmp_path):
    method, new = MOVED[old]
    value = VALUES.get(old, "2")
    with pytest.raises(DetkdError) as exc:  # in --opts ...
        load_cls_config(CFG / f"{method}.yaml", [f"method.{old}={value}"])
    msg = str(exc.value)
    assert msg.startswith(f"--opts: 'method.{old}' moved: use '{new}' (one section per method since "), msg
    assert "docs/classification.md" in msg and "\n" not in msg and "unknown config key" not in msg
    path = write(tmp_path, f"_base_: {CFG / f'{method}.yaml'}\nmethod:\n  {old}: {value}\n")
    with pytest.raises(DetkdError) as exc:  # ... and in a file
        load_cls_config(path)
    assert str(exc.value).startswith(f"{path.resolve()}: 'method.{old}' moved: use '{new}'"), str(exc.value)
    # the new key takes the same value
    cfg = load_cls_config(CFG / f"{method}.yaml", [f"{new}={value}"])
    assert getattr(cfg.method.options, new.rpartition(".")[2]) == yaml.safe_load(value)


def test_moved_key_of_several_methods_lists_them():
    with pytest.raises(DetkdError, match=r"'method.temperature' moved: use 'method.<name>.temperature' "
                                         r"\(<name>: kd, aver, ebkd, aekd, camkd\)"):
        load_cls_config(CFG / "baseline.yaml", ["method.temperature=3"])
    with pytest.raises(DetkdError, match=r"'method.kd_weight' moved: use 'method.camkd.weight'"):
        load_cls_config(CFG / "camkd.yaml", ["method.kd_weight=3"])


@pytest.mark.parametrize("opt,match", [
    ("method.kd.temperature=abc", r"^--opts: 'method.kd.temperature': expected a number, got 'abc'$"),
    ("method.kd.weight=[1]", r"^--opts: 'method.kd.weight': expected a number"),
    ("method.kd=3", r"^--opts: 'method.kd' is a section: give its options as a mapping "),
    ("method.kd.temperatur=3", r"^--opts: unknown config key 'method.kd.temperatur' \(did you mean 'temperature'\?\)$"),
])
def test_wrong_type_or_key_in_a_section_names_it(opt, match):
    with pytest.raises(DetkdError, match=match):
        load_cls_config(CFG / "kd.yaml", [opt])


@pytest.mark.parametrize("cfg,opt,match", [
    ("dml.yaml", "method.dml.update=sometimes", r"'method.dml.update': must be one of 'sequential' \| 'simultaneous'"),
    ("at.yaml", "method.at.stages=[a]", r"'method.at.stages': expected list\[int\] \| null, got \['a'\]"),
    ("ffl.yaml", "method.ffl.align_channels=3", r"'method.ffl.align_channels': expected true/false"),
])
def test_wrong_type_in_other_sections_names_the_key(cfg, opt, match):
    with pytest.raises(DetkdError, match=match):
        load_cls_config(CFG / cfg, [opt])


@pytest.mark.parametrize("cfg,opt,match", [
    ("kd.yaml", "method.kd.temperature=0", r"'method.kd.temperature' must be > 0, got 0.0"),
    ("kd.yaml", "method.kd.weight=-1", r"'method.kd.weight' must be >= 0, got -1.0"),
    ("kd.yaml", "method.ce_weight=-1", r"'method.ce_weight' must be >= 0, got -1.0"),
    ("aekd.yaml", "method.aekd.c_tol=0", r"'method.aekd.c_tol' must be > 0"),
    ("camkd.yaml", "method.camkd.inter_weight=-1", r"'method.camkd.inter_weight' must be >= 0"),
    ("fitnet.yaml", "method.fitnet.weight=-1", r"'method.fitnet.weight' must be >= 0"),
    ("at.yaml", "method.at.weight=-1", r"'method.at.weight' must be >= 0"),
    ("sp.yaml", "method.sp.weight=-1", r"'method.sp.weight' must be >= 0"),
    ("fitnet_mkd.yaml", "method.fitnet_mkd.weight=-1", r"'method.fitnet_mkd.weight' must be >= 0"),
    ("ffl.yaml", "method.ffl.temperature=0", r"'method.ffl.temperature' must be > 0"),
    ("ffl.yaml", "method.ffl.rampup_epochs=-1", r"'method.ffl.rampup_epochs' must be >= 0"),
    ("ffl.yaml", "method.ffl.eps=-1", r"'method.ffl.eps' must be >= 0"),
    ("scd.yaml", "method.scd.beta=-1", r"'method.scd.beta' must be >= 0"),
])
def test_value_ranges_with_the_new_keys(cfg, opt, match):
    with pytest.raises(DetkdError, match=match):
        load_cls_config(CFG / cfg, [opt])


def test_saved_config_reloads_with_its_sections(tmp_path):
    """config.yaml beside a run holds the other methods' sections as null; it reloads."""
    cfg = load_cls_config(CFG / "camkd.yaml", ["method.camkd.inter_weight=5"])
    again = load_cls_config(write(tmp_path, dump_config(cfg), "config.yaml"))
    assert again.method == cfg.method and again.method.sections['camkd'].inter_weight == 5.0
