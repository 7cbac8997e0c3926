"""The report with its page: ``run_report`` plus example pictures and ``report.html``.

:func:`report_page` runs :func:`detkd.evaluation.report.run_report` keeping every evaluated
model's detections, draws the first run of each group side by side on the images where they
differ most (:func:`detkd.deploy.compare.compare_on_dataset`), each with its own display
threshold, and writes the page (:func:`detkd.evaluation.report.html.write_html`).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Optional

__all__ = ["model_threshold", "report_page"]


def model_threshold(checkpoint: str, metrics: Optional[dict[str, Any]]) -> tuple[Optional[float], str]:
    """(display threshold, its source) of a model: the one its file records, else the one its
    evaluation in the report found (the same rule on the report's split), else None."""
    from detkd.errors import DetkdError
    from detkd.modeling.checkpoint_io import read_model_file, recorded_display_threshold

    try:
        recorded = recorded_display_threshold(read_model_file(checkpoint)[1])
    except DetkdError:
        recorded = None
    if recorded is not None:
        return recorded, "its F1-optimal threshold on val"
    if metrics and metrics.get("display_thresh") is not None:
        return float(metrics["display_thresh"]), "F1-optimal on this split"
    return None, "no threshold recorded"


def report_page(entries: Sequence[Any], out: str | Path, *, baseline: Optional[str] = None,
                ahead: Optional[tuple[str, str]] = None, pictures_dir: Optional[Path] = None, n_differ: int = 3,
                n_typical: int = 2, **report_kwargs: Any) -> tuple[dict[str, Any], list[dict[str, Any]], Path]:
    """(report, pictures, page path): the report of ``entries`` into ``out`` with ``report.html``;
    pictures in ``pictures_dir`` (default ``out/pictures``). ``baseline`` names the group the gap
    closed is measured from; ``ahead=(a, b)`` adds the image where group a beats b most."""
    from detkd.deploy.compare import Shown, compare_on_dataset, selection_rule
    from detkd.evaluation.inference import build_eval_data, predict
    from detkd.evaluation.report import load_entry, run_report
    from detkd.evaluation.report.html import write_html
    from detkd.utils.atomic import atomic_write_text
    from detkd.utils.runtime import resolve_device

    out = Path(out)
    predictions: dict[str, Any] = {}
    report = run_report(entries, out, predictions=predictions, **report_kwargs)
    split = report["settings"]["split"]
    firsts = {}
    for entry, run in zip(entries, report["runs"]):
        firsts.setdefault(entry.name, (entry, run))
    dataset = None
    shown = []
    for name, (entry, run) in firsts.items():
        cfg, model = load_entry(entry)
        data, loader = build_eval_data(cfg, split)
        dataset = dataset or data  # the pictures show the first group's images
        preds = predictions.get(entry.label)
        if preds is None:  # given metrics: not evaluated in the report
            device = resolve_device(report["settings"]["device"])
            preds = predict(model.to(device), loader, device, progress=False)
        thresh, source = model_threshold(entry.checkpoint, run.get("metrics"))
        shown.append(Shown(name, preds, list(data.class_names), thresh, source))
        del model
    pictures = compare_on_dataset(shown, dataset, pictures_dir or out / "pictures", n_differ, n_typical, ahead)
    page = write_html(report, out, pictures, selection_rule(n_differ, n_typical, ahead), baseline)
    report["files"]["html"] = str(page)
    atomic_write_text(json.dumps(report, indent=2), out / "report.json")
    return report, pictures, page
