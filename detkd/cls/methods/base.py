"""The classification methods: what is trained, which losses, which optimizers.

Three shapes of training step:

* :class:`StudentMethod` — one student (+ auxiliary regressors) and frozen teachers:
  ``baseline``, ``kd``, ``fitnet``, ``at``, ``sp``, ``aver``, ``ebkd``, ``aekd``, ``camkd``,
  ``fitnet_mkd`` and the teacher-free self-distillation ``scd``; one optimizer.
* :class:`DMLMethod` — K peers, one optimizer each; ``sequential`` updates follow DML's
  Algorithm 1 (peer k is updated against the current predictions of the others, which are
  recomputed after each update), ``simultaneous`` updates all peers from one forward.
* :class:`FFLMethod` — K sub-networks (one optimizer) and the fusion module (its own
  optimizer), one joint loss.

Every method exposes ``step(x, y, epoch) -> {term: float}`` (None when a
non-finite loss made :class:`~detkd.engine.loop.NonFiniteGuard` skip the whole step), ``eval_logits(x) ->
{name: logits}``, ``train()`` / ``eval()`` (the modes of every trained module), ``networks`` (name ->
trainable network, saved as weights files) and the optimizers/schedulers (stepped once per
iteration by :meth:`step`).
"""

from __future__ import annotations

import logging
from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from detkd.cls.config import ClsConfig, FFLOptions, MethodConfig
from detkd.cls.data import UNLABELLED, ClsData
from detkd.cls.models import feature_shapes
from detkd.engine.loop import NonFiniteGuard
from detkd.engine.optim import build_optimizer, build_scheduler, scaled_lr
from detkd.errors import DetkdError
from detkd.losses.kd import ConvRegressor, at_loss, fitnet_loss, kd_loss, sp_loss
from detkd.losses.multi_teacher import (CAMKDRegressors, aekd_loss, aver_loss, camkd_inter_loss, camkd_kd_loss,
                                        ebkd_loss, fitnet_mkd_loss)
from detkd.losses.online import FusionModule, dml_losses, ffl_losses, scd_loss
from detkd.utils.logger import MetricsWriter


def labelled_ce(logits: Tensor, labels: Tensor) -> Tensor:
    """Mean CE over samples with a visible label; 0 (not NaN) when a batch has none."""
    mask = labels != UNLABELLED
    if bool(mask.all()):
        return F.cross_entropy(logits.float(), labels)
    return F.cross_entropy(logits.float()[mask], labels[mask], reduction="sum") / mask.sum().clamp_min(1)


def _stage_index(idx: int, n: int, key: str, who: str) -> int:
    if not -n <= idx < n:
        raise DetkdError(f"'{key}' = {idx} is out of range for the {who} ({n} stages: 0..{n - 1} or -{n}..-1)")
    return idx % n


class _MethodWithOptimizers:
    """The part every classification method shares: its optimizers with their per-iteration
    schedulers, one backward/step helper, evaluation mode and checkpoint restore."""

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
        aux = getattr(self, "aux", None)
        if aux is not None and "aux" in ckpt:
            aux.load_state_dict(ckpt["aux"])
        for opt, state in zip(self.optimizers, ckpt["optimizers"]):
            opt.load_state_dict(state)
        for sched, state in zip(self.schedulers, ckpt["schedulers"]):
            sched.load_state_dict(state)
        self.iteration = int(ckpt["iter"])


# ------------------------------------------------------------------------- one student


class StudentMethod(_MethodWithOptimizers):
    def __init__(self, cfg: ClsConfig, student: nn.Module, teachers: list[nn.Module], data: ClsData,
                 iters_per_epoch: int, total_iters: int) -> None:
        super().__init__(cfg, iters_per_epoch, total_iters)
        self.method_cfg: MethodConfig = cfg.method
        self.name = self.method_cfg.name
        self.student, self.teachers = student, teachers
        self.networks = {"student": student}
        self.aux = nn.ModuleDict()
        device = next(student.parameters()).device
        size, c_in = data.image_size, data.in_channels
        s_shapes = feature_shapes(student, c_in, size)
        t_shapes = [feature_shapes(t, c_in, size) for t in teachers]
        opts = self.options = self.method_cfg.options  # the method's own section (None for baseline)
        if self.name == "fitnet":
            si = _stage_index(opts.stage, len(s_shapes), "method.fitnet.stage", "student")
            ti_raw = opts.teacher_stage if opts.teacher_stage is not None else opts.stage
            ti = _stage_index(ti_raw, len(t_shapes[0]), "method.fitnet.teacher_stage", "teacher")
            try:
                self.aux["regressor"] = ConvRegressor(s_shapes[si], t_shapes[0][ti])
            except ValueError as exc:
                raise DetkdError(f"fitnet: student stage {si} and teacher stage {ti} cannot be paired: {exc}; "
                                 f"choose other stages (method.fitnet.stage / method.fitnet.teacher_stage)") from None
            self.fitnet_stages = (si, ti)
        elif self.name == "at":
            ns, nt = len(s_shapes), len(t_shapes[0])
            if opts.stages is None:
                n = min(ns, nt)
                pairs = [(ns - n + i, nt - n + i) for i in range(n)]
            else:
                pairs = []
                for idx in opts.stages:
                    si = _stage_index(idx, ns, "method.at.stages", "student")
                    ti = si + nt - ns  # same distance from the deepest stage
                    if not 0 <= ti < nt:
                        raise DetkdError(f"method.at.stages: student stage {si} has no teacher stage at the same "
                                         f"depth from the end (teacher has {nt} stages)")
                    pairs.append((si, ti))
            self.at_pairs = pairs
        elif self.name == "sp":
            self.sp_stages = (_stage_index(opts.stage, len(s_shapes), "method.sp.stage", "student"),
                              _stage_index(opts.stage, len(t_shapes[0]), "method.sp.stage", "teacher"))
        elif self.name in ("camkd", "fitnet_mkd"):
            self.aux["regressors"] = CAMKDRegressors(s_shapes[-1][0], [s[-1] for s in t_shapes])
        self.aux.to(device)
        self.add_optimizer([*student.parameters(), *self.aux.parameters()])

    def train(self) -> None:
        self.student.train()
        self.aux.train()
        for t in self.teachers:
            t.eval()

    def eval(self) -> None:
        super().eval()
        self.aux.eval()

    def loss_terms(self, x: Tensor, y: Tensor, epoch: int) -> dict[str, Tensor]:
        opts, name = self.options, self.name
        logits, feats = self.student(x, return_features=True)
        terms: dict[str, Tensor] = {"ce": self.method_cfg.ce_weight * labelled_ce(logits, y)}
        if name == "baseline":
            return terms
        if name == "scd":
            terms["scd"] = opts.beta * scd_loss(feats, opts.target)
            return terms
        with torch.no_grad():
            outs = [t(x, return_features=True) for t in self.teachers]
        t_logits = [out[0] for out in outs]
        t_feats = [out[1] for out in outs]
        if name == "kd":
            terms["kd"] = opts.weight * kd_loss(logits, t_logits[0], opts.temperature)
        elif name == "fitnet":
            si, ti = self.fitnet_stages
            terms["fitnet"] = opts.weight * fitnet_loss(self.aux["regressor"](feats[si]), t_feats[0][ti])
        elif name == "at":
            terms["at"] = opts.weight * torch.stack(
                [at_loss(feats[si], t_feats[0][ti]) for si, ti in self.at_pairs]).sum()
        elif name == "sp":
            si, ti = self.sp_stages
            terms["sp"] = opts.weight * sp_loss(feats[si], t_feats[0][ti])
        elif name == "aver":
            terms["kd"] = opts.weight * aver_loss(logits, t_logits, opts.temperature)
        elif name == "ebkd":
            terms["kd"] = opts.weight * ebkd_loss(logits, t_logits, opts.temperature)
        elif name == "aekd":
            terms["kd"] = opts.weight * aekd_loss(logits, t_logits, opts.temperature, c_tol=opts.c_tol)
        elif name == "camkd":
            terms["kd"] = opts.weight * camkd_kd_loss(logits, t_logits, y, opts.temperature)
            if epoch >= opts.inter_start_epoch:
                regressed = self.aux["regressors"](feats[-1])
                classifiers: list[Callable[[Tensor], Tensor]] = [t.classifier_from_features for t in self.teachers]
                terms["inter"] = opts.inter_weight * camkd_inter_loss(
                    regressed, [f[-1] for f in t_feats], classifiers, y,
                    detach_weights=opts.detach_inter_weights)
        elif name == "fitnet_mkd":
            regressed = self.aux["regressors"](feats[-1])
            terms["fitnet"] = opts.weight * fitnet_mkd_loss(regressed, [f[-1] for f in t_feats])
        else:  # pragma: no cover - the config schema lists the methods
            raise DetkdError(f"unknown method '{name}'")
        return terms

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

    def aux_state(self) -> dict:
        return {"aux": self.aux.state_dict()}


# ------------------------------------------------------------------------- DML


class DMLMethod(_MethodWithOptimizers):
    def __init__(self, cfg: ClsConfig, peers: list[nn.Module], iters_per_epoch: int, total_iters: int) -> None:
        super().__init__(cfg, iters_per_epoch, total_iters)
        self.peers = peers
        self.networks = {f"peer{k}": p for k, p in enumerate(peers)}
        self.mode = "ensemble" if cfg.method.name == "dml_e" else "peers"
        self.sequential = cfg.method.options.update == "sequential"
        for p in peers:
            self.add_optimizer(list(p.parameters()))

    def train(self) -> None:
        for p in self.peers:
            p.train()

    def _mask(self, y: Tensor) -> Tensor | None:
        mask = y != UNLABELLED
        return None if bool(mask.all()) else mask

    def step(self, x: Tensor, y: Tensor, epoch: int) -> dict[str, float] | None:
        mask = self._mask(y)
        k_peers = len(self.peers)
        out: dict[str, float] = {}
        stepped = 0
        if self.sequential:
            # Algorithm 1: peer k is updated against the others' current predictions. Outputs
            # of peers not yet updated in this iteration are still current; the updated peer's
            # are recomputed (no grad) before the next peer's update.
            with torch.no_grad():
                current = [p(x) for p in self.peers[1:]]
            current.insert(0, None)  # peer 0's logits are computed with grad below
            for k, peer in enumerate(self.peers):
                logits_k = peer(x)
                logits = [logits_k if l == k else current[l] for l in range(k_peers)]
                loss = dml_losses(logits, y, self.mode, mask)[k]
                # A skipped peer keeps its weights; the others still learn from this batch.
                stepped += self.backward_step(loss, {f"peer{k}": loss}, [k])
                out[f"peer{k}"] = loss.item()
                if k < k_peers - 1:
                    with torch.no_grad():
                        current[k] = peer(x)
        else:
            logits = [p(x) for p in self.peers]
            losses = dml_losses(logits, y, self.mode, mask)
            total = torch.stack(losses).sum()  # each loss reaches only its own peer (targets detached)
            stepped += self.backward_step(total, {f"peer{k}": l for k, l in enumerate(losses)}, range(k_peers))
            out = {f"peer{k}": l.item() for k, l in enumerate(losses)}
        if not stepped:
            return None
        self.scheduler_step()
        out["loss"] = sum(out.values())
        return out

    @torch.no_grad()
    def eval_logits(self, x: Tensor) -> dict[str, Tensor]:
        outs = {name: p(x) for name, p in self.networks.items()}
        outs["ensemble"] = torch.stack(list(outs.values())).mean(dim=0)
        return outs

    def aux_state(self) -> dict:
        return {}


# ------------------------------------------------------------------------- FFL


class FFLMethod(_MethodWithOptimizers):
    def __init__(self, cfg: ClsConfig, subs: list[nn.Module], data: ClsData, iters_per_epoch: int,
                 total_iters: int) -> None:
        super().__init__(cfg, iters_per_epoch, total_iters)
        self.options: FFLOptions = cfg.method.options
        self.subs = subs
        channels = [feature_shapes(s, data.in_channels, data.image_size)[-1][0] for s in subs]
        device = next(subs[0].parameters()).device
        self.fusion = FusionModule(channels, data.num_classes, align_channels=self.options.align_channels).to(device)
        self.networks = {**{f"sub{k}": s for k, s in enumerate(subs)}, "fusion": self.fusion}
        self.add_optimizer([p for s in subs for p in s.parameters()])
        self.add_optimizer(list(self.fusion.parameters()), lr=self.options.fusion_lr)

    def train(self) -> None:
        for s in self.subs:
            s.train()
        self.fusion.train()

    def step(self, x: Tensor, y: Tensor, epoch: int) -> dict[str, float] | None:
        outs = [s(x, return_features=True) for s in self.subs]
        fused = self.fusion([o[1][-1] for o in outs])
        opts = self.options
        res = ffl_losses([o[0] for o in outs], fused, y, epoch, opts.temperature, opts.rampup_epochs, opts.eps)
        terms = {**{f"ce{k}": c for k, c in enumerate(res["ce"])}, "ce_fused": res["ce_fused"],
                 "kd_subs": res["kd_subs"], "kd_fused": res["kd_fused"]}
        if not self.backward_step(res["total"], terms, [0, 1]):
            return None
        self.scheduler_step()
        return {**{k: v.item() for k, v in terms.items()}, "w": res["weight"], "loss": res["total"].item()}

    @torch.no_grad()
    def eval_logits(self, x: Tensor) -> dict[str, Tensor]:
        outs = [s(x, return_features=True) for s in self.subs]
        res = {f"sub{k}": o[0] for k, o in enumerate(outs)}
        res["fused"] = self.fusion([o[1][-1] for o in outs])
        res["ensemble"] = torch.stack([o[0] for o in outs]).mean(dim=0)
        return res

    def aux_state(self) -> dict:
        return {}
