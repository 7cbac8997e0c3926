"""The training-health monitor's cost per step: a real training step (forward, backward, SGD) of
the experiment's FCOS and Faster R-CNN students at 160 px, batch 4, one thread, against the
monitor's work on it (every loss term and every module's gradient norm, GradientWatch). Prints
the medians over 25 steps. Not a test: nothing is asserted.

    python benchmarks/health_cost.py
"""
import logging
import statistics
import time

import torch
torch.set_num_threads(1)
from detkd.recipe import load_config
from detkd.modeling.detector import build_detector
from detkd.engine.health import GradientWatch, HealthMonitor
from detkd.utils.logger import MetricsWriter
for cfg_file in ("configs/experiment/families/fcos.yaml", "configs/experiment/student_fpn128.yaml"):
    cfg = load_config(cfg_file, ["model.weights_backbone=null"])
    torch.manual_seed(0)
    m = build_detector(cfg.model); m.train()
    g = torch.Generator().manual_seed(0)
    images = [torch.rand(3, 160, 160, generator=g) for _ in range(4)]
    targets = [{"boxes": torch.tensor([[10.0, 20, 60, 90], [80, 30, 150, 100]]), "labels": torch.tensor([1, 2])} for _ in range(4)]
    watch = GradientWatch(m)
    mon = HealthMonitor("warn", 50, logging.getLogger("x"), MetricsWriter(None, False))
    opt = torch.optim.SGD([p for p in m.parameters() if p.requires_grad], lr=1e-4)
    steps, checks = [], []
    for it in range(1, 31):
        t0 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        losses = m(images, targets); sum(losses.values()).backward(); opt.step()
        t1 = time.perf_counter()
        mon.observe(it, {**losses, **watch.norms()})
        t2 = time.perf_counter()
        if it > 5:
            steps.append(t1 - t0); checks.append(t2 - t1)
    print(cfg_file, f"{len(watch.names)} modules: step {statistics.median(steps)*1e3:.1f} ms, health {statistics.median(checks)*1e3:.2f} ms ({statistics.median(checks)/statistics.median(steps):.1%})")
