"""Speed and size of a torchvision detection model in eval mode: pure measurements.

Every function takes a model (put in eval mode here; call ``model.to(device)`` first) and
real images, and measures the *whole* ``model(images)`` call as a user would run it:
torchvision's transform (normalisation, resize to ``min_size``/``max_size``, batching),
backbone, RPN with its NMS, RoI heads and post-processing back to the original image size.
Images are moved to the device before any timing starts, so host-to-device copies are not
timed. Nothing here reads a config or writes a file; :mod:`detkd.evaluation.report` puts
the numbers together.

* :func:`count_parameters` (re-exported from :mod:`detkd.modeling.detector`): all
  parameters, frozen ones included (what has to be stored and loaded).
* :func:`count_gflops`: FLOPs of one batch-1 forward counted by torch's own
  ``torch.utils.flop_counter.FlopCounterMode`` (a multiply-add counts 2).
* :func:`measure_latency`: batch-1 wall-clock latency per image (median, p90, mean, min);
  :func:`measure_latency_interleaved`: the same for several models timed side by side.
* :func:`measure_throughput`: images per second at a larger batch.
* :func:`peak_memory`: peak memory of one batch-1 forward (the method is named in the
  result: CUDA allocator statistics, or the bytes of live tensors on other devices).
* :func:`environment`: what the numbers were measured on.
"""

from __future__ import annotations

import os
import platform
import statistics
import time
import weakref
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from detkd.errors import DetkdError
from detkd.modeling.detector import count_parameters

__all__ = [
    "count_parameters", "count_gflops", "measure_latency", "measure_latency_interleaved", "measure_throughput",
    "peak_memory", "live_tensor_peak", "environment",
]

_MB = 1024.0**2


def _device(device: torch.device | str) -> torch.device:
    return device if isinstance(device, torch.device) else torch.device(device)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _on_device(images: Sequence[torch.Tensor], device: torch.device) -> list[torch.Tensor]:
    if not images:
        raise DetkdError("speed measurement needs at least one image")
    return [img.to(device) for img in images]


def _default_image_size(model: nn.Module) -> tuple[int, int]:
    """A square of the model transform's ``min_size`` (capped by ``max_size``): the size a
    square input is resized to anyway."""
    transform = getattr(model, "transform", None)
    if transform is None:
        raise DetkdError("count_gflops needs image_size for a model without a GeneralizedRCNNTransform")
    side = min(int(transform.min_size[-1]), int(transform.max_size))
    return side, side


@torch.inference_mode()
def count_gflops(model: nn.Module, image_size: int | tuple[int, int] | None = None,
                 device: torch.device | str = "cpu", image: torch.Tensor | None = None) -> dict[str, Any]:
    """FLOPs of one forward at batch 1, in GFLOPs (``flops / 1e9``).

    Counted with ``torch.utils.flop_counter.FlopCounterMode`` on a real forward: ``image``
    (e.g. an evaluation image) if given, else a uniform random ``[3, H, W]`` image of
    ``image_size`` (int for a square; default: the model transform's ``min_size``). The
    model's transform resizes either to the configured input size first, as in use.

    What is counted: only the operators torch's counter knows (convolutions, linear /
    matmul / addmm / bmm, scaled-dot-product attention and their variants), a multiply-add
    as 2 FLOPs. Not counted: elementwise ops, batch norm, pooling, interpolation, RoIAlign
    and NMS (torchvision ops), so the number is a lower bound dominated by the backbone and
    heads. The RoI-head share depends on how many proposals survive NMS on this image.

    Returns ``{"gflops": float, "by_module": {top-level child: gflops}, "input_hw": [H, W]}``.
    """
    from torch.utils.flop_counter import FlopCounterMode

    device = _device(device)
    model.eval()
    if image is None:
        if image_size is None:
            image_size = _default_image_size(model)
        h, w = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
        # A fixed generator: the count must not depend on the global RNG state.
        image = torch.rand(3, int(h), int(w), generator=torch.Generator().manual_seed(0))
    image = image.to(device)
    counter = FlopCounterMode(display=False)
    with counter:
        model([image])
    total = counter.get_total_flops()
    # get_flop_counts() is keyed by module path ("Global", "FasterRCNN.backbone", ...).
    root = type(model).__name__
    by_module = {}
    for path, counts in counter.get_flop_counts().items():
        parts = path.split(".")
        if len(parts) == 2 and parts[0] == root:
            by_module[parts[1]] = sum(counts.values()) / 1e9
    return {"gflops": total / 1e9, "by_module": by_module, "input_hw": [int(image.shape[-2]), int(image.shape[-1])]}


def _percentile(values: Sequence[float], q: float) -> float:
    return float(np.percentile(np.asarray(values, dtype=np.float64), q))


@torch.inference_mode()
def measure_latency(model: nn.Module, images: Sequence[torch.Tensor], device: torch.device | str = "cpu",
                    warmup: int = 10, runs: int = 50) -> dict[str, Any]:
    """Batch-1 latency per image, in milliseconds.

    ``warmup`` untimed forwards, then ``runs`` timed ones, each ``model([image])`` on the
    next of ``images`` (cycling), so the numbers of proposals and detections are those of
    real data. Each forward is timed alone with ``time.perf_counter`` under
    ``torch.inference_mode``; on CUDA ``torch.cuda.synchronize`` runs before the clock
    starts and before it stops, so queued kernels are inside the measurement.

    Returns ``{"median_ms", "p90_ms", "mean_ms", "min_ms", "runs", "warmup", "images",
    "rounds"}`` (p90 is numpy's linearly interpolated 90th percentile; ``images``: how many
    distinct images were cycled over; ``rounds`` 1).
    """
    return measure_latency_interleaved([(model, images)], device, warmup=warmup, runs=runs, rounds=1)[0]


@torch.inference_mode()
def measure_latency_interleaved(models: Sequence[tuple[nn.Module, Sequence[torch.Tensor]]],
                                device: torch.device | str = "cpu", warmup: int = 10, runs: int = 50,
                                rounds: int = 5) -> list[dict[str, Any]]:
    """:func:`measure_latency` of several models, timed side by side in ``rounds`` rounds.

    Each round times every model in turn for its share of ``runs`` (the shares differ by at
    most one and add up to ``runs``), so a slow phase of the machine (another process, CPU
    frequency) falls on all models alike instead of on whichever was timed at that moment,
    and the speed ratios between them hold up across repeated reports. ``warmup`` untimed
    forwards precede a model's first round; later rounds start with one untimed forward
    (caches). On CUDA a model is moved to ``device`` for its turn and, when there are
    several, back to the CPU after it, so only one is resident at a time.

    Returns one dict per model, as :func:`measure_latency` (``rounds`` included).
    """
    if runs < 1 or warmup < 0 or rounds < 1:
        raise DetkdError(f"latency needs runs >= 1, warmup >= 0 and rounds >= 1, got runs={runs}, "
                         f"warmup={warmup}, rounds={rounds}")
    device = _device(device)
    on_gpu = device.type != "cpu"
    park = on_gpu and len(models) > 1  # back to the CPU after each turn
    shares = [runs // rounds + (1 if r < runs % rounds else 0) for r in range(rounds)]
    used_rounds = sum(1 for share in shares if share)
    on_device: dict[int, list[torch.Tensor]] = {}  # models given the same image list share one copy
    prepared = []
    for model, images in models:
        model.eval()
        if id(images) not in on_device:
            on_device[id(images)] = _on_device(images, device)
        prepared.append((model, on_device[id(images)]))
    times: list[list[float]] = [[] for _ in models]
    position = [0] * len(models)  # next image of each model (cycling)
    for r, share in enumerate(shares):
        if share == 0:
            continue
        for m, (model, imgs) in enumerate(prepared):
            if on_gpu:
                model.to(device)  # no-op when it is there already
            for _ in range(warmup if r == 0 else 1):
                model([imgs[position[m] % len(imgs)]])
                position[m] += 1
            for _ in range(share):
                img = imgs[position[m] % len(imgs)]
                position[m] += 1
                _sync(device)
                start = time.perf_counter()
                model([img])
                _sync(device)
                times[m].append((time.perf_counter() - start) * 1000.0)
            if park:
                model.to("cpu")
    return [{
        "median_ms": float(statistics.median(t)),
        "p90_ms": _percentile(t, 90),
        "mean_ms": float(statistics.fmean(t)),
        "min_ms": float(min(t)),
        "runs": runs,
        "warmup": warmup,
        "images": len(imgs),
        "rounds": used_rounds,
    } for t, (_, imgs) in zip(times, prepared)]


@torch.inference_mode()
def measure_throughput(model: nn.Module, images: Sequence[torch.Tensor], batch_size: int = 8,
                       device: torch.device | str = "cpu", warmup: int = 2, runs: int = 5) -> dict[str, Any]:
    """Images per second at ``batch_size``: ``runs`` timed forwards of ``batch_size``
    images each (taken from ``images`` in order, cycling), after ``warmup`` untimed ones;
    ``images_per_s = runs * batch_size / total time`` (synchronised on CUDA).

    Returns ``{"images_per_s", "batch_size", "runs", "warmup"}``.
    """
    if batch_size < 1 or runs < 1 or warmup < 0:
        raise DetkdError(f"throughput needs batch_size >= 1, runs >= 1 and warmup >= 0, got "
                         f"batch_size={batch_size}, runs={runs}, warmup={warmup}")
    device = _device(device)
    model.eval()
    imgs = _on_device(images, device)

    def batch(k: int) -> list[torch.Tensor]:
        return [imgs[(k * batch_size + j) % len(imgs)] for j in range(batch_size)]

    for k in range(warmup):
        model(batch(k))
    batches = [batch(warmup + k) for k in range(runs)]
    _sync(device)
    start = time.perf_counter()
    for b in batches:
        model(b)
    _sync(device)
    elapsed = time.perf_counter() - start
    return {"images_per_s": runs * batch_size / elapsed, "batch_size": batch_size, "runs": runs, "warmup": warmup}


class _LiveTensorBytes(TorchDispatchMode):
    """Counts the bytes of live tensor storages while active, and their peak.

    Every operator's non-aliasing outputs are new storages: their bytes are added when the
    operator returns and subtracted when the storage is freed (a weakref callback on the
    storage, which dies only when its last tensor or view does)."""

    def __init__(self) -> None:
        super().__init__()
        self.live = 0
        self.peak = 0
        self._refs: dict[int, tuple[weakref.ref, int]] = {}

    def add(self, tensor: torch.Tensor) -> None:
        storage = tensor.untyped_storage()
        key = id(storage)
        if key in self._refs:
            return
        nbytes = storage.nbytes()
        self._refs[key] = (weakref.ref(storage, lambda _, key=key: self._free(key)), nbytes)
        self.live += nbytes
        self.peak = max(self.peak, self.live)

    def _free(self, key: int) -> None:
        entry = self._refs.pop(key, None)
        if entry is not None:
            self.live -= entry[1]

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        # Views, in-place and out= ops return (part of) an input's storage: nothing new.
        schema = getattr(func, "_schema", None)
        if schema is None or not any(r.alias_info is not None for r in schema.returns):
            for t in tree_leaves(out):
                if isinstance(t, torch.Tensor) and t.layout == torch.strided:
                    self.add(t)
        return out


def live_tensor_peak(fn: Callable[[], Any], resident: Iterable[torch.Tensor] = ()) -> int:
    """Peak bytes of live tensors while ``fn()`` runs, with ``resident`` (e.g. the model's
    parameters and buffers and the input) counted as live from the start.

    Every tensor an operator allocates is seen (composite operators are seen decomposed),
    so the peak is what the tensors need at the worst moment; not counted are kernel-
    internal scratch buffers that never become tensors (e.g. convolution workspaces) and
    allocator overhead (rounding, caching, fragmentation)."""
    tracker = _LiveTensorBytes()
    for t in resident:
        tracker.add(t)
    with tracker:
        fn()
    return tracker.peak


@torch.inference_mode()
def peak_memory(model: nn.Module, images: Sequence[torch.Tensor], device: torch.device | str = "cpu") -> dict[str, Any]:
    """Peak memory of one batch-1 forward on ``images[0]``, model weights and input included.

    * CUDA (``mem_method = "cuda_max_allocated"``): ``torch.cuda.max_memory_allocated``
      after ``reset_peak_memory_stats``, one warm-up forward first. It counts every tensor
      on that GPU, so other live models there inflate it; cuDNN workspaces are included.
    * elsewhere (``mem_method = "live_tensor_bytes"``): :func:`live_tensor_peak`, the peak
      sum of live tensor storages (weights, input and everything the forward allocates),
      because a CPU process has no allocator statistics and its RSS also holds Python,
      the libraries, the dataset and every earlier model (``ru_maxrss`` never goes down).

    Returns ``{"peak_mem_mb", "mem_method", "weights_mb"}`` (MiB).
    """
    device = _device(device)
    model.eval()
    img = _on_device(images[:1], device)[0]
    tensors = list(model.parameters()) + list(model.buffers())
    weights_mb = sum(t.untyped_storage().nbytes() for t in {id(t): t for t in tensors}.values()) / _MB
    if device.type == "cuda":
        model([img])
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        model([img])
        torch.cuda.synchronize(device)
        peak, method = torch.cuda.max_memory_allocated(device), "cuda_max_allocated"
    else:
        peak, method = live_tensor_peak(lambda: model([img]), [*tensors, img]), "live_tensor_bytes"
    return {"peak_mem_mb": peak / _MB, "mem_method": method, "weights_mb": weights_mb}


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def environment(device: torch.device | str = "cpu") -> dict[str, Any]:
    """Where the numbers come from: device, library versions, threads, CPU model."""
    import torchvision

    device = _device(device)
    env: dict[str, Any] = {
        "device": str(device),
        "device_name": _cpu_model(),
        "cpu_model": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
    }
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        env["device_name"] = torch.cuda.get_device_name(index)
        env["cuda"] = torch.version.cuda
        env["cudnn"] = torch.backends.cudnn.version()
    return env
