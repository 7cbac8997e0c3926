"""Config inheritance, overrides and validation errors."""

from pathlib import Path

import pytest
import yaml

from detkd.config.dump import config_hash, dump_config
from detkd.config.tree import parse_overrides
from detkd.recipe import load_config
from detkd.errors import DetkdError

REPO = Path(__file__).resolve().parents[1]


def write(path: Path, data: dict | str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(data if isinstance(data, str) else yaml.safe_dump(data))
    return path


def test_base_inheritance_merges_recursively(tmp_path):
    write(tmp_path / "base" / "a.yaml", {"model": {"num_classes": 5, "out_channels": 64}, "train": {"epochs": 3}})
    write(tmp_path / "base" / "b.yaml", {"_base_": "a.yaml", "model": {"out_channels": 32}})
    child = write(tmp_path / "child.yaml", {"_base_": ["base/b.yaml"], "train": {"batch_size": 7}})
    cfg = load_config(child)
    assert cfg.model.num_classes == 5  # from the grand-parent
    assert cfg.model.out_channels == 32  # parent overrides grand-parent
    assert cfg.train.epochs == 3 and cfg.train.batch_size == 7
    assert cfg.model.min_size == 800  # untouched default


def test_overrides_both_forms_and_yaml_values(tmp_path):
    path = write(tmp_path / "c.yaml", {"model": {"num_classes": 5}})
    cfg = load_config(path, ["train.epochs=2", "model.num_classes", "11", "train.amp=true",
                             "model.anchor_sizes=[[16],[32]]", "train.optimizer.lr=0.5"])
    assert cfg.train.epochs == 2 and cfg.model.num_classes == 11 and cfg.train.amp is True
    assert cfg.model.anchor_sizes == [[16], [32]]
    assert cfg.train.optimizer.lr == 0.5 and isinstance(cfg.train.optimizer.lr, float)


def test_parse_overrides_missing_value():
    with pytest.raises(DetkdError, match="has no value"):
        parse_overrides(["train.epochs"])


def test_unknown_key_names_key_file_and_suggestion(tmp_path):
    base = write(tmp_path / "base.yaml", {"model": {"num_clases": 5}})
    child = write(tmp_path / "child.yaml", {"_base_": "base.yaml"})
    with pytest.raises(DetkdError) as err:
        load_config(child)
    msg = str(err.value)
    assert "model.num_clases" in msg and str(base) in msg and "num_classes" in msg


def test_wrong_type_names_key_and_file(tmp_path):
    path = write(tmp_path / "c.yaml", {"train": {"epochs": "ten"}})
    with pytest.raises(DetkdError, match=r"c\.yaml: 'train\.epochs': expected an integer"):
        load_config(path)


def test_override_error_names_opts(tmp_path):
    path = write(tmp_path / "c.yaml", {})
    with pytest.raises(DetkdError, match=r"--opts: unknown config key 'train\.epoch'.*epochs"):
        load_config(path, ["train.epoch=3"])


def test_literal_choice_and_range_checks(tmp_path):
    path = write(tmp_path / "c.yaml", {"train": {"optimizer": {"name": "adam"}}})
    with pytest.raises(DetkdError, match="adamw"):
        load_config(path)
    path = write(tmp_path / "d.yaml", {"train": {"optimizer": {"lr": -1}}})
    with pytest.raises(DetkdError, match="train.optimizer.lr' must be > 0"):
        load_config(path)
    path = write(tmp_path / "e.yaml", {"model": {"num_classes": 1}})
    with pytest.raises(DetkdError, match="num_classes"):
        load_config(path)


def test_bool_is_not_an_int_and_int_is_a_float(tmp_path):
    path = write(tmp_path / "c.yaml", {"train": {"epochs": True}})
    with pytest.raises(DetkdError, match="epochs"):
        load_config(path)
    path = write(tmp_path / "d.yaml", {"train": {"optimizer": {"lr": 1}}})
    assert load_config(path).train.optimizer.lr == 1.0


def test_missing_file_invalid_yaml_and_cycles(tmp_path):
    with pytest.raises(DetkdError, match="config file not found"):
        load_config(tmp_path / "nope.yaml")
    bad = write(tmp_path / "bad.yaml", "model: [1, 2\n")
    with pytest.raises(DetkdError, match="invalid YAML"):
        load_config(bad)
    write(tmp_path / "x.yaml", {"_base_": "y.yaml"})
    write(tmp_path / "y.yaml", {"_base_": "x.yaml"})
    with pytest.raises(DetkdError, match="circular"):
        load_config(tmp_path / "x.yaml")
    with pytest.raises(DetkdError, match="_base_ file not found"):
        load_config(write(tmp_path / "z.yaml", {"_base_": "missing.yaml"}))


def test_distill_needs_teacher(tmp_path):
    path = write(tmp_path / "c.yaml", {"distill": {"chen": {"mu": 0.5}}})
    with pytest.raises(DetkdError, match="both a 'teacher' and a 'distill'"):
        load_config(path)
    path = write(tmp_path / "d.yaml", {"teacher": {"checkpoint": "t.pth"}, "distill": {"chen": {"mu": 1.5}}})
    with pytest.raises(DetkdError, match="distill.chen.mu"):
        load_config(path)


def test_dump_roundtrip_and_hash(tmp_path):
    cfg = load_config(REPO / "configs/demo/faster_rcnn_demo.yaml", ["train.epochs=2"])
    dumped = write(tmp_path / "dumped.yaml", dump_config(cfg))
    again = load_config(dumped)
    assert again == cfg
    assert config_hash(again) == config_hash(cfg)
    other = load_config(REPO / "configs/demo/faster_rcnn_demo.yaml", ["model.out_channels=32"])
    assert config_hash(other) != config_hash(cfg)


@pytest.mark.parametrize("path", sorted(str(p.relative_to(REPO)) for p in (REPO / "configs").rglob("*.yaml")
                                        if "_base_" not in p.parts and "cls" not in p.parts))
def test_every_shipped_config_validates(path):
    load_config(REPO / path)


def test_dataset_sections_are_typed_by_their_type(tmp_path):
    from detkd.data.coco import CocoDatasetConfig
    from detkd.data.demo import DemoDatasetConfig
    from detkd.data.voc import VOCDatasetConfig

    cfg = load_config(write(tmp_path / "c.yaml", {"data": {"train": {"type": "coco", "image_dir": "i", "ann_file": "a"},
                                                           "val": {"type": "voc", "root": "r", "split": "test"}}}))
    assert cfg.data.train == CocoDatasetConfig(image_dir="i", ann_file="a")
    assert cfg.data.val == VOCDatasetConfig(root="r", split="test")
    assert load_config(write(tmp_path / "d.yaml", {})).data.val == DemoDatasetConfig(split="val")
    bad = write(tmp_path / "e.yaml", {"data": {"train": {"type": "coco", "image_dir": "i", "root": "r"}}})
    with pytest.raises(DetkdError) as err:
        load_config(bad)
    assert str(err.value) == (f"{bad}: 'data.train.root' is not an option of type 'coco' "
                              "(options: image_dir, ann_file, split, skip_empty, max_images)")
    with pytest.raises(DetkdError, match=r"unknown config key 'data\.train\.image_dri' \(did you mean 'image_dir'\?\)"):
        load_config(bad, ["data.train={type: coco, image_dri: x}"])


def test_a_later_type_drops_the_earlier_formats_options(tmp_path):
    coco = write(tmp_path / "coco.yaml", {"data": {"train": {"type": "coco", "image_dir": "i", "ann_file": "a",
                                                             "skip_empty": True}}})
    cfg = load_config(coco, ["data.train.type=voc", "data.train.root=r"])
    assert (cfg.data.train.type, cfg.data.train.root, cfg.data.train.skip_empty) == ("voc", "r", True)
    assert load_config(coco, ["data.train.root=r", "data.train.type=voc"]).data.train.root == "r"  # any order
    child = write(tmp_path / "child.yaml", {"_base_": "coco.yaml", "data": {"train": {"type": "voc", "root": "r"}}})
    assert load_config(child).data.train == load_config(coco, ["data.train.type=voc", "data.train.root=r"]).data.train
    with pytest.raises(DetkdError, match=r"--opts: 'data\.train\.image_dir' is not an option of type 'voc'"):
        load_config(coco, ["data.train.image_dir=j", "data.train.type=voc"])  # set with the new type: an error


def test_a_flat_config_yaml_of_earlier_versions_loads_and_hashes_the_same(tmp_path):
    cfg = load_config(REPO / "configs/demo/faster_rcnn_demo.yaml", ["data.val.type=voc", "data.val.root=r"])
    tree = yaml.safe_load(dump_config(cfg))
    flat = {"image_dir": "", "ann_file": "", "root": "", "classes": None, "use_difficult": False}
    for split in ("train", "val"):  # the one dataset dataclass of earlier versions wrote every key
        tree["data"][split] = {**flat, **tree["data"][split]}
    old = load_config(write(tmp_path / "old.yaml", tree))
    assert old == cfg and config_hash(old) == config_hash(cfg)
    tree["data"]["train"]["root"] = "set"
    with pytest.raises(DetkdError, match="'data.train.root' is not an option of type 'demo'"):
        load_config(write(tmp_path / "older.yaml", tree))


def test_registry_fields_and_ranges_are_generic():
    """The config layer's machinery on made-up dataclasses: a keyed registry field, a
    discriminated one (by ``type``), ranges, and the one-line errors naming the key."""
    from dataclasses import dataclass

    from detkd.config.fields import option, registry
    from detkd.config.build import build_dataclass

    @dataclass
    class A:
        type: str = "a"
        size: int = option(1, gt=0)

    @dataclass
    class B:
        type: str = "b"
        ratio: float = option(0.5, ge=0, le=1)

    @dataclass
    class Root:
        rate: float = option(1.0, ge=0)
        part: object = registry("parts", by="type", default_factory=A)
        sections: dict = registry("sections")

    reg = {"parts": {"a": A, "b": B}, "sections": {"a": A, "b": B}}
    got = build_dataclass(Root, {"part": {"type": "b", "ratio": 0.25}, "b": {}, "a": {"size": 3}}, "f.yaml", None, reg)
    assert got == Root(part=B(ratio=0.25), sections={"a": A(size=3), "b": B()})  # sections in registry order
    for tree, message in (({"rate": -1}, r"^f.yaml: 'rate' must be >= 0, got -1.0$"),
                          ({"part": {"type": "b", "ratio": 2}}, r"^f.yaml: 'part.ratio' must be in \[0, 1\], got 2.0$"),
                          ({"part": {"type": "b", "size": 2}},
                           r"^f.yaml: 'part.size' is not an option of type 'b' \(options: ratio\)$"),
                          ({"part": {"type": "c"}}, r"^f.yaml: 'part.type': must be one of 'a' \| 'b', got 'c'$"),
                          ({"a": {"size": 0}}, r"^f.yaml: 'a.size' must be > 0, got 0$"),
                          ({"size": 2}, r"^f.yaml: 'size' is an option of a, not of '<root>': write it as 'a.size'$"),
                          ({"c": {}}, r"^f.yaml: unknown config key 'c'")):
        with pytest.raises(DetkdError, match=message):
            build_dataclass(Root, tree, "f.yaml", None, reg)


def test_list_ranges_and_rules_across_fields_are_declared_on_the_dataclass():
    """A range on a list applies to every number in it (``length``, ``nonempty``, ``says``);
    ``broken_rule`` is a rule across fields, raised naming the file that set its field."""
    from dataclasses import dataclass
    from typing import Optional

    from detkd.config.build import build_dataclass
    from detkd.config.fields import option

    @dataclass
    class S:
        low: float = option(0.1, ge=0)
        high: float = option(0.9, le=1)
        sizes: Optional[list[list[int]]] = option(None, nonempty=True, gt=0, says="must list positive sizes")
        mean: list[float] = option(default_factory=lambda: [0.5, 0.5, 0.5], length=3, gt=0, why="a scale")

        def broken_rule(self, at: str):
            return ("low", f"'{at}low' must be below '{at}high'") if self.low >= self.high else None

    origins = {"s.low": "base.yaml"}
    assert build_dataclass(S, {"sizes": [[1, 2], [3]]}, "f.yaml", origins, prefix="s.").sizes == [[1, 2], [3]]
    for tree, message in (({"sizes": [[1], []]}, r"^f.yaml: 's.sizes' must list positive sizes, got \[\[1\], \[\]\]$"),
                          ({"sizes": [[1], [0]]}, r"^f.yaml: 's.sizes' must list positive sizes, got \[\[1\], \[0\]\]$"),
                          ({"mean": [1.0]}, r"^f.yaml: 's.mean' needs 3 values, got \[1.0\]$"),
                          ({"mean": [1, 0, 1]}, r"^f.yaml: 's.mean' must be > 0 \(a scale\), got \[1.0, 0.0, 1.0\]$"),
                          ({"low": 0.95}, r"^base.yaml: 's.low' must be below 's.high'$")):
        with pytest.raises(DetkdError, match=message):
            build_dataclass(S, tree, "f.yaml", origins, prefix="s.")


def _typed(value):
    """``value`` with the type of every part of it (1 and 1.0, a list and a tuple differ)."""
    import dataclasses

    if dataclasses.is_dataclass(value):
        return type(value).__name__, {f.name: _typed(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, dict):
        return {k: _typed(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value).__name__, [_typed(v) for v in value]
    return type(value).__name__, value


def test_schema_defaults_are_stored_as_the_loader_converts_them():
    """Every section built from its defaults equals its dump read back, types included, so a
    config built in code hashes like the config.yaml saved beside its run."""
    from detkd.cls.config import ClsConfig, MethodConfig, registries as cls_registries
    from detkd.config.build import build_dataclass
    from detkd.config.schema import ARCH_FAMILIES, Config, ModelConfig
    from detkd.recipe import registries

    regs = {**registries(), **cls_registries()}
    sections = [Config(), ClsConfig(), *(ModelConfig(arch=arch) for arch in ARCH_FAMILIES),
                *(MethodConfig(name=name, sections={name: cls()}) for name, cls in regs["cls_methods"].items()),
                *(cls() for cls in regs["methods"].values()),
                *(cls() for cls in regs["datasets"].values())]
    for section in sections:
        back = build_dataclass(type(section), yaml.safe_load(dump_config(section)) or {}, "<dump>", registries=regs)
        assert _typed(back) == _typed(section), type(section).__name__


def test_a_fresh_process_loads_a_config_with_nothing_else_imported():
    """The dataset formats and methods reach the loader as arguments (detkd.recipe), not by an
    earlier import that registers them: a plain load_config works in a new interpreter."""
    import subprocess
    import sys

    code = ("from detkd.recipe import load_config; "
            "cfg = load_config('configs/demo/faster_rcnn_demo.yaml', ['data.val.type=yolo', 'data.val.root=x']); "
            "print(cfg.data.train.type, cfg.data.val.type)")
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split() == ["demo", "yolo"]


@pytest.mark.parametrize("tree, message", [
    ({"model": {"rpn_bg_iou_thresh": 0.8}},
     "'model.rpn_bg_iou_thresh' (0.8) must not exceed 'model.rpn_fg_iou_thresh' (0.7)"),
    ({"model": {"box_fg_iou_thresh": 1.5}}, "'model.box_fg_iou_thresh' must be in [0, 1], got 1.5"),
    ({"model": {"rpn_post_nms_top_n_test": 0}}, "'model.rpn_post_nms_top_n_test' must be > 0, got 0"),
    ({"train": {"optimizer": {"momentum": -0.1}}}, "'train.optimizer.momentum' must be >= 0, got -0.1"),
    ({"train": {"scheduler": {"gamma": 0}}}, "'train.scheduler.gamma' must be > 0, got 0"),
    ({"train": {"scheduler": {"min_lr_factor": 2}}}, "'train.scheduler.min_lr_factor' must be in [0, 1], got 2"),
])
def test_faster_rcnn_matcher_sampler_and_optimizer_ranges_are_on_their_fields(tree, message):
    from detkd.recipe import config_from_dict

    with pytest.raises(DetkdError) as err:
        config_from_dict(tree)
    assert message in str(err.value), str(err.value)
