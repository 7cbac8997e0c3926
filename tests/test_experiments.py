"""detkd.experiments (issue #14). The detection seeds experiment (tools/run_experiment.py,
issue #5) on the tiny demo data: every group trains for two iterations, the summary (table
and summary.json) aggregates the seeds, the report is written, and a second invocation skips
the finished runs. Also: the classification table and the gap closed."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from conftest import tiny_opts
from detkd.experiments import detection, plan, stats, tables
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

