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
