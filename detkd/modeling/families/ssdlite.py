"""SSDlite (Sandler et al., CVPR 2018; Howard et al., ICCV 2019): torchvision's ``SSD`` with
``SSDLiteHead`` (a depthwise 3x3 block and a 1x1 predictor per map).

* Stock: ``ssdlite320_mobilenet_v3_large``. detkd composes it from torchvision's own parts in
  the builder's order (so a seeded build equals the builder's; tested), because the builder
  shrinks the backbone's tail when it gets no backbone weights, and a model file must rebuild
  the tail it was trained with without downloading them. Weight names load offline as
  everywhere in detkd (:mod:`detkd.modeling.weights`).
* ``arch: ssdlite``: a detkd backbone cut into two maps (:class:`SSDFeatures`): MobileNet as
  torchvision cuts it (the expansion conv of the first stride-32 block, s16, and the last block,
  s32), ResNet at layer3 (s16) and layer4 (s32); then ``model.ssdlite.extra_channels`` extra
  layers (1x1, depthwise 3x3 / 2, 1x1; BatchNorm + ReLU6) and default boxes of
  ``model.ssdlite.aspect_ratios`` / ``min_ratio`` / ``max_ratio`` on every map.

The input is warped to ``model.ssdlite.size`` squared.
"""

from __future__ import annotations

from collections import OrderedDict
from functools import partial
from typing import Callable, Dict

import torch
from torch import Tensor, nn
from torchvision.models import mobilenet_v3_large
from torchvision.models.detection.ssd import SSD
from torchvision.models.detection._utils import retrieve_out_channels
from torchvision.models.detection.anchor_utils import DefaultBoxGenerator
from torchvision.models.detection.ssdlite import SSDLiteFeatureExtractorMobileNet, SSDLiteHead
from torchvision.ops.misc import Conv2dNormActivation

from detkd.config.schema import ModelConfig
from detkd.errors import DetkdError
from detkd.modeling.families.base import (
    COMMON_KEYS,
    Family,
    check_reads,
    classifier,
    dense_train_step,
    freeze,
    freeze_mobilenet,
    freeze_resnet,
    is_stock,
    match_by_iou,
    mobilenet_stages,
    options,
    require_default,
    postprocess_on_model,
    trainable_layers,
    DenseRows,
    box_loss_rows,
)
from detkd.modeling.weights import enum_state_dict, is_local_path, load_matching, read_state_dict, resolve_enum

READS = COMMON_KEYS | {"backbone", "norm"}
READS_STOCK = COMMON_KEYS
# Options that shape the model of a custom backbone; the stock builders fix them.
CUSTOM_ONLY = ("size", "aspect_ratios", "scales", "steps", "min_ratio", "max_ratio", "extra_channels")


class SSDFeatures(nn.Module):
    """The maps SSD heads read: ``features`` (a Sequential of stages, each giving one map) then
    ``extra`` (each block giving one more), as ``OrderedDict("0", "1", ...)``."""

    def __init__(self, features: list[nn.Module], extra: nn.ModuleList) -> None:
        super().__init__()
        self.features = nn.Sequential(*features)
        self.extra = extra

    def forward(self, x: Tensor) -> Dict[str, Tensor]:
        output = []
        for block in self.features:
            x = block(x)
            output.append(x)
        for block in self.extra:
            x = block(x)
            output.append(x)
        return OrderedDict([(str(i), v) for i, v in enumerate(output)])


def _split_expansion(block: nn.Module) -> tuple[nn.Module, nn.Module]:
    """An inverted-residual block as (its 1x1 expansion conv, the rest): MobileNetV3 keeps the
    layers in ``block``, MobileNetV2 in ``conv``."""
    layers = block.block if hasattr(block, "block") else block.conv
    if getattr(block, "use_res_connect", False) or len(layers) < 3:
        raise DetkdError("model.backbone: the first stride-32 block has no expansion conv to cut SSD's first map at")
    return layers[0], layers[1:]


def trunk(cfg: ModelConfig) -> tuple[list[nn.Module], int]:
    """A detkd backbone as SSD's two maps (stride 16 and 32), frozen by
    ``trainable_backbone_layers``; returns (the two stages, the width of the last map)."""
    net = classifier(cfg)
    trainable = trainable_layers(cfg, net)
    if cfg.backbone.startswith("resnet"):
        freeze_resnet(cfg, net, trainable)
        first = nn.Sequential(net.conv1, net.bn1, net.relu, net.maxpool, net.layer1, net.layer2, net.layer3)
        return [first, net.layer4], net.inplanes
    features = net.features
    freeze_mobilenet(cfg, features, trainable)
    c4 = mobilenet_stages(features)[-2]  # the first stride-32 block
    expansion, rest = _split_expansion(features[c4])
    return [nn.Sequential(*features[:c4], expansion), nn.Sequential(rest, *features[c4 + 1:])], \
        features[-1].out_channels


def normal_init(module: nn.Module, std: float = 0.03) -> None:
    """SSDlite's initialisation of its extra layers and heads (torchvision's, the TF recipe)."""
    for layer in module.modules():
        if isinstance(layer, nn.Conv2d):
            torch.nn.init.normal_(layer.weight, mean=0.0, std=std)
            if layer.bias is not None:
                torch.nn.init.constant_(layer.bias, 0.0)


def _lite_extra(in_channels: int, out_channels: int, norm: Callable[..., nn.Module]) -> nn.Sequential:
    mid = out_channels // 2
    return nn.Sequential(
        Conv2dNormActivation(in_channels, mid, kernel_size=1, norm_layer=norm, activation_layer=nn.ReLU6),
        Conv2dNormActivation(mid, mid, kernel_size=3, stride=2, groups=mid, norm_layer=norm,
                             activation_layer=nn.ReLU6),
        Conv2dNormActivation(mid, out_channels, kernel_size=1, norm_layer=norm, activation_layer=nn.ReLU6),
    )


def default_boxes(opts, num_maps: int, key: str) -> DefaultBoxGenerator:
    """Default boxes on ``num_maps`` maps from the options (None ratios: ``[2, 3]`` on each)."""
    ratios = opts.aspect_ratios or [[2, 3]] * num_maps
    for name, value, want in (("aspect_ratios", ratios, num_maps), ("scales", opts.scales, num_maps + 1),
                              ("steps", opts.steps, num_maps)):
        if value is not None and len(value) != want:
            raise DetkdError(f"{key}.{name} has {len(value)} entries; the model has {num_maps} feature maps "
                             f"(needs {want})")
    return DefaultBoxGenerator(ratios, min_ratio=opts.min_ratio, max_ratio=opts.max_ratio, scales=opts.scales,
                               steps=opts.steps)


def ssd_kwargs(opts) -> dict:
    kwargs = dict(score_thresh=opts.score_thresh, nms_thresh=opts.nms_thresh,
                  detections_per_img=opts.detections_per_img, topk_candidates=opts.topk_candidates,
                  iou_thresh=opts.iou_thresh, positive_fraction=opts.positive_fraction)
    if opts.image_mean is not None:
        kwargs["image_mean"] = list(opts.image_mean)
    if opts.image_std is not None:
        kwargs["image_std"] = list(opts.image_std)
    return kwargs


_BN = partial(nn.BatchNorm2d, eps=0.001, momentum=0.03)  # SSDlite's BatchNorm (torchvision's)


def _build_custom(cfg: ModelConfig, pretrained: bool) -> SSD:
    if cfg.weights and not is_local_path(cfg.weights):
        raise DetkdError(f"model.weights '{cfg.weights}' is a torchvision name; arch: ssdlite takes a file path "
                         "only (or use arch: ssdlite320_mobilenet_v3_large)")
    opts = options(cfg)
    if not pretrained:
        import dataclasses

        cfg = dataclasses.replace(cfg, weights=None, weights_backbone=None)
    stages, width = trunk(cfg)
    extra, in_ch = nn.ModuleList(), width
    for out in opts.extra_channels:
        extra.append(_lite_extra(in_ch, out, _BN))
        in_ch = out
    normal_init(extra)
    backbone = SSDFeatures(stages, extra)
    size = (opts.size, opts.size)
    boxes = default_boxes(opts, 2 + len(extra), "model.ssdlite")
    channels = retrieve_out_channels(backbone, size)
    head = SSDLiteHead(channels, boxes.num_anchors_per_location(), cfg.num_classes, _BN)
    return SSD(backbone, boxes, size, cfg.num_classes, head=head, **ssd_kwargs(opts))


def replace_ssd_classifier(model: SSD, num_classes: int) -> None:
    """New last classification convs of ``num_classes`` per default box, on every map."""
    head = model.head.classification_head
    for i, anchors in enumerate(model.anchor_generator.num_anchors_per_location()):
        block = head.module_list[i]
        old = block[-1] if isinstance(block, nn.Sequential) else block
        new = nn.Conv2d(old.in_channels, num_classes * anchors, old.kernel_size, padding=old.padding)
        if isinstance(block, nn.Sequential):
            normal_init(new)
            block[-1] = new
        else:
            nn.init.xavier_uniform_(new.weight)
            nn.init.constant_(new.bias, 0.0)
            head.module_list[i] = new
    head.num_columns = num_classes


def _build_stock(cfg: ModelConfig, pretrained: bool) -> SSD:
    """torchvision's ``ssdlite320_mobilenet_v3_large`` from its parts, in its order."""
    opts = options(cfg)
    require_default(opts, CUSTOM_ONLY, "model.ssdlite", f"is fixed by the stock builder {cfg.arch}; "
                    "arch: ssdlite builds on detkd's backbones")
    weights = resolve_enum(cfg.arch, cfg.weights) if cfg.weights and not is_local_path(cfg.weights) else None
    with_backbone = bool(cfg.weights_backbone) and weights is None
    trainable = 6
    if weights is not None or with_backbone:
        trainable = cfg.trainable_backbone_layers
        if not 0 <= trainable <= 6:
            raise DetkdError(f"model.trainable_backbone_layers must be in [0, 6] for {cfg.arch}, got {trainable}")
    num_classes = len(weights.meta["categories"]) if weights is not None else cfg.num_classes
    # torchvision shrinks the last stage (reduced_tail) when the backbone starts untrained.
    net = mobilenet_v3_large(weights=None, norm_layer=_BN, reduced_tail=not with_backbone)
    if not with_backbone:
        normal_init(net)
    elif pretrained:
        if is_local_path(cfg.weights_backbone):
            state, source = read_state_dict(cfg.weights_backbone), cfg.weights_backbone
        else:
            enum = resolve_enum("mobilenet_v3_large", cfg.weights_backbone)
            state, source = enum_state_dict(enum), str(enum)
        load_matching(net, state, f"backbone weights {source}")
    features = net.features
    stages = mobilenet_stages(features)
    freeze(list(features[:len(features) if trainable == 0 else stages[len(stages) - trainable]]))
    backbone = SSDLiteFeatureExtractorMobileNet(features, stages[-2], _BN)
    size = (320, 320)
    boxes = DefaultBoxGenerator([[2, 3] for _ in range(6)], min_ratio=0.2, max_ratio=0.95)
    head = SSDLiteHead(retrieve_out_channels(backbone, size), boxes.num_anchors_per_location(), num_classes, _BN)
    model = SSD(backbone, boxes, size, num_classes, head=head, **ssd_kwargs(opts))
    if weights is not None and pretrained:
        load_matching(model, enum_state_dict(weights), f"model.weights {weights}")
    if num_classes != cfg.num_classes:
        replace_ssd_classifier(model, cfg.num_classes)
    return model


def build(cfg: ModelConfig, pretrained: bool = True) -> SSD:
    if is_stock(cfg):
        check_reads(cfg, READS_STOCK)
        return _build_stock(cfg, pretrained)
    check_reads(cfg, READS)
    return _build_custom(cfg, pretrained)


def ssd_loss(model: SSD, targets, head_outputs, anchors, matched_idxs) -> dict:
    """SSD's losses given the matched indices (hard negative mining inside)."""
    return model.compute_loss(targets, head_outputs, anchors, matched_idxs)


def train_step(model: SSD, images, targets):
    """``SSD.forward`` in training (SSD and SSDlite): IoU matching of the default boxes."""
    return dense_train_step(model, images, targets, match_by_iou, ssd_loss)


def ssd_detect(model: SSD, image_list, features) -> list[dict]:
    """SSD's eval forward after the backbone: head, default boxes, ``postprocess_detections``."""
    maps = list(features.values())
    return model.postprocess_detections(model.head(maps), model.anchor_generator(image_list, maps),
                                        image_list.image_sizes)


def row_box_loss(model: SSD, anchors: Tensor, regression: Tensor, boxes: Tensor) -> Tensor:
    """Smooth-L1 (beta 1) of the encoded boxes per row (``SSD.compute_loss``)."""
    return box_loss_rows("smooth_l1", model.box_coder, anchors, regression, boxes)


SSD_ROWS = DenseRows(match=match_by_iou, sigmoid=False, row_box_loss=row_box_loss)

FAMILY = Family(name="ssdlite", model_class=SSD, build=build, reads=READS, reads_stock=READS_STOCK,
                postprocessor=postprocess_on_model, train_step=train_step, detect=ssd_detect, dense=SSD_ROWS)
