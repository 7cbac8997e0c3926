"""FCOS (Tian et al., ICCV 2019): torchvision's anchor-free ``FCOS``.

* Stock: ``fcos_resnet50_fpn`` (P3-P7, GroupNorm(32) towers, centerness on the regression
  tower, center sampling radius 1.5), with ``model.fcos``'s settings passed through.
* ``arch: fcos``: a detkd backbone with the FPN of ``arch: retinanet`` (stride-8, 16, 32
  stages + P6/P7) and one point per cell whose "anchor" size is the level's stride, as
  torchvision's (it divides the ltrb box targets by it); ``model.anchor_sizes`` may give one
  size per level instead.
"""

from __future__ import annotations

from torchvision.models.detection import FCOS
from torchvision.models.detection.fcos import FCOSHead

from detkd.config.schema import ModelConfig
from detkd.modeling.families.common import (
    BACKBONE_KEYS,
    COMMON_KEYS,
    TRANSFORM_KEYS,
    Family,
    Stock,
    anchor_sizes,
    build_stock,
    check_reads,
    is_stock,
    options,
    require_default,
    set_attr_score_thresh,
    without_weights,
)
from detkd.modeling.families.retinanet import custom_fpn, group_norm_fits, one_stage_kwargs, replace_cls_logits

_STOCK = {"fcos_resnet50_fpn": Stock("resnet50", 5, lambda m: m.backbone.body, True)}
READS = COMMON_KEYS | BACKBONE_KEYS | TRANSFORM_KEYS | {"anchor_sizes"}
READS_STOCK = COMMON_KEYS | TRANSFORM_KEYS


def _points(sizes: tuple[tuple[int, ...], ...]):
    from torchvision.models.detection.anchor_utils import AnchorGenerator

    return AnchorGenerator(sizes, ((1.0,),) * len(sizes))


def _build_custom(cfg: ModelConfig) -> FCOS:
    opts = options(cfg)
    backbone, strides = custom_fpn(cfg, opts.p6_input, "fcos")
    group_norm_fits(cfg, "fcos", strides[-1])
    points = _points(anchor_sizes(cfg, len(strides), [[s] for s in strides], per_level=1,
                                  why=" (FCOS has one point per location)"))
    head = FCOSHead(cfg.out_channels, 1, cfg.num_classes)
    return FCOS(backbone, cfg.num_classes, anchor_generator=points, head=head,
                center_sampling_radius=opts.center_sampling_radius, **one_stage_kwargs(cfg, opts))


def _replace_classifier(model: FCOS, num_classes: int) -> None:
    replace_cls_logits(model.head.classification_head, num_classes)


def build(cfg: ModelConfig, pretrained: bool = True) -> FCOS:
    opts = options(cfg)
    if not is_stock(cfg):
        check_reads(cfg, READS)
        return _build_custom(cfg) if pretrained else without_weights(_build_custom, cfg)
    check_reads(cfg, READS_STOCK)
    require_default(opts, ("p6_input",), "model.fcos", f"is fixed by the stock builder {cfg.arch}; "
                    "arch: fcos builds on detkd's backbones")
    kwargs = dict(one_stage_kwargs(cfg, opts), center_sampling_radius=opts.center_sampling_radius)
    return build_stock(cfg, _STOCK[cfg.arch], kwargs, _replace_classifier, pretrained)


FAMILY = Family(name="fcos", model_class=FCOS, build=build, reads=READS, reads_stock=READS_STOCK,
                set_score_thresh=set_attr_score_thresh)
