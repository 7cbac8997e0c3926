"""ONNX (onnxruntime) latency beside eager PyTorch, for ``detkd report --onnx``.

Each model is exported to a temporary ONNX file (with :func:`detkd.deploy.export.export_model`'s
parity check on the timed images), then the eager model and the onnxruntime session are timed
side by side with :func:`detkd.evaluation.profile.measure_latency_interleaved`: batch 1, the same
images, torch and onnxruntime both limited to the same number of CPU threads.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import nn

from detkd.errors import DetkdError


class OnnxModule(nn.Module):
    """An onnxruntime session called like a torchvision detector: ``model([image])``."""

    def __init__(self, run) -> None:
        super().__init__()
        self.run = run

    def forward(self, images: list[torch.Tensor]) -> list[dict[str, torch.Tensor]]:
        boxes, labels, scores = self.run(images[0])
        return [{"boxes": boxes, "labels": labels, "scores": scores}]


def onnx_vs_eager(model: nn.Module, images: Sequence[torch.Tensor], threads: int, warmup: int = 10,
                  runs: int = 50, rounds: int = 5) -> dict[str, Any]:
    """``{"eager": latency, "onnx": latency, "parity": numbers, "threads"}`` on the CPU."""
    from detkd.deploy.export import export_model, onnx_runner
    from detkd.evaluation.profile import measure_latency_interleaved

    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        raise DetkdError("--onnx needs onnx and onnxruntime: pip install 'detkd[export]'") from None
    model = model.cpu().eval()
    old_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "model.onnx"
            parity = export_model(model, "onnx", path, [(f"image {i}", img) for i, img in enumerate(images)])
            onnx_model = OnnxModule(onnx_runner(path, threads))
            eager, onnx = measure_latency_interleaved([(model, images), (onnx_model, images)], "cpu",
                                                      warmup=warmup, runs=runs, rounds=rounds)
    finally:
        torch.set_num_threads(old_threads)
    return {"eager": eager, "onnx": onnx, "parity": parity, "threads": threads}


def onnx_table(rows: Sequence[tuple[str, dict[str, Any]]]) -> str:
    """Markdown table of :func:`onnx_vs_eager` results, one row per model."""
    lines = ["| model | eager median (ms) | ONNX Runtime median (ms) | ONNX p90 (ms) | speed-up | threads | "
             "parity (max box / score diff) |", "|---|---|---|---|---|---|---|"]
    for label, r in rows:
        e, o, p = r["eager"], r["onnx"], r["parity"]
        lines.append(f"| {label} | {e['median_ms']:.1f} | {o['median_ms']:.1f} | {o['p90_ms']:.1f} | "
                     f"{e['median_ms'] / o['median_ms']:.2f}x | {r['threads']} | "
                     f"{p['max_box_diff']:.2g} px / {p['max_score_diff']:.2g} on {p['images']} images |")
    return "\n".join(lines)
