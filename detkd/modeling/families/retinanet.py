"""RetinaNet (Lin et al., ICCV 2017): torchvision's ``RetinaNet``.

* Stock: ``retinanet_resnet50_fpn`` (towers of conv + ReLU, L1 box loss, P6 from P5) and
  ``retinanet_resnet50_fpn_v2`` (GroupNorm(32) towers, GIoU loss, P6 from C5), with
  ``model.retinanet``'s score / NMS / matcher settings passed through.
* ``arch: retinanet``: a detkd backbone (ResNet, MobileNet) with an FPN on the stride-8, 16
  and 32 stages (``model.returned_layers``, default ``[2, 3, 4]``) plus torchvision's
  ``LastLevelP6P7`` (levels "0", "1", "2", "p6", "p7" as in the stock model), anchors of
  ``4 s x (1, 2^(1/3), 2^(2/3))`` per level of stride s (torchvision's 32..512 on P3-P7) and
  ``model.aspect_ratios``, and the head options of ``model.retinanet``.
"""

from __future__ import annotations

import math
from functools import partial

import torch
from torch import Tensor, nn
from torchvision.models.detection import RetinaNet
from torchvision.models.detection.retinanet import RetinaNetHead
from torchvision.ops.feature_pyramid_network import LastLevelP6P7

from detkd.config.schema import ModelConfig
from detkd.errors import DetkdError
from detkd.modeling.families.base import (
    BACKBONE_KEYS,
    COMMON_KEYS,
    TRANSFORM_KEYS,
    Family,
    FPNBody,
    Stock,
    anchor_generator,
    anchor_sizes,
    build_stock,
    check_reads,
    classifier,
    dense_train_step,
    fpn_backbone,
    fpn_body,
    is_stock,
    match_by_iou,
    options,
    require_default,
    postprocess_on_model,
    trainable_layers,
    without_weights,
    DenseRows,
    box_loss_rows,
    split_detect,
)
from detkd.modeling.weights import is_local_path

_STOCK = {
    "retinanet_resnet50_fpn": Stock("resnet50", 5, lambda m: m.backbone.body, True, ("DEFAULT", "COCO_V1")),
    "retinanet_resnet50_fpn_v2": Stock("resnet50", 5, lambda m: m.backbone.body),
}
_ANCHOR_KEYS = frozenset({"anchor_sizes", "aspect_ratios"})
READS = COMMON_KEYS | BACKBONE_KEYS | TRANSFORM_KEYS | _ANCHOR_KEYS
READS_STOCK = COMMON_KEYS | TRANSFORM_KEYS | _ANCHOR_KEYS
_CUSTOM_ONLY = ("head_norm", "box_loss", "p6_input")


def one_stage_kwargs(cfg: ModelConfig, opts) -> dict:
    """The transform and post-processing keywords RetinaNet and FCOS share."""
    return dict(min_size=cfg.min_size, max_size=cfg.max_size, image_mean=list(cfg.image_mean),
                image_std=list(cfg.image_std), score_thresh=opts.score_thresh, nms_thresh=opts.nms_thresh,
                detections_per_img=opts.detections_per_img, topk_candidates=opts.topk_candidates)


def p6p7(cfg: ModelConfig, body: FPNBody, p6_input: str | None, family: str) -> LastLevelP6P7:
    """torchvision's LastLevelP6P7: P6 = conv3x3/2 of P5 (or of C5), P7 = conv3x3/2 of ReLU(P6).
    It takes C5 exactly when its input width differs from ``out_channels``."""
    if p6_input == "c5":
        if body.in_channels[-1] == cfg.out_channels:
            raise DetkdError(f"model.{family}.p6_input: c5 needs the last backbone map ({body.in_channels[-1]} "
                             f"channels) to differ in width from model.out_channels (torchvision then takes P5)")
        return LastLevelP6P7(body.in_channels[-1], cfg.out_channels)
    return LastLevelP6P7(cfg.out_channels, cfg.out_channels)


def custom_fpn(cfg: ModelConfig, p6_input: str | None, family: str):
    """(BackboneWithFPN on P3-P5 + P6/P7, the stride of every level)."""
    if cfg.weights and not is_local_path(cfg.weights):
        raise DetkdError(f"model.weights '{cfg.weights}' is a torchvision name; arch: {family} takes a file path "
                         "only (or use a stock arch)")
    net = classifier(cfg)
    body = fpn_body(cfg, net, trainable_layers(cfg, net), [2, 3, 4])
    backbone = fpn_backbone(body, cfg.out_channels, p6p7(cfg, body, p6_input, family))
    return backbone, body.strides + [body.strides[-1] * 2, body.strides[-1] * 4]


def group_norm_fits(cfg: ModelConfig, family: str, last_stride: int) -> None:
    """GroupNorm(32) needs ``out_channels`` in multiples of 32, and more than one value per group:
    with exactly 32 channels no level may be a 1x1 map (its stride >= the input side)."""
    if cfg.out_channels % 32:
        raise DetkdError(f"model.out_channels must be a multiple of 32 for the GroupNorm(32) head of {family}, "
                         f"got {cfg.out_channels}")
    if cfg.out_channels == 32 and min(cfg.min_size, cfg.max_size) <= last_stride:
        raise DetkdError(f"model.out_channels 32 with the GroupNorm(32) head of {family} needs every map larger "
                         f"than 1x1: model.min_size must exceed the last level's stride {last_stride}, or "
                         "out_channels be 64 or more")


def _build_custom(cfg: ModelConfig) -> RetinaNet:
    opts = options(cfg)
    backbone, strides = custom_fpn(cfg, opts.p6_input, "retinanet")
    default = [[int(4 * s * 2 ** (k / 3)) for k in range(3)] for s in strides]  # torchvision: int(x * 2 ** (k / 3))
    anchors = anchor_generator(cfg, anchor_sizes(cfg, len(strides), default))
    norm = None
    if opts.head_norm == "group_norm":
        group_norm_fits(cfg, "retinanet", strides[-1])
        norm = partial(nn.GroupNorm, 32)
    head = RetinaNetHead(cfg.out_channels, anchors.num_anchors_per_location()[0], cfg.num_classes, norm_layer=norm)
    head.regression_head._loss_type = opts.box_loss or "l1"
    return RetinaNet(backbone, cfg.num_classes, anchor_generator=anchors, head=head,
                     fg_iou_thresh=opts.fg_iou_thresh, bg_iou_thresh=opts.bg_iou_thresh,
                     **one_stage_kwargs(cfg, opts))


def replace_cls_logits(head: nn.Module, num_classes: int) -> None:
    """A new last classification conv of ``num_classes`` per anchor (RetinaNet/FCOS heads),
    initialised as torchvision does (std 0.01, prior 0.01)."""
    old = head.cls_logits
    anchors = old.out_channels // head.num_classes
    new = nn.Conv2d(old.in_channels, anchors * num_classes, kernel_size=3, stride=1, padding=1)
    torch.nn.init.normal_(new.weight, std=0.01)
    torch.nn.init.constant_(new.bias, -math.log((1 - 0.01) / 0.01))
    head.cls_logits = new
    head.num_classes = num_classes


def _replace_classifier(model: RetinaNet, num_classes: int) -> None:
    replace_cls_logits(model.head.classification_head, num_classes)


def build(cfg: ModelConfig, pretrained: bool = True) -> RetinaNet:
    opts = options(cfg)
    if not is_stock(cfg):
        check_reads(cfg, READS)
        return _build_custom(cfg) if pretrained else without_weights(_build_custom, cfg)
    check_reads(cfg, READS_STOCK)
    require_default(opts, _CUSTOM_ONLY, "model.retinanet", f"is fixed by the stock builder {cfg.arch}; "
                    "arch: retinanet builds on detkd's backbones")
    kwargs = dict(one_stage_kwargs(cfg, opts), fg_iou_thresh=opts.fg_iou_thresh, bg_iou_thresh=opts.bg_iou_thresh)
    if cfg.anchor_sizes is not None or cfg.aspect_ratios != ModelConfig().aspect_ratios:
        kwargs["anchor_generator"] = anchor_generator(cfg, anchor_sizes(
            cfg, 5, [[int(x * 2 ** (k / 3)) for k in range(3)] for x in (32, 64, 128, 256, 512)], per_level=3,
            why=" (the stock head has 9 anchors per location)"))
        if len(cfg.aspect_ratios) != 3:
            raise DetkdError(f"model.aspect_ratios: the stock {cfg.arch} head has 9 anchors per location "
                             f"(3 sizes x 3 ratios), got {cfg.aspect_ratios}")
    return build_stock(cfg, _STOCK[cfg.arch], kwargs, _replace_classifier, pretrained)


def head_loss(model: nn.Module, targets, head_outputs, anchors, matched_idxs) -> dict:
    """RetinaNet's and FCOS's losses given the matched indices (what their ``compute_loss`` does
    after matching): focal loss and the box loss of the regression head."""
    return model.head.compute_loss(targets, head_outputs, anchors, matched_idxs)


def train_step(model: RetinaNet, images, targets):
    """``RetinaNet.forward`` in training: matched indices by IoU (``proposal_matcher``)."""
    return dense_train_step(model, images, targets, match_by_iou, head_loss)


def row_box_loss(model: RetinaNet, anchors: Tensor, regression: Tensor, boxes: Tensor) -> Tensor:
    """The regression head's own loss kind (v1 ``l1``, v2 ``giou``) per row."""
    head = model.head.regression_head
    return box_loss_rows(head._loss_type, head.box_coder, anchors, regression, boxes)


FAMILY = Family(name="retinanet", model_class=RetinaNet, build=build, reads=READS, reads_stock=READS_STOCK,
                postprocessor=postprocess_on_model, train_step=train_step, detect=split_detect,
                dense=DenseRows(match=match_by_iou, sigmoid=True, row_box_loss=row_box_loss))
