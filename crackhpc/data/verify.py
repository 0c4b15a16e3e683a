"""`crackhpc data verify`: the classes and counts per class, class folders without images, unreadable
or truncated files, broken symlinks, odd sizes."""

from __future__ import annotations

from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image

from .images import DECODE_ERRORS
from .layout import SPLITS, scan

EXPECTED_SIZE = (227, 227)


def _check(path: str) -> tuple[str, tuple[int, int] | None, str | None]:
    try:
        with Image.open(path) as img:
            img.load()  # a truncated JPEG fails here, not at open()
            return path, img.size, None
    except DECODE_ERRORS as exc:
        return path, None, f"{type(exc).__name__}: {exc}"


@dataclass
class VerifyReport:
    root: str
    layout: str
    classes: tuple[str, ...]
    counts: dict[str, dict[str, int]]
    sizes: Counter
    broken: list[tuple[str, str]] = field(default_factory=list)
    empty: list[str] = field(default_factory=list)  # class folders without images
    broken_links: list[tuple[str, str]] = field(default_factory=list)  # skipped: (path, why)

    @property
    def ok(self) -> bool:
        return not (self.broken or self.empty or self.broken_links)

    def lines(self) -> list[str]:
        out = [f"{self.root}: {self.layout} layout, {len(self.classes)} classes: {', '.join(self.classes)}"]
        for group, per_class in self.counts.items():
            total = sum(per_class.values())
            out.append(
                f"  {group:<6} " + "  ".join(f"{c}={per_class.get(c, 0)}" for c in self.classes) + f"  total={total}"
            )
        odd = {s: n for s, n in self.sizes.items() if s != EXPECTED_SIZE}
        out.append("  sizes: " + ", ".join(f"{w}x{h}: {n}" for (w, h), n in self.sizes.most_common()))
        if odd:
            out.append(
                f"  note: {sum(odd.values())} images are not {EXPECTED_SIZE[0]}x{EXPECTED_SIZE[1]} (they are resized when read)"
            )
        for folder in self.empty:
            out.append(
                f"  error: {folder}/ has no images (.jpg, .jpeg, .png): a classifier needs images of every "
                f"class, and a sweep refuses this dataset"
            )
        for title, problems in (
            ("unreadable or truncated", self.broken),
            ("broken symlinks, skipped", self.broken_links),
        ):
            out.append(f"  {title}: {len(problems)}")
            out += [f"    {path}: {why}" for path, why in problems[:20]]
            if len(problems) > 20:
                out.append(f"    ... and {len(problems) - 20} more")
        return out


def verify(root: str | Path, workers: int = 1) -> VerifyReport:
    root = Path(root)
    found = scan(root)
    items = found.items
    counts = {group: dict.fromkeys(found.classes, 0) for group in (SPLITS if found.layout == "course" else ("all",))}
    for item in items:
        counts[item.split or "all"][found.classes[item.label]] += 1
    paths = [str(root / i.path) for i in items]
    if workers > 1:
        with ProcessPoolExecutor(workers) as pool:
            checked = list(pool.map(_check, paths, chunksize=256))
    else:
        checked = [_check(p) for p in paths]
    sizes = Counter(size for _, size, _ in checked if size)
    broken = [(str(Path(p).relative_to(root)), why) for p, _, why in checked if why]
    return VerifyReport(str(root), found.layout, found.classes, counts, sizes, broken, found.empty, found.broken_links)
