"""JPEG decode + resize throughput: the naive loader's work on one core vs crackhpc's image cache."""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from torchvision.datasets.folder import default_loader

from crackhpc.data.images import ImageCache
from crackhpc.data.layout import Item

from .naive import resize


def throughput(root: Path, items: Sequence[Item], size: int, workers: int, scratch: Path) -> dict:
    """Images per second of a plain PIL loop and of ImageCache.build (fresh cache) over the same files."""
    to_size = resize(size)
    t0 = time.perf_counter()
    for item in items:
        to_size(default_loader(os.path.join(root, item.path)))
    pil_s = time.perf_counter() - t0
    scratch.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=scratch) as cache_dir:
        t0 = time.perf_counter()
        ImageCache.build(items, root, size, cache_dir, workers)
        cache_s = time.perf_counter() - t0
    return {"decode_pil_img_s": len(items) / pil_s, "decode_cache_img_s": len(items) / cache_s}
