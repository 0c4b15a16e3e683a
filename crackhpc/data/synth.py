"""Synthetic stand-in for the "Concrete Crack Images for Classification" dataset.

The real dataset holds 40,000 RGB JPEGs of 227x227 px in two folders,
``Positive/`` (cracked) and ``Negative/`` (intact), named ``00001.jpg``,
``00002.jpg``, ...  :func:`synthesize` writes a dataset with the same layout
so that the training pipeline can be developed and benchmarked without the
download.

Every image is a pure function of ``(seed, class, index, size)``: its random
generator is ``np.random.default_rng([seed, class_id, index])``.  A larger
``n`` therefore yields a superset of a smaller one, and repeated runs produce
byte-identical files (for a given Pillow/libjpeg build).

Images
------
* Background: grey-beige concrete whose brightness and tint vary per image,
  multi-octave value-noise texture, fine grain, pores (small dark dots),
  aggregate speckles, soft stains and a mild illumination gradient.
* Positive: one to three thin, dark, jagged, branching cracks (persistent
  random walks whose width varies along their length, from sub-pixel to a few
  pixels at 227 px) with contrast ranging from faint to strong.
* Negative: plain concrete, or "hard" negatives with straight joints / saw
  cuts, slab edges (part of the image darker), elongated stains, straight
  smooth scratches and bug holes, so that dark structure alone does not give
  the class away.

`synthesize_classes` writes a dataset of N classes instead, one folder per kind of damage
(crack, spalling, stain, holes, joint, scratch, or clean concrete), each image the same background
with one kind drawn on it, seeded by its kind's id.

Only numpy and Pillow are used.
"""

from __future__ import annotations

import functools
import io
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from .. import atomic
from ..config import SYNTH_CLASSES
from .layout import CLASSES

__all__ = [
    "FOLDERS",
    "CLASS_IDS",
    "KINDS",
    "render",
    "render_kind",
    "render_index",
    "synthesize",
    "synthesize_classes",
    "filename",
    "render_photo",
    "synthesize_photos",
]

#: Class folder names, in the order used for ``n`` splitting and for seeding.
FOLDERS = tuple(c.capitalize() for c in CLASSES)  # the published archive's Negative/ and Positive/
CLASS_IDS = {folder: label for label, folder in enumerate(FOLDERS)}

_REF = 227.0  # the real dataset's image size; all lengths are given at this scale
_SS = 2  # supersampling factor for line drawings (anti-aliasing)


# --------------------------------------------------------------------------- helpers
def _octave(rng: np.random.Generator, size: int, cell: float) -> np.ndarray:
    """Smooth value noise (unit-ish variance) with feature size ``cell`` px."""
    k = max(2, int(math.ceil(size / max(cell, 1.0))) + 1)
    small = rng.standard_normal((k, k)).astype(np.float32)
    if k >= size:
        return small[:size, :size]
    im = Image.fromarray(small).resize((size, size), Image.Resampling.BICUBIC)
    return np.asarray(im, dtype=np.float32)


@functools.lru_cache(maxsize=8)
def _grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    """Normalised coordinates in [-0.5, 0.5] (read-only, cached)."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / max(size - 1, 1) - 0.5
    yy.flags.writeable = False
    xx.flags.writeable = False
    return yy, xx


def _noise(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    """Cheap zero-mean, unit-variance float32 noise (triangular: sum of two random bytes)."""
    n = int(np.prod(shape))
    b = np.frombuffer(rng.bytes(2 * n), np.uint8).reshape(2, n)
    out = b[0].astype(np.float32)
    out += b[1]
    out -= 255.0
    out *= 1.0 / 104.5
    return out.reshape(shape)


def _blur_mask(mask: Image.Image, radius: float) -> Image.Image:
    return mask.filter(ImageFilter.GaussianBlur(radius)) if radius > 0.05 else mask


def _to_float(mask: Image.Image) -> np.ndarray:
    return np.asarray(mask, dtype=np.float32) * (1.0 / 255.0)


def _downsample(mask: Image.Image, size: int) -> Image.Image:
    return mask.resize((size, size), Image.Resampling.BOX) if mask.size[0] != size else mask


def _border_point(rng: np.random.Generator, size: float, side: int) -> tuple[float, float]:
    t = rng.uniform(0.0, size)
    lo, hi = -2.0, size + 1.0
    return [(t, lo), (hi, t), (t, hi), (lo, t)][side]


_Point = tuple[float, float]


def _line_across(rng: np.random.Generator, size: float) -> tuple[_Point, _Point]:
    """Two points on different borders; the segment crosses the image."""
    s0 = int(rng.integers(4))
    if rng.random() < 0.7:
        s1 = (s0 + 2) % 4  # opposite side: long straight features
    else:
        s1 = (s0 + int(rng.integers(1, 4))) % 4
    return _border_point(rng, size, s0), _border_point(rng, size, s1)


# ----------------------------------------------------------------------- background
def _background(
    rng: np.random.Generator, size: int, scale: float | None = None
) -> tuple[np.ndarray, tuple[np.ndarray, np.ndarray]]:
    """Return (luminance HxW float32 in ~[0, 255], (rgb gains (3,), chroma HxW)).

    `scale` is pixels per unit of the 227 px reference (default: the image is one crop); a
    large photo keeps the crops' texture scale and covers more of it."""
    area = size / _REF
    s = area if scale is None else scale
    base = rng.uniform(118.0, 212.0)

    # multi-scale texture: sum of upsampled noise octaves
    tex = np.zeros((size, size), np.float32)
    rough = rng.uniform(0.6, 1.5)
    for cell, amp in ((90.0, 0.045), (40.0, 0.035), (16.0, 0.025), (6.0, 0.02), (2.5, 0.018)):
        c = cell * s
        if c < 0.8:
            continue
        tex += (amp * rough) * _octave(rng, size, c)
    tex += rng.uniform(0.015, 0.04) * _noise(rng, (size, size))
    lum = base * (1.0 + tex)

    # aggregate speckles: thresholded fine noise -> small lighter / darker patches
    if rng.random() < 0.85:
        fine = _octave(rng, size, max(1.0, rng.uniform(2.5, 5.0) * s))
        thr = rng.uniform(1.6, 2.3)
        light = np.clip(fine - thr, 0.0, 0.6)
        dark = np.clip(-fine - thr, 0.0, 0.6)
        lum *= 1.0 + rng.uniform(0.05, 0.18) * light / 0.6 - rng.uniform(0.05, 0.2) * dark / 0.6

    # pores: small dark dots (air voids)
    n_pores = int(rng.uniform(10, 140) * area * area + rng.random())
    if n_pores:
        pm = Image.new("L", (size * _SS, size * _SS), 0)
        d = ImageDraw.Draw(pm)
        xs = rng.uniform(0, size * _SS, n_pores)
        ys = rng.uniform(0, size * _SS, n_pores)
        rs = np.maximum(0.5, rng.gamma(2.0, 0.45, n_pores) * s) * _SS
        vs = rng.uniform(90, 255, n_pores).astype(int)
        for x, y, r, v in zip(xs, ys, rs, vs):
            rx, ry = r * rng.uniform(0.7, 1.3), r * rng.uniform(0.7, 1.3)
            d.ellipse((x - rx, y - ry, x + rx, y + ry), fill=int(v))
        pm = _blur_mask(_downsample(pm, size), 0.35 * max(s, 0.5))
        lum *= 1.0 - rng.uniform(0.25, 0.6) * _to_float(pm)

    # soft stains / blotches
    if rng.random() < 0.55:
        low = _octave(rng, size, rng.uniform(30, 80) * s)
        thr = rng.uniform(0.3, 1.2)
        blot = 1.0 / (1.0 + np.exp(-(low - thr) / rng.uniform(0.08, 0.3)))
        lum *= 1.0 - rng.uniform(0.04, 0.18) * blot
    if rng.random() < 0.3:  # efflorescence-like lighter patches
        low = _octave(rng, size, rng.uniform(25, 70) * s)
        blot = 1.0 / (1.0 + np.exp(-(low - 1.0) / 0.2))
        lum *= 1.0 + rng.uniform(0.03, 0.1) * blot

    # illumination: linear gradient + mild vignette
    yy, xx = _grid(size)
    ang = rng.uniform(0, 2 * math.pi)
    grad = math.cos(ang) * xx + math.sin(ang) * yy
    vig = xx * xx + yy * yy
    lum *= 1.0 + rng.uniform(0.0, 0.22) * grad - rng.uniform(0.0, 0.2) * vig

    # colour: grey to beige tint, slowly varying
    warm = rng.uniform(-0.01, 0.07)
    gains = np.array([1.0 + warm, 1.0 + 0.45 * warm, 1.0 - 0.8 * warm], np.float32)
    gains *= 1.0 + rng.uniform(-0.015, 0.015, 3).astype(np.float32)
    gains = gains / gains.mean()
    chroma = _octave(rng, size, 60 * s) * rng.uniform(0.0, 0.012)
    return lum, (gains, chroma)


# --------------------------------------------------------------------------- cracks
class _Crack(NamedTuple):
    """One crack (or branch) to draw: where it starts, its heading and length, its width, and how
    many branchings deep it is."""

    start: np.ndarray
    theta: float
    length: float
    width: float
    depth: int = 0


def _walk(rng, crack: _Crack, step, shape):
    """Persistent random walk along `crack`, with `shape` = (wiggle, persistence, drift);
    returns (N,2) points and per-step main heading."""
    start, theta, length = crack.start, crack.theta, crack.length
    wiggle, persist, drift = shape
    n = max(2, int(length / step))
    dev = np.empty(n, np.float64)
    dv = 0.0
    kicks = rng.normal(0.0, wiggle, n)
    drifts = np.cumsum(rng.normal(0.0, drift, n))
    for i in range(n):
        dv = min(1.0, max(-1.0, persist * dv + kicks[i]))
        dev[i] = dv
    ang = theta + drifts + dev
    # occasional sharp kinks (crack deflecting around aggregate)
    kinks = rng.random(n) < 0.04
    ang = ang + np.cumsum(np.where(kinks, rng.normal(0.0, 0.5, n), 0.0)) * 0.5
    steps = step * rng.uniform(0.6, 1.4, n)
    pts = np.empty((n + 1, 2), np.float64)
    pts[0] = start
    pts[1:, 0] = start[0] + np.cumsum(steps * np.cos(ang))
    pts[1:, 1] = start[1] + np.cumsum(steps * np.sin(ang))
    return pts, ang


def _draw_crack(rng, draw, size, crack: _Crack, s):
    length, width, depth = crack.length, crack.width, crack.depth
    wide = 1.0 + 0.25 * width / max(s, 1e-3)  # wide cracks: longer, straighter steps
    step = max(1.0, 2.6 * s * math.sqrt(wide))
    wiggle = rng.uniform(0.2, 0.42) / wide
    persist = rng.uniform(0.5, 0.8)
    pts, ang = _walk(rng, crack, step, (wiggle, persist, rng.uniform(0.01, 0.04)))
    # jagged: perpendicular jitter
    jit = rng.normal(0.0, rng.uniform(0.15, 0.5) * s, len(pts))
    pts[1:, 0] += -np.sin(ang) * jit[1:]
    pts[1:, 1] += np.cos(ang) * jit[1:]
    n = len(pts)
    # width profile: smooth log-normal modulation, tapered ends
    mod = np.cumsum(rng.normal(0.0, 0.12, n))
    mod = mod - mod.mean()
    w = width * np.exp(np.clip(mod, -1.2, 1.0))
    t = np.arange(n) / max(n - 1, 1)
    taper_end = np.clip((1.0 - t) * rng.uniform(3, 8), 0.25, 1.0)
    if depth > 0 or rng.random() < 0.4:  # branches and interior starts taper at both ends
        w = w * np.clip(t * rng.uniform(3, 8), 0.25, 1.0)
    w = w * taper_end
    margin = 4.0 + float(w.max())
    inside = ((pts > -margin) & (pts < size + margin)).all(axis=1)
    P = pts * _SS
    for i in range(n - 1):
        if not (inside[i] or inside[i + 1]):
            continue
        wi = w[i] * _SS
        iw = max(1, int(round(wi)))
        draw.line((P[i, 0], P[i, 1], P[i + 1, 0], P[i + 1, 1]), fill=255, width=iw)
        if iw >= 3:
            r = wi / 2.0
            draw.ellipse((P[i + 1, 0] - r, P[i + 1, 1] - r, P[i + 1, 0] + r, P[i + 1, 1] + r), fill=255)
    # branches
    if depth < 2:
        p_branch = rng.uniform(0.008, 0.03) / (1 + depth)
        for i in np.nonzero(rng.random(n - 1) < p_branch)[0].tolist():
            if not inside[i]:
                continue
            side = 1.0 if rng.random() < 0.5 else -1.0
            b_theta = ang[min(i, len(ang) - 1)] + side * rng.uniform(0.35, 1.1)
            b_len = length * rng.uniform(0.1, 0.45) / (1 + depth)
            b_width = max(0.35 * s, w[i] * rng.uniform(0.35, 0.75))
            _draw_crack(rng, draw, size, _Crack(pts[i], b_theta, b_len, b_width, depth + 1), s)


def _crack_layer(rng: np.random.Generator, size: int) -> np.ndarray:
    """Float mask in [0, 1] (HxW) of one to three cracks."""
    s = size / _REF
    canvas = Image.new("L", (size * _SS, size * _SS), 0)
    draw = ImageDraw.Draw(canvas)
    n_cracks = int(rng.choice([1, 2, 3], p=[0.68, 0.25, 0.07]))
    for k in range(n_cracks):
        if rng.random() < 0.75:
            for _ in range(8):  # avoid chords that only clip a corner
                a, b = _line_across(rng, size)
                if math.hypot(b[0] - a[0], b[1] - a[1]) >= 0.6 * size:
                    break
            theta = math.atan2(b[1] - a[1], b[0] - a[0])
            start = np.array(a)
            length = math.hypot(b[0] - a[0], b[1] - a[1]) * rng.uniform(0.9, 1.3)
        else:  # starts inside the image
            start = rng.uniform(0.15 * size, 0.85 * size, 2)
            theta = rng.uniform(0, 2 * math.pi)
            length = size * rng.uniform(0.4, 1.0)
        if k == 0:
            width = (
                rng.choice([rng.uniform(0.6, 1.6), rng.uniform(1.6, 3.5), rng.uniform(3.5, 7.0)], p=[0.35, 0.45, 0.2])
                * s
            )
        else:
            width = rng.uniform(0.5, 2.5) * s
        _draw_crack(rng, draw, size, _Crack(start, theta, length, max(width, 0.3)), s)
    m = _downsample(canvas, size)
    m = _blur_mask(m, rng.uniform(0.3, 0.8) * max(s, 0.4))
    return _to_float(m)


# ------------------------------------------------------------------ hard negatives
def _straight_mask(rng, size, width, curve=0.02, soft=0.6):
    s = size / _REF
    canvas = Image.new("L", (size * _SS, size * _SS), 0)
    d = ImageDraw.Draw(canvas)
    a, b = (np.array(p) for p in _line_across(rng, size))
    # slight smooth bow, no jaggedness
    t = np.linspace(0.0, 1.0, 9)[:, None]
    normal = np.array([-(b - a)[1], (b - a)[0]])
    pts = a + t * (b - a) + (np.sin(np.pi * t) * rng.uniform(-curve, curve)) * normal
    d.line([tuple(p) for p in pts * _SS], fill=255, width=max(1, int(round(width * _SS))), joint="curve")
    return _to_float(_blur_mask(_downsample(canvas, size), soft * max(s, 0.4))), a, b


def _hard_negative(rng: np.random.Generator, lum: np.ndarray, size: int, kind: str) -> np.ndarray:
    s = size / _REF
    if kind == "joint":  # saw cut / construction joint: straight, uniform, often with a lit lip
        w = rng.uniform(1.0, 5.0) * s
        m, _, _ = _straight_mask(rng, size, max(w, 0.4), curve=0.01, soft=rng.uniform(0.5, 1.2))
        lum = lum * (1.0 - rng.uniform(0.2, 0.6) * m)
    elif kind == "edge":  # slab edge / shadow: part of the image darker
        yy, xx = _grid(size)
        yy, xx = (yy + 0.5) * (size - 1), (xx + 0.5) * (size - 1)
        ang = rng.uniform(0, 2 * math.pi)
        c = rng.uniform(0.2, 0.8, 2) * size
        dist = (xx - c[0]) * math.cos(ang) + (yy - c[1]) * math.sin(ang)
        soft = rng.uniform(0.6, 6.0) * s
        side = 1.0 / (1.0 + np.exp(-np.clip(dist / max(soft, 0.3), -30, 30)))
        lum = lum * (1.0 - rng.uniform(0.25, 0.65) * side)
        if rng.random() < 0.5:  # bright arris along the edge
            arris = np.exp(-(((dist + 2 * s) / max(1.5 * s, 0.5)) ** 2))
            lum = lum * (1.0 + rng.uniform(0.05, 0.2) * arris)
    elif kind == "stain":  # elongated, soft, dark stain
        canvas = Image.new("L", (size, size), 0)
        d = ImageDraw.Draw(canvas)
        cx, cy = rng.uniform(0.1, 0.9, 2) * size
        L = rng.uniform(0.25, 0.8) * size
        W = rng.uniform(0.04, 0.16) * size
        ang = rng.uniform(0, math.pi)
        t = np.linspace(0, 2 * math.pi, 40, endpoint=False)
        ex, ey = L / 2 * np.cos(t), W / 2 * np.sin(t) * (1 + 0.3 * np.sin(3 * t + rng.uniform(0, 6)))
        px = cx + ex * math.cos(ang) - ey * math.sin(ang)
        py = cy + ex * math.sin(ang) + ey * math.cos(ang)
        d.polygon(list(zip(px.tolist(), py.tolist())), fill=255)
        m = _to_float(_blur_mask(canvas, max(W * rng.uniform(0.15, 0.45), 0.6)))
        m *= 1.0 + 0.25 * _octave(rng, size, 8.0 * s)  # mottled
        lum = lum * (1.0 - rng.uniform(0.15, 0.4) * m)
    elif kind == "scratch":  # straight, smooth, thin, low contrast; light or dark
        canvas = Image.new("L", (size * _SS, size * _SS), 0)
        d = ImageDraw.Draw(canvas)
        ang0 = rng.uniform(0, math.pi)
        for _ in range(int(rng.integers(1, 5))):
            cx, cy = rng.uniform(0.1, 0.9, 2) * size
            L = rng.uniform(0.2, 0.8) * size
            ang = ang0 + rng.normal(0, 0.1)
            dx, dy = L / 2 * math.cos(ang), L / 2 * math.sin(ang)
            lw = max(1, int(round(rng.uniform(0.6, 1.6) * s * _SS)))
            d.line(
                ((cx - dx) * _SS, (cy - dy) * _SS, (cx + dx) * _SS, (cy + dy) * _SS),
                fill=int(rng.uniform(120, 255)),
                width=lw,
            )
        m = _to_float(_blur_mask(_downsample(canvas, size), 0.4 * max(s, 0.4)))
        sign = -1.0 if rng.random() < 0.6 else 1.0
        lum = lum * (1.0 + sign * rng.uniform(0.1, 0.3) * m)
    elif kind == "holes":  # bug holes: larger dark voids
        canvas = Image.new("L", (size * _SS, size * _SS), 0)
        d = ImageDraw.Draw(canvas)
        for _ in range(int(rng.integers(2, 9))):
            x, y = rng.uniform(0, size, 2) * _SS
            r = rng.uniform(2.0, 6.0) * s * _SS
            rx, ry = r * rng.uniform(0.7, 1.3), r * rng.uniform(0.7, 1.3)
            d.ellipse((x - rx, y - ry, x + rx, y + ry), fill=255)
        m = _to_float(_blur_mask(_downsample(canvas, size), 0.6 * max(s, 0.4)))
        lum = lum * (1.0 - rng.uniform(0.3, 0.6) * m)
    else:  # pragma: no cover - internal
        raise ValueError(f"unknown hard-negative kind {kind!r}")
    return lum


_HARD_KINDS = ("joint", "edge", "stain", "scratch", "holes")
_HARD_P = (0.25, 0.2, 0.25, 0.2, 0.1)


# ------------------------------------------------------------------- damage kinds
def _spalling(rng: np.random.Generator, lum: np.ndarray, size: int) -> np.ndarray:
    """A patch where the surface broke off: an irregular pit, rough and darker, its aggregate
    showing, with a shadowed rim on the side away from the light."""
    s = size / _REF
    canvas = Image.new("L", (size * _SS, size * _SS), 0)
    cx, cy = rng.uniform(0.3, 0.7, 2) * size
    t = np.linspace(0, 2 * math.pi, 48, endpoint=False)
    wobble = 0.25 * np.sin(2 * t + rng.uniform(0, 6)) + 0.15 * np.sin(5 * t + rng.uniform(0, 6))
    radius = rng.uniform(0.18, 0.36) * size * (1.0 + wobble + rng.normal(0.0, 0.06, t.size))
    points = np.stack([cx + radius * np.cos(t), cy + radius * np.sin(t)], axis=1) * _SS
    ImageDraw.Draw(canvas).polygon([tuple(p) for p in points.tolist()], fill=255)
    m = _to_float(_blur_mask(_downsample(canvas, size), 0.6 * max(s, 0.4)))
    aggregate = np.clip(_octave(rng, size, max(1.0, 3.0 * s)), -1.5, 1.5)
    floor = rng.uniform(0.55, 0.75) + 0.1 * _octave(rng, size, max(1.0, 10.0 * s)) + 0.14 * aggregate
    shift = max(1, round(rng.uniform(2.0, 5.0) * s))
    shadow = np.clip(np.roll(m, (shift, shift), axis=(0, 1)) - m, 0.0, 1.0)
    return lum * (1.0 - m + m * floor) * (1.0 - rng.uniform(0.3, 0.5) * shadow)


def _stain(rng: np.random.Generator, lum: np.ndarray, size: int) -> np.ndarray:
    """One or two dark, soft stains (the crack dataset's hard negative, made plain)."""
    for _ in range(int(rng.integers(1, 3))):
        lum = _hard_negative(rng, lum, size, "stain")
    blot = 1.0 / (1.0 + np.exp(-(_octave(rng, size, rng.uniform(30, 60) * size / _REF) - 0.3) / 0.15))
    return lum * (1.0 - rng.uniform(0.2, 0.35) * blot)


# The kinds of damage `synthesize_classes` draws, each with the id that seeds its images apart from the
# crack dataset's two classes and the photos.
KINDS = {kind: 16 + k for k, kind in enumerate(SYNTH_CLASSES)}


def _damage(rng: np.random.Generator, lum: np.ndarray, size: int, kind: str) -> np.ndarray:
    if kind == "crack":
        s = size / _REF
        m = _crack_layer(rng, size)
        inner = 1.0 + 0.15 * _octave(rng, size, max(1.0, 3.0 * s))
        return lum * (1.0 - np.clip(rng.uniform(0.4, 0.85) * inner, 0.0, 0.95) * m)
    if kind == "spalling":
        return _spalling(rng, lum, size)
    if kind == "stain":
        return _stain(rng, lum, size)
    if kind == "clean":
        return lum
    return _hard_negative(rng, lum, size, kind)  # holes, joint, scratch


# ------------------------------------------------------------------------- public
def _finish(rng: np.random.Generator, lum: np.ndarray, colour: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
    """Luminance and the background's colour → the RGB image, with sensor noise."""
    gains, chroma = colour
    sensor = _noise(rng, (3, *lum.shape))
    sensor *= 1.2  # per-channel sensor noise, in grey levels
    sensor += 0.5  # rounding
    chans = [lum * (gains[c] + k * chroma) + sensor[c] for c, k in enumerate((1.0, 0.2, -1.0))]
    rgb = np.stack(chans, axis=-1)
    return np.clip(rgb, 0, 255).astype(np.uint8)


def render(rng: np.random.Generator, size: int = 227, cracked: bool = False) -> np.ndarray:
    """Render one synthetic concrete image as a ``size x size x 3`` uint8 array."""
    size = int(size)
    lum, colour = _background(rng, size)
    s = size / _REF
    if cracked:
        if rng.random() < 0.3:  # positives can carry distractors too
            lum = _hard_negative(rng, lum, size, str(rng.choice(["stain", "holes", "scratch"])))
        m = _crack_layer(rng, size)
        depth = rng.uniform(0.3, 0.85)
        inner = 1.0 + 0.15 * _octave(rng, size, max(1.0, 3.0 * s))
        lum = lum * (1.0 - np.clip(depth * inner, 0.0, 0.95) * m)
    else:
        if rng.random() < 0.6:
            k = 1 if rng.random() < 0.75 else 2
            for kind in rng.choice(_HARD_KINDS, size=k, replace=False, p=_HARD_P):
                lum = _hard_negative(rng, lum, size, str(kind))
    return _finish(rng, lum, colour)


def render_kind(rng: np.random.Generator, size: int, kind: str) -> np.ndarray:
    """One image of concrete with damage of `kind` (one of KINDS) on it, ``size x size x 3`` uint8."""
    lum, colour = _background(rng, int(size))
    return _finish(rng, _damage(rng, lum, int(size), kind), colour)


def render_index(seed: int, cls: str, index: int, size: int = 227) -> np.ndarray:
    """Render image ``index`` (1-based) of class ``cls`` (a crack dataset folder, or one of KINDS);
    a pure function of its arguments."""
    if cls in KINDS:
        return render_kind(np.random.default_rng([int(seed), KINDS[cls], int(index)]), size, cls)
    rng = np.random.default_rng([int(seed), CLASS_IDS[cls], int(index)])
    return render(rng, size, cracked=(cls == "Positive"))


def filename(index: int, width: int = 5) -> str:
    """``00001.jpg`` style file name for 1-based ``index``."""
    return f"{index:0{width}d}.jpg"


class _Batch(NamedTuple):
    """What every image of one `synthesize` call shares: folder, size, seed, JPEG quality and the
    width of the numbered file names."""

    root: str
    size: int
    seed: int
    quality: int
    width: int


def _write_one(batch: _Batch, cls: str, index: int) -> bool:
    root, size, seed, quality, width = batch
    path = os.path.join(root, cls, filename(index, width))
    try:
        if os.path.getsize(path) > 0:
            return False
    except OSError:
        pass
    arr = render_index(seed, cls, index, size)
    with atomic.replacing(path) as tmp:  # a hidden name, not *.jpg, until complete
        Image.fromarray(arr).save(tmp, format="JPEG", quality=int(quality))
    return True


def _write_chunk(args: tuple[_Batch, list[tuple[str, int]]]) -> int:
    batch, jobs = args
    return sum(_write_one(batch, cls, i) for cls, i in jobs)


def _check(n: int, size: int, quality: int = 90, workers: int = 1) -> None:
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 2:
        raise ValueError(f"n must be an integer >= 2, got {n!r}")
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or size < 16:
        raise ValueError(f"size must be an integer >= 16, got {size!r}")
    if not 1 <= int(quality) <= 100:
        raise ValueError(f"quality must be in 1..100, got {quality!r}")
    if int(workers) < 1:
        raise ValueError(f"workers must be >= 1, got {workers!r}")


def _write(batch: _Batch, counts: dict[str, int], workers: int) -> dict[str, int]:
    """Every image of `counts` ({class folder: images}) under batch.root; see `synthesize`."""
    for cls in counts:
        os.makedirs(os.path.join(batch.root, cls), exist_ok=True)
    jobs = [(cls, i) for cls in counts for i in range(1, counts[cls] + 1)]
    if workers == 1 or len(jobs) < 64:
        _write_chunk((batch, jobs))
    else:
        import multiprocessing as mp

        nchunks = min(len(jobs), workers * 8)
        chunks = [(batch, jobs[k::nchunks]) for k in range(nchunks)]
        with mp.get_context("spawn").Pool(workers) as pool:
            for _ in pool.imap_unordered(_write_chunk, chunks):
                pass
    return counts


def synthesize(root, n: int, size: int = 227, seed: int = 0, quality: int = 90, workers: int = 1) -> dict[str, int]:
    """Write n images (n//2 Negative, n - n//2 Positive) under root/Positive and
    root/Negative as JPEG, return {"Positive": k, "Negative": m}.

    Files are named ``00001.jpg`` ... per class.  Existing non-empty files are
    kept (re-running over a complete folder is a no-op); new files are written
    to a temporary name and renamed into place.  ``workers > 1`` renders in
    that many processes; the output does not depend on ``workers``.
    """
    _check(n, size, quality, workers)
    counts = {"Positive": int(n) - int(n) // 2, "Negative": int(n) // 2}
    width = max(5, len(str(max(counts.values()))))
    batch = _Batch(os.fspath(Path(root)), int(size), int(seed), int(quality), width)
    _write(batch, {cls: counts[cls] for cls in FOLDERS}, int(workers))
    return counts


def synthesize_classes(
    root, classes: Sequence[str], n: int, size: int = 227, seed: int = 0, workers: int = 1
) -> dict[str, int]:
    """Write n images of concrete with the damage `classes` (KINDS' names, "clean" for none), one
    folder per class named after it, as `synthesize` does: n // len(classes) per class, the first
    classes one more until n. Returns {class: images}."""
    _check(n, size, workers=workers)
    unknown = [c for c in classes if c not in KINDS]
    if unknown or len(set(classes)) < 2 or len(set(classes)) != len(classes):
        raise ValueError(
            f"classes must be two or more different kinds of {', '.join(KINDS)}, got {','.join(classes) or 'none'}"
        )
    if n < len(classes):
        raise ValueError(f"n must be at least one image per class ({len(classes)}), got {n}")
    counts = {c: int(n) // len(classes) + (k < int(n) % len(classes)) for k, c in enumerate(classes)}
    width = max(5, len(str(max(counts.values()))))
    return _write(_Batch(os.fspath(Path(root)), int(size), int(seed), 90, width), counts, int(workers))


# ------------------------------------------------------------------- large photos
PHOTO_CLASS_ID = 2  # seeds photos apart from the crops of both classes
MASK_SUFFIX = ".mask.png"  # the true crack mask beside each photo; not a photo itself
MASK_LEVEL = 0.25  # crack-layer coverage from which a pixel counts as crack in the mask


def render_photo(seed: int, index: int, width: int, height: int, scale: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """A large photo of concrete with cracks drawn across it, and its crack mask.

    The crops' generator at `scale` pixels per unit of the 227 px reference: texture, pores,
    crack widths and contrast are those of the training crops, so a 227·scale px patch of the
    photo looks like one crop. Zero to four cracks, most crossing the whole photo, with branches.
    Returns (RGB uint8 HxWx3, bool HxW mask); a pure function of its arguments."""
    rng = np.random.default_rng([int(seed), PHOTO_CLASS_ID, int(index)])
    size = max(int(width), int(height))
    lum, (gains, chroma) = _background(rng, size, scale)
    canvas = Image.new("L", (size * _SS, size * _SS), 0)
    draw = ImageDraw.Draw(canvas)
    for _ in range(int(rng.choice([0, 1, 2, 3, 4], p=[0.1, 0.35, 0.3, 0.15, 0.1]))):
        for _ in range(8):  # a crack that crosses the photo, not one clipping a corner
            a, b = _line_across(rng, size)
            if math.hypot(b[0] - a[0], b[1] - a[1]) >= 0.5 * size:
                break
        length = math.hypot(b[0] - a[0], b[1] - a[1]) * rng.uniform(0.9, 1.2)
        crack_width = (
            rng.choice([rng.uniform(0.8, 1.6), rng.uniform(1.6, 3.5), rng.uniform(3.5, 7.0)], p=[0.3, 0.5, 0.2]) * scale
        )
        theta = math.atan2(b[1] - a[1], b[0] - a[0])
        _draw_crack(rng, draw, size, _Crack(np.array(a), theta, length, max(crack_width, 0.3)), scale)
    m = _to_float(_blur_mask(_downsample(canvas, size), rng.uniform(0.3, 0.8) * max(scale, 0.4)))
    depth = rng.uniform(0.35, 0.85)
    inner = 1.0 + 0.15 * _octave(rng, size, max(1.0, 3.0 * scale))
    lum = lum * (1.0 - np.clip(depth * inner, 0.0, 0.95) * m)
    sensor = _noise(rng, (3, size, size))
    sensor *= 1.2
    sensor += 0.5
    rgb = np.stack([lum * (gains[c] + k * chroma) + sensor[c] for c, k in enumerate((1.0, 0.2, -1.0))], axis=-1)
    top, left = (size - int(height)) // 2, (size - int(width)) // 2
    box = (slice(top, top + int(height)), slice(left, left + int(width)))
    return np.clip(rgb[box], 0, 255).astype(np.uint8), m[box] >= MASK_LEVEL


def synthesize_photos(
    root, n: int, size: tuple[int, int], scale: float = 1.0, seed: int = 0, quality: int = 90
) -> list[dict]:
    """Write n photos `photo-0001.jpg`... and their masks `photo-0001.mask.png` (255 = crack) to
    root, and `photos.csv` (photo, mask, width, height, crack_fraction); returns its rows. `size` is
    (width, height) in pixels.
    Existing photos are kept, as `synthesize` does."""
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise ValueError(f"n must be an integer >= 1, got {n!r}")
    width, height = size
    if min(width, height) < 16 or max(width, height) > 8192:
        raise ValueError(f"size must be between 16 and 8192 px per side, got {width}x{height}")
    if not 0.05 <= scale <= 8:
        raise ValueError(f"scale must be in 0.05..8 (pixels per unit of the 227 px crops), got {scale!r}")
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    rows = []
    for index in range(1, int(n) + 1):
        name = f"photo-{index:04d}"
        photo, mask_path = root / f"{name}.jpg", root / f"{name}{MASK_SUFFIX}"
        if photo.is_file() and photo.stat().st_size and mask_path.is_file():
            with Image.open(mask_path) as im:
                mask = np.asarray(im) > 127
        else:
            rgb, mask = render_photo(seed, index, width, height, scale)
            for path, image, options in (
                (mask_path, Image.fromarray(mask.astype(np.uint8) * 255), {"format": "PNG"}),
                (photo, Image.fromarray(rgb), {"format": "JPEG", "quality": int(quality)}),
            ):
                buf = io.BytesIO()
                image.save(buf, **options)
                atomic.write_bytes(path, buf.getvalue())  # the photo last: its presence means both are whole
        rows.append(
            {
                "photo": photo.name,
                "mask": mask_path.name,
                "width": mask.shape[1],
                "height": mask.shape[0],
                "crack_fraction": round(float(mask.mean()), 6),
            }
        )
    atomic.write_csv(root / "photos.csv", list(rows[0]), [list(r.values()) for r in rows])
    return rows
