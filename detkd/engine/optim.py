"""Optimizer and per-iteration learning-rate schedule (linear warm-up, then step or cosine)."""

from __future__ import annotations

import math
from typing import Iterable

import torch

from detkd.config.schema import OptimizerConfig, SchedulerConfig


def scaled_lr(cfg: OptimizerConfig, batch_size: int, world_size: int) -> float:
    """The linear scaling rule (Goyal et al. 2017), when ``scale_lr`` is on."""
    if not cfg.scale_lr:
        return cfg.lr
    return cfg.lr * batch_size * world_size / cfg.reference_batch_size


def build_optimizer(params: Iterable[torch.nn.Parameter], cfg: OptimizerConfig, lr: float) -> torch.optim.Optimizer:
    params = [p for p in params if p.requires_grad]
    if cfg.name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=cfg.momentum, nesterov=cfg.nesterov,
                               weight_decay=cfg.weight_decay)
    return torch.optim.AdamW(params, lr=lr, betas=tuple(cfg.betas), weight_decay=cfg.weight_decay)


def lr_factor(it: int, cfg: SchedulerConfig, iters_per_epoch: int, total_iters: int) -> float:
    """Multiplier of the base lr at iteration ``it`` (0-based)."""
    if cfg.name == "step":
        milestones = [int(round(m * iters_per_epoch)) for m in cfg.milestones]
        factor = cfg.gamma ** sum(it >= m for m in milestones)
    elif cfg.name == "cosine":
        progress = min(it / max(total_iters, 1), 1.0)
        factor = cfg.min_lr_factor + (1 - cfg.min_lr_factor) * 0.5 * (1 + math.cos(math.pi * progress))
    else:
        factor = 1.0
    if it < cfg.warmup_iters:
        alpha = it / cfg.warmup_iters
        factor *= cfg.warmup_factor * (1 - alpha) + alpha
    return factor


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: SchedulerConfig, iters_per_epoch: int,
                    total_iters: int) -> torch.optim.lr_scheduler.LambdaLR:
    """Stepped once per iteration."""
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda it: lr_factor(it, cfg, iters_per_epoch, total_iters))
