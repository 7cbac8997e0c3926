"""SSD (Liu et al., ECCV 2016): torchvision's ``SSD`` with ``SSDHead`` (a 3x3 predictor per map).

* Stock: ``ssd300_vgg16`` (VGG-16 with conv4_3 L2-normalised, fc6/fc7 as convs, extra layers
  for 300x300; no BatchNorm, so its modules do not depend on the weights), with
  ``model.ssd``'s post-processing and matching settings passed through.
* ``arch: ssd``: the two maps of a detkd backbone as ``arch: ssdlite`` cuts them
  (:func:`detkd.modeling.families.ssdlite.trunk`), then ``model.ssd.extra_channels`` extra
  layers (1x1 to half the width, 3x3 / 2; ReLU; Xavier initialised, as SSD's) and default
  boxes as ``arch: ssdlite`` places them. ImageNet mean/std unless ``model.ssd`` gives others.

The input is warped to ``model.ssd.size`` squared.
"""

from __future__ import annotations

import dataclasses

from torch import nn
from torchvision.models.detection.ssd import SSD
from torchvision.models.detection._utils import retrieve_out_channels
from torchvision.models.detection.ssd import SSDHead

from detkd.config.schema import ModelConfig
from detkd.errors import DetkdError
from detkd.modeling.families.base import (
    Family,
    Stock,
    build_stock,
    check_reads,
    is_stock,
    options,
    require_default,
    postprocess_on_model,
)
from detkd.modeling.families.ssdlite import (
    CUSTOM_ONLY,
    READS,
    READS_STOCK,
    SSDFeatures,
    default_boxes,
    replace_ssd_classifier,
    SSD_ROWS,
    ssd_detect,
    ssd_kwargs,
    train_step,
    trunk,
)
from detkd.modeling.weights import is_local_path

_STOCK = {"ssd300_vgg16": Stock("vgg16", 5)}
_IMAGENET = ([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])


def _extra(in_channels: int, out_channels: int) -> nn.Sequential:
    block = nn.Sequential(nn.Conv2d(in_channels, out_channels // 2, kernel_size=1), nn.ReLU(inplace=True),
                          nn.Conv2d(out_channels // 2, out_channels, kernel_size=3, padding=1, stride=2),
                          nn.ReLU(inplace=True))
    for layer in block.modules():
        if isinstance(layer, nn.Conv2d):
            nn.init.xavier_uniform_(layer.weight)
            nn.init.constant_(layer.bias, 0.0)
    return block


def _build_custom(cfg: ModelConfig) -> SSD:
    if cfg.weights and not is_local_path(cfg.weights):
        raise DetkdError(f"model.weights '{cfg.weights}' is a torchvision name; arch: ssd takes a file path "
                         "only (or use arch: ssd300_vgg16)")
    opts = options(cfg)
    stages, width = trunk(cfg)
    extra, in_ch = nn.ModuleList(), width
    for out in opts.extra_channels:
        extra.append(_extra(in_ch, out))
        in_ch = out
    backbone = SSDFeatures(stages, extra)
    size = (opts.size, opts.size)
    boxes = default_boxes(opts, 2 + len(extra), "model.ssd")
    head = SSDHead(retrieve_out_channels(backbone, size), boxes.num_anchors_per_location(), cfg.num_classes)
    kwargs = ssd_kwargs(opts)
    kwargs.setdefault("image_mean", _IMAGENET[0])
    kwargs.setdefault("image_std", _IMAGENET[1])
    return SSD(backbone, boxes, size, cfg.num_classes, head=head, **kwargs)


def build(cfg: ModelConfig, pretrained: bool = True) -> SSD:
    if not is_stock(cfg):
        check_reads(cfg, READS)
        return _build_custom(cfg if pretrained else dataclasses.replace(cfg, weights=None, weights_backbone=None))
    check_reads(cfg, READS_STOCK)
    opts = options(cfg)
    require_default(opts, CUSTOM_ONLY, "model.ssd", f"is fixed by the stock builder {cfg.arch}; "
                    "arch: ssd builds on detkd's backbones")
    return build_stock(cfg, _STOCK[cfg.arch], ssd_kwargs(opts), replace_ssd_classifier, pretrained)


FAMILY = Family(name="ssd", model_class=SSD, build=build, reads=READS, reads_stock=READS_STOCK,
                postprocessor=postprocess_on_model, train_step=train_step, detect=ssd_detect, dense=SSD_ROWS)
