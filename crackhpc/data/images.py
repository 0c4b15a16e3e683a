"""Decoding images, and the decoded uint8 cache that spares every later epoch and model the JPEG work.

The cache is one memory-mapped `.npy` array (N, size, size, 3) plus a mask of the images that
decoded; it is keyed by the split manifest and the size, built once under a lock by parallel
processes, and renamed into place only when complete.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
from filelock import FileLock
from PIL import Image, UnidentifiedImageError

from .. import atomic
from .layout import Item
from .split import manifest_hash

DECODE_ERRORS = (OSError, UnidentifiedImageError, ValueError, Image.DecompressionBombError)


def load_rgb(path: str | Path, size: int) -> np.ndarray:
    """Decode one image to RGB uint8 (size, size, 3); raises one of DECODE_ERRORS if it is broken."""
    with Image.open(path) as src:
        src.draft("RGB", (size, size))  # JPEG: let libjpeg downscale by 2/4/8 where it can
        img = src.convert("RGB")
        if img.size != (size, size):
            img = img.resize((size, size), Image.Resampling.BILINEAR)
        return np.asarray(img, dtype=np.uint8)


def _decode_chunk(args) -> list[int]:
    cache_path, root, paths, start, size = args
    array = np.load(cache_path, mmap_mode="r+")
    bad = []
    for offset, rel in enumerate(paths):
        try:
            array[start + offset] = load_rgb(os.path.join(root, rel), size)
        except DECODE_ERRORS:
            bad.append(start + offset)
    array.flush()
    return bad


class ImageCache:
    """Decoded images of one manifest at one size: `images[i]` is item i, `ok[i]` says it decoded."""

    def __init__(self, images: np.ndarray, ok: np.ndarray):
        self.images, self.ok = images, ok

    @property
    def n_corrupt(self) -> int:
        return int((~self.ok).sum())

    @classmethod
    def build(
        cls,
        items: Sequence[Item],
        root: str | Path,
        size: int,
        cache_dir: str | Path,
        workers: int = 1,
        chunk: int = 256,
    ) -> ImageCache:
        cache_dir = Path(cache_dir)
        cache_dir.mkdir(parents=True, exist_ok=True)
        key = f"images-{manifest_hash(items)}-{size}px"
        final, mask = cache_dir / f"{key}.npy", cache_dir / f"{key}.ok.npy"
        with FileLock(str(cache_dir / f"{key}.lock")):
            atomic.remove_stale(cache_dir)  # a killed build's half array (GBs at the study's size)
            try:
                return cls(np.load(final, mmap_mode="r"), np.load(mask))
            except (OSError, ValueError, EOFError):
                pass  # not built yet, or damaged: derived data, built again
            mask.unlink(missing_ok=True)
            with atomic.replacing(final) as tmp:
                np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=(len(items), size, size, 3)).flush()
                paths = [i.path for i in items]
                jobs = [(str(tmp), str(root), paths[s : s + chunk], s, size) for s in range(0, len(paths), chunk)]
                if workers > 1 and len(jobs) > 1:
                    with ProcessPoolExecutor(workers) as pool:
                        bad = [b for part in pool.map(_decode_chunk, jobs) for b in part]
                else:
                    bad = [b for job in jobs for b in _decode_chunk(job)]
            ok = np.ones(len(items), dtype=bool)
            ok[bad] = False
            with atomic.replacing(mask) as tmp, open(tmp, "xb") as fh:
                np.save(fh, ok)  # the mask last: its presence means the cache is whole
            return cls(np.load(final, mmap_mode="r"), np.load(mask))
