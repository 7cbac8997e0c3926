"""Detection model checks (moving out of the config layer)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from detkd.config.build import build_dataclass
from detkd.config.schema import ARCH_FAMILIES, FAMILY_OPTIONS, ModelConfig
from detkd.config.tree import OVERRIDE_SOURCE, key_source, load_tree, load_yaml_tree, merge_trees
from detkd.errors import DetkdError


def load_model_config(path: str | Path, overrides: list[str] | None = None) -> ModelConfig:
    """Just the ``model`` section of a config file, validated (for readers of model files,
    which need no other section)."""
    tree, origins = load_tree(path, overrides)
    model = tree.get("model") or {}
    if not isinstance(model, dict):
        raise DetkdError(f"{key_source('model', origins, str(path))}: 'model' must be a mapping")
    cfg = build_dataclass(ModelConfig, model, str(path), origins, prefix="model.")
    check_model(cfg, str(path))
    return cfg


def resolve_teacher_config(tree: dict, origins: dict, source: str) -> dict:
    """``teacher.config: FILE.yaml`` takes the teacher's ``model`` section from the config
    the teacher was trained with (path relative to the file that names it); keys under
    ``teacher.model`` still override it."""
    teacher = tree.get("teacher")
    if not isinstance(teacher, dict) or not teacher.get("config"):
        return tree
    ref = teacher["config"]
    named_in = key_source("teacher.config", origins, source)
    if not isinstance(ref, str):
        raise DetkdError(f"{named_in}: 'teacher.config' must be a path")
    base_dir = Path(named_in).parent if named_in not in ("", OVERRIDE_SOURCE) else Path.cwd()
    path = (base_dir / ref).resolve()
    if not path.is_file():
        raise DetkdError(f"{named_in}: teacher config not found: {path}")
    teacher_tree = load_yaml_tree(path)
    model = teacher_tree.get("model", {})
    teacher["model"] = merge_trees(model, teacher.get("model") or {}, {}, "")
    teacher["config"] = str(path)
    return tree


# ----------------------------------------------------------------------------- range checks


def positive(value: float, key: str, source: str, allow_zero: bool = False) -> None:
    if value < 0 or (value == 0 and not allow_zero):
        bound = ">= 0" if allow_zero else "> 0"
        raise DetkdError(f"{source}: '{key}' must be {bound}, got {value}")


def fraction(value: float, key: str, source: str) -> None:
    if not 0.0 <= value <= 1.0:
        raise DetkdError(f"{source}: '{key}' must be in [0, 1], got {value}")


def check_model(m: ModelConfig, source: str, prefix: str = "model") -> None:
    """Value-range checks of a model section that types alone cannot express."""
    if m.num_classes < 2:
        raise DetkdError(f"{source}: '{prefix}.num_classes' must be >= 2 (background + 1 class), got {m.num_classes}")
    for key in ("min_size", "max_size", "out_channels", "representation_size", "rpn_batch_size_per_image",
                "box_batch_size_per_image", "box_detections_per_img", "roi_output_size"):
        positive(getattr(m, key), f"{prefix}.{key}", source)
    for key in ("rpn_positive_fraction", "box_positive_fraction", "rpn_nms_thresh", "box_nms_thresh",
                "box_score_thresh"):
        fraction(getattr(m, key), f"{prefix}.{key}", source)
    if len(m.image_mean) != 3 or len(m.image_std) != 3:
        raise DetkdError(f"{source}: '{prefix}.image_mean' and '{prefix}.image_std' need 3 values each")
    check_family_options(m, prefix, source)


def check_family_options(m: Any, prefix: str, source: str) -> None:
    """The ``model.<family>`` section of the arch's family only, and its value ranges (how the
    parts fit a backbone is checked where the model is built, in detkd/modeling/families/)."""
    family = ARCH_FAMILIES[m.arch]
    for name, options in FAMILY_OPTIONS.items():
        if options is not None and name != family and getattr(m, name) is not None:
            raise DetkdError(f"{source}: '{prefix}.{name}' is set but '{prefix}.arch' {m.arch!r} is a {family} "
                             f"(the {name} options apply to the {name} archs only)")
    section = getattr(m, family, None) if FAMILY_OPTIONS[family] is not None else None
    if section is None:
        return
    key = f"{prefix}.{family}"  # each value's own range is declared on its field (option(...))
    if getattr(section, "bg_iou_thresh", 0.0) > getattr(section, "fg_iou_thresh", 1.0):
        raise DetkdError(f"{source}: '{key}.bg_iou_thresh' ({section.bg_iou_thresh}) must not exceed "
                         f"'{key}.fg_iou_thresh' ({section.fg_iou_thresh})")
    if hasattr(section, "min_ratio") and not section.min_ratio < section.max_ratio:
        raise DetkdError(f"{source}: '{key}.min_ratio' ({section.min_ratio}) must be below '{key}.max_ratio' "
                         f"({section.max_ratio})")
    for name in ("image_mean", "image_std"):
        value = getattr(section, name, None)
        if value is not None and len(value) != 3:
            raise DetkdError(f"{source}: '{key}.{name}' needs 3 values, got {value}")
    if getattr(section, "image_std", None) and min(section.image_std) <= 0:
        raise DetkdError(f"{source}: '{key}.image_std' must be > 0, got {section.image_std}")
    for name in ("extra_channels", "steps"):
        value = getattr(section, name, None)
        if value is not None and (not value or min(value) <= 0):
            raise DetkdError(f"{source}: '{key}.{name}' must be a non-empty list of positive integers, got {value}")
    if getattr(section, "scales", None) is not None and (not section.scales or min(section.scales) <= 0):
        raise DetkdError(f"{source}: '{key}.scales' must be a non-empty list of positive numbers, got {section.scales}")
    ratios = getattr(section, "aspect_ratios", None)
    if ratios is not None and (not ratios or any(not r or min(r) < 1 for r in ratios)):
        raise DetkdError(f"{source}: '{key}.aspect_ratios' must list, per feature map, ratios >= 1 (each "
                         f"also used inverted), got {ratios}")

