r"""Knowledge distillation of torchvision detectors: one frozen teacher, one student, of any
detector family (Faster R-CNN, RetinaNet, FCOS, SSDlite, SSD), and a family of methods
(docs/methods.md; docs/distillation_methods.md).

Each training step the Distiller runs

1. the student's training forward, its family's ``train_step`` (torchvision's own component
   methods in torchvision's order, so its hard losses and random draws are exactly
   torchvision's), keeping its maps, anchors, matched indices, sampled rows and proposals, and
   the outputs of the student modules a method taps (``student_taps``);
2. the frozen teacher, only as far as the enabled methods need: its backbone (+ FPN) on the
   student's transformed batch (re-normalized if the two configs' mean/std differ) or, when
   the teacher's config has another input size, on the images at its own size; then each
   method's own teacher work on those maps, its ``teacher_step`` (Chen et al.: the teacher's
   RPN head at the student's anchors, its box head on the student's sampled proposals);
3. every enabled method (:data:`detkd.distill.methods.METHODS`) on the
   :class:`~detkd.distill.methods.DistillRecord` of that step: Chen et al. (NeurIPS 2017;
   hint, soft CE, bounded regression), the FPN-feature methods PKD, CWD, MGD, FGD, fine-grained
   imitation and mimic (maps paired by stride, across families), and CrossKD (one-stage pairs
   of one family), several at once if configured.

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
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any, Optional

import torch
from torch import Tensor, nn
from torchvision.models.detection.image_list import ImageList

from detkd.config.schema import Config, DistillConfig, ModelConfig
from detkd.distill.methods import METHODS, BuildContext, DistillMethod, DistillRecord
from detkd.errors import DetkdError
from detkd.modeling.detector import build_detector
from detkd.modeling.families import TrainStep, check_boxes_only, family_of_model, postprocess_settings
from detkd.modeling.families.base import feature_dict
from detkd.modeling.sampling import sampling_keys, set_sampling_keys
from detkd.modeling.weights import load_matching, read_state_dict

__all__ = ["Distiller", "build_distiller"]

log = logging.getLogger(__name__)


def _scale(x: Tensor, w: float) -> Tensor:
    # Skip the multiply for w == 1 so the hard terms are torchvision's tensors themselves.
    return x if w == 1.0 else x * w


@contextmanager
def _tapped(modules: dict[str, nn.Module]) -> Iterator[dict[str, list[Tensor]]]:
    """Record ``name -> [output of each call]`` of ``modules`` while the block runs. Outputs are
    cloned as they come out (still in the graph): an in-place activation after the module (the
    ``ReLU(inplace=True)`` of torchvision's RetinaNet towers) would overwrite them."""
    out: dict[str, list[Tensor]] = {name: [] for name in modules}
    handles = [module.register_forward_hook(lambda _m, _i, o, name=name: out[name].append(o.clone()))
               for name, module in modules.items()]
    try:
        yield out
    finally:
        for handle in handles:
            handle.remove()


def _input_size(model: nn.Module) -> tuple[tuple[int, ...], int]:
    t = model.transform
    return tuple(int(v) for v in t.min_size), int(t.max_size)


def _warps(model: nn.Module) -> bool:
    """Whether the model warps every image to one fixed size (SSD, SSDlite)."""
    return bool(getattr(model.transform, "fixed_size", None))


def _teacher_at_own_size(cfg: DistillConfig, student: nn.Module, teacher: nn.Module) -> bool:
    """``distill.teacher_input``: does the teacher run its own transform on the raw images?"""
    if _warps(student):  # its maps cover the warped image, the teacher's a padded batch of other shapes
        if cfg.teacher_input == "own":
            raise DetkdError("distill.teacher_input: own is not supported for a student that warps its input to a "
                             "fixed size (SSD/SSDlite); the teacher sees the student's warped batch (student/auto)")
        if _input_size(student) != _input_size(teacher):
            log.info("the teacher sees the student's %dx%d batch (an SSD student warps every image to that size)",
                     *student.transform.fixed_size)
        return False
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


def _cloned(value: Any) -> Any:
    """``value`` with every tensor in it (also in tuples, lists, dicts) cloned: out of
    inference mode, the student's backward may save it."""
    if isinstance(value, Tensor):
        return value.clone()
    if isinstance(value, (tuple, list)):
        return type(value)(_cloned(v) for v in value)
    if isinstance(value, dict):
        return {k: _cloned(v) for k, v in value.items()}
    return value


class Distiller(nn.Module):
    r"""A torchvision detector student trained against a frozen teacher (any two detector
    families) with the methods that ``cfg`` enables (see the module docstring).

    Args:
        student: the detector being trained (``self.student``; save its ``state_dict()`` as
            the model): ``FasterRCNN``, ``RetinaNet``, ``FCOS`` or ``SSD``.
        teacher: a detector of any family (each method checks what it needs: Chen et al. a
            Faster R-CNN with the same classes and, for the RPN terms, the same anchors and
            strides; CrossKD one of the student's family). It is frozen here
            (``requires_grad=False``) and kept in eval mode whatever ``train()`` is called with.
            None: an offline teacher (``teacher.detections``), whose detections come with each
            target (``teacher_boxes``, ``teacher_labels``, ``teacher_scores``, in the image's
            frame before the transform); only the methods marked ``offline`` run from it.
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
        last_stats: Python floats from the last training forward (read lazily, so there is
            no host sync unless it is read): every running method's ``stats``, e.g.
            ``raw_<term>`` unweighted term values (Chen et al. also ``rpn_bound_active`` /
            ``rcn_bound_active``, the fraction of positive rows on which the teacher bound is
            active).

    Training ``forward(images, targets)`` returns the loss terms, already weighted, whose
    sum is the objective: the student's own (torchvision's keys in torchvision's order: Faster
    R-CNN ``loss_classifier``, ``loss_box_reg``, ``loss_objectness``, ``loss_rpn_box_reg``;
    RetinaNet/FCOS ``classification``, ``bbox_regression`` (FCOS ``bbox_ctrness``); SSD
    ``bbox_regression``, ``classification``), then each enabled method's terms, ``loss_<term>``
    for every term of :meth:`DistillMethod.terms` (each method's in docs/distillation_methods.md).
    In eval mode it is the student's inference.
    """

    def __init__(
        self,
        student: nn.Module,
        teacher: Optional[nn.Module],
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
        if teacher is not None:
            teacher.requires_grad_(False)
            teacher.eval()
        for model, who in ((student, "student"), (teacher, "teacher")):
            if model is not None:
                check_boxes_only(model, who)
        self.student_family = family_of_model(student)
        self.own_size = teacher is not None and _teacher_at_own_size(cfg, student, teacher)
        ctx = BuildContext(cfg, student, teacher, student_cfg, teacher_cfg, self.own_size)
        ref = next(student.parameters())
        self.methods = nn.ModuleDict()
        for name, section in _sections(cfg):
            ctx.name = name
            if teacher is None and not METHODS[name].offline:
                raise DetkdError(f"distill.{name} needs the teacher model; an offline teacher "
                                 "(teacher.detections) feeds only the methods that read detections")
            method = METHODS[name].build(section, ctx)
            if method is not None:
                method.name = name
                self.methods[name] = method.to(ref.device)

        if teacher_renorm is None:
            st = student.transform
            tt = st if teacher is None else teacher.transform
            teacher_renorm = (st.image_mean, st.image_std, tt.image_mean, tt.image_std)
        stats = [torch.as_tensor([float(v) for v in vals]).view(-1, 1, 1) for vals in teacher_renorm]
        self.renorm = not self.own_size and not (torch.equal(stats[0], stats[2]) and torch.equal(stats[1], stats[3]))
        for name, value in zip(("mean_s", "std_s", "mean_t", "std_t"), stats):
            self.register_buffer(f"_renorm_{name}", value.to(ref.device), persistent=False)

        self.epoch = 0
        self._keys: Optional[list[int]] = None
        self._stats: dict[str, Tensor] = {}
        if self.renorm:
            log.info("teacher input re-normalized from the student's mean/std %s/%s to %s/%s",
                     *[list(map(float, s.flatten())) for s in stats])

    # ------------------------------------------------------------------ modes and schedule

    def train(self, mode: bool = True) -> "Distiller":
        super().train(mode)
        if self.teacher is not None:
            self.teacher.eval()  # BatchNorm statistics and dropout of the teacher stay fixed
        return self

    def set_epoch(self, epoch: int) -> None:
        """Called by the trainer each epoch; ``start_epoch <= epoch < stop_epoch``
        switches the distillation terms on."""
        self.epoch = int(epoch)

    def set_image_keys(self, keys: Optional[Sequence[int]]) -> None:
        """Per-image keys (run seed, epoch, image id) for the next training forward: the
        student's keyed RPN/RoI samplers and the methods' random draws (MGD's masks) follow the
        image, whatever the batch split or process."""
        self._keys = None if keys is None else [int(k) for k in keys]
        set_sampling_keys(self.student, keys)

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
        if self.teacher is not None and self.teacher.training:  # someone called teacher.train() directly
            self.teacher.eval()
        methods = self.active_methods()
        self._stats = {}
        if targets is not None and any(bool(t.get("unlabeled", False)) for t in targets):
            targets = self._pseudo_labelled(images, targets)
        taps = {name: module for m in methods for name, module in m.student_taps().items()}
        with _tapped(taps) as tapped:
            step = self.student_family.train_step(self.student, images, targets)

        weights: dict[str, float] = {}
        for method in self.methods.values():
            weights.update(method.hard_weights(self.distilling))
        # The student's own terms in torchvision's order: with every distillation term off,
        # sum(losses.values()) is torchvision's sum bit for bit.
        losses: dict[str, Tensor] = {k: _scale(v, weights.get(k, 1.0)) for k, v in step.losses.items()}
        if not methods:
            return losses

        record = self._record(images, step, tapped, methods)
        for method in methods:
            losses.update(method(record))
            self._stats.update(method.stats)
        return losses

    def _record(self, raw_images: list[Tensor], step: TrainStep, taps: dict[str, list[Tensor]],
                methods: list[DistillMethod]) -> DistillRecord:
        """Run the teacher as far as ``methods`` need and collect what they read."""
        levels = list(dict.fromkeys(level for m in methods for level in m.teacher_levels()))
        image_list, targets = step.images, step.targets
        sizes = image_list.image_sizes
        t_input, t_sizes, t_features = image_list.tensors, sizes, {}  # offline: detections came with the targets
        with torch.inference_mode():
            if self.teacher is not None and self.own_size:  # its own transform (eval mode: no randomness)
                t_list, _ = self.teacher.transform(raw_images)
                t_input, t_sizes = t_list.tensors, t_list.image_sizes
            elif self.teacher is not None:
                t_input = self._teacher_input(image_list)
            if self.teacher is not None:
                t_features = feature_dict(self.teacher.backbone(t_input))
        # Inference tensors cannot be saved for the student's backward: clone the few the
        # methods use into normal tensors (cheap next to the teacher's forward).
        rec = DistillRecord(
            features=step.features,
            teacher_features={k: t_features[k].clone() for k in levels},
            targets=targets, image_sizes=sizes, batch_shape=tuple(image_list.tensors.shape[-2:]),
            teacher_image_sizes=t_sizes, teacher_batch_shape=tuple(t_input.shape[-2:]),
            keys=self._image_keys(len(targets)) if any(m.needs_keys for m in methods) else [],
            step=step, taps=taps, input_sizes=[tuple(img.shape[-2:]) for img in raw_images],
        )
        with torch.inference_mode():  # each method's own teacher work (Chen et al.: the teacher's heads)
            outputs = {m.name: m.teacher_step(rec, self.teacher, t_features) for m in methods}
        rec.teacher_outputs = {name: _cloned(out) for name, out in outputs.items() if out is not None}
        return rec

    def _pseudo_labelled(self, images: list[Tensor], targets: list[dict[str, Tensor]]) -> list[dict[str, Tensor]]:
        """The targets with the teacher's confident detections (score >= ``distill.pseudo_thresh``)
        as the boxes of every unlabeled image (``target["unlabeled"]``): hard pseudo-labels for the
        student's own loss and for every method that reads ground truth. An online teacher runs its
        eval forward (its own transform) on those images; an offline one's detections came with them."""
        idx = [i for i, t in enumerate(targets) if bool(t.get("unlabeled", False))]
        if self.teacher is None:
            found = [{"boxes": targets[i]["teacher_boxes"], "labels": targets[i]["teacher_labels"],
                      "scores": targets[i]["teacher_scores"]} for i in idx]
        else:
            with postprocess_settings(self.teacher, score_thresh=self.cfg.pseudo_thresh), torch.inference_mode():
                found = [{k: v.clone() for k, v in d.items()} for d in self.teacher([images[i] for i in idx])]
        out = list(targets)
        pseudo = 0
        for i, d in zip(idx, found):
            size = d["boxes"][:, 2:] - d["boxes"][:, :2]
            keep = (d["scores"] >= self.cfg.pseudo_thresh) & (d["labels"] > 0) & (size >= 1.0).all(dim=1)
            out[i] = {**targets[i], "boxes": d["boxes"][keep].to(targets[i]["boxes"].dtype),
                      "labels": d["labels"][keep].to(torch.int64)}
            pseudo += int(keep.sum())
        self._stats["pseudo_boxes"] = torch.tensor(pseudo / len(idx))
        self._stats["unlabeled_images"] = torch.tensor(float(len(idx)))
        return out

    def _image_keys(self, num_images: int) -> list[int]:
        """The per-image keys the trainer set (:meth:`set_image_keys`, or on the student's keyed
        samplers), so random masks follow the image, not the batch split; else fresh draws from
        the global RNG."""
        if self._keys is not None and len(self._keys) == num_images:
            return list(self._keys)
        keys = sampling_keys(self.student)
        if keys is not None:
            return keys
        return [int(k) for k in torch.randint(0, 2**62, (num_images,))]

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

    def extra_repr(self) -> str:
        return f"methods={list(self.methods)}, terms={sorted(self.terms)}, renorm={self.renorm}, own_size={self.own_size}"


def build_distiller(cfg: Config, student: nn.Module) -> Distiller:
    """Build the teacher from ``cfg.teacher.model``, load ``cfg.teacher.checkpoint``
    (a mismatch is a one-line :class:`DetkdError` naming the file), freeze it, check
    compatibility (each method's ``build``) and wrap ``student`` in a :class:`Distiller`."""
    if cfg.teacher is None or cfg.distill is None:
        raise DetkdError("a distillation run needs both a 'teacher' and a 'distill' section")
    if cfg.teacher.detections:  # an offline teacher: its detections ride with the targets (detkd.data)
        return Distiller(student, None, cfg.distill, student_cfg=cfg.model)
    if not cfg.teacher.checkpoint:
        raise DetkdError("'teacher.checkpoint' is required for a distillation run")
    teacher = build_detector(cfg.teacher.model)
    path = cfg.teacher.checkpoint
    load_matching(teacher, read_state_dict(path), f"teacher.checkpoint {path}")
    s_size, t_size = (cfg.model.min_size, cfg.model.max_size), (cfg.teacher.model.min_size, cfg.teacher.model.max_size)
    if s_size != t_size:
        log.info("teacher input size (min/max) %s, the student's %s (distill.teacher_input: %s)", t_size, s_size,
                 cfg.distill.teacher_input)
    return Distiller(student, teacher, cfg.distill, student_cfg=cfg.model, teacher_cfg=cfg.teacher.model)
