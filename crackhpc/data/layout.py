"""Recognise the dataset layouts crackhpc accepts and list their images.

- original (the published archive): `Positive/` and `Negative/` folders of 227x227 JPEGs;
- course: `train|valid|test/{positive,negative}/`, already split.

Labels: 0 = negative (no crack), 1 = positive (crack).

Image names that are symlinks to nothing (dangling, or looping back on themselves) are skipped and
listed, never read: a dataset linked from a shared area loses files when that area moves.
"""

from __future__ import annotations

import errno
import os
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import DataError

CLASSES = ("negative", "positive")
SPLITS = ("train", "valid", "test")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")


@dataclass(frozen=True)
class Item:
    path: str  # relative to the dataset root, with forward slashes
    label: int
    split: str | None  # set by the course layout, None for the original


def _subdirs(folder: Path) -> dict[str, Path]:
    return {p.name.lower(): p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")}


@dataclass
class Scan:
    """What a dataset folder holds: its images, the class folders without any, the broken links."""

    layout: str
    items: list[Item] = field(default_factory=list)
    empty: list[str] = field(default_factory=list)  # class folders, relative to the root
    broken_links: list[tuple[str, str]] = field(default_factory=list)  # (path, why) relative to the root


def link_problem(path: Path) -> str | None:
    """Why the symlink `path` cannot be read as an image, or None when it leads to a file."""
    try:
        os.stat(path)
    except FileNotFoundError:
        return f"dangling symlink (to {os.readlink(path)}, which does not exist)"
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            return "symlink loop"
        return f"unreadable symlink ({exc.strerror})"
    return None if path.is_file() else f"symlink to a non-file ({os.readlink(path)})"


def _images(folder: Path, root: Path, scan: Scan) -> list[str]:
    found = []
    with os.scandir(folder) as entries:  # the folder's own file types: no stat per image unless a link
        for entry in entries:
            if os.path.splitext(entry.name)[1].lower() not in IMAGE_SUFFIXES:
                continue
            rel = (folder / entry.name).relative_to(root).as_posix()
            why = link_problem(Path(entry.path)) if entry.is_symlink() else None
            if why:
                scan.broken_links.append((rel, why))
            elif entry.is_file():
                found.append(rel)
    if not found:
        scan.empty.append(folder.relative_to(root).as_posix())
    return sorted(found)


def detect(root: str | Path) -> str:
    """'original' or 'course'; a DataError naming what was found otherwise."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(
            f"{root}: dataset folder not found (make one with `crackhpc data synth {root}` "
            f"or see `crackhpc data fetch --help`)"
        )
    subs = _subdirs(root)
    if set(CLASSES) <= set(subs):
        return "original"
    if set(SPLITS) <= set(subs) and all(set(CLASSES) <= set(_subdirs(subs[s])) for s in SPLITS):
        return "course"
    found = ", ".join(sorted(subs)) or "no folders"
    raise DataError(
        f"{root}: unknown dataset layout (found: {found}); expected Positive/ and Negative/ "
        f"(original) or train|valid|test/{{positive,negative}}/ (course)"
    )


def scan(root: str | Path) -> Scan:
    """Every image in a deterministic order, and what is wrong with the folder; raises only when
    the layout is unknown."""
    root = Path(root)
    out = Scan(detect(root))
    subs = _subdirs(root)
    if out.layout == "original":
        for label, cls in enumerate(CLASSES):
            out.items += [Item(p, label, None) for p in _images(subs[cls], root, out)]
    else:
        for split in SPLITS:
            classes = _subdirs(subs[split])
            for label, cls in enumerate(CLASSES):
                out.items += [Item(p, label, split) for p in _images(classes[cls], root, out)]
    out.broken_links.sort()
    return out


def list_items(root: str | Path) -> tuple[str, list[Item]]:
    """The layout name and every image, in a deterministic order. A class folder without images
    is an error: a classifier trained on one class scores 1.0 on a test set of that class."""
    root = Path(root)
    found = scan(root)
    if not found.items:
        raise DataError(f"{root}: {found.layout} layout but no images (.jpg, .jpeg, .png) in it")
    if found.empty:
        raise DataError(
            f"{root / found.empty[0]}: no images (.jpg, .jpeg, .png) in this class folder"
            + (f" (nor in {', '.join(found.empty[1:])})" if found.empty[1:] else "")
            + "; every class needs images: add them, or point data.root at the whole dataset "
            "(`crackhpc data verify` lists what it found)"
        )
    return found.layout, found.items
