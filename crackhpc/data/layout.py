"""Recognise the dataset layouts crackhpc accepts and list their images.

- original: one folder per class, `root/<class>/` (the published archive: `Positive/` and `Negative/`
  of 227x227 JPEGs);
- course: `train|valid|test/<class>/`, already split, the same class folders in each split.

Any number >= 2 of classes. A class is its folder's name in lower case; labels number the classes in
sorted order, so the crack dataset's are 0 = negative (no crack), 1 = positive (crack).

Image names that are symlinks to nothing (dangling, or looping back on themselves) are skipped and
listed, never read: a dataset linked from a shared area loses files when that area moves.
"""

from __future__ import annotations

import errno
import os
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import DataError

CLASSES = ("negative", "positive")  # the crack dataset's classes; "positive" is the crack
SPLITS = ("train", "valid", "test")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")


@dataclass(frozen=True)
class Item:
    path: str  # relative to the dataset root, with forward slashes
    label: int
    split: str | None  # set by the course layout, None for the original


def _subdirs(folder: Path) -> dict[str, Path]:
    return {p.name.lower(): p for p in folder.iterdir() if p.is_dir() and not p.name.startswith((".", "__MACOSX"))}


@dataclass
class Scan:
    """What a dataset folder holds: its images, the class folders without any, the broken links."""

    layout: str
    classes: tuple[str, ...] = CLASSES  # in label order
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


def is_crack(classes: tuple[str, ...] | list[str]) -> bool:
    """Whether `classes` are the crack dataset's two (negative, positive), whose reports keep TP/FP/FN/TN."""
    return tuple(classes) == CLASSES


def _classes(root: Path, folders: list[str]) -> tuple[str, ...]:
    """The class names of `folders` (one dataset's, or one split's), at least two of them."""
    if len(folders) < 2:
        found = f"only {folders[0]}/" if folders else "no class folders"
        raise DataError(
            f"{root}: {found}: a classifier needs at least two classes, one folder of images each "
            f"(e.g. Positive/ and Negative/)"
        )
    return tuple(sorted(folders))


def _course_classes(root: Path, subs: dict[str, Path]) -> tuple[str, ...]:
    """The class folders every split of the course layout has; a DataError naming the odd ones out."""
    per_split = {s: set(_subdirs(subs[s])) for s in SPLITS}
    every = set().union(*per_split.values())
    odd = [f"{s}/ lacks {', '.join(sorted(every - have))}" for s, have in per_split.items() if every - have]
    if odd:
        raise DataError(
            f"{root}: the class folders differ between train, valid and test ({'; '.join(odd)}); "
            f"every split needs the same class folders"
        )
    return _classes(root, sorted(every))


def detect(root: str | Path) -> str:
    """'original' or 'course'; a DataError naming what was found otherwise."""
    return _detect(Path(root))[0]


def _detect(root: Path) -> tuple[str, tuple[str, ...]]:
    """(layout, classes in label order) of the dataset at `root`."""
    if not root.is_dir():
        raise DataError(
            f"{root}: dataset folder not found (make one with `crackhpc data synth {root}` "
            f"or see `crackhpc data fetch --help`)"
        )
    subs = _subdirs(root)
    splits = set(SPLITS) & set(subs)
    if splits == set(SPLITS):
        return "course", _course_classes(root, subs)
    if subs and not splits:
        return "original", _classes(root, sorted(subs))
    found = ", ".join(sorted(subs)) or "no folders"
    raise DataError(
        f"{root}: unknown dataset layout (found: {found}); expected a folder per class, e.g. Positive/ and "
        f"Negative/ (original), or train|valid|test/<class>/ (course)"
    )


def scan(root: str | Path) -> Scan:
    """Every image in a deterministic order, and what is wrong with the folder; raises only when
    the layout is unknown."""
    root = Path(root)
    out = Scan(*_detect(root))
    subs = _subdirs(root)
    if out.layout == "original":
        for label, cls in enumerate(out.classes):
            out.items += [Item(p, label, None) for p in _images(subs[cls], root, out)]
    else:
        for split in SPLITS:
            classes = _subdirs(subs[split])
            for label, cls in enumerate(out.classes):
                out.items += [Item(p, label, split) for p in _images(classes[cls], root, out)]
    out.broken_links.sort()
    return out


def list_items(root: str | Path) -> tuple[str, list[Item]]:
    """The layout name and every image, in a deterministic order. A class folder without images
    is an error: a classifier trained on one class scores 1.0 on a test set of that class."""
    found = checked_scan(root)
    return found.layout, found.items


def checked_scan(root: str | Path) -> Scan:
    """scan(root), refused (DataError) where a class has no images."""
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
    return found
