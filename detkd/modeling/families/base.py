"""What the detector families share: the :class:`Family` record, detkd's backbones (a torchvision
classifier cut into an FPN body or into SSD's two maps), anchor sizes, torchvision's stock builders
with detkd's weight handling, and the check that a config sets no key its family ignores.

A family file (``faster_rcnn.py``, ``retinanet.py`` ...) defines ``FAMILY = Family(...)``; the
``FAMILIES`` dict of this package lists them, and everything else derives from that dict.

Each family also restates its model's training forward as ``train_step`` (a :class:`TrainStep`):
the same torchvision calls in the same order, so the losses and random draws are torchvision's bit
for bit (tested), keeping what distillation reads (maps, anchors, matched indices, head outputs).
"""

from __future__ import annotations

import dataclasses
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Callable, Optional, Sequence

import torch
import torch.nn.functional as F
import torchvision
from torch import Tensor, nn
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.image_list import ImageList
from torchvision.ops import box_iou, complete_box_iou_loss, distance_box_iou_loss, generalized_box_iou_loss
from torchvision.models.detection.backbone_utils import BackboneWithFPN
from torchvision.ops import FrozenBatchNorm2d

from detkd.config.schema import ARCH_FAMILIES, FAMILY_OPTIONS, ModelConfig
from detkd.errors import DetkdError
from detkd.modeling.weights import enum_state_dict, is_local_path, load_matching, read_state_dict, resolve_enum

_RESNET_LAYERS = ["layer4", "layer3", "layer2", "layer1", "conv1"]
# ModelConfig keys every family reads; the others are listed by each family (Family.reads).
COMMON_KEYS = frozenset({"arch", "num_classes", "weights", "weights_backbone", "trainable_backbone_layers"})
# Keys only detkd's own backbones read (a stock builder fixes them).
BACKBONE_KEYS = frozenset({"backbone", "returned_layers", "out_channels", "norm"})
TRANSFORM_KEYS = frozenset({"min_size", "max_size", "image_mean", "image_std"})


@dataclass
class TrainStep:
    """One training forward of a detector, as torchvision computes it, and what distillation reads.

    ``anchors``: per image, every anchor of every level (Faster R-CNN: the RPN's; FCOS: one box of
    the level's stride per point; SSD: the default boxes), levels concatenated, each level in the
    head's ``(H, W, A)`` row order, in the transformed frame. ``matched_idxs`` (one-stage models):
    per image and anchor, the ground-truth index its loss assigned, ``-1`` background, ``-2``
    ignored (between RetinaNet's IoU thresholds). ``head_outputs``: the one-stage head's rows
    (``cls_logits`` ``[N, R, C]``, ``bbox_regression`` ``[N, R, 4]``, FCOS ``bbox_ctrness``).
    ``rpn`` / ``rcn``: Faster R-CNN's RPN and RoI-head tensors (sampled rows, logits, targets)."""

    losses: "OrderedDict[str, Tensor]"  # the model's own loss terms, torchvision's keys and order
    images: ImageList
    targets: list[dict[str, Tensor]]  # transformed ground truth
    features: "OrderedDict[str, Tensor]"
    anchors: list[Tensor]
    grids: list[tuple[int, int]]
    anchors_per_location: list[int]  # per level
    matched_idxs: Optional[list[Tensor]] = None
    head_outputs: dict[str, Tensor] = field(default_factory=dict)
    rpn: dict[str, Any] = field(default_factory=dict)
    rcn: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class DenseRows:
    """How a one-stage family assigns its rows (anchors, points, default boxes) to boxes and scores
    them, for a loss against other targets than the ground truth (prediction-level distillation).

    ``match(model, anchors, targets, grids)``: the family's own assignment (-1 background, -2
    ignored); ``sigmoid``: per-class sigmoids (RetinaNet, FCOS) or a softmax whose column 0 is the
    background (SSD); ``row_box_loss(model, anchors, regression, boxes)``: the family's box loss of
    each row ``[R]`` (what its hard loss sums)."""

    match: Callable[..., list[Tensor]]
    sigmoid: bool
    row_box_loss: Callable[[nn.Module, Tensor, Tensor, Tensor], Tensor]


@dataclass(frozen=True)
class Family:
    """One detector family: how to build it and what of the config it reads.

    ``build(cfg, pretrained)``: the torchvision model; with ``pretrained=False`` the same
    architecture without loading or downloading any weights (``load_model`` then loads a file).
    ``reads`` / ``reads_stock``: the ModelConfig keys the custom / stock builders use
    (None: every key; a key outside them left at its default is fine, changed it is refused).
    ``postprocessor(model)``: the module whose ``score_thresh``, ``nms_thresh`` and
    ``detections_per_img`` rule inference (the model itself, or Faster R-CNN's RoI heads).
    ``train_step(model, images, targets)``: the training forward as a :class:`TrainStep`.
    ``detect(model, image_list, features)``: eval-mode detections from the model's own maps
    (what its forward does after the backbone; boxes in the ``image_list`` frame), so that a
    teacher whose backbone already ran needs nothing more. ``dense``: a one-stage family's
    :class:`DenseRows` (None for Faster R-CNN)."""

    name: str
    model_class: type
    build: Callable[[ModelConfig, bool], nn.Module]
    reads: Optional[frozenset[str]]
    reads_stock: Optional[frozenset[str]]
    postprocessor: Callable[[nn.Module], nn.Module]
    train_step: Callable[[nn.Module, list[Tensor], list[dict[str, Tensor]]], TrainStep]
    detect: Callable[[nn.Module, ImageList, "OrderedDict[str, Tensor]"], list[dict[str, Tensor]]]
    dense: Optional[DenseRows] = None

    def stock_archs(self) -> tuple[str, ...]:
        return tuple(a for a, f in ARCH_FAMILIES.items() if f == self.name and a not in (self.name, "custom"))


def is_stock(cfg: ModelConfig) -> bool:
    return cfg.arch not in (ARCH_FAMILIES[cfg.arch], "custom")


def options(cfg: ModelConfig) -> Any:
    """The ``model.<family>`` section of the config's family (its defaults if unset)."""
    family = ARCH_FAMILIES[cfg.arch]
    section = getattr(cfg, family, None) if FAMILY_OPTIONS[family] is not None else None
    return section if section is not None else FAMILY_OPTIONS[family]()


def check_reads(cfg: ModelConfig, reads: Optional[frozenset[str]], prefix: str = "model",
                set_in: Optional[Callable[[str], str]] = None) -> None:
    """Refuse a ModelConfig key the builder does not read, set to other than its default, and
    the options section of another family (the config loader checks both at load time too,
    where ``set_in(dotted key)`` names the file that set the key)."""
    family = ARCH_FAMILIES[cfg.arch]
    for name, section in FAMILY_OPTIONS.items():
        if section is not None and name != family and getattr(cfg, name) is not None:
            raise DetkdError(f"{prefix}.{name} is set but {prefix}.arch '{cfg.arch}' is a {family}")
    if reads is None:
        return
    defaults = ModelConfig(arch=cfg.arch)
    for f in dataclasses.fields(ModelConfig):
        if f.name in reads or f.name == family or f.name in FAMILY_OPTIONS:
            continue  # family sections: the other families' are refused above, the own one reads itself
        if getattr(cfg, f.name) != getattr(defaults, f.name):
            key = f"{prefix}.{f.name}"
            hint = f"; arch: {family} builds on detkd's backbones" if is_stock(cfg) else ""
            what = ("stock builder; " if is_stock(cfg) else "") + f"set in {set_in(key)}" if set_in else \
                f"a {family}{', stock builder' if is_stock(cfg) else ''}"
            raise DetkdError(f"{key} does not apply to arch '{cfg.arch}' ({what}){hint}")


def require_default(cfg: Any, names: tuple[str, ...], key: str, why: str) -> None:
    """Refuse options of ``cfg`` (a dataclass) changed from their defaults, e.g. custom-only
    options given to a stock builder."""
    defaults = type(cfg)()
    for name in names:
        if getattr(cfg, name) != getattr(defaults, name):
            raise DetkdError(f"{key}.{name} {why}")


# ----------------------------------------------------------------------------- detkd's backbones


def classifier(cfg: ModelConfig) -> nn.Module:
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


def trainable_layers(cfg: ModelConfig, net: nn.Module) -> int:
    """How many backbone stages train: ``trainable_backbone_layers`` for pretrained ones, all
    otherwise (torchvision does the same), capped at the stage count."""
    trainable = cfg.trainable_backbone_layers if cfg.weights_backbone else 99
    if cfg.backbone.startswith("resnet"):
        return min(trainable, 5)
    return min(trainable, len(mobilenet_stages(net.features)))


def mobilenet_stages(features: nn.Module) -> list[int]:
    """Indices of the blocks that start a stage: strided blocks, and the first and last blocks."""
    return [0] + [i for i, b in enumerate(features) if getattr(b, "_is_cn", False)] + [len(features) - 1]


def freeze(modules: list[nn.Module]) -> None:
    for module in modules:
        for p in module.parameters():
            p.requires_grad_(False)


def freeze_resnet(cfg: ModelConfig, net: nn.Module, trainable: int) -> None:
    if not 0 <= trainable <= 5:
        raise DetkdError(f"model.trainable_backbone_layers must be in [0, 5] for {cfg.backbone}, got {trainable}")
    train_names = _RESNET_LAYERS[:trainable] + (["bn1"] if trainable == 5 else [])
    for name, p in net.named_parameters():
        if not name.startswith(tuple(train_names)):
            p.requires_grad_(False)


def freeze_mobilenet(cfg: ModelConfig, features: nn.Module, trainable: int) -> list[int]:
    stages = mobilenet_stages(features)
    if not 0 <= trainable <= len(stages):
        raise DetkdError(
            f"model.trainable_backbone_layers must be in [0, {len(stages)}] for {cfg.backbone}, got {trainable}"
        )
    freeze_before = len(features) if trainable == 0 else stages[len(stages) - trainable]
    freeze(list(features[:freeze_before]))
    return stages


def out_channels_of(block: nn.Module) -> int:
    if hasattr(block, "out_channels"):
        return block.out_channels
    convs = [m for m in block.modules() if isinstance(m, nn.Conv2d)]
    return convs[-1].out_channels


@dataclass
class FPNBody:
    """A classifier trunk and the maps it gives an FPN: their names, widths and strides."""

    module: nn.Module
    return_layers: dict[str, str]
    in_channels: list[int]
    strides: list[int]


def fpn_body(cfg: ModelConfig, net: nn.Module, trainable: int, default_returned: Optional[list[int]]) -> FPNBody:
    """The stages of ``net`` that feed the FPN (``model.returned_layers``, else ``default_returned``,
    else all four ResNet stages / the last two MobileNet stages), the rest frozen by ``trainable``."""
    if cfg.backbone.startswith("resnet"):
        freeze_resnet(cfg, net, trainable)
        returned = cfg.returned_layers or default_returned or [1, 2, 3, 4]
        if min(returned) < 1 or max(returned) > 4:
            raise DetkdError(f"model.returned_layers must be within [1, 4] for {cfg.backbone}, got {returned}")
        stage2 = net.inplanes // 8  # channels of layer1's output (64 or 256)
        return FPNBody(net, {f"layer{k}": str(v) for v, k in enumerate(returned)},
                       [stage2 * 2 ** (i - 1) for i in returned], [2 ** (k + 1) for k in returned])
    features = net.features
    stages = freeze_mobilenet(cfg, features, trainable)
    returned = cfg.returned_layers or default_returned or [len(stages) - 2, len(stages) - 1]
    if min(returned) < 0 or max(returned) >= len(stages):
        raise DetkdError(f"model.returned_layers must be within [0, {len(stages) - 1}] for {cfg.backbone}, "
                         f"got {returned}")
    # Stage k starts with a stride-2 block (k >= 1); the last entry is the last block (no stride).
    return FPNBody(features, {str(stages[k]): str(v) for v, k in enumerate(returned)},
                   [out_channels_of(features[stages[i]]) for i in returned],
                   [2 ** (min(k, len(stages) - 2) + 1) for k in returned])


def fpn_backbone(body: FPNBody, out_channels: int, extra: Optional[nn.Module]) -> BackboneWithFPN:
    """``BackboneWithFPN`` with exactly the ``extra`` block given (torchvision puts a
    LastLevelMaxPool where None is given; None here means no extra level)."""
    backbone = BackboneWithFPN(body.module, body.return_layers, body.in_channels, out_channels, extra_blocks=extra)
    if extra is None:
        backbone.fpn.extra_blocks = None
    return backbone


def anchor_sizes(cfg: ModelConfig, num_levels: int, default: list[list[int]], per_level: Optional[int] = None,
                 why: str = "") -> tuple[tuple[int, ...], ...]:
    """``model.anchor_sizes`` (else ``default``), one tuple per feature level, every level with
    the same number of sizes (torchvision's heads predict the same number at every level)."""
    sizes = cfg.anchor_sizes or default
    if len(sizes) != num_levels:
        raise DetkdError(
            f"model.anchor_sizes has {len(sizes)} levels but the backbone gives {num_levels} feature maps"
        )
    if len({len(lvl) for lvl in sizes}) != 1:
        raise DetkdError(f"model.anchor_sizes must give every level the same number of sizes, got {sizes}")
    if per_level is not None and len(sizes[0]) != per_level:
        raise DetkdError(f"model.anchor_sizes must give {per_level} size(s) per level{why}, got {sizes}")
    return tuple(tuple(int(s) for s in lvl) for lvl in sizes)


def anchor_generator(cfg: ModelConfig, sizes: tuple[tuple[int, ...], ...]) -> AnchorGenerator:
    ratios = tuple(float(r) for r in cfg.aspect_ratios)
    return AnchorGenerator(sizes, (ratios,) * len(sizes))


# ----------------------------------------------------------------------------- torchvision's stock builders


@dataclass(frozen=True)
class Stock:
    """What detkd needs to know of one torchvision builder: the weight enum of its backbone,
    its most trainable stages, the module a backbone weight file loads into (None: no file),
    and whether it swaps BatchNorm for FrozenBatchNorm2d when given weights (eps 0 for the
    COCO weights named in ``eps0_weights``)."""

    backbone: str
    max_trainable: int
    body: Optional[Callable[[nn.Module], nn.Module]] = None
    frozen_bn_when_pretrained: bool = False
    eps0_weights: tuple[str, ...] = ()


def build_stock(cfg: ModelConfig, stock: Stock, kwargs: dict[str, Any],
                replace_classifier: Callable[[nn.Module, int], None], pretrained: bool = True) -> nn.Module:
    """``torchvision.models.detection.<arch>(...)`` with ``kwargs``: COCO weights (an enum name)
    with ``num_classes != 91`` load the 91-class model and ``replace_classifier`` gives it
    ``num_classes`` outputs; a backbone weight *file* loads into ``stock.body(model)``.
    ``pretrained=False``: no weights loaded, the architecture they would give."""
    if not pretrained:
        model = build_stock(dataclasses.replace(cfg, weights=None, weights_backbone=None), stock, kwargs,
                            replace_classifier)
        if stock.frozen_bn_when_pretrained and (cfg.weights or cfg.weights_backbone):
            eps = 0.0 if cfg.weights in stock.eps0_weights else None
            freeze_batchnorm(stock.body(model), eps)
        return model
    builder = getattr(torchvision.models.detection, cfg.arch)
    weights = cfg.weights if cfg.weights and not is_local_path(cfg.weights) else None
    weights_backbone = cfg.weights_backbone
    backbone_file = None
    if weights_backbone and is_local_path(weights_backbone):
        if stock.body is None:
            raise DetkdError(f"model.weights_backbone: {cfg.arch} takes a torchvision weight name; a file path "
                             f"needs arch: {ARCH_FAMILIES[cfg.arch]} (detkd's backbones)")
        backbone_file, weights_backbone = weights_backbone, None
    trainable = cfg.trainable_backbone_layers if (weights or weights_backbone) else None
    if trainable is not None and not 0 <= trainable <= stock.max_trainable:
        raise DetkdError(f"model.trainable_backbone_layers must be in [0, {stock.max_trainable}] for {cfg.arch}, "
                         f"got {trainable}")
    num_classes = cfg.num_classes
    if weights is not None:
        weights = resolve_enum(cfg.arch, weights)
        num_classes = len(weights.meta["categories"])
    elif weights_backbone is not None:
        weights_backbone = resolve_enum(stock.backbone, weights_backbone)
    model = builder(weights=weights, weights_backbone=weights_backbone, num_classes=num_classes,
                    trainable_backbone_layers=trainable, **kwargs)
    if backbone_file is not None:
        body = stock.body(model)
        state = {k: v for k, v in read_state_dict(backbone_file).items() if not k.startswith(("fc.", "classifier."))}
        missing = [k for k in body.state_dict() if k not in state]
        if missing:
            raise DetkdError(f"{backbone_file} does not match the {cfg.arch} backbone: "
                             f"missing {', '.join(missing[:3])}")
        body.load_state_dict({k: v for k, v in state.items() if k in body.state_dict()}, strict=False)
    if num_classes != cfg.num_classes:
        replace_classifier(model, cfg.num_classes)
    return model


def freeze_batchnorm(module: nn.Module, eps: float | None) -> None:
    """Replace every BatchNorm2d under ``module`` by a FrozenBatchNorm2d (same buffers)."""
    for name, child in module.named_children():
        if isinstance(child, nn.BatchNorm2d):
            frozen = FrozenBatchNorm2d(child.num_features) if eps is None else FrozenBatchNorm2d(child.num_features,
                                                                                                 eps=eps)
            setattr(module, name, frozen)
        else:
            freeze_batchnorm(child, eps)


def without_weights(build: Callable[[ModelConfig], nn.Module], cfg: ModelConfig) -> nn.Module:
    """A custom-backbone family's architecture without loading weights (weights only pick
    which stages train, not the modules)."""
    return build(dataclasses.replace(cfg, weights=None, weights_backbone=None))


def postprocess_on_model(model: nn.Module) -> nn.Module:
    """RetinaNet, FCOS and SSD keep their inference thresholds on the model itself."""
    return model


def foreground(output: dict[str, Tensor]) -> dict[str, Tensor]:
    """One image's detections without label 0. torchvision's one-stage heads score the
    background channel 0 like every class (per-class sigmoids: RetinaNet, FCOS); detkd's label
    0 is the background and never a ground-truth label, so such detections mean nothing."""
    keep = output["labels"] > 0
    if bool(keep.all()):
        return output
    return {k: (v[keep] if k in ("boxes", "labels", "scores") else v) for k, v in output.items()}


# ----------------------------------------------------------------------------- training forwards


def feature_dict(out: Any) -> "OrderedDict[str, Tensor]":
    """A backbone's output as torchvision's detectors read it (a single tensor is level "0")."""
    return OrderedDict([("0", out)]) if isinstance(out, Tensor) else out


def check_training_inputs(images: Sequence[Tensor], targets: Optional[list[dict[str, Tensor]]]) -> None:
    """The input checks torchvision's detectors make in training."""
    if targets is None:
        torch._assert(False, "targets should not be none when in training mode")
        return
    for target in targets:
        boxes = target["boxes"]
        if not isinstance(boxes, Tensor):
            torch._assert(False, f"Expected target boxes to be of type Tensor, got {type(boxes)}.")
        torch._assert(
            len(boxes.shape) == 2 and boxes.shape[-1] == 4,
            f"Expected target boxes to be a tensor of shape [N, 4], got {boxes.shape}.",
        )
    for img in images:
        torch._assert(len(img.shape[-2:]) == 2, "expecting the last two dimensions of the Tensor to be H and W")


def check_transformed_targets(targets: list[dict[str, Tensor]]) -> None:
    """torchvision's degenerate-box check after the transform (and the RoI heads' dtype checks)."""
    for target_idx, target in enumerate(targets):
        boxes = target["boxes"]
        degenerate = boxes[:, 2:] <= boxes[:, :2]
        if degenerate.any():
            bb_idx = torch.where(degenerate.any(dim=1))[0][0]
            torch._assert(
                False,
                "All bounding boxes should have positive height and width."
                f" Found invalid box {boxes[bb_idx].tolist()} for target at index {target_idx}.",
            )
        if boxes.dtype not in (torch.float, torch.double, torch.half):
            raise TypeError(f"target boxes must of float type, instead got {boxes.dtype}")
        if target["labels"].dtype != torch.int64:
            raise TypeError(f"target labels must of int64 type, instead got {target['labels'].dtype}")


def unmatched(anchors: Tensor) -> Tensor:
    """Every anchor background (-1): an image without boxes, as torchvision marks it."""
    return torch.full((anchors.size(0),), -1, dtype=torch.int64, device=anchors.device)


def match_by_iou(model: nn.Module, anchors: list[Tensor], targets: list[dict[str, Tensor]],
                 grids: list[tuple[int, int]]) -> list[Tensor]:
    """RetinaNet's and SSD's assignment: ``model.proposal_matcher`` on the box/anchor IoU matrix
    (the -1 / -2 codes of torchvision's ``Matcher``), every anchor background without boxes."""
    return [unmatched(a) if t["boxes"].numel() == 0 else model.proposal_matcher(box_iou(t["boxes"], a))
            for a, t in zip(anchors, targets)]


def box_loss_rows(kind: str, coder: Any, anchors: Tensor, regression: Tensor, boxes: Tensor) -> Tensor:
    """torchvision's ``_box_loss`` of each row ``[R]`` instead of their sum: ``l1`` and
    ``smooth_l1`` (beta 1) on the encoded boxes, ``giou``/``diou``/``ciou`` (eps 1e-7) on the
    decoded regression."""
    if kind in ("l1", "smooth_l1"):
        target = coder.encode_single(boxes, anchors)
        loss = F.l1_loss if kind == "l1" else F.smooth_l1_loss
        return loss(regression, target, reduction="none").sum(dim=1)
    decode = coder.decode_single if hasattr(coder, "decode_single") else coder.decode
    pred = decode(regression, anchors)
    loss = {"giou": generalized_box_iou_loss, "diou": distance_box_iou_loss, "ciou": complete_box_iou_loss}[kind]
    return loss(pred, boxes, reduction="none", eps=1e-7)


def split_detect(model: nn.Module, image_list: ImageList, features: "OrderedDict[str, Tensor]") -> list[dict]:
    """RetinaNet's and FCOS's eval forward after the backbone: head, anchors, the head's rows
    split per level, ``postprocess_detections``."""
    maps = list(features.values())
    head_outputs = model.head(maps)
    anchors = model.anchor_generator(image_list, maps)
    per_level = [m.size(2) * m.size(3) for m in maps]
    per_location = head_outputs["cls_logits"].size(1) // sum(per_level)
    per_level = [n * per_location for n in per_level]
    split_outputs = {k: list(v.split(per_level, dim=1)) for k, v in head_outputs.items()}
    split_anchors = [list(a.split(per_level)) for a in anchors]
    return model.postprocess_detections(split_outputs, split_anchors, image_list.image_sizes)


DenseLoss = Callable[[nn.Module, list[dict[str, Tensor]], dict[str, Tensor], list[Tensor], list[Tensor]],
                     dict[str, Tensor]]


def dense_train_step(model: nn.Module, images: list[Tensor], targets: Optional[list[dict[str, Tensor]]],
                     match: Callable[..., list[Tensor]], loss: DenseLoss) -> TrainStep:
    """The training forward every torchvision one-stage detector (RetinaNet, FCOS, SSD) shares:
    transform, backbone, head, anchors, then the family's ``match`` (anchors -> ground truth) and
    ``loss`` (torchvision's own, given those matched indices)."""
    check_training_inputs(images, targets)
    image_list, targets = model.transform(images, targets)
    check_transformed_targets(targets)
    features = feature_dict(model.backbone(image_list.tensors))
    maps = list(features.values())
    head_outputs = model.head(maps)
    anchors = model.anchor_generator(image_list, maps)
    grids = [(int(m.shape[-2]), int(m.shape[-1])) for m in maps]
    matched = match(model, anchors, targets, grids)
    losses = loss(model, targets, head_outputs, anchors, matched)
    # AnchorGenerator (RetinaNet, FCOS: one point) and DefaultBoxGenerator (SSD) count them per level.
    per_location = [int(a) for a in model.anchor_generator.num_anchors_per_location()]
    return TrainStep(losses=OrderedDict(losses), images=image_list, targets=targets, features=features,
                     anchors=anchors, grids=grids, anchors_per_location=per_location, matched_idxs=matched,
                     head_outputs=head_outputs)
