"""detkd.experiments. The detection seeds experiment (tools/run_experiment.py)
on the tiny demo data: every group trains for two iterations, the summary (table
and summary.json) aggregates the seeds, the report is written, and a second invocation skips
the finished runs. Also: the one mean ± std convention, the paired gains, the gap closed,
reusing a finished run only when its config is the requested one, the classification table."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from conftest import REPO, tiny_opts
from detkd.config.dump import dump_config
from detkd.recipe import load_config
from detkd.errors import DetkdError
from detkd.experiments import detection, plan, stats, tables
from detkd.experiments.runs import train_or_reuse
from detkd.utils.cli import run_cli


pytestmark = pytest.mark.usefixtures("one_thread")


def run(argv: list[str]) -> int:
    return run_cli(detection.main, detection.build_parser(), argv)


def experiment_argv(root, demo_dir) -> list[str]:
    # tiny_opts' output_dir is replaced per run by the tool; no ImageNet weights (faster).
    opts = [o for o in tiny_opts(demo_dir, root / "unused", **{"train.max_iters": 2, "model.weights_backbone": "null"})
            if not o.startswith("output_dir=")]
    return ["--output-root", str(root), "--seeds", "0,1", "--ablation-seeds", "0",
            "--only", "teacher,baseline,distilled,hint_only", "--threads", "1", "--no-progress",
            "--opts", *opts]


def test_experiment_trains_summarizes_and_skips(tiny_demo_dir, tmp_path, capsys):
    root = tmp_path / "exp"
    argv = experiment_argv(root, tiny_demo_dir)
    assert run([*argv, "--report-warmup", "1", "--report-runs", "2", "--throughput-batch", "0"]) == 0
    out = capsys.readouterr().out

    summary = json.loads((root / "summary.json").read_text())
    groups = {g["name"]: g for g in summary["groups"]}
    assert list(groups) == ["teacher", "baseline", "distilled", "hint_only"]
    assert {name: g["n"] for name, g in groups.items()} == {"teacher": 1, "baseline": 2, "distilled": 2,
                                                            "hint_only": 1}
    assert groups["baseline"]["seeds"] == [0, 1] and groups["distilled"]["seeds"] == [0, 1]
    for name, g in groups.items():
        for key in ("AP", "AP50"):
            assert len(g[key]) == g["n"]
            assert math.isfinite(g[f"{key}_mean"])
            if g["n"] > 1:
                assert math.isfinite(g[f"{key}_std"]) and g[f"{key}_std"] >= 0
            else:
                assert g[f"{key}_std"] is None
    assert "sample" in summary["std"]
    # Every run really trained its two iterations and wrote results.json where planned.
    for r in summary["runs"]:
        assert r["iterations"] == 2
        assert (Path(r["output_dir"]) / "results.json").is_file()
    assert (root / "baseline" / "seed1" / "results.json").is_file()
    assert (root / "teacher" / "results.json").is_file()
    # The distillation runs used the teacher's own run.
    dist_cfg = (root / "distilled" / "seed0" / "config.yaml").read_text()
    assert str((root / "teacher" / "model_final.pth").resolve()) in dist_cfg
    # The printed table: one line per group, mean ± std.
    assert "AP50 (mean ± std)" in out and "sample standard deviation" in out
    for name in groups:
        assert any(line.startswith(name) for line in out.splitlines())
    # The report.
    assert summary["report"] is not None
    assert (root / "report" / "report.md").is_file()
    report = json.loads((root / "report" / "report.json").read_text())
    assert [g["name"] for g in report["groups"]] == ["teacher", "baseline", "distilled", "hint_only"]

    # Second invocation: every run is skipped, nothing is retrained.
    stamps = {p: p.stat().st_mtime_ns for p in root.glob("**/results.json")}
    assert run([*argv, "--no-report"]) == 0
    out = capsys.readouterr().out
    assert out.count("skipped") == 6 and ": training ->" not in out and ": resuming ->" not in out
    assert {p: p.stat().st_mtime_ns for p in root.glob("**/results.json")} == stamps
    again = json.loads((root / "summary.json").read_text())
    assert [g["AP50_mean"] for g in again["groups"]] == [g["AP50_mean"] for g in summary["groups"]]
    assert again["report"] is None


def test_distillation_needs_the_teacher(tiny_demo_dir, tmp_path, capsys):
    argv = experiment_argv(tmp_path / "exp", tiny_demo_dir)
    argv[argv.index("--only") + 1] = "distilled"
    assert run([*argv, "--no-report"]) == 2
    assert "needs the finished teacher" in capsys.readouterr().err


def test_help_and_bad_arguments(capsys):
    with pytest.raises(SystemExit) as exc:
        run(["--help"])
    assert exc.value.code == 0
    text = " ".join(capsys.readouterr().out.split()).lower()
    for flag in ("--output-root", "--seeds", "--ablation-seeds", "--only", "--epochs", "--no-report", "--threads",
                 "--opts", "sample standard deviation"):
        assert flag in text
    with pytest.raises(SystemExit):
        run(["--only", "teacher,nonsense"])
    assert "unknown group" in capsys.readouterr().err


def test_summary_statistics():
    mean, std = stats.mean_std([0.1, 0.2, 0.3])
    assert mean == pytest.approx(0.2) and std == pytest.approx(0.1)  # sample std (n - 1)
    assert stats.mean_std([0.5]) == (0.5, None)
    # Per seed: baseline 0.09 / 0.11, distilled 0.12 / 0.14 (same seeds): paired gains 0.03 / 0.03.
    groups = [{"name": "baseline", "seeds": [0, 1], "AP50": [0.09, 0.11], "AP50_mean": 0.10, "AP50_std": 0.01414},
              {"name": "distilled", "seeds": [0, 1], "AP50": [0.12, 0.14], "AP50_mean": 0.13, "AP50_std": 0.01414}]
    gain = tables.distillation_gain(groups)
    assert gain["AP50_gain"] == pytest.approx(0.03) and gain["paired_AP50_gains"] == pytest.approx([0.03, 0.03])
    assert gain["paired_std"] == pytest.approx(0.0, abs=1e-12)
    assert gain["spread"] == pytest.approx(0.01414) and gain["exceeds_spread"]
    # Seed-for-seed gains that disagree widen the spread beyond both groups' own stds.
    groups[1].update(AP50=[0.16, 0.10], AP50_mean=0.13, AP50_std=0.04243)
    groups.append({"name": "baseline_fpn128", "seeds": [0], "AP50": [0.2], "AP50_mean": 0.2, "AP50_std": None})
    gain = tables.distillation_gain(groups)
    assert gain["paired_std"] == pytest.approx(0.05657, abs=1e-5) and not gain["exceeds_spread"]
    # Only pairs with both groups present are compared.
    assert [(g["baseline"], g["distilled"]) for g in tables.distillation_gains(groups)] == [
        ("baseline", "distilled")]


def test_plan_covers_every_main_group(tmp_path):
    args = detection.build_parser().parse_args(
        ["--output-root", str(tmp_path), "--seeds", "0,1", "--only", "baseline_fpn128,distilled_fpn128,hint_only"])
    runs = plan.plan_runs(args)
    assert [(r["name"], r["seed"]) for r in runs] == [
        ("baseline_fpn128", 0), ("distilled_fpn128", 0), ("baseline_fpn128", 1), ("distilled_fpn128", 1),
        ("hint_only", 0)]
    # Only the distillation runs are pointed at OUTPUT_ROOT/teacher.
    teacher_opts = {r["name"]: any(o.startswith("teacher.") for o in plan.run_overrides(r, args))
                    for r in runs}
    assert teacher_opts == {"baseline_fpn128": False, "distilled_fpn128": True, "hint_only": True}


def test_the_offline_group_reads_the_teachers_detections_file(tmp_path):
    args = detection.build_parser().parse_args(
        ["--output-root", str(tmp_path), "--seeds", "0", "--only", "fcos128,fcos128_predictions_offline"])
    runs = plan.plan_runs(args)
    opts = {r["name"]: [o for o in plan.run_overrides(r, args) if o.startswith("teacher.")] for r in runs}
    file = (tmp_path / "teacher" / "detections" / "detections_coco.json").resolve()
    assert opts == {"fcos128": [], "fcos128_predictions_offline": [f"teacher.detections={file}"]}
    offline = next(r for r in runs if r["name"] == "fcos128_predictions_offline")
    cfg = load_config(REPO / offline["config"], plan.run_overrides(offline, args))
    assert cfg.teacher.detections == str(file) and not cfg.teacher.checkpoint


def test_each_distillation_group_reads_its_own_teacher(tmp_path):
    """The family groups: the one-stage students read the Faster R-CNN teacher, the CrossKD group
    its FCOS teacher (a teacher group of its own, one run); gap shares are to the pair's teacher."""
    args = detection.build_parser().parse_args(
        ["--output-root", str(tmp_path), "--seeds", "0", "--only", "teacher,fcos_teacher,fcos,fcos_cwd,fcos_crosskd"])
    runs = plan.plan_runs(args)
    assert [(r["name"], r["seed"], r["output_dir"]) for r in runs][:2] == [
        ("teacher", None, tmp_path / "teacher"), ("fcos_teacher", None, tmp_path / "fcos_teacher")]
    teachers = {r["name"]: [o for o in plan.run_overrides(r, args) if o.startswith("teacher.checkpoint=")]
                for r in runs}
    assert teachers["fcos"] == [] and teachers["fcos_teacher"] == []
    assert teachers["fcos_cwd"] == [f"teacher.checkpoint={(tmp_path / 'teacher').resolve() / 'model_final.pth'}"]
    assert teachers["fcos_crosskd"] == [
        f"teacher.checkpoint={(tmp_path / 'fcos_teacher').resolve() / 'model_final.pth'}"]
    group = lambda name, ap50: {"name": name, "seeds": [0, 1], "AP50": ap50, "AP50_mean": sum(ap50) / 2,  # noqa: E731
                                "AP50_std": 0.0}
    gains = tables.distillation_gains([group("teacher", [0.5, 0.5]), group("fcos_teacher", [0.6, 0.6]),
                                       group("fcos", [0.3, 0.4]), group("fcos_cwd", [0.4, 0.45]),
                                       group("fcos_crosskd", [0.5, 0.5])])
    by = {g["distilled"]: g for g in gains}
    assert by["fcos_cwd"]["teacher"] == "teacher" and by["fcos_cwd"]["AP50_gap_closed"] == pytest.approx(0.5)
    assert by["fcos_cwd"]["paired_AP50_gap_closed"] == pytest.approx([0.5, 0.5])
    assert by["fcos_crosskd"]["teacher"] == "fcos_teacher" and by["fcos_crosskd"]["AP50_gap_closed"] == \
        pytest.approx(0.15 / 0.25)
    assert "60% of the AP50 gap to fcos_teacher" in tables.format_gain(by["fcos_crosskd"])


def test_experiment_table(tmp_path):
    """The classification experiment (tools/run_cls_experiment.py): mean ± std over seeds,
    paired differences, verdicts."""
    from detkd.experiments import classification, cls_tables

    def write(run: str, networks: dict[str, float]) -> None:
        (tmp_path / run).mkdir()
        res = {"networks": {k: {"top1": v, "top5": 99.0} for k, v in networks.items()}, "train_seconds": 1.0}
        (tmp_path / run / "results.json").write_text(json.dumps(res))

    for s, (b, k, p0, p1) in enumerate([(80.0, 83.0, 80.5, 79.0), (79.0, 82.0, 79.0, 80.0),
                                        (79.5, 82.5, 80.0, 79.5)]):
        write(f"baseline_s{s}", {"student": b})
        write(f"kd_s{s}", {"student": k})
        write(f"dml_s{s}", {"peer0": p0, "peer1": p1})
    table, data = cls_tables.tabulate(tmp_path, ["baseline", "kd", "dml"], [0, 1, 2])
    rows = {(r["method"], r["network"]): r for r in data["rows"]}
    assert math.isclose(data["baseline_mean"], 79.5) and math.isclose(data["baseline_std"], 0.5)
    kd = rows[("kd", "student")]
    assert math.isclose(kd["diff_mean"], 3.0) and math.isclose(kd["diff_std"], 0.0, abs_tol=1e-9)
    assert kd["verdict"] == "yes" and kd["per_seed"] == {"0": 83.0, "1": 82.0, "2": 82.5}
    assert rows[("dml", "peer0")]["verdict"] == "not beyond spread"  # +0.17 < spread
    assert rows[("dml", "peer1")]["verdict"] == "no"
    assert "| KD (teacher a) | student | 82.50 ± 0.50 | 83.00, 82.00, 82.50 | +3.00 ± 0.00 | yes |" in table
    assert classification.main(["--out", str(tmp_path), "--table-only", "--methods", "kd", "dml"]) == 0
    assert (tmp_path / "table.md").is_file()


def test_demo_reports_the_fraction_of_the_gap_closed():
    assert stats.gap_closed(0.5, 0.1, 0.3) == "50%"
    assert stats.gap_closed(0.472, 0.271, 0.311) == "20%"  # docs/results.md's 128-ch student
    assert stats.gap_closed(0.3, 0.3, 0.4).startswith("n/a")


# ----------------------------------------------------------------------------- the pieces both experiments share


def test_one_mean_std_convention_sample_std_and_none_for_one_value():
    from detkd.evaluation.report import aggregate
    from detkd.experiments import cls_tables

    # n = 3, by hand: mean 7/3; squared deviations 16/9 + 1/9 + 25/9 = 42/9, / (n - 1) = 7/3.
    mean, std = stats.mean_std([1.0, 2.0, 4.0])
    assert mean == pytest.approx(7 / 3) and std == pytest.approx(math.sqrt(7 / 3))  # not sqrt(14/9), ddof 0
    assert stats.mean_std([2.5]) == (2.5, None)  # n = 1: no spread, not 0
    assert stats.mean_std([]) == (None, None) and stats.mean_std([None, float("nan"), 3.0]) == (3.0, None)
    assert stats.format_mean_std(0.25, None) == "0.250 ± -" and stats.format_mean_std(80.7, 0.5, 2) == "80.70 ± 0.50"
    # The report, the detection summary and the classification table share that one function.
    assert aggregate.mean_std is stats.mean_std and tables.mean_std is stats.mean_std
    assert cls_tables.mean_std is stats.mean_std


def test_one_seed_classification_table_has_no_spread(tmp_path):
    from detkd.experiments import cls_tables

    for run, top1 in (("baseline_s0", 80.7), ("kd_s0", 81.2)):
        (tmp_path / run).mkdir()
        (tmp_path / run / "results.json").write_text(json.dumps({"networks": {"student": {"top1": top1}}}))
    table, data = cls_tables.tabulate(tmp_path, ["baseline", "kd"], [0])
    assert "| baseline | student | 80.70 ± - | 80.70 |  |  |" in table
    assert "| KD (teacher a) | student | 81.20 ± - | 81.20 | +0.50 ± - | not beyond spread |" in table
    assert data["baseline_std"] is None and [r["std"] for r in data["rows"]] == [None, None]


def test_paired_differences_spread_and_gap_fraction():
    assert stats.paired_differences({0: 0.3, 1: 0.5, 2: 0.4}, {1: 0.25, 0: 0.1}) == pytest.approx([0.2, 0.25])
    assert stats.spread(None, 0.01, 0.03) == 0.03 and stats.spread(None, None) is None
    assert stats.gap_fraction(0.5, 0.1, 0.3) == pytest.approx(0.5) and stats.gap_fraction(0.3, 0.3, 0.4) is None


def _finished_run(out: Path, opts: list[str]):
    """A finished run without training: config.yaml (dump_config) and results.json."""
    cfg = load_config(REPO / "configs" / "demo" / "student_demo.yaml", [*opts, f"output_dir={out}"])
    out.mkdir(parents=True)
    (out / "config.yaml").write_text(dump_config(cfg))
    results = {"final": {"AP": 0.1, "AP50": 0.25}, "train_seconds": 3.0, "iterations": 7}
    (out / "results.json").write_text(json.dumps(results))
    return cfg, results


def test_train_or_reuse_reuses_a_finished_run_of_the_same_config_only(tmp_path):
    # student_demo.yaml keeps the schema's default train.scheduler.milestones: the requested config
    # and its config.yaml read back must hash alike (schema defaults are stored as the loader converts).
    out = tmp_path / "run"
    cfg, results = _finished_run(out, ["train.seed=3"])
    stamp = (out / "results.json").stat().st_mtime_ns
    said = []
    same = load_config(REPO / "configs" / "demo" / "student_demo.yaml", ["train.seed=3", f"output_dir={out}"])
    assert train_or_reuse(same, "student_demo.yaml", lambda *e: said.append(e[0])) == results
    assert said == ["reused"] and (out / "results.json").stat().st_mtime_ns == stamp
    assert sorted(p.name for p in out.iterdir()) == ["config.yaml", "results.json"]  # nothing trained

    other = load_config(REPO / "configs" / "demo" / "student_demo.yaml", ["train.seed=4", f"output_dir={out}"])
    with pytest.raises(DetkdError) as exc:
        train_or_reuse(other, "student_demo.yaml", lambda *e: said.append(e[0]))
    msg = str(exc.value)
    assert msg == (f"{out} holds a finished run of another config than student_demo.yaml; move it away "
                   "or choose another --output-root") and "\n" not in msg
    (out / "config.yaml").unlink()
    with pytest.raises(DetkdError, match="without its config.yaml"):
        train_or_reuse(same, "student_demo.yaml", lambda *e: said.append(e[0]))
    assert said == ["reused"] and sorted(p.name for p in out.iterdir()) == ["results.json"]


def test_experiment_refuses_a_finished_run_of_another_config(tmp_path, capsys):
    """tools/run_experiment.py on a fake finished baseline run: reused as it is, refused in
    one line once the requested config differs (--epochs), nothing trained either way."""
    root = tmp_path / "exp"
    argv = ["--output-root", str(root), "--only", "baseline", "--seeds", "0", "--no-report", "--no-progress"]
    (only,) = plan.plan_runs(detection.build_parser().parse_args(argv))
    cfg = load_config(REPO / only["config"], plan.run_overrides(only, detection.build_parser().parse_args(argv)))
    out = root / "baseline" / "seed0"
    out.mkdir(parents=True)
    (out / "config.yaml").write_text(dump_config(cfg))
    (out / "results.json").write_text(json.dumps({"final": {"AP": 0.1, "AP50": 0.2}, "iterations": 5}))
    assert run(argv) == 0
    assert "baseline seed 0: finished run in" in capsys.readouterr().out
    assert json.loads((root / "summary.json").read_text())["groups"][0]["AP50_mean"] == 0.2
    assert run([*argv, "--epochs", "9"]) == 2
    err = capsys.readouterr().err
    assert err == (f"error: {out} holds a finished run of another config than {only['config']}; move it away "
                   "or choose another --output-root\n")
    assert sorted(p.name for p in out.iterdir()) == ["config.yaml", "results.json"]


def test_tools_are_wrappers_of_the_package():
    import run_cls_experiment
    import run_demo
    import run_experiment

    from detkd.experiments import classification, demo

    assert run_experiment.main is detection.main and run_experiment.build_parser is detection.build_parser
    assert run_demo.main is demo.main and run_demo.build_parser is demo.build_parser
    assert run_cls_experiment.main is classification.main


def test_demo_reuses_its_finished_runs_without_training(tmp_path, capsys):
    """tools/run_demo.py / detkd demo on three fake finished runs: read back, nothing trained."""
    import argparse

    from detkd.experiments import demo

    root = tmp_path / "demo"
    for (_, cfg_file, folder), ap50 in zip(demo.RUNS, (0.6, 0.2, 0.4)):
        opts = [f"output_dir={root / folder}"]
        if folder.startswith("distill"):
            opts.append(f"teacher.checkpoint={root / 'teacher' / 'model_final.pth'}")
        (root / folder).mkdir(parents=True)
        (root / folder / "config.yaml").write_text(dump_config(load_config(REPO / cfg_file, opts)))
        (root / folder / "results.json").write_text(json.dumps({"final": {"AP": ap50 / 2, "AP50": ap50}}))
    args = argparse.Namespace(output_root=str(root), epochs=None, no_progress=True, debug=False)
    assert demo.main(args) == 0
    out = capsys.readouterr().out
    assert out.count(": reusing finished run") == 3 and "[demo] training" not in out
    # teacher 0.6 / baseline 0.2 / distilled 0.4 AP50: half of the gap.
    assert "50% of the teacher-student AP50 gap" in out and "[demo] no report page or comparison pictures" in out
    assert sorted(p.name for p in (root / "student").iterdir()) == ["config.yaml", "results.json"]


def test_method_section_overrides_go_only_to_that_methods_runs():
    from detkd.experiments.cls_plan import method_opts

    opts = ["method.kd.temperature=2", "method.ce_weight=0.5", "train.epochs=3", "method.dml.update=simultaneous"]
    assert method_opts("kd", opts) == ["method.kd.temperature=2", "method.ce_weight=0.5", "train.epochs=3"]
    assert method_opts("baseline", opts) == ["method.ce_weight=0.5", "train.epochs=3"]
    assert method_opts("dml_semi", opts) == ["method.ce_weight=0.5", "train.epochs=3", "method.dml.update=simultaneous"]


def test_cls_experiment_reuses_only_a_finished_run_of_the_same_config(tmp_path):
    """The classification experiment's reuse check: a finished run is reused only with the
    config it was made with (the resume hash of its saved config.yaml)."""
    from detkd.cls.config import load_cls_config
    from detkd.config.dump import dump_config
    from detkd.experiments.cls_plan import CFG
    from detkd.experiments.cls_runs import train

    out = tmp_path / "kd_s0"
    out.mkdir()
    (out / "config.yaml").write_text(dump_config(load_cls_config(CFG / "kd.yaml", ["train.seed=0",
                                                                                     f"output_dir={out}"])))
    (out / "results.json").write_text("{}")
    assert math.isnan(train(CFG / "kd.yaml", out, ["train.seed=0"], 1, tmp_path / "log.txt"))
    with pytest.raises(SystemExit, match="holds a finished run of another config than .*kd.yaml"):
        train(CFG / "kd.yaml", out, ["train.seed=1"], 1, tmp_path / "log.txt")
