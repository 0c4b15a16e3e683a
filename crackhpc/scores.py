"""Scores of a test confusion matrix (rows the true class, columns the predicted one): per class
precision, recall, F1 and support, and macro-F1. The worker writes them into result.json, the report
into summary.csv and report.md, both from here so that the two say the same."""

from __future__ import annotations

from collections.abc import Sequence


def confusion_matrix(n_classes: int, pairs: Sequence[tuple[int, int]]) -> list[list[int]]:
    """Counts of (true, predicted) label pairs."""
    matrix = [[0] * n_classes for _ in range(n_classes)]
    for true, predicted in pairs:
        matrix[true][predicted] += 1
    return matrix


def _ratio(num: int, den: int) -> float | None:
    return num / den if den else None


def per_class(matrix: Sequence[Sequence[int]], classes: Sequence[str]) -> dict[str, dict]:
    """{class: {precision, recall, f1, support}}; a ratio with nothing to divide by is None (a
    class never predicted has no precision), and its F1 then counts as 0 in the macro average."""
    out = {}
    for k, name in enumerate(classes):
        tp = matrix[k][k]
        predicted = sum(row[k] for row in matrix)
        support = sum(matrix[k])
        precision, recall = _ratio(tp, predicted), _ratio(tp, support)
        f1 = _ratio(2 * tp, predicted + support)
        out[name] = {"precision": precision, "recall": recall, "f1": f1, "support": support}
    return out


def macro_f1(scores: dict[str, dict]) -> float | None:
    """The mean F1 over the classes with test images (sklearn's `average="macro"` over those)."""
    present = [s["f1"] or 0.0 for s in scores.values() if s["support"]]
    return sum(present) / len(present) if present else None


def result_fields(matrix: Sequence[Sequence[int]], classes: Sequence[str]) -> dict:
    """What result.json records of the test split besides its accuracy and loss."""
    scores = per_class(matrix, classes)
    return {
        "classes": list(classes),
        "confusion": [list(row) for row in matrix],
        "per_class": scores,
        "macro_f1": macro_f1(scores),
    }
