"""A checkpoint written before issue #19 (tests/fixtures/resume_v0, detkd at 6c19121) still
resumes: its config.yaml loads, ``--resume auto`` accepts its last.pth, the methods' weights
load, and the continued run repeats, to the float, the iterations that version logged."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest
import torch

from detkd.recipe import load_config
from detkd.engine.trainer import train

FIXTURE = Path(__file__).resolve().parent / "fixtures" / "resume_v0"
LOGGED = ("lr", "loss", "loss_classifier", "loss_box_reg", "loss_objectness", "loss_rpn_box_reg", "loss_rcn_soft",
          "loss_rcn_bound", "loss_rpn_soft", "loss_rpn_bound", "loss_hint", "loss_pkd")


@pytest.fixture
def run_dir(tmp_path, monkeypatch):
    """The fixture laid out as it was written: teacher.pth beside run/ (paths are relative)."""
    (tmp_path / "run").mkdir()
    shutil.copy(FIXTURE / "teacher.pth", tmp_path / "teacher.pth")
    for name in ("last.pth", "config.yaml", "classes.json"):
        shutil.copy(FIXTURE / name, tmp_path / "run" / name)
    monkeypatch.chdir(tmp_path)
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield tmp_path / "run"
    torch.set_num_threads(old)


def _continued(run: Path) -> list[dict]:
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [r for r in records if r["type"] == "train"]


def test_the_fixture_resumes_and_repeats_its_version(run_dir):
    cfg = load_config(run_dir / "config.yaml", ["train.max_iters=5"])
    train(cfg, resume="auto", progress=False)
    got = _continued(run_dir)
    want = json.loads((FIXTURE / "continued.json").read_text())
    assert [r["iter"] for r in got] == [r["iter"] for r in want] == [4, 5]
    for g, w in zip(got, want):
        for key in LOGGED:
            assert math.isclose(g[key], w[key], rel_tol=1e-6, abs_tol=1e-12), (g["iter"], key, g[key], w[key])
