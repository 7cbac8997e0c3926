"""What a detection run does at each point of the driver (:mod:`detkd.engine.driver`).

:class:`DetectionTask` holds a :class:`Run` (what stays fixed: config, device, data, log and
metrics files) and a :class:`TrainState` (what a step changes: model, optimizer, scheduler,
AMP scaler, the :class:`~detkd.engine.loop.Position`, the best metric); its methods are the
steps: :meth:`~DetectionTask.run_step` (forward, non-finite policy, backward, clipping,
optimizer and per-iteration LR step), :meth:`~DetectionTask.evaluate`,
:meth:`~DetectionTask.save_checkpoint` (``last.pth``/``best.pth`` that resume exactly: RNG
states, sampler position, layout); :func:`finish` writes the final files. The model is a
:class:`detkd.engine.model.TrainModel`: a plain detector of any family or a Distiller.
Building them is :mod:`detkd.engine.trainer`'s job.
"""

from __future__ import annotations

import json
import logging
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader

from detkd.config.schema import Config
from detkd.engine.checkpoint import run_record
from detkd.engine.loop import NonFiniteGuard, Position
from detkd.engine.model import TrainModel
from detkd.evaluation.inference import evaluate_detector
from detkd.modeling.checkpoint_io import VAL_IMAGES_KEPT, model_state
from detkd.modeling.sampling import sample_key
from detkd.utils import dist
from detkd.utils.atomic import atomic_save, atomic_write_text
from detkd.engine.health import GradientWatch
from detkd.utils.logger import MetricsWriter, format_terms

Step = tuple[dict[str, torch.Tensor], torch.Tensor]  # the loss terms and their sum


@dataclass
class DetectionData:
    train_set: Any
    val_set: Any
    sampler: Any  # ResumableSampler, or MixedSampler with data.unlabeled
    loader: DataLoader
    val_loader: DataLoader

    @property
    def class_names(self) -> list[str]:
        return list(self.train_set.class_names)


@dataclass
class Run:
    """What stays fixed for one training run."""

    cfg: Config
    device: torch.device
    world: int
    out: Path
    config_hash: str
    amp: bool
    progress: bool | None
    logger: logging.Logger
    data: DetectionData
    metrics: MetricsWriter
    nonfinite: NonFiniteGuard


@dataclass
class TrainState:
    """What the steps change; ``forward`` is ``model`` or its DistributedDataParallel wrapper."""

    model: TrainModel
    forward: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    scaler: torch.amp.GradScaler
    params: list[nn.Parameter]
    lr: float
    pos: Position
    best: float | None = None
    metrics: dict[str, float] = field(default_factory=dict)  # of the last evaluation


def to_device(images: list[torch.Tensor], targets: list[dict], device: torch.device):
    images = [img.to(device, non_blocking=True) for img in images]
    targets = [{k: (v.to(device, non_blocking=True) if torch.is_tensor(v) else v) for k, v in t.items()}
               for t in targets]
    return images, targets


@dataclass
class DetectionTask:
    """The driver's :class:`~detkd.engine.driver.Task` for a detection run."""

    run: Run
    state: TrainState
    _gradients: GradientWatch | None = None

    @property
    def pos(self) -> Position:
        return self.state.pos

    def start_epoch(self, epoch: int) -> DataLoader:
        run, state = self.run, self.state
        run.data.sampler.set_epoch(epoch, start=state.pos.iter_in_epoch * run.cfg.train.batch_size)
        run.data.train_set.set_epoch(epoch)
        state.model.set_epoch(epoch)  # distillation terms may be scheduled by epoch
        state.forward.train()
        return run.data.loader

    def run_step(self, batch: tuple[list[torch.Tensor], list[dict]]) -> Step | None:
        """One optimizer step: ``(loss terms, their sum)``, or None when the loss was not finite
        and the policy skipped the step (gradients dropped, weights untouched)."""
        run, state = self.run, self.state
        cfg, pos = run.cfg, state.pos
        images, targets = batch
        # Per-image keys (RPN/RoI sampling, random masks): the same draws whatever the batch split or rank.
        state.model.set_image_keys([sample_key(cfg.train.seed, pos.epoch, int(t["image_id"])) for t in targets])
        images, targets = to_device(images, targets, run.device)
        with torch.autocast("cuda", enabled=True) if run.amp else nullcontext():
            losses = state.forward(images, targets)
        total = sum(losses.values())
        if run.nonfinite.skip(losses, total, pos.iteration):
            state.optimizer.zero_grad(set_to_none=True)
            return None
        state.optimizer.zero_grad(set_to_none=True)
        state.scaler.scale(total).backward()
        if cfg.train.clip_grad_norm is not None:
            state.scaler.unscale_(state.optimizer)
            nn.utils.clip_grad_norm_(state.params, cfg.train.clip_grad_norm)
        state.scaler.step(state.optimizer)
        state.scaler.update()
        state.scheduler.step()
        return losses, total

    def terms(self, step: Step) -> dict[str, torch.Tensor]:
        """The loss terms and, for the health monitor, each student module's gradient norm."""
        if self.run.cfg.train.health == "off":
            return step[0]
        if self._gradients is None:
            self._gradients = GradientWatch(self.state.model.student)
        return {**step[0], **self._gradients.norms()}

    def log_values(self, step: Step) -> dict[str, float]:
        """Every term and the model's own statistics, averaged over the processes."""
        losses, total = step
        values = {k: v.item() for k, v in losses.items()}
        values["loss"] = total.item()
        values.update(self.state.model.log_stats())
        return dist.reduce_mean(values)

    def lr(self) -> float:
        return self.state.optimizer.param_groups[0]["lr"]

    def evaluate(self, epoch: int) -> None:
        """Evaluate the student (sharded over the processes); a new best ``train.best_metric``
        writes ``best.pth``."""
        run, state = self.run, self.state
        cfg = run.cfg
        metrics = evaluate_detector(state.model.student, run.data.val_loader, run.data.val_set, cfg.eval.metric,
                                    run.device, progress=run.progress)
        if dist.is_main():
            run.logger.info("eval epoch %d iter %d: %s", epoch, state.pos.iteration, format_terms(metrics, 4))
            run.metrics.write({"type": "eval", "epoch": epoch, "iter": state.pos.iteration, **metrics})
        state.metrics = metrics
        score = metrics.get(cfg.train.best_metric)
        if dist.is_main() and score is not None and (state.best is None or score > state.best):
            state.best = score
            self.save_checkpoint("best.pth")

    def save_checkpoint(self, name: str) -> None:
        """``name`` in ``output_dir`` (rank 0): everything an exact resume needs, at ``state.pos``."""
        if not dist.is_main():
            return
        run, state = self.run, self.state
        pos, bs = state.pos, run.cfg.train.batch_size
        ckpt = {
            "model": state.model.student.state_dict(),
            "optimizer": state.optimizer.state_dict(),
            "scheduler": state.scheduler.state_dict(),
            "scaler": state.scaler.state_dict(),
            "epoch": pos.epoch, "iter": pos.iteration, "iter_in_epoch": pos.iter_in_epoch, "best": state.best,
            # The layout, so that a run with another world size or batch resumes at the same sample.
            "world_size": run.world, "batch_size": bs, "epoch_sample": pos.iter_in_epoch * bs * run.world,
            **run_record(run.cfg, run.config_hash),
        }
        extra = state.model.extra_state()
        if extra is not None:  # e.g. the learnable parts of the distillation methods
            ckpt["distill"] = extra
        atomic_save(ckpt, run.out / name)


def finish(run: Run, state: TrainState, t_start: float) -> None:
    """The teacher's evaluation if asked for; rank 0 writes model_final.pth and results.json."""
    cfg, logger, metrics = run.cfg, run.logger, state.metrics
    teacher_metrics = None
    if state.model.teacher is not None and cfg.eval.evaluate_teacher:
        teacher_metrics = evaluate_detector(state.model.teacher, run.data.val_loader, run.data.val_set,
                                            cfg.eval.metric, run.device, progress=run.progress)
        logger.info("teacher: %s", format_terms(teacher_metrics, 4))
    if dist.is_main():
        # Self-describing: the state dict carries the model config and class names (detkd.load_model),
        # and a few val image paths (detkd export's default parity check).
        val_set = run.data.val_set
        val_files = (val_set.image_file(i) for i in range(min(len(val_set), VAL_IMAGES_KEPT)))
        atomic_save(model_state(state.model.student, cfg.model, run.data.class_names, val_files),
                    run.out / "model_final.pth")
        summary = {"final": metrics, "best": state.best, "teacher": teacher_metrics, "iterations": state.pos.iteration,
                   "train_seconds": round(time.time() - t_start, 1)}
        atomic_write_text(json.dumps(summary, indent=2), run.out / "results.json")
        logger.info("done in %.1fs: %s; weights %s", time.time() - t_start, format_terms(metrics, 4),
                    run.out / "model_final.pth")
    run.metrics.close()
    dist.cleanup()
