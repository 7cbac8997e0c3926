"""The detector families: one file each, one entry in :data:`FAMILIES`.

``model.arch`` names a family or one of its torchvision stock builders
(:data:`detkd.config.schema.ARCH_FAMILIES`); :func:`family_of` finds its builder. Everything
that differs between families (what to build, which config keys apply, where the score
threshold lives) is in the family's file; see docs/models.md.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from torch import nn

from detkd.config.schema import ARCH_FAMILIES, ModelConfig
from detkd.errors import DetkdError
from detkd.modeling.families import faster_rcnn, fcos, retinanet, ssd, ssdlite
from detkd.modeling.families.base import Family, TrainStep, foreground, is_stock

__all__ = ["FAMILIES", "Family", "TrainStep", "check_boxes_only", "postprocess_settings", "family_of", "family_of_model", "describe",
           "foreground", "is_stock"]

FAMILIES: dict[str, Family] = {
    "faster_rcnn": faster_rcnn.FAMILY,
    "retinanet": retinanet.FAMILY,
    "fcos": fcos.FAMILY,
    "ssdlite": ssdlite.FAMILY,
    "ssd": ssd.FAMILY,
}


def family_of(cfg: ModelConfig) -> Family:
    """The family that builds ``cfg.arch``."""
    name = ARCH_FAMILIES.get(cfg.arch)
    if name not in FAMILIES:
        raise DetkdError(f"unknown model.arch '{cfg.arch}' (choose one of: {', '.join(ARCH_FAMILIES)})")
    return FAMILIES[name]


def family_of_model(model: nn.Module) -> Family:
    """The family of a built model (by its torchvision class; SSD and SSDlite share ``SSD``)."""
    for family in FAMILIES.values():
        if isinstance(model, family.model_class):
            return family
    raise DetkdError(f"{type(model).__name__} is not a model of a detkd family ({', '.join(FAMILIES)})")


@contextmanager
def postprocess_settings(model: nn.Module, **settings: float) -> Iterator[None]:
    """Set the model's post-processing options (``score_thresh``, ``detections_per_img``, ...: its
    family's ``postprocessor``) for a block, then restore them: a teacher asked for more
    detections than it shows at inference."""
    post = family_of_model(model).postprocessor(model)
    kept = {name: getattr(post, name) for name in settings}
    for name, value in settings.items():
        setattr(post, name, value)
    try:
        yield
    finally:
        for name, value in kept.items():
            setattr(post, name, value)


def check_boxes_only(model: nn.Module, who: str) -> None:
    """Refuse a model with mask or keypoint heads (torchvision's Mask/Keypoint R-CNN): detkd
    distils box detectors only."""
    heads = getattr(model, "roi_heads", None)
    if heads is not None and (heads.has_mask() or heads.has_keypoint()):
        raise DetkdError(f"the {who} has mask/keypoint heads; detkd distills box detectors only")


def describe(cfg: ModelConfig) -> str:
    """A short name for logs: the stock builder, or ``<family> <backbone>``."""
    return cfg.arch if is_stock(cfg) else f"{family_of(cfg).name} {cfg.backbone}"
