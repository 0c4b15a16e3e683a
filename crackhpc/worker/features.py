"""Backbone features computed once per (model, weights, size, manifest) and shared by every run.

A frozen backbone without augmentation gives the same features every epoch, so the naive
loop's per-epoch forward pass is wasted work. The first run that needs them computes them in
eval mode under a file lock; concurrent array tasks wait on the lock and then read the
finished file, which is renamed into place only when complete.
"""
from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from filelock import FileLock
from torch import nn
from torch.fx.experimental.optimization import fuse


def cache_key(model: str, weights_id: str, input_size: int, manifest: str, precision: str) -> str:
    blob = f"{model}|{weights_id}|{input_size}|{manifest}|{precision}"
    return f"features-{model}-{hashlib.sha1(blob.encode()).hexdigest()[:16]}"


@torch.no_grad()
def extract(backbone: nn.Module, images: np.ndarray, device: torch.device, batch: int = 64,
            autocast_dtype: torch.dtype | None = None) -> np.ndarray:
    # In eval mode BatchNorm is a fixed affine map, so it folds into the convolution before it:
    # the same features with one pass less over every activation. `inplace` spares a copy of the
    # whole network (VGG16: 0.5 GB); the fused convolutions are new modules all the same.
    backbone = fuse(backbone.eval(), inplace=True).to(device)
    if device.type == "cpu":
        backbone = backbone.to(memory_format=torch.channels_last)
    chunks = []
    for start in range(0, len(images), batch):
        # a writable copy: torch warns on wrapping the image cache's read-only memory map
        x = torch.from_numpy(np.array(images[start:start + batch])).to(device, non_blocking=True)
        with torch.autocast(device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
            chunks.append(backbone(x).float().cpu())
    return torch.cat(chunks).numpy() if chunks else np.zeros((0, 0), np.float32)


def cached_features(cache_dir: str | Path, key: str, compute: Callable[[], np.ndarray]) -> tuple[np.ndarray, bool]:
    """(features, computed_here): loads the cache, or calls `compute` and stores its result.
    Framework-neutral: the torch and Keras workers pass their own extraction."""
    cache_dir = Path(cache_dir)
    cache_dir.mkdir(parents=True, exist_ok=True)
    path = cache_dir / f"{key}.npy"
    with FileLock(str(cache_dir / f"{key}.lock")):
        if path.exists():
            return np.load(path), False
        feats = compute()
        tmp = cache_dir / f".{key}.{os.getpid()}.npy"
        np.save(tmp, feats)
        os.replace(tmp, path)
        return feats, True
