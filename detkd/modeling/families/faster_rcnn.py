"""Faster R-CNN (Ren et al., NeurIPS 2015): torchvision's ``FasterRCNN``.

Two kinds:

* torchvision's stock builders (``fasterrcnn_resnet50_fpn``, ``_v2``,
  ``fasterrcnn_mobilenet_v3_large_fpn``, ``_320_fpn``), with every RPN/RoI setting of the
  config passed through. COCO weights with ``num_classes != 91`` load the 91-class model
  and replace the box predictor (the usual fine-tuning recipe).
* ``arch: faster_rcnn`` (or ``custom``, its earlier name): a ResNet or MobileNet backbone with
  an FPN of configurable levels and ``out_channels``, anchors, and a two-layer MLP box head of
  ``representation_size``.

The RPN and RoI heads sample with detkd's per-image keyed sampler
(:mod:`detkd.modeling.sampling`).
"""

from __future__ import annotations

from typing import Any

from torch import nn
from torchvision.models.detection import FasterRCNN
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
from torchvision.ops import MultiScaleRoIAlign
from torchvision.ops.feature_pyramid_network import LastLevelMaxPool

from detkd.config.schema import ModelConfig
from detkd.errors import DetkdError
from detkd.modeling.families.common import (
    Family,
    Stock,
    anchor_generator,
    anchor_sizes,
    build_stock,
    check_reads,
    classifier,
    fpn_backbone,
    fpn_body,
    is_stock,
    trainable_layers,
    without_weights,
)
from detkd.modeling.sampling import install_keyed_samplers
from detkd.modeling.weights import is_local_path

_STOCK = {
    "fasterrcnn_resnet50_fpn": Stock("resnet50", 5, lambda m: m.backbone.body, True, ("DEFAULT", "COCO_V1")),
    "fasterrcnn_resnet50_fpn_v2": Stock("resnet50", 5, lambda m: m.backbone.body),
    "fasterrcnn_mobilenet_v3_large_fpn": Stock("mobilenet_v3_large", 6, lambda m: m.backbone.body, True),
    "fasterrcnn_mobilenet_v3_large_320_fpn": Stock("mobilenet_v3_large", 6, lambda m: m.backbone.body, True),
}


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


def _anchors(cfg: ModelConfig, num_levels: int):
    return anchor_generator(cfg, anchor_sizes(cfg, num_levels, [[32 * 2**i] for i in range(num_levels)]))


def _replace_predictor(model: FasterRCNN, num_classes: int) -> None:
    in_features = model.roi_heads.box_predictor.cls_score.in_features
    model.roi_heads.box_predictor = FastRCNNPredictor(in_features, num_classes)


def _build_stock(cfg: ModelConfig, pretrained: bool) -> FasterRCNN:
    defaults = ModelConfig()
    if (cfg.representation_size, cfg.roi_output_size) != (defaults.representation_size, defaults.roi_output_size):
        raise DetkdError(f"model.representation_size/roi_output_size can only be changed with arch: custom "
                         f"(got {cfg.arch})")
    kwargs = _rcnn_kwargs(cfg)
    if cfg.anchor_sizes is not None:
        kwargs["rpn_anchor_generator"] = _anchors(cfg, 5 if "resnet" in cfg.arch else 3)
    return build_stock(cfg, _STOCK[cfg.arch], kwargs, _replace_predictor, pretrained)


def _build_custom(cfg: ModelConfig) -> FasterRCNN:
    if cfg.weights and not is_local_path(cfg.weights):
        raise DetkdError(f"model.weights '{cfg.weights}' is a torchvision name; arch: custom takes a file path only")
    net = classifier(cfg)
    body = fpn_body(cfg, net, trainable_layers(cfg, net), None)
    backbone = fpn_backbone(body, cfg.out_channels, LastLevelMaxPool() if cfg.extra_pool_level else None)
    levels = list(body.return_layers.values())  # FPN level names "0", "1", ...
    num_maps = len(levels) + (1 if cfg.extra_pool_level else 0)
    pool = MultiScaleRoIAlign(featmap_names=levels, output_size=cfg.roi_output_size, sampling_ratio=2)
    head = TwoMLPHead(cfg.out_channels * cfg.roi_output_size**2, cfg.representation_size)
    return FasterRCNN(
        backbone,
        num_classes=None,
        rpn_anchor_generator=_anchors(cfg, num_maps),
        box_roi_pool=pool,
        box_head=head,
        box_predictor=FastRCNNPredictor(cfg.representation_size, cfg.num_classes),
        **_rcnn_kwargs(cfg),
    )


def build(cfg: ModelConfig, pretrained: bool = True) -> FasterRCNN:
    check_reads(cfg, None)  # every model key applies; only the other families' sections do not
    if is_stock(cfg):
        model = _build_stock(cfg, pretrained)
    else:
        model = _build_custom(cfg) if pretrained else without_weights(_build_custom, cfg)
    return install_keyed_samplers(model)  # torchvision's sampling unless the trainer sets per-image keys


def set_score_thresh(model: nn.Module, value: float) -> None:
    model.roi_heads.score_thresh = float(value)


FAMILY = Family(name="faster_rcnn", model_class=FasterRCNN, build=build, reads=None, reads_stock=None,
                set_score_thresh=set_score_thresh)
