"""The detection training loop, :func:`train`, read top to bottom.

It trains a :class:`detkd.engine.model.TrainModel`: a plain torchvision detector of any
family (Faster R-CNN, RetinaNet, FCOS, SSD, SSDlite), or a :class:`detkd.distill.Distiller`
when the config has ``teacher`` and ``distill`` sections; both return a dict of loss terms
whose sum is the objective. :func:`_train` sets up a :class:`Run` (what stays fixed: config,
device, data, log and metrics files) and a :class:`TrainState` (what a step changes: model,
optimizer, scheduler, AMP scaler, the :class:`~detkd.engine.loop.Position` in the iteration
plan, the best metric), then runs the epochs as a short list of named steps:
:func:`run_step` (forward, non-finite policy, backward, clipping, optimizer and
per-iteration LR step), :func:`log_step` (a log line every ``log_interval`` iterations with
every term, ``metrics.jsonl``), :func:`save_checkpoint` (``last.pth``/``best.pth`` that
resume exactly: RNG states, sampler position, layout) and, at each epoch's end,
:func:`evaluate`. SIGINT/SIGTERM save ``last.pth`` at the next iteration boundary and stop.
"""

from __future__ import annotations

import json
import logging
import math
import os
import signal
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader

from detkd.config.dump import config_hash, dump_config
from detkd.config.schema import Config
from detkd.data.build import build_dataset, build_eval_loader, check_label_maps, collate_fn
from detkd.data.sampler import ResumableSampler
from detkd.engine.checkpoint import prepare_output_dir, remove_stale_temp_files, resume_checkpoint, run_record
from detkd.engine.loop import IterationPlan, NonFiniteGuard, Position, epoch_batches, epoch_due, log_train_step
from detkd.engine.lock import RunLock
from detkd.engine.model import TrainModel, build_model
from detkd.engine.optim import build_optimizer, build_scheduler, scaled_lr
from detkd.engine.resume import ResumePosition, remap_schedule, resume_position
from detkd.recipe import read_saved_config
from detkd.errors import DetkdError
from detkd.evaluation.inference import evaluate_detector
from detkd.modeling.checkpoint_io import VAL_IMAGES_KEPT, model_state
from detkd.modeling.detector import count_parameters
from detkd.modeling.families import describe
from detkd.modeling.label_map import check_label_map
from detkd.modeling.sampling import sample_key
from detkd.utils import dist
from detkd.utils.atomic import atomic_save, atomic_write_text
from detkd.utils.logger import MetricsWriter, format_terms, open_log_file, require_tensorboard, setup_logging
from detkd.utils.runtime import resolve_device, seed_everything, set_rng_state, show_progress
from detkd.utils.speed import SpeedMeter, format_eta

log = logging.getLogger("detkd")


# ----------------------------------------------------------------------------- run and state


@dataclass
class DetectionData:
    train_set: Any
    val_set: Any
    sampler: ResumableSampler
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


# ----------------------------------------------------------------------------- helpers


def to_device(images: list[torch.Tensor], targets: list[dict], device: torch.device):
    images = [img.to(device, non_blocking=True) for img in images]
    targets = [{k: (v.to(device, non_blocking=True) if torch.is_tensor(v) else v) for k, v in t.items()}
               for t in targets]
    return images, targets


class StopRequest:
    """SIGINT/SIGTERM set a flag; the loop saves a checkpoint at the next iteration boundary."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self._old: dict[int, Any] = {}

    def __enter__(self) -> "StopRequest":
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                self._old[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread
                pass
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        if self.signum is not None:  # second signal: stop now
            raise KeyboardInterrupt
        self.signum = signum

    def __exit__(self, *exc: Any) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)


# ----------------------------------------------------------------------------- the run


def train(cfg: Config, resume: str | None = None, force_resume: bool = False,
          progress: bool | None = None, resume_from_epoch_boundary: bool = False) -> dict[str, Any]:
    """Train (and evaluate) from a validated config. Returns the final metrics.

    ``resume``: a checkpoint path, or ``"auto"`` for the latest valid one in
    ``cfg.output_dir``. ``force_resume`` accepts a checkpoint made with another config.
    ``resume_from_epoch_boundary`` restarts the checkpoint's epoch from its first sample when
    the global batch changed and the exact position cannot be continued (:func:`resume_position`).
    Rank 0 holds :class:`RunLock` on ``output_dir`` for the whole run, before anything is written.
    """
    with RunLock(cfg.output_dir, enabled=int(os.environ.get("RANK", "0")) == 0):
        return _train(cfg, resume, force_resume, progress, resume_from_epoch_boundary)


def _train(cfg: Config, resume: str | None, force_resume: bool, progress: bool | None,
           resume_from_epoch_boundary: bool) -> dict[str, Any]:
    device = resolve_device(cfg.train.device)
    distributed = dist.init_distributed(device)
    world = dist.get_world_size()
    out = Path(cfg.output_dir)

    # Read and check the checkpoint before the (slow) data and model: a bad --resume fails at once.
    chash = config_hash(cfg)
    ckpt_path, ckpt = resume_checkpoint(resume, out, chash, force_resume,
                                        saved_hash=lambda text, source: config_hash(read_saved_config(text, source)))
    if dist.is_main() and ckpt is None:
        prepare_output_dir(out)
    # log.txt starts once the start-up checks pass: a refused run leaves output_dir untouched.
    logger = setup_logging(out, dist.is_main(), defer_file=True)
    if resume == "auto" and ckpt is None:
        logger.info("--resume auto: no checkpoint in %s, starting from scratch", out)
    where = None if ckpt is None else resume_position(ckpt, world, cfg.train.batch_size, ckpt_path,
                                                      resume_from_epoch_boundary)
    amp = set_up_runtime(cfg, device, logger)

    data = build_data(cfg, device, logger)
    state = build_state(cfg, data, device, distributed, amp, logger)
    if where is not None:  # resuming ckpt
        resume_state(state, ckpt, ckpt_path, where, cfg.train.batch_size * world, logger)
    if dist.is_main():
        write_run_files(cfg, out, data.class_names, logger)
    if distributed:
        # Scheduled or zero-weight distillation terms leave the adapters unused in some steps.
        state.forward = nn.parallel.DistributedDataParallel(
            state.model, device_ids=[device.index] if device.type == "cuda" else None,
            find_unused_parameters=cfg.distill is not None)
    metrics = MetricsWriter(out / "metrics.jsonl" if dist.is_main() else None, cfg.train.tensorboard)
    nonfinite = NonFiniteGuard(cfg.train.nonfinite_policy, cfg.train.max_nonfinite_skips, out, logger, metrics)
    run = Run(cfg, device, world, out, chash, amp, progress, logger, data, metrics, nonfinite)
    return train_loop(run, state)


def set_up_runtime(cfg: Config, device: torch.device, logger: logging.Logger) -> bool:
    """TensorBoard present when asked for, determinism, the seed; returns whether AMP is on."""
    if cfg.train.tensorboard and dist.is_main():
        require_tensorboard()
    amp = cfg.train.amp and device.type == "cuda"
    if cfg.train.amp and not amp:
        logger.warning("train.amp is on but the device is %s: training in float32", device)
    if cfg.train.deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
    seed_everything(cfg.train.seed)
    return amp


def build_data(cfg: Config, device: torch.device, logger: logging.Logger) -> DetectionData:
    train_set = build_dataset(cfg.data.train, cfg.data, train=True, seed=cfg.train.seed)
    val_set = build_dataset(cfg.data.val, cfg.data, train=False)
    # An empty validation set would only fail at the first evaluation, after training.
    for name, ds, ds_cfg in (("training", train_set, cfg.data.train), ("validation", val_set, cfg.data.val)):
        if len(ds) == 0:
            source = ds_cfg.location() or cfg.data.demo.out_dir
            raise DetkdError(f"the {name} set is empty ({ds_cfg.type}: {source}; {ds.summary()})")
    check_label_maps(train_set, val_set)
    num_data_classes = len(train_set.class_names)
    if num_data_classes >= cfg.model.num_classes:  # labels 1..C would index past the classifier
        raise DetkdError(f"the training data has {num_data_classes} classes but model.num_classes is "
                         f"{cfg.model.num_classes}; it counts the background too: set it to {num_data_classes + 1}")
    logger.info("train set: %d images (%s); val set: %d images", len(train_set), train_set.summary(), len(val_set))
    sampler = ResumableSampler(len(train_set), shuffle=True, seed=cfg.train.seed, rank=dist.get_rank(),
                               world_size=dist.get_world_size())
    loader = DataLoader(train_set, batch_size=cfg.train.batch_size, sampler=sampler, num_workers=cfg.train.workers,
                        collate_fn=collate_fn, pin_memory=device.type == "cuda",
                        # A private generator keeps loader start-up off the global RNG (exact resume).
                        generator=torch.Generator().manual_seed(cfg.train.seed))
    val_loader = build_eval_loader(val_set, cfg.eval.batch_size, cfg.train.workers)
    return DetectionData(train_set, val_set, sampler, loader, val_loader)


def build_state(cfg: Config, data: DetectionData, device: torch.device, distributed: bool, amp: bool,
                logger: logging.Logger) -> TrainState:
    """Model, optimizer, LR schedule, AMP scaler and iteration plan of a fresh run."""
    model = build_model(cfg).to(device)
    if cfg.distill is not None and not check_label_map(cfg.teacher.checkpoint, data.class_names):
        logger.warning("the teacher's run recorded no classes.json: its label map cannot be checked")
    if cfg.train.sync_bn and distributed:
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    params = [p for p in model.parameters() if p.requires_grad]
    bs, world = cfg.train.batch_size, dist.get_world_size()
    lr = scaled_lr(cfg.train.optimizer, bs, world)
    optimizer = build_optimizer(params, cfg.train.optimizer, lr)
    plan = IterationPlan.of(math.ceil(data.sampler.per_rank() / bs), cfg.train.epochs, cfg.train.max_iters)
    scheduler = build_scheduler(optimizer, cfg.train.scheduler, plan.iters_per_epoch, plan.total_iters)
    scaler = torch.amp.GradScaler("cuda", enabled=amp)
    logger.info("model: %s (%.2fM parameters, %.2fM trainable); device %s x%d; lr %.4g; %d iterations (%d/epoch)",
                describe(cfg.model),
                count_parameters(model.student) / 1e6, sum(p.numel() for p in params) / 1e6,
                device, world, lr, plan.total_iters, plan.iters_per_epoch)
    return TrainState(model, model, optimizer, scheduler, scaler, params, lr, Position(plan))


def resume_state(state: TrainState, ckpt: dict[str, Any], path: Path, where: ResumePosition, global_batch: int,
                 logger: logging.Logger) -> None:
    """Load a checkpoint into ``state``, at ``where`` (:func:`resume_position`)."""
    state.model.student.load_state_dict(ckpt["model"])
    state.model.load_extra_state(ckpt, path)
    state.optimizer.load_state_dict(ckpt["optimizer"])
    state.scheduler.load_state_dict(ckpt["scheduler"])
    state.scaler.load_state_dict(ckpt["scaler"])
    pos = state.pos
    pos.epoch, pos.iteration, pos.iter_in_epoch = where.epoch, ckpt["iter"], where.iter_in_epoch
    if where.moved:  # another global batch: this run's schedule at the same global sample
        pos.iteration = pos.epoch * pos.plan.iters_per_epoch + pos.iter_in_epoch
        remap_schedule(state.scheduler, state.lr, pos.iteration)
        logger.warning("%s was written by %s process(es) x batch %s: continuing at sample %d of epoch %d, "
                       "iteration %d of this run's %d (LR schedule remapped)", path,
                       ckpt.get("world_size"), ckpt.get("batch_size"), pos.iter_in_epoch * global_batch, pos.epoch,
                       pos.iteration, pos.plan.total_iters)
    state.best = ckpt.get("best")
    set_rng_state(ckpt["rng"])
    logger.info("resumed from %s at epoch %d, iteration %d", path, pos.epoch, pos.iteration)


def write_run_files(cfg: Config, out: Path, class_names: list[str], logger: logging.Logger) -> None:
    """Rank 0, once the start-up checks passed: log.txt, config.yaml, classes.json."""
    out.mkdir(parents=True, exist_ok=True)
    open_log_file(logger)
    for tmp in remove_stale_temp_files(out):
        logger.info("removed %s (an unfinished write of a killed run)", tmp.name)
    atomic_write_text(dump_config(cfg), out / "config.yaml")
    # The label map, so a later distillation run can check its teacher against it.
    atomic_write_text(json.dumps(class_names), out / "classes.json")


# ----------------------------------------------------------------------------- the loop


def train_loop(run: Run, state: TrainState) -> dict[str, float]:
    """The epochs from ``state.pos`` on, then the final files; returns the last evaluation."""
    t_start = time.time()
    speed = SpeedMeter(state.pos.iteration, state.pos.plan.total_iters)
    with StopRequest() as stop:
        for epoch in range(state.pos.epoch, state.pos.plan.epochs):
            train_epoch(run, state, epoch, speed, stop)
            if end_epoch(run, state, epoch):
                break
    finish(run, state, t_start)
    return state.metrics


def train_epoch(run: Run, state: TrainState, epoch: int, speed: SpeedMeter, stop: StopRequest) -> None:
    """One epoch of steps, each followed by its log line and checkpoint when due; a signal
    saves ``last.pth`` at the iteration boundary and exits with ``128 + signum``."""
    from tqdm import tqdm

    start_epoch(run, state, epoch)
    pos, period = state.pos, run.cfg.train.checkpoint_period_iters
    bar = tqdm(total=pos.plan.iters_per_epoch, initial=pos.iter_in_epoch, desc=f"epoch {epoch}", leave=False,
               disable=not show_progress(run.progress), dynamic_ncols=True)
    for images, targets in epoch_batches(run.data.loader, pos, speed):
        step = run_step(run, state, images, targets)
        if step is None:  # a non-finite loss: the step was skipped (train.nonfinite_policy)
            continue
        speed.step_done()
        bar.set_postfix_str(f"eta {format_eta(speed.eta(pos.iteration))}", refresh=False)
        bar.update(1)
        log_step(run, state, *step, speed)
        if period and pos.iteration % period == 0 and stop.signum is None:
            # Mid-epoch position: a killed run loses at most `period` iterations.
            save_checkpoint(run, state, "last.pth")
        if stop.signum is not None:
            save_checkpoint(run, state, "last.pth")
            run.logger.warning("signal %d: saved %s at iteration %d; resume with --resume auto",
                               stop.signum, run.out / "last.pth", pos.iteration)
            bar.close()
            dist.cleanup()
            raise SystemExit(128 + stop.signum)
    bar.close()


def start_epoch(run: Run, state: TrainState, epoch: int) -> None:
    state.pos.epoch = epoch
    run.data.sampler.set_epoch(epoch, start=state.pos.iter_in_epoch * run.cfg.train.batch_size)
    run.data.train_set.set_epoch(epoch)
    state.model.set_epoch(epoch)  # distillation terms may be scheduled by epoch
    state.forward.train()


def run_step(run: Run, state: TrainState, images: list[torch.Tensor],
             targets: list[dict]) -> tuple[dict[str, torch.Tensor], torch.Tensor] | None:
    """One optimizer step: ``(loss terms, their sum)``, or None when the loss was not finite
    and the policy skipped the step (gradients dropped, weights untouched)."""
    cfg, pos = run.cfg, state.pos
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
    pos.step_done()
    return losses, total


def log_step(run: Run, state: TrainState, losses: dict[str, torch.Tensor], total: torch.Tensor,
             speed: SpeedMeter) -> None:
    """Every ``log_interval`` iterations: every term, averaged over the processes."""
    pos = state.pos
    if not pos.plan.log_due(pos.iteration, run.cfg.train.log_interval):
        return
    values = {k: v.item() for k, v in losses.items()}
    values["loss"] = total.item()
    values.update(state.model.log_stats())
    log_train_step(run.logger, run.metrics, pos.epoch, pos.iteration, pos.plan.total_iters,
                   state.optimizer.param_groups[0]["lr"], dist.reduce_mean(values), speed.interval(pos.iteration))


def end_epoch(run: Run, state: TrainState, epoch: int) -> bool:
    """Evaluate and checkpoint when due; True when the run's last iteration is done."""
    pos, t = state.pos, run.cfg.train
    done = pos.done
    # The position a checkpoint records: the next epoch, or (stopped by max_iters mid-epoch) this one.
    if pos.iter_in_epoch >= pos.plan.iters_per_epoch or not done:
        pos.epoch, pos.iter_in_epoch = epoch + 1, 0
    if epoch_due(epoch, t.eval_interval, done):
        evaluate(run, state, epoch)
    if epoch_due(epoch, t.checkpoint_interval, done):
        save_checkpoint(run, state, "last.pth")
    return done


def evaluate(run: Run, state: TrainState, epoch: int) -> None:
    """Evaluate the student (sharded over the processes); a new best ``train.best_metric``
    writes ``best.pth``."""
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
        save_checkpoint(run, state, "best.pth")


def save_checkpoint(run: Run, state: TrainState, name: str) -> None:
    """``name`` in ``output_dir`` (rank 0): everything an exact resume needs, at ``state.pos``."""
    if not dist.is_main():
        return
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
