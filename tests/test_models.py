"""Detector families from ``model.arch`` (detkd/modeling/families/): Faster R-CNN as before, bit for
bit; RetinaNet, FCOS, SSDlite and SSD on torchvision's stock builders and detkd's backbones; their
validation; and train -> eval -> predict -> export -> report end to end on tiny real models."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from pathlib import Path

import pytest
import torch
import yaml

from conftest import REPO, tiny_opts
from detkd.config.build import build_dataclass
from detkd.config.dump import config_hash
from detkd.recipe import config_from_dict, load_config
from detkd.config.schema import ARCH_FAMILIES, FAMILY_OPTIONS, STOCK_ARCHS, ModelConfig
from detkd.errors import DetkdError
from detkd.modeling.checkpoint_io import build_architecture
from detkd.modeling.detector import build_detector

pytestmark = pytest.mark.usefixtures("one_thread")

GOLDEN = REPO / "tests/fixtures/faster_rcnn_builds_10e792a.json"


def model_cfg(**model) -> ModelConfig:
    return config_from_dict({"model": model}).model


def digest(model: torch.nn.Module) -> str:
    h = hashlib.sha256()
    for k, v in model.state_dict().items():
        h.update(k.encode())
        h.update(v.detach().float().contiguous().numpy().tobytes())
    return h.hexdigest()


# ----------------------------------------------------------------------------- Faster R-CNN unchanged


@pytest.mark.parametrize("case", sorted(json.loads(GOLDEN.read_text())["cases"]))
def test_faster_rcnn_builds_are_those_of_before_the_families(case):
    """`arch: custom` and the fasterrcnn_* names build what detkd built at 10e792a: same keys, same
    seeded weights (hence the same construction order), same detections. Seeded weights depend on
    the CPU's kernels (torch's normal_ has its own AVX2 kernel): the fixture holds 10e792a's build
    under the vectorized kernels and under the plain ones, and the build must be one of them
    bit for bit, with that build's detections."""
    recorded = json.loads(GOLDEN.read_text())["cases"][case]
    spec = recorded["model"]
    cfg = load_config(REPO / spec["_base_"]).model if "_base_" in spec else model_cfg(**spec)
    torch.manual_seed(0)
    model = build_detector(cfg).eval()
    assert len(model.state_dict()) == recorded["keys"]
    assert sum(p.numel() for p in model.parameters() if p.requires_grad) == recorded["trainable"]
    variants = [recorded, recorded["default_kernels"]]
    want = next((v for v in variants if v["state_sha256"] == digest(model)), None)
    assert want is not None, f"{case}: weights of neither recorded kernel variant"
    torch.manual_seed(1)
    images = [torch.rand(3, 96, 112), torch.rand(3, 80, 96)]
    with torch.no_grad():
        got = model(images)
    for g, w in zip(got, want["detections"]):
        assert len(g["boxes"]) == w["n"]
        assert float(g["boxes"].sum()) == pytest.approx(w["box_sum"], rel=1e-5)
        assert float(g["scores"].sum()) == pytest.approx(w["score_sum"], rel=1e-5)


def test_shipped_config_hashes_are_those_of_before_the_families():
    """The model.<family> sections (None by default) leave the hash of a Faster R-CNN config as it
    was: runs of earlier versions resume (hashes recorded just before the families, with the
    hash rule that leaves defaults out; re-record only if the YAML itself changes)."""
    recorded = {"configs/demo/faster_rcnn_demo.yaml": "c193168ad55e6025",
                "configs/demo/distill_demo.yaml": "39445aa8248766af",
                "configs/coco/faster_rcnn_r50_fpn_1x.yaml": "0af7bfdf3f1e98df"}
    for path, want in recorded.items():
        assert config_hash(load_config(REPO / path)) == want, path
    cfg = load_config(REPO / "configs/demo/faster_rcnn_demo.yaml")
    other = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, arch="faster_rcnn"))
    assert config_hash(other) != config_hash(cfg)  # the hash still sees the model


def test_model_record_of_earlier_versions_rebuilds_the_same_model(tmp_path):
    """A model_final.pth written before the families (no model.<family> keys in its record)."""
    import detkd
    from detkd.modeling.checkpoint_io import META_KEY, model_state

    cfg = model_cfg(arch="custom", backbone="resnet18", num_classes=3, out_channels=16, representation_size=32,
                    min_size=96, max_size=96, box_score_thresh=0.0)
    model = build_detector(cfg).eval()
    state = model_state(model, cfg, ["a", "b"])
    record = state._metadata[META_KEY]["model"]
    for name in FAMILY_OPTIONS:
        record.pop(name, None)
    assert "retinanet" not in record and record["arch"] == "custom"
    torch.save(state, tmp_path / "old.pth")
    loaded, names = detkd.load_model(tmp_path / "old.pth")
    image = torch.rand(3, 96, 96)
    with torch.no_grad():
        want, got = model([image])[0], loaded([image])[0]
    assert names == ["a", "b"] and len(want["boxes"]) > 0
    assert all(torch.equal(want[k], got[k]) for k in ("boxes", "scores", "labels"))


# ----------------------------------------------------------------------------- every arch builds


def test_the_arch_table_and_the_families_agree():
    from detkd.modeling.families import FAMILIES

    assert set(FAMILIES) == set(FAMILY_OPTIONS) == set(ARCH_FAMILIES.values())
    assert sorted(a for f in FAMILIES.values() for a in f.stock_archs()) == sorted(STOCK_ARCHS)
    for name, family in FAMILIES.items():
        assert family.name == name


@pytest.mark.parametrize("arch", STOCK_ARCHS)
def test_every_stock_arch_is_torchvisions_builder(arch):
    """Random weights, no download: detkd's build equals torchvision's builder, seeded."""
    import torchvision

    from detkd.modeling.families import family_of

    cfg = model_cfg(arch=arch, num_classes=5)
    torch.manual_seed(0)
    model = build_detector(cfg)
    torch.manual_seed(0)
    reference = getattr(torchvision.models.detection, arch)(weights=None, weights_backbone=None, num_classes=5)
    assert type(model) is type(reference) is family_of(cfg).model_class
    assert digest(model) == digest(reference)
    assert list(build_architecture(cfg).state_dict()) == list(model.state_dict())


def _levels(model, side):
    feats = model.backbone(torch.rand(1, 3, side, side))
    return {k: (side // v.shape[-1], v.shape[1]) for k, v in feats.items()}


def test_custom_retinanet_and_fcos_have_torchvisions_levels_and_anchors():
    """P3-P5 + P6/P7 as in the stock model (spec section 4: "0" s8 ... "p7" s128), anchors
    4s x 2^(k/3) (torchvision's 32..512) and, for FCOS, one point of size = stride."""
    for backbone in ("resnet18", "mobilenet_v2", "mobilenet_v3_large"):
        cfg = model_cfg(arch="retinanet", backbone=backbone, num_classes=3, out_channels=32, min_size=128,
                        max_size=128)
        model = build_detector(cfg).eval()
        assert _levels(model, 256) == {"0": (8, 32), "1": (16, 32), "2": (32, 32), "p6": (64, 32), "p7": (128, 32)}
        assert model.anchor_generator.sizes == tuple((x, int(x * 2 ** (1 / 3)), int(x * 2 ** (2 / 3)))
                                                     for x in (32, 64, 128, 256, 512))
        assert model.head.regression_head._loss_type == "l1"
    fcos = build_detector(model_cfg(arch="fcos", backbone="resnet18", num_classes=3, out_channels=64,
                                    min_size=128, max_size=128))
    assert fcos.anchor_generator.sizes == ((8,), (16,), (32,), (64,), (128,))
    assert fcos.anchor_generator.aspect_ratios == ((1.0,),) * 5
    v2 = build_detector(model_cfg(arch="retinanet", backbone="resnet34", num_classes=3, out_channels=64,
                                  retinanet={"head_norm": "group_norm", "box_loss": "giou", "p6_input": "c5"}))
    assert isinstance(v2.head.classification_head.conv[0][1], torch.nn.GroupNorm)
    assert v2.head.regression_head._loss_type == "giou" and not v2.backbone.fpn.extra_blocks.use_P5


def test_custom_ssd_families_cut_the_backbone_as_torchvision():
    """SSDlite on MobileNetV3-Large: the expansion conv of the first stride-32 block (s16, 672
    channels), then the last block (s32, 960), then the extra layers."""
    cfg = model_cfg(arch="ssdlite", backbone="mobilenet_v3_large", num_classes=3)
    model = build_detector(cfg).eval()
    assert model.transform.fixed_size == (320, 320)
    feats = model.backbone(torch.rand(1, 3, 320, 320))  # spec section 4: 20, 10, 5, 3, 2, 1 cells
    assert [(v.shape[-1], v.shape[1]) for v in feats.values()] == [(20, 672), (10, 960), (5, 512), (3, 256),
                                                                   (2, 256), (1, 128)]
    for backbone, widths in (("mobilenet_v2", (576, 1280)), ("resnet18", (256, 512))):
        cfg = model_cfg(arch="ssd", backbone=backbone, num_classes=3, ssd={"size": 128, "extra_channels": [64]})
        model = build_detector(cfg).eval()
        assert [(s, c) for s, c in _levels(model, 128).values()] == [(16, widths[0]), (32, widths[1]), (64, 64)]
        assert model.anchor_generator.num_anchors_per_location() == [6, 6, 6]


def test_stock_ssdlite_rebuilds_the_backbone_tail_it_was_trained_with():
    """torchvision's builder shrinks MobileNetV3's tail without backbone weights; a model trained
    with them has the full tail, and load_model must rebuild that without downloading."""
    plain = build_architecture(model_cfg(arch="ssdlite320_mobilenet_v3_large", num_classes=3))
    full = build_architecture(model_cfg(arch="ssdlite320_mobilenet_v3_large", num_classes=3,
                                        weights_backbone="IMAGENET1K_V1"))
    assert plain.backbone.features[1][-1].out_channels == 480 and full.backbone.features[1][-1].out_channels == 960


def test_one_stage_models_skip_the_faster_rcnn_only_parts():
    from detkd.deploy.export import exportable_copy
    from detkd.deploy.predict import set_score_thresh
    from detkd.modeling.families import foreground
    from detkd.modeling.sampling import set_sampling_keys

    model = build_detector(model_cfg(arch="retinanet", backbone="resnet18", num_classes=3, out_channels=32,
                                     min_size=96, max_size=96))
    set_sampling_keys(model, [1, 2])  # nothing to key: every anchor enters the loss
    set_score_thresh(model, 0.3)
    assert model.score_thresh == 0.3 and not hasattr(exportable_copy(model), "rpn")
    out = {"boxes": torch.ones(3, 4), "scores": torch.tensor([0.9, 0.8, 0.7]), "labels": torch.tensor([2, 0, 1])}
    kept = foreground(out)
    assert kept["labels"].tolist() == [2, 1] and kept["scores"].tolist() == pytest.approx([0.9, 0.7])


# ----------------------------------------------------------------------------- validation


BAD = [
    ({"arch": "retinanet_r50"}, "'model.arch': must be one of"),
    ({"arch": "retinanet", "retinanet": {"score_thresh": 1.5}}, "'model.retinanet.score_thresh' must be in [0, 1]"),
    ({"arch": "retinanet", "retinanet": {"bg_iou_thresh": 0.6}}, "'model.retinanet.bg_iou_thresh' (0.6) must not"),
    ({"arch": "retinanet", "retinanet": {"head_norm": "batch"}}, "'model.retinanet.head_norm': expected 'none' |"),
    ({"arch": "fcos", "fcos": {"center_sampling_radius": 0}}, "'model.fcos.center_sampling_radius' must be > 0"),
    ({"arch": "ssdlite", "ssdlite": {"size": 0}}, "'model.ssdlite.size' must be > 0"),
    ({"arch": "ssd", "ssd": {"min_ratio": 0.9, "max_ratio": 0.5}}, "'model.ssd.min_ratio' (0.9) must be below"),
    ({"arch": "ssd", "ssd": {"aspect_ratios": [[2], [0]]}}, "'model.ssd.aspect_ratios' must list"),
    ({"arch": "ssd", "ssd": {"extra_channels": []}}, "'model.ssd.extra_channels' must be a non-empty list"),
    ({"arch": "ssdlite", "ssdlite": {"image_std": [0.5, 0.5]}}, "'model.ssdlite.image_std' needs 3 values"),
    ({"arch": "retinanet", "fcos": {"score_thresh": 0.1}}, "'model.fcos' is set but 'model.arch' 'retinanet'"),
    ({"arch": "custom", "ssd": {}}, "'model.ssd' is set but 'model.arch' 'custom' is a faster_rcnn"),
    ({"arch": "retinanet", "retinanet": {"topk_candidates": 0}}, "'model.retinanet.topk_candidates' must be > 0"),
]


@pytest.mark.parametrize("model, message", BAD)
def test_bad_family_options_are_one_line_errors_at_load(model, message):
    with pytest.raises(DetkdError) as err:
        config_from_dict({"model": model}, source="bad.yaml")
    assert message in str(err.value) and "\n" not in str(err.value)
    assert str(err.value).startswith("bad.yaml: ")


TINY = {"num_classes": 3, "out_channels": 32, "min_size": 96, "max_size": 96}
BAD_BUILDS = [
    ({"arch": "retinanet", "backbone": "resnet18", **TINY, "rpn_nms_thresh": 0.6},
     "model.rpn_nms_thresh does not apply to arch 'retinanet'"),
    ({"arch": "fcos", "backbone": "resnet18", **TINY, "aspect_ratios": [1.0, 2.0]},
     "model.aspect_ratios does not apply to arch 'fcos'"),
    ({"arch": "retinanet_resnet50_fpn", "num_classes": 3, "backbone": "resnet18"},
     "model.backbone does not apply to arch 'retinanet_resnet50_fpn' (a retinanet, stock builder); arch: retinanet"),
    ({"arch": "retinanet", "backbone": "resnet18", **TINY, "anchor_sizes": [[32], [64]]},
     "model.anchor_sizes has 2 levels but the backbone gives 5 feature maps"),
    ({"arch": "fcos", "backbone": "resnet18", **TINY, "out_channels": 64, "anchor_sizes": [[8, 16]] * 5},
     "model.anchor_sizes must give 1 size(s) per level (FCOS has one point per location)"),
    ({"arch": "fcos", "backbone": "resnet18", **TINY, "out_channels": 48},
     "model.out_channels must be a multiple of 32 for the GroupNorm(32) head of fcos"),
    ({"arch": "fcos", "backbone": "resnet18", **TINY},
     "model.out_channels 32 with the GroupNorm(32) head of fcos needs every map larger than 1x1"),
    ({"arch": "retinanet", "backbone": "resnet18", **TINY, "out_channels": 512, "retinanet": {"p6_input": "c5"}},
     "model.retinanet.p6_input: c5 needs the last backbone map"),
    ({"arch": "retinanet_resnet50_fpn_v2", "num_classes": 3, "retinanet": {"head_norm": "none"}},
     "model.retinanet.head_norm is fixed by the stock builder retinanet_resnet50_fpn_v2"),
    ({"arch": "ssdlite320_mobilenet_v3_large", "num_classes": 3, "ssdlite": {"size": 256}},
     "model.ssdlite.size is fixed by the stock builder ssdlite320_mobilenet_v3_large"),
    ({"arch": "ssd", "backbone": "resnet18", "num_classes": 3, "ssd": {"aspect_ratios": [[2]] * 3}},
     "model.ssd.aspect_ratios has 3 entries; the model has 6 feature maps"),
    ({"arch": "ssd300_vgg16", "num_classes": 3, "weights_backbone": "vgg.pth"},
     "model.weights_backbone: ssd300_vgg16 takes a torchvision weight name"),
    ({"arch": "fcos_resnet50_fpn", "num_classes": 3, "weights_backbone": "IMAGENET1K_V1",
      "trainable_backbone_layers": 7}, "model.trainable_backbone_layers must be in [0, 5] for fcos_resnet50_fpn"),
    ({"arch": "retinanet", "backbone": "resnet18", **TINY, "weights": "COCO_V1"},
     "model.weights 'COCO_V1' is a torchvision name; arch: retinanet takes a file path only"),
]


@pytest.mark.parametrize("model, message", BAD_BUILDS)
def test_bad_family_builds_are_one_line_errors(model, message):
    # The section alone, as code that builds a model without loading a whole config makes it.
    cfg = build_dataclass(ModelConfig, model, "x.yaml", prefix="model.")
    with pytest.raises(DetkdError) as err:
        build_detector(cfg)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_a_key_the_arch_does_not_read_names_the_file_that_set_it(tmp_path, monkeypatch):
    """Checked when the config loads: the file is the _base_ file that set the key, not the
    file given on the command line (nor '(a retinanet)')."""
    monkeypatch.chdir(REPO)
    cfg = tmp_path / "retina.yaml"
    cfg.write_text(f"_base_: {REPO / 'configs/_base_/demo_model_small.yaml'}\nmodel:\n  arch: retinanet\n")
    with pytest.raises(DetkdError) as err:
        load_config(cfg)
    assert str(err.value) == ("model.rpn_pre_nms_top_n_train does not apply to arch 'retinanet' "
                              "(set in configs/_base_/demo_model_small.yaml)")
    cfg.write_text("model:\n  arch: retinanet_resnet50_fpn\n  num_classes: 3\n")
    with pytest.raises(DetkdError) as err:
        load_config(cfg, ["model.backbone=resnet18"])
    assert str(err.value) == ("model.backbone does not apply to arch 'retinanet_resnet50_fpn' "
                              "(stock builder; set in --opts); arch: retinanet builds on detkd's backbones")
    with pytest.raises(DetkdError, match=r"^model.rpn_nms_thresh does not apply to arch 'fcos' \(set in --opts\)$"):
        load_config(cfg, ["model.arch=fcos", "model.rpn_nms_thresh=0.5"])


def test_a_section_of_another_family_is_refused_at_build_too():
    from detkd.config.schema import FCOSOptions

    for arch in ("custom", "retinanet"):
        with pytest.raises(DetkdError, match=f"model.fcos is set but model.arch '{arch}'"):
            build_detector(ModelConfig(arch=arch, num_classes=3, fcos=FCOSOptions()))


# ----------------------------------------------------------------------------- end to end

FAMILY_RUNS = {
    # GroupNorm towers (as retinanet_resnet50_fpn_v2): v1's plain towers leave every score at the prior
    # 0.01 for many more iterations, and near-ties reorder between runtimes.
    "retinanet": {"arch": "retinanet", "backbone": "resnet18", "out_channels": 64, "min_size": 96, "max_size": 96,
                  "retinanet": {"score_thresh": 0.0, "detections_per_img": 20, "topk_candidates": 100,
                                "head_norm": "group_norm", "box_loss": "giou"}},
    # MobileNetV2 with the offline ImageNet weights, as the demo's Faster R-CNN.
    "fcos": {"arch": "fcos", "backbone": "mobilenet_v2", "weights_backbone": "IMAGENET1K_V1", "out_channels": 64,
             "min_size": 96, "max_size": 96,
             "fcos": {"score_thresh": 0.0, "detections_per_img": 20, "topk_candidates": 100}},
    "ssdlite": {"arch": "ssdlite", "backbone": "mobilenet_v3_large", "norm": "bn",
                "ssdlite": {"size": 96, "score_thresh": 0.0, "detections_per_img": 20, "topk_candidates": 50,
                            "extra_channels": [128, 64, 64, 32]}},
    "ssd": {"arch": "ssd", "backbone": "resnet18", "norm": "bn",
            "ssd": {"size": 96, "score_thresh": 0.0, "detections_per_img": 20, "topk_candidates": 50,
                    "extra_channels": [128, 64]}},
}
CLASS_OF = {"retinanet": "RetinaNet", "fcos": "FCOS", "ssdlite": "SSD", "ssd": "SSD"}


def run_cli_tool(name: str, argv: list[str]) -> int:
    import importlib

    from detkd.utils.cli import run_cli

    module = importlib.import_module(f"detkd.cli.{name}")
    return run_cli(module.main, module.build_parser(), argv)


@pytest.fixture(scope="module")
def family_runs(tiny_demo_dir, tmp_path_factory) -> dict[str, Path]:
    """Each new family trained for a few iterations on the tiny demo data, through `detkd train`."""
    root = tmp_path_factory.mktemp("families")
    runs = {}
    for name, model in FAMILY_RUNS.items():
        cfg_file = root / f"{name}.yaml"
        cfg_file.write_text(yaml.safe_dump({
            "_base_": [str(REPO / "configs/_base_/demo_data.yaml"), str(REPO / "configs/_base_/demo_schedule.yaml")],
            "model": {"num_classes": 11, **model}}))
        out = root / name
        opts = [o for o in tiny_opts(tiny_demo_dir, out, **{"train.max_iters": 40, "train.optimizer.lr": 0.02})
                if not o.startswith("model.")]
        assert run_cli_tool("train", ["--cfg", str(cfg_file), "--no-progress", "--opts", *opts]) == 0
        runs[name] = out
    return runs


@pytest.mark.slow
@pytest.mark.parametrize("name", FAMILY_RUNS)
def test_family_trains_evaluates_and_loads_as_its_torchvision_class(family_runs, name):
    import detkd

    run = family_runs[name]
    results = json.loads((run / "results.json").read_text())
    assert results["iterations"] == 40 and 0.0 <= results["final"]["AP50"] <= 1.0
    metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    losses = [m["loss"] for m in metrics if m.get("type") == "train"]
    assert losses and all(torch.isfinite(torch.tensor(losses)))
    model, names = detkd.load_model(run / "model_final.pth")
    assert type(model).__name__ == CLASS_OF[name] and len(names) == 10 and not model.training
    info = torch.load(run / "model_final.pth", weights_only=True)._metadata["detkd"]
    assert info["model"]["arch"] == name and info["model"][name]["score_thresh"] == 0.0
    assert info["input"]["min_size"] == 96


@pytest.mark.slow
@pytest.mark.parametrize("name", FAMILY_RUNS)
def test_family_predicts_and_exports_with_parity(family_runs, tiny_demo_dir, tmp_path, name, capsys):
    run = family_runs[name]
    ckpt = str(run / "model_final.pth")
    out = tmp_path / "pred"
    assert run_cli_tool("predict", ["--ckpt", ckpt, "--input", str(tiny_demo_dir / "val"), "--out", str(out),
                                    "--draw", "--no-progress"]) == 0
    records = json.loads((out / "detections.json").read_text())
    assert len(records) == 8 and sum(len(r["detections"]) for r in records) > 0
    assert all(d["label"] >= 1 for r in records for d in r["detections"])
    assert len(list((out / "pictures").glob("*.png"))) == 8
    for fmt, suffix in (("onnx", ".onnx"), ("torchscript", ".pt")):
        capsys.readouterr()
        assert run_cli_tool("export", ["--ckpt", ckpt, "--format", fmt, "--out", str(tmp_path / f"m{suffix}"),
                                       "--check-images", str(tiny_demo_dir / "val")]) == 0
        printed = capsys.readouterr().out
        assert "parity on 8 images" in printed and " 0 detections" not in printed


@pytest.mark.slow
@pytest.mark.parametrize("name", FAMILY_RUNS)
def test_family_export_of_a_changed_classifier_is_refused(family_runs, tiny_demo_dir, tmp_path, name):
    import detkd
    from conftest import assert_export_of_a_changed_classifier_is_refused

    model, _ = detkd.load_model(family_runs[name] / "model_final.pth")
    assert_export_of_a_changed_classifier_is_refused(model, tiny_demo_dir / "val", tmp_path / "changed.onnx")


@pytest.mark.slow
def test_report_times_every_family_on_one_plot(family_runs, tmp_path):
    from detkd.evaluation.report import ModelEntry, run_report

    entries = [ModelEntry(name, str(run / "config.yaml"), str(run / "model_final.pth"))
               for name, run in family_runs.items()]
    rep = run_report(entries, tmp_path, warmup=1, runs=2, latency_rounds=1, throughput_batch=0, threads=1,
                     progress=False)
    assert [r["label"] for r in rep["runs"]] == list(FAMILY_RUNS)
    for r in rep["runs"]:
        assert r["params"] > 0 and r["gflops"] > 0 and r["latency"]["median_ms"] > 0
        assert 0.0 <= r["metrics"]["AP50"] <= 1.0
    assert (tmp_path / "report.png").is_file()


@pytest.mark.slow
def test_one_stage_students_distil_end_to_end(family_runs, tiny_demo_dir, tmp_path):
    """`detkd train` with a distill section: an FCOS student with CrossKD + PKD from the FCOS run,
    and a RetinaNet student with PKD from a Faster R-CNN teacher (maps paired by stride): every term
    is logged, the methods' parts are in last.pth and not in model_final.pth, which loads as the
    student's torchvision class."""
    import detkd

    frcnn = {"arch": "custom", "backbone": "resnet18", "num_classes": 11, "out_channels": 32, "min_size": 96,
             "max_size": 96, "representation_size": 64}
    torch.manual_seed(0)
    torch.save(build_detector(ModelConfig(**frcnn)).state_dict(), tmp_path / "frcnn.pth")
    cases = {
        "fcos": ({"config": str(family_runs["fcos"] / "config.yaml"),
                  "checkpoint": str(family_runs["fcos"] / "model_final.pth")},
                 {"crosskd": {}, "pkd": {}}, ["loss_crosskd_cls", "loss_crosskd_reg", "loss_pkd"], "FCOS"),
        "retinanet": ({"model": frcnn, "checkpoint": str(tmp_path / "frcnn.pth")}, {"pkd": {}}, ["loss_pkd"],
                      "RetinaNet"),
    }
    for name, (teacher, distill, terms, cls) in cases.items():
        cfg_file = tmp_path / f"{name}.yaml"
        cfg_file.write_text(yaml.safe_dump({
            "_base_": [str(REPO / "configs/_base_/demo_data.yaml"), str(REPO / "configs/_base_/demo_schedule.yaml")],
            "model": {"num_classes": 11, **FAMILY_RUNS[name]}, "teacher": teacher, "distill": distill}))
        out = tmp_path / f"distilled_{name}"
        opts = [o for o in tiny_opts(tiny_demo_dir, out, **{"train.max_iters": 6}) if not o.startswith("model.")]
        assert run_cli_tool("train", ["--cfg", str(cfg_file), "--no-progress", "--opts", *opts]) == 0
        lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
        logged = [m for m in lines if m.get("type") == "train"]
        assert logged and all(all(t in m and math.isfinite(m[t]) for t in terms) for m in logged), name
        saved = torch.load(out / "last.pth", weights_only=False, map_location="cpu")
        if name == "retinanet":  # 64 -> 32 channels: PKD's 1x1 alignment convs (equal widths need none)
            assert saved["distill"] and all(k.startswith("pkd.") for k in saved["distill"])
        model, _ = detkd.load_model(out / "model_final.pth")
        assert type(model).__name__ == cls
        assert not any(k.startswith(("pkd", "crosskd", "methods")) for k in model.state_dict())
