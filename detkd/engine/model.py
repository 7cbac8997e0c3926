"""What the detection training loop trains: one small protocol, :class:`TrainModel`.

A plain torchvision detector (wrapped in :class:`PlainDetector`) and a
:class:`detkd.distill.Distiller` both satisfy it, structurally (``distill`` does not import
``engine``), so the detection steps (:mod:`detkd.engine.detection_task`) never ask which one they hold.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

from torch import Tensor, nn

from detkd.config.schema import Config
from detkd.modeling.detector import build_detector
from detkd.modeling.sampling import set_sampling_keys


class TrainModel(Protocol):
    """The calls the detection loop makes on the model it trains.

    * ``model(images, targets)`` in train mode returns the weighted loss terms (a dict of
      scalars, in a fixed order) whose sum is the objective;
    * ``student``: the deployable detector — its weights are ``last.pth["model"]`` and
      ``model_final.pth``, and it is the one evaluated; ``teacher``: the frozen teacher
      (``eval.evaluate_teacher`` scores it), None for a plain detector;
    * ``set_epoch(epoch)`` at the start of every epoch (terms scheduled by epoch);
    * ``set_image_keys(keys)`` before each training forward: one key per image (run seed,
      epoch, image id) for the random draws that must follow the image, not the batch split
      (Faster R-CNN's RPN/RoI sampling, MGD's masks);
    * ``log_stats()``: extra floats for the log line of the last step (may be empty);
    * ``extra_state()``: learnable state beside the student's, saved as ``last.pth["distill"]``
      (None: nothing, and no such entry); ``load_extra_state(ckpt, path)`` restores it from a
      whole checkpoint (a mismatch is a one-line error naming ``path``).
    """

    student: nn.Module
    teacher: nn.Module | None

    def __call__(self, images: list[Tensor], targets: list[dict[str, Tensor]]) -> dict[str, Tensor]: ...

    def train(self, mode: bool = True) -> Any: ...

    def set_epoch(self, epoch: int) -> None: ...

    def set_image_keys(self, keys: Sequence[int] | None) -> None: ...

    def log_stats(self) -> dict[str, float]: ...

    def extra_state(self) -> dict[str, Tensor] | None: ...

    def load_extra_state(self, ckpt: dict[str, Any], path: Path) -> None: ...


class PlainDetector(nn.Module):
    """A detector trained on its own, as a :class:`TrainModel`: the forward is the detector's,
    nothing is scheduled, logged or saved beside its weights."""

    def __init__(self, detector: nn.Module) -> None:
        super().__init__()
        self.student = detector
        self.teacher = None

    def forward(self, images: list[Tensor], targets: list[dict[str, Tensor]] | None = None) -> Any:
        return self.student(images, targets)

    def set_epoch(self, epoch: int) -> None:
        pass

    def set_image_keys(self, keys: Sequence[int] | None) -> None:
        set_sampling_keys(self.student, keys)

    def log_stats(self) -> dict[str, float]:
        return {}

    def extra_state(self) -> None:
        return None

    def load_extra_state(self, ckpt: dict[str, Any], path: Path) -> None:
        pass


def build_model(cfg: Config) -> TrainModel:
    """The student detector, wrapped in a Distiller when the config distills."""
    student = build_detector(cfg.model)
    if cfg.distill is None:
        return PlainDetector(student)
    from detkd.distill.distiller import build_distiller

    return build_distiller(cfg, student)
