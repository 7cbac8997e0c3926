"""The speed/accuracy report (tools/report.py, detkd/evaluation/report/ and profile.py) on
tiny, randomly initialised detectors: files, consistency of the numbers, the AP against
tools/eval_det.py, seed aggregation, the Pareto front and one-line errors."""

from __future__ import annotations

import csv
import json
import math
import statistics
from pathlib import Path

import pytest
import torch

import eval_det
import report as report_tool
from conftest import REPO, tiny_opts
from detkd.evaluation.report import ModelEntry, pareto_front, run_report

FAST = ["--warmup", "1", "--runs", "3", "--latency-rounds", "2", "--throughput-batch", "2", "--threads", "1",
        "--no-progress"]


def run_tool(module, argv: list[str]) -> int:
    from detkd.utils.cli import run_cli

    return run_cli(module.main, module.build_parser(), argv)


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def models(tiny_demo_dir, tmp_path_factory) -> dict[str, Path]:
    """A wider "teacher" and a narrower "student" config (random weights: enough for size,
    speed and the AP plumbing), with one teacher and two student seeds saved."""
    from detkd.config.dump import dump_config
    from detkd.recipe import load_config
    from detkd.modeling.detector import build_detector

    root = tmp_path_factory.mktemp("report_models")
    sizes = {"big": {"model.out_channels": 48, "model.representation_size": 64},
             "small": {"model.out_channels": 16, "model.representation_size": 32}}
    paths: dict[str, Path] = {}
    for kind, extra in sizes.items():
        # No ImageNet backbone (faster); score threshold 0 so random weights still detect.
        opts = tiny_opts(tiny_demo_dir, root / kind, **extra, **{"model.weights_backbone": "null",
                                                                "model.box_score_thresh": 0.0,
                                                                "model.box_detections_per_img": 500})
        cfg = load_config(REPO / "configs/demo/faster_rcnn_demo.yaml", opts)
        paths[kind] = root / f"{kind}.yaml"
        paths[kind].write_text(dump_config(cfg))
        for seed in ((0,) if kind == "big" else (0, 1)):
            torch.manual_seed(seed)
            model = build_detector(cfg.model)
            # Without box regression the detections are the RPN's near-anchor proposals, some of
            # which hit objects: non-zero recall makes the AP comparison with eval_det bite.
            torch.nn.init.zeros_(model.roi_heads.box_predictor.bbox_pred.weight)
            torch.nn.init.zeros_(model.roi_heads.box_predictor.bbox_pred.bias)
            paths[f"{kind}{seed}"] = root / f"{kind}_s{seed}.pth"
            torch.save(model.state_dict(), paths[f"{kind}{seed}"])
    return paths


@pytest.fixture(scope="module")
def cli_report(models, tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("report")
    argv = ["--out", str(out), *FAST,
            "--model", "teacher", str(models["big"]), str(models["big0"]),
            "--model", "student@0", str(models["small"]), str(models["small0"]),
            "--model", "student@s1", str(models["small"]), str(models["small1"])]
    assert run_tool(report_tool, argv) == 0
    return out, json.loads((out / "report.json").read_text())


def test_files_and_one_row_per_model(cli_report):
    out, rep = cli_report
    assert [r["label"] for r in rep["runs"]] == ["teacher", "student@0", "student@1"]
    with open(out / "report.csv") as f:
        rows = list(csv.DictReader(f))
    assert [(r["name"], r["seed"]) for r in rows] == [("teacher", ""), ("student", "0"), ("student", "1")]
    md = (out / "report.md").read_text()
    assert "| teacher | - |" in md and "| student | 0 |" in md and "| student | 1 |" in md
    assert "![speed/accuracy](report.png)" in md
    assert (out / "report.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "--runs 3" in rep["command"] and rep["environment"]["torch"] == torch.__version__
    assert rep["environment"]["torch_threads"] == 1 and rep["settings"]["runs"] == 3
    assert rep["settings"]["latency_rounds"] == 2 and "--latency-rounds 2" in rep["command"]


def test_numbers_are_finite_and_consistent(cli_report):
    _, rep = cli_report
    teacher, s0, s1 = rep["runs"]
    for run in rep["runs"]:
        lat = run["latency"]
        assert run["params"] > 0 and run["gflops"] > 0 and math.isfinite(run["gflops"])
        assert 0 < lat["min_ms"] <= lat["median_ms"] <= lat["p90_ms"] and lat["runs"] == 3
        assert run["throughput"]["images_per_s"] > 0 and run["throughput"]["batch_size"] == 2
        mem = run["memory"]
        assert mem["mem_method"] == "live_tensor_bytes" and mem["peak_mem_mb"] > mem["weights_mb"] > 0
        assert all(0.0 <= run["metrics"][k] <= 1.0 for k in ("AP", "AP50", "AR100"))
        assert run["metrics_source"] == "evaluated"
        # The per-module split covers the whole count.
        assert sum(run["gflops_by_module"].values()) == pytest.approx(run["gflops"])
    assert s0["params"] == s1["params"] < teacher["params"]
    assert s0["gflops"] < teacher["gflops"]
    assert teacher["speedup_vs_teacher"] == pytest.approx(1.0)
    assert s0["speedup_vs_teacher"] == pytest.approx(teacher["latency"]["median_ms"] / s0["latency"]["median_ms"])


def test_ap_equals_eval_det(cli_report, models, tmp_path):
    _, rep = cli_report
    out = tmp_path / "eval.json"
    assert run_tool(eval_det, ["--cfg", str(models["small"]), "--ckpt", str(models["small1"]),
                               "--out", str(out), "--no-progress", "--device", "cpu"]) == 0
    evaluated = json.loads(out.read_text())
    assert evaluated["AR100"] > 0  # random weights still find boxes: the comparison bites
    assert rep["runs"][2]["metrics"] == evaluated


def test_groups_aggregate_seeds(cli_report):
    out, rep = cli_report
    teacher, student = rep["groups"]
    assert (teacher["name"], teacher["n"], student["name"], student["n"]) == ("teacher", 1, "student", 2)
    aps = [r["metrics"]["AP50"] for r in rep["runs"][1:]]
    assert student["AP50_mean"] == pytest.approx(statistics.fmean(aps))
    assert student["AP50_std"] == pytest.approx(statistics.stdev(aps))
    assert teacher["AP50_std"] is None
    lats = [r["latency"]["median_ms"] for r in rep["runs"][1:]]
    assert student["latency_median_ms"] == pytest.approx(statistics.fmean(lats))
    assert any(g["pareto"] for g in rep["groups"])
    md = (out / "report.md").read_text()
    assert "## Groups" in md and "| student | 2 |" in md and " ± " in md


def test_given_metrics_and_speed_for_first_of_group(models, tmp_path):
    entries = [
        ModelEntry("teacher", str(models["big"]), str(models["big0"]), metrics={"AP": 0.3, "AP50": 0.5}),
        ModelEntry("student", str(models["small"]), str(models["small0"]), seed=0, metrics={"AP": 0.1, "AP50": 0.2}),
        ModelEntry("student", str(models["small"]), str(models["small1"]), seed=1, metrics={"AP": 0.2, "AP50": 0.4}),
    ]
    rep = run_report(entries, tmp_path, warmup=0, runs=2, throughput_batch=0, evaluate=False,
                     measure_speed_for="first_of_group", progress=False, command="test")
    teacher, s0, s1 = rep["runs"]
    assert s0["latency"] is not None and s1["latency"] is None and s0["throughput"] is None
    assert {r["metrics_source"] for r in rep["runs"]} == {"given"}
    student = rep["groups"][1]
    assert (student["n"], student["n_speed"]) == (2, 1)
    assert student["AP50_mean"] == pytest.approx(0.3) and student["AP50_std"] == pytest.approx(math.sqrt(0.02))
    assert student["latency_median_ms"] == s0["latency"]["median_ms"]
    assert (tmp_path / "report.png").is_file() and rep["accuracy_key"] == "AP50"


def test_pareto_front_on_hand_made_points():
    points = [(10, 0.5), (5, 0.4), (20, 0.45), (5, 0.3), (2, 0.1), (float("nan"), 0.9), (7, 0.4)]
    # (20, .45) loses to (10, .5); (5, .3) and (7, .4) to (5, .4); NaN is ignored.
    assert pareto_front(points) == [4, 1, 0]
    assert pareto_front([(1, 1), (1, 1)]) == [0, 1]
    assert pareto_front([(1, 0.2), (2, 0.2)]) == [0]
    assert pareto_front([]) == []


def test_flop_count_and_memory_tracker_on_a_linear_layer():
    from detkd.evaluation.profile import live_tensor_peak

    layer, x = torch.nn.Linear(100, 50), torch.randn(1, 100)
    with torch.inference_mode():
        peak = live_tensor_peak(lambda: layer(x), [*layer.parameters(), x])
    assert peak == (100 * 50 + 50 + 100 + 50) * 4  # weights, input, output; the transpose is a view

    from torch.utils.flop_counter import FlopCounterMode
    with FlopCounterMode(display=False) as counter:
        layer(x)
    assert counter.get_total_flops() == 2 * 100 * 50


class _Logged(torch.nn.Module):
    """A real (tiny) module that records, in a shared list, which model ran on which image."""

    def __init__(self, name: str, log: list):
        super().__init__()
        self.name, self.log, self.layer = name, log, torch.nn.Linear(4, 4)

    def forward(self, images):
        self.log.append((self.name, int(images[0][0])))
        return self.layer(images[0][1:5])


def test_latency_rounds_interleave_the_models():
    from detkd.evaluation.profile import measure_latency_interleaved

    log: list = []
    images = [torch.full((5,), float(i)) for i in range(3)]
    a, b = _Logged("a", log), _Logged("b", log)
    res = measure_latency_interleaved([(a, images), (b, images)], "cpu", warmup=2, runs=7, rounds=3)
    # Round shares 3, 2, 2; warm-up 2 before a model's first round, 1 before later ones.
    assert [n for n, _ in log] == ["a"] * 5 + ["b"] * 5 + ["a"] * 3 + ["b"] * 3 + ["a"] * 3 + ["b"] * 3
    # Each model cycles over the images without restarting in a new round.
    assert [i for n, i in log if n == "a"] == [0, 1, 2, 0, 1, 2, 0, 1, 2, 0, 1]
    assert [r["runs"] for r in res] == [7, 7] and [r["rounds"] for r in res] == [3, 3]
    assert all(0 < r["min_ms"] <= r["median_ms"] <= r["p90_ms"] for r in res)
    # More rounds than runs: empty rounds are skipped, every timed forward still counted.
    log.clear()
    res = measure_latency_interleaved([(a, images)], "cpu", warmup=0, runs=2, rounds=5)
    assert len(log) == 2 + 1 and res[0]["rounds"] == 2


@pytest.mark.parametrize("case, message", [
    ("missing_ckpt", "checkpoint not found: {missing}"),
    ("missing_cfg", "config file not found: {missing}"),
    ("mismatch", "checkpoint {big0} does not match the model config"),
    ("bad_name", "must be NAME or NAME@SEED"),
    ("bad_teacher", "--teacher 'prof' is not the name of any --model"),
    ("bad_baseline", "--baseline 'prof' is not the name of any --model"),
    ("html_no_eval", "--html needs the evaluation (its pictures and per-class AP): drop --no-eval"),
])
def test_bad_input_is_one_line_error(case, message, models, tmp_path, capsys):
    missing = tmp_path / "nope.pth"
    model = {"missing_ckpt": ["student", str(models["small"]), str(missing)],
             "missing_cfg": ["student", str(missing), str(models["small0"])],
             "mismatch": ["student", str(models["small"]), str(models["big0"])],
             "bad_name": ["student@x", str(models["small"]), str(models["small0"])],
             "bad_teacher": ["student", str(models["small"]), str(models["small0"])],
             "bad_baseline": ["student", str(models["small"]), str(models["small0"])],
             "html_no_eval": ["student", str(models["small"]), str(models["small0"])]}[case]
    extra = {"bad_teacher": ["--teacher", "prof"], "bad_baseline": ["--baseline", "prof"],
             "html_no_eval": ["--html", "--no-eval"]}.get(case, [])
    capsys.readouterr()
    code = run_tool(report_tool, ["--out", str(tmp_path / "r"), *FAST, *extra,
                                  "--model", "teacher", str(models["big"]), str(models["big0"]), "--model", *model])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert err.startswith("error: ") and "\n" not in err
    assert message.format(missing=missing, big0=models["big0"]) in err
    assert not (tmp_path / "r" / "report.md").exists()


def test_help_documents_every_flag(capsys):
    with pytest.raises(SystemExit):
        run_tool(report_tool, ["--help"])
    text = capsys.readouterr().out
    for flag in ("--model", "NAME[@SEED]", "--out", "--device", "--warmup", "--runs", "--throughput-batch",
                 "--threads", "--no-eval", "--metric", "--teacher", "--speed-for", "--debug", "--html",
                 "--baseline"):
        assert flag in text, flag


def test_html_page_is_valid_and_every_image_exists(models, tmp_path):
    from conftest import check_html_page

    out = tmp_path / "r"
    argv = ["--out", str(out), *FAST, "--html",
            "--model", "teacher", str(models["big"]), str(models["big0"]),
            "--model", "baseline", str(models["small"]), str(models["small0"]),
            "--model", "distilled@0", str(models["small"]), str(models["small1"]),
            "--model", "distilled@1", str(models["small"]), str(models["small0"])]
    assert run_tool(report_tool, argv) == 0
    rep = json.loads((out / "report.json").read_text())
    assert rep["files"]["html"] == str(out / "report.html")
    titles = check_html_page(out / "report.html")
    assert titles == ["Comparison", "Accuracy against speed", "Per-class AP50", "Training curves",
                      "Example detections"]
    text = (out / "report.html").read_text()
    t, b = rep["groups"][0]["AP50_mean"], rep["groups"][1]["AP50_mean"]
    d = rep["groups"][2]["AP50_mean"]
    assert f"{100 * (d - b) / (t - b):.0f}%" in text  # the gap closed, from the baseline group
    assert "one seed" in text and "2 (0, 1)" in text  # the seed spread
    selection = json.loads((out / "pictures" / "selection.json").read_text())
    assert selection["pictures"] and all(Path(p["picture"]).is_file() for p in selection["pictures"])
    assert all(set(p["ap50"]) == {"teacher", "baseline", "distilled"} for p in selection["pictures"])
    assert all(r["per_class"] for r in rep["runs"])
