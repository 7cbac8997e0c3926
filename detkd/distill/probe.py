"""What the methods' build-time checks read off two built detectors: each backbone's feature
maps (names, channels, grid, stride), probed on one zero image, and the anchor layout.

Reading the maps off the model, not off its config, covers every backbone and every option
the same way (a returned layer, an extra pooled level, a fixed-size SSD input). The
:class:`~detkd.distill.methods.base.BuildContext` probes each backbone once per Distiller
build and every method reads that one result.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import Optional

import torch
from torch import Tensor, nn

__all__ = ["PROBE_SIZE", "LevelInfo", "anchor_layout", "probe_features", "probe_levels", "probe_size", "stride_of"]

# Side of the zero image the backbones are probed with. Large enough that a stride
# difference at any level (up to 128) changes a feature-map size.
PROBE_SIZE = 256


@dataclass(frozen=True)
class LevelInfo:
    """One map of a backbone on the probe image: width, cells, stride (None: unknown, 1-cell map)."""

    channels: int
    height: int
    width: int
    stride: Optional[int]


def probe_size(model: nn.Module) -> int:
    """The side of the zero image a model's maps are probed on: :data:`PROBE_SIZE`, or the size
    a model that warps its input to a fixed square (SSD, SSDlite) works at."""
    fixed = getattr(getattr(model, "transform", None), "fixed_size", None)
    return int(max(fixed)) if fixed else PROBE_SIZE


def stride_of(cells: int, size: int) -> Optional[int]:
    """The stride of a map with ``cells`` rows on a ``size``-pixel input: the smallest power of two
    ``s`` with ``ceil(size / s) == cells`` (stride-2 convolutions round up); None for a 1-cell map
    (any stride >= ``size``) or no such power."""
    if cells <= 1:
        return None
    s = 1
    while s <= size:
        if -(-size // s) == cells:
            return s
        s *= 2
    return None


def probe_features(model: nn.Module, size: Optional[int] = None) -> "OrderedDict[str, tuple[int, ...]]":
    """``level -> (channels, H, W)`` of ``model.backbone`` on one ``size x size`` zero image
    (default :func:`probe_size`).

    Runs in eval mode under ``no_grad`` (and restores every module's mode afterwards), so
    BatchNorm running statistics are not touched.
    """
    size = probe_size(model) if size is None else size
    backbone = model.backbone
    ref = next((p for p in model.parameters() if p.is_floating_point()), None)
    device = ref.device if ref is not None else torch.device("cpu")
    dtype = ref.dtype if ref is not None else torch.float32
    modes = [(m, m.training) for m in backbone.modules()]
    try:
        backbone.eval()
        with torch.no_grad():
            out = backbone(torch.zeros(1, 3, size, size, device=device, dtype=dtype))
    finally:
        for m, mode in modes:
            m.training = mode
    if isinstance(out, Tensor):
        out = OrderedDict([("0", out)])
    return OrderedDict((str(k), tuple(int(s) for s in v.shape[1:])) for k, v in out.items())


def probe_levels(model: nn.Module) -> "OrderedDict[str, LevelInfo]":
    """:func:`probe_features` with each map's stride (:class:`LevelInfo`)."""
    size = probe_size(model)
    return OrderedDict((k, LevelInfo(c, h, w, stride_of(h, size))) for k, (c, h, w) in probe_features(model).items())


def anchor_layout(gen: nn.Module) -> tuple[tuple[tuple[float, ...], ...], tuple[tuple[float, ...], ...]]:
    """(sizes, aspect ratios) per level of a torchvision ``AnchorGenerator``, as plain floats."""
    sizes = tuple(tuple(float(s) for s in lvl) for lvl in gen.sizes)
    ratios = tuple(tuple(float(r) for r in lvl) for lvl in gen.aspect_ratios)
    return sizes, ratios
