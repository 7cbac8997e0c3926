"""A classification method is one file plus one METHODS entry: a throwaway method registered
here, in the test alone, gets its config section, the loader's checks, ``--opts``, its
teachers/peers rules, training and checkpointing of its learnable modules, without another
file touched."""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import yaml
from torch import Tensor, nn

from detkd.cls.config import cls_config_from_dict, load_cls_config
from detkd.cls.methods import METHODS, StudentMethod, StudentOutputs
from detkd.cls.train import resume_hash
from detkd.config.dump import dump_config
from detkd.config.fields import option
from detkd.errors import DetkdError

pytestmark = pytest.mark.usefixtures("one_thread")
ROOT = Path(__file__).resolve().parents[1]
BASELINE = ROOT / "configs" / "cls" / "fmnist" / "baseline.yaml"
SMALL = ["data.train_subset=64", "data.test_subset=20", "train.batch_size=32", "train.epochs=2",
         "train.log_interval=1", "train.threads=1", "model.width=4", "eval.batch_size=20"]


@dataclass
class ToyConfig:
    """A throwaway method: L = ce_weight * CE + weight * CE(h(pool(F_L)), y) / temperature, with h
    an auxiliary linear head trained jointly."""

    weight: float = option(1.0, ge=0)
    temperature: float = option(2.0, gt=0)


class ToyMethod(StudentMethod):
    config = ToyConfig

    def setup(self, s_shapes, t_shapes) -> None:
        self.aux["head"] = nn.Linear(s_shapes[-1][0], 10)  # Fashion-MNIST's 10 classes

    def terms(self, out: StudentOutputs) -> dict[str, Tensor]:
        pooled = out.features[-1].mean(dim=(2, 3))
        loss = F.cross_entropy(self.aux["head"](pooled), out.labels) / self.options.temperature
        return {"toy": self.options.weight * loss}


class OneTeacherToy(ToyMethod):
    teachers_needed = "one"


@pytest.fixture
def toy(monkeypatch):
    monkeypatch.setitem(METHODS, "toy", ToyMethod)
    return "toy"


def test_the_section_loads_dumps_and_takes_opts(toy):
    cfg = load_cls_config(BASELINE, ["method.name=toy", "method.toy.weight=3"])
    assert cfg.method.options == ToyConfig(weight=3.0) and cfg.method.sections == {"toy": ToyConfig(weight=3.0)}
    saved = yaml.safe_load(dump_config(cfg))
    assert saved["method"] == {"name": "toy", "ce_weight": 1.0, "toy": {"weight": 3.0, "temperature": 2.0}}
    again = cls_config_from_dict(saved)
    assert again == cfg and resume_hash(again) == resume_hash(cfg)
    assert resume_hash(load_cls_config(BASELINE, ["method.name=toy"])) != resume_hash(cfg)
    assert load_cls_config(BASELINE, ["method.name=toy"]).method.options == ToyConfig()  # its defaults


@pytest.mark.parametrize("opt, message", [
    ("method.toy.weight=-1", r"^--opts: 'method.toy.weight' must be >= 0, got -1.0$"),
    ("method.toy.temperature=0", r"^--opts: 'method.toy.temperature' must be > 0, got 0.0$"),
    ("method.toy.temprature=1", r"^--opts: unknown config key 'method.toy.temprature' \(did you mean "
                                r"'temperature'\?\)$"),
    ("method.toy.c_tol=1", r"^--opts: 'method.toy.c_tol' is not an option of toy \(its options: weight, "
                           r"temperature\); 'c_tol' is an option of aekd$"),
    ("method.kd={}", r"^--opts: 'method.kd' is set but method.name is 'toy' \(its section is 'method.toy'\)"),
    ("method.name=tyo", r"^--opts: 'method.name': must be one of 'baseline' \| .* \| 'toy', got 'tyo' "
                        r"\(did you mean 'toy'\?\)$"),
])
def test_bad_options_are_one_line_naming_the_key(toy, opt, message):
    with pytest.raises(DetkdError, match=message):
        load_cls_config(BASELINE, ["method.name=toy", opt])


def test_what_it_needs_is_checked_from_its_class(monkeypatch):
    monkeypatch.setitem(METHODS, "toy", OneTeacherToy)
    with pytest.raises(DetkdError, match=r"method 'toy' needs exactly 1 entry in 'teachers', got 0$"):
        load_cls_config(BASELINE, ["method.name=toy"])
    with pytest.raises(DetkdError, match=r"'data.labelled_fraction' < 1 .* methods baseline, dml and dml_e, not 'toy'"):
        load_cls_config(BASELINE, ["method.name=toy", "teachers=[{checkpoint: t.pth}]", "data.labelled_fraction=0.5"])
    with pytest.raises(DetkdError, match=r"'peers' is used by dml, dml_e and ffl only, not by 'toy'"):
        load_cls_config(BASELINE, ["method.name=toy", "teachers=[{checkpoint: t.pth}]", "peers=[{arch: resnet8}]"])


def _train(out: Path, *opts: str, args: tuple[str, ...] = ()) -> int:
    sys.path.insert(0, str(ROOT / "tools"))
    import train_cls

    return train_cls.cli(["--cfg", str(BASELINE), "--output-dir", str(out), *args, "--opts", *SMALL,
                          "method.name=toy", *opts])


def test_it_trains_logs_its_terms_and_resumes_exactly_with_its_modules(toy, tmp_path, monkeypatch, capsys):
    full, part = tmp_path / "full", tmp_path / "part"
    assert _train(full) == 0
    train = [json.loads(line) for line in (full / "metrics.jsonl").read_text().splitlines()]
    assert all("toy" in r and "ce" in r for r in train if r["type"] == "train")
    original, calls = ToyMethod.step, {"n": 0}

    def interrupted(self, x, y, epoch):
        calls["n"] += 1
        if calls["n"] == 3:  # 2 iterations per epoch: stop in epoch 1, after the checkpoint of epoch 0
            raise KeyboardInterrupt
        return original(self, x, y, epoch)

    monkeypatch.setattr(ToyMethod, "step", interrupted)
    assert _train(part) == 130
    monkeypatch.setattr(ToyMethod, "step", original)
    assert "interrupted" in capsys.readouterr().err
    stopped = torch.load(part / "last.pth", map_location="cpu", weights_only=False)
    assert stopped["epoch"] == 1 and set(stopped["aux"]) == {"head.weight", "head.bias"}
    assert _train(part, args=("--resume", "auto")) == 0
    a, b = (torch.load(d / "last.pth", map_location="cpu", weights_only=False) for d in (full, part))
    assert a["aux"].keys() == b["aux"].keys() and a["networks"].keys() == b["networks"].keys() == {"student"}
    for name, tensor in a["aux"].items():
        assert torch.equal(tensor, b["aux"][name]), name
    for name, tensor in a["networks"]["student"].items():
        assert torch.equal(tensor, b["networks"]["student"][name]), name
    assert not torch.equal(a["aux"]["head.weight"], stopped["aux"]["head.weight"])  # trained on after the stop
    ra, rb = (json.loads((d / "results.json").read_text()) for d in (full, part))
    assert ra["networks"] == rb["networks"] and ra["method"] == "toy"
