"""`crackhpc data fetch DIR`: download (or take) the dataset archive, unpack it into DIR, check its layout.

The dataset is Özgenel, Ç. F. (2019), "Concrete Crack Images for Classification", Mendeley Data v2,
doi:10.17632/5y9wdsg2zt.2 (CC BY 4.0): 40,000 RGB JPEGs of 227x227 px, 20,000 in Positive/ (cracked)
and 20,000 in Negative/. Mendeley (https://data.mendeley.com/datasets/5y9wdsg2zt/2) distributes it as
`Concrete Crack Images for Classification.rar` (about 230 MiB; its "Download all" button wraps that
.rar in 5y9wdsg2zt-2.zip). Python's standard library cannot read RAR, so a .rar, or a .zip holding
one, ends with the command to unpack it by hand. The IBM "AI Capstone Project with Deep Learning"
course (DL0321EN) republished the images as a .zip with Positive/ and Negative/ at its top: that is
the default URL. Any .zip or .tar(.gz) with the original (Positive/ Negative/) or the course
(train|valid|test/{positive,negative}/) layout works, also inside one or two wrapping folders.
"""

from __future__ import annotations

import tarfile
import urllib.parse
import zipfile
from pathlib import Path

from ..errors import CrackhpcError, DataError
from .layout import detect, scan

COURSE_URL = (
    "https://s3-api.us-geo.objectstorage.softlayer.net/cf-courses-data/CognitiveClass/DL0321EN/"
    "data/images/concrete_crack_images_for_classification.zip"
)
MENDELEY_PAGE = "https://data.mendeley.com/datasets/5y9wdsg2zt/2"
RAR_MAGIC = b"Rar!\x1a\x07"
SEARCH_DEPTH = 2  # archives often wrap the class folders in one or two folders of their own


def _rar_error(archive: Path, dest: Path) -> DataError:
    return DataError(
        f"{archive}: a RAR archive, which Python cannot unpack: run `unrar x '{archive}' '{dest}/'` "
        f"(or `bsdtar -xf '{archive}' -C '{dest}'`), then `crackhpc data verify {dest}`"
    )


def _head(path: Path) -> bytes:
    with open(path, "rb") as fh:
        return fh.read(len(RAR_MAGIC))


def unpack(archive: Path, dest: Path) -> None:
    """Unpack a .zip or .tar(.gz/.bz2/.xz) into `dest`, recognised by content, not by name."""
    head = _head(archive)
    if head == RAR_MAGIC:
        raise _rar_error(archive, dest)
    try:
        if zipfile.is_zipfile(archive):
            with zipfile.ZipFile(archive) as zf:
                zf.extractall(dest)  # drops absolute paths and `..` from member names
        elif tarfile.is_tarfile(archive):
            with tarfile.open(archive) as tf:
                tf.extractall(dest, filter="data")  # refuses links and paths that leave `dest`
        else:
            raise DataError(
                f"{archive}: not a .zip, .tar(.gz) or .rar archive (it starts with {head!r}); "
                f"check the URL gives the archive itself (see `crackhpc data fetch --help`)"
            )
    except (zipfile.BadZipFile, tarfile.TarError, EOFError, OSError) as exc:
        raise DataError(
            f"{archive}: cannot unpack ({exc}); the archive is damaged or incomplete: fetch it again"
        ) from None


def _folders(dest: Path, depth: int) -> list[Path]:
    found, level = [dest], [dest]
    for _ in range(depth):
        level = [
            p
            for folder in level
            for p in sorted(folder.iterdir())
            if p.is_dir() and not p.name.startswith((".", "__MACOSX"))
        ]
        found += level
    return found


def find_root(dest: Path) -> Path:
    """The folder under `dest` (itself included, two levels deep) holding a dataset layout."""
    layouts = []
    for folder in _folders(dest, SEARCH_DEPTH):
        try:
            detect(folder)
        except DataError:
            continue
        # A wrapping folder of two or more folders reads as classes too: the one whose classes hold images
        found = scan(folder)
        if found.items and not found.empty:
            return folder
        layouts.append(folder)
    if layouts:
        return layouts[0]
    rars = sorted(p for folder in _folders(dest, SEARCH_DEPTH) for p in folder.glob("*.rar"))
    if rars:
        raise _rar_error(rars[0], rars[0].parent)
    raise DataError(
        f"{dest}: no Positive/ and Negative/ (or train|valid|test/) folders in it after unpacking; "
        f"is the archive the crack dataset? (see {MENDELEY_PAGE})"
    )


def fetch(dest: str | Path, url: str | None = None, archive: str | Path | None = None) -> Path:
    """Unpack the dataset into `dest` from a local archive or a download; returns the dataset root."""
    from ..prefetch import download

    dest = Path(dest).expanduser()
    if archive is not None:
        archive = Path(archive).expanduser()
        if not archive.is_file():
            raise CrackhpcError(f"{archive}: no such archive file (--archive takes a .zip or .tar(.gz) you downloaded)")
        unpack(archive, dest)
        return find_root(dest)
    url = url or COURSE_URL
    # Named after the URL so that a .rar, kept to be unpacked by hand, is recognisable.
    saved = download(
        url,
        dest / (Path(urllib.parse.urlparse(url).path).name or "dataset-archive"),
        hint="download the archive some other way and pass it with --archive FILE",
    )
    try:
        unpack(saved, dest)
    except DataError:
        if _head(saved) != RAR_MAGIC:
            saved.unlink()
        raise
    saved.unlink()  # unpacked: the archive would only double the disk use
    return find_root(dest)
