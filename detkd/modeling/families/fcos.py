"""FCOS (Tian et al., ICCV 2019): torchvision's anchor-free ``FCOS``.

* Stock: ``fcos_resnet50_fpn`` (P3-P7, GroupNorm(32) towers, centerness on the regression
  tower, center sampling radius 1.5), with ``model.fcos``'s settings passed through.
* ``arch: fcos``: a detkd backbone with the FPN of ``arch: retinanet`` (stride-8, 16, 32
  stages + P6/P7) and one point per cell whose "anchor" size is the level's stride, as
  torchvision's (it divides the ltrb box targets by it); ``model.anchor_sizes`` may give one
  size per level instead.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torchvision.models.detection import FCOS
from torchvision.models.detection.fcos import FCOSHead, FCOSRegressionHead

from detkd.config.schema import ModelConfig
from detkd.modeling.families.base import (
    BACKBONE_KEYS,
    COMMON_KEYS,
    TRANSFORM_KEYS,
    Family,
    Stock,
    anchor_sizes,
    build_stock,
    check_reads,
    dense_train_step,
    is_stock,
    options,
    require_default,
    postprocess_on_model,
    unmatched,
    without_weights,
    DenseRows,
    box_loss_rows,
    split_detect,
)
from detkd.modeling.families.retinanet import custom_fpn, group_norm_fits, head_loss, one_stage_kwargs, \
    replace_cls_logits

_STOCK = {"fcos_resnet50_fpn": Stock("resnet50", 5, lambda m: m.backbone.body, True)}
READS = COMMON_KEYS | BACKBONE_KEYS | TRANSFORM_KEYS | {"anchor_sizes"}
READS_STOCK = COMMON_KEYS | TRANSFORM_KEYS


def _points(sizes: tuple[tuple[int, ...], ...]):
    from torchvision.models.detection.anchor_utils import AnchorGenerator

    return AnchorGenerator(sizes, ((1.0,),) * len(sizes))


MAX_LOG_LTRB = 10.0  # exp(10) strides: far beyond any box; keeps exp finite for a wild conv output


class ExpRegressionHead(FCOSRegressionHead):
    """FCOS's regression head (torchvision ``FCOSRegressionHead``: the same tower, ``bbox_reg`` and
    centerness convs) with ``ltrb_l = exp(min(s_l * t, 10))`` in place of ``relu(t)``, ``s_l`` a
    learned scale per level initialised to 1 (Tian et al., ICCV 2019, the authors' code's ``Scale``
    + ``exp``): positive for every input and never without a gradient, where a ReLU'd output pushed
    below 0 stays 0 (``model.fcos.box_output: exp``; torchvision's decoder multiplies by the stride)."""

    def __init__(self, in_channels: int, num_anchors: int, num_levels: int, num_convs: int = 4) -> None:
        super().__init__(in_channels, num_anchors, num_convs)
        self.scales = nn.Parameter(torch.ones(num_levels))

    def forward(self, x: list[Tensor]) -> tuple[Tensor, Tensor]:
        regressions, centerness = [], []
        for level, features in enumerate(x):
            feature = self.conv(features)
            ltrb = torch.exp((self.scales[level] * self.bbox_reg(feature)).clamp(max=MAX_LOG_LTRB))
            ctr = self.bbox_ctrness(feature)
            n, _, h, w = ltrb.shape
            regressions.append(ltrb.view(n, -1, 4, h, w).permute(0, 3, 4, 1, 2).reshape(n, -1, 4))
            centerness.append(ctr.view(n, -1, 1, h, w).permute(0, 3, 4, 1, 2).reshape(n, -1, 1))
        return torch.cat(regressions, dim=1), torch.cat(centerness, dim=1)


def _build_custom(cfg: ModelConfig) -> FCOS:
    opts = options(cfg)
    backbone, strides = custom_fpn(cfg, opts.p6_input, "fcos")
    group_norm_fits(cfg, "fcos", strides[-1])
    points = _points(anchor_sizes(cfg, len(strides), [[s] for s in strides], per_level=1,
                                  why=" (FCOS has one point per location)"))
    head = FCOSHead(cfg.out_channels, 1, cfg.num_classes)
    if opts.box_output == "exp":
        head.regression_head = ExpRegressionHead(cfg.out_channels, 1, len(strides))
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
    require_default(opts, ("p6_input", "box_output"), "model.fcos", f"is fixed by the stock builder {cfg.arch}; "
                    "arch: fcos builds on detkd's backbones")
    kwargs = dict(one_stage_kwargs(cfg, opts), center_sampling_radius=opts.center_sampling_radius)
    return build_stock(cfg, _STOCK[cfg.arch], kwargs, _replace_classifier, pretrained)


def match_points(model: FCOS, anchors: list[Tensor], targets: list[dict[str, Tensor]],
                 grids: list[tuple[int, int]]) -> list[Tensor]:
    """FCOS's assignment (torchvision ``FCOS.compute_loss``), per image: a point of a level of
    stride s (its anchor box is s wide) is foreground for box g iff

    * ``|point - centre(g)|_inf < r s`` (center sampling, ``r = center_sampling_radius``),
    * the point is strictly inside g,
    * ``max(l, t, r, b)`` lies in ``(4 s, 8 s)`` (lower bound 0 on the first level, upper
      infinite on the last);

    among several such boxes the smallest one (area) wins; -1 elsewhere."""
    out = []
    first = grids[0][0] * grids[0][1]
    last = grids[-1][0] * grids[-1][1]
    for points, target in zip(anchors, targets):
        boxes = target["boxes"]
        if boxes.numel() == 0:
            out.append(unmatched(points))
            continue
        centres = (points[:, :2] + points[:, 2:]) / 2
        size = points[:, 2] - points[:, 0]
        near = (centres[:, None, :] - ((boxes[:, :2] + boxes[:, 2:]) / 2)[None]).abs().max(dim=2).values \
            < model.center_sampling_radius * size[:, None]
        ltrb = torch.stack([centres[:, None, 0] - boxes[None, :, 0], centres[:, None, 1] - boxes[None, :, 1],
                            boxes[None, :, 2] - centres[:, None, 0], boxes[None, :, 3] - centres[:, None, 1]], dim=2)
        lower, upper = size * 4, size * 8
        lower[:first] = 0
        upper[-last:] = float("inf")
        reach = ltrb.max(dim=2).values
        fg = near & (ltrb.min(dim=2).values > 0) & (reach > lower[:, None]) & (reach < upper[:, None])
        area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
        best, idx = (fg.to(torch.float32) * (1e8 - area[None, :])).max(dim=1)  # smallest box: largest 1e8 - area
        idx[best < 1e-5] = -1
        out.append(idx)
    return out


def train_step(model: FCOS, images, targets):
    """``FCOS.forward`` in training (center sampling and scale ranges: :func:`match_points`)."""
    return dense_train_step(model, images, targets, match_points, head_loss)


def row_box_loss(model: FCOS, anchors: Tensor, regression: Tensor, boxes: Tensor) -> Tensor:
    """GIoU loss of the decoded ltrb per row (``FCOSHead.compute_loss``)."""
    return box_loss_rows("giou", model.head.box_coder, anchors, regression, boxes)


FAMILY = Family(name="fcos", model_class=FCOS, build=build, reads=READS, reads_stock=READS_STOCK,
                postprocessor=postprocess_on_model, train_step=train_step, detect=split_detect,
                dense=DenseRows(match=match_points, sigmoid=True, row_box_loss=row_box_loss))
