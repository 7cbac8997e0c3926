"""The training loop: one readable function, :func:`train`.

It trains a plain torchvision Faster R-CNN, or a :class:`detkd.distill.Distiller` when the
config has ``teacher`` and ``distill`` sections; both return a dict of loss terms whose sum
is the objective. Around the loop: per-iteration LR schedule, AMP on CUDA, gradient
clipping, non-finite loss policy, a log line every ``log_interval`` iterations with every
term, ``metrics.jsonl``, periodic evaluation, ``last.pth``/``best.pth`` checkpoints that
resume exactly (RNG states, sampler position), and SIGINT/SIGTERM handling.
"""

from __future__ import annotations

import json
import logging
import math
import os
import signal
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader

import detkd
from detkd.config.load import config_hash, dump_config
from detkd.config.schema import Config
from detkd.data.build import build_dataset, build_eval_loader, collate_fn
from detkd.data.sampler import ResumableSampler
from detkd.distill.compat import check_label_map
from detkd.engine.checkpoint import prepare_output_dir, remove_stale_temp_files, resume_checkpoint
from detkd.engine.loop import IterationPlan, NonFiniteGuard, epoch_due, log_train_step
from detkd.engine.lock import RunLock
from detkd.engine.optim import build_optimizer, build_scheduler, scaled_lr
from detkd.engine.resume import remap_schedule, resume_position
from detkd.errors import DetkdError
from detkd.evaluation.inference import evaluate_detector
from detkd.modeling.checkpoint_io import model_state
from detkd.modeling.detector import build_detector, count_parameters
from detkd.modeling.families import describe
from detkd.modeling.sampling import sample_key, set_sampling_keys
from detkd.utils import dist
from detkd.utils.atomic import atomic_save, atomic_write_text
from detkd.utils.logger import MetricsWriter, format_terms, open_log_file, require_tensorboard, setup_logging
from detkd.utils.runtime import resolve_device, rng_state, seed_everything, set_rng_state, show_progress
from detkd.utils.speed import SpeedMeter, format_eta

log = logging.getLogger("detkd")


# ----------------------------------------------------------------------------- helpers


def build_model(cfg: Config) -> nn.Module:
    """The student detector, wrapped in a Distiller when the config distills."""
    student = build_detector(cfg.model)
    if cfg.distill is None:
        return student
    from detkd.distill.distiller import build_distiller

    return build_distiller(cfg, student)


def unwrap(model: nn.Module) -> nn.Module:
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


def student_of(model: nn.Module) -> nn.Module:
    core = unwrap(model)
    return getattr(core, "student", core)


def load_method_state(core: nn.Module, ckpt: dict[str, Any], path: Path) -> None:
    """Restore the distillation methods' learnable parts (adapters, generators, GcBlocks...)
    from ``ckpt["distill"]`` (checkpoints before the method interface: ``ckpt["adapters"]``,
    Chen et al.'s hint adapters); a mismatch is a one-line error naming the file."""
    methods = getattr(core, "methods", None)
    if methods is None:
        return
    state = ckpt.get("distill")
    if state is None and "adapters" in ckpt:
        state = {f"chen.adapters.{k}": v for k, v in ckpt["adapters"].items()}
    if state is None:
        state = {}
    try:
        methods.load_state_dict(state)
    except RuntimeError as exc:
        missing = sorted(set(methods.state_dict()) ^ set(state))
        raise DetkdError(f"{path}: the distillation methods' weights do not match this config "
                         f"({', '.join(missing[:4]) or str(exc).splitlines()[0]}); resume with the config it was made "
                         "with") from None


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


# ----------------------------------------------------------------------------- the loop


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
    rank, world = dist.get_rank(), dist.get_world_size()
    out = Path(cfg.output_dir)

    # Read and check the checkpoint before the (slow) data and model: a bad --resume fails at once.
    chash = config_hash(cfg)
    ckpt_path, ckpt = resume_checkpoint(resume, out, chash, force_resume)
    if dist.is_main() and ckpt is None:
        prepare_output_dir(out)
    # log.txt starts once the start-up checks pass: a refused run leaves output_dir untouched.
    logger = setup_logging(out, dist.is_main(), defer_file=True)
    if resume == "auto" and ckpt is None:
        logger.info("--resume auto: no checkpoint in %s, starting from scratch", out)
    if ckpt is not None:
        position = resume_position(ckpt, world, cfg.train.batch_size, ckpt_path, resume_from_epoch_boundary)
    if cfg.train.tensorboard and dist.is_main():
        require_tensorboard()

    amp = cfg.train.amp and device.type == "cuda"
    if cfg.train.amp and not amp:
        logger.warning("train.amp is on but the device is %s: training in float32", device)
    if cfg.train.deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
    seed_everything(cfg.train.seed)

    # --- data
    train_set = build_dataset(cfg.data.train, cfg.data, train=True, seed=cfg.train.seed)
    val_set = build_dataset(cfg.data.val, cfg.data, train=False)
    # An empty validation set would only fail at the first evaluation, after training.
    for name, ds, ds_cfg in (("training", train_set, cfg.data.train), ("validation", val_set, cfg.data.val)):
        if len(ds) == 0:
            source = ds_cfg.location() or cfg.data.demo.out_dir
            raise DetkdError(f"the {name} set is empty ({ds_cfg.type}: {source}; {ds.summary()})")
    num_data_classes = len(train_set.class_names)
    if num_data_classes >= cfg.model.num_classes:  # labels 1..C would index past the classifier
        raise DetkdError(f"the training data has {num_data_classes} classes but model.num_classes is "
                         f"{cfg.model.num_classes}; it counts the background too: set it to {num_data_classes + 1}")
    logger.info("train set: %d images (%s); val set: %d images", len(train_set), train_set.summary(), len(val_set))
    sampler = ResumableSampler(len(train_set), shuffle=True, seed=cfg.train.seed, rank=rank, world_size=world)
    bs = cfg.train.batch_size
    loader = DataLoader(train_set, batch_size=bs, sampler=sampler, num_workers=cfg.train.workers,
                        collate_fn=collate_fn, pin_memory=device.type == "cuda",
                        # A private generator keeps loader start-up off the global RNG (exact resume).
                        generator=torch.Generator().manual_seed(cfg.train.seed))
    val_loader = build_eval_loader(val_set, cfg.eval.batch_size, cfg.train.workers)

    # --- model, optimizer, schedule
    model = build_model(cfg).to(device)
    class_names = list(train_set.class_names)
    if cfg.distill is not None and not check_label_map(cfg.teacher.checkpoint, class_names):
        logger.warning("the teacher's run recorded no classes.json: its label map cannot be checked")
    if cfg.train.sync_bn and distributed:
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    params = [p for p in model.parameters() if p.requires_grad]
    lr = scaled_lr(cfg.train.optimizer, bs, world)
    optimizer = build_optimizer(params, cfg.train.optimizer, lr)
    plan = IterationPlan.of(math.ceil(sampler.per_rank() / bs), cfg.train.epochs, cfg.train.max_iters)
    iters_per_epoch, total_iters, epochs = plan.iters_per_epoch, plan.total_iters, plan.epochs
    scheduler = build_scheduler(optimizer, cfg.train.scheduler, iters_per_epoch, total_iters)
    scaler = torch.amp.GradScaler("cuda", enabled=amp)
    logger.info("model: %s (%.2fM parameters, %.2fM trainable); device %s x%d; lr %.4g; %d iterations (%d/epoch)",
                describe(cfg.model),
                count_parameters(student_of(model)) / 1e6, sum(p.numel() for p in params) / 1e6,
                device, world, lr, total_iters, iters_per_epoch)

    # --- resume
    start_epoch, global_iter, iter_in_epoch = 0, 0, 0
    best: float | None = None
    if ckpt is not None:
        student_of(model).load_state_dict(ckpt["model"])
        load_method_state(unwrap(model), ckpt, ckpt_path)
        optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["scheduler"])
        scaler.load_state_dict(ckpt["scaler"])
        start_epoch, global_iter, iter_in_epoch = position.epoch, ckpt["iter"], position.iter_in_epoch
        if position.moved:  # another global batch: this run's schedule at the same global sample
            global_iter = start_epoch * iters_per_epoch + iter_in_epoch
            remap_schedule(scheduler, lr, global_iter)
            logger.warning("%s was written by %s process(es) x batch %s: continuing at sample %d of epoch %d, "
                           "iteration %d of this run's %d (LR schedule remapped)", ckpt_path,
                           ckpt.get("world_size"), ckpt.get("batch_size"), iter_in_epoch * bs * world, start_epoch,
                           global_iter, total_iters)
        best = ckpt.get("best")
        set_rng_state(ckpt["rng"])
        logger.info("resumed from %s at epoch %d, iteration %d", ckpt_path, start_epoch, global_iter)

    if dist.is_main():
        out.mkdir(parents=True, exist_ok=True)
        open_log_file(logger)
        for tmp in remove_stale_temp_files(out):
            logger.info("removed %s (an unfinished write of a killed run)", tmp.name)
        atomic_write_text(dump_config(cfg), out / "config.yaml")
        # The label map, so a later distillation run can check its teacher against it.
        atomic_write_text(json.dumps(class_names), out / "classes.json")
    ddp_model = model
    if distributed:
        # Scheduled or zero-weight distillation terms leave the adapters unused in some steps.
        ddp_model = nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None,
            find_unused_parameters=cfg.distill is not None)
    metrics_file = MetricsWriter(out / "metrics.jsonl" if dist.is_main() else None, cfg.train.tensorboard)

    def checkpoint(name: str, epoch: int, in_epoch: int) -> None:
        if not dist.is_main():
            return
        core = unwrap(model)
        state = {
            "model": student_of(model).state_dict(),
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "scaler": scaler.state_dict(),
            "epoch": epoch, "iter": global_iter, "iter_in_epoch": in_epoch, "best": best,
            # The layout, so that a run with another world size or batch resumes at the same sample.
            "world_size": world, "batch_size": bs, "epoch_sample": in_epoch * bs * world,
            "rng": rng_state(), "config": dump_config(cfg), "config_hash": chash,
            "version": detkd.__version__,
        }
        if getattr(core, "methods", None) is not None:  # learnable parts of the distillation methods
            state["distill"] = core.methods.state_dict()
        atomic_save(state, out / name)

    def evaluate(epoch: int) -> dict[str, float]:
        metrics = evaluate_detector(student_of(model), val_loader, val_set, cfg.eval.metric, device,
                                    progress=progress)
        if dist.is_main():
            logger.info("eval epoch %d iter %d: %s", epoch, global_iter, format_terms(metrics, 4))
            metrics_file.write({"type": "eval", "epoch": epoch, "iter": global_iter, **metrics})
        return metrics

    nonfinite = NonFiniteGuard(cfg.train.nonfinite_policy, cfg.train.max_nonfinite_skips, out, logger, metrics_file)
    metrics: dict[str, float] = {}
    stop = StopRequest()
    t_start = time.time()
    speed = SpeedMeter(global_iter, total_iters)
    with stop:
        from tqdm import tqdm

        for epoch in range(start_epoch, epochs):
            sampler.set_epoch(epoch, start=iter_in_epoch * bs)
            train_set.set_epoch(epoch)
            if hasattr(unwrap(model), "set_epoch"):  # distillation terms may be scheduled by epoch
                unwrap(model).set_epoch(epoch)
            ddp_model.train()
            bar = tqdm(total=iters_per_epoch, initial=iter_in_epoch, desc=f"epoch {epoch}", leave=False,
                       disable=not show_progress(progress), dynamic_ncols=True)
            speed.epoch_start()
            for images, targets in loader:
                if global_iter >= total_iters:
                    break
                speed.batch_ready()
                # Per-image RPN/RoI sampling keys: the same rows whatever the batch split or rank.
                set_sampling_keys(student_of(model), [sample_key(cfg.train.seed, epoch, int(t["image_id"]))
                                                      for t in targets])
                images, targets = to_device(images, targets, device)
                with torch.autocast("cuda", enabled=True) if amp else nullcontext():
                    losses = ddp_model(images, targets)
                total = sum(losses.values())
                if nonfinite.skip(losses, total, global_iter):
                    optimizer.zero_grad(set_to_none=True)
                    continue
                optimizer.zero_grad(set_to_none=True)
                scaler.scale(total).backward()
                if cfg.train.clip_grad_norm is not None:
                    scaler.unscale_(optimizer)
                    nn.utils.clip_grad_norm_(params, cfg.train.clip_grad_norm)
                scaler.step(optimizer)
                scaler.update()
                scheduler.step()
                global_iter += 1
                iter_in_epoch += 1
                speed.step_done()
                bar.set_postfix_str(f"eta {format_eta(speed.eta(global_iter))}", refresh=False)
                bar.update(1)

                if plan.log_due(global_iter, cfg.train.log_interval):
                    values = {k: v.item() for k, v in losses.items()}
                    values["loss"] = total.item()
                    values.update(getattr(unwrap(model), "last_stats", {}))
                    log_train_step(logger, metrics_file, epoch, global_iter, total_iters,
                                   optimizer.param_groups[0]["lr"], dist.reduce_mean(values),
                                   speed.interval(global_iter))
                period = cfg.train.checkpoint_period_iters
                if period and global_iter % period == 0 and stop.signum is None:
                    # Mid-epoch position: a killed run loses at most `period` iterations.
                    checkpoint("last.pth", epoch, iter_in_epoch)
                if stop.signum is not None:
                    checkpoint("last.pth", epoch, iter_in_epoch)
                    logger.warning("signal %d: saved %s at iteration %d; resume with --resume auto",
                                   stop.signum, out / "last.pth", global_iter)
                    bar.close()
                    dist.cleanup()
                    raise SystemExit(128 + stop.signum)
            bar.close()
            done = global_iter >= total_iters
            # A run stopped by max_iters mid-epoch records its position in the epoch.
            position = (epoch + 1, 0) if iter_in_epoch >= iters_per_epoch or not done else (epoch, iter_in_epoch)
            iter_in_epoch = 0
            if epoch_due(epoch, cfg.train.eval_interval, done):
                metrics = evaluate(epoch)
                score = metrics.get(cfg.train.best_metric)
                if dist.is_main() and score is not None and (best is None or score > best):
                    best = score
                    checkpoint("best.pth", *position)
            if epoch_due(epoch, cfg.train.checkpoint_interval, done):
                checkpoint("last.pth", *position)
            if done:
                break

    teacher_metrics = None
    if cfg.distill is not None and cfg.eval.evaluate_teacher:
        teacher_metrics = evaluate_detector(unwrap(model).teacher, val_loader, val_set, cfg.eval.metric, device,
                                            progress=progress)
        logger.info("teacher: %s", format_terms(teacher_metrics, 4))
    if dist.is_main():
        # Self-describing: the state dict carries the model config and class names (detkd.load_model).
        atomic_save(model_state(student_of(model), cfg.model, class_names), out / "model_final.pth")
        summary = {"final": metrics, "best": best, "teacher": teacher_metrics, "iterations": global_iter,
                   "train_seconds": round(time.time() - t_start, 1)}
        atomic_write_text(json.dumps(summary, indent=2), out / "results.json")
        logger.info("done in %.1fs: %s; weights %s", time.time() - t_start, format_terms(metrics, 4),
                    out / "model_final.pth")
    metrics_file.close()
    dist.cleanup()
    return metrics
