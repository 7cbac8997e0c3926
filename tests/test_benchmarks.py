"""The distillation-overhead benchmark runs end to end (a smoke test: timings are not asserted)."""

from __future__ import annotations

import json
import math
import subprocess
import sys

from conftest import REPO, tiny_opts


def test_distill_overhead_benchmark_reports_every_mode(tiny_demo_dir, tmp_path):
    out = tmp_path / "bench.json"
    opts = tiny_opts(tiny_demo_dir, tmp_path / "unused", **{"teacher.checkpoint": tmp_path / "none.pth"})
    done = subprocess.run([sys.executable, str(REPO / "benchmarks/distill_overhead.py"),
                           "--cfg", str(REPO / "configs/demo/distill_demo.yaml"), "--iters", "1", "--repeats", "2",
                           "--warmup", "1", "--batches", "2", "--threads", "1", "--out", str(out), "--opts", *opts],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(out.read_text())
    assert result["terms"] == ["hint", "rcn_bound", "rcn_soft", "rpn_bound", "rpn_soft"]
    for mode in ("student", "teacher", "distill"):
        t = result["ms_per_iter"][mode]
        assert 0 < t["min"] <= t["median"] <= t["max"] and math.isfinite(t["max"])
    for mode in ("student", "teacher", "distill"):
        assert result["peak_memory_mb"][mode] is not None
    assert "overhead (c) / ((a) + (b))" in done.stdout
    assert not (tmp_path / "unused").exists()  # a benchmark writes no run directory


def test_gpu_check_skips_in_one_line_without_cuda():
    import torch

    if torch.cuda.is_available():
        import pytest

        pytest.skip("a GPU is visible: the check would run for minutes")
    done = subprocess.run([sys.executable, str(REPO / "benchmarks/gpu_check.py")], capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    lines = done.stdout.splitlines()
    assert len(lines) == 1 and lines[0].startswith("gpu_check: skipped: CUDA is not available"), done.stdout


def test_gpu_check_counts_nonfinite_losses_and_skipped_steps(tmp_path):
    sys.path.insert(0, str(REPO / "benchmarks"))
    from gpu_check import loss_health

    rows = [{"iter": 10, "loss": 1.5, "loss_pkd": 0.25, "lr": 0.02},
            {"iter": 20, "loss": float("nan"), "loss_pkd": float("inf"), "lr": 0.02},
            {"type": "nonfinite", "iter": 21, "terms": ["loss_pkd"]},
            {"type": "eval", "AP50": 0.5}]
    (tmp_path / "metrics.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    assert loss_health(tmp_path / "metrics.jsonl") == {"loss_values": 4, "nonfinite_values": 2, "skipped_steps": 1}


def test_each_method_overrides_turn_exactly_that_method_on():
    sys.path.insert(0, str(REPO / "benchmarks"))
    from distill_overhead import method_opts

    from detkd.distill.methods import METHODS
    from detkd.recipe import load_config

    opts = method_opts()
    # crosskd: one-stage pairs only; predictions: every student family
    assert list(opts) == ["chen", *(m for m in METHODS if m not in ("chen", "crosskd"))]
    assert "crosskd" in method_opts(("fcos", "fcos")) and "crosskd" not in method_opts(("fcos", "faster_rcnn"))
    assert "predictions" in method_opts(("fcos", "faster_rcnn"))
    assert list(method_opts(("fcos", "faster_rcnn")))[0] == "as configured"
    cfg = REPO / "configs/demo/methods/pkd.yaml"  # PKD alone: "chen" keeps the config's own sections
    assert sorted(load_config(cfg, opts["chen"]).distill.methods) == ["pkd"]
    for name, extra in opts.items():
        if name != "chen":
            assert sorted(load_config(cfg, extra).distill.methods) == [name], name
