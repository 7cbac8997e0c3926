"""What every classification method shares, and the shape of a student method.

A method is a class in its own file here with its config section (``config``: a dataclass
whose fields carry their ranges, ``method.<name>`` in YAML) and what it needs:
``teachers_needed`` (``"none"``, ``"one"`` or ``"several"`` frozen teachers), ``peer_prefix``
(the name prefix of the K networks an online method trains, ``"peer"`` / ``"sub"``; None: one
student) and ``semi_supervised`` (whether ``data.labelled_fraction`` < 1 is supported). The
loader's checks, the list of names and the checkpoint layout are derived from these
(:data:`detkd.cls.methods.METHODS`).

Every method is built as ``cls(cfg, nets, teachers, data, iters_per_epoch, total_iters)``
(``nets``: the student, or the K peers) and exposes ``step(x, y, epoch) -> {term: float}``
(None when a non-finite loss made :class:`~detkd.engine.loop.NonFiniteGuard` skip the whole
step), ``eval_logits(x) -> {name: logits}``, ``train()`` / ``eval()`` (the modes of every
trained module), ``networks`` (name -> trainable network, saved as weights files), its
learnable auxiliary modules ``aux`` (None: none; in ``last.pth`` as ``aux``) and the
optimizers/schedulers (stepped once per iteration by :meth:`step`).

:class:`StudentMethod` is the shape of the methods with one student (+ auxiliary modules)
and frozen teachers, one optimizer: ``loss = ce_weight * CE + sum of terms(out)``; a method
of that shape writes only :meth:`StudentMethod.setup` (its auxiliary modules) and
:meth:`StudentMethod.terms` (its loss terms).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import ClassVar, Literal, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from detkd.cls.data import UNLABELLED, ClsData
from detkd.cls.models import feature_shapes
from detkd.cls.schema import ClsConfig
from detkd.engine.loop import NonFiniteGuard
from detkd.engine.optim import build_optimizer, build_scheduler, scaled_lr
from detkd.errors import DetkdError
from detkd.utils.logger import MetricsWriter


def labelled_ce(logits: Tensor, labels: Tensor) -> Tensor:
    """Mean CE over samples with a visible label; 0 (not NaN) when a batch has none."""
    mask = labels != UNLABELLED
    if bool(mask.all()):
        return F.cross_entropy(logits.float(), labels)
    return F.cross_entropy(logits.float()[mask], labels[mask], reduction="sum") / mask.sum().clamp_min(1)


def stage_index(idx: int, n: int, key: str, who: str) -> int:
    """Stage ``idx`` (negative: from the end) of ``n`` stages as 0..n-1; an error naming ``key``."""
    if not -n <= idx < n:
        raise DetkdError(f"'{key}' = {idx} is out of range for the {who} ({n} stages: 0..{n - 1} or -{n}..-1)")
    return idx % n


class ClsMethod:
    """The part every classification method shares: its optimizers with their per-iteration
    schedulers, one backward/step helper, evaluation mode and checkpoint restore."""

    config: ClassVar[type]  # the section method.<name>
    teachers_needed: ClassVar[Literal["none", "one", "several"]] = "none"
    peer_prefix: ClassVar[Optional[str]] = None  # online methods: name prefix of the K trained networks
    semi_supervised: ClassVar[bool] = False  # data.labelled_fraction < 1 supported
    aux: Optional[nn.Module] = None  # learnable modules beside the networks (in last.pth as "aux")

    def __init__(self, cfg: ClsConfig, iters_per_epoch: int, total_iters: int) -> None:
        self.cfg = cfg
        self.iters_per_epoch, self.total_iters = iters_per_epoch, total_iters
        self.optimizers: list[torch.optim.Optimizer] = []
        self.schedulers: list[torch.optim.lr_scheduler.LRScheduler] = []
        self.param_groups: list[list[nn.Parameter]] = []
        # The loop replaces it with train.nonfinite_policy's guard; alone, a non-finite loss stops.
        self.iteration = 0  # counted (not skipped) iterations: the number of scheduler steps
        self.nonfinite = NonFiniteGuard("stop", 0, cfg.output_dir, logging.getLogger("detkd"), MetricsWriter(None))

    def add_optimizer(self, params: Sequence[nn.Parameter], lr: float | None = None) -> int:
        params = [p for p in params if p.requires_grad]
        ocfg = self.cfg.train.optimizer
        base_lr = scaled_lr(ocfg, self.cfg.train.batch_size, 1) if lr is None else lr
        opt = build_optimizer(params, ocfg, base_lr)
        self.optimizers.append(opt)
        self.schedulers.append(build_scheduler(opt, self.cfg.train.scheduler, self.iters_per_epoch,
                                               self.total_iters))
        self.param_groups.append(params)
        return len(self.optimizers) - 1

    def backward_step(self, total: Tensor, terms: dict[str, Tensor], which: Sequence[int]) -> bool:
        """Backward ``total`` and step the optimizers ``which``; False (nothing stepped) when
        the loss is non-finite and the policy skips it."""
        if self.nonfinite.skip(terms, total, self.iteration):
            return False
        for i in which:
            self.optimizers[i].zero_grad(set_to_none=True)
        total.backward()
        for i in which:
            if self.cfg.train.clip_grad_norm is not None:
                nn.utils.clip_grad_norm_(self.param_groups[i], self.cfg.train.clip_grad_norm)
            self.optimizers[i].step()
        return True

    def scheduler_step(self) -> None:
        for s in self.schedulers:
            s.step()
        self.iteration += 1

    def eval(self) -> None:
        """Evaluation mode for every trained module (before :meth:`eval_logits`)."""
        for net in self.networks.values():
            net.eval()

    @property
    def lr(self) -> float:
        return self.optimizers[0].param_groups[0]["lr"]

    def aux_state(self) -> dict:
        """The auxiliary modules' part of ``last.pth`` (nothing when the method has none)."""
        return {} if self.aux is None else {"aux": self.aux.state_dict()}

    def optimizer_state(self) -> dict:
        return {"optimizers": [o.state_dict() for o in self.optimizers],
                "schedulers": [s.state_dict() for s in self.schedulers]}

    def load_state(self, ckpt: dict) -> None:
        """Restore a ``last.pth`` (networks, auxiliary modules, optimizers, schedulers)."""
        nets = ckpt["networks"]
        if set(nets) != set(self.networks) or len(ckpt["optimizers"]) != len(self.optimizers):
            raise DetkdError(f"--resume: the checkpoint holds networks {sorted(nets)} and "
                             f"{len(ckpt['optimizers'])} optimizer(s), this run has {sorted(self.networks)} and "
                             f"{len(self.optimizers)}")
        for key, net in self.networks.items():
            net.load_state_dict(nets[key])
        if self.aux is not None and "aux" in ckpt:
            self.aux.load_state_dict(ckpt["aux"])
        for opt, state in zip(self.optimizers, ckpt["optimizers"]):
            opt.load_state_dict(state)
        for sched, state in zip(self.schedulers, ckpt["schedulers"]):
            sched.load_state_dict(state)
        self.iteration = int(ckpt["iter"])


@dataclass
class StudentOutputs:
    """One batch as a student method's :meth:`StudentMethod.terms` reads it: the student's
    logits and stage maps (with gradient), each teacher's (no gradient), labels, epoch."""

    logits: Tensor
    features: list[Tensor]
    teacher_logits: list[Tensor]
    teacher_features: list[list[Tensor]]
    labels: Tensor
    epoch: int


class StudentMethod(ClsMethod):
    """One student (+ its auxiliary modules ``aux``) and frozen teachers, one optimizer:
    ``loss = ce_weight * CE(labelled samples) + sum of terms(out)``."""

    def __init__(self, cfg: ClsConfig, nets: list[nn.Module], teachers: list[nn.Module], data: ClsData,
                 iters_per_epoch: int, total_iters: int) -> None:
        super().__init__(cfg, iters_per_epoch, total_iters)
        self.method_cfg = cfg.method
        student = nets[0]
        self.student, self.teachers = student, teachers
        self.networks = {"student": student}
        self.aux = nn.ModuleDict()
        device = next(student.parameters()).device
        size, c_in = data.image_size, data.in_channels
        s_shapes = feature_shapes(student, c_in, size)
        t_shapes = [feature_shapes(t, c_in, size) for t in teachers]
        self.options = self.method_cfg.options  # the method's own section (None without options)
        self.setup(s_shapes, t_shapes)
        self.aux.to(device)
        self.add_optimizer([*student.parameters(), *self.aux.parameters()])

    def setup(self, s_shapes: list[tuple[int, int, int]], t_shapes: list[list[tuple[int, int, int]]]) -> None:
        """Build the method's auxiliary modules into ``self.aux`` from the stage map shapes
        (C, H, W) of the student and of each teacher; none by default."""

    def terms(self, out: StudentOutputs) -> dict[str, Tensor]:
        """The method's loss terms beside the cross-entropy (weights applied); none by default."""
        return {}

    def train(self) -> None:
        self.student.train()
        self.aux.train()
        for t in self.teachers:
            t.eval()

    def eval(self) -> None:
        super().eval()
        self.aux.eval()

    def loss_terms(self, x: Tensor, y: Tensor, epoch: int) -> dict[str, Tensor]:
        logits, feats = self.student(x, return_features=True)
        terms: dict[str, Tensor] = {"ce": self.method_cfg.ce_weight * labelled_ce(logits, y)}
        with torch.no_grad():
            outs = [t(x, return_features=True) for t in self.teachers]
        out = StudentOutputs(logits, feats, [o[0] for o in outs], [o[1] for o in outs], y, epoch)
        return {**terms, **self.terms(out)}

    def step(self, x: Tensor, y: Tensor, epoch: int) -> dict[str, float] | None:
        terms = self.loss_terms(x, y, epoch)
        total = torch.stack(list(terms.values())).sum()
        if not self.backward_step(total, terms, [0]):
            return None
        self.scheduler_step()
        return {**{k: v.item() for k, v in terms.items()}, "loss": total.item()}

    @torch.no_grad()
    def eval_logits(self, x: Tensor) -> dict[str, Tensor]:
        return {"student": self.student(x)}
