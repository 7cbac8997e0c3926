"""The real command-line tools, end to end on tiny settings: train, distill, evaluate, errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import eval_det
import train_det
from conftest import REPO, tiny_opts


def run_tool(module, argv: list[str]) -> int:
    from detkd.utils.cli import run_cli

    return run_cli(module.main, module.build_parser(), argv)


@pytest.fixture(scope="module")
def teacher_run(tiny_demo_dir, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("teacher") / "run"
    opts = tiny_opts(tiny_demo_dir, out, **{"train.max_iters": 4, "model.out_channels": 48})
    assert run_tool(train_det, ["--cfg", str(REPO / "configs/demo/teacher_demo.yaml"), "--no-progress",
                                "--opts", *opts]) == 0
    return out


def test_distillation_run_and_student_checkpoint_evaluates_to_same_ap(teacher_run, tiny_demo_dir, tmp_path, capsys):
    out = tmp_path / "distill"
    # The teacher is named by the config it was trained with (saved beside its run).
    opts = tiny_opts(tiny_demo_dir, out, **{"train.max_iters": 16, "train.optimizer.lr": 0.02, "teacher.checkpoint": teacher_run / "model_final.pth",
                                            "teacher.config": teacher_run / "config.yaml", "train.log_interval": 1,
                                            # keep every detection: non-zero recall makes the AP check bite
                                            "model.box_score_thresh": 0.0})
    assert run_tool(train_det, ["--cfg", str(REPO / "configs/demo/distill_demo.yaml"), "--no-progress",
                                "--opts", *opts]) == 0
    log = (out / "log.txt").read_text()
    for term in ("loss_rpn_soft", "loss_rcn_soft", "loss_rpn_bound", "loss_rcn_bound", "loss_hint",
                 "rpn_bound_active", "rcn_bound_active"):
        assert term in log, term
    final = json.loads((out / "results.json").read_text())["final"]

    capsys.readouterr()
    metrics_file = tmp_path / "eval.json"
    assert run_tool(eval_det, ["--cfg", str(out / "config.yaml"), "--ckpt", str(out / "model_final.pth"),
                               "--out", str(metrics_file), "--no-progress"]) == 0
    evaluated = json.loads(metrics_file.read_text())
    assert final["AR100"] > 0, final
    assert evaluated == final


@pytest.mark.parametrize("argv_extra, message", [
    (["--opts", "model.num_clases=3"], "unknown config key 'model.num_clases'"),
    (["--opts", "train.epochs=many"], "'train.epochs': expected an integer"),
    (["--opts", "data.train.type=kitti"], "must be one of"),
    (["--opts", "model.weights=/nonexistent/w.pth"], "weight file not found: /nonexistent/w.pth"),
])
def test_bad_input_is_one_line_error(argv_extra, message, tmp_path, capsys):
    code = run_tool(train_det, ["--cfg", str(REPO / "configs/demo/faster_rcnn_demo.yaml"),
                                "--output-dir", str(tmp_path / "o"), *argv_extra])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert err.startswith("error: ") and message in err and "\n" not in err
    assert not (tmp_path / "o" / "last.pth").exists()


def test_distill_with_mismatched_teacher_checkpoint(teacher_run, tiny_demo_dir, tmp_path, capsys):
    opts = tiny_opts(tiny_demo_dir, tmp_path / "d", **{"teacher.checkpoint": teacher_run / "model_final.pth",
                                                      "teacher.config": teacher_run / "config.yaml",
                                                      "teacher.model.out_channels": 64})
    code = run_tool(train_det, ["--cfg", str(REPO / "configs/demo/distill_demo.yaml"), "--opts", *opts])
    err = capsys.readouterr().err
    assert code == 2 and "model_final.pth" in err and "does not match" in err


def test_help_documents_every_flag(capsys):
    with pytest.raises(SystemExit):
        run_tool(train_det, ["--help"])
    text = capsys.readouterr().out
    for flag in ("--cfg", "--opts", "--resume", "--force-resume", "--output-dir", "--no-progress", "--debug"):
        assert flag in text


def test_teacher_with_another_label_map_is_refused(teacher_run, tiny_demo_dir, tmp_path, capsys):
    import json
    import shutil

    names = json.loads((teacher_run / "classes.json").read_text())
    assert len(names) == 10 and names[0] == "T-shirt/top"
    other = tmp_path / "teacher"
    other.mkdir()
    shutil.copy(teacher_run / "model_final.pth", other / "model_final.pth")
    (other / "classes.json").write_text(json.dumps(names[1:] + names[:1]))  # same count, shifted labels
    opts = tiny_opts(tiny_demo_dir, tmp_path / "d", **{"teacher.checkpoint": other / "model_final.pth",
                                                      "teacher.config": teacher_run / "config.yaml"})
    code = run_tool(train_det, ["--cfg", str(REPO / "configs/demo/distill_demo.yaml"), "--opts", *opts])
    err = capsys.readouterr().err
    assert code == 2 and "another label map" in err and "label 1" in err
    assert not (tmp_path / "d" / "last.pth").exists()


def _distill_opts(teacher_run, tiny_demo_dir, out, **extra):
    return tiny_opts(tiny_demo_dir, out, **{"teacher.checkpoint": teacher_run / "model_final.pth",
                                            "teacher.config": teacher_run / "config.yaml", **extra})


def test_forced_nan_in_a_distillation_term_stops_by_name_and_keeps_checkpoint(teacher_run, tiny_demo_dir, tmp_path,
                                                                             capsys, monkeypatch):
    import torch

    import detkd.distill.methods.chen as distiller_mod  # where the hint term is computed

    out = tmp_path / "d"
    cfg = str(REPO / "configs/demo/distill_demo.yaml")
    assert run_tool(train_det, ["--cfg", cfg, "--no-progress", "--opts",
                                *_distill_opts(teacher_run, tiny_demo_dir, out, **{"train.max_iters": 2})]) == 0
    before = (out / "last.pth").read_bytes()
    monkeypatch.setattr(distiller_mod, "hint_losses", lambda *a, **k: torch.tensor(float("nan")))
    capsys.readouterr()
    code = run_tool(train_det, ["--cfg", cfg, "--no-progress", "--resume", "auto", "--opts",
                                *_distill_opts(teacher_run, tiny_demo_dir, out, **{
                                    "train.max_iters": 4, "train.nonfinite_policy": "stop"})])
    err = capsys.readouterr().err
    assert code == 2 and "non-finite loss in loss_hint" in err
    assert (out / "last.pth").read_bytes() == before


def test_forced_nan_is_skipped_and_reported_under_the_skip_policy(teacher_run, tiny_demo_dir, tmp_path, monkeypatch):
    import json

    import torch

    import detkd.distill.methods.chen as distiller_mod  # where the hint term is computed

    real = distiller_mod.hint_losses
    calls = {"n": 0}

    def nan_once(*args, **kwargs):
        calls["n"] += 1
        value = real(*args, **kwargs)
        return value * float("nan") if calls["n"] == 2 else value

    monkeypatch.setattr(distiller_mod, "hint_losses", nan_once)
    out = tmp_path / "d"
    assert run_tool(train_det, ["--cfg", str(REPO / "configs/demo/distill_demo.yaml"), "--no-progress", "--opts",
                                *_distill_opts(teacher_run, tiny_demo_dir, out, **{"train.max_iters": 3})]) == 0
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["terms"] for r in records if r["type"] == "nonfinite"] == [["loss_hint"]]
    assert json.loads((out / "results.json").read_text())["iterations"] == 3
    final = torch.load(out / "model_final.pth", weights_only=True)
    assert all(torch.isfinite(v).all() for v in final.values() if v.is_floating_point())
