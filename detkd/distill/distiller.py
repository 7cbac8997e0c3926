r"""Knowledge distillation of torchvision Faster R-CNN (Chen et al., "Learning Efficient
Object Detection Models with Knowledge Distillation", NeurIPS 2017; spec ``methods.md`` §1).

The objective, with the paper's defaults (``DistillConfig``)::

    L      = L_RPN + L_RCN + gamma * L_hint                       gamma = 0.5
    L_RPN  = L_cls^RPN + lam * L_reg^RPN,  L_RCN = L_cls^RCN + lam * L_reg^RCN    lam = 1
    L_cls  = mu * L_hard + (1 - mu) * L_soft                      mu = 0.5
    L_soft = - sum_c w_c P_t,c log P_s,c,  P = softmax(z / T)     w_bg = 1.5, T = 1
    L_reg  = smoothL1(R_s, y) + nu * L_b(R_s, R_t, y)             nu = 0.5
    L_b    = ||R_s - y||^2 if ||R_s - y||^2 + m > ||R_t - y||^2 else 0   (per row)
    L_hint = ||adapt(V) - Z||^2                                   (elementwise mean)

How the rows line up (the part that makes it correct, not just runnable): the student's
training pipeline is run step by step with torchvision's own component methods, in
torchvision's order (so the hard losses and the random sampling are exactly torchvision's),
keeping the sampled anchor indices and the sampled proposals. The teacher never runs its
own RPN proposals or samplers: it sees the student's transformed batch, its RPN head is read
at the student's sampled anchors, and its box head classifies the student's sampled
proposals pooled from the teacher's own features.

Conventions:

* A term is on when its switch is on and its weight (``1 - mu``, ``lam * nu``, ``gamma``)
  is > 0; an off term costs nothing and has no loss entry. Where a head's soft term is off
  its classification loss is the plain hard loss (no ``mu`` factor), so an ablation that
  drops a term reverts to the standard loss. ``lam`` scales the smooth-L1 terms always.
  With ``mu = 1, nu = 0, gamma = 0`` (or all switches off) the loss is torchvision's,
  bit for bit.
* Normalization follows the hard term beside each soft/bounded term: RPN soft = mean over
  the sampled anchors; RCN soft = mean over the sampled RoIs; bounds = sum over positive
  rows / number of sampled rows (anchors or RoIs), like torchvision's smooth-L1.
* The teacher runs under ``torch.inference_mode()``, is frozen and stays in eval mode; the
  outputs the losses use are cloned out of inference mode (inference tensors cannot be
  saved for the student's backward).
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.models.detection import FasterRCNN
from torchvision.models.detection.image_list import ImageList
from torchvision.models.detection.roi_heads import fastrcnn_loss
from torchvision.models.detection.rpn import concat_box_prediction_layers

from detkd.config.schema import Config, DistillConfig, ModelConfig
from detkd.distill.compat import check_compatible, enabled_terms
from detkd.errors import DetkdError
from detkd.losses.detection import bounded_regression_loss, objectness_soft_ce, weighted_soft_ce
from detkd.modeling.adapters import HintAdapters, hint_losses
from detkd.modeling.detector import build_detector
from detkd.modeling.weights import load_matching, read_state_dict

__all__ = ["Distiller", "build_distiller"]

log = logging.getLogger(__name__)

RPN_TERMS = frozenset({"rpn_soft", "rpn_bound"})
RCN_TERMS = frozenset({"rcn_soft", "rcn_bound"})


def _scale(x: Tensor, w: float) -> Tensor:
    # Skip the multiply for w == 1 so the hard terms are torchvision's tensors themselves.
    return x if w == 1.0 else x * w


def _features(out: Any) -> "OrderedDict[str, Tensor]":
    # torchvision accepts a backbone returning a single tensor (GeneralizedRCNN.forward).
    return OrderedDict([("0", out)]) if isinstance(out, Tensor) else out


def _check_targets(images: Sequence[Tensor], targets: Optional[list[dict[str, Tensor]]]) -> None:
    """The input checks torchvision's GeneralizedRCNN / RoIHeads make in training."""
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


def _check_transformed_targets(targets: list[dict[str, Tensor]]) -> None:
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


def _l2_to_teacher(student: Tensor, teacher: Tensor) -> Tensor:
    """Plain L2 ablation: sum over rows of ||R_s - R_t||^2 (teacher detached)."""
    dtype = torch.float64 if student.dtype == torch.float64 else torch.float32
    return (student.to(dtype) - teacher.detach().to(dtype)).pow(2).sum()


class Distiller(nn.Module):
    r"""A torchvision Faster R-CNN student trained against a frozen Faster R-CNN teacher
    with the objective of Chen et al. (NeurIPS 2017), see the module docstring.

    Args:
        student: the ``FasterRCNN`` being trained (``self.student``; save its
            ``state_dict()`` as the model).
        teacher: a ``FasterRCNN`` with the same classes (and, for the RPN terms, the same
            anchors and strides). It is frozen here (``requires_grad=False``) and kept in
            eval mode whatever ``train()`` is called with.
        cfg: the distillation knobs.
        teacher_renorm: ``(mean_s, std_s, mean_t, std_t)`` (3 values each) to map the
            student's normalized batch into the teacher's normalization,
            ``x_t = ((x_s * std_s + mean_s) - mean_t) / std_t``; ``None`` (default) reads
            them from the two models' transforms (no-op when they agree).
        student_cfg, teacher_cfg: only used to name config keys in error messages.

    Attributes:
        adapters: :class:`HintAdapters` for ``cfg.hint_levels``, or ``None`` when the hint
            term is off (save ``adapters.state_dict()`` next to the student's).
        last_stats: Python floats from the last training forward (read lazily, so there is
            no host sync unless it is read): ``raw_<term>`` unweighted term values and
            ``rpn_bound_active`` / ``rcn_bound_active``, the fraction of positive rows on
            which the teacher bound is active.

    Training ``forward(images, targets)`` returns the loss terms, already weighted, whose
    sum is the objective: ``loss_classifier`` (mu*hard), ``loss_box_reg`` (lam*smoothL1),
    ``loss_objectness`` (mu*hard), ``loss_rpn_box_reg`` (lam*smoothL1), then, for the terms
    that are on, ``loss_rcn_soft`` ((1-mu)*soft), ``loss_rcn_bound`` (lam*nu*L_b),
    ``loss_rpn_soft``, ``loss_rpn_bound``, ``loss_hint`` (gamma*hint). In eval mode it is
    the student's inference.
    """

    def __init__(
        self,
        student: FasterRCNN,
        teacher: FasterRCNN,
        cfg: DistillConfig,
        teacher_renorm: Optional[tuple[Sequence[float], Sequence[float], Sequence[float], Sequence[float]]] = None,
        *,
        student_cfg: Optional[ModelConfig] = None,
        teacher_cfg: Optional[ModelConfig] = None,
    ) -> None:
        super().__init__()
        if cfg.bound_kind not in ("bounded", "l2"):
            raise DetkdError(f"distill.bound_kind must be 'bounded' or 'l2', got {cfg.bound_kind!r}")
        self.student = student
        self.teacher = teacher
        self.cfg = cfg
        teacher.requires_grad_(False)
        teacher.eval()
        self.terms = enabled_terms(cfg)
        self.hint_levels = [str(level) for level in cfg.hint_levels]
        hint_channels = check_compatible(student_cfg, teacher_cfg, cfg, student, teacher)
        ref = next(student.parameters())
        self.adapters: Optional[HintAdapters] = None
        if "hint" in self.terms:
            self.adapters = HintAdapters(hint_channels, cfg.adapter).to(ref.device)

        num_classes = student.roi_heads.box_predictor.cls_score.out_features
        weights = torch.ones(num_classes)
        if cfg.class_weighted:
            weights[0] = cfg.bg_weight  # torchvision: class 0 is background
        self.register_buffer("class_weights", weights.to(ref.device), persistent=False)
        self.rpn_bg_weight = float(cfg.bg_weight) if cfg.class_weighted else 1.0

        if teacher_renorm is None:
            st, tt = student.transform, teacher.transform
            teacher_renorm = (st.image_mean, st.image_std, tt.image_mean, tt.image_std)
        stats = [torch.as_tensor([float(v) for v in vals]).view(-1, 1, 1) for vals in teacher_renorm]
        self.renorm = not (torch.equal(stats[0], stats[2]) and torch.equal(stats[1], stats[3]))
        for name, value in zip(("mean_s", "std_s", "mean_t", "std_t"), stats):
            self.register_buffer(f"_renorm_{name}", value.to(ref.device), persistent=False)

        self.epoch = 0
        self._stats: dict[str, Tensor] = {}
        if self.renorm:
            log.info("teacher input re-normalized from the student's mean/std %s/%s to %s/%s",
                     *[list(map(float, s.flatten())) for s in stats])

    # ------------------------------------------------------------------ modes and schedule

    def train(self, mode: bool = True) -> "Distiller":
        super().train(mode)
        self.teacher.eval()  # BatchNorm statistics and dropout of the teacher stay fixed
        return self

    def set_epoch(self, epoch: int) -> None:
        """Called by the trainer each iteration; ``start_epoch <= epoch < stop_epoch``
        switches the distillation terms on."""
        self.epoch = int(epoch)

    @property
    def distilling(self) -> bool:
        c = self.cfg
        return self.epoch >= c.start_epoch and (c.stop_epoch is None or self.epoch < c.stop_epoch)

    def active_terms(self) -> frozenset[str]:
        """The terms computed at the current epoch."""
        return self.terms if self.distilling else frozenset()

    @property
    def last_stats(self) -> dict[str, float]:
        return {k: float(v) for k, v in self._stats.items()}

    # ------------------------------------------------------------------ forward

    def forward(self, images: list[Tensor], targets: Optional[list[dict[str, Tensor]]] = None) -> Any:
        if not self.training:
            return self.student(images, targets)
        _check_targets(images, targets)
        if self.teacher.training:  # someone called teacher.train() directly
            self.teacher.eval()
        cfg, s = self.cfg, self.student
        terms = self.active_terms()
        self._stats = {}

        # --- student, exactly GeneralizedRCNN.forward's training path
        image_list, targets = s.transform(images, targets)
        _check_transformed_targets(targets)
        features = _features(s.backbone(image_list.tensors))
        rpn = self._student_rpn(image_list, features, targets)
        rcn = self._student_rcn(features, rpn["proposals"], image_list.image_sizes, targets)

        hard_w_rcn = cfg.mu if "rcn_soft" in terms else 1.0
        hard_w_rpn = cfg.mu if "rpn_soft" in terms else 1.0
        # torchvision's key order (detector losses, then RPN losses): with every
        # distillation term off, sum(losses.values()) is torchvision's sum bit for bit.
        losses: dict[str, Tensor] = {
            "loss_classifier": _scale(rcn["loss_classifier"], hard_w_rcn),
            "loss_box_reg": _scale(rcn["loss_box_reg"], cfg.lam),
            "loss_objectness": _scale(rpn["loss_objectness"], hard_w_rpn),
            "loss_rpn_box_reg": _scale(rpn["loss_rpn_box_reg"], cfg.lam),
        }
        if not terms:
            return losses

        # --- teacher, on the student's transformed batch and the student's rows
        with torch.inference_mode():
            t_features = _features(self.teacher.backbone(self._teacher_input(image_list)))
            if terms & RPN_TERMS:
                t_obj, t_deltas = self._teacher_rpn(t_features, rpn)
            if terms & RCN_TERMS:
                t_logits, t_regression = self._teacher_rcn(t_features, rcn, image_list.image_sizes)
        # Inference tensors cannot be saved for the student's backward: clone the few the
        # losses use into normal tensors (cheap next to the teacher's forward).
        if "hint" in terms:
            t_features = OrderedDict((k, t_features[k].clone()) for k in self.hint_levels)
        if terms & RPN_TERMS:
            t_obj, t_deltas = t_obj.clone(), t_deltas.clone()
        if terms & RCN_TERMS:
            t_logits, t_regression = t_logits.clone(), t_regression.clone()

        soft_w, bound_w = 1.0 - cfg.mu, cfg.lam * cfg.nu
        if "rcn_soft" in terms:
            # All sampled RoIs, mean: like the hard CE beside it.
            soft = weighted_soft_ce(rcn["class_logits"], t_logits, self.class_weights, cfg.temperature, "mean")
            losses["loss_rcn_soft"] = soft * soft_w
            self._stats["raw_rcn_soft"] = soft.detach()
        if "rcn_bound" in terms:
            # Positive RoIs, both nets' deltas at the ground-truth class.
            pos, labels_pos = rcn["pos"], rcn["labels_pos"]
            num_rows = rcn["labels"].numel()
            s_d = rcn["box_regression"].reshape(num_rows, -1, 4)[pos, labels_pos]
            t_d = t_regression.reshape(num_rows, -1, 4)[pos, labels_pos]
            bound = self._bound(s_d, t_d, rcn["regression_targets"][pos], num_rows, "rcn")
            losses["loss_rcn_bound"] = bound * bound_w
            self._stats["raw_rcn_bound"] = bound.detach()
        if "rpn_soft" in terms:
            sampled = rpn["sampled_inds"]
            # Sampled anchors, mean: like the objectness BCE beside it.
            soft = objectness_soft_ce(rpn["objectness"][sampled], t_obj[sampled], self.rpn_bg_weight,
                                      cfg.temperature, "mean")
            losses["loss_rpn_soft"] = soft * soft_w
            self._stats["raw_rpn_soft"] = soft.detach()
        if "rpn_bound" in terms:
            pos = rpn["sampled_pos_inds"]
            bound = self._bound(rpn["pred_bbox_deltas"][pos], t_deltas[pos], rpn["regression_targets"][pos],
                                rpn["sampled_inds"].numel(), "rpn")
            losses["loss_rpn_bound"] = bound * bound_w
            self._stats["raw_rpn_bound"] = bound.detach()
        if "hint" in terms:
            assert self.adapters is not None
            hint = hint_losses(self.adapters, features, t_features, self.hint_levels, reduction="mean")
            losses["loss_hint"] = hint * cfg.gamma
            self._stats["raw_hint"] = hint.detach()
        return losses

    # ------------------------------------------------------------------ student pieces

    def _student_rpn(self, images: ImageList, features: "OrderedDict[str, Tensor]",
                     targets: list[dict[str, Tensor]]) -> dict[str, Any]:
        """RegionProposalNetwork.forward + compute_loss (torchvision 0.2x), keeping the
        sampled anchor indices. Same calls in the same order, so the same RNG draws."""
        rpn = self.student.rpn
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
            "loss_objectness": objectness_loss,
            "loss_rpn_box_reg": box_loss,
        }

    def _student_rcn(self, features: "OrderedDict[str, Tensor]", proposals: list[Tensor],
                     image_sizes: list[tuple[int, int]], targets: list[dict[str, Tensor]]) -> dict[str, Any]:
        """RoIHeads.forward's training path, keeping the sampled proposals and labels."""
        heads = self.student.roi_heads
        proposals, _matched_idxs, labels, regression_targets = heads.select_training_samples(proposals, targets)
        box_features = heads.box_roi_pool(features, proposals, image_sizes)
        box_features = heads.box_head(box_features)
        class_logits, box_regression = heads.box_predictor(box_features)
        loss_classifier, loss_box_reg = fastrcnn_loss(class_logits, box_regression, labels, regression_targets)
        out = {
            "proposals": proposals,
            "class_logits": class_logits,
            "box_regression": box_regression,
            "labels": torch.cat(labels, dim=0),
            "regression_targets": torch.cat(regression_targets, dim=0),
            "loss_classifier": loss_classifier,
            "loss_box_reg": loss_box_reg,
        }
        if "rcn_bound" in self.active_terms():
            pos = torch.where(out["labels"] > 0)[0]  # as in fastrcnn_loss
            out["pos"], out["labels_pos"] = pos, out["labels"][pos]
        return out

    # ------------------------------------------------------------------ teacher pieces

    def _teacher_input(self, images: ImageList) -> Tensor:
        """The student's transformed batch in the teacher's normalization.

        ``x_t = ((x_s * std_s + mean_s) - mean_t) / std_t`` on the image area; the padding
        stays 0, as the teacher's own transform would pad (after normalizing)."""
        x = images.tensors
        if not self.renorm:
            return x
        dt = x.dtype
        raw = x * self._renorm_std_s.to(dt) + self._renorm_mean_s.to(dt)
        x_t = (raw - self._renorm_mean_t.to(dt)) / self._renorm_std_t.to(dt)
        height, width = x_t.shape[-2:]
        for i, (h, w) in enumerate(images.image_sizes):
            if h < height:
                x_t[i, :, h:, :] = 0
            if w < width:
                x_t[i, :, :, w:] = 0
        return x_t

    def _teacher_rpn(self, t_features: "OrderedDict[str, Tensor]", rpn: dict[str, Any]) -> tuple[Tensor, Tensor]:
        """Teacher objectness and deltas for every student anchor (same anchor order)."""
        t_obj, t_deltas = self.teacher.rpn.head(list(t_features.values()))
        grids = [tuple(o.shape[-2:]) for o in t_obj]
        if grids != rpn["grids"]:  # check_compatible makes this unreachable for sane models
            raise DetkdError(
                f"RPN distillation: teacher feature grids {grids} differ from the student's {rpn['grids']}"
            )
        t_obj, t_deltas = concat_box_prediction_layers(t_obj, t_deltas)
        return t_obj.flatten(), t_deltas

    def _teacher_rcn(self, t_features: "OrderedDict[str, Tensor]", rcn: dict[str, Any],
                     image_sizes: list[tuple[int, int]]) -> tuple[Tensor, Tensor]:
        """The student's sampled proposals, pooled from the teacher's features and run
        through the teacher's box head: one teacher row per student row, same order."""
        heads = self.teacher.roi_heads
        box_features = heads.box_roi_pool(t_features, rcn["proposals"], image_sizes)
        box_features = heads.box_head(box_features)
        return heads.box_predictor(box_features)

    # ------------------------------------------------------------------ bounded term

    def _bound(self, s_d: Tensor, t_d: Tensor, y: Tensor, num_sampled: int, head: str) -> Tensor:
        """Sum over positive rows / number of sampled rows (torchvision's smooth-L1 norm)."""
        if self.cfg.bound_kind == "l2":
            return _l2_to_teacher(s_d, t_d) / num_sampled
        loss, active = bounded_regression_loss(s_d, t_d, y, self.cfg.margin, "sum", return_active=True)
        self._stats[f"{head}_bound_active"] = active.sum() / max(active.numel(), 1)
        return loss / num_sampled

    def extra_repr(self) -> str:
        return f"terms={sorted(self.terms)}, renorm={self.renorm}"


def build_distiller(cfg: Config, student: FasterRCNN) -> Distiller:
    """Build the teacher from ``cfg.teacher.model``, load ``cfg.teacher.checkpoint``
    (a mismatch is a one-line :class:`DetkdError` naming the file), freeze it, check
    compatibility and wrap ``student`` in a :class:`Distiller`."""
    if cfg.teacher is None or cfg.distill is None:
        raise DetkdError("a distillation run needs both a 'teacher' and a 'distill' section")
    if not cfg.teacher.checkpoint:
        raise DetkdError("'teacher.checkpoint' is required for a distillation run")
    teacher = build_detector(cfg.teacher.model)
    path = cfg.teacher.checkpoint
    load_matching(teacher, read_state_dict(path), f"teacher.checkpoint {path}")
    s_size, t_size = (cfg.model.min_size, cfg.model.max_size), (cfg.teacher.model.min_size, cfg.teacher.model.max_size)
    if s_size != t_size:
        log.info("the teacher sees the student's transformed batch (min/max size %s); "
                 "teacher.model.min_size/max_size %s are not used", s_size, t_size)
    return Distiller(student, teacher, cfg.distill, student_cfg=cfg.model, teacher_cfg=cfg.teacher.model)
