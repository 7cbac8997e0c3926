"""Feature fusion learning (Kim et al. 2019, "Feature Fusion for Online Mutual Knowledge
Distillation"): K sub-networks and a fusion module on their last stage maps,
``L = sum_i CE(z_i) + CE(z_f) + w(e) (sum_i KL_T(z_i, z_f) + KL_T(z_f, z_e))`` with z_e the
mean of the sub-networks' logits, T = 3 and w(e) = exp(-5 (1 - min(e, R)/R)^2), R = 80 epochs
(docs/methods.md, section 2)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
from torch import Tensor, nn

from detkd.cls.data import ClsData
from detkd.cls.methods.base import ClsMethod
from detkd.cls.models import feature_shapes
from detkd.cls.schema import ClsConfig
from detkd.config.fields import option
from detkd.losses.online import FusionModule, ffl_losses


@dataclass
class FFLConfig:
    """``method.ffl``."""

    temperature: float = option(3.0, gt=0)
    rampup_epochs: float = option(80.0, ge=0)
    eps: float = option(0.0, ge=0)  # authors' code: 1e-7 added to the target probabilities
    align_channels: bool = False  # 1x1 conv on sub-network maps of fewer channels
    fusion_lr: Optional[float] = None  # the fusion module's optimizer lr (default: train.optimizer.lr)


class FFLMethod(ClsMethod):
    """K sub-networks (one optimizer) and the fusion module (its own optimizer, lr
    ``fusion_lr``), both stepped on the joint loss."""

    config = FFLConfig
    peer_prefix = "sub"

    def __init__(self, cfg: ClsConfig, nets: list[nn.Module], teachers: list[nn.Module], data: ClsData,
                 iters_per_epoch: int, total_iters: int) -> None:
        super().__init__(cfg, iters_per_epoch, total_iters)
        self.options: FFLConfig = cfg.method.options
        subs = nets
        self.subs = subs
        channels = [feature_shapes(s, data.in_channels, data.image_size)[-1][0] for s in subs]
        device = next(subs[0].parameters()).device
        self.fusion = FusionModule(channels, data.num_classes, align_channels=self.options.align_channels).to(device)
        self.networks = {**{f"sub{k}": s for k, s in enumerate(subs)}, "fusion": self.fusion}
        self.add_optimizer([p for s in subs for p in s.parameters()])
        self.add_optimizer(list(self.fusion.parameters()), lr=self.options.fusion_lr)

    def train(self) -> None:
        for s in self.subs:
            s.train()
        self.fusion.train()

    def step(self, x: Tensor, y: Tensor, epoch: int) -> dict[str, float] | None:
        outs = [s(x, return_features=True) for s in self.subs]
        fused = self.fusion([o[1][-1] for o in outs])
        opts = self.options
        res = ffl_losses([o[0] for o in outs], fused, y, epoch, opts.temperature, opts.rampup_epochs, opts.eps)
        terms = {**{f"ce{k}": c for k, c in enumerate(res["ce"])}, "ce_fused": res["ce_fused"],
                 "kd_subs": res["kd_subs"], "kd_fused": res["kd_fused"]}
        if not self.backward_step(res["total"], terms, [0, 1]):
            return None
        self.scheduler_step()
        return {**{k: v.item() for k, v in terms.items()}, "w": res["weight"], "loss": res["total"].item()}

    @torch.no_grad()
    def eval_logits(self, x: Tensor) -> dict[str, Tensor]:
        outs = [s(x, return_features=True) for s in self.subs]
        res = {f"sub{k}": o[0] for k, o in enumerate(outs)}
        res["fused"] = self.fusion([o[1][-1] for o in outs])
        res["ensemble"] = torch.stack([o[0] for o in outs]).mean(dim=0)
        return res

