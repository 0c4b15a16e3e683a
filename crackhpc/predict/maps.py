"""One photo's outputs: the CSV of its patches and the overlay PNG (photo, heat map of crack
probability, patch grid), and its summary row."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from .. import atomic
from .inputs import Box

PATCH_COLUMNS = ("x0", "y0", "x1", "y1", "probability", "cracked")
SUMMARY_COLUMNS = (
    "image",
    "width",
    "height",
    "patches",
    "cracked_patches",
    "cracked_fraction",
    "max_probability",
    "map_csv",
    "overlay",
)
OVERLAY_MAX_SIDE = 1200  # px: readable on a screen; about 1 MB of PNG per photo


def write_patches(path: Path, boxes: list[Box], probs: np.ndarray, threshold: float) -> None:
    atomic.write_csv(
        path, PATCH_COLUMNS, [(b.x0, b.y0, b.x1, b.y1, f"{p:.6f}", int(p >= threshold)) for b, p in zip(boxes, probs)]
    )


def summary_row(
    image: str, size: tuple[int, int], probs: np.ndarray, threshold: float, map_csv: str, overlay: str
) -> dict:
    cracked = int((probs >= threshold).sum())
    return {
        "image": image,
        "width": size[0],
        "height": size[1],
        "patches": len(probs),
        "cracked_patches": cracked,
        "cracked_fraction": round(cracked / max(len(probs), 1), 6),
        "max_probability": round(float(probs.max()), 6),
        "map_csv": map_csv,
        "overlay": overlay,
    }


def _ramp(p: np.ndarray) -> np.ndarray:
    """Crack probability → colour: green (intact) through yellow to red (cracked), uint8 (..., 3)."""
    r = np.clip(2.0 * p, 0, 1)
    g = np.clip(2.0 * (1.0 - p), 0, 1)
    return (np.stack([r, g * 0.85, np.zeros_like(p)], axis=-1) * 255).astype(np.uint8)


def probability_map(size: tuple[int, int], boxes: list[Box], probs: np.ndarray, scale: float) -> np.ndarray:
    """Per pixel (at `scale`), the mean probability of the patches that cover it."""
    w, h = max(1, round(size[0] * scale)), max(1, round(size[1] * scale))
    total, count = np.zeros((h, w)), np.zeros((h, w))
    for b, p in zip(boxes, probs):
        sl = (
            slice(int(b.y0 * scale), max(int(b.y0 * scale) + 1, round(b.y1 * scale))),
            slice(int(b.x0 * scale), max(int(b.x0 * scale) + 1, round(b.x1 * scale))),
        )
        total[sl] += p
        count[sl] += 1
    return total / np.maximum(count, 1)


def _font(size: int):
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow without FreeType: the fixed bitmap font
        return ImageFont.load_default()


def overlay(photo: Image.Image, boxes: list[Box], probs: np.ndarray, threshold: float, title: str) -> bytes:
    """PNG: the photo (greyed, so the colours read), the heat map blended over it, every patch's
    outline, cracked patches outlined in red, and a caption line."""
    scale = min(1.0, OVERLAY_MAX_SIDE / max(photo.size))
    w, h = max(1, round(photo.width * scale)), max(1, round(photo.height * scale))
    base = photo.resize((w, h), Image.Resampling.BILINEAR) if scale < 1 else photo
    grey = np.asarray(base.convert("L"), np.float32)[..., None].repeat(3, axis=2)
    heat = probability_map(photo.size, boxes, probs, scale)
    alpha = (0.15 + 0.4 * heat)[..., None]
    blended = grey * (1 - alpha) + _ramp(heat).astype(np.float32) * alpha
    caption_h = max(18, w // 45)
    canvas = Image.new("RGB", (w, h + caption_h + 8), (255, 255, 255))
    canvas.paste(Image.fromarray(blended.astype(np.uint8)), (0, 0))
    draw = ImageDraw.Draw(canvas)
    line = max(1, round(w / 800))
    for b, p in sorted(zip(boxes, probs), key=lambda bp: bp[1] >= threshold):  # cracked outlines on top
        rect = (b.x0 * scale, b.y0 * scale, b.x1 * scale - 1, b.y1 * scale - 1)
        if p >= threshold:
            draw.rectangle(rect, outline=(220, 0, 0), width=2 * line + 1)
        else:
            draw.rectangle(rect, outline=(255, 255, 255), width=line)
    size = caption_h - 4
    font = _font(size)
    while size > 8 and hasattr(font, "getlength") and font.getlength(title) > w - 8:  # the caption fits the width
        size -= 1
        font = _font(size)
    draw.text((4, h + 4), title, fill=(0, 0, 0), font=font)
    buf = io.BytesIO()
    canvas.save(buf, format="PNG", compress_level=1)  # 3x faster than the default 6, and as small on photo texture
    return buf.getvalue()
