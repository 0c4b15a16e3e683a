"""Deterministic stratified train/valid/test split, stored as a manifest CSV.

The manifest (path, label, split) is stored once per sweep and named by every run's config.yaml,
so each result says exactly which images it was trained, validated and tested on; the labels'
class names go into the run's config.yaml (`data.classes`).
"""

from __future__ import annotations

import csv
import hashlib
import io
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from .. import atomic
from ..errors import DataError
from .layout import CLASSES, SPLITS, Item, checked_scan

COLUMNS = ("path", "label", "split")
# What to do about a damaged manifest: the launcher writes the sweep's manifest again (crackhpc.record)
# for the runs it submits.
FIX_SPLIT = (
    "delete it and run `crackhpc sweep <sweep file> --retry-failed`, which writes it again for each run it resubmits "
    "(a completed run is resubmitted once its result.json is deleted)"
)


def _counts(n: int, fractions: Sequence[float]) -> tuple[int, int, int]:
    n_train = int(round(n * fractions[0]))
    n_test = int(round(n * fractions[2]))
    return n_train, n - n_train - n_test, n_test


def split_items(
    items: Sequence[Item], fractions: Sequence[float], seed: int, classes: Sequence[str] = CLASSES
) -> list[Item]:
    """Assign splits per class from `seed`; items that already have one (course layout) keep it."""
    missing = [c for label, c in enumerate(classes) if not any(i.label == label for i in items)]
    if missing:
        which = "both classes" if len(classes) == 2 else "every class"
        raise DataError(
            f"{len(items)} images, none of them {' or '.join(missing)}: a classifier needs "
            f"images of {which} ({', '.join(classes)})"
        )
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
    return split_dataset(root, fractions, seed)[0]


def split_dataset(root: str | Path, fractions: Sequence[float], seed: int) -> tuple[list[Item], tuple[str, ...]]:
    """(the manifest, the class names in label order) of the dataset at `root`."""
    found = checked_scan(root)
    return split_items(found.items, fractions, seed, found.classes), found.classes


def write_manifest(path: str | Path, items: Sequence[Item]) -> Path:
    return atomic.write_text(path, manifest_text(items))


def manifest_text(items: Sequence[Item]) -> str:
    """The manifest's CSV, as write_manifest writes it."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(COLUMNS)
    writer.writerows((i.path, i.label, i.split) for i in items)
    return out.getvalue()


def read_manifest(path: str | Path) -> list[Item]:
    """The manifest at `path`; a DataError naming the file and the first bad line if it is not one."""
    return parse_manifest(Path(path).read_bytes(), path)


def parse_manifest(data: bytes, path: str | Path) -> list[Item]:
    """The manifest in `data`, the bytes of the file `path` (named in errors)."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise DataError(f"{path}: not a split manifest (binary or not UTF-8 text); {FIX_SPLIT}") from None
    reader = csv.reader(io.StringIO(text, newline=""))
    items = []
    try:
        header = tuple(next(reader, ()))
        if header != COLUMNS:
            raise DataError(f"{path}: not a split manifest (columns must be {', '.join(COLUMNS)}); {FIX_SPLIT}")
        for row in reader:
            if len(row) != 3 or not (row[1].isascii() and row[1].isdigit()) or row[2] not in SPLITS or not row[0]:
                raise DataError(
                    f"{path}: line {reader.line_num}: not `path,label,split` with label a class number (0, 1, ...) and "
                    f"split {' or '.join(SPLITS)} (got {','.join(row)[:80]!r}); {FIX_SPLIT}"
                )
            items.append(Item(row[0], int(row[1]), row[2]))
    except csv.Error as exc:
        raise DataError(f"{path}: line {reader.line_num}: not CSV ({exc}); {FIX_SPLIT}") from None
    return items


def manifest_hash(items: Sequence[Item]) -> str:
    h = hashlib.sha1()
    for i in items:
        h.update(f"{i.path},{i.label},{i.split}\n".encode())
    return h.hexdigest()[:16]


def counts(items: Sequence[Item], classes: Sequence[str] = CLASSES) -> dict[str, dict[str, int]]:
    """Images per split and class."""
    table = {s: dict.fromkeys(classes, 0) for s in SPLITS}
    for i in items:
        table[str(i.split)][classes[i.label]] += 1
    return table
