"""The model sections of a detection config: the teacher's taken from the config file it was
trained with (``teacher.config``), and each key checked against what its arch's builder reads,
at load time, so the error names the file that set the key. A section's own values and the
rules across its fields are declared on its dataclasses (:mod:`detkd.config.schema`)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

from detkd.config.schema import ModelConfig
from detkd.config.tree import OVERRIDE_SOURCE, key_source, load_yaml_tree, merge_trees
from detkd.errors import DetkdError
from detkd.modeling.families import family_of, is_stock
from detkd.modeling.families.base import check_reads

__all__ = ["check_model_keys", "resolve_teacher_config"]


def resolve_teacher_config(tree: dict, origins: dict, source: str) -> dict:
    """``teacher.config: FILE.yaml`` takes the teacher's ``model`` section from the config
    the teacher was trained with (path relative to the file that names it); keys under
    ``teacher.model`` still override it. ``origins`` gets the file of each key it takes."""
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
    teacher_origins: dict = {}
    teacher_tree = load_yaml_tree(path, teacher_origins)
    for key, file in teacher_origins.items():
        if key.startswith("model.") and not origins.get(f"teacher.{key}"):
            origins[f"teacher.{key}"] = file
    model = teacher_tree.get("model", {})
    teacher["model"] = merge_trees(model, teacher.get("model") or {}, {}, "")
    teacher["config"] = str(path)
    return tree


def check_model_keys(m: ModelConfig, origins: dict, source: str, prefix: str = "model") -> None:
    """Refuse a key of model section ``m`` (at ``prefix``) that its arch's builder does not
    read, changed from its default: ``"model.rpn_nms_thresh does not apply to arch
    'retinanet' (set in configs/x.yaml)"`` (the builders check the same when they run)."""
    family = family_of(m)
    reads = family.reads_stock if is_stock(m) else family.reads
    check_reads(m, reads, prefix, set_in=lambda key: _shown(key_source(key, origins, source)))


def _shown(file: str) -> str:
    """``file`` relative to the working directory when it lies below it (as a person typed it)."""
    path: Optional[Path] = Path(file) if file and file != OVERRIDE_SOURCE else None
    if path is None or not path.is_absolute():
        return file
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return file
