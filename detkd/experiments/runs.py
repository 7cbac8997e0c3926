"""Reuse a finished detection run, else train it (resuming an interrupted one).

A run directory is *finished* when it holds ``results.json``. A finished run is reused only
when the ``config.yaml`` saved beside it hashes like the requested config over
:data:`RUN_SECTIONS` (:func:`detkd.config.dump.config_hash`); a finished run of another
config is a one-line :class:`DetkdError`, never silently mixed into a table. Otherwise the
run is trained with ``resume="auto"`` (from its ``last.pth`` when there is one).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Callable, Optional

from detkd.config.dump import config_hash
from detkd.recipe import load_config
from detkd.errors import DetkdError

__all__ = ["RUN_SECTIONS", "finished", "check_finished_run", "check_same_config", "train_or_reuse"]

#: What a reused run must have been trained with (``output_dir`` and ``eval`` are not part of it).
RUN_SECTIONS = ("model", "data", "train", "teacher", "distill")

#: ``say(event, out, seconds)``: event is "reused", "training", "resuming" or "done" (seconds set).
Say = Callable[[str, Path, Optional[float]], None]


def finished(out: str | Path) -> bool:
    """Whether the run directory holds a finished run (its ``results.json``)."""
    return (Path(out) / "results.json").is_file()


def check_finished_run(out: str | Path, what: str, same: Callable[[Path], bool],
                       elsewhere: str = "--output-root") -> None:
    """Raise a one-line DetkdError unless ``same(out/config.yaml)``: the finished run in ``out``
    was made with the requested config (``what`` names it; ``elsewhere`` the flag to move to)."""
    out = Path(out)
    saved = out / "config.yaml"
    if not saved.is_file():
        raise DetkdError(f"{out} holds a finished run (results.json) without its config.yaml, so it cannot be "
                         f"checked against {what}; move it away or choose another {elsewhere}")
    if not same(saved):
        raise DetkdError(f"{out} holds a finished run of another config than {what}; move it away "
                         f"or choose another {elsewhere}")


def check_same_config(cfg: Any, out: str | Path, what: str, sections: tuple[str, ...] = RUN_SECTIONS) -> None:
    """:func:`check_finished_run` of a detection run: ``out/config.yaml`` hashes like ``cfg``
    over ``sections``."""
    want = config_hash(cfg, sections)
    check_finished_run(out, what, lambda saved: config_hash(load_config(saved), sections) == want)


def train_or_reuse(cfg: Any, what: str, say: Say, progress: Optional[bool] = None,
                   sections: tuple[str, ...] = RUN_SECTIONS) -> dict[str, Any]:
    """The results.json of the run ``cfg`` describes (in ``cfg.output_dir``): read back from a
    finished run of the same config, else after training it (``resume="auto"``).

    ``what`` names the requested config in the error; ``say`` announces what happens."""
    out = Path(cfg.output_dir)
    if finished(out):
        check_same_config(cfg, out, what, sections)
        say("reused", out, None)
    else:
        from detkd.engine.trainer import train  # lazily: the heavy part

        say("resuming" if (out / "last.pth").is_file() else "training", out, None)
        t0 = time.time()
        train(cfg, resume="auto", progress=progress)
        say("done", out, time.time() - t0)
    return json.loads((out / "results.json").read_text())
