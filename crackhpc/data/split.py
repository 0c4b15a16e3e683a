"""Deterministic stratified train/valid/test split, stored as a manifest CSV.

The manifest (path, label, split) travels into every run folder, so each result says
exactly which images it was trained, validated and tested on.
"""
from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Sequence

import numpy as np

from .. import atomic
from ..errors import DataError
from .layout import SPLITS, Item, list_items

COLUMNS = ("path", "label", "split")


def _counts(n: int, fractions: Sequence[float]) -> tuple[int, int, int]:
    n_train = int(round(n * fractions[0]))
    n_test = int(round(n * fractions[2]))
    return n_train, n - n_train - n_test, n_test


def split_items(items: Sequence[Item], fractions: Sequence[float], seed: int) -> list[Item]:
    """Assign splits per class from `seed`; items that already have one (course layout) keep it."""
    if all(item.split for item in items):
        return list(items)
    out: list[Item] = []
    rng = np.random.default_rng(seed)
    for label in sorted({item.label for item in items}):
        members = sorted((i for i in items if i.label == label), key=lambda i: i.path)
        order = rng.permutation(len(members))
        n_train, n_valid, _ = _counts(len(members), fractions)
        for rank, idx in enumerate(order):
            split = "train" if rank < n_train else "valid" if rank < n_train + n_valid else "test"
            out.append(Item(members[idx].path, label, split))
    for split in ("train", "test"):
        if not any(i.split == split for i in out):
            raise DataError(f"{len(items)} images are too few for split {list(fractions)}: the {split} set is empty")
    return sorted(out, key=lambda i: (SPLITS.index(i.split), i.label, i.path))


def make_manifest(root: str | Path, fractions: Sequence[float], seed: int) -> list[Item]:
    _, items = list_items(root)
    return split_items(items, fractions, seed)


def write_manifest(path: str | Path, items: Sequence[Item]) -> Path:
    return atomic.write_csv(path, COLUMNS, ((i.path, i.label, i.split) for i in items))


def read_manifest(path: str | Path) -> list[Item]:
    import csv

    with open(path, newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        if tuple(reader.fieldnames or ()) != COLUMNS:
            raise DataError(f"{path}: not a split manifest (columns must be {', '.join(COLUMNS)})")
        return [Item(row["path"], int(row["label"]), row["split"]) for row in reader]


def manifest_hash(items: Sequence[Item]) -> str:
    h = hashlib.sha1()
    for i in items:
        h.update(f"{i.path},{i.label},{i.split}\n".encode())
    return h.hexdigest()[:16]


def counts(items: Sequence[Item]) -> dict[str, dict[str, int]]:
    table = {s: {"negative": 0, "positive": 0} for s in SPLITS}
    for i in items:
        table[i.split]["positive" if i.label else "negative"] += 1
    return table
