"""Photos in: the command line's files, folders and lists; decoding with the checks a batch job
needs; the patch grid of a large photo."""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from ..data.layout import link_problem
from ..data.synth import MASK_SUFFIX

PHOTO_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
LIST_SUFFIXES = (".txt", ".lst")
DEFAULT_MAX_MEGAPIXELS = 64.0  # a 50 MP camera's frame; decoded, 64 MP take 190 MB


class PhotoError(Exception):
    """A photo that cannot be used; the message is its reason in errors.csv."""


def _usable(path: Path, errors: list[tuple[str, str]]) -> bool:
    """A symlink that leads nowhere (dangling, a loop) goes to errors.csv, as `data verify` lists it."""
    why = link_problem(path) if path.is_symlink() else None
    if why:
        errors.append((str(path), why))
    return why is None


def _photos_in(folder: Path, errors: list[tuple[str, str]]) -> list[Path]:
    """Photos under a folder, recursively, in a stable order; hidden files and crack masks left out."""
    found = []
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        found += [
            Path(dirpath) / f
            for f in sorted(filenames)
            if f.lower().endswith(PHOTO_SUFFIXES)
            and not f.startswith(".")
            and not f.endswith(MASK_SUFFIX)
            and _usable(Path(dirpath) / f, errors)
        ]
    return found


def expand(args: list[str]) -> tuple[list[Path], list[tuple[str, str]]]:
    """(photos, errors): files as given, folders searched recursively, .txt/.lst files read as one
    path per line (relative to the list's folder unless absolute; # comments). Each photo once."""
    photos: list[Path] = []
    errors: list[tuple[str, str]] = []
    for arg in args:
        path = Path(arg)
        if not _usable(path, errors):
            continue
        if path.is_dir():
            photos += _photos_in(path, errors)
        elif path.is_file() and path.suffix.lower() in LIST_SUFFIXES:
            for number, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
                line = line.strip()
                if not line or line.startswith("#"):
                    continue
                listed = Path(line) if Path(line).is_absolute() else path.parent / line
                if not _usable(listed, errors):
                    continue
                if listed.is_file():
                    photos.append(listed)
                else:
                    errors.append((line, f"listed in {path} line {number}: no such file"))
        elif path.exists():
            photos.append(path)
        else:
            errors.append((arg, "no such file or folder"))
    unique = list(dict.fromkeys(p.resolve() for p in photos))
    return unique, errors


def open_photo(
    path: str | Path, max_megapixels: float = DEFAULT_MAX_MEGAPIXELS, tile: int = 227, input_size: int = 227
) -> Image.Image:
    """The photo upright (EXIF orientation applied) in RGB; raises PhotoError with the reason.

    A photo no larger than a tile is classified whole at `input_size`, so JPEG decoding may
    downscale it, as the training image cache does; larger photos are decoded at full resolution."""
    path = Path(path)
    try:
        if path.stat().st_size == 0:
            raise PhotoError("empty file (0 bytes)")
        with warnings.catch_warnings():  # Pillow's bomb warning: the limit below is the one that counts
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(path)
        with img:
            width, height = img.size
            if width * height > max_megapixels * 1e6:
                raise PhotoError(
                    f"{width}x{height} px is {width * height / 1e6:.0f} megapixels, over the limit of "
                    f"{max_megapixels:g} (--max-megapixels; decoded it takes {width * height * 3 / 2**30:.1f} GiB)"
                )
            if width <= tile and height <= tile:
                img.draft("RGB", (input_size, input_size))
            img.load()  # a truncated file fails here, not later in a worker
            rgb = ImageOps.exif_transpose(img).convert("RGB")
    except PhotoError:
        raise
    except UnidentifiedImageError:
        raise PhotoError("not an image Pillow can read (unknown format)") from None
    except Image.DecompressionBombError as exc:
        raise PhotoError(f"too large: {exc}") from None
    except (OSError, ValueError, SyntaxError) as exc:
        raise PhotoError(f"unreadable: {exc}") from None
    return rgb


def starts(length: int, tile: int, stride: int) -> list[int]:
    """Patch offsets along one side: every `stride` px, the last patch flush with the edge so the
    whole side is covered; one patch where the side is no longer than a tile."""
    if length <= tile:
        return [0]
    out = list(range(0, length - tile + 1, stride))
    if out[-1] + tile < length:
        out.append(length - tile)
    return out


@dataclass(frozen=True)
class Box:
    x0: int
    y0: int
    x1: int
    y1: int


def grid(width: int, height: int, tile: int, stride: int) -> list[Box]:
    """The patches of a photo, row by row; a photo no larger than a tile is one patch, itself."""
    return [
        Box(x, y, min(x + tile, width), min(y + tile, height))
        for y in starts(height, tile, stride)
        for x in starts(width, tile, stride)
    ]


def patches(photo: Image.Image, boxes: list[Box], size: int) -> np.ndarray:
    """uint8 (N, size, size, 3): each box resized to the model's input as the training images were."""
    out = np.empty((len(boxes), size, size, 3), np.uint8)
    for k, b in enumerate(boxes):
        crop = photo if (b.x0, b.y0, b.x1, b.y1) == (0, 0, *photo.size) else photo.crop((b.x0, b.y0, b.x1, b.y1))
        if crop.size != (size, size):
            crop = crop.resize((size, size), Image.Resampling.BILINEAR)
        out[k] = np.asarray(crop, dtype=np.uint8)
    return out
