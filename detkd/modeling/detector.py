"""Builders for torchvision Faster R-CNN from a :class:`ModelConfig`.

Two kinds:

* torchvision's stock builders (``fasterrcnn_resnet50_fpn``, ``_v2``,
  ``fasterrcnn_mobilenet_v3_large_fpn``, ``_320_fpn``), with every RPN/RoI setting of the
  config passed through. COCO weights with ``num_classes != 91`` load the 91-class model
  and replace the box predictor (the usual fine-tuning recipe).
* ``custom``: a ResNet or MobileNet backbone with an FPN of configurable levels and
  ``out_channels``, anchors, and a two-layer MLP box head of ``representation_size``.

The result is always a plain ``torchvision.models.detection.FasterRCNN``, so detkd's
checkpoints load into torchvision without detkd.
"""

from __future__ import annotations

import logging
from typing import Any

import torchvision
from torch import nn
from torchvision.models.detection import FasterRCNN
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.backbone_utils import BackboneWithFPN
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
from torchvision.ops import FrozenBatchNorm2d, MultiScaleRoIAlign
from torchvision.ops.feature_pyramid_network import LastLevelMaxPool

from detkd.config.schema import ModelConfig
from detkd.errors import DetkdError
from detkd.modeling.sampling import install_keyed_samplers
from detkd.modeling.weights import (
    enum_state_dict,
    is_local_path,
    load_matching,
    read_state_dict,
    resolve_enum,
)

log = logging.getLogger(__name__)

_RESNET_LAYERS = ["layer4", "layer3", "layer2", "layer1", "conv1"]


def _rcnn_kwargs(cfg: ModelConfig) -> dict[str, Any]:
    """FasterRCNN keyword arguments shared by the stock and custom builders."""
    return dict(
        min_size=cfg.min_size,
        max_size=cfg.max_size,
        image_mean=list(cfg.image_mean),
        image_std=list(cfg.image_std),
        rpn_pre_nms_top_n_train=cfg.rpn_pre_nms_top_n_train,
        rpn_pre_nms_top_n_test=cfg.rpn_pre_nms_top_n_test,
        rpn_post_nms_top_n_train=cfg.rpn_post_nms_top_n_train,
        rpn_post_nms_top_n_test=cfg.rpn_post_nms_top_n_test,
        rpn_nms_thresh=cfg.rpn_nms_thresh,
        rpn_fg_iou_thresh=cfg.rpn_fg_iou_thresh,
        rpn_bg_iou_thresh=cfg.rpn_bg_iou_thresh,
        rpn_batch_size_per_image=cfg.rpn_batch_size_per_image,
        rpn_positive_fraction=cfg.rpn_positive_fraction,
        box_score_thresh=cfg.box_score_thresh,
        box_nms_thresh=cfg.box_nms_thresh,
        box_detections_per_img=cfg.box_detections_per_img,
        box_fg_iou_thresh=cfg.box_fg_iou_thresh,
        box_bg_iou_thresh=cfg.box_bg_iou_thresh,
        box_batch_size_per_image=cfg.box_batch_size_per_image,
        box_positive_fraction=cfg.box_positive_fraction,
    )


def _anchor_generator(cfg: ModelConfig, num_levels: int) -> AnchorGenerator:
    sizes = cfg.anchor_sizes or [[32 * 2**i] for i in range(num_levels)]
    if len(sizes) != num_levels:
        raise DetkdError(
            f"model.anchor_sizes has {len(sizes)} levels but the backbone gives {num_levels} feature maps"
        )
    if len({len(lvl) for lvl in sizes}) != 1:
        # torchvision's RPNHead predicts the same number of anchors at every level.
        raise DetkdError(f"model.anchor_sizes must give every level the same number of sizes, got {sizes}")
    ratios = tuple(float(r) for r in cfg.aspect_ratios)
    return AnchorGenerator(tuple(tuple(int(s) for s in lvl) for lvl in sizes), (ratios,) * num_levels)


# ----------------------------------------------------------------------------- stock builders


def _build_stock(cfg: ModelConfig) -> FasterRCNN:
    builder = getattr(torchvision.models.detection, cfg.arch)
    defaults = ModelConfig()
    if (cfg.representation_size, cfg.roi_output_size) != (defaults.representation_size, defaults.roi_output_size):
        raise DetkdError(f"model.representation_size/roi_output_size can only be changed with arch: custom (got {cfg.arch})")
    kwargs = _rcnn_kwargs(cfg)
    if cfg.anchor_sizes is not None:
        num_levels = 5 if "resnet" in cfg.arch else 3
        kwargs["rpn_anchor_generator"] = _anchor_generator(cfg, num_levels)
    weights = cfg.weights if cfg.weights and not is_local_path(cfg.weights) else None
    weights_backbone = cfg.weights_backbone
    backbone_file = None
    if weights_backbone and is_local_path(weights_backbone):
        backbone_file, weights_backbone = weights_backbone, None
    trainable = cfg.trainable_backbone_layers if (weights or weights_backbone) else None
    num_classes = cfg.num_classes
    if weights is not None:
        weights = resolve_enum(cfg.arch, weights)
        num_classes = len(weights.meta["categories"])
    elif weights_backbone is not None:
        backbone_name = "mobilenet_v3_large" if "mobilenet" in cfg.arch else "resnet50"
        weights_backbone = resolve_enum(backbone_name, weights_backbone)
    model = builder(weights=weights, weights_backbone=weights_backbone, num_classes=num_classes,
                    trainable_backbone_layers=trainable, **kwargs)
    if backbone_file is not None:
        body = model.backbone.body
        state = {k: v for k, v in read_state_dict(backbone_file).items() if not k.startswith(("fc.", "classifier."))}
        missing = [k for k in body.state_dict() if k not in state]
        if missing:
            raise DetkdError(f"{backbone_file} does not match the {cfg.arch} backbone: missing {', '.join(missing[:3])}")
        body.load_state_dict({k: v for k, v in state.items() if k in body.state_dict()}, strict=False)
    if num_classes != cfg.num_classes:
        in_features = model.roi_heads.box_predictor.cls_score.in_features
        model.roi_heads.box_predictor = FastRCNNPredictor(in_features, cfg.num_classes)
    return model


# ----------------------------------------------------------------------------- custom builder


def _classifier(cfg: ModelConfig) -> nn.Module:
    """The torchvision classification network whose features become the backbone,
    with ImageNet weights loaded when ``weights_backbone`` is set."""
    norm = FrozenBatchNorm2d if cfg.norm == "frozen_bn" else nn.BatchNorm2d
    net = getattr(torchvision.models, cfg.backbone)(weights=None, norm_layer=norm)
    if cfg.weights_backbone:
        if is_local_path(cfg.weights_backbone):
            state, source = read_state_dict(cfg.weights_backbone), cfg.weights_backbone
        else:
            enum = resolve_enum(cfg.backbone, cfg.weights_backbone)
            state, source = enum_state_dict(enum), str(enum)
        load_matching(net, state, f"backbone weights {source}")
    return net


def _freeze(modules: list[nn.Module]) -> None:
    for module in modules:
        for p in module.parameters():
            p.requires_grad_(False)


def _resnet_backbone(cfg: ModelConfig, net: nn.Module, trainable: int) -> BackboneWithFPN:
    if not 0 <= trainable <= 5:
        raise DetkdError(f"model.trainable_backbone_layers must be in [0, 5] for {cfg.backbone}, got {trainable}")
    train_names = _RESNET_LAYERS[:trainable] + (["bn1"] if trainable == 5 else [])
    for name, p in net.named_parameters():
        if not name.startswith(tuple(train_names)):
            p.requires_grad_(False)
    returned = cfg.returned_layers or [1, 2, 3, 4]
    if min(returned) < 1 or max(returned) > 4:
        raise DetkdError(f"model.returned_layers must be within [1, 4] for {cfg.backbone}, got {returned}")
    return_layers = {f"layer{k}": str(v) for v, k in enumerate(returned)}
    stage2 = net.inplanes // 8  # channels of layer1's output (64 or 256)
    in_channels = [stage2 * 2 ** (i - 1) for i in returned]
    extra = LastLevelMaxPool() if cfg.extra_pool_level else None
    return BackboneWithFPN(net, return_layers, in_channels, cfg.out_channels, extra_blocks=extra)


def _mobilenet_backbone(cfg: ModelConfig, net: nn.Module, trainable: int) -> BackboneWithFPN:
    features = net.features
    # Strided blocks start the stages; the first and last blocks are always stages too.
    stages = [0] + [i for i, b in enumerate(features) if getattr(b, "_is_cn", False)] + [len(features) - 1]
    if not 0 <= trainable <= len(stages):
        raise DetkdError(
            f"model.trainable_backbone_layers must be in [0, {len(stages)}] for {cfg.backbone}, got {trainable}"
        )
    freeze_before = len(features) if trainable == 0 else stages[len(stages) - trainable]
    _freeze(list(features[:freeze_before]))
    returned = cfg.returned_layers or [len(stages) - 2, len(stages) - 1]
    if min(returned) < 0 or max(returned) >= len(stages):
        raise DetkdError(f"model.returned_layers must be within [0, {len(stages) - 1}] for {cfg.backbone}, got {returned}")
    return_layers = {str(stages[k]): str(v) for v, k in enumerate(returned)}
    in_channels = [_out_channels(features[stages[i]]) for i in returned]
    extra = LastLevelMaxPool() if cfg.extra_pool_level else None
    return BackboneWithFPN(features, return_layers, in_channels, cfg.out_channels, extra_blocks=extra)


def _out_channels(block: nn.Module) -> int:
    if hasattr(block, "out_channels"):
        return block.out_channels
    convs = [m for m in block.modules() if isinstance(m, nn.Conv2d)]
    return convs[-1].out_channels


def _build_custom(cfg: ModelConfig) -> FasterRCNN:
    if cfg.weights and not is_local_path(cfg.weights):
        raise DetkdError(f"model.weights '{cfg.weights}' is a torchvision name; arch: custom takes a file path only")
    net = _classifier(cfg)
    # Freezing layers only makes sense for pretrained ones (torchvision does the same).
    trainable = cfg.trainable_backbone_layers if cfg.weights_backbone else 99
    if cfg.backbone.startswith("resnet"):
        backbone = _resnet_backbone(cfg, net, min(trainable, 5))
    else:
        n_stages = 2 + sum(1 for b in net.features if getattr(b, "_is_cn", False))
        backbone = _mobilenet_backbone(cfg, net, min(trainable, n_stages))
    levels = list(backbone.body.return_layers.values())  # FPN level names "0", "1", ...
    num_maps = len(levels) + (1 if cfg.extra_pool_level else 0)
    pool = MultiScaleRoIAlign(featmap_names=levels, output_size=cfg.roi_output_size, sampling_ratio=2)
    head = TwoMLPHead(cfg.out_channels * cfg.roi_output_size**2, cfg.representation_size)
    return FasterRCNN(
        backbone,
        num_classes=None,
        rpn_anchor_generator=_anchor_generator(cfg, num_maps),
        box_roi_pool=pool,
        box_head=head,
        box_predictor=FastRCNNPredictor(cfg.representation_size, cfg.num_classes),
        **_rcnn_kwargs(cfg),
    )


def build_detector(cfg: ModelConfig) -> FasterRCNN:
    """A torchvision ``FasterRCNN`` from the config, with ``weights`` loaded if it is a file."""
    model = _build_custom(cfg) if cfg.arch == "custom" else _build_stock(cfg)
    install_keyed_samplers(model)  # torchvision's sampling unless the trainer sets per-image keys
    if cfg.weights and is_local_path(cfg.weights):
        load_matching(model, read_state_dict(cfg.weights), f"model.weights {cfg.weights}")
    return model


def count_parameters(model: nn.Module, trainable_only: bool = False) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)
