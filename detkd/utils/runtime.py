"""What every process needs before it runs a model: the device, the seeds, the RNG states and
whether to draw progress bars. One implementation for detection and classification, for
training, evaluation, reports and deployment alike.
"""

from __future__ import annotations

import os
import random
import sys
from typing import Any

import numpy as np
import torch

from detkd.errors import DetkdError
from detkd.utils import dist


def resolve_device(name: str, key: str = "train.device") -> torch.device:
    """``auto`` (this process's GPU under torchrun, else the CPU), ``cpu``, ``cuda`` or ``cuda:N``;
    a one-line error naming ``key`` for an unknown name or a GPU this machine does not have."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise DetkdError(f"{key}: invalid device '{name}' (use auto, cpu, cuda or cuda:N)") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise DetkdError(f"{key} is '{name}' but CUDA is not available on this machine")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise DetkdError(f"{key} is '{name}' but this machine has {torch.cuda.device_count()} GPU(s)")
    return device


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def rng_state() -> dict[str, Any]:
    """Python, NumPy, torch (and CUDA) RNG states: saved in ``last.pth`` for exact resume."""
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def show_progress(progress: bool | None) -> bool:
    """Progress bars on rank 0; by default only when stderr is a terminal (not in CI logs)."""
    if progress is None:
        progress = sys.stderr.isatty()
    return progress and dist.is_main()
