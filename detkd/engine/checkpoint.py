"""Training checkpoints and run directories, for detection and classification alike.

``last.pth`` / ``best.pth`` are written with :func:`detkd.utils.atomic.atomic_save` (never torn;
the writes live in utils because deploy and evaluation write files too). A detection
checkpoint's ``model`` entry is the plain state dict of the student's torchvision class
(``FasterRCNN``, ``RetinaNet``, ``FCOS`` or ``SSD``):
``FasterRCNN(...).load_state_dict(ckpt["model"])`` works without detkd; a classification one
holds ``networks`` and ``optimizers``; both end with :func:`run_record`. Here: reading one with
a one-line error, finding the one ``--resume auto`` continues, checking it belongs to the
config, and refusing to start a run in a directory that holds another.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Sequence

import torch

import detkd
from detkd.config.dump import dump_config
from detkd.errors import DetkdError
from detkd.utils.runtime import rng_state

# What a detection training checkpoint holds (classification: ("networks", "optimizers")):
# the first entry makes it a checkpoint, the others make it resumable.
DETECTION_ENTRIES = ("model", "optimizer")


def run_record(cfg: Any, config_hash: str) -> dict[str, Any]:
    """What every training checkpoint records of its run beside the training state: the RNG
    states (exact resume), the merged config, the hash ``--resume`` checks, the detkd version."""
    return {"rng": rng_state(), "config": dump_config(cfg), "config_hash": config_hash, "version": detkd.__version__}


def load_checkpoint(path: str | Path, entries: Sequence[str] = DETECTION_ENTRIES[:1]) -> dict[str, Any]:
    """A checkpoint with ``entries``; not found, unreadable, a plain state dict or another
    kind of file is a one-line error naming the file."""
    path = Path(path)
    if not path.is_file():
        raise DetkdError(f"checkpoint not found: {path}")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:
        raise DetkdError(f"cannot read checkpoint {path}: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}") from None
    if isinstance(ckpt, dict) and ckpt and all(torch.is_tensor(v) for v in ckpt.values()):
        raise DetkdError(f"{path} holds weights only (a plain state dict, no optimizer state); "
                         f"resume from last.pth, or start from these weights with model.weights={path}")
    missing = [k for k in entries if not isinstance(ckpt, dict) or k not in ckpt]
    if missing:
        raise DetkdError(f"{path} is not a detkd checkpoint (no '{missing[0]}' entry)")
    return ckpt


def remove_stale_temp_files(output_dir: str | Path) -> list[Path]:
    """Delete the temporary files of writes that a killed process never finished (each may
    be as large as a checkpoint). Call only while no other process writes ``output_dir``."""
    stale = sorted(Path(output_dir).glob(".*.tmp"))
    for tmp in stale:
        tmp.unlink(missing_ok=True)
    return stale


def latest_checkpoint(output_dir: str | Path, entries: Sequence[str] = DETECTION_ENTRIES) -> Path | None:
    """``--resume auto``: the newest readable training checkpoint in ``output_dir``; None when
    there is no ``last*.pth`` at all.

    Raises DetkdError when every ``last*.pth`` is unreadable or holds weights only: starting
    from scratch there would silently overwrite them, and the user should decide."""
    candidates = sorted(Path(output_dir).glob("last*.pth"), key=lambda p: p.stat().st_mtime, reverse=True)
    problems = []
    for path in candidates:
        try:
            ckpt = load_checkpoint(path, entries[:1])
        except DetkdError as exc:
            problems.append(str(exc))
            continue
        if all(k in ckpt for k in entries):
            return path
        problems.append(f"{path} holds weights only (no optimizer state)")
    if problems:
        raise DetkdError(f"--resume auto: no usable checkpoint in {output_dir} ({'; '.join(problems)}); "
                         "move the file(s) away to start from scratch, or pass --resume PATH")
    return None


def resume_checkpoint(resume: str | None, output_dir: str | Path, config_hash: str, force: bool,
                      entries: Sequence[str] = DETECTION_ENTRIES,
                      saved_hash: Callable[[str, str], str] | None = None) -> tuple[Path | None, dict[str, Any] | None]:
    """The checkpoint a run continues from, read and checked: ``(path, ckpt)``, or
    ``(None, None)`` to start from scratch.

    ``resume``: None (a new run), ``"auto"`` (the newest usable ``last*.pth`` in
    ``output_dir``, none: from scratch) or a path. A checkpoint without an optimizer state, or
    made with a config of another ``config_hash`` (unless ``force``), is a one-line error.

    ``saved_hash(yaml_text, source)``: the hash this version gives the checkpoint's own saved
    config (``ckpt["config"]``); it decides when the recorded hash differs, so a checkpoint of
    an earlier version (another hash rule, fields it did not have) resumes when its config
    means what this one does."""
    if not resume:
        return None, None
    path = latest_checkpoint(output_dir, entries) if resume == "auto" else Path(resume)
    if path is None:
        return None, None
    ckpt = load_checkpoint(path, entries[:1])
    if not all(k in ckpt for k in entries):
        raise DetkdError(f"{path} holds weights only (no optimizer state); start a new run from it instead "
                         "(model.weights; classification: model.checkpoint)")
    if not force and not _same_config(ckpt, config_hash, saved_hash, path):
        raise DetkdError(f"{path} was made with a different config (hash {ckpt.get('config_hash')} vs "
                         f"{config_hash}); pass --force-resume to resume anyway")
    return path, ckpt


def _same_config(ckpt: dict[str, Any], want: str, saved_hash: Callable[[str, str], str] | None, path: Path) -> bool:
    if ckpt.get("config_hash") == want:
        return True
    if saved_hash is None or not isinstance(ckpt.get("config"), str):
        return False
    try:
        return saved_hash(ckpt["config"], f"{path} (its saved config)") == want
    except DetkdError:  # a saved config this version cannot read means another config
        return False


def prepare_output_dir(output_dir: str | Path) -> None:
    """Refuse to start a new run in a directory that holds another (nothing is overwritten):
    a training checkpoint (``last*.pth``, ``best.pth``) or final weights (``*_final.pth``)."""
    out = Path(output_dir)
    if not out.exists():
        return
    held = [p.name for p in sorted(out.glob("last*.pth"))] + [n for n in ("best.pth",) if (out / n).exists()]
    held += [p.name for p in sorted(out.glob("*_final.pth"))]
    if held:
        raise DetkdError(f"output directory {out} already holds a run ({', '.join(held)}); "
                         "use --resume auto to continue it, or choose another output_dir")
