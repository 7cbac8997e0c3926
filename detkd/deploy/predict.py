"""Run a trained detector on image files: detection records, pictures, side-by-side comparisons.

A record per image (what ``detkd predict`` writes to ``detections.json``)::

    {"file": "img/0001.jpg", "width": 160, "height": 160,
     "detections": [{"box": [x0, y0, x1, y1], "score": 0.93, "label": 3, "class": "Dress"}, ...]}

``detections_coco.json`` beside it holds the same detections as COCO results by file and
category name (:func:`coco_results`). Boxes are in the image's own pixels (torchvision's postprocess maps them back from the
resized input); images are read exactly as the datasets read them (PIL, RGB, 0..1), so the
detections equal those of ``eval_det --save-detections`` on the same files.
"""

from __future__ import annotations

import glob
import json
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import nn

from detkd.data.images import IMAGE_SUFFIXES
from detkd.data.utils import image_to_tensor, load_rgb_image
from detkd.errors import DetkdError



def find_images(inputs: Sequence[str]) -> list[Path]:
    """Image files named by ``inputs``: files, folders (their images, sorted, not recursive)
    and glob patterns; in the order given, without duplicates."""
    found: list[Path] = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            found += sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
        elif path.is_file():
            found.append(path)
        elif glob.has_magic(item):
            matches = sorted(Path(p) for p in glob.glob(item, recursive=True))
            images = [p for p in matches if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES]
            if not images:
                raise DetkdError(f"--input pattern '{item}' matches no image files")
            found += images
        else:
            raise DetkdError(f"--input {item}: no such file or folder")
    unique = list(dict.fromkeys(found))
    if not unique:
        raise DetkdError(f"no image files ({', '.join(IMAGE_SUFFIXES)}) in {' '.join(inputs)}")
    return unique


def set_score_thresh(model: nn.Module, score_thresh: float | None) -> None:
    """Keep detections scoring above ``score_thresh`` (None: the model's own score threshold)."""
    from detkd.modeling.families import family_of_model

    if score_thresh is not None:
        if not 0.0 <= score_thresh <= 1.0:
            raise DetkdError(f"--score-thresh must be in [0, 1], got {score_thresh}")
        family_of_model(model).postprocessor(model).score_thresh = float(score_thresh)


def to_record(file: str, width: int, height: int, output: dict[str, torch.Tensor],
              class_names: Sequence[str]) -> dict[str, Any]:
    """One image's JSON record from a torchvision detector output."""
    detections = []
    for box, score, label in zip(output["boxes"].tolist(), output["scores"].tolist(), output["labels"].tolist()):
        name = class_names[label - 1] if 1 <= label <= len(class_names) else f"class{label}"
        detections.append({"box": box, "score": score, "label": int(label), "class": name})
    return {"file": file, "width": width, "height": height, "detections": detections}


@torch.inference_mode()
def predict_files(model: nn.Module, class_names: Sequence[str], files: Sequence[Path], device: torch.device | str,
                  batch_size: int = 1, progress: bool = False) -> list[dict[str, Any]]:
    """Records for ``files``, in order (``model`` in eval mode on ``device``); label-0
    (background) detections of one-stage models are dropped, as evaluation does."""
    from tqdm import tqdm

    from detkd.modeling.families import foreground

    if batch_size < 1:
        raise DetkdError(f"--batch-size must be at least 1, got {batch_size}")
    model.eval()
    records = []
    bar = tqdm(total=len(files), desc="predict", unit="img", disable=not progress, dynamic_ncols=True)
    for start in range(0, len(files), batch_size):
        chunk = files[start:start + batch_size]
        images = [image_to_tensor(load_rgb_image(p)) for p in chunk]
        outputs = model([img.to(device) for img in images])
        for path, img, out in zip(chunk, images, outputs):
            out = foreground({k: v.cpu() for k, v in out.items()})
            records.append(to_record(str(path), int(img.shape[2]), int(img.shape[1]), out, class_names))
        bar.update(len(chunk))
    bar.close()
    return records


def coco_results(records: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """The records as COCO results by file and category name (``[{file_name, category_name,
    bbox: [x, y, w, h], score}]``): what any tool reads, and ``teacher.detections`` of a
    distillation run (matched to the training images by file name, to its classes by name)."""
    return [{"file_name": Path(r["file"]).name, "category_name": d["class"],
             "bbox": [d["box"][0], d["box"][1], d["box"][2] - d["box"][0], d["box"][3] - d["box"][1]],
             "score": d["score"]}
            for r in records for d in r["detections"]]


def picture_names(files: Sequence[Path]) -> list[str]:
    """``<stem>.png`` per file, made unique (``a.png``, ``a-2.png``) when stems repeat."""
    names, seen = [], {}
    for path in files:
        count = seen.get(path.stem, 0) + 1
        seen[path.stem] = count
        names.append(f"{path.stem}.png" if count == 1 else f"{path.stem}-{count}.png")
    return names


def run_title(path: str | Path) -> str:
    """A column title: the run folder's name for .../NAME/model_final.pth, else the file's stem."""
    p = Path(path)
    return p.parent.name if p.stem == "model_final" and p.parent.name else p.stem


def display_thresholds(infos: Sequence[dict[str, Any] | None], score_thresh: float | None) -> list[tuple]:
    """Per model: (the threshold its pictures show boxes from, where it comes from): --score-thresh
    when given, else the one its model file records, else None (all its detections)."""
    from detkd.modeling.checkpoint_io import recorded_display_threshold

    out = []
    for info in infos:
        recorded = recorded_display_threshold(info)
        if score_thresh is not None:
            out.append((score_thresh, "--score-thresh"))
        elif recorded is not None:
            out.append((recorded, "its F1-optimal threshold on val"))
        else:
            out.append((None, "no threshold recorded"))
    return out


def predict_and_draw(ckpts: Sequence[str | Path], files: Sequence[Path], out: Path, device: torch.device | str,
                     config: str | None = None, score_thresh: float | None = None, batch_size: int = 1,
                     draw: bool = False, progress: bool = False) -> list[dict[str, Any]]:
    """``detkd predict``: the first model's detections on ``files`` into ``out/detections.json``
    (returned: all those above the model's own ``box_score_thresh``, or ``score_thresh``), with
    ``draw`` its pictures in ``out/pictures/``, and with more than one model file every image's
    detections of all of them side by side in ``out/compare/``. Pictures show the boxes scoring
    at least each model's recorded display threshold, or ``score_thresh`` when given."""
    from detkd.deploy.compare import plural, threshold_caption
    from detkd.deploy.pictures import draw_detections, panel_row, save_png
    from detkd.modeling.checkpoint_io import load_model_with_info
    from detkd.utils.atomic import atomic_write_text

    runs, infos = [], []
    for i, ckpt in enumerate(ckpts):
        model, names, info = load_model_with_info(ckpt, config=config if i == 0 else None, device=device)
        set_score_thresh(model, score_thresh)
        runs.append(predict_files(model, names, files, device, batch_size, progress))
        infos.append(info)
    records = runs[0]
    atomic_write_text(json.dumps(records, indent=1), out / "detections.json")
    atomic_write_text(json.dumps(coco_results(records)), out / "detections_coco.json")
    names = picture_names(files)
    shown = display_thresholds(infos, score_thresh)

    def kept(record: dict[str, Any], thresh: float | None) -> list[dict[str, Any]]:
        return [d for d in record["detections"] if thresh is None or d["score"] >= thresh]

    if draw:
        for path, record, name in zip(files, records, names):
            save_png(draw_detections(path, kept(record, shown[0][0])), out / "pictures" / name)
    if len(ckpts) > 1:
        titles = [run_title(c) for c in ckpts]
        for k, (path, name) in enumerate(zip(files, names)):
            dets = [kept(run[k], thresh) for run, (thresh, _) in zip(runs, shown)]
            captions = [[title, threshold_caption(*thr), plural(len(d), "box")]
                        for title, thr, d in zip(titles, shown, dets)]
            save_png(panel_row([draw_detections(path, d) for d in dets], captions), out / "compare" / name)
    return records
