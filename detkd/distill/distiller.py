r"""Knowledge distillation of torchvision Faster R-CNN: one frozen teacher, one student, and
a family of methods (docs/methods.md; docs/distillation_methods.md).

Each training step the Distiller runs

1. the student's training pipeline step by step with torchvision's own component methods,
   in torchvision's order (so its hard losses and random sampling are exactly torchvision's),
   keeping its FPN maps, anchors, sampled anchor rows and sampled proposals;
2. the frozen teacher, only as far as the enabled methods need: its backbone + FPN on the
   student's transformed batch (re-normalized if the two configs' mean/std differ) or, when
   the teacher's config has another input size, on the images at its own size; its RPN head
   at the student's anchors only for RPN terms; its box head on the student's sampled
   proposals (scaled into the teacher's frame) only for RoI terms;
3. every enabled method (:data:`detkd.distill.methods.METHODS`) on the
   :class:`~detkd.distill.methods.DistillRecord` of that step: Chen et al. (NeurIPS 2017;
   hint, soft CE, bounded regression) and the FPN-feature methods PKD, CWD, MGD, FGD and
   fine-grained imitation, several at once if configured.

Conventions:

* A method is on when its section ``distill.<name>`` is there; a term when its switch is
  on and its weight is > 0; an off term costs nothing and has no loss entry. With every
  weight at 0 (or no section) the loss is torchvision's, bit for bit, and the teacher does
  not run.
* Chen et al.'s ``lam`` scales the student's smooth-L1 terms always; its soft terms weight
  the hard CE beside them by ``mu`` (:meth:`DistillMethod.hard_weights`).
* The teacher runs under ``torch.inference_mode()``, is frozen and stays in eval mode; the
  outputs the methods use are cloned out of inference mode (inference tensors cannot be
  saved for the student's backward).
* Every learnable part of every method lives in ``self.methods`` (trained with the student,
  saved by the trainer in ``last.pth`` under ``distill`` via :meth:`Distiller.extra_state`,
  not in ``model_final.pth``).
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

from detkd.config.schema import ARCH_FAMILIES, Config, DistillConfig, ModelConfig
from detkd.distill.methods import METHODS, BuildContext, DistillMethod, DistillRecord
from detkd.errors import DetkdError
from detkd.modeling.adapters import HintAdapters
from detkd.modeling.detector import build_detector
from detkd.modeling.sampling import KeyedSampler
from detkd.modeling.weights import load_matching, read_state_dict

__all__ = ["Distiller", "build_distiller"]

log = logging.getLogger(__name__)

HARD_KEYS = ("loss_classifier", "loss_box_reg", "loss_objectness", "loss_rpn_box_reg")


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


def _input_size(model: FasterRCNN) -> tuple[tuple[int, ...], int]:
    t = model.transform
    return tuple(int(v) for v in t.min_size), int(t.max_size)


def _teacher_at_own_size(cfg: DistillConfig, student: FasterRCNN, teacher: FasterRCNN) -> bool:
    """``distill.teacher_input``: does the teacher run its own transform on the raw images?"""
    if _input_size(student) == _input_size(teacher) or cfg.teacher_input == "student":
        return False
    anchored = [name for name, section in _sections(cfg) if METHODS[name].compares_anchors(section)]
    if cfg.teacher_input == "auto" and anchored:
        log.info("the teacher sees the student's transformed batch: %s compares the two nets anchor by anchor "
                 "(distill.teacher_input: auto)", ", ".join(anchored))
        return False
    return True


def _sections(cfg: DistillConfig) -> list[tuple[str, Any]]:
    """``(name, section)`` of the configured methods, in :data:`METHODS` order."""
    unknown = [name for name in cfg.methods if name not in METHODS]
    if unknown:
        raise DetkdError(f"distill.{unknown[0]}: no such method (methods: {', '.join(METHODS)})")
    return [(name, cfg.methods[name]) for name in METHODS if cfg.methods.get(name) is not None]


def _scale_boxes(boxes: list[Tensor], src: list[tuple[int, int]], dst: list[tuple[int, int]]) -> list[Tensor]:
    """xyxy boxes of each image from its ``src`` (H, W) frame into its ``dst`` frame."""
    out = []
    for b, (h_s, w_s), (h_d, w_d) in zip(boxes, src, dst):
        ratio = torch.tensor([w_d / w_s, h_d / h_s, w_d / w_s, h_d / h_s], dtype=b.dtype, device=b.device)
        out.append(b * ratio)
    return out


class Distiller(nn.Module):
    r"""A torchvision Faster R-CNN student trained against a frozen Faster R-CNN teacher with
    the methods that ``cfg`` enables (see the module docstring).

    Args:
        student: the ``FasterRCNN`` being trained (``self.student``; save its
            ``state_dict()`` as the model).
        teacher: a ``FasterRCNN`` (for Chen et al.'s terms: the same classes and, for the RPN
            terms, the same anchors and strides). It is frozen here (``requires_grad=False``)
            and kept in eval mode whatever ``train()`` is called with.
        cfg: the distillation config (run-wide keys and one section per method).
        teacher_renorm: ``(mean_s, std_s, mean_t, std_t)`` (3 values each) to map the
            student's normalized batch into the teacher's normalization,
            ``x_t = ((x_s * std_s + mean_s) - mean_t) / std_t``; ``None`` (default) reads
            them from the two models' transforms (no-op when they agree).
        student_cfg, teacher_cfg: only used to name config keys in error messages.

    The teacher sees the student's transformed batch when both transforms have the same
    min/max size (or ``cfg.teacher_input`` says so), else the raw images through its own
    transform (``self.own_size``).

    Attributes:
        methods: ``nn.ModuleDict`` name -> :class:`DistillMethod` of the enabled methods.
        adapters: Chen et al.'s :class:`HintAdapters`, or ``None`` when the hint is off.
        last_stats: Python floats from the last training forward (read lazily, so there is
            no host sync unless it is read): ``raw_<term>`` unweighted term values and
            ``rpn_bound_active`` / ``rcn_bound_active``, the fraction of positive rows on
            which the teacher bound is active.

    Training ``forward(images, targets)`` returns the loss terms, already weighted, whose
    sum is the objective: ``loss_classifier``, ``loss_box_reg``, ``loss_objectness``,
    ``loss_rpn_box_reg`` (the student's own, in torchvision's order), then each enabled
    method's terms (Chen et al.: ``loss_rcn_soft``, ``loss_rcn_bound``, ``loss_rpn_soft``,
    ``loss_rpn_bound``, ``loss_hint``; ``loss_pkd``, ``loss_cwd``, ``loss_mgd``,
    ``loss_fgd``, ``loss_fgfi``). In eval mode it is the student's inference.
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
        self.student = student
        self.teacher = teacher
        self.cfg = cfg
        teacher.requires_grad_(False)
        teacher.eval()
        for model, who in ((student, "student"), (teacher, "teacher")):
            heads = model.roi_heads
            if heads.has_mask() or heads.has_keypoint():
                raise DetkdError(f"the {who} has mask/keypoint heads; detkd distills Faster R-CNN box detectors only")
        self.own_size = _teacher_at_own_size(cfg, student, teacher)
        ctx = BuildContext(cfg, student, teacher, student_cfg, teacher_cfg, self.own_size)
        ref = next(student.parameters())
        self.methods = nn.ModuleDict()
        for name, section in _sections(cfg):
            ctx.name = name
            method = METHODS[name].build(section, ctx)
            if method is not None:
                method.name = name
                self.methods[name] = method.to(ref.device)

        if teacher_renorm is None:
            st, tt = student.transform, teacher.transform
            teacher_renorm = (st.image_mean, st.image_std, tt.image_mean, tt.image_std)
        stats = [torch.as_tensor([float(v) for v in vals]).view(-1, 1, 1) for vals in teacher_renorm]
        self.renorm = not self.own_size and not (torch.equal(stats[0], stats[2]) and torch.equal(stats[1], stats[3]))
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
        """Called by the trainer each epoch; ``start_epoch <= epoch < stop_epoch``
        switches the distillation terms on."""
        self.epoch = int(epoch)

    @property
    def distilling(self) -> bool:
        c = self.cfg
        return self.epoch >= c.start_epoch and (c.stop_epoch is None or self.epoch < c.stop_epoch)

    @property
    def terms(self) -> frozenset[str]:
        """Every enabled term (Chen et al.'s by term, the other methods by name)."""
        return frozenset().union(*(m.terms() for m in self.methods.values()))

    def active_terms(self) -> frozenset[str]:
        """The terms computed at the current epoch."""
        return self.terms if self.distilling else frozenset()

    def active_methods(self) -> list[DistillMethod]:
        """The methods that run this epoch (those with a term: Chen et al. may only scale)."""
        return [m for m in self.methods.values() if m.terms()] if self.distilling else []

    @property
    def adapters(self) -> Optional[HintAdapters]:
        chen = self.methods["chen"] if "chen" in self.methods else None
        return None if chen is None else chen.adapters

    @property
    def last_stats(self) -> dict[str, float]:
        return {k: float(v) for k, v in self._stats.items()}

    # ------------------------------------------------------------------ what the training loop calls
    # (detkd.engine.model.TrainModel, matched structurally: set_epoch above, forward, student)

    def log_stats(self) -> dict[str, float]:
        """The last training forward's statistics for the log line (:attr:`last_stats`)."""
        return self.last_stats

    def extra_state(self) -> dict[str, Tensor]:
        """The methods' learnable parts (adapters, generators, GcBlocks...): ``last.pth["distill"]``."""
        return self.methods.state_dict()

    def load_extra_state(self, ckpt: dict[str, Any], path: Any) -> None:
        """Restore :meth:`extra_state` from ``ckpt["distill"]`` (checkpoints before the method
        interface: ``ckpt["adapters"]``, Chen et al.'s hint adapters); a mismatch is a one-line
        error naming the file ``path``."""
        state = ckpt.get("distill")
        if state is None and "adapters" in ckpt:
            state = {f"chen.adapters.{k}": v for k, v in ckpt["adapters"].items()}
        if state is None:
            state = {}
        try:
            self.methods.load_state_dict(state)
        except RuntimeError as exc:
            missing = sorted(set(self.methods.state_dict()) ^ set(state))
            raise DetkdError(f"{path}: the distillation methods' weights do not match this config "
                             f"({', '.join(missing[:4]) or str(exc).splitlines()[0]}); resume with the config it "
                             "was made with") from None

    # ------------------------------------------------------------------ forward

    def forward(self, images: list[Tensor], targets: Optional[list[dict[str, Tensor]]] = None) -> Any:
        if not self.training:
            return self.student(images, targets)
        _check_targets(images, targets)
        if self.teacher.training:  # someone called teacher.train() directly
            self.teacher.eval()
        s = self.student
        methods = self.active_methods()
        self._stats = {}

        # --- student, exactly GeneralizedRCNN.forward's training path
        raw_images = images
        image_list, targets = s.transform(images, targets)
        _check_transformed_targets(targets)
        features = _features(s.backbone(image_list.tensors))
        rpn = self._student_rpn(image_list, features, targets)
        rcn = self._student_rcn(features, rpn["proposals"], image_list.image_sizes, targets)

        weights = dict.fromkeys(HARD_KEYS, 1.0)
        for method in self.methods.values():
            weights.update(method.hard_weights(self.distilling))
        # torchvision's key order (detector losses, then RPN losses): with every
        # distillation term off, sum(losses.values()) is torchvision's sum bit for bit.
        hard = {"loss_classifier": rcn["loss_classifier"], "loss_box_reg": rcn["loss_box_reg"],
                "loss_objectness": rpn["loss_objectness"], "loss_rpn_box_reg": rpn["loss_rpn_box_reg"]}
        losses: dict[str, Tensor] = {k: _scale(hard[k], weights[k]) for k in HARD_KEYS}
        if not methods:
            return losses

        record = self._record(raw_images, image_list, features, targets, rpn, rcn, methods)
        for method in methods:
            losses.update(method(record))
            self._stats.update(method.stats)
        return losses

    def _record(self, raw_images: list[Tensor], image_list: ImageList, features: "OrderedDict[str, Tensor]",
                targets: list[dict[str, Tensor]], rpn: dict[str, Any], rcn: dict[str, Any],
                methods: list[DistillMethod]) -> DistillRecord:
        """Run the teacher as far as ``methods`` need and collect what they read."""
        need_rpn = any(m.needs_teacher_rpn for m in methods)
        need_rcn = any(m.needs_teacher_rcn for m in methods)
        levels = list(dict.fromkeys(level for m in methods for level in m.teacher_levels()))
        sizes = image_list.image_sizes
        with torch.inference_mode():
            if self.own_size:  # the teacher's own transform (eval mode: its test size, no randomness)
                t_list, _ = self.teacher.transform(raw_images)
                t_input, t_sizes = t_list.tensors, t_list.image_sizes
            else:
                t_input, t_sizes = self._teacher_input(image_list), sizes
            t_features = _features(self.teacher.backbone(t_input))
            t_rpn = self._teacher_rpn(t_features, rpn) if need_rpn else None
            t_rcn = None
            if need_rcn:
                proposals = rcn["proposals"] if not self.own_size else _scale_boxes(rcn["proposals"], sizes, t_sizes)
                t_rcn = self._teacher_rcn(t_features, proposals, t_sizes)
        # Inference tensors cannot be saved for the student's backward: clone the few the
        # methods use into normal tensors (cheap next to the teacher's forward).
        boxes = [t["boxes"] for t in targets]
        return DistillRecord(
            features=features,
            teacher_features={k: t_features[k].clone() for k in levels},
            targets=targets, image_sizes=sizes, batch_shape=tuple(image_list.tensors.shape[-2:]),
            teacher_boxes=boxes if not self.own_size else _scale_boxes(boxes, sizes, t_sizes),
            teacher_image_sizes=t_sizes, teacher_batch_shape=tuple(t_input.shape[-2:]),
            keys=self._image_keys(len(targets)) if any(m.needs_keys for m in methods) else [],
            rpn=rpn, rcn=rcn,
            teacher_rpn=None if t_rpn is None else (t_rpn[0].clone(), t_rpn[1].clone()),
            teacher_rcn=None if t_rcn is None else (t_rcn[0].clone(), t_rcn[1].clone()),
        )

    def _image_keys(self, num_images: int) -> list[int]:
        """The per-image keys the trainer set for the student's samplers (so random masks
        follow the image, not the batch split); else fresh draws from the global RNG."""
        sampler = self.student.rpn.fg_bg_sampler
        if isinstance(sampler, KeyedSampler) and sampler.keys is not None:
            return list(sampler.keys)
        return [int(k) for k in torch.randint(0, 2**62, (num_images,))]

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
            "anchors": anchors,
            "anchors_per_location": rpn.anchor_generator.num_anchors_per_location()[0],
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

    def _teacher_rcn(self, t_features: "OrderedDict[str, Tensor]", proposals: list[Tensor],
                     image_sizes: list[tuple[int, int]]) -> tuple[Tensor, Tensor]:
        """The student's sampled proposals, pooled from the teacher's features and run
        through the teacher's box head: one teacher row per student row, same order."""
        heads = self.teacher.roi_heads
        box_features = heads.box_roi_pool(t_features, proposals, image_sizes)
        box_features = heads.box_head(box_features)
        return heads.box_predictor(box_features)

    def extra_repr(self) -> str:
        return f"methods={list(self.methods)}, terms={sorted(self.terms)}, renorm={self.renorm}, own_size={self.own_size}"


def build_distiller(cfg: Config, student: FasterRCNN) -> Distiller:
    """Build the teacher from ``cfg.teacher.model``, load ``cfg.teacher.checkpoint``
    (a mismatch is a one-line :class:`DetkdError` naming the file), freeze it, check
    compatibility (each method's ``build``) and wrap ``student`` in a :class:`Distiller`."""
    if cfg.teacher is None or cfg.distill is None:
        raise DetkdError("a distillation run needs both a 'teacher' and a 'distill' section")
    if not cfg.teacher.checkpoint:
        raise DetkdError("'teacher.checkpoint' is required for a distillation run")
    for role, m in (("student", cfg.model), ("teacher", cfg.teacher.model)):  # issue #21: cross-family Distiller later
        if ARCH_FAMILIES[m.arch] != "faster_rcnn":
            raise DetkdError(f"distillation with a {ARCH_FAMILIES[m.arch]} {role} is not supported yet "
                             f"({'model' if role == 'student' else 'teacher.model'}.arch: {m.arch})")
    teacher = build_detector(cfg.teacher.model)
    path = cfg.teacher.checkpoint
    load_matching(teacher, read_state_dict(path), f"teacher.checkpoint {path}")
    s_size, t_size = (cfg.model.min_size, cfg.model.max_size), (cfg.teacher.model.min_size, cfg.teacher.model.max_size)
    if s_size != t_size:
        log.info("teacher input size (min/max) %s, the student's %s (distill.teacher_input: %s)", t_size, s_size,
                 cfg.distill.teacher_input)
    return Distiller(student, teacher, cfg.distill, student_cfg=cfg.model, teacher_cfg=cfg.teacher.model)
