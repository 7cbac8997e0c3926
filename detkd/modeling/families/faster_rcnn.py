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

from collections import OrderedDict
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.models.detection import FasterRCNN
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
from torchvision.models.detection.image_list import ImageList
from torchvision.models.detection.roi_heads import fastrcnn_loss
from torchvision.models.detection.rpn import concat_box_prediction_layers
from torchvision.ops import MultiScaleRoIAlign
from torchvision.ops.feature_pyramid_network import LastLevelMaxPool

from detkd.config.schema import ModelConfig
from detkd.errors import DetkdError
from detkd.modeling.families.base import (
    Family,
    Stock,
    anchor_generator,
    anchor_sizes,
    TrainStep,
    build_stock,
    check_reads,
    check_training_inputs,
    check_transformed_targets,
    classifier,
    feature_dict,
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


def postprocessor(model: nn.Module) -> nn.Module:
    return model.roi_heads


# ----------------------------------------------------------------------------- the training forward


def train_step(model: FasterRCNN, images: list[Tensor], targets: list[dict[str, Tensor]]) -> TrainStep:
    """``GeneralizedRCNN.forward`` in training, step by step with torchvision's own component
    methods in torchvision's order (so the losses and random draws are torchvision's), keeping
    the RPN's anchors and sampled rows and the RoI head's sampled proposals and outputs."""
    check_training_inputs(images, targets)
    image_list, targets = model.transform(images, targets)
    check_transformed_targets(targets)
    features = feature_dict(model.backbone(image_list.tensors))
    rpn = _rpn(model, image_list, features, targets)
    rcn = _rcn(model, features, rpn["proposals"], image_list.image_sizes, targets)
    # torchvision's key order (detector losses, then RPN losses)
    losses = OrderedDict([("loss_classifier", rcn["loss_classifier"]), ("loss_box_reg", rcn["loss_box_reg"]),
                          ("loss_objectness", rpn["loss_objectness"]), ("loss_rpn_box_reg", rpn["loss_rpn_box_reg"])])
    per_location = [int(a) for a in model.rpn.anchor_generator.num_anchors_per_location()]
    return TrainStep(losses=losses, images=image_list, targets=targets, features=features, anchors=rpn["anchors"],
                     grids=rpn["grids"], anchors_per_location=per_location, rpn=rpn, rcn=rcn)


def _rpn(model: FasterRCNN, images: ImageList, features: "OrderedDict[str, Tensor]",
         targets: list[dict[str, Tensor]]) -> dict[str, Any]:
    """RegionProposalNetwork.forward + compute_loss (torchvision 0.2x), keeping the sampled
    anchor indices. Same calls in the same order, so the same RNG draws."""
    rpn = model.rpn
    feats = list(features.values())
    objectness, pred_bbox_deltas = rpn.head(feats)
    anchors = rpn.anchor_generator(images, feats)
    num_images = len(anchors)
    grids = [tuple(o.shape[-2:]) for o in objectness]
    num_anchors_per_level = [o[0].shape[0] * o[0].shape[1] * o[0].shape[2] for o in objectness]
    objectness, pred_bbox_deltas = concat_box_prediction_layers(objectness, pred_bbox_deltas)
    # Proposals do not backprop (torchvision detaches the deltas here too).
    proposals = rpn.box_coder.decode(pred_bbox_deltas.detach(), anchors)
    proposals = proposals.view(num_images, -1, 4)
    boxes, _scores = rpn.filter_proposals(proposals, objectness, images.image_sizes, num_anchors_per_level)

    labels, matched_gt_boxes = rpn.assign_targets_to_anchors(anchors, targets)
    regression_targets = rpn.box_coder.encode(matched_gt_boxes, anchors)
    # --- RegionProposalNetwork.compute_loss, restated to keep the indices
    sampled_pos_inds, sampled_neg_inds = rpn.fg_bg_sampler(labels)
    sampled_pos_inds = torch.where(torch.cat(sampled_pos_inds, dim=0))[0]
    sampled_neg_inds = torch.where(torch.cat(sampled_neg_inds, dim=0))[0]
    sampled_inds = torch.cat([sampled_pos_inds, sampled_neg_inds], dim=0)
    objectness = objectness.flatten()
    labels = torch.cat(labels, dim=0)
    regression_targets = torch.cat(regression_targets, dim=0)
    box_loss = F.smooth_l1_loss(
        pred_bbox_deltas[sampled_pos_inds],
        regression_targets[sampled_pos_inds],
        beta=1 / 9,
        reduction="sum",
    ) / (sampled_inds.numel())
    objectness_loss = F.binary_cross_entropy_with_logits(objectness[sampled_inds], labels[sampled_inds])
    return {
        "proposals": boxes,
        "objectness": objectness,
        "pred_bbox_deltas": pred_bbox_deltas,
        "regression_targets": regression_targets,
        "sampled_inds": sampled_inds,
        "sampled_pos_inds": sampled_pos_inds,
        "grids": grids,
        "anchors": anchors,
        "loss_objectness": objectness_loss,
        "loss_rpn_box_reg": box_loss,
    }


def _rcn(model: FasterRCNN, features: "OrderedDict[str, Tensor]", proposals: list[Tensor],
         image_sizes: list[tuple[int, int]], targets: list[dict[str, Tensor]]) -> dict[str, Any]:
    """RoIHeads.forward's training path, keeping the sampled proposals and labels."""
    heads = model.roi_heads
    proposals, _matched_idxs, labels, regression_targets = heads.select_training_samples(proposals, targets)
    box_features = heads.box_roi_pool(features, proposals, image_sizes)
    box_features = heads.box_head(box_features)
    class_logits, box_regression = heads.box_predictor(box_features)
    loss_classifier, loss_box_reg = fastrcnn_loss(class_logits, box_regression, labels, regression_targets)
    return {
        "proposals": proposals,
        "class_logits": class_logits,
        "box_regression": box_regression,
        "labels": torch.cat(labels, dim=0),
        "regression_targets": torch.cat(regression_targets, dim=0),
        "loss_classifier": loss_classifier,
        "loss_box_reg": loss_box_reg,
    }


def detect(model: FasterRCNN, image_list, features) -> list[dict]:
    """Faster R-CNN's eval forward after the backbone: RPN proposals, then the RoI heads."""
    proposals, _ = model.rpn(image_list, features)
    detections, _ = model.roi_heads(features, proposals, image_list.image_sizes)
    return detections


FAMILY = Family(name="faster_rcnn", model_class=FasterRCNN, build=build, reads=None, reads_stock=None,
                postprocessor=postprocessor, train_step=train_step, detect=detect)
