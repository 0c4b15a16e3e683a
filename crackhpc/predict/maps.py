"""One photo's outputs: the CSV of its patches and the overlay PNG (photo, heat map of crack
probability, patch grid), and its summary row. A model of N classes (not the crack dataset's two)
gets each patch's top class instead: a map of the classes in colour, with a legend."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image, ImageDraw, ImageFont

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


def _grey(photo: Image.Image) -> tuple[np.ndarray, float]:
    """The photo at most OVERLAY_MAX_SIDE px a side, in grey (so the colours over it read), float RGB;
    and its scale."""
    scale = min(1.0, OVERLAY_MAX_SIDE / max(photo.size))
    w, h = max(1, round(photo.width * scale)), max(1, round(photo.height * scale))
    base = photo.resize((w, h), Image.Resampling.BILINEAR) if scale < 1 else photo
    return np.asarray(base.convert("L"), np.float32)[..., None].repeat(3, axis=2), scale


def _caption(draw: ImageDraw.ImageDraw, title: str, at: tuple[int, int], width: int, height: int) -> None:
    """`title` at `at`, in the largest font up to `height` px that fits `width`."""
    size = height - 4
    font = _font(size)
    while size > 8 and hasattr(font, "getlength") and font.getlength(title) > width - 8:
        size -= 1
        font = _font(size)
    draw.text(at, title, fill=(0, 0, 0), font=font)


def _png(canvas: Image.Image) -> bytes:
    buf = io.BytesIO()
    canvas.save(buf, format="PNG", compress_level=1)  # 3x faster than the default 6, and as small on photo texture
    return buf.getvalue()


def overlay(photo: Image.Image, boxes: list[Box], probs: np.ndarray, threshold: float, title: str) -> bytes:
    """PNG: the photo (greyed, so the colours read), the heat map blended over it, every patch's
    outline, cracked patches outlined in red, and a caption line."""
    grey, scale = _grey(photo)
    h, w = grey.shape[:2]
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
    _caption(draw, title, (4, h + 4), w, caption_h)
    return _png(canvas)


# -- N classes: each patch's top class ---------------------------------------------------------

# Colours told apart in print and by most colour-blind readers (Okabe-Ito, then Tableau's)
PALETTE = (
    (230, 159, 0),
    (86, 180, 233),
    (0, 158, 115),
    (213, 94, 0),
    (204, 121, 167),
    (0, 114, 178),
    (240, 228, 66),
    (127, 127, 127),
    (148, 103, 189),
    (140, 86, 75),
)


def class_patch_columns(classes: tuple[str, ...]) -> tuple[str, ...]:
    return ("x0", "y0", "x1", "y1", "class", "probability", *(f"p_{c}" for c in classes))


def class_summary_columns(classes: tuple[str, ...]) -> tuple[str, ...]:
    return (
        "image",
        "width",
        "height",
        "patches",
        "top_class",
        *(f"patches_{c}" for c in classes),
        "map_csv",
        "overlay",
    )


def class_patch_rows(boxes: list[Box], scores: np.ndarray, classes: tuple[str, ...]) -> list[tuple]:
    """A row per patch: its box, top class and that class's probability, then every class's."""
    top = scores.argmax(1)
    return [
        (b.x0, b.y0, b.x1, b.y1, classes[k], f"{p[k]:.6f}", *(f"{v:.6f}" for v in p))
        for b, k, p in zip(boxes, top, scores)
    ]


def class_summary_row(image: str, size: tuple[int, int], scores: np.ndarray, classes: tuple[str, ...], files) -> dict:
    """The photo's row: its patches of each top class, and the class most of them have. `files`: (map CSV, overlay)."""
    counts = np.bincount(scores.argmax(1), minlength=len(classes))
    return {
        "image": image,
        "width": size[0],
        "height": size[1],
        "patches": len(scores),
        "top_class": classes[int(counts.argmax())],
        **{f"patches_{c}": int(n) for c, n in zip(classes, counts)},
        "map_csv": files[0],
        "overlay": files[1],
    }


def colour(k: int) -> tuple[int, int, int]:
    return PALETTE[k % len(PALETTE)]


def class_overlay(
    photo: Image.Image, boxes: list[Box], scores: np.ndarray, classes: tuple[str, ...], title: str
) -> bytes:
    """PNG: the photo in grey with each pixel tinted by the top class of the patches over it (their
    mean probabilities), the patch grid, a legend of the classes with their patch counts, and a caption."""
    grey, scale = _grey(photo)
    h, w = grey.shape[:2]
    means = np.stack([probability_map(photo.size, boxes, scores[:, k], scale) for k in range(len(classes))])
    top = means.argmax(0)
    tint = np.array([colour(k) for k in range(len(classes))], np.float32)[top]
    blended = grey * 0.5 + tint * 0.5
    caption_h = max(18, w // 45)
    counts = np.bincount(scores.argmax(1), minlength=len(classes))
    font = _font(caption_h - 4)
    lines: list[list[tuple[int, str, int]]] = [[]]  # the legend's entries (class, label, x), as many lines as fit
    x = 4
    for k, (name, n) in enumerate(zip(classes, counts)):
        label = f"{name} ({n})"
        width = caption_h + int(font.getlength(label) if hasattr(font, "getlength") else 8 * len(label)) + 12
        if lines[-1] and x + width > w:
            lines.append([])
            x = 4
        lines[-1].append((k, label, x))
        x += width
    legend_h = len(lines) * caption_h
    canvas = Image.new("RGB", (w, h + legend_h + caption_h + 12), (255, 255, 255))
    canvas.paste(Image.fromarray(blended.astype(np.uint8)), (0, 0))
    draw = ImageDraw.Draw(canvas)
    for b in boxes:
        draw.rectangle((b.x0 * scale, b.y0 * scale, b.x1 * scale - 1, b.y1 * scale - 1), outline=(255, 255, 255))
    for row, entries in enumerate(lines):
        y = h + 4 + row * caption_h
        for k, label, x in entries:
            draw.rectangle((x, y + 2, x + caption_h - 6, y + caption_h - 4), fill=colour(k), outline=(0, 0, 0))
            draw.text((x + caption_h, y), label, fill=(0, 0, 0), font=font)
    _caption(draw, title, (4, h + legend_h + 8), w, caption_h)
    return _png(canvas)
