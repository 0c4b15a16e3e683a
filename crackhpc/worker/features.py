"""Backbone features computed once per (model, weights, size, manifest) and shared by every run.

A frozen backbone without augmentation gives the same features every epoch, so the naive
loop's per-epoch forward pass is wasted work. The first run that needs them computes them in
eval mode under a file lock; concurrent array tasks wait on the lock and then read the
finished file, which is renamed into place only when complete. No framework is imported here:
each worker brings its own extraction (torch_models.extract, the Keras worker's predict).
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from filelock import FileLock

from .. import atomic


@dataclass(frozen=True)
class FeatureKey:
    """What makes two runs' backbone features the same, besides their split manifest."""

    model: str
    weights_id: str
    input_size: int
    precision: str
    preprocess: dict[str, Any] = field(default_factory=dict)  # config.yaml's record (models.preprocessing)

    def name(self, manifest: str) -> str:
        blob = f"{self.model}|{self.weights_id}|{self.input_size}|{manifest}|{self.precision}"
        if self.preprocess:  # a config.yaml written before crackhpc recorded it has none
            blob += "|" + json.dumps(self.preprocess, sort_keys=True)
        return f"features-{re.sub(r'[^A-Za-z0-9_.-]', '_', self.model)}-{hashlib.sha1(blob.encode()).hexdigest()[:16]}"


def cached_features(cache_dir: str | Path, key: str, compute: Callable[[], np.ndarray]) -> tuple[np.ndarray, bool]:
    """(features, computed_here): loads the cache, or calls `compute` and stores its result.
    Framework-neutral: the torch and Keras workers pass their own extraction. A damaged file
    (a disk that filled, a copy cut short) is computed again: it is derived data."""
    cache_dir = Path(cache_dir)
    cache_dir.mkdir(parents=True, exist_ok=True)
    path = cache_dir / f"{key}.npy"
    with FileLock(str(cache_dir / f"{key}.lock")):
        atomic.remove_stale(cache_dir)
        if path.exists():
            try:
                return np.load(path), False
            except (OSError, ValueError, EOFError):
                path.unlink()
        feats = compute()
        with atomic.replacing(path) as tmp, open(tmp, "xb") as fh:
            np.save(fh, feats)
        return feats, True
