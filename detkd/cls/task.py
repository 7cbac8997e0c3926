"""What a classification run does at each point of the driver (:mod:`detkd.engine.driver`).

:class:`ClsTask` holds a :class:`ClsRun` (what stays fixed: config, data, loaders, log and
metrics files) and a :class:`ClsState` (what the steps change: the method with its networks,
optimizers and schedulers, the :class:`~detkd.engine.loop.Position`, the best top-1 of each
network); its methods are the steps: the method's ``step`` as :meth:`~ClsTask.run_step`,
top-1/top-5 of every network as :meth:`~ClsTask.evaluate`, :meth:`~ClsTask.save_checkpoint`
(``last.pth`` that resumes exactly, mid-epoch too: the training loader's augmentation RNG
and its position in the epoch); :func:`finish` writes the weights files and
``results.json``. Building them is :mod:`detkd.cls.train`'s job.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

import detkd
from detkd.cls.config import ClsConfig
from detkd.cls.data import BatchLoader, ClsData
from detkd.engine.checkpoint import run_record
from detkd.engine.loop import Position
from detkd.utils.atomic import atomic_save, atomic_write_text
from detkd.utils.logger import MetricsWriter


@torch.no_grad()
def accuracy(logits_fn, loader: BatchLoader, num_classes: int) -> dict[str, dict[str, float]]:
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
    specs: dict[str, dict[str, Any]]  # the layout of each trained network (``net_spec``), fusion aside


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


@dataclass
class ClsTask:
    """The driver's :class:`~detkd.engine.driver.Task` for a classification run."""

    run: ClsRun
    state: ClsState

    @property
    def pos(self) -> Position:
        return self.state.pos

    def start_epoch(self, epoch: int) -> BatchLoader:
        loader = self.run.train_loader
        loader.set_epoch(epoch, start=self.pos.iter_in_epoch * self.run.cfg.train.batch_size)
        self.state.method.train()
        return loader

    def run_step(self, batch: tuple[torch.Tensor, torch.Tensor]) -> dict[str, float] | None:
        x, y = batch
        return self.state.method.step(x, y, self.pos.epoch)

    def log_values(self, step: dict[str, float]) -> dict[str, float]:
        return step

    def terms(self, step: dict[str, float]) -> dict[str, float]:
        return step

    def lr(self) -> float:
        return self.state.method.lr

    def evaluate(self, epoch: int) -> None:
        """Evaluate every network, log it, and keep the best top-1 of each (``state.best``)."""
        run, state = self.run, self.state
        state.method.eval()
        res = accuracy(state.method.eval_logits, run.test_loader, run.data.num_classes)
        it = state.pos.iteration
        run.logger.info("eval epoch %d iter %d: %s", epoch, it,
                        " ".join(f"{k} top1={v['top1']:.2f} top5={v['top5']:.2f}" for k, v in res.items()))
        run.metrics.write({"type": "eval", "epoch": epoch, "iter": it,
                           **{f"{k}/{m}": v for k, r in res.items() for m, v in r.items()}})
        for k, r in res.items():
            state.best[k] = max(state.best.get(k, -1.0), r["top1"])
        state.results = res

    def save_checkpoint(self, name: str) -> None:
        """Everything an exact resume needs (all networks, auxiliary modules, optimizers and
        schedulers, the training loader's augmentation RNG), at ``state.pos``."""
        run, state = self.run, self.state
        m, pos = state.method, state.pos
        ckpt = {"networks": {k: n.state_dict() for k, n in m.networks.items()}, **m.aux_state(),
                **m.optimizer_state(), "epoch": pos.epoch, "iter": pos.iteration, "iter_in_epoch": pos.iter_in_epoch,
                "best": state.best, "loader_rng": run.train_loader.generator.get_state(),
                "train_seconds": state.train_seconds(), **run_record(run.cfg, run.config_hash)}
        atomic_save(ckpt, run.out / name)


def finish(run: ClsRun, state: ClsState, teacher_results: dict[str, dict[str, float]]) -> dict[str, Any]:
    """The weights file of every trained network and ``results.json``; returns its summary."""
    cfg, data, pos = run.cfg, run.data, state.pos
    if not state.results:  # resumed from the last checkpoint of a finished run
        ClsTask(run, state).evaluate(pos.plan.epochs - 1)
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
