"""Recognise the dataset layouts crackhpc accepts and list their images.

- original (the published archive): `Positive/` and `Negative/` folders of 227x227 JPEGs;
- course: `train|valid|test/{positive,negative}/`, already split.

Labels: 0 = negative (no crack), 1 = positive (crack).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..errors import DataError

CLASSES = ("negative", "positive")
SPLITS = ("train", "valid", "test")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")


@dataclass(frozen=True)
class Item:
    path: str          # relative to the dataset root, with forward slashes
    label: int
    split: str | None  # set by the course layout, None for the original


def _subdirs(folder: Path) -> dict[str, Path]:
    return {p.name.lower(): p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")}


def _images(folder: Path, root: Path) -> list[str]:
    return sorted(p.relative_to(root).as_posix() for p in folder.iterdir()
                  if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def detect(root: str | Path) -> str:
    """'original' or 'course'; a DataError naming what was found otherwise."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root}: dataset folder not found (make one with `crackhpc data synth {root}` "
                        f"or see `crackhpc data fetch --help`)")
    subs = _subdirs(root)
    if set(CLASSES) <= set(subs):
        return "original"
    if set(SPLITS) <= set(subs) and all(set(CLASSES) <= set(_subdirs(subs[s])) for s in SPLITS):
        return "course"
    found = ", ".join(sorted(subs)) or "no folders"
    raise DataError(f"{root}: unknown dataset layout (found: {found}); expected Positive/ and Negative/ "
                    f"(original) or train|valid|test/{{positive,negative}}/ (course)")


def list_items(root: str | Path) -> tuple[str, list[Item]]:
    """The layout name and every image, in a deterministic order."""
    root = Path(root)
    layout = detect(root)
    subs = _subdirs(root)
    items: list[Item] = []
    if layout == "original":
        for label, cls in enumerate(CLASSES):
            items += [Item(p, label, None) for p in _images(subs[cls], root)]
    else:
        for split in SPLITS:
            classes = _subdirs(subs[split])
            for label, cls in enumerate(CLASSES):
                items += [Item(p, label, split) for p in _images(classes[cls], root)]
    if not items:
        raise DataError(f"{root}: {layout} layout but no images (.jpg, .jpeg, .png) in it")
    return layout, items
