import pytest

from crackhpc.scores import confusion_matrix, macro_f1, per_class, result_fields


def test_per_class_scores_and_macro_f1_of_a_confusion_matrix():
    pairs = [(0, 0)] * 5 + [(0, 1)] * 1 + [(1, 1)] * 3 + [(1, 2)] * 1 + [(2, 0)] * 2 + [(2, 2)] * 2
    matrix = confusion_matrix(3, pairs)
    assert matrix == [[5, 1, 0], [0, 3, 1], [2, 0, 2]]
    scores = per_class(matrix, ["a", "b", "c"])
    assert scores["a"] == {"precision": 5 / 7, "recall": 5 / 6, "f1": 10 / 13, "support": 6}
    assert scores["c"]["precision"] == pytest.approx(2 / 3) and scores["c"]["recall"] == 0.5
    f1 = [10 / 13, 2 * 3 / (4 + 4), 2 * 2 / (3 + 4)]
    assert macro_f1(scores) == pytest.approx(sum(f1) / 3)
    assert result_fields(matrix, ["a", "b", "c"])["macro_f1"] == pytest.approx(sum(f1) / 3)


def test_a_class_never_predicted_has_no_precision_and_counts_zero_in_macro_f1():
    scores = per_class([[4, 0], [2, 0]], ["a", "b"])
    assert scores["b"] == {"precision": None, "recall": 0.0, "f1": 0.0, "support": 2}
    assert macro_f1(scores) == pytest.approx((2 * 4 / (6 + 4) + 0.0) / 2)
    # a class without test images is left out of the mean
    assert macro_f1(per_class([[3, 1], [0, 0]], ["a", "b"])) == pytest.approx(2 * 3 / (3 + 4))
