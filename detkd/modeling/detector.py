"""Build the torchvision detector a :class:`ModelConfig` describes.

``model.arch`` picks the family (Faster R-CNN, RetinaNet, FCOS, SSDlite, SSD: one file each in
:mod:`detkd.modeling.families`) and the builder: torchvision's stock one, or detkd's on a
ResNet / MobileNet backbone. The result is always a plain torchvision class (``FasterRCNN``,
``RetinaNet``, ``FCOS``, ``SSD``), so detkd's checkpoints load into torchvision without detkd.
"""

from __future__ import annotations

from torch import nn

from detkd.config.schema import ModelConfig
from detkd.modeling.families import family_of
from detkd.modeling.weights import is_local_path, load_matching, read_state_dict


def build_detector(cfg: ModelConfig) -> nn.Module:
    """The torchvision detector of the config, with ``weights`` loaded if it is a file."""
    model = family_of(cfg).build(cfg, True)
    if cfg.weights and is_local_path(cfg.weights):
        load_matching(model, read_state_dict(cfg.weights), f"model.weights {cfg.weights}")
    return model


def count_parameters(model: nn.Module, trainable_only: bool = False) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)
