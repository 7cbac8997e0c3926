"""The classification training loop: :func:`train_cls`.

Builds the data, the trainable networks (student, or peers / sub-networks), the frozen
teachers (loaded from checkpoints and checked against their config), the method
(:mod:`detkd.cls.methods`), then trains with the per-iteration schedule of
:mod:`detkd.engine.optim`, evaluates top-1/top-5 of every network on the test split and
writes into ``output_dir``:

* ``config.yaml`` (the merged config), ``log.txt``, ``metrics.jsonl``;
* ``last.pth`` every ``train.checkpoint_interval`` epochs (all networks, auxiliary modules,
  optimizer and scheduler states; atomic);
* one weights file per trained network — ``model_final.pth`` for a student,
  ``peer{k}_final.pth`` (DML), ``sub{k}_final.pth`` + ``fusion_final.pth`` (FFL) — that can
  serve as a teacher's ``checkpoint``;
* ``results.json``: top-1/top-5 (%) of every network (and for FFL the fused classifier
  and the ensemble; for DML the ensemble), of the teachers, the best top-1 seen, timings.

It has the detection loop's shape (:mod:`detkd.engine.trainer`) and shares its pieces
(:mod:`detkd.engine.loop`: iteration plan, :class:`~detkd.engine.loop.Position`, an epoch's
batches, log line, evaluate/checkpoint gating, non-finite policy;
:func:`~detkd.engine.checkpoint.run_record`): a :class:`ClsRun` holds what stays fixed, a
:class:`ClsState` what the steps change, and :func:`train_loop` calls the method's ``step``,
:func:`run_eval` and :func:`save_checkpoint`.

``resume`` (``tools/train_cls.py --resume auto|PATH``) continues from a ``last.pth``: the
networks, auxiliary modules, optimizers, schedulers, epoch, the best top-1 so far and the
RNG states (global and the training loader's augmentation generator) are restored, so a
resumed run ends with the same weights as an uninterrupted one.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import yaml
from torch import nn

import detkd
from detkd.cls.config import ClsConfig, NetConfig, cls_config_from_dict
from detkd.cls.data import BatchLoader, ClsData, load_cls_data
from detkd.cls.methods import METHODS
from detkd.cls.models import CIFAR_RESNET_DEPTHS, build_net, count_parameters
from detkd.config.dump import config_hash, dump_config
from detkd.engine.checkpoint import prepare_output_dir, resume_checkpoint, run_record
from detkd.engine.lock import RunLock
from detkd.engine.loop import IterationPlan, NonFiniteGuard, Position, epoch_batches, epoch_due, log_train_step
from detkd.errors import DetkdError
from detkd.modeling.weights import read_weights, state_mismatch
from detkd.utils.atomic import atomic_save, atomic_write_text
from detkd.utils.logger import MetricsWriter, require_tensorboard, setup_logging
from detkd.utils.runtime import resolve_device, seed_everything, set_rng_state
from detkd.utils.speed import SpeedMeter

log = logging.getLogger("detkd")



# ----------------------------------------------------------------------------- helpers


def net_spec(ncfg: NetConfig, data: ClsData) -> dict[str, Any]:
    """What decides a network's weights layout (saved in weights files, checked for teachers)."""
    cifar = ncfg.arch in CIFAR_RESNET_DEPTHS
    return {"arch": ncfg.arch, "width": (ncfg.width or 16) if cifar else None,
            "stem": None if cifar else ncfg.stem, "num_classes": data.num_classes, "in_channels": data.in_channels}


def describe(spec: dict[str, Any]) -> str:
    shape = f"width {spec['width']}" if spec.get("width") is not None else f"stem {spec.get('stem')}"
    return f"{spec.get('arch')} ({shape}, {spec.get('num_classes')} classes, {spec.get('in_channels')} input channels)"


def load_weights(net: nn.Module, ncfg: NetConfig, data: ClsData, who: str) -> None:
    """Load ``ncfg.checkpoint`` into ``net``; a clear error when it was made for another network."""
    path = Path(ncfg.checkpoint)
    state, entries = read_weights(path, "model", who)
    saved = entries.get("net")
    want = net_spec(ncfg, data)
    if saved is not None:
        diffs = [k for k in ("arch", "width", "stem", "num_classes", "in_channels") if saved.get(k) != want[k]]
        if diffs:
            raise DetkdError(
                f"{who}: checkpoint {path} does not match its config: it holds {describe(saved)}, the config "
                f"and data give {describe(want)} (differs in {', '.join(diffs)})")
    problem = state_mismatch(net, state)
    if problem:
        raise DetkdError(f"{who}: checkpoint {path} does not match its config {describe(want)}: {problem}")
    net.load_state_dict(state)


def build_cls_net(ncfg: NetConfig, data: ClsData, device: torch.device) -> nn.Module:
    return build_net(ncfg.arch, data.num_classes, data.in_channels, ncfg.width, ncfg.stem).to(device)


def build_teacher(ncfg: NetConfig, index: int, data: ClsData, device: torch.device) -> nn.Module:
    net = build_cls_net(ncfg, data, torch.device("cpu"))
    load_weights(net, ncfg, data, f"teachers[{index}]")
    net.to(device).eval()
    for p in net.parameters():
        p.requires_grad_(False)
    return net


# What decides the meaning of a last.pth (a resumed run must not change them silently);
# train.threads, device, log/eval/checkpoint intervals and eval.* may differ.
# The test set is not among them: resuming a finished run with another test set re-evaluates it.
_RESUME_KEYS = ("model", "teachers", "peers", "num_peers", "method", "data")
_RESUME_TRAIN_KEYS = ("epochs", "max_iters", "batch_size", "seed", "optimizer", "scheduler", "clip_grad_norm")
_TEST_ONLY_DATA_KEYS = ("test_subset", "test_split")


def resume_hash(cfg: ClsConfig) -> str:
    """:func:`detkd.config.dump.config_hash` of what decides a classification ``last.pth``."""
    return config_hash(cfg, _RESUME_KEYS, only={"train": _RESUME_TRAIN_KEYS}, drop={"data": _TEST_ONLY_DATA_KEYS})


# What a classification training checkpoint holds (detection's: model, optimizer).
CHECKPOINT_ENTRIES = ("networks", "optimizers")


@torch.no_grad()
def evaluate(logits_fn, loader: BatchLoader, num_classes: int) -> dict[str, dict[str, float]]:
    """Top-1 and top-5 (%) of every output of ``logits_fn(x) -> {name: logits}``."""
    k = min(5, num_classes)
    correct: dict[str, list[int]] = {}
    n = 0
    for x, y in loader:
        for name, logits in logits_fn(x).items():
            top = logits.topk(k, dim=1).indices
            hit = top.eq(y.view(-1, 1))
            c = correct.setdefault(name, [0, 0])
            c[0] += int(hit[:, 0].sum())
            c[1] += int(hit.any(dim=1).sum())
        n += len(y)
    return {name: {"top1": 100.0 * c[0] / max(n, 1), "top5": 100.0 * c[1] / max(n, 1)}
            for name, c in correct.items()}


# ----------------------------------------------------------------------------- run and state


@dataclass
class ClsRun:
    """What stays fixed for one classification run."""

    cfg: ClsConfig
    out: Path
    config_hash: str
    logger: logging.Logger
    data: ClsData
    train_loader: BatchLoader
    test_loader: BatchLoader
    metrics: MetricsWriter
    specs: dict[str, dict[str, Any]]  # the layout of each trained network (:func:`net_spec`), fusion aside


@dataclass
class ClsState:
    """What the steps change: the method (networks, optimizers, schedulers) and the position."""

    method: Any  # a ClsMethod of detkd.cls.methods
    pos: Position
    best: dict[str, float] = field(default_factory=dict)  # the best top-1 of each network so far
    results: dict[str, dict[str, float]] = field(default_factory=dict)  # of the last evaluation
    seconds_before: float = 0.0  # training time of the run(s) this one resumes
    t_start: float = 0.0

    def train_seconds(self) -> float:
        return self.seconds_before + time.time() - self.t_start


# ----------------------------------------------------------------------------- the run


def train_cls(cfg: ClsConfig, resume: str | None = None, force_resume: bool = False) -> dict[str, Any]:
    """Train and evaluate from a validated :class:`ClsConfig`; returns the results dict.

    ``resume``: a ``last.pth`` path, or ``"auto"`` for ``output_dir/last.pth`` (from scratch
    when there is none). ``force_resume`` accepts a checkpoint made with another config.
    The run holds :class:`RunLock` on ``output_dir`` from before its first write to its end.
    """
    with RunLock(cfg.output_dir):
        return _train_cls(cfg, resume, force_resume)


def _train_cls(cfg: ClsConfig, resume: str | None, force_resume: bool) -> dict[str, Any]:
    device = resolve_device(cfg.train.device)
    if cfg.train.threads is not None and device.type == "cpu":
        torch.set_num_threads(cfg.train.threads)
    out = Path(cfg.output_dir)
    chash = resume_hash(cfg)
    ckpt_path, ckpt = resume_checkpoint(
        resume, out, chash, force_resume, CHECKPOINT_ENTRIES,
        saved_hash=lambda text, src: resume_hash(cls_config_from_dict(yaml.safe_load(text), src)))
    if ckpt is None:
        prepare_output_dir(out)
    if cfg.train.tensorboard:
        require_tensorboard()
    logger = setup_logging(out)
    if resume == "auto" and ckpt is None:
        logger.info("--resume auto: no last.pth in %s, starting from scratch", out)
    seed_everything(cfg.train.seed)

    data = load_cls_data(cfg.data)
    if len(data.train_labels) == 0 or len(data.test_labels) == 0:
        raise DetkdError(f"{data.name}: empty train or test split")
    logger.info("data: %s", data.summary())
    train_loader, test_loader = build_loaders(cfg, data, device)
    plan = IterationPlan.of(len(train_loader), cfg.train.epochs, cfg.train.max_iters)
    teachers = [build_teacher(tc, i, data, device) for i, tc in enumerate(cfg.teachers)]
    # Building the teachers draws from the RNG (their random init, then overwritten): re-seed
    # so that the trained networks start from the same weights whatever the number of
    # teachers — the student of kd/camkd, peer 0 of dml and sub-network 0 of ffl start like
    # the baseline's student of the same train.seed (paired comparisons).
    torch.manual_seed(cfg.train.seed)
    method, specs = build_method(cfg, data, teachers, plan, device)
    log_networks(cfg, data, method, specs, teachers, plan, device, logger)

    atomic_write_text(dump_config(cfg), out / "config.yaml")
    metrics = MetricsWriter(out / "metrics.jsonl", cfg.train.tensorboard)
    method.nonfinite = NonFiniteGuard(cfg.train.nonfinite_policy, cfg.train.max_nonfinite_skips, out, logger,
                                      metrics)
    run = ClsRun(cfg, out, chash, logger, data, train_loader, test_loader, metrics, specs)
    teacher_results = evaluate_teachers(run, teachers) if teachers and cfg.eval.evaluate_teachers else {}
    state = ClsState(method, Position(plan))
    if ckpt is not None:
        resume_state(run, state, ckpt, ckpt_path)
    train_loop(run, state)
    return finish(run, state, teacher_results)


def build_loaders(cfg: ClsConfig, data: ClsData, device: torch.device) -> tuple[BatchLoader, BatchLoader]:
    t = cfg.train
    train_loader = BatchLoader(data.train_images, data.train_labels, t.batch_size, data.mean, data.std, device,
                               train=True, augment=cfg.data.augment, crop_padding=cfg.data.crop_padding,
                               hflip=cfg.data.hflip, seed=t.seed)
    test_loader = BatchLoader(data.test_images, data.test_labels, cfg.eval.batch_size, data.mean, data.std, device,
                              train=False)
    return train_loader, test_loader


def build_method(cfg: ClsConfig, data: ClsData, teachers: list[nn.Module], plan: IterationPlan,
                 device: torch.device) -> tuple[Any, dict[str, dict[str, Any]]]:
    """The trained networks (student, or peers / sub-networks) inside their method, and their specs."""
    method = METHODS[cfg.method.name]
    specs: dict[str, dict[str, Any]] = {}
    if method.peer_prefix is not None:
        peer_cfgs = list(cfg.peers) or [cfg.model] * cfg.num_peers
        prefix = method.peer_prefix
        nets = []
        for k, pc in enumerate(peer_cfgs):
            net = build_cls_net(pc, data, device)
            if pc.checkpoint:
                load_weights(net, pc, data, f"peers[{k}]" if cfg.peers else f"model (peer {k})")
            nets.append(net)
            specs[f"{prefix}{k}"] = net_spec(pc, data)
    else:
        nets = [build_cls_net(cfg.model, data, device)]
        if cfg.model.checkpoint:
            load_weights(nets[0], cfg.model, data, "model")
        specs["student"] = net_spec(cfg.model, data)
    return method(cfg, nets, teachers, data, plan.iters_per_epoch, plan.total_iters), specs


def log_networks(cfg: ClsConfig, data: ClsData, method: Any, specs: dict[str, dict[str, Any]],
                 teachers: list[nn.Module], plan: IterationPlan, device: torch.device, logger: logging.Logger) -> None:
    for key, net in method.networks.items():
        desc = describe(specs[key]) if key in specs else "fusion module"
        logger.info("%s: %s, %.3fM parameters", key, desc, count_parameters(net) / 1e6)
    for i, (tc, tnet) in enumerate(zip(cfg.teachers, teachers)):
        logger.info("teacher %d: %s from %s, %.3fM parameters (frozen)", i, describe(net_spec(tc, data)),
                    tc.checkpoint, count_parameters(tnet) / 1e6)
    logger.info("method %s; device %s; lr %.4g; %d iterations (%d/epoch, batch %d)", cfg.method.name, device,
                method.lr, plan.total_iters, plan.iters_per_epoch, cfg.train.batch_size)


def evaluate_teachers(run: ClsRun, teachers: list[nn.Module]) -> dict[str, dict[str, float]]:
    results = {f"teacher{i}": evaluate(lambda x, n=tnet: {"t": n(x)}, run.test_loader, run.data.num_classes)["t"]
               for i, tnet in enumerate(teachers)}
    run.logger.info("teachers: %s", ", ".join(f"{k} top1 {v['top1']:.2f}" for k, v in results.items()))
    run.metrics.write({"type": "eval_teachers", **{f"{k}/{m}": v for k, r in results.items() for m, v in r.items()}})
    return results


def resume_state(run: ClsRun, state: ClsState, ckpt: dict[str, Any], path: Path) -> None:
    """Continue from a ``last.pth``: the method's states, the position, the best top-1 so far, RNG states."""
    state.method.load_state(ckpt)
    pos = state.pos
    pos.epoch, pos.iteration = int(ckpt["epoch"]), int(ckpt["iter"])
    state.best = dict(ckpt.get("best", {}))
    state.seconds_before = float(ckpt.get("train_seconds", 0.0))
    if not pos.done:  # a finished run is only evaluated again: no RNG needed
        if "rng" not in ckpt:
            raise DetkdError(f"--resume: {path} was written by an older detkd without RNG states; it "
                             f"cannot be resumed exactly")
        set_rng_state(ckpt["rng"])
        run.train_loader.generator.set_state(ckpt["loader_rng"])
    run.logger.info("resumed from %s at epoch %d, iteration %d", path, pos.epoch, pos.iteration)


# ----------------------------------------------------------------------------- the loop


def train_loop(run: ClsRun, state: ClsState) -> None:
    """The epochs from ``state.pos`` on: steps and log lines, then evaluation and ``last.pth`` when due."""
    pos, t, method = state.pos, run.cfg.train, state.method
    state.t_start = time.time()
    speed = SpeedMeter(pos.iteration, pos.plan.total_iters)
    for epoch in range(pos.epoch, pos.plan.epochs):
        pos.epoch = epoch
        run.train_loader.set_epoch(epoch)
        method.train()
        for x, y in epoch_batches(run.train_loader, pos, speed):
            values = method.step(x, y, epoch)
            if values is None:  # a non-finite loss: the step was skipped (train.nonfinite_policy)
                continue
            pos.step_done()
            speed.step_done()
            if pos.plan.log_due(pos.iteration, t.log_interval):
                log_train_step(run.logger, run.metrics, epoch, pos.iteration, pos.plan.total_iters, method.lr,
                               values, speed.interval(pos.iteration))
        done = pos.done
        pos.epoch, pos.iter_in_epoch = epoch + 1, 0  # checkpoints resume at the next epoch
        if epoch_due(epoch, t.eval_interval, done):
            run_eval(run, state, epoch)
        if epoch_due(epoch, t.checkpoint_interval, done):
            save_checkpoint(run, state)
        if done:
            break


def run_eval(run: ClsRun, state: ClsState, epoch: int) -> None:
    """Evaluate every network, log it, and keep the best top-1 of each (``state.best``)."""
    state.method.eval()
    res = evaluate(state.method.eval_logits, run.test_loader, run.data.num_classes)
    it = state.pos.iteration
    run.logger.info("eval epoch %d iter %d: %s", epoch, it,
                    " ".join(f"{k} top1={v['top1']:.2f} top5={v['top5']:.2f}" for k, v in res.items()))
    run.metrics.write({"type": "eval", "epoch": epoch, "iter": it,
                       **{f"{k}/{m}": v for k, r in res.items() for m, v in r.items()}})
    for k, r in res.items():
        state.best[k] = max(state.best.get(k, -1.0), r["top1"])
    state.results = res


def save_checkpoint(run: ClsRun, state: ClsState) -> None:
    """``last.pth``: everything an exact resume needs (all networks, auxiliary modules,
    optimizers and schedulers, the training loader's augmentation RNG), at ``state.pos``."""
    m = state.method
    ckpt = {"networks": {k: n.state_dict() for k, n in m.networks.items()}, **m.aux_state(), **m.optimizer_state(),
            "epoch": state.pos.epoch, "iter": state.pos.iteration, "best": state.best,
            "loader_rng": run.train_loader.generator.get_state(), "train_seconds": state.train_seconds(),
            **run_record(run.cfg, run.config_hash)}
    atomic_save(ckpt, run.out / "last.pth")


def finish(run: ClsRun, state: ClsState, teacher_results: dict[str, dict[str, float]]) -> dict[str, Any]:
    """The weights file of every trained network and ``results.json``; returns its summary."""
    cfg, data, pos = run.cfg, run.data, state.pos
    if not state.results:  # resumed from the last checkpoint of a finished run
        run_eval(run, state, pos.plan.epochs - 1)
    results, train_seconds = state.results, state.train_seconds()
    for key, net in state.method.networks.items():
        fname = "model_final.pth" if key == "student" else f"{key}_final.pth"
        entry = {"model": net.state_dict(), "version": detkd.__version__, "method": cfg.method.name,
                 "dataset": data.name, "class_names": data.class_names, "image_size": data.image_size}
        if key in run.specs:
            entry.update(net=run.specs[key], **results.get(key, {}))
        atomic_save(entry, run.out / fname)
    summary = {
        "method": cfg.method.name, "dataset": data.name, "train_images": len(data.train_labels),
        "labelled_images": data.num_labelled, "test_images": len(data.test_labels),
        "networks": results, "best_top1": state.best, "teachers": teacher_results,
        "iterations": pos.iteration, "epochs": pos.plan.epochs, "train_seconds": round(train_seconds, 1),
    }
    atomic_write_text(json.dumps(summary, indent=2), run.out / "results.json")
    run.logger.info("done in %.1fs: %s; results %s", train_seconds,
                    " ".join(f"{k} top1={v['top1']:.2f}" for k, v in results.items()), run.out / "results.json")
    run.metrics.close()
    return summary
