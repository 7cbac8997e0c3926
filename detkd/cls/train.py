"""Setting up a classification run: :func:`train_cls`, read top to bottom.

Builds the data, the trainable networks (student, or peers / sub-networks), the frozen
teachers (loaded from checkpoints and checked against their config), the method
(:mod:`detkd.cls.methods`), resumes a ``last.pth`` when asked, and hands them, as a
:class:`~detkd.cls.task.ClsTask`, to the training driver detection uses too
(:func:`detkd.engine.driver.train_epochs`: log lines, evaluation and ``last.pth`` when due,
``train.checkpoint_period_iters``, the SIGINT/SIGTERM stop). What a step, an evaluation and a
checkpoint do is in :mod:`detkd.cls.task`. ``output_dir`` receives:

* ``config.yaml`` (the merged config), ``log.txt``, ``metrics.jsonl``;
* ``last.pth`` every ``train.checkpoint_interval`` epochs, every
  ``train.checkpoint_period_iters`` iterations and on SIGINT/SIGTERM (all networks, auxiliary
  modules, optimizer and scheduler states, the position in the epoch; atomic);
* one weights file per trained network — ``model_final.pth`` for a student,
  ``peer{k}_final.pth`` (DML), ``sub{k}_final.pth`` + ``fusion_final.pth`` (FFL) — that can
  serve as a teacher's ``checkpoint``;
* ``results.json``: top-1/top-5 (%) of every network (and for FFL the fused classifier
  and the ensemble; for DML the ensemble), of the teachers, the best top-1 seen, timings.

``resume`` (``detkd train-cls --resume auto|PATH``) continues from a ``last.pth``, mid-epoch
too: the networks, auxiliary modules, optimizers, schedulers, position, the best top-1 so far
and the RNG states (global and the training loader's augmentation generator) are restored, so
a resumed run ends with the same weights as an uninterrupted one.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import torch
import yaml
from torch import nn

from detkd.cls.config import ClsConfig, NetConfig, cls_config_from_dict
from detkd.cls.data import BatchLoader, ClsData, load_cls_data
from detkd.cls.methods import METHODS
from detkd.cls.models import CIFAR_RESNET_DEPTHS, build_net, count_parameters
from detkd.cls.task import ClsRun, ClsState, ClsTask, accuracy, finish
from detkd.config.dump import config_hash, dump_config
from detkd.engine.checkpoint import prepare_output_dir, resume_checkpoint
from detkd.engine.driver import LoopSettings, train_epochs
from detkd.engine.lock import RunLock
from detkd.engine.loop import IterationPlan, NonFiniteGuard, Position
from detkd.errors import DetkdError
from detkd.modeling.weights import read_weights, state_mismatch
from detkd.utils.atomic import atomic_write_text
from detkd.utils.logger import MetricsWriter, require_tensorboard, setup_logging
from detkd.utils.runtime import resolve_device, seed_everything, set_rng_state

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
    state.t_start = time.time()
    train_epochs(ClsTask(run, state), LoopSettings.of(cfg.train, out, logger, metrics))
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
    results = {f"teacher{i}": accuracy(lambda x, n=tnet: {"t": n(x)}, run.test_loader, run.data.num_classes)["t"]
               for i, tnet in enumerate(teachers)}
    run.logger.info("teachers: %s", ", ".join(f"{k} top1 {v['top1']:.2f}" for k, v in results.items()))
    run.metrics.write({"type": "eval_teachers", **{f"{k}/{m}": v for k, r in results.items() for m, v in r.items()}})
    return results


def resume_state(run: ClsRun, state: ClsState, ckpt: dict[str, Any], path: Path) -> None:
    """Continue from a ``last.pth``: the method's states, the position, the best top-1 so far, RNG states."""
    state.method.load_state(ckpt)
    pos = state.pos
    # A checkpoint of an earlier version was always taken at an epoch's end.
    pos.epoch, pos.iteration = int(ckpt["epoch"]), int(ckpt["iter"])
    pos.iter_in_epoch = int(ckpt.get("iter_in_epoch", 0))
    state.best = dict(ckpt.get("best", {}))
    state.seconds_before = float(ckpt.get("train_seconds", 0.0))
    if not pos.done:  # a finished run is only evaluated again: no RNG needed
        if "rng" not in ckpt:
            raise DetkdError(f"--resume: {path} was written by an older detkd without RNG states; it "
                             f"cannot be resumed exactly")
        set_rng_state(ckpt["rng"])
        run.train_loader.generator.set_state(ckpt["loader_rng"])
    run.logger.info("resumed from %s at epoch %d, iteration %d", path, pos.epoch, pos.iteration)
