"""Per-run evidence: the learning curves (metrics.csv), the test confusion matrix (from the split
manifest and misclassified.csv) and the misclassified images."""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from .. import rundir
from ..data.layout import CLASSES
from ..data.split import parse_manifest
from ..errors import CrackhpcError
from .reading import ReadCache, problem_text


def read_misclassified(run_dir: Path, classes: Sequence[str] = CLASSES) -> list[dict[str, str]]:
    path = run_dir / rundir.MISCLASSIFIED
    if not path.is_file():
        return []
    fix = rundir.FIX_REDO.format(run=run_dir)
    try:
        reader = csv.DictReader(io.StringIO(path.read_bytes().decode("utf-8"), newline=""))
        if tuple(reader.fieldnames or ()) != rundir.MISCLASSIFIED_COLUMNS:
            raise CrackhpcError(
                f"{path}: not a misclassified list (columns must be {', '.join(rundir.MISCLASSIFIED_COLUMNS)}); {fix}"
            )
        rows = list(reader)
    except (UnicodeDecodeError, csv.Error) as exc:
        raise CrackhpcError(f"{path}: not a misclassified list ({problem_text(exc)}); {fix}") from None
    for line, row in enumerate(rows, start=2):
        if row["true"] not in classes or row["predicted"] not in classes:
            raise CrackhpcError(
                f"{path}: line {line}: classes must be {' or '.join(classes)}, "
                f"got {row['true']!r} → {row['predicted']!r}; {fix}"
            )
        try:
            float(row["probability"])
        except (TypeError, ValueError):
            raise CrackhpcError(
                f"{path}: line {line}: probability {row['probability']!r} is not a number; {fix}"
            ) from None
    return rows


class TestSplits:
    """Class counts of the test split of runs' split manifests. A sweep's runs share one (1.1 MB for
    the real dataset's 40,000 images), which a ReadCache reads once; run folders of older sweeps hold
    a copy each, and a copy already seen is recognised by its bytes, so that 1,000 of them cost 1,000
    reads and compares but one parse."""

    __test__ = False  # not a pytest class, whatever its name

    def __init__(self, cache: ReadCache | None = None) -> None:
        self.cache = cache or ReadCache()
        self._seen: dict[int, list[tuple[bytes, list[int]]]] = {}

    def counts(self, path: Path) -> list[int]:
        """The test images of each label (0, 1, ...) of the manifest at `path`: [negatives, positives]
        for the crack dataset."""
        return self.cache.get(path, self._count)

    def _count(self, path: Path) -> list[int]:
        data = path.read_bytes()
        for known, counts in self._seen.get(len(data), ()):
            if known == data:
                return counts
        test = [item.label for item in parse_manifest(data, path) if item.split == "test"]
        counts = [test.count(label) for label in range(max(test, default=1) + 1)]
        self._seen.setdefault(len(data), []).append((data, counts))
        return counts


@dataclass
class Confusion:
    """Test-set counts with rows the true class and columns the predicted one, in label order (the
    crack dataset's: 0 negative, 1 positive; tp, fp, fn and tn are for it).

    The workers list the misclassified test images only; every other test image of the run's split
    manifest was classified correctly. Images the worker could not decode are not in result.json's
    n_test, and the manifest does not say which class they were: `note` says so when that happens."""

    matrix: list[list[int]]
    note: str | None = None

    @property
    def tp(self) -> int:
        return self.matrix[1][1]

    @property
    def fp(self) -> int:
        return self.matrix[0][1]

    @property
    def fn(self) -> int:
        return self.matrix[1][0]

    @property
    def tn(self) -> int:
        return self.matrix[0][0]


def confusion(
    run_dir: Path,
    n_test: int | None,
    splits: TestSplits | None = None,
    classes: Sequence[str] = CLASSES,
    manifest: Path | None = None,
) -> Confusion:
    """The run's test confusion over `classes` (its config.yaml's), from its split manifest (`manifest`
    where the caller has read its config.yaml already) and misclassified.csv."""
    manifest = manifest or rundir.manifest_of(run_dir)
    if not manifest.is_file():
        raise CrackhpcError(
            f"{manifest}: missing; a completed run keeps its split manifest (restore it, or copy the run's whole "
            f"sweep folder: a run folder names its sweep's manifest, ../splits/<hash>.csv)"
        )
    per_label = (splits or TestSplits()).counts(manifest)
    if len(per_label) > len(classes):
        raise CrackhpcError(
            f"{manifest}: labels beyond the {len(classes)} classes of {run_dir / rundir.CONFIG}; "
            f"the two files are from different runs: " + rundir.FIX_REDO.format(run=run_dir)
        )
    matrix = [[n if j == i else 0 for j in range(len(classes))] for i, n in enumerate(per_label)]
    matrix += [[0] * len(classes) for _ in range(len(classes) - len(matrix))]
    for row in read_misclassified(run_dir, classes):
        true, predicted = classes.index(row["true"]), classes.index(row["predicted"])
        matrix[true][true] -= 1
        matrix[true][predicted] += 1
    if min(matrix[k][k] for k in range(len(classes))) < 0:
        raise CrackhpcError(
            f"{run_dir / rundir.MISCLASSIFIED}: more misclassified images than test images in "
            f"{manifest}; the two files are from different runs: " + rundir.FIX_REDO.format(run=run_dir)
        )
    note = None
    total = sum(per_label)
    if n_test is not None and not pd.isna(n_test) and int(n_test) != total:
        note = (
            f"{total - int(n_test)} of {total} test images were unreadable and not scored; "
            f"they are counted as correct here"
        )
    return Confusion(matrix, note)


def read_metrics(path: Path) -> pd.DataFrame:
    try:
        metrics = pd.read_csv(io.StringIO(path.read_bytes().decode("utf-8")))
    except (pd.errors.ParserError, pd.errors.EmptyDataError) as exc:
        raise ValueError(f"not CSV ({str(exc).splitlines()[0]})") from None
    missing = [c for c in rundir.METRIC_COLUMNS if c not in metrics.columns]
    if missing:
        raise ValueError(f"missing column(s) {', '.join(missing)}")
    for column in rundir.METRIC_COLUMNS:
        if not pd.api.types.is_numeric_dtype(metrics[column]):
            raise ValueError(f"column {column} is not all numbers")
    return metrics


def load_image(path: Path) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as img:
        return np.asarray(img.convert("RGB"))
