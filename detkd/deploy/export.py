"""Export a detector to ONNX or TorchScript, then check the exported file against eager inference.

Both files take one float32 RGB image ``[3, H, W]`` in 0..1 (batch 1; H and W dynamic in both:
the model resizes internally to its ``min_size``/``max_size``) and return
``(boxes [K, 4] xyxy in input pixels, labels [K] int64, scores [K] float32)``.

* ONNX: ``torch.onnx.export(dynamo=False)``, the TorchScript-based exporter that torchvision
  tests Faster R-CNN with (opset 17; ``dynamic_axes`` on H and W). Run with onnxruntime.
* TorchScript: ``torch.jit.script`` (torchvision supports scripting its detectors); load it with
  ``torch.jit.load`` (torchvision imported, for its compiled ``nms``/``roi_align`` ops; no detkd).
  torch 2.14 marks TorchScript deprecated in favour of ``torch.export``; it still works.

detkd's :class:`~detkd.modeling.sampling.KeyedSampler` is a training-only component (it picks
the anchors/proposals of the loss); the exported copy gets torchvision's own sampler of the
same sizes, which inference never calls. One-stage models (RetinaNet, FCOS) may return label-0
(background) detections, as torchvision's do; detkd's ``predict`` and evaluation drop them
(:func:`detkd.modeling.families.foreground`).

Parity (:func:`check_parity`): on each check image the exported model's detections must equal
the eager model's as sets, boxes within ``BOX_ATOL`` pixels and scores within ``SCORE_ATOL``,
where a detection on one side only is accepted just at a cut-off that float noise decides
(:mod:`detkd.deploy.parity`); otherwise the file is deleted and export fails. Given no
images, the check runs on :func:`default_check_images`: the model file's own val images where
they are still on disk, else a few held-out demo images shipped inside the package (so an
export needs nothing but the model file, from any folder).
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Callable, Sequence

import torch
from torch import Tensor, nn

from detkd.deploy.parity import BOX_ATOL, SCORE_ATOL, Cutoffs, compare
from detkd.errors import DetkdError

__all__ = ["BOX_ATOL", "SCORE_ATOL", "FORMATS", "check_parity", "export_model"]

FORMATS = ("onnx", "torchscript")
# Eight held-out images of the demo's val split (160 px, seed 0), package data in the wheel.
SHIPPED_CHECK_IMAGES = Path(__file__).parent / "parity_images"
ONNX_OPSET = 17


class _EagerSingle(nn.Module):
    """One image in, (boxes, labels, scores) out: the exported interface (ONNX tracing)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, image: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        out = self.model([image])[0]
        return out["boxes"], out["labels"], out["scores"]


class _ScriptSingle(nn.Module):
    """The same interface for torch.jit.script, where every torchvision detector returns
    (losses, detections)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, image: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        out = self.model([image])[1][0]
        return out["boxes"], out["labels"], out["scores"]


def exportable_copy(model: nn.Module) -> nn.Module:
    """An eval-mode CPU copy with torchvision's sampler in place of detkd's keyed one."""
    from detkd.modeling.sampling import plain_samplers

    return plain_samplers(copy.deepcopy(model).cpu().eval())


def check_writable(out: Path, flag: str = "--out") -> None:
    """Fail before the (slow) work when the file ``out`` cannot be written."""
    if out.is_dir():
        raise DetkdError(f"{flag} {out} is a folder; give a file name")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        probe = out.parent / f".{out.name}.probe"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise DetkdError(f"cannot write {flag} {out}: {exc.strerror or exc}") from None


def default_check_images(recorded: Sequence[Path]) -> tuple[list[Path], str]:
    """``(files, where they come from)`` for a parity check given no images: ``recorded``
    (a model file's val images still on disk) when there are any, else the shipped ones."""
    if recorded:
        return list(recorded), "the model file's val images"
    shipped = sorted(SHIPPED_CHECK_IMAGES.glob("*.jpg"))
    if not shipped:  # a broken install; a checkout and a wheel both carry them
        raise DetkdError(f"no images for the parity check in {SHIPPED_CHECK_IMAGES}: give some with --check-images")
    return shipped, "detkd's shipped demo images"


def export_onnx(model: nn.Module, out: Path, example: Tensor) -> None:
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the tracer's many TracerWarnings on torchvision code
        torch.onnx.export(_EagerSingle(model), (example,), str(out), opset_version=ONNX_OPSET, dynamo=False,
                          input_names=["image"], output_names=["boxes", "labels", "scores"],
                          dynamic_axes={"image": {1: "height", 2: "width"}, "boxes": {0: "detections"},
                                        "labels": {0: "detections"}, "scores": {0: "detections"}})


def export_torchscript(model: nn.Module, out: Path) -> None:
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "RCNN/RetinaNet/... always returns a (Losses, Detections) tuple"
        scripted = torch.jit.script(_ScriptSingle(model))
    scripted.save(str(out))


def onnx_runner(path: Path, threads: int | None = None) -> Callable[[Tensor], tuple[Tensor, Tensor, Tensor]]:
    """``image -> (boxes, labels, scores)`` through onnxruntime on the CPU."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])

    def run(image: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        boxes, labels, scores = session.run(None, {"image": image.numpy()})
        return torch.from_numpy(boxes), torch.from_numpy(labels), torch.from_numpy(scores)

    return run


def torchscript_runner(path: Path) -> Callable[[Tensor], tuple[Tensor, Tensor, Tensor]]:
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch 2.14: "torch.jit.load is deprecated"
        scripted = torch.jit.load(str(path), map_location="cpu").eval()

    def run(image: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".* always returns")
            return scripted(image)

    return run


def runner(fmt: str, path: Path, threads: int | None = None) -> Callable[[Tensor], tuple[Tensor, Tensor, Tensor]]:
    return onnx_runner(path, threads) if fmt == "onnx" else torchscript_runner(path)


def check_parity(model: nn.Module, run: Callable[[Tensor], tuple[Tensor, Tensor, Tensor]],
                 images: Sequence[tuple[str, Tensor]]) -> dict[str, float]:
    """Compare eager ``model`` and an exported ``run`` on ``images`` ((name, image) pairs) with
    :func:`detkd.deploy.parity.compare`.

    Returns the matched detections' largest box and score differences, their count and the
    count accepted at a cut-off; raises DetkdError naming the first image where they disagree
    and the first detection that differs."""
    from detkd.modeling.families import family_of_model

    eager = _EagerSingle(model).eval()
    cut = Cutoffs.of(family_of_model(model).postprocessor(model))
    numbers = {"images": len(images), "detections": 0, "at_cutoff": 0, "max_box_diff": 0.0, "max_score_diff": 0.0}
    for name, image in images:
        with torch.no_grad():
            want = eager(image)
        found = compare(want, run(image), cut)
        if found.problems:
            more = f" (and {len(found.problems) - 1} more)" if len(found.problems) > 1 else ""
            raise DetkdError(f"exported model disagrees on {name}: {found.problems[0]}{more}")
        numbers["detections"] += found.matched
        numbers["at_cutoff"] += found.at_cutoff
        numbers["max_box_diff"] = max(numbers["max_box_diff"], found.max_box_diff)
        numbers["max_score_diff"] = max(numbers["max_score_diff"], found.max_score_diff)
    return numbers


def export_model(model: nn.Module, fmt: str, out: str | Path, images: Sequence[tuple[str, Tensor]]) -> dict[str, float]:
    """Export ``model`` to ``out`` in ``fmt`` and check it on ``images``; a file that fails
    the check is deleted. Returns :func:`check_parity`'s numbers."""
    if fmt not in FORMATS:
        raise DetkdError(f"unknown export format '{fmt}'; choose one of: {', '.join(FORMATS)}")
    if not images:
        raise DetkdError("export needs at least one image for the parity check")
    out = Path(out)
    check_writable(out)
    model = exportable_copy(model)
    tmp = out.parent / f".{out.name}.tmp"
    try:
        if fmt == "onnx":
            export_onnx(model, tmp, images[0][1])
        else:
            export_torchscript(model, tmp)
        numbers = check_parity(model, runner(fmt, tmp), images)
        tmp.replace(out)
    finally:
        tmp.unlink(missing_ok=True)
    return numbers
