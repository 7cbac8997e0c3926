"""Pictures of detections a person can read: enlarged images, one colour per class, labelled boxes,
several models side by side with captions, and the choice of which images to show.

* :func:`draw_detections`: an image enlarged (smooth resampling) so that its shorter side is at
  least :data:`MIN_SIDE` px, with its boxes drawn in their class's colour, each labelled with
  its class name (and score) on a filled tag;
* :func:`panel_row`: pictures side by side, each under a caption of one or two lines;
* :func:`choose_images`: the images where models differ most (spread of their per-image AP50),
  one where a given model beats another most, and some typical ones, each with the reason.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Optional

import numpy as np

__all__ = ["MIN_SIDE", "choose_images", "class_color", "draw_detections", "panel_row", "save_png"]

#: Shorter side of a drawn picture, at least (smaller images are enlarged).
MIN_SIDE = 480

# Distinct colours (Sasha Trubetskoy's list), one per class label, cycling after 20.
_PALETTE = ("#e6194b", "#3cb44b", "#4363d8", "#f58231", "#911eb4", "#42d4f4", "#f032e6", "#9a6324",
            "#469990", "#800000", "#808000", "#000075", "#bfef45", "#fabed4", "#dcbeff", "#ffe119",
            "#aaffc3", "#ffd8b1", "#a9a9a9", "#000000")


def class_color(label: int) -> str:
    """The colour of class ``label`` (1..C), the same in every picture."""
    return _PALETTE[(int(label) - 1) % len(_PALETTE)]


def _font(size: int):
    """A scalable font of ``size`` px: PIL's own (Pillow 10.1+), else matplotlib's DejaVu Sans."""
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)
    except (TypeError, OSError, AttributeError):
        pass
    try:
        import matplotlib

        return ImageFont.truetype(str(Path(matplotlib.get_data_path()) / "fonts/ttf/DejaVuSans.ttf"), size)
    except (ImportError, OSError):
        return ImageFont.load_default()


def _text_color(color: str) -> str:
    r, g, b = (int(color[i:i + 2], 16) for i in (1, 3, 5))
    return "black" if 0.299 * r + 0.587 * g + 0.114 * b > 150 else "white"


def draw_detections(path: Path, detections: Sequence[Mapping[str, Any]], min_side: int = MIN_SIDE):
    """The image of ``path`` as a PIL image enlarged to a shorter side of at least ``min_side``,
    with ``detections`` (``box`` in the image's pixels, ``label``, ``class``, optional ``score``)
    drawn, the highest scores on top."""
    from PIL import Image, ImageDraw

    from detkd.data.utils import load_rgb_image

    image = Image.fromarray(load_rgb_image(Path(path)))
    w, h = image.size
    scale = max(1.0, min_side / min(w, h))
    if scale > 1:
        image = image.resize((round(w * scale), round(h * scale)), Image.Resampling.LANCZOS)
    sx, sy = image.size[0] / w, image.size[1] / h
    short = min(image.size)
    width, font = max(2, round(short / 160)), _font(max(13, round(short / 27)))
    draw = ImageDraw.Draw(image)
    for d in sorted(detections, key=lambda d: d.get("score", 1.0)):
        x0, y0, x1, y1 = d["box"]
        box = (x0 * sx, y0 * sy, x1 * sx, y1 * sy)
        color = class_color(d["label"])
        draw.rectangle(box, outline=color, width=width)
        text = d["class"] + (f" {d['score']:.2f}" if d.get("score") is not None else "")
        left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
        tw, th = right - left + 6, bottom - top + 4
        tx = min(max(0.0, box[0]), image.size[0] - tw)
        ty = box[1] - th if box[1] - th >= 0 else box[1]  # above the box, or inside it at the top edge
        draw.rectangle((tx, ty, tx + tw, ty + th), fill=color)
        draw.text((tx + 3 - left, ty + 2 - top), text, fill=_text_color(color), font=font)
    return image


def panel_row(pictures: Sequence[Any], captions: Sequence[Sequence[str]], gap: int = 10):
    """PIL pictures in one row on white, each under its caption lines (first line bold-ish)."""
    from PIL import Image, ImageDraw

    height = max(p.size[1] for p in pictures)
    title_font, line_font = _font(20), _font(15)
    lines = max(len(c) for c in captions)
    strip = 8 + 26 + 20 * (lines - 1)
    total_w = sum(p.size[0] for p in pictures) + gap * (len(pictures) + 1)
    canvas = Image.new("RGB", (total_w, height + strip + gap), "white")
    draw = ImageDraw.Draw(canvas)
    x = gap
    for pic, caption in zip(pictures, captions):
        canvas.paste(pic, (x, strip))
        y = 6
        for i, line in enumerate(caption):
            draw.text((x, y), line, fill="black" if i == 0 else "#444444", font=title_font if i == 0 else line_font)
            y += 26 if i == 0 else 20
        x += pic.size[0] + gap
    return canvas


def save_png(image, path: Path) -> None:
    """Write a PIL image as PNG, atomically."""
    import io

    from detkd.utils.atomic import atomic_write_bytes

    buf = io.BytesIO()
    image.save(buf, format="PNG", optimize=True)
    atomic_write_bytes(buf.getvalue(), Path(path))


def choose_images(aps: Mapping[str, Mapping[Any, Optional[float]]], n_differ: int = 3, n_typical: int = 2,
                  ahead: Optional[tuple[str, str]] = None) -> list[tuple[Any, str]]:
    """``[(image key, why)]``: from per-model per-image AP50 (``aps[model][key]``; None where an
    image has no ground truth), the ``n_differ`` images with the largest spread between the
    models' AP50, then (``ahead=(a, b)``) the one where model ``a`` beats ``b`` most, then the
    ``n_typical`` images whose mean AP50 over the models is nearest the median image's."""
    models = list(aps)
    keys = [k for k in aps[models[0]] if all(aps[m].get(k) is not None for m in models)]
    table = {k: np.array([aps[m][k] for m in models]) for k in keys}

    def scores(k: Any) -> str:
        return ", ".join(f"{m} {v:.2f}" for m, v in zip(models, table[k]))

    chosen: list[tuple[Any, str]] = []
    by_spread = sorted(keys, key=lambda k: -float(np.ptp(table[k])))
    for k in by_spread[:n_differ]:
        chosen.append((k, f"models differ most (AP50 here: {scores(k)})"))
    if ahead is not None and ahead[0] in models and ahead[1] in models:
        a, b = models.index(ahead[0]), models.index(ahead[1])
        rest = [k for k in sorted(keys, key=lambda k: -(table[k][a] - table[k][b])) if k not in dict(chosen)]
        if rest and table[rest[0]][a] > table[rest[0]][b]:
            chosen.append((rest[0], f"{ahead[0]} ahead of {ahead[1]} most (AP50 here: {scores(rest[0])})"))
    if keys:
        median = float(np.median([table[k].mean() for k in keys]))
        rest = sorted((k for k in keys if k not in dict(chosen)), key=lambda k: abs(table[k].mean() - median))
        for k in rest[:n_typical]:
            chosen.append((k, f"typical: mean AP50 {table[k].mean():.2f}, median image {median:.2f} "
                              f"(AP50 here: {scores(k)})"))
    return chosen
