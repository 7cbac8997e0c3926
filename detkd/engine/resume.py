"""Resuming a checkpoint with another world size or per-process batch size.

Why exact continuation is possible: :class:`detkd.data.sampler.ResumableSampler` draws one
permutation per epoch (the same whatever the world size) and deals it round-robin, so step
``i`` of a run with ``W`` processes of batch ``b`` consumes exactly the global samples
``[i*G, (i+1)*G)`` of the epoch's order, with ``G = W*b``. A checkpoint therefore stands at
global sample ``s = iter_in_epoch * G`` (recorded as ``epoch_sample``). A run with global batch
``G'`` continues exactly there when ``G'`` divides ``s``: each process skips ``s / W'`` of its
own samples, and the epoch goes on with the very next sample (the padding that makes the
epoch a multiple of ``W'`` is the new run's, at the end of the epoch).

The LR schedule is the new run's: its iteration counter is set to where the new run stands
at that sample (``epoch * iters_per_epoch' + s / G'``), its base LR is the new run's (the
linear scaling rule of ``optimizer.scale_lr`` follows ``G'``), and warm-up, milestones and
``max_iters`` count the new run's iterations. With the same global batch nothing changes.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from detkd.errors import DetkdError


@dataclass
class ResumePosition:
    epoch: int
    iter_in_epoch: int  # of this run
    moved: bool  # the global batch changed or the epoch restarts: the LR schedule is remapped


def resume_position(ckpt: dict[str, Any], world: int, batch: int, path: str | Path,
                    from_epoch_boundary: bool = False) -> ResumePosition:
    """Where this run (``world`` processes of ``batch``) resumes ``ckpt``; a one-line error
    when it cannot continue exactly and ``from_epoch_boundary`` is off."""
    # Checkpoints written before detkd recorded the layout: assume this run's.
    old_world, old_batch = int(ckpt.get("world_size", world)), int(ckpt.get("batch_size", batch))
    old_global, new_global = old_world * old_batch, world * batch
    epoch = int(ckpt["epoch"])
    sample = int(ckpt.get("epoch_sample", ckpt["iter_in_epoch"] * old_global))
    if sample % new_global == 0:
        return ResumePosition(epoch, sample // new_global, moved=new_global != old_global)
    if from_epoch_boundary:
        return ResumePosition(epoch, 0, moved=True)
    raise DetkdError(
        f"{path} stopped at sample {sample} of epoch {epoch} with {old_world} process(es) x batch {old_batch} "
        f"(global batch {old_global}); this run's global batch {world} x {batch} = {new_global} does not divide "
        f"{sample}, so it cannot continue at that sample: use a global batch of {old_global} (processes x "
        f"train.batch_size), or pass --resume-from-epoch-boundary to restart epoch {epoch} from its first sample")


def remap_schedule(scheduler: torch.optim.lr_scheduler.LambdaLR, lr: float, it: int) -> None:
    """Put a per-iteration LambdaLR (loaded from another run) at iteration ``it`` of this run,
    with this run's base ``lr``: each group's LR becomes ``lr * factor(it)``."""
    groups = scheduler.optimizer.param_groups
    scheduler.base_lrs = [lr] * len(groups)
    scheduler.last_epoch = it
    for group, factor in zip(groups, scheduler.lr_lambdas):
        group["initial_lr"] = lr
        group["lr"] = lr * factor(it)
    scheduler._last_lr = [g["lr"] for g in groups]
