"""The report's figures: valid PNGs, laid out by what they are given."""

import io
import math

import numpy as np
import pandas as pd
from PIL import Image

from crackhpc import plots

METRICS = pd.DataFrame(
    {
        "epoch": [1, 2, 3],
        "train_loss": [0.9, 0.5, 0.3],
        "train_acc": [0.6, 0.8, 0.9],
        "val_loss": [0.8, 0.6, 0.5],
        "val_acc": [0.65, 0.75, 0.8],
    }
)


def png_size(data: bytes) -> tuple[int, int]:
    with Image.open(io.BytesIO(data)) as img:
        img.verify()
        assert img.format == "PNG"
        return img.size


def test_learning_curves_and_overlay_are_pngs():
    assert png_size(plots.learning_curves(METRICS, "run: learning curves"))[0] > 800
    few = png_size(plots.curves_overlay({"a": METRICS, "b": METRICS}, "sweep"))
    many = png_size(plots.curves_overlay({f"run-{i}": METRICS for i in range(12)}, "sweep"))
    assert many[1] > few[1], "the legend below the axes gets room for every run"


def test_accuracy_bars_take_single_runs_and_missing_study_figures():
    data = plots.accuracy_bars(
        ["torch resnet18", "keras vgg16", "torch vgg16"],
        [0.99, 0.998, 0.7],
        [0.003, math.nan, 0.1],
        [3, 1, 2],
        [0.9943, 0.998, None],
        "sweep: test accuracy",
    )
    wide = png_size(data)
    assert wide[0] > png_size(plots.accuracy_bars(["a"], [0.5], [0.0], [2], [None], "t"))[0]


def test_confusion_matrix_makes_room_for_its_note():
    plain = png_size(plots.confusion_matrix([[50, 2], [3, 45]], "run"))
    noted = png_size(plots.confusion_matrix([[50, 2], [3, 45]], "run", "2 of 102 test images were unreadable"))
    assert noted[1] > plain[1]


def test_image_grid_wraps_after_four():
    image = np.zeros((32, 32, 3), dtype=np.uint8)
    one_row = png_size(plots.image_grid([image] * 4, ["caption"] * 4, "first 4"))
    two_rows = png_size(plots.image_grid([image] * 5, ["caption"] * 5, "first 5"))
    assert two_rows[0] == one_row[0] and two_rows[1] > one_row[1]
    assert png_size(plots.image_grid([image], ["only one"], "first 1"))[0] < one_row[0]
