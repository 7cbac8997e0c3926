"""Setting up a detection run: :func:`train`, read top to bottom.

It checks the resume checkpoint first (a bad ``--resume`` fails before the slow part), then
builds a :class:`~detkd.engine.detection_task.Run` (config, device, data, log and metrics
files: fixed for the run) and a :class:`~detkd.engine.detection_task.TrainState` (model,
optimizer, scheduler, AMP scaler, :class:`~detkd.engine.loop.Position`: what the steps
change), loads the checkpoint into the state, and hands both, as a
:class:`~detkd.engine.detection_task.DetectionTask`, to the one training driver
(:func:`detkd.engine.driver.train_epochs`): what happens at each iteration is in
:mod:`detkd.engine.detection_task`, when it happens in :mod:`detkd.engine.driver`. The model
is a :class:`detkd.engine.model.TrainModel`: a plain detector of any family, or a
:class:`detkd.distill.Distiller` when the config has ``teacher`` and ``distill`` sections.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader

from detkd.config.dump import config_hash, dump_config
from detkd.config.schema import Config
from detkd.data.build import (build_dataset, build_eval_loader, build_train_sampler, build_train_set,
                               check_label_maps, collate_fn)
from detkd.engine.checkpoint import prepare_output_dir, remove_stale_temp_files, resume_checkpoint
from detkd.engine.detection_task import DetectionData, DetectionTask, Run, TrainState, finish, to_device
from detkd.engine.driver import LoopSettings, train_epochs
from detkd.engine.health import anchor_fit, anchor_problems, report, teacher_problems
from detkd.engine.loop import IterationPlan, NonFiniteGuard, Position
from detkd.engine.lock import RunLock
from detkd.engine.model import build_model
from detkd.engine.optim import build_optimizer, build_scheduler, scaled_lr
from detkd.engine.resume import ResumePosition, remap_schedule, resume_position
from detkd.recipe import read_saved_config
from detkd.errors import DetkdError
from detkd.modeling.detector import count_parameters
from detkd.modeling.families import describe
from detkd.modeling.label_map import check_label_map
from detkd.utils import dist
from detkd.utils.atomic import atomic_write_text
from detkd.utils.logger import MetricsWriter, open_log_file, require_tensorboard, setup_logging
from detkd.utils.runtime import resolve_device, seed_everything, set_rng_state

log = logging.getLogger("detkd")


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
    if where is None and dist.is_main() and cfg.train.health != "off":
        for check, message in anchor_problems(anchor_fit(state.model.student, data.train_set.box_sizes(200))):
            report(cfg.train.health, logger, metrics, 0, check, "anchors", message)
        check_teacher(cfg, state.model, data, device, logger, metrics)
    run = Run(cfg, device, world, out, chash, amp, progress, logger, data, metrics, nonfinite)
    return train_loop(run, state)


@torch.inference_mode()
def check_teacher(cfg: Config, model: nn.Module, data: DetectionData, device: torch.device, logger: logging.Logger,
                  metrics: MetricsWriter) -> None:
    """A fresh distillation run with a teacher model: its and the student's eval outputs on the first
    val batch, checked by :func:`detkd.engine.health.teacher_problems` (no random draw, no state kept)."""
    if getattr(model, "teacher", None) is None:
        return
    images, targets = next(iter(data.val_loader))
    images, targets = to_device(images, targets, device)
    was_training = model.student.training
    model.student.eval()
    try:
        problems = teacher_problems(model.teacher(images), model.student(images), targets)
    finally:
        model.student.train(was_training)
    for check, message in problems:
        report(cfg.train.health, logger, metrics, 0, check, "teacher", message)


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
    train_set = build_train_set(cfg.data, cfg.train.seed, cfg.teacher)
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
    sampler = build_train_sampler(train_set, cfg.data, cfg.train.batch_size, cfg.train.seed)
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
    if cfg.distill is not None and cfg.teacher.checkpoint and not check_label_map(cfg.teacher.checkpoint,
                                                                                   data.class_names):
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


def train_loop(run: Run, state: TrainState) -> dict[str, float]:
    """The driver's epochs from ``state.pos`` on, then the final files; returns the last evaluation."""
    t_start = time.time()
    loop = LoopSettings.of(run.cfg.train, run.out, run.logger, run.metrics, run.progress)
    train_epochs(DetectionTask(run, state), loop)
    finish(run, state, t_start)
    return state.metrics
