"""Deep mutual learning (Zhang et al., CVPR 2018, "Deep Mutual Learning"), ``dml`` and
``dml_e``: K peers trained together, per peer ``L_k = CE(z_k, y) + (1/(K-1)) sum_{l != k}
KL(sg(p_l) || p_k)`` (``dml``) or ``CE(z_k, y) + KL(sg(mean_{l != k} p_l) || p_k)``
(``dml_e``), T = 1 (docs/methods.md, section 2); the two coincide for K = 2. Semi-supervised:
the CE is over the labelled samples only, the KL terms over every sample."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor, nn

from detkd.cls.data import UNLABELLED, ClsData
from detkd.cls.methods.base import ClsMethod
from detkd.cls.schema import ClsConfig
from detkd.losses.online import dml_losses


@dataclass
class DMLConfig:
    """``method.dml`` / ``method.dml_e``: ``sequential`` is the paper's Algorithm 1 (peer k
    updated against the others' current predictions), ``simultaneous`` updates all peers from
    one forward pass."""

    update: Literal["sequential", "simultaneous"] = "sequential"


class DMLMethod(ClsMethod):
    """K peers, one optimizer each; ``sequential`` updates follow DML's Algorithm 1 (peer k is
    updated against the current predictions of the others, which are recomputed after each
    update), ``simultaneous`` updates all peers from one forward."""

    config = DMLConfig
    peer_prefix = "peer"
    semi_supervised = True
    mode: Literal["peers", "ensemble"] = "peers"  # the target of each peer's KL (dml_losses)

    def __init__(self, cfg: ClsConfig, nets: list[nn.Module], teachers: list[nn.Module], data: ClsData,
                 iters_per_epoch: int, total_iters: int) -> None:
        super().__init__(cfg, iters_per_epoch, total_iters)
        self.peer_nets = peers = nets
        self.networks = {f"peer{k}": p for k, p in enumerate(peers)}
        self.sequential = cfg.method.options.update == "sequential"
        for p in peers:
            self.add_optimizer(list(p.parameters()))

    def train(self) -> None:
        for p in self.peer_nets:
            p.train()

    def _mask(self, y: Tensor) -> Tensor | None:
        mask = y != UNLABELLED
        return None if bool(mask.all()) else mask

    def step(self, x: Tensor, y: Tensor, epoch: int) -> dict[str, float] | None:
        mask = self._mask(y)
        k_peers = len(self.peer_nets)
        out: dict[str, float] = {}
        stepped = 0
        if self.sequential:
            # Algorithm 1: peer k is updated against the others' current predictions. Outputs
            # of peers not yet updated in this iteration are still current; the updated peer's
            # are recomputed (no grad) before the next peer's update.
            with torch.no_grad():
                current = [p(x) for p in self.peer_nets[1:]]
            current.insert(0, None)  # peer 0's logits are computed with grad below
            for k, peer in enumerate(self.peer_nets):
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
            logits = [p(x) for p in self.peer_nets]
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



class DMLEMethod(DMLMethod):
    """DML_e: each peer learns from the mean prediction of the others."""

    mode = "ensemble"
