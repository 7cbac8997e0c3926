"""Self-describing model files: ``model_final.pth`` rebuilds its model without the YAML.

The file is still a plain torchvision state dict (``FasterRCNN``, ``RetinaNet``, ``FCOS`` or
``SSD``; an ``OrderedDict`` of tensors), so ``FasterRCNN(...).load_state_dict(torch.load(f))`` and every reader of bare
state dicts keep working. What is needed to rebuild the model rides in the state dict's
own ``_metadata`` mapping (where torch keeps each module's version, and which
``torch.save``/``torch.load(weights_only=True)`` round-trip), under the key ``"detkd"``:

    {"format": "detkd.model/1", "detkd_version": "0.1.0", "torch_version": ..., "torchvision_version": ...,
     "model": {...every ModelConfig field...}, "class_names": ["...", ...],
     "input": {"channels": "RGB", "range": [0.0, 1.0], "dtype": "float32",
               "min_size", "max_size", "image_mean", "image_std"},
     "val_images": ["/abs/path/val/0001.jpg", ...],
     "display": {"score_thresh": 0.62, "F1_50": 0.71, "rule": "..."}}

``val_images`` (absolute paths of the first :data:`VAL_IMAGES_KEPT` validation images, absent
in files written before it) is what ``detkd export`` checks its parity on when given no images
and those files are still there. ``display`` (absent when the model was not evaluated, or in
older files) is the score threshold the model's pictures are drawn with: the one maximizing
F1 at IoU 0.5 over all classes on its val split, found by the evaluation that ran last before
the file was written (:func:`detkd.evaluation.inference.evaluate_detector` leaves it on the
model with :func:`set_display_threshold`).

Only str/int/float/bool/None/lists/dicts, so ``weights_only=True`` loading stays safe.
``class_names[i]`` is the name of label ``i + 1`` (label 0 is the background). The ``input``
sizes are those of the model's transform (SSD and SSDlite warp to a fixed square).
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from detkd.config.schema import Config, ModelConfig
from detkd.errors import DetkdError

META_KEY = "detkd"
FORMAT = "detkd.model/1"
VAL_IMAGES_KEPT = 20  # as many as detkd export checks by default (--check-count)
DISPLAY_ATTR = "detkd_display"  # a plain attribute on the evaluated model, not in its state dict
DISPLAY_RULE = "the score threshold maximizing F1 at IoU 0.5 over all classes on the val split"


def set_display_threshold(model: nn.Module, metrics: dict[str, Any]) -> None:
    """Leave the metrics' ``display_thresh`` (and ``F1_50``) on ``model`` for :func:`model_info`."""
    if metrics.get("display_thresh") is not None:
        setattr(model, DISPLAY_ATTR, {"score_thresh": float(metrics["display_thresh"]),
                                      "F1_50": float(metrics.get("F1_50", float("nan"))), "rule": DISPLAY_RULE})


def recorded_display_threshold(info: dict[str, Any] | None) -> float | None:
    """The display score threshold a model file's record holds, or None."""
    display = info.get("display") if info else None
    value = display.get("score_thresh") if isinstance(display, dict) else None
    return float(value) if isinstance(value, (int, float)) else None


def _weights_only_safe(value: Any) -> Any:
    """``value`` with str keys and lists for tuples: what ``torch.load(weights_only=True)`` reads back."""
    if isinstance(value, dict):
        return {str(k): _weights_only_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_weights_only_safe(v) for v in value]
    return value


def model_info(model_cfg: ModelConfig, class_names: list[str], val_images: Iterable[str | Path] = (), *,
               model: nn.Module | None = None) -> dict[str, Any]:
    """The ``detkd`` metadata record of a model built from ``model_cfg`` (its input sizes from
    ``model``'s transform when given, else from the config's min/max_size), validated on
    ``val_images``, of which the first :data:`VAL_IMAGES_KEPT` are kept."""
    import torchvision

    import detkd

    transform = getattr(model, "transform", None)
    if transform is not None:
        sizes = {"min_size": int(transform.min_size[-1]), "max_size": int(transform.max_size),
                 "image_mean": [float(v) for v in transform.image_mean],
                 "image_std": [float(v) for v in transform.image_std]}
    else:
        sizes = {"min_size": model_cfg.min_size, "max_size": model_cfg.max_size,
                 "image_mean": list(model_cfg.image_mean), "image_std": list(model_cfg.image_std)}
    record = {
        "format": FORMAT,
        "detkd_version": str(detkd.__version__),
        "torch_version": str(torch.__version__),
        "torchvision_version": str(torchvision.__version__),
        "model": _weights_only_safe(dataclasses.asdict(model_cfg)),
        "class_names": [str(n) for n in class_names],
        "input": {"channels": "RGB", "range": [0.0, 1.0], "dtype": "float32", **sizes},
        "val_images": [str(Path(p).resolve()) for p in itertools.islice(val_images, VAL_IMAGES_KEPT)],
    }
    display = getattr(model, DISPLAY_ATTR, None)
    if isinstance(display, dict):
        record["display"] = dict(display)
    return record


def model_state(model: nn.Module, model_cfg: ModelConfig, class_names: list[str],
                val_images: Iterable[str | Path] = ()) -> dict[str, torch.Tensor]:
    """``model.state_dict()`` carrying the :func:`model_info` record (what the trainer saves)."""
    state = model.state_dict()
    meta = getattr(state, "_metadata", None)
    if meta is None:
        meta = state._metadata = {}  # type: ignore[attr-defined]
    meta[META_KEY] = model_info(model_cfg, class_names, val_images, model=model)
    return state


def info_of(state: Any) -> dict[str, Any] | None:
    """The ``detkd`` record of a loaded state dict, or None for a bare one."""
    meta = getattr(state, "_metadata", None)
    info = meta.get(META_KEY) if isinstance(meta, dict) else None
    return info if isinstance(info, dict) and info.get("format") == FORMAT else None


def recorded_val_images(info: dict[str, Any] | None) -> list[Path]:
    """The validation images a model file's record names that are still files on this machine."""
    paths = info.get("val_images") if info else None
    if not isinstance(paths, list):
        return []
    return [Path(p) for p in paths if isinstance(p, str) and Path(p).is_file()]


def read_model_file(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any] | None]:
    """(state dict, detkd record or None) of a model file, last.pth/best.pth or bare state dict."""
    from detkd.modeling.weights import read_state_dict

    state = read_state_dict(path)
    return state, info_of(state)


def _model_config(config: Any) -> ModelConfig:
    """A ModelConfig from a Config, a ModelConfig or a YAML path."""
    if isinstance(config, ModelConfig):
        return config
    if isinstance(config, Config):
        return config.model
    return load_model_config(config)


def load_model_config(path: str | Path, overrides: list[str] | None = None) -> ModelConfig:
    """Just the ``model`` section of a config file, validated (a model file's reader needs no
    other section)."""
    from detkd.config.build import build_dataclass
    from detkd.config.tree import key_source, load_tree

    tree, origins = load_tree(path, overrides)
    model = tree.get("model") or {}
    if not isinstance(model, dict):
        raise DetkdError(f"{key_source('model', origins, str(path))}: 'model' must be a mapping")
    return build_dataclass(ModelConfig, model, str(path), origins, prefix="model.")


def _config_from_info(info: dict[str, Any], path: Path) -> ModelConfig:
    from detkd.config.build import build_dataclass

    if not isinstance(info.get("model"), dict):
        raise DetkdError(f"{path}: the detkd record has no model config")
    return build_dataclass(ModelConfig, info["model"], f"{path} (stored model config)", prefix="model.")


def build_architecture(cfg: ModelConfig) -> nn.Module:
    """The model ``build_detector(cfg)`` builds, with random weights and no download: the
    weights come from the file. Each family rebuilds what its weights would have changed
    (torchvision's stock builders pick FrozenBatchNorm2d only when given weights, SSDlite's a
    shorter backbone tail without them)."""
    from detkd.modeling.families import family_of

    return family_of(cfg).build(cfg, False)


def load_model(path: str | Path, config: Any = None, device: str | torch.device = "cpu") -> tuple[nn.Module, list[str]]:
    """``(model, class_names)``: the torchvision detector (``FasterRCNN``, ``RetinaNet``, ``FCOS``
    or ``SSD``) in eval mode on ``device``,
    rebuilt from a self-describing ``model_final.pth`` alone.

    ``config`` (a YAML path, a Config or a ModelConfig) is needed only for an old bare state
    dict; given with a self-describing file, it replaces the stored model config. Class names
    default to ``class1..classN`` when the file records none."""
    model, names, _ = load_model_with_info(path, config, device)
    return model, names


def load_model_with_info(path: str | Path, config: Any = None,
                         device: str | torch.device = "cpu") -> tuple[nn.Module, list[str], dict[str, Any] | None]:
    """:func:`load_model` and the file's ``detkd`` record (None for a bare state dict)."""
    from detkd.modeling.weights import load_matching

    path = Path(path)
    state, info = read_model_file(path)
    if config is not None:
        cfg = _model_config(config)
    elif info is not None:
        cfg = _config_from_info(info, path)
    else:
        raise DetkdError(f"{path} is a bare state dict (no detkd model record): give its training config too "
                         "(--cfg FILE.yaml, or load_model(path, config=...))")
    model = build_architecture(cfg)
    load_matching(model, state, f"model file {path}")
    names = list(info["class_names"]) if info and info.get("class_names") else []
    if len(names) != cfg.num_classes - 1:
        names = [f"class{i}" for i in range(1, cfg.num_classes)]
    return model.eval().to(device), names, info
